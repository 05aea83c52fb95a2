/* engine/netaddr.c: public-address test for outbound calls (see netaddr.h). */
#include "engine/netaddr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "engine/err.h"

typedef struct range4 {
    uint32_t net;
    int bits;
    const char *why;
} range4;

/* IANA's special-purpose IPv4 registry, less the few globally reachable entries. */
static const range4 v4_ranges[] = {
    {0x00000000, 8, "unspecified"},   {0x0a000000, 8, "private"},
    {0x64400000, 10, "shared"},       {0x7f000000, 8, "loopback"},
    {0xa9fe0000, 16, "link-local"},   {0xac100000, 12, "private"},
    {0xc0000000, 24, "reserved"},     {0xc0000200, 24, "documentation"},
    {0xc0a80000, 16, "private"},      {0xc6120000, 15, "benchmarking"},
    {0xc6336400, 24, "documentation"}, {0xcb007100, 24, "documentation"},
    {0xe0000000, 4, "multicast"},     {0xf0000000, 4, "reserved"},
};

static bool v4_public(uint32_t a, const char **why)
{
    for (size_t i = 0; i < ENG_ARRAY_LEN(v4_ranges); i++) {
        uint32_t mask = 0xffffffffu << (32 - v4_ranges[i].bits);
        if ((a & mask) == v4_ranges[i].net) {
            if (why)
                *why = v4_ranges[i].why;
            return false;
        }
    }
    return true;
}

static uint32_t v4_at(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool v6_public(const uint8_t a[16], const char **why)
{
    static const uint8_t zero[12] = {0};
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    const char *r = NULL;
    if (memcmp(a, mapped, 12) == 0 || memcmp(a, nat64, 12) == 0)
        return v4_public(v4_at(a + 12), why);
    if (memcmp(a, zero, 12) == 0) /* ::, ::1 and the deprecated IPv4-compatible form */
        r = a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] == 1 ? "loopback" : "unspecified";
    else if ((a[0] & 0xfe) == 0xfc)
        r = "private";
    else if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
        r = "link-local";
    else if (a[0] == 0xfe && (a[1] & 0xc0) == 0xc0)
        r = "site-local";
    else if (a[0] == 0xff)
        r = "multicast";
    else if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0d && a[3] == 0xb8)
        r = "documentation";
    else if (a[0] == 0x01 && a[1] == 0 && a[2] == 0 && a[3] == 0 && a[4] == 0 && a[5] == 0 &&
             a[6] == 0 && a[7] == 0)
        r = "discard";
    if (why && r)
        *why = r;
    return r == NULL;
}

bool eng_addr_is_public(const struct sockaddr *sa, const char **why)
{
    if (sa && sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;
        return v4_public(ntohl(s4->sin_addr.s_addr), why);
    }
    if (sa && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
        return v6_public(s6->sin6_addr.s6_addr, why);
    }
    if (why)
        *why = "not an internet address";
    return false;
}

bool eng_addr_text_is_public(const char *ip, const char **why)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (ip && inet_pton(AF_INET, ip, &a4) == 1)
        return v4_public(ntohl(a4.s_addr), why);
    if (ip && inet_pton(AF_INET6, ip, &a6) == 1)
        return v6_public(a6.s6_addr, why);
    if (why)
        *why = "not an internet address";
    return false;
}
