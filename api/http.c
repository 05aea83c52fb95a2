/* api/http.c: listening socket, connections and request parsing of the HTTP/1.1 server (see
 * http.h). Responses are formatted by http_req.c.
 *
 * Each connection is a state machine (enum conn_state) driven by conn_drive() only, from the
 * connection's own watchers or from the server's ev_prepare when a response advanced elsewhere (an
 * async handler). The handler is called from the driver, which re-reads the state afterwards.
 * Connections are never freed on the stack that closed them: closing moves them to srv->dead and
 * the prepare watcher frees them before the loop blocks (Redis freeClientAsync). */
#include "api/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api/http_int.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/metrics.h"

#define IBUF_START (16 * 1024)
#define IBUF_MAX (64 * 1024) /* unparsed input held while a request is handled: backpressure */
#define LINGER_S 2.0
#define ACCEPT_BATCH 64

static void conn_drive(api_conn *c);
static void conn_close(api_conn *c, const char *why);

/* ---- parser callbacks: they fill c->req and refuse oversize input ---- */

static int p_refuse(llhttp_t *p, int status, const char *why)
{
    api_conn *c = p->data;
    c->err_status = status;
    llhttp_set_error_reason(p, why);
    return HPE_USER;
}

static int p_message_begin(llhttp_t *p)
{
    api_conn *c = p->data;
    api_http__req_reset(&c->req);
    c->req.st = REQ_READING;
    c->st = CONN_HEAD;
    c->tmode = T_NONE; /* a new request gets a fresh header deadline */
    if (c->nreq) /* the first one's deadline runs from the connection's start */
        c->req_t0 = ev_now(c->srv->loop);
    c->trailer_bytes = 0;
    return 0;
}

static int p_token(llhttp_t *p, const char *at, size_t len)
{
    api_conn *c = p->data;
    api_req *r = &c->req;
    if (c->st == CONN_BODY) { /* chunked trailers: dropped, but they count against the cap */
        c->trailer_bytes += len;
        if (c->trailer_bytes > c->srv->opts.max_header)
            return p_refuse(p, 431, "request trailers too large");
        return 0;
    }
    if (!r->in_token) {
        r->mark = r->raw.len;
        r->in_token = true;
    }
    if (eng_buf_append(&r->raw, at, len) != ENG_OK)
        return p_refuse(p, 431, "request head too large");
    return 0;
}

/* Ends the current token with a NUL; returns its offset in raw, or (size_t)-1 when over cap. */
static size_t p_token_end(llhttp_t *p)
{
    api_conn *c = p->data;
    api_req *r = &c->req;
    if (!r->in_token)
        r->mark = r->raw.len;
    r->in_token = false;
    if (eng_buf_append(&r->raw, "", 1) != ENG_OK)
        return (size_t)-1;
    return r->mark;
}

static int p_url_complete(llhttp_t *p)
{
    if (p_token_end(p) == (size_t)-1)
        return p_refuse(p, 431, "request head too large");
    return 0;
}

static int p_field_complete(llhttp_t *p)
{
    api_conn *c = p->data;
    api_req *r = &c->req;
    if (c->st == CONN_BODY)
        return 0;
    size_t off = p_token_end(p);
    if (off == (size_t)-1)
        return p_refuse(p, 431, "request head too large");
    if (r->nhdrs == r->hcap) {
        r->hcap = r->hcap ? r->hcap * 2 : 16;
        r->hdrs = eng_xrealloc(r->hdrs, r->hcap * 2 * sizeof *r->hdrs);
    }
    r->hdrs[2 * r->nhdrs] = off;
    r->hdrs[2 * r->nhdrs + 1] = off + strlen(r->raw.ptr + off); /* "" until the value ends */
    r->nhdrs++;
    return 0;
}

static int p_value_complete(llhttp_t *p)
{
    api_conn *c = p->data;
    api_req *r = &c->req;
    if (c->st == CONN_BODY)
        return 0;
    size_t off = p_token_end(p);
    if (off == (size_t)-1)
        return p_refuse(p, 431, "request head too large");
    if (r->nhdrs)
        r->hdrs[2 * r->nhdrs - 1] = off;
    return 0;
}

