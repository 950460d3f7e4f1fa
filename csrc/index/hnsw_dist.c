/*
 * hnsw_dist.c -- distances that give up early, for the HNSW walk.
 *
 * Most of the rows a beam search measures are rejected: their distance is
 * not below the current ef-th best.  For l2 and l1 the partial sums only
 * grow, so once a partial sum reaches that bound the rest of the row cannot
 * change the verdict and is neither computed nor loaded.  The partial sum
 * is checked every HNSW_DIST_CHECK elements (a horizontal sum costs about
 * as much as 16 elements of work, so checking more often does not pay);
 * a row that is kept is always summed in full, so every returned distance
 * is exact.  With bound = +inf these are plain distance kernels, which the
 * index then uses everywhere so that all its distances round alike.
 */
#include <immintrin.h>
#include <math.h>

#include "hnsw_dist.h"

#define HNSW_DIST_CHECK 128 /* elements between two looks at the partial sum */

/* ---------- portable ---------------------------------------------------- */

static inline float bounded_serial(int l1, const float *q, const float *x, size_t dim, float bound)
{
    float a[4] = {0, 0, 0, 0};
    size_t i = 0;
    while (i < dim) {
        size_t end = i + HNSW_DIST_CHECK < dim ? i + HNSW_DIST_CHECK : dim;
        for (; i + 4 <= end; i += 4)
            for (int j = 0; j < 4; j++) {
                float d = q[i + (size_t)j] - x[i + (size_t)j];
                a[j] += l1 ? fabsf(d) : d * d;
            }
        for (; i < end; i++) {
            float d = q[i] - x[i];
            a[0] += l1 ? fabsf(d) : d * d;
        }
        float s = (a[0] + a[1]) + (a[2] + a[3]);
        if (s >= bound)
            return s;
    }
    return (a[0] + a[1]) + (a[2] + a[3]);
}

static float l2_bounded_serial(const float *q, const float *x, size_t dim, float bound)
{
    return bounded_serial(0, q, x, dim, bound);
}

static float l1_bounded_serial(const float *q, const float *x, size_t dim, float bound)
{
    return bounded_serial(1, q, x, dim, bound);
}

/* ---------- AVX2 -------------------------------------------------------- */
#if defined(__x86_64__)
#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

static const int32_t mask_window[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

INLINE AVX2 __m256 term(int l1, __m256 q, __m256 x, __m256 acc)
{
    __m256 d = _mm256_sub_ps(q, x);
    return l1 ? _mm256_add_ps(acc, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), d)) : _mm256_fmadd_ps(d, d, acc);
}

INLINE AVX2 float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE AVX2 float bounded_avx2(int l1, const float *q, const float *x, size_t dim, float bound)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0, check = HNSW_DIST_CHECK;
    for (; i + 32 <= dim; i += 32) {
        a0 = term(l1, _mm256_loadu_ps(q + i), _mm256_loadu_ps(x + i), a0);
        a1 = term(l1, _mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = term(l1, _mm256_loadu_ps(q + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = term(l1, _mm256_loadu_ps(q + i + 24), _mm256_loadu_ps(x + i + 24), a3);
        if (i + 32 >= check) {
            float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
            if (s >= bound)
                return s;
            check += HNSW_DIST_CHECK;
        }
    }
    for (; i + 8 <= dim; i += 8)
        a0 = term(l1, _mm256_loadu_ps(q + i), _mm256_loadu_ps(x + i), a0);
    if (i < dim) {
        __m256i m = _mm256_loadu_si256((const __m256i *)(mask_window + 8 - (dim - i)));
        a1 = term(l1, _mm256_maskload_ps(q + i, m), _mm256_maskload_ps(x + i, m), a1);
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

static AVX2 float l2_bounded_avx2(const float *q, const float *x, size_t dim, float bound)
{
    return bounded_avx2(0, q, x, dim, bound);
}

static AVX2 float l1_bounded_avx2(const float *q, const float *x, size_t dim, float bound)
{
    return bounded_avx2(1, q, x, dim, bound);
}
#endif

isx_bounded_fn isx_hnsw_bounded_kernel(isx_metric metric)
{
    if (metric != ISX_METRIC_L2 && metric != ISX_METRIC_L1)
        return NULL;
#if defined(__x86_64__)
    if (isx_simd_level() >= ISX_ISA_AVX2)
        return metric == ISX_METRIC_L2 ? l2_bounded_avx2 : l1_bounded_avx2;
#endif
    return metric == ISX_METRIC_L2 ? l2_bounded_serial : l1_bounded_serial;
}
