/* bench/bench_inflight.c: many LLM calls in flight at once; prints one JSON object.
 *
 *   bench_inflight --database CONNINFO [--steps 10000] [--workers 2] [--max-inflight 10000]
 *                  [--batch N (default: max-inflight, at most 5000)] [--latency-ms 200]
 *                  [--flowd PATH] [--mock http1|h2tls]
 *
 * A mock OpenAI server answers every Chat Completions request after --latency-ms:
 *   --mock http1 (default): tests/support/th_mockllm in this process, cleartext HTTP/1.1 with
 *                   keep-alive (as self-hosted OpenAI-compatible servers often speak)
 *   --mock h2tls:   nginx (tests/support/nginx_mock.sh) speaking TLS with ALPN h2 like the real
 *                   providers, one worker process, with a throw-away self-signed certificate that
 *                   flowd is told to trust through FLOWD_CA_BUNDLE
 * --steps single-step `llm` runs are enqueued first; then one
 * `flowd serve --role worker --workers W --max-inflight M --batch B` process works them, with
 * OPENAI_BASE_URL pointing at the mock. Reported:
 *   steps_per_s     steps / (last step finished - first step started), from the database
 *   max_in_flight   most requests the mock held at once (received, answer not yet sent; http1
 *                   only, null with h2tls)
 *   mock_connections  connections the mock accepted (fewer than mock_calls when reused)
 *   calls_per_connection  mock_calls / mock_connections
 *   flowd_cpu_us_per_call  flowd_cpu_s / mock_calls, in microseconds
 *   peak_rss_mib    VmHWM of the flowd process, read just before stopping it
 *   flowd_cpu_s     user + system CPU time of the flowd process, start to exit (a figure that
 *                   other load on the machine does not change much, unlike steps_per_s)
 *   postgres_cpu_s  CPU time of the server processes serving flowd's connections (read from
 *                   /proc just before flowd stops; -1 when the server is on another machine)
 *   mock_cpu_s      CPU time of the mock while flowd ran: with http1 this process's (the mock
 *                   server, and the benchmark polling for the end), with h2tls nginx's
 *   ceiling_steps_per_s  cores * steps / (postgres_cpu_s + mock_cpu_s): the rate this machine
 *                   would allow if flowd itself cost nothing
 *   ideal_steps_per_s  min(steps, workers * max_inflight) / latency: what the in-flight cap and
 *                   the latency allow (the queue's own rate, bench/run queue, may be lower)
 * RLIMIT_NOFILE is raised to its hard limit here, and so in the flowd child, which inherits it.
 * The benchmark creates its own database next to CONNINFO's and drops it at the end. */
#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "engine/buf.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_mockllm.h"

#ifndef FLOWD_BENCH_BIN
#define FLOWD_BENCH_BIN "flowd"
#endif

typedef struct bench_opts {
    const char *conninfo, *flowd, *mock;
    int steps, workers, max_inflight, batch, latency_ms;
} bench_opts;

/* The provider mock: th_mockllm in this process (http1) or nginx in its own (h2tls). */
typedef struct inflight_mock {
    th_llm *llm;             /* http1 */
    char dir[64];            /* h2tls: nginx_mock.sh's folder (certificate, pid file) */
    char base_url[128], status_url[128];
    unsigned long accepts0, requests0; /* h2tls: the counters at start */
    unsigned long status_reads;        /* h2tls: reads of the status page since start */
} inflight_mock;

/* th_mockllm stamps requests with this (tests get it from th_pg.c). */
long long th_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            perror("bench_inflight: setrlimit");
    }
}

/* VmHWM (peak resident set) of pid in MiB, or -1. */
static double peak_rss_mib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    double kib = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kib = strtod(line + 6, NULL);
    fclose(f);
    return kib < 0 ? -1 : kib / 1024.0;
}

static size_t on_status_body(char *data, size_t size, size_t n, void *bp)
{
    return eng_buf_append(bp, data, size * n) == ENG_OK ? size * n : 0;
}

