/*
 * idmap.c -- see idmap.h.  Load factor is kept at or below 1/2, so probe
 * sequences stay short; the hash is a 64-bit mix (splitmix64's finaliser)
 * because sequential ids are the common case and would cluster otherwise.
 */
#include <stdlib.h>
#include <string.h>

#include "idmap.h"

static inline size_t hash_id(int64_t key)
{
    uint64_t x = (uint64_t)key;
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return (size_t)x;
}

void isx_idmap_init(isx_idmap *m)
{
    memset(m, 0, sizeof(*m));
}

void isx_idmap_free(isx_idmap *m)
{
    free(m->keys);
    free(m->vals);
    isx_idmap_init(m);
}

void isx_idmap_clear(isx_idmap *m)
{
    if (m->keys)
        memset(m->keys, 0xff, (m->mask + 1) * sizeof(int64_t));
    m->count = 0;
}

static void insert_fresh(int64_t *keys, int64_t *vals, size_t mask, int64_t key, int64_t val)
{
    size_t i = hash_id(key) & mask;
    while (keys[i] != -1)
        i = (i + 1) & mask;
    keys[i] = key;
    vals[i] = val;
}

int isx_idmap_reserve(isx_idmap *m, size_t n)
{
    size_t cap = m->keys ? m->mask + 1 : 0;
    if (n <= cap / 2)
        return ISX_OK;
    size_t want = 16;
    while (want / 2 < n) {
        if (want > SIZE_MAX / 4 / sizeof(int64_t))
            return isx_error(ISX_ENOMEM, "id map: %zu entries is too many", n);
        want *= 2;
    }
    int64_t *keys = malloc(want * sizeof(int64_t));
    int64_t *vals = malloc(want * sizeof(int64_t));
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return isx_error(ISX_ENOMEM, "id map: cannot allocate %zu slots", want);
    }
    memset(keys, 0xff, want * sizeof(int64_t));
    for (size_t i = 0; i < cap; i++)
        if (m->keys[i] != -1)
            insert_fresh(keys, vals, want - 1, m->keys[i], m->vals[i]);
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->mask = want - 1;
    return ISX_OK;
}

int isx_idmap_put(isx_idmap *m, int64_t key, int64_t val)
{
    int rc = isx_idmap_reserve(m, m->count + 1);
    if (rc)
        return rc;
    size_t i = hash_id(key) & m->mask;
    while (m->keys[i] != -1) {
        if (m->keys[i] == key) {
            m->vals[i] = val;
            return ISX_OK;
        }
        i = (i + 1) & m->mask;
    }
    m->keys[i] = key;
    m->vals[i] = val;
    m->count++;
    return ISX_OK;
}

int64_t isx_idmap_get(const isx_idmap *m, int64_t key)
{
    if (!m->keys)
        return -1;
    size_t i = hash_id(key) & m->mask;
    while (m->keys[i] != -1) {
        if (m->keys[i] == key)
            return m->vals[i];
        i = (i + 1) & m->mask;
    }
    return -1;
}

int isx_idmap_del(isx_idmap *m, int64_t key)
{
    if (!m->keys)
        return 0;
    size_t mask = m->mask;
    size_t i = hash_id(key) & mask;
    while (m->keys[i] != key) {
        if (m->keys[i] == -1)
            return 0;
        i = (i + 1) & mask;
    }
    /* Backward-shift deletion: move later members of the probe run into the
     * hole when their home slot does not lie cyclically in (hole, j]. */
    size_t hole = i, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (m->keys[j] == -1)
            break;
        size_t home = hash_id(m->keys[j]) & mask;
        int stays = (hole <= j) ? (hole < home && home <= j) : (hole < home || home <= j);
        if (!stays) {
            m->keys[hole] = m->keys[j];
            m->vals[hole] = m->vals[j];
            hole = j;
        }
    }
    m->keys[hole] = -1;
    m->count--;
    return 1;
}

int isx_check_ids(const int64_t *ids, size_t n)
{
    isx_idmap seen;
    isx_idmap_init(&seen);
    int rc = isx_idmap_reserve(&seen, n);
    for (size_t i = 0; rc == ISX_OK && i < n; i++) {
        int64_t prev;
        if (ids[i] < 0)
            rc = isx_error(ISX_EINVAL, "ids must be >= 0, found ids[%zu] = %lld", i, (long long)ids[i]);
        else if ((prev = isx_idmap_get(&seen, ids[i])) >= 0)
            rc = isx_error(ISX_EINVAL, "ids must be unique within one call, found id %lld at positions %lld and %zu",
                           (long long)ids[i], (long long)prev, i);
        else
            rc = isx_idmap_put(&seen, ids[i], (int64_t)i);
    }
    isx_idmap_free(&seen);
    return rc;
}
