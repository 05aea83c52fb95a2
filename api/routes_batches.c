/* api/routes_batches.c: batches (many runs of one workflow in one request and one transaction),
 * their progress and their results export, and the tenant's run listing.
 *
 * Exports stream one page of runs per statement and wait while the client has more than
 * API_EXPORT_HIGH_WATER bytes unread, so a 10,000-run batch never sits in memory at once. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "api/csv.h"
#include "engine/buf.h"
#include "engine/clock.h"
#include "engine/mem.h"
#include "engine/wf_def.h"

#define API_BATCH_MAX_INPUTS   10000
#define API_RUNS_DEFAULT_LIMIT 50
#define API_RUNS_MAX_LIMIT     500
#define API_RUNS_COUNT_CAP     100000 /* runs counted by state at most (flowd_runs_counts) */
#define API_META_MAX_VALUE     500
#define API_SEARCH_MAX         200 /* bytes of ?q: run_search keeps 200 characters of a value */
#define API_EXPORT_PAGE        500
#define API_EXPORT_HIGH_WATER  (512 * 1024)
#define API_EXPORT_WAIT_S      0.02

/* Parses a positive integer of at most max; false when s is not one. */
static bool batches_parse_pos(const char *s, long long max, long long *out)
{
    char *end;
    if (!s || *s < '0' || *s > '9')
        return false;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || errno == ERANGE || v < 1 || v > max)
        return false;
    *out = v;
    return true;
}

static void batches_row_json_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "batch");
}

/* --------------------------------------------------------------------------------- runs -- */

static void runs_list_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "runs");
}

/* A time filter (?created_after=...): RFC 3339, kept in the filter in one normal form. */
static bool runs_filter_time(json_t *filter, const char *name, const char *value)
{
    int64_t ms;
    if (eng_time_parse_rfc3339(value, &ms, NULL) != ENG_OK)
        return false;
    char iso[32];
    eng_time_format_rfc3339(ms, iso, sizeof iso);
    json_object_set_new(filter, name, json_string(iso));
    return true;
}

/* One ?meta.NAME=VALUE into filter's "meta" object; the message of what is wrong, or NULL. */
static const char *runs_filter_meta(json_t *filter, const char *name, const char *value)
{
    const char *key = name + 5; /* after "meta." */
    if (!wf_meta_name_ok(key, strlen(key)))
        return "metadata names match [A-Za-z0-9_-]{1,64}";
    if (!*value || strlen(value) > API_META_MAX_VALUE)
        return "must be a value of 1 to 500 bytes";
    json_t *meta = json_object_get(filter, "meta");
    if (!meta) {
        meta = json_object();
        json_object_set_new(filter, "meta", meta);
    }
    if (json_object_get(meta, key))
        return "given twice";
    if (json_object_size(meta) >= WF_DEF_MAX_META)
        return "too many metadata filters";
    json_object_set_new(meta, key, json_string(value));
    return NULL;
}

/* One filter parameter of the run list into filter; the message of what is wrong, or NULL (a
 * parameter the filters do not know, limit and cursor, is left to the caller). */
