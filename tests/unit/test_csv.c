/* tests/unit/test_csv.c: CSV fields of the exports: RFC 4180 quoting, and cells a spreadsheet would
 * run as a formula shown as text instead. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <string.h>

#include "api/csv.h"

static void expect_row(const char *const *cells, const char *want)
{
    eng_buf b;
    eng_buf_init(&b, 0);
    for (size_t i = 0; cells[i]; i++)
        assert_int_equal(api_csv_field(&b, cells[i], !cells[i + 1]), ENG_OK);
    assert_string_equal(b.ptr, want);
    eng_buf_deinit(&b);
}

static void test_quoting(void **state)
{
    (void)state;
    expect_row((const char *const[]){"a", "", "b c", NULL}, "a,,b c\r\n");
    expect_row((const char *const[]){"x,y", "say \"hi\"", "two\nlines", NULL},
               "\"x,y\",\"say \"\"hi\"\"\",\"two\nlines\"\r\n");
    expect_row((const char *const[]){"\"", NULL}, "\"\"\"\"\r\n");
}

static void test_formulas_are_text(void **state)
{
    (void)state;
    expect_row(
        (const char *const[]){"=HYPERLINK(\"http://x\",\"y\")", "+1", "-2+3", "@SUM(A1)", NULL},
        "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",'+1,'-2+3,'@SUM(A1)\r\n");
    expect_row((const char *const[]){"\tcmd", "\r=1", "a=1", " =1", NULL},
               "'\tcmd,\"'\r=1\",a=1, =1\r\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quoting),
        cmocka_unit_test(test_formulas_are_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
