/*
 * kdtree.h -- exact (and optionally approximate) k-NN and radius search for
 * low and medium dimensions, with dynamic add and remove.
 *
 * The index is a small forest: a few static KD-trees of geometrically
 * decreasing size plus a short buffer of recent adds searched by brute
 * force.  A tree built over a caller's array (from_array with copy=False, or
 * a loaded file's bytes) keeps only a permutation of the rows; every tree the
 * index builds from rows it copied holds them in tree order instead.  See
 * kdtree.c for the design.
 *
 * Metrics: l2 (squared Euclidean) and l1.
 *
 * Thread safety: a reader/writer lock, as for the flat index: any number of
 * searches run concurrently with each other; add/remove take the write lock.
 */
#ifndef ISX_KDTREE_H
#define ISX_KDTREE_H

#include "filter.h"
#include "format.h"

#define ISX_KDTREE_LEAF_SIZE_DEFAULT 12
#define ISX_KDTREE_MAX_LEAF_SIZE 1024   /* bounds the per-leaf scratch on the stack */

typedef struct isx_kdtree isx_kdtree;

int isx_kdtree_create(isx_metric metric, size_t dim, size_t leaf_size, isx_kdtree **out);
void isx_kdtree_destroy(isx_kdtree *kd);

/* Add n rows (copied).  ids == NULL gives next_id, next_id + 1, ...; an id
 * already present has its vector replaced.  Validates everything (finite
 * values, ids >= 0, no id twice) before changing anything. */
int isx_kdtree_add(isx_kdtree *kd, const float *X, size_t n, const int64_t *ids, int nthreads);
/* Build over `data` (n rows) without copying it: the caller keeps it alive
 * and unchanged while isx_kdtree_borrows() says so.  Needs an empty index. */
int isx_kdtree_borrow(isx_kdtree *kd, const float *data, size_t n, const int64_t *ids, int nthreads);
/* 1 while some tree still reads borrowed rows. */
int isx_kdtree_borrows(isx_kdtree *kd);
int isx_kdtree_remove(isx_kdtree *kd, const int64_t *ids, size_t n, size_t *removed);
int isx_kdtree_get(isx_kdtree *kd, const int64_t *ids, size_t n, float *out);
/* All live ids (count entries), in no particular order. */
int isx_kdtree_ids(isx_kdtree *kd, int64_t *out, size_t cap, size_t *n);

size_t isx_kdtree_count(isx_kdtree *kd);
size_t isx_kdtree_dim(const isx_kdtree *kd);
size_t isx_kdtree_leaf_size(const isx_kdtree *kd);
isx_metric isx_kdtree_metric(const isx_kdtree *kd);
/* Bytes the index allocated (trees, ids, buffer, id map); rows it borrows
 * (a caller's array, a loaded file) are not counted. */
size_t isx_kdtree_memory(isx_kdtree *kd);

typedef struct {
    float eps;          /* >= 0: returned distances are within (1 + eps) of the true ones */
    size_t max_leaves;  /* 0: unbounded; else leaves visited per query (approximate) */
} isx_kdtree_params;

/* k nearest per query: D and I are nq x k, padded with +inf / -1. */
int isx_kdtree_search(isx_kdtree *kd, const float *Q, size_t nq, size_t k, const isx_kdtree_params *params,
                      const isx_filter *filter, int nthreads, float *D, int64_t *labels);
/* All points with distance < radius, per query sorted by distance: lims has
 * nq + 1 entries; *D and *I are malloc'd (free with free()). */
int isx_kdtree_range_search(isx_kdtree *kd, const float *Q, size_t nq, float radius, const isx_filter *filter,
                            int nthreads, int64_t *lims, float **D, int64_t **labels);

/* Serialisation: one buffer of live vectors and ids (malloc'd, freed by
 * isx_kdtree_release_snapshot) described as PARM, VECS, IDS sections. */
#define ISX_KDTREE_SECTIONS 3
typedef struct {
    float *vectors;
    int64_t *ids;
    uint8_t parm[256];
} isx_kdtree_snapshot;
int isx_kdtree_describe(isx_kdtree *kd, isx_header *h, isx_section_out *secs, uint32_t *nsecs,
                        isx_kdtree_snapshot *snap);
void isx_kdtree_release_snapshot(isx_kdtree_snapshot *snap);
/* Build from a validated file (the tree is rebuilt over the file's vectors,
 * which are used in place); takes ownership of *file even on failure. */
int isx_kdtree_from_file(isx_file *file, int nthreads, isx_kdtree **out);

#endif
