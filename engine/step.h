/* engine/step.h: the step-kind interface and registry.
 *
 * The engine knows step kinds only through this registry. A kind validates its step's fields when a
 * definition is registered, and runs one attempt of a claimed step: `start` is called on the worker
 * loop thread with a context that stays valid until the kind reports exactly one outcome through
 * eng_step_succeed / eng_step_fail / eng_step_snooze (directly inside start, or later from a loop
 * callback). `cancel` (optional) is called instead when the attempt must stop early (the run was
 * cancelled, the lease was lost, shutdown); after it the kind must not touch the context again and
 * must not report an outcome. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/err.h"

struct ev_loop;
struct eng_db;
struct eng_httpc;
typedef struct eng_step_ctx eng_step_ctx; /* opaque, owned by the worker */

typedef struct eng_step_kind {
    const char *name;         /* as written in definitions: "transform", "llm", ... */
    int default_max_attempts; /* used when a step has no retry.max_attempts */
    /* Checks the step object's kind-specific parts (mostly its "input") when a definition is
     * registered. step is the whole step object; ptr its JSON pointer ("/steps/3"). NULL: accept. */
    eng_rc (*validate)(const json_t *step, const char *ptr, eng_err *err);
    /* Runs one attempt; must eventually report one outcome (see above). */
    void (*start)(eng_step_ctx *ctx);
    /* Stops an attempt in flight; NULL when start always reports before returning. */
    void (*cancel)(eng_step_ctx *ctx);
    /* The engine does not render this kind's input: the kind renders parts of it itself with
     * eng_step_template_ctx (map renders its child inputs once per item). */
    bool raw_input;
    /* An attempt has no effect outside the database and start always reports its outcome before
     * returning (transform): the claim only locks such a step, and the worker computes it and
     * writes its outcome in the claim's own transaction, before it commits (a transaction that
     * does not commit leaves the step ready, with nothing done twice). */
    bool pure;
} eng_step_kind;

/* Registers a kind (the struct must outlive the process; registration is not thread-safe and
 * happens at start-up, before any worker runs). A second kind with the same name replaces the first. */
void eng_step_register(const eng_step_kind *kind);
/* The kind named name, or NULL. */
const eng_step_kind *eng_step_kind_find(const char *name);
/* The names of the pure kinds as a PostgreSQL text[] literal ("{transform}"), a new string. */
char *eng_step_pure_kinds(void);
/* Registers the engine's built-in kinds (transform, delay, wait_event, map). Idempotent. */
void eng_step_register_builtins(void);

/* ---- what a running attempt sees ---- */
int64_t eng_step_id(const eng_step_ctx *ctx);
int64_t eng_step_run_id(const eng_step_ctx *ctx);
int64_t eng_step_tenant_id(const eng_step_ctx *ctx);
const char *eng_step_key(const eng_step_ctx *ctx);
int eng_step_attempt(const eng_step_ctx *ctx);     /* 1 for the first attempt */
const json_t *eng_step_input(const eng_step_ctx *ctx); /* rendered input (raw for raw_input kinds), borrowed */
/* The template context {"input", "steps", "run"} the input was rendered against, borrowed. */
const json_t *eng_step_template_ctx(const eng_step_ctx *ctx);
const char *eng_step_workflow(const eng_step_ctx *ctx); /* name of the run's workflow */
int64_t eng_step_ready_at_ms(const eng_step_ctx *ctx); /* when the step became ready (engine clock) */
int64_t eng_step_now_ms(const eng_step_ctx *ctx);      /* engine clock (test offset applied) */
int64_t eng_step_timeout_ms(const eng_step_ctx *ctx);  /* this attempt's budget, 0 = none */
struct ev_loop *eng_step_loop(const eng_step_ctx *ctx);
/* The worker's PostgreSQL connection (engine/db.h) and outbound HTTP client (engine/httpc.h), both
 * on this loop. Queries queue behind the worker's own; never hold a transaction open across calls. */
struct eng_db *eng_step_db(const eng_step_ctx *ctx);
struct eng_httpc *eng_step_httpc(const eng_step_ctx *ctx);
/* Per-kind state for an attempt in flight (e.g. the HTTP request to cancel). */
void eng_step_set_data(eng_step_ctx *ctx, void *data);
void *eng_step_data(const eng_step_ctx *ctx);

/* ---- outcomes: exactly one per attempt ---- */
/* Succeeds with output (stolen; NULL means {}). */
void eng_step_succeed(eng_step_ctx *ctx, json_t *output);
/* Fails this attempt. Permanent failures fail the step at once; others retry with the step's
 * backoff, no sooner than retry_after_ms from now (0: backoff only). code is a short machine name
 * ("http_503", "timeout"), msg a human one; neither may contain secrets. */
void eng_step_fail(eng_step_ctx *ctx, bool permanent, const char *code, const char *msg,
                   int64_t retry_after_ms);
/* Puts the step back to sleep until at_ms (engine clock) without counting an attempt: durable
 * timers keep nothing in flight while they wait. */
void eng_step_snooze(eng_step_ctx *ctx, int64_t at_ms);
/* eng_step_snooze for a step its named rate limit had no budget for: the run's event log says so
 * (step.rate_limited, with the limit's name and at_ms), which is what tells that wait apart from
 * the queue. rate_limit is borrowed. */
void eng_step_snooze_rate_limited(eng_step_ctx *ctx, int64_t at_ms, const char *rate_limit);
/* Ends the step 'skipped' with output {"reason": reason} (dependents see it as skipped), e.g. a
 * message to a suppressed recipient. Counts as finished, not as a failure. */
void eng_step_skip(eng_step_ctx *ctx, const char *reason);
/* Ends this attempt here without an outcome, after the kind took the step out of 'running' in
 * its own transaction (the send ledger parks a step whose send is ambiguous; see
 * steps/sendledger.h): the step is no longer this worker's. why names the reason in logs and
 * metrics. */
void eng_step_released(eng_step_ctx *ctx, const char *why);
/* The claimer this attempt runs for (the lease owner in steps.lease_owner). */
const char *eng_step_owner(const eng_step_ctx *ctx);

/* Built-in outcomes, for the engine's own kinds. */
/* Sleeps in 'waiting' until an event (name, key) arrives (or already arrived during this run), then
 * succeeds with the event's data; at until_ms (engine clock; 0 = never) it succeeds with
 * {"timed_out": true}. */
void eng_step_wait_event(eng_step_ctx *ctx, const char *event, const char *key, int64_t until_ms);
/* Fans out: spec is {"workflow": name} or {"def": normalized, "digest": d}, plus "inputs" (one child
 * run per element), "concurrency" and "allow_failures" (stolen). The step waits for its children and
 * succeeds with {"results": [...]} in item order. */
void eng_step_map(eng_step_ctx *ctx, json_t *spec);
