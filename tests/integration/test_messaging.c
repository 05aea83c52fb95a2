/* tests/integration/test_messaging.c: the email, sms and whatsapp kinds end to end: workers in this
 * process (and `flowd serve` children for kill -9) against the th_mockmsg providers and a real
 * PostgreSQL. Assertions read what the mock received and what the database holds (step outputs,
 * the send ledger, the outbox, the suppression list). */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <curl/curl.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <sys/socket.h>
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

static const char *const provider_env[] = {
    "SENDGRID_API_KEY", "SENDGRID_BASE_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN",
    "TWILIO_FROM",      "TWILIO_BASE_URL",   "WHATSAPP_TOKEN",     "WHATSAPP_PHONE_NUMBER_ID",
    "WHATSAPP_BASE_URL", "FLOWD_PUBLIC_URL"};

/* No provider configured: every messaging step is in sandbox mode. */
static void env_clear(void)
{
    for (size_t i = 0; i < sizeof provider_env / sizeof *provider_env; i++)
        unsetenv(provider_env[i]);
    setenv("TWILIO_FROM", "+15005550001", 1);
    prov_config_cache_clear();
}

static void env_for(th_msg *m, th_msg_flavor f)
{
    if (f == TH_MSG_SENDGRID) {
        setenv("SENDGRID_API_KEY", TH_MSG_SENDGRID_KEY, 1);
        setenv("SENDGRID_BASE_URL", th_msg_url(m), 1);
    } else if (f == TH_MSG_TWILIO) {
        setenv("TWILIO_ACCOUNT_SID", TH_MSG_TWILIO_SID, 1);
        setenv("TWILIO_AUTH_TOKEN", TH_MSG_TWILIO_TOKEN, 1);
        setenv("TWILIO_BASE_URL", th_msg_url(m), 1);
    } else {
        setenv("WHATSAPP_TOKEN", TH_MSG_WA_TOKEN, 1);
        setenv("WHATSAPP_PHONE_NUMBER_ID", TH_MSG_WA_PHONE_ID, 1);
        setenv("WHATSAPP_BASE_URL", th_msg_url(m), 1);
    }
    prov_config_cache_clear();
}

/* Registers def, enqueues one run with input, lets one in-process worker run it to the end. */
static long long run_one(const char *db, long long tenant, const char *def, const char *input)
{
    long long wf = th_engine_register(db, tenant, def);
    long long run = th_engine_enqueue(db, tenant, wf, 1, input, 0);
    th_workers *ws = th_workers_start(db, 1, "msg", 0, 0, 0);
    char sql[256];
    /* finished, or waiting on a send whose outcome is unknown */
    snprintf(sql, sizeof sql,
             "SELECT r.state IN ('succeeded', 'failed', 'cancelled') OR EXISTS (SELECT 1 FROM steps s"
             " WHERE s.run_id = r.id AND s.state = 'waiting' AND s.error->>'code' = 'unknown')"
             " FROM runs r WHERE r.id = %lld",
             run);
    bool done = th_engine_wait(db, sql, 60);
    th_workers_stop(ws);
    assert_true(done);
    return run;
}

/* The step's output (or error) as JSON; new reference. */
static json_t *step_json(const char *db, long long run, const char *col)
{
    char *s =
        th_pg_valuef(db, "SELECT %s FROM steps WHERE run_id = %lld AND key = 'send'", col, run);
    json_t *j = s ? json_loads(s, 0, NULL) : NULL;
    free(s);
    return j;
}

static char *step_state(const char *db, long long run)
{
    return th_pg_valuef(db, "SELECT state FROM steps WHERE run_id = %lld AND key = 'send'", run);
}

#define DEF(kind, input, extra)                                                                    \
    "{\"name\": \"m\", \"steps\": [{\"key\": \"send\", \"kind\": \"" kind          \
    "\", \"input\": " input extra "}]}"
#define RETRY ", \"retry\": {\"max_attempts\": 3, \"backoff\": {\"initial\": \"50ms\"}}"

static const char email_input[] =
    "{\"to\": {\"email\": \"Ann@Example.test\", \"name\": \"Ann\"}, \"from\": \"noreply@example.test\","
    " \"subject\": \"Hi {{input.name}}\", \"text\": \"Hello\", \"html\": \"<p>Hello</p>\"";

/* ------------------------------------------------------------------------- request shape -- */

