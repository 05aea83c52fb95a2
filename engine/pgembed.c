/* engine/pgembed.c: the embedded PostgreSQL launcher (see pgembed.h).
 *
 * Start-up sequence, all under an flock on DIR/flowd.lock so that concurrent starters on one DIR
 * take turns (the lock fd is close-on-exec, so the postmaster never inherits it):
 *   1. ping the socket in DIR: a server that answers (or is starting up) is used as is, not owned,
 *      unless DIR/flowd.owner names a process that is gone (a flowd killed with -9): that server
 *      is adopted, so this process stops it as its starter would have;
 *   2. else initdb into DIR/pg.tmp and rename it to DIR/pg (a crash mid-initdb leaves only pg.tmp,
 *      which the next start removes), appending our settings to postgresql.conf;
 *   3. clear pid files whose process is gone (or is a zombie, or is no postgres at all: a pid
 *      reused after a reboot would make the postmaster refuse to start), then pg_ctl start -w;
 *   4. create the "flowd" database when missing.
 * The socket directory in postgresql.conf is '..' (relative to the cluster directory, which the
 * postmaster makes its working directory), so the conf holds no absolute path and DIR can move.
 *
 * Child processes (initdb, pg_ctl) are forked and exec'd directly, never through a shell; as root the
 * child drops to the `postgres` user (setgroups/setgid/setuid) before exec. Everything the child
 * needs is prepared before fork, so only async-signal-safe calls run between fork and exec. */
#include "engine/pgembed.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <libpq-fe.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/log.h"
#include "engine/mem.h"

#define PGEMBED_PORT "5432"
#define PGEMBED_SOCKET_NAME "/.s.PGSQL." PGEMBED_PORT
#define PGEMBED_TIMEOUT_S 60 /* pg_ctl -t, and how long we wait for a server that is starting */
#define PGEMBED_MAX_GROUPS 64

/* Appended once to the cluster's postgresql.conf at initdb. */
static const char pgembed_conf[] =
    "\n# flowd: embedded cluster settings (appended by flowd at initdb)\n"
    "listen_addresses = ''\n"
    "unix_socket_directories = '..'    # the flowd data folder: parent of the cluster directory\n"
    "unix_socket_permissions = 0700\n"
    "port = " PGEMBED_PORT "\n"
    "max_connections = 200\n"
    "shared_buffers = 128MB\n"
    "fsync = on\n"
    "synchronous_commit = on\n"
    "log_min_messages = warning\n";

extern char **environ;

struct eng_pgembed {
    char *dir;      /* absolute data folder; the socket lives here */
    char *pgdata;   /* dir/pg: the cluster */
    char *logpath;  /* dir/postgres.log */
    char *bindir;   /* where initdb and pg_ctl are */
    char *conninfo; /* the flowd database */
    bool owned;     /* this handle started the server, so stop stops it */
    bool drop;      /* running as root: children become uid/gid below */
    uid_t uid;
    gid_t gid;
    gid_t groups[PGEMBED_MAX_GROUPS];
    int ngroups;
};

/* ---- paths ------------------------------------------------------------------------------------ */

static eng_rc pgembed_mkdirs(const char *path, eng_err *err)
{
    char *p = eng_xstrdup(path);
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        /* Parents get the usual 0755; the data folder itself is tightened later. */
        if (mkdir(p, c ? 0755 : 0700) != 0 && errno != EEXIST) {
            eng_rc rc = eng_err_set(err, ENG_ESYS, "cannot create %s: %s", p, strerror(errno));
            free(p);
            return rc;
        }
        *s = c;
        if (!c)
            break;
    }
    free(p);
    return ENG_OK;
}

