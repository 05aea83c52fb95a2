/* tests/integration/test_quotas.c: a tenant's runs_per_month, also for runs that events and
 * schedules start.
 *
 * The bound under concurrency: two processes enqueue at once through the statement the API sends
 * (flowd_start_run), 80 runs wanted against a limit of 40; exactly 40 are created, since taking
 * from the quota and creating the runs are one transaction that holds the quota's row. Then the
 * API: 429 quota_exceeded with the quota, limit, used and reset time in the body and headers; a
 * batch that does not fit creates nothing; a raised quota lets runs in at once; a new month starts
 * from zero; a tenant cannot set its own quotas. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/mem.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_engine.h"

enum { LIMIT = 40, PER_PROCESS = 40 };

typedef struct hdrs {
    char text[4096];
    size_t len;
} hdrs;

static size_t hdr_collect(char *p, size_t sz, size_t n, void *arg)
{
    hdrs *h = arg;
    size_t len = sz * n;
    if (h->len + len < sizeof h->text) {
        memcpy(h->text + h->len, p, len);
        h->len += len;
        h->text[h->len] = '\0';
    }
    return len;
}

/* One request with key; returns the body (caller frees), the status and the headers. */
static char *req(th_api *a, const char *key, const char *method, const char *path,
                 const char *body, long *status, hdrs *h)
{
    CURL *c = curl_easy_init();
    char *url = eng_xasprintf("%s%s", th_api_url(a), path);
    char *auth = eng_xasprintf("Authorization: Bearer %s", key);
    struct curl_slist *hl = curl_slist_append(NULL, auth);
    hl = curl_slist_append(hl, "Content-Type: application/json");
    th_resp r = {.body = eng_xstrdup("")};
    memset(h, 0, sizeof *h);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, th_resp_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, hdr_collect);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, h);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    free(url);
    free(auth);
    return r.body;
}

static bool has_header(const hdrs *h, const char *line)
{
    for (const char *p = h->text; (p = strcasestr(p, line)); p++)
        if (p == h->text || p[-1] == '\n')
            return true;
    return false;
}

/* A child process: PER_PROCESS runs one at a time through flowd_start_run; exits with how many
 * were created (the others must have been refused with FL429). */
static void enqueuer(const char *db, long long tenant)
{
    PGconn *c = PQconnectdb(db);
    if (PQstatus(c) != CONNECTION_OK)
        _exit(255);
    char t[24];
    snprintf(t, sizeof t, "%lld", tenant);
    int created = 0;
    for (int i = 0; i < PER_PROCESS; i++) {
        const char *params[] = {t};
        PGresult *r = PQexecParams(c,
                                   "SELECT created FROM flowd_start_run($1, 'q', NULL, '{}', 0,"
                                   " NULL, NULL, NULL, NULL, NULL)",
                                   1, NULL, params, NULL, NULL, 0);
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (PQresultStatus(r) == PGRES_TUPLES_OK)
            created++;
        else if (!state || strcmp(state, "FL429") != 0)
            _exit(254);
        PQclear(r);
    }
    PQfinish(c);
    _exit(created);
}

static json_int_t jget(const json_t *j, const char *a, const char *b)
{
    return json_integer_value(json_object_get(json_object_get(j, a), b));
}

