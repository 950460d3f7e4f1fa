/*
 * ivfpq.c -- IVF-PQ: an inverted file of product-quantised residuals.  See
 * ivfpq.h for the storage and the thread-safety contract, pqscan.h for the
 * code layouts the scan kernels read.
 *
 * What follows faiss's IndexIVFPQ / IndexIVFPQFastScan:
 *   - Coarse k-means (nlist centroids, 10 Lloyd iterations on at most 256
 *     points per centroid); PQ codebooks trained on the residuals x - c of a
 *     sample of at most 256 x 2^nbits training points.
 *   - Squared L2 by "precomputed tables": ||q - c - r||^2 = ||q - c||^2 +
 *     sum_j (||r_j||^2 + 2 c_j.r_j) - 2 sum_j q_j.r_j.  The middle term
 *     depends on the list and the code only, so it is computed once per
 *     model (nlist x m x ksub floats, through sgemm); the last one once per
 *     query (the inner-product table of q), and ||q - c||^2 comes from the
 *     coarse search.  A list's table is then one addition of two tables
 *     instead of m x ksub sub-distances.  When the tables would take more
 *     than IVFPQ_PRECOMP_MAX bytes, each list's table is computed from the
 *     residual q - c instead (same distances up to rounding).
 *   - Inner product: q.(c + r) = q.c + sum_j q_j.r_j: one table per query for
 *     every list, plus the constant q.c per list; cosine normalises vectors at
 *     insert and queries at search, then is inner product.  Lists are probed
 *     by the metric (largest q.c for ip / cosine); vectors are assigned to
 *     the nearest centroid in L2, which keeps residuals small.
 *   - The coarse step is one sgemm per block of 32 queries (l2 as |q|^2 -
 *     2 q.c + |c|^2); a query's own table comes from the pq_lut_ip kernel
 *     over transposed codebooks (codewords in the vector lanes).
 *   - 8 bits: the float table is scanned by the pq8 kernel.  4 bits: the
 *     table is quantised to uint8 per list (a bias per sub-quantizer, one
 *     scale per list, so that the uint16 sums of pq4 are an affine image of
 *     the float ones) and the fast-scan kernel yields each block's sums and
 *     a mask of those under the current k-th best, turned into a threshold in
 *     the list's integer scale; only masked vectors are candidates.
 *   - Candidates go to a reservoir with a threshold (see below), not a heap;
 *     a 4-bit chunk that passes far more than it can keep (the first list,
 *     while nothing bounds it) first takes a threshold from a histogram of
 *     its own sums.  The two together took the 4-bit search from 0.75x to
 *     1.05x faiss's IVFPQFastScan (200k x 128, nprobe 4, refine).
 *
 * Where it departs:
 *   - Reported distances are never the quantised ones: the 4-bit scan keeps
 *     k_factor x k candidates, and their distances are recomputed from the
 *     float tables (exact ADC) before the k best are chosen; with refine the
 *     same candidates (k_factor x k of them for both code sizes) are ranked by
 *     their exact distance to the stored rows.
 *   - Refine rows live in their lists beside the codes, so a candidate's
 *     row is one address computation away (a slot array cost a dependent
 *     cache miss per candidate); the rows of all candidates are prefetched
 *     before the first exact distance, so their misses overlap.
 *   - Dynamic: add after a load copies only the lists it touches (a list
 *     points into the file until it changes); remove swaps the list's last
 *     vector (code, id, row) into the hole, through an id -> (list,
 *     position) map.  Saving writes the lists' arrays in place as parts of
 *     their sections, compacted to their sizes.
 *   - Filters are tested only for candidates that would enter the heap, so
 *     a filter costs nothing for the vectors the distances already reject.
 *
 * range_search is not offered: without refine the distances are
 * approximations, so "every vector within r" cannot be answered (vectors
 * whose ADC distance errs outward are lost silently, inward ones reported
 * at a wrong distance); with refine it would need the exact distance of every
 * vector in the probed lists, a slower FlatIndex scan of part of the data.
 */
#define _GNU_SOURCE
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ivfpq.h"
#include "kmeans.h"
#include "../common/rows.h"
#include "../common/topk.h"
#include "../simd/pqscan.h"

#define IVFPQ_DEFAULT_NPROBE 8
#define IVFPQ_DEFAULT_K_FACTOR 4          /* re-ranked candidates per result (see the benchmark notes) */
#define IVFPQ_COARSE_NITER 10             /* as faiss's IndexIVF */
#define IVFPQ_PQ_NITER 25                 /* as faiss's ProductQuantizer */
#define IVFPQ_POINTS_PER_CENTROID 256     /* training sample per centroid, as faiss */
#define IVFPQ_PRECOMP_MAX ((size_t)256 << 20) /* bytes of precomputed l2 tables, beyond which lists compute theirs */
#define IVFPQ_ADD_CHUNK 8192              /* rows encoded per step of add: bounds its scratch memory */
#define IVFPQ_SCAN_CHUNK 1024             /* codes per kernel call (a multiple of ISX_PQ4_BLOCK) */
#define IVFPQ_GROWTH_DIV 4                /* a list that grows takes at least 1/4 more room */
#define IVFPQ_PREFETCH_BYTES 4096         /* refine rows requested ahead of their exact distance: 64 lines */
/* Queries per coarse sgemm: a size fixed by the index alone, so that results
 * do not depend on threads.  OpenBLAS packs the nlist x dim centroids on
 * every call, which 32 queries did not amortise (nlist 1024, dim 128: the
 * coarse step cost about as much as scanning a list at nprobe 1); 128 keep
 * the block's distances (128 x nlist floats) at 2 MiB up to nlist 4096. */
#define IVFPQ_QUERY_BLOCK(ix) ((ix)->nlist <= 4096 ? (size_t)128 : (size_t)32)

/* -DIVFPQ_PROFILE: cycle counters per search phase, printed at exit (one
 * thread only: the counters are shared and unsynchronised).  The machine has
 * no PMU for perf, so this is how the phases were measured. */
#ifdef IVFPQ_PROFILE
#include <stdio.h>
#include <x86intrin.h>
enum { PF_COARSE, PF_PROBE, PF_TABLE, PF_QUANT, PF_KERNEL, PF_CAND, PF_FINAL, PF_N };
static unsigned long long pf_cyc[PF_N], pf_cnt[PF_N];
static const char *pf_name[PF_N] = {"coarse", "probe+qlut", "table", "quant", "kernel", "cand", "final"};
__attribute__((destructor)) static void pf_report(void)
{
    for (int i = 0; i < PF_N; i++)
        if (pf_cnt[i])
            fprintf(stderr, "ivfpq profile %-10s %14llu cycles %10llu calls\n", pf_name[i], pf_cyc[i], pf_cnt[i]);
}
#define PF_START(v) unsigned long long v = __rdtsc()
#define PF_STOP(v, ph) (pf_cyc[ph] += __rdtsc() - (v), pf_cnt[ph]++)
#else
#define PF_START(v) ((void)0)
#define PF_STOP(v, ph) ((void)0)
#endif

/* ======================================================================
 * Small pieces
 * ====================================================================== */

static inline uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline int64_t pack_loc(size_t list, size_t pos)
{
    return (int64_t)(((uint64_t)list << 32) | (uint64_t)pos);
}

static inline size_t loc_list(int64_t loc)
{
    return (size_t)((uint64_t)loc >> 32);
}

static inline size_t loc_pos(int64_t loc)
{
    return (size_t)((uint64_t)loc & 0xffffffffu);
}

static size_t ksub_of(const isx_ivfpq *ix)
{
    return (size_t)1 << ix->nbits;
}

/* Bytes of codes a list of `size` vectors stores (4-bit: whole blocks). */
static size_t codes_bytes(const isx_ivfpq *ix, size_t size)
{
    if (ix->nbits == 8)
        return size * ix->m;
    return (size + ISX_IVFPQ_BLOCK - 1) / ISX_IVFPQ_BLOCK * ix->block_bytes;
}

/* Sub-code j of the vector at pos of a list. */
static inline unsigned code_get(const isx_ivfpq *ix, const uint8_t *codes, size_t pos, size_t j)
{
    if (ix->nbits == 8)
        return codes[pos * ix->m + j];
    return isx_pq4_get(codes + pos / ISX_IVFPQ_BLOCK * ix->block_bytes, j, pos % ISX_IVFPQ_BLOCK);
}

static inline void code_set(const isx_ivfpq *ix, uint8_t *codes, size_t pos, size_t j, unsigned c)
{
    if (ix->nbits == 8)
        codes[pos * ix->m + j] = (uint8_t)c;
    else
        isx_pq4_set(codes + pos / ISX_IVFPQ_BLOCK * ix->block_bytes, j, pos % ISX_IVFPQ_BLOCK, c);
}

/* Sub-code j of a code in pq.h's packed form. */
static inline unsigned packed_get(const isx_ivfpq *ix, const uint8_t *code, size_t j)
{
    return ix->nbits == 8 ? code[j] : (code[j >> 1] >> (4 * (j & 1))) & 15u;
}

static int not_trained(void)
{
    return isx_error(ISX_EINVAL, "IVFPQIndex is not trained: call train(X) with representative vectors first");
}

/* ======================================================================
 * Life cycle
 * ====================================================================== */

static void choose_kernels(isx_ivfpq *ix)
{
    ix->kern = isx_kernels_active();
    isx_metric m = ix->metric == ISX_METRIC_L2 ? ISX_METRIC_L2 : ISX_METRIC_IP;
    ix->refine_dist = ix->refine == ISX_DTYPE_F16 ? ix->kern->dist_f16[m] : ix->kern->dist[m];
}

