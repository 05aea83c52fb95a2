/* engine/worker.c: the worker loop (see worker.h). Its steps' contexts are engine/step_ctx.c; its
 * lease bookkeeping, where exactly-once lives, is engine/lease.c.
 *
 * The loop's state machine (enum worker_state):
 *   RUNNING   claims and runs steps
 *   DRAINING  stop asked: claims nothing more; steps in flight may finish within the grace
 *             period, and their outcomes are sent
 *   FLUSHING  the grace period is over: the steps still in flight were stopped and put back to
 *             sleep without spending an attempt; their outcomes and the last ones go out, for
 *             5 s at most
 *     RUNNING -worker_stop_cb-> DRAINING -grace timer-> FLUSHING -5 s-> exit (the database stayed
 *     unreachable: the leases run out and the reaper re-runs the steps)
 *     DRAINING, FLUSHING -nothing in flight, nothing to report, no round trip on the wire-> exit
 * worker_kick(), which the loop's prepare watcher calls before every poll so that all outcomes
 * reported in one loop iteration travel in one trip, sends a round trip (flowd_work(): report the
 * outcomes, docs/internals/outcomes.md, and claim as many steps as there are free slots, answered
 * by rows of docs/internals/claim-row.md) when none is on the wire (trip) and there is
 * something to report or a reason to claim. A trip that claims is a transaction, so that the pure
 * steps it claims (engine/step.h: transform) are computed here and written finished before it
 * commits, one write of their row instead of the claim's and then the outcome's (enum
 * worker_trip):
 *   NONE -> CLAIM -> FINISH -> COMMIT -> NONE   (FINISH only when the claim had pure steps)
 *   NONE -> REPORT -> NONE                      (outcomes only, nothing to claim: no transaction)
 * The claim's other steps start only once it committed: a claim that did not commit (a crash, a
 * lost connection) leaves every step it took ready and nothing started; its outcomes are sent
 * again.
 *   maybe_work    claimable steps may exist (NOTIFY, poll timer, full batch, new connection,
 *                 failed trip): claim on the next trip; every trip sent clears it
 * After a claim that came back short the worker asks when the next step is due (due_inflight:
 * flowd_next_due() on the wire, never two at once) and sets the poll timer from the answer:
 *   due_now_seen  a step is due that our claims do not get: after one more look, wait for a NOTIFY
 *                 rather than spin; a NOTIFY or a claim that got steps clears it
 * Claims also stop while lease renewals fail on a live connection (eng_lease_may_claim). */
#include "engine/worker.h"

#include <ev.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/clock.h"
#include "engine/db.h"
#include "engine/httpc.h"
#include "engine/lease.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/scheduler.h"
#include "engine/step_ctx.h"

#define WORKER_PRUNE_BATCH 5000 /* runs per retention pass */
#define WORKER_PRUNE_BATCH_S "5000"
#define WORKER_PRUNE_IDLE_S 10.
#define WORKER_FLUSH_S 5. /* FLUSHING lasts at most this long */

enum worker_state {
    WORKER_RUNNING,
    WORKER_DRAINING,
    WORKER_FLUSHING,
};

/* The round trip on the wire (see the file comment). */
enum worker_trip {
    TRIP_NONE,   /* nothing on the wire: worker_kick may send one */
    TRIP_REPORT, /* flowd_work() reporting outcomes, claiming nothing, on its own */
    TRIP_CLAIM,  /* BEGIN, flowd_work(): outcomes reported and steps claimed; the transaction
                    stays open */
    TRIP_FINISH, /* flowd_finish_pure(): the outcomes of the claim's pure steps, computed here */
    TRIP_COMMIT, /* COMMIT: then the claim's other steps start */
};

