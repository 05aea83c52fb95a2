/* cli/cmd_inspect.c: the commands people reach for to look at a running flowd, all through its HTTP
 * API: runs (list, with the API's filters), show (a run; --follow streams its events until it ends,
 * --wait waits for the end), workflows, start (a registered workflow by name) and outbox.
 *
 * Output is for people on a terminal (aligned columns, times in UTC) and JSON, as the API answers
 * it, with --json or when stdout is not a terminal (cli_env.json), so scripts get JSON without
 * asking. Waiting polls the API (every 250 ms, then up to every 2 s): a command-line client has no
 * loop to wake and a poll of an unchanged run costs the server a version check. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "engine/mem.h"

/* Exit statuses of show --wait / --follow and start --wait, by the run's final state. */
enum { EXIT_SUCCEEDED = 0, EXIT_FAILED = 1, EXIT_CANCELLED = 3 };

/* A time of the API (RFC 3339, "2026-11-23T14:00:00.046Z") as "2026-11-23 14:00:00", or "-". */
static const char *insp_time(const json_t *v, char buf[32])
{
    const char *s = json_string_value(v);
    if (!s || strlen(s) < 19)
        return "-";
    snprintf(buf, 32, "%.10s %.8s", s, s + 11);
    return buf;
}

static const char *insp_str(const json_t *obj, const char *name)
{
    const char *s = json_string_value(json_object_get(obj, name));
    return s ? s : "-";
}

static bool insp_final(const char *state)
{
    return strcmp(state, "succeeded") == 0 || strcmp(state, "failed") == 0 ||
           strcmp(state, "cancelled") == 0;
}

static int insp_exit(const char *state)
{
    if (strcmp(state, "succeeded") == 0)
        return EXIT_SUCCEEDED;
    return strcmp(state, "cancelled") == 0 ? EXIT_CANCELLED : EXIT_FAILED;
}

static long long insp_run_id(const char *s, eng_err *err)
{
    char *end;
    long long id = strtoll(s, &end, 10);
    if (*end || id <= 0) {
        eng_err_field(err, ENG_EINVAL, "RUN_ID", "\"%s\" is not a run id", s);
        return 0;
    }
    return id;
}

/* Appends "&name=escaped value" (or "?name=...") to *q when v is set. */
static void insp_query(char **q, const char *name, const char *v)
{
    if (!v)
        return;
    char *e = cli_api_escape(v);
    char *next = eng_xasprintf("%s%c%s=%s", *q, strchr(*q, '?') ? '&' : '?', name, e);
    free(e);
    free(*q);
    *q = next;
}

/* ------------------------------------------------------------------------------------ runs -- */

static void runs_print(const json_t *list)
{
    printf("%-8s %-24s %-10s %-9s %-20s %s\n", "ID", "WORKFLOW", "STATE", "STEPS", "CREATED (UTC)",
           "PHASE");
    size_t i;
    json_t *r;
    json_array_foreach (json_object_get(list, "runs"), i, r) {
        const json_t *p = json_object_get(r, "progress");
        char steps[32], t[32];
        snprintf(steps, sizeof steps, "%lld/%lld",
                 (long long)json_integer_value(json_object_get(p, "done")),
                 (long long)json_integer_value(json_object_get(p, "total")));
        printf("%-8lld %-24s %-10s %-9s %-20s %s\n",
               (long long)json_integer_value(json_object_get(r, "id")), insp_str(r, "workflow"),
               insp_str(r, "state"), steps, insp_time(json_object_get(r, "created_at"), t),
               insp_str(r, "phase"));
    }
    const char *next = json_string_value(json_object_get(list, "next_cursor"));
    if (next)
        printf("(more: --cursor %s)\n", next);
}

