/* engine/webhook.c: see webhook.h.
 *
 * The dispatcher is a small state machine on its own loop: one claim statement at a time takes as
 * many due deliveries as there are free slots (flowd_webhook_claim caps each endpoint), each is
 * posted at once, and each answer is settled with one statement (flowd_webhook_result), after
 * which the freed slot asks for another claim. When a claim finds fewer than it asked for, the
 * loop sleeps until the next due delivery (flowd_webhook_next_due_ms), a NOTIFY flowd_webhooks
 * from a trigger, or a clock move in test mode (NOTIFY flowd_ready 'clock'). */
#include "engine/webhook.h"

#include <curl/curl.h>
#include <ev.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "engine/clock.h"
#include "engine/db.h"
#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "engine/secret.h"

#define WH_RESPONSE_KEEP 200  /* bytes of an answer kept in the attempt log */
#define WH_LEASE_SLACK_MS 30000 /* lease = attempt timeout + this (the settle statement included) */
#define WH_SWEEP_S 60.        /* batch.completed writes a race left out (flowd_webhook_sweep) */
#define WH_MAX_SLEEP_S 60.    /* longest sleep without a NOTIFY */

struct eng_webhooks {
    eng_webhook_opts opts;
    char *conninfo;
    struct ev_loop *loop;
    pthread_t thread;
    ev_async stop_signal;
    ev_timer due;   /* the next due delivery */
    ev_timer sweep;
    ev_timer grace; /* stopping: the deadline for deliveries in flight */
    eng_db *db;
    eng_httpc *httpc;
    int inflight;   /* claimed and not yet settled */
    bool claiming;  /* a claim statement is in flight */
    bool want;      /* claim again when the one in flight returns */
    bool stopping;
    double stop_grace;
    struct wh_delivery *list; /* claimed and not yet settled, freed at the end if abandoned */
    json_t *answered;         /* attempts done, waiting for the next settle statement */
    struct wh_delivery **settling; /* the deliveries of the settle statement in flight */
    size_t nsettling;
};

typedef struct wh_delivery {
    eng_webhooks *d;
    struct wh_delivery *prev, *next;
    bool answered; /* its attempt waits in answered for the next settle statement */
    long long id;
    long long endpoint;
    int attempt;
    char *url;
    int64_t created_ms;
    int64_t started_ms;
} wh_delivery;

static void wh_maybe_claim(eng_webhooks *d);

static void wh_delivery_free(wh_delivery *w)
{
    eng_webhooks *d = w->d;
    if (w->prev)
        w->prev->next = w->next;
    else
        d->list = w->next;
    if (w->next)
        w->next->prev = w->prev;
    d->inflight--;
    free(w->url);
    free(w);
}

/* ------------------------------------------------------------------------- signing -- */

bool eng_webhook_sign(const char *secret, const char *id, const char *timestamp, const char *body,
                      size_t body_len, char *out, size_t outlen)
{
    if (strncmp(secret, "whsec_", 6) == 0)
        secret += 6;
    size_t slen = strlen(secret);
    unsigned char key[256];
    if (slen == 0 || slen % 4 != 0 || slen / 4 * 3 > sizeof key)
        return false;
    int klen = EVP_DecodeBlock(key, (const unsigned char *)secret, (int)slen);
    if (klen < 0)
        return false;
    /* EVP_DecodeBlock counts the padding's zero bytes */
    for (const char *p = secret + slen; p > secret && p[-1] == '='; p--)
        klen--;
    /* one buffer for the one-shot HMAC() (OpenSSL 3 deprecates the incremental HMAC_CTX) */
    size_t idlen = strlen(id), tslen = strlen(timestamp);
    char *msg = eng_xmalloc(idlen + tslen + body_len + 2);
    memcpy(msg, id, idlen);
    msg[idlen] = '.';
    memcpy(msg + idlen + 1, timestamp, tslen);
    msg[idlen + 1 + tslen] = '.';
    memcpy(msg + idlen + tslen + 2, body, body_len);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    bool ok = HMAC(EVP_sha256(), key, klen, (const unsigned char *)msg,
                   idlen + tslen + body_len + 2, mac, &maclen) != NULL;
    free(msg);
    if (!ok || outlen < 3 + 4 * ((maclen + 2) / 3) + 1)
        return false;
    memcpy(out, "v1,", 3);
    EVP_EncodeBlock((unsigned char *)out + 3, mac, (int)maclen);
    return true;
}

