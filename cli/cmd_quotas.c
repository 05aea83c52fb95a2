/* cli/cmd_quotas.c: flowd quotas TENANT [--runs-per-month N|none] [--llm-tokens-per-month N|none]
 * [--llm-cost-usd-per-month USD|none] [--sends-per-day N|none] — read or set a tenant's quotas
 * through the API (PUT/GET /v1/tenants/{name}/quotas; admin key of the tenant that created it, or
 * of default, to set them). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/mem.h"

static const char *const quota_names[] = {"runs_per_month", "llm_tokens_per_month",
                                          "llm_cost_usd_per_month", "sends_per_day"};
enum { QUOTA_COST = 2 }; /* the one in USD, a number; the others are counts */

/* Adds the option's value for quota i to body; false (err set) when it is not one. */
static bool quota_value(json_t *body, int i, const char *arg, eng_err *err)
{
    char opt[64], *end;
    snprintf(opt, sizeof opt, "--%s", quota_names[i]);
    for (char *p = opt; *p; p++)
        if (*p == '_')
            *p = '-';
    if (strcmp(arg, "none") == 0) {
        json_object_set_new(body, quota_names[i], json_null());
        return true;
    }
    if (i == QUOTA_COST) {
        double usd = strtod(arg, &end);
        if (*arg && !*end && usd >= 0) {
            json_object_set_new(body, quota_names[i], json_real(usd));
            return true;
        }
        eng_err_field(err, ENG_EINVAL, opt, "must be a non-negative number of USD, or none");
        return false;
    }
    long long n = strtoll(arg, &end, 10);
    if (*arg && !*end && n >= 0) {
        json_object_set_new(body, quota_names[i], json_integer((json_int_t)n));
        return true;
    }
    eng_err_field(err, ENG_EINVAL, opt, "must be a non-negative integer, or none for no limit");
    return false;
}

static void show_quotas(const json_t *out, const void *arg)
{
    const char *tenant = arg;
    for (size_t i = 0; i < ENG_ARRAY_LEN(quota_names); i++) {
        const json_t *q = json_object_get(out, quota_names[i]);
        if (json_is_object(q))
            printf("%s: %s %.15g of %.15g used, resets %s\n", tenant, quota_names[i],
                   json_number_value(json_object_get(q, "used")),
                   json_number_value(json_object_get(q, "limit")),
                   json_string_value(json_object_get(q, "resets_at")));
        else
            printf("%s: %s not limited\n", tenant, quota_names[i]);
    }
}

int cli_cmd_quotas(cli_env *env, int argc, char **argv)
{
    static const struct option longopts[] = {{"runs-per-month", required_argument, NULL, 0},
                                             {"llm-tokens-per-month", required_argument, NULL, 1},
                                             {"llm-cost-usd-per-month", required_argument, NULL, 2},
                                             {"sends-per-day", required_argument, NULL, 3},
                                             {NULL, 0, NULL, 0}};
    json_t *body = json_object();
    eng_err err;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (ch < 0 || ch > 3) {
            json_decref(body);
            return 2;
        }
        if (!quota_value(body, ch, optarg, &err)) {
            json_decref(body);
            return cli_fail(&err);
        }
    }
    if (argc - optind != 1) {
        json_decref(body);
        cli_command_usage_error("quotas");
        return 2;
    }
    bool set = json_object_size(body) > 0;
    char *name = cli_api_escape(argv[optind]);
    char *path = eng_xasprintf("/v1/tenants/%s/quotas", name);
    int status = cli_api_command(env, set ? "PUT" : "GET", path, set ? body : NULL,
                                 show_quotas, argv[optind]);
    json_decref(body);
    free(path);
    free(name);
    return status;
}
