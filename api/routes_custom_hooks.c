/* api/routes_custom_hooks.c: inbound custom hooks, any service's signed webhook as an event.
 *
 *   PUT    /v1/hooks/custom/{name}             create or replace (201 / 200), admin keys
 *   GET    /v1/hooks/custom/{name}             one (its secret never: "secret_set")
 *   GET    /v1/hooks/custom                    all of the tenant's, by name
 *   DELETE /v1/hooks/custom/{name}
 *   POST   /v1/hooks/custom/{name}?tenant=ID   a delivery (open: the signature authenticates it)
 *
 * A hook names how its deliveries are verified, over the raw body:
 *   {"hmac": "sha256"|"sha1", "header", "encoding": "hex"|"base64", "prefix", "secret"}
 *   {"standard_webhooks": true, "secret": "whsec_..."}   webhook-id/-timestamp/-signature, the
 *                                                        timestamp within 5 minutes of now
 *   {"token": true, "header", "secret"}                  the header carries the secret itself
 * and the event a delivery becomes: {"name", "key", "data"?}, templates (engine/wf_template.h)
 * over {"body": the JSON body (or its text), "headers": {lower-case name: value}}; data defaults
 * to the body. The dedup key is a template too ("webhook-id" is short for {{headers.webhook-id}},
 * the default of standard_webhooks); without one it is the raw body's SHA-256.
 *
 * A delivery that does not verify gets 401 and changes nothing. One that does is checked as
 * POST /v1/events checks an event (the input of every run its triggers would start), then applied
 * with its dedup key in one transaction (flowd_custom_hook_apply): a replay answers 200 with
 * "duplicate": true and no effect. Secrets are sealed at rest like providers' (engine/secret.h). */
#include <ctype.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/api_int.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "engine/secret.h"
#include "engine/webhook.h"
#include "engine/wf_def.h"
#include "engine/wf_template.h"
#include "engine/wf_trigger.h"

#define CH_NAME_MAX      100
#define CH_HEADER_MAX    100
#define CH_PREFIX_MAX    32
#define CH_SECRET_MAX    1024
#define CH_TEMPLATE_MAX  4096
#define CH_EVENT_MAX     200 /* as POST /v1/events */
#define CH_KEY_MAX       500
#define CH_MAX_AGE_S     300 /* Standard Webhooks: a delivery signed longer ago is a replay */
#define CH_SIG_MAX       128

/* A hook's name: 1..100 of [A-Za-z0-9_.-]. Answers 404 and returns false otherwise. */
static bool ch_path_name(api_call *call)
{
    const char *n = call->params[0];
    size_t len = strlen(n);
    bool ok = len > 0 && len <= CH_NAME_MAX;
    for (size_t i = 0; ok && i < len; i++)
        ok = isalnum((unsigned char)n[i]) || n[i] == '_' || n[i] == '.' || n[i] == '-';
    if (!ok)
        api_call_respond_error(call, 404, "not_found", "hook not found", NULL);
    return ok;
}

/* ------------------------------------------------------------------------ configuration -- */

/* A header name: an HTTP token of 1..100 characters. */
static bool ch_header_ok(const json_t *v)
{
    const char *s = json_string_value(v);
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > CH_HEADER_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("!#$%&'*+-.^_`|~", s[i]))
            return false;
    return true;
}

/* Only members in allowed: else the pointer of the first other one into field. */
static bool ch_only(const json_t *obj, const char *const *allowed, const char *base, char *field,
                    size_t fieldlen)
{
    const char *k;
    const json_t *v;
    json_object_foreach ((json_t *)obj, k, v) {
        size_t i = 0;
        while (allowed[i] && strcmp(allowed[i], k) != 0)
            i++;
        if (!allowed[i]) {
            snprintf(field, fieldlen, "%s/%.60s", base, k);
            return false;
        }
    }
    return true;
}

/* The verification settings of a PUT as stored (a new object, the secret still clear), or NULL
 * with *field and the message returned. */
