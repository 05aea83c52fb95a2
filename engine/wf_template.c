/* engine/wf_template.c: see wf_template.h.
 *
 * Templates are re-scanned on every render rather than compiled: they are small, rendering happens
 * once per claimed step, and keeping no compiled form means nothing to cache or invalidate. JSON
 * pointers are built only when an error (or a reference callback) needs one: the recursion carries
 * a chain of frames instead. */
#include "engine/wf_template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"
#include "engine/mem.h"

/* One level of the walk: the child `key` (objects) or `idx` (arrays) of the frame above. */
typedef struct frame {
    const struct frame *up;
    const char *key; /* NULL for an array element */
    size_t idx;
} frame;

/* One {{ }} found in a string. */
typedef struct tpl_span {
    size_t open;      /* offset of "{{" */
    size_t end;       /* offset just past "}}" */
    const char *expr; /* between the braces */
    size_t expr_len;
} tpl_span;

/* A parsed expression: the path (inside the source string) and the default literal, if any. */
typedef struct tpl_expr {
    const char *path;
    size_t path_len;
    json_t *deflt; /* owned; NULL without "| default:" */
} tpl_expr;

/* ---- pointers ---- */

char *wf_ptr_join(const char *base, const char *key)
{
    size_t n = strlen(base), k = strlen(key), extra = 0;
    for (size_t i = 0; i < k; i++)
        extra += key[i] == '~' || key[i] == '/';
    char *out = eng_xmalloc(n + 1 + k + extra + 1);
    memcpy(out, base, n);
    char *p = out + n;
    *p++ = '/';
    for (size_t i = 0; i < k; i++) {
        if (key[i] == '~' || key[i] == '/') {
            *p++ = '~';
            *p++ = key[i] == '~' ? '0' : '1';
        } else {
            *p++ = key[i];
        }
    }
    *p = '\0';
    return out;
}

char *wf_ptr_join_idx(const char *base, size_t idx)
{
    return eng_xasprintf("%s/%zu", base, idx);
}

static char *frame_ptr(const char *base, const frame *f)
{
    if (!f)
        return eng_xstrdup(base);
    char *up = frame_ptr(base, f->up);
    char *out = f->key ? wf_ptr_join(up, f->key) : wf_ptr_join_idx(up, f->idx);
    free(up);
    return out;
}

static eng_rc frame_err(eng_err *err, eng_rc rc, const char *base, const frame *f, const char *msg)
{
    if (!err)
        return rc;
    char *ptr = frame_ptr(base, f);
    eng_err_field(err, rc, ptr, "%s", msg);
    free(ptr);
    return rc;
}

/* ---- paths ---- */

static bool is_ident_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_seg_char(char c)
{
    return is_ident_start(c) || (c >= '0' && c <= '9') || c == '-';
}

bool wf_path_valid(const char *path, size_t len)
{
    if (len == 0 || len > WF_PATH_MAX || !is_ident_start(path[0]))
        return false;
    size_t i = 1;
    while (i < len && is_seg_char(path[i]))
        i++;
    while (i < len) {
        if (path[i] == '.') {
            size_t start = ++i;
            while (i < len && is_seg_char(path[i]))
                i++;
            if (i == start)
                return false;
        } else if (path[i] == '[') {
            size_t start = ++i;
            while (i < len && path[i] >= '0' && path[i] <= '9')
                i++;
            if (i == start || i >= len || path[i] != ']')
                return false;
            i++;
        } else {
            return false;
        }
    }
    return true;
}

/* The array element named by the digits seg[0..n), or NULL. */
static const json_t *array_at(const json_t *arr, const char *seg, size_t n)
{
    if (n == 0 || n > 9)
        return NULL; /* also keeps the index far from overflow */
    size_t idx = 0;
    for (size_t i = 0; i < n; i++) {
        if (seg[i] < '0' || seg[i] > '9')
            return NULL;
        idx = idx * 10 + (size_t)(seg[i] - '0');
    }
    return json_array_get(arr, idx);
}

