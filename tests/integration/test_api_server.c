/* tests/integration/test_api_server.c: the API service over real sockets against the fixture
 * PostgreSQL: the OpenAPI document against the route table, /metrics moving with work done,
 * per-tenant rate limits, malformed and oversized requests, slow headers, pipelining, half-close.
 *
 * The client here is deliberately plain blocking sockets with a receive timeout, so that what goes
 * over the wire is exactly what each test writes (pipelined bytes in one write, half-close). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"
#include "api/api_int.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "engine/step.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"

#define MAX_BODY 4096

static char *db;
static long long tenant;
static api_service *svc;
static int port;
static const char *const admin_key = "test-admin-key-0123456789";

/* ------------------------------------------------------------------------------ client -- */

typedef struct tconn {
    int fd;
    char *buf;
    size_t len, cap;
} tconn;

typedef struct tresp {
    int status;
    char *head; /* status line and headers */
    char *body;
    size_t blen;
} tresp;

static tconn tc_open(void)
{
    tconn c = {.fd = socket(AF_INET, SOCK_STREAM, 0)};
    assert_true(c.fd >= 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c.fd, (struct sockaddr *)&a, sizeof a), 0);
    return c;
}

static void tc_close(tconn *c)
{
    close(c->fd);
    free(c->buf);
    *c = (tconn){.fd = -1};
}

