/*
 * kmeans.c -- Lloyd's k-means for the IVF coarse quantizer and the PQ
 * codebooks (see kmeans.h for the contract).
 *
 * One iteration is an assignment step and an update step.
 *
 *   Assignment  points go in blocks of ISX_KMEANS_BLOCK, one task each.  A
 *               block's nearest centroids come from v = |c|^2 - 2 x.c (|x|^2
 *               is the same for every centroid and does not change the
 *               arg-min).  On AVX2/AVX-512 CPUs the product runs through the
 *               fused dot-product + top-k kernel of the kernel table (the one
 *               flat.c's GEMM plan uses), with a heap of one per point: the
 *               block x centroids product never leaves the registers, which
 *               measured faster than OpenBLAS sgemm followed by an arg-min
 *               pass over the product (flat.c: ~86 against ~79 GFLOP/s at
 *               d = 784), and much faster for the small dimensions of PQ
 *               sub-spaces (d = 4 or 8), where sgemm's K is tiny and writing
 *               and rereading the product costs more than computing it.
 *               Without such a kernel (the serial level) sgemm tiles and the
 *               vectorised select do the job.
 *   Update      a counting sort groups the points by cluster (each cluster's
 *               points in increasing index order), then clusters are summed
 *               in float64, in parallel over groups of clusters.  Each sum is
 *               taken in one fixed order whatever the thread count, so a seed
 *               gives one model, bit for bit, on 1 or 16 threads.
 *   Empty       a cluster left empty takes half of the largest one: a copy of
 *               its centroid, both perturbed by a relative 1/1024 in opposite
 *               directions, alternating by coordinate (as faiss does), so the
 *               next assignment splits the points between them.  The largest
 *               cluster is the one picked (faiss draws one at random, weighted
 *               by size): no random draw, so nothing depends on the order in
 *               which clusters became empty.
 *
 * Seeding is a uniform sample of k distinct points; subsampling to
 * max_points is a uniform sample too.  Both use selection sampling (Knuth's
 * algorithm S): one pass, O(1) memory, indices come out sorted, so the copy
 * of a subsample reads X front to back.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../simd/simd.h"
#include "kmeans.h"

#define KM_CHUNK_BYTES (384 * 1024)    /* centroids per fused call: kept in L2 with the packed block */
#define KM_TILE 1024                   /* sgemm N (centroids per product tile) without a fused kernel */
#define KM_POINTS_PER_CENTROID 256     /* default max_points = k * 256, as faiss */
#define KM_SPLIT_EPS (1.0 / 1024.0)    /* relative perturbation of a split centroid, as faiss */
#define KM_UPDATE_GROUP 16             /* clusters per update task */
#define KM_MAX_K ((size_t)INT32_MAX)   /* assignments are int32 */

