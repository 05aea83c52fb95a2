/* tests/integration/test_http_step.c: the `http` kind end to end against th_mockhttp: request
 * shape, output shape (JSON parsed, text kept), expect lists, and the retry classes shared with
 * the providers (retryable statuses honour Retry-After, others fail at once). */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "engine/wf_def.h"
#include "steps/provider.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"
#include "tests/support/th_mockhttp.h"

/* What the server saw and how it answers: shared with the server thread under mu. */
typedef struct srv {
    pthread_mutex_t mu;
    int fail_first;        /* answer this many requests with fail_status */
    int fail_status;
    const char *retry_after;
    int seen;
    long long at_ms[16];
    char method[16], target[128], auth[128], ctype[64], body[256];
} srv;

static void handler(void *arg, const th_mock_req *req, th_mock_resp *r)
{
    srv *s = arg;
    pthread_mutex_lock(&s->mu);
    if (s->seen < 16)
        s->at_ms[s->seen] = th_now_ms();
    int n = ++s->seen;
    snprintf(s->method, sizeof s->method, "%s", req->method);
    snprintf(s->target, sizeof s->target, "%s", req->target);
    const char *a = th_mock_req_header(req, "authorization");
    const char *ct = th_mock_req_header(req, "content-type");
    snprintf(s->auth, sizeof s->auth, "%s", a ? a : "");
    snprintf(s->ctype, sizeof s->ctype, "%s", ct ? ct : "");
    snprintf(s->body, sizeof s->body, "%s", req->body);
    bool fail = n <= s->fail_first;
    int status = s->fail_status;
    const char *ra = s->retry_after;
    pthread_mutex_unlock(&s->mu);
    if (fail) {
        th_mock_resp_status(r, status);
        if (ra)
            th_mock_resp_header(r, "Retry-After", "%s", ra);
        th_mock_resp_bodyf(r, "busy");
        return;
    }
    if (strncmp(req->target, "/text", 5) == 0) {
        th_mock_resp_status(r, 201);
        th_mock_resp_header(r, "Content-Type", "text/plain");
        th_mock_resp_bodyf(r, "plain words");
        return;
    }
    th_mock_resp_header(r, "Content-Type", "application/json; charset=utf-8");
    th_mock_resp_header(r, "X-Trace", "t-1");
    th_mock_resp_bodyf(r, "{\"ok\": true, \"n\": %d}", n);
}

static int wf_n;

/* Runs one http step with input and returns its row {state, attempts, output, error}. */
static json_t *run_http(const char *db, long long tenant, const char *input)
{
    char *def = eng_xasprintf("{\"name\": \"h%d\", \"steps\": [{\"key\": \"call\", \"kind\": "
                              "\"http\", \"retry\": {\"backoff\": {\"initial\": \"50ms\"}, "
                              "\"jitter\": 0}, \"input\": %s}]}",
                              ++wf_n, input);
    long long wf = th_engine_register(db, tenant, def);
    free(def);
    th_engine_enqueue(db, tenant, wf, 1, NULL, 0);
    th_workers *ws = th_workers_start(db, 1, "http", 0, 0, 0);
    char *sql = eng_xasprintf("SELECT count(*) = 1 FROM runs WHERE workflow_id = %lld AND state IN"
                              " ('succeeded', 'failed')",
                              wf);
    bool done = th_engine_wait(db, sql, 30);
    free(sql);
    th_workers_stop(ws);
    assert_true(done);
    sql = eng_xasprintf("SELECT jsonb_build_object('state', s.state, 'attempts', s.attempts,"
                        " 'output', s.output, 'error', s.error)::text FROM steps s JOIN runs r"
                        " ON r.id = s.run_id WHERE r.workflow_id = %lld",
                        wf);
    char *v = th_pg_value(db, sql);
    free(sql);
    json_t *j = json_loads(v, 0, NULL);
    free(v);
    assert_non_null(j);
    return j;
}

static const char *state_of(const json_t *row)
{
    return json_string_value(json_object_get(row, "state"));
}

