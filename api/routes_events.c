/* api/routes_events.c: a run's event log, as one JSON page or as a live Server-Sent Events stream,
 * and the stream plumbing (api_stream_*) that the exports share.
 *
 * Reads go through flowd_run_events_json, which reads the events after a sequence and the run's
 * state in one snapshot, so "finished and nothing left" means every event was sent. Events of one
 * run are written by transactions that lock the run row first, so their ids commit in order and
 * "after the last id sent" never skips one. A live stream reads its first page itself, then takes
 * its run's pages from the process's shared poller (api/runfeed.h), so watchers cost the database
 * nothing each. The stream ends once the run finished and its last event was written; the
 * client's reconnect then gets 204, which ends an EventSource. A stream also ends after
 * API_SSE_MAX_S, or when its client falls API_STREAM_HIGH_WATER behind (the feed does not wait for
 * one reader); the client resumes with Last-Event-ID. Event types: docs/api-streams.md. */
#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "api/runfeed.h"
#include "engine/buf.h"
#include "engine/mem.h"
#include "engine/metrics.h"

#define API_SSE_MAX_S         300.0 /* then the stream ends; clients resume with Last-Event-ID */
#define API_EVENTS_MAX_LIMIT  1000  /* ?limit of the JSON form */
#define API_STREAM_HIGH_WATER (512 * 1024) /* bytes queued for a client: an export waits, a live
                                              stream ends */

/* ------------------------------------------------------------------------------- streams -- */

typedef struct api_stream {
    api_call *call;
    ev_timer timer;
    struct ev_loop *loop;
    bool busy;                  /* a statement is in flight: its completion owns the cleanup */
    api_call_db_cb *cb;         /* of the statement in flight */
    void (*fn)(api_call *call); /* of the timer */
    void *user;
    void (*user_free)(void *user);
} api_stream;

static void stream_free(void *arg)
{
    api_stream *s = arg;
    ev_timer_stop(s->loop, &s->timer);
    if (s->user_free)
        s->user_free(s->user);
    free(s);
}

static void stream_abort(void *arg)
{
    api_call *call = arg;
    api_stream *s = call->data;
    call->req = NULL;
    if (!s->busy)
        api_call_free(call); /* waiting on the timer: nothing else will */
}

static void stream_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    api_stream *s = ENG_CONTAINER_OF(w, api_stream, timer);
    s->fn(s->call);
}

void api_stream_start(api_call *call, void *user, void (*user_free)(void *user))
{
    api_stream *s = eng_xcalloc(1, sizeof *s);
    s->call = call;
    s->loop = api_loop_ev(call->lp);
    s->user = user;
    s->user_free = user_free;
    ev_timer_init(&s->timer, stream_timer_cb, 0., 0.);
    call->data = s;
    call->data_free = stream_free;
    api_req_on_abort(call->req, stream_abort, call);
}

void *api_stream_user(const api_call *call)
{
    return ((const api_stream *)call->data)->user;
}

void api_stream_after(api_call *call, double seconds, void (*fn)(api_call *call))
{
    api_stream *s = call->data;
    s->fn = fn;
    ev_timer_stop(s->loop, &s->timer);
    ev_timer_set(&s->timer, seconds, 0.);
    ev_timer_start(s->loop, &s->timer);
}

static void stream_db_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    api_stream *s = call->data;
    s->busy = false;
    s->cb(call, err, res);
}

void api_stream_db(api_call *call, const char *sql, int nparams, const char *const *params,
                   api_call_db_cb *cb)
{
    api_stream *s = call->data;
    s->busy = true;
    s->cb = cb;
    api_call_db(call, sql, nparams, params, stream_db_cb);
}

/* ------------------------------------------------------------------------------ events -- */

/* Parses a sequence number (0 allowed); false when s is not one. */
static bool events_parse_seq(const char *s, long long *out)
{
    char *end;
    if (!s || *s < '0' || *s > '9')
        return false;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || errno == ERANGE || v < 0)
        return false;
    *out = v;
    return true;
}

/* A live stream: its first page comes from its own statement (which also answers 404, or 204 for a
 * finished run with nothing after Last-Event-ID), the rest from the loop's feed (api/runfeed.h). */
typedef struct sse_state {
    api_feed_watch w;
    api_call *call;
    struct ev_loop *loop;
    ev_timer beat;     /* heartbeat: restarted by every write */
    double started;    /* ev_now at the start */
    bool open;         /* the stream began: counted in flowd_sse_streams */
} sse_state;

static void sse_free(void *arg)
{
    sse_state *st = arg;
    if (st->open)
        eng_metrics_sse_streams(-1);
    api_feed_unwatch(&st->w);
    ev_timer_stop(st->loop, &st->beat);
    free(st);
}

/* Ends the response and frees the call (and with it the watch and the timer). */
static void sse_end(sse_state *st)
{
    api_call *call = st->call;
    api_req_stream_end(call->req);
    api_call_free(call);
}

static void sse_write(sse_state *st, const char *s, size_t n)
{
    api_req_stream_write(st->call->req, s, n);
    ev_timer_again(st->loop, &st->beat);
}

/* Whether the stream should end now, before writing more: it has run for its maximum (clients
 * resume with Last-Event-ID), or its client reads too slowly to keep up with the shared feed. */
static bool sse_expired(sse_state *st)
{
    return ev_now(st->loop) - st->started > API_SSE_MAX_S ||
           api_req_pending_bytes(st->call->req) > API_STREAM_HIGH_WATER;
}

