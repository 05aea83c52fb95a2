/* engine/duration.h: human durations in definitions ("500ms", "30s", "5m", "2h", "3d", "1h30m").
 *
 * A duration is one or more <digits><unit> components, units ms, s, m, h, d, summed. No sign, no
 * spaces, no fractions: "1.5h" is written "1h30m". "0s" is a valid zero. */
#pragma once

#include <stdint.h>

#include "engine/err.h"

/* Longest accepted duration: 10 years, far beyond any sane retry, delay or wait, and small enough
 * that adding it to an epoch-millisecond clock never overflows. */
#define ENG_DURATION_MAX_MS (10LL * 366 * 24 * 3600 * 1000)

/* Parses s into *out_ms (unchanged on error). ENG_EINVAL for empty, negative, unknown units,
 * missing digits or a total above ENG_DURATION_MAX_MS; the message says which (err->field is left
 * empty: callers name the field). */
eng_rc eng_duration_parse(const char *s, int64_t *out_ms, eng_err *err);
