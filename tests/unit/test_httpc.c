/* tests/unit/test_httpc.c: engine/httpc.c against th_mockhttp over real loopback sockets.
 *
 * Each test gets its own libev loop, client and mock server. The 2,000-call test needs about
 * 4,100 descriptors (client and server ends in one process), so it raises RLIMIT_NOFILE's soft
 * limit to the hard limit and fails with a clear message if that is still too low. Proxy
 * variables are cleared so that curl talks to the mock directly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <ev.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine/httpc.h"
#include "engine/mem.h"
#include "tests/support/th.h"
#include "tests/support/th_mockhttp.h"

/* ---- the mock's script, chosen by path ---- */

static bool path_is(const th_mock_req *req, const char *prefix, long *num)
{
    size_t n = strlen(prefix);
    if (strncmp(req->target, prefix, n) != 0)
        return false;
    if (num)
        *num = strtol(req->target + n, NULL, 10);
    return true;
}

static void script(void *arg, const th_mock_req *req, th_mock_resp *r)
{
    (void)arg;
    long n = 0;
    if (path_is(req, "/echo", NULL)) {
        const char *xr = th_mock_req_header(req, "X-Req");
        const char *ct = th_mock_req_header(req, "content-type");
        th_mock_resp_header(r, "X-Echo", "yes");
        th_mock_resp_bodyf(r, "%s %s x-req=%s ct=%s body=", req->method, req->target,
                           xr ? xr : "-", ct ? ct : "-");
        th_mock_resp_body(r, req->body, req->body_len);
    } else if (path_is(req, "/status/", &n)) {
        th_mock_resp_status(r, (int)n);
        th_mock_resp_bodyf(r, "status %ld", n);
    } else if (path_is(req, "/headers", NULL)) {
        th_mock_resp_header(r, "X-Multi", "one");
        th_mock_resp_header(r, "x-multi", "two");
        th_mock_resp_header(r, "Retry-After", "7");
        th_mock_resp_header(r, "X-Spaces", "  padded value  ");
    } else if (path_is(req, "/delay/", &n)) {
        th_mock_resp_delay(r, (int)n);
        th_mock_resp_bodyf(r, "late %lu", req->seq);
    } else if (path_is(req, "/big/", &n) || path_is(req, "/bigchunked/", &n)) {
        if (req->target[4] == 'c')
            th_mock_resp_chunked(r);
        for (long i = 0; i < n; i++)
            th_mock_resp_body(r, "x", 1);
    } else if (path_is(req, "/cut", NULL)) {
        for (int i = 0; i < 10000; i++)
            th_mock_resp_body(r, "y", 1);
        th_mock_resp_close_after(r, 100);
    } else if (path_is(req, "/drop", NULL)) {
        th_mock_resp_drop(r);
    } else if (path_is(req, "/pieces", NULL)) {
        th_mock_resp_chunked(r);
        th_mock_resp_pieces(r, 10, 30);
        for (int i = 0; i < 5; i++)
            th_mock_resp_body(r, "0123456789", 10);
    } else {
        th_mock_resp_status(r, 404);
    }
}

/* ---- fixture ---- */

struct fx {
    struct ev_loop *loop;
    eng_httpc *h;
    th_mock *mock;
};

static int setup(void **state)
{
    struct fx *f = eng_xcalloc(1, sizeof *f);
    f->loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(f->loop);
    f->h = eng_httpc_new(f->loop);
    f->mock = th_mock_start(script, NULL);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    eng_httpc_free(f->h);
    th_mock_stop(f->mock);
    ev_loop_destroy(f->loop);
    free(f);
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    /* curl honours proxy variables; these tests talk to loopback only. */
    const char *proxies[] = {"http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"};
    for (size_t i = 0; i < sizeof proxies / sizeof proxies[0]; i++)
        unsetenv(proxies[i]);
    eng_httpc_global_init();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    eng_httpc_global_cleanup();
    return 0;
}

static char *url(const struct fx *f, const char *path)
{
    return eng_xasprintf("%s%s", th_mock_url(f->mock), path);
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
}

