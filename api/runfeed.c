/* api/runfeed.c: one event-log poller per process, fanned out to every loop's streams (see
 * runfeed.h).
 *
 * The hub holds one entry per watched run, with how many watchers each loop has on it and `pos`,
 * the sequence the next read starts after: the furthest every watcher has reached, or lower when
 * a watcher joined further back. Only the polling loop (index 0) frees entries, at its next poll
 * once nobody watches them, so its own callbacks may keep pointers to them across the lock.
 * A page goes to each loop with watchers of its run through that loop's inbox and ev_async; the
 * page is shared, counted by reference, and freed by the last loop done with it. */
#include "api/runfeed.h"

#include <ev.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"
#include "engine/log.h"
#include "engine/mem.h"

#define API_FEED_POLL_MIN_S 0.15 /* while events come */
#define API_FEED_POLL_MAX_S 0.5  /* backing off to this while nothing changes: a console shows a
                                    change within a second of its commit */

struct api_feed_run {
    long long tenant, run;
    long long pos;   /* the next read starts after this */
    long long asked; /* the position the statement in flight read after; -1: not in it */
    int total;       /* watchers on all loops */
    int *per_loop;   /* watchers on each loop */
    api_feed_run *next;
};

typedef struct feed_page {
    api_feed_page page;
    atomic_int refs;
} feed_page;

typedef struct feed_item { /* one page in one loop's inbox */
    feed_page *fp;
    struct feed_item *next;
} feed_item;

struct api_feed_hub {
    pthread_mutex_t mu; /* runs, every run's counts and pos, every inbox */
    int nloops;
    api_feed **feeds;   /* by loop index */
    api_feed_run *runs;
};

struct api_feed {
    api_feed_hub *hub;
    int index;
    struct ev_loop *loop;
    ev_async wake;              /* pages in the inbox, or (the poller) a new watcher */
    feed_item *inbox, **inbox_tail;
    api_feed_watch *watchers;   /* this loop's */
    /* the poller's (index 0) */
    api_loop *lp;
    eng_db *(*db)(const api_loop *lp);
    ev_timer timer;
    double interval;   /* of the next poll */
    bool busy;         /* a statement is in flight */
    atomic_bool kick;  /* a watcher joined: poll soon */
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

static void feed_page_unref(feed_page *fp)
{
    if (atomic_fetch_sub(&fp->refs, 1) == 1) {
        api_feed_page_deinit(&fp->page);
        free(fp);
    }
}

/* --------------------------------------------------------------------------- watchers -- */

/* Hands one page to this loop's watchers of its run. A callback may unwatch its own watcher, so
 * the next one is read before each call. */
static void feed_deliver(api_feed *f, const api_feed_page *page)
{
    for (api_feed_watch *w = f->watchers, *next; w; w = next) {
        next = w->next;
        if (w->run == page->run && w->tenant == page->tenant && w->after >= page->from &&
            (w->after < page->to || page->finished))
            w->cb(w, page);
    }
}

static void feed_poll(api_feed *f);

static void feed_schedule(api_feed *f, double after)
{
    ev_timer_stop(f->loop, &f->timer);
    ev_timer_set(&f->timer, after, 0.);
    ev_timer_start(f->loop, &f->timer);
}

static void feed_wake_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    api_feed *f = ENG_CONTAINER_OF(w, api_feed, wake);
    pthread_mutex_lock(&f->hub->mu);
    feed_item *items = f->inbox;
    f->inbox = NULL;
    f->inbox_tail = &f->inbox;
    pthread_mutex_unlock(&f->hub->mu);
    while (items) {
        feed_item *it = items;
        items = it->next;
        feed_deliver(f, &it->fp->page);
        feed_page_unref(it->fp);
        free(it);
    }
    if (f->index == 0 && atomic_exchange(&f->kick, false)) {
        f->interval = API_FEED_POLL_MIN_S;
        if (!f->busy && (!ev_is_active(&f->timer) ||
                         ev_timer_remaining(f->loop, &f->timer) > API_FEED_POLL_MIN_S))
            feed_schedule(f, API_FEED_POLL_MIN_S);
    }
}

