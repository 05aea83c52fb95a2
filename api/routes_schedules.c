/* api/routes_schedules.c: the tenant's schedules (engine/schedule.h says what one is).
 *
 *   PUT    /v1/schedules/{name}          create or replace (201 / 200)
 *   GET    /v1/schedules/{name}          one, with its next 10 ticks in UTC and local time
 *   GET    /v1/schedules                 all of the tenant's, by name
 *   DELETE /v1/schedules/{name}
 *   POST   /v1/schedules/{name}/pause    stop firing (ticks missed meanwhile follow `catchup`)
 *   POST   /v1/schedules/{name}/resume
 *   POST   /v1/schedules/{name}/trigger  fire once now (201: the run)
 *
 * A PUT is checked in C before anything is written: the definition (field-named errors), the
 * workflow (it must exist), and the input the first tick would get against the workflow's input
 * check. The next tick is computed here (cron in local time needs ICU) from the engine clock;
 * a PUT that keeps the ticks (cron or every, tz, start_at, end_at) keeps the schedule's place, so
 * its catch-up is not lost. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "engine/clock.h"
#include "engine/cron.h"
#include "engine/jschema.h"
#include "engine/mem.h"
#include "engine/schedule.h"

#define SCHED_SHOWN_TICKS 10

static bool sched_path_name(api_call *call)
{
    if (eng_sched_name_ok(call->params[0]))
        return true;
    api_call_respond_error(call, 404, "not_found", "schedule not found", NULL);
    return false;
}

static int64_t json_ms(const json_t *v)
{
    int64_t ms = -1;
    if (json_is_string(v) && eng_time_parse_rfc3339(json_string_value(v), &ms, NULL) != ENG_OK)
        ms = -1;
    return ms;
}

/* What PUT, GET and trigger read first: tenant, name, workflow and version (NULL: the stored
 * schedule's). */
#define SCHED_GET_SQL                                                                              \
    "SELECT now_ms, schedule, workflow_found, input_check FROM flowd_schedule_get($1, $2, $3, $4)"

/* Adds "next_fires": the schedule's next ticks from its next_fire, each in UTC and in its zone
 * ([] when none is left or the stored definition cannot be read). Takes schedule (stolen). */
static json_t *sched_with_ticks(json_t *schedule)
{
    json_t *ticks = json_array();
    json_object_set_new(schedule, "next_fires", ticks);
    eng_sched *sc = NULL;
    int64_t t = json_ms(json_object_get(schedule, "next_fire"));
    if (t < 0 || eng_sched_parse(schedule, &sc, NULL) != ENG_OK)
        return schedule;
    for (int i = 0; i < SCHED_SHOWN_TICKS; i++) {
        char utc[32], local[40];
        eng_time_format_rfc3339(t, utc, sizeof utc);
        if (cron_local_time(eng_sched_tz(sc), t, local, sizeof local, NULL) != ENG_OK)
            break;
        json_array_append_new(ticks, json_pack("{s:s, s:s}", "utc", utc, "local", local));
        if (eng_sched_next(sc, t, &t, NULL) != ENG_OK)
            break;
    }
    eng_sched_free(sc);
    return schedule;
}

static void sched_respond_row(api_call *call, int status, const char *text)
{
    json_t *schedule = json_loads(text, 0, NULL);
    if (!schedule) {
        api_call_respond_error(call, 500, "internal", "internal error", NULL);
        return;
    }
    api_call_respond_json(call, status, sched_with_ticks(schedule));
}

/* ---------------------------------------------------------------------------------- PUT -- */

typedef struct sched_put {
    json_t *body; /* the definition as sent, less "name" */
    eng_sched *sc;
} sched_put;

static void sched_put_free(void *p)
{
    sched_put *sp = p;
    json_decref(sp->body);
    eng_sched_free(sp->sc);
    free(sp);
}

static void sched_put_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    sched_respond_row(call, PQgetvalue(res, 0, 0)[0] == 't' ? 201 : 200, PQgetvalue(res, 0, 1));
}

/* The input of tick fire_ms (a new reference), checked against the workflow's input check in
 * column 3 of res; NULL after answering 422 naming the pointer inside /input. */
