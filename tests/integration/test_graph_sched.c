/* tests/integration/test_graph_sched.c: schedules over weeks of engine time: a 13-touch lead
 * sequence with sending windows in two time zones across daylight-saving changes, and cancel_on.
 *
 * The engine clock is walked forward in jumps (to the next due step, at most 6 h at a time) and the
 * test waits for the workers to settle after each jump, so 30+ days take seconds. Every assertion
 * reads the database; local times are computed by PostgreSQL (AT TIME ZONE), independently of the
 * engine's own window arithmetic.
 *
 * Real now is after the 2026 autumn changes and the clock only moves forward, so the runs start on
 * Wed 2027-03-10 16:30 UTC and cross the 2027 spring changes: US on 03-14, EU on 03-28. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <jansson.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"

/* ------------------------------------------------------------------------------ helpers -- */

/* Nothing is running and nothing is due: the workers have done all they can at this clock. */
static const char settled_sql[] =
    "SELECT NOT EXISTS (SELECT 1 FROM steps WHERE state = 'running'"
    " OR (state = 'ready' AND run_at <= flowd_now())"
    " OR (state = 'waiting' AND wait_event IS NOT NULL AND run_at <= flowd_now()))";

static void settle(PGconn *c)
{
    long long deadline = th_now_ms() + 30000;
    while (!th_pgc_true(c, settled_sql, 0, NULL)) {
        if (th_now_ms() > deadline)
            fail_msg("the workers did not settle within 30 s");
        th_sleep_ms(5);
    }
}

/* Walks the engine clock until done_sql (with run as $1) holds: settle, then jump to the next due
 * step but never more than 6 h, so that the engine also sees the hours in between. Fails when more
 * than max_days of engine time pass. Returns the number of jumps. */
static int walk(PGconn *c, const char *done_sql, long long run, int max_days)
{
    long long start = th_pgc_ll(c, "SELECT offset_ms FROM flowd_clock", 0, NULL);
    int jumps = 0;
    for (;;) {
        settle(c);
        if (th_pgc_true(c, done_sql, TH_P(th_num(run).s)))
            return jumps;
        long long moved = th_pgc_ll(c, "SELECT offset_ms FROM flowd_clock", 0, NULL) - start;
        if (moved > (long long)max_days * 86400000LL)
            fail_msg("still not done after %d days of engine time", max_days);
        long long by =
            th_pgc_ll(c,
                      "SELECT greatest(1, least(21600000, coalesce(ceil(extract(epoch FROM"
                      " min(run_at) - flowd_now()) * 1000)::bigint, 21600000)))"
                      " FROM steps WHERE state = 'ready'",
                      0, NULL);
        free(th_pgc_str(c, "SELECT flowd_clock_advance($1)", TH_P(th_num(by).s)));
        jumps++;
    }
}

/* Moves the engine clock to the instant at (a timestamptz literal). */
static void clock_to(PGconn *c, const char *at)
{
    free(th_pgc_str(c,
                    "SELECT flowd_clock_advance((extract(epoch FROM $1::timestamptz - flowd_now())"
                    " * 1000)::bigint)",
                    TH_P(at)));
}

/* ---------------------------------------------------------------------- the sequence -- */

#define TOUCHES 13
static const int touch_day[TOUCHES] = {0, 1, 2, 3, 5, 7, 10, 14, 18, 21, 25, 28, 30};
static const char touch_days_sql[] = "{0,1,2,3,5,7,10,14,18,21,25,28,30}";
static const char sequence_start[] = "2027-03-10T16:30:00Z"; /* a Wednesday */

/* Touch i waits touch_day[i] - touch_day[i-1] days after touch i-1, inside 09:00-18:00 on
 * weekdays in the lead's time zone; the sequence stops when the lead books. */
