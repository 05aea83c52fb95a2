/* engine/log.h: one logfmt line per event on stderr.
 *
 *   ts=2026-11-22T10:00:00.123Z lvl=warn run=42 step=send msg="step failed, retrying" attempt=3
 *
 * Callers pass extra key=value pairs inside the format after the message. Lines are written with a
 * single write(2), so threads never interleave. Never log conninfo passwords, Authorization
 * headers or API keys. Level comes from FLOWD_LOG_LEVEL (error|warn|info|debug), default info. */
#pragma once

#include "engine/err.h"

typedef enum { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG } eng_log_level;

extern eng_log_level eng_log_threshold;

/* Reads FLOWD_LOG_LEVEL. Safe to call more than once. */
void eng_log_init(void);

/* msg is quoted; fmt/... append raw " key=value" pairs (may be NULL). */
void eng_log_write(eng_log_level lvl, const char *msg, const char *fmt, ...) ENG_PRINTF(3, 4);

#define eng_log(lvl, msg, ...)                                                                     \
    do {                                                                                           \
        if ((lvl) <= eng_log_threshold)                                                            \
            eng_log_write((lvl), (msg), __VA_ARGS__);                                              \
    } while (0)
#define log_error(msg, ...) eng_log(LOG_ERROR, msg, __VA_ARGS__)
#define log_warn(msg, ...) eng_log(LOG_WARN, msg, __VA_ARGS__)
#define log_info(msg, ...) eng_log(LOG_INFO, msg, __VA_ARGS__)
#define log_debug(msg, ...) eng_log(LOG_DEBUG, msg, __VA_ARGS__)
