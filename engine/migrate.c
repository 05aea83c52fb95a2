/* engine/migrate.c: the migration runner (see migrate.h).
 *
 * One blocking connection for the whole run. The order of work matters for concurrent starters:
 * take the session advisory lock first, then create the bookkeeping tables and read what is
 * recorded, so a process that waited on the lock sees everything its predecessor applied. Every
 * recorded migration is verified (and every pending one checked for the breaking marker) before
 * any is applied, so a changed or refused file stops start-up with the schema untouched by this
 * run. The function files come last: they may use what the numbered files just created. */
#include "engine/migrate.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/db.h"
#include "engine/log.h"
#include "engine/mem.h"

/* One advisory lock key for every flowd process on a database ("flowdmig" in ASCII). */
#define MIGRATE_LOCK_SQL "SELECT pg_advisory_lock(x'666c6f77646d6967'::bigint)"
#define MIGRATE_UNLOCK_SQL "SELECT pg_advisory_unlock(x'666c6f77646d6967'::bigint)"

#define MIGRATE_TABLE_SQL                                                                          \
    "CREATE TABLE IF NOT EXISTS flowd_migrations ("                                                \
    " name text PRIMARY KEY,"                                                                      \
    " checksum text NOT NULL,"                                                                     \
    " applied_at timestamptz NOT NULL DEFAULT now())"

/* Created by the runner rather than a migration: the runner of the previous release did not know
 * it, and a database it left behind gets it on the first run of this one. */
#define SQL_FILES_TABLE_SQL                                                                        \
    "CREATE TABLE IF NOT EXISTS flowd_sql_files ("                                                 \
    " name text PRIMARY KEY,"                                                                      \
    " checksum text NOT NULL,"                                                                     \
    " set_number integer NOT NULL,"                                                                \
    " applied_at timestamptz NOT NULL DEFAULT now())"

#define BYTEA_OID 17 /* pg_type.oid of bytea; stable across versions */

/* CREATE TABLE IF NOT EXISTS and friends emit NOTICEs that would otherwise land on stderr. */
static void migrate_notice(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static int migrate_cmp(const void *a, const void *b)
{
    const eng_migration *const *ma = a;
    const eng_migration *const *mb = b;
    return strcmp((*ma)->name, (*mb)->name);
}

/* Fills err from a failed statement: the server's primary message (or libpq's when there is no
 * result), the SQLSTATE, and ENG_EDB_RETRY when running it again may succeed (the connection was
 * lost, or eng_db_sqlstate_rc says so: a deadlock with live workers, a full server), else ENG_EDB. */
static eng_rc migrate_db_error(eng_err *err, PGconn *conn, const PGresult *res, const char *what)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!msg)
        msg = PQerrorMessage(conn);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        n--;
    bool lost = PQstatus(conn) != CONNECTION_OK || !state ||
                eng_db_sqlstate_rc(state) == ENG_EDB_RETRY;
    eng_rc rc = eng_err_set(err, lost ? ENG_EDB_RETRY : ENG_EDB, "%s: %.*s", what, (int)n, msg);
    if (err && state)
        snprintf(err->sqlstate, sizeof err->sqlstate, "%s", state);
    return rc;
}

/* Runs sql; any result status other than a success is an error described with what. On success
 * *out (when non-NULL) receives the result, which the caller clears. */
static eng_rc migrate_exec(PGconn *conn, const char *sql, int nparams, const char *const *params,
                           const char *what, PGresult **out, eng_err *err)
{
    PGresult *res = nparams ? PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0)
                            : PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
        eng_rc rc = migrate_db_error(err, conn, res, what);
        PQclear(res);
        return rc;
    }
    if (out)
        *out = res;
    else
        PQclear(res);
    return ENG_OK;
}

/* sha256 hex of the file's exact bytes, computed by the server: the text goes over as a binary
 * bytea parameter, so no escaping or encoding conversion touches it. Caller frees *hex. */
static eng_rc migrate_checksum(PGconn *conn, const eng_migration *m, char **hex, eng_err *err)
{
    const Oid types[1] = {BYTEA_OID};
    const char *values[1] = {m->sql};
    const int lengths[1] = {(int)strlen(m->sql)};
    const int formats[1] = {1};
    PGresult *res = PQexecParams(conn, "SELECT encode(sha256($1), 'hex')", 1, types, values,
                                 lengths, formats, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        eng_rc rc = migrate_db_error(err, conn, res, "cannot compute migration checksum");
        PQclear(res);
        return rc;
    }
    *hex = eng_xstrdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return ENG_OK;
}

