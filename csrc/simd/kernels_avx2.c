/*
 * kernels_avx2.c -- AVX2 + FMA + POPCNT kernels.
 *
 * Every function carries a target attribute instead of the file being built
 * with -mavx2, so the rest of the library (and this file's table) stays
 * runnable on any x86-64; dispatch.c only calls in here after CPUID/XGETBV.
 *
 * The float kernels are one generic row, rows_f32(), specialised by
 * always_inline with constant metric and unroll U = 4: four independent
 * accumulators (eight for cosine, which keeps two sums), enough to hide FMA
 * latency; rows go one at a time (see scan() for why not blocks of rows).
 * The last dim % 8 floats are read with
 * VMASKMOVPS, which never touches (or faults on) the masked-out bytes, so no
 * kernel reads past the end of a row.  Sums are float32 in many lanes and
 * accumulators, which keeps the rounding error near float32 resolution.
 */
#if defined(__x86_64__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "simd.h"

#define AVX2 __attribute__((target("avx2,fma,popcnt")))
#define INLINE static inline __attribute__((always_inline))

enum kind { K_L2, K_IP, K_COS, K_L1, K_SQ, K_DOT };

/* mask_window + 8 - n: the first n lanes are set */
static const int32_t mask_window[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

INLINE AVX2 void step(enum kind k, __m256 qv, __m256 xv, __m256 *a, __m256 *b)
{
    switch (k) {
    case K_L2: {
        __m256 d = _mm256_sub_ps(qv, xv);
        *a = _mm256_fmadd_ps(d, d, *a);
        break;
    }
    case K_L1:
        *a = _mm256_add_ps(*a, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(qv, xv)));
        break;
    case K_IP:
    case K_DOT:
        *a = _mm256_fmadd_ps(qv, xv, *a);
        break;
    case K_SQ:
        *a = _mm256_fmadd_ps(xv, xv, *a);
        break;
    case K_COS:
        *a = _mm256_fmadd_ps(qv, xv, *a);
        *b = _mm256_fmadd_ps(xv, xv, *b);
        break;
    }
}

/* K_SQ ignores the query, which may be NULL. */
INLINE AVX2 __m256 load_q(enum kind k, const float *q)
{
    return k == K_SQ ? _mm256_setzero_ps() : _mm256_loadu_ps(q);
}

INLINE AVX2 __m256 load_q_masked(enum kind k, const float *q, __m256i m)
{
    return k == K_SQ ? _mm256_setzero_ps() : _mm256_maskload_ps(q, m);
}

INLINE AVX2 float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The row's distance from its sums; qq = |q|^2 for cosine.  The final
 * 1 - ... is in double so that near-identical vectors keep their digits. */
INLINE float finish(enum kind k, float a, float xx, float qq)
{
    switch (k) {
    case K_IP:
        return (float)(1.0 - (double)a);
    case K_COS:
        if (qq == 0 || xx == 0)
            return 1.0f;
        return (float)(1.0 - (double)a / sqrt((double)qq * (double)xx));
    default:
        return a;
    }
}

/* One row: U independent accumulators of eight lanes. */
INLINE AVX2 void rows_f32(enum kind k, int U, const float *q, const float *x, size_t dim, float qq, float *out)
{
    __m256 a[4], b[4];
    for (int u = 0; u < U; u++)
        a[u] = b[u] = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 * (size_t)U <= dim; i += 8 * (size_t)U)
        for (int u = 0; u < U; u++) {
            size_t j = i + 8 * (size_t)u;
            step(k, load_q(k, q + j), _mm256_loadu_ps(x + j), &a[u], &b[u]);
        }
    for (; i + 8 <= dim; i += 8)
        step(k, load_q(k, q + i), _mm256_loadu_ps(x + i), &a[0], &b[0]);
    if (i < dim) {
        __m256i m = _mm256_loadu_si256((const __m256i *)(mask_window + 8 - (dim - i)));
        step(k, load_q_masked(k, q + i, m), _mm256_maskload_ps(x + i, m), &a[0], &b[0]);
    }
    for (int u = 1; u < U; u++) {
        a[0] = _mm256_add_ps(a[0], a[u]);
        b[0] = _mm256_add_ps(b[0], b[u]);
    }
    *out = finish(k, hsum(a[0]), k == K_COS ? hsum(b[0]) : 0, qq);
}

