/* cli/cmd_runs.c: flowd init, migrate, enqueue, status, event, cancel, retry and clock on the
 * database (init and migrate may create the embedded cluster; the others never do). */
#include <getopt.h>
#include <stdbool.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/duration.h"
#include "engine/jschema.h"
#include "engine/mem.h"
#include "engine/wf_def.h"
#include "engine/wf_trigger.h"

int cli_cmd_migrate(cli_env *env, int argc, char **argv)
{
    env->allow_breaking = argc == 2 && strcmp(argv[1], "--allow-breaking") == 0;
    if (argc != 1 && !env->allow_breaking) {
        cli_command_usage_error(argv[0]);
        return 2;
    }
    eng_err err;
    if (cli_env_open(env, true, &err) != ENG_OK)
        return cli_fail(&err);
    printf("flowd: database is up to date\n");
    return 0;
}

int cli_cmd_init(cli_env *env, int argc, char **argv)
{
    if (argc != 1) {
        cli_command_usage_error(argv[0]);
        return 2;
    }
    eng_err err;
    if (cli_env_open(env, true, &err) != ENG_OK)
        return cli_fail(&err);
    if (env->database_url)
        printf("flowd: the database is ready\n");
    else
        printf("flowd: the database in %s is ready (flowd serve --data %s serves it)\n",
               env->data_dir, env->data_dir);
    return 0;
}

int cli_cmd_enqueue(cli_env *env, int argc, char **argv)
{
    static const struct option longopts[] = {{"workflow", required_argument, NULL, 'w'},
                                             {"input", required_argument, NULL, 'i'},
                                             {"priority", required_argument, NULL, 'p'},
                                             {"idempotency-key", required_argument, NULL, 'k'},
                                             {NULL, 0, NULL, 0}};
    const char *file = NULL, *input = "{}", *priority = "0", *idem = NULL;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "w:i:p:k:", longopts, NULL)) != -1) {
        switch (ch) {
        case 'w': file = optarg; break;
        case 'i': input = optarg; break;
        case 'p': priority = optarg; break;
        case 'k': idem = optarg; break;
        default: return 2;
        }
    }
    if (!file) {
        cli_command_usage_error("enqueue");
        return 2;
    }
    eng_err err;
    json_error_t jerr;
    json_t *in = json_loads(input, 0, &jerr);
    if (!in) {
        eng_err_field(&err, ENG_EINVAL, "--input", "not JSON: %s", jerr.text);
        return cli_fail(&err);
    }
    json_t *inputs = json_pack("[O]", in);
    char *inputs_s = json_dumps(inputs, JSON_COMPACT);
    json_decref(inputs);
    int status = 1;
    long long tenant, workflow = 0;
    if (cli_env_open(env, false, &err) != ENG_OK || !(tenant = cli_default_tenant(env, &err)) ||
        cli_register_file(env, tenant, file, &workflow, NULL, &err) != ENG_OK) {
        status = cli_fail(&err);
        goto out;
    }
    char tenant_s[24], workflow_s[24];
    snprintf(tenant_s, sizeof tenant_s, "%lld", tenant);
    snprintf(workflow_s, sizeof workflow_s, "%lld", workflow);
    /* the input is checked as the API checks it (wf_def.h input_check), before the run exists */
    const char *wparams[] = {workflow_s};
    PGresult *chk = cli_exec(env, "SELECT nullif(def->'input_check', 'null') FROM workflows"
                                  " WHERE id = $1",
                             1, wparams, &err);
    if (!chk) {
        status = cli_fail(&err);
        goto out;
    }
    json_t *schema = PQntuples(chk) && !PQgetisnull(chk, 0, 0)
                         ? json_loads(PQgetvalue(chk, 0, 0), 0, NULL)
                         : NULL;
    PQclear(chk);
    jschema *js = NULL;
    eng_rc rc = schema ? jschema_compile(schema, "", &js, &err) : ENG_OK;
    if (rc == ENG_OK && js)
        rc = jschema_validate(js, in, "--input", &err);
    jschema_free(js);
    json_decref(schema);
    if (rc != ENG_OK) {
        status = cli_fail(&err);
        goto out;
    }
    const char *params[] = {tenant_s, workflow_s, inputs_s, priority, idem};
    PGresult *res = cli_exec(env, "SELECT run_id FROM flowd_enqueue($1, $2, $3::jsonb, $4, $5, NULL)",
                             5, params, &err);
    if (!res) {
        status = cli_fail(&err);
        goto out;
    }
    printf("%s\n", PQgetvalue(res, 0, 0));
    PQclear(res);
    status = 0;
