/* tests/unit/test_api_http.c: the HTTP/1.1 server through real sockets on 127.0.0.1.
 *
 * The server's loop runs on its own thread; the test body is a blocking client with receive
 * timeouts. Code that must run on the loop thread (shutdown, counting connections) goes through
 * fx_call. Responses are parsed with llhttp in response mode, so chunking and pipelining are
 * checked by a real parser rather than by string matching. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <jansson.h>
#include <llhttp.h>

#include "api/connlimit.h"
#include "api/http.h"
#include "engine/mem.h"
#include "engine/metrics.h"
#include "tests/support/th.h"

/* ---- server fixture ---- */

#define BIG_LEN (3 * 1024 * 1024) /* far more than a socket buffer: exercises EV_WRITE */

typedef struct fx {
    struct ev_loop *loop;
    api_http *http;
    int port;
    pthread_t thr;
    ev_async call_w;
    void (*call_fn)(struct fx *f, void *arg);
    void *call_arg;
    sem_t call_done;
    atomic_int handled;
    atomic_int aborts;
    atomic_int async_live; /* async handlers still holding a request */
    atomic_int shutdown_done;
    atomic_int conns; /* written by fx_conns */
} fx;

typedef struct pending {
    ev_timer t;
    api_req *req;
    fx *f;
    int left; /* stream chunks still to write; -1 forever */
    bool stream;
} pending;

static void pending_abort(void *arg)
{
    pending *p = arg;
    ev_timer_stop(p->f->loop, &p->t);
    atomic_fetch_add(&p->f->aborts, 1);
    atomic_fetch_sub(&p->f->async_live, 1);
    free(p);
}

static void pending_fire(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    pending *p = (pending *)w;
    if (p->stream && p->left != 0) {
        char line[32];
        int n = snprintf(line, sizeof line, "chunk %d\n", p->left);
        api_req_stream_write(p->req, line, (size_t)n);
        if (p->left > 0)
            p->left--;
        return; /* repeating */
    }
    ev_timer_stop(loop, w);
    if (p->stream)
        api_req_stream_end(p->req);
    else
        api_req_respond(p->req, 200, "text/plain", "async", 5, NULL);
    atomic_fetch_sub(&p->f->async_live, 1);
    free(p);
}

static void start_pending(fx *f, api_req *r, double after, bool stream, int chunks)
{
    pending *p = calloc(1, sizeof *p);
    p->req = r;
    p->f = f;
    p->stream = stream;
    p->left = chunks;
    ev_timer_init(&p->t, pending_fire, after, stream ? 0.02 : 0.);
    ev_timer_start(f->loop, &p->t);
    api_req_on_abort(r, pending_abort, p);
    atomic_fetch_add(&f->async_live, 1);
}

static void handler(void *arg, api_req *r)
{
    fx *f = arg;
    atomic_fetch_add(&f->handled, 1);
    const char *path = api_req_path(r);
    if (strcmp(path, "/echo") == 0) {
        size_t len;
        const char *body = api_req_body(r, &len);
        const char *q = api_req_query(r, "q");
        const char *h = api_req_header(r, "x-test");
        api_req_respond_json(r, 200,
                             json_pack("{s:s, s:s, s:s*, s:s*, s:s%}", "method", api_req_method(r),
                                       "path", path, "q", q, "h", h, "body", body, len));
    } else if (strcmp(path, "/async") == 0) {
        start_pending(f, r, 0.05, false, 0);
    } else if (strcmp(path, "/slow") == 0) {
        start_pending(f, r, 0.3, false, 0);
    } else if (strcmp(path, "/stream") == 0) {
        api_req_stream_begin(r, 200, "text/plain", (const char *const[]){"X-Kind: stream", NULL});
        api_req_stream_write(r, "first\n", 6);
        start_pending(f, r, 0.02, true, 3);
    } else if (strcmp(path, "/quiet") == 0) { /* a stream that writes nothing for a second */
        api_req_stream_begin(r, 200, "text/event-stream", NULL);
        start_pending(f, r, 1.0, true, 0);
    } else if (strcmp(path, "/forever") == 0) {
        api_req_stream_begin(r, 200, "text/event-stream", NULL);
        start_pending(f, r, 0.02, true, -1);
    } else if (strcmp(path, "/big") == 0) {
        size_t n = BIG_LEN;
        char *big = malloc(n);
        for (size_t i = 0; i < n; i++)
            big[i] = (char)(i % 251);
        api_req_respond(r, 200, "application/octet-stream", big, n, NULL);
        free(big);
    } else if (strcmp(path, "/") == 0) {
        api_req_respond(r, 200, "application/json", "{}", 2, NULL);
    } else {
        api_req_respond_error(r, 404, "not_found", "no such route", NULL);
    }
}

