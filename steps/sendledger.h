/* steps/sendledger.h: the send-ledger protocol shared by the email, sms and whatsapp kinds.
 *
 * A messaging step has an effect in the world, while its execution is at-least-once (a crash or
 * a lost lease re-runs it). The ledger (table sends, migrations/0008_sends.sql) turns that into an
 * exactly-once effect, per docs/internals/provider-apis.md §7. One attempt goes:
 *
 *   CONFIG   load the provider's settings for the tenant (steps/provider.h)
 *   PREPARE  the kind builds the provider request from the rendered input (ops->prepare)
 *   QUOTA    the tenant's sends_per_day (steps/quota.h): no room blocks the step (or fails it,
 *            as the workflow's quota policy says) before anything is claimed
 *   CLAIM    flowd_send_claim(tenant, send key, recipient, request hash, policy):
 *              done        -> succeed with the output recorded when it was accepted (no call)
 *              suppressed  -> the step ends skipped with the reason (no call)
 *              conflict    -> permanent failure "send_key_conflict" (same key, other message)
 *              ambiguous   -> an earlier call may have gone out: RESOLVE
 *              send        -> CALL (or the sandbox transport)
 *   CALL     the kind's transport (ops->transport) classified by prov_classify:
 *              ok          -> record accepted + provider id, succeed
 *              retryable   -> record failed (nothing went out), retry with the provider's delay
 *              permanent   -> record failed; a suppressing code (ops->suppress_reason) also puts
 *                             the recipient on the list and the step ends skipped
 *              ambiguous   -> record unknown; at_least_once retries (resends), at_most_once
 *                             RESOLVEs on its next run
 *   STOPPED  an attempt cancelled (lease lost) after its claim and before any byte of its
 *            request left (the call not started, or its connection or TLS handshake still being
 *            set up: eng_http_call_may_have_sent) records the send as failed: nothing went out,
 *            and the next attempt sends it instead of resolving it.
 *   RESOLVE  (at_most_once) the provider look-up when the kind has one (ops->lookup: Twilio),
 *            resolve.checks times resolve.interval_ms apart: found -> accepted, succeed; never
 *            found -> it did not go out: record failed, CLAIM again and send. Without a look-up
 *            (or with resolve.checks 0) the step is parked: it waits in 'waiting' with the error
 *            code "unknown" (no attempt spent, the run goes on waiting) until the provider's
 *            delivery webhook (api/routes_hooks.c) or an operator (POST /v1/sends/{key}/outcome)
 *            settles the send, which wakes it (migrations/0025_unknown_sends.sql); its next
 *            attempt then finds the send accepted (done) or failed (sends).
 *
 * The send key is "<run id>:<step key>" plus ":<item>" when the input has an "item": stable across
 * attempts, process restarts and run retries, never containing the attempt. The sandbox transport
 * (no credentials) is flowd_sandbox_send: outbox row and accepted ledger row in one transaction,
 * so a sandbox send is never ambiguous.
 *
 * Common input fields of the three kinds, next to their own: policy ("at_most_once" default, or
 * "at_least_once"), item (string or integer), resolve {checks (look-ups, default 3), interval_ms
 * (default 30000)}, rate_limit (the name in rate_limits the send counts against; default the provider's
 * name: "sendgrid", "twilio", "whatsapp"). Before the ledger is touched, an attempt takes one
 * request from that limit, or sleeps (no attempt spent) until the budget allows it.
 *
 * Threads: one attempt lives on its worker's loop. Ownership: send_msg fields are owned by the
 * driver once prepare returns ENG_OK (it frees them); outputs passed to step_send_transport_done
 * and step_send_lookup_done are stolen. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/err.h"
#include "engine/httpc.h"
#include "engine/step.h"
#include "steps/provider.h"

typedef struct step_send step_send; /* one attempt of a messaging step, opaque */

/* What prepare builds. */
typedef struct send_msg {
    char *recipient; /* normalized address (lowercase email, +E.164), for the ledger and suppression */
    json_t *request; /* the provider request as JSON: what is hashed and what the outbox records */
    json_t *output;  /* the step output known before the call ({to, from, ...}); the driver adds
                        provider, message_id, status, send_key */
} send_msg;

typedef struct send_ops {
    const char *kind;    /* "email", "sms", "whatsapp" */
    const char *channel; /* the ledger's and the suppression list's channel (same names) */
    prov_id provider;
    /* Builds msg from the rendered input; send_key goes into the provider's correlation handle.
     * ENG_EINVAL with the field's pointer on bad input (the step fails for good). */
    eng_rc (*prepare)(const json_t *input, const prov_config *cfg, const char *send_key,
                      send_msg *msg, eng_err *err);
    /* Starts the provider call for msg; reports exactly once through step_send_transport_done
     * unless the call is cancelled (the driver cancels the returned call). */
    eng_http_call *(*transport)(step_send *ss, const prov_config *cfg, const send_msg *msg);
    /* Optional: searches the provider for a message this send may have produced (created at or
     * after since_ms, wall clock); reports through step_send_lookup_done. */
    eng_http_call *(*lookup)(step_send *ss, const prov_config *cfg, const send_msg *msg,
                             int64_t since_ms);
    /* Optional: the suppression reason a permanent failure carries ("21610"), or NULL. */
    const char *(*suppress_reason)(const prov_outcome *o);
} send_ops;

