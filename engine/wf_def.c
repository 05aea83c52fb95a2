/* engine/wf_def.c: see wf_def.h.
 *
 * Compilation runs in passes so that each rule sees what it needs: (1) the workflow's own fields
 * and each step's key and kind, (2) needs resolved to indices, (3) cycle check by depth-first
 * search, whose post-order is also a topological order used to (4) compute every step's transitive
 * needs as a bitset, then (5) the remaining step fields, whose templates may only name those steps.
 * Errors are collected in a local eng_err and copied out, so a kind's validate always has one to
 * fill. */
#include "engine/wf_def.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>

#include <openssl/evp.h>

#include "engine/clock.h"
#include "engine/duration.h"
#include "engine/jschema.h"
#include "engine/log.h"
#include "engine/mem.h"
#include "engine/step.h"
#include "engine/wf_cond.h"
#include "engine/wf_template.h"

enum { WHITE = 0, GRAY, BLACK }; /* DFS colors: unvisited, on the current path, finished */

typedef struct cstep {
    const json_t *obj; /* borrowed from the document */
    const char *key;
    const eng_step_kind *kind;
    size_t *needs; /* indices, in written order */
    size_t n_needs;
    int color;
} cstep;

typedef struct compiler {
    const json_t *doc;
    cstep *steps;
    size_t n;
    json_t *keys;   /* key -> index (json integer), used as a hash map */
    uint64_t *deps; /* n rows of `words` words: bit t of row i = i transitively needs t */
    size_t words;
    size_t *order; /* topological order (needs first) */
    size_t n_order;
    eng_err *err;
} compiler;

/* What a template reference check needs to know about where it is. */
typedef struct ref_scope {
    compiler *c;
    size_t step; /* SIZE_MAX: rendered by SQL when the run is created (cancel_on keys,
                    concurrency keys): only {{input.a.b}} and {{run.id}} */
} ref_scope;

static eng_rc bad(compiler *c, const char *ptr, const char *fmt, ...) ENG_PRINTF(3, 4);

static eng_rc bad(compiler *c, const char *ptr, const char *fmt, ...)
{
    char msg[sizeof c->err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return eng_err_field(c->err, ENG_EINVAL, ptr, "%s", msg);
}

static bool has_dep(const compiler *c, size_t i, size_t t)
{
    return (c->deps[i * c->words + t / 64] >> (t % 64)) & 1;
}

/* Refuses any member of obj not in the NULL-terminated list allowed. */
static eng_rc check_fields(compiler *c, const json_t *obj, const char *ptr,
                           const char *const *allowed)
{
    const char *k;
    json_t *v;
    json_object_foreach ((json_t *)obj, k, v) {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, k) == 0;
        if (!ok) {
            char *p = wf_ptr_join(ptr, k);
            eng_rc rc = bad(c, p, "unknown field \"%.64s\"", k);
            free(p);
            return rc;
        }
    }
    return ENG_OK;
}

/* A string member of at most max bytes, or NULL when absent or null; *rc set on a type error. */
static const char *opt_string(compiler *c, const json_t *obj, const char *name, const char *ptr,
                              size_t max, eng_rc *rc)
{
    *rc = ENG_OK;
    const json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v))
        return NULL;
    char *p = wf_ptr_join(ptr, name);
    if (!json_is_string(v))
        *rc = bad(c, p, "must be a string");
    else if (json_string_length(v) == 0)
        *rc = bad(c, p, "must not be empty");
    else if (json_string_length(v) > max)
        *rc = bad(c, p, "longer than %zu bytes", max);
    else if (strlen(json_string_value(v)) != json_string_length(v))
        *rc = bad(c, p, "must not contain NUL");
    free(p);
    return *rc == ENG_OK ? json_string_value(v) : NULL;
}

/* ---- template references ---- */

static eng_rc check_ref(void *arg, const char *path, const char *ptr, eng_err *err)
{
    ref_scope *s = arg;
    (void)err; /* reported through s->c->err, which is the same object */
    size_t root = strcspn(path, ".[");
    if (s->step == SIZE_MAX && strcmp(path, "run.id") != 0 &&
        !(root == 5 && memcmp(path, "input.", 6) == 0 && !strchr(path, '[')))
        return bad(s->c, ptr,
                   "template path \"%.64s\": this key is rendered when the run is created, from "
                   "input.a.b paths or run.id only",
                   path);
    if ((root == 5 && memcmp(path, "input", 5) == 0) || (root == 4 && memcmp(path, "item", 4) == 0))
        return ENG_OK;
    if (strcmp(path, "index") == 0 || strcmp(path, "run.id") == 0)
        return ENG_OK;
    if (root != 5 || memcmp(path, "steps", 5) != 0)
        return bad(s->c, ptr,
                   "template path \"%.64s\" must start with input, steps.KEY, run.id, "
                   "item or index",
                   path);
    if (path[5] != '.')
        return bad(s->c, ptr, "template path \"%.64s\" must name a step: steps.KEY", path);
    const char *key = path + 6;
    size_t klen = strcspn(key, ".[");
    json_t *idx = json_object_getn(s->c->keys, key, klen);
    if (!idx)
        return bad(s->c, ptr, "template references unknown step \"%.*s\"",
                   (int)(klen > 64 ? 64 : klen), key);
    size_t t = (size_t)json_integer_value(idx);
    if (!has_dep(s->c, s->step, t))
        return bad(s->c, ptr,
                   "template references step \"%s\" which is not among the needs of "
                   "step \"%s\" (direct or transitive)",
                   s->c->steps[t].key, s->c->steps[s->step].key);
    return ENG_OK;
}