static void fx_on_call(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop, (void)revents;
    fx *f = (fx *)((char *)w - offsetof(fx, call_w));
    f->call_fn(f, f->call_arg);
    sem_post(&f->call_done);
}

static void *fx_thread(void *arg)
{
    fx *f = arg;
    ev_run(f->loop, 0);
    return NULL;
}

/* Runs fn(f, arg) on the loop thread and waits for it. */
static void fx_call(fx *f, void (*fn)(fx *, void *), void *arg)
{
    f->call_fn = fn;
    f->call_arg = arg;
    ev_async_send(f->loop, &f->call_w);
    while (sem_wait(&f->call_done) != 0 && errno == EINTR)
        ;
}

static fx *fx_start(api_http_opts opts)
{
    fx *f = calloc(1, sizeof *f);
    f->loop = ev_loop_new(EVFLAG_AUTO);
    opts.listen = "127.0.0.1:0";
    eng_err err = {0};
    f->http = api_http_new(f->loop, &opts, handler, f, &err);
    assert_non_null(f->http);
    f->port = api_http_port(f->http);
    assert_true(f->port > 0);
    sem_init(&f->call_done, 0, 0);
    ev_async_init(&f->call_w, fx_on_call);
    ev_async_start(f->loop, &f->call_w);
    pthread_create(&f->thr, NULL, fx_thread, f);
    return f;
}

static void fx_do_stop(fx *f, void *arg)
{
    (void)arg;
    api_http_free(f->http);
    f->http = NULL;
    ev_async_stop(f->loop, &f->call_w);
    ev_break(f->loop, EVBREAK_ALL);
}

static void fx_stop(fx *f)
{
    fx_call(f, fx_do_stop, NULL);
    pthread_join(f->thr, NULL);
    ev_loop_destroy(f->loop);
    sem_destroy(&f->call_done);
    assert_int_equal(atomic_load(&f->async_live), 0);
    free(f);
}

static void fx_do_count(fx *f, void *arg)
{
    (void)arg;
    atomic_store(&f->conns, api_http_conn_count(f->http));
}

static int fx_conns(fx *f)
{
    fx_call(f, fx_do_count, NULL);
    return atomic_load(&f->conns);
}

/* Polls cond on the test thread for up to timeout_ms. */
static bool wait_until(atomic_int *v, int want, int timeout_ms)
{
    long long end = th_now_ms() + timeout_ms;
    while (atomic_load(v) != want) {
        if (th_now_ms() > end)
            return false;
        usleep(5000);
    }
    return true;
}

/* ---- client ---- */

typedef struct resp {
    int status;
    char headers[2048]; /* "Name: value\n"... */
    char body[8192];
    size_t body_len;
} resp;

typedef struct cli {
    int fd;
    llhttp_t p;
    llhttp_settings_t set;
    resp r[8];
    int n;
} cli;

static int c_status(llhttp_t *p)
{
    cli *c = p->data;
    c->r[c->n].status = p->status_code;
    return 0;
}

static int c_hfield(llhttp_t *p, const char *at, size_t len)
{
    cli *c = p->data;
    strncat(c->r[c->n].headers, at, len);
    return 0;
}

static int c_hfield_done(llhttp_t *p)
{
    cli *c = p->data;
    strcat(c->r[c->n].headers, ": ");
    return 0;
}

static int c_hvalue_done(llhttp_t *p)
{
    cli *c = p->data;
    strcat(c->r[c->n].headers, "\n");
    return 0;
}

