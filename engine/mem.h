/* engine/mem.h: allocation that never returns NULL (out of memory aborts, as in Redis and jq).
 *
 * eng_mem_init() routes jansson through these too, so a NULL from jansson always means bad input. */
#pragma once

#include <stddef.h>

void *eng_xmalloc(size_t n);
void *eng_xcalloc(size_t count, size_t size);
void *eng_xrealloc(void *p, size_t n);
char *eng_xstrdup(const char *s);
char *eng_xstrndup(const char *s, size_t n);
/* printf into a new string the caller frees */
char *eng_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Installs the allocators into jansson. Call once at start, before any json_* call. */
void eng_mem_init(void);
