/* tests/integration/test_api_routes.c: the HTTP API's listing, events, batch and admin routes over
 * real sockets, against the API service running in this process and the real PostgreSQL.
 *
 * One database and one service serve the whole group; tests run in order and share the tenants the
 * first one creates (A and B, each with an admin key). Workers run in this process only while a
 * test needs runs to finish. The client is libcurl's easy interface, one handle per thread. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/mem.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_engine.h"

#define ADMIN_KEY "fd_test_key_not_secret" /* th_engine_db's default tenant (admin) */

static th_api *api; /* no workers: the tests that need them run their own */
static const char *db, *base;
static char key_a[64], key_b[64]; /* admin keys of tenants A and B */
static long long tenant_b_id;

static const char one_step_def[] = "{\"steps\": [{\"key\": \"only\", \"kind\": \"transform\", "
                                   "\"input\": {\"n\": \"{{input.n}}\"}}]}";
static const char chain_def[] =
    "{\"steps\": [{\"key\": \"a\", \"kind\": \"transform\", \"input\": {\"x\": 1}},"
    " {\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"], \"input\": {\"x\": 2}},"
    " {\"key\": \"c\", \"kind\": \"transform\", \"needs\": [\"b\"], \"input\": {\"x\": 3}}]}";

/* ------------------------------------------------------------------------------ client -- */

typedef th_resp resp;

/* One request on handle h (NULL: a fresh one). headers: NULL-terminated extra header lines. */
static resp call_h(CURL *h, const char *method, const char *path, const char *key, const char *body,
                   const char *const *headers)
{
    bool own = !h;
    if (own)
        h = curl_easy_init();
    curl_easy_reset(h);
    resp r = {0, eng_xstrdup(""), 0};
    char url[512], auth[128];
    snprintf(url, sizeof url, "%s%s", base, path);
    struct curl_slist *hl = NULL;
    if (key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
        hl = curl_slist_append(hl, auth);
    }
    if (body)
        hl = curl_slist_append(hl, "Content-Type: application/json");
    for (size_t i = 0; headers && headers[i]; i++)
        hl = curl_slist_append(hl, headers[i]);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 120L);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, th_resp_collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &r);
    CURLcode rc = curl_easy_perform(h);
    if (rc != CURLE_OK)
        fail_msg("%s %s: %s", method, path, curl_easy_strerror(rc));
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(hl);
    if (own)
        curl_easy_cleanup(h);
    return r;
}

static resp call(const char *method, const char *path, const char *key, const char *body)
{
    return call_h(NULL, method, path, key, body, NULL);
}

/* Asserts the status and parses the body as JSON (new reference; NULL for an empty body). */
static json_t *expect(resp r, long status)
{
    if (r.status != status)
        fail_msg("expected %ld, got %ld: %s", status, r.status, r.body);
    json_t *j = r.len ? json_loads(r.body, 0, NULL) : NULL;
    if (r.len && !j)
        fail_msg("not JSON: %s", r.body);
    free(r.body);
    return j;
}

/* Asserts an error response with this status and field (NULL: no field). */
static void expect_error(resp r, long status, const char *field)
{
    json_t *j = expect(r, status);
    json_t *e = json_object_get(j, "error");
    assert_non_null(e);
    assert_non_null(json_string_value(json_object_get(e, "message")));
    const char *got = json_string_value(json_object_get(e, "field"));
    if (field && (!got || strcmp(got, field) != 0))
        fail_msg("expected field %s, got %s", field, got ? got : "(none)");
    json_decref(j);
}

static long long jint(const json_t *o, const char *name)
{
    return (long long)json_integer_value(json_object_get(o, name));
}

/* Registers def under name for the key's tenant. */
static void put_workflow(const char *key, const char *name, const char *def)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/workflows/%s", name);
    resp r = call("PUT", path, key, def);
    if (r.status != 201 && r.status != 200)
        fail_msg("PUT %s: %ld %s", name, r.status, r.body);
    free(r.body);
}

static long long start_run(const char *key, const char *workflow, const char *input)
{
    char *body = eng_xasprintf("{\"workflow\": \"%s\", \"input\": %s}", workflow, input);
    json_t *run = expect(call("POST", "/v1/runs", key, body), 201);
    free(body);
    long long id = jint(run, "id");
    json_decref(run);
    return id;
}

/* ------------------------------------------------------------------------------- admin -- */

static void test_admin_tenants_and_keys(void **state)
{
    (void)state;
    json_t *t = expect(call("POST", "/v1/tenants", ADMIN_KEY, "{\"name\": \"tenant-a\"}"), 201);
    assert_string_equal(json_string_value(json_object_get(t, "name")), "tenant-a");
    json_decref(t);
    t = expect(
        call("POST", "/v1/tenants", ADMIN_KEY, "{\"name\": \"tenant-b\", \"max_running\": 5}"),
        201);
    tenant_b_id = jint(t, "id");
    assert_int_equal(jint(t, "max_running"), 5);
    json_decref(t);
    expect_error(call("POST", "/v1/tenants", ADMIN_KEY, "{\"name\": \"tenant-a\"}"), 409, "/name");
    /* a tenant gives another at most its own priority range (the default tenant's: 100) */
    t = expect(call("POST", "/v1/tenants", ADMIN_KEY,
                    "{\"name\": \"tenant-p\", \"priority_limit\": 5}"),
               201);
    assert_int_equal(jint(t, "priority_limit"), 5);
    json_decref(t);
    expect_error(call("POST", "/v1/tenants", ADMIN_KEY,
                      "{\"name\": \"tenant-q\", \"priority_limit\": 1000}"),
                 422, "/priority_limit");
    expect_error(call("POST", "/v1/tenants", ADMIN_KEY,
                      "{\"name\": \"tenant-q\", \"priority_limit\": -1}"),
                 422, "/priority_limit");
    expect_error(call("POST", "/v1/tenants", ADMIN_KEY, "{\"name\": \"a b\"}"), 422, "/name");
    expect_error(call("POST", "/v1/tenants", ADMIN_KEY, "{\"name\": 7}"), 422, "/name");
    expect_error(
        call("POST", "/v1/tenants", ADMIN_KEY, "{\"name\": \"x\", \"max_running\": \"2\"}"), 422,
        "/max_running");
    expect_error(call("POST", "/v1/tenants", ADMIN_KEY, "{\"name\": \"x\", \"color\": 1}"), 422,
                 "/color");
    expect_error(call("POST", "/v1/tenants", ADMIN_KEY, "{\"name\": "), 400, NULL);
    expect_error(call("POST", "/v1/tenants", NULL, "{\"name\": \"x\"}"), 401, NULL);

    /* keys by tenant name and by id; the key is shown once and works at once */
    json_t *k = expect(
        call("POST", "/v1/keys", ADMIN_KEY, "{\"tenant\": \"tenant-a\", \"role\": \"admin\"}"),
        201);
    const char *key = json_string_value(json_object_get(k, "key"));
    assert_int_equal(strlen(key), 43);
    assert_memory_equal(key, "fd_", 3);
    assert_string_equal(json_string_value(json_object_get(k, "role")), "admin");
    assert_string_equal(json_string_value(json_object_get(k, "tenant")), "tenant-a");
    snprintf(key_a, sizeof key_a, "%s", key);
    json_decref(k);
    char *body = eng_xasprintf("{\"tenant\": %lld, \"role\": \"admin\"}", tenant_b_id);
    k = expect(call("POST", "/v1/keys", ADMIN_KEY, body), 201);
    free(body);
    snprintf(key_b, sizeof key_b, "%s", json_string_value(json_object_get(k, "key")));
    json_decref(k);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM api_keys WHERE key_hash = "
                                    "sha256(convert_to(prefix, 'UTF8'))"),
                     0);
    json_decref(expect(call("GET", "/v1/runs", key_a, NULL), 200));

    /* a member key of A: the admin routes do not exist for it */
    k = expect(call("POST", "/v1/keys", key_a, "{}"), 201);
    assert_string_equal(json_string_value(json_object_get(k, "role")), "member");
    char member[64];
    snprintf(member, sizeof member, "%s", json_string_value(json_object_get(k, "key")));
    long long member_id = jint(k, "id");
    json_decref(k);
    expect_error(call("POST", "/v1/tenants", member, "{\"name\": \"nope\"}"), 404, NULL);
    expect_error(call("POST", "/v1/keys", member, "{}"), 404, NULL);
    expect_error(call("POST", "/v1/keys", key_a, "{\"role\": \"boss\"}"), 422, "/role");
    expect_error(call("POST", "/v1/keys", key_a, "{\"tenant\": true}"), 422, "/tenant");
    /* A manages neither B nor the default tenant */
    expect_error(call("POST", "/v1/keys", key_a, "{\"tenant\": \"tenant-b\"}"), 404, "/tenant");
    expect_error(call("POST", "/v1/keys", key_a, "{\"tenant\": \"default\"}"), 404, "/tenant");

    /* revoking: B cannot touch A's key; A can; a revoked key stops working within the cache TTL */
    char path[64];
    snprintf(path, sizeof path, "/v1/keys/%lld", member_id);
    expect_error(call("DELETE", path, key_b, NULL), 404, NULL);
    expect_error(call("DELETE", path, member, NULL), 404, NULL);
    expect_error(call("DELETE", "/v1/keys/abc", key_a, NULL), 404, NULL);
    expect_error(call("DELETE", "/v1/keys/999999", key_a, NULL), 404, NULL);
    json_decref(expect(call("GET", "/v1/runs", member, NULL), 200));
    assert_null(expect(call("DELETE", path, key_a, NULL), 204));
    assert_null(expect(call("DELETE", path, key_a, NULL), 204));
    th_sleep_ms(2200);
    expect_error(call("GET", "/v1/runs", member, NULL), 401, NULL);
}

