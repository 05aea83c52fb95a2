/* engine/schedule.c: schedules' definitions, ticks, catch-up and inputs (see schedule.h). */
#include "engine/schedule.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/clock.h"
#include "engine/cron.h"
#include "engine/duration.h"
#include "engine/mem.h"
#include "engine/wf_template.h"

#define SCHED_COUNT_MAX 10000     /* missed ticks counted one by one per pass */
#define SCHED_WALK_MAX  1000000   /* ticks walked to find the latest due one */
#define SCHED_DEFAULT_WINDOW_MS 86400000LL

struct eng_sched {
    cron *cron;           /* NULL for `every` */
    char *cron_text;
    int64_t every_ms;     /* 0 for cron */
    char *tz;
    int64_t start_ms;     /* -1: none */
    int64_t end_ms;       /* -1: none */
    eng_sched_catchup catchup;
    int64_t window_ms;
    int64_t jitter_ms;
    json_t *input;        /* the template */
};

bool eng_sched_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > ENG_SCHED_NAME_MAX)
        return false;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-')
            return false;
    return true;
}

void eng_sched_free(eng_sched *s)
{
    if (!s)
        return;
    cron_free(s->cron);
    free(s->cron_text);
    free(s->tz);
    json_decref(s->input);
    free(s);
}

/* An optional duration member into *ms (dflt when absent or null). */
static eng_rc sched_duration(const json_t *def, const char *name, int64_t dflt, int64_t min_ms,
                             int64_t *ms, eng_err *err)
{
    char ptr[64];
    snprintf(ptr, sizeof ptr, "/%s", name);
    const json_t *v = json_object_get(def, name);
    *ms = dflt;
    if (!v || json_is_null(v))
        return ENG_OK;
    eng_err derr;
    if (!json_is_string(v) || eng_duration_parse(json_string_value(v), ms, &derr) != ENG_OK)
        return eng_err_field(err, ENG_EINVAL, ptr, "must be a duration such as \"30s\", \"15m\" "
                                                   "or \"1h30m\"");
    if (*ms < min_ms)
        return eng_err_field(err, ENG_EINVAL, ptr, "must be at least %lld ms", (long long)min_ms);
    return ENG_OK;
}

static eng_rc sched_instant(const json_t *def, const char *name, int64_t *ms, eng_err *err)
{
    char ptr[64];
    snprintf(ptr, sizeof ptr, "/%s", name);
    const json_t *v = json_object_get(def, name);
    *ms = -1;
    if (!v || json_is_null(v))
        return ENG_OK;
    eng_err terr;
    if (!json_is_string(v))
        return eng_err_field(err, ENG_EINVAL, ptr, "must be an RFC 3339 timestamp");
    if (eng_time_parse_rfc3339(json_string_value(v), ms, &terr) != ENG_OK)
        return eng_err_field(err, ENG_EINVAL, ptr, "%s", terr.msg);
    if (*ms < 0 || *ms >= CRON_MAX_MS)
        return eng_err_field(err, ENG_EINVAL, ptr, "must lie between 1970 and 9999");
    return ENG_OK;
}

static eng_rc sched_enum(const json_t *def, const char *name, const char *const *values,
                         int *out, eng_err *err)
{
    const json_t *v = json_object_get(def, name);
    *out = 0;
    if (!v || json_is_null(v))
        return ENG_OK;
    for (int i = 0; json_is_string(v) && values[i]; i++)
        if (strcmp(json_string_value(v), values[i]) == 0) {
            *out = i;
            return ENG_OK;
        }
    char ptr[64];
    snprintf(ptr, sizeof ptr, "/%s", name);
    return eng_err_field(err, ENG_EINVAL, ptr, "must be %s, %s or %s", values[0], values[1],
                         values[2]);
}

/* Templates of a schedule's input may read only what a fire provides. */
static eng_rc sched_input_ref(void *arg, const char *path, const char *ptr, eng_err *err)
{
    (void)arg;
    static const char *const known[] = {"schedule.name", "schedule.fire_time",
                                        "schedule.previous_fire_time"};
    for (size_t i = 0; i < ENG_ARRAY_LEN(known); i++)
        if (strcmp(path, known[i]) == 0)
            return ENG_OK;
    return eng_err_field(err, ENG_EINVAL, ptr,
                         "{{%.64s}}: a schedule's input can use only {{schedule.name}}, "
                         "{{schedule.fire_time}} and {{schedule.previous_fire_time}}",
                         path);
}

