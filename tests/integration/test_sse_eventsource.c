/* tests/integration/test_sse_eventsource.c: a run's Server-Sent Events stream driven by a real
 * EventSource client (npm eventsource, through tests/sse/run.sh, installed into the build tree on
 * first use).
 *
 * - A stream that stays quiet gets its heartbeats and stays open on one connection: the server's
 *   header timeout is set to 2 s and the heartbeat to 1 s (defaults 10 s and 15 s), so the hold
 *   covers many of both.
 * - When the run ends, the client gets the last event, the stream ends, and the client's
 *   reconnect is answered 204, after which it stays closed.
 * - A thousand streams on one run cost the database what one does: xact_commit of the test
 *   database over a quiet window, once with one stream and once with a thousand (spread over the
 *   API's two loop threads, which share one poller). Each open stream used to poll every 150 ms
 *   (6.7 statements/s a stream). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "engine/mem.h"
#include "tests/support/th.h"
#include "tests/support/th_api.h"

#define HEARTBEAT_S 1.0
#define SETTLE_MS 11000 /* an idle backend reports its counts within 10 s (PostgreSQL 15) */
#define WINDOW_MS 4000 /* two of them: the quieter one counts */

static double commits_1; /* per second with one stream, from the first test */

typedef struct client {
    FILE *out;
} client;

/* Starts tests/sse/client.js with n streams on run's event stream. */
static client client_start(th_api *a, long long run, int n)
{
    const char *build = getenv("FLOWD_BUILD_DIR");
    assert_non_null(build);
    char *cmd = eng_xasprintf("'%s/tests/sse/run.sh' '%s' '%s/npm-sse' '%s/v1/runs/%lld/events' "
                              "'%s' %d",
                              th_source_dir(), th_source_dir(), build, th_api_url(a), run,
                              TH_API_KEY, n);
    client c = {.out = popen(cmd, "r")};
    free(cmd);
    assert_non_null(c.out);
    return c;
}

/* The next line the client prints, parsed (it must have the member `what`); with done, that
 * member's value. */
static json_t *client_line(client *c, const char *what)
{
    static char line[1 << 20];
    if (!fgets(line, sizeof line, c->out))
        fail_msg("the EventSource client ended before reporting \"%s\"", what);
    json_t *j = json_loads(line, 0, NULL);
    if (!j || !json_object_get(j, what))
        fail_msg("unexpected line from the EventSource client: %s", line);
    if (strcmp(what, "done") != 0)
        return j;
    json_t *v = json_incref(json_object_get(j, what));
    json_decref(j);
    return v;
}

static void client_end(client *c)
{
    assert_int_equal(pclose(c->out), 0);
}

static long long jint(const json_t *o, const char *k)
{
    return (long long)json_integer_value(json_object_get(o, k));
}

static long long commits(th_api *a)
{
    return th_pg_long(th_api_db(a),
                      "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()");
}

/* Commits per second of the test database over the quieter of two WINDOW_MS windows, after
 * SETTLE_MS for the counts of what came before (opening the streams) to be reported: a backend
 * that reports them late on a loaded machine spoils one window at most. */
static double commit_rate(th_api *a)
{
    th_sleep_ms(SETTLE_MS);
    double best = -1;
    for (int i = 0; i < 2; i++) {
        long long c0 = commits(a);
        long long t0 = th_now_ms();
        th_sleep_ms(WINDOW_MS);
        long long c1 = commits(a);
        double rate = (double)(c1 - c0) * 1000.0 / (double)(th_now_ms() - t0);
        if (best < 0 || rate < best)
            best = rate;
    }
    return best;
}

static th_api *start_api(void)
{
    th_api_opts o = {.prefix = "sse_es", .no_workers = true, .sse_heartbeat_s = HEARTBEAT_S,
                     .header_timeout_s = 2.0};
    th_api *a = th_api_start(&o);
    json_decref(th_api_json(a, 201, "PUT", "/v1/workflows/one",
                            "{\"steps\": [{\"key\": \"a\", \"kind\": \"transform\"}]}"));
    return a;
}

static void cancel_run(th_api *a, long long run)
{
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld/cancel", run);
    json_decref(th_api_json(a, 200, "POST", path, "{}"));
}

