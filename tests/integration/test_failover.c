/* tests/integration/test_failover.c: flowd follows a PostgreSQL failover by itself.
 *
 * The test starts a primary and a streaming standby (pg_basebackup) of its own, and two
 * `flowd serve --role worker` processes given a multi-host conninfo naming both with
 * target_session_attrs=read-write. While they work runs of a transform -> sms workflow against the
 * mock Twilio, the primary is stopped (fast shutdown: the standby receives all it committed) and
 * the standby promoted. Without being restarted, flowd must reconnect to the new primary and
 * finish every run; nothing the old primary committed may be lost (every step that had succeeded
 * there is still succeeded, on its first attempt, with the same finish time), and every SMS must
 * have reached the provider exactly once. Printed: the longest time without a step finishing
 * around the failover, from the steps' finish times, and the wall-clock times of the switch. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "engine/step.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"
#include "tests/support/th_mockmsg.h"

enum { RUNS = 1500 }; /* a multiple of 100 */

static const char notify_def[] =
    "{\"name\": \"notify\", \"steps\": ["
    " {\"key\": \"shape\", \"kind\": \"transform\","
    "  \"input\": {\"to\": \"{{input.phone}}\", \"text\": \"lead {{input.n}}\"}},"
    " {\"key\": \"text\", \"kind\": \"sms\", \"needs\": [\"shape\"],"
    "  \"input\": {\"to\": \"{{steps.shape.output.to}}\", \"body\": \"{{steps.shape.output.text}}\","
    "             \"resolve\": {\"checks\": 2, \"interval_ms\": 300}}}]}";