struct eng_worker {
    eng_worker_opts opts;
    char *owner;
    char *conninfo;
    pthread_t thread;
    struct ev_loop *loop;
    eng_db *db;
    eng_httpc *httpc;   /* outbound calls of the steps running here */
    eng_scheduler *sched; /* with reaper: the process's schedule fires (engine/scheduler.h) */
    ev_async stop_signal;
    ev_prepare prepare;
    ev_timer poll;      /* next due step / lost notifications */
    ev_timer heartbeat; /* lease renewals, every eng_lease_heartbeat_s */
    ev_timer tick;      /* the process's maintenance: reaper, wake-up for missed NOTIFYs */
    ev_timer prune;     /* retention: finished runs past opts.retention_ms */
    ev_timer grace;     /* ends DRAINING, then FLUSHING */
    enum worker_state state;
    enum worker_trip trip;
    char *pure_kinds;   /* eng_step_pure_kinds(): the kinds the claim only locks */
    PGresult *claimed;  /* FINISH, COMMIT: a copy of the claim's answer, whose steps that are not
                           pure start once it committed (NULL: it had none) */
    int nclaimed;       /* FINISH, COMMIT: rows of the claim's answer, pure ones included */
    eng_steps steps;    /* the steps in flight and the outcomes not yet sent */
    eng_lease lease;    /* this worker's hold on its claimed steps */
    json_t *sent;       /* outcomes on the wire, re-queued if the trip fails (until it committed) */
    int want;           /* claim size of the trip on the wire */
    double work_sent;   /* loop time the trip on the wire left (its claims' leases start later) */
    bool maybe_work;    /* see the file comment */
    bool due_inflight;  /* a flowd_next_due() on the wire */
    bool due_now_seen;  /* see the file comment */
    double stop_grace;
};

static void worker_kick(eng_worker *w);

/* ------------------------------------------------------------------------- round trips -- */

static void worker_requeue_sent(eng_worker *w)
{
    if (!w->sent)
        return;
    json_array_extend(w->sent, w->steps.results);
    json_decref(w->steps.results);
    w->steps.results = w->sent;
    w->sent = NULL;
}

/* Sets the poll timer from the next-due answer. With nothing due the worker sleeps until a NOTIFY
 * or its process's tick (flowd_tick, which also covers NOTIFYs that concurrent enqueues skip):
 * an idle engine makes no round trips of its own. */
static void worker_due_cb(void *arg, const eng_err *err, const PGresult *res)
{
    eng_worker *w = arg;
    w->due_inflight = false;
    ev_timer_stop(w->loop, &w->poll);
    double after;
    if (err) {
        after = 1.0;
    } else if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        return;
    } else {
        after = (double)strtoll(PQgetvalue(res, 0, 0), NULL, 10) / 1000.0;
        if (after <= 0) {
            /* Due now, yet our claim found nothing: another claimer holds it, it waits behind its
             * concurrency key or tenant cap, or it committed just after our claim looked. Look
             * once more at once; after that the step's release wakes us, not a spin. */
            if (w->due_now_seen)
                return;
            w->due_now_seen = true;
            after = 0.002;
        }
    }
    ev_timer_set(&w->poll, after, 0.);
    ev_timer_start(w->loop, &w->poll);
}

/* The trip failed, and the transaction with it: the outcomes it carried go out again, the pure
 * steps' are dropped (their steps stay ready) and the claimed steps never start (those of a claim
 * that did commit after all, its answer lost with the connection, wait out their lease). */
static void worker_trip_failed(eng_worker *w, const eng_err *err)
{
    log_warn("worker round trip failed", LOG_S("owner", w->owner), LOG_S("error", err->msg),
             LOG_S("sqlstate", err->sqlstate));
    w->trip = TRIP_NONE;
    PQclear(w->claimed);
    w->claimed = NULL;
    worker_requeue_sent(w);
    w->maybe_work = true;
    /* retry soon; a lost connection reconnects by itself and on_connect kicks us */
    ev_timer_stop(w->loop, &w->poll);
    ev_timer_set(&w->poll, 0.1, 0.);
    ev_timer_start(w->loop, &w->poll);
}

/* Runs the rows of a claim's answer that are (pure) or are not pure. */
static void worker_dispatch(eng_worker *w, const PGresult *res, bool pure)
{
    int64_t wall = eng_clock_wall_ms();
    int n = PQntuples(res);
    eng_steps_claim claim;
    eng_steps_claim_init(&claim, n);
    for (int i = 0; i < n; i++) {
        if (eng_steps_row_pure(res, i) != pure)
            continue;
        eng_lease_hold hold;
        eng_lease_hold_claimed(&w->lease, &hold, w->work_sent);
        eng_steps_dispatch(&w->steps, &claim, res, i, &hold, wall);
    }
    eng_steps_claim_deinit(&claim);
}

/* Ends the round trip in flight: false (after worker_trip_failed) when its last statement failed,
 * true when the results it sent are recorded. */
