/* engine/rand.c: secrets from the kernel's generator (see rand.h). */
#include "engine/rand.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

eng_rc eng_rand_bytes(void *buf, size_t n, eng_err *err)
{
    unsigned char *p = buf;
    while (n > 0) {
        /* up to 256 bytes come in one piece; more may be cut short by a signal */
        ssize_t got = getrandom(p, n, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return eng_err_set(err, ENG_ESYS, "cannot read the kernel's random generator: %s",
                               strerror(errno));
        p += got;
        n -= (size_t)got;
    }
    return ENG_OK;
}

eng_rc eng_rand_api_key(char out[ENG_API_KEY_SIZE], eng_err *err)
{
    unsigned char raw[(ENG_API_KEY_SIZE - 4) / 2];
    eng_rc rc = eng_rand_bytes(raw, sizeof raw, err);
    if (rc != ENG_OK)
        return rc;
    static const char hex[] = "0123456789abcdef";
    memcpy(out, "fd_", 3);
    for (size_t i = 0; i < sizeof raw; i++) {
        out[3 + 2 * i] = hex[raw[i] >> 4];
        out[4 + 2 * i] = hex[raw[i] & 15];
    }
    out[ENG_API_KEY_SIZE - 1] = '\0';
    return ENG_OK;
}
