/* steps/llm_input.h: the llm step's input (see steps/llm.c for its fields): its validation, and
 * what the rest of the kind reads out of it. Pure functions of the JSON; all borrowed. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

#define LLM_DEFAULT_MAX_TOKENS 1024

/* The kind's validate hook: step is {input: {...}}, ptr the step's JSON pointer; errors name the
 * field under ptr/input. Templated values ("{{...}}") pass where a rendered value is checked at
 * start. */
eng_rc llm_input_validate(const json_t *step, const char *ptr, eng_err *err);

/* max_tokens, or LLM_DEFAULT_MAX_TOKENS. */
int64_t llm_input_max_tokens(const json_t *in);
/* Whether the answer must be JSON (json: true or a json_schema). */
bool llm_input_json_mode(const json_t *in);
/* Characters of all texts (system, prompt, messages): the base of the token estimates. */
size_t llm_input_chars(const json_t *in);
/* The conversation as a new [{role, content}] array, with system text first: the input's system
 * and extra_system (may be NULL) joined by a blank line, then prompt or the messages. */
json_t *llm_input_conversation(const json_t *in, const char *extra_system);
/* The instruction that asks for JSON (naming json_schema when there is one); caller frees. */
char *llm_input_json_instruction(const json_t *in);