static int c_body(llhttp_t *p, const char *at, size_t len)
{
    cli *c = p->data;
    resp *r = &c->r[c->n];
    assert_true(r->body_len + len < sizeof r->body);
    memcpy(r->body + r->body_len, at, len);
    r->body_len += len;
    return 0;
}

static int c_done(llhttp_t *p)
{
    cli *c = p->data;
    assert_true(c->n < 7);
    c->n++;
    return 0;
}

/* A client whose connection comes from the loopback address src ("127.0.0.2"), or 127.0.0.1. */
static cli *cli_new_from(int port, const char *src)
{
    cli *c = calloc(1, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    if (src) {
        struct sockaddr_in b = {.sin_family = AF_INET};
        inet_pton(AF_INET, src, &b.sin_addr);
        assert_int_equal(bind(c->fd, (struct sockaddr *)&b, sizeof b), 0);
    }
    struct timeval tv = {.tv_sec = 5};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
    llhttp_settings_init(&c->set);
    c->set.on_status_complete = c_status;
    c->set.on_header_field = c_hfield;
    c->set.on_header_value = c_hfield;
    c->set.on_header_field_complete = c_hfield_done;
    c->set.on_header_value_complete = c_hvalue_done;
    c->set.on_body = c_body;
    c->set.on_message_complete = c_done;
    llhttp_init(&c->p, HTTP_RESPONSE, &c->set);
    c->p.data = c;
    return c;
}

static cli *cli_new(int port)
{
    return cli_new_from(port, NULL);
}

static void cli_free(cli *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

static void cli_send(cli *c, const char *data, size_t len)
{
    while (len) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        assert_true(n > 0);
        data += n;
        len -= (size_t)n;
    }
}

static void cli_sends(cli *c, const char *s)
{
    cli_send(c, s, strlen(s));
}

/* Reads until n responses in total have been parsed. False on EOF, error or timeout first. */
static bool cli_wait(cli *c, int n)
{
    while (c->n < n) {
        char buf[4096];
        ssize_t got = recv(c->fd, buf, sizeof buf, 0);
        if (got <= 0)
            return false;
        assert_int_equal(llhttp_execute(&c->p, buf, (size_t)got), HPE_OK);
    }
    return true;
}

/* Whether the server closes the connection (EOF or reset) within timeout_ms, nothing more
 * arriving before. */
static bool cli_closed_within(cli *c, int timeout_ms)
{
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    if (poll(&pfd, 1, timeout_ms) != 1)
        return false;
    char b;
    ssize_t n = recv(c->fd, &b, 1, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno == ECONNRESET);
}

static bool has_header(const resp *r, const char *line)
{
    return strstr(r->headers, line) != NULL;
}

static json_t *body_json(const resp *r)
{
    json_t *j = json_loadb(r->body, r->body_len, 0, NULL);
    assert_non_null(j);
    return j;
}

static const char *jstr(json_t *j, const char *path1, const char *path2)
{
    json_t *v = json_object_get(j, path1);
    if (path2)
        v = json_object_get(v, path2);
    return json_string_value(v);
}

/* ---- tests ---- */

static void test_get_and_post(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){0});
    cli *c = cli_new(f->port);
    cli_sends(c, "GET /echo?q=a%20b+c&x HTTP/1.1\r\nHost: t\r\nX-Test: yes\r\n\r\n");
    assert_true(cli_wait(c, 1));
    assert_int_equal(c->r[0].status, 200);
    assert_true(has_header(&c->r[0], "Content-Type: application/json"));
    json_t *j = body_json(&c->r[0]);
    assert_string_equal(jstr(j, "method", NULL), "GET");
    assert_string_equal(jstr(j, "path", NULL), "/echo");
    assert_string_equal(jstr(j, "q", NULL), "a b c");
    assert_string_equal(jstr(j, "h", NULL), "yes");
    assert_string_equal(jstr(j, "body", NULL), "");
    json_decref(j);

    cli_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    assert_true(cli_wait(c, 2));
    j = body_json(&c->r[1]);
    assert_string_equal(jstr(j, "method", NULL), "POST");
    assert_string_equal(jstr(j, "body", NULL), "hello");
    assert_null(json_object_get(j, "q"));
    json_decref(j);

    cli_sends(c, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(cli_wait(c, 3));
    assert_int_equal(c->r[2].status, 404);
    j = body_json(&c->r[2]);
    assert_string_equal(jstr(j, "error", "code"), "not_found");
    json_decref(j);
    cli_free(c);
    fx_stop(f);
}

