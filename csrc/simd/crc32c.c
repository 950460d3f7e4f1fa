/*
 * crc32c.c -- CRC-32C (Castagnoli) for the index file format.
 *
 * CRC-32C speed matters because a load checks every byte of sections that run
 * to hundreds of MB.  The SSE4.2 crc32 instruction has a latency of 3 cycles
 * but issues once per cycle, so one dependent chain uses a third of it; the
 * hardware kernel runs three independent chains over adjacent blocks and
 * joins them by "shifting" a CRC over a block of zeros with a precomputed
 * table (the method of Mark Adler's crc32c.c).  The portable kernel is
 * slicing-by-8.  Both sit in the kernel table (slot crc32c: serial level the
 * table kernel, AVX2 and up the SSE4.2 one), and dispatch.c fills the tables
 * below once, at init, before any table is handed out.
 */
#include <string.h>

#include "internal.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif


#define CRC_POLY 0x82F63B78u /* Castagnoli, bit-reflected */
/* Bytes per chain in the 3-way loop, in three tiers for what remains.  Long
 * blocks matter out of cache: each block boundary restarts three hardware
 * prefetch streams, and 8 KiB blocks ran at 15 GB/s on 200 MB where 128 KiB
 * blocks run at memory speed (26 GB/s, EPYC); in cache 8 KiB does as well. */
#define CRC_LONG 131072
#define CRC_MID 8192
#define CRC_SHORT 256

static uint32_t crc_table[8][256];     /* slicing-by-8 */
#if defined(__x86_64__)
static uint32_t crc_zeros_long[4][256];  /* CRC state advanced over CRC_LONG zeros */
static uint32_t crc_zeros_mid[4][256];   /* ... over CRC_MID zeros */
static uint32_t crc_zeros_short[4][256]; /* ... over CRC_SHORT zeros */

/* The CRC register is a vector over GF(2) and feeding it zero bits is linear,
 * so "advance over n zero bytes" is a 32x32 bit matrix: mat[i] is the image
 * of bit i. */
static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
    uint32_t sum = 0;
    for (; vec; vec >>= 1, mat++)
        if (vec & 1)
            sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat)
{
    for (int n = 0; n < 32; n++)
        square[n] = gf2_times(mat, mat[n]);
}

/* Operator for `len` zero bytes; len must be a power of two, since it is
 * built by squaring the one-bit operator. */
static void crc_zeros_op(uint32_t even[32], size_t len)
{
    uint32_t odd[32];
    odd[0] = CRC_POLY; /* one zero bit */
    for (int n = 1; n < 32; n++)
        odd[n] = (uint32_t)1 << (n - 1);
    gf2_square(even, odd); /* two bits */
    gf2_square(odd, even); /* four bits */
    for (;;) {
        gf2_square(even, odd); /* first pass: one byte */
        len >>= 1;
        if (len == 0)
            return;
        gf2_square(odd, even);
        len >>= 1;
        if (len == 0)
            break;
    }
    memcpy(even, odd, sizeof(odd));
}

static void crc_zeros_table(uint32_t zeros[4][256], size_t len)
{
    uint32_t op[32];
    crc_zeros_op(op, len);
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 0; k < 4; k++)
            zeros[k][n] = gf2_times(op, n << (8 * k));
}

static uint32_t crc_shift(uint32_t zeros[4][256], uint32_t crc)
{
    return zeros[0][crc & 0xff] ^ zeros[1][(crc >> 8) & 0xff] ^ zeros[2][(crc >> 16) & 0xff] ^
           zeros[3][crc >> 24];
}

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8); /* x86 is little-endian: the bytes in stream order */
    return v;
}

/* One tier of the 3-way loop: while 3 blocks remain, CRC them as three
 * independent chains and join them.  Chains 1 and 2 start from 0, because
 * CRC(A||B) = shift(CRC(A), |B|) ^ CRC0(B). */
__attribute__((target("sse4.2"), always_inline)) static inline uint64_t
crc_3way(uint64_t c0, const uint8_t **pp, size_t *np, size_t block, uint32_t zeros[4][256])
{
    const uint8_t *p = *pp;
    size_t n = *np;
    while (n >= 3 * block) {
        uint64_t c1 = 0, c2 = 0;
        const uint8_t *end = p + block;
        do {
            c0 = _mm_crc32_u64(c0, load64(p));
            c1 = _mm_crc32_u64(c1, load64(p + block));
            c2 = _mm_crc32_u64(c2, load64(p + 2 * block));
            p += 8;
        } while (p < end);
        c0 = crc_shift(zeros, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = crc_shift(zeros, (uint32_t)c0) ^ (uint32_t)c2;
        p += 2 * block;
        n -= 3 * block;
    }
    *pp = p;
    *np = n;
    return c0;
}

__attribute__((target("sse4.2"))) uint32_t isx_crc32c_sse42(uint32_t crc, const void *data, size_t n)
{
    const uint8_t *p = data;
    uint64_t c0 = crc ^ 0xFFFFFFFFu;
    while (n && ((uintptr_t)p & 7)) {
        c0 = _mm_crc32_u8((uint32_t)c0, *p++);
        n--;
    }
    c0 = crc_3way(c0, &p, &n, CRC_LONG, crc_zeros_long);
    c0 = crc_3way(c0, &p, &n, CRC_MID, crc_zeros_mid);
    c0 = crc_3way(c0, &p, &n, CRC_SHORT, crc_zeros_short);
    for (; n >= 8; n -= 8, p += 8)
        c0 = _mm_crc32_u64(c0, load64(p));
    while (n--)
        c0 = _mm_crc32_u8((uint32_t)c0, *p++);
    return (uint32_t)c0 ^ 0xFFFFFFFFu;
}
#endif

void isx_crc32c_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ CRC_POLY : c >> 1;
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 1; k < 8; k++)
            crc_table[k][n] = crc_table[0][crc_table[k - 1][n] & 0xff] ^ (crc_table[k - 1][n] >> 8);
#if defined(__x86_64__)
    crc_zeros_table(crc_zeros_long, CRC_LONG);
    crc_zeros_table(crc_zeros_mid, CRC_MID);
    crc_zeros_table(crc_zeros_short, CRC_SHORT);
#endif
}

static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint32_t isx_crc32c_serial(uint32_t crc, const void *data, size_t n)
{
    const uint8_t *p = data;
    crc ^= 0xFFFFFFFFu;
    while (n && ((uintptr_t)p & 7)) {
        crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        n--;
    }
    for (; n >= 8; n -= 8, p += 8) {
        uint32_t lo = crc ^ le32(p), hi = le32(p + 4);
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^ crc_table[5][(lo >> 16) & 0xff] ^
              crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
              crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
    }
    while (n--)
        crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}
