/* tests/integration/test_webhooks.c: outbound webhooks end to end (api/routes_webhooks.c,
 * engine/webhook.c, sql/webhooks.sql, migrations 0038-0039) against a receiver that verifies
 * every delivery with the Standard Webhooks reference library (tests/webhooks/receiver.js, npm
 * standardwebhooks):
 *   - endpoints: create (secret shown once), list, get, update, pause/resume, delete, 422 naming
 *     the field for bad urls and event types;
 *   - run.succeeded, run.failed with step.failed, run.cancelled, batch.completed, each verified,
 *     the body's data being the run as GET /v1/runs/{id} returns it; events and workflows filters;
 *   - a failing receiver gets the attempts on the schedule (test clock), one webhook-id for all,
 *     Retry-After honoured, the attempt log listed by GET /v1/webhook-deliveries; redeliver;
 *   - 410 disables the endpoint with a reason; five days of failures disable it too;
 *   - a rotated secret: deliveries carry two signatures, each secret verifies alone;
 *   - with the operator's key set, secrets are stored sealed and deliveries still verify; without
 *     the key a delivery is never sent unsigned: its attempt says why and it waits;
 *   - runs ended by one statement: one message each, in run id order, only those wanted;
 *   - a run's one-off callback, signed with the tenant's callback secret; a batch's, with
 *     batch.completed and the run events of its runs;
 *   - schedule.fired, written with the fire (POST .../trigger and a tick of the test clock);
 *   - kill -9 of the flowd process delivering: the delivery goes out again after its lease, with
 *     the same webhook-id, and is recorded once as succeeded. */
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
#include <sys/wait.h>
#include <unistd.h>

#include "engine/httpc.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "engine/secret.h"
#include "engine/step.h"
#include "engine/webhook.h"
#include "steps/steps.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"
#include "tests/support/th_engine.h"

typedef struct receiver {
    pid_t pid;
    int in; /* its stdin: closing it stops it */
    char url[64];
} receiver;

typedef struct world {
    th_api *api;
    eng_webhooks *wh;
    receiver rx;
} world;

/* ---------------------------------------------------------------------------- receiver -- */

