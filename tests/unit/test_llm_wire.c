/* tests/unit/test_llm_wire.c: steps/llm_wire.c, the OpenAI and Anthropic wire formats, on recorded
 * responses (tests/unit/data/llm/, in the shapes the providers document) and on the request bodies
 * made from step inputs. No network, no database. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "steps/llm_wire.h"
#include "tests/support/th.h"

/* The recorded response in tests/unit/data/llm/name (NUL-terminated); *len its size. */
static char *recorded(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/tests/unit/data/llm/%s", th_source_dir(), name);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    eng_buf b;
    eng_buf_init(&b, 0);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        assert_int_equal(eng_buf_append(&b, chunk, n), ENG_OK);
    fclose(f);
    return eng_buf_take(&b, len);
}

typedef struct expected {
    const char *text, *finish, *error;
    long long in_tokens, out_tokens;
    bool done;
    long long cached_tokens; /* of in_tokens */
} expected;

static void check_parse(prov_id prov, bool stream, const char *name, const expected *w)
{
    size_t len;
    char *body = recorded(name, &len);
    llm_reply r;
    llm_reply_init(&r);
    llm_wire_parse(prov, stream, body, len, &r);
    assert_string_equal(r.text.ptr ? r.text.ptr : "", w->text);
    assert_string_equal(r.finish, w->finish);
    assert_string_equal(r.error, w->error);
    assert_int_equal(r.in_tokens, w->in_tokens);
    assert_int_equal(r.out_tokens, w->out_tokens);
    assert_int_equal(r.done, w->done);
    assert_int_equal(r.cached_tokens, w->cached_tokens);
    llm_reply_deinit(&r);
    free(body);
}

static void test_openai_plain(void **state)
{
    (void)state;
    check_parse(PROV_OPENAI, false, "openai_plain.json",
                &(expected){.text = "Hi.", .finish = "stop", .error = "", 14, 2, true});
    /* a refusal stands for the text it did not give; other finish reasons pass through */
    check_parse(PROV_OPENAI, false, "openai_refusal.json",
                &(expected){.text = "I can't help with that.", .finish = "content_filter",
                        .error = "", 20, 7, true});
    check_parse(PROV_OPENAI, false, "openai_no_message.json",
                &(expected){.text = "", .finish = "", .error = "answer has no message", 0, 0, false});
}

static void test_openai_stream(void **state)
{
    (void)state;
    check_parse(PROV_OPENAI, true, "openai_stream.sse",
                &(expected){.text = "Hi there.", .finish = "stop", .error = "", 14, 3, true});
    check_parse(PROV_OPENAI, true, "openai_stream_error.sse",
                &(expected){.text = "Hal", .finish = "",
                        .error = "server_error: The server had an error while processing your "
                                 "request.",
                        0, 0, false});
    /* cut inside an event: what came is kept, and the answer is not complete */
    check_parse(PROV_OPENAI, true, "openai_stream_cut.sse",
                &(expected){.text = "Hi", .finish = "", .error = "", 0, 0, false});
    check_parse(PROV_OPENAI_COMPATIBLE, true, "openai_stream_cut.sse",
                &(expected){.text = "Hi", .finish = "", .error = "", 0, 0, false});
}

/* Local servers may end without [DONE] once they said why they stopped (CRLF and comments too);
 * OpenAI itself always sends [DONE], so there the same stream is incomplete. */
static void test_local_stream_without_done(void **state)
{
    (void)state;
    check_parse(PROV_OPENAI_COMPATIBLE, true, "local_stream_no_done.sse",
                &(expected){.text = "Bonjour", .finish = "length", .error = "", 9, 1, true});
    check_parse(PROV_OPENAI, true, "local_stream_no_done.sse",
                &(expected){.text = "Bonjour", .finish = "length", .error = "", 9, 1, false});
}

static void test_anthropic(void **state)
{
    (void)state;
    /* text blocks joined, other blocks skipped, max_tokens normalized to length */
    check_parse(PROV_ANTHROPIC, false, "anthropic_plain.json",
                &(expected){.text = "Hi. Bye.", .finish = "length", .error = "", 12, 3, true});
    /* output_tokens of message_delta is cumulative; ping is ignored; end_turn is stop */
    check_parse(PROV_ANTHROPIC, true, "anthropic_stream.sse",
                &(expected){.text = "Hi there.", .finish = "stop", .error = "", 12, 4, true});
    check_parse(PROV_ANTHROPIC, true, "anthropic_stream_error.sse",
                &(expected){.text = "Hi", .finish = "", .error = "overloaded_error: Overloaded", 12, 1,
                        false});
}