int isx_ivfpq_create(isx_metric metric, size_t dim, size_t nlist, size_t m, size_t nbits, isx_dtype refine,
                     uint64_t seed, isx_ivfpq **out)
{
    *out = NULL;
    if (metric != ISX_METRIC_L2 && metric != ISX_METRIC_IP && metric != ISX_METRIC_COSINE)
        return isx_error(ISX_EINVAL, "IVFPQIndex supports metrics l2, ip and cosine, found %s",
                         metric >= 1 && metric <= ISX_METRIC_MAX ? isx_metric_name(metric) : "an unknown metric");
    if (dim < 1 || dim > ISX_MAX_DIM)
        return isx_error(ISX_EINVAL, "expected 1 <= dim <= %u, found dim=%zu", ISX_MAX_DIM, dim);
    if (nlist < 1 || nlist > ISX_IVFPQ_MAX_NLIST)
        return isx_error(ISX_EINVAL, "expected 1 <= nlist <= %u, found nlist=%zu", ISX_IVFPQ_MAX_NLIST, nlist);
    if (nbits != 4 && nbits != 8)
        return isx_error(ISX_EINVAL, "expected nbits 4 or 8, found nbits=%zu", nbits);
    if (m < 1 || m > ISX_IVFPQ_MAX_M || m > dim)
        return isx_error(ISX_EINVAL, "expected 1 <= m <= min(dim, %d), found m=%zu (dim=%zu)", ISX_IVFPQ_MAX_M, m,
                         dim);
    if (dim % m != 0)
        return isx_error(ISX_EINVAL, "dim must be a multiple of m (each sub-quantizer takes dim / m elements), "
                                     "found dim=%zu, m=%zu", dim, m);
    if (refine != 0 && refine != ISX_DTYPE_F32 && refine != ISX_DTYPE_F16)
        return isx_error(ISX_EINVAL, "refine rows are float32 or float16");
    isx_ivfpq *ix = calloc(1, sizeof(*ix));
    if (!ix)
        return isx_error(ISX_ENOMEM, "cannot allocate an index");
    ix->metric = metric;
    ix->dim = dim;
    ix->nlist = nlist;
    ix->m = m;
    ix->nbits = nbits;
    ix->refine = refine;
    ix->seed = seed;
    ix->nprobe = nlist < IVFPQ_DEFAULT_NPROBE ? nlist : IVFPQ_DEFAULT_NPROBE;
    ix->k_factor = IVFPQ_DEFAULT_K_FACTOR;
    ix->npairs = (m + 1) / 2;
    ix->block_bytes = ix->npairs * ISX_PQ4_PAIR_BYTES;
    ix->row_bytes = refine == ISX_DTYPE_F16 ? 2 * dim : refine == ISX_DTYPE_F32 ? 4 * dim : 0;
    ix->coarse_owned = 1;
    ix->use_precomp = 1;
    isx_idmap_init(&ix->map);
    choose_kernels(ix);
    int rc = isx_pq_init(&ix->pq, dim, m, nbits);
    if (rc == ISX_OK && !(ix->lists = calloc(nlist, sizeof(isx_ivf_list))))
        rc = isx_error(ISX_ENOMEM, "cannot allocate %zu inverted lists", nlist);
    if (rc == ISX_OK && pthread_rwlock_init(&ix->lock, NULL) != 0)
        rc = isx_error(ISX_ENOMEM, "cannot create the index lock");
    if (rc) {
        isx_pq_free(&ix->pq);
        free(ix->lists);
        free(ix);
        return rc;
    }
    for (size_t l = 0; l < nlist; l++)
        ix->lists[l].owned = 1;
    *out = ix;
    return ISX_OK;
}

static void free_list(isx_ivf_list *L)
{
    if (L->owned) {
        free(L->codes);
        free(L->ids);
        isx_aligned_free(L->rows);
    }
    memset(L, 0, sizeof(*L));
    L->owned = 1;
}

void isx_ivfpq_destroy(isx_ivfpq *ix)
{
    if (!ix)
        return;
    if (ix->lists)
        for (size_t l = 0; l < ix->nlist; l++)
            free_list(&ix->lists[l]);
    free(ix->lists);
    if (ix->coarse_owned)
        isx_aligned_free(ix->coarse);
    isx_pq_free(&ix->pq);
    isx_aligned_free(ix->precomp);
    isx_aligned_free(ix->books_t);
    isx_aligned_free(ix->book_norms);
    free(ix->coarse_norms);
    isx_idmap_free(&ix->map);
    if (ix->file) {
        isx_format_close(ix->file);
        free(ix->file);
    }
    pthread_rwlock_destroy(&ix->lock);
    free(ix);
}

void isx_ivfpq_lock_read(isx_ivfpq *ix) { pthread_rwlock_rdlock(&ix->lock); }
void isx_ivfpq_unlock(isx_ivfpq *ix) { pthread_rwlock_unlock(&ix->lock); }

/* ======================================================================
 * Inverted lists: room, copy-on-write, append, swap-remove
 * ====================================================================== */

/* Room for `need` vectors in list L, in memory of its own.  A list that
 * already holds vectors grows by at least 1/IVFPQ_GROWTH_DIV (amortised
 * appends); an empty one takes exactly what is asked, so one bulk add
 * leaves no slack (add reserves a whole batch at once). */
static int list_reserve(isx_ivfpq *ix, isx_ivf_list *L, size_t need)
{
    if (need <= L->cap && L->owned)
        return ISX_OK;
    size_t cap = L->cap;
    if (need > cap) {
        cap = L->size ? cap + cap / IVFPQ_GROWTH_DIV : 0;
        if (cap < need)
            cap = need;
    }
    if (ix->nbits == 4)
        cap = (cap + ISX_IVFPQ_BLOCK - 1) / ISX_IVFPQ_BLOCK * ISX_IVFPQ_BLOCK;
    size_t cb = codes_bytes(ix, cap);
    uint8_t *codes = malloc(cb ? cb : 1);
    int64_t *ids = malloc((cap ? cap : 1) * sizeof(int64_t));
    uint8_t *rows = ix->refine ? isx_aligned_alloc((cap ? cap : 1) * ix->row_bytes) : NULL;
    if (!codes || !ids || (ix->refine && !rows)) {
        free(codes);
        free(ids);
        isx_aligned_free(rows);
        return isx_error(ISX_ENOMEM, "cannot allocate an inverted list of %zu vectors", cap);
    }
    size_t used = codes_bytes(ix, L->size);
    if (used)
        memcpy(codes, L->codes, used);
    memset(codes + used, 0, cb - used); /* 4-bit: the unused nibbles of a block stay zero */
    if (L->size) {
        memcpy(ids, L->ids, L->size * sizeof(int64_t));
        if (rows)
            memcpy(rows, L->rows, L->size * ix->row_bytes);
    }
    if (L->owned) {
        free(L->codes);
        free(L->ids);
        isx_aligned_free(L->rows);
    }
    L->codes = codes;
    L->ids = ids;
    L->rows = rows;
    L->cap = cap;
    L->owned = 1;
    return ISX_OK;
}

/* Remove the vector at pos of list l: the last one takes its place. */
static void list_remove_at(isx_ivfpq *ix, size_t l, size_t pos)
{
    isx_ivf_list *L = &ix->lists[l];
    size_t last = L->size - 1;
    if (pos != last) {
        for (size_t j = 0; j < ix->m; j++)
            code_set(ix, L->codes, pos, j, code_get(ix, L->codes, last, j));
        L->ids[pos] = L->ids[last];
        if (L->rows)
            memcpy(L->rows + pos * ix->row_bytes, L->rows + last * ix->row_bytes, ix->row_bytes);
        isx_idmap_put(&ix->map, L->ids[pos], pack_loc(l, pos)); /* overwrites: cannot fail */
    }
    for (size_t j = 0; j < ix->m; j++)
        code_set(ix, L->codes, last, j, 0);
    L->size = last;
}

/* ======================================================================
 * Training
 * ====================================================================== */

typedef struct {
    isx_ivfpq *ix;
    const float *resid_pq; /* m x ksub x dsub */
} precomp_ctx;