static void rx_start(receiver *r)
{
    int in[2], out[2];
    assert_int_equal(pipe(in), 0);
    assert_int_equal(pipe(out), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[1]);
        close(out[0]);
        char script[512], dir[512];
        snprintf(script, sizeof script, "%s/tests/webhooks/run.sh", th_source_dir());
        snprintf(dir, sizeof dir, "%s/npm-webhooks", getenv("FLOWD_BUILD_DIR"));
        execl(script, script, th_source_dir(), dir, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    char line[32] = "";
    size_t n = 0;
    while (n < sizeof line - 1) {
        ssize_t got = read(out[0], line + n, 1);
        if (got <= 0 || line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    close(out[0]);
    assert_true(atoi(line) > 0);
    r->pid = pid;
    r->in = in[1];
    snprintf(r->url, sizeof r->url, "http://127.0.0.1:%d", atoi(line));
}

static void rx_stop(receiver *r)
{
    close(r->in);
    int status;
    waitpid(r->pid, &status, 0);
}

static char *rx_request(receiver *r, const char *method, const char *path, const char *body)
{
    char url[128];
    snprintf(url, sizeof url, "%s%s", r->url, path);
    CURL *c = curl_easy_init();
    th_resp resp = {.body = eng_xstrdup("")};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, th_resp_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_cleanup(c);
    return resp.body;
}

/* How the receiver verifies and answers from now on (JSON text). */
static void rx_config(receiver *r, const char *json)
{
    free(rx_request(r, "POST", "/_config", json));
}

static json_t *rx_log(receiver *r)
{
    char *text = rx_request(r, "GET", "/_log", NULL);
    json_t *log = json_loads(text, 0, NULL);
    free(text);
    assert_non_null(log);
    return log;
}

/* Deliveries of type for run (0: any) received so far. */
static int rx_count(receiver *r, const char *type, long long run)
{
    json_t *log = rx_log(r);
    int n = 0;
    size_t i;
    json_t *e;
    json_array_foreach(log, i, e) {
        const char *t = json_string_value(json_object_get(e, "type"));
        if (type && (!t || strcmp(t, type) != 0))
            continue;
        if (run && json_integer_value(json_object_get(e, "run")) != run)
            continue;
        n++;
    }
    json_decref(log);
    return n;
}

/* Waits (delivery is immediate: no schedule is waited for here) until n such deliveries arrived. */
static void rx_wait(receiver *r, const char *type, long long run, int n)
{
    long long until = th_now_ms() + 20000;
    while (rx_count(r, type, run) < n) {
        if (th_now_ms() > until)
            fail_msg("no %d %s deliveries for run %lld", n, type ? type : "", run);
        th_sleep_ms(20);
    }
}

/* ------------------------------------------------------------------------------- helpers -- */

static const char wf_ok[] = "{\"steps\": [{\"key\": \"a\", \"kind\": \"transform\", "
                            "\"input\": {\"x\": \"{{input.x}}\"}}]}";
static const char wf_wait[] = "{\"steps\": [{\"key\": \"w\", \"kind\": \"wait_event\", "
                              "\"input\": {\"event\": \"go\", \"key\": \"k\", \"timeout\": \"1d\"}}]}";

static void put_workflow(world *w, const char *name, const char *def)
{
    char path[96];
    snprintf(path, sizeof path, "/v1/workflows/%s", name);
    long status;
    free(th_api_raw(w->api, "PUT", path, def, &status));
    assert_true(status == 200 || status == 201);
}

/* Creates an endpoint on the receiver with extra JSON members (may be ""); returns it. */
static json_t *endpoint_new(world *w, const char *path, const char *extra)
{
    char body[512];
    snprintf(body, sizeof body, "{\"url\": \"%s%s\"%s%s}", w->rx.url, path, *extra ? ", " : "",
             extra);
    json_t *e = th_api_json(w->api, 201, "POST", "/v1/webhook-endpoints", body);
    char cfg[256];
    snprintf(cfg, sizeof cfg, "{\"secrets\": [\"%s\"], \"status\": 204, \"hold\": false}",
             json_string_value(json_object_get(e, "secret")));
    rx_config(&w->rx, cfg);
    return e;
}

static void endpoint_delete(world *w, json_t *e)
{
    char path[64];
    snprintf(path, sizeof path, "/v1/webhook-endpoints/%lld",
             (long long)json_integer_value(json_object_get(e, "id")));
    long status;
    free(th_api_raw(w->api, "DELETE", path, NULL, &status));
    assert_int_equal(status, 204);
    json_decref(e);
}

static json_t *deliveries(world *w, const char *query)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/webhook-deliveries?%s", query);
    json_t *d = th_api_json(w->api, 200, "GET", path, NULL);
    json_t *list = json_incref(json_object_get(d, "deliveries"));
    json_decref(d);
    return list;
}

static void advance(world *w, const char *by)
{
    char body[64];
    snprintf(body, sizeof body, "{\"advance\": \"%s\"}", by);
    json_decref(th_api_json(w->api, 200, "POST", "/v1/test/clock", body));
}

/* The delivery of run as listed (at most one is asserted), NULL while there is none. */
static json_t *delivery_find(world *w, long long run)
{
    char q[64];
    snprintf(q, sizeof q, "run=%lld", run);
    json_t *list = deliveries(w, q);
    assert_true(json_array_size(list) <= 1);
    json_t *d = json_incref(json_array_get(list, 0));
    json_decref(list);
    return d;
}

static json_t *delivery_of(world *w, long long run)
{
    json_t *d = delivery_find(w, run);
    assert_non_null(d);
    return d;
}

/* Milliseconds from the engine clock's now to the delivery's next attempt. */
static long long next_in_ms(world *w, const json_t *d)
{
    char *at = th_pg_valuef(th_api_db(w->api),
                            "SELECT (extract(epoch FROM next_at - flowd_now()) * 1000)::bigint "
                            "FROM webhook_sends WHERE id = %lld",
                            (long long)json_integer_value(json_object_get(d, "id")));
    long long ms = atoll(at);
    free(at);
    return ms;
}

static json_t *wait_delivery_state(world *w, long long run, const char *state, int attempts)
{
    long long until = th_now_ms() + 20000;
    for (;;) {
        json_t *d = delivery_find(w, run);
        if (d && strcmp(json_string_value(json_object_get(d, "state")), state) == 0 &&
            json_array_size(json_object_get(d, "attempt_log")) >= (size_t)attempts)
            return d;
        json_decref(d);
        if (th_now_ms() > until)
            fail_msg("delivery of run %lld never %s after %d attempts", run, state, attempts);
        th_sleep_ms(20);
    }
}

/* --------------------------------------------------------------------------------- tests -- */

static void test_endpoint_api(void **state)
{
    world *w = *state;
    json_t *e = endpoint_new(w, "/crud", "\"events\": [\"run.failed\"], \"description\": \"ops\"");
    const char *secret = json_string_value(json_object_get(e, "secret"));
    assert_non_null(secret);
    assert_int_equal(strncmp(secret, "whsec_", 6), 0);
    assert_string_equal(json_string_value(json_object_get(e, "state")), "active");
    long long id = json_integer_value(json_object_get(e, "id"));
    char path[96];
    snprintf(path, sizeof path, "/v1/webhook-endpoints/%lld", id);
    /* the secret is shown once */
    json_t *got = th_api_json(w->api, 200, "GET", path, NULL);
    assert_null(json_object_get(got, "secret"));
    assert_string_equal(json_string_value(json_object_get(got, "description")), "ops");
    json_decref(got);
    got = th_api_json(w->api, 200, "PATCH", path,
                      "{\"events\": null, \"workflows\": [\"wh_ok\"], \"description\": null}");
    assert_true(json_is_null(json_object_get(got, "events")));
    assert_true(json_is_null(json_object_get(got, "description")));
    assert_string_equal(json_string_value(json_array_get(json_object_get(got, "workflows"), 0)),
                        "wh_ok");
    json_decref(got);
    char sub[128];
    snprintf(sub, sizeof sub, "%s/pause", path);
    got = th_api_json(w->api, 200, "POST", sub, NULL);
    assert_string_equal(json_string_value(json_object_get(got, "state")), "paused");
    json_decref(got);
    snprintf(sub, sizeof sub, "%s/resume", path);
    got = th_api_json(w->api, 200, "POST", sub, NULL);
    assert_string_equal(json_string_value(json_object_get(got, "state")), "active");
    json_decref(got);
    got = th_api_json(w->api, 200, "GET", "/v1/webhook-endpoints", NULL);
    assert_int_equal(json_array_size(json_object_get(got, "endpoints")), 1);
    json_decref(got);
    /* refusals name the field */
    static const struct {
        const char *body, *field;
    } bad[] = {
        {"{}", "/url"},
        {"{\"url\": \"ftp://example.com/x\"}", "/url"},
        {"{\"url\": \"https://example.com/x\", \"events\": [\"run.exploded\"]}", "/events"},
        {"{\"url\": \"https://example.com/x\", \"events\": []}", "/events"},
        {"{\"url\": \"https://example.com/x\", \"workflows\": [1]}", "/workflows"},
        {"{\"url\": \"https://example.com/x\", \"secret\": \"mine\"}", "/secret"},
    };
    for (size_t i = 0; i < ENG_ARRAY_LEN(bad); i++) {
        json_t *r = th_api_json(w->api, 422, "POST", "/v1/webhook-endpoints", bad[i].body);
        const char *f = json_string_value(json_object_get(json_object_get(r, "error"), "field"));
        if (!f || strcmp(f, bad[i].field) != 0)
            fail_msg("%s: field %s, expected %s", bad[i].body, f ? f : "(none)", bad[i].field);
        json_decref(r);
    }
    json_decref(th_api_json(w->api, 404, "GET", "/v1/webhook-endpoints/999999", NULL));
    endpoint_delete(w, e);
    json_decref(th_api_json(w->api, 404, "GET", path, NULL));
}

static void test_run_events_verified(void **state)
{
    world *w = *state;
    put_workflow(w, "wh_ok", wf_ok);
    put_workflow(w, "wh_wait", wf_wait);
    json_t *e = endpoint_new(w, "/events", "");
    long long ok = th_api_start_run(w->api, "wh_ok", "{\"x\": 1}");
    rx_wait(&w->rx, "run.succeeded", ok, 1);
    /* the data is the run as the API returns it */
    json_t *run = th_api_wait_run(w->api, ok, 20, 10, NULL, NULL);
    json_t *d = wait_delivery_state(w, ok, "succeeded", 1);
    assert_int_equal(json_integer_value(json_object_get(
                         json_array_get(json_object_get(d, "attempt_log"), 0), "status")),
                     204);
    char *body = th_pg_valuef(th_api_db(w->api),
                              "SELECT m.body FROM webhook_messages m JOIN webhook_sends s ON "
                              "s.message_id = m.id WHERE s.id = %lld",
                              (long long)json_integer_value(json_object_get(d, "id")));
    json_t *msg = json_loads(body, 0, NULL);
    free(body);
    assert_string_equal(json_string_value(json_object_get(msg, "type")), "run.succeeded");
    assert_true(json_equal(json_object_get(msg, "data"), run));
    json_decref(msg);
    json_decref(run);
    json_decref(d);

    /* a cancelled run */
    long long waiting = th_api_start_run(w->api, "wh_wait", "{}");
    char path[96];
    snprintf(path, sizeof path, "/v1/runs/%lld/cancel", waiting);
    long status;
    free(th_api_raw(w->api, "POST", path, NULL, &status));
    assert_int_equal(status, 200);
    rx_wait(&w->rx, "run.cancelled", waiting, 1);

    /* a batch */
    json_decref(th_api_json(w->api, 201, "POST", "/v1/batches",
                            "{\"workflow\": \"wh_ok\", \"inputs\": [{\"x\": 1}, {\"x\": 2}]}"));
    rx_wait(&w->rx, "batch.completed", 0, 1);

    json_t *log = rx_log(&w->rx);
    size_t i;
    json_t *entry;
    json_array_foreach(log, i, entry) assert_true(json_is_true(json_object_get(entry, "verified")));
    json_decref(log);
    assert_int_equal(rx_count(&w->rx, "batch.completed", 0), 1);
    endpoint_delete(w, e);
}

static void test_failed_run_and_filters(void **state)
{
    world *w = *state;
    /* an http step the receiver refuses (400: final at once) fails the run */
    char def[512];
    snprintf(def, sizeof def,
             "{\"steps\": [{\"key\": \"call\", \"kind\": \"http\", \"input\": {\"method\": "
             "\"POST\", \"url\": \"%s/not-a-webhook\"}}]}",
             w->rx.url);
    put_workflow(w, "wh_fail", def);
    json_t *only_ok = endpoint_new(w, "/filtered", "\"workflows\": [\"wh_ok\"]");
    json_t *e = endpoint_new(w, "/failures", "\"events\": [\"run.failed\", \"step.failed\"]");
    char cfg[256];
    snprintf(cfg, sizeof cfg, "{\"secrets\": [\"%s\", \"%s\"]}",
             json_string_value(json_object_get(only_ok, "secret")),
             json_string_value(json_object_get(e, "secret")));
    rx_config(&w->rx, cfg);
    long long bad = th_api_start_run(w->api, "wh_fail", "{}");
    long long good = th_api_start_run(w->api, "wh_ok", "{\"x\": 2}");
    rx_wait(&w->rx, "run.failed", bad, 1);
    rx_wait(&w->rx, "step.failed", bad, 1);
    rx_wait(&w->rx, "run.succeeded", good, 1);
    /* run.succeeded of wh_ok went to the filtered endpoint only; wh_fail's events to the other */
    char q[64];
    snprintf(q, sizeof q, "run=%lld", good);
    json_t *list = deliveries(w, q);
    assert_int_equal(json_array_size(list), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(list, 0), "endpoint")),
                     json_integer_value(json_object_get(only_ok, "id")));
    json_decref(list);
    snprintf(q, sizeof q, "run=%lld&state=succeeded", bad);
    long long until = th_now_ms() + 20000;
    for (;;) {
        list = deliveries(w, q);
        size_t n = json_array_size(list);
        json_decref(list);
        if (n == 2)
            break;
        if (th_now_ms() > until)
            fail_msg("%zu deliveries of run %lld succeeded, expected 2", n, bad);
        th_sleep_ms(20);
    }
    endpoint_delete(w, only_ok);
    endpoint_delete(w, e);
}

