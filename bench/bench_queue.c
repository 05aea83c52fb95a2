/* bench/bench_queue.c: queue throughput and latency on a fresh database; prints one JSON object.
 *
 *   bench_queue --database CONNINFO [--runs 20000] [--workers 2] [--batch N] [--max-inflight N]
 *               [--enqueue-batch 1000] [--latency-runs 500] [--latency-interval-ms 10]
 *
 * CONNINFO names any database of the server; the benchmark creates its own database next to it and
 * drops it at the end. Phases, each on an otherwise idle engine:
 *   enqueue_single  one run per flowd_enqueue call from 4 connections at once (then truncated)
 *   enqueue         --runs single-step transform runs, --enqueue-batch inputs per call
 *   steps           those runs worked by --workers in-process workers, from worker start until the
 *                   last run finished (runs.finished_at of the last one, read from the database);
 *                   with the CPU per step of the workers and of the server processes serving them
 *   latency         fresh workers, idle; one run every --latency-interval-ms; enqueue-to-start is
 *                   steps.started_at - runs.created_at (both the engine clock of their transaction)
 * Logs go to stderr; stdout carries only the JSON. */
#include <jansson.h>
#include <libpq-fe.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "engine/worker.h"

#define SINGLE_CONNS 4
#define SINGLE_PER_CONN 500

typedef struct bench_opts {
    const char *conninfo;
    int runs, workers, batch, max_inflight, enqueue_batch, latency_runs, latency_interval_ms;
    int tenants; /* the runs are split evenly over this many tenants, each enqueued in turn */
} bench_opts;

