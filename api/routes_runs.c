/* api/routes_runs.c: workflows, runs, events and the test clock. Each handler validates its input
 * completely before it touches the database, then makes one call of a flowd_* SQL function. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "api/runcache.h"
#include "engine/clock.h"
#include "engine/cron.h"
#include "engine/duration.h"
#include "engine/duration.h"
#include "engine/jschema.h"
#include "engine/mem.h"
#include "engine/wf_def.h"
#include "engine/wf_trigger.h"

/* Parses a path id; answers 404 (ids that cannot exist are simply not found) when bad. */
static bool runs_path_id(api_call *call, const char *s)
{
    char *end;
    long long id = strtoll(s, &end, 10);
    if (*end || id <= 0) {
        api_call_respond_error(call, 404, "not_found", "run not found", NULL);
        return false;
    }
    return true;
}

static void runs_row_json_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "run");
}

/* ---------------------------------------------------------------------------- workflows -- */

static void workflow_put_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    bool created = PQgetvalue(res, 0, 2)[0] == 't';
    api_call_respond_json(call, created ? 201 : 200,
                          json_pack("{s:s, s:i}", "name", call->params[0], "version",
                                    atoi(PQgetvalue(res, 0, 1))));
}

void api_route_workflow_put(api_call *call)
{
    json_t *doc = api_call_body_object(call);
    if (!doc)
        return;
    const char *name = json_string_value(json_object_get(doc, "name"));
    if (!name) {
        json_object_set_new(doc, "name", json_string(call->params[0]));
    } else if (strcmp(name, call->params[0]) != 0) {
        json_decref(doc);
        api_call_respond_error(call, 422, "invalid_request",
                               "name differs from the workflow name in the path", "/name");
        return;
    }
    json_t *def = NULL;
    eng_err err;
    if (wf_def_compile(doc, &def, &err) != ENG_OK) {
        json_decref(doc);
        api_call_respond_error(call, 422, "invalid_definition", err.msg, err.field);
        return;
    }
    char *digest = wf_def_digest(doc);
    char *source = json_dumps(doc, JSON_COMPACT);
    char *defs = json_dumps(def, JSON_COMPACT);
    const char *params[] = {call->tenant_s, call->params[0], digest, source, defs};
    api_call_db(call, "SELECT id, version, created FROM flowd_register_workflow($1, $2, $3, $4, $5)",
                5, params, workflow_put_cb);
    free(digest);
    free(source);
    free(defs);
    json_decref(def);
    json_decref(doc);
}

static void workflow_get_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "workflow");
}

void api_route_workflow_get(api_call *call)
{
    const char *version = api_req_query(call->req, "version");
    if (version) {
        char *end;
        long v = strtol(version, &end, 10);
        if (*end || *version < '0' || *version > '9' || v <= 0 || v > INT_MAX) {
            api_call_respond_error(call, 400, "invalid_request", "version must be a positive integer",
                                   "?version");
            return;
        }
    }
    const char *params[] = {call->tenant_s, call->params[0], version};
    api_call_db(call, "SELECT flowd_workflow_json($1, $2, $3)", 3, params, workflow_get_cb);
}

void api_route_workflows_list(api_call *call)
{
    const char *params[] = {call->tenant_s};
    api_call_db(call, "SELECT flowd_workflows_json($1)", 1, params, workflow_get_cb);
}

/* -------------------------------------------------------------------------------- runs -- */

static void run_post_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    bool created = PQgetvalue(res, 0, 0)[0] == 't';
    const char *run = PQgetvalue(res, 0, 1);
    api_call_respond_raw(call, created ? 201 : 200, "application/json", run, strlen(run), NULL);
}

static void body_free(void *body)
{
    json_decref(body);
}

void api_input_check_query(api_call *call, json_t *body, const char *workflow,
                           const char *version, api_call_db_cb *cb)
{
    call->data = body;
    call->data_free = body_free;
    const char *params[] = {call->tenant_s, workflow, version};
    api_call_db(call, "SELECT version, input_check FROM flowd_input_check($1, $2, $3)", 3, params,
                cb);
}

