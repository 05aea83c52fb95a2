/* engine/db.h: one asynchronous PostgreSQL connection driven by a libev loop.
 *
 * Queries are queued and sent one at a time (FIFO); each completes with exactly one callback on the
 * loop thread, carrying the last result of the statement. Named statements registered with
 * eng_db_prepare are prepared lazily on every (re)connection, so callers never see a connection
 * change. A lost connection fails the query in flight with ENG_EDB_RETRY and reconnects with
 * backoff; queued queries wait for the new connection. LISTEN channels are re-issued after a
 * reconnect and notifications are delivered to the notify callback. A connection attempt that has
 * not finished within the conninfo's connect_timeout (default 10 s) counts as lost, and TCP
 * connections default to keepalives that notice a vanished server in about 25 s.
 *
 * Ownership: params are copied when queued. The PGresult passed to a callback is borrowed and valid
 * only during the call (db.c clears it). */
#pragma once

#include <libpq-fe.h>
#include <stdbool.h>

#include "engine/err.h"

struct ev_loop;
typedef struct eng_db eng_db;

/* err NULL means success; res may be NULL for statements without a result. */
typedef void eng_db_cb(void *arg, const eng_err *err, const PGresult *res);
typedef void eng_db_notify_cb(void *arg, const char *channel, const char *payload);
/* Called after every successful (re)connection; lets an owner re-arm work lost with a connection. */
typedef void eng_db_connect_cb(void *arg);

typedef struct eng_db_opts {
    const char *conninfo;
    const char *application_name;    /* shown in pg_stat_activity */
    eng_db_notify_cb *on_notify;     /* may be NULL */
    eng_db_connect_cb *on_connect;   /* may be NULL */
    void *arg;                       /* passed to on_notify and on_connect */
    bool fail_when_down;             /* a lost connection also fails the queued queries, and a
                                        query queued while the server is unreachable fails from
                                        the loop at once (ENG_EDB_RETRY), instead of waiting for
                                        the next connection: for callers answering someone who
                                        will not wait */
} eng_db_opts;

typedef struct eng_db_op eng_db_op; /* a queued query, until its callback runs */

/* Starts connecting at once. Never NULL. */
eng_db *eng_db_new(struct ev_loop *loop, const eng_db_opts *opts);
/* Closes the connection. Queued callbacks are not called. NULL-safe. */
void eng_db_free(eng_db *db);

/* Registers a named statement (before or after connecting). name must be unique per connection. */
void eng_db_prepare(eng_db *db, const char *name, const char *sql, int nparams);
/* Adds a channel to LISTEN on (now and after every reconnect). */
void eng_db_listen(eng_db *db, const char *channel);

/* Queues a query. stmt is the name of a statement registered with eng_db_prepare, or SQL text,
 * which is prepared on first use (so pass only constant, parameterized SQL). params are text-format
 * values, NULL for SQL NULL. Returns a handle for eng_db_cancel, valid until cb runs. */
eng_db_op *eng_db_query(eng_db *db, const char *stmt, int nparams, const char *const *params,
                        eng_db_cb *cb, void *arg);
/* Transactions. eng_db_begin queues stmt like eng_db_query, with BEGIN sent just before it; from
 * then until the transaction ends the connection runs only the transaction's statements, and
 * other queries wait. The callback of each statement that succeeded must at once (before it
 * returns) queue the next one with eng_db_txn_query or end the transaction with eng_db_commit.
 * A statement that fails ends the transaction (db.c rolls it back before anything else is sent),
 * and so does a lost connection: its callback gets the error and queues nothing more for it.
 * COMMIT's callback says whether the transaction committed (after a lost connection it is not
 * known). Only eng_db_begin's query may be withdrawn (eng_db_cancel), before its BEGIN is sent. */
eng_db_op *eng_db_begin(eng_db *db, const char *stmt, int nparams, const char *const *params,
                        eng_db_cb *cb, void *arg);
void eng_db_txn_query(eng_db *db, const char *stmt, int nparams, const char *const *params,
                      eng_db_cb *cb, void *arg);
void eng_db_commit(eng_db *db, eng_db_cb *cb, void *arg);
/* Withdraws a query that was not sent yet: it never runs, and its callback runs in its turn with
 * ENG_ECANCELED. One already sent completes as usual (its outcome is the server's). */
void eng_db_cancel(eng_db_op *op);

/* True when the connection is up. */
bool eng_db_connected(const eng_db *db);
/* True when the server is unreachable: the connection was lost or an attempt failed, and no
 * attempt has succeeded since (the first connection attempt is not "down" until it fails). The
 * process logs one line when its first connection goes down and one when the last comes back. */
bool eng_db_down(const eng_db *db);
/* The server process of the current connection (pg_backend_pid()), 0 when not connected: tells a
 * caller whether a query ran on the connection it was prepared for. */
int eng_db_backend_pid(const eng_db *db);
/* Queries queued or in flight. */
int eng_db_pending(const eng_db *db);

/* Per-connection state of other modules (the llm answer batcher, the rate-limit probes): each
 * module keys its slot with the address of one of its own statics, so keys never collide. The
 * connection owns what is set: eng_db_free calls free_fn(data) (when non-NULL) after dropping the
 * queued queries, whose callbacks are not called, so free_fn also releases what those callbacks
 * would have. Setting a key again frees the previous data. Loop thread only, like the rest. */
typedef void eng_db_slot_free(void *data);
/* The data set under key, or NULL. */
void *eng_db_slot(const eng_db *db, const void *key);
void eng_db_slot_set(eng_db *db, const void *key, void *data, eng_db_slot_free *free_fn);

/* The one map from a SQLSTATE to eng_rc (NULL or malformed: ENG_EDB):
 * - ENG_EDB_RETRY: class 08 (connection exception) and 57P01 (admin shutdown): the connection is
 *   gone; class 40 (transaction rollback: 40001 serialization failure, 40P01 deadlock): the server
 *   undid the whole transaction, so running it again is both safe and the remedy; 53300 (too many
 *   connections): the server is full for now, which passes like an unreachable one.
 * - ENG_ECONFLICT: 23505 (unique violation), 55000 (object not in the required state), FL409 (an
 *   idempotency key reused with another request).
 * - ENG_ENOTFOUND: P0002. ENG_EINVAL: classes 22 and 23 (bad data), P0001 (our RAISE).
 * - ENG_EDB: everything else (the statement is refused for good). */
eng_rc eng_db_sqlstate_rc(const char *sqlstate);

/* Maps a failed result to an error with eng_db_sqlstate_rc (success statuses give ENG_OK), with
 * the server's primary message and err->sqlstate. A 22023 raised with COLUMN = name sets err->field
 * to "/name". */
eng_rc eng_db_classify(const PGresult *res, eng_err *err);
