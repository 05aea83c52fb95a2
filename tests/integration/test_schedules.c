/* tests/integration/test_schedules.c: schedules through the HTTP API, driven by the test clock.
 *
 * Nothing waits for real time to pass: each test moves the engine clock (to a fixed date, or to
 * the next due tick) and waits for the scheduler of the in-process workers to make the runs.
 * Covered: cron read in America/New_York across the spring-forward gap and the fall-back fold
 * (one run per tick, at the instants cron.h defines), catch-up none / latest / all after a jump,
 * overlap skip and cancel_previous, the input template, pause and resume, trigger, delete, and
 * the refusals of PUT (each naming its field); and runs enqueued to start later. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "engine/metrics.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"

static th_api *start(const char *prefix)
{
    th_api_opts o = {.prefix = prefix, .test_clock = true};
    th_api *a = th_api_start(&o);
    json_decref(th_api_json(a, 201, "PUT", "/v1/workflows/tick",
                            "{\"steps\": [{\"key\": \"t\", \"kind\": \"transform\","
                            " \"input\": {\"at\": \"{{input.at}}\"}}]}"));
    json_decref(th_api_json(a, 201, "PUT", "/v1/workflows/hold",
                            "{\"steps\": [{\"key\": \"w\", \"kind\": \"wait_event\","
                            " \"input\": {\"event\": \"go\", \"key\": \"k\"}}]}"));
    return a;
}

/* Moves the engine clock to the instant iso (RFC 3339), which must lie ahead. */
static void clock_to(th_api *a, const char *iso)
{
    free(th_pg_valuef(th_api_db(a),
                      "SELECT flowd_clock_advance(flowd_ms_of('%s'::timestamptz)"
                      " - flowd_ms_of(flowd_now()))",
                      iso));
}

/* Moves the clock to the next tick of any schedule (or due step). */
static void clock_next(th_api *a)
{
    free(th_pg_value(th_api_db(a), "SELECT flowd_clock_advance_to_next_due()"));
}

/* Waits until schedule name has made n runs; fails the test after 20 s. */
static void wait_fires(th_api *a, const char *name, long n)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT fires + skips >= %ld FROM schedules WHERE name = '%s'", n,
             name);
    PGconn *c = th_pgc_open(th_api_db(a));
    assert_true(th_pgc_wait(c, sql, 0, NULL, 20));
    PQfinish(c);
}

/* The fire times of the runs of schedule name, in order, comma-separated (caller frees). */
static char *fire_times(th_api *a, const char *name)
{
    char *s = th_pg_valuef(th_api_db(a),
                           "SELECT coalesce(string_agg(r.input->>'at', ',' ORDER BY r.id), '')"
                           "  FROM runs r JOIN schedules s ON s.id = r.schedule_id"
                           " WHERE s.name = '%s'",
                           name);
    return s;
}

static void put(th_api *a, long status, const char *name, const char *body)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/schedules/%s", name);
    json_decref(th_api_json(a, status, "PUT", path, body));
}

static void del(th_api *a, long status, const char *name)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/schedules/%s", name);
    long got = 0;
    free(th_api_raw(a, "DELETE", path, NULL, &got));
    assert_int_equal(got, status);
}

