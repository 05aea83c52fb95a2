/* engine/secret.c: see secret.h. */
#include "engine/secret.h"

#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"

#define SEC_PREFIX "enc:v1:"
#define SEC_KID_HEX 8 /* 4 bytes of the key's hash, in hex */

typedef struct sec_key {
    bool set;
    unsigned char key[crypto_secretbox_KEYBYTES];
    char kid[SEC_KID_HEX + 1];
} sec_key;

static pthread_mutex_t sec_mu = PTHREAD_MUTEX_INITIALIZER;
static bool sec_loaded;
static sec_key sec_current, sec_previous;

/* 64 hex characters or base64 (with or without padding) of exactly 32 bytes. */
static bool key_parse(const char *text, sec_key *out)
{
    size_t n = strlen(text);
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' '))
        n--;
    size_t got = 0;
    const char *end = NULL;
    bool ok = false;
    if (n == 2 * crypto_secretbox_KEYBYTES)
        ok = sodium_hex2bin(out->key, sizeof out->key, text, n, NULL, &got, &end) == 0 &&
             end == text + n && got == sizeof out->key;
    if (!ok) {
        unsigned char buf[64];
        ok = sodium_base642bin(buf, sizeof buf, text, n, NULL, &got, &end,
                               sodium_base64_VARIANT_ORIGINAL) == 0 &&
             end == text + n && got == sizeof out->key;
        if (ok)
            memcpy(out->key, buf, sizeof out->key);
        sodium_memzero(buf, sizeof buf);
    }
    if (!ok) {
        sodium_memzero(out->key, sizeof out->key);
        return false;
    }
    unsigned char h[4];
    crypto_generichash(h, sizeof h, out->key, sizeof out->key, NULL, 0);
    sodium_bin2hex(out->kid, sizeof out->kid, h, sizeof h);
    out->set = true;
    return true;
}

/* The key text of FLOWD_SECRET_KEY, or else of FLOWD_SECRET_KEY_FILE's first line. */
static eng_rc current_text(char *buf, size_t cap, eng_err *err)
{
    buf[0] = '\0';
    const char *v = getenv("FLOWD_SECRET_KEY");
    if (v && *v) {
        snprintf(buf, cap, "%s", v);
        return ENG_OK;
    }
    const char *path = getenv("FLOWD_SECRET_KEY_FILE");
    if (!path || !*path)
        return ENG_OK;
    FILE *f = fopen(path, "r");
    if (!f)
        return eng_err_set(err, ENG_EINVAL, "FLOWD_SECRET_KEY_FILE: cannot read %s", path);
    if (!fgets(buf, (int)cap, f))
        buf[0] = '\0';
    fclose(f);
    return ENG_OK;
}

static eng_rc load_locked(eng_err *err)
{
    sodium_memzero(&sec_current, sizeof sec_current);
    sodium_memzero(&sec_previous, sizeof sec_previous);
    sec_loaded = true;
    if (sodium_init() < 0)
        return eng_err_set(err, ENG_EINTERNAL, "libsodium failed to initialise");
    char text[256];
    eng_rc rc = current_text(text, sizeof text, err);
    if (rc == ENG_OK && text[0] && !key_parse(text, &sec_current))
        rc = eng_err_set(err, ENG_EINVAL,
                         "FLOWD_SECRET_KEY must be 32 bytes as 64 hex characters or base64");
    const char *prev = getenv("FLOWD_SECRET_KEY_PREVIOUS");
    if (rc == ENG_OK && prev && *prev && !key_parse(prev, &sec_previous))
        rc = eng_err_set(err, ENG_EINVAL,
                         "FLOWD_SECRET_KEY_PREVIOUS must be 32 bytes as 64 hex characters or base64");
    sodium_memzero(text, sizeof text);
    if (rc != ENG_OK) {
        sodium_memzero(&sec_current, sizeof sec_current);
        sodium_memzero(&sec_previous, sizeof sec_previous);
    }
    return rc;
}

eng_rc sec_reload(eng_err *err)
{
    pthread_mutex_lock(&sec_mu);
    eng_rc rc = load_locked(err);
    pthread_mutex_unlock(&sec_mu);
    return rc;
}

static void ensure_loaded_locked(void)
{
    if (!sec_loaded)
        load_locked(NULL);
}

bool sec_have_key(void)
{
    pthread_mutex_lock(&sec_mu);
    ensure_loaded_locked();
    bool have = sec_current.set;
    pthread_mutex_unlock(&sec_mu);
    return have;
}

