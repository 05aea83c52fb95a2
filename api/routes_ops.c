/* api/routes_ops.c: GET /metrics (Prometheus text), GET /v1/openapi.json and
 * GET /v1/schemas/workflow.json (the JSON Schema of workflow definitions). The documents are open
 * routes. Metrics count rows of all tenants together, so they are the operator's: /metrics asks
 * for FLOWD_METRICS_TOKEN as a bearer token, or an admin key of the operator's tenant (the one
 * named "default"), and answers 401 to anyone else. */
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api_int.h"
#include "engine/buf.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "engine/wf_def.h"

/* api/openapi.json and api/workflow.schema.json, linked in as they are and each followed by a NUL,
 * so that the documents are edited as JSON and the binary needs no file at run time (CMake knows
 * these dependencies through OBJECT_DEPENDS). */
__asm__(".section .rodata\n"
        ".global flowd_openapi_json\n"
        ".hidden flowd_openapi_json\n"
        "flowd_openapi_json:\n"
        ".incbin \"" FLOWD_SOURCE_DIR "/api/openapi.json\"\n"
        ".byte 0\n"
        ".global flowd_workflow_schema_json\n"
        ".hidden flowd_workflow_schema_json\n"
        "flowd_workflow_schema_json:\n"
        ".incbin \"" FLOWD_SOURCE_DIR "/api/workflow.schema.json\"\n"
        ".byte 0\n"
        ".previous\n");
extern const char flowd_openapi_json[];
extern const char flowd_workflow_schema_json[];

static pthread_once_t ops_openapi_once = PTHREAD_ONCE_INIT;
static char *ops_openapi_doc; /* the document as served, built once per process */

/* Points the workflow schema's "#/$defs/NAME" references at its definitions' new home. */
static void ops_rehome_refs(json_t *node)
{
    const char *k;
    json_t *v;
    size_t i;
    if (json_is_array(node)) {
        json_array_foreach (node, i, v)
            ops_rehome_refs(v);
        return;
    }
    json_object_foreach (node, k, v) {
        const char *ref = json_string_value(v);
        if (strcmp(k, "$ref") == 0 && ref && strncmp(ref, "#/$defs/", 8) == 0) {
            char *to = eng_xasprintf("#/components/schemas/workflow_%s", ref + 8);
            json_object_set_new(node, k, json_string(to));
            free(to);
        } else {
            ops_rehome_refs(v);
        }
    }
}

/* PUT /v1/workflows/{name} takes the name from its path: its body is the definition with "name"
 * not required (and checked against the path when given). */
static void ops_registration_build(json_t *schemas, const json_t *wf)
{
    json_t *reg = json_deep_copy(wf);
    json_t *required = json_object_get(reg, "required");
    for (size_t i = json_array_size(required); i-- > 0;)
        if (strcmp(json_string_value(json_array_get(required, i)), "name") == 0)
            json_array_remove(required, i);
    json_t *desc = json_object_get(json_object_get(schemas, "WorkflowRegistration"), "description");
    if (desc)
        json_object_set(reg, "description", desc);
    json_object_set_new(schemas, "WorkflowRegistration", reg);
}

/* The served document is self-contained: the workflow definition's JSON Schema (served on its own
 * at /v1/schemas/workflow.json, the one file both documents come from) is its WorkflowDefinition,
 * with its $defs as components named workflow_NAME, so generators that cannot follow a reference
 * out of the document still type every step kind. Its servers say "/" (the origin it was fetched
 * from); behind a proxy or under another name, FLOWD_PUBLIC_URL is the address clients use. */
static void ops_openapi_build(void)
{
    json_t *doc = json_loads(flowd_openapi_json, 0, NULL);
    json_t *wf = json_loads(flowd_workflow_schema_json, 0, NULL);
    json_t *schemas = json_object_get(json_object_get(doc, "components"), "schemas");
    if (json_is_object(schemas) && json_is_object(wf)) {
        json_t *defs = json_incref(json_object_get(wf, "$defs"));
        json_object_del(wf, "$defs");
        json_object_del(wf, "$schema");
        json_object_del(wf, "$id");
        const char *name;
        json_t *def;
        json_object_foreach (defs, name, def) {
            char *key = eng_xasprintf("workflow_%s", name);
            ops_rehome_refs(def);
            json_object_set(schemas, key, def);
            free(key);
        }
        json_decref(defs);
        ops_rehome_refs(wf);
        json_t *docs =
            json_object_get(json_object_get(schemas, "WorkflowDefinition"), "externalDocs");
        if (docs)
            json_object_set(wf, "externalDocs", docs);
        json_object_set(schemas, "WorkflowDefinition", wf);
        ops_registration_build(schemas, wf);
    }
    json_decref(wf);
    const char *url = getenv("FLOWD_PUBLIC_URL");
    if (doc && url && *url)
        json_object_set_new(doc, "servers", json_pack("[{s:s}]", "url", url));
    ops_openapi_doc = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
}