/* Sub-quantizer j's part of the l2 tables: T[l][j][c] = |r_jc|^2 + 2 c_lj . r_jc. */
static int task_precomp(void *ctx, size_t j, int worker)
{
    (void)worker;
    precomp_ctx *c = ctx;
    isx_ivfpq *ix = c->ix;
    size_t ksub = ksub_of(ix), dsub = ix->dim / ix->m, mk = ix->m * ksub;
    const float *R = c->resid_pq + j * ksub * dsub;
    float *T = ix->precomp + j * ksub;
    /* T[l * mk + j * ksub + c] = 2 * coarse[l, j-th part] . R[c]  (one sgemm, row stride mk) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)ix->nlist, (int)ksub, (int)dsub, 2.0f,
                ix->coarse + j * dsub, (int)ix->dim, R, (int)dsub, 0.0f, T, (int)mk);
    for (size_t cc = 0; cc < ksub; cc++) {
        float s = 0;
        for (size_t t = 0; t < dsub; t++)
            s += R[cc * dsub + t] * R[cc * dsub + t];
        for (size_t l = 0; l < ix->nlist; l++)
            T[l * mk + cc] += s;
    }
    return ISX_OK;
}

/* What the search derives from the model: the transposed codebooks and
 * their norms (for query tables) and the precomputed l2 tables, unless they
 * would be too large (or the index was told not to use them). */
static int build_tables(isx_ivfpq *ix, int nthreads)
{
    isx_aligned_free(ix->precomp);
    isx_aligned_free(ix->books_t);
    isx_aligned_free(ix->book_norms);
    free(ix->coarse_norms);
    ix->precomp = ix->books_t = ix->book_norms = ix->coarse_norms = NULL;
    if (!ix->trained)
        return ISX_OK;
    if (!(ix->coarse_norms = malloc(ix->nlist * sizeof(float))))
        return isx_error(ISX_ENOMEM, "cannot allocate the centroid norms");
    ix->kern->sqnorm(NULL, ix->coarse, ix->nlist, ix->dim, ix->coarse_norms);
    size_t ksub = ksub_of(ix), dsub = ix->dim / ix->m;
    ix->books_t = isx_aligned_alloc(ix->dim * ksub * sizeof(float));
    ix->book_norms = isx_aligned_alloc(ix->m * ksub * sizeof(float));
    if (!ix->books_t || !ix->book_norms)
        return isx_error(ISX_ENOMEM, "cannot allocate the transposed codebooks");
    for (size_t j = 0; j < ix->m; j++)
        for (size_t c = 0; c < ksub; c++) {
            const float *w = ix->pq.centroids + (j * ksub + c) * dsub;
            float s = 0;
            for (size_t t = 0; t < dsub; t++) {
                ix->books_t[(j * dsub + t) * ksub + c] = w[t];
                s += w[t] * w[t];
            }
            ix->book_norms[j * ksub + c] = s;
        }
    if (ix->metric != ISX_METRIC_L2 || !ix->use_precomp)
        return ISX_OK;
    size_t bytes = ix->nlist * ix->m * ksub * sizeof(float);
    if (bytes > IVFPQ_PRECOMP_MAX)
        return ISX_OK;
    if (!(ix->precomp = isx_aligned_alloc(bytes)))
        return isx_error(ISX_ENOMEM, "cannot allocate %zu bytes of l2 tables", bytes);
    precomp_ctx c = {ix, ix->pq.centroids};
    int nt = isx_resolve_threads(nthreads);
    if ((size_t)nt > ix->m)
        nt = (int)ix->m;
    return isx_parallel_for(nt, ix->m, task_precomp, &c);
}

/* Rows [r0, r0 + n) of X as the index stores them: unit length for cosine. */
static const float *prepared_rows(const isx_ivfpq *ix, const float *X, size_t r0, size_t n, float *buf)
{
    const float *src = X + r0 * ix->dim;
    if (ix->metric != ISX_METRIC_COSINE)
        return src;
    memcpy(buf, src, n * ix->dim * sizeof(float));
    for (size_t i = 0; i < n; i++)
        isx_normalise(buf + i * ix->dim, ix->dim);
    return buf;
}

static int train_nolock(isx_ivfpq *ix, const float *X, size_t n, int nthreads)
{
    size_t d = ix->dim, ksub = ksub_of(ix);
    if (ix->count)
        return isx_error(ISX_EINVAL, "train needs an empty index (this one holds %zu vectors, whose codes a new "
                                     "model would invalidate): create a new IVFPQIndex", ix->count);
    if (n < ix->nlist)
        return isx_error(ISX_EINVAL, "expected at least %zu training vectors (one per list, nlist=%zu), found %zu",
                         ix->nlist, ix->nlist, n);
    if (n < ksub)
        return isx_error(ISX_EINVAL, "expected at least %zu training vectors (2^nbits codewords per sub-quantizer), "
                                     "found %zu", ksub, n);
    int rc;
    float *norm = NULL, *coarse = NULL, *resid = NULL;
    int32_t *assign = NULL;
    size_t *pick = NULL;
    isx_pq pq;
    memset(&pq, 0, sizeof(pq));
    if (ix->metric == ISX_METRIC_COSINE) {
        size_t bytes;
        if ((rc = isx_mul_size(n, d * sizeof(float), &bytes, "training vectors")))
            return rc;
        if (!(norm = malloc(bytes)))
            return isx_error(ISX_ENOMEM, "cannot allocate %zu bytes for the normalised training vectors", bytes);
        X = prepared_rows(ix, X, 0, n, norm);
    }
    if (!(coarse = isx_aligned_alloc(ix->nlist * d * sizeof(float)))) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate %zu coarse centroids", ix->nlist);
        goto cleanup;
    }
    isx_kmeans_params kp = {.k = ix->nlist, .niter = IVFPQ_COARSE_NITER, .seed = ix->seed, .nthreads = nthreads,
                            .max_points = ix->nlist * IVFPQ_POINTS_PER_CENTROID,
                            .spherical = ix->metric == ISX_METRIC_COSINE};
    if ((rc = isx_kmeans_train(X, n, d, &kp, coarse, NULL)))
        goto cleanup;
    /* the PQ sample: at most 256 points per codeword, drawn without
     * replacement by a seeded partial shuffle */
    size_t ns = n < ksub * IVFPQ_POINTS_PER_CENTROID ? n : ksub * IVFPQ_POINTS_PER_CENTROID;
    pick = malloc(n * sizeof(size_t));
    resid = malloc(ns * d * sizeof(float));
    assign = malloc(ns * sizeof(int32_t));
    if (!pick || !resid || !assign) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate the PQ training sample of %zu vectors", ns);
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++)
        pick[i] = i;
    uint64_t rng = ix->seed ^ 0x5bd1e995u;
    for (size_t i = 0; i < ns && ns < n; i++) {
        size_t j = i + (size_t)(splitmix64(&rng) % (n - i));
        size_t t = pick[i];
        pick[i] = pick[j];
        pick[j] = t;
    }
    for (size_t i = 0; i < ns; i++)
        memcpy(resid + i * d, X + pick[i] * d, d * sizeof(float));
    if ((rc = isx_kmeans_assign(resid, ns, d, coarse, ix->nlist, nthreads, assign, NULL)))
        goto cleanup;
    for (size_t i = 0; i < ns; i++)
        for (size_t t = 0; t < d; t++)
            resid[i * d + t] -= coarse[(size_t)assign[i] * d + t];
    if ((rc = isx_pq_init(&pq, d, ix->m, ix->nbits)) ||
        (rc = isx_pq_train(&pq, resid, ns, IVFPQ_PQ_NITER, ix->seed + 1, nthreads)))
        goto cleanup;
    if (ix->coarse_owned)
        isx_aligned_free(ix->coarse);
    ix->coarse = coarse;
    ix->coarse_owned = 1;
    coarse = NULL;
    isx_pq_free(&ix->pq);
    ix->pq = pq;
    memset(&pq, 0, sizeof(pq));
    ix->trained = 1;
    rc = build_tables(ix, nthreads);
cleanup:
    isx_pq_free(&pq);
    isx_aligned_free(coarse);
    free(norm);
    free(pick);
    free(resid);
    free(assign);
    return rc;
}

int isx_ivfpq_train(isx_ivfpq *ix, const float *X, size_t n, int nthreads)
{
    int rc = isx_check_finite(X, n, ix->dim, "training vectors");
    if (rc)
        return rc;
    pthread_rwlock_wrlock(&ix->lock);
    rc = train_nolock(ix, X, n, nthreads);
    pthread_rwlock_unlock(&ix->lock);
    return rc;
}

/* ======================================================================
 * Refine rows
 * ====================================================================== */

static void store_row(const isx_ivfpq *ix, uint8_t *dst, const float *x)
{
    if (ix->refine == ISX_DTYPE_F32) {
        memcpy(dst, x, ix->row_bytes);
    } else {
        uint16_t *h = (uint16_t *)dst;
        for (size_t i = 0; i < ix->dim; i++)
            h[i] = isx_float_to_half(x[i]);
    }
}

static void load_row(const isx_ivfpq *ix, const uint8_t *src, float *out)
{
    if (ix->refine == ISX_DTYPE_F32)
        memcpy(out, src, ix->row_bytes);
    else
        ix->kern->f16_to_f32((const uint16_t *)src, out, ix->dim);
}

/* ======================================================================
 * Add and remove
 * ====================================================================== */

static int remove_nolock(isx_ivfpq *ix, const int64_t *ids, size_t n, size_t *removed)
{
    *removed = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t loc = isx_idmap_get(&ix->map, ids[i]);
        if (loc < 0)
            continue;
        size_t l = loc_list(loc), pos = loc_pos(loc);
        isx_ivf_list *L = &ix->lists[l];
        int rc = list_reserve(ix, L, L->size); /* copy-on-write of a loaded list */
        if (rc)
            return rc;
        isx_idmap_del(&ix->map, ids[i]);
        list_remove_at(ix, l, pos);
        ix->count--;
        (*removed)++;
    }
    return ISX_OK;
}

int isx_ivfpq_remove(isx_ivfpq *ix, const int64_t *ids, size_t n, size_t *removed)
{
    pthread_rwlock_wrlock(&ix->lock);
    int rc = remove_nolock(ix, ids, n, removed);
    pthread_rwlock_unlock(&ix->lock);
    return rc;
}

typedef struct {
    isx_ivfpq *ix;
    const float *rows;    /* prepared rows of the chunk */
    const int32_t *assign;
    float *resid;
} resid_ctx;