static void test_failover_to_promoted_standby(void **state)
{
    (void)state;
    th_cluster *primary = th_cluster_start();
    assert_non_null(primary);
    long long tenant;
    char *db_p = th_engine_db_at(primary->dir, "failover", &tenant);
    long long wf = th_engine_register(db_p, tenant, notify_def);
    th_engine_enqueue_phones(db_p, tenant, wf, RUNS);
    th_cluster *standby = th_cluster_standby(primary);
    assert_non_null(standby);
    const char *dbname = strstr(db_p, "dbname=") + 7;
    char name[96];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(dbname, " "), dbname);
    char *db_s = eng_xasprintf("host=%s dbname=%s user=postgres", standby->dir, name);
    char *db_multi = eng_xasprintf("host=%s,%s dbname=%s user=postgres connect_timeout=2"
                                   " target_session_attrs=read-write",
                                   primary->dir, standby->dir, name);

    th_msg *sms = th_msg_start(TH_MSG_TWILIO);
    for (int i = 0; i < 2 * RUNS; i++)
        th_msg_push(sms, (th_msg_answer){.delay_ms = 50});
    setenv("TWILIO_ACCOUNT_SID", TH_MSG_TWILIO_SID, 1);
    setenv("TWILIO_AUTH_TOKEN", TH_MSG_TWILIO_TOKEN, 1);
    setenv("TWILIO_FROM", "+15005550001", 1);
    setenv("TWILIO_BASE_URL", th_msg_url(sms), 1);
    /* few steps in flight per worker, so that the runs take a while and the failover lands on
     * work in progress */
    setenv("FLOWD_MAX_INFLIGHT", "16", 1);
    pid_t p1 = th_serve_spawn(db_multi, 2, 5000), p2 = th_serve_spawn(db_multi, 2, 5000);

    /* Fail over once a fifth of the runs are done. */
    assert_true(th_engine_wait(db_p, "SELECT count(*) >= 300 FROM runs WHERE state = 'succeeded'",
                               60));
    /* What the primary has committed just before it stops: all of it must survive. */
    th_pg_value(db_p, "CREATE TABLE failover_seen AS SELECT id, attempts, finished_at FROM steps"
                      " WHERE state = 'succeeded'");
    long seen = th_pg_longf(db_p, "SELECT count(*) FROM failover_seen");
    long long t_stop = th_now_ms();
    assert_int_equal(th_cluster_ctl(primary, "stop"), 0);
    long long t_stopped = th_now_ms();
    long done_at_stop = th_pg_longf(db_s, "SELECT count(*) FROM runs WHERE state = 'succeeded'");
    assert_int_equal(th_cluster_ctl(standby, "promote"), 0);
    long long t_promoted = th_now_ms();
    /* the first step finished on the new primary */
    char *more = eng_xasprintf("SELECT count(*) > %ld FROM runs WHERE state = 'succeeded'",
                               done_at_stop);
    assert_true(th_engine_wait(db_s, more, 60));
    long long t_progress = th_now_ms();
    free(more);
    bool all = th_engine_wait(
        db_s, "SELECT count(*) = 1500 FROM runs WHERE state IN ('succeeded', 'failed', 'cancelled')",
        60);
    int st1 = th_serve_kill(p1, SIGTERM), st2 = th_serve_kill(p2, SIGTERM);

    /* The longest stretch without a step finishing, from the steps' own finish times. */
    double gap_s = (double)th_pg_longf(db_s, "SELECT (1000 * max(gap))::bigint FROM (SELECT"
                                        " extract(epoch FROM finished_at - lag(finished_at)"
                                        " OVER (ORDER BY finished_at)) AS gap FROM steps"
                                        " WHERE finished_at IS NOT NULL) g") / 1000.0;
    print_message("failover: %ld runs done at the stop (%ld steps committed); primary stopped in "
                  "%lld ms, standby promoted %lld ms later, first run finished on it %lld ms "
                  "after the stop began; longest time without a step finishing: %.2f s\n",
                  done_at_stop, seen, t_stopped - t_stop, t_promoted - t_stopped,
                  t_progress - t_stop, gap_s);
    print_message("failover: %d SMS requests, %d accepted, %d look-ups; %ld interruptions\n",
                  th_msg_requests(sms), th_msg_accepted(sms), th_msg_lookups(sms),
                  th_pg_longf(db_s, "SELECT coalesce(sum(interruptions), 0) FROM steps"));
    assert_true(all);
    assert_true(WIFEXITED(st1) && WEXITSTATUS(st1) == 0);
    assert_true(WIFEXITED(st2) && WEXITSTATUS(st2) == 0);
    /* the failover landed on work in progress */
    assert_true(done_at_stop < RUNS);
    assert_int_equal(th_pg_longf(db_s, "SELECT count(*) FROM runs WHERE state = 'succeeded'"), RUNS);
    /* nothing committed was lost: every step that had succeeded is untouched */
    assert_int_equal(th_pg_longf(db_s, "SELECT count(*) FROM failover_seen f JOIN steps s USING (id)"
                                  " WHERE s.state = 'succeeded' AND s.attempts = f.attempts"
                                  " AND s.finished_at = f.finished_at"),
                     seen);
    /* no attempt was used up by the failover */
    char *retried = th_pg_value(db_s, "SELECT coalesce(string_agg(s.key || ' attempts ' ||"
                                      " s.attempts || ': ' || coalesce((SELECT string_agg(e.type"
                                      " || ' ' || coalesce(e.data::text, ''), '; ' ORDER BY e.id)"
                                      " FROM run_log e WHERE e.run_id = s.run_id AND"
                                      " e.step_key = s.key), ''), ' | '), '')"
                                      " FROM steps s WHERE s.attempts <> 1");
    if (*retried)
        print_message("steps with more than one attempt: %s\n", retried);
    free(retried);
    assert_int_equal(th_pg_longf(db_s, "SELECT count(*) FROM steps WHERE attempts <> 1"), 0);
    /* every SMS reached the provider exactly once */
    assert_int_equal(th_msg_accepted(sms), RUNS);
    for (int i = 0; i < RUNS; i++) {
        char key[64];
        snprintf(key, sizeof key, "+1555%07d|lead %d", i, i);
        if (th_msg_accepted_for(sms, key) != 1)
            fail_msg("the SMS of run %d was accepted %d times", i,
                     th_msg_accepted_for(sms, key));
    }

    th_msg_stop(sms);
    unsetenv("FLOWD_MAX_INFLIGHT");
    free(db_multi);
    free(db_s);
    free(db_p);
    assert_int_equal(th_cluster_stop(standby), 0);
    assert_int_equal(th_cluster_stop(primary), 0);
}

int main(void)
{
    eng_step_register_builtins();
    step_register_all();
    setenv("NO_PROXY", "*", 1);
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failover_to_promoted_standby),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
