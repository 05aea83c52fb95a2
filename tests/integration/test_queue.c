/* tests/integration/test_queue.c: the queue core end to end against a real PostgreSQL.
 *
 * Workers run in this process (engine/worker.h) and as `flowd serve` children. Every assertion reads
 * the database, which is the only place where the engine's promises (exactly one attempt, order,
 * backoff, cancellation) are visible. Each test gets its own fresh database.
 *
 * Two kinds are this binary's own: "flaky" (input {"fail_times": N} fails the first N attempts,
 * {"permanent": true} fails for good) and a "transform" that replaces the built-in one with the same
 * behaviour (pure, engine/step.h) plus a counter, so a test can tell the steps run here from those
 * run by children. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <jansson.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"

static atomic_long transforms_here; /* transform attempts run by this process's workers */
static atomic_long flaky_attempts;

static void counting_transform_start(eng_step_ctx *ctx)
{
    atomic_fetch_add(&transforms_here, 1);
    eng_step_succeed(ctx, json_deep_copy(eng_step_input(ctx)));
}

static const eng_step_kind counting_transform = {
    .name = "transform",
    .default_max_attempts = 1,
    .start = counting_transform_start,
    .pure = true,
};

static void flaky_start(eng_step_ctx *ctx)
{
    atomic_fetch_add(&flaky_attempts, 1);
    const json_t *in = eng_step_input(ctx);
    if (json_is_true(json_object_get(in, "permanent"))) {
        eng_step_fail(ctx, true, "broken", "this step can never succeed", 0);
        return;
    }
    if (eng_step_attempt(ctx) <= json_integer_value(json_object_get(in, "fail_times"))) {
        eng_step_fail(ctx, false, "flaky", "failing on purpose", 0);
        return;
    }
    eng_step_succeed(ctx, json_pack("{s:i}", "attempt", eng_step_attempt(ctx)));
}

static const eng_step_kind flaky_kind = {
    .name = "flaky",
    .default_max_attempts = 3,
    .start = flaky_start,
};

/* Asserts that the JSON texts a and b are equal as JSON values. */
static void assert_json_equal(const char *a, const char *b)
{
    json_t *ja = json_loads(a, 0, NULL), *jb = json_loads(b, 0, NULL);
    assert_non_null(ja);
    assert_non_null(jb);
    if (!json_equal(ja, jb))
        fail_msg("JSON differs:\n  got      %s\n  expected %s", a, b);
    json_decref(ja);
    json_decref(jb);
}

/* ------------------------------------------------------------------------------ diamond -- */

static const char diamond_def[] =
    "{\"name\": \"diamond\", \"steps\": ["
    " {\"key\": \"a\", \"kind\": \"transform\", \"input\": {\"n\": \"{{input.n}}\"}},"
    " {\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"],"
    "  \"input\": {\"from\": \"b\", \"n\": \"{{steps.a.output.n}}\"}},"
    " {\"key\": \"c\", \"kind\": \"transform\", \"needs\": [\"a\"], \"input\": {\"from\": \"c\"}},"
    " {\"key\": \"d\", \"kind\": \"transform\", \"needs\": [\"b\", \"c\"],"
    "  \"input\": {\"b\": \"{{steps.b.output}}\", \"c\": \"{{steps.c.output}}\"}}]}";

static void test_diamond_order(void **state)
{
    (void)state;
    enum { RUNS = 50 };
    long long tenant;
    char *db = th_engine_db("q_diamond", &tenant);
    long long wf = th_engine_register(db, tenant, diamond_def);
    th_engine_enqueue(db, tenant, wf, RUNS, "{\"n\": 7}", 0);
    th_workers *ws = th_workers_start(db, 2, "diamond", 0, 0, 0);
    bool done = th_engine_wait(
        db, "SELECT count(*) = 50 FROM runs WHERE state IN ('succeeded', 'failed')", 60);
    th_workers_stop(ws);
    assert_true(done);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM runs WHERE state = 'succeeded'"), RUNS);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM steps WHERE state = 'succeeded'"),
                     4 * RUNS);

    /* Timestamps: a dependent starts no earlier than its needs finished (equal when the trip that
     * reported a need also claimed the dependent: one transaction, one flowd_now()). */
    assert_int_equal(
        th_pg_longf(db,
                    "SELECT count(*) FROM steps a JOIN steps x ON x.run_id = a.run_id"
                    " WHERE a.key = 'a' AND x.key IN ('b', 'c') AND x.started_at < a.finished_at"),
        0);
    assert_int_equal(
        th_pg_longf(db,
                    "SELECT count(*) FROM steps d JOIN steps x ON x.run_id = d.run_id"
                    " WHERE d.key = 'd' AND x.key IN ('b', 'c') AND d.started_at < x.finished_at"),
        0);
    /* The event log orders strictly: d starts after both b and c succeeded, b and c after a. */
    assert_int_equal(
        th_pg_longf(
            db,
            "SELECT count(*) FROM runs r WHERE"
            " (SELECT min(id) FROM run_log e WHERE e.run_id = r.id AND e.type = 'step.started'"
            "   AND e.step_key = 'd') <"
            " (SELECT max(id) FROM run_log e WHERE e.run_id = r.id"
            "   AND e.type = 'step.succeeded' AND e.step_key IN ('b', 'c'))"
            " OR (SELECT min(id) FROM run_log e WHERE e.run_id = r.id"
            "   AND e.type = 'step.started' AND e.step_key IN ('b', 'c')) <"
            " (SELECT id FROM run_log e WHERE e.run_id = r.id"
            "   AND e.type = 'step.succeeded' AND e.step_key = 'a')"),
        0);
    /* d's rendered input carries b's and c's outputs, and it is the run's output (the only leaf). */
    assert_int_equal(
        th_pg_longf(db, "SELECT count(DISTINCT output::text) FROM steps WHERE key = 'd'"), 1);
    char *d_out = th_pg_value(db, "SELECT output::text FROM steps WHERE key = 'd' LIMIT 1");
    assert_json_equal(d_out, "{\"b\": {\"from\": \"b\", \"n\": 7}, \"c\": {\"from\": \"c\"}}");
    char *r_out = th_pg_value(db, "SELECT flowd_run_output(id)::text FROM runs LIMIT 1");
    char *want = eng_xasprintf("{\"d\": %s}", d_out);
    assert_json_equal(r_out, want);
    free(want);
    free(r_out);
    free(d_out);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM runs WHERE steps_done <> 4 OR steps_total <> 4"
                        " OR started_at IS NULL OR finished_at < started_at"),
        0);
    free(db);
}

