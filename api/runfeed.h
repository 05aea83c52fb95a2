/* api/runfeed.h: live run event logs for the Server-Sent Events streams of one process.
 *
 * One poller per process (on the first API loop) reads the event logs of every run any stream
 * watches in one statement (flowd_run_events_json for each), formats each run's new events as
 * SSE frames once, and hands the page to the loops whose streams watch that run; each loop gives
 * it to its own streams on its own thread. The database's cost does not follow the number of
 * watchers: a thousand dashboards on one run cost what one does. The poller runs only while
 * something is watched: every API_FEED_POLL_MIN_S while events come, backing off to
 * API_FEED_POLL_MAX_S while nothing changes.
 *
 * A page covers the events of one run after `from` up to `to`. A watcher whose own position is
 * before `from` skips the page: it lowered the run's position when it joined, and the next page
 * starts there.
 *
 * Threads: the hub is shared (one mutex); an api_feed belongs to one loop, and its watchers are
 * started, stopped and called back on that loop's thread only. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "engine/db.h"

struct ev_loop;
typedef struct api_loop api_loop;

#define API_FEED_PAGE 500 /* events per run per statement */

typedef struct api_feed_page {
    long long tenant, run;
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

typedef struct api_feed_hub api_feed_hub;
typedef struct api_feed api_feed;
typedef struct api_feed_watch api_feed_watch;
typedef struct api_feed_run api_feed_run;

/* Called on the watcher's loop with every page of the watched run that may concern the watcher
 * (its position is in [from, to), or the page says the run finished). It may call
 * api_feed_unwatch on w. */
typedef void api_feed_cb(api_feed_watch *w, const api_feed_page *page);

struct api_feed_watch {
    long long tenant, run;
    long long after; /* the last sequence this watcher has; the callback moves it */
    api_feed_cb *cb;
    api_feed *feed;     /* NULL while not watching */
    api_feed_run *hrun; /* its run in the hub */
    api_feed_watch *prev, *next;
};

/* The process's hub for nloops loops. Free it after every loop's feed. */
api_feed_hub *api_feed_hub_new(int nloops);
void api_feed_hub_free(api_feed_hub *hub); /* NULL-safe */
/* Loop `index`'s side (index 0 also polls, with db(lp) picking the connection). Every loop of the
 * hub must be stopped before any feed is freed; watchers must be gone (streams aborted) first. */
api_feed *api_feed_new(api_feed_hub *hub, int index, struct ev_loop *loop, api_loop *lp,
                       eng_db *(*db)(const api_loop *lp));
void api_feed_free(api_feed *f); /* NULL-safe */
/* Starts delivering pages of w->run after w->after (tenant, run, after and cb set by the caller). */
void api_feed_watch_start(api_feed *f, api_feed_watch *w);
void api_feed_unwatch(api_feed_watch *w);
