/* engine/netaddr.h: which IP addresses an outbound call may reach when a tenant chose the target.
 *
 * "Public" means routable on the internet: not loopback, private (RFC 1918, IPv6 unique-local),
 * shared (CGNAT 100.64/10), link-local (which holds the clouds' metadata services, 169.254.169.254
 * and fd00:ec2::254 being unique-local), unspecified, multicast, broadcast, documentation or
 * benchmarking ranges, nor an IPv6 form (IPv4-mapped, -compatible, NAT64) of any of those. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct sockaddr;

/* True when sa (AF_INET or AF_INET6; other families are not public) is a public address. When it
 * is not, why (may be NULL) gets a short reason ("loopback", "private", ...). */
bool eng_addr_is_public(const struct sockaddr *sa, const char **why);
/* The same for a numeric address in text ("10.0.0.1", "::1"); text that is no address is not
 * public. */
bool eng_addr_text_is_public(const char *ip, const char **why);