static char *sequence_def(void)
{
    json_t *steps = json_array();
    for (int i = 0; i < TOUCHES; i++) {
        char key[8], prev[8], delay[8];
        snprintf(key, sizeof key, "t%02d", i + 1);
        json_t *st = json_pack(
            "{s:s, s:s, s:{s:i, s:s}, s:{s:s, s:s, s:[s,s,s,s,s], s:s}}", "key", key, "kind",
            "transform", "input", "touch", i + 1, "lead", "{{input.lead}}", "window", "start",
            "09:00", "end", "18:00", "days", "mon", "tue", "wed", "thu", "fri", "tz", "{{input.tz}}");
        if (i > 0) {
            snprintf(prev, sizeof prev, "t%02d", i);
            snprintf(delay, sizeof delay, "%dd", touch_day[i] - touch_day[i - 1]);
            json_object_set_new(st, "needs", json_pack("[s]", prev));
            json_object_set_new(st, "delay", json_string(delay));
        }
        json_array_append_new(steps, st);
    }
    json_t *def = json_pack("{s:s, s:o, s:[{s:s, s:s}]}", "name", "touchpoints", "steps", steps,
                            "cancel_on", "event", "lead.booked", "key", "{{input.lead}}");
    char *s = json_dumps(def, JSON_COMPACT);
    json_decref(def);
    return s;
}

static void print_schedule(PGconn *c, long long run, const char *tz)
{
    PGresult *r = PQexecParams(
        c,
        "SELECT s.key, to_char(s.started_at AT TIME ZONE $2, 'Dy YYYY-MM-DD HH24:MI'),"
        " EXISTS (SELECT 1 FROM run_log e WHERE e.run_id = s.run_id AND e.step_key = s.key"
        "         AND e.type = 'step.scheduled')"
        " FROM steps s WHERE s.run_id = $1 ORDER BY s.idx",
        2, NULL, (const char *const[]){th_num(run).s, tz}, NULL, NULL, 0);
    fprintf(stderr, "# %s:", tz);
    for (int i = 0; i < PQntuples(r); i++)
        fprintf(stderr, " %s@%s%s", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                PQgetvalue(r, i, 2)[0] == 't' ? "*" : "");
    fprintf(stderr, "\n");
    PQclear(r);
}

/* Every touch of run started inside its window in tz, not before its offset from the run's start
 * nor before its delay after the previous touch; touches pushed to the next opening started at
 * 09:00 local, some of them after dst (the zone's daylight-saving change). */
static void assert_sequence_times(PGconn *c, long long run, const char *tz, const char *dst)
{
    th_num_s run_s = th_num(run);
    const char *const p2[] = {run_s.s, tz};
    assert_int_equal(
        th_pgc_ll(c, "SELECT count(*) FROM steps WHERE run_id = $1 AND state = 'succeeded'",
                  TH_P(run_s.s)),
        TOUCHES);
    /* inside 09:00-18:00 on a weekday, local time */
    assert_int_equal(
        th_pgc_ll(c,
                  "SELECT count(*) FROM steps WHERE run_id = $1 AND NOT ("
                  " (started_at AT TIME ZONE $2)::time >= '09:00'"
                  " AND (started_at AT TIME ZONE $2)::time < '18:00'"
                  " AND extract(isodow FROM started_at AT TIME ZONE $2) BETWEEN 1 AND 5)",
                  2, p2),
        0);
    /* not before the offset from the run's start */
    assert_int_equal(th_pgc_ll(c,
                               "SELECT count(*) FROM steps s JOIN runs r ON r.id = s.run_id"
                               " WHERE r.id = $1 AND s.started_at"
                               "  < r.created_at + ($2::int[])[s.idx + 1] * interval '1 day'",
                               TH_P(run_s.s, touch_days_sql)),
                     0);
    /* not before its delay after the previous touch finished */
    assert_int_equal(
        th_pgc_ll(c,
                  "SELECT count(*) FROM steps s JOIN steps p"
                  "  ON p.run_id = s.run_id AND p.idx = s.idx - 1"
                  " WHERE s.run_id = $1 AND s.started_at < p.finished_at"
                  "  + (($2::int[])[s.idx + 1] - ($2::int[])[s.idx]) * interval '1 day'",
                  TH_P(run_s.s, touch_days_sql)),
        0);
    /* Touches claimed outside their window were pushed to the next opening (the step.scheduled
     * event names a later instant): they start at exactly 09:00 local, whatever the zone's UTC
     * offset is by then. Some of those pushes come after the daylight-saving change. */
    static const char pushed[] =
        "SELECT count(*) FROM steps s WHERE s.run_id = $1 AND EXISTS (SELECT 1 FROM run_log e"
        " WHERE e.run_id = s.run_id AND e.step_key = s.key AND e.type = 'step.scheduled'"
        " AND (e.data->>'run_at')::timestamptz > e.at + interval '1 s')";
    char *sql = eng_xasprintf("%s AND to_char(s.started_at AT TIME ZONE $2, 'HH24:MI') <> '09:00'",
                              pushed);
    assert_int_equal(th_pgc_ll(c, sql, 2, p2), 0);
    free(sql);
    sql = eng_xasprintf("%s AND s.started_at > $2::timestamptz", pushed);
    const char *const p3[] = {run_s.s, dst};
    if (th_pgc_ll(c, sql, 2, p3) < 1)
        fail_msg("no touch of %s was pushed to a window opening after the change of %s", tz, dst);
    free(sql);
    /* waiting for a window opening does not spend attempts */
    assert_int_equal(th_pgc_ll(c, "SELECT count(*) FROM steps WHERE run_id = $1 AND attempts <> 1",
                               TH_P(run_s.s)),
                     0);
}

