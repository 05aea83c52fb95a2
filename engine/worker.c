/* engine/worker.c: the worker loop (see worker.h) and the step context of engine/step.h.
 *
 * Worker state is a handful of flags driven by worker_kick(), which the loop's prepare watcher
 * calls before every poll so that all outcomes reported in one loop iteration travel in one trip:
 *   cycle_inflight  a flowd_work() is on the wire; nothing else is sent until it returns
 *   maybe_work      claimable steps may exist (NOTIFY, timer, full batch): claim when slots
 *                   are free
 *   stopping        no more claims; exit once in-flight steps are done or handed back
 *   renew_failing   lease renewals fail on a live connection: no claims until one lands
 *   due_now_seen    a step is due that our claims do not get: wait for a NOTIFY, not a spin
 * Leases are the worker's (migrations/0016_worker_leases.sql): the heartbeat timer renews them,
 * stops steps whose lease may have run out (renewals not landing) and hands those back, and a new
 * connection's first renewal hands back what a lost round trip claimed unseen. */
#include "engine/worker.h"

#include <ev.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"
#include "engine/clock.h"
#include "engine/db.h"
#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "engine/scheduler.h"
#include "engine/step.h"
#include "engine/wf_cond.h"
#include "engine/wf_template.h"

struct eng_step_ctx {
    eng_worker *w;
    eng_step_ctx *prev, *next; /* in w->inflight */
    int64_t id, run_id, tenant_id;
    char *key;
    const eng_step_kind *kind;
    int attempt;
    int64_t ready_at_ms;
    int64_t claim_now_ms;  /* engine clock at claim */
    int64_t claim_wall_ms; /* wall clock at claim, to advance the engine clock locally */
    int64_t timeout_ms;
    json_t *def;           /* the step's normalized definition */
    json_t *tctx;          /* template context */
    json_t *input;         /* rendered input */
    void *data;
    ev_timer timeout;
    bool started;          /* kind->start was called (cancel applies) */
    uint64_t seq;          /* creation order on this worker: which lease renewals cover it */
    double lease_until;    /* loop time by which this worker's hold on the step may have ended */
};

/* Step definitions as claimed (the workflow's compiled step, so the same text for every step at
 * the same place of a workflow version), parsed once per worker: claims of a few steps at a time
 * would otherwise parse the same text again on every trip. Entries are read-only and shared by
 * reference; slots are reused round-robin. */
#define WORKER_DEFS 32
#define WORKER_PRUNE_BATCH 5000 /* runs per retention pass */
#define WORKER_PRUNE_BATCH_S "5000"
#define WORKER_PRUNE_IDLE_S 10.

struct def_slot {
    char *text;   /* as claimed */
    size_t len;
    json_t *def;  /* parsed; one reference held by the slot */
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
    ev_timer heartbeat;
    ev_timer tick;      /* the process's maintenance: reaper, wake-up for missed NOTIFYs */
    ev_timer prune;     /* retention: finished runs past opts.retention_ms */
    ev_timer grace;
    struct def_slot defs[WORKER_DEFS];
    int next_def;       /* slot to reuse on the next miss */
    json_t *results;    /* outcomes not yet sent */
    json_t *sent;       /* outcomes on the wire, re-queued if the trip fails */
    eng_step_ctx *inflight;
    int ninflight;
    int want;           /* claim size of the trip on the wire */
    double cycle_sent;  /* loop time the trip on the wire left (its claims' leases start later) */
    uint64_t ctx_seq;   /* step contexts created so far */
    uint64_t renew_seq; /* ctx_seq when the lease renewal on the wire left */
    double renew_sent;
    bool renew_inflight;
    struct released {
        int64_t id;
        int attempt;
        int64_t claimed_ms; /* the claim's engine time: an attempt's number alone can recur */
    } *release; /* attempts stopped here while still running in our name: to hand back */
    size_t nrelease, release_cap;
    size_t nrelease_sent;  /* how many of release[] the renewal on the wire carries */
    bool fresh_connection; /* a round trip lost with the old connection may have claimed steps */
    bool fresh_sent;
    bool renew_failing;    /* renewals fail on a live connection: claim nothing until one lands */
    bool cycle_inflight;
    bool maybe_work;
    bool due_query_inflight;
    bool due_now_seen; /* the next-due answer said "now" after a claim that found nothing */
    bool stopping;
    bool grace_passed;
    double stop_grace;
};

