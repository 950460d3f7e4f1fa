/*
 * nearest_avx2.c -- the AVX2 nearest_small kernel (layout in nearest.h).
 *
 * For the small d of PQ sub-spaces (4, 8, 16) the fused dot-product + top-k
 * kernel spends most of its time in heap updates, not arithmetic; here the
 * arg-min is kept in registers instead.  Eight centroids are one ymm
 * register (a row of the transposed codebook); each point coordinate is
 * broadcast, and (x_t - c_t)^2 is accumulated with FMA, the direct sum of
 * squared differences, so near points keep their digits (see
 * nearest_serial.c).  P points go together (4, then 1 at a time for the rest),
 * each against two centroid vectors at a time: 2P independent FMA chains
 * hide the FMA latency and every centroid load serves P points.  Each lane
 * keeps a running minimum and its index (and, when asked, the running
 * second minimum); since a lane sees its centroids in increasing index
 * order, a strict `<` keeps the lower index on ties, and the horizontal
 * arg-min at the end breaks ties between lanes by index.  A point's result
 * depends on that point alone -- the same instructions in the same order
 * whatever group it falls in -- so blocking never changes an answer.
 *
 * No AVX-512 version: the machine this was written on has AVX2 only, so one
 * could not be measured against this one; the AVX-512 level takes this
 * kernel (dispatch.c).
 */
#if defined(__x86_64__)

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "internal.h"
#include "nearest.h"

#ifndef P1
#define P1 4
#endif
#ifndef P2
#define P2 4
#endif
#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

/* Fold value v of centroids idx into lane state (m1, i1[, m2]). */
#define UPDATE(v, idx, m1, i1, m2)                                                              \
    do {                                                                                        \
        __m256 lt_ = _mm256_cmp_ps((v), (m1), _CMP_LT_OQ);                                     \
        if (W2)                                                                                 \
            (m2) = _mm256_min_ps((m2), _mm256_max_ps((m1), (v)));                               \
        (m1) = _mm256_min_ps((v), (m1));                                                        \
        (i1) = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(i1), _mm256_castsi256_ps(idx), lt_)); \
    } while (0)