/* ------------------------------------------------------------------------ runs listing -- */

static void test_runs_list_paging_and_filters(void **state)
{
    (void)state;
    put_workflow(key_a, "listed", one_step_def);
    put_workflow(key_a, "other", one_step_def);
    long long ids[5];
    for (int i = 0; i < 5; i++)
        ids[i] = start_run(key_a, i < 4 ? "listed" : "other", "{\"n\": 1}");

    json_t *p = expect(call("GET", "/v1/runs?limit=2&workflow=listed", key_a, NULL), 200);
    json_t *runs = json_object_get(p, "runs");
    assert_int_equal(json_array_size(runs), 2);
    assert_int_equal(jint(json_array_get(runs, 0), "id"), ids[3]); /* newest first */
    assert_int_equal(jint(json_array_get(runs, 1), "id"), ids[2]);
    assert_string_equal(json_string_value(json_object_get(json_array_get(runs, 0), "state")),
                        "queued");
    const char *cursor = json_string_value(json_object_get(p, "next_cursor"));
    assert_non_null(cursor);
    char path[128];
    snprintf(path, sizeof path, "/v1/runs?limit=2&workflow=listed&cursor=%s", cursor);
    json_decref(p);
    p = expect(call("GET", path, key_a, NULL), 200);
    runs = json_object_get(p, "runs");
    assert_int_equal(json_array_size(runs), 2);
    assert_int_equal(jint(json_array_get(runs, 0), "id"), ids[1]);
    assert_int_equal(jint(json_array_get(runs, 1), "id"), ids[0]);
    assert_true(json_is_null(json_object_get(p, "next_cursor")));
    json_decref(p);

    p = expect(call("GET", "/v1/runs", key_a, NULL), 200);
    assert_int_equal(json_array_size(json_object_get(p, "runs")), 5);
    json_decref(p);
    p = expect(call("GET", "/v1/runs?state=succeeded", key_a, NULL), 200);
    assert_int_equal(json_array_size(json_object_get(p, "runs")), 0);
    json_decref(p);
    p = expect(call("GET", "/v1/runs?state=queued&workflow=other", key_a, NULL), 200);
    assert_int_equal(json_array_size(json_object_get(p, "runs")), 1);
    json_decref(p);

    expect_error(call("GET", "/v1/runs?limit=0", key_a, NULL), 400, "?limit");
    expect_error(call("GET", "/v1/runs?limit=501", key_a, NULL), 400, "?limit");
    expect_error(call("GET", "/v1/runs?limit=ten", key_a, NULL), 400, "?limit");
    expect_error(call("GET", "/v1/runs?state=done", key_a, NULL), 400, "?state");
    expect_error(call("GET", "/v1/runs?cursor=-4", key_a, NULL), 400, "?cursor");
    expect_error(call("GET", "/v1/runs?batch=x", key_a, NULL), 400, "?batch");
    expect_error(call("GET", "/v1/runs", NULL, NULL), 401, NULL);

    /* B sees none of it */
    p = expect(call("GET", "/v1/runs", key_b, NULL), 200);
    assert_int_equal(json_array_size(json_object_get(p, "runs")), 0);
    json_decref(p);
    static const char *const fmts[] = {"GET /v1/runs/%lld", "GET /v1/runs/%lld/events",
                                       "POST /v1/runs/%lld/cancel", "POST /v1/runs/%lld/retry"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(fmts); i++) {
        char line[96], method[8];
        snprintf(line, sizeof line, fmts[i], ids[0]);
        sscanf(line, "%7s %95s", method, path);
        expect_error(call(method, path, key_b, strcmp(method, "POST") ? NULL : "{}"), 404, NULL);
    }
    expect_error(call("GET", "/v1/workflows/listed", key_b, NULL), 404, NULL);
    p = expect(call("GET", "/v1/workflows", key_b, NULL), 200);
    assert_int_equal(json_array_size(json_object_get(p, "workflows")), 0);
    json_decref(p);
    /* a run of B's own with A's workflow name does not start */
    expect_error(call("POST", "/v1/runs", key_b, "{\"workflow\": \"listed\"}"), 404, NULL);
}

/* The ids of a run list page's runs, newest first, as "id,id,..." (empty: none); frees p. */
static void list_ids(json_t *p, char *out, size_t size)
{
    size_t off = 0;
    out[0] = '\0';
    json_t *r;
    size_t i;
    json_array_foreach (json_object_get(p, "runs"), i, r)
        off += (size_t)snprintf(out + off, size - off, "%s%lld", i ? "," : "", jint(r, "id"));
    json_decref(p);
}

/* GET path as key: the ids it lists (list_ids). */
static void list_of(const char *key, const char *path, char *out, size_t size)
{
    list_ids(expect(call("GET", path, key, NULL), 200), out, size);
}

