/* tests/integration/test_graph.c: workflow-graph semantics against a real PostgreSQL: wait_event
 * (data, timeout and branching, early events), map fan-out (10,000 items, failures, concurrency),
 * concurrency keys, retry and cancel of runs, templates, and bad definitions refused by the CLI.
 *
 * This binary's own kinds:
 *   slow   finishes {"ms": N} milliseconds later from an ev_timer (so intervals can overlap)
 *   hang   never finishes by itself; its cancel callback counts that it was told to stop
 *   once   fails permanently while once_budget > 0, then succeeds
 *   boom   fails permanently when its input has "fail": true */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <ev.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"

/* ------------------------------------------------------------------------------ helpers -- */

static void advance(PGconn *c, const char *interval)
{
    free(th_pgc_str(c,
                    "SELECT flowd_clock_advance((extract(epoch FROM $1::interval) * 1000)::bigint)",
                    TH_P(interval)));
}

/* Waits until run is over (up to 30 s), then stops the workers; fails the test when it is not. */
static void finish_run(PGconn *c, long long run, th_workers *ws)
{
    bool done = th_pgc_wait(c, "SELECT state NOT IN ('queued', 'running') FROM runs WHERE id = $1",
                            TH_P(th_num(run).s), 30);
    th_workers_stop(ws);
    assert_true(done);
}

/* Waits (up to 30 s) until the run's step w is waiting for its event. */
static void wait_for_wait(PGconn *c, long long run)
{
    assert_true(th_pgc_wait(c,
                            "SELECT state = 'waiting' FROM steps WHERE run_id = $1 AND key = 'w'",
                            TH_P(th_num(run).s), 30));
}

static void expect_run_state(PGconn *c, long long run, const char *state)
{
    th_pgc_expect(c, state, "SELECT state FROM runs WHERE id = $1", TH_P(th_num(run).s));
}

/* The output of the run's step key, as text. */
static void expect_output(PGconn *c, long long run, const char *key, const char *json)
{
    th_pgc_expect(c, json, "SELECT output::text FROM steps WHERE run_id = $1 AND key = $2",
                  TH_P(th_num(run).s, key));
}

/* Runs the flowd binary against db; returns its exit status, stdout and stderr (caller frees). */
static int flowd(const char *db, char **out, char **err, const char *a1, const char *a2,
                 const char *a3, const char *a4, const char *a5)
{
    const char *argv[] = {"flowd", "--database", db, a1, a2, a3, a4, a5, NULL};
    return th_flowd_run(argv, NULL, out, err);
}

/* ---------------------------------------------------------------------- test step kinds -- */

typedef struct {
    ev_timer t;
    eng_step_ctx *ctx;
} slow_state;

static void slow_fire(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    slow_state *s = (slow_state *)t;
    eng_step_ctx *ctx = s->ctx;
    free(s);
    eng_step_succeed(ctx, json_deep_copy(eng_step_input(ctx)));
}

static void slow_start(eng_step_ctx *ctx)
{
    slow_state *s = eng_xcalloc(1, sizeof *s);
    s->ctx = ctx;
    double ms = (double)json_integer_value(json_object_get(eng_step_input(ctx), "ms"));
    ev_timer_init(&s->t, slow_fire, ms / 1000.0, 0.);
    ev_timer_start(eng_step_loop(ctx), &s->t);
    eng_step_set_data(ctx, s);
}

static void slow_cancel(eng_step_ctx *ctx)
{
    slow_state *s = eng_step_data(ctx);
    ev_timer_stop(eng_step_loop(ctx), &s->t);
    free(s);
}

static const eng_step_kind slow_kind = {
    .name = "slow", .default_max_attempts = 1, .start = slow_start, .cancel = slow_cancel};

static atomic_int hang_started, hang_cancelled;

static void hang_start(eng_step_ctx *ctx)
{
    atomic_fetch_add(&hang_started, 1);
    eng_step_set_data(ctx, eng_xstrdup("held until cancelled"));
}

static void hang_cancel(eng_step_ctx *ctx)
{
    free(eng_step_data(ctx));
    atomic_fetch_add(&hang_cancelled, 1);
}

static const eng_step_kind hang_kind = {
    .name = "hang", .default_max_attempts = 1, .start = hang_start, .cancel = hang_cancel};

static atomic_int once_budget;

static void once_start(eng_step_ctx *ctx)
{
    if (atomic_fetch_sub(&once_budget, 1) > 0) {
        eng_step_fail(ctx, true, "once", "failing the first time on purpose", 0);
        return;
    }
    eng_step_succeed(ctx, json_pack("{s:i}", "attempt", eng_step_attempt(ctx)));
}

static const eng_step_kind once_kind = {.name = "once", .default_max_attempts = 3, .start = once_start};

static void boom_start(eng_step_ctx *ctx)
{
    const json_t *in = eng_step_input(ctx);
    if (json_is_true(json_object_get(in, "fail"))) {
        eng_step_fail(ctx, true, "boom", "this item always fails", 0);
        return;
    }
    eng_step_succeed(ctx, json_pack("{s:O}", "n", json_object_get(in, "n")));
}

static const eng_step_kind boom_kind = {.name = "boom", .default_max_attempts = 3, .start = boom_start};

/* --------------------------------------------------------------------------- wait_event -- */

/* w waits for the lead's reply for 2 h; nudge runs when it timed out, thank when it did not;
 * after_thank has only thank as need (skipped with it); join needs both (runs either way). */
static const char branch_def[] =
    "{\"name\": \"reply\", \"steps\": ["
    " {\"key\": \"w\", \"kind\": \"wait_event\","
    "  \"input\": {\"event\": \"lead.replied\", \"key\": \"{{input.lead}}\", \"timeout\": \"2h\"}},"
    " {\"key\": \"nudge\", \"kind\": \"transform\", \"needs\": [\"w\"],"
    "  \"when\": \"steps.w.output.timed_out == true\", \"input\": {\"nudge\": true}},"
    " {\"key\": \"thank\", \"kind\": \"transform\", \"needs\": [\"w\"],"
    "  \"when\": \"steps.w.output.timed_out != true\","
    "  \"input\": {\"reply\": \"{{steps.w.output.text}}\"}},"
    " {\"key\": \"after_thank\", \"kind\": \"transform\", \"needs\": [\"thank\"]},"
    " {\"key\": \"join\", \"kind\": \"transform\", \"needs\": [\"nudge\", \"thank\"],"
    "  \"input\": {\"joined\": true}}]}";