int cli_cmd_runs(cli_env *env, int argc, char **argv)
{
    static const struct option longopts[] = {{"workflow", required_argument, NULL, 'w'},
                                             {"state", required_argument, NULL, 's'},
                                             {"batch", required_argument, NULL, 'b'},
                                             {"limit", required_argument, NULL, 'l'},
                                             {"cursor", required_argument, NULL, 'c'},
                                             {NULL, 0, NULL, 0}};
    const char *vals[5] = {NULL};
    static const char *const names[5] = {"workflow", "state", "batch", "limit", "cursor"};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "w:s:b:l:c:", longopts, NULL)) != -1) {
        const char *p = strchr("wsblc", ch);
        if (ch == '?' || !p) {
            cli_command_usage_error("runs");
            return 2;
        }
        vals[p - "wsblc"] = optarg;
    }
    if (optind != argc) {
        cli_command_usage_error("runs");
        return 2;
    }
    eng_err err;
    cli_api api;
    if (cli_api_open(env, true, &api, &err) != ENG_OK)
        return cli_fail(&err);
    char *path = eng_xstrdup("/v1/runs");
    for (int i = 0; i < 5; i++)
        insp_query(&path, names[i], vals[i]);
    json_t *out;
    int status = 0;
    if (!cli_api_request(&api, "GET", path, NULL, &out, &err)) {
        /* the API names its query parameters; the command line calls them flags */
        if (err.field[0] && !strchr(err.field, '-')) {
            char flag[64];
            snprintf(flag, sizeof flag, "--%.60s", err.field);
            snprintf(err.field, sizeof err.field, "%s", flag);
        }
        status = cli_fail(&err);
    } else {
        if (env->json)
            cli_print_json(out);
        else
            runs_print(out);
        json_decref(out);
    }
    free(path);
    cli_api_free(&api);
    return status;
}

/* ------------------------------------------------------------------------------------ show -- */

static void show_print(const json_t *run)
{
    const json_t *p = json_object_get(run, "progress");
    printf("run %lld  %s v%lld  %s  %lld/%lld steps", (long long)json_integer_value(json_object_get(run, "id")),
           insp_str(run, "workflow"), (long long)json_integer_value(json_object_get(run, "version")),
           insp_str(run, "state"), (long long)json_integer_value(json_object_get(p, "done")),
           (long long)json_integer_value(json_object_get(p, "total")));
    if (json_is_string(json_object_get(run, "phase")))
        printf("  phase: %s", insp_str(run, "phase"));
    printf("\n");
    char t1[32], t2[32];
    printf("created %s  finished %s (UTC)\n", insp_time(json_object_get(run, "created_at"), t1),
           insp_time(json_object_get(run, "finished_at"), t2));
    const json_t *e = json_object_get(run, "error");
    if (json_is_object(e))
        printf("error: %s: %s\n", insp_str(e, "code"), insp_str(e, "message"));
    printf("\n%-28s %-11s %-10s %-9s %s\n", "STEP", "KIND", "STATE", "ATTEMPTS", "ERROR");
    size_t i;
    json_t *s;
    json_array_foreach (json_object_get(run, "steps"), i, s) {
        const json_t *se = json_object_get(s, "error");
        char att[32];
        snprintf(att, sizeof att, "%lld/%lld",
                 (long long)json_integer_value(json_object_get(s, "attempts")),
                 (long long)json_integer_value(json_object_get(s, "max_attempts")));
        printf("%-28s %-11s %-10s %-9s %s%s%s\n", insp_str(s, "key"), insp_str(s, "kind"),
               insp_str(s, "state"), att, json_is_object(se) ? insp_str(se, "code") : "",
               json_is_object(se) ? ": " : "", json_is_object(se) ? insp_str(se, "message") : "");
    }
    const json_t *out = json_object_get(run, "output");
    if (out && !json_is_null(out)) {
        char *text = json_dumps(out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("\noutput:\n%s\n", text ? text : "");
        free(text);
    }
}

static void insp_sleep(int *ms)
{
    usleep((useconds_t)*ms * 1000);
    if (*ms < 2000)
        *ms *= 2;
}

/* Prints the run's events after *seq (one line each, or one JSON object a line) and moves *seq. */
static eng_rc follow_events(const cli_api *api, const cli_env *env, long long id, long long *seq,
                            bool *any, eng_err *err)
{
    char path[96];
    snprintf(path, sizeof path, "/v1/runs/%lld/events?after=%lld&limit=1000", id, *seq);
    json_t *out;
    if (!cli_api_request(api, "GET", path, NULL, &out, err))
        return err->rc;
    size_t i;
    json_t *ev;
    json_array_foreach (json_object_get(out, "events"), i, ev) {
        *seq = json_integer_value(json_object_get(ev, "seq"));
        *any = true;
        if (env->json) {
            char *text = json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER);
            printf("%s\n", text ? text : "{}");
            free(text);
            continue;
        }
        char t[32];
        const json_t *data = json_object_get(ev, "data");
        char *d = data && !json_is_null(data) ? json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY)
                                              : NULL;
        printf("%s  %-16s %-24s %.160s\n", insp_time(json_object_get(ev, "at"), t),
               insp_str(ev, "type"), json_is_string(json_object_get(ev, "step")) ?
                                         insp_str(ev, "step") : "",
               d ? d : "");
        free(d);
    }
    fflush(stdout);
    json_decref(out);
    return ENG_OK;
}