static eng_rc check_template(compiler *c, size_t step, const json_t *tmpl, const char *ptr)
{
    ref_scope s = {.c = c, .step = step};
    return wf_template_refs(tmpl, ptr, check_ref, &s, c->err);
}

/* Keys rendered by SQL (flowd_render_key) understand only plain {{path}} expressions: no
 * defaults, no spaces inside paths. */
static eng_rc check_sql_key(compiler *c, const char *s, const char *ptr)
{
    for (const char *open = strstr(s, "{{"); open; open = strstr(open + 2, "{{")) {
        const char *close = strstr(open + 2, "}}");
        if (!close)
            break; /* the template parser reports it */
        const char *p = open + 2;
        while (p < close && *p == ' ')
            p++;
        while (p < close && (isalnum((unsigned char)*p) || *p == '_' || *p == '.'))
            p++;
        while (p < close && *p == ' ')
            p++;
        if (p != close)
            return bad(c, ptr, "this key is rendered when the run is created: write plain "
                               "{{input.a.b}} or {{run.id}}, without defaults");
    }
    return ENG_OK;
}

/* A templated string member (at, concurrency_key, tz, ...): NULL when absent. */
static eng_rc template_string(compiler *c, size_t step, const json_t *obj, const char *name,
                              const char *ptr, json_t **out)
{
    eng_rc rc;
    *out = NULL;
    const char *s = opt_string(c, obj, name, ptr, WF_DEF_MAX_TEXT, &rc);
    if (!s)
        return rc;
    char *p = wf_ptr_join(ptr, name);
    rc = check_template(c, step, json_object_get(obj, name), p);
    free(p);
    if (rc == ENG_OK)
        *out = json_string(s);
    return rc;
}

/* ---- pass 1: key and kind ---- */

static bool valid_key(const char *k)
{
    if (!(*k >= 'a' && *k <= 'z'))
        return false;
    for (const char *p = k + 1; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return false;
    return true;
}

static const char *const step_fields[] = {
    "key",   "kind", "needs",  "input",           "when", "phase", "retry", "timeout",
    "delay", "at",   "window", "concurrency_key", "on_failure", "continue_on_failure", NULL};

static eng_rc pass_keys(compiler *c, const json_t *steps)
{
    char ptr[64], fp[80];
    for (size_t i = 0; i < c->n; i++) {
        const json_t *st = json_array_get(steps, i);
        snprintf(ptr, sizeof ptr, "/steps/%zu", i);
        if (!json_is_object(st))
            return bad(c, ptr, "step must be an object");
        eng_rc rc = check_fields(c, st, ptr, step_fields);
        if (rc != ENG_OK)
            return rc;
        c->steps[i].obj = st;
        const json_t *k = json_object_get(st, "key");
        snprintf(fp, sizeof fp, "%s/key", ptr);
        if (!k)
            return bad(c, fp, "required");
        if (!json_is_string(k))
            return bad(c, fp, "must be a string");
        const char *key = json_string_value(k);
        if (json_string_length(k) > WF_DEF_MAX_KEY)
            return bad(c, fp, "longer than %d bytes", WF_DEF_MAX_KEY);
        if (!valid_key(key) || strlen(key) != json_string_length(k))
            return bad(c, fp, "must match [a-z][a-z0-9_]*");
        json_t *prev = json_object_get(c->keys, key);
        if (prev)
            return bad(c, fp, "duplicate key \"%s\" (also /steps/%lld)", key,
                       (long long)json_integer_value(prev));
        json_object_set_new(c->keys, key, json_integer((json_int_t)i));
        c->steps[i].key = key;

        const json_t *kd = json_object_get(st, "kind");
        snprintf(fp, sizeof fp, "%s/kind", ptr);
        if (!kd)
            return bad(c, fp, "required");
        if (!json_is_string(kd))
            return bad(c, fp, "must be a string");
        c->steps[i].kind = eng_step_kind_find(json_string_value(kd));
        if (!c->steps[i].kind)
            return bad(c, fp, "unknown step kind \"%.64s\"", json_string_value(kd));
    }
    return ENG_OK;
}

/* ---- pass 2 and 3: needs and cycles ---- */

static eng_rc pass_needs(compiler *c)
{
    char ptr[96];
    for (size_t i = 0; i < c->n; i++) {
        cstep *s = &c->steps[i];
        const json_t *needs = json_object_get(s->obj, "needs");
        if (!needs || json_is_null(needs))
            continue;
        snprintf(ptr, sizeof ptr, "/steps/%zu/needs", i);
        if (!json_is_array(needs))
            return bad(c, ptr, "must be an array of step keys");
        size_t m = json_array_size(needs);
        if (m > c->n)
            return bad(c, ptr, "more needs than steps");
        s->needs = eng_xcalloc(m ? m : 1, sizeof *s->needs);
        for (size_t j = 0; j < m; j++) {
            const json_t *nk = json_array_get(needs, j);
            snprintf(ptr, sizeof ptr, "/steps/%zu/needs/%zu", i, j);
            if (!json_is_string(nk))
                return bad(c, ptr, "must be a step key");
            json_t *idx = json_object_get(c->keys, json_string_value(nk));
            if (!idx || strlen(json_string_value(nk)) != json_string_length(nk))
                return bad(c, ptr, "unknown step \"%.64s\"", json_string_value(nk));
            size_t t = (size_t)json_integer_value(idx);
            if (t == i)
                return bad(c, ptr, "step \"%s\" cannot need itself", s->key);
            for (size_t q = 0; q < s->n_needs; q++)
                if (s->needs[q] == t)
                    return bad(c, ptr, "duplicate need \"%s\"", c->steps[t].key);
            s->needs[s->n_needs++] = t;
        }
    }
    return ENG_OK;
}

/* Depth-first over needs; finished steps are appended to c->order (needs before dependents). The
 * recursion depth is bounded by WF_DEF_MAX_STEPS. */
static eng_rc visit(compiler *c, size_t i)
{
    cstep *s = &c->steps[i];
    s->color = GRAY;
    for (size_t j = 0; j < s->n_needs; j++) {
        size_t t = s->needs[j];
        if (c->steps[t].color == GRAY) {
            char ptr[96];
            snprintf(ptr, sizeof ptr, "/steps/%zu/needs/%zu", i, j);
            return bad(c, ptr, "cycle: \"%s\" needs \"%s\", which leads back to \"%s\"", s->key,
                       c->steps[t].key, s->key);
        }
        if (c->steps[t].color == WHITE) {
            eng_rc rc = visit(c, t);
            if (rc != ENG_OK)
                return rc;
        }
    }
    s->color = BLACK;
    c->order[c->n_order++] = i;
    return ENG_OK;
}

static eng_rc pass_graph(compiler *c)
{
    c->order = eng_xcalloc(c->n, sizeof *c->order);
    for (size_t i = 0; i < c->n; i++) {
        if (c->steps[i].color == WHITE) {
            eng_rc rc = visit(c, i);
            if (rc != ENG_OK)
                return rc;
        }
    }
    c->words = (c->n + 63) / 64;
    c->deps = eng_xcalloc(c->n * c->words, sizeof *c->deps);
    for (size_t o = 0; o < c->n; o++) {
        size_t i = c->order[o];
        uint64_t *row = c->deps + i * c->words;
        for (size_t j = 0; j < c->steps[i].n_needs; j++) {
            size_t t = c->steps[i].needs[j];
            const uint64_t *trow = c->deps + t * c->words;
            for (size_t w = 0; w < c->words; w++)
                row[w] |= trow[w];
            row[t / 64] |= UINT64_C(1) << (t % 64);
        }
    }
    return ENG_OK;
}

/* ---- pass 5: the other step fields ---- */

static eng_rc duration_field(compiler *c, const json_t *obj, const char *name, const char *ptr,
                             int64_t *ms)
{
    const json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v))
        return ENG_OK;
    char *p = wf_ptr_join(ptr, name);
    eng_rc rc;
    if (!json_is_string(v)) {
        rc = bad(c, p, "must be a duration string such as \"30s\"");
    } else {
        eng_err e;
        rc = eng_duration_parse(json_string_value(v), ms, &e);
        if (rc != ENG_OK)
            rc = bad(c, p, "%s", e.msg);
    }
    free(p);
    return rc;
}

