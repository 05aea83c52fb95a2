/* tests/support/th_pg.c: fresh databases in the fixture cluster for integration tests, and the
 * blocking query helpers tests read them with. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/clock.h"
#include "engine/mem.h"
#include "tests/support/th.h"

static const char *th_pgdir(void)
{
    const char *dir = getenv("FLOWD_TEST_PGDIR");
    if (!dir || !*dir) {
        fprintf(stderr, "FLOWD_TEST_PGDIR is not set: run through ctest (fixture pg)\n");
        exit(1);
    }
    return dir;
}

static PGconn *th_connect(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "cannot connect to %s: %s", conninfo, PQerrorMessage(c));
        exit(1);
    }
    return c;
}

char *th_pg_new_db(const char *prefix)
{
    static int counter;
    char name[96];
    snprintf(name, sizeof name, "%s_%d_%d_%ld", prefix, (int)getpid(), ++counter, (long)time(NULL));
    char *admin = eng_xasprintf("host=%s dbname=postgres user=postgres", th_pgdir());
    PGconn *c = th_connect(admin);
    free(admin);
    char *sql = eng_xasprintf("CREATE DATABASE \"%s\"", name);
    PGresult *r = PQexec(c, sql);
    free(sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "create database %s: %s", name, PQerrorMessage(c));
        exit(1);
    }
    PQclear(r);
    PQfinish(c);
    return eng_xasprintf("host=%s dbname=%s user=postgres", th_pgdir(), name);
}

void th_pg_drop_db(char *conninfo)
{
    PGconn *c = th_connect(conninfo);
    char *sql = eng_xasprintf("DROP DATABASE \"%s\"", PQdb(c)); /* th_pg_new_db's own name */
    PQfinish(c);
    char *admin = eng_xasprintf("host=%s dbname=postgres user=postgres", th_pgdir());
    c = th_connect(admin);
    free(admin);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "%s: %s", sql, PQerrorMessage(c));
        exit(1);
    }
    PQclear(r);
    PQfinish(c);
    free(sql);
    free(conninfo);
}

char *th_pg_value(const char *conninfo, const char *sql)
{
    PGconn *c = th_connect(conninfo);
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        fprintf(stderr, "query failed: %s\n%s", sql, PQerrorMessage(c));
        exit(1);
    }
    char *out = NULL;
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        out = eng_xstrdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(c);
    return out;
}

long th_pg_long(const char *conninfo, const char *sql)
{
    char *v = th_pg_value(conninfo, sql);
    long n = v ? strtol(v, NULL, 10) : 0;
    free(v);
    return n;
}

char *th_pg_valuef(const char *conninfo, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = NULL;
    if (vasprintf(&sql, fmt, ap) < 0)
        abort();
    va_end(ap);
    char *v = th_pg_value(conninfo, sql);
    free(sql);
    return v;
}

long th_pg_longf(const char *conninfo, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = NULL;
    if (vasprintf(&sql, fmt, ap) < 0)
        abort();
    va_end(ap);
    long v = th_pg_long(conninfo, sql);
    free(sql);
    return v;
}

th_num_s th_num(long long v)
{
    th_num_s n;
    snprintf(n.s, sizeof n.s, "%lld", v);
    return n;
}

PGconn *th_pgc_open(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot connect: %s", PQerrorMessage(c));
    return c;
}

char *th_pgc_str(PGconn *c, const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
        fail_msg("%s\n%s", sql, PQerrorMessage(c));
    char *v = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? eng_xstrdup(PQgetvalue(r, 0, 0)) : NULL;
    PQclear(r);
    return v;
}

long long th_pgc_ll(PGconn *c, const char *sql, int n, const char *const *params)
{
    char *v = th_pgc_str(c, sql, n, params);
    if (!v)
        fail_msg("no value: %s", sql);
    long long x = strtoll(v, NULL, 10);
    free(v);
    return x;
}

bool th_pgc_true(PGconn *c, const char *sql, int n, const char *const *params)
{
    char *v = th_pgc_str(c, sql, n, params);
    bool t = v && strcmp(v, "t") == 0;
    free(v);
    return t;
}

void th_pgc_expect(PGconn *c, const char *expected, const char *sql, int n,
                   const char *const *params)
{
    char *v = th_pgc_str(c, sql, n, params);
    if (!expected != !v || (v && strcmp(v, expected) != 0))
        fail_msg("%s\n  got      %s\n  expected %s", sql, v ? v : "NULL",
                 expected ? expected : "NULL");
    free(v);
}

bool th_pgc_wait(PGconn *c, const char *sql, int n, const char *const *params, double timeout_s)
{
    long long deadline = th_now_ms() + (long long)(timeout_s * 1000);
    for (;;) {
        if (th_pgc_true(c, sql, n, params))
            return true;
        if (th_now_ms() > deadline)
            return false;
        th_sleep_ms(10);
    }
}

long long th_pgc_enqueue(PGconn *c, long long tenant, long long workflow, const char *input_json)
{
    char *in = eng_xasprintf("[%s]", input_json);
    long long id =
        th_pgc_ll(c, "SELECT run_id FROM flowd_enqueue($1, $2, $3::jsonb, 0, NULL, NULL)",
                  TH_P(th_num(tenant).s, th_num(workflow).s, in));
    free(in);
    return id;
}

const char *th_flowd_bin(void)
{
    const char *b = getenv("FLOWD_BIN");
    return b && *b ? b : "./flowd";
}

const char *th_source_dir(void)
{
    const char *s = getenv("FLOWD_SOURCE_DIR");
    return s && *s ? s : FLOWD_SOURCE_DIR;
}

long long th_now_ms(void)
{
    return (long long)eng_clock_mono_ms();
}

void th_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}
