/* tests/unit/test_netaddr.c: which addresses count as public (engine/netaddr.h). */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "engine/err.h"
#include "engine/netaddr.h"

static void test_text(void **state)
{
    (void)state;
    static const struct {
        const char *ip;
        const char *why; /* NULL: public */
    } cases[] = {
        {"8.8.8.8", NULL},
        {"1.1.1.1", NULL},
        {"100.63.255.255", NULL},
        {"172.32.0.1", NULL},
        {"2606:4700::1111", NULL},
        {"127.0.0.1", "loopback"},
        {"127.255.0.9", "loopback"},
        {"0.0.0.0", "unspecified"},
        {"10.1.2.3", "private"},
        {"172.16.0.1", "private"},
        {"172.31.255.255", "private"},
        {"192.168.1.1", "private"},
        {"100.64.0.1", "shared"},
        {"169.254.169.254", "link-local"}, /* cloud metadata */
        {"224.0.0.1", "multicast"},
        {"255.255.255.255", "reserved"},
        {"198.18.0.1", "benchmarking"},
        {"::1", "loopback"},
        {"::", "unspecified"},
        {"fe80::1", "link-local"},
        {"fd00:ec2::254", "private"}, /* AWS metadata over IPv6 */
        {"fc00::1", "private"},
        {"ff02::1", "multicast"},
        {"::ffff:127.0.0.1", "loopback"},
        {"::ffff:10.0.0.1", "private"},
        {"64:ff9b::a9fe:a9fe", "link-local"}, /* NAT64 of 169.254.169.254 */
        {"2001:db8::1", "documentation"},
        {"localhost", "not an internet address"},
    };
    for (size_t i = 0; i < ENG_ARRAY_LEN(cases); i++) {
        const char *why = NULL;
        bool pub = eng_addr_text_is_public(cases[i].ip, &why);
        if (pub != (cases[i].why == NULL) || (!pub && strcmp(why, cases[i].why) != 0))
            fail_msg("%s: public=%d why=%s", cases[i].ip, pub, why ? why : "-");
    }
}

static void test_sockaddr(void **state)
{
    (void)state;
    struct sockaddr_in s4 = {.sin_family = AF_INET};
    inet_pton(AF_INET, "10.0.0.1", &s4.sin_addr);
    assert_false(eng_addr_is_public((struct sockaddr *)&s4, NULL));
    inet_pton(AF_INET, "93.184.216.34", &s4.sin_addr);
    assert_true(eng_addr_is_public((struct sockaddr *)&s4, NULL));
    struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "::ffff:169.254.169.254", &s6.sin6_addr);
    const char *why = NULL;
    assert_false(eng_addr_is_public((struct sockaddr *)&s6, &why));
    assert_string_equal(why, "link-local");
    struct sockaddr un = {.sa_family = AF_UNIX};
    assert_false(eng_addr_is_public(&un, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text),
        cmocka_unit_test(test_sockaddr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
