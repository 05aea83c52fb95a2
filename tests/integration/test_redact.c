/* tests/integration/test_redact.c: no credential flowd sends reaches a stored or logged error.
 *
 * Each provider's mock answers with an error whose message echoes the request (its Authorization
 * or x-api-key header and its target), as some servers and proxies do. After the run failed, the
 * step's error, the run's error, the run's event log, the send ledger's error and this process's
 * log must hold none of the operator's credentials in any form flowd sent them: the raw key or
 * token, and for Twilio the base64 of "SID:token" that HTTP Basic carries. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "steps/provider.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"
#include "tests/support/th_mockllm.h"
#include "tests/support/th_mockmsg.h"

#define OPENAI_KEY "sk-proj-Redact0123456789abcdef"
#define ANTHROPIC_KEY "anthropic-Redact-9876543210" /* no "sk-": only the configured value marks it */

static const char *const provider_env[] = {
    "OPENAI_API_KEY",   "OPENAI_BASE_URL",   "ANTHROPIC_API_KEY",  "ANTHROPIC_BASE_URL",
    "SENDGRID_API_KEY", "SENDGRID_BASE_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN",
    "TWILIO_FROM",      "TWILIO_BASE_URL",   "WHATSAPP_TOKEN",     "WHATSAPP_PHONE_NUMBER_ID",
    "WHATSAPP_BASE_URL"};

static void env_clear(void)
{
    for (size_t i = 0; i < ENG_ARRAY_LEN(provider_env); i++)
        unsetenv(provider_env[i]);
    setenv("TWILIO_FROM", "+15005550001", 1);
    prov_config_cache_clear();
}

/* Everything the test may find a secret in, for the workflow's only run, as one text. */
static char *stored_text(const char *db, long long run)
{
    return th_pg_valuef(
        db,
        "SELECT concat_ws(' | ', (SELECT string_agg(coalesce(error::text, ''), ',') FROM steps"
        " WHERE run_id = %lld), (SELECT error::text FROM runs WHERE id = %lld),"
        " (SELECT string_agg(coalesce(data::text, ''), ',') FROM run_log WHERE run_id = %lld),"
        " (SELECT string_agg(coalesce(error::text, ''), ',') FROM sends),"
        " (SELECT string_agg(coalesce(reason, ''), ',') FROM suppressions))",
        run, run, run);
}

/* Runs def once on an in-process worker with this process's stderr (the log) captured into
 * *log; returns the run's stored text (see stored_text). */
static char *run_captured(const char *prefix, const char *def, char **log)
{
    long long tenant;
    char *db = th_engine_db(prefix, &tenant);
    long long wf = th_engine_register(db, tenant, def);
    long long run = th_engine_enqueue(db, tenant, wf, 1, NULL, 0);
    char path[] = "/tmp/flowd-redact-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    th_workers *ws = th_workers_start(db, 1, "redact", 0, 0, 0);
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT state IN ('succeeded', 'failed') FROM runs WHERE id = %lld",
             run);
    bool done = th_engine_wait(db, sql, 60);
    th_workers_stop(ws);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    assert_true(done);
    off_t n = lseek(fd, 0, SEEK_END);
    *log = eng_xcalloc(1, (size_t)n + 1);
    assert_int_equal(pread(fd, *log, (size_t)n, 0), n);
    close(fd);
    char *state = th_pg_valuef(db, "SELECT state FROM runs WHERE id = %lld", run);
    assert_string_equal(state, "failed");
    free(state);
    char *text = stored_text(db, run);
    free(db);
    return text;
}

/* The echo reached flowd (its masked trace is stored) and no secret is anywhere. */
static void assert_clean(const char *text, const char *log, const char *const *secrets)
{
    assert_non_null(strstr(text, "rejected POST"));
    assert_non_null(strstr(text, "***"));
    assert_non_null(strstr(log, "step attempt failed"));
    for (const char *const *s = secrets; *s; s++) {
        if (strstr(text, *s) || strstr(log, *s))
            fail_msg("secret %s found in: %s\nlog: %s", *s, text, log);
    }
}

static void test_llm_echo(void **state)
{
    (void)state;
    const th_llm_flavor flavors[] = {TH_LLM_OPENAI, TH_LLM_ANTHROPIC};
    for (size_t i = 0; i < ENG_ARRAY_LEN(flavors); i++) {
        env_clear();
        th_llm *m = th_llm_start(flavors[i]);
        bool openai = flavors[i] == TH_LLM_OPENAI;
        setenv(openai ? "OPENAI_API_KEY" : "ANTHROPIC_API_KEY",
               openai ? OPENAI_KEY : ANTHROPIC_KEY, 1);
        setenv(openai ? "OPENAI_BASE_URL" : "ANTHROPIC_BASE_URL", th_llm_base_url(m), 1);
        th_llm_answer a = {.status = 400, .echo = true};
        th_llm_push(m, &a);
        char def[512];
        snprintf(def, sizeof def,
                 "{\"name\": \"r\", \"steps\": [{\"key\": \"ask\", \"kind\": \"llm\", \"input\":"
                 " {\"provider\": \"%s\", \"model\": \"m\", \"prompt\": \"hi\"}}]}",
                 openai ? "openai" : "anthropic");
        char *log;
        char *text = run_captured(openai ? "redact_openai" : "redact_anthropic", def, &log);
        const char *const secrets[] = {OPENAI_KEY, ANTHROPIC_KEY, NULL};
        assert_clean(text, log, secrets);
        free(text);
        free(log);
        th_llm_stop(m);
    }
}

