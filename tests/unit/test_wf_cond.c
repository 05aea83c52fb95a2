/* tests/unit/test_wf_cond.c: condition grammar, precedence, evaluation and references. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/wf_cond.h"

static json_t *ctx;

static int setup(void **state)
{
    (void)state;
    ctx =
        json_loads("{\"input\": {\"score\": 42, \"ratio\": 0.5, \"name\": \"ann\", \"empty\": \"\","
                   " \"zero\": 0, \"nil\": null, \"no\": false, \"yes\": true, \"tags\": [\"a\"],"
                   " \"obj\": {}, \"country\": \"FR\"},"
                   " \"steps\": {\"wait\": {\"output\": {\"timed_out\": true}},"
                   "            \"research\": {\"output\": {\"fit\": \"high\", \"n\": 3}}},"
                   " \"run\": {\"id\": 9}, \"item\": {\"email\": \"x@y\"}, \"index\": 0}",
                   0, NULL);
    assert_non_null(ctx);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    json_decref(ctx);
    return 0;
}

static bool eval(const char *src)
{
    wf_cond *c = NULL;
    eng_err err;
    eng_err_clear(&err);
    if (wf_cond_parse(src, &c, &err) != ENG_OK)
        fail_msg("parse \"%s\": %s", src, err.msg);
    bool r = false;
    assert_int_equal(wf_cond_eval(c, ctx, &r, &err), ENG_OK);
    wf_cond_free(c);
    return r;
}

#define T(src) assert_true(eval(src))
#define F(src) assert_false(eval(src))

static void expect_parse_error(const char *src, const char *msg_part)
{
    wf_cond *c = (wf_cond *)0x1;
    eng_err err;
    eng_err_clear(&err);
    assert_int_equal(wf_cond_parse(src, &c, &err), ENG_EINVAL);
    assert_ptr_equal(c, (wf_cond *)0x1);
    if (!strstr(err.msg, msg_part))
        fail_msg("parse \"%s\": message \"%s\" lacks \"%s\"", src, err.msg, msg_part);
}

static void test_comparisons(void **state)
{
    (void)state;
    T("input.score == 42");
    T("input.score == 42.0");
    F("input.score == \"42\"");
    T("input.score != 41");
    T("input.score > 41");
    F("input.score > 42");
    T("input.score >= 42");
    T("input.score < 42.5");
    T("input.score <= 42");
    T("input.ratio < 1");
    T("input.name == \"ann\"");
    T("input.name < \"bob\"");
    F("input.name > \"bob\"");
    T("\"b\" > \"a\"");
    F("input.name < 5"); /* not comparable */
    F("input.name > 5");
    T("input.nil == null");
    T("input.no == false");
    T("input.tags exists");
    T("steps.wait.output.timed_out == true");
    T("steps.research.output.fit == \"high\"");
    T("run.id == 9");
    T("item.email == \"x@y\"");
    T("index == 0");
    T("-1 < 0");
    T("1e3 == 1000");
    T("input.name==\"ann\"");
}

static void test_in_and_exists(void **state)
{
    (void)state;
    T("input.country in [\"FR\", \"DE\"]");
    F("input.country in [\"US\"]");
    F("input.country in []");
    T("input.score in [1, 42.0]");
    F("input.missing in [null]");
    T("input.nil in [null]");
    T("input.name exists");
    F("input.missing exists");
    F("input.nil exists");
    T("input.zero exists");
    T("not input.missing exists");
}

static void test_truthiness(void **state)
{
    (void)state;
    T("input.score");
    T("input.yes");
    T("input.name");
    T("input.tags");
    T("input.obj");
    F("input.zero");
    F("input.empty");
    F("input.nil");
    F("input.no");
    F("input.missing");
    T("true");
    F("false");
    F("null");
    T("{{ input.yes }}");
    T("{{input.score}} == 42");
}

static void test_missing_paths(void **state)
{
    (void)state;
    F("input.missing == 1");
    F("input.missing == null");
    T("input.missing != 1");
    F("input.missing < 1");
    F("input.missing >= 1");
    F("1 > input.missing");
    T("input.missing == input.other_missing");
    F("steps.nope.output.x == 1");
    F("input.name.deeper == 1");
}

static void test_boolean_ops_and_precedence(void **state)
{
    (void)state;
    T("input.yes and input.score == 42");
    F("input.yes and input.no");
    T("input.no or input.yes");
    F("input.no or input.zero");
    /* and binds tighter than or */
    T("input.yes or input.no and input.no");
    F("(input.yes or input.no) and input.no");
    T("input.no and input.no or input.yes");
    /* not binds tighter than and / or, and applies to a whole comparison */
    T("not input.score == 1");
    F("not input.score == 42");
    T("not input.no and input.yes");
    F("not (input.no or input.yes)");
    T("not not input.yes");
    T("((input.yes))");
    T("input.score > 10 and (input.country in [\"FR\"] or input.missing exists)");
    T("not steps.wait.output.timed_out == false");
}

