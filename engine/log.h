/* engine/log.h: one logfmt line per event on stderr.
 *
 *   ts=2026-11-22T10:00:00.123Z lvl=warn msg="step failed, retrying" run=42 step=send attempt=3
 *
 * Callers pass the message and typed key/value fields; the logger alone writes keys, quotes and
 * escapes values (a value can never end its quotes early or start a key of its own, whatever a
 * provider or client put in it), and writes each key once. On a loop thread that serves an HTTP
 * request, eng_log_request_set() names the request: every line written until it is cleared carries
 * `req=<id>`. Lines are written with a single write(2), so threads never interleave. Never log
 * conninfo passwords, Authorization headers or API keys.
 *
 *   log_warn("database connection lost", LOG_S("app", name), LOG_S("reason", why));
 *   log_info("stopped");
 *
 * Environment: FLOWD_LOG_LEVEL (error|warn|info|debug, default info); FLOWD_LOG_FILE, a file every
 * line is also appended to (opened on the first line written). */
#pragma once

#include <stddef.h>

#include "engine/err.h"

typedef enum { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG } eng_log_level;

extern eng_log_level eng_log_threshold;

/* One key/value field. Keys are fixed words of ours ([a-z0-9_.]); values are anything. */
typedef struct eng_log_field {
    const char *key; /* NULL ends the list (LOG_END_) */
    enum { ENG_LOG_STR, ENG_LOG_INT, ENG_LOG_DBL } type;
    const char *s; /* ENG_LOG_STR; NULL is written as "" */
    long long i;   /* ENG_LOG_INT */
    double d;      /* ENG_LOG_DBL, written with %.6g */
} eng_log_field;

#define LOG_S(k, v) ((eng_log_field){.key = (k), .type = ENG_LOG_STR, .s = (v)})
#define LOG_I(k, v) ((eng_log_field){.key = (k), .type = ENG_LOG_INT, .i = (long long)(v)})
#define LOG_F(k, v) ((eng_log_field){.key = (k), .type = ENG_LOG_DBL, .d = (double)(v)})
#define LOG_END_    ((eng_log_field){.key = NULL})

/* Reads FLOWD_LOG_LEVEL. Safe to call more than once. */
void eng_log_init(void);

/* Writes one line: ts, lvl, msg, req (when set on this thread), then fields[0..n). */
void eng_log_write(eng_log_level lvl, const char *msg, const eng_log_field *fields, size_t n);

/* Names the request this thread is serving (copied; NULL or "" clears). */
void eng_log_request_set(const char *id);
/* The request this thread is serving, or NULL. */
const char *eng_log_request(void);

/* Formats one line as eng_log_write would (without the trailing newline) into out, for tests;
 * returns the line's length. */
size_t eng_log_format(char *out, size_t cap, eng_log_level lvl, const char *msg,
                      const eng_log_field *fields, size_t n);

#define ENG_LOG_MSG_(msg, ...)    msg
#define ENG_LOG_FIELDS_(msg, ...) __VA_ARGS__
/* eng_log(lvl, msg, fields...): fields are evaluated only when the level is enabled. */
#define eng_log(lvl, ...)                                                                          \
    do {                                                                                           \
        if ((lvl) <= eng_log_threshold) {                                                          \
            const eng_log_field eng_log_f_[] = {ENG_LOG_FIELDS_(__VA_ARGS__, LOG_END_)};           \
            eng_log_write((lvl), ENG_LOG_MSG_(__VA_ARGS__, 0), eng_log_f_,                         \
                          ENG_ARRAY_LEN(eng_log_f_) - 1);                                          \
        }                                                                                          \
    } while (0)
#define log_error(...) eng_log(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  eng_log(LOG_WARN, __VA_ARGS__)
#define log_info(...)  eng_log(LOG_INFO, __VA_ARGS__)
#define log_debug(...) eng_log(LOG_DEBUG, __VA_ARGS__)
