/*
 * kernels_avx512.c -- AVX-512 F/BW/DQ/VL kernels (hamming also VPOPCNTDQ).
 *
 * Same shape as kernels_avx2.c, twice as wide: per-function target
 * attributes (no -mavx512f for the file), generic rows specialised by
 * always_inline with constant metric, rows taken one at a time, front to
 * back (blocks of four rows sharing each query load, what this file did
 * first, streamed a one-query scan at half the speed on Zen 4: the hardware
 * prefetcher follows one sequential stream best).  Tails use masked loads,
 * which neither read nor fault past the end of a row, so no tail buffers.
 *
 * This table holds only kernels measured to beat the AVX2 level on an
 * AVX-512 CPU (benchmarks/bench_kernels.py; the figures are in
 * benchmarks/README.md): int8 and float16 rows, hamming with VPOPCNTDQ, the
 * fused top-k, half -> float.  The slots it leaves empty run the AVX2
 * kernels; each place below says what was measured.  Only Zen 4 was
 * measured: an Intel AVX-512 core, with full-width FMA units, may well
 * favour the 512-bit float32 scans this file no longer has.
 * hamming_u8_avx512 needs VPOPCNTDQ, which some AVX-512 CPUs lack
 * (Skylake-X, Cascade Lake): it is a table of its own, merged by dispatch.c
 * only where the CPU has it.
 */
#if defined(__x86_64__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "fused.h"
#include "internal.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,popcnt")))
#define AVX512_POPCNT \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq,avx2,fma,popcnt")))
#define INLINE static inline __attribute__((always_inline))

enum kind { K_L2, K_IP, K_COS, K_L1, K_SQ, K_DOT };

INLINE AVX512 void step(enum kind k, __m512 qv, __m512 xv, __m512 *a, __m512 *b)
{
    switch (k) {
    case K_L2: {
        __m512 d = _mm512_sub_ps(qv, xv);
        *a = _mm512_fmadd_ps(d, d, *a);
        break;
    }
    case K_L1:
        *a = _mm512_add_ps(*a, _mm512_abs_ps(_mm512_sub_ps(qv, xv)));
        break;
    case K_IP:
    case K_DOT:
        *a = _mm512_fmadd_ps(qv, xv, *a);
        break;
    case K_SQ:
        *a = _mm512_fmadd_ps(xv, xv, *a);
        break;
    case K_COS:
        *a = _mm512_fmadd_ps(qv, xv, *a);
        *b = _mm512_fmadd_ps(xv, xv, *b);
        break;
    }
}

/* K_SQ ignores the query, which may be NULL. */
INLINE AVX512 __m512 load_q(enum kind k, const float *q)
{
    return k == K_SQ ? _mm512_setzero_ps() : _mm512_loadu_ps(q);
}

INLINE AVX512 __m512 load_q_masked(enum kind k, const float *q, __mmask16 m)
{
    return k == K_SQ ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, q);
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

/* One row: U independent accumulators of sixteen lanes (the cosine kernels'
 * query norm). */
INLINE AVX512 void rows_f32(enum kind k, int U, const float *q, const float *x, size_t dim, float qq, float *out)
{
    __m512 a[4], b[4];
    for (int u = 0; u < U; u++)
        a[u] = b[u] = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 * (size_t)U <= dim; i += 16 * (size_t)U)
        for (int u = 0; u < U; u++) {
            size_t j = i + 16 * (size_t)u;
            step(k, load_q(k, q + j), _mm512_loadu_ps(x + j), &a[u], &b[u]);
        }
    for (; i + 16 <= dim; i += 16)
        step(k, load_q(k, q + i), _mm512_loadu_ps(x + i), &a[0], &b[0]);
    if (i < dim) {
        __mmask16 m = (__mmask16)((1u << (dim - i)) - 1);
        step(k, load_q_masked(k, q + i, m), _mm512_maskz_loadu_ps(m, x + i), &a[0], &b[0]);
    }
    for (int u = 1; u < U; u++) {
        a[0] = _mm512_add_ps(a[0], a[u]);
        b[0] = _mm512_add_ps(b[0], b[u]);
    }
    *out = finish(k, _mm512_reduce_add_ps(a[0]), k == K_COS ? _mm512_reduce_add_ps(b[0]) : 0, qq);
}

/* No float32 row kernel of this level is in the table: on Zen 4 (whose
 * 512-bit operations run as two 256-bit halves) the 512-bit l2, ip, cosine,
 * l1, sqnorm and dot scans tied with the AVX2 ones or lost -- 0.95-1.05x in
 * cache and streaming, one-query flat search 0.92-1.09x from run to run, and
 * cosine 10-15% slower in cache (bench_kernels.py, bench_flat.py) -- so the
 * AVX2 kernels serve.  rows_f32 remains for the query norm of the cosine
 * kernels below. */

/* ---------- float32 query against float16 / int8 rows ------------------
 * int8 wins by 1.2-1.4x (one VPMOVSXBD widens sixteen codes), float16 by
 * 1.03-1.10x for l2, cosine and l1; ip on float16 rows tied (0.97-1.01x)
 * and runs the AVX2 kernel.
 * Sixteen elements a step, widened to float32 as they are loaded
 * (VCVTPH2PS, or VPMOVSXBD + convert), two accumulators; the tail is a
 * masked load of the codes, whose masked-out lanes are zero and add
 * nothing. */

enum coding { C_F16, C_I8 };

INLINE AVX512 __m512 load16_coded(enum coding c, const uint8_t *row, size_t i, __mmask16 m)
{
    if (c == C_F16)
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row + 2 * i));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, row + i)));
}

