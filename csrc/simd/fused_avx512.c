/*
 * fused_avx512.c -- see fused.h for the design.
 *
 * Register budget (32 zmm): 24 accumulators (2 panel halves x 12 rows), two
 * panel loads and one broadcast.  Per dimension step that is 24 FMAs against
 * 2 vector loads and 12 scalar broadcasts, so the loop is bound by the FMA
 * units, not by loads: the same shape as a BLAS micro-kernel, but with the
 * selection as its epilogue.  Rows are visited in increasing order, so for
 * equal distances the lower slot is kept, as everywhere else.
 */
#include <immintrin.h>
#include <string.h>

#include "fused.h"

#define ROWS ISX_FUSED_ROWS_AVX512
#define ISX_FUSED_PANEL ISX_FUSED_PANEL_AVX512

/* The epilogue for one row: 32 lanes of v against 32 bounds. */
__attribute__((target("avx512f")))
static inline void offer_row(__m512 lo, __m512 hi, size_t row, const float *scale, const float *bias,
                             __mmask16 valid_lo, __mmask16 valid_hi, float *bounds, isx_topk *heaps, size_t slot0)
{
    __m512 s = _mm512_set1_ps(scale ? scale[row] : 1.0f);
    __m512 b = _mm512_set1_ps(bias ? bias[row] : 0.0f);
    __m512 vlo = _mm512_fmadd_ps(lo, s, b);
    __m512 vhi = _mm512_fmadd_ps(hi, s, b);
    __mmask16 mlo = _mm512_mask_cmp_ps_mask(valid_lo, vlo, _mm512_loadu_ps(bounds), _CMP_LE_OQ);
    __mmask16 mhi = _mm512_mask_cmp_ps_mask(valid_hi, vhi, _mm512_loadu_ps(bounds + 16), _CMP_LE_OQ);
    if (!(mlo | mhi))
        return;
    float v[32];
    _mm512_storeu_ps(v, vlo);
    _mm512_storeu_ps(v + 16, vhi);
    uint32_t m = (uint32_t)mlo | ((uint32_t)mhi << 16);
    for (; m; m &= m - 1) {
        unsigned lane = (unsigned)__builtin_ctz(m);
        isx_topk_push(&heaps[lane], v[lane], (int64_t)(slot0 + row));
        bounds[lane] = isx_topk_bound(&heaps[lane]);
    }
}

#define FMA2(i, ptr)                                      \
    do {                                                  \
        __m512 bx = _mm512_set1_ps((ptr)[j]);             \
        c##i##a = _mm512_fmadd_ps(a0, bx, c##i##a);       \
        c##i##b = _mm512_fmadd_ps(a1, bx, c##i##b);       \
    } while (0)

