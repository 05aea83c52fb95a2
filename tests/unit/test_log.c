/* tests/unit/test_log.c: the logger writes logfmt that a strict parser reads back to the values it
 * was given, whatever bytes they hold: nobody can add a key, end a line or hide one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/log.h"
#include "engine/mem.h"
#include "tests/support/th_logfmt.h"

/* Formats one line and parses it back; fails the test when it does not parse. */
static void roundtrip(th_logfmt_line *out, const char *msg, const eng_log_field *f, size_t n)
{
    char line[4096];
    size_t len = eng_log_format(line, sizeof line - 1, LOG_WARN, msg, f, n);
    char why[200];
    if (!th_logfmt_parse(line, len, out, why, sizeof why))
        fail_msg("%s: %.*s", why, (int)len, line);
}

static void test_values_come_back_unchanged(void **state)
{
    (void)state;
    static const char *const hostile[] = {
        "plain",
        "",
        "two words",
        "boom\" lvl=error run=1 forged=yes",
        "line one\nts=2026-01-01T00:00:00.000Z lvl=error msg=forged forged=yes",
        "back\\slash\\\" and \"quotes\"",
        "tab\there, cr\rthere, bell\a, del\x7f, esc\x1b[31m",
        "key=value",
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
        "=",
        "\"",
    };
    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
        th_logfmt_line l;
        eng_log_field f[] = {LOG_S("error", hostile[i]), LOG_I("run", 7)};
        roundtrip(&l, hostile[i], f, 2);
        assert_int_equal(l.n, 5); /* ts lvl msg error run: nothing added */
        assert_string_equal(th_logfmt_get(&l, "msg"), hostile[i]);
        assert_string_equal(th_logfmt_get(&l, "error"), hostile[i]);
        assert_string_equal(th_logfmt_get(&l, "run"), "7");
        assert_null(th_logfmt_get(&l, "forged"));
        th_logfmt_line_free(&l);
    }
}

static void test_invalid_utf8_replaced(void **state)
{
    (void)state;
    th_logfmt_line l;
    eng_log_field f[] = {LOG_S("body", "a\xff"
                                       "b\xc3(c\xe2\x82")};
    roundtrip(&l, "m", f, 1);
    assert_string_equal(th_logfmt_get(&l, "body"), "a\xef\xbf\xbd"
                                                   "b\xef\xbf\xbd(c\xef\xbf\xbd\xef\xbf\xbd");
    th_logfmt_line_free(&l);
}

static void test_numbers_and_null(void **state)
{
    (void)state;
    th_logfmt_line l;
    eng_log_field f[] = {LOG_I("n", -42), LOG_F("ms", 12.5), LOG_S("none", NULL)};
    roundtrip(&l, "numbers", f, 3);
    assert_string_equal(th_logfmt_get(&l, "n"), "-42");
    assert_string_equal(th_logfmt_get(&l, "ms"), "12.5");
    assert_string_equal(th_logfmt_get(&l, "none"), "");
    assert_string_equal(th_logfmt_get(&l, "lvl"), "warn");
    th_logfmt_line_free(&l);
}

/* A value too long for a line is cut inside its quotes; fields past the end are counted. */
static void test_long_values_stay_parseable(void **state)
{
    (void)state;
    size_t big = 10000;
    char *v = eng_xmalloc(big + 1);
    for (size_t i = 0; i < big; i++)
        v[i] = "ab\"\n\xc3\xa9 "[i % 7];
    v[big] = '\0';
    for (size_t cap = 96; cap <= 4096; cap = cap * 3 / 2) {
        char *line = eng_xmalloc(cap);
        eng_log_field f[] = {LOG_S("first", v), LOG_S("second", v), LOG_I("third", 3)};
        size_t len = eng_log_format(line, cap, LOG_INFO, "long", f, 3);
        assert_true(len <= cap);
        th_logfmt_line l;
        char why[200];
        if (!th_logfmt_parse(line, len, &l, why, sizeof why))
            fail_msg("cap %zu: %s: %.*s", cap, why, (int)len, line);
        const char *first = th_logfmt_get(&l, "first");
        if (first)
            assert_true(strlen(first) >= 3 && strcmp(first + strlen(first) - 3, "...") == 0);
        if (cap >= 200)
            assert_non_null(th_logfmt_get(&l, "dropped"));
        th_logfmt_line_free(&l);
        free(line);
    }
    free(v);
}

