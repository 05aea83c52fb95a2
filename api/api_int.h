/* api/api_int.h: what the API's own files share (not for other folders).
 *
 * A request becomes an api_call: the route handler runs with the authenticated tenant and the path
 * parameters, starts database work with api_call_db, and ends with exactly one api_call_respond*,
 * which answers and frees the call. If the client goes away first, the call is marked detached and
 * freed when its database work returns, without answering (detach, never free in flight:
 * docs/internals/event-loop.md). */
#pragma once

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "api/http.h"
#include "engine/err.h"

typedef struct api_loop api_loop; /* one loop thread: its server, connections and caches */
typedef struct api_call api_call;

struct api_call {
    api_req *req;            /* NULL once the client went away */
    api_loop *lp;
    long long tenant;        /* authenticated tenant, 0 for open routes */
    char tenant_s[24];       /* the same as text, for statement parameters */
    bool admin;              /* the key has the admin role */
    bool session;            /* authenticated by a console session's cookie, not a key */
    char csrf[33];           /* that session's CSRF value; empty for a key */
    const char *route;       /* the matched route pattern (metrics), NULL when none matched */
    char req_id[72];         /* the request's id (api_req_id): log lines the call causes carry it */
    const char *params[3];   /* path parameters ({name}, {id}) in route order, borrowed from route match */
    char *param_buf;         /* storage behind params */
    void *data;              /* handler state, freed with data_free */
    void (*data_free)(void *data);
    struct eng_db_op *dbop;  /* the statement api_call_db queued, until its callback: withdrawn
                                when the client goes away before it was sent */
};

typedef void api_route_fn(api_call *call);
typedef void api_call_db_cb(api_call *call, const eng_err *err, const PGresult *res);

/* Queues a statement on one of the loop's connections; cb runs with the call still attached (a
 * detached call is freed instead of calling cb, and its statement is not sent if it was still
 * queued). params are copied. While the database is unreachable the call is answered 503 with
 * Retry-After at once instead, and a statement queued when the connection is lost fails with it:
 * nothing runs later for a client that was already answered. */
void api_call_db(api_call *call, const char *sql, int nparams, const char *const *params,
                 api_call_db_cb *cb);
/* api_call_db for a statement that only reads (a poll): with a standby configured it may run there
 * (api/standby.h says when, and what the answer is then guaranteed to show); without one, or
 * when the standby cannot answer, it is api_call_db. sql is constant text; params are copied. */
void api_call_read(api_call *call, const char *sql, int nparams, const char *const *params,
                   api_call_db_cb *cb);
/* Answer and free the call. */
void api_call_respond_json(api_call *call, int status, json_t *body /* stolen */);
void api_call_respond_error(api_call *call, int status, const char *code, const char *msg,
                            const char *field);
/* Maps err->rc to a status and code (one table for the whole API) and answers. */
void api_call_respond_err(api_call *call, const eng_err *err);
/* Checks the input an event (name, key, data: JSON text) gives each version it triggers
 * (triggers: the rows of WF_TRIGGER_ROWS_SQL, engine/wf_trigger.h) for POST /v1/events and the
 * custom hooks: the ids of the versions to start (caller frees), or NULL when the call was
 * answered (422 invalid_input naming the field in the event, or the error). */
char *api_trigger_ids(api_call *call, const PGresult *triggers, const char *name,
                      const char *key, const char *data_json);
/* Answers with the JSON text of column 0 of row 0 (already JSON from SQL), or 404 when NULL. */
void api_call_respond_row_json(api_call *call, int status, const PGresult *res, const char *what);
void api_call_free(api_call *call);

/* The console's session cookie (api/routes_console.c) */
#define API_SESSION_COOKIE "flowd_session"
/* The session token of the call's cookie when it authenticated with one (no Authorization
 * header), else NULL; borrowed from the request. */
const char *api_call_session_token(const api_call *call);

/* The request body parsed as a JSON object, or NULL after answering 400/415 (call freed). */
json_t *api_call_body_object(api_call *call);
/* Answers 404 to keys without the admin role (the route does not exist for them); true when the
 * caller may go on. */
bool api_call_admin_only(api_call *call);
/* The body as api_call_body_object, refusing members not in allowed (NULL-terminated): answers
 * 422 naming the first unknown one and returns NULL (call freed). */
