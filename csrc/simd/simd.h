/*
 * simd.h -- distance kernels and their run-time dispatch.
 *
 * Kernels are named metric_dtype_isa (l2sq_f32_avx512, l1_f32_serial, ...)
 * and share one signature, so a table of function pointers holds them:
 *
 *     void kernel(const void *q, const void *x, size_t nrows, size_t dim,
 *                 float *out);
 *
 * computes out[r] = dist(q, x + r * dim) for r in [0, nrows): one query
 * against `nrows` contiguous rows.  The one-to-one case is nrows == 1.
 * `dim` counts elements: floats for *_f32, bytes for hamming_u8.
 * Rows are contiguous (row stride == dim); no alignment is assumed.
 *
 * Every ISA level has the full set of kernels; a level that lacks a metric
 * points at the best lower one.  The table is filled once, at import, from
 * CPUID and the operating system's enabled register state (XGETBV), and an
 * environment variable IMGSEARCH_SIMD=serial|avx2|avx512 lowers the level.
 */
#ifndef ISX_SIMD_H
#define ISX_SIMD_H

#include "../common/isx.h"

typedef void (*isx_dist_fn)(const void *q, const void *x, size_t nrows, size_t dim, float *out);

typedef enum {
    ISX_ISA_SERIAL = 0,
    ISX_ISA_AVX2 = 1,   /* AVX2 + FMA + POPCNT */
    ISX_ISA_AVX512 = 2, /* AVX-512 F/BW/DQ/VL (+ VPOPCNTDQ for hamming) */
    ISX_ISA_COUNT = 3
} isx_isa;

typedef struct {
    /* indexed by isx_metric (1..ISX_METRIC_MAX); slot 0 unused */
    isx_dist_fn dist[ISX_METRIC_MAX + 1];
    /* sum of squares of each row: out[r] = |x_r|^2 (f32), used for norms */
    isx_dist_fn sqnorm;
    /* dot product of q with each row: out[r] = q . x_r (f32) */
    isx_dist_fn dot;
    /* A float32 query against compressed rows, same metrics and meaning as
     * dist (l2, ip, cosine, l1; the hamming slot is NULL): rows of IEEE
     * half floats (uint16), or of int8 taken as the numbers they hold (the
     * caller maps codes back to values: see index/hnsw.c's quantiser). */
    isx_dist_fn dist_f16[ISX_METRIC_MAX + 1];
    isx_dist_fn dist_i8[ISX_METRIC_MAX + 1];
} isx_kernels;

/* Detect the CPU once (idempotent, thread-safe after the first call). */
void isx_simd_init(void);
/* The level in use, and the best level this CPU + OS supports. */
isx_isa isx_simd_level(void);
isx_isa isx_simd_supported(void);
const char *isx_isa_name(isx_isa isa);
/* The active table, and the table of a given level (NULL if unsupported by
 * the CPU: tests use it to run each level alone). */
const isx_kernels *isx_kernels_active(void);
const isx_kernels *isx_kernels_for(isx_isa isa);
/* Individual CPU features, for capabilities(). */
typedef struct {
    int sse42, popcnt, avx, avx2, fma, f16c;
    int avx512f, avx512bw, avx512dq, avx512vl, avx512vpopcntdq, avx512fp16, avx512vnni;
    int os_avx, os_avx512; /* XCR0 has the YMM / ZMM state enabled */
} isx_cpu_features;
const isx_cpu_features *isx_cpu(void);

/* Per-ISA tables, defined in kernels_<isa>.c. */
extern const isx_kernels isx_kernels_serial;
extern const isx_kernels isx_kernels_avx2;
extern const isx_kernels isx_kernels_avx512;

#endif
