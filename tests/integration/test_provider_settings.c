/* tests/integration/test_provider_settings.c: a tenant's provider settings set through the API,
 * sealed at rest under the operator's key, used by steps, never shown or logged in full, and
 * re-sealed by `flowd secrets rotate`.
 *
 * Twilio is the provider: its mock (th_mockmsg) answers 401 to any other credential, so a run that
 * succeeds proves the step sent the tenant's stored SID and token. The environment holds no Twilio
 * credential at all. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "steps/provider.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_mockmsg.h"

#define KEY1_HEX "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define KEY2_B64 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define WA_TOKEN "EAAG-whatsapp-cli-token-5678"
#define TENANT_FROM "+15005550077"
/* base64 of "SID:token", what HTTP Basic carries: no more allowed anywhere than the token */
#define BASIC_B64 "QUMwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjp0d2lsaW8tbW9jay10b2tlbi0wMTIz"

typedef struct world {
    th_api *api;
    th_msg *twilio;
} world;

static const char sms_def[] =
    "{\"name\": \"prov_sms\", \"steps\": [{\"key\": \"send\", \"kind\": \"sms\", \"input\": {"
    "\"to\": \"{{input.phone}}\", \"body\": \"hello\"}}]}";

static void use_keys(const char *current, const char *previous)
{
    th_api_use_secret_keys(current, previous);
    prov_config_cache_clear();
}

static void assert_no_secret(const char *text, const char *where)
{
    if (strstr(text, TH_MSG_TWILIO_TOKEN) || strstr(text, BASIC_B64) || strstr(text, WA_TOKEN))
        fail_msg("the auth token is in %s: %s", where, text);
}

static char *put_twilio(world *w, long want)
{
    char *body = eng_xasprintf("{\"account_sid\": \"%s\", \"auth_token\": \"%s\", \"from\": \"%s\","
                               " \"base_url\": \"%s\"}",
                               TH_MSG_TWILIO_SID, TH_MSG_TWILIO_TOKEN, TENANT_FROM,
                               th_msg_url(w->twilio));
    long status;
    char *out = th_api_raw(w->api, "PUT", "/v1/providers/twilio", body, &status);
    free(body);
    if (status != want)
        fail_msg("PUT /v1/providers/twilio: %ld %s", status, out);
    assert_no_secret(out, "the PUT response");
    return out;
}

/* Sends one SMS through the tenant's settings; returns the run's final state (new string). */
static char *send_one(world *w)
{
    long long id = th_api_start_run(w->api, "prov_sms", "{\"phone\": \"+15554300001\"}");
    json_t *run = th_api_wait_run(w->api, id, 20, 60, NULL, NULL);
    char *state = eng_xstrdup(json_string_value(json_object_get(run, "state")));
    char *text = json_dumps(run, 0);
    assert_no_secret(text, "the run");
    free(text);
    json_decref(run);
    return state;
}

static char *stored_settings(world *w)
{
    return th_pg_value(th_api_db(w->api),
                       "SELECT settings::text FROM provider_settings WHERE provider = 'twilio'");
}

static void test_put_then_send(void **state)
{
    world *w = *state;
    use_keys(KEY1_HEX, NULL);
    free(put_twilio(w, 201));
    char *out = put_twilio(w, 200);
    json_t *p = json_loads(out, 0, NULL);
    free(out);
    json_t *s = json_object_get(p, "settings");
    assert_string_equal(json_string_value(json_object_get(p, "provider")), "twilio");
    assert_string_equal(json_string_value(json_object_get(s, "auth_token")), "****0123");
    assert_string_equal(json_string_value(json_object_get(s, "account_sid")), TH_MSG_TWILIO_SID);
    assert_string_equal(json_string_value(json_object_get(s, "from")), TENANT_FROM);
    json_decref(p);

    /* at rest: sealed, not the token in any form */
    char *row = stored_settings(w);
    assert_no_secret(row, "the stored row");
    assert_non_null(strstr(row, "\"auth_token\": \"enc:v1:"));
    free(row);

    json_decref(th_api_json(w->api, 201, "PUT", "/v1/workflows/prov_sms", sms_def));
    int before = th_msg_accepted(w->twilio);
    char *st = send_one(w);
    assert_string_equal(st, "succeeded");
    free(st);
    assert_int_equal(th_msg_accepted(w->twilio), before + 1);
    json_t *req = th_msg_request_body(w->twilio, th_msg_requests(w->twilio) - 1);
    assert_string_equal(json_string_value(json_object_get(req, "From")), TENANT_FROM);
    json_decref(req);

    long status;
    char *list = th_api_raw(w->api, "GET", "/v1/providers", NULL, &status);
    assert_int_equal(status, 200);
    assert_no_secret(list, "GET /v1/providers");
    assert_non_null(strstr(list, "****0123"));
    free(list);
}

