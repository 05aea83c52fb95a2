/* api/routes_hooks.c: inbound provider webhooks (docs/internals/provider-apis.md §3.1, §4.1,
 * §5.1).
 *
 *   POST /v1/hooks/twilio?tenant=ID     status callbacks and inbound SMS (form-encoded),
 *                                       X-Twilio-Signature (HMAC-SHA1, auth token)
 *   POST /v1/hooks/sendgrid?tenant=ID   Event Webhook (JSON array), ECDSA P-256 over
 *                                       timestamp + body with the Signed Event Webhook key
 *   POST /v1/hooks/whatsapp?tenant=ID   Cloud API notifications, X-Hub-Signature-256
 *                                       (HMAC-SHA256, app secret)
 *   GET  /v1/hooks/whatsapp?tenant=ID   the subscription verification (hub.verify_token)
 *
 * These routes are open (providers hold no API key): the signature, checked with the tenant's own
 * secret (provider_settings) or the environment's, is the authentication, and it decides the one
 * tenant a post belongs to. A tenant's own secret binds the post to the tenant of ?tenant=. The
 * environment's secret belongs to the operator's provider accounts, whose tenant is
 * FLOWD_WEBHOOK_TENANT (a tenant id) or else the tenant named "default": SendGrid and WhatsApp
 * sign the body only, so such a post is applied to that tenant and refused (401) with any other
 * ?tenant=, which the signature does not cover. Twilio signs the whole URL, ?tenant= included
 * (flowd puts it in the status callbacks it asks for), so there ?tenant= stands. A missing or bad
 * signature gets 401 and changes nothing.
 * A verified POST becomes a list of items applied by flowd_hooks_apply in one transaction
 * (dedup, monotonic delivery state, suppression list, events), and 200 is sent only after it
 * committed, so a provider retries anything we did not store.
 *
 * Secrets (settings field, environment variable):
 *   twilio    auth_token (TWILIO_AUTH_TOKEN), through prov_config_merge
 *   sendgrid  webhook_public_key (SENDGRID_WEBHOOK_PUBLIC_KEY): base64 DER SubjectPublicKeyInfo
 *   whatsapp  app_secret (WHATSAPP_APP_SECRET), verify_token (WHATSAPP_VERIFY_TOKEN)
 * The URL Twilio signed is FLOWD_PUBLIC_URL (scheme://host[:port], as Twilio reaches us) + path +
 * query, or http://<Host header> + path + query without it. SENDGRID_WEBHOOK_MAX_AGE_S (default
 * 300; 0 = no check) bounds the signed timestamp's distance from now. */
#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/api_int.h"
#include "engine/buf.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "engine/secret.h"
#include "steps/provider.h"

#define HOOK_MAX_ITEMS 10000

typedef void hook_fn(api_call *call, const json_t *settings);

typedef struct hook_state {
    prov_id provider;
    hook_fn *fn;
    long long owner; /* the tenant owning the environment's provider accounts (0: none) */
} hook_state;

/* ------------------------------------------------------------------------------ crypto -- */

/* Base64 decode into a new buffer; NULL when malformed. */
static unsigned char *b64_decode(const char *in, size_t *outlen)
{
    size_t n = strlen(in);
    if (n == 0 || n % 4 != 0)
        return NULL;
    unsigned char *out = eng_xmalloc(n / 4 * 3 + 1);
    int len = EVP_DecodeBlock(out, (const unsigned char *)in, (int)n);
    if (len < 0) {
        free(out);
        return NULL;
    }
    /* EVP_DecodeBlock counts padding as zero bytes */
    if (n >= 1 && in[n - 1] == '=')
        len--;
    if (n >= 2 && in[n - 2] == '=')
        len--;
    *outlen = (size_t)len;
    return out;
}

bool api_hmac_matches(api_hmac_alg alg, const char *key, size_t keylen, const char *data,
                      size_t len, bool hex, const char *want)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (!HMAC(alg == API_HMAC_SHA1 ? EVP_sha1() : EVP_sha256(), key, (int)keylen,
              (const unsigned char *)data, len, mac, &maclen))
        return false;
    char enc[2 * EVP_MAX_MD_SIZE + 1];
    size_t n;
    if (hex) {
        for (unsigned int i = 0; i < maclen; i++)
            snprintf(enc + 2 * i, 3, "%02x", mac[i]);
        n = 2 * (size_t)maclen;
    } else {
        n = (size_t)EVP_EncodeBlock((unsigned char *)enc, mac, (int)maclen);
    }
    return strlen(want) == n && CRYPTO_memcmp(enc, want, n) == 0;
}