/* nginx's stub_status counters; each read is itself one connection and one request. */
static void nginx_counters(inflight_mock *m, unsigned long *accepts, unsigned long *requests)
{
    eng_buf b;
    eng_buf_init(&b, 4096);
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, m->status_url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_status_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, (void *)&b);
    CURLcode rc = curl_easy_perform(e);
    curl_easy_cleanup(e);
    const char *p = rc == CURLE_OK && b.ptr ? strstr(b.ptr, "requests\n") : NULL;
    unsigned long handled;
    if (!p || sscanf(p + 9, "%lu %lu %lu", accepts, &handled, requests) != 3)
        bench_die("reading nginx's stub_status", NULL);
    eng_buf_deinit(&b);
    m->status_reads++;
}

static void mock_start(inflight_mock *m, const char *kind, int latency_ms)
{
    if (strcmp(kind, "http1") == 0) {
        m->llm = th_llm_start(TH_LLM_OPENAI);
        th_llm_set_default(m->llm, &(th_llm_answer){.delay_ms = latency_ms});
        snprintf(m->base_url, sizeof m->base_url, "%s", th_llm_base_url(m->llm));
        return;
    }
    snprintf(m->dir, sizeof m->dir, "/tmp/flowd-bench-nginx.XXXXXX");
    if (!mkdtemp(m->dir))
        bench_die("mkdtemp", NULL);
    char *cmd = eng_xasprintf("'%s/tests/support/nginx_mock.sh' start '%s' %d", FLOWD_SOURCE_DIR,
                              m->dir, latency_ms);
    FILE *f = popen(cmd, "r");
    free(cmd);
    if (!f || !fgets(m->base_url, sizeof m->base_url, f) ||
        !fgets(m->status_url, sizeof m->status_url, f))
        bench_die("starting nginx (tests/support/nginx_mock.sh)", NULL);
    if (pclose(f) != 0)
        bench_die("tests/support/nginx_mock.sh start", NULL);
    m->base_url[strcspn(m->base_url, "\n")] = '\0';
    m->status_url[strcspn(m->status_url, "\n")] = '\0';
    nginx_counters(m, &m->accepts0, &m->requests0);
    m->status_reads = 0;
}

/* The requests the mock answered, and the connections it accepted, since it started. */
static void mock_counts(inflight_mock *m, unsigned long *calls, unsigned long *conns)
{
    if (m->llm) {
        *calls = th_llm_calls(m->llm);
        *conns = th_llm_connections(m->llm);
        return;
    }
    unsigned long a, r;
    nginx_counters(m, &a, &r);
    *calls = r - m->requests0 - m->status_reads;
    *conns = a - m->accepts0 - m->status_reads;
}

/* CPU seconds of nginx's master and workers (h2tls); -1 when unreadable. */
static double nginx_cpu_s(const inflight_mock *m)
{
    char path[128], buf[256];
    snprintf(path, sizeof path, "%s/nginx.pid", m->dir);
    FILE *f = fopen(path, "r");
    long master = 0;
    if (!f || fscanf(f, "%ld", &master) != 1) {
        if (f)
            fclose(f);
        return -1;
    }
    fclose(f);
    double cpu = bench_pid_cpu_s(master);
    snprintf(path, sizeof path, "/proc/%ld/task/%ld/children", master, master);
    f = fopen(path, "r");
    if (f) {
        while (fscanf(f, "%255s", buf) == 1)
            cpu += bench_pid_cpu_s(strtol(buf, NULL, 10));
        fclose(f);
    }
    return cpu;
}