static void expect_422(world *w, const char *path, const char *body, const char *field)
{
    json_t *e = th_api_json(w->api, 422, "PUT", path, body);
    const char *got = json_string_value(json_object_get(json_object_get(e, "error"), "field"));
    if (*field)
        assert_string_equal(got ? got : "(none)", field);
    else
        assert_null(got); /* the body as a whole */
    json_decref(e);
}

static void test_bad_input_names_field(void **state)
{
    world *w = *state;
    use_keys(KEY1_HEX, NULL);
    expect_422(w, "/v1/providers/twilio", "{\"api_key\": \"x\"}", "/api_key");
    expect_422(w, "/v1/providers/twilio", "{\"auth_token\": 5}", "/auth_token");
    expect_422(w, "/v1/providers/twilio", "{\"auth_token\": \"\"}", "/auth_token");
    expect_422(w, "/v1/providers/openai", "{\"base_url\": \"ftp://x\"}", "/base_url");
    expect_422(w, "/v1/providers/fax", "{\"api_key\": \"x\"}", "provider");
    expect_422(w, "/v1/providers/openai", "{}", "");
    json_decref(th_api_json(w->api, 404, "DELETE", "/v1/providers/sendgrid", NULL));
}

static void test_missing_key_refused(void **state)
{
    world *w = *state;
    use_keys(NULL, NULL);
    json_t *e = th_api_json(w->api, 409, "PUT", "/v1/providers/sendgrid",
                            "{\"api_key\": \"SG.not-stored-anywhere-1234\", \"from\": \"a@x.org\"}");
    json_t *err = json_object_get(e, "error");
    assert_string_equal(json_string_value(json_object_get(err, "code")), "secret_key_missing");
    assert_string_equal(json_string_value(json_object_get(err, "field")), "/api_key");
    assert_non_null(strstr(json_string_value(json_object_get(err, "message")), "FLOWD_SECRET_KEY"));
    json_decref(e);
    assert_int_equal(th_pg_long(th_api_db(w->api),
                                "SELECT count(*) FROM provider_settings WHERE provider = 'sendgrid'"),
                     0);
    /* settings without a secret need no key */
    json_decref(th_api_json(w->api, 201, "PUT", "/v1/providers/sendgrid", "{\"from\": \"a@x.org\"}"));
    assert_int_equal(th_pg_long(th_api_db(w->api), "SELECT count(*) FROM provider_settings"
                                                   " WHERE settings::text LIKE '%not-stored%'"),
                     0);
    expect_422(w, "/v1/providers/sendgrid", "{\"from\": \"a@x.org\", \"token\": \"x\"}", "/token");
    use_keys(KEY1_HEX, NULL);
    long status;
    free(th_api_raw(w->api, "DELETE", "/v1/providers/sendgrid", NULL, &status));
    assert_int_equal(status, 204);
}

/* Key id of the sealed auth_token of the stored row. */
static char *token_kid(world *w)
{
    return th_pg_value(th_api_db(w->api), "SELECT split_part(settings->>'auth_token', ':', 3)"
                                          " FROM provider_settings WHERE provider = 'twilio'");
}

/* Key id of the sealed secret of the custom hook "rot". */
static char *hook_kid(world *w)
{
    return th_pg_value(th_api_db(w->api), "SELECT split_part(verify->>'secret', ':', 3)"
                                          " FROM custom_hooks WHERE name = 'rot'");
}

/* The key ids of a webhook endpoint's two signing secrets, "current previous". */
static char *endpoint_kids(world *w)
{
    return th_pg_value(th_api_db(w->api), "SELECT split_part(secret, ':', 3) || ' '"
                                          " || split_part(previous_secret, ':', 3)"
                                          " FROM webhook_endpoints WHERE description = 'rot'");
}