static int p_headers_complete(llhttp_t *p)
{
    api_conn *c = p->data;
    api_req *r = &c->req;
    size_t max = c->srv->opts.max_body;
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > max)
        return p_refuse(p, 413, "request body too large");
    c->http10 = p->http_major == 1 && p->http_minor == 0;
    r->method = llhttp_method_name((llhttp_method_t)p->method);
    r->head_only = p->method == HTTP_HEAD;
    bool has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length);
    const char *expect = api_req_header(r, "Expect");
    if (expect && has_body && !c->http10 && strcasecmp(expect, "100-continue") == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        eng_rc rc = eng_buf_append(&c->out, cont, sizeof cont - 1);
        (void)rc; /* out is uncapped */
    }
    c->st = CONN_BODY;
    c->tmode = T_NONE;
    return 0;
}

static int p_body(llhttp_t *p, const char *at, size_t len)
{
    api_conn *c = p->data;
    if (eng_buf_append(&c->req.body, at, len) != ENG_OK)
        return p_refuse(p, 413, "request body too large");
    return 0;
}

static int p_message_complete(llhttp_t *p)
{
    api_conn *c = p->data;
    c->keepalive = llhttp_should_keep_alive(p) && !p->upgrade;
    c->req.st = REQ_COMPLETE;
    return HPE_PAUSED; /* one request at a time: the rest stays buffered until we answered */
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = p_message_begin,
    .on_url = p_token,
    .on_url_complete = p_url_complete,
    .on_header_field = p_token,
    .on_header_field_complete = p_field_complete,
    .on_header_value = p_token,
    .on_header_value_complete = p_value_complete,
    .on_headers_complete = p_headers_complete,
    .on_body = p_body,
    .on_message_complete = p_message_complete,
};

/* ---- the connection state machine ---- */

static void srv_wake(api_http *s)
{
    if (!ev_is_active(&s->prep))
        ev_prepare_start(s->loop, &s->prep);
}

void api_http__conn_kick(api_conn *c)
{
    if (c->in_drive || c->kicked || c->st == CONN_CLOSED)
        return;
    api_http *s = c->srv;
    c->kicked = true;
    c->kick_next = NULL;
    if (s->kick_tail)
        s->kick_tail->kick_next = c;
    else
        s->kick_head = c;
    s->kick_tail = c;
    srv_wake(s);
}