static void test_email_shape(void **state)
{
    (void)state;
    th_msg *m = th_msg_start(TH_MSG_SENDGRID);
    env_clear();
    env_for(m, TH_MSG_SENDGRID);
    long long tenant;
    char *db = th_engine_db("msg_email", &tenant);
    char def[1024];
    snprintf(def, sizeof def, DEF("email", "%s}", ""), email_input);
    long long run = run_one(db, tenant, def, "{\"name\": \"Ann\"}");
    char *st = step_state(db, run);
    assert_string_equal(st, "succeeded");
    free(st);

    assert_int_equal(th_msg_requests(m), 1);
    json_t *b = th_msg_request_body(m, 0);
    char key[64];
    snprintf(key, sizeof key, "%lld:send", run);
    json_t *p0 = json_array_get(json_object_get(b, "personalizations"), 0);
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(p0, "to"), 0), "email")),
                        "Ann@Example.test");
    assert_string_equal(json_string_value(json_object_get(json_object_get(p0, "custom_args"), "flowd_send_key")), key);
    assert_string_equal(json_string_value(json_object_get(json_object_get(b, "from"), "email")),
                        "noreply@example.test");
    assert_string_equal(json_string_value(json_object_get(b, "subject")), "Hi Ann");
    json_t *content = json_object_get(b, "content");
    assert_string_equal(json_string_value(json_object_get(json_array_get(content, 0), "type")), "text/plain");
    assert_string_equal(json_string_value(json_object_get(json_array_get(content, 1), "type")), "text/html");
    json_decref(b);
    char *auth = th_msg_request_header(m, 0, "Authorization");
    assert_string_equal(auth, "Bearer " TH_MSG_SENDGRID_KEY);
    free(auth);
    char *ctype = th_msg_request_header(m, 0, "Content-Type");
    assert_string_equal(ctype, "application/json");
    free(ctype);

    json_t *out = step_json(db, run, "output");
    char *mid = th_msg_message_id(m, key);
    assert_non_null(mid);
    assert_string_equal(json_string_value(json_object_get(out, "message_id")), mid);
    assert_string_equal(json_string_value(json_object_get(out, "provider")), "sendgrid");
    assert_string_equal(json_string_value(json_object_get(out, "status")), "accepted");
    assert_string_equal(json_string_value(json_object_get(out, "to")), "ann@example.test");
    assert_string_equal(json_string_value(json_object_get(out, "send_key")), key);
    json_decref(out);
    assert_int_equal(th_pg_longf(db,
                                 "SELECT count(*) FROM sends WHERE state = 'accepted' AND "
                                 "delivery = 'queued' AND provider_message_id = '%s'",
                                 mid),
                     1);
    free(mid);
    free(db);
    th_msg_stop(m);
}

static void test_sms_shape(void **state)
{
    (void)state;
    th_msg *m = th_msg_start(TH_MSG_TWILIO);
    env_clear();
    env_for(m, TH_MSG_TWILIO);
    setenv("FLOWD_PUBLIC_URL", "https://hooks.example.test", 1);
    long long tenant;
    char *db = th_engine_db("msg_sms", &tenant);
    long long run = run_one(db, tenant,
                            DEF("sms", "{\"to\": \"+15551234567\", \"body\": \"Hello + bye & co\"}", ""),
                            NULL);
    char *st = step_state(db, run);
    assert_string_equal(st, "succeeded");
    free(st);
    json_t *b = th_msg_request_body(m, 0);
    assert_string_equal(json_string_value(json_object_get(b, "To")), "+15551234567");
    assert_string_equal(json_string_value(json_object_get(b, "From")), "+15005550001");
    assert_string_equal(json_string_value(json_object_get(b, "Body")), "Hello + bye & co");
    char cb[256];
    snprintf(cb, sizeof cb, "https://hooks.example.test/v1/hooks/twilio?tenant=%lld&send_key=%lld%%3Asend",
             tenant, run);
    assert_string_equal(json_string_value(json_object_get(b, "StatusCallback")), cb);
    json_decref(b);
    char *target = th_msg_request_target(m, 0);
    assert_string_equal(target, "/2010-04-01/Accounts/" TH_MSG_TWILIO_SID "/Messages.json");
    free(target);
    char *ctype = th_msg_request_header(m, 0, "Content-Type");
    assert_string_equal(ctype, "application/x-www-form-urlencoded");
    free(ctype);
    json_t *out = step_json(db, run, "output");
    assert_true(strncmp(json_string_value(json_object_get(out, "message_id")), "SM", 2) == 0);
    assert_int_equal(json_integer_value(json_object_get(out, "segments")), 1); /* string on the wire */
    assert_string_equal(json_string_value(json_object_get(out, "status")), "queued");
    assert_string_equal(json_string_value(json_object_get(out, "provider")), "twilio");
    json_decref(out);
    free(db);
    th_msg_stop(m);
    unsetenv("FLOWD_PUBLIC_URL");
}

