/* api/standby.c: reads routed to a streaming standby (see standby.h).
 *
 * A loop's probe (sb_probe_*) is a small state machine:
 *   PROBE_IDLE     nothing in flight
 *   PROBE_PRIMARY  pg_current_wal_lsn() asked of the primary at t0
 *   PROBE_STANDBY  the standby asked whether it replayed past that position
 *   PROBE_PAUSE    it had not: the recheck timer asks again (backing off), until max_lag passed
 * Reads that wait for it sit in a FIFO with one deadline timer for the oldest. */
#include "api/standby.h"

#include <ev.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/clock.h"
#include "engine/db.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"

#define SB_FENCES 256       /* tenants' fences, direct-mapped: a shared slot only waits more */
#define SB_RECHECK_S 0.002  /* first pause before asking the standby again, doubling ... */
#define SB_RECHECK_MAX 0.05 /* ... up to this */

enum sb_probe { PROBE_IDLE, PROBE_PRIMARY, PROBE_STANDBY, PROBE_PAUSE };

/* What the process logs about where reads go: one line per change, not per loop or read. */
enum sb_mode { SB_MODE_STANDBY, SB_MODE_LAG, SB_MODE_DOWN, SB_MODE_NOT_STANDBY };

struct api_standby {
    char *conninfo;
    int64_t max_lag_us;
    _Atomic int64_t fresh_us; /* the standby holds every commit made before this (monotonic us) */
    _Atomic int64_t fences[SB_FENCES];
    atomic_int mode;
};

typedef struct sb_read {
    struct sb_read *next;
    api_call *call;
    const char *sql; /* constant text, as api_call_db takes it */
    int nparams;
    char **params;
    api_call_db_cb *cb;
    int64_t need_us;  /* the tenant's fence when the read arrived */
    int64_t until_us; /* when it stops waiting */
    bool waited;
} sb_read;

struct api_standby_loop {
    api_standby *sb;
    struct ev_loop *loop;
    api_loop *lp;
    eng_db **db;
    int ndb;
    enum sb_probe probe;
    int64_t probe_t0;
    char lsn[32];     /* the primary's position at probe_t0 */
    double recheck_s; /* the next pause of PROBE_PAUSE */
    bool lagging;     /* the last probe gave up: the standby was more than max_lag behind */
    bool not_standby; /* the read server is not in recovery */
    ev_timer recheck;
    ev_timer deadline; /* of the oldest waiting read */
    sb_read *waiting, *waiting_tail;
};

static void sb_mode_set(api_standby *sb, enum sb_mode m, const char *reason)
{
    if ((enum sb_mode)atomic_exchange(&sb->mode, (int)m) == m)
        return;
    if (m == SB_MODE_STANDBY)
        log_info("api reads go to the standby");
    else
        log_warn("api reads go to the primary", LOG_S("reason", reason));
}

static _Atomic int64_t *sb_fence_of(api_standby *sb, long long tenant)
{
    return &sb->fences[(unsigned long long)tenant % SB_FENCES];
}

static void sb_atomic_max(_Atomic int64_t *v, int64_t x)
{
    int64_t cur = atomic_load(v);
    while (cur < x && !atomic_compare_exchange_weak(v, &cur, x)) {
    }
}

void api_standby_fence(api_standby *sb, long long tenant)
{
    sb_atomic_max(sb_fence_of(sb, tenant), eng_clock_mono_us());
}

/* The standby connection that is up with the fewest statements queued, or NULL. Only connected
 * ones: a read queued on a connection still making its first attempt could wait out the whole
 * connect timeout. */
static eng_db *sb_pick(const api_standby_loop *sl)
{
    eng_db *best = NULL;
    for (int i = 0; i < sl->ndb; i++)
        if (eng_db_connected(sl->db[i]) &&
            (!best || eng_db_pending(sl->db[i]) < eng_db_pending(best)))
            best = sl->db[i];
    return best;
}

/* No standby connection is up: logged once as unreachable, unless they are still making their
 * first attempts (a start is no outage). */
static void sb_no_connection(api_standby_loop *sl)
{
    for (int i = 0; i < sl->ndb; i++)
        if (!eng_db_down(sl->db[i]))
            return;
    sb_mode_set(sl->sb, SB_MODE_DOWN, "the standby is unreachable");
}

