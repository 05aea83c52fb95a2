/* engine/step_ctx.c: the step contexts of a worker (see step_ctx.h) and what a running attempt
 * sees and reports (engine/step.h). The outcomes' JSON is docs/internals/outcomes.md; the claim
 * row's columns are docs/internals/claim-row.md. */
#include "engine/step_ctx.h"

#include <ev.h>
#include <stdlib.h>
#include <string.h>

#include "engine/clock.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "engine/wf_cond.h"
#include "engine/wf_template.h"

enum ctx_state {
    CTX_PREPARING, /* claimed; its kind has not started */
    CTX_STARTED,   /* kind->start was called: cancel applies */
};

struct eng_step_ctx {
    eng_steps *set;
    eng_step_ctx *prev, *next; /* in set->inflight */
    enum ctx_state state;
    bool pure;             /* reports into set->pure_results (step_ctx.h) */
    int64_t id, run_id, tenant_id;
    char *key;
    const eng_step_kind *kind;
    int attempt;
    int64_t ready_at_ms;
    int64_t claim_now_ms;  /* engine clock at claim */
    int64_t claim_wall_ms; /* wall clock at claim, to advance the engine clock locally */
    int64_t timeout_ms;
    json_t *def;           /* the step's normalized definition (docs/internals/definition.md) */
    json_t *tctx;          /* template context */
    json_t *input;         /* rendered input */
    void *data;
    ev_timer timeout;
    eng_lease_hold hold;   /* this worker's lease on the step (engine/lease.h) */
};

/* ---------------------------------------------------------------- step context and outcomes -- */

