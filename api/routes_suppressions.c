/* api/routes_suppressions.c: the tenant's suppression list (table suppressions), the recipients the
 * messaging kinds never send to again (their steps end skipped).
 *
 *   POST   /v1/suppressions                     {channel: email|sms|whatsapp, address, reason?}
 *   GET    /v1/suppressions?channel=&limit=&cursor=
 *   DELETE /v1/suppressions/{channel}/{address}
 *
 * Addresses are normalized exactly as the send ledger normalizes recipients (step_send_norm_email,
 * step_send_norm_phone: numbers only in E.164), so "Ann@Example.COM" matches the sends it
 * is meant to stop. Webhooks (STOP, bounces, ...) and provider errors add to the same list;
 * entries made here have source "api". */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "engine/mem.h"
#include "steps/sendledger.h"

#define SUPP_DEFAULT_LIMIT 100
#define SUPP_MAX_LIMIT 1000
#define SUPP_REASON_MAX 200
#define SUPP_CURSOR_MAX 1000

static bool supp_channel_ok(const char *c)
{
    return c && (strcmp(c, "email") == 0 || strcmp(c, "sms") == 0 || strcmp(c, "whatsapp") == 0);
}

/* The normalized address of channel (new string), or NULL when it is not one. */
static char *supp_normalize(const char *channel, const char *address)
{
    if (strcmp(channel, "email") == 0)
        return step_send_norm_email(address);
    char phone[24];
    return step_send_norm_phone(address, phone) ? eng_xstrdup(phone) : NULL;
}

static void supp_post_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    bool created = PQgetvalue(res, 0, 0)[0] == 't';
    api_call_respond_json(call, created ? 201 : 200, json_loads(PQgetvalue(res, 0, 1), 0, NULL));
}

void api_route_suppression_post(api_call *call)
{
    static const char *const allowed[] = {"channel", "address", "reason", NULL};
    json_t *body = api_call_body_fields(call, allowed);
    if (!body)
        return;
    const char *channel = json_string_value(json_object_get(body, "channel"));
    const json_t *address = json_object_get(body, "address");
    const json_t *reason = json_object_get(body, "reason");
    const char *field = NULL, *msg = NULL;
    char *norm = NULL;
    if (!supp_channel_ok(channel))
        field = "/channel", msg = "must be \"email\", \"sms\" or \"whatsapp\"";
    else if (!json_is_string(address))
        field = "/address", msg = "must be a string";
    else if (!(norm = supp_normalize(channel, json_string_value(address))))
        field = "/address", msg = strcmp(channel, "email") == 0
                                      ? "must be an email address"
                                      : "must be a phone number (E.164, 8 to 15 digits)";
    else if (reason && !json_is_null(reason) &&
             (!json_is_string(reason) || json_string_length(reason) == 0 ||
              json_string_length(reason) > SUPP_REASON_MAX))
        field = "/reason", msg = "must be a string of 1 to 200 characters";
    if (field) {
        free(norm);
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request", msg, field);
        return;
    }
    const char *params[] = {call->tenant_s, channel, norm,
                            json_is_string(reason) ? json_string_value(reason) : "manual", "api"};
    api_call_db(call,
                "SELECT created, suppression FROM flowd_suppression_add($1, $2, $3, $4, $5)", 5,
                params, supp_post_cb);
    free(norm);
    json_decref(body);
}

static void supp_list_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "suppressions");
}

/* Cursors are what flowd_suppressions_json handed out: lowercase hex of "channel:address". */
static bool supp_cursor_ok(const char *c)
{
    size_t n = strlen(c);
    if (n == 0 || n % 2 || n > SUPP_CURSOR_MAX)
        return false;
    for (const char *p = c; *p; p++)
        if (!isxdigit((unsigned char)*p))
            return false;
    return strncmp(c, "656d61696c3a", 12) == 0 ||   /* "email:" */
           strncmp(c, "736d733a", 8) == 0 ||         /* "sms:" */
           strncmp(c, "77686174736170703a", 18) == 0; /* "whatsapp:" */
}

void api_route_suppressions_list(api_call *call)
{
    const char *channel = api_req_query(call->req, "channel");
    const char *limit_q = api_req_query(call->req, "limit");
    const char *cursor = api_req_query(call->req, "cursor");
    if (channel && !supp_channel_ok(channel)) {
        api_call_respond_error(call, 400, "invalid_request",
                               "must be \"email\", \"sms\" or \"whatsapp\"", "channel");
        return;
    }
    long limit = SUPP_DEFAULT_LIMIT;
    if (limit_q) {
        char *end;
        limit = strtol(limit_q, &end, 10);
        if (!*limit_q || *end || limit < 1 || limit > SUPP_MAX_LIMIT) {
            api_call_respond_error(call, 400, "invalid_request",
                                   "must be an integer from 1 to 1000", "limit");
            return;
        }
    }
    if (cursor && !supp_cursor_ok(cursor)) {
        api_call_respond_error(call, 400, "invalid_request",
                               "must be a next_cursor of an earlier page", "cursor");
        return;
    }
    char limit_s[24];
    snprintf(limit_s, sizeof limit_s, "%ld", limit);
    const char *params[] = {call->tenant_s, channel, cursor, limit_s};
    api_call_db(call, "SELECT flowd_suppressions_json($1, $2, $3, $4)", 4, params, supp_list_cb);
}

static void supp_delete_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    if (PQgetvalue(res, 0, 0)[0] != 't') {
        api_call_respond_error(call, 404, "not_found", "suppression not found", NULL);
        return;
    }
    api_call_respond_raw(call, 204, NULL, NULL, 0, NULL);
}

void api_route_suppression_delete(api_call *call)
{
    const char *channel = call->params[0];
    char *norm = supp_channel_ok(channel) ? supp_normalize(channel, call->params[1]) : NULL;
    if (!norm) {
        api_call_respond_error(call, 404, "not_found", "suppression not found", NULL);
        return;
    }
    const char *params[] = {call->tenant_s, channel, norm};
    api_call_db(call, "SELECT flowd_suppression_delete($1, $2, $3)", 3, params, supp_delete_cb);
    free(norm);
}
