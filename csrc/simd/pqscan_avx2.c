/*
 * pqscan_avx2.c -- AVX2 PQ scan kernels (slots pq8_scan, pq4_scan).
 *
 * pq4 (fast-scan, layouts in pqscan.h): per block of 32 vectors and pair of
 * sub-quantizers, one load of codes, a mask and a 16-bit shift split the low
 * and high nibbles (vectors 0..15 and 16..31), and one vpshufb each looks up
 * both sub-quantizers' entries (one per 128-bit lane).  The uint8 results
 * are summed in uint16 without widening them: added as uint16 lanes, a
 * result adds (even byte) + 256 x (odd byte); shifted right by 8 first, the
 * odd byte alone.  So acc_all = sum_even + 256 sum_odd (mod 2^16) and
 * acc_odd = sum_odd, and sum_even = acc_all - 256 acc_odd exactly, since
 * each true sum stays below 2^16 (pqscan.h).  The two lanes' sums (the two
 * sub-quantizers of each pair) are added at the end of the block, the
 * even/odd vectors interleaved back, and compared with the threshold as
 * unsigned (max(x, t) == t).
 *
 * No pq8 kernel here: an AVX2 one that gathered eight table entries per
 * instruction (eight sub-codes widened to indices, eight codes summed by a
 * tree of hadds) ran at 0.6x the serial kernel's four independent scalar
 * chains on this Zen 4 machine (m = 16: 9.6-10.7 vs 6.0-6.2 ns per code,
 * m = 32: 16-19 vs 10-11), so the AVX2 table takes the serial one.
 */
#if defined(__x86_64__)

#include <immintrin.h>
#include <stddef.h>

#include "internal.h"
#include "pqscan.h"

#define AVX2 __attribute__((target("avx2,fma")))

/* A block's four accumulators to its 32 sums (stored to out) and its mask. */
static inline AVX2 uint32_t pq4_finish(__m256i all0, __m256i odd0, __m256i all1, __m256i odd1, __m128i thr,
                                       uint16_t *out)
{
    /* per half: u16 lane k < 8 of even = vector 2k's sum over the even
     * sub-quantizers, lane k + 8 over the odd ones; likewise odd for 2k+1 */
    __m256i even0 = _mm256_sub_epi16(all0, _mm256_slli_epi16(odd0, 8));
    __m256i even1 = _mm256_sub_epi16(all1, _mm256_slli_epi16(odd1, 8));
    __m128i e0 = _mm_add_epi16(_mm256_castsi256_si128(even0), _mm256_extracti128_si256(even0, 1));
    __m128i o0 = _mm_add_epi16(_mm256_castsi256_si128(odd0), _mm256_extracti128_si256(odd0, 1));
    __m128i e1 = _mm_add_epi16(_mm256_castsi256_si128(even1), _mm256_extracti128_si256(even1, 1));
    __m128i o1 = _mm_add_epi16(_mm256_castsi256_si128(odd1), _mm256_extracti128_si256(odd1, 1));
    __m128i v0 = _mm_unpacklo_epi16(e0, o0), v8 = _mm_unpackhi_epi16(e0, o0);
    __m128i v16 = _mm_unpacklo_epi16(e1, o1), v24 = _mm_unpackhi_epi16(e1, o1);
    __m128i *o = (__m128i *)out;
    _mm_storeu_si128(o, v0);
    _mm_storeu_si128(o + 1, v8);
    _mm_storeu_si128(o + 2, v16);
    _mm_storeu_si128(o + 3, v24);
    __m128i k0 = _mm_cmpeq_epi16(_mm_max_epu16(v0, thr), thr), k8 = _mm_cmpeq_epi16(_mm_max_epu16(v8, thr), thr);
    __m128i k16 = _mm_cmpeq_epi16(_mm_max_epu16(v16, thr), thr);
    __m128i k24 = _mm_cmpeq_epi16(_mm_max_epu16(v24, thr), thr);
    uint32_t lo = (uint32_t)_mm_movemask_epi8(_mm_packs_epi16(k0, k8));
    uint32_t hi = (uint32_t)_mm_movemask_epi8(_mm_packs_epi16(k16, k24));
    return lo | (hi << 16);
}

