/* tests/integration/test_e2e_batch.c: the shipped workflows/prospect_batch.json end to end through
 * the HTTP API: one vendor, 200 prospects, a map running workflows/playbook.json per prospect at
 * most 10 at once, against a mock OpenAI (answers routed per step) and a mock web server.
 *
 * One prospect's analysis is refused for good (400): its playbook run fails and the batch still
 * succeeds with that prospect's result holding the error (allow_failures). Checked: results in
 * prospect order, child run counts by state over GET /v1/runs, the model calls per step, the
 * concurrency bound, and the sequencer CSV (one row per persona of every prospect that
 * succeeded, none for the failed one). */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <curl/curl.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"
#include "engine/mem.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_mockhttp.h"

#define PROSPECTS 200
#define BAD_PROSPECT "p137.test" /* its analysis is refused (400) */

enum { S_RV, S_RP, S_EX, S_AN, S_GEN, S_N };
static const char *const step_marks[S_N] = {
    "research on a vendor", "research on a prospective buyer", "extract a vendor's capabilities",
    "analyse a prospective buyer", "write outbound sales playbooks"};

static atomic_int calls[S_N];
static atomic_int sites_hit;

/* The domain written after marker in prompt, up to the end of the line (a final '.' dropped). */
static char *domain_after(const char *prompt, const char *marker)
{
    const char *p = strstr(prompt, marker);
    if (!p)
        return eng_xstrdup("?");
    p += strlen(marker);
    size_t n = strcspn(p, "\n");
    if (n > 0 && p[n - 1] == '.')
        n--;
    return eng_xstrndup(p, n);
}

static char *playbook_json(const char *prospect)
{
    json_t *personas = json_array();
    static const char *const titles[] = {"VP Sales", "Head of RevOps"};
    for (size_t i = 0; i < 2; i++) {
        json_t *seq = json_object();
        for (int t = 1; t <= 4; t++) {
            char key[16], subject[160];
            snprintf(key, sizeof key, "touch_%d", t);
            snprintf(subject, sizeof subject, "%s / %s / %d", prospect, titles[i], t);
            json_object_set_new(seq, key, json_pack("{s:i, s:s, s:s}", "day", t * 2, "subject",
                                                    subject, "body", "Hello,\nworld"));
        }
        json_array_append_new(personas, json_pack("{s:s, s:o}", "persona", titles[i], "sequence", seq));
    }
    json_t *pb = json_pack("{s:s, s:o, s:[], s:[]}", "summary", prospect, "personas", personas,
                           "talk_tracks", "battle_cards");
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
    if (s < S_N)
        atomic_fetch_add(&calls[s], 1);
    switch (s) {
    case S_RV:
    case S_RP:
        *text = eng_xstrdup("notes");
        break;
    case S_EX:
        *text = eng_xstrdup("{\"capabilities\": [], \"differentiators\": [], "
                                "\"proof_points\": []}");
        break;
    case S_AN:
        if (strstr(prompt, "Prospect: " BAD_PROSPECT "\n"))
            *status = 400;
        else
            *text = eng_xstrdup("{\"company_summary\": \"x\", \"pains\": [], "
                                    "\"priority_personas\": []}");
        break;
    case S_GEN: {
        char *prospect = domain_after(prompt, "selling to ");
        *text = playbook_json(prospect);
        free(prospect);
        break;
    }
    default:
        *status = 400;
    }
    free(prompt);
}

static void site_handler(void *arg, const th_mock_req *req, th_mock_resp *r)
{
    (void)arg;
    (void)req;
    atomic_fetch_add(&sites_hit, 1);
    th_mock_resp_header(r, "Content-Type", "text/plain");
    th_mock_resp_bodyf(r, "about us");
}

/* Child playbook runs in state (GET /v1/runs, every page). */
static int count_runs(th_api *api, const char *state)
{
    int n = 0;
    char *cursor = NULL;
    for (;;) {
        char *path = eng_xasprintf("/v1/runs?workflow=playbook&state=%s&limit=100%s%s", state,
                                   cursor ? "&cursor=" : "", cursor ? cursor : "");
        json_t *page = th_api_json(api, 200, "GET", path, NULL);
        free(path);
        free(cursor);
        cursor = NULL;
        json_t *runs = json_object_get(page, "runs");
        assert_true(json_is_array(runs));
        n += (int)json_array_size(runs);
        const char *next = json_string_value(json_object_get(page, "next_cursor"));
        if (next)
            cursor = eng_xstrdup(next);
        json_decref(page);
        if (!cursor)
            return n;
    }
}

