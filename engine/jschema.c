/* engine/jschema.c: see jschema.h.
 *
 * Compilation walks every schema position once (and every $ref target), refusing unknown
 * keywords and bad keyword values, and compiles each pattern into a table keyed by the schema
 * object that holds it. Validation walks the instance with the schema, building the instance's
 * JSON pointer in one buffer that grows and shrinks with the recursion, so a valid instance costs
 * no allocation. $ref is resolved by walking its pointer from the root each time; recursion
 * through $ref without consuming the instance is cut at JSCHEMA_MAX_DEPTH. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "engine/jschema.h"

#include <math.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"

#define JSCHEMA_MAX_DEPTH 256 /* nested schemas applied to one instance (recursive $ref) */
#define JSCHEMA_PATH_MAX 1024

typedef struct jschema_re {
    const json_t *owner; /* the schema object whose "pattern" this is */
    pcre2_code *code;
} jschema_re;

struct jschema {
    json_t *root;
    jschema_re *res;
    size_t nres, cap;
};

/* ---------------------------------------------------------------------------- pointers -- */

/* A JSON pointer being built: segments are appended and removed as the walk goes. A segment
 * that does not fit is not recorded, nor anything under it: an error there names the nearest
 * ancestor that fit. */
typedef struct jpath {
    char s[JSCHEMA_PATH_MAX];
    size_t len;
    unsigned cut; /* segments pushed but not recorded */
} jpath;

#define JPATH_CUT SIZE_MAX

static size_t jpath_push(jpath *p, const char *seg)
{
    size_t need = 1;
    for (const char *c = seg; *c; c++)
        need += (*c == '~' || *c == '/') ? 2 : 1;
    if (p->cut || p->len + need >= sizeof p->s) {
        p->cut++;
        return JPATH_CUT;
    }
    size_t mark = p->len;
    p->s[p->len++] = '/';
    for (const char *c = seg; *c; c++) {
        if (*c == '~' || *c == '/') {
            p->s[p->len++] = '~';
            p->s[p->len++] = *c == '~' ? '0' : '1';
        } else {
            p->s[p->len++] = *c;
        }
    }
    p->s[p->len] = '\0';
    return mark;
}

static size_t jpath_push_idx(jpath *p, size_t i)
{
    char n[24];
    snprintf(n, sizeof n, "%zu", i);
    return jpath_push(p, n);
}

static void jpath_pop(jpath *p, size_t mark)
{
    if (mark == JPATH_CUT) {
        p->cut--;
        return;
    }
    p->len = mark;
    p->s[mark] = '\0';
}

static void jpath_init(jpath *p, const char *base)
{
    snprintf(p->s, sizeof p->s, "%s", base ? base : "");
    p->len = strlen(p->s);
    p->cut = 0;
}

/* The value the fragment "#/a/b~1c" (percent-encoding undone) points at in root, or NULL. */
static const json_t *resolve_ref(const json_t *root, const char *ref)
{
    if (ref[0] != '#')
        return NULL;
    const json_t *cur = root;
    const char *p = ref + 1;
    if (!*p)
        return cur;
    if (*p != '/')
        return NULL;
    char seg[256];
    while (*p == '/' && cur) {
        p++;
        size_t n = 0;
        while (*p && *p != '/') {
            char c = *p++;
            if (c == '%' && p[0] && p[1]) {
                char hex[3] = {p[0], p[1], 0};
                char *end;
                long v = strtol(hex, &end, 16);
                if (*end)
                    return NULL;
                c = (char)v;
                p += 2;
            } else if (c == '~') {
                if (*p != '0' && *p != '1')
                    return NULL;
                c = *p++ == '0' ? '~' : '/';
            }
            if (n + 1 >= sizeof seg)
                return NULL;
            seg[n++] = c;
        }
        seg[n] = '\0';
        if (json_is_object(cur)) {
            cur = json_object_get(cur, seg);
        } else if (json_is_array(cur)) {
            char *end;
            unsigned long long i = strtoull(seg, &end, 10);
            if (!*seg || *end || (seg[0] == '0' && seg[1]))
                return NULL;
            cur = json_array_get(cur, (size_t)i);
        } else {
            return NULL;
        }
    }
    return cur;
}