bool api_input_check(api_call *call, const PGresult *res, const json_t *input, bool batch,
                     char version_s[24], const char **version_out)
{
    *version_out = NULL;
    if (PQntuples(res) == 0)
        return true;
    snprintf(version_s, 24, "%s", PQgetvalue(res, 0, 0));
    *version_out = version_s;
    if (PQgetisnull(res, 0, 1))
        return true;
    json_t *schema = json_loads(PQgetvalue(res, 0, 1), JSON_DECODE_ANY, NULL);
    jschema *js = NULL;
    eng_err err;
    if (!schema || jschema_compile(schema, "", &js, &err) != ENG_OK) {
        /* registration compiled it: a stored check that does not is a bug, not the client's */
        json_decref(schema);
        api_call_respond_error(call, 500, "internal", "internal error", NULL);
        return false;
    }
    json_decref(schema);
    eng_rc rc = ENG_OK;
    char base[32] = "/input";
    for (size_t i = 0; rc == ENG_OK && i < (batch ? json_array_size(input) : 1); i++) {
        if (batch)
            snprintf(base, sizeof base, "/inputs/%zu", i);
        rc = jschema_validate(js, batch ? json_array_get(input, i) : input, base, &err);
    }
    jschema_free(js);
    if (rc == ENG_OK)
        return true;
    char msg[sizeof err.msg + 64];
    snprintf(msg, sizeof msg, "the input does not match the workflow's input check: %s", err.msg);
    api_call_respond_error(call, 422, "invalid_input", msg, err.field);
    return false;
}

const char *api_start_fields(const json_t *body, char start_at[40], char start_in[24],
                             const char **field)
{
    const json_t *at = json_object_get(body, "start_at"), *in = json_object_get(body, "start_in");
    start_at[0] = start_in[0] = '\0';
    eng_err err;
    int64_t ms;
    if (at && !json_is_null(at) && in && !json_is_null(in))
        return *field = "/start_in", "give start_at or start_in, not both";
    if (at && !json_is_null(at)) {
        if (!json_is_string(at) ||
            eng_time_parse_rfc3339(json_string_value(at), &ms, &err) != ENG_OK)
            return *field = "/start_at", "must be an RFC 3339 timestamp of a day that exists";
        if (ms < 0 || ms > CRON_MAX_MS)
            return *field = "/start_at", "must lie between 1970 and 9999";
        eng_time_format_rfc3339(ms, start_at, 40);
    }
    if (in && !json_is_null(in)) {
        if (!json_is_string(in) || eng_duration_parse(json_string_value(in), &ms, &err) != ENG_OK)
            return *field = "/start_in", "must be a duration such as \"90s\", \"2h\" or \"1d\"";
        snprintf(start_in, 24, "%lld", (long long)ms);
    }
    return NULL;
}

static void run_checked_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    const json_t *body = call->data;
    const json_t *input = json_object_get(body, "input");
    json_t *empty = json_object();
    char checked_s[24];
    const char *checked;
    bool ok = api_input_check(call, res, input ? input : empty, false, checked_s, &checked);
    json_decref(empty);
    if (!ok)
        return;
    const json_t *wf = json_object_get(body, "workflow");
    const json_t *version = json_object_get(body, "version");
    const json_t *priority = json_object_get(body, "priority");
    const json_t *idem = json_object_get(body, "idempotency_key");
    const json_t *tags = json_object_get(body, "tags");
    char version_s[24], priority_s[24];
    snprintf(version_s, sizeof version_s, "%lld", (long long)json_integer_value(version));
    snprintf(priority_s, sizeof priority_s, "%lld", (long long)json_integer_value(priority));
    char *input_s = input ? json_dumps(input, JSON_COMPACT) : eng_xstrdup("{}");
    char *tags_s = json_object_size(tags) ? json_dumps(tags, JSON_COMPACT) : NULL;
    char start_at[40], start_in[24];
    const char *field;
    api_start_fields(body, start_at, start_in, &field); /* checked by api_route_run_post */
    const json_t *hook = json_object_get(body, "webhook");
    const char *hook_url = NULL, *hook_field;
    char *hook_events = NULL;
    if (hook)
        api_webhook_callback_parse(hook, false, &hook_url, &hook_events, &hook_field);
    const char *params[] = {call->tenant_s,
                            json_string_value(wf),
                            json_is_integer(version) ? version_s : NULL,
                            input_s,
                            priority_s,
                            idem ? json_string_value(idem)
                                 : api_req_header(call->req, "Idempotency-Key"),
                            checked,
                            *start_at ? start_at : NULL,
                            *start_in ? start_in : NULL,
                            tags_s,
                            hook_url,
                            hook_events};
    if (hook_url)
        /* the callback is set in the statement (and so the transaction) that creates the run */
        api_call_db(call,
                    "SELECT s.created, s.run FROM flowd_start_run($1, $2, $3, $4::jsonb, $5, $6,"
                    " $7, $8::timestamptz, $9, $10::jsonb) s"
                    " CROSS JOIN LATERAL flowd_run_callback_set($1, (s.run->>'id')::bigint, $11,"
                    " CASE WHEN $12::jsonb IS NULL THEN NULL"
                    " ELSE ARRAY(SELECT jsonb_array_elements_text($12::jsonb)) END)",
                    12, params, run_post_cb);
    else
        api_call_db(call,
                    "SELECT created, run"
                    "  FROM flowd_start_run($1, $2, $3, $4::jsonb, $5, $6, $7, $8::timestamptz, $9,"
                    "                       $10::jsonb)",
                    10, params, run_post_cb);
    free(hook_events);
    free(input_s);
    free(tags_s);
}

