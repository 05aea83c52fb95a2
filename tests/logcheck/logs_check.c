/* tests/logcheck/logs_check.c: the last test of the suite. Every test binary, and every flowd it
 * starts, also appends its log lines to FLOWD_LOG_FILE (one file per test in the folder given);
 * this parses every line with the strict logfmt parser and fails on the first one it cannot read.
 * Prints "N passed, N failed" over the files. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "tests/support/th_logfmt.h"

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0, got;
    do {
        if (n == cap)
            buf = eng_xrealloc(buf, cap = cap ? cap * 2 : 65536);
        got = fread(buf + n, 1, cap - n, f);
        n += got;
    } while (got > 0);
    fclose(f);
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: logs_check DIR\n");
        return 2;
    }
    eng_mem_init();
    struct dirent **names = NULL;
    int n = scandir(argv[1], &names, NULL, alphasort);
    if (n < 0) {
        perror(argv[1]);
        return 1;
    }
    int passed = 0, failed = 0;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        size_t nl = strlen(name);
        if (nl > 4 && strcmp(name + nl - 4, ".log") == 0) {
            char *path = eng_xasprintf("%s/%s", argv[1], name);
            size_t len = 0, lines = 0;
            char *text = slurp(path, &len);
            char *err = text ? th_logfmt_check(text, len, &lines) : eng_xstrdup("cannot read");
            if (err) {
                printf("%s: %s\n", path, err);
                failed++;
            } else {
                passed++;
                total += lines;
            }
            free(err);
            free(text);
            free(path);
        }
        free(names[i]);
    }
    free(names);
    printf("%zu log lines of %d test logs parsed strictly\n", total, passed + failed);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