static void test_parse_errors(void **state)
{
    (void)state;
    expect_parse_error("", "empty condition");
    expect_parse_error("   ", "empty condition");
    expect_parse_error("input.a =", "expected \"==\"");
    expect_parse_error("input.a = 1", "expected \"==\"");
    expect_parse_error("input.a ! 1", "expected \"!=\"");
    expect_parse_error("input.a ==", "expected a path or a literal");
    expect_parse_error("(input.a", "expected \")\"");
    expect_parse_error("input.a)", "unexpected token");
    expect_parse_error("input.a and", "expected a path or a literal");
    expect_parse_error("input.a in \"x\"", "expected \"[\"");
    expect_parse_error("input.a in [input.b]", "expected a literal");
    expect_parse_error("input.a in [1 2]", "expected \",\" or \"]\"");
    expect_parse_error("input.a in [1,", "expected a literal");
    expect_parse_error("\"abc", "unterminated string");
    expect_parse_error("\"a\\q\"", "bad string literal");
    expect_parse_error("1.2.3", "bad number");
    expect_parse_error("input..a", "bad path");
    expect_parse_error("input.a @ 1", "unexpected character");
    expect_parse_error("5 exists", "\"exists\" needs a path");
    expect_parse_error("a b", "unexpected token");
    expect_parse_error("input.a == 1 == 2", "unexpected token");
    expect_parse_error("{{ input.a", "unclosed");
    expect_parse_error("{{ 1 }}", "bad path");
    expect_parse_error("input.a and or input.b", "expected a path or a literal");
}

static void test_limits(void **state)
{
    (void)state;
    char deep[2 * WF_COND_MAX_DEPTH + 32];
    size_t n = 0;
    for (int i = 0; i < WF_COND_MAX_DEPTH; i++)
        deep[n++] = '(';
    deep[n++] = 'x';
    for (int i = 0; i < WF_COND_MAX_DEPTH; i++)
        deep[n++] = ')';
    deep[n] = '\0';
    F(deep); /* exactly at the limit: accepted, x is missing */
    char deeper[sizeof deep + 2];
    snprintf(deeper, sizeof deeper, "(%s)", deep);
    expect_parse_error(deeper, "nested too deeply");
    char *nots = malloc(4 * (WF_COND_MAX_DEPTH + 1) + 8);
    nots[0] = '\0';
    for (int i = 0; i <= WF_COND_MAX_DEPTH; i++)
        strcat(nots, "not ");
    strcat(nots, "x");
    expect_parse_error(nots, "nested too deeply");
    free(nots);
    char *long_src = malloc(WF_COND_MAX_SRC + 2);
    memset(long_src, ' ', WF_COND_MAX_SRC + 1);
    long_src[0] = 'x';
    long_src[WF_COND_MAX_SRC + 1] = '\0';
    expect_parse_error(long_src, "longer than");
    free(long_src);
}

typedef struct seen {
    char buf[512];
} seen;

static eng_rc collect(void *arg, const char *path, const char *ptr, eng_err *err)
{
    seen *s = arg;
    size_t n = strlen(s->buf);
    snprintf(s->buf + n, sizeof s->buf - n, "%s@%s;", path, ptr);
    if (strcmp(path, "stop") == 0)
        return eng_err_field(err, ENG_EINVAL, ptr, "stopped");
    return ENG_OK;
}

static void test_refs(void **state)
{
    (void)state;
    wf_cond *c;
    eng_err err;
    assert_int_equal(wf_cond_parse("input.a == steps.k.output.x or not ({{item.e}} exists) and "
                                   "index in [1] and 3 < run.id",
                                   &c, &err),
                     ENG_OK);
    seen s = {{0}};
    assert_int_equal(wf_cond_refs(c, collect, &s, "/steps/1/when", &err), ENG_OK);
    assert_string_equal(s.buf, "input.a@/steps/1/when;steps.k.output.x@/steps/1/when;"
                               "item.e@/steps/1/when;index@/steps/1/when;run.id@/steps/1/when;");
    wf_cond_free(c);
    assert_int_equal(wf_cond_parse("a and stop and b", &c, &err), ENG_OK);
    seen s2 = {{0}};
    assert_int_equal(wf_cond_refs(c, collect, &s2, "/w", &err), ENG_EINVAL);
    assert_string_equal(s2.buf, "a@/w;stop@/w;");
    assert_string_equal(err.field, "/w");
    wf_cond_free(c);
    wf_cond_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_comparisons),
        cmocka_unit_test(test_in_and_exists),
        cmocka_unit_test(test_truthiness),
        cmocka_unit_test(test_missing_paths),
        cmocka_unit_test(test_boolean_ops_and_precedence),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_refs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
