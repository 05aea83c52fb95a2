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
#include "engine/procreg.h"
#include "engine/secret.h"
#include "engine/webhook.h"
#include "engine/worker.h"
#include "steps/provider.h"

static void serve_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)revents;
    log_info("stopping", LOG_I("signal", w->signum));
    ev_break(loop, EVBREAK_ALL);
}

/* Puts "PATH: " (and the field, which then moves into the message) in front of err's message. */
static void serve_err_prefix(eng_err *err, const char *path)
{
    char *msg = err->field[0] ? eng_xasprintf("%s: %s: %s", path, err->field, err->msg)
                              : eng_xasprintf("%s: %s", path, err->msg);
    snprintf(err->msg, sizeof err->msg, "%s", msg);
    err->field[0] = '\0';
    free(msg);
}

/* Registers every *.json definition in dir for the default tenant, in name order, all or none: every
 * file is compiled first, and the folder is registered in one transaction, so a bad file (named in
 * the error) leaves nothing of the folder registered. */
static eng_rc serve_register_dir(cli_env *env, const char *dir, eng_err *err)
{
    long long tenant = cli_default_tenant(env, err);
    if (!tenant)
        return err->rc;
    struct dirent **names = NULL;
    int n = scandir(dir, &names, NULL, alphasort);
    if (n < 0)
        return eng_err_set(err, ENG_ESYS, "cannot read the workflows folder %s", dir);
    PGresult *res = cli_exec(env, "BEGIN", 0, NULL, err);
    eng_rc rc = res ? ENG_OK : err->rc;
    PQclear(res);
    int registered = 0;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(names[i]->d_name);
        if (rc == ENG_OK && len > 5 && strcmp(names[i]->d_name + len - 5, ".json") == 0) {
            char *path = eng_xasprintf("%s/%s", dir, names[i]->d_name);
            long long id;
            int version = 0;
            rc = cli_register_file(env, tenant, path, &id, &version, err);
            if (rc == ENG_OK) {
                log_info("workflow registered", LOG_S("file", path), LOG_I("version", version));
                registered++;
            } else if (!strstr(err->msg, path)) {
                /* name the file: the definition's own errors only name the field */
                serve_err_prefix(err, path);
            }
            free(path);
        }
        free(names[i]);
    }
    free(names);
    if (rc == ENG_OK) {
        res = cli_exec(env, "COMMIT", 0, NULL, err);
        rc = res ? ENG_OK : err->rc;
        PQclear(res);
    } else {
        PQclear(cli_exec(env, "ROLLBACK", 0, NULL, NULL));
        char *msg = eng_xasprintf("%s (no workflow of %s was registered)", err->msg, dir);
        snprintf(err->msg, sizeof err->msg, "%s", msg);
        free(msg);
    }
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
    log_info("engine clock", LOG_S("test_mode", test_clock ? "true" : "false"),
             LOG_I("offset_ms", json_integer_value(json_object_get(r, "offset_ms"))));
    json_decref(r);
    return ENG_OK;
}

/* The options of flowd serve, each with its environment form. */
enum serve_opt { SO_WORKERS, SO_MAX_INFLIGHT, SO_BATCH, SO_LEASE_MS, SO_LISTEN, SO_ROLE, SO_API_THREADS,
                 SO_WORKFLOWS, SO_RETENTION, SO_PRIVATE, SO_MAX_CONNS, SO_MAX_CONNS_PER_CLIENT,
                 SO_REQUEST_TIMEOUT, SO_SSE_HEARTBEAT, SO_READ_DATABASE, SO_READ_MAX_LAG, SO_N };

static const struct {
    const char *flag;
    const char *env;
    bool has_arg;
} serve_opts[SO_N] = {
    [SO_WORKERS] = {"workers", "FLOWD_WORKERS", true},
    [SO_MAX_INFLIGHT] = {"max-inflight", "FLOWD_MAX_INFLIGHT", true},
    [SO_BATCH] = {"batch", "FLOWD_BATCH", true},
    [SO_LEASE_MS] = {"lease-ms", "FLOWD_LEASE_MS", true},
    [SO_LISTEN] = {"listen", "FLOWD_LISTEN", true},
    [SO_ROLE] = {"role", "FLOWD_ROLE", true},
    [SO_API_THREADS] = {"api-threads", "FLOWD_API_THREADS", true},
    [SO_WORKFLOWS] = {"workflows", "FLOWD_WORKFLOWS", true},
    [SO_RETENTION] = {"retention", "FLOWD_RETENTION", true},
    [SO_PRIVATE] = {"allow-private-targets", "FLOWD_ALLOW_PRIVATE_TARGETS", false},
    [SO_MAX_CONNS] = {"max-connections", "FLOWD_MAX_CONNECTIONS", true},
    [SO_MAX_CONNS_PER_CLIENT] = {"max-connections-per-client", "FLOWD_MAX_CONNECTIONS_PER_CLIENT",
                                 true},
    [SO_REQUEST_TIMEOUT] = {"request-timeout", "FLOWD_REQUEST_TIMEOUT", true},
    [SO_SSE_HEARTBEAT] = {"sse-heartbeat", "FLOWD_SSE_HEARTBEAT", true},
    [SO_READ_DATABASE] = {"read-database", "FLOWD_READ_DATABASE_URL", true},
    [SO_READ_MAX_LAG] = {"read-max-lag", "FLOWD_READ_MAX_LAG", true},
};

