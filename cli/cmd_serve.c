/* cli/cmd_serve.c: flowd serve — the database (embedded unless one is named), the workers, and a
 * clean stop on SIGINT/SIGTERM. */
#include <dirent.h>
#include <ev.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "api/api.h"
#include "cli/cli.h"
#include "engine/duration.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/worker.h"
#include "steps/provider.h"

static void serve_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)revents;
    log_info("stopping", " signal=%d", w->signum);
    ev_break(loop, EVBREAK_ALL);
}

/* Registers every *.json definition in dir for the default tenant, in name order. */
static eng_rc serve_register_dir(cli_env *env, const char *dir, eng_err *err)
{
    long long tenant = cli_default_tenant(env, err);
    if (!tenant)
        return err->rc;
    struct dirent **names = NULL;
    int n = scandir(dir, &names, NULL, alphasort);
    if (n < 0)
        return eng_err_set(err, ENG_ESYS, "cannot read workflows folder %s", dir);
    eng_rc rc = ENG_OK;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(names[i]->d_name);
        if (rc == ENG_OK && len > 5 && strcmp(names[i]->d_name + len - 5, ".json") == 0) {
            char *path = eng_xasprintf("%s/%s", dir, names[i]->d_name);
            long long id;
            int version = 0;
            rc = cli_register_file(env, tenant, path, &id, &version, err);
            if (rc == ENG_OK)
                log_info("workflow registered", " file=%s version=%d", path, version);
            free(path);
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

/* Puts the database's clock in this server's mode; a server in normal mode refuses a clock that
 * test mode left ahead of real time (runs would be stamped in the future and sending windows
 * would open at the wrong hours). */
static eng_rc serve_clock_start(cli_env *env, bool test_clock, eng_err *err)
{
    const char *params[] = {test_clock ? "true" : "false"};
    PGresult *res = cli_exec(env, "SELECT flowd_clock_start($1)", 1, params, err);
    if (!res)
        return err->rc;
    json_t *r = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    PQclear(res);
    log_info("engine clock", " test_mode=%s offset_ms=%lld", test_clock ? "true" : "false",
             (long long)json_integer_value(json_object_get(r, "offset_ms")));
    json_decref(r);
    return ENG_OK;
}

static int serve_int_opt(const char *name, const char *v, int min, int max, int *out)
{
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < min || n > max) {
        fprintf(stderr, "flowd: --%s: \"%s\" is not a number in %d..%d\n", name, v, min, max);
        return -1;
    }
    *out = (int)n;
    return 0;
}

int cli_cmd_serve(cli_env *env, int argc, char **argv)
{
    static const struct option longopts[] = {{"workers", required_argument, NULL, 'w'},
                                             {"max-inflight", required_argument, NULL, 'm'},
                                             {"batch", required_argument, NULL, 'b'},
                                             {"lease-ms", required_argument, NULL, 'l'},
                                             {"listen", required_argument, NULL, 'L'},
                                             {"role", required_argument, NULL, 'r'},
                                             {"api-threads", required_argument, NULL, 'a'},
                                             {"workflows", required_argument, NULL, 'W'},
                                             {"retention", required_argument, NULL, 'R'},
                                             {"sse-heartbeat", required_argument, NULL, 'H'},
                                             {"allow-private-targets", no_argument, NULL, 'P'},
                                             {"max-connections", required_argument, NULL, 'C'},
                                             {"max-connections-per-client", required_argument,
                                              NULL, 'c'},
                                             {"request-timeout", required_argument, NULL, 'T'},
                                             {NULL, 0, NULL, 0}};
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int workers = cores > 0 ? (int)cores : 2, max_inflight = 1000, batch = 500, lease_ms = 30000;
    int api_threads = 2;
    const char *listen = "127.0.0.1:8080", *role = "all", *workflows_dir = NULL;
    int64_t retention_ms = 0; /* keep finished runs unless --retention says otherwise */
    int max_conns = 0, max_conns_per_client = 0;
    int64_t request_timeout_ms = 0;
    int64_t heartbeat_ms = 15000;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "w:m:b:l:L:r:a:W:R:PC:c:T:H:", longopts, NULL)) != -1) {
        int bad = 0;
        switch (ch) {
        case 'w': bad = serve_int_opt("workers", optarg, 1, 256, &workers); break;
        case 'm': bad = serve_int_opt("max-inflight", optarg, 1, 100000, &max_inflight); break;
        case 'b': bad = serve_int_opt("batch", optarg, 1, 5000, &batch); break;
        case 'l': bad = serve_int_opt("lease-ms", optarg, 1000, 3600000, &lease_ms); break;
        case 'L': listen = optarg; break;
        case 'r': role = optarg; break;
        case 'a': bad = serve_int_opt("api-threads", optarg, 1, 64, &api_threads); break;
        case 'W': workflows_dir = optarg; break;
        case 'P': prov_allow_private_targets(true); break;
        case 'C': bad = serve_int_opt("max-connections", optarg, 1, 1000000, &max_conns); break;
        case 'c':
            bad = serve_int_opt("max-connections-per-client", optarg, 1, 1000000,
                                &max_conns_per_client);
            break;
        case 'T': {
            eng_err derr;
            if (eng_duration_parse(optarg, &request_timeout_ms, &derr) != ENG_OK ||
                request_timeout_ms < 100) {
                fprintf(stderr, "flowd: --request-timeout: %s\n",
                        request_timeout_ms < 100 ? "at least 100ms" : derr.msg);
                return 2;
            }
            break;
        }
        case 'R': {
            eng_err derr;
            if (eng_duration_parse(optarg, &retention_ms, &derr) != ENG_OK) {
                fprintf(stderr, "flowd: --retention: %s\n", derr.msg);
                return 2;
            }
            break;
        }
        case 'H': {
            eng_err derr;
            if (eng_duration_parse(optarg, &heartbeat_ms, &derr) != ENG_OK || heartbeat_ms < 1000) {
                fprintf(stderr, "flowd: --sse-heartbeat: \"%s\" is not a duration of 1s or more\n",
                        optarg);
                return 2;
            }
            break;
        }
        default: return 2;
        }
        if (bad)
            return 2;
    }
    bool run_api = strcmp(role, "all") == 0 || strcmp(role, "api") == 0;
    bool run_workers = strcmp(role, "all") == 0 || strcmp(role, "worker") == 0;
    if (!run_api && !run_workers) {
        fprintf(stderr, "flowd: --role: \"%s\" is not one of all, api, worker\n", role);
        return 2;
    }
    eng_err err;
    if (cli_env_open(env, &err) != ENG_OK) {
        int status = cli_fail(&err);
        cli_env_close(env);
        return status;
    }
    bool test_clock = getenv("FLOWD_TEST_CLOCK") && strcmp(getenv("FLOWD_TEST_CLOCK"), "1") == 0;
    if (serve_clock_start(env, test_clock, &err) != ENG_OK ||
        (workflows_dir && serve_register_dir(env, workflows_dir, &err) != ENG_OK)) {
        int status = cli_fail(&err);
        cli_env_close(env);
        return status;
    }
    signal(SIGPIPE, SIG_IGN);
    /* thousands of outbound calls in flight need as many descriptors as the system allows us */
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nofile);
    }
    /* The API's connections get what the workers cannot need (a provider connection per step in
     * flight, their database connections, the API's own pools and some slack), never less than a
     * quarter of the descriptors: a flood of clients must not starve the engine. */
    if (!max_conns && getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY) {
        long total = (long)nofile.rlim_cur;
        long engine = (run_workers ? (long)workers * (max_inflight + 16) : 0) + 256;
        max_conns = (int)(total - engine > total / 4 ? total - engine : total / 4);
    }
    struct ev_loop *loop = EV_DEFAULT;
    ev_signal sigint, sigterm;
    ev_signal_init(&sigint, serve_signal_cb, SIGINT);
    ev_signal_init(&sigterm, serve_signal_cb, SIGTERM);
    ev_signal_start(loop, &sigint);
    ev_signal_start(loop, &sigterm);

    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    api_service *api = NULL;
    if (run_api) {
        api_service_opts ao = {.conninfo = env->conninfo, .listen = listen, .threads = api_threads,
                               .test_clock = test_clock,
                               .max_conns = max_conns,
                               .max_conns_per_client = max_conns_per_client,
                               .request_timeout_s = (double)request_timeout_ms / 1000.0,
                               .sse_heartbeat_s = (double)heartbeat_ms / 1000.0};
        api = api_service_start(&ao, &err);
        if (!api) {
            int status = cli_fail(&err);
            cli_env_close(env);
            return status;
        }
    }
    if (!run_workers)
        workers = 0;
    eng_worker **pool = eng_xcalloc((size_t)(workers ? workers : 1), sizeof *pool);
    for (int i = 0; i < workers; i++) {
        char *owner = eng_xasprintf("%s:%d:%d", host, (int)getpid(), i);
        eng_worker_opts wo = {.conninfo = env->conninfo, .owner = owner,
                              .max_inflight = max_inflight, .batch = batch,
                              .lease_ms = lease_ms, .reaper = i == 0,
                              .retention_ms = retention_ms};
        pool[i] = eng_worker_start(&wo);
        free(owner);
    }
    log_info("serving", " role=%s workers=%d database=%s", role, workers,
             env->embedded ? "embedded" : "external");
    ev_run(loop, 0);
    api_service_stop(api);
    for (int i = 0; i < workers; i++)
        eng_worker_stop(pool[i], 10.0);
    free(pool);
    cli_env_close(env);
    log_info("stopped", NULL);
    return 0;
}