/* ======================================================================
 * Random numbers: splitmix64, seeded by the caller's seed
 * ====================================================================== */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, bound), bound >= 1 (Lemire's multiply-shift: no division). */
static uint64_t rand_below(uint64_t *s, uint64_t bound)
{
    return (uint64_t)(((unsigned __int128)splitmix64(s) * bound) >> 64);
}

/* `want` distinct indices of [0, n), sorted, uniformly (algorithm S). */
static void sample_sorted(uint64_t *rng, size_t n, size_t want, size_t *out)
{
    size_t got = 0;
    for (size_t i = 0; i < n && got < want; i++)
        if (rand_below(rng, n - i) < want - got)
            out[got++] = i;
}

/* ======================================================================
 * Assignment
 * ====================================================================== */

static size_t fused_chunk_rows(const isx_kernels *kern, size_t d)
{
    size_t rows = KM_CHUNK_BYTES / (d * sizeof(float));
    size_t unit = kern->fused.rows ? kern->fused.rows : 1;
    rows -= rows % unit;
    return rows < unit ? unit : rows;
}

size_t isx_kmeans_block_scratch(size_t d)
{
    const isx_kernels *kern = isx_kernels_active();
    size_t gather = (size_t)ISX_KMEANS_BLOCK * d;
    size_t work = kern->fused.fn ? isx_fused_packed_size(ISX_KMEANS_BLOCK, d, kern->fused.panel)
                                 : (size_t)ISX_KMEANS_BLOCK * KM_TILE;
    /* the packed panels start on a 64-byte boundary after the gathered block */
    return gather + (ISX_ALIGN / sizeof(float)) + work;
}

void isx_kmeans_nearest_block(const float *X, size_t m, size_t d, size_t ldx, const float *C, const float *cnorm,
                              size_t k, float *scratch, int32_t *assign, float *dist)
{
    const isx_kernels *kern = isx_kernels_active();
    float hd[ISX_KMEANS_BLOCK];
    int64_t hs[ISX_KMEANS_BLOCK];
    isx_topk heaps[ISX_KMEANS_BLOCK];
    for (size_t i = 0; i < m; i++)
        isx_topk_init(&heaps[i], &hd[i], &hs[i], 1);
    size_t gather_floats = (size_t)ISX_KMEANS_BLOCK * d;
    float *work = scratch + gather_floats + (ISX_ALIGN / sizeof(float) - gather_floats % (ISX_ALIGN / sizeof(float)));
    if (kern->fused.fn) {
        const float *rows = X;
        if (ldx != d) { /* isx_fused_pack reads contiguous rows */
            for (size_t i = 0; i < m; i++)
                memcpy(scratch + i * d, X + i * ldx, d * sizeof(float));
            rows = scratch;
        }
        isx_fused_pack(rows, m, d, -2.0f, kern->fused.panel, work);
        size_t chunk = fused_chunk_rows(kern, d);
        for (size_t t0 = 0; t0 < k; t0 += chunk) {
            size_t t1 = t0 + chunk < k ? t0 + chunk : k;
            kern->fused.fn(work, m, d, C, t0, t1, NULL, cnorm, NULL, heaps, 0);
        }
    } else {
        for (size_t t0 = 0; t0 < k; t0 += KM_TILE) {
            size_t tn = t0 + KM_TILE < k ? KM_TILE : k - t0;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)tn, (int)d, -2.0f, X, (int)ldx,
                        C + t0 * d, (int)d, 0.0f, work, (int)tn);
            for (size_t i = 0; i < m; i++)
                kern->select(work + i * tn, NULL, cnorm + t0, tn, t0, NULL, &heaps[i]);
        }
    }
    for (size_t i = 0; i < m; i++) {
        /* an empty heap means every v compared false (overflow to NaN): any
         * centroid is as good as another then, and 0 keeps the output valid */
        int32_t a = heaps[i].size ? (int32_t)hs[i] : 0;
        assign[i] = a;
        if (dist)
            kern->dist[ISX_METRIC_L2](X + i * ldx, C + (size_t)a * d, 1, d, &dist[i]);
    }
}

typedef struct {
    const float *X, *C;
    size_t n, d, k;
    float *cnorm;         /* |c|^2 */
    float **scratch;      /* per worker */
    int32_t *assign;
    float *dist;          /* NULL: not wanted */
} assign_ctx;

static int task_assign(void *ctx, size_t task, int worker)
{
    assign_ctx *a = ctx;
    size_t i0 = task * ISX_KMEANS_BLOCK;
    size_t m = a->n - i0 < ISX_KMEANS_BLOCK ? a->n - i0 : ISX_KMEANS_BLOCK;
    isx_kmeans_nearest_block(a->X + i0 * a->d, m, a->d, a->d, a->C, a->cnorm, a->k, a->scratch[worker],
                             a->assign + i0, a->dist ? a->dist + i0 : NULL);
    return ISX_OK;
}

/* Workspace of the assignment step, allocated once per training. */
typedef struct {
    int nthreads;
    float *cnorm;
    float **scratch;
} assign_ws;