/* Applies one file and records it, all in one transaction. */
static eng_rc migrate_apply(PGconn *conn, const eng_migration *m, const char *checksum,
                            eng_err *err)
{
    char what[160];
    snprintf(what, sizeof what, "migration %s failed", m->name);
    eng_rc rc = migrate_exec(conn, "BEGIN", 0, NULL, what, NULL, err);
    if (rc == ENG_OK)
        rc = migrate_exec(conn, m->sql, 0, NULL, what, NULL, err);
    /* A file that ran COMMIT or ROLLBACK itself has escaped our transaction: what it committed
     * cannot be undone, so at least do not record it as applied. */
    if (rc == ENG_OK && PQtransactionStatus(conn) != PQTRANS_INTRANS)
        rc = eng_err_set(err, ENG_EDB,
                         "migration %s failed: it ended the transaction itself (remove its "
                         "BEGIN/COMMIT/ROLLBACK)",
                         m->name);
    if (rc == ENG_OK) {
        const char *params[2] = {m->name, checksum};
        rc = migrate_exec(conn, "INSERT INTO flowd_migrations (name, checksum) VALUES ($1, $2)", 2,
                          params, what, NULL, err);
    }
    if (rc == ENG_OK)
        rc = migrate_exec(conn, "COMMIT", 0, NULL, what, NULL, err);
    if (rc != ENG_OK && PQstatus(conn) == CONNECTION_OK)
        PQclear(PQexec(conn, "ROLLBACK"));
    return rc;
}

/* Whether m carries marker at the start of one of its lines. */
static bool migrate_marked(const eng_migration *m, const char *marker)
{
    size_t n = strlen(marker);
    for (const char *p = m->sql; p; p = strchr(p, '\n')) {
        if (*p == '\n')
            p++;
        if (strncmp(p, marker, n) == 0 &&
            (p[n] == '\0' || p[n] == '\n' || p[n] == '\r' || p[n] == ' '))
            return true;
    }
    return false;
}

/* Checks a list of files: names present and unique; with numbered, one file per number. Fills
 * order with pointers into files sorted by name. */
static eng_rc migrate_sort(const eng_migration *files, size_t count, bool numbered,
                           const eng_migration **order, eng_err *err)
{
    const char *what = numbered ? "migration" : "function file";
    for (size_t i = 0; i < count; i++) {
        if (!files[i].name || !files[i].sql)
            return eng_err_set(err, ENG_EINVAL, "%s %zu has no name or no sql", what, i);
        order[i] = &files[i];
    }
    qsort(order, count, sizeof *order, migrate_cmp);
    for (size_t i = 1; i < count; i++) {
        if (strcmp(order[i - 1]->name, order[i]->name) == 0)
            return eng_err_set(err, ENG_EINVAL, "%s %s is listed twice", what, order[i]->name);
        if (!numbered)
            continue;
        /* one number, one migration: work landed in parallel must be renumbered, or the order of
         * two files changing the same table would hang on their names */
        size_t n = strspn(order[i]->name, "0123456789");
        if (n > 0 && n == strspn(order[i - 1]->name, "0123456789") &&
            strncmp(order[i - 1]->name, order[i]->name, n) == 0)
            return eng_err_set(err, ENG_EINVAL, "migrations %s and %s share a number",
                               order[i - 1]->name, order[i]->name);
    }
    return ENG_OK;
}

/* The recorded checksum of name in res (name, checksum rows), or NULL when not recorded. */
static const char *migrate_recorded(const PGresult *res, const char *name)
{
    for (int i = 0; i < PQntuples(res); i++)
        if (strcmp(PQgetvalue(res, i, 0), name) == 0)
            return PQgetvalue(res, i, 1);
    return NULL;
}

/* Runs one function file inside the open transaction; what names it in errors. */
static eng_rc migrate_function_file(PGconn *conn, const eng_migration *f, const char *checksum,
                                    int set, eng_err *err)
{
    char what[160];
    snprintf(what, sizeof what, "function file %s failed", f->name);
    eng_rc rc = migrate_exec(conn, f->sql, 0, NULL, what, NULL, err);
    if (rc == ENG_OK && PQtransactionStatus(conn) != PQTRANS_INTRANS)
        return eng_err_set(err, ENG_EDB,
                           "function file %s failed: it ended the transaction itself (remove its "
                           "BEGIN/COMMIT/ROLLBACK)",
                           f->name);
    if (rc != ENG_OK)
        return rc;
    char setbuf[16];
    snprintf(setbuf, sizeof setbuf, "%d", set);
    const char *params[3] = {f->name, checksum, setbuf};
    return migrate_exec(conn,
                        "INSERT INTO flowd_sql_files (name, checksum, set_number) "
                        "VALUES ($1, $2, $3::integer) ON CONFLICT (name) DO UPDATE "
                        "SET checksum = EXCLUDED.checksum, set_number = EXCLUDED.set_number, "
                        "applied_at = now()",
                        3, params, what, NULL, err);
}

