/* engine/cron.c: see cron.h.
 *
 * The search runs on civil (wall-clock) seconds, a zone-free count of seconds since 1970-01-01
 * 00:00:00 local, so that field matching is plain calendar arithmetic; ICU maps between civil
 * seconds and instants. That mapping, with the DST rule of cron.h (gap -> first instant after it,
 * repeated -> first occurrence), never decreases as civil time grows, which is what lets cron_next
 * walk civil time forward from the wall time of `after` and stop at the first instant past it. */
#include "engine/cron.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unicode/ucal.h>
#include <unicode/ustring.h>

#include "engine/mem.h"

struct cron {
    uint64_t sec;       /* bit n: second n */
    uint64_t min;       /* bit n: minute n */
    uint32_t hour;      /* bit n: hour n */
    uint32_t dom;       /* bit n: day n of the month (1-31) */
    uint16_t mon;       /* bit n: month n (1-12) */
    uint8_t dow;        /* bit n: weekday n (0 = Sunday) */
    uint8_t dow_last;   /* bit n: the last weekday n of the month (FRI#L) */
    uint8_t dow_nth[7]; /* per weekday, bit k: its (k+1)-th occurrence in the month (FRI#2) */
    bool dom_last;      /* L: the last day of the month */
    bool dom_star;      /* day-of-month was `*` or `?`: only day-of-week restricts */
    bool dow_star;
    bool has_seconds;
};

enum { F_SEC, F_MIN, F_HOUR, F_DOM, F_MON, F_DOW, F_COUNT };

static const struct field_info {
    const char *name;
    int lo, hi; /* values accepted as written (day-of-week 7 is Sunday) */
} fields[F_COUNT] = {
    [F_SEC] = {"second", 0, 59},      [F_MIN] = {"minute", 0, 59},
    [F_HOUR] = {"hour", 0, 23},       [F_DOM] = {"day-of-month", 1, 31},
    [F_MON] = {"month", 1, 12},       [F_DOW] = {"day-of-week", 0, 7},
};

