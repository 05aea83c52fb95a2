/* steps/ratelimit.h: named rate limits shared by every worker of every process through the
 * database (rate_limits / rate_buckets, flowd_rl_take in migrations/0007_providers.sql).
 *
 * A limit is a row of rate_limits: a name ("openai", "twilio", or any name a step uses), an optional
 * tenant (NULL = the budget all tenants share; a tenant row adds that tenant's own budget), a
 * request rate per second and a token rate per minute, each a token bucket with a burst. A step
 * asks for budget before calling its provider; when the answer is "wait N ms" it snoozes
 * (eng_step_snooze: no attempt spent, nothing held in flight) and asks again when it wakes, so
 * providers see no 429s from us.
 *
 *   INSERT INTO rate_limits (name, requests_per_s, tokens_per_min) VALUES ('openai', 500/60.0, 200000);
 *
 * Names without any limit cost one query per RL_NEGATIVE_TTL_MS per process (the answer "not
 * limited" is cached), so unlimited providers pay no round trip per step.
 *
 * Threads: callable from any worker loop; the cache is process-wide behind a mutex. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "engine/err.h"

struct eng_db;

#define RL_NEGATIVE_TTL_MS 5000

/* err NULL: wait_ms 0 means the budget was granted (and consumed); wait_ms > 0 means nothing was
 * consumed and the caller should come back after wait_ms (real time). err set: database trouble
 * (wait_ms 0); treat as retryable. */
typedef void rl_cb(void *arg, const eng_err *err, int64_t wait_ms);
typedef struct rl_take rl_take; /* a pending request, opaque */

/* Asks for `requests` requests and `tokens` tokens (0 = none) under the limits named name that
 * apply to tenant, on db (a worker connection, eng_step_db). true: granted at once, because the
 * name is known to be unlimited; cb will not run and *pending is NULL, so the caller goes on.
 * false: *pending is the request, cb runs later from db's loop (never before this returns), and
 * the request can be cancelled until then. */
bool rl_take_start(struct eng_db *db, int64_t tenant, const char *name, int requests,
                   int64_t tokens, rl_cb *cb, void *arg, rl_take **pending);
/* cb will not be called. NULL-safe. Only before cb ran. */
void rl_take_cancel(rl_take *t);

/* True when this process learned (within RL_NEGATIVE_TTL_MS) that no limit of this name applies to
 * tenant: rl_take_start would grant at once without a query. */
bool rl_known_unlimited(int64_t tenant, const char *name);

/* Fire-and-forget correction of the token budgets by delta tokens (positive: used more than
 * reserved). No-op for names known to be unlimited. */
void rl_adjust(struct eng_db *db, int64_t tenant, const char *name, int64_t delta);

/* Forgets the "not limited" answers (tests, or after rate_limits changed). */
void rl_cache_clear(void);

/* A snooze target with jitter: now_ms + wait_ms plus up to 10 % (at most 1 s) more, so steps that
 * waited together do not all come back in the same millisecond. */
int64_t rl_wake_at(int64_t now_ms, int64_t wait_ms);
