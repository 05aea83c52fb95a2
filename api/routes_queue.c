/* api/routes_queue.c: what is running and waiting to.
 *
 *   GET /v1/workers  the flowd processes using this database (the process registry, written by
 *                    each `flowd serve` every 10 s: engine/procreg.h), each with its workers'
 *                    leases and steps in flight. Shared by every tenant, so only the operator's
 *                    admin keys (tenant "default") see it; to any other key it does not exist.
 *   GET /v1/queue    the caller's tenant: due steps by workflow with the age of the oldest,
 *                    delayed and running steps, and its runs of the last hour by minute.
 *
 * Both are one SQL function each (sql/ops.sql) over partial indexes of unfinished work. */
#include "api/api_int.h"

static void queue_row_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else if (PQntuples(res) == 0 || PQgetisnull(res, 0, 0)) /* not the operator's tenant */
        api_call_respond_error(call, 404, "not_found", "no such route", NULL);
    else
        api_call_respond_row_json(call, 200, res, "route");
}

void api_route_workers(api_call *call)
{
    if (!api_call_admin_only(call))
        return;
    const char *params[] = {call->tenant_s};
    api_call_db(call, "SELECT flowd_workers_json($1)", 1, params, queue_row_cb);
}

void api_route_queue(api_call *call)
{
    const char *params[] = {call->tenant_s};
    api_call_read(call, "SELECT flowd_queue_json($1)", 1, params, queue_row_cb);
}
