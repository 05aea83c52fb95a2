/* engine/scheduler.c: the fire passes of schedules (see scheduler.h).
 *
 * States: idle (timer set to the next tick, or none), looking (next-due query in flight), passing
 * (due query or fire in flight). A look or a pass asked for while a statement is in flight is
 * remembered (want_look, want_pass) and served when it returns, a pass first, so there is never
 * more than one statement on the wire. A pass asked for during a look must stay a pass: served as
 * a look, it answered "due now" and re-armed the timer, whose pass met the next look in flight,
 * and so on without a pass ever running. */
#include "engine/scheduler.h"

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/clock.h"
#include "engine/db.h"
#include "engine/jschema.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "engine/schedule.h"

#define SCHED_PASS_ROWS 500   /* schedules planned and fired per transaction */
#define SCHED_PASS_ROWS_S "500"
#define SCHED_BUSY_RETRY_S 1. /* another process holds due schedules: look again after this */
#define SCHED_ERROR_RETRY_S 1.

struct eng_scheduler {
    struct ev_loop *loop;
    eng_db *db;
    ev_timer timer;
    bool inflight; /* a statement is on the wire */
    bool want_look; /* look for the next tick once it returns */
    bool want_pass; /* run a pass once it returns */
    int64_t pass_wall_ms; /* when the pass's due query answered */
    int64_t pass_now_ms;  /* the engine clock it answered with */
    json_t *orders;       /* the pass's plan, kept to count what it made */
};

static void sched_look(eng_scheduler *s);
static void sched_pass(eng_scheduler *s);

static void sched_arm(eng_scheduler *s, double after_s)
{
    ev_timer_stop(s->loop, &s->timer);
    ev_timer_set(&s->timer, after_s, 0.);
    ev_timer_start(s->loop, &s->timer);
}

static void sched_done(eng_scheduler *s)
{
    s->inflight = false;
    if (s->want_pass) { /* a pass ends with a look of its own */
        s->want_pass = false;
        s->want_look = false;
        sched_pass(s);
    } else if (s->want_look) {
        s->want_look = false;
        sched_look(s);
    }
}

static void sched_next_due_cb(void *arg, const eng_err *err, const PGresult *res)
{
    eng_scheduler *s = arg;
    ev_timer_stop(s->loop, &s->timer);
    if (err) {
        if (err->rc != ENG_EDB_RETRY) /* a lost connection looks again once it is back */
            sched_arm(s, SCHED_ERROR_RETRY_S);
    } else if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
        sched_arm(s, (double)strtoll(PQgetvalue(res, 0, 0), NULL, 10) / 1000.0);
    }
    sched_done(s);
}

static void sched_look(eng_scheduler *s)
{
    if (s->inflight) {
        s->want_look = true;
        return;
    }
    s->inflight = true;
    eng_db_query(s->db, "flowd_schedule_next_due_ms", 0, NULL, sched_next_due_cb, s);
}

/* ---------------------------------------------------------------------------- planning -- */

/* Compiled input checks of one pass, by their text: most schedules share a few workflows. */
typedef struct check_cache {
    int n;
    struct {
        char *text;
        jschema *js; /* NULL: the check does not compile (a bug; the fire is refused) */
    } at[16];
} check_cache;

static const jschema *check_get(check_cache *c, const char *text)
{
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->at[i].text, text) == 0)
            return c->at[i].js;
    json_t *schema = json_loads(text, JSON_DECODE_ANY, NULL);
    jschema *js = NULL;
    if (!schema || jschema_compile(schema, "", &js, NULL) != ENG_OK)
        js = NULL;
    json_decref(schema);
    if (c->n == (int)ENG_ARRAY_LEN(c->at)) { /* full: the oldest goes */
        free(c->at[0].text);
        jschema_free(c->at[0].js);
        memmove(&c->at[0], &c->at[1], sizeof c->at[0] * (size_t)(c->n - 1));
        c->n--;
    }
    c->at[c->n].text = eng_xstrdup(text);
    c->at[c->n].js = js;
    c->n++;
    return js;
}

static void check_cache_free(check_cache *c)
{
    for (int i = 0; i < c->n; i++) {
        free(c->at[i].text);
        jschema_free(c->at[i].js);
    }
}

enum { DUE_ID, DUE_NAME, DUE_DEF, DUE_NEXT, DUE_LAST, DUE_NOW, DUE_WF_FOUND, DUE_CHECK };

