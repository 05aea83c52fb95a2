/* fuzz/fuzz_wf_def.c: bytes -> JSON -> wf_def_compile (and the digest). Must never crash or leak;
 * a compiled definition must be well-formed enough that its own digest and shape hold. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "engine/step.h"
#include "engine/wf_def.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const eng_step_kind fuzz_kinds[] = {
    {.name = "transform", .default_max_attempts = 1},  {.name = "delay", .default_max_attempts = 1},
    {.name = "wait_event", .default_max_attempts = 1}, {.name = "map", .default_max_attempts = 1},
    {.name = "llm", .default_max_attempts = 5},        {.name = "http", .default_max_attempts = 3},
    {.name = "email", .default_max_attempts = 4},      {.name = "sms", .default_max_attempts = 4},
    {.name = "whatsapp", .default_max_attempts = 4},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int registered;
    if (!registered) {
        for (size_t i = 0; i < sizeof fuzz_kinds / sizeof fuzz_kinds[0]; i++)
            eng_step_register(&fuzz_kinds[i]);
        registered = 1;
    }
    json_t *doc = json_loadb((const char *)data, size, 0, NULL);
    if (!doc)
        return 0;
    json_t *out = NULL;
    eng_err err;
    if (wf_def_compile(doc, &out, &err) == ENG_OK) {
        json_t *steps = json_object_get(out, "steps");
        if (!json_is_array(steps) || json_array_size(steps) == 0)
            abort();
        char *d = wf_def_digest(out);
        if (!d || strlen(d) != 64)
            abort();
        free(d);
        json_decref(out);
    } else if (err.rc == ENG_OK || !err.msg[0]) {
        abort(); /* every refusal must say why */
    }
    json_decref(doc);
    return 0;
}