/* Shows run id once, or (follow / wait) until it ends; returns the exit status. */
static int show_run(const cli_api *api, const cli_env *env, long long id, bool follow, bool wait)
{
    eng_err err;
    char path[48];
    snprintf(path, sizeof path, "/v1/runs/%lld", id);
    long long seq = 0;
    int pause = 250;
    for (;;) {
        bool any = false;
        if (follow && follow_events(api, env, id, &seq, &any, &err) != ENG_OK)
            return cli_fail(&err);
        json_t *run;
        if (!cli_api_request(api, "GET", path, NULL, &run, &err))
            return cli_fail(&err);
        const char *state = insp_str(run, "state");
        if (!(follow || wait) || insp_final(state)) {
            if (follow && follow_events(api, env, id, &seq, &any, &err) != ENG_OK) {
                json_decref(run);
                return cli_fail(&err);
            }
            if (!follow) {
                if (env->json)
                    cli_print_json(run);
                else
                    show_print(run);
            } else if (!env->json) {
                printf("run %lld %s\n", id, state);
            }
            int status = (follow || wait) ? insp_exit(state) : 0;
            json_decref(run);
            return status;
        }
        json_decref(run);
        if (any)
            pause = 250;
        insp_sleep(&pause);
    }
}

int cli_cmd_show(cli_env *env, int argc, char **argv)
{
    static const struct option longopts[] = {{"follow", no_argument, NULL, 'f'},
                                             {"wait", no_argument, NULL, 'W'},
                                             {NULL, 0, NULL, 0}};
    bool follow = false, wait = false;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "fW", longopts, NULL)) != -1) {
        if (ch == 'f')
            follow = true;
        else if (ch == 'W')
            wait = true;
        else {
            cli_command_usage_error("show");
            return 2;
        }
    }
    if (argc - optind != 1 || (follow && wait)) {
        cli_command_usage_error("show");
        return 2;
    }
    eng_err err;
    long long id = insp_run_id(argv[optind], &err);
    if (!id)
        return cli_fail(&err);
    cli_api api;
    if (cli_api_open(env, true, &api, &err) != ENG_OK)
        return cli_fail(&err);
    int status = show_run(&api, env, id, follow, wait);
    cli_api_free(&api);
    return status;
}

/* ------------------------------------------------------------------------------- workflows -- */

static void show_workflows(const json_t *out, const void *arg)
{
    (void)arg;
    printf("%-32s %-8s %-9s %s\n", "NAME", "VERSION", "VERSIONS", "UPDATED (UTC)");
    size_t i;
    const json_t *w;
    json_array_foreach (json_object_get(out, "workflows"), i, w) {
        char t[32];
        printf("%-32s %-8lld %-9lld %s\n", insp_str(w, "name"),
               (long long)json_integer_value(json_object_get(w, "version")),
               (long long)json_integer_value(json_object_get(w, "versions")),
               insp_time(json_object_get(w, "updated_at"), t));
    }
}

int cli_cmd_workflows(cli_env *env, int argc, char **argv)
{
    if (argc != 1) {
        cli_command_usage_error(argv[0]);
        return 2;
    }
    return cli_api_command(env, "GET", "/v1/workflows", NULL, show_workflows, NULL);
}

/* ----------------------------------------------------------------------------------- start -- */

/* Sets body's member name to the integer v (when given); false with err naming the flag. */
static bool start_set_int(json_t *body, const char *name, const char *flag, const char *v,
                          eng_err *err)
{
    if (!v)
        return true;
    char *end;
    long long n = strtoll(v, &end, 10);
    if (!*v || *end) {
        eng_err_field(err, ENG_EINVAL, flag, "\"%s\" is not an integer", v);
        return false;
    }
    json_object_set_new(body, name, json_integer(n));
    return true;
}