typedef struct serve_conf {
    int workers, max_inflight, batch, lease_ms, api_threads;
    const char *listen, *role, *workflows_dir;
    int64_t retention_ms; /* 0: keep finished runs */
    bool allow_private;
    int max_conns, max_conns_per_client; /* 0: derived from the descriptor limit */
    int64_t request_timeout_ms;          /* 0: the API's default */
    int64_t sse_heartbeat_ms;            /* 0: the API's default (15 s) */
    const char *read_database;           /* a streaming standby for the API's polls, or NULL */
    int64_t read_max_lag_ms;             /* 0: the API's default (1 s) */
} serve_conf;

static int serve_int_opt(const char *name, const char *v, int min, int max, int *out)
{
    char *end;
    long n = strtol(v, &end, 10);
    if (!*v || *end || n < min || n > max) {
        fprintf(stderr, "flowd: %s: \"%s\" is not a number in %d..%d\n", name, v, min, max);
        return -1;
    }
    *out = (int)n;
    return 0;
}

/* HOST:PORT with a port in 0..65535 (0: any free port) and a non-empty host. */
static int serve_listen_opt(const char *name, const char *v)
{
    const char *colon = strrchr(v, ':');
    const char *port = colon ? colon + 1 : "";
    char *end;
    long p = strtol(port, &end, 10);
    if (!colon || colon == v || !*port || *end || p < 0 || p > 65535) {
        fprintf(stderr, "flowd: %s: \"%s\" is not HOST:PORT with a port in 0..65535\n", name, v);
        return -1;
    }
    return 0;
}

/* Applies one option; name is how the user wrote it ("--workers" or "FLOWD_WORKERS"). */
static int serve_apply(serve_conf *c, enum serve_opt o, const char *name, const char *v)
{
    switch (o) {
    case SO_WORKERS: return serve_int_opt(name, v, 1, 256, &c->workers);
    case SO_MAX_INFLIGHT: return serve_int_opt(name, v, 1, 100000, &c->max_inflight);
    case SO_BATCH: return serve_int_opt(name, v, 1, 5000, &c->batch);
    case SO_LEASE_MS: return serve_int_opt(name, v, 1000, 3600000, &c->lease_ms);
    case SO_API_THREADS: return serve_int_opt(name, v, 1, 64, &c->api_threads);
    case SO_LISTEN:
        c->listen = v;
        return serve_listen_opt(name, v);
    case SO_ROLE:
        c->role = v;
        if (strcmp(v, "all") && strcmp(v, "api") && strcmp(v, "worker")) {
            fprintf(stderr, "flowd: %s: \"%s\" is not one of all, api, worker\n", name, v);
            return -1;
        }
        return 0;
    case SO_WORKFLOWS: c->workflows_dir = v; return 0;
    case SO_RETENTION: {
        eng_err derr;
        if (eng_duration_parse(v, &c->retention_ms, &derr) != ENG_OK) {
            fprintf(stderr, "flowd: %s: %s\n", name, derr.msg);
            return -1;
        }
        return 0;
    }
    case SO_PRIVATE:
        if (v && strcmp(v, "1") && strcmp(v, "0") && strcmp(v, "true") && strcmp(v, "false")) {
            fprintf(stderr, "flowd: %s: \"%s\" is not 1, 0, true or false\n", name, v);
            return -1;
        }
        c->allow_private = !v || strcmp(v, "1") == 0 || strcmp(v, "true") == 0;
        return 0;
    case SO_MAX_CONNS: return serve_int_opt(name, v, 1, 1000000, &c->max_conns);
    case SO_MAX_CONNS_PER_CLIENT:
        return serve_int_opt(name, v, 1, 1000000, &c->max_conns_per_client);
    case SO_REQUEST_TIMEOUT: {
        eng_err derr;
        if (eng_duration_parse(v, &c->request_timeout_ms, &derr) != ENG_OK ||
            c->request_timeout_ms < 100) {
            fprintf(stderr, "flowd: %s: %s\n", name,
                    c->request_timeout_ms < 100 ? "at least 100ms" : derr.msg);
            return -1;
        }
        return 0;
    }
    case SO_SSE_HEARTBEAT: {
        eng_err derr;
        if (eng_duration_parse(v, &c->sse_heartbeat_ms, &derr) != ENG_OK ||
            c->sse_heartbeat_ms < 1000) {
            fprintf(stderr, "flowd: %s: %s\n", name,
                    c->sse_heartbeat_ms < 1000 ? "at least 1s" : derr.msg);
            return -1;
        }
        return 0;
    }
    case SO_READ_DATABASE: c->read_database = v; return 0;
    case SO_READ_MAX_LAG: {
        eng_err derr;
        if (eng_duration_parse(v, &c->read_max_lag_ms, &derr) != ENG_OK ||
            c->read_max_lag_ms < 10) {
            fprintf(stderr, "flowd: %s: %s\n", name,
                    c->read_max_lag_ms < 10 ? "at least 10ms" : derr.msg);
            return -1;
        }
        return 0;
    }
    case SO_N: break;
    }
    return -1;
}