static eng_rc sched_parse_ticks(const json_t *def, eng_sched *s, eng_err *err)
{
    const json_t *cr = json_object_get(def, "cron"), *ev = json_object_get(def, "every");
    bool has_cron = cr && !json_is_null(cr), has_every = ev && !json_is_null(ev);
    if (has_cron && has_every)
        return eng_err_field(err, ENG_EINVAL, "/every", "give cron or every, not both");
    if (!has_cron && !has_every)
        return eng_err_field(err, ENG_EINVAL, "/cron", "a schedule needs cron or every");
    eng_rc rc;
    if (has_cron) {
        eng_err cerr;
        if (!json_is_string(cr))
            return eng_err_field(err, ENG_EINVAL, "/cron", "must be a cron expression");
        if (cron_parse(json_string_value(cr), &s->cron, &cerr) != ENG_OK)
            return eng_err_field(err, ENG_EINVAL, "/cron", "%s", cerr.msg);
        s->cron_text = eng_xstrdup(json_string_value(cr));
    } else if ((rc = sched_duration(def, "every", 0, ENG_SCHED_MIN_EVERY_MS, &s->every_ms, err))) {
        return rc;
    }
    const json_t *tz = json_object_get(def, "tz");
    if (tz && !json_is_null(tz)) {
        eng_err zerr;
        if (!json_is_string(tz) || cron_zone_check(json_string_value(tz), &zerr) != ENG_OK)
            return eng_err_field(err, ENG_EINVAL, "/tz",
                                 "must be an IANA time zone such as Europe/Berlin");
        s->tz = eng_xstrdup(json_string_value(tz));
    } else {
        s->tz = eng_xstrdup("UTC");
    }
    if ((rc = sched_instant(def, "start_at", &s->start_ms, err)) ||
        (rc = sched_instant(def, "end_at", &s->end_ms, err)))
        return rc;
    if (s->start_ms >= 0 && s->end_ms >= 0 && s->end_ms <= s->start_ms)
        return eng_err_field(err, ENG_EINVAL, "/end_at", "must be later than start_at");
    return ENG_OK;
}

eng_rc eng_sched_parse(const json_t *def, eng_sched **out, eng_err *err)
{
    if (!json_is_object(def))
        return eng_err_field(err, ENG_EINVAL, "", "a schedule is a JSON object");
    const json_t *wf = json_object_get(def, "workflow"), *ver = json_object_get(def, "version");
    if (!json_is_string(wf) || json_string_length(wf) == 0 || json_string_length(wf) > 100)
        return eng_err_field(err, ENG_EINVAL, "/workflow", "must be a workflow name");
    if (ver && !json_is_null(ver) && (!json_is_integer(ver) || json_integer_value(ver) < 1 ||
                                      json_integer_value(ver) > INT32_MAX))
        return eng_err_field(err, ENG_EINVAL, "/version", "must be a positive integer");
    const json_t *paused = json_object_get(def, "paused");
    if (paused && !json_is_boolean(paused))
        return eng_err_field(err, ENG_EINVAL, "/paused", "must be true or false");
    eng_sched *s = eng_xcalloc(1, sizeof *s);
    static const char *const overlaps[] = {"allow", "skip", "cancel_previous", NULL};
    static const char *const catchups[] = {"none", "latest", "all", NULL};
    int overlap, catchup;
    eng_rc rc = sched_parse_ticks(def, s, err);
    if (rc == ENG_OK)
        rc = sched_enum(def, "overlap", overlaps, &overlap, err);
    if (rc == ENG_OK)
        rc = sched_enum(def, "catchup", catchups, &catchup, err);
    if (rc == ENG_OK)
        rc = sched_duration(def, "catchup_window", SCHED_DEFAULT_WINDOW_MS, 1000, &s->window_ms,
                            err);
    if (rc == ENG_OK)
        rc = sched_duration(def, "jitter", 0, 0, &s->jitter_ms, err);
    const json_t *input = json_object_get(def, "input");
    if (rc == ENG_OK && input && !json_is_null(input) && !json_is_object(input))
        rc = eng_err_field(err, ENG_EINVAL, "/input", "must be a JSON object (a template)");
    if (rc == ENG_OK && json_is_object(input)) {
        char *text = json_dumps(input, JSON_COMPACT);
        size_t len = text ? strlen(text) : 0;
        free(text);
        if (len > ENG_SCHED_INPUT_MAX)
            rc = eng_err_field(err, ENG_EINVAL, "/input", "is longer than %d bytes",
                               ENG_SCHED_INPUT_MAX);
        else
            rc = wf_template_refs(input, "/input", sched_input_ref, NULL, err);
    }
    if (rc != ENG_OK) {
        eng_sched_free(s);
        return rc;
    }
    s->catchup = (eng_sched_catchup)catchup;
    s->input = json_is_object(input) ? json_incref((json_t *)input) : json_object();
    *out = s;
    return ENG_OK;
}

