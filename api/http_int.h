/* api/http_int.h: what api/http.c (server, connections, parsing) and api/http_req.c (request
 * accessors, response formatting) share. Not for other modules: use api/http.h. */
#pragma once

#include <ev.h>
#include <llhttp.h>

#include "api/connlimit.h"
#include "api/http.h"
#include "engine/buf.h"

typedef struct api_conn api_conn;

enum conn_state {
    CONN_IDLE,    /* between requests: nothing of the next one parsed yet (idle timer) */
    CONN_HEAD,    /* parsing request line and headers (header deadline, never extended) */
    CONN_BODY,    /* parsing the body (what is left of the request's deadline, never extended) */
    CONN_HANDLER, /* request complete and parser paused: the handler owns conn->req */
    CONN_WRITING, /* response complete, flushing it; the next request waits for this */
    CONN_LINGER,  /* last response sent and write side shut: draining input so the peer
                     reads our response instead of a reset */
    CONN_CLOSED,  /* fd closed, on srv->dead until the prepare watcher frees it */
};

enum req_state {
    REQ_NONE,       /* no request started on this connection since the last one ended */
    REQ_READING,    /* the parser is filling it */
    REQ_COMPLETE,   /* on_message_complete seen, not yet handed to the handler */
    REQ_DISPATCHED, /* the handler owns it and owes a response */
    REQ_STREAMING,  /* stream_begin done, stream_end owed */
    REQ_DONE,       /* the response is fully queued in conn->out */
    REQ_ABORTED,    /* the connection died first; the abort callback ran */
};

enum conn_timer { T_NONE, T_IDLE, T_HEAD, T_BODY, T_WRITE, T_LINGER };

struct api_req {
    api_conn *conn;
    enum req_state st;
    eng_buf raw;     /* url '\0' (name '\0' value '\0')*, capped at max_header */
    size_t mark;     /* offset in raw where the token being parsed starts */
    bool in_token;   /* a url/field/value token has started and not ended */
    size_t *hdrs;    /* per header: name offset, value offset (pairs) */
    size_t nhdrs;    /* pairs used */
    size_t hcap;     /* pairs allocated */
    eng_buf body;    /* de-chunked, capped at max_body */
    eng_buf dec;     /* decoded path '\0' raw query '\0' (name '\0' value '\0')*; built at dispatch */
    size_t *qoffs;   /* per query parameter: name offset, value offset in dec */
    size_t nq, qcap; /* query pairs used / allocated */
    size_t rawq_off; /* offset of the raw query in dec */
    const char *method;
    bool head_only; /* HEAD: headers as for GET, no body bytes */
    bool chunked;   /* streaming with chunked transfer encoding */
    char id[72];    /* request id: the client's X-Request-Id when sane, else ours; "" until set */
    int status;     /* of the response begun, 0 before */
    size_t bytes;   /* body bytes of the response queued so far */
    ev_tstamp t0;   /* loop time the request was dispatched (request log) */
    void (*abort_cb)(void *arg);
    void *abort_arg;
};

struct api_conn {
    ev_io rio;    /* readable */
    ev_io wio;    /* writable; only while out has bytes the socket refused */
    ev_timer timer;
    enum conn_timer tmode; /* what the running timer measures */
    int fd;
    api_http *srv;
    enum conn_state st;
    llhttp_t parser;
    char *ibuf;       /* received, not yet parsed (pipelined requests wait here) */
    size_t ioff;      /* parsed up to here */
    size_t ilen;      /* received up to here */
    size_t icap;      /* allocated */
    eng_buf out;      /* response bytes queued */
    size_t out_off;   /* written up to here */
    api_req req;      /* the current request, reused for the next one */
    int err_status;   /* set by a parser callback that refuses the request (413, 431) */
    size_t trailer_bytes;
    unsigned long nreq;
    bool rd_eof;      /* the peer shut its write side; answer what is buffered, then close */
    bool keepalive;   /* the request allows another one after it */
    bool http10;
    bool resp_keep;   /* the response we queued announced keep-alive */
    bool kicked;      /* on srv->kick */
    int in_drive;     /* conn_drive is on the stack: it re-reads state, no kick needed */
    api_conn *prev, *next; /* srv->live or srv->dead */
    api_conn *kick_next;
    char peer[64];
    ev_tstamp req_t0;         /* the current request's deadline runs from here */
    api_connlimit_key lkey;   /* what srv->opts.limit counted for this connection */
};

struct api_http {
    struct ev_loop *loop;
    api_http_opts opts;
    api_handler *handler;
    void *arg;
    int lfd;
    int port;
    ev_io accept_io;
    ev_timer accept_retry; /* after EMFILE and friends */
    bool accept_full;      /* accepting paused at max_conns */
    ev_prepare prep;       /* runs kicks, frees dead connections, reports shutdown */
    api_conn *live;
    api_conn *dead;
    api_conn *kick_head, *kick_tail;
    int nconns;
    bool shutting;
    void (*done)(void *arg);
    void *done_arg;
};

/* Schedules conn_drive for a connection whose response advanced outside its driver. */
void api_http__conn_kick(api_conn *c);
/* Resets c->req for the next request, keeping its allocations. */
void api_http__req_reset(api_req *r);
/* Decodes the path and query; returns NULL or the reason the target is refused. */
const char *api_http__req_finish(api_req *r);
/* Gives a complete request its id and start time, before the handler sees it. */
void api_http__req_start(api_req *r);
/* Writes the request log line of r (when the server keeps one); aborted: the client went away. */
void api_http__req_log(api_req *r, bool aborted);
/* Answers a request the server itself refuses (malformed, too large) and closes after it. */
void api_http__conn_error(api_conn *c, int status, const char *code, const char *msg);