static const char *runs_filter_param(json_t *filter, const char *name, const char *value)
{
    static const char *const states[] = {"scheduled", "queued", "running",
                                         "succeeded", "failed",  "cancelled"};
    static const char *const times[] = {"created_after", "created_before", "finished_after",
                                        "finished_before"};
    long long v;
    if (strncmp(name, "meta.", 5) == 0)
        return runs_filter_meta(filter, name, value);
    if (json_object_get(filter, name))
        return "given twice";
    if (strcmp(name, "workflow") == 0) {
        if (!*value || strlen(value) > 200)
            return "must be a workflow name";
        json_object_set_new(filter, name, json_string(value));
    } else if (strcmp(name, "schedule") == 0) {
        if (!*value || strlen(value) > 200)
            return "must be a schedule name";
        json_object_set_new(filter, name, json_string(value));
    } else if (strcmp(name, "q") == 0) {
        json_t *q = *value && strlen(value) <= API_SEARCH_MAX ? json_string(value) : NULL;
        if (!q)
            return "must be UTF-8 text of 1 to 200 bytes";
        json_object_set_new(filter, name, q);
    } else if (strcmp(name, "failed_step") == 0) {
        if (!*value || strlen(value) > 64)
            return "must be a step key";
        json_object_set_new(filter, name, json_string(value));
    } else if (strcmp(name, "state") == 0) {
        size_t i = 0;
        while (i < ENG_ARRAY_LEN(states) && strcmp(states[i], value) != 0)
            i++;
        if (i == ENG_ARRAY_LEN(states))
            return "must be scheduled, queued, running, succeeded, failed or cancelled";
        json_object_set_new(filter, name, json_string(value));
    } else if (strcmp(name, "version") == 0) {
        if (!batches_parse_pos(value, INT32_MAX, &v))
            return "must be a positive integer";
        json_object_set_new(filter, name, json_integer(v));
    } else if (strcmp(name, "batch") == 0 || strcmp(name, "parent") == 0) {
        if (!batches_parse_pos(value, INT64_MAX, &v))
            return strcmp(name, "batch") == 0 ? "must be a batch id" : "must be a run id";
        json_object_set_new(filter, name, json_integer(v));
    } else {
        for (size_t i = 0; i < ENG_ARRAY_LEN(times); i++)
            if (strcmp(name, times[i]) == 0)
                return runs_filter_time(filter, name, value)
                           ? NULL
                           : "must be an RFC 3339 time such as 2026-11-23T14:00:00Z";
    }
    return NULL;
}

/* The filter object of the run list and its counts, from the request's query; NULL after
 * answering 400 naming the parameter. */
static json_t *runs_filter(api_call *call)
{
    json_t *filter = json_object();
    for (size_t i = 0;; i++) {
        const char *name = api_req_query_name(call->req, i);
        if (!name)
            return filter;
        const char *msg = runs_filter_param(filter, name, api_req_query_value(call->req, i));
        if (msg) {
            char field[80];
            snprintf(field, sizeof field, "?%.64s", name);
            json_decref(filter);
            api_call_respond_error(call, 400, "invalid_request", msg, field);
            return NULL;
        }
    }
}

void api_route_runs_list(api_call *call)
{
    json_t *filter = runs_filter(call);
    if (!filter)
        return;
    const char *limit_q = api_req_query(call->req, "limit");
    const char *cursor = api_req_query(call->req, "cursor");
    long long v, limit = API_RUNS_DEFAULT_LIMIT;
    const char *field = NULL, *msg = NULL;
    if (limit_q && !batches_parse_pos(limit_q, API_RUNS_MAX_LIMIT, &limit))
        field = "?limit", msg = "must be an integer from 1 to 500";
    else if (cursor && !batches_parse_pos(cursor, INT64_MAX, &v))
        field = "?cursor", msg = "must be a next_cursor value from an earlier page";
    if (field) {
        json_decref(filter);
        api_call_respond_error(call, 400, "invalid_request", msg, field);
        return;
    }
    char limit_s[24];
    snprintf(limit_s, sizeof limit_s, "%lld", limit);
    char *filter_s = json_dumps(filter, JSON_COMPACT);
    json_decref(filter);
    const char *params[] = {call->tenant_s, filter_s, cursor, limit_s};
    api_call_read(call, "SELECT flowd_runs_page($1, $2::jsonb, $3, $4)", 4, params, runs_list_cb);
    free(filter_s);
}

void api_route_runs_counts(api_call *call)
{
    json_t *filter = runs_filter(call);
    if (!filter)
        return;
    char *filter_s = json_dumps(filter, JSON_COMPACT);
    json_decref(filter);
    char cap_s[24];
    snprintf(cap_s, sizeof cap_s, "%d", API_RUNS_COUNT_CAP);
    const char *params[] = {call->tenant_s, filter_s, cap_s};
    api_call_read(call, "SELECT flowd_runs_counts($1, $2::jsonb, $3)", 3, params, runs_list_cb);
    free(filter_s);
}

/* ------------------------------------------------------------------------------ batches -- */

static void batch_post_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    bool created = PQgetvalue(res, 0, 0)[0] == 't';
    api_call_respond_json(call, created ? 201 : 200,
                          json_pack("{s:I, s:i}", "id",
                                    (json_int_t)strtoll(PQgetvalue(res, 0, 1), NULL, 10), "total",
                                    atoi(PQgetvalue(res, 0, 2))));
}