/* Rows go one at a time, each read front to back.  Blocks of four rows
 * sharing each query load were measured here (Zen 4, AVX2): a one-query
 * scan of 188 MB streamed at 12-13 GB/s with them, software prefetch or
 * not, and at 20-28 GB/s one row at a time (one sequential stream is what
 * the hardware prefetcher follows best); L2-resident chunks (l1 pairwise,
 * the query-parallel scan) were 20% faster too. */
INLINE AVX2 void scan(enum kind k, const void *qv, const void *xv, size_t nrows, size_t dim, float *out)
{
    const float *q = qv, *x = xv;
    float qq = 0;
    if (k == K_COS)
        rows_f32(K_SQ, 4, NULL, q, dim, 0, &qq);
    for (size_t r = 0; r < nrows; r++)
        rows_f32(k, 4, q, x + r * dim, dim, qq, out + r);
}

static AVX2 void l2sq_f32_avx2(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_L2, q, x, nrows, dim, out);
}

static AVX2 void ip_f32_avx2(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_IP, q, x, nrows, dim, out);
}

static AVX2 void cosine_f32_avx2(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_COS, q, x, nrows, dim, out);
}

static AVX2 void l1_f32_avx2(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_L1, q, x, nrows, dim, out);
}

static AVX2 void sqnorm_f32_avx2(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_SQ, q, x, nrows, dim, out);
}

static AVX2 void dot_f32_avx2(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_DOT, q, x, nrows, dim, out);
}

/* ---------- float32 query against float16 / int8 rows ------------------
 * One row at a time, two accumulators of eight lanes; elements are widened
 * to float32 as they are loaded (F16C VCVTPH2PS, or sign-extend + convert),
 * so the arithmetic is exactly that of the float32 kernels.  The tail is
 * copied into a zeroed 16-byte buffer: a zero element adds nothing to any
 * of the sums, and nothing is read past the end of the row. */
#define AVX2_F16C __attribute__((target("avx2,fma,popcnt,f16c")))

enum coding { C_F16, C_I8 };

INLINE AVX2_F16C __m256 load8_coded(enum coding c, const uint8_t *row, size_t i)
{
    if (c == C_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * i)));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + i))));
}

INLINE AVX2_F16C void scan_coded(enum kind k, enum coding c, const void *qv, const void *xv, size_t nrows,
                                 size_t dim, float *out)
{
    const float *q = qv;
    const uint8_t *x = xv;
    size_t esz = c == C_F16 ? 2 : 1;
    float qq = 0;
    if (k == K_COS)
        rows_f32(K_SQ, 4, NULL, q, dim, 0, &qq);
    for (size_t r = 0; r < nrows; r++) {
        const uint8_t *row = x + r * dim * esz;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
        size_t i = 0;
        for (; i + 16 <= dim; i += 16) {
            step(k, _mm256_loadu_ps(q + i), load8_coded(c, row, i), &a0, &b0);
            step(k, _mm256_loadu_ps(q + i + 8), load8_coded(c, row, i + 8), &a1, &b1);
        }
        for (; i + 8 <= dim; i += 8)
            step(k, _mm256_loadu_ps(q + i), load8_coded(c, row, i), &a0, &b0);
        if (i < dim) {
            uint8_t tail[16] = {0};
            memcpy(tail, row + i * esz, (dim - i) * esz);
            __m256i m = _mm256_loadu_si256((const __m256i *)(mask_window + 8 - (dim - i)));
            step(k, _mm256_maskload_ps(q + i, m), load8_coded(c, tail, 0), &a1, &b1);
        }
        out[r] = finish(k, hsum(_mm256_add_ps(a0, a1)), k == K_COS ? hsum(_mm256_add_ps(b0, b1)) : 0, qq);
    }
}

