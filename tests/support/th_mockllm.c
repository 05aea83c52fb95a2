/* tests/support/th_mockllm.c: mock OpenAI and Anthropic servers (see th_mockllm.h). */
#include "tests/support/th_mockllm.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"
#include "engine/mem.h"
#include "tests/support/th.h"
#include "tests/support/th_mockhttp.h"

#define TH_LLM_KEEP 4096

typedef struct answer {
    th_llm_answer a;
    char *strs[7]; /* owned copies behind a's strings */
} answer;

struct th_llm {
    th_llm_flavor flavor;
    th_mock *http;
    char base[96];
    pthread_mutex_t mu;
    answer *script;
    size_t nscript, script_cap, script_head;
    answer dflt;
    json_t *record; /* array of recorded requests */
    atomic_ulong calls;
    unsigned rnd;   /* piece sizes; server thread only */
};

static void answer_copy(answer *dst, const th_llm_answer *src)
{
    for (size_t i = 0; i < ENG_ARRAY_LEN(dst->strs); i++)
        free(dst->strs[i]);
    memset(dst, 0, sizeof *dst);
    dst->a = *src;
    const char **fields[] = {&dst->a.code,        &dst->a.text,           &dst->a.finish,
                             &dst->a.retry_after, &dst->a.retry_after_ms, &dst->a.should_retry, &dst->a.message};
    for (size_t i = 0; i < ENG_ARRAY_LEN(fields); i++) {
        if (*fields[i]) {
            dst->strs[i] = eng_xstrdup(*fields[i]);
            *fields[i] = dst->strs[i];
        }
    }
}

static void answer_clear(answer *a)
{
    for (size_t i = 0; i < ENG_ARRAY_LEN(a->strs); i++)
        free(a->strs[i]);
    memset(a, 0, sizeof *a);
}

/* ------------------------------------------------------------------------------- bodies -- */