/* ------------------------------------------------------------------------------ reads -- */

static void sb_read_free(sb_read *rd)
{
    for (int i = 0; i < rd->nparams; i++)
        free(rd->params[i]);
    free(rd->params);
    free(rd);
}

/* The read on the primary: the ordinary path, which also moves the tenant's fence. */
static void sb_to_primary(sb_read *rd, const char *reason)
{
    api_call *call = rd->call;
    eng_metrics_api_read("primary", reason);
    api_call_db(call, rd->sql, rd->nparams, (const char *const *)rd->params, rd->cb);
    sb_read_free(rd);
}

/* Why a statement the standby failed goes to the primary: the connection went ("down"), or the
 * standby refused it (a recovery conflict, say: "error"). */
static const char *sb_error_reason(const eng_err *err)
{
    const char *st = err->sqlstate;
    return !*st || strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0 ? "down" : "error";
}

/* Whether the answer says "not found": no row, or one NULL value. */
static bool sb_missing(const PGresult *res)
{
    return !res || PQntuples(res) == 0 || (PQnfields(res) == 1 && PQgetisnull(res, 0, 0));
}

static void sb_standby_cb(void *arg, const eng_err *err, const PGresult *res)
{
    sb_read *rd = arg;
    api_call *call = rd->call;
    call->dbop = NULL;
    if (!call->req) {
        api_call_free(call);
        sb_read_free(rd);
        return;
    }
    if (err || sb_missing(res)) {
        const char *reason = err ? sb_error_reason(err) : "missing";
        if (err)
            log_debug("standby read failed", LOG_S("sqlstate", err->sqlstate),
                      LOG_S("error", err->msg));
        sb_to_primary(rd, reason);
        return;
    }
    eng_metrics_api_read("standby", rd->waited ? "waited" : "current");
    eng_log_request_set(call->req_id);
    rd->cb(call, NULL, res);
    eng_log_request_set(NULL);
    sb_read_free(rd);
}

static void sb_to_standby(eng_db *db, sb_read *rd)
{
    rd->call->dbop =
        eng_db_query(db, rd->sql, rd->nparams, (const char *const *)rd->params, sb_standby_cb, rd);
}

/* ------------------------------------------------------------------------------ probe -- */

static void sb_probe_start(api_standby_loop *sl);
static void sb_wake(api_standby_loop *sl, const char *reason);

static void sb_probe_end(api_standby_loop *sl, const char *fail_reason)
{
    sl->probe = PROBE_IDLE;
    ev_timer_stop(sl->loop, &sl->recheck);
    sb_wake(sl, fail_reason);
}

static void sb_probe_standby_cb(void *arg, const eng_err *err, const PGresult *res)
{
    api_standby_loop *sl = arg;
    api_standby *sb = sl->sb;
    if (err) {
        log_debug("standby probe failed", LOG_S("error", err->msg));
        sb_mode_set(sb, SB_MODE_DOWN, "the standby is unreachable");
        sb_probe_end(sl, sb_error_reason(err));
        return;
    }
    if (PQgetvalue(res, 0, 0)[0] != 't') {
        sl->not_standby = true;
        sb_mode_set(sb, SB_MODE_NOT_STANDBY, "the read database is not a standby in recovery");
        sb_probe_end(sl, "not_standby");
        return;
    }
    int64_t now = eng_clock_mono_us();
    if (PQgetvalue(res, 0, 1)[0] == 't') {
        sb_atomic_max(&sb->fresh_us, sl->probe_t0);
        sl->lagging = false;
        sb_mode_set(sb, SB_MODE_STANDBY, NULL);
        sb_probe_end(sl, NULL);
        return;
    }
    if (now - sl->probe_t0 > sb->max_lag_us) {
        sl->lagging = true;
        sb_mode_set(sb, SB_MODE_LAG, "the standby is behind the lag bound");
        sb_probe_end(sl, "lag");
        return;
    }
    sl->probe = PROBE_PAUSE;
    ev_timer_set(&sl->recheck, sl->recheck_s, 0.);
    ev_timer_start(sl->loop, &sl->recheck);
    sl->recheck_s = sl->recheck_s * 2 < SB_RECHECK_MAX ? sl->recheck_s * 2 : SB_RECHECK_MAX;
}

