/*
 * fused.h -- dot products fused with top-k selection, for exact batch search
 * (the `fused` slot of the kernel table; flat.c's GEMM plan).
 *
 * Queries are packed into panels of `panel` lanes, transposed (for each
 * dimension, the panel's query values side by side) and pre-scaled by
 * alpha; database rows are read where they lie, unpacked and uncopied.  The
 * micro-kernel keeps a block of dot products in registers (AVX-512: 32
 * queries x 12 rows in 24 zmm; AVX2: 16 queries x 6 rows in 12 ymm) while it
 * walks the dimension once, then, still in registers, turns each row's
 * values into v = dot * scale[row] + bias[row] and compares them with the
 * queries' current k-th best a vector at a time; only lanes that win touch a
 * heap.  No product matrix is ever written to memory, and nothing is serial
 * after the arithmetic.  Rows are visited in increasing order, so for equal
 * distances the lower slot is kept, as everywhere else.
 */
#ifndef ISX_FUSED_H
#define ISX_FUSED_H

#include "internal.h"

#define ISX_FUSED_PANEL_AVX512 32
#define ISX_FUSED_PANEL_AVX2 16
#define ISX_FUSED_ROWS_AVX512 12 /* rows per micro-kernel call */
#define ISX_FUSED_ROWS_AVX2 6

#endif