static void test_runs_free_search(void **state)
{
    (void)state;
    static const char def[] =
        "{\"search\": {\"phone\": \"{{input.phone}}\", \"email\": \"{{input.email}}\"},"
        " \"steps\": [{\"key\": \"only\", \"kind\": \"transform\", \"input\": {}}]}";
    put_workflow(key_a, "contact", def);
    put_workflow(key_b, "contact", def);
    long long phone = start_run(key_a, "contact", "{\"phone\": \"+1 555 0100\"}");
    long long email = start_run(key_a, "contact", "{\"email\": \"Ada.Byron@Example.com\"}");
    /* tags are searched too; the workflow's own value wins a shared name, so 999 is not kept */
    json_t *run = expect(call("POST", "/v1/runs", key_a,
                              "{\"workflow\": \"contact\", \"input\": {\"phone\": \"+1 555 0199\"},"
                              " \"tags\": {\"crm\": \"ZED-Ünïcode 7\", \"phone\": \"999\"}}"),
                         201);
    long long tagged = jint(run, "id");
    json_decref(run);
    start_run(key_b, "contact", "{\"email\": \"ada@b.example\"}"); /* B's: never in A's answers */

    char got[256], want[256];
    list_of(key_a, "/v1/runs?q=ADA", got, sizeof got); /* any case */
    snprintf(want, sizeof want, "%lld", email);
    assert_string_equal(got, want);
    list_of(key_a, "/v1/runs?q=%2B1%20555%200", got, sizeof got); /* a prefix of either phone */
    snprintf(want, sizeof want, "%lld,%lld", tagged, phone);
    assert_string_equal(got, want);
    list_of(key_a, "/v1/runs?q=%2B1%20555%20010", got, sizeof got);
    snprintf(want, sizeof want, "%lld", phone);
    assert_string_equal(got, want);
    list_of(key_a, "/v1/runs?q=zed-%C3%BC", got, sizeof got); /* a tag; ü lowered as Ü */
    snprintf(want, sizeof want, "%lld", tagged);
    assert_string_equal(got, want);
    /* a prefix, not a substring; a losing tag's value is not kept; a workflow or state of no
     * match leaves none */
    static const char *const none[] = {"/v1/runs?q=555",
                                       "/v1/runs?q=example.com",
                                       "/v1/runs?q=999",
                                       "/v1/runs?q=ada.byron%40example.com.",
                                       "/v1/runs?q=ada&workflow=listed",
                                       "/v1/runs?q=ada&state=failed",
                                       "/v1/runs?q=%25",
                                       "/v1/runs?q=_"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(none); i++) {
        list_of(key_a, none[i], got, sizeof got);
        if (*got)
            fail_msg("%s found %s", none[i], got);
    }
    /* combined with the other filters and the cursor */
    list_of(key_a, "/v1/runs?q=%2B1&workflow=contact&state=queued&meta.phone=%2B1%20555%200100", got,
            sizeof got);
    snprintf(want, sizeof want, "%lld", phone);
    assert_string_equal(got, want);
    json_t *p = expect(call("GET", "/v1/runs?q=%2B1%20555&limit=1", key_a, NULL), 200);
    const char *cursor = json_string_value(json_object_get(p, "next_cursor"));
    assert_non_null(cursor);
    char path[128];
    snprintf(path, sizeof path, "/v1/runs?q=%%2B1%%20555&limit=1&cursor=%s", cursor);
    list_ids(p, got, sizeof got);
    snprintf(want, sizeof want, "%lld", tagged);
    assert_string_equal(got, want);
    list_of(key_a, path, got, sizeof got);
    snprintf(want, sizeof want, "%lld", phone);
    assert_string_equal(got, want);
    p = expect(call("GET", "/v1/runs/counts?q=%2b1", key_a, NULL), 200);
    assert_int_equal(jint(p, "queued"), 2);
    json_decref(p);
    list_of(key_b, "/v1/runs?q=ada", got, sizeof got);
    assert_int_equal(strlen(got) > 0 && !strchr(got, ','), 1);
    snprintf(want, sizeof want, "%lld", email);
    assert_string_not_equal(got, want);

    char *long_q = eng_xasprintf("/v1/runs?q=%0201d", 1);
    expect_error(call("GET", long_q, key_a, NULL), 400, "?q");
    long_q[strlen(long_q) - 1] = '\0'; /* 200 bytes are fine */
    json_decref(expect(call("GET", long_q, key_a, NULL), 200));
    free(long_q);
    expect_error(call("GET", "/v1/runs?q=", key_a, NULL), 400, "?q");
    expect_error(call("GET", "/v1/runs?q=%FF", key_a, NULL), 400, "?q");
    expect_error(call("GET", "/v1/runs?q=a&q=b", key_a, NULL), 400, "?q");
}

/* GET /v1/runs/{id}/steps: an http step's input as the worker rendered it (templates of the run's
 * input and an earlier step's output filled in) is kept, for a call that failed too; a transform
 * and a step that never started have none; an input too big to keep keeps its size; an older
 * attempt's record never replaces a newer one's; other tenants see nothing. */
