/* fuzz/fuzz_wf_cond.c: bytes -> wf_cond_parse -> wf_cond_eval and wf_cond_refs against a fixed
 * context. Must never crash or leak; parse failures must say why. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "engine/mem.h"
#include "engine/wf_cond.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static eng_rc check_ref(void *arg, const char *path, const char *ptr, eng_err *err)
{
    (void)arg;
    (void)err;
    if (!wf_path_valid(path, strlen(path)) || strcmp(ptr, "/when") != 0)
        abort();
    return ENG_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static json_t *ctx;
    if (!ctx)
        ctx = json_loads(
            "{\"input\": {\"a\": {\"b\": [1, \"two\", {\"c\": null}]}, \"s\": \"x\","
            " \"n\": 1.5, \"t\": true, \"z\": 0}, \"steps\": {\"k\": {\"output\":"
            " {\"timed_out\": true}}}, \"run\": {\"id\": 7}, \"item\": \"i\", \"index\": 2}",
            0, NULL);
    char *src =
        eng_xstrndup((const char *)data, size); /* stops at an embedded NUL, like C callers */
    wf_cond *c = NULL;
    eng_err err;
    eng_err_clear(&err);
    if (wf_cond_parse(src, &c, &err) == ENG_OK) {
        bool r;
        if (wf_cond_eval(c, ctx, &r, &err) != ENG_OK)
            abort();
        if (wf_cond_refs(c, check_ref, NULL, "/when", &err) != ENG_OK)
            abort();
        wf_cond_free(c);
    } else if (!err.msg[0]) {
        abort();
    }
    free(src);
    return 0;
}