static void test_runs_per_month(void **state)
{
    (void)state;
    th_api *a = th_api_start(&(th_api_opts){.prefix = "quotas", .no_workers = true});
    const char *db = th_api_db(a);
    long long tenant = th_pg_long(db, "SELECT id FROM tenants WHERE name = 'default'");
    long status;
    hdrs h;
    free(req(a, TH_API_KEY, "PUT", "/v1/workflows/q",
             "{\"steps\": [{\"key\": \"t\", \"kind\": \"transform\", \"input\": {}}]}", &status,
             &h));
    assert_int_equal(status, 201);

    json_t *q = th_api_json(a, 200, "GET", "/v1/tenants/default/quotas", NULL);
    assert_true(json_is_null(json_object_get(q, "runs_per_month")));
    json_decref(q);
    q = th_api_json(a, 200, "PUT", "/v1/tenants/default/quotas", "{\"runs_per_month\": 40}");
    assert_int_equal(jget(q, "runs_per_month", "limit"), LIMIT);
    assert_int_equal(jget(q, "runs_per_month", "used"), 0);
    json_decref(q);

    /* two processes, 80 runs wanted, 40 allowed */
    pid_t pids[2];
    for (int i = 0; i < 2; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0)
            enqueuer(db, tenant);
    }
    int created = 0;
    for (int i = 0; i < 2; i++) {
        int st;
        assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
        assert_true(WIFEXITED(st));
        assert_true(WEXITSTATUS(st) <= PER_PROCESS);
        created += WEXITSTATUS(st);
    }
    print_message("quota 40: the two processes created %d runs\n", created);
    assert_int_equal(created, LIMIT);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs"), LIMIT);

    /* the API's refusal names everything, in the body and the headers */
    char *body = req(a, TH_API_KEY, "POST", "/v1/runs", "{\"workflow\": \"q\"}", &status, &h);
    assert_int_equal(status, 429);
    json_t *doc = json_loads(body, 0, NULL);
    json_t *e = json_object_get(doc, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "quota_exceeded");
    assert_string_equal(json_string_value(json_object_get(e, "quota")), "runs_per_month");
    assert_int_equal(json_integer_value(json_object_get(e, "limit")), LIMIT);
    assert_int_equal(json_integer_value(json_object_get(e, "used")), LIMIT);
    assert_non_null(json_string_value(json_object_get(e, "resets_at")));
    json_decref(doc);
    free(body);
    assert_true(has_header(&h, "X-Quota-Name: runs_per_month"));
    assert_true(has_header(&h, "X-Quota-Limit: 40"));
    assert_true(has_header(&h, "X-Quota-Used: 40"));
    assert_true(has_header(&h, "X-Quota-Reset: "));
    assert_true(has_header(&h, "Retry-After: "));

    /* raised by one: one run fits, a batch of two does not and creates nothing */
    json_decref(th_api_json(a, 200, "PUT", "/v1/tenants/default/quotas", "{\"runs_per_month\": 41}"));
    free(req(a, TH_API_KEY, "POST", "/v1/batches",
             "{\"workflow\": \"q\", \"inputs\": [{}, {}]}", &status, &h));
    assert_int_equal(status, 429);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM batches"), 0);
    free(req(a, TH_API_KEY, "POST", "/v1/runs", "{\"workflow\": \"q\"}", &status, &h));
    assert_int_equal(status, 201);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs"), LIMIT + 1);

    /* next month (engine clock) starts from zero */
    assert_int_equal(th_pg_long(db,
                                "WITH u AS (UPDATE flowd_clock SET offset_ms = (extract(epoch FROM"
                                " date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month'"
                                " + interval '1 hour' - (now() AT TIME ZONE 'UTC')) * 1000)::bigint"
                                " RETURNING 1) SELECT count(*) FROM u"),
                     1);
    free(req(a, TH_API_KEY, "POST", "/v1/runs", "{\"workflow\": \"q\"}", &status, &h));
    assert_int_equal(status, 201);
    q = th_api_json(a, 200, "GET", "/v1/tenants/default/quotas", NULL);
    assert_int_equal(jget(q, "runs_per_month", "used"), 1);
    json_decref(q);

    /* bad input, unknown tenants, and a tenant's own key */
    q = th_api_json(a, 422, "PUT", "/v1/tenants/default/quotas", "{\"runs_per_month\": -1}");
    assert_string_equal(json_string_value(json_object_get(json_object_get(q, "error"), "field")),
                        "/runs_per_month");
    json_decref(q);
    json_decref(th_api_json(a, 404, "PUT", "/v1/tenants/nobody/quotas", "{\"runs_per_month\": 1}"));
    json_decref(th_api_json(a, 201, "POST", "/v1/tenants", "{\"name\": \"acme\"}"));
    json_t *acme = th_api_json(a, 201, "POST", "/v1/keys", "{\"tenant\": \"acme\", \"role\": \"admin\"}");
    const char *acme_key = json_string_value(json_object_get(acme, "key"));
    assert_non_null(acme_key);
    free(req(a, acme_key, "PUT", "/v1/tenants/acme/quotas", "{\"runs_per_month\": 1000}", &status,
             &h));
    assert_int_equal(status, 404);
    free(req(a, acme_key, "GET", "/v1/tenants/acme/quotas", NULL, &status, &h));
    assert_int_equal(status, 200);
    json_decref(th_api_json(a, 200, "PUT", "/v1/tenants/acme/quotas", "{\"runs_per_month\": 0}"));
    free(req(a, acme_key, "PUT", "/v1/workflows/q",
             "{\"steps\": [{\"key\": \"t\", \"kind\": \"transform\", \"input\": {}}]}", &status,
             &h));
    free(req(a, acme_key, "POST", "/v1/runs", "{\"workflow\": \"q\"}", &status, &h));
    assert_int_equal(status, 429);
    json_decref(acme);

    /* the command line sets and shows them through the API */
    char *url = eng_xasprintf("FLOWD_URL=%s", th_api_url(a));
    const char *const env[] = {url, "FLOWD_API_KEY=" TH_API_KEY, NULL};
    const char *const set[] = {"flowd", "quotas", "acme", "--runs-per-month", "7", NULL};
    char *out = NULL, *err = NULL;
    assert_int_equal(th_flowd_run(set, env, &out, &err), 0);
    free(out);
    free(err);
    const char *const show[] = {"flowd", "quotas", "acme", "--json", NULL};
    assert_int_equal(th_flowd_run(show, env, &out, &err), 0);
    json_t *shown = json_loads(out, 0, NULL);
    assert_int_equal(jget(shown, "runs_per_month", "limit"), 7);
    json_decref(shown);
    free(out);
    free(err);
    const char *const bad[] = {"flowd", "quotas", "acme", "--runs-per-month", "-3", NULL};
    assert_int_not_equal(th_flowd_run(bad, env, &out, &err), 0);
    assert_non_null(strstr(err, "--runs-per-month"));
    free(out);
    free(err);
    free(url);
    th_api_stop(a);
}

