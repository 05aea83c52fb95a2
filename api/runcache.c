/* api/runcache.c: see runcache.h. */
#include <stdlib.h>
#include <string.h>

#include "api/runcache.h"
#include "engine/mem.h"

typedef struct runcache_entry {
    long long tenant;
    long long run;    /* 0: empty */
    char *token;
    char *json;
    size_t len;
} runcache_entry;

struct api_runcache {
    runcache_entry slots[API_RUNCACHE_SLOTS];
};

api_runcache *api_runcache_new(void)
{
    return eng_xcalloc(1, sizeof(api_runcache));
}

static void entry_clear(runcache_entry *e)
{
    free(e->token);
    free(e->json);
    *e = (runcache_entry){0};
}

void api_runcache_free(api_runcache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < API_RUNCACHE_SLOTS; i++)
        entry_clear(&c->slots[i]);
    free(c);
}

static runcache_entry *entry_of(const api_runcache *c, long long run)
{
    return (runcache_entry *)&c->slots[(unsigned long long)run % API_RUNCACHE_SLOTS];
}

static const runcache_entry *entry_find(const api_runcache *c, long long tenant, long long run)
{
    const runcache_entry *e = entry_of(c, run);
    return e->run == run && e->tenant == tenant ? e : NULL;
}

const char *api_runcache_token(const api_runcache *c, long long tenant, long long run)
{
    const runcache_entry *e = entry_find(c, tenant, run);
    return e ? e->token : NULL;
}

const char *api_runcache_json(const api_runcache *c, long long tenant, long long run,
                              const char *token, size_t *len)
{
    const runcache_entry *e = entry_find(c, tenant, run);
    if (!e || !token || strcmp(e->token, token) != 0)
        return NULL;
    *len = e->len;
    return e->json;
}

void api_runcache_put(api_runcache *c, long long tenant, long long run, const char *token,
                      const char *json, size_t len)
{
    runcache_entry *e = entry_of(c, run);
    entry_clear(e);
    if (!token || len > API_RUNCACHE_MAX_JSON)
        return;
    e->tenant = tenant;
    e->run = run;
    e->token = eng_xstrdup(token);
    e->json = eng_xstrndup(json, len);
    e->len = len;
}
