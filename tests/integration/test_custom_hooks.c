/* tests/integration/test_custom_hooks.c: inbound custom hooks (api/routes_custom_hooks.c,
 * sql/custom_hooks.sql) over real HTTP against the API service, workers and a real PostgreSQL:
 *   - configuration: PUT (201, then 200), GET (no secret, "secret_set"), list, DELETE; 422 naming
 *     the field for every kind of bad configuration;
 *   - HMAC-SHA256 hex with a prefix: a valid delivery starts a run through a trigger, a corrupted
 *     one answers 401 and starts nothing (and is counted), a replay answers 200 "duplicate" and
 *     starts nothing more; HMAC-SHA1 base64; a shared token header;
 *   - Standard Webhooks deliveries signed by the reference library (npm standardwebhooks): valid,
 *     a corrupted signature, a timestamp 10 minutes old (401), a replay by webhook-id;
 *   - the event resumes a wait and cancels a run with cancel_on, as POST /v1/events does;
 *   - a delivery whose event a triggered workflow refuses (its input check) answers 422 and
 *     records nothing: the same delivery is applied once the workflow accepts it. */
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
#include "engine/metrics.h"
#include "engine/step.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_engine.h"

#define SECRET "crm-shared-secret"
#define SW_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

/* A delivery to hook name of tenant 1 (no key); headers NULL-terminated. Returns the status and
 * the parsed answer in *out when asked. */
static long deliver(th_api *a, const char *name, const char *body, const char *const *headers,
                    json_t **out)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/hooks/custom/%s?tenant=1", name);
    return th_api_deliver(a, path, body, headers, out);
}

/* "Name: prefix<HMAC of body>" with sha256/sha1, hex or base64. */
static char *signed_header(const char *name, const char *prefix, bool sha1, bool hex,
                           const char *secret, const char *body)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    HMAC(sha1 ? EVP_sha1() : EVP_sha256(), secret, (int)strlen(secret),
         (const unsigned char *)body, strlen(body), mac, &n);
    char enc[2 * EVP_MAX_MD_SIZE + 1];
    if (hex)
        for (unsigned int i = 0; i < n; i++)
            snprintf(enc + 2 * i, 3, "%02x", mac[i]);
    else
        EVP_EncodeBlock((unsigned char *)enc, mac, (int)n);
    return eng_xasprintf("%s: %s%s", name, prefix, enc);
}

/* The three Standard Webhooks headers for body, signed age_s seconds ago by the reference library
 * (tests/webhooks/sign.js); hdr[3] is NULL. Free each. */
static void sw_sign(const char *id, const char *body, int age_s, char *hdr[4])
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "printf '%%s' '%s' | %s/tests/webhooks/run.sh %s %s/npm-webhooks sign.js %s %s %d",
             body, th_source_dir(), th_source_dir(), getenv("FLOWD_BUILD_DIR"), SW_SECRET, id,
             age_s);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[256];
    for (int i = 0; i < 3; i++) {
        assert_non_null(fgets(line, sizeof line, p));
        line[strcspn(line, "\n")] = '\0';
        hdr[i] = eng_xstrdup(line);
    }
    hdr[3] = NULL;
    assert_int_equal(pclose(p), 0);
}

static long runs_of(th_api *a, const char *workflow)
{
    return th_pg_longf(th_api_db(a),
                       "SELECT count(*) FROM runs r JOIN workflows w ON w.id = r.workflow_id"
                       " WHERE w.name = '%s'",
                       workflow);
}

static void put_hook(th_api *a, const char *name, const char *def)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/hooks/custom/%s", name);
    long status;
    free(th_api_raw(a, "PUT", path, def, &status));
    assert_true(status == 200 || status == 201);
}

/* ------------------------------------------------------------------------ configuration -- */

static void expect_422(th_api *a, const char *def, const char *field)
{
    json_t *e = th_api_json(a, 422, "PUT", "/v1/hooks/custom/bad", def);
    const char *got = json_string_value(json_object_get(json_object_get(e, "error"), "field"));
    if (!got || strcmp(got, field) != 0)
        fail_msg("%s: field %s, wanted %s", def, got ? got : "(none)", field);
    json_decref(e);
}

