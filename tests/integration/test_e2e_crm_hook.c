/* tests/integration/test_e2e_crm_hook.c: a shop's "new order" webhook starts a lead's touchpoint
 * sequence, through the HTTP API with sandbox providers: the shipped hook definition
 * (examples/crm_order_hook.json) and workflows (crm_new_order, lead_touchpoints).
 *   - a valid delivery (HMAC-SHA256, computed here with OpenSSL as the shop would) starts one
 *     crm_new_order run, whose map starts lead_touchpoints for the order's customer;
 *   - a corrupted delivery answers 401 and starts nothing; a replay (same delivery id) answers
 *     200 "duplicate" and starts nothing more;
 *   - an order without the customer's email answers 422 and starts nothing;
 *   - the same hook verified per Standard Webhooks, signed by the reference library (npm
 *     standardwebhooks): a valid delivery starts a second sequence, its replay none;
 *   - the lead's reply (lead.replied) stops the sequence, and crm_new_order then ends. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "engine/step.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_engine.h"

#define SW_SECRET "whsec_c2hvcC1kZW1vLXN0YW5kYXJkLXdlYmhvb2tzLWtleQ=="

typedef struct world {
    th_api *api;
    json_t *hook;       /* examples/crm_order_hook.json */
    const char *secret; /* its HMAC secret (borrowed from hook) */
} world;

static const char order_1001[] =
    "{\"order_id\": 1001, \"created_at\": \"2026-12-07T10:00:00Z\", \"customer\": {\"id\": "
    "\"cus_77\", \"first_name\": \"Ada\", \"last_name\": \"Lovelace\", \"email\": "
    "\"ada@example.com\", \"phone\": \"+15555550123\", \"timezone\": \"America/New_York\"}, "
    "\"line_items\": [{\"title\": \"solar panels\", \"quantity\": 1}]}";

static long deliver(world *w, const char *hook, const char *body, const char *const *headers,
                    json_t **out)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/hooks/custom/%s?tenant=1", hook);
    return th_api_deliver(w->api, path, body, headers, out);
}

/* "X-Shop-Signature: sha256=<hex HMAC-SHA256 of body>", as the shop computes it. */
static char *shop_signature(const char *secret, const char *body)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)body, strlen(body), mac,
         &n);
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    for (unsigned int i = 0; i < n; i++)
        snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    return eng_xasprintf("X-Shop-Signature: sha256=%s", hex);
}

static long count(world *w, const char *sql)
{
    return th_pg_long(th_api_db(w->api), sql);
}

static long runs_of(world *w, const char *workflow)
{
    return th_pg_longf(th_api_db(w->api),
                       "SELECT count(*) FROM runs r JOIN workflows w ON w.id = r.workflow_id"
                       " WHERE w.name = '%s'",
                       workflow);
}

/* Waits until n lead_touchpoints runs exist (the map of crm_new_order starts them). */
static void wait_sequences(world *w, long n)
{
    char *cond = eng_xasprintf("SELECT count(*) >= %ld FROM runs r JOIN workflows w"
                               " ON w.id = r.workflow_id WHERE w.name = 'lead_touchpoints'",
                               n);
    assert_true(th_engine_wait(th_api_db(w->api), cond, 60));
    free(cond);
    assert_int_equal(runs_of(w, "lead_touchpoints"), n);
}

