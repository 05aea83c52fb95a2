/* bench/bench_webhooks.c: outbound webhook deliveries per second and CPU per delivery.
 *
 * N messages to one endpoint are written through the outbox function (flowd_webhook_emit, as the
 * triggers do), then one dispatcher (engine/webhook.h) with --inflight slots, all of them allowed
 * on that endpoint, delivers them to a local receiver (the tests' HTTP mock, in a child process so
 * that its CPU is not counted) that answers 204 after --delay-ms. Reported: deliveries per second
 * from the first claim to the last settle, this process's CPU per delivery (the dispatcher: claims,
 * signing, HTTP, settles), PostgreSQL's CPU per delivery, and the most requests the receiver held
 * at once. Prints one JSON object. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "engine/webhook.h"
#include "tests/support/th_mockhttp.h"

static int delay_ms = 100;

static void answer(void *arg, const th_mock_req *req, th_mock_resp *resp)
{
    (void)arg;
    (void)req;
    th_mock_resp_status(resp, 204);
    th_mock_resp_delay(resp, delay_ms);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The receiver in a child: writes its port, then (when its stdin pipe closes) the peak of requests
 * it held at once, and exits. */
static pid_t receiver_start(int *port, int *to_child, int *from_child)
{
    int down[2], up[2];
    if (pipe(down) != 0 || pipe(up) != 0)
        bench_die("pipe", NULL);
    pid_t pid = fork();
    if (pid < 0)
        bench_die("fork", NULL);
    if (pid == 0) {
        close(down[1]);
        close(up[0]);
        struct rlimit nofile;
        if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
            nofile.rlim_cur = nofile.rlim_max;
            setrlimit(RLIMIT_NOFILE, &nofile);
        }
        th_mock *m = th_mock_start(answer, NULL);
        int p = th_mock_port(m);
        if (write(up[1], &p, sizeof p) != (ssize_t)sizeof p)
            _exit(1);
        char c;
        while (read(down[0], &c, 1) > 0) {
        }
        unsigned long peak = th_mock_peak_pending(m);
        unsigned long n = th_mock_requests(m);
        unsigned long out[2] = {peak, n};
        if (write(up[1], out, sizeof out) != (ssize_t)sizeof out)
            _exit(1);
        th_mock_stop(m);
        _exit(0);
    }
    close(down[0]);
    close(up[1]);
    if (read(up[0], port, sizeof *port) != (ssize_t)sizeof *port)
        bench_die("receiver did not start", NULL);
    *to_child = down[1];
    *from_child = up[0];
    return pid;
}

