/* steps/llm_wire.c: the OpenAI and Anthropic wire formats (see llm_wire.h). */
#include "steps/llm_wire.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "engine/sse.h"
#include "steps/llm_input.h"

void llm_reply_init(llm_reply *r)
{
    memset(r, 0, sizeof *r);
    eng_buf_init(&r->text, LLM_MAX_RESPONSE);
}

void llm_reply_deinit(llm_reply *r)
{
    eng_buf_deinit(&r->text);
}

static const char *str_or(const char *s)
{
    return s ? s : "";
}

/* ------------------------------------------------------------------------------- requests -- */

json_t *llm_wire_openai_body(prov_id prov, const json_t *in, const char *model)
{
    /* OpenAI refuses json_object unless the messages mention JSON */
    char *instr = llm_input_json_mode(in) ? llm_input_json_instruction(in) : NULL;
    json_t *body = json_pack("{s:s, s:o}", "model", model, "messages", llm_input_conversation(in, instr));
    free(instr);
    const json_t *mt = json_object_get(in, "max_tokens");
    if (mt) /* local servers only know max_tokens (apis.md §6) */
        json_object_set(body, prov == PROV_OPENAI ? "max_completion_tokens" : "max_tokens",
                        (json_t *)mt);
    const json_t *t = json_object_get(in, "temperature");
    if (t)
        json_object_set(body, "temperature", (json_t *)t);
    const json_t *schema = json_object_get(in, "json_schema");
    if (schema)
        json_object_set_new(body, "response_format",
                            json_pack("{s:s, s:{s:s, s:O, s:b}}", "type", "json_schema",
                                      "json_schema", "name", "output", "schema", schema, "strict",
                                      1));
    else if (json_is_true(json_object_get(in, "json")))
        json_object_set_new(body, "response_format", json_pack("{s:s}", "type", "json_object"));
    if (json_is_true(json_object_get(in, "stream"))) {
        json_object_set_new(body, "stream", json_true());
        json_object_set_new(body, "stream_options", json_pack("{s:b}", "include_usage", 1));
    }
    return body;
}

json_t *llm_wire_anthropic_body(const json_t *in, const char *model)
{
    char *instr = llm_input_json_mode(in) ? llm_input_json_instruction(in) : NULL;
    json_t *conv = llm_input_conversation(in, instr);
    free(instr);
    json_t *msgs = json_array();
    json_t *system = NULL;
    size_t i;
    json_t *m;
    /* Anthropic has no system role: system and developer texts go to the top-level field */
    json_array_foreach (conv, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        const char *content = json_string_value(json_object_get(m, "content"));
        if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) {
            const char *prev = json_string_value(system);
            char *s = eng_xasprintf("%s%s%s", prev ? prev : "", prev ? "\n\n" : "", content);
            json_decref(system);
            system = json_string(s);
            free(s);
        } else {
            json_array_append(msgs, m);
        }
    }
    json_decref(conv);
    json_t *body = json_pack("{s:s, s:I, s:o}", "model", model, "max_tokens",
                             (json_int_t)llm_input_max_tokens(in), "messages", msgs);
    if (system)
        json_object_set_new(body, "system", system);
    const json_t *t = json_object_get(in, "temperature");
    if (t) /* Anthropic accepts 0..1 */
        json_object_set_new(body, "temperature",
                            json_real(fmin(1.0, json_number_value(t))));
    if (json_is_true(json_object_get(in, "stream")))
        json_object_set_new(body, "stream", json_true());
    return body;
}

static void set_finish(llm_reply *r, const char *f)
{
    if (!f)
        return;
    if (strcmp(f, "end_turn") == 0 || strcmp(f, "stop_sequence") == 0)
        f = "stop";
    else if (strcmp(f, "max_tokens") == 0)
        f = "length";
    snprintf(r->finish, sizeof r->finish, "%s", f);
}

static void reply_text(llm_reply *r, const char *s)
{
    if (s && eng_buf_append(&r->text, s, strlen(s)) != ENG_OK)
        snprintf(r->error, sizeof r->error, "answer too long");
}

