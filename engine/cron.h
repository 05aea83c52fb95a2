/* engine/cron.h: cron expressions, evaluated in the local time of an IANA zone.
 *
 * Syntax: five fields "minute hour day-of-month month day-of-week", or six with a leading second
 * field; fields are separated by spaces or tabs.
 *   second 0-59, minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 or JAN-DEC,
 *   day-of-week 0-7 or SUN-SAT (0 and 7 are Sunday). Names are case-insensitive.
 * Each field is a comma-separated list of items:
 *   *            every value (`?` is accepted as `*` in day-of-month and day-of-week)
 *   5            one value
 *   1-5          an inclusive range (MON-FRI, JAN-MAR); a range must not run backwards
 *   * / 15       a step over the whole field (written without spaces), starting at its minimum
 *   10-50/5      a step over a range; a step needs `*` or a range before it, as in croner
 *   L            day-of-month only: the last day of the month
 *   FRI#2, 5#2   day-of-week only: the 2nd Friday of the month (#1 to #5)
 *   FRI#L, 5#L   day-of-week only: the last Friday of the month
 * `W` (nearest weekday), `LW`, a year field and croner's `+` modifier are not supported.
 * Macros: @yearly and @annually (0 0 1 1 *), @monthly (0 0 1 * *), @weekly (0 0 * * 0),
 * @daily and @midnight (0 0 * * *), @hourly (0 * * * *).
 *
 * Day-of-month and day-of-week: when both are restricted, a day matches if EITHER matches (Vixie
 * cron's and croner's default): "0 9 1 * MON" fires on the 1st and on every Monday. When one of
 * them is `*` (or `?`), only the other one restricts. A field counts as unrestricted only when it
 * is exactly `*` or `?`; "* / 2" (a step) restricts, as in croner (Vixie cron would treat a field
 * that starts with `*` as unrestricted).
 *
 * Expressions that can never fire (such as "0 0 31 2 *" or "0 0 30 FEB *") are refused at parse
 * time: the day fields are checked against a whole 400-year Gregorian cycle, after which the
 * calendar repeats, so cron_next always finds a day within a bounded search.
 *
 * Local time and DST (the expression is read as wall-clock time of the zone):
 * - a wall time that does not exist (it falls in a spring-forward gap) fires once, at the first
 *   instant after the gap: "30 2 * * *" in America/New_York fires at 03:00 EDT on the day clocks
 *   skip 02:00-03:00, and the times of the gap that an interval expression such as "*\/15 * * * *"
 *   names all fold into that one fire at 03:00;
 * - a wall time that happens twice (fall back) fires once, at its first occurrence: "30 1 * * *"
 *   fires at 01:30 EDT, not again at 01:30 EST; this holds for every expression, so "*\/15 * * * *"
 *   does not fire during the repeated hour's second pass.
 * Croner agrees on expressions with a single value in each of second, minute and hour, and
 * differs on the others (it fires twice in a repeated hour and skips times in a gap).
 *
 * Zone rules come from ICU (the zone id is checked, an unknown one is refused). Everything here is
 * thread-safe: a cron is immutable after parsing, and cron_next opens its own ICU calendar. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

typedef struct cron cron; /* opaque, immutable once parsed */

/* Latest instant cron_next accepts or returns: 9999-12-31T23:59:59.999Z. Earliest: the epoch. */
#define CRON_MAX_MS 253402300799999LL

/* Parses expr into *out (a new cron the caller frees with cron_free; unchanged on error).
 * ENG_EINVAL with a message naming the field and the reason for bad syntax, values out of range,
 * backward ranges, zero steps, unknown macros or names, and expressions that never fire.
 * err->field is left empty: callers name the field. */
ENG_MUST_CHECK eng_rc cron_parse(const char *expr, cron **out, eng_err *err);

/* NULL-safe. */
void cron_free(cron *c);

/* True when the expression has a seconds field (so it may fire more than once a minute). */
bool cron_has_seconds(const cron *c);

/* Checks that zone is a known IANA zone id (NULL or "" mean UTC). ENG_EINVAL names the zone. */
ENG_MUST_CHECK eng_rc cron_zone_check(const char *zone, eng_err *err);

/* The first fire time strictly after after_ms (epoch milliseconds), reading the expression in the
 * local time of zone (NULL or "" mean UTC), into *out_ms (a whole second; unchanged on error).
 * ENG_EINVAL for an unknown zone or after_ms outside [0, CRON_MAX_MS); ENG_ENOTFOUND when the
 * next fire time would be after CRON_MAX_MS. */
ENG_MUST_CHECK eng_rc cron_next(const cron *c, const char *zone, int64_t after_ms, int64_t *out_ms,
                                eng_err *err);

/* Writes instant ms as RFC 3339 local time of zone with its UTC offset at that instant
 * ("2026-03-08T03:00:00-04:00"; "Z" never appears, UTC is "+00:00") into out (at least 32 bytes).
 * ENG_EINVAL for an unknown zone or ms outside [0, CRON_MAX_MS]. */
ENG_MUST_CHECK eng_rc cron_local_time(const char *zone, int64_t ms, char *out, size_t outlen,
                                      eng_err *err);
