/* tests/support/th_mockmsg.c: mock messaging providers and webhook signing (see th_mockmsg.h). */
#include "tests/support/th_mockmsg.h"

#include <ctype.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/mem.h"
#include "tests/support/th_mockhttp.h"

#define MAX_SCRIPT 64

typedef struct sent {
    char *key;
    char *message_id;
    json_t *body; /* parsed request */
    char *to;     /* Twilio list: To, From, Body */
} sent;

typedef struct rec {
    json_t *body;
    char *auth, *ctype, *target;
} rec;

struct th_msg {
    th_msg_flavor flavor;
    th_mock *http;
    pthread_mutex_t mu;
    th_msg_answer script[MAX_SCRIPT];
    int nscript;
    rec *recs;
    int nrecs, caprecs;
    sent *sents;
    int nsents, capsents;
    int lookups;
    unsigned long seq;
};

/* ---------------------------------------------------------------------------- parsing -- */

static char *form_decode(const char *s, size_t n)
{
    char *out = eng_xmalloc(n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+')
            *o++ = ' ';
        else if (s[i] == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
                 isxdigit((unsigned char)s[i + 2])) {
            char h[3] = {s[i + 1], s[i + 2], 0};
            *o++ = (char)strtol(h, NULL, 16);
            i += 2;
        } else
            *o++ = s[i];
    }
    *o = '\0';
    return out;
}

/* A form body as an object; repeated names become arrays. */
static json_t *form_object(const char *body, size_t len)
{
    json_t *obj = json_object();
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        if (stop > p) {
            char *name = form_decode(p, (size_t)((eq ? eq : stop) - p));
            char *value = eq ? form_decode(eq + 1, (size_t)(stop - eq - 1)) : eng_xstrdup("");
            json_t *old = json_object_get(obj, name);
            if (json_is_array(old))
                json_array_append_new(old, json_string(value));
            else if (old)
                json_object_set_new(obj, name, json_pack("[O, s]", old, value));
            else
                json_object_set_new(obj, name, json_string(value));
            free(name);
            free(value);
        }
        p = stop + 1;
    }
    return obj;
}

/* The send key a request carries (see the header). New string. */
static char *send_key_of(th_msg_flavor f, const json_t *body)
{
    const char *k = NULL;
    if (f == TH_MSG_SENDGRID)
        k = json_string_value(json_object_get(
            json_object_get(json_array_get(json_object_get(body, "personalizations"), 0),
                            "custom_args"),
            "flowd_send_key"));
    else if (f == TH_MSG_WHATSAPP)
        k = json_string_value(json_object_get(body, "biz_opaque_callback_data"));
    else {
        const char *cb = json_string_value(json_object_get(body, "StatusCallback"));
        const char *at = cb ? strstr(cb, "send_key=") : NULL;
        if (at) {
            const char *v = at + 9, *e = strchr(v, '&');
            return form_decode(v, e ? (size_t)(e - v) : strlen(v));
        }
        return eng_xasprintf("%s|%s", json_string_value(json_object_get(body, "To")),
                             json_string_value(json_object_get(body, "Body")));
    }
    return eng_xstrdup(k ? k : "");
}

/* --------------------------------------------------------------------------- answers -- */

static const char *twilio_message(long code)
{
    switch (code) {
    case 20003: return "Authenticate";
    case 20429: return "Too Many Requests";
    case 21211: return "The 'To' number is not a valid phone number.";
    case 21610: return "Attempt to send to unsubscribed recipient";
    case 21608: return "The number is unverified. Trial accounts cannot send messages to unverified numbers";
    default: return "Internal error";
    }
}

static const char *wa_message(long code)
{
    switch (code) {
    case 130429: return "(#130429) Rate limit hit";
    case 131026: return "(#131026) Message undeliverable";
    case 131047: return "(#131047) Re-engagement message";
    case 131000: return "(#131000) Something went wrong";
    case 190: return "Error validating access token";
    case 100: return "(#100) Invalid parameter";
    default: return "(#2) Service temporarily unavailable";
    }
}

