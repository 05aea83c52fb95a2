/* tests/integration/test_partition.c: flowd processes on "other hosts" are killed and cut off.
 *
 * Three `flowd serve --role worker` processes run in network namespaces the test makes
 * (tests/support/netns.sh, root only): each reaches the test's private PostgreSQL over its own
 * database link (TCP) and the mock Twilio over a separate provider link, so a process can lose
 * the database while it still reaches the provider. While they work transform -> sms runs, the
 * database link of process 1 is cut for several lease lengths and then healed, and process 2 is
 * killed (SIGKILL) and replaced. A process cut off from the database must stop sending before its
 * lease can be reclaimed: no SMS request of process 1 may reach the provider once a lease length
 * has passed since the cut (each process has its own path prefix at the provider). In the end
 * every run succeeds, no step used a second attempt, and every SMS reached the provider exactly
 * once. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/mem.h"
#include "engine/step.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"
#include "tests/support/th_mockhttp.h"
#include "tests/support/th_mockmsg.h"

enum { RUNS = 1500, NPROC = 3, LEASE_MS = 3000 }; /* RUNS: a multiple of 100 */

static const char notify_def[] =
    "{\"name\": \"notify\", \"steps\": ["
    " {\"key\": \"shape\", \"kind\": \"transform\","
    "  \"input\": {\"to\": \"{{input.phone}}\", \"text\": \"lead {{input.n}}\"}},"
    " {\"key\": \"text\", \"kind\": \"sms\", \"needs\": [\"shape\"],"
    "  \"input\": {\"to\": \"{{steps.shape.output.to}}\", \"body\": \"{{steps.shape.output.text}}\","
    "             \"resolve\": {\"checks\": 2, \"interval_ms\": 300}}}]}";

static char tag[16], net[16];