static void list_unlink(api_conn **head, api_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void list_push(api_conn **head, api_conn *c)
{
    c->prev = NULL;
    c->next = *head;
    if (*head)
        (*head)->prev = c;
    *head = c;
}

/* Closes the socket now and frees later. A request the handler still owes a response gets its
 * abort callback, as the last thing done here. */
static void conn_close(api_conn *c, const char *why)
{
    if (c->st == CONN_CLOSED)
        return;
    api_http *s = c->srv;
    log_debug("http connection closed", LOG_S("peer", c->peer), LOG_S("reason", why),
              LOG_I("requests", c->nreq));
    ev_io_stop(s->loop, &c->rio);
    ev_io_stop(s->loop, &c->wio);
    ev_timer_stop(s->loop, &c->timer);
    close(c->fd);
    c->fd = -1;
    c->st = CONN_CLOSED;
    list_unlink(&s->live, c);
    list_push(&s->dead, c);
    s->nconns--;
    api_connlimit_release(s->opts.limit, &c->lkey);
    srv_wake(s);
    if (s->accept_full && !s->shutting && s->lfd >= 0) {
        s->accept_full = false;
        ev_io_start(s->loop, &s->accept_io);
    }
    api_req *r = &c->req;
    if (r->st == REQ_DISPATCHED || r->st == REQ_STREAMING) {
        r->st = REQ_ABORTED;
        api_http__req_log(r, true);
        if (r->abort_cb)
            r->abort_cb(r->abort_arg);
    }
}

static void conn_free(api_conn *c)
{
    eng_buf_deinit(&c->out);
    eng_buf_deinit(&c->req.raw);
    eng_buf_deinit(&c->req.body);
    eng_buf_deinit(&c->req.dec);
    free(c->req.hdrs);
    free(c->req.qoffs);
    free(c->ibuf);
    free(c);
}

static bool out_pending(const api_conn *c)
{
    return c->out_off < c->out.len;
}

/* Writes what the socket takes. Returns false when the connection was closed. */
static bool conn_flush(api_conn *c)
{
    bool progress = false;
    while (out_pending(c)) {
        ssize_t n = send(c->fd, c->out.ptr + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            progress = true;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            conn_close(c, n < 0 ? strerror(errno) : "send returned 0");
            return false;
        }
    }
    if (progress && c->tmode == T_WRITE)
        ev_timer_again(c->srv->loop, &c->timer);
    if (!out_pending(c)) {
        eng_buf_reset(&c->out);
        c->out_off = 0;
    } else if (c->out_off >= IBUF_MAX) {
        eng_buf_consume(&c->out, c->out_off);
        c->out_off = 0;
    }
    return true;
}

static void conn_read(api_conn *c)
{
    if (c->st == CONN_LINGER) {
        char junk[4096];
        ssize_t n = recv(c->fd, junk, sizeof junk, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            conn_close(c, "closed after last response");
        return;
    }
    if (c->ioff == c->ilen)
        c->ioff = c->ilen = 0;
    if (c->ilen == c->icap && c->ioff) {
        memmove(c->ibuf, c->ibuf + c->ioff, c->ilen - c->ioff);
        c->ilen -= c->ioff;
        c->ioff = 0;
    }
    if (c->ilen == c->icap) {
        if (c->icap >= IBUF_MAX)
            return; /* conn_watch stops reading until the buffered requests are handled */
        c->icap = c->icap ? c->icap * 2 : IBUF_START;
        c->ibuf = eng_xrealloc(c->ibuf, c->icap);
    }
    ssize_t n = recv(c->fd, c->ibuf + c->ilen, c->icap - c->ilen, 0);
    if (n > 0) {
        c->ilen += (size_t)n;
    } else if (n == 0) {
        c->rd_eof = true; /* maybe only half-closed: buffered requests still get answers */
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        conn_close(c, strerror(errno));
    }
}

static void conn_dispatch(api_conn *c)
{
    api_req *r = &c->req;
    c->st = CONN_HANDLER;
    c->nreq++;
    if (r->st != REQ_COMPLETE) { /* paused without a complete message: upgrade/CONNECT oddities */
        api_http__conn_error(c, 400, "invalid_request", "unsupported request");
        return;
    }
    r->st = REQ_DISPATCHED;
    api_http__req_start(r);
    const char *why = api_http__req_finish(r);
    if (why) {
        c->keepalive = false;
        api_req_respond_error(r, 400, "invalid_request", why, NULL);
        return;
    }
    c->srv->handler(c->srv->arg, r); /* last: the driver re-reads the state after this */
}

static void conn_parse_error(api_conn *c, llhttp_errno_t e)
{
    c->ioff = c->ilen = 0;
    if (c->err_status == 413) {
        char msg[96];
        snprintf(msg, sizeof msg, "request body exceeds %zu bytes", c->srv->opts.max_body);
        api_http__conn_error(c, 413, "payload_too_large", msg);
    } else if (c->err_status == 431) {
        char msg[96];
        snprintf(msg, sizeof msg, "request head exceeds %zu bytes", c->srv->opts.max_header);
        api_http__conn_error(c, 431, "headers_too_large", msg);
    } else {
        char msg[128];
        snprintf(msg, sizeof msg, "malformed request (%s)", llhttp_errno_name(e));
        api_http__conn_error(c, 400, "invalid_request", msg);
    }
}

/* Feeds buffered input to the parser: either all of it is consumed, or a request completed and
 * was dispatched, or the input was refused and an error response queued. */
static void conn_parse(api_conn *c)
{
    const char *p = c->ibuf + c->ioff;
    llhttp_errno_t e = llhttp_execute(&c->parser, p, c->ilen - c->ioff);
    if (e == HPE_OK) {
        c->ioff = c->ilen = 0;
    } else if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
        c->ioff += (size_t)(llhttp_get_error_pos(&c->parser) - p);
        conn_dispatch(c);
    } else {
        conn_parse_error(c, e);
    }
}

/* The response is written: close, or go on with the next request. Returns true to continue. */
static bool conn_next(api_conn *c)
{
    if (!c->resp_keep || !c->keepalive || c->srv->shutting) {
        if (c->rd_eof) {
            conn_close(c, "done");
            return false;
        }
        shutdown(c->fd, SHUT_WR);
        c->st = CONN_LINGER;
        c->ioff = c->ilen = 0;
        return false;
    }
    c->req.st = REQ_NONE;
    c->st = CONN_IDLE;
    llhttp_resume(&c->parser);
    return true;
}

/* One transition; returns true when the driver should look again. */
static bool conn_step(api_conn *c)
{
    switch (c->st) {
    case CONN_IDLE:
    case CONN_HEAD:
    case CONN_BODY:
        if (c->ioff < c->ilen) {
            conn_parse(c);
            return true;
        }
        if (c->rd_eof)
            conn_close(c, c->st == CONN_IDLE ? "peer closed" : "peer closed mid-request");
        return false;
    case CONN_HANDLER:
        if (c->req.st != REQ_DONE)
            return false;
        c->st = CONN_WRITING;
        return true;
    case CONN_WRITING:
        return !out_pending(c) && conn_next(c);
    case CONN_LINGER:
        if (c->rd_eof)
            conn_close(c, "closed after last response");
        return false;
    case CONN_CLOSED:
        return false;
    }
    return false;
}

static void conn_set_io(api_conn *c, ev_io *w, bool on)
{
    if (on && !ev_is_active(w))
        ev_io_start(c->srv->loop, w);
    else if (!on && ev_is_active(w))
        ev_io_stop(c->srv->loop, w);
}

/* Watchers and the timer follow the state. */
static void conn_watch(api_conn *c)
{
    const api_http_opts *o = &c->srv->opts;
    bool want_w = out_pending(c);
    bool want_r = !c->rd_eof;
    enum conn_timer mode = T_NONE;
    double t = 0;
    switch (c->st) {
    case CONN_IDLE: /* a fresh connection must send its first head as fast as any head */
        mode = c->nreq ? T_IDLE : T_HEAD;
        t = c->nreq ? o->idle_timeout_s : o->header_timeout_s;
        break;
    case CONN_HEAD:
        mode = T_HEAD;
        t = o->header_timeout_s;
        break;
    case CONN_BODY: /* a trickled body must not extend it: a deadline, not an idle timer */
        mode = T_BODY;
        t = c->req_t0 + o->request_timeout_s - ev_now(c->srv->loop);
        if (t < 0.001)
            t = 0.001;
        break;
    case CONN_HANDLER:
    case CONN_WRITING:
        /* keep reading (to see resets and buffer pipelined requests) while there is room */
        want_r = want_r && (c->ilen < IBUF_MAX || c->ioff > 0);
        if (want_w) {
            mode = T_WRITE;
            t = o->idle_timeout_s;
        }
        break;
    case CONN_LINGER:
        mode = T_LINGER;
        t = LINGER_S;
        want_r = true;
        break;
    case CONN_CLOSED:
        return;
    }
    conn_set_io(c, &c->rio, want_r);
    conn_set_io(c, &c->wio, want_w);
    /* T_NONE is also what the parser sets to restart a deadline, with the old timer still
     * running: stop it whatever tmode says, or it cuts off a request its handler still owes */
    if (mode == c->tmode && mode != T_NONE)
        return;
    c->tmode = mode;
    if (mode == T_NONE) {
        ev_timer_stop(c->srv->loop, &c->timer);
    } else {
        c->timer.repeat = t;
        ev_timer_again(c->srv->loop, &c->timer);
    }
}

static void conn_drive(api_conn *c)
{
    c->in_drive++;
    while (c->st != CONN_CLOSED) {
        if (out_pending(c) && !conn_flush(c))
            break;
        if (!conn_step(c))
            break;
    }
    conn_watch(c);
    c->in_drive--;
}

static void conn_on_read(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop, (void)revents;
    api_conn *c = ENG_CONTAINER_OF(w, api_conn, rio);
    conn_read(c);
    conn_drive(c);
}

static void conn_on_write(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop, (void)revents;
    conn_drive(ENG_CONTAINER_OF(w, api_conn, wio));
}

static void conn_on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    api_conn *c = ENG_CONTAINER_OF(w, api_conn, timer);
    static const char *const why[] = {
        [T_NONE] = "timer", [T_IDLE] = "idle timeout", [T_HEAD] = "header timeout",
        [T_BODY] = "body timeout", [T_WRITE] = "write stalled", [T_LINGER] = "linger done",
    };
    if (c->tmode == T_HEAD || c->tmode == T_BODY || c->tmode == T_WRITE)
        log_info("http connection timed out", LOG_S("peer", c->peer),
                 LOG_S("reason", why[c->tmode]));
    conn_close(c, why[c->tmode]);
}

