/* steps/sms.c: the "sms" kind, Twilio Messages (docs/internals/provider-apis.md §4) through the
 * send ledger (steps/sendledger.h).
 *
 * input: {to: E.164, body, from? (default: the provider's "from" setting, TWILIO_FROM),
 *         messaging_service_sid? (instead of from), media_url?: string | [string],
 *         policy?, item?, resolve?}
 * output: {to, from, provider: "twilio" | "sandbox", message_id (SM... or the sandbox id),
 *          status (Twilio's initial status: queued, accepted, ...), segments, send_key, sandbox?}
 *
 * Correlation: with FLOWD_PUBLIC_URL set (the address Twilio reaches us at), the StatusCallback is
 * <FLOWD_PUBLIC_URL>/v1/hooks/twilio?tenant=<id>&send_key=<key>; the query is part of the signed
 * URL. An ambiguous send is resolved with a look-up (§4: Messages.json?To=&DateSent>=) matching
 * recipient, sender and body of messages created since the send was first claimed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/buf.h"
#include "engine/mem.h"
#include "steps/sendledger.h"

#define SMS_MAX_BODY 1600
#define SMS_LOOKUP_SLACK_MS 120000 /* clocks differ; a match must also have our exact body */

/* The buffers here have no cap, so an append cannot fail. */
static void put(eng_buf *b, const void *data, size_t n)
{
    if (eng_buf_append(b, data, n) != ENG_OK)
        abort();
}

/* Percent-encodes s (RFC 3986 unreserved kept) onto b, as application/x-www-form-urlencoded. */
static void form_escape(eng_buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            put(b, p, 1);
        } else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            put(b, e, 3);
        }
    }
}

static void form_add(eng_buf *b, const char *name, const char *value)
{
    if (b->len)
        put(b, "&", 1);
    form_escape(b, name);
    put(b, "=", 1);
    form_escape(b, value);
}

static eng_rc sms_prepare(const json_t *in, const prov_config *cfg, const char *send_key,
                          send_msg *msg, eng_err *err)
{
    (void)send_key;
    char to[24];
    if (step_send_input_phone(in, to, err) != ENG_OK)
        return ENG_EINVAL;
    const json_t *body = json_object_get(in, "body");
    const json_t *media = json_object_get(in, "media_url");
    if (body && (!json_is_string(body) || json_string_length(body) > SMS_MAX_BODY))
        return eng_err_field(err, ENG_EINVAL, "/input/body", "body must be a string of at most "
                                                             "1600 characters");
    json_t *media_list = json_array();
    if (json_is_string(media))
        json_array_append(media_list, (json_t *)media);
    else if (json_is_array(media))
        json_array_extend(media_list, (json_t *)media);
    else if (media) {
        json_decref(media_list);
        return eng_err_field(err, ENG_EINVAL, "/input/media_url", "must be a URL or a list of URLs");
    }
    size_t i;
    const json_t *m;
    json_array_foreach(media_list, i, m) {
        if (!json_is_string(m) || strncmp(json_string_value(m), "http", 4) != 0) {
            json_decref(media_list);
            return eng_err_field(err, ENG_EINVAL, "/input/media_url", "must be http(s) URLs");
        }
    }
    if ((!body || json_string_length(body) == 0) && json_array_size(media_list) == 0) {
        json_decref(media_list);
        return eng_err_field(err, ENG_EINVAL, "/input/body", "body (or media_url) is required");
    }
    const char *mss = json_string_value(json_object_get(in, "messaging_service_sid"));
    const char *from_s = json_string_value(json_object_get(in, "from"));
    if (!from_s && !mss)
        from_s = prov_config_get(cfg, "from");
    if (!mss && !from_s)
        mss = prov_config_get(cfg, "messaging_service_sid");
    char from[24];
    if (from_s && !step_send_norm_phone(from_s, from) && strncmp(from_s, "whatsapp:", 9) != 0) {
        json_decref(media_list);
        return eng_err_field(err, ENG_EINVAL, "/input/from",
                             "from must be a phone number in E.164 (+14155550123)");
    }
    if (!from_s && !mss) {
        json_decref(media_list);
        return eng_err_field(err, ENG_EINVAL, "/input/from",
                             "from (or messaging_service_sid, or the provider setting \"from\") "
                             "is required");
    }
    const char *from_v = from_s ? (strncmp(from_s, "whatsapp:", 9) == 0 ? from_s : from) : NULL;
    json_t *req = json_pack("{s:s}", "To", to);
    if (from_v)
        json_object_set_new(req, "From", json_string(from_v));
    else
        json_object_set_new(req, "MessagingServiceSid", json_string(mss));
    if (body && json_string_length(body) > 0)
        json_object_set(req, "Body", (json_t *)body);
    if (json_array_size(media_list))
        json_object_set(req, "MediaUrl", media_list);
    json_decref(media_list);
    msg->recipient = eng_xstrdup(to);
    msg->request = req;
    msg->output = json_pack("{s:s}", "to", to);
    if (from_v)
        json_object_set_new(msg->output, "from", json_string(from_v));
    return ENG_OK;
}

