/* bench/bench_schedules.c: how late do runs start when --schedules schedules tick in the same
 * second, and what does it cost?
 *
 * The schedules (cron "* * * * *", one-step workflow) are created with their next tick at the
 * same whole second, a few seconds ahead in real time (no test clock). Two workers run in this
 * process; the first fires schedules (engine/scheduler.c) as every flowd process does. Before the
 * tick, the server's committed transactions are counted for a few seconds: what a schedule table
 * costs between ticks; it ends before the scheduler starts making the tick's runs ahead of it
 * (flowd_schedule_lead). Then the program waits until every tick's run has started and reads,
 * per run, the lag from the tick to its creation (negative: made ahead) and to its start (its
 * first step claimed).
 *
 * Prints one JSON object: lag to start and to creation (p50, p99, max, ms), the seconds until the
 * last run started, the CPU of this process (scheduler and workers) and of PostgreSQL from just
 * before the runs are made until then, and the transactions per second while idle. */
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "engine/clock.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "engine/worker.h"

static void sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return bench_rusage_cpu_s(&ru);
}

/* {p50, p99, max} in ms of expr over the runs (one row of three columns). */
static json_t *lag_stats(PGconn *c, const char *expr)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY %s)),"
             "       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY %s)), round(max(%s))"
             "  FROM (SELECT r.*, split_part(r.idempotency_key, ':', 3)::bigint AS tick"
             "          FROM runs r) r",
             expr, expr, expr);
    PGresult *res = bench_exec(c, sql, 0, NULL);
    json_t *out = json_pack("{s:f, s:f, s:f}", "p50", atof(PQgetvalue(res, 0, 0)), "p99",
                            atof(PQgetvalue(res, 0, 1)), "max", atof(PQgetvalue(res, 0, 2)));
    PQclear(res);
    return out;
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_schedules --database CONNINFO [--schedules N] [--workers N]\n"
                    "                       [--idle-seconds N]\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *conninfo = NULL;
    int schedules = 10000, workers = 2, idle_s = 3;
    const bench_opt opts[] = {
        {"--database", &conninfo, NULL, 0, 0},
        {"--schedules", NULL, &schedules, 1, 1000000},
        {"--workers", NULL, &workers, 1, 64},
        {"--idle-seconds", NULL, &idle_s, 1, 60},
    };
    bench_set_name("bench_schedules");
    if (!bench_parse_opts(argc, argv, opts, ENG_ARRAY_LEN(opts)) || !conninfo)
        return usage();
    eng_mem_init();
    eng_log_init();
    eng_step_register_builtins();

    PGconn *admin = bench_connect(conninfo);
    char dbname[64];
    char *db = bench_db_create(admin, conninfo, "flowd_bench_sch", dbname);
    PGconn *c = bench_connect(db);
    long long tenant;
    bench_register(c, "tick",
                   "{\"name\": \"tick\", \"steps\": [{\"key\": \"s\", \"kind\": \"transform\","
                   " \"input\": {\"at\": \"{{input.at}}\"}}]}",
                   &tenant);
    /* runs of `allow` schedules are made this long before their tick: the idle count ends, and
     * the CPU count starts, before that */
    int64_t lead = (int64_t)bench_value_f(c, "SELECT extract(epoch FROM flowd_schedule_lead())"
                                             " * 1000");
    /* the tick: a whole second far enough ahead for the set-up and the idle count */
    int64_t tick = (eng_clock_wall_ms() / 1000 + 8 + idle_s + (lead + 999) / 1000) * 1000;
    char tenant_s[24], n_s[24], tick_s[24];
    snprintf(tenant_s, sizeof tenant_s, "%lld", tenant);
    snprintf(n_s, sizeof n_s, "%d", schedules);
    snprintf(tick_s, sizeof tick_s, "%lld", (long long)tick);
    const char *params[] = {tenant_s, n_s, tick_s};
    PQclear(bench_exec(c,
                       "SELECT count(*) FROM generate_series(1, $2::integer) i,"
                       " LATERAL flowd_schedule_put($1, 's' || i, '{\"workflow\": \"tick\","
                       " \"cron\": \"* * * * *\", \"input\": {\"at\": \"{{schedule.fire_time}}\"}}',"
                       " $3::bigint, true) p",
                       3, params));
    eng_worker **w = eng_xcalloc((size_t)workers, sizeof *w);
    for (int i = 0; i < workers; i++) {
        char *owner = eng_xasprintf("bench-sch-%d", i);
        eng_worker_opts wo = {.conninfo = db, .owner = owner, .reaper = i == 0};
        w[i] = eng_worker_start(&wo);
        free(owner);
    }
    int64_t before = tick - lead; /* nothing is made before this */
    sleep_ms(before - idle_s * 1000 - 1500 - eng_clock_wall_ms()); /* connected and settled */
    double x0 = bench_value_f(c, "SELECT xact_commit FROM pg_stat_database"
                                 " WHERE datname = current_database()");
    sleep_ms(before - 1000 - eng_clock_wall_ms());
    double x1 = bench_value_f(c, "SELECT xact_commit FROM pg_stat_database"
                                 " WHERE datname = current_database()");
    double idle_window = (double)(idle_s * 1000 - 500) / 1000.0;

    sleep_ms(before - 200 - eng_clock_wall_ms());
    double cpu0 = self_cpu_s(), pg0 = bench_db_cpu_s(c);
    char want[64];
    snprintf(want, sizeof want, "SELECT count(started_at) FROM runs");
    int64_t last = 0;
    long started = 0;
    while (eng_clock_wall_ms() < tick + 120000) {
        started = (long)bench_value_f(c, want);
        if (started >= schedules) {
            last = eng_clock_wall_ms();
            break;
        }
        sleep_ms(20);
    }
    double cpu1 = self_cpu_s(), pg1 = bench_db_cpu_s(c);
    for (int i = 0; i < workers; i++)
        eng_worker_stop(w[i], 5.0);
    free(w);

    json_t *out = json_object();
    json_object_set_new(out, "benchmark", json_string("schedules"));
    json_object_set_new(out, "schedules", json_integer(schedules));
    json_object_set_new(out, "runs_started", json_integer(started));
    json_object_set_new(out, "lag_to_start_ms",
                        lag_stats(c, "extract(epoch FROM r.started_at) * 1000 - r.tick"));
    json_object_set_new(out, "lag_to_created_ms",
                        lag_stats(c, "extract(epoch FROM r.created_at) * 1000 - r.tick"));
    json_object_set_new(out, "all_started_s",
                        last ? json_real(round((double)(last - tick) / 10) / 100) : json_null());
    json_object_set_new(out, "engine_cpu_s", json_real(round((cpu1 - cpu0) * 100) / 100));
    json_object_set_new(out, "postgres_cpu_s",
                        pg0 >= 0 ? json_real(round((pg1 - pg0) * 100) / 100) : json_null());
    json_object_set_new(out, "idle_xacts_per_s",
                        json_real(round((x1 - x0) / idle_window * 10) / 10));
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
