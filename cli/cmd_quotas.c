/* cli/cmd_quotas.c: flowd quotas TENANT [--runs-per-month N|none] — read or set a tenant's quotas
 * through the API (PUT/GET /v1/tenants/{name}/quotas; admin key of the tenant that created it, or
 * of default, to set them). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/mem.h"

int cli_cmd_quotas(cli_env *env, int argc, char **argv)
{
    static const struct option longopts[] = {{"runs-per-month", required_argument, NULL, 'r'},
                                             {NULL, 0, NULL, 0}};
    json_t *body = NULL;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "r:", longopts, NULL)) != -1) {
        if (ch != 'r') {
            json_decref(body);
            return 2;
        }
        char *end;
        long long n = strtoll(optarg, &end, 10);
        json_decref(body);
        if (strcmp(optarg, "none") == 0) {
            body = json_pack("{s:n}", "runs_per_month");
        } else if (!*optarg || *end || n < 0) {
            eng_err err;
            eng_err_field(&err, ENG_EINVAL, "--runs-per-month",
                          "must be a non-negative integer, or none for no limit");
            return cli_fail(&err);
        } else {
            body = json_pack("{s:I}", "runs_per_month", (json_int_t)n);
        }
    }
    if (argc - optind != 1) {
        json_decref(body);
        cli_command_usage_error("quotas");
        return 2;
    }
    eng_err err;
    cli_api api;
    if (cli_api_open(env, true, &api, &err) != ENG_OK) {
        json_decref(body);
        return cli_fail(&err);
    }
    char *name = cli_api_escape(argv[optind]);
    char *path = eng_xasprintf("/v1/tenants/%s/quotas", name);
    json_t *out = NULL;
    int status = 0;
    if (!cli_api_request(&api, body ? "PUT" : "GET", path, body, &out, &err)) {
        status = cli_fail(&err);
    } else if (env->json) {
        cli_print_json(out);
    } else {
        const json_t *runs = json_object_get(out, "runs_per_month");
        if (json_is_object(runs))
            printf("%s: runs_per_month %lld of %lld used, resets %s\n", argv[optind],
                   (long long)json_integer_value(json_object_get(runs, "used")),
                   (long long)json_integer_value(json_object_get(runs, "limit")),
                   json_string_value(json_object_get(runs, "resets_at")));
        else
            printf("%s: runs_per_month not limited\n", argv[optind]);
    }
    json_decref(out);
    json_decref(body);
    free(path);
    free(name);
    cli_api_free(&api);
    return status;
}
