/* tests/integration/test_chaos.c: the engine's promises while PostgreSQL misbehaves.
 *
 * Three faults, each while real work runs: the workers' connections are terminated
 * (pg_terminate_backend), the server restarts (pg_ctl restart -m fast), and the server is away for
 * a few seconds (stop, wait, start). After each, everything must complete without restarting flowd,
 * every step must have succeeded exactly once as far as the database can tell, and an attempt may
 * be counted twice only where a lease expired. The restart and outage run on a private cluster
 * that the test starts in a temporary directory: the fixture cluster is shared by tests running in
 * parallel and must never stop.
 *
 * The kinds run by the in-process workers count their executions per step id (ids start at 1 in a
 * fresh database), so a step that really ran twice is seen even when the database recorded it once.
 */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <ev.h>
#include <jansson.h>
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

enum { MAX_STEP_ID = 32768 };

static atomic_int execs[MAX_STEP_ID];  /* attempts started here, per step id */
static atomic_long execs_out_of_range; /* step ids past MAX_STEP_ID: the test cannot judge them */
static atomic_long naps_finished;      /* "nap" attempts that reported their outcome */

static void count_exec(eng_step_ctx *ctx)
{
    int64_t id = eng_step_id(ctx);
    if (id > 0 && id < MAX_STEP_ID)
        atomic_fetch_add(&execs[id], 1);
    else
        atomic_fetch_add(&execs_out_of_range, 1);
}

static void reset_execs(void)
{
    for (int i = 0; i < MAX_STEP_ID; i++)
        atomic_store(&execs[i], 0);
    atomic_store(&execs_out_of_range, 0);
    atomic_store(&naps_finished, 0);
}

/* Replaces the built-in transform (same output) so this process's executions are counted. */
static void counting_transform_start(eng_step_ctx *ctx)
{
    count_exec(ctx);
    eng_step_succeed(ctx, json_deep_copy(eng_step_input(ctx)));
}

static const eng_step_kind counting_transform = {
    .name = "transform",
    .default_max_attempts = 1,
    .start = counting_transform_start,
};

/* "nap": succeeds after 200..3200 ms (spread by step id), so attempts are in flight for a while
 * and some finish while the database is away, even when a fast shutdown takes 1.5 s on a loaded
 * machine (with naps of at most 1.4 s, every nap in flight had finished before the outage began). */
typedef struct nap {
    ev_timer t;
    eng_step_ctx *ctx;
} nap;

static void nap_done(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    nap *n = ENG_CONTAINER_OF(t, nap, t);
    eng_step_ctx *ctx = n->ctx;
    free(n);
    atomic_fetch_add(&naps_finished, 1);
    eng_step_succeed(ctx, json_pack("{s:I}", "step", (json_int_t)eng_step_id(ctx)));
}

static void nap_start(eng_step_ctx *ctx)
{
    count_exec(ctx);
    nap *n = eng_xcalloc(1, sizeof *n);
    n->ctx = ctx;
    double s = (200 + (double)((eng_step_id(ctx) * 37) % 3000)) / 1000.0;
    ev_timer_init(&n->t, nap_done, s, 0.);
    ev_timer_start(eng_step_loop(ctx), &n->t);
    eng_step_set_data(ctx, n);
}

static void nap_cancel(eng_step_ctx *ctx)
{
    nap *n = eng_step_data(ctx);
    ev_timer_stop(eng_step_loop(ctx), &n->t);
    free(n);
}

static const eng_step_kind nap_kind = {
    .name = "nap",
    .default_max_attempts = 3,
    .start = nap_start,
    .cancel = nap_cancel,
};

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static bool wait_for(const char *db, double timeout_s, const char *fmt, ...) ENG_PRINTF(3, 4);
static bool wait_for(const char *db, double timeout_s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = NULL;
    if (vasprintf(&sql, fmt, ap) < 0)
        abort();
    va_end(ap);
    bool ok = th_engine_wait(db, sql, timeout_s);
    free(sql);
    return ok;
}

/* ----------------------------------------------------------------------- private cluster -- */

/* ----------------------------------------------------------------------------- checks -- */

