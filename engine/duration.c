/* engine/duration.c: see duration.h. */
#include "engine/duration.h"

#include <stddef.h>
#include <string.h>

/* Milliseconds per unit; "ms" is matched before "m". */
static int64_t unit_ms(const char *p, size_t *len)
{
    if (p[0] == 'm' && p[1] == 's') {
        *len = 2;
        return 1;
    }
    *len = 1;
    switch (p[0]) {
    case 's': return 1000;
    case 'm': return 60 * 1000;
    case 'h': return 3600 * 1000;
    case 'd': return 24LL * 3600 * 1000;
    default: *len = 0; return 0;
    }
}

eng_rc eng_duration_parse(const char *s, int64_t *out_ms, eng_err *err)
{
    if (!s || !*s)
        return eng_err_set(err, ENG_EINVAL, "empty duration");
    if (*s == '-')
        return eng_err_set(err, ENG_EINVAL, "negative duration \"%.32s\"", s);
    int64_t total = 0;
    const char *p = s;
    while (*p) {
        if (*p < '0' || *p > '9')
            return eng_err_set(err, ENG_EINVAL, "bad duration \"%.32s\": expected digits", s);
        /* The value is capped long before int64 could overflow: each step checks against MAX. */
        int64_t n = 0;
        while (*p >= '0' && *p <= '9') {
            n = n * 10 + (*p - '0');
            if (n > ENG_DURATION_MAX_MS)
                return eng_err_set(err, ENG_EINVAL, "duration \"%.32s\" is too long", s);
            p++;
        }
        size_t ulen;
        int64_t mul = unit_ms(p, &ulen);
        if (!mul)
            return eng_err_set(err, ENG_EINVAL,
                               "bad duration \"%.32s\": unit must be ms, s, m, h or d", s);
        p += ulen;
        if (n > (ENG_DURATION_MAX_MS - total) / mul)
            return eng_err_set(err, ENG_EINVAL, "duration \"%.32s\" is too long", s);
        total += n * mul;
    }
    *out_ms = total;
    return ENG_OK;
}