/* The run's steps in order as "key=state,...". */
static void expect_states(PGconn *c, long long run, const char *states)
{
    th_pgc_expect(c, states,
                  "SELECT string_agg(key || '=' || state, ',' ORDER BY idx) FROM steps"
                  " WHERE run_id = $1",
                  TH_P(th_num(run).s));
}

static void test_wait_event_resumes_with_data(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("g_wait", &tenant);
    long long wf = th_engine_register(db, tenant, branch_def);
    PGconn *c = th_pgc_open(db);
    long long run = th_pgc_enqueue(c, tenant, wf, "{\"lead\": \"r-1\"}");
    th_workers *ws = th_workers_start(db, 1, "wait", 0, 0, 0);
    wait_for_wait(c, run);
    /* Another lead's reply and another event name resume nothing. */
    th_pgc_expect(c, "0", "SELECT resumed FROM flowd_event($1, 'lead.replied', 'r-2', '{}')",
                  TH_P(th_num(tenant).s));
    th_pgc_expect(c, "0", "SELECT resumed FROM flowd_event($1, 'lead.booked', 'r-1', '{}')",
                  TH_P(th_num(tenant).s));
    th_sleep_ms(300);
    th_pgc_expect(c, "waiting", "SELECT state FROM steps WHERE run_id = $1 AND key = 'w'",
                  TH_P(th_num(run).s));
    th_pgc_expect(
        c, "1",
        "SELECT resumed FROM flowd_event($1, 'lead.replied', 'r-1', '{\"text\": \"yes!\"}')",
        TH_P(th_num(tenant).s));
    finish_run(c, run, ws);
    expect_run_state(c, run, "succeeded");
    expect_states(c, run,
                  "w=succeeded,nudge=skipped,thank=succeeded,after_thank=succeeded,join=succeeded");
    expect_output(c, run, "w", "{\"text\": \"yes!\"}");
    expect_output(c, run, "thank", "{\"reply\": \"yes!\"}");
    PQfinish(c);
    free(db);
}

static void test_wait_event_timeout_branches(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("g_wait_to", &tenant);
    long long wf = th_engine_register(db, tenant, branch_def);
    PGconn *c = th_pgc_open(db);
    long long run = th_pgc_enqueue(c, tenant, wf, "{\"lead\": \"t-1\"}");
    th_workers *ws = th_workers_start(db, 1, "wait-to", 0, 0, 0);
    wait_for_wait(c, run);
    advance(c, "1 hour 59 minutes");
    th_sleep_ms(1300); /* past the workers' 1 s backstop poll */
    th_pgc_expect(c, "waiting", "SELECT state FROM steps WHERE run_id = $1 AND key = 'w'",
                  TH_P(th_num(run).s));
    advance(c, "1 minute");
    finish_run(c, run, ws);
    expect_run_state(c, run, "succeeded");
    expect_states(c, run,
                  "w=succeeded,nudge=succeeded,thank=skipped,after_thank=skipped,join=succeeded");
    expect_output(c, run, "w", "{\"timed_out\": true}");
    /* The skipped steps never started; skipped counts as done. */
    th_pgc_expect(c, "0",
                  "SELECT count(*) FROM run_log WHERE run_id = $1 AND type = 'step.started'"
                  " AND step_key = 'after_thank'",
                  TH_P(th_num(run).s));
    th_pgc_expect(c, "5 5", "SELECT steps_done || ' ' || steps_total FROM runs WHERE id = $1",
                  TH_P(th_num(run).s));
    PQfinish(c);
    free(db);
}

static void test_wait_event_early_event(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("g_wait_early", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"early\", \"steps\": ["
        " {\"key\": \"gate\", \"kind\": \"transform\", \"delay\": \"1h\"},"
        " {\"key\": \"w\", \"kind\": \"wait_event\", \"needs\": [\"gate\"],"
        "  \"input\": {\"event\": \"lead.replied\", \"key\": \"{{input.lead}}\", \"timeout\": \"1d\"}}]}");
    PGconn *c = th_pgc_open(db);
    /* Sent before the run existed: not this run's business. */
    free(th_pgc_str(c, "SELECT flowd_event($1, 'lead.replied', 'e-1', '{\"n\": 1}')",
                    TH_P(th_num(tenant).s)));
    long long run = th_pgc_enqueue(c, tenant, wf, "{\"lead\": \"e-1\"}");
    th_workers *ws = th_workers_start(db, 1, "early", 0, 0, 0);
    /* Arrives while the run is under way but before the wait started. */
    th_pgc_expect(c, "0",
                  "SELECT resumed FROM flowd_event($1, 'lead.replied', 'e-1', '{\"n\": 2}')",
                  TH_P(th_num(tenant).s));
    th_sleep_ms(300);
    expect_states(c, run, "gate=ready,w=pending");
    advance(c, "1 hour");
    finish_run(c, run, ws);
    expect_run_state(c, run, "succeeded");
    expect_output(c, run, "w", "{\"n\": 2}");
    /* Delivered at once: it never slept in 'waiting'. */
    th_pgc_expect(c, "0",
                  "SELECT count(*) FROM run_log WHERE run_id = $1 AND type = 'step.waiting'",
                  TH_P(th_num(run).s));
    PQfinish(c);
    free(db);
}

/* `flowd event NAME KEY --data JSON` (the documented form) resumes the wait with that data. */
static void test_cli_event_data(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("g_cli_event", &tenant);
    long long wf = th_engine_register(db, tenant, branch_def);
    PGconn *c = th_pgc_open(db);
    long long run = th_pgc_enqueue(c, tenant, wf, "{\"lead\": \"c-1\"}");
    th_workers *ws = th_workers_start(db, 1, "cli-event", 0, 0, 0);
    wait_for_wait(c, run);
    char *out = NULL, *err = NULL;
    int st = flowd(db, &out, &err, "event", "lead.replied", "c-1", "--data", "{\"text\": \"ok\"}");
    if (st != 0)
        fail_msg("flowd event: exit %d: %s", st, err);
    assert_non_null(strstr(out, "\"resumed\": 1"));
    free(out);
    free(err);
    finish_run(c, run, ws);
    th_pgc_expect(c, "{\"text\": \"ok\"}", "SELECT data::text FROM events WHERE key = 'c-1'", 0,
                  NULL);
    expect_output(c, run, "w", "{\"text\": \"ok\"}");
    PQfinish(c);
    free(db);
}

