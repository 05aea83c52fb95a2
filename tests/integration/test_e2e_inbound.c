/* tests/integration/test_e2e_inbound.c: workflows/inbound_reply.json end to end through the HTTP
 * API: 20 inbound SMS from 4 customers arrive through the Twilio webhook (signed as Twilio signs),
 * each starts a run (the workflow's trigger), an OpenAI mock classifies them (routed by the
 * message text), and the Twilio mock receives the replies. Each customer must be answered in
 * order, one message at a time: the replies to a customer reach the mock in message order, and
 * the engine's records show each run of a customer starting only after the previous one ended.
 * One message asks to opt out: its run confirms on SMS, then puts the customer on the suppression
 * list, so the reply to that customer's next message is skipped and never reaches the mock.
 * One WhatsApp message shows the reply going back on the channel it came from. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <curl/curl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

#define NCUST    4
#define NMSG     5
#define BUSINESS "+15005550006"

static const char *const customers[NCUST] = {"+15551110000", "+15551110001", "+15551110002",
                                             "+15551110003"};

#define OPTOUT_K 2 /* customer 2 opts out with message 3; the reply to message 4 is skipped */
#define OPTOUT_J 3

/* The classification the mock LLM gives message j of customer k. */
static const char *intent_of(int k, int j)
{
    if (k == 0 && j == 2)
        return "booking";
    if (k == 1 && j == 3)
        return "human";
    if (k == OPTOUT_K && j == OPTOUT_J)
        return "opt_out";
    return "question";
}

/* Whether the reply to message j of customer k goes out (not after the customer opted out). */
static bool replied(int k, int j)
{
    return !(k == OPTOUT_K && j > OPTOUT_J);
}

/* Message bodies are "c<k> m<j> ..."; the answer to a question quotes "c<k> m<j>". */
static void llm_answer(void *arg, const json_t *body, int *status, char **text)
{
    (void)arg;
    char *prompt = th_api_prompt_text(body);
    const char *p = strstr(prompt, "\nc");
    int k = -1, j = -1;
    if (p)
        sscanf(p + 1, "c%d m%d", &k, &j);
    *status = 200;
    if (k < 0 || j < 0)
        *text = eng_xstrdup("{\"intent\": \"human\"}");
    else
        *text = eng_xasprintf("{\"intent\": \"%s\", \"reply\": \"answer to c%d m%d\"}",
                              intent_of(k, j), k, j);
    free(prompt);
}

static long post_signed(th_api *api, const char *path, const char *ctype, const char *body,
                        const char *sig_header)
{
    char url[256];
    snprintf(url, sizeof url, "%s%s", th_api_url(api), path);
    CURL *h = curl_easy_init();
    struct curl_slist *hl = curl_slist_append(NULL, sig_header);
    char ct[96];
    snprintf(ct, sizeof ct, "Content-Type: %s", ctype);
    hl = curl_slist_append(hl, ct);
    FILE *devnull = fopen("/dev/null", "w");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, devnull);
    assert_int_equal(curl_easy_perform(h), CURLE_OK);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    fclose(devnull);
    curl_slist_free_all(hl);
    curl_easy_cleanup(h);
    return status;
}

/* An inbound SMS as Twilio posts it, with a valid X-Twilio-Signature. */
static long twilio_inbound(th_api *api, long long tenant, int k, int j)
{
    char path[96], url[256], form[512];
    snprintf(path, sizeof path, "/v1/hooks/twilio?tenant=%lld", tenant);
    snprintf(url, sizeof url, "%s%s", th_api_url(api), path);
    snprintf(form, sizeof form,
             "MessageSid=SMin%d%d&SmsSid=SMin%d%d&AccountSid=" TH_MSG_TWILIO_SID
             "&From=%%2B%s&To=%%2B15005550006&Body=c%d+m%d+do+you+open+on+Saturdays%%3F"
             "&MessageStatus=received&SmsStatus=received&NumMedia=0&ApiVersion=2010-04-01",
             k, j, k, j, customers[k] + 1, k, j);
    char *sig = th_msg_twilio_signature(url, form, TH_MSG_TWILIO_TOKEN);
    char hdr[128];
    snprintf(hdr, sizeof hdr, "X-Twilio-Signature: %s", sig);
    free(sig);
    return post_signed(api, path, "application/x-www-form-urlencoded", form, hdr);
}

static int64_t parse_ms(const json_t *v)
{
    int64_t ms = 0;
    eng_err err;
    if (!json_is_string(v) || eng_time_parse_rfc3339(json_string_value(v), &ms, &err) != ENG_OK)
        fail_msg("not a timestamp");
    return ms;
}