static void test_run_steps_rendered_input(void **state)
{
    (void)state;
    put_workflow(key_a, "rendered",
                 "{\"steps\": [{\"key\": \"shape\", \"kind\": \"transform\","
                 " \"input\": {\"who\": \"{{input.name}}\"}},"
                 " {\"key\": \"call\", \"kind\": \"http\", \"needs\": [\"shape\"],"
                 " \"retry\": {\"max_attempts\": 1}, \"input\": {\"method\": \"POST\","
                 " \"url\": \"http://127.0.0.1:9/leads/{{input.lead}}\","
                 " \"body\": {\"name\": \"{{steps.shape.output.who}}\"}}},"
                 " {\"key\": \"after\", \"kind\": \"transform\", \"needs\": [\"call\"],"
                 " \"input\": {}}]}");
    static const char name[] = "<script>window.x=1</script>";
    char *input = eng_xasprintf("{\"lead\": 30012, \"name\": \"%s\"}", name);
    long long run = start_run(key_a, "rendered", input);
    free(input);
    /* a name of 300,000 bytes: its rendered body is over what is kept */
    size_t big_n = 300000;
    char *big_name = eng_xcalloc(1, big_n + 1);
    memset(big_name, 'x', big_n);
    input = eng_xasprintf("{\"lead\": 1, \"name\": \"%s\"}", big_name);
    free(big_name);
    long long big = start_run(key_a, "rendered", input);
    free(input);
    th_workers *ws = th_workers_start(db, 1, "api-rendered", 0, 0, 0);
    /* the record is written apart from the outcome: wait for both */
    char *sql = eng_xasprintf("SELECT count(*) = 2 FROM runs r JOIN steps s ON s.run_id = r.id"
                              " JOIN step_inputs si ON si.step_id = s.id"
                              " WHERE r.id IN (%lld, %lld) AND r.state = 'failed'",
                              run, big);
    assert_true(th_engine_wait(db, sql, 30));
    free(sql);
    th_workers_stop(ws);

    char path[96];
    snprintf(path, sizeof path, "/v1/runs/%lld/steps", run);
    json_t *p = expect(call("GET", path, key_a, NULL), 200);
    json_t *steps = json_object_get(p, "steps");
    assert_int_equal(json_array_size(steps), 3);
    json_t *shape = json_array_get(steps, 0), *callst = json_array_get(steps, 1);
    assert_string_equal(json_string_value(json_object_get(shape, "key")), "shape");
    assert_true(json_is_null(json_object_get(shape, "rendered_input")));
    assert_true(json_is_null(json_object_get(json_array_get(steps, 2), "rendered_input")));
    assert_string_equal(json_string_value(json_object_get(callst, "state")), "failed");
    json_t *given = json_object_get(callst, "rendered_input");
    assert_int_equal(jint(given, "attempt"), 1);
    assert_non_null(json_string_value(json_object_get(given, "at")));
    json_t *in = json_object_get(given, "input");
    assert_string_equal(json_string_value(json_object_get(in, "url")),
                        "http://127.0.0.1:9/leads/30012");
    assert_string_equal(json_string_value(json_object_get(json_object_get(in, "body"), "name")),
                        name);
    char *dumped = json_dumps(in, JSON_COMPACT);
    assert_int_equal(jint(given, "bytes"), (long long)strlen(dumped));
    free(dumped);
    json_decref(p);

    snprintf(path, sizeof path, "/v1/runs/%lld/steps", big);
    p = expect(call("GET", path, key_a, NULL), 200);
    given = json_object_get(json_array_get(json_object_get(p, "steps"), 1), "rendered_input");
    assert_true(json_is_null(json_object_get(given, "input")));
    assert_true(jint(given, "bytes") > (long long)big_n);
    json_decref(p);

    /* an attempt 0 (older than the one kept) changes nothing */
    char *before = th_pg_valuef(db, "SELECT si.input::text FROM step_inputs si JOIN steps s ON"
                                    " s.id = si.step_id WHERE s.run_id = %lld", run);
    char *older = th_pg_valuef(
        db,
        "SELECT flowd_step_inputs_put(jsonb_build_array(jsonb_build_object('step', s.id,"
        " 'tenant', s.tenant_id, 'attempt', 0, 'bytes', 2, 'input', '{}'::jsonb)))::text"
        " FROM steps s WHERE s.run_id = %lld AND s.key = 'call'",
        run);
    free(older);
    char *after = th_pg_valuef(db, "SELECT si.input::text || si.attempt FROM step_inputs si JOIN"
                                   " steps s ON s.id = si.step_id WHERE s.run_id = %lld", run);
    char *want = eng_xasprintf("%s1", before);
    assert_string_equal(after, want);
    free(before);
    free(after);
    free(want);

    snprintf(path, sizeof path, "/v1/runs/%lld/steps", run);
    expect_error(call("GET", path, key_b, NULL), 404, NULL);
    expect_error(call("GET", "/v1/runs/99999999/steps", key_a, NULL), 404, NULL);
}

/* ------------------------------------------------------------------ idempotent enqueue -- */

typedef struct idem_arg {
    long status;
    long long id;
} idem_arg;

static void *idem_thread(void *arg)
{
    idem_arg *a = arg;
    CURL *h = curl_easy_init();
    static const char *const hdr[] = {"Idempotency-Key: same-key-20", NULL};
    resp r = call_h(h, "POST", "/v1/runs", key_a,
                    "{\"workflow\": \"listed\", \"input\": {\"n\": 2}}", hdr);
    curl_easy_cleanup(h);
    a->status = r.status;
    json_t *j = json_loads(r.body, 0, NULL);
    a->id = jint(j, "id");
    json_decref(j);
    free(r.body);
    return NULL;
}

static void test_idempotent_enqueue_concurrent(void **state)
{
    (void)state;
    enum { N = 20 };
    pthread_t th[N];
    idem_arg args[N] = {{0}};
    for (int i = 0; i < N; i++)
        pthread_create(&th[i], NULL, idem_thread, &args[i]);
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    int created = 0;
    for (int i = 0; i < N; i++) {
        assert_true(args[i].status == 201 || args[i].status == 200);
        created += args[i].status == 201;
        assert_int_equal(args[i].id, args[0].id);
    }
    assert_int_equal(created, 1);
    assert_int_equal(
        th_pg_long(db, "SELECT count(*) FROM runs WHERE idempotency_key = 'same-key-20'"), 1);
}

/* An error response with this status, code and field. */
static void expect_error_code(resp r, long status, const char *code, const char *field)
{
    json_t *j = expect(r, status);
    json_t *e = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    assert_string_equal(json_string_value(json_object_get(e, "field")), field);
    json_decref(j);
}

/* A key reused for another request is refused (409 idempotency_conflict) and creates nothing; the
 * same request, in any key order and spacing, keeps getting the first run or batch. */
static void test_idempotency_conflict(void **state)
{
    (void)state;
    static const char *const hdr[] = {"Idempotency-Key: conflict-1", NULL};
    put_workflow(key_a, "other", one_step_def);
    /* past the tenant's priority range (default 100): refused, naming the field */
    expect_error(call("POST", "/v1/runs", key_a,
                      "{\"workflow\": \"listed\", \"priority\": 101, \"input\": {\"n\": 1,"
                      " \"m\": [1, 2]}}"),
                 422, "/priority");
    json_t *r = expect(call_h(NULL, "POST", "/v1/runs", key_a,
                              "{\"workflow\": \"listed\", \"input\": {\"n\": 1, \"m\": [1, 2]}}", hdr),
                       201);
    long long id = jint(r, "id");
    json_decref(r);
    r = expect(call_h(NULL, "POST", "/v1/runs", key_a,
                      "{\"input\":{\"m\":[1,2],\"n\":1},\"workflow\":\"listed\",\"priority\":0}", hdr),
               200);
    assert_int_equal(jint(r, "id"), id);
    json_decref(r);
    static const char *const other[] = {
        "{\"workflow\": \"listed\", \"input\": {\"n\": 2, \"m\": [1, 2]}}",
        "{\"workflow\": \"other\", \"input\": {\"n\": 1, \"m\": [1, 2]}}",
        "{\"workflow\": \"listed\", \"version\": 1, \"input\": {\"n\": 1, \"m\": [1, 2]}}",
        "{\"workflow\": \"listed\", \"priority\": 5, \"input\": {\"n\": 1, \"m\": [1, 2]}}",
        "{\"workflow\": \"listed\", \"input\": {\"n\": 1, \"m\": [2, 1]}}"};
    for (size_t i = 0; i < sizeof other / sizeof *other; i++)
        expect_error_code(call_h(NULL, "POST", "/v1/runs", key_a, other[i], hdr), 409,
                          "idempotency_conflict", "Idempotency-Key");
    assert_int_equal(
        th_pg_long(db, "SELECT count(*) FROM runs WHERE idempotency_key = 'conflict-1'"), 1);

    static const char batch[] = "{\"workflow\": \"listed\", \"inputs\": [{\"n\": 1}, {\"n\": 2}],"
                                " \"idempotency_key\": \"conflict-b\"}";
    r = expect(call("POST", "/v1/batches", key_a, batch), 201);
    long long bid = jint(r, "id");
    json_decref(r);
    r = expect(call("POST", "/v1/batches", key_a, batch), 200);
    assert_int_equal(jint(r, "id"), bid);
    json_decref(r);
    expect_error_code(call("POST", "/v1/batches", key_a,
                           "{\"workflow\": \"listed\", \"inputs\": [{\"n\": 2}, {\"n\": 1}],"
                           " \"idempotency_key\": \"conflict-b\"}"),
                      409, "idempotency_conflict", "Idempotency-Key");
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM batches WHERE idempotency_key = 'conflict-b'"),
                     1);
}

