/* tests/integration/test_db_txn.c: engine/db.c's transactions (eng_db_begin, eng_db_txn_query,
 * eng_db_commit) against a real PostgreSQL.
 *
 * While a transaction is open the connection runs only its statements: a query another module
 * queues meanwhile runs after the COMMIT, never inside the transaction (where a rollback would undo
 * a write its caller was told had landed). A statement that fails ends the transaction: what it
 * wrote is rolled back and the next query runs on a clean connection. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <ev.h>
#include <stdlib.h>
#include <string.h>

#include "engine/db.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "tests/support/th.h"

/* The order callbacks ran in, and what each saw. */
typedef struct txn_fx {
    eng_db *db;
    char order[64];    /* one letter per callback, in the order they ran */
    long long seen[8]; /* first value each callback got, by letter - 'a' */
    eng_rc rc[8];
    int done;          /* callbacks that end a case */
} txn_fx;

typedef struct txn_cb_arg {
    txn_fx *fx;
    char letter;
} txn_cb_arg;

static void txn_record(txn_fx *fx, char letter, const eng_err *err, const PGresult *res)
{
    size_t n = strlen(fx->order);
    fx->order[n] = letter;
    fx->rc[letter - 'a'] = err ? err->rc : ENG_OK;
    if (!err && res && PQntuples(res) > 0)
        fx->seen[letter - 'a'] = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
}

static txn_cb_arg args[8];

static void on_outside(void *arg, const eng_err *err, const PGresult *res)
{
    txn_cb_arg *a = arg;
    txn_record(a->fx, a->letter, err, res);
    a->fx->done++;
}

static void on_commit(void *arg, const eng_err *err, const PGresult *res)
{
    txn_cb_arg *a = arg;
    txn_record(a->fx, a->letter, err, res);
}

static void on_second(void *arg, const eng_err *err, const PGresult *res)
{
    txn_cb_arg *a = arg;
    txn_record(a->fx, a->letter, err, res);
    if (!err)
        eng_db_commit(a->fx->db, on_commit, &args['c' - 'a']);
}

/* The transaction's first statement: another module queues a query meanwhile, then the
 * transaction goes on. */
static void on_first(void *arg, const eng_err *err, const PGresult *res)
{
    txn_cb_arg *a = arg;
    txn_record(a->fx, a->letter, err, res);
    if (err)
        return;
    eng_db_query(a->fx->db, "SELECT count(*) FROM txn_probe", 0, NULL, on_outside,
                 &args['d' - 'a']);
    eng_db_txn_query(a->fx->db, "INSERT INTO txn_probe VALUES (2) RETURNING 2", 0, NULL, on_second,
                     &args['b' - 'a']);
}

static void run_until(struct ev_loop *loop, txn_fx *fx, int done)
{
    long long end = th_now_ms() + 10000;
    while (fx->done < done && th_now_ms() < end)
        ev_run(loop, EVRUN_ONCE);
    assert_int_equal(fx->done, done);
}

static void test_txn_holds_the_connection(void **state)
{
    (void)state;
    char *db = th_pg_new_db("db_txn");
    th_pg_long(db, "CREATE TABLE txn_probe (x int PRIMARY KEY); SELECT 1");
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    txn_fx fx = {0};
    fx.db = eng_db_new(loop, &(eng_db_opts){.conninfo = db});
    for (int i = 0; i < 8; i++)
        args[i] = (txn_cb_arg){&fx, (char)('a' + i)};

    eng_db_begin(fx.db, "INSERT INTO txn_probe VALUES (1) RETURNING 1", 0, NULL, on_first,
                 &args['a' - 'a']);
    run_until(loop, &fx, 1);
    /* first statement, second, COMMIT, then the query queued in between: it saw both rows */
    assert_string_equal(fx.order, "abcd");
    assert_int_equal(fx.rc['c' - 'a'], ENG_OK);
    assert_int_equal(fx.seen['d' - 'a'], 2);

    /* a failing statement: the transaction's first row is rolled back, and the connection is
     * clean for the next query (no "current transaction is aborted") */
    fx = (txn_fx){.db = fx.db};
    eng_db_begin(fx.db, "INSERT INTO txn_probe VALUES (3) RETURNING 3", 0, NULL, on_first,
                 &args['a' - 'a']);
    /* on_first's second statement inserts 2 again: a duplicate key */
    run_until(loop, &fx, 1);
    assert_string_equal(fx.order, "abd");
    assert_int_equal(fx.rc['a' - 'a'], ENG_OK);
    assert_int_equal(fx.rc['b' - 'a'], ENG_ECONFLICT);
    assert_int_equal(fx.rc['d' - 'a'], ENG_OK);
    assert_int_equal(fx.seen['d' - 'a'], 2);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM txn_probe WHERE x = 3"), 0);

    eng_db_free(fx.db);
    ev_loop_destroy(loop);
    free(db);
}

int main(void)
{
    eng_mem_init();
    eng_log_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_txn_holds_the_connection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