/* Runs one attempt of a messaging step (the kind's start callback) and the matching cancel. */
void step_send_start(eng_step_ctx *ctx, const send_ops *ops);
void step_send_cancel(eng_step_ctx *ctx);

/* The transport's report. o: classified outcome (o->cls PROV_OK on success). On success
 * message_id is the provider's id and output (stolen, may be NULL) holds provider fields to add to
 * the step output (status, segments, ...). */
void step_send_transport_done(step_send *ss, const prov_outcome *o, const char *message_id,
                              json_t *output);
/* The look-up's report: found with the provider's id and output fields (stolen, may be NULL), or
 * not found (also on a failed look-up, which counts as one check). */
void step_send_lookup_done(step_send *ss, bool found, const char *message_id, json_t *output);

/* What transports and look-ups need from the attempt. */
eng_httpc *step_send_httpc(const step_send *ss);
int64_t step_send_wall_ms(void);
/* The HTTP timeout for the provider call: 9/10 of the step's timeout (so the ledger hears of the
 * outcome before the engine gives up on the attempt), else 30 s. */
long step_send_http_timeout_ms(const step_send *ss);
const char *step_send_key_of(const step_send *ss);
int64_t step_send_tenant(const step_send *ss);
/* The request prepare built (borrowed). */
const json_t *step_send_request(const step_send *ss);
/* When the ledger row was first claimed (wall clock ms; look-ups search from there). */
int64_t step_send_created_ms(const step_send *ss);
/* The provider settings of the attempt (borrowed; alive while the attempt's call is). */
const prov_config *step_send_cfg(const step_send *ss);

/* Checks the common fields (policy, item, resolve, rate_limit) of a step object's literal input; used by the
 * kinds' validate callbacks. Templated values ("{{...}}") are accepted as they are. */
eng_rc step_send_validate_common(const json_t *step, const char *ptr, eng_err *err);
/* step_send_validate_common, then the field every kind needs: input.to. */
eng_rc step_send_validate_to(const json_t *step, const char *ptr, eng_err *err);
/* ENG_EINVAL on the field ptr followed by suffix ("/steps/2" "/input/body"): for validate. */
eng_rc step_send_invalid(eng_err *err, const char *ptr, const char *suffix, const char *msg);

/* For validate: ENG_EINVAL on /input/NAME when it is a literal (not a template, not
 * "whatsapp:...") that is no E.164 number; the same rule the send applies, known at registration. */
eng_rc step_send_validate_phone(const json_t *step, const char *ptr, const char *name,
                                eng_err *err);
/* For prepare: input.to as +E.164 into to; ENG_EINVAL on /input/to when it is not a number. */
eng_rc step_send_input_phone(const json_t *in, char to[24], eng_err *err);

/* For transports. Classifies the provider call's completion (prov_classify with the attempt's
 * settings) into o; anything but PROV_OK is reported at once (step_send_transport_done) and false
 * returned, so the caller only goes on with a success. */
bool step_send_call_ok(step_send *ss, prov_id provider, const eng_err *err,
                       const eng_http_response *resp, eng_http_call *call, prov_outcome *o);
/* Reports a 2xx whose body names no message: the provider took the request and what it made of
 * it is unknown (ambiguous, code "bad_response", "<provider> answered <status> without a
 * <id_name>"). */
void step_send_no_message_id(step_send *ss, prov_outcome *o, const char *provider,
                             const char *id_name);
/* POSTs body as JSON to the provider's path (prov_config_url) with "Authorization: Bearer
 * <token>", under the attempt's HTTP timeout; done gets ss. */
eng_http_call *step_send_post_json(step_send *ss, const prov_config *cfg, const char *path,
                                   const char *token, const json_t *body, eng_http_cb *done);

/* Copies a phone number written in E.164 ("+15551234567": '+', then 8 to 15 digits, the first
 * not 0) into out; false for anything else. Nothing is stripped or guessed: a number without its
 * country code cannot be told from another country's. */
bool step_send_norm_phone(const char *in, char out[24]);
/* Lowercases an email address into a new string; NULL when its syntax is not that of an address
 * mail can be sent to (local@domain.tld, see email_syntax_ok in sendledger.c). */
char *step_send_norm_email(const char *in);

/* The messaging kinds (steps/email.c, steps/sms.c, steps/whatsapp.c), called by
 * step_register_all. */
void step_email_register(void);
void step_sms_register(void);
void step_whatsapp_register(void);