/* Runs the loop until *counter reaches want or timeout_ms passes; returns the final count. A
 * ticking timer keeps EV_RUN_ONCE from blocking forever when nothing else happens. */
static int run_until(struct fx *f, const int *counter, int want, long long timeout_ms)
{
    ev_timer tick;
    ev_timer_init(&tick, on_tick, 0.02, 0.02);
    ev_timer_start(f->loop, &tick);
    long long deadline = th_now_ms() + timeout_ms;
    while (*counter < want && th_now_ms() < deadline)
        ev_run(f->loop, EVRUN_ONCE);
    ev_timer_stop(f->loop, &tick);
    return *counter;
}

static void run_for(struct fx *f, long long ms)
{
    int never = 0;
    run_until(f, &never, 1, ms);
}

/* ---- recording callback ---- */

struct rec {
    int calls;
    bool failed;
    eng_rc rc;
    char msg[256];
    long status;
    char *body;
    size_t body_len;
    int version;
    double total_ms;
    size_t in_flight_seen; /* eng_httpc_in_flight during the callback */
    eng_httpc *h;
};

static void record(void *arg, const eng_err *err, const eng_http_response *resp,
                   eng_http_call *call)
{
    struct rec *r = arg;
    assert_non_null(call);
    r->calls++;
    r->failed = err != NULL;
    if (r->h)
        r->in_flight_seen = eng_httpc_in_flight(r->h);
    if (err) {
        assert_null(resp);
        r->rc = err->rc;
        snprintf(r->msg, sizeof r->msg, "%s", err->msg);
        return;
    }
    assert_non_null(resp);
    r->status = resp->status;
    free(r->body);
    r->body = eng_xstrndup(resp->body, resp->body_len);
    assert_int_equal(resp->body[resp->body_len], '\0');
    r->body_len = resp->body_len;
    r->version = resp->http_version;
    r->total_ms = resp->total_ms;
}

static void rec_done(struct rec *r)
{
    free(r->body);
    r->body = NULL;
}

/* One call, run to completion. */
static void fetch(struct fx *f, const eng_http_request *req, struct rec *r)
{
    eng_http_call *c = eng_httpc_start(f->h, req, record, r);
    assert_non_null(c);
    assert_int_equal(eng_httpc_in_flight(f->h), 1);
    assert_int_equal(run_until(f, &r->calls, 1, 5000), 1);
    assert_int_equal(eng_httpc_in_flight(f->h), 0);
}

/* ---- tests ---- */

static void test_get_round_trip(void **state)
{
    struct fx *f = *state;
    char *u = url(f, "/echo?x=1");
    const char *hdrs[] = {"X-Req: abc", NULL};
    struct rec r = {0};
    fetch(f, &(eng_http_request){.url = u, .headers = hdrs}, &r);
    assert_false(r.failed);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "GET /echo?x=1 x-req=abc ct=- body=");
    assert_int_equal(r.version, 11);
    assert_true(r.total_ms > 0.0 && r.total_ms < 5000.0);
    rec_done(&r);
    free(u);
}

static void test_post_and_other_methods(void **state)
{
    struct fx *f = *state;
    char *u = url(f, "/echo");
    const char *hdrs[] = {"Content-Type: application/json", "X-Req: p", NULL};
    const char body[] = "{\"a\":1}\0tail"; /* bytes after a NUL must be sent too */
    struct rec r = {0};
    fetch(f, &(eng_http_request){.method = "POST", .url = u, .headers = hdrs, .body = body,
                                 .body_len = sizeof body - 1},
          &r);
    assert_false(r.failed);
    assert_int_equal(r.status, 200);
    const char want[] = "POST /echo x-req=p ct=application/json body={\"a\":1}\0tail";
    assert_int_equal(r.body_len, sizeof want - 1);
    assert_memory_equal(r.body, want, sizeof want - 1);
    rec_done(&r);

    /* A body without a Content-Type is not labelled as a form. */
    r = (struct rec){0};
    fetch(f, &(eng_http_request){.method = "PUT", .url = u, .body = "v", .body_len = 1}, &r);
    assert_string_equal(r.body, "PUT /echo x-req=- ct=- body=v");
    rec_done(&r);

    r = (struct rec){0};
    fetch(f, &(eng_http_request){.method = "DELETE", .url = u}, &r);
    assert_string_equal(r.body, "DELETE /echo x-req=- ct=- body=");
    rec_done(&r);

    r = (struct rec){0};
    fetch(f, &(eng_http_request){.method = "POST", .url = u}, &r);
    assert_string_equal(r.body, "POST /echo x-req=- ct=- body=");
    rec_done(&r);

    r = (struct rec){0};
    fetch(f, &(eng_http_request){.method = "HEAD", .url = u}, &r);
    assert_false(r.failed);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    rec_done(&r);
    free(u);
}

