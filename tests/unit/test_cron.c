/* tests/unit/test_cron.c: cron_parse and cron_next, with hand-checked fire times in UTC. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "engine/cron.h"

static int64_t ms_of(const char *iso) /* "2026-03-08T07:00:00Z" */
{
    struct tm tm = {0};
    int msec = 0;
    if (sscanf(iso, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &msec) < 6)
        fail_msg("bad instant %s", iso);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + msec;
}

static const char *iso_of(int64_t ms, char *buf, size_t cap)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

/* Checks that expr in zone fires, after the instant `after`, at each of want[] in turn. */
static void expect_fires(const char *expr, const char *zone, const char *after,
                         const char *const *want, size_t n)
{
    cron *c = NULL;
    eng_err err;
    eng_err_clear(&err);
    if (cron_parse(expr, &c, &err) != ENG_OK)
        fail_msg("%s: %s", expr, err.msg);
    int64_t t = ms_of(after);
    for (size_t i = 0; i < n; i++) {
        char got[40];
        if (cron_next(c, zone, t, &t, &err) != ENG_OK)
            fail_msg("%s in %s: %s", expr, zone, err.msg);
        if (strcmp(iso_of(t, got, sizeof got), want[i]) != 0)
            fail_msg("%s in %s after %s: fire %zu is %s, expected %s", expr, zone, after, i + 1,
                     got, want[i]);
    }
    cron_free(c);
}

#define FIRES(expr, zone, after, ...)                                                          \
    do {                                                                                       \
        const char *const want_[] = {__VA_ARGS__};                                             \
        expect_fires(expr, zone, after, want_, ENG_ARRAY_LEN(want_));                          \
    } while (0)

static void test_fields(void **state)
{
    (void)state;
    FIRES("*/15 * * * *", NULL, "2026-12-07T12:07:30Z", "2026-12-07T12:15:00Z",
          "2026-12-07T12:30:00Z");
    FIRES("10-50/20 9 * * *", "UTC", "2026-12-07T09:10:00Z", "2026-12-07T09:30:00Z",
          "2026-12-07T09:50:00Z", "2026-12-08T09:10:00Z");
    FIRES("0 8,17 * * *", "", "2026-12-07T08:00:00Z", "2026-12-07T17:00:00Z",
          "2026-12-08T08:00:00Z");
    /* names, any case; 2026-03-27 is a Friday, 2027-01-01 a Friday */
    FIRES("0 8 * JAN-mar mon-FRI", NULL, "2026-03-27T12:00:00Z", "2026-03-30T08:00:00Z",
          "2026-03-31T08:00:00Z", "2027-01-01T08:00:00Z");
    /* 7 is Sunday too; 2026-12-13 is a Sunday */
    FIRES("0 0 * * 7", NULL, "2026-12-07T00:00:00Z", "2026-12-13T00:00:00Z");
    FIRES("0 0 * * 5-7", NULL, "2026-12-07T00:00:00Z", "2026-12-11T00:00:00Z",
          "2026-12-12T00:00:00Z", "2026-12-13T00:00:00Z", "2026-12-18T00:00:00Z");
    /* seconds field; strictly after, with milliseconds */
    FIRES("*/15 * * * * *", NULL, "2026-12-07T12:00:07.500Z", "2026-12-07T12:00:15Z",
          "2026-12-07T12:00:30Z");
    FIRES("30 0 12 * * *", NULL, "2026-12-07T12:00:30.000Z", "2026-12-08T12:00:30Z");
    FIRES("0 12 * * *", NULL, "2026-12-07T11:59:59.999Z", "2026-12-07T12:00:00Z");
}

static void test_days(void **state)
{
    (void)state;
    /* both restricted: either matches (Dec 14 and 21 2026 are Mondays, 2027-01-01 a Friday) */
    FIRES("0 9 1 * MON", NULL, "2026-12-07T10:00:00Z", "2026-12-14T09:00:00Z",
          "2026-12-21T09:00:00Z", "2026-12-28T09:00:00Z", "2027-01-01T09:00:00Z");
    /* one of them `*`: only the other restricts */
    FIRES("0 9 * * MON", NULL, "2026-12-28T10:00:00Z", "2027-01-04T09:00:00Z");
    FIRES("0 9 1 * ?", NULL, "2026-12-28T10:00:00Z", "2027-01-01T09:00:00Z");
    /* a step restricts: Jan 2027 odd days, or Sundays (Jan 3 2027 is a Sunday) */
    FIRES("0 0 */2 * SUN", NULL, "2027-01-01T12:00:00Z", "2027-01-03T00:00:00Z",
          "2027-01-05T00:00:00Z", "2027-01-07T00:00:00Z", "2027-01-09T00:00:00Z",
          "2027-01-10T00:00:00Z");
    /* leap years: 2100 is not one */
    FIRES("0 0 29 2 *", NULL, "2026-01-01T00:00:00Z", "2028-02-29T00:00:00Z",
          "2032-02-29T00:00:00Z");
    FIRES("0 0 29 FEB *", NULL, "2096-03-01T00:00:00Z", "2104-02-29T00:00:00Z");
    FIRES("0 12 L * *", NULL, "2026-01-31T12:00:00Z", "2026-02-28T12:00:00Z",
          "2026-03-31T12:00:00Z", "2026-04-30T12:00:00Z");
    FIRES("0 12 L 2 *", NULL, "2027-03-01T00:00:00Z", "2028-02-29T12:00:00Z");
    FIRES("0 0 15,L * *", NULL, "2026-02-16T00:00:00Z", "2026-02-28T00:00:00Z",
          "2026-03-15T00:00:00Z");
    /* Fridays of December 2026: 4, 11, 18, 25 */
    FIRES("0 9 * * FRI#2", NULL, "2026-12-01T00:00:00Z", "2026-12-11T09:00:00Z",
          "2027-01-08T09:00:00Z");
    FIRES("0 9 * * 5#L", NULL, "2026-12-01T00:00:00Z", "2026-12-25T09:00:00Z",
          "2027-01-29T09:00:00Z");
    FIRES("0 9 * * 1#5", NULL, "2026-12-01T00:00:00Z", "2027-03-29T09:00:00Z");
}

