/* tests/support/th_mockhttp.c: scriptable HTTP/1.1 test server (see th_mockhttp.h).
 *
 * One thread runs an epoll loop over a wake-up pipe, the listener and every connection. A
 * connection reads and parses one request at a time (llhttp pauses at the end of each message,
 * so pipelined requests wait in the input buffer), asks the handler for the answer, then writes it
 * out on the handler's schedule: wait until `due`, write up to the next pause mark, wait again...
 * Connections waiting for their due time sit in a min-heap, so a turn costs what happened in it,
 * not the number of connections open: the mock must not be what a benchmark with thousands of
 * calls in flight measures. */
#include "tests/support/th_mockhttp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine/buf.h"
#include "engine/clock.h"
#include "engine/err.h"
#include "engine/mem.h"

struct th_mock_resp {
    int status;
    eng_buf headers; /* "Name: value\r\n" lines */
    eng_buf body;
    int delay_ms;
    size_t piece;       /* 0: the whole body at once */
    int pause_ms;
    bool chunked;
    bool has_length;    /* the handler set Content-Length itself */
    size_t close_after; /* SIZE_MAX: send everything */
    bool drop;
    bool close;
};

struct mreq {
    th_mock_req pub;
    eng_buf headers; /* "name\0value\0" pairs */
};

enum mconn_state {
    MC_READING, /* parsing a request; watching for input */
    MC_WRITING, /* answering: in the heap until due, then writing up to the next mark (watching
                   for writability only while the socket buffer is full) */
};

struct mconn {
    int fd;
    unsigned long seq;
    enum mconn_state st;
    llhttp_t parser;
    bool need_value; /* a header name ended without a value callback yet */
    eng_buf in;      /* received, not yet parsed */
    eng_buf target, body;
    struct mreq req;
    eng_buf out;        /* the whole encoded answer */
    size_t off;         /* bytes of out written */
    size_t *marks;      /* offsets in out after which to pause, ascending */
    size_t nmarks, mark;
    int pause_ms;
    size_t limit;       /* close once off reaches it (SIZE_MAX: none) */
    bool drop, close_after_reply;
    bool blocked;       /* MC_WRITING: due, but the socket buffer was full */
    long long due_ms;   /* MC_WRITING: do nothing before this time */
    size_t idx;         /* in m->conns */
    size_t hidx;        /* in m->heap, SIZE_MAX when not there */
    uint32_t events;    /* what epoll watches for it now */
};

struct th_mock {
    int lfd;
    int wake[2];
    int port;
    char url[64];
    pthread_t thread;
    th_mock_handler *handler;
    void *arg;
    int ep;
    struct mconn **conns;
    size_t nconns, capconns;
    struct mconn **heap; /* MC_WRITING connections waiting for due_ms, earliest first */
    size_t nheap, capheap;
    llhttp_settings_t settings;
    unsigned long pending; /* server thread only; peak published below */
    atomic_ulong requests, connections, peak_pending;
};

static void mock_die(const char *what)
{
    (void)fprintf(stderr, "th_mockhttp: %s: %s\n", what, strerror(errno));
    abort();
}

static void buf_add(eng_buf *b, const void *p, size_t n)
{
    if (eng_buf_append(b, p, n) != ENG_OK)
        abort(); /* test buffers are uncapped */
}

/* ---- request parsing (llhttp callbacks) ---- */

static struct mconn *conn_of(llhttp_t *p)
{
    return ENG_CONTAINER_OF(p, struct mconn, parser);
}

static int on_begin(llhttp_t *p)
{
    struct mconn *c = conn_of(p);
    eng_buf_reset(&c->target);
    eng_buf_reset(&c->body);
    eng_buf_reset(&c->req.headers);
    c->need_value = false;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    buf_add(&conn_of(p)->target, at, n);
    return 0;
}

static void end_value_if_missing(struct mconn *c)
{
    if (c->need_value) {
        buf_add(&c->req.headers, "", 1);
        c->need_value = false;
    }
}

static int on_field(llhttp_t *p, const char *at, size_t n)
{
    struct mconn *c = conn_of(p);
    end_value_if_missing(c);
    buf_add(&c->req.headers, at, n);
    return 0;
}

static int on_field_done(llhttp_t *p)
{
    struct mconn *c = conn_of(p);
    buf_add(&c->req.headers, "", 1);
    c->need_value = true;
    return 0;
}

