/* steps/llm_input.c: the llm step's input: validation and readers (see llm_input.h). */
#include "steps/llm_input.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/jschema.h"
#include "engine/mem.h"
#include "engine/wf_template.h"

/* ------------------------------------------------------------------------------- validation -- */

static bool is_tpl(const json_t *v)
{
    return json_is_string(v) && wf_template_is_templated(json_string_value(v));
}

static eng_rc bad(eng_err *err, const char *ptr, const char *sub, const char *msg)
{
    char field[200];
    snprintf(field, sizeof field, "%s/input%s", ptr, sub);
    return eng_err_field(err, ENG_EINVAL, field, "%s", msg);
}

static bool provider_name_ok(const char *s)
{
    return strcmp(s, "openai") == 0 || strcmp(s, "anthropic") == 0 ||
           strcmp(s, "openai_compatible") == 0 || strcmp(s, "sandbox") == 0;
}

static eng_rc check_provider(const json_t *v, const char *ptr, const char *sub, eng_err *err)
{
    if (!json_is_string(v))
        return bad(err, ptr, sub, "must be a string");
    if (!is_tpl(v) && !provider_name_ok(json_string_value(v)))
        return bad(err, ptr, sub, "must be one of openai, anthropic, openai_compatible, sandbox");
    return ENG_OK;
}

static eng_rc check_messages(const json_t *msgs, const char *ptr, eng_err *err)
{
    if (is_tpl(msgs))
        return ENG_OK;
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return bad(err, ptr, "/messages", "must be a non-empty array of {role, content}");
    size_t i;
    json_t *m;
    json_array_foreach (msgs, i, m) {
        char sub[64];
        snprintf(sub, sizeof sub, "/messages/%zu", i);
        if (!json_is_object(m))
            return bad(err, ptr, sub, "must be an object with role and content");
        const json_t *role = json_object_get(m, "role");
        const char *r = json_string_value(role);
        snprintf(sub, sizeof sub, "/messages/%zu/role", i);
        if (!r || (!is_tpl(role) && strcmp(r, "system") != 0 && strcmp(r, "user") != 0 &&
                   strcmp(r, "assistant") != 0 && strcmp(r, "developer") != 0))
            return bad(err, ptr, sub, "must be one of system, developer, user, assistant");
        snprintf(sub, sizeof sub, "/messages/%zu/content", i);
        if (!json_is_string(json_object_get(m, "content")))
            return bad(err, ptr, sub, "must be a string");
    }
    return ENG_OK;
}