static void twenty_messages_in_order(th_api *api)
{
    long long tenant = th_pg_long(th_api_db(api), "SELECT min(id) FROM tenants");
    /* interleaved: message j of every customer, then message j + 1 */
    for (int j = 0; j < NMSG; j++)
        for (int k = 0; k < NCUST; k++)
            assert_int_equal(twilio_inbound(api, tenant, k, j), 200);

    json_t *list = th_api_json(api, 200, "GET", "/v1/runs?workflow=inbound_reply&limit=100", NULL);
    json_t *runs = json_object_get(list, "runs");
    assert_int_equal(json_array_size(runs), NCUST * NMSG);
    /* [k][j] = the run of message j of customer k, finished */
    json_t *by[NCUST][NMSG] = {{NULL}};
    size_t i;
    json_t *r;
    json_array_foreach (runs, i, r) {
        json_t *run =
            th_api_wait_run(api, json_integer_value(json_object_get(r, "id")), 50, 120, NULL, NULL);
        assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
        const char *body = json_string_value(json_object_get(
            json_object_get(json_object_get(json_object_get(run, "input"), "event"), "data"),
            "body"));
        int k = -1, j = -1;
        assert_int_equal(sscanf(body, "c%d m%d", &k, &j), 2);
        assert_null(by[k][j]);
        by[k][j] = run;
    }
    json_decref(list);

    /* the opt-out run confirmed, then suppressed; the later replies to that customer skipped */
    const json_t *steps = json_object_get(by[OPTOUT_K][OPTOUT_J], "steps");
    size_t si;
    const json_t *st;
    int seen_unsub = 0;
    json_array_foreach (steps, si, st) {
        const char *key = json_string_value(json_object_get(st, "key"));
        const char *state = json_string_value(json_object_get(st, "state"));
        if (strcmp(key, "reply_sms") == 0)
            assert_string_equal(state, "succeeded");
        if (strcmp(key, "unsubscribe_sms") == 0) {
            seen_unsub = 1;
            assert_string_equal(state, "succeeded");
            const json_t *out = json_object_get(st, "output");
            assert_string_equal(json_string_value(json_object_get(out, "address")),
                                customers[OPTOUT_K]);
            assert_true(json_is_true(json_object_get(out, "suppressed")));
        }
        if (strcmp(key, "unsubscribe_whatsapp") == 0)
            assert_string_equal(state, "skipped");
    }
    assert_int_equal(seen_unsub, 1);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM suppressions WHERE tenant_id = %lld AND channel = 'sms' AND "
             "address = '%s' AND reason = 'stop' AND source = 'workflow'",
             tenant, customers[OPTOUT_K]);
    assert_int_equal(th_pg_long(th_api_db(api), sql), 1);
    assert_int_equal(th_pg_long(th_api_db(api), "SELECT count(*) FROM suppressions"), 1);
    for (int k = 0; k < NCUST; k++) {
        for (int j = 0; j < NMSG; j++) {
            json_array_foreach (json_object_get(by[k][j], "steps"), si, st) {
                const char *key = json_string_value(json_object_get(st, "key"));
                const char *state = json_string_value(json_object_get(st, "state"));
                if (strcmp(key, "reply_sms") == 0 && !replied(k, j)) {
                    assert_string_equal(state, "skipped");
                    assert_string_equal(json_string_value(json_object_get(
                                            json_object_get(st, "output"), "reason")),
                                        "recipient suppressed: stop");
                } else if (strcmp(key, "reply_sms") == 0) {
                    assert_string_equal(state, "succeeded");
                } else if (strcmp(key, "unsubscribe_sms") == 0 &&
                           !(k == OPTOUT_K && j == OPTOUT_J)) {
                    assert_string_equal(state, "skipped");
                }
            }
        }
    }

    /* one at a time per customer, in arrival order: run j + 1 starts after run j finished */
    for (int k = 0; k < NCUST; k++) {
        for (int j = 1; j < NMSG; j++) {
            int64_t prev_end = parse_ms(json_object_get(by[k][j - 1], "finished_at"));
            int64_t start = parse_ms(json_object_get(by[k][j], "started_at"));
            if (start < prev_end)
                fail_msg("customer %d: message %d started %lld ms before message %d finished", k, j,
                         (long long)(prev_end - start), j - 1);
            assert_true(json_integer_value(json_object_get(by[k][j], "id")) >
                        json_integer_value(json_object_get(by[k][j - 1], "id")));
        }
    }

    for (int k = 0; k < NCUST; k++)
        for (int j = 0; j < NMSG; j++)
            json_decref(by[k][j]);
}

typedef struct world {
    th_api *api;
    th_msg *twilio, *whatsapp;
    th_api_openai *llm;
} world;

/* The Twilio mock got 19 replies (none after the opt-out), each customer's in message order, with
 * the branch's text. */
