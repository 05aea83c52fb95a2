/* tests/unit/test_jschema.c: engine/jschema against the official JSON-Schema-Test-Suite (Debian's
 * json-schema-test-suite, draft 7 files of the supported keywords; JSON_SCHEMA_TEST_SUITE names
 * another tests/draft7 folder), plus the pointers and reasons of its errors.
 *
 * Every case group of those files runs, except the groups listed in skips[]: each one's schema
 * uses something jschema refuses (and must go on refusing, with the reason given), so a skip can
 * neither hide a wrong answer nor outlive the gap it documents. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/jschema.h"

static const char *const suite_files[] = {
    "type",          "properties",       "required",         "additionalProperties",
    "items",         "enum",             "const",            "anyOf",
    "oneOf",         "allOf",            "not",              "minimum",
    "maximum",       "exclusiveMinimum", "exclusiveMaximum", "minLength",
    "maxLength",     "minItems",         "maxItems",         "minProperties",
    "maxProperties", "uniqueItems",      "pattern",          "ref",
    "definitions",   "boolean_schema",
};

/* Case groups (file, description) whose schema needs a feature jschema refuses, and the part of
 * the refusal's message that says which. */
static const struct {
    const char *file, *group, *reason;
} skips[] = {
#include "test_jschema_skips.h"
};

static int skip_used[ENG_ARRAY_LEN(skips)];

static int skip_index(const char *file, const char *group)
{
    for (size_t i = 0; i < ENG_ARRAY_LEN(skips); i++)
        if (strcmp(skips[i].file, file) == 0 && strcmp(skips[i].group, group) == 0)
            return (int)i;
    return -1;
}

static void test_official_suite(void **state)
{
    (void)state;
    const char *dir = getenv("JSON_SCHEMA_TEST_SUITE");
    if (!dir)
        dir = "/usr/share/json-schema-test-suite/tests/draft7";
    int groups = 0, cases = 0, skipped_cases = 0, failures = 0;
    for (size_t f = 0; f < ENG_ARRAY_LEN(suite_files); f++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s.json", dir, suite_files[f]);
        json_error_t jerr;
        json_t *doc = json_load_file(path, 0, &jerr);
        if (!doc)
            fail_msg("%s: %s (install Debian's json-schema-test-suite: scripts/deps)", path,
                     jerr.text);
        size_t g;
        json_t *grp;
        json_array_foreach (doc, g, grp) {
            const char *desc = json_string_value(json_object_get(grp, "description"));
            json_t *tests = json_object_get(grp, "tests");
            int skip = skip_index(suite_files[f], desc);
            jschema *s = NULL;
            eng_err err;
            eng_rc rc = jschema_compile(json_object_get(grp, "schema"), "", &s, &err);
            if (skip >= 0) {
                skip_used[skip]++;
                if (rc == ENG_OK) {
                    fprintf(stderr, "%s / %s: listed as skipped but compiles\n", suite_files[f],
                            desc);
                    failures++;
                    jschema_free(s);
                } else if (!strstr(err.msg, skips[skip].reason)) {
                    fprintf(stderr, "%s / %s: refused for another reason: %s: %s\n",
                            suite_files[f], desc, err.field, err.msg);
                    failures++;
                }
                skipped_cases += (int)json_array_size(tests);
                continue;
            }
            if (rc != ENG_OK) {
                fprintf(stderr, "%s / %s: refused: %s: %s\n", suite_files[f], desc, err.field,
                        err.msg);
                failures++;
                continue;
            }
            groups++;
            size_t t;
            json_t *tc;
            json_array_foreach (tests, t, tc) {
                bool want = json_is_true(json_object_get(tc, "valid"));
                bool got = jschema_validate(s, json_object_get(tc, "data"), "", &err) == ENG_OK;
                cases++;
                if (got != want) {
                    fprintf(stderr, "%s / %s / %s: expected %s, got %s%s%s\n", suite_files[f],
                            desc, json_string_value(json_object_get(tc, "description")),
                            want ? "valid" : "invalid", got ? "valid" : "invalid",
                            got ? "" : ": ", got ? "" : err.msg);
                    failures++;
                }
            }
            jschema_free(s);
        }
        json_decref(doc);
    }
    for (size_t i = 0; i < ENG_ARRAY_LEN(skips); i++)
        if (!skip_used[i]) {
            fprintf(stderr, "skip %s / %s matches no case group\n", skips[i].file, skips[i].group);
            failures++;
        }
    print_message("JSON-Schema-Test-Suite draft7: %d cases in %d groups passed, %d cases in %zu "
                  "groups skipped (unsupported features)\n",
                  cases - failures, groups, skipped_cases, ENG_ARRAY_LEN(skips));
    assert_int_equal(failures, 0);
    assert_true(cases > 200);
}

