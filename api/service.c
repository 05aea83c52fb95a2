/* api/service.c: loop threads, routing, authentication and the per-call plumbing (see api.h and
 * api_int.h). */
#include <ev.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "api/api.h"
#include "api/api_int.h"
#include "api/connlimit.h"
#include "api/ratelimit.h"
#include "api/runcache.h"
#include "api/runfeed.h"
#include "api/standby.h"
#include "engine/clock.h"
#include "engine/db.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "engine/wf_def.h"

#define API_AUTH_CACHE 256  /* entries per loop, direct-mapped by key digest */
#define API_AUTH_TTL_MS 2000 /* a revoked key stops working within this */

typedef struct api_auth_entry {
    char digest[65]; /* of an API key, or of a console session's token */
    long long tenant;
    bool admin;
    char csrf[33];   /* a session's CSRF value; empty for a key */
    int64_t expires_ms;
} api_auth_entry;

struct api_loop {
    api_service *svc;
    pthread_t thread;
    struct ev_loop *loop;
    ev_async stop_signal;
    ev_timer stop_deadline; /* streams that do not end by themselves are cut off at shutdown */
    api_http *http;
    eng_db **db;
    int ndb;
    api_auth_entry auth[API_AUTH_CACHE];
    api_runcache *runs; /* GET /v1/runs/{id} answers, validated per request */
    api_feed *feed;     /* this loop's side of the event-log feed of Server-Sent Events streams */
    api_standby_loop *standby; /* NULL without a read database */
};

struct api_service {
    api_service_opts opts;
    char *conninfo;
    char *listen;
    api_loop *loops;
    int nloops;
    int port;
    api_ratelimit *rl; /* shared by the loops */
    api_feed_hub *feeds; /* the event-log poller, shared by the loops (api/runfeed.h) */
    api_connlimit *connlimit; /* shared by the loops' servers */
    api_standby *standby;     /* NULL without a read database */
};

typedef struct api_route {
    const char *method;
    const char *pattern; /* segments; "{}" captures one */
    api_route_fn *fn;
    bool open;           /* no key needed */
    const char *id;      /* the first "{}" is the id of this (a run, a batch): a positive bigint */
    const char *const *query; /* query parameters it reads (NULL-terminated); NULL: none */
} api_route;

static void api_route_healthz(api_call *call);
static void api_route_readyz(api_call *call);

#define Q(...) ((const char *const[]){__VA_ARGS__, NULL})
/* The filters of the run list and its counts (api/routes_batches.c) */
#define API_RUNS_FILTERS                                                                      \
    "workflow", "version", "state", "batch", "parent", "schedule", "failed_step",               \
        "created_after", "created_before", "finished_after", "finished_before", "meta.", "q"
/* Webhook routes take the query their provider's configuration carries. */
static const char *const api_query_any[] = {NULL};