static void test_quiet_stream_stays_up_and_ends(void **state)
{
    (void)state;
    th_api *a = start_api();
    long long run = th_api_start_run(a, "one", "{}"); /* no workers: it waits, quiet */
    client c = client_start(a, run, 1);
    json_decref(client_line(&c, "open"));
    long long t_open = th_now_ms();
    commits_1 = commit_rate(a);
    double held_s = (double)(th_now_ms() - t_open) / 1000.0;
    cancel_run(a, run);
    json_t *d = client_line(&c, "done");
    client_end(&c);
    const json_t *first = json_object_get(d, "first");
    const json_t *beats = json_object_get(first, "heartbeats");
    const json_t *events = json_object_get(first, "events");
    printf("sse: one quiet stream held %.1f s: %zu heartbeats, %.2f commits/s of the database\n",
           held_s, json_array_size(beats), commits_1);
    /* one connection all along (no cut, no reconnect), heartbeats every second */
    /* errors: the stream's end (the client then reconnects) and the 204 that closes it */
    assert_int_equal(jint(first, "errors"), 2);
    assert_true(json_array_size(beats) >= (size_t)(held_s / HEARTBEAT_S) - 2);
    /* the run's events, each once and in order, the cancellation among them */
    assert_true(json_array_size(events) >= 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(events, 0), "type")),
                        "run.created");
    bool cancelled = false;
    for (size_t i = 0; i < json_array_size(events); i++)
        cancelled = cancelled || strcmp(json_string_value(json_object_get(json_array_get(events, i),
                                                                          "type")),
                                        "run.cancelled") == 0;
    assert_true(cancelled);
    const json_t *last = json_array_get(events, json_array_size(events) - 1);
    assert_int_equal(jint(last, "seq"),
                     th_pg_longf(th_api_db(a), "SELECT max(id) FROM run_log WHERE run_id = %lld",
                                 run));
    assert_int_equal((long long)json_array_size(events),
                     th_pg_longf(th_api_db(a),
                                 "SELECT count(*) FROM run_log WHERE run_id = %lld", run));
    for (size_t i = 1; i < json_array_size(events); i++)
        assert_true(jint(json_array_get(events, i), "seq") >
                    jint(json_array_get(events, i - 1), "seq"));
    /* the stream ended after the last event; the reconnect got 204 and was the last one */
    const json_t *statuses = json_object_get(first, "statuses");
    assert_int_equal(json_array_size(statuses), 2);
    assert_int_equal(json_integer_value(json_array_get(statuses, 0)), 200);
    assert_int_equal(json_integer_value(json_array_get(statuses, 1)), 204);
    assert_int_equal(jint(d, "messages"), 0); /* every frame is a named event */
    json_decref(d);
    th_api_stop(a);
}

static void test_thousand_streams_cost_what_one_does(void **state)
{
    (void)state;
    enum { N = 1000 };
    th_api *a = start_api();
    long long run = th_api_start_run(a, "one", "{}");
    client c = client_start(a, run, N);
    json_t *o = client_line(&c, "open");
    printf("sse: %d streams open in %lld ms\n", N, jint(o, "ms"));
    json_decref(o);
    double rate = commit_rate(a);
    printf("sse: %d streams on one run: %.2f commits/s of the database (one stream: %.2f; "
           "polling each stream every 150 ms would be %d)\n",
           N, rate, commits_1, N * 20 / 3);
    assert_true(rate <= 2 * commits_1 + 2);
    cancel_run(a, run);
    json_t *d = client_line(&c, "done");
    client_end(&c);
    assert_int_equal(jint(d, "closed"), N);
    assert_int_equal(jint(d, "status204"), N);
    assert_int_equal(jint(d, "connections"), 2 * N);
    assert_int_equal(jint(d, "errors"), 2 * N);
    /* every stream, whichever API loop took it, got every event once */
    assert_int_equal(jint(d, "events"),
                     N * th_pg_longf(th_api_db(a),
                                     "SELECT count(*) FROM run_log WHERE run_id = %lld", run));
    json_decref(d);
    th_api_stop(a);
}

int main(void)
{
    th_api_init();
    /* a thousand client sockets and as many server ones in this process and the client's */
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nofile);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quiet_stream_stays_up_and_ends),
        cmocka_unit_test(test_thousand_streams_cost_what_one_does),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