static void test_dst_new_york(void **state)
{
    (void)state;
    th_api *a = start("sch_dst");
    clock_to(a, "2027-03-13T12:00:00Z");
    put(a, 201, "nightly",
        "{\"workflow\": \"tick\", \"cron\": \"30 2 * * *\", \"tz\": \"America/New_York\","
        " \"input\": {\"at\": \"{{schedule.fire_time}}\"}}");
    /* 02:30 does not exist on 2027-03-14 in New York: the tick is 03:00 EDT, the first instant
     * after the gap; the next day's 02:30 EDT is 06:30 UTC */
    json_t *s = th_api_json(a, 200, "GET", "/v1/schedules/nightly", NULL);
    json_t *ticks = json_object_get(s, "next_fires");
    assert_int_equal(json_array_size(ticks), 10);
    assert_string_equal(json_string_value(json_object_get(json_array_get(ticks, 0), "utc")),
                        "2027-03-14T07:00:00.000Z");
    assert_string_equal(json_string_value(json_object_get(json_array_get(ticks, 0), "local")),
                        "2027-03-14T03:00:00-04:00");
    assert_string_equal(json_string_value(json_object_get(json_array_get(ticks, 1), "local")),
                        "2027-03-15T02:30:00-04:00");
    json_decref(s);
    for (int i = 1; i <= 3; i++) {
        clock_next(a);
        wait_fires(a, "nightly", i);
    }
    char *got = fire_times(a, "nightly");
    assert_string_equal(got, "2027-03-14T07:00:00.000Z,2027-03-15T06:30:00.000Z,"
                             "2027-03-16T06:30:00.000Z");
    free(got);
    del(a, 204, "nightly");

    /* fall back: 01:30 happens twice on 2027-11-07; it fires once, at its first occurrence
     * (EDT, 05:30 UTC), and the next run is the next day's (EST, 06:30 UTC) */
    clock_to(a, "2027-11-06T12:00:00Z");
    put(a, 201, "early",
        "{\"workflow\": \"tick\", \"cron\": \"30 1 * * *\", \"tz\": \"America/New_York\","
        " \"input\": {\"at\": \"{{schedule.fire_time}}\"}}");
    for (int i = 1; i <= 2; i++) {
        clock_next(a);
        wait_fires(a, "early", i);
    }
    got = fire_times(a, "early");
    assert_string_equal(got, "2027-11-07T05:30:00.000Z,2027-11-08T06:30:00.000Z");
    free(got);
    th_api_stop(a);
}

/* The scheduler counts a pass once its transaction has answered, a moment after the rows the test
 * waited for were committed: the metric reaches want within a few seconds. */
static void metric_is(const char *family, const char *labels, uint64_t want)
{
    for (int i = 0; i < 500 && eng_metrics_value(family, labels) < want; i++)
        th_sleep_ms(10);
    assert_int_equal(eng_metrics_value(family, labels), want);
}

/* An hourly schedule 5 h 30 min past its tick: each policy on its own schedule. */
static void test_catchup(void **state)
{
    (void)state;
    th_api *a = start("sch_catchup");
    clock_to(a, "2027-01-10T10:59:00Z");
    static const char *const policies[] = {"none", "latest", "all"};
    for (int i = 0; i < 3; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"workflow\": \"tick\", \"every\": \"1h\", \"catchup\": \"%s\","
                 " \"input\": {\"at\": \"{{schedule.fire_time}}\"}}",
                 policies[i]);
        put(a, 201, policies[i], body);
    }
    clock_to(a, "2027-01-10T15:30:00Z"); /* ticks 11:00 .. 15:00 were missed */
    wait_fires(a, "none", 5);
    wait_fires(a, "latest", 5);
    wait_fires(a, "all", 5);
    char *got = fire_times(a, "none");
    assert_string_equal(got, ""); /* the latest is 30 min late: none runs */
    free(got);
    got = fire_times(a, "latest");
    assert_string_equal(got, "2027-01-10T15:00:00.000Z");
    free(got);
    got = fire_times(a, "all");
    assert_string_equal(got, "2027-01-10T11:00:00.000Z,2027-01-10T12:00:00.000Z,"
                             "2027-01-10T13:00:00.000Z,2027-01-10T14:00:00.000Z,"
                             "2027-01-10T15:00:00.000Z");
    free(got);
    json_t *s = th_api_json(a, 200, "GET", "/v1/schedules/none", NULL);
    assert_int_equal(json_integer_value(json_object_get(s, "skips")), 5);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(s, "last_skip"), "reason")), "missed");
    assert_string_equal(json_string_value(json_object_get(s, "next_fire")),
                        "2027-01-10T16:00:00.000Z");
    json_decref(s);
    /* one run per tick: nothing fires twice while the clock stands */
    assert_int_equal(th_pg_long(th_api_db(a), "SELECT count(*) FROM runs"), 6);
    /* counted by this process's scheduler: 6 fires with their lag, 5 + 4 ticks passed over */
    metric_is("flowd_schedule_fires_total", "", 6);
    metric_is("flowd_schedule_lag_seconds_count", "", 6);
    metric_is("flowd_schedule_skips_total", "reason=\"missed\"", 9);

    /* a tick on time under none fires; and previous_fire_time is the tick of the last run */
    put(a, 200, "none",
        "{\"workflow\": \"tick\", \"every\": \"1h\", \"catchup\": \"none\","
        " \"input\": {\"at\": \"{{schedule.fire_time}}|{{schedule.previous_fire_time}}\"}}");
    clock_next(a);
    wait_fires(a, "none", 6);
    clock_next(a);
    wait_fires(a, "none", 7);
    got = fire_times(a, "none");
    assert_string_equal(got, "2027-01-10T16:00:00.000Z|null,"
                             "2027-01-10T17:00:00.000Z|2027-01-10T16:00:00.000Z");
    free(got);
    th_api_stop(a);
}

