/* tests/integration/test_e2e_touchpoints.c: workflows/lead_touchpoints.json end to end through the
 * HTTP API, with mock SendGrid, Twilio and OpenAI servers and the test clock.
 *
 * The test plays the clock the way time would pass: whenever nothing is due, it advances the
 * engine clock (POST /v1/test/clock) exactly to the earliest run_at the run shows, so each step
 * starts at its true time and 30 days pass in about a second. Expected times are computed here
 * independently of PostgreSQL's window function: the first instant at or after "created + day N"
 * that is a weekday between 09:00 and 18:00 in the lead's zone (the process TZ, set before any
 * thread starts, so localtime_r/mktime apply that zone's daylight-saving rules). */
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

#include <curl/curl.h>

#include "engine/clock.h"
#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "steps/provider.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_mockmsg.h"

#define LEAD_TZ "America/New_York"
#define NTOUCH  13
#define DAY_MS  (24LL * 3600 * 1000)
#define LATE_MS 5000 /* engine-clock slack between a step's due time and its start */

static const int touch_day[NTOUCH] = {0, 1, 2, 3, 5, 7, 10, 14, 18, 21, 25, 28, 30};

typedef struct world {
    th_api *api;
    th_msg *sendgrid, *twilio;
    th_api_openai *llm;
    long long tenant;
    int64_t offset_ms; /* the engine clock's test offset, as the API last reported it */
} world;

static void llm_answer(void *arg, const json_t *body, int *status, char **text)
{
    (void)arg;
    (void)body;
    *status = 200;
    *text = eng_xstrdup("{\"subject\": \"Your solar question\", \"body\": \"Hi Ada, thanks for "
                        "asking about solar panels. Is your roof facing south?\"}");
}

static int64_t parse_ms(const json_t *v)
{
    int64_t ms = 0;
    eng_err err;
    if (!json_is_string(v) || eng_time_parse_rfc3339(json_string_value(v), &ms, &err) != ENG_OK)
        fail_msg("not a timestamp: %s", json_is_string(v) ? json_string_value(v) : "(null)");
    return ms;
}

static int64_t engine_now(const world *w)
{
    return eng_clock_wall_ms() + w->offset_ms;
}

static void clock_advance(world *w, int64_t ms)
{
    char body[64];
    snprintf(body, sizeof body, "{\"advance\": \"%lldms\"}", (long long)ms);
    json_t *r = th_api_json(w->api, 200, "POST", "/v1/test/clock", body);
    w->offset_ms = (int64_t)json_integer_value(json_object_get(r, "offset_ms"));
    json_decref(r);
}

static json_t *get_run(world *w, long long id)
{
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld", id);
    return th_api_json(w->api, 200, "GET", path, NULL);
}

static const json_t *step_of(const json_t *run, const char *key)
{
    size_t i;
    const json_t *s;
    json_array_foreach (json_object_get(run, "steps"), i, s) {
        if (strcmp(json_string_value(json_object_get(s, "key")), key) == 0)
            return s;
    }
    fail_msg("run has no step %s", key);
    return NULL;
}

/* Lets the run work until it ends or until the engine clock reaches until_ms (0: no bound),
 * advancing the clock to each next due time when nothing is due. Returns the run (new ref). */
static json_t *drive(world *w, long long id, int64_t until_ms)
{
    long long deadline = th_now_ms() + 120000;
    for (;;) {
        json_t *run = get_run(w, id);
        const char *st = json_string_value(json_object_get(run, "state"));
        if (strcmp(st, "queued") != 0 && strcmp(st, "running") != 0)
            return run;
        if (th_now_ms() > deadline)
            fail_msg("run %lld did not finish in time", id);
        int64_t now = engine_now(w), next = INT64_MAX;
        bool busy = false;
        size_t i;
        const json_t *s;
        json_array_foreach (json_object_get(run, "steps"), i, s) {
            const char *ss = json_string_value(json_object_get(s, "state"));
            if (strcmp(ss, "running") == 0)
                busy = true;
            if (strcmp(ss, "ready") == 0) {
                int64_t at = parse_ms(json_object_get(s, "run_at"));
                if (at <= now)
                    busy = true;
                else if (at < next)
                    next = at;
            }
        }
        if (busy || next == INT64_MAX) {
            json_decref(run);
            th_sleep_ms(10);
            continue;
        }
        if (until_ms && next > until_ms) {
            if (until_ms > now)
                clock_advance(w, until_ms - now);
            return run;
        }
        json_decref(run);
        clock_advance(w, next - now + 1);
    }
}