static void tc_write(tconn *c, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(c->fd, s, n);
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

/* Reads more bytes into c->buf; 0 at EOF, -1 on timeout or error. */
static ssize_t tc_fill(tconn *c)
{
    if (c->cap - c->len < 4096) {
        c->cap = c->cap ? c->cap * 2 : 16384;
        c->buf = eng_xrealloc(c->buf, c->cap + 1);
    }
    ssize_t n = read(c->fd, c->buf + c->len, c->cap - c->len);
    if (n > 0) {
        c->len += (size_t)n;
        c->buf[c->len] = '\0';
    }
    return n;
}

static void tresp_free(tresp *r)
{
    free(r->head);
    free(r->body);
    *r = (tresp){0};
}

/* The next response (Content-Length framed, as every non-streaming answer is); false at EOF. */
static bool tc_read(tconn *c, tresp *r)
{
    *r = (tresp){0};
    char *end;
    while (!c->buf || !(end = strstr(c->buf, "\r\n\r\n")))
        if (tc_fill(c) <= 0)
            return false;
    size_t hlen = (size_t)(end - c->buf) + 4;
    r->head = eng_xstrndup(c->buf, hlen);
    r->status = atoi(r->head + 9);
    size_t cl = 0;
    for (char *p = r->head; (p = strchr(p, '\n')); p++)
        if (strncasecmp(p + 1, "Content-Length:", 15) == 0)
            cl = strtoul(p + 16, NULL, 10);
    while (c->len < hlen + cl)
        if (tc_fill(c) <= 0)
            return false;
    r->body = eng_xstrndup(c->buf + hlen, cl);
    r->blen = cl;
    memmove(c->buf, c->buf + hlen + cl, c->len - hlen - cl);
    c->len -= hlen + cl;
    c->buf[c->len] = '\0';
    return true;
}

/* The value of header name in r, copied into out; false when absent. */
static bool tresp_header(const tresp *r, const char *name, char *out, size_t outlen)
{
    size_t n = strlen(name);
    for (const char *p = r->head; (p = strchr(p, '\n')); p++)
        if (strncasecmp(p + 1, name, n) == 0 && p[1 + n] == ':') {
            const char *v = p + 2 + n;
            while (*v == ' ')
                v++;
            size_t l = strcspn(v, "\r\n");
            snprintf(out, outlen, "%.*s", (int)(l < outlen ? l : outlen - 1), v);
            return true;
        }
    return false;
}

static char *req_text(const char *method, const char *path, const char *key, const char *body)
{
    char auth[128] = "";
    if (key)
        snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", key);
    return eng_xasprintf("%s %s HTTP/1.1\r\nHost: t\r\n%sContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\n\r\n%s",
                         method, path, auth, body ? strlen(body) : 0, body ? body : "");
}

/* One request on c; the response goes to r (caller frees). */
static void tc_req(tconn *c, const char *method, const char *path, const char *key,
                   const char *body, tresp *r)
{
    char *text = req_text(method, path, key, body);
    tc_write(c, text, strlen(text));
    free(text);
    assert_true(tc_read(c, r));
}

/* One request on a new connection; returns the status, and the body when body_out is non-NULL. */
static int req1(const char *method, const char *path, const char *key, const char *body,
                char **body_out)
{
    tconn c = tc_open();
    tresp r;
    tc_req(&c, method, path, key, body, &r);
    int status = r.status;
    if (body_out) {
        *body_out = r.body;
        r.body = NULL;
    }
    tresp_free(&r);
    tc_close(&c);
    return status;
}

static const char *error_field(json_t *doc)
{
    return json_string_value(json_object_get(json_object_get(doc, "error"), "field"));
}

static const char *error_code(json_t *doc)
{
    return json_string_value(json_object_get(json_object_get(doc, "error"), "code"));
}

/* A new tenant with one admin key; returns the tenant id. */
static long long make_tenant(const char *name, const char *rate, const char *burst,
                             const char *key)
{
    char *sql = eng_xasprintf("INSERT INTO tenants (name, rate_per_s, rate_burst) VALUES ('%s', %s, "
                              "%s) RETURNING id",
                              name, rate, burst);
    long long id = th_pg_long(db, sql);
    free(sql);
    sql = eng_xasprintf("INSERT INTO api_keys (tenant_id, key_hash, prefix, role) VALUES (%lld, "
                        "sha256(convert_to('%s', 'UTF8')), left('%s', 8), 'admin') RETURNING id",
                        id, key, key);
    free(th_pg_value(db, sql));
    free(sql);
    return id;
}

/* ------------------------------------------------------------------------------ set-up -- */

static int group_setup(void **state)
{
    (void)state;
    db = th_engine_db("api_server", &tenant);
    char *sql = eng_xasprintf("INSERT INTO api_keys (tenant_id, key_hash, prefix, role) VALUES (%lld, "
                              "sha256(convert_to('%s', 'UTF8')), 'test-adm', 'admin') RETURNING id",
                              tenant, admin_key);
    free(th_pg_value(db, sql));
    free(sql);
    api_service_opts o = {.conninfo = db, .listen = "127.0.0.1:0", .threads = 2, .db_conns = 2,
                          .max_body = MAX_BODY, .header_timeout_s = 0.5, .test_clock = true};
    eng_err err;
    svc = api_service_start(&o, &err);
    if (!svc) {
        fprintf(stderr, "api_service_start: %s\n", err.msg);
        return -1;
    }
    port = api_service_port(svc);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    api_service_stop(svc);
    free(db);
    return 0;
}

/* ----------------------------------------------------------------------------- OpenAPI -- */

/* "/v1/runs/{id}/events" -> "/v1/runs/{}/events", the route table's spelling. */
static void normalize_path(const char *in, char *out, size_t outlen)
{
    size_t o = 0;
    for (const char *p = in; *p && o + 3 < outlen; p++) {
        if (*p == '{') {
            out[o++] = '{';
            out[o++] = '}';
            while (*p && *p != '}')
                p++;
            if (!*p)
                break;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
}

static void test_openapi_matches_routes(void **state)
{
    (void)state;
    char *body = NULL;
    assert_int_equal(req1("GET", "/v1/openapi.json", NULL, NULL, &body), 200);
    json_error_t jerr;
    json_t *doc = json_loads(body, 0, &jerr);
    bool refs_out = strstr(body, "\"$ref\":\"schemas/") != NULL;
    free(body);
    if (!doc)
        fail_msg("openapi.json does not parse: %s line %d", jerr.text, jerr.line);
    assert_string_equal(json_string_value(json_object_get(doc, "openapi")), "3.1.0");
    /* without FLOWD_PUBLIC_URL the API is where the document came from */
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(doc, "servers"), 0), "url")),
                        "/");
    /* self-contained: the workflow definition is typed by kind, not a bare object */
    json_t *wfdef = json_object_get(json_object_get(json_object_get(doc, "components"), "schemas"),
                                    "WorkflowDefinition");
    assert_non_null(json_object_get(json_object_get(wfdef, "properties"), "steps"));
    assert_false(refs_out);
    json_t *paths = json_object_get(doc, "paths");
    assert_true(json_is_object(paths));

    /* every route the server answers is documented */
    const char *method, *pattern;
    size_t nroutes = 0;
    for (size_t i = 0; api_route_at(i, &method, &pattern); i++, nroutes++) {
        bool found = false;
        const char *p;
        json_t *item;
        json_object_foreach(paths, p, item) {
            char norm[256];
            normalize_path(p, norm, sizeof norm);
            char lower[16];
            size_t k = 0;
            for (; method[k] && k + 1 < sizeof lower; k++)
                lower[k] = (char)(method[k] | 0x20);
            lower[k] = '\0';
            if (strcmp(norm, pattern) == 0 && json_is_object(json_object_get(item, lower)))
                found = true;
        }
        if (!found)
            fail_msg("route %s %s is not in the OpenAPI document", method, pattern);
    }
    /* and every documented operation is a route */
    static const char *const verbs[] = {"get", "put", "post", "delete", "patch", "head", "options"};
    size_t nops = 0;
    const char *p;
    json_t *item;
    json_object_foreach(paths, p, item) {
        char norm[256];
        normalize_path(p, norm, sizeof norm);
        for (size_t v = 0; v < sizeof verbs / sizeof verbs[0]; v++) {
            json_t *op = json_object_get(item, verbs[v]);
            if (!op)
                continue;
            nops++;
            assert_true(json_is_object(json_object_get(op, "responses")));
            bool found = false;
            for (size_t i = 0; api_route_at(i, &method, &pattern); i++)
                if (strcasecmp(method, verbs[v]) == 0 && strcmp(pattern, norm) == 0)
                    found = true;
            if (!found)
                fail_msg("documented operation %s %s is not a route", verbs[v], p);
        }
    }
    assert_int_equal(nops, nroutes);
    json_decref(doc);
}