/* ------------------------------------------------------------------- errors and pointers -- */

static jschema *compile(const char *src)
{
    json_error_t jerr;
    json_t *j = json_loads(src, 0, &jerr);
    if (!j)
        fail_msg("bad test JSON %s: %s", src, jerr.text);
    jschema *s = NULL;
    eng_err err;
    if (jschema_compile(j, "/input_schema", &s, &err) != ENG_OK)
        fail_msg("refused %s: %s: %s", src, err.field, err.msg);
    json_decref(j);
    return s;
}

static void expect_invalid(const jschema *s, const char *inst, const char *field,
                           const char *msg_part)
{
    json_t *j = json_loads(inst, JSON_DECODE_ANY, NULL);
    assert_non_null(j);
    eng_err err;
    if (jschema_validate(s, j, "/input", &err) != ENG_EINVAL)
        fail_msg("%s passed", inst);
    if (strcmp(err.field, field) != 0 || !strstr(err.msg, msg_part))
        fail_msg("%s: got %s: %s; want %s: ...%s...", inst, err.field, err.msg, field, msg_part);
    json_decref(j);
}

static void expect_valid(const jschema *s, const char *inst)
{
    json_t *j = json_loads(inst, JSON_DECODE_ANY, NULL);
    assert_non_null(j);
    eng_err err;
    if (jschema_validate(s, j, "/input", &err) != ENG_OK)
        fail_msg("%s refused: %s: %s", inst, err.field, err.msg);
    json_decref(j);
}

/* The case of the issue: an enum and a string nested below the top level are checked. */
static void test_nested_errors_name_the_pointer(void **state)
{
    (void)state;
    jschema *s = compile(
        "{\"type\": \"object\", \"required\": [\"intent\", \"reply\"],"
        " \"additionalProperties\": false,"
        " \"properties\": {\"intent\": {\"enum\": [\"yes\", \"no\"]}, \"reply\": {\"type\": \"string\"},"
        "  \"lead\": {\"$ref\": \"#/$defs/lead\"}},"
        " \"$defs\": {\"lead\": {\"type\": \"object\", \"required\": [\"email\"],"
        "  \"properties\": {\"email\": {\"type\": \"string\", \"pattern\": \"^[^@\\\\s]+@\\\\S+$\"},"
        "   \"tags\": {\"type\": \"array\", \"maxItems\": 2, \"items\": {\"type\": \"string\","
        "    \"minLength\": 2}}, \"a/b~c\": {\"type\": \"integer\", \"minimum\": 1}}}}}");
    expect_valid(s, "{\"intent\": \"yes\", \"reply\": \"ok\"}");
    expect_invalid(s, "{\"intent\": \"maybe\", \"reply\": 42}", "/input/intent", "one of the 2");
    expect_invalid(s, "{\"intent\": \"no\", \"reply\": 42}", "/input/reply",
                   "must be a string, not a number");
    expect_invalid(s, "{\"intent\": \"no\"}", "/input/reply", "required");
    expect_invalid(s, "{\"intent\": \"no\", \"reply\": \"\", \"x\": 1}", "/input/x",
                   "additionalProperties");
    expect_invalid(s, "{\"intent\": \"no\", \"reply\": \"\", \"lead\": {}}", "/input/lead/email",
                   "required");
    expect_invalid(s, "{\"intent\": \"no\", \"reply\": \"\", \"lead\": {\"email\": \"a b\"}}",
                   "/input/lead/email", "pattern");
    expect_invalid(s,
                   "{\"intent\": \"no\", \"reply\": \"\", \"lead\": {\"email\": \"a@b\","
                   " \"tags\": [\"ok\", \"x\"]}}",
                   "/input/lead/tags/1", "at least 2 characters");
    expect_invalid(s,
                   "{\"intent\": \"no\", \"reply\": \"\", \"lead\": {\"email\": \"a@b\","
                   " \"a/b~c\": 1.5}}",
                   "/input/lead/a~1b~0c", "must be an integer");
    expect_valid(s, "{\"intent\": \"no\", \"reply\": \"\", \"lead\": {\"email\": \"a@b\","
                    " \"a/b~c\": 2.0, \"tags\": [\"héé\"]}}");
    jschema_free(s);
}