static const api_route api_routes[] = {
    {"GET", "/healthz", api_route_healthz, true, NULL, NULL},
    {"GET", "/readyz", api_route_readyz, true, NULL, NULL},
    {"GET", "/metrics", api_route_metrics, true, NULL, NULL},
    {"GET", "/v1/openapi.json", api_route_openapi, true, NULL, NULL},
    {"GET", "/v1/schemas/workflow.json", api_route_workflow_schema, true, NULL, NULL},
    {"GET", "/v1/workflows", api_route_workflows_list, false, NULL, NULL},
    {"PUT", "/v1/workflows/{}", api_route_workflow_put, false, NULL, NULL},
    {"GET", "/v1/workflows/{}", api_route_workflow_get, false, NULL, Q("version")},
    {"POST", "/v1/runs", api_route_run_post, false, NULL, NULL},
    /* before /v1/runs/{}, which would take "counts" for a run id */
    {"GET", "/v1/runs/counts", api_route_runs_counts, false, NULL, Q(API_RUNS_FILTERS)},
    {"GET", "/v1/runs/{}", api_route_run_get, false, "run", NULL},
    {"POST", "/v1/runs/{}/cancel", api_route_run_cancel, false, "run", NULL},
    {"POST", "/v1/runs/{}/retry", api_route_run_retry, false, "run", NULL},
    {"GET", "/v1/runs/{}/sequencer.csv", api_route_run_sequencer_csv, false, "run", NULL},
    {"POST", "/v1/events", api_route_event_post, false, NULL, NULL},
    {"POST", "/v1/test/clock", api_route_test_clock, false, NULL, NULL},
    {"GET", "/v1/runs", api_route_runs_list, false, NULL,
     Q(API_RUNS_FILTERS, "limit", "cursor")},
    {"GET", "/v1/runs/{}/events", api_route_run_events, false, "run", Q("after", "limit")},
    {"GET", "/v1/runs/{}/sends", api_route_run_sends, false, "run", NULL},
    {"GET", "/v1/runs/{}/steps", api_route_run_steps, false, "run", NULL},
    {"POST", "/v1/batches", api_route_batch_post, false, NULL, NULL},
    {"GET", "/v1/batches", api_route_batches_list, false, NULL, Q("before", "limit")},
    {"GET", "/v1/batches/{}", api_route_batch_get, false, "batch", NULL},
    {"GET", "/v1/batches/{}/results", api_route_batch_results, false, "batch", Q("format")},
    {"POST", "/v1/tenants", api_route_tenant_post, false, NULL, NULL},
    {"POST", "/v1/keys", api_route_key_post, false, NULL, NULL},
    {"DELETE", "/v1/keys/{}", api_route_key_delete, false, "key", NULL},
    {"GET", "/v1/tenants/{}/quotas", api_route_quotas_get, false, NULL, NULL},
    {"PUT", "/v1/tenants/{}/quotas", api_route_quotas_put, false, NULL, NULL},
    /* signature-verified */
    {"POST", "/v1/hooks/twilio", api_route_hook_twilio, true, NULL, api_query_any},
    {"POST", "/v1/hooks/sendgrid", api_route_hook_sendgrid, true, NULL, api_query_any},
    {"POST", "/v1/hooks/whatsapp", api_route_hook_whatsapp, true, NULL, api_query_any},
    {"GET", "/v1/hooks/whatsapp", api_route_hook_whatsapp_verify, true, NULL, api_query_any},
    {"POST", "/v1/hooks/custom/{}", api_route_custom_hook_post, true, NULL, api_query_any},
    {"GET", "/v1/hooks/custom", api_route_custom_hooks_list, false, NULL, NULL},
    {"PUT", "/v1/hooks/custom/{}", api_route_custom_hook_put, false, NULL, NULL},
    {"GET", "/v1/hooks/custom/{}", api_route_custom_hook_get, false, NULL, NULL},
    {"DELETE", "/v1/hooks/custom/{}", api_route_custom_hook_delete, false, NULL, NULL},
    {"GET", "/v1/outbox", api_route_outbox_list, false, NULL, Q("run", "after", "limit")},
    {"POST", "/v1/sends/{}/outcome", api_route_send_outcome, false, NULL, NULL},
    {"GET", "/v1/rate-limits", api_route_rate_limits_list, false, NULL, NULL},
    {"PUT", "/v1/rate-limits/{}", api_route_rate_limit_put, false, NULL, NULL},
    {"DELETE", "/v1/rate-limits/{}", api_route_rate_limit_delete, false, NULL, NULL},
    {"GET", "/v1/usage", api_route_usage, false, NULL,
     Q("from", "to", "group_by", "format", "limit")},
    {"GET", "/v1/workers", api_route_workers, false, NULL, NULL},
    {"GET", "/v1/queue", api_route_queue, false, NULL, NULL},
    {"GET", "/v1/prices", api_route_prices_list, false, NULL, NULL},
    {"PUT", "/v1/prices", api_route_price_put, false, NULL, NULL},
    {"GET", "/v1/providers", api_route_providers_list, false, NULL, NULL},
    {"PUT", "/v1/providers/{}", api_route_provider_put, false, NULL, NULL},
    {"DELETE", "/v1/providers/{}", api_route_provider_delete, false, NULL, NULL},
    {"POST", "/v1/suppressions", api_route_suppression_post, false, NULL, NULL},
    {"GET", "/v1/suppressions", api_route_suppressions_list, false, NULL,
     Q("channel", "limit", "cursor")},
    {"DELETE", "/v1/suppressions/{}/{}", api_route_suppression_delete, false, NULL, NULL},
    {"POST", "/v1/webhook-endpoints", api_route_webhook_endpoint_post, false, NULL, NULL},
    {"GET", "/v1/webhook-endpoints", api_route_webhook_endpoints_list, false, NULL, NULL},
    {"GET", "/v1/webhook-endpoints/{}", api_route_webhook_endpoint_get, false,
     "webhook endpoint", NULL},
    {"PATCH", "/v1/webhook-endpoints/{}", api_route_webhook_endpoint_patch, false,
     "webhook endpoint", NULL},
    {"DELETE", "/v1/webhook-endpoints/{}", api_route_webhook_endpoint_delete, false,
     "webhook endpoint", NULL},
    {"POST", "/v1/webhook-endpoints/{}/pause", api_route_webhook_endpoint_pause, false,
     "webhook endpoint", NULL},
    {"POST", "/v1/webhook-endpoints/{}/resume", api_route_webhook_endpoint_resume, false,
     "webhook endpoint", NULL},
    {"POST", "/v1/webhook-endpoints/{}/rotate", api_route_webhook_endpoint_rotate, false,
     "webhook endpoint", NULL},
    {"POST", "/v1/webhook-callback-secret", api_route_webhook_callback_secret, false, NULL, NULL},
    {"GET", "/v1/webhook-deliveries", api_route_webhook_deliveries_list, false, NULL,
     Q("endpoint", "run", "state", "before", "limit")},
    {"POST", "/v1/webhook-deliveries/{}/redeliver", api_route_webhook_redeliver, false,
     "webhook delivery", NULL},
    {"GET", "/v1/schedules", api_route_schedules_list, false, NULL, NULL},
    {"PUT", "/v1/schedules/{}", api_route_schedule_put, false, NULL, NULL},
    {"GET", "/v1/schedules/{}", api_route_schedule_get, false, NULL, NULL},
    {"DELETE", "/v1/schedules/{}", api_route_schedule_delete, false, NULL, NULL},
    {"POST", "/v1/schedules/{}/pause", api_route_schedule_pause, false, NULL, NULL},
    {"POST", "/v1/schedules/{}/resume", api_route_schedule_resume, false, NULL, NULL},
    {"POST", "/v1/schedules/{}/trigger", api_route_schedule_trigger, false, NULL, NULL},
    /* the browser console: its files, and sign-in (the key is checked by the route itself) */
    {"GET", "/", api_route_console_index, true, NULL, NULL},
    {"GET", "/console/{}", api_route_console_file, true, NULL, NULL},
    {"POST", "/v1/console/session", api_route_console_session_post, true, NULL, NULL},
    {"GET", "/v1/console/session", api_route_console_session_get, false, NULL, NULL},
    {"DELETE", "/v1/console/session", api_route_console_session_delete, false, NULL, NULL},
};
#undef Q