static eng_rc number_field(compiler *c, const json_t *obj, const char *name, const char *ptr,
                           double lo, double hi, double *out)
{
    const json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v))
        return ENG_OK;
    char *p = wf_ptr_join(ptr, name);
    eng_rc rc = ENG_OK;
    if (!json_is_number(v) || json_number_value(v) < lo || json_number_value(v) > hi)
        rc = bad(c, p, "must be a number from %g to %g", lo, hi);
    else
        *out = json_number_value(v);
    free(p);
    return rc;
}

typedef struct retry_policy {
    json_int_t max_attempts;
    json_int_t max_interruptions; /* 0: the engine's default (migrations/0024_interruptions_idle.sql) */
    int64_t initial_ms, max_ms;
    double multiplier, jitter;
} retry_policy;

static eng_rc step_retry(compiler *c, const json_t *st, const char *sptr, retry_policy *r)
{
    static const char *const retry_fields[] = {"max_attempts", "max_interruptions", "backoff",
                                               "jitter", NULL};
    static const char *const backoff_fields[] = {"initial", "max", "multiplier", NULL};
    const json_t *retry = json_object_get(st, "retry");
    if (!retry || json_is_null(retry))
        return ENG_OK;
    char ptr[96], bptr[120];
    snprintf(ptr, sizeof ptr, "%s/retry", sptr);
    if (!json_is_object(retry))
        return bad(c, ptr, "must be an object");
    eng_rc rc = check_fields(c, retry, ptr, retry_fields);
    if (rc != ENG_OK)
        return rc;
    const json_t *ma = json_object_get(retry, "max_attempts");
    if (ma && !json_is_null(ma)) {
        snprintf(bptr, sizeof bptr, "%s/max_attempts", ptr);
        if (!json_is_integer(ma) || json_integer_value(ma) < 1 || json_integer_value(ma) > 100)
            return bad(c, bptr, "must be an integer from 1 to 100");
        r->max_attempts = json_integer_value(ma);
    }
    const json_t *mi = json_object_get(retry, "max_interruptions");
    if (mi && !json_is_null(mi)) {
        snprintf(bptr, sizeof bptr, "%s/max_interruptions", ptr);
        if (!json_is_integer(mi) || json_integer_value(mi) < 1 || json_integer_value(mi) > 100)
            return bad(c, bptr, "must be an integer from 1 to 100");
        r->max_interruptions = json_integer_value(mi);
    }
    if ((rc = number_field(c, retry, "jitter", ptr, 0, 1, &r->jitter)) != ENG_OK)
        return rc;
    const json_t *bo = json_object_get(retry, "backoff");
    if (!bo || json_is_null(bo))
        return ENG_OK;
    snprintf(bptr, sizeof bptr, "%s/backoff", ptr);
    if (!json_is_object(bo))
        return bad(c, bptr, "must be an object");
    if ((rc = check_fields(c, bo, bptr, backoff_fields)) != ENG_OK)
        return rc;
    bool has_max = json_object_get(bo, "max") && !json_is_null(json_object_get(bo, "max"));
    if ((rc = duration_field(c, bo, "initial", bptr, &r->initial_ms)) != ENG_OK ||
        (rc = duration_field(c, bo, "max", bptr, &r->max_ms)) != ENG_OK ||
        (rc = number_field(c, bo, "multiplier", bptr, 1, 100, &r->multiplier)) != ENG_OK)
        return rc;
    if (r->initial_ms > r->max_ms) {
        if (has_max) {
            char mptr[136];
            snprintf(mptr, sizeof mptr, "%s/max", bptr);
            return bad(c, mptr, "must not be shorter than backoff.initial");
        }
        r->max_ms = r->initial_ms; /* only initial given: the default cap must not undercut it */
    }
    return ENG_OK;
}

