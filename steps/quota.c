/* steps/quota.c: the quota check before a call (see quota.h). */
#include "steps/quota.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/clock.h"
#include "engine/db.h"
#include "engine/log.h"
#include "engine/mem.h"

#define QUOTA_CACHE_MAX 1024

static const char *const kind_names[] = {[QUOTA_LLM] = "llm", [QUOTA_SEND] = "send"};

struct quota_check {
    quota_cb *cb;
    void *arg;
    struct eng_db *db;
    int64_t tenant;
    quota_kind kind;
    char step[24];
    char *owner;
    char *send_key;
    bool cancelled;
    struct probe *probe; /* set on the check whose query decides for its waiters */
    quota_check *next;   /* in its probe's waiters */
};

/* The first check of a tenant not known to be unlimited, in flight on one connection; the checks
 * of that tenant and kind arriving meanwhile wait for its answer (a claim of hundreds of steps
 * would otherwise send hundreds of queries to learn once that the tenant has no quota). */
typedef struct probe {
    struct eng_db *db;
    int64_t tenant;
    quota_kind kind;
    quota_check *owner;
    quota_check *head, *tail;
    struct probe *next;
} probe;

typedef struct quota_conn {
    probe *probes;
} quota_conn;

static const char conn_key; /* the slot's key: its address */

typedef struct unlimited {
    int64_t tenant;
    quota_kind kind;
    int64_t expires_ms; /* monotonic */
} unlimited;

static pthread_mutex_t quota_mu = PTHREAD_MUTEX_INITIALIZER; /* guards the cache */
static unlimited *unl;
static size_t nunl, unl_cap;

static bool known_unlimited(int64_t tenant, quota_kind kind)
{
    int64_t now = eng_clock_mono_ms();
    bool found = false;
    pthread_mutex_lock(&quota_mu);
    for (size_t i = 0; i < nunl; i++) {
        if (unl[i].tenant == tenant && unl[i].kind == kind) {
            if (unl[i].expires_ms > now)
                found = true;
            else
                unl[i] = unl[--nunl];
            break;
        }
    }
    pthread_mutex_unlock(&quota_mu);
    return found;
}

static void remember_unlimited(int64_t tenant, quota_kind kind)
{
    int64_t expires = eng_clock_mono_ms() + QUOTA_NEGATIVE_TTL_MS;
    pthread_mutex_lock(&quota_mu);
    size_t i = 0;
    while (i < nunl && !(unl[i].tenant == tenant && unl[i].kind == kind))
        i++;
    if (i == nunl) {
        if (nunl >= QUOTA_CACHE_MAX)
            nunl = i = 0;
        if (nunl == unl_cap) {
            unl_cap = unl_cap ? unl_cap * 2 : 16;
            unl = eng_xrealloc(unl, unl_cap * sizeof *unl);
        }
        unl[nunl++] = (unlimited){tenant, kind, 0};
    }
    unl[i].expires_ms = expires;
    pthread_mutex_unlock(&quota_mu);
}

void quota_cache_clear(void)
{
    pthread_mutex_lock(&quota_mu);
    free(unl);
    unl = NULL;
    nunl = unl_cap = 0;
    pthread_mutex_unlock(&quota_mu);
}

static void check_free(quota_check *q)
{
    free(q->owner);
    free(q->send_key);
    free(q);
}

/* The connection is going (eng_db_free) and drops the probes' queries unanswered: their checks,
 * cancelled by then or never to be answered, go with it. */
static void conn_free(void *data)
{
    quota_conn *qc = data;
    for (probe *p = qc->probes, *pn; p; p = pn) {
        pn = p->next;
        check_free(p->owner);
        for (quota_check *w = p->head, *wn; w; w = wn) {
            wn = w->next;
            check_free(w);
        }
        free(p);
    }
    free(qc);
}

static quota_conn *conn_of(struct eng_db *db)
{
    quota_conn *qc = eng_db_slot(db, &conn_key);
    if (!qc) {
        qc = eng_xcalloc(1, sizeof *qc);
        eng_db_slot_set(db, &conn_key, qc, conn_free);
    }
    return qc;
}

