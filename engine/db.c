/* engine/db.c: asynchronous libpq connection on libev (see db.h).
 *
 * State machine (db_drive switches on it):
 *   DB_CONNECTING  PQconnectPoll in progress
 *   DB_IDLE        connected, nothing in flight: reads only to collect notifications
 *   DB_BUSY        one operation sent (maybe still flushing); reading its results
 *   DB_BROKEN      waiting for the reconnect timer
 * Operations are either user queries or internal set-up (PREPARE, LISTEN) that run before the
 * queued user queries after every connection.
 *
 * A transaction (eng_db_begin) holds the connection from its BEGIN to its end: while txn is set,
 * only the transaction's next statement (txn_next, queued from the previous one's callback) is
 * sent, and the other queries wait in the queue. A statement of it that fails is followed by a
 * ROLLBACK, sent before anything else.
 *
 * libpq enforces connect_timeout only in its blocking calls: a connection attempt here is bounded by
 * the connect timer instead (the conninfo's connect_timeout, else DB_CONNECT_TIMEOUT_S), so a server
 * that accepts and then says nothing cannot hold the connection, and the queries behind it, forever. */
#include "engine/db.h"

#include <ev.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"

enum db_state { DB_CONNECTING, DB_IDLE, DB_BUSY, DB_BROKEN };

#define DB_CONNECT_TIMEOUT_S 10

enum db_op_kind { OP_QUERY, OP_PREPARE, OP_LISTEN, OP_CONTROL /* BEGIN, ROLLBACK */ };

/* A user query's place in a transaction. */
enum db_txn_role {
    TXN_NONE,   /* a query of its own */
    TXN_FIRST,  /* eng_db_begin: BEGIN goes just before it */
    TXN_NEXT,   /* eng_db_txn_query: the transaction goes on after it */
    TXN_COMMIT, /* eng_db_commit: the transaction ends with it, whatever its outcome */
};

typedef struct eng_db_op {
    struct eng_db_op *next;
    enum db_op_kind kind;
    int stmt;         /* index into db->stmts (OP_QUERY, OP_PREPARE); -1 for OP_LISTEN */
    char *sql;        /* OP_LISTEN, OP_CONTROL statement; an OP_QUERY's COMMIT (stmt -1) */
    enum db_txn_role txn;
    int nparams;
    char **params;
    eng_db_cb *cb;
    void *arg;
    bool cancelled;   /* eng_db_cancel: never sent, answered ENG_ECANCELED in its turn */
    double sent_at;   /* ev_time() when sent (flowd_db_round_trip_seconds) */
} db_op;

typedef struct db_stmt {
    char *name;
    char *sql;
    int nparams;
    bool prepared; /* on the current connection */
} db_stmt;

/* State another module keeps per connection (eng_db_slot_set), freed with the connection. */
typedef struct db_slot {
    const void *key;
    void *data;
    eng_db_slot_free *free_fn;
    struct db_slot *next;
} db_slot;

struct eng_db {
    struct ev_loop *loop;
    ev_io io;
    ev_timer retry;
    ev_timer connect_timer; /* bounds DB_CONNECTING */
    ev_timer fail_now;      /* fail_when_down: fails what was queued while down, from the loop */
    PGconn *pg;
    enum db_state st;
    int watched;          /* events the io watcher waits for */
    bool flushing;        /* PQflush returned 1 */
    char *conninfo;
    char *appname;
    eng_db_opts opts;
    db_op *head, *tail;   /* user queries, FIFO */
    db_op *setup;         /* internal ops to run first on a fresh connection */
    db_op *inflight;
    bool txn;             /* a transaction is open: only its statements are sent */
    db_op *txn_next;      /* the transaction's next statement, not sent yet */
    int nqueries;         /* user queries queued or in flight: asked often, so counted */
    PGresult *last;       /* last result of the operation in flight */
    db_stmt *stmts;
    int nstmts;
    char **channels;
    int nchannels;
    double backoff;
    bool down;            /* lost, or an attempt failed, since the last successful connection */
    ev_tstamp down_at;
    bool connected;       /* counted in flowd_db_connections */
    db_slot *slots;
};

/* Connections of this process that are down: the first to go down and the last to come back
 * each log one line, so an outage is two lines however many connections retry through it. */
