/* tests/integration/test_limits_suppressions.c: the tenant's rate limits and suppression list through
 * the HTTP API (api/routes_limits.c, api/routes_suppressions.c) and the "suppress" step kind
 * (steps/suppress.c), with a Twilio mock as the provider:
 *   - PUT/GET/DELETE /v1/rate-limits: 201/200, 422 naming the field, rows of the caller's tenant
 *     only (another tenant's and the shared rows are neither listed nor deletable);
 *   - a limit PUT after the workers cached "no such limit" paces the very next sends;
 *   - a send its limit held back is logged as such (step.rate_limited: the limit, until when);
 *   - POST/GET/DELETE /v1/suppressions: normalized addresses, first reason kept, pages through a
 *     cursor, 422/400 naming the field;
 *   - a send to an address suppressed through the API ends skipped (no provider call) and goes out
 *     again once the suppression is deleted;
 *   - the suppress step puts its address on the list, and a later send in the run is skipped. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "steps/provider.h"
#include "steps/ratelimit.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_mockmsg.h"

#define BUSINESS "+15005550006"

typedef struct world {
    th_api *api;
    th_msg *twilio;
    long long tenant;
} world;

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Asserts an error answer: status, error.code and error.field (NULL: no field). */
static void expect_error(th_api *api, long status, const char *method, const char *path,
                         const char *body, const char *code, const char *field)
{
    json_t *e = th_api_json(api, status, method, path, body);
    const json_t *err = json_object_get(e, "error");
    if (strcmp(json_string_value(json_object_get(err, "code")), code) != 0)
        fail_msg("%s %s %s: code %s, expected %s", method, path, body ? body : "",
                 json_string_value(json_object_get(err, "code")), code);
    const char *got = json_string_value(json_object_get(err, "field"));
    if (field ? !got || strcmp(got, field) != 0 : got != NULL)
        fail_msg("%s %s %s: field %s, expected %s", method, path, body ? body : "",
                 got ? got : "(none)", field ? field : "(none)");
    json_decref(e);
}

static void expect_status(th_api *api, long status, const char *method, const char *path)
{
    long got = 0;
    char *body = th_api_raw(api, method, path, NULL, &got);
    if (got != status)
        fail_msg("%s %s answered %ld, expected %ld: %s", method, path, got, status, body);
    free(body);
}

static const json_t *step_of(const json_t *run, const char *key)
{
    size_t i;
    const json_t *s;
    json_array_foreach (json_object_get(run, "steps"), i, s)
        if (strcmp(json_string_value(json_object_get(s, "key")), key) == 0)
            return s;
    fail_msg("run has no step %s", key);
    return NULL;
}

static json_t *run_to_end(th_api *api, const char *workflow, const char *input)
{
    long long id = th_api_start_run(api, workflow, input);
    return th_api_wait_run(api, id, 20, 60, NULL, NULL);
}

/* ----------------------------------------------------------------------------- rate limits -- */

