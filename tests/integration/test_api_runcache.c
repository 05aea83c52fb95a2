/* tests/integration/test_api_runcache.c: GET /v1/runs/{id} is served from the API loop's run cache
 * (api/runcache.h) only while the run is unchanged. Every test changes a run from outside the API
 * (in-process workers, SQL on another connection: cancel, retry, events, silent updates that log no
 * run event, map item progress) and then polls: the answer must equal flowd_run_json read on a
 * separate connection after the change committed.
 *
 * The service has one loop thread, so every poll meets the same cache, and two database
 * connections, so polls of one run overtake each other. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_engine.h"

#define ADMIN_KEY "fd_test_key_not_secret" /* th_engine_db's default tenant (admin) */
#define OTHER_KEY "fd_runcache_other_tenant_key"

static th_api *api; /* one API loop thread, no workers (the tests run their own) */
static const char *db;
static long long tenant;
static PGconn *pg; /* the "outside" connection: changes and the truth */

static const char one_step_def[] =
    "{\"name\": \"rc_one\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\","
    " \"input\": {\"n\": \"{{input.n}}\"}}]}";
static const char wait_def[] =
    "{\"name\": \"rc_wait\", \"steps\": ["
    " {\"key\": \"w\", \"kind\": \"wait_event\","
    "  \"input\": {\"event\": \"rc.replied\", \"key\": \"{{input.lead}}\", \"timeout\": \"2h\"}},"
    " {\"key\": \"thank\", \"kind\": \"transform\", \"needs\": [\"w\"],"
    "  \"input\": {\"reply\": \"{{steps.w.output.text}}\"}}]}";
static const char keyed_def[] =
    "{\"name\": \"rc_keyed\", \"steps\": [{\"key\": \"reply\", \"kind\": \"transform\","
    " \"concurrency_key\": \"cust-{{input.c}}\", \"input\": {\"c\": \"{{input.c}}\"}}]}";
static const char map_def[] =
    "{\"name\": \"rc_map\", \"steps\": ["
    " {\"key\": \"m\", \"kind\": \"map\", \"input\": {\"items\": \"{{input.items}}\","
    "  \"concurrency\": 10, \"step\": {\"kind\": \"transform\", \"input\": {\"i\": \"{{index}}\"}}}}]}";

/* ------------------------------------------------------------------------------ client -- */

typedef th_resp resp;

/* GET /v1/runs/{run} with key on handle h (reused for keep-alive). */
static resp get_run(CURL *h, long long run, const char *key)
{
    resp r = {0, eng_xstrdup(""), 0};
    char url[128], auth[128];
    snprintf(url, sizeof url, "%s/v1/runs/%lld", th_api_url(api), run);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
    struct curl_slist *hl = curl_slist_append(NULL, auth);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, th_resp_collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
    CURLcode rc = curl_easy_perform(h);
    if (rc != CURLE_OK)
        fail_msg("GET run %lld: %s", run, curl_easy_strerror(rc));
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(hl);
    return r;
}

static CURL *client;

/* The run as the API answers it now (new reference); the answer must be 200 JSON. */
static json_t *poll_run(long long run)
{
    resp r = get_run(client, run, ADMIN_KEY);
    if (r.status != 200)
        fail_msg("GET run %lld: %ld %s", run, r.status, r.body);
    json_t *j = json_loads(r.body, 0, NULL);
    if (!j)
        fail_msg("not JSON: %s", r.body);
    free(r.body);
    return j;
}

/* Polls the run and asserts the answer is what the database holds now (read after the poll, on
 * another connection): callers make sure nothing changes the run meanwhile. Returns the answer. */
static json_t *expect_fresh(long long run)
{
    json_t *got = poll_run(run);
    char *truth_s = th_pgc_str(pg, "SELECT flowd_run_json($1, $2)",
                               TH_P(th_num(tenant).s, th_num(run).s));
    json_t *truth = json_loads(truth_s, 0, NULL);
    assert_non_null(truth);
    if (!json_equal(got, truth)) {
        char *g = json_dumps(got, JSON_COMPACT);
        fail_msg("stale poll of run %lld:\n  got  %s\n  want %s", run, g, truth_s);
    }
    free(truth_s);
    json_decref(truth);
    return got;
}

static const char *jstr(const json_t *o, const char *name)
{
    return json_string_value(json_object_get(o, name));
}

static const char *step_state(const json_t *run, size_t i)
{
    return jstr(json_array_get(json_object_get(run, "steps"), i), "state");
}

static long long enqueue(const char *def, const char *input)
{
    long long wf = th_engine_register(db, tenant, def);
    return th_pgc_enqueue(pg, tenant, wf, input);
}

