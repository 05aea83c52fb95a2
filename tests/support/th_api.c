/* tests/support/th_api.c: end-to-end tests through the HTTP API (see th_api.h). */
#include "tests/support/th_api.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/api.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/secret.h"
#include "engine/step.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"
#include "tests/support/th_mockhttp.h"

struct th_api {
    char *db;
    api_service *svc;
    th_workers *workers;
    char url[64];
};

void th_api_init(void)
{
    eng_mem_init();
    eng_log_init();
    eng_step_register_builtins();
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

th_api *th_api_start(const th_api_opts *opts)
{
    th_api *a = eng_xcalloc(1, sizeof *a);
    a->db = opts->conninfo ? eng_xstrdup(opts->conninfo)
                           : th_engine_db(opts->prefix ? opts->prefix : "api_e2e", NULL);
    api_service_opts o = {.conninfo = a->db, .listen = "127.0.0.1:0",
                          .threads = opts->threads > 0 ? opts->threads : 2, .db_conns = 4,
                          .test_clock = opts->test_clock, .max_conns = opts->max_conns,
                          .max_conns_per_client = opts->max_conns_per_client,
                          .header_timeout_s = opts->header_timeout_s,
                          .request_timeout_s = opts->request_timeout_s,
                          .sse_heartbeat_s = opts->sse_heartbeat_s,
                          .read_conninfo = opts->read_conninfo,
                          .read_max_lag_s = opts->read_max_lag_s};
    eng_err err;
    a->svc = api_service_start(&o, &err);
    if (!a->svc) {
        fprintf(stderr, "th_api: api_service_start: %s\n", err.msg);
        abort();
    }
    snprintf(a->url, sizeof a->url, "http://127.0.0.1:%d", api_service_port(a->svc));
    if (!opts->no_workers)
        a->workers = th_workers_start(a->db, opts->workers > 0 ? opts->workers : 2,
                                      opts->prefix ? opts->prefix : "api-e2e", 0, 0, 0);
    return a;
}

void th_api_stop(th_api *a)
{
    if (!a)
        return;
    th_workers_stop(a->workers);
    api_service_stop(a->svc);
    free(a->db);
    free(a);
}

const char *th_api_db(const th_api *a)
{
    return a->db;
}

const char *th_api_url(const th_api *a)
{
    return a->url;
}

/* ------------------------------------------------------------------------------ client -- */

size_t th_resp_collect(char *p, size_t sz, size_t n, void *arg)
{
    th_resp *r = arg;
    r->body = eng_xrealloc(r->body, r->len + sz * n + 1);
    memcpy(r->body + r->len, p, sz * n);
    r->len += sz * n;
    r->body[r->len] = '\0';
    return sz * n;
}

/* One request; headers (NULL-terminated "Name: value" lines) after the key when with_key. */
static char *api_request(th_api *a, const char *method, const char *path, const char *body,
                         bool with_key, const char *const *headers, long *status)
{
    CURL *h = curl_easy_init();
    th_resp r = {0, eng_xstrdup(""), 0};
    char url[1024];
    snprintf(url, sizeof url, "%s%s", a->url, path);
    struct curl_slist *hl = NULL;
    if (with_key)
        hl = curl_slist_append(hl, "Authorization: Bearer " TH_API_KEY);
    if (body)
        hl = curl_slist_append(hl, "Content-Type: application/json");
    for (size_t i = 0; headers && headers[i]; i++)
        hl = curl_slist_append(hl, headers[i]);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 120L);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, th_resp_collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
    CURLcode rc = curl_easy_perform(h);
    if (rc != CURLE_OK) {
        fprintf(stderr, "th_api: %s %s: %s\n", method, path, curl_easy_strerror(rc));
        abort();
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(hl);
    curl_easy_cleanup(h);
    return r.body;
}

char *th_api_raw(th_api *a, const char *method, const char *path, const char *body, long *status)
{
    return api_request(a, method, path, body, true, NULL, status);
}

long th_api_deliver(th_api *a, const char *path, const char *body, const char *const *headers,
                    json_t **out)
{
    long status = 0;
    char *text = api_request(a, "POST", path, body, false, headers, &status);
    if (out)
        *out = json_loads(text, 0, NULL);
    free(text);
    return status;
}

json_t *th_api_json(th_api *a, long status, const char *method, const char *path,
                    const char *body)
{
    long got = 0;
    char *text = th_api_raw(a, method, path, body, &got);
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (got != status || !j) {
        fprintf(stderr, "th_api: %s %s: expected %ld and JSON, got %ld: %.2000s\n", method, path,
                status, got, text);
        abort();
    }
    free(text);
    return j;
}

int th_api_put_shipped(th_api *a, const char *name)
{
    char *file = eng_xasprintf("%s/workflows/%s.json", th_source_dir(), name);
    json_error_t jerr;
    json_t *doc = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        fprintf(stderr, "th_api: %s: %s (line %d)\n", file, jerr.text, jerr.line);
        abort();
    }
    free(file);
    char *body = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    char *path = eng_xasprintf("/v1/workflows/%s", name);
    long status = 0;
    char *text = th_api_raw(a, "PUT", path, body, &status);
    if (status != 201 && status != 200) {
        fprintf(stderr, "th_api: PUT %s: %ld %s\n", path, status, text);
        abort();
    }
    json_t *j = json_loads(text, 0, NULL);
    int version = (int)json_integer_value(json_object_get(j, "version"));
    json_decref(j);
    free(text);
    free(path);
    free(body);
    return version;
}

