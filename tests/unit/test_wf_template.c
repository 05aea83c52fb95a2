/* tests/unit/test_wf_template.c: template rendering and reference walking. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/wf_template.h"

static json_t *ctx;

static int setup(void **state)
{
    (void)state;
    ctx =
        json_loads("{\"input\": {\"lead\": {\"email\": \"a@b.c\", \"name\": \"Ann\", \"score\": 42,"
                   " \"vip\": true, \"tags\": [\"x\", \"y\"], \"nick\": null, \"ratio\": 0.1,"
                   " \"odd key\": 1, \"a-b\": 2},"
                   " \"list\": [[1, 2], [3, {\"z\": \"deep\"}]]},"
                   " \"steps\": {\"research\": {\"output\": {\"summary\": \"S\", \"n\": 3}}},"
                   " \"run\": {\"id\": 77}, \"item\": {\"email\": \"i@x\"}, \"index\": 4}",
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

/* Renders src (a JSON text) and compares with expected (a JSON text). */
static void expect_render(const char *src, const char *expected)
{
    json_t *t = json_loads(src, JSON_DECODE_ANY, NULL);
    json_t *want = json_loads(expected, JSON_DECODE_ANY, NULL);
    assert_non_null(t);
    assert_non_null(want);
    json_t *got = NULL;
    eng_err err;
    eng_err_clear(&err);
    eng_rc rc = wf_template_render(t, ctx, &got, &err);
    if (rc != ENG_OK)
        fail_msg("render %s: %s (%s)", src, err.msg, err.field);
    if (!json_equal(got, want)) {
        char *g = json_dumps(got, JSON_ENCODE_ANY);
        fail_msg("render %s: got %s, want %s", src, g, expected);
    }
    json_decref(t);
    json_decref(want);
    json_decref(got);
}

static void expect_fail(const char *src, eng_rc want_rc, const char *field, const char *msg_part)
{
    json_t *t = json_loads(src, JSON_DECODE_ANY, NULL);
    assert_non_null(t);
    json_t *got = (json_t *)0x1;
    eng_err err;
    eng_err_clear(&err);
    assert_int_equal(wf_template_render(t, ctx, &got, &err), want_rc);
    assert_ptr_equal(got, (json_t *)0x1);
    assert_string_equal(err.field, field);
    if (!strstr(err.msg, msg_part))
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, msg_part);
    json_decref(t);
}

static void test_whole_string_keeps_type(void **state)
{
    (void)state;
    expect_render("\"{{input.lead.score}}\"", "42");
    expect_render("\"{{ input.lead.vip }}\"", "true");
    expect_render("\"{{input.lead.tags}}\"", "[\"x\", \"y\"]");
    expect_render("\"{{input.lead}}\"", "{\"email\": \"a@b.c\", \"name\": \"Ann\", \"score\": 42,"
                                        " \"vip\": true, \"tags\": [\"x\", \"y\"], \"nick\": null,"
                                        " \"ratio\": 0.1, \"odd key\": 1, \"a-b\": 2}");
    expect_render("\"{{input.lead.nick}}\"", "null");
    expect_render("\"{{run.id}}\"", "77");
    expect_render("\"{{index}}\"", "4");
    expect_render("\"{{item.email}}\"", "\"i@x\"");
    expect_render("\"{{steps.research.output.summary}}\"", "\"S\"");
}

static void test_embedded_as_text(void **state)
{
    (void)state;
    expect_render("\"Hi {{input.lead.name}}!\"", "\"Hi Ann!\"");
    expect_render("\"{{input.lead.score}} pts\"", "\"42 pts\"");
    expect_render("\"vip={{input.lead.vip}} nick={{input.lead.nick}}\"", "\"vip=true nick=null\"");
    expect_render("\"r={{input.lead.ratio}}\"", "\"r=0.1\"");
    expect_render("\"t={{input.lead.tags}}\"", "\"t=[\\\"x\\\",\\\"y\\\"]\"");
    expect_render("\"{{input.lead.name}}{{input.lead.name}}\"", "\"AnnAnn\"");
    expect_render("\" {{input.lead.score}}\"", "\" 42\"");
    expect_render("\"run {{run.id}} #{{index}}\"", "\"run 77 #4\"");
    expect_render("\"no templates { here } {\"", "\"no templates { here } {\"");
}