static void test_keepalive_reuse(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){0});
    cli *c = cli_new(f->port);
    for (int i = 0; i < 5; i++) {
        cli_sends(c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_true(cli_wait(c, i + 1));
        assert_int_equal(c->r[i].status, 200);
        assert_false(has_header(&c->r[i], "Connection: close"));
    }
    assert_int_equal(fx_conns(f), 1);
    assert_int_equal(atomic_load(&f->handled), 5);
    cli_free(c);
    fx_stop(f);
}

static void test_pipelined_in_order(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){0});
    cli *c = cli_new(f->port);
    /* the slow one in the middle must not let the third overtake it */
    cli_sends(c, "GET /echo?q=1 HTTP/1.1\r\nHost: t\r\n\r\n"
                 "GET /async HTTP/1.1\r\nHost: t\r\n\r\n"
                 "POST /echo?q=3 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    assert_true(cli_wait(c, 3));
    json_t *j = body_json(&c->r[0]);
    assert_string_equal(jstr(j, "q", NULL), "1");
    json_decref(j);
    assert_int_equal(c->r[1].status, 200);
    assert_int_equal(c->r[1].body_len, 5);
    assert_memory_equal(c->r[1].body, "async", 5);
    j = body_json(&c->r[2]);
    assert_string_equal(jstr(j, "q", NULL), "3");
    assert_string_equal(jstr(j, "body", NULL), "abc");
    json_decref(j);
    cli_free(c);
    fx_stop(f);
}

static void test_chunked_request_body(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){0});
    cli *c = cli_new(f->port);
    cli_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\n");
    usleep(50000); /* the rest in a later segment */
    cli_sends(c, "6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    assert_true(cli_wait(c, 1));
    json_t *j = body_json(&c->r[0]);
    assert_string_equal(jstr(j, "body", NULL), "hello world");
    json_decref(j);
    cli_free(c);
    fx_stop(f);
}

static void test_expect_continue(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){0});
    cli *c = cli_new(f->port);
    cli_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                 "Content-Length: 4\r\n\r\n");
    assert_true(cli_wait(c, 1));
    assert_int_equal(c->r[0].status, 100);
    cli_sends(c, "body");
    assert_true(cli_wait(c, 2));
    assert_int_equal(c->r[1].status, 200);
    json_t *j = body_json(&c->r[1]);
    assert_string_equal(jstr(j, "body", NULL), "body");
    json_decref(j);
    cli_free(c);
    fx_stop(f);
}

static void test_body_over_cap(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){.max_body = 1024});
    /* announced by Content-Length: refused before the body is read */
    cli *c = cli_new(f->port);
    cli_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n\r\n");
    char big[2048];
    memset(big, 'x', sizeof big);
    cli_send(c, big, sizeof big);
    assert_true(cli_wait(c, 1));
    assert_int_equal(c->r[0].status, 413);
    assert_true(has_header(&c->r[0], "Connection: close"));
    json_t *j = body_json(&c->r[0]);
    assert_string_equal(jstr(j, "error", "code"), "payload_too_large");
    json_decref(j);
    assert_true(cli_closed_within(c, 3000));
    cli_free(c);

    /* chunked: found out while reading */
    c = cli_new(f->port);
    cli_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 3; i++) {
        cli_sends(c, "200\r\n");
        cli_send(c, big, 512);
        cli_sends(c, "\r\n");
    }
    assert_true(cli_wait(c, 1));
    assert_int_equal(c->r[0].status, 413);
    assert_true(cli_closed_within(c, 3000));
    cli_free(c);
    assert_int_equal(atomic_load(&f->handled), 0);
    fx_stop(f);
}