void eng_webhook_secret_new(char *out, size_t outlen)
{
    unsigned char raw[24];
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw || outlen < 6 + 32 + 1) {
        log_error("cannot make a webhook secret");
        abort();
    }
    memcpy(out, "whsec_", 6);
    EVP_EncodeBlock((unsigned char *)out + 6, raw, (int)sizeof raw);
}

int64_t eng_webhook_retry_after_ms(const char *value, int64_t now_ms)
{
    if (!value || !*value)
        return 0;
    char *end;
    double s = strtod(value, &end);
    while (*end == ' ')
        end++;
    if (end != value && !*end)
        return s > 0 ? (int64_t)(s * 1000.0 + 0.999) : 0;
    time_t t = curl_getdate(value, NULL);
    return t > 0 && (int64_t)t * 1000 > now_ms ? (int64_t)t * 1000 - now_ms : 0;
}

/* ----------------------------------------------------------------------- delivering -- */

static void wh_flush(eng_webhooks *d);

/* The settle statement of a batch of attempts returned: one row per attempt, in no given order. */
static void wh_settled_cb(void *arg, const eng_err *err, const PGresult *res)
{
    eng_webhooks *d = arg;
    if (err) {
        /* their leases lapse and the deliveries go out again: at least once */
        log_warn("webhook attempts not recorded", LOG_I("attempts", d->nsettling),
                 LOG_S("error", err->msg));
    } else {
        for (int i = 0; i < PQntuples(res); i++) {
            const char *outcome = PQgetvalue(res, i, 1);
            eng_metrics_webhook(outcome);
            if (strcmp(outcome, "sent") == 0)
                eng_metrics_webhook_lag(atoll(PQgetvalue(res, i, 2)));
            else if (strcmp(outcome, "disabled") == 0)
                log_warn("webhook endpoint disabled", LOG_S("delivery", PQgetvalue(res, i, 0)));
        }
    }
    for (size_t i = 0; i < d->nsettling; i++)
        wh_delivery_free(d->settling[i]);
    free(d->settling);
    d->settling = NULL;
    d->nsettling = 0;
    d->want = true;
    if (d->stopping && d->inflight == 0) {
        ev_break(d->loop, EVBREAK_ALL);
        return;
    }
    wh_flush(d);
    wh_maybe_claim(d);
}

/* Sends the attempts answered so far in one statement (one commit for all of them), unless one is
 * in flight: its return sends the next batch. */
static void wh_flush(eng_webhooks *d)
{
    size_t n = json_array_size(d->answered);
    if (d->settling || n == 0)
        return;
    d->settling = eng_xcalloc(n, sizeof *d->settling);
    for (wh_delivery *w = d->list; w; w = w->next)
        if (w->answered)
            d->settling[d->nsettling++] = w, w->answered = false;
    char *text = json_dumps(d->answered, JSON_COMPACT);
    json_array_clear(d->answered);
    const char *params[] = {text};
    eng_db_query(d->db, "wh_results", 1, params, wh_settled_cb, d);
    free(text);
}

/* Text PostgreSQL accepts whatever the receiver answered: printable ASCII, the rest as '?'. */
static char *wh_snippet(const char *s, size_t len)
{
    if (len > WH_RESPONSE_KEEP)
        len = WH_RESPONSE_KEEP;
    char *out = eng_xmalloc(len + 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c >= 0x20 && c < 0x7f) || c == '\n' || c == '\t' ? (char)c : '?';
    }
    out[len] = '\0';
    return out;
}