static atomic_int db_ndown;

/* libpq's messages span lines ("FATAL: ...\nserver closed the connection..."): one line each. */
static void db_one_line(char *s)
{
    for (char *p = s; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    size_t n = strlen(s);
    while (n && s[n - 1] == ' ')
        s[--n] = '\0';
}

static void db_mark_down(eng_db *db, const char *why)
{
    if (db->down) {
        log_debug("database connection attempt failed", LOG_S("app", db->appname),
                  LOG_S("reason", why));
        return;
    }
    db->down = true;
    db->down_at = ev_now(db->loop);
    if (atomic_fetch_add(&db_ndown, 1) == 0)
        log_warn("database unreachable", LOG_S("app", db->appname), LOG_S("reason", why));
    else
        log_debug("database connection lost", LOG_S("app", db->appname), LOG_S("reason", why));
}

static void db_mark_up(eng_db *db)
{
    if (!db->down)
        return;
    db->down = false;
    if (atomic_fetch_sub(&db_ndown, 1) == 1)
        log_warn("database reachable again", LOG_S("app", db->appname),
                 LOG_F("down_s", ev_now(db->loop) - db->down_at));
}

static void db_drive(eng_db *db);

static void db_op_free(db_op *op)
{
    if (!op)
        return;
    for (int i = 0; i < op->nparams; i++)
        free(op->params[i]);
    free(op->params);
    free(op->sql);
    free(op);
}

static void db_watch(eng_db *db, int events)
{
    /* libpq may hand us a new socket after a reconnect: always re-set the fd. */
    ev_io_stop(db->loop, &db->io);
    db->watched = events;
    if (events && db->pg && PQsocket(db->pg) >= 0) {
        ev_io_set(&db->io, PQsocket(db->pg), events);
        ev_io_start(db->loop, &db->io);
    }
}

/* Detaches the queued user queries and answers each with err; callbacks may queue more. */
static void db_fail_queued(eng_db *db, const eng_err *err)
{
    db_op *failed = db->head;
    db->head = db->tail = NULL;
    while (failed) {
        db_op *q = failed;
        failed = q->next;
        db->nqueries--;
        if (q->cb)
            q->cb(q->arg, err, NULL);
        db_op_free(q);
    }
}

static void db_fail_now_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    eng_db *db = ENG_CONTAINER_OF(w, eng_db, fail_now);
    if (!db->down)
        return;
    eng_err err;
    eng_err_set(&err, ENG_EDB_RETRY, "the database is unreachable");
    db_fail_queued(db, &err);
}

static void db_broken(eng_db *db, const char *why)
{
    /* why is usually PQerrorMessage(db->pg), which PQfinish frees: copy it first */
    eng_err err;
    eng_err_set(&err, ENG_EDB_RETRY, "connection lost: %s", why);
    db_one_line(err.msg);
    db_mark_down(db, err.msg + strlen("connection lost: "));
    db_watch(db, 0);
    ev_timer_stop(db->loop, &db->connect_timer);
    if (db->pg) {
        PQfinish(db->pg);
        db->pg = NULL;
    }
    if (db->connected)
        eng_metrics_db_connections(-1);
    db->connected = false;
    PQclear(db->last);
    db->last = NULL;
    db->st = DB_BROKEN;
    db->flushing = false;
    for (int i = 0; i < db->nstmts; i++)
        db->stmts[i].prepared = false;
    db_op *op = db->inflight;
    db->inflight = NULL;
    db_op *txn_next = db->txn_next; /* waiting for its BEGIN or PREPARE */
    db->txn_next = NULL;
    db->txn = false;
    while (db->setup) {
        db_op *n = db->setup->next;
        if (db->setup != op)
            db_op_free(db->setup);
        db->setup = n;
    }
    double delay = db->backoff;
    db->backoff = db->backoff < 2.0 ? db->backoff * 2 : 2.0;
    ev_timer_set(&db->retry, delay, 0.);
    ev_timer_start(db->loop, &db->retry);
    if (op && op->kind == OP_QUERY) {
        db->nqueries--;
        if (op->cb)
            op->cb(op->arg, &err, NULL);
    }
    db_op_free(op);
    if (txn_next) {
        db->nqueries--;
        if (txn_next->cb)
            txn_next->cb(txn_next->arg, &err, NULL);
        db_op_free(txn_next);
    }
    /* the queued queries fail too where the owner asked (callbacks last, as above) */
    if (db->opts.fail_when_down)
        ev_feed_event(db->loop, &db->fail_now, EV_TIMER);
}

