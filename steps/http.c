/* steps/http.c: the generic `http` step kind.
 *
 *   input  {method, url, headers?: {name: value}, body?: string | JSON, expect?: [200, 201]}
 *   output {status, headers: {lowercase name: value}, body: parsed JSON when the answer is JSON,
 *           else the text}
 *
 * A JSON body (anything but a string) is sent as JSON with Content-Type application/json unless
 * the step sets its own. Without expect every 2xx succeeds; a status outside expect (or a non-2xx
 * without one) fails like a provider's would (steps/provider.h): 408/409/429/5xx and transport
 * failures are retried honouring Retry-After, any other status fails the step at once. Header
 * values are never logged (they often carry credentials). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/clock.h"
#include "engine/httpc.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "engine/wf_template.h"
#include "steps/inputs.h"
#include "steps/provider.h"
#include "steps/steps.h"

#define HTTP_MAX_HEADERS 64

static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"};

static bool method_ok(const char *m)
{
    for (size_t i = 0; i < ENG_ARRAY_LEN(methods); i++)
        if (strcmp(methods[i], m) == 0)
            return true;
    return false;
}

static bool templated(const json_t *v)
{
    return json_is_string(v) && wf_template_is_templated(json_string_value(v));
}

static eng_rc fieldf(eng_err *err, const char *ptr, const char *sub, const char *msg)
{
    char field[200];
    snprintf(field, sizeof field, "%s/input%s", ptr, sub);
    return eng_err_field(err, ENG_EINVAL, field, "%s", msg);
}

static eng_rc http_validate(const json_t *step, const char *ptr, eng_err *err)
{
    const json_t *in = json_object_get(step, "input");
    if (!json_is_object(in))
        return fieldf(err, ptr, "", "http needs an input object with \"method\" and \"url\"");
    const json_t *m = json_object_get(in, "method");
    if (!json_is_string(m))
        return fieldf(err, ptr, "/method", "must be a string");
    if (!templated(m) && !method_ok(json_string_value(m)))
        return fieldf(err, ptr, "/method",
                      "must be one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS");
    const json_t *u = json_object_get(in, "url");
    if (!json_is_string(u))
        return fieldf(err, ptr, "/url", "must be a string");
    const char *us = json_string_value(u);
    if (!templated(u) && strncmp(us, "http://", 7) != 0 && strncmp(us, "https://", 8) != 0)
        return fieldf(err, ptr, "/url", "must start with http:// or https://");
    const json_t *h = json_object_get(in, "headers");
    if (h && !json_is_object(h))
        return fieldf(err, ptr, "/headers", "must be an object of strings");
    const char *k;
    json_t *v;
    json_object_foreach ((json_t *)h, k, v) {
        char sub[160];
        snprintf(sub, sizeof sub, "/headers/%s", k);
        if (!json_is_string(v))
            return fieldf(err, ptr, sub, "must be a string");
        if (!*k || strpbrk(k, ":\r\n \t"))
            return fieldf(err, ptr, sub, "is not a valid header name");
    }
    const json_t *e = json_object_get(in, "expect");
    if (e && !json_is_array(e))
        return fieldf(err, ptr, "/expect", "must be an array of status codes");
    size_t i;
    json_array_foreach (e, i, v) {
        char sub[64];
        snprintf(sub, sizeof sub, "/expect/%zu", i);
        if (!json_is_integer(v) || json_integer_value(v) < 100 || json_integer_value(v) > 599)
            return fieldf(err, ptr, sub, "must be an integer status in 100..599");
    }
    return ENG_OK;
}

typedef struct http_attempt {
    eng_step_ctx *ctx;
    eng_http_call *call;
    json_t *expect; /* borrowed from the input, which outlives the attempt */
} http_attempt;

static bool expected(const json_t *expect, long status)
{
    if (!expect)
        return status >= 200 && status < 300;
    size_t i;
    json_t *v;
    json_array_foreach (expect, i, v)
        if (json_integer_value(v) == status)
            return true;
    return false;
}

