/* tests/unit/test_httpc_reuse.c: engine/httpc.c keeps and shares its provider connections.
 *
 * HTTP/2 over TLS against nginx (tests/support/nginx_mock.sh: ALPN h2, a throw-away self-signed
 * certificate trusted through FLOWD_CA_BUNDLE, nginx's own limit of 128 streams per connection),
 * whose stub_status counts the connections it accepted; HTTP/1.1 keep-alive against th_mockhttp.
 * Counts only, no timing: the answers wait 100 ms so that the calls of a wave overlap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "engine/buf.h"
#include "engine/httpc.h"
#include "engine/mem.h"
#include "tests/support/th.h"
#include "tests/support/th_mockhttp.h"

static char nginx_dir[64];
static char base_url[128], status_url[128];

static size_t on_status_body(char *data, size_t size, size_t n, void *bp)
{
    return eng_buf_append(bp, data, size * n) == ENG_OK ? size * n : 0;
}

/* nginx's accepted connections so far (the read itself is one of them). */
static unsigned long nginx_accepts(void)
{
    eng_buf b;
    eng_buf_init(&b, 4096);
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, status_url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_status_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, (void *)&b);
    assert_int_equal(curl_easy_perform(e), CURLE_OK);
    curl_easy_cleanup(e);
    const char *p = b.ptr ? strstr(b.ptr, "requests\n") : NULL;
    unsigned long accepts = 0;
    assert_non_null(p);
    assert_int_equal(sscanf(p + 9, "%lu", &accepts), 1);
    eng_buf_deinit(&b);
    return accepts;
}

static int group_setup(void **state)
{
    (void)state;
    const char *proxies[] = {"http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"};
    for (size_t i = 0; i < sizeof proxies / sizeof proxies[0]; i++)
        unsetenv(proxies[i]);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    const char *src = getenv("FLOWD_SOURCE_DIR");
    snprintf(nginx_dir, sizeof nginx_dir, "/tmp/flowd-test-nginx.XXXXXX");
    if (!src || !mkdtemp(nginx_dir))
        return -1;
    char *cmd = eng_xasprintf("'%s/tests/support/nginx_mock.sh' start '%s' 100", src, nginx_dir);
    FILE *f = popen(cmd, "r");
    free(cmd);
    bool ok = f && fgets(base_url, sizeof base_url, f) && fgets(status_url, sizeof status_url, f);
    if (!f || pclose(f) != 0 || !ok) {
        fprintf(stderr, "nginx_mock.sh start failed (is nginx installed? scripts/deps)\n");
        return -1;
    }
    base_url[strcspn(base_url, "\n")] = '\0';
    status_url[strcspn(status_url, "\n")] = '\0';
    char *ca = eng_xasprintf("%s/cert.pem", nginx_dir);
    setenv("FLOWD_CA_BUNDLE", ca, 1);
    free(ca);
    eng_httpc_global_init();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    eng_httpc_global_cleanup();
    char *cmd = eng_xasprintf("'%s/tests/support/nginx_mock.sh' stop '%s' && rm -rf '%s'",
                              getenv("FLOWD_SOURCE_DIR"), nginx_dir, nginx_dir);
    int rc = system(cmd);
    free(cmd);
    return rc == 0 ? 0 : -1;
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
}

struct wave {
    int calls, ok, h2, failed;
    char msg[256];
};

static void count(void *arg, const eng_err *err, const eng_http_response *resp,
                  eng_http_call *call)
{
    struct wave *w = arg;
    (void)call;
    w->calls++;
    if (err) {
        w->failed++;
        snprintf(w->msg, sizeof w->msg, "%s", err->msg);
        return;
    }
    if (resp->status == 200)
        w->ok++;
    if (resp->http_version == 20)
        w->h2++;
}

