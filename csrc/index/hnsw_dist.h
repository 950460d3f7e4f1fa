/*
 * hnsw_dist.h -- l2 / l1 distances of float32 rows that stop once a partial
 * sum reaches `bound` (returning that partial sum, >= bound); with bound =
 * +inf, the full distance.  See hnsw_dist.c.
 */
#ifndef ISX_HNSW_DIST_H
#define ISX_HNSW_DIST_H

#include "../simd/simd.h"

typedef float (*isx_bounded_fn)(const float *q, const float *x, size_t dim, float bound);

/* The best kernel for this CPU (honouring IMGSEARCH_SIMD), or NULL for a
 * metric whose partial sums are not monotone (ip, cosine, hamming). */
isx_bounded_fn isx_hnsw_bounded_kernel(isx_metric metric);

#endif