static void test_config(void **state)
{
    th_api *a = *state;
    const char *def = "{\"verify\": {\"hmac\": \"sha256\", \"header\": \"X-Signature\","
                      " \"encoding\": \"hex\", \"secret\": \"" SECRET "\"},"
                      " \"event\": {\"name\": \"crm.order\", \"key\": \"{{body.order_id}}\"}}";
    json_t *h = th_api_json(a, 201, "PUT", "/v1/hooks/custom/crm", def);
    json_t *v = json_object_get(h, "verify");
    assert_null(json_object_get(v, "secret"));
    assert_true(json_is_true(json_object_get(v, "secret_set")));
    assert_string_equal(json_string_value(json_object_get(v, "prefix")), "");
    json_decref(h);
    json_decref(th_api_json(a, 200, "PUT", "/v1/hooks/custom/crm", def));
    /* stored sealed, never in clear */
    assert_int_equal(th_pg_long(th_api_db(a), "SELECT count(*) FROM custom_hooks"
                                              " WHERE verify->>'secret' LIKE 'enc:v1:%'"),
                     1);
    h = th_api_json(a, 200, "GET", "/v1/hooks/custom/crm", NULL);
    char *text = json_dumps(h, 0);
    assert_null(strstr(text, SECRET));
    free(text);
    json_decref(h);
    h = th_api_json(a, 200, "GET", "/v1/hooks/custom", NULL);
    assert_int_equal(json_array_size(json_object_get(h, "hooks")), 1);
    json_decref(h);
    json_decref(th_api_json(a, 404, "GET", "/v1/hooks/custom/nope", NULL));

    expect_422(a, "{\"event\": {\"name\": \"x\", \"key\": \"k\"}}", "/verify");
    expect_422(a, "{\"verify\": {\"hmac\": \"sha256\", \"token\": true, \"header\": \"X\", \"secret\": \"s\"}, \"event\": {\"name\": \"x\", \"key\": \"k\"}}", "/verify");
    expect_422(a, "{\"verify\": {\"hmac\": \"md5\", \"header\": \"X\", \"secret\": \"s\"}, \"event\": {\"name\": \"x\", \"key\": \"k\"}}", "/verify/hmac");
    expect_422(a, "{\"verify\": {\"hmac\": \"sha1\", \"header\": \"X Y\", \"secret\": \"s\"}, \"event\": {\"name\": \"x\", \"key\": \"k\"}}", "/verify/header");
    expect_422(a, "{\"verify\": {\"hmac\": \"sha1\", \"header\": \"X\", \"encoding\": \"b32\", \"secret\": \"s\"}, \"event\": {\"name\": \"x\", \"key\": \"k\"}}", "/verify/encoding");
    expect_422(a, "{\"verify\": {\"hmac\": \"sha1\", \"header\": \"X\", \"secret\": \"\"}, \"event\": {\"name\": \"x\", \"key\": \"k\"}}", "/verify/secret");
    expect_422(a, "{\"verify\": {\"hmac\": \"sha1\", \"header\": \"X\", \"secret\": \"s\", \"salt\": 1}, \"event\": {\"name\": \"x\", \"key\": \"k\"}}", "/verify/salt");
    expect_422(a, "{\"verify\": {\"standard_webhooks\": true, \"secret\": \"whsec_!!\"}, \"event\": {\"name\": \"x\", \"key\": \"k\"}}", "/verify/secret");
    expect_422(a, "{\"verify\": {\"token\": true, \"header\": \"X\", \"secret\": \"s\"}, \"event\": {\"name\": \"x\"}}", "/event/key");
    expect_422(a, "{\"verify\": {\"token\": true, \"header\": \"X\", \"secret\": \"s\"}, \"event\": {\"name\": \"x\", \"key\": \"{{input.id}}\"}}", "/event/key");
    expect_422(a, "{\"verify\": {\"token\": true, \"header\": \"X\", \"secret\": \"s\"}, \"event\": {\"name\": \"x\", \"key\": \"{{headers.X-Id}}\"}}", "/event/key");
    expect_422(a, "{\"verify\": {\"token\": true, \"header\": \"X\", \"secret\": \"s\"}, \"event\": {\"name\": \"x\", \"key\": \"{{body.id\"}}", "/event/key");
    expect_422(a, "{\"verify\": {\"token\": true, \"header\": \"X\", \"secret\": \"s\"}, \"event\": {\"name\": \"x\", \"key\": \"k\", \"data\": {\"a\": \"{{run.id}}\"}}}", "/event/data/a");
    expect_422(a, "{\"verify\": {\"token\": true, \"header\": \"X\", \"secret\": \"s\"}, \"event\": {\"name\": \"x\", \"key\": \"k\", \"when\": 1}}", "/event/when");
    expect_422(a, "{\"verify\": {\"token\": true, \"header\": \"X\", \"secret\": \"s\"}, \"event\": {\"name\": \"x\", \"key\": \"k\"}, \"dedup\": \"always\"}", "/dedup");
    json_decref(th_api_json(a, 404, "GET", "/v1/hooks/custom/bad", NULL));

    json_decref(th_api_json(a, 201, "PUT", "/v1/hooks/custom/gone", def));
    long status;
    free(th_api_raw(a, "DELETE", "/v1/hooks/custom/gone", NULL, &status));
    assert_int_equal(status, 204);
    free(th_api_raw(a, "DELETE", "/v1/hooks/custom/gone", NULL, &status));
    assert_int_equal(status, 404);
    json_t *r = NULL;
    assert_int_equal(deliver(a, "gone", "{}", NULL, &r), 404);
    json_decref(r);
}

