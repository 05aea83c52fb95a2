/* bench/bench_inflight.c: many LLM calls in flight at once; prints one JSON object.
 *
 *   bench_inflight --database CONNINFO [--steps 10000] [--workers 2] [--max-inflight 10000]
 *                  [--batch N (default: max-inflight, at most 5000)] [--latency-ms 200]
 *                  [--flowd PATH]
 *
 * A mock OpenAI server (tests/support/th_mockllm, in this process) answers every Chat Completions
 * request after --latency-ms. --steps single-step `llm` runs are enqueued first; then one
 * `flowd serve --role worker --workers W --max-inflight M --batch B` process works them, with
 * OPENAI_BASE_URL pointing at the mock. Reported:
 *   steps_per_s     steps / (last step finished - first step started), from the database
 *   max_in_flight   most requests the mock held at once (received, answer not yet sent)
 *   peak_rss_mib    VmHWM of the flowd process, read just before stopping it
 *   ideal_steps_per_s  min(steps, workers * max_inflight) / latency: what the in-flight cap and
 *                   the latency allow (the queue's own rate, bench/run queue, may be lower)
 * RLIMIT_NOFILE is raised to its hard limit here, and so in the flowd child, which inherits it.
 * The benchmark creates its own database next to CONNINFO's and drops it at the end. */
#include <jansson.h>
#include <libpq-fe.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/log.h"
#include "engine/mem.h"
#include "engine/migrate.h"
#include "engine/step.h"
#include "engine/wf_def.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_mockllm.h"

#ifndef FLOWD_BENCH_BIN
#define FLOWD_BENCH_BIN "flowd"
#endif

typedef struct bench_opts {
    const char *conninfo, *flowd;
    int steps, workers, max_inflight, batch, latency_ms;
} bench_opts;

/* th_mockllm stamps requests with this (tests get it from th_pg.c). */
long long th_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void die(const char *what, PGconn *c)
{
    fprintf(stderr, "bench_inflight: %s: %s\n", what, c ? PQerrorMessage(c) : "");
    exit(1);
}

static PGconn *connect_db(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK)
        die("connect", c);
    return c;
}

static PGresult *exec(PGconn *c, const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
        die(sql, c);
    return r;
}

static char *value(PGconn *c, const char *sql)
{
    PGresult *r = exec(c, sql, 0, NULL);
    char *v = eng_xstrdup(PQntuples(r) && !PQgetisnull(r, 0, 0) ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
    return v;
}

static double value_f(PGconn *c, const char *sql)
{
    char *v = value(c, sql);
    double d = strtod(v, NULL);
    free(v);
    return d;
}

/* base's connection options with dbname replaced (libpq keyword/value syntax, quoted). */
static char *conninfo_with_db(const char *base, const char *dbname)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(base, &errmsg);
    if (!opts) {
        fprintf(stderr, "bench_inflight: bad conninfo: %s\n", errmsg ? errmsg : "");
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

static long long register_llm_workflow(PGconn *c, long long *tenant)
{
    const char *key[] = {"fd_bench_key_not_secret"};
    PQclear(exec(c, "SELECT flowd_bootstrap($1)", 1, key));
    char *t = value(c, "SELECT id FROM tenants WHERE name = 'default'");
    *tenant = strtoll(t, NULL, 10);
    free(t);
    json_t *doc = json_loads("{\"name\": \"inflight\", \"steps\": [{\"key\": \"ask\", \"kind\":"
                             " \"llm\", \"input\": {\"provider\": \"openai\", \"model\":"
                             " \"gpt-4o-mini\", \"prompt\": \"lead {{input.n}}\","
                             " \"max_tokens\": 64}}]}",
                             0, NULL);
    json_t *def = NULL;
    eng_err err = {0};
    if (wf_def_compile(doc, &def, &err) != ENG_OK) {
        fprintf(stderr, "bench_inflight: definition: %s %s\n", err.field, err.msg);
        exit(1);
    }
    char *digest = wf_def_digest(doc), *src = json_dumps(doc, JSON_COMPACT),
         *defs = json_dumps(def, JSON_COMPACT);
    char tenant_s[24];
    snprintf(tenant_s, sizeof tenant_s, "%lld", *tenant);
    const char *params[] = {tenant_s, "inflight", digest, src, defs};
    PGresult *r = exec(c, "SELECT id FROM flowd_register_workflow($1, $2, $3, $4, $5)", 5, params);
    long long id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    free(digest);
    free(src);
    free(defs);
    json_decref(def);
    json_decref(doc);
    return id;
}

static void enqueue(PGconn *c, long long tenant, long long wf, int n)
{
    char tenant_s[24], wf_s[24];
    snprintf(tenant_s, sizeof tenant_s, "%lld", tenant);
    snprintf(wf_s, sizeof wf_s, "%lld", wf);
    for (int done = 0; done < n;) {
        int k = n - done < 1000 ? n - done : 1000;
        json_t *inputs = json_array();
        for (int i = 0; i < k; i++)
            json_array_append_new(inputs, json_pack("{s:i}", "n", done + i));
        char *s = json_dumps(inputs, JSON_COMPACT);
        const char *params[] = {tenant_s, wf_s, s};
        PQclear(exec(c, "SELECT count(*) FROM flowd_enqueue($1, $2, $3::jsonb, 0, NULL, NULL)", 3,
                     params));
        free(s);
        json_decref(inputs);
        done += k;
    }
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            perror("bench_inflight: setrlimit");
    }
}

/* VmHWM (peak resident set) of pid in MiB, or -1. */
static double peak_rss_mib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    double kib = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kib = strtod(line + 6, NULL);
    fclose(f);
    return kib < 0 ? -1 : kib / 1024.0;
}