static bool worker_trip_landed(eng_worker *w, const eng_err *err)
{
    if (err) {
        worker_trip_failed(w, err);
        return false;
    }
    w->trip = TRIP_NONE;
    json_decref(w->sent);
    w->sent = NULL;
    return true;
}

static void worker_report_cb(void *arg, const eng_err *err, const PGresult *res)
{
    (void)res;
    worker_trip_landed(arg, err);
}

/* COMMIT landed: the claim is the worker's, and its steps that are not pure start. */
static void worker_commit_cb(void *arg, const eng_err *err, const PGresult *res)
{
    (void)res;
    eng_worker *w = arg;
    if (!worker_trip_landed(w, err))
        return;
    PGresult *claimed = w->claimed;
    w->claimed = NULL;
    if (claimed) {
        worker_dispatch(w, claimed, false);
        PQclear(claimed);
    }
    if (w->want > 0 && w->nclaimed == w->want) {
        w->maybe_work = true;
    } else if (w->want > 0 && !w->due_inflight && w->state == WORKER_RUNNING) {
        w->due_inflight = true;
        eng_db_query(w->db, "flowd_next_due", 0, NULL, worker_due_cb, w);
    }
}

static void worker_finish_cb(void *arg, const eng_err *err, const PGresult *res)
{
    (void)res;
    eng_worker *w = arg;
    if (err) {
        worker_trip_failed(w, err);
        return;
    }
    w->trip = TRIP_COMMIT;
    eng_db_commit(w->db, worker_commit_cb, w);
}

/* The claim's answer, in its open transaction: the pure steps run now and their outcomes are
 * written before COMMIT; the others wait for it. */
static void worker_claim_cb(void *arg, const eng_err *err, const PGresult *res)
{
    eng_worker *w = arg;
    if (err) {
        worker_trip_failed(w, err);
        return;
    }
    w->nclaimed = PQntuples(res);
    if (w->nclaimed > 0)
        w->due_now_seen = false;
    bool others = false;
    for (int i = 0; i < w->nclaimed && !others; i++)
        others = !eng_steps_row_pure(res, i);
    if (others) {
        w->claimed = PQcopyResult(res, PG_COPYRES_ATTRS | PG_COPYRES_TUPLES);
        if (!w->claimed) {
            log_error("out of memory", LOG_S("owner", w->owner));
            abort();
        }
    }
    worker_dispatch(w, res, true);
    json_t *pure = eng_steps_take_pure(&w->steps);
    if (json_array_size(pure) == 0) {
        w->trip = TRIP_COMMIT;
        eng_db_commit(w->db, worker_commit_cb, w);
    } else {
        char *outcomes = json_dumps(pure, JSON_COMPACT);
        const char *params[] = {w->owner, outcomes};
        w->trip = TRIP_FINISH;
        eng_db_txn_query(w->db, "flowd_finish_pure", 2, params, worker_finish_cb, w);
        free(outcomes);
    }
    json_decref(pure);
}

static void worker_kick(eng_worker *w)
{
    if (w->trip != TRIP_NONE || !eng_db_connected(w->db))
        return;
    int free_slots = w->opts.max_inflight - w->steps.ninflight;
    size_t nresults = json_array_size(w->steps.results);
    /* Reported outcomes can make dependents ready, and the same trip claims them. */
    bool claim = w->state == WORKER_RUNNING && eng_lease_may_claim(&w->lease) &&
                 (w->maybe_work || nresults > 0);
    int want = claim ? (free_slots < w->opts.batch ? free_slots : w->opts.batch) : 0;
    if (want < 0)
        want = 0;
    if (want == 0 && nresults == 0)
        return;
    char *results = json_dumps(w->steps.results, JSON_COMPACT);
    char want_s[16], lease_s[16];
    snprintf(want_s, sizeof want_s, "%d", want);
    snprintf(lease_s, sizeof lease_s, "%d", w->opts.lease_ms);
    const char *params[] = {w->owner, results, want_s, lease_s, w->pure_kinds};
    w->sent = w->steps.results;
    w->steps.results = json_array();
    w->want = want;
    w->maybe_work = false;
    w->work_sent = ev_now(w->loop);
    if (want > 0) {
        w->trip = TRIP_CLAIM;
        eng_db_begin(w->db, "flowd_work", 5, params, worker_claim_cb, w);
    } else {
        w->trip = TRIP_REPORT;
        eng_db_query(w->db, "flowd_work", 5, params, worker_report_cb, w);
    }
    free(results);
}