/* ---------------------------------------------------------------------------- equality -- */

int jschema_equal(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b)) {
        if (json_is_integer(a) && json_is_integer(b))
            return json_integer_value(a) == json_integer_value(b);
        return json_number_value(a) == json_number_value(b);
    }
    if (json_typeof(a) != json_typeof(b))
        return 0;
    if (json_is_string(a))
        return json_string_length(a) == json_string_length(b) &&
               memcmp(json_string_value(a), json_string_value(b), json_string_length(a)) == 0;
    if (json_is_array(a)) {
        if (json_array_size(a) != json_array_size(b))
            return 0;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!jschema_equal(json_array_get(a, i), json_array_get(b, i)))
                return 0;
        return 1;
    }
    if (json_is_object(a)) {
        if (json_object_size(a) != json_object_size(b))
            return 0;
        const char *k;
        json_t *v;
        json_object_foreach ((json_t *)a, k, v) {
            const json_t *w = json_object_get(b, k);
            if (!w || !jschema_equal(v, w))
                return 0;
        }
        return 1;
    }
    return 1; /* true, false, null: same type */
}

/* ---------------------------------------------------------------------------- compiling -- */

typedef struct compiler {
    jschema *s;
    const json_t **seen; /* schema objects already checked ($ref targets may repeat) */
    size_t nseen, capseen;
    jpath path;
    eng_err *err;
} compiler;

static const char *const type_names[] = {"object", "array", "string", "number",
                                         "integer", "boolean", "null"};
static const char *const annotations[] = {"title",    "description", "default",    "examples",
                                          "$comment", "$schema",     "readOnly",   "writeOnly",
                                          "deprecated", NULL};

static eng_rc cbad(compiler *c, const char *key, const char *fmt, ...) ENG_PRINTF(3, 4);

