/* tests/integration/test_e2e_playbook.c: the shipped workflows/playbook.json end to end, through
 * the HTTP API only, with a mock OpenAI (answers routed per step by the step's system prompt) and
 * a mock web server for the two site fetches.
 *
 * - phases: the run reaches 100% through research, extraction, analysis and generation in that
 *   order (seen while polling and in the run's event log), the site pages reach the prompts, the
 *   playbook matches the step's JSON Schema, and GET /v1/runs/{id}/sequencer.csv has one row per
 *   persona;
 * - a step whose first two calls fail (500, then 429) still completes, with exactly 3 calls;
 * - after a permanent failure (400), POST /v1/runs/{id}/retry completes the run and only the
 *   failed step and the steps after it call the model again (calls counted per step);
 * - a site that cannot be fetched does not fail the run (continue_on_failure). */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_mockhttp.h"

enum { S_RV, S_RP, S_EX, S_AN, S_GEN, S_N };
static const char *const step_keys[S_N] = {"research_vendor", "research_prospect",
                                           "extract_capabilities", "analyse_prospect",
                                           "generate_playbook"};
/* words of each step's system prompt in workflows/playbook.json */
static const char *const step_marks[S_N] = {
    "research on a vendor", "research on a prospective buyer", "extract a vendor's capabilities",
    "analyse a prospective buyer", "write outbound sales playbooks"};
static const char *const phases[] = {"research", "extraction", "analysis", "generation"};

#define MAX_SCRIPT 4

static struct {
    pthread_mutex_t mu;
    int calls[S_N];
    int script[S_N][MAX_SCRIPT]; /* statuses to answer before succeeding */
    int nscript[S_N], pos[S_N];
    bool site_in_prompt[S_N];     /* the fetched page reached the prompt */
    bool schema_sent[S_N];        /* response_format json_schema, strict */
} llm = {.mu = PTHREAD_MUTEX_INITIALIZER};

static atomic_int site_requests;
static atomic_int site_ranged; /* requests that asked for a byte range */
static th_api *api;
static th_api_openai *openai;
static th_mock *sites;
static json_t *shipped; /* workflows/playbook.json */

/* ------------------------------------------------------------------------------- mocks -- */

/* The prospect named in the generation prompt ("... selling to X.\n"). */
static char *prospect_of(const char *prompt)
{
    const char *p = strstr(prompt, "selling to ");
    if (!p)
        return eng_xstrdup("?");
    p += strlen("selling to ");
    size_t n = strcspn(p, "\n");
    if (n > 0 && p[n - 1] == '.')
        n--;
    return eng_xstrndup(p, n);
}

static char *playbook_json(const char *prospect)
{
    json_t *personas = json_array(), *tracks = json_array();
    static const char *const titles[] = {"VP Sales", "RevOps Lead"};
    for (size_t i = 0; i < 2; i++) {
        json_t *seq = json_object();
        for (int t = 1; t <= 4; t++) {
            char key[16], subject[200], body[300];
            snprintf(key, sizeof key, "touch_%d", t);
            snprintf(subject, sizeof subject, "Touch %d for %s, %s", t, prospect, titles[i]);
            snprintf(body, sizeof body, "Hi \"%s\",\nline two of touch %d", titles[i], t);
            json_object_set_new(seq, key, json_pack("{s:i, s:s, s:s}", "day", (t - 1) * 3,
                                                    "subject", subject, "body", body));
        }
        json_array_append_new(personas, json_pack("{s:s, s:o}", "persona", titles[i], "sequence", seq));
        json_array_append_new(tracks, json_pack("{s:s, s:s, s:[s], s:[s]}", "persona", titles[i],
                                                "opener", "Saw your growth", "discovery_questions",
                                                "How do leads flow?", "value_points", "Faster"));
    }
    json_t *pb = json_pack("{s:s, s:o, s:o, s:[{s:s, s:s, s:s, s:s}]}", "summary",
                           "A good fit", "personas", personas, "talk_tracks", tracks,
                           "battle_cards", "alternative", "Spreadsheets", "where_we_win",
                           "Speed", "objection", "We have a process", "response", "Keep it");
    char *s = json_dumps(pb, JSON_COMPACT);
    json_decref(pb);
    return s;
}

