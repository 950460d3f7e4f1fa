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
 *               vectorised select do the job.  For d <= 32 (PQ sub-spaces)
 *               both give way to the kernel table's nearest_small slot:
 *               direct squared differences against transposed centroids with
 *               the arg-min kept in registers, no heap and no |x|^2 identity,
 *               so its distances (winner and runner-up) are exact to float32
 *               rounding; at d = 8, k = 256 the heap updates had been most of
 *               the cost.
 *   Update      a counting sort groups the points by cluster (each cluster's
 *               points in increasing index order), then clusters are summed
 *               in float64, in parallel over groups of clusters.  Each sum is
 *               taken in one fixed order whatever the thread count, so a seed
 *               gives one model, bit for bit, on 1 or 16 threads.  On one
 *               thread the same sums come from a single pass over the points
 *               in index order (update_sequential), which reads X in order.
 *   Empty       a cluster left empty takes half of the largest one: a copy of
 *               its centroid, both perturbed by a relative 1/1024 in opposite
 *               directions, alternating by coordinate (as faiss does), so the
 *               next assignment splits the points between them.  The largest
 *               cluster is the one picked (faiss draws one at random, weighted
 *               by size): no random draw, so nothing depends on the order in
 *               which clusters became empty.
 *
 *   Bounds      training does not search every point every iteration: each
 *               point keeps bounds on its distances (Hamerly's algorithm, see
 *               "the bounded assignment" below) and is searched again only
 *               when the centroids' moves could have changed its cluster;
 *               the search then starts from the last winner and runner-up.
 *               On 20,000 clustered points of dim 128, k = 1024, the 10th
 *               iteration searched 13 points.  The model is plain Lloyd's, step for step
 *               (tests/test_quant.py holds it against a NumPy Lloyd).
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

#include "../simd/nearest.h"
#include "../simd/simd.h"
#include "../common/rows.h"
#include "kmeans.h"

#define KM_CHUNK_BYTES (384 * 1024)    /* centroids per fused call: kept in L2 with the packed block */
#define KM_MAX_PANEL 64                /* scratch fits packed panels of up to 64 lanes (AVX-512: 32) */
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
    /* room for either plan, whatever the level in use: a test may change the
     * level (imgsearch._core._set_simd) while another thread trains */
    size_t gather = (size_t)ISX_KMEANS_BLOCK * d;
    size_t packed = isx_fused_packed_size(ISX_KMEANS_BLOCK, d, KM_MAX_PANEL);
    size_t tile = (size_t)ISX_KMEANS_BLOCK * KM_TILE;
    size_t work = packed > tile ? packed : tile;
    /* the packed panels start on a 64-byte boundary after the gathered block */
    return gather + (ISX_ALIGN / sizeof(float)) + work;
}

/* Dimensions up to which the assignment runs the nearest_small slot (direct
 * squared differences, arg-min in registers) instead of the fused kernel's
 * heaps or sgemm + select; see small_path().  It won at every d it takes
 * (50,000 points, k = 256, one thread, AVX2: 4.8 against 10.8 ms at d = 12,
 * 6.2 / 11.6 at 16, 9.1 / 14.4 at 24, 12.5 / 17.0 at 32), so the bound is
 * the kernel's own. */
#define KM_SMALL_MAX_D ISX_NEAREST_MAX_D

/* Whether points of dimension d against k centroids take the nearest_small
 * kernel.  It depends on (d, k) only, never on the SIMD level (every level
 * has the slot), so a test that changes the level mid-training cannot make
 * two blocks of one pass take different paths; the transposed centroids
 * must fit the work area of isx_kmeans_block_scratch. */
static int small_path(size_t d, size_t k)
{
    return d <= KM_SMALL_MAX_D && k <= ISX_NEAREST_MAX_K &&
           ISX_NEAREST_PAD(k) * d <= (size_t)ISX_KMEANS_BLOCK * KM_TILE;
}

/* The layout nearest_small reads (simd/nearest.h) of the k x d centroids C:
 * ISX_NEAREST_PAD(k) * d floats. */