/* Every input checked (api_input_check): the batch is created from the version checked. */
static void batch_checked_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    const json_t *body = call->data;
    char checked_s[24];
    const char *checked;
    if (!api_input_check(call, res, json_object_get(body, "inputs"), true, checked_s, &checked))
        return;
    const json_t *version = json_object_get(body, "version");
    const json_t *idem = json_object_get(body, "idempotency_key");
    char version_s[24];
    snprintf(version_s, sizeof version_s, "%lld", (long long)json_integer_value(version));
    char *inputs = json_dumps(json_object_get(body, "inputs"), JSON_COMPACT);
    char start_at[40], start_in[24];
    const char *field;
    api_start_fields(body, start_at, start_in, &field); /* checked by api_route_batch_post */
    const json_t *hook = json_object_get(body, "webhook");
    const char *hook_url = NULL;
    char *hook_events = NULL;
    if (hook)
        api_webhook_callback_parse(hook, true, &hook_url, &hook_events, &field);
    const char *params[] = {call->tenant_s,
                            json_string_value(json_object_get(body, "workflow")),
                            json_is_integer(version) ? version_s : NULL,
                            inputs,
                            idem ? json_string_value(idem)
                                 : api_req_header(call->req, "Idempotency-Key"),
                            checked,
                            *start_at ? start_at : NULL,
                            *start_in ? start_in : NULL,
                            hook_url,
                            hook_events};
    if (hook_url)
        /* the callback is set in the statement (and so the transaction) that creates the batch */
        api_call_db(call,
                    "SELECT b.created, b.id, b.total"
                    "  FROM flowd_create_batch($1, $2, $3, $4::jsonb, $5, $6, $7::timestamptz, $8) b"
                    " CROSS JOIN LATERAL flowd_batch_callback_set($1, b.id, $9,"
                    " CASE WHEN $10::jsonb IS NULL THEN NULL"
                    " ELSE ARRAY(SELECT jsonb_array_elements_text($10::jsonb)) END)",
                    10, params, batch_post_cb);
    else
        api_call_db(call,
                    "SELECT created, id, total"
                    "  FROM flowd_create_batch($1, $2, $3, $4::jsonb, $5, $6, $7::timestamptz, $8)",
                    8, params, batch_post_cb);
    free(hook_events);
    free(inputs);
}

/* The first problem of a batch request body, or NULL; *field names it (points into fbuf). */
static const char *batch_check(const json_t *body, const char *header_key, char *fbuf, size_t fsize,
                               const char **field)
{
    const json_t *wf = json_object_get(body, "workflow");
    const json_t *version = json_object_get(body, "version");
    const json_t *inputs = json_object_get(body, "inputs");
    const json_t *idem = json_object_get(body, "idempotency_key");
    if (!json_is_string(wf) || json_string_length(wf) == 0 || json_string_length(wf) > 200)
        return *field = "/workflow", "must be a workflow name";
    if (version && !json_is_null(version) &&
        (!json_is_integer(version) || json_integer_value(version) < 1))
        return *field = "/version", "must be a positive integer";
    if (!json_is_array(inputs) || json_array_size(inputs) == 0 ||
        json_array_size(inputs) > API_BATCH_MAX_INPUTS)
        return *field = "/inputs", "must be an array of 1 to 10000 input objects";
    size_t i;
    const json_t *in;
    json_array_foreach (inputs, i, in) {
        if (!json_is_object(in)) {
            snprintf(fbuf, fsize, "/inputs/%zu", i);
            return *field = fbuf, "must be a JSON object";
        }
    }
    if (idem &&
        (!json_is_string(idem) || json_string_length(idem) == 0 || json_string_length(idem) > 200))
        return *field = "/idempotency_key", "must be a string of 1 to 200 characters";
    if (header_key && (strlen(header_key) == 0 || strlen(header_key) > 200))
        return *field = "Idempotency-Key", "must be 1 to 200 characters";
    if (header_key && idem && strcmp(header_key, json_string_value(idem)) != 0)
        return *field = "/idempotency_key", "differs from the Idempotency-Key header";
    char start_at[40], start_in[24];
    const char *msg = api_start_fields(body, start_at, start_in, field);
    const json_t *hook = json_object_get(body, "webhook");
    if (!msg && hook) {
        const char *url;
        char *events = NULL;
        msg = api_webhook_callback_parse(hook, true, &url, &events, field);
        free(events);
    }
    return msg;
}