static void test_rate_limit_api(void **state)
{
    world *w = *state;
    th_api *api = w->api;
    const char *db = th_api_db(api);

    json_t *l = th_api_json(api, 201, "PUT", "/v1/rate-limits/lims_api", "{\"requests_per_s\": 20}");
    assert_string_equal(json_string_value(json_object_get(l, "name")), "lims_api");
    assert_true(json_number_value(json_object_get(l, "requests_per_s")) == 20.0);
    assert_true(json_is_null(json_object_get(l, "burst_requests")));
    assert_true(json_is_null(json_object_get(l, "tokens_per_min")));
    json_decref(l);
    l = th_api_json(api, 200, "PUT", "/v1/rate-limits/lims_api",
                    "{\"name\": \"lims_api\", \"requests_per_s\": 2.5, \"burst_requests\": 5, "
                    "\"tokens_per_min\": 90000}");
    assert_true(json_number_value(json_object_get(l, "requests_per_s")) == 2.5);
    assert_true(json_number_value(json_object_get(l, "burst_requests")) == 5.0);
    assert_true(json_number_value(json_object_get(l, "tokens_per_min")) == 90000.0);
    json_decref(l);
    /* a PUT replaces every field */
    l = th_api_json(api, 200, "PUT", "/v1/rate-limits/lims_api", "{\"tokens_per_min\": 1000}");
    assert_true(json_is_null(json_object_get(l, "requests_per_s")));
    json_decref(l);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM rate_limits WHERE name = 'lims_api' AND tenant_id = %lld "
             "AND requests_per_s IS NULL AND tokens_per_min = 1000",
             w->tenant);
    assert_int_equal(th_pg_long(db, sql), 1);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM rate_limits WHERE name = 'lims_api'"), 1);

    const char *p = "/v1/rate-limits/lims_bad";
    expect_error(api, 422, "PUT", p, "{}", "invalid_request", "/requests_per_s");
    expect_error(api, 422, "PUT", p, "{\"burst_requests\": 3}", "invalid_request", "/requests_per_s");
    expect_error(api, 422, "PUT", p, "{\"requests_per_s\": -1}", "invalid_request", "/requests_per_s");
    expect_error(api, 422, "PUT", p, "{\"requests_per_s\": 0}", "invalid_request", "/requests_per_s");
    expect_error(api, 422, "PUT", p, "{\"tokens_per_min\": \"lots\"}", "invalid_request",
                 "/tokens_per_min");
    expect_error(api, 422, "PUT", p, "{\"requests_per_s\": 1, \"burst_requests\": 0.5}",
                 "invalid_request", "/burst_requests");
    expect_error(api, 422, "PUT", p, "{\"tokens_per_min\": 100, \"burst_requests\": 3}",
                 "invalid_request", "/burst_requests");
    expect_error(api, 422, "PUT", p, "{\"requests_per_s\": 1, \"burst_tokens\": 30}",
                 "invalid_request", "/burst_tokens");
    expect_error(api, 422, "PUT", p, "{\"requests_per_s\": 1, \"name\": \"other\"}",
                 "invalid_request", "/name");
    expect_error(api, 422, "PUT", p, "{\"requests_per_s\": 1, \"per_day\": 5}", "invalid_request",
                 "/per_day");
    expect_error(api, 422, "PUT", "/v1/rate-limits/two%20words", "{\"requests_per_s\": 1}",
                 "invalid_request", "name");
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM rate_limits WHERE name = 'lims_bad'"), 0);

    /* rows the tenant does not own: another tenant's, and the one shared by all tenants */
    th_pg_long(db, "WITH t AS (INSERT INTO tenants (name) VALUES ('lims_other') RETURNING id) "
                   "INSERT INTO rate_limits (name, tenant_id, requests_per_s) "
                   "SELECT 'lims_theirs', id, 1 FROM t RETURNING id");
    th_pg_long(db, "INSERT INTO rate_limits (name, requests_per_s) VALUES ('lims_api', 1000) "
                   "RETURNING id");
    json_t *list = th_api_json(api, 200, "GET", "/v1/rate-limits", NULL);
    const json_t *rows = json_object_get(list, "rate_limits");
    size_t i;
    const json_t *r;
    int mine = 0;
    json_array_foreach (rows, i, r) {
        const char *name = json_string_value(json_object_get(r, "name"));
        assert_string_not_equal(name, "lims_theirs");
        if (strcmp(name, "lims_api") == 0) {
            mine++;
            assert_true(json_number_value(json_object_get(r, "tokens_per_min")) == 1000.0);
        }
    }
    assert_int_equal(mine, 1);
    json_decref(list);
    /* the budget left: 400 of the 1,000 tokens taken, a few refilled since */
    snprintf(sql, sizeof sql, "SELECT wait_ms FROM flowd_rl_take(%lld, 'lims_api', 0, 400)",
             w->tenant);
    assert_int_equal(th_pg_long(db, sql), 0);
    list = th_api_json(api, 200, "GET", "/v1/rate-limits", NULL);
    json_array_foreach (json_object_get(list, "rate_limits"), i, r) {
        if (strcmp(json_string_value(json_object_get(r, "name")), "lims_api") != 0)
            continue;
        const json_t *b = json_object_get(r, "budget");
        double left = json_number_value(json_object_get(b, "tokens"));
        print_message("lims_api budget: %.1f tokens\n", left);
        assert_true(left >= 600.0 && left < 700.0);
        assert_true(json_number_value(json_object_get(b, "burst_tokens")) == 1000.0);
        assert_true(json_is_null(json_object_get(b, "requests")));
        assert_true(json_is_string(json_object_get(b, "taken_at")));
        mine++;
    }
    assert_int_equal(mine, 2);
    json_decref(list);
    expect_error(api, 404, "DELETE", "/v1/rate-limits/lims_theirs", NULL, "not_found", NULL);
    expect_status(api, 204, "DELETE", "/v1/rate-limits/lims_api");
    expect_error(api, 404, "DELETE", "/v1/rate-limits/lims_api", NULL, "not_found", NULL);
    /* the shared row and the other tenant's stay */
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM rate_limits WHERE name = 'lims_api' AND "
                                    "tenant_id IS NULL"),
                     1);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM rate_limits WHERE name = 'lims_theirs'"),
                     1);
    th_pg_long(db, "WITH d AS (DELETE FROM rate_limits WHERE name IN ('lims_api', 'lims_theirs') "
                   "RETURNING 1) SELECT count(*) FROM d");
}