/* ----------------------------------------------------------------------------- HMAC -- */

static void test_hmac_valid_corrupted_replayed(void **state)
{
    th_api *a = *state;
    put_hook(a, "shop",
             "{\"verify\": {\"hmac\": \"sha256\", \"header\": \"X-Shop-Signature\","
             " \"prefix\": \"sha256=\", \"secret\": \"" SECRET "\"},"
             " \"event\": {\"name\": \"shop.{{body.kind}}\", \"key\": \"{{body.order_id}}\","
             " \"data\": {\"order_id\": \"{{body.order_id}}\", \"total\": \"{{body.total}}\","
             " \"via\": \"{{headers.user-agent}}\"}},"
             " \"dedup\": \"{{headers.x-delivery}}\"}");
    const char *body = "{\"kind\": \"order\", \"order_id\": 1001, \"total\": 25.5}";
    char *sig = signed_header("X-Shop-Signature", "sha256=", false, true, SECRET, body);
    const char *h[] = {sig, "X-Delivery: d-1", "User-Agent: shop/1", NULL};
    uint64_t refused = eng_metrics_value("flowd_webhook_verification_failures_total",
                                         "provider=\"custom\"");

    /* corrupted: one hex digit changed */
    char *bad = eng_xstrdup(sig);
    size_t n = strlen(bad);
    bad[n - 1] = bad[n - 1] == '0' ? '1' : '0';
    const char *hb[] = {bad, "X-Delivery: d-1", NULL};
    assert_int_equal(deliver(a, "shop", body, hb, NULL), 401);
    const char *none[] = {"X-Delivery: d-1", NULL};
    assert_int_equal(deliver(a, "shop", body, none, NULL), 401);
    assert_int_equal(eng_metrics_value("flowd_webhook_verification_failures_total",
                                       "provider=\"custom\""),
                     refused + 2);
    assert_int_equal(runs_of(a, "ch_order"), 0);
    assert_int_equal(th_pg_long(th_api_db(a), "SELECT count(*) FROM webhook_deliveries"
                                              " WHERE provider = 'custom:shop'"),
                     0);

    /* valid: the trigger starts one run, whose input is the event */
    json_t *r = NULL;
    assert_int_equal(deliver(a, "shop", body, h, &r), 200);
    assert_false(json_is_true(json_object_get(r, "duplicate")));
    assert_int_equal(json_integer_value(json_object_get(r, "started")), 1);
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "event"), "name")),
                        "shop.order");
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "event"), "key")),
                        "1001");
    json_decref(r);
    assert_int_equal(runs_of(a, "ch_order"), 1);
    assert_int_equal(th_pg_long(th_api_db(a),
                                "SELECT count(*) FROM runs WHERE input->'event'->'data'"
                                " = '{\"order_id\": 1001, \"total\": 25.5, \"via\": \"shop/1\"}'"),
                     1);

    /* replayed: same dedup key, 200, nothing new */
    assert_int_equal(deliver(a, "shop", body, h, &r), 200);
    assert_true(json_is_true(json_object_get(r, "duplicate")));
    assert_int_equal(json_integer_value(json_object_get(r, "started")), 0);
    json_decref(r);
    assert_int_equal(runs_of(a, "ch_order"), 1);

    /* a delivery without the dedup header the hook reads: 422 naming it */
    const char *nodedup[] = {sig, NULL};
    assert_int_equal(deliver(a, "shop", body, nodedup, &r), 422);
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "error"), "field")),
                        "/dedup");
    json_decref(r);
    free(bad);
    free(sig);
}