void api_feed_watch_start(api_feed *f, api_feed_watch *w)
{
    api_feed_hub *hub = f->hub;
    pthread_mutex_lock(&hub->mu);
    api_feed_run *r = hub->runs;
    while (r && !(r->run == w->run && r->tenant == w->tenant))
        r = r->next;
    if (!r) {
        r = eng_xcalloc(1, sizeof *r);
        r->tenant = w->tenant;
        r->run = w->run;
        r->pos = w->after;
        r->asked = -1;
        r->per_loop = eng_xcalloc((size_t)hub->nloops, sizeof *r->per_loop);
        r->next = hub->runs;
        hub->runs = r;
    } else if (w->after < r->pos) {
        r->pos = w->after;
    }
    r->total++;
    r->per_loop[f->index]++;
    pthread_mutex_unlock(&hub->mu);
    w->feed = f;
    w->hrun = r;
    w->prev = NULL;
    w->next = f->watchers;
    if (f->watchers)
        f->watchers->prev = w;
    f->watchers = w;
    api_feed *poller = hub->feeds[0];
    atomic_store(&poller->kick, true);
    ev_async_send(poller->loop, &poller->wake);
}

void api_feed_unwatch(api_feed_watch *w)
{
    api_feed *f = w->feed;
    if (!f)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        f->watchers = w->next;
    if (w->next)
        w->next->prev = w->prev;
    pthread_mutex_lock(&f->hub->mu);
    w->hrun->total--;
    w->hrun->per_loop[f->index]--;
    pthread_mutex_unlock(&f->hub->mu);
    w->feed = NULL;
    w->hrun = NULL;
    w->prev = w->next = NULL;
}

/* ------------------------------------------------------------------------------ poller -- */

static void feed_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    feed_poll(ENG_CONTAINER_OF(w, api_feed, timer));
}

/* Moves the run's position past the page and queues the page for every loop watching the run
 * (the poller's own included); under the hub's lock. */
static void hub_dispatch(api_feed_hub *hub, api_feed_run *r, feed_page *fp)
{
    if (r->pos == fp->page.from)
        r->pos = fp->page.to;
    for (int i = 0; i < hub->nloops; i++) {
        if (!r->per_loop[i] || !hub->feeds[i])
            continue;
        api_feed *f = hub->feeds[i];
        feed_item *it = eng_xmalloc(sizeof *it);
        *it = (feed_item){.fp = fp};
        atomic_fetch_add(&fp->refs, 1);
        *f->inbox_tail = it;
        f->inbox_tail = &it->next;
        ev_async_send(f->loop, &f->wake);
    }
}

static void feed_poll_cb(void *arg, const eng_err *err, const PGresult *res)
{
    api_feed *f = arg;
    api_feed_hub *hub = f->hub;
    f->busy = false;
    bool events = false, more = false;
    if (err)
        log_warn("event stream poll failed", LOG_S("rc", eng_rc_name(err->rc)),
                 LOG_S("error", err->msg));
    for (int i = 0; !err && i < PQntuples(res); i++) {
        long long run = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        pthread_mutex_lock(&hub->mu);
        api_feed_run *r = hub->runs;
        while (r && r->run != run)
            r = r->next;
        long long asked = r ? r->asked : -1;
        pthread_mutex_unlock(&hub->mu);
        if (asked < 0 || PQgetisnull(res, i, 1))
            continue; /* joined since, or the run is gone (its watchers end on their own) */
        feed_page *fp = eng_xcalloc(1, sizeof *fp);
        api_feed_page_parse(&fp->page, PQgetvalue(res, i, 1), asked);
        fp->page.tenant = r->tenant; /* r stays: only this thread frees runs */
        fp->page.run = r->run;
        atomic_init(&fp->refs, 1);
        events = events || fp->page.n > 0;
        more = more || fp->page.full;
        pthread_mutex_lock(&hub->mu);
        hub_dispatch(hub, r, fp);
        pthread_mutex_unlock(&hub->mu);
        feed_page_unref(fp);
    }
    pthread_mutex_lock(&hub->mu);
    for (api_feed_run *r = hub->runs; r; r = r->next)
        r->asked = -1;
    pthread_mutex_unlock(&hub->mu);
    f->interval = events ? API_FEED_POLL_MIN_S : f->interval * 2;
    if (f->interval > API_FEED_POLL_MAX_S)
        f->interval = API_FEED_POLL_MAX_S;
    feed_schedule(f, more ? 0. : f->interval);
}