/* echo: the message to answer instead of the documented one, or NULL. */
static void error_answer(th_msg *m, th_mock_resp *r, const th_msg_answer *a, const char *echo)
{
    th_mock_resp_status(r, a->status);
    th_mock_resp_header(r, "Content-Type", "application/json");
    if (a->retry_after)
        th_mock_resp_header(r, "Retry-After", "%s", a->retry_after);
    switch (m->flavor) {
    case TH_MSG_SENDGRID:
        if (echo) {
            th_mock_resp_bodyf(r, "{\"errors\":[{\"field\":null,\"message\":\"%s\"}]}", echo);
        } else if (a->status == 429) {
            th_mock_resp_header(r, "X-RateLimit-Limit", "600");
            th_mock_resp_header(r, "X-RateLimit-Remaining", "0");
            th_mock_resp_header(r, "X-RateLimit-Reset", "%lld", (long long)time(NULL) + 2);
            th_mock_resp_bodyf(r, "{\"errors\":[{\"field\":null,\"message\":\"too many requests\"}]}");
        } else if (a->status == 401) {
            th_mock_resp_bodyf(r, "{\"errors\":[{\"field\":null,\"message\":\"The provided "
                                  "authorization grant is invalid, expired, or revoked\","
                                  "\"help\":null}]}");
        } else if (a->status >= 500) {
            th_mock_resp_bodyf(r, "{\"errors\":[{\"field\":null,\"message\":\"internal error\","
                                  "\"help\":null}]}");
        } else {
            th_mock_resp_bodyf(r, "{\"errors\":[{\"message\":\"The from email does not contain a "
                                  "valid address.\",\"field\":\"from.email\",\"help\":\"http://"
                                  "sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
                                  "#message.from\"}]}");
        }
        return;
    case TH_MSG_TWILIO: {
        long code = a->code ? a->code : a->status == 429 ? 20429 : a->status == 401 ? 20003 : 0;
        if (code || echo)
            th_mock_resp_bodyf(r, "{\"code\":%ld,\"message\":\"%s\",\"more_info\":\"https://www."
                                  "twilio.com/docs/errors/%ld\",\"status\":%d}",
                               code, echo ? echo : twilio_message(code), code, a->status);
        else
            th_mock_resp_bodyf(r, "{\"code\":20500,\"message\":\"Internal Server Error\","
                                  "\"more_info\":\"https://www.twilio.com/docs/errors/20500\","
                                  "\"status\":%d}",
                               a->status);
        return;
    }
    case TH_MSG_WHATSAPP: {
        long code = a->code ? a->code : a->status == 429 ? 130429 : a->status == 401 ? 190 : 2;
        th_mock_resp_bodyf(r, "{\"error\":{\"message\":\"%s\",\"type\":\"OAuthException\",\"code\":"
                              "%ld,\"error_data\":{\"messaging_product\":\"whatsapp\",\"details\":"
                              "\"mock\"},\"fbtrace_id\":\"AbCdMock01\"}}",
                           echo ? echo : wa_message(code), code);
        return;
    }
    }
}

/* What an echoing server repeats of the request: its credentials and target; new string. */
static char *th_msg_echo(const th_mock_req *req)
{
    const char *auth = th_mock_req_header(req, "Authorization");
    return eng_xasprintf("rejected %s %s with Authorization: %s", req->method, req->target,
                         auth ? auth : "(none)");
}

/* Records an accepted send and returns its provider id (borrowed from the record). */
static const char *accept_locked(th_msg *m, const json_t *body)
{
    if (m->nsents == m->capsents) {
        m->capsents = m->capsents ? 2 * m->capsents : 16;
        m->sents = eng_xrealloc(m->sents, (size_t)m->capsents * sizeof *m->sents);
    }
    sent *s = &m->sents[m->nsents++];
    s->key = send_key_of(m->flavor, body);
    s->body = json_deep_copy(body);
    s->to = NULL;
    m->seq++;
    if (m->flavor == TH_MSG_SENDGRID)
        s->message_id = eng_xasprintf("mock%lu.dfd.64b469", m->seq);
    else if (m->flavor == TH_MSG_TWILIO)
        s->message_id = eng_xasprintf("SM%032lx", m->seq);
    else
        s->message_id = eng_xasprintf("wamid.MOCK%lu", m->seq);
    return s->message_id;
}

