/* tests/unit/test_wf_def.c: definition validation (every rule, with its exact JSON pointer),
 * normalization and the digest. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/step.h"
#include "engine/wf_def.h"

/* Test kinds (the real built-ins are registered elsewhere). "http" checks its input like a real
 * kind would, to prove validate is called with the step and its pointer. */
static eng_rc http_validate(const json_t *step, const char *ptr, eng_err *err)
{
    const json_t *in = json_object_get(step, "input");
    if (!json_is_string(json_object_get(in, "url"))) {
        char field[128];
        snprintf(field, sizeof field, "%s/input/url", ptr);
        return eng_err_field(err, ENG_EINVAL, field, "required");
    }
    return ENG_OK;
}

static eng_rc map_validate(const json_t *step, const char *ptr, eng_err *err)
{
    (void)ptr;
    /* Leaves the field empty: the compiler must fill in the step's pointer. */
    if (!json_object_get(step, "input"))
        return eng_err_set(err, ENG_EINVAL, "map needs an input");
    return ENG_OK;
}

static const eng_step_kind test_kinds[] = {
    {.name = "transform", .default_max_attempts = 1},
    {.name = "delay", .default_max_attempts = 1},
    {.name = "wait_event", .default_max_attempts = 1},
    {.name = "map", .default_max_attempts = 1, .validate = map_validate},
    {.name = "llm", .default_max_attempts = 5},
    {.name = "http", .default_max_attempts = 3, .validate = http_validate},
    {.name = "email", .default_max_attempts = 4},
    {.name = "sms", .default_max_attempts = 4},
    {.name = "whatsapp", .default_max_attempts = 4},
};

static int setup(void **state)
{
    (void)state;
    for (size_t i = 0; i < ENG_ARRAY_LEN(test_kinds); i++)
        eng_step_register(&test_kinds[i]);
    return 0;
}

static json_t *compile_ok(const char *src)
{
    json_error_t jerr;
    json_t *doc = json_loads(src, 0, &jerr);
    if (!doc)
        fail_msg("bad test JSON: %s: %s", jerr.text, src);
    json_t *out = NULL;
    eng_err err;
    eng_err_clear(&err);
    if (wf_def_compile(doc, &out, &err) != ENG_OK)
        fail_msg("compile failed: %s: %s", err.field, err.msg);
    json_decref(doc);
    return out;
}

/* Compiles src and asserts the failure's pointer and that the message contains msg_part. */
static void expect_bad(const char *src, const char *field, const char *msg_part)
{
    json_error_t jerr;
    json_t *doc = json_loads(src, JSON_DECODE_ANY, &jerr);
    if (!doc)
        fail_msg("bad test JSON: %s: %s", jerr.text, src);
    json_t *out = (json_t *)0x1;
    eng_err err;
    eng_err_clear(&err);
    eng_rc rc = wf_def_compile(doc, &out, &err);
    if (rc != ENG_EINVAL)
        fail_msg("expected failure at %s for %s, got rc %d", field, src, rc);
    assert_ptr_equal(out, (json_t *)0x1);
    assert_int_equal(err.rc, ENG_EINVAL);
    if (strcmp(err.field, field) != 0 || !strstr(err.msg, msg_part))
        fail_msg("for %s\n  got  %s: %s\n  want %s: ...%s...", src, err.field, err.msg, field,
                 msg_part);
    json_decref(doc);
}

/* A definition of one step whose body (the members after key and kind) is given. */
static void expect_bad_step(const char *kind, const char *body, const char *field,
                            const char *msg_part)
{
    char src[4096];
    snprintf(src, sizeof src,
             "{\"name\": \"w\", \"steps\": [{\"key\": \"first\", \"kind\": \"transform\"},"
             " {\"key\": \"s\", \"kind\": \"%s\", \"needs\": [\"first\"]%s%s}]}",
             kind, *body ? ", " : "", body);
    expect_bad(src, field, msg_part);
}

/* What a run's input must hold, checked when it is enqueued: the input_schema when there is one,
 * else what the templates of unconditional steps read without a default. */
