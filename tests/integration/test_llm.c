/* tests/integration/test_llm.c: the llm kind end to end: real workers, a real database and the
 * mock OpenAI/Anthropic servers of tests/support/th_mockllm.
 *
 * Each test sets the provider environment (keys, base URLs pointing at the mocks), runs one-step
 * workflows and asserts both sides: what the mock received (path, headers, body) and what the step
 * recorded (state, output, error, attempts). */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <ev.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/db.h"
#include "engine/err.h"
#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "engine/wf_def.h"
#include "steps/provider.h"
#include "steps/ratelimit.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_engine.h"
#include "tests/support/th_mockllm.h"

#define OPENAI_KEY "sk-test-Secret0123456789abcdef"
#define ANTHROPIC_KEY "sk-ant-test-Secret9876543210"

static int wf_counter;

static void clear_env(void)
{
    static const char *const names[] = {"OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY",
                                        "ANTHROPIC_BASE_URL", "OPENAI_COMPATIBLE_BASE_URL",
                                        "OPENAI_COMPATIBLE_API_KEY"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(names); i++)
        unsetenv(names[i]);
    prov_config_cache_clear();
    rl_cache_clear();
}

static void use_openai(const th_llm *m)
{
    setenv("OPENAI_API_KEY", OPENAI_KEY, 1);
    setenv("OPENAI_BASE_URL", th_llm_base_url(m), 1);
    prov_config_cache_clear();
}

static void use_anthropic(const th_llm *m)
{
    setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY, 1);
    setenv("ANTHROPIC_BASE_URL", th_llm_base_url(m), 1);
    prov_config_cache_clear();
}

/* Registers a one-step llm workflow whose step is {"key": "ask", "kind": "llm", "input": input}
 * with a 50 ms backoff plus extra retry fields (JSON members, or ""); returns its id. */
static long long llm_workflow(const char *db, long long tenant, const char *input,
                              const char *extra)
{
    char *def = eng_xasprintf("{\"name\": \"llm%d\", \"steps\": [{\"key\": \"ask\", \"kind\": "
                              "\"llm\", \"retry\": {\"backoff\": {\"initial\": \"50ms\"}, \"jitter\": 0%s%s}, "
                              "\"input\": %s}]}",
                              ++wf_counter, *extra ? ", " : "", extra, input);
    long long wf = th_engine_register(db, tenant, def);
    free(def);
    return wf;
}

/* Runs n runs of the workflow on one in-process worker until they all finished. */
static void run_all(const char *db, long long tenant, long long wf, int n, double timeout_s)
{
    th_engine_enqueue(db, tenant, wf, n, NULL, 0);
    th_workers *ws = th_workers_start(db, 1, "llm", 0, 0, 0);
    char *sql = eng_xasprintf("SELECT count(*) = %d FROM runs WHERE workflow_id = %lld AND state "
                              "IN ('succeeded', 'failed')",
                              n, wf);
    bool done = th_engine_wait(db, sql, timeout_s);
    free(sql);
    th_workers_stop(ws);
    assert_true(done);
}

/* The step "ask" of the workflow's only (or last) run as {state, attempts, output, error}. */
static json_t *step_row(const char *db, long long wf)
{
    char *sql = eng_xasprintf(
        "SELECT jsonb_build_object('state', s.state, 'attempts', s.attempts, 'output', s.output,"
        " 'error', s.error)::text FROM steps s JOIN runs r ON r.id = s.run_id"
        " WHERE r.workflow_id = %lld ORDER BY r.id DESC LIMIT 1",
        wf);
    char *v = th_pg_value(db, sql);
    free(sql);
    assert_non_null(v);
    json_t *j = json_loads(v, 0, NULL);
    free(v);
    assert_non_null(j);
    return j;
}

/* Registers a one-step llm workflow (llm_workflow), runs it once to the end and returns its step
 * row (step_row; caller decrefs). */
static json_t *run_once(const char *db, long long tenant, const char *input, const char *extra)
{
    long long wf = llm_workflow(db, tenant, input, extra);
    run_all(db, tenant, wf, 1, 30);
    return step_row(db, wf);
}

static const char *jstr(const json_t *j, const char *path)
{
    /* "a.b.c" lookups through objects */
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    const json_t *cur = j;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, "."))
        cur = json_object_get(cur, tok);
    return json_string_value(cur);
}

static json_int_t jint(const json_t *j, const char *a, const char *b)
{
    const json_t *v = json_object_get(j, a);
    if (b)
        v = json_object_get(v, b);
    return json_integer_value(v);
}

/* ------------------------------------------------------------------------- request shapes -- */

static void test_openai_shape(void **state)
{
    (void)state;
    clear_env();
    th_llm *m = th_llm_start(TH_LLM_OPENAI);
    use_openai(m);
    long long tenant;
    char *db = th_engine_db("llm_openai", &tenant);
    json_t *row = run_once(db, tenant,
                           "{\"provider\": \"openai\", \"model\": \"gpt-4o-mini\", \"system\":"
                           " \"Be terse.\", \"prompt\": \"Say hi\", \"max_tokens\": 256,"
                           " \"temperature\": 0.2}",
                           "");
    assert_string_equal(jstr(row, "state"), "succeeded");
    json_t *out = json_object_get(row, "output");
    assert_string_equal(jstr(out, "text"), "Hi.");
    assert_string_equal(jstr(out, "provider"), "openai");
    assert_string_equal(jstr(out, "model"), "gpt-4o-mini");
    assert_string_equal(jstr(out, "finish_reason"), "stop");
    assert_int_equal(jint(out, "usage", "input_tokens"), 14);
    assert_int_equal(jint(out, "usage", "output_tokens"), 2);
    assert_true(json_is_number(json_object_get(out, "cost_usd")));
    assert_true(json_is_integer(json_object_get(out, "latency_ms")));
    assert_null(json_object_get(out, "fallback"));

    assert_int_equal(th_llm_calls(m), 1);
    json_t *req = th_llm_request(m, 0);
    assert_string_equal(jstr(req, "method"), "POST");
    assert_string_equal(jstr(req, "target"), "/v1/chat/completions");
    assert_string_equal(jstr(req, "authorization"), "Bearer " OPENAI_KEY);
    assert_string_equal(jstr(req, "content-type"), "application/json");
    json_t *body = json_object_get(req, "body");
    assert_string_equal(jstr(body, "model"), "gpt-4o-mini");
    assert_int_equal(jint(body, "max_completion_tokens", NULL), 256);
    assert_null(json_object_get(body, "max_tokens"));
    assert_true(json_number_value(json_object_get(body, "temperature")) > 0.19);
    json_t *msgs = json_object_get(body, "messages");
    assert_int_equal(json_array_size(msgs), 2);
    assert_string_equal(jstr(json_array_get(msgs, 0), "role"), "system");
    assert_string_equal(jstr(json_array_get(msgs, 0), "content"), "Be terse.");
    assert_string_equal(jstr(json_array_get(msgs, 1), "role"), "user");
    assert_string_equal(jstr(json_array_get(msgs, 1), "content"), "Say hi");
    assert_null(json_object_get(body, "stream"));
    json_decref(req);
    json_decref(row);
    th_llm_stop(m);
    free(db);
}