static void assign_ws_free(assign_ws *w)
{
    free(w->cnorm);
    if (w->scratch)
        for (int i = 0; i < w->nthreads; i++)
            isx_aligned_free(w->scratch[i]);
    free(w->scratch);
    memset(w, 0, sizeof(*w));
}

static int assign_ws_init(assign_ws *w, size_t n, size_t d, size_t k, int nthreads)
{
    memset(w, 0, sizeof(*w));
    size_t blocks = (n + ISX_KMEANS_BLOCK - 1) / ISX_KMEANS_BLOCK;
    w->nthreads = isx_resolve_threads(nthreads);
    if ((size_t)w->nthreads > blocks)
        w->nthreads = blocks ? (int)blocks : 1;
    w->cnorm = malloc(k * sizeof(float));
    w->scratch = calloc((size_t)w->nthreads, sizeof(float *));
    if (!w->cnorm || !w->scratch)
        goto nomem;
    size_t floats = isx_kmeans_block_scratch(d);
    for (int i = 0; i < w->nthreads; i++)
        if (!(w->scratch[i] = isx_aligned_alloc(floats * sizeof(float))))
            goto nomem;
    return ISX_OK;
nomem:
    assign_ws_free(w);
    return isx_error(ISX_ENOMEM, "cannot allocate k-means workspace for k=%zu, d=%zu", k, d);
}

static int assign_all(assign_ws *w, const float *X, size_t n, size_t d, const float *C, size_t k, int32_t *assign,
                      float *dist)
{
    isx_kernels_active()->sqnorm(NULL, C, k, d, w->cnorm);
    assign_ctx a = {X, C, n, d, k, w->cnorm, w->scratch, assign, dist};
    size_t blocks = (n + ISX_KMEANS_BLOCK - 1) / ISX_KMEANS_BLOCK;
    return isx_parallel_for(w->nthreads, blocks, task_assign, &a);
}

/* ======================================================================
 * Argument checks
 * ====================================================================== */

static int check_finite(const float *X, size_t n, size_t d, const char *what)
{
    size_t total = n * d;
    for (size_t i = 0; i < total; i++)
        if (!isfinite(X[i]))
            return isx_error(ISX_EINVAL,
                             "%s must be finite, found %s at row %zu, column %zu (drop or impute such rows first)",
                             what, isnan(X[i]) ? "NaN" : "Inf", i / d, i % d);
    return ISX_OK;
}

static int check_shape(size_t n, size_t d, size_t k, const char *what)
{
    size_t bytes;
    if (d < 1 || d > ISX_MAX_DIM)
        return isx_error(ISX_EINVAL, "expected 1 <= d <= %u, found d=%zu", ISX_MAX_DIM, d);
    if (k < 1 || k > KM_MAX_K)
        return isx_error(ISX_EINVAL, "expected 1 <= k <= %zu, found k=%zu", KM_MAX_K, k);
    if ((uint64_t)n > ISX_MAX_COUNT)
        return isx_error(ISX_EINVAL, "expected at most %llu %s, found %zu", (unsigned long long)ISX_MAX_COUNT,
                         what, n);
    return isx_mul_size(n, d * sizeof(float), &bytes, what);
}

int isx_kmeans_assign(const float *X, size_t n, size_t d, const float *centroids, size_t k, int nthreads,
                      int32_t *assign, float *dist)
{
    int rc;
    if ((rc = check_shape(n, d, k, "points")) || (rc = check_finite(centroids, k, d, "centroids")) ||
        (rc = check_finite(X, n, d, "points")))
        return rc;
    if (n == 0)
        return ISX_OK;
    assign_ws w;
    if ((rc = assign_ws_init(&w, n, d, k, nthreads)))
        return rc;
    rc = assign_all(&w, X, n, d, centroids, k, assign, dist);
    assign_ws_free(&w);
    return rc;
}

/* ======================================================================
 * Update
 * ====================================================================== */

