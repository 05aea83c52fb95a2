/* bench/bench_util.h: what the benchmark programs share (prefix bench_): blocking libpq helpers
 * that exit the program on any error, a table-driven option parser, and a throw-away database
 * with the embedded migrations applied. Not part of flowd_core: benchmarks only. */
#pragma once

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/resource.h>

/* The program's name for messages ("bench_queue"); set once at the start of main. */
void bench_set_name(const char *name);

/* Prints "<name>: what: <c's error>" to stderr and exits 1. c may be NULL. */
_Noreturn void bench_die(const char *what, PGconn *c);

PGconn *bench_connect(const char *conninfo);
/* PQexecParams; any result other than tuples or command-ok is fatal. Caller PQclears. */
PGresult *bench_exec(PGconn *c, const char *sql, int n, const char *const *params);
/* First column of the first row as a new string ("" when there is none or it is NULL). */
char *bench_value(PGconn *c, const char *sql);
double bench_value_f(PGconn *c, const char *sql);

/* User + system CPU seconds of a getrusage() figure. */
double bench_rusage_cpu_s(const struct rusage *ru);

/* CPU time (user + system, seconds) the server process with this pid has used, read from /proc:
 * -1 when it is not readable (a server on another machine). */
double bench_pid_cpu_s(long pid);
/* The CPU time of every server process connected to c's database but c's own, summed: what the
 * engine's connections have cost PostgreSQL so far. -1 when the server is not on this machine. */
double bench_db_cpu_s(PGconn *c);

/* Adds the server's version and the settings that decide commit costs (fsync, synchronous_commit,
 * shared_buffers) to out, as the benchmarks report them. */
void bench_server_facts(PGconn *c, json_t *out);

/* One "--name VALUE" option: a string (str) or an integer (num) in [min, max] (atoi). */
typedef struct bench_opt {
    const char *name;
    const char **str;
    int *num;
    int min, max;
} bench_opt;
/* Parses argv[1..] as pairs against opts; false on an unknown option, a missing value or an
 * integer out of range (the caller prints its usage). */
bool bench_parse_opts(int argc, char **argv, const bench_opt *opts, size_t n);

/* Creates the database "<prefix>_<pid>_<time>" next to base_conninfo's (through admin), applies
 * the embedded migrations, and returns its conninfo (caller frees); the name goes to dbname. */
char *bench_db_create(PGconn *admin, const char *base_conninfo, const char *prefix,
                      char dbname[64]);
void bench_db_drop(PGconn *admin, const char *dbname);

/* Bootstraps the default tenant (*tenant gets its id), compiles the definition def_json and
 * registers it under name; returns the workflow id. */
long long bench_register(PGconn *c, const char *name, const char *def_json, long long *tenant);

/* Compiles def_json and registers it under name for tenant; returns the workflow id. */
long long bench_register_for(PGconn *c, long long tenant, const char *name, const char *def_json);

/* Enqueues runs of workflow with inputs {"n": 0} .. {"n": runs - 1}, batch inputs per
 * flowd_enqueue call. */
void bench_enqueue(PGconn *c, long long tenant, long long workflow, int runs, int batch);
