/* tests/integration/test_cli.c: the flowd command line as people use it, by running the built
 * binary: help and version, unknown commands, global options on either side of the command, serve's
 * options and their environment forms, commands that read never creating a cluster, all-or-nothing
 * registration of a workflows folder, FLOWD_API_KEY for an existing database, and the API commands
 * (runs, show --wait/--follow, workflows, start, outbox, cancel and retry over the API, key create)
 * against an API service and workers started in this process; and every branch of the shipped
 * inbound_reply workflow taken without credentials (the sandbox LLM reads the customer's words). */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/mem.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_engine.h"

/* Variables of the shell running the tests that would change what flowd does. */
#define CLEAN_ENV                                                                                  \
    "FLOWD_URL", "FLOWD_API_KEY", "FLOWD_DATA", "FLOWD_DATABASE_URL", "FLOWD_LISTEN",              \
        "FLOWD_WORKERS", "FLOWD_ROLE", "FLOWD_WORKFLOWS"

typedef struct run_out {
    int status;
    char *out, *err;
} run_out;

/* Runs flowd with argv (NULL-terminated, without "flowd") and extra environment entries. */
static run_out flowd_env(const char *const *env_extra, const char *const *args)
{
    const char *argv[32] = {"flowd"};
    size_t n = 1;
    for (; args[n - 1]; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    const char *env[32] = {CLEAN_ENV};
    size_t e = 0;
    while (env[e])
        e++;
    for (size_t i = 0; env_extra && env_extra[i]; i++)
        env[e++] = env_extra[i];
    env[e] = NULL;
    run_out r;
    r.status = th_flowd_run(argv, env, &r.out, &r.err);
    return r;
}

#define FLOWD(...) flowd_env(NULL, (const char *const[]){__VA_ARGS__, NULL})
#define FLOWD_ENV(env, ...) flowd_env((const char *const[]){env, NULL}, (const char *const[]){__VA_ARGS__, NULL})

static void run_free(run_out *r)
{
    free(r->out);
    free(r->err);
}

static void expect(run_out r, int status, const char *in_out, const char *in_err)
{
    if (r.status != status || (in_out && !strstr(r.out, in_out)) || (in_err && !strstr(r.err, in_err)))
        fail_msg("flowd exited %d (want %d)\nstdout: %s\nstderr: %s\n(want stdout with \"%s\", "
                 "stderr with \"%s\")",
                 r.status, status, r.out, r.err, in_out ? in_out : "", in_err ? in_err : "");
    run_free(&r);
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---------------------------------------------------------------------------- conventions -- */

static void test_help_and_version(void **state)
{
    (void)state;
    char dir[] = "/tmp/flowd_cli_help_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *data = eng_xasprintf("%s/data", dir);
    expect(FLOWD("--help"), 0, "commands:", NULL);
    expect(FLOWD("-h"), 0, "usage: flowd", NULL);
    expect(FLOWD("help"), 0, "commands:", NULL);
    expect(FLOWD("help", "show"), 0, "usage: flowd show RUN_ID", NULL);
    expect(FLOWD("show", "--help"), 0, "--follow", NULL);
    expect(FLOWD("--version"), 0, "flowd ", NULL);
    /* --help never runs the command: migrate would create a cluster here */
    expect(FLOWD("--data", data, "migrate", "--help"), 0, "usage: flowd migrate", NULL);
    expect(FLOWD("serve", "--help", "--data", data), 0, "FLOWD_LISTEN", NULL);
    assert_false(exists(data));
    expect(FLOWD("frobnicate"), 2, NULL, "unknown command \"frobnicate\"");
    expect(FLOWD("help", "frobnicate"), 2, NULL, "unknown command \"frobnicate\"");
    expect(flowd_env(NULL, (const char *const[]){NULL}), 2, NULL, "usage: flowd");
    free(data);
    rmdir(dir);
}

static void test_reads_never_create(void **state)
{
    (void)state;
    char dir[] = "/tmp/flowd_cli_nodb_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *data = eng_xasprintf("%s/data", dir);
    char *data_env = eng_xasprintf("FLOWD_DATA=%s", data);
    expect(FLOWD("--data", data, "status", "1"), 1, NULL, data);
    expect(FLOWD("status", "1", "--data", data), 1, NULL, "no flowd database in");
    expect(FLOWD("cancel", "1", "--data", data), 1, NULL, data);
    expect(FLOWD("retry", "1", "--data", data), 1, NULL, data);
    expect(FLOWD("--data", data, "event", "a", "b", "--data", "{}"), 1, NULL, data);
    expect(FLOWD_ENV(data_env, "key", "create"), 1, NULL, data);
    expect(FLOWD_ENV(data_env, "tenant", "create", "x"), 1, NULL, data);
    assert_false(exists(data));
    free(data_env);
    free(data);
    rmdir(dir);
}

static void test_serve_options(void **state)
{
    (void)state;
    expect(FLOWD("serve", "--listen", "127.0.0.1:99999"), 2, NULL, "--listen");
    expect(FLOWD("serve", "--listen", "8080"), 2, NULL, "--listen");
    expect(FLOWD_ENV("FLOWD_LISTEN=localhost:70000", "serve"), 2, NULL, "FLOWD_LISTEN");
    expect(FLOWD_ENV("FLOWD_WORKERS=0", "serve"), 2, NULL, "FLOWD_WORKERS");
    expect(FLOWD_ENV("FLOWD_WORKERS=abc", "serve", "--workers", "2", "--role", "boss"), 2, NULL,
           "FLOWD_WORKERS");
    expect(FLOWD("serve", "--role", "boss"), 2, NULL, "--role: \"boss\"");
    expect(FLOWD_ENV("FLOWD_REQUEST_TIMEOUT=50ms", "serve"), 2, NULL, "FLOWD_REQUEST_TIMEOUT");
    expect(FLOWD_ENV("FLOWD_ALLOW_PRIVATE_TARGETS=maybe", "serve"), 2, NULL,
           "FLOWD_ALLOW_PRIVATE_TARGETS");
    expect(FLOWD("serve", "--retention", "soon"), 2, NULL, "--retention");
    expect(FLOWD("serve", "--read-max-lag", "5ms"), 2, NULL, "--read-max-lag: at least 10ms");
    expect(FLOWD_ENV("FLOWD_READ_MAX_LAG=soon", "serve"), 2, NULL, "FLOWD_READ_MAX_LAG");
    expect(FLOWD("serve", "--workers"), 2, NULL, "--workers");
    expect(FLOWD("serve", "--frob"), 2, NULL, "--frob");
    expect(FLOWD("serve", "--url", "http://127.0.0.1:1"), 1, NULL, "--url");
}

/* A bad file in --workflows is named and nothing of the folder is registered; FLOWD_API_KEY given
 * for a database whose default tenant exists must be one of its keys. */
static void test_serve_start_up(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("cli_startup", &tenant);
    char dir[] = "/tmp/flowd_cli_wf_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *good = eng_xasprintf("%s/a_good.json", dir), *bad = eng_xasprintf("%s/b_bad.json", dir);
    FILE *f = fopen(good, "w");
    fputs("{\"name\": \"good\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\"}]}", f);
    fclose(f);
    f = fopen(bad, "w");
    fputs("{\"name\": \"bad\", \"steps\": [{\"key\": \"a\", \"kind\": \"transform\", \"needs\": "
          "[\"zz\"]}]}",
          f);
    fclose(f);
    run_out r = FLOWD("--database", db, "serve", "--workflows", dir, "--listen", "127.0.0.1:0");
    expect(r, 1, NULL, "b_bad.json: /steps/0/needs/0: unknown step \"zz\"");
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM workflows"), 0);

    char wrong[] = "FLOWD_API_KEY=fd_not_a_key_of_this_database";
    expect(FLOWD_ENV(wrong, "serve", "--database", db, "--listen", "127.0.0.1:0"), 1, NULL,
           "FLOWD_API_KEY: not a key of this database's default tenant");
    unlink(good);
    unlink(bad);
    rmdir(dir);
    free(good);
    free(bad);
    free(db);
}

/* ----------------------------------------------------------------------- the API commands -- */

static th_api *api;
static char *url_env, *key_env;

static const char wf_ok[] = "{\"name\": \"cli_ok\", \"steps\": ["
                            "{\"key\": \"a\", \"kind\": \"transform\", \"input\": {\"v\": \"{{input.v}}\"}},"
                            "{\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"], "
                            "\"input\": {\"w\": \"{{steps.a.output.v}}\"}}]}";
/* fails at its step: what b gave holds no "missing" (an input missing a path is refused when the
 * run is enqueued instead) */
static const char wf_fail[] = "{\"name\": \"cli_fail\", \"steps\": ["
                              "{\"key\": \"b\", \"kind\": \"transform\", \"input\": {\"y\": 1}},"
                              "{\"key\": \"a\", \"kind\": \"transform\", \"needs\": [\"b\"],"
                              " \"input\": {\"v\": \"{{steps.b.output.missing}}\"}}]}";
static const char wf_wait[] = "{\"name\": \"cli_wait\", \"steps\": ["
                              "{\"key\": \"w\", \"kind\": \"wait_event\", \"input\": {\"event\": \"go\", \"key\": \"{{input.k}}\"}}]}";

static json_t *out_json(run_out r)
{
    if (r.status != 0)
        fail_msg("flowd exited %d: %s", r.status, r.err);
    json_t *j = json_loads(r.out, JSON_DECODE_ANY, NULL);
    if (!j)
        fail_msg("not JSON: %s", r.out);
    run_free(&r);
    return j;
}

static void test_api_commands(void **state)
{
    (void)state;
    json_decref(th_api_json(api, 201, "PUT", "/v1/workflows/cli_ok", wf_ok));
    json_decref(th_api_json(api, 201, "PUT", "/v1/workflows/cli_fail", wf_fail));
    json_decref(th_api_json(api, 201, "PUT", "/v1/workflows/cli_wait", wf_wait));
    const char *const env[] = {url_env, key_env, NULL};

    /* start by name and wait: the exit status is the run's outcome */
    run_out r = flowd_env(env, (const char *const[]){"start", "cli_ok", "--input", "{\"v\": 7}",
                                                     "--wait", NULL});
    json_t *run = out_json(r);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    long long ok_id = json_integer_value(json_object_get(run, "id"));
    json_decref(run);
    r = flowd_env(env, (const char *const[]){"start", "cli_fail", "--wait", NULL});
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.out, "step_failed"));
    run_free(&r);
    expect(flowd_env(env, (const char *const[]){"start", "no_such_flow", NULL}), 1, NULL,
           "workflow no_such_flow not found");
    expect(flowd_env(env, (const char *const[]){"start", "cli_ok", "--input", "[1]", NULL}), 1,
           NULL, "--input");

    /* list runs with the API's filters, show one, list workflows */
    json_t *list = out_json(flowd_env(env, (const char *const[]){"runs", "--state", "succeeded", NULL}));
    assert_int_equal(json_array_size(json_object_get(list, "runs")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(list, "runs"), 0), "id")),
                     ok_id);
    json_decref(list);
    expect(flowd_env(env, (const char *const[]){"runs", "--state", "sleeping", NULL}), 1, NULL,
           "state");
    char id_s[24];
    snprintf(id_s, sizeof id_s, "%lld", ok_id);
    run = out_json(flowd_env(env, (const char *const[]){"show", id_s, NULL}));
    json_t *w = json_object_get(json_object_get(json_object_get(run, "output"), "b"), "w");
    assert_int_equal(json_integer_value(w), 7);
    json_decref(run);
    json_t *wfs = out_json(flowd_env(env, (const char *const[]){"workflows", NULL}));
    assert_int_equal(json_array_size(json_object_get(wfs, "workflows")), 3);
    json_decref(wfs);

    /* follow a waiting run, cancel it over the API, retry it over the API */
    r = flowd_env(env, (const char *const[]){"start", "cli_wait", "--input", "{\"k\": \"x1\"}", NULL});
    json_t *started = out_json(r);
    long long wait_id = json_integer_value(json_object_get(started, "id"));
    json_decref(started);
    snprintf(id_s, sizeof id_s, "%lld", wait_id);
    expect(flowd_env(env, (const char *const[]){"cancel", id_s, NULL}), 0, "\"cancelled\"", NULL);
    r = flowd_env(env, (const char *const[]){"show", id_s, "--follow", NULL});
    assert_int_equal(r.status, 3); /* cancelled */
    assert_non_null(strstr(r.out, "\"run.cancelled\""));
    run_free(&r);
    expect(flowd_env(env, (const char *const[]){"retry", id_s, NULL}), 0, NULL, NULL);
    assert_true(th_engine_wait(th_api_db(api),
                               "SELECT count(*) = 1 FROM steps WHERE state = 'waiting'", 30));
    expect(flowd_env(env, (const char *const[]){"event", "go", "x1", "--data", "{\"n\": 1}", NULL}), 0,
           "\"resumed\": 1", NULL);
    expect(flowd_env(env, (const char *const[]){"show", id_s, "--wait", NULL}), 0, "succeeded", NULL);

    /* the outbox of the sandbox providers (empty here: no message steps) */
    json_t *ob = out_json(flowd_env(env, (const char *const[]){"outbox", NULL}));
    assert_true(json_is_array(json_object_get(ob, "messages")));
    json_decref(ob);
}