typedef struct {
    const float *X;
    size_t d, k;
    const size_t *start;   /* k + 1: cluster c's points are order[start[c] .. start[c+1]) */
    const size_t *order;
    float *C;
    double **acc;          /* per worker: d doubles */
    int spherical;
} update_ctx;

/* Scale row c of C to unit length in float64 (a zero row stays zero). */
static void normalise_row(float *c, size_t d)
{
    double s = 0;
    for (size_t j = 0; j < d; j++)
        s += (double)c[j] * c[j];
    if (s > 0) {
        double inv = 1.0 / sqrt(s);
        for (size_t j = 0; j < d; j++)
            c[j] = (float)(c[j] * inv);
    }
}

static int task_update(void *ctx, size_t task, int worker)
{
    update_ctx *u = ctx;
    size_t d = u->d;
    double *acc = u->acc[worker];
    size_t c1 = (task + 1) * KM_UPDATE_GROUP < u->k ? (task + 1) * KM_UPDATE_GROUP : u->k;
    for (size_t c = task * KM_UPDATE_GROUP; c < c1; c++) {
        size_t s = u->start[c], e = u->start[c + 1];
        if (s == e)
            continue; /* empty: split_empty() fills it */
        memset(acc, 0, d * sizeof(double));
        for (size_t p = s; p < e; p++) {
            const float *x = u->X + u->order[p] * d;
            for (size_t j = 0; j < d; j++)
                acc[j] += x[j];
        }
        double inv = 1.0 / (double)(e - s);
        float *out = u->C + c * d;
        for (size_t j = 0; j < d; j++)
            out[j] = (float)(acc[j] * inv);
        if (u->spherical)
            normalise_row(out, d);
    }
    return ISX_OK;
}

/* Give every empty cluster half of the largest one (see the file comment).
 * size[] counts points per cluster and is kept up to date, so that a second
 * empty cluster does not split the same halves again. */
static void split_empty(float *C, size_t k, size_t d, size_t *size, int spherical)
{
    for (size_t ci = 0; ci < k; ci++) {
        if (size[ci] != 0)
            continue;
        size_t cj = 0;
        for (size_t c = 1; c < k; c++)
            if (size[c] > size[cj])
                cj = c;
        float *a = C + ci * d, *b = C + cj * d;
        for (size_t j = 0; j < d; j++) {
            double up = b[j] * (1.0 + KM_SPLIT_EPS), down = b[j] * (1.0 - KM_SPLIT_EPS);
            a[j] = (float)(j % 2 == 0 ? up : down);
            b[j] = (float)(j % 2 == 0 ? down : up);
        }
        if (spherical) {
            normalise_row(a, d);
            normalise_row(b, d);
        }
        size[ci] = size[cj] / 2;
        size[cj] -= size[ci];
    }
}

/* ======================================================================
 * Training
 * ====================================================================== */

