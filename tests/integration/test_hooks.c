/* tests/integration/test_hooks.c: the inbound webhooks (api/routes_hooks.c) over real HTTP against
 * the API service and a real PostgreSQL: signatures valid / corrupted / replayed (reference test
 * vectors, and payloads signed by th_mockmsg's independent signers), deduplication, monotonic
 * delivery state, the suppression list and the events they raise; a STOP reply makes the next
 * sms step skip. */
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
#include <unistd.h>

#include "api/api.h"
#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "steps/provider.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"
#include "tests/support/th_mockmsg.h"

typedef struct env {
    char *db;
    long long tenant;
    api_service *svc;
    int port;
} env;

static env *env_new(const char *prefix)
{
    env *e = eng_xcalloc(1, sizeof *e);
    e->db = th_engine_db(prefix, &e->tenant);
    api_service_opts ao = {.conninfo = e->db, .listen = "127.0.0.1:0", .threads = 1, .db_conns = 1};
    eng_err err;
    e->svc = api_service_start(&ao, &err);
    assert_non_null(e->svc);
    e->port = api_service_port(e->svc);
    return e;
}

static void env_free(env *e)
{
    api_service_stop(e->svc);
    free(e->db);
    free(e);
}

/* A request to the service; headers NULL-terminated. Returns the status, *body when asked. */
static long http(env *e, const char *method, const char *path, const char *ctype, const char *body,
                 const char *const *headers, char **out)
{
    CURL *c = curl_easy_init();
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", e->port, path);
    struct curl_slist *h = NULL;
    if (ctype) {
        char ct[128];
        snprintf(ct, sizeof ct, "Content-Type: %s", ctype);
        h = curl_slist_append(h, ct);
    }
    for (size_t i = 0; headers && headers[i]; i++)
        h = curl_slist_append(h, headers[i]);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    fclose(f);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (out)
        *out = buf;
    else
        free(buf);
    return status;
}

/* A pending ledger row, as a send step leaves it when its process dies mid-call. */
static void pending_send(env *e, const char *key, const char *channel, const char *recipient)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM flowd_send_claim(%lld, '%s', '%s', 'x', NULL, NULL, '%s', 'h', "
             "'at_most_once') WHERE decision = 'send'",
             e->tenant, key, channel, recipient);
    assert_int_equal(th_pg_long(e->db, sql), 1);
}

/* ---------------------------------------------------------------------------- vectors -- */

