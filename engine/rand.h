/* engine/rand.h: secrets from the kernel's generator (getrandom), and the API key format.
 *
 * API keys are "fd_" and 40 lowercase hex digits (160 bits); the database stores only their
 * SHA-256 (wf_sha256_hex), so a key is shown once, when it is made. */
#pragma once

#include <stddef.h>

#include "engine/err.h"

#define ENG_API_KEY_SIZE 44 /* "fd_", 40 hex digits, NUL */

/* Fills buf with n unpredictable bytes. Blocks only until the kernel's pool is first seeded (early
 * boot); ENG_ESYS when the kernel refuses. */
ENG_MUST_CHECK eng_rc eng_rand_bytes(void *buf, size_t n, eng_err *err);

/* A new API key into out (NUL-terminated). */
ENG_MUST_CHECK eng_rc eng_rand_api_key(char out[ENG_API_KEY_SIZE], eng_err *err);
