/* api/connlimit.c: per-address connection counts (see connlimit.h): a chained hash table whose
 * entries exist only while their address holds a connection. */
#include "api/connlimit.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "engine/mem.h"

#define NBUCKETS 4096

typedef struct entry {
    uint8_t addr[16];
    int n;
    struct entry *next;
} entry;

struct api_connlimit {
    pthread_mutex_t mu;
    int per_addr;
    entry *buckets[NBUCKETS];
};

api_connlimit *api_connlimit_new(int per_addr)
{
    api_connlimit *l = eng_xcalloc(1, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
    l->per_addr = per_addr;
    return l;
}

void api_connlimit_free(api_connlimit *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < NBUCKETS; i++)
        for (entry *e = l->buckets[i], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    pthread_mutex_destroy(&l->mu);
    free(l);
}

int api_connlimit_per_addr(const api_connlimit *l)
{
    return l->per_addr;
}

static size_t bucket_of(const uint8_t a[16])
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (int i = 0; i < 16; i++)
        h = (h ^ a[i]) * 16777619u;
    return h % NBUCKETS;
}

bool api_connlimit_take(api_connlimit *l, const struct sockaddr *sa, api_connlimit_key *key)
{
    memset(key, 0, sizeof *key);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;
        key->addr[10] = key->addr[11] = 0xff;
        memcpy(key->addr + 12, &s4->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
        memcpy(key->addr, &s6->sin6_addr, 16);
    } else {
        return true;
    }
    size_t b = bucket_of(key->addr);
    pthread_mutex_lock(&l->mu);
    entry *e = l->buckets[b];
    while (e && memcmp(e->addr, key->addr, 16) != 0)
        e = e->next;
    if (e && l->per_addr > 0 && e->n >= l->per_addr) {
        pthread_mutex_unlock(&l->mu);
        return false;
    }
    if (!e) {
        e = eng_xcalloc(1, sizeof *e);
        memcpy(e->addr, key->addr, 16);
        e->next = l->buckets[b];
        l->buckets[b] = e;
    }
    e->n++;
    pthread_mutex_unlock(&l->mu);
    key->counted = true;
    return true;
}

void api_connlimit_release(api_connlimit *l, api_connlimit_key *key)
{
    if (!l || !key->counted)
        return;
    key->counted = false;
    size_t b = bucket_of(key->addr);
    pthread_mutex_lock(&l->mu);
    for (entry **p = &l->buckets[b]; *p; p = &(*p)->next) {
        if (memcmp((*p)->addr, key->addr, 16) == 0) {
            if (--(*p)->n == 0) {
                entry *dead = *p;
                *p = dead->next;
                free(dead);
            }
            break;
        }
    }
    pthread_mutex_unlock(&l->mu);
}