static void test_whatsapp_shape(void **state)
{
    (void)state;
    th_msg *m = th_msg_start(TH_MSG_WHATSAPP);
    env_clear();
    env_for(m, TH_MSG_WHATSAPP);
    long long tenant;
    char *db = th_engine_db("msg_wa", &tenant);
    th_msg_push(m, (th_msg_answer){.held = true});
    long long run = run_one(
        db, tenant,
        DEF("whatsapp", "{\"to\": \"+15551234567\", \"template\": {\"name\": \"order_update\", "
                        "\"language\": \"en_US\", \"components\": [{\"type\": \"body\", "
                        "\"parameters\": [{\"type\": \"text\", \"text\": \"A-1001\"}]}]}}", ""),
        NULL);
    char *st = step_state(db, run);
    assert_string_equal(st, "succeeded");
    free(st);
    json_t *b = th_msg_request_body(m, 0);
    char key[64];
    snprintf(key, sizeof key, "%lld:send", run);
    assert_string_equal(json_string_value(json_object_get(b, "messaging_product")), "whatsapp");
    assert_string_equal(json_string_value(json_object_get(b, "to")), "15551234567"); /* no '+' */
    assert_string_equal(json_string_value(json_object_get(b, "type")), "template");
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_object_get(b, "template"), "language"), "code")), "en_US");
    assert_string_equal(json_string_value(json_object_get(b, "biz_opaque_callback_data")), key);
    json_decref(b);
    char *target = th_msg_request_target(m, 0);
    assert_string_equal(target, "/" TH_MSG_WA_PHONE_ID "/messages");
    free(target);
    json_t *out = step_json(db, run, "output");
    assert_string_equal(json_string_value(json_object_get(out, "status")), "held_for_quality_assessment");
    assert_string_equal(json_string_value(json_object_get(out, "wa_id")), "+15551234567" + 1);
    assert_true(strncmp(json_string_value(json_object_get(out, "message_id")), "wamid.", 6) == 0);
    json_decref(out);
    free(db);
    th_msg_stop(m);
}

/* ------------------------------------------------------------------------------- sandbox -- */

/* GET path with the default tenant's key against a service on port; returns status, *body. */
static long api_get(int port, const char *path, char **body)
{
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    struct curl_slist *h = curl_slist_append(NULL, "Authorization: Bearer fd_test_key_not_secret");
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    fclose(f);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    *body = buf;
    return status;
}

static void test_sandbox_outbox(void **state)
{
    (void)state;
    env_clear();
    long long tenant;
    char *db = th_engine_db("msg_sandbox", &tenant);
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"sb\", \"steps\": ["
        "{\"key\": \"mail\", \"kind\": \"email\", \"input\": {\"to\": \"a@example.test\", \"from\": "
        "\"n@example.test\", \"subject\": \"S\", \"text\": \"T\"}},"
        "{\"key\": \"text\", \"kind\": \"sms\", \"input\": {\"to\": \"+15551230000\", \"body\": \"B\"}},"
        "{\"key\": \"wa\", \"kind\": \"whatsapp\", \"input\": {\"to\": \"+15551230001\", \"text\": \"W\"}}]}");
    long long run = th_engine_enqueue(db, tenant, wf, 1, NULL, 0);
    th_workers *ws = th_workers_start(db, 1, "sb", 0, 0, 0);
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT state = 'succeeded' FROM runs WHERE id = %lld", run);
    bool done = th_engine_wait(db, sql, 60);
    th_workers_stop(ws);
    assert_true(done);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM outbox WHERE run_id = %lld", run), 3);
    assert_int_equal(th_pg_longf(db,
                                 "SELECT count(*) FROM steps WHERE run_id = %lld AND "
                                 "output->>'provider' = 'sandbox' AND (output->>'sandbox')::bool "
                                 "AND output->>'message_id' LIKE 'sandbox-%%'",
                                 run),
                     3);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM outbox o JOIN steps s ON s.run_id = o.run_id "
                        "AND s.key = o.step_key WHERE s.output->>'message_id' = o.sandbox_id"),
        3);
    /* the outbox holds the exact provider request */
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM outbox WHERE step_key = 'wa' AND "
                        "message->>'to' = '15551230001' AND message->'text'->>'body' = 'W'"),
        1);

    api_service_opts ao = {.conninfo = db, .listen = "127.0.0.1:0", .threads = 1, .db_conns = 1};
    eng_err err;
    api_service *svc = api_service_start(&ao, &err);
    assert_non_null(svc);
    char path[128], *body = NULL;
    snprintf(path, sizeof path, "/v1/outbox?run=%lld", run);
    assert_int_equal(api_get(api_service_port(svc), path, &body), 200);
    json_t *j = json_loads(body, 0, NULL);
    free(body);
    json_t *msgs = json_object_get(j, "messages");
    assert_int_equal(json_array_size(msgs), 3);
    int seen = 0;
    size_t i;
    json_t *x;
    json_array_foreach(msgs, i, x) {
        const char *ch = json_string_value(json_object_get(x, "channel"));
        const char *to = json_string_value(json_object_get(x, "to"));
        if (strcmp(ch, "email") == 0 && strcmp(to, "a@example.test") == 0)
            seen |= 1;
        if (strcmp(ch, "sms") == 0 && strcmp(to, "+15551230000") == 0 &&
            strcmp(json_string_value(json_object_get(json_object_get(x, "message"), "Body")), "B") == 0)
            seen |= 2;
        if (strcmp(ch, "whatsapp") == 0 && strcmp(to, "+15551230001") == 0)
            seen |= 4;
    }
    assert_int_equal(seen, 7);
    json_decref(j);
    snprintf(path, sizeof path, "/v1/outbox?run=%lld", run + 1000);
    assert_int_equal(api_get(api_service_port(svc), path, &body), 404);
    free(body);
    assert_int_equal(api_get(api_service_port(svc), "/v1/outbox?run=abc", &body), 400);
    free(body);
    api_service_stop(svc);
    free(db);
}