static void test_status_codes_pass_through(void **state)
{
    struct fx *f = *state;
    const int codes[] = {201, 204, 400, 404, 409, 429, 500, 503};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        char path[32];
        snprintf(path, sizeof path, "/status/%d", codes[i]);
        char *u = url(f, path);
        struct rec r = {0};
        fetch(f, &(eng_http_request){.url = u}, &r);
        assert_false(r.failed);
        assert_int_equal(r.status, codes[i]);
        rec_done(&r);
        free(u);
    }
}

struct hdr_rec {
    int calls;
    char multi[32], retry[32], spaces[32];
    bool missing_is_null, saw_length;
    int count;
};

static void record_headers(void *arg, const eng_err *err, const eng_http_response *resp,
                           eng_http_call *call)
{
    struct hdr_rec *r = arg;
    assert_null(err);
    assert_int_equal(resp->status, 200);
    r->calls++;
    snprintf(r->multi, sizeof r->multi, "%s", eng_http_call_header(call, "X-MULTI"));
    snprintf(r->retry, sizeof r->retry, "%s", eng_http_call_header(call, "retry-after"));
    snprintf(r->spaces, sizeof r->spaces, "%s", eng_http_call_header(call, "x-spaces"));
    r->missing_is_null = eng_http_call_header(call, "X-Missing") == NULL;
    size_t pos = 0;
    const char *name, *value;
    while (eng_http_call_header_next(call, &pos, &name, &value)) {
        r->count++;
        if (strcmp(name, "Content-Length") == 0 && strcmp(value, "0") == 0)
            r->saw_length = true;
    }
}

static void test_response_headers(void **state)
{
    struct fx *f = *state;
    char *u = url(f, "/headers");
    struct hdr_rec r = {0};
    eng_httpc_start(f->h, &(eng_http_request){.url = u}, record_headers, &r);
    assert_int_equal(run_until(f, &r.calls, 1, 5000), 1);
    assert_string_equal(r.multi, "two");
    assert_string_equal(r.retry, "7");
    assert_string_equal(r.spaces, "padded value");
    assert_true(r.missing_is_null);
    assert_true(r.saw_length);
    assert_int_equal(r.count, 5);
    free(u);
}

static void test_timeout(void **state)
{
    struct fx *f = *state;
    char *u = url(f, "/delay/3000");
    struct rec r = {0};
    long long t0 = th_now_ms();
    unsigned it0 = ev_iteration(f->loop);
    fetch(f, &(eng_http_request){.url = u, .timeout_ms = 300}, &r);
    long long took = th_now_ms() - t0;
    assert_true(r.failed);
    assert_int_equal(r.rc, ENG_ETIMEOUT);
    assert_true(took >= 250 && took < 2000);
    /* The loop slept until curl's deadline: about 15 ticks of run_until's 20 ms timer plus a few
     * socket events. A timer armed with ms / 1000 (integer division) would spin instead. */
    assert_true(ev_iteration(f->loop) - it0 < 100);
    rec_done(&r);
    free(u);
}