/* Resolves data_dir to an absolute path (creating it when create) and checks it is usable. */
static eng_rc pgembed_resolve(const char *data_dir, bool create, char **out, eng_err *err)
{
    *out = NULL;
    if (!data_dir || !*data_dir)
        return eng_err_set(err, ENG_EINVAL, "data directory is empty");
    size_t max = sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1 - strlen(PGEMBED_SOCKET_NAME);
    /* Refuse before creating anything when the path is plainly too long (no "." or ".." parts
     * that resolving could shorten); the resolved path is checked again below. */
    if (!strstr(data_dir, "/.") && data_dir[0] != '.') {
        char cwd[PATH_MAX];
        size_t len = strlen(data_dir);
        if (data_dir[0] != '/' && getcwd(cwd, sizeof cwd))
            len += strlen(cwd) + 1;
        if (len > max)
            return eng_err_set(err, ENG_EINVAL,
                               "data directory path is too long for a unix socket: %zu bytes, at "
                               "most %zu (%s)",
                               len, max, data_dir);
    }
    if (create) {
        eng_rc rc = pgembed_mkdirs(data_dir, err);
        if (rc != ENG_OK)
            return rc;
    }
    char buf[PATH_MAX];
    if (!realpath(data_dir, buf)) {
        if (errno == ENOENT)
            return eng_err_set(err, ENG_ENOTFOUND, "data directory %s does not exist", data_dir);
        return eng_err_set(err, ENG_ESYS, "cannot resolve %s: %s", data_dir, strerror(errno));
    }
    /* pg_ctl puts paths inside double quotes of a /bin/sh command line. */
    if (strpbrk(buf, "\"$`\\\n"))
        return eng_err_set(err, ENG_EINVAL,
                           "data directory %s contains a character pg_ctl cannot quote "
                           "(\" $ ` \\ or newline)",
                           buf);
    if (strlen(buf) > max)
        return eng_err_set(err, ENG_EINVAL,
                           "data directory path is too long for a unix socket: %zu bytes, at most "
                           "%zu (%s)",
                           strlen(buf), max, buf);
    *out = eng_xstrdup(buf);
    return ENG_OK;
}

/* Refuses a folder that holds other things than ours (say --data . in a source tree): as root we
 * would hand it to the postgres user and close it to everyone else. */
static eng_rc pgembed_check_ours(const char *dir, eng_err *err)
{
    DIR *dh = opendir(dir);
    if (!dh)
        return eng_err_set(err, ENG_ESYS, "cannot open %s: %s", dir, strerror(errno));
    bool empty = true, ours = false;
    for (struct dirent *e; (e = readdir(dh));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        empty = false;
        if (strcmp(e->d_name, "pg") == 0 || strcmp(e->d_name, "pg.tmp") == 0 ||
            strcmp(e->d_name, "flowd.lock") == 0)
            ours = true;
    }
    closedir(dh);
    if (empty || ours)
        return ENG_OK;
    return eng_err_set(err, ENG_EINVAL,
                       "data directory %s is not empty and holds no flowd cluster: choose a new or "
                       "empty folder",
                       dir);
}

/* conninfo for dbname on the socket in dir, quoting the host for libpq. */
static char *pgembed_conninfo_for(const char *dir, const char *dbname)
{
    size_t n = strlen(dir);
    char *q = eng_xmalloc(2 * n + 1), *w = q;
    for (size_t i = 0; i < n; i++) {
        if (dir[i] == '\'' || dir[i] == '\\')
            *w++ = '\\';
        *w++ = dir[i];
    }
    *w = '\0';
    char *ci = eng_xasprintf("host='%s' port=" PGEMBED_PORT " dbname=%s user=postgres", q, dbname);
    free(q);
    return ci;
}