/* ----------------------------------------------------------------- exactly once, many workers -- */

/* The application_name of a `flowd serve` worker is its owner, "host:pid:i". */
static bool serve_connected(const char *db, pid_t pid, int workers)
{
    char *sql = eng_xasprintf("SELECT count(*) >= %d FROM pg_stat_activity"
                              " WHERE application_name LIKE '%%:%d:%%'",
                              workers, (int)pid);
    bool ok = th_engine_wait(db, sql, 30);
    free(sql);
    return ok;
}

static void test_exactly_once_threads_and_processes(void **state)
{
    (void)state;
    enum { RUNS = 20000 };
    long long tenant;
    char *db = th_engine_db("q_once", &tenant);
    long long wf = th_engine_register(
        db, tenant, "{\"name\": \"one\", \"steps\": [{\"key\": \"s\", \"kind\": \"transform\","
                    " \"input\": {\"n\": \"{{input.n}}\"}}]}");
    /* Everyone is connected before the work appears, so all six workers compete for it. */
    pid_t p1 = th_serve_spawn(db, 2, 0), p2 = th_serve_spawn(db, 2, 0);
    assert_true(serve_connected(db, p1, 2));
    assert_true(serve_connected(db, p2, 2));
    th_workers *ws = th_workers_start(db, 4, "once", 0, 0, 0);
    assert_true(th_engine_wait(db, "SELECT count(*) = 4 FROM pg_stat_activity"
                                   " WHERE application_name LIKE 'once-%'", 30));
    long before = atomic_load(&transforms_here);
    long long t0 = th_now_ms();
    th_engine_enqueue(db, tenant, wf, RUNS, "{\"n\": 1}", 500);
    bool done = th_engine_wait(db, "SELECT count(*) = 20000 FROM runs WHERE state = 'succeeded'", 120);
    long long t1 = th_now_ms();
    th_workers_stop(ws);
    int s1 = th_serve_kill(p1, SIGTERM), s2 = th_serve_kill(p2, SIGTERM);
    long here = atomic_load(&transforms_here) - before;
    print_message("20000 runs in %lld ms; %ld ran in this process\n", t1 - t0, here);
    assert_true(done);
    /* Both kinds of worker took part, or this test proved nothing about competing claimers. */
    assert_true(here > 0);
    assert_true(here < RUNS);
    assert_true(WIFEXITED(s1) && WEXITSTATUS(s1) == 0);
    assert_true(WIFEXITED(s2) && WEXITSTATUS(s2) == 0);

    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM steps WHERE state = 'succeeded' AND attempts = 1"),
        RUNS);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM steps"), RUNS);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM run_log WHERE type = 'step.started'"),
                     RUNS);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM (SELECT run_id FROM run_log"
                        " WHERE type = 'step.started' GROUP BY run_id HAVING count(*) <> 1) x"),
        0);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM run_log WHERE type = 'step.succeeded'"), RUNS);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM run_log WHERE type = 'step.retrying'"), 0);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM runs WHERE state = 'succeeded' AND steps_done = 1"),
        RUNS);
    free(db);
}

/* ------------------------------------------------------------------------------- kill -9 -- */

/* A transform has one attempt, which a kill must not use up. Transforms are pure (engine/step.h):
 * the claim only locks them and they finish in its transaction, so they are never held by a
 * process; the delay of no time between them is claimed running like any other step, and is what
 * a killed process holds. */
static const char chain_def[] =
    "{\"name\": \"chain3\", \"steps\": ["
    " {\"key\": \"s1\", \"kind\": \"transform\", \"input\": {\"n\": \"{{input.n}}\"}},"
    " {\"key\": \"s2\", \"kind\": \"delay\", \"needs\": [\"s1\"], \"input\": {\"for\": \"0s\"},"
    "  \"retry\": {\"max_attempts\": 1}},"
    " {\"key\": \"s3\", \"kind\": \"transform\", \"needs\": [\"s2\"],"
    "  \"input\": {\"n\": \"{{steps.s1.output.n}}\"}}]}";