/* A self-map, as workflows/campaign.json: one child run per number, each with one sms step. */
static const char paced_def[] =
    "{\"name\": \"lims_paced\", \"steps\": [{\"key\": \"all\", \"kind\": \"map\", "
    "\"when\": \"input.phones exists\", \"input\": {\"items\": \"{{input.phones}}\", "
    "\"workflow\": \"lims_paced\", \"input\": {\"phone\": \"{{item}}\"}, \"concurrency\": 30}}, "
    "{\"key\": \"send\", \"kind\": \"sms\", \"when\": \"input.phone exists\", \"input\": {"
    "\"to\": \"{{input.phone}}\", \"body\": \"paced hello\", \"from\": \"" BUSINESS "\", "
    "\"rate_limit\": \"lims_paced\"}}]}";

/* Runs lims_paced over n numbers (+1555410<run><nnn>) and returns the seconds between the first
 * and the last send the mock received. */
static double paced_run(world *w, int run, int n)
{
    json_t *phones = json_array();
    for (int i = 0; i < n; i++) {
        char phone[24];
        snprintf(phone, sizeof phone, "+1555410%d%03d", run, i);
        json_array_append_new(phones, json_string(phone));
    }
    json_t *input = json_pack("{s:o}", "phones", phones);
    char *input_s = json_dumps(input, JSON_COMPACT);
    json_decref(input);
    int base = th_msg_requests(w->twilio);
    long long id = th_api_start_run(w->api, "lims_paced", input_s);
    free(input_s);
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld", id);
    long long first = 0, last = 0, t0 = th_now_ms(), polled = 0;
    for (;;) {
        long long now = th_now_ms();
        int c = th_msg_requests(w->twilio) - base;
        if (c > 0 && !first)
            first = now;
        if (c >= n && !last)
            last = now;
        if (last && now - polled >= 100) {
            polled = now;
            json_t *r = th_api_json(w->api, 200, "GET", path, NULL);
            const char *st = json_string_value(json_object_get(r, "state"));
            bool done = strcmp(st, "queued") != 0 && strcmp(st, "running") != 0;
            if (done)
                assert_string_equal(st, "succeeded");
            json_decref(r);
            if (done)
                break;
        }
        if (now - t0 > 60000)
            fail_msg("lims_paced did not finish in 60 s (%d of %d sent)", c, n);
        sleep_ms(2);
    }
    assert_int_equal(th_msg_requests(w->twilio) - base, n);
    return (double)(last - first) / 1000.0;
}