static void wait_sql(const char *sql, long long run)
{
    if (!th_pgc_wait(pg, sql, TH_P(th_num(run).s), 30))
        fail_msg("timed out waiting for run %lld: %s", run, sql);
}

static void wait_run_state(long long run, const char *state)
{
    char *sql = eng_xasprintf("SELECT state = '%s' FROM runs WHERE id = $1", state);
    wait_sql(sql, run);
    free(sql);
}

/* ------------------------------------------------------------------------------- tests -- */

/* Queued, polled (and cached), then worked to the end by workers: the poll shows the result. */
static void test_worker_finishing_a_step(void **state)
{
    (void)state;
    long long run = enqueue(one_step_def, "{\"n\": 7}");
    json_t *j = expect_fresh(run);
    assert_string_equal(jstr(j, "state"), "queued");
    json_decref(j);
    json_decref(expect_fresh(run)); /* now from the cache */
    th_workers *ws = th_workers_start(db, 1, "rc-finish", 0, 0, 0);
    wait_run_state(run, "succeeded");
    th_workers_stop(ws);
    j = expect_fresh(run);
    assert_string_equal(jstr(j, "state"), "succeeded");
    assert_string_equal(step_state(j, 0), "succeeded");
    json_decref(j);
    json_decref(expect_fresh(run));
}

/* A wait resumed by an event; another run cancelled and then retried, all from SQL. */
static void test_event_cancel_retry(void **state)
{
    (void)state;
    long long resumed = enqueue(wait_def, "{\"lead\": \"rc-1\"}");
    long long cancelled = enqueue(wait_def, "{\"lead\": \"rc-2\"}");
    th_workers *ws = th_workers_start(db, 1, "rc-wait", 0, 0, 0);
    const char *waiting = "SELECT state = 'waiting' FROM steps WHERE run_id = $1 AND key = 'w'";
    wait_sql(waiting, resumed);
    wait_sql(waiting, cancelled);
    json_t *j = expect_fresh(resumed);
    assert_string_equal(step_state(j, 0), "waiting");
    json_decref(j);
    json_decref(expect_fresh(resumed));

    th_pgc_expect(pg, "1",
                  "SELECT resumed FROM flowd_event($1, 'rc.replied', 'rc-1', '{\"text\": \"ok\"}')",
                  TH_P(th_num(tenant).s));
    wait_run_state(resumed, "succeeded");
    j = expect_fresh(resumed);
    assert_string_equal(step_state(j, 1), "succeeded");
    json_decref(j);

    json_decref(expect_fresh(cancelled));
    json_decref(expect_fresh(cancelled));
    free(th_pgc_str(pg, "SELECT flowd_cancel_run($1, $2)",
                    TH_P(th_num(tenant).s, th_num(cancelled).s)));
    j = expect_fresh(cancelled);
    assert_string_equal(jstr(j, "state"), "cancelled");
    json_decref(j);
    th_workers_stop(ws); /* the retried run must stay put while its answer is compared */
    th_pgc_ll(pg, "SELECT flowd_retry_run($1, $2)", TH_P(th_num(tenant).s, th_num(cancelled).s));
    j = expect_fresh(cancelled);
    assert_string_not_equal(jstr(j, "state"), "cancelled");
    assert_string_equal(step_state(j, 0), "ready");
    json_decref(j);
}

/* Changes that log no run event (a snooze moves run_at; priorities) are seen all the same. */
static void test_changes_without_events(void **state)
{
    (void)state;
    long long run = enqueue(one_step_def, "{\"n\": 1}");
    json_decref(expect_fresh(run));
    long long events = th_pgc_ll(pg, "SELECT count(*) FROM run_log WHERE run_id = $1",
                                 TH_P(th_num(run).s));
    th_pgc_str(pg, "UPDATE steps SET run_at = run_at + interval '1 hour' WHERE run_id = $1",
               TH_P(th_num(run).s));
    json_decref(expect_fresh(run));
    th_pgc_str(pg, "UPDATE runs SET priority = 9 WHERE id = $1", TH_P(th_num(run).s));
    json_t *j = expect_fresh(run);
    assert_int_equal(json_integer_value(json_object_get(j, "priority")), 9);
    json_decref(j);
    assert_int_equal(th_pgc_ll(pg, "SELECT count(*) FROM run_log WHERE run_id = $1",
                               TH_P(th_num(run).s)),
                     events);
}

typedef struct hammer {
    long long run;
    atomic_bool stop;
    long polls;
} hammer;