/* "HH:MM" (00:00..23:59, and 24:00 when end is true) -> minutes since midnight, or -1. */
static int parse_hhmm(const json_t *v, bool end)
{
    if (!json_is_string(v) || json_string_length(v) != 5)
        return -1;
    const char *s = json_string_value(v);
    for (int i = 0; i < 5; i++)
        if (i == 2 ? s[i] != ':' : (s[i] < '0' || s[i] > '9'))
            return -1;
    int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
    if (m > 59 || h > 24 || (h == 24 && (!end || m != 0)))
        return -1;
    return h * 60 + m;
}

/* An IANA zone name as PostgreSQL and zoneinfo spell them ("Europe/Paris", "UTC", "Etc/GMT+5"),
 * and one the zone database holds: PostgreSQL reads the same system tzdata (TZDIR, else
 * /usr/share/zoneinfo), so a literal zone it would refuse when the step is due is refused now. */
static bool known_tz(const char *s)
{
    if (*s == '/' || strstr(s, "..") || strlen(s) > 64)
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '/' || *p == '_' || *p == '-' || *p == '+'))
            return false;
    const char *dir = getenv("TZDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "/usr/share/zoneinfo", s);
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    char magic[4];
    bool ok = fread(magic, 1, 4, f) == 4 && memcmp(magic, "TZif", 4) == 0;
    fclose(f);
    return ok;
}

static eng_rc step_window(compiler *c, size_t i, const json_t *st, const char *sptr, json_t **out)
{
    static const char *const window_fields[] = {"start", "end", "days", "tz", NULL};
    static const char *const day_names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
    *out = NULL;
    const json_t *w = json_object_get(st, "window");
    if (!w || json_is_null(w))
        return ENG_OK;
    char ptr[96], fp[128];
    snprintf(ptr, sizeof ptr, "%s/window", sptr);
    if (!json_is_object(w))
        return bad(c, ptr, "must be an object");
    eng_rc rc = check_fields(c, w, ptr, window_fields);
    if (rc != ENG_OK)
        return rc;
    int start = parse_hhmm(json_object_get(w, "start"), false);
    snprintf(fp, sizeof fp, "%s/start", ptr);
    if (start < 0)
        return bad(c, fp, "must be a time \"HH:MM\" from 00:00 to 23:59");
    int end = parse_hhmm(json_object_get(w, "end"), true);
    snprintf(fp, sizeof fp, "%s/end", ptr);
    if (end < 0)
        return bad(c, fp, "must be a time \"HH:MM\" from 00:01 to 24:00");
    if (end <= start)
        return bad(c, fp, "must be later than start");
    bool seen[7] = {false};
    const json_t *days = json_object_get(w, "days");
    if (days && !json_is_null(days)) {
        snprintf(fp, sizeof fp, "%s/days", ptr);
        if (!json_is_array(days) || json_array_size(days) == 0)
            return bad(c, fp, "must be a non-empty array of day names (mon..sun)");
        for (size_t j = 0; j < json_array_size(days); j++) {
            const char *d = json_string_value(json_array_get(days, j));
            int found = -1;
            for (int q = 0; d && q < 7; q++)
                if (strcmp(d, day_names[q]) == 0)
                    found = q;
            snprintf(fp, sizeof fp, "%s/days/%zu", ptr, j);
            if (found < 0)
                return bad(c, fp, "must be one of mon, tue, wed, thu, fri, sat, sun");
            if (seen[found])
                return bad(c, fp, "duplicate day \"%s\"", d);
            seen[found] = true;
        }
    } else {
        for (int q = 0; q < 7; q++)
            seen[q] = true;
    }
    json_t *tz;
    if ((rc = template_string(c, i, w, "tz", ptr, &tz)) != ENG_OK)
        return rc;
    snprintf(fp, sizeof fp, "%s/tz", ptr);
    if (!tz)
        return bad(c, fp, "required: an IANA time zone name or a template");
    if (!wf_template_is_templated(json_string_value(tz)) && !known_tz(json_string_value(tz))) {
        json_decref(tz);
        return bad(c, fp, "\"%.64s\" is not an IANA time zone name (such as \"Europe/Paris\")",
                   json_string_value(tz));
    }
    json_t *dl = json_array();
    for (int q = 0; q < 7; q++)
        if (seen[q])
            json_array_append_new(dl, json_integer(q));
    *out =
        json_pack("{s:i, s:i, s:o, s:o}", "start_min", start, "end_min", end, "days", dl, "tz", tz);
    return ENG_OK;
}