static void test_input_check(void **state)
{
    (void)state;
    json_t *out = compile_ok(
        "{\"name\": \"w\", \"steps\": ["
        " {\"key\": \"a\", \"kind\": \"transform\", \"input\": {\"t\": \"{{input.lead.email}} "
        "{{input.lead.name | default: \\\"there\\\"}} {{input.items[0].url}} {{input.rows.2}}\","
        "  \"whole\": \"{{input}}\", \"s\": \"{{steps.b.output}}\"}, \"needs\": [\"b\"]},"
        " {\"key\": \"b\", \"kind\": \"sms\", \"input\": {\"to\": \"{{input.lead.phone}}\","
        "  \"body\": \"x\"}, \"window\": {\"start\": \"09:00\", \"end\": \"18:00\","
        "  \"tz\": \"{{input.lead.tz}}\"}},"
        " {\"key\": \"c\", \"kind\": \"transform\", \"when\": \"input.vip == true\","
        "  \"input\": {\"v\": \"{{input.vip_note}}\"}},"
        " {\"key\": \"d\", \"kind\": \"transform\", \"needs\": [\"c\"],"
        "  \"input\": {\"v\": \"{{input.after_vip}}\"}}]}");
    json_t *want = json_loads(
        "{\"type\": \"object\", \"required\": [\"lead\", \"items\", \"rows\"], \"properties\": {"
        " \"lead\": {\"type\": \"object\", \"required\": [\"email\", \"phone\", \"tz\"],"
        "  \"properties\": {\"email\": {\"type\": [\"object\", \"array\", \"string\", \"number\","
        "   \"boolean\"]}, \"phone\": {\"type\": [\"object\", \"array\", \"string\", \"number\","
        "   \"boolean\"]}, \"tz\": {\"type\": [\"object\", \"array\", \"string\", \"number\","
        "   \"boolean\"]}}},"
        " \"items\": {\"type\": [\"object\", \"array\", \"string\", \"number\", \"boolean\"]},"
        " \"rows\": {\"type\": [\"object\", \"array\", \"string\", \"number\", \"boolean\"]}}}",
        0, NULL);
    assert_non_null(want);
    if (!json_equal(json_object_get(out, "input_check"), want)) {
        char *g = json_dumps(json_object_get(out, "input_check"), JSON_INDENT(1) | JSON_SORT_KEYS);
        fail_msg("input_check differs:\n%s", g);
    }
    json_decref(want);
    json_decref(out);

    /* nothing required: no check */
    out = compile_ok("{\"name\": \"w\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\","
                     " \"input\": {\"n\": \"{{input.n | default: 1}}\"}}]}");
    assert_true(json_is_null(json_object_get(out, "input_check")));
    json_decref(out);

    /* an input_schema is the check, as written */
    out = compile_ok("{\"name\": \"w\", \"input_schema\": {\"type\": \"object\", \"required\":"
                     " [\"n\"], \"properties\": {\"n\": {\"type\": \"integer\", \"minimum\": 1}}},"
                     " \"steps\": [{\"key\": \"a\", \"kind\": \"transform\","
                     " \"input\": {\"n\": \"{{input.other}}\"}}]}");
    const json_t *n = json_object_get(
        json_object_get(json_object_get(out, "input_check"), "properties"), "n");
    assert_int_equal(json_integer_value(json_object_get(n, "minimum")), 1);
    assert_null(json_object_get(json_object_get(json_object_get(out, "input_check"),
                                                "properties"), "other"));
    json_decref(out);
    expect_bad("{\"name\": \"w\", \"input_schema\": {\"properties\": {\"d\": {\"type\": \"string\","
               " \"format\": \"date\"}}}, \"steps\": [{\"key\": \"a\", \"kind\": \"transform\"}]}",
               "/input_schema/properties/d/format", "unsupported JSON Schema keyword");
    expect_bad("{\"name\": \"w\", \"input_schema\": 3, \"steps\": [{\"key\": \"a\", \"kind\":"
               " \"transform\"}]}",
               "/input_schema", "object or true/false");
}

static void test_normalized_shape(void **state)
{
    (void)state;
    json_t *out = compile_ok(
        "{\"name\": \"lead_touchpoints\","
        " \"cancel_on\": [{\"event\": \"lead.booked\", \"key\": \"{{input.lead.id}}\"}, "
        "{\"event\": \"x\", \"key\": \"{{run.id}}\"}],"
        " \"steps\": ["
        "  {\"key\": \"research\", \"kind\": \"llm\", \"phase\": \"research\","
        "   \"input\": {\"q\": \"{{input.lead.email}}\"}},"
        "  {\"key\": \"score\", \"kind\": \"transform\", \"needs\": [\"research\"], \"phase\": "
        "\"analysis\"},"
        "  {\"key\": \"send\", \"kind\": \"email\", \"needs\": [\"score\", \"research\"],"
        "   \"phase\": \"research\","
        "   \"input\": {\"body\": \"{{steps.research.output.summary}} {{steps.score.output}}\"},"
        "   \"when\": \"steps.score.output.fit == \\\"high\\\"\","
        "   \"retry\": {\"max_attempts\": 7, \"backoff\": {\"initial\": \"2s\", \"max\": \"1m\","
        "    \"multiplier\": 3}, \"jitter\": 0.5},"
        "   \"timeout\": \"30s\", \"delay\": \"2d\", \"at\": \"{{input.send_at}}\","
        "   \"window\": {\"start\": \"09:00\", \"end\": \"18:00\", \"days\": [\"fri\", \"mon\", "
        "\"tue\"],"
        "    \"tz\": \"{{input.lead.tz}}\"},"
        "   \"concurrency_key\": \"{{input.customer}}\"},"
        "  {\"key\": \"log\", \"kind\": \"transform\", \"needs\": [\"research\"]}"
        " ]}");
    json_t *want = json_loads(
        "{\"name\": \"lead_touchpoints\", \"description\": null,"
        " \"cancel_on\": [{\"event\": \"lead.booked\", \"key\": \"{{input.lead.id}}\"},"
        "                 {\"event\": \"x\", \"key\": \"{{run.id}}\"}],"
        " \"triggers\": [], \"phases\": [\"research\", \"analysis\"], \"search\": null,"
        " \"input_check\": {\"type\": \"object\", \"required\": [\"lead\"], \"properties\":"
        "  {\"lead\": {\"type\": \"object\", \"required\": [\"email\"], \"properties\":"
        "   {\"email\": {\"type\": [\"object\", \"array\", \"string\", \"number\", \"boolean\"]}}}}},"
        " \"steps\": ["
        "  {\"key\": \"research\", \"kind\": \"llm\", \"idx\": 0, \"needs\": [], \"dependents\": "
        "[1, 2, 3],"
        "   \"deps\": [], \"phase\": \"research\", \"input\": {\"q\": \"{{input.lead.email}}\"},"
        "   \"when\": null, \"max_attempts\": 5, \"backoff_initial_ms\": 1000,"
        "   \"backoff_max_ms\": 300000, \"backoff_multiplier\": 2.0, \"jitter\": 0.2,"
        "   \"timeout_ms\": 0, \"delay_ms\": 0, \"at\": null, \"window\": null,"
        "   \"concurrency_key\": null, \"on_failure\": \"fail_run\"},"
        "  {\"key\": \"score\", \"kind\": \"transform\", \"idx\": 1, \"needs\": [0], "
        "\"dependents\": [2],"
        "   \"deps\": [\"research\"], \"phase\": \"analysis\", \"input\": {}, \"when\": null,"
        "   \"max_attempts\": 1, \"backoff_initial_ms\": 1000, \"backoff_max_ms\": 300000,"
        "   \"backoff_multiplier\": 2.0, \"jitter\": 0.2, \"timeout_ms\": 0, \"delay_ms\": 0,"
        "   \"at\": null, \"window\": null, \"concurrency_key\": null, \"on_failure\": \"fail_run\"},"
        "  {\"key\": \"send\", \"kind\": \"email\", \"idx\": 2, \"needs\": [1, 0], \"dependents\": "
        "[],"
        "   \"deps\": [\"research\", \"score\"], \"phase\": \"research\","
        "   \"input\": {\"body\": \"{{steps.research.output.summary}} {{steps.score.output}}\"},"
        "   \"when\": \"steps.score.output.fit == \\\"high\\\"\", \"max_attempts\": 7,"
        "   \"backoff_initial_ms\": 2000, \"backoff_max_ms\": 60000, \"backoff_multiplier\": 3.0,"
        "   \"jitter\": 0.5, \"timeout_ms\": 30000, \"delay_ms\": 172800000,"
        "   \"at\": \"{{input.send_at}}\","
        "   \"window\": {\"start_min\": 540, \"end_min\": 1080, \"days\": [1, 2, 5],"
        "                \"tz\": \"{{input.lead.tz}}\"},"
        "   \"concurrency_key\": \"{{input.customer}}\", \"on_failure\": \"fail_run\"},"
        "  {\"key\": \"log\", \"kind\": \"transform\", \"idx\": 3, \"needs\": [0], \"dependents\": "
        "[],"
        "   \"deps\": [\"research\"], \"phase\": null, \"input\": {}, \"when\": null,"
        "   \"max_attempts\": 1, \"backoff_initial_ms\": 1000, \"backoff_max_ms\": 300000,"
        "   \"backoff_multiplier\": 2.0, \"jitter\": 0.2, \"timeout_ms\": 0, \"delay_ms\": 0,"
        "   \"at\": null, \"window\": null, \"concurrency_key\": null, \"on_failure\": \"fail_run\"}"
        " ]}",
        0, NULL);
    assert_non_null(want);
    if (!json_equal(out, want)) {
        char *g = json_dumps(out, JSON_INDENT(1) | JSON_SORT_KEYS);
        fail_msg("normalized form differs:\n%s", g);
    }
    json_decref(want);
    json_decref(out);
}