/* The workers cache "no limit named lims_paced" after the first run; the PUT must still take
 * effect for the very next run in this process, not RL_NEGATIVE_TTL_MS later. */
static void test_rate_limit_applies_at_once(void **state)
{
    world *w = *state;
    th_api *api = w->api;
    json_decref(th_api_json(api, 201, "PUT", "/v1/workflows/lims_paced", paced_def));
    double free_s = paced_run(w, 1, 21);
    json_decref(th_api_json(api, 201, "PUT", "/v1/rate-limits/lims_paced",
                            "{\"requests_per_s\": 10, \"burst_requests\": 1}"));
    double paced_s = paced_run(w, 2, 21);
    fprintf(stderr, "21 sends: %.2f s without a limit, %.2f s under 10/s burst 1 (at least 2.0 s)\n",
            free_s, paced_s);
    /* 20 sends after the first need 2 s of refill; the sampling loop's tick is the slack */
    assert_true(paced_s >= 2.0 - 0.05);
    assert_true(paced_s < 10.0);
    expect_status(api, 204, "DELETE", "/v1/rate-limits/lims_paced");
}

static const char waited_def[] =
    "{\"name\": \"lims_waited\", \"steps\": [{\"key\": \"send\", \"kind\": \"sms\", \"input\": {"
    "\"to\": \"{{input.phone}}\", \"body\": \"later\", \"from\": \"" BUSINESS "\", "
    "\"rate_limit\": \"lims_waited\"}}]}";

/* A send its limit has no budget for goes back to the queue without spending an attempt, and the
 * run's event log says why and until when (step.rate_limited), before the claim that sends it:
 * the console's timeline draws that wait apart from the queue. */
static void test_rate_limit_wait_is_recorded(void **state)
{
    world *w = *state;
    th_api *api = w->api;
    json_decref(th_api_json(api, 201, "PUT", "/v1/workflows/lims_waited", waited_def));
    json_decref(th_api_json(api, 201, "PUT", "/v1/rate-limits/lims_waited",
                            "{\"requests_per_s\": 1, \"burst_requests\": 1}"));
    char sql[128]; /* the one request of the burst is gone: the send waits about a second */
    snprintf(sql, sizeof sql, "SELECT wait_ms FROM flowd_rl_take(%lld, 'lims_waited', 1, 0)",
             w->tenant);
    assert_int_equal(th_pg_long(th_api_db(api), sql), 0);
    json_t *run = run_to_end(api, "lims_waited", "{\"phone\": \"+15554200031\"}");
    const json_t *send = step_of(run, "send");
    assert_string_equal(json_string_value(json_object_get(send, "state")), "succeeded");
    assert_int_equal(json_integer_value(json_object_get(send, "attempts")), 1);
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld/events",
             (long long)json_integer_value(json_object_get(run, "id")));
    json_t *log = th_api_json(api, 200, "GET", path, NULL);
    size_t i;
    const json_t *e;
    int limited = 0, started_after = 0;
    json_array_foreach (json_object_get(log, "events"), i, e) {
        const char *type = json_string_value(json_object_get(e, "type"));
        if (strcmp(type, "step.rate_limited") == 0) {
            const json_t *d = json_object_get(e, "data");
            assert_string_equal(json_string_value(json_object_get(e, "step")), "send");
            assert_string_equal(json_string_value(json_object_get(d, "rate_limit")), "lims_waited");
            /* RFC 3339 UTC with milliseconds: text order is time order */
            const char *at = json_string_value(json_object_get(e, "at"));
            const char *until = json_string_value(json_object_get(d, "run_at"));
            assert_non_null(until);
            assert_true(strcmp(until, at) > 0);
            limited++;
            started_after = 0;
        } else if (limited && strcmp(type, "step.started") == 0) {
            started_after++;
        }
    }
    assert_true(limited >= 1);
    assert_int_equal(started_after, 1); /* the claim that sent it came after the last wait */
    json_decref(log);
    json_decref(run);
    expect_status(api, 204, "DELETE", "/v1/rate-limits/lims_waited");
}