static int64_t col_ms(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? -1 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static json_t *order_error(json_t *order, int64_t fire_ms, const char *reason, const char *msg,
                           const char *field)
{
    char fire[32];
    eng_time_format_rfc3339(fire_ms, fire, sizeof fire);
    json_t *e = json_pack("{s:s, s:s, s:s}", "fire_time", fire, "reason", reason, "message", msg);
    if (field && *field)
        json_object_set_new(e, "field", json_string(field));
    json_object_set_new(order, "error", e);
    json_array_clear(json_object_get(order, "fires"));
    return order;
}

/* The order of one due row (see flowd_schedules_fire). A schedule that cannot be planned at all
 * (its stored definition no longer parses, say a time zone the ICU data dropped) is stopped with
 * the reason in its last_skip rather than looked at again and again. */
static json_t *sched_plan_row(const PGresult *res, int row, check_cache *checks)
{
    int64_t id = strtoll(PQgetvalue(res, row, DUE_ID), NULL, 10);
    const char *name = PQgetvalue(res, row, DUE_NAME);
    int64_t next = col_ms(res, row, DUE_NEXT), prev = col_ms(res, row, DUE_LAST),
            now = col_ms(res, row, DUE_NOW);
    json_t *def = json_loads(PQgetvalue(res, row, DUE_DEF), 0, NULL);
    eng_sched *sc = NULL;
    eng_err err;
    eng_sched_plan plan = {0};
    eng_rc rc = def ? eng_sched_parse(def, &sc, &err) : ENG_EINVAL;
    if (rc == ENG_OK)
        rc = eng_sched_plan_due(sc, next, now, &plan, &err);
    json_decref(def);
    if (rc != ENG_OK) {
        const char *why = def ? err.msg : "unreadable definition";
        log_error("schedule cannot be planned", LOG_S("schedule", name), LOG_I("id", (long long)id),
                  LOG_S("error", why));
        eng_sched_free(sc);
        json_t *order = json_pack("{s:I, s:I, s:n, s:[], s:i}", "id", (json_int_t)id, "expect",
                                  (json_int_t)next, "next", "fires", "missed", 0);
        return order_error(order, next, "invalid_schedule", why, NULL);
    }
    json_t *order = json_pack("{s:I, s:I, s:o, s:[], s:I}", "id", (json_int_t)id, "expect",
                              (json_int_t)next, "next",
                              plan.next_ms >= 0 ? json_integer(plan.next_ms) : json_null(),
                              "fires", "missed", (json_int_t)plan.missed);
    json_t *fires = json_object_get(order, "fires");
    bool found = PQgetvalue(res, row, DUE_WF_FOUND)[0] == 't';
    const jschema *check = NULL;
    if (found && !PQgetisnull(res, row, DUE_CHECK)) {
        check = check_get(checks, PQgetvalue(res, row, DUE_CHECK));
        if (!check)
            found = false;
    }
    for (int i = 0; i < plan.nfires; i++) {
        int64_t at = plan.fires[i];
        json_t *input = NULL;
        if (!found) {
            order_error(order, at, "workflow_missing", "the schedule's workflow does not exist",
                        "/workflow");
        } else if (eng_sched_input(sc, name, at, prev, &input, &err) != ENG_OK ||
                   (check && jschema_validate(check, input, "/input", &err) != ENG_OK)) {
            order_error(order, at, "invalid_input", err.msg, err.field);
        } else {
            /* a tick made ahead waits for its instant like any delayed start */
            int64_t jitter = eng_sched_jitter_ms(sc, id, at);
            json_array_append_new(fires, json_pack("{s:I, s:o, s:o}", "at", (json_int_t)at,
                                                   "input", input, "start",
                                                   jitter || at > now ? json_integer(at + jitter)
                                                                      : json_null()));
            prev = at;
            continue;
        }
        json_decref(input);
        /* the ticks of one pass differ only in their times: the rest would fail the same way */
        json_object_set_new(order, "missed", json_integer(plan.missed + plan.nfires - 1));
        break;
    }
    free(plan.fires);
    eng_sched_free(sc);
    return order;
}

/* ----------------------------------------------------------------------------- firing -- */

static void sched_count_skips(const json_t *order, const PGresult *res, int row)
{
    int64_t missed = json_integer_value(json_object_get(order, "missed"));
    const json_t *error = json_object_get(order, "error");
    if (missed > 0)
        eng_metrics_schedule_skipped("missed", (uint64_t)missed);
    if (error)
        eng_metrics_schedule_skipped(json_string_value(json_object_get(error, "reason")), 1);
    static const char *const reasons[] = {"overlap", "duplicate", "workflow_missing", "quota"};
    for (int i = 0; i < 4; i++) {
        int n = atoi(PQgetvalue(res, row, 3 + i));
        if (n > 0)
            eng_metrics_schedule_skipped(reasons[i], (uint64_t)n);
    }
}

static void sched_fire_cb(void *arg, const eng_err *err, const PGresult *res)
{
    eng_scheduler *s = arg;
    json_t *orders = s->orders;
    s->orders = NULL;
    s->inflight = false;
    if (err) {
        log_warn("schedule fire pass failed", LOG_S("error", err->msg),
                 LOG_S("sqlstate", err->sqlstate));
        json_decref(orders);
        if (err->rc != ENG_EDB_RETRY)
            sched_arm(s, SCHED_ERROR_RETRY_S);
        sched_done(s);
        return;
    }
    /* the engine clock when the runs were made, for the lag from their ticks */
    int64_t made_ms = s->pass_now_ms + (eng_clock_wall_ms() - s->pass_wall_ms);
    int busy = 0, n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        const char *outcome = PQgetvalue(res, i, 1);
        const json_t *order = json_array_get(orders, (size_t)i);
        if (strcmp(outcome, "busy") == 0)
            busy++;
        if (strcmp(outcome, "fired") != 0)
            continue;
        int made = atoi(PQgetvalue(res, i, 2));
        const json_t *fires = json_object_get(order, "fires");
        /* runs are made for the ticks in order, less the skipped: their lag is that of the last;
         * a run made ahead of its tick is not late */
        for (int k = 0; k < made; k++) {
            size_t idx = json_array_size(fires) - (size_t)made + (size_t)k;
            int64_t at = json_integer_value(json_object_get(json_array_get(fires, idx), "at"));
            eng_metrics_schedule_fired(made_ms > at ? made_ms - at : 0);
        }
        sched_count_skips(order, res, i);
    }
    json_decref(orders);
    if (busy > 0)
        sched_arm(s, SCHED_BUSY_RETRY_S);
    else if (n >= SCHED_PASS_ROWS)
        sched_arm(s, 0.); /* more may be due: the next pass at once */
    else
        s->want_look = true;
    sched_done(s);
}

