/* engine/clock.c: wall-clock and monotonic-clock helpers (see clock.h). */
#include "engine/clock.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int64_t eng_clock_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t eng_clock_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t eng_clock_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static bool clock_digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

eng_rc eng_time_parse_rfc3339(const char *s, int64_t *out_ms, eng_err *err)
{
    int y, mo, d, h, mi, sec;
    size_t len = strlen(s);
    if (len < 20 || !clock_digits(s, 4, &y) || s[4] != '-' || !clock_digits(s + 5, 2, &mo) ||
        s[7] != '-' || !clock_digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        !clock_digits(s + 11, 2, &h) || s[13] != ':' || !clock_digits(s + 14, 2, &mi) ||
        s[16] != ':' || !clock_digits(s + 17, 2, &sec))
        return eng_err_set(err, ENG_EINVAL, "\"%.40s\" is not an RFC 3339 timestamp", s);
    if (mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || sec > 60)
        return eng_err_set(err, ENG_EINVAL, "\"%.40s\" is out of range", s);
    /* timegm would carry 2027-02-31 into March: a date that does not exist is refused */
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > mdays[mo - 1] + (mo == 2 && leap))
        return eng_err_set(err, ENG_EINVAL, "\"%.40s\": %04d-%02d has no day %d", s, y, mo, d);
    const char *p = s + 19;
    int ms = 0;
    if (*p == '.') {
        int scale = 100;
        p++;
        if (!isdigit((unsigned char)*p))
            return eng_err_set(err, ENG_EINVAL, "\"%.40s\" has an empty fraction", s);
        for (; isdigit((unsigned char)*p); p++) {
            ms += (*p - '0') * scale;
            scale /= 10;
        }
    }
    int offset_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (!clock_digits(p + 1, 2, &oh) || p[3] != ':' || !clock_digits(p + 4, 2, &om) || oh > 23 ||
            om > 59)
            return eng_err_set(err, ENG_EINVAL, "\"%.40s\" has a bad UTC offset", s);
        offset_min = (oh * 60 + om) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return eng_err_set(err, ENG_EINVAL, "\"%.40s\" has no UTC offset", s);
    }
    if (*p)
        return eng_err_set(err, ENG_EINVAL, "\"%.40s\" has trailing characters", s);
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h,
                    .tm_min = mi, .tm_sec = sec};
    time_t t = timegm(&tm);
    *out_ms = ((int64_t)t - (int64_t)offset_min * 60) * 1000 + ms;
    return ENG_OK;
}

void eng_time_format_rfc3339(int64_t ms, char *out, int outlen)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, (size_t)outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}
