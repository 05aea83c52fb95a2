/* fuzz/fuzz_http_request.c: arbitrary bytes as one connection's input to the HTTP server.
 *
 * Each input gets a fresh server without a listening socket and a socketpair whose server end is
 * adopted as a connection. The client end writes the input, shuts its write side and reads
 * whatever comes back, while the loop runs until the server has closed the connection. The
 * handler answers synchronously, asynchronously (timer) or as a stream, chosen by the path, so
 * every response path meets every parser state; api_http_free at the end must abort and release
 * whatever is still in flight. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>

#include "api/http.h"
#include "engine/log.h"
#include "engine/mem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct later {
    ev_timer t;
    api_req *req;
    struct ev_loop *loop;
    bool stream;
} later;

static void later_abort(void *arg)
{
    later *l = arg;
    ev_timer_stop(l->loop, &l->t);
    free(l);
}

static void later_fire(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    later *l = (later *)w;
    ev_timer_stop(loop, w);
    if (l->stream) {
        api_req_stream_write(l->req, "late", 4);
        api_req_stream_end(l->req);
    } else {
        api_req_respond(l->req, 202, "text/plain", "later", 5, NULL);
    }
    free(l);
}

static void handler(void *arg, api_req *r)
{
    struct ev_loop *loop = arg;
    const char *path = api_req_path(r);
    size_t len;
    const char *body = api_req_body(r, &len);
    if (path[1] == 'a' || path[1] == 's') {
        later *l = calloc(1, sizeof *l);
        l->req = r;
        l->loop = loop;
        l->stream = path[1] == 's';
        if (l->stream) {
            api_req_stream_begin(r, 200, "text/plain", (const char *const[]){"X-A: b", NULL});
            api_req_stream_write(r, body, len);
        }
        ev_timer_init(&l->t, later_fire, 0., 0.);
        ev_timer_start(loop, &l->t);
        api_req_on_abort(r, later_abort, l);
    } else if (path[1] == 'j') {
        const char *q = api_req_query(r, "q");
        const char *h = api_req_header(r, "x-h");
        api_req_respond_json(r, 200,
                             json_pack("{s:s, s:s*, s:s*, s:s%, s:s, s:s}", "m", api_req_method(r),
                                       "q", q, "h", h, "b", body, len, "p", api_req_peer(r),
                                       "rq", api_req_raw_query(r)));
    } else if (path[1] == 'e') {
        api_req_respond_error(r, 422, "invalid", "bad field", "/x/0");
    } else {
        api_req_respond(r, 200, "text/plain", body, len, NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct ev_loop *loop;
    if (!loop) {
        eng_mem_init();
        eng_log_threshold = LOG_ERROR;
        loop = ev_loop_new(EVFLAG_AUTO);
    }
    api_http_opts opts = {.max_body = 4096, .max_header = 2048};
    api_http *s = api_http_new(loop, &opts, handler, loop, NULL);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0)
        abort();
    if (api_http_adopt_fd(s, sv[0], "fuzz") != ENG_OK)
        abort();
    size_t off = 0;
    for (int i = 0; i < 10000 && api_http_conn_count(s) > 0; i++) {
        if (off < size) {
            ssize_t n = send(sv[1], data + off, size - off, MSG_NOSIGNAL);
            if (n > 0)
                off += (size_t)n;
            if (off == size)
                shutdown(sv[1], SHUT_WR);
        } else if (size == 0 && i == 0) {
            shutdown(sv[1], SHUT_WR);
        }
        ev_run(loop, EVRUN_NOWAIT);
        char sink[65536];
        while (recv(sv[1], sink, sizeof sink, MSG_DONTWAIT) > 0)
            ;
    }
    api_http_free(s);
    close(sv[1]);
    return 0;
}