/* 32 queries x 12 rows starting at x (row stride d). */
__attribute__((target("avx512f")))
static void block_12(const float *panel, const float *x, size_t d, size_t row0, const float *scale,
                     const float *bias, const uint64_t *allowed, __mmask16 vlo, __mmask16 vhi,
                     float *bounds, isx_topk *heaps, size_t slot0)
{
    const float *x0 = x, *x1 = x + d, *x2 = x + 2 * d, *x3 = x + 3 * d, *x4 = x + 4 * d, *x5 = x + 5 * d;
    const float *x6 = x + 6 * d, *x7 = x + 7 * d, *x8 = x + 8 * d, *x9 = x + 9 * d, *x10 = x + 10 * d,
                *x11 = x + 11 * d;
    __m512 c0a = _mm512_setzero_ps(), c0b = c0a, c1a = c0a, c1b = c0a, c2a = c0a, c2b = c0a;
    __m512 c3a = c0a, c3b = c0a, c4a = c0a, c4b = c0a, c5a = c0a, c5b = c0a;
    __m512 c6a = c0a, c6b = c0a, c7a = c0a, c7b = c0a, c8a = c0a, c8b = c0a;
    __m512 c9a = c0a, c9b = c0a, c10a = c0a, c10b = c0a, c11a = c0a, c11b = c0a;
    for (size_t j = 0; j < d; j++) {
        __m512 a0 = _mm512_load_ps(panel + j * ISX_FUSED_PANEL);
        __m512 a1 = _mm512_load_ps(panel + j * ISX_FUSED_PANEL + 16);
        FMA2(0, x0); FMA2(1, x1); FMA2(2, x2); FMA2(3, x3); FMA2(4, x4); FMA2(5, x5);
        FMA2(6, x6); FMA2(7, x7); FMA2(8, x8); FMA2(9, x9); FMA2(10, x10); FMA2(11, x11);
    }
#define OFFER(i)                                                                                    \
    if (isx_row_allowed(allowed, row0 + i))                                                            \
        offer_row(c##i##a, c##i##b, row0 + i, scale, bias, vlo, vhi, bounds, heaps, slot0)
    OFFER(0); OFFER(1); OFFER(2); OFFER(3); OFFER(4); OFFER(5);
    OFFER(6); OFFER(7); OFFER(8); OFFER(9); OFFER(10); OFFER(11);
#undef OFFER
}

/* 32 queries x 1 row: the tail of the database. */
__attribute__((target("avx512f")))
static void block_1(const float *panel, const float *x, size_t d, size_t row, const float *scale,
                    const float *bias, const uint64_t *allowed, __mmask16 vlo, __mmask16 vhi,
                    float *bounds, isx_topk *heaps, size_t slot0)
{
    if (!isx_row_allowed(allowed, row))
        return;
    __m512 c0a = _mm512_setzero_ps(), c0b = c0a, c1a = c0a, c1b = c0a;
    size_t j = 0;
    for (; j + 1 < d; j += 2) {
        __m512 b0 = _mm512_set1_ps(x[j]), b1 = _mm512_set1_ps(x[j + 1]);
        c0a = _mm512_fmadd_ps(_mm512_load_ps(panel + j * ISX_FUSED_PANEL), b0, c0a);
        c0b = _mm512_fmadd_ps(_mm512_load_ps(panel + j * ISX_FUSED_PANEL + 16), b0, c0b);
        c1a = _mm512_fmadd_ps(_mm512_load_ps(panel + (j + 1) * ISX_FUSED_PANEL), b1, c1a);
        c1b = _mm512_fmadd_ps(_mm512_load_ps(panel + (j + 1) * ISX_FUSED_PANEL + 16), b1, c1b);
    }
    if (j < d) {
        __m512 b0 = _mm512_set1_ps(x[j]);
        c0a = _mm512_fmadd_ps(_mm512_load_ps(panel + j * ISX_FUSED_PANEL), b0, c0a);
        c0b = _mm512_fmadd_ps(_mm512_load_ps(panel + j * ISX_FUSED_PANEL + 16), b0, c0b);
    }
    offer_row(_mm512_add_ps(c0a, c1a), _mm512_add_ps(c0b, c1b), row, scale, bias, vlo, vhi, bounds, heaps, slot0);
}

__attribute__((target("avx512f")))
void isx_fused_knn_avx512(const float *packed, size_t m, size_t d, const float *X, size_t r0, size_t r1,
                          const float *scale, const float *bias, const uint64_t *allowed, isx_topk *heaps,
                        size_t slot0)
{
    size_t panels = (m + ISX_FUSED_PANEL - 1) / ISX_FUSED_PANEL;
    for (size_t p = 0; p < panels; p++) {
        const float *panel = packed + p * d * ISX_FUSED_PANEL;
        size_t live = m - p * ISX_FUSED_PANEL < ISX_FUSED_PANEL ? m - p * ISX_FUSED_PANEL : ISX_FUSED_PANEL;
        __mmask16 vlo = live >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << live) - 1);
        __mmask16 vhi = live <= 16 ? 0 : live >= 32 ? (__mmask16)0xFFFF : (__mmask16)((1u << (live - 16)) - 1);
        isx_topk *h = heaps + p * ISX_FUSED_PANEL;
        float bounds[ISX_FUSED_PANEL];
        for (size_t l = 0; l < ISX_FUSED_PANEL; l++)
            bounds[l] = l < live ? isx_topk_bound(&h[l]) : 0.0f;
        size_t r = r0;
        for (; r + ROWS <= r1; r += ROWS)
            block_12(panel, X + r * d, d, r, scale, bias, allowed, vlo, vhi, bounds, h, slot0);
        for (; r < r1; r++)
            block_1(panel, X + r * d, d, r, scale, bias, allowed, vlo, vhi, bounds, h, slot0);
    }
}
