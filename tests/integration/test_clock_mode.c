/* tests/integration/test_clock_mode.c: the engine clock's test mode belongs to the database. Only a
 * database in test mode lets its clock move (whatever the command line's environment says), a
 * server without test mode refuses a clock that test mode left ahead of real time, `flowd clock
 * reset` is the way back, and `clock advance --to-next-due` jumps to the next scheduled step. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_engine.h"

#define DAY_MS 86400000LL

static const char *const test_env[] = {"FLOWD_TEST_CLOCK=1", NULL};
static const char *const normal_env[] = {"FLOWD_TEST_CLOCK", NULL};

/* Runs flowd with args after `--database DB`; returns the exit status, output in *out / *err. */
static int flowd(const char *db, const char *const *env, char **out, char **err, const char *a1,
                 const char *a2, const char *a3)
{
    const char *argv[] = {"flowd", "--database", db, a1, a2, a3, NULL};
    return th_flowd_run(argv, env, out, err);
}

static long long offset_ms(const char *db)
{
    return th_pg_long(db, "SELECT offset_ms FROM flowd_clock");
}

static void test_advance_needs_a_database_in_test_mode(void **state)
{
    (void)state;
    char *db = th_engine_db("clk_mode", NULL);
    /* a server in normal mode started on it: the command line's FLOWD_TEST_CLOCK=1 changes nothing */
    free(th_pg_value(db, "SELECT flowd_clock_start(false)"));
    char *err = NULL;
    assert_int_equal(flowd(db, test_env, NULL, &err, "clock", "advance", "1h"), 1);
    assert_non_null(strstr(err, "test mode"));
    free(err);
    err = NULL;
    assert_int_equal(flowd(db, test_env, NULL, &err, "clock", "advance", "--to-next-due"), 1);
    assert_non_null(strstr(err, "test mode"));
    free(err);
    assert_int_equal(offset_ms(db), 0);

    /* a server in test mode: the clock moves, whatever this process's environment */
    free(th_pg_value(db, "SELECT flowd_clock_start(true)"));
    char *out = NULL;
    assert_int_equal(flowd(db, normal_env, &out, NULL, "clock", "advance", "1h"), 0);
    assert_non_null(strstr(out, "3600000"));
    free(out);
    assert_int_equal(offset_ms(db), 3600000);
    free(db);
}

static void test_normal_server_refuses_a_clock_left_ahead(void **state)
{
    (void)state;
    char *db = th_engine_db("clk_refuse", NULL);
    char *out = NULL, *err = NULL;
    assert_int_equal(flowd(db, normal_env, &out, NULL, "clock", "advance", "36d"), 0);
    free(out);

    /* `flowd serve` without test mode stops at once and says how to go on */
    const char *serve[] = {"flowd", "--database", db, "serve", "--role", "worker", "--workers", "1",
                           NULL};
    assert_int_equal(th_flowd_run(serve, normal_env, NULL, &err), 1);
    assert_non_null(strstr(err, "36 days"));
    assert_non_null(strstr(err, "flowd clock reset"));
    assert_non_null(strstr(err, "--data"));
    free(err);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM worker_leases"), 0);
    assert_int_equal(offset_ms(db), 36 * DAY_MS);

    /* reset brings it back; a server in normal mode then takes the database out of test mode */
    out = NULL;
    assert_int_equal(flowd(db, normal_env, &out, NULL, "clock", "reset", NULL), 0);
    assert_non_null(strstr(out, "3110400000"));
    free(out);
    assert_int_equal(offset_ms(db), 0);
    char *mode = th_pg_value(db, "SELECT flowd_clock_start(false)->>'test_mode'");
    assert_string_equal(mode, "false");
    free(mode);
    err = NULL;
    assert_int_equal(flowd(db, test_env, NULL, &err, "clock", "advance", "1d"), 1);
    free(err);
    assert_int_equal(offset_ms(db), 0);
    free(db);
}

static void test_advance_to_next_due(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("clk_next", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"later\", \"steps\": [{\"key\": \"now\", \"kind\": \"transform\"},"
        " {\"key\": \"in2d\", \"kind\": \"transform\", \"delay\": \"2d\"},"
        " {\"key\": \"in5d\", \"kind\": \"transform\", \"delay\": \"5d\"}]}");
    th_engine_enqueue(db, tenant, wf, 1, NULL, 0);
    /* the step due now is no reason to move; the earliest one due later is */
    char *out = NULL;
    assert_int_equal(flowd(db, normal_env, &out, NULL, "clock", "advance", "--to-next-due"), 0);
    assert_non_null(strstr(out, "the next due step"));
    free(out);
    long long off = offset_ms(db);
    assert_true(off > 2 * DAY_MS - 60000 && off <= 2 * DAY_MS);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM steps WHERE run_at <= flowd_now()"), 2);
    out = NULL;
    assert_int_equal(flowd(db, normal_env, &out, NULL, "clock", "advance", "--to-next-due"), 0);
    free(out);
    off = offset_ms(db);
    assert_true(off > 5 * DAY_MS - 60000 && off <= 5 * DAY_MS);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM steps WHERE run_at <= flowd_now()"), 3);
    /* nothing later: the clock stays */
    out = NULL;
    assert_int_equal(flowd(db, normal_env, &out, NULL, "clock", "advance", "--to-next-due"), 0);
    assert_non_null(strstr(out, "nothing is scheduled later"));
    free(out);
    assert_int_equal(offset_ms(db), off);
    free(db);
}

/* /healthz tells whether the server (and so its database's clock) is in test mode. */
static void test_healthz_shows_the_mode(void **state)
{
    (void)state;
    for (int test = 0; test < 2; test++) {
        th_api_opts o = {.prefix = "clk_health", .no_workers = true, .threads = 1,
                         .test_clock = test == 1};
        th_api *a = th_api_start(&o);
        json_t *h = th_api_json(a, 200, "GET", "/healthz", NULL);
        assert_true(json_is_boolean(json_object_get(h, "test_clock")));
        assert_int_equal(json_is_true(json_object_get(h, "test_clock")), test == 1);
        json_decref(h);
        th_api_stop(a);
    }
}

int main(void)
{
    th_api_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_advance_needs_a_database_in_test_mode),
        cmocka_unit_test(test_normal_server_refuses_a_clock_left_ahead),
        cmocka_unit_test(test_advance_to_next_due),
        cmocka_unit_test(test_healthz_shows_the_mode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