static void test_defaults_and_window_days(void **state)
{
    (void)state;
    json_t *out = compile_ok(
        "{\"name\": \"w\", \"description\": \"d\", \"steps\": [{\"key\": \"a\", \"kind\": \"http\","
        " \"input\": {\"url\": \"u\"}, \"retry\": {\"backoff\": {\"initial\": \"10m\"}},"
        " \"window\": {\"start\": \"00:00\", \"end\": \"24:00\", \"tz\": \"Europe/Paris\"}}]}");
    json_t *st = json_array_get(json_object_get(out, "steps"), 0);
    assert_string_equal(json_string_value(json_object_get(out, "description")), "d");
    assert_int_equal(json_integer_value(json_object_get(st, "max_attempts")), 3);
    assert_int_equal(json_integer_value(json_object_get(st, "backoff_initial_ms")), 600000);
    /* The default cap never undercuts an explicit initial delay. */
    assert_int_equal(json_integer_value(json_object_get(st, "backoff_max_ms")), 600000);
    json_t *w = json_object_get(st, "window");
    assert_int_equal(json_integer_value(json_object_get(w, "start_min")), 0);
    assert_int_equal(json_integer_value(json_object_get(w, "end_min")), 1440);
    assert_int_equal(json_array_size(json_object_get(w, "days")), 7);
    assert_string_equal(json_string_value(json_object_get(w, "tz")), "Europe/Paris");
    assert_int_equal(json_array_size(json_object_get(out, "phases")), 0);
    assert_int_equal(json_array_size(json_object_get(out, "cancel_on")), 0);
    json_decref(out);

    out =
        compile_ok("{\"name\": \"w\", \"steps\": [{\"key\": \"a\", \"kind\": \"delay\","
                   " \"at\": \"2026-03-29T01:30:00+01:00\"}, {\"key\": \"b\", \"kind\": \"delay\","
                   " \"at\": \"2026-03-29T01:30:00.250Z\", \"needs\": null}]}");
    json_decref(out);
}