static api_conn *conn_new(api_http *s, int fd, const char *peer)
{
    api_conn *c = eng_xcalloc(1, sizeof *c);
    c->fd = fd;
    c->srv = s;
    c->req_t0 = ev_now(s->loop);
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails on socketpairs */
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    eng_buf_init(&c->out, 0);
    c->req.conn = c;
    eng_buf_init(&c->req.raw, s->opts.max_header);
    eng_buf_init(&c->req.body, s->opts.max_body);
    eng_buf_init(&c->req.dec, 0);
    ev_io_init(&c->rio, conn_on_read, fd, EV_READ);
    ev_io_init(&c->wio, conn_on_write, fd, EV_WRITE);
    ev_init(&c->timer, conn_on_timer);
    c->st = CONN_IDLE;
    list_push(&s->live, c);
    s->nconns++;
    log_debug("http connection opened", LOG_S("peer", c->peer));
    conn_watch(c);
    return c;
}

/* A client address over its share: a short answer it can act on, then the descriptor is free
 * again at once (the kernel takes the bytes; a client that does not read them loses nothing). */
static void refuse_per_client(int fd, const char *peer)
{
    static const char answer[] =
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        "Connection: close\r\nContent-Length: 91\r\n\r\n"
        "{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many connections from "
        "this client\"}}";
    eng_metrics_http_refused("per_client"); /* counted before the client can see the answer */
    ssize_t n = send(fd, answer, sizeof answer - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)n;
    close(fd);
    log_debug("http connection refused", LOG_S("peer", peer), LOG_S("reason", "per_client"));
}