/* The workflow JSON Schema is served without a key, as the file in the tree, and the OpenAPI
 * document's workflow definition points at it. */
static void test_workflow_schema_served(void **state)
{
    (void)state;
    char *body = NULL;
    assert_int_equal(req1("GET", "/v1/schemas/workflow.json", NULL, NULL, &body), 200);
    json_t *served = json_loads(body, 0, NULL);
    free(body);
    char *path = eng_xasprintf("%s/api/workflow.schema.json", th_source_dir());
    json_t *file = json_load_file(path, 0, NULL);
    free(path);
    assert_non_null(served);
    assert_true(json_equal(served, file));
    assert_string_equal(json_string_value(json_object_get(served, "$schema")),
                        "https://json-schema.org/draft/2020-12/schema");
    json_decref(served);
    json_decref(file);
    assert_int_equal(req1("GET", "/v1/openapi.json", NULL, NULL, &body), 200);
    json_t *doc = json_loads(body, 0, NULL);
    free(body);
    json_t *def = json_object_get(json_object_get(json_object_get(doc, "components"), "schemas"),
                                  "WorkflowDefinition");
    assert_string_equal(json_string_value(json_object_get(json_object_get(def, "externalDocs"), "url")),
                        "/v1/schemas/workflow.json");
    json_decref(doc);
}

/* ----------------------------------------------------------------------------- metrics -- */