static eng_rc step_when(compiler *c, size_t i, const json_t *st, const char *sptr, json_t **out)
{
    eng_rc rc;
    *out = NULL;
    const char *src = opt_string(c, st, "when", sptr, WF_COND_MAX_SRC, &rc);
    if (!src)
        return rc;
    char ptr[96];
    snprintf(ptr, sizeof ptr, "%s/when", sptr);
    wf_cond *cond;
    eng_err e;
    if (wf_cond_parse(src, &cond, &e) != ENG_OK)
        return bad(c, ptr, "%s", e.msg);
    ref_scope s = {.c = c, .step = i};
    rc = wf_cond_refs(cond, check_ref, &s, ptr, c->err);
    wf_cond_free(cond);
    if (rc == ENG_OK)
        *out = json_string(src);
    return rc;
}

/* "on_failure" (fail_run, continue, skip_dependents), or its older spelling
 * "continue_on_failure": true, which means "continue"; the two together must agree. */
static eng_rc step_on_failure(compiler *c, const json_t *st, const char *sptr, const char **out)
{
    char ptr[96];
    const json_t *cof = json_object_get(st, "continue_on_failure");
    if (cof && !json_is_null(cof) && !json_is_boolean(cof)) {
        snprintf(ptr, sizeof ptr, "%s/continue_on_failure", sptr);
        return bad(c, ptr, "must be true or false");
    }
    *out = json_is_true(cof) ? "continue" : "fail_run";
    const json_t *of = json_object_get(st, "on_failure");
    if (!of || json_is_null(of))
        return ENG_OK;
    snprintf(ptr, sizeof ptr, "%s/on_failure", sptr);
    const char *v = json_string_value(of);
    if (!v || (strcmp(v, "fail_run") != 0 && strcmp(v, "continue") != 0 &&
               strcmp(v, "skip_dependents") != 0))
        return bad(c, ptr, "must be \"fail_run\", \"continue\" or \"skip_dependents\"");
    if (cof && !json_is_null(cof) && json_is_true(cof) != (strcmp(v, "continue") == 0))
        return bad(c, ptr, "contradicts continue_on_failure (its older spelling)");
    *out = v;
    return ENG_OK;
}

/* Validates step i's remaining fields and builds its normalized object (without dependents). */
static eng_rc compile_step(compiler *c, size_t i, json_t **out)
{
    const cstep *s = &c->steps[i];
    const json_t *st = s->obj;
    char sptr[64], ptr[96];
    snprintf(sptr, sizeof sptr, "/steps/%zu", i);
    eng_rc rc;
    const char *phase = opt_string(c, st, "phase", sptr, WF_DEF_MAX_NAME, &rc);
    if (rc != ENG_OK)
        return rc;
    const json_t *input = json_object_get(st, "input");
    snprintf(ptr, sizeof ptr, "%s/input", sptr);
    if (input && (rc = check_template(c, i, input, ptr)) != ENG_OK)
        return rc;

    retry_policy r = {.max_attempts = s->kind->default_max_attempts,
                      .initial_ms = WF_DEF_BACKOFF_INITIAL_MS,
                      .max_ms = WF_DEF_BACKOFF_MAX_MS,
                      .multiplier = WF_DEF_BACKOFF_MULTIPLIER,
                      .jitter = WF_DEF_JITTER};
    if (r.max_attempts < 1)
        r.max_attempts = 1;
    if (r.max_attempts > 100)
        r.max_attempts = 100;
    int64_t timeout_ms = 0, delay_ms = 0, at_ms;
    if ((rc = step_retry(c, st, sptr, &r)) != ENG_OK ||
        (rc = duration_field(c, st, "timeout", sptr, &timeout_ms)) != ENG_OK ||
        (rc = duration_field(c, st, "delay", sptr, &delay_ms)) != ENG_OK)
        return rc;

    json_t *when = NULL, *at = NULL, *window = NULL, *ckey = NULL;
    if ((rc = step_when(c, i, st, sptr, &when)) != ENG_OK)
        goto fail;
    if ((rc = template_string(c, i, st, "at", sptr, &at)) != ENG_OK)
        goto fail;
    if (at && !wf_template_is_templated(json_string_value(at)) &&
        eng_time_parse_rfc3339(json_string_value(at), &at_ms, NULL) != ENG_OK) {
        snprintf(ptr, sizeof ptr, "%s/at", sptr);
        rc = bad(c, ptr, "must be an RFC 3339 time (2026-01-31T09:00:00Z) or a template");
        goto fail;
    }
    if ((rc = step_window(c, i, st, sptr, &window)) != ENG_OK)
        goto fail;
    if ((rc = template_string(c, SIZE_MAX, st, "concurrency_key", sptr, &ckey)) != ENG_OK)
        goto fail;
    if (ckey) {
        snprintf(ptr, sizeof ptr, "%s/concurrency_key", sptr);
        if ((rc = check_sql_key(c, json_string_value(ckey), ptr)) != ENG_OK)
            goto fail;
    }
    const char *on_failure = "fail_run";
    if ((rc = step_on_failure(c, st, sptr, &on_failure)) != ENG_OK)
        goto fail;
    /* A kind checks the shape of its input here; an input that is one whole template ("{{input}}",
     * as in a map's inline step) has no shape before it is rendered, and the kind checks it then. */
    const json_t *whole = json_object_get(st, "input");
    bool deferred = json_is_string(whole) && wf_template_is_templated(json_string_value(whole));
    if (!deferred && s->kind->validate && (rc = s->kind->validate(st, sptr, c->err)) != ENG_OK) {
        if (!c->err->field[0])
            snprintf(c->err->field, sizeof c->err->field, "%s", sptr);
        goto fail;
    }

    json_t *needs = json_array(), *deps = json_array();
    for (size_t j = 0; j < s->n_needs; j++)
        json_array_append_new(needs, json_integer((json_int_t)s->needs[j]));
    for (size_t t = 0; t < c->n; t++)
        if (has_dep(c, i, t))
            json_array_append_new(deps, json_string(c->steps[t].key));
    *out = json_pack("{s:s, s:s, s:I, s:o, s:o, s:o, s:s?, s:o, s:o?, s:I, s:I, s:I, s:f, s:f, "
                     "s:I, s:I, s:o?, s:o?, s:o?, s:s}",
                     "key", s->key, "kind", s->kind->name, "idx", (json_int_t)i, "needs", needs,
                     "dependents", json_array(), "deps", deps, "phase", phase, "input",
                     input ? json_deep_copy(input) : json_object(), "when", when, "max_attempts",
                     r.max_attempts, "backoff_initial_ms", (json_int_t)r.initial_ms,
                     "backoff_max_ms", (json_int_t)r.max_ms, "backoff_multiplier", r.multiplier,
                     "jitter", r.jitter, "timeout_ms", (json_int_t)timeout_ms, "delay_ms",
                     (json_int_t)delay_ms, "at", at, "window", window, "concurrency_key", ckey,
                     "on_failure", on_failure);
    /* only when set, so that definitions that do not set it keep their digest */
    if (*out && r.max_interruptions > 0)
        json_object_set_new(*out, "max_interruptions", json_integer(r.max_interruptions));
    if (!*out)
        return eng_err_field(c->err, ENG_EINTERNAL, sptr, "cannot build the normalized step");
    return ENG_OK;
fail:
    json_decref(when);
    json_decref(at);
    json_decref(window);
    json_decref(ckey);
    return rc;
}