static void test_shop_order_starts_sequence(void **state)
{
    world *w = *state;
    char *sig = shop_signature(w->secret, order_1001);
    const char *good[] = {sig, "X-Shop-Delivery-Id: dlv-1", NULL};

    /* corrupted: the body changed after signing (a different total), so the HMAC is wrong */
    char *tampered = eng_xstrdup(order_1001);
    tampered[strlen("{\"order_id\": 100")] = '2';
    json_t *r = NULL;
    assert_int_equal(deliver(w, "shop", tampered, good, &r), 401);
    json_decref(r);
    free(tampered);
    assert_int_equal(runs_of(w, "crm_new_order"), 0);
    assert_int_equal(count(w, "SELECT count(*) FROM events"), 0);

    /* valid */
    assert_int_equal(deliver(w, "shop", order_1001, good, &r), 200);
    assert_false(json_is_true(json_object_get(r, "duplicate")));
    assert_int_equal(json_integer_value(json_object_get(r, "started")), 1);
    json_decref(r);
    wait_sequences(w, 1);
    assert_int_equal(count(w, "SELECT count(*) FROM runs r JOIN workflows w ON w.id = r.workflow_id"
                              " WHERE w.name = 'lead_touchpoints'"
                              " AND r.input->'lead' = '{\"id\": \"cus_77\", \"name\": \"Ada Lovelace\","
                              " \"email\": \"ada@example.com\", \"phone\": \"+15555550123\","
                              " \"tz\": \"America/New_York\", \"service\": \"solar panels\"}'"
                              " AND r.input->'sender'->>'name' = 'Sunny Roofs'"),
                     1);

    /* replayed: the shop retries the same delivery */
    assert_int_equal(deliver(w, "shop", order_1001, good, &r), 200);
    assert_true(json_is_true(json_object_get(r, "duplicate")));
    assert_int_equal(json_integer_value(json_object_get(r, "started")), 0);
    json_decref(r);
    assert_int_equal(runs_of(w, "crm_new_order"), 1);

    /* an order without the customer's email: the hook's data cannot be built */
    const char *no_email = "{\"order_id\": 1002, \"customer\": {\"id\": \"cus_78\", \"first_name\":"
                           " \"Bo\", \"last_name\": \"B\", \"phone\": \"+15555550124\"},"
                           " \"line_items\": [{\"title\": \"heat pump\"}]}";
    char *sig2 = shop_signature(w->secret, no_email);
    const char *h2[] = {sig2, "X-Shop-Delivery-Id: dlv-2", NULL};
    assert_int_equal(deliver(w, "shop", no_email, h2, &r), 422);
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "error"), "field")),
                        "/event/data");
    json_decref(r);
    /* one whose email the sequence cannot use: crm_new_order's input check refuses the event */
    const char *bad_email = "{\"order_id\": 1003, \"customer\": {\"id\": \"cus_79\", \"first_name\":"
                            " \"Cy\", \"last_name\": \"C\", \"email\": \"not an address\", \"phone\":"
                            " \"+15555550125\"}, \"line_items\": [{\"title\": \"heat pump\"}]}";
    char *sig3 = shop_signature(w->secret, bad_email);
    const char *h3[] = {sig3, "X-Shop-Delivery-Id: dlv-3", NULL};
    assert_int_equal(deliver(w, "shop", bad_email, h3, &r), 422);
    json_t *e = json_object_get(r, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "invalid_input");
    assert_string_equal(json_string_value(json_object_get(e, "field")), "/data/lead/email");
    json_decref(r);
    assert_int_equal(runs_of(w, "crm_new_order"), 1);
    free(sig3);
    free(sig2);
    free(sig);
}