/* The request a thread serves is named once, right after msg. */
static void test_request_id(void **state)
{
    (void)state;
    eng_log_request_set("abc123");
    th_logfmt_line l;
    eng_log_field f[] = {LOG_S("path", "/v1/runs")};
    roundtrip(&l, "m", f, 1);
    assert_string_equal(l.pairs[3].key, "req");
    assert_string_equal(th_logfmt_get(&l, "req"), "abc123");
    th_logfmt_line_free(&l);
    eng_log_request_set(NULL);
    roundtrip(&l, "m", f, 1);
    assert_null(th_logfmt_get(&l, "req"));
    th_logfmt_line_free(&l);
}

/* The parser itself refuses what go-logfmt users trip over. */
static void test_parser_is_strict(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "ts=2026-01-01T00:00:00.000Z lvl=info msg=a msg=b",
        "ts=2026-01-01T00:00:00.000Z lvl=info msg=\"open",
        "ts=2026-01-01T00:00:00.000Z lvl=info msg=a  x=1",
        "ts=2026-01-01T00:00:00.000Z lvl=info msg=a x",
        "ts=2026-01-01T00:00:00.000Z lvl=info msg=a x=",
        "ts=2026-01-01T00:00:00.000Z lvl=info msg=a x=\"\\q\"",
        "ts=2026-01-01T00:00:00.000Z lvl=info msg=a x=b\"c",
        "ts=2026-01-01T00:00:00.000Z lvl=loud msg=a",
        "lvl=info ts=2026-01-01T00:00:00.000Z msg=a",
        "ts=2026-01-01T00:00:00.000Z lvl=info msg=a X=1",
        "ts=2026-01-01T00:00:00.000Z lvl=info msg=a ",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        th_logfmt_line l;
        char why[200];
        if (th_logfmt_parse(bad[i], strlen(bad[i]), &l, why, sizeof why))
            fail_msg("accepted: %s", bad[i]);
    }
    const char *good = "ts=2026-01-01T00:00:00.000Z lvl=info msg=\"a \\u00e9\\n\" x=1";
    th_logfmt_line l;
    char why[200];
    assert_true(th_logfmt_parse(good, strlen(good), &l, why, sizeof why));
    assert_string_equal(th_logfmt_get(&l, "msg"), "a \xc3\xa9\n");
    th_logfmt_line_free(&l);
}

/* eng_log_write: one line, one write, also to FLOWD_LOG_FILE (opened on the first line). */
static void test_write_to_file(void **state)
{
    (void)state;
    char path[] = "/tmp/flowd-log-test.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    const char *suite = getenv("FLOWD_LOG_FILE");
    char *saved = suite ? eng_xstrdup(suite) : NULL;
    setenv("FLOWD_LOG_FILE", path, 1);
    log_error("forged?", LOG_S("error", "x\nts=2026-01-01T00:00:00.000Z lvl=error msg=y forged=1"));
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    unlink(path);
    size_t lines = 0;
    char *err = th_logfmt_check(buf, n, &lines);
    if (err)
        fail_msg("%s", err);
    assert_int_equal(lines, 1);
    if (saved)
        setenv("FLOWD_LOG_FILE", saved, 1);
    free(saved);
}

int main(void)
{
    eng_mem_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values_come_back_unchanged),
        cmocka_unit_test(test_invalid_utf8_replaced),
        cmocka_unit_test(test_numbers_and_null),
        cmocka_unit_test(test_long_values_stay_parseable),
        cmocka_unit_test(test_request_id),
        cmocka_unit_test(test_parser_is_strict),
        cmocka_unit_test(test_write_to_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