const json_t *wf_path_lookup(const json_t *ctx, const char *path, size_t len)
{
    const json_t *cur = ctx;
    size_t i = 0;
    bool bracket = false;
    while (cur && i < len) {
        size_t start = i;
        while (i < len && path[i] != '.' && path[i] != '[' && path[i] != ']')
            i++;
        const char *seg = path + start;
        size_t n = i - start;
        if (bracket)
            cur = json_is_array(cur) ? array_at(cur, seg, n) : NULL;
        else if (json_is_object(cur))
            cur = json_object_getn(cur, seg, n);
        else if (json_is_array(cur))
            cur = array_at(cur, seg, n);
        else
            cur = NULL;
        if (i < len && path[i] == ']')
            i++;
        bracket = i < len && path[i] == '[';
        if (i < len)
            i++;
    }
    return cur;
}

/* ---- scanning ---- */

bool wf_template_is_templated(const char *s)
{
    return strstr(s, "{{") != NULL;
}

/* Finds the next {{ ... }} at or after `from`. Returns 1 and fills sp, 0 when there is none, -1
 * when a "{{" is never closed. A "}}" inside a double-quoted string or closing an object literal
 * (both only occur in a default) does not close the expression. */
static int tpl_next(const char *s, size_t len, size_t from, tpl_span *sp)
{
    const char *open = NULL;
    for (size_t i = from; i + 1 < len; i++) {
        if (s[i] == '{' && s[i + 1] == '{') {
            open = s + i;
            break;
        }
    }
    if (!open)
        return 0;
    size_t i = (size_t)(open - s) + 2;
    bool in_str = false;
    size_t depth = 0; /* braces opened by an object default literal */
    for (; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{') {
            depth++;
        } else if (c == '}' && depth > 0) {
            depth--;
        } else if (c == '}' && i + 1 < len && s[i + 1] == '}') {
            sp->open = (size_t)(open - s);
            sp->end = i + 2;
            sp->expr = open + 2;
            sp->expr_len = i - sp->open - 2;
            return 1;
        }
    }
    return -1;
}

static void trim(const char **p, size_t *n)
{
    while (*n && (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r')) {
        (*p)++;
        (*n)--;
    }
    while (*n && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t' || (*p)[*n - 1] == '\n' ||
                  (*p)[*n - 1] == '\r'))
        (*n)--;
}

/* Parses one expression. On error returns false with a message in msg. */
static bool tpl_parse_expr(const char *e, size_t n, tpl_expr *out, char *msg, size_t msgsz)
{
    out->deflt = NULL;
    trim(&e, &n);
    if (n == 0) {
        snprintf(msg, msgsz, "empty template expression");
        return false;
    }
    const char *bar = memchr(e, '|', n);
    size_t plen = bar ? (size_t)(bar - e) : n;
    const char *p = e;
    trim(&p, &plen);
    if (!wf_path_valid(p, plen)) {
        snprintf(msg, msgsz, "bad template path \"%.*s\"", (int)(plen > 64 ? 64 : plen), p);
        return false;
    }
    out->path = p;
    out->path_len = plen;
    if (!bar)
        return true;
    const char *r = bar + 1;
    size_t rn = (size_t)(e + n - r);
    trim(&r, &rn);
    if (rn < 7 || memcmp(r, "default", 7) != 0) {
        snprintf(msg, msgsz, "expected \"default:\" after \"|\"");
        return false;
    }
    r += 7;
    rn -= 7;
    trim(&r, &rn);
    if (rn == 0 || *r != ':') {
        snprintf(msg, msgsz, "expected \"default:\" after \"|\"");
        return false;
    }
    r++;
    rn--;
    trim(&r, &rn);
    if (rn == 0) {
        snprintf(msg, msgsz, "missing default literal");
        return false;
    }
    json_error_t jerr;
    out->deflt = json_loadb(r, rn, JSON_DECODE_ANY, &jerr);
    if (!out->deflt) {
        snprintf(msg, msgsz, "bad default literal: %s", jerr.text);
        return false;
    }
    return true;
}

/* ---- rendering ---- */

/* Renders v as text into b: strings as they are, numbers in their shortest exact form, the rest as
 * compact JSON. */
