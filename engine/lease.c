/* engine/lease.c: a worker's hold on its claimed steps (see lease.h for the states). */
#include "engine/lease.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/log.h"
#include "engine/mem.h"

void eng_lease_init(eng_lease *l, int lease_ms)
{
    *l = (eng_lease){.state = ENG_LEASE_IDLE, .conn = ENG_LEASE_SETTLED, .lease_ms = lease_ms};
}

void eng_lease_deinit(eng_lease *l)
{
    free(l->release);
    l->release = NULL;
    l->nrelease = l->release_cap = l->nrelease_sent = 0;
}

double eng_lease_heartbeat_s(const eng_lease *l)
{
    return (double)l->lease_ms / 3000.0;
}

void eng_lease_connected(eng_lease *l)
{
    l->conn = ENG_LEASE_FRESH;
}

bool eng_lease_may_claim(const eng_lease *l)
{
    return l->state != ENG_LEASE_FAILING && l->state != ENG_LEASE_RETRYING;
}

static bool on_wire(const eng_lease *l)
{
    return l->state == ENG_LEASE_RENEWING || l->state == ENG_LEASE_RETRYING;
}

void eng_lease_hold_claimed(eng_lease *l, eng_lease_hold *h, double trip_sent)
{
    /* the claim's lease was taken while the trip ran: it runs from no earlier than its sending */
    *h = (eng_lease_hold){.seq = ++l->claims, .until = trip_sent + l->lease_ms / 1000.0};
}

bool eng_lease_expiring(const eng_lease *l, const eng_lease_hold *h, double now)
{
    return h->until < now + eng_lease_heartbeat_s(l);
}

void eng_lease_hand_back(eng_lease *l, int64_t step_id, int attempt, int64_t claimed_ms)
{
    if (l->nrelease == l->release_cap) {
        l->release_cap = l->release_cap ? 2 * l->release_cap : 64;
        l->release = eng_xrealloc(l->release, l->release_cap * sizeof *l->release);
    }
    l->release[l->nrelease++] = (eng_lease_release){step_id, attempt, claimed_ms};
}

bool eng_lease_renewal_due(const eng_lease *l, bool holds)
{
    return !on_wire(l) && (holds || l->nrelease > 0 || l->conn == ENG_LEASE_FRESH ||
                           l->state == ENG_LEASE_FAILING);
}

/* The i-th element of a PostgreSQL array literal ("{1,2,3}") being written into b. */
static bool array_add(eng_buf *b, size_t i, long long v)
{
    return eng_buf_appendf(b, "%s%lld", i ? "," : "{", v) == ENG_OK;
}

static bool array_end(eng_buf *b, size_t n)
{
    return eng_buf_append(b, n ? "}" : "{}", n ? 1 : 2) == ENG_OK;
}

void eng_lease_renewal_build(eng_lease *l, eng_lease_renewal *r, const char *owner,
                             const int64_t *held, size_t nheld, int backend_pid, double now)
{
    *r = (eng_lease_renewal){0};
    eng_buf_init(&r->held, 0);
    eng_buf_init(&r->release_ids, 0);
    eng_buf_init(&r->release_attempts, 0);
    eng_buf_init(&r->release_claimed, 0);
    bool ok = true;
    for (size_t i = 0; i < nheld && ok; i++)
        ok = array_add(&r->held, i, (long long)held[i]);
    for (size_t i = 0; i < l->nrelease && ok; i++)
        ok = array_add(&r->release_ids, i, (long long)l->release[i].step_id) &&
             array_add(&r->release_attempts, i, l->release[i].attempt) &&
             array_add(&r->release_claimed, i, (long long)l->release[i].claimed_ms);
    if (!ok || !array_end(&r->held, nheld) || !array_end(&r->release_ids, l->nrelease) ||
        !array_end(&r->release_attempts, l->nrelease) ||
        !array_end(&r->release_claimed, l->nrelease)) {
        log_error("out of memory", LOG_S("where", "lease renewal"));
        abort();
    }
    snprintf(r->lease_ms, sizeof r->lease_ms, "%d", l->lease_ms);
    snprintf(r->backend_pid, sizeof r->backend_pid, "%d", backend_pid);
    bool ask = l->conn == ENG_LEASE_FRESH && backend_pid != 0;
    r->params[0] = owner;
    r->params[1] = r->lease_ms;
    r->params[2] = r->held.ptr;
    r->params[3] = r->release_ids.ptr;
    r->params[4] = r->release_attempts.ptr;
    r->params[5] = r->release_claimed.ptr;
    r->params[6] = ask ? r->backend_pid : NULL;
    l->renew_seq = l->claims;
    l->renew_sent = now;
    l->nrelease_sent = l->nrelease;
    l->state = l->state == ENG_LEASE_FAILING ? ENG_LEASE_RETRYING : ENG_LEASE_RENEWING;
    if (ask)
        l->conn = ENG_LEASE_ASKING;
}

void eng_lease_renewal_deinit(eng_lease_renewal *r)
{
    eng_buf_deinit(&r->held);
    eng_buf_deinit(&r->release_ids);
    eng_buf_deinit(&r->release_attempts);
    eng_buf_deinit(&r->release_claimed);
}

bool eng_lease_renewal_done(eng_lease *l, eng_lease_result how)
{
    if (how != ENG_LEASE_LANDED) {
        /* what it carried goes with the next one; a lost connection is the reconnect's business */
        l->nrelease_sent = 0;
        if (l->conn == ENG_LEASE_ASKING)
            l->conn = ENG_LEASE_FRESH;
        l->state = how == ENG_LEASE_REFUSED ? ENG_LEASE_FAILING : ENG_LEASE_IDLE;
        return false;
    }
    l->state = ENG_LEASE_IDLE;
    if (l->conn == ENG_LEASE_ASKING)
        l->conn = ENG_LEASE_SETTLED;
    if (l->nrelease_sent > 0) {
        l->nrelease -= l->nrelease_sent;
        memmove(l->release, l->release + l->nrelease_sent, l->nrelease * sizeof *l->release);
        l->nrelease_sent = 0;
    }
    return true;
}

void eng_lease_hold_renewed(const eng_lease *l, eng_lease_hold *h)
{
    /* what the renewal covered and did not report lost is held a lease from its sending */
    double until = l->renew_sent + l->lease_ms / 1000.0;
    if (h->seq <= l->renew_seq && h->until < until)
        h->until = until;
}
