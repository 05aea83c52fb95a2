/* engine/step_ctx.h: the step contexts of one worker; engine/step.h is their kinds' side.
 *
 * The worker (engine/worker.c) reads each row of a claim's answer (the claim row:
 * docs/internals/claim-row.md) into a context here, which decides what the step does before its
 * kind runs (a false condition skips it; an `at` time or a window puts it back to sleep; then its
 * input is rendered) and starts the kind. A context lives until its attempt ends in one of three
 * ways:
 *   - an outcome (eng_step_succeed, _fail, _snooze, ...): appended to the set's results, which the
 *     worker's next round trip reports (docs/internals/outcomes.md);
 *   - its kind released the step itself (eng_step_released);
 *   - the worker stopped it (eng_step_ctx_abandon: run cancelled, lease lost or expiring).
 * Each ends in freeing the context, so a context the worker does not hold in its hand may be gone
 * after any call into a kind.
 *
 * A context's state:
 *   PREPARING  claimed; its kind has not started (an outcome may still come from the preparation)
 *   STARTED    its kind's start was called: stopping it calls the kind's cancel
 * A pure step (a claim row whose step the claim only locked: engine/step.h) is dispatched while the
 * claim's transaction is open and reports before its dispatch returns; its outcome goes to the
 * set's pure_results, which the worker writes in that transaction (eng_steps_take_pure).
 * Loop thread only. */
#pragma once

#include <jansson.h>
#include <libpq-fe.h>
#include <stdint.h>

#include "engine/lease.h"
#include "engine/step.h"

struct ev_loop;
struct eng_db;
struct eng_httpc;

/* Step definitions as claimed (the workflow's compiled step, so the same text for every step at
 * the same place of a workflow version), parsed once per worker: claims of a few steps at a time
 * would otherwise parse the same text again on every trip. Entries are read-only and shared by
 * reference; slots are reused round-robin. */
#define ENG_STEPS_DEFS 32

/* One worker's steps: the contexts in flight and the outcomes not yet reported. Embedded by the
 * worker (_init/_deinit). */
typedef struct eng_steps {
    struct ev_loop *loop;
    struct eng_db *db;       /* the worker's connection, lent to the kinds (set once it exists) */
    struct eng_httpc *httpc; /* outbound calls of the steps running here (likewise) */
    const char *owner;       /* the lease owner (borrowed from the worker) */
    eng_step_ctx *inflight;  /* newest first */
    int ninflight;
    json_t *results;         /* outcomes not yet sent (an array, owned) */
    json_t *pure_results;    /* outcomes of the pure steps dispatched since the last
                                eng_steps_take_pure (an array, owned) */
    int npure;               /* pure contexts alive: none outside eng_steps_dispatch */
    struct eng_steps_def {
        char *text;          /* as claimed */
        size_t len;
        json_t *def;         /* parsed; one reference held by the slot */
    } defs[ENG_STEPS_DEFS];
    int next_def;            /* slot to reuse on the next miss */
} eng_steps;

/* The definitions of one claim's answer, by place (workflow version, position): the answer carries
 * each one only on its first step. Embedded by the worker for the time it reads one answer. */
typedef struct eng_steps_claim {
    int n;
    struct eng_steps_claim_def {
        int64_t workflow_id;
        int idx;
        json_t *def; /* a reference of the table's own: the step that carried it may be done */
    } *at;
} eng_steps_claim;

void eng_steps_init(eng_steps *s, struct ev_loop *loop, const char *owner);
/* Frees the results and the definition cache; no context may be in flight. */
void eng_steps_deinit(eng_steps *s);

/* For an answer of nrows rows. */
void eng_steps_claim_init(eng_steps_claim *claim, int nrows);
void eng_steps_claim_deinit(eng_steps_claim *claim);
/* Reads row of a claim's answer res into a context and runs it: prepares it, then starts its
 * kind, unless the preparation already gave it its outcome. hold is its lease hold
 * (engine/lease.h), wall_ms the wall clock at the answer. The context may be gone on return. */
void eng_steps_dispatch(eng_steps *s, eng_steps_claim *claim, const PGresult *res, int row,
                        const eng_lease_hold *hold, int64_t wall_ms);

/* True when row of a claim's answer is a pure step: the claim only locked it, and its outcome must
 * be written before the claim's transaction commits. */
bool eng_steps_row_pure(const PGresult *res, int row);
/* The outcomes of the pure steps dispatched since the last call (a new reference; the set starts
 * a new array). */
json_t *eng_steps_take_pure(eng_steps *s);

/* Stops (without an outcome) the steps of run_id in flight: the run was cancelled. */
void eng_steps_cancel_run(eng_steps *s, int64_t run_id);
/* Stops every step in flight and puts it back to sleep, ready at once, without spending an
 * attempt: shutdown past its grace period. */
void eng_steps_snooze_all(eng_steps *s);

/* The next context in flight after c (NULL at the end); a loop over them must read it before
 * stopping c. */
eng_step_ctx *eng_step_ctx_next(const eng_step_ctx *c);
eng_lease_hold *eng_step_ctx_hold(eng_step_ctx *c);
int64_t eng_step_ctx_claimed_ms(const eng_step_ctx *c); /* engine clock at claim */
/* Stops an attempt without an outcome (the kind's cancel runs if it started) and frees c: the
 * database ended the step or gave it to another claimer, or the worker hands it back. why names
 * the reason in logs and metrics. */
void eng_step_ctx_abandon(eng_step_ctx *c, const char *why);