static void test_header_over_cap(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){.max_header = 1024});
    cli *c = cli_new(f->port);
    char req[4096];
    char val[2000];
    memset(val, 'v', sizeof val - 1);
    val[sizeof val - 1] = '\0';
    snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: t\r\nX-Big: %s\r\n\r\n", val);
    cli_sends(c, req);
    assert_true(cli_wait(c, 1));
    assert_int_equal(c->r[0].status, 431);
    json_t *j = body_json(&c->r[0]);
    assert_string_equal(jstr(j, "error", "code"), "headers_too_large");
    json_decref(j);
    assert_true(cli_closed_within(c, 3000));
    cli_free(c);
    fx_stop(f);
}

static void test_garbage_is_400(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){0});
    static const char *const bad[] = {
        "BLAH\x01\x02 nonsense\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET /a%zz HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /a%00b HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET / HTTP/1.1\rHost: t\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cli *c = cli_new(f->port);
        cli_sends(c, bad[i]);
        assert_true(cli_wait(c, 1));
        assert_int_equal(c->r[0].status, 400);
        assert_true(has_header(&c->r[0], "Connection: close"));
        json_t *j = body_json(&c->r[0]);
        assert_string_equal(jstr(j, "error", "code"), "invalid_request");
        json_decref(j);
        assert_true(cli_closed_within(c, 3000));
        cli_free(c);
    }
    assert_int_equal(atomic_load(&f->handled), 0);
    fx_stop(f);
}

static void test_slow_headers_closed(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){.header_timeout_s = 0.5});
    cli *c = cli_new(f->port);
    const char *req = "GET / HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    long long t0 = th_now_ms();
    bool closed = false;
    for (size_t i = 0; req[i] && !closed; i++) {
        if (send(c->fd, req + i, 1, MSG_NOSIGNAL) != 1)
            closed = true;
        else
            closed = cli_closed_within(c, 100);
    }
    long long took = th_now_ms() - t0;
    assert_true(closed);
    assert_true(took >= 400 && took < 1500);
    assert_int_equal(c->n, 0);
    cli_free(c);
    assert_int_equal(atomic_load(&f->handled), 0);
    fx_stop(f);
}

/* A request that arrived in one read is answered however long its handler takes: the header
 * deadline of the connection stops when the request is complete. */
static void test_handler_outlives_header_deadline(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){.header_timeout_s = 0.15});
    cli *c = cli_new(f->port);
    cli_sends(c, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"); /* answered after 0.3 s */
    assert_true(cli_wait(c, 1));
    assert_int_equal(c->r[0].status, 200);
    cli_free(c);
    fx_stop(f);
}

/* A body trickled one byte at a time does not keep the request alive past its deadline. */
static void test_trickled_body_deadline(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){.request_timeout_s = 0.6});
    cli *c = cli_new(f->port);
    cli_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 200\r\n\r\n");
    long long t0 = th_now_ms();
    bool closed = false;
    for (int i = 0; i < 200 && !closed; i++) {
        if (send(c->fd, "x", 1, MSG_NOSIGNAL) != 1)
            closed = true;
        else
            closed = cli_closed_within(c, 50);
    }
    long long took = th_now_ms() - t0;
    assert_true(closed);
    assert_true(took >= 400 && took < 2500);
    assert_int_equal(atomic_load(&f->handled), 0);
    cli_free(c);
    fx_stop(f);
}

