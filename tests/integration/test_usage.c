/* tests/integration/test_usage.c: usage recording, prices, rollups and GET /v1/usage, through the
 * API with in-process workers against the mock providers of tests/support.
 *
 * Recording: a call that fell back is recorded once, on the provider that answered; an answer
 * replayed from its record is not recorded again; an accepted message is recorded once however
 * often its row is written. Prices: a tenant's price applies to later calls only. Rollups: two
 * processes writing usage at once, over several days of the engine clock, leave rollups equal to
 * the sums of the raw records; a batch is priced once per model, each record at its price. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/mem.h"
#include "engine/metrics.h"
#include "steps/provider.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_engine.h"
#include "tests/support/th_mockllm.h"

/* PUT /v1/workflows/NAME with the given steps (JSON text). */
static void put_workflow(th_api *a, const char *name, const char *steps)
{
    char *path = eng_xasprintf("/v1/workflows/%s", name);
    char *body = eng_xasprintf("{\"steps\": %s}", steps);
    long status;
    char *resp = th_api_raw(a, "PUT", path, body, &status);
    if (status != 200 && status != 201)
        fail_msg("PUT %s: %ld %s", path, status, resp);
    free(resp);
    free(path);
    free(body);
}

static json_int_t jpath_int(const json_t *j, const char *a, const char *b, const char *c)
{
    const json_t *v = json_object_get(json_object_get(j, a), b);
    return json_integer_value(c ? json_object_get(v, c) : v);
}

static void clear_llm_env(void)
{
    static const char *const names[] = {"OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY",
                                        "ANTHROPIC_BASE_URL"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(names); i++)
        unsetenv(names[i]);
    prov_config_cache_clear();
}

