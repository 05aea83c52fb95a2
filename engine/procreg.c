/* engine/procreg.c: the process registry's beat (see procreg.h). */
#include "engine/procreg.h"

#include <ev.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/clock.h"
#include "engine/db.h"
#include "engine/log.h"
#include "engine/mem.h"

#define PROCREG_BEAT_MS 10000

struct eng_procreg {
    struct ev_loop *loop;
    eng_db *db;
    ev_timer beat;
    ev_timer grace;
    bool beating;  /* a beat on the wire: a slow database gets no second one queued behind it */
    char *id, *host, *version, *role, *listen;
    char pid[16], workers[16], api_threads[16], beat_ms[16], started_ms[24];
};

static void procreg_beat_cb(void *arg, const eng_err *err, const PGresult *res)
{
    (void)res;
    eng_procreg *r = arg;
    r->beating = false;
    /* the next beat tries again; the registry only reports, so nothing else depends on it */
    if (err && err->rc != ENG_ECANCELED)
        log_warn("process registry beat failed", LOG_S("error", err->msg));
}

static void procreg_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    eng_procreg *r = ENG_CONTAINER_OF(w, eng_procreg, beat);
    if (r->beating)
        return;
    r->beating = true;
    const char *params[] = {r->id,      r->host,    r->pid,         r->version,
                            r->role,    r->listen,  r->workers,     r->api_threads,
                            r->beat_ms, r->started_ms};
    eng_db_query(r->db, "procreg_beat", 10, params, procreg_beat_cb, r);
}

eng_procreg *eng_procreg_start(struct ev_loop *loop, const eng_procreg_opts *opts)
{
    eng_procreg *r = eng_xcalloc(1, sizeof *r);
    r->loop = loop;
    r->id = eng_xasprintf("%s:%d", opts->host, opts->pid);
    r->host = eng_xstrdup(opts->host);
    r->version = eng_xstrdup(opts->version);
    r->role = eng_xstrdup(opts->role);
    r->listen = opts->listen ? eng_xstrdup(opts->listen) : NULL;
    int beat_ms = opts->beat_ms > 0 ? opts->beat_ms : PROCREG_BEAT_MS;
    snprintf(r->pid, sizeof r->pid, "%d", opts->pid);
    snprintf(r->workers, sizeof r->workers, "%d", opts->workers);
    snprintf(r->api_threads, sizeof r->api_threads, "%d", opts->api_threads);
    snprintf(r->beat_ms, sizeof r->beat_ms, "%d", beat_ms);
    snprintf(r->started_ms, sizeof r->started_ms, "%lld", (long long)eng_clock_wall_ms());
    eng_db_opts dbo = {.conninfo = opts->conninfo, .application_name = "flowd registry"};
    r->db = eng_db_new(loop, &dbo);
    eng_db_prepare(r->db, "procreg_beat",
                   "SELECT flowd_process_beat($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", 10);
    ev_timer_init(&r->beat, procreg_timer_cb, 0., beat_ms / 1000.0);
    ev_timer_start(loop, &r->beat);
    return r;
}

static void procreg_stopped_cb(void *arg, const eng_err *err, const PGresult *res)
{
    (void)res;
    eng_procreg *r = arg;
    if (err && err->rc != ENG_ECANCELED)
        log_warn("process registry stop failed", LOG_S("error", err->msg));
    ev_break(r->loop, EVBREAK_ONE);
}

static void procreg_grace_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ONE);
}

void eng_procreg_stop(eng_procreg *r, double grace_s)
{
    if (!r)
        return;
    ev_timer_stop(r->loop, &r->beat);
    const char *params[] = {r->id};
    eng_db_query(r->db, "SELECT flowd_process_stopped($1)", 1, params, procreg_stopped_cb, r);
    ev_timer_init(&r->grace, procreg_grace_cb, grace_s, 0.);
    ev_timer_start(r->loop, &r->grace);
    /* the answer, the grace timer or a signal breaks the run; without the answer the row just
     * stops beating and shows as missing */
    ev_run(r->loop, 0);
    ev_timer_stop(r->loop, &r->grace);
    eng_db_free(r->db);
    free(r->id);
    free(r->host);
    free(r->version);
    free(r->role);
    free(r->listen);
    free(r);
}