static json_t *ch_verify_parse(const json_t *v, char *field, size_t fieldlen, const char **msg)
{
    static const char *const hmac_fields[] = {"hmac", "header", "encoding", "prefix", "secret",
                                              NULL};
    static const char *const sw_fields[] = {"standard_webhooks", "secret", NULL};
    static const char *const token_fields[] = {"token", "header", "secret", NULL};
    const json_t *hmac = json_object_get(v, "hmac"), *sw = json_object_get(v, "standard_webhooks"),
                 *token = json_object_get(v, "token"), *secret = json_object_get(v, "secret");
    snprintf(field, fieldlen, "/verify");
    if (!json_is_object(v) || (hmac != NULL) + (sw != NULL) + (token != NULL) != 1) {
        *msg = "must be an object with exactly one of hmac, standard_webhooks and token";
        return NULL;
    }
    const char *const *allowed = hmac ? hmac_fields : sw ? sw_fields : token_fields;
    if (!ch_only(v, allowed, "/verify", field, fieldlen)) {
        *msg = hmac ? "is not a setting of hmac verification (hmac, header, encoding, prefix, secret)"
               : sw ? "is not a setting of standard_webhooks verification (standard_webhooks, secret)"
                    : "is not a setting of token verification (token, header, secret)";
        return NULL;
    }
    const char *alg = json_string_value(hmac);
    if (hmac && (!alg || (strcmp(alg, "sha256") != 0 && strcmp(alg, "sha1") != 0))) {
        snprintf(field, fieldlen, "/verify/hmac");
        *msg = "must be \"sha256\" or \"sha1\"";
        return NULL;
    }
    if ((sw && !json_is_true(sw)) || (token && !json_is_true(token))) {
        snprintf(field, fieldlen, "/verify/%s", sw ? "standard_webhooks" : "token");
        *msg = "must be true";
        return NULL;
    }
    const json_t *header = json_object_get(v, "header");
    if (!sw && !ch_header_ok(header)) {
        snprintf(field, fieldlen, "/verify/header");
        *msg = "must be the name of the header carrying the signature (1 to 100 characters of an "
               "HTTP header name)";
        return NULL;
    }
    const json_t *enc = json_object_get(v, "encoding"), *prefix = json_object_get(v, "prefix");
    if (enc && (!json_is_string(enc) || (strcmp(json_string_value(enc), "hex") != 0 &&
                                         strcmp(json_string_value(enc), "base64") != 0))) {
        snprintf(field, fieldlen, "/verify/encoding");
        *msg = "must be \"hex\" or \"base64\"";
        return NULL;
    }
    if (prefix && (!json_is_string(prefix) || json_string_length(prefix) > CH_PREFIX_MAX)) {
        snprintf(field, fieldlen, "/verify/prefix");
        *msg = "must be a string of at most 32 characters, such as \"sha256=\"";
        return NULL;
    }
    char probe[CH_SIG_MAX];
    if (!json_is_string(secret) || json_string_length(secret) == 0 ||
        json_string_length(secret) > CH_SECRET_MAX ||
        (sw && !eng_webhook_sign(json_string_value(secret), "id", "0", "", 0, probe,
                                 sizeof probe))) {
        snprintf(field, fieldlen, "/verify/secret");
        *msg = sw ? "must be the endpoint's secret, \"whsec_\" and base64"
                  : "must be a string of 1 to 1024 characters";
        return NULL;
    }
    if (sw)
        return json_pack("{s:b, s:O}", "standard_webhooks", 1, "secret", secret);
    if (token)
        return json_pack("{s:b, s:O, s:O}", "token", 1, "header", header, "secret", secret);
    return json_pack("{s:s, s:O, s:s, s:s, s:O}", "hmac", alg, "header", header, "encoding",
                     enc ? json_string_value(enc) : "hex", "prefix",
                     prefix ? json_string_value(prefix) : "", "secret", secret);
}

/* Template paths may read body.* and headers.<lower-case name>. */
static eng_rc ch_ref_cb(void *arg, const char *path, const char *ptr, eng_err *err)
{
    (void)arg;
    size_t root = strcspn(path, ".[");
    if ((root == 4 && strncmp(path, "body", 4) == 0) ||
        (root == 7 && strncmp(path, "headers", 7) == 0 && path[7] != '[')) {
        for (const char *p = path + root; root == 7 && *p; p++)
            if (isupper((unsigned char)*p))
                return eng_err_field(err, ENG_EINVAL, ptr,
                                     "header names are lower case in templates: %s", path);
        return ENG_OK;
    }
    return eng_err_field(err, ENG_EINVAL, ptr,
                         "a hook's template reads body.* or headers.*, not %s", path);
}

/* A template member of a PUT: a string (or, for data, any JSON) of at most 4096 bytes whose
 * paths read body and headers. NULL or the problem, with *field set. */