static void test_vectors(void **state)
{
    (void)state;
    char *s = th_msg_twilio_signature("https://mycompany.com/myapp.php?foo=1&bar=2",
                                      "CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234"
                                      "&From=%2B12349013030&To=%2B18005551212",
                                      "12345");
    assert_string_equal(s, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    free(s);
    s = th_msg_hub_signature("test_app_secret", "{\"object\":\"whatsapp_business_account\",\"entry\":[]}");
    assert_string_equal(s, "sha256=dec6a680679a968e7e0319355b23599cbfc54502c0784668e9618baa0c633756");
    free(s);
}

/* --------------------------------------------------------------------------- WhatsApp -- */

static const char wa_inbound[] =
    "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"WABA\",\"changes\":[{\"field\":"
    "\"messages\",\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":{\"display_phone_number\":"
    "\"15550001111\",\"phone_number_id\":\"1065\"},\"contacts\":[{\"profile\":{\"name\":\"Ann\"},"
    "\"wa_id\":\"15551234567\"}],\"messages\":[{\"from\":\"15551234567\",\"id\":\"wamid.IN01\","
    "\"timestamp\":\"1767225600\",\"type\":\"text\",\"text\":{\"body\":\"hi\"}}]}}]}]}";

/* A signed post to ?tenant=tenant (0: none). */
static long wa_post_to(env *e, long long tenant, const char *secret, const char *body,
                       bool corrupt)
{
    char *sig = th_msg_hub_signature(secret, body);
    if (corrupt)
        sig[10] = sig[10] == 'a' ? 'b' : 'a';
    char hdr[128], path[64] = "/v1/hooks/whatsapp";
    snprintf(hdr, sizeof hdr, "X-Hub-Signature-256: %s", sig);
    if (tenant)
        snprintf(path, sizeof path, "/v1/hooks/whatsapp?tenant=%lld", tenant);
    const char *h[] = {hdr, NULL};
    long st = http(e, "POST", path, "application/json", body, h, NULL);
    free(sig);
    return st;
}

static long wa_post(env *e, const char *secret, const char *body, bool corrupt)
{
    return wa_post_to(e, e->tenant, secret, body, corrupt);
}

static char *wa_status(const char *id, const char *status, const char *key, long code)
{
    char err[160] = "";
    if (code)
        snprintf(err, sizeof err, ",\"errors\":[{\"code\":%ld,\"title\":\"x\"}]", code);
    return eng_xasprintf(
        "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"WABA\",\"changes\":[{"
        "\"field\":\"messages\",\"value\":{\"messaging_product\":\"whatsapp\",\"statuses\":[{\"id\":"
        "\"%s\",\"status\":\"%s\",\"timestamp\":\"1767225700\",\"recipient_id\":\"15557654321\","
        "\"biz_opaque_callback_data\":\"%s\"%s}]}}]}]}",
        id, status, key, err);
}

static void test_whatsapp(void **state)
{
    (void)state;
    setenv("WHATSAPP_APP_SECRET", "test_app_secret", 1);
    setenv("WHATSAPP_VERIFY_TOKEN", "verify-me", 1);
    env *e = env_new("hooks_wa");
    char path[160], hdr[128], *body = NULL;

    /* the reference vector, verbatim */
    snprintf(hdr, sizeof hdr, "X-Hub-Signature-256: sha256=dec6a680679a968e7e0319355b23599cbfc54502c0784668e9618baa0c633756");
    snprintf(path, sizeof path, "/v1/hooks/whatsapp?tenant=%lld", e->tenant);
    const char *h[] = {hdr, NULL};
    assert_int_equal(http(e, "POST", path, "application/json",
                          "{\"object\":\"whatsapp_business_account\",\"entry\":[]}", h, NULL), 200);
    assert_int_equal(http(e, "POST", path, "application/json",
                          "{\"object\":\"whatsapp_business_account\",\"entry\":[ ]}", h, NULL), 401);
    assert_int_equal(http(e, "POST", path, "application/json", wa_inbound, NULL, NULL), 401);

    /* corrupted: 401 and nothing stored */
    assert_int_equal(wa_post(e, "test_app_secret", wa_inbound, true), 401);
    assert_int_equal(wa_post(e, "another_secret", wa_inbound, false), 401);
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM events"), 0);
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM webhook_deliveries"), 0);

    /* valid: one event keyed by the sender's E.164; a replay changes nothing */
    assert_int_equal(wa_post(e, "test_app_secret", wa_inbound, false), 200);
    assert_int_equal(wa_post(e, "test_app_secret", wa_inbound, false), 200);
    assert_int_equal(th_pg_longf(e->db,
                                 "SELECT count(*) FROM events WHERE name = 'whatsapp.received' "
                                 "AND key = '+15551234567' AND data->>'text' = 'hi' "
                                 "AND data->>'name' = 'Ann'"),
                     1);
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM events"), 1);

    /* a status for a send left pending resolves it; delivery only moves forward */
    pending_send(e, "9:send", "whatsapp", "+15557654321");
    char *s = wa_status("wamid.OUT1", "delivered", "9:send", 0);
    assert_int_equal(wa_post(e, "test_app_secret", s, false), 200);
    free(s);
    s = wa_status("wamid.OUT1", "sent", "9:send", 0); /* late */
    assert_int_equal(wa_post(e, "test_app_secret", s, false), 200);
    free(s);
    assert_int_equal(th_pg_longf(e->db,
                                 "SELECT count(*) FROM sends WHERE send_key = '9:send' AND state "
                                 "= 'accepted' AND delivery = 'delivered' AND provider_message_id "
                                 "= 'wamid.OUT1' AND result->>'resolved' = 'webhook'"),
                     1);
    s = wa_status("wamid.OUT1", "failed", "9:send", 131026);
    assert_int_equal(wa_post(e, "test_app_secret", s, false), 200);
    free(s);
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM sends WHERE send_key = '9:send' AND "
                                        "delivery = 'failed'"),
                     1);
    assert_int_equal(th_pg_longf(e->db,
                                 "SELECT count(*) FROM suppressions WHERE channel = 'whatsapp' "
                                 "AND address = '+15557654321' AND reason = '131026'"),
                     1);
    assert_int_equal(
        th_pg_longf(e->db, "SELECT count(*) FROM events WHERE name = 'whatsapp.failed'"), 1);

    /* the verification GET */
    snprintf(path, sizeof path, "/v1/hooks/whatsapp?tenant=%lld&hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=verify-me", e->tenant);
    assert_int_equal(http(e, "GET", path, NULL, NULL, NULL, &body), 200);
    assert_string_equal(body, "1158201444");
    free(body);
    snprintf(path, sizeof path, "/v1/hooks/whatsapp?tenant=%lld&hub.mode=subscribe&hub.challenge=1&hub.verify_token=wrong", e->tenant);
    assert_int_equal(http(e, "GET", path, NULL, NULL, NULL, NULL), 403);

    /* a tenant's own secret replaces the environment's */
    th_pg_longf(e->db,
                "WITH x AS (INSERT INTO provider_settings (tenant_id, provider, settings) "
                "VALUES (%lld, 'whatsapp', '{\"app_secret\": \"tenant-secret\"}') RETURNING 1) "
                "SELECT count(*) FROM x",
                e->tenant);
    assert_int_equal(wa_post(e, "test_app_secret", wa_inbound, false), 401);
    assert_int_equal(wa_post(e, "tenant-secret", wa_inbound, false), 200);

    /* tenant malformed or unknown */
    const char *h2[] = {hdr, NULL};
    assert_int_equal(http(e, "POST", "/v1/hooks/whatsapp?tenant=x", "application/json", "{}", h2,
                          NULL), 400);
    assert_int_equal(http(e, "POST", "/v1/hooks/whatsapp?tenant=999999", "application/json", "{}",
                          h2, NULL), 401);
    env_free(e);
    unsetenv("WHATSAPP_APP_SECRET");
    unsetenv("WHATSAPP_VERIFY_TOKEN");
}

