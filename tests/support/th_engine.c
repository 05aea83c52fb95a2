/* tests/support/th_engine.c: driving the queue engine from tests (see th_engine.h). */
#include "tests/support/th_engine.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/buf.h"
#include "engine/mem.h"
#include "engine/migrate.h"
#include "engine/wf_def.h"
#include "engine/worker.h"
#include "tests/support/th.h"

extern char **environ;

static PGconn *eng_connect(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "th_engine: cannot connect: %s", PQerrorMessage(c));
        abort();
    }
    return c;
}

/* Runs a parameterized statement that must succeed; returns its result (caller clears). */
static PGresult *eng_exec(PGconn *c, const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        fprintf(stderr, "th_engine: %s\n%s", sql, PQerrorMessage(c));
        abort();
    }
    return r;
}

/* Applies the embedded migrations to db and creates the default tenant. */
static void engine_db_setup(const char *db, long long *tenant)
{
    size_t n;
    const eng_migration *migs = eng_migrations_embedded(&n);
    eng_err err = {0};
    eng_migrate_opts opts = eng_migrate_embedded_opts();
    if (eng_migrate_up(db, migs, n, &opts, NULL, &err) != ENG_OK) {
        fprintf(stderr, "th_engine: migrate: %s\n", err.msg);
        abort();
    }
    PGconn *c = eng_connect(db);
    const char *key[] = {"fd_test_key_not_secret"};
    PQclear(eng_exec(c, "SELECT flowd_bootstrap($1)", 1, key));
    /* as `flowd serve` with FLOWD_TEST_CLOCK=1 would: tests move the clock */
    PQclear(eng_exec(c, "SELECT flowd_clock_start(true)", 0, NULL));
    PGresult *r = eng_exec(c, "SELECT id FROM tenants WHERE name = 'default'", 0, NULL);
    if (tenant)
        *tenant = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    PQfinish(c);
}

char *th_engine_db(const char *prefix, long long *tenant)
{
    char *db = th_pg_new_db(prefix);
    engine_db_setup(db, tenant);
    return db;
}

char *th_engine_db_at(const char *pgdir, const char *prefix, long long *tenant)
{
    static int counter;
    char *admin = eng_xasprintf("host=%s dbname=postgres user=postgres", pgdir);
    PGconn *c = eng_connect(admin);
    free(admin);
    char *name = eng_xasprintf("%s_%d_%d", prefix, (int)getpid(), ++counter);
    /* CREATE DATABASE takes no parameters: quote the name as an identifier */
    char *ident = PQescapeIdentifier(c, name, strlen(name));
    char *sql = eng_xasprintf("CREATE DATABASE %s", ident);
    PQclear(eng_exec(c, sql, 0, NULL));
    PQfreemem(ident);
    free(sql);
    PQfinish(c);
    char *db = eng_xasprintf("host=%s dbname=%s user=postgres", pgdir, name);
    free(name);
    engine_db_setup(db, tenant);
    return db;
}

long long th_engine_register(const char *conninfo, long long tenant, const char *def_json)
{
    json_error_t jerr;
    json_t *doc = json_loads(def_json, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        fprintf(stderr, "th_engine: definition is not JSON: %s\n", jerr.text);
        abort();
    }
    json_t *def = NULL;
    eng_err err = {0};
    if (wf_def_compile(doc, &def, &err) != ENG_OK) {
        fprintf(stderr, "th_engine: definition refused: %s: %s\n", err.field, err.msg);
        abort();
    }
    char *digest = wf_def_digest(doc);
    char *source = json_dumps(doc, JSON_COMPACT);
    char *defs = json_dumps(def, JSON_COMPACT);
    char tenant_s[24];
    snprintf(tenant_s, sizeof tenant_s, "%lld", tenant);
    const char *params[] = {tenant_s, json_string_value(json_object_get(def, "name")), digest,
                            source, defs};
    PGconn *c = eng_connect(conninfo);
    PGresult *r = eng_exec(c, "SELECT id FROM flowd_register_workflow($1, $2, $3, $4, $5)", 5, params);
    long long id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    PQfinish(c);
    free(digest);
    free(source);
    free(defs);
    json_decref(def);
    json_decref(doc);
    return id;
}

