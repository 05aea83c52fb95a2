/* bench/bench_floor.c: what PostgreSQL itself spends per queue item, for a peer's job and for a
 * workflow step; prints one JSON object.
 *
 *   bench_floor --database CONNINFO [--items 20000] [--batch 500]
 *
 * The queue benchmark's bar is a multiple of graphile-worker's rate on the same server. Whether a
 * design can reach such a bar at all is decided by the server's own work per item, which no engine
 * code can remove: this program measures it. Each case fills its tables with --items claimable
 * rows, then one server process works them all in a stored procedure, --batch rows per claim, one
 * transaction per claim and one per batch of completions (as the engines do), with no client
 * round trips at all. Reported per case:
 *   pg_cpu_us       CPU (user + system) of that server process per item, from /proc: the
 *                   server's work with no engine attached (the WAL writer's and the checkpointer's
 *                   share is left out, so this is a lower bound)
 *   wal_bytes       WAL written per item
 *   one_process_per_s  items per second of that one process
 *   ceiling_per_s   cores * 1e6 / pg_cpu_us: the most items per second the server could work if it
 *                   had every core and the engine cost nothing
 * Cases:
 *   peer_job        graphile-worker 0.17.3's job: its jobs table (columns, generated
 *                   is_available, both partial indexes, the unique key) with its batched claim
 *                   (UPDATE of the rows a FOR UPDATE SKIP LOCKED scan picked, including its
 *                   named-queue clause) and its batched completion (DELETE)
 *   min_step        the least a step can write under issue 2's rules, on the leanest schema that
 *                   holds them: the claim commits the step running with its lease; completion
 *                   commits the step's state and output with its run's progress and state. Steps
 *                   and runs carry only a primary key and the claim index; no run start, no event
 *                   log, no template context read
 *   flowd_step      flowd's own round trip, flowd_work(): one-step transform runs as
 *                   bench/run queue works them, on flowd's schema (transform is pure: claimed
 *                   with a row lock and finished in the claim's transaction, flowd_finish_pure)
 * The benchmark creates its own database next to CONNINFO's and drops it at the end. The server
 * must run on this machine (its processes' CPU is read from /proc). */
#include <jansson.h>
#include <libpq-fe.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"

#define MAX_SETUP 8

typedef struct floor_case {
    const char *name;
    /* run in order; a statement with "$1" gets --items */
    const char *setup[MAX_SETUP];
    /* a procedure (p_batch integer) that works every item, committing as it goes */
    const char *work;
} floor_case;