static eng_rc cbad(compiler *c, const char *key, const char *fmt, ...)
{
    size_t mark = key ? jpath_push(&c->path, key) : JPATH_CUT;
    char msg[sizeof c->err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    eng_err_field(c->err, ENG_EINVAL, c->path.s, "%s", msg);
    if (key)
        jpath_pop(&c->path, mark);
    return ENG_EINVAL;
}

static bool is_count(const json_t *v)
{
    double d = json_number_value(v);
    return json_is_number(v) && d >= 0 && d <= 1e15 && floor(d) == d;
}

static bool in_list(const char *k, const char *const *list, size_t n)
{
    for (size_t i = 0; n ? i < n : list[i] != NULL; i++)
        if (strcmp(k, list[i]) == 0)
            return true;
    return false;
}

static eng_rc check_schema(compiler *c, const json_t *sch);

/* A member that is a schema (additionalProperties, items, not). */
static eng_rc check_sub(compiler *c, const char *key, const json_t *sub)
{
    size_t mark = jpath_push(&c->path, key);
    eng_rc rc = check_schema(c, sub);
    jpath_pop(&c->path, mark);
    return rc;
}

/* A member that is an object of schemas (properties, $defs, definitions). */
static eng_rc check_map(compiler *c, const char *key, const json_t *map)
{
    if (!json_is_object(map))
        return cbad(c, key, "must be an object of schemas");
    size_t mark = jpath_push(&c->path, key);
    const char *k;
    json_t *v;
    eng_rc rc = ENG_OK;
    json_object_foreach ((json_t *)map, k, v) {
        size_t m2 = jpath_push(&c->path, k);
        rc = check_schema(c, v);
        jpath_pop(&c->path, m2);
        if (rc != ENG_OK)
            break;
    }
    jpath_pop(&c->path, mark);
    return rc;
}

/* A member that is a non-empty array of schemas (allOf, anyOf, oneOf). */
static eng_rc check_list(compiler *c, const char *key, const json_t *list)
{
    if (!json_is_array(list) || json_array_size(list) == 0)
        return cbad(c, key, "must be a non-empty array of schemas");
    size_t mark = jpath_push(&c->path, key);
    eng_rc rc = ENG_OK;
    for (size_t i = 0; i < json_array_size(list) && rc == ENG_OK; i++) {
        size_t m2 = jpath_push_idx(&c->path, i);
        rc = check_schema(c, json_array_get(list, i));
        jpath_pop(&c->path, m2);
    }
    jpath_pop(&c->path, mark);
    return rc;
}

static eng_rc check_type(compiler *c, const json_t *t)
{
    if (json_is_string(t)) {
        if (!in_list(json_string_value(t), type_names, ENG_ARRAY_LEN(type_names)))
            return cbad(c, "type", "unknown type \"%.40s\"", json_string_value(t));
        return ENG_OK;
    }
    if (!json_is_array(t) || json_array_size(t) == 0)
        return cbad(c, "type", "must be a type name or a non-empty array of type names");
    for (size_t i = 0; i < json_array_size(t); i++) {
        const char *n = json_string_value(json_array_get(t, i));
        if (!n || !in_list(n, type_names, ENG_ARRAY_LEN(type_names)))
            return cbad(c, "type", "unknown type at index %zu", i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(n, json_string_value(json_array_get(t, j))) == 0)
                return cbad(c, "type", "type \"%s\" listed twice", n);
    }
    return ENG_OK;
}

static eng_rc compile_pattern(compiler *c, const json_t *sch, const json_t *pat)
{
    if (!json_is_string(pat))
        return cbad(c, "pattern", "must be a regular expression string");
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)json_string_value(pat), json_string_length(pat),
                                   PCRE2_UTF | PCRE2_DOLLAR_ENDONLY, &code, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        return cbad(c, "pattern", "not a regular expression: %s at offset %zu", (const char *)msg,
                    (size_t)off);
    }
    jschema *s = c->s;
    if (s->nres == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 4;
        s->res = eng_xrealloc(s->res, s->cap * sizeof *s->res);
    }
    s->res[s->nres++] = (jschema_re){.owner = sch, .code = re};
    return ENG_OK;
}

static eng_rc check_keyword(compiler *c, const json_t *sch, const char *k, const json_t *v)
{
    if (strcmp(k, "type") == 0)
        return check_type(c, v);
    if (strcmp(k, "properties") == 0 || strcmp(k, "$defs") == 0 || strcmp(k, "definitions") == 0)
        return check_map(c, k, v);
    if (strcmp(k, "additionalProperties") == 0 || strcmp(k, "not") == 0)
        return check_sub(c, k, v);
    if (strcmp(k, "items") == 0) {
        if (json_is_array(v))
            return cbad(c, k, "unsupported: items as an array of schemas (tuple form)");
        return check_sub(c, k, v);
    }
    if (strcmp(k, "allOf") == 0 || strcmp(k, "anyOf") == 0 || strcmp(k, "oneOf") == 0)
        return check_list(c, k, v);
    if (strcmp(k, "required") == 0) {
        if (!json_is_array(v))
            return cbad(c, k, "must be an array of member names");
        for (size_t i = 0; i < json_array_size(v); i++) {
            const json_t *n = json_array_get(v, i);
            if (!json_is_string(n))
                return cbad(c, k, "must be an array of member names");
            for (size_t j = 0; j < i; j++)
                if (jschema_equal(n, json_array_get(v, j)))
                    return cbad(c, k, "\"%.60s\" listed twice", json_string_value(n));
        }
        return ENG_OK;
    }
    if (strcmp(k, "enum") == 0)
        return json_is_array(v) ? ENG_OK : cbad(c, k, "must be an array");
    if (strcmp(k, "const") == 0)
        return ENG_OK;
    if (strcmp(k, "minimum") == 0 || strcmp(k, "maximum") == 0 ||
        strcmp(k, "exclusiveMinimum") == 0 || strcmp(k, "exclusiveMaximum") == 0)
        return json_is_number(v) ? ENG_OK : cbad(c, k, "must be a number");
    if (strcmp(k, "minLength") == 0 || strcmp(k, "maxLength") == 0 ||
        strcmp(k, "minItems") == 0 || strcmp(k, "maxItems") == 0 ||
        strcmp(k, "minProperties") == 0 || strcmp(k, "maxProperties") == 0)
        return is_count(v) ? ENG_OK : cbad(c, k, "must be a non-negative integer");
    if (strcmp(k, "uniqueItems") == 0)
        return json_is_boolean(v) ? ENG_OK : cbad(c, k, "must be true or false");
    if (strcmp(k, "pattern") == 0)
        return compile_pattern(c, sch, v);
    if (in_list(k, annotations, 0))
        return ENG_OK;
    return cbad(c, k, "unsupported JSON Schema keyword \"%.60s\"", k);
}

