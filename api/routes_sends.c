/* api/routes_sends.c: a run's sends (GET /v1/runs/{id}/sends), and
 * POST /v1/sends/{send_key}/outcome {"outcome": "sent" | "not_sent", "message_id"?}: an operator
 * settles a send whose outcome is unknown (steps/sendledger.h): the provider may or may not have
 * accepted it, and no delivery webhook or look-up has said which.
 * "sent" makes the waiting step go on with that outcome; "not_sent" makes it send. A send that is
 * already settled is answered 409 with its state, and left as it is. */
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"

static void sends_outcome_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    if (PQgetisnull(res, 0, 0)) {
        api_call_respond_error(call, 404, "not_found", "send not found", NULL);
        return;
    }
    json_t *send = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    if (!send) {
        api_call_respond_error(call, 500, "internal", "unreadable send", NULL);
        return;
    }
    bool settled = json_is_true(json_object_get(send, "settled"));
    json_object_del(send, "settled");
    if (settled) {
        api_call_respond_json(call, 200, send);
        return;
    }
    char msg[96];
    snprintf(msg, sizeof msg, "the send's outcome is already known: %s",
             json_string_value(json_object_get(send, "state")));
    json_decref(send);
    api_call_respond_error(call, 409, "send_settled", msg, NULL);
}

void api_route_send_outcome(api_call *call)
{
    static const char *const fields[] = {"outcome", "message_id", NULL};
    json_t *body = api_call_body_fields(call, fields);
    if (!body)
        return;
    const char *outcome = json_string_value(json_object_get(body, "outcome"));
    const json_t *mid = json_object_get(body, "message_id");
    const char *field = NULL, *msg = NULL;
    if (!outcome || (strcmp(outcome, "sent") != 0 && strcmp(outcome, "not_sent") != 0))
        field = "/outcome", msg = "must be \"sent\" or \"not_sent\"";
    else if (mid && !json_is_null(mid) &&
             (!json_is_string(mid) || json_string_length(mid) == 0 || json_string_length(mid) > 200))
        field = "/message_id", msg = "must be a string of 1 to 200 characters";
    else if (mid && json_is_string(mid) && strcmp(outcome, "sent") != 0)
        field = "/message_id", msg = "only a send that went out has a provider message id";
    if (field) {
        json_decref(body);
        api_call_respond_error(call, 422, "invalid_request", msg, field);
        return;
    }
    const char *params[] = {call->tenant_s, call->params[0], outcome,
                            json_is_string(mid) ? json_string_value(mid) : NULL};
    api_call_db(call, "SELECT flowd_send_resolve($1, $2, $3, $4)", 4, params, sends_outcome_cb);
    json_decref(body);
}

static void run_sends_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "run");
}

/* GET /v1/runs/{id}/sends: the send ledger's rows of a run, with their delivery states. */
void api_route_run_sends(api_call *call)
{
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, "SELECT flowd_run_sends_json($1, $2)", 2, params, run_sends_cb);
}