/* Applies the function files of o whose checksum differs from the recorded one, in one
 * transaction that records them, moves every row to o's set and forgets files o no longer has.
 * Nothing when the database's set is newer than o's. */
static eng_rc migrate_functions(PGconn *conn, const eng_migrate_opts *o, int *done, eng_err *err)
{
    const eng_migration **order = eng_xcalloc(o->nfuncs ? o->nfuncs : 1, sizeof *order);
    char **sums = eng_xcalloc(o->nfuncs ? o->nfuncs : 1, sizeof *sums);
    bool *changed = eng_xcalloc(o->nfuncs ? o->nfuncs : 1, sizeof *changed);
    PGresult *recorded = NULL;
    char *names = NULL;
    eng_rc rc = migrate_sort(o->funcs, o->nfuncs, false, order, err);
    if (rc == ENG_OK)
        rc = migrate_exec(conn, SQL_FILES_TABLE_SQL, 0, NULL, "cannot create flowd_sql_files", NULL,
                          err);
    if (rc == ENG_OK)
        rc = migrate_exec(conn, "SELECT name, checksum, set_number FROM flowd_sql_files", 0, NULL,
                          "cannot read flowd_sql_files", &recorded, err);
    if (rc != ENG_OK)
        goto out;

    int db_set = 0;
    for (int i = 0; i < PQntuples(recorded); i++) {
        int s = atoi(PQgetvalue(recorded, i, 2));
        if (s > db_set)
            db_set = s;
    }
    if (db_set > o->set) {
        log_warn("database functions left as they are: a newer release applied them",
                 LOG_I("database_set", db_set), LOG_I("binary_set", o->set));
        goto out;
    }
    /* Work to do: a changed file, a set to move to, or a recorded file this set does not have. */
    bool work = db_set != o->set && PQntuples(recorded) > 0;
    size_t len = 1;
    for (size_t i = 0; i < o->nfuncs; i++) {
        rc = migrate_checksum(conn, order[i], &sums[i], err);
        if (rc != ENG_OK)
            goto out;
        const char *had = migrate_recorded(recorded, order[i]->name);
        changed[i] = !had || strcmp(had, sums[i]) != 0;
        work = work || changed[i];
        len += strlen(order[i]->name) + 1;
    }
    for (int i = 0; i < PQntuples(recorded) && !work; i++) {
        bool known = false;
        for (size_t j = 0; j < o->nfuncs && !known; j++)
            known = strcmp(PQgetvalue(recorded, i, 0), order[j]->name) == 0;
        work = !known;
    }
    if (!work)
        goto out;

    /* file names never hold a '/': it separates them in one parameter */
    names = eng_xcalloc(len, 1);
    for (size_t i = 0; i < o->nfuncs; i++) {
        if (i)
            strcat(names, "/");
        strcat(names, order[i]->name);
    }
    char setbuf[16];
    snprintf(setbuf, sizeof setbuf, "%d", o->set);
    const char *set_param[1] = {setbuf};
    const char *names_param[1] = {names};
    int n = 0;
    rc = migrate_exec(conn, "BEGIN", 0, NULL, "cannot apply the function files", NULL, err);
    if (rc == ENG_OK)
        rc = migrate_exec(conn, "SET LOCAL check_function_bodies = off", 0, NULL,
                          "cannot apply the function files", NULL, err);
    for (size_t i = 0; i < o->nfuncs && rc == ENG_OK; i++) {
        if (!changed[i])
            continue;
        rc = migrate_function_file(conn, order[i], sums[i], o->set, err);
        n++;
    }
    if (rc == ENG_OK)
        rc = migrate_exec(conn, "UPDATE flowd_sql_files SET set_number = $1::integer", 1, set_param,
                          "cannot record the function files", NULL, err);
    if (rc == ENG_OK)
        rc = migrate_exec(conn,
                          "DELETE FROM flowd_sql_files "
                          "WHERE name <> ALL (string_to_array($1, '/'))",
                          1, names_param, "cannot record the function files", NULL, err);
    if (rc == ENG_OK)
        rc = migrate_exec(conn, "COMMIT", 0, NULL, "cannot apply the function files", NULL, err);
    if (rc != ENG_OK) {
        if (PQstatus(conn) == CONNECTION_OK)
            PQclear(PQexec(conn, "ROLLBACK"));
        goto out;
    }
    *done += n;
    for (size_t i = 0; i < o->nfuncs; i++)
        if (changed[i])
            log_info("function file applied", LOG_S("name", order[i]->name), LOG_I("set", o->set));

out:
    for (size_t i = 0; i < o->nfuncs; i++)
        free(sums[i]);
    free(sums);
    free(changed);
    free(names);
    free(order);
    PQclear(recorded);
    return rc;
}