/* ------------------------------------------------------------------- input at enqueue -- */

/* A run whose input lacks what its templates need is refused when it is enqueued (422 naming
 * the pointer), as is one that does not match the workflow's input_schema; a batch names the
 * item. Nothing is created. */
static void test_input_checked_at_enqueue(void **state)
{
    (void)state;
    put_workflow(key_a, "hello",
                 "{\"steps\": [{\"key\": \"greet\", \"kind\": \"transform\","
                 " \"input\": {\"text\": \"hi {{input.name}} {{input.title | default: \\\"\\\"}}\"}}]}");
    long long before = th_pg_long(db, "SELECT count(*) FROM runs");
    expect_error_code(call("POST", "/v1/runs", key_a, "{\"workflow\": \"hello\"}"), 422,
                      "invalid_input", "/input/name");
    expect_error_code(call("POST", "/v1/runs", key_a,
                           "{\"workflow\": \"hello\", \"input\": {\"name\": null}}"),
                      422, "invalid_input", "/input/name");
    json_decref(expect(call("POST", "/v1/runs", key_a,
                            "{\"workflow\": \"hello\", \"input\": {\"name\": \"Ada\"}}"),
                       201));

    put_workflow(key_a, "schema",
                 "{\"input_schema\": {\"type\": \"object\", \"required\": [\"lead\"],"
                 " \"properties\": {\"lead\": {\"type\": \"object\", \"required\": [\"email\"],"
                 " \"properties\": {\"email\": {\"type\": \"string\", \"pattern\": \"^[^@]+@[^@]+$\"},"
                 " \"tz\": {\"type\": \"string\"}}}}},"
                 " \"steps\": [{\"key\": \"s\", \"kind\": \"transform\","
                 " \"input\": {\"e\": \"{{input.lead.email}}\"}}]}");
    expect_error_code(call("POST", "/v1/runs", key_a,
                           "{\"workflow\": \"schema\", \"input\": {\"lead\": {\"email\": 42}}}"),
                      422, "invalid_input", "/input/lead/email");
    expect_error_code(call("POST", "/v1/runs", key_a,
                           "{\"workflow\": \"schema\", \"input\": {\"lead\": {\"email\": \"a@b\","
                           " \"tz\": 1}}}"),
                      422, "invalid_input", "/input/lead/tz");
    expect_error_code(call("POST", "/v1/batches", key_a,
                           "{\"workflow\": \"schema\", \"inputs\": [{\"lead\": {\"email\": \"a@b\"}},"
                           " {\"lead\": {\"email\": \"a@b\"}}, {\"lead\": {}}]}"),
                      422, "invalid_input", "/inputs/2/lead/email");
    expect_error_code(call("POST", "/v1/batches", key_a,
                           "{\"workflow\": \"hello\", \"inputs\": [{\"name\": \"a\"}, {}]}"),
                      422, "invalid_input", "/inputs/1/name");
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs"), before + 1);
    json_t *b = expect(call("POST", "/v1/batches", key_a,
                            "{\"workflow\": \"schema\", \"inputs\": [{\"lead\": {\"email\": \"a@b\"}}]}"),
                       201);
    json_decref(b);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs"), before + 2);

    /* the run is created from the version its input was checked against, or not at all */
    PGconn *c = PQconnectdb(db);
    const char *params[] = {"hello"};
    PGresult *r = PQexecParams(
        c,
        "SELECT created FROM flowd_start_run((SELECT tenant_id FROM workflows WHERE name = $1"
        " LIMIT 1), $1, NULL, '{\"name\": \"x\"}', 0, NULL, 99)",
        1, NULL, params, NULL, NULL, 0);
    assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "40001");
    PQclear(r);
    PQfinish(c);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs"), before + 2);
}

/* An event whose triggers would start a run with an input its workflow refuses is refused as a
 * whole (422 naming the pointer in the event), before anything is written: no event stored (the
 * event's waits and cancellations are applied in the same statement), no run started. With the
 * input it needs, it starts the run. */
static void test_trigger_input_checked(void **state)
{
    (void)state;
    put_workflow(key_a, "on_order",
                 "{\"triggers\": [{\"event\": \"crm.order\"}],"
                 " \"steps\": [{\"key\": \"s\", \"kind\": \"transform\","
                 " \"input\": {\"to\": \"{{input.event.data.email}}\"}}]}");
    long long runs = th_pg_long(db, "SELECT count(*) FROM runs");
    long long events = th_pg_long(db, "SELECT count(*) FROM events");
    expect_error_code(call("POST", "/v1/events", key_a,
                           "{\"name\": \"crm.order\", \"key\": \"o-1\", \"data\": {\"id\": 1}}"),
                      422, "invalid_input", "/data/email");
    expect_error_code(call("POST", "/v1/events", key_a,
                           "{\"name\": \"crm.order\", \"key\": \"o-1\","
                           " \"data\": {\"email\": null}}"),
                      422, "invalid_input", "/data/email");
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs"), runs);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM events"), events);
    json_t *ok = expect(call("POST", "/v1/events", key_a,
                             "{\"name\": \"crm.order\", \"key\": \"o-1\","
                             " \"data\": {\"email\": \"a@example.com\"}}"),
                        202);
    assert_int_equal(json_integer_value(json_object_get(ok, "started")), 1);
    json_decref(ok);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs"), runs + 1);
    /* another tenant's trigger of the same event name is not started by tenant a's event */
    put_workflow(key_b, "on_order", "{\"triggers\": [{\"event\": \"crm.order\"}],"
                                    " \"steps\": [{\"key\": \"s\", \"kind\": \"transform\","
                                    " \"input\": {\"x\": 1}}]}");
    json_decref(expect(call("POST", "/v1/events", key_a,
                            "{\"name\": \"crm.order\", \"key\": \"o-2\","
                            " \"data\": {\"email\": \"b@example.com\"}}"),
                       202));
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM runs"), runs + 2);
}

/* ------------------------------------------------------------------------------ batches -- */

/* Counts lines ending in sep and checks each NDJSON line. */
static size_t count_lines(const char *s, const char *sep)
{
    size_t n = 0;
    for (const char *p = strstr(s, sep); p; p = strstr(p + 1, sep))
        n++;
    return n;
}

