/* steps/llm_batch.h: the llm step's recorded answers (table llm_records), looked up and written in
 * batches.
 *
 * An answer is recorded under (tenant, run, step, item) with the hash of its request, never the
 * attempt, so a step re-run after a crash finds it instead of paying twice. Lookups and records of
 * all attempts on one worker connection share round trips: while one batch query of a kind is in
 * flight, new items wait and go together in the next one (one commit for many records). No timer
 * is involved: an idle connection sends a batch of one at once.
 *
 * Ownership: an item is the caller's (embed it), and must stay valid until its callback runs or
 * llm_batch_withdraw returns true. What it points at is read when its batch is sent. Everything
 * runs on the loop thread of the connection. The batcher's state lives in the connection's slot
 * (eng_db_slot): when the connection is freed with a batch on the wire, that batch's callbacks run
 * from eng_db_free with ENG_ECANCELED (by then their owners must only let go of them: a worker
 * cancels its steps before it frees its connection); waiting items are dropped unanswered. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/err.h"

struct eng_db;
typedef struct llm_batch_item llm_batch_item;

/* err NULL means success. found (lookup only): the recorded output, a new reference the callback
 * owns, or NULL when there is none. */
typedef void llm_batch_cb(llm_batch_item *it, const eng_err *err, json_t *found);

struct llm_batch_item {
    /* set by the caller before queueing */
    int64_t tenant, run;
    const char *step;     /* the step's key */
    const char *hash;     /* the request hash (lowercase hex) */
    const json_t *output; /* the answer to record (records only) */
    llm_batch_cb *done;
    /* set by the batcher before done (records only) */
    double cost_usd; /* what usage recorded the answer to cost, at the tenant's prices */
    /* the batcher's */
    llm_batch_item *next; /* in its waiting list */
    bool queued;          /* waiting, not sent yet */
};

/* Queues a lookup of it's recorded answer on db. */
void llm_batch_lookup(struct eng_db *db, llm_batch_item *it);
/* Queues the recording of it->output on db. */
void llm_batch_record(struct eng_db *db, llm_batch_item *it);
/* Takes back an item that was not sent yet: true when it was waiting (its callback will not run);
 * false when its batch is on the wire (the callback runs when the batch comes back). */
bool llm_batch_withdraw(struct eng_db *db, llm_batch_item *it);
