/* tests/support/th.h: helpers shared by the test binaries (prefix th_). */
#pragma once

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "engine/err.h"

/* Creates a fresh, empty database in the fixture cluster (FLOWD_TEST_PGDIR) and returns its
 * conninfo (caller frees). Aborts the test binary when the fixture is not running: in CI a missing
 * PostgreSQL fails rather than skips. */
char *th_pg_new_db(const char *prefix);
/* Drops the database of conninfo (made by th_pg_new_db) and frees conninfo: a test that builds
 * several whole schemas gives their space back before the fixture removes the cluster. */
void th_pg_drop_db(char *conninfo);

/* Runs one SQL statement on conninfo and returns the first column of the first row as a new
 * string (caller frees), or NULL when there is no row. Aborts on error. Blocking: tests only. */
char *th_pg_value(const char *conninfo, const char *sql);

/* th_pg_value parsed as a long. */
long th_pg_long(const char *conninfo, const char *sql);

/* th_pg_value and th_pg_long with the SQL built by printf (numbers and fixed words only: values
 * from outside go through the parameterized th_pgc_* helpers below). */
char *th_pg_valuef(const char *conninfo, const char *fmt, ...) ENG_PRINTF(2, 3);
long th_pg_longf(const char *conninfo, const char *fmt, ...) ENG_PRINTF(2, 3);

/* Parameterized queries on an open connection (th_pgc_*). A failed connection or statement fails
 * the current test (cmocka fail_msg) with the SQL and the server's message.
 * TH_P("a", "b") expands to the parameter count and array: th_pgc_str(c, sql, TH_P(x, y)). */
// clang-format off
#define TH_P(...) \
    (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(const char *)), \
        (const char *const[]){__VA_ARGS__}
// clang-format on

/* A number as text for a parameter: th_num(id).s lives until the end of the full expression. */
typedef struct th_num_s {
    char s[24];
} th_num_s;
th_num_s th_num(long long v);

PGconn *th_pgc_open(const char *conninfo);
/* First column of the first row (new string; NULL when there is no row or it is NULL). */
char *th_pgc_str(PGconn *c, const char *sql, int n, const char *const *params);
/* th_pgc_str as a long long; no value fails the test. */
long long th_pgc_ll(PGconn *c, const char *sql, int n, const char *const *params);
/* Whether the first value is boolean true. */
bool th_pgc_true(PGconn *c, const char *sql, int n, const char *const *params);
/* Asserts that the first value is the text expected (NULL: SQL NULL or no row). */
void th_pgc_expect(PGconn *c, const char *expected, const char *sql, int n,
                   const char *const *params);
/* Polls sql (a boolean) every 10 ms until true; false after timeout_s. */
bool th_pgc_wait(PGconn *c, const char *sql, int n, const char *const *params, double timeout_s);
/* Enqueues one run of workflow with input_json (flowd_enqueue); returns its id. */
long long th_pgc_enqueue(PGconn *c, long long tenant, long long workflow, const char *input_json);

/* Path of the built flowd binary (FLOWD_BIN) and of the source tree (FLOWD_SOURCE_DIR). */
const char *th_flowd_bin(void);
const char *th_source_dir(void);

/* Milliseconds on a monotonic clock. */
long long th_now_ms(void);

void th_sleep_ms(long ms);

/* Asserts that a one-step workflow of kind with this (JSON text) input is refused at field. */
void th_expect_step_invalid(const char *kind, const char *input, const char *field);