static void *hammer_main(void *arg)
{
    hammer *hm = arg;
    CURL *h = curl_easy_init();
    while (!atomic_load(&hm->stop)) {
        resp r = get_run(h, hm->run, ADMIN_KEY);
        if (r.status != 200) { /* cmocka's fail_msg belongs to the main thread */
            fprintf(stderr, "hammer: %ld %s\n", r.status, r.body);
            abort();
        }
        free(r.body);
        hm->polls++;
    }
    curl_easy_cleanup(h);
    return NULL;
}

/* Polls racing each other on the loop's two connections while the run keeps changing: each
 * change, once committed, is in the next poll, whatever the racing polls put in the cache. */
static void test_racing_polls(void **state)
{
    (void)state;
    long long run = enqueue(one_step_def, "{\"n\": 2}");
    hammer hm = {.run = run};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, hammer_main, &hm);
    for (int k = 1; k <= 200; k++) {
        th_pgc_str(pg, "UPDATE runs SET priority = $2 WHERE id = $1",
                   TH_P(th_num(run).s, th_num(k).s));
        json_t *j = poll_run(run);
        if (json_integer_value(json_object_get(j, "priority")) != k)
            fail_msg("after priority %d committed the poll said %lld", k,
                     (long long)json_integer_value(json_object_get(j, "priority")));
        json_decref(j);
    }
    atomic_store(&hm.stop, true);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    assert_true(hm.polls > 0);
}

/* A cached run is still 404 for another tenant's key, and stays 200 for its own. */
static void test_other_tenant(void **state)
{
    (void)state;
    long long run = enqueue(one_step_def, "{\"n\": 3}");
    json_decref(expect_fresh(run));
    json_decref(expect_fresh(run));
    resp r = get_run(client, run, OTHER_KEY);
    assert_int_equal(r.status, 404);
    free(r.body);
    json_decref(expect_fresh(run));
}

/* A map step's item counts live in map_items; changing only them changes the answer. */
static void test_map_items(void **state)
{
    (void)state;
    long long run = enqueue(map_def, "{\"items\": [1, 2, 3]}");
    json_decref(expect_fresh(run));
    th_workers *ws = th_workers_start(db, 1, "rc-map", 0, 0, 0);
    wait_run_state(run, "succeeded");
    th_workers_stop(ws);
    json_t *j = expect_fresh(run);
    json_t *items = json_object_get(json_array_get(json_object_get(j, "steps"), 0), "items");
    assert_int_equal(json_integer_value(json_object_get(items, "succeeded")), 3);
    json_decref(j);
    th_pgc_str(pg,
               "UPDATE map_items SET state = 'failed' WHERE idx = 0 AND step_id ="
               " (SELECT id FROM steps WHERE run_id = $1)",
               TH_P(th_num(run).s));
    j = expect_fresh(run);
    items = json_object_get(json_array_get(json_object_get(j, "steps"), 0), "items");
    assert_int_equal(json_integer_value(json_object_get(items, "failed")), 1);
    json_decref(j);
}

/* The claim of this test's worker (a PL/pgSQL block: flowd_work returns a set): reports outcome
 * (a JSON array, or NULL) and claims up to want steps; the claimed steps' ids, "|"-separated. */
static char *work(const char *outcome, int want)
{
    return th_pgc_str(pg,
                      "SELECT coalesce(string_agg(c.id::text, '|' ORDER BY c.id), '')"
                      " FROM flowd_work('rc-keyed', $1::jsonb, $2::integer, 60000) c",
                      TH_P(outcome, th_num(want).s));
}

static const json_t *ckey_of(const json_t *run)
{
    return json_object_get(json_array_get(json_object_get(run, "steps"), 0), "concurrency_key");
}

static const json_t *behind_of(const json_t *run)
{
    return json_object_get(ckey_of(run), "queued_behind");
}

/* A step with a concurrency key shows the step it queued behind, as that step is now: its state
 * changes (claimed, finished) change the waiting run's answer although none of the waiting run's
 * rows changed, and its finish is when the key came free. A first step of its key, and a step
 * whose key was free when it was created, queue behind none. */
