/* tests/integration/test_exports.c: the sequencer CSV export shows text that a spreadsheet would
 * run as a formula (a prospect named "=HYPERLINK(...)") as text, with a leading apostrophe. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/th_api.h"

static const char *cell(const json_t *rows, size_t r, size_t c)
{
    return json_string_value(json_array_get(json_array_get(rows, r), c));
}

static void test_sequencer_csv_formulas(void **state)
{
    (void)state;
    th_api *a = th_api_start(&(th_api_opts){.prefix = "exports"});
    json_decref(th_api_json(
        a, 201, "PUT", "/v1/workflows/pb",
        "{\"steps\": [{\"key\": \"pb\", \"kind\": \"transform\", \"input\": {\"vendor\": "
        "\"@SUM(A1)\","
        " \"prospect\": \"=HYPERLINK(\\\"http://evil.test\\\",\\\"x\\\")\", \"playbook\": "
        "{\"personas\": [{\"persona\": \"+cmd\", \"sequence\": {\"touch_1\": {\"day\": \"-1\","
        " \"subject\": \"-2+3\", \"body\": \"\\t=1\"}}}]}}}]}"));
    long long run = th_api_start_run(a, "pb", "{}");
    json_decref(th_api_wait_run(a, run, 20, 30, NULL, NULL));
    char path[64];
    snprintf(path, sizeof path, "/v1/runs/%lld/sequencer.csv", run);
    long status = 0;
    char *csv = th_api_raw(a, "GET", path, NULL, &status);
    assert_int_equal(status, 200);
    json_t *rows = th_api_csv_parse(csv);
    assert_non_null(rows);
    assert_int_equal(json_array_size(rows), 2);
    assert_string_equal(cell(rows, 1, 0), "'@SUM(A1)");
    assert_string_equal(cell(rows, 1, 1), "'=HYPERLINK(\"http://evil.test\",\"x\")");
    assert_string_equal(cell(rows, 1, 2), "'+cmd");
    assert_string_equal(cell(rows, 1, 3), "'-1");
    assert_string_equal(cell(rows, 1, 4), "'-2+3");
    assert_string_equal(cell(rows, 1, 5), "'\t=1");
    json_decref(rows);
    free(csv);
    th_api_stop(a);
}

int main(void)
{
    th_api_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sequencer_csv_formulas),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