static void test_kill9_loses_nothing(void **state)
{
    (void)state;
    enum { RUNS = 3000 };
    long long tenant;
    char *db = th_engine_db("q_kill", &tenant);
    long long wf = th_engine_register(db, tenant, chain_def);
    th_engine_enqueue(db, tenant, wf, RUNS, "{\"n\": 5}", 1000);
    pid_t victim = th_serve_spawn(db, 2, 2000);
    /* the delays come after every run's first step: wait until they are being worked */
    assert_true(th_engine_wait(
        db, "SELECT count(*) >= 1000 FROM steps WHERE key = 's2' AND state = 'succeeded'", 60));
    int st = th_serve_kill(victim, SIGKILL);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);

    long succeeded_at_kill =
        th_pg_longf(db, "SELECT count(*) FROM steps WHERE state = 'succeeded'");
    long held = th_pg_longf(
        db, "SELECT count(*) FROM steps WHERE state = 'running' AND lease_owner LIKE '%%:%d:%%'",
        (int)victim);
    print_message("killed with %ld of %d steps done, %ld held by the dead process\n",
                  succeeded_at_kill, 3 * RUNS, held);
    /* The kill must land mid-run, with claimed steps on the dead process, or nothing was tested. */
    assert_true(succeeded_at_kill < 3 * RUNS);
    assert_true(held > 0);
    free(th_pg_value(db, "CREATE TABLE held_at_kill AS SELECT id FROM steps WHERE state = 'running'"));

    pid_t second = th_serve_spawn(db, 2, 2000);
    bool done = th_engine_wait(
        db, "SELECT count(*) = 3000 FROM runs WHERE state IN ('succeeded', 'failed')", 90);
    th_serve_kill(second, SIGTERM);
    assert_true(done);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM runs WHERE state = 'succeeded'"), RUNS);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM steps WHERE state = 'succeeded'"),
                     3 * RUNS);
    /* Steps held by the dead process came back through the reaper as interrupted: run again
     * under the attempt they were on, which the kill did not use up. */
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM steps s JOIN held_at_kill h USING (id)"
                                     " WHERE s.attempts = 1 AND s.interruptions = 1"),
                     held);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM steps WHERE"
                                     " (attempts <> 1 OR interruptions <> 0)"
                                     " AND id NOT IN (SELECT id FROM held_at_kill)"),
                     0);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM run_log"
                                     " WHERE type = 'step.interrupted'"
                                     " AND data->>'code' = 'lease_expired'"),
                     held);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM run_log WHERE type = 'step.retrying'"),
                     0);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM (SELECT run_id, step_key FROM run_log"
                        " WHERE type = 'step.succeeded' GROUP BY 1, 2 HAVING count(*) <> 1) x"),
        0);
    char *out = th_pg_value(db, "SELECT DISTINCT flowd_run_output(id)::text FROM runs");
    assert_json_equal(out, "{\"s3\": {\"n\": 5}}");
    free(out);
    free(db);
}

/* ------------------------------------------------------------------- retries on the test clock -- */

static const char *const test_clock_env[] = {"FLOWD_TEST_CLOCK=1", NULL};

static void clock_advance_cli(const char *db, const char *by)
{
    const char *argv[] = {"flowd", "--database", db, "clock", "advance", by, NULL};
    char *err = NULL;
    int st = th_flowd_run(argv, test_clock_env, NULL, &err);
    if (st != 0)
        fail_msg("flowd clock advance %s: exit %d: %s", by, st, err);
    free(err);
}

/* The types of a run's log as the API reads it (flowd_run_events_json), "type[:attempt]" each. */
static char *log_types(const char *db, long long tenant, long long run)
{
    return th_pg_valuef(db,
                        "SELECT string_agg((e->>'type') || coalesce(':' || (e->'data'->>'attempt'), ''),"
                        " ',' ORDER BY o) FROM jsonb_array_elements(flowd_run_events_json(%lld, %lld,"
                        " 0, 100)->'events') WITH ORDINALITY AS x(e, o)",
                        tenant, run);
}

/* How many of a run's events a read after that event's own sequence does not answer with exactly
 * the events that follow it: 0 when a cursor at any event neither skips nor repeats one. */
static long log_cursor_faults(const char *db, long long tenant, long long run)
{
    return th_pg_longf(
        db,
        "WITH f AS (SELECT (e->>'seq')::bigint AS seq, o FROM jsonb_array_elements("
        "  flowd_run_events_json(%lld, %lld, 0, 100)->'events') WITH ORDINALITY AS x(e, o))"
        " SELECT count(*) FROM f a"
        " WHERE (SELECT coalesce(jsonb_agg(e->'seq' ORDER BY o), '[]') FROM jsonb_array_elements("
        "          flowd_run_events_json(%lld, %lld, a.seq, 100)->'events') WITH ORDINALITY AS x(e, o))"
        "   <> (SELECT coalesce(jsonb_agg(b.seq ORDER BY b.o), '[]') FROM f b WHERE b.o > a.o)",
        tenant, run, tenant, run);
}

/* Three one-step runs that succeeded: only their run.created rows are in run_events, and the
 * first run's log, the rest read from its rows, answers every cursor in order. */
static void assert_three_runs_logged_from_rows(const char *db, long long tenant)
{
    char *got = th_pg_value(db, "SELECT string_agg(DISTINCT type, ',') || ' ' || count(*)"
                                " FROM run_events");
    assert_string_equal(got, "run.created 3");
    free(got);
    long long run = th_pg_long(db, "SELECT min(id) FROM runs");
    got = log_types(db, tenant, run);
    assert_string_equal(got, "run.created,run.started,step.started:1,step.succeeded,run.succeeded");
    free(got);
    assert_int_equal(log_cursor_faults(db, tenant, run), 0);
}

