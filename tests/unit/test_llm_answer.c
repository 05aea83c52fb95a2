/* tests/unit/test_llm_answer.c: steps/llm_answer.c (the llm step's output, prices, JSON answers)
 * and steps/llm_sandbox.c (the provider that answers without a key). */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "steps/llm_answer.h"
#include "steps/llm_sandbox.h"

static void test_output(void **state)
{
    (void)state;
    llm_answer a = {.provider = "openai", .model = "gpt-4o-mini-2024-07-18", .text = "{\"a\":1}",
                    .json = json_pack("{s:i}", "a", 1), .finish = "", .in_tokens = 1000,
                    .out_tokens = 500, .latency_ms = 42, .fallback = true};
    json_t *out = llm_answer_output(&a);
    json_t *want = json_pack("{s:s, s:{s:i}, s:s, s:s, s:s, s:{s:i, s:i}, s:i, s:f, s:b}", "text",
                             "{\"a\":1}", "json", "a", 1, "provider", "openai", "model",
                             "gpt-4o-mini-2024-07-18", "finish_reason", "stop", "usage",
                             "input_tokens", 1000, "output_tokens", 500, "latency_ms", 42,
                             "cost_usd", 0.00045, "fallback", 1);
    assert_true(json_equal(out, want));
    json_decref(want);
    json_decref(out);

    /* cached input tokens, part of the input, at the cached price: 1000 - 800 at 0.15, 800 at
     * 0.075 and 500 at 0.60 per million */
    a = (llm_answer){.provider = "openai", .model = "gpt-4o-mini", .text = "x", .finish = "",
                     .in_tokens = 1000, .out_tokens = 500, .cached_tokens = 800};
    out = llm_answer_output(&a);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(out, "usage"),
                                                        "cached_input_tokens")),
                     800);
    assert_true(json_real_value(json_object_get(out, "cost_usd")) == 0.00039);
    json_decref(out);

    /* an unknown model has no cost; the sandbox never has one */
    double pin, pout, pcached;
    assert_false(llm_answer_price("llama-3", &pin, &pout, &pcached));
    assert_true(llm_answer_cost("llama-3", 10, 10, 0) < 0);
    assert_true(llm_answer_price("gpt-4o-2024-08-06", &pin, &pout, &pcached));
    assert_true(pin == 2.50 && pout == 10.00 && pcached == 1.25);
    a = (llm_answer){.provider = "sandbox", .model = "gpt-4o", .text = "x", .finish = "length"};
    out = llm_answer_output(&a);
    assert_null(json_object_get(out, "cost_usd"));
    assert_null(json_object_get(out, "fallback"));
    assert_string_equal(json_string_value(json_object_get(out, "finish_reason")), "length");
    json_decref(out);
}

static void test_json_answers(void **state)
{
    (void)state;
    json_t *v = llm_answer_json("  \n```json\n{\"ok\": true}\n```\n");
    assert_non_null(v);
    assert_true(json_is_true(json_object_get(v, "ok")));
    json_decref(v);
    v = llm_answer_json("42");
    assert_int_equal(json_integer_value(v), 42);
    json_decref(v);
    assert_null(llm_answer_json("Sure! {\"ok\": true}"));
    assert_null(llm_answer_json("```json\n{\"ok\": true}"));

    json_t *schema = json_loads("{\"type\": \"object\", \"required\": [\"n\"], \"properties\":"
                                " {\"n\": {\"type\": \"integer\"}}}",
                                0, NULL);
    json_t *good = json_loads("{\"n\": 1}", 0, NULL), *bad = json_loads("{\"n\": \"1\"}", 0, NULL);
    char msg[512];
    assert_true(llm_answer_matches(schema, good, msg, sizeof msg));
    assert_false(llm_answer_matches(schema, bad, msg, sizeof msg));
    assert_non_null(strstr(msg, "the reply does not match json_schema at \"/n\""));
    json_decref(schema);
    json_decref(good);
    json_decref(bad);
}

static void test_sandbox(void **state)
{
    (void)state;
    json_t *in = json_loads("{\"prompt\": \"Say hi\"}", 0, NULL);
    json_t *a = llm_sandbox_answer(in, "gpt-4o", false), *b = llm_sandbox_answer(in, "gpt-4o", false);
    assert_true(json_equal(a, b)); /* deterministic */
    const char *text = json_string_value(json_object_get(a, "text"));
    assert_memory_equal(text, "[sandbox ", 9);
    assert_non_null(strstr(text, "] Say hi"));
    assert_string_equal(json_string_value(json_object_get(a, "provider")), "sandbox");
    assert_null(json_object_get(a, "cost_usd"));
    json_decref(a);
    json_decref(b);
    json_decref(in);

    /* an enum takes the member the last user message points at, so branches can be taken */
    const char *msgs[] = {"STOP texting me", "can I book a call?", "what is the price?", "ok"};
    const char *members[] = {"opt_out", "booking", "question", "other"};
    for (size_t i = 0; i < 4; i++) {
        in = json_pack("{s:[{s:s, s:s}], s:{s:s, s:{s:{s:[s, s, s, s]}, s:{s:s}}}}", "messages",
                       "role", "user", "content", msgs[i], "json_schema", "type", "object",
                       "properties", "intent", "enum", "other", "opt_out", "booking", "question",
                       "n", "type", "integer");
        a = llm_sandbox_answer(in, "gpt-4o", true);
        const json_t *j = json_object_get(a, "json");
        assert_string_equal(json_string_value(json_object_get(j, "intent")), members[i]);
        assert_true(json_is_integer(json_object_get(j, "n")));
        assert_true(json_is_true(json_object_get(a, "fallback")));
        json_decref(a);
        json_decref(in);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_output),
        cmocka_unit_test(test_json_answers),
        cmocka_unit_test(test_sandbox),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