static void rotate(world *w, int want_rc)
{
    char *cmd = eng_xasprintf("'%s' secrets rotate --database '%s' >/dev/null", th_flowd_bin(),
                              th_api_db(w->api));
    int rc = system(cmd);
    free(cmd);
    assert_int_equal(WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, want_rc);
}

static void test_rotation(void **state)
{
    world *w = *state;
    use_keys(KEY1_HEX, NULL);
    free(put_twilio(w, 200));
    json_decref(th_api_json(w->api, 200, "PUT", "/v1/workflows/prov_sms", sms_def));
    /* an inbound custom hook's secret is sealed the same way, and rotated with the rest */
    json_decref(th_api_json(w->api, 201, "PUT", "/v1/hooks/custom/rot",
                            "{\"verify\": {\"token\": true, \"header\": \"X-Token\", \"secret\":"
                            " \"hook-secret\"}, \"event\": {\"name\": \"x\", \"key\": \"k\"}}"));
    /* and an outbound webhook endpoint's signing secrets, the one rotated out too */
    json_t *ep = th_api_json(w->api, 201, "POST", "/v1/webhook-endpoints",
                             "{\"url\": \"https://hooks.example.com/rot\", \"events\": "
                             "[\"schedule.fired\"], \"description\": \"rot\"}");
    char path[96];
    snprintf(path, sizeof path, "/v1/webhook-endpoints/%lld/rotate",
             (long long)json_integer_value(json_object_get(ep, "id")));
    json_decref(th_api_json(w->api, 200, "POST", path, NULL));
    json_decref(ep);
    char *kid1 = token_kid(w);
    char *hook_kid1 = hook_kid(w);
    assert_string_equal(hook_kid1, kid1);
    char *ep_kids = endpoint_kids(w), *want = eng_xasprintf("%s %s", kid1, kid1);
    assert_string_equal(ep_kids, want);
    free(ep_kids);
    free(want);

    /* the new key alone cannot open what the old one sealed: rotation refuses and changes nothing */
    use_keys(KEY2_B64, NULL);
    rotate(w, 1);
    char *kid = token_kid(w);
    assert_string_equal(kid, kid1);
    free(kid);

    /* new key current, old key previous: steps still work before the rotation */
    use_keys(KEY2_B64, KEY1_HEX);
    char *st = send_one(w);
    assert_string_equal(st, "succeeded");
    free(st);
    rotate(w, 0);
    char *kid2 = token_kid(w);
    assert_string_not_equal(kid2, kid1);
    char *hook_kid2 = hook_kid(w);
    assert_string_equal(hook_kid2, kid2);
    ep_kids = endpoint_kids(w);
    want = eng_xasprintf("%s %s", kid2, kid2);
    assert_string_equal(ep_kids, want);
    free(ep_kids);
    free(want);
    free(hook_kid1);
    free(hook_kid2);
    char *row = stored_settings(w);
    assert_no_secret(row, "the re-sealed row");
    free(row);

    /* the old key removed: still works */
    use_keys(KEY2_B64, NULL);
    int before = th_msg_accepted(w->twilio);
    st = send_one(w);
    assert_string_equal(st, "succeeded");
    free(st);
    assert_int_equal(th_msg_accepted(w->twilio), before + 1);
    long status;
    char *list = th_api_raw(w->api, "GET", "/v1/providers", NULL, &status);
    assert_non_null(strstr(list, "****0123"));
    free(list);
    free(kid1);
    free(kid2);
}

/* A Twilio status callback signed with the tenant's stored (sealed) auth token is verified. */
static void test_webhook_opens_sealed_token(void **state)
{
    world *w = *state;
    use_keys(KEY1_HEX, NULL);
    free(put_twilio(w, 200));
    static const char form[] = "MessageSid=SM0000provsettings&MessageStatus=delivered";
    char *url = eng_xasprintf("%s/v1/hooks/twilio", th_api_url(w->api));
    long status[2];
    for (int i = 0; i < 2; i++) {
        char *sig = th_msg_twilio_signature(url, form, i ? TH_MSG_TWILIO_TOKEN : "another-token");
        char *hdr = eng_xasprintf("X-Twilio-Signature: %s", sig);
        struct curl_slist *h = curl_slist_append(NULL, hdr);
        h = curl_slist_append(h, "Content-Type: application/x-www-form-urlencoded");
        th_resp r = {.body = eng_xstrdup("")};
        CURL *c = curl_easy_init();
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, form);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, th_resp_collect);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
        assert_int_equal(curl_easy_perform(c), CURLE_OK);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status[i]);
        curl_easy_cleanup(c);
        curl_slist_free_all(h);
        free(r.body);
        free(hdr);
        free(sig);
    }
    free(url);
    assert_int_equal(status[0], 401);
    assert_int_equal(status[1], 200);
}

