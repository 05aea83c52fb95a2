/* steps/inputs.h: what a step that calls out was given, its input after templates, kept for the
 * console and GET /v1/runs/{id}/steps (table step_inputs, sql/step_inputs.sql).
 *
 * The kinds that call a provider or a URL (llm, http, email, sms, whatsapp) record their rendered
 * input when an attempt starts, before anything can fail, so a failed call shows what it was
 * sent. A transform records nothing: its output is what it rendered, and its path through the
 * database stays as it was. The record is kept per step (the latest attempt's) and is not part of
 * the step's outcome: rows of all attempts on one worker connection go in batches, one statement
 * for those that wait while the previous batch is on the wire, no timer (an idle connection sends a
 * batch of one at once). An input over STEPIN_MAX_INPUT bytes of JSON keeps only its size. A lost
 * batch (a broken connection, the process stopping) loses its records, not any step: the next
 * attempt records again.
 *
 * Ownership: nothing is kept from the caller (the row is written out at once). Loop thread of the
 * step's connection only; the batcher lives in the connection's slot (eng_db_slot). */
#pragma once

#include "engine/step.h"

#define STEPIN_MAX_INPUT   (256 * 1024)       /* bytes of a rendered input that are kept */
#define STEPIN_MAX_WAITING (16 * 1024 * 1024) /* bytes of rows waiting for the next batch */

/* Queues the record of ctx's rendered input (eng_step_input) for its step and attempt. */
void stepin_record(const eng_step_ctx *ctx);