static pid_t spawn_flowd(const bench_opts *o, const char *db, const char *base_url)
{
    char workers[16], inflight[16], batch[16];
    snprintf(workers, sizeof workers, "%d", o->workers);
    snprintf(inflight, sizeof inflight, "%d", o->max_inflight);
    snprintf(batch, sizeof batch, "%d", o->batch);
    pid_t pid = fork();
    if (pid < 0)
        die("fork", NULL);
    if (pid == 0) {
        setenv("OPENAI_API_KEY", "sk-bench-not-a-real-key", 1);
        setenv("OPENAI_BASE_URL", base_url, 1);
        if (!getenv("FLOWD_LOG_LEVEL"))
            setenv("FLOWD_LOG_LEVEL", "warn", 1);
        execl(o->flowd, "flowd", "--database", db, "serve", "--role", "worker", "--workers",
              workers, "--max-inflight", inflight, "--batch", batch, (char *)NULL);
        perror("bench_inflight: exec flowd");
        _exit(127);
    }
    return pid;
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_inflight --database CONNINFO [--steps N] [--workers N]"
                    " [--max-inflight N] [--batch N] [--latency-ms N] [--flowd PATH]\n");
    return 2;
}

int main(int argc, char **argv)
{
    bench_opts o = {.steps = 10000, .workers = 2, .max_inflight = 10000, .latency_ms = 200,
                    .flowd = FLOWD_BENCH_BIN};
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            return usage();
        const char *k = argv[i], *v = argv[++i];
        int n = atoi(v);
        if (strcmp(k, "--database") == 0)
            o.conninfo = v;
        else if (strcmp(k, "--flowd") == 0)
            o.flowd = v;
        else if (strcmp(k, "--steps") == 0 && n > 0)
            o.steps = n;
        else if (strcmp(k, "--workers") == 0 && n > 0)
            o.workers = n;
        else if (strcmp(k, "--max-inflight") == 0 && n > 0)
            o.max_inflight = n;
        else if (strcmp(k, "--batch") == 0 && n > 0 && n <= 5000)
            o.batch = n;
        else if (strcmp(k, "--latency-ms") == 0 && n >= 0)
            o.latency_ms = n;
        else
            return usage();
    }
    if (!o.conninfo)
        return usage();
    /* a claim trip as large as the in-flight cap lets one trip fill the worker */
    if (!o.batch)
        o.batch = o.max_inflight < 5000 ? o.max_inflight : 5000;
    eng_mem_init();
    eng_log_init();
    eng_step_register_builtins();
    step_register_all();
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    PGconn *admin = connect_db(o.conninfo);
    char dbname[64];
    snprintf(dbname, sizeof dbname, "flowd_inflight_%d_%ld", (int)getpid(), (long)time(NULL));
    char *sql = eng_xasprintf("CREATE DATABASE %s", dbname); /* our own generated identifier */
    PQclear(exec(admin, sql, 0, NULL));
    free(sql);
    char *db = conninfo_with_db(o.conninfo, dbname);
    size_t nmig;
    const eng_migration *migs = eng_migrations_embedded(&nmig);
    eng_err err = {0};
    if (eng_migrate_up(db, migs, nmig, NULL, &err) != ENG_OK) {
        fprintf(stderr, "bench_inflight: migrate: %s\n", err.msg);
        return 1;
    }
    PGconn *c = connect_db(db);
    long long tenant;
    long long wf = register_llm_workflow(c, &tenant);
    enqueue(c, tenant, wf, o.steps);
    PQclear(exec(c, "ANALYZE", 0, NULL));

    th_llm *mock = th_llm_start(TH_LLM_OPENAI);
    th_llm_set_default(mock, &(th_llm_answer){.delay_ms = o.latency_ms});
    pid_t pid = spawn_flowd(&o, db, th_llm_base_url(mock));
    char *done_sql = eng_xasprintf("SELECT count(*) FROM steps WHERE state IN ('succeeded', "
                                   "'failed')");
    double deadline = (double)th_now_ms() + 300000.0;
    double rss = -1;
    int finished = 0;
    while ((double)th_now_ms() < deadline) {
        struct timespec ts = {0, 100000000L};
        nanosleep(&ts, NULL);
        finished = (int)value_f(c, done_sql);
        double r = peak_rss_mib(pid);
        if (r > rss)
            rss = r;
        if (finished >= o.steps)
            break;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "bench_inflight: flowd exited early (status %d)\n", st);
            return 1;
        }
    }
    free(done_sql);
    kill(pid, SIGTERM);
    int status;
    waitpid(pid, &status, 0);
    double seconds = value_f(c, "SELECT extract(epoch FROM max(finished_at) - min(started_at))"
                                " FROM steps");
    double failed = value_f(c, "SELECT count(*) FROM steps WHERE state <> 'succeeded'");
    unsigned long calls = th_llm_calls(mock), peak = th_llm_peak_pending(mock);
    th_llm_stop(mock);

    int cap = o.workers * o.max_inflight < o.steps ? o.workers * o.max_inflight : o.steps;
    double ideal = o.latency_ms > 0 ? cap / (o.latency_ms / 1000.0) : 0;
    double rate = seconds > 0 ? finished / seconds : 0;
    json_t *out = json_object();
    json_object_set_new(out, "benchmark", json_string("inflight"));
    json_object_set_new(out, "steps", json_integer(o.steps));
    json_object_set_new(out, "finished", json_integer(finished));
    json_object_set_new(out, "not_succeeded", json_integer((json_int_t)failed));
    json_object_set_new(out, "mock_calls", json_integer((json_int_t)calls));
    json_object_set_new(out, "steps_per_s", json_real(round(rate * 100) / 100));
    json_object_set_new(out, "seconds", json_real(round(seconds * 1000) / 1000));
    json_object_set_new(out, "max_in_flight", json_integer((json_int_t)peak));
    json_object_set_new(out, "peak_rss_mib", json_real(round(rss * 10) / 10));
    json_object_set_new(out, "ideal_steps_per_s", json_real(round(ideal)));
    json_object_set_new(out, "workers", json_integer(o.workers));
    json_object_set_new(out, "max_inflight_per_worker", json_integer(o.max_inflight));
    json_object_set_new(out, "batch", json_integer(o.batch));
    json_object_set_new(out, "latency_ms", json_integer(o.latency_ms));
    json_object_set_new(out, "cores", json_integer(sysconf(_SC_NPROCESSORS_ONLN)));
    char *s = json_dumps(out, JSON_COMPACT);
    printf("%s\n", s);
    free(s);
    json_decref(out);
    PQfinish(c);
    sql = eng_xasprintf("DROP DATABASE IF EXISTS %s", dbname);
    PQclear(exec(admin, sql, 0, NULL));
    free(sql);
    PQfinish(admin);
    free(db);
    return finished >= o.steps ? 0 : 1;
}