static void test_anthropic_shape(void **state)
{
    (void)state;
    clear_env();
    th_llm *m = th_llm_start(TH_LLM_ANTHROPIC);
    use_anthropic(m);
    long long tenant;
    char *db = th_engine_db("llm_anthropic", &tenant);
    long long wf = llm_workflow(
        db, tenant,
        "{\"provider\": \"anthropic\", \"model\": \"claude-sonnet-4-5\", \"messages\": ["
        "{\"role\": \"system\", \"content\": \"Be terse.\"},"
        "{\"role\": \"user\", \"content\": \"Say hi\"}]}",
        "");
    run_all(db, tenant, wf, 1, 30);
    json_t *row = step_row(db, wf);
    assert_string_equal(jstr(row, "state"), "succeeded");
    json_t *out = json_object_get(row, "output");
    assert_string_equal(jstr(out, "text"), "Hi.");
    assert_string_equal(jstr(out, "provider"), "anthropic");
    assert_string_equal(jstr(out, "finish_reason"), "stop");
    assert_int_equal(jint(out, "usage", "input_tokens"), 12);
    assert_int_equal(jint(out, "usage", "output_tokens"), 3);

    json_t *req = th_llm_request(m, 0);
    assert_string_equal(jstr(req, "target"), "/v1/messages");
    assert_string_equal(jstr(req, "x-api-key"), ANTHROPIC_KEY);
    assert_string_equal(jstr(req, "anthropic-version"), "2023-06-01");
    assert_true(json_is_null(json_object_get(req, "authorization")));
    json_t *body = json_object_get(req, "body");
    assert_string_equal(jstr(body, "system"), "Be terse.");
    assert_int_equal(jint(body, "max_tokens", NULL), 1024);
    json_t *msgs = json_object_get(body, "messages");
    assert_int_equal(json_array_size(msgs), 1); /* no system role in Anthropic's messages */
    assert_string_equal(jstr(json_array_get(msgs, 0), "role"), "user");
    json_decref(req);
    json_decref(row);
    th_llm_stop(m);
    free(db);
}

/* SSE answers split at random byte offsets, with ping comments, for both providers. */
static void test_streams(void **state)
{
    (void)state;
    clear_env();
    th_llm *o = th_llm_start(TH_LLM_OPENAI), *a = th_llm_start(TH_LLM_ANTHROPIC);
    use_openai(o);
    use_anthropic(a);
    th_llm_answer ans = {.text = "Hello there, streaming world \xc3\xa9t\xc3\xa9!"};
    th_llm_set_default(o, &ans);
    th_llm_set_default(a, &ans);
    long long tenant;
    char *db = th_engine_db("llm_stream", &tenant);
    for (int round = 0; round < 3; round++) {
        const char *prov = round % 2 ? "anthropic" : "openai";
        char *input = eng_xasprintf("{\"provider\": \"%s\", \"model\": \"m\", \"prompt\": \"p%d\","
                                    " \"stream\": true}",
                                    prov, round);
        long long wf = llm_workflow(db, tenant, input, "");
        free(input);
        run_all(db, tenant, wf, 1, 30);
        json_t *row = step_row(db, wf);
        assert_string_equal(jstr(row, "state"), "succeeded");
        assert_string_equal(jstr(row, "output.text"), ans.text);
        assert_string_equal(jstr(row, "output.finish_reason"), "stop");
        assert_true(jint(json_object_get(row, "output"), "usage", "output_tokens") > 0);
        json_decref(row);
    }
    json_t *req = th_llm_request(o, 0);
    assert_true(json_is_true(json_object_get(json_object_get(req, "body"), "stream")));
    assert_true(json_is_true(json_object_get(
        json_object_get(json_object_get(req, "body"), "stream_options"), "include_usage")));
    json_decref(req);

    /* an error event after the 200, then a stream cut short: both retried */
    th_llm_push(o, &(th_llm_answer){.stream_error = true});
    th_llm_push(o, &(th_llm_answer){.stream_cut = true});
    unsigned long before = th_llm_calls(o);
    json_t *row =
        run_once(db, tenant, "{\"model\": \"m\", \"prompt\": \"again\", \"stream\": true}", "");
    assert_string_equal(jstr(row, "state"), "succeeded");
    assert_int_equal(jint(row, "attempts", NULL), 3);
    assert_int_equal(th_llm_calls(o) - before, 3);
    json_decref(row);
    th_llm_stop(o);
    th_llm_stop(a);
    free(db);
}

/* ----------------------------------------------------------------- retries and fallback -- */