static void worker_prepare_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
    (void)revents;
    eng_worker *w = ENG_CONTAINER_OF(p, eng_worker, prepare);
    worker_kick(w);
    if (w->state != WORKER_RUNNING && w->steps.ninflight == 0 &&
        json_array_size(w->steps.results) == 0 && w->trip == TRIP_NONE)
        ev_break(loop, EVBREAK_ALL);
}

static void worker_poll_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    ENG_CONTAINER_OF(t, eng_worker, poll)->maybe_work = true;
}

/* Stops a step whose hold may have run out and hands it back through the next renewal (in case
 * the lease lived on). */
static void worker_hand_back(eng_worker *w, eng_step_ctx *c, const char *why)
{
    eng_lease_hand_back(&w->lease, eng_step_id(c), eng_step_attempt(c), eng_step_ctx_claimed_ms(c));
    eng_step_ctx_abandon(c, why);
}

static int cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The answer of a lease renewal: the steps this worker no longer holds. */
static void worker_renew_cb(void *arg, const eng_err *err, const PGresult *res)
{
    eng_worker *w = arg;
    if (err)
        log_warn("lease renewal failed", LOG_S("owner", w->owner), LOG_S("error", err->msg));
    eng_lease_result how = !err                       ? ENG_LEASE_LANDED
                           : err->rc == ENG_EDB_RETRY ? ENG_LEASE_TRANSIENT
                                                      : ENG_LEASE_REFUSED;
    if (!eng_lease_renewal_done(&w->lease, how))
        return;
    for (eng_step_ctx *c = w->steps.inflight; c; c = eng_step_ctx_next(c))
        eng_lease_hold_renewed(&w->lease, eng_step_ctx_hold(c));
    int n = PQntuples(res);
    if (n == 0)
        return;
    /* sorted, so that losing every lease at once (a long stall) stays one pass over the steps */
    int64_t *lost = eng_xcalloc((size_t)n, sizeof *lost);
    for (int i = 0; i < n; i++)
        lost[i] = strtoll(PQgetvalue(res, i, 0), NULL, 10);
    qsort(lost, (size_t)n, sizeof *lost, cmp_id);
    /* (outcomes reported since the renewal was built are among them too: those are just done) */
    int stopped = 0;
    for (eng_step_ctx *c = w->steps.inflight, *next; c; c = next) {
        next = eng_step_ctx_next(c);
        int64_t id = eng_step_id(c);
        if (bsearch(&id, lost, (size_t)n, sizeof *lost, cmp_id)) {
            eng_step_ctx_abandon(c, "lease_lost");
            stopped++;
        }
    }
    if (stopped > 0)
        log_warn("leases lost", LOG_S("owner", w->owner), LOG_I("steps", stopped));
    free(lost);
}

static void worker_notify_cb(void *arg, const char *channel, const char *payload)
{
    eng_worker *w = arg;
    if (strcmp(channel, "flowd_cancel") == 0) {
        eng_steps_cancel_run(&w->steps, strtoll(payload, NULL, 10));
    } else {
        w->maybe_work = true;
        w->due_now_seen = false;
    }
}

static void worker_connect_cb(void *arg)
{
    eng_worker *w = arg;
    w->maybe_work = true;
    eng_lease_connected(&w->lease);
}

static void worker_ignore_cb(void *arg, const eng_err *err, const PGresult *res)
{
    (void)res;
    if (err)
        log_warn("worker maintenance query failed", LOG_S("owner", (char *)arg),
                 LOG_S("error", err->msg));
}

/* Sends a renewal: this worker's lease, the attempts to hand back, and which steps it holds
 * (running here, or finished with the outcome not yet reported) so that it learns which it lost. */
