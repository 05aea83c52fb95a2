/* tests/integration/test_api_enqueue.c: what one enqueue writes (flowd_create_runs, 0012), through
 * POST /v1/runs and POST /v1/batches: runs in input order, every step with its needs, dependents,
 * delay, rendered concurrency key and sending-window placement, rendered cancel_on entries, and the
 * event log in its order (the run.created rows of the call, then its step.scheduled rows, so a
 * reader meets a run before its steps). The other expectations are what 0002's flowd_create_runs
 * wrote, row order included (step ids break ties in the claim order). */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/mem.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"

static th_api *api; /* no workers: the rows stay as the enqueue wrote them */
static PGconn *pg;

/* w waits for a window that is closed today (its only day is tomorrow, UTC); a and b are a chain
 * after a delay with a concurrency key; cancel_on renders the lead. */
static char *def_json(void)
{
    static const char *const days[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    return eng_xasprintf(
        "{\"steps\": ["
        " {\"key\": \"w\", \"kind\": \"transform\", \"input\": {},"
        "  \"window\": {\"start\": \"09:00\", \"end\": \"10:00\", \"days\": [\"%s\"], \"tz\": \"UTC\"}},"
        " {\"key\": \"a\", \"kind\": \"transform\", \"input\": {}, \"delay\": \"5m\","
        "  \"concurrency_key\": \"lead-{{input.lead}}\"},"
        " {\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\", \"w\"], \"input\": {}}],"
        " \"cancel_on\": [{\"event\": \"lead.replied\", \"key\": \"{{input.lead}}\"}]}",
        days[(tm.tm_wday + 1) % 7]);
}

static void expect_rows(const char *expected, const char *sql, const char *arg)
{
    th_pgc_expect(pg, expected, sql, TH_P(arg));
}

static void test_batch_rows(void **state)
{
    (void)state;
    char *def = def_json();
    json_decref(th_api_json(api, 201, "PUT", "/v1/workflows/enq", def));
    free(def);
    /* the middle input has no lead: no concurrency key, no cancel_on entry */
    json_t *b = th_api_json(api, 201, "POST", "/v1/batches",
                            "{\"workflow\": \"enq\", \"inputs\": [{\"lead\": \"x\", \"n\": 1},"
                            " {\"n\": 2}, {\"lead\": \"z\", \"n\": 3}]}");
    char batch[24];
    snprintf(batch, sizeof batch, "%lld", (long long)json_integer_value(json_object_get(b, "id")));
    json_decref(b);

    expect_rows("1,2,3", "SELECT string_agg(input->>'n', ',' ORDER BY id) FROM runs WHERE batch_id = $1",
                batch);
    expect_rows("3", "SELECT min(steps_total) FROM runs WHERE batch_id = $1", batch);
    /* in id order, a step of every run (in run order), then the next step:
     * key state needs_left dependents delay_ms ckey scheduled */
    expect_rows("w ready 0 {2} 0 - t|w ready 0 {2} 0 - t|w ready 0 {2} 0 - t|"
                "a ready 0 {2} 300000 lead-x f|a ready 0 {2} 300000 - f|a ready 0 {2} 300000 lead-z f|"
                "b pending 2 {} 0 - f|b pending 2 {} 0 - f|b pending 2 {} 0 - f",
                "SELECT string_agg(concat_ws(' ', s.key, s.state, s.needs_left, s.dependents,"
                "       s.delay_ms, coalesce(s.ckey, '-'), s.scheduled), '|' ORDER BY s.id)"
                "  FROM steps s JOIN runs r ON r.id = s.run_id WHERE r.batch_id = $1",
                batch);
    expect_rows("t", "SELECT bool_and(s.idx = (SELECT count(*) FROM steps o WHERE o.run_id = s.run_id"
                     " AND o.id < s.id)) FROM steps s JOIN runs r ON r.id = s.run_id"
                     " WHERE r.batch_id = $1",
                batch);
    /* a waits its delay from creation; ready steps are ready from creation; w waits for its window */
    expect_rows("t", "SELECT bool_and(s.run_at = r.created_at + interval '5 minutes')"
                     " FROM steps s JOIN runs r ON r.id = s.run_id WHERE r.batch_id = $1 AND s.key = 'a'",
                batch);
    expect_rows("t", "SELECT bool_and(s.ready_at = r.created_at) FILTER (WHERE s.state = 'ready')"
                     " AND bool_and(s.ready_at IS NULL) FILTER (WHERE s.state = 'pending')"
                     " FROM steps s JOIN runs r ON r.id = s.run_id WHERE r.batch_id = $1",
                batch);
    expect_rows("t", "SELECT bool_and(s.run_at > r.created_at AND extract(hour FROM s.run_at AT TIME"
                     " ZONE 'UTC') = 9 AND s.send_window->>'tz' = 'UTC')"
                     " FROM steps s JOIN runs r ON r.id = s.run_id WHERE r.batch_id = $1 AND s.key = 'w'",
                batch);
    expect_rows("lead.replied:x,lead.replied:z",
                "SELECT string_agg(c.event || ':' || c.key, ',' ORDER BY c.run_id) FROM run_cancel_on c"
                " JOIN runs r ON r.id = c.run_id WHERE r.batch_id = $1",
                batch);
    /* the call's events: a run.created per run (run order), then a step.scheduled per run */
    expect_rows("run.created:1:-,run.created:2:-,run.created:3:-,"
                "step.scheduled:1:w,step.scheduled:2:w,step.scheduled:3:w",
                "SELECT string_agg(e.type || ':' || (r.input->>'n') || ':' || coalesce(e.step_key, '-'),"
                "       ',' ORDER BY e.id)"
                "  FROM run_log e JOIN runs r ON r.id = e.run_id WHERE r.batch_id = $1",
                batch);
    expect_rows("t", "SELECT bool_and(e.at = r.created_at AND (e.type <> 'step.scheduled' OR"
                     " e.data->>'tz' = 'UTC')) FROM run_log e JOIN runs r ON r.id = e.run_id"
                     " WHERE r.batch_id = $1",
                batch);
}

/* One run per request, with an idempotency key: the same rows as one input of a batch, once. */
static void test_single_run_rows(void **state)
{
    (void)state;
    const char *body = "{\"workflow\": \"enq\", \"input\": {\"lead\": \"s\", \"n\": 9},"
                       " \"idempotency_key\": \"enq-1\"}";
    json_t *run = th_api_json(api, 201, "POST", "/v1/runs", body);
    char id[24];
    snprintf(id, sizeof id, "%lld", (long long)json_integer_value(json_object_get(run, "id")));
    assert_string_equal(json_string_value(json_object_get(run, "state")), "queued");
    json_decref(run);
    json_decref(th_api_json(api, 200, "POST", "/v1/runs", body));
    expect_rows("1", "SELECT count(*) FROM runs WHERE idempotency_key = 'enq-1' AND id = $1", id);
    expect_rows("w ready true|a ready lead-s|b pending -",
                "SELECT string_agg(concat_ws(' ', key, state, CASE WHEN key = 'w' THEN"
                " scheduled::text ELSE coalesce(ckey, '-') END), '|' ORDER BY idx)"
                " FROM steps WHERE run_id = $1",
                id);
    expect_rows("run.created,step.scheduled",
                "SELECT string_agg(type, ',' ORDER BY id) FROM run_log WHERE run_id = $1", id);
    expect_rows("s", "SELECT key FROM run_cancel_on WHERE run_id = $1", id);
}

static int group_setup(void **state)
{
    (void)state;
    api = th_api_start(&(th_api_opts){.prefix = "api_enqueue", .no_workers = true});
    pg = th_pgc_open(th_api_db(api));
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    PQfinish(pg);
    th_api_stop(api);
    return 0;
}

int main(void)
{
    th_api_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_rows),
        cmocka_unit_test(test_single_run_rows),
    };
    int rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