static void test_paths_and_indices(void **state)
{
    (void)state;
    expect_render("\"{{input.lead.tags.1}}\"", "\"y\"");
    expect_render("\"{{input.lead.tags[0]}}\"", "\"x\"");
    expect_render("\"{{input.list[1][1].z}}\"", "\"deep\"");
    expect_render("\"{{input.list.1.1.z}}\"", "\"deep\"");
    expect_render("\"{{input.lead.a-b}}\"", "2");
}

static void test_nested_and_keys_untemplated(void **state)
{
    (void)state;
    expect_render(
        "{\"{{input.lead.name}}\": \"{{input.lead.name}}\","
        " \"a\": [1, \"{{input.lead.score}}\", {\"b\": \"x{{index}}\"}], \"n\": null}",
        "{\"{{input.lead.name}}\": \"Ann\", \"a\": [1, 42, {\"b\": \"x4\"}], \"n\": null}");
    expect_render("12", "12");
    expect_render("[]", "[]");
}

static void test_defaults(void **state)
{
    (void)state;
    expect_render("\"{{input.missing | default: \\\"there\\\"}}\"", "\"there\"");
    expect_render("\"Hi {{input.first|default:\\\"there\\\"}}\"", "\"Hi there\"");
    expect_render("\"{{input.missing | default: 5}}\"", "5");
    expect_render("\"{{input.missing | default: {\\\"a\\\": [1]}}}\"", "{\"a\": [1]}");
    expect_render("\"{{input.missing | default: null}}\"", "null");
    /* null takes the default too; present values win. */
    expect_render("\"{{input.lead.nick | default: \\\"anon\\\"}}\"", "\"anon\"");
    expect_render("\"{{input.lead.name | default: \\\"anon\\\"}}\"", "\"Ann\"");
    /* A string literal may contain the closing braces. */
    expect_render("\"{{input.missing | default: \\\"}}\\\"}}!\"", "\"}}!\"");
}

static void test_missing_names_path_and_pointer(void **state)
{
    (void)state;
    expect_fail("\"{{input.lead.phone}}\"", ENG_EINVAL, "", "missing value for input.lead.phone");
    expect_fail("{\"to\": {\"addr\": \"x {{input.nope}}\"}}", ENG_EINVAL, "/to/addr", "input.nope");
    expect_fail("{\"a\": [0, \"{{steps.other.output}}\"]}", ENG_EINVAL, "/a/1",
                "steps.other.output");
    expect_fail("{\"a/b~c\": \"{{input.x}}\"}", ENG_EINVAL, "/a~1b~0c", "input.x");
    expect_fail("\"{{input.lead.tags.5}}\"", ENG_EINVAL, "", "input.lead.tags.5");
    expect_fail("\"{{input.lead.name.first}}\"", ENG_EINVAL, "", "input.lead.name.first");
    expect_fail("\"{{input.lead[0]}}\"", ENG_EINVAL, "", "input.lead[0]");
}

static void test_syntax_errors(void **state)
{
    (void)state;
    expect_fail("{\"k\": \"{{input.x\"}", ENG_EINVAL, "/k", "unclosed");
    expect_fail("\"{{ }}\"", ENG_EINVAL, "", "empty");
    expect_fail("\"{{input..x}}\"", ENG_EINVAL, "", "bad template path");
    expect_fail("\"{{1abc}}\"", ENG_EINVAL, "", "bad template path");
    expect_fail("\"{{input.x | fallback: 1}}\"", ENG_EINVAL, "", "default:");
    expect_fail("\"{{input.x | default 1}}\"", ENG_EINVAL, "", "default:");
    expect_fail("\"{{input.x | default: }}\"", ENG_EINVAL, "", "missing default");
    expect_fail("\"{{input.x | default: nope}}\"", ENG_EINVAL, "", "bad default literal");
    expect_fail("\"{{input.x[a]}}\"", ENG_EINVAL, "", "bad template path");
}

static void test_render_string(void **state)
{
    (void)state;
    json_t *out = NULL;
    eng_err err;
    assert_int_equal(wf_template_render_string("{{input.lead.score}}", ctx, &out, &err), ENG_OK);
    assert_true(json_is_integer(out));
    assert_int_equal(json_integer_value(out), 42);
    json_decref(out);
    assert_int_equal(wf_template_render_string("to {{input.lead.email}}", ctx, &out, &err), ENG_OK);
    assert_string_equal(json_string_value(out), "to a@b.c");
    json_decref(out);
    assert_int_equal(wf_template_render_string("{{input.zz}}", ctx, &out, &err), ENG_EINVAL);
    assert_string_equal(err.field, "");
    assert_non_null(strstr(err.msg, "input.zz"));
}

