/* engine/httpc.c: libcurl multi on a libev loop (see httpc.h and docs/internals/event-loop.md).
 *
 * curl tells us which sockets to watch (on_socket) and when to wake it up (on_timer_change); we
 * answer with curl_multi_socket_action from the ev_io and ev_timer callbacks, then drain finished
 * transfers. Invariants:
 * - curl_multi_* is never called from inside a curl callback (on_socket, on_timer_change,
 *   on_write, on_header): they only record. User code runs only from httpc_drain, after
 *   curl_multi_socket_action has returned, so it may add and remove handles freely.
 * - A call is freed either by its own completion (after its callback returns) or by cancel, which
 *   is a no-op while its callback runs. Nothing else keeps call pointers across user code, so a
 *   cancelled call can be freed at once: curl_multi_remove_handle also drops its pending DONE
 *   message, and httpc_drain reads messages one at a time.
 * - A socket watcher may be freed inside curl_multi_socket_action (CURL_POLL_REMOVE), even the
 *   one whose callback is running, so the ev_io callback never touches its watcher afterwards.
 * - eng_httpc_free from inside a callback only marks the client; httpc_drain destroys it once
 *   the callback has returned.
 *
 * Shards: curl 7.88 looks for a reusable connection by walking every connection to the host, and
 * curl_multi_remove_handle walks the whole connection cache, so one multi handle costs O(n) per
 * call with n connections open: O(n^2) for a burst of thousands of HTTP/1.1 calls (one connection
 * each). Calls are therefore spread over several multi handles (shards), each with its own
 * connection cache, created as the calls in flight grow past HTTPC_SHARD_CALLS per shard. A
 * client that never holds more calls than that uses one multi handle, as before.
 *
 * HTTP/2: curl 7.88 puts at most 100 streams on a connection (CURLMOPT_MAX_CONCURRENT_STREAMS),
 * and once a connection is full every further call of a burst opens a connection of its own, even
 * with CURLOPT_PIPEWAIT (a burst of 200 calls to nginx opened 101 connections; 200 at
 * once over 2 connections now, tests/unit/test_httpc_reuse.c). A shard holds at
 * most 100 calls, so all of a shard's calls to one HTTP/2 host share its one connection, and a
 * burst of n calls opens about n / 100 connections, each kept for the next bursts. */
#include "engine/httpc.h"

#include <arpa/inet.h>
#include <assert.h>
#include <curl/curl.h>
#include <ev.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "engine/buf.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/netaddr.h"

/* Connection cache floor. curl counts busy and idle connections against CURLMOPT_MAXCONNECTS and
 * closes a connection on its return once the cache is over the cap, so the cap is raised to stay
 * above the peak number of calls in flight (one HTTP/1.1 connection each); see httpc_grow_cache. */
#define HTTPC_MIN_CONNECTS 64L
/* Response headers of one call: curl caps a single header at 100 KiB; this caps their total. */
#define HTTPC_MAX_HEADER_BYTES ((size_t)256 << 10)
/* Calls in flight per shard before another shard is opened: curl's streams per HTTP/2
 * connection (see the file comment). */
#define HTTPC_SHARD_CALLS 100
/* curl's receive buffer per easy handle (its default is 16 KiB, allocated up front): thousands of
 * calls in flight would hold tens of MiB of it. Larger bodies only take more reads. */
#define HTTPC_RECV_BUFFER 4096L

enum call_state {
    CALL_RUNNING, /* added to the multi handle and linked in h->calls; counted in flight */
    CALL_CALLING, /* removed from the multi handle; its callback is running */
};

struct httpc_shard {               /* one multi handle and its connection cache */
    eng_httpc *h;
    CURLM *multi;
    ev_timer timer;                /* curl's single timeout (CURLMOPT_TIMERFUNCTION) */
    size_t in_flight;              /* CALL_RUNNING calls added to multi */
    long max_connects;             /* current CURLMOPT_MAXCONNECTS */
};