/* ------------------------------------------------------------------------------- calls -- */

static void call_abort_cb(void *arg)
{
    api_call *call = arg;
    call->req = NULL;
    if (call->dbop) /* the client is gone: what it asked for must not happen later */
        eng_db_cancel(call->dbop);
}

/* Every answer a call gives is counted here (handlers answer only through api_call_*); what the
 * http layer answers by itself (400 for unparsable requests, 413, 431) is not. */
static void call_count(const api_call *call, int status)
{
    if (call->req)
        eng_metrics_http_request(api_req_method(call->req), call->route, status,
                                 api_req_elapsed_s(call->req));
}

void api_call_free(api_call *call)
{
    if (!call)
        return;
    if (call->data_free)
        call->data_free(call->data);
    free(call->param_buf);
    free(call);
}

void api_call_respond_json(api_call *call, int status, json_t *body)
{
    call_count(call, status);
    if (call->req)
        api_req_respond_json(call->req, status, body);
    else
        json_decref(body);
    api_call_free(call);
}

void api_call_respond_error(api_call *call, int status, const char *code, const char *msg,
                            const char *field)
{
    call_count(call, status);
    if (call->req)
        api_req_respond_error(call->req, status, code, msg, field && *field ? field : NULL);
    api_call_free(call);
}

#define API_RETRY_AFTER_S "2" /* about the longest a connection waits between attempts */

/* The database cannot be reached (or the connection was lost under the request): a prompt answer
 * the client can retry on, in place of a wait as long as the outage. */
static void call_unavailable(api_call *call)
{
    static const char body[] = "{\"error\":{\"code\":\"unavailable\",\"message\":\"the database is "
                               "unavailable; try again shortly\"}}";
    static const char *const headers[] = {"Retry-After: " API_RETRY_AFTER_S, NULL};
    api_call_respond_raw(call, 503, "application/json", body, sizeof body - 1, headers);
}

/* 429 quota_exceeded from the JSON a quota's refusal carries as its message (sql/quotas.sql): the
 * quota, its limit, what is used and when it resets, in the body and as headers. */
static void call_quota_exceeded(api_call *call, const char *detail)
{
    json_t *d = json_loads(detail, 0, NULL);
    const char *quota = json_string_value(json_object_get(d, "quota"));
    const char *resets = json_string_value(json_object_get(d, "resets_at"));
    json_int_t limit = json_integer_value(json_object_get(d, "limit"));
    json_int_t used = json_integer_value(json_object_get(d, "used"));
    double retry = json_number_value(json_object_get(d, "retry_after_s"));
    if (!quota || !resets) {
        json_decref(d);
        log_error("quota refusal without its detail", LOG_S("detail", detail));
        api_call_respond_error(call, 500, "internal", "internal error", NULL);
        return;
    }
    char msg[200];
    snprintf(msg, sizeof msg, "quota %s is used up: %lld of %lld; it resets at %s", quota,
             (long long)used, (long long)limit, resets);
    json_t *body = json_pack("{s:{s:s, s:s, s:s, s:I, s:I, s:s}}", "error", "code",
                             "quota_exceeded", "message", msg, "quota", quota, "limit", limit,
                             "used", used, "resets_at", resets);
    char *text = json_dumps(body, JSON_COMPACT);
    char h[5][96];
    snprintf(h[0], sizeof h[0], "Retry-After: %.0f", retry > 1 ? retry : 1);
    snprintf(h[1], sizeof h[1], "X-Quota-Name: %s", quota);
    snprintf(h[2], sizeof h[2], "X-Quota-Limit: %lld", (long long)limit);
    snprintf(h[3], sizeof h[3], "X-Quota-Used: %lld", (long long)used);
    snprintf(h[4], sizeof h[4], "X-Quota-Reset: %s", resets);
    const char *const headers[] = {h[0], h[1], h[2], h[3], h[4], NULL};
    api_call_respond_raw(call, 429, "application/json", text, strlen(text), headers);
    free(text);
    json_decref(body);
    json_decref(d);
}