static const floor_case cases[] = {
    {"peer_job",
     {"CREATE TABLE floor_job_queues ("
      " id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
      " queue_name text NOT NULL UNIQUE CHECK (length(queue_name) <= 128),"
      " locked_at timestamptz, locked_by text,"
      " is_available boolean GENERATED ALWAYS AS (locked_at IS NULL) STORED NOT NULL)",
      "CREATE TABLE floor_jobs ("
      " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, job_queue_id integer,"
      " task_id integer NOT NULL, payload json NOT NULL DEFAULT '{}',"
      " priority smallint NOT NULL DEFAULT 0, run_at timestamptz NOT NULL DEFAULT now(),"
      " attempts smallint NOT NULL DEFAULT 0,"
      " max_attempts smallint NOT NULL DEFAULT 25 CHECK (max_attempts >= 1), last_error text,"
      " created_at timestamptz NOT NULL DEFAULT now(),"
      " updated_at timestamptz NOT NULL DEFAULT now(),"
      " key text UNIQUE CHECK (length(key) > 0 AND length(key) <= 512),"
      " locked_at timestamptz, locked_by text, revision integer NOT NULL DEFAULT 0, flags jsonb,"
      " is_available boolean GENERATED ALWAYS AS (locked_at IS NULL AND attempts < max_attempts)"
      " STORED NOT NULL)",
      "CREATE INDEX floor_jobs_main ON floor_jobs (priority, run_at)"
      " INCLUDE (id, task_id, job_queue_id) WHERE is_available",
      "CREATE INDEX floor_jobs_no_queue ON floor_jobs (priority, run_at) INCLUDE (id, task_id)"
      " WHERE is_available AND job_queue_id IS NULL",
      "INSERT INTO floor_jobs (task_id, payload)"
      " SELECT 1, json_build_object('n', g) FROM generate_series(1, $1::integer) g"},
     "CREATE PROCEDURE floor_work(p_batch integer) LANGUAGE plpgsql AS $$\n"
     "DECLARE v_ids bigint[];\n"
     "BEGIN\n"
     "  LOOP\n"
     "    WITH j AS (\n"
     "      SELECT f.id FROM floor_jobs f\n"
     "       WHERE f.is_available AND f.run_at <= now() AND f.task_id = ANY ('{1}')\n"
     "         AND (f.job_queue_id IS NULL OR f.job_queue_id IN (\n"
     "              SELECT q.id FROM floor_job_queues q WHERE q.is_available\n"
     "                 FOR UPDATE SKIP LOCKED))\n"
     "       ORDER BY f.priority, f.run_at LIMIT p_batch FOR UPDATE SKIP LOCKED),\n"
     "    u AS (\n"
     "      UPDATE floor_jobs f SET attempts = f.attempts + 1, locked_by = 'floor',\n"
     "             locked_at = now()\n"
     "        FROM j WHERE f.id = j.id RETURNING f.*)\n"
     "    SELECT array_agg(u.id) INTO v_ids FROM u;\n"
     "    EXIT WHEN v_ids IS NULL;\n"
     "    COMMIT;\n"
     "    DELETE FROM floor_jobs WHERE id = ANY (v_ids);\n"
     "    COMMIT;\n"
     "  END LOOP;\n"
     "END $$"},
    {"min_step",
     {"CREATE TABLE floor_runs ("
      " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, state text NOT NULL,"
      " steps_total integer NOT NULL, steps_done integer NOT NULL DEFAULT 0, output jsonb,"
      " finished_at timestamptz) WITH (fillfactor = 80)",
      "CREATE TABLE floor_steps ("
      " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, run_id bigint NOT NULL,"
      " state text NOT NULL, priority integer NOT NULL DEFAULT 0,"
      " run_at timestamptz NOT NULL DEFAULT now(), attempts integer NOT NULL DEFAULT 0,"
      " lease_owner text, lease_expires_at timestamptz, output jsonb,"
      " started_at timestamptz, finished_at timestamptz) WITH (fillfactor = 80)",
      "CREATE INDEX floor_steps_claim ON floor_steps (priority DESC, run_at, id)"
      " WHERE state = 'ready'",
      "INSERT INTO floor_runs (state, steps_total)"
      " SELECT 'queued', 1 FROM generate_series(1, $1::integer)",
      "INSERT INTO floor_steps (run_id, state) SELECT id, 'ready' FROM floor_runs ORDER BY id"},
     "CREATE PROCEDURE floor_work(p_batch integer) LANGUAGE plpgsql AS $$\n"
     "DECLARE v_ids bigint[];\n"
     "BEGIN\n"
     "  LOOP\n"
     "    WITH c AS (\n"
     "      SELECT s.id FROM floor_steps s WHERE s.state = 'ready' AND s.run_at <= now()\n"
     "       ORDER BY s.priority DESC, s.run_at, s.id LIMIT p_batch FOR UPDATE SKIP LOCKED),\n"
     "    u AS (\n"
     "      UPDATE floor_steps s SET state = 'running', attempts = s.attempts + 1,\n"
     "             lease_owner = 'floor', lease_expires_at = now() + interval '1 minute',\n"
     "             started_at = now()\n"
     "        FROM c WHERE s.id = c.id RETURNING s.id)\n"
     "    SELECT array_agg(u.id) INTO v_ids FROM u;\n"
     "    EXIT WHEN v_ids IS NULL;\n"
     "    COMMIT;\n"
     "    WITH s AS (\n"
     "      UPDATE floor_steps s SET state = 'succeeded', output = '{\"ok\": true}',\n"
     "             lease_owner = NULL, lease_expires_at = NULL, finished_at = now()\n"
     "       WHERE s.id = ANY (v_ids) RETURNING s.run_id, s.output)\n"
     "    UPDATE floor_runs r SET steps_done = r.steps_done + 1,\n"
     "           state = CASE WHEN r.steps_done + 1 = r.steps_total\n"
     "                        THEN 'succeeded' ELSE 'running' END,\n"
     "           output = s.output, finished_at = now()\n"
     "      FROM s WHERE r.id = s.run_id;\n"
     "    COMMIT;\n"
     "  END LOOP;\n"
     "END $$"},
    {"flowd_step",
     {NULL}, /* filled through flowd's own functions: see fill_flowd */
     "CREATE PROCEDURE floor_work(p_batch integer) LANGUAGE plpgsql AS $$\n"
     "DECLARE v_results jsonb; v_pure jsonb; v_n integer;\n"
     "BEGIN\n"
     "  LOOP\n"
     "    SELECT jsonb_agg(jsonb_build_object('id', c.id, 'r', c.run_id, 's', 'ok',\n"
     "                                        'o', c.input)) FILTER (WHERE NOT c.pure),\n"
     "           jsonb_agg(jsonb_build_object('id', c.id, 'r', c.run_id, 's', 'ok',\n"
     "                                        'o', c.input)) FILTER (WHERE c.pure), count(*)\n"
     "      INTO v_results, v_pure, v_n\n"
     "      FROM flowd_work('floor', v_results, p_batch, 60000, '{transform}') c;\n"
     "    PERFORM flowd_finish_pure('floor', v_pure);\n"
     "    COMMIT;\n"
     "    EXIT WHEN v_n = 0;\n"
     "  END LOOP;\n"
     "END $$"},
};

