/* api/routes_export.c: GET /v1/runs/{id}/sequencer.csv — playbooks in a run's output as CSV, one
 * row per persona, the layout sales sequencers import (one contact group per row, one column per
 * touch).
 *
 * A playbook is any object in the run's output (at any depth) with a string "prospect" and a
 * "playbook" whose "personas" is an array: the output of workflows/playbook.json's last step, found
 * at the top of a playbook run and once per prospect inside a prospect_batch run (the map's
 * results). Each persona gives one row: vendor, prospect, persona, then day, subject and body of
 * sequence.touch_1 .. touch_4 (empty cells when a touch is missing). The SQL finds the playbooks
 * and flattens the personas; this file only writes CSV (RFC 4180, CRLF line ends). The run must
 * have succeeded (409 otherwise: until then it has no output). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "api/csv.h"
#include "engine/buf.h"
#include "engine/mem.h"

#define EXPORT_TOUCHES 4

/* Column 0 is the run's state, column 1 whether the row is a persona (the LEFT JOINs give one row
 * of NULLs for a run without playbooks or a playbook without personas), then vendor, prospect,
 * persona and 3 columns per touch. */
static const char export_sql[] =
    "SELECT r.state, e.m IS NOT NULL, p.pb->>'vendor', p.pb->>'prospect', e.per->>'persona', "
    "       e.per#>>'{sequence,touch_1,day}', e.per#>>'{sequence,touch_1,subject}', "
    "       e.per#>>'{sequence,touch_1,body}', "
    "       e.per#>>'{sequence,touch_2,day}', e.per#>>'{sequence,touch_2,subject}', "
    "       e.per#>>'{sequence,touch_2,body}', "
    "       e.per#>>'{sequence,touch_3,day}', e.per#>>'{sequence,touch_3,subject}', "
    "       e.per#>>'{sequence,touch_3,body}', "
    "       e.per#>>'{sequence,touch_4,day}', e.per#>>'{sequence,touch_4,subject}', "
    "       e.per#>>'{sequence,touch_4,body}' "
    "  FROM runs r "
    "  LEFT JOIN LATERAL jsonb_path_query(CASE WHEN r.state = 'succeeded' THEN flowd_run_output(r.id) END, "
    "       'strict $.** ? (@.prospect.type() == \"string\" && "
    "                       @.playbook.personas.type() == \"array\")') "
    "       WITH ORDINALITY AS p(pb, n) ON true "
    "  LEFT JOIN LATERAL jsonb_array_elements(p.pb->'playbook'->'personas') "
    "       WITH ORDINALITY AS e(per, m) ON true "
    " WHERE r.id = $2 AND r.tenant_id = $1 "
    " ORDER BY p.n, e.m";

static void export_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    if (PQntuples(res) == 0) {
        api_call_respond_error(call, 404, "not_found", "run not found", NULL);
        return;
    }
    const char *state = PQgetvalue(res, 0, 0);
    if (strcmp(state, "succeeded") != 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "the run is %s: only a succeeded run has an output to export",
                 state);
        api_call_respond_error(call, 409, "conflict", msg, NULL);
        return;
    }
    eng_buf out;
    eng_buf_init(&out, 0);
    eng_rc rc = eng_buf_appendf(&out, "vendor,prospect,persona");
    for (int t = 1; rc == ENG_OK && t <= EXPORT_TOUCHES; t++)
        rc = eng_buf_appendf(&out, ",email_%d_day,email_%d_subject,email_%d_body", t, t, t);
    if (rc == ENG_OK)
        rc = eng_buf_append(&out, "\r\n", 2);
    int ncols = PQnfields(res);
    for (int i = 0; rc == ENG_OK && i < PQntuples(res); i++) {
        if (PQgetvalue(res, i, 1)[0] != 't')
            continue;
        for (int c = 2; rc == ENG_OK && c < ncols; c++)
            rc = api_csv_field(&out, PQgetvalue(res, i, c), c == ncols - 1);
    }
    if (rc != ENG_OK) { /* the buffer is uncapped: only a broken invariant gets here */
        eng_buf_deinit(&out);
        api_call_respond_error(call, 500, "internal", "internal error", NULL);
        return;
    }
    static const char *const headers[] = {
        "Content-Disposition: attachment; filename=\"sequencer.csv\"", NULL};
    api_call_respond_raw(call, 200, "text/csv; charset=utf-8", out.ptr ? out.ptr : "", out.len,
                         headers);
    eng_buf_deinit(&out);
}

void api_route_run_sequencer_csv(api_call *call)
{
    char *end;
    long long id = strtoll(call->params[0], &end, 10);
    if (*end || id <= 0) {
        api_call_respond_error(call, 404, "not_found", "run not found", NULL);
        return;
    }
    const char *params[] = {call->tenant_s, call->params[0]};
    api_call_db(call, export_sql, 2, params, export_cb);
}
