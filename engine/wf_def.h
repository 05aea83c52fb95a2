/* engine/wf_def.h: workflow definitions: validation, normalization and digest.
 *
 * A definition is {"name", "description"?, "steps": [...], "cancel_on"?: [...], ...}
 * (docs/workflows.md). wf_def_compile refuses anything doubtful before it can be stored and
 * returns the normalized form that the engine stores and SQL reads with jsonb functions, so its
 * shape is fixed: every key is always present (null when absent), except "max_interruptions",
 * present only when set (docs/internals/definition.md says who reads each key):
 *
 *   {"name", "description", "cancel_on": [{"event", "key"}], "triggers": [{"event"}],
 *    "phases": [...],
 *    "input_check": JSON Schema | null (see below),
 *    "search": {name: "{{input.a.b}}"} | null,
 *    "steps": [{"key", "kind", "idx", "needs": [idx...], "dependents": [idx...], "deps": [key...],
 *               "phase", "input", "when", "max_attempts", "backoff_initial_ms", "backoff_max_ms",
 *               "backoff_multiplier", "jitter", "timeout_ms", "delay_ms", "at",
 *               "window": {"start_min", "end_min", "days": [0=sun..6=sat], "tz"} | null,
 *               "concurrency_key", "on_failure": "fail_run" | "continue" | "skip_dependents"}]}
 *
 * "deps" holds the keys of all transitive needs in step order; templates and conditions of a step
 * may reference only those steps. "phases" lists distinct phases in first-appearance order.
 * "input_check" is what a run's input is validated against when the run is enqueued (engine/
 * jschema.h): the definition's "input_schema" when it has one, else a schema requiring, present
 * and not null, every input path that the templates of steps without a condition (none of their
 * needs having one either) read without a default; null when there is nothing to check. */
#pragma once

#include <jansson.h>
#include <stdbool.h>

#include "engine/err.h"

#define WF_DEF_MAX_STEPS     1000
#define WF_DEF_MAX_KEY       64
#define WF_DEF_MAX_NAME      100
#define WF_DEF_MAX_TEXT      4096 /* description, phase, event names, template strings of scalars */
#define WF_DEF_MAX_CANCEL_ON 32
#define WF_DEF_MAX_META      16 /* names in "search"; also the most tags a run may carry */
#define WF_DEF_MAX_META_NAME 64

/* Default retry policy of a step that does not say (max_attempts comes from its kind). */
#define WF_DEF_BACKOFF_INITIAL_MS 1000
#define WF_DEF_BACKOFF_MAX_MS     300000
#define WF_DEF_BACKOFF_MULTIPLIER 2.0
#define WF_DEF_JITTER             0.2

/* Validates doc (borrowed) and returns the normalized definition in *out (new reference). On
 * failure returns ENG_EINVAL (or what a kind's validate returned) with err->field = the JSON
 * pointer of the bad field and a reason; *out is untouched and nothing stays allocated. Step kinds
 * must be registered (eng_step_register) before the call. */
eng_rc wf_def_compile(const json_t *doc, json_t **out, eng_err *err);

/* Whether s (len bytes) may name run metadata: a "search" entry or a tag, [A-Za-z0-9_-]{1,64}. */
bool wf_meta_name_ok(const char *s, size_t len);

/* Lowercase hex SHA-256 (64 characters, caller frees) of doc's canonical form: compact JSON with
 * sorted keys, reals in jansson's 17-digit form. The same JSON value always gives the same digest,
 * whatever its key order or whitespace was. NULL only when doc cannot be encoded. */
char *wf_def_digest(const json_t *doc);

/* Lowercase hex SHA-256 of len bytes (OpenSSL's; caller frees): definition digests, API key
 * digests, request hashes. */
char *wf_sha256_hex(const void *data, size_t len);
