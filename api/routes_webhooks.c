/* api/routes_webhooks.c: a tenant's outbound webhooks (engine/webhook.h), admin keys only.
 *
 *   POST   /v1/webhook-endpoints                 {url, events?, workflows?, description?}
 *   GET    /v1/webhook-endpoints
 *   GET    /v1/webhook-endpoints/{id}
 *   PATCH  /v1/webhook-endpoints/{id}            {url?, events?, workflows?, description?}
 *   DELETE /v1/webhook-endpoints/{id}
 *   POST   /v1/webhook-endpoints/{id}/pause | resume | rotate
 *   POST   /v1/webhook-callback-secret           the secret of runs' one-off callbacks
 *   GET    /v1/webhook-deliveries?endpoint=&run=&state=&before=&limit=
 *   POST   /v1/webhook-deliveries/{id}/redeliver
 *
 * A secret is shown once: when the endpoint is created and when it is rotated. The database keeps it
 * sealed under the operator's FLOWD_SECRET_KEY when one is set (engine/secret.h), so a copy of
 * the database cannot forge deliveries; without a key it is kept in clear, and `flowd secrets
 * rotate` seals it once a key is set. URLs must be https
 * and must not name a non-public address unless the operator allows private targets (the
 * dispatcher checks the resolved address of every connection too). */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api_int.h"
#include "engine/mem.h"
#include "engine/netaddr.h"
#include "engine/secret.h"
#include "engine/webhook.h"
#include "steps/provider.h"

#define WH_URL_MAX 2048
#define WH_LIST_MAX 100
#define WH_DESC_MAX 500
#define WH_PAGE_DEFAULT 50
#define WH_PAGE_MAX 500

static const char *const wh_event_types[] = {"run.succeeded",   "run.failed",     "run.cancelled",
                                             "batch.completed", "step.failed",    "send.delivered",
                                             "send.bounced",    "schedule.fired", NULL};

/* What is wrong with url as a webhook target, or NULL. */
static const char *wh_url_problem(const char *url)
{
    if (strlen(url) > WH_URL_MAX)
        return "must be at most 2048 characters";
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL;
    const char *why = NULL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        why = "must be an absolute http(s) URL";
    } else if (prov_public_only(NULL)) {
        size_t n = strlen(host);
        /* curl keeps the brackets of an IPv6 literal */
        char *ip = n > 2 && host[0] == '[' ? eng_xstrndup(host + 1, n - 2) : eng_xstrdup(host);
        const char *kind = NULL;
        if (strcmp(scheme, "https") != 0)
            why = "must be https";
        else if (strcasecmp(ip, "localhost") == 0 ||
                 ((strchr(ip, ':') || strspn(ip, "0123456789.") == strlen(ip)) &&
                  !eng_addr_text_is_public(ip, &kind)))
            why = "must not name a loopback, private, link-local or metadata address";
        free(ip);
    } else if (strcmp(scheme, "https") != 0 && strcmp(scheme, "http") != 0) {
        why = "must be an http(s) URL";
    }
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return why;
}

/* An optional array of distinct non-empty strings (at most WH_LIST_MAX), each one of allowed
 * when given; *out gets its JSON text (NULL when absent or null). Returns the problem or NULL. */
static const char *wh_string_list(const json_t *v, const char *const *allowed, char **out)
{
    *out = NULL;
    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > WH_LIST_MAX)
        return "must be a non-empty array of at most 100 strings";
    size_t i;
    const json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_string(e) || json_string_length(e) == 0 || json_string_length(e) > 200)
            return "must hold strings of 1 to 200 characters";
        if (allowed) {
            size_t k = 0;
            while (allowed[k] && strcmp(allowed[k], json_string_value(e)) != 0)
                k++;
            if (!allowed[k])
                return "holds an event type that is not one of those listed in the reference";
        }
    }
    *out = json_dumps(v, JSON_COMPACT);
    return NULL;
}