static void worker_renew(eng_worker *w, double now)
{
    size_t nres = json_array_size(w->steps.results), nsent = json_array_size(w->sent);
    int64_t *held = eng_xcalloc((size_t)w->steps.ninflight + nres + nsent + 1, sizeof *held);
    size_t nheld = 0;
    for (eng_step_ctx *c = w->steps.inflight; c; c = eng_step_ctx_next(c))
        held[nheld++] = eng_step_id(c);
    for (size_t i = 0; i < nres; i++)
        held[nheld++] =
            json_integer_value(json_object_get(json_array_get(w->steps.results, i), "id"));
    for (size_t i = 0; i < nsent; i++)
        held[nheld++] = json_integer_value(json_object_get(json_array_get(w->sent, i), "id"));
    eng_lease_renewal r;
    eng_lease_renewal_build(&w->lease, &r, w->owner, held, nheld, eng_db_backend_pid(w->db), now);
    eng_db_query(w->db, "flowd_worker_leases", 7, r.params, worker_renew_cb, w);
    eng_lease_renewal_deinit(&r);
    free(held);
}

static void worker_heartbeat_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    eng_worker *w = ENG_CONTAINER_OF(t, eng_worker, heartbeat);
    /* Renewals that stopped landing (a stalled process, a cut or stuck connection) leave steps
     * whose lease may run out before the next tick, after which the reaper hands them to another
     * claimer: stop them here rather than run them twice. */
    double now = ev_now(loop);
    for (eng_step_ctx *c = w->steps.inflight, *next; c; c = next) {
        next = eng_step_ctx_next(c);
        if (eng_lease_expiring(&w->lease, eng_step_ctx_hold(c), now))
            worker_hand_back(w, c, "lease_expired");
    }
    if (eng_lease_renewal_due(&w->lease, w->steps.ninflight > 0))
        worker_renew(w, now);
}

static void worker_tick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    eng_worker *w = ENG_CONTAINER_OF(t, eng_worker, tick);
    eng_db_query(w->db, "flowd_tick", 0, NULL, worker_ignore_cb, w->owner);
}

/* The next pass: at once after a full one (more are waiting), in a second after one that found
 * runs (they keep coming: the runs table holds about a second's worth past the retention), else
 * in WORKER_PRUNE_IDLE_S. Passes every 10 s of 1,000 runs each deleted 100 runs a second, and let
 * the table hold ten seconds' worth more. */
static void worker_prune_done(void *arg, const eng_err *err, const PGresult *res)
{
    eng_worker *w = arg;
    if (err)
        log_warn("worker maintenance query failed", LOG_S("owner", w->owner),
                 LOG_S("error", err->msg));
    int n = err ? 0 : atoi(PQgetvalue(res, 0, 0));
    if (w->state != WORKER_RUNNING)
        return;
    ev_timer_set(&w->prune, n >= WORKER_PRUNE_BATCH ? 0. : n > 0 ? 1. : WORKER_PRUNE_IDLE_S, 0.);
    ev_timer_start(w->loop, &w->prune);
}

static void worker_prune_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    eng_worker *w = ENG_CONTAINER_OF(t, eng_worker, prune);
    char retention_s[24];
    snprintf(retention_s, sizeof retention_s, "%lld", (long long)w->opts.retention_ms);
    const char *params[] = {retention_s};
    eng_db_query(w->db, "flowd_prune", 1, params, worker_prune_done, w);
}

/* Past the grace period: stop what still runs and hand it back without spending an attempt. */
static void worker_grace_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    eng_worker *w = ENG_CONTAINER_OF(t, eng_worker, grace);
    if (w->state == WORKER_FLUSHING) {
        /* the database stayed unreachable: the leases will expire and the reaper re-runs them */
        log_warn("worker stopped with outcomes unsent", LOG_S("owner", w->owner));
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    w->state = WORKER_FLUSHING;
    ev_timer_set(t, WORKER_FLUSH_S, 0.);
    ev_timer_start(loop, t);
    eng_steps_snooze_all(&w->steps);
}

static void worker_stop_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)revents;
    eng_worker *w = ENG_CONTAINER_OF(a, eng_worker, stop_signal);
    w->state = WORKER_DRAINING;
    ev_timer_stop(loop, &w->poll);
    ev_timer_stop(loop, &w->tick);
    ev_timer_stop(loop, &w->prune);
    eng_scheduler_stop(w->sched);
    w->sched = NULL;
    ev_timer_set(&w->grace, w->stop_grace, 0.);
    ev_timer_start(loop, &w->grace);
}

