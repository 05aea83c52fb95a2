/* tests/integration/test_durable.c: a crash never fails a run, and an idle engine is idle.
 *
 * `flowd serve` processes work runs of an llm -> sms -> transform workflow against the mock OpenAI
 * and Twilio servers under default retry settings, and are killed with SIGKILL while calls are in
 * flight, several times: every run must succeed, every SMS must reach the mock exactly once, and
 * no recorded LLM answer may be asked for again. A step whose worker dies every time it runs is
 * stopped after its cap with the code `interrupted`. An idle server must not keep PostgreSQL busy. */
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
#include <sys/wait.h>

#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_engine.h"
#include "tests/support/th_mockllm.h"
#include "tests/support/th_mockmsg.h"

/* Look-ups settle an SMS that a kill cut off before it left within a second, not minutes. */
static const char touch_def[] =
    "{\"name\": \"touch\", \"steps\": ["
    " {\"key\": \"ask\", \"kind\": \"llm\","
    "  \"input\": {\"model\": \"gpt-4o-mini\", \"prompt\": \"Write to lead {{input.n}}\"}},"
    " {\"key\": \"text\", \"kind\": \"sms\", \"needs\": [\"ask\"],"
    "  \"input\": {\"to\": \"{{input.phone}}\", \"body\": \"{{steps.ask.output.text}}\","
    "             \"resolve\": {\"checks\": 2, \"interval_ms\": 300}}},"
    " {\"key\": \"done\", \"kind\": \"transform\", \"needs\": [\"text\"],"
    "  \"input\": {\"sid\": \"{{steps.text.output.message_id}}\"}}]}";

static void use_mocks(th_llm *llm, th_msg *sms)
{
    setenv("OPENAI_API_KEY", "sk-mock-durable", 1);
    setenv("OPENAI_BASE_URL", th_llm_base_url(llm), 1);
    setenv("TWILIO_ACCOUNT_SID", TH_MSG_TWILIO_SID, 1);
    setenv("TWILIO_AUTH_TOKEN", TH_MSG_TWILIO_TOKEN, 1);
    setenv("TWILIO_FROM", "+15005550001", 1);
    setenv("TWILIO_BASE_URL", th_msg_url(sms), 1);
}

static long count_where(const char *db, const char *sql) { return th_pg_long(db, sql); }

/* Waits until the k-th kill of the test would cut calls short: LLM requests the mock holds (the
 * first kill), SMS requests it holds (the second), or any step running (the others). */
static bool wait_in_flight(const char *db, th_llm *llm, th_msg *sms, int k)
{
    unsigned long llm0 = th_llm_calls(llm);
    int sms0 = th_msg_requests(sms);
    for (int i = 0; i < 3000; i++) {
        if ((k == 0 && th_llm_calls(llm) >= llm0 + 20) || (k == 1 && th_msg_requests(sms) >= sms0 + 20))
            return true;
        if (k >= 2 && count_where(db, "SELECT count(*) FROM steps WHERE state = 'running'") >= 5)
            return true;
        th_sleep_ms(20);
    }
    return false;
}