static int on_value(llhttp_t *p, const char *at, size_t n)
{
    buf_add(&conn_of(p)->req.headers, at, n);
    return 0;
}

static int on_value_done(llhttp_t *p)
{
    struct mconn *c = conn_of(p);
    buf_add(&c->req.headers, "", 1);
    c->need_value = false;
    return 0;
}

static int on_headers_done(llhttp_t *p)
{
    end_value_if_missing(conn_of(p));
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    buf_add(&conn_of(p)->body, at, n);
    return 0;
}

static int on_complete(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED; /* one request at a time: answer it before parsing the next */
}

const char *th_mock_req_header(const th_mock_req *req, const char *name)
{
    const struct mreq *r = ENG_CONTAINER_OF(req, struct mreq, pub);
    const char *found = NULL;
    for (size_t pos = 0; r->headers.ptr && pos < r->headers.len;) {
        const char *n = r->headers.ptr + pos;
        const char *v = n + strlen(n) + 1;
        if (strcasecmp(n, name) == 0)
            found = v;
        pos = (size_t)(v - r->headers.ptr) + strlen(v) + 1;
    }
    return found;
}

/* ---- building the answer ---- */

void th_mock_resp_status(th_mock_resp *r, int status)
{
    r->status = status;
}

void th_mock_resp_header(th_mock_resp *r, const char *name, const char *fmt, ...)
{
    char value[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof value, fmt, ap);
    va_end(ap);
    if (strcasecmp(name, "Content-Length") == 0)
        r->has_length = true;
    if (eng_buf_appendf(&r->headers, "%s: %s\r\n", name, value) != ENG_OK)
        abort();
}

void th_mock_resp_body(th_mock_resp *r, const void *data, size_t len)
{
    buf_add(&r->body, data, len);
}

void th_mock_resp_bodyf(th_mock_resp *r, const char *fmt, ...)
{
    char *s;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    buf_add(&r->body, s, (size_t)n);
    free(s);
}

void th_mock_resp_delay(th_mock_resp *r, int ms)
{
    r->delay_ms = ms;
}

void th_mock_resp_pieces(th_mock_resp *r, size_t piece_bytes, int pause_ms)
{
    r->piece = piece_bytes;
    r->pause_ms = pause_ms;
}

void th_mock_resp_chunked(th_mock_resp *r)
{
    r->chunked = true;
}

void th_mock_resp_close_after(th_mock_resp *r, size_t body_bytes)
{
    r->close_after = body_bytes;
}

void th_mock_resp_drop(th_mock_resp *r)
{
    r->drop = true;
}

void th_mock_resp_close(th_mock_resp *r)
{
    r->close = true;
}

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    default: return "Status";
    }
}

static void add_mark(struct mconn *c, size_t off)
{
    c->marks = eng_xrealloc(c->marks, (c->nmarks + 1) * sizeof *c->marks);
    c->marks[c->nmarks++] = off;
}

/* Encodes r into c->out with its pause marks and cut-off point. */
static void conn_encode(struct mconn *c, th_mock_resp *r, bool keep_alive)
{
    eng_buf_reset(&c->out);
    c->off = c->nmarks = c->mark = 0;
    if (eng_buf_appendf(&c->out, "HTTP/1.1 %d %s\r\n", r->status, reason(r->status)) != ENG_OK)
        abort();
    buf_add(&c->out, r->headers.ptr ? r->headers.ptr : "", r->headers.len);
    if (r->chunked)
        buf_add(&c->out, "Transfer-Encoding: chunked\r\n", 28);
    else if (!r->has_length && eng_buf_appendf(&c->out, "Content-Length: %zu\r\n", r->body.len))
        abort();
    c->close_after_reply = r->close || !keep_alive;
    if (r->close)
        buf_add(&c->out, "Connection: close\r\n", 19);
    buf_add(&c->out, "\r\n", 2);
    size_t head = c->out.len;
    size_t piece = r->piece ? r->piece : (r->body.len ? r->body.len : 1);
    for (size_t at = 0; at < r->body.len; at += piece) {
        size_t n = r->body.len - at < piece ? r->body.len - at : piece;
        if (r->chunked && eng_buf_appendf(&c->out, "%zx\r\n", n) != ENG_OK)
            abort();
        buf_add(&c->out, r->body.ptr + at, n);
        if (r->chunked)
            buf_add(&c->out, "\r\n", 2);
        if (at + n < r->body.len)
            add_mark(c, c->out.len);
    }
    if (r->chunked)
        buf_add(&c->out, "0\r\n\r\n", 5);
    c->pause_ms = r->pause_ms;
    c->limit = r->close_after == SIZE_MAX ? SIZE_MAX : head + r->close_after;
    c->drop = r->drop;
    c->due_ms = eng_clock_mono_ms() + r->delay_ms;
}