/* --url reads the key from --data's api-key when FLOWD_API_KEY is not set; without either it says
 * what is missing. */
static void test_api_key_sources(void **state)
{
    (void)state;
    char dir[] = "/tmp/flowd_cli_key_XXXXXX";
    assert_non_null(mkdtemp(dir));
    expect(flowd_env((const char *const[]){url_env, NULL},
                     (const char *const[]){"workflows", "--data", dir, NULL}),
           1, NULL, "FLOWD_API_KEY");
    char *path = eng_xasprintf("%s/api-key", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "%s\n", TH_API_KEY);
    fclose(f);
    expect(flowd_env((const char *const[]){url_env, NULL},
                     (const char *const[]){"workflows", "--data", dir, NULL}),
           0, "\"workflows\"", NULL);
    /* --url given explicitly to a command that works on the database */
    expect(FLOWD("--url", th_api_url(api), "clock", "advance", "1h"), 1, NULL, "--url");
    unlink(path);
    free(path);
    rmdir(dir);
}

/* key create makes a working key for an existing tenant, from the database alone. */
static void test_key_create(void **state)
{
    (void)state;
    json_t *k = out_json(FLOWD("key", "create", "--database", th_api_db(api)));
    const char *key = json_string_value(json_object_get(k, "key"));
    assert_non_null(key);
    char *env_key = eng_xasprintf("FLOWD_API_KEY=%s", key);
    expect(flowd_env((const char *const[]){url_env, env_key, NULL},
                     (const char *const[]){"runs", NULL}),
           0, "\"runs\"", NULL);
    free(env_key);
    json_decref(k);
    expect(FLOWD("key", "create", "--tenant", "nobody", "--database", th_api_db(api)), 1, NULL,
           "--tenant");
    expect(FLOWD("key", "create", "--role", "root", "--database", th_api_db(api)), 1, NULL,
           "--role");
}