struct eng_http_call {
    eng_httpc *h;
    struct httpc_shard *sh;        /* the multi handle running it */
    eng_http_call *prev, *next;    /* h->calls while CALL_RUNNING */
    enum call_state st;
    CURL *easy;                    /* owned; CURLOPT_PRIVATE points back here */
    struct curl_slist *req_headers; /* owned; must outlive the transfer */
    eng_http_cb *cb;
    void *arg;
    size_t max_response;           /* body cap, for the error message */
    bool too_big;                  /* on_write or on_header refused data over a cap */
    char refused[80];              /* the last address refused by public_only, "" if none */
    bool public_only;              /* the request's: refuse non-public addresses */
    bool reached_send;             /* curl got as far as sending the request (prereq ran) */
    eng_buf body;                  /* capped at max_response */
    eng_buf headers;               /* final response's headers as "name\0value\0" pairs */
    char errbuf[CURL_ERROR_SIZE];  /* curl's text for the failure, if any */
};

struct httpc_sock {                /* one per socket curl asked us to watch */
    ev_io io;                      /* container_of target */
    struct httpc_shard *sh;        /* whose socket it is */
    struct httpc_sock *prev, *next; /* h->socks, so that eng_httpc_free can release all */
};

struct eng_httpc {
    struct ev_loop *loop;          /* borrowed */
    struct httpc_shard **shards;   /* at least one; never fewer once opened */
    size_t nshards;
    eng_http_call *calls;          /* CALL_RUNNING calls */
    struct httpc_sock *socks;
    size_t in_flight;              /* length of calls */
    int dispatching;               /* > 0 while httpc_drain runs user callbacks */
    bool closing;                  /* eng_httpc_free was called; destroy when dispatching == 0 */
};

static bool httpc_have_http2;
/* FLOWD_CA_BUNDLE: PEM certificates to trust instead of the system's (a private CA in front of a
 * self-hosted model, a test provider's self-signed certificate). Read once at global init. */
static char *httpc_ca_bundle;

static void setopt_check(CURLcode rc, const char *opt)
{
    if (rc != CURLE_OK)
        log_error("curl option refused", LOG_S("option", opt),
                  LOG_S("error", curl_easy_strerror(rc)));
}
#define EASY_SETOPT(e, opt, val) setopt_check(curl_easy_setopt((e), (opt), (val)), #opt)

static void msetopt_check(CURLMcode rc, const char *opt)
{
    if (rc != CURLM_OK)
        log_error("curl multi option refused", LOG_S("option", opt),
                  LOG_S("error", curl_multi_strerror(rc)));
}
#define MULTI_SETOPT(m, opt, val) msetopt_check(curl_multi_setopt((m), (opt), (val)), #opt)

void eng_httpc_global_init(void)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("curl_global_init failed");
        abort();
    }
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    httpc_have_http2 = v && (v->features & CURL_VERSION_HTTP2);
    const char *ca = getenv("FLOWD_CA_BUNDLE");
    free(httpc_ca_bundle);
    httpc_ca_bundle = ca && *ca ? eng_xstrdup(ca) : NULL;
}

void eng_httpc_global_cleanup(void)
{
    free(httpc_ca_bundle);
    httpc_ca_bundle = NULL;
    curl_global_cleanup();
}

/* ---- curl callbacks: record only, never call curl_multi_* ---- */

static void on_sock_io(struct ev_loop *loop, ev_io *w, int revents);

static int on_socket(CURL *easy, curl_socket_t s, int what, void *shp, void *sp)
{
    (void)easy;
    struct httpc_shard *sh = shp;
    eng_httpc *h = sh->h;
    struct httpc_sock *k = sp;
    if (what == CURL_POLL_REMOVE) {
        if (k) {
            ev_io_stop(h->loop, &k->io);
            if (k->prev)
                k->prev->next = k->next;
            else
                h->socks = k->next;
            if (k->next)
                k->next->prev = k->prev;
            free(k);
            /* curl_multi_assign is not a multi call into the state machine: it only stores the
             * pointer in curl's socket hash, and the docs allow it from the socket callback. */
            curl_multi_assign(sh->multi, s, NULL);
        }
        return 0;
    }
    if (!k) {
        /* May be a socket we never saw a transfer for (resolver, happy eyeballs): watch it all
         * the same. */
        k = eng_xcalloc(1, sizeof *k);
        k->sh = sh;
        ev_init(&k->io, on_sock_io);
        k->next = h->socks;
        if (h->socks)
            h->socks->prev = k;
        h->socks = k;
        curl_multi_assign(sh->multi, s, k);
    }
    int events = ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    /* Always ev_io_set, even for the same fd number: curl may have closed and reopened it. */
    ev_io_stop(h->loop, &k->io);
    ev_io_set(&k->io, s, events);
    if (events)
        ev_io_start(h->loop, &k->io);
    return 0;
}

