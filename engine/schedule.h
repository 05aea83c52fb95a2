/* engine/schedule.h: what a schedule is, and the pure computations on it: its ticks, which of them
 * fire after downtime (catch-up), the input of each run, and its start jitter.
 *
 * A schedule's definition is the body of PUT /v1/schedules/{name}, which is also how the engine
 * reads a stored one back (flowd_schedules_due):
 *
 *   {"workflow": NAME, "version": N | null, "cron": EXPR | "every": DURATION, "tz": ZONE,
 *    "input": TEMPLATE, "overlap": "allow" | "skip" | "cancel_previous",
 *    "catchup": "none" | "latest" | "all", "catchup_window": DURATION, "jitter": DURATION,
 *    "start_at": RFC 3339 | null, "end_at": RFC 3339 | null, "paused": BOOL}
 *
 * Ticks: a cron expression read in the zone's local time (engine/cron.h: syntax and the DST
 * rule), or every DURATION counted from start_at (else from the Unix epoch, so "15m" ticks at
 * :00, :15, :30 and :45), at or after start_at and at or before end_at.
 *
 * Catch-up: the engine fires the ticks that fell due since the schedule's next tick not yet
 * handled (after downtime, a pause, or a test clock moved forward):
 *   none    the latest tick, if it is at most ENG_SCHED_GRACE_MS late (so a busy second does
 *           not lose it); the others are passed over
 *   latest  the latest tick, however late
 *   all     every tick no older than catchup_window (default 1d), in order, at most
 *           ENG_SCHED_PASS_MAX per pass (further passes follow at once)
 *
 * Input: a JSON template (engine/wf_template.h) whose only root is `schedule`: {{schedule.name}},
 * {{schedule.fire_time}} (the tick, RFC 3339 UTC, not the moment it ran) and
 * {{schedule.previous_fire_time}} (the tick of the schedule's previous run, null for its first).
 *
 * Everything here is pure and thread-safe; a parsed schedule is immutable. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/err.h"

typedef struct eng_sched eng_sched; /* opaque, immutable once parsed */

#define ENG_SCHED_GRACE_MS       60000LL /* catchup none: a tick this late still fires */
#define ENG_SCHED_PASS_MAX       1000    /* most ticks of one schedule fired by one pass */
#define ENG_SCHED_MIN_EVERY_MS   1000LL  /* the shortest `every` */
#define ENG_SCHED_NAME_MAX       100
#define ENG_SCHED_INPUT_MAX      65536   /* bytes of the input template as compact JSON */

typedef enum { ENG_SCHED_NONE, ENG_SCHED_LATEST, ENG_SCHED_ALL } eng_sched_catchup;

/* Whether name can name a schedule: 1 to ENG_SCHED_NAME_MAX of A-Z a-z 0-9 . _ - (it lives in a
 * path, unescaped). */
bool eng_sched_name_ok(const char *name);

/* Checks def (borrowed; unknown members are the caller's business) and parses it into *out (free
 * with eng_sched_free; untouched on error). ENG_EINVAL with err->field = the JSON pointer of the
 * offending member ("/cron", "/tz", "/input/subject", ...) and the reason. */
ENG_MUST_CHECK eng_rc eng_sched_parse(const json_t *def, eng_sched **out, eng_err *err);
void eng_sched_free(eng_sched *s); /* NULL-safe */

/* Whether a and b tick at the same instants (cron or every, tz, start_at, end_at): a PUT that
 * changes none of them keeps the schedule's place in time (its next tick and its catch-up). */
bool eng_sched_same_ticks(const eng_sched *a, const eng_sched *b);

eng_sched_catchup eng_sched_catchup_of(const eng_sched *s);
const char *eng_sched_tz(const eng_sched *s);                /* "UTC" when not given */
const json_t *eng_sched_input_template(const eng_sched *s);  /* borrowed */

/* The first tick strictly after after_ms into *out_ms. ENG_ENOTFOUND when there is none (past
 * end_at, or after the year 9999). */
ENG_MUST_CHECK eng_rc eng_sched_next(const eng_sched *s, int64_t after_ms, int64_t *out_ms,
                                     eng_err *err);

/* What a fire pass does with a schedule whose earliest unhandled tick next_ms is due at now_ms. */
typedef struct eng_sched_plan {
    int64_t *fires;  /* ticks to fire, ascending (caller frees) */
    int nfires;
    int64_t missed;  /* ticks passed over (counted up to 10,000 a pass) */
    int64_t next_ms; /* the earliest tick left unhandled, -1 when none is left */
} eng_sched_plan;

/* Fills *p (see the catch-up rules above). A tick ahead of now_ms is being made ahead (see
 * flowd_schedules_due): the plan is that tick alone, and the next. */
ENG_MUST_CHECK eng_rc eng_sched_plan_due(const eng_sched *s, int64_t next_ms, int64_t now_ms,
                                         eng_sched_plan *p, eng_err *err);

/* The input of the run of tick fire_ms (new reference in *out): the template rendered for the
 * schedule called name; prev_ms is the tick of its previous run, or -1. ENG_EINVAL naming the
 * pointer inside /input when the template cannot render. */
ENG_MUST_CHECK eng_rc eng_sched_input(const eng_sched *s, const char *name, int64_t fire_ms,
                                      int64_t prev_ms, json_t **out, eng_err *err);

/* How long after tick fire_ms the run of schedule id starts: in [0, jitter], the same for the same
 * (schedule, tick) in every process, spread evenly over ticks and schedules. */
int64_t eng_sched_jitter_ms(const eng_sched *s, int64_t id, int64_t fire_ms);