static void test_retry_backoff(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("q_retry", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"retry\", \"steps\": [{\"key\": \"f\", \"kind\": \"flaky\","
        " \"input\": {\"fail_times\": 2},"
        " \"retry\": {\"max_attempts\": 5, \"jitter\": 0,"
        "             \"backoff\": {\"initial\": \"10s\", \"multiplier\": 2, \"max\": \"1h\"}}}]}");
    long before = atomic_load(&flaky_attempts);
    long long run = th_engine_enqueue(db, tenant, wf, 1, NULL, 0);
    th_workers *ws = th_workers_start(db, 1, "retry", 0, 0, 0);

    assert_true(th_engine_wait(db, "SELECT attempts = 1 AND state = 'ready' FROM steps", 30));
    /* Exactly the configured backoff after the failure, on the engine clock. */
    assert_int_equal(th_pg_longf(db, "SELECT (extract(epoch FROM s.run_at - e.at) * 1000)::bigint"
                                     " FROM steps s, run_log e WHERE e.type = 'step.retrying'"),
                     10000);
    char *due = th_pg_value(db, "SELECT run_at > flowd_now() + interval '9 s' FROM steps");
    assert_string_equal(due, "t");
    free(due);
    /* More than the workers' 1 s backstop poll passes: still nothing runs before the clock moves. */
    th_sleep_ms(1500);
    assert_int_equal(th_pg_longf(db, "SELECT attempts FROM steps"), 1);
    assert_int_equal(atomic_load(&flaky_attempts) - before, 1);

    clock_advance_cli(db, "10s");
    assert_true(th_engine_wait(db, "SELECT attempts = 2 AND state = 'ready' FROM steps", 30));
    assert_int_equal(th_pg_longf(db, "SELECT (extract(epoch FROM s.run_at - e.at) * 1000)::bigint"
                                     " FROM steps s, run_log e WHERE e.type = 'step.retrying'"
                                     " ORDER BY e.id DESC LIMIT 1"),
                     20000);
    char *retry_at = th_pg_value(db, "SELECT data->>'retry_at' IS NOT NULL FROM run_log"
                                     " WHERE type = 'step.retrying' ORDER BY id DESC LIMIT 1");
    assert_string_equal(retry_at, "t");
    free(retry_at);
    /* Half the second backoff is not enough. */
    clock_advance_cli(db, "10s");
    th_sleep_ms(1200);
    assert_int_equal(th_pg_longf(db, "SELECT attempts FROM steps"), 2);

    clock_advance_cli(db, "10s");
    assert_true(th_engine_wait(db, "SELECT state = 'succeeded' FROM steps", 30));
    th_workers_stop(ws);
    assert_int_equal(th_pg_longf(db, "SELECT attempts FROM steps"), 3);
    assert_int_equal(atomic_load(&flaky_attempts) - before, 3);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM run_log WHERE type = 'step.retrying'"), 2);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM run_log WHERE type = 'step.started'"),
                     3);
    /* The step's row holds its last start; each start before it was moved to the log when the
     * step was claimed again, under the sequence it was read by until then. */
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM run_events WHERE type = 'step.started'"), 2);
    char *types = log_types(db, tenant, run);
    assert_string_equal(types, "run.created,run.started,step.started:1,step.retrying:1,"
                               "step.started:2,step.retrying:2,step.started:3,step.succeeded,"
                               "run.succeeded");
    free(types);
    assert_int_equal(log_cursor_faults(db, tenant, run), 0);
    char *st = th_pg_valuef(
        db,
        "SELECT state || ' ' || (flowd_run_output(id)->'f'->>'attempt') FROM runs WHERE id = %lld",
        run);
    assert_string_equal(st, "succeeded 3");
    free(st);
    free(db);
}

/* ------------------------------------------------------------------------ permanent failure -- */

static void test_permanent_failure(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("q_perm", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"perm\", \"steps\": ["
        " {\"key\": \"boom\", \"kind\": \"flaky\", \"input\": {\"permanent\": true},"
        "  \"retry\": {\"max_attempts\": 5}},"
        " {\"key\": \"after\", \"kind\": \"transform\", \"needs\": [\"boom\"]},"
        " {\"key\": \"last\", \"kind\": \"transform\", \"needs\": [\"after\"]},"
        " {\"key\": \"later\", \"kind\": \"transform\", \"delay\": \"1h\"}]}");
    long before = atomic_load(&flaky_attempts);
    th_engine_enqueue(db, tenant, wf, 1, NULL, 0);
    th_workers *ws = th_workers_start(db, 1, "perm", 0, 0, 0);
    bool done = th_engine_wait(db, "SELECT state <> 'queued' AND state <> 'running' FROM runs", 30);
    /* Give a wrongly scheduled retry the chance to happen before looking. */
    th_sleep_ms(500);
    th_workers_stop(ws);
    assert_true(done);
    char *run = th_pg_value(db, "SELECT state || ' ' || (error->>'code') FROM runs");
    assert_string_equal(run, "failed step_failed");
    free(run);
    char *boom = th_pg_value(db, "SELECT state || ' ' || attempts || ' ' || (error->>'code')"
                                 " FROM steps WHERE key = 'boom'");
    assert_string_equal(boom, "failed 1 broken");
    free(boom);
    assert_int_equal(atomic_load(&flaky_attempts) - before, 1);
    /* Everything that had not started is cancelled, including the delayed independent step. */
    char *rest = th_pg_value(db, "SELECT string_agg(key || '=' || state || '/' || attempts, ','"
                                 " ORDER BY idx) FROM steps WHERE key <> 'boom'");
    assert_string_equal(rest, "after=cancelled/0,last=cancelled/0,later=cancelled/0");
    free(rest);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM run_log WHERE type = 'run.failed'"),
                     1);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM run_log WHERE type = 'step.cancelled'"), 3);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM run_log WHERE type = 'step.retrying'"), 0);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM steps WHERE finished_at IS NULL"), 0);
    free(db);
}