/* Runs ended by one statement (a cancel of several): the run trigger reads them together, and each
 * run of a workflow the endpoint wants gets exactly one run.cancelled, in run id order; the others
 * none. */
static void test_runs_ended_together(void **state)
{
    world *w = *state;
    put_workflow(w, "wh_wait", wf_wait);
    put_workflow(w, "wh_quiet", wf_wait);
    json_t *e = endpoint_new(w, "/together", "\"workflows\": [\"wh_wait\"]");
    long long runs[6];
    for (int i = 0; i < 6; i++)
        runs[i] = th_api_start_run(w->api, i % 2 ? "wh_quiet" : "wh_wait", "{}");
    const char *db = th_api_db(w->api);
    assert_int_equal(th_pg_longf(db,
                                 "SELECT flowd_cancel_runs(ARRAY[%lld, %lld, %lld, %lld, %lld, "
                                 "%lld], '{\"code\": \"test\"}')",
                                 runs[0], runs[1], runs[2], runs[3], runs[4], runs[5]),
                     6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(th_pg_longf(db,
                                     "SELECT count(*) FROM webhook_messages WHERE run_id = %lld "
                                     "AND type = 'run.cancelled'",
                                     runs[i]),
                         i % 2 ? 0 : 1);
    assert_int_equal(th_pg_longf(db,
                                 "SELECT count(*) FROM (SELECT run_id, lag(run_id) OVER (ORDER BY "
                                 "id) AS prev FROM webhook_messages WHERE run_id IN (%lld, %lld, "
                                 "%lld)) m WHERE m.prev > m.run_id",
                                 runs[0], runs[2], runs[4]),
                     0);
    for (int i = 0; i < 6; i += 2)
        rx_wait(&w->rx, "run.cancelled", runs[i], 1);
    endpoint_delete(w, e);
}

static void test_retries_on_schedule(void **state)
{
    world *w = *state;
    json_t *e = endpoint_new(w, "/flaky", "");
    rx_config(&w->rx, "{\"status\": 500}");
    uint64_t retried = eng_metrics_value("flowd_webhook_attempts_total", "outcome=\"retry\"");
    long long run = th_api_start_run(w->api, "wh_ok", "{\"x\": 3}");
    /* immediately, then 5 s, 5 min, 30 min, 2 h (each +-10 %) */
    static const long long schedule[] = {5000, 300000, 1800000, 7200000};
    for (int i = 0; i < 4; i++) {
        json_t *d = wait_delivery_state(w, run, "pending", i + 1);
        long long in = next_in_ms(w, d);
        if (in < schedule[i] * 85 / 100 || in > schedule[i] * 115 / 100)
            fail_msg("attempt %d: next in %lld ms, expected about %lld", i + 1, in, schedule[i]);
        json_decref(d);
        char by[32];
        snprintf(by, sizeof by, "%lldms", in + 10);
        if (i == 3) /* before the clock move that makes the fifth attempt due */
            rx_config(&w->rx, "{\"status\": 200}");
        advance(w, by);
    }
    json_decref(wait_delivery_state(w, run, "succeeded", 5));
    assert_true(eng_metrics_value("flowd_webhook_attempts_total", "outcome=\"retry\"") >=
                retried + 4);
    /* five attempts, one webhook-id, every one verified */
    json_t *log = rx_log(&w->rx);
    const char *id = NULL;
    int n = 0;
    size_t i;
    json_t *entry;
    json_array_foreach(log, i, entry) {
        if (json_integer_value(json_object_get(entry, "run")) != run)
            continue;
        assert_true(json_is_true(json_object_get(entry, "verified")));
        if (!id)
            id = json_string_value(json_object_get(entry, "id"));
        assert_string_equal(json_string_value(json_object_get(entry, "id")), id);
        n++;
    }
    assert_int_equal(n, 5);
    json_decref(log);

    /* Retry-After longer than the schedule's 5 s is honoured */
    rx_config(&w->rx, "{\"status\": 503, \"retry_after\": \"600\"}");
    long long run2 = th_api_start_run(w->api, "wh_ok", "{\"x\": 4}");
    json_t *d = wait_delivery_state(w, run2, "pending", 1);
    long long in = next_in_ms(w, d);
    if (in < 590000 || in > 600500)
        fail_msg("Retry-After 600: next in %lld ms", in);
    /* redeliver sends it again now, with the same id */
    rx_config(&w->rx, "{\"status\": 204, \"retry_after\": null}");
    char path[96];
    snprintf(path, sizeof path, "/v1/webhook-deliveries/%lld/redeliver",
             (long long)json_integer_value(json_object_get(d, "id")));
    json_decref(th_api_json(w->api, 202, "POST", path, NULL));
    json_decref(wait_delivery_state(w, run2, "succeeded", 2));
    json_decref(d);
    endpoint_delete(w, e);
}

static void test_gone_and_failing_disable(void **state)
{
    world *w = *state;
    json_t *e = endpoint_new(w, "/gone", "");
    rx_config(&w->rx, "{\"status\": 410}");
    long long run = th_api_start_run(w->api, "wh_ok", "{\"x\": 5}");
    json_decref(wait_delivery_state(w, run, "failed", 1));
    char path[96];
    snprintf(path, sizeof path, "/v1/webhook-endpoints/%lld",
             (long long)json_integer_value(json_object_get(e, "id")));
    json_t *got = th_api_json(w->api, 200, "GET", path, NULL);
    assert_string_equal(json_string_value(json_object_get(got, "state")), "disabled");
    assert_non_null(strstr(json_string_value(json_object_get(got, "disabled_reason")), "410"));
    json_decref(got);
    /* a disabled endpoint gets nothing new */
    long long later = th_api_start_run(w->api, "wh_ok", "{\"x\": 6}");
    json_decref(th_api_wait_run(w->api, later, 20, 10, NULL, NULL));
    char q[64];
    snprintf(q, sizeof q, "run=%lld", later);
    json_t *list = deliveries(w, q);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    endpoint_delete(w, e);

    /* failing for five days disables it too */
    e = endpoint_new(w, "/down", "");
    rx_config(&w->rx, "{\"status\": 500}");
    run = th_api_start_run(w->api, "wh_ok", "{\"x\": 7}");
    json_decref(wait_delivery_state(w, run, "pending", 1));
    for (int attempt = 2; attempt <= 8; attempt++) {
        json_t *d = delivery_of(w, run);
        if (strcmp(json_string_value(json_object_get(d, "state")), "pending") != 0) {
            json_decref(d);
            break;
        }
        char by[32];
        snprintf(by, sizeof by, "%lldms", next_in_ms(w, d) + 10);
        json_decref(d);
        advance(w, by);
        long long until = th_now_ms() + 20000;
        for (;;) {
            d = delivery_of(w, run);
            size_t n = json_array_size(json_object_get(d, "attempt_log"));
            json_decref(d);
            if (n >= (size_t)attempt)
                break;
            if (th_now_ms() > until)
                fail_msg("attempt %d never came", attempt);
            th_sleep_ms(20);
        }
    }
    snprintf(path, sizeof path, "/v1/webhook-endpoints/%lld",
             (long long)json_integer_value(json_object_get(e, "id")));
    got = th_api_json(w->api, 200, "GET", path, NULL);
    /* the schedule's 8 attempts span about 27.5 h: the endpoint is not disabled by them alone */
    assert_string_equal(json_string_value(json_object_get(got, "state")), "active");
    json_decref(got);
    advance(w, "5d");
    long long run2 = th_api_start_run(w->api, "wh_ok", "{\"x\": 8}");
    json_decref(wait_delivery_state(w, run2, "failed", 1));
    got = th_api_json(w->api, 200, "GET", path, NULL);
    assert_string_equal(json_string_value(json_object_get(got, "state")), "disabled");
    assert_non_null(strstr(json_string_value(json_object_get(got, "disabled_reason")), "5 days"));
    json_decref(got);
    endpoint_delete(w, e);
}

static void test_rotation(void **state)
{
    world *w = *state;
    json_t *e = endpoint_new(w, "/rotated", "");
    const char *old = json_string_value(json_object_get(e, "secret"));
    char path[96];
    snprintf(path, sizeof path, "/v1/webhook-endpoints/%lld/rotate",
             (long long)json_integer_value(json_object_get(e, "id")));
    json_t *r = th_api_json(w->api, 200, "POST", path, NULL);
    const char *fresh = json_string_value(json_object_get(r, "secret"));
    assert_string_not_equal(fresh, old);
    assert_non_null(json_string_value(json_object_get(r, "previous_secret_expires_at")));
    /* only the new secret: verified */
    char cfg[256];
    snprintf(cfg, sizeof cfg, "{\"secrets\": [\"%s\"]}", fresh);
    rx_config(&w->rx, cfg);
    long long a = th_api_start_run(w->api, "wh_ok", "{\"x\": 9}");
    json_decref(wait_delivery_state(w, a, "succeeded", 1));
    /* only the old one, within the 24 h: verified too */
    snprintf(cfg, sizeof cfg, "{\"secrets\": [\"%s\"]}", old);
    rx_config(&w->rx, cfg);
    long long b = th_api_start_run(w->api, "wh_ok", "{\"x\": 10}");
    json_decref(wait_delivery_state(w, b, "succeeded", 1));
    json_t *log = rx_log(&w->rx);
    int seen = 0;
    size_t i;
    json_t *entry;
    json_array_foreach(log, i, entry) {
        long long run = json_integer_value(json_object_get(entry, "run"));
        if (run != a && run != b)
            continue;
        assert_true(json_is_true(json_object_get(entry, "verified")));
        assert_int_equal(json_integer_value(json_object_get(entry, "signatures")), 2);
        seen++;
    }
    assert_int_equal(seen, 2);
    json_decref(log);
    /* past the overlap the old secret no longer signs: the old-only receiver refuses (400) */
    advance(w, "25h");
    long long c = th_api_start_run(w->api, "wh_ok", "{\"x\": 11}");
    json_t *d = wait_delivery_state(w, c, "pending", 1);
    assert_int_equal(json_integer_value(json_object_get(
                         json_array_get(json_object_get(d, "attempt_log"), 0), "status")),
                     400);
    json_decref(d);
    json_decref(r);
    endpoint_delete(w, e);
}

#define SEAL_KEY "6a0c2e4f81a3b5c7d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6"

static void test_sealed_secrets(void **state)
{
    world *w = *state;
    th_api_use_secret_keys(SEAL_KEY, NULL);
    json_t *e = endpoint_new(w, "/sealed", "");
    long long id = (long long)json_integer_value(json_object_get(e, "id"));
    const char *first = json_string_value(json_object_get(e, "secret"));
    assert_int_equal(strncmp(first, "whsec_", 6), 0);
    char path[96];
    snprintf(path, sizeof path, "/v1/webhook-endpoints/%lld/rotate", id);
    json_t *r = th_api_json(w->api, 200, "POST", path, NULL);
    const char *fresh = json_string_value(json_object_get(r, "secret"));
    assert_int_equal(strncmp(fresh, "whsec_", 6), 0);
    /* what the database keeps cannot sign: both secrets sealed, neither readable in it */
    char *kept = th_pg_valuef(th_api_db(w->api),
                              "SELECT secret || ' ' || previous_secret FROM webhook_endpoints"
                              " WHERE id = %lld", id);
    assert_true(sec_is_sealed(kept));
    assert_true(sec_is_sealed(strchr(kept, ' ') + 1));
    assert_null(strstr(kept, first + 6));
    assert_null(strstr(kept, fresh + 6));
    free(kept);
    char cfg[256];
    snprintf(cfg, sizeof cfg, "{\"secrets\": [\"%s\"], \"status\": 204}", fresh);
    rx_config(&w->rx, cfg);
    long long a = th_api_start_run(w->api, "wh_ok", "{\"x\": 20}");
    json_decref(wait_delivery_state(w, a, "succeeded", 1));
    json_t *log = rx_log(&w->rx);
    json_t *last = json_array_get(log, json_array_size(log) - 1);
    assert_int_equal(json_integer_value(json_object_get(last, "run")), a);
    assert_true(json_is_true(json_object_get(last, "verified")));
    assert_int_equal(json_integer_value(json_object_get(last, "signatures")), 2);
    json_decref(log);

    /* the key gone: the attempt fails without a request, and goes out once the key is back */
    th_api_use_secret_keys(NULL, NULL);
    long long b = th_api_start_run(w->api, "wh_ok", "{\"x\": 21}");
    json_t *d = wait_delivery_state(w, b, "pending", 1);
    const char *why = json_string_value(json_object_get(
        json_array_get(json_object_get(d, "attempt_log"), 0), "error"));
    assert_non_null(why);
    assert_non_null(strstr(why, "signing secret"));
    assert_non_null(strstr(why, "FLOWD_SECRET_KEY"));
    json_decref(d);
    assert_int_equal(rx_count(&w->rx, NULL, b), 0);
    th_api_use_secret_keys(SEAL_KEY, NULL);
    advance(w, "6s");
    json_decref(wait_delivery_state(w, b, "succeeded", 2));
    assert_int_equal(rx_count(&w->rx, "run.succeeded", b), 1);
    th_api_use_secret_keys(NULL, NULL);
    json_decref(r);
    endpoint_delete(w, e);
}

static void test_run_callback(void **state)
{
    world *w = *state;
    char body[512];
    snprintf(body, sizeof body,
             "{\"workflow\": \"wh_ok\", \"input\": {\"x\": 12}, \"webhook\": {\"url\": "
             "\"%s/callback\", \"events\": [\"run.succeeded\"]}}",
             w->rx.url);
    /* no callback secret yet: refused, nothing created */
    long runs = th_pg_long(th_api_db(w->api), "SELECT count(*) FROM runs");
    json_t *r = th_api_json(w->api, 409, "POST", "/v1/runs", body);
    json_decref(r);
    assert_int_equal(th_pg_long(th_api_db(w->api), "SELECT count(*) FROM runs"), runs);
    json_t *s = th_api_json(w->api, 200, "POST", "/v1/webhook-callback-secret", NULL);
    char cfg[256];
    snprintf(cfg, sizeof cfg, "{\"secrets\": [\"%s\"], \"status\": 204}",
             json_string_value(json_object_get(s, "secret")));
    json_decref(s);
    rx_config(&w->rx, cfg);
    r = th_api_json(w->api, 201, "POST", "/v1/runs", body);
    long long run = json_integer_value(json_object_get(r, "id"));
    json_decref(r);
    rx_wait(&w->rx, "run.succeeded", run, 1);
    json_t *log = rx_log(&w->rx);
    json_t *last = json_array_get(log, json_array_size(log) - 1);
    assert_string_equal(json_string_value(json_object_get(last, "path")), "/callback");
    assert_true(json_is_true(json_object_get(last, "verified")));
    json_decref(log);
    /* a bad callback names the field */
    r = th_api_json(w->api, 422, "POST", "/v1/runs",
                    "{\"workflow\": \"wh_ok\", \"webhook\": {\"url\": \"https://x.example/\", "
                    "\"events\": [\"batch.completed\"]}}");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(r, "error"), "field")),
        "/webhook/events");
    json_decref(r);
}