static void test_llm_usage(void **state)
{
    (void)state;
    th_llm *o = th_llm_start(TH_LLM_OPENAI), *an = th_llm_start(TH_LLM_ANTHROPIC);
    setenv("OPENAI_API_KEY", "sk-test-usage", 1);
    setenv("OPENAI_BASE_URL", th_llm_base_url(o), 1);
    setenv("ANTHROPIC_API_KEY", "sk-ant-test-usage", 1);
    setenv("ANTHROPIC_BASE_URL", th_llm_base_url(an), 1);
    prov_config_cache_clear();
    th_llm_set_default(o, &(th_llm_answer){.status = 503});
    th_api *a = th_api_start(&(th_api_opts){.prefix = "usage_llm"});
    const char *db = th_api_db(a);
    put_workflow(a, "fb",
                 "[{\"key\": \"ask\", \"kind\": \"llm\", \"retry\": {\"backoff\": {\"initial\": "
                 "\"50ms\"}, \"jitter\": 0}, \"input\": {\"model\": \"gpt-4o\", \"prompt\": "
                 "\"{{input.q}}\", \"attempts_per_provider\": 2, \"fallback\": [{\"provider\": "
                 "\"anthropic\", \"model\": \"claude-sonnet-4-5\"}]}}]");

    /* two failed calls to the primary (not paid: 503), then the fallback answers */
    long long run = th_api_start_run(a, "fb", "{\"q\": \"one\"}");
    json_decref(th_api_wait_run(a, run, 20, 30, NULL, NULL));
    assert_int_equal(th_llm_calls(o), 2);
    assert_int_equal(th_llm_calls(an), 1);
    assert_int_equal(th_pg_longf(db,
                                 "SELECT count(*) FROM usage_records WHERE run_id = %lld AND"
                                 " kind = 'llm' AND provider = 'anthropic' AND"
                                 " model = 'claude-sonnet-4-5' AND step_key = 'ask' AND"
                                 " workflow = 'fb' AND input_tokens > 0 AND output_tokens > 0",
                                 run),
                     1);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM usage_records WHERE run_id = %lld", run),
                     1);
    /* priced from the shipped default for claude-sonnet-4 ($3 in, $15 out per million) */
    assert_int_equal(th_pg_longf(db,
                                 "SELECT count(*) FROM usage_records WHERE run_id = %lld AND"
                                 " cost_usd = round((input_tokens * 3.0 + output_tokens * 15.0)"
                                 " / 1000000, 10) AND cost_usd > 0",
                                 run),
                     1);
    char *path = eng_xasprintf("/v1/runs/%lld", run);
    json_t *body = th_api_json(a, 200, "GET", path, NULL);
    json_t *usage = json_object_get(body, "usage");
    assert_int_equal(jpath_int(usage, "llm", "calls", NULL), 1);
    assert_int_equal(jpath_int(usage, "llm", "input_tokens", NULL),
                     th_pg_longf(db, "SELECT input_tokens FROM usage_records WHERE run_id = %lld",
                                 run));
    assert_int_equal(jpath_int(usage, "sends", "messages", NULL), 0);
    assert_true(json_real_value(json_object_get(json_object_get(usage, "llm"), "cost_usd")) > 0);
    json_decref(body);

    /* as after a crash between the answer and its report: the step runs again and replays the
     * recorded answer; nothing is called, nothing recorded twice */
    assert_int_equal(th_pg_longf(db,
                                 "WITH s AS (UPDATE steps SET state = 'ready', output = NULL,"
                                 " finished_at = NULL, max_attempts = 9, run_at = now()"
                                 " WHERE run_id = %lld RETURNING run_id)"
                                 " UPDATE runs SET state = 'running', steps_done = 0,"
                                 " finished_at = NULL WHERE id IN (SELECT run_id FROM s)"
                                 " RETURNING 1",
                                 run),
                     1);
    json_decref(th_api_wait_run(a, run, 20, 30, NULL, NULL));
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM steps WHERE run_id = %lld AND"
                                     " state = 'succeeded'", run),
                     1);
    assert_int_equal(th_llm_calls(an), 1);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM usage_records WHERE run_id = %lld", run),
                     1);
    body = th_api_json(a, 200, "GET", path, NULL);
    assert_int_equal(jpath_int(body, "usage", "llm", "calls"), 1);
    json_decref(body);
    free(path);

    /* a reply that is not the JSON asked for was answered and paid for: it is usage too */
    put_workflow(a, "js",
                 "[{\"key\": \"ask\", \"kind\": \"llm\", \"retry\": {\"backoff\": {\"initial\": "
                 "\"50ms\"}, \"jitter\": 0}, \"input\": {\"provider\": \"anthropic\", \"model\":"
                 " \"claude-sonnet-4-5\", \"prompt\": \"x\", \"json\": true}}]");
    uint64_t tok0 = eng_metrics_value("flowd_llm_tokens_total",
                                      "provider=\"anthropic\",model=\"claude-sonnet-4-5\","
                                      "direction=\"output\"");
    th_llm_push(an, &(th_llm_answer){.text = "Sure! {broken"});
    th_llm_push(an, &(th_llm_answer){.text = "{\"ok\": true}"});
    long long jrun = th_api_start_run(a, "js", "{}");
    json_decref(th_api_wait_run(a, jrun, 20, 30, NULL, NULL));
    char *paid = eng_xasprintf("SELECT count(*) = 2 FROM usage_records WHERE run_id = %lld", jrun);
    assert_true(th_engine_wait(db, paid, 10));
    free(paid);
    assert_int_equal(th_pg_longf(db,
                                 "SELECT count(*) FROM usage_records WHERE run_id = %lld AND"
                                 " NOT ok AND output_tokens > 0 AND cost_usd > 0",
                                 jrun),
                     1);
    assert_true(eng_metrics_value("flowd_llm_tokens_total",
                                  "provider=\"anthropic\",model=\"claude-sonnet-4-5\","
                                  "direction=\"output\"") > tok0);

    /* tokens read from the prompt cache are recorded with the call and priced at the cached
     * rate (claude-sonnet-4: $0.30 per million): Anthropic reports them besides input_tokens */
    th_llm_push(an, &(th_llm_answer){.text = "{\"ok\": true}", .cache_read = 1000});
    long long crun = th_api_start_run(a, "js", "{}");
    json_decref(th_api_wait_run(a, crun, 20, 30, NULL, NULL));
    assert_int_equal(th_pg_longf(db,
                                 "SELECT count(*) FROM usage_records WHERE run_id = %lld AND"
                                 " input_tokens = 1012 AND cached_tokens = 1000 AND"
                                 " cost_usd = round((12 * 3.0 + 1000 * 0.30 + output_tokens * 15.0)"
                                 " / 1000000, 10)",
                                 crun),
                     1);
    char *cpath = eng_xasprintf("/v1/runs/%lld", crun);
    body = th_api_json(a, 200, "GET", cpath, NULL);
    assert_int_equal(jpath_int(body, "usage", "llm", "cached_input_tokens"), 1000);
    json_decref(body);
    free(cpath);

    /* a tenant's own price applies from now on; the recorded cost stays what it was */
    char *before = th_pg_valuef(db, "SELECT cost_usd::text FROM usage_records WHERE run_id = %lld",
                                run);
    body = th_api_json(a, 201, "PUT", "/v1/prices",
                       "{\"model\": \"claude-sonnet-4-5\", \"provider\": \"anthropic\","
                       " \"input_usd_per_mtok\": 100, \"output_usd_per_mtok\": 200}");
    assert_string_equal(json_string_value(json_object_get(body, "scope")), "tenant");
    json_decref(body);
    const char *cost_labels = "provider=\"anthropic\",model=\"claude-sonnet-4-5\"";
    uint64_t nusd0 = eng_metrics_value("flowd_llm_cost_usd_total", cost_labels);
    long long run2 = th_api_start_run(a, "fb", "{\"q\": \"two\"}");
    json_decref(th_api_wait_run(a, run2, 20, 30, NULL, NULL));
    /* the metric counts the cost usage recorded, at the tenant's price (not the list price):
     * the counter is kept in units of 1e-9 USD */
    assert_int_equal(eng_metrics_value("flowd_llm_cost_usd_total", cost_labels) - nusd0,
                     th_pg_longf(db, "SELECT round(cost_usd * 1000000000) FROM usage_records"
                                     " WHERE run_id = %lld AND cost_usd > 0.001", run2));
    assert_int_equal(th_pg_longf(db,
                                 "SELECT count(*) FROM usage_records WHERE run_id = %lld AND"
                                 " cost_usd = round((input_tokens * 100.0 + output_tokens * 200.0)"
                                 " / 1000000, 10)",
                                 run2),
                     1);
    char *after = th_pg_valuef(db, "SELECT cost_usd::text FROM usage_records WHERE run_id = %lld",
                               run);
    assert_string_equal(before, after);
    free(before);
    free(after);
    body = th_api_json(a, 200, "GET", "/v1/prices", NULL);
    assert_true(json_array_size(json_object_get(body, "prices")) >= 10);
    json_decref(body);
    /* bad prices are refused naming the field, and nothing is written */
    static const struct {
        const char *body, *field;
    } bad[] = {
        {"{\"model\": \"m\", \"input_usd_per_mtok\": 1}", "/output_usd_per_mtok"},
        {"{\"model\": \"m\", \"input_usd_per_mtok\": -1, \"output_usd_per_mtok\": 1}",
         "/input_usd_per_mtok"},
        {"{\"channel\": \"fax\", \"usd_per_message\": 1}", "/channel"},
        {"{\"channel\": \"sms\", \"usd_per_message\": 1, \"output_usd_per_mtok\": 1}",
         "/output_usd_per_mtok"},
        {"{\"input_usd_per_mtok\": 1}", "/model"},
        {"{\"channel\": \"sms\", \"usd_per_message\": 1, \"effective_from\": \"2020-01-01\"}",
         "/effective_from"},
        {"{\"channel\": \"sms\", \"usd_per_message\": 1, \"effective_from\": \"2030-01-01T25:00Z\"}",
         "/effective_from"},
    };
    long n_prices = th_pg_long(db, "SELECT count(*) FROM prices");
    for (size_t i = 0; i < ENG_ARRAY_LEN(bad); i++) {
        body = th_api_json(a, 422, "PUT", "/v1/prices", bad[i].body);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(body, "error"), "field")),
            bad[i].field);
        json_decref(body);
    }
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM prices"), n_prices);

    th_api_stop(a);
    th_llm_stop(o);
    th_llm_stop(an);
    clear_llm_env();
}