/* ---- what a run's input must hold ---- */

/* Schema types but null: what a template path without a default needs to find. */
static json_t *not_null_schema(void)
{
    return json_pack("{s:[sssss]}", "type", "object", "array", "string", "number", "boolean");
}

static json_t *object_schema(void)
{
    return json_pack("{s:s, s:[], s:{}}", "type", "object", "required", "properties");
}

/* Adds input.a.b (the part before any [index] or all-digit segment, which may be an array's) to
 * the schema *arg builds: a required, non-null b in a required object a. */
static eng_rc add_required(void *arg, const char *path, const char *ptr, eng_err *err)
{
    (void)ptr;
    (void)err;
    json_t **root = arg;
    if (strncmp(path, "input.", 6) != 0)
        return ENG_OK;
    char seg[WF_PATH_MAX + 1];
    const char *p = path + 6;
    json_t *node = NULL;
    while (*p) {
        size_t n = strcspn(p, ".[");
        bool digits = n > 0 && strspn(p, "0123456789") >= n;
        if (n == 0 || digits)
            break;
        memcpy(seg, p, n);
        seg[n] = '\0';
        /* the next segment may be an array's index: then this one only has to be there */
        const char *next = p + n + 1;
        size_t nn = p[n] == '.' ? strcspn(next, ".[") : 0;
        bool last = nn == 0 || strspn(next, "0123456789") >= nn;
        if (!*root)
            *root = object_schema();
        if (!node)
            node = *root;
        json_t *props = json_object_get(node, "properties");
        json_t *child = json_object_get(props, seg);
        if (!child) {
            json_array_append_new(json_object_get(node, "required"), json_string(seg));
            child = last ? not_null_schema() : object_schema();
            json_object_set_new(props, seg, child);
        } else if (!last && !json_object_get(child, "properties")) {
            child = object_schema();
            json_object_set_new(props, seg, child); /* an object is not null either */
        }
        if (last)
            break;
        node = child;
        p += n + 1;
    }
    return ENG_OK;
}

/* A step that runs whatever the input holds: neither it nor any step it needs has a condition.
 * Map-like kinds render their own input (per item) and are left out. */
static bool runs_unconditionally(const compiler *c, size_t i)
{
    if (c->steps[i].kind->raw_input)
        return false;
    for (size_t t = 0; t < c->n; t++)
        if ((t == i || has_dep(c, i, t)) && json_object_get(c->steps[t].obj, "when") &&
            !json_is_null(json_object_get(c->steps[t].obj, "when")))
            return false;
    return true;
}

/* The schema a run's input is checked against when the run is enqueued: the definition's
 * input_schema, else one requiring what the templates of unconditional steps read from the input
 * without a default; NULL when there is nothing to check. */
static eng_rc compile_input_check(compiler *c, json_t **out)
{
    *out = NULL;
    const json_t *is = json_object_get(c->doc, "input_schema");
    if (is && !json_is_null(is)) {
        jschema *js;
        eng_rc rc = jschema_compile(is, "/input_schema", &js, c->err);
        if (rc != ENG_OK)
            return rc;
        jschema_free(js);
        *out = json_deep_copy(is);
        return ENG_OK;
    }
    for (size_t i = 0; i < c->n; i++) {
        if (!runs_unconditionally(c, i))
            continue;
        const json_t *st = c->steps[i].obj;
        const json_t *parts[] = {json_object_get(st, "input"), json_object_get(st, "at"),
                                 json_object_get(json_object_get(st, "window"), "tz")};
        for (size_t q = 0; q < ENG_ARRAY_LEN(parts); q++)
            if (parts[q] && wf_template_required(parts[q], "", add_required, out, c->err) != ENG_OK)
                abort(); /* the templates were parsed already; add_required cannot fail */
    }
    return ENG_OK;
}

/* ---- the workflow ---- */

static bool valid_name(const char *s, size_t len)
{
    if (len == 0 || len > WF_DEF_MAX_NAME || strlen(s) != len)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '.' || *s == '-'))
            return false;
    return true;
}