static long run_count(th_api *a, const char *state)
{
    return th_pg_longf(th_api_db(a),
                       "SELECT count(*) FROM runs WHERE schedule_id IS NOT NULL AND state = '%s'",
                       state);
}

static void test_overlap(void **state)
{
    (void)state;
    th_api *a = start("sch_overlap");
    clock_to(a, "2027-02-01T08:59:30Z");
    put(a, 201, "skipper", "{\"workflow\": \"hold\", \"every\": \"1m\", \"overlap\": \"skip\"}");
    clock_next(a);
    wait_fires(a, "skipper", 1);
    clock_next(a); /* the first run still waits: this tick is skipped */
    wait_fires(a, "skipper", 2);
    json_t *s = th_api_json(a, 200, "GET", "/v1/schedules/skipper", NULL);
    assert_int_equal(json_integer_value(json_object_get(s, "fires")), 1);
    assert_int_equal(json_integer_value(json_object_get(s, "skips")), 1);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(s, "last_skip"), "reason")), "overlap");
    json_decref(s);
    json_decref(th_api_json(a, 202, "POST", "/v1/events", "{\"name\": \"go\", \"key\": \"k\"}"));
    PGconn *c = th_pgc_open(th_api_db(a));
    assert_true(th_pgc_wait(c, "SELECT count(*) = 1 FROM runs WHERE state = 'succeeded'", 0, NULL,
                            20));
    clock_next(a); /* finished: the next tick runs */
    wait_fires(a, "skipper", 3);
    assert_int_equal(th_pg_long(th_api_db(a), "SELECT fires FROM schedules"), 2);
    assert_true(th_pgc_wait(c, "SELECT count(*) = 1 FROM runs WHERE state = 'running'", 0, NULL,
                            20));
    del(a, 204, "skipper");

    put(a, 201, "replacer",
        "{\"workflow\": \"hold\", \"every\": \"1m\", \"overlap\": \"cancel_previous\"}");
    clock_next(a);
    wait_fires(a, "replacer", 1);
    assert_true(th_pgc_wait(c, "SELECT count(*) = 2 FROM runs WHERE state = 'running'", 0, NULL,
                            20));
    clock_next(a);
    wait_fires(a, "replacer", 2);
    /* the replacer's first run was cancelled by its second; the skipper's run is untouched */
    assert_true(th_pgc_wait(c,
                            "SELECT count(*) = 1 FROM runs r JOIN schedules s"
                            " ON s.id = r.schedule_id AND s.name = 'replacer'"
                            " WHERE r.state = 'cancelled'",
                            0, NULL, 20));
    assert_int_equal(run_count(a, "cancelled"), 1);
    PQfinish(c);
    th_api_stop(a);
}