static void success_answer(th_msg *m, th_mock_resp *r, const json_t *body, const char *id,
                           const th_msg_answer *a)
{
    if (m->flavor == TH_MSG_SENDGRID) {
        th_mock_resp_status(r, 202);
        th_mock_resp_header(r, "X-Message-Id", "%s", id);
        th_mock_resp_header(r, "X-RateLimit-Limit", "600");
        th_mock_resp_header(r, "X-RateLimit-Remaining", "599");
        return;
    }
    th_mock_resp_header(r, "Content-Type", "application/json");
    if (m->flavor == TH_MSG_TWILIO) {
        th_mock_resp_status(r, 201);
        const char *from = json_string_value(json_object_get(body, "From"));
        json_t *out = json_pack(
            "{s:s, s:s, s:s?, s:s?, s:s?, s:s, s:s, s:s, s:s, s:n, s:s}", "sid", id, "account_sid",
            TH_MSG_TWILIO_SID, "to", json_string_value(json_object_get(body, "To")), "from", from,
            "body", json_string_value(json_object_get(body, "Body")), "status", "queued",
            "direction", "outbound-api", "num_segments", "1", "num_media", "0", "error_code",
            "date_created", "Thu, 01 Jan 2026 00:00:00 +0000");
        char *s = json_dumps(out, JSON_COMPACT);
        th_mock_resp_body(r, s, strlen(s));
        free(s);
        json_decref(out);
        return;
    }
    th_mock_resp_status(r, 200);
    const char *to = json_string_value(json_object_get(body, "to"));
    json_t *out = json_pack("{s:s, s:[{s:s?, s:s?}], s:[{s:s, s:s}]}", "messaging_product",
                            "whatsapp", "contacts", "input", to, "wa_id", to, "messages", "id", id,
                            "message_status", a->held ? "held_for_quality_assessment" : "accepted");
    char *s = json_dumps(out, JSON_COMPACT);
    th_mock_resp_body(r, s, strlen(s));
    free(s);
    json_decref(out);
}

static bool auth_ok(th_msg *m, const th_mock_req *req, const char *target)
{
    const char *auth = th_mock_req_header(req, "Authorization");
    if (!auth)
        return false;
    if (m->flavor == TH_MSG_SENDGRID)
        return strcmp(auth, "Bearer " TH_MSG_SENDGRID_KEY) == 0;
    if (m->flavor == TH_MSG_WHATSAPP)
        return strcmp(auth, "Bearer " TH_MSG_WA_TOKEN) == 0 &&
               strncmp(target, "/" TH_MSG_WA_PHONE_ID "/messages", 14) == 0;
    const char *plain = TH_MSG_TWILIO_SID ":" TH_MSG_TWILIO_TOKEN;
    unsigned char b64[128];
    EVP_EncodeBlock(b64, (const unsigned char *)plain, (int)strlen(plain));
    return strncmp(auth, "Basic ", 6) == 0 && strcmp(auth + 6, (const char *)b64) == 0 &&
           strstr(target, "/Accounts/" TH_MSG_TWILIO_SID "/");
}

static void twilio_list(th_msg *m, const th_mock_req *req, th_mock_resp *r)
{
    const char *q = strchr(req->target, '?');
    json_t *params = q ? form_object(q + 1, strlen(q + 1)) : json_object();
    const char *to = json_string_value(json_object_get(params, "To"));
    json_t *list = json_array();
    for (int i = 0; i < m->nsents; i++) {
        const json_t *b = m->sents[i].body;
        const char *bto = json_string_value(json_object_get(b, "To"));
        if (to && bto && strcmp(to, bto) != 0)
            continue;
        json_array_append_new(
            list, json_pack("{s:s, s:s?, s:s?, s:s?, s:s?, s:s, s:s}", "sid",
                            m->sents[i].message_id, "to", bto, "from",
                            json_string_value(json_object_get(b, "From")), "messaging_service_sid",
                            json_string_value(json_object_get(b, "MessagingServiceSid")), "body",
                            json_string_value(json_object_get(b, "Body")), "status", "sent",
                            "num_segments", "1"));
    }
    json_t *out = json_pack("{s:o, s:i, s:i}", "messages", list, "page", 0, "page_size", 100);
    char *s = json_dumps(out, JSON_COMPACT);
    th_mock_resp_header(r, "Content-Type", "application/json");
    th_mock_resp_body(r, s, strlen(s));
    free(s);
    json_decref(out);
    json_decref(params);
}