/* flowd schedule set/show/list/pause/resume/trigger/delete and flowd start --start-in, through the
 * HTTP API; refusals name the option or the field. */
static void test_schedule_commands(void **state)
{
    (void)state;
    const char *const env[] = {url_env, key_env, NULL};
    json_t *s = out_json(flowd_env(env, (const char *const[]){
        "schedule", "set", "cli-daily", "--workflow", "cli_ok", "--cron", "30 2 * * *", "--tz",
        "America/New_York", "--input", "{\"v\": 1}", "--overlap", "skip", NULL}));
    assert_string_equal(json_string_value(json_object_get(s, "tz")), "America/New_York");
    assert_int_equal(json_array_size(json_object_get(s, "next_fires")), 10);
    json_decref(s);
    expect(flowd_env(env, (const char *const[]){"schedule", "show", "cli-daily", NULL}), 0,
           "\"local\"", NULL);
    expect(flowd_env(env, (const char *const[]){"schedule", "list", NULL}), 0, "cli-daily", NULL);
    expect(flowd_env(env, (const char *const[]){"schedule", "pause", "cli-daily", NULL}), 0,
           "\"paused\": true", NULL);
    expect(flowd_env(env, (const char *const[]){"schedule", "resume", "cli-daily", NULL}), 0,
           "\"paused\": false", NULL);
    expect(flowd_env(env, (const char *const[]){"schedule", "trigger", "cli-daily", NULL}), 0,
           "\"schedule\": \"cli-daily\"", NULL);
    expect(flowd_env(env, (const char *const[]){"schedule", "set", "cli-bad", "--workflow",
                                                "cli_ok", "--cron", "0 25 * * *", NULL}),
           1, NULL, "/cron");
    expect(flowd_env(env, (const char *const[]){"schedule", "set", "cli-bad", "--workflow",
                                                "cli_ok", "--every", "1m", "--version", "x",
                                                NULL}),
           1, NULL, "--version");
    expect(flowd_env(env, (const char *const[]){"schedule", "delete", "cli-daily", NULL}), 0, NULL,
           NULL);
    expect(flowd_env(env, (const char *const[]){"schedule", "show", "cli-daily", NULL}), 1, NULL,
           "not found");
    expect(flowd_env(env, (const char *const[]){"schedule", "frobnicate", NULL}), 2, NULL, NULL);

    json_t *run = out_json(flowd_env(env, (const char *const[]){"start", "cli_ok", "--input",
                                                                "{\"v\": 2}", "--start-in", "2h",
                                                                NULL}));
    assert_string_equal(json_string_value(json_object_get(run, "state")), "scheduled");
    json_decref(run);
    expect(flowd_env(env, (const char *const[]){"start", "cli_ok", "--start-at",
                                                "2027-02-30T00:00:00Z", NULL}),
           1, NULL, "/start_at");
}