/* Two blocks per step share each table load and give eight independent
 * accumulator chains: 0.66-0.70 vs 0.81-1.2 ns per code for one block per
 * step (m = 32, codes in L1, this 2-core Zen 4 machine, noisy).  A list is
 * a short run (about 32 blocks at nlist 1024) from a random place in memory,
 * which the hardware prefetcher is slow to follow: asking for the blocks
 * four ahead took lists of 32 blocks from 64 MiB at random from 2.1-2.9 to
 * 1.8-2.1 ns per code (two ahead or eight ahead helped less). */
AVX2 void isx_pq4_scan_avx2(const uint8_t *codes, size_t nblocks, size_t npairs, const uint8_t *lut,
                            uint16_t thresh, uint16_t *out, uint32_t *masks)
{
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const __m128i thr = _mm_set1_epi16((short)thresh);
    const size_t block_bytes = npairs * ISX_PQ4_PAIR_BYTES;
    size_t b = 0;
    for (; b + 2 <= nblocks; b += 2) {
        const uint8_t *x = codes + b * block_bytes, *y = x + block_bytes;
        if (b + 4 < nblocks) /* blocks b + 4 and b + 5, as far as this call reads */
            for (size_t o = 0; o < 2 * block_bytes; o += 64)
                _mm_prefetch((const char *)(x + 4 * block_bytes + o), _MM_HINT_T0);
        __m256i a0 = _mm256_setzero_si256(), d0 = a0, a1 = a0, d1 = a0, a2 = a0, d2 = a0, a3 = a0, d3 = a0;
        for (size_t t = 0; t < npairs; t++) {
            __m256i tab = _mm256_loadu_si256((const __m256i *)(lut + t * ISX_PQ4_PAIR_BYTES));
            __m256i c = _mm256_loadu_si256((const __m256i *)(x + t * ISX_PQ4_PAIR_BYTES));
            __m256i e = _mm256_loadu_si256((const __m256i *)(y + t * ISX_PQ4_PAIR_BYTES));
            __m256i r0 = _mm256_shuffle_epi8(tab, _mm256_and_si256(c, low4));
            __m256i r1 = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(c, 4), low4));
            __m256i r2 = _mm256_shuffle_epi8(tab, _mm256_and_si256(e, low4));
            __m256i r3 = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(e, 4), low4));
            a0 = _mm256_add_epi16(a0, r0);
            d0 = _mm256_add_epi16(d0, _mm256_srli_epi16(r0, 8));
            a1 = _mm256_add_epi16(a1, r1);
            d1 = _mm256_add_epi16(d1, _mm256_srli_epi16(r1, 8));
            a2 = _mm256_add_epi16(a2, r2);
            d2 = _mm256_add_epi16(d2, _mm256_srli_epi16(r2, 8));
            a3 = _mm256_add_epi16(a3, r3);
            d3 = _mm256_add_epi16(d3, _mm256_srli_epi16(r3, 8));
        }
        masks[b] = pq4_finish(a0, d0, a1, d1, thr, out + b * ISX_PQ4_BLOCK);
        masks[b + 1] = pq4_finish(a2, d2, a3, d3, thr, out + (b + 1) * ISX_PQ4_BLOCK);
    }
    for (; b < nblocks; b++) { /* an odd count's last block */
        const uint8_t *x = codes + b * block_bytes;
        __m256i a0 = _mm256_setzero_si256(), d0 = a0, a1 = a0, d1 = a0;
        for (size_t t = 0; t < npairs; t++) {
            __m256i tab = _mm256_loadu_si256((const __m256i *)(lut + t * ISX_PQ4_PAIR_BYTES));
            __m256i c = _mm256_loadu_si256((const __m256i *)(x + t * ISX_PQ4_PAIR_BYTES));
            __m256i r0 = _mm256_shuffle_epi8(tab, _mm256_and_si256(c, low4));
            __m256i r1 = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(c, 4), low4));
            a0 = _mm256_add_epi16(a0, r0);
            d0 = _mm256_add_epi16(d0, _mm256_srli_epi16(r0, 8));
            a1 = _mm256_add_epi16(a1, r1);
            d1 = _mm256_add_epi16(d1, _mm256_srli_epi16(r1, 8));
        }
        masks[b] = pq4_finish(a0, d0, a1, d1, thr, out + b * ISX_PQ4_BLOCK);
    }
}