json_t *api_call_body_fields(api_call *call, const char *const *allowed);

/* Enqueueing checks a run's input before it creates the run. api_input_check_query asks for the
 * input check of the version a run of (workflow, version or the latest) would get, keeping body
 * (stolen) in call->data for cb. In cb, api_input_check validates input (when batch: each
 * element of the array input, pointers "/inputs/N/...") against it; on the first failure it
 * answers 422 invalid_input naming the pointer and returns false. version_s receives the version
 * checked (NULL when there is no such workflow: creating the run then answers 404). */
void api_input_check_query(api_call *call, json_t *body, const char *workflow,
                           const char *version, api_call_db_cb *cb);
bool api_input_check(api_call *call, const PGresult *res, const json_t *input, bool batch,
                     char version_s[24], const char **version_out);

/* Checks the delayed start of a run or batch request: "start_at" (RFC 3339, a day that exists)
 * or "start_in" (a duration), not both. Returns NULL and fills start_at (normalized RFC 3339 UTC)
 * or start_in (milliseconds) with text for the statement ("" when absent); else the message, with
 * *field naming the member. */
const char *api_start_fields(const json_t *body, char start_at[40], char start_in[24],
                             const char **field);

/* The loop's primary connection for the next statement (the least busy; the first when all are
 * down, which then answers at once: eng_db_opts.fail_when_down). */
struct eng_db *api_loop_db(const api_loop *lp);
/* The loop's side of the standby (api/standby.h), NULL when none is configured. */
struct api_standby_loop *api_loop_standby(const api_loop *lp);
/* The loop's libev loop, for handlers that wait (streams polling the database). */
struct ev_loop *api_loop_ev(const api_loop *lp);
/* The loop's cache of run JSON (api/runcache.h). */
struct api_runcache *api_loop_runcache(const api_loop *lp);
/* The loop's side of the process's event-log feed for Server-Sent Events (api/runfeed.h). */
struct api_feed *api_loop_feed(const api_loop *lp);
/* Seconds between heartbeats of a quiet event stream (api_service_opts.sse_heartbeat_s). */
double api_loop_sse_heartbeat_s(const api_loop *lp);

/* Long responses (Server-Sent Events, exports) that span many statements and timer waits.
 * api_stream_start makes the call a stream: call->data becomes the stream, the handler keeps its own
 * state in user (freed with user_free when the call is freed). If the client goes away, the call is
 * freed at once when it is waiting, or when its statement returns (the callback is then not run).
 * The handler ends with api_req_stream_end(call->req) + api_call_free(call), or any
 * api_call_respond_* before it began streaming. */
void api_stream_start(api_call *call, void *user, void (*user_free)(void *user));
void *api_stream_user(const api_call *call);
/* Runs fn(call) after seconds on the loop, unless the client leaves first. */
void api_stream_after(api_call *call, double seconds, void (*fn)(api_call *call));
/* api_call_db for a stream (at most one statement in flight). */
void api_stream_db(api_call *call, const char *sql, int nparams, const char *const *params,
                   api_call_db_cb *cb);

/* Answers with body as is (len bytes) and frees the call; counted in the metrics like every
 * api_call_respond_*, which api_req_respond used directly is not. */
/* Starts a streamed answer (chunked) on a call that is still attached; the handler then writes
 * with api_req_stream_write and ends with api_req_stream_end. */
void api_call_stream_begin(api_call *call, int status, const char *content_type,
                           const char *const *extra_headers);
void api_call_respond_raw(api_call *call, int status, const char *content_type, const char *body,
                          size_t len, const char *const *extra_headers);
/* Entry i of the route table (method, pattern with "{}" for a parameter); false past the end. */
bool api_route_at(size_t i, const char **method, const char **pattern);

/* Whether want is the HMAC (SHA-1 or SHA-256, keyed with key[0..keylen)) of data, as lower-case
 * hex or as base64; compared in constant time (api/routes_hooks.c). */
typedef enum api_hmac_alg { API_HMAC_SHA1, API_HMAC_SHA256 } api_hmac_alg;
bool api_hmac_matches(api_hmac_alg alg, const char *key, size_t keylen, const char *data,
                      size_t len, bool hex, const char *want);