static void test_fallback(void **state)
{
    (void)state;
    clear_env();
    th_llm *o = th_llm_start(TH_LLM_OPENAI), *a = th_llm_start(TH_LLM_ANTHROPIC);
    use_openai(o);
    use_anthropic(a);
    th_llm_set_default(o, &(th_llm_answer){.status = 503});
    long long tenant;
    char *db = th_engine_db("llm_fallback", &tenant);
    json_t *row = run_once(db, tenant,
                           "{\"model\": \"gpt-4o\", \"prompt\": \"x\", "
                           "\"attempts_per_provider\": 2, \"fallback\": [{\"provider\": "
                           "\"anthropic\", \"model\": \"claude-sonnet-4-5\"}]}",
                           "");
    assert_string_equal(jstr(row, "state"), "succeeded");
    assert_string_equal(jstr(row, "output.provider"), "anthropic");
    assert_string_equal(jstr(row, "output.model"), "claude-sonnet-4-5");
    assert_true(json_is_true(json_object_get(json_object_get(row, "output"), "fallback")));
    assert_int_equal(th_llm_calls(o), 2); /* the primary had its two attempts first */
    assert_int_equal(th_llm_calls(a), 1);
    json_decref(row);

    /* a permanent failure of the primary does not fall back */
    th_llm_set_default(o, &(th_llm_answer){.status = 401});
    row = run_once(db, tenant,
                   "{\"model\": \"gpt-4o\", \"prompt\": \"y\", \"fallback\": [{\"provider\": "
                   "\"anthropic\", \"model\": \"claude-sonnet-4-5\"}]}",
                   "");
    assert_string_equal(jstr(row, "state"), "failed");
    assert_string_equal(jstr(row, "error.code"), "http_401");
    assert_int_equal(th_llm_calls(a), 1);
    json_decref(row);
    th_llm_stop(o);
    th_llm_stop(a);
    free(db);
}

static void test_json_mode_retry(void **state)
{
    (void)state;
    clear_env();
    th_llm *o = th_llm_start(TH_LLM_OPENAI);
    use_openai(o);
    th_llm_push(o, &(th_llm_answer){.text = "Sure! Here you go: {broken"});
    th_llm_push(o, &(th_llm_answer){.text = "```json\n{\"score\": 7, \"why\": \"fit\"}\n```"});
    long long tenant;
    char *db = th_engine_db("llm_json", &tenant);
    json_t *row = run_once(db, tenant,
                           "{\"model\": \"m\", \"prompt\": \"rate\", \"json_schema\": "
                           "{\"type\": \"object\", \"required\": [\"score\"], \"properties\":"
                           " {\"score\": {\"type\": \"integer\"}}}}",
                           "");
    assert_string_equal(jstr(row, "state"), "succeeded");
    assert_int_equal(jint(row, "attempts", NULL), 2);
    assert_int_equal(jint(json_object_get(row, "output"), "json", "score"), 7);
    json_t *req = th_llm_request(o, 0);
    json_t *rf = json_object_get(json_object_get(req, "body"), "response_format");
    assert_string_equal(jstr(rf, "type"), "json_schema");
    assert_string_equal(jstr(rf, "json_schema.name"), "output");
    assert_non_null(json_object_get(json_object_get(rf, "json_schema"), "schema"));
    json_decref(req);
    json_decref(row);

    /* the schema is checked all the way down: a reply with the right top-level shape but an
     * enum value it does not allow and a number for a string is retried, with the reason */
    static const char intent_schema[] =
        "{\"model\": \"m\", \"prompt\": \"classify\", \"json_schema\": {\"type\": \"object\","
        " \"required\": [\"intent\", \"reply\"], \"properties\": {\"intent\": {\"enum\":"
        " [\"yes\", \"no\"]}, \"reply\": {\"type\": \"string\"}}}}";
    th_llm_push(o, &(th_llm_answer){.text = "{\"intent\": \"maybe\", \"reply\": 42}"});
    th_llm_push(o, &(th_llm_answer){.text = "{\"intent\": \"yes\", \"reply\": 42}"});
    th_llm_push(o, &(th_llm_answer){.text = "{\"intent\": \"yes\", \"reply\": \"ok\"}"});
    row = run_once(db, tenant, intent_schema, "\"max_attempts\": 2");
    assert_string_equal(jstr(row, "state"), "failed");
    assert_string_equal(jstr(row, "error.code"), "invalid_json");
    assert_non_null(strstr(jstr(row, "error.message"), "at \"/reply\": must be a string"));
    json_decref(row);
    row = run_once(db, tenant, intent_schema, "");
    assert_string_equal(jstr(row, "state"), "succeeded");
    assert_string_equal(jstr(row, "output.json.reply"), "ok");
    json_decref(row);

    /* json: true sends json_object */
    row = run_once(db, tenant, "{\"model\": \"m\", \"prompt\": \"j\", \"json\": true}", "");
    assert_true(json_is_true(json_object_get(json_object_get(json_object_get(row, "output"),
                                                             "json"),
                                             "ok")));
    req = th_llm_request(o, th_llm_calls(o) - 1);
    assert_string_equal(jstr(req, "body.response_format.type"), "json_object");
    json_decref(req);
    json_decref(row);
    th_llm_stop(o);
    free(db);
}

/* Ms between the arrivals of requests i and j of mock m. */
static long long gap_ms(th_llm *m, unsigned long i, unsigned long j)
{
    json_t *a = th_llm_request(m, i), *b = th_llm_request(m, j);
    assert_non_null(a);
    assert_non_null(b);
    long long g = jint(b, "at_ms", NULL) - jint(a, "at_ms", NULL);
    json_decref(a);
    json_decref(b);
    return g;
}