/* ---------------------------------------------------------------------------- suppressions -- */

static void test_suppression_api(void **state)
{
    world *w = *state;
    th_api *api = w->api;
    const char *db = th_api_db(api);

    json_t *s = th_api_json(api, 201, "POST", "/v1/suppressions",
                            "{\"channel\": \"sms\", \"address\": \"+15554200001\", "
                            "\"reason\": \"complaint\"}");
    assert_string_equal(json_string_value(json_object_get(s, "address")), "+15554200001");
    assert_string_equal(json_string_value(json_object_get(s, "channel")), "sms");
    assert_string_equal(json_string_value(json_object_get(s, "reason")), "complaint");
    assert_string_equal(json_string_value(json_object_get(s, "source")), "api");
    assert_non_null(json_string_value(json_object_get(s, "created_at")));
    json_decref(s);
    /* the same address again is the same entry, which keeps its first reason */
    s = th_api_json(api, 200, "POST", "/v1/suppressions",
                    "{\"channel\": \"sms\", \"address\": \"+15554200001\", \"reason\": \"other\"}");
    assert_string_equal(json_string_value(json_object_get(s, "reason")), "complaint");
    json_decref(s);
    s = th_api_json(api, 201, "POST", "/v1/suppressions",
                    "{\"channel\": \"email\", \"address\": \"Ann.Lee@Example.COM\"}");
    assert_string_equal(json_string_value(json_object_get(s, "address")), "ann.lee@example.com");
    assert_string_equal(json_string_value(json_object_get(s, "reason")), "manual");
    json_decref(s);
    json_decref(th_api_json(api, 201, "POST", "/v1/suppressions",
                            "{\"channel\": \"whatsapp\", \"address\": \"+442079460958\"}"));
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM suppressions WHERE tenant_id = %lld AND source = 'api' AND "
             "address IN ('+15554200001', 'ann.lee@example.com', '+442079460958')",
             w->tenant);
    assert_int_equal(th_pg_long(db, sql), 3);

    const char *p = "/v1/suppressions";
    expect_error(api, 422, "POST", p, "{\"channel\": \"fax\", \"address\": \"+15554200009\"}",
                 "invalid_request", "/channel");
    expect_error(api, 422, "POST", p, "{\"address\": \"+15554200009\"}", "invalid_request",
                 "/channel");
    expect_error(api, 422, "POST", p, "{\"channel\": \"sms\"}", "invalid_request", "/address");
    expect_error(api, 422, "POST", p, "{\"channel\": \"sms\", \"address\": \"call me\"}",
                 "invalid_request", "/address");
    expect_error(api, 422, "POST", p, "{\"channel\": \"whatsapp\", \"address\": \"+123\"}",
                 "invalid_request", "/address");
    /* numbers not in E.164 are refused, never read as some number: "15554200001" is not
     * +15554200001 for sure, "(415) 555-0123" has no country */
    static const char *const not_e164[] = {"15554200001", "(415) 555-0123", "+1 (555) 420-0001",
                                           "+1-555-420-0001", "+0155542000", "+1555420000123456"};
    for (size_t i = 0; i < sizeof not_e164 / sizeof *not_e164; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"channel\": \"sms\", \"address\": \"%s\"}", not_e164[i]);
        expect_error(api, 422, "POST", p, body, "invalid_request", "/address");
    }
    expect_error(api, 422, "POST", p, "{\"channel\": \"email\", \"address\": \"nobody\"}",
                 "invalid_request", "/address");
    expect_error(api, 422, "POST", p,
                 "{\"channel\": \"sms\", \"address\": \"+15554200009\", \"reason\": \"\"}",
                 "invalid_request", "/reason");
    expect_error(api, 422, "POST", p,
                 "{\"channel\": \"sms\", \"address\": \"+15554200009\", \"until\": 5}",
                 "invalid_request", "/until");
    assert_int_equal(
        th_pg_long(db, "SELECT count(*) FROM suppressions WHERE address = '+15554200009'"), 0);

    /* another tenant's entry is not listed */
    th_pg_long(db, "WITH t AS (INSERT INTO tenants (name) VALUES ('supp_other') RETURNING id) "
                   "INSERT INTO suppressions (tenant_id, channel, address, reason, source) "
                   "SELECT id, 'sms', '+15554209999', 'stop', 'twilio' FROM t RETURNING 1");
    json_t *page = th_api_json(api, 200, "GET", "/v1/suppressions?channel=sms", NULL);
    assert_int_equal(json_array_size(json_object_get(page, "suppressions")), 1);
    assert_true(json_is_null(json_object_get(page, "next_cursor")));
    json_decref(page);

    /* pages of 2 in (channel, address) order: email, then sms, whatsapp */
    page = th_api_json(api, 200, "GET", "/v1/suppressions?limit=2", NULL);
    const json_t *items = json_object_get(page, "suppressions");
    assert_int_equal(json_array_size(items), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 0), "channel")),
                        "email");
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 1), "address")),
                        "+15554200001");
    const char *cursor = json_string_value(json_object_get(page, "next_cursor"));
    assert_non_null(cursor);
    char path[1200];
    snprintf(path, sizeof path, "/v1/suppressions?limit=2&cursor=%s", cursor);
    json_decref(page);
    page = th_api_json(api, 200, "GET", path, NULL);
    items = json_object_get(page, "suppressions");
    assert_int_equal(json_array_size(items), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(items, 0), "address")),
                        "+442079460958");
    assert_true(json_is_null(json_object_get(page, "next_cursor")));
    json_decref(page);
    expect_error(api, 400, "GET", "/v1/suppressions?cursor=zz", NULL, "invalid_request", "cursor");
    expect_error(api, 400, "GET", "/v1/suppressions?limit=0", NULL, "invalid_request", "limit");
    expect_error(api, 400, "GET", "/v1/suppressions?channel=fax", NULL, "invalid_request",
                 "channel");

    /* DELETE reads the path's address like POST: a number only in E.164 */
    expect_error(api, 404, "DELETE", "/v1/suppressions/sms/+1%20(555)%20420-0001", NULL,
                 "not_found", NULL);
    expect_status(api, 204, "DELETE", "/v1/suppressions/sms/+15554200001");
    expect_error(api, 404, "DELETE", "/v1/suppressions/sms/+15554200001", NULL, "not_found", NULL);
    expect_status(api, 204, "DELETE", "/v1/suppressions/email/ANN.LEE@example.com");
    expect_status(api, 204, "DELETE", "/v1/suppressions/whatsapp/+442079460958");
    expect_error(api, 404, "DELETE", "/v1/suppressions/fax/+15554200001", NULL, "not_found", NULL);
    expect_error(api, 404, "DELETE", "/v1/suppressions/sms/+15554209999", NULL, "not_found", NULL);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM suppressions WHERE address = "
                                    "'+15554209999'"),
                     1);
}