/* Environment first, then the flags (which win). Returns 0, or the exit status 2. */
static int serve_parse(serve_conf *c, int argc, char **argv)
{
    for (int o = 0; o < SO_N; o++) {
        const char *v = getenv(serve_opts[o].env);
        if (v && *v && serve_apply(c, (enum serve_opt)o, serve_opts[o].env, v) != 0)
            return 2;
    }
    struct option longopts[SO_N + 1];
    for (int o = 0; o < SO_N; o++)
        longopts[o] = (struct option){serve_opts[o].flag,
                                      serve_opts[o].has_arg ? required_argument : no_argument, NULL,
                                      o};
    longopts[SO_N] = (struct option){NULL, 0, NULL, 0};
    int ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        if (ch == '?' || ch == ':') {
            const char *what = argv[optind - 1];
            fprintf(stderr, "flowd: serve: %s \"%s\"\n",
                    ch == ':' ? "missing value for" : "unknown option", what);
            cli_command_usage_error("serve");
            return 2;
        }
        char name[64];
        snprintf(name, sizeof name, "--%s", serve_opts[ch].flag);
        if (serve_apply(c, (enum serve_opt)ch, name, optarg) != 0)
            return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "flowd: serve: unexpected argument \"%s\"\n", argv[optind]);
        cli_command_usage_error("serve");
        return 2;
    }
    return 0;
}

int cli_cmd_serve(cli_env *env, int argc, char **argv)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    serve_conf conf = {.workers = cores > 0 ? (int)cores : 2,
                       .max_inflight = ENG_WORKER_DEFAULT_MAX_INFLIGHT,
                       .batch = ENG_WORKER_DEFAULT_BATCH, .lease_ms = ENG_WORKER_DEFAULT_LEASE_MS,
                       .api_threads = 2, .listen = "127.0.0.1:8080", .role = "all"};
    int bad = serve_parse(&conf, argc, argv);
    if (bad)
        return bad;
    prov_allow_private_targets(conf.allow_private);
    eng_err err;
    /* a malformed key is refused here, not discovered when the first secret is stored */
    if (sec_reload(&err) != ENG_OK)
        return cli_fail(&err);
    int workers = conf.workers, max_inflight = conf.max_inflight, batch = conf.batch;
    int lease_ms = conf.lease_ms, api_threads = conf.api_threads;
    const char *listen = conf.listen, *role = conf.role, *workflows_dir = conf.workflows_dir;
    int64_t retention_ms = conf.retention_ms;
    int max_conns = conf.max_conns;
    bool run_api = strcmp(role, "all") == 0 || strcmp(role, "api") == 0;
    bool run_workers = strcmp(role, "all") == 0 || strcmp(role, "worker") == 0;
    if (cli_env_open(env, true, &err) != ENG_OK) {
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
                               .max_conns_per_client = conf.max_conns_per_client,
                               .request_timeout_s = (double)conf.request_timeout_ms / 1000.0,
                               .sse_heartbeat_s = (double)conf.sse_heartbeat_ms / 1000.0,
                               .read_conninfo = conf.read_database,
                               .read_max_lag_s = (double)conf.read_max_lag_ms / 1000.0};
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
    /* outbound webhooks go out from every process that works the queue */
    eng_webhooks *webhooks = NULL;
    if (workers) {
        eng_webhook_opts who = {.conninfo = env->conninfo, .public_only = !conf.allow_private};
        webhooks = eng_webhooks_start(&who);
    }
    /* the API's bound address: the listen host with the port it got */
    char *bound = NULL;
    if (api) {
        const char *colon = strrchr(listen, ':');
        bound = eng_xasprintf("%.*s:%d", colon ? (int)(colon - listen) : (int)strlen(listen),
                              listen, api_service_port(api));
    }
    eng_procreg_opts ro = {.conninfo = env->conninfo, .host = host, .pid = (int)getpid(),
                           .version = FLOWD_VERSION, .role = role, .listen = bound,
                           .workers = workers, .api_threads = api ? api_threads : 0};
    eng_procreg *registry = eng_procreg_start(loop, &ro);
    free(bound);
    log_info("serving", LOG_S("role", role), LOG_I("workers", workers),
             LOG_S("database", env->embedded ? "embedded" : "external"));
    ev_run(loop, 0);
    api_service_stop(api);
    for (int i = 0; i < workers; i++)
        eng_worker_stop(pool[i], 10.0);
    eng_webhooks_stop(webhooks, 5.0);
    eng_procreg_stop(registry, 2.0);
    free(pool);
    cli_env_close(env);
    log_info("stopped");
    return 0;
}