/* "Authorization: Basic base64(sid:token)"; caller frees. */
static char *basic_auth(const prov_config *cfg)
{
    char *enc = prov_basic_credentials(cfg);
    char *h = eng_xasprintf("Authorization: Basic %s", enc);
    explicit_bzero(enc, strlen(enc));
    free(enc);
    return h;
}

/* The output fields of a Twilio message resource. New reference. */
static json_t *message_fields(const json_t *m)
{
    json_t *out = json_object();
    const json_t *status = json_object_get(m, "status");
    if (json_is_string(status))
        json_object_set(out, "status", (json_t *)status);
    const json_t *seg = json_object_get(m, "num_segments"); /* a string on the wire */
    if (json_is_string(seg))
        json_object_set_new(out, "segments", json_integer(strtol(json_string_value(seg), NULL, 10)));
    else if (json_is_integer(seg))
        json_object_set(out, "segments", (json_t *)seg);
    const json_t *from = json_object_get(m, "from");
    if (json_is_string(from))
        json_object_set(out, "from", (json_t *)from);
    return out;
}

static void sms_sent(void *arg, const eng_err *err, const eng_http_response *resp,
                     eng_http_call *call)
{
    step_send *ss = arg;
    prov_outcome o;
    if (!step_send_call_ok(ss, PROV_TWILIO, err, resp, call, &o))
        return;
    json_t *m = json_loads(resp->body, 0, NULL);
    const char *sid = json_string_value(json_object_get(m, "sid"));
    if (!sid) {
        json_decref(m);
        step_send_no_message_id(ss, &o, "twilio", "message sid");
        return;
    }
    step_send_transport_done(ss, &o, sid, message_fields(m)); /* sid is m's: released after */
    json_decref(m);
}

static eng_http_call *sms_transport(step_send *ss, const prov_config *cfg, const send_msg *msg)
{
    eng_buf form;
    eng_buf_init(&form, 0);
    const char *name;
    json_t *v;
    json_object_foreach(msg->request, name, v) {
        if (json_is_array(v)) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) form_add(&form, name, json_string_value(e));
        } else {
            form_add(&form, name, json_string_value(v));
        }
    }
    const char *public_url = getenv("FLOWD_PUBLIC_URL");
    if (public_url && *public_url) {
        eng_buf cb;
        eng_buf_init(&cb, 0);
        /* the key is escaped since step keys may hold any character */
        char *head = eng_xasprintf("%s/v1/hooks/twilio?tenant=%lld&send_key=", public_url,
                                   (long long)step_send_tenant(ss));
        put(&cb, head, strlen(head));
        free(head);
        form_escape(&cb, step_send_key_of(ss));
        form_add(&form, "StatusCallback", cb.ptr);
        eng_buf_deinit(&cb);
    }
    char *path = eng_xasprintf("/2010-04-01/Accounts/%s/Messages.json",
                               prov_config_get(cfg, "account_sid"));
    char *url = prov_config_url(cfg, path);
    char *auth = basic_auth(cfg);
    const char *headers[] = {auth, "Content-Type: application/x-www-form-urlencoded", NULL};
    eng_http_request req = {.method = "POST",
                            .url = url,
                            .headers = headers,
                            .body = form.ptr ? form.ptr : "",
                            .body_len = form.len,
                            .timeout_ms = step_send_http_timeout_ms(ss),
                            .max_response_bytes = 1 << 20,
                            .public_only = prov_public_only(cfg)};
    eng_http_call *call = eng_httpc_start(step_send_httpc(ss), &req, sms_sent, ss);
    explicit_bzero(auth, strlen(auth));
    free(auth);
    free(url);
    free(path);
    eng_buf_deinit(&form);
    return call;
}

/* RFC 2822 date ("Thu, 01 Jan 2026 00:00:00 +0000") to epoch ms; 0 when unreadable. */
static int64_t rfc2822_ms(const char *s)
{
    struct tm tm = {0};
    if (!s || !strptime(s, "%a, %d %b %Y %H:%M:%S", &tm))
        return 0;
    return (int64_t)timegm(&tm) * 1000; /* Twilio always writes +0000 */
}