static json_t *response_json(const eng_http_response *resp, const eng_http_call *call)
{
    json_t *headers = json_object();
    size_t pos = 0;
    const char *name, *value;
    while (eng_http_call_header_next(call, &pos, &name, &value)) {
        char lower[128];
        size_t n = strlen(name);
        if (n >= sizeof lower)
            continue;
        for (size_t i = 0; i <= n; i++)
            lower[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i]);
        json_object_set_new(headers, lower, json_string(value));
    }
    const char *ct = eng_http_call_header(call, "content-type");
    json_t *body = NULL;
    if (ct && strstr(ct, "json") && resp->body_len > 0)
        body = json_loadb(resp->body, resp->body_len, JSON_DECODE_ANY, NULL);
    if (!body)
        body = json_stringn(resp->body, resp->body_len);
    if (!body) /* not valid UTF-8 */
        body = json_string("");
    return json_pack("{s:i, s:o, s:o}", "status", (int)resp->status, "headers", headers, "body",
                     body);
}

static void http_done(void *arg, const eng_err *err, const eng_http_response *resp,
                      eng_http_call *call)
{
    http_attempt *a = arg;
    eng_step_ctx *ctx = a->ctx;
    a->call = NULL;
    eng_step_set_data(ctx, NULL);
    if (!err && resp && expected(a->expect, resp->status)) {
        json_t *out = response_json(resp, call);
        free(a);
        eng_step_succeed(ctx, out);
        return;
    }
    prov_outcome o;
    prov_classify(NULL, PROV_HTTP, false, err, resp, call, eng_clock_wall_ms(), &o);
    if (o.cls == PROV_OK) { /* a 2xx the step did not expect */
        o.cls = PROV_PERMANENT;
        snprintf(o.code, sizeof o.code, "http_%ld", resp->status);
        snprintf(o.msg, sizeof o.msg, "unexpected status %ld", resp->status);
    }
    free(a);
    prov_fail_step(ctx, &o);
}

static void http_start(eng_step_ctx *ctx)
{
    stepin_record(ctx);
    const json_t *in = eng_step_input(ctx);
    const char *method = json_string_value(json_object_get(in, "method"));
    const char *url = json_string_value(json_object_get(in, "url"));
    if (!method || !method_ok(method) || !url) {
        eng_step_fail(ctx, true, "invalid_input", "http needs a known method and a url", 0);
        return;
    }
    const json_t *h = json_object_get(in, "headers");
    const char *hdrs[HTTP_MAX_HEADERS + 2];
    char *owned[HTTP_MAX_HEADERS];
    size_t nh = 0;
    bool has_ct = false, bad = false;
    const char *k;
    json_t *v;
    json_object_foreach ((json_t *)h, k, v) {
        const char *s = json_string_value(v);
        if (nh == HTTP_MAX_HEADERS || !s || strpbrk(s, "\r\n") || strpbrk(k, ":\r\n")) {
            bad = true;
            break;
        }
        if (strcasecmp(k, "content-type") == 0)
            has_ct = true;
        owned[nh] = eng_xasprintf("%s: %s", k, s);
        hdrs[nh] = owned[nh];
        nh++;
    }
    size_t nowned = nh;
    const json_t *body = json_object_get(in, "body");
    char *payload = NULL;
    if (json_is_string(body)) {
        payload = eng_xstrdup(json_string_value(body));
    } else if (body && !json_is_null(body)) {
        payload = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!has_ct)
            hdrs[nh++] = "Content-Type: application/json";
    }
    hdrs[nh] = NULL;
    if (bad) {
        for (size_t i = 0; i < nowned; i++)
            free(owned[i]);
        free(payload);
        eng_step_fail(ctx, true, "invalid_input", "a header is not a single-line string", 0);
        return;
    }
    http_attempt *a = eng_xcalloc(1, sizeof *a);
    a->ctx = ctx;
    a->expect = json_object_get(in, "expect");
    eng_http_request req = {.method = method, .url = url, .headers = hdrs, .body = payload,
                            .body_len = payload ? strlen(payload) : 0,
                            .timeout_ms = (long)eng_step_timeout_ms(ctx),
                            .public_only = prov_public_only(NULL)};
    eng_step_set_data(ctx, a);
    a->call = eng_httpc_start(eng_step_httpc(ctx), &req, http_done, a);
    for (size_t i = 0; i < nowned; i++)
        free(owned[i]);
    free(payload);
}

static void http_cancel(eng_step_ctx *ctx)
{
    http_attempt *a = eng_step_data(ctx);
    if (!a)
        return;
    eng_httpc_cancel(a->call);
    eng_step_set_data(ctx, NULL);
    free(a);
}

static const eng_step_kind http_kind = {
    .name = "http",
    .default_max_attempts = 3,
    .validate = http_validate,
    .start = http_start,
    .cancel = http_cancel,
};

void step_http_register(void)
{
    eng_step_register(&http_kind);
}
