/*
 * fused_avx2.c -- the fused dot-product + top-k kernel for AVX2/FMA CPUs
 * (see fused.h for the design; fused_avx512.c is the wider twin).
 *
 * Register budget (16 ymm): 12 accumulators (2 panel halves x 6 rows), two
 * panel loads and one broadcast.  Per dimension step: 12 FMAs against 2
 * vector loads and 6 scalar broadcasts, so two FMA pipes stay busy, as in a
 * 16x6 BLAS micro-kernel; the selection runs as the epilogue, on the
 * accumulators, and only lanes that beat their query's k-th best leave the
 * registers.  Rows are visited in increasing order, so for equal distances
 * the lower slot is kept.
 */
#include <immintrin.h>

#include "fused.h"

#define PANEL ISX_FUSED_PANEL_AVX2
#define ROWS ISX_FUSED_ROWS_AVX2

/* The epilogue for one row: 16 lanes of v against 16 bounds; `valid` masks
 * the lanes of a partly filled last panel. */
__attribute__((target("avx2,fma")))
static inline void offer_row(__m256 lo, __m256 hi, size_t row, const float *scale, const float *bias,
                             unsigned valid, float *bounds, isx_topk *heaps, size_t slot0)
{
    __m256 s = _mm256_set1_ps(scale ? scale[row] : 1.0f);
    __m256 b = _mm256_set1_ps(bias ? bias[row] : 0.0f);
    __m256 vlo = _mm256_fmadd_ps(lo, s, b);
    __m256 vhi = _mm256_fmadd_ps(hi, s, b);
    unsigned mlo = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(vlo, _mm256_loadu_ps(bounds), _CMP_LE_OQ));
    unsigned mhi = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(vhi, _mm256_loadu_ps(bounds + 8), _CMP_LE_OQ));
    unsigned m = (mlo | (mhi << 8)) & valid;
    if (!m)
        return;
    float v[PANEL];
    _mm256_storeu_ps(v, vlo);
    _mm256_storeu_ps(v + 8, vhi);
    for (; m; m &= m - 1) {
        unsigned lane = (unsigned)__builtin_ctz(m);
        isx_topk_push(&heaps[lane], v[lane], (int64_t)(slot0 + row));
        bounds[lane] = isx_topk_bound(&heaps[lane]);
    }
}

#define FMA2(i, ptr)                                  \
    do {                                              \
        __m256 bx = _mm256_broadcast_ss((ptr) + j);   \
        c##i##a = _mm256_fmadd_ps(a0, bx, c##i##a);   \
        c##i##b = _mm256_fmadd_ps(a1, bx, c##i##b);   \
    } while (0)

/* 16 queries x 6 rows starting at x (row stride d). */
__attribute__((target("avx2,fma")))
static void block_6(const float *panel, const float *x, size_t d, size_t row0, const float *scale,
                    const float *bias, const uint64_t *allowed, unsigned valid, float *bounds, isx_topk *heaps, size_t slot0)
{
    const float *x0 = x, *x1 = x + d, *x2 = x + 2 * d, *x3 = x + 3 * d, *x4 = x + 4 * d, *x5 = x + 5 * d;
    __m256 c0a = _mm256_setzero_ps(), c0b = c0a, c1a = c0a, c1b = c0a, c2a = c0a, c2b = c0a;
    __m256 c3a = c0a, c3b = c0a, c4a = c0a, c4b = c0a, c5a = c0a, c5b = c0a;
    for (size_t j = 0; j < d; j++) {
        __m256 a0 = _mm256_load_ps(panel + j * PANEL);
        __m256 a1 = _mm256_load_ps(panel + j * PANEL + 8);
        FMA2(0, x0); FMA2(1, x1); FMA2(2, x2); FMA2(3, x3); FMA2(4, x4); FMA2(5, x5);
    }
#define OFFER(i)                                                                    \
    if (isx_row_allowed(allowed, row0 + i))                                  \
        offer_row(c##i##a, c##i##b, row0 + i, scale, bias, valid, bounds, heaps, slot0)
    OFFER(0); OFFER(1); OFFER(2); OFFER(3); OFFER(4); OFFER(5);
#undef OFFER
}

/* 16 queries x 1 row: the tail of the database. */
__attribute__((target("avx2,fma")))
static void block_1(const float *panel, const float *x, size_t d, size_t row, const float *scale,
                    const float *bias, const uint64_t *allowed, unsigned valid, float *bounds, isx_topk *heaps, size_t slot0)
{
    if (!isx_row_allowed(allowed, row))
        return;
    __m256 c0a = _mm256_setzero_ps(), c0b = c0a, c1a = c0a, c1b = c0a;
    size_t j = 0;
    for (; j + 1 < d; j += 2) {
        __m256 b0 = _mm256_broadcast_ss(x + j), b1 = _mm256_broadcast_ss(x + j + 1);
        c0a = _mm256_fmadd_ps(_mm256_load_ps(panel + j * PANEL), b0, c0a);
        c0b = _mm256_fmadd_ps(_mm256_load_ps(panel + j * PANEL + 8), b0, c0b);
        c1a = _mm256_fmadd_ps(_mm256_load_ps(panel + (j + 1) * PANEL), b1, c1a);
        c1b = _mm256_fmadd_ps(_mm256_load_ps(panel + (j + 1) * PANEL + 8), b1, c1b);
    }
    if (j < d) {
        __m256 b0 = _mm256_broadcast_ss(x + j);
        c0a = _mm256_fmadd_ps(_mm256_load_ps(panel + j * PANEL), b0, c0a);
        c0b = _mm256_fmadd_ps(_mm256_load_ps(panel + j * PANEL + 8), b0, c0b);
    }
    offer_row(_mm256_add_ps(c0a, c1a), _mm256_add_ps(c0b, c1b), row, scale, bias, valid, bounds, heaps, slot0);
}

__attribute__((target("avx2,fma")))
void isx_fused_knn_avx2(const float *packed, size_t m, size_t d, const float *X, size_t r0, size_t r1,
                        const float *scale, const float *bias, const uint64_t *allowed, isx_topk *heaps,
                        size_t slot0)
{
    size_t panels = (m + PANEL - 1) / PANEL;
    for (size_t p = 0; p < panels; p++) {
        const float *panel = packed + p * d * PANEL;
        size_t live = m - p * PANEL < PANEL ? m - p * PANEL : PANEL;
        unsigned valid = live >= PANEL ? 0xFFFFu : (1u << live) - 1;
        isx_topk *h = heaps + p * PANEL;
        float bounds[PANEL];
        for (size_t l = 0; l < PANEL; l++)
            bounds[l] = l < live ? isx_topk_bound(&h[l]) : 0.0f;
        size_t r = r0;
        for (; r + ROWS <= r1; r += ROWS)
            block_6(panel, X + r * d, d, r, scale, bias, allowed, valid, bounds, h, slot0);
        for (; r < r1; r++)
            block_1(panel, X + r * d, d, r, scale, bias, allowed, valid, bounds, h, slot0);
    }
}
