/* tests/integration/test_migrate.c: the migration runner against a real PostgreSQL.
 *
 * Each test uses its own fresh database and its own SQL, so the tests do not depend on the
 * project's migrations (except test_embedded, which checks the build embeds exactly the numbered
 * files of migrations/ and the files of sql/). */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/mem.h"
#include "engine/migrate.h"
#include "tests/support/th.h"

#define MIG1_SQL                                                                                   \
    "CREATE TABLE mt_log (id serial PRIMARY KEY, note text NOT NULL);\n"                           \
    "INSERT INTO mt_log (note) VALUES ('one');"
/* sha256sum of MIG1_SQL's bytes, computed outside PostgreSQL */
#define MIG1_SHA256 "4856ce9ee32c8dad6e9cf8da2075224c2c75758f38ed2444bbd2977a9708117f"

/* Deliberately out of order: 0002 needs 0001's table, so a runner that did not sort would fail.
 * 0002 carries bytes that text-mode escaping or encoding conversion would alter. */
static const eng_migration three[] = {
    {"0002_more.sql", "INSERT INTO mt_log (note) VALUES ('two \\ caf\xc3\xa9');"},
    {"0001_init.sql", MIG1_SQL},
    {"0003_last.sql", "ALTER TABLE mt_log ADD COLUMN extra int;"
                      "INSERT INTO mt_log (note, extra) VALUES ('three', 3);"},
};

static void test_apply_then_nothing(void **state)
{
    (void)state;
    char *db = th_pg_new_db("mig_apply");
    eng_err err = {0};
    int applied = -1;
    assert_int_equal(eng_migrate_up(db, three, 3, NULL, &applied, &err), ENG_OK);
    assert_int_equal(applied, 3);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM mt_log"), 3);
    char *order = th_pg_value(db, "SELECT string_agg(note, ',' ORDER BY id) FROM mt_log");
    assert_string_equal(order, "one,two \\ caf\xc3\xa9,three");
    free(order);
    char *sum = th_pg_value(db, "SELECT checksum FROM flowd_migrations WHERE name = '0001_init.sql'");
    assert_string_equal(sum, MIG1_SHA256);
    free(sum);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM flowd_migrations WHERE applied_at IS NOT NULL"),
                     3);

    applied = -1;
    assert_int_equal(eng_migrate_up(db, three, 3, NULL, &applied, &err), ENG_OK);
    assert_int_equal(applied, 0);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM mt_log"), 3);

    /* A later binary with one more file applies only that one. */
    const eng_migration four[] = {three[0], three[1], three[2],
                                  {"0004_four.sql", "INSERT INTO mt_log (note) VALUES ('four');"}};
    assert_int_equal(eng_migrate_up(db, four, 4, NULL, &applied, NULL), ENG_OK);
    assert_int_equal(applied, 1);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM mt_log"), 4);
    free(db);
}

static void test_concurrent_starters(void **state)
{
    (void)state;
    enum { NPROC = 10 };
    char *db = th_pg_new_db("mig_conc");
    int gate[2];
    assert_int_equal(pipe(gate), 0);
    pid_t pids[NPROC];
    for (int i = 0; i < NPROC; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            close(gate[1]);
            char c;
            /* Blocks until the parent closes the write end: all ten start together. */
            while (read(gate[0], &c, 1) > 0) {
            }
            int applied = 0;
            eng_err err = {0};
            eng_rc rc = eng_migrate_up(db, three, 3, NULL, &applied, &err);
            if (rc != ENG_OK)
                fprintf(stderr, "child %d: %s\n", i, err.msg);
            _exit(rc == ENG_OK ? applied : 100 + (int)rc);
        }
    }
    close(gate[0]);
    close(gate[1]);
    int total = 0;
    for (int i = 0; i < NPROC; i++) {
        int st = 0;
        assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
        assert_true(WIFEXITED(st));
        assert_true(WEXITSTATUS(st) <= 3);
        total += WEXITSTATUS(st);
    }
    assert_int_equal(total, 3);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM mt_log"), 3);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM flowd_migrations"), 3);
    free(db);
}

static void test_changed_file_refused(void **state)
{
    (void)state;
    char *db = th_pg_new_db("mig_changed");
    eng_err err = {0};
    assert_int_equal(eng_migrate_up(db, three, 2, NULL, NULL, &err), ENG_OK); /* 0001 and 0002 */
    const eng_migration changed[] = {
        {"0001_init.sql", MIG1_SQL "\n-- edited"},
        three[0],
        three[2],
    };
    int applied = -1;
    assert_int_equal(eng_migrate_up(db, changed, 3, NULL, &applied, &err), ENG_ECONFLICT);
    assert_int_equal(err.rc, ENG_ECONFLICT);
    assert_non_null(strstr(err.msg, "0001_init.sql"));
    assert_non_null(strstr(err.msg, "changed"));
    assert_int_equal(applied, 0);
    /* Verification precedes application: the new 0003 was not applied either. */
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM flowd_migrations"), 2);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM information_schema.columns "
                                    "WHERE table_name = 'mt_log' AND column_name = 'extra'"),
                     0);
    free(db);
}

