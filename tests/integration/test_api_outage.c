/* tests/integration/test_api_outage.c: the API while its database is unreachable.
 *
 * On a private cluster the test stops: requests are answered 503 with Retry-After at once (not
 * held for the outage, nor dropped without an answer), with no driver text in the body; /healthz
 * (liveness) stays 200 while /readyz follows the database; nothing a client was refused runs when
 * the database returns; the outage is one log line and its end another. A statement withdrawn
 * before it was sent (its client went away) never runs. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <curl/curl.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api.h"
#include "engine/db.h"
#include "engine/mem.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_engine.h"

typedef struct answer {
    long status;
    char headers[2048];
    th_resp body;
    long long ms;
} answer;

static size_t on_header(char *p, size_t sz, size_t n, void *arg)
{
    answer *a = arg;
    size_t len = strlen(a->headers);
    snprintf(a->headers + len, sizeof a->headers - len, "%.*s", (int)(sz * n), p);
    return sz * n;
}

static answer *ask(int port, const char *method, const char *path, const char *body)
{
    answer *a = eng_xcalloc(1, sizeof *a);
    a->body.body = eng_xstrdup("");
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    CURL *e = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Authorization: Bearer " TH_API_KEY);
    h = curl_slist_append(h, "Content-Type: application/json");
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    if (body)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, th_resp_collect);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &a->body);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, a);
    long long t0 = th_now_ms();
    if (curl_easy_perform(e) == CURLE_OK)
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &a->status);
    a->ms = th_now_ms() - t0;
    curl_easy_cleanup(e);
    curl_slist_free_all(h);
    return a;
}

static void answer_free(answer *a)
{
    free(a->body.body);
    free(a);
}

static int count_lines(const char *log, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(log, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void test_outage(void **state)
{
    th_cluster *c = *state;
    long long tenant;
    char *db = th_engine_db_at(c->dir, "api_outage", &tenant);
    char path[] = "/tmp/flowd-outage-log-XXXXXX";
    int logfd = mkstemp(path);
    assert_true(logfd >= 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(2);
    dup2(logfd, 2);

    eng_err err;
    api_service *svc = api_service_start(
        &(api_service_opts){.conninfo = db, .listen = "127.0.0.1:0", .threads = 1}, &err);
    assert_non_null(svc);
    int port = api_service_port(svc);
    answer *a = ask(port, "PUT", "/v1/workflows/hello",
                    "{\"steps\": [{\"key\": \"s\", \"kind\": \"transform\", \"input\": {}}]}");
    assert_int_equal(a->status, 201);
    answer_free(a);
    a = ask(port, "GET", "/readyz", NULL);
    assert_int_equal(a->status, 200);
    answer_free(a);

    assert_int_equal(th_cluster_ctl(c, "stop"), 0);
    for (int i = 0; i < 6; i++) {
        a = ask(port, "POST", "/v1/runs", "{\"workflow\": \"hello\", \"input\": {}}");
        if (a->status != 503 || a->ms > 2000 || !strstr(a->headers, "Retry-After: "))
            fail_msg("POST /v1/runs during the outage: %ld after %lld ms\n%s%s", a->status, a->ms,
                     a->headers, a->body.body);
        if (strstr(a->body.body, "FATAL") || strstr(a->body.body, "server closed") ||
            strstr(a->body.body, "connection"))
            fail_msg("driver text in the answer: %s", a->body.body);
        answer_free(a);
        a = ask(port, "GET", "/healthz", NULL);
        assert_int_equal(a->status, 200);
        answer_free(a);
        a = ask(port, "GET", "/readyz", NULL);
        assert_int_equal(a->status, 503);
        answer_free(a);
        usleep(300000);
    }
    assert_int_equal(th_cluster_ctl(c, "start"), 0);
    long long end = th_now_ms() + 20000;
    long ready = 0;
    while (ready != 200 && th_now_ms() < end) {
        a = ask(port, "GET", "/readyz", NULL);
        ready = a->status;
        answer_free(a);
        if (ready != 200)
            usleep(100000);
    }
    assert_int_equal(ready, 200);
    usleep(500000); /* anything held back would run now */
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs"), 0);
    a = ask(port, "POST", "/v1/runs", "{\"workflow\": \"hello\", \"input\": {}}");
    assert_int_equal(a->status, 201);
    answer_free(a);
    api_service_stop(svc);

    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    off_t n = lseek(logfd, 0, SEEK_END);
    char *log = eng_xcalloc(1, (size_t)n + 1);
    assert_int_equal(pread(logfd, log, (size_t)n, 0), n);
    close(logfd);
    if (count_lines(log, "msg=\"database unreachable\"") != 1 ||
        count_lines(log, "msg=\"database reachable again\"") != 1 ||
        count_lines(log, "msg=\"database connection lost\"") != 0)
        fail_msg("an outage is one line and its end another; the log was:\n%s", log);
    free(log);
    free(db);
}

/* ---- a statement withdrawn before it was sent ---- */

typedef struct outcome {
    int calls;
    eng_rc rc;
} outcome;

static void record(void *arg, const eng_err *err, const PGresult *res)
{
    (void)res;
    outcome *o = arg;
    o->calls++;
    o->rc = err ? err->rc : ENG_OK;
}

static void test_withdrawn_statement(void **state)
{
    th_cluster *c = *state;
    char *db = th_engine_db_at(c->dir, "api_withdrawn", NULL);
    th_pg_long(db, "CREATE TABLE withdrawn_probe (x int); SELECT 1");
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    eng_db *conn = eng_db_new(loop, &(eng_db_opts){.conninfo = db});
    outcome slow = {0}, gone = {0}, after = {0};
    eng_db_query(conn, "SELECT pg_sleep(0.2)", 0, NULL, record, &slow);
    eng_db_op *op = eng_db_query(conn, "INSERT INTO withdrawn_probe VALUES (1)", 0, NULL, record,
                                 &gone);
    eng_db_query(conn, "INSERT INTO withdrawn_probe VALUES (2)", 0, NULL, record, &after);
    eng_db_cancel(op);
    long long end = th_now_ms() + 10000;
    while (after.calls == 0 && th_now_ms() < end)
        ev_run(loop, EVRUN_ONCE);
    assert_int_equal(slow.calls, 1);
    assert_int_equal(gone.calls, 1);
    assert_int_equal(gone.rc, ENG_ECANCELED);
    assert_int_equal(after.calls, 1);
    assert_int_equal(after.rc, ENG_OK);
    eng_db_free(conn);
    ev_loop_destroy(loop);
    char *rows = th_pg_value(db, "SELECT string_agg(x::text, ',') FROM withdrawn_probe");
    assert_string_equal(rows, "2");
    free(rows);
    free(db);
}


int main(void)
{
    th_api_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_withdrawn_statement),
        cmocka_unit_test(test_outage),
    };
    return cmocka_run_group_tests(tests, th_cluster_setup, th_cluster_teardown);
}