static void transpose_centroids(const float *C, size_t k, size_t d, float *Ct)
{
    size_t kp = ISX_NEAREST_PAD(k);
    for (size_t t = 0; t < d; t++) {
        float *row = Ct + t * kp;
        for (size_t c = 0; c < k; c++)
            row[c] = C[c * d + t];
        for (size_t c = k; c < kp; c++)
            row[c] = 0.0f;
    }
}

#define KM_SENTINEL INT64_MAX /* slot of a seeded heap entry that no centroid replaced */

/* The nb (1 or 2) best centroids of m points (see isx_kmeans_nearest_block).
 * With nb = 2, second_v/second_c (may be NULL) receive the runner-up's
 * v = |c|^2 - 2 x.c and index (INFINITY / the winner when k = 1).
 *
 * seed_v (may be NULL; INFINITY: none for that point) is a v known to be
 * at least the nb-th best's, with a margin for rounding: the heaps start
 * full of sentinels at that value, so only the few centroids below it reach
 * a heap.  Most of the cost of a search from empty heaps is the pushes, not
 * the arithmetic (~2 ln k of them per point for nb = 2, each a branch the
 * CPU mispredicts and a heap update), when dsub is 4 or 8.  Should rounding
 * still leave a sentinel first, fallback[i] (a centroid whose v is about
 * seed_v[i]) is the answer; a sentinel second makes the runner-up's v the
 * winner's, which only loosens a bound. */
static void nearest_core(const float *X, size_t m, size_t d, size_t ldx, const float *C, const float *Ct,
                         const float *cnorm, size_t k, size_t nb, float *scratch, int32_t *assign, float *dist, float *second_v,
                         int32_t *second_c, const float *seed_v, const int32_t *fallback)
{
    const isx_kernels *kern = isx_kernels_active();
    size_t gather_floats = (size_t)ISX_KMEANS_BLOCK * d;
    float *work = scratch + gather_floats + (ISX_ALIGN / sizeof(float) - gather_floats % (ISX_ALIGN / sizeof(float)));
    if (small_path(d, k)) {
        /* the direct distances need no seed: there is no heap to spare, and
         * the runner-up's value is all the bounds take (second_c: the winner) */
        if (!Ct) {
            transpose_centroids(C, k, d, work);
            Ct = work;
        }
        float dd[ISX_KMEANS_BLOCK];
        kern->nearest_small(X, m, ldx, d, Ct, k, assign, dist ? dist : dd, second_v);
        if (second_c)
            for (size_t i = 0; i < m; i++)
                second_c[i] = assign[i];
        return;
    }
    float hd[2 * ISX_KMEANS_BLOCK];
    int64_t hs[2 * ISX_KMEANS_BLOCK];
    isx_topk heaps[ISX_KMEANS_BLOCK];
    for (size_t i = 0; i < m; i++) {
        isx_topk_init(&heaps[i], hd + i * nb, hs + i * nb, nb);
        if (seed_v && seed_v[i] < INFINITY) {
            for (size_t j = 0; j < nb; j++) {
                hd[i * nb + j] = seed_v[i];
                hs[i * nb + j] = KM_SENTINEL;
            }
            heaps[i].size = nb;
        }
    }
    if (kern->fused.fn && kern->fused.panel <= KM_MAX_PANEL) { /* a wider future kernel would not fit the scratch */
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
        isx_topk *h = &heaps[i];
        if (nb > 1)
            isx_topk_sort(h);
        /* an empty heap means every v compared false (overflow to NaN): any
         * centroid is as good as another then, and 0 keeps the output valid */
        int32_t a = h->size ? (int32_t)h->slot[0] : 0;
        if (h->size && h->slot[0] == KM_SENTINEL)
            a = fallback[i];
        assign[i] = a;
        if (dist)
            kern->dist[ISX_METRIC_L2](X + i * ldx, C + (size_t)a * d, 1, d, &dist[i]);
        if (second_v) {
            int kept = h->size > 1 && h->slot[1] != KM_SENTINEL && h->slot[0] != KM_SENTINEL;
            second_v[i] = h->size <= 1 ? INFINITY : kept ? h->dist[1] : h->dist[0];
            second_c[i] = kept ? (int32_t)h->slot[1] : a;
        }
    }
}