static const char one_sms_def[] =
    "{\"name\": \"lims_one_sms\", \"steps\": [{\"key\": \"send\", \"kind\": \"sms\", \"input\": {"
    "\"to\": \"{{input.phone}}\", \"body\": \"one message\", \"from\": \"" BUSINESS "\"}}]}";

static void test_suppressed_send_is_skipped(void **state)
{
    world *w = *state;
    th_api *api = w->api;
    json_decref(th_api_json(api, 201, "PUT", "/v1/workflows/lims_one_sms", one_sms_def));
    json_decref(th_api_json(api, 201, "POST", "/v1/suppressions",
                            "{\"channel\": \"sms\", \"address\": \"+15554200002\"}"));
    int before = th_msg_requests(w->twilio);
    json_t *run = run_to_end(api, "lims_one_sms", "{\"phone\": \"+15554200002\"}");
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    const json_t *send = step_of(run, "send");
    assert_string_equal(json_string_value(json_object_get(send, "state")), "skipped");
    assert_non_null(strstr(json_string_value(json_object_get(json_object_get(send, "output"), "reason")),
                           "suppressed"));
    json_decref(run);
    assert_int_equal(th_msg_requests(w->twilio), before);

    expect_status(api, 204, "DELETE", "/v1/suppressions/sms/+15554200002");
    run = run_to_end(api, "lims_one_sms", "{\"phone\": \"+15554200002\"}");
    assert_string_equal(json_string_value(json_object_get(step_of(run, "send"), "state")),
                        "succeeded");
    json_decref(run);
    assert_int_equal(th_msg_requests(w->twilio), before + 1);
}