static void sched_due_cb(void *arg, const eng_err *err, const PGresult *res)
{
    eng_scheduler *s = arg;
    if (err) {
        log_warn("schedule pass failed", LOG_S("error", err->msg));
        s->inflight = false;
        if (err->rc != ENG_EDB_RETRY)
            sched_arm(s, SCHED_ERROR_RETRY_S);
        sched_done(s);
        return;
    }
    int n = PQntuples(res);
    if (n == 0) {
        s->inflight = false;
        s->want_look = true;
        sched_done(s);
        return;
    }
    s->pass_wall_ms = eng_clock_wall_ms();
    s->pass_now_ms = col_ms(res, 0, DUE_NOW);
    check_cache checks = {0};
    json_t *orders = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(orders, sched_plan_row(res, i, &checks));
    check_cache_free(&checks);
    char *text = json_dumps(orders, JSON_COMPACT);
    const char *params[] = {text};
    s->orders = orders;
    eng_db_query(s->db, "flowd_schedules_fire", 1, params, sched_fire_cb, s);
    free(text);
}

static void sched_pass(eng_scheduler *s)
{
    if (s->inflight) {
        s->want_pass = true;
        return;
    }
    s->inflight = true;
    eng_db_query(s->db, "flowd_schedules_due", 0, NULL, sched_due_cb, s);
}

static void sched_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sched_pass(ENG_CONTAINER_OF(t, eng_scheduler, timer));
}

static void sched_notify_cb(void *arg, const char *channel, const char *payload)
{
    (void)channel;
    (void)payload;
    sched_look(arg);
}

static void sched_connect_cb(void *arg)
{
    sched_look(arg);
}

eng_scheduler *eng_scheduler_start(struct ev_loop *loop, const char *conninfo)
{
    eng_scheduler *s = eng_xcalloc(1, sizeof *s);
    s->loop = loop;
    /* not named after the worker: tools (and tests) that count a process's worker connections by
     * their owner names must not count this one */
    char app[64];
    snprintf(app, sizeof app, "flowd-schedules-%ld", (long)getpid());
    eng_db_opts dbo = {.conninfo = conninfo, .application_name = app,
                       .on_notify = sched_notify_cb, .on_connect = sched_connect_cb, .arg = s};
    s->db = eng_db_new(loop, &dbo);
    eng_db_prepare(s->db, "flowd_schedule_next_due_ms", "SELECT flowd_schedule_next_due_ms()", 0);
    eng_db_prepare(s->db, "flowd_schedules_due",
                   "SELECT * FROM flowd_schedules_due(" SCHED_PASS_ROWS_S ")", 0);
    eng_db_prepare(s->db, "flowd_schedules_fire",
                   "SELECT * FROM flowd_schedules_fire($1::jsonb)", 1);
    eng_db_listen(s->db, "flowd_schedules");
    ev_timer_init(&s->timer, sched_timer_cb, 0., 0.);
    return s;
}

void eng_scheduler_stop(eng_scheduler *s)
{
    if (!s)
        return;
    ev_timer_stop(s->loop, &s->timer);
    eng_db_free(s->db);
    json_decref(s->orders);
    free(s);
}