void api_call_respond_err(api_call *call, const eng_err *err)
{
    if (strcmp(err->sqlstate, "FL429") == 0) {
        call_quota_exceeded(call, err->msg);
        return;
    }
    static const struct {
        eng_rc rc;
        int status;
        const char *code;
    } map[] = {
        {ENG_EINVAL, 422, "invalid_request"}, {ENG_ENOTFOUND, 404, "not_found"},
        {ENG_ECONFLICT, 409, "conflict"},     {ENG_ETOOBIG, 413, "too_large"},
        {ENG_ETIMEOUT, 503, "timeout"},       {ENG_EDB_RETRY, 503, "unavailable"},
    };
    int status = 500;
    const char *code = "internal";
    for (size_t i = 0; i < ENG_ARRAY_LEN(map); i++)
        if (map[i].rc == err->rc) {
            status = map[i].status;
            code = map[i].code;
        }
    if (err->rc == ENG_EDB_RETRY) { /* the driver's words stay in the log */
        log_info("request failed", LOG_S("rc", eng_rc_name(err->rc)),
                 LOG_S("sqlstate", err->sqlstate), LOG_S("error", err->msg));
        call_unavailable(call);
        return;
    }
    /* the database's own state for an idempotency key reused with another request */
    const char *field = err->field;
    if (strcmp(err->sqlstate, "FL409") == 0)
        code = "idempotency_conflict", field = "Idempotency-Key";
    if (status >= 500)
        log_error("request failed", LOG_S("rc", eng_rc_name(err->rc)),
                  LOG_S("sqlstate", err->sqlstate), LOG_S("error", err->msg));
    api_call_respond_error(call, status, code, status == 500 ? "internal error" : err->msg, field);
}

void api_call_respond_row_json(api_call *call, int status, const PGresult *res, const char *what)
{
    if (PQntuples(res) == 0 || PQgetisnull(res, 0, 0)) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s not found", what);
        api_call_respond_error(call, 404, "not_found", msg, NULL);
        return;
    }
    const char *text = PQgetvalue(res, 0, 0);
    api_call_respond_raw(call, status, "application/json", text, strlen(text), NULL);
}

void api_call_respond_raw(api_call *call, int status, const char *content_type, const char *body,
                          size_t len, const char *const *extra_headers)
{
    call_count(call, status);
    if (call->req)
        api_req_respond(call->req, status, content_type, body, len, extra_headers);
    api_call_free(call);
}

void api_call_stream_begin(api_call *call, int status, const char *content_type,
                           const char *const *extra_headers)
{
    call_count(call, status);
    api_req_stream_begin(call->req, status, content_type, extra_headers);
}

typedef struct call_op {
    api_call *call;
    api_call_db_cb *cb;
} call_op;

static void call_db_cb(void *arg, const eng_err *err, const PGresult *res)
{
    call_op *op = arg;
    api_call *call = op->call;
    api_call_db_cb *cb = op->cb;
    free(op);
    call->dbop = NULL;
    if (call->tenant && call->lp->svc->standby)
        api_standby_fence(call->lp->svc->standby, call->tenant);
    eng_log_request_set(call->req_id);
    if (!call->req)
        api_call_free(call);
    else
        cb(call, err, res);
    eng_log_request_set(NULL);
}

/* The loop's connection that is up with the fewest statements queued. */
eng_db *api_loop_db(const api_loop *lp)
{
    eng_db *best = NULL;
    for (int i = 0; i < lp->ndb; i++)
        if (!eng_db_down(lp->db[i]) &&
            (!best || eng_db_pending(lp->db[i]) < eng_db_pending(best)))
            best = lp->db[i];
    if (!best) /* every connection is down: eng_db answers it from the loop (fail_when_down) */
        best = lp->db[0];
    return best;
}

api_standby_loop *api_loop_standby(const api_loop *lp)
{
    return lp->standby;
}

void api_call_db(api_call *call, const char *sql, int nparams, const char *const *params,
                 api_call_db_cb *cb)
{
    call_op *op = eng_xmalloc(sizeof *op);
    *op = (call_op){.call = call, .cb = cb};
    call->dbop = eng_db_query(api_loop_db(call->lp), sql, nparams, params, call_db_cb, op);
}

json_t *api_call_body_object(api_call *call)
{
    const char *ctype = api_req_header(call->req, "Content-Type");
    if (ctype && (strncasecmp(ctype, "application/json", 16) != 0 ||
                  (ctype[16] && ctype[16] != ';' && ctype[16] != ' '))) {
        api_call_respond_error(call, 415, "unsupported_media_type",
                               "request bodies must be application/json", NULL);
        return NULL;
    }
    size_t len;
    const char *body = api_req_body(call->req, &len);
    json_error_t jerr;
    json_t *obj = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj) {
        char msg[256];
        snprintf(msg, sizeof msg, "body is not valid JSON: %.160s at line %d column %d", jerr.text,
                 jerr.line, jerr.column);
        api_call_respond_error(call, 400, "invalid_json", msg, NULL);
        return NULL;
    }
    if (!json_is_object(obj)) {
        json_decref(obj);
        api_call_respond_error(call, 400, "invalid_request", "body must be a JSON object", "");
        return NULL;
    }
    return obj;
}

