/* engine/lease.h: a worker's hold on the steps it claimed, as bookkeeping without I/O.
 *
 * Exactly-once lives here. A claimed step is this worker's while the worker's lease row lives
 * (worker_leases, migrations/0016_worker_leases.sql; docs/internals/leases.md). The heartbeat,
 * every lease_ms/3, sends a renewal, flowd_worker_leases(), which
 *   - extends the lease,
 *   - hands back the attempts this worker stopped while they still ran in its name,
 *   - on a new connection, hands back what a round trip lost with the old connection claimed
 *     unseen (the renewal names the backend whose claims this worker did see),
 *   - and answers which of the steps this worker holds it no longer holds (the reaper handed them
 *     on after a stall): the worker stops those.
 * A step whose hold may run out before the next heartbeat (renewals not landing) is stopped and
 * handed back by this worker (eng_lease_expiring) before the reaper can give it to another
 * claimer: a step never runs in two places.
 *
 * The worker's loop does the I/O: it builds a renewal (eng_lease_renewal_build), sends the
 * renewal's parameters, and says how it ended (eng_lease_renewal_done). Everything here is pure
 * (tests/unit/test_lease.c drives it without PostgreSQL). Loop thread only.
 *
 * The renewal's state (eng_lease_state), with its transitions:
 *   IDLE      no renewal on the wire; the last one landed or failed transiently (or none was sent)
 *   RENEWING  a renewal on the wire
 *   FAILING   the last renewal failed on a live connection: no claims until one lands
 *   RETRYING  a renewal on the wire after a failed one: still no claims
 *     IDLE -build-> RENEWING            FAILING -build-> RETRYING
 *     RENEWING, RETRYING -done(LANDED or TRANSIENT)-> IDLE
 *     RENEWING, RETRYING -done(REFUSED)-> FAILING
 * What the next renewal must ask about the connection (eng_lease_conn):
 *   SETTLED   every round trip of this worker came back with its answer, or a renewal since asked
 *   FRESH     a new connection: a trip lost with the old one may have claimed steps unseen; the
 *             next renewal built while the connection is up asks for them to be handed back
 *   ASKING    the renewal on the wire asks
 *     any -connected-> FRESH            FRESH -build on a connection-> ASKING
 *     ASKING -done(LANDED)-> SETTLED    ASKING -done(REFUSED or TRANSIENT)-> FRESH
 *     (FRESH and SETTLED stay as they are through build without a connection and through done)
 * ASKING exists only while a renewal is on the wire (RENEWING or RETRYING). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/buf.h"

typedef enum eng_lease_state {
    ENG_LEASE_IDLE,
    ENG_LEASE_RENEWING,
    ENG_LEASE_FAILING,
    ENG_LEASE_RETRYING,
} eng_lease_state;

typedef enum eng_lease_conn {
    ENG_LEASE_SETTLED,
    ENG_LEASE_FRESH,
    ENG_LEASE_ASKING,
} eng_lease_conn;

/* How a renewal ended. */
typedef enum eng_lease_result {
    ENG_LEASE_LANDED,    /* answered: the lease was extended */
    ENG_LEASE_TRANSIENT, /* the connection went, or the server asked for a retry (ENG_EDB_RETRY):
                            what it carried goes with the next one; a reconnect asks again */
    ENG_LEASE_REFUSED,   /* any other error, on a live connection: claims stop until one lands */
} eng_lease_result;

/* An attempt stopped here while it may still run in this worker's name. */
typedef struct eng_lease_release {
    int64_t step_id;
    int attempt;
    int64_t claimed_ms; /* the claim's engine time: an attempt's number alone can recur */
} eng_lease_release;

/* The worker's side of the lease. Embedded by the worker (_init/_deinit). */
typedef struct eng_lease {
    eng_lease_state state;
    eng_lease_conn conn;
    int lease_ms;            /* the lease each claim and renewal asks for */
    uint64_t claims;         /* steps claimed so far: a hold's seq */
    uint64_t renew_seq;      /* claims when the renewal on the wire (or the last one) was built */
    double renew_sent;       /* loop time it was built: the lease it gives runs from here */
    eng_lease_release *release; /* to hand back, oldest first */
    size_t nrelease, release_cap;
    size_t nrelease_sent;    /* how many of release[] the renewal on the wire carries */
} eng_lease;

/* One claimed step's hold, kept by its step context. */
typedef struct eng_lease_hold {
    uint64_t seq; /* claim order on this worker: which renewals cover the step */
    double until; /* loop time by which this worker's hold on the step may have ended */
} eng_lease_hold;

/* A renewal's statement parameters: flowd_worker_leases(owner, lease_ms, held, release_ids,
 * release_attempts, release_claimed_ms, backend_pid); the arrays are PostgreSQL array literals. */
typedef struct eng_lease_renewal {
    const char *params[7]; /* borrowed from the fields below and the owner; [6] NULL: not asking */
    char lease_ms[16];
    char backend_pid[16];
    eng_buf held, release_ids, release_attempts, release_claimed;
} eng_lease_renewal;

void eng_lease_init(eng_lease *l, int lease_ms);
void eng_lease_deinit(eng_lease *l);

/* The heartbeat's period in seconds (lease_ms / 3). */
double eng_lease_heartbeat_s(const eng_lease *l);
/* The worker has a new connection (see FRESH). */
void eng_lease_connected(eng_lease *l);
/* False while renewals fail on a live connection (FAILING, RETRYING): claim nothing. */
bool eng_lease_may_claim(const eng_lease *l);

/* Starts the hold of a step claimed by the round trip that left at trip_sent (loop time). */
void eng_lease_hold_claimed(eng_lease *l, eng_lease_hold *h, double trip_sent);
/* Whether the hold may end before the heartbeat after now: stop the step and hand it back
 * (eng_lease_hand_back) rather than let the reaper give it to another claimer while it runs. */
bool eng_lease_expiring(const eng_lease *l, const eng_lease_hold *h, double now);
/* Queues an attempt stopped here for the next renewal to hand back. */
void eng_lease_hand_back(eng_lease *l, int64_t step_id, int attempt, int64_t claimed_ms);

/* Whether the heartbeat sends a renewal: none on the wire, and something to renew or say
 * (holds is whether steps run here). */
bool eng_lease_renewal_due(const eng_lease *l, bool holds);
/* Builds the renewal sent at now (loop time) and moves to RENEWING or RETRYING. held: the steps
 * this worker holds (running here, or finished with the outcome not yet reported), so that it
 * learns which it lost. backend_pid: the connection's backend, 0 when not connected; a FRESH
 * worker asks only when it knows the connection the renewal runs on (a renewal queued on one
 * connection may run on the next, which asks again anyway). r is initialised here; release it
 * with eng_lease_renewal_deinit once sent. Only when no renewal is on the wire. */
void eng_lease_renewal_build(eng_lease *l, eng_lease_renewal *r, const char *owner,
                             const int64_t *held, size_t nheld, int backend_pid, double now);
void eng_lease_renewal_deinit(eng_lease_renewal *r);
/* The renewal on the wire ended. Returns true when it landed: then extend every hold in flight
 * with eng_lease_hold_renewed, and stop the steps its answer says are lost. */
bool eng_lease_renewal_done(eng_lease *l, eng_lease_result how);
/* After a renewal landed: a hold it covered (claimed before it was built) lasts a lease from the
 * renewal's sending. */
void eng_lease_hold_renewed(const eng_lease *l, eng_lease_hold *h);