static int add_nolock(isx_ivfpq *ix, const float *X, size_t n, const int64_t *ids, int nthreads)
{
    size_t d = ix->dim, chunk = n < IVFPQ_ADD_CHUNK ? n : IVFPQ_ADD_CHUNK;
    int rc = ISX_OK;
    int32_t *assign = NULL;
    size_t *need = NULL;
    float *buf = NULL, *resid = NULL;
    uint8_t *codes = NULL;
    int64_t *existing = NULL;
    if (!ix->trained)
        return not_trained();
    if (ix->count + n > ISX_MAX_COUNT)
        return isx_error(ISX_EINVAL, "an index holds at most %llu vectors", (unsigned long long)ISX_MAX_COUNT);
    if (!ids && ix->next_id > INT64_MAX - (int64_t)n)
        return isx_error(ISX_EINVAL, "default ids would overflow int64: pass ids explicitly");
    assign = malloc(n * sizeof(int32_t));
    need = calloc(ix->nlist, sizeof(size_t));
    buf = malloc(chunk * d * sizeof(float));
    resid = malloc(chunk * d * sizeof(float));
    codes = malloc(chunk * ix->pq.code_bytes);
    existing = ids ? malloc(n * sizeof(int64_t)) : NULL;
    if (!assign || !need || !buf || !resid || !codes || (ids && !existing)) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate the buffers to add %zu vectors", n);
        goto cleanup;
    }
    /* an id that exists is an update: its old vector goes first */
    size_t nexisting = 0, removed;
    for (size_t i = 0; ids && i < n; i++)
        if (isx_idmap_get(&ix->map, ids[i]) >= 0)
            existing[nexisting++] = ids[i];
    if (nexisting && (rc = remove_nolock(ix, existing, nexisting, &removed)))
        goto cleanup;
    /* assign everything first, so that each list is grown once, to its size */
    for (size_t r0 = 0; r0 < n; r0 += chunk) {
        size_t cn = n - r0 < chunk ? n - r0 : chunk;
        const float *rows = prepared_rows(ix, X, r0, cn, buf);
        if ((rc = isx_kmeans_assign(rows, cn, d, ix->coarse, ix->nlist, nthreads, assign + r0, NULL)))
            goto cleanup;
    }
    for (size_t i = 0; i < n; i++)
        need[assign[i]]++;
    for (size_t l = 0; l < ix->nlist; l++)
        if (ix->lists[l].size + need[l] > UINT32_MAX) { /* positions are 32 bits in the id map */
            rc = isx_error(ISX_EINVAL, "inverted list %zu would hold more than %u vectors: use a larger nlist", l,
                           UINT32_MAX);
            goto cleanup;
        }
    for (size_t l = 0; l < ix->nlist; l++)
        if (need[l] && (rc = list_reserve(ix, &ix->lists[l], ix->lists[l].size + need[l])))
            goto cleanup;
    if ((rc = isx_idmap_reserve(&ix->map, ix->count + n)))
        goto cleanup;
    for (size_t r0 = 0; r0 < n; r0 += chunk) {
        size_t cn = n - r0 < chunk ? n - r0 : chunk;
        const float *rows = prepared_rows(ix, X, r0, cn, buf);
        for (size_t i = 0; i < cn; i++) {
            const float *c = ix->coarse + (size_t)assign[r0 + i] * d;
            for (size_t t = 0; t < d; t++)
                resid[i * d + t] = rows[i * d + t] - c[t];
        }
        if ((rc = isx_pq_encode(&ix->pq, resid, cn, codes, nthreads)))
            goto cleanup;
        for (size_t i = 0; i < cn; i++) {
            size_t l = (size_t)assign[r0 + i];
            isx_ivf_list *L = &ix->lists[l];
            size_t pos = L->size++;
            const uint8_t *code = codes + i * ix->pq.code_bytes;
            if (ix->nbits == 8)
                memcpy(L->codes + pos * ix->m, code, ix->m);
            else
                for (size_t j = 0; j < ix->m; j++)
                    code_set(ix, L->codes, pos, j, packed_get(ix, code, j));
            int64_t id = ids ? ids[r0 + i] : ix->next_id + (int64_t)(r0 + i);
            L->ids[pos] = id;
            if (ix->refine)
                store_row(ix, L->rows + pos * ix->row_bytes, rows + i * d);
            isx_idmap_put(&ix->map, id, pack_loc(l, pos)); /* cannot fail: reserved */
            ix->count++;
        }
    }
    if (!ids) {
        ix->next_id += (int64_t)n;
    } else {
        for (size_t i = 0; i < n; i++)
            if (ids[i] >= ix->next_id)
                ix->next_id = ids[i] == INT64_MAX ? INT64_MAX : ids[i] + 1;
    }
cleanup:
    free(assign);
    free(need);
    free(buf);
    free(resid);
    free(codes);
    free(existing);
    return rc;
}

int isx_ivfpq_add(isx_ivfpq *ix, const float *X, size_t n, const int64_t *ids, int nthreads)
{
    int rc = isx_check_finite(X, n, ix->dim, "added vectors");
    if (rc || (ids && (rc = isx_check_ids(ids, n))))
        return rc;
    pthread_rwlock_wrlock(&ix->lock);
    rc = n == 0 ? (ix->trained ? ISX_OK : not_trained()) : add_nolock(ix, X, n, ids, nthreads);
    pthread_rwlock_unlock(&ix->lock);
    return rc;
}

/* ======================================================================
 * Get, ids, codes
 * ====================================================================== */

static void reconstruct(const isx_ivfpq *ix, size_t l, size_t pos, uint8_t *packed, float *out)
{
    const isx_ivf_list *L = &ix->lists[l];
    memset(packed, 0, ix->pq.code_bytes);
    for (size_t j = 0; j < ix->m; j++) {
        unsigned c = code_get(ix, L->codes, pos, j);
        if (ix->nbits == 8)
            packed[j] = (uint8_t)c;
        else
            packed[j >> 1] |= (uint8_t)(c << (4 * (j & 1)));
    }
    isx_pq_decode(&ix->pq, packed, 1, out);
    for (size_t t = 0; t < ix->dim; t++)
        out[t] += ix->coarse[l * ix->dim + t];
}

int isx_ivfpq_get(isx_ivfpq *ix, const int64_t *ids, size_t n, float *out)
{
    int rc = ISX_OK;
    uint8_t *packed = malloc(ix->pq.code_bytes + 1);
    if (!packed)
        return isx_error(ISX_ENOMEM, "cannot allocate a code");
    pthread_rwlock_rdlock(&ix->lock);
    for (size_t i = 0; i < n; i++) {
        int64_t loc = isx_idmap_get(&ix->map, ids[i]);
        if (loc < 0) {
            rc = isx_error(ISX_EKEY, "id %lld is not in the index", (long long)ids[i]);
            break;
        }
        size_t l = loc_list(loc), pos = loc_pos(loc);
        if (ix->refine)
            load_row(ix, ix->lists[l].rows + pos * ix->row_bytes, out + i * ix->dim);
        else
            reconstruct(ix, l, pos, packed, out + i * ix->dim);
    }
    pthread_rwlock_unlock(&ix->lock);
    free(packed);
    return rc;
}

int isx_ivfpq_codes(isx_ivfpq *ix, const int64_t *ids, size_t n, uint8_t *codes, int64_t *lists)
{
    int rc = ISX_OK;
    pthread_rwlock_rdlock(&ix->lock);
    for (size_t i = 0; i < n; i++) {
        int64_t loc = isx_idmap_get(&ix->map, ids[i]);
        if (loc < 0) {
            rc = isx_error(ISX_EKEY, "id %lld is not in the index", (long long)ids[i]);
            break;
        }
        size_t l = loc_list(loc), pos = loc_pos(loc);
        uint8_t *out = codes + i * ix->pq.code_bytes;
        memset(out, 0, ix->pq.code_bytes);
        for (size_t j = 0; j < ix->m; j++) {
            unsigned c = code_get(ix, ix->lists[l].codes, pos, j);
            if (ix->nbits == 8)
                out[j] = (uint8_t)c;
            else
                out[j >> 1] |= (uint8_t)(c << (4 * (j & 1)));
        }
        lists[i] = (int64_t)l;
    }
    pthread_rwlock_unlock(&ix->lock);
    return rc;
}

int isx_ivfpq_ids(isx_ivfpq *ix, int64_t *out, size_t cap, size_t *n)
{
    pthread_rwlock_rdlock(&ix->lock);
    size_t c = 0;
    for (size_t l = 0; l < ix->nlist && c < cap; l++) {
        const isx_ivf_list *L = &ix->lists[l];
        size_t take = L->size < cap - c ? L->size : cap - c;
        memcpy(out + c, L->ids, take * sizeof(int64_t));
        c += take;
    }
    *n = c;
    pthread_rwlock_unlock(&ix->lock);
    return ISX_OK;
}

int isx_ivfpq_set_nprobe(isx_ivfpq *ix, size_t nprobe)
{
    if (nprobe < 1 || nprobe > ix->nlist)
        return isx_error(ISX_EINVAL, "expected 1 <= nprobe <= nlist = %zu, found nprobe=%zu", ix->nlist, nprobe);
    pthread_rwlock_wrlock(&ix->lock);
    ix->nprobe = nprobe;
    pthread_rwlock_unlock(&ix->lock);
    return ISX_OK;
}

int isx_ivfpq_set_k_factor(isx_ivfpq *ix, size_t k_factor)
{
    if (k_factor < 1 || k_factor > ISX_IVFPQ_MAX_K_FACTOR)
        return isx_error(ISX_EINVAL, "expected 1 <= k_factor <= %d, found k_factor=%zu", ISX_IVFPQ_MAX_K_FACTOR,
                         k_factor);
    pthread_rwlock_wrlock(&ix->lock);
    ix->k_factor = k_factor;
    pthread_rwlock_unlock(&ix->lock);
    return ISX_OK;
}

int isx_ivfpq_set_precompute(isx_ivfpq *ix, int on)
{
    pthread_rwlock_wrlock(&ix->lock);
    ix->use_precomp = !!on;
    int rc = build_tables(ix, 0);
    pthread_rwlock_unlock(&ix->lock);
    return rc;
}

/* ======================================================================
 * Search
 * ====================================================================== */

/* ======================================================================
 * Candidates: a reservoir with a threshold
 *
 * A scan offers many candidates and keeps `keep` of them.  A binary heap
 * pays an unpredictable sift (log keep compares) for every candidate that
 * beats its root; here a candidate that beats the bound is only appended,
 * and when the reservoir is full one quickselect keeps the `keep` smallest
 * and lowers the bound to the largest of them.  The order is total --
 * (distance, label) -- so the kept set is the same whatever the order of
 * offers, and results do not depend on the scan's chunking.
 * ====================================================================== */

