/*
 * pq.h -- product quantization (Jegou, Douze, Schmid 2011): a d-dimensional
 * vector is cut into m sub-vectors of dsub = d / m dimensions, and each is
 * replaced by the index of its nearest centroid in a codebook of
 * ksub = 2^nbits centroids (nbits = 4 or 8), trained by k-means per
 * sub-space.  A code is m * nbits / 8 bytes (nbits = 4: two sub-codes per
 * byte, the low nibble first).
 *
 * Distances from a query to codes go through a lookup table (LUT) of
 * m x ksub floats: LUT[j][c] = dist(q_j, centroid_j[c]); the distance to a
 * code is the sum of m table entries.  ivfpq.c scans codes with SIMD kernels
 * that read these tables (and their uint8-quantised form for 4-bit fast-scan).
 */
#ifndef ISX_PQ_H
#define ISX_PQ_H

#include "../common/isx.h"

typedef struct {
    size_t d, m, nbits, dsub, ksub;
    size_t code_bytes;      /* (m * nbits + 7) / 8 */
    float *centroids;       /* m x ksub x dsub, owned (isx_aligned_alloc) unless `borrowed` */
    int borrowed;           /* 1: centroids points into a loaded file */
} isx_pq;

/* Set the shape; d % m == 0, nbits in {4, 8}.  Allocates zeroed centroids. */
int isx_pq_init(isx_pq *pq, size_t d, size_t m, size_t nbits);
/* Set the shape (checked as by isx_pq_init) over centroids (m x ksub x dsub
 * floats) that the caller keeps alive and unchanged: a loaded file's section,
 * or a NumPy array in the test hooks.  borrowed = 1; isx_pq_free leaves them,
 * and isx_pq_train trains into a fresh block of its own. */
int isx_pq_borrow(isx_pq *pq, size_t d, size_t m, size_t nbits, float *centroids);
void isx_pq_free(isx_pq *pq);

/* Train the m codebooks on n x d points (k-means per sub-space, seeded,
 * parallel over sub-spaces; deterministic for a seed).  n >= ksub. */
int isx_pq_train(isx_pq *pq, const float *X, size_t n, int niter, uint64_t seed, int nthreads);

/* Encode n vectors into n x code_bytes codes (nearest centroid per sub-space). */
int isx_pq_encode(const isx_pq *pq, const float *X, size_t n, uint8_t *codes, int nthreads);
/* Reconstruct n codes into n x d floats. */
int isx_pq_decode(const isx_pq *pq, const uint8_t *codes, size_t n, float *X);

/* Lookup tables for one query q (d floats) into lut (m x ksub floats):
 *   ISX_METRIC_L2: squared L2 between q's sub-vector and each centroid;
 *   ISX_METRIC_IP: -dot(q_j, c)  (so smaller is better and sums give -<q, x~>).
 * Other metrics: ISX_EINVAL (ivfpq.c maps cosine to IP on normalised data). */
int isx_pq_lut(const isx_pq *pq, const float *q, int metric, float *lut);

/* Distance from the LUT to one code (the scalar oracle the SIMD scans are tested against). */
float isx_pq_lut_distance(const isx_pq *pq, const float *lut, const uint8_t *code);

#endif