/* The value of the sample named exactly sample ("name{labels}") in Prometheus text; -1 if absent. */
static double sample(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, name, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

static char *get_metrics(void)
{
    tconn c = tc_open();
    char req[160];
    int n = snprintf(req, sizeof req, "GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s"
                     "\r\n\r\n", admin_key);
    tc_write(&c, req, (size_t)n);
    tresp r;
    assert_true(tc_read(&c, &r));
    assert_int_equal(r.status, 200);
    char ctype[128];
    assert_true(tresp_header(&r, "Content-Type", ctype, sizeof ctype));
    assert_non_null(strstr(ctype, "text/plain; version=0.0.4"));
    char *text = r.body;
    r.body = NULL;
    tresp_free(&r);
    tc_close(&c);
    return text;
}

/* Metrics are the operator's: no key, or another tenant's admin key, gets 401; the metrics
 * token and the operator tenant's admin key get them. */
static void test_metrics_need_operator(void **state)
{
    (void)state;
    assert_int_equal(req1("GET", "/metrics", NULL, NULL, NULL), 401);
    make_tenant("metrics-other", "NULL", "NULL", "other-admin-key-0123456789");
    assert_int_equal(req1("GET", "/metrics", "other-admin-key-0123456789", NULL, NULL), 401);
    assert_int_equal(req1("GET", "/metrics", "wrong-token-0123456789", NULL, NULL), 401);
    setenv("FLOWD_METRICS_TOKEN", "metrics-token-0123456789", 1);
    assert_int_equal(req1("GET", "/metrics", "metrics-token-0123456789", NULL, NULL), 200);
    unsetenv("FLOWD_METRICS_TOKEN");
    assert_int_equal(req1("GET", "/metrics", "metrics-token-0123456789", NULL, NULL), 401);
    assert_int_equal(req1("GET", "/metrics", admin_key, NULL, NULL), 200);
}

static void test_metrics_move_with_work(void **state)
{
    (void)state;
    static const char def[] =
        "{\"steps\": [{\"key\": \"a\", \"kind\": \"transform\", \"input\": {\"n\": \"{{input.n}}\"}},"
        " {\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"], \"input\": {\"m\": 1}}]}";
    assert_int_equal(req1("PUT", "/v1/workflows/metered", admin_key, def, NULL), 201);

    char *before = get_metrics();
    static const char *const families[] = {
        "# TYPE flowd_runs gauge", "# TYPE flowd_steps gauge", "# TYPE flowd_queue_due_steps gauge",
        "# TYPE flowd_build_info gauge", "# TYPE process_cpu_seconds_total counter",
        "# TYPE process_resident_memory_bytes gauge", "# TYPE process_open_fds gauge",
        "# TYPE flowd_db_connections gauge", "# TYPE flowd_db_round_trip_seconds histogram",
        "# TYPE flowd_sse_streams gauge", "# TYPE flowd_llm_tokens_total counter",
        "# TYPE flowd_llm_cost_usd_total counter", "# TYPE flowd_sends_total counter",
        "# TYPE flowd_provider_requests_total counter",
        "# TYPE flowd_rate_limit_waits_total counter",
        "# TYPE flowd_webhook_verification_failures_total counter",
        "# TYPE flowd_step_claims_total counter", "# TYPE flowd_steps_finished_total counter",
        "# TYPE flowd_step_duration_seconds histogram", "# TYPE flowd_provider_errors_total counter",
        "# TYPE flowd_http_requests_total counter"};
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (!strstr(before, families[i]))
            fail_msg("/metrics lacks \"%s\"", families[i]);
    assert_true(sample(before, "flowd_runs{state=\"queued\"}") >= 0); /* zero-filled states */
    /* the state gauges say what is in flight now: finished states are not gauges */
    assert_null(strstr(before, "flowd_runs{state=\"succeeded\"}"));
    assert_null(strstr(before, "flowd_steps{state=\"succeeded\"}"));

    char *run = NULL;
    assert_int_equal(req1("POST", "/v1/runs", admin_key,
                          "{\"workflow\": \"metered\", \"input\": {\"n\": 3}}", &run),
                     201);
    json_t *rj = json_loads(run, 0, NULL);
    free(run);
    long long id = json_integer_value(json_object_get(rj, "id"));
    json_decref(rj);
    assert_true(id > 0);
    char *queued = get_metrics();
    assert_true(sample(queued, "flowd_runs{state=\"queued\"}") ==
                (sample(before, "flowd_runs{state=\"queued\"}") < 0
                     ? 0
                     : sample(before, "flowd_runs{state=\"queued\"}")) + 1);
    assert_true(sample(queued, "flowd_queue_due_steps{workflow=\"metered\"}") == 1);
    assert_true(sample(queued, "flowd_queue_oldest_due_age_seconds{workflow=\"metered\"}") >= 0);
    free(queued);

    th_workers *ws = th_workers_start(db, 1, "ops-metrics", 0, 0, 0);
    char *sql = eng_xasprintf("SELECT state = 'succeeded' FROM runs WHERE id = %lld", id);
    bool done = th_engine_wait(db, sql, 30);
    free(sql);
    th_workers_stop(ws);
    assert_true(done);

    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld", id);
    assert_int_equal(req1("GET", path, admin_key, NULL, NULL), 200);
    eng_metrics_provider_error("test-provider", "http_503");

    char *after = get_metrics();
    static const char *const moved[][2] = {
        {"flowd_runs{state=\"queued\"}", "0"},
        {"flowd_step_claims_total{kind=\"transform\"}", "2"},
        {"flowd_step_start_lag_seconds_count", "2"},
        {"flowd_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/runs\"}", "1"},
        {"flowd_steps_finished_total{kind=\"transform\",outcome=\"ok\"}", "2"},
        {"flowd_step_duration_seconds_count{kind=\"transform\"}", "2"},
        {"flowd_step_duration_seconds_bucket{kind=\"transform\",le=\"+Inf\"}", "2"},
        {"flowd_http_requests_total{method=\"GET\",route=\"/v1/runs/{}\",status=\"200\"}", "1"},
        {"flowd_http_requests_total{method=\"POST\",route=\"/v1/runs\",status=\"201\"}", "1"},
        {"flowd_provider_errors_total{provider=\"test-provider\",code=\"http_503\"}", "1"},
    };
    for (size_t i = 0; i < sizeof moved / sizeof moved[0]; i++) {
        double b = sample(before, moved[i][0]), a = sample(after, moved[i][0]);
        if (a - (b < 0 ? 0 : b) != atof(moved[i][1]))
            fail_msg("%s went from %g to %g, expected +%s", moved[i][0], b, a, moved[i][1]);
    }
    /* the histogram is cumulative: the first bucket never exceeds +Inf */
    assert_true(sample(after, "flowd_step_duration_seconds_bucket{kind=\"transform\",le=\"0.005\"}") <=
                sample(after, "flowd_step_duration_seconds_bucket{kind=\"transform\",le=\"+Inf\"}"));
    free(before);
    free(after);
}