static const char chain2_def[] =
    "{\"name\": \"chain2\", \"steps\": ["
    " {\"key\": \"s1\", \"kind\": \"transform\", \"input\": {\"n\": \"{{input.n}}\"},"
    "  \"retry\": {\"max_attempts\": 3}},"
    " {\"key\": \"s2\", \"kind\": \"transform\", \"needs\": [\"s1\"],"
    "  \"input\": {\"n\": \"{{steps.s1.output.n}}\"}, \"retry\": {\"max_attempts\": 3}}]}";

/* What must hold after any fault once all runs are done: every step succeeded once, and every
 * attempt beyond the first is explained by an expired lease. Returns the steps whose lease expired.
 */
static long assert_once(const char *db, long runs, long steps)
{
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM runs WHERE state = 'succeeded'"), runs);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM steps WHERE state = 'succeeded'"), steps);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM steps"), steps);
    /* one step.succeeded event per step */
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM run_log WHERE type = 'step.succeeded'"),
                     steps);
    assert_int_equal(th_pg_longf(db,
                            "SELECT count(*) FROM (SELECT run_id, step_key FROM run_log"
                            " WHERE type = 'step.succeeded' GROUP BY 1, 2 HAVING count(*) <> 1) x"),
                     0);
    /* the only retries are lease expiries; nothing failed */
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM run_log WHERE type IN ('step.failed',"
                                " 'run.failed') OR (type = 'step.retrying'"
                                " AND data->>'code' IS DISTINCT FROM 'lease_expired')"),
                     0);
    /* attempts = 1 + the step's lease expiries, and each attempt has its step.started */
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM steps s WHERE s.attempts <> 1 + (SELECT count(*)"
                   " FROM run_log e WHERE e.run_id = s.run_id AND e.step_key = s.key"
                   " AND e.type = 'step.retrying')"
                   " OR s.attempts <> (SELECT count(*) FROM run_log e WHERE e.run_id = s.run_id"
                   " AND e.step_key = s.key AND e.type = 'step.started')"),
        0);
    return th_pg_longf(db, "SELECT count(*) FROM steps WHERE attempts > 1");
}

/* Executions counted here: none past the table, none beyond the attempts the database recorded for
 * the step (a second execution needs an expired lease). Returns the steps executed more than once.
 */
static long assert_execs(const char *db, long max_id, bool all_here)
{
    assert_int_equal(atomic_load(&execs_out_of_range), 0);
    long twice = 0, never = 0;
    for (long id = 1; id <= max_id; id++) {
        int n = atomic_load(&execs[id]);
        if (n == 0)
            never++;
        if (n > 1) {
            twice++;
            long attempts = th_pg_longf(db, "SELECT attempts FROM steps WHERE id = %ld", id);
            if (attempts < n)
                fail_msg("step %ld ran %d times here with %ld attempts recorded", id, n, attempts);
        }
    }
    if (all_here)
        assert_int_equal(never, 0);
    return twice;
}

/* ----------------------------------------------------------- 1. pg_terminate_backend -- */

static void test_terminate_worker_connections(void **state)
{
    (void)state;
    enum { RUNS = 5000, STEPS = 2 * RUNS, KILLS = 8 };
    reset_execs();
    long long tenant;
    char *db = th_engine_db("chaos_term", &tenant);
    long long wf = th_engine_register(db, tenant, chain2_def);
    th_engine_enqueue(db, tenant, wf, RUNS, "{\"n\": 3}", 1000);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "chterm-%d", (int)getpid());
    /* small batches: many round trips, so a termination often lands on one in flight */
    long long t0 = th_now_ms();
    th_workers *ws = th_workers_start(db, 2, prefix, 50, 0, 3000);

    int midrun = 0, terminated = 0;
    unsigned seed = (unsigned)getpid();
    for (int k = 0; k < KILLS; k++) {
        /* both workers are back before the next blow, or it would hit nothing */
        assert_true(wait_for(db, 30,
                             "SELECT count(*) = 2 FROM pg_stat_activity"
                             " WHERE application_name LIKE '%s-%%'",
                             prefix));
        sleep_ms(20 + rand_r(&seed) % 80);
        long done = th_pg_longf(db, "SELECT count(*) FROM steps WHERE state = 'succeeded'");
        long n = th_pg_longf(db,
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                        " FROM pg_stat_activity WHERE application_name LIKE '%s-%%'",
                        prefix);
        if (done >= STEPS)
            break;
        midrun++;
        terminated += (int)n;
    }
    bool finished =
        wait_for(db, 60, "SELECT count(*) = %d FROM runs WHERE state = 'succeeded'", RUNS);
    long long t1 = th_now_ms();
    th_workers_stop(ws);
    assert_true(finished);
    long expired = assert_once(db, RUNS, STEPS);
    long twice = assert_execs(db, STEPS, true);
    print_message("terminate: %d blows mid-run, %d connections terminated, %d steps in %lld ms;"
                  " %ld steps with a lease expiry, %ld executed twice\n",
                  midrun, terminated, STEPS, t1 - t0, expired, twice);
    /* A terminated worker is back within ~50 ms and its leases last 3 s: no outcome may be lost
     * and run again. (A lease may expire only on a claim whose answer was lost with the
     * connection after it committed: the step never ran here, and the reaper gives it back.) */
    assert_int_equal(twice, 0);
    /* the faults must have landed on running work, or nothing was tested */
    assert_true(midrun >= 3);
    /* most blows hit both workers; one may find a connection already on its way out */
    assert_true(terminated >= midrun + 1);
    free(db);
}

