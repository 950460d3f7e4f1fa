/*
 * simd.h -- every CPU-specific routine of the library, behind one table.
 *
 * Nothing outside csrc/simd/ names an instruction set or asks the CPU what
 * it has: indexes, the file format and the bindings take their kernels from
 * isx_kernels_active() (or from a table stored when an index is created).
 * The table is filled once, at import, from CPUID and the operating
 * system's enabled register state (XGETBV); IMGSEARCH_SIMD=serial|avx2|avx512
 * lowers the level for every slot at once, f16c and crc32 included.
 *
 * Kernels are named metric_dtype_isa (l2sq_f32_avx512, l1_bounded_f32_avx2,
 * crc32c_u8_sse42, ...).  Each ISA file (kernels_<isa>.c, fused_<isa>.c,
 * kdleaf_<isa>.c) contributes a raw table that holds only the kernels
 * written for it; dispatch.c builds the table of level L slot by slot from
 * the highest level <= L that has a kernel there.  So a level without a
 * kernel of its own -- or whose kernel was measured to lose to the level
 * below on the CPUs that pick it -- runs the lower level's, and every level
 * is at least as fast as every lower one, kernel by kernel.  Which level
 * each slot comes from is reported by isx_kernel_origin() (and
 * imgsearch.capabilities()["kernels"]).
 *
 * The slots:
 *   dist[metric]       out[r] = dist(q, x + r * dim), r in [0, nrows): one
 *                      query against contiguous rows (dim counts floats, or
 *                      bytes for hamming).  No alignment is assumed.
 *   sqnorm, dot        out[r] = |x_r|^2, q . x_r (float32).
 *   dist_f16/_i8[m]    a float32 query against rows of IEEE halves or of int8
 *                      taken as the numbers they hold (the hamming slot is
 *                      NULL).
 *   bounded[m]         l2 / l1 of one float32 row that stops once a partial
 *                      sum reaches `bound` (returning that partial sum, >=
 *                      bound); with bound = +inf the full distance.  NULL for
 *                      metrics whose partial sums are not monotone.
 *   fused              dot products of packed query panels fused with top-k
 *                      selection (see fused.h); fn NULL where none pays.
 *   select             v = row[j] * scale[j] + bias[j] offered to one heap.
 *   kd_dists(_ptrs)    the KD-tree's leaf scans (see kdleaf.h).
 *   f16_to_f32         widen n halves.
 *   pq_lut_ip          a query's inner-product PQ table from transposed codebooks.
 *   pq8_scan           ADC sums of 8-bit PQ codes from a float lookup table.
 *   pq4_quantize       the uint8 tables of pq4_scan from float ones.
 *   pq4_scan           4-bit fast-scan: uint8 lookup tables, blocks of 32
 *                      codes with transposed nibbles, uint16 sums and a
 *                      threshold mask (pqscan.h describes both layouts).
 *   crc32c             CRC-32C (Castagnoli) of n bytes, continuing from crc.
 *   nearest_small      nearest of k centroids for d <= 32 (k-means assignment
 *                      and PQ encoding in small sub-spaces; nearest.h).
 */
#ifndef ISX_SIMD_H
#define ISX_SIMD_H

#include "../common/isx.h"
#include "../common/topk.h"

typedef void (*isx_dist_fn)(const void *q, const void *x, size_t nrows, size_t dim, float *out);
typedef float (*isx_bounded_fn)(const float *q, const float *x, size_t dim, float bound);
/* Offer rows [r0, r1) of X (row stride d) to the heaps of the m packed
 * queries.  scale/bias may be NULL (1 / 0); allowed is a bitmap over rows or
 * NULL (all rows).  Row r reaches the heaps as slot slot0 + r. */
typedef void (*isx_fused_fn)(const float *packed, size_t m, size_t d, const float *X, size_t r0, size_t r1,
                             const float *scale, const float *bias, const uint64_t *allowed, isx_topk *heaps,
                             size_t slot0);
/* v = row[j] (* scale[j]) (+ bias[j]) for j < n, pushed into h as slot
 * slot0 + j when it beats h's bound and allowed (a bitmap over slots, or
 * NULL) has the slot. */
typedef void (*isx_select_fn)(const float *row, const float *scale, const float *bias, size_t n, size_t slot0,
                              const uint64_t *allowed, isx_topk *h);
/* Distances of q to rows [s, e) of `rows` (through perm when not NULL);
 * l1 selects Manhattan, else squared Euclidean. */
typedef void (*isx_kd_fn)(const float *rows, const uint32_t *perm, size_t s, size_t e, const float *q,
                          size_t dim, int l1, float *out);
typedef void (*isx_kd_ptrs_fn)(const float *const *rows, size_t n, const float *q, size_t dim, int l1,
                               float *out);
typedef void (*isx_f16_fn)(const uint16_t *in, float *out, size_t n);
typedef uint32_t (*isx_crc_fn)(uint32_t crc, const void *data, size_t n);
/* lut[j * ksub + c] = -sum_{t < dsub} q[j * dsub + t] * books_t[(j * dsub + t) * ksub + c]:
 * the inner-product table of q against codebooks stored transposed (element-
 * major within each sub-quantizer, so the codewords are the vector lanes);
 * ksub is a multiple of 16. */
typedef void (*isx_pq_lut_fn)(const float *q, const float *books_t, size_t m, size_t dsub, size_t ksub, float *lut);
/* The uint8 tables of pq4 from m float tables of 16 entries (lut, m x 16):
 * entry e of table j becomes round((lut[j][e] - min_j) * scale) in the
 * pqscan.h table layout, with one scale = 255 / max_j (max_j - min_j) (1 when
 * every table is flat); returns sum_j min_j, so that a pq4 sum S stands for
 * the float sum  returned + S / scale.  Bytes of an odd m's padding half are
 * not written. */