/* ECDSA (P-256) with SHA-256 over timestamp + body, key = base64 DER SubjectPublicKeyInfo. */
static bool ecdsa_verify(const char *key_b64, const char *sig_b64, const char *ts, const char *body,
                         size_t len)
{
    size_t keylen = 0, siglen = 0;
    unsigned char *key = b64_decode(key_b64, &keylen);
    unsigned char *sig = b64_decode(sig_b64, &siglen);
    bool ok = false;
    EVP_PKEY *pk = NULL;
    EVP_MD_CTX *md = NULL;
    if (!key || !sig)
        goto out;
    const unsigned char *p = key;
    pk = d2i_PUBKEY(NULL, &p, (long)keylen);
    md = EVP_MD_CTX_new();
    if (!pk || !md || EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pk) != 1 ||
        EVP_DigestVerifyUpdate(md, ts, strlen(ts)) != 1 ||
        EVP_DigestVerifyUpdate(md, body, len) != 1)
        goto out;
    ok = EVP_DigestVerifyFinal(md, sig, siglen) == 1;
out:
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pk);
    free(key);
    free(sig);
    return ok;
}

/* ----------------------------------------------------------------------------- plumbing -- */

/* A secret field: the tenant's settings first, then the environment (then *shared is set; shared
 * may be NULL). Borrowed or static. */
static const char *secret_of(const json_t *settings, const char *field, const char *env,
                             bool *shared)
{
    const char *v = json_string_value(json_object_get(settings, field));
    bool own = v && *v;
    if (!own)
        v = getenv(env);
    if (shared)
        *shared = !own;
    return v && *v ? v : NULL;
}

static void unauthorized(api_call *call, const char *provider, const char *why)
{
    eng_metrics_webhook_rejected(provider);
    log_warn("webhook refused", LOG_S("provider", provider), LOG_I("tenant", call->tenant),
             LOG_S("reason", why));
    api_call_respond_error(call, 401, "unauthorized", why, NULL);
}

/* A post verified with the environment's secret belongs to the tenant owning the operator's
 * provider accounts only. False (answered) for any other tenant. */
static bool bound_to_owner(api_call *call, bool shared)
{
    hook_state *st = call->data;
    if (!shared || call->tenant == st->owner)
        return true;
    unauthorized(call, prov_name(st->provider),
                 "signed with the operator's secret: it belongs to the tenant owning the provider "
                 "account, not to ?tenant=");
    return false;
}

static void applied_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    hook_state *st = call->data;
    log_info("webhook applied", LOG_S("provider", prov_name(st->provider)),
             LOG_I("tenant", call->tenant), LOG_S("applied", PQgetvalue(res, 0, 0)),
             LOG_S("duplicates", PQgetvalue(res, 0, 1)), LOG_S("events", PQgetvalue(res, 0, 2)));
    json_t *out = json_pack("{s:i, s:i, s:i}", "applied", atoi(PQgetvalue(res, 0, 0)),
                            "duplicates", atoi(PQgetvalue(res, 0, 1)), "events",
                            atoi(PQgetvalue(res, 0, 2)));
    if (st->provider == PROV_TWILIO && call->req) {
        /* Twilio reads the answer to an inbound message as TwiML: an empty one sends nothing */
        json_decref(out);
        static const char twiml[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>";
        api_call_respond_raw(call, 200, "text/xml", twiml, sizeof twiml - 1, NULL);
        return;
    }
    api_call_respond_json(call, 200, out);
}