static void responder(void *arg, const json_t *body, int *status, char **text)
{
    (void)arg;
    char *prompt = th_api_prompt_text(body);
    int s = 0;
    while (s < S_N && !strstr(prompt, step_marks[s]))
        s++;
    if (s == S_N) {
        *status = 400;
        free(prompt);
        return;
    }
    pthread_mutex_lock(&llm.mu);
    llm.calls[s]++;
    const json_t *rf = json_object_get(body, "response_format");
    llm.schema_sent[s] = json_is_true(json_object_get(json_object_get(rf, "json_schema"), "strict"));
    if (strstr(prompt, "SITE-PAGE"))
        llm.site_in_prompt[s] = true;
    if (llm.pos[s] < llm.nscript[s])
        *status = llm.script[s][llm.pos[s]++];
    pthread_mutex_unlock(&llm.mu);
    if (*status != 200) {
        free(prompt);
        return;
    }
    switch (s) {
    case S_RV:
    case S_RP:
        *text = eng_xstrdup("Research notes: a mid-size company, growing.");
        break;
    case S_EX:
        *text = eng_xstrdup("{\"capabilities\": [{\"name\": \"Routing\", \"description\": "
                                "\"Routes leads in seconds\"}], \"differentiators\": [\"speed\"], "
                                "\"proof_points\": [\"500 teams\"]}");
        break;
    case S_AN:
        *text = eng_xstrdup(
            "{\"company_summary\": \"Sells widgets\", \"pains\": [\"slow follow-up\"], "
            "\"priority_personas\": [{\"title\": \"VP Sales\", \"why_first\": \"owns quota\", "
            "\"pains\": [\"missed leads\"], \"relevant_capabilities\": [\"Routing\"]}, "
            "{\"title\": \"RevOps Lead\", \"why_first\": \"owns tools\", \"pains\": [\"manual "
            "work\"], \"relevant_capabilities\": [\"Routing\"]}]}");
        break;
    default: {
        char *prospect = prospect_of(prompt);
        *text = playbook_json(prospect);
        free(prospect);
    }
    }
    free(prompt);
}

/* /site/<domain>/ answers a small page naming the domain; /site/down.test/ answers 404. */
static void site_handler(void *arg, const th_mock_req *req, th_mock_resp *r)
{
    (void)arg;
    atomic_fetch_add(&site_requests, 1);
    if (th_mock_req_header(req, "Range"))
        atomic_fetch_add(&site_ranged, 1);
    if (strstr(req->target, "down.test")) {
        th_mock_resp_status(r, 404);
        return;
    }
    th_mock_resp_header(r, "Content-Type", "text/html");
    th_mock_resp_bodyf(r, "<html><title>SITE-PAGE %s</title></html>", req->target);
}

static void script(int step, int a, int b)
{
    pthread_mutex_lock(&llm.mu);
    llm.nscript[step] = 0;
    llm.pos[step] = 0;
    if (a)
        llm.script[step][llm.nscript[step]++] = a;
    if (b)
        llm.script[step][llm.nscript[step]++] = b;
    pthread_mutex_unlock(&llm.mu);
}

static void calls_snapshot(int out[S_N])
{
    pthread_mutex_lock(&llm.mu);
    memcpy(out, llm.calls, sizeof llm.calls);
    pthread_mutex_unlock(&llm.mu);
}

/* ------------------------------------------------------------------------------ helpers -- */

static char *run_input(const char *vendor, const char *prospect)
{
    return eng_xasprintf("{\"vendor\": \"%s\", \"prospect\": \"%s\", \"site_prefix\": \"%s/site/\"}",
                         vendor, prospect, th_mock_url(sites));
}

static int phase_index(const char *phase)
{
    for (int i = 0; i < (int)ENG_ARRAY_LEN(phases); i++)
        if (phase && strcmp(phase, phases[i]) == 0)
            return i;
    return -1;
}

/* The phase of a step of the shipped definition. */
static int step_phase(const char *key)
{
    size_t i;
    json_t *st;
    json_array_foreach (json_object_get(shipped, "steps"), i, st)
        if (strcmp(json_string_value(json_object_get(st, "key")), key) == 0)
            return phase_index(json_string_value(json_object_get(st, "phase")));
    return -1;
}

static const json_t *run_step(const json_t *run, const char *key)
{
    size_t i;
    json_t *st;
    json_array_foreach (json_object_get(run, "steps"), i, st)
        if (strcmp(json_string_value(json_object_get(st, "key")), key) == 0)
            return st;
    return NULL;
}