static const char *default_code(th_llm_flavor f, int status)
{
    if (f == TH_LLM_ANTHROPIC) {
        switch (status) {
        case 401: return "authentication_error";
        case 403: return "permission_error";
        case 404: return "not_found_error";
        case 413: return "request_too_large";
        case 429: return "rate_limit_error";
        case 500: return "api_error";
        case 529: return "overloaded_error";
        default: return status >= 500 ? "api_error" : "invalid_request_error";
        }
    }
    switch (status) {
    case 401: return "invalid_api_key";
    case 404: return "model_not_found";
    case 429: return "rate_limit_exceeded";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

static void error_answer(th_llm *m, const th_llm_answer *a, th_mock_resp *r,
                         const th_mock_req *req)
{
    const char *code = a->code ? a->code : default_code(m->flavor, a->status);
    th_mock_resp_status(r, a->status);
    th_mock_resp_header(r, "Content-Type", "application/json");
    json_t *body;
    if (m->flavor == TH_LLM_ANTHROPIC) {
        th_mock_resp_header(r, "request-id", "req_MOCK01");
        body = json_pack("{s:s, s:{s:s, s:s}, s:s}", "type", "error", "error", "type", code,
                         "message", strcmp(code, "overloaded_error") == 0 ? "Overloaded"
                                                                           : "mock error",
                         "request_id", "req_MOCK01");
    } else {
        th_mock_resp_header(r, "x-request-id", "req_mock01");
        const char *msg = "mock error";
        const char *type = "invalid_request_error";
        if (strcmp(code, "insufficient_quota") == 0) {
            msg = "You exceeded your current quota, please check your plan and billing details.";
            type = "insufficient_quota";
        } else if (strcmp(code, "rate_limit_exceeded") == 0) {
            msg = "Rate limit reached for requests. Please try again in 1s.";
            type = "requests";
        } else if (strcmp(code, "invalid_api_key") == 0) {
            msg = "Incorrect API key provided: sk-mo***";
        } else if (a->status >= 500) {
            msg = "The server had an error while processing your request.";
            type = "server_error";
        }
        body = json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", msg, "type", type,
                         "param", "code", code);
    }
    if (a->message)
        json_object_set_new(json_object_get(body, "error"), "message", json_string(a->message));
    if (a->echo) {
        const char *auth = th_mock_req_header(req, "authorization");
        const char *key = th_mock_req_header(req, "x-api-key");
        char *echo = eng_xasprintf("rejected %s %s with Authorization: %s, x-api-key: %s",
                                   req->method, req->target, auth ? auth : "(none)",
                                   key ? key : "(none)");
        json_object_set_new(json_object_get(body, "error"), "message", json_string(echo));
        free(echo);
    }
    char *s = json_dumps(body, JSON_COMPACT);
    th_mock_resp_body(r, s, strlen(s));
    free(s);
    json_decref(body);
}

static char *openai_success(const char *model, const char *text, const char *finish,
                            int cache_read)
{
    json_t *j = json_pack("{s:s, s:s, s:i, s:s, s:[{s:i, s:{s:s, s:s, s:n}, s:n, s:s}], "
                          "s:{s:i, s:i, s:i, s:{s:i}}, s:s}",
                          "id", "chatcmpl-MOCK01", "object", "chat.completion", "created",
                          1767225600, "model", model, "choices", "index", 0, "message", "role",
                          "assistant", "content", text, "refusal", "logprobs", "finish_reason",
                          finish, "usage", "prompt_tokens", 14, "completion_tokens", 2,
                          "total_tokens", 16, "prompt_tokens_details", "cached_tokens",
                          cache_read, "system_fingerprint", "fp_mock01");
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

static char *anthropic_success(const char *model, const char *text, const char *finish,
                               int cache_read)
{
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:[{s:s, s:s}], s:s, s:n, s:{s:i, s:i, s:i, "
                          "s:i}}",
                          "id", "msg_MOCK01", "type", "message", "role", "assistant", "model",
                          model, "content", "type", "text", "text", text, "stop_reason", finish,
                          "stop_sequence", "usage", "input_tokens", 12, "output_tokens", 3,
                          "cache_creation_input_tokens", 0, "cache_read_input_tokens",
                          cache_read);
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

static void sse(eng_buf *b, const char *event, json_t *data /* stolen */)
{
    char *s = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    eng_rc rc = event ? eng_buf_appendf(b, "event: %s\ndata: %s\n\n", event, s)
                      : eng_buf_appendf(b, "data: %s\n\n", s);
    free(s);
    if (rc != ENG_OK)
        abort();
}

/* The text split in two deltas, so clients must concatenate. */
static void openai_stream(eng_buf *b, const char *model, const char *text, const char *finish,
                          const th_llm_answer *a)
{
    size_t half = strlen(text) / 2;
    char *first = eng_xstrndup(text, half);
    const char *id = "chatcmpl-MOCK01";
    sse(b, NULL, json_pack("{s:s, s:s, s:i, s:s, s:[{s:i, s:{s:s, s:s}, s:n}]}", "id", id,
                           "object", "chat.completion.chunk", "created", 1767225600, "model",
                           model, "choices", "index", 0, "delta", "role", "assistant", "content",
                           "", "finish_reason"));
    if (eng_buf_appendf(b, ": ping\r\n\r\n") != ENG_OK)
        abort();
    sse(b, NULL, json_pack("{s:s, s:s, s:i, s:s, s:[{s:i, s:{s:s}, s:n}]}", "id", id, "object",
                           "chat.completion.chunk", "created", 1767225600, "model", model,
                           "choices", "index", 0, "delta", "content", first, "finish_reason"));
    free(first);
    if (a->stream_error) {
        sse(b, NULL, json_pack("{s:{s:s, s:s}}", "error", "message", "The server had an error",
                               "type", "server_error"));
        return;
    }
    sse(b, NULL, json_pack("{s:s, s:s, s:i, s:s, s:[{s:i, s:{s:s}, s:n}]}", "id", id, "object",
                           "chat.completion.chunk", "created", 1767225600, "model", model,
                           "choices", "index", 0, "delta", "content", text + half,
                           "finish_reason"));
    sse(b, NULL, json_pack("{s:s, s:s, s:i, s:s, s:[{s:i, s:{}, s:s}]}", "id", id, "object",
                           "chat.completion.chunk", "created", 1767225600, "model", model,
                           "choices", "index", 0, "delta", "finish_reason", finish));
    sse(b, NULL, json_pack("{s:s, s:s, s:i, s:s, s:[], s:{s:i, s:i, s:i}}", "id", id, "object",
                           "chat.completion.chunk", "created", 1767225600, "model", model,
                           "choices", "usage", "prompt_tokens", 14, "completion_tokens", 2,
                           "total_tokens", 16));
    if (eng_buf_appendf(b, "data: [DONE]\n\n") != ENG_OK)
        abort();
}

static void anthropic_stream(eng_buf *b, const char *model, const char *text, const char *finish,
                             const th_llm_answer *a)
{
    size_t half = strlen(text) / 2;
    char *first = eng_xstrndup(text, half);
    sse(b, "message_start",
        json_pack("{s:s, s:{s:s, s:s, s:s, s:s, s:[], s:n, s:n, s:{s:i, s:i}}}", "type",
                  "message_start", "message", "id", "msg_MOCK01", "type", "message", "role",
                  "assistant", "model", model, "content", "stop_reason", "stop_sequence",
                  "usage", "input_tokens", 12, "output_tokens", 1));
    sse(b, "content_block_start",
        json_pack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_start", "index", 0,
                  "content_block", "type", "text", "text", ""));
    sse(b, "ping", json_pack("{s:s}", "type", "ping"));
    sse(b, "content_block_delta",
        json_pack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_delta", "index", 0, "delta",
                  "type", "text_delta", "text", first));
    free(first);
    if (a->stream_error) {
        sse(b, "error", json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type",
                                  "overloaded_error", "message", "Overloaded"));
        return;
    }
    sse(b, "content_block_delta",
        json_pack("{s:s, s:i, s:{s:s, s:s}}", "type", "content_block_delta", "index", 0, "delta",
                  "type", "text_delta", "text", text + half));
    sse(b, "content_block_stop", json_pack("{s:s, s:i}", "type", "content_block_stop", "index", 0));
    sse(b, "message_delta", json_pack("{s:s, s:{s:s, s:n}, s:{s:i}}", "type", "message_delta",
                                      "delta", "stop_reason", finish, "stop_sequence", "usage",
                                      "output_tokens", 3));
    sse(b, "message_stop", json_pack("{s:s}", "type", "message_stop"));
}

