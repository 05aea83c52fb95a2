/* tests/cron/cron_driver.c: prints cron_next's next 10 fire times for N random (expression, start
 * instant, zone) triples from a fixed seed, one line each, for tests/cron/compare.js:
 *   expr TAB zone TAB start_ms TAB OK t1 ... t10      or      expr TAB zone TAB start_ms TAB ERR msg
 * Half of the starts lie within two days before a zone transition, and hours 0-3 are favoured, so
 * that many runs cross a DST change in the zone's small hours.
 *
 *   cron_driver N SEED */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unicode/ucal.h>

#include "engine/cron.h"

/* DST in both hemispheres, 30-minute DST (Lord_Howe), DST at midnight (Havana), negative DST
 * (Dublin), offsets of :30 and :45 with and without DST, and a few without DST at all. Zones whose
 * rules changed after 2022 are left out: ICU here and node's ICU may carry different tzdata. */
static const char *const zones[] = {
    "America/New_York",  "Europe/Berlin",       "Australia/Lord_Howe", "Asia/Kathmandu",
    "Europe/London",     "America/Los_Angeles", "Australia/Adelaide",  "America/St_Johns",
    "Pacific/Chatham",   "Asia/Kolkata",        "Australia/Eucla",     "Pacific/Marquesas",
    "America/Havana",    "Europe/Dublin",       "Pacific/Auckland",    "UTC",
    "Asia/Tokyo",        "Australia/Sydney",
};

static uint64_t rng_state;

static uint32_t rnd(uint32_t n) /* xorshift64*, uniform enough for test input */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ULL) >> 33) % n;
}

static const char *const months[] = {"JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                     "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"};
static const char *const days[] = {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"};

static void put_name(char *out, size_t cap, const char *name)
{
    switch (rnd(3)) {
    case 0: snprintf(out, cap, "%s", name); break;
    case 1: snprintf(out, cap, "%c%c%c", name[0], name[1] + 32, name[2] + 32); break;
    default: snprintf(out, cap, "%c%c%c", name[0] + 32, name[1] + 32, name[2] + 32); break;
    }
}

/* A value of [lo, hi] for field f; months and weekdays sometimes by name. */
static void value(char *out, size_t cap, char f, int v)
{
    if (f == 'M' && rnd(3) == 0)
        put_name(out, cap, months[v - 1]);
    else if (f == 'W' && v < 7 && rnd(3) == 0)
        put_name(out, cap, days[v]);
    else
        snprintf(out, cap, "%d", v);
}

static int pick(int lo, int hi)
{
    return lo + (int)rnd((uint32_t)(hi - lo + 1));
}

static void gen_field(char *out, size_t cap, char f, int lo, int hi, int star_pct)
{
    char a[8], b[8];
    int r = (int)rnd(100);
    if (r < star_pct) {
        snprintf(out, cap, "*");
        return;
    }
    r = (int)rnd(100);
    int x = f == 'h' && rnd(2) ? pick(0, 3) : pick(lo, hi);
    if (r < 40) {
        value(out, cap, f, x);
    } else if (r < 55) {
        int y = pick(lo, hi);
        value(a, sizeof a, f, x);
        value(b, sizeof b, f, y);
        snprintf(out, cap, "%s,%s", a, b);
    } else if (r < 70) {
        int y = pick(x, hi);
        value(a, sizeof a, f, x);
        value(b, sizeof b, f, y);
        snprintf(out, cap, "%s-%s", a, b);
    } else if (r < 85) {
        snprintf(out, cap, "*/%d", pick(1, (hi - lo + 1) / 2));
    } else {
        int y = pick(x, hi);
        value(a, sizeof a, f, x);
        value(b, sizeof b, f, y);
        snprintf(out, cap, "%s-%s/%d", a, b, pick(1, (hi - lo + 1) / 3));
    }
}

static void gen_expr(char *out, size_t cap)
{
    static const char *const macros[] = {"@hourly", "@daily", "@midnight", "@weekly",
                                         "@monthly", "@yearly", "@annually"};
    if (rnd(20) == 0) {
        snprintf(out, cap, "%s", macros[rnd(7)]);
        return;
    }
    char sec[32] = "", min[32], hour[32], dom[32], mon[32], dow[32];
    if (rnd(2))
        gen_field(sec, sizeof sec, 's', 0, 59, 5);
    gen_field(min, sizeof min, 'm', 0, 59, 10);
    gen_field(hour, sizeof hour, 'h', 0, 23, 15);
    if (rnd(12) == 0)
        snprintf(dom, sizeof dom, "L");
    else
        gen_field(dom, sizeof dom, 'd', 1, 31, 55);
    gen_field(mon, sizeof mon, 'M', 1, 12, 65);
    int r = (int)rnd(100);
    if (r < 8)
        snprintf(dow, sizeof dow, "%s#%d", rnd(2) ? days[rnd(7)] : "5", pick(1, 5));
    else if (r < 13)
        snprintf(dow, sizeof dow, "%d#L", pick(0, 6));
    else
        gen_field(dow, sizeof dow, 'W', 0, 7, 55);
    snprintf(out, cap, "%s%s%s %s %s %s %s", sec, sec[0] ? " " : "", min, hour, dom, mon, dow);
}

/* A start in 2000-2039; half of them within two days before one of the zone's transitions. */
static int64_t gen_start(const char *zone)
{
    int64_t lo = 946684800000LL, span = 40LL * 365 * 86400000;
    int64_t t = lo + (int64_t)(((uint64_t)rnd(1u << 30) << 20 | rnd(1u << 20)) % (uint64_t)span);
    if (rnd(2)) {
        UErrorCode st = U_ZERO_ERROR;
        UChar id[64];
        u_charsToUChars(zone, id, (int32_t)strlen(zone) + 1);
        UCalendar *cal = ucal_open(id, -1, "en_US_POSIX", UCAL_GREGORIAN, &st);
        UDate tr;
        ucal_setMillis(cal, (UDate)t, &st);
        if (U_SUCCESS(st) &&
            ucal_getTimeZoneTransitionDate(cal, UCAL_TZ_TRANSITION_NEXT, &tr, &st) &&
            U_SUCCESS(st))
            t = (int64_t)tr - (int64_t)rnd(2 * 86400) * 1000 - (int64_t)rnd(1000);
        ucal_close(cal);
    }
    return t;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: cron_driver N SEED\n");
        return 2;
    }
    long n = strtol(argv[1], NULL, 10);
    rng_state = strtoull(argv[2], NULL, 10) * 0x9E3779B97F4A7C15ULL | 1;
    for (long i = 0; i < n; i++) {
        char expr[200];
        gen_expr(expr, sizeof expr);
        const char *zone = zones[rnd(ENG_ARRAY_LEN(zones))];
        int64_t t = gen_start(zone);
        printf("%s\t%s\t%lld\t", expr, zone, (long long)t);
        cron *c = NULL;
        eng_err err;
        if (cron_parse(expr, &c, &err) != ENG_OK) {
            printf("ERR %s\n", err.msg);
            continue;
        }
        printf("OK");
        for (int k = 0; k < 10; k++) {
            if (cron_next(c, zone, t, &t, &err) != ENG_OK) {
                printf(" ERR %s", err.msg);
                break;
            }
            printf(" %lld", (long long)t);
        }
        printf("\n");
        cron_free(c);
    }
    return 0;
}