static void handler(void *arg, const th_mock_req *req, th_mock_resp *r)
{
    th_msg *m = arg;
    pthread_mutex_lock(&m->mu);
    if (m->flavor == TH_MSG_TWILIO && strcmp(req->method, "GET") == 0) {
        m->lookups++;
        if (!auth_ok(m, req, req->target)) {
            th_msg_answer a = {.status = 401};
            error_answer(m, r, &a, NULL);
        } else {
            twilio_list(m, req, r);
        }
        pthread_mutex_unlock(&m->mu);
        return;
    }
    json_t *body = m->flavor == TH_MSG_TWILIO ? form_object(req->body, req->body_len)
                                              : json_loadb(req->body, req->body_len, 0, NULL);
    if (m->nrecs == m->caprecs) {
        m->caprecs = m->caprecs ? 2 * m->caprecs : 16;
        m->recs = eng_xrealloc(m->recs, (size_t)m->caprecs * sizeof *m->recs);
    }
    const char *auth = th_mock_req_header(req, "Authorization");
    const char *ctype = th_mock_req_header(req, "Content-Type");
    m->recs[m->nrecs++] = (rec){.body = json_incref(body),
                                .auth = auth ? eng_xstrdup(auth) : NULL,
                                .ctype = ctype ? eng_xstrdup(ctype) : NULL,
                                .target = eng_xstrdup(req->target)};
    th_msg_answer a = {0};
    if (m->nscript > 0) {
        a = m->script[0];
        memmove(m->script, m->script + 1, (size_t)--m->nscript * sizeof *m->script);
    }
    if (!auth_ok(m, req, req->target)) {
        a = (th_msg_answer){.status = 401};
    } else if (!body || strcmp(req->method, "POST") != 0) {
        a = (th_msg_answer){.status = 400, .code = m->flavor == TH_MSG_WHATSAPP ? 100 : 21211};
    }
    const char *id = NULL;
    if ((a.status == 0 || a.accept || a.hang_ms) && !(a.status == 401))
        id = accept_locked(m, body);
    if (a.drop) {
        th_mock_resp_drop(r);
    } else if (a.status) {
        char *echo = a.echo ? th_msg_echo(req) : NULL;
        error_answer(m, r, &a, echo);
        free(echo);
    } else {
        success_answer(m, r, body, id, &a);
    }
    if (a.hang_ms || a.delay_ms)
        th_mock_resp_delay(r, a.hang_ms ? a.hang_ms : a.delay_ms);
    pthread_mutex_unlock(&m->mu);
    json_decref(body);
}

/* -------------------------------------------------------------------------------- API -- */

th_msg *th_msg_start(th_msg_flavor flavor)
{
    th_msg *m = eng_xcalloc(1, sizeof *m);
    m->flavor = flavor;
    pthread_mutex_init(&m->mu, NULL);
    m->http = th_mock_start(handler, m);
    return m;
}