static void test_macros(void **state)
{
    (void)state;
    FIRES("@hourly", NULL, "2026-12-07T10:30:00Z", "2026-12-07T11:00:00Z");
    FIRES("@daily", NULL, "2026-12-07T10:30:00Z", "2026-12-08T00:00:00Z");
    FIRES("@midnight", NULL, "2026-12-07T10:30:00Z", "2026-12-08T00:00:00Z");
    FIRES("@weekly", NULL, "2026-12-07T10:30:00Z", "2026-12-13T00:00:00Z");
    FIRES("@monthly", NULL, "2026-12-07T10:30:00Z", "2027-01-01T00:00:00Z");
    FIRES("@yearly", NULL, "2026-12-07T10:30:00Z", "2027-01-01T00:00:00Z");
    FIRES(" @ANNUALLY ", NULL, "2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z");
}

static void test_dst(void **state)
{
    (void)state;
    /* New York 2026-03-08: 02:00 EST (07:00Z) jumps to 03:00 EDT. 02:30 does not exist: it fires
     * at the end of the gap, and the next day at 02:30 EDT. */
    FIRES("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", "2026-03-08T07:00:00Z",
          "2026-03-09T06:30:00Z");
    /* the gap's 02:00, 02:15, 02:30, 02:45 all fold into one fire at 03:00 EDT */
    FIRES("*/15 * * * *", "America/New_York", "2026-03-08T06:40:00Z", "2026-03-08T06:45:00Z",
          "2026-03-08T07:00:00Z", "2026-03-08T07:15:00Z");
    /* New York 2026-11-01: 02:00 EDT (06:00Z) turns back to 01:00 EST. 01:30 fires once, EDT. */
    FIRES("30 1 * * *", "America/New_York", "2026-11-01T04:00:00Z", "2026-11-01T05:30:00Z",
          "2026-11-02T06:30:00Z");
    /* from inside the second pass of the repeated hour */
    FIRES("30 1 * * *", "America/New_York", "2026-11-01T06:10:00Z", "2026-11-02T06:30:00Z");
    FIRES("*/20 * * * *", "America/New_York", "2026-11-01T05:50:00Z", "2026-11-01T07:00:00Z",
          "2026-11-01T07:20:00Z");
    FIRES("*/20 * * * *", "America/New_York", "2026-11-01T06:30:00Z", "2026-11-01T07:00:00Z");
    /* Berlin 2026-03-29: 02:00 CET (01:00Z) jumps to 03:00 CEST */
    FIRES("0 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", "2026-03-29T01:00:00Z",
          "2026-03-30T00:00:00Z");
    /* Berlin 2026-10-25: 03:00 CEST (01:00Z) turns back to 02:00 CET */
    FIRES("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", "2026-10-25T00:30:00Z",
          "2026-10-26T01:30:00Z");
    FIRES("0 * * * *", "Europe/Berlin", "2026-10-24T23:30:00Z", "2026-10-25T00:00:00Z",
          "2026-10-25T02:00:00Z");
    /* Lord Howe, 30-minute DST. 2026-10-04: 02:00 +10:30 (15:30Z on the 3rd) jumps to 02:30 +11 */
    FIRES("15 2 * * *", "Australia/Lord_Howe", "2026-10-03T00:00:00Z", "2026-10-03T15:30:00Z",
          "2026-10-04T15:15:00Z");
    /* 2026-04-05: 02:00 +11 (15:00Z on the 4th) turns back to 01:30 +10:30 */
    FIRES("45 1 * * *", "Australia/Lord_Howe", "2026-04-04T00:00:00Z", "2026-04-04T14:45:00Z",
          "2026-04-05T15:15:00Z");
    /* Kathmandu, +05:45 */
    FIRES("0 9 * * *", "Asia/Kathmandu", "2026-01-01T00:00:00Z", "2026-01-01T03:15:00Z",
          "2026-01-02T03:15:00Z");
    FIRES("0 0 1 1 *", "Asia/Kathmandu", "2026-06-01T00:00:00Z", "2026-12-31T18:15:00Z");
}

