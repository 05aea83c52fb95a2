/* tests/integration/test_read_standby.c: the API's polls read from a streaming standby.
 *
 * The test starts a primary and a streaming standby of its own (pg_basebackup, as test_failover)
 * and two API services in this process on the primary, both given the standby for their reads:
 * A with a lag bound of a minute, B with 0.3 s; each stands for one flowd process (its own fences
 * and probes). Replay on the standby is paused (pg_wal_replay_pause) to make it lag on demand:
 * - A poll is answered by the standby (the counters say so, and the standby shows the API's read
 *   connections); with replay paused a change made behind A's back (SQL on the primary) is not
 *   in A's answer, which only the standby can give.
 * - Read-your-writes: a run created and cancelled through A is read back cancelled from A at once,
 *   replay paused or not; a run created through B is found through A (not on the standby: asked
 *   again on the primary).
 * - The lag bound: B answers every poll sent 0.3 s after a commit with that commit in it.
 * - The standby stopped: polls still answer, from the primary; started again, it answers again.
 * - A live event stream takes its pages from the standby. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "engine/metrics.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_engine.h"

static const char hello_def[] = "{\"name\": \"hello\", \"steps\": [{\"key\": \"say\","
                                " \"kind\": \"transform\", \"input\": {\"text\": \"hi\"}}]}";

static unsigned long long reads(const char *server, const char *reason)
{
    char labels[96];
    snprintf(labels, sizeof labels, "server=\"%s\",reason=\"%s\"", server, reason);
    return (unsigned long long)eng_metrics_value("flowd_api_reads_total", labels);
}

static unsigned long long standby_reads(void)
{
    return reads("standby", "current") + reads("standby", "waited");
}

/* GET /v1/runs/{id}: the run's state (caller frees). */
static char *run_state(th_api *a, long long id)
{
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld", id);
    json_t *run = th_api_json(a, 200, "GET", path, NULL);
    char *state = eng_xstrdup(json_string_value(json_object_get(run, "state")));
    json_decref(run);
    return state;
}

static bool run_state_is(th_api *a, long long id, const char *want)
{
    char *state = run_state(a, id);
    bool is = strcmp(state, want) == 0;
    free(state);
    return is;
}

/* Polls run id through a until the standby has answered once more (the first polls may wait
 * for it to catch up with the tenant's writes, or go to the primary on a slow machine). */
static bool standby_answers(th_api *a, long long id)
{
    unsigned long long before = standby_reads();
    for (int i = 0; i < 500; i++) {
        free(run_state(a, id));
        if (standby_reads() > before)
            return true;
        th_sleep_ms(10);
    }
    return false;
}

/* A run's live event stream, read to its end. */
typedef struct sse_arg {
    th_api *api;
    long long run;
    th_resp r;
} sse_arg;

static void *sse_thread(void *arg)
{
    sse_arg *s = arg;
    CURL *h = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "%s/v1/runs/%lld/events", th_api_url(s->api), s->run);
    struct curl_slist *hl = curl_slist_append(NULL, "Authorization: Bearer " TH_API_KEY);
    hl = curl_slist_append(hl, "Accept: text/event-stream");
    s->r.body = eng_xstrdup("");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, th_resp_collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s->r);
    curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &s->r.status);
    curl_slist_free_all(hl);
    curl_easy_cleanup(h);
    return NULL;
}