static void test_standard_webhooks_sender(void **state)
{
    world *w = *state;
    /* the same hook, verified per Standard Webhooks (dedup: webhook-id by default) */
    json_t *def = json_deep_copy(w->hook);
    json_object_set_new(def, "verify", json_pack("{s:b, s:s}", "standard_webhooks", 1, "secret",
                                                 SW_SECRET));
    json_object_del(def, "dedup");
    char *text = json_dumps(def, 0);
    json_decref(th_api_json(w->api, 201, "PUT", "/v1/hooks/custom/shop-sw", text));
    free(text);
    json_decref(def);

    const char *body = "{\"order_id\": 2001, \"customer\": {\"id\": 42, \"first_name\": \"Grace\","
                       " \"last_name\": \"Hopper\", \"email\": \"grace@example.com\", \"phone\":"
                       " \"+15555550199\", \"timezone\": \"Europe/Berlin\"}, \"line_items\":"
                       " [{\"title\": \"battery storage\"}]}";
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "printf '%%s' '%s' | %s/tests/webhooks/run.sh %s %s/npm-webhooks sign.js %s msg_2001 0",
             body, th_source_dir(), th_source_dir(), getenv("FLOWD_BUILD_DIR"), SW_SECRET);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[3][256];
    for (int i = 0; i < 3; i++) {
        assert_non_null(fgets(line[i], sizeof line[i], p));
        line[i][strcspn(line[i], "\n")] = '\0';
    }
    assert_int_equal(pclose(p), 0);
    const char *h[] = {line[0], line[1], line[2], NULL};
    json_t *r = NULL;
    assert_int_equal(deliver(w, "shop-sw", body, h, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r, "started")), 1);
    json_decref(r);
    assert_int_equal(deliver(w, "shop-sw", body, h, &r), 200);
    assert_true(json_is_true(json_object_get(r, "duplicate")));
    json_decref(r);
    /* signed for another body: refused */
    assert_int_equal(deliver(w, "shop-sw", order_1001, h, NULL), 401);
    wait_sequences(w, 2);
    assert_int_equal(count(w, "SELECT count(*) FROM runs WHERE input->'lead'->>'id' = '42'"
                              " AND input->'lead'->>'tz' = 'Europe/Berlin'"),
                     1);
}

static void test_reply_stops_sequence(void **state)
{
    world *w = *state;
    long long touch = th_pg_long(th_api_db(w->api),
                                 "SELECT r.id FROM runs r WHERE r.input->'lead'->>'id' = 'cus_77'");
    long long order = th_pg_long(th_api_db(w->api),
                                 "SELECT r.id FROM runs r WHERE r.input->'event'->>'key' = '1001'");
    json_t *ev = th_api_json(w->api, 202, "POST", "/v1/events",
                             "{\"name\": \"lead.replied\", \"key\": \"cus_77\", \"data\": {}}");
    assert_int_equal(json_integer_value(json_object_get(ev, "cancelled")), 1);
    json_decref(ev);
    json_t *run = th_api_wait_run(w->api, touch, 20, 30, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "cancelled");
    json_decref(run);
    run = th_api_wait_run(w->api, order, 20, 30, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    json_decref(run);
}

static int setup(void **state)
{
    world *w = eng_xcalloc(1, sizeof *w);
    setenv("FLOWD_SECRET_KEY", "5d2f8a1c3b4e6f708192a3b4c5d6e7f80112233445566778899aabbccddeeff0", 1);
    static const char *const creds[] = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "SENDGRID_API_KEY",
                                        "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "WHATSAPP_TOKEN"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(creds); i++)
        unsetenv(creds[i]);
    th_api_opts o = {.prefix = "e2e_crm", .workers = 2};
    w->api = th_api_start(&o);
    assert_int_equal(th_api_put_shipped(w->api, "lead_touchpoints"), 1);
    assert_int_equal(th_api_put_shipped(w->api, "crm_new_order"), 1);
    char path[512];
    snprintf(path, sizeof path, "%s/examples/crm_order_hook.json", th_source_dir());
    w->hook = json_load_file(path, 0, NULL);
    assert_non_null(w->hook);
    w->secret = json_string_value(json_object_get(json_object_get(w->hook, "verify"), "secret"));
    char *text = json_dumps(w->hook, 0);
    json_decref(th_api_json(w->api, 201, "PUT", "/v1/hooks/custom/shop", text));
    free(text);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world *w = *state;
    th_api_stop(w->api);
    json_decref(w->hook);
    free(w);
    return 0;
}

int main(void)
{
    th_api_init();
    step_register_all();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shop_order_starts_sequence),
        cmocka_unit_test(test_standard_webhooks_sender),
        cmocka_unit_test(test_reply_stops_sequence),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    curl_global_cleanup();
    return rc;
}