void api_route_batch_post(api_call *call)
{
    static const char *const allowed[] = {"workflow", "version",  "inputs",  "idempotency_key",
                                          "start_at", "start_in", "webhook", NULL};
    json_t *body = api_call_body_fields(call, allowed);
    if (!body)
        return;
    const char *header_key = api_req_header(call->req, "Idempotency-Key");
    char fbuf[32];
    const char *field = NULL;
    const char *msg = batch_check(body, header_key, fbuf, sizeof fbuf, &field);
    if (msg) {
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request", msg, field);
        return;
    }
    const json_t *version = json_object_get(body, "version");
    char version_s[24];
    snprintf(version_s, sizeof version_s, "%lld", (long long)json_integer_value(version));
    api_input_check_query(call, body, json_string_value(json_object_get(body, "workflow")),
                          json_is_integer(version) ? version_s : NULL, batch_checked_cb);
}

/* Parses the {id} of a batch route; answers 404 when it cannot be one. */
static bool batches_path_id(api_call *call)
{
    long long id;
    if (batches_parse_pos(call->params[0], INT64_MAX, &id))
        return true;
    api_call_respond_error(call, 404, "not_found", "batch not found", NULL);
    return false;
}

void api_route_batch_get(api_call *call)
{
    if (!batches_path_id(call))
        return;
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_read(call, "SELECT flowd_batch_json($1, $2)", 2, params, batches_row_json_cb);
}

#define API_BATCHES_DEFAULT_LIMIT 20
#define API_BATCHES_MAX_LIMIT     100 /* each batch's runs are counted by state */

/* GET /v1/batches?before=&limit=: the tenant's batches, newest first, each with its progress. */
void api_route_batches_list(api_call *call)
{
    const char *before_q = api_req_query(call->req, "before");
    const char *limit_q = api_req_query(call->req, "limit");
    long long before = 0, limit = API_BATCHES_DEFAULT_LIMIT;
    if (before_q && !batches_parse_pos(before_q, INT64_MAX, &before)) {
        api_call_respond_error(call, 400, "invalid_request", "must be a batch id", "?before");
        return;
    }
    if (limit_q && !batches_parse_pos(limit_q, API_BATCHES_MAX_LIMIT, &limit)) {
        api_call_respond_error(call, 400, "invalid_request", "must be an integer from 1 to 100",
                               "?limit");
        return;
    }
    char before_s[24], limit_s[24];
    snprintf(before_s, sizeof before_s, "%lld", before);
    snprintf(limit_s, sizeof limit_s, "%lld", limit);
    const char *params[] = {call->tenant_s, before_q ? before_s : NULL, limit_s};
    api_call_read(call, "SELECT flowd_batches_json($1, $2, $3)", 3, params, batches_row_json_cb);
}

/* ------------------------------------------------------------------------------ exports -- */

typedef struct export_state {
    char tenant[24];
    char batch[24];
    char after[24]; /* last run id written */
    bool csv;
} export_state;

static void export_next(api_call *call);

/* The batch export's buffer is uncapped: api_csv_field cannot fail on it. */
static void csv_field(eng_buf *out, const char *s, bool last)
{
    eng_rc rc = api_csv_field(out, s, last);
    (void)rc;
}