/* ---------------------------------------------------------------------------------- map -- */

static void test_map_10000_items_in_order(void **state)
{
    (void)state;
    enum { ITEMS = 10000 };
    long long tenant;
    char *db = th_engine_db("g_map_big", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"fanout\", \"steps\": ["
        " {\"key\": \"m\", \"kind\": \"map\", \"input\": {\"items\": \"{{input.items}}\","
        "  \"concurrency\": 1000,"
        "  \"step\": {\"kind\": \"transform\", \"input\": {\"i\": \"{{index}}\", \"name\": \"{{item}}\"}}}},"
        " {\"key\": \"total\", \"kind\": \"transform\", \"needs\": [\"m\"],"
        "  \"input\": {\"first\": \"{{steps.m.output.results[0].item.name}}\"}}]}");
    PGconn *c = th_pgc_open(db);
    long long run = th_pgc_ll(
        c,
        "SELECT run_id FROM flowd_enqueue($1, $2, jsonb_build_array(jsonb_build_object('items',"
        " (SELECT jsonb_agg('p' || i ORDER BY i) FROM generate_series(0, $3::int - 1) i))),"
        " 0, NULL, NULL)",
        TH_P(th_num(tenant).s, th_num(wf).s, th_num(ITEMS).s));
    long long t0 = th_now_ms();
    th_workers *ws = th_workers_start(db, 2, "map-big", 0, 0, 0);
    bool done = th_pgc_wait(c, "SELECT state NOT IN ('queued', 'running') FROM runs WHERE id = $1",
                            TH_P(th_num(run).s), 120);
    long long took = th_now_ms() - t0;
    th_workers_stop(ws);
    fprintf(stderr, "# map of %d inline items: %lld ms\n", ITEMS, took);
    assert_true(done);
    expect_run_state(c, run, "succeeded");
    /* one child per item, no duplicates started by concurrent advances of the map */
    th_pgc_expect(c, "10000 10000 10000",
                  "SELECT count(*) || ' ' || count(DISTINCT parent_index) || ' '"
                  " || count(*) FILTER (WHERE state = 'succeeded') FROM runs"
                  " WHERE parent_step_id IS NOT NULL",
                  0, NULL);
    th_pgc_expect(c, "10000",
                  "SELECT jsonb_array_length(output->'results') FROM steps"
                  " WHERE run_id = $1 AND key = 'm'",
                  TH_P(th_num(run).s));
    /* results[k] is item k's output, for every k */
    th_pgc_expect(c, "10000",
                  "SELECT count(*) FROM steps s, jsonb_array_elements(s.output->'results')"
                  "  WITH ORDINALITY AS x(v, n)"
                  " WHERE s.run_id = $1 AND s.key = 'm' AND (x.v->'item'->>'i')::int = x.n - 1"
                  "   AND x.v->'item'->>'name' = 'p' || (x.n - 1)",
                  TH_P(th_num(run).s));
    expect_output(c, run, "total", "{\"first\": \"p0\"}");
    assert_true(took < 120000);
    PQfinish(c);
    free(db);
}

static const char child_def[] =
    "{\"name\": \"child\", \"steps\": [{\"key\": \"work\", \"kind\": \"boom\","
    " \"input\": {\"fail\": \"{{input.fail}}\", \"n\": \"{{input.n}}\"}}]}";

static char *parent_def(bool allow)
{
    return eng_xasprintf(
        "{\"name\": \"parent_%s\", \"steps\": [{\"key\": \"m\", \"kind\": \"map\","
        " \"input\": {\"items\": \"{{input.items}}\", \"workflow\": \"child\", \"concurrency\": 1,"
        " \"allow_failures\": %s, \"input\": {\"n\": \"{{index}}\", \"fail\": \"{{item}}\"}}},"
        " {\"key\": \"after\", \"kind\": \"transform\", \"needs\": [\"m\"]}]}",
        allow ? "lenient" : "strict", allow ? "true" : "false");
}

static void test_map_child_failure(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("g_map_fail", &tenant);
    th_engine_register(db, tenant, child_def);
    char *d = parent_def(false);
    long long strict = th_engine_register(db, tenant, d);
    free(d);
    d = parent_def(true);
    long long lenient = th_engine_register(db, tenant, d);
    free(d);
    PGconn *c = th_pgc_open(db);
    static const char items[] = "{\"items\": [false, true, false, false]}";
    long long r1 = th_pgc_enqueue(c, tenant, strict, items);
    long long r2 = th_pgc_enqueue(c, tenant, lenient, items);
    th_workers *ws = th_workers_start(db, 2, "map-fail", 0, 0, 0);
    bool done = th_pgc_wait(c,
                            "SELECT count(*) = 2 FROM runs WHERE parent_step_id IS NULL"
                            " AND state NOT IN ('queued', 'running')",
                            0, NULL, 30);
    th_sleep_ms(300);
    th_workers_stop(ws);
    assert_true(done);

    /* Without allow_failures: the map fails at the first failed item, and the run with it. */
    th_pgc_expect(c, "failed step_failed",
                  "SELECT state || ' ' || (error->>'code') FROM runs WHERE id = $1",
                  TH_P(th_num(r1).s));
    th_pgc_expect(c, "failed map_item_failed 1",
                  "SELECT state || ' ' || (error->>'code') || ' ' || (error->>'item') FROM steps"
                  " WHERE run_id = $1 AND key = 'm'",
                  TH_P(th_num(r1).s));
    th_pgc_expect(c, "cancelled", "SELECT state FROM steps WHERE run_id = $1 AND key = 'after'",
                  TH_P(th_num(r1).s));
    /* concurrency 1: the items after the failure never got a child run */
    th_pgc_expect(c, "2",
                  "SELECT count(*) FROM runs r JOIN steps s ON s.id = r.parent_step_id"
                  " WHERE s.run_id = $1",
                  TH_P(th_num(r1).s));

    /* With allow_failures: every item ran, results in item order, the failure's holds its error. */
    expect_run_state(c, r2, "succeeded");
    th_pgc_expect(
        c, "0|null|2|3",
        "SELECT string_agg(coalesce(v->'work'->>'n', 'null'), '|' ORDER BY n) FROM steps s,"
        " jsonb_array_elements(s.output->'results') WITH ORDINALITY AS x(v, n)"
        " WHERE s.run_id = $1 AND s.key = 'm'",
        TH_P(th_num(r2).s));
    th_pgc_expect(c, "step_failed",
                  "SELECT output->'results'->1->'error'->>'code' FROM steps WHERE run_id = $1"
                  " AND key = 'm'",
                  TH_P(th_num(r2).s));
    th_pgc_expect(c, "t",
                  "SELECT (output->'results'->1->>'run')::bigint = (SELECT r.id FROM runs r"
                  " WHERE r.parent_step_id = s.id AND r.parent_index = 1) FROM steps s"
                  " WHERE s.run_id = $1 AND s.key = 'm'",
                  TH_P(th_num(r2).s));
    th_pgc_expect(c, "succeeded", "SELECT state FROM steps WHERE run_id = $1 AND key = 'after'",
                  TH_P(th_num(r2).s));
    PQfinish(c);
    free(db);
}