/* --------------------------------------------------------------------------- rate limit -- */

static void test_rate_limit_per_tenant(void **state)
{
    (void)state;
    static const char *const slow_key = "slow-tenant-key-abcdefgh";
    make_tenant("slow", "5", "5", slow_key);
    tconn c = tc_open();
    int ok = 0, limited = 0;
    char retry_after[32] = "";
    for (int i = 0; i < 15; i++) {
        tresp r;
        tc_req(&c, "GET", "/v1/workflows", slow_key, NULL, &r);
        if (r.status == 200) {
            ok++;
        } else {
            assert_int_equal(r.status, 429);
            if (!limited++) {
                assert_true(tresp_header(&r, "Retry-After", retry_after, sizeof retry_after));
                json_t *doc = json_loads(r.body, 0, NULL);
                assert_string_equal(error_code(doc), "rate_limited");
                json_decref(doc);
            }
        }
        tresp_free(&r);
    }
    tc_close(&c);
    /* burst 5, plus at most a token or two refilled at 5/s while the 15 requests run */
    assert_in_range(ok, 5, 7);
    assert_true(limited >= 8);
    assert_true(atoi(retry_after) >= 1);
    /* another tenant is not affected */
    assert_int_equal(req1("GET", "/v1/workflows", admin_key, NULL, NULL), 200);
    /* and the slow tenant gets a token back after a fifth of a second */
    usleep(450 * 1000);
    assert_int_equal(req1("GET", "/v1/workflows", slow_key, NULL, NULL), 200);
}

/* ------------------------------------------------------------------------ bad requests -- */

static void expect_error(const char *method, const char *path, const char *body, int status,
                         const char *code, const char *field)
{
    char *resp = NULL;
    int got = req1(method, path, admin_key, body, &resp);
    json_t *doc = json_loads(resp, 0, NULL);
    if (got != status || !doc)
        fail_msg("%s %s %s: got %d %s", method, path, body, got, resp);
    assert_string_equal(error_code(doc), code);
    if (field)
        assert_string_equal(error_field(doc), field);
    json_decref(doc);
    free(resp);
}

static void test_malformed_and_wrong_types(void **state)
{
    (void)state;
    expect_error("POST", "/v1/runs", "{\"workflow\": ", 400, "invalid_json", NULL);
    expect_error("POST", "/v1/runs", "[1, 2]", 400, "invalid_request", NULL);
    expect_error("POST", "/v1/runs", "{\"workflow\": 5}", 422, "invalid_request", "/workflow");
    expect_error("POST", "/v1/runs", "{\"workflow\": \"w\", \"priority\": \"high\"}", 422,
                 "invalid_request", "/priority");
    expect_error("POST", "/v1/runs", "{\"workflow\": \"w\", \"input\": [1]}", 422,
                 "invalid_request", "/input");
    expect_error("POST", "/v1/runs", "{\"workflow\": \"w\", \"surprise\": 1}", 422,
                 "invalid_request", "/surprise");
    expect_error("POST", "/v1/events", "{\"name\": \"x\", \"key\": {}}", 422, "invalid_request",
                 "/key");
    expect_error("GET", "/v1/nothing-here", NULL, 404, "not_found", NULL);
    expect_error("DELETE", "/v1/runs", NULL, 405, "method_not_allowed", NULL);

    /* wrong media type */
    tconn c = tc_open();
    static const char text_body[] = "POST /v1/runs HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
                                    "test-admin-key-0123456789\r\nContent-Type: text/plain\r\n"
                                    "Content-Length: 2\r\n\r\n{}";
    tc_write(&c, text_body, sizeof text_body - 1);
    tresp r;
    assert_true(tc_read(&c, &r));
    assert_int_equal(r.status, 415);
    tresp_free(&r);
    tc_close(&c);

    /* no key, bad key */
    assert_int_equal(req1("GET", "/v1/workflows", NULL, NULL, NULL), 401);
    assert_int_equal(req1("GET", "/v1/workflows", "nobody-has-this-key", NULL, NULL), 401);
}

