/*
 * pqscan_serial.c -- the portable PQ scan kernels: the reference the SIMD
 * ones are tested against, and what runs without AVX2.
 *
 * pq8: four codes at a time, each with its own accumulator, so the m table
 * loads of four codes are independent and overlap (one code alone is a
 * chain of dependent adds).
 *
 * pq_lut_ip: codebooks transposed, so the innermost loop runs over
 * codewords, contiguous, and the compiler vectorises it; a row-by-row dot
 * product of dsub (often 8) elements would pay a horizontal sum per entry.
 */
#include "internal.h"
#include "pqscan.h"

void isx_pq8_scan_serial(const float *lut, const uint8_t *codes, size_t n, size_t m, float *out)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint8_t *c0 = codes + i * m, *c1 = c0 + m, *c2 = c1 + m, *c3 = c2 + m;
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (size_t j = 0; j < m; j++) {
            const float *t = lut + j * 256;
            s0 += t[c0[j]];
            s1 += t[c1[j]];
            s2 += t[c2[j]];
            s3 += t[c3[j]];
        }
        out[i] = s0;
        out[i + 1] = s1;
        out[i + 2] = s2;
        out[i + 3] = s3;
    }
    for (; i < n; i++) {
        const uint8_t *c = codes + i * m;
        float s = 0;
        for (size_t j = 0; j < m; j++)
            s += lut[j * 256 + c[j]];
        out[i] = s;
    }
}

void isx_pq4_scan_serial(const uint8_t *codes, size_t nblocks, size_t npairs, const uint8_t *lut, uint16_t thresh,
                         uint16_t *out, uint32_t *masks)
{
    for (size_t b = 0; b < nblocks; b++) {
        const uint8_t *blk = codes + b * npairs * ISX_PQ4_PAIR_BYTES;
        uint32_t mask = 0;
        for (size_t v = 0; v < ISX_PQ4_BLOCK; v++) {
            unsigned s = 0;
            for (size_t j = 0; j < 2 * npairs; j++)
                s += lut[(j >> 1) * ISX_PQ4_PAIR_BYTES + (j & 1) * 16 + isx_pq4_get(blk, j, v)];
            out[b * ISX_PQ4_BLOCK + v] = (uint16_t)s;
            mask |= (uint32_t)(s <= thresh) << v;
        }
        masks[b] = mask;
    }
}

void isx_pq_lut_ip_serial(const float *q, const float *books_t, size_t m, size_t dsub, size_t ksub, float *lut)
{
    for (size_t j = 0; j < m; j++) {
        float *row = lut + j * ksub;
        for (size_t c = 0; c < ksub; c++)
            row[c] = 0;
        for (size_t t = 0; t < dsub; t++) {
            float qt = q[j * dsub + t];
            const float *b = books_t + (j * dsub + t) * ksub;
            for (size_t c = 0; c < ksub; c++)
                row[c] -= qt * b[c];
        }
    }
}

float isx_pq4_quantize_serial(const float *lut, size_t m, uint8_t *qtab, float *scale)
{
    float sum_min = 0, span = 0;
    for (size_t j = 0; j < m; j++) {
        float lo = lut[j * 16], hi = lo;
        for (size_t e = 1; e < 16; e++) {
            lo = lut[j * 16 + e] < lo ? lut[j * 16 + e] : lo;
            hi = lut[j * 16 + e] > hi ? lut[j * 16 + e] : hi;
        }
        sum_min += lo;
        span = hi - lo > span ? hi - lo : span;
    }
    float a = span > 0 ? 255.0f / span : 1.0f;
    for (size_t j = 0; j < m; j++) {
        float lo = lut[j * 16];
        for (size_t e = 1; e < 16; e++)
            lo = lut[j * 16 + e] < lo ? lut[j * 16 + e] : lo;
        uint8_t *t = qtab + (j >> 1) * ISX_PQ4_PAIR_BYTES + (j & 1) * 16;
        for (size_t e = 0; e < 16; e++) {
            float v = (lut[j * 16 + e] - lo) * a + 0.5f; /* in [0.5, 255.5]: rounding by truncation */
            t[e] = (uint8_t)(v < 255.0f ? v : 255.0f);
        }
    }
    *scale = a;
    return sum_min;
}
