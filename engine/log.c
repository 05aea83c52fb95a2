/* engine/log.c: logfmt lines on stderr (see log.h).
 *
 * A value is written bare when it is printable ASCII without '=', '"' or '\\', else quoted with
 * JSON's escapes (\" \\ \n \r \t \u00XX); bytes that are not UTF-8 become \ufffd. A line holds at
 * most LOG_LINE_MAX bytes: a value cut to fit ends in "..." inside its quotes, fields that no
 * longer fit are left out and counted in `dropped=N`, so every line stays parseable. */
#include "engine/log.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096 /* one write(2) below PIPE_BUF: lines of two threads never mix */
#define LOG_TAIL     24   /* kept free for " dropped=N" and the newline */

eng_log_level eng_log_threshold = LOG_INFO;

static const char *const log_names[] = {"error", "warn", "info", "debug"};

static _Thread_local char log_req[72]; /* the request this thread serves, "" when none */

static pthread_once_t log_file_once = PTHREAD_ONCE_INIT;
static int log_file_fd = -1;

void eng_log_init(void)
{
    const char *v = getenv("FLOWD_LOG_LEVEL");
    if (!v)
        return;
    for (size_t i = 0; i < ENG_ARRAY_LEN(log_names); i++)
        if (strcmp(v, log_names[i]) == 0)
            eng_log_threshold = (eng_log_level)i;
}

static void log_file_open(void)
{
    const char *path = getenv("FLOWD_LOG_FILE");
    if (path && *path)
        log_file_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

void eng_log_request_set(const char *id)
{
    snprintf(log_req, sizeof log_req, "%s", id ? id : "");
}

const char *eng_log_request(void)
{
    return log_req[0] ? log_req : NULL;
}

/* A line under construction: len never passes cap. */
typedef struct log_line {
    char *p;
    size_t len, cap;
} log_line;

static bool put(log_line *l, const char *s, size_t n)
{
    if (l->len + n > l->cap)
        return false;
    memcpy(l->p + l->len, s, n);
    l->len += n;
    return true;
}

/* Length of the UTF-8 sequence starting at s (at most n bytes), or 0 when it is not valid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    unsigned min;
    unsigned cp;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2, min = 0x80, cp = s[0] & 0x1fu;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3, min = 0x800, cp = s[0] & 0x0fu;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4, min = 0x10000, cp = s[0] & 0x07u;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static bool bare_ok(const char *s)
{
    if (!*s)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= ' ' || *p >= 0x7f || *p == '=' || *p == '"' || *p == '\\')
            return false;
    return true;
}

/* Appends s as a logfmt value, leaving at least keep bytes of l free; a value that does not fit is
 * cut and ends in "...". Returns false when not even a cut value fits. */
static bool put_value(log_line *l, const char *s, size_t keep)
{
    if (l->len + keep > l->cap)
        return false;
    log_line room = {.p = l->p, .len = l->len, .cap = l->cap - keep};
    size_t n = strlen(s);
    if (bare_ok(s) && put(&room, s, n)) {
        l->len = room.len;
        return true;
    }
    if (room.len + 6 > room.cap) /* "x..." at the least */
        return false;
    room.cap -= 4; /* the closing quote and "..." stay possible */
    put(&room, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        char esc[8];
        const char *out = esc;
        size_t outn = 2, step = 1;
        unsigned char c = p[i];
        esc[0] = '\\';
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
        } else if (c == '\n') {
            esc[1] = 'n';
        } else if (c == '\r') {
            esc[1] = 'r';
        } else if (c == '\t') {
            esc[1] = 't';
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            outn = 6;
        } else if (c < 0x80) {
            out = s + i;
            outn = 1;
        } else if ((step = utf8_len(p + i, n - i)) != 0) {
            out = s + i;
            outn = step;
        } else {
            out = "\\ufffd";
            outn = 6;
            step = 1;
        }
        if (!put(&room, out, outn))
            break;
        i += step;
    }
    room.cap += 4;
    if (i < n)
        put(&room, "...", 3);
    put(&room, "\"", 1);
    l->len = room.len;
    return true;
}

/* Appends " key=value"; false (and nothing appended) when it does not fit. */
static bool put_field(log_line *l, const char *key, const char *value)
{
    size_t mark = l->len;
    if (put(l, " ", 1) && put(l, key, strlen(key)) && put(l, "=", 1) &&
        put_value(l, value, LOG_TAIL))
        return true;
    l->len = mark;
    return false;
}

size_t eng_log_format(char *out, size_t cap, eng_log_level lvl, const char *msg,
                      const eng_log_field *fields, size_t n)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    log_line l = {.p = out, .len = 0, .cap = cap};
    char head[64];
    int hn = snprintf(head, sizeof head, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ lvl=%s",
                      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                      tm.tm_sec, (long)(tv.tv_usec / 1000), log_names[lvl]);
    if (hn < 0 || !put(&l, head, (size_t)hn))
        return 0;
    size_t dropped = 0;
    if (!put_field(&l, "msg", msg ? msg : ""))
        dropped++;
    if (log_req[0] && !put_field(&l, "req", log_req))
        dropped++;
    for (size_t i = 0; i < n; i++) {
        char num[40];
        const char *v = num;
        if (fields[i].type == ENG_LOG_STR)
            v = fields[i].s ? fields[i].s : "";
        else if (fields[i].type == ENG_LOG_INT)
            snprintf(num, sizeof num, "%lld", fields[i].i);
        else
            snprintf(num, sizeof num, "%.6g", fields[i].d);
        if (!put_field(&l, fields[i].key, v))
            dropped++;
    }
    if (dropped) {
        l.cap = cap;
        char tail[LOG_TAIL];
        int tn = snprintf(tail, sizeof tail, " dropped=%zu", dropped);
        put(&l, tail, (size_t)tn);
    }
    return l.len;
}

void eng_log_write(eng_log_level lvl, const char *msg, const eng_log_field *fields, size_t n)
{
    char line[LOG_LINE_MAX];
    size_t len = eng_log_format(line, sizeof line - 1, lvl, msg, fields, n);
    line[len++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, len);
    (void)ignored;
    pthread_once(&log_file_once, log_file_open);
    if (log_file_fd >= 0) {
        ignored = write(log_file_fd, line, len);
        (void)ignored;
    }
}