static void test_failing_file_rolls_back(void **state)
{
    (void)state;
    char *db = th_pg_new_db("mig_fail");
    const eng_migration bad[] = {
        three[1],
        {"0002_bad.sql", "CREATE TABLE mt_half (id int);\n"
                         "INSERT INTO mt_log (note) VALUES ('half');\n"
                         "SELECT 1 / 0;"},
        {"0003_after.sql", "INSERT INTO mt_log (note) VALUES ('after');"},
    };
    eng_err err = {0};
    int applied = -1;
    assert_int_equal(eng_migrate_up(db, bad, 3, NULL, &applied, &err), ENG_EDB);
    assert_int_equal(applied, 1);
    assert_non_null(strstr(err.msg, "0002_bad.sql"));
    assert_non_null(strstr(err.msg, "division by zero"));
    assert_string_equal(err.sqlstate, "22012");
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM mt_log"), 1);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM pg_class WHERE relname = 'mt_half'"), 0);
    char *names = th_pg_value(db, "SELECT string_agg(name, ',' ORDER BY name) FROM flowd_migrations");
    assert_string_equal(names, "0001_init.sql");
    free(names);

    /* Once fixed, the run continues where it stopped. */
    const eng_migration fixed[] = {bad[0], {"0002_bad.sql", "SELECT 1;"}, bad[2]};
    assert_int_equal(eng_migrate_up(db, fixed, 3, NULL, &applied, &err), ENG_OK);
    assert_int_equal(applied, 2);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM mt_log"), 2);
    free(db);
}

/* mt_f in a.sql calls mt_g of b.sql, applied after it: only a run with check_function_bodies off
 * creates a SQL function whose body names a function that does not exist yet. */
#define FUNC_A "CREATE OR REPLACE FUNCTION mt_f() RETURNS int LANGUAGE sql AS $$ SELECT mt_g() $$;"
#define FUNC_B(n)                                                                                  \
    "CREATE OR REPLACE FUNCTION mt_g() RETURNS int LANGUAGE sql AS $$ SELECT " n " $$;"

static void test_function_files(void **state)
{
    (void)state;
    char *db = th_pg_new_db("mig_funcs");
    const eng_migration v1[] = {{"b.sql", FUNC_B("1")}, {"a.sql", FUNC_A}};
    eng_migrate_opts opts = {.funcs = v1, .nfuncs = 2, .set = 1};
    eng_err err = {0};
    int applied = -1;
    assert_int_equal(eng_migrate_up(db, three, 3, &opts, &applied, &err), ENG_OK);
    assert_int_equal(applied, 5);
    assert_int_equal(th_pg_long(db, "SELECT mt_f()"), 1);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM flowd_sql_files WHERE set_number = 1"),
                     2);

    /* unchanged: nothing applied */
    assert_int_equal(eng_migrate_up(db, three, 3, &opts, &applied, &err), ENG_OK);
    assert_int_equal(applied, 0);

    /* one file edited in place: that file alone is applied again */
    char *a_at = th_pg_value(db, "SELECT applied_at FROM flowd_sql_files WHERE name = 'a.sql'");
    const eng_migration v2[] = {{"a.sql", FUNC_A}, {"b.sql", FUNC_B("2")}};
    opts.funcs = v2;
    assert_int_equal(eng_migrate_up(db, three, 3, &opts, &applied, &err), ENG_OK);
    assert_int_equal(applied, 1);
    assert_int_equal(th_pg_long(db, "SELECT mt_f()"), 2);
    char *a_now = th_pg_value(db, "SELECT applied_at FROM flowd_sql_files WHERE name = 'a.sql'");
    assert_string_equal(a_now, a_at);
    free(a_now);
    free(a_at);

    /* a failing file leaves every file of the run as it was, recorded checksums included */
    const eng_migration bad[] = {
        {"a.sql", FUNC_A}, {"b.sql", FUNC_B("3")}, {"c.sql", "SELECT 1/0;"}};
    opts.funcs = bad;
    opts.nfuncs = 3;
    assert_int_equal(eng_migrate_up(db, three, 3, &opts, &applied, &err), ENG_EDB);
    assert_non_null(strstr(err.msg, "c.sql"));
    assert_int_equal(th_pg_long(db, "SELECT mt_f()"), 2);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM flowd_sql_files"), 2);

    /* an older binary (a lower set) leaves the newer functions alone */
    const eng_migration old[] = {{"a.sql", FUNC_A}, {"b.sql", FUNC_B("0")}};
    opts = (eng_migrate_opts){.funcs = old, .nfuncs = 2, .set = 0};
    assert_int_equal(eng_migrate_up(db, three, 3, &opts, &applied, &err), ENG_OK);
    assert_int_equal(applied, 0);
    assert_int_equal(th_pg_long(db, "SELECT mt_f()"), 2);

    /* a newer set takes every row, and forgets the files it no longer has */
    const eng_migration v3[] = {{"b.sql", FUNC_B("2")}};
    opts = (eng_migrate_opts){.funcs = v3, .nfuncs = 1, .set = 2};
    assert_int_equal(eng_migrate_up(db, three, 3, &opts, &applied, &err), ENG_OK);
    assert_int_equal(applied, 0);
    char *rows =
        th_pg_value(db, "SELECT string_agg(name || ':' || set_number, ',') FROM flowd_sql_files");
    assert_string_equal(rows, "b.sql:2");
    free(rows);
    free(db);
}

