/* engine/migrate.h: forward-only schema migrations, applied at start-up.
 *
 * A migration is a named SQL text ("0001_core.sql"). eng_migrate_up applies the ones a database has
 * not seen yet, in name order, each in its own transaction, and records them with a checksum in
 * flowd_migrations(name, checksum, applied_at). A session advisory lock serialises concurrent
 * starters, so any number of processes may call it at once and each file is applied exactly once.
 *
 * Migration files must not contain transaction control (BEGIN/COMMIT) nor statements that refuse to
 * run inside a transaction block (CREATE INDEX CONCURRENTLY, VACUUM): the runner wraps each file in
 * one transaction so that a failing file leaves nothing behind.
 *
 * Blocking libpq: meant for start-up and the `flowd migrate` subcommand, never for a worker loop. */
#pragma once

#include <stddef.h>

#include "engine/err.h"

typedef struct eng_migration {
    const char *name; /* file name, e.g. "0001_core.sql"; order of application is strcmp order */
    const char *sql;  /* the file's bytes, NUL-terminated */
} eng_migration;

/* The migrations compiled into the binary from the .sql files in migrations/ (generated at build time by
 * cmake/embed_migrations.cmake), sorted by name; *count is set. Static storage: never free. */
const eng_migration *eng_migrations_embedded(size_t *count);

/* Applies, in name order, every migration in migs[0..count) not yet recorded in the database at
 * conninfo. Before applying anything it checks every already recorded file: one whose checksum (the
 * sha256 hex of its bytes, computed by PostgreSQL) differs stops with ENG_ECONFLICT and a message
 * naming the file. A failing file rolls back its transaction and returns ENG_EDB (or
 * ENG_EDB_RETRY when trying again may succeed: a lost connection, or a SQLSTATE that
 * eng_db_sqlstate_rc calls retryable, like a deadlock) naming the file, with err->sqlstate set;
 * files applied before it stay applied. Duplicate names give ENG_EINVAL. *applied (may be NULL) gets the number
 * of files newly applied by this call. migs is borrowed. */
ENG_MUST_CHECK eng_rc eng_migrate_up(const char *conninfo, const eng_migration *migs, size_t count,
                                     int *applied, eng_err *err);