/* The first problem of a run's tags ({"name": "value"}, names as metadata names), or NULL: the
 * pointer (in fbuf) and *msg say what. */
static const char *runs_tags_check(const json_t *tags, char fbuf[80], const char **msg)
{
    if (!tags)
        return NULL;
    if (!json_is_object(tags))
        return *msg = "must be an object of names to string values", "/tags";
    if (json_object_size(tags) > WF_DEF_MAX_META)
        return *msg = "more than 16 tags", "/tags";
    const char *name;
    const json_t *v;
    json_object_foreach ((json_t *)tags, name, v) {
        snprintf(fbuf, 80, "/tags/%.64s", name);
        if (!wf_meta_name_ok(name, strlen(name)))
            return *msg = "tag names match [A-Za-z0-9_-]{1,64}", fbuf;
        if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 500 ||
            strlen(json_string_value(v)) != json_string_length(v))
            return *msg = "must be a string of 1 to 500 bytes", fbuf;
    }
    return NULL;
}

void api_route_run_post(api_call *call)
{
    static const char *const allowed[] = {"workflow", "version",         "input",    "priority",
                                          "tags",     "idempotency_key", "start_at", "start_in",
                                          "webhook",
                                          NULL};
    json_t *body = api_call_body_fields(call, allowed);
    if (!body)
        return;
    const json_t *wf = json_object_get(body, "workflow");
    const json_t *version = json_object_get(body, "version");
    const json_t *input = json_object_get(body, "input");
    const json_t *priority = json_object_get(body, "priority");
    const json_t *idem = json_object_get(body, "idempotency_key");
    char tag_field[80];
    const char *msg = NULL;
    const char *field = runs_tags_check(json_object_get(body, "tags"), tag_field, &msg);
    if (field)
        ; /* reported below */
    else if (!json_is_string(wf) || json_string_length(wf) == 0)
        field = "/workflow", msg = "must be a workflow name";
    else if (version && !json_is_null(version) &&
             (!json_is_integer(version) || json_integer_value(version) < 1))
        field = "/version", msg = "must be a positive integer";
    else if (input && !json_is_object(input))
        field = "/input", msg = "must be a JSON object";
    else if (priority && (!json_is_integer(priority) || json_integer_value(priority) < -1000 ||
                          json_integer_value(priority) > 1000))
        field = "/priority", msg = "must be an integer from -1000 to 1000";
    else if (idem && (!json_is_string(idem) || json_string_length(idem) == 0 ||
                      json_string_length(idem) > 200))
        field = "/idempotency_key", msg = "must be a string of 1 to 200 characters";
    char start_at[40], start_in[24];
    if (!field)
        msg = api_start_fields(body, start_at, start_in, &field);
    const json_t *hook = json_object_get(body, "webhook");
    const char *hook_url;
    char *hook_events = NULL;
    if (!field && hook)
        msg = api_webhook_callback_parse(hook, false, &hook_url, &hook_events, &field);
    free(hook_events);
    const char *header_key = api_req_header(call->req, "Idempotency-Key");
    if (!field && header_key && idem && strcmp(header_key, json_string_value(idem)) != 0)
        field = "/idempotency_key", msg = "differs from the Idempotency-Key header";
    if (!field && header_key && (strlen(header_key) == 0 || strlen(header_key) > 200))
        field = "Idempotency-Key", msg = "must be 1 to 200 characters";
    if (field) {
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request", msg, field);
        return;
    }
    char version_s[24];
    snprintf(version_s, sizeof version_s, "%lld", (long long)json_integer_value(version));
    api_input_check_query(call, body, json_string_value(wf),
                          json_is_integer(version) ? version_s : NULL, run_checked_cb);
}