static void test_batch_validation_and_isolation(void **state)
{
    (void)state;
    put_workflow(key_a, "batched", one_step_def);
    expect_error(call("POST", "/v1/batches", key_a, "{\"workflow\": \"batched\"}"), 422, "/inputs");
    expect_error(call("POST", "/v1/batches", key_a, "{\"workflow\": \"batched\", \"inputs\": []}"),
                 422, "/inputs");
    expect_error(
        call("POST", "/v1/batches", key_a, "{\"workflow\": \"batched\", \"inputs\": [{}, 5]}"), 422,
        "/inputs/1");
    expect_error(call("POST", "/v1/batches", key_a, "{\"workflow\": 3, \"inputs\": [{}]}"), 422,
                 "/workflow");
    expect_error(call("POST", "/v1/batches", key_a,
                      "{\"workflow\": \"batched\", \"inputs\": [{}], \"version\": \"1\"}"),
                 422, "/version");
    expect_error(call("POST", "/v1/batches", key_a,
                      "{\"workflow\": \"batched\", \"inputs\": [{}], \"extra\": 1}"),
                 422, "/extra");
    expect_error(call("POST", "/v1/batches", key_a, "[1]"), 400, NULL);
    expect_error(call("POST", "/v1/batches", key_a, "{\"workflow\": \"nope\", \"inputs\": [{}]}"),
                 404, NULL);
    expect_error(
        call("POST", "/v1/batches", key_b, "{\"workflow\": \"batched\", \"inputs\": [{}]}"), 404,
        NULL);
    assert_int_equal(th_pg_long(db, "SELECT count(*) FROM batches"), 0);

    json_t *b = expect(call("POST", "/v1/batches", key_a,
                            "{\"workflow\": \"batched\", \"inputs\": [{\"n\": 1}, {\"n\": 2}]}"),
                       201);
    long long id = jint(b, "id");
    assert_int_equal(jint(b, "total"), 2);
    json_decref(b);
    char path[96];
    snprintf(path, sizeof path, "/v1/batches/%lld", id);
    b = expect(call("GET", path, key_a, NULL), 200);
    assert_string_equal(json_string_value(json_object_get(b, "state")), "running");
    assert_int_equal(jint(b, "queued"), 2);
    assert_int_equal(jint(b, "percent"), 0);
    json_decref(b);
    expect_error(call("GET", path, key_b, NULL), 404, NULL);
    expect_error(call("GET", "/v1/batches/999999", key_a, NULL), 404, NULL);
    expect_error(call("GET", "/v1/batches/x", key_a, NULL), 404, NULL);
    snprintf(path, sizeof path, "/v1/batches/%lld/results", id);
    expect_error(call("GET", path, key_b, NULL), 404, NULL);
    snprintf(path, sizeof path, "/v1/batches/%lld/results?format=xml", id);
    expect_error(call("GET", path, key_a, NULL), 400, "?format");
    snprintf(path, sizeof path, "/v1/runs?batch=%lld", id);
    json_t *p = expect(call("GET", path, key_a, NULL), 200);
    assert_int_equal(json_array_size(json_object_get(p, "runs")), 2);
    json_decref(p);
    p = expect(call("GET", path, key_b, NULL), 200);
    assert_int_equal(json_array_size(json_object_get(p, "runs")), 0);
    json_decref(p);
}

static void test_batch_10000(void **state)
{
    (void)state;
    enum { N = 10000 };
    json_t *inputs = json_array();
    for (int i = 0; i < N; i++)
        json_array_append_new(inputs, json_pack("{s:i}", "n", i));
    json_t *req = json_pack("{s:s, s:o, s:s}", "workflow", "batched", "inputs", inputs,
                            "idempotency_key", "big-batch");
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    assert_true(strlen(body) < 1024 * 1024);
    long long t0 = th_now_ms();
    json_t *b = expect(call("POST", "/v1/batches", key_a, body), 201);
    long long took = th_now_ms() - t0;
    print_message("batch of %d created in %lld ms\n", N, took);
    long long id = jint(b, "id");
    assert_int_equal(jint(b, "total"), N);
    json_decref(b);
    /* the same key: the same batch, no new runs */
    b = expect(call("POST", "/v1/batches", key_a, body), 200);
    assert_int_equal(jint(b, "id"), id);
    json_decref(b);
    free(body);
    char *sql = eng_xasprintf("SELECT count(*) FROM runs WHERE batch_id = %lld", id);
    assert_int_equal(th_pg_long(db, sql), N);
    free(sql);

    th_workers *ws = th_workers_start(db, 2, "api-batch", 0, 0, 0);
    char path[96];
    snprintf(path, sizeof path, "/v1/batches/%lld", id);
    json_t *last = NULL;
    long long deadline = th_now_ms() + 180000;
    while (th_now_ms() < deadline) {
        json_decref(last);
        last = expect(call("GET", path, key_a, NULL), 200);
        if (strcmp(json_string_value(json_object_get(last, "state")), "running") != 0)
            break;
        th_sleep_ms(200);
    }
    th_workers_stop(ws);
    assert_string_equal(json_string_value(json_object_get(last, "state")), "succeeded");
    assert_int_equal(jint(last, "total"), N);
    assert_int_equal(jint(last, "succeeded"), N);
    assert_int_equal(jint(last, "queued") + jint(last, "running") + jint(last, "failed") +
                         jint(last, "cancelled"),
                     0);
    assert_int_equal(jint(last, "percent"), 100);
    json_decref(last);

    snprintf(path, sizeof path, "/v1/batches/%lld/results", id);
    resp r = call("GET", path, key_a, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(count_lines(r.body, "\n"), N);
    long long prev = 0;
    int seen_n0 = 0;
    for (char *line = r.body, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
        *nl = '\0';
        json_t *row = json_loads(line, 0, NULL);
        assert_non_null(row);
        assert_true(jint(row, "id") > prev); /* every run once, in order */
        prev = jint(row, "id");
        assert_string_equal(json_string_value(json_object_get(row, "state")), "succeeded");
        /* the run's output, gathered from its steps: the one step's rendered {"n": input.n} */
        assert_true(json_equal(json_object_get(json_object_get(row, "output"), "only"),
                               json_object_get(row, "input")));
        assert_true(json_is_null(json_object_get(row, "error")));
        seen_n0 += jint(json_object_get(row, "input"), "n") == 0;
        json_decref(row);
    }
    assert_int_equal(seen_n0, 1);
    free(r.body);

    snprintf(path, sizeof path, "/v1/batches/%lld/results?format=csv", id);
    r = call("GET", path, key_a, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(count_lines(r.body, "\r\n"), N + 1);
    assert_memory_equal(r.body, "id,state,input,output,error\r\n", 29);
    /* input {"n": 0} quoted with doubled quotes; output present, error empty */
    char *first = r.body + 29;
    char *end = strstr(first, "\r\n");
    *end = '\0';
    assert_non_null(strstr(first, ",succeeded,\"{\"\"n\"\": "));
    assert_true(end[-1] == ','); /* empty error column */
    free(r.body);
}

/* ---------------------------------------------------------------------------------- SSE -- */

typedef struct sse_arg {
    long long run;
    const char *last_event_id; /* NULL: none */
    bool stop_after_first;     /* the client leaves after the first event */
    resp r;
} sse_arg;

static size_t sse_collect(char *p, size_t sz, size_t n, void *arg)
{
    sse_arg *a = arg;
    th_resp_collect(p, sz, n, &a->r);
    if (a->stop_after_first && strstr(a->r.body, "\n\n") && strstr(a->r.body, "id: "))
        return 0; /* abort the transfer */
    return sz * n;
}

static void *sse_thread(void *arg)
{
    sse_arg *a = arg;
    CURL *h = curl_easy_init();
    char url[256], auth[128], last[96];
    snprintf(url, sizeof url, "%s/v1/runs/%lld/events", base, a->run);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", key_a);
    struct curl_slist *hl = curl_slist_append(NULL, auth);
    hl = curl_slist_append(hl, "Accept: text/event-stream");
    if (a->last_event_id) {
        snprintf(last, sizeof last, "Last-Event-ID: %s", a->last_event_id);
        hl = curl_slist_append(hl, last);
    }
    a->r.body = eng_xstrdup("");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sse_collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, a);
    CURLcode rc = curl_easy_perform(h);
    if (rc != CURLE_OK && !(a->stop_after_first && rc == CURLE_WRITE_ERROR))
        fprintf(stderr, "sse: %s\n", curl_easy_strerror(rc));
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &a->r.status);
    curl_slist_free_all(hl);
    curl_easy_cleanup(h);
    return NULL;
}

