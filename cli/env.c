/* cli/env.c: database access for the subcommands (see cli.h). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "engine/db.h"
#include "engine/mem.h"
#include "engine/migrate.h"
#include "engine/wf_def.h"

int cli_env_parse(cli_env *env, int argc, char **argv)
{
    env->data_dir = "flowd-data";
    env->database_url = getenv("FLOWD_DATABASE_URL");
    if (env->database_url && !*env->database_url)
        env->database_url = NULL;
    int out = 0, i = 0;
    /* Global options stand before the subcommand; after it, "--data" belongs to the subcommand
     * (flowd event NAME KEY --data JSON). */
    for (; i < argc && argv[i][0] == '-'; i++) {
        if ((strcmp(argv[i], "--data") == 0 || strcmp(argv[i], "--database") == 0) && i + 1 < argc) {
            if (argv[i][6] == '\0')
                env->data_dir = argv[i + 1];
            else
                env->database_url = argv[i + 1];
            i++;
        } else if (strncmp(argv[i], "--data=", 7) == 0) {
            env->data_dir = argv[i] + 7;
        } else if (strncmp(argv[i], "--database=", 11) == 0) {
            env->database_url = argv[i] + 11;
        } else {
            argv[out++] = argv[i];
            if (strcmp(argv[i], "--url") == 0 && i + 1 < argc)
                argv[out++] = argv[++i];
        }
    }
    for (; i < argc; i++)
        argv[out++] = argv[i];
    argv[out] = NULL;
    return out;
}

eng_rc cli_env_open(cli_env *env, eng_err *err)
{
    eng_rc rc;
    if (env->database_url) {
        env->conninfo = eng_xstrdup(env->database_url);
    } else {
        rc = eng_pgembed_attach(env->data_dir, &env->conninfo, NULL);
        if (rc != ENG_OK) {
            rc = eng_pgembed_start(env->data_dir, &env->embedded, err);
            if (rc != ENG_OK)
                return rc;
            env->conninfo = eng_xstrdup(eng_pgembed_conninfo(env->embedded));
        }
    }
    size_t n;
    const eng_migration *migs = eng_migrations_embedded(&n);
    rc = eng_migrate_up(env->conninfo, migs, n, NULL, err);
    if (rc != ENG_OK)
        return rc;
    env->conn = PQconnectdb(env->conninfo);
    if (PQstatus(env->conn) != CONNECTION_OK)
        return eng_err_set(err, ENG_EDB_RETRY, "cannot connect to the database: %s",
                           PQerrorMessage(env->conn));
    return cli_bootstrap(env, err);
}

void cli_env_close(cli_env *env)
{
    if (env->conn)
        PQfinish(env->conn);
    env->conn = NULL;
    eng_pgembed_stop(env->embedded);
    env->embedded = NULL;
    free(env->conninfo);
    env->conninfo = NULL;
}

PGresult *cli_exec(cli_env *env, const char *sql, int nparams, const char *const *params, eng_err *err)
{
    PGresult *res = PQexecParams(env->conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (eng_db_classify(res, err) != ENG_OK) {
        PQclear(res);
        return NULL;
    }
    return res;
}

long long cli_default_tenant(cli_env *env, eng_err *err)
{
    PGresult *res = cli_exec(env, "SELECT id FROM tenants WHERE name = 'default'", 0, NULL, err);
    if (!res)
        return 0;
    long long id = PQntuples(res) ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
    PQclear(res);
    if (!id)
        eng_err_set(err, ENG_ENOTFOUND, "no default tenant: run flowd serve once to create it");
    return id;
}

int cli_fail(const eng_err *err)
{
    if (err->field[0])
        fprintf(stderr, "flowd: %s: %s\n", err->field, err->msg);
    else
        fprintf(stderr, "flowd: %s\n", err->msg);
    return 1;
}

/* A new random key: "fd_" and 40 hex characters from the kernel's generator. */
static eng_rc env_random_key(char *out, size_t outlen, eng_err *err)
{
    unsigned char raw[20];
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(raw, 1, sizeof raw, f) != sizeof raw) {
        if (f)
            fclose(f);
        return eng_err_set(err, ENG_ESYS, "cannot read /dev/urandom");
    }
    fclose(f);
    size_t off = (size_t)snprintf(out, outlen, "fd_");
    for (size_t i = 0; i < sizeof raw && off + 2 < outlen; i++)
        off += (size_t)snprintf(out + off, outlen - off, "%02x", raw[i]);
    return ENG_OK;
}

eng_rc cli_bootstrap(cli_env *env, eng_err *err)
{
    const char *given = getenv("FLOWD_API_KEY");
    char key[64];
    eng_rc rc;
    if (given && *given) {
        snprintf(key, sizeof key, "%s", given);
    } else if ((rc = env_random_key(key, sizeof key, err)) != ENG_OK) {
        return rc;
    }
    const char *params[] = {key};
    PGresult *res = cli_exec(env, "SELECT flowd_bootstrap($1)", 1, params, err);
    if (!res)
        return err->rc;
    bool created = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (!created || (given && *given))
        return ENG_OK;
    char *path = eng_xasprintf("%s/api-key", env->data_dir);
    FILE *f = fopen(path, "wx");
    fprintf(stdout, "flowd: created the default tenant; its API key (shown once) is %s\n", key);
    if (f) {
        fchmod(fileno(f), 0600);
        fprintf(f, "%s\n", key);
        fclose(f);
        fprintf(stdout, "flowd: it is also in %s (mode 0600)\n", path);
    }
    fflush(stdout);
    free(path);
    return ENG_OK;
}

/* Registers the definition in path for tenant; *workflow_id gets its row. Same JSON gives the same
 * version, changed JSON the next one. */
eng_rc cli_register_file(cli_env *env, long long tenant, const char *path, long long *workflow_id,
                         int *version, eng_err *err)
{
    json_error_t jerr;
    json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc)
        return eng_err_set(err, ENG_EINVAL, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    json_t *def = NULL;
    eng_rc rc = wf_def_compile(doc, &def, err);
    if (rc != ENG_OK) {
        json_decref(doc);
        return rc;
    }
    char *digest = wf_def_digest(doc);
    char *source = json_dumps(doc, JSON_COMPACT);
    char *defs = json_dumps(def, JSON_COMPACT);
    char tenant_s[24];
    snprintf(tenant_s, sizeof tenant_s, "%lld", tenant);
    const char *params[] = {tenant_s, json_string_value(json_object_get(def, "name")), digest, source,
                            defs};
    PGresult *res = cli_exec(env, "SELECT id, version FROM flowd_register_workflow($1, $2, $3, $4, $5)",
                             5, params, err);
    if (res) {
        *workflow_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        if (version)
            *version = atoi(PQgetvalue(res, 0, 1));
        PQclear(res);
    }
    free(digest);
    free(source);
    free(defs);
    json_decref(def);
    json_decref(doc);
    return res ? ENG_OK : err->rc;
}
