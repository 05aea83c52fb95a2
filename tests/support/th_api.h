/* tests/support/th_api.h: end-to-end tests through the HTTP API, as a user drives flowd (prefix
 * th_api_).
 *
 * th_api_start gives a fresh database (th_engine_db: migrated, default tenant with the admin key
 * TH_API_KEY), the API service on 127.0.0.1:0 and (unless told not to) in-process workers. Requests use libcurl's easy
 * interface (one handle per call, so any thread may call). Everything aborts the test binary on an
 * unexpected error, like th_engine.h, so tests read as steps and assertions.
 *
 * th_api_openai_start is an OpenAI Chat Completions mock (th_mockhttp) whose answer to each request
 * is decided by the test's responder, so a test can route answers per step (by prompt content),
 * fail one step and count calls per step, which the scripted queue of th_mockllm cannot do when
 * steps run in parallel. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define TH_API_KEY "fd_test_key_not_secret" /* th_engine_db's default tenant (admin) */

typedef struct th_api th_api;

typedef struct th_api_opts {
    const char *prefix; /* database name prefix */
    int workers;        /* in-process workers (default 2) */
    bool no_workers;    /* none: the rows stay as the API wrote them, or the test runs its own */
    int threads;        /* API loop threads (default 2) */
    bool test_clock;    /* POST /v1/test/clock exists (the engine's clock must be in test mode) */
    int max_conns;      /* api_service_opts' connection caps and deadlines; 0: their defaults */
    int max_conns_per_client;
    double header_timeout_s, request_timeout_s;
    double sse_heartbeat_s; /* api_service_opts' (0: its default) */
    const char *conninfo;   /* serve this database (th_engine_db_at's) instead of a fresh one */
    const char *read_conninfo; /* api_service_opts' standby for polls, and its lag bound */
    double read_max_lag_s;
} th_api_opts;

/* Process set-up of an API test binary, first thing in main: allocators, logging, the built-in
 * step kinds, SIGPIPE ignored (a closed connection must not kill the test), libcurl. */
void th_api_init(void);

th_api *th_api_start(const th_api_opts *opts);
/* Stops the workers, then the API; NULL-safe. */
void th_api_stop(th_api *a);
const char *th_api_db(const th_api *a);  /* conninfo of the test database */
const char *th_api_url(const th_api *a); /* "http://127.0.0.1:PORT" */

/* An HTTP answer read with libcurl: the status and the body, always NUL-terminated (the caller
 * frees body). Start with body = eng_xstrdup(""), len = 0. */
typedef struct th_resp {
    long status;
    char *body;
    size_t len;
} th_resp;
/* CURLOPT_WRITEFUNCTION that appends to the th_resp given as CURLOPT_WRITEDATA. */
size_t th_resp_collect(char *p, size_t sz, size_t n, void *arg);

/* One request with the admin key; body (JSON text) may be NULL. Returns the raw body (caller
 * frees) and the status in *status. */
char *th_api_raw(th_api *a, const char *method, const char *path, const char *body, long *status);
/* th_api_raw that must answer `status` and JSON: returns the parsed body (new reference). */
/* POST body (JSON text) to path without a key, with headers (NULL-terminated "Name: value"
 * lines), as a service's webhook arrives. Returns the status; *out (when out is not NULL) gets the
 * answer parsed as JSON, or NULL. */
long th_api_deliver(th_api *a, const char *path, const char *body, const char *const *headers,
                    json_t **out);
json_t *th_api_json(th_api *a, long status, const char *method, const char *path,
                    const char *body);
/* PUTs workflows/NAME.json of the source tree (th_source_dir) as NAME; returns its version. */
int th_api_put_shipped(th_api *a, const char *name);
/* POST /v1/runs {workflow, input} (input: JSON text) -> the new run's id. */
long long th_api_start_run(th_api *a, const char *workflow, const char *input_json);

/* Called with each GET /v1/runs/{id} body while th_api_wait_run polls (borrowed). */
typedef void th_api_poll_cb(void *arg, const json_t *run);
/* Polls GET /v1/runs/{id} every poll_ms until the run is no longer queued/running, or aborts after
 * timeout_s. Returns the last body (new reference). cb may be NULL. */
json_t *th_api_wait_run(th_api *a, long long id, int poll_ms, double timeout_s, th_api_poll_cb *cb,
                        void *arg);

/* ---- OpenAI mock with a per-request responder ---- */
typedef struct th_api_openai th_api_openai;
/* Decides the answer to one chat-completions request (body: the parsed request, borrowed). Set
 * *status (preset 200: success with *text as the assistant message; else the OpenAI error body of
 * that status, and 429 also says retry-after-ms: 10) and *text (malloc'd, freed by the mock; may
 * stay NULL). Runs on the mock's thread. */
typedef void th_api_responder(void *arg, const json_t *body, int *status, char **text);
th_api_openai *th_api_openai_start(th_api_responder *fn, void *arg);
void th_api_openai_stop(th_api_openai *m); /* NULL-safe */
/* "http://127.0.0.1:PORT/v1", as OPENAI_BASE_URL takes it. */
const char *th_api_openai_url(const th_api_openai *m);
/* Every answer waits ms after its request arrived (default 0), e.g. so that polling sees phases. */
void th_api_openai_set_delay(th_api_openai *m, int ms);
/* Most requests held at once (received, answer not yet sent). */
unsigned long th_api_openai_peak(const th_api_openai *m);
/* The text of all messages of a request joined by newlines (new string), for routing. */
char *th_api_prompt_text(const json_t *body);

/* Parses RFC 4180 CSV (quoted fields with "" escapes and line breaks, CRLF or LF line ends) into
 * an array of rows, each an array of strings (new reference); NULL when malformed (a quote
 * inside an unquoted field, an unterminated quoted field, text after a closing quote). */
json_t *th_api_csv_parse(const char *text);

/* Sets (or, for NULL, unsets) FLOWD_SECRET_KEY and FLOWD_SECRET_KEY_PREVIOUS and has this process
 * read them again (engine/secret.h): the in-process server and workers seal and open with them. */
void th_api_use_secret_keys(const char *current, const char *previous);
