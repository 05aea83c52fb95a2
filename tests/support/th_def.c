/* tests/support/th_def.c: definition checks shared by the step-kind tests. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include "engine/mem.h"
#include "engine/wf_def.h"
#include "tests/support/th.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

void th_expect_step_invalid(const char *kind, const char *input, const char *field)
{
    char *src = eng_xasprintf("{\"name\": \"v\", \"steps\": [{\"key\": \"a\", \"kind\": \"%s\","
                              " \"input\": %s}]}",
                              kind, input);
    json_t *doc = json_loads(src, 0, NULL);
    assert_non_null(doc);
    json_t *out = NULL;
    eng_err err;
    assert_int_equal(wf_def_compile(doc, &out, &err), ENG_EINVAL);
    if (strcmp(err.field, field) != 0)
        fail_msg("%s input %s: field %s (%s), expected %s", kind, input, err.field, err.msg, field);
    json_decref(doc);
    free(src);
}
