/* steps/llm_answer.c: an LLM answer as the step's output (see llm_answer.h). */
#include "steps/llm_answer.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine/err.h"
#include "engine/jschema.h"

/* The first matching prefix wins, so a name that starts another ("gpt-4o" of "gpt-4o-mini") comes
 * after it. The defaults of the price table (migrations/0033_usage.sql). */
bool llm_answer_price(const char *model, double *in, double *out, double *cached)
{
    static const struct {
        const char *prefix;
        double in, out, cached;
    } prices[] = {
        {"gpt-4o-mini", 0.15, 0.60, 0.075},     {"gpt-4o", 2.50, 10.00, 1.25},
        {"gpt-4.1-mini", 0.40, 1.60, 0.10},     {"gpt-4.1-nano", 0.10, 0.40, 0.025},
        {"gpt-4.1", 2.00, 8.00, 0.50},          {"claude-sonnet-4", 3.00, 15.00, 0.30},
        {"claude-3-5-haiku", 0.80, 4.00, 0.08}, {"claude-haiku-4", 1.00, 5.00, 0.10},
        {"claude-opus-4", 15.00, 75.00, 1.50},
    };
    for (size_t i = 0; i < ENG_ARRAY_LEN(prices); i++) {
        if (strncmp(model, prices[i].prefix, strlen(prices[i].prefix)) == 0) {
            *in = prices[i].in;
            *out = prices[i].out;
            *cached = prices[i].cached;
            return true;
        }
    }
    return false;
}

double llm_answer_cost(const char *model, int64_t in_tokens, int64_t out_tokens,
                       int64_t cached_tokens)
{
    double pin, pout, pcached;
    if (!llm_answer_price(model, &pin, &pout, &pcached))
        return -1;
    if (cached_tokens > in_tokens)
        cached_tokens = in_tokens;
    double usd = ((double)(in_tokens - cached_tokens) * pin + (double)cached_tokens * pcached +
                  (double)out_tokens * pout) /
                 1e6;
    return round(usd * 1e8) / 1e8;
}

json_t *llm_answer_output(const llm_answer *a)
{
    json_t *out = json_pack("{s:s, s:s, s:s, s:s, s:{s:I, s:I}, s:I}", "text", a->text, "provider",
                            a->provider, "model", a->model, "finish_reason",
                            *a->finish ? a->finish : "stop", "usage", "input_tokens",
                            (json_int_t)a->in_tokens, "output_tokens", (json_int_t)a->out_tokens,
                            "latency_ms", (json_int_t)a->latency_ms);
    if (a->cached_tokens > 0)
        json_object_set_new(json_object_get(out, "usage"), "cached_input_tokens",
                            json_integer((json_int_t)a->cached_tokens));
    if (a->json)
        json_object_set_new(out, "json", a->json);
    double cost = strcmp(a->provider, "sandbox") != 0
                      ? llm_answer_cost(a->model, a->in_tokens, a->out_tokens, a->cached_tokens)
                      : -1;
    if (cost >= 0)
        json_object_set_new(out, "cost_usd", json_real(cost));
    if (a->fallback)
        json_object_set_new(out, "fallback", json_true());
    return out;
}

bool llm_answer_matches(const json_t *schema, const json_t *v, char *msg, size_t size)
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

json_t *llm_answer_json(const char *text)
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