out:
    free(inputs_s);
    json_decref(in);
    return status;
}

int cli_cmd_status(cli_env *env, int argc, char **argv)
{
    if (argc != 2) {
        cli_command_usage_error("status");
        return 2;
    }
    eng_err err;
    long long tenant;
    if (cli_env_open(env, false, &err) != ENG_OK || !(tenant = cli_default_tenant(env, &err)))
        return cli_fail(&err);
    char *end;
    long long id = strtoll(argv[1], &end, 10);
    if (*end || id <= 0) {
        eng_err_field(&err, ENG_EINVAL, "RUN_ID", "\"%s\" is not a run id", argv[1]);
        return cli_fail(&err);
    }
    char tenant_s[24], id_s[24];
    snprintf(tenant_s, sizeof tenant_s, "%lld", tenant);
    snprintf(id_s, sizeof id_s, "%lld", id);
    const char *params[] = {tenant_s, id_s};
    PGresult *res = cli_exec(env, "SELECT flowd_run_json($1, $2)", 2, params, &err);
    if (!res)
        return cli_fail(&err);
    if (PQgetisnull(res, 0, 0)) {
        PQclear(res);
        eng_err_set(&err, ENG_ENOTFOUND, "run %lld not found", id);
        return cli_fail(&err);
    }
    json_t *run = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    PQclear(res);
    char *text = json_dumps(run, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("%s\n", text);
    free(text);
    json_decref(run);
    return 0;
}

/* flowd clock advance --to-next-due: prints where the clock went (or that nothing is scheduled). */
static int clock_to_next_due(cli_env *env)
{
    eng_err err;
    PGresult *res = cli_exec(env, "SELECT flowd_clock_advance_to_next_due()", 0, NULL, &err);
    if (!res)
        return cli_fail(&err);
    json_t *r = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    PQclear(res);
    const char *due = json_string_value(json_object_get(r, "due_at"));
    long long offset = (long long)json_integer_value(json_object_get(r, "offset_ms"));
    if (due)
        printf("flowd: clock moved %lld ms to %s, the next due step; offset is now %lld ms\n",
               (long long)json_integer_value(json_object_get(r, "advanced_ms")), due, offset);
    else
        printf("flowd: nothing is scheduled later; clock offset stays %lld ms\n", offset);
    json_decref(r);
    return 0;
}

/* The clock's test mode is the database's (set by `flowd serve` with FLOWD_TEST_CLOCK=1), and the
 * database refuses to move a clock that is not in test mode: this process's environment decides
 * nothing, so it cannot move the clock under a server in normal mode. */
int cli_cmd_clock(cli_env *env, int argc, char **argv)
{
    eng_err err;
    bool reset = argc == 2 && strcmp(argv[1], "reset") == 0;
    bool advance = argc == 3 && strcmp(argv[1], "advance") == 0;
    if (!reset && !advance) {
        cli_command_usage_error("clock");
        return 2;
    }
    bool to_next = advance && strcmp(argv[2], "--to-next-due") == 0;
    int64_t ms = 0;
    if (advance && !to_next && eng_duration_parse(argv[2], &ms, &err) != ENG_OK) {
        snprintf(err.field, sizeof err.field, "DURATION");
        return cli_fail(&err);
    }
    if (cli_env_open(env, false, &err) != ENG_OK)
        return cli_fail(&err);
    if (to_next)
        return clock_to_next_due(env);
    PGresult *res;
    if (reset) {
        res = cli_exec(env, "SELECT flowd_clock_reset()", 0, NULL, &err);
    } else {
        char ms_s[24];
        snprintf(ms_s, sizeof ms_s, "%lld", (long long)ms);
        const char *params[] = {ms_s};
        res = cli_exec(env, "SELECT flowd_clock_advance($1)", 1, params, &err);
    }
    if (!res)
        return cli_fail(&err);
    if (reset)
        printf("flowd: clock is back to real time (it was %s ms ahead)\n", PQgetvalue(res, 0, 0));
    else
        printf("flowd: clock offset is now %s ms\n", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

/* Parses a positive run id argument. */
static long long runs_parse_id(const char *s, eng_err *err)
{
    char *end;
    long long id = strtoll(s, &end, 10);
    if (*end || id <= 0) {
        eng_err_field(err, ENG_EINVAL, "RUN_ID", "\"%s\" is not a run id", s);
        return 0;
    }
    return id;
}

int cli_event_args(int argc, char **argv, const char **name, const char **key, json_t **data)
{
    static const struct option longopts[] = {{"data", required_argument, NULL, 'd'},
                                             {NULL, 0, NULL, 0}};
    const char *text = "{}";
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "d:", longopts, NULL)) != -1) {
        if (ch != 'd')
            return 2;
        text = optarg;
    }
    if (argc - optind != 2) {
        cli_command_usage_error("event");
        return 2;
    }
    *data = json_loads(text, 0, NULL);
    if (!json_is_object(*data)) {
        json_decref(*data);
        *data = NULL;
        eng_err err;
        eng_err_field(&err, ENG_EINVAL, "--data", "must be a JSON object");
        return cli_fail(&err);
    }
    *name = argv[optind];
    *key = argv[optind + 1];
    return 0;
}