/* A trigger on a function of the function files: its migration, marked, runs after them (on a
 * fresh database and on one that already has the earlier migrations), the later unmarked ones
 * before them. */
static void test_after_functions(void **state)
{
    (void)state;
    static const eng_migration migs[] = {
        {"0001_init.sql", MIG1_SQL},
        {"0002_trigger.sql", ENG_MIGRATION_AFTER_FUNCTIONS "\n"
                             "CREATE TRIGGER mt_stamp BEFORE INSERT ON mt_log FOR EACH ROW "
                             "EXECUTE FUNCTION mt_stamp();"},
        {"0003_last.sql", "ALTER TABLE mt_log ADD COLUMN extra int;"},
    };
    static const eng_migration funcs[] = {
        {"t.sql", "CREATE OR REPLACE FUNCTION mt_stamp() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$ BEGIN NEW.extra := 7; RETURN NEW; END $$;"}};
    eng_migrate_opts opts = {.funcs = funcs, .nfuncs = 1, .set = 1};
    eng_err err = {0};
    int applied = -1;
    char *db = th_pg_new_db("mig_after");
    assert_int_equal(eng_migrate_up(db, migs, 3, &opts, &applied, &err), ENG_OK);
    assert_int_equal(applied, 4);
    free(th_pg_value(db, "INSERT INTO mt_log (note) VALUES ('x') RETURNING id"));
    assert_int_equal(th_pg_long(db, "SELECT extra FROM mt_log WHERE note = 'x'"), 7);
    free(db);
    db = th_pg_new_db("mig_after_upgrade");
    assert_int_equal(eng_migrate_up(db, migs, 1, NULL, &applied, &err), ENG_OK);
    assert_int_equal(eng_migrate_up(db, migs, 3, &opts, &applied, &err), ENG_OK);
    assert_int_equal(applied, 3);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM pg_trigger WHERE tgname = 'mt_stamp'"), 1);
    free(db);
}

static void test_breaking_refused(void **state)
{
    (void)state;
    const eng_migration marked[] = {
        three[1],
        {"0002_drop.sql", "-- Drops what the previous release reads.\n" ENG_MIGRATION_BREAKING
                          "\nALTER TABLE mt_log DROP COLUMN note;"},
        {"0003_after.sql", "CREATE TABLE mt_after (id int);"},
    };
    /* a new database has no workers of the previous release */
    char *fresh = th_pg_new_db("mig_break_new");
    eng_err err = {0};
    int applied = -1;
    assert_int_equal(eng_migrate_up(fresh, marked, 3, NULL, &applied, &err), ENG_OK);
    assert_int_equal(applied, 3);
    free(fresh);

    char *db = th_pg_new_db("mig_break");
    assert_int_equal(eng_migrate_up(db, marked, 1, NULL, NULL, &err), ENG_OK);
    assert_int_equal(eng_migrate_up(db, marked, 3, NULL, &applied, &err), ENG_ECONFLICT);
    assert_non_null(strstr(err.msg, "0002_drop.sql"));
    assert_non_null(strstr(err.msg, "--allow-breaking"));
    assert_int_equal(applied, 0);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM flowd_migrations"), 1);
    /* the marker counts only as a line of its own */
    const eng_migration quoted[] = {marked[0],
                                    {"0002_note.sql", "SELECT '" ENG_MIGRATION_BREAKING "';"}};
    assert_int_equal(eng_migrate_up(db, quoted, 2, NULL, &applied, &err), ENG_OK);
    assert_int_equal(applied, 1);

    const eng_migration later[] = {marked[0], quoted[1], {"0003_drop.sql", marked[1].sql}};
    eng_migrate_opts allow = {.allow_breaking = true};
    assert_int_equal(eng_migrate_up(db, later, 3, &allow, &applied, &err), ENG_OK);
    assert_int_equal(applied, 1);
    free(db);
}