static void wh_settle(wh_delivery *w, long status, int64_t latency_ms, const char *response,
                      const char *error, int64_t retry_after_ms)
{
    json_t *a = json_pack("{s:I, s:I, s:i, s:I}", "id", (json_int_t)w->id, "endpoint",
                          (json_int_t)w->endpoint, "attempt", w->attempt, "latency_ms",
                          (json_int_t)latency_ms);
    if (status)
        json_object_set_new(a, "status", json_integer(status));
    if (response)
        json_object_set_new(a, "response", json_string(response));
    if (error)
        json_object_set_new(a, "error", json_string(error));
    if (retry_after_ms > 0)
        json_object_set_new(a, "retry_after_ms", json_integer(retry_after_ms));
    json_array_append_new(w->d->answered, a);
    w->answered = true;
    wh_flush(w->d);
}

static void wh_answer_cb(void *arg, const eng_err *err, const eng_http_response *resp,
                         eng_http_call *call)
{
    wh_delivery *w = arg;
    int64_t now = eng_clock_wall_ms();
    int64_t latency = now - w->started_ms;
    if (err) {
        wh_settle(w, 0, latency, NULL, err->msg, 0);
        return;
    }
    char *snippet = wh_snippet(resp->body, resp->body_len);
    int64_t ra = resp->status >= 300
                     ? eng_webhook_retry_after_ms(eng_http_call_header(call, "retry-after"), now)
                     : 0;
    wh_settle(w, resp->status, latency, snippet, NULL, ra);
    free(snippet);
}

/* Posts one claimed delivery. The signature header carries one entry per secret: during a
 * rotation's overlap a receiver holding either secret verifies it. */
static void wh_post(eng_webhooks *d, const PGresult *res, int row)
{
    wh_delivery *w = eng_xcalloc(1, sizeof *w);
    w->d = d;
    w->id = atoll(PQgetvalue(res, row, 0));
    w->attempt = atoi(PQgetvalue(res, row, 1));
    w->endpoint = atoll(PQgetvalue(res, row, 6));
    w->url = eng_xstrdup(PQgetvalue(res, row, 2));
    w->created_ms = atoll(PQgetvalue(res, row, 8));
    w->started_ms = eng_clock_wall_ms();
    w->next = d->list;
    if (d->list)
        d->list->prev = w;
    d->list = w;
    d->inflight++;
    const char *uid = PQgetvalue(res, row, 3), *body = PQgetvalue(res, row, 4);
    size_t body_len = (size_t)PQgetlength(res, row, 4);
    if (d->opts.public_only && strncmp(w->url, "https://", 8) != 0) {
        wh_settle(w, 0, 0, NULL, "the url must be https (flowd serve --allow-private-targets "
                                 "allows http)", 0);
        return;
    }
    /* the receiver checks the timestamp against its own clock: real time, never the test clock */
    char ts[24];
    snprintf(ts, sizeof ts, "%lld", (long long)(w->started_ms / 1000));
    /* secrets come as a text[] literal of words without commas or quotes: {whsec_a,enc:v1:..},
     * each sealed (engine/secret.h) or, stored before a key was set, in clear */
    char *list = eng_xstrdup(PQgetvalue(res, row, 5));
    char sig_hdr[512] = "webhook-signature: ";
    const size_t empty = strlen(sig_hdr);
    size_t off = empty;
    eng_err open_err = {0};
    for (char *save = NULL, *s = strtok_r(list, "{},\"", &save); s;
         s = strtok_r(NULL, "{},\"", &save)) {
        char sig[128];
        char *plain = sec_open(s, &open_err);
        bool signed_ok = plain && eng_webhook_sign(plain, uid, ts, body, body_len, sig, sizeof sig);
        sec_free(plain);
        if (!signed_ok || off + strlen(sig) + 2 >= sizeof sig_hdr)
            continue;
        off += (size_t)snprintf(sig_hdr + off, sizeof sig_hdr - off, "%s%s",
                                sig_hdr[off - 1] == ' ' ? "" : " ", sig);
    }
    free(list);
    if (off == empty) {
        /* never an unsigned delivery: it waits for the operator's key like a failed attempt */
        char msg[sizeof open_err.msg + 64];
        snprintf(msg, sizeof msg, "the endpoint's signing secret cannot be used: %s",
                 open_err.msg[0] ? open_err.msg : "malformed");
        wh_settle(w, 0, 0, NULL, msg, 0);
        return;
    }
    char id_hdr[96], ts_hdr[48];
    snprintf(id_hdr, sizeof id_hdr, "webhook-id: %s", uid);
    snprintf(ts_hdr, sizeof ts_hdr, "webhook-timestamp: %s", ts);
    const char *headers[] = {"Content-Type: application/json", "User-Agent: flowd-webhooks",
                             id_hdr, ts_hdr, sig_hdr, NULL};
    eng_http_request req = {.method = "POST", .url = w->url, .headers = headers, .body = body,
                            .body_len = body_len, .timeout_ms = d->opts.timeout_ms,
                            .connect_timeout_ms = d->opts.timeout_ms < 10000 ? d->opts.timeout_ms
                                                                             : 10000,
                            .max_response_bytes = 64 * 1024, .public_only = d->opts.public_only};
    eng_httpc_start(d->httpc, &req, wh_answer_cb, w);
}