static void test_http_step(void **state)
{
    (void)state;
    srv s = {.mu = PTHREAD_MUTEX_INITIALIZER};
    th_mock *m = th_mock_start(handler, &s);
    long long tenant;
    char *db = th_engine_db("http_step", &tenant);

    /* request and output shape: JSON body sent as JSON, JSON answer parsed */
    char *in = eng_xasprintf("{\"method\": \"POST\", \"url\": \"%s/hook?x=1\", \"headers\": "
                             "{\"Authorization\": \"Bearer tok-123456\"}, \"body\": {\"a\": 1}}",
                             th_mock_url(m));
    json_t *row = run_http(db, tenant, in);
    free(in);
    assert_string_equal(state_of(row), "succeeded");
    json_t *out = json_object_get(row, "output");
    assert_int_equal(json_integer_value(json_object_get(out, "status")), 200);
    assert_true(json_is_true(json_object_get(json_object_get(out, "body"), "ok")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(out, "headers"),
                                                          "x-trace")),
                        "t-1");
    pthread_mutex_lock(&s.mu);
    assert_string_equal(s.method, "POST");
    assert_string_equal(s.target, "/hook?x=1");
    assert_string_equal(s.auth, "Bearer tok-123456");
    assert_string_equal(s.ctype, "application/json");
    assert_string_equal(s.body, "{\"a\":1}");
    pthread_mutex_unlock(&s.mu);
    json_decref(row);

    /* a text answer stays text; expect accepts 201 */
    in = eng_xasprintf("{\"method\": \"GET\", \"url\": \"%s/text\", \"expect\": [201]}",
                       th_mock_url(m));
    row = run_http(db, tenant, in);
    free(in);
    assert_string_equal(state_of(row), "succeeded");
    assert_string_equal(json_string_value(json_object_get(json_object_get(row, "output"), "body")),
                        "plain words");
    json_decref(row);

    /* a 2xx outside expect fails for good */
    in = eng_xasprintf("{\"method\": \"GET\", \"url\": \"%s/text\", \"expect\": [200]}",
                       th_mock_url(m));
    row = run_http(db, tenant, in);
    free(in);
    assert_string_equal(state_of(row), "failed");
    assert_int_equal(json_integer_value(json_object_get(row, "attempts")), 1);
    json_decref(row);

    /* 503 with Retry-After: 1 is retried no sooner than a second later */
    pthread_mutex_lock(&s.mu);
    s.seen = 0;
    s.fail_first = 1;
    s.fail_status = 503;
    s.retry_after = "1";
    pthread_mutex_unlock(&s.mu);
    in = eng_xasprintf("{\"method\": \"GET\", \"url\": \"%s/r\"}", th_mock_url(m));
    row = run_http(db, tenant, in);
    assert_string_equal(state_of(row), "succeeded");
    assert_int_equal(json_integer_value(json_object_get(row, "attempts")), 2);
    pthread_mutex_lock(&s.mu);
    assert_true(s.at_ms[1] - s.at_ms[0] >= 950);
    pthread_mutex_unlock(&s.mu);
    json_decref(row);

    /* 429 and 408 retried; 404 and 400 fail at once */
    const struct {
        int status;
        bool retried;
    } cases[] = {{429, true}, {408, true}, {404, false}, {400, false}};
    for (size_t i = 0; i < ENG_ARRAY_LEN(cases); i++) {
        pthread_mutex_lock(&s.mu);
        s.seen = 0;
        s.fail_first = 1;
        s.fail_status = cases[i].status;
        s.retry_after = NULL;
        pthread_mutex_unlock(&s.mu);
        row = run_http(db, tenant, in);
        assert_string_equal(state_of(row), cases[i].retried ? "succeeded" : "failed");
        assert_int_equal(json_integer_value(json_object_get(row, "attempts")),
                         cases[i].retried ? 2 : 1);
        if (!cases[i].retried) {
            char code[16];
            snprintf(code, sizeof code, "http_%d", cases[i].status);
            assert_string_equal(json_string_value(json_object_get(json_object_get(row, "error"),
                                                                  "code")),
                                code);
        }
        json_decref(row);
    }
    free(in);

    /* nothing listening: connect errors are retried until attempts run out */
    row = run_http(db, tenant, "{\"method\": \"GET\", \"url\": \"http://127.0.0.1:9/x\"}");
    assert_string_equal(state_of(row), "failed");
    assert_int_equal(json_integer_value(json_object_get(row, "attempts")), 3);
    assert_string_equal(json_string_value(json_object_get(json_object_get(row, "error"), "code")),
                        "connect_error");
    json_decref(row);
    th_mock_stop(m);
    free(db);
}