static void ctx_free(eng_step_ctx *c)
{
    eng_steps *s = c->set;
    ev_timer_stop(s->loop, &c->timeout);
    if (c->prev)
        c->prev->next = c->next;
    else if (s->inflight == c)
        s->inflight = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->ninflight--;
    if (c->pure)
        s->npure--;
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
    json_array_append_new(c->pure ? c->set->pure_results : c->set->results, result);
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

void eng_step_snooze_rate_limited(eng_step_ctx *c, int64_t at_ms, const char *rate_limit)
{
    ctx_report(c, json_pack("{s:s, s:I, s:s}", "s", "snooze", "at_ms", (json_int_t)at_ms,
                            "rate_limit", rate_limit));
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
    return c->set->owner;
}

static void ctx_schedule(eng_step_ctx *c, int64_t at_ms)
{
    ctx_report(c,
               json_pack("{s:s, s:I, s:b}", "s", "snooze", "at_ms", (json_int_t)at_ms, "sched", 1));
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
struct ev_loop *eng_step_loop(const eng_step_ctx *c) { return c->set->loop; }
struct eng_db *eng_step_db(const eng_step_ctx *c) { return c->set->db; }
struct eng_httpc *eng_step_httpc(const eng_step_ctx *c) { return c->set->httpc; }
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
static json_t *steps_def(eng_steps *s, const char *text, size_t len)
{
    for (int i = 0; i < ENG_STEPS_DEFS; i++) {
        struct eng_steps_def *d = &s->defs[i];
        if (d->def && d->len == len && memcmp(d->text, text, len) == 0)
            return json_incref(d->def);
    }
    json_t *def = json_loadb(text, len, 0, NULL);
    if (!def)
        return NULL;
    struct eng_steps_def *d = &s->defs[s->next_def];
    s->next_def = (s->next_def + 1) % ENG_STEPS_DEFS;
    free(d->text);
    json_decref(d->def);
    d->text = eng_xstrndup(text, len);
    d->len = len;
    d->def = json_incref(def);
    return def;
}

/* Columns of flowd_work_item, in order (docs/internals/claim-row.md). */
enum {
    COL_ID, COL_RUN_ID, COL_TENANT_ID, COL_KEY, COL_KIND, COL_ATTEMPTS, COL_READY_AT_MS,
    COL_NOW_MS, COL_SCHEDULED, COL_WORKFLOW_ID, COL_IDX, COL_DEF, COL_INPUT, COL_WORKFLOW,
    COL_STEPS, COL_PURE
};

static int64_t row_i64(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

bool eng_steps_row_pure(const PGresult *res, int row)
{
    return PQnfields(res) > COL_PURE && PQgetvalue(res, row, COL_PURE)[0] == 't';
}

void eng_steps_claim_init(eng_steps_claim *claim, int nrows)
{
    *claim = (eng_steps_claim){.at = nrows > 0 ? eng_xcalloc((size_t)nrows, sizeof *claim->at)
                                               : NULL};
}

void eng_steps_claim_deinit(eng_steps_claim *claim)
{
    for (int i = 0; i < claim->n; i++)
        json_decref(claim->at[i].def);
    free(claim->at);
    claim->at = NULL;
    claim->n = 0;
}

/* A new reference to the definition of the step in row; NULL when unreadable or missing. */
static json_t *claim_def(eng_steps *s, eng_steps_claim *claim, const PGresult *res, int row)
{
    int64_t workflow_id = row_i64(res, row, COL_WORKFLOW_ID);
    int idx = (int)row_i64(res, row, COL_IDX);
    if (PQgetisnull(res, row, COL_DEF)) {
        for (int i = 0; i < claim->n; i++)
            if (claim->at[i].workflow_id == workflow_id && claim->at[i].idx == idx)
                return json_incref(claim->at[i].def);
        return NULL;
    }
    json_t *def =
        steps_def(s, PQgetvalue(res, row, COL_DEF), (size_t)PQgetlength(res, row, COL_DEF));
    if (def)
        claim->at[claim->n++] = (struct eng_steps_claim_def){workflow_id, idx, json_incref(def)};
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

void eng_steps_dispatch(eng_steps *s, eng_steps_claim *claim, const PGresult *res, int row,
                        const eng_lease_hold *hold, int64_t wall_ms)
{
    eng_step_ctx *c = eng_xcalloc(1, sizeof *c);
    c->set = s;
    c->state = CTX_PREPARING;
    c->id = row_i64(res, row, COL_ID);
    c->run_id = row_i64(res, row, COL_RUN_ID);
    c->tenant_id = row_i64(res, row, COL_TENANT_ID);
    c->key = eng_xstrdup(PQgetvalue(res, row, COL_KEY));
    c->attempt = (int)row_i64(res, row, COL_ATTEMPTS);
    c->ready_at_ms = row_i64(res, row, COL_READY_AT_MS);
    c->claim_now_ms = row_i64(res, row, COL_NOW_MS);
    c->claim_wall_ms = wall_ms;
    c->hold = *hold;
    c->pure = eng_steps_row_pure(res, row);
    s->npure += c->pure;
    bool scheduled = PQgetvalue(res, row, COL_SCHEDULED)[0] == 't';
    c->def = claim_def(s, claim, res, row);
    json_t *tctx = claim_template_ctx(res, row);
    c->tctx = tctx;
    ev_timer_init(&c->timeout, ctx_timeout_cb, 0., 0.);
    c->next = s->inflight;
    if (s->inflight)
        s->inflight->prev = c;
    s->inflight = c;
    s->ninflight++;

    const char *kind_name = PQgetvalue(res, row, COL_KIND);
    c->kind = eng_step_kind_find(kind_name);
    /* the claim carries when a step became ready, which is when it was due only for a first
     * attempt of a step that was not scheduled (delay, at, window) */
    eng_metrics_step_claimed(kind_name,
                             !scheduled && c->attempt == 1 ? c->claim_now_ms - c->ready_at_ms : -1);
    if (!c->def || !tctx) {
        eng_step_fail(c, true, "internal",
                      "claimed step has an unreadable definition or template context", 0);
    } else if (!c->kind) {
        eng_step_fail(c, true, "unknown_kind", "no step kind of this name is registered here", 0);
    } else if (ctx_prepare(c, tctx, scheduled)) {
        c->timeout_ms = json_integer_value(json_object_get(c->def, "timeout_ms"));
        if (c->timeout_ms > 0) {
            ev_timer_set(&c->timeout, (double)c->timeout_ms / 1000.0, 0.);
            ev_timer_start(s->loop, &c->timeout);
        }
        c->state = CTX_STARTED;
        c->kind->start(c); /* may report (and free c) before returning */
    }
    if (s->npure > 0) {
        /* a kind marked pure that did not report at once: its outcome would miss the claim's
         * transaction (a bug in that kind, not a runtime condition) */
        log_error("pure step kind did not report before its start returned",
                  LOG_S("kind", kind_name));
        abort();
    }
}

/* ------------------------------------------------------------------- the worker's side -- */

void eng_steps_init(eng_steps *s, struct ev_loop *loop, const char *owner)
{
    *s = (eng_steps){.loop = loop, .owner = owner, .results = json_array(),
                     .pure_results = json_array()};
}

void eng_steps_deinit(eng_steps *s)
{
    json_decref(s->results);
    s->results = NULL;
    json_decref(s->pure_results);
    s->pure_results = NULL;
    for (int i = 0; i < ENG_STEPS_DEFS; i++) {
        free(s->defs[i].text);
        json_decref(s->defs[i].def);
        s->defs[i] = (struct eng_steps_def){0};
    }
}

json_t *eng_steps_take_pure(eng_steps *s)
{
    json_t *taken = s->pure_results;
    s->pure_results = json_array();
    return taken;
}

eng_step_ctx *eng_step_ctx_next(const eng_step_ctx *c)
{
    return c->next;
}

eng_lease_hold *eng_step_ctx_hold(eng_step_ctx *c)
{
    return &c->hold;
}

int64_t eng_step_ctx_claimed_ms(const eng_step_ctx *c)
{
    return c->claim_now_ms;
}

void eng_step_ctx_abandon(eng_step_ctx *c, const char *why)
{
    log_info("step stopped in flight", LOG_I("run", (long long)c->run_id), LOG_S("step", c->key),
             LOG_I("attempt", c->attempt), LOG_S("reason", why));
    if (c->state == CTX_STARTED && c->kind->cancel)
        c->kind->cancel(c);
    eng_metrics_step_finished(c->kind ? c->kind->name : NULL, why,
                              eng_clock_wall_ms() - c->claim_wall_ms); /* metrics */
    ctx_free(c);
}

void eng_steps_cancel_run(eng_steps *s, int64_t run_id)
{
    for (eng_step_ctx *c = s->inflight, *next; c; c = next) {
        next = c->next;
        if (c->run_id == run_id)
            eng_step_ctx_abandon(c, "cancelled");
    }
}

void eng_steps_snooze_all(eng_steps *s)
{
    while (s->inflight) {
        eng_step_ctx *c = s->inflight;
        if (c->state == CTX_STARTED && c->kind->cancel)
            c->kind->cancel(c);
        eng_step_snooze(c, 0);
    }
}
