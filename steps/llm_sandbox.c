/* steps/llm_sandbox.c: the llm step's sandbox provider (see llm_sandbox.h). */
#include "steps/llm_sandbox.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/err.h"
#include "engine/mem.h"
#include "engine/wf_def.h"
#include "steps/llm_answer.h"
#include "steps/llm_input.h"

/* Words of a customer's message that stand for an enum member a classifier commonly has, so the
 * sandbox takes every branch of a workflow without a key: "STOP" is opt_out, "can I book" booking.
 * A word matches at the start of a word of the message ("book" also matches "booking"). */
static const struct {
    const char *member;
    const char *const words[8];
} sandbox_hints[] = {
    {"opt_out", {"stop", "unsubscribe", "opt out", "opt-out", "quit", "cancel", "end", NULL}},
    {"booking", {"book", "appointment", "schedule", "reserve", "reservation", NULL}},
    {"human", {"human", "person", "agent", "manager", "complain", NULL}},
    {"question", {"?", NULL}},
};

/* Whether word occurs in text (case-insensitively) at the start of one of its words. */
static bool sandbox_has_word(const char *text, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = text; *p; p++) {
        bool start = p == text || !isalnum((unsigned char)p[-1]) || !isalnum((unsigned char)*word);
        if (start && strncasecmp(p, word, n) == 0)
            return true;
    }
    return false;
}

/* The member of enum that text points at: a member named in it ("opt_out" as "opt out" too), else
 * the first with a hint word in it; NULL when none. */
static const json_t *sandbox_pick(const json_t *members, const char *text)
{
    size_t i;
    const json_t *m;
    json_array_foreach (members, i, m) {
        const char *name = json_string_value(m);
        if (!name || !*name)
            continue;
        char spaced[64];
        snprintf(spaced, sizeof spaced, "%s", name);
        for (char *c = spaced; *c; c++)
            *c = *c == '_' ? ' ' : *c;
        if (sandbox_has_word(text, name) || sandbox_has_word(text, spaced))
            return m;
    }
    for (size_t h = 0; h < ENG_ARRAY_LEN(sandbox_hints); h++) {
        json_array_foreach (members, i, m) {
            if (!json_is_string(m) || strcmp(json_string_value(m), sandbox_hints[h].member) != 0)
                continue;
            for (const char *const *w = sandbox_hints[h].words; *w; w++)
                if (sandbox_has_word(text, *w))
                    return m;
        }
    }
    return NULL;
}

/* A value shaped like schema: deterministic placeholders for a first run without a key; an enum
 * takes the member the last user message (text) points at, else its first. */
static json_t *schema_sample(const json_t *schema, const char *digest, const char *text, int depth)
{
    const json_t *c = json_object_get(schema, "const");
    if (c)
        return json_incref((json_t *)c);
    const json_t *members = json_object_get(schema, "enum");
    const json_t *e = sandbox_pick(members, text);
    if (!e)
        e = json_array_get(members, 0);
    if (e)
        return json_incref((json_t *)e);
    const char *type = json_string_value(json_object_get(schema, "type"));
    if (!type || depth > 8)
        return json_string(digest);
    if (strcmp(type, "object") == 0) {
        json_t *o = json_object();
        const char *k;
        json_t *sub;
        json_object_foreach (json_object_get(schema, "properties"), k, sub)
            json_object_set_new(o, k, schema_sample(sub, digest, text, depth + 1));
        return o;
    }
    if (strcmp(type, "array") == 0)
        return json_pack("[o]", schema_sample(json_object_get(schema, "items"), digest, text,
                                              depth + 1));
    if (strcmp(type, "integer") == 0 || strcmp(type, "number") == 0)
        return json_integer((json_int_t)strtoll(digest, NULL, 16) % 100);
    if (strcmp(type, "boolean") == 0)
        return json_boolean(digest[0] >= '8');
    if (strcmp(type, "null") == 0)
        return json_null();
    return json_string(digest);
}

json_t *llm_sandbox_answer(const json_t *in, const char *model, bool fallback)
{
    json_t *conv = llm_input_conversation(in, NULL);
    char *canon = json_dumps(conv, JSON_COMPACT | JSON_SORT_KEYS);
    char *digest = wf_sha256_hex(canon, strlen(canon));
    digest[12] = '\0';
    const char *last = "";
    size_t i;
    json_t *m;
    json_array_foreach (conv, i, m)
        if (strcmp(json_string_value(json_object_get(m, "role")), "user") == 0)
            last = json_string_value(json_object_get(m, "content"));
    json_t *parsed = NULL;
    char *text;
    if (llm_input_json_mode(in)) {
        const json_t *schema = json_object_get(in, "json_schema");
        parsed = schema ? schema_sample(schema, digest, last ? last : "", 0)
                        : json_pack("{s:b, s:s}", "sandbox", 1, "digest", digest);
        text = json_dumps(parsed, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    } else {
        text = eng_xasprintf("[sandbox %s] %.200s", digest, last);
    }
    llm_answer ans = {.provider = "sandbox", .model = model, .fallback = fallback, .text = text,
                      .json = parsed, .finish = "stop",
                      .in_tokens = (int64_t)(llm_input_chars(in) + 3) / 4,
                      .out_tokens = (int64_t)(strlen(text) + 3) / 4};
    json_t *out = llm_answer_output(&ans);
    free(text);
    free(digest);
    free(canon);
    json_decref(conv);
    return out;
}