/* ----------------------------------------------------------------------- HTTP basics -- */

/* Reads only a response head (a HEAD answer has no body whatever its Content-Length says). */
static bool tc_read_head(tconn *c, tresp *r)
{
    *r = (tresp){0};
    char *end;
    while (!c->buf || !(end = strstr(c->buf, "\r\n\r\n")))
        if (tc_fill(c) <= 0)
            return false;
    size_t hlen = (size_t)(end - c->buf) + 4;
    r->head = eng_xstrndup(c->buf, hlen);
    r->status = atoi(r->head + 9);
    memmove(c->buf, c->buf + hlen, c->len - hlen);
    c->len -= hlen;
    c->buf[c->len] = '\0';
    return true;
}

/* Date on every answer; HEAD wherever GET is, with GET's status and headers and no body. */
static void test_date_and_head(void **state)
{
    (void)state;
    tconn c = tc_open();
    tresp r;
    tc_req(&c, "GET", "/healthz", NULL, NULL, &r);
    char date[64], id[80];
    assert_true(tresp_header(&r, "Date", date, sizeof date));
    struct tm tm = {0};
    const char *rest = strptime(date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!rest || *rest)
        fail_msg("Date is no IMF-fixdate: %s", date);
    assert_true(labs((long)(timegm(&tm) - time(NULL))) <= 2);
    assert_true(tresp_header(&r, "X-Request-Id", id, sizeof id));
    tresp_free(&r);

    const char *method, *pattern;
    size_t gets = 0;
    for (size_t i = 0; api_route_at(i, &method, &pattern); i++) {
        if (strcmp(method, "GET") != 0)
            continue;
        gets++;
        char path[128];
        size_t o = 0;
        for (const char *p = pattern; *p && o + 2 < sizeof path; p++) {
            if (p[0] == '{' && p[1] == '}') {
                path[o++] = '1';
                p++;
            } else {
                path[o++] = *p;
            }
        }
        path[o] = '\0';
        tresp g, h;
        tc_req(&c, "GET", path, admin_key, NULL, &g);
        char *text = req_text("HEAD", path, admin_key, NULL);
        tc_write(&c, text, strlen(text));
        free(text);
        assert_true(tc_read_head(&c, &h));
        if (h.status != g.status)
            fail_msg("HEAD %s: %d, GET: %d", path, h.status, g.status);
        char gt[128] = "", ht[128] = "";
        tresp_header(&g, "Content-Type", gt, sizeof gt);
        tresp_header(&h, "Content-Type", ht, sizeof ht);
        assert_string_equal(gt, ht);
        tresp_free(&g);
        tresp_free(&h);
        /* the next answer on the connection starts right after the HEAD answer's head */
        tc_req(&c, "GET", "/healthz", NULL, NULL, &r);
        assert_int_equal(r.status, 200);
        tresp_free(&r);
    }
    assert_true(gets >= 10);
    tc_close(&c);
}

static void expect_allow(const char *method, const char *path, const char *const *want)
{
    tconn c = tc_open();
    tresp r;
    tc_req(&c, method, path, admin_key, NULL, &r);
    assert_int_equal(r.status, 405);
    char allow[128];
    if (!tresp_header(&r, "Allow", allow, sizeof allow))
        fail_msg("%s %s: 405 without Allow", method, path);
    size_t n = 0;
    for (char *tok = strtok(allow, ", "); tok; tok = strtok(NULL, ", "), n++) {
        size_t k = 0;
        while (want[k] && strcmp(want[k], tok) != 0)
            k++;
        if (!want[k])
            fail_msg("%s %s: Allow has %s", method, path, tok);
    }
    size_t nwant = 0;
    while (want[nwant])
        nwant++;
    assert_int_equal(n, nwant);
    tresp_free(&r);
    tc_close(&c);
}

