/* tests/support/th_logfmt.c: the strict logfmt parser (see th_logfmt.h). */
#include "tests/support/th_logfmt.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"
#include "engine/mem.h"

static bool fail(char *why, size_t whylen, size_t at, const char *fmt, ...) ENG_PRINTF(4, 5);
static bool fail(char *why, size_t whylen, size_t at, const char *fmt, ...)
{
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(why, whylen, "byte %zu: %s", at, msg);
    return false;
}

static int hex4(const char *s)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static void put_utf8(eng_buf *b, unsigned cp)
{
    char out[4];
    size_t n;
    if (cp < 0x80) {
        out[0] = (char)cp, n = 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3f)), n = 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12)), out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f)), n = 3;
    } else {
        out[0] = (char)(0xf0 | (cp >> 18)), out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), out[3] = (char)(0x80 | (cp & 0x3f)), n = 4;
    }
    eng_rc rc = eng_buf_append(b, out, n);
    (void)rc; /* uncapped */
}

/* Length of a valid UTF-8 sequence of 2-4 bytes at s, or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    size_t len;
    unsigned cp, min;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2, cp = s[0] & 0x1fu, min = 0x80;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3, cp = s[0] & 0x0fu, min = 0x800;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4, cp = s[0] & 0x07u, min = 0x10000;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    return cp >= min && cp <= 0x10ffff && (cp < 0xd800 || cp > 0xdfff) ? len : 0;
}

/* Parses a quoted value starting at line[*i] == '"'; appends the decoded text to b. */
static bool parse_quoted(const char *line, size_t len, size_t *i, eng_buf *b, char *why,
                         size_t whylen)
{
    const unsigned char *s = (const unsigned char *)line;
    size_t p = *i + 1;
    for (;;) {
        if (p >= len)
            return fail(why, whylen, *i, "quoted value never closed");
        unsigned char c = s[p];
        if (c == '"') {
            *i = p + 1;
            return true;
        }
        if (c < 0x20 || c == 0x7f)
            return fail(why, whylen, p, "control byte 0x%02x inside quotes", c);
        if (c == '\\') {
            if (p + 1 >= len)
                return fail(why, whylen, p, "escape at the end of the line");
            char e = line[p + 1];
            const char *simple = strchr("\"\\/bfnrt", e);
            if (e && simple) {
                static const char dec[] = "\"\\/\b\f\n\r\t";
                put_utf8(b, (unsigned char)dec[simple - "\"\\/bfnrt"]);
                p += 2;
                continue;
            }
            if (e != 'u' || p + 6 > len)
                return fail(why, whylen, p, "unknown escape \\%c", e ? e : '0');
            int cp = hex4(line + p + 2);
            if (cp < 0)
                return fail(why, whylen, p, "bad \\u escape");
            p += 6;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                int lo =
                    p + 6 <= len && line[p] == '\\' && line[p + 1] == 'u' ? hex4(line + p + 2) : -1;
                if (lo < 0xdc00 || lo > 0xdfff)
                    return fail(why, whylen, p, "lone high surrogate");
                put_utf8(b, 0x10000u + (((unsigned)cp - 0xd800u) << 10) + ((unsigned)lo - 0xdc00u));
                p += 6;
                continue;
            }
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return fail(why, whylen, p, "lone low surrogate");
            if (cp == 0)
                return fail(why, whylen, p, "\\u0000 in a value");
            put_utf8(b, (unsigned)cp);
            continue;
        }
        size_t n = 1;
        if (c >= 0x80 && (n = utf8_seq(s + p, len - p)) == 0)
            return fail(why, whylen, p, "invalid UTF-8");
        eng_rc rc = eng_buf_append(b, line + p, n);
        (void)rc;
        p += n;
    }
}

static bool ts_ok(const char *v)
{
    /* 2026-11-22T10:00:00.123Z */
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    if (strlen(v) != sizeof shape - 1)
        return false;
    for (size_t i = 0; shape[i]; i++)
        if (shape[i] == 'd' ? (v[i] < '0' || v[i] > '9') : v[i] != shape[i])
            return false;
    return true;
}