static const char gated_sms_def[] =
    "{\"name\": \"lims_gated\", \"steps\": [{\"key\": \"send\", \"kind\": \"sms\", \"input\": {"
    "\"to\": \"{{input.phone}}\", \"body\": \"one message\", \"from\": \"" BUSINESS "\", "
    "\"rate_limit\": \"lims_gated\"}}]}";

/* Under a limit with budget for one send in ten minutes, a suppressed recipient must not spend it:
 * the next recipient's send goes out at once instead of waiting for the refill (run_to_end would
 * give up after 60 s). */
static void test_suppressed_send_spends_no_budget(void **state)
{
    world *w = *state;
    th_api *api = w->api;
    json_decref(th_api_json(api, 201, "PUT", "/v1/workflows/lims_gated", gated_sms_def));
    json_decref(th_api_json(api, 201, "PUT", "/v1/rate-limits/lims_gated",
                            "{\"requests_per_s\": 0.001, \"burst_requests\": 1}"));
    json_decref(th_api_json(api, 201, "POST", "/v1/suppressions",
                            "{\"channel\": \"sms\", \"address\": \"+15554200021\"}"));
    int before = th_msg_requests(w->twilio);
    json_t *run = run_to_end(api, "lims_gated", "{\"phone\": \"+15554200021\"}");
    assert_string_equal(json_string_value(json_object_get(step_of(run, "send"), "state")),
                        "skipped");
    json_decref(run);
    run = run_to_end(api, "lims_gated", "{\"phone\": \"+15554200022\"}");
    assert_string_equal(json_string_value(json_object_get(step_of(run, "send"), "state")),
                        "succeeded");
    json_decref(run);
    assert_int_equal(th_msg_requests(w->twilio), before + 1);
    expect_status(api, 204, "DELETE", "/v1/rate-limits/lims_gated");
}

static const char optout_def[] =
    "{\"name\": \"lims_optout\", \"steps\": ["
    "{\"key\": \"forget\", \"kind\": \"suppress\", \"input\": {\"channel\": \"{{input.channel}}\", "
    "\"address\": \"{{input.address}}\", \"reason\": \"stop\"}},"
    "{\"key\": \"send\", \"kind\": \"sms\", \"needs\": [\"forget\"], \"when\": \"input.channel == "
    "\\\"sms\\\"\", \"input\": {\"to\": \"{{input.address}}\", \"body\": \"too late\", \"from\": "
    "\"" BUSINESS "\"}}]}";

