/* api/console.h: the browser console's files, embedded in the binary at build time from console/
 * (cmake/embed_console.cmake), and served by flowd serve at / and /console/NAME
 * (api/routes_console.c). */
#pragma once

#include <stddef.h>

typedef struct api_console_file {
    const char *name;         /* "app.js": the file's name in console/ */
    const char *content_type; /* its media type, with the charset for text */
    const char *data;         /* its bytes (and a NUL after them) */
    size_t len;
} api_console_file;

/* The embedded files (static storage), sorted by name; *count receives how many. */
const api_console_file *api_console_files(size_t *count);