static void test_sha1_base64_and_token(void **state)
{
    th_api *a = *state;
    put_hook(a, "legacy",
             "{\"verify\": {\"hmac\": \"sha1\", \"header\": \"X-Sig\", \"encoding\": \"base64\","
             " \"secret\": \"" SECRET "\"},"
             " \"event\": {\"name\": \"shop.order\", \"key\": \"{{body.order_id}}\"}}");
    const char *body = "{\"order_id\": \"L-7\"}";
    char *sig = signed_header("X-Sig", "", true, false, SECRET, body);
    const char *h[] = {sig, NULL};
    json_t *r = NULL;
    assert_int_equal(deliver(a, "legacy", body, h, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r, "started")), 1);
    json_decref(r);
    /* no dedup template: the same body again is a replay */
    assert_int_equal(deliver(a, "legacy", body, h, &r), 200);
    assert_true(json_is_true(json_object_get(r, "duplicate")));
    json_decref(r);
    char *hexsig = signed_header("X-Sig", "", true, true, SECRET, body);
    const char *hh[] = {hexsig, NULL};
    assert_int_equal(deliver(a, "legacy", body, hh, NULL), 401);
    free(hexsig);
    free(sig);

    put_hook(a, "tok", "{\"verify\": {\"token\": true, \"header\": \"X-Hook-Token\","
                       " \"secret\": \"" SECRET "\"},"
                       " \"event\": {\"name\": \"shop.order\", \"key\": \"{{body.order_id}}\"}}");
    const char *good[] = {"X-Hook-Token: " SECRET, NULL};
    const char *wrong[] = {"X-Hook-Token: " SECRET "x", NULL};
    assert_int_equal(deliver(a, "tok", "{\"order_id\": \"T-1\"}", wrong, NULL), 401);
    assert_int_equal(deliver(a, "tok", "{\"order_id\": \"T-1\"}", good, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r, "started")), 1);
    json_decref(r);
    assert_int_equal(runs_of(a, "ch_order"), 3);
}

/* ------------------------------------------------------------------ Standard Webhooks -- */

static void free_headers(char *h[4])
{
    for (int i = 0; i < 3; i++)
        free(h[i]);
}

static void test_standard_webhooks(void **state)
{
    th_api *a = *state;
    put_hook(a, "sw", "{\"verify\": {\"standard_webhooks\": true, \"secret\": \"" SW_SECRET "\"},"
                      " \"event\": {\"name\": \"shop.order\", \"key\": \"{{body.data.order_id}}\","
                      " \"data\": \"{{body.data}}\"}}");
    json_t *h = th_api_json(a, 200, "GET", "/v1/hooks/custom/sw", NULL);
    assert_string_equal(json_string_value(json_object_get(h, "dedup")), "{{headers.webhook-id}}");
    json_decref(h);
    const char *body = "{\"type\": \"order.created\", \"data\": {\"order_id\": \"SW-1\"}}";
    long before = runs_of(a, "ch_order");
    char *hdr[4];
    json_t *r = NULL;

    sw_sign("msg_old", body, 600, hdr); /* ten minutes ago */
    assert_int_equal(deliver(a, "sw", body, (const char *const *)hdr, NULL), 401);
    free_headers(hdr);

    sw_sign("msg_1", body, 0, hdr);
    char *bad = eng_xstrdup(hdr[2]);
    bad[strlen(bad) - 3] = bad[strlen(bad) - 3] == 'A' ? 'B' : 'A';
    const char *hb[] = {hdr[0], hdr[1], bad, NULL};
    assert_int_equal(deliver(a, "sw", body, hb, NULL), 401);
    free(bad);
    assert_int_equal(runs_of(a, "ch_order"), before);

    assert_int_equal(deliver(a, "sw", body, (const char *const *)hdr, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r, "started")), 1);
    json_decref(r);
    assert_int_equal(deliver(a, "sw", body, (const char *const *)hdr, &r), 200);
    assert_true(json_is_true(json_object_get(r, "duplicate")));
    json_decref(r);
    free_headers(hdr);
    assert_int_equal(runs_of(a, "ch_order"), before + 1);
    assert_int_equal(th_pg_long(th_api_db(a), "SELECT count(*) FROM runs"
                                              " WHERE input->'event'->'data' = '{\"order_id\": \"SW-1\"}'"),
                     1);
}

/* ------------------------------------------------------------ waits, cancel_on, checks -- */