static void test_send_usage_and_api(void **state)
{
    (void)state;
    clear_llm_env();
    th_api *a = th_api_start(&(th_api_opts){.prefix = "usage_send"});
    const char *db = th_api_db(a);
    put_workflow(a, "txt",
                 "[{\"key\": \"text\", \"kind\": \"sms\", \"input\": {\"to\": \"{{input.to}}\","
                 " \"from\": \"+15555550000\", \"body\": \"hello\"}},"
                 " {\"key\": \"ask\", \"kind\": \"llm\", \"needs\": [\"text\"], \"input\":"
                 " {\"provider\": \"sandbox\", \"model\": \"gpt-4o-mini\", \"prompt\": \"hi\"}}]");
    long long run = th_api_start_run(a, "txt", "{\"to\": \"+15555550100\"}");
    json_t *body = th_api_wait_run(a, run, 20, 30, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(body, "state")), "succeeded");
    assert_int_equal(jpath_int(body, "usage", "sends", "messages"), 1);
    assert_int_equal(jpath_int(body, "usage", "sends", "segments"), 1);
    assert_int_equal(jpath_int(body, "usage", "llm", "calls"), 1);
    json_decref(body);
    assert_int_equal(th_pg_longf(db,
                                 "SELECT count(*) FROM usage_records WHERE run_id = %lld AND"
                                 " kind = 'send' AND model = 'sms' AND step_key = 'text' AND"
                                 " segments = 1 AND cost_usd = 0",
                                 run),
                     1);
    /* the sandboxes cost nothing, even with a price for the model */
    assert_int_equal(th_pg_longf(db,
                                 "SELECT count(*) FROM usage_records WHERE run_id = %lld AND"
                                 " kind = 'llm' AND provider = 'sandbox' AND cost_usd = 0",
                                 run),
                     1);
    /* the answer recorded again (a late retry of the record) is not a second message; an
     * ambiguous send an operator settles as sent is one */
    assert_int_equal(th_pg_longf(db,
                                 "SELECT count(flowd_send_record(tenant_id, send_key, 'accepted',"
                                 " NULL, result, NULL, NULL)) FROM sends WHERE run_id = %lld",
                                 run),
                     1);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM usage_records WHERE run_id = %lld", run),
                     2);
    assert_int_equal(th_pg_longf(db,
                                 "WITH u AS (UPDATE sends SET state = 'unknown' WHERE run_id = %lld"
                                 " RETURNING tenant_id, send_key)"
                                 " SELECT count(flowd_send_resolve(tenant_id, send_key, 'sent', NULL))"
                                 " FROM u",
                                 run),
                     1);
    assert_int_equal(th_pg_longf(db,
                                 "SELECT count(*) FROM usage_records WHERE run_id = %lld AND"
                                 " kind = 'send'",
                                 run),
                     2);

    /* a batch carries the usage of its runs */
    json_t *batch = th_api_json(a, 201, "POST", "/v1/batches",
                                "{\"workflow\": \"txt\", \"inputs\": [{\"to\": \"+15555550101\"},"
                                " {\"to\": \"+15555550102\"}, {\"to\": \"+15555550103\"}]}");
    long long bid = json_integer_value(json_object_get(batch, "id"));
    json_decref(batch);
    char *bpath = eng_xasprintf("/v1/batches/%lld", bid);
    char *wait = eng_xasprintf("SELECT count(*) = 3 FROM runs WHERE batch_id = %lld AND"
                               " state = 'succeeded'",
                               bid);
    assert_true(th_engine_wait(db, wait, 30));
    free(wait);
    batch = th_api_json(a, 200, "GET", bpath, NULL);
    assert_int_equal(jpath_int(batch, "usage", "sends", "messages"), 3);
    assert_int_equal(jpath_int(batch, "usage", "llm", "calls"), 3);
    json_decref(batch);
    free(bpath);

    /* GET /v1/usage: every grouping adds up to the same total: 4 LLM calls, 5 messages (the
     * settled send above counted as a second one) */
    static const char *const groups[] = {"day", "workflow", "model", "provider", "channel", "run"};
    for (size_t g = 0; g < ENG_ARRAY_LEN(groups); g++) {
        char *p = eng_xasprintf("/v1/usage?group_by=%s", groups[g]);
        body = th_api_json(a, 200, "GET", p, NULL);
        free(p);
        assert_int_equal(jpath_int(body, "total", "sends", "messages"), 5);
        assert_int_equal(jpath_int(body, "total", "llm", "calls"), 4);
        json_int_t msgs = 0, calls = 0;
        size_t i;
        json_t *row;
        json_array_foreach (json_object_get(body, "groups"), i, row) {
            msgs += jpath_int(row, "sends", "messages", NULL);
            calls += jpath_int(row, "llm", "calls", NULL);
        }
        assert_int_equal(msgs, 5);
        assert_int_equal(calls, 4);
        json_decref(body);
    }
    body = th_api_json(a, 200, "GET", "/v1/usage?group_by=channel", NULL);
    json_t *groups_j = json_object_get(body, "groups");
    assert_int_equal(json_array_size(groups_j), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(groups_j, 0), "key")),
                        "llm");
    assert_string_equal(json_string_value(json_object_get(json_array_get(groups_j, 1), "key")),
                        "sms");
    json_decref(body);
    body = th_api_json(a, 200, "GET", "/v1/usage?group_by=run&limit=2", NULL);
    assert_int_equal(json_array_size(json_object_get(body, "groups")), 2);
    assert_int_equal(jpath_int(body, "total", "sends", "messages"), 5);
    json_decref(body);
    /* another day range holds nothing */
    body = th_api_json(a, 200, "GET", "/v1/usage?from=2020-01-01&to=2020-01-31", NULL);
    assert_int_equal(json_array_size(json_object_get(body, "groups")), 0);
    json_decref(body);

    long status;
    char *csv = th_api_raw(a, "GET", "/v1/usage?group_by=workflow&format=csv", NULL, &status);
    assert_int_equal(status, 200);
    json_t *rows = th_api_csv_parse(csv);
    assert_non_null(rows);
    assert_int_equal(json_array_size(rows), 2);
    json_t *head = json_array_get(rows, 0), *r1 = json_array_get(rows, 1);
    assert_string_equal(json_string_value(json_array_get(head, 0)), "workflow");
    assert_string_equal(json_string_value(json_array_get(head, 6)), "messages");
    assert_string_equal(json_string_value(json_array_get(r1, 0)), "txt");
    assert_string_equal(json_string_value(json_array_get(r1, 1)), "4");
    assert_string_equal(json_string_value(json_array_get(r1, 6)), "5");
    assert_string_equal(json_string_value(json_array_get(r1, 9)), "0");
    json_decref(rows);
    free(csv);

    static const struct {
        const char *query, *field;
    } bad[] = {
        {"?from=2026-13-01", "?from"},       {"?to=2026-02-29", "?to"},
        {"?from=2026-02-02&to=2026-02-01", "?to"}, {"?group_by=week", "?group_by"},
        {"?format=xml", "?format"},          {"?limit=5", "?limit"},
        {"?group_by=run&limit=0", "?limit"}, {"?group_by=run&limit=10001", "?limit"},
    };
    for (size_t i = 0; i < ENG_ARRAY_LEN(bad); i++) {
        char *p = eng_xasprintf("/v1/usage%s", bad[i].query);
        body = th_api_json(a, 400, "GET", p, NULL);
        free(p);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(body, "error"), "field")),
            bad[i].field);
        json_decref(body);
    }
    th_api_stop(a);
}