/* Prompt-cache reads, as each provider reports them: OpenAI counts them inside prompt_tokens
 * (prompt_tokens_details.cached_tokens); Anthropic leaves them and the tokens written to the cache
 * out of input_tokens (cache_read_input_tokens, cache_creation_input_tokens), so they are added. */
static void test_cached_tokens(void **state)
{
    (void)state;
    check_parse(PROV_OPENAI, false, "openai_cached.json",
                &(expected){.text = "Same again.", .finish = "stop", .error = "", .in_tokens = 2006,
                            .out_tokens = 300, .done = true, .cached_tokens = 1920});
    check_parse(PROV_OPENAI, true, "openai_stream_cached.sse",
                &(expected){.text = "Cached.", .finish = "stop", .error = "", .in_tokens = 1500,
                            .out_tokens = 3, .done = true, .cached_tokens = 1408});
    check_parse(PROV_ANTHROPIC, false, "anthropic_cached.json",
                &(expected){.text = "Same again.", .finish = "stop", .error = "",
                            .in_tokens = 21 + 188 + 1800, .out_tokens = 393, .done = true,
                            .cached_tokens = 1800});
    check_parse(PROV_ANTHROPIC, true, "anthropic_stream_cached.sse",
                &(expected){.text = "Cached.", .finish = "stop", .error = "",
                            .in_tokens = 21 + 1988, .out_tokens = 5, .done = true,
                            .cached_tokens = 1988});
}

static void test_not_an_answer(void **state)
{
    (void)state;
    const char *html = "<html>bad gateway</html>";
    llm_reply r;
    llm_reply_init(&r);
    llm_wire_parse(PROV_OPENAI, false, html, strlen(html), &r);
    assert_string_equal(r.error, "answer is not a JSON object");
    assert_false(r.done);
    llm_reply_deinit(&r);

    /* an answer longer than the cap is an error, not a truncated success */
    size_t n = LLM_MAX_RESPONSE + 1;
    char *big = eng_xmalloc(n + 1);
    memset(big, 'a', n);
    big[n] = '\0';
    json_t *j = json_pack("{s:[{s:{s:s}, s:s}]}", "choices", "message", "content", big,
                          "finish_reason", "stop");
    char *body = json_dumps(j, JSON_COMPACT);
    llm_reply_init(&r);
    llm_wire_parse(PROV_OPENAI, false, body, strlen(body), &r);
    assert_string_equal(r.error, "answer too long");
    llm_reply_deinit(&r);
    free(body);
    json_decref(j);
    free(big);
}

static void check_body(json_t *body /* stolen */, const char *want_json)
{
    json_error_t jerr;
    json_t *want = json_loads(want_json, 0, &jerr);
    if (!want)
        fail_msg("bad expected JSON: %s", jerr.text);
    if (!json_equal(body, want)) {
        char *got = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
        char *exp = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
        print_error("got  %s\nwant %s\n", got, exp);
        free(got);
        free(exp);
        fail();
    }
    json_decref(want);
    json_decref(body);
}

