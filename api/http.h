/* api/http.h: the HTTP/1.1 server of flowd's API, on one libev loop, parsing with llhttp.
 *
 * One api_http listens on one address and calls one handler per request, on the loop thread.
 * Connections keep alive; pipelined requests are answered strictly in order, one at a time: the
 * parser pauses at the end of each request until its response has been written.
 *
 * Ownership: the server owns its connections and their requests. An api_req is borrowed by the
 * handler from the handler call until it responds (api_req_respond*, or api_req_stream_end) or until
 * its abort callback runs, whichever comes first; after that it must not be touched. A handler that
 * answers later (from a db or timer callback) must register api_req_on_abort, or it may be left
 * holding a dangling pointer when the client goes away. Everything here is loop-thread only. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "engine/err.h"

struct ev_loop;

typedef struct api_http api_http; /* a listening server bound to one libev loop */
typedef struct api_req api_req;   /* one request; valid until it is responded to or aborted */

typedef struct api_http_opts {
    const char *listen;      /* "127.0.0.1:8080", "[::1]:0", "0.0.0.0:0"; port 0 picks a free port;
                                NULL: no listening socket (connections via api_http_adopt_fd) */
    size_t max_body;         /* default 1 MiB -> 413 */
    size_t max_header;       /* request line plus headers; default 16 KiB -> 431 */
    double header_timeout_s; /* whole request head must arrive within this (slowloris): default 10 */
    double idle_timeout_s;   /* keep-alive idle or stalled write: default 60 */
    double request_timeout_s; /* the whole request, head and body, must arrive within this from
                                 its start (a body trickled a byte at a time): default 30 */
    int max_conns;           /* default 10000; accepting pauses while this many are open */
    struct api_connlimit *limit; /* shared per-client-address cap (api/connlimit.h), borrowed;
                                    NULL: none. A connection over it is answered 429 and closed */
    bool reuseport;          /* SO_REUSEPORT so several loops/threads can each own a server */
    bool access_log;         /* one log line per request (method, path, status, time, req id) */
} api_http_opts;

/* Called on the loop thread, once per request. */
typedef void api_handler(void *arg, api_req *req);

/* Binds and listens (opts may be NULL for all defaults, zero fields take their default).
 * Returns NULL with err filled (ENG_EINVAL for a bad address, ENG_ESYS for socket errors). */
api_http *api_http_new(struct ev_loop *loop, const api_http_opts *opts, api_handler *h, void *arg,
                       eng_err *err);
/* The bound port (useful after port 0), or 0 without a listening socket. */
int api_http_port(const api_http *s);
/* Open connections, for tests and metrics. */
int api_http_conn_count(const api_http *s);
/* Takes ownership of a connected socket (made non-blocking here) and serves it like an accepted
 * one: for socketpairs in the fuzzer and for inherited sockets. peer may be NULL. Closes fd and
 * returns ENG_ECANCELED when shutting down, ENG_ETOOBIG at max_conns. */
ENG_MUST_CHECK eng_rc api_http_adopt_fd(api_http *s, int fd, const char *peer);
/* Stops accepting, lets requests in flight finish and be written (their responses say
 * "Connection: close"), closes idle connections; calls done(arg) once every connection is gone,
 * from a later loop iteration (never from inside this call). done may free the server. */
void api_http_shutdown(api_http *s, void (*done)(void *arg), void *arg);
/* NULL-safe; closes everything immediately: requests in flight get their abort callback. Do not
 * call it from this server's handler or abort callbacks. */
void api_http_free(api_http *s);

/* Request accessors: returned strings are borrowed from the request and live as long as it. */
const char *api_req_method(const api_req *r);                   /* "GET" */
const char *api_req_path(const api_req *r);                     /* decoded path without the query */
const char *api_req_raw_query(const api_req *r);                /* undecoded, "" when absent */
const char *api_req_query(const api_req *r, const char *name);  /* percent-decoded value or NULL */
const char *api_req_query_name(const api_req *r, size_t i);     /* i-th parameter's name, or NULL */
const char *api_req_query_value(const api_req *r, size_t i);    /* its decoded value, or NULL */
const char *api_req_header(const api_req *r, const char *name); /* case-insensitive, NULL if absent */
/* The i-th header as received: false past the last. */
bool api_req_header_at(const api_req *r, size_t i, const char **name, const char **value);
const char *api_req_body(const api_req *r, size_t *len);        /* de-chunked, NUL-terminated */
const char *api_req_peer(const api_req *r);                     /* "127.0.0.1:51234", "[::1]:5" */
/* The request id, also sent back as X-Request-Id: the client's own X-Request-Id when it is 1-64
 * characters of [A-Za-z0-9._:-], else 16 random hex digits. */
const char *api_req_id(const api_req *r);
/* Seconds since the request was dispatched to its handler (loop time, brought up to date). */
double api_req_elapsed_s(const api_req *r);

/* Responses: exactly one per request, now or later. extra_headers is a NULL-terminated array of
 * "Name: value" strings, or NULL; Content-Length, Transfer-Encoding, Connection, Date and
 * X-Request-Id are ours. A HEAD request gets the headers of its GET without the body bytes. */
void api_req_respond(api_req *r, int status, const char *content_type, const char *body, size_t len,
                     const char *const *extra_headers);
void api_req_respond_json(api_req *r, int status, json_t *body /* stolen */);
/* {"error": {"code": code, "message": msg, "field": field}} (field omitted when NULL) */
void api_req_respond_error(api_req *r, int status, const char *code, const char *msg,
                           const char *field);

/* Streaming (Server-Sent Events, NDJSON, CSV exports): chunked transfer encoding for HTTP/1.1
 * clients, raw bytes then close for HTTP/1.0 ones. begin, any number of writes, then end. */
void api_req_stream_begin(api_req *r, int status, const char *content_type,
                          const char *const *extra_headers);
void api_req_stream_write(api_req *r, const char *data, size_t len);
void api_req_stream_end(api_req *r);
/* cb(arg) runs if the connection dies before the response is complete (client gone, write stalled
 * past the idle timeout, server freed); after it the handler must not touch r again. */
void api_req_on_abort(api_req *r, void (*cb)(void *arg), void *arg);
/* Backpressure for streams: bytes of this connection queued but not yet written to the socket. */
size_t api_req_pending_bytes(const api_req *r);