static void test_bad_lists_and_connection(void **state)
{
    (void)state;
    char *db = th_pg_new_db("mig_bad");
    const eng_migration dup[] = {three[1], three[1]};
    eng_err err = {0};
    assert_int_equal(eng_migrate_up(db, dup, 2, NULL, NULL, &err), ENG_EINVAL);
    assert_non_null(strstr(err.msg, "0001_init.sql"));
    const eng_migration same_number[] = {three[1], {"0001_other.sql", "SELECT 1;"}};
    assert_int_equal(eng_migrate_up(db, same_number, 2, NULL, NULL, &err), ENG_EINVAL);
    assert_non_null(strstr(err.msg, "share a number"));
    const eng_migration ends_txn[] = {{"0001_commit.sql", "CREATE TABLE mt_c (id int); COMMIT;"}};
    assert_int_equal(eng_migrate_up(db, ends_txn, 1, NULL, NULL, &err), ENG_EDB);
    assert_non_null(strstr(err.msg, "0001_commit.sql"));
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM flowd_migrations"), 0);
    /* a file rolled back by a deadlock (with live workers, say) is worth another try */
    const eng_migration deadlock[] = {
        {"0001_deadlock.sql",
         "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$;"}};
    assert_int_equal(eng_migrate_up(db, deadlock, 1, NULL, NULL, &err), ENG_EDB_RETRY);
    assert_string_equal(err.sqlstate, "40P01");
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM flowd_migrations"), 0);
    assert_int_equal(eng_migrate_up(db, NULL, 0, NULL, NULL, &err), ENG_OK);
    free(db);

    char *nowhere = eng_xasprintf("host=%s port=1 dbname=nope user=postgres connect_timeout=2",
                                  getenv("FLOWD_TEST_PGDIR"));
    assert_int_equal(eng_migrate_up(nowhere, three, 3, NULL, NULL, &err), ENG_EDB_RETRY);
    assert_non_null(strstr(err.msg, "cannot connect"));
    free(nowhere);
}

static int sql_name(const struct dirent *d)
{
    size_t n = strlen(d->d_name);
    return n > 4 && strcmp(d->d_name + n - 4, ".sql") == 0;
}

/* Numbered migrations only: migrations/schema.sql is a snapshot, not a migration. */
static int numbered_name(const struct dirent *d)
{
    return d->d_name[0] >= '0' && d->d_name[0] <= '9' && sql_name(d);
}

/* The files of folder (under the source tree) chosen by filter are exactly m[0..count), bytes
 * and all, in name order. */
static void check_embedded(const char *folder, int (*filter)(const struct dirent *),
                           const eng_migration *m, size_t count)
{
    char *dir = eng_xasprintf("%s/%s", th_source_dir(), folder);
    struct dirent **names = NULL;
    int n = scandir(dir, &names, filter, alphasort);
    if (n < 0)
        n = 0; /* no such folder: nothing may be embedded */
    assert_int_equal(count, (size_t)n);
    for (int i = 0; i < n; i++) {
        assert_string_equal(m[i].name, names[i]->d_name);
        char *path = eng_xasprintf("%s/%s", dir, names[i]->d_name);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        rewind(f);
        char *body = eng_xmalloc((size_t)len + 1);
        assert_int_equal(fread(body, 1, (size_t)len, f), (size_t)len);
        body[len] = '\0';
        fclose(f);
        assert_string_equal(m[i].sql, body);
        free(body);
        free(path);
        free(names[i]);
    }
    free(names);
    free(dir);
}

static void test_embedded(void **state)
{
    (void)state;
    size_t count = 99;
    const eng_migration *m = eng_migrations_embedded(&count);
    check_embedded("migrations", numbered_name, m, count);
    count = 99;
    m = eng_sql_embedded(&count);
    check_embedded("sql", sql_name, m, count);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_apply_then_nothing),
        cmocka_unit_test(test_concurrent_starters),
        cmocka_unit_test(test_changed_file_refused),
        cmocka_unit_test(test_failing_file_rolls_back),
        cmocka_unit_test(test_function_files),
        cmocka_unit_test(test_after_functions),
        cmocka_unit_test(test_breaking_refused),
        cmocka_unit_test(test_bad_lists_and_connection),
        cmocka_unit_test(test_embedded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