static void test_allow_ids_and_query(void **state)
{
    (void)state;
    expect_allow("DELETE", "/v1/runs", (const char *const[]){"GET", "HEAD", "POST", NULL});
    expect_allow("PUT", "/v1/runs/1", (const char *const[]){"GET", "HEAD", NULL});
    expect_allow("GET", "/v1/keys/3", (const char *const[]){"DELETE", NULL});
    expect_allow("POST", "/v1/workflows/x", (const char *const[]){"GET", "HEAD", "PUT", NULL});

    /* ids that are no bigint are not found, and no PostgreSQL message comes back */
    static const char *const ids[] = {"99999999999999999999",
                                      "9223372036854775808",
                                      "-1",
                                      "0",
                                      "+5",
                                      "%205",
                                      "5%20",
                                      "abc",
                                      "007",
                                      "1e3"};
    static const char *const shapes[] = {"GET /v1/runs/%s",
                                         "POST /v1/runs/%s/cancel",
                                         "POST /v1/runs/%s/retry",
                                         "GET /v1/runs/%s/events",
                                         "GET /v1/runs/%s/sequencer.csv",
                                         "GET /v1/batches/%s",
                                         "GET /v1/batches/%s/results",
                                         "DELETE /v1/keys/%s"};
    for (size_t s = 0; s < ENG_ARRAY_LEN(shapes); s++)
        for (size_t i = 0; i < ENG_ARRAY_LEN(ids); i++) {
            char line[128], method[16], path[112];
            snprintf(line, sizeof line, shapes[s], ids[i]);
            sscanf(line, "%15s %111s", method, path);
            char *body = NULL;
            int got = req1(method, path, admin_key, strcmp(method, "POST") ? NULL : "{}", &body);
            if (got != 404 || strstr(body, "bigint") || strstr(body, "range") ||
                strstr(body, "syntax"))
                fail_msg("%s %s: %d %s", method, path, got, body);
            free(body);
        }
    assert_int_equal(req1("GET", "/v1/runs/9223372036854775807", admin_key, NULL, NULL), 404);
    /* and so are ids in the query */
    static const char *const queries[] = {
        "/v1/runs?batch=99999999999999999999", "/v1/runs?cursor=99999999999999999999",
        "/v1/workflows/w?version=99999999999", "/v1/workflows/w?version=%205",
        "/v1/outbox?run=99999999999999999999", "/v1/runs/1/events?after=99999999999999999999"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(queries); i++) {
        char *body = NULL;
        int got = req1("GET", queries[i], admin_key, NULL, &body);
        if ((got != 400 && got != 404) || strstr(body, "bigint") || strstr(body, "range") ||
            strstr(body, "integer out"))
            fail_msg("GET %s: %d %s", queries[i], got, body);
        free(body);
    }

    /* a query parameter the route does not read is refused, naming it */
    expect_error("GET", "/v1/workflows?limit=5", NULL, 400, "invalid_request", "?limit");
    expect_error("GET", "/v1/runs?limit=5&colour=red", NULL, 400, "invalid_request", "?colour");
    expect_error("GET", "/v1/runs/1?verbose", NULL, 400, "invalid_request", "?verbose");
    assert_int_equal(req1("GET", "/v1/runs?limit=5&state=succeeded", admin_key, NULL, NULL), 200);
    assert_int_equal(req1("GET", "/healthz?probe=1", NULL, NULL, NULL), 400);
}

static void test_oversized_body(void **state)
{
    (void)state;
    size_t n = MAX_BODY + 100;
    char *big = eng_xmalloc(n + 1);
    memset(big, ' ', n);
    big[0] = '{';
    big[n - 1] = '}';
    big[n] = '\0';
    char *resp = NULL;
    assert_int_equal(req1("POST", "/v1/runs", admin_key, big, &resp), 413);
    json_t *doc = json_loads(resp, 0, NULL);
    assert_non_null(doc);
    assert_non_null(error_code(doc));
    json_decref(doc);
    free(resp);
    free(big);
}

/* ---------------------------------------------------------------------------- the wire -- */

