/* tests/support/th_logfmt.h: a strict logfmt parser for the tests that read flowd's logs.
 *
 * Stricter than go-logfmt on purpose, so that anything it accepts every logfmt reader accepts:
 *   line   = pair *(" " pair)                 one space between pairs, none around the line
 *   pair   = key "=" value                    no bare keys
 *   key    = [a-z] *[a-z0-9_.]
 *   value  = 1*bare / quoted                  bare: printable ASCII but '=', '"', '\'
 *   quoted = '"' *(char / escape) '"'          char: UTF-8, no control byte, no '"' or '\'
 *   escape = \" \\ \/ \b \f \n \r \t \uXXXX    (JSON's, surrogate pairs included)
 * and flowd's own rules: no key twice on a line; the line starts with ts (RFC 3339, UTC, in
 * milliseconds), lvl (error, warn, info or debug) and msg. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define TH_LOGFMT_MAX_PAIRS 64

typedef struct th_logfmt_pair {
    char *key;   /* decoded, NUL-terminated (owned) */
    char *value; /* decoded, NUL-terminated (owned) */
} th_logfmt_pair;

typedef struct th_logfmt_line {
    size_t n;
    th_logfmt_pair pairs[TH_LOGFMT_MAX_PAIRS];
} th_logfmt_line;

/* Parses one line (len bytes, no newline). Returns true and fills out (free it with
 * th_logfmt_line_free), or false with a reason naming the byte offset in why. */
bool th_logfmt_parse(const char *line, size_t len, th_logfmt_line *out, char *why, size_t whylen);
void th_logfmt_line_free(th_logfmt_line *l);
/* The decoded value of key, or NULL. */
const char *th_logfmt_get(const th_logfmt_line *l, const char *key);

/* Parses every line of text (each ends with '\n'). Returns NULL when all parse, else a new message
 * naming the first bad line, its number and the reason (caller frees). *nlines gets the count. */
char *th_logfmt_check(const char *text, size_t len, size_t *nlines);