/* One writer of test_rollups_equal_raw: n usage writes of 1 to 4 records each, spread over three
 * tenants, workflows (runs), kinds and models; the first writer also moves the engine clock a day
 * forward every 50 writes so the rollups span days. Exits non-zero on any error. */
static void rollup_writer(const char *db, int which, int n)
{
    PGconn *c = PQconnectdb(db);
    if (PQstatus(c) != CONNECTION_OK)
        _exit(2);
    srand((unsigned)(which * 7919 + 1));
    static const char *const models[] = {"gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "local"};
    static const char *const provs[] = {"openai", "openai", "anthropic", "openai_compatible"};
    for (int i = 0; i < n; i++) {
        if (which == 0 && i % 50 == 49) {
            PGresult *r = PQexec(c, "UPDATE flowd_clock SET offset_ms = offset_ms + 86400000");
            if (PQresultStatus(r) != PGRES_COMMAND_OK)
                _exit(3);
            PQclear(r);
        }
        char rows[2048] = "[";
        int k = 1 + rand() % 4;
        for (int j = 0; j < k; j++) {
            int m = rand() % 4;
            bool send = rand() % 4 == 0;
            size_t len = strlen(rows);
            snprintf(rows + len, sizeof rows - len,
                     "%s{\"tenant\": %d, \"run\": %d, \"step\": \"s%d\", \"kind\": \"%s\","
                     " \"provider\": \"%s\", \"model\": \"%s\", \"input_tokens\": %d,"
                     " \"output_tokens\": %d, \"cached_tokens\": %d, \"segments\": %d}",
                     j ? "," : "", 1 + rand() % 3, 1 + rand() % 20, rand() % 3,
                     send ? "send" : "llm", send ? "twilio" : provs[m], send ? "sms" : models[m],
                     rand() % 5000, rand() % 2000, rand() % 100, 1 + rand() % 3);
        }
        strcat(rows, "]");
        const char *params[] = {rows};
        PGresult *r = PQexecParams(c, "SELECT flowd_usage_add($1::jsonb)", 1, NULL, params, NULL,
                                   NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            fprintf(stderr, "usage write failed: %s", PQerrorMessage(c));
            _exit(4);
        }
        PQclear(r);
    }
    PQfinish(c);
    _exit(0);
}

static void test_rollups_equal_raw(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("usage_rollups", &tenant);
    pid_t pids[2];
    for (int w = 0; w < 2; w++) {
        pids[w] = fork();
        assert_true(pids[w] >= 0);
        if (pids[w] == 0)
            rollup_writer(db, w, 300);
    }
    for (int w = 0; w < 2; w++) {
        int st;
        assert_int_equal(waitpid(pids[w], &st, 0), pids[w]);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    assert_true(th_pg_long(db, "SELECT count(DISTINCT day) FROM usage_daily") >= 5);
    assert_true(th_pg_long(db, "SELECT count(*) FROM usage_records WHERE cost_usd > 0") > 0);
    static const char daily_raw[] =
        "SELECT tenant_id, (at AT TIME ZONE 'UTC')::date, kind, workflow, provider, model,"
        " count(*), sum(input_tokens), sum(output_tokens), sum(cached_tokens), sum(segments),"
        " sum(cost_usd) FROM usage_records GROUP BY 1, 2, 3, 4, 5, 6";
    static const char daily_rollup[] =
        "SELECT tenant_id, day, kind, workflow, provider, model, calls, input_tokens,"
        " output_tokens, cached_tokens, segments, cost_usd FROM usage_daily";
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM ((%s) EXCEPT (%s)) x", daily_raw,
                                 daily_rollup),
                     0);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM ((%s) EXCEPT (%s)) x", daily_rollup,
                                 daily_raw),
                     0);
    static const char run_raw[] =
        "SELECT run_id, (at AT TIME ZONE 'UTC')::date, count(*) FILTER (WHERE kind = 'llm'),"
        " coalesce(sum(input_tokens) FILTER (WHERE kind = 'llm'), 0),"
        " coalesce(sum(output_tokens) FILTER (WHERE kind = 'llm'), 0),"
        " coalesce(sum(cost_usd) FILTER (WHERE kind = 'llm'), 0),"
        " count(*) FILTER (WHERE kind = 'send'),"
        " coalesce(sum(segments) FILTER (WHERE kind = 'send'), 0),"
        " coalesce(sum(cost_usd) FILTER (WHERE kind = 'send'), 0)"
        " FROM usage_records GROUP BY 1, 2";
    static const char run_rollup[] =
        "SELECT run_id, day, llm_calls, input_tokens, output_tokens, llm_cost_usd, sends,"
        " segments, send_cost_usd FROM run_usage";
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM ((%s) EXCEPT (%s)) x", run_raw,
                                 run_rollup),
                     0);
    assert_int_equal(th_pg_longf(db, "SELECT count(*) FROM ((%s) EXCEPT (%s)) x", run_rollup,
                                 run_raw),
                     0);
    /* and the report reads them: one month of tenant 1 by model equals its raw records */
    assert_true(th_pg_long(db,
                           "SELECT ((SELECT sum(input_tokens) FROM usage_records WHERE"
                           " tenant_id = 1 AND kind = 'llm') = (SELECT sum(input_tokens) FROM"
                           " flowd_usage(1, '2000-01-01', '2100-01-01', 'model', NULL)))::int")
                == 1);
    free(db);
}