static eng_rc check_ref(compiler *c, const json_t *sch, const json_t *ref)
{
    if (!json_is_string(ref))
        return cbad(c, "$ref", "must be a string");
    const char *k;
    json_t *v;
    json_object_foreach ((json_t *)sch, k, v) {
        if (strcmp(k, "$ref") != 0 && strcmp(k, "$defs") != 0 && strcmp(k, "definitions") != 0 &&
            !in_list(k, annotations, 0))
            return cbad(c, k, "unsupported next to $ref (draft 7 ignores it, 2019-09 applies it): "
                              "move it into an allOf with the $ref");
    }
    const json_t *target = resolve_ref(c->s->root, json_string_value(ref));
    if (!target)
        return cbad(c, "$ref", "\"%.80s\" does not point into this schema (only \"#...\" JSON "
                               "pointers are supported)",
                    json_string_value(ref));
    /* the target is checked where it stands when it is a schema position; checking it here too
     * covers pointers into anything else ("#/properties") */
    size_t mark = jpath_push(&c->path, "$ref");
    eng_rc rc = check_schema(c, target);
    jpath_pop(&c->path, mark);
    return rc;
}

static eng_rc check_schema(compiler *c, const json_t *sch)
{
    if (json_is_boolean(sch))
        return ENG_OK;
    if (!json_is_object(sch))
        return cbad(c, NULL, "a schema must be an object or true/false");
    for (size_t i = 0; i < c->nseen; i++)
        if (c->seen[i] == sch)
            return ENG_OK;
    if (c->nseen == c->capseen) {
        c->capseen = c->capseen ? 2 * c->capseen : 16;
        c->seen = eng_xrealloc(c->seen, c->capseen * sizeof *c->seen);
    }
    c->seen[c->nseen++] = sch;
    const json_t *ref = json_object_get(sch, "$ref");
    if (ref) {
        eng_rc rc = check_ref(c, sch, ref);
        if (rc != ENG_OK)
            return rc;
    }
    const char *k;
    json_t *v;
    json_object_foreach ((json_t *)sch, k, v) {
        if (strcmp(k, "$ref") == 0)
            continue;
        eng_rc rc = check_keyword(c, sch, k, v);
        if (rc != ENG_OK)
            return rc;
    }
    return ENG_OK;
}

void jschema_free(jschema *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nres; i++)
        pcre2_code_free(s->res[i].code);
    free(s->res);
    json_decref(s->root);
    free(s);
}

eng_rc jschema_compile(const json_t *schema, const char *ptr, jschema **out, eng_err *err)
{
    eng_err local;
    eng_err_clear(&local);
    jschema *s = eng_xcalloc(1, sizeof *s);
    s->root = json_incref((json_t *)schema);
    compiler c = {.s = s, .err = &local};
    jpath_init(&c.path, ptr);
    eng_rc rc = schema ? check_schema(&c, schema)
                       : eng_err_field(&local, ENG_EINVAL, ptr ? ptr : "", "no schema");
    free(c.seen);
    if (rc != ENG_OK) {
        jschema_free(s);
        if (err)
            *err = local;
        return rc;
    }
    *out = s;
    return ENG_OK;
}