static void test_sequence_windows_two_zones(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("g_seq", &tenant);
    char *def = sequence_def();
    long long wf = th_engine_register(db, tenant, def);
    free(def);
    PGconn *c = th_pgc_open(db);
    clock_to(c, sequence_start);
    long long ny =
        th_pgc_enqueue(c, tenant, wf, "{\"lead\": \"ny-1\", \"tz\": \"America/New_York\"}");
    long long be = th_pgc_enqueue(c, tenant, wf, "{\"lead\": \"be-1\", \"tz\": \"Europe/Berlin\"}");
    long long t0 = th_now_ms();
    th_workers *ws = th_workers_start(db, 2, "seq", 0, 0, 0);
    int jumps = walk(c,
                     "SELECT count(*) = 2 FROM runs WHERE state NOT IN ('queued', 'running')"
                     " AND id >= $1 - 1",
                     be, 60);
    th_workers_stop(ws);
    long long took = th_now_ms() - t0;
    char *span = th_pgc_str(c,
                            "SELECT round(extract(epoch FROM max(finished_at) - min(created_at))"
                            " / 86400, 1) FROM runs",
                            0, NULL);
    fprintf(stderr, "# 2 x %d touches over %s days of engine time: %d clock jumps, %lld ms real\n",
            TOUCHES, span, jumps, took);
    free(span);
    print_schedule(c, ny, "America/New_York");
    print_schedule(c, be, "Europe/Berlin");
    assert_int_equal(th_pgc_ll(c, "SELECT count(*) FROM runs WHERE state = 'succeeded'", 0, NULL),
                     2);
    assert_sequence_times(c, ny, "America/New_York", "2027-03-14T07:00:00Z");
    assert_sequence_times(c, be, "Europe/Berlin", "2027-03-28T01:00:00Z");
    /* The sequence really spans a month, and took seconds. */
    assert_true(th_pgc_true(
        c, "SELECT bool_and(finished_at - created_at >= interval '30 days') FROM runs", 0, NULL));
    assert_true(took < 60000);
    PQfinish(c);
    free(db);
}

/* ---------------------------------------------------------------------------- cancel_on -- */