static int on_timer_change(CURLM *multi, long timeout_ms, void *shp)
{
    (void)multi;
    struct httpc_shard *sh = shp;
    struct ev_loop *loop = sh->h->loop;
    ev_timer_stop(loop, &sh->timer);
    if (timeout_ms >= 0) {
        /* 0 means "as soon as possible": the timer fires on the next loop iteration, never
         * recursively from here (curl forbids calling it back from this callback). */
        ev_timer_set(&sh->timer, (double)timeout_ms / 1000.0, 0.);
        ev_timer_start(loop, &sh->timer);
    }
    return 0;
}

static size_t on_write(char *data, size_t size, size_t n, void *cp)
{
    eng_http_call *c = cp;
    size_t len = size * n;
    if (eng_buf_append(&c->body, data, len) != ENG_OK) {
        c->too_big = true;
        return 0; /* curl fails the transfer with CURLE_WRITE_ERROR */
    }
    return len;
}

static size_t trim_len(const char *s, size_t len)
{
    while (len && (s[len - 1] == '\r' || s[len - 1] == '\n' || s[len - 1] == ' ' ||
                   s[len - 1] == '\t'))
        len--;
    return len;
}

static size_t on_header(char *line, size_t size, size_t n, void *cp)
{
    eng_http_call *c = cp;
    size_t len = size * n;
    /* A status line starts a new response (after 100 Continue or 103 Early Hints): keep only the
     * final response's headers. */
    if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        eng_buf_reset(&c->headers);
        return len;
    }
    const char *colon = memchr(line, ':', len);
    if (!colon || colon == line)
        return len; /* blank line ending the headers, or an obsolete folded line */
    size_t name_len = trim_len(line, (size_t)(colon - line));
    const char *value = colon + 1;
    size_t value_len = len - (size_t)(value - line);
    while (value_len && (*value == ' ' || *value == '\t')) {
        value++;
        value_len--;
    }
    value_len = trim_len(value, value_len);
    if (eng_buf_append(&c->headers, line, name_len) != ENG_OK ||
        eng_buf_append(&c->headers, "", 1) != ENG_OK ||
        eng_buf_append(&c->headers, value, value_len) != ENG_OK ||
        eng_buf_append(&c->headers, "", 1) != ENG_OK) {
        c->too_big = true;
        return 0;
    }
    return len;
}

/* ---- calls ---- */

static void call_free(eng_http_call *c)
{
    curl_easy_cleanup(c->easy);
    curl_slist_free_all(c->req_headers);
    eng_buf_deinit(&c->body);
    eng_buf_deinit(&c->headers);
    free(c);
}

/* Takes a CALL_RUNNING call out of the multi handle and the in-flight list. */
static void call_detach(eng_http_call *c)
{
    eng_httpc *h = c->h;
    assert(c->st == CALL_RUNNING);
    CURLMcode mc = curl_multi_remove_handle(c->sh->multi, c->easy);
    if (mc != CURLM_OK)
        log_error("curl_multi_remove_handle failed", LOG_S("error", curl_multi_strerror(mc)));
    if (c->prev)
        c->prev->next = c->next;
    else
        h->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    h->in_flight--;
    c->sh->in_flight--;
}

static struct curl_slist *slist_add(struct curl_slist *l, const char *s)
{
    struct curl_slist *r = curl_slist_append(l, s);
    if (!r) {
        log_error("out of memory", LOG_S("where", "curl_slist_append"));
        abort();
    }
    return r;
}