/* ---- the server ---- */

static void fmt_peer(const struct sockaddr_storage *ss, char *out, size_t n)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        snprintf(out, n, "%s:%u", host, ntohs(a->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        snprintf(out, n, "[%s]:%u", host, ntohs(a->sin6_port));
    } else {
        snprintf(out, n, "local");
    }
}

static void srv_on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    api_http *s = ENG_CONTAINER_OF(w, api_http, accept_io);
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        if (s->nconns >= s->opts.max_conns) {
            ev_io_stop(loop, w);
            s->accept_full = true;
            return;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(s->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            /* out of descriptors or buffers: back off instead of spinning on a ready socket */
            log_warn("http accept failed", LOG_S("err", strerror(errno)));
            if (errno == EMFILE || errno == ENFILE)
                eng_metrics_http_refused("descriptors");
            ev_io_stop(loop, w);
            ev_timer_set(&s->accept_retry, 0.1, 0.);
            ev_timer_start(loop, &s->accept_retry);
            return;
        }
        char peer[64];
        fmt_peer(&ss, peer, sizeof peer);
        api_connlimit_key key = {0};
        if (s->opts.limit && !api_connlimit_take(s->opts.limit, (struct sockaddr *)&ss, &key)) {
            refuse_per_client(fd, peer);
            continue;
        }
        conn_new(s, fd, peer)->lkey = key;
    }
}

static void srv_on_accept_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    api_http *s = ENG_CONTAINER_OF(w, api_http, accept_retry);
    if (!s->shutting && s->lfd >= 0)
        ev_io_start(loop, &s->accept_io);
}

static void srv_on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    api_http *s = ENG_CONTAINER_OF(w, api_http, prep);
    while (s->kick_head) {
        api_conn *c = s->kick_head;
        s->kick_head = c->kick_next;
        if (!s->kick_head)
            s->kick_tail = NULL;
        c->kicked = false;
        if (c->st != CONN_CLOSED)
            conn_drive(c);
    }
    while (s->dead) {
        api_conn *c = s->dead;
        list_unlink(&s->dead, c);
        conn_free(c);
    }
    ev_prepare_stop(loop, w);
    if (s->shutting && s->nconns == 0 && s->done) {
        void (*done)(void *) = s->done;
        s->done = NULL;
        done(s->done_arg); /* last: it may free s */
    }
}

static void srv_stop_listening(api_http *s)
{
    ev_io_stop(s->loop, &s->accept_io);
    ev_timer_stop(s->loop, &s->accept_retry);
    if (s->lfd >= 0)
        close(s->lfd);
    s->lfd = -1;
}