static void test_pause_trigger_delete(void **state)
{
    (void)state;
    th_api *a = start("sch_pause");
    clock_to(a, "2027-04-01T00:00:30Z");
    put(a, 201, "p",
        "{\"workflow\": \"tick\", \"cron\": \"*/10 * * * *\", \"catchup\": \"latest\","
        " \"input\": {\"at\": \"{{schedule.name}}@{{schedule.fire_time}}\"}}");
    json_t *s = th_api_json(a, 200, "POST", "/v1/schedules/p/pause", NULL);
    assert_true(json_is_true(json_object_get(s, "paused")));
    json_decref(s);
    clock_to(a, "2027-04-01T00:35:00Z");
    /* paused: nothing is due, so the next due thing is nothing of this schedule */
    assert_int_equal(th_pg_long(th_api_db(a), "SELECT count(*) FROM runs"), 0);
    json_decref(th_api_json(a, 200, "POST", "/v1/schedules/p/resume", NULL));
    wait_fires(a, "p", 3); /* 00:10, 00:20 passed over, 00:30 (latest) runs */
    char *got = fire_times(a, "p");
    assert_string_equal(got, "p@2027-04-01T00:30:00.000Z");
    free(got);

    /* trigger: a run now, whatever the ticks; counted as the schedule's last run */
    json_t *run = th_api_json(a, 201, "POST", "/v1/schedules/p/trigger", NULL);
    assert_string_equal(json_string_value(json_object_get(run, "schedule")), "p");
    long long id = json_integer_value(json_object_get(run, "id"));
    json_decref(run);
    s = th_api_json(a, 200, "GET", "/v1/schedules/p", NULL);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(s, "last_run"), "id")), id);
    assert_string_equal(json_string_value(json_object_get(s, "next_fire")),
                        "2027-04-01T00:40:00.000Z");
    json_decref(s);
    s = th_api_json(a, 200, "GET", "/v1/schedules", NULL);
    assert_int_equal(json_array_size(json_object_get(s, "schedules")), 1);
    json_decref(s);
    del(a, 204, "p");
    del(a, 404, "p");
    json_decref(th_api_json(a, 404, "GET", "/v1/schedules/p", NULL));
    json_decref(th_api_json(a, 404, "POST", "/v1/schedules/p/trigger", NULL));
    th_api_stop(a);
}

/* Each refusal names its field, and nothing is written. */
static void test_put_refusals(void **state)
{
    (void)state;
    th_api *a = start("sch_refuse");
    json_decref(th_api_json(a, 201, "PUT", "/v1/workflows/typed",
                            "{\"input_schema\": {\"type\": \"object\", \"required\": [\"day\"],"
                            " \"properties\": {\"day\": {\"type\": \"string\"}}},"
                            " \"steps\": [{\"key\": \"t\", \"kind\": \"transform\","
                            " \"input\": {\"d\": \"{{input.day}}\"}}]}"));
    static const struct {
        const char *body, *field;
    } bad[] = {
        {"{\"workflow\": \"tick\", \"cron\": \"61 * * * *\"}", "/cron"},
        {"{\"workflow\": \"tick\"}", "/cron"},
        {"{\"workflow\": \"tick\", \"cron\": \"* * * * *\", \"every\": \"1m\"}", "/every"},
        {"{\"workflow\": \"tick\", \"every\": \"500ms\"}", "/every"},
        {"{\"workflow\": \"tick\", \"every\": \"1m\", \"tz\": \"Mars/Olympus\"}", "/tz"},
        {"{\"workflow\": \"nope\", \"every\": \"1m\"}", "/workflow"},
        {"{\"workflow\": \"tick\", \"version\": 9, \"every\": \"1m\"}", "/version"},
        {"{\"workflow\": \"tick\", \"every\": \"1m\", \"overlap\": \"queue\"}", "/overlap"},
        {"{\"workflow\": \"tick\", \"every\": \"1m\", \"catchup\": \"some\"}", "/catchup"},
        {"{\"workflow\": \"tick\", \"every\": \"1m\", \"start_at\": \"2027-02-30T00:00:00Z\"}",
         "/start_at"},
        {"{\"workflow\": \"tick\", \"every\": \"1m\", \"start_at\": \"2027-03-01T00:00:00Z\","
         " \"end_at\": \"2027-02-01T00:00:00Z\"}",
         "/end_at"},
        {"{\"workflow\": \"tick\", \"every\": \"1m\", \"end_at\": \"2020-01-01T00:00:00Z\"}",
         "/end_at"},
        {"{\"workflow\": \"tick\", \"every\": \"1m\", \"input\": {\"a\": \"{{input.x}}\"}}",
         "/input/a"},
        {"{\"workflow\": \"typed\", \"every\": \"1m\", \"input\": {\"day\": 5}}", "/input/day"},
        {"{\"workflow\": \"typed\", \"every\": \"1m\"}", "/input/day"},
        {"{\"workflow\": \"tick\", \"every\": \"1m\", \"colour\": 1}", "colour"},
        {"{\"workflow\": \"tick\", \"every\": \"1m\", \"name\": \"other\"}", "/name"},
    };
    for (size_t i = 0; i < ENG_ARRAY_LEN(bad); i++) {
        json_t *e = th_api_json(a, 422, "PUT", "/v1/schedules/s", bad[i].body);
        const char *field =
            json_string_value(json_object_get(json_object_get(e, "error"), "field"));
        if (!field || !strstr(field, bad[i].field))
            fail_msg("body %s: field %s, want %s", bad[i].body, field ? field : "(none)",
                     bad[i].field);
        json_decref(e);
    }
    json_decref(th_api_json(a, 422, "PUT", "/v1/schedules/a%20b", "{}"));
    assert_int_equal(th_pg_long(th_api_db(a), "SELECT count(*) FROM schedules"), 0);
    /* a good one; the input check passes with the template rendered */
    put(a, 201, "s",
        "{\"workflow\": \"typed\", \"every\": \"1m\", \"input\": {\"day\": "
        "\"{{schedule.fire_time}}\"}}");
    put(a, 200, "s",
        "{\"workflow\": \"typed\", \"every\": \"1m\", \"input\": {\"day\": \"x\"}}");
    th_api_stop(a);
}