/* ---------------------------------------------------------------------------- delay step -- */

static void test_delay_is_durable_timer(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("q_delay", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"nap\", \"steps\": ["
        " {\"key\": \"wait\", \"kind\": \"delay\", \"input\": {\"for\": \"2h\"}},"
        " {\"key\": \"then\", \"kind\": \"transform\", \"needs\": [\"wait\"],"
        "  \"input\": {\"woke\": \"{{steps.wait.output.until}}\"}}]}");
    th_engine_enqueue(db, tenant, wf, 1, NULL, 0);
    th_workers *ws = th_workers_start(db, 1, "delay", 0, 0, 0);

    /* The delay claims once, sees its time has not come, and goes back to sleep in the queue. */
    assert_true(th_engine_wait(db, "SELECT count(*) = 1 FROM run_log WHERE type = 'step.started'"
                                   " AND step_key = 'wait'", 30));
    assert_true(th_engine_wait(db, "SELECT state = 'ready' FROM steps WHERE key = 'wait'", 30));
    /* Due 2 h after it became ready, to the millisecond the claim reports ready_at in. */
    char *sleeping = th_pg_value(
        db, "SELECT (abs(extract(epoch FROM run_at - ready_at) - 7200) < 0.001)::text || ' ' ||"
            " attempts FROM steps WHERE key = 'wait'");
    assert_string_equal(sleeping, "true 0");
    free(sleeping);
    th_sleep_ms(1200);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM steps WHERE state = 'running'"), 0);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM steps WHERE state = 'succeeded'"), 0);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM run_log WHERE type = 'step.started'"),
                     1);

    free(th_pg_value(db, "SELECT flowd_clock_advance(3600000)"));
    th_sleep_ms(1200);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM steps WHERE state IN ('running', 'succeeded')"), 0);

    free(th_pg_value(db, "SELECT flowd_clock_advance(3600000)"));
    bool done = th_engine_wait(db, "SELECT state = 'succeeded' FROM runs", 30);
    th_workers_stop(ws);
    assert_true(done);
    char *woke = th_pg_value(db, "SELECT abs(extract(epoch FROM (s.output->>'woke')::timestamptz"
                                 " - w.ready_at) - 7200) < 0.001"
                                 " FROM steps s, steps w WHERE s.key = 'then' AND w.key = 'wait'");
    assert_string_equal(woke, "t");
    free(woke);
    assert_int_equal(th_pg_longf(db, "SELECT attempts FROM steps WHERE key = 'wait'"), 1);
    free(db);
}

/* ---------------------------------------------------------------------- the command line -- */

static json_t *status_json(const char *db, long long run)
{
    char id[24];
    snprintf(id, sizeof id, "%lld", run);
    const char *argv[] = {"flowd", "--database", db, "status", id, NULL};
    char *out = NULL, *err = NULL;
    int st = th_flowd_run(argv, NULL, &out, &err);
    if (st != 0)
        fail_msg("flowd status: exit %d: %s", st, err);
    json_error_t jerr;
    json_t *j = json_loads(out, 0, &jerr);
    if (!j)
        fail_msg("flowd status printed no JSON (%s): %s", jerr.text, out);
    free(out);
    free(err);
    return j;
}

static void test_cli_status_and_clock(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("q_cli", &tenant);
    char path[] = "/tmp/flowd-test-wf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    static const char def[] =
        "{\"name\": \"cli\", \"steps\": ["
        " {\"key\": \"first\", \"kind\": \"transform\", \"input\": {\"n\": \"{{input.n}}\"}},"
        " {\"key\": \"second\", \"kind\": \"transform\", \"needs\": [\"first\"]}]}";
    assert_int_equal(write(fd, def, sizeof def - 1), (ssize_t)(sizeof def - 1));
    close(fd);

    const char *enq[] = {"flowd", "--database", db, "enqueue", "--workflow", path,
                         "--input", "{\"n\": 3}", NULL};
    char *out = NULL, *err = NULL;
    assert_int_equal(th_flowd_run(enq, NULL, &out, &err), 0);
    long long run = strtoll(out, NULL, 10);
    assert_true(run > 0);
    free(out);
    free(err);
    unlink(path);

    json_t *j = status_json(db, run);
    assert_int_equal(json_integer_value(json_object_get(j, "id")), run);
    assert_string_equal(json_string_value(json_object_get(j, "workflow")), "cli");
    assert_int_equal(json_integer_value(json_object_get(j, "version")), 1);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "queued");
    json_t *p = json_object_get(j, "progress");
    assert_int_equal(json_integer_value(json_object_get(p, "done")), 0);
    assert_int_equal(json_integer_value(json_object_get(p, "total")), 2);
    assert_int_equal(json_integer_value(json_object_get(p, "percent")), 0);
    json_decref(j);

    th_workers *ws = th_workers_start(db, 1, "cli", 0, 0, 0);
    bool done = th_engine_wait(db, "SELECT state = 'succeeded' FROM runs", 30);
    th_workers_stop(ws);
    assert_true(done);
    j = status_json(db, run);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "succeeded");
    p = json_object_get(j, "progress");
    assert_int_equal(json_integer_value(json_object_get(p, "done")), 2);
    assert_int_equal(json_integer_value(json_object_get(p, "total")), 2);
    assert_int_equal(json_integer_value(json_object_get(p, "percent")), 100);
    json_t *steps = json_object_get(j, "steps");
    assert_int_equal(json_array_size(steps), 2);
    json_t *s0 = json_array_get(steps, 0), *s1 = json_array_get(steps, 1);
    assert_string_equal(json_string_value(json_object_get(s0, "key")), "first");
    assert_string_equal(json_string_value(json_object_get(s1, "key")), "second");
    assert_string_equal(json_string_value(json_object_get(s0, "kind")), "transform");
    assert_string_equal(json_string_value(json_object_get(s0, "state")), "succeeded");
    assert_int_equal(json_integer_value(json_object_get(s0, "attempts")), 1);
    assert_true(json_is_string(json_object_get(s0, "started_at")));
    assert_true(json_is_string(json_object_get(s0, "finished_at")));
    assert_true(json_is_null(json_object_get(s0, "error")));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(s0, "output"), "n")), 3);
    assert_true(json_is_object(json_object_get(s1, "output")));
    assert_true(strcmp(json_string_value(json_object_get(s0, "finished_at")),
                       json_string_value(json_object_get(s1, "started_at"))) <= 0);
    json_decref(j);

    /* Unknown run: an error, not an empty document. */
    const char *missing[] = {"flowd", "--database", db, "status", "999999", NULL};
    out = err = NULL;
    assert_int_equal(th_flowd_run(missing, NULL, &out, &err), 1);
    assert_string_equal(out, "");
    assert_non_null(strstr(err, "not found"));
    free(out);
    free(err);

    free(db);
}