static void worker_kick(eng_worker *w);

/* ---------------------------------------------------------------- step context and outcomes -- */

static void ctx_free(eng_step_ctx *c)
{
    eng_worker *w = c->w;
    ev_timer_stop(w->loop, &c->timeout);
    if (c->prev)
        c->prev->next = c->next;
    else if (w->inflight == c)
        w->inflight = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->ninflight--;
    json_decref(c->def);
    json_decref(c->tctx);
    json_decref(c->input);
    free(c->key);
    free(c);
}

static void ctx_report(eng_step_ctx *c, json_t *result)
{
    eng_metrics_step_finished(c->kind ? c->kind->name : NULL,
                              json_string_value(json_object_get(result, "s")),
                              eng_clock_wall_ms() - c->claim_wall_ms); /* metrics */
    json_object_set_new(result, "id", json_integer(c->id));
    json_object_set_new(result, "r", json_integer(c->run_id));
    json_array_append_new(c->w->results, result);
    ctx_free(c);
}

void eng_step_succeed(eng_step_ctx *c, json_t *output)
{
    ctx_report(c, json_pack("{s:s, s:o}", "s", "ok", "o", output ? output : json_object()));
}

void eng_step_fail(eng_step_ctx *c, bool permanent, const char *code, const char *msg,
                   int64_t retry_after_ms)
{
    log_info("step attempt failed", LOG_I("run", (long long)c->run_id), LOG_S("step", c->key),
             LOG_I("attempt", c->attempt), LOG_S("code", code), LOG_I("permanent", permanent),
             LOG_S("error", msg));
    ctx_report(c, json_pack("{s:s, s:{s:s, s:s}, s:b, s:I}", "s", "fail", "e", "code", code,
                            "message", msg, "permanent", permanent, "after_ms",
                            (json_int_t)retry_after_ms));
}

void eng_step_snooze(eng_step_ctx *c, int64_t at_ms)
{
    ctx_report(c, json_pack("{s:s, s:I}", "s", "snooze", "at_ms", (json_int_t)at_ms));
}

static void ctx_skip(eng_step_ctx *c, const char *reason)
{
    ctx_report(c, json_pack("{s:s, s:{s:s}}", "s", "skip", "o", "reason", reason));
}

void eng_step_skip(eng_step_ctx *c, const char *reason)
{
    ctx_skip(c, reason);
}

void eng_step_released(eng_step_ctx *c, const char *why)
{
    log_info("step released by its kind", LOG_I("run", (long long)c->run_id), LOG_S("step", c->key),
             LOG_I("attempt", c->attempt), LOG_S("reason", why));
    eng_metrics_step_finished(c->kind ? c->kind->name : NULL, why,
                              eng_clock_wall_ms() - c->claim_wall_ms); /* metrics */
    ctx_free(c);
}

const char *eng_step_owner(const eng_step_ctx *c)
{
    return c->w->owner;
}

static void ctx_schedule(eng_step_ctx *c, int64_t at_ms)
{
    ctx_report(c, json_pack("{s:s, s:I, s:b}", "s", "snooze", "at_ms", (json_int_t)at_ms, "sched", 1));
}

void eng_step_wait_event(eng_step_ctx *c, const char *event, const char *key, int64_t until_ms)
{
    json_t *r = json_pack("{s:s, s:s, s:s}", "s", "wait", "event", event, "key", key);
    if (until_ms > 0)
        json_object_set_new(r, "until_ms", json_integer(until_ms));
    ctx_report(c, r);
}

void eng_step_map(eng_step_ctx *c, json_t *spec)
{
    json_object_set_new(spec, "s", json_string("map"));
    ctx_report(c, spec);
}

