/* bench/bench_retention.c: does retention keep up with the runs flowd finishes?
 *
 * Two workers (the first also prunes, with --retention-ms) work one-step runs that this program
 * enqueues at --rate runs per second, in batches of 500, for --seconds. The runs table is counted
 * every second: with retention keeping up, it levels off near rate x (retention + a second)
 * once the first pass found work (the maximum over the second half says where), instead of
 * growing by the difference between the two rates. Then enqueuing stops and the program waits
 * until every run is gone, which measures how fast a backlog is deleted.
 *
 * Prints one JSON object: the rates achieved, the largest and the last runs count while
 * enqueuing, the bound retention should hold (rate x retention), the seconds the drain took past
 * the retention, and the deletion rate during the drain. */
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "engine/worker.h"

#define BATCH 500

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_retention --database CONNINFO [--rate RUNS_PER_S] [--seconds N]\n"
                    "                       [--retention-ms N] [--workers N]\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *conninfo = NULL;
    int rate = 4000, seconds = 30, retention_ms = 5000, workers = 2;
    const bench_opt opts[] = {
        {"--database", &conninfo, NULL, 0, 0},
        {"--rate", NULL, &rate, 1, INT_MAX},
        {"--seconds", NULL, &seconds, 1, 3600},
        {"--retention-ms", NULL, &retention_ms, 100, INT_MAX},
        {"--workers", NULL, &workers, 1, 64},
    };
    bench_set_name("bench_retention");
    if (!bench_parse_opts(argc, argv, opts, ENG_ARRAY_LEN(opts)) || !conninfo)
        return usage();
    eng_mem_init();
    eng_log_init();
    eng_step_register_builtins();

    PGconn *admin = bench_connect(conninfo);
    char dbname[64];
    char *db = bench_db_create(admin, conninfo, "flowd_bench_ret", dbname);
    PGconn *c = bench_connect(db);
    long long tenant;
    long long wf = bench_register(c, "ret",
                                  "{\"name\": \"ret\", \"steps\": [{\"key\": \"s\", \"kind\":"
                                  " \"transform\", \"input\": {\"n\": \"{{input.n}}\"}}]}",
                                  &tenant);
    eng_worker **w = eng_xcalloc((size_t)workers, sizeof *w);
    for (int i = 0; i < workers; i++) {
        char *owner = eng_xasprintf("bench-ret-%d", i);
        eng_worker_opts wo = {.conninfo = db, .owner = owner, .reaper = i == 0,
                              .retention_ms = i == 0 ? retention_ms : 0};
        w[i] = eng_worker_start(&wo);
        free(owner);
    }

    long enqueued = 0, max_rows = 0, last_rows = 0, max_rows_late = 0;
    double t0 = now_s(), next_count = t0 + 1;
    while (now_s() - t0 < seconds) {
        double due = t0 + (double)(enqueued + BATCH) / rate;
        sleep_s(due - now_s());
        bench_enqueue(c, tenant, wf, BATCH, BATCH);
        enqueued += BATCH;
        if (now_s() >= next_count) {
            last_rows = (long)bench_value_f(c, "SELECT count(*) FROM runs");
            max_rows = last_rows > max_rows ? last_rows : max_rows;
            if (now_s() - t0 > seconds / 2.0 && last_rows > max_rows_late)
                max_rows_late = last_rows;
            next_count += 1;
        }
    }
    double enqueue_s = now_s() - t0;
    long finished = enqueued - (long)bench_value_f(c, "SELECT count(*) FROM runs WHERE state IN"
                                                      " ('queued', 'running')");
    double t1 = now_s();
    long rows_at_end = (long)bench_value_f(c, "SELECT count(*) FROM runs");
    long rows = rows_at_end;
    while (rows > 0 && now_s() - t1 < 600) {
        sleep_s(0.05);
        rows = (long)bench_value_f(c, "SELECT count(*) FROM runs");
    }
    double drain_s = now_s() - t1;
    for (int i = 0; i < workers; i++)
        eng_worker_stop(w[i], 5.0);
    free(w);

    json_t *out = json_object();
    json_object_set_new(out, "benchmark", json_string("retention"));
    json_object_set_new(out, "rate_asked", json_integer(rate));
    json_object_set_new(out, "enqueued_per_s", json_real(round((double)enqueued / enqueue_s)));
    json_object_set_new(out, "finished_per_s", json_real(round((double)finished / enqueue_s)));
    json_object_set_new(out, "seconds", json_integer(seconds));
    json_object_set_new(out, "retention_ms", json_integer(retention_ms));
    json_object_set_new(out, "runs_rows_max", json_integer(max_rows));
    json_object_set_new(out, "runs_rows_max_second_half", json_integer(max_rows_late));
    json_object_set_new(out, "runs_rows_last", json_integer(last_rows));
    json_object_set_new(out, "runs_rows_bound",
                        json_integer((long)((double)enqueued / enqueue_s * retention_ms / 1000)));
    json_object_set_new(out, "drain_rows", json_integer(rows_at_end));
    json_object_set_new(out, "drain_s", json_real(round(drain_s * 100) / 100));
    json_object_set_new(out, "left_rows", json_integer(rows));
    json_object_set_new(out, "workers", json_integer(workers));
    json_object_set_new(out, "cores", json_integer(sysconf(_SC_NPROCESSORS_ONLN)));
    bench_server_facts(c, out);
    PQfinish(c);
    free(db);
    bench_db_drop(admin, dbname);
    PQfinish(admin);
    char *text = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);
    printf("%s\n", text);
    free(text);
    json_decref(out);
    return 0;
}