/* The shipped inbound classifier in the sandbox: each message takes its branch. */
static void test_sandbox_branches(void **state)
{
    (void)state;
    assert_int_equal(th_api_put_shipped(api, "inbound_reply"), 1);
    static const struct {
        const char *from, *body, *intent, *branch;
    } cases[] = {
        {"+15557770001", "STOP", "opt_out", "unsubscribe_sms"},
        {"+15557770002", "Can I book a table for Friday?", "booking", "booking"},
        {"+15557770003", "What are your opening hours?", "question", "answer"},
        {"+15557770004", "I want to talk to a person", "human", "handoff"},
    };
    const char *const env[] = {url_env, key_env, NULL};
    for (size_t i = 0; i < ENG_ARRAY_LEN(cases); i++) {
        char *data = eng_xasprintf("{\"body\": \"%s\", \"to\": \"+15550009999\"}", cases[i].body);
        expect(flowd_env(env, (const char *const[]){"event", "sms.received", cases[i].from, "--data",
                                                    data, NULL}),
               0, "\"started\": 1", NULL);
        free(data);
    }
    assert_true(th_engine_wait(th_api_db(api),
                               "SELECT count(*) = 4 FROM runs r JOIN workflows w ON w.id = r.workflow_id "
                               "WHERE w.name = 'inbound_reply' AND r.state = 'succeeded'",
                               30));
    PGconn *c = th_pgc_open(th_api_db(api));
    for (size_t i = 0; i < ENG_ARRAY_LEN(cases); i++) {
        const char *sql = "SELECT s.key || ':' || s.state FROM steps s JOIN runs r ON r.id = s.run_id "
                          "WHERE r.input->'event'->>'key' = $1 AND s.key = $2";
        char *want = eng_xasprintf("%s:succeeded", cases[i].branch);
        th_pgc_expect(c, want, sql, TH_P(cases[i].from, cases[i].branch));
        free(want);
        th_pgc_expect(c, cases[i].intent,
                      "SELECT s.output->'json'->>'intent' FROM steps s JOIN runs r ON r.id = s.run_id "
                      "WHERE r.input->'event'->>'key' = $1 AND s.key = 'classify'",
                      TH_P(cases[i].from));
    }
    PQfinish(c);
}

