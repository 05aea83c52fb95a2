/* tests/support/th_engine.h: helpers for tests that drive the queue engine end to end (prefix th_).
 *
 * Everything here is blocking and aborts the test binary on an unexpected error, so tests read as
 * a list of steps and assertions. Databases come from the fixture cluster (th_pg_new_db). */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

/* A fresh database with the embedded migrations applied, the default tenant created and the clock
 * in test mode (flowd_clock_start(true), as `flowd serve` with FLOWD_TEST_CLOCK=1). Returns its
 * conninfo (caller frees); *tenant (may be NULL) gets the default tenant's id. */
char *th_engine_db(const char *prefix, long long *tenant);
/* The same in another cluster: the one whose unix socket directory is pgdir (a private cluster a
 * test starts with tests/support/pg_fixture.sh, e.g. to restart it). */
char *th_engine_db_at(const char *pgdir, const char *prefix, long long *tenant);

/* A private PostgreSQL cluster in a fresh /tmp directory (tests/support/pg_fixture.sh), for tests
 * that stop, start or restart the server, which the shared fixture cluster must never see. */
typedef struct th_cluster {
    char dir[64]; /* its data and unix socket directory: pass it to th_engine_db_at */
} th_cluster;
/* Starts one; NULL (after a message on stderr) when it cannot. */
th_cluster *th_cluster_start(void);
/* A streaming standby of primary in a fresh /tmp directory (pg_basebackup -R over primary's unix
 * socket, started with the fixture's server options); NULL (after a message) when it cannot. */
th_cluster *th_cluster_standby(const th_cluster *primary);
/* pg_ctl ACTION ("stop", "start", "restart"; fast shutdown, waits; "promote" for a standby) with
 * the server options the fixture starts it with. Returns pg_ctl's exit status. */
int th_cluster_ctl(const th_cluster *c, const char *action);
/* Stops and removes it, frees c; returns the fixture's exit status. */
int th_cluster_stop(th_cluster *c);
/* The same as cmocka setup and teardown: *state holds the th_cluster. */
int th_cluster_setup(void **state);
int th_cluster_teardown(void **state);

/* Compiles the definition def_json (wf_def_compile) and stores it; returns the workflow id. Step
 * kinds are the caller's business: register them (eng_step_register_builtins and the test's own)
 * once in main, before any worker starts, since the registry is not thread-safe. */
long long th_engine_register(const char *conninfo, long long tenant, const char *def_json);

/* Enqueues n runs of workflow, each with the input input_json (NULL: {}), at most batch inputs per
 * flowd_enqueue call (batch <= 0: all in one). Returns the id of the last run created. */
long long th_engine_enqueue(const char *conninfo, long long tenant, long long workflow, int n,
                            const char *input_json, int batch);

/* Enqueues n runs of workflow whose inputs differ: run k gets {"n": k, "phone": "+1555" k as 7
 * digits}, so each run's send has its own recipient (100 runs per flowd_enqueue call). */
void th_engine_enqueue_phones(const char *conninfo, long long tenant, long long workflow, int n);

/* Polls sql (one row, one boolean column) every 20 ms on one connection until it is true; returns
 * false when timeout_s passes first. */
bool th_engine_wait(const char *conninfo, const char *sql, double timeout_s);

/* N in-process workers (engine/worker.h) named "<owner_prefix>-<i>"; worker 0 also reaps.
 * batch, max_inflight and lease_ms of 0 take the engine's defaults. */
typedef struct th_workers th_workers;
th_workers *th_workers_start(const char *conninfo, int n, const char *owner_prefix, int batch,
                             int max_inflight, int lease_ms);
/* Stops every worker (grace 5 s) and frees the set. NULL-safe. */
void th_workers_stop(th_workers *ws);

/* Starts `flowd --database CONNINFO serve --role worker --workers N [--lease-ms L]` with
 * FLOWD_TEST_CLOCK=1 as a child (stdout
 * discarded, stderr inherited); lease_ms 0 leaves the default. Returns its pid. */
pid_t th_serve_spawn(const char *conninfo, int workers, int lease_ms);
/* Sends sig to the child and reaps it; returns the waitpid status. */
int th_serve_kill(pid_t pid, int sig);

/* Runs the flowd binary with argv (argv[0] is ignored, NULL-terminated) in an environment that is
 * this process's plus env (NULL-terminated "NAME=VALUE" entries, which replace same-named ones;
 * "NAME" alone removes NAME). Captures stdout into *out and stderr into *err (either may be NULL;
 * caller frees). Returns the exit status (128+signal when killed). */
int th_flowd_run(const char *const *argv, const char *const *env, char **out, char **err);