void isx_kmeans_nearest_block(const float *X, size_t m, size_t d, size_t ldx, const float *C, const float *cnorm,
                              size_t k, float *scratch, int32_t *assign, float *dist)
{
    nearest_core(X, m, d, ldx, C, NULL, cnorm, k, 1, scratch, assign, dist, NULL, NULL, NULL, NULL);
}

/* Workspace of the assignment step, allocated once per call or training. */
typedef struct {
    int nthreads;
    float *cnorm;
    float **scratch;   /* per worker: isx_kmeans_block_scratch(d), then a gathered block */
    size_t gather_at;  /* where the gathered block starts in scratch (floats) */
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
    w->gather_at = isx_kmeans_block_scratch(d);
    size_t floats = w->gather_at + (size_t)ISX_KMEANS_BLOCK * d;
    for (int i = 0; i < w->nthreads; i++)
        if (!(w->scratch[i] = isx_aligned_alloc(floats * sizeof(float))))
            goto nomem;
    return ISX_OK;
nomem:
    assign_ws_free(w);
    return isx_error(ISX_ENOMEM, "cannot allocate k-means workspace for k=%zu, d=%zu", k, d);
}

/* ---- the plain assignment: every point against every centroid ---- */

typedef struct {
    const float *X, *C;
    size_t n, d, k;
    const float *cnorm;
    const float *Ct;      /* C transposed for nearest_small (small_path), else NULL */
    float **scratch;
    int32_t *assign;
    float *dist;          /* NULL: not wanted */
} assign_ctx;

static int task_assign(void *ctx, size_t task, int worker)
{
    assign_ctx *a = ctx;
    size_t i0 = task * ISX_KMEANS_BLOCK;
    size_t m = a->n - i0 < ISX_KMEANS_BLOCK ? a->n - i0 : ISX_KMEANS_BLOCK;
    nearest_core(a->X + i0 * a->d, m, a->d, a->d, a->C, a->Ct, a->cnorm, a->k, 1, a->scratch[worker], a->assign + i0,
                 a->dist ? a->dist + i0 : NULL, NULL, NULL, NULL, NULL);
    return ISX_OK;
}

/* ---- the bounded assignment of training (Hamerly, 2010) ----
 *
 * Lloyd's later iterations move few points, yet a plain assignment pays for
 * every point against every centroid.  Each point keeps an upper bound u on
 * the distance to its centroid and a lower bound l on the distance to every
 * other one.  When the centroids move by shift[c], u grows by its own
 * centroid's shift and l shrinks by the largest shift of the others
 * (triangle inequality); while u <= l the point cannot change cluster and is
 * skipped.  Otherwise u is made exact (one distance), and only if u > l still
 * does the point go through the search, now for its two best centroids,
 * which give u and l afresh.  The assignments are those of plain Lloyd
 * (up to float rounding between near-equal distances, where plain Lloyd's
 * |x|^2 - 2 x.c + |c|^2 is no more right); l is taken a little below the
 * computed runner-up distance (KM_BOUND_SLACK) to cover that identity's
 * rounding.  Every point's fate depends on its own bounds only, so the
 * result is still the same on any thread count. */

#define KM_MOVERS 16          /* centroids measured exactly when the largest moves break a bound */
#define KM_MOVERS_MIN_DIM 32  /* below, measuring them costs more than it saves (PQ dsub = 8: 2.1 s against
                                 2.6 s for 4 sub-spaces of 100,000 points; d = 128: 4.4 s against 5.0 s) */
#define KM_BOUND_SLACK 1e-5f   /* relative to |x|^2 + |c|^2: the identity's float32 rounding, with margin */