static void test_event_semantics(void **state)
{
    th_api *a = *state;
    put_hook(a, "pay", "{\"verify\": {\"token\": true, \"header\": \"X-Hook-Token\","
                       " \"secret\": \"" SECRET "\"},"
                       " \"event\": {\"name\": \"{{body.type}}\", \"key\": \"{{body.order}}\"},"
                       " \"dedup\": \"{{body.id}}\"}");
    long long waiting = th_api_start_run(a, "ch_wait", "{\"order\": \"P-1\"}");
    long long doomed = th_api_start_run(a, "ch_cancel", "{\"order\": \"P-2\"}");
    /* the wait must be in place before the event comes (a loaded machine claims it late) */
    char *cond = eng_xasprintf("SELECT count(*) = 1 FROM steps WHERE run_id = %lld"
                               " AND state = 'waiting'",
                               waiting);
    assert_true(th_engine_wait(th_api_db(a), cond, 60));
    free(cond);
    const char *h[] = {"X-Hook-Token: " SECRET, NULL};
    json_t *r = NULL;
    assert_int_equal(deliver(a, "pay", "{\"id\": \"e1\", \"type\": \"order.paid\", \"order\": \"P-1\"}",
                             h, &r),
                     200);
    assert_int_equal(json_integer_value(json_object_get(r, "resumed")), 1);
    json_decref(r);
    assert_int_equal(deliver(a, "pay", "{\"id\": \"e2\", \"type\": \"order.refunded\", \"order\": \"P-2\"}",
                             h, &r),
                     200);
    assert_int_equal(json_integer_value(json_object_get(r, "cancelled")), 1);
    json_decref(r);
    json_t *run = th_api_wait_run(a, waiting, 20, 30, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    json_decref(run);
    run = th_api_wait_run(a, doomed, 20, 30, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "cancelled");
    json_decref(run);

    /* ch_order reads {{input.event.data.order_id}}: an order.created without one is refused
     * whole, naming the pointer in the event, and its dedup key is not used up */
    long before = runs_of(a, "ch_order");
    put_hook(a, "pay2", "{\"verify\": {\"token\": true, \"header\": \"X-Hook-Token\","
                        " \"secret\": \"" SECRET "\"},"
                        " \"event\": {\"name\": \"shop.order\", \"key\": \"{{body.id}}\"},"
                        " \"dedup\": \"{{body.id}}\"}");
    assert_int_equal(deliver(a, "pay2", "{\"id\": \"e3\"}", h, &r), 422);
    json_t *e = json_object_get(r, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "invalid_input");
    assert_string_equal(json_string_value(json_object_get(e, "field")), "/data/order_id");
    json_decref(r);
    assert_int_equal(runs_of(a, "ch_order"), before);
    assert_int_equal(deliver(a, "pay2", "{\"id\": \"e3\", \"order_id\": 9}", h, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r, "started")), 1);
    json_decref(r);
}

static void put_workflow(th_api *a, const char *name, const char *def)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/workflows/%s", name);
    long status;
    free(th_api_raw(a, "PUT", path, def, &status));
    assert_true(status == 200 || status == 201);
}

static int setup(void **state)
{
    setenv("FLOWD_SECRET_KEY", "4f1c2b0e9a4d4c3e8f2a1b0c9d8e7f6a4f1c2b0e9a4d4c3e8f2a1b0c9d8e7f6a", 1);
    th_api_opts o = {.prefix = "custom_hooks", .workers = 1};
    th_api *a = th_api_start(&o);
    put_workflow(a, "ch_order",
                            "{\"triggers\": [{\"event\": \"shop.order\"}], \"steps\": [{\"key\": \"t\","
                            " \"kind\": \"transform\", \"input\": {\"order\": \"{{input.event.data.order_id}}\"}}]}");
    put_workflow(a, "ch_wait",
                            "{\"steps\": [{\"key\": \"w\", \"kind\": \"wait_event\", \"input\":"
                            " {\"event\": \"order.paid\", \"key\": \"{{input.order}}\", \"timeout\": \"1d\"}}]}");
    put_workflow(a, "ch_cancel",
                            "{\"cancel_on\": [{\"event\": \"order.refunded\", \"key\": \"{{input.order}}\"}],"
                            " \"steps\": [{\"key\": \"d\", \"kind\": \"delay\", \"input\": {\"for\": \"1d\"}}]}");
    *state = a;
    return 0;
}

static int teardown(void **state)
{
    th_api_stop(*state);
    return 0;
}

int main(void)
{
    th_api_init();
    step_register_all();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_hmac_valid_corrupted_replayed),
        cmocka_unit_test(test_sha1_base64_and_token),
        cmocka_unit_test(test_standard_webhooks),
        cmocka_unit_test(test_event_semantics),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    curl_global_cleanup();
    return rc;
}
