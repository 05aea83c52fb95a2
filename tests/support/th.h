/* tests/support/th.h: helpers shared by the test binaries (prefix th_). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Creates a fresh, empty database in the fixture cluster (FLOWD_TEST_PGDIR) and returns its
 * conninfo (caller frees). Aborts the test binary when the fixture is not running: in CI a missing
 * PostgreSQL fails rather than skips. */
char *th_pg_new_db(const char *prefix);

/* Runs one SQL statement on conninfo and returns the first column of the first row as a new
 * string (caller frees), or NULL when there is no row. Aborts on error. Blocking: tests only. */
char *th_pg_value(const char *conninfo, const char *sql);

/* th_pg_value parsed as a long. */
long th_pg_long(const char *conninfo, const char *sql);

/* Path of the built flowd binary (FLOWD_BIN) and of the source tree (FLOWD_SOURCE_DIR). */
const char *th_flowd_bin(void);
const char *th_source_dir(void);

/* Milliseconds on a monotonic clock. */
long long th_now_ms(void);
