/* engine/webhook.h: outbound webhooks, signed per Standard Webhooks 1.0, delivered from the
 * transactional outbox (migrations 0038, 0039 and sql/webhooks.sql).
 *
 * Messages and their deliveries are written by SQL triggers in the transaction that makes the
 * change they report. A dispatcher (one thread per `flowd serve` that runs workers) claims due
 * deliveries with FOR UPDATE SKIP LOCKED under a lease, posts them through libcurl multi, and
 * settles each attempt in SQL (retry schedule, Retry-After, 410, disabling failing endpoints). A
 * process killed mid-delivery loses only its lease: the delivery is due again when it lapses, and
 * goes out with the same webhook-id. Any number of processes may run a dispatcher. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct eng_webhooks eng_webhooks;

typedef struct eng_webhook_opts {
    const char *conninfo;
    bool public_only;   /* refuse plain http and every non-public address (engine/netaddr.h):
                           tenants choose the urls; off with --allow-private-targets */
    int max_inflight;   /* deliveries in flight in this process (default 1000) */
    int per_endpoint;   /* in flight per endpoint across all processes (default 50) */
    int timeout_ms;     /* per attempt, connection included (default 15000) */
} eng_webhook_opts;

/* Starts the dispatcher's thread. Never NULL. */
eng_webhooks *eng_webhooks_start(const eng_webhook_opts *opts);
/* Stops claiming, gives deliveries in flight up to grace_s seconds to settle (the rest go out
 * again when their lease lapses), joins the thread and frees. NULL-safe. */
void eng_webhooks_stop(eng_webhooks *d, double grace_s);

/* The webhook-signature entry "v1,<base64 HMAC-SHA256 of id.timestamp.body>" for a secret
 * "whsec_<base64 key>" (a secret without the prefix is used as base64 too), into out (at least
 * 64 bytes). False when the secret is not valid base64. */
bool eng_webhook_sign(const char *secret, const char *id, const char *timestamp, const char *body,
                      size_t body_len, char *out, size_t outlen);
/* A new secret "whsec_<base64 of 24 random bytes>" into out (at least 48 bytes). */
void eng_webhook_secret_new(char *out, size_t outlen);
/* The delay an answer asks for with Retry-After (seconds or an HTTP date, relative to now_ms),
 * 0 when none; NULL-safe. */
int64_t eng_webhook_retry_after_ms(const char *value, int64_t now_ms);