static const char *ch_template_problem(const json_t *v, const char *ptr, bool any_json,
                                       eng_err *why)
{
    eng_err_clear(why);
    snprintf(why->field, sizeof why->field, "%s", ptr);
    if (!any_json && (!json_is_string(v) || json_string_length(v) == 0))
        return "must be a non-empty string (a template such as \"{{body.order_id}}\")";
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    size_t n = text ? strlen(text) : 0;
    free(text);
    if (n > CH_TEMPLATE_MAX)
        return "must be at most 4096 bytes";
    if (wf_template_refs(v, ptr, ch_ref_cb, NULL, why) != ENG_OK)
        return why->msg;
    return NULL;
}

typedef struct ch_put {
    char *verify, *event, *dedup; /* JSON texts and the dedup template (may be NULL) */
} ch_put;

static void ch_put_free(void *arg)
{
    ch_put *p = arg;
    sec_free(p->verify);
    free(p->event);
    free(p->dedup);
    free(p);
}

static void ch_put_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    json_t *hook = json_loads(PQgetvalue(res, 0, 1), 0, NULL);
    api_call_respond_json(call, PQgetvalue(res, 0, 0)[0] == 't' ? 201 : 200, hook);
}

/* The PUT's event and dedup members checked; answers 422 and returns false on the first bad one. */
static bool ch_event_parse(api_call *call, const json_t *body, ch_put *p, bool standard)
{
    static const char *const event_fields[] = {"name", "key", "data", NULL};
    const json_t *event = json_object_get(body, "event"), *dedup = json_object_get(body, "dedup");
    eng_err why;
    char field[128];
    const char *msg = NULL;
    if (!json_is_object(event)) {
        api_call_respond_error(call, 422, "invalid_request",
                               "must be an object {name, key, data?} of templates", "/event");
        return false;
    }
    if (!ch_only(event, event_fields, "/event", field, sizeof field)) {
        api_call_respond_error(call, 422, "invalid_request", "may only have name, key and data",
                               field);
        return false;
    }
    const json_t *name = json_object_get(event, "name");
    if (!(msg = ch_template_problem(name, "/event/name", false, &why)) &&
        !wf_template_is_templated(json_string_value(name)) &&
        json_string_length(name) > CH_EVENT_MAX)
        msg = "must be an event name of 1 to 200 characters";
    if (!msg)
        msg = ch_template_problem(json_object_get(event, "key"), "/event/key", false, &why);
    if (!msg && json_object_get(event, "data"))
        msg = ch_template_problem(json_object_get(event, "data"), "/event/data", true, &why);
    if (!msg && dedup && !json_is_null(dedup)) {
        const char *d = json_string_value(dedup);
        if (d && strcmp(d, "webhook-id") == 0) {
            p->dedup = eng_xstrdup("{{headers.webhook-id}}");
        } else if (!d || !wf_template_is_templated(d)) {
            snprintf(why.field, sizeof why.field, "/dedup");
            msg = "must be \"webhook-id\" or a template such as \"{{body.event_id}}\"";
        } else if (!(msg = ch_template_problem(dedup, "/dedup", false, &why))) {
            p->dedup = eng_xstrdup(d);
        }
    } else if (!msg && standard) {
        p->dedup = eng_xstrdup("{{headers.webhook-id}}");
    }
    if (msg) {
        api_call_respond_error(call, 422, "invalid_request", msg, why.field);
        return false;
    }
    p->event = json_dumps(event, JSON_COMPACT);
    return true;
}

void api_route_custom_hook_put(api_call *call)
{
    static const char *const fields[] = {"verify", "event", "dedup", NULL};
    if (!api_call_admin_only(call) || !ch_path_name(call))
        return;
    json_t *body = api_call_body_fields(call, fields);
    if (!body)
        return;
    char field[128];
    const char *msg = NULL;
    json_t *verify = ch_verify_parse(json_object_get(body, "verify"), field, sizeof field, &msg);
    if (!verify) {
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request", msg, field);
        return;
    }
    ch_put *p = eng_xcalloc(1, sizeof *p);
    call->data = p;
    call->data_free = ch_put_free;
    bool ok = ch_event_parse(call, body, p, json_object_get(verify, "standard_webhooks") != NULL);
    json_decref(body);
    if (!ok) {
        json_decref(verify);
        return;
    }
    eng_err serr;
    char *sealed = sec_seal(json_string_value(json_object_get(verify, "secret")), &serr);
    if (!sealed) {
        json_decref(verify);
        api_call_respond_error(call, 409, "secret_key_missing", serr.msg, "/verify/secret");
        return;
    }
    json_object_set_new(verify, "secret", json_string(sealed));
    free(sealed);
    p->verify = json_dumps(verify, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(verify);
    const char *params[] = {call->tenant_s, call->params[0], p->verify, p->event, p->dedup};
    api_call_db(call,
                "SELECT created, hook FROM flowd_custom_hook_put($1, $2, $3::jsonb, $4::jsonb, $5)",
                5, params, ch_put_cb);
}

static void ch_row_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "hook");
}

