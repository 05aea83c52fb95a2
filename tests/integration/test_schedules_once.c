/* tests/integration/test_schedules_once.c: exactly one run per (schedule, tick), however many
 * processes fire schedules, when one of them is killed with SIGKILL at the tick and when
 * PostgreSQL restarts at the tick.
 *
 * Two `flowd serve --role worker` processes share a private cluster and 40 schedules ticking
 * every minute (catchup all, so a tick that fell due while its process died still runs). The test
 * clock moves one minute per round; on some rounds a process is killed a few milliseconds after
 * the move, when both schedulers are in their fire pass, and started again; on others, the
 * process is killed while its fire statement is inside the database (held there by a lock the
 * test takes on runs), so that the statement commits after its process died; once, the server
 * restarts instead. At the end every schedule has exactly one run per tick from its first to its
 * last, and no tick has two. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/log.h"
#include "engine/step.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"

enum { SCHEDULES = 40, ROUNDS = 24 };

static const char *const tick_def =
    "{\"name\": \"tick\", \"steps\": [{\"key\": \"t\", \"kind\": \"transform\","
    " \"input\": {\"at\": \"{{input.at}}\"}}]}";

/* Moves the clock a minute while holding runs in SHARE mode, so that a scheduler's fire statement
 * stops at its first insert of a run; kills that statement's process with SIGKILL, starts it
 * again, and lets the statement go on without its client. Answers the tick's runs made by then
 * (by the dead process's statement, and any other that waited behind the lock). */
static long kill_mid_fire(const char *db, pid_t procs[2])
{
    PGconn *lock = th_pgc_open(db);
    PQclear(PQexec(lock, "BEGIN"));
    PQclear(PQexec(lock, "LOCK TABLE runs IN SHARE MODE"));
    free(th_pg_value(db, "SELECT flowd_clock_advance(60000)"));
    PGconn *c = th_pgc_open(db);
    assert_true(th_pgc_wait(c,
                            "SELECT count(*) > 0 FROM pg_stat_activity"
                            " WHERE application_name LIKE 'flowd-schedules-%'"
                            "   AND wait_event_type = 'Lock' AND query LIKE '%flowd_schedules_fire%'",
                            0, NULL, 30));
    long long pid = th_pgc_ll(c,
                              "SELECT split_part(application_name, '-', 3)::bigint"
                              "  FROM pg_stat_activity"
                              " WHERE application_name LIKE 'flowd-schedules-%'"
                              "   AND wait_event_type = 'Lock' LIMIT 1",
                              0, NULL);
    int victim = procs[0] == (pid_t)pid ? 0 : 1;
    assert_int_equal(procs[victim], (pid_t)pid);
    th_serve_kill(procs[victim], SIGKILL);
    procs[victim] = th_serve_spawn(db, 1, 0);
    PQclear(PQexec(lock, "COMMIT"));
    PQfinish(lock);
    /* the dead process's statement ends on its own (committed: its client is not asked) */
    assert_true(th_pgc_wait(c,
                            "SELECT count(*) = 0 FROM pg_stat_activity"
                            " WHERE query LIKE '%flowd_schedules_fire%' AND state = 'active'"
                            "   AND pid <> pg_backend_pid()",
                            0, NULL, 30));
    long made = (long)th_pgc_ll(c,
                                "SELECT count(*) FROM runs WHERE split_part(idempotency_key, ':', 3)"
                                "::bigint = (SELECT max(split_part(idempotency_key, ':', 3)::bigint)"
                                " FROM runs)",
                                0, NULL);
    PQfinish(c);
    return made;
}

static void test_one_run_per_tick(void **state)
{
    th_cluster *c = *state;
    long long tenant;
    char *db = th_engine_db_at(c->dir, "sch_once", &tenant);
    th_engine_register(db, tenant, tick_def);
    /* the schedules, as PUT writes them: their first tick is the next whole minute */
    free(th_pg_valuef(db,
                      "SELECT count(*) FROM generate_series(1, %d) i, LATERAL flowd_schedule_put("
                      "%lld, 'every-' || i, '{\"workflow\": \"tick\", \"every\": \"1m\","
                      " \"catchup\": \"all\", \"input\": {\"at\": \"{{schedule.fire_time}}\"}}',"
                      " (flowd_ms_of(flowd_now()) / 60000 + 1) * 60000, true) p",
                      SCHEDULES, tenant));
    pid_t procs[2] = {th_serve_spawn(db, 1, 0), th_serve_spawn(db, 1, 0)};
    assert_true(th_engine_wait(db,
                               "SELECT count(*) = 2 FROM pg_stat_activity"
                               " WHERE application_name LIKE 'flowd-schedules-%'",
                               30));
    unsigned seed = (unsigned)getpid();
    int kills = 0, mid_fire = 0;
    long mid_fire_made = 0;
    for (int round = 0; round < ROUNDS; round++) {
        if (round % 4 == 1) {
            mid_fire_made += kill_mid_fire(db, procs);
            mid_fire++;
        } else {
            free(th_pg_value(db, "SELECT flowd_clock_advance(60000)"));
        }
        if (round % 4 == 3) { /* SIGKILL at the tick: mid-pass, or just before or after it */
            th_sleep_ms(rand_r(&seed) % 25);
            int victim = kills++ % 2;
            th_serve_kill(procs[victim], SIGKILL);
            procs[victim] = th_serve_spawn(db, 1, 0);
        } else if (round == ROUNDS - 6) {
            assert_int_equal(th_cluster_ctl(c, "restart"), 0);
        }
        /* every schedule has handled every tick up to now */
        assert_true(th_engine_wait(db,
                                   "SELECT bool_and(next_fire > flowd_now()) FROM schedules",
                                   60));
    }
    for (int i = 0; i < 2; i++)
        th_serve_kill(procs[i], SIGTERM);

    /* one run per key, each schedule's runs are its ticks without a gap, all schedules alike */
    assert_int_equal(th_pg_long(db, "SELECT count(*) - count(DISTINCT idempotency_key) FROM runs"),
                     0);
    long per = th_pg_long(db, "SELECT min(fires) FROM schedules");
    assert_int_equal(th_pg_long(db, "SELECT max(fires) FROM schedules"), per);
    assert_true(per >= ROUNDS);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM runs"), (long)SCHEDULES * per);
    assert_int_equal(th_pg_long(db,
                                "SELECT count(*) FROM ("
                                " SELECT r.schedule_id,"
                                "        (max(split_part(r.idempotency_key, ':', 3)::bigint)"
                                "         - min(split_part(r.idempotency_key, ':', 3)::bigint))"
                                "        / 60000 + 1 AS span, count(*) AS n"
                                "   FROM runs r GROUP BY r.schedule_id) x WHERE span <> n"),
                     0);
    assert_int_equal(th_pg_long(db, "SELECT sum(skips) FROM schedules"), 0);
    print_message("%d schedules x %ld ticks, %d processes killed at a tick, %d inside their fire"
                  " statement (%ld runs of those ticks made once it went on), one server restart:"
                  " one run each\n",
                  SCHEDULES, per, kills, mid_fire, mid_fire_made);
    free(db);
}

int main(void)
{
    eng_log_init();
    eng_step_register_builtins();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_run_per_tick),
    };
    return cmocka_run_group_tests(tests, th_cluster_setup, th_cluster_teardown);
}