/* A workflow-level list of events: "cancel_on": [{"event", "key"}] (the key is rendered when the
 * run is created) and "triggers": [{"event"}] (every such event starts a run with input
 * {"event": {"name", "key", "data"}}). */
static eng_rc compile_event_list(compiler *c, const char *member, bool with_key, json_t **out)
{
    static const char *const with_key_fields[] = {"event", "key", NULL};
    static const char *const event_fields[] = {"event", NULL};
    const char *shape = with_key ? "{\"event\", \"key\"}" : "{\"event\"}";
    char base[32];
    snprintf(base, sizeof base, "/%s", member);
    *out = json_array();
    const json_t *list = json_object_get(c->doc, member);
    if (!list || json_is_null(list))
        return ENG_OK;
    if (!json_is_array(list))
        return bad(c, base, "must be an array of %s", shape);
    if (json_array_size(list) > WF_DEF_MAX_CANCEL_ON)
        return bad(c, base, "more than %d entries", WF_DEF_MAX_CANCEL_ON);
    for (size_t j = 0; j < json_array_size(list); j++) {
        const json_t *e = json_array_get(list, j);
        char ptr[64], fp[80];
        snprintf(ptr, sizeof ptr, "%s/%zu", base, j);
        if (!json_is_object(e))
            return bad(c, ptr, "must be an object %s", shape);
        eng_rc rc = check_fields(c, e, ptr, with_key ? with_key_fields : event_fields);
        if (rc != ENG_OK)
            return rc;
        const char *ev = opt_string(c, e, "event", ptr, WF_DEF_MAX_NAME, &rc);
        if (rc != ENG_OK)
            return rc;
        snprintf(fp, sizeof fp, "%s/event", ptr);
        if (!ev)
            return bad(c, fp, "required");
        if (!with_key) {
            json_array_append_new(*out, json_pack("{s:s}", "event", ev));
            continue;
        }
        json_t *key;
        if ((rc = template_string(c, SIZE_MAX, e, "key", ptr, &key)) != ENG_OK)
            return rc;
        snprintf(fp, sizeof fp, "%s/key", ptr);
        if (!key)
            return bad(c, fp, "required");
        if ((rc = check_sql_key(c, json_string_value(key), fp)) != ENG_OK) {
            json_decref(key);
            return rc;
        }
        json_array_append_new(*out, json_pack("{s:s, s:o?}", "event", ev, "key", key));
    }
    return ENG_OK;
}

bool wf_meta_name_ok(const char *s, size_t len)
{
    if (len == 0 || len > WF_DEF_MAX_META_NAME || strlen(s) != len)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return false;
    return true;
}

/* "search": {"lead": "{{input.lead.id}}"}: the input values each run keeps as its metadata,
 * rendered by SQL when the run is created (flowd_run_meta), so plain input paths only. */
static eng_rc compile_search(compiler *c, json_t **out)
{
    *out = NULL;
    const json_t *search = json_object_get(c->doc, "search");
    if (!search || json_is_null(search))
        return ENG_OK;
    if (!json_is_object(search))
        return bad(c, "/search", "must be an object of names to templates such as "
                                 "\"{{input.lead.id}}\"");
    if (json_object_size(search) > WF_DEF_MAX_META)
        return bad(c, "/search", "more than %d names", WF_DEF_MAX_META);
    const char *name;
    const json_t *tmpl;
    json_object_foreach ((json_t *)search, name, tmpl) {
        char *p = wf_ptr_join("/search", name);
        eng_rc rc = ENG_OK;
        if (!wf_meta_name_ok(name, strlen(name)))
            rc = bad(c, p, "names must match [A-Za-z0-9_-]{1,%d}", WF_DEF_MAX_META_NAME);
        else if (!json_is_string(tmpl) || !strstr(json_string_value(tmpl), "{{"))
            rc = bad(c, p, "must be a template reading the input, such as \"{{input.lead.id}}\"");
        else if (strstr(json_string_value(tmpl), "run.id"))
            rc = bad(c, p, "metadata comes from the input only: {{run.id}} is not known yet");
        else if ((rc = check_template(c, SIZE_MAX, tmpl, p)) == ENG_OK)
            rc = check_sql_key(c, json_string_value(tmpl), p);
        free(p);
        if (rc != ENG_OK)
            return rc;
    }
    *out = json_deep_copy(search);
    return ENG_OK;
}

/* "quota": {"on_exceeded": "wait" | "fail"}: what an llm or messaging step does when a quota of
 * its tenant has no room: wait in 'blocked' (the default) or fail. Kept only when it says fail. */
static eng_rc compile_quota(compiler *c, json_t **out)
{
    static const char *const quota_fields[] = {"on_exceeded", NULL};
    *out = NULL;
    const json_t *quota = json_object_get(c->doc, "quota");
    if (!quota || json_is_null(quota))
        return ENG_OK;
    if (!json_is_object(quota))
        return bad(c, "/quota", "must be an object: {\"on_exceeded\": \"wait\" | \"fail\"}");
    eng_rc rc = check_fields(c, quota, "/quota", quota_fields);
    if (rc != ENG_OK)
        return rc;
    const json_t *on = json_object_get(quota, "on_exceeded");
    const char *v = json_string_value(on);
    if (on && (!v || (strcmp(v, "wait") != 0 && strcmp(v, "fail") != 0)))
        return bad(c, "/quota/on_exceeded", "must be \"wait\" or \"fail\"");
    if (v && strcmp(v, "fail") == 0)
        *out = json_pack("{s:s}", "on_exceeded", "fail");
    return ENG_OK;
}