/* Applies items (stolen) for the call's tenant. */
static void apply_items(api_call *call, json_t *items)
{
    hook_state *st = call->data;
    if (json_array_size(items) > HOOK_MAX_ITEMS) {
        json_decref(items);
        api_call_respond_error(call, 413, "too_large", "too many events in one delivery", NULL);
        return;
    }
    /* delivery outcomes as they arrive (a provider's retried delivery counts again) */
    static const char *const finals[][2] = {{"delivered", "delivered"},
                                            {"read", "read"},
                                            {"bounced", "bounced"},
                                            {"undelivered", "undelivered"},
                                            {"failed", "delivery_failed"}};
    size_t i;
    const json_t *it;
    json_array_foreach (items, i, it) {
        const char *del = json_string_value(json_object_get(it, "delivery"));
        for (size_t f = 0; del && f < ENG_ARRAY_LEN(finals); f++)
            if (strcmp(del, finals[f][0]) == 0)
                eng_metrics_send(st->provider == PROV_SENDGRID    ? "email"
                                 : st->provider == PROV_WHATSAPP ? "whatsapp"
                                                                 : "sms",
                                 finals[f][1]);
    }
    char *items_s = json_dumps(items, JSON_COMPACT);
    json_decref(items);
    const char *params[] = {call->tenant_s, prov_name(st->provider), items_s};
    api_call_db(call,
                "SELECT applied, duplicates, events FROM flowd_hooks_apply($1, $2, $3::jsonb)", 3,
                params, applied_cb);
    free(items_s);
}

static void settings_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    hook_state *st = call->data;
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    if (PQntuples(res) == 0) {
        unauthorized(call, prov_name(st->provider), "unknown tenant");
        return;
    }
    call->tenant = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    snprintf(call->tenant_s, sizeof call->tenant_s, "%lld", call->tenant);
    st->owner = PQgetisnull(res, 0, 2) ? 0 : strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    json_t *settings = PQgetisnull(res, 0, 1) ? NULL : json_loads(PQgetvalue(res, 0, 1), 0, NULL);
    eng_err open_err;
    if (json_is_object(settings) && sec_open_object(settings, &open_err) != ENG_OK) {
        /* 503: the provider retries the delivery once the operator configured the key */
        log_error("webhook settings cannot be opened", LOG_S("provider", prov_name(st->provider)),
                  LOG_I("tenant", call->tenant), LOG_S("reason", open_err.msg));
        json_decref(settings);
        api_call_respond_error(call, 503, "unavailable", "provider settings cannot be read", NULL);
        return;
    }
    st->fn(call, json_is_object(settings) ? settings : NULL);
    json_decref(settings);
}

/* Reads ?tenant= (default: the owner of the operator's accounts), then that tenant's settings for
 * the provider and the owner's id, then runs fn. */
static void hook_begin(api_call *call, prov_id provider, hook_fn *fn)
{
    const char *t = api_req_query(call->req, "tenant");
    char *end = NULL;
    long long tenant = t && *t ? strtoll(t, &end, 10) : 0;
    if (t && (!*t || *end || tenant <= 0)) {
        api_call_respond_error(call, 400, "invalid_request", "tenant must be a tenant id",
                               "tenant");
        return;
    }
    const char *owner = getenv("FLOWD_WEBHOOK_TENANT");
    hook_state *st = eng_xcalloc(1, sizeof *st);
    st->provider = provider;
    st->fn = fn;
    call->data = st;
    call->data_free = free;
    const char *params[] = {t, prov_name(provider), owner && *owner ? owner : NULL};
    api_call_db(call,
                "WITH o AS (SELECT coalesce($3::bigint, (SELECT id FROM tenants"
                " WHERE name = 'default')) AS id)"
                " SELECT t.id, ps.settings, o.id FROM o JOIN tenants t"
                " ON t.id = coalesce($1::bigint, o.id)"
                " LEFT JOIN provider_settings ps ON ps.tenant_id = t.id AND ps.provider = $2",
                3, params, settings_cb);
}

static json_t *item_new(const char *fmt_dedup, const char *a, const char *b)
{
    char *dedup = eng_xasprintf(fmt_dedup, a, b ? b : "");
    json_t *it = json_pack("{s:s}", "dedup", dedup);
    free(dedup);
    return it;
}

static void set_str(json_t *obj, const char *name, const char *v)
{
    if (v && *v)
        json_object_set_new(obj, name, json_string(v));
}

static json_t *target(const char *channel, const char *address, const char *reason)
{
    return json_pack("{s:s, s:s, s:s}", "channel", channel, "address", address, "reason", reason);
}

/* ---------------------------------------------------------------------------- Twilio -- */

