/* engine/buf.h: a growable byte buffer with a hard cap (curl's dynbuf idea).
 *
 * Embedded by its owner (value type: _init/_deinit). Going over the cap frees the contents and
 * returns ENG_ETOOBIG, so a peer can never make us hold more than the cap. The contents are always
 * NUL-terminated (the terminator is not counted in len). */
#pragma once

#include <stddef.h>

#include "engine/err.h"

typedef struct eng_buf {
    char *ptr;  /* contents, NULL until the first append */
    size_t len; /* bytes used */
    size_t cap; /* bytes allocated */
    size_t max; /* hard cap on len; 0 means unlimited */
} eng_buf;

void eng_buf_init(eng_buf *b, size_t max);
void eng_buf_deinit(eng_buf *b);
/* Empties the buffer but keeps its allocation. */
void eng_buf_reset(eng_buf *b);
ENG_MUST_CHECK eng_rc eng_buf_append(eng_buf *b, const void *data, size_t n);
ENG_MUST_CHECK eng_rc eng_buf_appendf(eng_buf *b, const char *fmt, ...) ENG_PRINTF(2, 3);
/* Drops the first n bytes (consumed input). */
void eng_buf_consume(eng_buf *b, size_t n);
/* Hands the contents to the caller (free() them) and empties the buffer. Never NULL. */
char *eng_buf_take(eng_buf *b, size_t *len);
