/* tests/integration/test_pgembed.c: the embedded PostgreSQL launcher, with real initdb/pg_ctl.
 *
 * Every test works in its own temporary folder and starts its own cluster (it does not use the
 * fixture cluster). As root (the test machine) the launcher must run the server as `postgres`. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/mem.h"
#include "engine/pgembed.h"
#include "tests/support/th.h"

/* A fresh temp folder (mode 0755 so the postgres user can pass through it). Caller frees. */
static char *tmpdir_new(void)
{
    char *t = eng_xstrdup("/tmp/flowd-pgembed-XXXXXX");
    assert_non_null(mkdtemp(t));
    assert_int_equal(chmod(t, 0755), 0);
    return t;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void tmpdir_free(char *t)
{
    nftw(t, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(t);
}

static long file_long(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    long v = 0;
    assert_int_equal(fscanf(f, "%ld", &v), 1);
    fclose(f);
    return v;
}

/* True while pid is a process that is not a zombie (the test machine's init may not reap). */
static bool alive(long pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] != 'Z';
}

static void assert_not_running(const char *dir)
{
    char *ci = NULL;
    eng_err err = {0};
    assert_int_equal(eng_pgembed_attach(dir, &ci, &err), ENG_ENOTFOUND);
    assert_null(ci);
}

static void test_start_query_stop_reuse(void **state)
{
    (void)state;
    char *tmp = tmpdir_new();
    char *dir = eng_xasprintf("%s/data", tmp); /* does not exist yet */
    assert_not_running(dir);

    /* Given relative, the path is made absolute (the conninfo must work from any directory). */
    char cwd[PATH_MAX];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(tmp), 0);
    eng_err err = {0};
    eng_pgembed *pg = NULL;
    long long t0 = th_now_ms();
    eng_rc rc = eng_pgembed_start("./data", &pg, &err);
    assert_int_equal(chdir(cwd), 0);
    if (rc != ENG_OK)
        fprintf(stderr, "start failed: %s\n", err.msg);
    assert_int_equal(rc, ENG_OK);
    fprintf(stderr, "first start (initdb) took %lld ms\n", th_now_ms() - t0);
    assert_true(eng_pgembed_owned(pg));
    const char *ci = eng_pgembed_conninfo(pg);
    char *want = eng_xasprintf("host='%s'", dir);
    assert_non_null(strstr(ci, want));
    free(want);
    char *db = th_pg_value(ci, "SELECT current_database()");
    assert_string_equal(db, "flowd");
    free(db);
    char *v = th_pg_value(ci, "SHOW listen_addresses");
    assert_string_equal(v, "");
    free(v);
    v = th_pg_value(ci, "SHOW fsync");
    assert_string_equal(v, "on");
    free(v);
    assert_int_equal(th_pg_long(ci, "SHOW max_connections"), 200);
    th_pg_long(ci, "CREATE TABLE keepme (v int); INSERT INTO keepme VALUES (42)");

    struct stat st;
    char *sock = eng_xasprintf("%s/.s.PGSQL.5432", dir);
    assert_int_equal(stat(sock, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    free(sock);
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("postgres");
        assert_non_null(pw);
        assert_int_equal(st.st_uid, pw->pw_uid);
    }
    char *log = eng_xasprintf("%s/postgres.log", dir);
    assert_int_equal(stat(log, &st), 0);
    free(log);

    char *attached = NULL;
    assert_int_equal(eng_pgembed_attach(dir, &attached, &err), ENG_OK);
    assert_string_equal(attached, ci);
    free(attached);

    eng_pgembed_stop(pg);
    assert_not_running(dir);

    t0 = th_now_ms();
    assert_int_equal(eng_pgembed_start(dir, &pg, &err), ENG_OK);
    fprintf(stderr, "second start took %lld ms\n", th_now_ms() - t0);
    assert_true(eng_pgembed_owned(pg));
    assert_int_equal(th_pg_long(eng_pgembed_conninfo(pg), "SELECT v FROM keepme"), 42);
    eng_pgembed_stop(pg);
    assert_not_running(dir);
    eng_pgembed_stop(NULL);
    free(dir);
    tmpdir_free(tmp);
}

/* Three processes start on one fresh folder at once: one runs initdb and owns the server, the others
 * wait for it (start lock) and share it. */
static void test_concurrent_starters(void **state)
{
    (void)state;
    enum { NPROC = 3 };
    char *tmp = tmpdir_new();
    char *dir = eng_xasprintf("%s/data", tmp);
    int gate[2], report[2];
    assert_int_equal(pipe(gate), 0);
    assert_int_equal(pipe(report), 0);
    pid_t pids[NPROC];
    for (int i = 0; i < NPROC; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] != 0)
            continue;
        close(gate[1]);
        close(report[0]);
        eng_err err = {0};
        eng_pgembed *pg = NULL;
        eng_rc rc = eng_pgembed_start(dir, &pg, &err);
        if (rc != ENG_OK)
            fprintf(stderr, "child %d: %s\n", i, err.msg);
        char ok = rc == ENG_OK && th_pg_long(eng_pgembed_conninfo(pg), "SELECT 1") == 1 ? 'y' : 'n';
        if (write(report[1], &ok, 1) != 1)
            _exit(3);
        /* Everyone stays up until all have started, so the owner cannot stop the server early. */
        char c;
        while (read(gate[0], &c, 1) > 0) {
        }
        bool owned = pg && eng_pgembed_owned(pg);
        eng_pgembed_stop(pg);
        _exit(rc != ENG_OK ? 2 : owned ? 1 : 0);
    }
    close(report[1]);
    for (int i = 0; i < NPROC; i++) {
        char ok = 0;
        assert_int_equal(read(report[0], &ok, 1), 1);
        assert_int_equal(ok, 'y');
    }
    close(report[0]);
    close(gate[0]);
    close(gate[1]);
    int owners = 0;
    for (int i = 0; i < NPROC; i++) {
        int st = 0;
        assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
        assert_true(WIFEXITED(st));
        assert_true(WEXITSTATUS(st) <= 1);
        owners += WEXITSTATUS(st);
    }
    assert_int_equal(owners, 1);
    assert_not_running(dir);

    /* In one process too: a second handle shares the server and stopping it leaves it running. */
    eng_err err = {0};
    eng_pgembed *a = NULL, *b = NULL;
    assert_int_equal(eng_pgembed_start(dir, &a, &err), ENG_OK);
    assert_true(eng_pgembed_owned(a));
    assert_int_equal(eng_pgembed_start(dir, &b, &err), ENG_OK);
    assert_false(eng_pgembed_owned(b));
    assert_string_equal(eng_pgembed_conninfo(a), eng_pgembed_conninfo(b));
    eng_pgembed_stop(b);
    assert_int_equal(th_pg_long(eng_pgembed_conninfo(a), "SELECT 8"), 8);
    eng_pgembed_stop(a);
    assert_not_running(dir);
    free(dir);
    tmpdir_free(tmp);
}