/* Route handlers (api/routes_*.c). */
void api_route_workflow_put(api_call *call);
void api_route_workflow_get(api_call *call);
void api_route_workflows_list(api_call *call);
void api_route_run_post(api_call *call);
void api_route_run_get(api_call *call);
void api_route_run_steps(api_call *call);
void api_route_run_cancel(api_call *call);
void api_route_run_retry(api_call *call);
void api_route_event_post(api_call *call);
void api_route_test_clock(api_call *call);
void api_route_hook_twilio(api_call *call);           /* api/routes_hooks.c */
void api_route_hook_sendgrid(api_call *call);
void api_route_hook_whatsapp(api_call *call);
void api_route_hook_whatsapp_verify(api_call *call);
void api_route_custom_hook_put(api_call *call);     /* api/routes_custom_hooks.c */
void api_route_custom_hook_get(api_call *call);
void api_route_custom_hooks_list(api_call *call);
void api_route_custom_hook_delete(api_call *call);
void api_route_custom_hook_post(api_call *call);
void api_route_outbox_list(api_call *call);           /* api/routes_outbox.c */
void api_route_send_outcome(api_call *call);          /* api/routes_sends.c */
void api_route_run_sequencer_csv(api_call *call);     /* api/routes_export.c */
void api_route_metrics(api_call *call);
void api_route_openapi(api_call *call);
void api_route_workflow_schema(api_call *call);
void api_route_runs_list(api_call *call);
void api_route_runs_counts(api_call *call);
void api_route_run_events(api_call *call);
void api_route_batch_post(api_call *call);
void api_route_batch_get(api_call *call);
void api_route_batches_list(api_call *call);
void api_route_batch_results(api_call *call);
void api_route_tenant_post(api_call *call);
void api_route_key_post(api_call *call);
void api_route_key_delete(api_call *call);
void api_route_quotas_get(api_call *call);
void api_route_quotas_put(api_call *call);
void api_route_rate_limit_put(api_call *call);        /* api/routes_limits.c */
void api_route_rate_limits_list(api_call *call);
void api_route_rate_limit_delete(api_call *call);
void api_route_usage(api_call *call);                 /* api/routes_usage.c */
void api_route_workers(api_call *call);               /* api/routes_queue.c */
void api_route_queue(api_call *call);
void api_route_price_put(api_call *call);
void api_route_prices_list(api_call *call);
void api_route_provider_put(api_call *call);          /* api/routes_providers.c */
void api_route_providers_list(api_call *call);
void api_route_provider_delete(api_call *call);
void api_route_suppression_post(api_call *call);      /* api/routes_suppressions.c */
void api_route_suppressions_list(api_call *call);
void api_route_suppression_delete(api_call *call);
void api_route_webhook_endpoint_post(api_call *call); /* api/routes_webhooks.c */
void api_route_webhook_endpoints_list(api_call *call);
void api_route_webhook_endpoint_get(api_call *call);
void api_route_webhook_endpoint_patch(api_call *call);
void api_route_webhook_endpoint_delete(api_call *call);
void api_route_webhook_endpoint_pause(api_call *call);
void api_route_webhook_endpoint_resume(api_call *call);
void api_route_webhook_endpoint_rotate(api_call *call);
void api_route_webhook_callback_secret(api_call *call);
void api_route_webhook_deliveries_list(api_call *call);
void api_route_webhook_redeliver(api_call *call);
/* A run's or (batch) a batch's "webhook" member {url, events?}: NULL when valid (*url borrowed
 * from v, *events the JSON text of the events or NULL, caller frees), else the problem and *field
 * its pointer. A batch's events may also name batch.completed. */
const char *api_webhook_callback_parse(const json_t *v, bool batch, const char **url,
                                       char **events, const char **field);
void api_route_schedule_put(api_call *call);          /* api/routes_schedules.c */
void api_route_schedule_get(api_call *call);
void api_route_schedules_list(api_call *call);
void api_route_schedule_delete(api_call *call);
void api_route_schedule_pause(api_call *call);
void api_route_schedule_resume(api_call *call);
void api_route_schedule_trigger(api_call *call);
void api_route_console_index(api_call *call);         /* api/routes_console.c */
void api_route_console_file(api_call *call);
void api_route_console_session_post(api_call *call);
void api_route_console_session_get(api_call *call);
void api_route_console_session_delete(api_call *call);
void api_route_run_sends(api_call *call);             /* api/routes_sends.c */