static bool call_only_fields(api_call *call, const json_t *obj, const char *const *allowed)
{
    const char *name;
    const json_t *v;
    json_object_foreach((json_t *)obj, name, v) {
        size_t i = 0;
        while (allowed[i] && strcmp(allowed[i], name) != 0)
            i++;
        if (!allowed[i]) {
            char field[128];
            snprintf(field, sizeof field, "/%.120s", name);
            api_call_respond_error(call, 422, "invalid_request", "unknown field", field);
            return false;
        }
    }
    return true;
}

json_t *api_call_body_fields(api_call *call, const char *const *allowed)
{
    json_t *body = api_call_body_object(call);
    if (body && !call_only_fields(call, body, allowed)) {
        json_decref(body);
        return NULL;
    }
    return body;
}

struct ev_loop *api_loop_ev(const api_loop *lp)
{
    return lp->loop;
}

api_runcache *api_loop_runcache(const api_loop *lp)
{
    return lp->runs;
}

api_feed *api_loop_feed(const api_loop *lp)
{
    return lp->feed;
}

double api_loop_sse_heartbeat_s(const api_loop *lp)
{
    return lp->svc->opts.sse_heartbeat_s;
}

bool api_route_at(size_t i, const char **method, const char **pattern)
{
    if (i >= ENG_ARRAY_LEN(api_routes))
        return false;
    *method = api_routes[i].method;
    *pattern = api_routes[i].pattern;
    return true;
}

/* -------------------------------------------------------------------------- routing -- */

/* Liveness: the process answers, whatever the database does. */
static void api_route_healthz(api_call *call)
{
    /* the server put the database's clock in its own mode at start (flowd_clock_start) */
    api_call_respond_json(call, 200, json_pack("{s:s, s:b}", "status", "ok", "test_clock",
                                               call->lp->svc->opts.test_clock));
}

static void readyz_done(api_call *call, const eng_err *err, const PGresult *res)
{
    (void)res;
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_json(call, 200, json_pack("{s:s}", "status", "ready"));
}

/* Readiness: a round trip to the database (503 with Retry-After while it is unreachable). */
static void api_route_readyz(api_call *call)
{
    api_call_db(call, "SELECT 1", 0, NULL, readyz_done);
}

/* Matches path against pattern, capturing "{}" segments into call->params. */
static bool route_match(const char *pattern, const char *path, api_call *call)
{
    size_t plen = strlen(path);
    char *buf = eng_xmalloc(plen + 1);
    size_t used = 0;
    int nparams = 0;
    const char *p = pattern, *s = path;
    while (*p && *s) {
        if (p[0] == '{' && p[1] == '}') {
            const char *end = strchr(s, '/');
            size_t n = end ? (size_t)(end - s) : strlen(s);
            if (n == 0 || nparams == (int)ENG_ARRAY_LEN(call->params)) {
                free(buf);
                return false;
            }
            memcpy(buf + used, s, n);
            buf[used + n] = '\0';
            call->params[nparams++] = buf + used;
            used += n + 1;
            s += n;
            p += 2;
        } else if (*p == *s) {
            p++;
            s++;
        } else {
            free(buf);
            return false;
        }
    }
    if (*p || *s) {
        free(buf);
        return false;
    }
    free(call->param_buf);
    call->param_buf = buf;
    return true;
}

typedef struct auth_state {
    const api_route *route;
    char digest[65];
} auth_state;

static void route_admitted(api_call *call, const void *route)
{
    ((const api_route *)route)->fn(call);
}

static void api_dispatch(api_call *call, const api_route *route)
{
    call->data_free = NULL;
    call->data = NULL;
    snprintf(call->tenant_s, sizeof call->tenant_s, "%lld", call->tenant);
    if (!route->open && !api_ratelimit_admit(call->lp->svc->rl, call, route_admitted, route))
        return;
    route->fn(call);
}

/* The cache slot of a key digest (hex): its first byte. */
static api_auth_entry *auth_slot(api_loop *lp, const char *digest)
{
    static const char hex[] = "0123456789abcdef";
    size_t hi = (size_t)(strchr(hex, digest[0]) - hex), lo = (size_t)(strchr(hex, digest[1]) - hex);
    return &lp->auth[(hi * 16 + lo) % API_AUTH_CACHE];
}

static void auth_admit(api_call *call, const api_route *route);

static void auth_done(api_call *call, const eng_err *err, const PGresult *res)
{
    auth_state *st = call->data;
    const api_route *route = st->route;
    call->data = NULL;
    call->data_free = NULL;
    if (err) {
        free(st);
        api_call_respond_err(call, err);
        return;
    }
    if (PQntuples(res) == 0) {
        free(st);
        api_call_respond_error(call, 401, "unauthorized",
                               call->session ? "the console session ended: sign in again"
                                             : "unknown or revoked API key",
                               NULL);
        return;
    }
    call->tenant = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    call->admin = strcmp(PQgetvalue(res, 0, 1), "admin") == 0;
    if (PQnfields(res) > 2) /* a console session */
        snprintf(call->csrf, sizeof call->csrf, "%s", PQgetvalue(res, 0, 2));
    api_auth_entry *e = auth_slot(call->lp, st->digest);
    memcpy(e->digest, st->digest, sizeof e->digest);
    e->tenant = call->tenant;
    e->admin = call->admin;
    memcpy(e->csrf, call->csrf, sizeof e->csrf);
    e->expires_ms = eng_clock_wall_ms() + API_AUTH_TTL_MS;
    free(st);
    auth_admit(call, route);
}