static const char *run_state(json_t *run)
{
    return json_string_value(json_object_get(run, "state"));
}

/* POST /v1/runs and /v1/batches with start_in / start_at: scheduled until then, cancellable, and
 * started at their time on the engine clock. */
static void test_delayed_start(void **state)
{
    (void)state;
    th_api *a = start("sch_delay");
    clock_to(a, "2027-05-01T09:00:00Z");
    json_t *r = th_api_json(a, 201, "POST", "/v1/runs",
                            "{\"workflow\": \"tick\", \"input\": {\"at\": \"in\"},"
                            " \"start_in\": \"2h\"}");
    assert_string_equal(run_state(r), "scheduled");
    assert_non_null(strstr(json_string_value(json_object_get(r, "start_at")), "2027-05-01T11:00:0"));
    long long in = json_integer_value(json_object_get(r, "id"));
    json_decref(r);
    json_t *b = th_api_json(a, 201, "POST", "/v1/batches",
                            "{\"workflow\": \"tick\", \"inputs\": [{\"at\": \"b1\"}, {\"at\": \"b2\"}],"
                            " \"start_at\": \"2027-05-01T13:00:00+02:00\"}");
    json_decref(b);
    r = th_api_json(a, 201, "POST", "/v1/runs",
                    "{\"workflow\": \"tick\", \"input\": {\"at\": \"c\"}, \"start_in\": \"1h\"}");
    long long cancelled = json_integer_value(json_object_get(r, "id"));
    json_decref(r);
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld/cancel", cancelled);
    r = th_api_json(a, 200, "POST", path, NULL);
    assert_string_equal(run_state(r), "cancelled");
    json_decref(r);
    r = th_api_json(a, 200, "GET", "/v1/runs?state=scheduled", NULL);
    assert_int_equal(json_array_size(json_object_get(r, "runs")), 3);
    json_decref(r);

    clock_to(a, "2027-05-01T10:59:00Z"); /* a minute early: nothing starts */
    snprintf(path, sizeof path, "/v1/runs/%lld", in);
    r = th_api_json(a, 200, "GET", path, NULL);
    assert_string_equal(run_state(r), "scheduled");
    json_decref(r);
    assert_int_equal(th_pg_long(th_api_db(a), "SELECT count(*) FROM runs WHERE state <> 'queued'"
                                              " AND state <> 'cancelled'"),
                     0);
    clock_to(a, "2027-05-01T11:00:01Z");
    r = th_api_wait_run(a, in, 20, 20, NULL, NULL);
    assert_string_equal(run_state(r), "succeeded");
    json_decref(r);
    PGconn *c = th_pgc_open(th_api_db(a));
    assert_true(th_pgc_wait(c, "SELECT count(*) = 3 FROM runs WHERE state = 'succeeded'"
                               " AND started_at >= start_at",
                            0, NULL, 20));
    PQfinish(c);
    assert_int_equal(th_pg_longf(th_api_db(a), "SELECT count(*) FROM runs WHERE id = %lld"
                                                " AND state = 'cancelled'", cancelled),
                     1);
    th_api_stop(a);
}

