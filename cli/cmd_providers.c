/* cli/cmd_providers.c: a tenant's provider settings and the operator's secret key.
 *
 *   flowd provider set PROVIDER FIELD=VALUE...   PUT /v1/providers/PROVIDER (replaces them all)
 *   flowd provider list                          GET /v1/providers (secrets masked)
 *   flowd provider delete PROVIDER               DELETE /v1/providers/PROVIDER
 *   flowd secrets rotate                         re-seals every stored secret under FLOWD_SECRET_KEY
 *
 * FIELD=- reads the value from the first line of stdin, so a secret need not appear in the shell's
 * history or the process list. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/mem.h"
#include "engine/secret.h"
#include "steps/provider.h"

/* One line of stdin without its line end, or NULL when there is none. */
static char *stdin_line(void)
{
    char buf[4100];
    if (!fgets(buf, sizeof buf, stdin))
        return NULL;
    buf[strcspn(buf, "\r\n")] = '\0';
    char *s = eng_xstrdup(buf);
    memset(buf, 0, sizeof buf);
    return s;
}

/* FIELD=VALUE arguments into an object; NULL after printing what is wrong. */
static json_t *set_body(int argc, char **argv)
{
    json_t *body = json_object();
    bool stdin_used = false;
    for (int i = 0; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        if (!eq || eq == argv[i]) {
            fprintf(stderr, "flowd: \"%s\" is not FIELD=VALUE\n", argv[i]);
            json_decref(body);
            return NULL;
        }
        char *field = eng_xasprintf("%.*s", (int)(eq - argv[i]), argv[i]);
        char *value = NULL;
        if (strcmp(eq + 1, "-") == 0) {
            value = stdin_used ? NULL : stdin_line();
            if (!value) {
                fprintf(stderr, "flowd: %s=-: %s\n", field,
                        stdin_used ? "only one value can come from stdin" : "stdin is empty");
                free(field);
                json_decref(body);
                return NULL;
            }
            stdin_used = true;
        }
        json_object_set_new(body, field, json_string(value ? value : eq + 1));
        sec_free(value);
        free(field);
    }
    return body;
}

static void print_provider(const json_t *p)
{
    printf("%s (updated %s)\n", json_string_value(json_object_get(p, "provider")),
           json_string_value(json_object_get(p, "updated_at")));
    const char *k;
    const json_t *v;
    json_object_foreach ((json_t *)json_object_get(p, "settings"), k, v)
        printf("  %-22s %s\n", k, json_string_value(v));
}

static void show_provider_answer(const json_t *out, const void *arg)
{
    char *const *argv = arg;
    if (strcmp(argv[1], "list") == 0)
        cli_show_list(out, "providers", print_provider,
                      "no provider settings: steps use the environment's");
    else if (strcmp(argv[1], "delete") == 0)
        printf("%s: settings removed\n", argv[2]);
    else
        print_provider(out);
}

int cli_cmd_provider(cli_env *env, int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    bool set = strcmp(sub, "set") == 0, list = strcmp(sub, "list") == 0,
         del = strcmp(sub, "delete") == 0;
    if (!(set && argc >= 4) && !(list && argc == 2) && !(del && argc == 3)) {
        cli_command_usage_error("provider");
        return 2;
    }
    json_t *body = set ? set_body(argc - 3, argv + 3) : NULL;
    if (set && !body)
        return 2;
    char *name = list ? NULL : cli_api_escape(argv[2]);
    char *path = list ? eng_xstrdup("/v1/providers") : eng_xasprintf("/v1/providers/%s", name);
    int status = cli_api_command(env, set ? "PUT" : list ? "GET" : "DELETE", path, body,
                                 show_provider_answer, argv);
    json_decref(body);
    free(path);
    free(name);
    return status;
}

/* Re-seals the secrets of one settings object that are in clear or under another key; *changed
 * says whether anything was. */
static eng_rc reseal(json_t *settings, bool *changed, eng_err *err)
{
    *changed = false;
    const char *k;
    json_t *v;
    json_object_foreach (settings, k, v) {
        const char *s = json_string_value(v);
        if (!s || (!prov_field_secret(k) && !sec_is_sealed(s)) || sec_is_current(s))
            continue;
        char *plain = sec_open(s, err);
        char *sealed = plain ? sec_seal(plain, err) : NULL;
        sec_free(plain);
        if (!sealed)
            return err->rc;
        json_string_set(v, sealed);
        free(sealed);
        *changed = true;
    }
    return ENG_OK;
}

/* Re-seals the secrets of every row of one table inside the caller's transaction: select reads
 * (id 1, id 2, the JSON object holding the secrets) FOR UPDATE, update writes $3 for ids $1, $2. */