/* A JSON Schema subset: type, properties, required, additionalProperties: false, items. Fails the
 * test with the path of the first mismatch. */
static void schema_check(const json_t *schema, const json_t *v, const char *path)
{
    const char *type = json_string_value(json_object_get(schema, "type"));
    bool ok = !type || (strcmp(type, "object") == 0 && json_is_object(v)) ||
              (strcmp(type, "array") == 0 && json_is_array(v)) ||
              (strcmp(type, "string") == 0 && json_is_string(v)) ||
              (strcmp(type, "integer") == 0 && json_is_integer(v));
    if (!ok)
        fail_msg("%s: not of type %s", path, type);
    const json_t *props = json_object_get(schema, "properties");
    size_t i;
    json_t *x;
    json_array_foreach (json_object_get(schema, "required"), i, x)
        if (!json_object_get(v, json_string_value(x)))
            fail_msg("%s: missing %s", path, json_string_value(x));
    const char *k;
    json_t *sub;
    json_object_foreach ((json_t *)v, k, sub) {
        char p[256];
        snprintf(p, sizeof p, "%s/%s", path, k);
        const json_t *ps = json_object_get(props, k);
        if (!ps && json_is_false(json_object_get(schema, "additionalProperties")))
            fail_msg("%s: not allowed", p);
        if (ps)
            schema_check(ps, sub, p);
    }
    json_array_foreach ((json_t *)v, i, sub) {
        char p[256];
        snprintf(p, sizeof p, "%s/%zu", path, i);
        schema_check(json_object_get(schema, "items"), sub, p);
    }
}

typedef struct poll_log {
    int phase[4096];
    int percent[4096];
    int n;
} poll_log;

static void record_poll(void *arg, const json_t *run)
{
    poll_log *l = arg;
    if (l->n == (int)ENG_ARRAY_LEN(l->phase))
        return;
    l->phase[l->n] = phase_index(json_string_value(json_object_get(run, "phase")));
    l->percent[l->n] =
        (int)json_integer_value(json_object_get(json_object_get(run, "progress"), "percent"));
    l->n++;
}

static json_t *run_events(long long id)
{
    char path[96];
    snprintf(path, sizeof path, "/v1/runs/%lld/events?after=0", id);
    json_t *ev = th_api_json(api, 200, "GET", path, NULL);
    json_t *list = json_incref(json_object_get(ev, "events"));
    json_decref(ev);
    return list;
}

/* -------------------------------------------------------------------------------- tests -- */

