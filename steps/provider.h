/* steps/provider.h: what every provider-backed step kind (llm, email, sms, whatsapp, http) shares.
 *
 * 1. Configuration. A provider's settings are a flat set of named string fields (below). They come
 *    from the environment and can be overridden per tenant by a row of provider_settings
 *    (tenant_id, provider, settings jsonb; migrations/0007_providers.sql; set with
 *    PUT /v1/providers/{provider}, secrets sealed by engine/secret.h). A provider without its
 *    credential fields is in *sandbox* mode: the kind runs every code path except the final
 *    transport (LLM: deterministic answer; messaging: outbox row).
 *
 *      provider           fields (env variable)                                   credential
 *      openai             api_key (OPENAI_API_KEY), base_url (OPENAI_BASE_URL,     api_key
 *                         default https://api.openai.com/v1, i.e. WITH /v1)
 *      anthropic          api_key (ANTHROPIC_API_KEY), base_url (ANTHROPIC_BASE_URL, api_key
 *                         default https://api.anthropic.com, i.e. WITHOUT /v1)
 *      openai_compatible  base_url (OPENAI_COMPATIBLE_BASE_URL, ends in /v1),      base_url
 *                         api_key (OPENAI_COMPATIBLE_API_KEY, optional)
 *      sendgrid           api_key (SENDGRID_API_KEY), base_url (SENDGRID_BASE_URL,  api_key
 *                         default https://api.sendgrid.com)
 *      twilio             account_sid (TWILIO_ACCOUNT_SID), auth_token             account_sid +
 *                         (TWILIO_AUTH_TOKEN), from (TWILIO_FROM), base_url         auth_token
 *                         (TWILIO_BASE_URL, default https://api.twilio.com)
 *      whatsapp           token (WHATSAPP_TOKEN), phone_number_id                  token +
 *                         (WHATSAPP_PHONE_NUMBER_ID), base_url (WHATSAPP_BASE_URL,  phone_number_id
 *                         default https://graph.facebook.com/v23.0)
 *      http               (none: the generic http kind; never sandboxed)
 *
 *    Tenant settings replace environment fields one by one, with one safety rule: when a tenant
 *    sets base_url, the environment's secrets are NOT carried over (otherwise a tenant could point
 *    the operator's key at its own server); the tenant must then supply its own credential or it
 *    runs in sandbox mode. base_url never ends in '/'.
 *
 *    Secret fields (api_key, auth_token, token) must never reach logs, outputs, events or error
 *    messages: build messages with prov_redact() whenever they include text from a provider.
 *
 * 2. Failure classification per docs/internals/provider-apis.md §0: prov_classify() turns a
 *    finished exchange (transport error or HTTP status + body + headers) into ok / retryable /
 *    permanent / ambiguous, with a short code, the provider's own error code, a redacted message
 *    and the delay the provider asked for (retry-after-ms, retry-after, x-ratelimit-reset-*,
 *    anthropic-ratelimit-*-reset, X-RateLimit-Reset). prov_fail_step() reports a
 *    retryable/permanent outcome to the engine; kinds that send messages handle PROV_AMBIGUOUS
 *    themselves (send ledger).
 *
 * Threads: everything here may be called from any worker loop thread; the settings cache is
 * shared by all workers of the process (mutex) and each entry lives PROV_CONFIG_TTL_MS.
 *
 * Ownership: prov_config objects are immutable once built; the caller of prov_config_load's
 * callback receives its own reference and releases it with prov_config_free. Strings returned by
 * accessors are borrowed from the config. Functions returning char * return a new string (free()). */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/err.h"
#include "engine/httpc.h"
#include "engine/step.h"

typedef enum prov_id {
    PROV_OPENAI = 0,
    PROV_ANTHROPIC,
    PROV_OPENAI_COMPATIBLE,
    PROV_SENDGRID,
    PROV_TWILIO,
    PROV_WHATSAPP,
    PROV_HTTP, /* the generic http kind: status-based classification only */
    PROV__COUNT
} prov_id;

#define PROV_CONFIG_TTL_MS 5000

/* "openai", "anthropic", ... for id; "?" when out of range. */
const char *prov_name(prov_id id);
/* Looks a provider up by name; false when unknown. */
bool prov_from_name(const char *name, prov_id *out);

/* True for setting names that hold a secret whatever the provider ("api_key", "auth_token",
 * "token", "app_secret", "verify_token", ...): sealed at rest (engine/secret.h), masked in
 * responses, redacted from messages. */
bool prov_field_secret(const char *name);

/* ---- configuration ---- */
typedef struct prov_config prov_config; /* opaque, immutable */

/* True when the provider's credential is missing: the kind must use its sandbox transport. */
bool prov_config_sandbox(const prov_config *c);
/* A settings field ("api_key", "base_url", "account_sid", "auth_token", "from", "token",
 * "phone_number_id", or any other key a tenant stored), or NULL when unset. Borrowed. */
const char *prov_config_get(const prov_config *c, const char *field);
/* base_url with path appended ("/chat/completions"); never NULL (sandbox: the default base). */
char *prov_config_url(const prov_config *c, const char *path);
/* A copy of text with every secret value of c, and the base64 Basic credentials built from them,
 * replaced by "***" (NULL text gives ""). Also masks whatever follows an authorization scheme
 * (Bearer, Basic), an API-key header or a key-carrying query field, and "sk-"/"SG." keys, since
 * providers echo requests and keys in their errors. */