static eng_rc compile_doc(compiler *c, json_t **out)
{
    static const char *const wf_fields[] = {"name",     "description",  "steps",  "cancel_on",
                                            "triggers", "input_schema", "search", "quota",
                                            NULL};
    const json_t *doc = c->doc;
    if (!json_is_object(doc))
        return bad(c, "", "workflow definition must be a JSON object");
    eng_rc rc = check_fields(c, doc, "", wf_fields);
    if (rc != ENG_OK)
        return rc;
    const json_t *name = json_object_get(doc, "name");
    if (!name)
        return bad(c, "/name", "required");
    if (!json_is_string(name) || !valid_name(json_string_value(name), json_string_length(name)))
        return bad(c, "/name", "must match [a-zA-Z0-9_.-]{1,%d}", WF_DEF_MAX_NAME);
    const char *desc = opt_string(c, doc, "description", "", WF_DEF_MAX_TEXT, &rc);
    if (rc != ENG_OK)
        return rc;
    const json_t *steps = json_object_get(doc, "steps");
    if (!steps)
        return bad(c, "/steps", "required");
    if (!json_is_array(steps) || json_array_size(steps) == 0)
        return bad(c, "/steps", "must be a non-empty array");
    if (json_array_size(steps) > WF_DEF_MAX_STEPS)
        return bad(c, "/steps", "more than %d steps", WF_DEF_MAX_STEPS);
    c->n = json_array_size(steps);
    c->steps = eng_xcalloc(c->n, sizeof *c->steps);
    if ((rc = pass_keys(c, steps)) != ENG_OK || (rc = pass_needs(c)) != ENG_OK ||
        (rc = pass_graph(c)) != ENG_OK)
        return rc;

    json_t *out_steps = json_array(), *phases = json_array(), *cancel_on = NULL, *triggers = NULL,
           *input_check = NULL, *search = NULL, *quota = NULL;
    for (size_t i = 0; i < c->n && rc == ENG_OK; i++) {
        json_t *st;
        if ((rc = compile_step(c, i, &st)) != ENG_OK)
            break;
        json_array_append_new(out_steps, st);
        const char *ph = json_string_value(json_object_get(st, "phase"));
        bool seen = !ph;
        for (size_t q = 0; q < json_array_size(phases) && !seen; q++)
            seen = strcmp(json_string_value(json_array_get(phases, q)), ph) == 0;
        if (!seen)
            json_array_append_new(phases, json_string(ph));
    }
    if (rc == ENG_OK)
        rc = compile_event_list(c, "cancel_on", true, &cancel_on);
    if (rc == ENG_OK)
        rc = compile_event_list(c, "triggers", false, &triggers);
    if (rc == ENG_OK)
        rc = compile_input_check(c, &input_check);
    if (rc == ENG_OK)
        rc = compile_search(c, &search);
    if (rc == ENG_OK)
        rc = compile_quota(c, &quota);
    if (rc != ENG_OK) {
        json_decref(out_steps);
        json_decref(phases);
        json_decref(cancel_on);
        json_decref(triggers);
        json_decref(input_check);
        json_decref(search);
        return rc;
    }
    for (size_t i = 0; i < c->n; i++)
        for (size_t j = 0; j < c->steps[i].n_needs; j++)
            json_array_append_new(
                json_object_get(json_array_get(out_steps, c->steps[i].needs[j]), "dependents"),
                json_integer((json_int_t)i));
    *out = json_pack("{s:s, s:s?, s:o, s:o, s:o, s:o, s:o?, s:o?}", "name",
                     json_string_value(name), "description", desc, "cancel_on", cancel_on,
                     "triggers", triggers, "phases", phases, "steps", out_steps, "input_check",
                     input_check, "search", search);
    if (quota)
        json_object_set_new(*out, "quota", quota);
    return ENG_OK;
}

eng_rc wf_def_compile(const json_t *doc, json_t **out, eng_err *err)
{
    eng_err local;
    eng_err_clear(&local);
    compiler c = {.doc = doc, .keys = json_object(), .err = &local};
    json_t *res = NULL;
    eng_rc rc = doc ? compile_doc(&c, &res) : bad(&c, "", "no workflow definition");
    for (size_t i = 0; i < c.n && c.steps; i++)
        free(c.steps[i].needs);
    free(c.steps);
    free(c.deps);
    free(c.order);
    json_decref(c.keys);
    if (rc != ENG_OK) {
        if (local.rc == ENG_OK)
            eng_err_field(&local, rc, "", "invalid workflow definition");
        if (err)
            *err = local;
        return rc;
    }
    *out = res;
    return ENG_OK;
}

/* ---- digest ---- */

static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

/* Fetched once: the implicit fetch of SHA256() or EVP_sha256() costs as much as hashing a short
 * text (API keys, request hashes). Kept for the life of the process. */
static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

char *wf_sha256_hex(const void *data, size_t len)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    pthread_once(&sha256_once, sha256_fetch);
    if (!sha256_md || !EVP_Digest(data, len, md, &mdlen, sha256_md, NULL) || mdlen != 32) {
        log_error("openssl cannot compute sha256");
        abort();
    }
    static const char hex[] = "0123456789abcdef";
    char *out = eng_xmalloc(2 * (size_t)mdlen + 1);
    for (unsigned int i = 0; i < mdlen; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[2 * mdlen] = '\0';
    return out;
}

char *wf_def_digest(const json_t *doc)
{
    if (!doc)
        return NULL;
    char *canon = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (!canon)
        return NULL;
    char *hex = wf_sha256_hex(canon, strlen(canon));
    free(canon);
    return hex;
}
