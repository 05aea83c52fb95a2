/* tests/unit/test_conn_state.c: state that steps keep per database connection (the llm answer
 * batcher, the rate-limit probes) lives in the connection's slot (eng_db_slot), so it goes with
 * the connection and a new connection never inherits it, whatever address it gets. No server is
 * needed: the connections never connect, and their queries stay queued. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <ev.h>
#include <stdint.h>

#include "engine/db.h"
#include "steps/llm_batch.h"
#include "steps/ratelimit.h"

/* Port 1 of loopback: nothing listens there. The loop never runs, so nothing is answered. */
#define NOWHERE "host=127.0.0.1 port=1 dbname=x user=x sslmode=disable gssencmode=disable"

static void never_called(void *arg, const eng_err *err, const PGresult *res)
{
    (void)arg;
    (void)err;
    (void)res;
    fail_msg("a query of a connection that never connected cannot complete");
}

typedef struct heard {
    int calls;
    eng_rc rc;
} heard;

static heard heard_item;

static void item_done(llm_batch_item *it, const eng_err *err, json_t *found)
{
    (void)it;
    assert_null(found);
    heard_item.calls++;
    heard_item.rc = err ? err->rc : ENG_OK;
}

/* A connection freed with a batch on the wire takes the batcher with it; its items hear
 * ENG_ECANCELED. The next connection, even at the same address and with a query of its own
 * queued, sends its first lookup at once instead of waiting behind a batch that never returns. */
static void test_batcher_goes_with_its_connection(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    eng_db *db1 = eng_db_new(loop, &(eng_db_opts){.conninfo = NOWHERE});
    llm_batch_item a = {.tenant = 1, .run = 1, .step = "s", .hash = "h1", .done = item_done};
    llm_batch_item b = {.tenant = 1, .run = 2, .step = "s", .hash = "h2", .done = item_done};
    llm_batch_lookup(db1, &a);
    assert_false(a.queued); /* sent: the connection had no lookup batch out */
    llm_batch_lookup(db1, &b);
    assert_true(b.queued); /* waits for the next batch */
    assert_int_equal(eng_db_pending(db1), 1);
    assert_true(llm_batch_withdraw(db1, &b));
    assert_false(llm_batch_withdraw(db1, &a)); /* on the wire: its callback will say */
    uintptr_t addr1 = (uintptr_t)db1;
    heard_item = (heard){0};
    eng_db_free(db1);
    assert_int_equal(heard_item.calls, 1);
    assert_int_equal(heard_item.rc, ENG_ECANCELED);

    eng_db *db2 = eng_db_new(loop, &(eng_db_opts){.conninfo = NOWHERE});
    print_message("second connection %s the first's address\n",
                  (uintptr_t)db2 == addr1 ? "reuses" : "does not reuse");
    eng_db_query(db2, "SELECT 1", 0, NULL, never_called, NULL);
    llm_batch_item c = {.tenant = 1, .run = 3, .step = "s", .hash = "h3", .done = item_done};
    llm_batch_lookup(db2, &c);
    assert_false(c.queued);
    assert_int_equal(eng_db_pending(db2), 2);
    heard_item = (heard){0};
    eng_db_free(db2);
    assert_int_equal(heard_item.calls, 1);
    ev_loop_destroy(loop);
}

static void take_never(void *arg, const eng_err *err, int64_t wait_ms)
{
    (void)arg;
    (void)err;
    (void)wait_ms;
    fail_msg("a take on a connection that never connected cannot be answered");
}

/* The same for the rate-limit probes: a take on a new connection never joins a probe of a freed
 * one (whose query will never be answered); the freed probe's takes are freed with it. */
static void test_probes_go_with_their_connection(void **state)
{
    (void)state;
    rl_cache_clear();
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    eng_db *db1 = eng_db_new(loop, &(eng_db_opts){.conninfo = NOWHERE});
    rl_take *t1, *t2;
    assert_false(rl_take_start(db1, 7, "conn-state", 1, 0, take_never, NULL, &t1));
    assert_false(rl_take_start(db1, 7, "conn-state", 1, 0, take_never, NULL, &t2));
    assert_int_equal(eng_db_pending(db1), 1); /* the second waits for the first's answer */
    rl_take_cancel(t2);
    eng_db_free(db1); /* frees both takes (LeakSanitizer would say otherwise) */

    eng_db *db2 = eng_db_new(loop, &(eng_db_opts){.conninfo = NOWHERE});
    eng_db_query(db2, "SELECT 1", 0, NULL, never_called, NULL);
    rl_take *t3;
    assert_false(rl_take_start(db2, 7, "conn-state", 1, 0, take_never, NULL, &t3));
    assert_int_equal(eng_db_pending(db2), 2); /* its own query, not a wait on a dead one */
    rl_take_cancel(t3);
    eng_db_free(db2);
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batcher_goes_with_its_connection),
        cmocka_unit_test(test_probes_go_with_their_connection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