static bool pgembed_executable(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

/* The directory holding initdb and pg_ctl: initdb on PATH (symlinks resolved), else the highest
 * /usr/lib/postgresql/<N>/bin. */
static eng_rc pgembed_find_bindir(char **out, eng_err *err)
{
    *out = NULL;
    const char *path = getenv("PATH");
    char *copy = eng_xstrdup(path ? path : "");
    char *save = NULL;
    for (char *d = strtok_r(copy, ":", &save); d && !*out; d = strtok_r(NULL, ":", &save)) {
        char *cand = eng_xasprintf("%s/initdb", *d ? d : ".");
        char real[PATH_MAX];
        if (pgembed_executable(cand) && realpath(cand, real)) {
            *strrchr(real, '/') = '\0';
            char *ctl = eng_xasprintf("%s/pg_ctl", real);
            if (pgembed_executable(ctl))
                *out = eng_xstrdup(real);
            free(ctl);
        }
        free(cand);
    }
    free(copy);
    if (*out)
        return ENG_OK;

    DIR *dh = opendir("/usr/lib/postgresql");
    double best = -1;
    for (struct dirent *e; dh && (e = readdir(dh));) {
        char *end = NULL;
        double v = strtod(e->d_name, &end); /* "15", or "9.6" on old systems */
        if (end == e->d_name || *end || v <= best)
            continue;
        char *initdb = eng_xasprintf("/usr/lib/postgresql/%s/bin/initdb", e->d_name);
        char *ctl = eng_xasprintf("/usr/lib/postgresql/%s/bin/pg_ctl", e->d_name);
        if (pgembed_executable(initdb) && pgembed_executable(ctl)) {
            best = v;
            free(*out);
            *out = eng_xasprintf("/usr/lib/postgresql/%s/bin", e->d_name);
        }
        free(initdb);
        free(ctl);
    }
    if (dh)
        closedir(dh);
    if (*out)
        return ENG_OK;
    return eng_err_set(err, ENG_ESYS,
                       "postgresql server not found: no initdb on PATH nor under "
                       "/usr/lib/postgresql/<version>/bin (install the postgresql package)");
}

/* ---- child processes ---------------------------------------------------------------------------- */

/* The environment for children, without PG* variables that could redirect them elsewhere. */
static char **pgembed_child_env(void)
{
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = eng_xcalloc(n + 1, sizeof *env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "PG", 2) != 0)
            env[k++] = environ[i];
    return env;
}

/* In the child, after fork: only async-signal-safe calls. */
static void pgembed_child_setup(const eng_pgembed *pg, const char *logpath)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    for (int s = 1; s < NSIG; s++)
        sigaction(s, &dfl, NULL); /* fails harmlessly for SIGKILL/SIGSTOP */
    /* Own session: a ^C meant for flowd must not reach the postmaster directly; flowd stops it. */
    setsid();
    if (pg->drop && (setgroups((size_t)pg->ngroups, pg->groups) != 0 || setgid(pg->gid) != 0 ||
                     setuid(pg->uid) != 0))
        _exit(126);
    int in = open("/dev/null", O_RDONLY);
    int log = logpath ? open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0600) : open("/dev/null", O_WRONLY);
    if (in < 0 || log < 0 || dup2(in, 0) < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0)
        _exit(126);
    /* flowd may hold sockets and locks without O_CLOEXEC: the postmaster must not inherit them. */
    if (close_range(3, ~0U, 0) != 0)
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
}

/* Runs argv (argv[0] a full path) as the cluster owner with stdout/stderr appended to logpath and
 * waits for it. Returns ENG_OK with *status the exit code (or 128 + signal). */
static eng_rc pgembed_run(const eng_pgembed *pg, char *const argv[], int *status, eng_err *err)
{
    char **env = pgembed_child_env();
    pid_t pid = fork();
    if (pid < 0) {
        free(env);
        return eng_err_set(err, ENG_ESYS, "cannot fork: %s", strerror(errno));
    }
    if (pid == 0) {
        pgembed_child_setup(pg, pg->logpath);
        execve(argv[0], argv, env);
        _exit(127);
    }
    free(env);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR)
            return eng_err_set(err, ENG_ESYS, "cannot wait for %s: %s", argv[0], strerror(errno));
    }
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return ENG_OK;
}