/* A starter killed with -9 leaves its server running; the next start adopts it and its stop stops
 * it (the server used to be left behind for good). */
static void test_adopt_after_kill9(void **state)
{
    (void)state;
    char *tmp = tmpdir_new();
    char *dir = eng_xasprintf("%s/data", tmp);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        eng_err err = {0};
        eng_pgembed *pg = NULL;
        if (eng_pgembed_start(dir, &pg, &err) != ENG_OK || !eng_pgembed_owned(pg))
            _exit(2);
        raise(SIGKILL);
    }
    int st = 0;
    assert_int_equal(waitpid(child, &st, 0), child);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    char *pidfile = eng_xasprintf("%s/pg/postmaster.pid", dir);
    assert_true(alive(file_long(pidfile))); /* the orphan */
    free(pidfile);

    eng_err err = {0};
    eng_pgembed *pg = NULL;
    assert_int_equal(eng_pgembed_start(dir, &pg, &err), ENG_OK);
    assert_true(eng_pgembed_owned(pg));
    eng_pgembed *again = NULL; /* while its adopter lives, a second start does not take it over */
    assert_int_equal(eng_pgembed_start(dir, &again, &err), ENG_OK);
    assert_false(eng_pgembed_owned(again));
    eng_pgembed_stop(again);
    eng_pgembed_stop(pg);
    assert_not_running(dir);
    free(dir);
    tmpdir_free(tmp);
}