static int netns(const char *fmt, ...) ENG_PRINTF(1, 2);
static int netns(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *args = NULL;
    if (vasprintf(&args, fmt, ap) < 0)
        abort();
    va_end(ap);
    char *cmd = eng_xasprintf("'%s/tests/support/netns.sh' %s", th_source_dir(), args);
    int st = system(cmd);
    free(cmd);
    free(args);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* flowd in namespace i (1-based), talking to the database over its database link and to the
 * mock over its provider link, under the path prefix /p<i>. The environment and arguments are
 * built before fork: the child of this multi-threaded process (the mock's thread) only makes
 * async-signal-safe calls. */
static pid_t spawn_in(int i, const char *dbname, int mock_port)
{
    char ns[64], conninfo[160], twilio[128], lease[16];
    snprintf(ns, sizeof ns, "/run/netns/%s-%d", tag, i);
    snprintf(conninfo, sizeof conninfo,
             "host=%s.%d port=5432 dbname=%s user=postgres connect_timeout=2", net, 8 * i + 1,
             dbname);
    snprintf(twilio, sizeof twilio, "TWILIO_BASE_URL=http://%s.%d:%d/p%d", net, 8 * i + 5,
             mock_port, i);
    snprintf(lease, sizeof lease, "%d", LEASE_MS);
    size_t n = 0;
    while (environ[n])
        n++;
    const char **envp = eng_xcalloc(n + 3, sizeof *envp);
    size_t k = 0;
    for (size_t j = 0; j < n; j++)
        if (strncmp(environ[j], "TWILIO_BASE_URL=", 16) != 0 &&
            strncmp(environ[j], "FLOWD_TEST_CLOCK=", 17) != 0)
            envp[k++] = environ[j];
    envp[k++] = twilio;
    envp[k++] = "FLOWD_TEST_CLOCK=1";
    const char *argv[] = {"flowd",       "--database", conninfo, "serve",          "--role",
                          "worker",      "--workers",  "1",      "--max-inflight", "8",
                          "--lease-ms",  lease,        NULL};
    const char *bin = th_flowd_bin();
    int fd = open(ns, O_RDONLY | O_CLOEXEC), devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    assert_true(fd >= 0 && devnull >= 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (setns(fd, CLONE_NEWNET) != 0 || dup2(devnull, 1) < 0)
            _exit(126);
        execve(bin, (char *const *)argv, (char *const *)envp);
        _exit(127);
    }
    close(fd);
    close(devnull);
    free(envp);
    return pid;
}

/* SMS requests that reached the mock from process i. */
static int requests_of(th_msg *sms, int i)
{
    char prefix[16];
    snprintf(prefix, sizeof prefix, "/p%d/", i);
    int n = 0, total = th_msg_requests(sms);
    for (int k = 0; k < total; k++) {
        char *target = th_msg_request_target(sms, k);
        n += target && strncmp(target, prefix, strlen(prefix)) == 0;
        free(target);
    }
    return n;
}

static void test_kill_and_partition(void **state)
{
    (void)state;
    if (geteuid() != 0)
        fail_msg("this test makes network namespaces: it must run as root");
    th_cluster *pg = th_cluster_start();
    assert_non_null(pg);
    long long tenant;
    char *db = th_engine_db_at(pg->dir, "partition", &tenant);
    long long wf = th_engine_register(db, tenant, notify_def);
    th_engine_enqueue_phones(db, tenant, wf, RUNS);
    const char *dbname = strstr(db, "dbname=") + 7;
    char name[96];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(dbname, " "), dbname);

    /* a tag and a /24 of this process's own, so that concurrent runs do not meet */
    int pid = (int)getpid();
    snprintf(tag, sizeof tag, "fp%d", pid % 100000);
    snprintf(net, sizeof net, "10.%d.%d", 100 + pid % 100, (pid / 100) % 256);
    assert_int_equal(netns("up %s %d %s '%s'", tag, NPROC, net, pg->dir), 0);

    th_mock_listen_any();
    th_msg *sms = th_msg_start(TH_MSG_TWILIO);
    for (int i = 0; i < 2 * RUNS; i++)
        th_msg_push(sms, (th_msg_answer){.delay_ms = 200});
    int port = atoi(strrchr(th_msg_url(sms), ':') + 1);
    setenv("TWILIO_ACCOUNT_SID", TH_MSG_TWILIO_SID, 1);
    setenv("TWILIO_AUTH_TOKEN", TH_MSG_TWILIO_TOKEN, 1);
    setenv("TWILIO_FROM", "+15005550001", 1);

    pid_t procs[NPROC + 1];
    for (int i = 1; i <= NPROC; i++)
        procs[i] = spawn_in(i, name, port);

    /* every process is sending before the faults */
    for (int k = 0; k < 3000 && (requests_of(sms, 1) < 20 || requests_of(sms, 2) < 20 ||
                                 requests_of(sms, 3) < 20);
         k++)
        th_sleep_ms(20);
    assert_true(requests_of(sms, 1) >= 20 && requests_of(sms, 2) >= 20 &&
                requests_of(sms, 3) >= 20);

    /* Cut process 1 off the database: once a lease length has passed, its steps may be
     * reclaimed, so it must have stopped sending by then. */
    assert_int_equal(netns("cut %s 1", tag), 0);
    long long t_cut = th_now_ms();
    int at_cut = requests_of(sms, 1);
    th_sleep_ms(LEASE_MS);
    int at_lease = requests_of(sms, 1);
    /* kill process 2 while process 1 is still cut off, and replace it */
    assert_true(WIFSIGNALED(th_serve_kill(procs[2], SIGKILL)));
    procs[2] = spawn_in(2, name, port);
    th_sleep_ms(2 * LEASE_MS);
    int before_heal = requests_of(sms, 1);
    long done_before_heal = th_pg_longf(db, "SELECT count(*) FROM runs WHERE state = 'succeeded'");
    assert_int_equal(netns("heal %s 1", tag), 0);
    long long t_heal = th_now_ms();

    bool all = th_engine_wait(
        db, "SELECT count(*) = 1500 FROM runs WHERE state IN ('succeeded', 'failed', 'cancelled')",
        90);
    int after_heal = requests_of(sms, 1);
    for (int i = 1; i <= NPROC; i++)
        th_serve_kill(procs[i], SIGTERM);
    print_message("partition: process 1 cut off for %lld ms: %d SMS requests from it before the "
                  "cut, %d more within a lease length, %d more until the heal, %d after; %ld runs "
                  "done at the heal\n",
                  t_heal - t_cut, at_cut, at_lease - at_cut, before_heal - at_lease,
                  after_heal - before_heal, done_before_heal);
    print_message("partition: %d SMS requests, %d accepted, %d look-ups; %ld steps interrupted\n",
                  th_msg_requests(sms), th_msg_accepted(sms), th_msg_lookups(sms),
                  th_pg_longf(db, "SELECT count(*) FROM steps WHERE interruptions > 0"));
    assert_int_equal(netns("down %s %d", tag, NPROC), 0);

    assert_true(all);
    /* the cut-off process sent nothing once its lease could have been reclaimed */
    assert_int_equal(before_heal, at_lease);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM runs WHERE state = 'succeeded'"), RUNS);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM steps WHERE state = 'succeeded'"), 2 * RUNS);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM steps WHERE attempts <> 1"), 0);
    assert_int_equal(th_msg_accepted(sms), RUNS);
    for (int i = 0; i < RUNS; i++) {
        char key[64];
        snprintf(key, sizeof key, "+1555%07d|lead %d", i, i);
        if (th_msg_accepted_for(sms, key) != 1)
            fail_msg("the SMS of run %d was accepted %d times", i,
                     th_msg_accepted_for(sms, key));
    }
    th_msg_stop(sms);
    free(db);
    assert_int_equal(th_cluster_stop(pg), 0);
}

int main(void)
{
    eng_step_register_builtins();
    step_register_all();
    setenv("NO_PROXY", "*", 1);
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_and_partition),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