static void ratelimit_headers(th_llm *m, const th_llm_answer *a, th_mock_resp *r)
{
    if (m->flavor == TH_LLM_OPENAI) {
        th_mock_resp_header(r, "x-ratelimit-limit-requests", "500");
        th_mock_resp_header(r, "x-ratelimit-limit-tokens", "200000");
        th_mock_resp_header(r, "x-ratelimit-remaining-requests", "%d", a->exhausted ? 0 : 499);
        th_mock_resp_header(r, "x-ratelimit-remaining-tokens", "199000");
        th_mock_resp_header(r, "x-ratelimit-reset-requests", "1.5s");
        th_mock_resp_header(r, "x-ratelimit-reset-tokens", "12ms");
        th_mock_resp_header(r, "openai-processing-ms", "5");
        th_mock_resp_header(r, "openai-version", "2020-10-01");
    } else {
        th_mock_resp_header(r, "anthropic-ratelimit-requests-limit", "50");
        th_mock_resp_header(r, "anthropic-ratelimit-requests-remaining", "%d",
                            a->exhausted ? 0 : 49);
        th_mock_resp_header(r, "anthropic-ratelimit-requests-reset", "2026-01-01T00:00:59Z");
        th_mock_resp_header(r, "anthropic-ratelimit-tokens-limit", "40000");
        th_mock_resp_header(r, "anthropic-ratelimit-tokens-remaining", "39000");
        th_mock_resp_header(r, "anthropic-ratelimit-tokens-reset", "2026-01-01T00:00:59Z");
    }
}

/* ------------------------------------------------------------------------------- handler -- */

static void record(th_llm *m, const th_mock_req *req, json_t *body)
{
    static const char *const names[] = {"authorization", "x-api-key", "anthropic-version",
                                        "content-type"};
    pthread_mutex_lock(&m->mu);
    bool full = json_array_size(m->record) >= TH_LLM_KEEP;
    pthread_mutex_unlock(&m->mu);
    if (full) /* only this thread appends: nothing to build past the cap */
        return;
    json_t *rec = json_pack("{s:s, s:s, s:O, s:I}", "method", req->method, "target", req->target,
                            "body", body ? body : json_null(), "at_ms",
                            (json_int_t)th_now_ms());
    for (size_t i = 0; i < ENG_ARRAY_LEN(names); i++) {
        const char *v = th_mock_req_header(req, names[i]);
        json_object_set_new(rec, names[i], v ? json_string(v) : json_null());
    }
    pthread_mutex_lock(&m->mu);
    if (json_array_size(m->record) < TH_LLM_KEEP)
        json_array_append_new(m->record, rec);
    else
        json_decref(rec);
    pthread_mutex_unlock(&m->mu);
}