const json_t *eng_step_template_ctx(const eng_step_ctx *c) { return c->tctx; }
const char *eng_step_workflow(const eng_step_ctx *c)
{
    return json_string_value(json_object_get(json_object_get(c->tctx, "run"), "workflow"));
}
int64_t eng_step_id(const eng_step_ctx *c) { return c->id; }
int64_t eng_step_run_id(const eng_step_ctx *c) { return c->run_id; }
int64_t eng_step_tenant_id(const eng_step_ctx *c) { return c->tenant_id; }
const char *eng_step_key(const eng_step_ctx *c) { return c->key; }
int eng_step_attempt(const eng_step_ctx *c) { return c->attempt; }
const json_t *eng_step_input(const eng_step_ctx *c) { return c->input; }
int64_t eng_step_ready_at_ms(const eng_step_ctx *c) { return c->ready_at_ms; }
int64_t eng_step_timeout_ms(const eng_step_ctx *c) { return c->timeout_ms; }
struct ev_loop *eng_step_loop(const eng_step_ctx *c) { return c->w->loop; }
struct eng_db *eng_step_db(const eng_step_ctx *c) { return c->w->db; }
struct eng_httpc *eng_step_httpc(const eng_step_ctx *c) { return c->w->httpc; }
void eng_step_set_data(eng_step_ctx *c, void *data) { c->data = data; }
void *eng_step_data(const eng_step_ctx *c) { return c->data; }

int64_t eng_step_now_ms(const eng_step_ctx *c)
{
    return c->claim_now_ms + (eng_clock_wall_ms() - c->claim_wall_ms);
}

static void ctx_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    eng_step_ctx *c = ENG_CONTAINER_OF(t, eng_step_ctx, timeout);
    if (c->kind->cancel)
        c->kind->cancel(c);
    eng_step_fail(c, false, "timeout", "the attempt ran longer than the step's timeout", 0);
}

/* -------------------------------------------------------------------------- dispatching -- */