static void check_replies(world *w)
{
    int expect[NCUST] = {0}, total = 0;
    for (int k = 0; k < NCUST; k++)
        for (int j = 0; j < NMSG; j++)
            if (replied(k, j)) {
                expect[k]++;
                total++;
            }
    assert_int_equal(total, NCUST * NMSG - 1);
    assert_int_equal(th_msg_requests(w->twilio), total);
    int next[NCUST] = {0};
    for (int n = 0; n < total; n++) {
        json_t *b = th_msg_request_body(w->twilio, n);
        const char *to = json_string_value(json_object_get(b, "To"));
        const char *text = json_string_value(json_object_get(b, "Body"));
        assert_string_equal(json_string_value(json_object_get(b, "From")), BUSINESS);
        int k = 0;
        while (k < NCUST && strcmp(customers[k], to) != 0)
            k++;
        assert_true(k < NCUST);
        int j = next[k]++;
        const char *intent = intent_of(k, j);
        if (strcmp(intent, "booking") == 0) {
            assert_non_null(strstr(text, "https://example.com/book"));
        } else if (strcmp(intent, "human") == 0) {
            assert_non_null(strstr(text, "a member of our team"));
        } else if (strcmp(intent, "opt_out") == 0) {
            assert_non_null(strstr(text, "you won't get more messages"));
        } else {
            char want[32];
            snprintf(want, sizeof want, "answer to c%d m%d", k, j);
            if (strcmp(text, want) != 0)
                fail_msg("reply %d to customer %d is \"%s\", expected \"%s\"", j, k, text, want);
        }
        json_decref(b);
    }
    for (int k = 0; k < NCUST; k++)
        assert_int_equal(next[k], expect[k]);
}

static void test_sms(void **state)
{
    world *w = *state;
    twenty_messages_in_order(w->api);
    check_replies(w);
}

static const char wa_body_fmt[] =
    "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"WABA\",\"changes\":[{\"field\":"
    "\"messages\",\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":{\"display_phone_"
    "number\":"
    "\"15005550006\",\"phone_number_id\":\"1065\"},\"contacts\":[{\"profile\":{\"name\":\"Kim\"},"
    "\"wa_id\":\"15552220000\"}],\"messages\":[{\"from\":\"15552220000\",\"id\":\"wamid.in1\","
    "\"timestamp\":\"%lld\",\"type\":\"text\",\"text\":{\"body\":\"c9 m0 can I book a "
    "visit?\"}}]}}]}]}";

/* A WhatsApp message is answered on WhatsApp. */
static void test_whatsapp(void **state)
{
    world *w = *state;
    long long tenant = th_pg_long(th_api_db(w->api), "SELECT min(id) FROM tenants");
    char body[1024], path[96];
    snprintf(body, sizeof body, wa_body_fmt, (long long)time(NULL));
    snprintf(path, sizeof path, "/v1/hooks/whatsapp?tenant=%lld", tenant);
    char *sig = th_msg_hub_signature("wa-app-secret", body);
    char hdr[160];
    snprintf(hdr, sizeof hdr, "X-Hub-Signature-256: %s", sig);
    free(sig);
    int twilio_before = th_msg_requests(w->twilio);
    assert_int_equal(post_signed(w->api, path, "application/json", body, hdr), 200);
    json_t *list = th_api_json(w->api, 200, "GET", "/v1/runs?workflow=inbound_reply&limit=1", NULL);
    long long id =
        json_integer_value(json_object_get(json_array_get(json_object_get(list, "runs"), 0), "id"));
    json_decref(list);
    json_t *run = th_api_wait_run(w->api, id, 50, 60, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    json_decref(run);
    assert_int_equal(th_msg_requests(w->whatsapp), 1);
    assert_int_equal(th_msg_requests(w->twilio), twilio_before);
    json_t *b = th_msg_request_body(w->whatsapp, 0);
    assert_string_equal(json_string_value(json_object_get(b, "to")), "15552220000");
    assert_string_equal(json_string_value(json_object_get(json_object_get(b, "text"), "body")),
                        "answer to c9 m0");
    json_decref(b);
}

static int setup(void **state)
{
    world *w = eng_xcalloc(1, sizeof *w);
    w->twilio = th_msg_start(TH_MSG_TWILIO);
    w->whatsapp = th_msg_start(TH_MSG_WHATSAPP);
    w->llm = th_api_openai_start(llm_answer, NULL);
    setenv("TWILIO_ACCOUNT_SID", TH_MSG_TWILIO_SID, 1);
    setenv("TWILIO_AUTH_TOKEN", TH_MSG_TWILIO_TOKEN, 1);
    setenv("TWILIO_BASE_URL", th_msg_url(w->twilio), 1);
    setenv("WHATSAPP_TOKEN", TH_MSG_WA_TOKEN, 1);
    setenv("WHATSAPP_PHONE_NUMBER_ID", TH_MSG_WA_PHONE_ID, 1);
    setenv("WHATSAPP_BASE_URL", th_msg_url(w->whatsapp), 1);
    setenv("WHATSAPP_APP_SECRET", "wa-app-secret", 1);
    setenv("OPENAI_API_KEY", "sk-test-inbound", 1);
    setenv("OPENAI_BASE_URL", th_api_openai_url(w->llm), 1);
    unsetenv("FLOWD_PUBLIC_URL");
    unsetenv("TWILIO_FROM");
    prov_config_cache_clear();
    th_api_opts o = {.prefix = "e2e_inbound", .workers = 2};
    w->api = th_api_start(&o);
    assert_int_equal(th_api_put_shipped(w->api, "inbound_reply"), 1);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world *w = *state;
    th_api_stop(w->api);
    th_api_openai_stop(w->llm);
    th_msg_stop(w->twilio);
    th_msg_stop(w->whatsapp);
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
        cmocka_unit_test(test_sms),
        cmocka_unit_test(test_whatsapp),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    eng_httpc_global_cleanup();
    return rc;
}
