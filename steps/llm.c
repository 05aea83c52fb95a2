/* steps/llm.c: the `llm` step kind.
 *
 *   input  {provider?: "openai" | "anthropic" | "openai_compatible" | "sandbox" (default openai),
 *           model, system?, prompt | messages: [{role, content}], max_tokens?, temperature?,
 *           json?: true, json_schema?: {...}, stream?: bool, base_url? (openai_compatible only),
 *           fallback?: [{provider, model}], attempts_per_provider? (default 2),
 *           rate_limit? (name in rate_limits; default the provider's name)}
 *   output {text, json?, provider, model, finish_reason, usage: {input_tokens, output_tokens},
 *           cost_usd?, latency_ms, fallback?: true}
 *
 * One attempt is a small state machine (llm_state). Before calling, the attempt looks for an
 * answer recorded under (run, step, item) — never the attempt — with the same request hash: a step
 * re-run after a crash returns that answer instead of paying twice. Then it loads the provider's
 * settings (steps/provider.h; no credential = sandbox), takes budget from the shared rate limits
 * (snoozing without spending an attempt when there is none), calls, records the answer and only
 * then reports success.
 *
 * Fallback: attempt n is served by target (n-1) / attempts_per_provider of [primary, fallback...]
 * (the last one keeps the remaining attempts), so the primary gets its retries first and a
 * retryable failure moves on to the fallback; a permanent failure (bad key, unknown model,
 * insufficient_quota) fails the step at once. With json/json_schema a reply that is not JSON (or
 * does not match the schema, checked recursively by engine/jschema) is a retryable failure.
 *
 * finish_reason is normalized to "stop" and "length" (Anthropic end_turn/stop_sequence and
 * max_tokens); other values pass through. */
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/buf.h"
#include "engine/clock.h"
#include "engine/db.h"
#include "engine/httpc.h"
#include "engine/jschema.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "engine/step.h"
#include "engine/wf_def.h"
#include "engine/wf_template.h"
#include "steps/provider.h"
#include "steps/ratelimit.h"
#include "steps/steps.h"

#define LLM_DEFAULT_MAX_TOKENS 1024
#define LLM_DEFAULT_TIMEOUT_MS 120000L
#define LLM_ATTEMPTS_PER_PROVIDER 2
#define LLM_MAX_RESPONSE ((size_t)4 << 20)
#define LLM_SANDBOX (-1) /* target provider "sandbox": never leaves the process */

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

static eng_rc llm_validate(const json_t *step, const char *ptr, eng_err *err)
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

/* ------------------------------------------------------------------------------ the attempt -- */

typedef enum llm_state {
    LLM_LOOKUP, /* asking llm_records for a recorded answer (db query in flight) */
    LLM_CONFIG, /* loading the target provider's settings (prov_load pending) */
    LLM_BUDGET, /* asking the shared rate limits (rl_take pending) */
    LLM_CALL,   /* the provider call is in flight */
    LLM_RECORD, /* writing the answer to llm_records (db query in flight) */
} llm_state;

typedef struct llm_attempt {
    eng_step_ctx *ctx;  /* NULL once cancelled: a pending db callback then only frees */
    llm_state st;
    const json_t *in;   /* rendered input, borrowed from ctx (dead once cancelled) */
    int prov;           /* prov_id, or LLM_SANDBOX */
    const char *model;  /* borrowed from in */
    bool is_fallback;
    bool next_is_other; /* the next attempt goes to another target */
    char *hash;         /* request hash for the record */
    char *rl_name;
    prov_config *cfg;
    prov_load *load;
    rl_take *take;
    eng_http_call *call;
    int64_t est_tokens; /* reserved from the token budget */
    int64_t t0_wall_ms;
    json_t *output;     /* the answer while it is being recorded */
    struct llm_attempt *bnext; /* in its batcher's waiting list */
    bool queued;        /* waiting in a batcher (not yet sent): cancel unlinks it */
} llm_attempt;

static void attempt_free(llm_attempt *a)
{
    free(a->hash);
    free(a->rl_name);
    prov_config_free(a->cfg);
    json_decref(a->output);
    free(a);
}

