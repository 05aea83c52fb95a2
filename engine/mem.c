/* engine/mem.c: aborting allocators (see mem.h). */
#include "engine/mem.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void mem_oom(size_t n)
{
    fprintf(stderr, "lvl=fatal msg=\"out of memory\" bytes=%zu\n", n);
    abort();
}

void *eng_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        mem_oom(n);
    return p;
}

void *eng_xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        mem_oom(count * size);
    return p;
}

void *eng_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        mem_oom(n);
    return q;
}

char *eng_xstrdup(const char *s)
{
    return eng_xstrndup(s, strlen(s));
}

char *eng_xstrndup(const char *s, size_t n)
{
    char *p = eng_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *eng_xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = NULL;
    int n = vasprintf(&out, fmt, ap);
    va_end(ap);
    if (n < 0)
        mem_oom(0);
    return out;
}

static void *mem_json_malloc(size_t n)
{
    return eng_xmalloc(n);
}

void eng_mem_init(void)
{
    json_set_alloc_funcs(mem_json_malloc, free);
}
