/*
 * fused.h -- dot products fused with top-k selection, for exact batch search.
 *
 * Queries are packed into panels of ISX_FUSED_PANEL lanes, transposed (for
 * each dimension, the panel's 32 query values side by side) and pre-scaled by
 * alpha; database rows are read where they lie, unpacked and uncopied.  The
 * micro-kernel keeps a 32-query x 12-row block of dot products in 24
 * AVX-512 registers while it walks the dimension once, then, still in
 * registers, turns each row's 32 values into v = dot * scale[row] + bias[row]
 * and compares them with the 32 queries' current k-th best in one
 * instruction; only lanes that win touch a heap.  No product matrix is ever
 * written to memory, and nothing is serial after the arithmetic.
 */
#ifndef ISX_FUSED_H
#define ISX_FUSED_H

#include "../common/isx.h"
#include "topk.h"

#define ISX_FUSED_PANEL 32

/* Floats needed to pack m queries of dimension d. */
size_t isx_fused_packed_size(size_t m, size_t d);
/* Pack Q (m x d, row-major) into panels, multiplied by alpha, zero-padded. */
void isx_fused_pack(const float *Q, size_t m, size_t d, float alpha, float *packed);
/* Offer rows [r0, r1) of X (row stride d) to the heaps of the m packed
 * queries.  scale/bias may be NULL (1 / 0); allowed is a bitmap over rows or
 * NULL (all rows).  Requires AVX-512F (check isx_simd_level first). */
void isx_fused_knn_avx512(const float *packed, size_t m, size_t d, const float *X, size_t r0, size_t r1,
                          const float *scale, const float *bias, const uint64_t *allowed, isx_topk *heaps);

#endif
