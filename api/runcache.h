/* api/runcache.h: the run JSON that GET /v1/runs/{id} last answered, kept per API loop so that a
 * poll of an unchanged run costs PostgreSQL a cheap version check instead of building the JSON.
 *
 * An entry is the JSON text of (tenant, run) with the version token it was read with (see
 * routes_runs.c: the token changes whenever any row the JSON is built from changes). The cache
 * only remembers; every answer is validated against the database's current token first, so an
 * entry is never served after a change committed. Direct-mapped by run id: a colliding run
 * replaces the entry. Loop-thread only (one cache per loop, no locking). */
#pragma once

#include <stddef.h>

typedef struct api_runcache api_runcache;

#define API_RUNCACHE_SLOTS    1024        /* entries per loop */
#define API_RUNCACHE_MAX_JSON (16 * 1024) /* bigger runs are not kept: at most 16 MiB a loop */

api_runcache *api_runcache_new(void);
/* NULL-safe. */
void api_runcache_free(api_runcache *c);

/* The token of the entry of (tenant, run), or NULL; borrowed until the next put. */
const char *api_runcache_token(const api_runcache *c, long long tenant, long long run);
/* The JSON of (tenant, run) when its entry carries exactly token, else NULL; borrowed until the
 * next put. */
const char *api_runcache_json(const api_runcache *c, long long tenant, long long run,
                              const char *token, size_t *len);
/* Keeps a copy of json under token, replacing whatever the slot held; a NULL token or a json
 * longer than API_RUNCACHE_MAX_JSON only empties the slot. */
void api_runcache_put(api_runcache *c, long long tenant, long long run, const char *token,
                      const char *json, size_t len);