/* The minimum of the 8 lanes, in every lane. */
AVX2 INLINE __m256 hmin_ps(__m256 v)
{
    v = _mm256_min_ps(v, _mm256_permute2f128_ps(v, v, 1));
    v = _mm256_min_ps(v, _mm256_shuffle_ps(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm256_min_ps(v, _mm256_shuffle_ps(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
}

AVX2 INLINE __m256i hmin_epi32(__m256i v)
{
    v = _mm256_min_epi32(v, _mm256_permute2x128_si256(v, v, 1));
    v = _mm256_min_epi32(v, _mm256_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm256_min_epi32(v, _mm256_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
}

AVX2 INLINE void group(const float *X, size_t ldx, size_t d, const float *Ct, size_t k, const int P, const int W2,
                       int32_t *assign, float *dist, float *dist2)
{
    const size_t kp = ISX_NEAREST_PAD(k), nb = kp / 8, last = nb - 1;
    const __m256 inf = _mm256_set1_ps(INFINITY);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    /* pad lanes of the last vector: +inf, so they never win (max(v, -inf) = v) */
    const __m256 tail = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), inf,
                                         _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                                             _mm256_add_epi32(lane, _mm256_set1_epi32((int)(last * 8))),
                                             _mm256_set1_epi32((int)k - 1))));
    __m256 m1[4], m2[4];
    __m256i i1[4];
    for (int p = 0; p < P; p++) {
        m1[p] = inf;
        m2[p] = inf;
        i1[p] = _mm256_setzero_si256();
    }
    __m256i idx = lane;
    const __m256i step = _mm256_set1_epi32(8), step2 = _mm256_set1_epi32(16);
    size_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m256 a0[4], a1[4];
        for (int p = 0; p < P; p++)
            a0[p] = a1[p] = _mm256_setzero_ps();
        const float *c = Ct + b * 8;
        for (size_t t = 0; t < d; t++) {
            __m256 c0 = _mm256_loadu_ps(c + t * kp), c1 = _mm256_loadu_ps(c + t * kp + 8);
            for (int p = 0; p < P; p++) {
                __m256 xb = _mm256_broadcast_ss(X + p * ldx + t);
                __m256 d0 = _mm256_sub_ps(xb, c0), d1 = _mm256_sub_ps(xb, c1);
                a0[p] = _mm256_fmadd_ps(d0, d0, a0[p]);
                a1[p] = _mm256_fmadd_ps(d1, d1, a1[p]);
            }
        }
        __m256i idx1 = _mm256_add_epi32(idx, step);
        for (int p = 0; p < P; p++) {
            if (b + 1 == last)
                a1[p] = _mm256_max_ps(a1[p], tail);
            UPDATE(a0[p], idx, m1[p], i1[p], m2[p]);
            UPDATE(a1[p], idx1, m1[p], i1[p], m2[p]);
        }
        idx = _mm256_add_epi32(idx, step2);
    }
    if (b < nb) { /* an odd number of vectors: the last one alone */
        __m256 a0[4];
        for (int p = 0; p < P; p++)
            a0[p] = _mm256_setzero_ps();
        const float *c = Ct + b * 8;
        for (size_t t = 0; t < d; t++) {
            __m256 c0 = _mm256_loadu_ps(c + t * kp);
            for (int p = 0; p < P; p++) {
                __m256 d0 = _mm256_sub_ps(_mm256_broadcast_ss(X + p * ldx + t), c0);
                a0[p] = _mm256_fmadd_ps(d0, d0, a0[p]);
            }
        }
        for (int p = 0; p < P; p++) {
            a0[p] = _mm256_max_ps(a0[p], tail);
            UPDATE(a0[p], idx, m1[p], i1[p], m2[p]);
        }
    }
    /* horizontal, without branches (a scalar scan of the lanes mispredicted
     * about once a point): the lowest value, the lowest index among the lanes
     * that hold it, and for the runner-up the smallest of every lane's second
     * and the other lanes' minima */
    for (int p = 0; p < P; p++) {
        __m256 mv = hmin_ps(m1[p]);
        __m256 at = _mm256_cmp_ps(m1[p], mv, _CMP_EQ_OQ);
        __m256i cand = _mm256_castps_si256(
            _mm256_blendv_ps(_mm256_castsi256_ps(_mm256_set1_epi32(INT32_MAX)), _mm256_castsi256_ps(i1[p]), at));
        __m256i best = hmin_epi32(cand);
        assign[p] = _mm256_cvtsi256_si32(best);
        dist[p] = _mm256_cvtss_f32(mv);
        if (W2) {
            __m256 won = _mm256_and_ps(at, _mm256_castsi256_ps(_mm256_cmpeq_epi32(i1[p], best)));
            __m256 rest = _mm256_min_ps(m2[p], _mm256_blendv_ps(m1[p], inf, won));
            dist2[p] = _mm256_cvtss_f32(hmin_ps(rest));
        }
    }
}

/* All n points at dimension d (a constant where the caller specialises). */
AVX2 INLINE void points(const float *X, size_t n, size_t ldx, size_t d, const float *Ct, size_t k, int32_t *assign,
                        float *dist, float *dist2)
{
    size_t i = 0;
    if (dist2) {
        for (; i + P2 <= n; i += P2)
            group(X + i * ldx, ldx, d, Ct, k, P2, 1, assign + i, dist + i, dist2 + i);
        for (; i < n; i++)
            group(X + i * ldx, ldx, d, Ct, k, 1, 1, assign + i, dist + i, dist2 + i);
    } else {
        for (; i + P1 <= n; i += P1)
            group(X + i * ldx, ldx, d, Ct, k, P1, 0, assign + i, dist + i, NULL);
        for (; i < n; i++)
            group(X + i * ldx, ldx, d, Ct, k, 1, 0, assign + i, dist + i, NULL);
    }
}

/* The PQ sub-space sizes of the usual shapes get their coordinate loop
 * unrolled at compile time; the arithmetic is the same in the same order, so
 * a specialised d gives the generic loop's results bit for bit. */
AVX2 void isx_nearest_small_avx2(const float *X, size_t n, size_t ldx, size_t d, const float *Ct, size_t k,
                                 int32_t *assign, float *dist, float *dist2)
{
    switch (d) {
    case 4:
        points(X, n, ldx, 4, Ct, k, assign, dist, dist2);
        break;
    case 8:
        points(X, n, ldx, 8, Ct, k, assign, dist, dist2);
        break;
    case 16:
        points(X, n, ldx, 16, Ct, k, assign, dist, dist2);
        break;
    default:
        points(X, n, ldx, d, Ct, k, assign, dist, dist2);
        break;
    }
}

#else
typedef int isx_nearest_avx2_unavailable;
#endif
