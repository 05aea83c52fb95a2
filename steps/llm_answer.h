/* steps/llm_answer.h: an LLM answer as the llm step's output, and the checks of a JSON answer.
 *
 *   output {text, json?, provider, model, finish_reason, usage: {input_tokens, output_tokens,
 *           cached_input_tokens? (when the provider read some from its cache)}, cost_usd?,
 *           latency_ms, fallback?: true}
 *
 * cost_usd is given for the models whose prices we know (never for the sandbox). Pure functions. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct llm_answer {
    const char *provider; /* the provider's name, or "sandbox" */
    const char *model;
    bool fallback;        /* served by a fallback target */
    const char *text;
    json_t *json;         /* the parsed answer in json mode (stolen), else NULL */
    const char *finish;   /* "" reads as "stop" */
    int64_t in_tokens, out_tokens, latency_ms;
    int64_t cached_tokens; /* of in_tokens, read from the provider's cache */
} llm_answer;

/* The step output for a (a->json is stolen). */
json_t *llm_answer_output(const llm_answer *a);

/* USD per million tokens (input, output, cached input) of model; false when its price is
 * unknown. */
bool llm_answer_price(const char *model, double *in, double *out, double *cached);
/* The list price in USD of a call of model (cached_tokens are part of in_tokens), rounded to
 * 1e-8; negative when its price is unknown. */
double llm_answer_cost(const char *model, int64_t in_tokens, int64_t out_tokens,
                       int64_t cached_tokens);

/* The JSON inside a reply's text (whitespace and a ``` fence tolerated), or NULL. */
json_t *llm_answer_json(const char *text);

/* Whether v matches schema (the whole schema, recursively); when not, msg says where and why. */
bool llm_answer_matches(const json_t *schema, const json_t *v, char *msg, size_t size);