static void test_workflow_fields(void **state)
{
    (void)state;
    expect_bad("[]", "", "must be a JSON object");
    expect_bad(
        "{\"name\": \"w\", \"steps\": [{\"key\": \"a\", \"kind\": \"delay\"}], \"version\": 2}",
        "/version", "unknown field");
    expect_bad("{\"steps\": []}", "/name", "required");
    expect_bad("{\"name\": \"a b\", \"steps\": []}", "/name", "must match");
    expect_bad("{\"name\": \"\", \"steps\": []}", "/name", "must match");
    expect_bad("{\"name\": 5, \"steps\": []}", "/name", "must match");
    expect_bad("{\"name\": \"w\", \"description\": 1, \"steps\": []}", "/description",
               "must be a string");
    expect_bad("{\"name\": \"w\"}", "/steps", "required");
    expect_bad("{\"name\": \"w\", \"steps\": []}", "/steps", "non-empty array");
    expect_bad("{\"name\": \"w\", \"steps\": {}}", "/steps", "non-empty array");
    expect_bad("{\"name\": \"w\", \"steps\": [{\"key\": \"a\", \"kind\": \"delay\"}, 3]}",
               "/steps/1", "must be an object");
    char name[WF_DEF_MAX_NAME + 2];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    char src[512];
    snprintf(src, sizeof src, "{\"name\": \"%s\", \"steps\": []}", name);
    expect_bad(src, "/name", "must match");
    json_t *ok = compile_ok("{\"name\": \"Lead-touch_points.v2\", \"steps\": [{\"key\": \"a\","
                            " \"kind\": \"delay\"}]}");
    json_decref(ok);
    /* the quota policy: kept when it says fail, left out when it says what no policy does */
    expect_bad("{\"name\": \"w\", \"quota\": {\"on_exceeded\": \"later\"},"
               " \"steps\": [{\"key\": \"a\", \"kind\": \"delay\"}]}",
               "/quota/on_exceeded", "must be");
    expect_bad("{\"name\": \"w\", \"quota\": {\"when\": 1},"
               " \"steps\": [{\"key\": \"a\", \"kind\": \"delay\"}]}",
               "/quota/when", "unknown field");
    expect_bad("{\"name\": \"w\", \"quota\": \"fail\","
               " \"steps\": [{\"key\": \"a\", \"kind\": \"delay\"}]}",
               "/quota", "must be an object");
    ok = compile_ok("{\"name\": \"w\", \"quota\": {\"on_exceeded\": \"fail\"},"
                    " \"steps\": [{\"key\": \"a\", \"kind\": \"delay\"}]}");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(ok, "quota"), "on_exceeded")), "fail");
    json_decref(ok);
    ok = compile_ok("{\"name\": \"w\", \"quota\": {\"on_exceeded\": \"wait\"},"
                    " \"steps\": [{\"key\": \"a\", \"kind\": \"delay\"}]}");
    assert_null(json_object_get(ok, "quota"));
    json_decref(ok);
}

static void test_keys_and_kinds(void **state)
{
    (void)state;
    expect_bad("{\"name\": \"w\", \"steps\": [{\"kind\": \"delay\"}]}", "/steps/0/key", "required");
    expect_bad("{\"name\": \"w\", \"steps\": [{\"key\": 1, \"kind\": \"delay\"}]}", "/steps/0/key",
               "must be a string");
    expect_bad("{\"name\": \"w\", \"steps\": [{\"key\": \"Abc\", \"kind\": \"delay\"}]}",
               "/steps/0/key", "must match");
    expect_bad("{\"name\": \"w\", \"steps\": [{\"key\": \"1a\", \"kind\": \"delay\"}]}",
               "/steps/0/key", "must match");
    expect_bad("{\"name\": \"w\", \"steps\": [{\"key\": \"a-b\", \"kind\": \"delay\"}]}",
               "/steps/0/key", "must match");
    expect_bad("{\"name\": \"w\", \"steps\": [{\"key\": \"\", \"kind\": \"delay\"}]}",
               "/steps/0/key", "must match");
    expect_bad("{\"name\": \"w\", \"steps\": [{\"key\": \"a\", \"kind\": \"delay\"},"
               " {\"key\": \"b\", \"kind\": \"delay\"}, {\"key\": \"a\", \"kind\": \"delay\"}]}",
               "/steps/2/key", "duplicate key \"a\" (also /steps/0)");
    char src[512];
    char key[WF_DEF_MAX_KEY + 2];
    memset(key, 'k', sizeof key - 1);
    key[sizeof key - 1] = '\0';
    snprintf(src, sizeof src,
             "{\"name\": \"w\", \"steps\": [{\"key\": \"%s\", \"kind\": \"delay\"}]}", key);
    expect_bad(src, "/steps/0/key", "longer than 64");
    key[WF_DEF_MAX_KEY] = '\0';
    snprintf(src, sizeof src,
             "{\"name\": \"w\", \"steps\": [{\"key\": \"%s\", \"kind\": \"delay\"}]}", key);
    json_decref(compile_ok(src));

    expect_bad("{\"name\": \"w\", \"steps\": [{\"key\": \"a\"}]}", "/steps/0/kind", "required");
    expect_bad("{\"name\": \"w\", \"steps\": [{\"key\": \"a\", \"kind\": \"teleport\"}]}",
               "/steps/0/kind", "unknown step kind \"teleport\"");
    expect_bad("{\"name\": \"w\", \"steps\": [{\"key\": \"a\", \"kind\": [\"delay\"]}]}",
               "/steps/0/kind", "must be a string");
    expect_bad(
        "{\"name\": \"w\", \"steps\": [{\"key\": \"a\", \"kind\": \"delay\", \"retries\": 3}]}",
        "/steps/0/retries", "unknown field \"retries\"");
}

static void test_kind_validate(void **state)
{
    (void)state;
    expect_bad_step("http", "\"input\": {\"method\": \"GET\"}", "/steps/1/input/url", "required");
    expect_bad_step("map", "", "/steps/1", "map needs an input");
    json_decref(compile_ok("{\"name\": \"w\", \"steps\": [{\"key\": \"m\", \"kind\": \"map\","
                           " \"input\": {\"items\": \"{{input.xs}}\"}}]}"));
}

static void test_needs(void **state)
{
    (void)state;
    expect_bad_step("delay", "\"needs\": [\"first\", \"ghost\"]", "/steps/1/needs/1",
                    "unknown step \"ghost\"");
    expect_bad(
        "{\"name\": \"w\", \"steps\": [{\"key\": \"a\", \"kind\": \"delay\", \"needs\": \"b\"}]}",
        "/steps/0/needs", "must be an array");
    expect_bad(
        "{\"name\": \"w\", \"steps\": [{\"key\": \"a\", \"kind\": \"delay\", \"needs\": [\"a\"]}]}",
        "/steps/0/needs/0", "cannot need itself");
    expect_bad_step("delay", "\"needs\": [\"first\", \"first\"]", "/steps/1/needs/1",
                    "duplicate need \"first\"");
    expect_bad_step("delay", "\"needs\": [1]", "/steps/1/needs/0", "must be a step key");
    /* a -> c -> b -> a: the search from a meets a again through b's first need. */
    expect_bad("{\"name\": \"w\", \"steps\": ["
               "{\"key\": \"a\", \"kind\": \"delay\", \"needs\": [\"c\"]},"
               "{\"key\": \"b\", \"kind\": \"delay\", \"needs\": [\"a\"]},"
               "{\"key\": \"c\", \"kind\": \"delay\", \"needs\": [\"b\"]}]}",
               "/steps/1/needs/0", "cycle");
    /* A cycle not reachable from the first step, behind a valid prefix. */
    expect_bad("{\"name\": \"w\", \"steps\": ["
               "{\"key\": \"a\", \"kind\": \"delay\"},"
               "{\"key\": \"b\", \"kind\": \"delay\", \"needs\": [\"a\", \"c\"]},"
               "{\"key\": \"c\", \"kind\": \"delay\", \"needs\": [\"b\"]}]}",
               "/steps/2/needs/0", "cycle: \"c\" needs \"b\"");
}