long long th_api_start_run(th_api *a, const char *workflow, const char *input_json)
{
    char *body = eng_xasprintf("{\"workflow\": \"%s\", \"input\": %s}", workflow, input_json);
    json_t *run = th_api_json(a, 201, "POST", "/v1/runs", body);
    free(body);
    long long id = (long long)json_integer_value(json_object_get(run, "id"));
    json_decref(run);
    return id;
}

json_t *th_api_wait_run(th_api *a, long long id, int poll_ms, double timeout_s, th_api_poll_cb *cb,
                        void *arg)
{
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld", id);
    long long deadline = th_now_ms() + (long long)(timeout_s * 1000);
    for (;;) {
        json_t *run = th_api_json(a, 200, "GET", path, NULL);
        if (cb)
            cb(arg, run);
        const char *st = json_string_value(json_object_get(run, "state"));
        if (st && strcmp(st, "queued") != 0 && strcmp(st, "running") != 0)
            return run;
        if (th_now_ms() > deadline) {
            char *s = json_dumps(run, JSON_COMPACT);
            fprintf(stderr, "th_api: run %lld still %s after %.0f s: %.3000s\n", id, st, timeout_s,
                    s);
            abort();
        }
        json_decref(run);
        struct timespec ts = {poll_ms / 1000, (long)(poll_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* -------------------------------------------------------------------------- OpenAI mock -- */

struct th_api_openai {
    th_mock *http;
    th_api_responder *fn;
    void *arg;
    atomic_int delay_ms;
    char url[96];
};

char *th_api_prompt_text(const json_t *body)
{
    size_t i, len = 0;
    json_t *m;
    json_array_foreach (json_object_get(body, "messages"), i, m)
        len += json_string_length(json_object_get(m, "content")) + 1;
    char *out = eng_xmalloc(len + 1), *p = out;
    json_array_foreach (json_object_get(body, "messages"), i, m) {
        const char *s = json_string_value(json_object_get(m, "content"));
        size_t n = s ? strlen(s) : 0;
        if (n)
            memcpy(p, s, n);
        p[n] = '\n';
        p += n + 1;
    }
    *p = '\0';
    return out;
}

static void openai_handler(void *arg, const th_mock_req *req, th_mock_resp *r)
{
    th_api_openai *m = arg;
    json_t *body = json_loadb(req->body, req->body_len, 0, NULL);
    th_mock_resp_header(r, "Content-Type", "application/json");
    if (!body || strcmp(req->target, "/v1/chat/completions") != 0) {
        th_mock_resp_status(r, 400);
        th_mock_resp_bodyf(r, "{\"error\": {\"message\": \"mock: unexpected request\", \"type\": "
                              "\"invalid_request_error\", \"param\": null, \"code\": null}}");
        json_decref(body);
        return;
    }
    int status = 200;
    char *text = NULL;
    m->fn(m->arg, body, &status, &text);
    int delay = atomic_load(&m->delay_ms);
    if (delay > 0)
        th_mock_resp_delay(r, delay);
    json_t *out;
    if (status == 200) {
        const char *model = json_string_value(json_object_get(body, "model"));
        out = json_pack("{s:s, s:s, s:i, s:s, s:[{s:i, s:{s:s, s:s, s:n}, s:n, s:s}], "
                        "s:{s:i, s:i, s:i}}",
                        "id", "chatcmpl-E2E", "object", "chat.completion", "created", 1767225600,
                        "model", model ? model : "?", "choices", "index", 0, "message", "role",
                        "assistant", "content", text ? text : "", "refusal", "logprobs",
                        "finish_reason", "stop", "usage", "prompt_tokens", 100,
                        "completion_tokens", 50, "total_tokens", 150);
    } else {
        const char *code = status == 429   ? "rate_limit_exceeded"
                           : status >= 500 ? "server_error"
                                           : "invalid_request_error";
        out = json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", "mock error", "type",
                        status >= 500 ? "server_error" : "invalid_request_error", "param", "code",
                        code);
        if (status == 429)
            th_mock_resp_header(r, "retry-after-ms", "10");
    }
    th_mock_resp_status(r, status);
    char *s = json_dumps(out, JSON_COMPACT);
    th_mock_resp_body(r, s, strlen(s));
    free(s);
    free(text);
    json_decref(out);
    json_decref(body);
}

th_api_openai *th_api_openai_start(th_api_responder *fn, void *arg)
{
    th_api_openai *m = eng_xcalloc(1, sizeof *m);
    m->fn = fn;
    m->arg = arg;
    m->http = th_mock_start(openai_handler, m);
    snprintf(m->url, sizeof m->url, "%s/v1", th_mock_url(m->http));
    return m;
}

void th_api_openai_stop(th_api_openai *m)
{
    if (!m)
        return;
    th_mock_stop(m->http);
    free(m);
}

const char *th_api_openai_url(const th_api_openai *m)
{
    return m->url;
}

void th_api_openai_set_delay(th_api_openai *m, int ms)
{
    atomic_store(&m->delay_ms, ms);
}

unsigned long th_api_openai_peak(const th_api_openai *m)
{
    return th_mock_peak_pending(m->http);
}

/* ---------------------------------------------------------------------------------- CSV -- */

json_t *th_api_csv_parse(const char *text)
{
    json_t *rows = json_array(), *row = json_array();
    size_t cap = strlen(text) + 1, n = 0;
    char *field = eng_xmalloc(cap);
    const char *p = text;
    bool any = false; /* the current row has started */
    while (*p) {
        any = true;
        n = 0;
        if (*p == '"') {
            for (p++;; p++) {
                if (!*p)
                    goto bad;
                if (*p == '"' && p[1] == '"') {
                    field[n++] = '"';
                    p++;
                } else if (*p == '"') {
                    p++;
                    break;
                } else {
                    field[n++] = *p;
                }
            }
            if (*p && *p != ',' && *p != '\r' && *p != '\n')
                goto bad;
        } else {
            while (*p && *p != ',' && *p != '\r' && *p != '\n') {
                if (*p == '"')
                    goto bad;
                field[n++] = *p++;
            }
        }
        json_array_append_new(row, json_stringn(field, n));
        if (*p == ',') {
            p++;
            if (!*p || *p == '\r' || *p == '\n')
                json_array_append_new(row, json_string(""));
            else
                continue;
        }
        if (*p == '\r')
            p++;
        if (*p == '\n')
            p++;
        json_array_append(rows, row);
        json_decref(row);
        row = json_array();
        any = false;
    }
    if (any)
        json_array_append(rows, row);
    json_decref(row);
    free(field);
    return rows;
bad:
    json_decref(row);
    json_decref(rows);
    free(field);
    return NULL;
}

void th_api_use_secret_keys(const char *current, const char *previous)
{
    if (current)
        setenv("FLOWD_SECRET_KEY", current, 1);
    else
        unsetenv("FLOWD_SECRET_KEY");
    if (previous)
        setenv("FLOWD_SECRET_KEY_PREVIOUS", previous, 1);
    else
        unsetenv("FLOWD_SECRET_KEY_PREVIOUS");
    if (sec_reload(NULL) != ENG_OK)
        abort(); /* a test's own key is malformed */
}