int cli_cmd_start(cli_env *env, int argc, char **argv)
{
    static const struct option longopts[] = {{"input", required_argument, NULL, 'i'},
                                             {"version", required_argument, NULL, 'v'},
                                             {"priority", required_argument, NULL, 'p'},
                                             {"idempotency-key", required_argument, NULL, 'k'},
                                             {"wait", no_argument, NULL, 'W'},
                                             {"start-at", required_argument, NULL, 'a'},
                                             {"start-in", required_argument, NULL, 'n'},
                                             {NULL, 0, NULL, 0}};
    const char *input = "{}", *version = NULL, *priority = NULL, *idem = NULL, *start_at = NULL,
               *start_in = NULL;
    bool wait = false;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "i:v:p:k:W", longopts, NULL)) != -1) {
        switch (ch) {
        case 'a': start_at = optarg; break;
        case 'n': start_in = optarg; break;
        case 'i': input = optarg; break;
        case 'v': version = optarg; break;
        case 'p': priority = optarg; break;
        case 'k': idem = optarg; break;
        case 'W': wait = true; break;
        default: cli_command_usage_error("start"); return 2;
        }
    }
    if (argc - optind != 1) {
        cli_command_usage_error("start");
        return 2;
    }
    eng_err err;
    json_error_t jerr;
    json_t *in = json_loads(input, 0, &jerr);
    if (!json_is_object(in)) {
        json_decref(in);
        eng_err_field(&err, ENG_EINVAL, "--input", "must be a JSON object");
        return cli_fail(&err);
    }
    json_t *body = json_pack("{s:s, s:o}", "workflow", argv[optind], "input", in);
    if (!start_set_int(body, "version", "--version", version, &err) ||
        !start_set_int(body, "priority", "--priority", priority, &err)) {
        json_decref(body);
        return cli_fail(&err);
    }
    if (idem)
        json_object_set_new(body, "idempotency_key", json_string(idem));
    if (start_at) /* the server checks both, naming the field */
        json_object_set_new(body, "start_at", json_string(start_at));
    if (start_in)
        json_object_set_new(body, "start_in", json_string(start_in));
    cli_api api;
    if (cli_api_open(env, true, &api, &err) != ENG_OK) {
        json_decref(body);
        return cli_fail(&err);
    }
    json_t *out;
    int status = 0;
    if (!cli_api_request(&api, "POST", "/v1/runs", body, &out, &err)) {
        status = cli_fail(&err);
    } else {
        long long id = json_integer_value(json_object_get(out, "id"));
        if (env->json && !wait)
            cli_print_json(out);
        else if (!wait)
            printf("%lld\n", id);
        else
            status = show_run(&api, env, id, false, true);
        json_decref(out);
    }
    json_decref(body);
    cli_api_free(&api);
    return status;
}

/* ---------------------------------------------------------------------------------- outbox -- */

static void show_outbox(const json_t *out, const void *arg)
{
    (void)arg;
    printf("%-7s %-7s %-20s %-9s %-28s %s\n", "ID", "RUN", "STEP", "CHANNEL", "TO",
           "CREATED (UTC)");
    size_t i;
    const json_t *m;
    json_array_foreach (json_object_get(out, "messages"), i, m) {
        char t[32];
        printf("%-7lld %-7lld %-20s %-9s %-28s %s\n",
               (long long)json_integer_value(json_object_get(m, "id")),
               (long long)json_integer_value(json_object_get(m, "run_id")), insp_str(m, "step"),
               insp_str(m, "channel"), insp_str(m, "to"),
               insp_time(json_object_get(m, "created_at"), t));
    }
}

int cli_cmd_outbox(cli_env *env, int argc, char **argv)
{
    static const struct option longopts[] = {{"run", required_argument, NULL, 'r'},
                                             {"after", required_argument, NULL, 'a'},
                                             {"limit", required_argument, NULL, 'l'},
                                             {NULL, 0, NULL, 0}};
    const char *run = NULL, *after = NULL, *limit = NULL;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "r:a:l:", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': run = optarg; break;
        case 'a': after = optarg; break;
        case 'l': limit = optarg; break;
        default: cli_command_usage_error("outbox"); return 2;
        }
    }
    if (optind != argc) {
        cli_command_usage_error("outbox");
        return 2;
    }
    char *path = eng_xstrdup("/v1/outbox");
    insp_query(&path, "run", run);
    insp_query(&path, "after", after);
    insp_query(&path, "limit", limit);
    int status = cli_api_command(env, "GET", path, NULL, show_outbox, NULL);
    free(path);
    return status;
}