typedef struct {
    const float *X, *C;
    size_t n, d, k;
    const float *cnorm, *xnorm;
    const float *shift;   /* per centroid since the last pass; NULL: first pass, search every point */
    const uint8_t *split; /* split[c]: c gave half of its cluster to an empty one since the last pass */
    float shift_max, shift_second;
    int32_t shift_argmax;
    int32_t movers[KM_MOVERS]; /* the centroids that moved most, and how many */
    size_t nmovers;
    float *mover_rows;         /* their rows, side by side: one kernel call measures them all */
    const float *Ct;           /* C transposed for nearest_small (small_path), once per pass; else NULL */
    float shift_rest;          /* the largest move of the others */
    float **scratch;
    size_t gather_at;
    int32_t *assign;
    int32_t *second;      /* the runner-up at the last search: seeds the next one */
    float *upper, *lower; /* u, l (not squared) */
    float *dist;          /* NULL, or the exact squared distance of every point (the objective's pass) */
} bounded_ctx;

static int task_bounded(void *ctx, size_t task, int worker)
{
    bounded_ctx *b = ctx;
    const isx_kernels *kern = isx_kernels_active();
    size_t d = b->d, i0 = task * ISX_KMEANS_BLOCK;
    size_t m = b->n - i0 < ISX_KMEANS_BLOCK ? b->n - i0 : ISX_KMEANS_BLOCK;
    float *rows = b->scratch[worker] + b->gather_at;
    uint32_t pick[ISX_KMEANS_BLOCK];
    float seed[ISX_KMEANS_BLOCK];
    int32_t fallback[ISX_KMEANS_BLOCK];
    size_t np = 0;
    int small = small_path(d, b->k);
    for (size_t i = 0; i < m; i++) {
        size_t p = i0 + i;
        float du = INFINITY;
        int32_t a = b->assign[p];
        if (b->shift) {
            const float *x = b->X + p * d;
            float lower_was = b->lower[p];
            b->upper[p] += b->shift[a];
            b->lower[p] -= a == b->shift_argmax ? b->shift_second : b->shift_max;
            if (b->split[a]) /* a twin of its centroid appeared next to it: no bound holds */
                b->lower[p] = -INFINITY;
            if (b->upper[p] > b->lower[p] || b->dist) {
                kern->dist[ISX_METRIC_L2](x, b->C + (size_t)a * d, 1, d, &du);
                b->upper[p] = sqrtf(du);
                if (b->dist)
                    b->dist[p] = du;
            }
            if (b->upper[p] > b->lower[p] && !b->split[a] && b->nmovers) {
                /* a few centroids moving far should not cost a full search:
                 * measure those exactly, bound the rest by their largest move */
                float dm[KM_MOVERS];
                kern->dist[ISX_METRIC_L2](x, b->mover_rows, b->nmovers, d, dm);
                float near2 = INFINITY; /* squared: one square root, not one per mover */
                for (size_t t = 0; t < b->nmovers; t++) {
                    int32_t c = b->movers[t];
                    float s2 = dm[t] - KM_BOUND_SLACK * (b->xnorm[p] + b->cnorm[c]);
                    if (c != a && s2 < near2)
                        near2 = s2;
                }
                float rest = lower_was - b->shift_rest;
                float l = near2 < rest * rest || rest < 0.0f ? sqrtf(near2 > 0.0f ? near2 : 0.0f) : rest;
                l = l < rest ? l : rest;
                if (l > b->lower[p])
                    b->lower[p] = l;
            }
            if (b->upper[p] <= b->lower[p])
                continue;
        }
        /* seed the search with the winner and runner-up of the last one:
         * the best two now are at most as far as the farther of those */
        seed[np] = INFINITY;
        int32_t a2 = b->shift && !small ? b->second[p] : a;
        if (a2 != a) {
            float d2;
            kern->dist[ISX_METRIC_L2](b->X + p * d, b->C + (size_t)a2 * d, 1, d, &d2);
            float far = d2 > du ? d2 : du, cn = b->cnorm[a] > b->cnorm[a2] ? b->cnorm[a] : b->cnorm[a2];
            seed[np] = far - b->xnorm[p] + KM_BOUND_SLACK * (b->xnorm[p] + cn);
        }
        fallback[np] = a;
        pick[np++] = (uint32_t)i;
    }
    if (np == 0)
        return ISX_OK;
    const float *Xb = b->X + i0 * d;
    if (np < m) {
        for (size_t j = 0; j < np; j++)
            memcpy(rows + j * d, Xb + (size_t)pick[j] * d, d * sizeof(float));
        Xb = rows;
    }
    int32_t a[ISX_KMEANS_BLOCK], sc[ISX_KMEANS_BLOCK];
    float du[ISX_KMEANS_BLOCK], sv[ISX_KMEANS_BLOCK];
    nearest_core(Xb, np, d, d, b->C, b->Ct, b->cnorm, b->k, 2, b->scratch[worker], a, du, sv, sc, seed, fallback);
    for (size_t j = 0; j < np; j++) {
        size_t p = i0 + pick[j];
        b->assign[p] = a[j];
        b->second[p] = sc[j];
        b->upper[p] = sqrtf(du[j]);
        if (b->dist)
            b->dist[p] = du[j];
        float xn = b->xnorm[p];
        /* the small path's sv is the direct distance, exact to a relative
         * (d + 2) float32 roundings (< KM_BOUND_SLACK for d <= 32); the
         * others' is v = |c|^2 - 2 x.c, off by up to the slack of the norms */
        float l2 = small ? sv[j] * (1.0f - KM_BOUND_SLACK) : sv[j] + xn - KM_BOUND_SLACK * (xn + b->cnorm[sc[j]]);
        b->lower[p] = sv[j] == INFINITY ? INFINITY : sqrtf(l2 > 0.0f ? l2 : 0.0f);
    }
    return ISX_OK;
}