/* Decodes application/x-www-form-urlencoded into a new string. */
static char *form_decode(const char *s, size_t n)
{
    char *out = eng_xmalloc(n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') {
            *o++ = ' ';
        } else if (s[i] == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
                   isxdigit((unsigned char)s[i + 2])) {
            char hex[3] = {s[i + 1], s[i + 2], 0};
            *o++ = (char)strtol(hex, NULL, 16);
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

typedef struct form_pair {
    char *name, *value;
} form_pair;

static int pair_cmp(const void *a, const void *b)
{
    const form_pair *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->value, y->value);
}

/* The params as an object (last value wins), and sorted name+value concatenated onto sig. */
static json_t *form_parse(const char *body, size_t len, eng_buf *sig)
{
    json_t *obj = json_object();
    size_t cap = 16, n = 0;
    form_pair *pairs = eng_xmalloc(cap * sizeof *pairs);
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        if (stop > p) {
            if (n == cap)
                pairs = eng_xrealloc(pairs, (cap *= 2) * sizeof *pairs);
            pairs[n].name = form_decode(p, (size_t)((eq ? eq : stop) - p));
            pairs[n].value = eq ? form_decode(eq + 1, (size_t)(stop - eq - 1)) : eng_xstrdup("");
            json_object_set_new(obj, pairs[n].name, json_string(pairs[n].value));
            n++;
        }
        p = stop + 1;
    }
    qsort(pairs, n, sizeof *pairs, pair_cmp);
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        ok = ok && eng_buf_append(sig, pairs[i].name, strlen(pairs[i].name)) == ENG_OK &&
             eng_buf_append(sig, pairs[i].value, strlen(pairs[i].value)) == ENG_OK;
        free(pairs[i].name);
        free(pairs[i].value);
    }
    free(pairs);
    if (!ok) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

/* The URL Twilio signed, and its twin with the default port added or removed. */
static void twilio_urls(api_req *req, char **a, char **b)
{
    const char *pub = getenv("FLOWD_PUBLIC_URL");
    const char *host = api_req_header(req, "Host");
    char *base = pub && *pub ? eng_xstrdup(pub) : eng_xasprintf("http://%s", host ? host : "");
    size_t bl = strlen(base);
    if (bl && base[bl - 1] == '/')
        base[--bl] = '\0';
    const char *q = api_req_raw_query(req);
    *a = eng_xasprintf("%s%s%s%s", base, api_req_path(req), *q ? "?" : "", q);
    bool https = strncmp(base, "https://", 8) == 0;
    const char *dport = https ? ":443" : ":80";
    const char *hoststart = strstr(base, "://");
    hoststart = hoststart ? hoststart + 3 : base;
    const char *colon = strrchr(hoststart, ':');
    if (colon && strcmp(colon, dport) == 0) /* with the default port: try without */
        *b = eng_xasprintf("%.*s%s%s%s", (int)(colon - base), base, api_req_path(req),
                           *q ? "?" : "", q);
    else if (!colon || strchr(colon, ']')) /* without a port: try with the default one */
        *b = eng_xasprintf("%s%s%s%s%s", base, dport, api_req_path(req), *q ? "?" : "", q);
    else
        *b = NULL;
    free(base);
}

static const char *twilio_delivery(const char *status)
{
    static const char *const map[][2] = {
        {"accepted", "queued"},   {"scheduled", "queued"},       {"queued", "queued"},
        {"sending", "queued"},    {"sent", "sent"},              {"delivered", "delivered"},
        {"read", "read"},         {"undelivered", "undelivered"}, {"failed", "failed"},
        {"canceled", "failed"},   {"partially_delivered", "delivered"}};
    for (size_t i = 0; i < ENG_ARRAY_LEN(map); i++)
        if (strcmp(map[i][0], status) == 0)
            return map[i][1];
    return NULL;
}

static bool word_in(const char *body, const char *const *words, size_t n)
{
    char w[16];
    size_t len = 0;
    while (isspace((unsigned char)*body))
        body++;
    while (*body && len < sizeof w - 1)
        w[len++] = (char)toupper((unsigned char)*body++);
    while (len && isspace((unsigned char)w[len - 1]))
        len--;
    w[len] = '\0';
    for (size_t i = 0; i < n; i++)
        if (strcmp(w, words[i]) == 0)
            return true;
    return false;
}