static void test_concurrency_key_queued_behind(void **state)
{
    (void)state;
    /* what earlier tests left ready would be claimed too */
    th_pgc_ll(pg,
              "SELECT count(flowd_cancel_run($1, id)) FROM runs"
              " WHERE tenant_id = $1 AND state IN ('queued', 'running')",
              TH_P(th_num(tenant).s));
    long long first = enqueue(keyed_def, "{\"c\": \"k1\"}");
    long long second = enqueue(keyed_def, "{\"c\": \"k1\"}");
    long long other = enqueue(keyed_def, "{\"c\": \"k2\"}");
    json_t *j = expect_fresh(first);
    assert_string_equal(jstr(ckey_of(j), "key"), "cust-k1");
    assert_true(json_is_null(behind_of(j)));
    json_decref(j);
    json_decref(expect_fresh(other));
    j = expect_fresh(second);
    assert_string_equal(jstr(ckey_of(j), "key"), "cust-k1");
    assert_int_equal(json_integer_value(json_object_get(behind_of(j), "run")), first);
    assert_string_equal(jstr(behind_of(j), "step"), "reply");
    assert_string_equal(jstr(behind_of(j), "state"), "ready");
    assert_true(json_is_null(json_object_get(behind_of(j), "finished_at")));
    json_decref(j);
    json_decref(expect_fresh(second)); /* cached */

    /* the claim takes the first and the other key's step, not the second: its key is held */
    char *claimed = work(NULL, 10);
    char *want = th_pgc_str(pg,
                            "SELECT string_agg(id::text, '|' ORDER BY id) FROM steps"
                            " WHERE run_id IN ($1, $2)",
                            TH_P(th_num(first).s, th_num(other).s));
    assert_string_equal(claimed, want);
    free(want);
    j = expect_fresh(second);
    assert_string_equal(jstr(behind_of(j), "state"), "running");
    assert_string_equal(step_state(j, 0), "ready");
    json_decref(j);

    char *done = th_pgc_str(pg,
                            "SELECT jsonb_agg(jsonb_build_object('id', id, 'r', run_id, 's', 'ok'))"
                            " FROM steps WHERE run_id IN ($1, $2)",
                            TH_P(th_num(first).s, th_num(other).s));
    free(claimed);
    claimed = work(done, 0);
    free(done);
    j = expect_fresh(second);
    assert_string_equal(jstr(behind_of(j), "state"), "succeeded");
    char *finished = th_pgc_str(pg, "SELECT flowd_ms(finished_at) FROM steps WHERE run_id = $1",
                                TH_P(th_num(first).s));
    assert_string_equal(jstr(behind_of(j), "finished_at"), finished);
    json_decref(j);
    free(claimed);
    claimed = work(NULL, 10); /* the key is free: now the second is claimed */
    char *second_step = th_pgc_str(pg, "SELECT id::text FROM steps WHERE run_id = $1",
                                   TH_P(th_num(second).s));
    assert_string_equal(claimed, second_step);
    j = expect_fresh(second);
    assert_true(strcmp(jstr(json_array_get(json_object_get(j, "steps"), 0), "started_at"),
                       finished) >= 0);
    json_decref(j);
    free(finished);
    free(claimed);
    done = eng_xasprintf("[{\"id\": %s, \"r\": %lld, \"s\": \"ok\"}]", second_step, second);
    free(work(done, 0));
    free(done);
    free(second_step);

    /* created while its key was free: behind none, though earlier steps of its key exist */
    long long later = enqueue(keyed_def, "{\"c\": \"k2\"}");
    j = expect_fresh(later);
    assert_true(json_is_null(behind_of(j)));
    json_decref(j);
}

/* ------------------------------------------------------------------------------- setup -- */

static int group_setup(void **state)
{
    (void)state;
    api = th_api_start(&(th_api_opts){.prefix = "api_runcache", .no_workers = true, .threads = 1});
    db = th_api_db(api);
    pg = th_pgc_open(db);
    tenant = th_pgc_ll(pg, "SELECT id FROM tenants WHERE name = 'default'", 0, NULL);
    th_pgc_str(pg,
               "WITH t AS (INSERT INTO tenants (name) VALUES ('rc-other') RETURNING id)"
               " INSERT INTO api_keys (tenant_id, key_hash, prefix, role)"
               " SELECT id, sha256(convert_to($1, 'UTF8')), left($1, 8), 'member' FROM t",
               TH_P(OTHER_KEY));
    th_pgc_str(pg, "UPDATE tenants SET rate_per_s = 1e6, rate_burst = 1000000", 0, NULL);
    client = curl_easy_init();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    curl_easy_cleanup(client);
    PQfinish(pg);
    th_api_stop(api);
    return 0;
}

int main(void)
{
    th_api_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_worker_finishing_a_step),
        cmocka_unit_test(test_event_cancel_retry),
        cmocka_unit_test(test_changes_without_events),
        cmocka_unit_test(test_racing_polls),
        cmocka_unit_test(test_other_tenant),
        cmocka_unit_test(test_map_items),
        cmocka_unit_test(test_concurrency_key_queued_behind),
    };
    int rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
