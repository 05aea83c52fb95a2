/* tests/unit/test_lease.c: a worker's lease bookkeeping (engine/lease.h), driven without
 * PostgreSQL: the renewal's states, what a new connection asks, the hand-back list and the holds'
 * deadlines. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "engine/lease.h"

#define LEASE_MS 30000 /* heartbeat every 10 s */

/* Builds a renewal at now for a worker holding held[], checks its parameters against the
 * expected literals (pid NULL: the renewal does not ask), and releases it. */
static void renew(eng_lease *l, const int64_t *held, size_t nheld, int pid, double now,
                  const char *want_held, const char *want_ids, const char *want_attempts,
                  const char *want_claimed, const char *want_pid)
{
    eng_lease_renewal r;
    eng_lease_renewal_build(l, &r, "w1", held, nheld, pid, now);
    assert_string_equal(r.params[0], "w1");
    assert_string_equal(r.params[1], "30000");
    assert_string_equal(r.params[2], want_held);
    assert_string_equal(r.params[3], want_ids);
    assert_string_equal(r.params[4], want_attempts);
    assert_string_equal(r.params[5], want_claimed);
    if (want_pid)
        assert_string_equal(r.params[6], want_pid);
    else
        assert_null(r.params[6]);
    eng_lease_renewal_deinit(&r);
}

static void test_renewal_states(void **state)
{
    (void)state;
    eng_lease l;
    eng_lease_init(&l, LEASE_MS);
    assert_int_equal(l.state, ENG_LEASE_IDLE);
    assert_int_equal(l.conn, ENG_LEASE_SETTLED);
    assert_true(eng_lease_heartbeat_s(&l) == 10.0);
    assert_true(eng_lease_may_claim(&l));
    /* nothing held, nothing to say: no renewal */
    assert_false(eng_lease_renewal_due(&l, false));
    assert_true(eng_lease_renewal_due(&l, true));

    int64_t held[] = {7, 3, 9};
    renew(&l, held, 3, 4242, 100.0, "{7,3,9}", "{}", "{}", "{}", NULL);
    assert_int_equal(l.state, ENG_LEASE_RENEWING);
    assert_true(eng_lease_may_claim(&l));
    assert_false(eng_lease_renewal_due(&l, true)); /* one on the wire at a time */

    /* a transient failure (connection lost, retry asked) changes nothing for claims */
    assert_false(eng_lease_renewal_done(&l, ENG_LEASE_TRANSIENT));
    assert_int_equal(l.state, ENG_LEASE_IDLE);
    assert_true(eng_lease_may_claim(&l));

    /* an error on a live connection stops claims until a renewal lands */
    renew(&l, held, 3, 4242, 110.0, "{7,3,9}", "{}", "{}", "{}", NULL);
    assert_false(eng_lease_renewal_done(&l, ENG_LEASE_REFUSED));
    assert_int_equal(l.state, ENG_LEASE_FAILING);
    assert_false(eng_lease_may_claim(&l));
    assert_true(eng_lease_renewal_due(&l, false)); /* even with nothing held */
    renew(&l, NULL, 0, 4242, 120.0, "{}", "{}", "{}", "{}", NULL);
    assert_int_equal(l.state, ENG_LEASE_RETRYING);
    assert_false(eng_lease_may_claim(&l));
    assert_false(eng_lease_renewal_due(&l, true));
    assert_false(eng_lease_renewal_done(&l, ENG_LEASE_REFUSED));
    assert_int_equal(l.state, ENG_LEASE_FAILING);
    renew(&l, NULL, 0, 4242, 130.0, "{}", "{}", "{}", "{}", NULL);
    assert_true(eng_lease_renewal_done(&l, ENG_LEASE_LANDED));
    assert_int_equal(l.state, ENG_LEASE_IDLE);
    assert_true(eng_lease_may_claim(&l));

    /* a retry that fails transiently lets claims go on (the reconnect is what matters then) */
    renew(&l, NULL, 0, 4242, 140.0, "{}", "{}", "{}", "{}", NULL);
    assert_false(eng_lease_renewal_done(&l, ENG_LEASE_REFUSED));
    renew(&l, NULL, 0, 4242, 150.0, "{}", "{}", "{}", "{}", NULL);
    assert_false(eng_lease_renewal_done(&l, ENG_LEASE_TRANSIENT));
    assert_int_equal(l.state, ENG_LEASE_IDLE);
    assert_true(eng_lease_may_claim(&l));
    eng_lease_deinit(&l);
}