static void test_kill9_in_flight_fails_nothing(void **state)
{
    (void)state;
    enum { RUNS = 120, KILLS = 3 };
    th_llm *llm = th_llm_start(TH_LLM_OPENAI);
    th_msg *sms = th_msg_start(TH_MSG_TWILIO);
    /* slow enough that a kill finds calls of both kinds in flight */
    th_llm_set_default(llm, &(th_llm_answer){.delay_ms = 400});
    for (int i = 0; i < 2 * RUNS; i++)
        th_msg_push(sms, (th_msg_answer){.delay_ms = 400});
    use_mocks(llm, sms);
    long long tenant;
    char *db = th_engine_db("durable_kill", &tenant);
    long long wf = th_engine_register(db, tenant, touch_def);
    for (int i = 0; i < RUNS; i++) {
        char input[96];
        snprintf(input, sizeof input, "{\"n\": %d, \"phone\": \"+1555%07d\"}", i, i);
        th_engine_enqueue(db, tenant, wf, 1, input, 0);
    }

    long interrupted_in_flight = 0;
    for (int k = 0; k < KILLS; k++) {
        pid_t p = th_serve_spawn(db, 2, 3000);
        bool progressed = wait_in_flight(db, llm, sms, k);
        long held = count_where(db, "SELECT count(*) FROM steps WHERE state = 'running'");
        int st = th_serve_kill(p, SIGKILL);
        assert_true(progressed);
        assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
        print_message("kill %d: %ld steps in flight\n", k + 1, held);
        interrupted_in_flight += held;
    }
    /* the kills must have cut attempts short, or nothing was tested */
    assert_true(interrupted_in_flight > 0);

    pid_t last = th_serve_spawn(db, 2, 3000);
    bool done = th_engine_wait(
        db, "SELECT count(*) = 120 FROM runs WHERE state IN ('succeeded', 'failed', 'cancelled')",
        120);
    th_serve_kill(last, SIGTERM);
    assert_true(done);
    char *failed = th_pg_value(db, "SELECT coalesce(string_agg(DISTINCT error::text, ' | '), '')"
                                   " FROM runs WHERE state <> 'succeeded'");
    print_message("runs not succeeded: %s\n", failed);
    free(failed);
    assert_int_equal(count_where(db, "SELECT count(*) FROM runs WHERE state = 'succeeded'"), RUNS);
    long interruptions = count_where(db, "SELECT coalesce(sum(interruptions), 0) FROM steps");
    print_message("%ld interruptions; %lu LLM calls; %d SMS requests, %d accepted, %d look-ups\n",
                  interruptions, th_llm_calls(llm), th_msg_requests(sms), th_msg_accepted(sms),
                  th_msg_lookups(sms));
    assert_true(count_where(db, "SELECT sum(interruptions) FROM steps WHERE key = 'ask'") > 0);
    assert_true(count_where(db, "SELECT sum(interruptions) FROM steps WHERE key = 'text'") > 0);
    /* Every step ran on its first attempt: the kills used up none. */
    assert_int_equal(count_where(db, "SELECT count(*) FROM steps WHERE attempts <> 1"), 0);
    /* Exactly one SMS per lead reached the provider. */
    assert_int_equal(th_msg_accepted(sms), RUNS);
    /* Every answer was recorded once, and no recorded answer was asked for again: the calls beyond
     * one per run are the ones a kill cut short before their answer was recorded. */
    assert_int_equal(count_where(db, "SELECT count(*) FROM llm_records"), RUNS);
    long llm_interrupted = count_where(db, "SELECT coalesce(sum(interruptions), 0) FROM steps"
                                           " WHERE key = 'ask'");
    assert_true((long)th_llm_calls(llm) <= RUNS + llm_interrupted);
    th_llm_stop(llm);
    th_msg_stop(sms);
    free(db);
}

/* A step that takes its worker down every time it runs: here, an LLM call that never answers in a
 * process that is killed while it waits. After its cap of interruptions the run fails with
 * `interrupted`, naming the step; before it, each interruption put the step back. */
