/* tests/integration/test_quota_steps.c: the quotas that stop steps: llm_tokens_per_month,
 * llm_cost_usd_per_month and sends_per_day.
 *
 * LLM (through the API, in-process workers, the sandbox provider, which records its tokens): a
 * step past the token quota waits in the state blocked, visible in the run, its event log and
 * /metrics, with the quota, its limit, what is used and the reset; raising the quota lets it go on
 * at once; a quota full again blocks the next run until the clock reaches the next month, when the
 * maintenance tick lets it go on by itself (its attempt not spent); a workflow saying
 * "quota": {"on_exceeded": "fail"} fails instead; a cancelled run cancels its blocked step; the
 * cost quota blocks as well.
 *
 * Sends under concurrency: sends_per_day 30 and 100 runs of an sms step worked by two flowd
 * processes of four workers each: exactly 30 messages go out and 70 steps are blocked, since each
 * message is taken from the quota's row as it is let through; raised to 60, 30 more go; the next
 * day (test clock) the remaining 40 go by themselves. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_engine.h"

static const char *step_of(const json_t *run, const char *field)
{
    return json_string_value(json_object_get(json_array_get(json_object_get(run, "steps"), 0),
                                             field));
}

static const json_t *step_error(const json_t *run)
{
    return json_object_get(json_array_get(json_object_get(run, "steps"), 0), "error");
}

/* Waits until run's only step is in state. */
static void wait_step(th_api *a, long long run, const char *state)
{
    char *sql = eng_xasprintf("SELECT state = '%s' FROM steps WHERE run_id = %lld", state, run);
    assert_true(th_engine_wait(th_api_db(a), sql, 60));
    free(sql);
}

static json_t *get_run(th_api *a, long long run)
{
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld", run);
    return th_api_json(a, 200, "GET", path, NULL);
}

static long count_events(th_api *a, long long run, const char *type)
{
    return th_pg_longf(th_api_db(a),
                       "SELECT count(*) FROM run_log WHERE run_id = %lld AND type = '%s'", run,
                       type);
}

static void put_quotas(th_api *a, const char *body)
{
    json_decref(th_api_json(a, 200, "PUT", "/v1/tenants/default/quotas", body));
}