static void db_queue_setup(eng_db *db)
{
    for (int i = 0; i < db->nchannels; i++) {
        db_op *op = eng_xcalloc(1, sizeof *op);
        op->kind = OP_LISTEN;
        op->stmt = -1;
        op->sql = eng_xasprintf("LISTEN \"%s\"", db->channels[i]);
        op->next = db->setup;
        db->setup = op;
    }
}

/* The conninfo's connect_timeout in seconds, else DB_CONNECT_TIMEOUT_S. */
static int db_connect_timeout(PGconn *pg)
{
    int secs = DB_CONNECT_TIMEOUT_S;
    PQconninfoOption *opts = PQconninfo(pg);
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && atoi(o->val) > 0)
            secs = atoi(o->val);
    PQconninfoFree(opts);
    return secs;
}

static void db_connect(eng_db *db)
{
    /* Defaults the conninfo may override (it is expanded in dbname's place, after them): a TCP
     * peer that vanished without a word (a failover, a cut network) is noticed in about half a
     * minute, not the kernel's two hours. Unix sockets ignore them. */
    const char *keys[] = {"keepalives_idle", "keepalives_interval", "keepalives_count",
                          "tcp_user_timeout", "dbname", "application_name", NULL};
    const char *vals[] = {"10", "5", "3", "30000", db->conninfo, db->appname, NULL};
    db->pg = PQconnectStartParams(keys, vals, 1);
    if (!db->pg || PQstatus(db->pg) == CONNECTION_BAD) {
        db_broken(db, db->pg ? PQerrorMessage(db->pg) : "out of memory");
        return;
    }
    db->st = DB_CONNECTING;
    ev_timer_set(&db->connect_timer, db_connect_timeout(db->pg), 0.);
    ev_timer_start(db->loop, &db->connect_timer);
    db_watch(db, EV_WRITE);
}

static void db_connect_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    eng_db *db = ENG_CONTAINER_OF(w, eng_db, connect_timer);
    if (db->st == DB_CONNECTING)
        db_broken(db, "the connection attempt timed out");
}

static void db_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    eng_db *db = ENG_CONTAINER_OF(w, eng_db, retry);
    db_connect(db);
}

static void db_send_op(eng_db *db);

/* Sends the next operation: set-up first, then user queries (preparing their statement first when
 * this connection has not prepared it yet). Withdrawn queries at the head are answered without a
 * round trip, after the next one was sent (callbacks last: they may queue more). */
static void db_send_next(eng_db *db)
{
    db_op *withdrawn = NULL, **wtail = &withdrawn;
    while (db->head && db->head->cancelled) {
        db_op *op = db->head;
        db->head = op->next;
        if (!db->head)
            db->tail = NULL;
        db->nqueries--;
        op->next = NULL;
        *wtail = op;
        wtail = &op->next;
    }
    db_send_op(db);
    while (withdrawn) {
        db_op *op = withdrawn;
        withdrawn = op->next;
        eng_err err;
        eng_err_set(&err, ENG_ECANCELED, "the query was withdrawn before it was sent");
        if (op->cb)
            op->cb(op->arg, &err, NULL);
        db_op_free(op);
    }
}

static db_op *db_control_op(const char *sql)
{
    db_op *op = eng_xcalloc(1, sizeof *op);
    op->kind = OP_CONTROL;
    op->stmt = -1;
    op->sql = eng_xstrdup(sql);
    return op;
}

/* The user query to send next: the open transaction's, else the queue's head. */
static db_op *db_next_query(const eng_db *db)
{
    return db->txn ? db->txn_next : db->head;
}