typedef struct {
    float d;
    int64_t l; /* probe << 32 | position */
} cand;

typedef struct {
    cand *a;
    size_t n, keep, cap;
    float bound; /* a candidate above it cannot be among the `keep` best */
} reservoir;

static inline int cand_less(cand x, cand y)
{
    return x.d < y.d || (x.d == y.d && x.l < y.l);
}

/* Leave the `keep` smallest of a[0..n) in a[0..keep) (Hoare quickselect). */
static void resv_shrink(reservoir *r)
{
    if (r->n <= r->keep)
        return;
    cand *a = r->a;
    ptrdiff_t lo = 0, hi = (ptrdiff_t)r->n - 1, k = (ptrdiff_t)r->keep - 1;
    while (lo < hi) {
        ptrdiff_t mid = lo + (hi - lo) / 2;
        /* median of three as the pivot: sorted or constant runs stay linear */
        cand x = a[lo], y = a[mid], z = a[hi], pivot;
        if (cand_less(x, y))
            pivot = cand_less(y, z) ? y : cand_less(x, z) ? z : x;
        else
            pivot = cand_less(x, z) ? x : cand_less(y, z) ? z : y;
        ptrdiff_t i = lo, j = hi;
        while (i <= j) {
            while (cand_less(a[i], pivot))
                i++;
            while (cand_less(pivot, a[j]))
                j--;
            if (i <= j) {
                cand t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            break; /* a[k] equals the pivot, in place */
    }
    r->n = r->keep;
    r->bound = a[k].d;
}

static inline void resv_offer(reservoir *r, float d, int64_t label)
{
    r->a[r->n].d = d;
    r->a[r->n].l = label;
    if (++r->n == r->cap)
        resv_shrink(r);
}

/* Per-worker scratch, reused across the queries of one call. */
typedef struct {
    float *qblock;       /* IVFPQ_QUERY_BLOCK x dim: the block's queries (unit length for cosine) */
    float *cblock;       /* IVFPQ_QUERY_BLOCK x nlist: their coarse distances */
    float *q;            /* the query being searched: a row of qblock */
    float *resid;        /* dim: q - c, without precomputed tables */
    float *probe_d;      /* nprobe: the probe heap */
    int64_t *probe_l;
    float *qlut;         /* m x ksub: the query's inner-product table (l2: times 2) */
    float *luts;         /* l2: nprobe x m x ksub (4-bit) or m x ksub (8-bit); the table per list */
    float *consts;       /* nprobe: each probed list's constant */
    float *scan;         /* 8-bit: IVFPQ_SCAN_CHUNK distances */
    uint16_t *sums;      /* 4-bit: IVFPQ_SCAN_CHUNK sums */
    uint32_t *masks;     /* 4-bit: IVFPQ_SCAN_CHUNK / 32 masks */
    uint8_t *qtab;       /* 4-bit: npairs x 32 quantised entries */
    cand *cands;         /* the reservoir: max(2 kk, kk + 64) */
    size_t ncands;
    float *out_d;        /* k: the final selection */
    int64_t *out_l;
} scratch;

static void scratch_free(scratch *s)
{
    free(s->qblock);
    free(s->cblock);
    free(s->resid);
    free(s->probe_d);
    free(s->probe_l);
    free(s->qlut);
    free(s->luts);
    free(s->consts);
    free(s->scan);
    free(s->sums);
    free(s->masks);
    free(s->qtab);
    free(s->cands);
    free(s->out_d);
    free(s->out_l);
    memset(s, 0, sizeof(*s));
}

static int scratch_init(const isx_ivfpq *ix, scratch *s, size_t nprobe, size_t kk, size_t k)
{
    memset(s, 0, sizeof(*s));
    size_t tab = ix->m * ksub_of(ix);
    size_t nluts = ix->nbits == 4 ? nprobe : 1;
    s->qblock = malloc(IVFPQ_QUERY_BLOCK(ix) * ix->dim * sizeof(float));
    s->cblock = malloc(IVFPQ_QUERY_BLOCK(ix) * ix->nlist * sizeof(float));
    s->resid = malloc(ix->dim * sizeof(float));
    s->probe_d = malloc(nprobe * sizeof(float));
    s->probe_l = malloc(nprobe * sizeof(int64_t));
    s->qlut = malloc(tab * sizeof(float));
    s->luts = malloc(nluts * tab * sizeof(float));
    s->consts = malloc(nprobe * sizeof(float));
    s->scan = malloc(IVFPQ_SCAN_CHUNK * sizeof(float));
    s->sums = malloc(IVFPQ_SCAN_CHUNK * sizeof(uint16_t));
    s->masks = malloc(IVFPQ_SCAN_CHUNK / ISX_PQ4_BLOCK * sizeof(uint32_t));
    s->qtab = calloc(ix->block_bytes, 1);
    s->ncands = kk + (kk > 64 ? kk : 64);
    s->cands = malloc(s->ncands * sizeof(cand));
    s->out_d = malloc(k * sizeof(float));
    s->out_l = malloc(k * sizeof(int64_t));
    if (!s->qblock || !s->cblock || !s->resid || !s->probe_d || !s->probe_l || !s->qlut || !s->luts || !s->consts ||
        !s->scan || !s->sums || !s->masks || !s->qtab || !s->cands || !s->out_d || !s->out_l) {
        scratch_free(s);
        return isx_error(ISX_ENOMEM, "cannot allocate search buffers");
    }
    return ISX_OK;
}

typedef struct {
    isx_ivfpq *ix;
    scratch *ws;
    const float *Q;
    size_t nq, k, kk, nprobe;
    const isx_filter *filter;   /* NULL: none */
    const isx_idmap *allowed;   /* an id-list filter as a set */
    float *dists;     /* nq x k (not D / I: cblas.h's complex.h defines I) */
    int64_t *labels;
} search_ctx;

/* Called as `!c->filter || id_allowed(c, ids[pos])`: without a filter the id
 * (a cache miss for a scattered candidate) is never loaded. */
static inline int id_allowed(const search_ctx *c, int64_t id)
{
    if (c->filter->mask)
        return (uint64_t)id < c->filter->mask_len && c->filter->mask[id];
    return isx_idmap_get(c->allowed, id) >= 0;
}

/* The table of probed list l into lut, and its constant (what is added to
 * the table sums to give the distance). */
static void list_table(const isx_ivfpq *ix, scratch *w, size_t l, float coarse_d, float *lut, float *cst)
{
    size_t tab = ix->m * ksub_of(ix);
    if (ix->metric != ISX_METRIC_L2) {
        memcpy(lut, w->qlut, tab * sizeof(float));
        *cst = coarse_d; /* -q.c */
    } else if (ix->precomp) {
        const float *T = ix->precomp + l * tab;
        for (size_t i = 0; i < tab; i++)
            lut[i] = T[i] + w->qlut[i];
        *cst = coarse_d; /* |q - c|^2 */
    } else {
        /* |r_j - w|^2 = |r_j|^2 - 2 r_j.w + |w|^2 for the residual r = q - c */
        const float *c = ix->coarse + l * ix->dim;
        size_t ksub = ksub_of(ix), dsub = ix->dim / ix->m;
        for (size_t t = 0; t < ix->dim; t++)
            w->resid[t] = w->q[t] - c[t];
        ix->kern->pq_lut_ip(w->resid, ix->books_t, ix->m, dsub, ksub, lut);
        for (size_t j = 0; j < ix->m; j++) {
            float rn = 0;
            for (size_t t = 0; t < dsub; t++)
                rn += w->resid[j * dsub + t] * w->resid[j * dsub + t];
            for (size_t e = 0; e < ksub; e++)
                lut[j * ksub + e] = rn + ix->book_norms[j * ksub + e] + 2.0f * lut[j * ksub + e];
        }
        *cst = 0;
    }
}

static void scan_list8(const search_ctx *c, scratch *w, size_t p, size_t l, const float *lut, float cst,
                       reservoir *h)
{
    const isx_ivfpq *ix = c->ix;
    const isx_ivf_list *L = &ix->lists[l];
    for (size_t off = 0; off < L->size; off += IVFPQ_SCAN_CHUNK) {
        size_t cn = L->size - off < IVFPQ_SCAN_CHUNK ? L->size - off : IVFPQ_SCAN_CHUNK;
        ix->kern->pq8_scan(lut, L->codes + off * ix->m, cn, ix->m, w->scan);
        if (h->n > h->keep + h->keep / 4)
            resv_shrink(h);
        for (size_t i = 0; i < cn; i++) {
            float d = cst + w->scan[i];
            if (d <= h->bound && (!c->filter || id_allowed(c, L->ids[off + i])))
                resv_offer(h, d, pack_loc(p, off + i));
        }
    }
}

/* 4-bit: quantise lut (m x 16) to uint8 entries (per sub-quantizer bias,
 * one scale), scan with pq4, offer what the mask lets through. */
static void scan_list4(const search_ctx *c, scratch *w, size_t p, size_t l, const float *lut, float cst,
                       reservoir *h)
{
    const isx_ivfpq *ix = c->ix;
    const isx_ivf_list *L = &ix->lists[l];
    if (!L->size)
        return;
    float scale;
    PF_START(t_quant);
    float bias = cst + ix->kern->pq4_quantize(lut, ix->m, w->qtab, &scale), inv = 1.0f / scale;
    PF_STOP(t_quant, PF_QUANT);
    size_t nblocks = (L->size + ISX_IVFPQ_BLOCK - 1) / ISX_IVFPQ_BLOCK;
    const size_t chunk_blocks = IVFPQ_SCAN_CHUNK / ISX_PQ4_BLOCK;
    for (size_t b0 = 0; b0 < nblocks; b0 += chunk_blocks) {
        size_t nb = nblocks - b0 < chunk_blocks ? nblocks - b0 : chunk_blocks;
        if (h->n > h->keep + h->keep / 4) /* a tighter bound for the mask, when it is worth a quickselect */
            resv_shrink(h);
        uint16_t thresh = 65535;
        if (h->bound < INFINITY) {
            float x = (h->bound - bias) * scale;
            if (x < 0)
                return; /* nothing in this list can enter the heap */
            thresh = x >= 65535.0f ? 65535 : (uint16_t)x;
        }
        PF_START(t_kernel);
        ix->kern->pq4_scan(L->codes + b0 * ix->block_bytes, nb, ix->npairs, w->qtab, thresh, w->sums, w->masks);
        PF_STOP(t_kernel, PF_KERNEL);
        PF_START(t_cand);
        size_t valid = L->size - b0 * ISX_PQ4_BLOCK < nb * ISX_PQ4_BLOCK ? L->size - b0 * ISX_PQ4_BLOCK
                                                                            : nb * ISX_PQ4_BLOCK;
        if (valid % ISX_PQ4_BLOCK) /* the last block's padding codes are no candidates */
            w->masks[nb - 1] &= (1u << (valid % ISX_PQ4_BLOCK)) - 1;
        size_t passed = 0;
        for (size_t b = 0; b < nb; b++)
            passed += (size_t)__builtin_popcount(w->masks[b]);
        if (passed > h->keep && !c->filter) {
            /* Far more pass than can be kept (the first list, while the bound is
             * still infinite): the keep-th smallest sum of this chunk alone bounds
             * the keep-th of all, so a 256-bin histogram of the sums gives a
             * tighter threshold before anything reaches the reservoir.  (Not with
             * a filter: the disallowed would count.) */
            unsigned top = 2 * (unsigned)ix->npairs * 255, shift = 0, cum = 0, hist[4][256];
            top = thresh < top ? thresh : top; /* no sum is above either: bins over [0, top] */
            while ((top >> shift) > 255)
                shift++;
            /* four histograms, summed after: neighbouring codes often fall in
             * one bin, and one table made each increment wait on the last */
            memset(hist, 0, sizeof(hist));
            size_t i = 0;
            for (; i + 4 <= valid; i += 4)
                for (unsigned u = 0; u < 4; u++)
                    hist[u][w->sums[i + u] >> shift] += w->sums[i + u] <= thresh;
            for (; i < valid; i++)
                hist[0][w->sums[i] >> shift] += w->sums[i] <= thresh;
            for (unsigned bin = 0; bin < 256; bin++)
                if ((cum += hist[0][bin] + hist[1][bin] + hist[2][bin] + hist[3][bin]) >= h->keep) {
                    unsigned t = ((bin + 1) << shift) - 1;
                    thresh = t < thresh ? (uint16_t)t : thresh;
                    break;
                }
            /* and the masks to match: the loop below then visits about keep
             * codes, not every one of the chunk (a ctz, a load and a compare
             * for each was the larger part of a query at nprobe 1) */
            for (size_t b = 0; b < nb; b++) {
                const uint16_t *sb = w->sums + b * ISX_PQ4_BLOCK;
                uint32_t keep = 0;
                for (unsigned i = 0; i < ISX_PQ4_BLOCK; i++)
                    keep |= (uint32_t)(sb[i] <= thresh) << i;
                w->masks[b] &= keep;
            }
        }
        for (size_t b = 0; b < nb; b++) {
            uint32_t mk = w->masks[b];
            while (mk) {
                size_t i = (size_t)__builtin_ctz(mk);
                mk &= mk - 1;
                size_t pos = (b0 + b) * ISX_PQ4_BLOCK + i;
                uint16_t sum = w->sums[b * ISX_PQ4_BLOCK + i];
                if (sum > thresh)
                    continue;
                float d = bias + (float)sum * inv;
                if (d <= h->bound && (!c->filter || id_allowed(c, L->ids[pos])))
                    resv_offer(h, d, pack_loc(p, pos));
            }
        }
        PF_STOP(t_cand, PF_CAND);
    }
}

/* The distance of 4-bit candidate (probe p, pos) from its list's float table. */
static float adc_distance4(const isx_ivfpq *ix, const scratch *w, size_t p, size_t pos)
{
    const isx_ivf_list *L = &ix->lists[(size_t)w->probe_l[p]];
    const uint8_t *block = L->codes + pos / ISX_IVFPQ_BLOCK * ix->block_bytes;
    const float *lut = w->luts + p * ix->m * 16;
    float s = w->consts[p];
    for (size_t j = 0; j < ix->m; j++)
        s += lut[j * 16 + isx_pq4_get(block, j, pos % ISX_IVFPQ_BLOCK)];
    return s;
}

static inline void prefetch_row(const isx_ivfpq *ix, const scratch *w, int64_t label)
{
    const isx_ivf_list *L = &ix->lists[(size_t)w->probe_l[loc_list(label)]];
    const char *row = (const char *)L->rows + loc_pos(label) * ix->row_bytes;
    for (size_t b = 0; b < ix->row_bytes; b += 64)
        __builtin_prefetch(row + b);
}

/* Query qi, whose coarse distances (l2, or -q.c for ip / cosine) are coarse_d
 * and whose prepared vector is w->q. */
static void search_one(search_ctx *c, scratch *w, size_t qi, const float *coarse_d)
{
    isx_ivfpq *ix = c->ix;
    size_t k = c->k, d = ix->dim, tab = ix->m * ksub_of(ix);
    float *dists = c->dists + qi * k;
    int64_t *labels = c->labels + qi * k;
    PF_START(t_probe);
    isx_topk ph;
    isx_topk_init(&ph, w->probe_d, w->probe_l, c->nprobe);
    for (size_t l = 0; l < ix->nlist; l++)
        if (coarse_d[l] <= isx_topk_bound(&ph))
            isx_topk_push(&ph, coarse_d[l], (int64_t)l);
    isx_topk_sort(&ph);
    size_t np = ph.size;
    if (ix->metric != ISX_METRIC_L2 || ix->precomp) {
        ix->kern->pq_lut_ip(w->q, ix->books_t, ix->m, d / ix->m, ksub_of(ix), w->qlut); /* -q_j . r */
        if (ix->metric == ISX_METRIC_L2)
            for (size_t i = 0; i < tab; i++)
                w->qlut[i] *= 2.0f;
    }
    PF_STOP(t_probe, PF_PROBE);
    /* the scan: kk candidates by ADC (4-bit: by quantised ADC) */
    size_t kk = ix->nbits == 8 && !ix->refine ? k : c->kk;
    reservoir h = {w->cands, 0, kk, w->ncands, INFINITY};
    for (size_t p = 0; p < np; p++) {
        size_t l = (size_t)w->probe_l[p];
        if (!ix->lists[l].size)
            continue;
        if (p + 1 < np) { /* the next list's table and first codes, while this one is scanned */
            size_t nx = (size_t)w->probe_l[p + 1];
            const char *t = ix->precomp ? (const char *)(ix->precomp + nx * tab) : NULL;
            for (size_t b = 0; t && b < tab * sizeof(float); b += 64)
                __builtin_prefetch(t + b);
            for (size_t b = 0; b < 4 * 64 && ix->lists[nx].codes; b += 64)
                __builtin_prefetch((const char *)ix->lists[nx].codes + b);
        }
        float *lut = ix->nbits == 4 ? w->luts + p * tab : w->luts;
        PF_START(t_table);
        list_table(ix, w, l, w->probe_d[p], lut, &w->consts[p]);
        PF_STOP(t_table, PF_TABLE);
        if (ix->nbits == 8)
            scan_list8(c, w, p, l, lut, w->consts[p], &h);
        else
            scan_list4(c, w, p, l, lut, w->consts[p], &h);
    }
    PF_START(t_final);
    resv_shrink(&h);
    /* the k best of the candidates by the distance reported */
    isx_topk out;
    isx_topk_init(&out, w->out_d, w->out_l, k);
    float add = ix->metric == ISX_METRIC_L2 ? 0.0f : 1.0f; /* ADC sums give -dot: report 1 - dot */
    /* the candidates' rows are scattered over the lists: each is asked for
     * about IVFPQ_PREFETCH_BYTES ahead of its use (8 rows of 128 floats, 1 of
     * 784), so that misses overlap without flooding the line-fill buffers (all
     * at once stalled the loop once k_factor * k ran into the hundreds) */
    size_t ahead = ix->refine ? IVFPQ_PREFETCH_BYTES / ix->row_bytes : 0;
    ahead = ahead < 1 ? 1 : ahead > 8 ? 8 : ahead;
    for (size_t i = 0; ix->refine && i < h.n && i < ahead; i++)
        prefetch_row(ix, w, h.a[i].l);
    for (size_t i = 0; i < h.n; i++) {
        int64_t lab = h.a[i].l;
        size_t p = loc_list(lab), pos = loc_pos(lab);
        float dist;
        if (ix->refine) {
            if (i + ahead < h.n)
                prefetch_row(ix, w, h.a[i + ahead].l);
            const isx_ivf_list *L = &ix->lists[(size_t)w->probe_l[p]];
            ix->refine_dist(w->q, L->rows + pos * ix->row_bytes, 1, d, &dist);
        } else if (ix->nbits == 4) {
            dist = adc_distance4(ix, w, p, pos) + add;
        } else {
            dist = h.a[i].d + add;
        }
        isx_topk_push(&out, dist, lab);
    }
    isx_topk_sort(&out);
    for (size_t j = 0; j < out.size; j++) {
        int64_t lab = out.slot[j];
        dists[j] = out.dist[j];
        labels[j] = ix->lists[(size_t)w->probe_l[loc_list(lab)]].ids[loc_pos(lab)];
    }
    for (size_t j = out.size; j < k; j++) {
        dists[j] = INFINITY;
        labels[j] = -1;
    }
    PF_STOP(t_final, PF_FINAL);
}

/* A block of queries: the coarse step for all of them in one sgemm (l2 as
 * |q|^2 - 2 q.c + |c|^2), then each query alone. */
static int task_search(void *ctx, size_t block, int wk)
{
    search_ctx *c = ctx;
    isx_ivfpq *ix = c->ix;
    scratch *w = &c->ws[wk];
    size_t d = ix->dim, nl = ix->nlist, qb = IVFPQ_QUERY_BLOCK(ix), q0 = block * qb;
    size_t nb = c->nq - q0 < qb ? c->nq - q0 : qb;
    memcpy(w->qblock, c->Q + q0 * d, nb * d * sizeof(float));
    if (ix->metric == ISX_METRIC_COSINE)
        for (size_t i = 0; i < nb; i++)
            isx_normalise(w->qblock + i * d, d);
    int l2 = ix->metric == ISX_METRIC_L2;
    PF_START(t_coarse);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)nl, (int)d, l2 ? -2.0f : -1.0f, w->qblock,
                (int)d, ix->coarse, (int)d, 0.0f, w->cblock, (int)nl);
    for (size_t i = 0; i < nb; i++) {
        float *row = w->cblock + i * nl;
        if (l2) {
            const float *q = w->qblock + i * d;
            float qn = 0;
            for (size_t t = 0; t < d; t++)
                qn += q[t] * q[t];
            for (size_t l = 0; l < nl; l++) {
                float v = row[l] + qn + ix->coarse_norms[l];
                row[l] = v > 0 ? v : 0; /* rounding can take a tiny distance below zero */
            }
        }
        if (i == 0)
            PF_STOP(t_coarse, PF_COARSE);
        w->q = w->qblock + i * d;
        search_one(c, w, q0 + i, row);
    }
    return ISX_OK;
}