static void test_retry_classes(void **state)
{
    (void)state;
    clear_env();
    th_llm *o = th_llm_start(TH_LLM_OPENAI), *a = th_llm_start(TH_LLM_ANTHROPIC);
    use_openai(o);
    use_anthropic(a);
    long long tenant;
    char *db = th_engine_db("llm_retry", &tenant);
    const char *in = "{\"model\": \"m\", \"prompt\": \"r\"}";

    /* 429 with retry-after: 1 s (backoff alone would be 50 ms) */
    th_llm_push(o, &(th_llm_answer){.status = 429, .retry_after = "1"});
    json_t *row = run_once(db, tenant, in, "");
    assert_string_equal(jstr(row, "state"), "succeeded");
    assert_true(gap_ms(o, 0, 1) >= 950);
    json_decref(row);

    /* retry-after-ms wins over retry-after; 500, 408 and 409 are retried too */
    unsigned long n0 = th_llm_calls(o);
    th_llm_push(o, &(th_llm_answer){.status = 500, .retry_after_ms = "400", .retry_after = "30"});
    th_llm_push(o, &(th_llm_answer){.status = 408});
    th_llm_push(o, &(th_llm_answer){.status = 409});
    row = run_once(db, tenant, in, "\"max_attempts\": 5");
    assert_string_equal(jstr(row, "state"), "succeeded");
    assert_int_equal(jint(row, "attempts", NULL), 4);
    long long g = gap_ms(o, n0, n0 + 1);
    assert_true(g >= 380 && g < 5000);
    json_decref(row);

    /* permanent: 400, 401, 403, 404, 422 and insufficient_quota fail at once */
    const int permanent[] = {400, 401, 403, 404, 422};
    for (size_t i = 0; i < ENG_ARRAY_LEN(permanent); i++) {
        n0 = th_llm_calls(o);
        th_llm_push(o, &(th_llm_answer){.status = permanent[i]});
        row = run_once(db, tenant, in, "");
        assert_string_equal(jstr(row, "state"), "failed");
        assert_int_equal(jint(row, "attempts", NULL), 1);
        assert_int_equal(th_llm_calls(o) - n0, 1);
        json_decref(row);
    }
    n0 = th_llm_calls(o);
    th_llm_push(o, &(th_llm_answer){.status = 429, .code = "insufficient_quota"});
    row = run_once(db, tenant, in, "");
    assert_string_equal(jstr(row, "state"), "failed");
    assert_string_equal(jstr(row, "error.code"), "insufficient_quota");
    assert_int_equal(th_llm_calls(o) - n0, 1);
    json_decref(row);

    /* x-should-retry: false makes a 503 final */
    th_llm_push(o, &(th_llm_answer){.status = 503, .should_retry = "false"});
    row = run_once(db, tenant, in, "");
    assert_string_equal(jstr(row, "state"), "failed");
    json_decref(row);

    /* Anthropic 529 overloaded_error and 429 rate_limit_error are retried */
    th_llm_push(a, &(th_llm_answer){.status = 529});
    th_llm_push(a, &(th_llm_answer){.status = 429});
    row = run_once(db, tenant,
                   "{\"provider\": \"anthropic\", \"model\": \"m\", \"prompt\": "
                   "\"r\"}",
                   "");
    assert_string_equal(jstr(row, "state"), "succeeded");
    assert_int_equal(jint(row, "attempts", NULL), 3);
    json_decref(row);

    /* a connection closed without an answer is retried */
    th_llm_push(o, &(th_llm_answer){.drop = true});
    row = run_once(db, tenant, in, "");
    assert_string_equal(jstr(row, "state"), "succeeded");
    assert_int_equal(jint(row, "attempts", NULL), 2);
    json_decref(row);
    th_llm_stop(o);
    th_llm_stop(a);
    free(db);
}

/* ------------------------------------------------------------------------------- replay -- */

static void test_recorded_output_replay(void **state)
{
    (void)state;
    clear_env();
    th_llm *o = th_llm_start(TH_LLM_OPENAI);
    use_openai(o);
    long long tenant;
    char *db = th_engine_db("llm_replay", &tenant);
    long long wf = llm_workflow(db, tenant, "{\"model\": \"m\", \"prompt\": \"once\"}", "");
    run_all(db, tenant, wf, 1, 30);
    json_t *first = step_row(db, wf);
    assert_string_equal(jstr(first, "state"), "succeeded");
    assert_int_equal(th_llm_calls(o), 1);
    /* as after a crash between the answer and its report: the reaper hands the step back with
     * the attempt it used counted, and it runs again as attempt 2 */
    char *sql = eng_xasprintf(
        "WITH s AS (UPDATE steps SET state = 'ready', output = NULL, finished_at = NULL,"
        " run_at = now() WHERE run_id IN (SELECT id FROM runs WHERE"
        " workflow_id = %lld) RETURNING run_id)"
        " UPDATE runs SET state = 'running', steps_done = 0, finished_at = NULL"
        " WHERE id IN (SELECT run_id FROM s) RETURNING 1",
        wf);
    assert_int_equal(th_pg_long(db, sql), 1);
    free(sql);
    th_workers *ws = th_workers_start(db, 1, "replay", 0, 0, 0);
    char *wait = eng_xasprintf("SELECT count(*) = 1 FROM steps s JOIN runs r ON r.id = s.run_id"
                               " WHERE r.workflow_id = %lld AND s.state = 'succeeded'",
                               wf);
    bool done = th_engine_wait(db, wait, 30);
    free(wait);
    th_workers_stop(ws);
    assert_true(done);
    json_t *second = step_row(db, wf);
    assert_int_equal(th_llm_calls(o), 1); /* not called (nor paid) twice */
    assert_true(json_equal(json_object_get(first, "output"), json_object_get(second, "output")));
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM llm_records"), 1);
    json_decref(first);
    json_decref(second);
    th_llm_stop(o);
    free(db);
}

/* How many steps of the workflow's runs match cond (SQL about s, the step). */
static long steps_where(const char *db, long long wf, const char *cond)
{
    return th_pg_longf(db,
                       "SELECT count(*) FROM steps s JOIN runs r ON r.id = s.run_id"
                       " WHERE r.workflow_id = %lld AND %s",
                       wf, cond);
}

/* Waits up to timeout_s for the workflow's only run to succeed. */
static bool run_succeeds(const char *db, long long wf, double timeout_s)
{
    char *sql = eng_xasprintf("SELECT count(*) = 1 FROM runs WHERE workflow_id = %lld"
                              " AND state = 'succeeded'",
                              wf);
    bool ok = th_engine_wait(db, sql, timeout_s);
    free(sql);
    return ok;
}

/* One llm step whose call the mock holds for 3 s, on one in-process worker with leases of lease_ms
 * (renewed every third of that); before_sql (may be NULL) runs on the new database before the
 * worker starts. Returns once the mock has the call. */
typedef struct slow_call {
    th_llm *mock;
    char *db;
    long long wf;
    th_workers *ws;
} slow_call;