static void test_poison_pill_stops_after_cap(void **state)
{
    (void)state;
    th_llm *llm = th_llm_start(TH_LLM_OPENAI);
    th_llm_set_default(llm, &(th_llm_answer){.delay_ms = 60000});
    th_msg *sms = th_msg_start(TH_MSG_TWILIO);
    use_mocks(llm, sms);
    long long tenant;
    char *db = th_engine_db("durable_pill", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"pill\", \"steps\": [{\"key\": \"boom\", \"kind\": \"llm\","
        " \"retry\": {\"max_interruptions\": 3},"
        " \"input\": {\"model\": \"gpt-4o-mini\", \"prompt\": \"hang\"}}]}");
    long long run = th_engine_enqueue(db, tenant, wf, 1, NULL, 0);
    for (int i = 1; i <= 3; i++) {
        pid_t p = th_serve_spawn(db, 1, 1000);
        char *sql = eng_xasprintf("SELECT count(*) = 1 FROM steps WHERE state = 'running'"
                                  " AND interruptions = %d",
                                  i - 1);
        bool running = th_engine_wait(db, sql, 30);
        free(sql);
        th_serve_kill(p, SIGKILL);
        assert_true(running);
    }
    /* the reaper of the next process finds the third interruption and stops there */
    pid_t p = th_serve_spawn(db, 1, 1000);
    char *sql = eng_xasprintf("SELECT state = 'failed' FROM runs WHERE id = %lld", run);
    bool failed = th_engine_wait(db, sql, 30);
    free(sql);
    th_serve_kill(p, SIGTERM);
    assert_true(failed);
    char *err = th_pg_valuef(db,
                             "SELECT error->>'code' || ' ' || (error->>'step') || ' ' ||"
                             " (error->>'kind') FROM runs WHERE id = %lld",
                             run);
    assert_string_equal(err, "interrupted boom llm");
    free(err);
    assert_int_equal(
        count_where(db, "SELECT count(*) FROM steps WHERE state = 'failed' AND interruptions = 3"
                        " AND attempts = 1 AND error->>'code' = 'interrupted'"),
        1);
    assert_int_equal(
        count_where(db, "SELECT count(*) FROM run_log WHERE type = 'step.interrupted'"), 2);
    th_llm_stop(llm);
    th_msg_stop(sms);
    free(db);
}

/* An email whose outcome is unknown (SendGrid answered 500, and has no look-up) waits, its run
 * still running, until an operator settles it (`flowd send settle KEY not-sent`, which goes
 * through POST /v1/sends/{key}/outcome): then the step sends it. */
static void test_unknown_send_settled_over_api(void **state)
{
    (void)state;
    th_msg *sg = th_msg_start(TH_MSG_SENDGRID);
    setenv("SENDGRID_API_KEY", TH_MSG_SENDGRID_KEY, 1);
    setenv("SENDGRID_BASE_URL", th_msg_url(sg), 1);
    th_msg_push(sg, (th_msg_answer){.status = 500});
    th_api *api = th_api_start(&(th_api_opts){.prefix = "durable_settle"});
    json_decref(th_api_json(api, 201, "PUT", "/v1/workflows/mailer",
                            "{\"steps\": [{\"key\": \"mail\", \"kind\": \"email\", \"input\":"
                            " {\"to\": \"ada@example.test\", \"from\": \"team@example.test\","
                            " \"subject\": \"Hi\", \"text\": \"Hello\"}}]}"));
    long long run = th_api_start_run(api, "mailer", "{}");
    char *sql = eng_xasprintf("SELECT state = 'waiting' AND error->>'code' = 'unknown'"
                              " FROM steps WHERE run_id = %lld",
                              run);
    bool parked = th_engine_wait(th_api_db(api), sql, 30);
    free(sql);
    assert_true(parked);
    char path[96];
    snprintf(path, sizeof path, "/v1/runs/%lld", run);
    json_t *r = th_api_json(api, 200, "GET", path, NULL);
    assert_string_equal(json_string_value(json_object_get(r, "state")), "running");
    json_t *step = json_array_get(json_object_get(r, "steps"), 0);
    assert_string_equal(json_string_value(json_object_get(step, "state")), "waiting");
    const json_t *e = json_object_get(step, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "unknown");
    char *key = eng_xstrdup(json_string_value(json_object_get(e, "send_key")));
    json_decref(r);

    snprintf(path, sizeof path, "/v1/sends/%s/outcome", key);
    long status = 0;
    free(th_api_raw(api, "POST", path, "{\"outcome\": \"maybe\"}", &status));
    assert_int_equal(status, 422);
    free(th_api_raw(api, "POST", "/v1/sends/999999:mail/outcome", "{\"outcome\": \"sent\"}",
                    &status));
    assert_int_equal(status, 404);
    /* the operator answers with the command line */
    const char *argv[] = {"flowd", "--url", th_api_url(api), "send", "settle", key, "not-sent",
                          NULL};
    const char *env[] = {"FLOWD_API_KEY=" TH_API_KEY, NULL};
    char *out = NULL, *err = NULL;
    int st = th_flowd_run(argv, env, &out, &err);
    print_message("flowd send settle: %s%s", out, err);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "\"state\": \"failed\""));
    free(out);
    free(err);
    r = th_api_wait_run(api, run, 50, 30, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(r, "state")), "succeeded");
    json_decref(r);
    /* sent once more, now that it is known the first never went out; settled once only */
    assert_int_equal(th_msg_requests(sg), 2);
    assert_int_equal(th_msg_accepted(sg), 1);
    free(th_api_raw(api, "POST", path, "{\"outcome\": \"sent\"}", &status));
    assert_int_equal(status, 409);
    free(key);
    th_api_stop(api);
    th_msg_stop(sg);
    unsetenv("SENDGRID_API_KEY");
    unsetenv("SENDGRID_BASE_URL");
}