/* Runs not created through /v1/runs or /v1/batches: an event's triggered runs and a schedule's
 * count too (an event without room is refused whole, unless a provider's webhook told it: then
 * only its runs are left out; a tick without room is skipped with the reason quota); a map's
 * children are part of their parent's run and do not. */
static void test_runs_started_elsewhere(void **state)
{
    (void)state;
    th_api *a = th_api_start(&(th_api_opts){.prefix = "quotas_else"});
    const char *db = th_api_db(a);
    json_decref(th_api_json(a, 201, "PUT", "/v1/workflows/t",
                            "{\"steps\": [{\"key\": \"t\", \"kind\": \"transform\","
                            " \"input\": {}}]}"));
    json_decref(th_api_json(a, 201, "PUT", "/v1/workflows/on_lead",
                            "{\"triggers\": [{\"event\": \"lead.new\"}], \"steps\": [{\"key\": \"t\","
                            " \"kind\": \"transform\", \"input\": {}}]}"));
    json_decref(th_api_json(a, 201, "PUT", "/v1/workflows/hold",
                            "{\"steps\": [{\"key\": \"w\", \"kind\": \"wait_event\","
                            " \"input\": {\"event\": \"lead.new\", \"key\": \"2\"}}]}"));
    json_decref(th_api_json(a, 201, "PUT", "/v1/workflows/fan",
                            "{\"steps\": [{\"key\": \"m\", \"kind\": \"map\", \"input\": {"
                            "\"items\": [1, 2, 3], \"workflow\": \"t\"}}]}"));
    json_decref(th_api_json(a, 200, "PUT", "/v1/tenants/default/quotas", "{\"runs_per_month\": 4}"));

    /* a map of three children is one run */
    json_t *run = th_api_wait_run(a, th_api_start_run(a, "fan", "{}"), 20, 60, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    json_decref(run);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs WHERE parent_step_id IS NOT NULL"), 3);
    th_api_start_run(a, "hold", "{}");
    json_t *q = th_api_json(a, 200, "GET", "/v1/tenants/default/quotas", NULL);
    assert_int_equal(jget(q, "runs_per_month", "used"), 2);
    json_decref(q);

    /* an event's triggered run counts */
    json_t *ev = th_api_json(a, 202, "POST", "/v1/events", "{\"name\": \"lead.new\", \"key\": \"1\"}");
    assert_int_equal(json_integer_value(json_object_get(ev, "started")), 1);
    json_decref(ev);

    /* a schedule's tick counts; the next one finds no room and is skipped, with the reason */
    json_decref(th_api_json(a, 201, "PUT", "/v1/schedules/hourly",
                            "{\"workflow\": \"t\", \"every\": \"1h\"}"));
    free(th_pg_value(db, "SELECT flowd_clock_advance_to_next_due()"));
    assert_true(th_engine_wait(db, "SELECT fires = 1 FROM schedules", 20));
    q = th_api_json(a, 200, "GET", "/v1/tenants/default/quotas", NULL);
    assert_int_equal(jget(q, "runs_per_month", "used"), 4);
    json_decref(q);
    free(th_pg_value(db, "SELECT flowd_clock_advance_to_next_due()"));
    assert_true(th_engine_wait(db, "SELECT skips = 1 FROM schedules", 20));
    json_t *sch = th_api_json(a, 200, "GET", "/v1/schedules/hourly", NULL);
    const json_t *skip = json_object_get(sch, "last_skip");
    assert_string_equal(json_string_value(json_object_get(skip, "reason")), "quota");
    assert_string_equal(json_string_value(json_object_get(skip, "quota")), "runs_per_month");
    json_decref(sch);
    assert_int_equal(th_pg_long(db, "SELECT fires FROM schedules"), 1);
    char *metrics = th_api_raw(a, "GET", "/metrics", NULL, &(long){0});
    assert_non_null(strstr(metrics, "flowd_schedule_skips_total{reason=\"quota\"} 1\n"));
    free(metrics);
    long status;
    hdrs h;
    free(req(a, TH_API_KEY, "POST", "/v1/schedules/hourly/trigger", NULL, &status, &h));
    assert_int_equal(status, 429);

    /* an event that would start a run without room is refused whole: not stored, the wait it
     * would resume still waits */
    long events = th_pg_long(db, "SELECT count(*) FROM events");
    char *body = req(a, TH_API_KEY, "POST", "/v1/events",
                     "{\"name\": \"lead.new\", \"key\": \"2\"}", &status, &h);
    assert_int_equal(status, 429);
    assert_non_null(strstr(body, "\"quota_exceeded\""));
    free(body);
    assert_true(has_header(&h, "X-Quota-Name: runs_per_month"));
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM events"), events);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM steps WHERE kind = 'wait_event'"
                                    " AND state = 'waiting'"),
                     1);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs WHERE parent_step_id IS NULL"), 4);

    /* the same event told by a provider's webhook (an inbound message: it happened) is applied
     * without the run it would start */
    assert_int_equal(th_pg_long(db, "SELECT resumed * 10 + started FROM flowd_event((SELECT id"
                                    " FROM tenants WHERE name = 'default'), 'lead.new', '2', '{}')"),
                     10);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs WHERE parent_step_id IS NULL"), 4);
    th_api_stop(a);
}

int main(void)
{
    th_api_init();
    step_register_all();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_runs_per_month),
        cmocka_unit_test(test_runs_started_elsewhere),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