static void test_llm_quotas(void **state)
{
    (void)state;
    th_api *a = th_api_start(&(th_api_opts){.prefix = "qllm"});
    const char *db = th_api_db(a);
    json_decref(th_api_json(a, 201, "PUT", "/v1/workflows/ask",
                            "{\"steps\": [{\"key\": \"a\", \"kind\": \"llm\", \"input\": {"
                            "\"provider\": \"sandbox\", \"model\": \"m\", \"prompt\": \"hello\"}}]}"));
    json_decref(th_api_json(a, 201, "PUT", "/v1/workflows/ask_fail",
                            "{\"quota\": {\"on_exceeded\": \"fail\"}, \"steps\": [{\"key\": \"a\","
                            " \"kind\": \"llm\", \"input\": {\"provider\": \"sandbox\","
                            " \"model\": \"m\", \"prompt\": \"hello\"}}]}"));
    json_t *q = th_api_json(a, 200, "PUT", "/v1/tenants/default/quotas",
                            "{\"llm_tokens_per_month\": 1}");
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(q, "llm_tokens_per_month"), "limit")),
                     1);
    assert_true(json_is_null(json_object_get(q, "runs_per_month")));
    assert_true(json_is_null(json_object_get(q, "sends_per_day")));
    json_decref(q);

    /* the first call fits (nothing used yet) and uses the quota up */
    long long r1 = th_api_start_run(a, "ask", "{}");
    json_decref(th_api_wait_run(a, r1, 20, 60, NULL, NULL));
    long used = th_pg_long(db, "SELECT sum(input_tokens + output_tokens) FROM usage_records");
    assert_true(used > 1);

    /* the next one is blocked, visibly */
    long long r2 = th_api_start_run(a, "ask", "{}");
    wait_step(a, r2, "blocked");
    json_t *run = get_run(a, r2);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "running");
    assert_string_equal(step_of(run, "state"), "blocked");
    const json_t *e = step_error(run);
    assert_string_equal(json_string_value(json_object_get(e, "code")), "quota_exceeded");
    assert_string_equal(json_string_value(json_object_get(e, "quota")), "llm_tokens_per_month");
    assert_int_equal(json_integer_value(json_object_get(e, "limit")), 1);
    assert_int_equal(json_integer_value(json_object_get(e, "used")), used);
    assert_string_equal(json_string_value(json_object_get(e, "resets_at")),
                        step_of(run, "run_at"));
    json_decref(run);
    assert_int_equal(count_events(a, r2, "step.blocked"), 1);
    char *metrics = th_api_raw(a, "GET", "/metrics", NULL, &(long){0});
    assert_non_null(strstr(metrics, "flowd_steps{state=\"blocked\"} 1\n"));
    free(metrics);
    q = th_api_json(a, 200, "GET", "/v1/tenants/default/quotas", NULL);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(q, "llm_tokens_per_month"), "used")),
                     used);
    json_decref(q);

    /* raised: it goes on at once */
    put_quotas(a, "{\"llm_tokens_per_month\": 1000000}");
    run = th_api_wait_run(a, r2, 20, 60, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    json_decref(run);
    assert_int_equal(count_events(a, r2, "step.unblocked"), 1);

    /* full again: blocked until the month turns, then it goes on by itself */
    char *full = eng_xasprintf("{\"llm_tokens_per_month\": %ld}", 2 * used);
    put_quotas(a, full);
    free(full);
    long long r3 = th_api_start_run(a, "ask", "{}");
    wait_step(a, r3, "blocked");
    char *due = th_pg_value(db, "SELECT flowd_clock_advance_to_next_due()->>'due_at'");
    char *reset = th_pg_valuef(db, "SELECT flowd_ms(run_at) FROM steps WHERE run_id = %lld", r3);
    assert_string_equal(due, reset);
    free(due);
    free(reset);
    run = th_api_wait_run(a, r3, 20, 60, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    json_decref(run);
    assert_int_equal(th_pg_longf(db, "SELECT attempts FROM steps WHERE run_id = %lld", r3), 1);

    /* a workflow that says fail fails */
    put_quotas(a, "{\"llm_tokens_per_month\": 0}");
    long long r4 = th_api_start_run(a, "ask_fail", "{}");
    run = th_api_wait_run(a, r4, 20, 60, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "failed");
    assert_string_equal(json_string_value(json_object_get(step_error(run), "code")),
                        "quota_exceeded");
    json_decref(run);

    /* a blocked step is cancelled with its run */
    long long r5 = th_api_start_run(a, "ask", "{}");
    wait_step(a, r5, "blocked");
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld/cancel", r5);
    json_decref(th_api_json(a, 200, "POST", path, NULL));
    wait_step(a, r5, "cancelled");

    /* the cost quota blocks too (the sandbox costs nothing: a limit of 0 is used up), and lifting
     * it lets the step go */
    put_quotas(a, "{\"llm_tokens_per_month\": null, \"llm_cost_usd_per_month\": 0}");
    long long r6 = th_api_start_run(a, "ask", "{}");
    wait_step(a, r6, "blocked");
    run = get_run(a, r6);
    assert_string_equal(json_string_value(json_object_get(step_error(run), "quota")),
                        "llm_cost_usd_per_month");
    json_decref(run);
    put_quotas(a, "{\"llm_cost_usd_per_month\": null}");
    wait_step(a, r6, "succeeded");

    /* bad input names the field */
    q = th_api_json(a, 422, "PUT", "/v1/tenants/default/quotas",
                    "{\"llm_cost_usd_per_month\": -1}");
    assert_string_equal(json_string_value(json_object_get(json_object_get(q, "error"), "field")),
                        "/llm_cost_usd_per_month");
    json_decref(q);
    q = th_api_json(a, 422, "PUT", "/v1/tenants/default/quotas", "{\"sends_per_day\": 1.5}");
    assert_string_equal(json_string_value(json_object_get(json_object_get(q, "error"), "field")),
                        "/sends_per_day");
    json_decref(q);
    q = th_api_json(a, 422, "PUT", "/v1/workflows/bad",
                    "{\"quota\": {\"on_exceeded\": \"later\"}, \"steps\": [{\"key\": \"t\","
                    " \"kind\": \"transform\", \"input\": {}}]}");
    assert_string_equal(json_string_value(json_object_get(json_object_get(q, "error"), "field")),
                        "/quota/on_exceeded");
    json_decref(q);

    /* the command line sets them, leaving the others as they are */
    char *url = eng_xasprintf("FLOWD_URL=%s", th_api_url(a));
    const char *const env[] = {url, "FLOWD_API_KEY=" TH_API_KEY, NULL};
    const char *const set[] = {"flowd", "quotas", "default", "--sends-per-day", "5",
                               "--llm-cost-usd-per-month", "2.5", "--json", NULL};
    char *out = NULL, *err = NULL;
    assert_int_equal(th_flowd_run(set, env, &out, &err), 0);
    json_t *shown = json_loads(out, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(shown, "sends_per_day"),
                                                        "limit")),
                     5);
    assert_true(json_number_value(json_object_get(
                    json_object_get(shown, "llm_cost_usd_per_month"), "limit")) == 2.5);
    assert_true(json_is_null(json_object_get(shown, "llm_tokens_per_month")));
    json_decref(shown);
    free(out);
    free(err);
    const char *const bad[] = {"flowd", "quotas", "default", "--sends-per-day", "many", NULL};
    assert_int_not_equal(th_flowd_run(bad, env, &out, &err), 0);
    assert_non_null(strstr(err, "--sends-per-day"));
    free(out);
    free(err);
    free(url);
    th_api_stop(a);
}