static void handler(void *arg, const th_mock_req *req, th_mock_resp *r)
{
    th_llm *m = arg;
    atomic_fetch_add(&m->calls, 1);
    json_t *body = json_loadb(req->body, req->body_len, 0, NULL);
    record(m, req, body);
    answer cur = {0};
    pthread_mutex_lock(&m->mu);
    const th_llm_answer *src = m->script_head < m->nscript ? &m->script[m->script_head++].a
                                                           : &m->dflt.a;
    answer_copy(&cur, src);
    pthread_mutex_unlock(&m->mu);
    const th_llm_answer *a = &cur.a;
    const char *want = m->flavor == TH_LLM_OPENAI ? "/v1/chat/completions" : "/v1/messages";
    if (a->delay_ms > 0)
        th_mock_resp_delay(r, a->delay_ms);
    if (a->retry_after)
        th_mock_resp_header(r, "retry-after", "%s", a->retry_after);
    if (a->retry_after_ms)
        th_mock_resp_header(r, "retry-after-ms", "%s", a->retry_after_ms);
    if (a->should_retry)
        th_mock_resp_header(r, "x-should-retry", "%s", a->should_retry);
    ratelimit_headers(m, a, r);
    if (a->drop) {
        th_mock_resp_drop(r);
    } else if (strcmp(req->method, "POST") != 0 || strcmp(req->target, want) != 0 ||
               !json_is_object(body)) {
        th_llm_answer e = {.status = strcmp(req->target, want) ? 404 : 400};
        error_answer(m, &e, r, req);
    } else if (a->status && a->status != 200) {
        error_answer(m, a, r, req);
    } else {
        const char *model = json_string_value(json_object_get(body, "model"));
        bool anth = m->flavor == TH_LLM_ANTHROPIC;
        const char *finish = a->finish ? a->finish : anth ? "end_turn" : "stop";
        bool jmode = json_object_get(body, "response_format") != NULL;
        const char *text = a->text ? a->text : jmode ? "{\"ok\":true}" : "Hi.";
        if (json_is_true(json_object_get(body, "stream"))) {
            eng_buf b;
            eng_buf_init(&b, 0);
            (anth ? anthropic_stream : openai_stream)(&b, model ? model : "?", text, finish, a);
            th_mock_resp_header(r, "Content-Type", "text/event-stream");
            th_mock_resp_chunked(r);
            th_mock_resp_body(r, b.ptr, b.len);
            m->rnd = m->rnd * 1103515245u + 12345u;
            th_mock_resp_pieces(r, 1 + (m->rnd >> 16) % 23, 1);
            if (a->stream_cut)
                th_mock_resp_close_after(r, b.len / 2);
            eng_buf_deinit(&b);
        } else {
            char *s = (anth ? anthropic_success : openai_success)(model ? model : "?", text,
                                                                  finish, a->cache_read);
            th_mock_resp_header(r, "Content-Type", "application/json");
            th_mock_resp_header(r, anth ? "request-id" : "x-request-id", "req_mock01");
            th_mock_resp_body(r, s, strlen(s));
            free(s);
        }
    }
    answer_clear(&cur);
    json_decref(body);
}

/* ------------------------------------------------------------------------------------ api -- */

th_llm *th_llm_start(th_llm_flavor flavor)
{
    th_llm *m = eng_xcalloc(1, sizeof *m);
    m->flavor = flavor;
    pthread_mutex_init(&m->mu, NULL);
    m->record = json_array();
    m->rnd = (unsigned)th_now_ms();
    m->http = th_mock_start(handler, m);
    snprintf(m->base, sizeof m->base, "%s%s", th_mock_url(m->http),
             flavor == TH_LLM_OPENAI ? "/v1" : "");
    return m;
}

void th_llm_stop(th_llm *m)
{
    if (!m)
        return;
    th_mock_stop(m->http);
    for (size_t i = 0; i < m->nscript; i++)
        answer_clear(&m->script[i]);
    free(m->script);
    answer_clear(&m->dflt);
    json_decref(m->record);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

const char *th_llm_base_url(const th_llm *m)
{
    return m->base;
}

void th_llm_push(th_llm *m, const th_llm_answer *a)
{
    pthread_mutex_lock(&m->mu);
    if (m->nscript == m->script_cap) {
        m->script_cap = m->script_cap ? m->script_cap * 2 : 8;
        m->script = eng_xrealloc(m->script, m->script_cap * sizeof *m->script);
    }
    memset(&m->script[m->nscript], 0, sizeof m->script[0]);
    answer_copy(&m->script[m->nscript++], a);
    pthread_mutex_unlock(&m->mu);
}

void th_llm_set_default(th_llm *m, const th_llm_answer *a)
{
    pthread_mutex_lock(&m->mu);
    answer_copy(&m->dflt, a);
    pthread_mutex_unlock(&m->mu);
}

unsigned long th_llm_calls(th_llm *m)
{
    return atomic_load(&m->calls);
}

unsigned long th_llm_connections(th_llm *m)
{
    return th_mock_connections(m->http);
}

unsigned long th_llm_peak_pending(th_llm *m)
{
    return th_mock_peak_pending(m->http);
}

json_t *th_llm_request(th_llm *m, unsigned long i)
{
    pthread_mutex_lock(&m->mu);
    json_t *r = json_array_get(m->record, i);
    json_incref(r);
    pthread_mutex_unlock(&m->mu);
    return r;
}
