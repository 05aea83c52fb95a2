/* api/standby.h: the API's polls read from a streaming standby (api_service_opts.read_conninfo)
 * when it is fresh enough, else from the primary.
 *
 * Freshness is measured, not guessed: a probe asks the primary for its WAL position
 * (pg_current_wal_lsn()) at a moment t0, then asks the standby whether it has replayed past it.
 * When it has, every transaction committed before t0 is visible on the standby, and t0 becomes
 * the standby's "fresh" time (shared by the process's loops). A read goes to the standby when
 * both hold:
 * - lag bound: fresh is no older than max_lag, so the answer misses nothing committed more
 *   than max_lag before the request arrived;
 * - the tenant's fence: fresh is no older than the last answer this process gave the tenant from
 *   the primary (a write such as POST /v1/runs, or a read that went there). So within one
 *   process a tenant never sees its own write missing or a state older than one it was shown.
 * A read whose tenant's fence is ahead of fresh waits (at most API_STANDBY_WAIT_S) for a probe
 * started after it arrived, then goes to the primary. A read the standby answers with no row, or
 * with NULL as its only value (not found), is asked again on the primary, so a run created through
 * another process is never 404 because the standby lags. The standby unreachable, failing the
 * statement, more than max_lag behind, or not in recovery at all: the primary answers. Probes run
 * only while reads come (each loop at most one at a time), so an idle API polls nothing.
 *
 * The probe's position covers every commit that was visible before t0 when commits flush their
 * WAL before they become visible (synchronous_commit on, PostgreSQL's and flowd's default). */
#pragma once

#include <stdbool.h>

#include "api/api_int.h"
#include "engine/db.h"

#define API_STANDBY_WAIT_S 0.1 /* longest a read waits for the standby to pass its tenant's fence */

struct ev_loop;
typedef struct api_standby api_standby;           /* the process's: fresh time, fences */
typedef struct api_standby_loop api_standby_loop; /* one loop's connections, probe and waiters */

/* conninfo of the standby (a multi-host conninfo may list several; each connection keeps the
 * one it reached). max_lag_s > 0. */
api_standby *api_standby_new(const char *conninfo, double max_lag_s);
/* After every loop's side. NULL-safe. */
void api_standby_free(api_standby *sb);
/* Loop lp's side with nconns connections to the standby (application_name flowd-api-read). */
api_standby_loop *api_standby_loop_new(api_standby *sb, struct ev_loop *loop, api_loop *lp,
                                       int nconns);
/* Answers the reads still waiting (they are detached by then) and closes the connections.
 * NULL-safe. */
void api_standby_loop_free(api_standby_loop *sl);
/* The connection for the process's event-log feed (api/runfeed.h) on loop lp: the standby's when
 * it is within the lag bound, else the primary's (api_loop_db). The feed needs no fence: it reads
 * after a position, so an older snapshot only delivers later, never goes back. */
eng_db *api_standby_feed_db(const api_loop *lp);
/* The primary just answered a call of tenant: later reads of the tenant go to the standby only
 * once it is known to hold all that answer could show. Any thread. */
void api_standby_fence(api_standby *sb, long long tenant);