/* --------------------------------------------------------------------------- claims -- */

static void wh_sleep(eng_webhooks *d, double s)
{
    if (s > WH_MAX_SLEEP_S)
        s = WH_MAX_SLEEP_S;
    ev_timer_stop(d->loop, &d->due);
    ev_timer_set(&d->due, s, 0.);
    ev_timer_start(d->loop, &d->due);
}

static void wh_due_cb(void *arg, const eng_err *err, const PGresult *res)
{
    eng_webhooks *d = arg;
    bool none = err || PQgetisnull(res, 0, 0);
    double s = none ? WH_MAX_SLEEP_S : (double)atoll(PQgetvalue(res, 0, 0)) / 1000.0;
    /* due now yet not claimed: every due delivery's endpoint is at its in-flight cap; a settle
     * here wakes us sooner, one elsewhere within the second */
    wh_sleep(d, s < 1. ? 1. : s);
}

static void wh_claimed_cb(void *arg, const eng_err *err, const PGresult *res)
{
    eng_webhooks *d = arg;
    d->claiming = false;
    if (err && !d->stopping) {
        log_warn("webhook claim failed", LOG_S("error", err->msg));
        wh_sleep(d, 1.);
        return;
    }
    int n = err ? 0 : PQntuples(res);
    for (int i = 0; i < n; i++)
        wh_post(d, res, i);
    if (d->stopping) {
        if (d->inflight == 0)
            ev_break(d->loop, EVBREAK_ALL);
        return;
    }
    if (d->want)
        wh_maybe_claim(d);
    else if (d->inflight < d->opts.max_inflight)
        eng_db_query(d->db, "wh_next_due", 0, NULL, wh_due_cb, d);
}

static void wh_maybe_claim(eng_webhooks *d)
{
    if (d->stopping || d->claiming || !eng_db_connected(d->db))
        return;
    int free_slots = d->opts.max_inflight - d->inflight;
    if (free_slots <= 0)
        return; /* a settle calls again */
    d->want = false;
    d->claiming = true;
    char limit_s[16], cap_s[16], lease_s[24];
    snprintf(limit_s, sizeof limit_s, "%d", free_slots);
    snprintf(cap_s, sizeof cap_s, "%d", d->opts.per_endpoint);
    snprintf(lease_s, sizeof lease_s, "%d", d->opts.timeout_ms + WH_LEASE_SLACK_MS);
    const char *params[] = {limit_s, cap_s, lease_s};
    eng_db_query(d->db, "wh_claim", 3, params, wh_claimed_cb, d);
}

static void wh_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    eng_webhooks *d = ENG_CONTAINER_OF(t, eng_webhooks, due);
    d->want = true;
    wh_maybe_claim(d);
}

static void wh_notify_cb(void *arg, const char *channel, const char *payload)
{
    eng_webhooks *d = arg;
    if (strcmp(channel, "flowd_ready") == 0 && strcmp(payload, "clock") != 0)
        return;
    d->want = true;
    wh_maybe_claim(d);
}

static void wh_connect_cb(void *arg)
{
    eng_webhooks *d = arg;
    d->want = true;
    wh_maybe_claim(d);
}

