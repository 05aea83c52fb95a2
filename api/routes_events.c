/* api/routes_events.c: a run's event log, as one JSON page or as a live Server-Sent Events stream,
 * and the stream plumbing (api_stream_*) that the exports share.
 *
 * A stream polls flowd_run_events_json every API_SSE_POLL_S: the function reads the events after
 * the last sequence sent and the run's state in one snapshot, so "finished and nothing left" means
 * every event was sent. Events of one run are written by transactions that lock the run row first,
 * so their ids commit in order and "after the last id sent" never skips one. */
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "engine/buf.h"
#include "engine/mem.h"

#define API_SSE_POLL_S        0.15  /* poll interval of a live stream */
#define API_SSE_HEARTBEAT_S   15.0  /* a comment line this often keeps proxies from timing out */
#define API_SSE_MAX_S         300.0 /* then the stream ends; clients resume with Last-Event-ID */
#define API_SSE_PAGE          500   /* events per statement */
#define API_EVENTS_MAX_LIMIT  1000  /* ?limit of the JSON form */
#define API_STREAM_HIGH_WATER (512 * 1024) /* bytes queued for the client before a stream waits */

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
    if (!s || !*s || *s == '-' || *s == '+')
        return false;
    long long v = strtoll(s, &end, 10);
    if (*end || v < 0)
        return false;
    *out = v;
    return true;
}

typedef struct sse_state {
    char tenant[24];
    char run[24];
    long long after;   /* last sequence sent */
    bool begun;        /* response head written */
    double started;    /* ev_now at the start */
    double last_write; /* ev_now of the last bytes written */
} sse_state;

static void sse_poll(api_call *call);

static void sse_write(api_call *call, const char *s, size_t n)
{
    sse_state *st = api_stream_user(call);
    api_req_stream_write(call->req, s, n);
    st->last_write = ev_now(api_loop_ev(call->lp));
}

/* Ends the response and frees the call. */
static void sse_end(api_call *call)
{
    api_req_stream_end(call->req);
    api_call_free(call);
}

static void sse_page_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    sse_state *st = api_stream_user(call);
    if (err || PQntuples(res) == 0 || PQgetisnull(res, 0, 0)) {
        if (st->begun) {
            sse_end(call); /* the client resumes with Last-Event-ID */
        } else if (err) {
            api_call_respond_err(call, err);
        } else {
            api_call_respond_error(call, 404, "not_found", "run not found", NULL);
        }
        return;
    }
    json_t *page = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    if (!st->begun) {
        static const char *const headers[] = {"Cache-Control: no-cache", "X-Accel-Buffering: no",
                                              NULL};
        api_call_stream_begin(call, 200, "text/event-stream", headers);
        st->begun = true;
        sse_write(call, "retry: 1000\n\n", 13);
    }
    const json_t *events = json_object_get(page, "events");
    size_t i;
    const json_t *ev;
    eng_buf out;
    eng_buf_init(&out, 0);
    json_array_foreach (events, i, ev) {
        long long seq = (long long)json_integer_value(json_object_get(ev, "seq"));
        char *data = json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER);
        char *frame = eng_xasprintf("id: %lld\nevent: %s\ndata: %s\n\n", seq,
                                    json_string_value(json_object_get(ev, "type")), data);
        eng_rc rc = eng_buf_append(&out, frame, strlen(frame));
        (void)rc; /* uncapped */
        free(frame);
        free(data);
        st->after = seq;
    }
    if (out.len)
        sse_write(call, out.ptr, out.len);
    eng_buf_deinit(&out);
    size_t n = json_array_size(events);
    bool finished = json_is_true(json_object_get(page, "finished"));
    json_decref(page);
    double now = ev_now(api_loop_ev(call->lp));
    if (n == 0 && finished) {
        sse_end(call);
        return;
    }
    if (now - st->started > API_SSE_MAX_S) {
        sse_end(call);
        return;
    }
    if (now - st->last_write > API_SSE_HEARTBEAT_S)
        sse_write(call, ": heartbeat\n\n", 13);
    bool full = n == API_SSE_PAGE;
    bool backlog = api_req_pending_bytes(call->req) > API_STREAM_HIGH_WATER;
    if (full && !backlog)
        sse_poll(call);
    else
        api_stream_after(call, API_SSE_POLL_S, sse_poll);
}

static void sse_poll(api_call *call)
{
    sse_state *st = api_stream_user(call);
    char after[24], limit[16];
    snprintf(after, sizeof after, "%lld", st->after);
    snprintf(limit, sizeof limit, "%d", API_SSE_PAGE);
    const char *params[] = {st->tenant, st->run, after, limit};
    api_stream_db(call, "SELECT flowd_run_events_json($1, $2, $3, $4)", 4, params, sse_page_cb);
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
        api_call_db(call, "SELECT flowd_run_events_json($1, $2, $3, $4)", 4, params,
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
    snprintf(st->tenant, sizeof st->tenant, "%s", call->tenant_s);
    snprintf(st->run, sizeof st->run, "%lld", run);
    st->after = after;
    api_stream_start(call, st, free);
    st->started = st->last_write = ev_now(api_loop_ev(call->lp));
    sse_poll(call);
}
