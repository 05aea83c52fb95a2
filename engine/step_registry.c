/* engine/step_registry.c: the registry half of engine/step.h (eng_step_register,
 * eng_step_kind_find).
 *
 * A fixed array: there are about ten kinds, registration happens once at start-up before any worker
 * runs, and lookups afterwards only read, so no lock is needed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"
#include "engine/log.h"
#include "engine/step.h"

#define STEP_KINDS_MAX 32

static const eng_step_kind *step_kinds[STEP_KINDS_MAX];
static size_t step_kinds_n;

void eng_step_register(const eng_step_kind *kind)
{
    if (!kind || !kind->name)
        return;
    for (size_t i = 0; i < step_kinds_n; i++) {
        if (strcmp(step_kinds[i]->name, kind->name) == 0) {
            step_kinds[i] = kind;
            return;
        }
    }
    if (step_kinds_n == STEP_KINDS_MAX) {
        /* A build-time mistake (more kinds than slots), not a runtime condition. */
        log_error("too many step kinds", LOG_S("kind", kind->name), LOG_I("max", STEP_KINDS_MAX));
        abort();
    }
    step_kinds[step_kinds_n++] = kind;
}

const eng_step_kind *eng_step_kind_find(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < step_kinds_n; i++)
        if (strcmp(step_kinds[i]->name, name) == 0)
            return step_kinds[i];
    return NULL;
}

char *eng_step_pure_kinds(void)
{
    size_t len = 3;
    for (size_t i = 0; i < step_kinds_n; i++)
        if (step_kinds[i]->pure)
            len += strlen(step_kinds[i]->name) + 3;
    char *out = eng_xmalloc(len), *p = out;
    *p++ = '{';
    for (size_t i = 0; i < step_kinds_n; i++) {
        /* the names are the registering code's constants (plain words), quoted all the same */
        if (!step_kinds[i]->pure || strpbrk(step_kinds[i]->name, "\\\""))
            continue;
        p += sprintf(p, "%s\"%s\"", p - out > 1 ? "," : "", step_kinds[i]->name);
    }
    *p++ = '}';
    *p = '\0';
    return out;
}