/* A claim's answer: flowd_work carries each definition on the first step of its place only;
 * flowd_cycle, which workers of the previous version call, still answers with every step's
 * definition and the whole template context, needs' outputs included. */
static void test_claim_answers(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("q_answers", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"pair\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\"},"
        " {\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"]}]}");
    th_engine_enqueue(db, tenant, wf, 3, "{\"n\": 7}", 0);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM flowd_cycle('old', NULL, 10, 60000) c"
                                    " WHERE c.def->>'key' = 'a' AND c.ctx->'input'->>'n' = '7'"
                                    " AND c.ctx->'run'->>'workflow' = 'pair'"
                                    " AND (c.ctx->'run'->>'id')::bigint = c.run_id"
                                    " AND c.ctx->'steps' = '{}'"),
                     3);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM flowd_cycle('old', (SELECT jsonb_agg("
                                    "jsonb_build_object('id', id, 'r', run_id, 's', 'ok',"
                                    " 'o', '{\"x\": 1}'::jsonb)) FROM steps WHERE key = 'a'),"
                                    " 10, 60000) c"
                                    " WHERE c.def->>'key' = 'b'"
                                    " AND c.ctx->'steps'->'a'->'output'->>'x' = '1'"),
                     3);

    th_engine_enqueue(db, tenant, wf, 3, "{\"n\": 8}", 0);
    /* three a's: the definition on the first (lowest id) only, the parts on each */
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM (SELECT c.*, min(c.id) OVER () AS first"
                                    " FROM flowd_work('new', NULL, 10, 60000) c) x"
                                    " WHERE (x.def IS NOT NULL) = (x.id = x.first)"
                                    " AND (x.def IS NULL OR x.def->>'key' = 'a')"
                                    " AND x.input->>'n' = '8' AND x.workflow = 'pair'"
                                    " AND x.workflow_id = (SELECT workflow_id FROM runs"
                                    "                       WHERE id = x.run_id)"
                                    " AND x.steps IS NULL"),
                     3);
    free(db);
}

/* The step path of one-step runs, from this transaction's own counts, read in the statement that
 * works: starting a run changes no column an index of runs reads (migrations/0042), so the claim's
 * update of its runs (queued -> running) is HOT, adding no index entries; finishing steps nothing
 * depends on fetches each step once, for its update (flowd_steps_finished gets the rest from it). */
static void test_one_step_path(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("q_path", &tenant);
    long long wf = th_engine_register(
        db, tenant, "{\"name\": \"one\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\"}]}");
    th_engine_enqueue(db, tenant, wf, 3, "{}", 0);
    char *got = th_pg_value(db, "SELECT format('%s claimed, %s updated, %s hot', c.n,"
                                " pg_stat_get_xact_tuples_updated('runs'::regclass),"
                                " pg_stat_get_xact_tuples_hot_updated('runs'::regclass))"
                                " FROM (SELECT count(*) AS n FROM flowd_work('one', NULL, 10, 60000)) c");
    assert_string_equal(got, "3 claimed, 3 updated, 3 hot");
    free(got);
    char *results = th_pg_value(db, "SELECT jsonb_agg(jsonb_build_object('id', id, 'r', run_id,"
                                    " 's', 'ok', 'o', '{}'::jsonb)) FROM steps");
    PGconn *c = th_pgc_open(db);
    /* a row read by a sequential scan counts as returned, by an index scan as fetched */
    got = th_pgc_str(c, "SELECT format('%s steps read', pg_stat_get_xact_tuples_returned('steps'::regclass)"
                        " + pg_stat_get_xact_tuples_fetched('steps'::regclass))"
                        " FROM (SELECT count(*) FROM flowd_work('one', $1, 0, 60000)) c",
                     TH_P(results));
    assert_string_equal(got, "3 steps read");
    free(got);
    got = th_pg_value(db, "SELECT count(*) || ' runs succeeded' FROM runs WHERE state = 'succeeded'");
    assert_string_equal(got, "3 runs succeeded");
    free(got);
    /* Routine transitions are read from the rows they changed: the log keeps only what the rows
     * cannot tell (here each run's run.created), and readers see every event in order. */
    assert_three_runs_logged_from_rows(db, tenant);
    PQfinish(c);
    free(results);
    free(db);
}