long long th_engine_enqueue(const char *conninfo, long long tenant, long long workflow, int n,
                            const char *input_json, int batch)
{
    if (batch <= 0)
        batch = n;
    const char *input = input_json ? input_json : "{}";
    size_t ilen = strlen(input);
    char tenant_s[24], wf_s[24];
    snprintf(tenant_s, sizeof tenant_s, "%lld", tenant);
    snprintf(wf_s, sizeof wf_s, "%lld", workflow);
    PGconn *c = eng_connect(conninfo);
    long long last = 0;
    for (int done = 0; done < n;) {
        int k = n - done < batch ? n - done : batch;
        char *arr = eng_xmalloc((ilen + 1) * (size_t)k + 2);
        size_t off = 0;
        arr[off++] = '[';
        for (int i = 0; i < k; i++) {
            if (i)
                arr[off++] = ',';
            memcpy(arr + off, input, ilen);
            off += ilen;
        }
        arr[off++] = ']';
        arr[off] = '\0';
        const char *params[] = {tenant_s, wf_s, arr};
        PGresult *r = eng_exec(
            c, "SELECT max(run_id) FROM flowd_enqueue($1, $2, $3::jsonb, 0, NULL, NULL)", 3, params);
        last = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
        free(arr);
        done += k;
    }
    PQfinish(c);
    return last;
}

void th_engine_enqueue_phones(const char *conninfo, long long tenant, long long workflow, int n)
{
    PGconn *c = th_pgc_open(conninfo);
    for (int i = 0; i < n; i += 100) {
        int k_end = i + 100 < n ? i + 100 : n;
        char *inputs = eng_xstrdup("[");
        for (int k = i; k < k_end; k++) {
            char *next = eng_xasprintf("%s%s{\"n\": %d, \"phone\": \"+1555%07d\"}", inputs,
                                       k > i ? ", " : "", k, k);
            free(inputs);
            inputs = next;
        }
        char *arr = eng_xasprintf("%s]", inputs);
        assert_int_equal(th_pgc_ll(c, "SELECT count(*) FROM flowd_enqueue($1, $2, $3::jsonb, 0,"
                                      " NULL, NULL)",
                                   TH_P(th_num(tenant).s, th_num(workflow).s, arr)),
                         k_end - i);
        free(arr);
        free(inputs);
    }
    PQfinish(c);
}

bool th_engine_wait(const char *conninfo, const char *sql, double timeout_s)
{
    PGconn *c = eng_connect(conninfo);
    long long deadline = th_now_ms() + (long long)(timeout_s * 1000);
    bool ok = false;
    for (;;) {
        PGresult *r = eng_exec(c, sql, 0, NULL);
        ok = PQntuples(r) > 0 && PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (ok || th_now_ms() > deadline)
            break;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    PQfinish(c);
    return ok;
}

struct th_workers {
    int n;
    eng_worker **w;
};

th_workers *th_workers_start(const char *conninfo, int n, const char *owner_prefix, int batch,
                             int max_inflight, int lease_ms)
{
    th_workers *ws = eng_xcalloc(1, sizeof *ws);
    ws->n = n;
    ws->w = eng_xcalloc((size_t)n, sizeof *ws->w);
    for (int i = 0; i < n; i++) {
        char *owner = eng_xasprintf("%s-%d", owner_prefix, i);
        eng_worker_opts o = {.conninfo = conninfo, .owner = owner, .batch = batch,
                             .max_inflight = max_inflight, .lease_ms = lease_ms, .reaper = i == 0};
        ws->w[i] = eng_worker_start(&o);
        free(owner);
    }
    return ws;
}

void th_workers_stop(th_workers *ws)
{
    if (!ws)
        return;
    for (int i = 0; i < ws->n; i++)
        eng_worker_stop(ws->w[i], 5.0);
    free(ws->w);
    free(ws);
}

/* environ with env's overrides applied; the strings are borrowed, the array is new. */
static char **child_environ(const char *const *env)
{
    size_t n = 0, m = 0;
    while (environ[n])
        n++;
    while (env && env[m])
        m++;
    char **out = eng_xcalloc(n + m + 1, sizeof *out);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool replaced = false;
        for (size_t j = 0; j < m && !replaced; j++) {
            size_t len = strcspn(env[j], "=");
            replaced = strncmp(environ[i], env[j], len) == 0 && environ[i][len] == '=';
        }
        if (!replaced)
            out[k++] = environ[i];
    }
    for (size_t j = 0; j < m; j++)
        if (strchr(env[j], '='))
            out[k++] = (char *)env[j];
    out[k] = NULL;
    return out;
}

