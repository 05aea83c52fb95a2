/* fuzz/fuzz_wf_template.c: bytes -> template string (and, when they parse, a JSON template) ->
 * wf_template_refs and wf_template_render against a fixed context. Must never crash or leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "engine/wf_template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static eng_rc count_ref(void *arg, const char *path, const char *ptr, eng_err *err)
{
    (void)err;
    if (!wf_path_valid(path, strlen(path)) || !ptr)
        abort(); /* refs must only report paths the grammar accepts */
    (*(size_t *)arg)++;
    return ENG_OK;
}

static void exercise(const json_t *tmpl, const json_t *ctx)
{
    size_t refs = 0;
    eng_err err;
    eng_rc rrc = wf_template_refs(tmpl, "/t", count_ref, &refs, &err);
    json_t *out = NULL;
    eng_rc rc = wf_template_render(tmpl, ctx, &out, &err);
    if (rc == ENG_OK) {
        if (!out || rrc != ENG_OK)
            abort(); /* a template that renders must also pass the syntax walk */
        json_decref(out);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static json_t *ctx;
    if (!ctx)
        ctx = json_loads(
            "{\"input\": {\"a\": {\"b\": [1, \"two\", {\"c\": null}]}, \"s\": \"x\","
            " \"n\": 1.5, \"t\": true}, \"steps\": {\"k\": {\"output\": {\"v\": [\"w\"]}}},"
            " \"run\": {\"id\": 7}, \"item\": {\"e\": \"i\"}, \"index\": 2}",
            0, NULL);
    json_t *str = json_stringn((const char *)data, size);
    if (str) {
        exercise(str, ctx);
        json_decref(str);
    }
    json_t *doc = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    if (doc) {
        exercise(doc, ctx);
        json_decref(doc);
    }
    return 0;
}