static eng_rc append_text(eng_buf *b, const json_t *v)
{
    if (json_is_string(v))
        return eng_buf_append(b, json_string_value(v), json_string_length(v));
    if (json_is_real(v)) {
        char tmp[40];
        double d = json_real_value(v);
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(tmp, sizeof tmp, "%.*g", prec, d);
            if (strtod(tmp, NULL) == d)
                break;
        }
        return eng_buf_append(b, tmp, strlen(tmp));
    }
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s)
        return ENG_EINTERNAL;
    eng_rc rc = eng_buf_append(b, s, strlen(s));
    free(s);
    return rc;
}

/* Resolves an expression: a borrowed value (the context's or the default), or NULL when missing. */
static const json_t *tpl_resolve(const tpl_expr *x, const json_t *ctx)
{
    const json_t *v = wf_path_lookup(ctx, x->path, x->path_len);
    if ((!v || json_is_null(v)) && x->deflt)
        return x->deflt;
    return v;
}

static eng_rc render_str(const char *s, size_t len, const json_t *ctx, json_t **out, eng_err *err,
                         const char *base, const frame *f)
{
    char msg[200];
    tpl_span sp;
    int found = tpl_next(s, len, 0, &sp);
    if (found == 0) {
        *out = json_stringn(s, len);
        return *out ? ENG_OK : frame_err(err, ENG_EINVAL, base, f, "string is not valid UTF-8");
    }
    eng_buf b;
    eng_buf_init(&b, WF_TEMPLATE_MAX_OUT);
    size_t pos = 0;
    eng_rc rc = ENG_OK;
    while (found != 0) {
        if (found < 0) {
            rc = frame_err(err, ENG_EINVAL, base, f, "unclosed \"{{\" in template");
            break;
        }
        tpl_expr x;
        if (!tpl_parse_expr(sp.expr, sp.expr_len, &x, msg, sizeof msg)) {
            rc = frame_err(err, ENG_EINVAL, base, f, msg);
            break;
        }
        const json_t *v = tpl_resolve(&x, ctx);
        if (!v) {
            snprintf(msg, sizeof msg, "missing value for %.*s",
                     (int)(x.path_len > 150 ? 150 : x.path_len), x.path);
            json_decref(x.deflt);
            rc = frame_err(err, ENG_EINVAL, base, f, msg);
            break;
        }
        if (sp.open == 0 && sp.end == len) {
            /* The whole string is one expression: keep the value's type. A copy keeps the result
             * independent of ctx (callers store and mutate rendered inputs). */
            *out = json_deep_copy(v);
            json_decref(x.deflt);
            eng_buf_deinit(&b);
            return ENG_OK;
        }
        rc = eng_buf_append(&b, s + pos, sp.open - pos);
        if (rc == ENG_OK)
            rc = append_text(&b, v);
        json_decref(x.deflt);
        if (rc != ENG_OK) {
            rc = frame_err(err, rc, base, f, "rendered template is too long");
            break;
        }
        pos = sp.end;
        found = tpl_next(s, len, pos, &sp);
    }
    if (rc == ENG_OK)
        rc = eng_buf_append(&b, s + pos, len - pos);
    if (rc == ENG_ETOOBIG)
        rc = frame_err(err, rc, base, f, "rendered template is too long");
    if (rc != ENG_OK) {
        eng_buf_deinit(&b);
        return rc;
    }
    size_t n;
    char *text = eng_buf_take(&b, &n);
    *out = json_stringn_nocheck(text, n);
    free(text);
    return ENG_OK;
}

static eng_rc render_value(const json_t *t, const json_t *ctx, json_t **out, eng_err *err,
                           const char *base, const frame *f)
{
    switch (json_typeof(t)) {
    case JSON_STRING:
        return render_str(json_string_value(t), json_string_length(t), ctx, out, err, base, f);
    case JSON_OBJECT: {
        json_t *o = json_object();
        const char *k;
        json_t *v;
        json_object_foreach ((json_t *)t, k, v) {
            frame child = {.up = f, .key = k};
            json_t *r;
            eng_rc rc = render_value(v, ctx, &r, err, base, &child);
            if (rc != ENG_OK) {
                json_decref(o);
                return rc;
            }
            json_object_set_new_nocheck(o, k, r);
        }
        *out = o;
        return ENG_OK;
    }
    case JSON_ARRAY: {
        json_t *a = json_array();
        for (size_t i = 0; i < json_array_size(t); i++) {
            frame child = {.up = f, .idx = i};
            json_t *r;
            eng_rc rc = render_value(json_array_get(t, i), ctx, &r, err, base, &child);
            if (rc != ENG_OK) {
                json_decref(a);
                return rc;
            }
            json_array_append_new(a, r);
        }
        *out = a;
        return ENG_OK;
    }
    default: *out = json_deep_copy(t); return ENG_OK;
    }
}