static void test_openai_bodies(void **state)
{
    (void)state;
    json_t *in = json_loads("{\"model\": \"gpt-4o-mini\", \"system\": \"Be terse.\", \"prompt\": "
                            "\"Say hi\", \"max_tokens\": 256, \"temperature\": 0.2}",
                            0, NULL);
    check_body(llm_wire_openai_body(PROV_OPENAI, in, "gpt-4o-mini"),
               "{\"model\": \"gpt-4o-mini\", \"max_completion_tokens\": 256, \"temperature\": 0.2,"
               " \"messages\": [{\"role\": \"system\", \"content\": \"Be terse.\"},"
               " {\"role\": \"user\", \"content\": \"Say hi\"}]}");
    /* local servers only know max_tokens; the model is the target's, not the input's */
    check_body(llm_wire_openai_body(PROV_OPENAI_COMPATIBLE, in, "llama"),
               "{\"model\": \"llama\", \"max_tokens\": 256, \"temperature\": 0.2,"
               " \"messages\": [{\"role\": \"system\", \"content\": \"Be terse.\"},"
               " {\"role\": \"user\", \"content\": \"Say hi\"}]}");
    json_decref(in);

    /* json mode names JSON in the messages (OpenAI refuses json_object otherwise); streams ask
     * for usage */
    in = json_loads("{\"prompt\": \"List three\", \"json\": true, \"stream\": true}", 0, NULL);
    check_body(llm_wire_openai_body(PROV_OPENAI, in, "gpt-4o"),
               "{\"model\": \"gpt-4o\", \"response_format\": {\"type\": \"json_object\"},"
               " \"stream\": true, \"stream_options\": {\"include_usage\": true},"
               " \"messages\": [{\"role\": \"system\", \"content\":"
               " \"Reply with a single JSON value and nothing else.\"},"
               " {\"role\": \"user\", \"content\": \"List three\"}]}");
    json_decref(in);

    in = json_loads("{\"system\": \"Classify.\", \"messages\": [{\"role\": \"user\", \"content\":"
                    " \"STOP\"}], \"json_schema\": {\"type\": \"object\", \"properties\":"
                    " {\"intent\": {\"enum\": [\"opt_out\", \"other\"]}}}}",
                    0, NULL);
    check_body(llm_wire_openai_body(PROV_OPENAI, in, "gpt-4o"),
               "{\"model\": \"gpt-4o\", \"response_format\": {\"type\": \"json_schema\","
               " \"json_schema\": {\"name\": \"output\", \"strict\": true, \"schema\":"
               " {\"type\": \"object\", \"properties\": {\"intent\": {\"enum\": [\"opt_out\","
               " \"other\"]}}}}},"
               " \"messages\": [{\"role\": \"system\", \"content\": \"Classify.\\n\\nReply with a"
               " single JSON value and nothing else, matching this JSON Schema:"
               " {\\\"properties\\\":{\\\"intent\\\":{\\\"enum\\\":[\\\"opt_out\\\","
               "\\\"other\\\"]}},\\\"type\\\":\\\"object\\\"}\"},"
               " {\"role\": \"user\", \"content\": \"STOP\"}]}");
    json_decref(in);
}

static void test_anthropic_bodies(void **state)
{
    (void)state;
    /* no system role: system and developer texts join the top-level field; temperature is capped
     * at 1; max_tokens is required, so the default goes out */
    json_t *in = json_loads(
        "{\"system\": \"Be terse.\", \"temperature\": 1.5, \"stream\": true, \"messages\": ["
        "{\"role\": \"developer\", \"content\": \"Use French.\"},"
        "{\"role\": \"user\", \"content\": \"Say hi\"},"
        "{\"role\": \"assistant\", \"content\": \"Salut\"},"
        "{\"role\": \"user\", \"content\": \"Again\"}]}",
        0, NULL);
    check_body(llm_wire_anthropic_body(in, "claude-sonnet-4-5"),
               "{\"model\": \"claude-sonnet-4-5\", \"max_tokens\": 1024, \"temperature\": 1.0,"
               " \"stream\": true, \"system\": \"Be terse.\\n\\nUse French.\", \"messages\": ["
               "{\"role\": \"user\", \"content\": \"Say hi\"},"
               "{\"role\": \"assistant\", \"content\": \"Salut\"},"
               "{\"role\": \"user\", \"content\": \"Again\"}]}");
    json_decref(in);

    in = json_loads("{\"prompt\": \"Say hi\", \"max_tokens\": 64, \"temperature\": 0.5, \"json\":"
                    " true}",
                    0, NULL);
    check_body(llm_wire_anthropic_body(in, "claude-haiku-4-5"),
               "{\"model\": \"claude-haiku-4-5\", \"max_tokens\": 64, \"temperature\": 0.5,"
               " \"system\": \"Reply with a single JSON value and nothing else.\","
               " \"messages\": [{\"role\": \"user\", \"content\": \"Say hi\"}]}");
    json_decref(in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai_plain),
        cmocka_unit_test(test_openai_stream),
        cmocka_unit_test(test_local_stream_without_done),
        cmocka_unit_test(test_anthropic),
        cmocka_unit_test(test_cached_tokens),
        cmocka_unit_test(test_not_an_answer),
        cmocka_unit_test(test_openai_bodies),
        cmocka_unit_test(test_anthropic_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