bool th_logfmt_parse(const char *line, size_t len, th_logfmt_line *out, char *why, size_t whylen)
{
    memset(out, 0, sizeof *out);
    size_t i = 0;
    if (len == 0)
        return fail(why, whylen, 0, "empty line");
    while (i < len) {
        if (out->n > 0) {
            if (line[i] != ' ')
                return fail(why, whylen, i, "expected one space between pairs");
            i++;
        }
        size_t k0 = i;
        if (i >= len || line[i] < 'a' || line[i] > 'z')
            goto bad_key;
        while (i < len && ((line[i] >= 'a' && line[i] <= 'z') ||
                           (line[i] >= '0' && line[i] <= '9') || line[i] == '_' || line[i] == '.'))
            i++;
        if (i >= len || line[i] != '=')
            goto bad_key;
        char *key = eng_xmalloc(i - k0 + 1);
        memcpy(key, line + k0, i - k0);
        key[i - k0] = '\0';
        i++;
        eng_buf b;
        eng_buf_init(&b, 0);
        bool ok = true;
        if (i < len && line[i] == '"') {
            ok = parse_quoted(line, len, &i, &b, why, whylen);
        } else {
            size_t v0 = i;
            while (i < len && line[i] != ' ') {
                unsigned char c = (unsigned char)line[i];
                if (c <= ' ' || c >= 0x7f || c == '=' || c == '"' || c == '\\') {
                    ok = fail(why, whylen, i, "byte 0x%02x in an unquoted value", c);
                    break;
                }
                i++;
            }
            if (ok && i == v0)
                ok = fail(why, whylen, i, "empty unquoted value of %s", key);
            if (ok) {
                eng_rc rc = eng_buf_append(&b, line + v0, i - v0);
                (void)rc;
            }
        }
        if (ok && th_logfmt_get(out, key))
            ok = fail(why, whylen, k0, "key %s twice on the line", key);
        if (ok && out->n == TH_LOGFMT_MAX_PAIRS)
            ok = fail(why, whylen, k0, "more than %d pairs", TH_LOGFMT_MAX_PAIRS);
        if (!ok) {
            free(key);
            eng_buf_deinit(&b);
            th_logfmt_line_free(out);
            return false;
        }
        out->pairs[out->n].key = key;
        out->pairs[out->n].value = b.ptr ? eng_buf_take(&b, NULL) : eng_xstrdup("");
        out->n++;
        continue;
    bad_key:
        th_logfmt_line_free(out);
        return fail(why, whylen, k0, "expected key=value (key: [a-z][a-z0-9_.]*)");
    }
    static const char *const first[] = {"ts", "lvl", "msg"};
    for (size_t f = 0; f < 3; f++)
        if (out->n <= f || strcmp(out->pairs[f].key, first[f]) != 0) {
            th_logfmt_line_free(out);
            return fail(why, whylen, 0, "the line must start with ts, lvl, msg");
        }
    const char *lvl = out->pairs[1].value;
    if (!ts_ok(out->pairs[0].value) || (strcmp(lvl, "error") && strcmp(lvl, "warn") &&
                                        strcmp(lvl, "info") && strcmp(lvl, "debug"))) {
        th_logfmt_line_free(out);
        return fail(why, whylen, 0, "bad ts or lvl");
    }
    return true;
}

void th_logfmt_line_free(th_logfmt_line *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->pairs[i].key);
        free(l->pairs[i].value);
    }
    l->n = 0;
}

const char *th_logfmt_get(const th_logfmt_line *l, const char *key)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->pairs[i].key, key) == 0)
            return l->pairs[i].value;
    return NULL;
}

char *th_logfmt_check(const char *text, size_t len, size_t *nlines)
{
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(text + i, '\n', len - i);
        if (!nl)
            return eng_xasprintf("line %zu has no newline: %.200s", n + 1, text + i);
        size_t ll = (size_t)(nl - (text + i));
        n++;
        th_logfmt_line l;
        char why[200];
        if (!th_logfmt_parse(text + i, ll, &l, why, sizeof why))
            return eng_xasprintf("line %zu: %s: %.*s", n, why, (int)(ll > 600 ? 600 : ll),
                                 text + i);
        th_logfmt_line_free(&l);
        i += ll + 1;
    }
    if (nlines)
        *nlines = n;
    return NULL;
}