static void feed_poll(api_feed *f)
{
    api_feed_hub *hub = f->hub;
    if (f->busy)
        return; /* its completion schedules the next poll */
    eng_buf tenants, runs, afters;
    eng_buf_init(&tenants, 0);
    eng_buf_init(&runs, 0);
    eng_buf_init(&afters, 0);
    eng_rc rc = ENG_OK;
    pthread_mutex_lock(&hub->mu);
    for (api_feed_run **pp = &hub->runs; *pp;) {
        api_feed_run *r = *pp;
        if (!r->total) { /* nobody watches it any more */
            *pp = r->next;
            free(r->per_loop);
            free(r);
            continue;
        }
        const char *sep = tenants.len ? "," : "{";
        rc |= eng_buf_appendf(&tenants, "%s%lld", sep, r->tenant);
        rc |= eng_buf_appendf(&runs, "%s%lld", sep, r->run);
        rc |= eng_buf_appendf(&afters, "%s%lld", sep, r->pos);
        r->asked = r->pos;
        pp = &r->next;
    }
    pthread_mutex_unlock(&hub->mu);
    if (tenants.len) { /* else the next watcher's kick starts polling again */
        rc |= eng_buf_append(&tenants, "}", 1);
        rc |= eng_buf_append(&runs, "}", 1);
        rc |= eng_buf_append(&afters, "}", 1);
        char limit[16];
        snprintf(limit, sizeof limit, "%d", API_FEED_PAGE);
        const char *params[] = {tenants.ptr, runs.ptr, afters.ptr, limit};
        f->busy = true;
        eng_db_query(f->db(f->lp),
                     "SELECT w.run, flowd_run_events_json(w.tenant, w.run, w.after, $4)::text "
                     "FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) "
                     "AS w(tenant, run, after)",
                     4, params, feed_poll_cb, f);
    }
    (void)rc; /* uncapped */
    eng_buf_deinit(&tenants);
    eng_buf_deinit(&runs);
    eng_buf_deinit(&afters);
}

/* -------------------------------------------------------------------------- lifecycle -- */

api_feed_hub *api_feed_hub_new(int nloops)
{
    api_feed_hub *hub = eng_xcalloc(1, sizeof *hub);
    pthread_mutex_init(&hub->mu, NULL);
    hub->nloops = nloops;
    hub->feeds = eng_xcalloc((size_t)nloops, sizeof *hub->feeds);
    return hub;
}

void api_feed_hub_free(api_feed_hub *hub)
{
    if (!hub)
        return;
    while (hub->runs) {
        api_feed_run *r = hub->runs;
        hub->runs = r->next;
        free(r->per_loop);
        free(r);
    }
    pthread_mutex_destroy(&hub->mu);
    free(hub->feeds);
    free(hub);
}

api_feed *api_feed_new(api_feed_hub *hub, int index, struct ev_loop *loop, api_loop *lp,
                       eng_db *(*db)(const api_loop *lp))
{
    api_feed *f = eng_xcalloc(1, sizeof *f);
    f->hub = hub;
    f->index = index;
    f->loop = loop;
    f->lp = lp;
    f->db = db;
    f->interval = API_FEED_POLL_MIN_S;
    f->inbox_tail = &f->inbox;
    atomic_init(&f->kick, false);
    ev_async_init(&f->wake, feed_wake_cb);
    ev_async_start(loop, &f->wake);
    ev_init(&f->timer, feed_timer_cb);
    hub->feeds[index] = f;
    return f;
}

void api_feed_free(api_feed *f)
{
    if (!f)
        return;
    ev_async_stop(f->loop, &f->wake);
    ev_timer_stop(f->loop, &f->timer);
    while (f->inbox) {
        feed_item *it = f->inbox;
        f->inbox = it->next;
        feed_page_unref(it->fp);
        free(it);
    }
    for (api_feed_watch *w = f->watchers; w; w = w->next)
        w->feed = NULL;
    /* a statement still in flight is dropped with its connection, which the loop frees next */
    f->hub->feeds[f->index] = NULL;
    free(f);
}
