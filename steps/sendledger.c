/* steps/sendledger.c: one attempt of a messaging step through the send ledger (see sendledger.h
 * for the protocol). The driver is a small state machine; every database and HTTP completion
 * comes back to it on the worker loop. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/db.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "engine/wf_def.h"
#include "steps/inputs.h"
#include "steps/quota.h"
#include "steps/ratelimit.h"
#include "steps/sendledger.h"

#define SEND_DEFAULT_CHECKS 3
#define SEND_DEFAULT_INTERVAL_MS 30000
#define SEND_BUSY_RETRY_MS 1000

enum send_state {
    SS_CONFIG,  /* waiting for the provider settings */
    SS_QUOTA,   /* asking the tenant's sends_per_day (quota_check pending) */
    SS_GATE,    /* is the recipient suppressed? (asked before spending rate-limit budget) */
    SS_BUDGET,  /* waiting for the named rate limit's answer */
    SS_CLAIM,   /* flowd_send_claim in flight */
    SS_CALL,    /* the provider call in flight */
    SS_LOOKUP,  /* the provider look-up in flight (resolving an ambiguous send) */
    SS_SANDBOX, /* flowd_sandbox_send in flight */
    SS_RECORD,  /* flowd_send_record in flight */
    SS_PARK,    /* flowd_send_park in flight: the outcome is unknown, the step waits */
};

enum send_policy { POLICY_AT_MOST_ONCE, POLICY_AT_LEAST_ONCE };

/* What the attempt does once the outcome is recorded. */
enum send_finish {
    FIN_SUCCEED,
    FIN_FAIL,
    FIN_SKIP,
    FIN_SNOOZE,
    FIN_PARK,    /* the outcome is unknown: park the step until the send is settled */
    FIN_RECLAIM, /* the look-ups settled that nothing went out: claim and send again */
};

struct step_send {
    eng_step_ctx *ctx; /* NULL once cancelled: completions then only clean up */
    const send_ops *ops;
    enum send_state st;
    prov_config *cfg;
    prov_load *load;
    quota_check *quota;
    rl_take *take;
    char *rl_name;      /* the rate limit sends are counted against (default: the provider) */
    eng_http_call *call;
    send_msg msg;
    char *send_key;
    char *hash;
    char tenant_s[24], run_s[24], step_s[24];
    enum send_policy policy;
    bool done_before;   /* the ledger had it accepted already: not sent again (metrics: skipped) */
    int max_checks;
    int64_t interval_ms;
    int64_t created_ms; /* when the ledger row was created (wall clock), for look-ups */
    int calls;          /* the ledger's call count this attempt's claim got */
    struct eng_db *db;  /* the worker's connection, still there once the attempt is cancelled */
    /* the pending finish after SS_RECORD */
    enum send_finish fin;
    json_t *fin_output;
    prov_outcome fin_outcome;
    char fin_reason[160];
};

/* ----------------------------------------------------------------------------------- helpers -- */

static void ss_free(step_send *ss)
{
    if (ss->ctx)
        eng_step_set_data(ss->ctx, NULL);
    prov_config_free(ss->cfg);
    json_decref(ss->msg.request);
    json_decref(ss->msg.output);
    free(ss->msg.recipient);
    free(ss->send_key);
    free(ss->hash);
    free(ss->rl_name);
    json_decref(ss->fin_output);
    free(ss);
}

eng_httpc *step_send_httpc(const step_send *ss)
{
    return eng_step_httpc(ss->ctx);
}

int64_t step_send_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long step_send_http_timeout_ms(const step_send *ss)
{
    int64_t t = ss->ctx ? eng_step_timeout_ms(ss->ctx) : 0;
    return t > 0 ? (long)(t * 9 / 10) : 30000L;
}

const char *step_send_key_of(const step_send *ss)
{
    return ss->send_key;
}

int64_t step_send_tenant(const step_send *ss)
{
    return strtoll(ss->tenant_s, NULL, 10);
}

const json_t *step_send_request(const step_send *ss)
{
    return ss->msg.request;
}

int64_t step_send_created_ms(const step_send *ss)
{
    return ss->created_ms;
}

const prov_config *step_send_cfg(const step_send *ss)
{
    return ss->cfg;
}

bool step_send_norm_phone(const char *in, char out[24])
{
    /* Only the number as E.164 writes it: "(415) 555-0123" has no country code, and reading
     * one into it (digits kept, separators dropped) sent it to +4155550123, in Switzerland. */
    if (!in || in[0] != '+' || in[1] < '1' || in[1] > '9')
        return false;
    size_t n = strspn(in + 1, "0123456789");
    if (in[1 + n] || n < 8 || n > 15)
        return false;
    memcpy(out, in, n + 2);
    return true;
}