INLINE AVX512 void scan_coded(enum kind k, enum coding c, const void *qv, const void *xv, size_t nrows,
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
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
        size_t i = 0;
        for (; i + 32 <= dim; i += 32) {
            step(k, _mm512_loadu_ps(q + i), load16_coded(c, row, i, 0xFFFF), &a0, &b0);
            step(k, _mm512_loadu_ps(q + i + 16), load16_coded(c, row, i + 16, 0xFFFF), &a1, &b1);
        }
        for (; i + 16 <= dim; i += 16)
            step(k, _mm512_loadu_ps(q + i), load16_coded(c, row, i, 0xFFFF), &a0, &b0);
        if (i < dim) {
            __mmask16 m = (__mmask16)((1u << (dim - i)) - 1);
            step(k, _mm512_maskz_loadu_ps(m, q + i), load16_coded(c, row, i, m), &a1, &b1);
        }
        out[r] = finish(k, _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)),
                        k == K_COS ? _mm512_reduce_add_ps(_mm512_add_ps(b0, b1)) : 0, qq);
    }
}

#define CODED_KERNEL(name, k, c) \
    static AVX512 void name(const void *q, const void *x, size_t nrows, size_t dim, float *out) \
    { \
        scan_coded(k, c, q, x, nrows, dim, out); \
    }
CODED_KERNEL(l2sq_f16_avx512, K_L2, C_F16)
CODED_KERNEL(cosine_f16_avx512, K_COS, C_F16)
CODED_KERNEL(l1_f16_avx512, K_L1, C_F16)
CODED_KERNEL(l2sq_i8_avx512, K_L2, C_I8)
CODED_KERNEL(ip_i8_avx512, K_IP, C_I8)
CODED_KERNEL(cosine_i8_avx512, K_COS, C_I8)
CODED_KERNEL(l1_i8_avx512, K_L1, C_I8)

/* The bounded l2 / l1 kernels of the HNSW walk are the AVX2 ones: a 512-bit
 * version (four accumulators of sixteen lanes, the partial sum looked at
 * every 128 elements) tied in cache and lost 7-10% streaming, and over the
 * whole Fashion-MNIST recall sweep it searched at 1.33x hnswlib against the
 * AVX2 kernel's 1.45x at recall 0.95 (bench_hnsw.py, same graph, same run). */

/* The GEMM plan's select (used only where no fused kernel runs: the serial
 * level and IMGSEARCH_FLAT_BLAS) is the AVX2 one: the 512-bit version was
 * 0.94-1.36x of it from run to run, not a measured win. */

/* ---------- half -> float ------------------------------------------------ */

static AVX512 void f16_to_f32_avx512(const uint16_t *in, float *out, size_t n)
{
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(out + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, in + i)));
    }
}

static AVX512_POPCNT void hamming_u8_avx512(const void *qv, const void *xv, size_t nrows, size_t dim, float *out)
{
    const uint8_t *q = qv, *x = xv;
    if (dim == 8) {
        /* 64-bit perceptual hashes, the common case: eight rows fill one
         * register, so one load, XOR and popcount serve eight rows. */
        uint64_t qc;
        memcpy(&qc, q, 8);
        __m512i qb = _mm512_set1_epi64((long long)qc);
        size_t r = 0;
        for (; r + 8 <= nrows; r += 8) {
            __m512i v = _mm512_xor_si512(_mm512_loadu_si512(x + r * 8), qb);
            _mm256_storeu_ps(out + r, _mm512_cvtepi64_ps(_mm512_popcnt_epi64(v)));
        }
        if (r < nrows) {
            __mmask8 m = (__mmask8)((1u << (nrows - r)) - 1);
            __m512i v = _mm512_xor_si512(_mm512_maskz_loadu_epi64(m, x + r * 8), qb);
            _mm256_mask_storeu_ps(out + r, m, _mm512_cvtepi64_ps(_mm512_popcnt_epi64(v)));
        }
        return;
    }
    for (size_t r = 0; r < nrows; r++) {
        const uint8_t *xr = x + r * dim;
        __m512i acc = _mm512_setzero_si512();
        size_t i = 0;
        for (; i + 64 <= dim; i += 64) {
            __m512i v = _mm512_xor_si512(_mm512_loadu_si512(q + i), _mm512_loadu_si512(xr + i));
            acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(v));
        }
        if (i < dim) {
            __mmask64 m = (__mmask64)((1ull << (dim - i)) - 1);
            __m512i v = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, q + i), _mm512_maskz_loadu_epi8(m, xr + i));
            acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(v));
        }
        out[r] = (float)_mm512_reduce_add_epi64(acc);
    }
}

const isx_kernels isx_raw_avx512 = {
    .dist_f16 = {
        [ISX_METRIC_L2] = l2sq_f16_avx512,
        [ISX_METRIC_COSINE] = cosine_f16_avx512,
        [ISX_METRIC_L1] = l1_f16_avx512,
    },
    .dist_i8 = {
        [ISX_METRIC_L2] = l2sq_i8_avx512,
        [ISX_METRIC_IP] = ip_i8_avx512,
        [ISX_METRIC_COSINE] = cosine_i8_avx512,
        [ISX_METRIC_L1] = l1_i8_avx512,
    },
    .fused = {isx_fused_knn_avx512, ISX_FUSED_PANEL_AVX512, ISX_FUSED_ROWS_AVX512},
    .f16_to_f32 = f16_to_f32_avx512,
};

const isx_kernels isx_raw_avx512_vpopcntdq = {
    .dist = {[ISX_METRIC_HAMMING] = hamming_u8_avx512},
};

#else
/* Not x86-64: dispatch.c never selects this level.  ISO C wants a declaration. */
typedef int isx_kernels_avx512_unavailable;
#endif