typedef struct bench_opts {
    const char *conninfo;
    int items, batch;
} bench_opts;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fill_flowd(PGconn *c, int items)
{
    long long tenant;
    long long wf = bench_register(c, "floor",
                                  "{\"name\": \"floor\", \"steps\": [{\"key\": \"t\","
                                  " \"kind\": \"transform\","
                                  " \"input\": {\"n\": \"{{input.n}}\"}}]}",
                                  &tenant);
    bench_enqueue(c, tenant, wf, items, 1000);
}

static double pid_cpu_or_die(PGconn *c)
{
    double s = bench_pid_cpu_s(PQbackendPID(c));
    if (s < 0)
        bench_die("the server's processes are not readable in /proc: run the benchmark on the "
                  "server's machine",
                  NULL);
    return s;
}

/* Fills and works one case on a fresh connection; returns its figures. */
static json_t *run_case(const char *db, const floor_case *fc, const bench_opts *o, long cores)
{
    PGconn *c = bench_connect(db);
    char items[16], batch[16];
    snprintf(items, sizeof items, "%d", o->items);
    snprintf(batch, sizeof batch, "%d", o->batch);
    if (!fc->setup[0])
        fill_flowd(c, o->items);
    for (int i = 0; i < MAX_SETUP && fc->setup[i]; i++) {
        const char *params[] = {items};
        PQclear(bench_exec(c, fc->setup[i], strstr(fc->setup[i], "$1") ? 1 : 0, params));
    }
    PQclear(bench_exec(c, fc->work, 0, NULL));
    PQclear(bench_exec(c, "VACUUM ANALYZE", 0, NULL));
    PQclear(bench_exec(c, "CHECKPOINT", 0, NULL));

    char *lsn = bench_value(c, "SELECT pg_current_wal_lsn()");
    double cpu0 = pid_cpu_or_die(c), t0 = now_s();
    const char *params[] = {batch};
    PQclear(bench_exec(c, "CALL floor_work($1::integer)", 1, params));
    double seconds = now_s() - t0, cpu = pid_cpu_or_die(c) - cpu0;
    const char *lsn_p[] = {lsn};
    PGresult *r = bench_exec(c, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)", 1,
                             lsn_p);
    double wal = strtod(PQgetvalue(r, 0, 0), NULL);
    PQclear(r);
    free(lsn);
    PQclear(bench_exec(c, "DROP PROCEDURE floor_work", 0, NULL));
    PQfinish(c);

    double us = cpu * 1e6 / o->items;
    return json_pack("{s:f, s:f, s:f, s:f}", "pg_cpu_us", round(us * 10) / 10, "wal_bytes",
                     round(wal / o->items), "one_process_per_s", round(o->items / seconds),
                     "ceiling_per_s", us > 0 ? round((double)cores * 1e6 / us) : 0.0);
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_floor --database CONNINFO [--items N] [--batch N]\n");
    return 2;
}

int main(int argc, char **argv)
{
    bench_opts o = {.items = 20000, .batch = 500};
    const bench_opt opts[] = {
        {"--database", &o.conninfo, NULL, 0, 0},
        {"--items", NULL, &o.items, 1, INT_MAX},
        {"--batch", NULL, &o.batch, 1, 100000},
    };
    bench_set_name("bench_floor");
    if (!bench_parse_opts(argc, argv, opts, ENG_ARRAY_LEN(opts)) || !o.conninfo)
        return usage();
    eng_mem_init();
    eng_log_init();
    eng_step_register_builtins();

    PGconn *admin = bench_connect(o.conninfo);
    char dbname[64];
    char *db = bench_db_create(admin, o.conninfo, "flowd_floor", dbname);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    json_t *out = json_object();
    json_object_set_new(out, "benchmark", json_string("floor"));
    json_object_set_new(out, "items", json_integer(o.items));
    json_object_set_new(out, "batch", json_integer(o.batch));
    json_object_set_new(out, "cores", json_integer(cores));
    for (size_t i = 0; i < ENG_ARRAY_LEN(cases); i++)
        json_object_set_new(out, cases[i].name, run_case(db, &cases[i], &o, cores));
    PGconn *c = bench_connect(db);
    bench_server_facts(c, out);
    PQfinish(c);

    char *s = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);
    printf("%s\n", s);
    free(s);
    json_decref(out);
    bench_db_drop(admin, dbname);
    PQfinish(admin);
    free(db);
    return 0;
}
