/* api/ratelimit.c: see ratelimit.h. */
#include "api/ratelimit.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/clock.h"
#include "engine/mem.h"

#define RL_BUCKETS 256 /* hash chains; tenants are few per process */

typedef struct rl_tenant {
    struct rl_tenant *next;
    long long id;
    double rate, burst;  /* tokens per second, bucket size */
    double tokens;
    int64_t last_ms;     /* tokens were last topped up at this time */
    int64_t read_ms;     /* settings were last read (or last failed to be read) at this time */
    bool known;          /* settings were read at least once */
    bool reading;        /* one caller is reading the settings */
} rl_tenant;

struct api_ratelimit {
    pthread_mutex_t mu;
    double rate, burst; /* defaults */
    rl_tenant *chains[RL_BUCKETS];
};

api_ratelimit *api_ratelimit_new(double rate_per_s, double burst)
{
    api_ratelimit *rl = eng_xcalloc(1, sizeof *rl);
    pthread_mutex_init(&rl->mu, NULL);
    rl->rate = rate_per_s > 0 ? rate_per_s : API_RATE_DEFAULT_PER_S;
    rl->burst = burst > 0 ? burst : API_RATE_DEFAULT_BURST;
    return rl;
}

void api_ratelimit_free(api_ratelimit *rl)
{
    if (!rl)
        return;
    for (size_t i = 0; i < RL_BUCKETS; i++)
        while (rl->chains[i]) {
            rl_tenant *t = rl->chains[i];
            rl->chains[i] = t->next;
            free(t);
        }
    pthread_mutex_destroy(&rl->mu);
    free(rl);
}

/* Under rl->mu. Creates the tenant with the default settings and a full bucket. */
static rl_tenant *rl_find(api_ratelimit *rl, long long id, int64_t now_ms)
{
    rl_tenant **head = &rl->chains[(unsigned long long)id % RL_BUCKETS];
    for (rl_tenant *t = *head; t; t = t->next)
        if (t->id == id)
            return t;
    rl_tenant *t = eng_xcalloc(1, sizeof *t);
    *t = (rl_tenant){.next = *head, .id = id, .rate = rl->rate, .burst = rl->burst,
                     .tokens = rl->burst, .last_ms = now_ms};
    *head = t;
    return t;
}

static void rl_refill(rl_tenant *t, int64_t now_ms)
{
    if (now_ms > t->last_ms) {
        t->tokens += (double)(now_ms - t->last_ms) / 1000.0 * t->rate;
        if (t->tokens > t->burst)
            t->tokens = t->burst;
        t->last_ms = now_ms;
    }
}

api_rl_verdict api_ratelimit_take(api_ratelimit *rl, long long tenant, int64_t now_ms,
                                  int *retry_after_s)
{
    pthread_mutex_lock(&rl->mu);
    rl_tenant *t = rl_find(rl, tenant, now_ms);
    bool stale = !t->known || now_ms - t->read_ms >= API_RATE_REFRESH_MS;
    if (stale && !t->reading) {
        t->reading = true;
        pthread_mutex_unlock(&rl->mu);
        return API_RL_FETCH;
    }
    rl_refill(t, now_ms);
    api_rl_verdict v = API_RL_ALLOW;
    if (t->tokens >= 1.0) {
        t->tokens -= 1.0;
    } else {
        v = API_RL_DENY;
        double wait_s = (1.0 - t->tokens) / t->rate;
        *retry_after_s = wait_s < 1.0 ? 1 : (int)ceil(wait_s);
    }
    pthread_mutex_unlock(&rl->mu);
    return v;
}

void api_ratelimit_configure(api_ratelimit *rl, long long tenant, double rate_per_s, double burst,
                             int64_t now_ms)
{
    pthread_mutex_lock(&rl->mu);
    rl_tenant *t = rl_find(rl, tenant, now_ms);
    rl_refill(t, now_ms);
    t->rate = rate_per_s > 0 ? rate_per_s : rl->rate;
    t->burst = burst > 0 ? burst : rl->burst;
    if (t->tokens > t->burst)
        t->tokens = t->burst;
    t->known = true;
    t->reading = false;
    t->read_ms = now_ms;
    pthread_mutex_unlock(&rl->mu);
}