/* The fields of an endpoint body. With partial (PATCH) every field is optional. Answers 422 and
 * returns false on the first bad one. */
typedef struct wh_fields {
    const char *url, *description;
    char *events, *workflows;
    char set[80]; /* text[] literal of the fields given, for flowd_webhook_endpoint_update */
} wh_fields;

static bool wh_fields_parse(api_call *call, const json_t *body, bool partial, wh_fields *f)
{
    memset(f, 0, sizeof *f);
    const json_t *url = json_object_get(body, "url"), *desc = json_object_get(body, "description");
    const char *field = NULL, *msg = NULL;
    if ((url || !partial) && !json_is_string(url))
        field = "/url", msg = "must be the URL to deliver to";
    else if (url && (msg = wh_url_problem(json_string_value(url))))
        field = "/url";
    else if (desc && !json_is_null(desc) &&
             (!json_is_string(desc) || json_string_length(desc) > WH_DESC_MAX))
        field = "/description", msg = "must be a string of at most 500 characters";
    else if ((msg = wh_string_list(json_object_get(body, "events"), wh_event_types, &f->events)))
        field = "/events";
    else if ((msg = wh_string_list(json_object_get(body, "workflows"), NULL, &f->workflows)))
        field = "/workflows";
    if (field) {
        free(f->events);
        free(f->workflows);
        api_call_respond_error(call, 422, "invalid_request", msg, field);
        return false;
    }
    f->url = json_string_value(url);
    f->description = json_string_value(desc);
    snprintf(f->set, sizeof f->set, "{%s%s%s%s}", url ? "url," : "",
             json_object_get(body, "events") ? "events," : "",
             json_object_get(body, "workflows") ? "workflows," : "",
             desc ? "description," : "");
    size_t n = strlen(f->set);
    if (n > 2)
        f->set[n - 2] = '}', f->set[n - 1] = '\0';
    return true;
}

static void wh_fields_free(wh_fields *f)
{
    free(f->events);
    free(f->workflows);
}

/* JSON text of an array as text[] (NULL stays NULL). */
#define WH_ARRAY(n) "CASE WHEN $" #n "::jsonb IS NULL THEN NULL ELSE " \
                    "ARRAY(SELECT jsonb_array_elements_text($" #n "::jsonb)) END"

static void wh_secret_free(void *plain)
{
    sec_free(plain);
}

/* A new signing secret for the call. Its plain value stays with the call (call->data) for the
 * one answer that shows it; the returned value is what the database keeps: sealed when a key is
 * configured. NULL, the call answered, when sealing fails. */
static char *wh_secret_new(api_call *call)
{
    char *plain = eng_xcalloc(1, 64);
    eng_webhook_secret_new(plain, 64);
    call->data = plain;
    call->data_free = wh_secret_free;
    if (!sec_have_key())
        return eng_xstrdup(plain);
    eng_err err;
    char *sealed = sec_seal(plain, &err);
    if (!sealed)
        api_call_respond_err(call, &err);
    return sealed;
}

/* Answers the endpoint of the row with the call's new secret in plain. */
static void wh_respond_with_secret(api_call *call, int status, const eng_err *err,
                                   const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    json_t *e = PQgetisnull(res, 0, 0) ? NULL : json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    if (!e) {
        api_call_respond_error(call, 404, "not_found", "webhook endpoint not found", NULL);
        return;
    }
    json_object_set_new(e, "secret", json_string(call->data));
    api_call_respond_json(call, status, e);
}

static void wh_created_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    wh_respond_with_secret(call, 201, err, res);
}

static void wh_rotated_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    wh_respond_with_secret(call, 200, err, res);
}

static void wh_row_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "webhook endpoint");
}

static const char *const wh_body_fields[] = {"url", "events", "workflows", "description", NULL};

