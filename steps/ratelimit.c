/* steps/ratelimit.c: client side of the database rate limits (see ratelimit.h). */
#include "steps/ratelimit.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/db.h"
#include "engine/mem.h"

#define RL_CACHE_MAX 1024

typedef struct unlimited {
    int64_t tenant;
    char *name;
    int64_t expires_ms; /* monotonic */
} unlimited;

struct rl_take {
    rl_cb *cb;
    void *arg;
    int64_t tenant;
    char *name;
    bool cancelled;
};

static pthread_mutex_t rl_mu = PTHREAD_MUTEX_INITIALIZER;
static unlimited *unl;
static size_t nunl, unl_cap;

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool known_unlimited(int64_t tenant, const char *name)
{
    int64_t now = mono_ms();
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
    int64_t now = mono_ms();
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

static void take_done(void *arg, const eng_err *err, const PGresult *res)
{
    rl_take *t = arg;
    int64_t wait = 0;
    if (!err && res && PQntuples(res) == 1) {
        wait = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        if (strcmp(PQgetvalue(res, 0, 1), "f") == 0)
            remember_unlimited(t->tenant, t->name);
    }
    if (!t->cancelled)
        t->cb(t->arg, err, wait);
    free(t->name);
    free(t);
}

rl_take *rl_take_start(struct eng_db *db, int64_t tenant, const char *name, int requests,
                       int64_t tokens, rl_cb *cb, void *arg)
{
    if (known_unlimited(tenant, name)) {
        cb(arg, NULL, 0);
        return NULL;
    }
    rl_take *t = eng_xcalloc(1, sizeof *t);
    t->cb = cb;
    t->arg = arg;
    t->tenant = tenant;
    t->name = eng_xstrdup(name);
    char ten[24], req[24], tok[24];
    snprintf(ten, sizeof ten, "%lld", (long long)tenant);
    snprintf(req, sizeof req, "%d", requests);
    snprintf(tok, sizeof tok, "%lld", (long long)tokens);
    const char *params[] = {ten, name, req, tok};
    eng_db_query(db, "SELECT wait_ms, limited FROM flowd_rl_take($1, $2, $3, $4)", 4, params,
                 take_done, t);
    return t;
}

void rl_take_cancel(rl_take *t)
{
    if (t)
        t->cancelled = true; /* take_done still owns and frees it */
}

static void adjust_done(void *arg, const eng_err *err, const PGresult *res)
{
    (void)arg;
    (void)err;
    (void)res;
}

void rl_adjust(struct eng_db *db, int64_t tenant, const char *name, int64_t delta)
{
    if (delta == 0 || known_unlimited(tenant, name))
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