void api_route_openapi(api_call *call)
{
    pthread_once(&ops_openapi_once, ops_openapi_build);
    const char *doc = ops_openapi_doc ? ops_openapi_doc : flowd_openapi_json;
    api_call_respond_raw(call, 200, "application/json", doc, strlen(doc), NULL);
}

void api_route_workflow_schema(api_call *call)
{
    api_call_respond_raw(call, 200, "application/schema+json", flowd_workflow_schema_json,
                         strlen(flowd_workflow_schema_json), NULL);
}

/* The state gauges count what is in flight now: the states with a partial index (runs_active,
 * steps_due, steps_running_owner, steps_waiting) or a table of their own (quota_blocked_steps), so
 * a scrape reads the unfinished rows only, never the finished ones (which grow until retention).
 * Pending steps (their needs unfinished) have no index and are not counted. */
static const char *const ops_run_states[] = {"queued", "running", NULL};
static const char *const ops_step_states[] = {"ready", "running", "waiting", "blocked", NULL};

#define OPS_QUEUE_WORKFLOWS 50 /* queue series: the workflows with the most due steps */

/* One gauge family from the rows of res whose column 0 is table: every state of states, 0 when it
 * has no row. */
static eng_rc ops_gauge(eng_buf *b, const PGresult *res, const char *table, const char *name,
                        const char *help, const char *const *states)
{
    eng_rc rc = eng_buf_appendf(b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
    int n = PQntuples(res);
    for (size_t i = 0; states[i] && rc == ENG_OK; i++) {
        const char *count = "0";
        for (int r = 0; r < n; r++)
            if (strcmp(PQgetvalue(res, r, 0), table) == 0 &&
                strcmp(PQgetvalue(res, r, 1), states[i]) == 0)
                count = PQgetvalue(res, r, 2);
        rc = eng_buf_appendf(b, "%s{state=\"%s\"} %s\n", name, states[i], count);
    }
    return rc;
}

/* The queue families from the rows whose column 0 is "queue": (workflow, due steps, age in
 * seconds of the oldest). */
static eng_rc ops_queue(eng_buf *b, const PGresult *res)
{
    static const char *const heads[] = {
        "# HELP flowd_queue_due_steps Ready steps whose time has come, waiting for a worker, by "
        "workflow (all tenants; the workflows with the most).\n"
        "# TYPE flowd_queue_due_steps gauge\n",
        "# HELP flowd_queue_oldest_due_age_seconds How long the longest-waiting due step of the "
        "workflow has been due.\n"
        "# TYPE flowd_queue_oldest_due_age_seconds gauge\n"};
    static const char *const names[] = {"flowd_queue_due_steps",
                                        "flowd_queue_oldest_due_age_seconds"};
    eng_rc rc = ENG_OK;
    for (int pass = 0; pass < 2 && rc == ENG_OK; pass++) {
        rc = eng_buf_appendf(b, "%s", heads[pass]);
        for (int r = 0; r < PQntuples(res) && rc == ENG_OK; r++) {
            if (strcmp(PQgetvalue(res, r, 0), "queue") != 0)
                continue;
            /* workflow names are free text: escaped as the exposition format wants */
            eng_buf label;
            eng_buf_init(&label, 0);
            for (const char *p = PQgetvalue(res, r, 1); *p && rc == ENG_OK; p++)
                rc = *p == '\\' || *p == '"' ? eng_buf_appendf(&label, "\\%c", *p)
                     : *p == '\n'            ? eng_buf_append(&label, "\\n", 2)
                                             : eng_buf_append(&label, p, 1);
            if (rc == ENG_OK)
                rc = eng_buf_appendf(b, "%s{workflow=\"%s\"} %s\n", names[pass],
                                     label.ptr ? label.ptr : "", PQgetvalue(res, r, 2 + pass));
            eng_buf_deinit(&label);
        }
    }
    return rc;
}

static void metrics_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    eng_buf b;
    eng_buf_init(&b, 0);
    eng_rc rc = ops_gauge(&b, res, "runs", "flowd_runs",
                          "Runs of all tenants not finished now, by state.", ops_run_states);
    if (rc == ENG_OK)
        rc = ops_gauge(&b, res, "steps", "flowd_steps",
                       "Steps of all tenants in flight now, by state (ready: may be due later).",
                       ops_step_states);
    if (rc == ENG_OK)
        rc = ops_queue(&b, res);
    if (rc == ENG_OK)
        rc = eng_metrics_render(&b);
    if (rc != ENG_OK) {
        eng_buf_deinit(&b);
        eng_err e;
        eng_err_set(&e, rc, "cannot render metrics");
        api_call_respond_err(call, &e);
        return;
    }
    api_call_respond_raw(call, 200, "text/plain; version=0.0.4; charset=utf-8", b.ptr, b.len, NULL);
    eng_buf_deinit(&b);
}