/* As root, checks that the postgres user can enter and write dir (a parent directory such as /root
 * is often closed to it, and initdb would fail with a less helpful message). */
static eng_rc pgembed_check_access(const eng_pgembed *pg, eng_err *err)
{
    pid_t pid = fork();
    if (pid < 0)
        return eng_err_set(err, ENG_ESYS, "cannot fork: %s", strerror(errno));
    if (pid == 0) {
        pgembed_child_setup(pg, NULL);
        _exit(access(pg->dir, R_OK | W_OK | X_OK) == 0 ? 0 : 1);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return eng_err_set(err, ENG_ESYS, "cannot wait for a child: %s", strerror(errno));
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return ENG_OK;
    return eng_err_set(err, ENG_ESYS,
                       "the postgres user cannot use %s (is a parent directory closed to it?): "
                       "choose a --data it can reach",
                       pg->dir);
}

/* The most telling line of the server log's tail (the last FATAL/ERROR/PANIC, else the last line),
 * copied into buf. */
static void pgembed_log_tail(const char *logpath, char *buf, size_t size)
{
    snprintf(buf, size, "see %s", logpath);
    int fd = open(logpath, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    char tail[4096];
    off_t end = lseek(fd, 0, SEEK_END);
    off_t from = end > (off_t)sizeof tail - 1 ? end - (off_t)sizeof tail + 1 : 0;
    ssize_t n = pread(fd, tail, sizeof tail - 1, from);
    close(fd);
    if (n <= 0)
        return;
    tail[n] = '\0';
    const char *best = NULL, *last = NULL;
    for (char *line = tail, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (!*line)
            continue;
        last = line;
        if (strstr(line, "FATAL:") || strstr(line, "ERROR:") || strstr(line, "PANIC:"))
            best = line;
    }
    const char *pick = best ? best : last;
    if (pick) {
        size_t len = strlen(pick) < size - 1 ? strlen(pick) : size - 1;
        memcpy(buf, pick, len);
        buf[len] = '\0';
    }
}

/* ---- the cluster -------------------------------------------------------------------------------- */

static eng_rc pgembed_rmtree_cb_rc;

static int pgembed_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (remove(path) != 0)
        pgembed_rmtree_cb_rc = ENG_ESYS;
    return 0;
}

/* initdb into dir/pg.tmp, configure, then rename to dir/pg so a half-made cluster is never used. */
static eng_rc pgembed_initdb(eng_pgembed *pg, eng_err *err)
{
    char *tmp = eng_xasprintf("%s/pg.tmp", pg->dir);
    char *conf = eng_xasprintf("%s/postgresql.conf", tmp);
    char *initdb = eng_xasprintf("%s/initdb", pg->bindir);
    eng_rc rc = ENG_OK;
    struct stat st;
    if (lstat(tmp, &st) == 0) {
        log_warn("removing a cluster left half-made by an earlier start", LOG_S("path", tmp));
        pgembed_rmtree_cb_rc = ENG_OK;
        nftw(tmp, pgembed_rm_one, 16, FTW_DEPTH | FTW_PHYS);
        if (pgembed_rmtree_cb_rc != ENG_OK) {
            rc = eng_err_set(err, ENG_ESYS, "cannot remove %s", tmp);
            goto out;
        }
    }
    log_info("creating postgresql cluster", LOG_S("path", pg->pgdata), LOG_S("bindir", pg->bindir));
    char *const argv[] = {initdb, "-D", tmp, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                          "--locale=C", NULL};
    int status = 0;
    rc = pgembed_run(pg, argv, &status, err);
    if (rc != ENG_OK)
        goto out;
    if (status != 0) {
        char why[200];
        pgembed_log_tail(pg->logpath, why, sizeof why);
        rc = eng_err_set(err, ENG_EDB, "initdb failed (exit %d): %s", status, why);
        goto out;
    }
    FILE *f = fopen(conf, "ae");
    if (!f || fputs(pgembed_conf, f) < 0 || fclose(f) != 0) {
        rc = eng_err_set(err, ENG_ESYS, "cannot write %s: %s", conf, strerror(errno));
        goto out;
    }
    if (rename(tmp, pg->pgdata) != 0)
        rc = eng_err_set(err, ENG_ESYS, "cannot rename %s: %s", tmp, strerror(errno));
out:
    free(initdb);
    free(conf);
    free(tmp);
    return rc;
}

/* True when pid is a live (non-zombie) process named postgres. */
static bool pgembed_live_postgres(long pid)
{
    if (pid <= 0 || (kill((pid_t)pid, 0) != 0 && errno != EPERM))
        return false;
    char path[64], stat[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return true; /* no /proc: trust kill() */
    ssize_t n = read(fd, stat, sizeof stat - 1);
    close(fd);
    if (n <= 0)
        return false;
    stat[n] = '\0';
    const char *open_paren = strchr(stat, '('), *close_paren = strrchr(stat, ')');
    if (!open_paren || !close_paren || close_paren[1] != ' ')
        return true;
    char state = close_paren[2];
    bool named = close_paren - open_paren - 1 == 8 && strncmp(open_paren + 1, "postgres", 8) == 0;
    return state != 'Z' && named;
}

/* The start time of process pid (field 22 of /proc/PID/stat, in clock ticks since boot): with the
 * pid it names one process, whatever reuses the pid later. 0 when there is no such process (or a
 * zombie). */
static unsigned long long pgembed_proc_start(long pid)
{
    char path[64], stat[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, stat, sizeof stat - 1);
    close(fd);
    if (n <= 0)
        return 0;
    stat[n] = '\0';
    const char *p = strrchr(stat, ')');
    if (!p || p[1] != ' ' || p[2] == 'Z')
        return 0;
    p += 2; /* field 3, the state */
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        p = p ? p + 1 : NULL;
    }
    return p ? strtoull(p, NULL, 10) : 0;
}

/* Records this process as the one that stops the server (DIR/flowd.owner: "pid start-time"). */
static void pgembed_claim(eng_pgembed *pg)
{
    char *path = eng_xasprintf("%s/flowd.owner", pg->dir);
    FILE *f = fopen(path, "we");
    if (!f || fprintf(f, "%ld %llu\n", (long)getpid(), pgembed_proc_start((long)getpid())) < 0 ||
        fclose(f) != 0)
        log_warn("cannot record the owner of postgresql", LOG_S("path", path),
                 LOG_S("error", strerror(errno)));
    free(path);
}

/* True when DIR/flowd.owner names a process that is gone: the server it started has no owner. */
static bool pgembed_orphaned(const eng_pgembed *pg, long *owner)
{
    char *path = eng_xasprintf("%s/flowd.owner", pg->dir);
    FILE *f = fopen(path, "re");
    free(path);
    if (!f)
        return false;
    unsigned long long start = 0;
    *owner = 0;
    bool parsed = fscanf(f, "%ld %llu", owner, &start) == 2;
    fclose(f);
    return parsed && *owner > 0 && pgembed_proc_start(*owner) != start;
}

/* Removes a lock file (postmaster.pid, socket lock) whose owner is gone. Sets *live_pid when its
 * owner is a live postgres. */
static eng_rc pgembed_clear_stale(const char *path, long *live_pid, eng_err *err)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return ENG_OK;
    long pid = 0;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    fclose(f);
    if (pgembed_live_postgres(pid)) {
        *live_pid = pid;
        return ENG_OK;
    }
    log_warn("removing a stale postgresql lock file", LOG_S("path", path), LOG_I("pid", pid));
    if (unlink(path) != 0 && errno != ENOENT)
        return eng_err_set(err, ENG_ESYS, "cannot remove %s: %s", path, strerror(errno));
    return ENG_OK;
}