/* Runs `flowd --url API ARGS` with the test's admin key and stdin_text on stdin; returns its
 * stdout (new string) and its exit status in *rc. */
static char *cli(world *w, const char *stdin_text, const char *args, int *rc)
{
    char *cmd = eng_xasprintf("printf '%%s\\n' '%s' | FLOWD_API_KEY=%s '%s' --url %s %s",
                              stdin_text, TH_API_KEY, th_flowd_bin(), th_api_url(w->api), args);
    FILE *p = popen(cmd, "r");
    free(cmd);
    assert_non_null(p);
    char *out = eng_xcalloc(1, 65536);
    size_t n = fread(out, 1, 65535, p);
    out[n] = '\0';
    int st = pclose(p);
    *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return out;
}

static void test_cli_commands(void **state)
{
    world *w = *state;
    use_keys(KEY1_HEX, NULL);
    int rc;
    char *out = cli(w, WA_TOKEN, "provider set whatsapp token=- phone_number_id=10555 --json", &rc);
    assert_int_equal(rc, 0);
    assert_null(strstr(out, WA_TOKEN));
    json_t *p = json_loads(out, 0, NULL);
    free(out);
    assert_string_equal(json_string_value(json_object_get(json_object_get(p, "settings"), "token")),
                        "****5678");
    json_decref(p);
    char *row = th_pg_value(th_api_db(w->api),
                            "SELECT settings::text FROM provider_settings WHERE provider = 'whatsapp'");
    assert_null(strstr(row, WA_TOKEN));
    assert_non_null(strstr(row, "10555"));
    free(row);

    out = cli(w, "", "provider list", &rc);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "whatsapp"));
    assert_non_null(strstr(out, "****5678"));
    assert_null(strstr(out, WA_TOKEN));
    free(out);

    out = cli(w, "", "provider set whatsapp tokn=x", &rc);
    assert_int_equal(rc, 1); /* the server's 422 naming /tokn */
    free(out);
    out = cli(w, "", "provider delete whatsapp", &rc);
    assert_int_equal(rc, 0);
    free(out);
    assert_int_equal(th_pg_long(th_api_db(w->api),
                                "SELECT count(*) FROM provider_settings WHERE provider = 'whatsapp'"),
                     0);
}

/* Last: nothing this process (API, workers) or the CLI logged holds the token. */
static void test_log_clean(void **state)
{
    (void)state;
    const char *path = getenv("FLOWD_LOG_FILE");
    assert_non_null(path);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = eng_xcalloc(1, (size_t)n + 1);
    assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    assert_true(n > 0);
    assert_no_secret(text, "the log");
    assert_null(strstr(text, "not-stored-anywhere"));
    free(text);
}

static int setup(void **state)
{
    world *w = eng_xcalloc(1, sizeof *w);
    w->twilio = th_msg_start(TH_MSG_TWILIO);
    static const char *const unset[] = {"TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM",
                                        "TWILIO_BASE_URL", "FLOWD_PUBLIC_URL"};
    for (size_t i = 0; i < sizeof unset / sizeof unset[0]; i++)
        unsetenv(unset[i]);
    prov_allow_private_targets(true); /* the tenant's base_url is the mock on 127.0.0.1 */
    use_keys(KEY1_HEX, NULL);
    th_api_opts o = {.prefix = "prov_settings", .workers = 1};
    w->api = th_api_start(&o);
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
    setenv("FLOWD_LOG_LEVEL", "debug", 1);
    eng_mem_init();
    eng_log_init();
    eng_httpc_global_init();
    eng_step_register_builtins();
    step_register_all();
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_then_send),
        cmocka_unit_test(test_bad_input_names_field),
        cmocka_unit_test(test_missing_key_refused),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_webhook_opens_sealed_token),
        cmocka_unit_test(test_cli_commands),
        cmocka_unit_test(test_log_clean),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    eng_httpc_global_cleanup();
    return rc;
}
