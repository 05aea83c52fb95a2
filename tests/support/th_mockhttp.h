/* tests/support/th_mockhttp.h: a scriptable HTTP/1.1 server for tests, on its own thread.
 *
 * Listens on 127.0.0.1 on a free port and answers every request through a handler that the test
 * supplies. The handler runs on the server thread and decides the status, headers and body, and
 * how they are delivered: after a delay, in pieces with pauses, chunked, or cut short by closing
 * the connection. Persistent connections and pipelining are supported (requests are parsed by
 * llhttp), so tests can also check connection reuse. The server holds thousands of connections at
 * once (poll, no per-connection thread): the caller may need to raise RLIMIT_NOFILE.
 *
 * Threads: the handler and its arg are used on the server thread only; share state with the test
 * thread through atomics or read it after the server is stopped. The counters are atomic. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

typedef struct th_mock th_mock;
typedef struct th_mock_resp th_mock_resp; /* the answer being built, opaque */

typedef struct th_mock_req {
    const char *method;     /* "GET", "POST", ... */
    const char *target;     /* request target as sent: "/path?query" */
    const char *body;       /* NUL-terminated (never NULL), chunked bodies decoded */
    size_t body_len;        /* bytes of body */
    unsigned long seq;      /* 1-based number of this request on the server */
    unsigned long conn_seq; /* 1-based number of the connection it came on */
} th_mock_req;

/* Fills resp for req; both are valid only during the call. Untouched, resp is "200 OK", empty body,
 * sent at once. */
typedef void th_mock_handler(void *arg, const th_mock_req *req, th_mock_resp *resp);

/* Servers started afterwards listen on every address of the process's network namespace, not
 * only 127.0.0.1 (for flowd processes in other namespaces; th_mock_url still names 127.0.0.1). */
void th_mock_listen_any(void);
/* Starts a server; handler NULL answers 200 with an empty body. Aborts on failure. */
th_mock *th_mock_start(th_mock_handler *handler, void *arg);
/* Closes every connection (answers still pending are dropped), joins the thread and frees.
 * NULL-safe. */
void th_mock_stop(th_mock *m);

int th_mock_port(const th_mock *m);
/* "http://127.0.0.1:PORT" (no trailing slash), valid until th_mock_stop. */
const char *th_mock_url(const th_mock *m);
/* Requests fully received so far. */
unsigned long th_mock_requests(const th_mock *m);
/* Connections accepted so far. */
unsigned long th_mock_connections(const th_mock *m);
/* Most requests held at once between "fully received" and "answer fully sent (or dropped)". */
unsigned long th_mock_peak_pending(const th_mock *m);

/* Case-insensitive request header lookup (last value wins); NULL when absent. */
const char *th_mock_req_header(const th_mock_req *req, const char *name);

/* ---- building the answer (handler only) ---- */
void th_mock_resp_status(th_mock_resp *r, int status);
/* Adds a header line; a Content-Length given here replaces the computed one (to lie with it). */
void th_mock_resp_header(th_mock_resp *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Appends to the body. */
void th_mock_resp_body(th_mock_resp *r, const void *data, size_t len);
void th_mock_resp_bodyf(th_mock_resp *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Waits ms after the request arrived before sending anything. */
void th_mock_resp_delay(th_mock_resp *r, int ms);
/* Sends the body piece_bytes at a time with pause_ms between pieces (with chunked, one chunk per
 * piece). */
void th_mock_resp_pieces(th_mock_resp *r, size_t piece_bytes, int pause_ms);
/* Sends the body with Transfer-Encoding: chunked instead of Content-Length. */
void th_mock_resp_chunked(th_mock_resp *r);
/* Closes the connection once the head and body_bytes bytes of the body as sent on the wire (chunk
 * framing included) are out, announcing the full length: a response cut short. */
void th_mock_resp_close_after(th_mock_resp *r, size_t body_bytes);
/* Closes the connection after the delay without sending anything. */
void th_mock_resp_drop(th_mock_resp *r);
/* Sends "Connection: close" and closes after the answer. */
void th_mock_resp_close(th_mock_resp *r);