static slow_call slow_call_start(const char *prefix, int lease_ms, const char *before_sql)
{
    clear_env();
    slow_call sc = {.mock = th_llm_start(TH_LLM_OPENAI)};
    use_openai(sc.mock);
    th_llm_set_default(sc.mock, &(th_llm_answer){.delay_ms = 3000});
    long long tenant;
    sc.db = th_engine_db(prefix, &tenant);
    sc.wf = llm_workflow(sc.db, tenant, "{\"model\": \"m\", \"prompt\": \"slow\"}", "");
    if (before_sql)
        free(th_pg_value(sc.db, before_sql));
    th_engine_enqueue(sc.db, tenant, sc.wf, 1, NULL, 0);
    sc.ws = th_workers_start(sc.db, 1, prefix, 0, 0, lease_ms);
    long long deadline = th_now_ms() + 10000;
    while (th_llm_calls(sc.mock) < 1 && th_now_ms() < deadline)
        th_sleep_ms(10);
    assert_int_equal(th_llm_calls(sc.mock), 1);
    return sc;
}

/* Waits past the moment the mock answers the first call, stops the worker and returns how many
 * LLM answers were recorded (an answer that arrives is recorded for its step even when its
 * outcome is then refused). */
static long slow_call_finish(slow_call *sc)
{
    th_sleep_ms(4000);
    th_workers_stop(sc->ws);
    return th_pg_long(sc->db, "SELECT count(*) FROM llm_records");
}

static void slow_call_free(slow_call *sc)
{
    th_llm_stop(sc->mock);
    free(sc->db);
}

/* A worker whose lease was taken over (the reaper gave the step to another claimer after this
 * worker's renewals stopped landing) stops the call at its next renewal: the answer is neither
 * waited for nor recorded, and the other claimer's attempt is left alone. */
static void test_lease_lost_stops_call(void **state)
{
    (void)state;
    slow_call sc = slow_call_start("llm_lease", 900, NULL);
    assert_int_equal(th_pg_long(sc.db, "WITH u AS (UPDATE steps SET lease_owner = 'another-worker',"
                                       " lease_expires_at = now() + interval '1 hour'"
                                       " WHERE state = 'running' RETURNING 1) SELECT count(*) FROM u"),
                     1);
    assert_int_equal(slow_call_finish(&sc), 0);
    assert_int_equal(steps_where(sc.db, sc.wf,
                                 "s.state = 'running' AND s.lease_owner = 'another-worker'"
                                 " AND s.attempts = 1"),
                     1);
    assert_int_equal(th_llm_calls(sc.mock), 1);
    slow_call_free(&sc);
}

/* Renewals that stop landing (here: each one fails) make the worker stop the call before its lease
 * can run out, and claim nothing more: the reaper hands the step back once the worker's lease has
 * lapsed, and no answer is recorded from an attempt that another worker may be repeating. */
static void test_unrenewed_lease_stops_call(void **state)
{
    (void)state;
    slow_call sc = slow_call_start(
        "llm_unrenewed", 900,
        "CREATE OR REPLACE FUNCTION flowd_worker_leases(p_owner text, p_lease_ms integer,"
        " p_ids bigint[], p_release bigint[], p_release_attempts integer[],"
        " p_release_claimed bigint[], p_fresh_pid integer) RETURNS SETOF bigint"
        " LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'renewals refused'; END $$");
    assert_int_equal(slow_call_finish(&sc), 0);
    assert_int_equal(th_llm_calls(sc.mock), 1);
    assert_int_equal(steps_where(sc.db, sc.wf,
                                 "s.state = 'ready' AND s.attempts = 0 AND s.interruptions = 1"
                                 " AND s.error->>'code' = 'lease_expired'"),
                     1);
    slow_call_free(&sc);
}

/* Renewals write one row per worker: the running step's row stays as the claim left it while its
 * worker's lease moves on. */
static void test_renewals_leave_steps_alone(void **state)
{
    (void)state;
    /* a lease with room for a slow renewal on a busy machine: the step must keep its row */
    slow_call sc = slow_call_start("llm_renewals", 1500, NULL);
    char *xmin = th_pg_value(sc.db, "SELECT xmin::text FROM steps WHERE state = 'running'");
    char *until = th_pg_value(sc.db, "SELECT expires_at::text FROM worker_leases"
                                     " WHERE owner = 'llm_renewals-0'");
    assert_non_null(xmin);
    assert_non_null(until);
    th_sleep_ms(1600); /* three renewals */
    char *sql = eng_xasprintf("SELECT count(*) FROM steps WHERE state = 'running'"
                              " AND xmin::text = '%s'",
                              xmin);
    assert_int_equal(th_pg_long(sc.db, sql), 1);
    free(sql);
    sql = eng_xasprintf("SELECT count(*) FROM worker_leases WHERE owner = 'llm_renewals-0'"
                        " AND expires_at > '%s'",
                        until);
    assert_int_equal(th_pg_long(sc.db, sql), 1);
    free(sql);
    free(xmin);
    free(until);
    assert_int_equal(slow_call_finish(&sc), 1); /* and the call lived to its answer */
    slow_call_free(&sc);
}

/* A renewal stuck for longer than the lease makes the worker stop the call; once renewals land
 * again, its lease is alive, so nobody else would ever hand the step back: the worker does,
 * and the step runs again (the stopped attempt is an interruption: its attempt is given back). */