static void test_cancel_on_stops_sequence(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("g_cancel_on", &tenant);
    char *def = sequence_def();
    long long wf = th_engine_register(db, tenant, def);
    free(def);
    PGconn *c = th_pgc_open(db);
    clock_to(c, sequence_start);
    long long booked =
        th_pgc_enqueue(c, tenant, wf, "{\"lead\": \"l-7\", \"tz\": \"Europe/Berlin\"}");
    long long other =
        th_pgc_enqueue(c, tenant, wf, "{\"lead\": \"l-8\", \"tz\": \"Europe/Berlin\"}");
    th_workers *ws = th_workers_start(db, 2, "cancel-on", 0, 0, 0);
    walk(c,
         "SELECT count(*) >= 6 FROM steps WHERE run_id = $1 AND state = 'succeeded'", booked, 40);
    long long done_before =
        th_pgc_ll(c, "SELECT count(*) FROM steps WHERE run_id = $1 AND state = 'succeeded'",
                  TH_P(th_num(booked).s));
    assert_int_equal(done_before, 6);

    const char *argv[] = {"flowd", "--database", db, "event", "lead.booked", "l-7", NULL};
    char *out = NULL, *err = NULL;
    int st = th_flowd_run(argv, NULL, &out, &err);
    if (st != 0)
        fail_msg("flowd event: exit %d: %s", st, err);
    assert_non_null(strstr(out, "\"cancelled\": 1"));
    free(out);
    free(err);
    /* Cancelled the moment the event arrived, before any further clock movement. */
    char *run = th_pgc_str(c,
                           "SELECT state || ' ' || (error->>'code') || ' ' || (error->>'key')"
                           " FROM runs WHERE id = $1",
                           TH_P(th_num(booked).s));
    assert_string_equal(run, "cancelled cancel_on l-7");
    free(run);
    long long cancel_ev = th_pgc_ll(c,
                                    "SELECT id FROM run_log WHERE run_id = $1"
                                    " AND type = 'run.cancelled'",
                                    TH_P(th_num(booked).s));
    assert_int_equal(th_pgc_ll(c,
                               "SELECT count(*) FROM events WHERE name = 'lead.booked'"
                               " AND key = 'l-7' AND tenant_id = $1",
                               TH_P(th_num(tenant).s)),
                     1);

    /* The other lead's sequence runs to its end; the booked one never moves again. */
    walk(c, "SELECT state = 'succeeded' FROM runs WHERE id = $1", other, 60);
    th_workers_stop(ws);
    char *steps =
        th_pgc_str(c,
                   "SELECT string_agg(state || ':' || attempts, ',' ORDER BY idx) FROM steps"
                   " WHERE run_id = $1",
                   TH_P(th_num(booked).s));
    assert_string_equal(steps, "succeeded:1,succeeded:1,succeeded:1,succeeded:1,succeeded:1,"
                               "succeeded:1,cancelled:0,cancelled:0,cancelled:0,cancelled:0,"
                               "cancelled:0,cancelled:0,cancelled:0");
    free(steps);
    assert_int_equal(th_pgc_ll(c,
                               "SELECT count(*) FROM run_log WHERE run_id = $1 AND id > $2"
                               " AND type IN ('step.started', 'step.succeeded', 'step.scheduled')",
                               TH_P(th_num(booked).s, th_num(cancel_ev).s)),
                     0);
    assert_int_equal(th_pgc_ll(c,
                               "SELECT count(*) FROM run_log WHERE run_id = $1"
                               " AND type = 'step.cancelled'",
                               TH_P(th_num(booked).s)),
                     TOUCHES - 6);
    assert_int_equal(th_pgc_ll(c, "SELECT count(*) FROM run_cancel_on", 0, NULL), 0);
    assert_int_equal(
        th_pgc_ll(c, "SELECT count(*) FROM steps WHERE run_id = $1 AND state = 'succeeded'",
                  TH_P(th_num(other).s)),
        TOUCHES);
    /* A second booking finds nothing left to cancel. */
    assert_int_equal(th_pgc_ll(c,
                               "SELECT cancelled FROM flowd_event($1, 'lead.booked', 'l-7', '{}')",
                               TH_P(th_num(tenant).s)),
                     0);
    PQfinish(c);
    free(db);
}

int main(void)
{
    eng_mem_init();
    eng_log_init();
    eng_step_register_builtins();
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sequence_windows_two_zones),
        cmocka_unit_test(test_cancel_on_stops_sequence),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