static void test_suppress_step(void **state)
{
    world *w = *state;
    th_api *api = w->api;
    const char *db = th_api_db(api);
    json_decref(th_api_json(api, 201, "PUT", "/v1/workflows/lims_optout", optout_def));
    int before = th_msg_requests(w->twilio);
    json_t *run = run_to_end(api, "lims_optout",
                             "{\"channel\": \"sms\", \"address\": \"+15554200003\"}");
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    const json_t *out = json_object_get(step_of(run, "forget"), "output");
    assert_string_equal(json_string_value(json_object_get(out, "channel")), "sms");
    assert_string_equal(json_string_value(json_object_get(out, "address")), "+15554200003");
    assert_string_equal(json_string_value(json_object_get(out, "reason")), "stop");
    assert_true(json_is_true(json_object_get(out, "suppressed")));
    assert_string_equal(json_string_value(json_object_get(step_of(run, "send"), "state")),
                        "skipped");
    json_decref(run);
    assert_int_equal(th_msg_requests(w->twilio), before);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM suppressions WHERE tenant_id = %lld AND channel = 'sms' AND "
             "address = '+15554200003' AND reason = 'stop' AND source = 'workflow'",
             w->tenant);
    assert_int_equal(th_pg_long(db, sql), 1);

    /* again: already on the list, still succeeds; an email address is lowercased */
    run = run_to_end(api, "lims_optout", "{\"channel\": \"sms\", \"address\": \"+15554200003\"}");
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    json_decref(run);
    run = run_to_end(api, "lims_optout", "{\"channel\": \"email\", \"address\": \"Bo@X.org\"}");
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(step_of(run, "forget"), "output"), "address")),
                        "bo@x.org");
    json_decref(run);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM suppressions WHERE channel = 'email' "
                                    "AND address = 'bo@x.org' AND source = 'workflow'"),
                     1);

    /* a rendered address that is none fails the step for good, without a row */
    run = run_to_end(api, "lims_optout", "{\"channel\": \"sms\", \"address\": \"not a number\"}");
    assert_string_equal(json_string_value(json_object_get(run, "state")), "failed");
    const json_t *forget = step_of(run, "forget");
    assert_int_equal(json_integer_value(json_object_get(forget, "attempts")), 1);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(forget, "error"), "code")),
        "invalid_input");
    json_decref(run);

    /* definitions are checked when registered */
    expect_error(api, 422, "PUT", "/v1/workflows/lims_bad",
                 "{\"steps\": [{\"key\": \"x\", \"kind\": \"suppress\", \"input\": {\"channel\": "
                 "\"fax\", \"address\": \"+15554200004\"}}]}",
                 "invalid_definition", "/steps/0/input/channel");
    expect_error(api, 422, "PUT", "/v1/workflows/lims_bad",
                 "{\"steps\": [{\"key\": \"x\", \"kind\": \"suppress\", \"input\": {\"channel\": "
                 "\"sms\"}}]}",
                 "invalid_definition", "/steps/0/input/address");
    expect_error(api, 422, "PUT", "/v1/workflows/lims_bad",
                 "{\"steps\": [{\"key\": \"x\", \"kind\": \"suppress\", \"input\": {\"channel\": "
                 "\"sms\", \"address\": \"+15554200004\", \"until\": \"1d\"}}]}",
                 "invalid_definition", "/steps/0/input/until");
}

static int setup(void **state)
{
    world *w = eng_xcalloc(1, sizeof *w);
    w->twilio = th_msg_start(TH_MSG_TWILIO);
    setenv("TWILIO_ACCOUNT_SID", TH_MSG_TWILIO_SID, 1);
    setenv("TWILIO_AUTH_TOKEN", TH_MSG_TWILIO_TOKEN, 1);
    setenv("TWILIO_BASE_URL", th_msg_url(w->twilio), 1);
    unsetenv("FLOWD_PUBLIC_URL");
    unsetenv("TWILIO_FROM");
    prov_config_cache_clear();
    rl_cache_clear();
    th_api_opts o = {.prefix = "limits_supp", .workers = 2};
    w->api = th_api_start(&o);
    w->tenant = th_pg_long(th_api_db(w->api), "SELECT min(id) FROM tenants");
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world *w = *state;
    th_api_stop(w->api);
    th_msg_stop(w->twilio);
    rl_cache_clear();
    free(w);
    return 0;
}

int main(void)
{
    eng_mem_init();
    eng_log_init();
    eng_httpc_global_init();
    eng_step_register_builtins();
    step_register_all();
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_limit_api),
        cmocka_unit_test(test_rate_limit_applies_at_once),
        cmocka_unit_test(test_rate_limit_wait_is_recorded),
        cmocka_unit_test(test_suppression_api),
        cmocka_unit_test(test_suppressed_send_is_skipped),
        cmocka_unit_test(test_suppressed_send_spends_no_budget),
        cmocka_unit_test(test_suppress_step),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    eng_httpc_global_cleanup();
    return rc;
}