static void test_retry_and_durations(void **state)
{
    (void)state;
    expect_bad_step("http", "\"retry\": 3", "/steps/1/retry", "must be an object");
    expect_bad_step("http", "\"retry\": {\"max_attempts\": 0}", "/steps/1/retry/max_attempts",
                    "1 to 100");
    expect_bad_step("http", "\"retry\": {\"max_attempts\": 101}", "/steps/1/retry/max_attempts",
                    "1 to 100");
    expect_bad_step("http", "\"retry\": {\"max_attempts\": 2.5}", "/steps/1/retry/max_attempts",
                    "integer");
    expect_bad_step("http", "\"retry\": {\"attempts\": 2}", "/steps/1/retry/attempts",
                    "unknown field");
    expect_bad_step("http", "\"retry\": {\"jitter\": 1.5}", "/steps/1/retry/jitter", "0 to 1");
    expect_bad_step("http", "\"retry\": {\"jitter\": \"x\"}", "/steps/1/retry/jitter", "0 to 1");
    expect_bad_step("http", "\"retry\": {\"backoff\": []}", "/steps/1/retry/backoff",
                    "must be an object");
    expect_bad_step("http", "\"retry\": {\"backoff\": {\"initial\": \"1x\"}}",
                    "/steps/1/retry/backoff/initial", "unit");
    expect_bad_step("http", "\"retry\": {\"backoff\": {\"initial\": 1000}}",
                    "/steps/1/retry/backoff/initial", "duration string");
    expect_bad_step("http", "\"retry\": {\"backoff\": {\"max\": \"-1s\"}}",
                    "/steps/1/retry/backoff/max", "negative");
    expect_bad_step("http", "\"retry\": {\"backoff\": {\"initial\": \"1m\", \"max\": \"30s\"}}",
                    "/steps/1/retry/backoff/max", "shorter than backoff.initial");
    expect_bad_step("http", "\"retry\": {\"backoff\": {\"multiplier\": 0.5}}",
                    "/steps/1/retry/backoff/multiplier", "1 to 100");
    expect_bad_step("http", "\"retry\": {\"backoff\": {\"factor\": 2}}",
                    "/steps/1/retry/backoff/factor", "unknown field");
    expect_bad_step("delay", "\"timeout\": \"\"", "/steps/1/timeout", "empty");
    expect_bad_step("delay", "\"timeout\": \"99999d\"", "/steps/1/timeout", "too long");
    expect_bad_step("delay", "\"delay\": \"5 minutes\"", "/steps/1/delay", "unit");
    expect_bad_step("delay", "\"delay\": 5", "/steps/1/delay", "duration string");
}