/* ----------------------------------------------------------------------- failure policy -- */

/* a fails with "continue": b, which needs it, runs and sees its error. c fails with
 * "skip_dependents": d (needs c) and e (needs d and b) are skipped, though b succeeded. f, on
 * its own, and g (needs a and f) run. The run succeeds. */
static const char policy_def[] =
    "{\"name\": \"policy\", \"steps\": ["
    " {\"key\": \"a\", \"kind\": \"boom\", \"on_failure\": \"continue\", \"input\": {\"fail\": true}},"
    " {\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"],"
    "  \"input\": {\"saw\": \"{{steps.a.output.error.code}}\"}},"
    " {\"key\": \"c\", \"kind\": \"boom\", \"on_failure\": \"skip_dependents\","
    "  \"input\": {\"fail\": true}},"
    " {\"key\": \"d\", \"kind\": \"transform\", \"needs\": [\"c\"]},"
    " {\"key\": \"e\", \"kind\": \"transform\", \"needs\": [\"d\", \"b\"]},"
    " {\"key\": \"f\", \"kind\": \"transform\", \"input\": {\"ok\": true}},"
    " {\"key\": \"g\", \"kind\": \"transform\", \"needs\": [\"a\", \"f\"]}]}";

/* The default policy: x fails on its first attempt and fails the run; y (a long delay, still
 * pending) is cancelled. */
static const char fail_run_def[] =
    "{\"name\": \"failing\", \"steps\": ["
    " {\"key\": \"x\", \"kind\": \"boom\", \"input\": {\"fail\": true}},"
    " {\"key\": \"y\", \"kind\": \"transform\", \"delay\": \"30d\"}]}";

static void test_failure_policy(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("g_policy", &tenant);
    long long wp = th_engine_register(db, tenant, policy_def);
    long long wf = th_engine_register(db, tenant, fail_run_def);
    PGconn *c = th_pgc_open(db);
    long long r1 = th_pgc_enqueue(c, tenant, wp, "{}");
    long long r2 = th_pgc_enqueue(c, tenant, wf, "{}");
    th_workers *ws = th_workers_start(db, 1, "policy", 0, 0, 0);
    bool done = th_pgc_wait(c, "SELECT count(*) = 2 FROM runs WHERE state NOT IN ('queued', 'running')",
                            0, NULL, 30);
    th_workers_stop(ws);
    assert_true(done);

    expect_run_state(c, r1, "succeeded");
    expect_states(c, r1,
                  "a=failed,b=succeeded,c=failed,d=skipped,e=skipped,f=succeeded,g=succeeded");
    expect_output(c, r1, "b", "{\"saw\": \"boom\"}");
    expect_output(c, r1, "e", "{\"step\": \"c\", \"reason\": \"needs failed\"}");
    th_pgc_expect(c, "null", "SELECT coalesce(error::text, 'null') FROM runs WHERE id = $1",
                  TH_P(th_num(r1).s));

    /* the run's error says which step failed, what kind it is, on which attempt and why */
    expect_states(c, r2, "x=failed,y=cancelled");
    th_pgc_expect(c,
                  "failed step_failed|x|boom|1|boom|this item always fails|"
                  "step \"x\" (boom) failed for good on attempt 1: boom: this item always fails",
                  "SELECT state || ' ' || concat_ws('|', error->>'code', error->>'step',"
                  " error->>'kind', error->>'attempt', error->'step_error'->>'code',"
                  " error->'step_error'->>'message', error->>'message') FROM runs WHERE id = $1",
                  TH_P(th_num(r2).s));
    th_pgc_expect(c, "x",
                  "SELECT data->>'step' FROM run_log WHERE run_id = $1 AND type = 'run.failed'",
                  TH_P(th_num(r2).s));
    PQfinish(c);
    free(db);
}

/* A step the reaper gives up on (interrupted max_interruptions times) follows its failure policy
 * like any other final failure: "continue" lets its dependents run with the error as its output,
 * "skip_dependents" skips what needs it, and only "fail_run" (the default) fails the run. The
 * steps are made to look claimed by a worker that vanished, and handed back as the reaper does. */