static int64_t row_i64(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

/* Hands the step to SQL, which knows the time-zone rules, to sleep until its window opens. */
static void ctx_window(eng_step_ctx *c, const json_t *window, const json_t *tctx, int64_t after_ms)
{
    eng_err err;
    json_t *tz = NULL;
    eng_rc rc = wf_template_render(json_object_get(window, "tz"), tctx, &tz, &err);
    if (rc == ENG_OK && (!json_is_string(tz) || json_string_length(tz) == 0))
        rc = eng_err_field(&err, ENG_EINVAL, "/window/tz", "tz must render to a time zone name");
    if (rc != ENG_OK) {
        json_decref(tz);
        eng_step_fail(c, true, "window", err.msg, 0);
        return;
    }
    ctx_report(c, json_pack("{s:s, s:I, s:o, s:O, s:O, s:O}", "s", "window", "after_ms",
                            (json_int_t)after_ms, "tz", tz, "start_min",
                            json_object_get(window, "start_min"), "end_min",
                            json_object_get(window, "end_min"), "days",
                            json_object_get(window, "days")));
}

/* Decides what a claimed step does before its kind runs: skip on a false condition, sleep until
 * its `at` time and window opening, render its input. Returns false when the step already has
 * its outcome. */
static bool ctx_prepare(eng_step_ctx *c, const json_t *tctx, bool scheduled)
{
    eng_err err;
    const char *when = json_string_value(json_object_get(c->def, "when"));
    if (when) {
        wf_cond *cond = NULL;
        bool yes = false;
        eng_rc rc = wf_cond_parse(when, &cond, &err);
        if (rc == ENG_OK)
            rc = wf_cond_eval(cond, tctx, &yes, &err);
        wf_cond_free(cond);
        if (rc != ENG_OK) {
            eng_step_fail(c, true, "condition", err.msg, 0);
            return false;
        }
        if (!yes) {
            ctx_skip(c, "condition false");
            return false;
        }
    }
    if (!scheduled) {
        /* Place the step first: no earlier than `at`, then inside its window (SQL knows the
         * zone rules). Either way it sleeps in the queue and comes back scheduled. */
        int64_t now = eng_step_now_ms(c), start = now;
        const json_t *at = json_object_get(c->def, "at");
        if (json_is_string(at)) {
            json_t *when_at = NULL;
            int64_t at_ms = 0;
            eng_rc rc = wf_template_render(at, tctx, &when_at, &err);
            if (rc == ENG_OK && !json_is_string(when_at))
                rc = eng_err_field(&err, ENG_EINVAL, "/at", "at must render to an RFC 3339 string");
            if (rc == ENG_OK)
                rc = eng_time_parse_rfc3339(json_string_value(when_at), &at_ms, &err);
            json_decref(when_at);
            if (rc != ENG_OK) {
                eng_step_fail(c, true, "at", err.msg, 0);
                return false;
            }
            if (at_ms > start)
                start = at_ms;
        }
        const json_t *window = json_object_get(c->def, "window");
        if (json_is_object(window)) {
            ctx_window(c, window, tctx, start);
            return false;
        }
        if (start > now) {
            ctx_schedule(c, start);
            return false;
        }
    }
    const json_t *tmpl = json_object_get(c->def, "input");
    eng_rc rc;
    if (c->kind->raw_input) {
        c->input = json_incref((json_t *)tmpl);
        rc = ENG_OK;
    } else {
        rc = tmpl ? wf_template_render(tmpl, tctx, &c->input, &err) : ENG_OK;
    }
    if (rc != ENG_OK) {
        eng_step_fail(c, true, "template", err.msg, 0);
        return false;
    }
    if (!c->input)
        c->input = json_object();
    return true;
}

/* A new reference to the parsed definition of text, or NULL when it is not JSON. */
static json_t *worker_def(eng_worker *w, const char *text, size_t len)
{
    for (int i = 0; i < WORKER_DEFS; i++) {
        struct def_slot *d = &w->defs[i];
        if (d->def && d->len == len && memcmp(d->text, text, len) == 0)
            return json_incref(d->def);
    }
    json_t *def = json_loadb(text, len, 0, NULL);
    if (!def)
        return NULL;
    struct def_slot *d = &w->defs[w->next_def];
    w->next_def = (w->next_def + 1) % WORKER_DEFS;
    free(d->text);
    json_decref(d->def);
    d->text = eng_xstrndup(text, len);
    d->len = len;
    d->def = json_incref(def);
    return def;
}

/* The definitions of one claim's answer, by place (workflow version, position): the answer
 * carries each one only on its first step (migrations/0018_claim_parts.sql). */
typedef struct claim_defs {
    int n;
    struct claim_def {
        int64_t workflow_id;
        int idx;
        json_t *def; /* a reference of the table's own: the step that carried it may be done */
    } *at;
} claim_defs;

/* Columns of flowd_work_item, in order. */
enum {
    COL_ID, COL_RUN_ID, COL_TENANT_ID, COL_KEY, COL_KIND, COL_ATTEMPTS, COL_READY_AT_MS,
    COL_NOW_MS, COL_SCHEDULED, COL_WORKFLOW_ID, COL_IDX, COL_DEF, COL_INPUT, COL_WORKFLOW,
    COL_STEPS
};

/* A new reference to the definition of the step in row; NULL when unreadable or missing. */
static json_t *claim_def(eng_worker *w, claim_defs *defs, const PGresult *res, int row)
{
    int64_t workflow_id = row_i64(res, row, COL_WORKFLOW_ID);
    int idx = (int)row_i64(res, row, COL_IDX);
    if (PQgetisnull(res, row, COL_DEF)) {
        for (int i = 0; i < defs->n; i++)
            if (defs->at[i].workflow_id == workflow_id && defs->at[i].idx == idx)
                return json_incref(defs->at[i].def);
        return NULL;
    }
    json_t *def = worker_def(w, PQgetvalue(res, row, COL_DEF),
                             (size_t)PQgetlength(res, row, COL_DEF));
    if (def)
        defs->at[defs->n++] = (struct claim_def){workflow_id, idx, json_incref(def)};
    return def;
}

/* The template context of the step in row ({input, run: {id, workflow}, steps}), or NULL when
 * a part is unreadable. */
static json_t *claim_template_ctx(const PGresult *res, int row)
{
    json_t *input = json_loadb(PQgetvalue(res, row, COL_INPUT),
                               (size_t)PQgetlength(res, row, COL_INPUT), 0, NULL);
    json_t *steps = PQgetisnull(res, row, COL_STEPS)
                        ? json_object()
                        : json_loadb(PQgetvalue(res, row, COL_STEPS),
                                     (size_t)PQgetlength(res, row, COL_STEPS), 0, NULL);
    if (!input || !steps) {
        json_decref(input);
        json_decref(steps);
        return NULL;
    }
    json_t *run = json_object();
    json_object_set_new(run, "id", json_integer(row_i64(res, row, COL_RUN_ID)));
    json_object_set_new(run, "workflow", json_string(PQgetvalue(res, row, COL_WORKFLOW)));
    json_t *tctx = json_object();
    json_object_set_new(tctx, "input", input);
    json_object_set_new(tctx, "run", run);
    json_object_set_new(tctx, "steps", steps);
    return tctx;
}

static void worker_dispatch(eng_worker *w, claim_defs *defs, const PGresult *res, int row,
                            int64_t wall_ms)
{
    eng_step_ctx *c = eng_xcalloc(1, sizeof *c);
    c->w = w;
    c->id = row_i64(res, row, COL_ID);
    c->run_id = row_i64(res, row, COL_RUN_ID);
    c->tenant_id = row_i64(res, row, COL_TENANT_ID);
    c->key = eng_xstrdup(PQgetvalue(res, row, COL_KEY));
    c->attempt = (int)row_i64(res, row, COL_ATTEMPTS);
    c->ready_at_ms = row_i64(res, row, COL_READY_AT_MS);
    c->claim_now_ms = row_i64(res, row, COL_NOW_MS);
    c->claim_wall_ms = wall_ms;
    c->seq = ++w->ctx_seq;
    c->lease_until = w->cycle_sent + w->opts.lease_ms / 1000.0;
    bool scheduled = PQgetvalue(res, row, COL_SCHEDULED)[0] == 't';
    c->def = claim_def(w, defs, res, row);
    json_t *tctx = claim_template_ctx(res, row);
    c->tctx = tctx;
    ev_timer_init(&c->timeout, ctx_timeout_cb, 0., 0.);
    c->next = w->inflight;
    if (w->inflight)
        w->inflight->prev = c;
    w->inflight = c;
    w->ninflight++;

    const char *kind_name = PQgetvalue(res, row, COL_KIND);
    c->kind = eng_step_kind_find(kind_name);
    eng_metrics_step_claimed(kind_name); /* metrics */
    if (!c->def || !tctx) {
        eng_step_fail(c, true, "internal",
                      "claimed step has an unreadable definition or template context", 0);
    } else if (!c->kind) {
        eng_step_fail(c, true, "unknown_kind", "no step kind of this name is registered here", 0);
    } else if (ctx_prepare(c, tctx, scheduled)) {
        c->timeout_ms = json_integer_value(json_object_get(c->def, "timeout_ms"));
        if (c->timeout_ms > 0) {
            ev_timer_set(&c->timeout, (double)c->timeout_ms / 1000.0, 0.);
            ev_timer_start(w->loop, &c->timeout);
        }
        c->started = true;
        c->kind->start(c); /* may report (and free c) before returning */
    }
}

/* ------------------------------------------------------------------------- round trips -- */

static void worker_requeue_sent(eng_worker *w)
{
    if (!w->sent)
        return;
    json_array_extend(w->sent, w->results);
    json_decref(w->results);
    w->results = w->sent;
    w->sent = NULL;
}

/* Sets the poll timer from the next-due answer. With nothing due the worker sleeps until a NOTIFY
 * or its process's tick (flowd_tick, which also covers NOTIFYs that concurrent enqueues skip):
 * an idle engine makes no round trips of its own. */
static void worker_due_cb(void *arg, const eng_err *err, const PGresult *res)
{
    eng_worker *w = arg;
    w->due_query_inflight = false;
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

static void worker_cycle_cb(void *arg, const eng_err *err, const PGresult *res)
{
    eng_worker *w = arg;
    w->cycle_inflight = false;
    if (err) {
        log_warn("worker round trip failed", LOG_S("owner", w->owner), LOG_S("error", err->msg),
                 LOG_S("sqlstate", err->sqlstate));
        worker_requeue_sent(w);
        w->maybe_work = true;
        /* retry soon; a lost connection reconnects by itself and on_connect kicks us */
        ev_timer_stop(w->loop, &w->poll);
        ev_timer_set(&w->poll, 0.1, 0.);
        ev_timer_start(w->loop, &w->poll);
        return;
    }
    json_decref(w->sent);
    w->sent = NULL;
    int n = PQntuples(res);
    if (n > 0)
        w->due_now_seen = false;
    int64_t wall = eng_clock_wall_ms();
    claim_defs defs = {.at = n ? eng_xcalloc((size_t)n, sizeof *defs.at) : NULL};
    for (int i = 0; i < n; i++)
        worker_dispatch(w, &defs, res, i, wall);
    for (int i = 0; i < defs.n; i++)
        json_decref(defs.at[i].def);
    free(defs.at);
    if (w->want > 0 && n == w->want) {
        w->maybe_work = true;
    } else if (w->want > 0 && !w->due_query_inflight && !w->stopping) {
        w->due_query_inflight = true;
        eng_db_query(w->db, "flowd_next_due", 0, NULL, worker_due_cb, w);
    }
}

static void worker_kick(eng_worker *w)
{
    if (w->cycle_inflight || !eng_db_connected(w->db))
        return;
    int free_slots = w->opts.max_inflight - w->ninflight;
    /* Reported outcomes can make dependents ready, and the same trip claims them. */
    bool claim = !w->stopping && !w->renew_failing &&
                 (w->maybe_work || json_array_size(w->results) > 0);
    int want = claim ? (free_slots < w->opts.batch ? free_slots : w->opts.batch) : 0;
    if (want < 0)
        want = 0;
    if (want == 0 && json_array_size(w->results) == 0)
        return;
    char *results = json_dumps(w->results, JSON_COMPACT);
    char want_s[16], lease_s[16];
    snprintf(want_s, sizeof want_s, "%d", want);
    snprintf(lease_s, sizeof lease_s, "%d", w->opts.lease_ms);
    const char *params[] = {w->owner, results, want_s, lease_s};
    w->sent = w->results;
    w->results = json_array();
    w->want = want;
    w->maybe_work = false;
    w->cycle_sent = ev_now(w->loop);
    w->cycle_inflight = true;
    eng_db_query(w->db, "flowd_work", 4, params, worker_cycle_cb, w);
    free(results);
}

static void worker_prepare_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
    (void)revents;
    eng_worker *w = ENG_CONTAINER_OF(p, eng_worker, prepare);
    worker_kick(w);
    if (w->stopping && w->ninflight == 0 && json_array_size(w->results) == 0 &&
        !w->cycle_inflight)
        ev_break(loop, EVBREAK_ALL);
}

static void worker_poll_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    ENG_CONTAINER_OF(t, eng_worker, poll)->maybe_work = true;
}