static void openai_usage(llm_reply *r, const json_t *u)
{
    if (json_is_object(u)) {
        r->in_tokens = json_integer_value(json_object_get(u, "prompt_tokens"));
        r->out_tokens = json_integer_value(json_object_get(u, "completion_tokens"));
        r->cached_tokens = json_integer_value(
            json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens"));
    }
}

/* Anthropic's input_tokens leaves out the tokens read from the cache and those written to it,
 * which are input all the same (and billed): in_tokens is their sum. */
static void anthropic_usage(llm_reply *r, const json_t *u, bool delta)
{
    if (!json_is_object(u))
        return;
    if (!delta || json_object_get(u, "input_tokens")) {
        int64_t read = json_integer_value(json_object_get(u, "cache_read_input_tokens"));
        r->in_tokens = json_integer_value(json_object_get(u, "input_tokens")) + read +
                       json_integer_value(json_object_get(u, "cache_creation_input_tokens"));
        r->cached_tokens = read;
    }
    if (json_object_get(u, "output_tokens")) /* cumulative in message_delta */
        r->out_tokens = json_integer_value(json_object_get(u, "output_tokens"));
}

static void error_of(llm_reply *r, const json_t *j)
{
    const json_t *e = json_object_get(j, "error");
    const char *type = json_string_value(json_object_get(e, "type"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    snprintf(r->error, sizeof r->error, "%s%s%s", type ? type : "error", msg ? ": " : "",
             msg ? msg : "");
}

static void parse_plain(prov_id prov, const char *body, llm_reply *r)
{
    json_t *j = json_loads(body, 0, NULL);
    if (!json_is_object(j)) {
        snprintf(r->error, sizeof r->error, "answer is not a JSON object");
        json_decref(j);
        return;
    }
    if (prov == PROV_ANTHROPIC) {
        size_t i;
        json_t *c;
        json_array_foreach (json_object_get(j, "content"), i, c)
            if (strcmp(str_or(json_string_value(json_object_get(c, "type"))), "text") == 0)
                reply_text(r, json_string_value(json_object_get(c, "text")));
        set_finish(r, json_string_value(json_object_get(j, "stop_reason")));
        anthropic_usage(r, json_object_get(j, "usage"), false);
        r->done = json_is_array(json_object_get(j, "content"));
    } else {
        const json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
        const json_t *msg = json_object_get(ch, "message");
        reply_text(r, json_string_value(json_object_get(msg, "content")));
        const char *refusal = json_string_value(json_object_get(msg, "refusal"));
        if (refusal && r->text.len == 0)
            reply_text(r, refusal);
        set_finish(r, json_string_value(json_object_get(ch, "finish_reason")));
        openai_usage(r, json_object_get(j, "usage"));
        r->done = json_is_object(msg);
    }
    if (!r->done && !*r->error)
        snprintf(r->error, sizeof r->error, "answer has no message");
    json_decref(j);
}

static void parse_stream(prov_id prov, const char *body, size_t len, llm_reply *r)
{
    const char *p = body, *end = body + len;
    char name[64];
    eng_buf data;
    eng_buf_init(&data, LLM_MAX_RESPONSE);
    while (!r->done && !*r->error && eng_sse_next(&p, end, name, sizeof name, &data)) {
        if (prov != PROV_ANTHROPIC && data.len == 6 && memcmp(data.ptr, "[DONE]", 6) == 0) {
            r->done = true;
            break;
        }
        json_t *j = data.len ? json_loadb(data.ptr, data.len, 0, NULL) : NULL;
        if (!json_is_object(j)) {
            json_decref(j);
            continue;
        }
        const char *type = json_string_value(json_object_get(j, "type"));
        if (json_object_get(j, "error") || strcmp(name, "error") == 0) {
            error_of(r, j);
        } else if (prov == PROV_ANTHROPIC && type) {
            if (strcmp(type, "message_start") == 0) {
                anthropic_usage(r, json_object_get(json_object_get(j, "message"), "usage"),
                                false);
            } else if (strcmp(type, "content_block_delta") == 0) {
                const json_t *d = json_object_get(j, "delta");
                if (strcmp(str_or(json_string_value(json_object_get(d, "type"))), "text_delta") ==
                    0)
                    reply_text(r, json_string_value(json_object_get(d, "text")));
            } else if (strcmp(type, "message_delta") == 0) {
                set_finish(r, json_string_value(
                                  json_object_get(json_object_get(j, "delta"), "stop_reason")));
                anthropic_usage(r, json_object_get(j, "usage"), true);
            } else if (strcmp(type, "message_stop") == 0) {
                r->done = true;
            }
        } else if (prov != PROV_ANTHROPIC) {
            const json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
            reply_text(r, json_string_value(
                              json_object_get(json_object_get(ch, "delta"), "content")));
            set_finish(r, json_string_value(json_object_get(ch, "finish_reason")));
            openai_usage(r, json_object_get(j, "usage"));
        }
        json_decref(j);
    }
    /* local servers may end without [DONE] once they said why they stopped (apis.md §6) */
    if (!r->done && prov == PROV_OPENAI_COMPATIBLE && *r->finish && p == end)
        r->done = true;
    eng_buf_deinit(&data);
}

void llm_wire_parse(prov_id prov, bool stream, const char *body, size_t len, llm_reply *r)
{
    if (stream)
        parse_stream(prov, body, len, r);
    else
        parse_plain(prov, body, r);
}