static void test_at_window_phase_ckey(void **state)
{
    (void)state;
    expect_bad_step("delay", "\"at\": \"tomorrow\"", "/steps/1/at", "RFC 3339");
    expect_bad_step("delay", "\"at\": \"2026-01-31 09:00\"", "/steps/1/at", "RFC 3339");
    expect_bad_step("delay", "\"at\": \"2026-01-31T09:00:00+0100\"", "/steps/1/at", "RFC 3339");
    expect_bad_step("delay", "\"at\": \"\"", "/steps/1/at", "must not be empty");
    expect_bad_step("delay", "\"at\": \"{{steps.ghost.output.t}}\"", "/steps/1/at",
                    "unknown step \"ghost\"");
    expect_bad_step("sms", "\"window\": \"9-5\"", "/steps/1/window", "must be an object");
    expect_bad_step("sms", "\"window\": {\"start\": \"9:00\", \"end\": \"18:00\", \"tz\": \"UTC\"}",
                    "/steps/1/window/start", "HH:MM");
    expect_bad_step("sms",
                    "\"window\": {\"start\": \"09:60\", \"end\": \"18:00\", \"tz\": \"UTC\"}",
                    "/steps/1/window/start", "HH:MM");
    expect_bad_step("sms",
                    "\"window\": {\"start\": \"24:00\", \"end\": \"24:00\", \"tz\": \"UTC\"}",
                    "/steps/1/window/start", "HH:MM");
    expect_bad_step("sms", "\"window\": {\"start\": \"09:00\", \"tz\": \"UTC\"}",
                    "/steps/1/window/end", "HH:MM");
    expect_bad_step("sms",
                    "\"window\": {\"start\": \"09:00\", \"end\": \"24:30\", \"tz\": \"UTC\"}",
                    "/steps/1/window/end", "HH:MM");
    expect_bad_step("sms",
                    "\"window\": {\"start\": \"18:00\", \"end\": \"09:00\", \"tz\": \"UTC\"}",
                    "/steps/1/window/end", "later than start");
    expect_bad_step("sms",
                    "\"window\": {\"start\": \"09:00\", \"end\": \"09:00\", \"tz\": \"UTC\"}",
                    "/steps/1/window/end", "later than start");
    expect_bad_step(
        "sms",
        "\"window\": {\"start\": \"09:00\", \"end\": \"18:00\", \"days\": [], \"tz\": \"UTC\"}",
        "/steps/1/window/days", "non-empty");
    expect_bad_step(
        "sms",
        "\"window\": {\"start\": \"09:00\", \"end\": \"18:00\", \"days\": [\"mon\", \"Tue\"],"
        " \"tz\": \"UTC\"}",
        "/steps/1/window/days/1", "one of mon");
    expect_bad_step(
        "sms",
        "\"window\": {\"start\": \"09:00\", \"end\": \"18:00\", \"days\": [\"mon\", \"mon\"],"
        " \"tz\": \"UTC\"}",
        "/steps/1/window/days/1", "duplicate day");
    expect_bad_step("sms", "\"window\": {\"start\": \"09:00\", \"end\": \"18:00\"}",
                    "/steps/1/window/tz", "required");
    expect_bad_step("sms", "\"window\": {\"start\": \"09:00\", \"end\": \"18:00\", \"tz\": \"\"}",
                    "/steps/1/window/tz", "must not be empty");
    expect_bad_step(
        "sms",
        "\"window\": {\"start\": \"09:00\", \"end\": \"18:00\", \"tz\": \"../../etc/passwd\"}",
        "/steps/1/window/tz", "not an IANA time zone name");
    expect_bad_step(
        "sms", "\"window\": {\"start\": \"09:00\", \"end\": \"18:00\", \"tz\": \"{{input..tz}}\"}",
        "/steps/1/window/tz", "bad template path");
    expect_bad_step(
        "sms",
        "\"window\": {\"start\": \"09:00\", \"end\": \"18:00\", \"tz\": \"UTC\", \"from\": 1}",
        "/steps/1/window/from", "unknown field");
    expect_bad_step("sms",
                    "\"window\": {\"start\": \"09:00\", \"end\": \"18:00\", \"tz\": \"Mars/Olympus\"}",
                    "/steps/1/window/tz", "not an IANA time zone name");
    expect_bad_step("sms",
                    "\"window\": {\"start\": \"09:00\", \"end\": \"18:00\", \"tz\": \"zone.tab\"}",
                    "/steps/1/window/tz", "not an IANA time zone name");
    expect_bad_step("sms", "\"at\": \"2027-02-31T09:00:00Z\"", "/steps/1/at", "RFC 3339");
    expect_bad_step("sms", "\"phase\": 3", "/steps/1/phase", "must be a string");
    expect_bad_step("sms", "\"continue_on_failure\": 1", "/steps/1/continue_on_failure",
                    "must be true or false");
    expect_bad_step("sms", "\"on_failure\": \"ignore\"", "/steps/1/on_failure",
                    "must be \"fail_run\", \"continue\" or \"skip_dependents\"");
    expect_bad_step("sms", "\"on_failure\": true", "/steps/1/on_failure", "must be \"fail_run");
    expect_bad_step("sms", "\"on_failure\": \"skip_dependents\", \"continue_on_failure\": true",
                    "/steps/1/on_failure", "contradicts continue_on_failure");
    expect_bad_step("sms", "\"phase\": \"\"", "/steps/1/phase", "must not be empty");
    expect_bad_step("sms", "\"concurrency_key\": {\"a\": 1}", "/steps/1/concurrency_key",
                    "must be a string");
    expect_bad_step("sms", "\"concurrency_key\": \"{{steps.s.output}}\"",
                    "/steps/1/concurrency_key", "rendered when the run is created");
    expect_bad_step("sms", "\"concurrency_key\": \"{{input.c | default: \\\"x\\\"}}\"",
                    "/steps/1/concurrency_key", "without defaults");
}

static void test_when(void **state)
{
    (void)state;
    expect_bad_step("email", "\"when\": \"input.a ==\"", "/steps/1/when", "expected a path");
    expect_bad_step("email", "\"when\": true", "/steps/1/when", "must be a string");
    expect_bad_step("email", "\"when\": \"steps.other.output.ok\"", "/steps/1/when",
                    "unknown step \"other\"");
    expect_bad_step("email", "\"when\": \"steps.first.output.ok and lead.x\"", "/steps/1/when",
                    "must start with input");
    json_t *out =
        compile_ok("{\"name\": \"w\", \"steps\": [{\"key\": \"a\", \"kind\": \"delay\"},"
                   " {\"key\": \"b\", \"kind\": \"email\", \"needs\": [\"a\"],"
                   "  \"when\": \"steps.a.output.ok and input.x in [1, 2] and run.id\"}]}");
    json_decref(out);
}

