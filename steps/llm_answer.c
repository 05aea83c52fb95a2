/* steps/llm_answer.c: an LLM answer as the step's output (see llm_answer.h). */
#include "steps/llm_answer.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine/err.h"
#include "engine/jschema.h"

/* The first matching prefix wins, so a name that starts another ("gpt-4o" of "gpt-4o-mini") comes
 * after it. */
bool llm_answer_price(const char *model, double *in, double *out)
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

json_t *llm_answer_output(const llm_answer *a)
{
    json_t *out = json_pack("{s:s, s:s, s:s, s:s, s:{s:I, s:I}, s:I}", "text", a->text, "provider",
                            a->provider, "model", a->model, "finish_reason",
                            *a->finish ? a->finish : "stop", "usage", "input_tokens",
                            (json_int_t)a->in_tokens, "output_tokens", (json_int_t)a->out_tokens,
                            "latency_ms", (json_int_t)a->latency_ms);
    if (a->json)
        json_object_set_new(out, "json", a->json);
    double pin, pout;
    if (strcmp(a->provider, "sandbox") != 0 && llm_answer_price(a->model, &pin, &pout))
        json_object_set_new(out, "cost_usd",
                            json_real(round(((double)a->in_tokens * pin +
                                             (double)a->out_tokens * pout) /
                                            1e6 * 1e8) /
                                      1e8));
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