/* flowd hook set/show/list/delete through the HTTP API; a refusal names the field. */
static void test_hook_commands(void **state)
{
    (void)state;
    const char *const env[] = {url_env, key_env, NULL};
    char good[] = "/tmp/flowd-cli-hook-XXXXXX", bad[] = "/tmp/flowd-cli-hook-XXXXXX";
    int fd = mkstemp(good);
    assert_true(fd >= 0);
    const char def[] = "{\"verify\": {\"hmac\": \"sha256\", \"header\": \"X-Signature\","
                       " \"secret\": \"cli-secret\"}, \"event\": {\"name\": \"crm.order\","
                       " \"key\": \"{{body.order_id}}\"}}";
    assert_int_equal(write(fd, def, sizeof def - 1), (ssize_t)(sizeof def - 1));
    close(fd);
    fd = mkstemp(bad);
    assert_true(fd >= 0);
    const char wrong[] = "{\"verify\": {\"hmac\": \"md5\", \"header\": \"X\", \"secret\": \"s\"},"
                         " \"event\": {\"name\": \"x\", \"key\": \"k\"}}";
    assert_int_equal(write(fd, wrong, sizeof wrong - 1), (ssize_t)(sizeof wrong - 1));
    close(fd);
    expect(flowd_env(env, (const char *const[]){"hook", "set", "cli-crm", good, NULL}), 0,
           "\"secret_set\": true", NULL);
    expect(flowd_env(env, (const char *const[]){"hook", "show", "cli-crm", NULL}), 0,
           "crm.order", NULL);
    expect(flowd_env(env, (const char *const[]){"hook", "list", NULL}), 0, "cli-crm", NULL);
    expect(flowd_env(env, (const char *const[]){"hook", "set", "cli-bad", bad, NULL}), 1, NULL,
           "/verify/hmac");
    expect(flowd_env(env, (const char *const[]){"hook", "delete", "cli-crm", NULL}), 0, NULL,
           NULL);
    expect(flowd_env(env, (const char *const[]){"hook", "show", "cli-crm", NULL}), 1, NULL,
           "not found");
    expect(flowd_env(env, (const char *const[]){"hook", "frobnicate", NULL}), 2, NULL, NULL);
    unlink(good);
    unlink(bad);
}

