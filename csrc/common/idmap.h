/*
 * idmap.h -- int64 id -> slot hash map (open addressing, linear probing).
 *
 * Ids are user-chosen non-negative int64s; slots are positions in an index's
 * storage.  Deletion shifts later entries back instead of leaving tombstones,
 * so a map that sees many removes and re-adds never degrades.
 */
#ifndef ISX_IDMAP_H
#define ISX_IDMAP_H

#include "isx.h"

typedef struct {
    int64_t *keys;   /* -1 = empty */
    int64_t *vals;
    size_t mask;     /* capacity - 1, capacity a power of two (or 0) */
    size_t count;
} isx_idmap;

void isx_idmap_init(isx_idmap *m);
void isx_idmap_free(isx_idmap *m);
/* Make room for `n` entries in total without rehashing later. */
int isx_idmap_reserve(isx_idmap *m, size_t n);
/* Insert or overwrite. */
int isx_idmap_put(isx_idmap *m, int64_t key, int64_t val);
/* The slot of key, or -1. */
int64_t isx_idmap_get(const isx_idmap *m, int64_t key);
/* Remove key if present; returns 1 if it was there. */
int isx_idmap_del(isx_idmap *m, int64_t key);
void isx_idmap_clear(isx_idmap *m);

/* The ids a caller hands in: each >= 0 and none twice, else ISX_EINVAL naming
 * the position (the check every index's add and load makes). */
int isx_check_ids(const int64_t *ids, size_t n);

#endif