void api_route_custom_hook_get(api_call *call)
{
    if (!api_call_admin_only(call) || !ch_path_name(call))
        return;
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, "SELECT flowd_custom_hook_json($1, $2)", 2, params, ch_row_cb);
}

void api_route_custom_hooks_list(api_call *call)
{
    if (!api_call_admin_only(call))
        return;
    const char *params[] = {call->tenant_s};
    api_call_db(call, "SELECT flowd_custom_hooks_json($1)", 1, params, ch_row_cb);
}

static void ch_deleted_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else if (PQgetvalue(res, 0, 0)[0] != 't')
        api_call_respond_error(call, 404, "not_found", "hook not found", NULL);
    else
        api_call_respond_raw(call, 204, NULL, NULL, 0, NULL);
}

void api_route_custom_hook_delete(api_call *call)
{
    if (!api_call_admin_only(call) || !ch_path_name(call))
        return;
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, "SELECT flowd_custom_hook_delete($1, $2)", 2, params, ch_deleted_cb);
}

/* ---------------------------------------------------------------------------- delivery -- */

/* A delivery between its statements: the event it becomes and its dedup key. */
typedef struct ch_post {
    char *name, *key, *data, *dedup;
} ch_post;

static void ch_post_free(void *arg)
{
    ch_post *p = arg;
    free(p->name);
    free(p->key);
    free(p->data);
    free(p->dedup);
    free(p);
}

static void ch_unauthorized(api_call *call, const char *why)
{
    eng_metrics_webhook_rejected("custom");
    log_warn("webhook refused", LOG_S("provider", "custom"), LOG_S("hook", call->params[0]),
             LOG_I("tenant", call->tenant), LOG_S("reason", why));
    api_call_respond_error(call, 401, "unauthorized", why, NULL);
}

/* Standard Webhooks 1.0: any v1 signature of the (space-separated) list over id.timestamp.body,
 * and a timestamp within CH_MAX_AGE_S of now. NULL or why not. */
static const char *ch_verify_standard(const api_req *req, const char *secret, const char *body,
                                      size_t len)
{
    const char *id = api_req_header(req, "webhook-id");
    const char *ts = api_req_header(req, "webhook-timestamp");
    const char *sigs = api_req_header(req, "webhook-signature");
    if (!id || !ts || !sigs)
        return "missing webhook-id, webhook-timestamp or webhook-signature";
    char *end;
    long long t = strtoll(ts, &end, 10);
    long long now = (long long)time(NULL);
    if (!*ts || *end || t < now - CH_MAX_AGE_S || t > now + CH_MAX_AGE_S)
        return "webhook-timestamp is more than 5 minutes from now (replay?)";
    char want[CH_SIG_MAX];
    if (!eng_webhook_sign(secret, id, ts, body, len, want, sizeof want))
        return "the hook's secret cannot be used";
    size_t wn = strlen(want);
    for (const char *p = sigs; *p;) {
        size_t n = strcspn(p, " ");
        if (n == wn && CRYPTO_memcmp(p, want, wn) == 0)
            return NULL;
        p += n;
        p += strspn(p, " ");
    }
    return "bad webhook-signature";
}

