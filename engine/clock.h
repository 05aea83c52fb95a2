/* engine/clock.h: wall-clock and monotonic-clock helpers. The engine's own clock (with the test offset) lives in the
 * database (flowd_now()); workers receive it with every claim, so nothing here reads an offset. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "engine/err.h"

/* Milliseconds since the Unix epoch, real time. */
int64_t eng_clock_wall_ms(void);
/* Milliseconds of the monotonic clock (unaffected by clock steps): for intervals and cache ages
 * only, never for times stored or shown. */
int64_t eng_clock_mono_ms(void);
/* The same in microseconds, for orderings finer than a millisecond. */
int64_t eng_clock_mono_us(void);
/* Parses an RFC 3339 timestamp ("2026-11-22T09:30:00Z", "...+01:00", fractional seconds allowed). */
eng_rc eng_time_parse_rfc3339(const char *s, int64_t *out_ms, eng_err *err);
/* Formats ms since the epoch as RFC 3339 UTC with milliseconds into out (at least 25 bytes). */
void eng_time_format_rfc3339(int64_t ms, char *out, int outlen);