eng_rc llm_input_validate(const json_t *step, const char *ptr, eng_err *err)
{
    const json_t *in = json_object_get(step, "input");
    if (!json_is_object(in))
        return bad(err, ptr, "", "llm needs an input object with \"model\" and \"prompt\" or "
                                 "\"messages\"");
    const json_t *v = json_object_get(in, "provider");
    if (v && check_provider(v, ptr, "/provider", err) != ENG_OK)
        return err ? err->rc : ENG_EINVAL;
    v = json_object_get(in, "model");
    if (!json_is_string(v) || !*json_string_value(v))
        return bad(err, ptr, "/model", "must be a non-empty string");
    const json_t *prompt = json_object_get(in, "prompt");
    const json_t *msgs = json_object_get(in, "messages");
    if (!prompt == !msgs)
        return bad(err, ptr, "", "llm needs exactly one of \"prompt\" and \"messages\"");
    if (prompt && !json_is_string(prompt))
        return bad(err, ptr, "/prompt", "must be a string");
    if (msgs && check_messages(msgs, ptr, err) != ENG_OK)
        return err ? err->rc : ENG_EINVAL;
    v = json_object_get(in, "system");
    if (v && !json_is_string(v))
        return bad(err, ptr, "/system", "must be a string");
    v = json_object_get(in, "max_tokens");
    if (v && !is_tpl(v) && (!json_is_integer(v) || json_integer_value(v) < 1))
        return bad(err, ptr, "/max_tokens", "must be a positive integer");
    v = json_object_get(in, "temperature");
    if (v && !is_tpl(v) && (!json_is_number(v) || json_number_value(v) < 0 ||
                            json_number_value(v) > 2))
        return bad(err, ptr, "/temperature", "must be a number in 0..2");
    v = json_object_get(in, "json");
    if (v && !json_is_boolean(v))
        return bad(err, ptr, "/json", "must be a boolean");
    v = json_object_get(in, "stream");
    if (v && !json_is_boolean(v))
        return bad(err, ptr, "/stream", "must be a boolean");
    v = json_object_get(in, "json_schema");
    if (v && !json_is_object(v))
        return bad(err, ptr, "/json_schema", "must be a JSON Schema object");
    if (v) {
        char *sptr = eng_xasprintf("%s/input/json_schema", ptr);
        jschema *js;
        eng_rc rc = jschema_compile(v, sptr, &js, err);
        free(sptr);
        if (rc != ENG_OK)
            return rc;
        jschema_free(js);
    }
    v = json_object_get(in, "attempts_per_provider");
    if (v && (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 100))
        return bad(err, ptr, "/attempts_per_provider", "must be an integer in 1..100");
    v = json_object_get(in, "rate_limit");
    if (v && (!json_is_string(v) || !*json_string_value(v)))
        return bad(err, ptr, "/rate_limit", "must be a non-empty string");
    v = json_object_get(in, "base_url");
    if (v) {
        const char *p = json_string_value(json_object_get(in, "provider"));
        if (!json_is_string(v) ||
            (!is_tpl(v) && strncmp(json_string_value(v), "http://", 7) != 0 &&
             strncmp(json_string_value(v), "https://", 8) != 0))
            return bad(err, ptr, "/base_url", "must be an http:// or https:// URL");
        if (!p || strcmp(p, "openai_compatible") != 0)
            return bad(err, ptr, "/base_url", "is only allowed with provider openai_compatible");
    }
    const json_t *fb = json_object_get(in, "fallback");
    if (fb && !json_is_array(fb))
        return bad(err, ptr, "/fallback", "must be an array of {provider, model}");
    size_t i;
    json_array_foreach (fb, i, v) {
        char sub[64];
        snprintf(sub, sizeof sub, "/fallback/%zu", i);
        if (!json_is_object(v))
            return bad(err, ptr, sub, "must be an object with provider and model");
        snprintf(sub, sizeof sub, "/fallback/%zu/provider", i);
        if (check_provider(json_object_get(v, "provider"), ptr, sub, err) != ENG_OK)
            return err ? err->rc : ENG_EINVAL;
        snprintf(sub, sizeof sub, "/fallback/%zu/model", i);
        const json_t *m = json_object_get(v, "model");
        if (!json_is_string(m) || !*json_string_value(m))
            return bad(err, ptr, sub, "must be a non-empty string");
    }
    return ENG_OK;
}

/* ---------------------------------------------------------------------------------- readers -- */

static const char *str_or(const char *s)
{
    return s ? s : "";
}

size_t llm_input_chars(const json_t *in)
{
    size_t n = strlen(str_or(json_string_value(json_object_get(in, "system"))));
    n += strlen(str_or(json_string_value(json_object_get(in, "prompt"))));
    size_t i;
    json_t *m;
    json_array_foreach (json_object_get(in, "messages"), i, m)
        n += strlen(str_or(json_string_value(json_object_get(m, "content"))));
    return n;
}

int64_t llm_input_max_tokens(const json_t *in)
{
    json_int_t mt = json_integer_value(json_object_get(in, "max_tokens"));
    return mt > 0 ? (int64_t)mt : LLM_DEFAULT_MAX_TOKENS;
}

bool llm_input_json_mode(const json_t *in)
{
    return json_is_true(json_object_get(in, "json")) || json_object_get(in, "json_schema");
}

json_t *llm_input_conversation(const json_t *in, const char *extra_system)
{
    json_t *out = json_array();
    const char *sys = json_string_value(json_object_get(in, "system"));
    if (sys || extra_system) {
        char *s = eng_xasprintf("%s%s%s", sys ? sys : "", sys && extra_system ? "\n\n" : "",
                                extra_system ? extra_system : "");
        json_array_append_new(out, json_pack("{s:s, s:s}", "role", "system", "content", s));
        free(s);
    }
    const char *prompt = json_string_value(json_object_get(in, "prompt"));
    if (prompt)
        json_array_append_new(out, json_pack("{s:s, s:s}", "role", "user", "content", prompt));
    size_t i;
    json_t *m;
    json_array_foreach (json_object_get(in, "messages"), i, m)
        json_array_append_new(out, json_pack("{s:O, s:O}", "role", json_object_get(m, "role"),
                                             "content", json_object_get(m, "content")));
    return out;
}

char *llm_input_json_instruction(const json_t *in)
{
    const json_t *schema = json_object_get(in, "json_schema");
    if (!schema)
        return eng_xstrdup("Reply with a single JSON value and nothing else.");
    char *s = json_dumps(schema, JSON_COMPACT | JSON_SORT_KEYS);
    char *out = eng_xasprintf("Reply with a single JSON value and nothing else, matching this "
                              "JSON Schema: %s",
                              s);
    free(s);
    return out;
}