/* The "id: N" values of an SSE body, in order; *n gets their count. */
static long long *sse_ids(const char *body, size_t *n)
{
    long long *ids = eng_xcalloc(1024, sizeof *ids);
    *n = 0;
    for (const char *p = strstr(body, "id: "); p && *n < 1024; p = strstr(p + 1, "\nid: "))
        ids[(*n)++] = strtoll(p + (*p == '\n' ? 5 : 4), NULL, 10);
    return ids;
}

static void test_sse_live_and_resume(void **state)
{
    (void)state;
    put_workflow(key_a, "chain", chain_def);
    long long run = start_run(key_a, "chain", "{}");
    /* the stream starts while nothing runs, so every later event arrives live */
    sse_arg live = {.run = run};
    pthread_t th;
    pthread_create(&th, NULL, sse_thread, &live);
    th_sleep_ms(400);
    th_workers *ws = th_workers_start(db, 1, "api-sse", 0, 0, 0);
    pthread_join(th, NULL);
    th_workers_stop(ws);
    assert_int_equal(live.r.status, 200);
    assert_non_null(strstr(live.r.body, "event: run.created\n"));
    size_t n;
    long long *ids = sse_ids(live.r.body, &n);
    char *sql = eng_xasprintf("SELECT count(*) FROM run_log WHERE run_id = %lld", run);
    long total = th_pg_long(db, sql);
    free(sql);
    assert_true(total >= 8); /* created, started, 3 x (step started + succeeded), succeeded */
    assert_int_equal((long)n, total);
    for (size_t i = 0; i < n; i++) {
        sql = eng_xasprintf("SELECT id FROM run_log WHERE run_id = %lld ORDER BY id OFFSET %zu "
                            "LIMIT 1",
                            run, i);
        assert_int_equal(ids[i], th_pg_long(db, sql)); /* each once, in order */
        free(sql);
    }
    /* data is the event object */
    const char *data = strstr(live.r.body, "data: ");
    json_t *ev = json_loadb(data + 6, strcspn(data + 6, "\n"), 0, NULL);
    assert_non_null(ev);
    assert_int_equal(jint(ev, "seq"), ids[0]);
    assert_non_null(json_object_get(ev, "at"));
    json_decref(ev);

    /* resume after the third event: the rest, once each, then the stream ends */
    char last[24];
    snprintf(last, sizeof last, "%lld", ids[2]);
    sse_arg again = {.run = run, .last_event_id = last};
    sse_thread(&again);
    size_t n2;
    long long *ids2 = sse_ids(again.r.body, &n2);
    assert_int_equal(n2, n - 3);
    for (size_t i = 0; i < n2; i++)
        assert_int_equal(ids2[i], ids[i + 3]);
    free(ids2);

    /* the JSON form with ?after */
    char path[96];
    snprintf(path, sizeof path, "/v1/runs/%lld/events?after=%lld", run, ids[n - 2]);
    json_t *p = expect(call("GET", path, key_a, NULL), 200);
    json_t *evs = json_object_get(p, "events");
    assert_int_equal(json_array_size(evs), 1);
    assert_int_equal(jint(json_array_get(evs, 0), "seq"), ids[n - 1]);
    assert_string_equal(json_string_value(json_object_get(json_array_get(evs, 0), "type")),
                        "run.succeeded");
    json_decref(p);
    snprintf(path, sizeof path, "/v1/runs/%lld/events", run);
    p = expect(call("GET", path, key_a, NULL), 200);
    assert_int_equal(json_array_size(json_object_get(p, "events")), n);
    json_decref(p);
    snprintf(path, sizeof path, "/v1/runs/%lld/events?after=-1", run);
    expect_error(call("GET", path, key_a, NULL), 400, "?after");
    snprintf(path, sizeof path, "/v1/runs/%lld/events", run);
    static const char *const bad_last[] = {"Accept: text/event-stream", "Last-Event-ID: x", NULL};
    expect_error(call_h(NULL, "GET", path, key_a, NULL, bad_last), 400, "Last-Event-ID");
    static const char *const sse_hdr[] = {"Accept: text/event-stream", NULL};
    expect_error(call_h(NULL, "GET", path, key_b, NULL, sse_hdr), 404, NULL);
    expect_error(call_h(NULL, "GET", "/v1/runs/999999/events", key_a, NULL, sse_hdr), 404, NULL);
    free(ids);
    free(live.r.body);
    free(again.r.body);
}

/* A run whose log mixes events read from its rows (its start, a's and c's steps, its success) with
 * logged ones (its creation, b skipped because its need was): nothing routine is written as a row,
 * and a client resuming after any event, by Last-Event-ID or ?after, gets exactly the events that
 * follow it, none twice, none left out. */
static void test_sse_resume_merged_log(void **state)
{
    (void)state;
    put_workflow(key_a, "mixed",
                 "{\"steps\": [{\"key\": \"a\", \"kind\": \"transform\", \"when\": \"input.go\","
                 " \"input\": {}},"
                 " {\"key\": \"b\", \"kind\": \"transform\", \"needs\": [\"a\"], \"input\": {}},"
                 " {\"key\": \"c\", \"kind\": \"transform\", \"input\": {}}]}");
    long long run = start_run(key_a, "mixed", "{\"go\": false}");
    th_workers *ws = th_workers_start(db, 1, "api-mixed", 0, 0, 0);
    char *sql = eng_xasprintf("SELECT state = 'succeeded' FROM runs WHERE id = %lld", run);
    assert_true(th_engine_wait(db, sql, 30));
    free(sql);
    th_workers_stop(ws);
    char *rows = th_pg_valuef(db, "SELECT string_agg(type || coalesce(':' || step_key, ''), ','"
                                  " ORDER BY id) FROM run_events WHERE run_id = %lld", run);
    assert_string_equal(rows, "run.created,step.skipped:b");
    free(rows);

    sse_arg all = {.run = run};
    sse_thread(&all);
    assert_int_equal(all.r.status, 200);
    size_t n;
    long long *ids = sse_ids(all.r.body, &n);
    assert_int_equal(n, 8);
    char *types = th_pg_valuef(db, "SELECT string_agg(type || coalesce(':' || step_key, ''), ','"
                                   " ORDER BY id) FROM run_log WHERE run_id = %lld", run);
    assert_string_equal(types + strlen(types) - strlen("step.skipped:b,run.succeeded"),
                        "step.skipped:b,run.succeeded");
    assert_memory_equal(types, "run.created,run.started,step.started:", 36);
    free(types);
    for (size_t i = 0; i < n; i++) {
        char *q = eng_xasprintf("SELECT id FROM run_log WHERE run_id = %lld ORDER BY id OFFSET %zu"
                                " LIMIT 1", run, i);
        assert_int_equal(ids[i], th_pg_long(db, q));
        free(q);
    }
    for (size_t i = 0; i < n; i++) {
        char last[24];
        snprintf(last, sizeof last, "%lld", ids[i]);
        sse_arg again = {.run = run, .last_event_id = last};
        sse_thread(&again);
        size_t n2;
        long long *ids2 = sse_ids(again.r.body, &n2);
        /* after the last event of a finished run: 204, which ends an EventSource */
        assert_int_equal(again.r.status, i + 1 == n ? 204 : 200);
        assert_int_equal(n2, n - i - 1);
        for (size_t j = 0; j < n2; j++)
            assert_int_equal(ids2[j], ids[i + 1 + j]);
        free(ids2);
        free(again.r.body);

        char path[96];
        snprintf(path, sizeof path, "/v1/runs/%lld/events?after=%lld", run, ids[i]);
        json_t *p = expect(call("GET", path, key_a, NULL), 200);
        json_t *evs = json_object_get(p, "events");
        assert_int_equal(json_array_size(evs), n - i - 1);
        for (size_t j = 0; j < json_array_size(evs); j++)
            assert_int_equal(jint(json_array_get(evs, j), "seq"), ids[i + 1 + j]);
        json_decref(p);
    }
    free(ids);
    free(all.r.body);
}