char *sec_seal(const char *plain, eng_err *err)
{
    pthread_mutex_lock(&sec_mu);
    ensure_loaded_locked();
    if (!sec_current.set) {
        pthread_mutex_unlock(&sec_mu);
        eng_err_set(err, ENG_EINVAL,
                    "no secret key configured: set FLOWD_SECRET_KEY (or FLOWD_SECRET_KEY_FILE) "
                    "before storing provider secrets");
        return NULL;
    }
    size_t n = strlen(plain);
    size_t boxlen = crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + n;
    unsigned char *box = eng_xmalloc(boxlen);
    randombytes_buf(box, crypto_secretbox_NONCEBYTES);
    crypto_secretbox_easy(box + crypto_secretbox_NONCEBYTES, (const unsigned char *)plain, n, box,
                          sec_current.key);
    size_t b64len = sodium_base64_encoded_len(boxlen, sodium_base64_VARIANT_ORIGINAL);
    size_t cap = strlen(SEC_PREFIX) + SEC_KID_HEX + 1 + b64len;
    char *out = eng_xmalloc(cap);
    int len = snprintf(out, cap, SEC_PREFIX "%s:", sec_current.kid);
    pthread_mutex_unlock(&sec_mu);
    sodium_bin2base64(out + len, cap - (size_t)len, box, boxlen, sodium_base64_VARIANT_ORIGINAL);
    free(box);
    return out;
}

bool sec_is_sealed(const char *v)
{
    return v && strncmp(v, SEC_PREFIX, strlen(SEC_PREFIX)) == 0;
}

bool sec_is_current(const char *v)
{
    if (!sec_is_sealed(v))
        return false;
    pthread_mutex_lock(&sec_mu);
    ensure_loaded_locked();
    bool cur = sec_current.set &&
               strncmp(v + strlen(SEC_PREFIX), sec_current.kid, SEC_KID_HEX) == 0 &&
               v[strlen(SEC_PREFIX) + SEC_KID_HEX] == ':';
    pthread_mutex_unlock(&sec_mu);
    return cur;
}

char *sec_open(const char *v, eng_err *err)
{
    if (!sec_is_sealed(v))
        return eng_xstrdup(v);
    const char *kid = v + strlen(SEC_PREFIX);
    if (strlen(kid) < SEC_KID_HEX + 1 || kid[SEC_KID_HEX] != ':') {
        eng_err_set(err, ENG_EPROTO, "a sealed secret is malformed");
        return NULL;
    }
    const char *b64 = kid + SEC_KID_HEX + 1;
    size_t b64len = strlen(b64);
    unsigned char *box = eng_xmalloc(b64len + 1);
    size_t boxlen = 0;
    if (sodium_base642bin(box, b64len + 1, b64, b64len, NULL, &boxlen, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        boxlen < crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES) {
        free(box);
        eng_err_set(err, ENG_EPROTO, "a sealed secret is malformed");
        return NULL;
    }
    size_t n = boxlen - crypto_secretbox_NONCEBYTES - crypto_secretbox_MACBYTES;
    char *out = eng_xmalloc(n + 1);
    pthread_mutex_lock(&sec_mu);
    ensure_loaded_locked();
    const sec_key *k = NULL;
    if (sec_current.set && strncmp(kid, sec_current.kid, SEC_KID_HEX) == 0)
        k = &sec_current;
    else if (sec_previous.set && strncmp(kid, sec_previous.kid, SEC_KID_HEX) == 0)
        k = &sec_previous;
    bool ok = k && crypto_secretbox_open_easy((unsigned char *)out,
                                              box + crypto_secretbox_NONCEBYTES,
                                              boxlen - crypto_secretbox_NONCEBYTES, box,
                                              k->key) == 0;
    pthread_mutex_unlock(&sec_mu);
    free(box);
    if (!ok) {
        free(out);
        if (!k)
            eng_err_set(err, ENG_EINVAL,
                        "a secret is sealed under key %.*s, which is neither "
                        "FLOWD_SECRET_KEY nor FLOWD_SECRET_KEY_PREVIOUS",
                        SEC_KID_HEX, kid);
        else
            eng_err_set(err, ENG_EPROTO, "a sealed secret failed authentication");
        return NULL;
    }
    out[n] = '\0';
    return out;
}

eng_rc sec_open_object(json_t *obj, eng_err *err)
{
    const char *k;
    json_t *v;
    json_object_foreach (obj, k, v) {
        if (!sec_is_sealed(json_string_value(v)))
            continue;
        char *plain = sec_open(json_string_value(v), err);
        if (!plain)
            return err ? err->rc : ENG_EINVAL;
        json_string_set(v, plain);
        sec_free(plain);
    }
    return ENG_OK;
}

char *sec_mask(const char *plain)
{
    size_t n = strlen(plain);
    return n < 12 ? eng_xstrdup("****") : eng_xasprintf("****%s", plain + n - 4);
}

void sec_free(char *s)
{
    if (s) {
        sodium_memzero(s, strlen(s));
        free(s);
    }
}