/* One client address holds at most its share; it gets a 429 past it, others are still served. */
static void test_per_client_cap(void **state)
{
    (void)state;
    api_connlimit *lim = api_connlimit_new(2);
    fx *f = fx_start((api_http_opts){.limit = lim});
    uint64_t refused0 = eng_metrics_value("flowd_http_connections_refused_total",
                                          "reason=\"per_client\"");
    cli *a = cli_new_from(f->port, "127.0.0.2");
    cli *b = cli_new_from(f->port, "127.0.0.2");
    cli_sends(a, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    cli_sends(b, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(cli_wait(a, 1));
    assert_true(cli_wait(b, 1));
    cli *over = cli_new_from(f->port, "127.0.0.2");
    assert_true(cli_wait(over, 1));
    assert_int_equal(over->r[0].status, 429);
    assert_true(has_header(&over->r[0], "Retry-After: 1"));
    assert_true(cli_closed_within(over, 2000));
    assert_int_equal(eng_metrics_value("flowd_http_connections_refused_total",
                                       "reason=\"per_client\""),
                     refused0 + 1);
    cli *other = cli_new(f->port); /* 127.0.0.1 */
    cli_sends(other, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(cli_wait(other, 1));
    assert_int_equal(other->r[0].status, 200);
    cli_free(a); /* its slot comes back */
    long long end = th_now_ms() + 2000;
    int status = 0;
    while (status != 200 && th_now_ms() < end) {
        cli *again = cli_new_from(f->port, "127.0.0.2");
        cli_sends(again, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        if (cli_wait(again, 1))
            status = again->r[0].status;
        cli_free(again);
        if (status != 200)
            usleep(20000);
    }
    assert_int_equal(status, 200);
    cli_free(b);
    cli_free(over);
    cli_free(other);
    fx_stop(f);
    api_connlimit_free(lim);
}

static void test_idle_timeout(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){.idle_timeout_s = 0.3});
    cli *c = cli_new(f->port);
    cli_sends(c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(cli_wait(c, 1));
    long long t0 = th_now_ms();
    assert_true(cli_closed_within(c, 3000));
    long long took = th_now_ms() - t0;
    assert_true(took >= 200 && took < 1500);
    cli_free(c);
    fx_stop(f);
}

static void test_half_close_gets_response(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){0});
    const char *paths[] = {"/echo", "/async"};
    for (int i = 0; i < 2; i++) {
        cli *c = cli_new(f->port);
        char req[128];
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\n\r\n",
                 paths[i]);
        cli_sends(c, req);
        shutdown(c->fd, SHUT_WR);
        assert_true(cli_wait(c, 2));
        assert_int_equal(c->r[0].status, 200);
        assert_int_equal(c->r[1].status, 200);
        assert_true(cli_closed_within(c, 3000));
        cli_free(c);
    }
    fx_stop(f);
}

static void test_async_response(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){0});
    cli *c = cli_new(f->port);
    long long t0 = th_now_ms();
    cli_sends(c, "GET /async HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(cli_wait(c, 1));
    assert_true(th_now_ms() - t0 >= 40);
    assert_int_equal(c->r[0].status, 200);
    assert_memory_equal(c->r[0].body, "async", 5);
    cli_sends(c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n"); /* still alive after an async answer */
    assert_true(cli_wait(c, 2));
    cli_free(c);
    fx_stop(f);
}

static void test_client_gone_aborts(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){0});
    /* reset while the handler still owes the response */
    cli *c = cli_new(f->port);
    cli_sends(c, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(wait_until(&f->async_live, 1, 2000));
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    cli_free(c);
    assert_true(wait_until(&f->aborts, 1, 2000));
    assert_int_equal(atomic_load(&f->async_live), 0);

    /* an orderly close during an endless stream: the writes fail and the stream is aborted */
    c = cli_new(f->port);
    cli_sends(c, "GET /forever HTTP/1.1\r\nHost: t\r\n\r\n");
    char buf[256];
    assert_true(recv(c->fd, buf, sizeof buf, 0) > 0);
    cli_free(c);
    assert_true(wait_until(&f->aborts, 2, 3000));
    assert_int_equal(atomic_load(&f->async_live), 0);
    for (int i = 0; i < 100 && fx_conns(f) != 0; i++)
        usleep(10000);
    assert_int_equal(fx_conns(f), 0);
    fx_stop(f);
}