/* The run's version token and, unless it equals $3 (the token of the JSON this loop has cached),
 * the run's JSON, both from one snapshot; no row when the tenant cannot see the run.
 * The token lists the xmin of the run's row and of each of its step rows: every committed UPDATE
 * writes a new row version with the xid of its transaction, so any change to what flowd_run_json
 * reads from them (state, progress, outputs, timestamps, attempts, ...) gives a token never seen
 * before, whether or not the change logged a run event (a snooze does not). Workflow rows never
 * change. The run's usage rows (run_usage) are in it the same way. A map step's item counts come
 * from map_items, which is not in the token: runs with a map step get a NULL token and are never
 * served from the cache. The shown state is in the token too: a delayed run turns from
 * "scheduled" to "queued" with no row changing. A step with a concurrency key shows the step it
 * queued behind (ckey_queue), usually a row of another run: that row's xmin is in the token. */
static const char run_get_sql[] =
    "SELECT f.token, CASE WHEN f.token = $3 THEN NULL ELSE flowd_run_json($1, $2) END"
    "  FROM (SELECT CASE WHEN NOT s.has_map"
    "                    THEN r.xmin::text || s.xmins || u.xmins"
    "                         || flowd_run_state(r.state, r.start_at) END AS token"
    "          FROM runs r CROSS JOIN LATERAL ("
    "               SELECT string_agg(':' || x.xmin::text"
    "                                 || CASE WHEN x.ckey IS NOT NULL THEN '<' || coalesce(("
    "                                        SELECT b.xmin::text FROM ckey_queue q"
    "                                          JOIN steps b ON b.id = q.behind"
    "                                         WHERE q.run_id = x.run_id AND q.step_id = x.id), '')"
    "                                    ELSE '' END, '' ORDER BY x.idx) AS xmins,"
    "                      coalesce(bool_or(x.kind = 'map'), false) AS has_map"
    "                 FROM steps x WHERE x.run_id = r.id) s"
    "         CROSS JOIN LATERAL ("
    "               SELECT coalesce(string_agg('/' || y.xmin::text, '' ORDER BY y.day), '')"
    "                      AS xmins FROM run_usage y WHERE y.run_id = r.id) u"
    "         WHERE r.id = $2 AND r.tenant_id = $1) f";

static void run_get_query(api_call *call);

static void run_get_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    if (PQntuples(res) == 0) {
        api_call_respond_error(call, 404, "not_found", "run not found", NULL);
        return;
    }
    api_runcache *cache = api_loop_runcache(call->lp);
    long long run = strtoll(call->params[0], NULL, 10);
    const char *token = PQgetisnull(res, 0, 0) ? NULL : PQgetvalue(res, 0, 0);
    if (!PQgetisnull(res, 0, 1)) {
        const char *json = PQgetvalue(res, 0, 1);
        size_t len = (size_t)PQgetlength(res, 0, 1);
        api_runcache_put(cache, call->tenant, run, token, json, len);
        api_call_respond_raw(call, 200, "application/json", json, len, NULL);
        return;
    }
    /* The database holds the version this loop has cached, unless another poll of this loop
     * replaced the entry while the check was in flight: then ask again. */
    size_t len;
    const char *json = api_runcache_json(cache, call->tenant, run, token, &len);
    if (json)
        api_call_respond_raw(call, 200, "application/json", json, len, NULL);
    else
        run_get_query(call);
}

static void run_get_query(api_call *call)
{
    long long run = strtoll(call->params[0], NULL, 10);
    const char *params[] = {call->tenant_s, call->params[0],
                            api_runcache_token(api_loop_runcache(call->lp), call->tenant, run)};
    api_call_read(call, run_get_sql, 3, params, run_get_cb);
}

void api_route_run_get(api_call *call)
{
    if (runs_path_id(call, call->params[0]))
        run_get_query(call);
}

/* GET /v1/runs/{id}/steps: the run's steps with the input each was given (sql/step_inputs.sql). */
void api_route_run_steps(api_call *call)
{
    if (!runs_path_id(call, call->params[0]))
        return;
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, "SELECT flowd_run_steps_json($1, $2)", 2, params, runs_row_json_cb);
}

void api_route_run_cancel(api_call *call)
{
    if (!runs_path_id(call, call->params[0]))
        return;
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, "SELECT flowd_cancel_run($1, $2)", 2, params, runs_row_json_cb);
}

static void run_retry_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    (void)res;
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, "SELECT flowd_run_json($1, $2)", 2, params, runs_row_json_cb);
}

void api_route_run_retry(api_call *call)
{
    if (!runs_path_id(call, call->params[0]))
        return;
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, "SELECT flowd_retry_run($1, $2)", 2, params, run_retry_cb);
}