static void test_result_independent_of_ctx(void **state)
{
    (void)state;
    json_t *out = NULL;
    assert_int_equal(wf_template_render_string("{{input.lead.tags}}", ctx, &out, NULL), ENG_OK);
    json_array_append_new(out, json_integer(1));
    assert_int_equal(json_array_size(json_object_get(
                         json_object_get(json_object_get(ctx, "input"), "lead"), "tags")),
                     2);
    json_decref(out);
}

static void test_too_big(void **state)
{
    (void)state;
    size_t n = WF_TEMPLATE_MAX_OUT / 2 + 16;
    char *big = malloc(n + 1);
    memset(big, 'x', n);
    big[n] = '\0';
    json_t *c = json_pack("{s:{s:s}}", "input", "s", big);
    json_t *out = NULL;
    eng_err err;
    assert_int_equal(wf_template_render_string("{{input.s}}{{input.s}}", c, &out, &err),
                     ENG_ETOOBIG);
    assert_null(out);
    /* One copy fits, and a whole-string reference is not limited by text size. */
    assert_int_equal(wf_template_render_string("{{input.s}}!", c, &out, &err), ENG_OK);
    json_decref(out);
    json_decref(c);
    free(big);
}

typedef struct refs_seen {
    char buf[1024];
    int stop_after; /* 0: never */
    int calls;
} refs_seen;

static eng_rc collect(void *arg, const char *path, const char *ptr, eng_err *err)
{
    refs_seen *r = arg;
    size_t n = strlen(r->buf);
    snprintf(r->buf + n, sizeof r->buf - n, "%s@%s;", path, ptr);
    if (++r->calls == r->stop_after)
        return eng_err_field(err, ENG_EINVAL, ptr, "stop at %s", path);
    return ENG_OK;
}

static void test_refs(void **state)
{
    (void)state;
    json_t *t = json_loads("{\"a\": \"{{input.x}} and {{ steps.k.output.y | default: 1 }}\","
                           " \"b\": [\"plain\", {\"c\": \"{{item}}\"}], \"{{key}}\": 3}",
                           0, NULL);
    refs_seen r = {0};
    eng_err err;
    assert_int_equal(wf_template_refs(t, "/steps/2/input", collect, &r, &err), ENG_OK);
    assert_string_equal(r.buf, "input.x@/steps/2/input/a;steps.k.output.y@/steps/2/input/a;"
                               "item@/steps/2/input/b/1/c;");
    refs_seen r2 = {.stop_after = 2};
    assert_int_equal(wf_template_refs(t, "", collect, &r2, &err), ENG_EINVAL);
    assert_string_equal(err.field, "/a");
    assert_string_equal(err.msg, "stop at steps.k.output.y");
    json_decref(t);

    t = json_loads("{\"x\": [\"ok\", \"{{input.x | default: bad}}\"]}", 0, NULL);
    refs_seen r3 = {0};
    assert_int_equal(wf_template_refs(t, "/p", collect, &r3, &err), ENG_EINVAL);
    assert_string_equal(err.field, "/p/x/1");
    assert_non_null(strstr(err.msg, "bad default literal"));
    json_decref(t);
}

static void test_path_helpers(void **state)
{
    (void)state;
    assert_true(wf_path_valid("input", 5));
    assert_true(wf_path_valid("a.b[0].c-d._e", 13));
    assert_false(wf_path_valid("", 0));
    assert_false(wf_path_valid(".a", 2));
    assert_false(wf_path_valid("a.", 2));
    assert_false(wf_path_valid("a[]", 3));
    assert_false(wf_path_valid("a[1", 3));
    assert_false(wf_path_valid("a b", 3));
    assert_false(wf_path_valid("-a", 2));
    char *p = wf_ptr_join("/x", "a~/b");
    assert_string_equal(p, "/x/a~0~1b");
    free(p);
    p = wf_ptr_join_idx("/x", 12);
    assert_string_equal(p, "/x/12");
    free(p);
    assert_true(wf_template_is_templated("a {{b}}"));
    assert_false(wf_template_is_templated("a {b}"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_string_keeps_type),
        cmocka_unit_test(test_embedded_as_text),
        cmocka_unit_test(test_paths_and_indices),
        cmocka_unit_test(test_nested_and_keys_untemplated),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_missing_names_path_and_pointer),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_render_string),
        cmocka_unit_test(test_result_independent_of_ctx),
        cmocka_unit_test(test_too_big),
        cmocka_unit_test(test_refs),
        cmocka_unit_test(test_path_helpers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