static inline AVX2 float hmin8(__m256 v)
{
    __m128 x = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_min_ps(x, _mm_movehl_ps(x, x));
    x = _mm_min_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

static inline AVX2 float hmax8(__m256 v)
{
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* One table of 16 in two registers: min and max by two reductions, then
 * (v - min) * scale + 0.5 truncated to int32 and packed down to bytes (the
 * packs work per 128-bit lane, so one permute restores the order). */
AVX2 float isx_pq4_quantize_avx2(const float *lut, size_t m, uint8_t *qtab, float *scale)
{
    float mins[256], sum_min = 0, span = 0; /* m <= 256: ISX_IVFPQ_MAX_M */
    for (size_t j = 0; j < m; j++) {
        __m256 a = _mm256_loadu_ps(lut + j * 16), b = _mm256_loadu_ps(lut + j * 16 + 8);
        float lo = hmin8(_mm256_min_ps(a, b)), hi = hmax8(_mm256_max_ps(a, b));
        mins[j] = lo;
        sum_min += lo;
        span = hi - lo > span ? hi - lo : span;
    }
    float s = span > 0 ? 255.0f / span : 1.0f;
    const __m256 sv = _mm256_set1_ps(s), half = _mm256_set1_ps(0.5f), top = _mm256_set1_ps(255.0f);
    for (size_t j = 0; j < m; j++) {
        __m256 lo = _mm256_set1_ps(mins[j]);
        __m256 a = _mm256_min_ps(_mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(lut + j * 16), lo), sv, half), top);
        __m256 b = _mm256_min_ps(_mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(lut + j * 16 + 8), lo), sv, half), top);
        __m256i w = _mm256_packus_epi32(_mm256_cvttps_epi32(a), _mm256_cvttps_epi32(b)); /* 0-3 8-11 | 4-7 12-15 */
        w = _mm256_permute4x64_epi64(w, 0xD8);                                          /* 0-7 | 8-15 */
        __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
        _mm_storeu_si128((__m128i *)(qtab + (j >> 1) * ISX_PQ4_PAIR_BYTES + (j & 1) * 16), bytes);
    }
    *scale = s;
    return sum_min;
}

/* 16 codewords per step in two registers, the dsub products accumulated by FMA. */
AVX2 void isx_pq_lut_ip_avx2(const float *q, const float *books_t, size_t m, size_t dsub, size_t ksub, float *lut)
{
    for (size_t j = 0; j < m; j++) {
        const float *qj = q + j * dsub, *bj = books_t + j * dsub * ksub;
        for (size_t c = 0; c < ksub; c += 16) {
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            for (size_t t = 0; t < dsub; t++) {
                __m256 qt = _mm256_set1_ps(qj[t]);
                a0 = _mm256_fmadd_ps(qt, _mm256_loadu_ps(bj + t * ksub + c), a0);
                a1 = _mm256_fmadd_ps(qt, _mm256_loadu_ps(bj + t * ksub + c + 8), a1);
            }
            const __m256 neg = _mm256_set1_ps(-0.0f);
            _mm256_storeu_ps(lut + j * ksub + c, _mm256_xor_ps(a0, neg));
            _mm256_storeu_ps(lut + j * ksub + c + 8, _mm256_xor_ps(a1, neg));
        }
    }
}

#else
typedef int isx_pqscan_avx2_unavailable;
#endif
