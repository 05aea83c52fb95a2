/* tests/integration/test_retention.c: finished runs past the retention are deleted with what hangs
 * off them (their send ledger rows included), as are provider posts' dedup keys past it; live runs
 * and recent runs stay; a backlog goes at once, not 1,000 runs per 10 s; outbound webhook messages
 * past it go, in bounded batches, once their deliveries ended. Time moves with the test clock. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <signal.h>
#include <stdlib.h>

#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "engine/worker.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"

static const char one_def[] = "{\"name\": \"one\", \"steps\": [{\"key\": \"s\", \"kind\": \"transform\"}]}";
static const char keyed_def[] =
    "{\"name\": \"keyed\", \"steps\": [{\"key\": \"s\", \"kind\": \"transform\","
    " \"concurrency_key\": \"k\"}]}";
static const char wait_def[] =
    "{\"name\": \"waits\", \"steps\": [{\"key\": \"w\", \"kind\": \"wait_event\","
    " \"input\": {\"event\": \"never\", \"key\": \"k\"}}]}";

/* runs with search values, two of them started by a map step (their search values too) */
static const char child_def[] = "{\"name\": \"child\", \"search\": {\"n\": \"{{input.n}}\"},"
                                " \"steps\": [{\"key\": \"c\", \"kind\": \"transform\"}]}";
static const char mapped_def[] =
    "{\"name\": \"mapped\", \"search\": {\"lead\": \"{{input.lead}}\"}, \"steps\": [{\"key\": \"m\","
    " \"kind\": \"map\", \"input\": {\"items\": [\"a\", \"b\"], \"workflow\": \"child\","
    " \"input\": {\"n\": \"{{item}}\"}}}]}";

static void test_prunes_only_what_is_past_retention(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("retention", &tenant);
    long long one = th_engine_register(db, tenant, one_def);
    long long waits = th_engine_register(db, tenant, wait_def);
    th_engine_enqueue(db, tenant, one, 20, NULL, 0);
    th_engine_enqueue(db, tenant, waits, 1, NULL, 0);
    /* the second queues behind the first (ckey_queue) */
    th_engine_enqueue(db, tenant, th_engine_register(db, tenant, keyed_def), 2, NULL, 0);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM ckey_queue"), 1);
    assert_int_equal(th_pg_longf(db, "SELECT total FROM flowd_create_batch(%lld, 'one', NULL,"
                                     " '[{}, {}, {}, {}, {}]', NULL)", tenant),
                     5);
    assert_int_equal(th_pg_longf(db, "SELECT resumed FROM flowd_event(%lld, 'old', 'k', '{}')",
                                 tenant),
                     0);
    th_engine_register(db, tenant, child_def);
    th_engine_enqueue(db, tenant, th_engine_register(db, tenant, mapped_def), 1,
                      "{\"lead\": \"30012\"}", 0);
    th_workers *ws = th_workers_start(db, 1, "ret-work", 0, 0, 0);
    assert_true(th_engine_wait(db, "SELECT count(*) = 30 FROM runs WHERE state = 'succeeded'", 30));
    assert_true(th_engine_wait(db, "SELECT count(*) = 1 FROM steps WHERE state = 'waiting'", 30));
    th_workers_stop(ws);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM run_search"), 3);
    /* a rendered input kept for every step (the kinds that keep one are not needed to test this) */
    th_pg_long(db, "SELECT count(*) FROM (SELECT flowd_step_inputs_put(jsonb_agg(jsonb_build_object("
                   "'step', id, 'tenant', tenant_id, 'attempt', 1, 'bytes', 2, 'input', '{}'::jsonb)))"
                   " FROM steps) x");
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM step_inputs"),
                     th_pg_long(db, "SELECT count(*) FROM steps"));

    /* a month later: one more run finishes, recent enough to keep */
    assert_true(th_pg_long(db, "SELECT flowd_clock_advance(31 * 86400000::bigint)") > 0);
    long long old_run = th_pg_long(db, "SELECT min(id) FROM runs WHERE batch_id IS NULL");
    /* a ledger row of an old run, one of a live one, and provider posts' dedup keys */
    th_pg_longf(db, "SELECT count(*) FROM flowd_send_claim(%lld, '%lld:s', 'sms', 'x', %lld, NULL,"
                    " '+15550000001', 'h', 'at_most_once')",
                tenant, old_run, old_run);
    th_pg_longf(db, "SELECT count(*) FROM flowd_send_claim(%lld, 'live:s', 'sms', 'x', NULL, NULL,"
                    " '+15550000002', 'h', 'at_most_once')",
                tenant);
    th_pg_longf(db, "WITH x AS (INSERT INTO webhook_deliveries (tenant_id, provider, dedup_key,"
                    " received_at) VALUES (%lld, 'twilio', 'old', now() - interval '40 days'),"
                    " (%lld, 'twilio', 'new', flowd_now()) RETURNING 1) SELECT count(*) FROM x",
                tenant, tenant);
    th_engine_enqueue(db, tenant, one, 1, NULL, 0);

    eng_worker_opts wo = {.conninfo = db, .owner = "ret-prune", .reaper = true,
                          .retention_ms = 30LL * 86400000};
    eng_worker *w = eng_worker_start(&wo);
    bool pruned = th_engine_wait(db, "SELECT count(*) = 2 FROM runs", 30);
    eng_worker_stop(w, 5);
    assert_true(pruned);
    /* left: the run still waiting and the one that just finished */
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs WHERE state = 'running'"), 1);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs WHERE state = 'succeeded'"), 1);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM steps"), 2);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM run_search"), 0);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM step_inputs"
                                    " WHERE step_id NOT IN (SELECT id FROM steps)"),
                     0);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM run_events"
                                    " WHERE run_id NOT IN (SELECT id FROM runs)"),
                     0);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM batches"), 0);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM ckey_queue"), 0);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM events"), 0);
    char *left = th_pg_value(db, "SELECT string_agg(send_key, ',') FROM sends");
    assert_string_equal(left, "live:s");
    free(left);
    left = th_pg_value(db, "SELECT string_agg(dedup_key, ',') FROM webhook_deliveries");
    assert_string_equal(left, "new");
    free(left);
    free(db);
}