bool eng_sched_same_ticks(const eng_sched *a, const eng_sched *b)
{
    return a->every_ms == b->every_ms && !a->cron == !b->cron &&
           (!a->cron || strcmp(a->cron_text, b->cron_text) == 0) && strcmp(a->tz, b->tz) == 0 &&
           a->start_ms == b->start_ms && a->end_ms == b->end_ms;
}

eng_sched_catchup eng_sched_catchup_of(const eng_sched *s) { return s->catchup; }
const char *eng_sched_tz(const eng_sched *s) { return s->tz; }
const json_t *eng_sched_input_template(const eng_sched *s) { return s->input; }

eng_rc eng_sched_next(const eng_sched *s, int64_t after_ms, int64_t *out_ms, eng_err *err)
{
    if (s->start_ms >= 0 && after_ms < s->start_ms)
        after_ms = s->start_ms - 1;
    if (after_ms < 0)
        after_ms = 0;
    int64_t t;
    if (s->cron) {
        eng_rc rc = cron_next(s->cron, s->tz, after_ms, &t, err);
        if (rc != ENG_OK)
            return rc;
    } else {
        int64_t anchor = s->start_ms >= 0 ? s->start_ms : 0;
        t = after_ms < anchor ? anchor : anchor + ((after_ms - anchor) / s->every_ms + 1) * s->every_ms;
    }
    if ((s->end_ms >= 0 && t > s->end_ms) || t > CRON_MAX_MS)
        return eng_err_set(err, ENG_ENOTFOUND, "the schedule has no tick left");
    *out_ms = t;
    return ENG_OK;
}

/* Ticks in [from, to): from must be a tick; counting stops at SCHED_COUNT_MAX. */
static eng_rc sched_count(const eng_sched *s, int64_t from, int64_t to, int64_t *n, eng_err *err)
{
    *n = 0;
    for (int64_t t = from; t < to && *n < SCHED_COUNT_MAX;) {
        ++*n;
        eng_rc rc = eng_sched_next(s, t, &t, err);
        if (rc == ENG_ENOTFOUND)
            break;
        if (rc != ENG_OK)
            return rc;
    }
    return ENG_OK;
}

/* The latest tick at or before now, searching back in growing windows from now (so that a long
 * pause of a frequent schedule does not walk every tick it missed); first is a tick <= now. */
static eng_rc sched_latest(const eng_sched *s, int64_t first, int64_t now, int64_t *latest,
                           eng_err *err)
{
    for (int64_t w = 60000;; w *= 16) {
        int64_t lo = now - w < first ? first : now - w, t;
        eng_rc rc = eng_sched_next(s, lo - 1, &t, err);
        if (rc != ENG_OK)
            return rc;
        if (t > now)
            continue; /* lo == first cannot get here: first itself is a tick <= now */
        for (int i = 0; i < SCHED_WALK_MAX; i++) {
            int64_t n;
            rc = eng_sched_next(s, t, &n, err);
            if (rc == ENG_ENOTFOUND || (rc == ENG_OK && n > now)) {
                *latest = t;
                return ENG_OK;
            }
            if (rc != ENG_OK)
                return rc;
            t = n;
        }
        return eng_err_set(err, ENG_EINTERNAL, "too many ticks to walk");
    }
}

static void plan_add(eng_sched_plan *p, int64_t t)
{
    if (!p->fires)
        p->fires = eng_xcalloc(ENG_SCHED_PASS_MAX, sizeof *p->fires);
    p->fires[p->nfires++] = t;
}