/* Verifies the delivery with the hook's settings (secret opened). NULL or why not. */
static const char *ch_verify(const api_req *req, const json_t *verify, const char *secret)
{
    size_t len;
    const char *body = api_req_body(req, &len);
    if (json_object_get(verify, "standard_webhooks"))
        return ch_verify_standard(req, secret, body, len);
    const char *header = json_string_value(json_object_get(verify, "header"));
    const char *given = header ? api_req_header(req, header) : NULL;
    if (!given)
        return "missing signature header";
    if (json_object_get(verify, "token"))
        return strlen(given) == strlen(secret) &&
                       CRYPTO_memcmp(given, secret, strlen(secret)) == 0
                   ? NULL
                   : "bad token";
    const char *prefix = json_string_value(json_object_get(verify, "prefix"));
    size_t pn = prefix ? strlen(prefix) : 0;
    if (strncmp(given, prefix ? prefix : "", pn) != 0)
        return "bad signature";
    bool hex = strcmp(json_string_value(json_object_get(verify, "encoding")), "base64") != 0;
    char *sig = eng_xstrdup(given + pn);
    for (char *c = sig; hex && *c; c++) /* senders differ in the case of their hex digits */
        *c = (char)tolower((unsigned char)*c);
    bool sha1 = strcmp(json_string_value(json_object_get(verify, "hmac")), "sha1") == 0;
    bool ok = api_hmac_matches(sha1 ? API_HMAC_SHA1 : API_HMAC_SHA256, secret, strlen(secret),
                               body, len, hex, sig);
    free(sig);
    return ok ? NULL : "bad signature";
}

/* What templates read: {"body": the JSON body or its text, "headers": {lower-case: value}}. */
static json_t *ch_context(const api_req *req)
{
    size_t len;
    const char *body = api_req_body(req, &len);
    json_t *parsed = json_loadb(body, len, JSON_DECODE_ANY, NULL);
    json_t *headers = json_object();
    const char *name, *value;
    for (size_t i = 0; api_req_header_at(req, i, &name, &value); i++) {
        char *lower = eng_xstrdup(name);
        for (char *c = lower; *c; c++)
            *c = (char)tolower((unsigned char)*c);
        json_object_set_new(headers, lower, json_string(value));
        free(lower);
    }
    return json_pack("{s:o, s:o}", "body", parsed ? parsed : json_stringn(body, len), "headers",
                     headers);
}

/* Renders one template of the hook to a string of 1..max characters (integers as text) into
 * *out. Answers 422 naming the hook's member and returns false otherwise. */
static bool ch_render_text(api_call *call, const json_t *tmpl, const json_t *ctx, const char *ptr,
                           size_t max, char **out)
{
    json_t *v = NULL;
    eng_err why;
    char msg[400];
    if (wf_template_render(tmpl, ctx, &v, &why) != ENG_OK) {
        snprintf(msg, sizeof msg, "the delivery does not give the hook's %.20s: %.300s", ptr + 1,
                 why.msg);
    } else if (json_is_integer(v)) {
        *out = eng_xasprintf("%lld", (long long)json_integer_value(v));
    } else if (json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) <= max) {
        *out = eng_xstrdup(json_string_value(v));
    } else {
        snprintf(msg, sizeof msg,
                 "the hook's %s rendered to no string of 1 to %zu characters from this delivery",
                 ptr + 1, max);
    }
    json_decref(v);
    if (*out)
        return true;
    api_call_respond_error(call, 422, "invalid_request", msg, ptr);
    return false;
}

/* The event of a verified delivery into call->data; answers 422 and returns false when the
 * delivery does not give what the hook's templates read. */
static bool ch_event_of(api_call *call, const json_t *event, const char *dedup)
{
    ch_post *p = eng_xcalloc(1, sizeof *p);
    call->data = p;
    call->data_free = ch_post_free;
    json_t *ctx = ch_context(call->req);
    bool ok = ch_render_text(call, json_object_get(event, "name"), ctx, "/event/name",
                             CH_EVENT_MAX, &p->name) &&
              ch_render_text(call, json_object_get(event, "key"), ctx, "/event/key", CH_KEY_MAX,
                             &p->key);
    json_t *dt = NULL;
    if (ok && dedup) {
        json_t *tmpl = json_string(dedup);
        ok = ch_render_text(call, tmpl, ctx, "/dedup", CH_KEY_MAX, &p->dedup);
        json_decref(tmpl);
    } else if (ok) {
        size_t len;
        const char *body = api_req_body(call->req, &len);
        char *digest = wf_sha256_hex(body, len);
        p->dedup = eng_xasprintf("sha256:%s", digest);
        free(digest);
    }
    eng_err why;
    const json_t *data_tmpl = json_object_get(event, "data");
    if (ok && data_tmpl && wf_template_render(data_tmpl, ctx, &dt, &why) != ENG_OK) {
        char msg[400];
        snprintf(msg, sizeof msg, "the delivery does not give the hook's event data: %.300s", why.msg);
        api_call_respond_error(call, 422, "invalid_request", msg, "/event/data");
        ok = false;
    } else if (ok && !data_tmpl) {
        const json_t *b = json_object_get(ctx, "body");
        dt = json_is_object(b) ? json_incref((json_t *)b) : json_pack("{s:O}", "body", b);
    }
    if (ok && !json_is_object(dt)) {
        api_call_respond_error(call, 422, "invalid_request",
                               "the hook's event data did not render to a JSON object",
                               "/event/data");
        ok = false;
    }
    if (ok)
        p->data = json_dumps(dt, JSON_COMPACT);
    json_decref(dt);
    json_decref(ctx);
    return ok;
}

