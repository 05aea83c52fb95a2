/* tests/integration/test_e2e_campaign.c: workflows/campaign.json end to end through the HTTP API:
 * one SMS to 1,000 contacts at the campaign's pace (at most 10 children at once, each waiting
 * `interval` before it sends: 10 per 100 ms = 100/s, burst 10), with some recipients suppressed
 * beforehand by STOP replies through the signed Twilio webhook.
 *
 * The rate is measured at the mock: the test thread samples the Twilio mock's request count every
 * few milliseconds while the campaign runs, and checks every window of the curve against the
 * token bucket (rate * seconds + burst, plus a margin for a step's claim-to-send latency) and the
 * whole span against the least time the pace allows. */
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

#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "steps/provider.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_mockmsg.h"

#define NCONTACTS      1000
#define RATE           100.0 /* 10 children at once, each waiting the input interval of 100 ms */
#define BURST          10.0
#define SUPPRESS_EVERY 40 /* contacts 0, 40, 80, ... replied STOP before the campaign */
#define MAX_SAMPLES    200000

static bool suppressed(int i)
{
    return i % SUPPRESS_EVERY == 0;
}

static void phone_of(int i, char out[16])
{
    snprintf(out, 16, "+1555300%04d", i);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A STOP reply as Twilio posts it, with a valid X-Twilio-Signature. */
static long twilio_stop(th_api *api, long long tenant, int i)
{
    char path[96], url[256], form[512], phone[16];
    phone_of(i, phone);
    snprintf(path, sizeof path, "/v1/hooks/twilio?tenant=%lld", tenant);
    snprintf(url, sizeof url, "%s%s", th_api_url(api), path);
    snprintf(form, sizeof form,
             "MessageSid=SMstop%d&SmsSid=SMstop%d&AccountSid=" TH_MSG_TWILIO_SID
             "&From=%%2B%s&To=%%2B15005550006&Body=STOP&MessageStatus=received"
             "&SmsStatus=received&NumMedia=0&ApiVersion=2010-04-01",
             i, i, phone + 1);
    char *sig = th_msg_twilio_signature(url, form, TH_MSG_TWILIO_TOKEN);
    char hdr[128];
    snprintf(hdr, sizeof hdr, "X-Twilio-Signature: %s", sig);
    free(sig);
    CURL *h = curl_easy_init();
    struct curl_slist *hl = curl_slist_append(NULL, hdr);
    hl = curl_slist_append(hl, "Content-Type: application/x-www-form-urlencoded");
    FILE *devnull = fopen("/dev/null", "w");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, form);
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

typedef struct world {
    th_api *api;
    th_msg *twilio;
} world;

static void test_thousand_contacts(void **state)
{
    world *w = *state;
    th_api *api = w->api;
    th_msg *tw = w->twilio;
    const char *db = th_api_db(api);
    long long tenant = th_pg_long(db, "SELECT min(id) FROM tenants");
    int nsupp = 0;
    for (int i = 0; i < NCONTACTS; i++)
        if (suppressed(i)) {
            assert_int_equal(twilio_stop(api, tenant, i), 200);
            nsupp++;
        }

    json_t *contacts = json_array();
    for (int i = 0; i < NCONTACTS; i++) {
        char phone[16], name[16];
        phone_of(i, phone);
        snprintf(name, sizeof name, "C%d", i);
        json_array_append_new(contacts, json_pack("{s:s, s:s}", "name", name, "phone", phone));
    }
    json_t *input = json_pack("{s:o, s:s, s:{s:s}}", "contacts", contacts, "message",
                              "the spring sale starts today.", "from", "phone", "+15005550006");
    json_object_set_new(input, "interval", json_string("100ms"));
    char *input_s = json_dumps(input, JSON_COMPACT);
    json_decref(input);
    long long id = th_api_start_run(api, "campaign", input_s);
    free(input_s);

    /* sample the mock's count until the campaign ends */
    long long *t = eng_xmalloc(MAX_SAMPLES * sizeof *t);
    int *c = eng_xmalloc(MAX_SAMPLES * sizeof *c);
    int n = 0;
    long long t0 = th_now_ms(), last_poll = 0;
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld", id);
    json_t *run = NULL;
    for (;;) {
        long long now = th_now_ms();
        if (n < MAX_SAMPLES) {
            t[n] = now;
            c[n] = th_msg_requests(tw);
            n++;
        }
        if (now - last_poll >= 250) {
            last_poll = now;
            run = th_api_json(api, 200, "GET", path, NULL);
            const char *st = json_string_value(json_object_get(run, "state"));
            if (strcmp(st, "queued") != 0 && strcmp(st, "running") != 0)
                break;
            json_decref(run);
            run = NULL;
            if (now - t0 > 240000)
                fail_msg("the campaign did not finish in 240 s (%d sent)", th_msg_requests(tw));
        }
        sleep_ms(5);
    }
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");

    /* every contact has a result in order: sent, or skipped when suppressed */
    const json_t *results =
        json_object_get(json_object_get(json_object_get(run, "output"), "contacts"), "results");
    assert_int_equal(json_array_size(results), NCONTACTS);
    for (int i = 0; i < NCONTACTS; i++) {
        char phone[16];
        phone_of(i, phone);
        const json_t *r = json_array_get(results, (size_t)i);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(r, "recipient"), "phone")), phone);
        const json_t *send = json_object_get(r, "send_sms");
        if (suppressed(i)) {
            assert_null(send);
        } else {
            assert_non_null(send);
            assert_string_equal(json_string_value(json_object_get(send, "to")), phone);
            assert_string_equal(json_string_value(json_object_get(send, "provider")), "twilio");
        }
    }
    json_decref(run);

    /* the mock received exactly the unsuppressed ones, once each */
    int sent = NCONTACTS - nsupp;
    assert_int_equal(th_msg_requests(tw), sent);
    assert_int_equal(th_msg_accepted(tw), sent);
    char *seen = eng_xcalloc(NCONTACTS, 1);
    for (int k = 0; k < sent; k++) {
        json_t *b = th_msg_request_body(tw, k);
        int i = atoi(json_string_value(json_object_get(b, "To")) + 8);
        assert_false(suppressed(i));
        assert_false(seen[i]);
        seen[i] = 1;
        assert_non_null(strstr(json_string_value(json_object_get(b, "Body")), "the spring sale"));
        json_decref(b);
    }
    free(seen);

    /* the rate: the whole span, and every window of at least one second */
    int first = 0;
    while (first < n && c[first] == 0)
        first++;
    int lastk = first;
    while (lastk < n - 1 && c[lastk] < sent)
        lastk++;
    double span_s = (double)(t[lastk] - t[first]) / 1000.0;
    double least_s = (sent - BURST) / RATE;
    fprintf(stderr, "%d sends in %.2f s (limit %.0f/s, burst %.0f: at least %.2f s)\n", sent,
            span_s, RATE, BURST, least_s);
    assert_true(span_s >= least_s - 0.5);
    double worst = 0;
    for (int a = first; a < lastk; a++) {
        for (int b = a + 1; b <= lastk; b++) {
            double dt = (double)(t[b] - t[a]) / 1000.0;
            if (dt < 1.0)
                continue;
            double allowed = RATE * dt + BURST + RATE * 0.5; /* 0.5 s of claim-to-send spread */
            double ratio = (c[b] - c[a]) / allowed;
            if (ratio > worst)
                worst = ratio;
            if (c[b] - c[a] > allowed)
                fail_msg("%d sends in %.2f s at the mock: more than the limit allows (%.0f)",
                         c[b] - c[a], dt, allowed);
            break; /* the shortest window of >= 1 s from a is the strictest */
        }
    }
    fprintf(stderr, "busiest window used %.0f%% of what the bucket allows\n", worst * 100);
    free(t);
    free(c);
}

static int setup(void **state)
{
    world *w = eng_xcalloc(1, sizeof *w);
    th_msg *tw = th_msg_start(TH_MSG_TWILIO);
    setenv("TWILIO_ACCOUNT_SID", TH_MSG_TWILIO_SID, 1);
    setenv("TWILIO_AUTH_TOKEN", TH_MSG_TWILIO_TOKEN, 1);
    setenv("TWILIO_BASE_URL", th_msg_url(tw), 1);
    unsetenv("FLOWD_PUBLIC_URL");
    unsetenv("TWILIO_FROM");
    prov_config_cache_clear();
    th_api_opts o = {.prefix = "e2e_campaign", .workers = 2};
    w->api = th_api_start(&o);
    w->twilio = tw;
    assert_int_equal(th_api_put_shipped(w->api, "campaign"), 1);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world *w = *state;
    th_api_stop(w->api);
    th_msg_stop(w->twilio);
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
        cmocka_unit_test(test_thousand_contacts),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    eng_httpc_global_cleanup();
    return rc;
}