/* Ends the attempt: detaches from ctx and frees. The outcome is reported by the caller after. */
static eng_step_ctx *attempt_end(llm_attempt *a)
{
    eng_step_ctx *ctx = a->ctx;
    eng_step_set_data(ctx, NULL);
    attempt_free(a);
    return ctx;
}

static void attempt_fail(llm_attempt *a, bool permanent, const char *code, const char *msg,
                         int64_t after_ms)
{
    if (a->st >= LLM_CALL && a->est_tokens > 0) /* give back the unused reservation */
        rl_adjust(eng_step_db(a->ctx), eng_step_tenant_id(a->ctx), a->rl_name, -a->est_tokens);
    if (!permanent && a->next_is_other)
        after_ms = 0; /* the provider's retry-after does not concern the next target */
    eng_step_ctx *ctx = attempt_end(a);
    eng_step_fail(ctx, permanent, code, msg, after_ms);
}

static const char *str_or(const char *s)
{
    return s ? s : "";
}

static size_t text_chars(const json_t *in)
{
    size_t n = strlen(str_or(json_string_value(json_object_get(in, "system"))));
    n += strlen(str_or(json_string_value(json_object_get(in, "prompt"))));
    size_t i;
    json_t *m;
    json_array_foreach (json_object_get(in, "messages"), i, m)
        n += strlen(str_or(json_string_value(json_object_get(m, "content"))));
    return n;
}

static int64_t max_tokens_of(const json_t *in)
{
    json_int_t mt = json_integer_value(json_object_get(in, "max_tokens"));
    return mt > 0 ? (int64_t)mt : LLM_DEFAULT_MAX_TOKENS;
}

static bool json_mode(const json_t *in)
{
    return json_is_true(json_object_get(in, "json")) || json_object_get(in, "json_schema");
}

/* The conversation as [{role, content}] with any system text first (borrowed values). */
static json_t *conversation(const json_t *in, const char *extra_system)
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

static char *json_instruction(const json_t *in)
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

/* ------------------------------------------------------------------------------- requests -- */