/* Entries of the receiver's log at path with type. */
static int rx_count_path(receiver *r, const char *path, const char *type)
{
    json_t *log = rx_log(r);
    int n = 0;
    size_t i;
    json_t *e;
    json_array_foreach(log, i, e) {
        n += strcmp(json_string_value(json_object_get(e, "path")), path) == 0 &&
             json_is_string(json_object_get(e, "type")) &&
             strcmp(json_string_value(json_object_get(e, "type")), type) == 0 &&
             json_is_true(json_object_get(e, "verified"));
    }
    json_decref(log);
    return n;
}

static void test_batch_callback(void **state)
{
    world *w = *state;
    put_workflow(w, "wh_ok", wf_ok);
    json_t *s = th_api_json(w->api, 200, "POST", "/v1/webhook-callback-secret", NULL);
    char cfg[256];
    snprintf(cfg, sizeof cfg, "{\"secrets\": [\"%s\"], \"status\": 204}",
             json_string_value(json_object_get(s, "secret")));
    json_decref(s);
    rx_config(&w->rx, cfg);
    char body[512];
    snprintf(body, sizeof body,
             "{\"workflow\": \"wh_ok\", \"inputs\": [{\"x\": 21}, {\"x\": 22}], \"webhook\":"
             " {\"url\": \"%s/batch-callback\", \"events\": [\"batch.completed\","
             " \"run.succeeded\"]}}",
             w->rx.url);
    json_t *b = th_api_json(w->api, 201, "POST", "/v1/batches", body);
    long long batch = json_integer_value(json_object_get(b, "id"));
    json_decref(b);
    rx_wait(&w->rx, "batch.completed", batch, 1);
    long long until = th_now_ms() + 20000;
    while (rx_count_path(&w->rx, "/batch-callback", "run.succeeded") < 2 && th_now_ms() < until)
        th_sleep_ms(20);
    assert_int_equal(rx_count_path(&w->rx, "/batch-callback", "run.succeeded"), 2);
    assert_int_equal(rx_count_path(&w->rx, "/batch-callback", "batch.completed"), 1);
    /* written once, whatever the sweep finds later */
    assert_int_equal(th_pg_longf(th_api_db(w->api),
                                 "SELECT count(*) FROM webhook_messages WHERE type ="
                                 " 'batch.completed' AND body::jsonb->'data'->>'id' = '%lld'",
                                 batch),
                     1);
    /* a batch's callback takes batch and run events only */
    json_t *r = th_api_json(w->api, 422, "POST", "/v1/batches",
                            "{\"workflow\": \"wh_ok\", \"inputs\": [{\"x\": 1}], \"webhook\":"
                            " {\"url\": \"https://x.example/\", \"events\": [\"schedule.fired\"]}}");
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "error"), "field")),
                        "/webhook/events");
    json_decref(r);
}