static void export_page_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    export_state *st = api_stream_user(call);
    if (err) {
        /* The head is out, so the status cannot say it: the last record does, in the format's own
         * shape, and no client mistakes a cut-off export for a complete one. */
        json_t *e = json_pack("{s:s, s:s}", "code", "unavailable", "message", err->msg);
        char *text = json_dumps(e, JSON_COMPACT);
        eng_buf out;
        eng_buf_init(&out, 0);
        if (st->csv) {
            csv_field(&out, "", false);
            csv_field(&out, "error", false);
            csv_field(&out, "", false);
            csv_field(&out, "", false);
            csv_field(&out, text, true);
        } else {
            char *line = eng_xasprintf("{\"error\":%s}\n", text);
            eng_rc rc = eng_buf_append(&out, line, strlen(line));
            (void)rc;
            free(line);
        }
        api_req_stream_write(call->req, out.ptr, out.len);
        eng_buf_deinit(&out);
        free(text);
        json_decref(e);
        api_req_stream_end(call->req);
        api_call_free(call);
        return;
    }
    int n = PQntuples(res);
    eng_buf out;
    eng_buf_init(&out, 0);
    for (int i = 0; i < n; i++) {
        const char *id = PQgetvalue(res, i, 0), *state = PQgetvalue(res, i, 1);
        const char *input = PQgetvalue(res, i, 2);
        const char *output = PQgetisnull(res, i, 3) ? NULL : PQgetvalue(res, i, 3);
        const char *error = PQgetisnull(res, i, 4) ? NULL : PQgetvalue(res, i, 4);
        if (st->csv) {
            csv_field(&out, id, false);
            csv_field(&out, state, false);
            csv_field(&out, input, false);
            csv_field(&out, output ? output : "", false);
            csv_field(&out, error ? error : "", true);
        } else {
            /* every piece is JSON text already (jsonb output, a numeric id, a fixed state word) */
            char *line =
                eng_xasprintf("{\"id\":%s,\"input\":%s,\"state\":\"%s\",\"output\":%s,"
                              "\"error\":%s}\n",
                              id, input, state, output ? output : "null", error ? error : "null");
            eng_rc rc = eng_buf_append(&out, line, strlen(line));
            (void)rc;
            free(line);
        }
        snprintf(st->after, sizeof st->after, "%s", id);
    }
    if (out.len)
        api_req_stream_write(call->req, out.ptr, out.len);
    eng_buf_deinit(&out);
    if (n < API_EXPORT_PAGE) {
        api_req_stream_end(call->req);
        api_call_free(call);
        return;
    }
    export_next(call);
}

static void export_next(api_call *call)
{
    if (api_req_pending_bytes(call->req) > API_EXPORT_HIGH_WATER) {
        api_stream_after(call, API_EXPORT_WAIT_S, export_next);
        return;
    }
    export_state *st = api_stream_user(call);
    char limit[16];
    snprintf(limit, sizeof limit, "%d", API_EXPORT_PAGE);
    const char *params[] = {st->tenant, st->batch, st->after, limit};
    api_stream_db(call,
                  "SELECT id, state, input, output, error FROM flowd_batch_results($1, $2, $3, $4)",
                  4, params, export_page_cb);
}

static void export_found_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    if (PQntuples(res) == 0) {
        api_call_respond_error(call, 404, "not_found", "batch not found", NULL);
        return;
    }
    export_state *st = api_stream_user(call);
    if (st->csv) {
        static const char *const headers[] = {
            "Content-Disposition: attachment; filename=\"results.csv\"", NULL};
        api_call_stream_begin(call, 200, "text/csv; charset=utf-8", headers);
        api_req_stream_write(call->req, "id,state,input,output,error\r\n", 29);
    } else {
        api_call_stream_begin(call, 200, "application/x-ndjson", NULL);
    }
    export_next(call);
}

void api_route_batch_results(api_call *call)
{
    if (!batches_path_id(call))
        return;
    const char *format = api_req_query(call->req, "format");
    if (format && strcmp(format, "csv") != 0 && strcmp(format, "ndjson") != 0) {
        api_call_respond_error(call, 400, "invalid_request", "must be csv or ndjson", "?format");
        return;
    }
    export_state *st = eng_xcalloc(1, sizeof *st);
    snprintf(st->tenant, sizeof st->tenant, "%s", call->tenant_s);
    snprintf(st->batch, sizeof st->batch, "%s", call->params[0]);
    snprintf(st->after, sizeof st->after, "0");
    st->csv = format && strcmp(format, "csv") == 0;
    api_stream_start(call, st, free);
    const char *params[] = {st->tenant, st->batch};
    api_stream_db(call, "SELECT 1 FROM batches WHERE tenant_id = $1 AND id = $2", 2, params,
                  export_found_cb);
}