/* One statement, so every family comes from one snapshot; each part reads a partial index of
 * unfinished rows (the queue part: the due ready steps, with their runs and workflows). */
#define OPS_STR2(x) #x
#define OPS_STR(x) OPS_STR2(x)
static const char ops_metrics_sql[] =
    "SELECT 'runs', state, count(*)::text, NULL FROM runs"
    " WHERE finished_at IS NULL AND state IN ('queued', 'running') GROUP BY state"
    " UNION ALL SELECT 'steps', 'ready', count(*)::text, NULL FROM steps WHERE state = 'ready'"
    " UNION ALL SELECT 'steps', 'running', count(*)::text, NULL FROM steps WHERE state = 'running'"
    " UNION ALL SELECT 'steps', 'waiting', count(*)::text, NULL FROM steps WHERE state = 'waiting'"
    " UNION ALL SELECT 'steps', 'blocked', count(*)::text, NULL FROM quota_blocked_steps b"
    "  WHERE EXISTS (SELECT 1 FROM steps s WHERE s.id = b.step_id AND s.state = 'blocked')"
    /* each due step's run looked up by id (a join could scan all runs), then the workflows;
     * (SELECT flowd_now()) is read once, not once a row */
    " UNION ALL (SELECT 'queue', w.name, sum(q.n)::text,"
    "        round(extract(epoch FROM (SELECT flowd_now()) - min(q.oldest))::numeric, 3)::text"
    "   FROM (SELECT (SELECT r.workflow_id FROM runs r WHERE r.id = s.run_id) AS wf,"
    "                count(*) AS n, min(s.run_at) AS oldest"
    "           FROM steps s WHERE s.state = 'ready' AND s.run_at <= (SELECT flowd_now())"
    "          GROUP BY 1) q"
    "   JOIN workflows w ON w.id = q.wf"
    "  GROUP BY w.name ORDER BY sum(q.n) DESC, w.name LIMIT " OPS_STR(OPS_QUEUE_WORKFLOWS) ")";

static void metrics_query(api_call *call)
{
    api_call_db(call, ops_metrics_sql, 0, NULL, metrics_cb);
}

static void metrics_denied(api_call *call)
{
    api_call_respond_error(call, 401, "unauthorized",
                           "metrics need the metrics token or an operator's admin key", NULL);
}

static void operator_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else if (PQntuples(res) == 0)
        metrics_denied(call);
    else
        metrics_query(call);
}

void api_route_metrics(api_call *call)
{
    const char *h = api_req_header(call->req, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0 || !h[7]) {
        metrics_denied(call);
        return;
    }
    const char *given = h + 7, *token = getenv("FLOWD_METRICS_TOKEN");
    if (token && *token && strlen(given) == strlen(token) &&
        CRYPTO_memcmp(given, token, strlen(token)) == 0) {
        metrics_query(call);
        return;
    }
    char *digest = wf_sha256_hex(given, strlen(given));
    const char *params[] = {digest};
    api_call_db(call,
                "SELECT 1 FROM api_keys k JOIN tenants t ON t.id = k.tenant_id"
                " WHERE k.key_hash = decode($1, 'hex') AND k.revoked_at IS NULL"
                " AND k.role = 'admin' AND t.name = 'default'",
                1, params, operator_cb);
    free(digest);
}