static int api_setup(void **state)
{
    (void)state;
    /* the in-process server seals hooks' secrets under it */
    setenv("FLOWD_SECRET_KEY", "8a1e3f0c6b2d4e5f8a1e3f0c6b2d4e5f8a1e3f0c6b2d4e5f8a1e3f0c6b2d4e5f", 1);
    static const char *const creds[] = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "SENDGRID_API_KEY",
                                        "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "WHATSAPP_TOKEN"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(creds); i++)
        unsetenv(creds[i]);
    api = th_api_start(&(th_api_opts){.prefix = "cli_api", .workers = 1});
    url_env = eng_xasprintf("FLOWD_URL=%s", th_api_url(api));
    key_env = eng_xasprintf("FLOWD_API_KEY=%s", TH_API_KEY);
    return 0;
}

static int api_teardown(void **state)
{
    (void)state;
    th_api_stop(api);
    free(url_env);
    free(key_env);
    return 0;
}

int main(void)
{
    th_api_init();
    step_register_all();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_and_version),
        cmocka_unit_test(test_reads_never_create),
        cmocka_unit_test(test_serve_options),
        cmocka_unit_test(test_serve_start_up),
        cmocka_unit_test(test_api_commands),
        cmocka_unit_test(test_api_key_sources),
        cmocka_unit_test(test_key_create),
        cmocka_unit_test(test_sandbox_branches),
        cmocka_unit_test(test_schedule_commands),
        cmocka_unit_test(test_hook_commands),
    };
    return cmocka_run_group_tests(tests, api_setup, api_teardown);
}