static void test_streaming_response(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){0});
    cli *c = cli_new(f->port);
    cli_sends(c, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(cli_wait(c, 1));
    assert_int_equal(c->r[0].status, 200);
    assert_true(has_header(&c->r[0], "Transfer-Encoding: chunked"));
    assert_true(has_header(&c->r[0], "X-Kind: stream"));
    const char want[] = "first\nchunk 3\nchunk 2\nchunk 1\n";
    assert_int_equal(c->r[0].body_len, sizeof want - 1);
    assert_memory_equal(c->r[0].body, want, sizeof want - 1);
    cli_sends(c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(cli_wait(c, 2));

    /* HTTP/1.0 has no chunking: raw bytes, then close */
    cli *d = cli_new(f->port);
    cli_sends(d, "GET /stream HTTP/1.0\r\n\r\n");
    char all[1024];
    size_t n = 0;
    ssize_t got;
    while ((got = recv(d->fd, all + n, sizeof all - 1 - n, 0)) > 0)
        n += (size_t)got;
    all[n] = '\0';
    assert_non_null(strstr(all, "Connection: close\r\n"));
    assert_null(strstr(all, "chunked"));
    assert_non_null(strstr(all, "\r\n\r\nfirst\nchunk 3\nchunk 2\nchunk 1\n"));
    cli_free(d);
    cli_free(c);
    fx_stop(f);
}

/* A stream quiet for longer than the header and idle timeouts is not cut: those timers measure
 * the client, and the one running when the request arrived is stopped, on a fresh connection (the
 * header deadline) as on a reused one (the keep-alive idle timer). */
static void test_quiet_stream_outlives_timeouts(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){.header_timeout_s = 0.2, .idle_timeout_s = 0.3});
    cli *c = cli_new(f->port);
    cli_sends(c, "GET /quiet HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(cli_wait(c, 1));
    assert_int_equal(c->r[0].status, 200);
    cli_sends(c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(cli_wait(c, 2));
    cli_sends(c, "GET /quiet HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(cli_wait(c, 3));
    assert_int_equal(c->r[2].status, 200);
    cli_free(c);
    fx_stop(f);
}

static void test_large_response_slow_reader(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){0});
    cli *c = cli_new(f->port);
    cli_sends(c, "GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    usleep(200000); /* let the server fill the socket and wait for writability */
    char *all = malloc(BIG_LEN + 4096);
    size_t n = 0;
    char *body = NULL;
    while (!body || (size_t)(all + n - body) < BIG_LEN) {
        ssize_t got = recv(c->fd, all + n, BIG_LEN + 4096 - n, 0);
        assert_true(got > 0);
        n += (size_t)got;
        if (!body && memmem(all, n, "\r\n\r\n", 4))
            body = (char *)memmem(all, n, "\r\n\r\n", 4) + 4;
    }
    assert_int_equal((size_t)(all + n - body), BIG_LEN);
    char want[64];
    snprintf(want, sizeof want, "Content-Length: %d\r\n", BIG_LEN);
    assert_non_null(memmem(all, (size_t)(body - all), want, strlen(want)));
    for (size_t i = 0; i < BIG_LEN; i++)
        if (body[i] != (char)(i % 251))
            fail_msg("byte %zu differs", i);
    free(all);
    cli_sends(c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n"); /* and the connection goes on */
    assert_true(cli_wait(c, 1));
    assert_int_equal(c->r[0].status, 200);
    cli_free(c);
    fx_stop(f);
}

static void test_connection_close_and_http10(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){0});
    cli *c = cli_new(f->port);
    cli_sends(c, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_true(cli_wait(c, 1));
    assert_true(has_header(&c->r[0], "Connection: close"));
    assert_true(cli_closed_within(c, 3000));
    cli_free(c);

    c = cli_new(f->port);
    cli_sends(c, "GET / HTTP/1.0\r\n\r\n");
    assert_true(cli_wait(c, 1));
    assert_true(has_header(&c->r[0], "Connection: close"));
    assert_true(cli_closed_within(c, 3000));
    cli_free(c);

    c = cli_new(f->port);
    cli_sends(c, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_true(cli_wait(c, 1));
    assert_true(has_header(&c->r[0], "Connection: keep-alive"));
    cli_sends(c, "HEAD /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    char buf[1024];
    ssize_t n = recv(c->fd, buf, sizeof buf - 1, 0);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "Content-Length: "));
    assert_true(strstr(buf, "\r\n\r\n")[4] == '\0'); /* HEAD: no body bytes */
    cli_free(c);
    fx_stop(f);
}

static void on_shutdown_done(void *arg)
{
    fx *f = arg;
    atomic_store(&f->shutdown_done, 1);
}

static void fx_do_shutdown(fx *f, void *arg)
{
    (void)arg;
    api_http_shutdown(f->http, on_shutdown_done, f);
}

static void test_graceful_shutdown(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){0});
    cli *idle = cli_new(f->port);
    cli_sends(idle, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(cli_wait(idle, 1));
    cli *busy = cli_new(f->port);
    cli_sends(busy, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(wait_until(&f->async_live, 1, 2000));

    fx_call(f, fx_do_shutdown, NULL);
    assert_true(cli_closed_within(idle, 1000));
    assert_int_equal(atomic_load(&f->shutdown_done), 0);
    assert_true(cli_wait(busy, 1));
    assert_int_equal(busy->r[0].status, 200);
    assert_memory_equal(busy->r[0].body, "async", 5);
    assert_true(has_header(&busy->r[0], "Connection: close"));
    assert_true(cli_closed_within(busy, 3000));
    cli_free(busy); /* ends the server's lingering close */
    assert_true(wait_until(&f->shutdown_done, 1, 2000));

    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_not_equal(connect(s, (struct sockaddr *)&a, sizeof a), 0);
    close(s);
    cli_free(idle);
    fx_stop(f);
}

static void test_bad_listen(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    eng_err err = {0};
    assert_null(api_http_new(loop, &(api_http_opts){.listen = "nonsense"}, handler, NULL, &err));
    assert_int_equal(err.rc, ENG_EINVAL);
    assert_null(api_http_new(loop, &(api_http_opts){.listen = "[::1"}, handler, NULL, &err));
    assert_int_equal(err.rc, ENG_EINVAL);
    api_http *s = api_http_new(loop, &(api_http_opts){.listen = "127.0.0.1:0"}, handler, NULL, &err);
    assert_non_null(s);
    char taken[32];
    snprintf(taken, sizeof taken, "127.0.0.1:%d", api_http_port(s));
    assert_null(api_http_new(loop, &(api_http_opts){.listen = taken}, handler, NULL, &err));
    assert_int_equal(err.rc, ENG_ESYS);
    api_http_free(s);
    api_http_free(NULL);

    /* bracketed IPv6 */
    api_http *v6 = api_http_new(loop, &(api_http_opts){.listen = "[::1]:0"}, handler, NULL, &err);
    assert_non_null(v6);
    assert_true(api_http_port(v6) > 0);
    api_http_free(v6);
    ev_loop_destroy(loop);
}

static void test_max_conns(void **state)
{
    (void)state;
    fx *f = fx_start((api_http_opts){.max_conns = 2});
    cli *a = cli_new(f->port);
    cli *b = cli_new(f->port);
    cli_sends(a, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    cli_sends(b, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(cli_wait(a, 1));
    assert_true(cli_wait(b, 1));
    cli *c = cli_new(f->port); /* completes in the kernel backlog, not accepted yet */
    cli_sends(c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 300), 0);
    assert_int_equal(fx_conns(f), 2);
    cli_free(a);
    assert_true(cli_wait(c, 1));
    assert_int_equal(c->r[0].status, 200);
    cli_free(b);
    cli_free(c);
    fx_stop(f);
}

int main(void)
{
    eng_mem_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_and_post),
        cmocka_unit_test(test_keepalive_reuse),
        cmocka_unit_test(test_pipelined_in_order),
        cmocka_unit_test(test_chunked_request_body),
        cmocka_unit_test(test_expect_continue),
        cmocka_unit_test(test_body_over_cap),
        cmocka_unit_test(test_header_over_cap),
        cmocka_unit_test(test_garbage_is_400),
        cmocka_unit_test(test_slow_headers_closed),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_trickled_body_deadline),
        cmocka_unit_test(test_handler_outlives_header_deadline),
        cmocka_unit_test(test_per_client_cap),
        cmocka_unit_test(test_half_close_gets_response),
        cmocka_unit_test(test_async_response),
        cmocka_unit_test(test_client_gone_aborts),
        cmocka_unit_test(test_streaming_response),
        cmocka_unit_test(test_quiet_stream_outlives_timeouts),
        cmocka_unit_test(test_large_response_slow_reader),
        cmocka_unit_test(test_connection_close_and_http10),
        cmocka_unit_test(test_graceful_shutdown),
        cmocka_unit_test(test_bad_listen),
        cmocka_unit_test(test_max_conns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