/* Stops an attempt without an outcome: the database already ended the step (run cancelled) or
 * gave it to another claimer (lease lost), or this worker's lease may have run out (hand_back:
 * the next renewal hands the step back, in case the lease lived on). */
static void ctx_abandon(eng_step_ctx *c, const char *why, bool hand_back)
{
    eng_worker *w = c->w;
    log_info("step stopped in flight", LOG_I("run", (long long)c->run_id), LOG_S("step", c->key),
             LOG_I("attempt", c->attempt), LOG_S("reason", why));
    if (hand_back) {
        if (w->nrelease == w->release_cap) {
            w->release_cap = w->release_cap ? 2 * w->release_cap : 64;
            w->release = eng_xrealloc(w->release, w->release_cap * sizeof *w->release);
        }
        w->release[w->nrelease++] = (struct released){c->id, c->attempt, c->claim_now_ms};
    }
    if (c->started && c->kind->cancel)
        c->kind->cancel(c);
    eng_metrics_step_finished(c->kind ? c->kind->name : NULL, why,
                              eng_clock_wall_ms() - c->claim_wall_ms); /* metrics */
    ctx_free(c);
}

static void worker_cancel_run(eng_worker *w, int64_t run_id)
{
    for (eng_step_ctx *c = w->inflight, *next; c; c = next) {
        next = c->next;
        if (c->run_id == run_id)
            ctx_abandon(c, "cancelled", false);
    }
}