static void db_send_op(eng_db *db)
{
    db_op *op = NULL;
    db_op *next = db_next_query(db);
    if (db->setup) {
        op = db->setup;
        db->setup = op->next;
    } else if (next && next->stmt >= 0 && !db->stmts[next->stmt].prepared) {
        op = eng_xcalloc(1, sizeof *op);
        op->kind = OP_PREPARE;
        op->stmt = next->stmt;
    } else if (next && db->txn) {
        op = next;
        db->txn_next = NULL;
    } else if (next) {
        op = next;
        db->head = op->next;
        if (!db->head)
            db->tail = NULL;
        if (op->txn == TXN_FIRST) {
            /* BEGIN first; the statement follows as the transaction's next */
            db->txn = true;
            db->txn_next = op;
            op = db_control_op("BEGIN");
        }
    }
    if (!op) {
        db->st = DB_IDLE;
        db_watch(db, EV_READ);
        return;
    }
    op->next = NULL;
    int ok;
    if (op->kind == OP_PREPARE) {
        db_stmt *s = &db->stmts[op->stmt];
        ok = PQsendPrepare(db->pg, s->name, s->sql, s->nparams, NULL);
    } else if (op->kind == OP_LISTEN || op->kind == OP_CONTROL || op->stmt < 0) {
        ok = PQsendQuery(db->pg, op->sql);
    } else {
        ok = PQsendQueryPrepared(db->pg, db->stmts[op->stmt].name, op->nparams,
                                 (const char *const *)op->params, NULL, NULL, 0);
    }
    db->inflight = op;
    op->sent_at = ev_time();
    if (!ok) {
        db_broken(db, PQerrorMessage(db->pg));
        return;
    }
    db->st = DB_BUSY;
    int r = PQflush(db->pg);
    if (r < 0) {
        db_broken(db, PQerrorMessage(db->pg));
        return;
    }
    db->flushing = r == 1;
    db_watch(db, db->flushing ? EV_READ | EV_WRITE : EV_READ);
}

static void db_deliver_notifies(eng_db *db)
{
    PGnotify *n;
    while (db->pg && (n = PQnotifies(db->pg))) {
        if (db->opts.on_notify)
            db->opts.on_notify(db->opts.arg, n->relname, n->extra);
        PQfreemem(n);
    }
}

/* The open transaction is over: the queue's queries may go again. rollback: a statement of it
 * failed, so the server waits for a ROLLBACK, which goes before anything else. */
static void db_end_txn(eng_db *db, bool rollback)
{
    db->txn = false;
    db->txn_next = NULL;
    if (rollback) {
        db_op *op = db_control_op("ROLLBACK");
        op->next = db->setup;
        db->setup = op;
    }
}

/* Ends op, a prepare or a BEGIN that failed, and fails q, the query that waited for it, with
 * err. q is already off the queue. The user callback is the last thing done. */
static void db_fail_waiting(eng_db *db, db_op *op, PGresult *res, db_op *q, const eng_err *err)
{
    PQclear(res);
    db_op_free(op);
    db->nqueries--;
    db_send_next(db);
    if (q->cb)
        q->cb(q->arg, err, NULL);
    db_op_free(q);
}

/* Completes the operation in flight. The user callback is the last thing done. */
static void db_finish_op(eng_db *db)
{
    db_op *op = db->inflight;
    PGresult *res = db->last;
    db->inflight = NULL;
    db->last = NULL;
    eng_err err;
    bool failed = res && eng_db_classify(res, &err) != ENG_OK;
    if (op->kind == OP_PREPARE) {
        if (failed)
            log_error("prepare failed", LOG_S("stmt", db->stmts[op->stmt].name),
                      LOG_S("error", err.msg));
        else
            db->stmts[op->stmt].prepared = true;
        if (failed) {
            /* A statement that cannot be prepared fails the query waiting for it (and its
             * transaction). */
            db_op *q = db_next_query(db);
            if (db->txn) {
                db_end_txn(db, true);
            } else {
                db->head = q->next;
                if (!db->head)
                    db->tail = NULL;
            }
            db_fail_waiting(db, op, res, q, &err);
            return;
        }
    } else if (op->kind == OP_LISTEN && failed) {
        log_error("listen failed", LOG_S("error", err.msg));
    } else if (op->kind == OP_CONTROL && failed) {
        log_error("transaction control failed", LOG_S("sql", op->sql), LOG_S("error", err.msg));
        if (db->txn && db->txn_next) {
            /* the BEGIN: its statement is not sent, and fails with it */
            db_op *q = db->txn_next;
            db_end_txn(db, false);
            db_fail_waiting(db, op, res, q, &err);
            return;
        }
    }
    if (op->kind == OP_QUERY) {
        db->nqueries--;
        eng_metrics_db_round_trip((ev_time() - op->sent_at) * 1000.0);
        if (op->txn == TXN_COMMIT || (op->txn != TXN_NONE && failed))
            db_end_txn(db, op->txn != TXN_COMMIT);
    }
    db_send_next(db);
    if (op->kind == OP_QUERY && op->cb)
        op->cb(op->arg, failed ? &err : NULL, res);
    PQclear(res);
    db_op_free(op);
}