const char *api_call_session_token(const api_call *call)
{
    if (!call->req || api_req_header(call->req, "Authorization"))
        return NULL;
    const char *c = api_req_header(call->req, "Cookie");
    static const char name[] = API_SESSION_COOKIE "=";
    for (const char *p = c; p && *p;) {
        while (*p == ' ' || *p == ';')
            p++;
        if (strncmp(p, name, sizeof name - 1) == 0) {
            /* the token is 64 hex digits; anything else is no session of ours */
            const char *v = p + sizeof name - 1;
            size_t n = strspn(v, "0123456789abcdef");
            return n == 64 && (v[n] == '\0' || v[n] == ';' || v[n] == ' ') ? v : NULL;
        }
        p = strchr(p, ';');
    }
    return NULL;
}

/* A console session may change something only with its CSRF value in X-CSRF-Token: a page of
 * another site can make the browser send the cookie (not with SameSite=Strict, but older
 * browsers ignore it), never read the value. */
static void auth_admit(api_call *call, const api_route *route)
{
    const char *m = api_req_method(call->req);
    if (call->session && strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0) {
        const char *sent = api_req_header(call->req, "X-CSRF-Token");
        size_t n = strlen(call->csrf);
        bool ok = sent && n > 0 && strlen(sent) == n;
        unsigned char diff = 0;
        for (size_t i = 0; ok && i < n; i++)
            diff |= (unsigned char)(sent[i] ^ call->csrf[i]);
        if (!ok || diff) {
            api_call_respond_error(call, 403, "csrf",
                                   "a console session's changes need its X-CSRF-Token header",
                                   "X-CSRF-Token");
            return;
        }
    }
    api_dispatch(call, route);
}

static void api_authenticate(api_call *call, const api_route *route)
{
    const char *h = api_req_header(call->req, "Authorization");
    const char *token = api_call_session_token(call);
    const char *secret = token;
    size_t secret_len = token ? 64 : 0;
    if (!token && (!h || strncasecmp(h, "Bearer ", 7) != 0 || !h[7])) {
        api_call_respond_error(call, 401, "unauthorized",
                               "missing Authorization: Bearer <key> header", NULL);
        return;
    }
    if (!token) {
        secret = h + 7;
        secret_len = strlen(secret);
    }
    call->session = token != NULL;
    char *digest = wf_sha256_hex(secret, secret_len);
    api_auth_entry *e = auth_slot(call->lp, digest);
    if (e->expires_ms > eng_clock_wall_ms() && strcmp(e->digest, digest) == 0 &&
        (e->csrf[0] != '\0') == call->session) {
        free(digest);
        call->tenant = e->tenant;
        call->admin = e->admin;
        memcpy(call->csrf, e->csrf, sizeof call->csrf);
        auth_admit(call, route);
        return;
    }
    auth_state *st = eng_xcalloc(1, sizeof *st);
    st->route = route;
    snprintf(st->digest, sizeof st->digest, "%s", digest);
    free(digest);
    call->data = st;
    call->data_free = free;
    const char *params[] = {st->digest};
    if (call->session)
        api_call_db(call,
                    "SELECT tenant_id, role, csrf FROM flowd_console_session(decode($1, 'hex'))",
                    1, params, auth_done);
    else
        api_call_db(call,
                    "SELECT tenant_id, role FROM api_keys WHERE key_hash = decode($1, 'hex') "
                    "AND revoked_at IS NULL",
                    1, params, auth_done);
}

static void api_route_call(api_loop *lp, api_call *call);

static void api_handle(void *arg, api_req *req)
{
    api_loop *lp = arg;
    api_call *call = eng_xcalloc(1, sizeof *call);
    call->req = req;
    call->lp = lp;
    snprintf(call->req_id, sizeof call->req_id, "%s", api_req_id(req));
    api_req_on_abort(req, call_abort_cb, call);
    eng_log_request_set(call->req_id);
    api_route_call(lp, call);
    eng_log_request_set(NULL);
}

/* Whether s is a positive bigint written plainly (no sign, space or leading zero). */
static bool route_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 19 || s[0] == '0')
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return n < 19 || strcmp(s, "9223372036854775807") <= 0;
}

/* Whether a route reading known takes the parameter name; known ending in '.' is a family
 * ("meta." takes meta.lead, meta.phone, ...). */
static bool route_query_known(const char *known, const char *name)
{
    size_t n = strlen(known);
    if (n > 0 && known[n - 1] == '.')
        return strncmp(known, name, n) == 0 && name[n];
    return strcmp(known, name) == 0;
}

