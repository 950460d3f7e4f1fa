/*
 * kmeans.h -- k-means training for the IVF coarse quantizer and the PQ
 * codebooks (csrc/index/ivfpq.c).
 *
 * Lloyd's algorithm, assignment through BLAS (||x||^2 - 2 x.c + ||c||^2 with
 * sgemm over blocks of points, then a per-row arg-min), centroid update in
 * float64 accumulators, empty clusters re-seeded by splitting the largest
 * cluster (as faiss does), k-means++-free seeding by a seeded random sample
 * of distinct points.  Parallel over blocks of points with isx_parallel_for;
 * the result depends only on (X, seed) and not on the thread count -- every
 * reduction is done in a fixed order -- so one seed gives one model.
 * (kmeans.c: the assignment runs the kernel table's fused dot-product + top-k
 * kernel where the CPU has one, sgemm otherwise -- or, for d <= 32, the
 * nearest_small kernel of direct squared differences -- and training skips
 * the points that Hamerly's bounds prove cannot change cluster.)
 */
#ifndef ISX_KMEANS_H
#define ISX_KMEANS_H

#include "../common/isx.h"

typedef struct {
    size_t k;             /* clusters, 1 <= k <= n */
    int niter;            /* Lloyd iterations (faiss default 25; 0 = seeding only) */
    uint64_t seed;
    int nthreads;         /* <= 0: all usable CPUs */
    size_t max_points;    /* subsample X to at most this many points (0: k * 256, as faiss) */
    int spherical;        /* 1: L2-normalise centroids after each update (for ip/cosine) */
} isx_kmeans_params;

/* Train k centroids on the n x d row-major float32 points X.
 * centroids: caller-allocated k x d floats (written).
 * obj: if non-NULL, the final mean squared distance to the nearest centroid.
 * Errors: ISX_EINVAL (k == 0, k > n, d == 0, non-finite input with a message
 * naming the row), ISX_ENOMEM. */
int isx_kmeans_train(const float *X, size_t n, size_t d, const isx_kmeans_params *p,
                     float *centroids, double *obj);

/* Nearest centroid (squared L2) of each of the n points: assign[i] in [0, k),
 * dist[i] the squared distance (dist may be NULL).  BLAS blocks, parallel. */
int isx_kmeans_assign(const float *X, size_t n, size_t d, const float *centroids, size_t k,
                      int nthreads, int32_t *assign, float *dist);

/* ---- the building block, for callers that run their own loops (pq.c) ----
 *
 * isx_kmeans_assign cuts its points into blocks of at most ISX_KMEANS_BLOCK
 * and runs each through this function on one thread; a caller with points
 * that are not contiguous rows (PQ's sub-vectors) does the same with its own
 * blocks and its own threads.  No argument checks: the caller has made them. */
#define ISX_KMEANS_BLOCK 256 /* points per block: the fused kernel's queries, or sgemm's M */

/* Floats of scratch (64-byte aligned) one thread needs for blocks of dimension d. */
size_t isx_kmeans_block_scratch(size_t d);

/* Nearest of the k centroids C (k x d, cnorm[c] = |C_c|^2) for m <= ISX_KMEANS_BLOCK
 * points read with row stride ldx >= d.  assign[i] as for isx_kmeans_assign;
 * dist (may be NULL) the exact squared distance, recomputed for the chosen
 * centroid (the |x|^2 - 2 x.c + |c|^2 identity loses digits for near points).
 * Ties go to the lower centroid index.  For d <= 32 the arg-min itself is
 * taken over direct squared differences (the nearest_small slot), so it is
 * exact to float32 rounding too, and cnorm is not read. */
void isx_kmeans_nearest_block(const float *X, size_t m, size_t d, size_t ldx, const float *C, const float *cnorm,
                              size_t k, float *scratch, int32_t *assign, float *dist);

#endif
