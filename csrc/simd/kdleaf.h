/*
 * kdleaf.h -- the KD-tree's leaf scans (slots kd_dists, kd_dists_ptrs).
 *
 * A scan computes out[i] = dist(q, row i) for rows given by a base pointer
 * and an optional permutation, or by pointers.  The portable kernel
 * (kernels_serial.c) is specialised per dimension for d <= 16, the loops the
 * compiler can unroll; from ISX_KDLEAF_SIMD_MIN_DIM on, where a row fills a
 * vector register, the SIMD kernels take rows in groups whose lanes are
 * summed by one fixed tree of additions (a short group is padded with its
 * last row), so a row's distance is the same bits whichever group and slot
 * it lands in: a point's distance does not depend on where in the index it
 * lives.
 */
#ifndef ISX_KDLEAF_H
#define ISX_KDLEAF_H

#include "internal.h"

#define ISX_KDLEAF_SIMD_MIN_DIM 8   /* below one register per row the portable loop is as fast */

#endif