static eng_rc reseal_rows(cli_env *env, const char *select, const char *update, const char *what,
                          int *rows, int *resealed, eng_err *err)
{
    PGresult *res = cli_exec(env, select, 0, NULL, err);
    *rows = res ? PQntuples(res) : 0;
    *resealed = 0;
    eng_rc rc = res ? ENG_OK : err->rc;
    for (int i = 0; rc == ENG_OK && i < *rows; i++) {
        json_t *settings = json_loads(PQgetvalue(res, i, 2), 0, NULL);
        bool changed = false;
        rc = reseal(settings, &changed, err);
        if (rc == ENG_OK && changed) {
            char *text = json_dumps(settings, JSON_COMPACT | JSON_SORT_KEYS);
            const char *params[] = {PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), text};
            PGresult *u = cli_exec(env, update, 3, params, err);
            rc = u ? ENG_OK : err->rc;
            PQclear(u);
            free(text);
            (*resealed)++;
        }
        if (rc != ENG_OK && !err->field[0])
            snprintf(err->field, sizeof err->field, "tenant %s %s %s", PQgetvalue(res, i, 0),
                     what, PQgetvalue(res, i, 1));
        json_decref(settings);
    }
    PQclear(res);
    return rc;
}

/* Where secrets are stored, for reseal_rows. Webhook endpoints have two: the current signing
 * secret and the one still signing after a rotation. */
static const struct {
    const char *what, *select, *update;
} sealed_columns[] = {
    {"provider",
     "SELECT tenant_id, provider, settings::text FROM provider_settings"
     " ORDER BY tenant_id, provider FOR UPDATE",
     "UPDATE provider_settings SET settings = $3::jsonb, updated_at = now()"
     " WHERE tenant_id = $1 AND provider = $2"},
    {"hook",
     "SELECT tenant_id, name, verify::text FROM custom_hooks ORDER BY tenant_id, name FOR UPDATE",
     "UPDATE custom_hooks SET verify = $3::jsonb WHERE tenant_id = $1 AND name = $2"},
    {"webhook endpoint",
     "SELECT tenant_id, id, jsonb_build_object('secret', secret)::text"
     " FROM webhook_endpoints ORDER BY tenant_id, id FOR UPDATE",
     "UPDATE webhook_endpoints SET secret = $3::jsonb->>'secret' WHERE tenant_id = $1 AND id = $2"},
    {"webhook endpoint",
     "SELECT tenant_id, id, jsonb_build_object('secret', previous_secret)::text"
     " FROM webhook_endpoints WHERE previous_secret IS NOT NULL ORDER BY tenant_id, id FOR UPDATE",
     "UPDATE webhook_endpoints SET previous_secret = $3::jsonb->>'secret'"
     " WHERE tenant_id = $1 AND id = $2"},
};

int cli_cmd_secrets(cli_env *env, int argc, char **argv)
{
    if (argc != 2 || strcmp(argv[1], "rotate") != 0) {
        cli_command_usage_error("secrets");
        return 2;
    }
    eng_err err;
    if (sec_reload(&err) != ENG_OK)
        return cli_fail(&err);
    if (!sec_have_key()) {
        eng_err_set(&err, ENG_EINVAL,
                    "no secret key configured: set FLOWD_SECRET_KEY (or FLOWD_SECRET_KEY_FILE) to "
                    "the new key and FLOWD_SECRET_KEY_PREVIOUS to the old one");
        return cli_fail(&err);
    }
    if (cli_env_open(env, false, &err) != ENG_OK)
        return cli_fail(&err);
    /* all rows or none: a half-rotated table would need both keys for longer than planned */
    PGresult *res = cli_exec(env, "BEGIN", 0, NULL, &err);
    if (!res)
        return cli_fail(&err);
    PQclear(res);
    int rows[ENG_ARRAY_LEN(sealed_columns)] = {0}, resealed[ENG_ARRAY_LEN(sealed_columns)] = {0};
    eng_rc rc = ENG_OK;
    for (size_t i = 0; rc == ENG_OK && i < ENG_ARRAY_LEN(sealed_columns); i++)
        rc = reseal_rows(env, sealed_columns[i].select, sealed_columns[i].update,
                         sealed_columns[i].what, &rows[i], &resealed[i], &err);
    PGresult *commit = rc == ENG_OK ? cli_exec(env, "COMMIT", 0, NULL, &err) : NULL;
    if (!commit) {
        PQclear(cli_exec(env, "ROLLBACK", 0, NULL, NULL));
        return cli_fail(&err);
    }
    PQclear(commit);
    printf("%d of %d provider settings, %d of %d custom hooks and %d of %d webhook signing secrets "
           "re-sealed under the current key\n",
           resealed[0], rows[0], resealed[1], rows[1], resealed[2] + resealed[3],
           rows[2] + rows[3]);
    return 0;
}