static void db_read(eng_db *db)
{
    if (!PQconsumeInput(db->pg)) {
        db_broken(db, PQerrorMessage(db->pg));
        return;
    }
    db_deliver_notifies(db);
    if (db->st != DB_BUSY)
        return;
    while (!PQisBusy(db->pg)) {
        PGresult *res = PQgetResult(db->pg);
        if (!res) {
            db_finish_op(db);
            return;
        }
        /* Keep the first error, else the last result (a statement may return several). */
        if (db->last && PQresultStatus(db->last) == PGRES_FATAL_ERROR) {
            PQclear(res);
        } else {
            PQclear(db->last);
            db->last = res;
        }
    }
}

static void db_drive(eng_db *db)
{
    switch (db->st) {
    case DB_CONNECTING:
        switch (PQconnectPoll(db->pg)) {
        case PGRES_POLLING_READING:
            db_watch(db, EV_READ);
            return;
        case PGRES_POLLING_WRITING:
            db_watch(db, EV_WRITE);
            return;
        case PGRES_POLLING_OK:
            ev_timer_stop(db->loop, &db->connect_timer);
            db_mark_up(db);
            db->connected = true;
            eng_metrics_db_connections(1);
            PQsetnonblocking(db->pg, 1);
            db->backoff = 0.05;
            db_queue_setup(db);
            db_send_next(db);
            if (db->opts.on_connect)
                db->opts.on_connect(db->opts.arg);
            return;
        default:
            db_broken(db, PQerrorMessage(db->pg));
            return;
        }
    case DB_IDLE:
    case DB_BUSY:
        if (db->flushing) {
            int r = PQflush(db->pg);
            if (r < 0) {
                db_broken(db, PQerrorMessage(db->pg));
                return;
            }
            db->flushing = r == 1;
            if (!db->flushing)
                db_watch(db, EV_READ);
        }
        db_read(db);
        return;
    case DB_BROKEN:
        return;
    }
}

static void db_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    db_drive(ENG_CONTAINER_OF(w, eng_db, io));
}

eng_db *eng_db_new(struct ev_loop *loop, const eng_db_opts *opts)
{
    eng_db *db = eng_xcalloc(1, sizeof *db);
    db->loop = loop;
    db->opts = *opts;
    db->conninfo = eng_xstrdup(opts->conninfo);
    db->appname = eng_xstrdup(opts->application_name ? opts->application_name : "flowd");
    db->opts.conninfo = db->conninfo;
    db->opts.application_name = db->appname;
    db->backoff = 0.05;
    ev_io_init(&db->io, db_io_cb, -1, 0);
    ev_timer_init(&db->retry, db_retry_cb, 0., 0.);
    ev_timer_init(&db->connect_timer, db_connect_timer_cb, 0., 0.);
    ev_timer_init(&db->fail_now, db_fail_now_cb, 0., 0.);
    db_connect(db);
    return db;
}

void eng_db_free(eng_db *db)
{
    if (!db)
        return;
    if (db->down)
        atomic_fetch_sub(&db_ndown, 1);
    ev_io_stop(db->loop, &db->io);
    ev_timer_stop(db->loop, &db->retry);
    ev_timer_stop(db->loop, &db->connect_timer);
    ev_clear_pending(db->loop, &db->fail_now);
    if (db->pg)
        PQfinish(db->pg);
    if (db->connected)
        eng_metrics_db_connections(-1);
    PQclear(db->last);
    db_op_free(db->inflight);
    db_op_free(db->txn_next);
    for (db_op *op = db->head; op;) {
        db_op *n = op->next;
        db_op_free(op);
        op = n;
    }
    for (db_op *op = db->setup; op;) {
        db_op *n = op->next;
        db_op_free(op);
        op = n;
    }
    /* after the queued ops: no callback can reach the owners' state any more */
    for (db_slot *sl = db->slots; sl;) {
        db_slot *n = sl->next;
        if (sl->free_fn)
            sl->free_fn(sl->data);
        free(sl);
        sl = n;
    }
    for (int i = 0; i < db->nstmts; i++) {
        free(db->stmts[i].name);
        free(db->stmts[i].sql);
    }
    free(db->stmts);
    for (int i = 0; i < db->nchannels; i++)
        free(db->channels[i]);
    free(db->channels);
    free(db->conninfo);
    free(db->appname);
    free(db);
}

