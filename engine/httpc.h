/* engine/httpc.h: asynchronous outbound HTTP client, libcurl multi driven by one libev loop.
 *
 * One eng_httpc per loop (and so per worker thread; it is not thread-safe). Every call runs on the
 * loop: eng_httpc_start never blocks and never calls back before returning; the callback runs from
 * a loop watcher, exactly once, unless the call is cancelled first. Keep-alive connections are
 * reused and HTTP/2 connections are multiplexed (HTTPS only: HTTP/2 is negotiated by ALPN, plain
 * http:// stays HTTP/1.1). Up to 100 calls in flight share one curl multi handle and its
 * connection cache; past that the calls are spread over more of them (see httpc.c).
 *
 * Ownership: the client owns every call in flight. A call's request (URL, headers, body) is copied
 * at start; its response and headers are borrowed by the callback and freed when it returns. The
 * eng_http_call pointer is valid from eng_httpc_start until the callback returns or until
 * eng_httpc_cancel / eng_httpc_free, whichever comes first.
 *
 * Re-entrancy: a callback may start new calls, cancel other calls (they will not be called back),
 * cancel its own call (no effect) and even free the client (finished once the callback returns). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "engine/err.h"

struct ev_loop;

typedef struct eng_httpc eng_httpc;         /* one per libev loop (not thread-safe) */
typedef struct eng_http_call eng_http_call; /* one request in flight */

typedef struct eng_http_request {
    const char *method;              /* "GET", "POST", ...; NULL means GET */
    const char *url;                 /* http:// or https:// only; copied */
    const char *const *headers;      /* NULL-terminated "Name: value" list (may be NULL), copied */
    const char *body;                /* request body (may be NULL), copied */
    size_t body_len;                 /* bytes of body */
    long timeout_ms;                 /* whole transfer; 0 = default 60 s */
    long connect_timeout_ms;         /* 0 = default 10 s */
    size_t max_response_bytes;       /* body cap; 0 = default 8 MiB; over it: ENG_ETOOBIG */
    bool public_only;                /* a tenant chose the target: refuse any address that is not
                                        public (engine/netaddr.h), checked on the resolved address
                                        of every connection opened and of one reused (ENG_EINVAL) */
} eng_http_request;

typedef struct eng_http_response {
    long status;        /* final HTTP status (1xx interim responses are skipped) */
    const char *body;   /* NUL-terminated (never NULL), borrowed for the callback's duration */
    size_t body_len;    /* bytes of body, terminator not counted */
    double total_ms;    /* start of the transfer to its end, as curl measured it */
    int http_version;   /* 10, 11, 20 or 30 */
} eng_http_response;

#define ENG_HTTPC_DEFAULT_TIMEOUT_MS 60000L
#define ENG_HTTPC_DEFAULT_CONNECT_TIMEOUT_MS 10000L
#define ENG_HTTPC_DEFAULT_MAX_RESPONSE ((size_t)8 << 20)

/* err NULL means an HTTP response arrived (any status) and resp is set. Otherwise resp is NULL and
 * err->rc is ENG_ETIMEOUT (connect or whole-transfer deadline passed), ENG_ETOOBIG (response body
 * or headers over the cap), ENG_EINVAL (public_only and the target resolved to no public address:
 * nothing was sent) or ENG_EHTTP (refused, reset, DNS, TLS, malformed URL, connection closed
 * mid-response...: curl's error text is in err->msg). The response and its headers are valid only
 * during the callback; call is the same pointer eng_httpc_start returned. */
typedef void eng_http_cb(void *arg, const eng_err *err, const eng_http_response *resp,
                         eng_http_call *call);

/* A client on loop (borrowed: it must outlive the client). Call eng_httpc_global_init first. */
eng_httpc *eng_httpc_new(struct ev_loop *loop);
/* Cancels every call in flight without calling back, closes the cached connections and frees the
 * client. NULL-safe. From inside one of this client's callbacks, the work finishes when that
 * callback returns (no further callback runs and no new call may be started). */
void eng_httpc_free(eng_httpc *h);

/* Starts req (copied). Never NULL and never fails synchronously: every failure, including a bad
 * URL or scheme, comes back through cb from the loop. cb must be non-NULL. */
eng_http_call *eng_httpc_start(eng_httpc *h, const eng_http_request *req, eng_http_cb *cb,
                               void *arg);
/* Cancels a call in flight: its callback is never called afterwards and the call is freed (its
 * connection is closed if the exchange was unfinished). Safe from any loop callback, including
 * another call's completion. On a call whose callback is running it does nothing. NULL-safe. */
void eng_httpc_cancel(eng_http_call *call);
/* Whether any byte of call's request may have left: false while the connection (and its TLS
 * handshake) is still being set up, which makes a call cancelled then provably unsent. Ask before
 * eng_httpc_cancel. NULL-safe (false). */
bool eng_http_call_may_have_sent(const eng_http_call *call);

/* Case-insensitive response header lookup (last value wins) among the final response's headers;
 * NULL when absent. Valid during the callback. */
const char *eng_http_call_header(const eng_http_call *call, const char *name);
/* Iterates the final response's headers in arrival order: start with *pos = 0; returns false at
 * the end. name and value are borrowed for the callback's duration. */
bool eng_http_call_header_next(const eng_http_call *call, size_t *pos, const char **name,
                               const char **value);

/* Calls started and not yet finished or cancelled (a call whose callback is running is no longer
 * counted). */
size_t eng_httpc_in_flight(const eng_httpc *h);

/* Global curl init/cleanup, once per process, before any other thread uses curl and after all
 * clients are freed (curl_global_init is not thread-safe). Aborts if curl cannot initialise. Init
 * reads FLOWD_CA_BUNDLE: a PEM file of the certificates that HTTPS calls trust instead of the
 * system's. */
void eng_httpc_global_init(void);
void eng_httpc_global_cleanup(void);