/* --------------------------------------------------------------------------- retry classes -- */

static void test_retry_classes(void **state)
{
    (void)state;
    env_clear();
    th_msg *sg = th_msg_start(TH_MSG_SENDGRID);
    th_msg *tw = th_msg_start(TH_MSG_TWILIO);
    th_msg *wa = th_msg_start(TH_MSG_WHATSAPP);
    env_for(sg, TH_MSG_SENDGRID);
    env_for(tw, TH_MSG_TWILIO);
    env_for(wa, TH_MSG_WHATSAPP);
    long long tenant;
    char *db = th_engine_db("msg_retry", &tenant);
    char def[1024];
    snprintf(def, sizeof def, DEF("email", "%s}", RETRY), email_input);

    /* SendGrid 429 with Retry-After: retried, one send */
    th_msg_push(sg, (th_msg_answer){.status = 429, .retry_after = "1"});
    long long t0 = th_now_ms();
    long long run = run_one(db, tenant, def, "{\"name\": \"A\"}");
    assert_true(th_now_ms() - t0 >= 900); /* Retry-After honoured */
    char *st = step_state(db, run);
    assert_string_equal(st, "succeeded");
    free(st);
    assert_int_equal(th_msg_requests(sg), 2);
    assert_int_equal(th_msg_accepted(sg), 1);

    /* Twilio 20429 (retryable) then 21211 (permanent): the step fails for good after 2 calls */
    th_msg_push(tw, (th_msg_answer){.status = 429, .code = 20429});
    th_msg_push(tw, (th_msg_answer){.status = 400, .code = 21211});
    run = run_one(db, tenant, DEF("sms", "{\"to\": \"+15551234567\", \"body\": \"x\"}", RETRY), NULL);
    st = step_state(db, run);
    assert_string_equal(st, "failed");
    free(st);
    json_t *e = step_json(db, run, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "http_400");
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "21211"));
    json_decref(e);
    assert_int_equal(th_msg_requests(tw), 2);
    assert_int_equal(th_msg_accepted(tw), 0);
    assert_int_equal(th_pg_longf(db,
                                 "SELECT count(*) FROM sends WHERE run_id = %lld AND state = "
                                 "'failed' AND error->>'provider_code' = '21211'",
                                 run),
                     1);

    /* WhatsApp 130429 retryable, then 401 permanent (190) */
    th_msg_push(wa, (th_msg_answer){.status = 429, .code = 130429});
    th_msg_push(wa, (th_msg_answer){.status = 401, .code = 190});
    run = run_one(db, tenant, DEF("whatsapp", "{\"to\": \"+15551234567\", \"text\": \"x\"}", RETRY),
                  NULL);
    st = step_state(db, run);
    assert_string_equal(st, "failed");
    free(st);
    assert_int_equal(th_msg_requests(wa), 2);

    /* SendGrid 500 after accepting, at_most_once: never resent; SendGrid has no look-up, so the
     * step waits, parked with the code "unknown", and its run with it (not failed) */
    th_msg_push(sg, (th_msg_answer){.status = 500, .accept = true});
    snprintf(def, sizeof def,
             DEF("email", "%s, \"resolve\": {\"checks\": 1, \"interval_ms\": 200}}", RETRY),
             email_input);
    int before = th_msg_requests(sg);
    run = run_one(db, tenant, def, "{\"name\": \"B\"}");
    st = step_state(db, run);
    assert_string_equal(st, "waiting");
    free(st);
    e = step_json(db, run, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "unknown");
    json_decref(e);
    assert_int_equal(th_msg_requests(sg) - before, 1);
    assert_int_equal(
        th_pg_longf(db,
                    "SELECT count(*) FROM sends WHERE run_id = %lld AND state = 'unknown' "
                    "AND calls = 1",
                    run),
        1);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM runs WHERE id = %lld"
                                     " AND state = 'running'", run), 1);
    /* an operator says it went out: the step goes on with that outcome, and nothing is resent */
    char *settled = th_pg_valuef(db, "SELECT flowd_send_resolve(%lld, '%lld:send', 'sent',"
                                     " 'op-msg-1')->>'state'", tenant, run);
    assert_string_equal(settled, "accepted");
    free(settled);
    th_workers *ws = th_workers_start(db, 1, "again", 0, 0, 0);
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT state = 'succeeded' FROM runs WHERE id = %lld", run);
    bool done = th_engine_wait(db, sql, 30);
    th_workers_stop(ws);
    assert_true(done);
    assert_int_equal(th_msg_requests(sg) - before, 1);
    json_t *settled_out = step_json(db, run, "output");
    assert_string_equal(json_string_value(json_object_get(settled_out, "resolved")), "operator");
    assert_string_equal(json_string_value(json_object_get(settled_out, "message_id")), "op-msg-1");
    json_decref(settled_out);

    /* the same with at_least_once: resent, and the second call is accepted */
    th_msg_push(sg, (th_msg_answer){.status = 503});
    snprintf(def, sizeof def, DEF("email", "%s, \"policy\": \"at_least_once\"}", RETRY), email_input);
    before = th_msg_requests(sg);
    run = run_one(db, tenant, def, "{\"name\": \"C\"}");
    st = step_state(db, run);
    assert_string_equal(st, "succeeded");
    free(st);
    assert_int_equal(th_msg_requests(sg) - before, 2);
    assert_int_equal(th_pg_longf(db, "SELECT calls FROM sends WHERE run_id = %lld", run), 2);

    /* Twilio: timeout after accepting, at_most_once: resolved by the look-up, not resent */
    th_msg_push(tw, (th_msg_answer){.hang_ms = 5000});
    before = th_msg_requests(tw);
    run = run_one(db, tenant,
                  DEF("sms", "{\"to\": \"+15559876543\", \"body\": \"once\", \"resolve\": "
                             "{\"checks\": 2, \"interval_ms\": 200}}",
                      RETRY ", \"timeout\": \"1s\""),
                  NULL);
    st = step_state(db, run);
    assert_string_equal(st, "succeeded");
    free(st);
    assert_int_equal(th_msg_requests(tw) - before, 1);
    assert_int_equal(th_msg_accepted_for(tw, "+15559876543|once"), 1);
    assert_true(th_msg_lookups(tw) >= 1);
    json_t *out = step_json(db, run, "output");
    assert_string_equal(json_string_value(json_object_get(out, "resolved")), "lookup");
    char *mid = th_msg_message_id(tw, "+15559876543|once");
    assert_string_equal(json_string_value(json_object_get(out, "message_id")), mid);
    free(mid);
    json_decref(out);

    free(db);
    th_msg_stop(sg);
    th_msg_stop(tw);
    th_msg_stop(wa);
}

