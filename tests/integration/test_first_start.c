/* tests/integration/test_first_start.c: the first start creates the default tenant and its key, and
 * says where the key is; the key itself goes only to a terminal, never to a pipe or a file that
 * journald or a container runtime keeps. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/buf.h"
#include "engine/mem.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"

static const char *const clean_env[] = {"FLOWD_API_KEY", "FLOWD_DATA", "FLOWD_DATABASE_URL", NULL};

/* A key as flowd makes them ("fd_" and 40 hex digits) anywhere in text, copied to out. */
static bool find_key(const char *text, char out[44])
{
    for (const char *p = strstr(text, "fd_"); p; p = strstr(p + 1, "fd_")) {
        size_t n = strspn(p + 3, "0123456789abcdef");
        if (n == 40) {
            memcpy(out, p, 43);
            out[43] = '\0';
            return true;
        }
    }
    return false;
}

static long default_keys(const char *db, const char *key)
{
    char *sql = eng_xasprintf("SELECT count(*) FROM api_keys k JOIN tenants t ON t.id = k.tenant_id"
                              " WHERE t.name = 'default' AND k.key_hash = sha256(convert_to('%s',"
                              " 'UTF8'))",
                              key);
    long n = th_pg_long(db, sql);
    free(sql);
    return n;
}

/* stdout a pipe: the key is in neither stream, and the output says how to get one. */
static void test_pipe_never_gets_the_key(void **state)
{
    (void)state;
    char *db = th_pg_new_db("first_pipe");
    char *out = NULL, *err = NULL;
    const char *argv[] = {"flowd", "--database", db, "migrate", NULL};
    assert_int_equal(th_flowd_run(argv, clean_env, &out, &err), 0);
    char key[44];
    if (find_key(out, key) || find_key(err, key))
        fail_msg("the key was printed to a pipe:\n%s\n%s", out, err);
    assert_non_null(strstr(out, "created the default tenant"));
    assert_non_null(strstr(out, "flowd key create"));
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM api_keys"), 1);
    free(out);
    free(err);
    free(db);
}

/* Runs flowd with argv and its stdout and stderr on a pseudo-terminal; returns what it wrote. */
static char *run_on_tty(const char *const *argv)
{
    int master, slave;
    assert_int_equal(openpty(&master, &slave, NULL, NULL, NULL), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (size_t i = 0; clean_env[i]; i++)
            unsetenv(clean_env[i]);
        dup2(slave, STDOUT_FILENO);
        dup2(slave, STDERR_FILENO);
        close(master);
        close(slave);
        execv(th_flowd_bin(), (char *const *)argv);
        _exit(127);
    }
    close(slave);
    eng_buf b;
    eng_buf_init(&b, 0);
    char chunk[4096];
    for (;;) {
        ssize_t n = read(master, chunk, sizeof chunk);
        if (n > 0)
            assert_int_equal(eng_buf_append(&b, chunk, (size_t)n), ENG_OK);
        else if (!(n < 0 && errno == EINTR))
            break; /* EIO once the child closed the terminal */
    }
    close(master);
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return b.ptr ? eng_buf_take(&b, NULL) : eng_xstrdup("");
}

/* stdout a terminal: the key is shown there once, and it is the default tenant's. */
static void test_terminal_gets_the_key(void **state)
{
    (void)state;
    char *db = th_pg_new_db("first_tty");
    const char *argv[] = {"flowd", "--database", db, "migrate", NULL};
    char *out = run_on_tty(argv);
    char key[44];
    if (!find_key(out, key))
        fail_msg("no key on the terminal:\n%s", out);
    assert_int_equal(default_keys(db, key), 1);
    free(out);
    /* a second start creates nothing and shows nothing */
    out = run_on_tty(argv);
    assert_false(find_key(out, key));
    free(out);
    free(db);
}

/* The embedded cluster's folder gets the key in api-key (0600); the output names the file only. */
static void test_embedded_writes_the_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/flowd_first_XXXXXX";
    assert_non_null(mkdtemp(dir));
    chmod(dir, 0777); /* the cluster may run as the postgres user */
    char *data = eng_xasprintf("%s/data", dir);
    const char *argv[] = {"flowd", "--data", data, "migrate", NULL};
    char *out = NULL, *err = NULL;
    assert_int_equal(th_flowd_run(argv, clean_env, &out, &err), 0);
    char *path = eng_xasprintf("%s/api-key", data);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    FILE *f = fopen(path, "r");
    char line[128] = "";
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    char key[44];
    assert_true(find_key(line, key));
    assert_non_null(strstr(out, path));
    if (strstr(out, key) || strstr(err, key))
        fail_msg("the key was printed to a pipe:\n%s\n%s", out, err);
    free(out);
    free(err);
    free(path);
    char *rm = eng_xasprintf("rm -rf '%s'", dir);
    assert_int_equal(system(rm), 0);
    free(rm);
    free(data);
}

int main(void)
{
    eng_mem_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipe_never_gets_the_key),
        cmocka_unit_test(test_terminal_gets_the_key),
        cmocka_unit_test(test_embedded_writes_the_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