/* ----------------------------------------------------------------------------- Twilio -- */

static long tw_post(env *e, const char *query, const char *form, const char *signed_url,
                    bool corrupt)
{
    char path[256], url[320];
    snprintf(path, sizeof path, "/v1/hooks/twilio?tenant=%lld%s", e->tenant, query);
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", e->port, path);
    char *sig = th_msg_twilio_signature(signed_url ? signed_url : url, form, TH_MSG_TWILIO_TOKEN);
    if (corrupt)
        sig[3] = sig[3] == 'A' ? 'B' : 'A';
    char hdr[128];
    snprintf(hdr, sizeof hdr, "X-Twilio-Signature: %s", sig);
    const char *h[] = {hdr, NULL};
    long st = http(e, "POST", path, "application/x-www-form-urlencoded", form, h, NULL);
    free(sig);
    return st;
}

static void test_twilio_stop_then_skip(void **state)
{
    (void)state;
    setenv("TWILIO_AUTH_TOKEN", TH_MSG_TWILIO_TOKEN, 1);
    unsetenv("TWILIO_ACCOUNT_SID"); /* the sms step runs in the sandbox */
    setenv("TWILIO_FROM", "+15005550001", 1);
    unsetenv("FLOWD_PUBLIC_URL");
    prov_config_cache_clear();
    env *e = env_new("hooks_tw");
    const char *stop = "MessageSid=SMin1&SmsSid=SMin1&AccountSid=" TH_MSG_TWILIO_SID
                       "&From=%2B15551230000&To=%2B15005550001&Body=Stop+&MessageStatus=received"
                       "&SmsStatus=received&NumMedia=0&ApiVersion=2010-04-01";
    assert_int_equal(tw_post(e, "", stop, NULL, true), 401);
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM suppressions"), 0);
    /* a signature over other params (a param added in flight) fails too */
    char *tampered = eng_xasprintf("%s&Extra=1", stop);
    char path[128], url[256];
    snprintf(path, sizeof path, "/v1/hooks/twilio?tenant=%lld", e->tenant);
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", e->port, path);
    char *sig = th_msg_twilio_signature(url, stop, TH_MSG_TWILIO_TOKEN);
    char hdr[128];
    snprintf(hdr, sizeof hdr, "X-Twilio-Signature: %s", sig);
    const char *h[] = {hdr, NULL};
    assert_int_equal(http(e, "POST", path, "application/x-www-form-urlencoded", tampered, h, NULL), 401);
    free(sig);
    free(tampered);

    assert_int_equal(tw_post(e, "", stop, NULL, false), 200);
    assert_int_equal(tw_post(e, "", stop, NULL, false), 200); /* replay */
    assert_int_equal(
        th_pg_longf(e->db, "SELECT count(*) FROM suppressions WHERE channel = 'sms' AND "
                           "address = '+15551230000' AND reason = 'stop' AND source = 'twilio'"),
        1);
    assert_int_equal(th_pg_longf(e->db,
                                 "SELECT count(*) FROM events WHERE name = 'sms.received' AND "
                                 "key = '+15551230000' AND data->>'body' = 'Stop '"),
                     1);

    /* the next sms to that number is skipped, with the reason */
    long long wf = th_engine_register(
        e->db, e->tenant,
        "{\"name\": \"t\", \"steps\": [{\"key\": \"send\", \"kind\": \"sms\", \"input\": "
        "{\"to\": \"+15551230000\", \"body\": \"promo\"}}, {\"key\": \"other\", \"kind\": \"sms\", "
        "\"input\": {\"to\": \"+15551239999\", \"body\": \"promo\"}}]}");
    long long run = th_engine_enqueue(e->db, e->tenant, wf, 1, NULL, 0);
    th_workers *ws = th_workers_start(e->db, 1, "tw", 0, 0, 0);
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT state = 'succeeded' FROM runs WHERE id = %lld", run);
    bool done = th_engine_wait(e->db, sql, 30);
    th_workers_stop(ws);
    assert_true(done);
    assert_int_equal(th_pg_longf(e->db,
                                 "SELECT count(*) FROM steps WHERE run_id = %lld AND key = 'send' "
                                 "AND state = 'skipped' AND output->>'reason' LIKE '%%stop%%'",
                                 run),
                     1);
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM outbox WHERE run_id = %lld", run), 1);

    /* START undoes STOP */
    const char *start = "MessageSid=SMin2&From=%2B15551230000&To=%2B15005550001&Body=START"
                        "&MessageStatus=received";
    assert_int_equal(tw_post(e, "", start, NULL, false), 200);
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM suppressions"), 0);

    /* a status callback resolves a pending send; the URL signed is the public one, with :443 */
    setenv("FLOWD_PUBLIC_URL", "https://hooks.example.test", 1);
    pending_send(e, "7:send", "sms", "+15557654321");
    const char *delivered = "MessageSid=SMout1&MessageStatus=delivered&To=%2B15557654321"
                            "&From=%2B15005550001&AccountSid=" TH_MSG_TWILIO_SID;
    char pub[256];
    snprintf(pub, sizeof pub, "https://hooks.example.test:443/v1/hooks/twilio?tenant=%lld&send_key=7%%3Asend",
             e->tenant);
    assert_int_equal(tw_post(e, "&send_key=7%3Asend", delivered, pub, false), 200);
    assert_int_equal(th_pg_longf(e->db,
                                 "SELECT count(*) FROM sends WHERE send_key = '7:send' AND state "
                                 "= 'accepted' AND provider_message_id = 'SMout1' AND delivery = "
                                 "'delivered'"),
                     1);
    assert_int_equal(th_pg_longf(e->db,
                                 "SELECT count(*) FROM events WHERE name = 'sms.delivered' AND "
                                 "key = '+15557654321'"),
                     1);
    /* signed for the wrong host: refused */
    assert_int_equal(tw_post(e, "&send_key=7%3Asend", delivered,
                             "https://evil.example.test/v1/hooks/twilio", false), 401);
    /* 21610 in a callback feeds the suppression list */
    const char *failed = "MessageSid=SMout2&MessageStatus=undelivered&ErrorCode=21610"
                         "&To=%2B15557654321&From=%2B15005550001";
    snprintf(pub, sizeof pub, "https://hooks.example.test/v1/hooks/twilio?tenant=%lld", e->tenant);
    assert_int_equal(tw_post(e, "", failed, pub, false), 200);
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM suppressions WHERE address = "
                                        "'+15557654321' AND reason = '21610'"),
                     1);
    unsetenv("FLOWD_PUBLIC_URL");
    env_free(e);
}