/* How far each centroid moved since the last pass, rounded up, and the two
 * largest moves.  A centroid re-seeded by a split is measured from the old
 * place of the centroid it was split from (origin[c]; c itself otherwise):
 * a point of another cluster was at least l from that one, so it is at least
 * l - shift[c] from the twin, and the split costs the bounds of the points
 * outside the split cluster almost nothing; the split cluster's own points
 * are searched again (split[]). */
static void centroid_shifts(const float *C, const float *prev, const int32_t *origin, size_t k, size_t d,
                            float *shift, uint8_t *split, bounded_ctx *b)
{
    b->shift_max = b->shift_second = 0.0f;
    b->shift_argmax = 0;
    memset(split, 0, k);
    for (size_t c = 0; c < k; c++)
        if ((size_t)origin[c] != c)
            split[origin[c]] = 1;
    for (size_t c = 0; c < k; c++) {
        double s = 0;
        const float *from = prev + (size_t)origin[c] * d;
        for (size_t j = 0; j < d; j++) {
            double t = (double)C[c * d + j] - from[j];
            s += t * t;
        }
        shift[c] = (float)(sqrt(s) * (1.0 + 1e-6));
        if (shift[c] > b->shift_max) {
            b->shift_second = b->shift_max;
            b->shift_max = shift[c];
            b->shift_argmax = (int32_t)c;
        } else if (shift[c] > b->shift_second) {
            b->shift_second = shift[c];
        }
    }
    /* the KM_MOVERS largest moves, by selection (k is small next to n) */
    b->nmovers = k > 2 * KM_MOVERS && d >= KM_MOVERS_MIN_DIM ? KM_MOVERS : 0;
    float below = INFINITY;
    for (size_t t = 0; t < b->nmovers; t++) {
        int32_t best = -1;
        for (size_t c = 0; c < k; c++)
            if (shift[c] <= below && (best < 0 || shift[c] > shift[best]) &&
                !(t > 0 && shift[c] == below && (int32_t)c <= b->movers[t - 1]))
                best = (int32_t)c;
        b->movers[t] = best;
        below = shift[best];
    }
    for (size_t t = 0; t < b->nmovers; t++)
        memcpy(b->mover_rows + t * d, C + (size_t)b->movers[t] * d, d * sizeof(float));
    b->shift_rest = 0.0f;
    if (b->nmovers) {
        int32_t lastm = b->movers[b->nmovers - 1];
        for (size_t c = 0; c < k; c++)
            if (shift[c] < below || (shift[c] == below && (int32_t)c > lastm))
                b->shift_rest = shift[c] > b->shift_rest ? shift[c] : b->shift_rest;
    }
}

