/*
 * kernels_avx2.c -- AVX2 + FMA + F16C + POPCNT kernels (the AVX2 level;
 * the fused top-k and KD-tree leaf kernels of this level have files of
 * their own, fused_avx2.c and kdleaf_avx2.c).
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

#include "fused.h"
#include "internal.h"
#include "kdleaf.h"

#define AVX2 __attribute__((target("avx2,fma,popcnt,f16c")))
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

enum coding { C_F16, C_I8 };

INLINE AVX2 __m256 load8_coded(enum coding c, const uint8_t *row, size_t i)
{
    if (c == C_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * i)));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + i))));
}

INLINE AVX2 void scan_coded(enum kind k, enum coding c, const void *qv, const void *xv, size_t nrows,
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
    static AVX2 void name(const void *q, const void *x, size_t nrows, size_t dim, float *out) \
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

/* ---------- bounded l2 / l1 (the HNSW walk) ----------------------------
 * Most rows a beam search measures are rejected: their distance is not below
 * the current ef-th best.  The partial sums of l2 and l1 only grow, so once
 * one reaches that bound the rest of the row is neither computed nor loaded;
 * it is looked at every ISX_BOUNDED_CHECK elements, and a row that is kept
 * is summed in full, so every returned distance is exact. */

INLINE AVX2 __m256 term(int l1, __m256 q, __m256 x, __m256 acc)
{
    __m256 d = _mm256_sub_ps(q, x);
    return l1 ? _mm256_add_ps(acc, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), d)) : _mm256_fmadd_ps(d, d, acc);
}

INLINE AVX2 float bounded_avx2(int l1, const float *q, const float *x, size_t dim, float bound)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0, check = ISX_BOUNDED_CHECK;
    for (; i + 32 <= dim; i += 32) {
        a0 = term(l1, _mm256_loadu_ps(q + i), _mm256_loadu_ps(x + i), a0);
        a1 = term(l1, _mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = term(l1, _mm256_loadu_ps(q + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = term(l1, _mm256_loadu_ps(q + i + 24), _mm256_loadu_ps(x + i + 24), a3);
        if (i + 32 >= check) {
            float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
            if (s >= bound)
                return s;
            check += ISX_BOUNDED_CHECK;
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

static AVX2 float l2sq_bounded_f32_avx2(const float *q, const float *x, size_t dim, float bound)
{
    return bounded_avx2(0, q, x, dim, bound);
}

static AVX2 float l1_bounded_f32_avx2(const float *q, const float *x, size_t dim, float bound)
{
    return bounded_avx2(1, q, x, dim, bound);
}

/* ---------- the GEMM plan's select: 16 lanes a step -------------------- */

static AVX2 void select_f32_avx2(const float *row, const float *scale, const float *bias, size_t n, size_t slot0,
                                 const uint64_t *allowed, isx_topk *h)
{
    float bound = isx_topk_bound(h);
    __m256 vb = _mm256_set1_ps(bound);
    float lanes[16];
    size_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m256 v0 = _mm256_loadu_ps(row + j), v1 = _mm256_loadu_ps(row + j + 8);
        if (scale) {
            v0 = _mm256_mul_ps(v0, _mm256_loadu_ps(scale + j));
            v1 = _mm256_mul_ps(v1, _mm256_loadu_ps(scale + j + 8));
        }
        if (bias) {
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(bias + j));
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(bias + j + 8));
        }
        unsigned m = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v0, vb, _CMP_LT_OQ)) |
                     ((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v1, vb, _CMP_LT_OQ)) << 8);
        if (!m)
            continue;
        _mm256_storeu_ps(lanes, v0);
        _mm256_storeu_ps(lanes + 8, v1);
        for (; m; m &= m - 1) {
            unsigned lane = (unsigned)__builtin_ctz(m);
            if (lanes[lane] < bound && isx_row_allowed(allowed, slot0 + j + lane)) {
                isx_topk_push(h, lanes[lane], (int64_t)(slot0 + j + lane));
                bound = isx_topk_bound(h);
            }
        }
        vb = _mm256_set1_ps(bound);
    }
    if (j < n)
        isx_raw_serial.select(row + j, scale ? scale + j : NULL, bias ? bias + j : NULL, n - j, slot0 + j, allowed, h);
}

/* ---------- KD-tree leaves: eight rows a group from dim 8 ---------------- */

static void kd_dists_avx2(const float *rows, const uint32_t *perm, size_t s, size_t e, const float *q, size_t dim,
                          int l1, float *out)
{
    if (dim < ISX_KDLEAF_SIMD_MIN_DIM)
        isx_kd_dists_serial(rows, perm, s, e, q, dim, l1, out);
    else
        isx_kd_dists_avx2(rows, perm, s, e, q, dim, l1, out);
}

static void kd_dists_ptrs_avx2(const float *const *rows, size_t n, const float *q, size_t dim, int l1, float *out)
{
    if (dim < ISX_KDLEAF_SIMD_MIN_DIM)
        isx_kd_dists_ptrs_serial(rows, n, q, dim, l1, out);
    else
        isx_kd_dists_ptrs_avx2(rows, n, q, dim, l1, out);
}

/* ---------- half -> float (F16C) ----------------------------------------- */

static AVX2 void f16_to_f32_f16c(const uint16_t *in, float *out, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i))));
    if (i < n) {
        uint16_t tail[8] = {0};
        float wide[8];
        memcpy(tail, in + i, (n - i) * sizeof(uint16_t));
        _mm256_storeu_ps(wide, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)tail)));
        memcpy(out + i, wide, (n - i) * sizeof(float));
    }
}

const isx_kernels isx_raw_avx2 = {
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
    .bounded = {
        [ISX_METRIC_L2] = l2sq_bounded_f32_avx2,
        [ISX_METRIC_L1] = l1_bounded_f32_avx2,
    },
    .fused = {isx_fused_knn_avx2, ISX_FUSED_PANEL_AVX2, ISX_FUSED_ROWS_AVX2},
    .select = select_f32_avx2,
    .kd_dists = kd_dists_avx2,
    .kd_dists_ptrs = kd_dists_ptrs_avx2,
    .f16_to_f32 = f16_to_f32_f16c,
    .crc32c = isx_crc32c_sse42,
    .pq4_scan = isx_pq4_scan_avx2,
    .pq4_quantize = isx_pq4_quantize_avx2,
    .pq_lut_ip = isx_pq_lut_ip_avx2,
    .nearest_small = isx_nearest_small_avx2,
};

#else
/* Not x86-64: dispatch.c never selects this level.  ISO C wants a declaration. */
typedef int isx_kernels_avx2_unavailable;
#endif
