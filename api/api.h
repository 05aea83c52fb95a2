/* api/api.h: flowd's HTTP API service: a few libev loop threads, each with its own listening
 * server on one shared port (SO_REUSEPORT) and its own small pool of PostgreSQL connections.
 * Requests are authenticated (Bearer key -> tenant), routed, and answered from SQL functions. */
#pragma once

#include <stdbool.h>

#include "engine/err.h"

typedef struct api_service api_service;

typedef struct api_service_opts {
    const char *conninfo;
    const char *listen;     /* default "127.0.0.1:8080" */
    int threads;            /* loop threads (default 2) */
    int db_conns;           /* PostgreSQL connections per thread (default 4) */
    size_t max_body;        /* default 1 MiB */
    double header_timeout_s; /* the request head must arrive within this (slowloris); default 10 */
    double request_timeout_s; /* head and body must arrive within this; default 30 */
    int max_conns;          /* open connections in all (split over the threads); default half
                               the descriptor limit (RLIMIT_NOFILE), the rest left to the engine */
    int max_conns_per_client; /* open connections per client address; default max_conns / 4 */
    bool test_clock;        /* FLOWD_TEST_CLOCK=1: POST /v1/test/clock exists */
    double sse_heartbeat_s; /* a quiet event stream gets a comment line this often; default 15 */
    const char *read_conninfo; /* a streaming standby for the polls (api/standby.h); NULL: none */
    double read_max_lag_s;     /* a read goes to the standby only while it is at most this stale;
                               default 1 */
} api_service_opts;

/* Binds and starts the threads. NULL with err filled when the address cannot be bound. */
api_service *api_service_start(const api_service_opts *opts, eng_err *err);
/* The bound port (after a ":0" listen address). */
int api_service_port(const api_service *s);
/* Stops accepting, finishes requests in flight (bounded), joins the threads, frees. NULL-safe. */
void api_service_stop(api_service *s);