static void test_interrupted_failure_policy(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("g_interrupted", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"interrupted_policy\", \"steps\": ["
        " {\"key\": \"a\", \"kind\": \"transform\", \"on_failure\": \"continue\","
        "  \"retry\": {\"max_interruptions\": 1}},"
        " {\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"]},"
        " {\"key\": \"c\", \"kind\": \"transform\", \"on_failure\": \"skip_dependents\","
        "  \"retry\": {\"max_interruptions\": 1}},"
        " {\"key\": \"d\", \"kind\": \"transform\", \"needs\": [\"c\"]}]}");
    long long wd = th_engine_register(
        db, tenant,
        "{\"name\": \"interrupted_default\", \"steps\": ["
        " {\"key\": \"x\", \"kind\": \"transform\", \"retry\": {\"max_interruptions\": 1}},"
        " {\"key\": \"y\", \"kind\": \"transform\", \"needs\": [\"x\"]}]}");
    PGconn *c = th_pgc_open(db);
    long long r1 = th_pgc_enqueue(c, tenant, wf, "{}");
    long long r2 = th_pgc_enqueue(c, tenant, wd, "{}");
    free(th_pgc_str(c,
                    "UPDATE steps SET state = 'running', attempts = 1, lease_owner = 'vanished',"
                    " started_at = flowd_now(), lease_expires_at = flowd_now()"
                    " WHERE run_id IN ($1, $2) AND state = 'ready' RETURNING 1",
                    TH_P(th_num(r1).s, th_num(r2).s)));
    free(th_pgc_str(c, "UPDATE runs SET state = 'running' WHERE id IN ($1, $2)",
                    TH_P(th_num(r1).s, th_num(r2).s)));
    th_pgc_expect(c, "3", /* a, c and x: b, d and y wait on them */
                  "SELECT flowd_reap_steps(ARRAY(SELECT id FROM steps WHERE run_id IN ($1, $2)"
                  " AND state = 'running'))",
                  TH_P(th_num(r1).s, th_num(r2).s));
    expect_run_state(c, r1, "running");
    expect_states(c, r1, "a=failed,b=ready,c=failed,d=skipped");
    th_pgc_expect(c, "interrupted",
                  "SELECT output->'error'->>'code' FROM steps WHERE run_id = $1 AND key = 'a'",
                  TH_P(th_num(r1).s));
    expect_output(c, r1, "d", "{\"step\": \"c\", \"reason\": \"needs failed\"}");
    expect_run_state(c, r2, "failed");
    expect_states(c, r2, "x=failed,y=cancelled");
    th_pgc_expect(c, "interrupted|x",
                  "SELECT concat_ws('|', error->>'code', error->>'step') FROM runs WHERE id = $1",
                  TH_P(th_num(r2).s));
    PQfinish(c);
    free(db);
}

/* A map without allow_failures checks its children's inputs against the child workflow's input
 * check before starting any: an item without what the child's templates need fails the step at
 * once, naming the item, and no child runs. With allow_failures the children run and that one
 * fails alone, as before. */
static void test_map_child_input_checked(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("g_map_check", &tenant);
    th_engine_register(db, tenant,
                       "{\"name\": \"needs_email\", \"steps\": [{\"key\": \"w\", \"kind\":"
                       " \"transform\", \"input\": {\"e\": \"{{input.email}}\"}}]}");
    long long strict = th_engine_register(
        db, tenant,
        "{\"name\": \"mailer\", \"steps\": [{\"key\": \"m\", \"kind\": \"map\", \"input\":"
        " {\"items\": \"{{input.items}}\", \"workflow\": \"needs_email\", \"input\": \"{{item}}\"}}]}");
    long long lenient = th_engine_register(
        db, tenant,
        "{\"name\": \"mailer_lenient\", \"steps\": [{\"key\": \"m\", \"kind\": \"map\", \"input\":"
        " {\"items\": \"{{input.items}}\", \"workflow\": \"needs_email\", \"input\": \"{{item}}\","
        " \"allow_failures\": true}}]}");
    PGconn *c = th_pgc_open(db);
    static const char bad[] = "{\"items\": [{\"email\": \"a@x.test\"}, {\"email\": null},"
                              " {\"email\": \"c@x.test\"}]}";
    long long r1 = th_pgc_enqueue(c, tenant, strict, bad);
    long long r2 = th_pgc_enqueue(c, tenant, strict, "{\"items\": [{\"email\": \"a@x.test\"}]}");
    long long r3 = th_pgc_enqueue(c, tenant, lenient, bad);
    th_workers *ws = th_workers_start(db, 1, "map-check", 0, 0, 0);
    bool done = th_pgc_wait(c,
                            "SELECT count(*) = 3 FROM runs WHERE parent_step_id IS NULL"
                            " AND state NOT IN ('queued', 'running')",
                            0, NULL, 30);
    th_workers_stop(ws);
    assert_true(done);
    expect_run_state(c, r1, "failed");
    th_pgc_expect(c, "invalid_input|true",
                  "SELECT (error->>'code') || '|' || (error->>'message' LIKE"
                  " '%item 1 does not match workflow needs_email''s input check: /email: must not"
                  " be null%')::text FROM steps WHERE run_id = $1 AND key = 'm'",
                  TH_P(th_num(r1).s));
    const char *children = "SELECT count(*) FROM runs r JOIN steps s ON s.id = r.parent_step_id"
                           " WHERE s.run_id = $1";
    th_pgc_expect(c, "0", children, TH_P(th_num(r1).s));
    expect_run_state(c, r2, "succeeded");
    expect_run_state(c, r3, "succeeded");
    th_pgc_expect(c, "3", children, TH_P(th_num(r3).s));
    PQfinish(c);
    free(db);
}

static void test_map_concurrency_bound(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("g_map_conc", &tenant);
    th_engine_register(db, tenant,
                       "{\"name\": \"slowchild\", \"steps\": [{\"key\": \"s\", \"kind\": \"slow\","
                       " \"input\": {\"ms\": 30, \"n\": \"{{input.n}}\"}}]}");
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"bounded\", \"steps\": [{\"key\": \"m\", \"kind\": \"map\", \"input\": {"
        " \"items\": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], \"workflow\": \"slowchild\","
        " \"concurrency\": 3, \"input\": {\"n\": \"{{item}}\"}}}]}");
    PGconn *c = th_pgc_open(db);
    long long run = th_pgc_enqueue(c, tenant, wf, "{}");
    th_workers *ws = th_workers_start(db, 2, "map-conc", 0, 0, 0);
    finish_run(c, run, ws);
    expect_run_state(c, run, "succeeded");
    th_pgc_expect(c, "12", "SELECT count(*) FROM runs WHERE parent_step_id IS NOT NULL", 0, NULL);
    /* Children alive at each child's start: never more than 3, and 3 at some point. */
    th_pgc_expect(c, "3",
                  "SELECT max(k) FROM (SELECT (SELECT count(*) FROM runs o"
                  "  WHERE o.parent_step_id IS NOT NULL AND o.created_at <= r.started_at"
                  "    AND o.finished_at > r.started_at) AS k"
                  " FROM runs r WHERE r.parent_step_id IS NOT NULL) x",
                  0, NULL);
    th_pgc_expect(c, "1|2|3|4|5|6|7|8|9|10|11|12",
                  "SELECT string_agg(v->'s'->>'n', '|' ORDER BY n) FROM steps s,"
                  " jsonb_array_elements(s.output->'results') WITH ORDINALITY AS x(v, n)"
                  " WHERE s.run_id = $1 AND s.key = 'm'",
                  TH_P(th_num(run).s));
    PQfinish(c);
    free(db);
}