eng_rc wf_template_render(const json_t *tmpl, const json_t *ctx, json_t **out, eng_err *err)
{
    if (!tmpl)
        return eng_err_set(err, ENG_EINVAL, "no template");
    return render_value(tmpl, ctx, out, err, "", NULL);
}

eng_rc wf_template_render_string(const char *s, const json_t *ctx, json_t **out, eng_err *err)
{
    if (!s)
        return eng_err_set(err, ENG_EINVAL, "no template");
    return render_str(s, strlen(s), ctx, out, err, "", NULL);
}

/* ---- references ---- */

/* The walk's callback and whether it wants the paths that have a default too. */
typedef struct refs_walk {
    wf_template_ref_cb *cb;
    void *arg;
    bool with_defaults;
} refs_walk;

static eng_rc refs_str(const char *s, size_t len, const char *base, const frame *f,
                       const refs_walk *w, eng_err *err)
{
    char msg[200];
    tpl_span sp;
    size_t pos = 0;
    int found;
    while ((found = tpl_next(s, len, pos, &sp)) != 0) {
        if (found < 0)
            return frame_err(err, ENG_EINVAL, base, f, "unclosed \"{{\" in template");
        tpl_expr x;
        if (!tpl_parse_expr(sp.expr, sp.expr_len, &x, msg, sizeof msg))
            return frame_err(err, ENG_EINVAL, base, f, msg);
        bool has_default = x.deflt != NULL;
        json_decref(x.deflt);
        pos = sp.end;
        if (has_default && !w->with_defaults)
            continue;
        char *path = eng_xstrndup(x.path, x.path_len);
        char *ptr = frame_ptr(base, f);
        eng_rc rc = w->cb(w->arg, path, ptr, err);
        free(path);
        free(ptr);
        if (rc != ENG_OK)
            return rc;
    }
    return ENG_OK;
}

static eng_rc refs_value(const json_t *t, const char *base, const frame *f, const refs_walk *w,
                         eng_err *err)
{
    if (json_is_string(t))
        return refs_str(json_string_value(t), json_string_length(t), base, f, w, err);
    if (json_is_object(t)) {
        const char *k;
        json_t *v;
        json_object_foreach ((json_t *)t, k, v) {
            frame child = {.up = f, .key = k};
            eng_rc rc = refs_value(v, base, &child, w, err);
            if (rc != ENG_OK)
                return rc;
        }
    } else if (json_is_array(t)) {
        for (size_t i = 0; i < json_array_size(t); i++) {
            frame child = {.up = f, .idx = i};
            eng_rc rc = refs_value(json_array_get(t, i), base, &child, w, err);
            if (rc != ENG_OK)
                return rc;
        }
    }
    return ENG_OK;
}

eng_rc wf_template_refs(const json_t *tmpl, const char *ptr, wf_template_ref_cb *cb, void *arg,
                        eng_err *err)
{
    if (!tmpl)
        return ENG_OK;
    refs_walk w = {.cb = cb, .arg = arg, .with_defaults = true};
    return refs_value(tmpl, ptr ? ptr : "", NULL, &w, err);
}

eng_rc wf_template_required(const json_t *tmpl, const char *ptr, wf_template_ref_cb *cb, void *arg,
                            eng_err *err)
{
    if (!tmpl)
        return ENG_OK;
    refs_walk w = {.cb = cb, .arg = arg, .with_defaults = false};
    return refs_value(tmpl, ptr ? ptr : "", NULL, &w, err);
}
