/* engine/procreg.h: this process's row in the process registry (processes, sql/ops.sql): its
 * host, pid, version, role, workers and API, written when it starts and then once a period (10 s
 * by default) from a loop the caller runs, on a connection of its own. One statement a beat and
 * none per step, so an idle process stays idle. GET /v1/workers reads the registry with each
 * worker's lease and running steps; a process whose beats stop shows as missing after three
 * periods, one that stops cleanly says so (eng_procreg_stop). */
#pragma once

#include <stdint.h>

struct ev_loop;
typedef struct eng_procreg eng_procreg;

typedef struct eng_procreg_opts {
    const char *conninfo;
    const char *host;    /* the workers' owner names are "host:pid:i" */
    int pid;
    const char *version;
    const char *role;    /* all, api or worker */
    const char *listen;  /* the API's bound address, NULL without the API */
    int workers;
    int api_threads;
    int beat_ms;         /* 0: 10000 */
} eng_procreg_opts;

/* Starts beating on loop (the first beat goes out at once). Never NULL. */
eng_procreg *eng_procreg_start(struct ev_loop *loop, const eng_procreg_opts *opts);
/* Marks the process stopped, running loop for up to grace_s for that statement to land (call it
 * after the loop's own run returned), closes the connection and frees. NULL-safe. */
void eng_procreg_stop(eng_procreg *r, double grace_s);