static const char sms_def[] =
    "{\"name\": \"text\", \"steps\": [{\"key\": \"text\", \"kind\": \"sms\","
    " \"input\": {\"to\": \"{{input.phone}}\", \"from\": \"+15550000000\","
    " \"body\": \"hello {{input.n}}\"}}]}";

static void test_sends_two_processes(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("qsend", &tenant);
    long long wf = th_engine_register(db, tenant, sms_def);
    th_pg_longf(db,
                "SELECT count(*) FROM flowd_quotas_put(%lld, 'default', '{\"sends_per_day\": 30}')",
                tenant);
    th_engine_enqueue_phones(db, tenant, wf, 100);
    pid_t p1 = th_serve_spawn(db, 4, 0), p2 = th_serve_spawn(db, 4, 0);

    const char *settled = "SELECT count(*) FILTER (WHERE state = 'succeeded')"
                          "     + count(*) FILTER (WHERE state = 'blocked') = 100 FROM steps";
    assert_true(th_engine_wait(db, settled, 120));
    long sent = th_pg_long(db, "SELECT count(*) FROM outbox");
    print_message("sends_per_day 30, 100 runs, two processes: %ld sent\n", sent);
    assert_int_equal(sent, 30);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM sends WHERE state = 'accepted'"), 30);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM steps WHERE state = 'blocked'"
                                    " AND error->>'quota' = 'sends_per_day'"
                                    " AND run_at = date_trunc('day', flowd_now() AT TIME ZONE"
                                    " 'UTC') AT TIME ZONE 'UTC' + interval '1 day'"),
                     70);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM run_log WHERE type = 'step.blocked'"),
                     70);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs WHERE state = 'running'"), 70);
    assert_true(th_pg_long(db, "SELECT count(*) FROM worker_leases") >= 8); /* both processes */

    /* raised to 60: 30 more go, the others stay blocked */
    th_pg_longf(db,
                "SELECT count(*) FROM flowd_quotas_put(%lld, 'default', '{\"sends_per_day\": 60}')",
                tenant);
    assert_true(th_engine_wait(db, settled, 120));
    assert_true(th_engine_wait(db, "SELECT count(*) = 60 FROM outbox", 60));
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM steps WHERE state = 'blocked'"), 40);

    /* the next day they go on by themselves */
    th_pg_long(db, "SELECT (flowd_clock_advance_to_next_due()->>'advanced_ms')::bigint");
    assert_true(th_engine_wait(db, "SELECT count(*) = 100 FROM runs WHERE state = 'succeeded'",
                               120));
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM outbox"), 100);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM sends WHERE state = 'accepted'"), 100);

    assert_int_equal(th_serve_kill(p1, SIGTERM), 0);
    assert_int_equal(th_serve_kill(p2, SIGTERM), 0);
    free(db);
}

int main(void)
{
    th_api_init();
    step_register_all();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llm_quotas),
        cmocka_unit_test(test_sends_two_processes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