static bool header_is(const char *h, const char *name)
{
    size_t n = strlen(name);
    return strncasecmp(h, name, n) == 0 && (h[n] == ':' || h[n] == ';');
}

/* Method, body and request headers. Bodies go through POSTFIELDS (curl copies them) with
 * CUSTOMREQUEST for methods other than POST, so PUT/PATCH/DELETE bodies need no read callback. */
static void call_set_request(eng_http_call *c, const eng_http_request *req)
{
    const char *method = req->method ? req->method : "GET";
    bool has_body = req->body != NULL || strcmp(method, "POST") == 0 ||
                    strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0;
    if (has_body) {
        EASY_SETOPT(c->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        EASY_SETOPT(c->easy, CURLOPT_COPYPOSTFIELDS, req->body ? req->body : "");
        if (strcmp(method, "POST") != 0)
            EASY_SETOPT(c->easy, CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "HEAD") == 0) {
        EASY_SETOPT(c->easy, CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "GET") != 0) {
        EASY_SETOPT(c->easy, CURLOPT_CUSTOMREQUEST, method);
    }

    bool has_type = false, has_expect = false;
    for (const char *const *p = req->headers; p && *p; p++) {
        has_type = has_type || header_is(*p, "content-type");
        has_expect = has_expect || header_is(*p, "expect");
        c->req_headers = slist_add(c->req_headers, *p);
    }
    /* curl would wait up to a second for "100 Continue" on large bodies: send them at once. */
    if (!has_expect)
        c->req_headers = slist_add(c->req_headers, "Expect:");
    /* curl would label any POSTFIELDS body as a form; send no type unless the caller gave one. */
    if (has_body && !has_type)
        c->req_headers = slist_add(c->req_headers, "Content-Type:");
    EASY_SETOPT(c->easy, CURLOPT_HTTPHEADER, c->req_headers);
}

static void refuse(eng_http_call *c, const char *ip, const char *why)
{
    snprintf(c->refused, sizeof c->refused, "%s is %s", ip, why);
    log_info("outbound call refused", LOG_S("address", ip), LOG_S("reason", why));
}

/* public_only: a connection to a non-public address is never opened (each address curl tries,
 * so a name resolving to a public and a private one still reaches the public one). */
static curl_socket_t on_open_socket(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
    eng_http_call *c = arg;
    const char *why = NULL;
    if (purpose == CURLSOCKTYPE_IPCXN && !eng_addr_is_public(&a->addr, &why)) {
        char ip[INET6_ADDRSTRLEN] = "?";
        if (a->family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)&a->addr)->sin_addr, ip, sizeof ip);
        else if (a->family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)&a->addr)->sin6_addr, ip,
                      sizeof ip);
        refuse(c, ip, why);
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* Runs once the connection is ready (TLS included), before any byte of the request is written:
 * until then a cancelled call provably sent nothing. With public_only it also checks the address,
 * on a connection reused from the cache too, which another call (a provider the operator
 * configured) may have opened to a private address. */
static int on_prereq(void *arg, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    eng_http_call *c = arg;
    const char *why = NULL;
    if (c->public_only && !eng_addr_text_is_public(primary_ip, &why)) {
        refuse(c, primary_ip, why);
        return CURL_PREREQFUNC_ABORT;
    }
    c->reached_send = true;
    return CURL_PREREQFUNC_OK;
}

