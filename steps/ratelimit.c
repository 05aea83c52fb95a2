/* steps/ratelimit.c: client side of the database rate limits (see ratelimit.h). */
#include "steps/ratelimit.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/clock.h"
#include "engine/db.h"
#include "engine/mem.h"
#include "engine/metrics.h"

#define RL_CACHE_MAX 1024

typedef struct unlimited {
    int64_t tenant;
    char *name;
    int64_t expires_ms; /* monotonic */
} unlimited;

struct rl_take {
    rl_cb *cb;
    void *arg;
    struct eng_db *db;
    int64_t tenant;
    char *name;
    int requests;
    int64_t tokens;
    bool cancelled;
    struct probe *probe; /* set on the take whose query decides for its waiters */
    rl_take *next;       /* in its probe's waiters */
};

/* The first take of a name not known to be unlimited, in flight on one connection. Takes of the
 * same name on that connection wait for its answer instead of each sending a query: a burst of
 * thousands of steps would otherwise queue thousands of round trips on the worker's connection
 * just to learn, once, that the name has no limit. */
typedef struct probe {
    struct eng_db *db;
    int64_t tenant;
    char *name;
    rl_take *owner;       /* the take whose query is out */
    rl_take *head, *tail; /* waiters, in order of arrival */
    struct probe *next;
} probe;

/* A connection's probes, in its slot (eng_db_slot): freed with it. */
typedef struct rl_conn {
    probe *probes;
} rl_conn;

static const char conn_key; /* the slot's key: its address */

static pthread_mutex_t rl_mu = PTHREAD_MUTEX_INITIALIZER; /* guards the unlimited cache */
static unlimited *unl;
static size_t nunl, unl_cap;

bool rl_known_unlimited(int64_t tenant, const char *name)
{
    int64_t now = eng_clock_mono_ms();
    bool found = false;
    pthread_mutex_lock(&rl_mu);
    for (size_t i = 0; i < nunl; i++) {
        if (unl[i].tenant == tenant && strcmp(unl[i].name, name) == 0) {
            if (unl[i].expires_ms > now) {
                found = true;
            } else {
                free(unl[i].name);
                unl[i] = unl[--nunl];
            }
            break;
        }
    }
    pthread_mutex_unlock(&rl_mu);
    return found;
}

static void remember_unlimited(int64_t tenant, const char *name)
{
    int64_t now = eng_clock_mono_ms();
    pthread_mutex_lock(&rl_mu);
    size_t i = 0;
    while (i < nunl && !(unl[i].tenant == tenant && strcmp(unl[i].name, name) == 0))
        i++;
    if (i == nunl) {
        if (nunl >= RL_CACHE_MAX) {
            for (size_t j = 0; j < nunl; j++)
                free(unl[j].name);
            nunl = i = 0;
        }
        if (nunl == unl_cap) {
            unl_cap = unl_cap ? unl_cap * 2 : 16;
            unl = eng_xrealloc(unl, unl_cap * sizeof *unl);
        }
        unl[nunl++] = (unlimited){tenant, eng_xstrdup(name), 0};
    }
    unl[i].expires_ms = now + RL_NEGATIVE_TTL_MS;
    pthread_mutex_unlock(&rl_mu);
}

void rl_cache_clear(void)
{
    pthread_mutex_lock(&rl_mu);
    for (size_t i = 0; i < nunl; i++)
        free(unl[i].name);
    free(unl);
    unl = NULL;
    nunl = unl_cap = 0;
    pthread_mutex_unlock(&rl_mu);
}

static void take_send(rl_take *t);

static void take_free(rl_take *t)
{
    free(t->name);
    free(t);
}

/* The connection is going (eng_db_free) and drops the probes' queries unanswered: their takes,
 * cancelled by then or never to be answered, go with it. */
static void conn_free(void *data)
{
    rl_conn *rc = data;
    for (probe *p = rc->probes, *pn; p; p = pn) {
        pn = p->next;
        take_free(p->owner);
        for (rl_take *w = p->head, *wn; w; w = wn) {
            wn = w->next;
            take_free(w);
        }
        free(p->name);
        free(p);
    }
    free(rc);
}

static rl_conn *conn_of(struct eng_db *db)
{
    rl_conn *rc = eng_db_slot(db, &conn_key);
    if (!rc) {
        rc = eng_xcalloc(1, sizeof *rc);
        eng_db_slot_set(db, &conn_key, rc, conn_free);
    }
    return rc;
}