static void test_connection_refused(void **state)
{
    struct fx *f = *state;
    /* A bound socket that does not listen holds a port that refuses connections. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&sa, &len), 0);
    char *u = eng_xasprintf("http://127.0.0.1:%d/", ntohs(sa.sin_port));
    struct rec r = {0};
    fetch(f, &(eng_http_request){.url = u}, &r);
    assert_true(r.failed);
    assert_int_equal(r.rc, ENG_EHTTP);
    assert_non_null(strstr(r.msg, "onnect")); /* curl's text: "Failed to connect ..." */
    close(s);
    rec_done(&r);
    free(u);
}

static void test_unsupported_scheme_and_bad_url(void **state)
{
    struct fx *f = *state;
    const char *urls[] = {"ftp://127.0.0.1/x", "file:///etc/passwd", "http://[::1"};
    for (size_t i = 0; i < 3; i++) {
        struct rec r = {0};
        fetch(f, &(eng_http_request){.url = urls[i]}, &r);
        assert_true(r.failed);
        assert_int_equal(r.rc, ENG_EHTTP);
        assert_true(r.msg[0] != '\0');
    }
}

static void test_response_over_cap(void **state)
{
    struct fx *f = *state;
    /* Content-Length announces too much: refused before the body arrives. */
    char *u = url(f, "/big/5000");
    struct rec r = {0};
    fetch(f, &(eng_http_request){.url = u, .max_response_bytes = 1000}, &r);
    assert_true(r.failed);
    assert_int_equal(r.rc, ENG_ETOOBIG);
    free(u);

    /* Chunked: no length up front, the write callback stops it. */
    u = url(f, "/bigchunked/5000");
    r = (struct rec){0};
    fetch(f, &(eng_http_request){.url = u, .max_response_bytes = 1000}, &r);
    assert_true(r.failed);
    assert_int_equal(r.rc, ENG_ETOOBIG);
    free(u);

    /* Exactly at the cap is fine, both ways. */
    u = url(f, "/bigchunked/1000");
    r = (struct rec){0};
    fetch(f, &(eng_http_request){.url = u, .max_response_bytes = 1000}, &r);
    assert_false(r.failed);
    assert_int_equal(r.body_len, 1000);
    rec_done(&r);
    free(u);
    u = url(f, "/big/1000");
    r = (struct rec){0};
    fetch(f, &(eng_http_request){.url = u, .max_response_bytes = 1000}, &r);
    assert_false(r.failed);
    assert_int_equal(r.body_len, 1000);
    rec_done(&r);
    free(u);
}

static void test_closed_mid_response(void **state)
{
    struct fx *f = *state;
    char *u = url(f, "/cut");
    struct rec r = {0};
    fetch(f, &(eng_http_request){.url = u}, &r);
    assert_true(r.failed);
    assert_int_equal(r.rc, ENG_EHTTP);
    free(u);

    u = url(f, "/drop");
    r = (struct rec){0};
    fetch(f, &(eng_http_request){.url = u}, &r);
    assert_true(r.failed);
    assert_int_equal(r.rc, ENG_EHTTP);
    free(u);
}

static void test_body_in_pieces(void **state)
{
    struct fx *f = *state;
    char *u = url(f, "/pieces");
    struct rec r = {0};
    long long t0 = th_now_ms();
    fetch(f, &(eng_http_request){.url = u}, &r);
    assert_false(r.failed);
    assert_int_equal(r.body_len, 50);
    assert_memory_equal(r.body, "01234567890123456789", 20);
    assert_true(th_now_ms() - t0 >= 4 * 30 - 10); /* the pauses really happened */
    rec_done(&r);
    free(u);
}