/* Pure steps (transform) are claimed with a row lock only and written once, finished, in the
 * claim's transaction: this transaction's own counts show one update per step, and the steps stay
 * ready to everyone else until it commits. */
static void test_pure_step_written_once(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("q_pure", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"one\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\","
        " \"input\": {\"n\": \"{{input.n}}\"}}]}");
    th_engine_enqueue(db, tenant, wf, 3, "{\"n\": 4}", 0);
    PGconn *c = th_pgc_open(db);
    free(th_pgc_str(c, "BEGIN", 0, NULL));
    th_pgc_expect(c, "3 pure, attempt 1, 0 updated",
                  "SELECT format('%s pure, attempt %s, %s updated', count(*) FILTER (WHERE pure),"
                  " max(attempts), pg_stat_get_xact_tuples_updated('steps'::regclass))"
                  " FROM flowd_work('w', NULL, 10, 60000, '{transform}')",
                  0, NULL);
    /* another claimer skips the locked steps; they are still ready, no attempt counted */
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM flowd_work('x', NULL, 10, 60000)"), 0);
    assert_int_equal(
        th_pg_long(db, "SELECT count(*) FROM steps WHERE state = 'ready' AND attempts = 0"), 3);
    free(th_pgc_str(c, "SELECT flowd_finish_pure('w', (SELECT jsonb_agg(jsonb_build_object('id',"
                       " id, 'r', run_id, 's', 'ok', 'o', '{\"n\": \"4\"}'::jsonb)) FROM steps))",
                    0, NULL));
    th_pgc_expect(c, "3", "SELECT pg_stat_get_xact_tuples_updated('steps'::regclass)", 0, NULL);
    free(th_pgc_str(c, "COMMIT", 0, NULL));
    PQfinish(c);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM steps WHERE state = 'succeeded'"
                                    " AND attempts = 1 AND output = '{\"n\": \"4\"}'"
                                    " AND lease_owner IS NULL AND started_at IS NOT NULL"),
                     3);
    /* the log reads in order, every event from the rows but run.created */
    assert_three_runs_logged_from_rows(db, tenant);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs WHERE state = 'succeeded'"
                                    " AND steps_done = 1 AND started_at IS NOT NULL"),
                     3);
    free(db);
}

/* A claim of pure steps that never commits (its worker died between the claim and the COMMIT,
 * before or after writing the outcomes) leaves the steps ready with no attempt counted: the next
 * worker runs each once. */
static void test_pure_claim_lost(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("q_pure_lost", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"two\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\"},"
        " {\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"]}]}");
    th_engine_enqueue(db, tenant, wf, 4, "{}", 0);
    PGconn *c = th_pgc_open(db);
    free(th_pgc_str(c, "BEGIN", 0, NULL));
    assert_int_equal(th_pgc_ll(c, "SELECT count(*) FROM flowd_work('w', NULL, 2, 60000,"
                                  " '{transform}') WHERE pure",
                               0, NULL),
                     2);
    PQfinish(c); /* the connection goes: the server rolls the claim back */
    c = th_pgc_open(db);
    free(th_pgc_str(c, "BEGIN", 0, NULL));
    long long pid = th_pgc_ll(c, "SELECT pg_backend_pid()", 0, NULL);
    free(th_pgc_str(c, "SELECT flowd_finish_pure('w', (SELECT jsonb_agg(jsonb_build_object('id', id,"
                       " 'r', run_id, 's', 'ok', 'o', '{}'::jsonb)) FROM flowd_work('w', NULL, 4,"
                       " 60000, '{transform}')))",
                    0, NULL));
    /* killed with the outcomes written, before COMMIT */
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM (SELECT pg_terminate_backend(%lld)) x",
                                 pid),
                     1);
    PQfinish(c);
    /* a worker that goes silent mid-way (cut off from the server) holds the rows for a lease at
     * most: the server ends its session */
    c = th_pgc_open(db);
    free(th_pgc_str(c, "BEGIN", 0, NULL));
    pid = th_pgc_ll(c, "SELECT pg_backend_pid()", 0, NULL);
    assert_int_equal(th_pgc_ll(c, "SELECT count(*) FROM flowd_work('w', NULL, 4, 300,"
                                  " '{transform}') WHERE pure",
                               0, NULL),
                     4);
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = %lld", pid);
    assert_true(th_engine_wait(db, sql, 10));
    PQfinish(c);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM steps WHERE attempts = 0"
                                    " AND state IN ('ready', 'pending')"),
                     8);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM run_log WHERE type <> 'run.created'"), 0);

    long before = atomic_load(&transforms_here);
    th_workers *ws = th_workers_start(db, 2, "pl", 0, 0, 0);
    bool done = th_engine_wait(db, "SELECT count(*) = 4 FROM runs WHERE state = 'succeeded'", 30);
    th_workers_stop(ws);
    assert_true(done);
    assert_int_equal(atomic_load(&transforms_here) - before, 8);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM steps WHERE state = 'succeeded'"
                                    " AND attempts = 1 AND interruptions = 0"),
                     8);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM (SELECT run_id, step_key, type"
                                    " FROM run_log WHERE type LIKE 'step.%'"
                                    " GROUP BY 1, 2, 3 HAVING count(*) = 1) x"),
                     16);
    free(db);
}

/* Workers write a pure step's row once: an update counter on steps (a statement trigger over the
 * updated rows) sees every step updated exactly once, by the update that finished it. */
