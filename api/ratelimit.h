/* api/ratelimit.h: per-tenant token buckets for API requests (429 with Retry-After).
 *
 * One api_ratelimit per api_service, shared by its loop threads behind one mutex (held for a hash
 * lookup and a few arithmetic operations), so a tenant gets its whole budget whichever thread its
 * connections land on. The budget is per process: N API processes on one database allow N times
 * the configured rate.
 *
 * A tenant's rate and burst come from tenants.rate_per_s / tenants.rate_burst (NULL: the service
 * defaults). They are read when the tenant is first seen, before its first request is decided,
 * and again when they are older than API_RATE_REFRESH_MS; requests that arrive while a read is in
 * flight are decided with the values already known (the defaults for a new tenant). */
#pragma once

#include <stdint.h>

#include "api/api_int.h"

#define API_RATE_DEFAULT_PER_S 1000.0
#define API_RATE_DEFAULT_BURST 2000.0
#define API_RATE_REFRESH_MS    5000

typedef struct api_ratelimit api_ratelimit;

/* rate_per_s and burst <= 0 take the defaults above. */
api_ratelimit *api_ratelimit_new(double rate_per_s, double burst);
/* NULL-safe. */
void api_ratelimit_free(api_ratelimit *rl);

typedef enum api_rl_verdict {
    API_RL_ALLOW, /* a token was taken */
    API_RL_DENY,  /* no token left: *retry_after_s (>= 1) says when the next one is there */
    API_RL_FETCH, /* the tenant's settings are unknown or stale and this caller must read them:
                     call api_ratelimit_configure (or api_ratelimit_fetch_failed), then take again */
} api_rl_verdict;

/* now_ms is any monotonic millisecond clock, the same one for every call. */
api_rl_verdict api_ratelimit_take(api_ratelimit *rl, long long tenant, int64_t now_ms,
                                  int *retry_after_s);
/* Stores the tenant's settings (<= 0: the defaults); the tokens it holds shrink to a new, smaller
 * burst at once. */
void api_ratelimit_configure(api_ratelimit *rl, long long tenant, double rate_per_s, double burst,
                             int64_t now_ms);
/* The read failed: keep the known settings and try again after API_RATE_REFRESH_MS. */
void api_ratelimit_fetch_failed(api_ratelimit *rl, long long tenant, int64_t now_ms);

/* The API's glue, for the authenticated dispatch path: decides call (tenant known). Returns true
 * when the caller goes on at once. Otherwise the call is taken care of: either answered 429 with
 * Retry-After, or parked while the tenant's settings are read, after which cont(call, arg) runs
 * when admitted (or 429 is answered). */
bool api_ratelimit_admit(api_ratelimit *rl, api_call *call,
                         void (*cont)(api_call *call, const void *arg), const void *arg);