void th_msg_stop(th_msg *m)
{
    if (!m)
        return;
    th_mock_stop(m->http);
    for (int i = 0; i < m->nrecs; i++) {
        json_decref(m->recs[i].body);
        free(m->recs[i].auth);
        free(m->recs[i].ctype);
        free(m->recs[i].target);
    }
    for (int i = 0; i < m->nsents; i++) {
        free(m->sents[i].key);
        free(m->sents[i].message_id);
        json_decref(m->sents[i].body);
        free(m->sents[i].to);
    }
    free(m->recs);
    free(m->sents);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

const char *th_msg_url(const th_msg *m)
{
    return th_mock_url(m->http);
}

void th_msg_push(th_msg *m, th_msg_answer a)
{
    pthread_mutex_lock(&m->mu);
    if (m->nscript < MAX_SCRIPT)
        m->script[m->nscript++] = a;
    pthread_mutex_unlock(&m->mu);
}

int th_msg_requests(th_msg *m)
{
    pthread_mutex_lock(&m->mu);
    int n = m->nrecs;
    pthread_mutex_unlock(&m->mu);
    return n;
}

int th_msg_accepted(th_msg *m)
{
    pthread_mutex_lock(&m->mu);
    int n = m->nsents;
    pthread_mutex_unlock(&m->mu);
    return n;
}

int th_msg_accepted_for(th_msg *m, const char *send_key)
{
    pthread_mutex_lock(&m->mu);
    int n = 0;
    for (int i = 0; i < m->nsents; i++)
        n += strcmp(m->sents[i].key, send_key) == 0;
    pthread_mutex_unlock(&m->mu);
    return n;
}

int th_msg_lookups(th_msg *m)
{
    pthread_mutex_lock(&m->mu);
    int n = m->lookups;
    pthread_mutex_unlock(&m->mu);
    return n;
}

json_t *th_msg_request_body(th_msg *m, int n)
{
    pthread_mutex_lock(&m->mu);
    json_t *b = n >= 0 && n < m->nrecs ? json_deep_copy(m->recs[n].body) : NULL;
    pthread_mutex_unlock(&m->mu);
    return b;
}

char *th_msg_request_header(th_msg *m, int n, const char *name)
{
    pthread_mutex_lock(&m->mu);
    char *v = NULL;
    if (n >= 0 && n < m->nrecs) {
        const char *s = strcasecmp(name, "Authorization") == 0 ? m->recs[n].auth
                                                                : m->recs[n].ctype;
        v = s ? eng_xstrdup(s) : NULL;
    }
    pthread_mutex_unlock(&m->mu);
    return v;
}

char *th_msg_request_target(th_msg *m, int n)
{
    pthread_mutex_lock(&m->mu);
    char *v = n >= 0 && n < m->nrecs ? eng_xstrdup(m->recs[n].target) : NULL;
    pthread_mutex_unlock(&m->mu);
    return v;
}

char *th_msg_message_id(th_msg *m, const char *send_key)
{
    pthread_mutex_lock(&m->mu);
    char *v = NULL;
    for (int i = 0; i < m->nsents && !v; i++)
        if (strcmp(m->sents[i].key, send_key) == 0)
            v = eng_xstrdup(m->sents[i].message_id);
    pthread_mutex_unlock(&m->mu);
    return v;
}

/* ---------------------------------------------------------------------------- signing -- */

typedef struct kv {
    char *k, *v;
} kv;

static int kv_cmp(const void *a, const void *b)
{
    const kv *x = a, *y = b;
    int c = strcmp(x->k, y->k);
    return c ? c : strcmp(x->v, y->v);
}

char *th_msg_twilio_signature(const char *url, const char *form, const char *token)
{
    kv pairs[256];
    size_t n = 0;
    const char *p = form, *end = form + strlen(form);
    while (p < end && n < 256) {
        const char *amp = strchr(p, '&');
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        pairs[n].k = form_decode(p, (size_t)((eq ? eq : stop) - p));
        pairs[n].v = eq ? form_decode(eq + 1, (size_t)(stop - eq - 1)) : eng_xstrdup("");
        n++;
        p = stop + 1;
    }
    qsort(pairs, n, sizeof *pairs, kv_cmp);
    size_t len = strlen(url);
    for (size_t i = 0; i < n; i++)
        len += strlen(pairs[i].k) + strlen(pairs[i].v);
    char *data = eng_xmalloc(len + 1);
    strcpy(data, url);
    for (size_t i = 0; i < n; i++) {
        strcat(data, pairs[i].k);
        strcat(data, pairs[i].v);
        free(pairs[i].k);
        free(pairs[i].v);
    }
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    HMAC(EVP_sha1(), token, (int)strlen(token), (unsigned char *)data, strlen(data), mac, &maclen);
    free(data);
    char *out = eng_xmalloc(4 * ((maclen + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, mac, (int)maclen);
    return out;
}

char *th_msg_hub_signature(const char *secret, const char *body)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)body, strlen(body), mac,
         &maclen);
    char *out = eng_xmalloc(7 + 2 * maclen + 1);
    strcpy(out, "sha256=");
    for (unsigned int i = 0; i < maclen; i++)
        snprintf(out + 7 + 2 * i, 3, "%02x", mac[i]);
    return out;
}

struct th_msg_eckey {
    EVP_PKEY *pk;
};

th_msg_eckey *th_msg_eckey_new(char **public_b64)
{
    th_msg_eckey *k = eng_xcalloc(1, sizeof *k);
    k->pk = EVP_EC_gen("P-256");
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(k->pk, &der);
    *public_b64 = eng_xmalloc(4 * (((size_t)n + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)*public_b64, der, n);
    OPENSSL_free(der);
    return k;
}

void th_msg_eckey_free(th_msg_eckey *k)
{
    if (!k)
        return;
    EVP_PKEY_free(k->pk);
    free(k);
}

char *th_msg_ecdsa_sign(th_msg_eckey *k, const char *timestamp, const char *body)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    size_t siglen = 0;
    unsigned char sig[256];
    EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k->pk);
    EVP_DigestSignUpdate(md, timestamp, strlen(timestamp));
    EVP_DigestSignUpdate(md, body, strlen(body));
    siglen = sizeof sig;
    EVP_DigestSignFinal(md, sig, &siglen);
    EVP_MD_CTX_free(md);
    char *out = eng_xmalloc(4 * ((siglen + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, sig, (int)siglen);
    return out;
}