/* The run of schedule name in state state (the only one: fails otherwise), as the API shows it. */
static json_t *schedule_run(th_api *a, const char *name, const char *state)
{
    char *id = th_pg_valuef(th_api_db(a),
                            "SELECT r.id FROM runs r JOIN schedules s ON s.id = r.schedule_id"
                            " WHERE s.name = '%s' AND r.state = '%s'",
                            name, state);
    assert_non_null(id);
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%s", id);
    free(id);
    return th_api_json(a, 200, "GET", path, NULL);
}

static const char *run_error_code(const json_t *run)
{
    return json_string_value(json_object_get(json_object_get(run, "error"), "code"));
}

/* Waits until schedule name has n runs waiting for their tick (made ahead). */
static void wait_ahead(th_api *a, const char *name, long n)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) = %ld FROM runs r JOIN schedules s ON s.id = r.schedule_id"
             " WHERE s.name = '%s' AND r.state = 'queued'",
             n, name);
    PGconn *c = th_pgc_open(th_api_db(a));
    assert_true(th_pgc_wait(c, sql, 0, NULL, 20));
    PQfinish(c);
}

/* A schedule whose runs may overlap makes a tick's run up to flowd_schedule_lead() (2 s) ahead of
 * it, as a delayed start that begins at the tick; a change, a pause or a deletion before the tick
 * takes that run back, and the schedule as it then stands decides what the tick does. A schedule
 * with another overlap policy is made at its tick. The engine clock runs on in real time after a
 * move: each step that must come before a tick starts 1.9 s before it. */
