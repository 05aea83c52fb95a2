/* tests/integration/test_e2e_digest.c: the shipped daily_digest workflow driven by a schedule at
 * 08:00 Europe/Berlin, through the HTTP API on the test clock, across the spring-forward night of
 * 2027-03-28: the digests go out at 07:00 UTC before it and 06:00 UTC after it, each covering the
 * window from the previous tick to its own (asked of a mock activity endpoint), one per day. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_mockhttp.h"

/* The activity endpoint: figures in JSON; it remembers nothing (the runs' inputs say what was
 * asked). */
static void stats_handler(void *arg, const th_mock_req *req, th_mock_resp *resp)
{
    (void)arg;
    (void)req;
    th_mock_resp_header(resp, "Content-Type", "application/json");
    th_mock_resp_bodyf(resp, "{\"sent\": 120, \"replied\": 9, \"booked\": 2}");
}

static void test_digest_across_spring_forward(void **state)
{
    (void)state;
    th_mock *stats = th_mock_start(stats_handler, NULL);
    th_api_opts o = {.prefix = "e2e_digest", .test_clock = true};
    th_api *a = th_api_start(&o);
    assert_int_equal(th_api_put_shipped(a, "daily_digest"), 1);
    free(th_pg_value(th_api_db(a), "SELECT flowd_clock_advance(flowd_ms_of("
                                   "'2027-03-26T12:00:00Z'::timestamptz) - flowd_ms_of(flowd_now()))"));
    char body[512];
    snprintf(body, sizeof body,
             "{\"workflow\": \"daily_digest\", \"cron\": \"0 8 * * *\", \"tz\": \"Europe/Berlin\","
             " \"input\": {\"since\": \"{{schedule.previous_fire_time}}\","
             " \"until\": \"{{schedule.fire_time}}\", \"to\": \"team@example.com\","
             " \"stats_url\": \"%s/activity\"}}",
             th_mock_url(stats));
    json_t *s = th_api_json(a, 201, "PUT", "/v1/schedules/daily-digest", body);
    static const char *const local[] = {"2027-03-27T08:00:00+01:00", "2027-03-28T08:00:00+02:00",
                                        "2027-03-29T08:00:00+02:00"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(local); i++)
        assert_string_equal(json_string_value(json_object_get(
                                json_array_get(json_object_get(s, "next_fires"), i), "local")),
                            local[i]);
    json_decref(s);

    PGconn *c = th_pgc_open(th_api_db(a));
    for (int day = 1; day <= 3; day++) {
        free(th_pg_value(th_api_db(a), "SELECT flowd_clock_advance_to_next_due()"));
        char sql[128];
        snprintf(sql, sizeof sql,
                 "SELECT count(*) = %d FROM runs WHERE state = 'succeeded' AND schedule_id IS NOT NULL",
                 day);
        /* the run's own steps are due now: nothing else moves the clock meanwhile */
        assert_true(th_pgc_wait(c, sql, 0, NULL, 30));
    }
    PQfinish(c);
    /* one digest per day, at 08:00 Berlin: 07:00 UTC, then 06:00 UTC after the change; each
     * covering the window since the previous tick */
    char *got = th_pg_value(th_api_db(a),
                            "SELECT string_agg(coalesce(input->>'since', '-') || '..'"
                            " || (input->>'until'), ',' ORDER BY id) FROM runs");
    assert_string_equal(got, "-..2027-03-27T07:00:00.000Z,"
                             "2027-03-27T07:00:00.000Z..2027-03-28T06:00:00.000Z,"
                             "2027-03-28T06:00:00.000Z..2027-03-29T06:00:00.000Z");
    free(got);
    assert_true(th_mock_requests(stats) >= 3);
    json_t *out = th_api_json(a, 200, "GET", "/v1/outbox", NULL);
    char *text = json_dumps(out, JSON_COMPACT);
    assert_non_null(strstr(text, "Digest until 2027-03-28T06:00:00.000Z"));
    assert_non_null(strstr(text, "team@example.com"));
    free(text);
    json_decref(out);
    s = th_api_json(a, 200, "GET", "/v1/schedules/daily-digest", NULL);
    assert_int_equal(json_integer_value(json_object_get(s, "fires")), 3);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(s, "last_run"), "state")), "succeeded");
    json_decref(s);
    th_api_stop(a);
    th_mock_stop(stats);
}

int main(void)
{
    th_api_init();
    step_register_all();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_digest_across_spring_forward),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