/* next_ms of the plan: the tick after t, -1 when none is left. */
static eng_rc plan_after(const eng_sched *s, int64_t t, eng_sched_plan *p, eng_err *err)
{
    eng_rc rc = eng_sched_next(s, t, &p->next_ms, err);
    if (rc == ENG_ENOTFOUND) {
        p->next_ms = -1;
        return ENG_OK;
    }
    return rc;
}

static eng_rc plan_all(const eng_sched *s, int64_t next_ms, int64_t now, eng_sched_plan *p,
                       eng_err *err)
{
    int64_t t = next_ms;
    eng_rc rc;
    if (t < now - s->window_ms) { /* ticks older than the window are passed over */
        rc = eng_sched_next(s, now - s->window_ms - 1, &t, err);
        if (rc == ENG_ENOTFOUND) /* no tick left at all: only missed ones */
            return sched_count(s, next_ms, INT64_MAX, &p->missed, err);
        if (rc != ENG_OK || (rc = sched_count(s, next_ms, t, &p->missed, err)) != ENG_OK)
            return rc;
    }
    p->next_ms = t;
    while (p->next_ms >= 0 && p->next_ms <= now && p->nfires < ENG_SCHED_PASS_MAX) {
        plan_add(p, p->next_ms);
        if ((rc = plan_after(s, p->next_ms, p, err)) != ENG_OK)
            return rc;
    }
    return ENG_OK;
}

eng_rc eng_sched_plan_due(const eng_sched *s, int64_t next_ms, int64_t now, eng_sched_plan *p,
                          eng_err *err)
{
    *p = (eng_sched_plan){.next_ms = -1};
    eng_rc rc;
    if (next_ms > now) { /* made ahead: that tick alone, whatever the catch-up policy */
        rc = plan_after(s, next_ms, p, err);
        if (rc == ENG_OK)
            plan_add(p, next_ms);
    } else if (s->catchup == ENG_SCHED_ALL)
        rc = plan_all(s, next_ms, now, p, err);
    else {
        /* the usual case, a tick fired on time, takes one step; the rest finds the latest */
        int64_t latest = next_ms;
        rc = plan_after(s, next_ms, p, err);
        if (rc == ENG_OK && p->next_ms >= 0 && p->next_ms <= now) {
            rc = sched_latest(s, p->next_ms, now, &latest, err);
            if (rc == ENG_OK)
                rc = sched_count(s, next_ms, latest, &p->missed, err);
            if (rc == ENG_OK)
                rc = plan_after(s, latest, p, err);
        }
        if (rc == ENG_OK) {
            if (s->catchup == ENG_SCHED_LATEST || now - latest <= ENG_SCHED_GRACE_MS)
                plan_add(p, latest);
            else
                p->missed++;
        }
    }
    if (rc != ENG_OK) {
        free(p->fires);
        *p = (eng_sched_plan){.next_ms = -1};
    }
    return rc;
}

eng_rc eng_sched_input(const eng_sched *s, const char *name, int64_t fire_ms, int64_t prev_ms,
                       json_t **out, eng_err *err)
{
    char fire[32], prev[32];
    eng_time_format_rfc3339(fire_ms, fire, sizeof fire);
    if (prev_ms >= 0)
        eng_time_format_rfc3339(prev_ms, prev, sizeof prev);
    json_t *ctx = json_pack("{s:{s:s, s:s, s:o}}", "schedule", "name", name, "fire_time", fire,
                            "previous_fire_time", prev_ms >= 0 ? json_string(prev) : json_null());
    json_t *input = NULL;
    eng_rc rc = wf_template_render(s->input, ctx, &input, err);
    json_decref(ctx);
    if (rc != ENG_OK && err) {
        /* the template's own pointer, under /input (cut to fit, as every field is) */
        size_t len = strnlen(err->field, sizeof err->field - 7);
        memmove(err->field + 6, err->field, len);
        memcpy(err->field, "/input", 6);
        err->field[len + 6] = '\0';
    }
    if (rc != ENG_OK)
        return rc;
    *out = input;
    return ENG_OK;
}

int64_t eng_sched_jitter_ms(const eng_sched *s, int64_t id, int64_t fire_ms)
{
    if (s->jitter_ms <= 0)
        return 0;
    uint64_t x = (uint64_t)id * 0x9e3779b97f4a7c15ULL ^ (uint64_t)fire_ms; /* splitmix64 */
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return (int64_t)(x % (uint64_t)(s->jitter_ms + 1));
}
