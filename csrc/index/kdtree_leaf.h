/*
 * kdtree_leaf.h -- the KD-tree's distance scans with SIMD (kdtree_leaf_avx2.c).
 *
 * A scan computes out[i] = dist(q, row i) for rows given by a base pointer
 * and an optional permutation, as kdtree.c's portable scan does.  Rows go
 * in groups of eight whose lanes are summed by one fixed tree of additions
 * (a short group is padded with its last row), so a row's distance is the
 * same bits whichever group and slot it lands in: a point's distance does
 * not depend on where in the index it lives.
 */
#ifndef ISX_KDTREE_LEAF_H
#define ISX_KDTREE_LEAF_H

#include <stddef.h>
#include <stdint.h>

#define ISX_KDTREE_AVX2_MIN_DIM 8   /* below one register per row the portable loop is as fast */

/* Rows s..e-1 of `rows` (through perm when not NULL), dim >= 8; l1 selects
 * Manhattan, else squared Euclidean.  Needs AVX2 + FMA (the caller checks). */
void isx_kdtree_dists_avx2(const float *rows, const uint32_t *perm, size_t s, size_t e, const float *q,
                           size_t dim, int l1, float *out);
/* The same for n rows given by pointers (a filter's allowed rows). */
void isx_kdtree_dists_ptrs_avx2(const float *const *rows, size_t n, const float *q, size_t dim, int l1,
                                float *out);

#endif
