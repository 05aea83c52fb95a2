/* steps/quota.h: the quota check of the llm and messaging kinds, made just before their call
 * (flowd_quota_step in sql/quotas.sql).
 *
 * A tenant's llm_tokens_per_month and llm_cost_usd_per_month stop llm calls, its sends_per_day
 * stops messages. When the quota has no room, the database blocks the step in the same statement
 * ('blocked' until the quota's period resets or the quota changes, attempt not spent) and the
 * kind lets go of it (eng_step_released); a workflow with "quota": {"on_exceeded": "fail"} fails
 * the step instead, with the code quota_exceeded.
 *
 * The check reads the recorded usage, so the calls already under way when a quota fills are not
 * stopped: a quota is overshot by at most what those calls spend.
 *
 * Tenants without a quota of the kind cost no round trip per step: the answer "not limited" is
 * remembered for QUOTA_NEGATIVE_TTL_MS per process, and while the first check of a tenant is on the
 * wire, the other checks of that tenant on the same connection wait for its answer instead of each
 * sending a query. A quota set where there was none therefore applies within that time.
 *
 * Threads: callable from any worker loop; the cache is process-wide behind a mutex. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "engine/err.h"
#include "engine/step.h"

#define QUOTA_NEGATIVE_TTL_MS 2000

typedef enum quota_kind { QUOTA_LLM, QUOTA_SEND } quota_kind;

typedef enum quota_verdict {
    QUOTA_GO,       /* room: call */
    QUOTA_FAIL,     /* no room, and the workflow says to fail: msg says which quota */
    QUOTA_RELEASED, /* no room: the step is blocked (or no longer this worker's); let go of it */
} quota_verdict;

/* err set: database trouble (treat as retryable; verdict QUOTA_GO, msg NULL). msg is borrowed
 * for the call. */
typedef void quota_cb(void *arg, const eng_err *err, quota_verdict verdict, const char *msg);
typedef struct quota_check quota_check; /* a pending check, opaque */

/* Asks whether the quotas of kind let the attempt ctx call; send_key (QUOTA_SEND) is the
 * message's key in the send ledger: one accepted already is let through, as it is not sent again.
 * true: yes at once (the tenant is known to have no such quota); cb will not run and *pending is
 * NULL. false: *pending is the check, cb runs later from the loop (never before this returns),
 * and quota_check_cancel may withdraw it until then. */
bool quota_check_start(eng_step_ctx *ctx, quota_kind kind, const char *send_key, quota_cb *cb,
                       void *arg, quota_check **pending);
/* cb will not be called. NULL-safe. Only before cb ran. */
void quota_check_cancel(quota_check *q);

/* Forgets the "not limited" answers (tests). */
void quota_cache_clear(void);