static eng_rc pgembed_pg_ctl_start(eng_pgembed *pg, eng_err *err)
{
    char *ctl = eng_xasprintf("%s/pg_ctl", pg->bindir);
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", PGEMBED_TIMEOUT_S);
    char *const argv[] = {ctl, "start", "-D", pg->pgdata, "-l", pg->logpath, "-w", "-t", timeout,
                          "-s", NULL};
    eng_rc rc = ENG_OK;
    for (int attempt = 1;; attempt++) {
        int status = 0;
        rc = pgembed_run(pg, argv, &status, err);
        if (rc != ENG_OK || status == 0)
            break;
        char why[200];
        pgembed_log_tail(pg->logpath, why, sizeof why);
        /* After a postmaster crash its children need a moment to notice and detach from the old
         * shared memory; the new postmaster refuses to start until they have. */
        if (attempt < 10 && strstr(why, "pre-existing shared memory block")) {
            nanosleep(&(struct timespec){.tv_nsec = 500 * 1000 * 1000}, NULL);
            continue;
        }
        rc = eng_err_set(err, ENG_EDB, "postgresql did not start (pg_ctl exit %d): %s", status, why);
        break;
    }
    free(ctl);
    return rc;
}

/* Waits until a server that answered "starting up" accepts connections. */
static eng_rc pgembed_wait_ready(const char *admin, eng_err *err)
{
    for (int i = 0; i < PGEMBED_TIMEOUT_S * 10; i++) {
        PGPing p = PQping(admin);
        if (p == PQPING_OK)
            return ENG_OK;
        if (p == PQPING_NO_RESPONSE || p == PQPING_NO_ATTEMPT)
            break;
        nanosleep(&(struct timespec){.tv_nsec = 100 * 1000 * 1000}, NULL);
    }
    return eng_err_set(err, ENG_ETIMEOUT, "postgresql in the data directory did not become ready");
}