static void test_template_refs(void **state)
{
    (void)state;
    const char *diamond_fmt = "{\"name\": \"w\", \"steps\": ["
                              "{\"key\": \"a\", \"kind\": \"transform\"},"
                              "{\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"]},"
                              "{\"key\": \"c\", \"kind\": \"transform\", \"needs\": [\"a\"]},"
                              "{\"key\": \"d\", \"kind\": \"transform\", \"needs\": [\"b\", \"c\"],"
                              " \"input\": {\"x\": [1, {\"y\": \"%s\"}]}}]}";
    char src[1024];
    /* Transitive needs are allowed; so are input, run.id, item and index. */
    snprintf(src, sizeof src, diamond_fmt,
             "{{steps.a.output}} {{steps.b.output.z}} {{steps.c.output[0]}} {{input.q}} "
             "{{run.id}} {{item.email}} {{index}} {{input}}");
    json_decref(compile_ok(src));
    snprintf(src, sizeof src, diamond_fmt, "{{steps.ghost.output}}");
    expect_bad(src, "/steps/3/input/x/1/y", "unknown step \"ghost\"");
    snprintf(src, sizeof src, diamond_fmt, "{{run.tenant}}");
    expect_bad(src, "/steps/3/input/x/1/y", "must start with input");
    snprintf(src, sizeof src, diamond_fmt, "{{secrets.key}}");
    expect_bad(src, "/steps/3/input/x/1/y", "must start with input");
    snprintf(src, sizeof src, diamond_fmt, "{{steps}}");
    expect_bad(src, "/steps/3/input/x/1/y", "must name a step");
    snprintf(src, sizeof src, diamond_fmt, "{{steps[0]}}");
    expect_bad(src, "/steps/3/input/x/1/y", "must name a step");
    snprintf(src, sizeof src, diamond_fmt, "{{input.q");
    expect_bad(src, "/steps/3/input/x/1/y", "unclosed");
    snprintf(src, sizeof src, diamond_fmt, "{{input.q | default: nope}}");
    expect_bad(src, "/steps/3/input/x/1/y", "bad default literal");
    /* b does not need c (siblings), even though both come before d. */
    expect_bad("{\"name\": \"w\", \"steps\": ["
               "{\"key\": \"a\", \"kind\": \"transform\"},"
               "{\"key\": \"c\", \"kind\": \"transform\", \"needs\": [\"a\"]},"
               "{\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"],"
               " \"input\": {\"k/ey\": \"{{steps.c.output}}\"}}]}",
               "/steps/2/input/k~1ey",
               "template references step \"c\" which is not among the needs of step \"b\"");
    /* A step may reference a later-declared step it needs. */
    json_decref(compile_ok("{\"name\": \"w\", \"steps\": ["
                           "{\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"],"
                           " \"input\": \"{{steps.a.output}}\"},"
                           "{\"key\": \"a\", \"kind\": \"transform\"}]}"));
}

static void test_triggers(void **state)
{
    (void)state;
    json_t *out = compile_ok("{\"name\": \"w\", \"triggers\": [{\"event\": \"sms.received\"}],"
                             " \"steps\": [{\"key\": \"a\", \"kind\": \"transform\"}]}");
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(out, "triggers"), 0), "event")),
                        "sms.received");
    json_decref(out);
    const char *pre = "{\"name\": \"w\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\"}], ";
    char src[512];
    snprintf(src, sizeof src, "%s\"triggers\": {}}", pre);
    expect_bad(src, "/triggers", "must be an array");
    snprintf(src, sizeof src, "%s\"triggers\": [{\"event\": \"\"}]}", pre);
    expect_bad(src, "/triggers/0/event", "must not be empty");
    snprintf(src, sizeof src, "%s\"triggers\": [{}]}", pre);
    expect_bad(src, "/triggers/0/event", "required");
    snprintf(src, sizeof src, "%s\"triggers\": [{\"event\": \"x\", \"key\": 1}]}", pre);
    expect_bad(src, "/triggers/0/key", "unknown field");
}

static void test_cancel_on(void **state)
{
    (void)state;
    const char *pre = "{\"name\": \"w\", \"steps\": [{\"key\": \"a\", \"kind\": \"delay\"}], ";
    char src[512];
    snprintf(src, sizeof src, "%s\"cancel_on\": {}}", pre);
    expect_bad(src, "/cancel_on", "must be an array");
    snprintf(src, sizeof src, "%s\"cancel_on\": [\"lead.booked\"]}", pre);
    expect_bad(src, "/cancel_on/0", "must be an object");
    snprintf(src, sizeof src, "%s\"cancel_on\": [{\"key\": \"k\"}]}", pre);
    expect_bad(src, "/cancel_on/0/event", "required");
    snprintf(src, sizeof src, "%s\"cancel_on\": [{\"event\": \"e\", \"keys\": \"k\"}]}", pre);
    expect_bad(src, "/cancel_on/0/keys", "unknown field");
    snprintf(src, sizeof src,
             "%s\"cancel_on\": [{\"event\": \"e\", \"key\": \"k\"}, {\"event\": \"f\", \"key\": "
             "\"{{steps.a.output}}\"}]}",
             pre);
    expect_bad(src, "/cancel_on/1/key", "rendered when the run is created");
    snprintf(src, sizeof src, "%s\"cancel_on\": [{\"event\": \"e\"}]}", pre);
    expect_bad(src, "/cancel_on/0/key", "required");
    snprintf(src, sizeof src, "%s\"cancel_on\": [{\"event\": \"e\", \"key\": \"{{input.id\"}]}",
             pre);
    expect_bad(src, "/cancel_on/0/key", "unclosed");
}

static void test_size_caps(void **state)
{
    (void)state;
    /* WF_DEF_MAX_STEPS in one chain compiles (deep search, full transitive needs)... */
    json_t *steps = json_array();
    for (int i = 0; i < WF_DEF_MAX_STEPS; i++) {
        char key[16], prev[16];
        snprintf(key, sizeof key, "s%d", i);
        snprintf(prev, sizeof prev, "s%d", i - 1);
        json_t *st = json_pack("{s:s, s:s}", "key", key, "kind", "transform");
        if (i > 0) {
            json_object_set_new(st, "needs", json_pack("[s]", prev));
            json_object_set_new(st, "input", json_pack("{s:s}", "v", "{{steps.s0.output}}"));
        }
        json_array_append_new(steps, st);
    }
    json_t *doc = json_pack("{s:s, s:o}", "name", "chain", "steps", steps);
    json_t *out = NULL;
    eng_err err;
    assert_int_equal(wf_def_compile(doc, &out, &err), ENG_OK);
    json_t *last = json_array_get(json_object_get(out, "steps"), WF_DEF_MAX_STEPS - 1);
    assert_int_equal(json_array_size(json_object_get(last, "deps")), WF_DEF_MAX_STEPS - 1);
    json_decref(out);
    /* ...and one more is refused. */
    json_array_append_new(steps, json_pack("{s:s, s:s}", "key", "extra", "kind", "transform"));
    out = (json_t *)0x1;
    assert_int_equal(wf_def_compile(doc, &out, &err), ENG_EINVAL);
    assert_string_equal(err.field, "/steps");
    assert_ptr_equal(out, (json_t *)0x1);
    json_decref(doc);
    assert_int_equal(wf_def_compile(NULL, &out, &err), ENG_EINVAL);
    /* NULL err is allowed. */
    doc = json_pack("{s:s}", "name", "x");
    assert_int_equal(wf_def_compile(doc, &out, NULL), ENG_EINVAL);
    json_decref(doc);
}