/* fork + execve of the flowd binary. Only async-signal-safe calls happen in the child, since the
 * parent may run worker threads. fds[0..2] become the child's stdin/stdout/stderr (-1: keep). */
static pid_t spawn_flowd(const char *const *argv, const char *const *env, const int fds[3])
{
    size_t argc = 0;
    while (argv[argc])
        argc++;
    char **args = eng_xcalloc(argc + 1, sizeof *args);
    args[0] = (char *)th_flowd_bin();
    for (size_t i = 1; i < argc; i++)
        args[i] = (char *)argv[i];
    char **envp = child_environ(env);
    pid_t pid = fork();
    if (pid < 0) {
        perror("th_engine: fork");
        abort();
    }
    if (pid == 0) {
        /* a test that fails half-way must not leave servers behind it */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (int i = 0; i < 3; i++)
            if (fds[i] >= 0 && dup2(fds[i], i) < 0)
                _exit(126);
        execve(args[0], args, envp);
        _exit(127);
    }
    free(args);
    free(envp);
    return pid;
}

pid_t th_serve_spawn(const char *conninfo, int workers, int lease_ms)
{
    char workers_s[16], lease_s[16];
    snprintf(workers_s, sizeof workers_s, "%d", workers);
    snprintf(lease_s, sizeof lease_s, "%d", lease_ms);
    const char *argv[] = {"flowd",   "--database", conninfo, "serve", "--role", "worker",
                          "--workers", workers_s,  lease_ms > 0 ? "--lease-ms" : NULL, lease_s,
                          NULL};
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    int fds[3] = {devnull, devnull, -1};
    static const char *const env[] = {"FLOWD_TEST_CLOCK=1", NULL}; /* keeps th_engine_db's mode */
    pid_t pid = spawn_flowd(argv, env, fds);
    close(devnull);
    return pid;
}

int th_serve_kill(pid_t pid, int sig)
{
    kill(pid, sig);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
}

static bool drain(int fd, eng_buf *b)
{
    char chunk[4096];
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n > 0) {
        if (eng_buf_append(b, chunk, (size_t)n) != ENG_OK) {
            fprintf(stderr, "th_engine: flowd printed more than 16 MiB\n");
            abort();
        }
        return true;
    }
    return n < 0 && errno == EINTR;
}

int th_flowd_run(const char *const *argv, const char *const *env, char **out, char **err)
{
    int po[2], pe[2];
    if (pipe2(po, O_CLOEXEC) != 0 || pipe2(pe, O_CLOEXEC) != 0) {
        perror("th_engine: pipe");
        abort();
    }
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int fds[3] = {devnull, po[1], pe[1]};
    pid_t pid = spawn_flowd(argv, env, fds);
    close(devnull);
    close(po[1]);
    close(pe[1]);
    eng_buf bo, be;
    eng_buf_init(&bo, 16u << 20);
    eng_buf_init(&be, 16u << 20);
    struct pollfd p[2] = {{.fd = po[0], .events = POLLIN}, {.fd = pe[0], .events = POLLIN}};
    int open_fds = 2;
    while (open_fds > 0) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("th_engine: poll");
            abort();
        }
        for (int i = 0; i < 2; i++) {
            if (p[i].fd >= 0 && p[i].revents) {
                if (!drain(p[i].fd, i == 0 ? &bo : &be)) {
                    close(p[i].fd);
                    p[i].fd = -1;
                    open_fds--;
                }
            }
        }
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    char *o = eng_buf_take(&bo, NULL), *e = eng_buf_take(&be, NULL);
    if (out)
        *out = o;
    else
        free(o);
    if (err)
        *err = e;
    else
        free(e);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ----------------------------------------------------------------------- private cluster -- */