/* ------------------------------------------------------------------------------ events -- */

static void event_post_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    api_call_respond_json(call, 202, json_pack("{s:i, s:i, s:i}", "resumed",
                                               atoi(PQgetvalue(res, 0, 0)), "cancelled",
                                               atoi(PQgetvalue(res, 0, 1)), "started",
                                               atoi(PQgetvalue(res, 0, 2))));
}

/* The event as flowd_event_to takes it, kept in call->data between the two statements. */
typedef struct event_post {
    char *name, *key, *data;
} event_post;

static void event_post_free(void *arg)
{
    event_post *ev = arg;
    free(ev->name);
    free(ev->key);
    free(ev->data);
    free(ev);
}

char *api_trigger_ids(api_call *call, const PGresult *triggers, const char *name,
                      const char *key, const char *data_json)
{
    json_t *data = json_loads(data_json, 0, NULL);
    char *ids = NULL;
    eng_err why;
    eng_rc rc = wf_trigger_check_rows(triggers, name, key, data, &ids, &why);
    json_decref(data);
    if (rc == ENG_EINVAL)
        api_call_respond_error(call, 422, "invalid_input", why.msg, why.field);
    else if (rc != ENG_OK)
        api_call_respond_err(call, &why);
    return ids;
}

/* The triggered versions: when every check passed, the event is applied starting exactly those
 * versions (engine/wf_trigger.h). */
static void event_triggers_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    const event_post *ev = call->data;
    char *ids = api_trigger_ids(call, res, ev->name, ev->key, ev->data);
    if (!ids)
        return;
    const char *params[] = {call->tenant_s, ev->name, ev->key, ev->data, ids};
    api_call_db(call, WF_TRIGGER_APPLY_SQL, 5, params, event_post_cb);
    free(ids);
}

void api_route_event_post(api_call *call)
{
    static const char *const allowed[] = {"name", "key", "data", NULL};
    json_t *body = api_call_body_fields(call, allowed);
    if (!body)
        return;
    const json_t *name = json_object_get(body, "name");
    const json_t *key = json_object_get(body, "key");
    const json_t *data = json_object_get(body, "data");
    const char *field = NULL, *msg = NULL;
    if (!json_is_string(name) || json_string_length(name) == 0 || json_string_length(name) > 200)
        field = "/name", msg = "must be an event name of 1 to 200 characters";
    else if ((!json_is_string(key) && !json_is_integer(key)) ||
             (json_is_string(key) && (json_string_length(key) == 0 || json_string_length(key) > 500)))
        field = "/key", msg = "must be a non-empty string or an integer";
    else if (data && !json_is_object(data) && !json_is_null(data))
        field = "/data", msg = "must be a JSON object";
    if (field) {
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request", msg, field);
        return;
    }
    char key_s[32];
    if (json_is_integer(key))
        snprintf(key_s, sizeof key_s, "%lld", (long long)json_integer_value(key));
    event_post *ev = eng_xmalloc(sizeof *ev);
    ev->name = eng_xstrdup(json_string_value(name));
    ev->key = eng_xstrdup(json_is_integer(key) ? key_s : json_string_value(key));
    ev->data = json_is_object(data) ? json_dumps(data, JSON_COMPACT) : eng_xstrdup("{}");
    json_decref(body);
    call->data = ev;
    call->data_free = event_post_free;
    const char *params[] = {call->tenant_s, ev->name};
    api_call_db(call, WF_TRIGGER_ROWS_SQL, 2, params, event_triggers_cb);
}

/* -------------------------------------------------------------------------- test clock -- */

static void clock_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    api_call_respond_json(call, 200, json_pack("{s:I}", "offset_ms",
                                               (json_int_t)strtoll(PQgetvalue(res, 0, 0), NULL, 10)));
}

void api_route_test_clock(api_call *call)
{
    static const char *const allowed[] = {"advance", NULL};
    json_t *body = api_call_body_fields(call, allowed);
    if (!body)
        return;
    int64_t ms;
    eng_err err;
    const char *adv = json_string_value(json_object_get(body, "advance"));
    if (!adv || eng_duration_parse(adv, &ms, &err) != ENG_OK) {
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request", "must be a duration such as \"3d\"",
                               "/advance");
        return;
    }
    json_decref(body);
    char ms_s[24];
    snprintf(ms_s, sizeof ms_s, "%lld", (long long)ms);
    const char *params[] = {ms_s};
    api_call_db(call, "SELECT flowd_clock_advance($1)", 1, params, clock_cb);
}