/* Transactions committed in db's database so far, as the statistics collector has them. */
static long commits(const char *db)
{
    return th_pg_long(db, "SELECT xact_commit FROM pg_stat_database"
                          " WHERE datname = current_database()");
}

/* With nothing to do, a server with two workers makes at most about one round trip a second (the
 * process's tick); each idle worker used to ask for the next due step every 2 ms. Counted by the
 * server (pg_stat_database) on a private cluster without autovacuum, whose visits to a fresh
 * database commit transactions of their own. */
static void test_idle_engine_is_idle(void **state)
{
    th_cluster *c = *state;
    long long tenant;
    char *db = th_engine_db_at(c->dir, "durable_idle", &tenant);
    free(th_pg_value(db, "ALTER SYSTEM SET autovacuum = off"));
    free(th_pg_value(db, "SELECT pg_reload_conf()"));
    pid_t p = th_serve_spawn(db, 2, 0);
    assert_true(th_engine_wait(db, "SELECT count(*) = 2 FROM pg_stat_activity"
                                   " WHERE datname = current_database()"
                                   " AND application_name LIKE '%:%'",
                               30));
    th_sleep_ms(2000); /* start-up done */
    /* Statistics reach pg_stat_database late (each backend flushes at most once a second, an idle
     * one later still), so a window may count start-up work: the lower of two back-to-back windows
     * is the idle rate. */
    long least = -1;
    for (int i = 0; i < 2; i++) {
        long before = commits(db);
        long long t0 = th_now_ms();
        th_sleep_ms(6000);
        long n = commits(db) - before;
        print_message("idle server: %ld commits in %lld ms\n", n, th_now_ms() - t0);
        if (least < 0 || n < least)
            least = n;
    }
    th_serve_kill(p, SIGTERM);
    /* one tick a second and this test's own reads (each idle worker's polls every 2 ms made this
     * thousands) */
    assert_true(least <= 15);
    free(db);
}


int main(void)
{
    th_api_init();
    step_register_all();
    /* FLOWD_TEST_FILTER=test_kill9_in_flight_fails_nothing runs one test (e.g. repeatedly) */
    if (getenv("FLOWD_TEST_FILTER"))
        cmocka_set_test_filter(getenv("FLOWD_TEST_FILTER"));
    setenv("NO_PROXY", "*", 1);
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_idle_engine_is_idle, th_cluster_setup,
                                        th_cluster_teardown),
        cmocka_unit_test(test_poison_pill_stops_after_cap),
        cmocka_unit_test(test_unknown_send_settled_over_api),
        cmocka_unit_test(test_kill9_in_flight_fails_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