static void test_cancel(void **state)
{
    struct fx *f = *state;
    char *u = url(f, "/delay/300");
    struct rec r = {0};

    /* Cancelled once the request has reached the server. */
    eng_http_call *c = eng_httpc_start(f->h, &(eng_http_request){.url = u}, record, &r);
    long long deadline = th_now_ms() + 5000;
    while (th_mock_requests(f->mock) < 1 && th_now_ms() < deadline)
        run_for(f, 10);
    assert_int_equal(th_mock_requests(f->mock), 1);
    eng_httpc_cancel(c);
    assert_int_equal(eng_httpc_in_flight(f->h), 0);

    /* Cancelled before the loop ever ran it. */
    c = eng_httpc_start(f->h, &(eng_http_request){.url = u}, record, &r);
    eng_httpc_cancel(c);
    eng_httpc_cancel(NULL);
    assert_int_equal(eng_httpc_in_flight(f->h), 0);

    run_for(f, 600);
    assert_int_equal(r.calls, 0);
    assert_int_equal(th_mock_requests(f->mock), 1);

    /* The client is still usable afterwards. */
    fetch(f, &(eng_http_request){.url = u}, &r);
    assert_false(r.failed);
    assert_int_equal(r.status, 200);
    rec_done(&r);
    free(u);
}

struct canceller {
    int calls;
    eng_http_call *victim;
    struct rec *victim_rec;
};

static void cancel_other(void *arg, const eng_err *err, const eng_http_response *resp,
                         eng_http_call *call)
{
    struct canceller *k = arg;
    (void)resp;
    assert_null(err);
    k->calls++;
    eng_httpc_cancel(k->victim);
    eng_httpc_cancel(call); /* its own callback is running: no effect */
}

static void test_cancel_from_another_completion(void **state)
{
    struct fx *f = *state;
    char *fast = url(f, "/delay/0"), *slow = url(f, "/delay/400");
    struct rec vr = {0};
    struct canceller k = {0};
    k.victim = eng_httpc_start(f->h, &(eng_http_request){.url = slow}, record, &vr);
    eng_httpc_start(f->h, &(eng_http_request){.url = fast}, cancel_other, &k);
    assert_int_equal(run_until(f, &k.calls, 1, 5000), 1);
    assert_int_equal(eng_httpc_in_flight(f->h), 0);
    run_for(f, 600);
    assert_int_equal(vr.calls, 0);
    free(fast);
    free(slow);
}

struct same_turn {
    int calls;
    unsigned iteration[2];
    eng_rc rc[2];
    eng_http_call **cancel; /* when set, the first completion cancels both (its own: no-op) */
    struct fx *f;
};

static void record_turn(void *arg, const eng_err *err, const eng_http_response *resp,
                        eng_http_call *call)
{
    struct same_turn *t = arg;
    (void)resp;
    (void)call;
    assert_non_null(err);
    if (t->calls < 2) {
        t->iteration[t->calls] = ev_iteration(t->f->loop);
        t->rc[t->calls] = err->rc;
    }
    t->calls++;
    if (t->cancel) {
        eng_httpc_cancel(t->cancel[0]);
        eng_httpc_cancel(t->cancel[1]);
        t->cancel = NULL;
    }
}

/* Starts two calls that time out at 100 ms against a mock that answers after 3 s, waits until both
 * requests reached the mock, then blocks the loop past both deadlines: the next curl action
 * expires both transfers at once, so two DONE messages are queued before the first callback. */
static void start_two_and_expire(struct fx *f, struct same_turn *t, eng_http_call **calls)
{
    char *u = url(f, "/delay/3000");
    for (int i = 0; i < 2; i++)
        calls[i] = eng_httpc_start(f->h, &(eng_http_request){.url = u, .timeout_ms = 100},
                                   record_turn, t);
    unsigned long before = th_mock_requests(f->mock);
    long long deadline = th_now_ms() + 5000;
    while (th_mock_requests(f->mock) < before + 2 && th_now_ms() < deadline)
        run_for(f, 5);
    assert_int_equal(th_mock_requests(f->mock), before + 2);
    usleep(300 * 1000);
    free(u);
}