static void test_stopped_step_handed_back(void **state)
{
    (void)state;
    slow_call sc = slow_call_start(
        "llm_handback", 900,
        "CREATE TABLE renew_stalls (n integer); INSERT INTO renew_stalls VALUES (1);"
        " ALTER FUNCTION flowd_worker_leases(text, integer, bigint[], bigint[], integer[],"
        " bigint[], integer) RENAME TO flowd_worker_leases_real;"
        " CREATE FUNCTION flowd_worker_leases(p_owner text, p_lease_ms integer, p_ids bigint[],"
        " p_release bigint[], p_release_attempts integer[], p_release_claimed bigint[],"
        " p_fresh_pid integer)"
        " RETURNS SETOF bigint"
        " LANGUAGE plpgsql AS $$ BEGIN"
        " IF (SELECT n FROM renew_stalls) > 0 THEN"
        " UPDATE renew_stalls SET n = n - 1; PERFORM pg_sleep(2); END IF;"
        " RETURN QUERY SELECT * FROM flowd_worker_leases_real(p_owner, p_lease_ms, p_ids,"
        " p_release, p_release_attempts, p_release_claimed, p_fresh_pid); END $$");
    bool finished = run_succeeds(sc.db, sc.wf, 20);
    th_workers_stop(sc.ws);
    assert_true(finished);
    assert_int_equal(th_llm_calls(sc.mock), 2);
    assert_int_equal(steps_where(sc.db, sc.wf, "s.attempts = 1 AND s.interruptions = 1"), 1);
    assert_int_equal(th_pg_long(sc.db, "SELECT count(*) FROM llm_records"), 1);
    slow_call_free(&sc);
}

/* A claim whose answer was lost with its connection leaves a step running in the worker's name
 * that the worker never saw, under a lease the worker keeps alive: the first renewal on its new
 * connection hands it back. */
static void test_unseen_claim_handed_back(void **state)
{
    (void)state;
    clear_env();
    th_llm *o = th_llm_start(TH_LLM_OPENAI);
    use_openai(o);
    long long tenant;
    char *db = th_engine_db("llm_unseen", &tenant);
    long long wf = llm_workflow(db, tenant, "{\"model\": \"m\", \"prompt\": \"unseen\"}", "");
    th_engine_enqueue(db, tenant, wf, 1, NULL, 0);
    assert_int_equal(th_pg_long(db, "WITH u AS (UPDATE steps SET state = 'running', attempts = 1,"
                                    " lease_owner = 'llm_unseen-0',"
                                    " lease_expires_at = now() - interval '1 minute'"
                                    " RETURNING 1) SELECT count(*) FROM u"),
                     1);
    free(th_pg_value(db, "INSERT INTO worker_leases VALUES ('llm_unseen-0', now() + interval '1 hour')"));
    th_workers *ws = th_workers_start(db, 1, "llm_unseen", 0, 0, 900);
    bool finished = run_succeeds(db, wf, 20);
    th_workers_stop(ws);
    assert_true(finished);
    assert_int_equal(th_llm_calls(o), 1);
    assert_int_equal(steps_where(db, wf, "s.attempts = 1 AND s.interruptions = 1"), 1);
    th_llm_stop(o);
    free(db);
}

/* ------------------------------------------------------------------------------ sandbox -- */

static void test_sandbox(void **state)
{
    (void)state;
    clear_env();
    long long tenant;
    char *db = th_engine_db("llm_sandbox", &tenant);
    long long wf = llm_workflow(db, tenant,
                                "{\"model\": \"gpt-4o-mini\", \"prompt\": \"Write a haiku\"}", "");
    run_all(db, tenant, wf, 2, 30);
    char *sql = eng_xasprintf("SELECT count(DISTINCT s.output->>'text') || ':' ||"
                              " min(s.output->>'provider') || ':' || min(s.state)"
                              " FROM steps s JOIN runs r ON r.id = s.run_id"
                              " WHERE r.workflow_id = %lld",
                              wf);
    char *v = th_pg_value(db, sql);
    free(sql);
    assert_string_equal(v, "1:sandbox:succeeded"); /* same answer for the same prompt */
    free(v);
    json_t *row = step_row(db, wf);
    assert_non_null(strstr(jstr(row, "output.text"), "Write a haiku"));
    json_decref(row);

    /* JSON mode in the sandbox answers in the schema's shape */
    row = run_once(db, tenant,
                   "{\"model\": \"m\", \"prompt\": \"p\", \"json_schema\": {\"type\": "
                   "\"object\", \"properties\": {\"n\": {\"type\": \"integer\"}, \"tags\": "
                   "{\"type\": \"array\", \"items\": {\"type\": \"string\"}}}}}",
                   "");
    json_t *j = json_object_get(json_object_get(row, "output"), "json");
    assert_true(json_is_integer(json_object_get(j, "n")));
    assert_true(json_is_array(json_object_get(j, "tags")));
    json_decref(row);
    free(db);
}

/* ------------------------------------------------------------------------- validation -- */

static void test_validation(void **state)
{
    (void)state;
    th_expect_step_invalid("llm", "{\"prompt\": \"x\"}", "/steps/0/input/model");
    th_expect_step_invalid("llm", "{\"model\": \"m\"}", "/steps/0/input");
    th_expect_step_invalid("llm", "{\"model\": \"m\", \"prompt\": \"x\", \"messages\": []}",
                           "/steps/0/input");
    th_expect_step_invalid("llm", "{\"model\": \"m\", \"provider\": \"bard\", \"prompt\": \"x\"}",
                           "/steps/0/input/provider");
    th_expect_step_invalid(
        "llm", "{\"model\": \"m\", \"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}",
        "/steps/0/input/messages/0/role");
    th_expect_step_invalid("llm", "{\"model\": \"m\", \"prompt\": \"x\", \"max_tokens\": 0}",
                           "/steps/0/input/max_tokens");
    /* keywords the validator does not support are refused where they are written */
    th_expect_step_invalid("llm",
                           "{\"model\": \"m\", \"prompt\": \"x\", \"json_schema\": {\"type\":"
                           " \"object\", \"properties\": {\"d\": {\"type\": \"string\","
                           " \"format\": \"date\"}}}}",
                           "/steps/0/input/json_schema/properties/d/format");
    th_expect_step_invalid("llm", "{\"model\": \"m\", \"prompt\": \"x\", \"temperature\": 3}",
                           "/steps/0/input/temperature");
    th_expect_step_invalid("llm",
                           "{\"model\": \"m\", \"prompt\": \"x\", \"fallback\": [{\"provider\": "
                           "\"openai\"}]}",
                           "/steps/0/input/fallback/0/model");
    th_expect_step_invalid("llm",
                           "{\"model\": \"m\", \"prompt\": \"x\", \"base_url\": \"http://h/v1\"}",
                           "/steps/0/input/base_url");
    /* templated values are checked once rendered, not at registration */
    json_t *doc = json_loads("{\"name\": \"v\", \"steps\": [{\"key\": \"a\", \"kind\": \"llm\","
                             " \"input\": {\"model\": \"m\", \"provider\": \"{{input.p}}\","
                             " \"prompt\": \"{{input.q}}\"}}]}",
                             0, NULL);
    json_t *out = NULL;
    assert_int_equal(wf_def_compile(doc, &out, NULL), ENG_OK);
    json_decref(out);
    json_decref(doc);
}