static void sms_looked_up(void *arg, const eng_err *err, const eng_http_response *resp,
                          eng_http_call *call)
{
    (void)call;
    step_send *ss = arg;
    if (err || resp->status != 200) {
        step_send_lookup_done(ss, false, NULL, NULL);
        return;
    }
    json_t *j = json_loads(resp->body, 0, NULL);
    const json_t *want = step_send_request(ss);
    const char *to = json_string_value(json_object_get(want, "To"));
    const char *from = json_string_value(json_object_get(want, "From"));
    const char *mss = json_string_value(json_object_get(want, "MessagingServiceSid"));
    const char *body = json_string_value(json_object_get(want, "Body"));
    int64_t since = step_send_created_ms(ss) - SMS_LOOKUP_SLACK_MS;
    size_t i;
    const json_t *m;
    json_array_foreach(json_object_get(j, "messages"), i, m) {
        const char *mto = json_string_value(json_object_get(m, "to"));
        const char *mfrom = json_string_value(json_object_get(m, "from"));
        const char *mmss = json_string_value(json_object_get(m, "messaging_service_sid"));
        const char *mbody = json_string_value(json_object_get(m, "body"));
        const char *sid = json_string_value(json_object_get(m, "sid"));
        int64_t created = rfc2822_ms(json_string_value(json_object_get(m, "date_created")));
        if (!sid || !mto || strcmp(mto, to) != 0)
            continue;
        if (from ? (!mfrom || strcmp(mfrom, from) != 0) : (!mmss || !mss || strcmp(mmss, mss) != 0))
            continue;
        if ((body ? (!mbody || strcmp(mbody, body) != 0) : false) || (created && created < since))
            continue;
        step_send_lookup_done(ss, true, sid, message_fields(m)); /* sid is j's: released after */
        json_decref(j);
        return;
    }
    json_decref(j);
    step_send_lookup_done(ss, false, NULL, NULL);
}

static eng_http_call *sms_lookup(step_send *ss, const prov_config *cfg, const send_msg *msg,
                                 int64_t since_ms)
{
    eng_buf q;
    eng_buf_init(&q, 0);
    form_add(&q, "To", json_string_value(json_object_get(msg->request, "To")));
    time_t t = (time_t)((since_ms - SMS_LOOKUP_SLACK_MS) / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char day[16];
    strftime(day, sizeof day, "%Y-%m-%d", &tm);
    form_add(&q, "DateSent>", day);
    form_add(&q, "PageSize", "100");
    char *path = eng_xasprintf("/2010-04-01/Accounts/%s/Messages.json?%s",
                               prov_config_get(cfg, "account_sid"), q.ptr);
    char *url = prov_config_url(cfg, path);
    char *auth = basic_auth(cfg);
    const char *headers[] = {auth, NULL};
    eng_http_request req = {.method = "GET",
                            .url = url,
                            .headers = headers,
                            .timeout_ms = step_send_http_timeout_ms(ss),
                            .max_response_bytes = 4 << 20,
                            .public_only = prov_public_only(cfg)};
    eng_http_call *call = eng_httpc_start(step_send_httpc(ss), &req, sms_looked_up, ss);
    explicit_bzero(auth, strlen(auth));
    free(auth);
    free(url);
    free(path);
    eng_buf_deinit(&q);
    return call;
}

static const char *sms_suppress(const prov_outcome *o)
{
    return strcmp(o->provider_code, "21610") == 0 ? "21610" : NULL;
}

static const send_ops sms_ops = {
    .kind = "sms",
    .channel = "sms",
    .provider = PROV_TWILIO,
    .prepare = sms_prepare,
    .transport = sms_transport,
    .lookup = sms_lookup,
    .suppress_reason = sms_suppress,
};

static void sms_start(eng_step_ctx *ctx)
{
    step_send_start(ctx, &sms_ops);
}

static eng_rc sms_validate(const json_t *step, const char *ptr, eng_err *err)
{
    eng_rc rc = step_send_validate_to(step, ptr, err);
    if (rc == ENG_OK)
        rc = step_send_validate_phone(step, ptr, "to", err);
    if (rc == ENG_OK)
        rc = step_send_validate_phone(step, ptr, "from", err);
    if (rc != ENG_OK)
        return rc;
    const json_t *in = json_object_get(step, "input");
    if (!json_object_get(in, "body") && !json_object_get(in, "media_url"))
        return step_send_invalid(err, ptr, "/input/body", "body (or media_url) is required");
    return ENG_OK;
}

static const eng_step_kind sms_kind = {
    .name = "sms",
    .default_max_attempts = 5,
    .validate = sms_validate,
    .start = sms_start,
    .cancel = step_send_cancel,
};

void step_sms_register(void)
{
    eng_step_register(&sms_kind);
}