static double round2(double v)
{
    return (double)(long long)(v * 100 + 0.5) / 100;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

typedef struct single_arg {
    const char *conninfo;
    char tenant[24], workflow[24];
} single_arg;

static void *single_thread(void *p)
{
    single_arg *a = p;
    PGconn *c = bench_connect(a->conninfo);
    PGresult *r = PQprepare(c, "enq", "SELECT run_id FROM flowd_enqueue($1, $2, $3::jsonb, 0, NULL, NULL)",
                            3, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        bench_die("prepare", c);
    PQclear(r);
    const char *params[] = {a->tenant, a->workflow, "[{\"n\": 1}]"};
    for (int i = 0; i < SINGLE_PER_CONN; i++) {
        r = PQexecPrepared(c, "enq", 3, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            bench_die("enqueue", c);
        PQclear(r);
    }
    PQfinish(c);
    return NULL;
}

static double phase_enqueue_single(const char *db, long long tenant, long long wf)
{
    single_arg a = {.conninfo = db};
    snprintf(a.tenant, sizeof a.tenant, "%lld", tenant);
    snprintf(a.workflow, sizeof a.workflow, "%lld", wf);
    pthread_t th[SINGLE_CONNS];
    double t0 = now_s();
    for (int i = 0; i < SINGLE_CONNS; i++)
        pthread_create(&th[i], NULL, single_thread, &a);
    for (int i = 0; i < SINGLE_CONNS; i++)
        pthread_join(th[i], NULL);
    return SINGLE_CONNS * SINGLE_PER_CONN / (now_s() - t0);
}

/* tenants[i] runs workflows[i]; the first gets what does not divide evenly. */
static double phase_enqueue(PGconn *c, const long long *tenants, const long long *workflows, int n,
                            int runs, int batch)
{
    double t0 = now_s();
    for (int i = 0; i < n; i++)
        bench_enqueue(c, tenants[i], workflows[i], runs / n + (i == 0 ? runs % n : 0), batch);
    return runs / (now_s() - t0);
}

static eng_worker **workers_start(const bench_opts *o, const char *db, const char *tag)
{
    eng_worker **w = eng_xcalloc((size_t)o->workers, sizeof *w);
    for (int i = 0; i < o->workers; i++) {
        char *owner = eng_xasprintf("bench-%s-%d", tag, i);
        eng_worker_opts wo = {.conninfo = db, .owner = owner, .batch = o->batch,
                              .max_inflight = o->max_inflight, .reaper = i == 0};
        w[i] = eng_worker_start(&wo);
        free(owner);
    }
    return w;
}

static void workers_stop(const bench_opts *o, eng_worker **w)
{
    for (int i = 0; i < o->workers; i++)
        eng_worker_stop(w[i], 5.0);
    free(w);
}

/* Waits (polling every 50 ms, up to timeout_s) until n runs have finished; false on timeout.
 * Counting finished runs scans the runs table of the server being measured, which would take a
 * share of the CPU the workers need: the count is taken only once the partial indexes show no
 * ready or running step left (graphile-worker's driver counts its jobs in-process). */
static bool wait_finished(PGconn *c, long n, double timeout_s)
{
    double deadline = now_s() + timeout_s;
    while (now_s() < deadline) {
        if (bench_value_f(c, "SELECT (NOT EXISTS (SELECT 1 FROM steps WHERE state = 'ready') AND "
                             "NOT EXISTS (SELECT 1 FROM steps WHERE state = 'running'))::int") > 0 &&
            bench_value_f(c, "SELECT count(*) FROM runs WHERE state IN ('succeeded', 'failed')") >=
                (double)n)
            return true;
        sleep_s(0.05);
    }
    return false;
}

static double cpu_self_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return bench_rusage_cpu_s(&ru);
}

/* Adds the steps phase's CPU per step to out: the workers' (this process) and the server's for
 * their connections (read just before they stop; absent when the server is on another machine). */
static double phase_steps(const bench_opts *o, PGconn *c, const char *db, double *seconds,
                          json_t *out)
{
    /* The database's clock: the end is read from runs.finished_at, so both ends use it. */
    char *start = bench_value(c, "SELECT clock_timestamp()");
    double cpu0 = cpu_self_s();
    eng_worker **w = workers_start(o, db, "tput");
    bool ok = wait_finished(c, o->runs, 300);
    double pg_cpu = bench_db_cpu_s(c), engine_cpu = cpu_self_s() - cpu0;
    workers_stop(o, w);
    json_object_set_new(out, "engine_cpu_us_per_step",
                        json_real(round2(engine_cpu * 1e6 / o->runs)));
    if (pg_cpu >= 0)
        json_object_set_new(out, "postgres_cpu_us_per_step",
                            json_real(round2(pg_cpu * 1e6 / o->runs)));
    if (!ok) {
        fprintf(stderr, "bench_queue: the runs did not finish within 300 s\n");
        exit(1);
    }
    const char *params[] = {start};
    PGresult *r = bench_exec(
        c, "SELECT extract(epoch FROM max(finished_at) - $1::timestamptz) FROM runs", 1, params);
    *seconds = strtod(PQgetvalue(r, 0, 0), NULL);
    PQclear(r);
    free(start);
    if (bench_value_f(c, "SELECT count(*) FROM runs WHERE state <> 'succeeded'") > 0) {
        fprintf(stderr, "bench_queue: some runs did not succeed\n");
        exit(1);
    }
    return o->runs / *seconds;
}

static void phase_latency(const bench_opts *o, PGconn *c, const char *db, long long tenant,
                          long long wf, json_t *out)
{
    eng_worker **w = workers_start(o, db, "lat");
    sleep_s(0.5); /* connected, LISTENing and idle */
    char tenant_s[24], wf_s[24];
    snprintf(tenant_s, sizeof tenant_s, "%lld", tenant);
    snprintf(wf_s, sizeof wf_s, "%lld", wf);
    PGresult *r = PQprepare(c, "enq1", "SELECT run_id FROM flowd_enqueue($1, $2, $3::jsonb, 0, NULL, NULL)",
                            3, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        bench_die("prepare", c);
    PQclear(r);
    const char *params[] = {tenant_s, wf_s, "[{\"n\": 1}]"};
    double next = now_s();
    for (int i = 0; i < o->latency_runs; i++) {
        double wait = next - now_s();
        if (wait > 0)
            sleep_s(wait);
        next += o->latency_interval_ms / 1000.0;
        r = PQexecPrepared(c, "enq1", 3, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            bench_die("enqueue", c);
        PQclear(r);
    }
    bool ok = wait_finished(c, o->latency_runs, 60);
    workers_stop(o, w);
    if (!ok) {
        fprintf(stderr, "bench_queue: latency runs did not finish\n");
        exit(1);
    }
    r = bench_exec(c,
             "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), "
             "       percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms), avg(ms) "
             "  FROM (SELECT extract(epoch FROM s.started_at - r.created_at) * 1000 AS ms "
             "          FROM runs r JOIN steps s ON s.run_id = r.id) x",
             0, NULL);
    json_object_set_new(out, "latency_p50_ms", json_real(strtod(PQgetvalue(r, 0, 0), NULL)));
    json_object_set_new(out, "latency_p99_ms", json_real(strtod(PQgetvalue(r, 0, 1), NULL)));
    json_object_set_new(out, "latency_max_ms", json_real(strtod(PQgetvalue(r, 0, 2), NULL)));
    json_object_set_new(out, "latency_avg_ms", json_real(strtod(PQgetvalue(r, 0, 3), NULL)));
    PQclear(r);
}

static void truncate_runs(PGconn *c)
{
    PQclear(bench_exec(c, "TRUNCATE run_events, steps, runs CASCADE", 0, NULL));
    PQclear(bench_exec(c, "VACUUM ANALYZE", 0, NULL));
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_queue --database CONNINFO [--runs N] [--workers N] [--batch N]\n"
                    "                   [--max-inflight N] [--enqueue-batch N] [--latency-runs N]\n"
                    "                   [--latency-interval-ms N] [--tenants N]\n");
    return 2;
}

int main(int argc, char **argv)
{
    bench_opts o = {.runs = 20000, .workers = 2, .enqueue_batch = 1000, .latency_runs = 500,
                    .latency_interval_ms = 10, .tenants = 1};
    const bench_opt opts[] = {
        {"--database", &o.conninfo, NULL, 0, 0},
        {"--runs", NULL, &o.runs, 1, INT_MAX},
        {"--workers", NULL, &o.workers, 1, INT_MAX},
        {"--batch", NULL, &o.batch, 1, INT_MAX},
        {"--max-inflight", NULL, &o.max_inflight, 1, INT_MAX},
        {"--enqueue-batch", NULL, &o.enqueue_batch, 1, INT_MAX},
        {"--latency-runs", NULL, &o.latency_runs, 1, INT_MAX},
        {"--latency-interval-ms", NULL, &o.latency_interval_ms, 1, INT_MAX},
        {"--tenants", NULL, &o.tenants, 1, 1000},
    };
    bench_set_name("bench_queue");
    if (!bench_parse_opts(argc, argv, opts, ENG_ARRAY_LEN(opts)) || !o.conninfo)
        return usage();
    eng_mem_init();
    eng_log_init();
    eng_step_register_builtins();

    PGconn *admin = bench_connect(o.conninfo);
    char dbname[64];
    char *db = bench_db_create(admin, o.conninfo, "flowd_bench", dbname);
    PGconn *c = bench_connect(db);
    static const char def[] = "{\"name\": \"bench\", \"steps\": [{\"key\": \"s\", \"kind\":"
                              " \"transform\", \"input\": {\"n\": \"{{input.n}}\"}}]}";
    long long tenant;
    long long wf = bench_register(c, "bench", def, &tenant);
    long long *tenants = eng_xcalloc((size_t)o.tenants, sizeof *tenants);
    long long *wfs = eng_xcalloc((size_t)o.tenants, sizeof *wfs);
    tenants[0] = tenant;
    wfs[0] = wf;
    for (int i = 1; i < o.tenants; i++) {
        char name[32];
        snprintf(name, sizeof name, "bench-%d", i);
        const char *params[] = {name};
        PGresult *r = bench_exec(c, "INSERT INTO tenants (name) VALUES ($1) RETURNING id", 1, params);
        tenants[i] = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
        wfs[i] = bench_register_for(c, tenants[i], "bench", def);
    }

    json_t *out = json_object();
    json_object_set_new(out, "benchmark", json_string("queue"));
    double single = phase_enqueue_single(db, tenant, wf);
    truncate_runs(c);
    double enq = phase_enqueue(c, tenants, wfs, o.tenants, o.runs, o.enqueue_batch);
    PQclear(bench_exec(c, "ANALYZE", 0, NULL));
    double seconds = 0;
    double steps = phase_steps(&o, c, db, &seconds, out);
    truncate_runs(c);
    phase_latency(&o, c, db, tenant, wf, out);

    json_object_set_new(out, "runs", json_integer(o.runs));
    json_object_set_new(out, "enqueue_per_s", json_real(round2(enq)));
    json_object_set_new(out, "enqueue_batch", json_integer(o.enqueue_batch));
    json_object_set_new(out, "enqueue_single_per_s", json_real(round2(single)));
    json_object_set_new(out, "enqueue_single_connections", json_integer(SINGLE_CONNS));
    json_object_set_new(out, "steps_per_s", json_real(round2(steps)));
    json_object_set_new(out, "steps_seconds", json_real(round2(seconds * 1000) / 1000));
    json_object_set_new(out, "tenants", json_integer(o.tenants));
    json_object_set_new(out, "workers", json_integer(o.workers));
    json_object_set_new(out, "batch", o.batch ? json_integer(o.batch) : json_string("default"));
    json_object_set_new(out, "max_inflight",
                        o.max_inflight ? json_integer(o.max_inflight) : json_string("default"));
    json_object_set_new(out, "latency_runs", json_integer(o.latency_runs));
    json_object_set_new(out, "latency_interval_ms", json_integer(o.latency_interval_ms));
    json_object_set_new(out, "cores", json_integer(sysconf(_SC_NPROCESSORS_ONLN)));
    bench_server_facts(c, out);
    free(tenants);
    free(wfs);
    PQfinish(c);
    free(db);
    bench_db_drop(admin, dbname);
    PQfinish(admin);

    char *text = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    printf("%s\n", text);
    free(text);
    json_decref(out);
    return 0;
}