/* ------------------------------------------------------------------ recipients refused -- */

/* A number that is not E.164 or an address that is not one fails the step for good on its first
 * attempt, before any provider is called: nothing is guessed. What the provider refuses for good
 * (SendGrid 400) fails the step after one call, despite retries left. */
static void test_bad_recipients_refused(void **state)
{
    (void)state;
    env_clear();
    th_msg *sg = th_msg_start(TH_MSG_SENDGRID);
    th_msg *tw = th_msg_start(TH_MSG_TWILIO);
    th_msg *wa = th_msg_start(TH_MSG_WHATSAPP);
    env_for(sg, TH_MSG_SENDGRID);
    env_for(tw, TH_MSG_TWILIO);
    env_for(wa, TH_MSG_WHATSAPP);
    long long tenant;
    char *db = th_engine_db("msg_bad_to", &tenant);
    /* the recipient comes from the run's input, as in real sequences (a literal one is refused
     * at registration, below) */
    static const struct {
        const char *def, *input;
    } cases[] = {
        {DEF("sms", "{\"to\": \"{{input.to}}\", \"body\": \"x\"}", RETRY),
         "{\"to\": \"(415) 555-0123\"}"},
        {DEF("sms", "{\"to\": \"{{input.to}}\", \"body\": \"x\"}", RETRY),
         "{\"to\": \"4155550123\"}"},
        {DEF("sms", "{\"to\": \"{{input.to}}\", \"body\": \"x\"}", RETRY),
         "{\"to\": \"+1 415 555 0123\"}"},
        {DEF("whatsapp", "{\"to\": \"{{input.to}}\", \"text\": \"x\"}", RETRY),
         "{\"to\": \"+41-55-550-123\"}"},
        {DEF("email", "{\"to\": \"{{input.to}}\", \"from\": \"a@example.test\", \"subject\": \"s\","
                      " \"text\": \"t\"}", RETRY),
         "{\"to\": \"ann@example\"}"},
        {DEF("email", "{\"to\": \"{{input.to}}\", \"from\": \"a@example.test\", \"subject\": \"s\","
                      " \"text\": \"t\"}", RETRY),
         "{\"to\": \"ann..lee@example.test\"}"},
        {DEF("email", "{\"to\": \"{{input.to}}\", \"from\": \"a@example.test\", \"subject\": \"s\","
                      " \"text\": \"t\"}", RETRY),
         "{\"to\": \"ann@-example.test\"}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        long long run = run_one(db, tenant, cases[i].def, cases[i].input);
        char *st = step_state(db, run);
        assert_string_equal(st, "failed");
        free(st);
        json_t *e = step_json(db, run, "error");
        assert_string_equal(json_string_value(json_object_get(e, "code")), "invalid_input");
        assert_int_equal(json_integer_value(json_object_get(e, "attempt")), 1);
        json_decref(e);
    }
    th_expect_step_invalid("sms", "{\"to\": \"(415) 555-0123\", \"body\": \"x\"}",
                           "/steps/0/input/to");
    th_expect_step_invalid("sms", "{\"to\": \"+14155550123\", \"from\": \"415-555-0100\","
                                  " \"body\": \"x\"}",
                           "/steps/0/input/from");
    th_expect_step_invalid("whatsapp", "{\"to\": \"0041 55 550 123\", \"text\": \"x\"}",
                           "/steps/0/input/to");
    json_t *e = step_json(db, th_pg_longf(db, "SELECT min(id) FROM runs"), "error");
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "E.164"));
    json_decref(e);
    assert_int_equal(th_msg_requests(sg) + th_msg_requests(tw) + th_msg_requests(wa), 0);

    th_msg_push(sg, (th_msg_answer){.status = 400});
    char def[1024];
    snprintf(def, sizeof def, DEF("email", "%s}", RETRY), email_input);
    long long run = run_one(db, tenant, def, "{\"name\": \"D\"}");
    char *st = step_state(db, run);
    assert_string_equal(st, "failed");
    free(st);
    assert_int_equal(th_msg_requests(sg), 1);
    e = step_json(db, run, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "http_400");
    json_decref(e);
    free(db);
    th_msg_stop(sg);
    th_msg_stop(tw);
    th_msg_stop(wa);
}

