/* steps/llm_wire.h: the two LLM wire formats, OpenAI Chat Completions (also spoken by local
 * OpenAI-compatible servers) and Anthropic Messages: the request body made from the step's input,
 * and the answer read out of a 200 response, plain or streamed (Server-Sent Events). The tests in
 * tests/unit/test_llm_wire.c hold recorded examples of each.
 *
 * Pure functions: no I/O, no clock, no global state. The input is borrowed; bodies are new. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/buf.h"
#include "steps/provider.h"

#define LLM_MAX_RESPONSE ((size_t)4 << 20) /* bytes of a response, and of the answer's text */

/* What a response said. */
typedef struct llm_reply {
    eng_buf text;      /* the answer's text, capped at LLM_MAX_RESPONSE */
    char finish[32];   /* "stop", "length" (Anthropic's end_turn/stop_sequence and max_tokens
                          normalized) or the provider's own word; "" when it gave none */
    int64_t in_tokens, out_tokens; /* 0 when not reported; in_tokens counts every input token,
                                      cached or written to the cache included */
    int64_t cached_tokens; /* of in_tokens, read from the provider's prompt cache (OpenAI
                              prompt_tokens_details.cached_tokens, Anthropic
                              cache_read_input_tokens); 0 when not reported */
    bool done;         /* a complete answer (stream terminator seen, or not streamed) */
    char error[200];   /* what is wrong with a 200: a stream error event, an answer with no
                          message, an answer too long; "" when nothing */
} llm_reply;

void llm_reply_init(llm_reply *r);
void llm_reply_deinit(llm_reply *r);

/* The Chat Completions body for input in and model. prov is PROV_OPENAI or
 * PROV_OPENAI_COMPATIBLE (local servers know max_tokens, OpenAI max_completion_tokens). */
json_t *llm_wire_openai_body(prov_id prov, const json_t *in, const char *model);
/* The Messages body: system and developer texts go to the top-level system field; temperature is
 * capped at 1. */
json_t *llm_wire_anthropic_body(const json_t *in, const char *model);

/* Reads a 200 response of prov into r (initialized by the caller): an event stream when stream is
 * true (the content type said text/event-stream), else one JSON object. body[len] must be NUL. A
 * local server's stream may end without [DONE] once it gave a finish reason. */
void llm_wire_parse(prov_id prov, bool stream, const char *body, size_t len, llm_reply *r);