static void test_cancel_call_already_finished_in_same_turn(void **state)
{
    struct fx *f = *state;
    eng_http_call *calls[2];

    /* Without cancelling: both callbacks run in one loop iteration, so both were queued. */
    struct same_turn t = {.f = f};
    start_two_and_expire(f, &t, calls);
    assert_int_equal(run_until(f, &t.calls, 2, 5000), 2);
    assert_int_equal(t.iteration[0], t.iteration[1]);
    assert_int_equal(t.rc[0], ENG_ETIMEOUT);
    assert_int_equal(t.rc[1], ENG_ETIMEOUT);

    /* Same again, the first callback cancelling the other, whose DONE is already queued: it must
     * not be called back (nor touched after being freed: ASan). */
    t = (struct same_turn){.f = f};
    start_two_and_expire(f, &t, calls);
    t.cancel = calls;
    assert_int_equal(run_until(f, &t.calls, 1, 5000), 1);
    run_for(f, 200);
    assert_int_equal(t.calls, 1);
    assert_int_equal(eng_httpc_in_flight(f->h), 0);
}

struct chain {
    struct fx *f;
    const char *url;
    int calls, want;
};

static void chain_next(void *arg, const eng_err *err, const eng_http_response *resp,
                       eng_http_call *call)
{
    struct chain *ch = arg;
    (void)call;
    assert_null(err);
    assert_int_equal(resp->status, 200);
    if (++ch->calls < ch->want)
        eng_httpc_start(ch->f->h, &(eng_http_request){.url = ch->url}, chain_next, ch);
}

static void test_start_from_completion_reuses_connection(void **state)
{
    struct fx *f = *state;
    char *u = url(f, "/echo");
    struct chain ch = {.f = f, .url = u, .want = 5};
    eng_httpc_start(f->h, &(eng_http_request){.url = u}, chain_next, &ch);
    assert_int_equal(run_until(f, &ch.calls, 5, 5000), 5);
    assert_int_equal(eng_httpc_in_flight(f->h), 0);
    assert_int_equal(th_mock_requests(f->mock), 5);
    assert_int_equal(th_mock_connections(f->mock), 1); /* keep-alive reused */
    free(u);
}

/* public_only: a loopback target is never connected to, and a loopback connection another call
 * left in the cache is not reused for it; the same call without public_only goes through. */
static void test_public_only(void **state)
{
    struct fx *f = *state;
    char *u = url(f, "/echo");
    struct rec r = {0};
    fetch(f, &(eng_http_request){.url = u, .public_only = true}, &r);
    assert_true(r.failed);
    assert_int_equal(r.rc, ENG_EINVAL);
    assert_non_null(strstr(r.msg, "127.0.0.1 is loopback"));
    assert_int_equal(th_mock_connections(f->mock), 0);
    memset(&r, 0, sizeof r);
    fetch(f, &(eng_http_request){.url = u}, &r); /* leaves a keep-alive connection cached */
    assert_false(r.failed);
    rec_done(&r);
    memset(&r, 0, sizeof r);
    fetch(f, &(eng_http_request){.url = u, .public_only = true}, &r);
    assert_true(r.failed);
    assert_int_equal(r.rc, ENG_EINVAL);
    assert_int_equal(th_mock_requests(f->mock), 1);
    /* a name resolving to loopback is refused after resolution, like the address itself */
    char *named = eng_xasprintf("http://localhost:%d/echo", th_mock_port(f->mock));
    memset(&r, 0, sizeof r);
    fetch(f, &(eng_http_request){.url = named, .public_only = true}, &r);
    assert_true(r.failed);
    assert_int_equal(r.rc, ENG_EINVAL);
    assert_non_null(strstr(r.msg, "is loopback"));
    assert_int_equal(th_mock_requests(f->mock), 1);
    free(named);
    free(u);
}

static void test_free_with_calls_in_flight(void **state)
{
    struct fx *f = *state;
    char *u = url(f, "/delay/500");
    struct rec r = {0};
    for (int i = 0; i < 10; i++)
        eng_httpc_start(f->h, &(eng_http_request){.url = u}, record, &r);
    run_for(f, 100);
    eng_httpc_free(f->h);
    f->h = NULL;
    run_for(f, 700);
    assert_int_equal(r.calls, 0);
    free(u);
}

struct freer {
    int calls;
    struct fx *f;
};