static void test_fresh_connection(void **state)
{
    (void)state;
    eng_lease l;
    eng_lease_init(&l, LEASE_MS);
    eng_lease_connected(&l);
    assert_int_equal(l.conn, ENG_LEASE_FRESH);
    assert_true(eng_lease_renewal_due(&l, false)); /* it must ask, even holding nothing */

    /* not connected (pid 0): the renewal cannot say which backend's claims were seen */
    renew(&l, NULL, 0, 0, 1.0, "{}", "{}", "{}", "{}", NULL);
    assert_int_equal(l.conn, ENG_LEASE_FRESH);
    assert_true(eng_lease_renewal_done(&l, ENG_LEASE_LANDED));
    assert_int_equal(l.conn, ENG_LEASE_FRESH);

    /* asks; a failed ask is asked again */
    renew(&l, NULL, 0, 4242, 2.0, "{}", "{}", "{}", "{}", "4242");
    assert_int_equal(l.conn, ENG_LEASE_ASKING);
    assert_false(eng_lease_renewal_due(&l, false));
    assert_false(eng_lease_renewal_done(&l, ENG_LEASE_TRANSIENT));
    assert_int_equal(l.conn, ENG_LEASE_FRESH);
    renew(&l, NULL, 0, 4343, 3.0, "{}", "{}", "{}", "{}", "4343");
    assert_false(eng_lease_renewal_done(&l, ENG_LEASE_REFUSED));
    assert_int_equal(l.conn, ENG_LEASE_FRESH);

    /* an ask that lands settles it: later renewals do not ask */
    renew(&l, NULL, 0, 4343, 4.0, "{}", "{}", "{}", "{}", "4343");
    assert_true(eng_lease_renewal_done(&l, ENG_LEASE_LANDED));
    assert_int_equal(l.conn, ENG_LEASE_SETTLED);
    assert_false(eng_lease_renewal_due(&l, false));
    renew(&l, NULL, 0, 4343, 5.0, "{}", "{}", "{}", "{}", NULL);
    assert_true(eng_lease_renewal_done(&l, ENG_LEASE_LANDED));

    /* a new connection while the ask is on the wire: its answer, whatever it is, was about the
     * old connection, so the next renewal asks again */
    eng_lease_connected(&l);
    renew(&l, NULL, 0, 4343, 6.0, "{}", "{}", "{}", "{}", "4343");
    eng_lease_connected(&l);
    assert_true(eng_lease_renewal_done(&l, ENG_LEASE_LANDED));
    assert_int_equal(l.conn, ENG_LEASE_FRESH);
    renew(&l, NULL, 0, 4444, 7.0, "{}", "{}", "{}", "{}", "4444");
    assert_true(eng_lease_renewal_done(&l, ENG_LEASE_LANDED));
    assert_int_equal(l.conn, ENG_LEASE_SETTLED);
    eng_lease_deinit(&l);
}