static const char *const month_names[12] = {"JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                            "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"};
static const char *const day_names[7] = {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"};

static const struct {
    const char *name, *expr;
} macros[] = {
    {"@yearly", "0 0 1 1 *"},  {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
    {"@weekly", "0 0 * * 0"},  {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
    {"@hourly", "0 * * * *"},
};

/* Days in the proleptic Gregorian 400-year cycle; a multiple of 7, so weekdays repeat with it. */
#define CYCLE_DAYS 146097

/* ---- calendar arithmetic (proleptic Gregorian, days since 1970-01-01) ---- */

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int month_days(int64_t y, int m)
{
    static const int len[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : len[m - 1];
}

/* H. Hinnant's days_from_civil / civil_from_days. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * CYCLE_DAYS + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - (CYCLE_DAYS - 1)) / CYCLE_DAYS;
    int64_t doe = z - era * CYCLE_DAYS;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / (CYCLE_DAYS - 1)) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static int weekday_of(int64_t days) /* 0 = Sunday; 1970-01-01 was a Thursday */
{
    int64_t w = (days + 4) % 7;
    return (int)(w < 0 ? w + 7 : w);
}

static bool day_matches(const cron *c, int64_t days)
{
    int64_t y;
    int m, d;
    civil_from_days(days, &y, &m, &d);
    if (!(c->mon >> m & 1))
        return false;
    int last = month_days(y, m);
    int wd = weekday_of(days);
    bool dom_ok = (c->dom >> d & 1) || (c->dom_last && d == last);
    bool dow_ok = (c->dow >> wd & 1) || ((c->dow_last >> wd & 1) && d + 7 > last) ||
                  (c->dow_nth[wd] >> ((d - 1) / 7) & 1);
    if (c->dom_star || c->dow_star)
        return dom_ok && dow_ok; /* the `*` side matches every day */
    return dom_ok || dow_ok;
}

/* ---- parsing ---- */

/* Lowest set bit of mask at or above from, or -1. */
static int next_bit(uint64_t mask, int from)
{
    if (from >= 64)
        return -1;
    mask &= ~0ULL << from;
    return mask ? __builtin_ctzll(mask) : -1;
}

typedef struct parse_ctx {
    const char *field_text; /* the whole field, for messages */
    int f;                  /* F_* */
    eng_err *err;
} parse_ctx;

static eng_rc bad(const parse_ctx *p, const char *fmt, const char *detail)
{
    char why[160];
    snprintf(why, sizeof why, fmt, detail);
    return eng_err_set(p->err, ENG_EINVAL, "%s field \"%.40s\": %s", fields[p->f].name,
                       p->field_text, why);
}

/* Reads a number or (month, day-of-week) a name at *s, advancing *s. */
static eng_rc read_value(const parse_ctx *p, const char **s, int *out)
{
    const char *q = *s;
    if (isdigit((unsigned char)*q)) {
        int v = 0;
        while (isdigit((unsigned char)*q)) {
            if (v > 1000) {
                char num[24];
                snprintf(num, sizeof num, "%.20s", *s);
                return bad(p, "%s is too large", num);
            }
            v = v * 10 + (*q++ - '0');
        }
        if (v < fields[p->f].lo || v > fields[p->f].hi) {
            char msg[64];
            snprintf(msg, sizeof msg, "%d is out of range %d-%d", v, fields[p->f].lo,
                     fields[p->f].hi);
            return bad(p, "%s", msg);
        }
        *s = q;
        *out = v;
        return ENG_OK;
    }
    if (isalpha((unsigned char)*q) && (p->f == F_MON || p->f == F_DOW)) {
        const char *const *names = p->f == F_MON ? month_names : day_names;
        int n = p->f == F_MON ? 12 : 7;
        for (int i = 0; i < n; i++) {
            if (strncasecmp(q, names[i], 3) == 0 && !isalpha((unsigned char)q[3])) {
                *s = q + 3;
                *out = p->f == F_MON ? i + 1 : i;
                return ENG_OK;
            }
        }
        char word[16];
        size_t len = 0;
        while (isalnum((unsigned char)q[len]) && len < sizeof word - 1)
            len++;
        snprintf(word, sizeof word, "%.*s", (int)len, q);
        return bad(p, p->f == F_MON ? "unknown month name \"%s\" (expected JAN-DEC)"
                                    : "unknown day name \"%s\" (expected SUN-SAT)",
                   word);
    }
    if (*q == '\0')
        return bad(p, "%s", "a value is missing");
    char ch[8];
    snprintf(ch, sizeof ch, "%c", *q);
    return bad(p, "unexpected \"%s\"", ch);
}

/* Parses one comma-separated item of a field into *bits (and c's L/# forms). */
static eng_rc parse_item(const parse_ctx *p, const char *item, uint64_t *bits, cron *c)
{
    const struct field_info *fi = &fields[p->f];
    const char *s = item;
    if (p->f == F_DOM && (s[0] == 'L' || s[0] == 'l') && s[1] == '\0') {
        c->dom_last = true;
        return ENG_OK;
    }
    int lo, hi;
    bool star = false, range = false;
    eng_rc rc;
    if (*s == '*' || (*s == '?' && (p->f == F_DOM || p->f == F_DOW))) {
        s++;
        star = true;
        lo = fi->lo;
        hi = p->f == F_DOW ? 6 : fi->hi;
    } else {
        if ((rc = read_value(p, &s, &lo)) != ENG_OK)
            return rc;
        hi = lo;
        if (*s == '-') {
            s++;
            if ((rc = read_value(p, &s, &hi)) != ENG_OK)
                return rc;
            if (hi < lo) {
                char msg[64];
                snprintf(msg, sizeof msg, "range %d-%d runs backwards", lo, hi);
                return bad(p, "%s", msg);
            }
            range = true;
        } else if (*s == '#') {
            if (p->f != F_DOW)
                return bad(p, "%s", "# is only allowed in day-of-week");
            s++;
            int wd = lo % 7;
            if ((*s == 'L' || *s == 'l') && s[1] == '\0') {
                c->dow_last |= (uint8_t)(1u << wd);
            } else if (*s >= '1' && *s <= '5' && s[1] == '\0') {
                c->dow_nth[wd] |= (uint8_t)(1u << (*s - '1'));
            } else {
                return bad(p, "%s", "# must be followed by 1-5 or L");
            }
            return ENG_OK;
        }
    }
    int step = 1;
    if (*s == '/') {
        if (!star && !range)
            return bad(p, "%s", "a step needs * or a range before it (write 5-59/10, not 5/10)");
        s++;
        if (!isdigit((unsigned char)*s))
            return bad(p, "%s", "a step needs a number after /");
        step = 0;
        while (isdigit((unsigned char)*s) && step <= 1000)
            step = step * 10 + (*s++ - '0');
        if (step == 0)
            return bad(p, "%s", "a step of 0 never advances");
        if (step > fi->hi - fi->lo + 1) {
            char msg[64];
            snprintf(msg, sizeof msg, "step %d is larger than the range %d-%d", step, fi->lo,
                     fi->hi);
            return bad(p, "%s", msg);
        }
    }
    if (*s != '\0') {
        char ch[8];
        snprintf(ch, sizeof ch, "%c", *s);
        return bad(p, "unexpected \"%s\"", ch);
    }
    for (int v = lo; v <= hi; v += step)
        *bits |= 1ULL << (p->f == F_DOW ? v % 7 : v);
    return ENG_OK;
}

static eng_rc parse_field(cron *c, int f, const char *text, uint64_t *bits, eng_err *err)
{
    parse_ctx p = {.field_text = text, .f = f, .err = err};
    char item[64];
    const char *s = text;
    for (;;) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        if (len == 0)
            return bad(&p, "%s", "empty list item");
        if (len >= sizeof item)
            return bad(&p, "%s", "list item too long");
        memcpy(item, s, len);
        item[len] = '\0';
        eng_rc rc = parse_item(&p, item, bits, c);
        if (rc != ENG_OK)
            return rc;
        if (!comma)
            return ENG_OK;
        s = comma + 1;
    }
}

/* True when some day of a whole 400-year cycle matches the day fields. */
static bool some_day_matches(const cron *c)
{
    int64_t start = days_from_civil(2000, 1, 1);
    for (int64_t d = start; d < start + CYCLE_DAYS; d++)
        if (day_matches(c, d))
            return true;
    return false;
}

eng_rc cron_parse(const char *expr, cron **out, eng_err *err)
{
    if (!expr)
        return eng_err_set(err, ENG_EINVAL, "empty cron expression");
    while (*expr == ' ' || *expr == '\t')
        expr++;
    if (*expr == '@') {
        size_t len = strcspn(expr, " \t");
        if (expr[len + strspn(expr + len, " \t")] != '\0')
            return eng_err_set(err, ENG_EINVAL, "cron macro \"%.*s\" takes nothing after it",
                               (int)(len > 20 ? 20 : len), expr);
        for (size_t i = 0; i < ENG_ARRAY_LEN(macros); i++)
            if (strlen(macros[i].name) == len && strncasecmp(expr, macros[i].name, len) == 0)
                return cron_parse(macros[i].expr, out, err);
        return eng_err_set(err, ENG_EINVAL,
                           "unknown cron macro \"%.*s\" (expected @yearly, @annually, @monthly, "
                           "@weekly, @daily, @midnight or @hourly)",
                           (int)(len > 20 ? 20 : len), expr);
    }
    char buf[256];
    if (strlen(expr) >= sizeof buf)
        return eng_err_set(err, ENG_EINVAL, "cron expression longer than %zu characters",
                           sizeof buf - 1);
    strcpy(buf, expr);
    char *tok[7];
    int n = 0;
    for (char *save = NULL, *t = strtok_r(buf, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
        if (n == 6)
            return eng_err_set(err, ENG_EINVAL,
                               "cron expression has more than 6 fields (expected 5, or 6 with "
                               "seconds first)");
        tok[n++] = t;
    }
    if (n == 0)
        return eng_err_set(err, ENG_EINVAL, "empty cron expression");
    if (n < 5)
        return eng_err_set(err, ENG_EINVAL,
                           "cron expression has %d fields (expected 5, or 6 with seconds first)",
                           n);
    cron c = {.has_seconds = n == 6};
    uint64_t bits[F_COUNT] = {[F_SEC] = n == 6 ? 0 : 1}; /* five fields: second 0 */
    for (int f = n == 6 ? F_SEC : F_MIN; f < F_COUNT; f++) {
        const char *text = tok[f - (n == 6 ? 0 : 1)];
        eng_rc rc = parse_field(&c, f, text, &bits[f], err);
        if (rc != ENG_OK)
            return rc;
        if (f == F_DOM)
            c.dom_star = strcmp(text, "*") == 0 || strcmp(text, "?") == 0;
        if (f == F_DOW)
            c.dow_star = strcmp(text, "*") == 0 || strcmp(text, "?") == 0;
    }
    c.sec = bits[F_SEC];
    c.min = bits[F_MIN];
    c.hour = (uint32_t)bits[F_HOUR];
    c.dom = (uint32_t)bits[F_DOM];
    c.mon = (uint16_t)bits[F_MON];
    c.dow = (uint8_t)bits[F_DOW];
    if (!some_day_matches(&c))
        return eng_err_set(err, ENG_EINVAL,
                           "cron expression \"%.60s\" never fires: no date has that day-of-month "
                           "in those months",
                           expr);
    *out = eng_xmalloc(sizeof c);
    **out = c;
    return ENG_OK;
}

void cron_free(cron *c)
{
    free(c);
}

bool cron_has_seconds(const cron *c)
{
    return c->has_seconds;
}

/* ---- search ---- */

/* First civil second at or after t that matches the fields, or -1 past a 400-year cycle (which
 * parsing rules out, so -1 means the caller asked beyond CRON_MAX_MS). */
static int64_t next_civil(const cron *c, int64_t t)
{
    int64_t day = t >= 0 ? t / 86400 : -((-t + 86399) / 86400);
    int tod = (int)(t - day * 86400);
    for (int64_t end = day + CYCLE_DAYS + 1; day <= end; day++, tod = 0) {
        if (!day_matches(c, day))
            continue;
        int h0 = tod / 3600, m0 = tod / 60 % 60, s0 = tod % 60;
        for (int h = next_bit(c->hour, h0); h >= 0; h = next_bit(c->hour, h + 1)) {
            int mfrom = h == h0 ? m0 : 0;
            for (int m = next_bit(c->min, mfrom); m >= 0; m = next_bit(c->min, m + 1)) {
                int s = next_bit(c->sec, h == h0 && m == m0 ? s0 : 0);
                if (s >= 0)
                    return day * 86400 + h * 3600 + m * 60 + s;
            }
        }
    }
    return -1;
}

typedef struct zcal {
    UCalendar *cal;
    eng_err *err;
} zcal;

static eng_rc zone_open(const char *zone, zcal *z, eng_err *err)
{
    if (!zone || !*zone)
        zone = "UTC";
    UChar id[64], canon[64];
    size_t len = strlen(zone);
    bool printable = true; /* IANA names are printable ASCII; u_charsToUChars needs that */
    for (size_t i = 0; i < len && printable; i++)
        printable = (unsigned char)zone[i] > ' ' && (unsigned char)zone[i] < 0x7f;
    if (!printable || len >= ENG_ARRAY_LEN(id))
        return eng_err_set(err, ENG_EINVAL, "unknown time zone \"%.64s\"", zone);
    u_charsToUChars(zone, id, (int32_t)len);
    UErrorCode st = U_ZERO_ERROR;
    UBool system = false;
    ucal_getCanonicalTimeZoneID(id, (int32_t)len, canon, 64, &system, &st);
    if (U_FAILURE(st) || !system)
        return eng_err_set(err, ENG_EINVAL, "unknown time zone \"%.64s\" (expected an IANA zone "
                                            "such as Europe/Berlin)", zone);
    z->cal = ucal_open(id, (int32_t)len, "en_US_POSIX", UCAL_GREGORIAN, &st);
    if (U_FAILURE(st))
        return eng_err_set(err, ENG_EINTERNAL, "cannot open time zone \"%s\": %s", zone,
                           u_errorName(st));
    ucal_setAttribute(z->cal, UCAL_LENIENT, 1);
    ucal_setAttribute(z->cal, UCAL_REPEATED_WALL_TIME, UCAL_WALLTIME_FIRST);
    ucal_setAttribute(z->cal, UCAL_SKIPPED_WALL_TIME, UCAL_WALLTIME_NEXT_VALID);
    z->err = err;
    return ENG_OK;
}

eng_rc cron_zone_check(const char *zone, eng_err *err)
{
    zcal z;
    eng_rc rc = zone_open(zone, &z, err);
    if (rc == ENG_OK)
        ucal_close(z.cal);
    return rc;
}

static eng_rc icu_failed(const zcal *z, UErrorCode st)
{
    return eng_err_set(z->err, ENG_EINTERNAL, "time zone conversion failed: %s", u_errorName(st));
}

/* Civil seconds of the wall time at instant ms (rounded down to the second). */
static eng_rc civil_at(const zcal *z, int64_t ms, int64_t *out)
{
    UErrorCode st = U_ZERO_ERROR;
    ucal_setMillis(z->cal, (UDate)ms, &st);
    int32_t off = ucal_get(z->cal, UCAL_ZONE_OFFSET, &st) + ucal_get(z->cal, UCAL_DST_OFFSET, &st);
    if (U_FAILURE(st))
        return icu_failed(z, st);
    int64_t local = ms + off;
    *out = local >= 0 ? local / 1000 : -((-local + 999) / 1000);
    return ENG_OK;
}

/* The instant of civil second t under cron.h's DST rule (ICU's NEXT_VALID and FIRST). */
static eng_rc instant_of(const zcal *z, int64_t t, int64_t *out)
{
    int64_t y;
    int m, d;
    int64_t day = t / 86400; /* t >= 0: searches start at or after the epoch */
    int tod = (int)(t % 86400);
    civil_from_days(day, &y, &m, &d);
    UErrorCode st = U_ZERO_ERROR;
    ucal_clear(z->cal);
    ucal_setDateTime(z->cal, (int32_t)y, m - 1, d, tod / 3600, tod / 60 % 60, tod % 60, &st);
    ucal_set(z->cal, UCAL_MILLISECOND, 0);
    UDate ms = ucal_getMillis(z->cal, &st);
    if (U_FAILURE(st))
        return icu_failed(z, st);
    *out = (int64_t)ms;
    return ENG_OK;
}

/* Civil second just past the repeated wall times that contain instant ms (the end of the fold
 * that ms is in the second pass of), or -1 when ICU knows no earlier transition. */
static int64_t fold_end(const zcal *z, int64_t ms)
{
    UErrorCode st = U_ZERO_ERROR;
    UDate tr = 0;
    ucal_setMillis(z->cal, (UDate)ms, &st);
    if (U_FAILURE(st) ||
        !ucal_getTimeZoneTransitionDate(z->cal, UCAL_TZ_TRANSITION_PREVIOUS_INCLUSIVE, &tr, &st))
        return -1;
    int64_t before;
    if (civil_at(z, (int64_t)tr - 1, &before) != ENG_OK)
        return -1;
    return before + 1; /* the wall time the clock showed just before turning back, plus one */
}

eng_rc cron_next(const cron *c, const char *zone, int64_t after_ms, int64_t *out_ms, eng_err *err)
{
    if (after_ms < 0 || after_ms >= CRON_MAX_MS)
        return eng_err_set(err, ENG_EINVAL,
                           "instant %lld is outside the supported range (1970 to 9999)",
                           (long long)after_ms);
    zcal z;
    eng_rc rc = zone_open(zone, &z, err);
    if (rc != ENG_OK)
        return rc;
    int64_t t0, t;
    if ((rc = civil_at(&z, after_ms, &t0)) != ENG_OK)
        goto out;
    t = t0 < 0 ? 0 : t0;
    bool jumped = false;
    /* Walking forward: candidates whose instant is not past after_ms only occur when after_ms is
     * in the second pass of a repeated hour, so one jump past that fold normally suffices. */
    for (int guard = 0;; guard++) {
        int64_t cand = next_civil(c, t);
        int64_t ms = 0;
        if (cand < 0 || cand / 86400 > days_from_civil(9999, 12, 31)) {
            rc = eng_err_set(err, ENG_ENOTFOUND, "no fire time before the year 10000");
            goto out;
        }
        if ((rc = instant_of(&z, cand, &ms)) != ENG_OK)
            goto out;
        if (ms > after_ms) {
            if (ms > CRON_MAX_MS) {
                rc = eng_err_set(err, ENG_ENOTFOUND, "no fire time before the year 10000");
                goto out;
            }
            *out_ms = ms;
            goto out;
        }
        if (guard == 100000) {
            rc = eng_err_set(err, ENG_EINTERNAL, "cron search did not converge after %lld",
                             (long long)after_ms);
            goto out;
        }
        /* A wall time later than after_ms's own whose instant is not later: a fold. */
        int64_t fe = !jumped && cand > t0 ? fold_end(&z, after_ms) : -1;
        jumped = jumped || fe >= 0;
        t = fe > cand ? fe : cand + 1;
    }
out:
    ucal_close(z.cal);
    return rc;
}

eng_rc cron_local_time(const char *zone, int64_t ms, char *out, size_t outlen, eng_err *err)
{
    if (ms < 0 || ms > CRON_MAX_MS)
        return eng_err_set(err, ENG_EINVAL, "instant %lld is outside the supported range",
                           (long long)ms);
    zcal z;
    eng_rc rc = zone_open(zone, &z, err);
    if (rc != ENG_OK)
        return rc;
    UErrorCode st = U_ZERO_ERROR;
    ucal_setMillis(z.cal, (UDate)ms, &st);
    int32_t off = ucal_get(z.cal, UCAL_ZONE_OFFSET, &st) + ucal_get(z.cal, UCAL_DST_OFFSET, &st);
    ucal_close(z.cal);
    if (U_FAILURE(st))
        return eng_err_set(err, ENG_EINTERNAL, "time zone conversion failed: %s", u_errorName(st));
    int64_t local = (ms + off) / 1000, day = local / 86400, y;
    int tod = (int)(local % 86400), m, d, aoff = (off < 0 ? -off : off) / 60000;
    civil_from_days(day, &y, &m, &d);
    snprintf(out, outlen, "%04lld-%02d-%02dT%02d:%02d:%02d%c%02d:%02d", (long long)y, m, d,
             tod / 3600, tod / 60 % 60, tod % 60, off < 0 ? '-' : '+', aoff / 60, aoff % 60);
    return ENG_OK;
}
