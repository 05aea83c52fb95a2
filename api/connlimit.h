/* api/connlimit.h: connections per client address, shared by every loop of the API service.
 *
 * A flood of connections from a few addresses (slow clients holding each one open) must not use
 * up the process's descriptors, which the engine needs for its database and provider
 * connections. Each server counts its own connections against its max_conns (accepting pauses at
 * it); this limiter adds a cap per client address across all servers, so one address cannot take
 * every slot and starve the others. Thread-safe (one mutex). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct sockaddr;

typedef struct api_connlimit api_connlimit;

/* The address a connection was counted under (IPv4 in its IPv6-mapped form); opaque. */
typedef struct api_connlimit_key {
    uint8_t addr[16];
    bool counted; /* take succeeded: release must be called */
} api_connlimit_key;

/* per_addr <= 0: no cap (the limiter only counts). */
api_connlimit *api_connlimit_new(int per_addr);
void api_connlimit_free(api_connlimit *l); /* NULL-safe; every key must be released first */
/* Counts one connection from sa into key; false (nothing counted) when its address already holds
 * per_addr connections. Addresses that are not IP (unix sockets) are never capped. */
bool api_connlimit_take(api_connlimit *l, const struct sockaddr *sa, api_connlimit_key *key);
/* Gives back what take counted; no-op for a key that was not counted. */
void api_connlimit_release(api_connlimit *l, api_connlimit_key *key);
int api_connlimit_per_addr(const api_connlimit *l);