static json_t *sched_input_checked(api_call *call, const eng_sched *sc, const PGresult *res,
                                   int64_t fire_ms, int64_t prev_ms)
{
    eng_err err;
    json_t *input = NULL;
    if (eng_sched_input(sc, call->params[0], fire_ms, prev_ms, &input, &err) != ENG_OK) {
        api_call_respond_error(call, 422, "invalid_request", err.msg, err.field);
        return NULL;
    }
    eng_rc rc = ENG_OK;
    if (!PQgetisnull(res, 0, 3)) {
        json_t *schema = json_loads(PQgetvalue(res, 0, 3), JSON_DECODE_ANY, NULL);
        jschema *js = NULL;
        rc = schema ? jschema_compile(schema, "", &js, &err) : ENG_EINTERNAL;
        json_decref(schema);
        if (rc != ENG_OK) {
            json_decref(input);
            api_call_respond_error(call, 500, "internal", "internal error", NULL);
            return NULL;
        }
        rc = jschema_validate(js, input, "/input", &err);
        jschema_free(js);
    }
    if (rc == ENG_OK)
        return input;
    json_decref(input);
    char msg[sizeof err.msg + 64];
    snprintf(msg, sizeof msg, "the input of a tick does not match the workflow's input check: %s",
             err.msg);
    api_call_respond_error(call, 422, "invalid_input", msg, err.field);
    return NULL;
}

static void sched_prepared_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    sched_put *sp = call->data;
    const json_t *version = json_object_get(sp->body, "version");
    if (PQgetvalue(res, 0, 2)[0] != 't') {
        bool v = json_is_integer(version);
        api_call_respond_error(call, 422, "invalid_request",
                               v ? "the workflow has no such version" : "no workflow of this name",
                               v ? "/version" : "/workflow");
        return;
    }
    int64_t now = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    json_t *old = PQgetisnull(res, 0, 1) ? NULL : json_loads(PQgetvalue(res, 0, 1), 0, NULL);
    eng_sched *old_sc = NULL;
    bool keep = old && eng_sched_parse(old, &old_sc, NULL) == ENG_OK &&
                eng_sched_same_ticks(old_sc, sp->sc);
    int64_t next = keep ? json_ms(json_object_get(old, "next_fire")) : -1,
            prev = old ? json_ms(json_object_get(old, "last_fire")) : -1;
    eng_sched_free(old_sc);
    json_decref(old);
    eng_err nerr;
    if (!keep && eng_sched_next(sp->sc, now, &next, &nerr) != ENG_OK) {
        bool ends = json_ms(json_object_get(sp->body, "end_at")) >= 0;
        api_call_respond_error(call, 422, "invalid_request",
                               ends ? "the schedule has no tick left before end_at"
                                    : nerr.msg,
                               ends ? "/end_at" : "/cron");
        return;
    }
    json_t *input = sched_input_checked(call, sp->sc, res, next >= 0 ? next : now, prev);
    if (!input)
        return;
    json_decref(input);
    char *def = json_dumps(sp->body, JSON_COMPACT);
    char next_s[24];
    snprintf(next_s, sizeof next_s, "%lld", (long long)next);
    const char *params[] = {call->tenant_s, call->params[0], def, next >= 0 ? next_s : NULL,
                            keep ? "false" : "true"};
    api_call_db(call,
                "SELECT created, schedule FROM flowd_schedule_put($1, $2, $3::jsonb, $4, $5)", 5,
                params, sched_put_cb);
    free(def);
}

void api_route_schedule_put(api_call *call)
{
    static const char *const allowed[] = {
        "name",    "workflow", "version",        "cron",   "every",    "tz",     "input",
        "overlap", "catchup",  "catchup_window", "jitter", "start_at", "end_at", "paused",
        NULL};
    if (!eng_sched_name_ok(call->params[0])) {
        api_call_respond_error(call, 422, "invalid_request",
                               "must be 1 to 100 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
                               "name");
        return;
    }
    json_t *body = api_call_body_fields(call, allowed);
    if (!body)
        return;
    const json_t *name = json_object_get(body, "name");
    if (name && (!json_is_string(name) || strcmp(json_string_value(name), call->params[0]) != 0)) {
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request",
                               "differs from the schedule name in the path", "/name");
        return;
    }
    json_object_del(body, "name");
    eng_err err;
    eng_sched *sc = NULL;
    if (eng_sched_parse(body, &sc, &err) != ENG_OK) {
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request", err.msg, err.field);
        return;
    }
    sched_put *sp = eng_xcalloc(1, sizeof *sp);
    sp->body = body;
    sp->sc = sc;
    call->data = sp;
    call->data_free = sched_put_free;
    const json_t *version = json_object_get(body, "version");
    char version_s[24];
    snprintf(version_s, sizeof version_s, "%lld", (long long)json_integer_value(version));
    const char *params[] = {call->tenant_s, call->params[0],
                            json_string_value(json_object_get(body, "workflow")),
                            json_is_integer(version) ? version_s : NULL};
    api_call_db(call,
                SCHED_GET_SQL,
                4, params, sched_prepared_cb);
}