int isx_ivfpq_search(isx_ivfpq *ix, const float *Q, size_t nq, size_t k, size_t nprobe, const isx_filter *filter,
                     int nthreads, float *D, int64_t *labels)
{
    if (k < 1 || k > ISX_MAX_K)
        return isx_error(ISX_EINVAL, "expected 1 <= k <= %u, found k=%zu", ISX_MAX_K, k);
    if (nprobe > ix->nlist)
        return isx_error(ISX_EINVAL, "expected 1 <= nprobe <= nlist = %zu, found nprobe=%zu", ix->nlist, nprobe);
    int rc = isx_check_finite(Q, nq, ix->dim, "queries");
    if (rc)
        return rc;
    scratch *ws = NULL;
    int nt = 0;
    isx_idmap allowed;
    isx_idmap_init(&allowed);
    pthread_rwlock_rdlock(&ix->lock);
    if (!ix->trained) {
        rc = not_trained();
        goto cleanup;
    }
    if (nq == 0)
        goto cleanup;
    if (nprobe == 0)
        nprobe = ix->nprobe;
    search_ctx ctx = {.ix = ix, .Q = Q, .nq = nq, .k = k, .nprobe = nprobe, .dists = D, .labels = labels};
    /* candidates kept for re-ranking: k_factor x k, never more than the index holds */
    size_t kk = ix->k_factor * k;
    if (kk > ix->count)
        kk = ix->count;
    ctx.kk = kk > k ? kk : k;
    if (filter && (filter->mask || filter->ids)) {
        ctx.filter = filter;
        if (filter->mask) {
            int64_t max_id = -1;
            for (size_t l = 0; l < ix->nlist; l++)
                for (size_t i = 0; i < ix->lists[l].size; i++)
                    max_id = ix->lists[l].ids[i] > max_id ? ix->lists[l].ids[i] : max_id;
            if ((rc = isx_filter_check_mask(filter, max_id)))
                goto cleanup;
        } else {
            if ((rc = isx_idmap_reserve(&allowed, filter->n_ids)))
                goto cleanup;
            for (size_t i = 0; i < filter->n_ids; i++)
                if (filter->ids[i] >= 0)
                    isx_idmap_put(&allowed, filter->ids[i], 1);
            ctx.allowed = &allowed;
        }
    }
    nt = isx_resolve_threads(nthreads);
    size_t nblocks = (nq + IVFPQ_QUERY_BLOCK(ix) - 1) / IVFPQ_QUERY_BLOCK(ix);
    if ((size_t)nt > nblocks)
        nt = (int)nblocks;
    if (!(ws = calloc((size_t)nt, sizeof(scratch)))) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate %d workers", nt);
        goto cleanup;
    }
    for (int i = 0; i < nt; i++)
        if ((rc = scratch_init(ix, &ws[i], nprobe, ctx.kk, k)))
            goto cleanup;
    ctx.ws = ws;
    rc = isx_parallel_for(nt, nblocks, task_search, &ctx);