/* --------------------------------------------------------------------------- SendGrid -- */

static long sg_post_to(env *e, long long tenant, th_msg_eckey *k, const char *ts,
                       const char *body, bool corrupt)
{
    char *sig = th_msg_ecdsa_sign(k, ts, body);
    char *b = eng_xstrdup(body);
    if (corrupt)
        b[strlen(b) - 3] ^= 1;
    char h1[256], h2[96], path[64] = "/v1/hooks/sendgrid";
    snprintf(h1, sizeof h1, "X-Twilio-Email-Event-Webhook-Signature: %s", sig);
    snprintf(h2, sizeof h2, "X-Twilio-Email-Event-Webhook-Timestamp: %s", ts);
    if (tenant)
        snprintf(path, sizeof path, "/v1/hooks/sendgrid?tenant=%lld", tenant);
    const char *h[] = {h1, h2, NULL};
    long st = http(e, "POST", path, "application/json", b, h, NULL);
    free(sig);
    free(b);
    return st;
}

static long sg_post(env *e, th_msg_eckey *k, const char *ts, const char *body, bool corrupt)
{
    return sg_post_to(e, e->tenant, k, ts, body, corrupt);
}

static void test_sendgrid(void **state)
{
    (void)state;
    env *e = env_new("hooks_sg");
    char path[64];
    snprintf(path, sizeof path, "/v1/hooks/sendgrid?tenant=%lld", e->tenant);

    /* the reference vector: the signature verifies (then the body, not an array, is refused) */
    setenv("SENDGRID_WEBHOOK_PUBLIC_KEY",
           "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7"
           "yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==", 1);
    setenv("SENDGRID_WEBHOOK_MAX_AGE_S", "0", 1);
    const char *vbody = "{\"category\":\"example_payload\",\"event\":\"test_event\",\"message_id\":\"message_id\"}";
    const char *vsig = "X-Twilio-Email-Event-Webhook-Signature: MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=";
    const char *vbad = "X-Twilio-Email-Event-Webhook-Signature: MEUCIQCtIHJeH93Y+qpZeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=";
    const char *vts = "X-Twilio-Email-Event-Webhook-Timestamp: 1588788367";
    const char *vts2 = "X-Twilio-Email-Event-Webhook-Timestamp: 1588788368";
    const char *ok[] = {vsig, vts, NULL}, *bad_sig[] = {vbad, vts, NULL}, *bad_ts[] = {vsig, vts2, NULL};
    assert_int_equal(http(e, "POST", path, "application/json", vbody, ok, NULL), 400);
    assert_int_equal(http(e, "POST", path, "application/json", vbody, bad_sig, NULL), 401);
    assert_int_equal(http(e, "POST", path, "application/json", vbody, bad_ts, NULL), 401);
    assert_int_equal(http(e, "POST", path, "application/json",
                          "{\"category\":\"example_payload\",\"event\":\"test_event\",\"message_id\":\"message_iD\"}",
                          ok, NULL), 401);

    /* our own key pair */
    char *pub = NULL;
    th_msg_eckey *k = th_msg_eckey_new(&pub);
    setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", pub, 1);
    unsetenv("SENDGRID_WEBHOOK_MAX_AGE_S");
    pending_send(e, "5:mail", "email", "b@example.test");
    char ts[32];
    snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
    const char *events =
        "[{\"email\":\"B@example.test\",\"timestamp\":1767225701,\"event\":\"bounce\",\"type\":"
        "\"bounce\",\"status\":\"5.1.1\",\"reason\":\"550 5.1.1 unknown user\",\"sg_event_id\":"
        "\"Ym91bmNlLTA\",\"sg_message_id\":\"14c5d75ce94.dfd.64b46a.filter0001.1.1.0\","
        "\"flowd_send_key\":\"5:mail\"},"
        "{\"email\":\"b@example.test\",\"timestamp\":1767225702,\"event\":\"delivered\",\"sg_event_id\":"
        "\"ZGVsaXZlcmVkLTA\",\"sg_message_id\":\"14c5d75ce94.dfd.64b46a.filter0001.1.1.0\","
        "\"flowd_send_key\":\"5:mail\"},"
        "{\"email\":\"c@example.test\",\"timestamp\":1767225703,\"event\":\"spamreport\","
        "\"sg_message_id\":\"zz.filter1\"}]";
    assert_int_equal(sg_post(e, k, ts, events, true), 401);
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM webhook_deliveries"), 0);
    assert_int_equal(sg_post(e, k, "1588788367", events, false), 401); /* stale: a replay */
    assert_int_equal(sg_post(e, k, ts, events, false), 200);
    assert_int_equal(sg_post(e, k, ts, events, false), 200); /* duplicate delivery */
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM webhook_deliveries"), 3);
    /* bounce is terminal: the later 'delivered' does not undo it */
    assert_int_equal(
        th_pg_longf(e->db, "SELECT count(*) FROM sends WHERE send_key = '5:mail' AND state "
                           "= 'accepted' AND provider_message_id = '14c5d75ce94.dfd.64b46a' "
                           "AND delivery = 'bounced' AND delivery_error->>'status' = '5.1.1'"),
        1);
    assert_int_equal(th_pg_longf(e->db,
                                 "SELECT count(*) FROM suppressions WHERE channel = 'email' AND "
                                 "((address = 'b@example.test' AND reason = 'bounce') OR "
                                 "(address = 'c@example.test' AND reason = 'spamreport'))"),
                     2);
    assert_int_equal(th_pg_longf(e->db,
                                 "SELECT count(*) FROM events WHERE name = 'email.bounced' AND "
                                 "key = 'b@example.test'"),
                     1);
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM events"), 3);
    free(pub);
    th_msg_eckey_free(k);
    unsetenv("SENDGRID_WEBHOOK_PUBLIC_KEY");
    /* no key configured: refused */
    assert_int_equal(http(e, "POST", path, "application/json", "[]", NULL, NULL), 401);
    env_free(e);
}

