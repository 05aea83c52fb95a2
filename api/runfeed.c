/* api/runfeed.c: one event-log poller per API loop, fanned out to its streams (see runfeed.h).
 *
 * Feeds (one per watched run) sit on a list; a feed's `pos` is the sequence its next read starts
 * after: the furthest every watcher has reached, or lower when a watcher joined further back.
 * A feed left without watchers is dropped at the next poll. One statement is in flight at most. */
#include "api/runfeed.h"

#include <ev.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"
#include "engine/log.h"
#include "engine/mem.h"

#define API_FEED_POLL_MIN_S 0.15 /* while events come */
#define API_FEED_POLL_MAX_S 1.0  /* backing off to this while nothing changes */

struct api_feed_run {
    long long tenant, run;
    long long pos;   /* the next read starts after this */
    long long asked; /* the position the statement in flight read after; -1: not in it */
    api_feed_watch *watchers;
    api_feed_run *next;
};

struct api_feed {
    struct ev_loop *loop;
    api_loop *lp;
    eng_db *(*db)(const api_loop *lp);
    ev_timer timer;
    double interval; /* of the next poll */
    bool busy;       /* a statement is in flight */
    api_feed_run *runs;
};

/* ------------------------------------------------------------------------------- pages -- */

void api_feed_page_parse(api_feed_page *page, const char *json, long long from)
{
    memset(page, 0, sizeof *page);
    page->from = page->to = from;
    json_t *doc = json_loads(json, 0, NULL);
    const json_t *events = json_object_get(doc, "events");
    page->finished = json_is_true(json_object_get(doc, "finished"));
    page->n = json_array_size(events);
    page->full = page->n >= API_FEED_PAGE;
    page->seq = eng_xcalloc(page->n + 1, sizeof *page->seq);
    page->off = eng_xcalloc(page->n + 1, sizeof *page->off);
    eng_buf out;
    eng_buf_init(&out, 0);
    size_t i;
    const json_t *ev;
    json_array_foreach (events, i, ev) {
        long long seq = (long long)json_integer_value(json_object_get(ev, "seq"));
        char *data = json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER);
        page->seq[i] = seq;
        page->off[i] = out.len;
        eng_rc rc = eng_buf_appendf(&out, "id: %lld\nevent: %s\ndata: %s\n\n", seq,
                                    json_string_value(json_object_get(ev, "type")), data);
        (void)rc; /* uncapped */
        free(data);
        page->to = seq;
    }
    page->off[page->n] = out.len;
    page->text = eng_buf_take(&out, NULL);
    json_decref(doc);
}

void api_feed_page_deinit(api_feed_page *page)
{
    free(page->seq);
    free(page->off);
    free(page->text);
}

/* ------------------------------------------------------------------------------- feeds -- */

static void feed_poll(api_feed *f);

static void feed_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    feed_poll(ENG_CONTAINER_OF(w, api_feed, timer));
}

static void feed_schedule(api_feed *f, double after)
{
    ev_timer_stop(f->loop, &f->timer);
    ev_timer_set(&f->timer, after, 0.);
    ev_timer_start(f->loop, &f->timer);
}

api_feed *api_feed_new(struct ev_loop *loop, api_loop *lp, eng_db *(*db)(const api_loop *lp))
{
    api_feed *f = eng_xcalloc(1, sizeof *f);
    f->loop = loop;
    f->lp = lp;
    f->db = db;
    f->interval = API_FEED_POLL_MIN_S;
    ev_init(&f->timer, feed_timer_cb);
    return f;
}

void api_feed_free(api_feed *f)
{
    if (!f)
        return;
    ev_timer_stop(f->loop, &f->timer);
    while (f->runs) {
        api_feed_run *r = f->runs;
        f->runs = r->next;
        for (api_feed_watch *w = r->watchers; w; w = w->next)
            w->feed = NULL;
        free(r);
    }
    /* a statement still in flight is dropped with its connection, which the loop frees next */
    free(f);
}