/* "host:port", "[v6]:port" or ":port" into a bound, listening socket. */
static int srv_listen(api_http *s, const char *spec, eng_err *err)
{
    char host[256];
    const char *port;
    if (spec[0] == '[') {
        const char *end = strchr(spec, ']');
        if (!end || end[1] != ':' || (size_t)(end - spec - 1) >= sizeof host)
            return eng_err_field(err, ENG_EINVAL, "/listen", "expected [address]:port"), -1;
        snprintf(host, sizeof host, "%.*s", (int)(end - spec - 1), spec + 1);
        port = end + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof host)
            return eng_err_field(err, ENG_EINVAL, "/listen", "expected address:port"), -1;
        snprintf(host, sizeof host, "%.*s", (int)(colon - spec), spec);
        port = colon + 1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
    if (gai != 0)
        return eng_err_field(err, ENG_EINVAL, "/listen", "cannot resolve %s: %s", spec,
                             gai_strerror(gai)),
               -1;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        (s->opts.reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
        eng_err_set(err, ENG_ESYS, "cannot listen on %s: %s", spec, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

api_http *api_http_new(struct ev_loop *loop, const api_http_opts *opts, api_handler *h, void *arg,
                       eng_err *err)
{
    api_http *s = eng_xcalloc(1, sizeof *s);
    if (opts)
        s->opts = *opts;
    if (!s->opts.max_body)
        s->opts.max_body = 1024 * 1024;
    if (!s->opts.max_header)
        s->opts.max_header = 16 * 1024;
    if (s->opts.header_timeout_s <= 0)
        s->opts.header_timeout_s = 10;
    if (s->opts.idle_timeout_s <= 0)
        s->opts.idle_timeout_s = 60;
    if (s->opts.request_timeout_s <= 0)
        s->opts.request_timeout_s = 30;
    if (s->opts.max_conns <= 0)
        s->opts.max_conns = 10000;
    s->opts.listen = NULL; /* borrowed from the caller: only used here */
    s->loop = loop;
    s->handler = h;
    s->arg = arg;
    s->lfd = -1;
    ev_prepare_init(&s->prep, srv_on_prepare);
    ev_init(&s->accept_retry, srv_on_accept_retry);
    if (opts && opts->listen) {
        s->lfd = srv_listen(s, opts->listen, err);
        if (s->lfd < 0) {
            free(s);
            return NULL;
        }
        ev_io_init(&s->accept_io, srv_on_accept, s->lfd, EV_READ);
        ev_io_start(loop, &s->accept_io);
        log_info("http listening", LOG_S("listen", opts->listen), LOG_I("port", s->port));
    }
    return s;
}

int api_http_port(const api_http *s)
{
    return s->port;
}

int api_http_conn_count(const api_http *s)
{
    return s->nconns;
}

eng_rc api_http_adopt_fd(api_http *s, int fd, const char *peer)
{
    if (s->shutting || s->nconns >= s->opts.max_conns) {
        close(fd);
        return s->shutting ? ENG_ECANCELED : ENG_ETOOBIG;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        close(fd);
        return ENG_ESYS;
    }
    conn_new(s, fd, peer ? peer : "adopted");
    return ENG_OK;
}

void api_http_shutdown(api_http *s, void (*done)(void *arg), void *arg)
{
    s->shutting = true;
    s->done = done;
    s->done_arg = arg;
    srv_stop_listening(s);
    for (api_conn *c = s->live, *next; c; c = next) {
        next = c->next;
        if (c->st == CONN_IDLE && c->ioff == c->ilen && !out_pending(c))
            conn_close(c, "server shutting down");
        else if (c->st == CONN_HANDLER || c->st == CONN_WRITING)
            api_http__conn_kick(c); /* a finished response must now close after writing */
    }
    srv_wake(s); /* reports done from the loop even when nothing was open */
}

void api_http_free(api_http *s)
{
    if (!s)
        return;
    srv_stop_listening(s);
    s->shutting = true;
    s->done = NULL;
    while (s->live)
        conn_close(s->live, "server freed");
    s->kick_head = s->kick_tail = NULL;
    while (s->dead) {
        api_conn *c = s->dead;
        list_unlink(&s->dead, c);
        conn_free(c);
    }
    ev_prepare_stop(s->loop, &s->prep);
    free(s);
}