static void test_made_ahead(void **state)
{
    (void)state;
    th_api *a = start("sch_ahead");
    clock_to(a, "2027-07-01T09:00:00Z");
    put(a, 201, "early",
        "{\"workflow\": \"tick\", \"every\": \"1h\", \"input\": {\"at\": \"v1 {{schedule.fire_time}}\"}}");
    put(a, 201, "strict",
        "{\"workflow\": \"tick\", \"every\": \"1h\", \"overlap\": \"skip\","
        " \"input\": {\"at\": \"{{schedule.fire_time}}\"}}");
    clock_to(a, "2027-07-01T09:59:58.100Z");
    wait_ahead(a, "early", 1);
    /* a new input before the tick: the run made with the old one is taken back, and made anew */
    put(a, 200, "early",
        "{\"workflow\": \"tick\", \"every\": \"1h\", \"input\": {\"at\": \"v2 {{schedule.fire_time}}\"}}");
    json_t *run = schedule_run(a, "early", "cancelled");
    assert_string_equal(run_error_code(run), "schedule_changed");
    json_decref(run);
    wait_ahead(a, "early", 1);
    run = schedule_run(a, "early", "queued");
    assert_string_equal(run_state(run), "scheduled");
    assert_string_equal(json_string_value(json_object_get(run, "start_at")),
                        "2027-07-01T10:00:00.000Z");
    assert_string_equal(json_string_value(json_object_get(json_object_get(run, "input"), "at")),
                        "v2 2027-07-01T10:00:00.000Z");
    json_decref(run);
    json_t *s = th_api_json(a, 200, "GET", "/v1/schedules/early", NULL);
    assert_string_equal(json_string_value(json_object_get(s, "next_fire")),
                        "2027-07-01T11:00:00.000Z");
    assert_int_equal(json_integer_value(json_object_get(s, "fires")), 1);
    json_decref(s);
    /* the tick: the run made ahead starts then, not before; the strict schedule fires then */
    clock_to(a, "2027-07-01T10:00:00.200Z");
    wait_fires(a, "strict", 1);
    PGconn *c = th_pgc_open(th_api_db(a));
    assert_true(th_pgc_wait(c, "SELECT count(*) = 2 FROM runs WHERE state = 'succeeded'"
                               " AND started_at >= '2027-07-01T10:00:00Z'",
                            0, NULL, 20));

    /* paused before the tick: taken back too, and the tick is the schedule's next again */
    clock_to(a, "2027-07-01T10:59:58.100Z");
    wait_ahead(a, "early", 1);
    s = th_api_json(a, 200, "POST", "/v1/schedules/early/pause", NULL);
    assert_string_equal(json_string_value(json_object_get(s, "next_fire")),
                        "2027-07-01T11:00:00.000Z");
    assert_string_equal(json_string_value(json_object_get(s, "last_fire")),
                        "2027-07-01T10:00:00.000Z");
    assert_int_equal(json_integer_value(json_object_get(s, "fires")), 1);
    json_decref(s);
    assert_int_equal(th_pg_long(th_api_db(a), "SELECT count(*) FROM runs r"
                                              " WHERE r.error->>'code' = 'schedule_paused'"),
                     1);
    /* resumed, the schedule makes the tick again and it runs */
    json_decref(th_api_json(a, 200, "POST", "/v1/schedules/early/resume", NULL));
    clock_to(a, "2027-07-01T11:00:00.200Z");
    assert_true(th_pgc_wait(c, "SELECT count(*) = 4 FROM runs WHERE state = 'succeeded'", 0, NULL,
                            20));

    /* deleted before its next tick: the run made for it is taken back */
    clock_to(a, "2027-07-01T11:59:58.100Z");
    wait_ahead(a, "early", 1);
    del(a, 204, "early");
    assert_int_equal(th_pg_long(th_api_db(a), "SELECT count(*) FROM runs r"
                                              " WHERE r.error->>'code' = 'schedule_deleted'"),
                     1);
    PQfinish(c);
    char *got = th_pg_value(th_api_db(a), "SELECT string_agg(r.input->>'at' || ' ' || r.state,"
                                          " ',' ORDER BY r.id) FROM runs r"
                                          " WHERE r.input->>'at' LIKE 'v%'");
    assert_string_equal(got, "v1 2027-07-01T10:00:00.000Z cancelled,"
                             "v2 2027-07-01T10:00:00.000Z succeeded,"
                             "v2 2027-07-01T11:00:00.000Z cancelled,"
                             "v2 2027-07-01T11:00:00.000Z succeeded,"
                             "v2 2027-07-01T12:00:00.000Z cancelled");
    free(got);
    th_api_stop(a);
}

/* A stored schedule the engine can no longer read (here its zone, as if the time-zone data had
 * dropped it) is stopped with the reason, not planned again on every pass. */
static void test_unreadable_schedule_stops(void **state)
{
    (void)state;
    th_api *a = start("sch_unreadable");
    clock_to(a, "2027-06-01T00:00:30Z");
    put(a, 201, "z", "{\"workflow\": \"tick\", \"every\": \"1m\", \"input\": {\"at\": \"x\"}}");
    free(th_pg_value(th_api_db(a), "UPDATE schedules SET tz = 'Mars/Olympus'"));
    clock_next(a);
    wait_fires(a, "z", 1);
    json_t *s = th_api_json(a, 200, "GET", "/v1/schedules/z", NULL);
    assert_true(json_is_null(json_object_get(s, "next_fire")));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(s, "last_skip"), "reason")),
        "invalid_schedule");
    assert_int_equal(json_integer_value(json_object_get(s, "fires")), 0);
    json_decref(s);
    th_api_stop(a);
}

int main(void)
{
    th_api_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_catchup), /* first: it counts this process's metrics */
        cmocka_unit_test(test_dst_new_york),
        cmocka_unit_test(test_overlap),
        cmocka_unit_test(test_pause_trigger_delete),
        cmocka_unit_test(test_put_refusals),
        cmocka_unit_test(test_delayed_start),
        cmocka_unit_test(test_unreadable_schedule_stops),
        cmocka_unit_test(test_made_ahead),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