typedef float (*isx_pq4_quant_fn)(const float *lut, size_t m, uint8_t *qtab, float *scale);
/* out[i] = sum_{j < m} lut[j * 256 + codes[i * m + j]] for i < n. */
typedef void (*isx_pq8_fn)(const float *lut, const uint8_t *codes, size_t n, size_t m, float *out);
/* For each of nblocks blocks of 32 codes (npairs x 32 bytes each, pqscan.h):
 * out[32 b + i] = the uint16 sum of the block's vector i over the npairs x 2
 * uint8 tables of lut (npairs x 32 bytes), and bit i of masks[b] set when
 * that sum <= thresh.  npairs <= 128, so no sum can overflow. */
typedef void (*isx_pq4_fn)(const uint8_t *codes, size_t nblocks, size_t npairs, const uint8_t *lut,
                           uint16_t thresh, uint16_t *out, uint32_t *masks);

/* For each of the n points X + i * ldx (d <= ISX_NEAREST_MAX_D floats): the
 * nearest of the k (1 <= k <= ISX_NEAREST_MAX_K) centroids stored transposed
 * in Ct (nearest.h), by squared L2 computed as the direct sum of squared
 * differences -- exact to float32 rounding relative to the distance, where
 * |x|^2 - 2 x.c + |c|^2 is not, so no norms are taken.  assign[i] the arg-min,
 * ties to the lower index (0 if every distance overflows to +inf); dist[i]
 * its distance; dist2 (may be NULL) the second smallest of the k distances
 * (equal to dist[i] on a tie; +inf when k = 1). */
typedef void (*isx_nearest_fn)(const float *X, size_t n, size_t ldx, size_t d, const float *Ct, size_t k,
                               int32_t *assign, float *dist, float *dist2);

#define ISX_FUSED_MIN_PANEL 16 /* every fused kernel's panel holds at least this many queries */

typedef struct {
    isx_fused_fn fn;
    size_t panel; /* queries per packed panel */
    size_t rows;  /* rows per micro-kernel call */
} isx_fused_kernel;

/* The packed panels a fused kernel reads: floats needed for m queries of
 * dimension d in panels of `panel` lanes, and the packing (multiplied by
 * alpha, zero-padded). */
size_t isx_fused_packed_size(size_t m, size_t d, size_t panel);
void isx_fused_pack(const float *Q, size_t m, size_t d, float alpha, size_t panel, float *packed);

typedef enum {
    ISX_ISA_SERIAL = 0,
    ISX_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C + POPCNT + SSE4.2 */
    ISX_ISA_AVX512 = 2, /* AVX-512 F/BW/DQ/VL (+ VPOPCNTDQ for hamming) */
    ISX_ISA_COUNT = 3
} isx_isa;

typedef struct {
    /* indexed by isx_metric (1..ISX_METRIC_MAX); slot 0 unused */
    isx_dist_fn dist[ISX_METRIC_MAX + 1];
    isx_dist_fn sqnorm;
    isx_dist_fn dot;
    isx_dist_fn dist_f16[ISX_METRIC_MAX + 1];
    isx_dist_fn dist_i8[ISX_METRIC_MAX + 1];
    isx_bounded_fn bounded[ISX_METRIC_MAX + 1];
    isx_fused_kernel fused;
    isx_select_fn select;
    isx_kd_fn kd_dists;
    isx_kd_ptrs_fn kd_dists_ptrs;
    isx_f16_fn f16_to_f32;
    isx_crc_fn crc32c;
    isx_pq_lut_fn pq_lut_ip;
    isx_pq8_fn pq8_scan;
    isx_pq4_fn pq4_scan;
    isx_pq4_quant_fn pq4_quantize;
    isx_nearest_fn nearest_small;
} isx_kernels;

/* Detect the CPU once (idempotent, thread-safe after the first call). */
void isx_simd_init(void);
/* The level in use, and the best level this CPU + OS supports. */
isx_isa isx_simd_level(void);
isx_isa isx_simd_supported(void);
/* Change the level in use (for benchmarks and tests that compare levels in
 * one process): tables already taken by an index stay as they were; flat
 * search and new indexes follow at once.  Returns ISX_EINVAL above what the
 * CPU supports. */
int isx_simd_set_level(isx_isa level);
const char *isx_isa_name(isx_isa isa);
/* The active table, and the table of a given level (NULL if unsupported by
 * the CPU: tests use it to run each level alone). */
const isx_kernels *isx_kernels_active(void);
const isx_kernels *isx_kernels_for(isx_isa isa);
/* The slots by name (i < isx_kernel_slot_count()), and the level whose
 * kernel the table of `level` holds in slot i (-1 if the slot is empty). */
size_t isx_kernel_slot_count(void);
const char *isx_kernel_slot_name(size_t i);
int isx_kernel_origin(isx_isa level, size_t i);
/* Individual CPU features, for capabilities(). */
typedef struct {
    int sse42, popcnt, avx, avx2, fma, f16c;
    int avx512f, avx512bw, avx512dq, avx512vl, avx512vpopcntdq, avx512fp16, avx512vnni;
    int os_avx, os_avx512; /* XCR0 has the YMM / ZMM state enabled */
} isx_cpu_features;
const isx_cpu_features *isx_cpu(void);

#endif