static void test_slow_headers_are_cut_off(void **state)
{
    (void)state;
    tconn c = tc_open();
    long long t0 = th_now_ms();
    static const char head[] = "GET /healthz HTTP/1.1\r\nHost: t\r\n";
    tc_write(&c, head, sizeof head - 1);
    /* one header line every 100 ms: each byte keeps the socket busy, none finishes the head */
    bool closed = false;
    for (int i = 0; i < 40 && !closed; i++) {
        usleep(100 * 1000);
        if (send(c.fd, "X-Slow: 1\r\n", 11, MSG_NOSIGNAL) < 0) {
            closed = true;
            break;
        }
        char buf[512];
        ssize_t got = recv(c.fd, buf, sizeof buf - 1, MSG_DONTWAIT);
        if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
            closed = true;
        } else if (got > 0) {
            buf[got] = '\0';
            assert_null(strstr(buf, " 200 ")); /* an error answer (408) may precede the close */
        }
    }
    long long took = th_now_ms() - t0;
    assert_true(closed);
    /* header timeout 0.5 s; the close must come well before the 4 s of dribbling end */
    assert_true(took >= 400);
    assert_true(took < 2500);
    tc_close(&c);
}

static long long post_run(const char *workflow)
{
    char *body = eng_xasprintf("{\"workflow\": \"%s\", \"input\": {\"n\": 1}}", workflow);
    char *resp = NULL;
    assert_int_equal(req1("POST", "/v1/runs", admin_key, body, &resp), 201);
    json_t *doc = json_loads(resp, 0, NULL);
    long long id = json_integer_value(json_object_get(doc, "id"));
    json_decref(doc);
    free(resp);
    free(body);
    return id;
}

static long long body_id(const tresp *r)
{
    json_t *doc = json_loads(r->body, 0, NULL);
    long long id = json_integer_value(json_object_get(doc, "id"));
    json_decref(doc);
    return id;
}

static void test_pipelined_and_half_closed(void **state)
{
    (void)state;
    assert_int_equal(req1("PUT", "/v1/workflows/piped", admin_key,
                          "{\"steps\": [{\"key\": \"a\", \"kind\": \"transform\"}]}", NULL),
                     201);
    long long a = post_run("piped"), b = post_run("piped");

    char pa[64], pb[64];
    snprintf(pa, sizeof pa, "/v1/runs/%lld", a);
    snprintf(pb, sizeof pb, "/v1/runs/%lld", b);
    char *q1 = req_text("GET", pa, admin_key, NULL), *q2 = req_text("GET", pb, admin_key, NULL),
         *q3 = req_text("GET", "/v1/runs/999999999", admin_key, NULL);
    char *all = eng_xasprintf("%s%s%s", q1, q2, q3);
    tconn c = tc_open();
    tc_write(&c, all, strlen(all)); /* three requests, one write */
    tresp r;
    assert_true(tc_read(&c, &r));
    assert_int_equal(r.status, 200);
    assert_int_equal(body_id(&r), a);
    tresp_free(&r);
    assert_true(tc_read(&c, &r));
    assert_int_equal(r.status, 200);
    assert_int_equal(body_id(&r), b);
    tresp_free(&r);
    assert_true(tc_read(&c, &r));
    assert_int_equal(r.status, 404);
    tresp_free(&r);
    tc_close(&c);

    /* half-closed: the request, then our write side shut; the answer still comes, then EOF */
    c = tc_open();
    tc_write(&c, q1, strlen(q1));
    assert_int_equal(shutdown(c.fd, SHUT_WR), 0);
    assert_true(tc_read(&c, &r));
    assert_int_equal(r.status, 200);
    assert_int_equal(body_id(&r), a);
    tresp_free(&r);
    assert_int_equal(tc_fill(&c), 0);
    tc_close(&c);

    free(q1);
    free(q2);
    free(q3);
    free(all);
}

/* Fairness (tenants.max_running), which the claim enforces (flowd_claim_work,
 * sql/work.sql), is tested in test_fairness.c. */

int main(void)
{
    eng_mem_init();
    eng_log_init();
    eng_step_register_builtins();
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openapi_matches_routes),
        cmocka_unit_test(test_workflow_schema_served),
        cmocka_unit_test(test_metrics_need_operator),
        cmocka_unit_test(test_metrics_move_with_work),
        cmocka_unit_test(test_rate_limit_per_tenant),
        cmocka_unit_test(test_malformed_and_wrong_types),
        cmocka_unit_test(test_date_and_head),
        cmocka_unit_test(test_allow_ids_and_query),
        cmocka_unit_test(test_oversized_body),
        cmocka_unit_test(test_slow_headers_are_cut_off),
        cmocka_unit_test(test_pipelined_and_half_closed),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