/* ---------------------------------------------------------------------------- validating -- */

typedef struct validator {
    const jschema *s;
    jpath path;
    eng_err *err; /* NULL while trying alternatives (anyOf, oneOf, not) */
    int depth;
} validator;

static bool vbad(validator *v, const char *key, const char *fmt, ...) ENG_PRINTF(3, 4);

/* Records the failure at the current instance pointer (plus key, for a missing member) when
 * errors are wanted; always returns false. */
static bool vbad(validator *v, const char *key, const char *fmt, ...)
{
    if (!v->err)
        return false;
    size_t mark = key ? jpath_push(&v->path, key) : JPATH_CUT;
    char msg[sizeof v->err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    eng_err_field(v->err, ENG_EINVAL, v->path.s, "%s", msg);
    if (key)
        jpath_pop(&v->path, mark);
    return false;
}

static bool valid(validator *v, const json_t *sch, const json_t *inst);

static const char *type_of(const json_t *x)
{
    switch (json_typeof(x)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static bool is_type(const json_t *x, const char *t)
{
    switch (t[0]) {
    case 'o': return json_is_object(x);
    case 'a': return json_is_array(x);
    case 's': return json_is_string(x);
    case 'n': return t[1] == 'u' ? (t[2] == 'm' ? json_is_number(x) : json_is_null(x)) : false;
    case 'b': return json_is_boolean(x);
    case 'i':
        return json_is_integer(x) ||
               (json_is_real(x) && floor(json_real_value(x)) == json_real_value(x) &&
                isfinite(json_real_value(x)));
    default: return false;
    }
}

static bool valid_type(validator *v, const json_t *t, const json_t *inst)
{
    if (json_is_string(t)) {
        if (is_type(inst, json_string_value(t)))
            return true;
        return vbad(v, NULL, "must be %s %s, not %s",
                    strchr("aeiou", json_string_value(t)[0]) ? "an" : "a", json_string_value(t),
                    type_of(inst));
    }
    for (size_t i = 0; i < json_array_size(t); i++)
        if (is_type(inst, json_string_value(json_array_get(t, i))))
            return true;
    if (json_is_null(inst))
        return vbad(v, NULL, "must not be null");
    return vbad(v, NULL, "has the wrong type (%s)", type_of(inst));
}

/* Code points of a UTF-8 string (jansson holds only valid UTF-8). */
static size_t utf8_len(const char *s, size_t n)
{
    size_t cp = 0;
    for (size_t i = 0; i < n; i++)
        cp += ((unsigned char)s[i] & 0xC0) != 0x80;
    return cp;
}

static const pcre2_code *pattern_of(const jschema *s, const json_t *sch)
{
    for (size_t i = 0; i < s->nres; i++)
        if (s->res[i].owner == sch)
            return s->res[i].code;
    return NULL;
}

static bool valid_string(validator *v, const json_t *sch, const json_t *inst)
{
    size_t n = json_string_length(inst);
    const json_t *mn = json_object_get(sch, "minLength"), *mx = json_object_get(sch, "maxLength");
    if (mn || mx) {
        double len = (double)utf8_len(json_string_value(inst), n);
        if (mn && len < json_number_value(mn))
            return vbad(v, NULL, "must be at least %.0f characters long", json_number_value(mn));
        if (mx && len > json_number_value(mx))
            return vbad(v, NULL, "must be at most %.0f characters long", json_number_value(mx));
    }
    const pcre2_code *re = pattern_of(v->s, sch);
    if (re) {
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
        int rc = pcre2_match(re, (PCRE2_SPTR)json_string_value(inst), n, 0, 0, md, NULL);
        pcre2_match_data_free(md);
        if (rc == PCRE2_ERROR_NOMATCH)
            return vbad(v, NULL, "does not match the pattern %.80s",
                        json_string_value(json_object_get(sch, "pattern")));
        if (rc < 0) /* PCRE2's backtracking and depth limits: not taken as a match */
            return vbad(v, NULL, "the pattern %.80s could not be matched (error %d)",
                        json_string_value(json_object_get(sch, "pattern")), rc);
    }
    return true;
}

static bool valid_number(validator *v, const json_t *sch, const json_t *inst)
{
    double x = json_number_value(inst);
    const json_t *b;
    if ((b = json_object_get(sch, "minimum")) && x < json_number_value(b))
        return vbad(v, NULL, "must be at least %g", json_number_value(b));
    if ((b = json_object_get(sch, "maximum")) && x > json_number_value(b))
        return vbad(v, NULL, "must be at most %g", json_number_value(b));
    if ((b = json_object_get(sch, "exclusiveMinimum")) && x <= json_number_value(b))
        return vbad(v, NULL, "must be greater than %g", json_number_value(b));
    if ((b = json_object_get(sch, "exclusiveMaximum")) && x >= json_number_value(b))
        return vbad(v, NULL, "must be less than %g", json_number_value(b));
    return true;
}

static bool valid_array(validator *v, const json_t *sch, const json_t *inst)
{
    double n = (double)json_array_size(inst);
    const json_t *b;
    if ((b = json_object_get(sch, "minItems")) && n < json_number_value(b))
        return vbad(v, NULL, "must have at least %.0f items", json_number_value(b));
    if ((b = json_object_get(sch, "maxItems")) && n > json_number_value(b))
        return vbad(v, NULL, "must have at most %.0f items", json_number_value(b));
    if (json_is_true(json_object_get(sch, "uniqueItems")))
        for (size_t i = 1; i < json_array_size(inst); i++)
            for (size_t j = 0; j < i; j++)
                if (jschema_equal(json_array_get(inst, i), json_array_get(inst, j)))
                    return vbad(v, NULL, "items %zu and %zu are equal (uniqueItems)", j, i);
    const json_t *items = json_object_get(sch, "items");
    if (items)
        for (size_t i = 0; i < json_array_size(inst); i++) {
            size_t mark = jpath_push_idx(&v->path, i);
            bool ok = valid(v, items, json_array_get(inst, i));
            jpath_pop(&v->path, mark);
            if (!ok)
                return false;
        }
    return true;
}

static bool valid_object(validator *v, const json_t *sch, const json_t *inst)
{
    const json_t *b;
    double n = (double)json_object_size(inst);
    if ((b = json_object_get(sch, "minProperties")) && n < json_number_value(b))
        return vbad(v, NULL, "must have at least %.0f members", json_number_value(b));
    if ((b = json_object_get(sch, "maxProperties")) && n > json_number_value(b))
        return vbad(v, NULL, "must have at most %.0f members", json_number_value(b));
    const json_t *req = json_object_get(sch, "required");
    for (size_t i = 0; i < json_array_size(req); i++) {
        const char *k = json_string_value(json_array_get(req, i));
        if (!json_object_get(inst, k))
            return vbad(v, k, "required");
    }
    const json_t *props = json_object_get(sch, "properties");
    const json_t *addl = json_object_get(sch, "additionalProperties");
    const char *k;
    json_t *m;
    json_object_foreach ((json_t *)inst, k, m) {
        const json_t *sub = json_object_get(props, k);
        if (!sub && !addl)
            continue;
        size_t mark = jpath_push(&v->path, k);
        bool ok;
        if (!sub && json_is_false(addl))
            ok = vbad(v, NULL, "unknown member \"%.60s\" (additionalProperties is false)", k);
        else
            ok = valid(v, sub ? sub : addl, m);
        jpath_pop(&v->path, mark);
        if (!ok)
            return false;
    }
    return true;
}

/* How many of the schemas in list inst matches, stopping once `enough` did; errors off. */
static size_t count_matches(validator *v, const json_t *list, const json_t *inst, size_t enough)
{
    eng_err *saved = v->err;
    v->err = NULL;
    size_t hits = 0;
    for (size_t i = 0; i < json_array_size(list) && hits < enough; i++)
        hits += valid(v, json_array_get(list, i), inst);
    v->err = saved;
    return hits;
}

static bool valid_combinators(validator *v, const json_t *sch, const json_t *inst)
{
    const json_t *l;
    if ((l = json_object_get(sch, "allOf")))
        for (size_t i = 0; i < json_array_size(l); i++)
            if (!valid(v, json_array_get(l, i), inst))
                return false;
    if ((l = json_object_get(sch, "anyOf")) && count_matches(v, l, inst, 1) == 0) {
        /* when one alternative alone was offered the reason is its own */
        if (json_array_size(l) == 1)
            return valid(v, json_array_get(l, 0), inst);
        return vbad(v, NULL, "matches none of the %zu schemas of anyOf", json_array_size(l));
    }
    if ((l = json_object_get(sch, "oneOf"))) {
        size_t hits = count_matches(v, l, inst, 2);
        if (hits == 0 && json_array_size(l) == 1)
            return valid(v, json_array_get(l, 0), inst);
        if (hits != 1)
            return vbad(v, NULL, "matches %s of the schemas of oneOf, not exactly one",
                        hits ? "more than one" : "none");
    }
    if ((l = json_object_get(sch, "not"))) {
        eng_err *saved = v->err;
        v->err = NULL;
        bool hit = valid(v, l, inst);
        v->err = saved;
        if (hit)
            return vbad(v, NULL, "matches the schema of not");
    }
    return true;
}

static bool valid(validator *v, const json_t *sch, const json_t *inst)
{
    if (json_is_true(sch))
        return true;
    if (json_is_false(sch))
        return vbad(v, NULL, "no value is allowed here");
    if (++v->depth > JSCHEMA_MAX_DEPTH) {
        v->depth--;
        return vbad(v, NULL, "the schema recurses too deep ($ref)");
    }
    bool ok = true;
    const json_t *ref = json_object_get(sch, "$ref");
    const json_t *b;
    if (ref) {
        /* compilation made sure the pointer resolves and nothing but annotations stands next to
         * it */
        ok = valid(v, resolve_ref(v->s->root, json_string_value(ref)), inst);
    } else if ((b = json_object_get(sch, "type")) && !valid_type(v, b, inst)) {
        ok = false;
    } else if ((b = json_object_get(sch, "const")) && !jschema_equal(b, inst)) {
        ok = vbad(v, NULL, "must be the constant of the schema");
    } else if ((b = json_object_get(sch, "enum"))) {
        size_t i = 0;
        while (i < json_array_size(b) && !jschema_equal(json_array_get(b, i), inst))
            i++;
        if (i == json_array_size(b))
            ok = vbad(v, NULL, "must be one of the %zu values of enum", json_array_size(b));
    }
    if (ok && !ref) {
        if (json_is_string(inst))
            ok = valid_string(v, sch, inst);
        else if (json_is_number(inst))
            ok = valid_number(v, sch, inst);
        else if (json_is_array(inst))
            ok = valid_array(v, sch, inst);
        else if (json_is_object(inst))
            ok = valid_object(v, sch, inst);
        ok = ok && valid_combinators(v, sch, inst);
    }
    v->depth--;
    return ok;
}

eng_rc jschema_validate(const jschema *s, const json_t *instance, const char *base, eng_err *err)
{
    eng_err local;
    eng_err_clear(&local);
    validator v = {.s = s, .err = &local};
    jpath_init(&v.path, base);
    if (valid(&v, s->root, instance))
        return ENG_OK;
    if (local.rc == ENG_OK)
        eng_err_field(&local, ENG_EINVAL, base ? base : "", "does not match the schema");
    if (err)
        *err = local;
    return ENG_EINVAL;
}