cleanup:
    pthread_rwlock_unlock(&ix->lock);
    for (int i = 0; ws && i < nt; i++)
        scratch_free(&ws[i]);
    free(ws);
    isx_idmap_free(&allowed);
    return rc;
}

/* ======================================================================
 * Memory
 * ====================================================================== */

size_t isx_ivfpq_memory(isx_ivfpq *ix, size_t *lists)
{
    pthread_rwlock_rdlock(&ix->lock);
    size_t lb = 0, rb = 0;
    for (size_t l = 0; l < ix->nlist; l++) {
        const isx_ivf_list *L = &ix->lists[l];
        size_t cap = L->owned ? L->cap : L->size;
        lb += codes_bytes(ix, cap) + cap * sizeof(int64_t);
        rb += ix->refine ? cap * ix->row_bytes : 0;
    }
    size_t b = sizeof(*ix) + ix->nlist * sizeof(isx_ivf_list) + lb;
    b += ix->trained ? ix->nlist * ix->dim * sizeof(float) : 0;
    b += ix->dim * ksub_of(ix) * sizeof(float);
    b += ix->precomp ? ix->nlist * ix->m * ksub_of(ix) * sizeof(float) : 0;
    b += ix->map.keys ? (ix->map.mask + 1) * 2 * sizeof(int64_t) : 0;
    b += rb;
    pthread_rwlock_unlock(&ix->lock);
    if (lists)
        *lists = lb;
    return b;
}

/* ======================================================================
 * Serialisation
 * ====================================================================== */

static void param_int(isx_param *p, const char *key, int64_t v)
{
    memset(p, 0, sizeof(*p));
    strcpy(p->key, key);
    p->type = ISX_PARAM_INT;
    p->v.i = v;
}

void isx_ivfpq_save_buf_free(isx_ivfpq_save_buf *b)
{
    if (b) {
        free(b->sizes);
        free(b->spans);
        free(b);
    }
}

int isx_ivfpq_describe(isx_ivfpq *ix, isx_header *hd, isx_section_out *secs, uint32_t *nsecs, uint8_t *parm,
                       size_t parm_cap, isx_ivfpq_save_buf **bufs)
{
    *bufs = NULL;
    isx_param p[16];
    uint32_t np = 0;
    param_int(&p[np++], "nlist", (int64_t)ix->nlist);
    param_int(&p[np++], "m", (int64_t)ix->m);
    param_int(&p[np++], "nbits", (int64_t)ix->nbits);
    param_int(&p[np++], "refine", (int64_t)ix->refine);
    param_int(&p[np++], "seed", (int64_t)ix->seed);
    param_int(&p[np++], "nprobe", (int64_t)ix->nprobe);
    param_int(&p[np++], "k_factor", (int64_t)ix->k_factor);
    param_int(&p[np++], "next_id", ix->next_id);
    param_int(&p[np++], "trained", ix->trained);
    size_t used;
    int rc = isx_params_encode(p, np, parm, parm_cap, &used);
    if (rc)
        return rc;
    /* each list's arrays as parts of one section, compacted to their sizes */
    isx_ivfpq_save_buf *buf = malloc(sizeof(*buf));
    uint64_t *sizes = malloc(ix->nlist * 8);
    isx_span *spans = malloc(3 * ix->nlist * sizeof(isx_span));
    if (!buf || !sizes || !spans) {
        free(buf);
        free(sizes);
        free(spans);
        return isx_error(ISX_ENOMEM, "cannot allocate the section table of %zu lists for saving", ix->nlist);
    }
    buf->sizes = sizes;
    buf->spans = spans;
    isx_span *codes = spans, *ids = spans + ix->nlist, *rows = spans + 2 * ix->nlist;
    uint64_t ncodes = 0;
    for (size_t l = 0; l < ix->nlist; l++) {
        const isx_ivf_list *L = &ix->lists[l];
        sizes[l] = L->size;
        codes[l] = (isx_span){L->codes, codes_bytes(ix, L->size)};
        ids[l] = (isx_span){L->ids, L->size * sizeof(int64_t)};
        rows[l] = (isx_span){L->rows, ix->refine ? L->size * ix->row_bytes : 0};
        ncodes += codes[l].size;
    }
    memset(hd, 0, sizeof(*hd));
    hd->kind = ISX_KIND_IVFPQ;
    hd->metric = ix->metric;
    hd->dtype = ix->refine == ISX_DTYPE_F16 ? ISX_DTYPE_F16 : ISX_DTYPE_F32;
    hd->dim = ix->dim;
    hd->count = ix->count;
    size_t ksub = ksub_of(ix);
    secs[0] = (isx_section_out){ISX_SEC_PARAMS, parm, used};
    secs[1] = (isx_section_out){ISX_SEC_IVF_COARSE, ix->coarse, ix->trained ? ix->nlist * ix->dim * 4 : 0};
    secs[2] = (isx_section_out){ISX_SEC_IVF_PQ, ix->pq.centroids, ix->trained ? ix->dim * ksub * 4 : 0};
    secs[3] = (isx_section_out){ISX_SEC_IVF_SIZES, sizes, ix->nlist * 8};
    secs[4] = (isx_section_out){ISX_SEC_IVF_CODES, NULL, ncodes, codes, ix->nlist};
    secs[5] = (isx_section_out){ISX_SEC_IDS, NULL, ix->count * 8, ids, ix->nlist};
    secs[6] = (isx_section_out){ISX_SEC_IVF_REFINE, NULL, ix->refine ? ix->count * ix->row_bytes : 0, rows, ix->nlist};
    *nsecs = ISX_IVFPQ_SECTIONS;
    *bufs = buf;
    return ISX_OK;
}

