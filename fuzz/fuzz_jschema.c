/* fuzz/fuzz_jschema.c: bytes -> a JSON array [schema, instance, ...] -> jschema_compile, then
 * jschema_validate of each instance. Must never crash, leak or recurse without bound; a refusal
 * must name where and why. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "engine/jschema.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *doc = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    if (!json_is_array(doc) || json_array_size(doc) == 0) {
        json_decref(doc);
        return 0;
    }
    jschema *s = NULL;
    eng_err err;
    eng_err_clear(&err);
    if (jschema_compile(json_array_get(doc, 0), "/s", &s, &err) != ENG_OK) {
        if (!err.msg[0] || strncmp(err.field, "/s", 2) != 0 || s)
            abort();
        json_decref(doc);
        return 0;
    }
    for (size_t i = 1; i < json_array_size(doc); i++) {
        eng_err_clear(&err);
        eng_rc rc = jschema_validate(s, json_array_get(doc, i), "/i", &err);
        if (rc != ENG_OK && (rc != ENG_EINVAL || !err.msg[0] || strncmp(err.field, "/i", 2) != 0))
            abort();
        /* a schema that accepts a value accepts an equal one */
        json_t *copy = json_deep_copy(json_array_get(doc, i));
        if ((jschema_validate(s, copy, "", NULL) == ENG_OK) != (rc == ENG_OK))
            abort();
        json_decref(copy);
    }
    jschema_free(s);
    json_decref(doc);
    return 0;
}
