/*
 * nearest.h -- the layout the nearest_small kernels (slot nearest_small_f32)
 * read: k centroids of d <= ISX_NEAREST_MAX_D dimensions stored transposed,
 * coordinate-major: Ct[t * ISX_NEAREST_PAD(k) + c] is coordinate t of
 * centroid c, each coordinate's row padded to a multiple of 8 centroids so
 * that 8 consecutive centroids are one aligned-stride vector.  What the pad
 * columns hold does not matter (the kernels mask them out), but they must be
 * readable memory.
 */
#ifndef ISX_SIMD_NEAREST_H
#define ISX_SIMD_NEAREST_H

#include <stddef.h>

#define ISX_NEAREST_MAX_D 32
#define ISX_NEAREST_MAX_K ((size_t)1 << 24) /* centroid indices ride in float-exact int32 lanes */
#define ISX_NEAREST_PAD(k) (((k) + 7) & ~(size_t)7)

#endif
