/* tests/integration/test_fairness.c: per-tenant caps on running steps.
 *
 * Tenant A enqueues a big batch of slow steps and has max_running set; tenant B enqueues a little
 * work after it. B's work must finish while A's batch is still far from done (A's backlog does not
 * starve B), and A never runs much more than its cap at once. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <ev.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"

enum { A_RUNS = 200, B_RUNS = 20, A_CAP = 5, STEP_MS = 50 };

/* "slow": succeeds STEP_MS after it starts, from a timer on the worker's loop. */
typedef struct slow_attempt {
    ev_timer timer;
    eng_step_ctx *ctx;
} slow_attempt;

static void slow_done(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    slow_attempt *a = (slow_attempt *)t;
    eng_step_ctx *ctx = a->ctx;
    eng_step_set_data(ctx, NULL);
    free(a);
    eng_step_succeed(ctx, NULL);
}

static void slow_start(eng_step_ctx *ctx)
{
    slow_attempt *a = eng_xcalloc(1, sizeof *a);
    a->ctx = ctx;
    ev_timer_init(&a->timer, slow_done, STEP_MS / 1000.0, 0.);
    ev_timer_start(eng_step_loop(ctx), &a->timer);
    eng_step_set_data(ctx, a);
}

static void slow_cancel(eng_step_ctx *ctx)
{
    slow_attempt *a = eng_step_data(ctx);
    if (!a)
        return;
    ev_timer_stop(eng_step_loop(ctx), &a->timer);
    eng_step_set_data(ctx, NULL);
    free(a);
}

static const eng_step_kind slow_kind = {
    .name = "slow",
    .default_max_attempts = 1,
    .start = slow_start,
    .cancel = slow_cancel,
};

static const char slow_def[] = "{\"name\": \"slow\", \"steps\": [{\"key\": \"s\", \"kind\": \"slow\"}]}";

static void test_capped_tenant_does_not_starve_others(void **state)
{
    (void)state;
    long long a;
    char *db = th_engine_db("fair", &a);
    long long b = th_pg_long(db, "INSERT INTO tenants (name) VALUES ('b') RETURNING id");
    assert_int_equal(th_pg_longf(db, "UPDATE tenants SET max_running = %d WHERE id = %lld RETURNING 1",
                                 A_CAP, a),
                     1);
    long long wf_a = th_engine_register(db, a, slow_def);
    long long wf_b = th_engine_register(db, b, slow_def);
    th_engine_enqueue(db, a, wf_a, A_RUNS, NULL, 0);
    th_engine_enqueue(db, b, wf_b, B_RUNS, NULL, 0);

    th_workers *ws = th_workers_start(db, 2, "fair", 0, 100, 0);
    long max_a_running = 0, a_done_when_b_done = -1;
    long long deadline = th_now_ms() + 60000;
    while (th_now_ms() < deadline) {
        long running = th_pg_longf(db, "SELECT count(*) FROM steps WHERE tenant_id = %lld"
                                       " AND state = 'running'", a);
        if (running > max_a_running)
            max_a_running = running;
        long a_done = th_pg_longf(db, "SELECT count(*) FROM runs WHERE tenant_id = %lld"
                                      " AND state = 'succeeded'", a);
        if (a_done_when_b_done < 0 &&
            th_pg_longf(db, "SELECT count(*) FROM runs WHERE tenant_id = %lld"
                            " AND state = 'succeeded'", b) == B_RUNS)
            a_done_when_b_done = a_done;
        if (a_done == A_RUNS)
            break;
        usleep(10000);
    }
    th_workers_stop(ws);
    fprintf(stderr, "tenant A ran at most %ld at once (cap %d); %ld of its %d runs were done when"
                    " all of B's %d were\n", max_a_running, A_CAP, a_done_when_b_done, A_RUNS,
            B_RUNS);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM runs WHERE tenant_id = %lld"
                                     " AND state = 'succeeded'", a), A_RUNS);
    /* B finished while A's backlog was mostly still waiting */
    assert_true(a_done_when_b_done >= 0);
    assert_true(a_done_when_b_done < A_RUNS / 2);
    assert_true(max_a_running <= A_CAP);
    free(db);
}

int main(void)
{
    eng_mem_init();
    eng_log_init();
    eng_step_register_builtins();
    eng_step_register(&slow_kind);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_capped_tenant_does_not_starve_others),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