/* ======================================================================
 * Argument checks
 * ====================================================================== */

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
    if ((rc = check_shape(n, d, k, "points")) || (rc = isx_check_finite(centroids, k, d, "centroids")) ||
        (rc = isx_check_finite(X, n, d, "points")))
        return rc;
    if (n == 0)
        return ISX_OK;
    assign_ws w;
    if ((rc = assign_ws_init(&w, n, d, k, nthreads)))
        return rc;
    isx_kernels_active()->sqnorm(NULL, centroids, k, d, w.cnorm);
    float *Ct = NULL; /* transposed once here rather than once per block */
    if (small_path(d, k) && (Ct = malloc(ISX_NEAREST_PAD(k) * d * sizeof(float))))
        transpose_centroids(centroids, k, d, Ct);
    assign_ctx a = {X, centroids, n, d, k, w.cnorm, Ct, w.scratch, assign, dist};
    rc = isx_parallel_for(w.nthreads, (n + ISX_KMEANS_BLOCK - 1) / ISX_KMEANS_BLOCK, task_assign, &a);
    free(Ct);
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

/* The update on one thread (PQ trains each sub-space on one): one pass over
 * the points in index order, each added to its cluster's float64 row of acc
 * (k x d).  Every cluster's sum is the same additions in the same order as
 * task_update's (its points in increasing index order), so the model is bit
 * for bit that of the parallel update -- but X is read front to back instead
 * of through the counting sort's order[], which at d = 8 was a cache miss per
 * point. */
#define KM_SEQ_UPDATE_MAX_FLOATS ((size_t)1 << 21) /* k * d: 16 MiB of float64 at most */

static void update_sequential(const float *X, size_t n, size_t d, size_t k, const int32_t *assign,
                              const size_t *size, double *acc, float *C, int spherical)
{
    memset(acc, 0, k * d * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        const float *x = X + i * d;
        double *a = acc + (size_t)assign[i] * d;
        for (size_t j = 0; j < d; j++)
            a[j] += x[j];
    }
    for (size_t c = 0; c < k; c++) {
        if (size[c] == 0)
            continue; /* empty: split_empty() fills it */
        double inv = 1.0 / (double)size[c];
        float *out = C + c * d;
        for (size_t j = 0; j < d; j++)
            out[j] = (float)(acc[c * d + j] * inv);
        if (spherical)
            normalise_row(out, d);
    }
}

/* Give every empty cluster half of the largest one (see the file comment).
 * size[] counts points per cluster and is kept up to date, so that a second
 * empty cluster does not split the same halves again.  origin[c] receives
 * the centroid (before this update) whose points c's are: c itself, or for
 * a re-seeded one, the split cluster's origin. */
