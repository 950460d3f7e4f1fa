/*
 * pqscan_serial.c -- the portable PQ scan kernels: the reference the SIMD
 * ones are tested against, and what runs without AVX2.
 *
 * pq8: four codes at a time, each with its own accumulator, so the m table
 * loads of four codes are independent and overlap (one code alone is a
 * chain of dependent adds).
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