/* The first query parameter of req that route does not read, or NULL. */
static const char *route_unknown_query(const api_route *route, const api_req *req)
{
    if (route->query == api_query_any)
        return NULL;
    for (size_t i = 0;; i++) {
        const char *name = api_req_query_name(req, i);
        if (!name)
            return NULL;
        size_t k = 0;
        while (route->query && route->query[k] && !route_query_known(route->query[k], name))
            k++;
        if (!route->query || !route->query[k])
            return name;
    }
}

/* Answers 405 with the methods path has (HEAD wherever GET is). */
static void route_not_allowed(api_loop *lp, api_call *call, const char *path)
{
    char allow[96] = "Allow: ";
    size_t off = strlen(allow);
    for (size_t i = 0; i < ENG_ARRAY_LEN(api_routes); i++) {
        const api_route *r = &api_routes[i];
        if ((r->fn == api_route_test_clock && !lp->svc->opts.test_clock) ||
            !route_match(r->pattern, path, call))
            continue;
        off += (size_t)snprintf(allow + off, sizeof allow - off, "%s%s", off > 7 ? ", " : "",
                                r->method);
        if (strcmp(r->method, "GET") == 0)
            off += (size_t)snprintf(allow + off, sizeof allow - off, ", HEAD");
    }
    const char *headers[] = {allow, NULL};
    json_t *body = json_pack("{s:{s:s, s:s}}", "error", "code", "method_not_allowed", "message",
                             "method not allowed on this route");
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    api_call_respond_raw(call, 405, "application/json", text, strlen(text), headers);
    free(text);
}

/* Finds the route of call's request and runs it (or answers 404/405). HEAD runs the GET route; the
 * HTTP layer sends its headers without the body. */
static void api_route_call(api_loop *lp, api_call *call)
{
    api_req *req = call->req;
    const char *method = api_req_method(req), *path = api_req_path(req);
    if (strcmp(method, "HEAD") == 0)
        method = "GET";
    bool path_known = false;
    for (size_t i = 0; i < ENG_ARRAY_LEN(api_routes); i++) {
        const api_route *r = &api_routes[i];
        if (r->fn == api_route_test_clock && !lp->svc->opts.test_clock)
            continue;
        if (!route_match(r->pattern, path, call))
            continue;
        path_known = true;
        if (strcmp(r->method, method) != 0)
            continue;
        call->route = r->pattern;
        if (r->id && !route_id_ok(call->params[0])) {
            char msg[64];
            snprintf(msg, sizeof msg, "%s not found", r->id);
            api_call_respond_error(call, 404, "not_found", msg, NULL);
            return;
        }
        const char *unknown = route_unknown_query(r, req);
        if (unknown) {
            char field[80];
            snprintf(field, sizeof field, "?%.64s", unknown);
            api_call_respond_error(call, 400, "invalid_request", "unknown query parameter", field);
            return;
        }
        if (r->open)
            api_dispatch(call, r);
        else
            api_authenticate(call, r);
        return;
    }
    if (path_known)
        route_not_allowed(lp, call, path);
    else
        api_call_respond_error(call, 404, "not_found", "no such route", NULL);
}

/* ------------------------------------------------------------------------- threads -- */

static void loop_drained(void *arg)
{
    api_loop *lp = arg;
    ev_break(lp->loop, EVBREAK_ALL);
}

/* Past the deadline the loop stops anyway; api_service_stop then frees the server, which aborts
 * the requests still open (long SSE streams) through their abort callbacks. */
static void loop_deadline_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)t;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

static void loop_stop_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)revents;
    api_loop *lp = ENG_CONTAINER_OF(a, api_loop, stop_signal);
    ev_async_stop(loop, &lp->stop_signal);
    ev_timer_init(&lp->stop_deadline, loop_deadline_cb, 5., 0.);
    ev_timer_start(loop, &lp->stop_deadline);
    api_http_shutdown(lp->http, loop_drained, lp);
}

static void *loop_main(void *arg)
{
    api_loop *lp = arg;
    ev_run(lp->loop, 0);
    return NULL;
}

/* The loops share their port through SO_REUSEPORT, which would also let a second flowd (or any
 * process of this user) bind the same port silently and split the traffic: a plain bind first
 * makes a port in use an error. */
static eng_rc service_port_free(const char *listen, eng_err *err)
{
    size_t n = strlen(listen);
    if (n >= 2 && strcmp(listen + n - 2, ":0") == 0)
        return ENG_OK;
    struct ev_loop *tmp = ev_loop_new(EVFLAG_AUTO);
    api_http_opts ho = {.listen = listen, .reuseport = false};
    api_http *probe = api_http_new(tmp, &ho, api_handle, NULL, err);
    api_http_free(probe);
    ev_loop_destroy(tmp);
    return probe ? ENG_OK : err->rc;
}