static void call_set_options(eng_http_call *c, const eng_http_request *req)
{
    CURL *e = c->easy;
    EASY_SETOPT(e, CURLOPT_URL, req->url);
    EASY_SETOPT(e, CURLOPT_PRIVATE, (void *)c);
    EASY_SETOPT(e, CURLOPT_NOSIGNAL, 1L);
    EASY_SETOPT(e, CURLOPT_PROTOCOLS_STR, "http,https");
    EASY_SETOPT(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    EASY_SETOPT(e, CURLOPT_ERRORBUFFER, c->errbuf);
    EASY_SETOPT(e, CURLOPT_BUFFERSIZE, HTTPC_RECV_BUFFER);
    EASY_SETOPT(e, CURLOPT_TIMEOUT_MS,
                req->timeout_ms > 0 ? req->timeout_ms : ENG_HTTPC_DEFAULT_TIMEOUT_MS);
    EASY_SETOPT(e, CURLOPT_CONNECTTIMEOUT_MS, req->connect_timeout_ms > 0
                                                  ? req->connect_timeout_ms
                                                  : ENG_HTTPC_DEFAULT_CONNECT_TIMEOUT_MS);
    /* Refuses an announced Content-Length over the cap before any body arrives; on_write
     * enforces the cap for chunked or lying responses. */
    EASY_SETOPT(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)c->max_response);
    EASY_SETOPT(e, CURLOPT_WRITEFUNCTION, on_write);
    EASY_SETOPT(e, CURLOPT_WRITEDATA, (void *)c);
    EASY_SETOPT(e, CURLOPT_HEADERFUNCTION, on_header);
    EASY_SETOPT(e, CURLOPT_HEADERDATA, (void *)c);
    if (req->public_only) {
        EASY_SETOPT(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
        EASY_SETOPT(e, CURLOPT_OPENSOCKETDATA, (void *)c);
    }
    c->public_only = req->public_only;
    EASY_SETOPT(e, CURLOPT_PREREQFUNCTION, on_prereq);
    EASY_SETOPT(e, CURLOPT_PREREQDATA, (void *)c);
    if (httpc_ca_bundle)
        EASY_SETOPT(e, CURLOPT_CAINFO, httpc_ca_bundle);
    if (httpc_have_http2) {
        EASY_SETOPT(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
        /* Over TLS, wait for the first connection's ALPN answer rather than opening one
         * connection per call, so a burst of calls to one host shares one HTTP/2 connection.
         * Plain http:// never multiplexes here, and waiting would only delay the burst until the
         * first response arrives. */
        if (strncasecmp(req->url, "https:", 6) == 0)
            EASY_SETOPT(e, CURLOPT_PIPEWAIT, 1L);
    }
    call_set_request(c, req);
}

/* Never lowered: idle connections beyond the peak die when their servers drop them. */
static void shard_grow_cache(struct httpc_shard *sh)
{
    if ((long)sh->in_flight < sh->max_connects)
        return;
    sh->max_connects *= 2;
    MULTI_SETOPT(sh->multi, CURLMOPT_MAXCONNECTS, sh->max_connects);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents);

static struct httpc_shard *shard_new(eng_httpc *h)
{
    struct httpc_shard *sh = eng_xcalloc(1, sizeof *sh);
    sh->h = h;
    sh->multi = curl_multi_init();
    if (!sh->multi) {
        log_error("out of memory", LOG_S("where", "curl_multi_init"));
        abort();
    }
    ev_timer_init(&sh->timer, on_timer, 0., 0.);
    sh->max_connects = HTTPC_MIN_CONNECTS;
    MULTI_SETOPT(sh->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    MULTI_SETOPT(sh->multi, CURLMOPT_SOCKETDATA, (void *)sh);
    MULTI_SETOPT(sh->multi, CURLMOPT_TIMERFUNCTION, on_timer_change);
    MULTI_SETOPT(sh->multi, CURLMOPT_TIMERDATA, (void *)sh);
    MULTI_SETOPT(sh->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    MULTI_SETOPT(sh->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L); /* unlimited */
    MULTI_SETOPT(sh->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, 0L);
    MULTI_SETOPT(sh->multi, CURLMOPT_MAXCONNECTS, sh->max_connects);
    h->shards = eng_xrealloc(h->shards, (h->nshards + 1) * sizeof *h->shards);
    h->shards[h->nshards++] = sh;
    return sh;
}

/* The least busy shard, or a new one when even that one is full. */
static struct httpc_shard *shard_pick(eng_httpc *h)
{
    struct httpc_shard *best = h->shards[0];
    for (size_t i = 1; i < h->nshards; i++)
        if (h->shards[i]->in_flight < best->in_flight)
            best = h->shards[i];
    return best->in_flight < HTTPC_SHARD_CALLS ? best : shard_new(h);
}

eng_http_call *eng_httpc_start(eng_httpc *h, const eng_http_request *req, eng_http_cb *cb,
                               void *arg)
{
    assert(h && !h->closing && req && req->url && cb);
    eng_http_call *c = eng_xcalloc(1, sizeof *c);
    c->h = h;
    c->cb = cb;
    c->arg = arg;
    c->max_response = req->max_response_bytes ? req->max_response_bytes
                                               : ENG_HTTPC_DEFAULT_MAX_RESPONSE;
    eng_buf_init(&c->body, c->max_response);
    eng_buf_init(&c->headers, HTTPC_MAX_HEADER_BYTES);
    c->easy = curl_easy_init();
    if (!c->easy) {
        log_error("out of memory", LOG_S("where", "curl_easy_init"));
        abort();
    }
    call_set_options(c, req);

    c->st = CALL_RUNNING;
    c->next = h->calls;
    if (h->calls)
        h->calls->prev = c;
    h->calls = c;
    h->in_flight++;
    c->sh = shard_pick(h);
    c->sh->in_flight++;
    shard_grow_cache(c->sh);
    /* Fails only for misuse (a call from inside a curl callback) or out of memory. */
    CURLMcode mc = curl_multi_add_handle(c->sh->multi, c->easy);
    if (mc != CURLM_OK) {
        log_error("curl_multi_add_handle failed", LOG_S("error", curl_multi_strerror(mc)));
        abort();
    }
    return c;
}

bool eng_http_call_may_have_sent(const eng_http_call *c)
{
    return c && c->reached_send;
}

void eng_httpc_cancel(eng_http_call *c)
{
    if (!c || c->st != CALL_RUNNING)
        return;
    call_detach(c);
    call_free(c);
}

/* Maps a finished transfer's curl result to our error, NULL for a response. */
static const eng_err *call_error(eng_http_call *c, CURLcode res, eng_err *err)
{
    const char *text = c->errbuf[0] ? c->errbuf : curl_easy_strerror(res);
    if (res != CURLE_OK && c->refused[0]) {
        eng_err_set(err, ENG_EINVAL, "the target address is not allowed: %s", c->refused);
        return err;
    }
    switch (res) {
    case CURLE_OK:
        return NULL;
    case CURLE_OPERATION_TIMEDOUT:
        eng_err_set(err, ENG_ETIMEOUT, "%s", text);
        break;
    case CURLE_FILESIZE_EXCEEDED:
        eng_err_set(err, ENG_ETOOBIG, "response body over %zu bytes", c->max_response);
        break;
    case CURLE_WRITE_ERROR:
        if (c->too_big) {
            eng_err_set(err, ENG_ETOOBIG, "response over %zu bytes of body or %zu of headers",
                        c->max_response, HTTPC_MAX_HEADER_BYTES);
            break;
        }
        /* fall through */
    default:
        eng_err_set(err, ENG_EHTTP, "%s", text);
        break;
    }
    return err;
}

/* Detaches a finished call, runs its callback, then frees it: the callback may start and cancel
 * calls (this one is CALL_CALLING, so cancelling it is a no-op) or free the client. */
static void call_finish(eng_http_call *c, CURLcode res)
{
    long status = 0, version = 0;
    curl_off_t total_us = 0;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(c->easy, CURLINFO_TOTAL_TIME_T, &total_us);
    curl_easy_getinfo(c->easy, CURLINFO_HTTP_VERSION, &version);
    call_detach(c);
    c->st = CALL_CALLING;

    eng_err errbuf;
    const eng_err *err = call_error(c, res, &errbuf);
    static const int versions[] = {[CURL_HTTP_VERSION_1_0] = 10, [CURL_HTTP_VERSION_1_1] = 11,
                                   [CURL_HTTP_VERSION_2_0] = 20, [CURL_HTTP_VERSION_3] = 30};
    eng_http_response resp = {
        .status = status,
        .body = c->body.ptr ? c->body.ptr : "",
        .body_len = c->body.len,
        .total_ms = (double)total_us / 1000.0,
        .http_version = version >= 0 && (size_t)version < ENG_ARRAY_LEN(versions)
                            ? versions[version]
                            : 0,
    };
    log_debug("http call finished", LOG_I("status", status), LOG_F("ms", resp.total_ms),
              LOG_I("curl", (int)res));
    c->cb(c->arg, err, err ? NULL : &resp, c);
    call_free(c);
}

static void httpc_destroy(eng_httpc *h)
{
    assert(!h->calls && h->dispatching == 0);
    for (size_t i = 0; i < h->nshards; i++) {
        struct httpc_shard *sh = h->shards[i];
        ev_timer_stop(h->loop, &sh->timer);
        /* Closes the cached connections; it may still call on_socket and on_timer_change. */
        curl_multi_cleanup(sh->multi);
        ev_timer_stop(h->loop, &sh->timer);
        free(sh);
    }
    free(h->shards);
    while (h->socks) {
        struct httpc_sock *k = h->socks;
        h->socks = k->next;
        ev_io_stop(h->loop, &k->io);
        free(k);
    }
    free(h);
}

/* Hands every finished transfer to its callback. Messages are read one at a time because a
 * callback may remove other handles (and with them their queued messages). */
static void httpc_drain(struct httpc_shard *sh)
{
    eng_httpc *h = sh->h;
    h->dispatching++;
    CURLMsg *m;
    int left;
    while (!h->closing && (m = curl_multi_info_read(sh->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURLcode res = m->data.result; /* m dies with curl_multi_remove_handle */
        eng_http_call *c = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &c);
        call_finish(c, res);
    }
    h->dispatching--;
    if (h->closing && h->dispatching == 0)
        httpc_destroy(h);
}

static void httpc_action(struct httpc_shard *sh, curl_socket_t s, int flags)
{
    int running;
    CURLMcode mc = curl_multi_socket_action(sh->multi, s, flags, &running);
    /* BAD_SOCKET: curl already forgot a socket whose event was pending; harmless. */
    if (mc != CURLM_OK && mc != CURLM_BAD_SOCKET)
        log_warn("curl_multi_socket_action failed", LOG_S("error", curl_multi_strerror(mc)));
    httpc_drain(sh);
}

/* The watcher (and even h) may be freed inside httpc_action: touch nothing afterwards. */
static void on_sock_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct httpc_sock *k = ENG_CONTAINER_OF(w, struct httpc_sock, io);
    int flags = ((revents & EV_READ) ? CURL_CSELECT_IN : 0) |
                ((revents & EV_WRITE) ? CURL_CSELECT_OUT : 0) |
                ((revents & EV_ERROR) ? CURL_CSELECT_ERR : 0);
    httpc_action(k->sh, w->fd, flags);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    httpc_action(ENG_CONTAINER_OF(w, struct httpc_shard, timer), CURL_SOCKET_TIMEOUT, 0);
}

eng_httpc *eng_httpc_new(struct ev_loop *loop)
{
    eng_httpc *h = eng_xcalloc(1, sizeof *h);
    h->loop = loop;
    shard_new(h);
    return h;
}

void eng_httpc_free(eng_httpc *h)
{
    if (!h || h->closing)
        return;
    h->closing = true;
    for (eng_http_call *c = h->calls, *next; c; c = next) {
        next = c->next;
        call_detach(c);
        call_free(c);
    }
    if (h->dispatching == 0)
        httpc_destroy(h);
}

size_t eng_httpc_in_flight(const eng_httpc *h)
{
    return h->in_flight;
}

const char *eng_http_call_header(const eng_http_call *c, const char *name)
{
    const char *found = NULL, *n, *v;
    size_t pos = 0;
    while (eng_http_call_header_next(c, &pos, &n, &v))
        if (strcasecmp(n, name) == 0)
            found = v;
    return found;
}

bool eng_http_call_header_next(const eng_http_call *c, size_t *pos, const char **name,
                               const char **value)
{
    if (!c->headers.ptr || *pos >= c->headers.len)
        return false;
    *name = c->headers.ptr + *pos;
    *value = *name + strlen(*name) + 1;
    *pos = (size_t)(*value - c->headers.ptr) + strlen(*value) + 1;
    return true;
}