/* ---------------------------------------------------------------------- concurrency key -- */

static void test_concurrency_key_serialises(void **state)
{
    (void)state;
    enum { SAME = 100, OTHERS = 100 };
    long long tenant;
    char *db = th_engine_db("g_ckey", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"inbound\", \"steps\": [{\"key\": \"reply\", \"kind\": \"slow\","
        " \"concurrency_key\": \"cust-{{input.customer}}\","
        " \"input\": {\"ms\": 4, \"seq\": \"{{input.seq}}\"}}]}");
    PGconn *c = th_pgc_open(db);
    /* One enqueue per message, interleaving the busy customer with ten others. */
    for (int i = 0; i < SAME + OTHERS; i++) {
        char *in = i % 2 == 0 ? eng_xasprintf("{\"customer\": \"A\", \"seq\": %d}", i / 2)
                              : eng_xasprintf("{\"customer\": \"B%d\", \"seq\": %d}", i % 10, i / 2);
        th_pgc_enqueue(c, tenant, wf, in);
        free(in);
    }
    th_workers *ws = th_workers_start(db, 2, "ckey", 0, 0, 0);
    bool done =
        th_pgc_wait(c, "SELECT count(*) = 200 FROM runs WHERE state = 'succeeded'", 0, NULL, 60);
    th_workers_stop(ws);
    assert_true(done);
    th_pgc_expect(c, "100", "SELECT count(*) FROM steps WHERE ckey = 'cust-A'", 0, NULL);
    /* Same key: no two intervals overlap... */
    th_pgc_expect(c, "0",
                  "SELECT count(*) FROM steps a JOIN steps b ON a.ckey = b.ckey AND a.id < b.id"
                  " WHERE a.started_at < b.finished_at AND b.started_at < a.finished_at",
                  0, NULL);
    /* ... and they ran in enqueue order, each after the previous finished. */
    th_pgc_expect(
        c, "0",
        "SELECT count(*) FROM (SELECT started_at, lag(finished_at) OVER (ORDER BY run_id) pf,"
        " lag(started_at) OVER (ORDER BY run_id) ps FROM steps WHERE ckey = 'cust-A') x"
        " WHERE started_at < pf OR started_at <= ps",
        0, NULL);
    th_pgc_expect(
        c, "0|1|2|3|4|5|6|7|8|9",
        "SELECT string_agg(output->>'seq', '|' ORDER BY started_at) FROM (SELECT * FROM steps"
        " WHERE ckey = 'cust-A' ORDER BY started_at LIMIT 10) x",
        0, NULL);
    /* Other customers ran alongside customer A. */
    char *overlaps =
        th_pgc_str(c,
                   "SELECT count(*) FROM steps a JOIN steps b ON a.ckey = 'cust-A'"
                   " AND b.ckey <> 'cust-A'"
                   " WHERE a.started_at < b.finished_at AND b.started_at < a.finished_at",
                   0, NULL);
    fprintf(stderr, "# steps of other keys overlapping customer A's: %s pairs\n", overlaps);
    assert_true(strtol(overlaps, NULL, 10) > 0);
    free(overlaps);
    PQfinish(c);
    free(db);
}

/* ------------------------------------------------------------------------ retry and cancel -- */

static void test_retry_reruns_only_failed(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("g_retry", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"abc\", \"steps\": ["
        " {\"key\": \"a\", \"kind\": \"transform\", \"input\": {\"v\": \"{{input.v}}\"}},"
        " {\"key\": \"b\", \"kind\": \"once\", \"needs\": [\"a\"]},"
        " {\"key\": \"c\", \"kind\": \"transform\", \"needs\": [\"b\"],"
        "  \"input\": {\"a\": \"{{steps.a.output.v}}\", \"b\": \"{{steps.b.output.attempt}}\"}}]}");
    PGconn *c = th_pgc_open(db);
    atomic_store(&once_budget, 1);
    long long run = th_pgc_enqueue(c, tenant, wf, "{\"v\": 7}");
    th_workers *ws = th_workers_start(db, 1, "retry", 0, 0, 0);
    assert_true(
        th_pgc_wait(c, "SELECT state = 'failed' FROM runs WHERE id = $1", TH_P(th_num(run).s), 30));
    expect_states(c, run, "a=succeeded,b=failed,c=cancelled");
    char *a_before = th_pgc_str(c,
                                "SELECT finished_at || ' ' || output::text FROM steps"
                                " WHERE run_id = $1 AND key = 'a'",
                                TH_P(th_num(run).s));

    char *out = NULL, *err = NULL;
    int st = flowd(db, &out, &err, "retry", th_num(run).s, NULL, NULL, NULL);
    if (st != 0)
        fail_msg("flowd retry: exit %d: %s", st, err);
    assert_non_null(strstr(out, "\"steps_reset\": 2"));
    free(out);
    free(err);
    finish_run(c, run, ws);
    expect_run_state(c, run, "succeeded");
    expect_states(c, run, "a=succeeded,b=succeeded,c=succeeded");
    th_pgc_expect(c, a_before,
                  "SELECT finished_at || ' ' || output::text FROM steps"
                  " WHERE run_id = $1 AND key = 'a'",
                  TH_P(th_num(run).s));
    free(a_before);
    th_pgc_expect(
        c, "a:1/1,b:1/2,c:1/1",
        "SELECT string_agg(s.key || ':' || s.attempts || '/' || (SELECT count(*)"
        " FROM run_log e WHERE e.run_id = s.run_id AND e.step_key = s.key"
        " AND e.type = 'step.started'), ',' ORDER BY s.idx) FROM steps s WHERE s.run_id = $1",
        TH_P(th_num(run).s));
    th_pgc_expect(c, "{\"a\": 7, \"b\": 1}", "SELECT flowd_run_output(id)->'c'::text FROM runs WHERE id = $1",
                  TH_P(th_num(run).s));
    th_pgc_expect(c, "1",
                  "SELECT count(*) FROM run_log WHERE run_id = $1 AND type = 'run.retried'",
                  TH_P(th_num(run).s));
    /* A succeeded run cannot be retried. */
    out = err = NULL;
    assert_int_not_equal(flowd(db, &out, &err, "retry", th_num(run).s, NULL, NULL, NULL), 0);
    free(out);
    free(err);
    PQfinish(c);
    free(db);
}