void eng_db_prepare(eng_db *db, const char *name, const char *sql, int nparams)
{
    db->stmts = eng_xrealloc(db->stmts, sizeof *db->stmts * (size_t)(db->nstmts + 1));
    db->stmts[db->nstmts++] = (db_stmt){.name = eng_xstrdup(name), .sql = eng_xstrdup(sql),
                                        .nparams = nparams};
}

void eng_db_listen(eng_db *db, const char *channel)
{
    db->channels = eng_xrealloc(db->channels, sizeof *db->channels * (size_t)(db->nchannels + 1));
    db->channels[db->nchannels++] = eng_xstrdup(channel);
    if (db->st == DB_IDLE || db->st == DB_BUSY) {
        db_op *op = eng_xcalloc(1, sizeof *op);
        op->kind = OP_LISTEN;
        op->stmt = -1;
        op->sql = eng_xasprintf("LISTEN \"%s\"", channel);
        op->next = db->setup;
        db->setup = op;
        if (db->st == DB_IDLE)
            db_send_next(db);
    }
}

/* The statement registered under name, or the one whose SQL is this text: SQL sent as text is
 * prepared on first use too, so every statement is parsed and planned once per connection. */
static int db_find_stmt(eng_db *db, const char *stmt)
{
    for (int i = 0; i < db->nstmts; i++)
        if (strcmp(db->stmts[i].name, stmt) == 0 || strcmp(db->stmts[i].sql, stmt) == 0)
            return i;
    char name[32];
    snprintf(name, sizeof name, "flowd_auto_%d", db->nstmts);
    eng_db_prepare(db, name, stmt, 0);
    return db->nstmts - 1;
}

static db_op *db_op_new(eng_db *db, const char *stmt, int nparams, const char *const *params,
                        eng_db_cb *cb, void *arg, enum db_txn_role txn)
{
    db_op *op = eng_xcalloc(1, sizeof *op);
    op->kind = OP_QUERY;
    if (txn == TXN_COMMIT) {
        /* in the simple protocol the server answers a COMMIT before it reads anything else, so a
         * session ended (pg_terminate_backend) while the commit waits for its WAL flush does not
         * take the answer of a transaction that did commit (in the extended protocol the Sync read
         * after the Execute would end the session first) */
        op->stmt = -1;
        op->sql = eng_xstrdup("COMMIT");
    } else {
        op->stmt = db_find_stmt(db, stmt);
    }
    op->nparams = nparams;
    op->params = eng_xcalloc((size_t)(nparams ? nparams : 1), sizeof *op->params);
    for (int i = 0; i < nparams; i++)
        op->params[i] = params[i] ? eng_xstrdup(params[i]) : NULL;
    op->cb = cb;
    op->arg = arg;
    op->txn = txn;
    db->nqueries++;
    return op;
}

static eng_db_op *db_queue(eng_db *db, const char *stmt, int nparams, const char *const *params,
                           eng_db_cb *cb, void *arg, enum db_txn_role txn)
{
    db_op *op = db_op_new(db, stmt, nparams, params, cb, arg, txn);
    if (db->tail)
        db->tail->next = op;
    else
        db->head = op;
    db->tail = op;
    if (db->st == DB_IDLE)
        db_send_next(db);
    else if (db->down && db->opts.fail_when_down)
        ev_feed_event(db->loop, &db->fail_now, EV_TIMER);
    return op;
}

eng_db_op *eng_db_query(eng_db *db, const char *stmt, int nparams, const char *const *params,
                        eng_db_cb *cb, void *arg)
{
    return db_queue(db, stmt, nparams, params, cb, arg, TXN_NONE);
}