/* The environment's secrets belong to the operator's provider accounts: a post they verify goes
 * to the tenant owning those (the default tenant here), whatever ?tenant= says, since neither
 * SendGrid nor WhatsApp signs the query. A tenant's own secret binds its posts to it. */
static void test_shared_secret_binds_owner(void **state)
{
    (void)state;
    setenv("WHATSAPP_APP_SECRET", "test_app_secret", 1);
    char *pub = NULL;
    th_msg_eckey *k = th_msg_eckey_new(&pub);
    setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", pub, 1);
    env *e = env_new("hooks_owner");
    long long other = th_pg_long(e->db, "INSERT INTO tenants (name) VALUES ('other') RETURNING id");
    char ts[32];
    snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
    const char *spam = "[{\"email\":\"d@example.test\",\"timestamp\":1767225703,\"event\":"
                       "\"spamreport\",\"sg_message_id\":\"zz.filter1\"}]";

    assert_int_equal(wa_post_to(e, other, "test_app_secret", wa_inbound, false), 401);
    assert_int_equal(sg_post_to(e, other, k, ts, spam, false), 401);
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM events WHERE tenant_id = %lld",
                                 other),
                     0);
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM suppressions"), 0);

    /* without ?tenant= (or with the owner's) they are the owner's */
    assert_int_equal(wa_post_to(e, 0, "test_app_secret", wa_inbound, false), 200);
    assert_int_equal(sg_post_to(e, 0, k, ts, spam, false), 200);
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM events WHERE tenant_id = %lld",
                                 e->tenant),
                     2);
    assert_int_equal(th_pg_longf(e->db,
                                 "SELECT count(*) FROM suppressions WHERE tenant_id = %lld AND "
                                 "address = 'd@example.test'",
                                 e->tenant),
                     1);

    /* the other tenant's own secret: its posts are its own, and the operator's are not */
    th_pg_longf(e->db,
                "WITH x AS (INSERT INTO provider_settings (tenant_id, provider, settings) "
                "VALUES (%lld, 'whatsapp', '{\"app_secret\": \"other-secret\"}') RETURNING 1) "
                "SELECT count(*) FROM x",
                other);
    assert_int_equal(wa_post_to(e, other, "test_app_secret", wa_inbound, false), 401);
    assert_int_equal(wa_post_to(e, other, "other-secret", wa_inbound, false), 200);
    assert_int_equal(th_pg_longf(e->db, "SELECT count(*) FROM events WHERE tenant_id = %lld",
                                 other),
                     1);
    env_free(e);
    free(pub);
    th_msg_eckey_free(k);
    unsetenv("SENDGRID_WEBHOOK_PUBLIC_KEY");
    unsetenv("WHATSAPP_APP_SECRET");
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
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_whatsapp),
        cmocka_unit_test(test_twilio_stop_then_skip),
        cmocka_unit_test(test_sendgrid),
        cmocka_unit_test(test_shared_secret_binds_owner),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    eng_httpc_global_cleanup();
    return rc;
}