/* ---------------------------------------------------------------------------- suppression -- */

static void test_suppression_from_send(void **state)
{
    (void)state;
    env_clear();
    th_msg *tw = th_msg_start(TH_MSG_TWILIO);
    th_msg *wa = th_msg_start(TH_MSG_WHATSAPP);
    env_for(tw, TH_MSG_TWILIO);
    env_for(wa, TH_MSG_WHATSAPP);
    long long tenant;
    char *db = th_engine_db("msg_supp", &tenant);
    th_msg_push(tw, (th_msg_answer){.status = 400, .code = 21610});
    const char *def = DEF("sms", "{\"to\": \"+15551112222\", \"body\": \"hi\"}", RETRY);
    long long run = run_one(db, tenant, def, NULL);
    char *st = step_state(db, run);
    assert_string_equal(st, "skipped");
    free(st);
    json_t *out = step_json(db, run, "output");
    assert_non_null(strstr(json_string_value(json_object_get(out, "reason")), "21610"));
    json_decref(out);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM suppressions WHERE channel = 'sms' AND "
                                     "address = '+15551112222' AND reason = '21610'"),
                     1);
    /* the next message to that number is never sent */
    int before = th_msg_requests(tw);
    run = run_one(db, tenant, def, NULL);
    st = step_state(db, run);
    assert_string_equal(st, "skipped");
    free(st);
    assert_int_equal(th_msg_requests(tw), before);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM runs WHERE id = %lld AND state = 'succeeded'", run),
        1);

    /* WhatsApp 131026 does the same on its channel */
    th_msg_push(wa, (th_msg_answer){.status = 400, .code = 131026});
    run = run_one(db, tenant, DEF("whatsapp", "{\"to\": \"+15551112222\", \"text\": \"x\"}", RETRY), NULL);
    st = step_state(db, run);
    assert_string_equal(st, "skipped");
    free(st);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM suppressions WHERE channel = 'whatsapp'"), 1);
    free(db);
    th_msg_stop(tw);
    th_msg_stop(wa);
}