static void wh_swept_cb(void *arg, const eng_err *err, const PGresult *res)
{
    (void)arg;
    if (!err && atoi(PQgetvalue(res, 0, 0)) > 0)
        log_info("webhook batch.completed written by the sweep",
                 LOG_S("batches", PQgetvalue(res, 0, 0)));
}

static void wh_sweep_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    eng_webhooks *d = ENG_CONTAINER_OF(t, eng_webhooks, sweep);
    if (eng_db_connected(d->db))
        eng_db_query(d->db, "wh_sweep", 0, NULL, wh_swept_cb, d);
}

/* ------------------------------------------------------------------------ lifecycle -- */

static void wh_grace_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)t;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

static void wh_stop_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)revents;
    eng_webhooks *d = ENG_CONTAINER_OF(a, eng_webhooks, stop_signal);
    d->stopping = true;
    ev_timer_stop(loop, &d->due);
    ev_timer_stop(loop, &d->sweep);
    if (d->inflight == 0 && !d->claiming) {
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    ev_timer_set(&d->grace, d->stop_grace, 0.);
    ev_timer_start(loop, &d->grace);
}

static void *wh_main(void *arg)
{
    eng_webhooks *d = arg;
    eng_db_opts dbo = {.conninfo = d->conninfo, .application_name = "flowd webhooks",
                       .on_notify = wh_notify_cb, .on_connect = wh_connect_cb, .arg = d};
    d->db = eng_db_new(d->loop, &dbo);
    d->httpc = eng_httpc_new(d->loop);
    eng_db_prepare(d->db, "wh_claim", "SELECT * FROM flowd_webhook_claim($1, $2, $3)", 3);
    eng_db_prepare(d->db, "wh_results", "SELECT * FROM flowd_webhook_results($1::jsonb)", 1);
    eng_db_prepare(d->db, "wh_next_due", "SELECT flowd_webhook_next_due_ms()", 0);
    eng_db_prepare(d->db, "wh_sweep", "SELECT flowd_webhook_sweep()", 0);
    eng_db_listen(d->db, "flowd_webhooks");
    eng_db_listen(d->db, "flowd_ready");
    ev_run(d->loop, 0);
    /* deliveries still in flight are abandoned: their leases lapse and they go out again */
    eng_httpc_free(d->httpc);
    eng_db_free(d->db);
    while (d->list)
        wh_delivery_free(d->list);
    free(d->settling);
    return NULL;
}

eng_webhooks *eng_webhooks_start(const eng_webhook_opts *opts)
{
    eng_webhooks *d = eng_xcalloc(1, sizeof *d);
    d->opts = *opts;
    if (d->opts.max_inflight <= 0)
        d->opts.max_inflight = 1000;
    if (d->opts.per_endpoint <= 0)
        d->opts.per_endpoint = 50;
    if (d->opts.timeout_ms <= 0)
        d->opts.timeout_ms = 15000;
    d->conninfo = eng_xstrdup(opts->conninfo);
    d->answered = json_array();
    d->opts.conninfo = d->conninfo;
    d->loop = ev_loop_new(EVFLAG_AUTO);
    ev_async_init(&d->stop_signal, wh_stop_cb);
    ev_async_start(d->loop, &d->stop_signal);
    ev_timer_init(&d->due, wh_timer_cb, 0., 0.);
    ev_timer_init(&d->sweep, wh_sweep_cb, WH_SWEEP_S, WH_SWEEP_S);
    ev_timer_start(d->loop, &d->sweep);
    ev_timer_init(&d->grace, wh_grace_cb, 0., 0.);
    if (pthread_create(&d->thread, NULL, wh_main, d) != 0) {
        log_error("cannot start the webhook dispatcher thread");
        abort();
    }
    return d;
}

void eng_webhooks_stop(eng_webhooks *d, double grace_s)
{
    if (!d)
        return;
    d->stop_grace = grace_s;
    ev_async_send(d->loop, &d->stop_signal);
    pthread_join(d->thread, NULL);
    ev_loop_destroy(d->loop);
    json_decref(d->answered);
    free(d->conninfo);
    free(d);
}