static void check_send(quota_check *q);

/* Hands an unlinked probe's waiters the answer and frees it: none of them is limited when the
 * tenant has no quota of the kind; otherwise each asks for its own step. */
static void probe_settle(probe *p, bool limited)
{
    quota_check *w = p->head;
    free(p);
    while (w) {
        quota_check *next = w->next;
        if (w->cancelled) {
            check_free(w);
        } else if (!limited) {
            w->cb(w->arg, NULL, QUOTA_GO, NULL);
            check_free(w);
        } else {
            w->next = NULL;
            check_send(w);
        }
        w = next;
    }
}

static void check_done(void *arg, const eng_err *err, const PGresult *res)
{
    quota_check *q = arg;
    quota_verdict verdict = QUOTA_GO;
    bool limited = true;
    const char *msg = NULL;
    json_t *reason = NULL;
    if (!err && res && PQntuples(res) == 1) {
        const char *v = PQgetvalue(res, 0, 0);
        limited = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
        if (!PQgetisnull(res, 0, 2))
            reason = json_loads(PQgetvalue(res, 0, 2), 0, NULL);
        msg = json_string_value(json_object_get(reason, "message"));
        if (strcmp(v, "fail") == 0)
            verdict = QUOTA_FAIL;
        else if (strcmp(v, "blocked") == 0)
            verdict = QUOTA_RELEASED;
        if (!limited)
            remember_unlimited(q->tenant, q->kind);
    }
    probe *p = q->probe;
    if (p) { /* checks starting from the callbacks below send their own query or hit the cache */
        quota_conn *qc = conn_of(p->db);
        for (probe **pp = &qc->probes; *pp; pp = &(*pp)->next) {
            if (*pp == p) {
                *pp = p->next;
                break;
            }
        }
    }
    if (verdict != QUOTA_GO)
        log_info("quota used up", LOG_S("step", q->step), LOG_S("kind", kind_names[q->kind]),
                 LOG_S("verdict", verdict == QUOTA_FAIL ? "fail" : "blocked"),
                 LOG_S("reason", msg ? msg : ""));
    if (!q->cancelled)
        q->cb(q->arg, err, verdict, msg ? msg : "a quota is used up");
    json_decref(reason);
    check_free(q);
    if (p)
        probe_settle(p, err ? true : limited);
}

static void check_send(quota_check *q)
{
    const char *params[] = {q->owner, q->step, kind_names[q->kind], q->send_key};
    eng_db_query(q->db, "SELECT verdict, limited, reason FROM flowd_quota_step($1, $2, $3, $4)",
                 4, params, check_done, q);
}

bool quota_check_start(eng_step_ctx *ctx, quota_kind kind, const char *send_key, quota_cb *cb,
                       void *arg, quota_check **pending)
{
    int64_t tenant = eng_step_tenant_id(ctx);
    *pending = NULL;
    if (known_unlimited(tenant, kind))
        return true;
    struct eng_db *db = eng_step_db(ctx);
    quota_check *q = eng_xcalloc(1, sizeof *q);
    *q = (quota_check){.cb = cb, .arg = arg, .db = db, .tenant = tenant, .kind = kind,
                       .owner = eng_xstrdup(eng_step_owner(ctx)),
                       .send_key = send_key ? eng_xstrdup(send_key) : NULL};
    snprintf(q->step, sizeof q->step, "%lld", (long long)eng_step_id(ctx));
    quota_conn *qc = conn_of(db);
    probe *p = qc->probes;
    while (p && !(p->tenant == tenant && p->kind == kind))
        p = p->next;
    if (p) {
        if (p->tail)
            p->tail->next = q;
        else
            p->head = q;
        p->tail = q;
    } else {
        p = eng_xcalloc(1, sizeof *p);
        *p = (probe){.db = db, .tenant = tenant, .kind = kind, .owner = q, .next = qc->probes};
        qc->probes = p;
        q->probe = p;
        check_send(q);
    }
    *pending = q;
    return false;
}

void quota_check_cancel(quota_check *q)
{
    if (q)
        q->cancelled = true; /* check_done or its probe's answer still owns and frees it */
}