static json_t *twilio_items(api_call *call, const json_t *p)
{
    const char *sid = json_string_value(json_object_get(p, "MessageSid"));
    if (!sid)
        sid = json_string_value(json_object_get(p, "SmsSid"));
    const char *status = json_string_value(json_object_get(p, "MessageStatus"));
    if (!status)
        status = json_string_value(json_object_get(p, "SmsStatus"));
    const char *from = json_string_value(json_object_get(p, "From"));
    const char *to = json_string_value(json_object_get(p, "To"));
    const char *body = json_string_value(json_object_get(p, "Body"));
    const char *errcode = json_string_value(json_object_get(p, "ErrorCode"));
    if (!sid || !status)
        return NULL;
    json_t *items = json_array();
    if (strcmp(status, "received") == 0 || strcmp(status, "receiving") == 0) {
        if (!from)
            goto bad;
        json_t *it = item_new("in:%s%s", sid, NULL);
        json_t *data = json_pack("{s:s, s:s}", "from", from, "message_sid", sid);
        set_str(data, "to", to);
        set_str(data, "body", body ? body : "");
        json_object_set_new(it, "event", json_pack("{s:s, s:s, s:o}", "name", "sms.received",
                                                   "key", from, "data", data));
        static const char *const stop[] = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL",
                                           "END",  "QUIT",    "OPTOUT",      "REVOKE"};
        static const char *const start[] = {"START", "UNSTOP", "YES"};
        const char *optout = json_string_value(json_object_get(p, "OptOutType"));
        if ((optout && strcmp(optout, "STOP") == 0) ||
            (body && word_in(body, stop, ENG_ARRAY_LEN(stop))))
            json_object_set_new(it, "suppress", target("sms", from, "stop"));
        else if ((optout && strcmp(optout, "START") == 0) ||
                 (body && word_in(body, start, ENG_ARRAY_LEN(start))))
            json_object_set_new(it, "unsuppress", target("sms", from, "stop"));
        json_array_append_new(items, it);
        return items;
    }
    json_t *it = item_new("status:%s:%s", sid, status);
    set_str(it, "message_id", sid);
    set_str(it, "send_key", api_req_query(call->req, "send_key"));
    const char *del = twilio_delivery(status);
    set_str(it, "delivery", del);
    if (errcode && *errcode)
        json_object_set_new(it, "error", json_pack("{s:s}", "code", errcode));
    if (errcode && strcmp(errcode, "21610") == 0 && to)
        json_object_set_new(it, "suppress", target("sms", to, "21610"));
    if (to && del && (strcmp(del, "delivered") == 0 || strcmp(del, "failed") == 0 ||
                      strcmp(del, "undelivered") == 0)) {
        json_t *data = json_pack("{s:s, s:s, s:s}", "message_sid", sid, "status", status, "to", to);
        set_str(data, "error_code", errcode);
        set_str(data, "send_key", api_req_query(call->req, "send_key"));
        char name[40];
        snprintf(name, sizeof name, "sms.%s", del);
        json_object_set_new(it, "event", json_pack("{s:s, s:s, s:o}", "name", name, "key", to,
                                                   "data", data));
    }
    json_array_append_new(items, it);
    return items;
bad:
    json_decref(items);
    return NULL;
}

static void twilio_hook(api_call *call, const json_t *settings)
{
    prov_config *cfg = prov_config_merge(PROV_TWILIO, settings);
    const char *token = prov_config_get(cfg, "auth_token");
    const char *sig = api_req_header(call->req, "X-Twilio-Signature");
    if (!token || !*token || !sig) {
        prov_config_free(cfg);
        unauthorized(call, "twilio", token ? "missing X-Twilio-Signature" : "no auth token configured");
        return;
    }
    size_t len;
    const char *body = api_req_body(call->req, &len);
    char *url_a, *url_b;
    twilio_urls(call->req, &url_a, &url_b);
    eng_buf sa;
    eng_buf_init(&sa, 0);
    bool ok = eng_buf_append(&sa, url_a, strlen(url_a)) == ENG_OK;
    json_t *params = ok ? form_parse(body, len, &sa) : NULL;
    ok = params && api_hmac_matches(API_HMAC_SHA1, token, strlen(token), sa.ptr, sa.len, false, sig);
    if (!ok && params && url_b) {
        eng_buf tmp;
        eng_buf_init(&tmp, 0);
        json_t *again = eng_buf_append(&tmp, url_b, strlen(url_b)) == ENG_OK
                            ? form_parse(body, len, &tmp) : NULL;
        ok = again &&
             api_hmac_matches(API_HMAC_SHA1, token, strlen(token), tmp.ptr, tmp.len, false, sig);
        json_decref(again);
        eng_buf_deinit(&tmp);
    }
    prov_config_free(cfg);
    free(url_a);
    free(url_b);
    eng_buf_deinit(&sa);
    if (!ok) {
        json_decref(params);
        unauthorized(call, "twilio", "bad X-Twilio-Signature");
        return;
    }
    json_t *items = twilio_items(call, params);
    json_decref(params);
    if (!items) {
        api_call_respond_error(call, 400, "invalid_request",
                               "not a Twilio message status or inbound message", NULL);
        return;
    }
    apply_items(call, items);
}

