/* engine/sse.c: a reader of Server-Sent Events (see sse.h). */
#include "engine/sse.h"

#include <stdio.h>
#include <string.h>

bool eng_sse_next(const char **p, const char *end, char *name, size_t namelen, eng_buf *data)
{
    name[0] = '\0';
    eng_buf_reset(data);
    bool any = false;
    while (*p < end) {
        const char *nl = memchr(*p, '\n', (size_t)(end - *p));
        if (!nl)
            return false;
        size_t len = (size_t)(nl - *p);
        const char *line = *p;
        if (len > 0 && line[len - 1] == '\r')
            len--;
        *p = nl + 1;
        if (len == 0) {
            if (any)
                return true;
            continue;
        }
        if (line[0] == ':')
            continue;
        const char *colon = memchr(line, ':', len);
        size_t flen = colon ? (size_t)(colon - line) : len;
        const char *val = colon ? colon + 1 : line + len;
        size_t vlen = len - (size_t)(val - line);
        if (vlen > 0 && *val == ' ')
            val++, vlen--;
        if (flen == 5 && memcmp(line, "event", 5) == 0) {
            snprintf(name, namelen, "%.*s", (int)vlen, val);
            any = true;
        } else if (flen == 4 && memcmp(line, "data", 4) == 0) {
            if ((data->len > 0 && eng_buf_append(data, "\n", 1) != ENG_OK) ||
                eng_buf_append(data, val, vlen) != ENG_OK)
                return false;
            any = true;
        }
    }
    return false;
}