eng_db_op *eng_db_begin(eng_db *db, const char *stmt, int nparams, const char *const *params,
                        eng_db_cb *cb, void *arg)
{
    return db_queue(db, stmt, nparams, params, cb, arg, TXN_FIRST);
}

static void db_txn_continue(eng_db *db, const char *stmt, int nparams, const char *const *params,
                            eng_db_cb *cb, void *arg, enum db_txn_role txn)
{
    if (!db->txn || db->txn_next) {
        log_error("no open transaction waits for a statement", LOG_S("app", db->appname));
        abort();
    }
    db->txn_next = db_op_new(db, stmt, nparams, params, cb, arg, txn);
    if (db->st == DB_IDLE)
        db_send_next(db);
}

void eng_db_txn_query(eng_db *db, const char *stmt, int nparams, const char *const *params,
                      eng_db_cb *cb, void *arg)
{
    db_txn_continue(db, stmt, nparams, params, cb, arg, TXN_NEXT);
}

void eng_db_commit(eng_db *db, eng_db_cb *cb, void *arg)
{
    db_txn_continue(db, NULL, 0, NULL, cb, arg, TXN_COMMIT);
}

void eng_db_cancel(eng_db_op *op)
{
    op->cancelled = true;
}

bool eng_db_down(const eng_db *db)
{
    return db->down;
}

bool eng_db_connected(const eng_db *db)
{
    return db->st == DB_IDLE || db->st == DB_BUSY;
}

int eng_db_backend_pid(const eng_db *db)
{
    return eng_db_connected(db) ? PQbackendPID(db->pg) : 0;
}

int eng_db_pending(const eng_db *db)
{
    return db->nqueries;
}

void *eng_db_slot(const eng_db *db, const void *key)
{
    for (const db_slot *sl = db->slots; sl; sl = sl->next)
        if (sl->key == key)
            return sl->data;
    return NULL;
}

void eng_db_slot_set(eng_db *db, const void *key, void *data, eng_db_slot_free *free_fn)
{
    db_slot *sl = db->slots;
    while (sl && sl->key != key)
        sl = sl->next;
    if (!sl) {
        sl = eng_xcalloc(1, sizeof *sl);
        sl->key = key;
        sl->next = db->slots;
        db->slots = sl;
    } else if (sl->free_fn && sl->data != data) {
        sl->free_fn(sl->data);
    }
    sl->data = data;
    sl->free_fn = free_fn;
}

eng_rc eng_db_sqlstate_rc(const char *state)
{
    if (!state || strlen(state) != 5)
        return ENG_EDB;
    /* class 40: the server rolled the whole transaction back (serialization failure, deadlock),
     * so nothing is half-done and running it again is the remedy; 53300: no connection slot free
     * right now, which passes like an unreachable server */
    if (strncmp(state, "40", 2) == 0 || strncmp(state, "08", 2) == 0 ||
        strcmp(state, "57P01") == 0 || strcmp(state, "53300") == 0)
        return ENG_EDB_RETRY;
    if (strcmp(state, "23505") == 0 || strcmp(state, "55000") == 0 || strcmp(state, "FL409") == 0)
        return ENG_ECONFLICT;
    if (strcmp(state, "P0002") == 0)
        return ENG_ENOTFOUND;
    if (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0 ||
        strcmp(state, "P0001") == 0)
        return ENG_EINVAL;
    return ENG_EDB;
}

eng_rc eng_db_classify(const PGresult *res, eng_err *err)
{
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY)
        return ENG_OK;
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (!state)
        state = "";
    eng_rc rc = eng_db_sqlstate_rc(state);
    eng_err_set(err, rc, "%s", msg ? msg : PQresStatus(st));
    if (err) {
        strncpy(err->sqlstate, state, sizeof err->sqlstate - 1);
        err->sqlstate[sizeof err->sqlstate - 1] = '\0';
        /* our own refusals of a bad value (RAISE ... ERRCODE 22023, COLUMN = the input field)
         * name the field, so that the caller's error can point at it */
        const char *col = PQresultErrorField(res, PG_DIAG_COLUMN_NAME);
        if (col && strcmp(state, "22023") == 0)
            snprintf(err->field, sizeof err->field, "/%s", col);
    }
    return rc;
}
