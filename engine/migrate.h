/* engine/migrate.h: the database schema, brought up to date at start-up.
 *
 * Two kinds of SQL files (migrations/README.md and sql/README.md say what goes where):
 *  - numbered migrations ("0001_core.sql", migrations/): tables, indexes, types and plain-SQL data
 *    changes. Forward-only: eng_migrate_up applies the ones a database has not seen yet, in name
 *    order, each in its own transaction, and records them with a checksum in
 *    flowd_migrations(name, checksum, applied_at); a recorded file may never change.
 *  - function files ("work.sql", sql/): CREATE OR REPLACE FUNCTION only, edited in place. After the
 *    numbered files, every function file whose checksum differs from the one recorded in
 *    flowd_sql_files(name, checksum, set_number, applied_at) is applied, all of them in one
 *    transaction that also records them, with check_function_bodies off (as pg_dump restores:
 *    a body may name a function of a file applied after it).
 * A session advisory lock serialises concurrent starters, so any number of processes may call it at
 * once and each change is applied exactly once.
 *
 * Rolling upgrades: the function files carry a set number (ENG_SQL_SET for the embedded ones). A
 * database whose functions came from a higher set keeps them: an older binary never puts its older
 * functions back. A numbered migration whose text has a line "-- flowd: breaking" cannot run under
 * live workers of the previous release; it is refused (ENG_ECONFLICT, naming it) unless allowed
 * (`flowd migrate --allow-breaking`) or the database is new (no migration recorded yet).
 *
 * Files must not contain transaction control (BEGIN/COMMIT) nor statements that refuse to run
 * inside a transaction block (CREATE INDEX CONCURRENTLY, VACUUM): the runner wraps them in a
 * transaction so that a failing file leaves nothing behind.
 *
 * Blocking libpq: meant for start-up and the `flowd migrate` subcommand, never for a worker loop. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "engine/err.h"

typedef struct eng_migration {
    const char *name; /* file name, e.g. "0001_core.sql"; order of application is strcmp order */
    const char *sql;  /* the file's bytes, NUL-terminated */
} eng_migration;

/* The function-set number of the embedded sql/ files: the project version (CMakeLists.txt) as
 * major * 1000000 + minor * 1000 + patch, so every release raises it (sql/README.md). A binary
 * with a lower number leaves the functions of a higher one alone. */
#define ENG_SQL_SET FLOWD_SQL_SET

/* The marker line of a numbered migration that live workers of the previous release cannot
 * survive. */
#define ENG_MIGRATION_BREAKING "-- flowd: breaking"
/* A migration carrying this line is applied after the function files (all other pending migrations
 * come before them): one whose DDL names a function of sql/, such as CREATE TRIGGER ... EXECUTE
 * FUNCTION f(), needs f to exist, and a new f only exists once the function files ran. */
#define ENG_MIGRATION_AFTER_FUNCTIONS "-- flowd: after-functions"

/* The numbered migrations compiled into the binary from migrations/[0-9]*.sql (generated at build
 * time by cmake/embed_migrations.cmake), sorted by name; *count is set. Static storage: never free. */
const eng_migration *eng_migrations_embedded(size_t *count);
/* The function files compiled into the binary from the .sql files of sql/, likewise. */
const eng_migration *eng_sql_embedded(size_t *count);

/* What eng_migrate_up applies besides the numbered migrations. */
typedef struct eng_migrate_opts {
    const eng_migration *funcs; /* function files (borrowed); NULL with nfuncs 0: none, as the
                                 * runner of the previous release did */
    size_t nfuncs;
    int set;             /* their function-set number (ENG_SQL_SET for the embedded ones) */
    bool allow_breaking; /* apply migrations marked ENG_MIGRATION_BREAKING on a used database */
} eng_migrate_opts;

/* The embedded function files with ENG_SQL_SET; allow_breaking false. */
eng_migrate_opts eng_migrate_embedded_opts(void);

/* Applies, in name order, every migration in migs[0..count) not yet recorded in the database at
 * conninfo, then the changed function files of opts (NULL: none). Before applying anything it
 * checks every already recorded migration: one whose checksum (the sha256 hex of its bytes,
 * computed by PostgreSQL) differs stops with ENG_ECONFLICT and a message naming the file, and so
 * does a pending breaking migration that is not allowed. A failing file rolls back its transaction
 * and returns ENG_EDB (or ENG_EDB_RETRY when trying again may succeed: a lost connection, or a
 * SQLSTATE that eng_db_sqlstate_rc calls retryable, like a deadlock) naming the file, with
 * err->sqlstate set; migrations applied before it stay applied. Duplicate names give ENG_EINVAL. *applied (may
 * be NULL) gets the number of migrations and function files newly applied by this call. migs is
 * borrowed. */
ENG_MUST_CHECK eng_rc eng_migrate_up(const char *conninfo, const eng_migration *migs, size_t count,
                                     const eng_migrate_opts *opts, int *applied, eng_err *err);
