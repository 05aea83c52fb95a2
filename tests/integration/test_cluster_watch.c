/* tests/integration/test_cluster_watch.c: a test process that dies before its teardown leaves no
 * private cluster behind.
 *
 * A child process starts a private cluster (th_cluster_start) and then dies without stopping it:
 * once by SIGKILL, once by abort(), the ways a crashing or hung test ends. The cluster's watcher
 * must then stop the server and remove its folder. Without it, every such death left a PostgreSQL
 * running for the rest of the machine's life. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/support/th.h"
#include "tests/support/th_engine.h"

enum { GONE_WAIT_S = 30 };

/* Forks a child that starts a cluster, tells the parent its folder through a pipe and dies by
 * `how`; returns the folder's path (malloc'd) once the child is dead. */
static char *cluster_of_dead_child(int how)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        th_cluster *c = th_cluster_start();
        if (!c)
            _exit(2);
        if (write(fds[1], c->dir, strlen(c->dir) + 1) < 0)
            _exit(3);
        close(fds[1]);
        if (how == SIGABRT) {
            signal(SIGABRT, SIG_DFL); /* the test framework's handler must not catch it */
            abort();
        }
        pause(); /* killed by the parent */
        _exit(4);
    }
    close(fds[1]);
    char dir[sizeof ((th_cluster *)0)->dir] = {0};
    ssize_t n = read(fds[0], dir, sizeof dir - 1);
    close(fds[0]);
    if (how == SIGKILL)
        kill(pid, SIGKILL);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(n > 0);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), how);
    return strdup(dir);
}

static int dir_exists(const char *dir)
{
    struct stat sb;
    return stat(dir, &sb) == 0;
}

static void assert_cleaned_up(int how)
{
    char *dir = cluster_of_dead_child(how);
    char pidfile[512];
    snprintf(pidfile, sizeof pidfile, "%s/data/postmaster.pid", dir);
    assert_true(dir_exists(dir));
    int waited = 0;
    while (dir_exists(dir) && waited < GONE_WAIT_S * 10) {
        usleep(100 * 1000);
        waited++;
    }
    assert_false(dir_exists(pidfile));
    assert_false(dir_exists(dir));
    free(dir);
}

static void test_killed_test_stops_its_cluster(void **state)
{
    (void)state;
    assert_cleaned_up(SIGKILL);
}

static void test_aborted_test_stops_its_cluster(void **state)
{
    (void)state;
    assert_cleaned_up(SIGABRT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_killed_test_stops_its_cluster),
        cmocka_unit_test(test_aborted_test_stops_its_cluster),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