#define CODED_KERNEL(name, k, c) \
    static AVX2_F16C void name(const void *q, const void *x, size_t nrows, size_t dim, float *out) \
    { \
        scan_coded(k, c, q, x, nrows, dim, out); \
    }
CODED_KERNEL(l2sq_f16_avx2, K_L2, C_F16)
CODED_KERNEL(ip_f16_avx2, K_IP, C_F16)
CODED_KERNEL(cosine_f16_avx2, K_COS, C_F16)
CODED_KERNEL(l1_f16_avx2, K_L1, C_F16)
CODED_KERNEL(l2sq_i8_avx2, K_L2, C_I8)
CODED_KERNEL(ip_i8_avx2, K_IP, C_I8)
CODED_KERNEL(cosine_i8_avx2, K_COS, C_I8)
CODED_KERNEL(l1_i8_avx2, K_L1, C_I8)

INLINE uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Per-byte popcount by two 16-entry table lookups (one per nibble): AVX2 has
 * no vector popcount, and this does 32 bytes in five cheap instructions. */
INLINE AVX2 __m256i popcount_bytes(__m256i v)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low));
    __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_add_epi8(lo, hi);
}

static AVX2 void hamming_u8_avx2(const void *qv, const void *xv, size_t nrows, size_t dim, float *out)
{
    const uint8_t *q = qv, *x = xv;
    if (dim == 8) { /* 64-bit perceptual hashes: the common case */
        uint64_t qc = load64(q);
        for (size_t r = 0; r < nrows; r++)
            out[r] = (float)_mm_popcnt_u64(qc ^ load64(x + r * 8));
        return;
    }
    for (size_t r = 0; r < nrows; r++) {
        const uint8_t *xr = x + r * dim;
        __m256i acc = _mm256_setzero_si256();
        size_t i = 0;
        for (; i + 32 <= dim; i += 32) {
            __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(q + i)),
                                         _mm256_loadu_si256((const __m256i *)(xr + i)));
            /* SAD against zero sums the byte counts into four 64-bit lanes */
            acc = _mm256_add_epi64(acc, _mm256_sad_epu8(popcount_bytes(v), _mm256_setzero_si256()));
        }
        __m128i s = _mm_add_epi64(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
        uint64_t n = (uint64_t)_mm_cvtsi128_si64(s) + (uint64_t)_mm_extract_epi64(s, 1);
        for (; i + 8 <= dim; i += 8)
            n += (uint64_t)_mm_popcnt_u64(load64(q + i) ^ load64(xr + i));
        for (; i < dim; i++)
            n += (uint64_t)_mm_popcnt_u32((uint32_t)(q[i] ^ xr[i]));
        out[r] = (float)n;
    }
}

const isx_kernels isx_kernels_avx2 = {
    .dist = {
        [ISX_METRIC_L2] = l2sq_f32_avx2,
        [ISX_METRIC_IP] = ip_f32_avx2,
        [ISX_METRIC_COSINE] = cosine_f32_avx2,
        [ISX_METRIC_L1] = l1_f32_avx2,
        [ISX_METRIC_HAMMING] = hamming_u8_avx2,
    },
    .sqnorm = sqnorm_f32_avx2,
    .dot = dot_f32_avx2,
    .dist_f16 = {
        [ISX_METRIC_L2] = l2sq_f16_avx2,
        [ISX_METRIC_IP] = ip_f16_avx2,
        [ISX_METRIC_COSINE] = cosine_f16_avx2,
        [ISX_METRIC_L1] = l1_f16_avx2,
    },
    .dist_i8 = {
        [ISX_METRIC_L2] = l2sq_i8_avx2,
        [ISX_METRIC_IP] = ip_i8_avx2,
        [ISX_METRIC_COSINE] = cosine_i8_avx2,
        [ISX_METRIC_L1] = l1_i8_avx2,
    },
};

#else
/* Not x86-64: dispatch.c never selects this level.  ISO C wants a declaration. */
typedef int isx_kernels_avx2_unavailable;
#endif