/* The first instant at or after t_ms inside Mon-Fri 09:00-18:00 local time (process TZ). */
static int64_t window_open(int64_t t_ms)
{
    time_t t = (time_t)(t_ms / 1000);
    for (int k = 0; k < 10; k++) {
        struct tm tm;
        localtime_r(&t, &tm);
        int min = tm.tm_hour * 60 + tm.tm_min;
        bool weekday = tm.tm_wday >= 1 && tm.tm_wday <= 5;
        if (weekday && min >= 9 * 60 && min < 18 * 60)
            return k == 0 ? t_ms : (int64_t)t * 1000;
        if (!(weekday && min < 9 * 60))
            tm.tm_mday += 1;
        tm.tm_hour = 9;
        tm.tm_min = 0;
        tm.tm_sec = 0;
        tm.tm_isdst = -1;
        t = mktime(&tm);
    }
    fail_msg("no window opening found");
    return 0;
}

static void assert_in_window(int64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    int min = tm.tm_hour * 60 + tm.tm_min;
    assert_true(tm.tm_wday >= 1 && tm.tm_wday <= 5);
    assert_true(min >= 9 * 60 && min < 18 * 60);
}

static char *touch_key(int i)
{
    return eng_xasprintf("touch%02d_%s", i + 1, i % 2 == 0 ? "email" : "sms");
}

static char *lead_input(const char *id, const char *phone, const char *email)
{
    return eng_xasprintf(
        "{\"lead\": {\"id\": \"%s\", \"name\": \"Ada\", \"email\": \"%s\", "
        "\"phone\": \"%s\", \"tz\": \"" LEAD_TZ "\", \"service\": \"solar panels\"}, "
        "\"sender\": {\"name\": \"Sunny Roofs\", \"email\": \"team@sunny.example\", "
        "\"phone\": \"+15005550006\"}}",
        id, email, phone);
}

/* Sends the mocks received for one lead: emails to email, SMS to phone. */
static int sends_to(world *w, const char *phone, const char *email)
{
    int n = 0;
    for (int i = 0; i < th_msg_requests(w->twilio); i++) {
        json_t *b = th_msg_request_body(w->twilio, i);
        if (strcmp(json_string_value(json_object_get(b, "To")), phone) == 0)
            n++;
        json_decref(b);
    }
    for (int i = 0; i < th_msg_requests(w->sendgrid); i++) {
        json_t *b = th_msg_request_body(w->sendgrid, i);
        json_t *to = json_array_get(
            json_object_get(json_array_get(json_object_get(b, "personalizations"), 0), "to"), 0);
        if (strcmp(json_string_value(json_object_get(to, "email")), email) == 0)
            n++;
        json_decref(b);
    }
    return n;
}

static void test_thirteen_touches(void **state)
{
    world *w = *state;
    int sg0 = th_msg_requests(w->sendgrid), tw0 = th_msg_requests(w->twilio);
    char *input = lead_input("L1", "+15557770001", "ada1@example.com");
    long long id = th_api_start_run(w->api, "lead_touchpoints", input);
    free(input);
    long long t0 = th_now_ms();
    json_t *run = drive(w, id, 0);
    fprintf(stderr, "30 days of touches took %lld ms of real time\n", th_now_ms() - t0);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    int64_t created = parse_ms(json_object_get(run, "created_at"));

    /* exactly 13 messages: 7 emails, 6 SMS, to this lead, in touch order */
    assert_int_equal(th_msg_requests(w->sendgrid) - sg0, 7);
    assert_int_equal(th_msg_requests(w->twilio) - tw0, 6);
    int64_t prev = 0;
    for (int i = 0; i < NTOUCH; i++) {
        char *key = touch_key(i);
        const json_t *s = step_of(run, key);
        assert_string_equal(json_string_value(json_object_get(s, "state")), "succeeded");
        int64_t started = parse_ms(json_object_get(s, "started_at"));
        int64_t due = created + touch_day[i] * DAY_MS;
        int64_t open = window_open(due);
        if (started < open || started > open + LATE_MS)
            fail_msg("%s started %lld ms after its window opened (due day %d)", key,
                     (long long)(started - open), touch_day[i]);
        assert_in_window(started);
        assert_true(started >= prev);
        prev = started;
        free(key);
    }
    /* the first email is the llm's, later ones the definition's copy, all to this lead */
    json_t *first = th_msg_request_body(w->sendgrid, sg0);
    assert_string_equal(json_string_value(json_object_get(first, "subject")),
                        "Your solar question");
    json_decref(first);
    for (int i = 0; i < 6; i++) {
        json_t *b = th_msg_request_body(w->twilio, tw0 + i);
        assert_string_equal(json_string_value(json_object_get(b, "To")), "+15557770001");
        assert_string_equal(json_string_value(json_object_get(b, "From")), "+15005550006");
        assert_non_null(strstr(json_string_value(json_object_get(b, "Body")), "solar panels"));
        json_decref(b);
    }
    assert_int_equal(sends_to(w, "+15557770001", "ada1@example.com"), 13);
    json_decref(run);
}

