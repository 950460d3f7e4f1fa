/*
 * kernels_serial.c -- portable kernels: the fallback for CPUs without AVX2.
 *
 * One generic scan, specialised per metric by inlining with a constant
 * `kind`, so the seven kernels share a single loop that cannot drift apart.
 * Sums are kept in double over four independent accumulators: the latency
 * chains overlap, and the rounding error stays far below float32 resolution.
 * The other slots' portable kernels follow: bounded l2/l1 (float sums, as
 * the wider levels', since the HNSW walk compares them with each other),
 * the GEMM plan's select, the KD-tree leaf scans, half -> float.
 */
#include <math.h>
#include <string.h>

#include "internal.h"

enum kind { K_L2, K_IP, K_COS, K_L1, K_SQ, K_DOT };

#define INLINE_S static inline __attribute__((always_inline))

/* Adds element i's contribution, given the row's element xi as a double;
 * K_SQ never touches q, which may be NULL. */
static inline void accumulate_value(enum kind k, const float *q, size_t i, double xi, double *a, double *b)
{
    switch (k) {
    case K_L2: {
        double d = (double)q[i] - xi;
        *a += d * d;
        break;
    }
    case K_L1:
        *a += fabs((double)q[i] - xi);
        break;
    case K_IP:
    case K_DOT:
        *a += (double)q[i] * xi;
        break;
    case K_SQ:
        *a += xi * xi;
        break;
    case K_COS:
        *a += (double)q[i] * xi;
        *b += xi * xi;
        break;
    }
}

static inline void accumulate(enum kind k, const float *q, const float *x, size_t i, double *a, double *b)
{
    accumulate_value(k, q, i, x[i], a, b);
}

/* Sum over one row: a = main sum, *b = |x|^2 for cosine. */
static inline double row_sum(enum kind k, const float *q, const float *x, size_t dim, double *b)
{
    double a4[4] = {0, 0, 0, 0}, b4[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= dim; i += 4)
        for (int j = 0; j < 4; j++)
            accumulate(k, q, x, i + (size_t)j, &a4[j], &b4[j]);
    for (; i < dim; i++)
        accumulate(k, q, x, i, &a4[0], &b4[0]);
    *b = (b4[0] + b4[1]) + (b4[2] + b4[3]);
    return (a4[0] + a4[1]) + (a4[2] + a4[3]);
}

/* The distance of one row from its sums; qq = |q|^2 for cosine. */
static inline float finish(enum kind k, double s, double xx, double qq)
{
    switch (k) {
    case K_IP:
        return (float)(1.0 - s);
    case K_COS:
        return qq == 0 || xx == 0 ? 1.0f : (float)(1.0 - s / sqrt(qq * xx));
    default:
        return (float)s;
    }
}

static inline void scan(enum kind k, const void *qv, const void *xv, size_t nrows, size_t dim, float *out)
{
    const float *q = qv, *x = xv;
    double qq = 0, unused;
    if (k == K_COS)
        qq = row_sum(K_SQ, NULL, q, dim, &unused);
    for (size_t r = 0; r < nrows; r++) {
        double xx;
        double s = row_sum(k, q, x + r * dim, dim, &xx);
        out[r] = finish(k, s, xx, qq);
    }
}

/* ---------- float32 query against float16 / int8 rows ------------------ */

enum coding { C_F16, C_I8 };

/* IEEE binary16 -> float, exactly (normals, subnormals, inf, NaN). */
static inline double half_to_double(uint16_t h)
{
    int e = (h >> 10) & 0x1f;
    double m = h & 0x3ff;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(m + 1024, e - 25);
    return (h & 0x8000) ? -v : v;
}

static inline double coded_value(enum coding c, const void *row, size_t i)
{
    return c == C_F16 ? half_to_double(((const uint16_t *)row)[i]) : (double)((const int8_t *)row)[i];
}

static inline void scan_coded(enum kind k, enum coding c, const void *qv, const void *xv, size_t nrows,
                              size_t dim, float *out)
{
    const float *q = qv;
    const uint8_t *x = xv;
    size_t row_bytes = dim * (c == C_F16 ? 2 : 1);
    double qq = 0, unused;
    if (k == K_COS)
        qq = row_sum(K_SQ, NULL, q, dim, &unused);
    for (size_t r = 0; r < nrows; r++) {
        const void *row = x + r * row_bytes;
        double a4[4] = {0, 0, 0, 0}, b4[4] = {0, 0, 0, 0};
        for (size_t i = 0; i < dim; i++)
            accumulate_value(k, q, i, coded_value(c, row, i), &a4[i & 3], &b4[i & 3]);
        double xx = (b4[0] + b4[1]) + (b4[2] + b4[3]);
        out[r] = finish(k, (a4[0] + a4[1]) + (a4[2] + a4[3]), xx, qq);
    }
}