static int get_param(const isx_param *p, uint32_t n, const char *key, int64_t lo, int64_t hi, int64_t *out)
{
    int rc = isx_params_get_int(p, n, key, out);
    if (rc)
        return rc;
    if (*out < lo || *out > hi)
        return isx_error(ISX_EFORMAT, "IVF-PQ parameter %s = %lld is outside [%lld, %lld]", key, (long long)*out,
                         (long long)lo, (long long)hi);
    return ISX_OK;
}

static int half_finite(uint16_t h)
{
    return (h & 0x7c00) != 0x7c00;
}

int isx_ivfpq_from_file(isx_file *file, isx_ivfpq **out)
{
    *out = NULL;
    isx_ivfpq *ix = NULL;
    const isx_header *hd = &file->header;
    const isx_section_in *parm, *sz, *cq, *pqs, *cd, *ids, *rf;
    isx_param p[ISX_MAX_PARAMS];
    uint32_t np = 0;
    int64_t nlist, m, nbits, refine, seed, nprobe, k_factor, next_id, trained;
    int rc;
    if (hd->kind != ISX_KIND_IVFPQ) {
        rc = isx_error(ISX_EFORMAT, "expected an IVF-PQ index (kind %d), found kind %u", ISX_KIND_IVFPQ, hd->kind);
        goto fail;
    }
    if (!(parm = isx_format_find(file, ISX_SEC_PARAMS))) {
        rc = isx_error(ISX_EFORMAT, "IVF-PQ index: the PARM section is missing");
        goto fail;
    }
    if ((rc = isx_params_decode(parm->data, parm->size, p, ISX_MAX_PARAMS, &np)) ||
        (rc = get_param(p, np, "nlist", 1, ISX_IVFPQ_MAX_NLIST, &nlist)) ||
        (rc = get_param(p, np, "m", 1, ISX_IVFPQ_MAX_M, &m)) || (rc = get_param(p, np, "nbits", 4, 8, &nbits)) ||
        (rc = get_param(p, np, "refine", 0, ISX_DTYPE_F16, &refine)) ||
        (rc = isx_params_get_int(p, np, "seed", &seed)) ||
        (rc = get_param(p, np, "nprobe", 1, nlist, &nprobe)) ||
        (rc = get_param(p, np, "k_factor", 1, ISX_IVFPQ_MAX_K_FACTOR, &k_factor)) ||
        (rc = get_param(p, np, "next_id", 0, INT64_MAX, &next_id)) ||
        (rc = get_param(p, np, "trained", 0, 1, &trained)))
        goto fail;
    if ((nbits != 4 && nbits != 8) ||
        (hd->dtype != (refine == ISX_DTYPE_F16 ? ISX_DTYPE_F16 : ISX_DTYPE_F32))) {
        rc = isx_error(ISX_EFORMAT, "IVF-PQ index: nbits %lld / refine %lld / dtype %u do not go together",
                       (long long)nbits, (long long)refine, hd->dtype);
        goto fail;
    }
    if (!trained && hd->count) {
        rc = isx_error(ISX_EFORMAT, "IVF-PQ index: %llu vectors in an untrained index", (unsigned long long)hd->count);
        goto fail;
    }
    /* the list sizes prove nlist against the file before nlist sizes anything */
    if ((rc = isx_format_require(file, ISX_SEC_IVF_SIZES, (uint64_t)nlist * 8, &sz)))
        goto fail;
    if ((rc = isx_ivfpq_create((isx_metric)hd->metric, (size_t)hd->dim, (size_t)nlist, (size_t)m, (size_t)nbits,
                               (isx_dtype)refine, (uint64_t)seed, &ix))) {
        rc = isx_error(ISX_EFORMAT, "IVF-PQ index header: %s", isx_last_error());
        goto fail;
    }
    size_t n = (size_t)hd->count, ksub = ksub_of(ix), ncodes = 0, total = 0;
    for (size_t l = 0; l < ix->nlist; l++) {
        uint64_t s;
        memcpy(&s, sz->data + l * 8, 8); /* little-endian hosts only (format.c refuses others) */
        if (s > n - total || s > UINT32_MAX) {
            rc = isx_error(ISX_EFORMAT, "IVF-PQ index: the list sizes add up to more than the %zu vectors the "
                                        "header counts", n);
            goto fail;
        }
        total += (size_t)s;
        ncodes += codes_bytes(ix, (size_t)s);
    }
    if (total != n) {
        rc = isx_error(ISX_EFORMAT, "IVF-PQ index: the lists hold %zu vectors, the header counts %zu", total, n);
        goto fail;
    }
    if ((rc = isx_format_require(file, ISX_SEC_IVF_COARSE, trained ? (uint64_t)nlist * hd->dim * 4 : 0, &cq)) ||
        (rc = isx_format_require(file, ISX_SEC_IVF_PQ, trained ? (uint64_t)hd->dim * ksub * 4 : 0, &pqs)) ||
        (rc = isx_format_require(file, ISX_SEC_IVF_CODES, ncodes, &cd)) ||
        (rc = isx_format_require(file, ISX_SEC_IDS, (uint64_t)n * 8, &ids)) ||
        (rc = isx_format_require(file, ISX_SEC_IVF_REFINE, refine ? (uint64_t)n * ix->row_bytes : 0, &rf))) {
        rc = isx_error(ISX_EFORMAT, "IVF-PQ index of %zu vectors: %s", n, isx_last_error());
        goto fail;
    }
    ix->nprobe = (size_t)nprobe;
    ix->k_factor = (size_t)k_factor;
    ix->trained = (int)trained;
    if (trained) {
        const float *c = (const float *)cq->data, *pc = (const float *)pqs->data;
        for (size_t i = 0; i < ix->nlist * ix->dim; i++)
            if (!isfinite(c[i])) {
                rc = isx_error(ISX_EFORMAT, "IVF-PQ index: coarse centroid %zu is not finite", i / ix->dim);
                goto fail;
            }
        for (size_t i = 0; i < ix->dim * ksub; i++)
            if (!isfinite(pc[i])) {
                rc = isx_error(ISX_EFORMAT, "IVF-PQ index: a PQ centroid is not finite");
                goto fail;
            }
        isx_aligned_free(ix->coarse);
        ix->coarse = (float *)cq->data; /* sections are 64-byte aligned: see format.h */
        ix->coarse_owned = 0;
        isx_pq_free(&ix->pq);
        if ((rc = isx_pq_borrow(&ix->pq, ix->dim, ix->m, ix->nbits, (float *)pqs->data)))
            goto fail;
    }
    if ((rc = isx_idmap_reserve(&ix->map, n)))
        goto fail;
    size_t at = 0, cat = 0;
    for (size_t l = 0; l < ix->nlist; l++) {
        isx_ivf_list *L = &ix->lists[l];
        uint64_t s;
        memcpy(&s, sz->data + l * 8, 8);
        L->size = L->cap = (size_t)s;
        L->codes = (uint8_t *)cd->data + cat;
        L->ids = (int64_t *)(ids->data + at * 8);
        L->rows = refine ? (uint8_t *)rf->data + at * ix->row_bytes : NULL;
        L->owned = 0;
        cat += codes_bytes(ix, L->size);
        for (size_t i = 0; i < L->size; i++) {
            int64_t id = L->ids[i];
            if (id < 0 || isx_idmap_get(&ix->map, id) >= 0) {
                rc = isx_error(ISX_EFORMAT, "IVF-PQ index: ids must be unique and non-negative, found id %lld %s",
                               (long long)id, id < 0 ? "" : "twice");
                goto fail;
            }
            isx_idmap_put(&ix->map, id, pack_loc(l, i));
            if (id >= next_id)
                next_id = id == INT64_MAX ? id : id + 1;
            if (refine) {
                const uint8_t *row = L->rows + i * ix->row_bytes;
                for (size_t t = 0; t < ix->dim; t++) {
                    int ok;
                    if (refine == ISX_DTYPE_F32) {
                        float v;
                        memcpy(&v, row + t * 4, 4);
                        ok = isfinite(v);
                    } else {
                        uint16_t h;
                        memcpy(&h, row + t * 2, 2);
                        ok = half_finite(h);
                    }
                    if (!ok) {
                        rc = isx_error(ISX_EFORMAT, "IVF-PQ index: the refine row of id %lld is not finite",
                                       (long long)id);
                        goto fail;
                    }
                }
            }
        }
        at += L->size;
    }
    ix->count = n;
    ix->next_id = next_id;
    if ((rc = build_tables(ix, 0)))
        goto fail;
    ix->file = file;
    isx_clear_error();
    *out = ix;
    return ISX_OK;
fail:
    if (ix) { /* nothing may free what points into the file, closed below */
        for (size_t l = 0; l < ix->nlist; l++)
            if (!ix->lists[l].owned) {
                ix->lists[l].codes = NULL;
                ix->lists[l].ids = NULL;
                ix->lists[l].rows = NULL;
                ix->lists[l].owned = 1;
            }
        if (!ix->coarse_owned) {
            ix->coarse = NULL;
            ix->coarse_owned = 1;
        }
    }
    isx_ivfpq_destroy(ix);
    isx_format_close(file);
    free(file);
    return rc;
}