/* Numbers as a PostgreSQL array literal ("{1,2,3}") into b; false when out of memory. */
static bool buf_id_array(eng_buf *b, const int64_t *ids, size_t n)
{
    bool ok = eng_buf_append(b, "{", 1) == ENG_OK;
    for (size_t i = 0; i < n && ok; i++)
        ok = eng_buf_appendf(b, "%s%lld", i ? "," : "", (long long)ids[i]) == ENG_OK;
    return ok && eng_buf_append(b, "}", 1) == ENG_OK;
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
    w->renew_inflight = false;
    if (err) {
        log_warn("lease renewal failed", LOG_S("owner", w->owner), LOG_S("error", err->msg));
        /* what it carried goes with the next one; a lost connection is the reconnect's business */
        w->nrelease_sent = 0;
        w->fresh_connection = w->fresh_connection || w->fresh_sent;
        w->renew_failing = err->rc != ENG_EDB_RETRY;
        return;
    }
    w->renew_failing = false;
    if (w->nrelease_sent > 0) {
        w->nrelease -= w->nrelease_sent;
        memmove(w->release, w->release + w->nrelease_sent, w->nrelease * sizeof *w->release);
        w->nrelease_sent = 0;
    }
    /* what this renewal covered and did not report lost is held a lease from its sending */
    double until = w->renew_sent + w->opts.lease_ms / 1000.0;
    for (eng_step_ctx *c = w->inflight; c; c = c->next)
        if (c->seq <= w->renew_seq && c->lease_until < until)
            c->lease_until = until;
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
    for (eng_step_ctx *c = w->inflight, *next; c; c = next) {
        next = c->next;
        if (bsearch(&c->id, lost, (size_t)n, sizeof *lost, cmp_id)) {
            ctx_abandon(c, "lease_lost", false);
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
        worker_cancel_run(w, strtoll(payload, NULL, 10));
    } else {
        w->maybe_work = true;
        w->due_now_seen = false;
    }
}

static void worker_connect_cb(void *arg)
{
    eng_worker *w = arg;
    w->maybe_work = true;
    w->fresh_connection = true;
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
    size_t nres = json_array_size(w->results), nsent = json_array_size(w->sent);
    int64_t *held = eng_xcalloc((size_t)w->ninflight + nres + nsent + 1, sizeof *held);
    size_t nheld = 0;
    for (eng_step_ctx *c = w->inflight; c; c = c->next)
        held[nheld++] = c->id;
    for (size_t i = 0; i < nres; i++)
        held[nheld++] = json_integer_value(json_object_get(json_array_get(w->results, i), "id"));
    for (size_t i = 0; i < nsent; i++)
        held[nheld++] = json_integer_value(json_object_get(json_array_get(w->sent, i), "id"));
    int64_t *rel_ids = eng_xcalloc(w->nrelease + 1, sizeof *rel_ids),
            *rel_attempts = eng_xcalloc(w->nrelease + 1, sizeof *rel_attempts),
            *rel_claimed = eng_xcalloc(w->nrelease + 1, sizeof *rel_claimed);
    for (size_t i = 0; i < w->nrelease; i++) {
        rel_ids[i] = w->release[i].id;
        rel_attempts[i] = w->release[i].attempt;
        rel_claimed[i] = w->release[i].claimed_ms;
    }
    char lease_s[16];
    snprintf(lease_s, sizeof lease_s, "%d", w->opts.lease_ms);
    eng_buf held_s, rel_ids_s, rel_attempts_s, rel_claimed_s;
    eng_buf_init(&held_s, 0);
    eng_buf_init(&rel_ids_s, 0);
    eng_buf_init(&rel_attempts_s, 0);
    eng_buf_init(&rel_claimed_s, 0);
    if (!buf_id_array(&held_s, held, nheld) || !buf_id_array(&rel_ids_s, rel_ids, w->nrelease) ||
        !buf_id_array(&rel_attempts_s, rel_attempts, w->nrelease) ||
        !buf_id_array(&rel_claimed_s, rel_claimed, w->nrelease)) {
        log_error("out of memory", LOG_S("where", "lease renewal"));
        abort();
    }
    /* What a fresh connection's first renewal hands back is judged against what this worker
     * holds now, so it applies only if the renewal runs on this same connection (a renewal queued
     * here may run on the next one, and the next connection asks again anyway). */
    int pid = eng_db_backend_pid(w->db);
    char pid_s[16];
    snprintf(pid_s, sizeof pid_s, "%d", pid);
    bool fresh = w->fresh_connection && pid != 0;
    const char *params[] = {
        w->owner,           lease_s,           held_s.ptr,          rel_ids_s.ptr,
        rel_attempts_s.ptr, rel_claimed_s.ptr, fresh ? pid_s : NULL};
    w->renew_seq = w->ctx_seq;
    w->renew_sent = now;
    w->renew_inflight = true;
    w->nrelease_sent = w->nrelease;
    w->fresh_sent = fresh;
    w->fresh_connection = w->fresh_connection && !fresh;
    eng_db_query(w->db, "flowd_worker_leases", 7, params, worker_renew_cb, w);
    eng_buf_deinit(&held_s);
    eng_buf_deinit(&rel_ids_s);
    eng_buf_deinit(&rel_attempts_s);
    eng_buf_deinit(&rel_claimed_s);
    free(held);
    free(rel_ids);
    free(rel_attempts);
    free(rel_claimed);
}

static void worker_heartbeat_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    eng_worker *w = ENG_CONTAINER_OF(t, eng_worker, heartbeat);
    /* Renewals that stopped landing (a stalled process, a cut or stuck connection) leave steps
     * whose lease may run out before the next tick, after which the reaper hands them to another
     * claimer: stop them here rather than run them twice. */
    double now = ev_now(loop), tick = w->opts.lease_ms / 3000.0;
    for (eng_step_ctx *c = w->inflight, *next; c; c = next) {
        next = c->next;
        if (c->lease_until < now + tick)
            ctx_abandon(c, "lease_expired", true);
    }
    if (!w->renew_inflight &&
        (w->ninflight > 0 || w->nrelease > 0 || w->fresh_connection || w->renew_failing))
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
    if (w->stopping)
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
    if (w->grace_passed) {
        /* the database stayed unreachable: the leases will expire and the reaper re-runs them */
        log_warn("worker stopped with outcomes unsent", LOG_S("owner", w->owner));
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    w->grace_passed = true;
    ev_timer_set(t, 5., 0.);
    ev_timer_start(loop, t);
    while (w->inflight) {
        eng_step_ctx *c = w->inflight;
        if (c->started && c->kind->cancel)
            c->kind->cancel(c);
        eng_step_snooze(c, 0);
    }
}

static void worker_stop_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)revents;
    eng_worker *w = ENG_CONTAINER_OF(a, eng_worker, stop_signal);
    w->stopping = true;
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
    eng_db_prepare(w->db, "flowd_work", "SELECT * FROM flowd_work($1, $2::jsonb, $3, $4)", 4);
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
    w->results = json_array();
    w->maybe_work = true;
    w->loop = ev_loop_new(EVFLAG_AUTO);
    ev_async_init(&w->stop_signal, worker_stop_cb);
    ev_async_start(w->loop, &w->stop_signal);
    ev_prepare_init(&w->prepare, worker_prepare_cb);
    ev_prepare_start(w->loop, &w->prepare);
    ev_timer_init(&w->poll, worker_poll_cb, 0., 0.);
    double hb = (double)w->opts.lease_ms / 3000.0;
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
    json_decref(w->results);
    json_decref(w->sent);
    free(w->release);
    for (int i = 0; i < WORKER_DEFS; i++) {
        free(w->defs[i].text);
        json_decref(w->defs[i].def);
    }
    free(w->owner);
    free(w->conninfo);
    free(w);
}