void api_route_hook_twilio(api_call *call)
{
    hook_begin(call, PROV_TWILIO, twilio_hook);
}

/* -------------------------------------------------------------------------- SendGrid -- */

static const char *sendgrid_delivery(const char *event, const char *type)
{
    if (strcmp(event, "processed") == 0 || strcmp(event, "deferred") == 0)
        return "queued";
    if (strcmp(event, "delivered") == 0)
        return "delivered";
    if (strcmp(event, "open") == 0 || strcmp(event, "click") == 0)
        return "read";
    if (strcmp(event, "bounce") == 0)
        return type && strcmp(type, "blocked") == 0 ? "failed" : "bounced";
    if (strcmp(event, "dropped") == 0)
        return "failed";
    return NULL;
}

static const char *sendgrid_event_name(const char *event)
{
    static const char *const map[][2] = {
        {"delivered", "email.delivered"},     {"bounce", "email.bounced"},
        {"dropped", "email.dropped"},         {"open", "email.opened"},
        {"click", "email.clicked"},           {"spamreport", "email.spamreport"},
        {"unsubscribe", "email.unsubscribed"}, {"group_unsubscribe", "email.unsubscribed"},
        {"deferred", "email.deferred"}};
    for (size_t i = 0; i < ENG_ARRAY_LEN(map); i++)
        if (strcmp(map[i][0], event) == 0)
            return map[i][1];
    return NULL;
}

/* One SendGrid event to an item; NULL when it is not an event object. */
static json_t *sendgrid_item(json_t *ev)
{
    const char *event = json_string_value(json_object_get(ev, "event"));
    const char *email = json_string_value(json_object_get(ev, "email"));
    if (!json_is_object(ev) || !event || !email)
        return NULL;
    const char *eid = json_string_value(json_object_get(ev, "sg_event_id"));
    const char *mid = json_string_value(json_object_get(ev, "sg_message_id"));
    const json_t *ts = json_object_get(ev, "timestamp");
    json_t *it;
    if (eid && *eid) {
        it = item_new("%s%s", eid, NULL);
    } else {
        char *fb = eng_xasprintf("%s|%s|%lld|%s", mid ? mid : "", event,
                                 (long long)json_integer_value(ts), email);
        it = item_new("fb:%s%s", fb, NULL);
        free(fb);
    }
    char *addr = eng_xstrdup(email);
    for (char *p = addr; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    if (mid && *mid) {
        /* events carry X-Message-Id plus a ".filter..." suffix */
        const char *cut = strstr(mid, ".filter");
        char *id = eng_xstrndup(mid, cut ? (size_t)(cut - mid) : strlen(mid));
        set_str(it, "message_id", id);
        free(id);
    }
    set_str(it, "send_key", json_string_value(json_object_get(ev, "flowd_send_key")));
    const char *type = json_string_value(json_object_get(ev, "type"));
    set_str(it, "delivery", sendgrid_delivery(event, type));
    if (strcmp(event, "bounce") == 0 || strcmp(event, "dropped") == 0) {
        json_t *e = json_object();
        set_str(e, "reason", json_string_value(json_object_get(ev, "reason")));
        set_str(e, "status", json_string_value(json_object_get(ev, "status")));
        set_str(e, "type", type);
        json_object_set_new(it, "error", e);
    }
    if (strcmp(event, "bounce") == 0 && !(type && strcmp(type, "blocked") == 0))
        json_object_set_new(it, "suppress", target("email", addr, "bounce"));
    else if (strcmp(event, "spamreport") == 0)
        json_object_set_new(it, "suppress", target("email", addr, "spamreport"));
    else if (strcmp(event, "unsubscribe") == 0 || strcmp(event, "group_unsubscribe") == 0)
        json_object_set_new(it, "suppress", target("email", addr, "unsubscribed"));
    const char *name = sendgrid_event_name(event);
    if (name)
        json_object_set_new(it, "event", json_pack("{s:s, s:s, s:O}", "name", name, "key", addr,
                                                   "data", ev));
    free(addr);
    return it;
}

static void sendgrid_hook(api_call *call, const json_t *settings)
{
    bool shared;
    const char *key =
        secret_of(settings, "webhook_public_key", "SENDGRID_WEBHOOK_PUBLIC_KEY", &shared);
    const char *sig = api_req_header(call->req, "X-Twilio-Email-Event-Webhook-Signature");
    const char *ts = api_req_header(call->req, "X-Twilio-Email-Event-Webhook-Timestamp");
    if (!key) {
        unauthorized(call, "sendgrid", "no webhook public key configured");
        return;
    }
    if (!sig || !ts) {
        unauthorized(call, "sendgrid", "missing signature or timestamp header");
        return;
    }
    size_t len;
    const char *body = api_req_body(call->req, &len);
    if (!ecdsa_verify(key, sig, ts, body, len)) {
        unauthorized(call, "sendgrid", "bad event webhook signature");
        return;
    }
    const char *age_s = getenv("SENDGRID_WEBHOOK_MAX_AGE_S");
    long max_age = age_s && *age_s ? strtol(age_s, NULL, 10) : 300;
    long long t = strtoll(ts, NULL, 10);
    long long now = (long long)time(NULL);
    if (max_age > 0 && (t < now - max_age || t > now + max_age)) {
        unauthorized(call, "sendgrid", "signed timestamp too far from now (replay?)");
        return;
    }
    if (!bound_to_owner(call, shared))
        return;
    json_t *events = json_loadb(body, len, 0, NULL);
    if (!json_is_array(events)) {
        json_decref(events);
        api_call_respond_error(call, 400, "invalid_request", "body must be a JSON array of events",
                               NULL);
        return;
    }
    json_t *items = json_array();
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev) {
        json_t *it = sendgrid_item(ev);
        if (it)
            json_array_append_new(items, it);
    }
    json_decref(events);
    apply_items(call, items);
}