static void test_cancel_running_run(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("g_cancel", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"stuck\", \"steps\": ["
        " {\"key\": \"h\", \"kind\": \"hang\"},"
        " {\"key\": \"after\", \"kind\": \"transform\", \"needs\": [\"h\"]},"
        " {\"key\": \"later\", \"kind\": \"transform\", \"delay\": \"1h\"}]}");
    PGconn *c = th_pgc_open(db);
    int started0 = atomic_load(&hang_started), cancelled0 = atomic_load(&hang_cancelled);
    long long run = th_pgc_enqueue(c, tenant, wf, "{}");
    th_workers *ws = th_workers_start(db, 2, "cancel", 0, 0, 0);
    assert_true(th_pgc_wait(c,
                            "SELECT state = 'running' FROM steps WHERE run_id = $1 AND key = 'h'",
                            TH_P(th_num(run).s), 30));
    long long deadline = th_now_ms() + 10000;
    while (atomic_load(&hang_started) == started0 && th_now_ms() < deadline)
        th_sleep_ms(5);
    assert_int_equal(atomic_load(&hang_started) - started0, 1);
    assert_int_equal(atomic_load(&hang_cancelled) - cancelled0, 0);

    char *out = NULL, *err = NULL;
    int st = flowd(db, &out, &err, "cancel", th_num(run).s, NULL, NULL, NULL);
    if (st != 0)
        fail_msg("flowd cancel: exit %d: %s", st, err);
    assert_non_null(strstr(out, "\"cancelled\": 1"));
    free(out);
    free(err);
    /* The step in flight is told to stop. */
    deadline = th_now_ms() + 10000;
    while (atomic_load(&hang_cancelled) == cancelled0 && th_now_ms() < deadline)
        th_sleep_ms(5);
    assert_int_equal(atomic_load(&hang_cancelled) - cancelled0, 1);
    expect_run_state(c, run, "cancelled");
    th_pgc_expect(c, "h=cancelled/1,after=cancelled/0,later=cancelled/0",
                  "SELECT string_agg(key || '=' || state || '/' || attempts, ',' ORDER BY idx)"
                  " FROM steps WHERE run_id = $1",
                  TH_P(th_num(run).s));
    /* Nothing new starts, not even once the delayed step falls due. */
    advance(c, "2 hours");
    th_sleep_ms(1300);
    th_workers_stop(ws);
    th_pgc_expect(
        c, "0",
        "SELECT count(*) FROM run_log WHERE run_id = $1 AND type = 'step.started'"
        " AND id > (SELECT id FROM run_log WHERE run_id = $1 AND type = 'run.cancelled')",
        TH_P(th_num(run).s));
    th_pgc_expect(c, "0", "SELECT count(*) FROM steps WHERE run_id = $1 AND state <> 'cancelled'",
                  TH_P(th_num(run).s));
    th_pgc_expect(c, "1", "SELECT count(*) FROM steps WHERE run_id = $1 AND started_at IS NOT NULL",
                  TH_P(th_num(run).s));
    assert_int_equal(atomic_load(&hang_started) - started0, 1);
    PQfinish(c);
    free(db);
}

/* ---------------------------------------------------------------------------- templates -- */

static void test_templates(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("g_tmpl", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"tmpl\", \"steps\": ["
        " {\"key\": \"a\", \"kind\": \"transform\", \"input\": {"
        "  \"n\": \"{{input.n}}\", \"o\": \"{{input.obj}}\", \"b\": \"{{input.flag}}\","
        "  \"s\": \"n={{input.n}}\", \"greet\": \"hi {{input.name | default: \\\"there\\\"}}\","
        "  \"dflt\": \"{{input.missing | default: [1, 2]}}\", \"id\": \"{{run.id}}\"}},"
        " {\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"],"
        "  \"retry\": {\"max_attempts\": 3},"
        "  \"input\": {\"deep\": \"{{steps.a.output.o.list}}\", \"text\": \"{{steps.a.output.s}}!\"}}]}");
    PGconn *c = th_pgc_open(db);
    long long ok = th_pgc_enqueue(c, tenant, wf,
                                  "{\"n\": 42, \"obj\": {\"list\": [1, \"x\"]}, \"flag\": true}");
    long long named = th_pgc_enqueue(c, tenant, wf,
                                     "{\"n\": 1, \"obj\": {}, \"flag\": false, \"name\": \"Ann\"}");
    long long bare = th_pgc_enqueue(c, tenant, wf, "{\"obj\": {}, \"flag\": true}");
    th_workers *ws = th_workers_start(db, 1, "tmpl", 0, 0, 0);
    bool done = th_pgc_wait(
        c, "SELECT count(*) = 3 FROM runs WHERE state NOT IN ('queued', 'running')", 0, NULL, 30);
    th_sleep_ms(300);
    th_workers_stop(ws);
    assert_true(done);

    /* A whole-string template keeps the JSON type; embedded ones render as text. */
    th_pgc_expect(
        c, "number 42|object {\"list\": [1, \"x\"]}|boolean true|n=42|hi there|[1, 2]|true",
        "SELECT jsonb_typeof(o->'n') || ' ' || (o->>'n') || '|' || jsonb_typeof(o->'o') || ' '"
        " || (o->>'o') || '|' || jsonb_typeof(o->'b') || ' ' || (o->>'b') || '|' || (o->>'s')"
        " || '|' || (o->>'greet') || '|' || (o->>'dflt') || '|'"
        " || (jsonb_typeof(o->'id') = 'number' AND (o->>'id')::bigint = $1)::text"
        " FROM (SELECT output AS o FROM steps WHERE run_id = $1 AND key = 'a') x",
        TH_P(th_num(ok).s));
    expect_output(c, ok, "b", "{\"deep\": [1, \"x\"], \"text\": \"n=42!\"}");
    expect_run_state(c, ok, "succeeded");
    th_pgc_expect(c, "hi Ann", "SELECT output->>'greet' FROM steps WHERE run_id = $1 AND key = 'a'",
                  TH_P(th_num(named).s));

    /* A missing path fails the step for good (no retry), naming the path. */
    expect_run_state(c, named, "failed");
    th_pgc_expect(c, "failed 1 template",
                  "SELECT state || ' ' || attempts || ' ' || (error->>'code') FROM steps"
                  " WHERE run_id = $1 AND key = 'b'",
                  TH_P(th_num(named).s));
    char *msg = th_pgc_str(c, "SELECT error->>'message' FROM steps WHERE run_id = $1 AND key = 'b'",
                           TH_P(th_num(named).s));
    if (!msg || !strstr(msg, "steps.a.output.o.list"))
        fail_msg("the error does not name the missing path: %s", msg ? msg : "NULL");
    free(msg);
    th_pgc_expect(c, "failed 1 template",
                  "SELECT state || ' ' || attempts || ' ' || (error->>'code')"
                  " FROM steps WHERE run_id = $1 AND key = 'a'",
                  TH_P(th_num(bare).s));
    msg = th_pgc_str(c, "SELECT error->>'message' FROM steps WHERE run_id = $1 AND key = 'a'",
                     TH_P(th_num(bare).s));
    if (!msg || !strstr(msg, "input.n"))
        fail_msg("the error does not name the missing path: %s", msg ? msg : "NULL");
    free(msg);
    PQfinish(c);
    free(db);
}

