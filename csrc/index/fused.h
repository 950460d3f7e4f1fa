/*
 * fused.h -- dot products fused with top-k selection, for exact batch search.
 *
 * Queries are packed into panels of `width` lanes, transposed (for each
 * dimension, the panel's query values side by side) and pre-scaled by
 * alpha; database rows are read where they lie, unpacked and uncopied.  The
 * micro-kernel keeps a block of dot products in registers (AVX-512: 32
 * queries x 12 rows in 24 zmm; AVX2: 16 queries x 6 rows in 12 ymm) while it
 * walks the dimension once, then, still in registers, turns each row's
 * values into v = dot * scale[row] + bias[row] and compares them with the
 * queries' current k-th best a vector at a time; only lanes that win touch a
 * heap.  No product matrix is ever
 * written to memory, and nothing is serial after the arithmetic.
 */
#ifndef ISX_FUSED_H
#define ISX_FUSED_H

#include "../common/isx.h"
#include "topk.h"

#define ISX_FUSED_PANEL_AVX512 32
#define ISX_FUSED_PANEL_AVX2 16
#define ISX_FUSED_ROWS_AVX512 12 /* rows per micro-kernel call */
#define ISX_FUSED_ROWS_AVX2 6

/* Floats needed to pack m queries of dimension d in panels of `width`. */
size_t isx_fused_packed_size(size_t m, size_t d, size_t width);
/* Pack Q (m x d, row-major) into panels of `width` lanes, multiplied by
 * alpha, zero-padded. */
void isx_fused_pack(const float *Q, size_t m, size_t d, float alpha, size_t width, float *packed);

/* Offer rows [r0, r1) of X (row stride d) to the heaps of the m packed
 * queries.  scale/bias may be NULL (1 / 0); allowed is a bitmap over rows or
 * NULL (all rows).  Row r reaches the heaps as slot slot0 + r (a caller
 * that gathers rows into a buffer numbers them itself).  The AVX-512 kernel takes panels of ISX_FUSED_PANEL_AVX512
 * and needs AVX-512F; the AVX2 one panels of ISX_FUSED_PANEL_AVX2 and needs
 * AVX2 + FMA (check isx_simd_level first). */
typedef void (*isx_fused_fn)(const float *packed, size_t m, size_t d, const float *X, size_t r0, size_t r1,
                             const float *scale, const float *bias, const uint64_t *allowed, isx_topk *heaps,
                        size_t slot0);
void isx_fused_knn_avx512(const float *packed, size_t m, size_t d, const float *X, size_t r0, size_t r1,
                          const float *scale, const float *bias, const uint64_t *allowed, isx_topk *heaps,
                        size_t slot0);
void isx_fused_knn_avx2(const float *packed, size_t m, size_t d, const float *X, size_t r0, size_t r1,
                        const float *scale, const float *bias, const uint64_t *allowed, isx_topk *heaps,
                        size_t slot0);

static inline int isx_fused_row_allowed(const uint64_t *allowed, size_t row)
{
    return !allowed || ((allowed[row >> 6] >> (row & 63)) & 1);
}

#endif