/* A backlog of 5,000 runs past the retention goes in a few passes back to back: at 1,000 runs per
 * 10 s it took 40 s. */
static void test_backlog_goes_at_once(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("retention_backlog", &tenant);
    long long one = th_engine_register(db, tenant, one_def);
    th_engine_enqueue(db, tenant, one, 5000, NULL, 1000);
    th_workers *ws = th_workers_start(db, 1, "ret-bl", 0, 0, 0);
    assert_true(
        th_engine_wait(db, "SELECT count(*) = 5000 FROM runs WHERE state = 'succeeded'", 60));
    th_workers_stop(ws);
    assert_true(th_pg_long(db, "SELECT flowd_clock_advance(2 * 86400000::bigint)") > 0);
    eng_worker_opts wo = {.conninfo = db, .owner = "ret-bl-prune", .reaper = true,
                          .retention_ms = 86400000};
    long long t0 = th_now_ms();
    eng_worker *w = eng_worker_start(&wo);
    bool pruned = th_engine_wait(db, "SELECT count(*) = 0 FROM runs", 20);
    long long took = th_now_ms() - t0;
    eng_worker_stop(w, 5);
    print_message("5000 runs pruned in %lld ms\n", took);
    assert_true(pruned);
    assert_true(took < 15000);
    free(db);
}

/* A webhook message with n deliveries in state (none when n is 0), created days_ago on the engine
 * clock; each delivery has one attempt. */
static void webhook_message(const char *db, long long tenant, long long endpoint, int days_ago,
                            const char *state, int n)
{
    th_pg_longf(db,
                "WITH m AS (INSERT INTO webhook_messages (tenant_id, type, body, created_at)"
                " VALUES (%lld, 'run.succeeded', '{}', flowd_now() - %d * interval '1 day')"
                " RETURNING id),"
                " s AS (INSERT INTO webhook_sends (tenant_id, message_id, endpoint_id, state,"
                " next_at, created_at) SELECT %lld, m.id, %lld, '%s', flowd_now(), flowd_now()"
                " FROM m, generate_series(1, %d) RETURNING id),"
                " a AS (INSERT INTO webhook_attempts (send_id, at, status, latency_ms)"
                " SELECT s.id, flowd_now(), 200, 1 FROM s RETURNING 1)"
                " SELECT count(*) FROM a",
                tenant, days_ago, tenant, endpoint, state, n);
}

/* Delivered and failed messages past the retention go with their deliveries and attempts, at most
 * p_limit a pass; a pending one and a recent one stay. */
