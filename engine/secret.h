/* engine/secret.h: secrets sealed at rest under a key the operator supplies: providers'
 * credentials, inbound hooks' verification secrets and outbound webhooks' signing secrets.
 *
 * A tenant's secret settings (api_key, auth_token, token, app_secret, verify_token, ...) are stored
 * in provider_settings as "enc:v1:<key id>:<base64 of nonce || secretbox>" (libsodium
 * crypto_secretbox_easy: XSalsa20-Poly1305). The key id is the first 4 bytes (hex) of the key's
 * BLAKE2b hash, so a row says which key sealed it without revealing the key.
 *
 * Keys (32 bytes, as 64 hex characters or base64) come from the environment:
 *   FLOWD_SECRET_KEY           the current key: seals new values, opens values sealed under it
 *   FLOWD_SECRET_KEY_FILE      a file holding it instead (first line; FLOWD_SECRET_KEY wins)
 *   FLOWD_SECRET_KEY_PREVIOUS  an older key that still opens values during a rotation
 * Without a current key nothing can be sealed: storing a provider's or a hook's secret is refused,
 * never done in clear. The one exception is the signing secret flowd makes for a webhook endpoint:
 * without a key it is kept in clear (webhooks work out of the box) until `flowd secrets rotate`.
 * Values stored in clear before this existed (hand-written SQL) are still read as they are;
 * writing them again through the API or `flowd secrets rotate` seals them.
 *
 * Threads: every function may be called from any thread. Strings returned are new (free()); they
 * may hold a secret, so callers wipe them with sec_free. */
#pragma once

#include <jansson.h>
#include <stdbool.h>

#include "engine/err.h"

/* Re-reads the keys from the environment (they are read once on first use otherwise). ENG_EINVAL
 * with a message naming the variable when one is set but malformed. */
eng_rc sec_reload(eng_err *err);
/* True when a current key is configured (and valid). */
bool sec_have_key(void);
/* Seals plain under the current key. NULL with err set when no key is configured. */
char *sec_seal(const char *plain, eng_err *err);
/* True when v is a sealed value (whatever key). */
bool sec_is_sealed(const char *v);
/* True when v is sealed under the current key (false for clear values and other keys). */
bool sec_is_current(const char *v);
/* Opens a sealed value (a clear value is returned as it is). NULL with err set when the key that
 * sealed it is not configured or the value was tampered with. */
char *sec_open(const char *v, eng_err *err);
/* Opens every sealed string member of obj in place. */
eng_rc sec_open_object(json_t *obj, eng_err *err);
/* What a response may show of a secret: "****" and its last 4 characters ("****" alone when it
 * is shorter than 12). */
char *sec_mask(const char *plain);
/* Wipes and frees a string that held a secret. NULL-safe. */
void sec_free(char *s);
