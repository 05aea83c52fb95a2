/* tests/unit/test_rand.c: engine/rand.c, the one generator of secrets and API keys. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <string.h>

#include "engine/rand.h"

static void test_api_key_format(void **state)
{
    (void)state;
    char a[ENG_API_KEY_SIZE], b[ENG_API_KEY_SIZE];
    assert_int_equal(eng_rand_api_key(a, NULL), ENG_OK);
    assert_int_equal(eng_rand_api_key(b, NULL), ENG_OK);
    assert_int_equal(strlen(a), 43);
    assert_memory_equal(a, "fd_", 3);
    assert_int_equal(strspn(a + 3, "0123456789abcdef"), 40);
    assert_string_not_equal(a, b);
}

/* More than getrandom hands out in one piece (256 bytes) still fills the whole buffer. */
static void test_bytes_fill_large_buffers(void **state)
{
    (void)state;
    static unsigned char buf[1 << 20];
    memset(buf, 0, sizeof buf);
    assert_int_equal(eng_rand_bytes(buf, sizeof buf, NULL), ENG_OK);
    size_t zero_tail = 0; /* a short fill would leave the end zeroed */
    for (size_t i = sizeof buf; i > 0 && buf[i - 1] == 0; i--)
        zero_tail++;
    assert_true(zero_tail < 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_api_key_format),
        cmocka_unit_test(test_bytes_fill_large_buffers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