/* Starts n calls to url at once and runs the loop until all are back (or 20 s pass). */
static void wave(struct ev_loop *loop, eng_httpc *h, const char *url, const char *body, int n,
                 struct wave *w)
{
    memset(w, 0, sizeof *w);
    const char *headers[] = {"Content-Type: application/json", NULL};
    for (int i = 0; i < n; i++)
        eng_httpc_start(h,
                        &(eng_http_request){.method = body ? "POST" : "GET", .url = url,
                                            .headers = headers, .body = body,
                                            .body_len = body ? strlen(body) : 0},
                        count, w);
    ev_timer tick;
    ev_timer_init(&tick, on_tick, 0.02, 0.02);
    ev_timer_start(loop, &tick);
    long long deadline = th_now_ms() + 20000;
    while (w->calls < n && th_now_ms() < deadline)
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &tick);
    if (w->failed)
        print_message("%d of %d calls failed, the last with: %s\n", w->failed, n, w->msg);
    assert_int_equal(w->calls, n);
}

/* 200 calls at once, then 200 more, multiplexed over HTTP/2: curl puts at most 100 streams on a
 * connection, so the first wave needs two connections and the second reuses them. (curl 7.88
 * opened a connection for every call of a burst past the first connection's streams.) */
static void test_h2_multiplexes_and_keeps_connections(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    eng_httpc *h = eng_httpc_new(loop);
    char *url = eng_xasprintf("%s/chat/completions", base_url);
    const char *body = "{\"model\": \"gpt-4o-mini\", \"messages\": []}";
    unsigned long before = nginx_accepts();
    struct wave w;
    for (int round = 0; round < 2; round++) {
        wave(loop, h, url, body, 200, &w);
        assert_int_equal(w.ok, 200);
        assert_int_equal(w.h2, 200);
    }
    unsigned long conns = nginx_accepts() - before - 1;
    print_message("400 calls over HTTP/2 in two waves of 200: %lu connections\n", conns);
    assert_true(conns >= 2);
    assert_true(conns <= 4);
    eng_httpc_free(h);
    ev_loop_destroy(loop);
    free(url);
}

static void delay_100(void *arg, const th_mock_req *req, th_mock_resp *r)
{
    (void)arg;
    (void)req;
    th_mock_resp_delay(r, 100);
}

/* Ten waves of 20 calls at once over cleartext HTTP/1.1: 20 connections, each reused. */
static void test_http1_keepalive_reuses(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    eng_httpc *h = eng_httpc_new(loop);
    th_mock *mock = th_mock_start(delay_100, NULL);
    char *url = eng_xasprintf("%s/v1/chat/completions", th_mock_url(mock));
    struct wave w;
    for (int round = 0; round < 10; round++) {
        wave(loop, h, url, "{}", 20, &w);
        assert_int_equal(w.ok, 20);
    }
    print_message("200 calls over HTTP/1.1 in ten waves of 20: %lu connections\n",
                  th_mock_connections(mock));
    assert_int_equal(th_mock_requests(mock), 200);
    assert_true(th_mock_connections(mock) <= 20);
    eng_httpc_free(h);
    th_mock_stop(mock);
    ev_loop_destroy(loop);
    free(url);
}

/* Without FLOWD_CA_BUNDLE the self-signed certificate is refused and nothing is answered. */
static void test_certificate_not_trusted_without_bundle(void **state)
{
    (void)state;
    char *ca = eng_xstrdup(getenv("FLOWD_CA_BUNDLE"));
    eng_httpc_global_cleanup();
    unsetenv("FLOWD_CA_BUNDLE");
    eng_httpc_global_init();
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    eng_httpc *h = eng_httpc_new(loop);
    char *url = eng_xasprintf("%s/chat/completions", base_url);
    struct wave w;
    wave(loop, h, url, "{}", 1, &w);
    assert_int_equal(w.failed, 1);
    assert_non_null(strstr(w.msg, "certificate"));
    eng_httpc_free(h);
    ev_loop_destroy(loop);
    free(url);
    eng_httpc_global_cleanup();
    setenv("FLOWD_CA_BUNDLE", ca, 1);
    free(ca);
    eng_httpc_global_init();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_h2_multiplexes_and_keeps_connections),
        cmocka_unit_test(test_http1_keepalive_reuses),
        cmocka_unit_test(test_certificate_not_trusted_without_bundle),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