api_service *api_service_start(const api_service_opts *opts, eng_err *err)
{
    if (service_port_free(opts->listen ? opts->listen : "127.0.0.1:8080", err) != ENG_OK)
        return NULL;
    api_service *s = eng_xcalloc(1, sizeof *s);
    s->opts = *opts;
    s->conninfo = eng_xstrdup(opts->conninfo);
    s->listen = eng_xstrdup(opts->listen ? opts->listen : "127.0.0.1:8080");
    s->opts.conninfo = s->conninfo;
    s->opts.listen = s->listen;
    s->opts.read_conninfo = NULL; /* the standby keeps its own copy */
    if (s->opts.sse_heartbeat_s <= 0)
        s->opts.sse_heartbeat_s = 15;
    s->rl = api_ratelimit_new(0, 0);
    s->nloops = opts->threads > 0 ? opts->threads : 2;
    int max_conns = opts->max_conns;
    struct rlimit nofile;
    if (max_conns <= 0)
        max_conns = getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY
                        ? (int)(nofile.rlim_cur / 2 < 20000 ? nofile.rlim_cur / 2 : 20000)
                        : 10000;
    if (max_conns < s->nloops)
        max_conns = s->nloops;
    int per_client = opts->max_conns_per_client > 0 ? opts->max_conns_per_client : max_conns / 4;
    s->connlimit = api_connlimit_new(per_client > 0 ? per_client : 1);
    int ndb = opts->db_conns > 0 ? opts->db_conns : 4;
    if (opts->read_conninfo && *opts->read_conninfo)
        s->standby = api_standby_new(opts->read_conninfo,
                                     opts->read_max_lag_s > 0 ? opts->read_max_lag_s : 1.0);
    s->loops = eng_xcalloc((size_t)s->nloops, sizeof *s->loops);
    s->feeds = api_feed_hub_new(s->nloops);
    char listen_buf[128];
    snprintf(listen_buf, sizeof listen_buf, "%s", s->listen);
    for (int i = 0; i < s->nloops; i++) {
        api_loop *lp = &s->loops[i];
        lp->svc = s;
        lp->loop = ev_loop_new(EVFLAG_AUTO);
        api_http_opts ho = {.listen = listen_buf, .max_body = opts->max_body, .reuseport = true,
                            .max_conns = max_conns / s->nloops, .limit = s->connlimit,
                            .header_timeout_s = opts->header_timeout_s,
                            .request_timeout_s = opts->request_timeout_s, .access_log = true};
        lp->http = api_http_new(lp->loop, &ho, api_handle, lp, err);
        if (!lp->http) {
            ev_loop_destroy(lp->loop);
            lp->loop = NULL;
            s->nloops = i;
            api_service_stop(s);
            return NULL;
        }
        if (i == 0) {
            /* the other loops bind the port the first one got (":0" picks it once) */
            s->port = api_http_port(lp->http);
            char *colon = strrchr(listen_buf, ':');
            if (colon)
                snprintf(colon + 1, sizeof listen_buf - (size_t)(colon + 1 - listen_buf), "%d", s->port);
        }
        lp->ndb = ndb;
        lp->db = eng_xcalloc((size_t)ndb, sizeof *lp->db);
        for (int j = 0; j < ndb; j++) {
            eng_db_opts dbo = {.conninfo = s->conninfo, .application_name = "flowd-api",
                               .fail_when_down = true};
            lp->db[j] = eng_db_new(lp->loop, &dbo);
        }
        lp->runs = api_runcache_new();
        lp->feed = api_feed_new(s->feeds, i, lp->loop, lp, api_standby_feed_db);
        if (s->standby)
            lp->standby = api_standby_loop_new(s->standby, lp->loop, lp, ndb);
        ev_async_init(&lp->stop_signal, loop_stop_cb);
        ev_async_start(lp->loop, &lp->stop_signal);
    }
    for (int i = 0; i < s->nloops; i++)
        pthread_create(&s->loops[i].thread, NULL, loop_main, &s->loops[i]);
    log_info("api listening", LOG_S("address", listen_buf), LOG_I("threads", s->nloops),
             LOG_I("max_connections", max_conns), LOG_I("per_client", per_client));
    return s;
}

int api_service_port(const api_service *s)
{
    return s->port;
}

void api_service_stop(api_service *s)
{
    if (!s)
        return;
    /* every loop stops before anything is freed: the event-log feed spans them */
    for (int i = 0; i < s->nloops; i++) {
        api_loop *lp = &s->loops[i];
        if (lp->thread) {
            ev_async_send(lp->loop, &lp->stop_signal);
            pthread_join(lp->thread, NULL);
        }
    }
    for (int i = 0; i < s->nloops; i++)
        api_http_free(s->loops[i].http); /* aborts the streams, which leave the feed */
    for (int i = 0; i < s->nloops; i++) {
        api_loop *lp = &s->loops[i];
        api_feed_free(lp->feed);
        api_standby_loop_free(lp->standby);
        for (int j = 0; j < lp->ndb; j++)
            eng_db_free(lp->db[j]);
        free(lp->db);
        api_runcache_free(lp->runs);
        if (lp->loop)
            ev_loop_destroy(lp->loop);
    }
    api_feed_hub_free(s->feeds);
    api_standby_free(s->standby);
    api_ratelimit_free(s->rl);
    api_connlimit_free(s->connlimit);
    free(s->loops);
    free(s->conninfo);
    free(s->listen);
    free(s);
}