/* --------------------------------------------------------------------------- the others -- */

static void sched_get_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else if (PQgetisnull(res, 0, 1))
        api_call_respond_error(call, 404, "not_found", "schedule not found", NULL);
    else
        sched_respond_row(call, 200, PQgetvalue(res, 0, 1));
}

void api_route_schedule_get(api_call *call)
{
    if (!sched_path_name(call))
        return;
    const char *params[] = {call->tenant_s, call->params[0], NULL, NULL};
    api_call_db(call,
                SCHED_GET_SQL,
                4, params, sched_get_cb);
}

static void sched_list_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "schedules");
}

void api_route_schedules_list(api_call *call)
{
    const char *params[] = {call->tenant_s};
    api_call_db(call, "SELECT flowd_schedules_json($1)", 1, params, sched_list_cb);
}

static void sched_delete_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else if (PQgetvalue(res, 0, 0)[0] != 't')
        api_call_respond_error(call, 404, "not_found", "schedule not found", NULL);
    else
        api_call_respond_raw(call, 204, NULL, NULL, 0, NULL);
}

void api_route_schedule_delete(api_call *call)
{
    if (!sched_path_name(call))
        return;
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, "SELECT flowd_schedule_delete($1, $2)", 2, params, sched_delete_cb);
}

static void sched_pause_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else if (PQgetisnull(res, 0, 0))
        api_call_respond_error(call, 404, "not_found", "schedule not found", NULL);
    else
        sched_respond_row(call, 200, PQgetvalue(res, 0, 0));
}

static void sched_pause(api_call *call, bool paused)
{
    if (!sched_path_name(call))
        return;
    const char *params[] = {call->tenant_s, call->params[0], paused ? "true" : "false"};
    api_call_db(call, "SELECT flowd_schedule_pause($1, $2, $3)", 3, params, sched_pause_cb);
}

void api_route_schedule_pause(api_call *call)
{
    sched_pause(call, true);
}

void api_route_schedule_resume(api_call *call)
{
    sched_pause(call, false);
}

static void sched_triggered_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 201, res, "schedule");
}

/* The schedule as stored: the input of a tick now, rendered and checked here, then the run. */
static void sched_trigger_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    if (PQgetisnull(res, 0, 1)) {
        api_call_respond_error(call, 404, "not_found", "schedule not found", NULL);
        return;
    }
    json_t *schedule = json_loads(PQgetvalue(res, 0, 1), 0, NULL);
    eng_sched *sc = NULL;
    if (!schedule || eng_sched_parse(schedule, &sc, NULL) != ENG_OK) {
        json_decref(schedule);
        api_call_respond_error(call, 500, "internal", "internal error", NULL);
        return;
    }
    int64_t now = strtoll(PQgetvalue(res, 0, 0), NULL, 10),
            prev = json_ms(json_object_get(schedule, "last_fire"));
    json_decref(schedule);
    json_t *input = NULL;
    if (PQgetvalue(res, 0, 2)[0] != 't')
        api_call_respond_error(call, 409, "conflict", "the schedule's workflow does not exist",
                               "/workflow");
    else
        input = sched_input_checked(call, sc, res, now, prev);
    eng_sched_free(sc);
    if (!input)
        return;
    char *input_s = json_dumps(input, JSON_COMPACT);
    char now_s[24];
    snprintf(now_s, sizeof now_s, "%lld", (long long)now);
    const char *params[] = {call->tenant_s, call->params[0], now_s, input_s};
    api_call_db(call, "SELECT flowd_schedule_trigger($1, $2, $3, $4::jsonb, NULL)", 4, params,
                sched_triggered_cb);
    free(input_s);
    json_decref(input);
}

void api_route_schedule_trigger(api_call *call)
{
    if (!sched_path_name(call))
        return;
    const char *params[] = {call->tenant_s, call->params[0], NULL, NULL};
    api_call_db(call,
                SCHED_GET_SQL,
                4, params, sched_trigger_cb);
}