/* The seed corpus doubles as realistic definitions: the good ones must keep compiling. */
static void test_corpus_definitions(void **state)
{
    (void)state;
    static const char *const good[] = {"diamond.json", "touchpoints_13.json", "map.json",
                                       "wait_event.json"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(good); i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/fuzz/corpus/fuzz_wf_def/%s", FLOWD_SOURCE_DIR, good[i]);
        json_error_t jerr;
        json_t *doc = json_load_file(path, 0, &jerr);
        if (!doc)
            fail_msg("%s: %s", path, jerr.text);
        json_t *out = NULL;
        eng_err err;
        if (wf_def_compile(doc, &out, &err) != ENG_OK)
            fail_msg("%s: %s: %s", good[i], err.field, err.msg);
        if (strcmp(good[i], "touchpoints_13.json") == 0) {
            assert_int_equal(json_array_size(json_object_get(out, "steps")), 13);
            json_t *last = json_array_get(json_object_get(out, "steps"), 12);
            assert_int_equal(json_array_size(json_object_get(last, "deps")), 12);
            assert_int_equal(json_array_size(json_object_get(out, "phases")), 3);
        }
        json_decref(out);
        json_decref(doc);
    }
    static const char *const bad_defs[][3] = {
        {"cycle.json", "/steps/1/needs/0", "cycle"},
        {"bad_window.json", "/steps/0/window/end", "later than start"},
    };
    for (size_t i = 0; i < ENG_ARRAY_LEN(bad_defs); i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/fuzz/corpus/fuzz_wf_def/%s", FLOWD_SOURCE_DIR,
                 bad_defs[i][0]);
        json_t *doc = json_load_file(path, 0, NULL);
        assert_non_null(doc);
        json_t *out = NULL;
        eng_err err;
        assert_int_equal(wf_def_compile(doc, &out, &err), ENG_EINVAL);
        assert_string_equal(err.field, bad_defs[i][1]);
        assert_non_null(strstr(err.msg, bad_defs[i][2]));
        json_decref(doc);
    }
}

static void test_sha256_vectors(void **state)
{
    (void)state;
    /* FIPS 180-2 appendix B and the usual extra vectors. */
    static const struct {
        const char *msg;
        const char *hex;
    } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrl"
         "mnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
    };
    for (size_t i = 0; i < ENG_ARRAY_LEN(v); i++) {
        char *h = wf_sha256_hex(v[i].msg, strlen(v[i].msg));
        assert_string_equal(h, v[i].hex);
        free(h);
    }
    size_t n = 1000000;
    char *a = malloc(n);
    memset(a, 'a', n);
    char *h = wf_sha256_hex(a, n);
    assert_string_equal(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(h);
    /* Lengths around the padding boundary (55, 56, 63, 64 bytes) against known digests. */
    h = wf_sha256_hex(a, 55);
    assert_string_equal(h, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
    free(h);
    h = wf_sha256_hex(a, 56);
    assert_string_equal(h, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
    free(h);
    h = wf_sha256_hex(a, 64);
    assert_string_equal(h, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
    free(h);
    free(a);
}

static void test_digest(void **state)
{
    (void)state;
    json_t *a = json_loads("{\"name\": \"w\", \"steps\": [{\"key\": \"a\", \"kind\": \"delay\"}]}",
                           0, NULL);
    json_t *b = json_loads(
        "{ \"steps\" : [ { \"kind\":\"delay\",\"key\":\"a\" } ] , \"name\":\"w\" }", 0, NULL);
    json_t *c = json_loads("{\"name\": \"w\", \"steps\": [{\"key\": \"b\", \"kind\": \"delay\"}]}",
                           0, NULL);
    char *da = wf_def_digest(a), *db = wf_def_digest(b), *dc = wf_def_digest(c);
    assert_int_equal(strlen(da), 64);
    assert_string_equal(da, db);
    assert_string_not_equal(da, dc);
    /* It is the SHA-256 of the canonical text. */
    char *want =
        wf_sha256_hex("{\"name\":\"w\",\"steps\":[{\"key\":\"a\",\"kind\":\"delay\"}]}",
                      strlen("{\"name\":\"w\",\"steps\":[{\"key\":\"a\",\"kind\":\"delay\"}]}"));
    assert_string_equal(da, want);
    free(want);
    free(da);
    free(db);
    free(dc);
    json_decref(a);
    json_decref(b);
    json_decref(c);
    assert_null(wf_def_digest(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normalized_shape),
        cmocka_unit_test(test_input_check),
        cmocka_unit_test(test_defaults_and_window_days),
        cmocka_unit_test(test_workflow_fields),
        cmocka_unit_test(test_keys_and_kinds),
        cmocka_unit_test(test_kind_validate),
        cmocka_unit_test(test_needs),
        cmocka_unit_test(test_retry_and_durations),
        cmocka_unit_test(test_at_window_phase_ckey),
        cmocka_unit_test(test_when),
        cmocka_unit_test(test_template_refs),
        cmocka_unit_test(test_cancel_on),
        cmocka_unit_test(test_triggers),
        cmocka_unit_test(test_size_caps),
        cmocka_unit_test(test_corpus_definitions),
        cmocka_unit_test(test_sha256_vectors),
        cmocka_unit_test(test_digest),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