/* ---- connections ---- */

/* ---- the due-time heap ---- */

static void heap_set(th_mock *m, size_t i, struct mconn *c)
{
    m->heap[i] = c;
    c->hidx = i;
}

static void heap_up(th_mock *m, size_t i)
{
    struct mconn *c = m->heap[i];
    while (i > 0 && m->heap[(i - 1) / 2]->due_ms > c->due_ms) {
        heap_set(m, i, m->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_set(m, i, c);
}

static void heap_down(th_mock *m, size_t i)
{
    struct mconn *c = m->heap[i];
    for (;;) {
        size_t k = 2 * i + 1;
        if (k >= m->nheap)
            break;
        if (k + 1 < m->nheap && m->heap[k + 1]->due_ms < m->heap[k]->due_ms)
            k++;
        if (m->heap[k]->due_ms >= c->due_ms)
            break;
        heap_set(m, i, m->heap[k]);
        i = k;
    }
    heap_set(m, i, c);
}

static void heap_push(th_mock *m, struct mconn *c)
{
    if (m->nheap == m->capheap) {
        m->capheap = m->capheap ? m->capheap * 2 : 64;
        m->heap = eng_xrealloc(m->heap, m->capheap * sizeof *m->heap);
    }
    heap_set(m, m->nheap++, c);
    heap_up(m, c->hidx);
}

static void heap_remove(th_mock *m, struct mconn *c)
{
    size_t i = c->hidx;
    c->hidx = SIZE_MAX;
    struct mconn *last = m->heap[--m->nheap];
    if (i == m->nheap)
        return;
    heap_set(m, i, last);
    heap_up(m, i);
    heap_down(m, last->hidx);
}

/* ---- connections ---- */

static void conn_watch(th_mock *m, struct mconn *c, uint32_t events)
{
    if (c->events == events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(m->ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        mock_die("epoll_ctl");
    c->events = events;
}

/* Puts c where its state says: watched for input, in the heap until due, or watched for
 * writability. */
static void conn_arm(th_mock *m, struct mconn *c)
{
    bool waiting = c->st == MC_WRITING && !c->blocked;
    if (waiting && c->hidx == SIZE_MAX)
        heap_push(m, c);
    else if (!waiting && c->hidx != SIZE_MAX)
        heap_remove(m, c);
    conn_watch(m, c, c->st == MC_READING ? EPOLLIN : c->blocked ? EPOLLOUT : 0);
}

static void conn_close(th_mock *m, struct mconn *c)
{
    if (c->st == MC_WRITING)
        m->pending--;
    if (c->hidx != SIZE_MAX)
        heap_remove(m, c);
    /* Out of the epoll set before closing: close() alone leaves the registration (and events
     * naming this freed connection) alive while a child forked by the test, not yet exec'd,
     * still holds the socket. */
    epoll_ctl(m->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    eng_buf_deinit(&c->in);
    eng_buf_deinit(&c->target);
    eng_buf_deinit(&c->body);
    eng_buf_deinit(&c->req.headers);
    eng_buf_deinit(&c->out);
    free(c->marks);
    size_t i = c->idx;
    free(c);
    m->conns[i] = m->conns[--m->nconns];
    if (i < m->nconns)
        m->conns[i]->idx = i;
}

static void mock_accept(th_mock *m)
{
    for (;;) {
        int fd = accept4(m->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                (void)fprintf(stderr, "th_mockhttp: accept: %s\n", strerror(errno));
            return;
        }
        struct mconn *c = eng_xcalloc(1, sizeof *c);
        c->fd = fd;
        c->seq = atomic_fetch_add(&m->connections, 1) + 1;
        c->st = MC_READING;
        c->hidx = SIZE_MAX;
        c->events = EPOLLIN;
        llhttp_init(&c->parser, HTTP_REQUEST, &m->settings);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(m->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            mock_die("epoll_ctl");
        if (m->nconns == m->capconns) {
            m->capconns = m->capconns ? m->capconns * 2 : 64;
            m->conns = eng_xrealloc(m->conns, m->capconns * sizeof(struct mconn *));
        }
        c->idx = m->nconns;
        m->conns[m->nconns++] = c;
    }
}

static void conn_dispatch(th_mock *m, struct mconn *c)
{
    c->req.pub = (th_mock_req){
        .method = llhttp_method_name((llhttp_method_t)llhttp_get_method(&c->parser)),
        .target = c->target.ptr ? c->target.ptr : "",
        .body = c->body.ptr ? c->body.ptr : "",
        .body_len = c->body.len,
        .seq = atomic_fetch_add(&m->requests, 1) + 1,
        .conn_seq = c->seq,
    };
    th_mock_resp r = {.status = 200, .close_after = SIZE_MAX};
    if (m->handler)
        m->handler(m->arg, &c->req.pub, &r);
    conn_encode(c, &r, llhttp_should_keep_alive(&c->parser));
    eng_buf_deinit(&r.headers);
    eng_buf_deinit(&r.body);
    c->st = MC_WRITING;
    if (++m->pending > atomic_load(&m->peak_pending))
        atomic_store(&m->peak_pending, m->pending);
}

/* Parses buffered input; returns false when the connection must close. */
static bool conn_parse(th_mock *m, struct mconn *c)
{
    if (c->in.len == 0)
        return true;
    llhttp_errno_t e = llhttp_execute(&c->parser, c->in.ptr, c->in.len);
    if (e == HPE_OK) {
        eng_buf_reset(&c->in);
        return true;
    }
    if (e != HPE_PAUSED) {
        (void)fprintf(stderr, "th_mockhttp: bad request: %s\n",
                      llhttp_get_error_reason(&c->parser));
        return false;
    }
    eng_buf_consume(&c->in, (size_t)(llhttp_get_error_pos(&c->parser) - c->in.ptr));
    conn_dispatch(m, c);
    return true;
}

static bool conn_read(th_mock *m, struct mconn *c)
{
    char tmp[16384];
    ssize_t n = recv(c->fd, tmp, sizeof tmp, 0);
    if (n == 0)
        return false;
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    buf_add(&c->in, tmp, (size_t)n);
    return conn_parse(m, c);
}

/* MC_WRITING and due: writes up to the next mark or cut-off; false when it must close. */
static bool conn_write(th_mock *m, struct mconn *c)
{
    if (c->drop)
        return false;
    size_t end = c->out.len;
    if (c->mark < c->nmarks && c->marks[c->mark] < end)
        end = c->marks[c->mark];
    if (c->limit < end)
        end = c->limit;
    c->blocked = false;
    while (c->off < end) {
        ssize_t n = send(c->fd, c->out.ptr + c->off, end - c->off, MSG_NOSIGNAL);
        if (n < 0) {
            c->blocked = errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
            return c->blocked;
        }
        c->off += (size_t)n;
    }
    if (c->off >= c->limit)
        return false;
    if (c->off < c->out.len) {
        c->mark++;
        c->due_ms = eng_clock_mono_ms() + c->pause_ms;
        return true;
    }
    m->pending--;
    c->st = MC_READING;
    if (c->close_after_reply)
        return false;
    llhttp_resume(&c->parser);
    return conn_parse(m, c); /* a pipelined request may be buffered already */
}

/* Runs c's answer as far as it may go now; false when c must close. */
static bool conn_due(th_mock *m, struct mconn *c, long long now)
{
    while (c->st == MC_WRITING && !c->blocked && c->due_ms <= now)
        if (!conn_write(m, c))
            return false;
    return true;
}

static void conn_event(th_mock *m, struct mconn *c, uint32_t ev, long long now)
{
    bool keep = true;
    if (c->st == MC_READING && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        keep = conn_read(m, c);
    else if (c->st == MC_WRITING && c->blocked && (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)))
        keep = conn_write(m, c);
    else if (ev & (EPOLLHUP | EPOLLERR))
        keep = false; /* the peer is gone while its answer waits: nothing can be delivered */
    keep = keep && conn_due(m, c, now);
    if (keep)
        conn_arm(m, c);
    else
        conn_close(m, c);
}

static void *mock_main(void *arg)
{
    th_mock *m = arg;
    enum { MAX_EVENTS = 256 };
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int timeout = -1;
        if (m->nheap > 0) {
            long long wait = m->heap[0]->due_ms - eng_clock_mono_ms();
            timeout = wait < 0 ? 0 : wait > INT32_MAX ? INT32_MAX : (int)wait;
        }
        int n = epoll_wait(m->ep, evs, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR)
            mock_die("epoll_wait");
        long long now = eng_clock_mono_ms();
        bool stop = false, accept_now = false;
        for (int k = 0; k < n; k++) {
            if (evs[k].data.ptr == &m->wake)
                stop = true;
            else if (evs[k].data.ptr == &m->lfd)
                accept_now = true;
            else
                conn_event(m, evs[k].data.ptr, evs[k].events, now);
        }
        if (stop)
            break;
        while (m->nheap > 0 && m->heap[0]->due_ms <= now) {
            struct mconn *c = m->heap[0];
            heap_remove(m, c);
            conn_event(m, c, 0, now);
        }
        if (accept_now)
            mock_accept(m);
    }
    return NULL;
}

static bool listen_any;

void th_mock_listen_any(void)
{
    listen_any = true;
}

th_mock *th_mock_start(th_mock_handler *handler, void *arg)
{
    th_mock *m = eng_xcalloc(1, sizeof *m);
    m->handler = handler;
    m->arg = arg;
    llhttp_settings_init(&m->settings);
    m->settings.on_message_begin = on_begin;
    m->settings.on_url = on_url;
    m->settings.on_header_field = on_field;
    m->settings.on_header_field_complete = on_field_done;
    m->settings.on_header_value = on_value;
    m->settings.on_header_value_complete = on_value_done;
    m->settings.on_headers_complete = on_headers_done;
    m->settings.on_body = on_body;
    m->settings.on_message_complete = on_complete;

    m->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (m->lfd < 0)
        mock_die("socket");
    int one = 1;
    setsockopt(m->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(listen_any ? INADDR_ANY : INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (bind(m->lfd, (struct sockaddr *)&sa, sizeof sa) < 0)
        mock_die("bind");
    /* Large enough for a burst of thousands of connects (the kernel caps it at somaxconn). */
    if (listen(m->lfd, 8192) < 0)
        mock_die("listen");
    if (getsockname(m->lfd, (struct sockaddr *)&sa, &len) < 0)
        mock_die("getsockname");
    m->port = ntohs(sa.sin_port);
    snprintf(m->url, sizeof m->url, "http://127.0.0.1:%d", m->port);
    if (pipe2(m->wake, O_CLOEXEC) < 0)
        mock_die("pipe2");
    m->ep = epoll_create1(EPOLL_CLOEXEC);
    if (m->ep < 0)
        mock_die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &m->wake};
    if (epoll_ctl(m->ep, EPOLL_CTL_ADD, m->wake[0], &ev) < 0)
        mock_die("epoll_ctl");
    ev = (struct epoll_event){.events = EPOLLIN, .data.ptr = &m->lfd};
    if (epoll_ctl(m->ep, EPOLL_CTL_ADD, m->lfd, &ev) < 0)
        mock_die("epoll_ctl");
    errno = pthread_create(&m->thread, NULL, mock_main, m);
    if (errno)
        mock_die("pthread_create");
    return m;
}

void th_mock_stop(th_mock *m)
{
    if (!m)
        return;
    if (write(m->wake[1], "x", 1) != 1)
        mock_die("write");
    pthread_join(m->thread, NULL);
    while (m->nconns)
        conn_close(m, m->conns[m->nconns - 1]);
    free(m->conns);
    free(m->heap);
    close(m->ep);
    close(m->lfd);
    close(m->wake[0]);
    close(m->wake[1]);
    free(m);
}

int th_mock_port(const th_mock *m)
{
    return m->port;
}

const char *th_mock_url(const th_mock *m)
{
    return m->url;
}

unsigned long th_mock_requests(const th_mock *m)
{
    return atomic_load(&((th_mock *)m)->requests);
}

unsigned long th_mock_connections(const th_mock *m)
{
    return atomic_load(&((th_mock *)m)->connections);
}

unsigned long th_mock_peak_pending(const th_mock *m)
{
    return atomic_load(&((th_mock *)m)->peak_pending);
}