static void test_polls_read_the_standby(void **state)
{
    (void)state;
    th_cluster *primary = th_cluster_start();
    assert_non_null(primary);
    long long tenant;
    char *db_p = th_engine_db_at(primary->dir, "standby_reads", &tenant);
    th_cluster *standby = th_cluster_standby(primary);
    assert_non_null(standby);
    const char *dbname = strstr(db_p, "dbname=") + 7;
    char *db_s = eng_xasprintf("host=%s dbname=%.*s user=postgres", standby->dir,
                               (int)strcspn(dbname, " "), dbname);
    th_api *a = th_api_start(&(th_api_opts){
        .conninfo = db_p, .no_workers = true, .read_conninfo = db_s, .read_max_lag_s = 60});
    th_api *b = th_api_start(&(th_api_opts){
        .conninfo = db_p, .no_workers = true, .read_conninfo = db_s, .read_max_lag_s = 0.3});
    json_decref(th_api_json(a, 201, "PUT", "/v1/workflows/hello", hello_def));
    long long wf = th_pg_longf(db_p, "SELECT id FROM workflows WHERE name = 'hello'");

    /* POST then GET at once: the run is there, and soon the standby answers */
    long long r3 = th_api_start_run(a, "hello", "{}");
    long long r1 = th_api_start_run(a, "hello", "{}");
    assert_true(run_state_is(a, r1, "queued"));
    assert_true(standby_answers(a, r1));
    assert_true(th_pg_long(db_s, "SELECT count(*) FROM pg_stat_activity"
                                 " WHERE application_name = 'flowd-api-read'") >= 1);
    assert_true(standby_answers(b, r1)); /* B knows the standby fresh too */

    /* replay paused: a change behind A's back is not in A's answer, which is the standby's */
    free(th_pg_value(db_s, "SELECT pg_wal_replay_pause()"));
    free(th_pg_valuef(db_p, "SELECT flowd_cancel_run(%lld, %lld)", tenant, r1));
    long long t_commit = th_now_ms();
    unsigned long long before = standby_reads();
    assert_true(run_state_is(a, r1, "queued"));
    assert_int_equal(standby_reads(), before + 1);

    /* a run created by another process is found: not on the standby, so on the primary */
    unsigned long long missing = reads("primary", "missing");
    PGconn *pc = th_pgc_open(db_p);
    long long r2 = th_pgc_enqueue(pc, tenant, wf, "{}");
    PQfinish(pc);
    assert_true(run_state_is(a, r2, "queued"));
    assert_int_equal(reads("primary", "missing"), missing + 1);

    /* read-your-writes with the standby stuck: A's own cancel is in A's next answer */
    unsigned long long behind = reads("primary", "behind");
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld/cancel", r3);
    json_decref(th_api_json(a, 200, "POST", path, NULL));
    assert_true(run_state_is(a, r3, "cancelled"));
    assert_true(reads("primary", "behind") > behind);
    json_t *page = th_api_json(a, 200, "GET", "/v1/runs?state=cancelled", NULL);
    bool listed = false;
    json_t *run;
    size_t k;
    json_array_foreach (json_object_get(page, "runs"), k, run)
        listed |= json_integer_value(json_object_get(run, "id")) == r3;
    json_decref(page);
    assert_true(listed);

    /* B's lag bound (0.3 s): a poll sent that long after the commit has it, standby stuck or not */
    unsigned long long lag = reads("primary", "lag");
    bool seen = false;
    for (int i = 0; i < 1000 && (!seen || th_now_ms() < t_commit + 600); i++) {
        long long sent = th_now_ms();
        char *st = run_state(b, r1);
        seen = strcmp(st, "cancelled") == 0;
        if (sent >= t_commit + 300 && !seen)
            fail_msg("a poll sent %lld ms after the commit answered %s", sent - t_commit, st);
        free(st);
        th_sleep_ms(20);
    }
    assert_true(seen);
    /* the first polls past the bound wait for B's probe ("behind"); once the probe has waited
     * out the bound itself, polls go to the primary without waiting ("lag") */
    for (int i = 0; i < 500 && reads("primary", "lag") == lag; i++) {
        assert_true(run_state_is(b, r1, "cancelled"));
        th_sleep_ms(10);
    }
    assert_true(reads("primary", "lag") > lag);

    /* replay resumed: A's standby catches up and answers with the change */
    free(th_pg_value(db_s, "SELECT pg_wal_replay_resume()"));
    bool caught_up = false;
    for (int i = 0; i < 500 && !caught_up; i++) {
        caught_up = run_state_is(a, r1, "cancelled");
        th_sleep_ms(10);
    }
    assert_true(caught_up);
    assert_true(standby_answers(a, r1));

    /* a live event stream takes its pages from the standby too (the process's feed polls it) */
    long long r4 = th_api_start_run(a, "hello", "{}");
    sse_arg live = {.api = a, .run = r4};
    pthread_t th;
    pthread_create(&th, NULL, sse_thread, &live);
    before = standby_reads();
    for (int i = 0; i < 500 && standby_reads() < before + 3; i++)
        th_sleep_ms(10);
    assert_true(standby_reads() >= before + 3);
    snprintf(path, sizeof path, "/v1/runs/%lld/cancel", r4);
    json_decref(th_api_json(a, 200, "POST", path, NULL));
    pthread_join(th, NULL); /* the stream ends with the run */
    assert_int_equal(live.r.status, 200);
    assert_non_null(strstr(live.r.body, "event: run.created\n"));
    assert_non_null(strstr(live.r.body, "event: run.cancelled\n"));
    free(live.r.body);

    /* the standby stopped: every poll still answers (the primary does) */
    unsigned long long primary_before = reads("primary", "down") + reads("primary", "error");
    assert_int_equal(th_cluster_ctl(standby, "stop"), 0);
    for (int i = 0; i < 20; i++)
        assert_true(run_state_is(a, r1, "cancelled"));
    assert_true(reads("primary", "down") + reads("primary", "error") > primary_before);
    long status;
    free(th_api_raw(a, "GET", "/readyz", NULL, &status));
    assert_int_equal(status, 200);
    /* back: its connections come back by themselves, and so do the reads */
    assert_int_equal(th_cluster_ctl(standby, "start"), 0);
    assert_true(standby_answers(a, r1));

    print_message("standby reads: current %llu, waited %llu; primary: missing %llu, behind %llu, "
                  "lag %llu, down %llu, error %llu\n",
                  reads("standby", "current"), reads("standby", "waited"),
                  reads("primary", "missing"), reads("primary", "behind"), reads("primary", "lag"),
                  reads("primary", "down"), reads("primary", "error"));
    th_api_stop(a);
    th_api_stop(b);
    free(db_s);
    free(db_p);
    assert_int_equal(th_cluster_stop(standby), 0);
    assert_int_equal(th_cluster_stop(primary), 0);
}

/* A read database that is not in recovery (here the primary itself) is not used for reads. */
static void test_read_database_not_a_standby(void **state)
{
    th_cluster *c = *state;
    char *db = th_engine_db_at(c->dir, "not_standby", NULL);
    th_api *a = th_api_start(&(th_api_opts){
        .conninfo = db, .no_workers = true, .read_conninfo = db, .read_max_lag_s = 1});
    json_decref(th_api_json(a, 201, "PUT", "/v1/workflows/hello", hello_def));
    long long r = th_api_start_run(a, "hello", "{}");
    unsigned long long before = reads("primary", "not_standby");
    for (int i = 0; i < 5; i++)
        assert_true(run_state_is(a, r, "queued"));
    assert_true(reads("primary", "not_standby") > before);
    th_api_stop(a);
    free(db);
}

int main(void)
{
    th_api_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_polls_read_the_standby),
        cmocka_unit_test_setup_teardown(test_read_database_not_a_standby, th_cluster_setup,
                                        th_cluster_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