static void test_hand_back(void **state)
{
    (void)state;
    eng_lease l;
    eng_lease_init(&l, LEASE_MS);
    eng_lease_hand_back(&l, 10, 1, 1000);
    eng_lease_hand_back(&l, 11, 2, 2000);
    assert_true(eng_lease_renewal_due(&l, false));

    /* what a renewal that did not land carried goes with the next one */
    renew(&l, NULL, 0, 1, 1.0, "{}", "{10,11}", "{1,2}", "{1000,2000}", NULL);
    assert_false(eng_lease_renewal_done(&l, ENG_LEASE_TRANSIENT));
    renew(&l, NULL, 0, 1, 2.0, "{}", "{10,11}", "{1,2}", "{1000,2000}", NULL);
    assert_false(eng_lease_renewal_done(&l, ENG_LEASE_REFUSED));

    /* one stopped while a renewal is on the wire is not in it, and stays after it lands */
    renew(&l, NULL, 0, 1, 3.0, "{}", "{10,11}", "{1,2}", "{1000,2000}", NULL);
    eng_lease_hand_back(&l, 12, 1, 3000);
    assert_true(eng_lease_renewal_done(&l, ENG_LEASE_LANDED));
    assert_int_equal(l.nrelease, 1);
    renew(&l, NULL, 0, 1, 4.0, "{}", "{12}", "{1}", "{3000}", NULL);
    assert_true(eng_lease_renewal_done(&l, ENG_LEASE_LANDED));
    assert_int_equal(l.nrelease, 0);
    assert_false(eng_lease_renewal_due(&l, false));

    /* past the first allocation */
    for (int i = 0; i < 100; i++)
        eng_lease_hand_back(&l, 100 + i, 1, i);
    eng_lease_renewal r;
    eng_lease_renewal_build(&l, &r, "w1", NULL, 0, 1, 5.0);
    assert_int_equal(strncmp(r.params[3], "{100,101,", 9), 0);
    assert_non_null(strstr(r.params[3], ",198,199}"));
    assert_non_null(strstr(r.params[5], ",98,99}"));
    eng_lease_renewal_deinit(&r);
    assert_true(eng_lease_renewal_done(&l, ENG_LEASE_LANDED));
    assert_int_equal(l.nrelease, 0);
    eng_lease_deinit(&l);
}

static void test_holds(void **state)
{
    (void)state;
    eng_lease l;
    eng_lease_init(&l, LEASE_MS);
    /* a claim's lease runs from its trip's sending */
    eng_lease_hold a;
    eng_lease_hold_claimed(&l, &a, 100.0);
    assert_true(a.until == 130.0);
    /* stopped once it may end before the heartbeat after now */
    assert_false(eng_lease_expiring(&l, &a, 119.0));
    assert_true(eng_lease_expiring(&l, &a, 120.5));

    /* a renewal extends what was claimed before it was built, from its own sending */
    renew(&l, NULL, 0, 1, 110.0, "{}", "{}", "{}", "{}", NULL);
    eng_lease_hold b;
    eng_lease_hold_claimed(&l, &b, 105.0); /* its trip left before the renewal, answered after */
    assert_true(b.seq > a.seq);
    assert_true(eng_lease_renewal_done(&l, ENG_LEASE_LANDED));
    eng_lease_hold_renewed(&l, &a);
    eng_lease_hold_renewed(&l, &b);
    assert_true(a.until == 140.0);
    assert_true(b.until == 135.0); /* not covered: the renewal did not name it */
    assert_false(eng_lease_expiring(&l, &a, 129.0));

    /* never shortened */
    eng_lease_hold c;
    eng_lease_hold_claimed(&l, &c, 200.0);
    renew(&l, NULL, 0, 1, 150.0, "{}", "{}", "{}", "{}", NULL);
    assert_true(eng_lease_renewal_done(&l, ENG_LEASE_LANDED));
    eng_lease_hold_renewed(&l, &c);
    assert_true(c.until == 230.0);

    /* renewals that do not land leave the holds to run out */
    renew(&l, NULL, 0, 1, 160.0, "{}", "{}", "{}", "{}", NULL);
    assert_false(eng_lease_renewal_done(&l, ENG_LEASE_TRANSIENT));
    assert_true(eng_lease_expiring(&l, &a, 131.0));
    eng_lease_deinit(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_renewal_states),
        cmocka_unit_test(test_fresh_connection),
        cmocka_unit_test(test_hand_back),
        cmocka_unit_test(test_holds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