static void *worker_main(void *arg)
{
    eng_worker *w = arg;
    eng_db_opts dbo = {.conninfo = w->conninfo, .application_name = w->owner,
                       .on_notify = worker_notify_cb, .on_connect = worker_connect_cb, .arg = w};
    w->db = eng_db_new(w->loop, &dbo);
    w->httpc = eng_httpc_new(w->loop);
    w->steps.db = w->db;
    w->steps.httpc = w->httpc;
    eng_db_prepare(w->db, "flowd_work", "SELECT * FROM flowd_work($1, $2::jsonb, $3, $4, $5)", 5);
    eng_db_prepare(w->db, "flowd_finish_pure", "SELECT flowd_finish_pure($1, $2::jsonb)", 2);
    eng_db_prepare(w->db, "flowd_next_due", "SELECT flowd_next_due_ms()", 0);
    eng_db_prepare(w->db, "flowd_worker_leases",
                   "SELECT * FROM flowd_worker_leases($1, $2, $3::bigint[], $4::bigint[], "
                   "$5::integer[], $6::bigint[], $7::integer)",
                   7);
    eng_db_prepare(w->db, "flowd_tick", "SELECT flowd_tick(1000)", 0);
    eng_db_prepare(w->db, "flowd_prune",
                   "SELECT flowd_prune(flowd_now() - $1::bigint * interval '1 millisecond', "
                   WORKER_PRUNE_BATCH_S ")",
                   1);
    eng_db_listen(w->db, "flowd_ready");
    eng_db_listen(w->db, "flowd_cancel");
    if (w->opts.reaper)
        w->sched = eng_scheduler_start(w->loop, w->conninfo);
    ev_run(w->loop, 0);
    eng_scheduler_stop(w->sched);
    eng_httpc_free(w->httpc);
    eng_db_free(w->db);
    return NULL;
}

eng_worker *eng_worker_start(const eng_worker_opts *opts)
{
    eng_worker *w = eng_xcalloc(1, sizeof *w);
    w->opts = *opts;
    if (w->opts.max_inflight <= 0)
        w->opts.max_inflight = 1000;
    if (w->opts.batch <= 0)
        w->opts.batch = 500;
    if (w->opts.lease_ms <= 0)
        w->opts.lease_ms = 30000;
    w->owner = eng_xstrdup(opts->owner);
    w->conninfo = eng_xstrdup(opts->conninfo);
    w->pure_kinds = eng_step_pure_kinds();
    w->state = WORKER_RUNNING;
    w->maybe_work = true;
    w->loop = ev_loop_new(EVFLAG_AUTO);
    eng_steps_init(&w->steps, w->loop, w->owner);
    eng_lease_init(&w->lease, w->opts.lease_ms);
    ev_async_init(&w->stop_signal, worker_stop_cb);
    ev_async_start(w->loop, &w->stop_signal);
    ev_prepare_init(&w->prepare, worker_prepare_cb);
    ev_prepare_start(w->loop, &w->prepare);
    ev_timer_init(&w->poll, worker_poll_cb, 0., 0.);
    double hb = eng_lease_heartbeat_s(&w->lease);
    ev_timer_init(&w->heartbeat, worker_heartbeat_cb, hb, hb);
    ev_timer_start(w->loop, &w->heartbeat);
    ev_timer_init(&w->tick, worker_tick_cb, 1., 1.);
    if (w->opts.reaper)
        ev_timer_start(w->loop, &w->tick);
    /* a first pass soon after start; worker_prune_done schedules the next one */
    ev_timer_init(&w->prune, worker_prune_cb, 1., 0.);
    if (w->opts.reaper && w->opts.retention_ms > 0)
        ev_timer_start(w->loop, &w->prune);
    ev_timer_init(&w->grace, worker_grace_cb, 0., 0.);
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
        log_error("cannot start worker thread", LOG_S("owner", w->owner));
        abort();
    }
    return w;
}

void eng_worker_stop(eng_worker *w, double grace_s)
{
    if (!w)
        return;
    w->stop_grace = grace_s;
    ev_async_send(w->loop, &w->stop_signal);
    pthread_join(w->thread, NULL);
    ev_loop_destroy(w->loop);
    eng_steps_deinit(&w->steps);
    eng_lease_deinit(&w->lease);
    json_decref(w->sent);
    PQclear(w->claimed);
    free(w->pure_kinds);
    free(w->owner);
    free(w->conninfo);
    free(w);
}