static void expect_refused(const char *src, const char *field, const char *msg_part)
{
    json_t *j = json_loads(src, 0, NULL);
    assert_non_null(j);
    jschema *s = NULL;
    eng_err err;
    if (jschema_compile(j, "/input_schema", &s, &err) != ENG_EINVAL)
        fail_msg("%s compiled", src);
    if (strcmp(err.field, field) != 0 || !strstr(err.msg, msg_part))
        fail_msg("%s: got %s: %s; want %s: ...%s...", src, err.field, err.msg, field, msg_part);
    assert_null(s);
    json_decref(j);
}

/* What is not supported is refused where it is written, never ignored. */
static void test_unsupported_refused(void **state)
{
    (void)state;
    expect_refused("{\"type\": \"string\", \"format\": \"email\"}", "/input_schema/format",
                   "unsupported JSON Schema keyword \"format\"");
    expect_refused("{\"properties\": {\"a\": {\"patternProperties\": {}}}}",
                   "/input_schema/properties/a/patternProperties", "unsupported");
    expect_refused("{\"items\": [{\"type\": \"string\"}]}", "/input_schema/items", "tuple");
    expect_refused("{\"$ref\": \"#/$defs/missing\"}", "/input_schema/$ref", "does not point");
    expect_refused("{\"$ref\": \"other.json#/a\"}", "/input_schema/$ref", "does not point");
    expect_refused("{\"$defs\": {\"a\": {\"type\": \"string\"}}, \"$ref\": \"#/$defs/a\","
                   " \"minLength\": 2}",
                   "/input_schema/minLength", "next to $ref");
    expect_refused("{\"type\": \"strnig\"}", "/input_schema/type", "unknown type");
    expect_refused("{\"pattern\": \"(\"}", "/input_schema/pattern", "not a regular expression");
    expect_refused("{\"anyOf\": []}", "/input_schema/anyOf", "non-empty array");
    expect_refused("{\"minLength\": -1}", "/input_schema/minLength", "non-negative integer");
    expect_refused("{\"properties\": {\"a\": 5}}", "/input_schema/properties/a",
                   "object or true/false");
    expect_refused("[]", "/input_schema", "object or true/false");
}

/* A schema that refers to itself validates recursive data and stops on a loop of refs. */
static void test_recursion(void **state)
{
    (void)state;
    jschema *s = compile("{\"type\": \"object\", \"properties\": {\"child\": {\"$ref\": \"#\"},"
                         " \"n\": {\"type\": \"integer\"}}}");
    expect_valid(s, "{\"child\": {\"child\": {\"n\": 3}}}");
    expect_invalid(s, "{\"child\": {\"child\": {\"n\": \"3\"}}}", "/input/child/child/n",
                   "integer");
    jschema_free(s);
    s = compile("{\"$defs\": {\"a\": {\"$ref\": \"#/$defs/b\"}, \"b\": {\"$ref\": \"#/$defs/a\"}},"
                " \"$ref\": \"#/$defs/a\"}");
    expect_invalid(s, "1", "/input", "recurses too deep");
    jschema_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_official_suite),
        cmocka_unit_test(test_nested_errors_name_the_pointer),
        cmocka_unit_test(test_unsupported_refused),
        cmocka_unit_test(test_recursion),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