static void free_client(void *arg, const eng_err *err, const eng_http_response *resp,
                        eng_http_call *call)
{
    struct freer *z = arg;
    (void)err;
    (void)resp;
    z->calls++;
    eng_httpc_free(z->f->h);
    /* The call stays valid until this callback returns. */
    assert_null(eng_http_call_header(call, "X-Missing"));
    z->f->h = NULL;
}

static void test_free_from_inside_a_callback(void **state)
{
    struct fx *f = *state;
    char *fast = url(f, "/delay/0"), *slow = url(f, "/delay/300");
    struct rec r = {0};
    struct freer z = {.f = f};
    eng_httpc_start(f->h, &(eng_http_request){.url = slow}, record, &r);
    eng_httpc_start(f->h, &(eng_http_request){.url = slow}, record, &r);
    eng_httpc_start(f->h, &(eng_http_request){.url = fast}, free_client, &z);
    assert_int_equal(run_until(f, &z.calls, 1, 5000), 1);
    assert_null(f->h);
    run_for(f, 500);
    assert_int_equal(r.calls, 0);
    assert_int_equal(z.calls, 1);
    free(fast);
    free(slow);
}

static long rss_kib(void)
{
    long pages = 0, rss = 0;
    FILE *fp = fopen("/proc/self/statm", "r");
    if (!fp)
        return 0;
    if (fscanf(fp, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(fp);
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

struct many {
    int calls, ok;
    size_t first_in_flight_seen;
    eng_httpc *h;
};

static void count_many(void *arg, const eng_err *err, const eng_http_response *resp,
                       eng_http_call *call)
{
    struct many *m = arg;
    (void)call;
    if (m->calls++ == 0)
        m->first_in_flight_seen = eng_httpc_in_flight(m->h);
    if (!err && resp->status == 200 && strncmp(resp->body, "late ", 5) == 0)
        m->ok++;
    else if (err)
        fprintf(stderr, "call failed: %s\n", err->msg);
}

static void test_two_thousand_in_flight(void **state)
{
    struct fx *f = *state;
    enum { N = 2000 };
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    if (rl.rlim_cur < 2 * N + 100)
        fail_msg("RLIMIT_NOFILE hard limit %lu is below the %d descriptors this test needs",
                 (unsigned long)rl.rlim_cur, 2 * N + 100);

    char *u = url(f, "/delay/200");
    struct many m = {.h = f->h};
    long rss0 = rss_kib();
    long long t0 = th_now_ms();
    for (int i = 0; i < N; i++)
        eng_httpc_start(f->h, &(eng_http_request){.url = u}, count_many, &m);
    assert_int_equal(eng_httpc_in_flight(f->h), N);
    long long deadline = th_now_ms() + 9000;
    long rss_peak = 0;
    while (m.calls < N && th_now_ms() < deadline) {
        run_for(f, 20);
        long rss = rss_kib();
        rss_peak = rss > rss_peak ? rss : rss_peak;
    }
    long long took = th_now_ms() - t0;
    print_message("%d calls in %lld ms; mock peak pending %lu, connections %lu; "
                  "RSS +%ld KiB at peak (%.1f KiB per call, both ends)\n",
                  N, took, th_mock_peak_pending(f->mock), th_mock_connections(f->mock),
                  rss_peak - rss0, (double)(rss_peak - rss0) / N);
    assert_int_equal(m.calls, N);
    assert_int_equal(m.ok, N);
    assert_int_equal(m.first_in_flight_seen, N - 1);
    assert_int_equal(eng_httpc_in_flight(f->h), 0);
    assert_int_equal(th_mock_requests(f->mock), N);
    /* Serially this would take 400 s; the mock must have held most of them at once. */
    assert_true(th_mock_peak_pending(f->mock) >= N / 2);
    free(u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_and_other_methods, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_codes_pass_through, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unsupported_scheme_and_bad_url, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_over_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_closed_mid_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_in_pieces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_from_another_completion, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_call_already_finished_in_same_turn, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_start_from_completion_reuses_connection, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_public_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_calls_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_from_inside_a_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_thousand_in_flight, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
