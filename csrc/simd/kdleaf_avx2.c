/*
 * kdleaf_avx2.c -- AVX2 + FMA distance scans for KD-tree leaves (see kdleaf.h).
 *
 * Eight rows at a time: each row keeps one accumulator of eight lanes
 * (masked loads for the last dim % 8 floats, so nothing past a row is
 * read), then three rounds of horizontal adds and one cross-lane add turn
 * the eight accumulators into the eight distances in one register.  The
 * lanes of every row are summed in the same order, ((0+1)+(2+3)) +
 * ((4+5)+(6+7)), in every slot, which is what kdleaf.h promises.
 * Built with a per-function target attribute; reached only through the
 * AVX2 table (kernels_avx2.c), for dim >= ISX_KDLEAF_SIMD_MIN_DIM.
 */
#if defined(__x86_64__)

#include <immintrin.h>

#include "kdleaf.h"

#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))
#define KD_GROUP 8

/* mask_window + 8 - n: the first n lanes are set */
static const int32_t mask_window[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

INLINE AVX2 __m256 step(__m256 acc, __m256 x, __m256 q, int l1)
{
    __m256 d = _mm256_sub_ps(x, q);
    return l1 ? _mm256_add_ps(acc, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), d)) : _mm256_fmadd_ps(d, d, acc);
}

/* The distances of eight rows into out[0..7]. */
INLINE AVX2 void group(const float *const *x, const float *q, size_t dim, __m256i tail, int l1, float *out)
{
    __m256 a[KD_GROUP];
    for (int r = 0; r < KD_GROUP; r++)
        a[r] = _mm256_setzero_ps();
    size_t j = 0;
    for (; j + 8 <= dim; j += 8) {
        __m256 qv = _mm256_loadu_ps(q + j);
        for (int r = 0; r < KD_GROUP; r++)
            a[r] = step(a[r], _mm256_loadu_ps(x[r] + j), qv, l1);
    }
    if (j < dim) {
        __m256 qv = _mm256_maskload_ps(q + j, tail);
        for (int r = 0; r < KD_GROUP; r++)
            a[r] = step(a[r], _mm256_maskload_ps(x[r] + j, tail), qv, l1);
    }
    __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    __m256 lo = _mm256_permute2f128_ps(u0, u1, 0x20), hi = _mm256_permute2f128_ps(u0, u1, 0x31);
    _mm256_storeu_ps(out, _mm256_add_ps(lo, hi));
}

/* Rows s..e-1: through perm, or contiguous from `rows`, or (ptrs not NULL)
 * ptrs[s..e-1]. */
INLINE AVX2 void scan(const float *rows, const uint32_t *perm, const float *const *ptrs, size_t s, size_t e,
                      const float *q, size_t dim, int l1, float *out)
{
    __m256i tail = _mm256_loadu_si256((const __m256i *)(mask_window + 8 - dim % 8));
    for (size_t i = s; i < e; i += KD_GROUP) {
        const float *x[KD_GROUP];
        size_t n = e - i < KD_GROUP ? e - i : KD_GROUP;
        for (size_t r = 0; r < KD_GROUP; r++) {
            size_t at = i + (r < n ? r : n - 1);
            x[r] = ptrs ? ptrs[at] : rows + (perm ? (size_t)perm[at] : at) * dim;
        }
        if (n == KD_GROUP) {
            group(x, q, dim, tail, l1, out + (i - s));
        } else {
            float tmp[KD_GROUP];
            group(x, q, dim, tail, l1, tmp);
            for (size_t r = 0; r < n; r++)
                out[i - s + r] = tmp[r];
        }
    }
}

AVX2 void isx_kd_dists_avx2(const float *rows, const uint32_t *perm, size_t s, size_t e, const float *q,
                                size_t dim, int l1, float *out)
{
    /* constant dimensions and metric inline into their own loops */
#define KD_DIM_CASE(D)                                      \
    case D:                                                 \
        if (l1)                                             \
            scan(rows, perm, NULL, s, e, q, D, 1, out);     \
        else                                                \
            scan(rows, perm, NULL, s, e, q, D, 0, out);     \
        return;
    switch (dim) {
        KD_DIM_CASE(8) KD_DIM_CASE(12) KD_DIM_CASE(16) KD_DIM_CASE(24) KD_DIM_CASE(32)
    default:
        if (l1)
            scan(rows, perm, NULL, s, e, q, dim, 1, out);
        else
            scan(rows, perm, NULL, s, e, q, dim, 0, out);
    }
#undef KD_DIM_CASE
}

AVX2 void isx_kd_dists_ptrs_avx2(const float *const *rows, size_t n, const float *q, size_t dim, int l1,
                                     float *out)
{
    if (l1)
        scan(NULL, NULL, rows, 0, n, q, dim, 1, out);
    else
        scan(NULL, NULL, rows, 0, n, q, dim, 0, out);
}

#else
/* Not x86-64: dispatch.c never selects this level.  ISO C wants a declaration. */
typedef int isx_kdtree_leaf_avx2_unavailable;
#endif