/* ---------------------------------------------------------------------------- kill -9 -- */

/* `flowd serve` with stderr into errfile (for the secrets check). */
static pid_t serve_spawn(const char *db, const char *errfile)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(errfile, O_WRONLY | O_CREAT | O_APPEND, 0600);
        int nul = open("/dev/null", O_RDWR);
        dup2(nul, 0);
        dup2(nul, 1);
        dup2(fd, 2);
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* no server outlives a failed test */
        execl(th_flowd_bin(), "flowd", "--database", db, "serve", "--workers", "1", "--lease-ms",
              "1000", "--listen", "127.0.0.1:0", (char *)NULL);
        _exit(127);
    }
    return pid;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return eng_xstrdup("");
    char *buf = NULL;
    size_t cap = 0;
    ssize_t n = getdelim(&buf, &cap, '\0', f);
    fclose(f);
    if (n < 0) {
        free(buf);
        return eng_xstrdup("");
    }
    return buf;
}

static void test_kill9_mid_send(void **state)
{
    (void)state;
    env_clear();
    th_msg *tw = th_msg_start(TH_MSG_TWILIO);
    th_msg *sg = th_msg_start(TH_MSG_SENDGRID);
    env_for(tw, TH_MSG_TWILIO);
    env_for(sg, TH_MSG_SENDGRID);
    setenv("FLOWD_LOG_LEVEL", "debug", 1);
    long long tenant;
    char *db = th_engine_db("msg_kill9", &tenant);
    char errfile[] = "/tmp/flowd-msg-XXXXXX";
    int fd = mkstemp(errfile);
    close(fd);
    /* both providers accept and then hang: the process dies with the calls in flight */
    th_msg_push(tw, (th_msg_answer){.hang_ms = 60000});
    th_msg_push(sg, (th_msg_answer){.hang_ms = 60000});
    char def[1024];
    snprintf(def, sizeof def,
             "{\"name\": \"k\", \"steps\": ["
             "{\"key\": \"send\", \"kind\": \"sms\", \"input\": {\"to\": \"+15550001111\", "
             "\"body\": \"only once\", \"resolve\": {\"checks\": 3, \"interval_ms\": 300}}},"
             "{\"key\": \"mail\", \"kind\": \"email\", \"input\": {\"to\": \"k@example.test\", "
             "\"from\": \"n@example.test\", \"subject\": \"S\", \"text\": \"T\", "
             "\"resolve\": {\"checks\": 2, \"interval_ms\": 300}}}]}");
    long long wf = th_engine_register(db, tenant, def);
    long long run = th_engine_enqueue(db, tenant, wf, 1, NULL, 0);
    pid_t pid = serve_spawn(db, errfile);
    long long deadline = th_now_ms() + 30000;
    while ((th_msg_accepted(tw) < 1 || th_msg_accepted(sg) < 1) && th_now_ms() < deadline)
        usleep(20000);
    assert_int_equal(th_msg_accepted(tw), 1);
    assert_int_equal(th_msg_accepted(sg), 1);
    th_serve_kill(pid, SIGKILL);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM sends WHERE run_id = %lld AND state = 'pending'",
                    run),
        2);

    pid = serve_spawn(db, errfile);
    /* sms: resolved by the Twilio look-up; email: no look-up, so it waits for SendGrid's event */
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT bool_and(CASE key WHEN 'send' THEN state = 'succeeded'"
             " ELSE state = 'waiting' AND error->>'code' = 'unknown' END)"
             " FROM steps WHERE run_id = %lld",
             run);
    bool parked = th_engine_wait(db, sql, 60);
    assert_true(parked);
    assert_int_equal(
        th_pg_longf(db, "SELECT count(*) FROM sends WHERE run_id = %lld AND state = 'unknown'",
                    run),
        1);
    /* SendGrid's delivery event (what api/routes_hooks.c applies) settles the email: it goes on */
    free(th_pg_valuef(db,
                      "SELECT flowd_hooks_apply(%lld, 'sendgrid', jsonb_build_array(jsonb_build_object("
                      "'dedup', 'sg-evt-1', 'send_key', '%lld:mail', 'message_id', 'sg-mid-1',"
                      " 'delivery', 'delivered')))",
                      tenant, run));
    snprintf(sql, sizeof sql, "SELECT state IN ('succeeded', 'failed') FROM runs WHERE id = %lld", run);
    bool done = th_engine_wait(db, sql, 60);
    th_serve_kill(pid, SIGTERM);
    assert_true(done);
    /* zero duplicate sends */
    assert_int_equal(th_msg_accepted(tw), 1);
    assert_int_equal(th_msg_accepted(sg), 1);
    assert_int_equal(th_msg_requests(tw), 1);
    assert_int_equal(th_msg_requests(sg), 1);
    char *st = th_pg_valuef(db, "SELECT state || ' ' || (output->>'resolved') FROM steps"
                                " WHERE run_id = %lld AND key = 'mail'", run);
    assert_string_equal(st, "succeeded webhook");
    free(st);
    st = th_pg_valuef(db, "SELECT state FROM runs WHERE id = %lld", run);
    assert_string_equal(st, "succeeded");
    free(st);

    /* no secret in any log line of either process */
    char *log = slurp(errfile);
    assert_non_null(strstr(log, "send call") ? log : strstr(log, "sending"));
    assert_null(strstr(log, TH_MSG_TWILIO_TOKEN));
    assert_null(strstr(log, TH_MSG_SENDGRID_KEY));
    assert_null(strstr(log, "Basic "));
    assert_null(strstr(log, "Bearer "));
    free(log);
    unlink(errfile);
    unsetenv("FLOWD_LOG_LEVEL");
    free(db);
    th_msg_stop(tw);
    th_msg_stop(sg);
}