/* Starts, creates a row, then leaves the cluster as a crash would; returns the pid file path. */
static char *start_and_seed(const char *dir)
{
    eng_err err = {0};
    eng_pgembed *pg = NULL;
    assert_int_equal(eng_pgembed_start(dir, &pg, &err), ENG_OK);
    th_pg_long(eng_pgembed_conninfo(pg), "CREATE TABLE crash (v int); INSERT INTO crash VALUES (1)");
    char *pidfile = eng_xasprintf("%s/pg/postmaster.pid", dir);
    long pid = file_long(pidfile);
    assert_true(alive(pid));
    assert_int_equal(kill((pid_t)pid, SIGKILL), 0);
    for (int i = 0; i < 100 && alive(pid); i++)
        usleep(20 * 1000);
    assert_false(alive(pid));
    /* The handle still believes it owns a server; freeing it must not hang or fail the test. */
    eng_pgembed_stop(pg);
    return pidfile;
}

static void restart_and_check(const char *dir)
{
    eng_err err = {0};
    eng_pgembed *pg = NULL;
    eng_rc rc = eng_pgembed_start(dir, &pg, &err);
    if (rc != ENG_OK)
        fprintf(stderr, "restart failed: %s\n", err.msg);
    assert_int_equal(rc, ENG_OK);
    assert_true(eng_pgembed_owned(pg));
    assert_int_equal(th_pg_long(eng_pgembed_conninfo(pg), "SELECT count(*) FROM crash"), 1);
    eng_pgembed_stop(pg);
    assert_not_running(dir);
}

static void write_pidfile(const char *path, long pid, const char *dir)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "%ld\n%s/pg\n1700000000\n5432\n..\n\n  10953041         9\nready   \n", pid, dir);
    assert_int_equal(fclose(f), 0);
}

static void test_crash_and_stale_pid_files(void **state)
{
    (void)state;
    char *tmp = tmpdir_new();
    /* kill -9 of the postmaster: its pid file and socket lock stay behind. */
    char *pidfile = start_and_seed(tmp);
    assert_int_equal(access(pidfile, F_OK), 0);
    assert_not_running(tmp);
    restart_and_check(tmp);

    char *socklock = eng_xasprintf("%s/.s.PGSQL.5432.lock", tmp);

    /* A pid that is certainly dead: a child we reaped. */
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(0);
    assert_int_equal(waitpid(child, NULL, 0), child);
    write_pidfile(pidfile, child, tmp);
    write_pidfile(socklock, child, tmp);
    restart_and_check(tmp);

    /* A pid reused by an unrelated live process (after a reboot): this test binary. */
    write_pidfile(pidfile, (long)getpid(), tmp);
    write_pidfile(socklock, (long)getpid(), tmp);
    restart_and_check(tmp);
    free(socklock);
    free(pidfile);
    tmpdir_free(tmp);
}

static void test_paths(void **state)
{
    (void)state;
    char *tmp = tmpdir_new();
    eng_err err = {0};
    eng_pgembed *pg = NULL;

    char *longdir = eng_xasprintf("%s/%0100d", tmp, 0);
    assert_int_equal(eng_pgembed_start(longdir, &pg, &err), ENG_EINVAL);
    assert_null(pg);
    assert_non_null(strstr(err.msg, "too long"));
    assert_int_equal(access(longdir, F_OK), -1); /* nothing was created */
    char *ci = NULL;
    assert_int_equal(eng_pgembed_attach(longdir, &ci, &err), ENG_EINVAL);
    free(longdir);

    /* A folder with someone else's files is refused, not taken over. */
    char *foreign = eng_xasprintf("%s/foreign", tmp);
    assert_int_equal(mkdir(foreign, 0755), 0);
    char *file = eng_xasprintf("%s/notes.txt", foreign);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    assert_int_equal(eng_pgembed_start(foreign, &pg, &err), ENG_EINVAL);
    assert_non_null(strstr(err.msg, "not empty"));
    struct stat st;
    assert_int_equal(stat(foreign, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0755);
    assert_int_equal(st.st_uid, geteuid());
    free(file);
    free(foreign);
    tmpdir_free(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_query_stop_reuse),
        cmocka_unit_test(test_concurrent_starters),
        cmocka_unit_test(test_adopt_after_kill9),
        cmocka_unit_test(test_crash_and_stale_pid_files),
        cmocka_unit_test(test_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