static eng_rc pgembed_create_db(const char *admin, eng_err *err)
{
    PGconn *c = PQconnectdb(admin);
    eng_rc rc = ENG_OK;
    if (PQstatus(c) != CONNECTION_OK) {
        rc = eng_err_set(err, ENG_EDB, "cannot connect to the embedded postgresql: %s",
                         PQerrorMessage(c));
        goto out;
    }
    PGresult *r = PQexec(c, "SELECT 1 FROM pg_database WHERE datname = 'flowd'");
    bool exists = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    PQclear(r);
    if (exists)
        goto out;
    r = PQexec(c, "CREATE DATABASE flowd");
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && !(state && strcmp(state, "42P04") == 0))
        rc = eng_err_set(err, ENG_EDB, "cannot create database flowd: %s", PQerrorMessage(c));
    PQclear(r);
out:
    PQfinish(c);
    if (rc == ENG_OK || !err)
        return rc;
    size_t n = strlen(err->msg); /* libpq messages end in a newline */
    while (n > 0 && err->msg[n - 1] == '\n')
        err->msg[--n] = '\0';
    return rc;
}

/* Resolves who runs the server: ourselves, or the postgres user when we are root. */
static eng_rc pgembed_identity(eng_pgembed *pg, eng_err *err)
{
    if (geteuid() != 0)
        return ENG_OK;
    struct passwd *pw = getpwnam("postgres");
    if (!pw)
        return eng_err_set(err, ENG_ESYS,
                           "running as root needs the postgres system user (postgresql refuses to "
                           "run as root): install the postgresql package or run as another user");
    pg->drop = true;
    pg->uid = pw->pw_uid;
    pg->gid = pw->pw_gid;
    pg->ngroups = PGEMBED_MAX_GROUPS;
    if (getgrouplist(pw->pw_name, pw->pw_gid, pg->groups, &pg->ngroups) < 0) {
        pg->groups[0] = pw->pw_gid; /* more groups than we keep: the primary one is enough */
        pg->ngroups = 1;
    }
    if (chown(pg->dir, pg->uid, pg->gid) != 0)
        return eng_err_set(err, ENG_ESYS, "cannot give %s to the postgres user: %s", pg->dir,
                           strerror(errno));
    return ENG_OK;
}

