/* steps/llm_sandbox.h: the sandbox provider of the llm step, which answers without leaving the
 * process (no credential configured, or provider "sandbox"), so that a workflow runs end to end on
 * a fresh machine.
 *
 * Deterministic: the answer depends only on the conversation. Without json mode it is a short
 * text naming a digest of the conversation; in json mode a value shaped like json_schema, whose
 * enums take the member the last user message points at ("STOP" is opt_out, "can I book"
 * booking), so every branch of a workflow can be taken without a key. Pure. */
#pragma once

#include <jansson.h>
#include <stdbool.h>

/* The step output (steps/llm_answer.h) answering input in as model. */
json_t *llm_sandbox_answer(const json_t *in, const char *model, bool fallback);