#define CODED_KERNEL(name, k, c) \
    static void name(const void *q, const void *x, size_t nrows, size_t dim, float *out) \
    { \
        scan_coded(k, c, q, x, nrows, dim, out); \
    }
CODED_KERNEL(l2sq_f16_serial, K_L2, C_F16)
CODED_KERNEL(ip_f16_serial, K_IP, C_F16)
CODED_KERNEL(cosine_f16_serial, K_COS, C_F16)
CODED_KERNEL(l1_f16_serial, K_L1, C_F16)
CODED_KERNEL(l2sq_i8_serial, K_L2, C_I8)
CODED_KERNEL(ip_i8_serial, K_IP, C_I8)
CODED_KERNEL(cosine_i8_serial, K_COS, C_I8)
CODED_KERNEL(l1_i8_serial, K_L1, C_I8)

static void l2sq_f32_serial(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_L2, q, x, nrows, dim, out);
}

static void ip_f32_serial(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_IP, q, x, nrows, dim, out);
}

static void cosine_f32_serial(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_COS, q, x, nrows, dim, out);
}

static void l1_f32_serial(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_L1, q, x, nrows, dim, out);
}

static void sqnorm_f32_serial(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_SQ, q, x, nrows, dim, out);
}

static void dot_f32_serial(const void *q, const void *x, size_t nrows, size_t dim, float *out)
{
    scan(K_DOT, q, x, nrows, dim, out);
}

/* SWAR popcount: __builtin_popcountll would become a libgcc call without
 * -mpopcnt, and this file must run on any x86-64. */
static inline unsigned popcount64(uint64_t v)
{
    v = v - ((v >> 1) & 0x5555555555555555ull);
    v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
    v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0full;
    return (unsigned)((v * 0x0101010101010101ull) >> 56);
}

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void hamming_u8_serial(const void *qv, const void *xv, size_t nrows, size_t dim, float *out)
{
    const uint8_t *q = qv, *x = xv;
    if (dim == 8) { /* 64-bit perceptual hashes: the common case */
        uint64_t qc = load64(q);
        for (size_t r = 0; r < nrows; r++)
            out[r] = (float)popcount64(qc ^ load64(x + r * 8));
        return;
    }
    for (size_t r = 0; r < nrows; r++) {
        const uint8_t *xr = x + r * dim;
        uint64_t n = 0;
        size_t i = 0;
        for (; i + 8 <= dim; i += 8)
            n += popcount64(load64(q + i) ^ load64(xr + i));
        for (; i < dim; i++)
            n += popcount64((uint64_t)(q[i] ^ xr[i]));
        out[r] = (float)n;
    }
}


/* ---------- bounded l2 / l1 (the HNSW walk) ----------------------------
 * The partial sum is looked at every ISX_BOUNDED_CHECK elements; a row that
 * is kept is summed in full, so every returned distance is exact. */

INLINE_S float bounded_serial(int l1, const float *q, const float *x, size_t dim, float bound)
{
    float a[4] = {0, 0, 0, 0};
    size_t i = 0;
    while (i < dim) {
        size_t end = i + ISX_BOUNDED_CHECK < dim ? i + ISX_BOUNDED_CHECK : dim;
        for (; i + 4 <= end; i += 4)
            for (int j = 0; j < 4; j++) {
                float d = q[i + (size_t)j] - x[i + (size_t)j];
                a[j] += l1 ? fabsf(d) : d * d;
            }
        for (; i < end; i++) {
            float d = q[i] - x[i];
            a[0] += l1 ? fabsf(d) : d * d;
        }
        float s = (a[0] + a[1]) + (a[2] + a[3]);
        if (s >= bound)
            return s;
    }
    return (a[0] + a[1]) + (a[2] + a[3]);
}

static float l2sq_bounded_f32_serial(const float *q, const float *x, size_t dim, float bound)
{
    return bounded_serial(0, q, x, dim, bound);
}

static float l1_bounded_f32_serial(const float *q, const float *x, size_t dim, float bound)
{
    return bounded_serial(1, q, x, dim, bound);
}

/* ---------- the GEMM plan's select ------------------------------------- */

static void select_f32_serial(const float *row, const float *scale, const float *bias, size_t n, size_t slot0,
                              const uint64_t *allowed, isx_topk *h)
{
    float bound = isx_topk_bound(h);
    for (size_t j = 0; j < n; j++) {
        float v = row[j];
        if (scale)
            v *= scale[j];
        if (bias)
            v += bias[j];
        if (v < bound && isx_row_allowed(allowed, slot0 + j)) {
            isx_topk_push(h, v, (int64_t)(slot0 + j));
            bound = isx_topk_bound(h);
        }
    }
}

/* ---------- KD-tree leaves ---------------------------------------------- */

