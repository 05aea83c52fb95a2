/* tests/support/th_pg.c: fresh databases in the fixture cluster for integration tests. */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
