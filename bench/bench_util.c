/* bench/bench_util.c: see bench_util.h. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "engine/mem.h"
#include "engine/migrate.h"
#include "engine/wf_def.h"

static const char *prog = "bench";

void bench_set_name(const char *name)
{
    prog = name;
}

_Noreturn void bench_die(const char *what, PGconn *c)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, c ? PQerrorMessage(c) : "");
    exit(1);
}

PGconn *bench_connect(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK)
        bench_die("connect", c);
    return c;
}

PGresult *bench_exec(PGconn *c, const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
        bench_die(sql, c);
    return r;
}

char *bench_value(PGconn *c, const char *sql)
{
    PGresult *r = bench_exec(c, sql, 0, NULL);
    char *v = eng_xstrdup(PQntuples(r) && !PQgetisnull(r, 0, 0) ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
    return v;
}

double bench_value_f(PGconn *c, const char *sql)
{
    char *v = bench_value(c, sql);
    double d = strtod(v, NULL);
    free(v);
    return d;
}

double bench_rusage_cpu_s(const struct rusage *ru)
{
    return (double)(ru->ru_utime.tv_sec + ru->ru_stime.tv_sec) +
           (double)(ru->ru_utime.tv_usec + ru->ru_stime.tv_usec) / 1e6;
}

double bench_pid_cpu_s(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* fields after the command name, which may hold spaces: state is the 3rd, utime the 14th */
    char *p = strrchr(buf, ')');
    unsigned long long utime, stime;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                     &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

double bench_db_cpu_s(PGconn *c)
{
    if (bench_pid_cpu_s(PQbackendPID(c)) < 0)
        return -1;
    PGresult *r = bench_exec(c,
                             "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                             " AND pid <> pg_backend_pid()",
                             0, NULL);
    double sum = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        double s = bench_pid_cpu_s(strtol(PQgetvalue(r, i, 0), NULL, 10));
        if (s > 0) /* a process that exited since the query is gone with its figure */
            sum += s;
    }
    PQclear(r);
    return sum;
}

void bench_server_facts(PGconn *c, json_t *out)
{
    const char *facts[][2] = {{"postgres_version", "SHOW server_version"},
                              {"fsync", "SHOW fsync"},
                              {"synchronous_commit", "SHOW synchronous_commit"},
                              {"shared_buffers", "SHOW shared_buffers"}};
    for (size_t i = 0; i < sizeof facts / sizeof facts[0]; i++) {
        char *v = bench_value(c, facts[i][1]);
        json_object_set_new(out, facts[i][0], json_string(v));
        free(v);
    }
}

bool bench_parse_opts(int argc, char **argv, const bench_opt *opts, size_t n)
{
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc)
            return false;
        const char *k = argv[i], *v = argv[i + 1];
        const bench_opt *o = NULL;
        for (size_t j = 0; j < n && !o; j++)
            if (strcmp(k, opts[j].name) == 0)
                o = &opts[j];
        if (!o)
            return false;
        if (o->str) {
            *o->str = v;
            continue;
        }
        int x = atoi(v);
        if (x < o->min || x > o->max)
            return false;
        *o->num = x;
    }
    return true;
}

/* base's connection options with dbname replaced (libpq keyword/value syntax, quoted). */
static char *conninfo_with_db(const char *base, const char *dbname)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(base, &errmsg);
    if (!opts) {
        fprintf(stderr, "%s: bad conninfo: %s\n", prog, errmsg ? errmsg : "");
        exit(2);
    }
    size_t cap = 1024, len = 0;
    char *out = eng_xmalloc(cap);
    out[0] = '\0';
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        const char *v = strcmp(o->keyword, "dbname") == 0 ? dbname : o->val;
        if (!v)
            continue;
        while (len + strlen(o->keyword) + 2 * strlen(v) + 8 > cap)
            out = eng_xrealloc(out, cap *= 2);
        len += (size_t)sprintf(out + len, "%s%s='", len ? " " : "", o->keyword);
        for (const char *p = v; *p; p++) {
            if (*p == '\'' || *p == '\\')
                out[len++] = '\\';
            out[len++] = *p;
        }
        out[len++] = '\'';
        out[len] = '\0';
    }
    PQconninfoFree(opts);
    return out;
}