static void test_phases_in_order_to_100(void **state)
{
    (void)state;
    char *input = run_input("vendor.test", "phases.test");
    long long id = th_api_start_run(api, "playbook", input);
    free(input);
    poll_log *log = eng_xcalloc(1, sizeof *log);
    json_t *run = th_api_wait_run(api, id, 15, 60, record_poll, log);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");

    /* progress: never backwards, ends at 8/8 = 100%, and the phase moves forward through all four */
    const json_t *prog = json_object_get(run, "progress");
    assert_int_equal(json_integer_value(json_object_get(prog, "done")), 8);
    assert_int_equal(json_integer_value(json_object_get(prog, "total")), 8);
    assert_int_equal(json_integer_value(json_object_get(prog, "percent")), 100);
    bool seen[4] = {false}, between = false;
    int last_phase = -1;
    for (int i = 0; i < log->n; i++) {
        if (i > 0)
            assert_true(log->percent[i] >= log->percent[i - 1]);
        between |= log->percent[i] > 0 && log->percent[i] < 100;
        if (log->phase[i] < 0)
            continue;
        assert_true(log->phase[i] >= last_phase);
        last_phase = log->phase[i];
        seen[log->phase[i]] = true;
    }
    assert_true(between);
    for (int p = 0; p < 4; p++)
        if (!seen[p])
            fail_msg("polling never saw phase %s (%d polls)", phases[p], log->n);
    free(log);

    /* the event log: each phase starts after the one before, and every step ran once */
    json_t *events = run_events(id);
    long long first_start[4] = {0};
    int started = 0;
    size_t i;
    json_t *e;
    json_array_foreach (events, i, e) {
        if (strcmp(json_string_value(json_object_get(e, "type")), "step.started") != 0)
            continue;
        started++;
        int ph = step_phase(json_string_value(json_object_get(e, "step")));
        assert_true(ph >= 0);
        if (!first_start[ph])
            first_start[ph] = json_integer_value(json_object_get(e, "seq"));
    }
    json_decref(events);
    assert_int_equal(started, 8);
    for (int p = 1; p < 4; p++)
        assert_true(first_start[p] > first_start[p - 1]);

    /* the pages reached the prompts; structured steps asked for strict JSON Schema output */
    pthread_mutex_lock(&llm.mu);
    bool ex_site = llm.site_in_prompt[S_EX], an_site = llm.site_in_prompt[S_AN];
    bool schemas = llm.schema_sent[S_EX] && llm.schema_sent[S_AN] && llm.schema_sent[S_GEN];
    pthread_mutex_unlock(&llm.mu);
    assert_true(ex_site);
    assert_true(an_site);
    assert_true(schemas);
    assert_true(atomic_load(&site_ranged) >= 2);

    /* the playbook matches the generation step's schema; the fetches are reported */
    const json_t *out = json_object_get(json_object_get(run, "output"), "assemble");
    assert_non_null(out);
    assert_string_equal(json_string_value(json_object_get(out, "prospect")), "phases.test");
    const json_t *schema = json_object_get(
        json_object_get(json_array_get(json_object_get(shipped, "steps"), 6), "input"),
        "json_schema");
    assert_non_null(schema);
    schema_check(schema, json_object_get(out, "playbook"), "/playbook");
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_object_get(out, "sources"), "vendor_site"), "status")),
                     200);

    /* sequencer export: header + one row per persona, quotes and line breaks intact */
    char path[96];
    snprintf(path, sizeof path, "/v1/runs/%lld/sequencer.csv", id);
    long status = 0;
    char *csv = th_api_raw(api, "GET", path, NULL, &status);
    assert_int_equal(status, 200);
    json_t *rows = th_api_csv_parse(csv);
    assert_non_null(rows);
    assert_int_equal(json_array_size(rows), 3);
    json_t *head = json_array_get(rows, 0), *r1 = json_array_get(rows, 1);
    assert_int_equal(json_array_size(head), 15);
    assert_string_equal(json_string_value(json_array_get(head, 4)), "email_1_subject");
    assert_string_equal(json_string_value(json_array_get(head, 14)), "email_4_body");
    assert_int_equal(json_array_size(r1), 15);
    assert_string_equal(json_string_value(json_array_get(r1, 0)), "vendor.test");
    assert_string_equal(json_string_value(json_array_get(r1, 1)), "phases.test");
    assert_string_equal(json_string_value(json_array_get(r1, 2)), "VP Sales");
    assert_string_equal(json_string_value(json_array_get(r1, 4)), "Touch 1 for phases.test, VP Sales");
    assert_string_equal(json_string_value(json_array_get(r1, 14)), "Hi \"VP Sales\",\nline two of touch 4");
    assert_string_equal(json_string_value(json_array_get(json_array_get(rows, 2), 2)), "RevOps Lead");
    json_decref(rows);
    free(csv);
    json_decref(run);
}