static void test_pure_step_workers_write_once(void **state)
{
    (void)state;
    enum { RUNS = 300 };
    long long tenant;
    char *db = th_engine_db("q_pure_once", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"one\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\","
        " \"input\": {\"n\": \"{{input.n}}\"}}]}");
    free(th_pg_value(db, "CREATE TABLE step_updates (id bigint, state text)"));
    free(th_pg_value(db, "CREATE FUNCTION test_step_updates() RETURNS trigger LANGUAGE plpgsql AS"
                         " $$ BEGIN INSERT INTO step_updates SELECT id, state FROM n; RETURN NULL;"
                         " END $$"));
    free(th_pg_value(db, "CREATE TRIGGER step_updates AFTER UPDATE ON steps REFERENCING NEW TABLE"
                         " AS n FOR EACH STATEMENT EXECUTE FUNCTION test_step_updates()"));
    th_engine_enqueue(db, tenant, wf, RUNS, "{\"n\": 1}", 100);
    th_workers *ws = th_workers_start(db, 2, "po", 50, 0, 0);
    bool done = th_engine_wait(
        db, "SELECT count(*) = 300 FROM runs WHERE state = 'succeeded'", 60);
    th_workers_stop(ws);
    assert_true(done);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM step_updates"), RUNS);
    assert_int_equal(th_pg_long(db, "SELECT count(DISTINCT id) FROM step_updates"
                                    " WHERE state = 'succeeded'"),
                     RUNS);
    free(db);
}

/* A reader's cursor neither skips nor repeats an event while claims of one run's steps commit out
 * of order: b and c become ready together; one worker's claim of b is still open when another
 * claims, and a reader reads in between. A claim takes the run's positions only while it holds the
 * run, as every other writer of its log does, so the second claim leaves c for later instead of
 * taking a position after b's that would commit (and be read) first. */
static void test_claims_keep_log_order(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("q_log_order", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"fork\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\"},"
        " {\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"]},"
        " {\"key\": \"c\", \"kind\": \"transform\", \"needs\": [\"a\"]}]}");
    long long run = th_engine_enqueue(db, tenant, wf, 1, "{}", 0);
    PGconn *w1 = th_pgc_open(db), *w2 = th_pgc_open(db), *reader = th_pgc_open(db);
    const char *claim = "SELECT count(*) FROM flowd_work($1, NULL, 1, 60000)";
    const char *ok_all = "SELECT count(*) FROM flowd_work($1, (SELECT jsonb_agg(jsonb_build_object("
                         "'id', id, 'r', run_id, 's', 'ok', 'o', '{}'::jsonb)) FROM steps"
                         " WHERE state = 'running' AND lease_owner = $1), 0, 60000)";
    assert_int_equal(th_pgc_ll(w1, claim, TH_P("w1")), 1); /* a */
    th_pgc_ll(w1, ok_all, TH_P("w1"));
    free(th_pgc_str(w1, "BEGIN", 0, NULL));
    assert_int_equal(th_pgc_ll(w1, claim, TH_P("w1")), 1); /* b, not committed yet */
    th_pgc_ll(w2, claim, TH_P("w2"));                      /* c's run is held: nothing */
    const char *read = "SELECT flowd_run_events_json($1, $2, $3, 100)";
    th_num_s t = th_num(tenant), r = th_num(run);
    char *first = th_pgc_str(reader, read, TH_P(t.s, r.s, "0"));
    free(th_pgc_str(w1, "COMMIT", 0, NULL));
    th_pgc_ll(w2, claim, TH_P("w2")); /* c, now */
    th_pgc_ll(w1, ok_all, TH_P("w1"));
    th_pgc_ll(w2, ok_all, TH_P("w2"));

    /* what the reader gets with its cursor after the first read, appended, is the whole log */
    json_t *a = json_loads(first, 0, NULL);
    json_t *seen = json_object_get(a, "events");
    long long last = json_integer_value(
        json_object_get(json_array_get(seen, json_array_size(seen) - 1), "seq"));
    char *rest_text = th_pgc_str(reader, read, TH_P(t.s, r.s, th_num(last).s));
    char *all_text = th_pgc_str(reader, read, TH_P(t.s, r.s, "0"));
    json_t *rest = json_loads(rest_text, 0, NULL), *all = json_loads(all_text, 0, NULL);
    json_array_extend(seen, json_object_get(rest, "events"));
    assert_true(json_equal(seen, json_object_get(all, "events")));
    assert_int_equal(json_array_size(seen), 9); /* created, started, a, b, c, succeeded */
    assert_true(json_is_true(json_object_get(all, "finished")));
    json_decref(a);
    json_decref(rest);
    json_decref(all);
    free(first);
    free(rest_text);
    free(all_text);
    PQfinish(w1);
    PQfinish(w2);
    PQfinish(reader);
    free(db);
}

int main(void)
{
    eng_mem_init();
    eng_log_init();
    eng_step_register_builtins();
    eng_step_register(&counting_transform);
    eng_step_register(&flaky_kind);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_diamond_order),
        cmocka_unit_test(test_claim_answers),
        cmocka_unit_test(test_one_step_path),
        cmocka_unit_test(test_pure_step_written_once),
        cmocka_unit_test(test_pure_claim_lost),
        cmocka_unit_test(test_pure_step_workers_write_once),
        cmocka_unit_test(test_claims_keep_log_order),
        cmocka_unit_test(test_exactly_once_threads_and_processes),
        cmocka_unit_test(test_kill9_loses_nothing),
        cmocka_unit_test(test_retry_backoff),
        cmocka_unit_test(test_permanent_failure),
        cmocka_unit_test(test_delay_is_durable_timer),
        cmocka_unit_test(test_cli_status_and_clock),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
