/* tests/unit/test_duration.c: eng_duration_parse and eng_time_parse_rfc3339. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "engine/clock.h"
#include "engine/duration.h"

static int64_t ok_ms(const char *s)
{
    int64_t ms = -1;
    eng_err err;
    assert_int_equal(eng_duration_parse(s, &ms, &err), ENG_OK);
    return ms;
}

static void expect_bad(const char *s, const char *msg_part)
{
    int64_t ms = 12345;
    eng_err err;
    eng_err_clear(&err);
    assert_int_equal(eng_duration_parse(s, &ms, &err), ENG_EINVAL);
    assert_int_equal(err.rc, ENG_EINVAL);
    assert_non_null(strstr(err.msg, msg_part));
    assert_int_equal(ms, 12345); /* untouched on error */
}

static void test_units(void **state)
{
    (void)state;
    assert_int_equal(ok_ms("500ms"), 500);
    assert_int_equal(ok_ms("30s"), 30000);
    assert_int_equal(ok_ms("5m"), 300000);
    assert_int_equal(ok_ms("2h"), 7200000);
    assert_int_equal(ok_ms("3d"), 3LL * 86400000);
    assert_int_equal(ok_ms("0s"), 0);
    assert_int_equal(ok_ms("0ms"), 0);
}

static void test_combinations(void **state)
{
    (void)state;
    assert_int_equal(ok_ms("1h30m"), 5400000);
    assert_int_equal(ok_ms("1d2h3m4s5ms"), 86400000LL + 7200000 + 180000 + 4000 + 5);
    assert_int_equal(ok_ms("1m1ms"), 60001);
}

static void test_rejects(void **state)
{
    (void)state;
    expect_bad("", "empty");
    expect_bad(NULL, "empty");
    expect_bad("-5s", "negative");
    expect_bad("5", "unit");
    expect_bad("5w", "unit");
    expect_bad("5sec", "digits");
    expect_bad("s", "digits");
    expect_bad(" 5s", "digits");
    expect_bad("5s ", "digits");
    expect_bad("1.5h", "unit");
    expect_bad("+5s", "digits");
    expect_bad("5 s", "unit");
    expect_bad("5M", "unit");
}

static void test_overflow(void **state)
{
    (void)state;
    assert_int_equal(ok_ms("3660d"), 3660LL * 86400000);
    expect_bad("3661d", "too long");
    expect_bad("99999999999999999999999999ms", "too long");
    expect_bad("9223372036854775807ms", "too long");
    expect_bad("3660d1ms", "too long");
    /* Sum of components that are fine alone. */
    expect_bad("2000d2000d", "too long");
    int64_t max = ok_ms("316224000000ms");
    assert_int_equal(max, ENG_DURATION_MAX_MS);
    expect_bad("316224000001ms", "too long");
}

/* Dates that do not exist are refused, not carried into the next month. */
static void test_rfc3339_dates(void **state)
{
    (void)state;
    int64_t ms = 0;
    eng_err err;
    assert_int_equal(eng_time_parse_rfc3339("2027-02-28T09:00:00Z", &ms, &err), ENG_OK);
    assert_int_equal(ms, 1803805200000LL);
    assert_int_equal(eng_time_parse_rfc3339("2028-02-29T00:00:00+01:00", &ms, &err), ENG_OK);
    assert_int_equal(eng_time_parse_rfc3339("2000-02-29T00:00:00Z", &ms, &err), ENG_OK);
    assert_int_equal(eng_time_parse_rfc3339("2026-12-31T23:59:59.5Z", &ms, &err), ENG_OK);
    static const char *const bad[] = {"2027-02-31T09:00:00Z", "2027-02-29T09:00:00Z",
                                      "1900-02-29T09:00:00Z", "2026-04-31T09:00:00Z",
                                      "2026-11-31T00:00:00Z", "2026-01-32T00:00:00Z",
                                      "2026-00-10T00:00:00Z", "2026-01-00T00:00:00Z"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ms = 7;
        if (eng_time_parse_rfc3339(bad[i], &ms, &err) != ENG_EINVAL)
            fail_msg("%s was accepted", bad[i]);
        assert_int_equal(ms, 7);
    }
    assert_int_equal(eng_time_parse_rfc3339("2027-02-31T09:00:00Z", &ms, &err), ENG_EINVAL);
    assert_non_null(strstr(err.msg, "2027-02 has no day 31"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_units),
        cmocka_unit_test(test_combinations),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_overflow),
        cmocka_unit_test(test_rfc3339_dates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