static void test_step_fails_twice_then_succeeds(void **state)
{
    (void)state;
    int before[S_N], after[S_N];
    calls_snapshot(before);
    script(S_RV, 500, 429);
    char *input = run_input("vendor.test", "flaky.test");
    long long id = th_api_start_run(api, "playbook", input);
    free(input);
    json_t *run = th_api_wait_run(api, id, 100, 90, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    calls_snapshot(after);
    assert_int_equal(after[S_RV] - before[S_RV], 3);
    for (int s = S_RP; s < S_N; s++) {
        assert_int_equal(after[s] - before[s], 1);
        assert_int_equal(json_integer_value(json_object_get(run_step(run, step_keys[s]), "attempts")), 1);
    }
    assert_int_equal(json_integer_value(json_object_get(run_step(run, "research_vendor"), "attempts")), 3);
    json_t *events = run_events(id);
    int retrying = 0;
    size_t i;
    json_t *e;
    json_array_foreach (events, i, e)
        if (strcmp(json_string_value(json_object_get(e, "type")), "step.retrying") == 0) {
            assert_string_equal(json_string_value(json_object_get(e, "step")), "research_vendor");
            retrying++;
        }
    assert_int_equal(retrying, 2);
    json_decref(events);
    json_decref(run);
}

static void test_retry_after_permanent_failure(void **state)
{
    (void)state;
    int before[S_N], failed[S_N], after[S_N];
    calls_snapshot(before);
    script(S_AN, 400, 0);
    char *input = run_input("vendor.test", "brittle.test");
    long long id = th_api_start_run(api, "playbook", input);
    free(input);
    json_t *run = th_api_wait_run(api, id, 50, 60, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "failed");
    assert_string_equal(json_string_value(json_object_get(run_step(run, "analyse_prospect"), "state")),
                        "failed");
    assert_int_equal(json_integer_value(json_object_get(run_step(run, "analyse_prospect"), "attempts")), 1);
    const char *gen_state = json_string_value(json_object_get(run_step(run, "generate_playbook"), "state"));
    assert_true(strcmp(gen_state, "succeeded") != 0);
    char *research_before = json_dumps(json_object_get(run_step(run, "research_vendor"), "output"),
                                       JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(run);
    calls_snapshot(failed);
    assert_int_equal(failed[S_AN] - before[S_AN], 1);
    assert_int_equal(failed[S_GEN] - before[S_GEN], 0);
    int sites_before = atomic_load(&site_requests);

    char path[96];
    snprintf(path, sizeof path, "/v1/runs/%lld/retry", id);
    json_decref(th_api_json(api, 200, "POST", path, "{}"));
    run = th_api_wait_run(api, id, 50, 60, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    calls_snapshot(after);
    /* finished steps kept their outputs; only the failed step and those after it called again */
    assert_int_equal(after[S_RV], failed[S_RV]);
    assert_int_equal(after[S_RP], failed[S_RP]);
    assert_int_equal(after[S_EX], failed[S_EX]);
    assert_int_equal(after[S_AN] - failed[S_AN], 1);
    assert_int_equal(after[S_GEN] - failed[S_GEN], 1);
    assert_int_equal(atomic_load(&site_requests), sites_before);
    char *research_after = json_dumps(json_object_get(run_step(run, "research_vendor"), "output"),
                                      JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(research_before, research_after);
    free(research_before);
    free(research_after);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(run, "progress"), "percent")), 100);
    json_decref(run);
}

static void test_unreachable_site_does_not_fail_the_run(void **state)
{
    (void)state;
    char *input = run_input("vendor.test", "down.test");
    long long id = th_api_start_run(api, "playbook", input);
    free(input);
    json_t *run = th_api_wait_run(api, id, 50, 60, NULL, NULL);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    const json_t *fetch = run_step(run, "fetch_prospect_site");
    assert_string_equal(json_string_value(json_object_get(fetch, "state")), "failed");
    const json_t *src = json_object_get(
        json_object_get(json_object_get(json_object_get(run, "output"), "assemble"), "sources"),
        "prospect_site");
    assert_string_equal(json_string_value(json_object_get(src, "error")), "http_404");
    assert_true(json_is_null(json_object_get(src, "status")));
    json_decref(run);
}

/* ------------------------------------------------------------------------------- setup -- */

static int group_setup(void **state)
{
    (void)state;
    openai = th_api_openai_start(responder, NULL);
    th_api_openai_set_delay(openai, 60);
    sites = th_mock_start(site_handler, NULL);
    setenv("OPENAI_API_KEY", "sk-e2e-not-secret", 1);
    setenv("OPENAI_BASE_URL", th_api_openai_url(openai), 1);
    char *file = eng_xasprintf("%s/workflows/playbook.json", th_source_dir());
    shipped = json_load_file(file, 0, NULL);
    free(file);
    if (!shipped)
        return -1;
    api = th_api_start(&(th_api_opts){.prefix = "e2e_playbook", .workers = 2});
    th_api_put_shipped(api, "playbook");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    th_api_stop(api);
    th_mock_stop(sites);
    th_api_openai_stop(openai);
    json_decref(shipped);
    return 0;
}

int main(void)
{
    th_api_init();
    step_register_all();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_phases_in_order_to_100),
        cmocka_unit_test(test_step_fails_twice_then_succeeds),
        cmocka_unit_test(test_retry_after_permanent_failure),
        cmocka_unit_test(test_unreachable_site_does_not_fail_the_run),
    };
    int rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