char *prov_redact(const prov_config *c, const char *text);
/* base64 of "account_sid:auth_token", what HTTP Basic sends (Twilio); caller frees. */
char *prov_basic_credentials(const prov_config *c);
/* Whether outbound calls may reach loopback, private, link-local and metadata addresses when a
 * tenant chose the target (the http step's url, a tenant's base_url). Off unless the operator
 * allows it (`flowd serve --allow-private-targets`, FLOWD_ALLOW_PRIVATE_TARGETS=1); set it before
 * workers start. */
void prov_allow_private_targets(bool allow);
/* eng_http_request.public_only for a call made with c: true when the tenant chose the target (c
 * NULL: the http step, whose url is the tenant's) and the operator did not allow private ones. */
bool prov_public_only(const prov_config *c);
/* Another reference to c (configs are refcounted and immutable). */
prov_config *prov_config_ref(prov_config *c);
void prov_config_free(prov_config *c); /* drops one reference; NULL-safe */

/* The environment-only configuration (no tenant override), synchronously. Never NULL. */
prov_config *prov_config_from_env(prov_id id);
/* Builds a config from env defaults merged with a tenant's settings object (may be NULL), applying
 * the base_url rule above. Exposed for tests and for the API. Never NULL. */
prov_config *prov_config_merge(prov_id id, const json_t *tenant_settings);

/* err NULL: cfg is a new reference for the callee (prov_config_free it). err set (database
 * trouble): cfg is NULL; treat as retryable. */
typedef void prov_config_cb(void *arg, const eng_err *err, prov_config *cfg);
typedef struct prov_load prov_load; /* a pending load, opaque */

/* The effective config of provider id for the attempt's tenant, read through eng_step_db(ctx) and
 * cached. On a cache hit it is returned (a new reference), cb will not run and *pending is NULL.
 * Otherwise the result is NULL, *pending is the load, and cb runs later from the loop (never before
 * this returns); *pending may be passed to prov_load_cancel (e.g. from the kind's cancel callback)
 * until cb runs. */
prov_config *prov_config_load(eng_step_ctx *ctx, prov_id id, prov_config_cb *cb, void *arg,
                              prov_load **pending);
/* cb will not be called. NULL-safe. Only before cb ran. */
void prov_load_cancel(prov_load *l);
/* Forgets every cached config (tests, or after the settings table changed). */
void prov_config_cache_clear(void);

/* ---- failure classification ---- */
typedef enum prov_class {
    PROV_OK = 0,    /* 2xx (and, for http steps, an expected status) */
    PROV_RETRYABLE, /* try again later: 408/409/429/5xx/529, connect errors, LLM timeouts */
    PROV_PERMANENT, /* will not clear by retrying: other 4xx, insufficient_quota, ... */
    PROV_AMBIGUOUS, /* sends only: the provider may have accepted it (5xx, timeout after upload) */
} prov_class;

typedef struct prov_outcome {
    prov_class cls;
    long status;            /* HTTP status, 0 when no response arrived */
    char code[64];          /* for eng_step_fail: "http_429", "insufficient_quota", "timeout",
                               "connect_error", "response_too_big", "transport_error" */
    char provider_code[64]; /* the provider's own code when it sent one: OpenAI error.code (or
                               type), Anthropic error.type, Twilio "code", WhatsApp error.code,
                               SendGrid "" ; "" otherwise */
    char msg[256];          /* human-readable, secrets redacted, lowercase-ish provider text */
    int64_t retry_after_ms; /* delay the provider asked for (0 = none), capped at one hour */
} prov_outcome;

/* Classifies a finished exchange of eng_httpc. err/resp/call are what the eng_http_cb received
 * (call is used for headers; may be NULL). send: the request has a side effect (email/sms/
 * whatsapp): transport failures after the request may have gone out, and 5xx, are AMBIGUOUS
 * instead of RETRYABLE. now_ms: wall clock in ms (for HTTP-date / epoch reset headers). cfg may be
 * NULL (no redaction of configured secrets then; the generic masks still apply). Returns out->cls. */
prov_class prov_classify(const prov_config *cfg, prov_id id, bool send, const eng_err *err,
                         const eng_http_response *resp, const eng_http_call *call, int64_t now_ms,
                         prov_outcome *out);

/* The delay asked for by a response's headers, in ms (0 = none): x-should-retry aside,
 * retry-after-ms, then retry-after (seconds or HTTP-date), then the rate-limit reset headers of an
 * exhausted budget (OpenAI x-ratelimit-reset-requests/-tokens Go durations when the matching
 * remaining is 0; Anthropic anthropic-ratelimit-*-reset RFC 3339; SendGrid X-RateLimit-Reset epoch
 * seconds when X-RateLimit-Remaining is 0). now_ms is the wall clock in ms. */
int64_t prov_retry_after_ms(const eng_http_call *call, int64_t now_ms);

/* Parses a Go-style duration ("1s", "6m0s", "12ms", "1h2m3.5s", "250us") into ms (rounded up);
 * false when malformed. */
bool prov_parse_go_duration(const char *s, int64_t *ms);

/* Reports o (RETRYABLE or PERMANENT; AMBIGUOUS is reported as retryable) as the attempt's failure
 * with o->code, o->msg and o->retry_after_ms. */
void prov_fail_step(eng_step_ctx *ctx, const prov_outcome *o);