int main(int argc, char **argv)
{
    bench_set_name("bench_webhooks");
    eng_mem_init();
    eng_log_init();
    eng_log_threshold = LOG_WARN;
    eng_httpc_global_init();
    eng_step_register_builtins();
    signal(SIGPIPE, SIG_IGN);
    const char *database = NULL;
    int n = 20000, inflight = 1000;
    const bench_opt opts[] = {{"--database", &database, NULL, 0, 0},
                              {"--deliveries", NULL, &n, 1, 10000000},
                              {"--inflight", NULL, &inflight, 1, 100000},
                              {"--delay-ms", NULL, &delay_ms, 0, 60000}};
    if (!bench_parse_opts(argc, argv, opts, ENG_ARRAY_LEN(opts)) || !database) {
        fprintf(stderr, "usage: bench_webhooks --database CONNINFO [--deliveries N] "
                        "[--inflight N] [--delay-ms MS]\n");
        return 2;
    }
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
        nofile.rlim_cur = nofile.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nofile);
    }
    int port, to_child, from_child;
    pid_t child = receiver_start(&port, &to_child, &from_child);

    PGconn *admin = bench_connect(database);
    char dbname[64];
    char *conninfo = bench_db_create(admin, database, "bench_webhooks", dbname);
    PGconn *c = bench_connect(conninfo);
    long long tenant;
    bench_register(c, "bench",
                   "{\"name\": \"bench\", \"steps\": [{\"key\": \"a\", \"kind\": "
                   "\"transform\"}]}",
                   &tenant);
    char tenant_s[24], url[64], secret[64], n_s[24];
    snprintf(tenant_s, sizeof tenant_s, "%lld", tenant);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hook", port);
    snprintf(n_s, sizeof n_s, "%d", n);
    eng_webhook_secret_new(secret, sizeof secret);
    const char *ep[] = {tenant_s, url, secret};
    PQclear(bench_exec(c, "SELECT flowd_webhook_endpoint_create($1, $2, NULL, NULL, NULL, $3)", 3,
                       ep));
    /* a body the size of a small run's JSON */
    const char *emit[] = {tenant_s, n_s};
    double t_emit = now_s();
    PQclear(bench_exec(c,
                       "SELECT flowd_webhook_emit($1, 'run.succeeded', 'bench', i,"
                       " jsonb_build_object('id', i, 'workflow', 'bench', 'state', 'succeeded',"
                       " 'progress', jsonb_build_object('done', 1, 'total', 1, 'percent', 100),"
                       " 'input', jsonb_build_object('lead', 'lead-' || i),"
                       " 'output', jsonb_build_object('a', repeat('x', 200))))"
                       " FROM generate_series(1, $2::integer) i",
                       2, emit));
    double emit_s = now_s() - t_emit;

    double db0 = bench_db_cpu_s(c);
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    double t0 = now_s();
    eng_webhook_opts wo = {.conninfo = conninfo, .max_inflight = inflight,
                           .per_endpoint = inflight};
    eng_webhooks *wh = eng_webhooks_start(&wo);
    for (;;) {
        char *left = bench_value(c, "SELECT count(*) FROM webhook_sends WHERE state <> 'succeeded'");
        bool done = strcmp(left, "0") == 0;
        free(left);
        if (done)
            break;
        if (now_s() - t0 > 600)
            bench_die("deliveries did not finish within 600 s", NULL);
        usleep(20000);
    }
    /* the last settle's time, not this loop's */
    double last = bench_value_f(c, "SELECT extract(epoch FROM max(finished_at) - min(a.at)) "
                                   "FROM webhook_sends s, (SELECT min(at) AS at FROM "
                                   "webhook_attempts) a");
    double wall = now_s() - t0;
    getrusage(RUSAGE_SELF, &r1);
    double db1 = bench_db_cpu_s(c);
    eng_webhooks_stop(wh, 5.);
    close(to_child);
    unsigned long got[2] = {0, 0};
    if (read(from_child, got, sizeof got) != (ssize_t)sizeof got)
        fprintf(stderr, "bench_webhooks: no figures from the receiver\n");
    waitpid(child, NULL, 0);
    double cpu = bench_rusage_cpu_s(&r1) - bench_rusage_cpu_s(&r0);
    long attempts = atol(bench_value(c, "SELECT count(*) FROM webhook_attempts"));

    json_t *out = json_pack(
        "{s:s, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:i, s:i, s:i}", "benchmark", "webhooks",
        "deliveries", n, "inflight_cap", inflight, "receiver_delay_ms", delay_ms, "outbox_write_s",
        emit_s, "deliver_s", last > 0 ? last : wall, "deliveries_per_s",
        (double)n / (last > 0 ? last : wall), "flowd_cpu_us_per_delivery", cpu * 1e6 / n,
        "postgres_cpu_us_per_delivery", db0 >= 0 && db1 >= 0 ? (db1 - db0) * 1e6 / n : -1.0,
        "attempts", (int)attempts, "receiver_peak_in_flight", (int)got[0], "receiver_requests",
        (int)got[1]);
    bench_server_facts(c, out);
    char *text = json_dumps(out, JSON_INDENT(2));
    printf("%s\n", text);
    free(text);
    json_decref(out);
    PQfinish(c);
    bench_db_drop(admin, dbname);
    PQfinish(admin);
    free(conninfo);
    eng_httpc_global_cleanup();
    return 0;
}