int isx_kmeans_train(const float *X, size_t n, size_t d, const isx_kmeans_params *p, float *centroids, double *obj)
{
    int rc;
    if (!p)
        return isx_error(ISX_EINVAL, "k-means parameters missing");
    size_t k = p->k;
    if ((rc = check_shape(n, d, k, "points")))
        return rc;
    if (k > n)
        return isx_error(ISX_EINVAL, "k-means needs at least k points: found n=%zu points for k=%zu clusters "
                         "(lower k or train on more points)", n, k);
    if (p->niter < 0)
        return isx_error(ISX_EINVAL, "expected niter >= 0, found niter=%d", p->niter);
    size_t max_points = p->max_points;
    if (max_points == 0)
        max_points = k > SIZE_MAX / KM_POINTS_PER_CENTROID ? SIZE_MAX : k * KM_POINTS_PER_CENTROID;
    if (max_points < k)
        return isx_error(ISX_EINVAL, "expected max_points >= k (or 0 for k * %d), found max_points=%zu for k=%zu",
                         KM_POINTS_PER_CENTROID, max_points, k);
    if ((rc = check_finite(X, n, d, "training points")))
        return rc;

    uint64_t rng = p->seed;
    size_t ns = n < max_points ? n : max_points;
    float *sample = NULL;
    size_t *idx = NULL, *start = NULL, *order = NULL, *size = NULL;
    int32_t *assign = NULL;
    float *dist = NULL;
    double **acc = NULL;
    assign_ws w = {0};
    int nthreads = isx_resolve_threads(p->nthreads);
    size_t groups = (k + KM_UPDATE_GROUP - 1) / KM_UPDATE_GROUP;
    int update_threads = (size_t)nthreads < groups ? nthreads : (int)groups;
    const float *pts = X;

    idx = malloc((ns > k ? ns : k) * sizeof(size_t));
    if (!idx)
        goto nomem;
    if (ns < n) {
        if (!(sample = isx_aligned_alloc(ns * d * sizeof(float))))
            goto nomem;
        sample_sorted(&rng, n, ns, idx);
        for (size_t i = 0; i < ns; i++)
            memcpy(sample + i * d, X + idx[i] * d, d * sizeof(float));
        pts = sample;
    }
    sample_sorted(&rng, ns, k, idx);
    for (size_t c = 0; c < k; c++)
        memcpy(centroids + c * d, pts + idx[c] * d, d * sizeof(float));
    if (p->spherical)
        for (size_t c = 0; c < k; c++)
            normalise_row(centroids + c * d, d);

    assign = malloc(ns * sizeof(int32_t));
    start = malloc((k + 1) * sizeof(size_t));
    size = malloc(k * sizeof(size_t));
    order = malloc(ns * sizeof(size_t));
    if (!assign || !start || !size || !order)
        goto nomem;
    if ((rc = assign_ws_init(&w, ns, d, k, nthreads)))
        goto cleanup;
    if (!(acc = calloc((size_t)update_threads, sizeof(double *))))
        goto nomem;
    for (int t = 0; t < update_threads; t++)
        if (!(acc[t] = malloc(d * sizeof(double))))
            goto nomem;

    for (int it = 0; it < p->niter; it++) {
        if ((rc = assign_all(&w, pts, ns, d, centroids, k, assign, NULL)))
            goto cleanup;
        /* counting sort: cluster by cluster, points in increasing index order */
        memset(size, 0, k * sizeof(size_t));
        for (size_t i = 0; i < ns; i++)
            size[assign[i]]++;
        start[0] = 0;
        for (size_t c = 0; c < k; c++)
            start[c + 1] = start[c] + size[c];
        memcpy(idx, start, k * sizeof(size_t)); /* idx: next free position per cluster */
        for (size_t i = 0; i < ns; i++)
            order[idx[assign[i]]++] = i;
        update_ctx u = {pts, d, k, start, order, centroids, acc, p->spherical};
        if ((rc = isx_parallel_for(update_threads, groups, task_update, &u)))
            goto cleanup;
        split_empty(centroids, k, d, size, p->spherical);
    }
    if (obj) {
        if (!(dist = malloc(ns * sizeof(float))))
            goto nomem;
        if ((rc = assign_all(&w, pts, ns, d, centroids, k, assign, dist)))
            goto cleanup;
        double s = 0;
        for (size_t i = 0; i < ns; i++)
            s += dist[i];
        *obj = s / (double)ns;
    }
    rc = ISX_OK;
    goto cleanup;
nomem:
    rc = isx_error(ISX_ENOMEM, "cannot allocate k-means buffers for n=%zu, d=%zu, k=%zu", ns, d, k);
cleanup:
    assign_ws_free(&w);
    if (acc)
        for (int t = 0; t < update_threads; t++)
            free(acc[t]);
    free(acc);
    isx_aligned_free(sample);
    free(idx);
    free(start);
    free(size);
    free(order);
    free(assign);
    free(dist);
    return rc;
}