static void sse_beat_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sse_state *st = ENG_CONTAINER_OF(w, sse_state, beat);
    if (sse_expired(st))
        sse_end(st);
    else
        sse_write(st, ": heartbeat\n\n", 13);
}

/* Writes the page's events after the stream's position; ends the stream once the run finished
 * and every event was written. Returns false when the stream ended. */
static bool sse_page(sse_state *st, const api_feed_page *page)
{
    if (sse_expired(st)) {
        sse_end(st);
        return false;
    }
    size_t i = 0;
    while (i < page->n && page->seq[i] <= st->w.after)
        i++;
    if (i < page->n) {
        sse_write(st, page->text + page->off[i], page->off[page->n] - page->off[i]);
        st->w.after = page->to;
    }
    if (page->finished && !page->full && st->w.after >= page->to) {
        sse_end(st);
        return false;
    }
    return true;
}

static void sse_feed_cb(api_feed_watch *w, const api_feed_page *page)
{
    sse_page(ENG_CONTAINER_OF(w, sse_state, w), page);
}

static void sse_first_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    sse_state *st = api_stream_user(call);
    if (err) {
        api_call_respond_err(call, err);
        return;
    }
    if (PQntuples(res) == 0 || PQgetisnull(res, 0, 0)) {
        api_call_respond_error(call, 404, "not_found", "run not found", NULL);
        return;
    }
    api_feed_page page;
    api_feed_page_parse(&page, PQgetvalue(res, 0, 0), st->w.after);
    if (page.finished && page.n == 0) {
        /* the client has every event of a finished run: 204 tells an EventSource to stop
         * reconnecting (HTML's server-sent events: any status but 200 fails the connection) */
        api_feed_page_deinit(&page);
        api_call_respond_raw(call, 204, NULL, "", 0, NULL);
        return;
    }
    static const char *const headers[] = {"Cache-Control: no-cache", "X-Accel-Buffering: no",
                                          NULL};
    api_call_stream_begin(call, 200, "text/event-stream", headers);
    st->open = true;
    eng_metrics_sse_streams(1);
    ev_timer_init(&st->beat, sse_beat_cb, 0., api_loop_sse_heartbeat_s(call->lp));
    sse_write(st, "retry: 1000\n\n", 13);
    if (sse_page(st, &page))
        api_feed_watch_start(api_loop_feed(call->lp), &st->w);
    api_feed_page_deinit(&page);
}

static void events_page_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    if (err)
        api_call_respond_err(call, err);
    else
        api_call_respond_row_json(call, 200, res, "run");
}

void api_route_run_events(api_call *call)
{
    char *end;
    long long run = strtoll(call->params[0], &end, 10);
    if (*end || run <= 0) {
        api_call_respond_error(call, 404, "not_found", "run not found", NULL);
        return;
    }
    long long after = 0;
    const char *after_q = api_req_query(call->req, "after");
    if (after_q && !events_parse_seq(after_q, &after)) {
        api_call_respond_error(call, 400, "invalid_request",
                               "must be a non-negative event sequence number", "?after");
        return;
    }
    const char *accept = api_req_header(call->req, "Accept");
    bool sse = accept && strstr(accept, "text/event-stream");
    if (!sse) {
        long long limit = API_EVENTS_MAX_LIMIT;
        const char *limit_q = api_req_query(call->req, "limit");
        if (limit_q &&
            (!events_parse_seq(limit_q, &limit) || limit < 1 || limit > API_EVENTS_MAX_LIMIT)) {
            api_call_respond_error(call, 400, "invalid_request",
                                   "must be an integer from 1 to 1000", "?limit");
            return;
        }
        char run_s[24], after_s[24], limit_s[24];
        snprintf(run_s, sizeof run_s, "%lld", run);
        snprintf(after_s, sizeof after_s, "%lld", after);
        snprintf(limit_s, sizeof limit_s, "%lld", limit);
        const char *params[] = {call->tenant_s, run_s, after_s, limit_s};
        api_call_read(call, "SELECT flowd_run_events_json($1, $2, $3, $4)", 4, params,
                      events_page_cb);
        return;
    }
    /* a reconnecting EventSource names the last event it got; it wins over ?after */
    const char *last = api_req_header(call->req, "Last-Event-ID");
    if (last && *last && !events_parse_seq(last, &after)) {
        api_call_respond_error(call, 400, "invalid_request",
                               "must be the sequence number of an event", "Last-Event-ID");
        return;
    }
    sse_state *st = eng_xcalloc(1, sizeof *st);
    st->call = call;
    st->loop = api_loop_ev(call->lp);
    st->started = ev_now(st->loop);
    st->w = (api_feed_watch){.tenant = call->tenant, .run = run, .after = after,
                             .cb = sse_feed_cb};
    ev_init(&st->beat, sse_beat_cb);
    api_stream_start(call, st, sse_free);
    char run_s[24], after_s[24], limit_s[16];
    snprintf(run_s, sizeof run_s, "%lld", run);
    snprintf(after_s, sizeof after_s, "%lld", after);
    snprintf(limit_s, sizeof limit_s, "%d", API_FEED_PAGE);
    const char *params[] = {call->tenant_s, run_s, after_s, limit_s};
    api_stream_db(call, "SELECT flowd_run_events_json($1, $2, $3, $4)", 4, params, sse_first_cb);
}
