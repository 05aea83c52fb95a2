/* engine/log.c: logfmt lines on stderr (see log.h). */
#include "engine/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

eng_log_level eng_log_threshold = LOG_INFO;

static const char *const log_names[] = {"error", "warn", "info", "debug"};

void eng_log_init(void)
{
    const char *v = getenv("FLOWD_LOG_LEVEL");
    if (!v)
        return;
    for (size_t i = 0; i < ENG_ARRAY_LEN(log_names); i++)
        if (strcmp(v, log_names[i]) == 0)
            eng_log_threshold = (eng_log_level)i;
}

/* Appends s to line as a logfmt quoted value, escaping quotes, backslashes and control bytes. */
static size_t log_quote(char *line, size_t off, size_t cap, const char *s)
{
    if (off < cap)
        line[off++] = '"';
    for (; *s && off + 2 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            line[off++] = '\\';
            line[off++] = (char)c;
        } else if (c < 0x20) {
            line[off++] = ' ';
        } else {
            line[off++] = (char)c;
        }
    }
    if (off < cap)
        line[off++] = '"';
    return off;
}

void eng_log_write(eng_log_level lvl, const char *msg, const char *fmt, ...)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t cap = sizeof line - 1;
    size_t off = (size_t)snprintf(line, cap, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ lvl=%s msg=",
                                  tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                                  tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000), log_names[lvl]);
    off = log_quote(line, off, cap, msg);
    if (fmt && off < cap) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(line + off, cap - off, fmt, ap);
        va_end(ap);
        if (n > 0)
            off += (size_t)n < cap - off ? (size_t)n : cap - off - 1;
    }
    line[off++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, off);
    (void)ignored;
}
