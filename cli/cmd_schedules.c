/* cli/cmd_schedules.c: the tenant's schedules over the HTTP API (api/routes_schedules.c).
 *
 *   flowd schedule set NAME --workflow W (--cron EXPR | --every DURATION) [options]   PUT
 *   flowd schedule show NAME      GET, with the next 10 ticks in UTC and in the schedule's zone
 *   flowd schedule list           GET /v1/schedules
 *   flowd schedule delete|pause|resume|trigger NAME */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/mem.h"

/* The PUT body from the options after `set NAME`; NULL after printing what is wrong. */
static json_t *sched_body(int argc, char **argv, eng_err *err)
{
    static const struct option longopts[] = {
        {"workflow", required_argument, NULL, 'w'}, {"version", required_argument, NULL, 'v'},
        {"cron", required_argument, NULL, 'c'},     {"every", required_argument, NULL, 'e'},
        {"tz", required_argument, NULL, 'z'},       {"input", required_argument, NULL, 'i'},
        {"overlap", required_argument, NULL, 'o'},  {"catchup", required_argument, NULL, 'u'},
        {"catchup-window", required_argument, NULL, 'W'},
        {"jitter", required_argument, NULL, 'j'},   {"start-at", required_argument, NULL, 's'},
        {"end-at", required_argument, NULL, 'E'},   {"paused", no_argument, NULL, 'P'},
        {NULL, 0, NULL, 0}};
    static const struct {
        int opt;
        const char *field;
    } text[] = {{'w', "workflow"}, {'c', "cron"},    {'e', "every"},          {'z', "tz"},
                {'o', "overlap"},  {'u', "catchup"}, {'W', "catchup_window"}, {'j', "jitter"},
                {'s', "start_at"}, {'E', "end_at"}};
    json_t *body = json_object();
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        size_t i = 0;
        while (i < ENG_ARRAY_LEN(text) && text[i].opt != ch)
            i++;
        if (i < ENG_ARRAY_LEN(text)) {
            json_object_set_new(body, text[i].field, json_string(optarg));
        } else if (ch == 'v') {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1) {
                eng_err_field(err, ENG_EINVAL, "--version", "must be a positive integer");
                json_decref(body);
                return NULL;
            }
            json_object_set_new(body, "version", json_integer(v));
        } else if (ch == 'i') {
            json_t *in = json_loads(optarg, 0, NULL);
            if (!json_is_object(in)) {
                json_decref(in);
                eng_err_field(err, ENG_EINVAL, "--input", "must be a JSON object (a template)");
                json_decref(body);
                return NULL;
            }
            json_object_set_new(body, "input", in);
        } else if (ch == 'P') {
            json_object_set_new(body, "paused", json_true());
        } else {
            json_decref(body);
            return NULL; /* getopt said what */
        }
    }
    if (optind != argc) {
        json_decref(body);
        return NULL;
    }
    return body;
}

static void print_schedule(const json_t *s, bool ticks)
{
    const char *cron = json_string_value(json_object_get(s, "cron"));
    const json_t *last = json_object_get(s, "last_run");
    printf("%s: %s %s in %s, workflow %s%s\n", json_string_value(json_object_get(s, "name")),
           cron ? "cron" : "every",
           cron ? cron : json_string_value(json_object_get(s, "every")),
           json_string_value(json_object_get(s, "tz")),
           json_string_value(json_object_get(s, "workflow")),
           json_is_true(json_object_get(s, "paused")) ? " (paused)" : "");
    const char *next = json_string_value(json_object_get(s, "next_fire"));
    printf("  next %s, %lld runs, %lld ticks skipped", next ? next : "none (no tick left)",
           (long long)json_integer_value(json_object_get(s, "fires")),
           (long long)json_integer_value(json_object_get(s, "skips")));
    if (json_is_object(last))
        printf(", last run %lld (%s)", (long long)json_integer_value(json_object_get(last, "id")),
               json_string_value(json_object_get(last, "state")));
    printf("\n");
    const json_t *t;
    size_t i;
    if (ticks)
        json_array_foreach (json_object_get(s, "next_fires"), i, t)
            printf("  %s  %s\n", json_string_value(json_object_get(t, "utc")),
                   json_string_value(json_object_get(t, "local")));
}

static void print_schedule_line(const json_t *s)
{
    print_schedule(s, false);
}

static void show_schedule_answer(const json_t *out, const void *arg)
{
    char *const *argv = arg;
    if (strcmp(argv[1], "list") == 0)
        cli_show_list(out, "schedules", print_schedule_line, "no schedules");
    else if (strcmp(argv[1], "delete") == 0)
        printf("%s: deleted\n", argv[2]);
    else if (strcmp(argv[1], "trigger") == 0)
        printf("%lld\n", (long long)json_integer_value(json_object_get(out, "id")));
    else
        print_schedule(out, true);
}

int cli_cmd_schedule(cli_env *env, int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    static const char *const one[] = {"show", "delete", "pause", "resume", "trigger"};
    bool set = strcmp(sub, "set") == 0 && argc >= 3, list = strcmp(sub, "list") == 0 && argc == 2,
         single = false;
    for (size_t i = 0; i < ENG_ARRAY_LEN(one); i++)
        single = single || (strcmp(sub, one[i]) == 0 && argc == 3);
    if (!set && !list && !single) {
        cli_command_usage_error("schedule");
        return 2;
    }
    eng_err err;
    eng_err_clear(&err);
    json_t *body = NULL;
    if (set && !(body = sched_body(argc - 2, argv + 2, &err))) {
        if (err.rc != ENG_OK)
            return cli_fail(&err);
        cli_command_usage_error("schedule");
        return 2;
    }
    char *name = list ? NULL : cli_api_escape(argv[2]);
    bool action = single && strcmp(sub, "show") != 0 && strcmp(sub, "delete") != 0;
    char *path = list     ? eng_xstrdup("/v1/schedules")
                 : action ? eng_xasprintf("/v1/schedules/%s/%s", name, sub)
                          : eng_xasprintf("/v1/schedules/%s", name);
    const char *method = set ? "PUT" : action ? "POST" : strcmp(sub, "delete") == 0 ? "DELETE"
                                                                                    : "GET";
    int status = cli_api_command(env, method, path, body, show_schedule_answer, argv);
    json_decref(body);
    free(path);
    free(name);
    return status;
}