void api_route_webhook_endpoint_post(api_call *call)
{
    if (!api_call_admin_only(call))
        return;
    json_t *body = api_call_body_fields(call, wh_body_fields);
    if (!body)
        return;
    wh_fields f;
    char *stored = NULL;
    if (wh_fields_parse(call, body, false, &f)) {
        stored = wh_secret_new(call);
        const char *params[] = {call->tenant_s, f.url, f.events, f.workflows, f.description,
                                stored};
        if (stored)
            api_call_db(call,
                        "SELECT flowd_webhook_endpoint_create($1, $2, " WH_ARRAY(3) ", "
                        WH_ARRAY(4) ", $5, $6)",
                        6, params, wh_created_cb);
        wh_fields_free(&f);
    }
    sec_free(stored);
    json_decref(body);
}

void api_route_webhook_endpoints_list(api_call *call)
{
    if (!api_call_admin_only(call))
        return;
    const char *params[] = {call->tenant_s};
    api_call_db(call, "SELECT flowd_webhook_endpoints_json($1)", 1, params, wh_row_cb);
}

void api_route_webhook_endpoint_get(api_call *call)
{
    if (!api_call_admin_only(call))
        return;
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, "SELECT flowd_webhook_endpoint_json($1, $2)", 2, params, wh_row_cb);
}

void api_route_webhook_endpoint_patch(api_call *call)
{
    if (!api_call_admin_only(call))
        return;
    json_t *body = api_call_body_fields(call, wh_body_fields);
    if (!body)
        return;
    wh_fields f;
    if (wh_fields_parse(call, body, true, &f)) {
        const char *params[] = {call->tenant_s, call->params[0], f.set,        f.url,
                                f.events,       f.workflows,     f.description};
        api_call_db(call,
                    "SELECT flowd_webhook_endpoint_update($1, $2, $3, $4, " WH_ARRAY(5) ", "
                    WH_ARRAY(6) ", $7)",
                    7, params, wh_row_cb);
        wh_fields_free(&f);
    }
    json_decref(body);
}

static void wh_deleted_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else if (PQgetvalue(res, 0, 0)[0] != 't')
        api_call_respond_error(call, 404, "not_found", "webhook endpoint not found", NULL);
    else
        api_call_respond_raw(call, 204, NULL, NULL, 0, NULL);
}

void api_route_webhook_endpoint_delete(api_call *call)
{
    if (!api_call_admin_only(call))
        return;
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, "SELECT flowd_webhook_endpoint_delete($1, $2)", 2, params, wh_deleted_cb);
}

static void wh_set_state(api_call *call, const char *state)
{
    if (!api_call_admin_only(call))
        return;
    const char *params[] = {call->tenant_s, call->params[0], state};
    api_call_db(call, "SELECT flowd_webhook_endpoint_state($1, $2, $3)", 3, params, wh_row_cb);
}

void api_route_webhook_endpoint_pause(api_call *call)
{
    wh_set_state(call, "paused");
}

void api_route_webhook_endpoint_resume(api_call *call)
{
    wh_set_state(call, "active");
}

void api_route_webhook_endpoint_rotate(api_call *call)
{
    if (!api_call_admin_only(call))
        return;
    char *stored = wh_secret_new(call);
    if (!stored)
        return;
    const char *params[] = {call->tenant_s, call->params[0], stored};
    api_call_db(call, "SELECT flowd_webhook_endpoint_rotate($1, $2, $3)", 3, params, wh_rotated_cb);
    sec_free(stored);
}

static void wh_signer_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    json_t *e = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    json_t *out = json_pack("{s:s, s:O}", "secret", (const char *)call->data,
                            "previous_secret_expires_at",
                            json_object_get(e, "previous_secret_expires_at"));
    json_decref(e);
    api_call_respond_json(call, 200, out);
}

void api_route_webhook_callback_secret(api_call *call)
{
    if (!api_call_admin_only(call))
        return;
    char *stored = wh_secret_new(call);
    if (!stored)
        return;
    const char *params[] = {call->tenant_s, stored};
    api_call_db(call, "SELECT flowd_webhook_endpoint_rotate($1, NULL, $2)", 2, params,
                wh_signer_cb);
    sec_free(stored);
}