/* ----------------------------------------------------------------------- rate limits -- */

static void test_rate_limit_two_worker_sets(void **state)
{
    (void)state;
    clear_env();
    th_llm *o = th_llm_start(TH_LLM_OPENAI);
    use_openai(o);
    long long tenant;
    char *db = th_engine_db("llm_rl", &tenant);
    enum { N = 12 };
    /* 5 requests/s, burst 1: 12 calls need at least 11 / 5 = 2.2 s whoever makes them */
    free(th_pg_value(db, "INSERT INTO rate_limits (name, requests_per_s, burst_requests)"
                         " VALUES ('openai', 5, 1) RETURNING id"));
    long long wf = llm_workflow(db, tenant, "{\"model\": \"m\", \"prompt\": \"{{input.n}}\"}", "");
    th_engine_enqueue(db, tenant, wf, N, "{\"n\": \"same\"}", 0);
    th_workers *w1 = th_workers_start(db, 1, "rl-a", 0, 0, 0);
    th_workers *w2 = th_workers_start(db, 1, "rl-b", 0, 0, 0);
    bool done = th_engine_wait(db, "SELECT count(*) = 12 FROM runs WHERE state = 'succeeded'", 60);
    th_workers_stop(w1);
    th_workers_stop(w2);
    assert_true(done);
    assert_int_equal(th_llm_calls(o), N);
    /* no attempt was spent waiting for budget */
    assert_int_equal(th_pg_long(db, "SELECT max(attempts) FROM steps"), 1);
    /* every window of k+1 consecutive calls spans at least (k - burst) / rate */
    for (unsigned long i = 0; i + 5 < N; i++) {
        long long g = gap_ms(o, i, i + 5);
        if (g < 800)
            fail_msg("calls %lu..%lu arrived within %lld ms", i, i + 5, g);
    }
    assert_true(gap_ms(o, 0, N - 1) >= 2000);
    th_llm_stop(o);
    free(db);
}

typedef struct takes {
    int called, granted, told_to_wait;
} takes;

static void take_cb(void *arg, const eng_err *err, int64_t wait_ms)
{
    takes *t = arg;
    assert_null(err);
    t->called++;
    if (wait_ms == 0)
        t->granted++;
    else
        t->told_to_wait++;
}

static void loop_until(struct ev_loop *loop, const int *count, int want)
{
    ev_tstamp end = ev_time() + 10;
    while (*count < want && ev_time() < end)
        ev_run(loop, EVRUN_ONCE | EVRUN_NOWAIT);
    assert_int_equal(*count, want);
}

/* A burst of takes of a name not known yet sends one query: the others wait for its answer and
 * pass at once when the name has no limit, or each ask for their own budget when it has one. */
static void test_rate_limit_burst_asks_once(void **state)
{
    (void)state;
    rl_cache_clear();
    long long tenant;
    char *conninfo = th_engine_db("llm_rlprobe", &tenant);
    free(th_pg_value(conninfo, "INSERT INTO rate_limits (name, requests_per_s, burst_requests)"
                               " VALUES ('probe-limited', 0.01, 3) RETURNING id"));
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    eng_db *db = eng_db_new(loop, &(eng_db_opts){.conninfo = conninfo});
    enum { N = 100 };

    takes free_run = {0};
    rl_take *cancelled = NULL;
    for (int i = 0; i < N; i++) {
        rl_take *t;
        assert_false(rl_take_start(db, tenant, "probe-free", 1, 0, take_cb, &free_run, &t));
        assert_non_null(t);
        if (i == N / 2)
            cancelled = t;
    }
    assert_int_equal(eng_db_pending(db), 1);
    rl_take_cancel(cancelled);
    loop_until(loop, &free_run.called, N - 1);
    assert_int_equal(free_run.granted, N - 1);
    /* known now: granted at once, without a query, and the callback never runs (it is not called
     * from inside the call that starts the take, nor later) */
    rl_take *t = (rl_take *)&free_run;
    assert_true(rl_take_start(db, tenant, "probe-free", 1, 0, take_cb, &free_run, &t));
    assert_null(t);
    assert_int_equal(eng_db_pending(db), 0);
    for (int i = 0; i < 10; i++)
        ev_run(loop, EVRUN_ONCE | EVRUN_NOWAIT);
    assert_int_equal(free_run.called, N - 1);

    takes limited = {0};
    for (int i = 0; i < 5; i++) {
        assert_false(rl_take_start(db, tenant, "probe-limited", 1, 0, take_cb, &limited, &t));
        assert_non_null(t);
    }
    assert_int_equal(eng_db_pending(db), 1);
    loop_until(loop, &limited.called, 5);
    assert_int_equal(limited.granted, 3); /* the burst */
    assert_int_equal(limited.told_to_wait, 2);

    eng_db_free(db);
    ev_loop_destroy(loop);
    rl_cache_clear();
    free(conninfo);
}

/* ----------------------------------------------------------------------------- secrets -- */

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = eng_xmalloc((size_t)n + 1);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = '\0';
    fclose(f);
    return s;
}