/* A dot-atom local part (RFC 5322 atext, UTF-8 allowed as SMTPUTF8 does; no quoted forms) of
 * at most 64 bytes, '@', and a domain of at least two dot-separated labels of letters, digits,
 * '-' (not at either end) or UTF-8, at most 63 bytes each and 253 in all, the last not all
 * digits. */
static bool email_syntax_ok(const char *s)
{
    const char *at = strrchr(s, '@');
    size_t local = at ? (size_t)(at - s) : 0;
    if (!at || local == 0 || local > 64 || strlen(at + 1) > 253)
        return false;
    for (const char *p = s; p < at; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '.' ? (p == s || p + 1 == at || p[1] == '.')
                      : !(ch >= 0x80 || isalnum(ch) || strchr("!#$%&'*+/=?^_`{|}~-", ch)))
            return false;
    }
    size_t labels = 0;
    bool all_digits = true;
    for (const char *l = at + 1;; labels++) {
        size_t n = 0;
        all_digits = true;
        for (; l[n] && l[n] != '.'; n++) {
            unsigned char ch = (unsigned char)l[n];
            if (!(ch >= 0x80 || isalnum(ch) || ch == '-'))
                return false;
            all_digits = all_digits && isdigit(ch);
        }
        if (n == 0 || n > 63 || l[0] == '-' || l[n - 1] == '-')
            return false;
        if (!l[n]) {
            labels++;
            break;
        }
        l += n + 1;
    }
    return labels >= 2 && !all_digits;
}

