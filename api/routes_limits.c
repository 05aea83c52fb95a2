/* api/routes_limits.c: the tenant's named rate limits (steps/ratelimit.h).
 *
 *   PUT    /v1/rate-limits/{name}  {requests_per_s?, tokens_per_min?, burst_requests?, burst_tokens?}
 *   GET    /v1/rate-limits
 *   DELETE /v1/rate-limits/{name}
 *
 * A tenant's row adds the tenant's own budget on top of a shared row of the same name (set up by
 * the operator in SQL); the API never shows or changes shared rows. Steps name a limit with their
 * rate_limit input ("campaign") or count against their provider's name ("twilio").
 *
 * Workers cache "no limit of this name" for RL_NEGATIVE_TTL_MS. Writes here clear this process's
 * cache (the API and its in-process workers see a new limit at once); other processes pick it up
 * within that time. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "api/api_int.h"
#include "steps/ratelimit.h"

#define LIMIT_NAME_MAX 100
#define LIMIT_RATE_MAX 1e9 /* far above any provider's; keeps the bucket arithmetic finite */

/* Names are what steps write in rate_limit: printable, no spaces or slashes (they live in a path). */
static bool limit_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > LIMIT_NAME_MAX)
        return false;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p <= ' ' || *p == '/' || *p == 0x7f)
            return false;
    return true;
}

/* Reads an optional positive number field into out (text for the statement, "" when absent or
 * null). Returns the error message, or NULL when fine. */
static const char *limit_number(const json_t *body, const char *name, double min, char out[32])
{
    const json_t *v = json_object_get(body, name);
    out[0] = '\0';
    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_number(v))
        return "must be a number";
    double d = json_number_value(v);
    if (!isfinite(d) || d < min || d <= 0 || d > LIMIT_RATE_MAX)
        return min >= 1 ? "must be a number from 1 to 1e9" : "must be a positive number up to 1e9";
    snprintf(out, 32, "%.17g", d);
    return NULL;
}

static void limit_put_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    rl_cache_clear();
    bool created = PQgetvalue(res, 0, 0)[0] == 't';
    json_t *limit = json_loads(PQgetvalue(res, 0, 1), 0, NULL);
    api_call_respond_json(call, created ? 201 : 200, limit);
}

void api_route_rate_limit_put(api_call *call)
{
    static const char *const allowed[] = {"name",           "requests_per_s", "tokens_per_min",
                                          "burst_requests", "burst_tokens",   NULL};
    if (!limit_name_ok(call->params[0])) {
        api_call_respond_error(call, 422, "invalid_request",
                               "must be 1 to 100 printable characters without spaces or slashes",
                               "name");
        return;
    }
    json_t *body = api_call_body_fields(call, allowed);
    if (!body)
        return;
    char rps[32], tpm[32], breq[32], btok[32];
    const char *field = NULL, *msg = NULL;
    const json_t *name = json_object_get(body, "name");
    if (name && (!json_is_string(name) || strcmp(json_string_value(name), call->params[0]) != 0))
        field = "/name", msg = "differs from the rate limit name in the path";
    else if ((msg = limit_number(body, "requests_per_s", 0, rps)))
        field = "/requests_per_s";
    else if ((msg = limit_number(body, "tokens_per_min", 0, tpm)))
        field = "/tokens_per_min";
    else if ((msg = limit_number(body, "burst_requests", 1, breq)))
        field = "/burst_requests";
    else if ((msg = limit_number(body, "burst_tokens", 1, btok)))
        field = "/burst_tokens";
    else if (!*rps && !*tpm)
        field = "/requests_per_s", msg = "a limit needs requests_per_s or tokens_per_min (or both)";
    else if (*breq && !*rps)
        field = "/burst_requests", msg = "a request burst needs requests_per_s";
    else if (*btok && !*tpm)
        field = "/burst_tokens", msg = "a token burst needs tokens_per_min";
    json_decref(body);
    if (field) {
        api_call_respond_error(call, 422, "invalid_request", msg, field);
        return;
    }
    const char *params[] = {call->tenant_s,   call->params[0], *rps ? rps : NULL,
                            *tpm ? tpm : NULL, *breq ? breq : NULL, *btok ? btok : NULL};
    api_call_db(call,
                "SELECT created, rate_limit FROM flowd_rate_limit_put($1, $2, $3, $4, $5, $6)", 6,
                params, limit_put_cb);
}

static void limits_list_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "rate limits");
}

void api_route_rate_limits_list(api_call *call)
{
    const char *params[] = {call->tenant_s};
    api_call_db(call, "SELECT flowd_rate_limits_json($1)", 1, params, limits_list_cb);
}

static void limit_delete_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    if (PQgetvalue(res, 0, 0)[0] != 't') {
        api_call_respond_error(call, 404, "not_found", "rate limit not found", NULL);
        return;
    }
    api_call_respond_raw(call, 204, NULL, NULL, 0, NULL);
}

void api_route_rate_limit_delete(api_call *call)
{
    if (!limit_name_ok(call->params[0])) {
        api_call_respond_error(call, 404, "not_found", "rate limit not found", NULL);
        return;
    }
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, "SELECT flowd_rate_limit_delete($1, $2)", 2, params, limit_delete_cb);
}