static void ch_applied_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    const ch_post *p = call->data;
    bool dup = PQgetvalue(res, 0, 0)[0] == 't';
    log_info("custom hook applied", LOG_S("hook", call->params[0]), LOG_I("tenant", call->tenant),
             LOG_S("event", p->name), LOG_S("duplicate", dup ? "true" : "false"),
             LOG_S("started", PQgetvalue(res, 0, 3)));
    api_call_respond_json(call, 200,
                          json_pack("{s:b, s:{s:s, s:s}, s:i, s:i, s:i}", "duplicate", dup,
                                    "event", "name", p->name, "key", p->key, "resumed",
                                    atoi(PQgetvalue(res, 0, 1)), "cancelled",
                                    atoi(PQgetvalue(res, 0, 2)), "started",
                                    atoi(PQgetvalue(res, 0, 3))));
}

/* The triggered versions: when every check passed, the delivery is applied starting exactly
 * those versions (engine/wf_trigger.h), as POST /v1/events does. */
static void ch_triggers_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    const ch_post *p = call->data;
    char *ids = api_trigger_ids(call, res, p->name, p->key, p->data);
    if (!ids)
        return;
    const char *params[] = {call->tenant_s, call->params[0], p->dedup, p->name,
                            p->key,         p->data,         ids};
    api_call_db(call,
                "SELECT duplicate, resumed, cancelled, started FROM flowd_custom_hook_apply($1, $2,"
                " $3, $4, $5, $6::jsonb, $7::bigint[])",
                7, params, ch_applied_cb);
    free(ids);
}

static void ch_config_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    if (PQntuples(res) == 0) {
        api_call_respond_error(call, 404, "not_found", "hook not found", NULL);
        return;
    }
    json_t *verify = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    json_t *event = json_loads(PQgetvalue(res, 0, 1), 0, NULL);
    eng_err serr;
    char *secret = sec_open(json_string_value(json_object_get(verify, "secret")), &serr);
    if (!secret) {
        /* 503: the sender retries the delivery once the operator configured the key */
        log_error("custom hook secret cannot be opened", LOG_S("hook", call->params[0]),
                  LOG_I("tenant", call->tenant), LOG_S("reason", serr.msg));
        api_call_respond_error(call, 503, "unavailable", "the hook's secret cannot be read", NULL);
    } else {
        const char *why = ch_verify(call->req, verify, secret);
        if (why) {
            ch_unauthorized(call, why);
        } else if (ch_event_of(call, event, PQgetisnull(res, 0, 2) ? NULL
                                                                   : PQgetvalue(res, 0, 2))) {
            const ch_post *p = call->data;
            const char *params[] = {call->tenant_s, p->name};
            api_call_db(call, WF_TRIGGER_ROWS_SQL, 2, params, ch_triggers_cb);
        }
    }
    sec_free(secret);
    json_decref(verify);
    json_decref(event);
}

void api_route_custom_hook_post(api_call *call)
{
    const char *t = api_req_query(call->req, "tenant");
    char *end = NULL;
    long long tenant = t && *t ? strtoll(t, &end, 10) : 0;
    if (!t || !*t || *end || tenant <= 0) {
        api_call_respond_error(call, 400, "invalid_request", "tenant must be a tenant id",
                               "?tenant");
        return;
    }
    if (!ch_path_name(call))
        return;
    call->tenant = tenant;
    snprintf(call->tenant_s, sizeof call->tenant_s, "%lld", tenant);
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call,
                "SELECT verify, event, dedup FROM custom_hooks WHERE tenant_id = $1 AND name = $2",
                2, params, ch_config_cb);
}
