/* api/routes_outbox.c: GET /v1/outbox[?run=ID][&after=ID][&limit=N]: what the sandbox transport
 * recorded instead of sending (steps/sendledger.h), the tenant's own only, oldest first. A run that
 * is not the tenant's is 404, like every object it cannot see. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"

#define OUTBOX_DEFAULT_LIMIT 100
#define OUTBOX_MAX_LIMIT 1000

static void outbox_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    api_call_respond_row_json(call, 200, res, "run");
}

/* A positive integer query parameter; false (and 400 answered) when present but malformed. */
static bool query_id(api_call *call, const char *name, long long max, char out[24])
{
    const char *v = api_req_query(call->req, name);
    out[0] = '\0';
    if (!v)
        return true;
    char *end = NULL;
    long long n = strtoll(v, &end, 10);
    if (!*v || *end || n <= 0 || n > max) {
        char field[32];
        snprintf(field, sizeof field, "%s", name);
        api_call_respond_error(call, 400, "invalid_request", "must be a positive integer", field);
        return false;
    }
    snprintf(out, 24, "%lld", n);
    return true;
}

void api_route_outbox_list(api_call *call)
{
    char run[24], after[24], limit[24];
    if (!query_id(call, "run", 1LL << 62, run) || !query_id(call, "after", 1LL << 62, after) ||
        !query_id(call, "limit", OUTBOX_MAX_LIMIT, limit))
        return;
    if (!*limit)
        snprintf(limit, sizeof limit, "%d", OUTBOX_DEFAULT_LIMIT);
    const char *params[] = {call->tenant_s, *run ? run : NULL, *after ? after : NULL, limit};
    api_call_db(call, "SELECT flowd_outbox_json($1, $2, $3, $4)", 4, params, outbox_cb);
}