/* Without the operator's allowance, a tenant's target on loopback is refused after resolution
 * (by address and by a name resolving to it) and nothing reaches it; the step fails at once. */
static void test_private_targets(void **state)
{
    (void)state;
    srv s = {.mu = PTHREAD_MUTEX_INITIALIZER};
    th_mock *m = th_mock_start(handler, &s);
    long long tenant;
    char *db = th_engine_db("http_private", &tenant);
    prov_allow_private_targets(false);
    const char *hosts[] = {"127.0.0.1", "localhost"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(hosts); i++) {
        char *in = eng_xasprintf("{\"method\": \"GET\", \"url\": \"http://%s:%d/admin\"}",
                                 hosts[i], th_mock_port(m));
        json_t *row = run_http(db, tenant, in);
        free(in);
        assert_string_equal(state_of(row), "failed");
        assert_int_equal(json_integer_value(json_object_get(row, "attempts")), 1);
        json_t *e = json_object_get(row, "error");
        assert_string_equal(json_string_value(json_object_get(e, "code")), "address_not_allowed");
        assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "loopback"));
        json_decref(row);
    }
    /* a provider's base URL is the tenant's choice only when the tenant set it */
    prov_config *env_cfg = prov_config_from_env(PROV_OPENAI);
    json_t *ts = json_pack("{s:s, s:s}", "base_url", "http://127.0.0.1:9/v1", "api_key", "k-1234");
    prov_config *ten_cfg = prov_config_merge(PROV_OPENAI, ts);
    assert_false(prov_public_only(env_cfg));
    assert_true(prov_public_only(ten_cfg));
    prov_allow_private_targets(true);
    assert_false(prov_public_only(ten_cfg));
    prov_config_free(env_cfg);
    prov_config_free(ten_cfg);
    json_decref(ts);
    pthread_mutex_lock(&s.mu);
    assert_int_equal(s.seen, 0);
    pthread_mutex_unlock(&s.mu);
    /* allowed by the operator (the test harness sets FLOWD_ALLOW_PRIVATE_TARGETS): it is reached */
    char *in = eng_xasprintf("{\"method\": \"GET\", \"url\": \"%s/admin\"}", th_mock_url(m));
    json_t *row = run_http(db, tenant, in);
    free(in);
    assert_string_equal(state_of(row), "succeeded");
    json_decref(row);
    th_mock_stop(m);
    free(db);
}

static void test_http_validation(void **state)
{
    (void)state;
    th_expect_step_invalid("http", "{\"url\": \"http://x\"}", "/steps/0/input/method");
    th_expect_step_invalid("http", "{\"method\": \"FETCH\", \"url\": \"http://x\"}",
                           "/steps/0/input/method");
    th_expect_step_invalid("http", "{\"method\": \"GET\", \"url\": \"ftp://x\"}",
                           "/steps/0/input/url");
    th_expect_step_invalid("http",
                           "{\"method\": \"GET\", \"url\": \"http://x\", \"headers\": {\"A\": 1}}",
                           "/steps/0/input/headers/A");
    th_expect_step_invalid("http", "{\"method\": \"GET\", \"url\": \"http://x\", \"expect\": [99]}",
                           "/steps/0/input/expect/0");
    th_expect_step_invalid("http", "\"GET\"", "/steps/0/input");
}

int main(void)
{
    eng_mem_init();
    eng_log_init();
    eng_httpc_global_init();
    eng_step_register_builtins();
    step_register_all();
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_validation),
        cmocka_unit_test(test_http_step),
        cmocka_unit_test(test_private_targets),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    eng_httpc_global_cleanup();
    return rc;
}