int th_cluster_ctl(const th_cluster *c, const char *action)
{
    /* the server options must match tests/support/pg_fixture.sh start; as root the server runs
     * as "postgres", as there */
    char *cmd = eng_xasprintf(
        "bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1); "
        "if command -v pg_ctl >/dev/null 2>&1; then bindir=$(dirname \"$(command -v pg_ctl)\"); "
        "fi; "
        "as=; if [ \"$(id -u)\" = 0 ]; then as='runuser -u postgres --'; fi; "
        "$as \"$bindir/pg_ctl\" -D '%s/data' -l '%s/server.log' -w -t 60 -m fast %s "
        "-o \"-c listen_addresses='' -c unix_socket_directories='%s' -c max_connections=300"
        " -c shared_buffers=256MB\" >/dev/null",
        c->dir, c->dir, action, c->dir);
    int st = system(cmd);
    free(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int cluster_fixture(const th_cluster *c, const char *action)
{
    char *cmd = eng_xasprintf("'%s/tests/support/pg_fixture.sh' %s '%s' >/dev/null",
                              th_source_dir(), action, c->dir);
    int st = system(cmd);
    free(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A test process that dies before its teardown must not leave its cluster running (it held CPU,
 * memory and sockets for later runs): a watcher stops it once this process is gone. */
static void cluster_watch(const th_cluster *c)
{
    char *cmd = eng_xasprintf("'%s/tests/support/pg_fixture.sh' watch '%s' %ld",
                              th_source_dir(), c->dir, (long)getpid());
    if (system(cmd) != 0)
        fprintf(stderr, "cannot watch the cluster in %s: stop it by hand if this test dies\n",
                c->dir);
    free(cmd);
}

th_cluster *th_cluster_start(void)
{
    th_cluster *c = eng_xcalloc(1, sizeof *c);
    snprintf(c->dir, sizeof c->dir, "/tmp/flowd-cluster-XXXXXX");
    if (!mkdtemp(c->dir) || cluster_fixture(c, "start") != 0) {
        fprintf(stderr, "cannot start a private cluster in %s\n", c->dir);
        free(c);
        return NULL;
    }
    cluster_watch(c);
    return c;
}

th_cluster *th_cluster_standby(const th_cluster *primary)
{
    th_cluster *c = eng_xcalloc(1, sizeof *c);
    snprintf(c->dir, sizeof c->dir, "/tmp/flowd-standby-XXXXXX");
    if (!mkdtemp(c->dir)) {
        free(c);
        return NULL;
    }
    char *cmd = eng_xasprintf(
        "bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1); "
        "if command -v pg_basebackup >/dev/null 2>&1; then "
        "bindir=$(dirname \"$(command -v pg_basebackup)\"); fi; "
        "as=; if [ \"$(id -u)\" = 0 ]; then as='runuser -u postgres --'; chown postgres: '%s'; fi; "
        "$as \"$bindir/pg_basebackup\" -h '%s' -U postgres -D '%s/data' -R -X stream -c fast",
        c->dir, primary->dir, c->dir);
    int st = system(cmd);
    free(cmd);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || th_cluster_ctl(c, "start") != 0) {
        fprintf(stderr, "cannot start a standby of %s in %s\n", primary->dir, c->dir);
        cluster_fixture(c, "stop");
        free(c);
        return NULL;
    }
    chmod(c->dir, 0777);
    cluster_watch(c);
    return c;
}

int th_cluster_stop(th_cluster *c)
{
    if (!c)
        return 0;
    int rc = cluster_fixture(c, "stop");
    free(c);
    return rc;
}

int th_cluster_setup(void **state)
{
    th_cluster *c = th_cluster_start();
    *state = c;
    return c ? 0 : -1;
}

int th_cluster_teardown(void **state)
{
    return th_cluster_stop(*state) == 0 ? 0 : -1;
}