/* A batch of usage is priced once per (tenant, kind, model, provider), not once per record, and
 * each record still gets its price: three gpt-4o-mini calls and one claude-sonnet-4 call, two
 * lookups (the count is this transaction's own, read in the statement that writes). */
static void test_priced_once_per_model(void **state)
{
    (void)state;
    long long tenant;
    char *db = th_engine_db("usage_priced", &tenant);
    PGconn *c = th_pgc_open(db);
    free(th_pgc_str(c, "SET track_functions = 'all'", 0, NULL));
    char rows[1024];
    snprintf(rows, sizeof rows,
             "[{\"tenant\": %lld, \"step\": \"a\", \"kind\": \"llm\", \"provider\": \"openai\","
             " \"model\": \"gpt-4o-mini\", \"input_tokens\": 1000, \"output_tokens\": 1000},"
             " {\"tenant\": %lld, \"step\": \"b\", \"kind\": \"llm\", \"provider\": \"openai\","
             " \"model\": \"gpt-4o-mini\", \"input_tokens\": 1000, \"output_tokens\": 1000},"
             " {\"tenant\": %lld, \"step\": \"c\", \"kind\": \"llm\", \"provider\": \"openai\","
             " \"model\": \"gpt-4o-mini\", \"input_tokens\": 1000, \"output_tokens\": 1000},"
             " {\"tenant\": %lld, \"step\": \"d\", \"kind\": \"llm\", \"provider\": \"anthropic\","
             " \"model\": \"claude-sonnet-4\", \"input_tokens\": 1000, \"output_tokens\": 1000}]",
             tenant, tenant, tenant, tenant);
    assert_int_equal(th_pgc_ll(c,
                               "SELECT pg_stat_get_xact_function_calls('flowd_price_at'::regproc)"
                               " FROM (SELECT flowd_usage_add($1::jsonb)) x",
                               TH_P(rows)),
                     2);
    PQfinish(c);
    /* gpt-4o-mini: 0.15 + 0.60 USD per million; claude-sonnet-4: 3 + 15 */
    char *costs = th_pg_value(db, "SELECT string_agg(step_key || '=' || cost_usd::float8 || ' '"
                                  " || (price_id IS NOT NULL), ', ' ORDER BY step_key)"
                                  " FROM usage_records");
    assert_string_equal(costs, "a=0.00075 true, b=0.00075 true, c=0.00075 true, d=0.018 true");
    free(costs);
    free(db);
}

int main(void)
{
    th_api_init();
    step_register_all();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llm_usage),
        cmocka_unit_test(test_send_usage_and_api),
        cmocka_unit_test(test_rollups_equal_raw),
        cmocka_unit_test(test_priced_once_per_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