void api_route_hook_sendgrid(api_call *call)
{
    hook_begin(call, PROV_SENDGRID, sendgrid_hook);
}

/* -------------------------------------------------------------------------- WhatsApp -- */

static void wa_message_item(json_t *items, const json_t *m, const json_t *contacts)
{
    const char *id = json_string_value(json_object_get(m, "id"));
    const char *from = json_string_value(json_object_get(m, "from"));
    if (!id || !from)
        return;
    char *e164 = eng_xasprintf("+%s", from);
    json_t *it = item_new("in:%s%s", id, NULL);
    const char *type = json_string_value(json_object_get(m, "type"));
    json_t *data = json_pack("{s:s, s:s, s:s}", "from", e164, "message_id", id, "type",
                             type ? type : "");
    set_str(data, "text", json_string_value(json_object_get(json_object_get(m, "text"), "body")));
    set_str(data, "timestamp", json_string_value(json_object_get(m, "timestamp")));
    size_t i;
    const json_t *c;
    json_array_foreach(contacts, i, c) {
        if (json_is_string(json_object_get(c, "wa_id")) &&
            strcmp(json_string_value(json_object_get(c, "wa_id")), from) == 0)
            set_str(data, "name",
                    json_string_value(json_object_get(json_object_get(c, "profile"), "name")));
    }
    json_object_set_new(it, "event", json_pack("{s:s, s:s, s:o}", "name", "whatsapp.received",
                                               "key", e164, "data", data));
    json_array_append_new(items, it);
    free(e164);
}