/* schedule.fired is written with the fire: by POST .../trigger and by a tick. */
static void test_schedule_fired(void **state)
{
    world *w = *state;
    put_workflow(w, "wh_ok", wf_ok);
    json_t *e = endpoint_new(w, "/schedules", "\"events\": [\"schedule.fired\"]");
    json_decref(th_api_json(w->api, 201, "PUT", "/v1/schedules/wh-hourly",
                            "{\"workflow\": \"wh_ok\", \"every\": \"1h\", \"input\": {\"x\": 5}}"));
    json_t *run = th_api_json(w->api, 201, "POST", "/v1/schedules/wh-hourly/trigger", NULL);
    long long id = json_integer_value(json_object_get(run, "id"));
    json_decref(run);
    rx_wait(&w->rx, "schedule.fired", 0, 1);
    assert_int_equal(rx_count_path(&w->rx, "/schedules", "schedule.fired"), 1);
    assert_int_equal(th_pg_longf(th_api_db(w->api),
                                 "SELECT count(*) FROM webhook_messages WHERE type ="
                                 " 'schedule.fired' AND body::jsonb->'data'->>'name' = 'wh-hourly'"
                                 " AND body::jsonb->'data'->'last_run'->>'id' = '%lld'",
                                 id),
                     1);
    /* the clock to the schedule's next tick: the scheduler of the workers fires it */
    free(th_pg_value(th_api_db(w->api),
                     "SELECT flowd_clock_advance(flowd_ms_of(next_fire) - flowd_ms_of(flowd_now()))"
                     " FROM schedules WHERE name = 'wh-hourly'"));
    rx_wait(&w->rx, "schedule.fired", 0, 2);
    assert_int_equal(th_pg_long(th_api_db(w->api),
                                "SELECT count(*) FROM webhook_messages WHERE type = 'schedule.fired'"),
                     2);
    long status;
    free(th_api_raw(w->api, "DELETE", "/v1/schedules/wh-hourly", NULL, &status));
    assert_int_equal(status, 204);
    endpoint_delete(w, e);
}