static void mock_stop(inflight_mock *m)
{
    if (m->llm) {
        th_llm_stop(m->llm);
        return;
    }
    char *cmd = eng_xasprintf("'%s/tests/support/nginx_mock.sh' stop '%s' && rm -rf '%s'",
                              FLOWD_SOURCE_DIR, m->dir, m->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_inflight: stopping nginx failed (%s)\n", m->dir);
    free(cmd);
}

static pid_t spawn_flowd(const bench_opts *o, const char *db, const inflight_mock *m)
{
    char workers[16], inflight[16], batch[16];
    snprintf(workers, sizeof workers, "%d", o->workers);
    snprintf(inflight, sizeof inflight, "%d", o->max_inflight);
    snprintf(batch, sizeof batch, "%d", o->batch);
    pid_t pid = fork();
    if (pid < 0)
        bench_die("fork", NULL);
    if (pid == 0) {
        setenv("OPENAI_API_KEY", "sk-bench-not-a-real-key", 1);
        setenv("OPENAI_BASE_URL", m->base_url, 1);
        if (!m->llm) {
            char ca[96];
            snprintf(ca, sizeof ca, "%s/cert.pem", m->dir);
            setenv("FLOWD_CA_BUNDLE", ca, 1);
        }
        if (!getenv("FLOWD_LOG_LEVEL"))
            setenv("FLOWD_LOG_LEVEL", "warn", 1);
        execl(o->flowd, "flowd", "--database", db, "serve", "--role", "worker", "--workers",
              workers, "--max-inflight", inflight, "--batch", batch, (char *)NULL);
        perror("bench_inflight: exec flowd");
        _exit(127);
    }
    return pid;
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_inflight --database CONNINFO [--steps N] [--workers N]"
                    " [--max-inflight N] [--batch N] [--latency-ms N] [--flowd PATH]"
                    " [--mock http1|h2tls]\n");
    return 2;
}