eng_migrate_opts eng_migrate_embedded_opts(void)
{
    eng_migrate_opts o = {.set = ENG_SQL_SET};
    o.funcs = eng_sql_embedded(&o.nfuncs);
    return o;
}

eng_rc eng_migrate_up(const char *conninfo, const eng_migration *migs, size_t count,
                      const eng_migrate_opts *opts, int *applied, eng_err *err)
{
    eng_rc rc = ENG_OK;
    PGconn *conn = NULL;
    PGresult *recorded = NULL;
    char **sums = NULL;
    int done = 0;
    if (applied)
        *applied = 0;

    const eng_migration **order = eng_xcalloc(count ? count : 1, sizeof *order);
    rc = migrate_sort(migs, count, true, order, err);
    if (rc != ENG_OK)
        goto out;

    conn = PQconnectdb(conninfo);
    if (PQstatus(conn) != CONNECTION_OK) {
        rc = migrate_db_error(err, conn, NULL, "cannot connect to postgresql");
        goto out;
    }
    PQsetNoticeProcessor(conn, migrate_notice, NULL);
    rc = migrate_exec(conn, MIGRATE_LOCK_SQL, 0, NULL, "cannot take the migration lock", NULL, err);
    if (rc == ENG_OK)
        rc = migrate_exec(conn, MIGRATE_TABLE_SQL, 0, NULL, "cannot create flowd_migrations", NULL,
                          err);
    if (rc == ENG_OK)
        rc = migrate_exec(conn, "SELECT name, checksum FROM flowd_migrations", 0, NULL,
                          "cannot read flowd_migrations", &recorded, err);
    if (rc != ENG_OK)
        goto out;

    /* A database with nothing recorded has no workers of a previous release to break. */
    bool fresh = PQntuples(recorded) == 0;
    bool allow_breaking = opts && opts->allow_breaking;
    sums = eng_xcalloc(count ? count : 1, sizeof *sums);
    for (size_t i = 0; i < count; i++) {
        rc = migrate_checksum(conn, order[i], &sums[i], err);
        if (rc != ENG_OK)
            goto out;
        const char *had = migrate_recorded(recorded, order[i]->name);
        if (had && strcmp(had, sums[i]) != 0) {
            rc = eng_err_set(err, ENG_ECONFLICT,
                             "migration %s was changed after it was applied (checksum %.12s, "
                             "recorded %.12s)",
                             order[i]->name, sums[i], had);
            goto out;
        }
        if (!had && !fresh && !allow_breaking && migrate_marked(order[i], ENG_MIGRATION_BREAKING)) {
            rc = eng_err_set(err, ENG_ECONFLICT,
                             "migration %s is marked breaking: workers of the previous release "
                             "cannot run once it is applied; stop them, then run `flowd migrate "
                             "--allow-breaking`",
                             order[i]->name);
            goto out;
        }
    }
    /* pass 0: the migrations, but those marked to follow the function files; pass 1: those */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && opts && opts->funcs) {
            rc = migrate_functions(conn, opts, &done, err);
            if (rc != ENG_OK)
                goto out;
        }
        for (size_t i = 0; i < count; i++) {
            if (migrate_recorded(recorded, order[i]->name) ||
                migrate_marked(order[i], ENG_MIGRATION_AFTER_FUNCTIONS) != (pass == 1))
                continue;
            rc = migrate_apply(conn, order[i], sums[i], err);
            if (rc != ENG_OK)
                goto out;
            done++;
            log_info("migration applied", LOG_S("name", order[i]->name));
        }
    }
    /* Closing the session would release the lock too; unlocking says so explicitly. */
    rc = migrate_exec(conn, MIGRATE_UNLOCK_SQL, 0, NULL, "cannot release the migration lock", NULL,
                      err);

out:
    if (applied)
        *applied = done;
    if (sums)
        for (size_t i = 0; i < count; i++)
            free(sums[i]);
    free(sums);
    PQclear(recorded);
    PQfinish(conn);
    free(order);
    return rc;
}