/* kill -9 of the process delivering, with the receiver holding the request: the delivery goes out
 * again once its lease lapses, with the same webhook-id, and is recorded once as succeeded. */
static void test_kill_mid_delivery(void **state)
{
    (void)state;
    receiver rx;
    rx_start(&rx);
    th_api_opts o = {.prefix = "webhooks_kill", .no_workers = true, .test_clock = true};
    th_api *api = th_api_start(&o);
    long status;
    free(th_api_raw(api, "PUT", "/v1/workflows/wh_ok", wf_ok, &status));
    char body[256];
    snprintf(body, sizeof body, "{\"url\": \"%s/held\"}", rx.url);
    json_t *e = th_api_json(api, 201, "POST", "/v1/webhook-endpoints", body);
    char cfg[256];
    snprintf(cfg, sizeof cfg, "{\"secrets\": [\"%s\"], \"hold\": true}",
             json_string_value(json_object_get(e, "secret")));
    rx_config(&rx, cfg);
    json_decref(e);
    pid_t flowd = th_serve_spawn(th_api_db(api), 1, 0);
    long long run = th_api_start_run(api, "wh_ok", "{\"x\": 1}");
    rx_wait(&rx, "run.succeeded", run, 1);
    th_serve_kill(flowd, SIGKILL);
    rx_config(&rx, "{\"hold\": false}");
    free(rx_request(&rx, "POST", "/_release", NULL));
    flowd = th_serve_spawn(th_api_db(api), 1, 0);
    /* the lease: the attempt's timeout (15 s) and 30 s */
    json_decref(th_api_json(api, 200, "POST", "/v1/test/clock", "{\"advance\": \"46s\"}"));
    rx_wait(&rx, "run.succeeded", run, 2);
    char *cond = eng_xasprintf("SELECT state = 'succeeded' FROM webhook_sends s JOIN "
                               "webhook_messages m ON m.id = s.message_id WHERE m.run_id = %lld",
                               run);
    assert_true(th_engine_wait(th_api_db(api), cond, 20));
    free(cond);
    th_serve_kill(flowd, SIGTERM);
    json_t *log = rx_log(&rx);
    assert_int_equal(json_array_size(log), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(log, 0), "id")),
                        json_string_value(json_object_get(json_array_get(log, 1), "id")));
    assert_true(json_is_true(json_object_get(json_array_get(log, 1), "verified")));
    json_decref(log);
    th_api_stop(api);
    rx_stop(&rx);
}

