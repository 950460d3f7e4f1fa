/*
 * internal.h -- what the kernel files of csrc/simd/ share among themselves
 * (nothing outside csrc/simd/ includes this).
 *
 * Each raw table holds only the kernels written for its level; a NULL slot
 * means "take the level below" (dispatch.c).  A raw table that needs a CPU
 * feature beyond its level's baseline is a table of its own
 * (isx_raw_avx512_vpopcntdq), merged only where the CPU has the feature.
 */
#ifndef ISX_SIMD_INTERNAL_H
#define ISX_SIMD_INTERNAL_H

#include "simd.h"

extern const isx_kernels isx_raw_serial;
extern const isx_kernels isx_raw_avx2;
extern const isx_kernels isx_raw_avx512;
extern const isx_kernels isx_raw_avx512_vpopcntdq;

/* Kernels defined in one file and placed in a table in another. */
void isx_crc32c_init(void);
uint32_t isx_crc32c_serial(uint32_t crc, const void *data, size_t n);
uint32_t isx_crc32c_sse42(uint32_t crc, const void *data, size_t n);
void isx_fused_knn_avx2(const float *packed, size_t m, size_t d, const float *X, size_t r0, size_t r1,
                        const float *scale, const float *bias, const uint64_t *allowed, isx_topk *heaps,
                        size_t slot0);
void isx_fused_knn_avx512(const float *packed, size_t m, size_t d, const float *X, size_t r0, size_t r1,
                          const float *scale, const float *bias, const uint64_t *allowed, isx_topk *heaps,
                          size_t slot0);
void isx_kd_dists_serial(const float *rows, const uint32_t *perm, size_t s, size_t e, const float *q,
                         size_t dim, int l1, float *out);
void isx_kd_dists_ptrs_serial(const float *const *rows, size_t n, const float *q, size_t dim, int l1,
                              float *out);
void isx_kd_dists_avx2(const float *rows, const uint32_t *perm, size_t s, size_t e, const float *q,
                       size_t dim, int l1, float *out);
void isx_kd_dists_ptrs_avx2(const float *const *rows, size_t n, const float *q, size_t dim, int l1,
                            float *out);
void isx_pq_lut_ip_serial(const float *q, const float *books_t, size_t m, size_t dsub, size_t ksub, float *lut);
void isx_pq_lut_ip_avx2(const float *q, const float *books_t, size_t m, size_t dsub, size_t ksub, float *lut);
float isx_pq4_quantize_serial(const float *lut, size_t m, uint8_t *qtab, float *scale);
float isx_pq4_quantize_avx2(const float *lut, size_t m, uint8_t *qtab, float *scale);
void isx_pq8_scan_serial(const float *lut, const uint8_t *codes, size_t n, size_t m, float *out);
void isx_pq4_scan_serial(const uint8_t *codes, size_t nblocks, size_t npairs, const uint8_t *lut, uint16_t thresh,
                         uint16_t *out, uint32_t *masks);
void isx_pq4_scan_avx2(const uint8_t *codes, size_t nblocks, size_t npairs, const uint8_t *lut, uint16_t thresh,
                       uint16_t *out, uint32_t *masks);
void isx_nearest_small_serial(const float *X, size_t n, size_t ldx, size_t d, const float *Ct, size_t k,
                              int32_t *assign, float *dist, float *dist2);
void isx_nearest_small_avx2(const float *X, size_t n, size_t ldx, size_t d, const float *Ct, size_t k,
                            int32_t *assign, float *dist, float *dist2);

/* Elements between two looks at a bounded kernel's partial sum: a horizontal
 * sum costs about as much as 16 elements of work, so looking more often does
 * not pay. */
#define ISX_BOUNDED_CHECK 128

static inline int isx_row_allowed(const uint64_t *allowed, size_t row)
{
    return !allowed || ((allowed[row >> 6] >> (row & 63)) & 1);
}

#endif