char *step_send_norm_email(const char *in)
{
    if (!in || !email_syntax_ok(in))
        return NULL;
    char *out = eng_xstrdup(in);
    for (char *p = out; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return out;
}

static bool is_template(const json_t *v)
{
    return json_is_string(v) && strstr(json_string_value(v), "{{");
}

eng_rc step_send_invalid(eng_err *err, const char *ptr, const char *suffix, const char *msg)
{
    char field[128];
    snprintf(field, sizeof field, "%s%s", ptr, suffix);
    return eng_err_field(err, ENG_EINVAL, field, "%s", msg);
}

eng_rc step_send_validate_common(const json_t *step, const char *ptr, eng_err *err)
{
    const json_t *in = json_object_get(step, "input");
    if (!json_is_object(in))
        return step_send_invalid(err, ptr, "/input", "input must be an object");
    const json_t *policy = json_object_get(in, "policy");
    if (policy && !is_template(policy) &&
        (!json_is_string(policy) || (strcmp(json_string_value(policy), "at_most_once") != 0 &&
                                     strcmp(json_string_value(policy), "at_least_once") != 0)))
        return step_send_invalid(err, ptr, "/input/policy",
                                 "policy must be \"at_most_once\" or \"at_least_once\"");
    const json_t *rl = json_object_get(in, "rate_limit");
    if (rl && (!json_is_string(rl) || json_string_length(rl) == 0))
        return step_send_invalid(err, ptr, "/input/rate_limit",
                                 "rate_limit must be a rate limit's name");
    const json_t *item = json_object_get(in, "item");
    if (item && !json_is_string(item) && !json_is_integer(item))
        return step_send_invalid(err, ptr, "/input/item", "item must be a string or an integer");
    const json_t *resolve = json_object_get(in, "resolve");
    if (resolve) {
        const json_t *checks = json_object_get(resolve, "checks");
        const json_t *interval = json_object_get(resolve, "interval_ms");
        if (!json_is_object(resolve) ||
            (checks && (!json_is_integer(checks) || json_integer_value(checks) < 0 ||
                        json_integer_value(checks) > 100)) ||
            (interval && (!json_is_integer(interval) || json_integer_value(interval) < 100 ||
                          json_integer_value(interval) > 86400000)))
            return step_send_invalid(
                err, ptr, "/input/resolve",
                "resolve must be {checks: 0..100, interval_ms: 100..86400000}");
    }
    return ENG_OK;
}

eng_rc step_send_validate_to(const json_t *step, const char *ptr, eng_err *err)
{
    eng_rc rc = step_send_validate_common(step, ptr, err);
    if (rc != ENG_OK)
        return rc;
    if (!json_object_get(json_object_get(step, "input"), "to"))
        return step_send_invalid(err, ptr, "/input/to", "to is required");
    return ENG_OK;
}

eng_rc step_send_validate_phone(const json_t *step, const char *ptr, const char *name,
                                eng_err *err)
{
    const json_t *v = json_object_get(json_object_get(step, "input"), name);
    char out[24];
    if (!json_is_string(v) || is_template(v) || strncmp(json_string_value(v), "whatsapp:", 9) == 0 ||
        step_send_norm_phone(json_string_value(v), out))
        return ENG_OK;
    char sub[40], msg[160];
    snprintf(sub, sizeof sub, "/input/%s", name);
    snprintf(msg, sizeof msg,
             "%s must be a phone number in E.164: + and 8 to 15 digits with the country code, no "
             "spaces or punctuation (+14155550123)",
             name);
    return step_send_invalid(err, ptr, sub, msg);
}

eng_rc step_send_input_phone(const json_t *in, char to[24], eng_err *err)
{
    if (!step_send_norm_phone(json_string_value(json_object_get(in, "to")), to))
        return eng_err_field(err, ENG_EINVAL, "/input/to",
                             "to must be a phone number in E.164: + and 8 to 15 digits with the "
                             "country code, no spaces or punctuation (+14155550123)");
    return ENG_OK;
}

/* Reads policy, item and resolve from the rendered input; false (err set) when invalid. */
static bool read_common(step_send *ss, const json_t *in, eng_err *err)
{
    eng_step_ctx *ctx = ss->ctx;
    const json_t *policy = json_object_get(in, "policy");
    ss->policy = POLICY_AT_MOST_ONCE;
    if (policy) {
        const char *p = json_string_value(policy);
        if (p && strcmp(p, "at_least_once") == 0)
            ss->policy = POLICY_AT_LEAST_ONCE;
        else if (!p || strcmp(p, "at_most_once") != 0) {
            eng_err_field(err, ENG_EINVAL, "/input/policy",
                          "policy must be \"at_most_once\" or \"at_least_once\"");
            return false;
        }
    }
    const char *rl = json_string_value(json_object_get(in, "rate_limit"));
    ss->rl_name = eng_xstrdup(rl ? rl : prov_name(ss->ops->provider));
    const json_t *resolve = json_object_get(in, "resolve");
    const json_t *checks = json_object_get(resolve, "checks");
    const json_t *interval = json_object_get(resolve, "interval_ms");
    ss->max_checks = json_is_integer(checks) ? (int)json_integer_value(checks) : SEND_DEFAULT_CHECKS;
    ss->interval_ms = json_is_integer(interval) ? json_integer_value(interval)
                                                : SEND_DEFAULT_INTERVAL_MS;
    const json_t *item = json_object_get(in, "item");
    if (json_is_string(item))
        ss->send_key = eng_xasprintf("%lld:%s:%s", (long long)eng_step_run_id(ctx),
                                     eng_step_key(ctx), json_string_value(item));
    else if (json_is_integer(item))
        ss->send_key = eng_xasprintf("%lld:%s:%lld", (long long)eng_step_run_id(ctx),
                                     eng_step_key(ctx), (long long)json_integer_value(item));
    else if (item && !json_is_null(item)) {
        eng_err_field(err, ENG_EINVAL, "/input/item", "item must be a string or an integer");
        return false;
    } else
        ss->send_key = eng_xasprintf("%lld:%s", (long long)eng_step_run_id(ctx), eng_step_key(ctx));
    return true;
}

/* The provider name the ledger records: the sandbox stands in for the real one. */
static const char *ledger_provider(const step_send *ss)
{
    return prov_config_sandbox(ss->cfg) ? "sandbox" : prov_name(ss->ops->provider);
}

/* The step output: what prepare knew plus the provider's fields. New reference. */
static json_t *build_output(const step_send *ss, const char *message_id, json_t *extra)
{
    json_t *out = json_deep_copy(ss->msg.output);
    if (!json_is_object(out)) {
        json_decref(out);
        out = json_object();
    }
    json_object_set_new(out, "provider", json_string(ledger_provider(ss)));
    if (message_id)
        json_object_set_new(out, "message_id", json_string(message_id));
    if (!json_object_get(out, "status"))
        json_object_set_new(out, "status", json_string("accepted"));
    json_object_set_new(out, "send_key", json_string(ss->send_key));
    if (extra)
        json_object_update(out, extra);
    json_decref(extra);
    return out;
}

/* ------------------------------------------------------------------------------------ finish -- */

static void ss_ledger_error(step_send *ss, const eng_err *err, const char *what);

static void park_done(void *arg, const eng_err *err, const PGresult *res)
{
    step_send *ss = arg;
    eng_step_ctx *ctx = ss->ctx;
    if (!ctx) {
        ss_free(ss);
        return;
    }
    if (err) {
        log_warn("send could not be parked", LOG_S("send_key", ss->send_key),
                 LOG_S("error", err->msg));
        /* the ledger row stays unknown: the next attempt parks it again */
        ss_ledger_error(ss, err, "park the step");
        return;
    }
    const char *how = PQgetvalue(res, 0, 0);
    log_info("send outcome unknown: step parked", LOG_I("run", (long long)eng_step_run_id(ctx)),
             LOG_S("step", eng_step_key(ctx)), LOG_S("send_key", ss->send_key),
             LOG_S("result", how));
    ss_free(ss);
    eng_step_released(ctx, "send_unknown");
}

/* The step waits, visibly, until a delivery webhook or an operator settles the send (the
 * database wakes it then: migrations/0025_unknown_sends.sql). */
static void park(step_send *ss)
{
    ss->st = SS_PARK;
    const char *params[] = {ss->tenant_s, ss->send_key, ss->step_s, eng_step_owner(ss->ctx)};
    eng_db_query(eng_step_db(ss->ctx), "SELECT flowd_send_park($1, $2, $3, $4)", 4, params,
                 park_done, ss);
}

static void claim(step_send *ss);

/* Reports the pending finish and frees the attempt; the outcome call is the last thing done. */
static void ss_finish(step_send *ss)
{
    eng_step_ctx *ctx = ss->ctx;
    if (!ctx) {
        ss_free(ss);
        return;
    }
    enum send_finish fin = ss->fin;
    json_t *output = ss->fin_output;
    ss->fin_output = NULL;
    prov_outcome o = ss->fin_outcome;
    char reason[sizeof ss->fin_reason];
    snprintf(reason, sizeof reason, "%s", ss->fin_reason);
    int64_t at_ms = eng_step_now_ms(ctx) + ss->interval_ms;
    static const char *const outcomes[] = {[FIN_SUCCEED] = "accepted", [FIN_FAIL] = "failed",
                                           [FIN_SKIP] = "suppressed", [FIN_PARK] = "unknown"};
    if (fin < ENG_ARRAY_LEN(outcomes) && outcomes[fin])
        eng_metrics_send(ss->ops->channel, ss->done_before ? "skipped" : outcomes[fin]);
    if (fin == FIN_PARK) {
        json_decref(output);
        park(ss);
        return;
    }
    if (fin == FIN_RECLAIM) {
        json_decref(output);
        claim(ss);
        return;
    }
    ss_free(ss);
    switch (fin) {
    case FIN_PARK:
    case FIN_RECLAIM:
        return; /* handled above */
    case FIN_SUCCEED:
        eng_step_succeed(ctx, output);
        return;
    case FIN_SKIP:
        json_decref(output);
        eng_step_skip(ctx, reason);
        return;
    case FIN_SNOOZE:
        json_decref(output);
        eng_step_snooze(ctx, at_ms);
        return;
    case FIN_FAIL:
        json_decref(output);
        eng_step_fail(ctx, o.cls == PROV_PERMANENT, o.code, o.msg, o.retry_after_ms);
        return;
    }
}

static void ss_fail(step_send *ss, bool permanent, const char *code, const char *fmt, ...)
    ENG_PRINTF(4, 5);
static void ss_fail(step_send *ss, bool permanent, const char *code, const char *fmt, ...)
{
    ss->fin = FIN_FAIL;
    memset(&ss->fin_outcome, 0, sizeof ss->fin_outcome);
    ss->fin_outcome.cls = permanent ? PROV_PERMANENT : PROV_RETRYABLE;
    snprintf(ss->fin_outcome.code, sizeof ss->fin_outcome.code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ss->fin_outcome.msg, sizeof ss->fin_outcome.msg, fmt, ap);
    va_end(ap);
    ss_finish(ss);
}

/* A ledger statement (or the provider settings' read before it) that failed with the connection
 * (a failover, a server restart) or on a transient conflict says nothing about the send: the step goes back to the queue without using
 * an attempt, and its next attempt finds the ledger row as this one left it (a send that may
 * have gone out is ambiguous there and is looked up, never sent blindly). Other errors fail the
 * attempt. */
static void ss_ledger_error(step_send *ss, const eng_err *err, const char *what)
{
    if (err->rc == ENG_EDB_RETRY) {
        log_info("send attempt interrupted by the database", LOG_S("send_key", ss->send_key),
                 LOG_S("during", what), LOG_S("error", err->msg));
        json_decref(ss->fin_output);
        ss->fin_output = NULL;
        ss->fin = FIN_SNOOZE;
        ss->interval_ms = SEND_BUSY_RETRY_MS;
        ss_finish(ss);
        return;
    }
    json_decref(ss->fin_output);
    ss->fin_output = NULL;
    ss_fail(ss, false, "ledger", "the send ledger could not %s: %s", what, err->msg);
}

static void record_done(void *arg, const eng_err *err, const PGresult *res)
{
    step_send *ss = arg;
    (void)res;
    if (err && ss->ctx) {
        /* The outcome is not in the ledger: the row stays pending, so the next attempt treats
         * the send as ambiguous instead of sending it again. */
        log_warn("send outcome not recorded", LOG_S("send_key", ss->send_key),
                 LOG_S("error", err->msg));
        ss_ledger_error(ss, err, "record the outcome");
        return;
    }
    ss_finish(ss);
}

/* Writes the call's outcome into the ledger, then finishes as set in ss->fin*. */
static void record(step_send *ss, const char *state, const char *message_id, const json_t *result,
                   const prov_outcome *o, const char *suppress)
{
    ss->st = SS_RECORD;
    char *result_s = result ? json_dumps(result, JSON_COMPACT) : NULL;
    char *error_s = NULL;
    if (o) {
        json_t *e = json_pack("{s:s, s:s, s:s, s:I}", "code", o->code, "provider_code",
                              o->provider_code, "message", o->msg, "status", (json_int_t)o->status);
        error_s = json_dumps(e, JSON_COMPACT);
        json_decref(e);
    }
    const char *params[] = {ss->tenant_s, ss->send_key, state, message_id, result_s, error_s,
                            suppress};
    eng_db_query(eng_step_db(ss->ctx),
                 "SELECT flowd_send_record($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7)", 7, params,
                 record_done, ss);
    free(result_s);
    free(error_s);
}

/* ------------------------------------------------------------------------------ transports -- */

void step_send_transport_done(step_send *ss, const prov_outcome *o, const char *message_id,
                              json_t *output)
{
    ss->call = NULL;
    if (!ss->ctx) { /* cannot happen: cancel cancels the call; kept for safety */
        json_decref(output);
        ss_free(ss);
        return;
    }
    log_info("send call finished", LOG_I("run", (long long)eng_step_run_id(ss->ctx)),
             LOG_S("step", eng_step_key(ss->ctx)), LOG_S("send_key", ss->send_key),
             LOG_I("class", (int)o->cls), LOG_S("code", o->cls == PROV_OK ? "ok" : o->code));
    switch (o->cls) {
    case PROV_OK: {
        ss->fin = FIN_SUCCEED;
        ss->fin_output = build_output(ss, message_id, output);
        record(ss, "accepted", message_id, ss->fin_output, NULL, NULL);
        return;
    }
    case PROV_RETRYABLE:
        json_decref(output);
        ss->fin = FIN_FAIL;
        ss->fin_outcome = *o;
        record(ss, "failed", NULL, NULL, o, NULL);
        return;
    case PROV_PERMANENT: {
        json_decref(output);
        const char *sup = ss->ops->suppress_reason ? ss->ops->suppress_reason(o) : NULL;
        ss->fin_outcome = *o;
        if (sup) {
            ss->fin = FIN_SKIP;
            snprintf(ss->fin_reason, sizeof ss->fin_reason, "recipient suppressed: %s (%.120s)",
                     sup, o->msg);
        } else {
            ss->fin = FIN_FAIL;
        }
        record(ss, "failed", NULL, NULL, o, sup);
        return;
    }
    case PROV_AMBIGUOUS:
        json_decref(output);
        ss->fin_outcome = *o;
        if (ss->policy == POLICY_AT_LEAST_ONCE) {
            ss->fin = FIN_FAIL;
            ss->fin_outcome.cls = PROV_RETRYABLE;
        } else if (ss->ops->lookup && ss->max_checks > 0) {
            ss->fin = FIN_SNOOZE; /* the next run looks it up */
        } else {
            ss->fin = FIN_PARK;
        }
        record(ss, "unknown", NULL, NULL, o, NULL);
        return;
    }
}

bool step_send_call_ok(step_send *ss, prov_id provider, const eng_err *err,
                       const eng_http_response *resp, eng_http_call *call, prov_outcome *o)
{
    prov_classify(ss->cfg, provider, true, err, resp, call, step_send_wall_ms(), o);
    if (o->cls == PROV_OK)
        return true;
    step_send_transport_done(ss, o, NULL, NULL);
    return false;
}

void step_send_no_message_id(step_send *ss, prov_outcome *o, const char *provider,
                             const char *id_name)
{
    o->cls = PROV_AMBIGUOUS;
    snprintf(o->code, sizeof o->code, "bad_response");
    snprintf(o->msg, sizeof o->msg, "%s answered %ld without a %s", provider, o->status, id_name);
    step_send_transport_done(ss, o, NULL, NULL);
}

eng_http_call *step_send_post_json(step_send *ss, const prov_config *cfg, const char *path,
                                   const char *token, const json_t *body, eng_http_cb *done)
{
    char *url = prov_config_url(cfg, path);
    char *auth = eng_xasprintf("Authorization: Bearer %s", token);
    const char *headers[] = {auth, "Content-Type: application/json", NULL};
    char *text = json_dumps(body, JSON_COMPACT);
    eng_http_request req = {.method = "POST",
                            .url = url,
                            .headers = headers,
                            .body = text,
                            .body_len = strlen(text),
                            .timeout_ms = step_send_http_timeout_ms(ss),
                            .max_response_bytes = 1 << 20,
                            .public_only = prov_public_only(cfg)};
    eng_http_call *call = eng_httpc_start(step_send_httpc(ss), &req, done, ss);
    explicit_bzero(auth, strlen(auth));
    free(auth);
    free(url);
    free(text);
    return call;
}

void step_send_lookup_done(step_send *ss, bool found, const char *message_id, json_t *output)
{
    ss->call = NULL;
    if (found) {
        log_info("ambiguous send resolved by look-up", LOG_S("send_key", ss->send_key),
                 LOG_S("message_id", message_id));
        ss->fin = FIN_SUCCEED;
        json_t *extra = output ? output : json_object();
        json_object_set_new(extra, "resolved", json_string("lookup"));
        ss->fin_output = build_output(ss, message_id, extra);
        record(ss, "accepted", message_id, ss->fin_output, NULL, NULL);
        return;
    }
    json_decref(output);
    ss->fin = FIN_SNOOZE;
    ss_finish(ss);
}

static void sandbox_done(void *arg, const eng_err *err, const PGresult *res)
{
    step_send *ss = arg;
    if (!ss->ctx) {
        ss_free(ss);
        return;
    }
    if (err) {
        ss_ledger_error(ss, err, "record the sandbox message");
        return;
    }
    ss->fin = FIN_SUCCEED;
    ss->fin_output = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    ss_finish(ss);
}

static void sandbox_send(step_send *ss)
{
    ss->st = SS_SANDBOX;
    json_t *base = build_output(ss, NULL, json_pack("{s:b}", "sandbox", 1));
    char *message_s = json_dumps(ss->msg.request, JSON_COMPACT | JSON_SORT_KEYS);
    char *base_s = json_dumps(base, JSON_COMPACT);
    json_decref(base);
    const char *params[] = {ss->tenant_s, ss->send_key, ss->run_s, ss->step_s,
                            eng_step_key(ss->ctx), ss->ops->channel, prov_name(ss->ops->provider),
                            ss->msg.recipient, message_s, base_s};
    eng_db_query(eng_step_db(ss->ctx),
                 "SELECT flowd_sandbox_send($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb)",
                 10, params, sandbox_done, ss);
    free(message_s);
    free(base_s);
}

static void call_provider(step_send *ss)
{
    if (prov_config_sandbox(ss->cfg)) {
        sandbox_send(ss);
        return;
    }
    ss->st = SS_CALL;
    log_info("sending", LOG_I("run", (long long)eng_step_run_id(ss->ctx)),
             LOG_S("step", eng_step_key(ss->ctx)), LOG_S("send_key", ss->send_key),
             LOG_S("provider", prov_name(ss->ops->provider)));
    ss->call = ss->ops->transport(ss, ss->cfg, &ss->msg);
}

/* -------------------------------------------------------------------------------- claim -- */

static void resolve(step_send *ss, int checks)
{
    if (prov_config_sandbox(ss->cfg)) {
        /* a sandbox send commits outbox and ledger together: a row left pending sent nothing */
        sandbox_send(ss);
        return;
    }
    if (!ss->ops->lookup || ss->max_checks == 0) {
        /* no way to ask the provider: its delivery webhook or an operator settles it */
        ss->fin = FIN_PARK;
        ss_finish(ss);
        return;
    }
    if (checks > ss->max_checks) {
        /* The provider's own list of messages did not have it at any of the look-ups, spaced
         * resolve.interval_ms apart: it never went out, and is sent now. */
        log_warn("ambiguous send not found by look-ups: sending",
                 LOG_I("run", (long long)eng_step_run_id(ss->ctx)),
                 LOG_S("step", eng_step_key(ss->ctx)), LOG_S("send_key", ss->send_key),
                 LOG_I("checks", checks - 1));
        prov_outcome o = {.cls = PROV_RETRYABLE};
        snprintf(o.code, sizeof o.code, "not_found");
        snprintf(o.msg, sizeof o.msg, "not found by %d look-ups", checks - 1);
        ss->fin = FIN_RECLAIM;
        record(ss, "failed", NULL, NULL, &o, NULL);
        return;
    }
    ss->st = SS_LOOKUP;
    ss->call = ss->ops->lookup(ss, ss->cfg, &ss->msg, ss->created_ms);
}

/* The recipient opted out (reason: the suppression list's): the step ends skipped, nothing sent. */
static void ss_skip_suppressed(step_send *ss, const char *reason)
{
    ss->fin = FIN_SKIP;
    snprintf(ss->fin_reason, sizeof ss->fin_reason, "recipient suppressed: %s", reason);
    ss_finish(ss);
}

static void not_sent_done(void *arg, const eng_err *err, const PGresult *res)
{
    step_send *ss = arg;
    (void)res;
    if (err)
        log_warn("unsent send not recorded", LOG_S("send_key", ss->send_key),
                 LOG_S("error", err->msg));
    ss_free(ss);
}

/* The attempt was cancelled after its claim made it the sender and before any byte of its request
 * left: the ledger learns that nothing went out, so that the next attempt sends instead of asking
 * around (migrations/0028_send_not_sent.sql). Frees ss. */
static void record_not_sent(step_send *ss)
{
    char calls_s[16];
    snprintf(calls_s, sizeof calls_s, "%d", ss->calls);
    const char *params[] = {ss->tenant_s, ss->send_key, calls_s};
    log_info("send stopped before its request left", LOG_S("send_key", ss->send_key));
    eng_db_query(ss->db, "SELECT flowd_send_not_sent($1, $2, $3)", 3, params, not_sent_done, ss);
}

static void claim_done(void *arg, const eng_err *err, const PGresult *res)
{
    step_send *ss = arg;
    if (!ss->ctx) {
        if (!err && strcmp(PQgetvalue(res, 0, 0), "send") == 0) {
            ss->calls = atoi(PQgetvalue(res, 0, 6));
            record_not_sent(ss);
            return;
        }
        ss_free(ss);
        return;
    }
    if (err) {
        ss_ledger_error(ss, err, "claim the send");
        return;
    }
    const char *decision = PQgetvalue(res, 0, 0);
    int checks = atoi(PQgetvalue(res, 0, 5));
    ss->calls = atoi(PQgetvalue(res, 0, 6));
    ss->created_ms = strtoll(PQgetvalue(res, 0, 7), NULL, 10);
    if (strcmp(decision, "send") == 0) {
        call_provider(ss);
    } else if (strcmp(decision, "done") == 0) {
        ss->fin = FIN_SUCCEED;
        ss->done_before = true;
        ss->fin_output = PQgetisnull(res, 0, 3) ? NULL : json_loads(PQgetvalue(res, 0, 3), 0, NULL);
        if (!ss->fin_output)
            ss->fin_output = build_output(ss, PQgetvalue(res, 0, 2), NULL);
        ss_finish(ss);
    } else if (strcmp(decision, "suppressed") == 0) {
        ss_skip_suppressed(ss, PQgetvalue(res, 0, 4));
    } else if (strcmp(decision, "conflict") == 0) {
        ss_fail(ss, true, "send_key_conflict",
                "send key %s was already used for a different message", ss->send_key);
    } else if (strcmp(decision, "busy") == 0) {
        ss_fail(ss, false, "busy", "another attempt is claiming send key %s", ss->send_key);
    } else {
        resolve(ss, checks);
    }
}

static void claim(step_send *ss)
{
    ss->st = SS_CLAIM;
    char *req = json_dumps(ss->msg.request, JSON_COMPACT | JSON_SORT_KEYS);
    ss->hash = wf_sha256_hex(req, strlen(req));
    free(req);
    const char *params[] = {ss->tenant_s,
                            ss->send_key,
                            ss->ops->channel,
                            ledger_provider(ss),
                            ss->run_s,
                            ss->step_s,
                            ss->msg.recipient,
                            ss->hash,
                            ss->policy == POLICY_AT_LEAST_ONCE ? "at_least_once" : "at_most_once"};
    eng_db_query(eng_step_db(ss->ctx),
                 "SELECT decision, state, message_id, result, reason, checks, calls, created_ms "
                 "FROM flowd_send_claim($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                 9, params, claim_done, ss);
}

/* Sends wait for budget under their rate limit before the ledger is touched, so a step put back
 * to sleep leaves no claim behind (and spends no attempt). */
static void budget_done(void *arg, const eng_err *err, int64_t wait_ms)
{
    step_send *ss = arg;
    ss->take = NULL;
    if (err) {
        ss_fail(ss, false, "rate_limit", "the rate limit could not be checked: %s", err->msg);
        return;
    }
    if (wait_ms > 0) {
        eng_step_ctx *ctx = ss->ctx;
        char *name = ss->rl_name; /* outlives the send, for the outcome */
        ss->rl_name = NULL;
        ss_free(ss);
        eng_step_snooze_rate_limited(ctx, rl_wake_at(eng_step_now_ms(ctx), wait_ms), name);
        free(name);
        return;
    }
    claim(ss);
}

static void take_budget(step_send *ss)
{
    ss->st = SS_BUDGET;
    if (rl_take_start(eng_step_db(ss->ctx), eng_step_tenant_id(ss->ctx), ss->rl_name, 1, 0,
                      budget_done, ss, &ss->take))
        claim(ss); /* an unlimited name: granted at once */
}

static void gate_done(void *arg, const eng_err *err, const PGresult *res)
{
    step_send *ss = arg;
    if (!ss->ctx) {
        ss_free(ss);
        return;
    }
    if (err) {
        ss_ledger_error(ss, err, "read the suppression list");
        return;
    }
    if (PQntuples(res) > 0) {
        ss_skip_suppressed(ss, PQgetvalue(res, 0, 0));
        return;
    }
    take_budget(ss);
}

/* A suppressed recipient must not spend budget that other sends under the same limit wait for,
 * so under a limit the suppression list is asked first; flowd_send_claim asks again, for the
 * recipient suppressed in between. A send the ledger already has as accepted is not skipped here:
 * the claim answers it as done. Unlimited names skip the question: it would only cost a round trip. */
static void gate(step_send *ss)
{
    if (rl_known_unlimited(eng_step_tenant_id(ss->ctx), ss->rl_name)) {
        take_budget(ss);
        return;
    }
    ss->st = SS_GATE;
    const char *params[] = {ss->tenant_s, ss->ops->channel, ss->msg.recipient, ss->send_key};
    eng_db_query(eng_step_db(ss->ctx),
                 "SELECT x.reason FROM suppressions x"
                 " WHERE x.tenant_id = $1 AND x.channel = $2 AND x.address = $3"
                 "   AND NOT EXISTS (SELECT 1 FROM sends s WHERE s.tenant_id = $1"
                 "                      AND s.send_key = $4 AND s.state = 'accepted')",
                 4, params, gate_done, ss);
}

static void quota_done(void *arg, const eng_err *err, quota_verdict verdict, const char *msg)
{
    step_send *ss = arg;
    ss->quota = NULL;
    if (err) {
        ss_ledger_error(ss, err, "check the quotas");
        return;
    }
    if (verdict == QUOTA_FAIL) {
        ss_fail(ss, true, "quota_exceeded", "%s", msg);
        return;
    }
    if (verdict == QUOTA_RELEASED) {
        eng_step_ctx *ctx = ss->ctx;
        ss_free(ss);
        eng_step_released(ctx, "quota_blocked");
        return;
    }
    gate(ss);
}

/* With the provider's settings: builds the message, then asks the tenant's sends_per_day, the
 * suppression list and the rate limit, before the ledger is touched (a blocked step leaves no
 * claim behind). */
static void config_ready(step_send *ss, prov_config *cfg)
{
    ss->cfg = cfg;
    eng_err perr;
    eng_err_clear(&perr);
    if (ss->ops->prepare(eng_step_input(ss->ctx), cfg, ss->send_key, &ss->msg, &perr) != ENG_OK) {
        ss_fail(ss, true, "invalid_input", "%.180s%s%.60s", perr.msg, *perr.field ? " at " : "",
                perr.field);
        return;
    }
    ss->st = SS_QUOTA;
    if (quota_check_start(ss->ctx, QUOTA_SEND, ss->send_key, quota_done, ss, &ss->quota))
        gate(ss);
}

static void config_done(void *arg, const eng_err *err, prov_config *cfg)
{
    step_send *ss = arg;
    ss->load = NULL;
    if (err && err->rc == ENG_EDB_RETRY) {
        ss_ledger_error(ss, err, "be reached for the provider settings");
        return;
    }
    if (err) {
        ss_fail(ss, false, "config", "provider settings unavailable: %s", err->msg);
        return;
    }
    config_ready(ss, cfg);
}

void step_send_start(eng_step_ctx *ctx, const send_ops *ops)
{
    stepin_record(ctx);
    step_send *ss = eng_xcalloc(1, sizeof *ss);
    ss->ctx = ctx;
    ss->db = eng_step_db(ctx);
    ss->ops = ops;
    ss->st = SS_CONFIG;
    snprintf(ss->tenant_s, sizeof ss->tenant_s, "%lld", (long long)eng_step_tenant_id(ctx));
    snprintf(ss->run_s, sizeof ss->run_s, "%lld", (long long)eng_step_run_id(ctx));
    snprintf(ss->step_s, sizeof ss->step_s, "%lld", (long long)eng_step_id(ctx));
    eng_step_set_data(ctx, ss);
    eng_err err;
    eng_err_clear(&err);
    if (!read_common(ss, eng_step_input(ctx), &err)) {
        ss_fail(ss, true, "invalid_input", "%s at %s", err.msg, err.field);
        return;
    }
    prov_config *cfg = prov_config_load(ctx, ops->provider, config_done, ss, &ss->load);
    if (cfg)
        config_ready(ss, cfg); /* cached */
}

void step_send_cancel(eng_step_ctx *ctx)
{
    step_send *ss = eng_step_data(ctx);
    if (!ss)
        return;
    eng_step_set_data(ctx, NULL);
    ss->ctx = NULL;
    switch (ss->st) {
    case SS_CONFIG:
        prov_load_cancel(ss->load);
        ss_free(ss);
        return;
    case SS_QUOTA:
        quota_check_cancel(ss->quota);
        ss_free(ss);
        return;
    case SS_BUDGET:
        rl_take_cancel(ss->take);
        ss_free(ss);
        return;
    case SS_CALL: {
        /* A send cut off once its request may have left stays pending in the ledger: the next
         * attempt resolves it. One cut off before is known not to have gone out. */
        bool unsent = !eng_http_call_may_have_sent(ss->call);
        eng_httpc_cancel(ss->call);
        ss->call = NULL;
        if (unsent && !prov_config_sandbox(ss->cfg)) {
            record_not_sent(ss);
            return;
        }
        ss_free(ss);
        return;
    }
    case SS_LOOKUP:
        eng_httpc_cancel(ss->call);
        ss_free(ss);
        return;
    case SS_GATE:
    case SS_CLAIM:
    case SS_SANDBOX:
    case SS_RECORD:
    case SS_PARK:
        return; /* the statement's completion frees it (a record still gets written) */
    }
}