char *bench_db_create(PGconn *admin, const char *base_conninfo, const char *prefix, char dbname[64])
{
    snprintf(dbname, 64, "%s_%d_%ld", prefix, (int)getpid(), (long)time(NULL));
    char *sql = eng_xasprintf("CREATE DATABASE %s", dbname); /* our own generated identifier */
    PQclear(bench_exec(admin, sql, 0, NULL));
    free(sql);
    char *db = conninfo_with_db(base_conninfo, dbname);
    size_t nmig;
    const eng_migration *migs = eng_migrations_embedded(&nmig);
    eng_err err = {0};
    eng_migrate_opts opts = eng_migrate_embedded_opts();
    if (eng_migrate_up(db, migs, nmig, &opts, NULL, &err) != ENG_OK) {
        fprintf(stderr, "%s: migrate: %s\n", prog, err.msg);
        exit(1);
    }
    return db;
}

void bench_db_drop(PGconn *admin, const char *dbname)
{
    char *sql = eng_xasprintf("DROP DATABASE IF EXISTS %s", dbname);
    PQclear(bench_exec(admin, sql, 0, NULL));
    free(sql);
}

long long bench_register(PGconn *c, const char *name, const char *def_json, long long *tenant)
{
    const char *key[] = {"fd_bench_key_not_secret"};
    PQclear(bench_exec(c, "SELECT flowd_bootstrap($1)", 1, key));
    char *t = bench_value(c, "SELECT id FROM tenants WHERE name = 'default'");
    *tenant = strtoll(t, NULL, 10);
    free(t);
    return bench_register_for(c, *tenant, name, def_json);
}

long long bench_register_for(PGconn *c, long long tenant, const char *name, const char *def_json)
{
    json_t *doc = json_loads(def_json, 0, NULL);
    json_t *def = NULL;
    eng_err err = {0};
    if (wf_def_compile(doc, &def, &err) != ENG_OK) {
        fprintf(stderr, "%s: definition: %s %s\n", prog, err.field, err.msg);
        exit(1);
    }
    char *digest = wf_def_digest(doc), *src = json_dumps(doc, JSON_COMPACT),
         *defs = json_dumps(def, JSON_COMPACT);
    char tenant_s[24];
    snprintf(tenant_s, sizeof tenant_s, "%lld", tenant);
    const char *params[] = {tenant_s, name, digest, src, defs};
    PGresult *r =
        bench_exec(c, "SELECT id FROM flowd_register_workflow($1, $2, $3, $4, $5)", 5, params);
    long long id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    free(digest);
    free(src);
    free(defs);
    json_decref(def);
    json_decref(doc);
    return id;
}

void bench_enqueue(PGconn *c, long long tenant, long long workflow, int runs, int batch)
{
    char tenant_s[24], wf_s[24];
    snprintf(tenant_s, sizeof tenant_s, "%lld", tenant);
    snprintf(wf_s, sizeof wf_s, "%lld", workflow);
    for (int done = 0; done < runs;) {
        int k = runs - done < batch ? runs - done : batch;
        json_t *arr = json_array();
        for (int i = 0; i < k; i++)
            json_array_append_new(arr, json_pack("{s:i}", "n", done + i));
        char *inputs = json_dumps(arr, JSON_COMPACT);
        json_decref(arr);
        const char *params[] = {tenant_s, wf_s, inputs};
        PQclear(bench_exec(
            c, "SELECT count(*) FROM flowd_enqueue($1, $2, $3::jsonb, 0, NULL, NULL)", 3, params));
        free(inputs);
        done += k;
    }
}