/* Applies an event as the API does: every run its triggers would start has its input checked
 * first (engine/wf_trigger.h), and only the versions checked are started. */
static PGresult *cli_event_apply(cli_env *env, const char *tenant_s, const char *name,
                                 const char *key, const json_t *data, const char *data_s,
                                 eng_err *err)
{
    const char *tparams[] = {tenant_s, name};
    PGresult *trig = cli_exec(env, WF_TRIGGER_ROWS_SQL, 2, tparams, err);
    if (!trig)
        return NULL;
    char *ids = NULL;
    eng_rc rc = wf_trigger_check_rows(trig, name, key, data, &ids, err);
    PQclear(trig);
    if (rc != ENG_OK)
        return NULL;
    const char *params[] = {tenant_s, name, key, data_s, ids};
    PGresult *res = cli_exec(env, WF_TRIGGER_APPLY_SQL, 5, params, err);
    free(ids);
    return res;
}

int cli_cmd_event(cli_env *env, int argc, char **argv)
{
    const char *name, *key;
    json_t *data;
    int status = cli_event_args(argc, argv, &name, &key, &data);
    if (status)
        return status;
    char *data_s = json_dumps(data, JSON_COMPACT);
    eng_err err;
    long long tenant;
    PGresult *res = NULL;
    if (cli_env_open(env, false, &err) == ENG_OK && (tenant = cli_default_tenant(env, &err))) {
        char tenant_s[24];
        snprintf(tenant_s, sizeof tenant_s, "%lld", tenant);
        res = cli_event_apply(env, tenant_s, name, key, data, data_s, &err);
    }
    json_decref(data);
    free(data_s);
    if (!res)
        return cli_fail(&err);
    printf("{\"resumed\": %s, \"cancelled\": %s, \"started\": %s}\n", PQgetvalue(res, 0, 0),
           PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2));
    PQclear(res);
    return 0;
}

/* flowd cancel RUN_ID / flowd retry RUN_ID */
int cli_cmd_cancel_retry(cli_env *env, int argc, char **argv)
{
    bool cancel = strcmp(argv[0], "cancel") == 0;
    if (argc != 2) {
        cli_command_usage_error(argv[0]);
        return 2;
    }
    eng_err err;
    long long id = runs_parse_id(argv[1], &err), tenant;
    if (!id)
        return cli_fail(&err);
    if (cli_env_open(env, false, &err) != ENG_OK || !(tenant = cli_default_tenant(env, &err)))
        return cli_fail(&err);
    char tenant_s[24], id_s[24];
    snprintf(tenant_s, sizeof tenant_s, "%lld", tenant);
    snprintf(id_s, sizeof id_s, "%lld", id);
    const char *params[] = {tenant_s, id_s};
    PGresult *res = cli_exec(env,
                             cancel ? "SELECT flowd_cancel_runs(ARRAY[r.id], '{\"code\":\"cancelled\"}') "
                                      "FROM runs r WHERE r.tenant_id = $1 AND r.id = $2"
                                    : "SELECT flowd_retry_run($1, $2)",
                             2, params, &err);
    if (!res)
        return cli_fail(&err);
    if (PQntuples(res) == 0) {
        PQclear(res);
        eng_err_set(&err, ENG_ENOTFOUND, "run %lld not found", id);
        return cli_fail(&err);
    }
    printf("{\"%s\": %s}\n", cancel ? "cancelled" : "steps_reset", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}