void api_feed_watch_start(api_feed *f, api_feed_watch *w)
{
    api_feed_run *r = f->runs;
    while (r && !(r->run == w->run && r->tenant == w->tenant))
        r = r->next;
    if (!r) {
        r = eng_xcalloc(1, sizeof *r);
        r->tenant = w->tenant;
        r->run = w->run;
        r->pos = w->after;
        r->asked = -1;
        r->next = f->runs;
        f->runs = r;
    } else if (w->after < r->pos) {
        r->pos = w->after;
    }
    w->feed = r;
    w->prev = NULL;
    w->next = r->watchers;
    if (r->watchers)
        r->watchers->prev = w;
    r->watchers = w;
    f->interval = API_FEED_POLL_MIN_S;
    if (!f->busy && (!ev_is_active(&f->timer) ||
                     ev_timer_remaining(f->loop, &f->timer) > API_FEED_POLL_MIN_S))
        feed_schedule(f, API_FEED_POLL_MIN_S);
}

void api_feed_unwatch(api_feed_watch *w)
{
    api_feed_run *r = w->feed;
    if (!r)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        r->watchers = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->feed = NULL;
    w->prev = w->next = NULL;
}

/* Hands one run's page to its watchers. A callback may unwatch its own watcher, so the next one
 * is read before each call; the feed itself stays until the next poll drops it. */
static void feed_deliver(api_feed_run *r, const api_feed_page *page)
{
    if (r->pos == page->from)
        r->pos = page->to;
    for (api_feed_watch *w = r->watchers, *next; w; w = next) {
        next = w->next;
        if (w->after >= page->from && (w->after < page->to || page->finished))
            w->cb(w, page);
    }
}

static void feed_poll_cb(void *arg, const eng_err *err, const PGresult *res)
{
    api_feed *f = arg;
    f->busy = false;
    bool events = false, more = false;
    if (err) {
        log_warn("event stream poll failed", LOG_S("rc", eng_rc_name(err->rc)),
                 LOG_S("error", err->msg));
    } else {
        for (int i = 0; i < PQntuples(res); i++) {
            long long run = strtoll(PQgetvalue(res, i, 0), NULL, 10);
            api_feed_run *r = f->runs;
            while (r && r->run != run)
                r = r->next;
            if (!r || r->asked < 0 || PQgetisnull(res, i, 1))
                continue; /* joined since, or the run is gone (its watchers end on their own) */
            api_feed_page page;
            api_feed_page_parse(&page, PQgetvalue(res, i, 1), r->asked);
            events = events || page.n > 0;
            more = more || page.full;
            feed_deliver(r, &page);
            api_feed_page_deinit(&page);
        }
    }
    for (api_feed_run *r = f->runs; r; r = r->next)
        r->asked = -1;
    f->interval = events ? API_FEED_POLL_MIN_S : f->interval * 2;
    if (f->interval > API_FEED_POLL_MAX_S)
        f->interval = API_FEED_POLL_MAX_S;
    feed_schedule(f, more ? 0. : f->interval);
}

static void feed_poll(api_feed *f)
{
    for (api_feed_run **pp = &f->runs; *pp;) { /* drop the feeds nobody watches any more */
        api_feed_run *r = *pp;
        if (!r->watchers) {
            *pp = r->next;
            free(r);
        } else {
            pp = &r->next;
        }
    }
    if (!f->runs || f->busy)
        return; /* the next watcher or the statement in flight schedules the next poll */
    eng_buf tenants, runs, afters;
    eng_buf_init(&tenants, 0);
    eng_buf_init(&runs, 0);
    eng_buf_init(&afters, 0);
    eng_rc rc = ENG_OK;
    for (api_feed_run *r = f->runs; r; r = r->next) {
        const char *sep = r == f->runs ? "{" : ",";
        rc |= eng_buf_appendf(&tenants, "%s%lld", sep, r->tenant);
        rc |= eng_buf_appendf(&runs, "%s%lld", sep, r->run);
        rc |= eng_buf_appendf(&afters, "%s%lld", sep, r->pos);
        r->asked = r->pos;
    }
    rc |= eng_buf_append(&tenants, "}", 1);
    rc |= eng_buf_append(&runs, "}", 1);
    rc |= eng_buf_append(&afters, "}", 1);
    (void)rc; /* uncapped */
    char limit[16];
    snprintf(limit, sizeof limit, "%d", API_FEED_PAGE);
    const char *params[] = {tenants.ptr, runs.ptr, afters.ptr, limit};
    f->busy = true;
    eng_db_query(f->db(f->lp),
                 "SELECT w.run, flowd_run_events_json(w.tenant, w.run, w.after, $4)::text "
                 "FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS w(tenant, run, after)",
                 4, params, feed_poll_cb, f);
    eng_buf_deinit(&tenants);
    eng_buf_deinit(&runs);
    eng_buf_deinit(&afters);
}