/* ------------------------------------------------------------------------ deliveries -- */

/* A positive bigint query parameter into out ("" when absent); answers 400 when malformed. */
static bool wh_query_id(api_call *call, const char *name, long long max, char out[24])
{
    const char *v = api_req_query(call->req, name);
    out[0] = '\0';
    if (!v)
        return true;
    char *end = NULL;
    long long n = strtoll(v, &end, 10);
    if (!*v || *v < '1' || *v > '9' || *end || n <= 0 || n > max) {
        char field[32];
        snprintf(field, sizeof field, "?%s", name);
        api_call_respond_error(call, 400, "invalid_request",
                               max == WH_PAGE_MAX ? "must be an integer from 1 to 500"
                                                  : "must be a positive integer",
                               field);
        return false;
    }
    snprintf(out, 24, "%lld", n);
    return true;
}

static void wh_list_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "webhook deliveries");
}

void api_route_webhook_deliveries_list(api_call *call)
{
    if (!api_call_admin_only(call))
        return;
    char endpoint[24], run[24], before[24], limit[24];
    const long long big = 9223372036854775807LL;
    if (!wh_query_id(call, "endpoint", big, endpoint) || !wh_query_id(call, "run", big, run) ||
        !wh_query_id(call, "before", big, before) ||
        !wh_query_id(call, "limit", WH_PAGE_MAX, limit))
        return;
    const char *state = api_req_query(call->req, "state");
    if (state && strcmp(state, "pending") != 0 && strcmp(state, "succeeded") != 0 &&
        strcmp(state, "failed") != 0) {
        api_call_respond_error(call, 400, "invalid_request", "must be pending, succeeded or failed",
                               "?state");
        return;
    }
    if (!*limit)
        snprintf(limit, sizeof limit, "%d", WH_PAGE_DEFAULT);
    const char *params[] = {call->tenant_s,           *endpoint ? endpoint : NULL,
                            *run ? run : NULL,        state,
                            *before ? before : NULL,  limit};
    api_call_db(call, "SELECT flowd_webhook_sends_json($1, $2, $3, $4, $5, $6)", 6, params,
                wh_list_cb);
}

static void wh_redeliver_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 202, res, "webhook delivery");
}

void api_route_webhook_redeliver(api_call *call)
{
    if (!api_call_admin_only(call))
        return;
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, "SELECT flowd_webhook_redeliver($1, $2)", 2, params, wh_redeliver_cb);
}

/* --------------------------------------------------------------- runs' own callbacks -- */

const char *api_webhook_callback_parse(const json_t *v, bool batch, const char **url,
                                       char **events, const char **field)
{
    static const char *const run_events[] = {"run.succeeded", "run.failed", "run.cancelled",
                                             "step.failed", "send.delivered", "send.bounced",
                                             NULL};
    static const char *const batch_events[] = {"batch.completed", "run.succeeded", "run.failed",
                                               "run.cancelled",   "step.failed",   "send.delivered",
                                               "send.bounced",    NULL};
    *events = NULL;
    const char *msg = NULL;
    const json_t *u = json_object_get(v, "url");
    *field = "/webhook";
    if (!json_is_object(v))
        return "must be an object with url and optionally events";
    const char *key;
    json_t *member;
    json_object_foreach((json_t *)v, key, member) {
        if (strcmp(key, "url") != 0 && strcmp(key, "events") != 0) {
            *field = "/webhook";
            return "may only have url and events";
        }
    }
    *field = "/webhook/url";
    if (!json_is_string(u))
        return "must be the URL to deliver to";
    if ((msg = wh_url_problem(json_string_value(u))))
        return msg;
    *field = "/webhook/events";
    if ((msg = wh_string_list(json_object_get(v, "events"), batch ? batch_events : run_events,
                              events)))
        return msg;
    *url = json_string_value(u);
    *field = NULL;
    return NULL;
}