int main(int argc, char **argv)
{
    bench_opts o = {.steps = 10000, .workers = 2, .max_inflight = 10000, .latency_ms = 200,
                    .flowd = FLOWD_BENCH_BIN, .mock = "http1"};
    const bench_opt opts[] = {
        {"--database", &o.conninfo, NULL, 0, 0},
        {"--flowd", &o.flowd, NULL, 0, 0},
        {"--mock", &o.mock, NULL, 0, 0},
        {"--steps", NULL, &o.steps, 1, INT_MAX},
        {"--workers", NULL, &o.workers, 1, INT_MAX},
        {"--max-inflight", NULL, &o.max_inflight, 1, INT_MAX},
        {"--batch", NULL, &o.batch, 1, 5000},
        {"--latency-ms", NULL, &o.latency_ms, 0, INT_MAX},
    };
    bench_set_name("bench_inflight");
    if (!bench_parse_opts(argc, argv, opts, ENG_ARRAY_LEN(opts)) || !o.conninfo ||
        (strcmp(o.mock, "http1") != 0 && strcmp(o.mock, "h2tls") != 0))
        return usage();
    /* a claim trip as large as the in-flight cap lets one trip fill the worker */
    if (!o.batch)
        o.batch = o.max_inflight < 5000 ? o.max_inflight : 5000;
    eng_mem_init();
    eng_log_init();
    eng_step_register_builtins();
    step_register_all();
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    PGconn *admin = bench_connect(o.conninfo);
    char dbname[64];
    char *db = bench_db_create(admin, o.conninfo, "flowd_inflight", dbname);
    PGconn *c = bench_connect(db);
    long long tenant;
    long long wf = bench_register(c, "inflight",
                                  "{\"name\": \"inflight\", \"steps\": [{\"key\": \"ask\","
                                  " \"kind\": \"llm\", \"input\": {\"provider\": \"openai\","
                                  " \"model\": \"gpt-4o-mini\", \"prompt\": \"lead {{input.n}}\","
                                  " \"max_tokens\": 64}}]}",
                                  &tenant);
    bench_enqueue(c, tenant, wf, o.steps, 1000);
    PQclear(bench_exec(c, "ANALYZE", 0, NULL));

    struct rusage self0;
    getrusage(RUSAGE_SELF, &self0);
    inflight_mock mock = {0};
    mock_start(&mock, o.mock, o.latency_ms);
    double nginx_cpu0 = mock.llm ? 0 : nginx_cpu_s(&mock);
    pid_t pid = spawn_flowd(&o, db, &mock);
    char *done_sql = eng_xasprintf("SELECT count(*) FROM steps WHERE state IN ('succeeded', "
                                   "'failed')");
    double deadline = (double)th_now_ms() + 300000.0;
    double rss = -1;
    int finished = 0;
    for (int tick = 1; (double)th_now_ms() < deadline; tick++) {
        struct timespec ts = {0, 100000000L};
        nanosleep(&ts, NULL);
        /* Counting finished steps scans the steps table on the server being measured: ask only
         * once every step has reached the mock (none can finish before), or every second in case
         * some fail without a call. */
        if (!mock.llm || th_llm_calls(mock.llm) >= (unsigned long)o.steps || tick % 10 == 0)
            finished = (int)bench_value_f(c, done_sql);
        double r = peak_rss_mib(pid);
        if (r > rss)
            rss = r;
        if (finished >= o.steps)
            break;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            fprintf(stderr, "bench_inflight: flowd exited early (status %d)\n", st);
            return 1;
        }
    }
    free(done_sql);
    double pg_cpu = bench_db_cpu_s(c);
    struct rusage self1;
    getrusage(RUSAGE_SELF, &self1);
    double mock_cpu = mock.llm ? bench_rusage_cpu_s(&self1) - bench_rusage_cpu_s(&self0)
                               : nginx_cpu_s(&mock) - nginx_cpu0;
    kill(pid, SIGTERM);
    int status;
    struct rusage ru = {0};
    wait4(pid, &status, 0, &ru);
    double cpu = bench_rusage_cpu_s(&ru);
    double seconds = bench_value_f(c, "SELECT extract(epoch FROM max(finished_at) -"
                                      " min(started_at)) FROM steps");
    double failed = bench_value_f(c, "SELECT count(*) FROM steps WHERE state <> 'succeeded'");
    unsigned long calls, conns;
    mock_counts(&mock, &calls, &conns);
    json_t *peak = mock.llm ? json_integer((json_int_t)th_llm_peak_pending(mock.llm)) : json_null();
    mock_stop(&mock);

    int cap = o.workers * o.max_inflight < o.steps ? o.workers * o.max_inflight : o.steps;
    double ideal = o.latency_ms > 0 ? cap / (o.latency_ms / 1000.0) : 0;
    double rate = seconds > 0 ? finished / seconds : 0;
    json_t *out = json_object();
    json_object_set_new(out, "benchmark", json_string("inflight"));
    json_object_set_new(out, "mock", json_string(o.mock));
    json_object_set_new(out, "steps", json_integer(o.steps));
    json_object_set_new(out, "finished", json_integer(finished));
    json_object_set_new(out, "not_succeeded", json_integer((json_int_t)failed));
    json_object_set_new(out, "mock_calls", json_integer((json_int_t)calls));
    json_object_set_new(out, "mock_connections", json_integer((json_int_t)conns));
    json_object_set_new(out, "calls_per_connection",
                        conns ? json_real(round(100.0 * calls / conns) / 100) : json_null());
    json_object_set_new(out, "flowd_cpu_us_per_call",
                        calls ? json_real(round(cpu * 1e6 / calls)) : json_null());
    json_object_set_new(out, "steps_per_s", json_real(round(rate * 100) / 100));
    json_object_set_new(out, "seconds", json_real(round(seconds * 1000) / 1000));
    json_object_set_new(out, "max_in_flight", peak);
    json_object_set_new(out, "peak_rss_mib", json_real(round(rss * 10) / 10));
    json_object_set_new(out, "flowd_cpu_s", json_real(round(cpu * 100) / 100));
    json_object_set_new(out, "postgres_cpu_s", json_real(round(pg_cpu * 100) / 100));
    json_object_set_new(out, "mock_cpu_s", json_real(round(mock_cpu * 100) / 100));
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    json_object_set_new(out, "ceiling_steps_per_s",
                        pg_cpu >= 0 && pg_cpu + mock_cpu > 0
                            ? json_real(round((double)cores * finished / (pg_cpu + mock_cpu)))
                            : json_null());
    json_object_set_new(out, "ideal_steps_per_s", json_real(round(ideal)));
    json_object_set_new(out, "workers", json_integer(o.workers));
    json_object_set_new(out, "max_inflight_per_worker", json_integer(o.max_inflight));
    json_object_set_new(out, "batch", json_integer(o.batch));
    json_object_set_new(out, "latency_ms", json_integer(o.latency_ms));
    json_object_set_new(out, "cores", json_integer(cores));
    char *s = json_dumps(out, JSON_COMPACT);
    printf("%s\n", s);
    free(s);
    json_decref(out);
    PQfinish(c);
    bench_db_drop(admin, dbname);
    PQfinish(admin);
    free(db);
    return finished >= o.steps ? 0 : 1;
}