static void test_reply_on_day_six_stops(void **state)
{
    world *w = *state;
    char *input = lead_input("L2", "+15557770002", "ada2@example.com");
    long long id = th_api_start_run(w->api, "lead_touchpoints", input);
    free(input);
    json_t *run = get_run(w, id);
    int64_t created = parse_ms(json_object_get(run, "created_at"));
    json_decref(run);
    int64_t reply_at = created + 6 * DAY_MS;
    run = drive(w, id, reply_at);
    json_decref(run);

    json_t *r = th_api_json(
        w->api, 202, "POST", "/v1/events",
        "{\"name\": \"lead.replied\", \"key\": \"L2\", \"data\": {\"text\": \"call me\"}}");
    assert_int_equal(json_integer_value(json_object_get(r, "cancelled")), 1);
    json_decref(r);
    int before = 0;
    for (int i = 0; i < NTOUCH; i++)
        if (window_open(created + touch_day[i] * DAY_MS) < reply_at)
            before++;
    assert_true(before >= 3 && before <= 5); /* days 0..5, less what a weekend pushed past day 6 */
    assert_int_equal(sends_to(w, "+15557770002", "ada2@example.com"), before);

    /* the rest of the month passes: nothing more goes out */
    clock_advance(w, 30 * DAY_MS);
    th_sleep_ms(500);
    run = get_run(w, id);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "cancelled");
    for (int i = 0; i < NTOUCH; i++) {
        char *key = touch_key(i);
        const char *st = json_string_value(json_object_get(step_of(run, key), "state"));
        assert_string_equal(st, i < before ? "succeeded" : "cancelled");
        free(key);
    }
    json_decref(run);
    assert_int_equal(sends_to(w, "+15557770002", "ada2@example.com"), before);
}

/* An inbound SMS from the lead's number, through the signed Twilio webhook, stops the sequence. */
static long twilio_inbound(world *w, const char *from, const char *body_text)
{
    char path[96], url[256], form[512];
    snprintf(path, sizeof path, "/v1/hooks/twilio?tenant=%lld", w->tenant);
    snprintf(url, sizeof url, "%s%s", th_api_url(w->api), path);
    CURL *h = curl_easy_init();
    char *from_e = curl_easy_escape(h, from, 0), *body_e = curl_easy_escape(h, body_text, 0);
    snprintf(form, sizeof form,
             "MessageSid=SMin%s&SmsSid=SMin%s&AccountSid=" TH_MSG_TWILIO_SID
             "&From=%s&To=%%2B15005550006&Body=%s&MessageStatus=received&SmsStatus=received"
             "&NumMedia=0&ApiVersion=2010-04-01",
             from + 1, from + 1, from_e, body_e);
    char *sig = th_msg_twilio_signature(url, form, TH_MSG_TWILIO_TOKEN);
    char hdr[128];
    snprintf(hdr, sizeof hdr, "X-Twilio-Signature: %s", sig);
    struct curl_slist *hl = curl_slist_append(NULL, hdr);
    hl = curl_slist_append(hl, "Content-Type: application/x-www-form-urlencoded");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, form);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    FILE *devnull = fopen("/dev/null", "w");
    curl_easy_setopt(h, CURLOPT_WRITEDATA, devnull);
    assert_int_equal(curl_easy_perform(h), CURLE_OK);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    fclose(devnull);
    curl_slist_free_all(hl);
    curl_free(from_e);
    curl_free(body_e);
    free(sig);
    curl_easy_cleanup(h);
    return status;
}