/* A send stopped while its connection was still being set up (here: a TLS handshake the server
 * never answers) provably sent nothing: the ledger records it as not sent instead of leaving it
 * pending, which the next attempt would have to treat as possibly sent. The attempt is stopped
 * the way a stalled worker's is: its lease renewals stop landing. */
static void test_stalled_send_not_sent(void **state)
{
    (void)state;
    env_clear();
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t salen = sizeof sa;
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(lfd, 16), 0); /* the kernel completes the TCP handshake; nobody reads */
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &salen), 0);
    char url[64];
    snprintf(url, sizeof url, "https://127.0.0.1:%d", ntohs(sa.sin_port));
    setenv("TWILIO_ACCOUNT_SID", TH_MSG_TWILIO_SID, 1);
    setenv("TWILIO_AUTH_TOKEN", TH_MSG_TWILIO_TOKEN, 1);
    setenv("TWILIO_BASE_URL", url, 1);
    prov_config_cache_clear();
    long long tenant;
    char *db = th_engine_db("msg_stall", &tenant);
    free(th_pg_value(db, "CREATE OR REPLACE FUNCTION flowd_worker_leases(p_owner text,"
                         " p_lease_ms integer, p_ids bigint[], p_release bigint[],"
                         " p_release_attempts integer[], p_release_claimed bigint[],"
                         " p_fresh_pid integer) RETURNS SETOF bigint LANGUAGE plpgsql AS"
                         " $$ BEGIN RAISE EXCEPTION 'renewals refused'; END $$"));
    long long wf = th_engine_register(
        db, tenant,
        "{\"name\": \"stall\", \"steps\": [{\"key\": \"send\", \"kind\": \"sms\","
        " \"input\": {\"to\": \"+15550002222\", \"body\": \"hello\"}}]}");
    th_engine_enqueue(db, tenant, wf, 1, NULL, 0);
    th_workers *ws = th_workers_start(db, 1, "stall", 0, 0, 900);
    bool recorded = th_engine_wait(db, "SELECT count(*) = 1 FROM sends WHERE state = 'failed'"
                                       " AND error->>'code' = 'not_sent' AND calls = 1",
                                   20);
    th_workers_stop(ws);
    close(lfd);
    assert_true(recorded);
    free(db);
    env_clear();
}

int main(void)
{
    eng_mem_init();
    eng_log_init();
    eng_httpc_global_init();
    eng_step_register_builtins();
    step_register_all();
    signal(SIGPIPE, SIG_IGN);
    setenv("NO_PROXY", "*", 1);
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_email_shape),
        cmocka_unit_test(test_sms_shape),
        cmocka_unit_test(test_whatsapp_shape),
        cmocka_unit_test(test_sandbox_outbox),
        cmocka_unit_test(test_retry_classes),
        cmocka_unit_test(test_bad_recipients_refused),
        cmocka_unit_test(test_suppression_from_send),
        cmocka_unit_test(test_kill9_mid_send),
        cmocka_unit_test(test_stalled_send_not_sent),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    eng_httpc_global_cleanup();
    return rc;
}
