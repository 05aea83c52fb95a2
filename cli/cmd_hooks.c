/* cli/cmd_hooks.c: the tenant's inbound custom hooks over the HTTP API
 * (api/routes_custom_hooks.c).
 *
 *   flowd hook set NAME FILE    PUT the hook's definition, the JSON of FILE ("-": stdin)
 *   flowd hook show NAME        GET (never the secret)
 *   flowd hook list             GET /v1/hooks/custom
 *   flowd hook delete NAME */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/mem.h"

static void print_hook(const json_t *h)
{
    const json_t *v = json_object_get(h, "verify"), *e = json_object_get(h, "event");
    const char *scheme = json_object_get(v, "standard_webhooks") ? "standard_webhooks"
                         : json_object_get(v, "token")           ? "token"
                                                                 : "hmac";
    printf("%s: %s", json_string_value(json_object_get(h, "name")), scheme);
    if (json_object_get(v, "hmac"))
        printf(" %s %s in %s", json_string_value(json_object_get(v, "hmac")),
               json_string_value(json_object_get(v, "encoding")),
               json_string_value(json_object_get(v, "header")));
    else if (json_object_get(v, "token"))
        printf(" in %s", json_string_value(json_object_get(v, "header")));
    printf("%s\n", json_is_true(json_object_get(v, "secret_set")) ? "" : " (no secret)");
    const char *dedup = json_string_value(json_object_get(h, "dedup"));
    printf("  event %s key %s, dedup %s\n", json_string_value(json_object_get(e, "name")),
           json_string_value(json_object_get(e, "key")), dedup ? dedup : "body sha256");
}

static void show_hook_answer(const json_t *out, const void *arg)
{
    char *const *argv = arg;
    if (strcmp(argv[1], "list") == 0)
        cli_show_list(out, "hooks", print_hook, "no hooks");
    else if (strcmp(argv[1], "delete") == 0)
        printf("%s: deleted\n", argv[2]);
    else
        print_hook(out);
}

int cli_cmd_hook(cli_env *env, int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    bool set = strcmp(sub, "set") == 0 && argc == 4, list = strcmp(sub, "list") == 0 && argc == 2,
         show = strcmp(sub, "show") == 0 && argc == 3,
         del = strcmp(sub, "delete") == 0 && argc == 3;
    if (!set && !list && !show && !del) {
        cli_command_usage_error("hook");
        return 2;
    }
    eng_err err;
    eng_err_clear(&err);
    json_t *body = NULL;
    if (set) {
        json_error_t jerr;
        body = strcmp(argv[3], "-") == 0 ? json_loadf(stdin, JSON_REJECT_DUPLICATES, &jerr)
                                         : json_load_file(argv[3], JSON_REJECT_DUPLICATES, &jerr);
        if (!json_is_object(body)) {
            json_decref(body);
            eng_err_field(&err, ENG_EINVAL, argv[3], "not a JSON object (line %d: %s)", jerr.line,
                          jerr.text);
            return cli_fail(&err);
        }
    }
    char *name = list ? NULL : cli_api_escape(argv[2]);
    char *path = list ? eng_xstrdup("/v1/hooks/custom") : eng_xasprintf("/v1/hooks/custom/%s", name);
    int status = cli_api_command(env, set ? "PUT" : del ? "DELETE" : "GET", path, body,
                                 show_hook_answer, argv);
    json_decref(body);
    free(path);
    free(name);
    return status;
}