static void test_messaging_echo(void **state)
{
    (void)state;
    env_clear();
    setenv("TWILIO_ACCOUNT_SID", TH_MSG_TWILIO_SID, 1);
    setenv("TWILIO_AUTH_TOKEN", TH_MSG_TWILIO_TOKEN, 1);
    prov_config *tw = prov_config_from_env(PROV_TWILIO);
    char *basic = prov_basic_credentials(tw); /* what flowd sent: base64 of SID:token */
    prov_config_free(tw);
    const char *const secrets[] = {TH_MSG_SENDGRID_KEY, TH_MSG_TWILIO_TOKEN, basic,
                                   TH_MSG_WA_TOKEN, NULL};
    static const struct {
        th_msg_flavor flavor;
        const char *prefix;
        const char *step;
    } cases[] = {
        {TH_MSG_SENDGRID, "redact_sendgrid",
         "\"kind\": \"email\", \"input\": {\"to\": \"ann@example.test\", \"from\":"
         " \"noreply@example.test\", \"subject\": \"s\", \"text\": \"t\"}"},
        {TH_MSG_TWILIO, "redact_twilio",
         "\"kind\": \"sms\", \"input\": {\"to\": \"+15551234567\", \"body\": \"b\"}"},
        {TH_MSG_WHATSAPP, "redact_whatsapp",
         "\"kind\": \"whatsapp\", \"input\": {\"to\": \"+15551234567\", \"text\": \"w\"}"},
    };
    for (size_t i = 0; i < ENG_ARRAY_LEN(cases); i++) {
        env_clear();
        th_msg *m = th_msg_start(cases[i].flavor);
        if (cases[i].flavor == TH_MSG_SENDGRID) {
            setenv("SENDGRID_API_KEY", TH_MSG_SENDGRID_KEY, 1);
            setenv("SENDGRID_BASE_URL", th_msg_url(m), 1);
        } else if (cases[i].flavor == TH_MSG_TWILIO) {
            setenv("TWILIO_ACCOUNT_SID", TH_MSG_TWILIO_SID, 1);
            setenv("TWILIO_AUTH_TOKEN", TH_MSG_TWILIO_TOKEN, 1);
            setenv("TWILIO_BASE_URL", th_msg_url(m), 1);
        } else {
            setenv("WHATSAPP_TOKEN", TH_MSG_WA_TOKEN, 1);
            setenv("WHATSAPP_PHONE_NUMBER_ID", TH_MSG_WA_PHONE_ID, 1);
            setenv("WHATSAPP_BASE_URL", th_msg_url(m), 1);
        }
        prov_config_cache_clear();
        /* WhatsApp's 400 without a code would be its ambiguous code 2; 100 is a plain refusal */
        th_msg_push(m, (th_msg_answer){.status = 400, .echo = true,
                                       .code = cases[i].flavor == TH_MSG_WHATSAPP ? 100 : 0});
        char def[512];
        snprintf(def, sizeof def, "{\"name\": \"r\", \"steps\": [{\"key\": \"send\", %s}]}",
                 cases[i].step);
        char *log;
        char *text = run_captured(cases[i].prefix, def, &log);
        char *sent = th_msg_request_header(m, 0, "Authorization");
        assert_non_null(sent); /* the mock saw the credential the test looks for */
        assert_clean(text, log, secrets);
        assert_non_null(strstr(text, "\"provider_code\"")); /* the ledger recorded the failure */
        free(sent);
        free(text);
        free(log);
        th_msg_stop(m);
    }
    free(basic);
}

/* The generic masks: every credential form, whatever configuration produced it. */
static void test_masks(void **state)
{
    (void)state;
    static const struct {
        const char *in, *gone;
    } cases[] = {
        {"Authorization: Basic QUMwMTIzOnRva2Vu", "QUMwMTIzOnRva2Vu"},
        {"authorization: basic QUMwMTIzOnRva2Vu", "QUMwMTIzOnRva2Vu"},
        {"got Bearer eyJhbGciOi.x.y", "eyJhbGciOi"},
        {"x-api-key: ant-key-123456", "ant-key-123456"},
        {"X-Goog-Api-Key: AIzaSyD-123456", "AIzaSyD-123456"},
        {"GET /v1/x?key=AIzaSyD-123456&q=1", "AIzaSyD-123456"},
        {"url https://h/p?api_key=abcd1234efgh", "abcd1234efgh"},
        {"form access_token=EAAG1234abcd&x=1", "EAAG1234abcd"},
        {"{\"token\": \"abc\", \"auth_token=deadbeef99\"}", "deadbeef99"},
    };
    for (size_t i = 0; i < ENG_ARRAY_LEN(cases); i++) {
        char *out = prov_redact(NULL, cases[i].in);
        if (strstr(out, cases[i].gone))
            fail_msg("%s kept in %s", cases[i].gone, out);
        free(out);
    }
    /* a word that merely ends in a marker is left alone */
    char *out = prov_redact(NULL, "monkey=banana1234 max_tokens=4096");
    assert_string_equal(out, "monkey=banana1234 max_tokens=4096");
    free(out);
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
        cmocka_unit_test(test_masks),
        cmocka_unit_test(test_llm_echo),
        cmocka_unit_test(test_messaging_echo),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    eng_httpc_global_cleanup();
    return rc;
}
