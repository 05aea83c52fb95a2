/* engine/worker.h: one worker: a libev loop on its own thread with its own PostgreSQL connection.
 *
 * A worker repeatedly runs one round trip, flowd_work(): it reports the outcomes of the attempts
 * that finished since the last trip and claims as many ready steps as it has free slots, so
 * completions are batched and no step costs a round trip of its own. Claimed steps run through
 * their kind (engine/step.h); many can be in flight at once. Idle workers wake on NOTIFY
 * flowd_ready and on a timer set to the next due step (which also covers lost notifications). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "engine/err.h"

typedef struct eng_worker eng_worker;

/* What a worker uses for an option left 0, and what flowd serve starts with. */
#define ENG_WORKER_DEFAULT_MAX_INFLIGHT 1000
#define ENG_WORKER_DEFAULT_BATCH 500
#define ENG_WORKER_DEFAULT_LEASE_MS 30000

typedef struct eng_worker_opts {
    const char *conninfo;
    const char *owner;   /* unique among all live workers: lease owner name */
    int max_inflight;    /* steps running at once on this worker */
    int batch;           /* most steps claimed per round trip */
    int lease_ms;        /* lease per claim, renewed every lease_ms/3 */
    bool reaper;         /* also the process tick: reap lapsed leases, wake for missed work, and
                            fire schedules (engine/scheduler.h) */
    int64_t retention_ms; /* with reaper: delete runs finished longer ago than this; 0 keeps all */
} eng_worker_opts;

/* Starts the worker's thread. Never NULL. */
eng_worker *eng_worker_start(const eng_worker_opts *opts);
/* Stops claiming, lets steps in flight finish for up to grace_s seconds, hands the rest back to the
 * queue (they run again elsewhere without losing an attempt), flushes outcomes, joins the thread
 * and frees the worker. NULL-safe. */
void eng_worker_stop(eng_worker *w, double grace_s);