static void probe_unlink(probe *p)
{
    for (probe **pp = &conn_of(p->db)->probes; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            return;
        }
    }
}

/* Hands an unlinked probe's waiters the answer and frees it: none of them needs budget when the
 * name has no limit; otherwise each asks for its own. */
static void probe_settle(probe *p, bool unlimited_now)
{
    rl_take *w = p->head;
    free(p->name);
    free(p);
    while (w) {
        rl_take *next = w->next;
        if (w->cancelled) {
            take_free(w);
        } else if (unlimited_now) {
            w->cb(w->arg, NULL, 0);
            take_free(w);
        } else {
            w->next = NULL;
            take_send(w);
        }
        w = next;
    }
}

static void take_done(void *arg, const eng_err *err, const PGresult *res)
{
    rl_take *t = arg;
    int64_t wait = 0;
    bool unlimited_now = false;
    if (!err && res && PQntuples(res) == 1) {
        wait = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        unlimited_now = strcmp(PQgetvalue(res, 0, 1), "f") == 0;
        if (unlimited_now)
            remember_unlimited(t->tenant, t->name);
    }
    probe *p = t->probe;
    if (p) /* takes starting from the callbacks below send their own query or hit the cache */
        probe_unlink(p);
    if (wait > 0)
        eng_metrics_rate_limit_wait(t->name);
    if (!t->cancelled)
        t->cb(t->arg, err, wait);
    take_free(t);
    if (p)
        probe_settle(p, unlimited_now);
}

static void take_send(rl_take *t)
{
    char ten[24], req[24], tok[24];
    snprintf(ten, sizeof ten, "%lld", (long long)t->tenant);
    snprintf(req, sizeof req, "%d", t->requests);
    snprintf(tok, sizeof tok, "%lld", (long long)t->tokens);
    const char *params[] = {ten, t->name, req, tok};
    eng_db_query(t->db, "SELECT wait_ms, limited FROM flowd_rl_take($1, $2, $3, $4)", 4, params,
                 take_done, t);
}

bool rl_take_start(struct eng_db *db, int64_t tenant, const char *name, int requests,
                   int64_t tokens, rl_cb *cb, void *arg, rl_take **pending)
{
    *pending = NULL;
    if (rl_known_unlimited(tenant, name))
        return true;
    rl_take *t = eng_xcalloc(1, sizeof *t);
    *t = (rl_take){.cb = cb, .arg = arg, .db = db, .tenant = tenant, .name = eng_xstrdup(name),
                   .requests = requests, .tokens = tokens};
    rl_conn *rc = conn_of(db);
    probe *p = rc->probes;
    while (p && !(p->tenant == tenant && strcmp(p->name, name) == 0))
        p = p->next;
    if (p) {
        if (p->tail)
            p->tail->next = t;
        else
            p->head = t;
        p->tail = t;
    } else {
        p = eng_xcalloc(1, sizeof *p);
        *p = (probe){.db = db, .tenant = tenant, .name = eng_xstrdup(name), .owner = t,
                     .next = rc->probes};
        rc->probes = p;
        t->probe = p;
        take_send(t);
    }
    *pending = t;
    return false;
}

void rl_take_cancel(rl_take *t)
{
    if (t)
        t->cancelled = true; /* take_done or its probe's answer still owns and frees it */
}

static void adjust_done(void *arg, const eng_err *err, const PGresult *res)
{
    (void)arg;
    (void)err;
    (void)res;
}

void rl_adjust(struct eng_db *db, int64_t tenant, const char *name, int64_t delta)
{
    if (delta == 0 || rl_known_unlimited(tenant, name))
        return;
    char ten[24], d[24];
    snprintf(ten, sizeof ten, "%lld", (long long)tenant);
    snprintf(d, sizeof d, "%lld", (long long)delta);
    const char *params[] = {ten, name, d};
    eng_db_query(db, "SELECT flowd_rl_adjust($1, $2, $3)", 3, params, adjust_done, NULL);
}

int64_t rl_wake_at(int64_t now_ms, int64_t wait_ms)
{
    int64_t span = wait_ms / 10;
    if (span > 1000)
        span = 1000;
    int64_t jitter = span > 0 ? (int64_t)((unsigned)rand() % (unsigned)(span + 1)) : 0;
    return now_ms + wait_ms + jitter;
}