static void expect_bad(const char *expr, const char *msg_part)
{
    cron *c = (cron *)(uintptr_t)1; /* must stay untouched */
    eng_err err;
    eng_err_clear(&err);
    if (cron_parse(expr, &c, &err) != ENG_EINVAL)
        fail_msg("%s was accepted", expr);
    assert_ptr_equal(c, (cron *)(uintptr_t)1);
    if (!strstr(err.msg, msg_part))
        fail_msg("%s: message \"%s\" lacks \"%s\"", expr, err.msg, msg_part);
}

static void test_errors(void **state)
{
    (void)state;
    expect_bad("", "empty cron expression");
    expect_bad("* * *", "has 3 fields (expected 5, or 6 with seconds first)");
    expect_bad("0 0 0 * * * 2026", "more than 6 fields");
    expect_bad("61 * * * *", "minute field \"61\": 61 is out of range 0-59");
    expect_bad("60 * * * * *", "second field \"60\": 60 is out of range 0-59");
    expect_bad("0 24 * * *", "hour field \"24\": 24 is out of range 0-23");
    expect_bad("0 0 0 * *", "day-of-month field \"0\": 0 is out of range 1-31");
    expect_bad("0 0 * 13 *", "month field \"13\": 13 is out of range 1-12");
    expect_bad("0 0 * * 8", "day-of-week field \"8\": 8 is out of range 0-7");
    expect_bad("0 0 * FOO *", "month field \"FOO\": unknown month name \"FOO\"");
    expect_bad("0 0 * * MONDAY", "unknown day name \"MONDAY\"");
    expect_bad("0 0 JAN * *", "day-of-month field \"JAN\": unexpected \"J\"");
    expect_bad("5/10 * * * *", "a step needs * or a range before it");
    expect_bad("10-5 * * * *", "minute field \"10-5\": range 10-5 runs backwards");
    expect_bad("*/0 * * * *", "a step of 0 never advances");
    expect_bad("*/61 * * * *", "step 61 is larger than the range 0-59");
    expect_bad("1,,2 * * * *", "empty list item");
    expect_bad("0 0 * * MON#6", "# must be followed by 1-5 or L");
    expect_bad("0 0 1#2 * *", "# is only allowed in day-of-week");
    expect_bad("0 0 L * L", "day-of-week field \"L\": unknown day name \"L\"");
    expect_bad("@often", "unknown cron macro \"@often\"");
    expect_bad("@daily 5", "takes nothing after it");
    expect_bad("0 0 31 2 *", "never fires");
    expect_bad("0 0 30 FEB *", "never fires");
    expect_bad("0 0 31 4,6,9,11 *", "never fires");
}

static void test_zones(void **state)
{
    (void)state;
    eng_err err;
    assert_int_equal(cron_zone_check("Europe/Berlin", &err), ENG_OK);
    assert_int_equal(cron_zone_check(NULL, &err), ENG_OK);
    assert_int_equal(cron_zone_check("UTC", &err), ENG_OK);
    const char *bad[] = {"Mars/Olympus", "Europe/Berlin ", "GMT+05:00", "europe/nowhere", "x\x01",
                         "America/Argentina/Buenos_Aires/America/Argentina/Buenos_Aires/America"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(bad); i++) {
        eng_err_clear(&err);
        if (cron_zone_check(bad[i], &err) != ENG_EINVAL)
            fail_msg("zone %s was accepted", bad[i]);
        assert_non_null(strstr(err.msg, "unknown time zone"));
    }
    cron *c = NULL;
    assert_int_equal(cron_parse("* * * * *", &c, &err), ENG_OK);
    int64_t out = 42;
    assert_int_equal(cron_next(c, "Mars/Olympus", 0, &out, &err), ENG_EINVAL);
    assert_string_equal(err.msg, "unknown time zone \"Mars/Olympus\" (expected an IANA zone such "
                                 "as Europe/Berlin)");
    assert_int_equal(cron_next(c, NULL, -1, &out, &err), ENG_EINVAL);
    assert_int_equal(out, 42);
    /* the last minute before the year 10000, and nothing after it */
    assert_int_equal(cron_next(c, NULL, ms_of("9999-12-31T23:58:30Z"), &out, &err), ENG_OK);
    assert_int_equal(out, ms_of("9999-12-31T23:59:00Z"));
    assert_int_equal(cron_next(c, NULL, out, &out, &err), ENG_ENOTFOUND);
    assert_false(cron_has_seconds(c));
    cron_free(c);
    cron_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fields),  cmocka_unit_test(test_days),
        cmocka_unit_test(test_macros),  cmocka_unit_test(test_dst),
        cmocka_unit_test(test_errors),  cmocka_unit_test(test_zones),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