static void pgembed_free(eng_pgembed *pg)
{
    if (!pg)
        return;
    free(pg->dir);
    free(pg->pgdata);
    free(pg->logpath);
    free(pg->bindir);
    free(pg->conninfo);
    free(pg);
}

/* Steps 2-3 of the sequence: make sure a cluster exists, then start it. */
static eng_rc pgembed_boot(eng_pgembed *pg, eng_err *err)
{
    char *version = eng_xasprintf("%s/PG_VERSION", pg->pgdata);
    char *pidfile = eng_xasprintf("%s/postmaster.pid", pg->pgdata);
    char *socklock = eng_xasprintf("%s" PGEMBED_SOCKET_NAME ".lock", pg->dir);
    eng_rc rc = ENG_OK;
    if (access(version, F_OK) != 0) {
        rc = pgembed_initdb(pg, err);
        if (rc != ENG_OK)
            goto out;
    }
    long live = 0;
    rc = pgembed_clear_stale(pidfile, &live, err);
    if (rc == ENG_OK)
        rc = pgembed_clear_stale(socklock, &live, err);
    if (rc != ENG_OK)
        goto out;
    if (live) {
        rc = eng_err_set(err, ENG_ECONFLICT,
                         "a postgresql server (pid %ld) holds %s but does not answer on its socket",
                         live, pg->dir);
        goto out;
    }
    log_info("starting postgresql", LOG_S("path", pg->pgdata));
    rc = pgembed_pg_ctl_start(pg, err);
    if (rc == ENG_OK) {
        pg->owned = true;
        pgembed_claim(pg);
    }
out:
    free(socklock);
    free(pidfile);
    free(version);
    return rc;
}

eng_rc eng_pgembed_start(const char *data_dir, eng_pgembed **out, eng_err *err)
{
    *out = NULL;
    eng_pgembed *pg = eng_xcalloc(1, sizeof *pg);
    char *admin = NULL;
    char *lockpath = NULL;
    int lockfd = -1;
    eng_rc rc = pgembed_resolve(data_dir, true, &pg->dir, err);
    if (rc != ENG_OK)
        goto out;
    pg->pgdata = eng_xasprintf("%s/pg", pg->dir);
    pg->logpath = eng_xasprintf("%s/postgres.log", pg->dir);
    pg->conninfo = pgembed_conninfo_for(pg->dir, "flowd");
    admin = pgembed_conninfo_for(pg->dir, "postgres");
    rc = pgembed_check_ours(pg->dir, err);
    if (rc == ENG_OK)
        rc = pgembed_find_bindir(&pg->bindir, err);
    if (rc == ENG_OK)
        rc = pgembed_identity(pg, err);
    if (rc != ENG_OK)
        goto out;
    /* The socket in dir accepts anyone who can reach it (trust auth): dir is the protection. */
    if (chmod(pg->dir, 0700) != 0) {
        rc = eng_err_set(err, ENG_ESYS, "cannot chmod %s: %s", pg->dir, strerror(errno));
        goto out;
    }
    if (pg->drop && (rc = pgembed_check_access(pg, err)) != ENG_OK)
        goto out;

    lockpath = eng_xasprintf("%s/flowd.lock", pg->dir);
    lockfd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lockfd < 0 || flock(lockfd, LOCK_EX) != 0) {
        rc = eng_err_set(err, ENG_ESYS, "cannot lock %s: %s", lockpath, strerror(errno));
        goto out;
    }
    PGPing ping = PQping(admin);
    long owner = 0;
    if ((ping == PQPING_OK || ping == PQPING_REJECT) && pgembed_orphaned(pg, &owner)) {
        log_info("adopting the postgresql server of a process that is gone",
                 LOG_S("path", pg->pgdata), LOG_I("owner_pid", owner));
        rc = pgembed_wait_ready(admin, err);
        if (rc == ENG_OK) {
            pg->owned = true;
            pgembed_claim(pg);
        }
    } else if (ping == PQPING_OK || ping == PQPING_REJECT) {
        log_info("using the postgresql server already running", LOG_S("path", pg->pgdata));
        rc = pgembed_wait_ready(admin, err);
    } else {
        rc = pgembed_boot(pg, err);
    }
    if (rc == ENG_OK)
        rc = pgembed_create_db(admin, err);