/* ------------------------------------------------------------------ 2. server restart -- */

static void test_server_restart(void **state)
{
    th_cluster *c = *state;
    enum { RUNS = 5000, STEPS = 2 * RUNS };
    reset_execs();
    long long tenant;
    char *db = th_engine_db_at(c->dir, "chaos_restart", &tenant);
    long long wf = th_engine_register(db, tenant, chain2_def);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "chrst-%d", (int)getpid());
    /* Leases of 10 s outlast the restart and the reconnection backoff (at most 2 s): an attempt
     * counted twice here would be a step the engine lost track of. */
    pid_t serve = th_serve_spawn(db, 2, 10000);
    th_workers *ws = th_workers_start(db, 2, prefix, 50, 0, 10000);
    /* the serve workers' application_name is their owner, "host:pid:i" */
    const char *all_connected =
        "SELECT count(*) FILTER (WHERE application_name LIKE '%s-%%') = 2"
        " AND count(*) FILTER (WHERE application_name LIKE '%%:%d:%%') = 2"
        " AND bool_and(backend_start >= pg_postmaster_start_time()) FROM pg_stat_activity";
    assert_true(wait_for(db, 30, all_connected, prefix, (int)serve));

    long long t0 = th_now_ms();
    th_engine_enqueue(db, tenant, wf, RUNS, "{\"n\": 4}", 1000);
    assert_true(
        wait_for(db, 60, "SELECT count(*) >= %d FROM steps WHERE state = 'succeeded'", STEPS / 10));
    long at_restart = th_pg_longf(db, "SELECT count(*) FROM steps WHERE state = 'succeeded'");
    long long r0 = th_now_ms();
    assert_int_equal(th_cluster_ctl(c, "restart"), 0);
    long long r1 = th_now_ms();
    /* every worker is back on the new server, the spawned one without being restarted */
    bool reconnected = wait_for(db, 30, all_connected, prefix, (int)serve);
    long long r2 = th_now_ms();
    bool finished =
        wait_for(db, 60, "SELECT count(*) = %d FROM runs WHERE state = 'succeeded'", RUNS);
    long long t1 = th_now_ms();
    long after = th_pg_longf(db, "SELECT count(*) FROM steps WHERE state = 'succeeded'"
                            " AND finished_at >= pg_postmaster_start_time()");
    int wst = 0;
    bool serve_alive = waitpid(serve, &wst, WNOHANG) == 0;
    th_workers_stop(ws);
    int st = serve_alive ? th_serve_kill(serve, SIGTERM) : wst;
    assert_true(serve_alive);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_true(reconnected);
    assert_true(finished);
    long expired = assert_once(db, RUNS, STEPS);
    long twice = assert_execs(db, STEPS, false);
    long here = 0;
    for (long id = 1; id <= STEPS; id++)
        here += atomic_load(&execs[id]) > 0;
    print_message("restart: %ld of %d steps done at the restart (%lld ms), workers back %lld ms"
                  " later, %ld steps after it, all in %lld ms; %ld ran here; %ld steps with a"
                  " lease expiry, %ld executed twice\n",
                  at_restart, STEPS, r1 - r0, r2 - r1, after, t1 - t0, here, expired, twice);
    assert_int_equal(expired, 0);
    assert_int_equal(twice, 0);
    /* the restart landed mid-run and both kinds of worker took part */
    assert_true(at_restart < STEPS);
    assert_true(after > 0);
    assert_true(here > 0 && here < STEPS);
    free(db);
}

