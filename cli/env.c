/* cli/env.c: database access for the subcommands (see cli.h). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "engine/db.h"
#include "engine/mem.h"
#include "engine/migrate.h"
#include "engine/rand.h"
#include "engine/wf_def.h"

bool cli_global_takes_value(const char *arg)
{
    return strcmp(arg, "--data") == 0 || strcmp(arg, "--database") == 0 || strcmp(arg, "--url") == 0;
}

/* The value of a global option at argv[*i] ("--name VALUE" or "--name=VALUE") when it is one, with
 * *i moved past it; NULL otherwise. *missing is set when the value is absent. */
static const char *env_global(char **argv, int argc, int *i, const char *name, bool *missing)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = true;
        return NULL;
    }
    *i += 1;
    return argv[*i];
}

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

int cli_env_parse(cli_env *env, int argc, char **argv, bool own_data, eng_err *err)
{
    env->data_dir = env_nonempty("FLOWD_DATA");
    if (!env->data_dir)
        env->data_dir = "flowd-data";
    env->database_url = env_nonempty("FLOWD_DATABASE_URL");
    env->url = env_nonempty("FLOWD_URL");
    env->json = !isatty(fileno(stdout));
    int out = 0;
    bool seen_cmd = false, rest = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v;
        bool missing = false;
        if (rest || a[0] != '-' || !a[1]) {
            seen_cmd = true;
            argv[out++] = argv[i];
            continue;
        }
        if (strcmp(a, "--") == 0) {
            rest = true;
            argv[out++] = argv[i];
            continue;
        }
        if (strcmp(a, "--json") == 0) {
            env->json = true;
        } else if (!(own_data && seen_cmd) && (v = env_global(argv, argc, &i, "--data", &missing))) {
            env->data_dir = v;
        } else if ((v = env_global(argv, argc, &i, "--database", &missing))) {
            env->database_url = v;
        } else if ((v = env_global(argv, argc, &i, "--url", &missing))) {
            env->url = v;
            env->url_flag = true;
        } else if (missing) {
            return eng_err_field(err, ENG_EINVAL, a, "needs a value"), -1;
        } else {
            argv[out++] = argv[i]; /* the command's own option */
        }
        if (missing)
            return eng_err_field(err, ENG_EINVAL, a, "needs a value"), -1;
    }
    argv[out] = NULL;
    return out;
}

/* Whether data_dir holds a cluster (made by flowd serve, migrate or init). */
static bool env_has_cluster(const char *data_dir)
{
    char *path = eng_xasprintf("%s/pg/PG_VERSION", data_dir);
    struct stat st;
    bool yes = stat(path, &st) == 0;
    free(path);
    return yes;
}

eng_rc cli_env_open(cli_env *env, bool create, eng_err *err)
{
    eng_rc rc;
    if (env->database_url) {
        env->conninfo = eng_xstrdup(env->database_url);
    } else {
        rc = eng_pgembed_attach(env->data_dir, &env->conninfo, NULL);
        if (rc != ENG_OK) {
            if (!create && !env_has_cluster(env->data_dir)) {
                char cwd[512];
                const char *where = env->data_dir[0] == '/' || !getcwd(cwd, sizeof cwd) ? "" : cwd;
                return eng_err_set(err, ENG_ENOTFOUND,
                                   "no flowd database in %s%s%s: run this where flowd serve runs, "
                                   "or give --data DIR, --database URL or --url URL (flowd init "
                                   "creates one)",
                                   where, where[0] ? "/" : "", env->data_dir);
            }
            rc = eng_pgembed_start(env->data_dir, &env->embedded, err);
            if (rc != ENG_OK)
                return rc;
            env->conninfo = eng_xstrdup(eng_pgembed_conninfo(env->embedded));
        }
    }
    size_t n;
    const eng_migration *migs = eng_migrations_embedded(&n);
    eng_migrate_opts opts = eng_migrate_embedded_opts();
    opts.allow_breaking = env->allow_breaking;
    rc = eng_migrate_up(env->conninfo, migs, n, &opts, NULL, err);
    if (rc != ENG_OK)
        return rc;
    env->conn = PQconnectdb(env->conninfo);
    if (PQstatus(env->conn) != CONNECTION_OK)
        return eng_err_set(err, ENG_EDB_RETRY, "cannot connect to the database: %s",
                           PQerrorMessage(env->conn));
    return create ? cli_bootstrap(env, err) : ENG_OK;
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
        eng_err_set(err, ENG_ENOTFOUND, "no default tenant: run flowd serve or flowd init once to "
                                        "create it");
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

eng_rc cli_bootstrap(cli_env *env, eng_err *err)
{
    const char *given = getenv("FLOWD_API_KEY");
    char key[64];
    eng_rc rc;
    if (given && *given) {
        snprintf(key, sizeof key, "%s", given);
    } else if ((rc = eng_rand_api_key(key, err)) != ENG_OK) {
        return rc;
    }
    const char *params[] = {key};
    PGresult *res = cli_exec(env, "SELECT flowd_bootstrap($1)", 1, params, err);
    if (!res)
        return err->rc;
    bool created = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (!created && given && *given) {
        /* the database had its default tenant already: the key given must be one of its keys,
         * or the operator would believe in a key that opens nothing */
        res = cli_exec(env,
                       "SELECT EXISTS (SELECT 1 FROM api_keys k JOIN tenants t ON t.id = k.tenant_id "
                       "WHERE t.name = 'default' AND k.revoked_at IS NULL "
                       "AND k.key_hash = sha256(convert_to($1, 'UTF8')))",
                       1, params, err);
        if (!res)
            return err->rc;
        bool known = PQgetvalue(res, 0, 0)[0] == 't';
        PQclear(res);
        if (!known)
            return eng_err_field(err, ENG_EINVAL, "FLOWD_API_KEY",
                                 "not a key of this database's default tenant, which exists already "
                                 "(its key was printed when it was created and is in %s/api-key); "
                                 "unset it, or make it a key with flowd key create",
                                 env->data_dir);
    }
    if (!created || (given && *given))
        return ENG_OK;
    /* The key never goes to a log: stdout of a service is kept by journald and container
     * runtimes, so it is printed only to a terminal. The file belongs to the embedded cluster's
     * folder; with --database there is none, and flowd key create makes another key. */
    char *path = eng_xasprintf("%s/api-key", env->data_dir);
    FILE *f = env->database_url ? NULL : fopen(path, "wx");
    if (f) {
        fchmod(fileno(f), 0600);
        fprintf(f, "%s\n", key);
        fclose(f);
        fprintf(stdout, "flowd: created the default tenant; its API key is in %s (mode 0600)\n",
                path);
    } else {
        fprintf(stdout, "flowd: created the default tenant\n");
    }
    if (isatty(STDOUT_FILENO))
        fprintf(stdout, "flowd: its API key (shown once, on this terminal only) is %s\n", key);
    else if (!f)
        fprintf(stdout, "flowd: its API key is not shown (stdout is not a terminal): make one with "
                        "flowd key create\n");
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