static void split_empty(float *C, size_t k, size_t d, size_t *size, int spherical, int32_t *origin)
{
    for (size_t c = 0; c < k; c++)
        origin[c] = (int32_t)c;
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
        origin[ci] = origin[cj];
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
    if ((rc = isx_check_finite(X, n, d, "training points")))
        return rc;

    uint64_t rng = p->seed;
    size_t ns = n < max_points ? n : max_points;
    float *sample = NULL;
    size_t *idx = NULL, *start = NULL, *order = NULL, *size = NULL;
    int32_t *assign = NULL;
    float *dist = NULL, *xnorm = NULL, *upper = NULL, *lower = NULL, *shift = NULL, *prev = NULL;
    int32_t *origin = NULL, *second = NULL;
    uint8_t *split = NULL;
    float *mover_rows = NULL, *Ct = NULL;
    double **acc = NULL, *seq_acc = NULL;
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
    xnorm = malloc(ns * sizeof(float));
    upper = malloc(ns * sizeof(float));
    lower = malloc(ns * sizeof(float));
    shift = malloc(k * sizeof(float));
    prev = malloc(k * d * sizeof(float));
    origin = malloc(k * sizeof(int32_t));
    split = malloc(k);
    second = malloc(ns * sizeof(int32_t));
    mover_rows = malloc(KM_MOVERS * d * sizeof(float));
    if (!assign || !start || !size || !order || !xnorm || !upper || !lower || !shift || !prev || !origin || !split ||
        !second || !mover_rows)
        goto nomem;
    if (obj && !(dist = malloc(ns * sizeof(float))))
        goto nomem;
    if (small_path(d, k) && !(Ct = malloc(ISX_NEAREST_PAD(k) * d * sizeof(float))))
        goto nomem;
    if ((rc = assign_ws_init(&w, ns, d, k, nthreads)))
        goto cleanup;
    if (!(acc = calloc((size_t)update_threads, sizeof(double *))))
        goto nomem;
    for (int t = 0; t < update_threads; t++)
        if (!(acc[t] = malloc(d * sizeof(double))))
            goto nomem;
    if (update_threads == 1 && k <= KM_SEQ_UPDATE_MAX_FLOATS / d && !(seq_acc = malloc(k * d * sizeof(double))))
        goto nomem;
    isx_kernels_active()->sqnorm(NULL, pts, ns, d, xnorm);
    memset(assign, 0, ns * sizeof(int32_t)); /* read (as no seed) by the first, unbounded pass */

    bounded_ctx b = {.X = pts, .C = centroids, .n = ns, .d = d, .k = k, .cnorm = w.cnorm, .xnorm = xnorm,
                     .scratch = w.scratch, .gather_at = w.gather_at, .assign = assign, .second = second,
                     .upper = upper, .lower = lower, .mover_rows = mover_rows};
    size_t blocks = (ns + ISX_KMEANS_BLOCK - 1) / ISX_KMEANS_BLOCK;
    /* niter assignments each followed by an update; then, for obj, one more
     * (bounded, so nearly free) assignment that measures the centroids returned */
    for (int it = 0; it <= p->niter; it++) {
        int last = it == p->niter;
        if (last && !obj)
            break;
        b.dist = last ? dist : NULL;
        isx_kernels_active()->sqnorm(NULL, centroids, k, d, w.cnorm);
        if (Ct) { /* once per pass: late passes search a few points per block */
            transpose_centroids(centroids, k, d, Ct);
            b.Ct = Ct;
        }
        if ((rc = isx_parallel_for(w.nthreads, blocks, task_bounded, &b)))
            goto cleanup;
        if (last)
            break;
        memset(size, 0, k * sizeof(size_t));
        for (size_t i = 0; i < ns; i++)
            size[assign[i]]++;
        memcpy(prev, centroids, k * d * sizeof(float));
        if (seq_acc) {
            update_sequential(pts, ns, d, k, assign, size, seq_acc, centroids, p->spherical);
            goto updated;
        }
        /* counting sort: cluster by cluster, points in increasing index order */
        start[0] = 0;
        for (size_t c = 0; c < k; c++)
            start[c + 1] = start[c] + size[c];
        memcpy(idx, start, k * sizeof(size_t)); /* idx: next free position per cluster */
        for (size_t i = 0; i < ns; i++)
            order[idx[assign[i]]++] = i;
        update_ctx u = {pts, d, k, start, order, centroids, acc, p->spherical};
        if ((rc = isx_parallel_for(update_threads, groups, task_update, &u)))
            goto cleanup;
    updated:
        split_empty(centroids, k, d, size, p->spherical, origin);
        centroid_shifts(centroids, prev, origin, k, d, shift, split, &b);
        b.split = split;
        b.shift = shift;
    }
    if (obj) {
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
    free(xnorm);
    free(upper);
    free(lower);
    free(shift);
    free(prev);
    free(origin);
    free(split);
    free(second);
    free(mover_rows);
    free(Ct);
    free(seq_acc);
    return rc;
}