/* -------------------------------------------------------- 3. database away for seconds -- */

static void test_outage_keeps_outcomes(void **state)
{
    th_cluster *c = *state;
    enum { RUNS = 400, OUTAGE_MS = 3000 };
    reset_execs();
    long long tenant;
    char *db = th_engine_db_at(c->dir, "chaos_outage", &tenant);
    long long wf =
        th_engine_register(db, tenant,
                           "{\"name\": \"naps\", \"steps\": [{\"key\": \"z\", \"kind\": \"nap\","
                           " \"retry\": {\"max_attempts\": 3}}]}");
    char prefix[64];
    snprintf(prefix, sizeof prefix, "chout-%d", (int)getpid());
    /* The lease (15 s, renewed every 5 s) outlives the outage with room to spare: a step whose
     * lease expired would rightly run again, and this test is about the ones that must not. */
    th_workers *ws = th_workers_start(db, 2, prefix, 0, 80, 15000);
    assert_true(wait_for(db, 30,
                         "SELECT count(*) = 2 FROM pg_stat_activity"
                         " WHERE application_name LIKE '%s-%%'",
                         prefix));
    th_engine_enqueue(db, tenant, wf, RUNS, NULL, 0);
    assert_true(wait_for(db, 30, "SELECT count(*) >= 40 FROM steps WHERE state = 'succeeded'"));

    long running_at_stop = th_pg_longf(db, "SELECT count(*) FROM steps WHERE state = 'running'");
    long long s0 = th_now_ms();
    assert_int_equal(th_cluster_ctl(c, "stop"), 0);
    long before = atomic_load(&naps_finished);
    long long s1 = th_now_ms();
    sleep_ms(OUTAGE_MS);
    long during = atomic_load(&naps_finished) - before;
    assert_int_equal(th_cluster_ctl(c, "start"), 0);
    long long s2 = th_now_ms();

    bool reconnected = wait_for(db, 30,
                                "SELECT count(*) = 2 FROM pg_stat_activity"
                                " WHERE application_name LIKE '%s-%%'",
                                prefix);
    long long s3 = th_now_ms();
    bool finished =
        wait_for(db, 60, "SELECT count(*) = %d FROM runs WHERE state = 'succeeded'", RUNS);
    th_workers_stop(ws);
    assert_true(reconnected);
    assert_true(finished);
    /* the outcomes that finished while the database was away arrived after it came back */
    long reported_after = th_pg_longf(db, "SELECT count(*) FROM steps WHERE state = 'succeeded'"
                                     " AND finished_at >= pg_postmaster_start_time()");
    print_message("outage: %ld running at the stop (%lld ms), %ld finished in the %lld ms outage,"
                  " workers back %lld ms after the start; %ld reported after it\n",
                  running_at_stop, s1 - s0, during, s2 - s1, s3 - s2, reported_after);
    assert_true(during > 0);
    assert_true(reported_after >= during);
    /* nothing ran twice and no lease expired: the outage was shorter than the lease */
    assert_int_equal(assert_once(db, RUNS, RUNS), 0);
    assert_int_equal(assert_execs(db, RUNS, true), 0);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM steps WHERE attempts <> 1"), 0);
    free(db);
}

int main(void)
{
    eng_mem_init();
    eng_log_init();
    eng_step_register_builtins();
    eng_step_register(&counting_transform);
    eng_step_register(&nap_kind);
    signal(SIGPIPE, SIG_IGN);
    /* FLOWD_TEST_FILTER=test_server_restart runs one scenario (e.g. repeatedly, by hand) */
    if (getenv("FLOWD_TEST_FILTER"))
        cmocka_set_test_filter(getenv("FLOWD_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_terminate_worker_connections),
        cmocka_unit_test_setup_teardown(test_server_restart, th_cluster_setup,
                                        th_cluster_teardown),
        cmocka_unit_test_setup_teardown(test_outage_keeps_outcomes, th_cluster_setup,
                                        th_cluster_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
