/*
 * kernels_avx512.c -- AVX-512 F/BW/DQ/VL kernels (hamming also VPOPCNTDQ).
 *
 * Same shape as kernels_avx2.c, twice as wide: per-function target
 * attributes (no -mavx512f for the file), and one generic block rows_f32()
 * specialised by always_inline with constant metric, rows R and unroll U.
 * Blocks of R = 4 rows share each query load; U = 2 gives eight independent
 * FMA chains (sixteen sums for cosine, which 32 ZMM registers hold).  Tails
 * use masked loads, which neither read nor fault past the end of a row.
 *
 * hamming_u8_avx512 needs VPOPCNTDQ, which some AVX-512 CPUs lack; it has
 * its own target attribute, and dispatch.c swaps in the AVX2 kernel there.
 */
#if defined(__x86_64__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "simd.h"

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

INLINE AVX512 void rows_f32(enum kind k, int R, int U, const float *q, const float *x, size_t dim, float qq,
                            float *out)
{
    __m512 a[4][4], b[4][4];
    for (int r = 0; r < R; r++)
        for (int u = 0; u < U; u++)
            a[r][u] = b[r][u] = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 * (size_t)U <= dim; i += 16 * (size_t)U)
        for (int u = 0; u < U; u++) {
            __m512 qv = load_q(k, q + i + 16 * (size_t)u);
            for (int r = 0; r < R; r++)
                step(k, qv, _mm512_loadu_ps(x + (size_t)r * dim + i + 16 * (size_t)u), &a[r][u], &b[r][u]);
        }
    for (; i + 16 <= dim; i += 16) {
        __m512 qv = load_q(k, q + i);
        for (int r = 0; r < R; r++)
            step(k, qv, _mm512_loadu_ps(x + (size_t)r * dim + i), &a[r][0], &b[r][0]);
    }
    if (i < dim) {
        __mmask16 m = (__mmask16)((1u << (dim - i)) - 1);
        __m512 qv = load_q_masked(k, q + i, m);
        for (int r = 0; r < R; r++)
            step(k, qv, _mm512_maskz_loadu_ps(m, x + (size_t)r * dim + i), &a[r][0], &b[r][0]);
    }
    for (int r = 0; r < R; r++) {
        for (int u = 1; u < U; u++) {
            a[r][0] = _mm512_add_ps(a[r][0], a[r][u]);
            b[r][0] = _mm512_add_ps(b[r][0], b[r][u]);
        }
        out[r] = finish(k, _mm512_reduce_add_ps(a[r][0]), k == K_COS ? _mm512_reduce_add_ps(b[r][0]) : 0, qq);
    }
}

INLINE AVX512 void scan(enum kind k, const void *qv, const void *xv, size_t nrows, size_t dim, float *out)
{
    const float *q = qv, *x = xv;
    float qq = 0;
    if (k == K_COS)
        rows_f32(K_SQ, 1, 4, NULL, q, dim, 0, &qq);
    size_t r = 0;
    for (; r + 4 <= nrows; r += 4)
        rows_f32(k, 4, 2, q, x + r * dim, dim, qq, out + r);
    for (; r < nrows; r++)
        rows_f32(k, 1, 4, q, x + r * dim, dim, qq, out + r);
}

static AVX512 void l2sq_f32_avx512(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_L2, q, x, nrows, dim, out);
}

static AVX512 void ip_f32_avx512(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_IP, q, x, nrows, dim, out);
}

static AVX512 void cosine_f32_avx512(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_COS, q, x, nrows, dim, out);
}

static AVX512 void l1_f32_avx512(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_L1, q, x, nrows, dim, out);
}

static AVX512 void sqnorm_f32_avx512(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_SQ, q, x, nrows, dim, out);
}

static AVX512 void dot_f32_avx512(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_DOT, q, x, nrows, dim, out);
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

const isx_kernels isx_kernels_avx512 = {
    .dist = {
        [ISX_METRIC_L2] = l2sq_f32_avx512,
        [ISX_METRIC_IP] = ip_f32_avx512,
        [ISX_METRIC_COSINE] = cosine_f32_avx512,
        [ISX_METRIC_L1] = l1_f32_avx512,
        [ISX_METRIC_HAMMING] = hamming_u8_avx512,
    },
    .sqnorm = sqnorm_f32_avx512,
    .dot = dot_f32_avx512,
};

#else
/* Not x86-64: dispatch.c never selects this level.  ISO C wants a declaration. */
typedef int isx_kernels_avx512_unavailable;
#endif