static void test_webhook_messages(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("retention_webhooks", &tenant);
    long long ep = th_pg_longf(db, "INSERT INTO webhook_endpoints (tenant_id, url, secret,"
                                   " created_at, updated_at) VALUES (%lld, 'https://x.example/',"
                                   " 'whsec_eA==', now(), now()) RETURNING id",
                               tenant);
    for (int i = 0; i < 4; i++)
        webhook_message(db, tenant, ep, 40, "succeeded", 2);
    webhook_message(db, tenant, ep, 40, "failed", 1);
    webhook_message(db, tenant, ep, 40, "succeeded", 0); /* its endpoint was deleted */
    webhook_message(db, tenant, ep, 40, "pending", 1);
    webhook_message(db, tenant, ep, 1, "succeeded", 1);
    const char *prune = "SELECT flowd_prune(flowd_now() - interval '30 days', 4)";
    assert_int_equal(th_pg_long(db, prune), 4);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM webhook_messages"), 4);
    assert_int_equal(th_pg_long(db, prune), 2);
    assert_int_equal(th_pg_long(db, prune), 0);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM webhook_messages"), 2);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM webhook_sends"), 2);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM webhook_sends WHERE state = 'pending'"),
                     1);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM webhook_attempts"), 2);
    free(db);
}

static void test_no_retention_keeps_everything(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("retention_off", &tenant);
    long long one = th_engine_register(db, tenant, one_def);
    th_engine_enqueue(db, tenant, one, 5, NULL, 0);
    th_workers *ws = th_workers_start(db, 1, "keep", 0, 0, 0);
    assert_true(th_engine_wait(db, "SELECT count(*) = 5 FROM runs WHERE state = 'succeeded'", 30));
    assert_true(th_pg_long(db, "SELECT flowd_clock_advance(400 * 86400000::bigint)") > 0);
    th_sleep_ms(1500); /* the reaping worker runs on past the clock move */
    th_workers_stop(ws);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs"), 5);
    free(db);
}

/* Retention finds old runs below the first run created after the cutoff (a bisection over the
 * primary key): the bound at each point of a history with gaps in its ids. */
static void test_created_bound(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("retention_bound", &tenant);
    long long one = th_engine_register(db, tenant, one_def);
    assert_int_equal(th_pg_long(db, "SELECT flowd_runs_created_bound(flowd_now())"), 0);
    /* runs on three days, one day apart, and a gap left by deleted runs on the second */
    th_engine_enqueue(db, tenant, one, 7, NULL, 0);
    assert_true(th_pg_long(db, "SELECT flowd_clock_advance(86400000::bigint)") > 0);
    th_engine_enqueue(db, tenant, one, 9, NULL, 0);
    assert_int_equal(th_pg_long(db, "WITH d AS (DELETE FROM runs WHERE id IN (SELECT id FROM runs"
                                    " ORDER BY id OFFSET 8 LIMIT 6) RETURNING 1)"
                                    " SELECT count(*) FROM d"),
                     6);
    assert_true(th_pg_long(db, "SELECT flowd_clock_advance(86400000::bigint)") > 0);
    th_engine_enqueue(db, tenant, one, 2, NULL, 0);
    long long first = th_pg_long(db, "SELECT min(id) FROM runs");
    long long day2 = th_pg_long(db, "SELECT min(id) FROM runs"
                                    " WHERE id > (SELECT min(id) + 6 FROM runs)");
    long long day3 = th_pg_long(db, "SELECT max(id) - 1 FROM runs");
    long long last = th_pg_long(db, "SELECT max(id) FROM runs");
    const struct {
        const char *at;
        long long want;
    } cases[] = {
        {"flowd_now() - interval '60 hours'", first},
        {"flowd_now() - interval '36 hours'", day2},
        {"flowd_now() - interval '12 hours'", day3},
        {"flowd_now() + interval '1 hour'", last + 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        long long got = th_pg_longf(db, "SELECT flowd_runs_created_bound(%s)", cases[i].at);
        if (got != cases[i].want)
            fail_msg("bound at %s: %lld, want %lld", cases[i].at, got, cases[i].want);
    }
    free(db);
}

int main(void)
{
    eng_mem_init();
    eng_log_init();
    eng_step_register_builtins();
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prunes_only_what_is_past_retention),
        cmocka_unit_test(test_webhook_messages),
        cmocka_unit_test(test_no_retention_keeps_everything),
        cmocka_unit_test(test_backlog_goes_at_once),
        cmocka_unit_test(test_created_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