static void wa_status_item(json_t *items, const json_t *s)
{
    const char *id = json_string_value(json_object_get(s, "id"));
    const char *status = json_string_value(json_object_get(s, "status"));
    const char *rcpt = json_string_value(json_object_get(s, "recipient_id"));
    if (!id || !status)
        return;
    json_t *it = item_new("status:%s:%s", id, status);
    set_str(it, "message_id", id);
    set_str(it, "send_key", json_string_value(json_object_get(s, "biz_opaque_callback_data")));
    bool known = strcmp(status, "sent") == 0 || strcmp(status, "delivered") == 0 ||
                 strcmp(status, "read") == 0 || strcmp(status, "failed") == 0;
    if (known)
        set_str(it, "delivery", status);
    const json_t *err = json_array_get(json_object_get(s, "errors"), 0);
    long long code = json_integer_value(json_object_get(err, "code"));
    if (err)
        json_object_set(it, "error", (json_t *)err);
    char *e164 = rcpt ? eng_xasprintf("+%s", rcpt) : NULL;
    if (e164 && (code == 131026 || code == 131049)) {
        char reason[16];
        snprintf(reason, sizeof reason, "%lld", code);
        json_object_set_new(it, "suppress", target("whatsapp", e164, reason));
    }
    if (e164 && known && strcmp(status, "sent") != 0) {
        char name[40];
        snprintf(name, sizeof name, "whatsapp.%s", status);
        json_object_set_new(it, "event", json_pack("{s:s, s:s, s:O}", "name", name, "key", e164,
                                                   "data", s));
    }
    free(e164);
    json_array_append_new(items, it);
}

static void whatsapp_hook(api_call *call, const json_t *settings)
{
    bool shared;
    const char *secret = secret_of(settings, "app_secret", "WHATSAPP_APP_SECRET", &shared);
    const char *sig = api_req_header(call->req, "X-Hub-Signature-256");
    if (!secret) {
        unauthorized(call, "whatsapp", "no app secret configured");
        return;
    }
    size_t len;
    const char *body = api_req_body(call->req, &len);
    if (!sig || strncmp(sig, "sha256=", 7) != 0 ||
        !api_hmac_matches(API_HMAC_SHA256, secret, strlen(secret), body, len, true, sig + 7)) {
        unauthorized(call, "whatsapp", "bad X-Hub-Signature-256");
        return;
    }
    if (!bound_to_owner(call, shared))
        return;
    json_t *doc = json_loadb(body, len, 0, NULL);
    const json_t *entries = json_object_get(doc, "entry");
    if (!json_is_object(doc) || !json_is_array(entries)) {
        json_decref(doc);
        api_call_respond_error(call, 400, "invalid_request",
                               "body must be a WhatsApp notification {object, entry: [...]}", NULL);
        return;
    }
    json_t *items = json_array();
    size_t i, j, k;
    const json_t *e, *ch, *x;
    json_array_foreach(entries, i, e) {
        json_array_foreach(json_object_get(e, "changes"), j, ch) {
            const json_t *v = json_object_get(ch, "value");
            json_array_foreach(json_object_get(v, "messages"), k, x)
                wa_message_item(items, x, json_object_get(v, "contacts"));
            json_array_foreach(json_object_get(v, "statuses"), k, x) wa_status_item(items, x);
        }
    }
    json_decref(doc);
    apply_items(call, items);
}

void api_route_hook_whatsapp(api_call *call)
{
    hook_begin(call, PROV_WHATSAPP, whatsapp_hook);
}

static void whatsapp_verify(api_call *call, const json_t *settings)
{
    const char *want = secret_of(settings, "verify_token", "WHATSAPP_VERIFY_TOKEN", NULL);
    const char *mode = api_req_query(call->req, "hub.mode");
    const char *token = api_req_query(call->req, "hub.verify_token");
    const char *challenge = api_req_query(call->req, "hub.challenge");
    if (!want || !mode || strcmp(mode, "subscribe") != 0 || !token ||
        strlen(token) != strlen(want) || CRYPTO_memcmp(token, want, strlen(want)) != 0) {
        eng_metrics_webhook_rejected("whatsapp");
        log_warn("webhook verification refused", LOG_S("provider", "whatsapp"),
                 LOG_I("tenant", call->tenant));
        api_call_respond_error(call, 403, "forbidden", "verification token mismatch", NULL);
        return;
    }
    size_t n = challenge ? strlen(challenge) : 0;
    bool digits = n > 0 && n <= 64;
    for (size_t i = 0; digits && i < n; i++)
        digits = isalnum((unsigned char)challenge[i]) || challenge[i] == '-' ||
                 challenge[i] == '_' || challenge[i] == '.';
    if (!digits) {
        api_call_respond_error(call, 400, "invalid_request", "bad hub.challenge", "hub.challenge");
        return;
    }
    api_call_respond_raw(call, 200, "text/plain", challenge, n, NULL);
}

void api_route_hook_whatsapp_verify(api_call *call)
{
    hook_begin(call, PROV_WHATSAPP, whatsapp_verify);
}