static void test_inbound_sms_stops(void **state)
{
    world *w = *state;
    char *input = lead_input("L3", "+15557770003", "ada3@example.com");
    long long id = th_api_start_run(w->api, "lead_touchpoints", input);
    free(input);
    json_t *run = get_run(w, id);
    int64_t created = parse_ms(json_object_get(run, "created_at"));
    json_decref(run);
    int64_t stop_at = created + 4 * DAY_MS;
    json_decref(drive(w, id, stop_at));
    int sent = sends_to(w, "+15557770003", "ada3@example.com");
    assert_true(sent >= 1);

    assert_int_equal(twilio_inbound(w, "+15557770003", "Sounds good, what does it cost?"), 200);
    run = get_run(w, id);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "cancelled");
    const json_t *e = json_object_get(run, "error");
    assert_string_equal(json_string_value(json_object_get(e, "event")), "sms.received");
    assert_string_equal(json_string_value(json_object_get(e, "key")), "+15557770003");
    json_decref(run);
    clock_advance(w, 30 * DAY_MS);
    th_sleep_ms(500);
    assert_int_equal(sends_to(w, "+15557770003", "ada3@example.com"), sent);
}

/* Twilio refuses the first SMS for good (21211, not a valid number): that touch fails and the
 * sequence goes on (on_failure "continue"): the 12 other touches go out and the run succeeds. */
static void test_refused_touch_goes_on(void **state)
{
    world *w = *state;
    int sg0 = th_msg_requests(w->sendgrid), tw0 = th_msg_requests(w->twilio);
    th_msg_push(w->twilio, (th_msg_answer){.status = 400, .code = 21211});
    char *input = lead_input("L4", "+15557770004", "ada4@example.com");
    long long id = th_api_start_run(w->api, "lead_touchpoints", input);
    free(input);
    json_t *run = drive(w, id, 0);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    assert_int_equal(th_msg_requests(w->sendgrid) - sg0, 7);
    assert_int_equal(th_msg_requests(w->twilio) - tw0, 6);
    for (int i = 0; i < NTOUCH; i++) {
        char *key = touch_key(i);
        const json_t *s = step_of(run, key);
        assert_string_equal(json_string_value(json_object_get(s, "state")),
                            i == 1 ? "failed" : "succeeded");
        if (i == 1) {
            const json_t *e = json_object_get(s, "error");
            assert_string_equal(json_string_value(json_object_get(e, "code")), "http_400");
            assert_int_equal(json_integer_value(json_object_get(s, "attempts")), 1);
        }
        free(key);
    }
    json_decref(run);
}

static int setup(void **state)
{
    world *w = eng_xcalloc(1, sizeof *w);
    w->sendgrid = th_msg_start(TH_MSG_SENDGRID);
    w->twilio = th_msg_start(TH_MSG_TWILIO);
    w->llm = th_api_openai_start(llm_answer, NULL);
    setenv("SENDGRID_API_KEY", TH_MSG_SENDGRID_KEY, 1);
    setenv("SENDGRID_BASE_URL", th_msg_url(w->sendgrid), 1);
    setenv("TWILIO_ACCOUNT_SID", TH_MSG_TWILIO_SID, 1);
    setenv("TWILIO_AUTH_TOKEN", TH_MSG_TWILIO_TOKEN, 1);
    setenv("TWILIO_BASE_URL", th_msg_url(w->twilio), 1);
    setenv("OPENAI_API_KEY", "sk-test-touchpoints", 1);
    setenv("OPENAI_BASE_URL", th_api_openai_url(w->llm), 1);
    unsetenv("FLOWD_PUBLIC_URL");
    unsetenv("TWILIO_FROM");
    prov_config_cache_clear();
    th_api_opts o = {.prefix = "e2e_touch", .workers = 2, .test_clock = true};
    w->api = th_api_start(&o);
    w->tenant = th_pg_long(th_api_db(w->api), "SELECT min(id) FROM tenants");
    assert_int_equal(th_api_put_shipped(w->api, "lead_touchpoints"), 1);
    clock_advance(w, 0);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world *w = *state;
    th_api_stop(w->api);
    th_api_openai_stop(w->llm);
    th_msg_stop(w->sendgrid);
    th_msg_stop(w->twilio);
    free(w);
    return 0;
}

int main(void)
{
    /* before any thread: localtime_r and mktime then work in the lead's zone */
    setenv("TZ", LEAD_TZ, 1);
    tzset();
    eng_mem_init();
    eng_log_init();
    eng_httpc_global_init();
    eng_step_register_builtins();
    step_register_all();
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_thirteen_touches),
        cmocka_unit_test(test_reply_on_day_six_stops),
        cmocka_unit_test(test_inbound_sms_stops),
        cmocka_unit_test(test_refused_touch_goes_on),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    eng_httpc_global_cleanup();
    return rc;
}
