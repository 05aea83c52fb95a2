/* api/runfeed.h: live run event logs for the Server-Sent Events streams of one API loop.
 *
 * One poller per loop reads the event logs of every run its streams watch in one statement
 * (flowd_run_events_json for each), formats each run's new events as SSE frames once, and hands
 * the page to every stream of that run. The database's cost follows the number of loops, not the
 * number of watchers: a thousand dashboards on one run cost what one does. The poller runs only
 * while something is watched: every API_FEED_POLL_MIN_S while events come, backing off to
 * API_FEED_POLL_MAX_S while nothing changes.
 *
 * A page covers the events of one run after `from` up to `to`. A watcher whose own position is
 * before `from` skips the page: it lowered the feed's position when it joined, and the next page
 * starts there. Everything here is loop-thread only. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "engine/db.h"

struct ev_loop;
typedef struct api_loop api_loop;

#define API_FEED_PAGE 500 /* events per run per statement */

typedef struct api_feed_page {
    long long from; /* the events follow this sequence */
    long long to;   /* the last event's sequence; from when there is none */
    bool finished;  /* the run had finished in the snapshot the events were read in */
    bool full;      /* the page holds API_FEED_PAGE events: more may follow */
    size_t n;       /* events */
    long long *seq; /* n sequences, ascending */
    size_t *off;    /* n + 1 offsets into text: event i's frame is text[off[i], off[i + 1]) */
    char *text;     /* "id: N\nevent: TYPE\ndata: {...}\n\n" per event */
} api_feed_page;

/* Fills page from flowd_run_events_json's answer (JSON text) to a read after `from`. */
void api_feed_page_parse(api_feed_page *page, const char *json, long long from);
void api_feed_page_deinit(api_feed_page *page);

typedef struct api_feed api_feed;
typedef struct api_feed_watch api_feed_watch;
typedef struct api_feed_run api_feed_run;

/* Called with every page of the watched run that may concern the watcher (its position is in
 * [from, to), or the page says the run finished). It may call api_feed_unwatch on w. */
typedef void api_feed_cb(api_feed_watch *w, const api_feed_page *page);

struct api_feed_watch {
    long long tenant, run;
    long long after; /* the last sequence this watcher has; the callback moves it */
    api_feed_cb *cb;
    api_feed_run *feed; /* NULL while not watching */
    api_feed_watch *prev, *next;
};

/* db(lp) picks the connection for each poll. */
api_feed *api_feed_new(struct ev_loop *loop, api_loop *lp, eng_db *(*db)(const api_loop *lp));
/* Watchers must be gone (their streams aborted) before. NULL-safe. */
void api_feed_free(api_feed *f);
/* Starts delivering pages of w->run after w->after (tenant, run, after and cb set by the caller). */
void api_feed_watch_start(api_feed *f, api_feed_watch *w);
void api_feed_unwatch(api_feed_watch *w);