out:
    if (lockfd >= 0)
        close(lockfd); /* releases the flock */
    free(lockpath);
    free(admin);
    if (rc != ENG_OK) {
        eng_pgembed_stop(pg);
        return rc;
    }
    *out = pg;
    return ENG_OK;
}

const char *eng_pgembed_conninfo(const eng_pgembed *pg)
{
    return pg->conninfo;
}

bool eng_pgembed_owned(const eng_pgembed *pg)
{
    return pg->owned;
}

eng_rc eng_pgembed_attach(const char *data_dir, char **conninfo, eng_err *err)
{
    *conninfo = NULL;
    char *dir = NULL;
    eng_rc rc = pgembed_resolve(data_dir, false, &dir, err);
    if (rc != ENG_OK)
        return rc;
    /* A real connection, not PQping: a server that another starter has brought up but whose
     * flowd database it has not created yet is not ready for us either (that starter still holds
     * the start lock, so a caller that falls back to eng_pgembed_start waits for it). */
    char *ci = pgembed_conninfo_for(dir, "flowd");
    char *probe = eng_xasprintf("%s connect_timeout=5", ci);
    PGconn *c = PQconnectdb(probe);
    if (PQstatus(c) != CONNECTION_OK) {
        rc = eng_err_set(err, ENG_ENOTFOUND, "no flowd postgresql server is running in %s", dir);
        free(ci);
    } else {
        *conninfo = ci;
    }
    PQfinish(c);
    free(probe);
    free(dir);
    return rc;
}

void eng_pgembed_stop(eng_pgembed *pg)
{
    if (!pg)
        return;
    char *pidfile = eng_xasprintf("%s/postmaster.pid", pg->pgdata);
    FILE *f = pg->owned ? fopen(pidfile, "re") : NULL;
    long pid = 0;
    if (f && fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    if (f)
        fclose(f);
    free(pidfile);
    if (pg->owned && !pgembed_live_postgres(pid)) {
        log_warn("postgresql was no longer running", LOG_S("path", pg->pgdata), LOG_I("pid", pid));
    } else if (pg->owned) {
        char *ctl = eng_xasprintf("%s/pg_ctl", pg->bindir);
        char timeout[16];
        snprintf(timeout, sizeof timeout, "%d", PGEMBED_TIMEOUT_S);
        char *const argv[] = {ctl, "stop", "-D", pg->pgdata, "-m", "fast", "-w", "-t", timeout,
                              "-s", NULL};
        int status = 0;
        eng_err err = {0};
        if (pgembed_run(pg, argv, &status, &err) != ENG_OK)
            log_error("cannot stop postgresql", LOG_S("path", pg->pgdata), LOG_S("error", err.msg));
        else if (status != 0)
            log_error("pg_ctl stop failed", LOG_S("path", pg->pgdata), LOG_I("status", status),
                      LOG_S("log", pg->logpath));
        else
            log_info("postgresql stopped", LOG_S("path", pg->pgdata));
        free(ctl);
    }
    if (pg->owned) {
        char *owner = eng_xasprintf("%s/flowd.owner", pg->dir);
        unlink(owner);
        free(owner);
    }
    pgembed_free(pg);
}