static json_t *openai_body(const llm_attempt *a)
{
    const json_t *in = a->in;
    /* OpenAI refuses json_object unless the messages mention JSON */
    char *instr = json_mode(in) ? json_instruction(in) : NULL;
    json_t *body = json_pack("{s:s, s:o}", "model", a->model, "messages", conversation(in, instr));
    free(instr);
    const json_t *mt = json_object_get(in, "max_tokens");
    if (mt) /* local servers only know max_tokens (apis.md §6) */
        json_object_set(body, a->prov == PROV_OPENAI ? "max_completion_tokens" : "max_tokens",
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

static json_t *anthropic_body(const llm_attempt *a)
{
    const json_t *in = a->in;
    char *instr = json_mode(in) ? json_instruction(in) : NULL;
    json_t *conv = conversation(in, instr);
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
    json_t *body = json_pack("{s:s, s:I, s:o}", "model", a->model, "max_tokens",
                             (json_int_t)max_tokens_of(in), "messages", msgs);
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

/* ------------------------------------------------------------------------------ responses -- */

typedef struct llm_reply {
    eng_buf text;
    char finish[32];
    int64_t in_tokens, out_tokens;
    bool done;           /* a complete answer (stream terminator seen, or not streamed) */
    char error[200];     /* an error reported inside a 200 (stream error event) */
} llm_reply;

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
    }
}

static void anthropic_usage(llm_reply *r, const json_t *u, bool delta)
{
    if (!json_is_object(u))
        return;
    if (!delta || json_object_get(u, "input_tokens"))
        r->in_tokens = json_integer_value(json_object_get(u, "input_tokens"));
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

static void parse_plain(int prov, const char *body, llm_reply *r)
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

/* One SSE event out of [*p, end): name and data (data lines joined by \n). false at the end of
 * the input or when the last event is not terminated by a blank line (a cut stream). */
static bool sse_next(const char **p, const char *end, char *name, size_t namelen, eng_buf *data)
{
    name[0] = '\0';
    eng_buf_reset(data);
    bool any = false;
    while (*p < end) {
        const char *nl = memchr(*p, '\n', (size_t)(end - *p));
        if (!nl)
            return false;
        size_t len = (size_t)(nl - *p);
        const char *line = *p;
        if (len > 0 && line[len - 1] == '\r')
            len--;
        *p = nl + 1;
        if (len == 0) {
            if (any)
                return true;
            continue;
        }
        if (line[0] == ':')
            continue;
        const char *colon = memchr(line, ':', len);
        size_t flen = colon ? (size_t)(colon - line) : len;
        const char *val = colon ? colon + 1 : line + len;
        size_t vlen = len - (size_t)(val - line);
        if (vlen > 0 && *val == ' ')
            val++, vlen--;
        if (flen == 5 && memcmp(line, "event", 5) == 0) {
            snprintf(name, namelen, "%.*s", (int)vlen, val);
            any = true;
        } else if (flen == 4 && memcmp(line, "data", 4) == 0) {
            if ((data->len > 0 && eng_buf_append(data, "\n", 1) != ENG_OK) ||
                eng_buf_append(data, val, vlen) != ENG_OK)
                return false;
            any = true;
        }
    }
    return false;
}

static void parse_stream(int prov, const char *body, size_t len, llm_reply *r)
{
    const char *p = body, *end = body + len;
    char name[64];
    eng_buf data;
    eng_buf_init(&data, LLM_MAX_RESPONSE);
    while (!r->done && !*r->error && sse_next(&p, end, name, sizeof name, &data)) {
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

/* Checks a parsed JSON answer against the step's json_schema (the whole schema, recursively);
 * false with the offending pointer and reason in msg. */
static bool reply_matches(const json_t *schema, const json_t *v, char *msg, size_t size)
{
    jschema *js;
    eng_err err;
    eng_rc rc = jschema_compile(schema, "/json_schema", &js, &err);
    if (rc == ENG_OK) {
        rc = jschema_validate(js, v, "", &err);
        jschema_free(js);
        if (rc == ENG_OK)
            return true;
        snprintf(msg, size, "the reply does not match json_schema at \"%.127s\": %.200s", err.field,
                 err.msg);
    } else {
        snprintf(msg, size, "json_schema is not usable: %.127s: %.200s", err.field, err.msg);
    }
    return false;
}

/* The JSON inside a reply (whitespace and a ``` fence tolerated), or NULL. */
static json_t *reply_json(const char *text)
{
    while (isspace((unsigned char)*text))
        text++;
    size_t n = strlen(text);
    if (strncmp(text, "```", 3) == 0) {
        const char *nl = strchr(text, '\n');
        const char *close = nl ? strstr(nl, "```") : NULL;
        if (!close)
            return NULL;
        text = nl + 1;
        n = (size_t)(close - text);
    }
    return json_loadb(text, n, JSON_DECODE_ANY, NULL);
}

/* USD per million tokens (input, output), for the models we can price; else no cost_usd. */
static bool price_of(const char *model, double *in, double *out)
{
    static const struct {
        const char *prefix;
        double in, out;
    } prices[] = {
        {"gpt-4o-mini", 0.15, 0.60},      {"gpt-4o", 2.50, 10.00},
        {"gpt-4.1-mini", 0.40, 1.60},     {"gpt-4.1-nano", 0.10, 0.40},
        {"gpt-4.1", 2.00, 8.00},          {"claude-sonnet-4", 3.00, 15.00},
        {"claude-3-5-haiku", 0.80, 4.00}, {"claude-haiku-4", 1.00, 5.00},
        {"claude-opus-4", 15.00, 75.00},
    };
    for (size_t i = 0; i < ENG_ARRAY_LEN(prices); i++) {
        if (strncmp(model, prices[i].prefix, strlen(prices[i].prefix)) == 0) {
            *in = prices[i].in;
            *out = prices[i].out;
            return true;
        }
    }
    return false;
}

static json_t *make_output(const llm_attempt *a, const char *text, json_t *parsed,
                           const char *finish, int64_t in_tok, int64_t out_tok, int64_t latency)
{
    const char *pname = a->prov == LLM_SANDBOX ? "sandbox" : prov_name((prov_id)a->prov);
    json_t *out = json_pack("{s:s, s:s, s:s, s:s, s:{s:I, s:I}, s:I}", "text", text, "provider",
                            pname, "model", a->model, "finish_reason", *finish ? finish : "stop",
                            "usage", "input_tokens", (json_int_t)in_tok, "output_tokens",
                            (json_int_t)out_tok, "latency_ms", (json_int_t)latency);
    if (parsed)
        json_object_set_new(out, "json", parsed);
    double pin, pout;
    if (a->prov != LLM_SANDBOX && price_of(a->model, &pin, &pout))
        json_object_set_new(out, "cost_usd",
                            json_real(round(((double)in_tok * pin + (double)out_tok * pout) /
                                            1e6 * 1e8) / 1e8));
    if (a->is_fallback)
        json_object_set_new(out, "fallback", json_true());
    return out;
}

/* ------------------------------------------------------------------------------- sandbox -- */

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

static json_t *sandbox_answer(const llm_attempt *a)
{
    const json_t *in = a->in;
    json_t *conv = conversation(in, NULL);
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
    if (json_mode(in)) {
        const json_t *schema = json_object_get(in, "json_schema");
        parsed = schema ? schema_sample(schema, digest, last ? last : "", 0)
                        : json_pack("{s:b, s:s}", "sandbox", 1, "digest", digest);
        text = json_dumps(parsed, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    } else {
        text = eng_xasprintf("[sandbox %s] %.200s", digest, last);
    }
    int64_t in_tok = (int64_t)(text_chars(in) + 3) / 4;
    int64_t out_tok = (int64_t)(strlen(text) + 3) / 4;
    json_t *out = make_output(a, text, parsed, "stop", in_tok, out_tok, 0);
    free(text);
    free(digest);
    free(canon);
    json_decref(conv);
    return out;
}


/* ------------------------------------------------------------------------------ batching -- */
/* Lookups and records of all attempts on one worker connection share round trips: while one
 * batch query is in flight, new requests wait and go together in the next one (one commit for
 * many records). No timer is involved: an idle connection sends a batch of one at once. */

enum { BQ_LOOKUP = 0, BQ_RECORD = 1 };

typedef struct llm_batcher {
    struct eng_db *db;
    llm_attempt *head[2], *tail[2]; /* waiting, per queue */
    bool busy[2];                   /* a batch of that queue is in flight */
    struct llm_batcher *next;
} llm_batcher;

typedef struct llm_batch {
    llm_batcher *b;
    int which;
    size_t n;
    llm_attempt **items;
} llm_batch;

static pthread_mutex_t batchers_mu = PTHREAD_MUTEX_INITIALIZER;
static llm_batcher *batchers; /* one per connection ever used; each only touched by its loop */

static llm_batcher *batcher_for(struct eng_db *db)
{
    pthread_mutex_lock(&batchers_mu);
    llm_batcher *b = batchers;
    while (b && b->db != db)
        b = b->next;
    if (!b) {
        b = eng_xcalloc(1, sizeof *b);
        b->db = db;
        b->next = batchers;
        batchers = b;
    }
    pthread_mutex_unlock(&batchers_mu);
    /* a connection freed with our batch in flight, and a new one at the same address */
    for (int q = 0; q < 2; q++)
        if (b->busy[q] && eng_db_pending(db) == 0)
            b->busy[q] = false;
    return b;
}

static void lookup_result(llm_attempt *a, const eng_err *err, json_t *out);
static void record_result(llm_attempt *a, const eng_err *err);
static void batch_flush(llm_batcher *b, int which);

static void batch_done(void *arg, const eng_err *err, const PGresult *res)
{
    llm_batch *bt = arg;
    llm_batcher *b = bt->b;
    b->busy[bt->which] = false;
    json_t **found = NULL;
    if (bt->which == BQ_LOOKUP) {
        found = eng_xcalloc(bt->n, sizeof *found);
        for (int r = 0; !err && res && r < PQntuples(res); r++) {
            long i = strtol(PQgetvalue(res, r, 0), NULL, 10);
            if (i >= 0 && (size_t)i < bt->n && !found[i])
                found[i] = json_loads(PQgetvalue(res, r, 1), 0, NULL);
        }
    }
    for (size_t i = 0; i < bt->n; i++) {
        llm_attempt *a = bt->items[i];
        if (bt->which == BQ_LOOKUP)
            lookup_result(a, err, found[i]);
        else
            record_result(a, err);
    }
    free(found);
    free(bt->items);
    int which = bt->which;
    free(bt);
    if (b->head[which] && !b->busy[which])
        batch_flush(b, which);
}

static int buf_sink(const char *data, size_t n, void *buf)
{
    return eng_buf_append(buf, data, n) == ENG_OK ? 0 : -1;
}

static bool buf_json(eng_buf *buf, const json_t *v)
{
    return json_dump_callback(v, buf_sink, buf, JSON_COMPACT | JSON_ENCODE_ANY) == 0;
}

/* The batch's rows as the JSON array both SQL functions read (each takes the keys it needs),
 * written straight into one buffer: thousands of rows would otherwise be built as JSON objects
 * only to be serialized once. */
static char *batch_rows(llm_attempt **items, size_t n, int which)
{
    eng_buf rows;
    eng_buf_init(&rows, 0);
    bool ok = eng_buf_append(&rows, "[", 1) == ENG_OK;
    for (size_t i = 0; i < n && ok; i++) {
        const llm_attempt *a = items[i];
        json_t *key = json_string(eng_step_key(a->ctx));
        ok = eng_buf_appendf(&rows, "%s{\"i\":%zu,\"tenant\":%lld,\"run\":%lld,\"item\":\"\","
                                    "\"hash\":\"%s\",\"step\":",
                             i ? "," : "", i, (long long)eng_step_tenant_id(a->ctx),
                             (long long)eng_step_run_id(a->ctx), a->hash) == ENG_OK &&
             buf_json(&rows, key);
        json_decref(key);
        if (ok && which == BQ_RECORD)
            ok = eng_buf_append(&rows, ",\"output\":", 10) == ENG_OK && buf_json(&rows, a->output);
        ok = ok && eng_buf_append(&rows, "}", 1) == ENG_OK;
    }
    if (!ok || eng_buf_append(&rows, "]", 1) != ENG_OK) {
        log_error("out of memory", LOG_S("where", "llm batch rows"));
        abort();
    }
    return rows.ptr; /* the buffer's allocation, NUL-terminated */
}

static void batch_flush(llm_batcher *b, int which)
{
    llm_batch *bt = eng_xcalloc(1, sizeof *bt);
    bt->b = b;
    bt->which = which;
    for (llm_attempt *a = b->head[which]; a; a = a->bnext)
        bt->n++;
    bt->items = eng_xcalloc(bt->n, sizeof *bt->items);
    size_t i = 0;
    for (llm_attempt *a = b->head[which]; a; a = a->bnext, i++) {
        a->queued = false;
        bt->items[i] = a;
    }
    b->head[which] = b->tail[which] = NULL;
    b->busy[which] = true;
    char *s = batch_rows(bt->items, bt->n, which);
    const char *params[] = {s};
    eng_db_query(b->db,
                 which == BQ_LOOKUP ? "SELECT i, output FROM flowd_llm_lookup_many($1::jsonb)"
                                    : "SELECT flowd_llm_record_many($1::jsonb)",
                 1, params, batch_done, bt);
    free(s);
}

static void batch_enqueue(llm_attempt *a, int which)
{
    llm_batcher *b = batcher_for(eng_step_db(a->ctx));
    a->bnext = NULL;
    a->queued = true;
    if (b->tail[which])
        b->tail[which]->bnext = a;
    else
        b->head[which] = a;
    b->tail[which] = a;
    if (!b->busy[which])
        batch_flush(b, which);
}

/* Takes a cancelled attempt out of its waiting list (it was never sent). */
static void batch_unlink(llm_attempt *a, struct eng_db *db)
{
    llm_batcher *b = batcher_for(db);
    for (int q = 0; q < 2; q++) {
        llm_attempt *prev = NULL;
        for (llm_attempt *x = b->head[q]; x; prev = x, x = x->bnext) {
            if (x != a)
                continue;
            if (prev)
                prev->bnext = x->bnext;
            else
                b->head[q] = x->bnext;
            if (b->tail[q] == x)
                b->tail[q] = prev;
            return;
        }
    }
}

/* ------------------------------------------------------------------------------ the driver -- */

static void record_result(llm_attempt *a, const eng_err *err)
{
    if (!a->ctx) { /* cancelled while recording: the record stays for the next attempt */
        attempt_free(a);
        return;
    }
    if (err) {
        attempt_fail(a, false, "db_error", "could not record the answer", 0);
        return;
    }
    json_t *out = a->output;
    a->output = NULL;
    eng_step_ctx *ctx = attempt_end(a);
    eng_step_succeed(ctx, out);
}

/* Records out (stolen) under the attempt's key, then succeeds with it. */
static void finish_with(llm_attempt *a, json_t *out)
{
    a->st = LLM_RECORD;
    a->output = out;
    batch_enqueue(a, BQ_RECORD);
}

static void paid_usage_done(void *arg, const eng_err *err, const PGresult *res)
{
    (void)arg;
    (void)res;
    if (err)
        log_warn("could not record a paid llm attempt as usage", LOG_S("error", err->msg));
}

/* The provider answered (and charged for) an attempt that fails anyway (a reply that is not the
 * JSON asked for): recorded as usage (ok false) and counted, like an answer that succeeds. */
static void paid_failure(const llm_attempt *a, const llm_reply *r)
{
    const char *pname = prov_name((prov_id)a->prov);
    double pin, pout;
    double cost = price_of(a->model, &pin, &pout)
                      ? ((double)r->in_tokens * pin + (double)r->out_tokens * pout) / 1e6
                      : 0;
    eng_metrics_llm_usage(pname, a->model, r->in_tokens, r->out_tokens, 0, cost);
    char tenant[24], run[24], in[24], out[24];
    snprintf(tenant, sizeof tenant, "%lld", (long long)eng_step_tenant_id(a->ctx));
    snprintf(run, sizeof run, "%lld", (long long)eng_step_run_id(a->ctx));
    snprintf(in, sizeof in, "%lld", (long long)r->in_tokens);
    snprintf(out, sizeof out, "%lld", (long long)r->out_tokens);
    const char *params[] = {tenant, run, eng_step_key(a->ctx), pname, a->model, in, out};
    eng_db_query(eng_step_db(a->ctx),
                 "SELECT flowd_usage_add(jsonb_build_array(jsonb_build_object('tenant', $1::bigint,"
                 " 'run', $2::bigint, 'step', $3::text, 'kind', 'llm', 'provider', $4::text,"
                 " 'model', $5::text, 'input_tokens', $6::bigint, 'output_tokens', $7::bigint,"
                 " 'ok', false)))",
                 7, params, paid_usage_done, NULL);
}

static void call_done(void *arg, const eng_err *err, const eng_http_response *resp,
                      eng_http_call *call)
{
    llm_attempt *a = arg;
    a->call = NULL;
    prov_outcome o;
    prov_id pid = (prov_id)a->prov;
    if (prov_classify(a->cfg, pid, false, err, resp, call, eng_clock_wall_ms(), &o) != PROV_OK) {
        attempt_fail(a, o.cls == PROV_PERMANENT, o.code, o.msg, o.retry_after_ms);
        return;
    }
    llm_reply r = {0};
    eng_buf_init(&r.text, LLM_MAX_RESPONSE);
    const char *ct = eng_http_call_header(call, "content-type");
    if (ct && strstr(ct, "text/event-stream"))
        parse_stream(a->prov, resp->body, resp->body_len, &r);
    else
        parse_plain(a->prov, resp->body, &r);
    if (*r.error || !r.done) {
        char *msg = prov_redact(a->cfg, *r.error ? r.error : "stream ended before the answer did");
        eng_buf_deinit(&r.text);
        attempt_fail(a, false, *r.error ? "provider_error" : "incomplete_answer", msg, 0);
        free(msg);
        return;
    }
    const char *text = r.text.ptr ? r.text.ptr : "";
    json_t *parsed = NULL;
    if (json_mode(a->in)) {
        parsed = reply_json(text);
        const json_t *schema = json_object_get(a->in, "json_schema");
        char why[512] = "the reply is not valid JSON";
        if (!parsed || (schema && !reply_matches(schema, parsed, why, sizeof why))) {
            json_decref(parsed);
            eng_buf_deinit(&r.text);
            paid_failure(a, &r);
            attempt_fail(a, false, "invalid_json", why, 0);
            return;
        }
    }
    int64_t latency = eng_clock_wall_ms() - a->t0_wall_ms;
    json_t *out = make_output(a, text, parsed, r.finish, r.in_tokens, r.out_tokens, latency);
    eng_buf_deinit(&r.text);
    eng_metrics_llm_usage(prov_name(pid), a->model, r.in_tokens, r.out_tokens, 0,
                          json_number_value(json_object_get(out, "cost_usd")));
    rl_adjust(eng_step_db(a->ctx), eng_step_tenant_id(a->ctx), a->rl_name,
              r.in_tokens + r.out_tokens - a->est_tokens);
    finish_with(a, out);
}

static void start_call(llm_attempt *a)
{
    a->st = LLM_CALL;
    if (a->prov == LLM_SANDBOX || prov_config_sandbox(a->cfg)) {
        a->prov = LLM_SANDBOX;
        finish_with(a, sandbox_answer(a));
        return;
    }
    json_t *body;
    char *url;
    const char *hdrs[5] = {"Content-Type: application/json", NULL, NULL, NULL, NULL};
    char *auth = NULL;
    const char *key = prov_config_get(a->cfg, "api_key");
    if (a->prov == PROV_ANTHROPIC) {
        body = anthropic_body(a);
        url = prov_config_url(a->cfg, "/v1/messages");
        auth = eng_xasprintf("x-api-key: %s", key ? key : "");
        hdrs[1] = auth;
        hdrs[2] = "anthropic-version: 2023-06-01";
    } else {
        body = openai_body(a);
        const char *own = json_string_value(json_object_get(a->in, "base_url"));
        /* a base URL from the definition never receives a configured key */
        url = own ? eng_xasprintf("%s/chat/completions", own)
                  : prov_config_url(a->cfg, "/chat/completions");
        if (key && !own) {
            auth = eng_xasprintf("Authorization: Bearer %s", key);
            hdrs[1] = auth;
        }
    }
    char *payload = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    int64_t budget = eng_step_timeout_ms(a->ctx);
    eng_http_request req = {.method = "POST", .url = url, .headers = hdrs, .body = payload,
                            .body_len = strlen(payload),
                            .timeout_ms = budget > 0 ? (long)budget : LLM_DEFAULT_TIMEOUT_MS,
                            .max_response_bytes = LLM_MAX_RESPONSE,
                            .public_only = prov_public_only(a->cfg)};
    a->t0_wall_ms = eng_clock_wall_ms();
    a->call = eng_httpc_start(eng_step_httpc(a->ctx), &req, call_done, a);
    free(payload);
    free(url);
    free(auth);
}

static void budget_done(void *arg, const eng_err *err, int64_t wait_ms)
{
    llm_attempt *a = arg;
    a->take = NULL;
    if (err) {
        attempt_fail(a, false, "db_error", "could not check the rate limit", 0);
        return;
    }
    if (wait_ms > 0) {
        eng_step_ctx *ctx = attempt_end(a);
        eng_step_snooze(ctx, rl_wake_at(eng_step_now_ms(ctx), wait_ms));
        return;
    }
    start_call(a);
}

static void config_done(void *arg, const eng_err *err, prov_config *cfg)
{
    llm_attempt *a = arg;
    a->load = NULL;
    if (err) {
        attempt_fail(a, false, "db_error", "could not load the provider settings", 0);
        return;
    }
    a->cfg = cfg;
    a->st = LLM_BUDGET;
    a->est_tokens = (int64_t)(text_chars(a->in) + 3) / 4 + max_tokens_of(a->in);
    /* an unlimited name runs budget_done (and maybe ends the attempt) before this returns */
    rl_take *t = rl_take_start(eng_step_db(a->ctx), eng_step_tenant_id(a->ctx), a->rl_name, 1,
                               a->est_tokens, budget_done, a);
    if (t)
        a->take = t;
}

static void lookup_result(llm_attempt *a, const eng_err *err, json_t *out)
{
    if (!a->ctx) {
        json_decref(out);
        attempt_free(a);
        return;
    }
    if (err) {
        json_decref(out);
        attempt_fail(a, false, "db_error", "could not look up a recorded answer", 0);
        return;
    }
    if (out) {
        eng_step_ctx *ctx = attempt_end(a);
        log_info("llm answer replayed from its record",
                 LOG_I("run", (long long)eng_step_run_id(ctx)), LOG_S("step", eng_step_key(ctx)));
        eng_step_succeed(ctx, out);
        return;
    }
    a->st = LLM_CONFIG;
    if (a->prov == LLM_SANDBOX) {
        start_call(a);
        return;
    }
    /* a cache hit runs config_done (and maybe ends the attempt) before this returns */
    prov_load *l = prov_config_load(a->ctx, (prov_id)a->prov, config_done, a);
    if (l)
        a->load = l;
}

/* The provider and model serving this attempt (see the header comment). */
static bool pick_target(llm_attempt *a, const json_t *in, int attempt)
{
    const json_t *fb = json_object_get(in, "fallback");
    size_t ntargets = 1 + json_array_size(fb);
    json_int_t per = json_integer_value(json_object_get(in, "attempts_per_provider"));
    if (per < 1)
        per = LLM_ATTEMPTS_PER_PROVIDER;
    size_t idx = (size_t)((attempt - 1) / per);
    if (idx >= ntargets)
        idx = ntargets - 1;
    a->next_is_other = idx + 1 < ntargets && (attempt % per) == 0;
    a->is_fallback = idx > 0;
    const json_t *t = idx == 0 ? in : json_array_get(fb, idx - 1);
    const char *p = json_string_value(json_object_get(t, "provider"));
    a->model = json_string_value(json_object_get(t, "model"));
    if (!p)
        p = "openai";
    prov_id id;
    if (strcmp(p, "sandbox") == 0)
        a->prov = LLM_SANDBOX;
    else if (prov_from_name(p, &id) && id <= PROV_OPENAI_COMPATIBLE)
        a->prov = (int)id;
    else
        return false;
    const char *rl = json_string_value(json_object_get(in, "rate_limit"));
    a->rl_name = eng_xstrdup(rl && idx == 0 ? rl : p);
    return a->model != NULL;
}

static void llm_start(eng_step_ctx *ctx)
{
    const json_t *in = eng_step_input(ctx);
    json_t *step = json_pack("{s:O}", "input", in);
    eng_err verr;
    eng_rc rc = llm_validate(step, "", &verr);
    json_decref(step);
    if (rc != ENG_OK) {
        char *msg = eng_xasprintf("%s: %s", verr.field, verr.msg);
        eng_step_fail(ctx, true, "invalid_input", msg, 0);
        free(msg);
        return;
    }
    llm_attempt *a = eng_xcalloc(1, sizeof *a);
    a->ctx = ctx;
    a->in = in;
    if (!pick_target(a, in, eng_step_attempt(ctx))) {
        attempt_free(a);
        eng_step_fail(ctx, true, "invalid_input", "unknown llm provider", 0);
        return;
    }
    /* the hash covers the whole request; a changed input is a new request, not a replay */
    char *canon = json_dumps(in, JSON_COMPACT | JSON_SORT_KEYS);
    a->hash = wf_sha256_hex(canon, strlen(canon));
    free(canon);
    eng_step_set_data(ctx, a);
    /* A first attempt cannot have a recorded answer: only a step that ran before (its report
     * lost to a crash, its lease expired) is claimed again with attempt > 1. */
    if (eng_step_attempt(ctx) == 1) {
        lookup_result(a, NULL, NULL);
        return;
    }
    a->st = LLM_LOOKUP;
    batch_enqueue(a, BQ_LOOKUP);
}

static void llm_cancel(eng_step_ctx *ctx)
{
    llm_attempt *a = eng_step_data(ctx);
    if (!a)
        return;
    eng_step_set_data(ctx, NULL);
    a->ctx = NULL;
    a->in = NULL;
    switch (a->st) {
    case LLM_LOOKUP:
    case LLM_RECORD:
        if (!a->queued)
            return; /* its batch is on the wire: batch_done sees ctx == NULL and frees */
        batch_unlink(a, eng_step_db(ctx));
        break;
    case LLM_CONFIG:
        prov_load_cancel(a->load);
        break;
    case LLM_BUDGET:
        rl_take_cancel(a->take);
        break;
    case LLM_CALL:
        eng_httpc_cancel(a->call);
        break;
    }
    attempt_free(a);
}

static const eng_step_kind llm_kind = {
    .name = "llm",
    .default_max_attempts = 4,
    .validate = llm_validate,
    .start = llm_start,
    .cancel = llm_cancel,
};

void step_llm_register(void)
{
    eng_step_register(&llm_kind);
}