static void sb_probe_ask_standby(api_standby_loop *sl)
{
    eng_db *db = sb_pick(sl);
    if (!db) {
        sb_no_connection(sl);
        sb_probe_end(sl, "down");
        return;
    }
    sl->probe = PROBE_STANDBY;
    const char *params[] = {sl->lsn};
    eng_db_query(db,
                 "SELECT pg_is_in_recovery(),"
                 " coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)",
                 1, params, sb_probe_standby_cb, sl);
}

static void sb_recheck_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sb_probe_ask_standby(ENG_CONTAINER_OF(w, api_standby_loop, recheck));
}

static void sb_probe_primary_cb(void *arg, const eng_err *err, const PGresult *res)
{
    api_standby_loop *sl = arg;
    if (err) {
        sb_probe_end(sl, "error");
        return;
    }
    snprintf(sl->lsn, sizeof sl->lsn, "%s", PQgetvalue(res, 0, 0));
    sb_probe_ask_standby(sl);
}

static void sb_probe_start(api_standby_loop *sl)
{
    if (sl->probe != PROBE_IDLE)
        return;
    sl->probe = PROBE_PRIMARY;
    sl->probe_t0 = eng_clock_mono_us();
    sl->recheck_s = SB_RECHECK_S;
    eng_db_query(api_loop_db(sl->lp), "SELECT pg_current_wal_lsn()::text", 0, NULL,
                 sb_probe_primary_cb, sl);
}

/* ---------------------------------------------------------------------------- routing -- */

/* Where a read of tenant arriving now goes: the standby (*db set), the primary (*reason set), or
 * neither (wait for the probe). Starts a probe when fresh is getting old. */
static bool sb_route(api_standby_loop *sl, int64_t need, int64_t now, eng_db **db,
                     const char **reason)
{
    api_standby *sb = sl->sb;
    *db = NULL;
    *reason = NULL;
    if (sl->not_standby)
        return *reason = "not_standby", true;
    eng_db *sdb = sb_pick(sl);
    if (!sdb) {
        sb_no_connection(sl);
        return *reason = "down", true;
    }
    int64_t fresh = atomic_load(&sb->fresh_us);
    if (now - fresh > sb->max_lag_us / 2)
        sb_probe_start(sl);
    if (fresh >= need && now - fresh <= sb->max_lag_us)
        return *db = sdb, true;
    if (sl->lagging)
        return *reason = "lag", true;
    return false;
}

static void sb_deadline_arm(api_standby_loop *sl)
{
    ev_timer_stop(sl->loop, &sl->deadline);
    if (!sl->waiting)
        return;
    double s = (double)(sl->waiting->until_us - eng_clock_mono_us()) / 1e6;
    ev_timer_set(&sl->deadline, s > 0 ? s : 0., 0.);
    ev_timer_start(sl->loop, &sl->deadline);
}

/* Routes the waiting reads again (after a probe ended, or at a deadline); fail_reason: the probe
 * failed, so those still waiting go to the primary for it. Callbacks run last, on a detached
 * list. */
static void sb_wake(api_standby_loop *sl, const char *fail_reason)
{
    sb_read *list = sl->waiting;
    sl->waiting = sl->waiting_tail = NULL;
    int64_t now = eng_clock_mono_us();
    while (list) {
        sb_read *rd = list;
        list = rd->next;
        rd->next = NULL;
        if (!rd->call->req) {
            api_call_free(rd->call);
            sb_read_free(rd);
            continue;
        }
        eng_db *db;
        const char *reason;
        bool decided = sb_route(sl, rd->need_us, now, &db, &reason);
        if (!decided && (fail_reason || now >= rd->until_us))
            decided = true, reason = fail_reason ? fail_reason : "behind";
        if (!decided) {
            if (sl->waiting_tail)
                sl->waiting_tail->next = rd;
            else
                sl->waiting = rd;
            sl->waiting_tail = rd;
        } else if (db) {
            sb_to_standby(db, rd);
        } else {
            sb_to_primary(rd, reason);
        }
    }
    /* the reads still waiting need a probe that started after their tenant's fence */
    if (sl->waiting)
        sb_probe_start(sl);
    sb_deadline_arm(sl);
}

static void sb_deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sb_wake(ENG_CONTAINER_OF(w, api_standby_loop, deadline), NULL);
}