void api_ratelimit_fetch_failed(api_ratelimit *rl, long long tenant, int64_t now_ms)
{
    pthread_mutex_lock(&rl->mu);
    rl_tenant *t = rl_find(rl, tenant, now_ms);
    t->known = true; /* decide with what we have rather than read again on every request */
    t->reading = false;
    t->read_ms = now_ms;
    pthread_mutex_unlock(&rl->mu);
}

/* ------------------------------------------------------------------------------- glue -- */

typedef struct rl_wait {
    api_ratelimit *rl;
    long long tenant;
    void (*cont)(api_call *call, const void *arg);
    const void *arg;
    bool answered; /* the settings query came back */
} rl_wait;

/* A call freed while its settings query is out (client gone) must not leave the tenant marked as
 * being read forever. */
static void rl_wait_free(void *data)
{
    rl_wait *w = data;
    if (!w->answered)
        api_ratelimit_fetch_failed(w->rl, w->tenant, eng_clock_mono_ms());
    free(w);
}

static void rl_deny(api_call *call, int retry_after_s)
{
    char header[48], body[160];
    snprintf(header, sizeof header, "Retry-After: %d", retry_after_s);
    int n = snprintf(body, sizeof body,
                     "{\"error\": {\"code\": \"rate_limited\", \"message\": \"too many requests: "
                     "retry after %d s\"}}",
                     retry_after_s);
    const char *const headers[] = {header, NULL};
    api_call_respond_raw(call, 429, "application/json", body, (size_t)n, headers);
}

static double rl_col(const PGresult *res, int col)
{
    return PQgetisnull(res, 0, col) ? 0 : strtod(PQgetvalue(res, 0, col), NULL);
}

static void rl_settings_cb(api_call *call, const eng_err *err, const PGresult *res)
{
    rl_wait *w = call->data;
    w->answered = true;
    int64_t now = eng_clock_mono_ms();
    if (err || PQntuples(res) != 1)
        api_ratelimit_fetch_failed(w->rl, w->tenant, now);
    else
        api_ratelimit_configure(w->rl, w->tenant, rl_col(res, 0), rl_col(res, 1), now);
    void (*cont)(api_call *, const void *) = w->cont;
    const void *arg = w->arg;
    api_ratelimit *rl = w->rl;
    free(w);
    call->data = NULL;
    call->data_free = NULL;
    int retry_after = 1;
    switch (api_ratelimit_take(rl, call->tenant, now, &retry_after)) {
    case API_RL_DENY:
        rl_deny(call, retry_after);
        return;
    case API_RL_FETCH: /* only after a read that lasted longer than the refresh period */
    case API_RL_ALLOW:
        cont(call, arg);
        return;
    }
}

bool api_ratelimit_admit(api_ratelimit *rl, api_call *call,
                         void (*cont)(api_call *call, const void *arg), const void *arg)
{
    int retry_after = 1;
    switch (api_ratelimit_take(rl, call->tenant, eng_clock_mono_ms(), &retry_after)) {
    case API_RL_ALLOW:
        return true;
    case API_RL_DENY:
        rl_deny(call, retry_after);
        return false;
    case API_RL_FETCH:
        break;
    }
    rl_wait *w = eng_xcalloc(1, sizeof *w);
    *w = (rl_wait){.rl = rl, .tenant = call->tenant, .cont = cont, .arg = arg};
    call->data = w;
    call->data_free = rl_wait_free;
    snprintf(call->tenant_s, sizeof call->tenant_s, "%lld", call->tenant);
    const char *params[] = {call->tenant_s};
    api_call_db(call, "SELECT rate_per_s, rate_burst FROM tenants WHERE id = $1", 1, params,
                rl_settings_cb);
    return false;
}