static void test_batch_of_200_prospects(void **state)
{
    (void)state;
    th_api_openai *openai = th_api_openai_start(responder, NULL);
    th_api_openai_set_delay(openai, 5);
    th_mock *sites = th_mock_start(site_handler, NULL);
    setenv("OPENAI_API_KEY", "sk-e2e-not-secret", 1);
    setenv("OPENAI_BASE_URL", th_api_openai_url(openai), 1);
    th_api *api = th_api_start(&(th_api_opts){.prefix = "e2e_batch", .workers = 2});
    th_api_put_shipped(api, "playbook");
    th_api_put_shipped(api, "prospect_batch");

    eng_buf in;
    eng_buf_init(&in, 0);
    assert_int_equal(eng_buf_appendf(&in, "{\"vendor\": \"vendor.test\", \"site_prefix\": "
                                          "\"%s/\", \"prospects\": [",
                                     th_mock_url(sites)),
                     ENG_OK);
    for (int i = 0; i < PROSPECTS; i++)
        assert_int_equal(eng_buf_appendf(&in, "%s\"p%03d.test\"", i ? ", " : "", i), ENG_OK);
    assert_int_equal(eng_buf_appendf(&in, "]}"), ENG_OK);
    long long t0 = th_now_ms();
    long long id = th_api_start_run(api, "prospect_batch", in.ptr);
    eng_buf_deinit(&in);
    json_t *run = th_api_wait_run(api, id, 250, 240, NULL, NULL);
    fprintf(stderr, "batch of %d prospects: %lld ms\n", PROSPECTS, th_now_ms() - t0);
    assert_string_equal(json_string_value(json_object_get(run, "state")), "succeeded");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(run, "progress"), "percent")),
                     100);

    /* results in prospect order; the refused one carries its error and run */
    const json_t *results =
        json_object_get(json_object_get(json_object_get(run, "output"), "playbooks"), "results");
    assert_int_equal(json_array_size(results), PROSPECTS);
    int ok = 0;
    for (int i = 0; i < PROSPECTS; i++) {
        char want[32];
        snprintf(want, sizeof want, "p%03d.test", i);
        const json_t *r = json_array_get(results, (size_t)i);
        if (strcmp(want, BAD_PROSPECT) == 0) {
            assert_non_null(json_object_get(r, "error"));
            assert_true(json_integer_value(json_object_get(r, "run")) > 0);
            continue;
        }
        const json_t *a = json_object_get(r, "assemble");
        assert_string_equal(json_string_value(json_object_get(a, "prospect")), want);
        assert_int_equal(json_integer_value(json_object_get(
                             json_object_get(json_object_get(a, "sources"), "prospect_site"),
                             "status")),
                         200);
        ok++;
    }
    assert_int_equal(ok, PROSPECTS - 1);
    assert_int_equal(count_runs(api, "succeeded"), PROSPECTS - 1);
    assert_int_equal(count_runs(api, "failed"), 1);
    assert_int_equal(count_runs(api, "running") + count_runs(api, "queued"), 0);

    /* each playbook called each step once (the 400 is permanent: no retry), sites twice each */
    assert_int_equal(atomic_load(&calls[S_RV]), PROSPECTS);
    assert_int_equal(atomic_load(&calls[S_RP]), PROSPECTS);
    assert_int_equal(atomic_load(&calls[S_EX]), PROSPECTS);
    assert_int_equal(atomic_load(&calls[S_AN]), PROSPECTS);
    assert_int_equal(atomic_load(&calls[S_GEN]), PROSPECTS - 1);
    assert_int_equal(atomic_load(&sites_hit), 2 * PROSPECTS);
    /* 10 playbooks at once, each with at most 2 model calls in flight */
    unsigned long peak = th_api_openai_peak(openai);
    fprintf(stderr, "peak model calls in flight: %lu\n", peak);
    assert_true(peak >= 2 && peak <= 20);

    /* sequencer CSV: header + 2 personas for each prospect that succeeded, in prospect order */
    char path[96];
    snprintf(path, sizeof path, "/v1/runs/%lld/sequencer.csv", id);
    long status = 0;
    char *csv = th_api_raw(api, "GET", path, NULL, &status);
    assert_int_equal(status, 200);
    json_t *rows = th_api_csv_parse(csv);
    assert_non_null(rows);
    assert_int_equal(json_array_size(rows), 1 + 2 * (PROSPECTS - 1));
    size_t row = 1;
    for (int i = 0; i < PROSPECTS; i++) {
        char want[32];
        snprintf(want, sizeof want, "p%03d.test", i);
        if (strcmp(want, BAD_PROSPECT) == 0)
            continue;
        for (int p = 0; p < 2; p++, row++) {
            const json_t *r = json_array_get(rows, row);
            assert_int_equal(json_array_size(r), 15);
            assert_string_equal(json_string_value(json_array_get(r, 0)), "vendor.test");
            assert_string_equal(json_string_value(json_array_get(r, 1)), want);
            const char *persona = p ? "Head of RevOps" : "VP Sales";
            assert_string_equal(json_string_value(json_array_get(r, 2)), persona);
            char subject[160];
            snprintf(subject, sizeof subject, "%s / %s / 4", want, persona);
            assert_string_equal(json_string_value(json_array_get(r, 12)), "8");
            assert_string_equal(json_string_value(json_array_get(r, 13)), subject);
            assert_string_equal(json_string_value(json_array_get(r, 14)), "Hello,\nworld");
        }
    }
    json_decref(rows);
    free(csv);

    /* a run that did not succeed has nothing to export */
    long long bad_run = json_integer_value(json_object_get(
        json_array_get(results, (size_t)strtol(BAD_PROSPECT + 1, NULL, 10)), "run"));
    snprintf(path, sizeof path, "/v1/runs/%lld/sequencer.csv", bad_run);
    json_t *err = th_api_json(api, 409, "GET", path, NULL);
    assert_string_equal(json_string_value(json_object_get(json_object_get(err, "error"), "code")),
                        "conflict");
    json_decref(err);
    json_decref(th_api_json(api, 404, "GET", "/v1/runs/999999999/sequencer.csv", NULL));

    json_decref(run);
    th_api_stop(api);
    th_mock_stop(sites);
    th_api_openai_stop(openai);
}

int main(void)
{
    th_api_init();
    step_register_all();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_of_200_prospects),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
