/* engine/buf.c: capped growable buffer (see buf.h). */
#include "engine/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"

void eng_buf_init(eng_buf *b, size_t max)
{
    *b = (eng_buf){.max = max};
}

void eng_buf_deinit(eng_buf *b)
{
    free(b->ptr);
    b->ptr = NULL;
    b->len = b->cap = 0;
}

void eng_buf_reset(eng_buf *b)
{
    b->len = 0;
    if (b->ptr)
        b->ptr[0] = '\0';
}

static eng_rc buf_reserve(eng_buf *b, size_t extra)
{
    if (b->max && (extra > b->max || b->len > b->max - extra)) {
        eng_buf_deinit(b);
        return ENG_ETOOBIG;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return ENG_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    b->ptr = eng_xrealloc(b->ptr, cap);
    b->cap = cap;
    return ENG_OK;
}

eng_rc eng_buf_append(eng_buf *b, const void *data, size_t n)
{
    eng_rc rc = buf_reserve(b, n);
    if (rc != ENG_OK)
        return rc;
    if (n)
        memcpy(b->ptr + b->len, data, n);
    b->len += n;
    b->ptr[b->len] = '\0';
    return ENG_OK;
}

eng_rc eng_buf_appendf(eng_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return ENG_EINTERNAL;
    eng_rc rc = buf_reserve(b, (size_t)n);
    if (rc != ENG_OK)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->ptr + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return ENG_OK;
}

void eng_buf_consume(eng_buf *b, size_t n)
{
    if (n >= b->len) {
        eng_buf_reset(b);
        return;
    }
    memmove(b->ptr, b->ptr + n, b->len - n);
    b->len -= n;
    b->ptr[b->len] = '\0';
}

char *eng_buf_take(eng_buf *b, size_t *len)
{
    char *p = b->ptr ? b->ptr : eng_xstrdup("");
    if (len)
        *len = b->len;
    b->ptr = NULL;
    b->len = b->cap = 0;
    return p;
}