static void test_secrets_not_logged(void **state)
{
    (void)state;
    clear_env();
    th_llm *o = th_llm_start(TH_LLM_OPENAI);
    /* a provider echoing the key back in its error, as OpenAI's 401 partly does */
    th_llm_push(o, &(th_llm_answer){.status = 401,
                                    .message = "Incorrect API key provided: " OPENAI_KEY});
    th_llm_push(o, &(th_llm_answer){.status = 500, .message = "upstream saw Bearer " OPENAI_KEY});
    long long tenant;
    char *db = th_engine_db("llm_secret", &tenant);
    long long wf = llm_workflow(db, tenant, "{\"model\": \"m\", \"prompt\": \"s\"}", "");
    long long wf2 = llm_workflow(db, tenant, "{\"model\": \"m\", \"prompt\": \"t\"}", "");
    th_engine_enqueue(db, tenant, wf, 1, NULL, 0);
    th_engine_enqueue(db, tenant, wf2, 1, NULL, 0);

    char logpath[] = "/tmp/flowd-llm-log.XXXXXX";
    int fd = mkstemp(logpath);
    assert_true(fd >= 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fd, 2);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        setenv("OPENAI_API_KEY", OPENAI_KEY, 1);
        setenv("OPENAI_BASE_URL", th_llm_base_url(o), 1);
        setenv("FLOWD_LOG_LEVEL", "debug", 1);
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* no server outlives a failed test */
        execl(th_flowd_bin(), "flowd", "--database", db, "serve", "--workers", "1", "--role",
              "worker", (char *)NULL);
        _exit(127);
    }
    close(fd);
    bool done = th_engine_wait(db,
                               "SELECT count(*) = 2 FROM runs WHERE state IN ('succeeded', "
                               "'failed')",
                               60);
    kill(pid, SIGTERM);
    int status;
    waitpid(pid, &status, 0);
    assert_true(done);
    char *log = read_file(logpath);
    unlink(logpath);
    assert_true(strlen(log) > 0);
    if (strstr(log, OPENAI_KEY) || strstr(log, "Secret0123456789"))
        fail_msg("the key is in the log:\n%s", log);
    char *all = th_pg_value(db, "SELECT coalesce(string_agg(coalesce(output::text, '') ||"
                                " coalesce(error::text, ''), ' '), '') FROM steps");
    char *events = th_pg_value(db, "SELECT coalesce(string_agg(coalesce(data::text, ''), ' '),"
                                   " '') FROM run_log");
    assert_null(strstr(all, "Secret0123456789"));
    assert_null(strstr(events, "Secret0123456789"));
    assert_non_null(strstr(all, "invalid_api_key")); /* the reason itself is kept */
    free(all);
    free(events);
    free(log);
    th_llm_stop(o);
    free(db);
}

/* Per-tenant settings override the environment; the environment's key never follows a tenant's
 * own base URL. */
static void test_tenant_settings(void **state)
{
    (void)state;
    clear_env();
    th_llm *env_mock = th_llm_start(TH_LLM_OPENAI), *ten_mock = th_llm_start(TH_LLM_OPENAI);
    use_openai(env_mock);
    long long tenant;
    char *db = th_engine_db("llm_tenant", &tenant);
    char *sql = eng_xasprintf("INSERT INTO provider_settings (tenant_id, provider, settings) VALUES"
                              " (%lld, 'openai', '{\"base_url\": \"%s\", \"api_key\": "
                              "\"sk-tenant-own-key-1234\"}') RETURNING 1",
                              tenant, th_llm_base_url(ten_mock));
    assert_int_equal(th_pg_long(db, sql), 1);
    free(sql);
    long long wf = llm_workflow(db, tenant, "{\"model\": \"m\", \"prompt\": \"t\"}", "");
    run_all(db, tenant, wf, 1, 30);
    assert_int_equal(th_llm_calls(env_mock), 0);
    assert_int_equal(th_llm_calls(ten_mock), 1);
    json_t *req = th_llm_request(ten_mock, 0);
    assert_string_equal(jstr(req, "authorization"), "Bearer sk-tenant-own-key-1234");
    json_decref(req);

    /* a tenant base URL without a key: sandbox, never the operator's key */
    json_t *ts = json_pack("{s:s}", "base_url", "http://127.0.0.1:9/v1");
    prov_config *c = prov_config_merge(PROV_OPENAI, ts);
    assert_true(prov_config_sandbox(c));
    assert_null(prov_config_get(c, "api_key"));
    prov_config_free(c);
    json_decref(ts);
    c = prov_config_from_env(PROV_OPENAI);
    assert_false(prov_config_sandbox(c));
    char *red = prov_redact(c, "key " OPENAI_KEY " and Bearer abcdefgh1234");
    assert_null(strstr(red, "Secret0123"));
    assert_null(strstr(red, "abcdefgh1234"));
    free(red);
    prov_config_free(c);
    th_llm_stop(env_mock);
    th_llm_stop(ten_mock);
    free(db);
}

static void test_duration_and_headers(void **state)
{
    (void)state;
    int64_t ms;
    assert_true(prov_parse_go_duration("1s", &ms) && ms == 1000);
    assert_true(prov_parse_go_duration("6m0s", &ms) && ms == 360000);
    assert_true(prov_parse_go_duration("12ms", &ms) && ms == 12);
    assert_true(prov_parse_go_duration("1h2m3.5s", &ms) && ms == 3723500);
    assert_true(prov_parse_go_duration("250us", &ms) && ms == 1);
    assert_false(prov_parse_go_duration("soon", &ms));
    assert_false(prov_parse_go_duration("5", &ms));
    assert_false(prov_parse_go_duration("", &ms));
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
        cmocka_unit_test(test_duration_and_headers),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_openai_shape),
        cmocka_unit_test(test_anthropic_shape),
        cmocka_unit_test(test_streams),
        cmocka_unit_test(test_fallback),
        cmocka_unit_test(test_json_mode_retry),
        cmocka_unit_test(test_retry_classes),
        cmocka_unit_test(test_recorded_output_replay),
        cmocka_unit_test(test_lease_lost_stops_call),
        cmocka_unit_test(test_unrenewed_lease_stops_call),
        cmocka_unit_test(test_renewals_leave_steps_alone),
        cmocka_unit_test(test_stopped_step_handed_back),
        cmocka_unit_test(test_unseen_claim_handed_back),
        cmocka_unit_test(test_sandbox),
        cmocka_unit_test(test_tenant_settings),
        cmocka_unit_test(test_rate_limit_two_worker_sets),
        cmocka_unit_test(test_rate_limit_burst_asks_once),
        cmocka_unit_test(test_secrets_not_logged),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    clear_env();
    eng_httpc_global_cleanup();
    return rc;
}
