/*
 * pqscan.h -- the two code layouts the PQ scan kernels (slots pq8_scan and
 * pq4_scan) read, shared by csrc/index/ivfpq.c, which writes them.
 *
 * 8-bit codes are rows of m bytes; the table is m x 256 floats, one row per
 * sub-quantizer, and a code's distance is the sum of m entries.
 *
 * 4-bit codes follow faiss's fast-scan idea (Andre et al., "Quicker ADC"):
 * a table of 16 uint8 entries fits one 128-bit lane, so vpshufb looks up 16
 * codes of one sub-quantizer at once, and an AVX2 register holds the tables
 * of two sub-quantizers (one per lane).  Codes go in blocks of 32 vectors;
 * sub-quantizers in pairs (2t, 2t + 1), the last padded with a zero table
 * when m is odd.  For pair t and h in {0, 1}:
 *
 *   block byte  t * 32 + h * 16 + i   low nibble: sub-code 2t+h of vector i,
 *                                     high nibble: of vector i + 16  (i < 16)
 *   table byte  t * 32 + h * 16 + c   the quantised entry of sub-quantizer
 *                                     2t+h for sub-code c
 *
 * so one 32-byte load of codes and one of the table, a mask and a shift give
 * 32 vectors' entries for two sub-quantizers in two vpshufb.  Sums are kept
 * in uint16 (see pqscan_avx2.c for the even/odd byte trick); with at most
 * 128 pairs of entries <= 255 they never overflow.
 */
#ifndef ISX_PQSCAN_H
#define ISX_PQSCAN_H

#include <stdint.h>

#define ISX_PQ4_BLOCK 32           /* vectors per block */
#define ISX_PQ4_PAIR_BYTES 32      /* bytes per pair of sub-quantizers, per block and in the table */
#define ISX_PQ4_MAX_PAIRS 128      /* 128 x 2 x 255 < 65536: uint16 sums cannot overflow */

/* The nibble of vector v (< 32) for sub-quantizer j in a block. */
static inline unsigned isx_pq4_get(const uint8_t *block, size_t j, size_t v)
{
    uint8_t b = block[(j >> 1) * ISX_PQ4_PAIR_BYTES + (j & 1) * 16 + (v & 15)];
    return v < 16 ? b & 15u : b >> 4;
}

/* Set that nibble (the block's other nibbles are kept). */
static inline void isx_pq4_set(uint8_t *block, size_t j, size_t v, unsigned code)
{
    uint8_t *b = block + (j >> 1) * ISX_PQ4_PAIR_BYTES + (j & 1) * 16 + (v & 15);
    *b = v < 16 ? (uint8_t)((*b & 0xf0u) | code) : (uint8_t)((*b & 0x0fu) | (code << 4));
}

#endif