static void test_sse_client_leaves(void **state)
{
    (void)state;
    /* no workers: the run stays queued and the stream would wait forever */
    long long run = start_run(key_a, "chain", "{}");
    for (int i = 0; i < 3; i++) {
        sse_arg a = {.run = run, .stop_after_first = true};
        sse_thread(&a);
        assert_non_null(strstr(a.r.body, "event: run.created"));
        free(a.r.body);
    }
    th_sleep_ms(500); /* the server notices the closed sockets and drops the streams */
    json_decref(expect(call("GET", "/healthz", NULL, NULL), 200));
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld/cancel", run);
    json_decref(expect(call("POST", path, key_a, "{}"), 200));
}

/* ---------------------------------------------------------------------------- CLI --url -- */

static json_t *run_flowd(const char *const *argv, const char *const *env, int want_status)
{
    char *out = NULL, *err = NULL;
    int st = th_flowd_run(argv, env, &out, &err);
    if (st != want_status)
        fail_msg("flowd exited %d (want %d): %s", st, want_status, err);
    json_t *j = json_loads(out, JSON_DISABLE_EOF_CHECK | JSON_DECODE_ANY, NULL);
    free(out);
    free(err);
    return j;
}

static void test_cli_tenant_and_url_mode(void **state)
{
    (void)state;
    char env_key[96];
    snprintf(env_key, sizeof env_key, "FLOWD_API_KEY=%s", ADMIN_KEY);
    const char *const env[] = {env_key, NULL};
    const char *const no_key[] = {"FLOWD_API_KEY", NULL};

    /* directly on the database, then over the API: each prints a working admin key */
    const char *direct[] = {"flowd",      "--database",    db,  "tenant", "create",
                            "cli-direct", "--max-running", "3", NULL};
    json_t *d = run_flowd(direct, env, 0);
    const char *dkey = json_string_value(json_object_get(json_object_get(d, "key"), "key"));
    assert_non_null(dkey);
    assert_int_equal(jint(json_object_get(d, "tenant"), "max_running"), 3);
    json_decref(expect(call("GET", "/v1/runs", dkey, NULL), 200));
    json_decref(d);
    json_decref(run_flowd(direct, env, 1)); /* the name is taken */
    const char *via_url[] = {"flowd", "--url", base, "tenant", "create", "cli-url", NULL};
    d = run_flowd(via_url, env, 0);
    const char *ukey = json_string_value(json_object_get(json_object_get(d, "key"), "key"));
    assert_non_null(ukey);
    assert_string_equal(json_string_value(json_object_get(json_object_get(d, "tenant"), "name")),
                        "cli-url");
    char ukey_env[96];
    snprintf(ukey_env, sizeof ukey_env, "FLOWD_API_KEY=%s", ukey);
    const char *const uenv[] = {ukey_env, NULL};
    json_decref(d);
    json_decref(run_flowd(via_url, no_key, 1));

    /* enqueue, status and event over the API, as the new tenant */
    char path[] = "/tmp/flowd_cli_wf_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    static const char def[] = "{\"name\": \"cli-wf\", \"steps\": [{\"key\": \"s\", \"kind\": "
                              "\"transform\", \"input\": {\"v\": \"{{input.v}}\"}}]}";
    assert_int_equal(write(fd, def, strlen(def)), (ssize_t)strlen(def));
    close(fd);
    const char *enq[] = {"flowd", "--url",   base,         "enqueue",           "--workflow",
                         path,    "--input", "{\"v\": 5}", "--idempotency-key", "cli-1",
                         NULL};
    json_t *id = run_flowd(enq, uenv, 0);
    assert_true(json_is_integer(id));
    json_t *id2 = run_flowd(enq, uenv, 0);
    assert_int_equal(json_integer_value(id), json_integer_value(id2)); /* idempotent */
    json_decref(id2);
    char id_s[24];
    snprintf(id_s, sizeof id_s, "%lld", (long long)json_integer_value(id));
    json_decref(id);
    const char *status[] = {"flowd", "--url", base, "status", id_s, NULL};
    json_t *run = run_flowd(status, uenv, 0);
    assert_string_equal(json_string_value(json_object_get(run, "workflow")), "cli-wf");
    assert_int_equal(jint(json_object_get(run, "input"), "v"), 5);
    json_decref(run);
    json_decref(run_flowd(status, env, 1)); /* the default tenant cannot see it */
    const char *event[] = {"flowd", "--url", base, "event", "lead.replied", "k1", NULL};
    json_t *ev = run_flowd(event, uenv, 0);
    assert_int_equal(jint(ev, "resumed"), 0);
    json_decref(ev);
    const char *unsupported[] = {"flowd", "--url", base, "migrate", NULL};
    json_decref(run_flowd(unsupported, uenv, 1));
    unlink(path);
}

/* ------------------------------------------------------------------------------- setup -- */

static int group_setup(void **state)
{
    (void)state;
    api = th_api_start(&(th_api_opts){.prefix = "api_routes", .no_workers = true});
    db = th_api_db(api);
    base = th_api_url(api);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    th_api_stop(api);
    return 0;
}

int main(void)
{
    th_api_init();
    step_register_all(); /* the http kind of test_run_steps_rendered_input */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admin_tenants_and_keys),
        cmocka_unit_test(test_runs_list_paging_and_filters),
        cmocka_unit_test(test_runs_free_search),
        cmocka_unit_test(test_run_steps_rendered_input),
        cmocka_unit_test(test_idempotent_enqueue_concurrent),
        cmocka_unit_test(test_batch_validation_and_isolation),
        cmocka_unit_test(test_batch_10000),
        cmocka_unit_test(test_idempotency_conflict),
        cmocka_unit_test(test_input_checked_at_enqueue),
        cmocka_unit_test(test_trigger_input_checked),
        cmocka_unit_test(test_sse_live_and_resume),
        cmocka_unit_test(test_sse_resume_merged_log),
        cmocka_unit_test(test_sse_client_leaves),
        cmocka_unit_test(test_cli_tenant_and_url_mode),
    };
    int rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