void api_call_read(api_call *call, const char *sql, int nparams, const char *const *params,
                   api_call_db_cb *cb)
{
    api_standby_loop *sl = api_loop_standby(call->lp);
    if (!sl) {
        api_call_db(call, sql, nparams, params, cb);
        return;
    }
    sb_read *rd = eng_xcalloc(1, sizeof *rd);
    *rd = (sb_read){.call = call, .sql = sql, .nparams = nparams, .cb = cb};
    rd->params = eng_xcalloc((size_t)(nparams ? nparams : 1), sizeof *rd->params);
    for (int i = 0; i < nparams; i++)
        rd->params[i] = params[i] ? eng_xstrdup(params[i]) : NULL;
    int64_t now = eng_clock_mono_us();
    rd->need_us = atomic_load(sb_fence_of(sl->sb, call->tenant));
    eng_db *db;
    const char *reason;
    if (sb_route(sl, rd->need_us, now, &db, &reason)) {
        if (db)
            sb_to_standby(db, rd);
        else
            sb_to_primary(rd, reason);
        return;
    }
    rd->waited = true;
    rd->until_us = now + (int64_t)(API_STANDBY_WAIT_S * 1e6);
    if (sl->waiting_tail)
        sl->waiting_tail->next = rd;
    else
        sl->waiting = rd;
    sl->waiting_tail = rd;
    if (sl->waiting == rd)
        sb_deadline_arm(sl);
    /* a probe in flight may have started before the fence moved: the wake-up starts another */
    sb_probe_start(sl);
}

eng_db *api_standby_feed_db(const api_loop *lp)
{
    api_standby_loop *sl = api_loop_standby(lp);
    if (!sl)
        return api_loop_db(lp);
    eng_db *db;
    const char *reason;
    /* no tenant's fence: a page read after a position never goes back, a stale one only comes
     * later, and a run the standby does not have yet is asked for again at the next poll */
    if (sb_route(sl, 0, eng_clock_mono_us(), &db, &reason) && db) {
        eng_metrics_api_read("standby", "current");
        return db;
    }
    eng_metrics_api_read("primary", reason ? reason : "lag");
    return api_loop_db(lp);
}

/* ----------------------------------------------------------------------------- set-up -- */

api_standby *api_standby_new(const char *conninfo, double max_lag_s)
{
    api_standby *sb = eng_xcalloc(1, sizeof *sb);
    sb->conninfo = eng_xstrdup(conninfo);
    sb->max_lag_us = (int64_t)(max_lag_s * 1e6);
    /* nothing is known fresh before the first probe */
    atomic_init(&sb->fresh_us, INT64_MIN / 2);
    for (size_t i = 0; i < SB_FENCES; i++)
        atomic_init(&sb->fences[i], 0);
    atomic_init(&sb->mode, SB_MODE_STANDBY);
    return sb;
}

void api_standby_free(api_standby *sb)
{
    if (!sb)
        return;
    free(sb->conninfo);
    free(sb);
}

api_standby_loop *api_standby_loop_new(api_standby *sb, struct ev_loop *loop, api_loop *lp,
                                       int nconns)
{
    api_standby_loop *sl = eng_xcalloc(1, sizeof *sl);
    sl->sb = sb;
    sl->loop = loop;
    sl->lp = lp;
    sl->ndb = nconns;
    sl->db = eng_xcalloc((size_t)nconns, sizeof *sl->db);
    for (int i = 0; i < nconns; i++) {
        eng_db_opts o = {
            .conninfo = sb->conninfo, .application_name = "flowd-api-read", .fail_when_down = true};
        sl->db[i] = eng_db_new(loop, &o);
    }
    ev_timer_init(&sl->recheck, sb_recheck_cb, 0., 0.);
    ev_timer_init(&sl->deadline, sb_deadline_cb, 0., 0.);
    return sl;
}

void api_standby_loop_free(api_standby_loop *sl)
{
    if (!sl)
        return;
    ev_timer_stop(sl->loop, &sl->recheck);
    ev_timer_stop(sl->loop, &sl->deadline);
    while (sl->waiting) {
        sb_read *rd = sl->waiting;
        sl->waiting = rd->next;
        api_call_free(rd->call);
        sb_read_free(rd);
    }
    for (int i = 0; i < sl->ndb; i++)
        eng_db_free(sl->db[i]);
    free(sl->db);
    free(sl);
}