/* ----------------------------------------------------------------------- bad definitions -- */

static void test_bad_definitions_refused(void **state)
{
    (void)state;
    static const struct {
        const char *def, *field, *reason;
    } cases[] = {
        {"{\"name\": \"bad\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\", \"needs\": [\"a\"]}]}",
         "/steps/0/needs/0", "itself"},
        {"{\"name\": \"bad\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\", \"needs\": [\"ghost\"]}]}",
         "/steps/0/needs/0", "ghost"},
        {"{\"name\": \"bad\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\", \"needs\": [\"b\"]},"
         " {\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"]}]}",
         "/needs/0", "cycle"},
        {"{\"name\": \"bad\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\"},"
         " {\"key\": \"a\", \"kind\": \"transform\"}]}",
         "/steps/1/key", "duplicate"},
        {"{\"name\": \"bad\", \"steps\": [{\"key\": \"a\", \"kind\": \"teleport\"}]}", "/steps/0/kind",
         "teleport"},
        {"{\"name\": \"bad\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\"},"
         " {\"key\": \"b\", \"kind\": \"transform\", \"input\": {\"x\": \"{{steps.a.output}}\"}}]}",
         "/steps/1/input/x", "not among the needs"},
        {"{\"name\": \"bad\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\", \"delay\": \"5 parsecs\"}]}",
         "/steps/0/delay", "duration"},
        {"{\"name\": \"bad\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\","
         " \"window\": {\"start\": \"25:00\", \"end\": \"18:00\", \"tz\": \"Europe/Berlin\"}}]}",
         "/steps/0/window/start", "HH:MM"},
        {"{\"name\": \"bad\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\", \"when\": \"input.a ==\"}]}",
         "/steps/0/when", ""},
        {"{\"name\": \"bad\", \"steps\": [{\"key\": \"a\", \"kind\": \"wait_event\","
         " \"input\": {\"event\": \"lead.replied\"}}]}",
         "/steps/0/input/key", ""},
    };
    long long tenant;
    char *db = th_engine_db("g_bad", &tenant);
    PGconn *c = th_pgc_open(db);
    char path[] = "/tmp/flowd-graph-bad-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(cases[i].def, f);
        fclose(f);
        char *out = NULL, *err = NULL;
        int st = flowd(db, &out, &err, "enqueue", "--workflow", path, NULL, NULL);
        if (st != 1 || !strstr(err, cases[i].field) || !strstr(err, cases[i].reason))
            fail_msg("case %zu: exit %d, stderr: %s (expected %s ... %s)", i, st, err,
                     cases[i].field, cases[i].reason);
        assert_string_equal(out, "");
        free(out);
        free(err);
        th_pgc_expect(c, "0 0",
                      "SELECT (SELECT count(*) FROM workflows) || ' ' ||"
                      " (SELECT count(*) FROM runs)",
                      0, NULL);
    }
    /* The same file, fixed, is stored and run: the counts above could have moved. */
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"name\": \"good\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\"}]}", f);
    fclose(f);
    char *out = NULL;
    assert_int_equal(flowd(db, &out, NULL, "enqueue", "--workflow", path, NULL, NULL), 0);
    free(out);
    th_pgc_expect(c, "1 1",
                  "SELECT (SELECT count(*) FROM workflows) || ' ' ||"
                  " (SELECT count(*) FROM runs)",
                  0, NULL);
    /* an input without what the templates need is refused before a run exists */
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"name\": \"hello\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\","
          " \"input\": {\"t\": \"hi {{input.lead.name}}\"}}]}",
          f);
    fclose(f);
    char *err = NULL;
    out = NULL;
    assert_int_equal(flowd(db, &out, &err, "enqueue", "--workflow", path, "--input",
                           "{\"lead\": {}}"),
                     1);
    assert_non_null(strstr(err, "--input/lead/name: required"));
    free(out);
    free(err);
    out = NULL;
    assert_int_equal(flowd(db, &out, NULL, "enqueue", "--workflow", path, "--input",
                           "{\"lead\": {\"name\": \"Ada\"}}"),
                     0);
    free(out);
    th_pgc_expect(c, "2", "SELECT count(*) FROM runs", 0, NULL);
    unlink(path);
    PQfinish(c);
    free(db);
}

int main(void)
{
    eng_mem_init();
    eng_log_init();
    eng_step_register_builtins();
    eng_step_register(&slow_kind);
    eng_step_register(&hang_kind);
    eng_step_register(&once_kind);
    eng_step_register(&boom_kind);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wait_event_resumes_with_data),
        cmocka_unit_test(test_wait_event_timeout_branches),
        cmocka_unit_test(test_wait_event_early_event),
        cmocka_unit_test(test_cli_event_data),
        cmocka_unit_test(test_map_10000_items_in_order),
        cmocka_unit_test(test_map_child_failure),
        cmocka_unit_test(test_map_child_input_checked),
        cmocka_unit_test(test_failure_policy),
        cmocka_unit_test(test_interrupted_failure_policy),
        cmocka_unit_test(test_map_concurrency_bound),
        cmocka_unit_test(test_concurrency_key_serialises),
        cmocka_unit_test(test_retry_reruns_only_failed),
        cmocka_unit_test(test_cancel_running_run),
        cmocka_unit_test(test_templates),
        cmocka_unit_test(test_bad_definitions_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