/* Distance of one row: four partial sums the compiler keeps in one vector
 * register (D a constant after inlining). */
INLINE_S float row_dist(const float *x, const float *q, size_t D, int l1)
{
    if (D < 4) {
        float acc = 0.0f;
        for (size_t j = 0; j < D; j++) {
            float t = x[j] - q[j];
            acc += l1 ? fabsf(t) : t * t;
        }
        return acc;
    }
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    size_t j = 0;
    for (; j + 4 <= D; j += 4) {
        for (size_t u = 0; u < 4; u++) {
            float t = x[j + u] - q[j + u];
            a[u] += l1 ? fabsf(t) : t * t;
        }
    }
    for (size_t u = 0; j < D; j++, u++) {
        float t = x[j] - q[j];
        a[u] += l1 ? fabsf(t) : t * t;
    }
    return (a[0] + a[1]) + (a[2] + a[3]);
}

INLINE_S void rows_dists(const float *rows, const uint32_t *perm, size_t s,
                                                             size_t e, const float *q, size_t D, int l1, float *out)
{
    if (perm) {
        /* scattered rows: ask for all of them before the first is needed */
        for (size_t i = s; i < e; i++)
            __builtin_prefetch(rows + (size_t)perm[i] * D);
        for (size_t i = s; i < e; i++)
            out[i - s] = row_dist(rows + (size_t)perm[i] * D, q, D, l1);
    } else {
        const float *x = rows + s * D;
        for (size_t i = s; i < e; i++, x += D)
            out[i - s] = row_dist(x, q, D, l1);
    }
}

/* Rows [s, e), with the loop specialised for the common small dimensions. */
void isx_kd_dists_serial(const float *rows, const uint32_t *perm, size_t s, size_t e, const float *q,
                         size_t dim, int l1, float *out)
{
#define KD_CASE(D)                                       \
    case D:                                              \
        if (l1)                                          \
            rows_dists(rows, perm, s, e, q, D, 1, out);  \
        else                                             \
            rows_dists(rows, perm, s, e, q, D, 0, out);  \
        return;
    switch (dim) {
        KD_CASE(1) KD_CASE(2) KD_CASE(3) KD_CASE(4) KD_CASE(5) KD_CASE(6) KD_CASE(7) KD_CASE(8)
        KD_CASE(10) KD_CASE(12) KD_CASE(16)
    default:
        if (l1)
            rows_dists(rows, perm, s, e, q, dim, 1, out);
        else
            rows_dists(rows, perm, s, e, q, dim, 0, out);
    }
#undef KD_CASE
}

void isx_kd_dists_ptrs_serial(const float *const *rows, size_t n, const float *q, size_t dim, int l1,
                              float *out)
{
    for (size_t i = 0; i < n; i++)
        isx_kd_dists_serial(rows[i], NULL, 0, 1, q, dim, l1, out + i);
}

/* ---------- half -> float ---------------------------------------------- */

static void f16_to_f32_serial(const uint16_t *in, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (float)half_to_double(in[i]);
}

const isx_kernels isx_raw_serial = {
    .dist = {
        [ISX_METRIC_L2] = l2sq_f32_serial,
        [ISX_METRIC_IP] = ip_f32_serial,
        [ISX_METRIC_COSINE] = cosine_f32_serial,
        [ISX_METRIC_L1] = l1_f32_serial,
        [ISX_METRIC_HAMMING] = hamming_u8_serial,
    },
    .sqnorm = sqnorm_f32_serial,
    .dot = dot_f32_serial,
    .dist_f16 = {
        [ISX_METRIC_L2] = l2sq_f16_serial,
        [ISX_METRIC_IP] = ip_f16_serial,
        [ISX_METRIC_COSINE] = cosine_f16_serial,
        [ISX_METRIC_L1] = l1_f16_serial,
    },
    .dist_i8 = {
        [ISX_METRIC_L2] = l2sq_i8_serial,
        [ISX_METRIC_IP] = ip_i8_serial,
        [ISX_METRIC_COSINE] = cosine_i8_serial,
        [ISX_METRIC_L1] = l1_i8_serial,
    },
    .bounded = {
        [ISX_METRIC_L2] = l2sq_bounded_f32_serial,
        [ISX_METRIC_L1] = l1_bounded_f32_serial,
    },
    .select = select_f32_serial,
    .kd_dists = isx_kd_dists_serial,
    .kd_dists_ptrs = isx_kd_dists_ptrs_serial,
    .f16_to_f32 = f16_to_f32_serial,
    .crc32c = isx_crc32c_serial,
    .pq8_scan = isx_pq8_scan_serial,
    .pq4_scan = isx_pq4_scan_serial,
    .pq4_quantize = isx_pq4_quantize_serial,
    .pq_lut_ip = isx_pq_lut_ip_serial,
    .nearest_small = isx_nearest_small_serial,
};