static void test_signature_known_answer(void **state)
{
    (void)state;
    /* the example of the Standard Webhooks specification's reference tests */
    char sig[128];
    assert_true(eng_webhook_sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                                 "1614265330", "{\"test\": 2432232314}", 20, sig, sizeof sig));
    assert_string_equal(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    assert_int_equal(eng_webhook_retry_after_ms("120", 0), 120000);
    assert_int_equal(eng_webhook_retry_after_ms(NULL, 0), 0);
}

static int setup(void **state)
{
    world *w = eng_xcalloc(1, sizeof *w);
    rx_start(&w->rx);
    th_api_opts o = {.prefix = "webhooks", .workers = 2, .test_clock = true};
    w->api = th_api_start(&o);
    eng_webhook_opts wo = {.conninfo = th_api_db(w->api)};
    w->wh = eng_webhooks_start(&wo);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world *w = *state;
    eng_webhooks_stop(w->wh, 1.);
    th_api_stop(w->api);
    rx_stop(&w->rx);
    free(w);
    return 0;
}

int main(void)
{
    th_api_init();
    step_register_all();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signature_known_answer),
        cmocka_unit_test(test_endpoint_api),
        cmocka_unit_test(test_run_events_verified),
        cmocka_unit_test(test_failed_run_and_filters),
        cmocka_unit_test(test_runs_ended_together),
        cmocka_unit_test(test_retries_on_schedule),
        cmocka_unit_test(test_gone_and_failing_disable),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_sealed_secrets),
        cmocka_unit_test(test_run_callback),
        cmocka_unit_test(test_batch_callback),
        cmocka_unit_test(test_schedule_fired),
        cmocka_unit_test(test_kill_mid_delivery),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    curl_global_cleanup();
    return rc;
}
