/*
 * flat.c -- exact search by brute force, as fast as the hardware allows.
 *
 * Three plans, chosen per call:
 *
 *   GEMM    many float queries, metric l2/ip/cosine.  Query blocks x database
 *           tiles go through one single-threaded sgemm each (OpenBLAS), and
 *           the product tile is consumed at once, while it is still in cache,
 *           by a fused select: v = c * scale[j] + bias[j] (|x|^2 for l2,
 *           1/|x| for cosine) is compared 16 lanes at a time against the
 *           query's current k-th best, and only the rare lane that beats it
 *           touches the heap.  faiss instead writes the whole tile, then runs
 *           a serial fix-up loop and pushes every element through a heap;
 *           here the select costs a few percent of the sgemm.  Tasks are
 *           query blocks, so each query's heap has one owner and nothing is
 *           merged.  The kept candidates' distances are then recomputed
 *           exactly with the SIMD kernel: the |q|^2 + |x|^2 - 2 q.x identity
 *           loses digits to cancellation for near neighbours, and returned
 *           distances should be exact.
 *           Which engine runs the product: the fused kernel (fused.h) on
 *           AVX2/FMA and AVX-512 CPUs, sgemm tiles + vectorised select
 *           otherwise or with IMGSEARCH_FLAT_BLAS set.  Measured on Zen 4
 *           (AVX2 only, 2 cores, Fashion-MNIST 60,000 x 784, 1,000 queries,
 *           interleaved A/B): a tight FMA loop peaks at ~90 GFLOP/s per core;
 *           the fused kernel ran at ~86 (912 QPS), OpenBLAS sgemm + select at
 *           ~79 (843 QPS), faiss IndexFlatL2 the same (843 QPS).  Block and
 *           chunk sizes moved QPS by under 2% either way.  At 95% of peak,
 *           fewer dot products was the only way to go faster: for l2 the
 *           fused plan visits rows and queries in order of norm and skips,
 *           per panel of queries, the rows whose norm alone puts them beyond
 *           the panel's current k-th best (see pruned_scan), ~1.3x faiss.
 *   SCAN-Q  many queries otherwise (l1, hamming, or one thread): tasks are
 *           query blocks; each walks the database in chunks small enough to
 *           stay in L2 while every query of the block is run against them.
 *   SCAN-DB one or a few queries: tasks are database chunks, each worker keeps
 *           its own heaps, merged at the end.  A single query is a stream over
 *           the whole database, bound by memory bandwidth.
 *
 * BLAS threads: we call sgemm from our own workers with OpenBLAS fixed to one
 * thread (set at import), so there is exactly one thread per core and no
 * oversubscription; parallelism over query blocks also parallelises the
 * select, which OpenBLAS's own threads would leave serial.
 *
 * A filter becomes a bitmap over slots.  When it allows few rows (under
 * 1/FLAT_SUBSET_RATIO of them) only the allowed rows are scanned.
 */
#define _GNU_SOURCE
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../simd/simd.h"
#include "../common/rows.h"
#include "flat.h"
#include "../common/topk.h"

#define FLAT_GEMM_MIN_QUERIES 16      /* fewer float queries use a scan */
#define FLAT_GEMM_QUERY_BLOCK 256     /* sgemm M */
#define FLAT_GEMM_TILE_ROWS 1024      /* sgemm N: product tile 1 MiB */
#define FLAT_FUSED_CHUNK_BYTES (384 * 1024) /* database rows kept in L2 by the fused kernel */
#define FLAT_SCAN_CHUNK_BYTES (192 * 1024) /* database chunk kept in L2 */
#define FLAT_PRUNE_MIN_QUERIES 128    /* fewer l2 queries skip the norm sort (its cost ~ n log n) */
#define FLAT_PRUNE_SLACK 1e-3f        /* relative slack on the norm bound: covers float rounding */
#define FLAT_SUBSET_RATIO 16          /* filter allows < n/16 rows: scan only those */
#define FLAT_GROWTH_MIN 1024          /* rows of the first allocation */

/* ======================================================================
 * Life cycle and storage
 * ====================================================================== */

int isx_flat_create(isx_metric metric, size_t dim, isx_flat **out)
{
    *out = NULL;
    if (metric < 1 || metric > ISX_METRIC_MAX)
        return isx_error(ISX_EINVAL, "unknown metric %d", (int)metric);
    if (dim < 1 || dim > ISX_MAX_DIM)
        return isx_error(ISX_EINVAL, "expected 1 <= dim <= %u, found dim=%zu", ISX_MAX_DIM, dim);
    if (metric == ISX_METRIC_HAMMING && dim % 8 != 0)
        return isx_error(ISX_EINVAL,
                         "hamming dim counts bits and must be a multiple of 8, found dim=%zu "
                         "(pack codes with numpy.packbits)", dim);
    isx_flat *f = calloc(1, sizeof(*f));
    if (!f)
        return isx_error(ISX_ENOMEM, "cannot allocate an index");
    f->metric = metric;
    f->dim = dim;
    if (metric == ISX_METRIC_HAMMING) {
        f->dtype = ISX_DTYPE_BITS;
        f->row_elems = dim / 8;
        f->row_bytes = dim / 8;
    } else {
        f->dtype = ISX_DTYPE_F32;
        f->row_elems = dim;
        f->row_bytes = dim * sizeof(float);
    }
    f->data_owned = 1;
    isx_idmap_init(&f->map);
    if (pthread_rwlock_init(&f->lock, NULL) != 0) {
        free(f);
        return isx_error(ISX_ENOMEM, "cannot create the index lock");
    }
    *out = f;
    return ISX_OK;
}

static void release_data(isx_flat *f)
{
    if (f->data_owned)
        isx_aligned_free(f->data);
    f->data = NULL;
    if (f->file) {
        isx_format_close(f->file);
        free(f->file);
        f->file = NULL;
    }
}

void isx_flat_destroy(isx_flat *f)
{
    if (!f)
        return;
    release_data(f);
    for (size_t i = 0; i < f->nretired; i++)
        isx_aligned_free(f->retired[i]);
    free(f->retired);
    free(f->ids);
    free(f->norms);
    isx_idmap_free(&f->map);
    pthread_rwlock_destroy(&f->lock);
    free(f);
}

void isx_flat_lock_read(isx_flat *f) { pthread_rwlock_rdlock(&f->lock); }
void isx_flat_unlock(isx_flat *f) { pthread_rwlock_unlock(&f->lock); }

void isx_flat_pin(isx_flat *f)
{
    pthread_rwlock_wrlock(&f->lock);
    f->pinned = 1;
    pthread_rwlock_unlock(&f->lock);
}

/* Replace the data block by `fresh` (owned).  The old block is freed unless
 * a view of it may still be alive (pinned), in which case it is kept until
 * the index dies; a borrowed block is the caller's or the file's business. */
static int swap_data(isx_flat *f, uint8_t *fresh)
{
    if (f->data_owned && f->data) {
        if (f->pinned) {
            void **r = realloc(f->retired, (f->nretired + 1) * sizeof(void *));
            if (!r)
                return isx_error(ISX_ENOMEM, "cannot grow the retired-buffer list");
            f->retired = r;
            f->retired[f->nretired++] = f->data;
        } else {
            isx_aligned_free(f->data);
        }
    } else if (f->file && !f->pinned) {
        isx_format_close(f->file);
        free(f->file);
        f->file = NULL;
    }
    f->data = fresh;
    f->data_owned = 1;
    return ISX_OK;
}

/* Capacity for `need` rows, in the index's own memory. */
static int reserve(isx_flat *f, size_t need)
{
    if (need <= f->capacity && f->data_owned)
        return ISX_OK;
    size_t cap = f->capacity;
    if (need > cap) {
        cap = cap + cap / 2;
        if (cap < need)
            cap = need;
        if (cap < FLAT_GROWTH_MIN)
            cap = FLAT_GROWTH_MIN;
    }
    size_t bytes;
    int rc = isx_mul_size(cap, f->row_bytes, &bytes, "index storage");
    if (rc)
        return rc;
    int64_t *ids = realloc(f->ids, cap * sizeof(int64_t));
    if (!ids)
        return isx_error(ISX_ENOMEM, "cannot allocate ids for %zu rows", cap);
    f->ids = ids;
    if (f->metric == ISX_METRIC_L2 || f->metric == ISX_METRIC_COSINE) {
        float *norms = realloc(f->norms, cap * sizeof(float));
        if (!norms)
            return isx_error(ISX_ENOMEM, "cannot allocate norms for %zu rows", cap);
        f->norms = norms;
    }
    uint8_t *fresh = isx_aligned_alloc(bytes);
    if (!fresh)
        return isx_error(ISX_ENOMEM, "cannot allocate %zu bytes for %zu vectors of dim %zu",
                         bytes, cap, f->dim);
    if (f->count)
        memcpy(fresh, f->data, f->count * f->row_bytes);
    rc = swap_data(f, fresh);
    if (rc) {
        isx_aligned_free(fresh);
        return rc;
    }
    f->capacity = cap;
    return ISX_OK;
}

static void compute_norms(isx_flat *f, size_t from, size_t to)
{
    if (!f->norms || to <= from)
        return;
    const isx_kernels *kern = isx_kernels_active();
    kern->sqnorm(NULL, f->data + from * f->row_bytes, to - from, f->dim, f->norms + from);
    if (f->metric == ISX_METRIC_COSINE)
        for (size_t i = from; i < to; i++)
            f->norms[i] = f->norms[i] > 0 ? (float)(1.0 / sqrt((double)f->norms[i])) : 0.0f;
}

/* ======================================================================
 * Validation of what callers hand in
 * ====================================================================== */

static int check_finite(const isx_flat *f, const void *X, size_t n, const char *what)
{
    return f->dtype == ISX_DTYPE_F32 ? isx_check_finite(X, n, f->dim, what) : ISX_OK;
}

/* ======================================================================
 * Add, borrow, remove, get
 * ====================================================================== */

int isx_flat_add(isx_flat *f, const void *X, size_t n, const int64_t *ids, int nthreads)
{
    (void)nthreads;
    int rc = check_finite(f, X, n, "added vectors");
    if (rc)
        return rc;
    if (ids && (rc = isx_check_ids(ids, n)))
        return rc;
    pthread_rwlock_wrlock(&f->lock);
    if ((uint64_t)f->count + n > ISX_MAX_COUNT) {
        rc = isx_error(ISX_EINVAL, "an index holds at most %llu vectors", (unsigned long long)ISX_MAX_COUNT);
        goto cleanup;
    }
    if (!ids && f->next_id > INT64_MAX - (int64_t)n) {
        rc = isx_error(ISX_EINVAL, "default ids would overflow int64: pass ids explicitly");
        goto cleanup;
    }
    if ((rc = reserve(f, f->count + n)) || (rc = isx_idmap_reserve(&f->map, f->count + n)))
        goto cleanup;
    const uint8_t *src = X;
    size_t first_new = f->count;
    for (size_t i = 0; i < n; i++) {
        int64_t id = ids ? ids[i] : f->next_id + (int64_t)i;
        int64_t slot = isx_idmap_get(&f->map, id);
        if (slot < 0) {
            slot = (int64_t)f->count++;
            f->ids[slot] = id;
            isx_idmap_put(&f->map, id, slot); /* cannot fail: reserved */
        }
        memcpy(f->data + (size_t)slot * f->row_bytes, src + i * f->row_bytes, f->row_bytes);
        if ((size_t)slot < first_new)
            compute_norms(f, (size_t)slot, (size_t)slot + 1);
    }
    compute_norms(f, first_new, f->count);
    if (!ids) {
        f->next_id += (int64_t)n;
    } else {
        for (size_t i = 0; i < n; i++)
            if (ids[i] >= f->next_id)
                f->next_id = ids[i] == INT64_MAX ? INT64_MAX : ids[i] + 1;
    }
cleanup:
    pthread_rwlock_unlock(&f->lock);
    return rc;
}

int isx_flat_borrow(isx_flat *f, const void *data, size_t n, const int64_t *ids, int nthreads)
{
    (void)nthreads;
    int rc;
    if (ids && (rc = isx_check_ids(ids, n)))
        return rc;
    if ((rc = check_finite(f, data, n, "vectors")))
        return rc;
    pthread_rwlock_wrlock(&f->lock);
    if (f->count != 0) {
        rc = isx_error(ISX_EINVAL, "borrowing needs an empty index, this one holds %zu vectors", f->count);
        goto cleanup;
    }
    int64_t *newids = malloc((n ? n : 1) * sizeof(int64_t));
    float *norms = NULL;
    if (!newids) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate ids for %zu rows", n);
        goto cleanup;
    }
    if (f->metric == ISX_METRIC_L2 || f->metric == ISX_METRIC_COSINE) {
        norms = malloc((n ? n : 1) * sizeof(float));
        if (!norms) {
            free(newids);
            rc = isx_error(ISX_ENOMEM, "cannot allocate norms for %zu rows", n);
            goto cleanup;
        }
    }
    if ((rc = isx_idmap_reserve(&f->map, n))) {
        free(newids);
        free(norms);
        goto cleanup;
    }
    release_data(f);
    free(f->ids);
    free(f->norms);
    f->ids = newids;
    f->norms = norms;
    f->data = (uint8_t *)data;
    f->data_owned = 0;
    f->count = n;
    f->capacity = n;
    f->next_id = 0;
    for (size_t i = 0; i < n; i++) {
        f->ids[i] = ids ? ids[i] : (int64_t)i;
        isx_idmap_put(&f->map, f->ids[i], (int64_t)i);
        if (f->ids[i] >= f->next_id)
            f->next_id = f->ids[i] + 1;
    }
    compute_norms(f, 0, n);
cleanup:
    pthread_rwlock_unlock(&f->lock);
    return rc;
}

int isx_flat_remove(isx_flat *f, const int64_t *ids, size_t n, size_t *removed)
{
    int rc = ISX_OK;
    *removed = 0;
    pthread_rwlock_wrlock(&f->lock);
    uint8_t *gone = NULL;
    size_t hits = 0;
    for (size_t i = 0; i < n; i++)
        if (isx_idmap_get(&f->map, ids[i]) >= 0)
            hits++;
    if (hits == 0)
        goto cleanup;
    gone = calloc(f->count, 1);
    if (!gone) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate %zu bytes", f->count);
        goto cleanup;
    }
    if ((rc = reserve(f, f->count)))  /* copy-on-write for borrowed data */
        goto cleanup;
    for (size_t i = 0; i < n; i++) {
        int64_t slot = isx_idmap_get(&f->map, ids[i]);
        if (slot >= 0) {
            gone[slot] = 1;
            isx_idmap_del(&f->map, ids[i]);
        }
    }
    /* Compact in one pass, keeping the order of the survivors. */
    size_t w = 0;
    for (size_t r = 0; r < f->count; r++) {
        if (gone[r])
            continue;
        if (w != r) {
            memmove(f->data + w * f->row_bytes, f->data + r * f->row_bytes, f->row_bytes);
            f->ids[w] = f->ids[r];
            if (f->norms)
                f->norms[w] = f->norms[r];
            isx_idmap_put(&f->map, f->ids[w], (int64_t)w);
        }
        w++;
    }
    *removed = f->count - w;
    f->count = w;
cleanup:
    free(gone);
    pthread_rwlock_unlock(&f->lock);
    return rc;
}

int isx_flat_get(isx_flat *f, const int64_t *ids, size_t n, void *out)
{
    int rc = ISX_OK;
    pthread_rwlock_rdlock(&f->lock);
    for (size_t i = 0; i < n; i++) {
        int64_t slot = isx_idmap_get(&f->map, ids[i]);
        if (slot < 0) {
            rc = isx_error(ISX_EKEY, "id %lld is not in the index", (long long)ids[i]);
            break;
        }
        memcpy((uint8_t *)out + i * f->row_bytes, f->data + (size_t)slot * f->row_bytes, f->row_bytes);
    }
    pthread_rwlock_unlock(&f->lock);
    return rc;
}

int isx_flat_ids(isx_flat *f, int64_t *out, size_t cap, size_t *n)
{
    pthread_rwlock_rdlock(&f->lock);
    size_t c = f->count < cap ? f->count : cap;
    if (c)
        memcpy(out, f->ids, c * sizeof(int64_t));
    *n = c;
    pthread_rwlock_unlock(&f->lock);
    return ISX_OK;
}

/* ======================================================================
 * Filters -> slot sets
 * ====================================================================== */

typedef struct {
    uint64_t *bits;  /* NULL: every slot allowed */
    int64_t *list;   /* allowed slots ascending, when the subset plan is used */
    size_t nlist;
} slotset;

static inline int slot_allowed(const slotset *s, size_t slot)
{
    return !s->bits || ((s->bits[slot >> 6] >> (slot & 63)) & 1);
}

static void slotset_free(slotset *s)
{
    free(s->bits);
    free(s->list);
    memset(s, 0, sizeof(*s));
}

static int slotset_build(const isx_flat *f, const isx_filter *flt, slotset *s)
{
    memset(s, 0, sizeof(*s));
    if (!flt || (!flt->mask && !flt->ids))
        return ISX_OK;
    size_t words = f->count / 64 + 1;
    s->bits = calloc(words, sizeof(uint64_t));
    if (!s->bits)
        return isx_error(ISX_ENOMEM, "cannot allocate a filter bitmap");
    size_t allowed = 0;
    if (flt->mask) {
        int64_t max_id = -1;
        for (size_t slot = 0; slot < f->count; slot++) {
            int64_t id = f->ids[slot];
            max_id = id > max_id ? id : max_id;
            if ((uint64_t)id < flt->mask_len && flt->mask[id]) {
                s->bits[slot >> 6] |= (uint64_t)1 << (slot & 63);
                allowed++;
            }
        }
        int rc = isx_filter_check_mask(flt, max_id);
        if (rc) {
            slotset_free(s);
            return rc;
        }
    } else {
        for (size_t i = 0; i < flt->n_ids; i++) {
            int64_t slot = isx_idmap_get(&f->map, flt->ids[i]);
            if (slot >= 0 && !((s->bits[slot >> 6] >> (slot & 63)) & 1)) {
                s->bits[slot >> 6] |= (uint64_t)1 << (slot & 63);
                allowed++;
            }
        }
    }
    if (allowed * FLAT_SUBSET_RATIO < f->count) {
        s->list = malloc((allowed ? allowed : 1) * sizeof(int64_t));
        if (!s->list) {
            slotset_free(s);
            return isx_error(ISX_ENOMEM, "cannot allocate a filter list");
        }
        for (size_t w = 0; w < words; w++)
            for (uint64_t b = s->bits[w]; b; b &= b - 1)
                s->list[s->nlist++] = (int64_t)(w * 64 + (size_t)__builtin_ctzll(b));
    }
    return ISX_OK;
}

/* ======================================================================
 * Search
 * ====================================================================== */

typedef struct {
    isx_flat *f;
    const isx_kernels *kern;
    isx_dist_fn dist;
    const uint8_t *Q;
    size_t nq, k;
    float *D;
    int64_t *labels;
    const slotset *sel;
    /* SCAN plans */
    size_t chunk_rows, nchunks, qblock;
    float **dbuf;          /* per worker: chunk_rows distances */
    isx_topk *heaps;       /* SCAN-DB: nthreads x nq heaps; else nq heaps */
    /* GEMM plan */
    float alpha;
    const float *scale, *bias;
    isx_fused_fn fused;    /* the fused kernel (simd/fused.h) instead of sgemm, or NULL */
    size_t fused_width, fused_rows; /* its panel width and rows per call */
    float **cbuf;          /* per worker: packed queries, or qblock x tile product */
    /* norm pruning (fused, l2, no filter): rows and queries in order of norm */
    uint32_t *rorder, *qorder; /* slots sorted by |x|, queries sorted by |q| */
    float *rnorm, *rsq;    /* |x| and |x|^2 in row order */
    float *qnorm, *Qs;     /* |q| and the queries themselves in query order */
    float **gbuf;          /* per worker: gathered rows, then their |x|^2 */
    size_t chunk_fused;    /* rows per fused-kernel chunk */
} search_ctx;

/* Write query qi's sorted heap to the outputs, padding with inf / -1. */
static void emit(search_ctx *c, size_t qi, isx_topk *h)
{
    isx_topk_sort(h);
    float *D = c->D + qi * c->k;
    int64_t *L = c->labels + qi * c->k;
    for (size_t j = 0; j < c->k; j++) {
        if (j < h->size) {
            D[j] = h->dist[j];
            L[j] = c->f->ids[h->slot[j]];
        } else {
            D[j] = INFINITY;
            L[j] = -1;
        }
    }
}

/* Distances of query q to one chunk of candidates: rows [r0, r1) or, with a
 * subset, list entries [r0, r1).  Returns the slot of entry 0 or fills `slots`. */
static void chunk_distances(search_ctx *c, const uint8_t *q, size_t r0, size_t r1, float *out)
{
    isx_flat *f = c->f;
    if (c->sel->list) {
        for (size_t i = r0; i < r1; i++)
            c->dist(q, f->data + (size_t)c->sel->list[i] * f->row_bytes, 1, f->row_elems, out + (i - r0));
    } else {
        c->dist(q, f->data + r0 * f->row_bytes, r1 - r0, f->row_elems, out);
    }
}

static void chunk_push(search_ctx *c, isx_topk *h, size_t r0, size_t r1, const float *d)
{
    const slotset *sel = c->sel;
    float bound = isx_topk_bound(h);
    for (size_t i = r0; i < r1; i++) {
        float v = d[i - r0];
        if (v < bound || h->size < h->k) {
            size_t slot = sel->list ? (size_t)sel->list[i] : i;
            if (sel->list || slot_allowed(sel, slot)) {
                isx_topk_push(h, v, (int64_t)slot);
                bound = isx_topk_bound(h);
            }
        }
    }
}

static size_t candidate_rows(const search_ctx *c)
{
    return c->sel->list ? c->sel->nlist : c->f->count;
}

/* SCAN-Q: one task = a block of queries against the whole database. */
static int task_scan_queries(void *ctx, size_t task, int worker)
{
    search_ctx *c = ctx;
    size_t q0 = task * c->qblock, q1 = q0 + c->qblock < c->nq ? q0 + c->qblock : c->nq;
    size_t n = candidate_rows(c);
    float *d = c->dbuf[worker];
    for (size_t r0 = 0; r0 < n; r0 += c->chunk_rows) {
        size_t r1 = r0 + c->chunk_rows < n ? r0 + c->chunk_rows : n;
        for (size_t qi = q0; qi < q1; qi++) {
            chunk_distances(c, c->Q + qi * c->f->row_bytes, r0, r1, d);
            chunk_push(c, &c->heaps[qi], r0, r1, d);
        }
    }
    for (size_t qi = q0; qi < q1; qi++)
        emit(c, qi, &c->heaps[qi]);
    return ISX_OK;
}

/* SCAN-DB: one task = one database chunk against every query. */
static int task_scan_database(void *ctx, size_t task, int worker)
{
    search_ctx *c = ctx;
    size_t n = candidate_rows(c);
    size_t r0 = task * c->chunk_rows, r1 = r0 + c->chunk_rows < n ? r0 + c->chunk_rows : n;
    float *d = c->dbuf[worker];
    isx_topk *heaps = c->heaps + (size_t)worker * c->nq;
    for (size_t qi = 0; qi < c->nq; qi++) {
        chunk_distances(c, c->Q + qi * c->f->row_bytes, r0, r1, d);
        chunk_push(c, &heaps[qi], r0, r1, d);
    }
    return ISX_OK;
}

/* ---- norm pruning for l2 ------------------------------------------------
 *
 * |q - x| >= | |q| - |x| |, so a row whose norm lies outside
 * [|q| - r, |q| + r], r the distance of q's current k-th best, cannot enter
 * q's heap.  Rows are visited in order of norm and a panel's queries have
 * neighbouring norms (they are sorted too), so for each panel the rows that
 * can still matter form one contiguous run of the sorted order, found by
 * binary search; those rows are gathered into an L2-sized buffer and run
 * through the fused kernel as usual.  On Fashion-MNIST a panel skips about
 * a quarter of the database: the kernel runs at ~95% of the FMA peak, so
 * fewer dot products is the only way left to go faster.  The slack keeps the
 * bound safe against rounding in v = |x|^2 - 2 q.x; kept candidates are
 * re-ranked exactly as always. */

typedef struct {
    float key;
    uint32_t idx;
} norm_key;

static int norm_key_cmp(const void *a, const void *b)
{
    const norm_key *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* order[i] = the i-th index by increasing key; sorted[i] = its key. */
static int sort_by_norm(const float *keys, size_t n, uint32_t *order, float *sorted)
{
    norm_key *tmp = malloc(n * sizeof(*tmp));
    if (!tmp)
        return isx_error(ISX_ENOMEM, "cannot allocate a sort buffer for %zu norms", n);
    for (size_t i = 0; i < n; i++) {
        tmp[i].key = keys[i];
        tmp[i].idx = (uint32_t)i;
    }
    qsort(tmp, n, sizeof(*tmp), norm_key_cmp);
    for (size_t i = 0; i < n; i++) {
        order[i] = tmp[i].idx;
        sorted[i] = tmp[i].key;
    }
    free(tmp);
    return ISX_OK;
}

/* First position in [lo, hi) whose norm is >= v (or > v when `after`). */
static size_t norm_search(const float *norms, size_t lo, size_t hi, float v, int after)
{
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (norms[mid] < v || (after && norms[mid] == v))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Offer sorted rows [t0, t1) to the block's panels, each only the run of
 * rows its bound allows.  [*reach_lo, *reach_hi] receives the hull of the
 * panels' norm intervals: rows outside it are out of every query's reach,
 * now and later (bounds only tighten). */
static void pruned_chunk(search_ctx *c, size_t q0, size_t m, const float *packed, float *gather, size_t t0,
                         size_t t1, float *reach_lo, float *reach_hi)
{
    isx_flat *f = c->f;
    size_t d = f->dim, width = c->fused_width;
    size_t panels = (m + width - 1) / width;
    float *bias = gather + c->chunk_fused * d;
    size_t run_lo[FLAT_GEMM_QUERY_BLOCK / ISX_FUSED_MIN_PANEL + 1];
    size_t run_hi[FLAT_GEMM_QUERY_BLOCK / ISX_FUSED_MIN_PANEL + 1];
    size_t lo_all = t1, hi_all = t0;
    float hull_lo = INFINITY, hull_hi = -INFINITY;
    for (size_t p = 0; p < panels; p++) {
        size_t live = m - p * width < width ? m - p * width : width;
        float nlo = INFINITY, nhi = -INFINITY;
        for (size_t l = 0; l < live; l++) {
            size_t qi = q0 + p * width + l;
            float qn = c->qnorm[qi];
            float b = isx_topk_bound(&c->heaps[qi]) + qn * qn;   /* squared distance */
            float r = sqrtf(fmaxf(b, 0.0f) * (1.0f + FLAT_PRUNE_SLACK)) + FLAT_PRUNE_SLACK * qn;
            nlo = fminf(nlo, qn - r);
            nhi = fmaxf(nhi, qn + r);
        }
        hull_lo = fminf(hull_lo, nlo);
        hull_hi = fmaxf(hull_hi, nhi);
        run_lo[p] = norm_search(c->rnorm, t0, t1, nlo, 0);
        run_hi[p] = norm_search(c->rnorm, run_lo[p], t1, nhi, 1);
        if (run_lo[p] < run_hi[p]) {
            lo_all = run_lo[p] < lo_all ? run_lo[p] : lo_all;
            hi_all = run_hi[p] > hi_all ? run_hi[p] : hi_all;
        }
    }
    *reach_lo = hull_lo;
    *reach_hi = hull_hi;
    if (lo_all >= hi_all)
        return;
    for (size_t i = lo_all; i < hi_all; i++) {
        memcpy(gather + (i - lo_all) * d, f->data + (size_t)c->rorder[i] * f->row_bytes, f->row_bytes);
        bias[i - lo_all] = c->rsq[i];
    }
    for (size_t p = 0; p < panels; p++) {
        if (run_lo[p] >= run_hi[p])
            continue;
        size_t live = m - p * width < width ? m - p * width : width;
        c->fused(packed + p * d * width, live, d, gather, run_lo[p] - lo_all, run_hi[p] - lo_all, NULL, bias,
                 NULL, &c->heaps[q0 + p * width], lo_all);
    }
}

/* Chunks alternate outwards from the rows whose norm is the block's median
 * query norm, so the bounds tighten early; a side stops once its next row
 * lies outside every panel's reach. */
static void pruned_scan(search_ctx *c, size_t q0, size_t m, const float *packed, float *gather)
{
    size_t n = c->f->count, chunk = c->chunk_fused;
    size_t centre = norm_search(c->rnorm, 0, n, c->qnorm[q0 + m / 2], 0);
    size_t right = centre, left = centre;   /* next chunk starts at right, ends at left */
    int go_right = right < n, go_left = left > 0;
    float reach_lo, reach_hi;
    while (go_right || go_left) {
        if (go_right) {
            size_t t1 = right + chunk < n ? right + chunk : n;
            pruned_chunk(c, q0, m, packed, gather, right, t1, &reach_lo, &reach_hi);
            right = t1;
            go_right = right < n && c->rnorm[right] <= reach_hi;
            go_left = go_left && c->rnorm[left - 1] >= reach_lo;
        }
        if (go_left) {
            size_t t0 = left > chunk ? left - chunk : 0;
            pruned_chunk(c, q0, m, packed, gather, t0, left, &reach_lo, &reach_hi);
            left = t0;
            go_left = left > 0 && c->rnorm[left - 1] >= reach_lo;
            go_right = go_right && c->rnorm[right] <= reach_hi;
        }
    }
}

/* GEMM: one task = a block of queries against the whole database, through
 * the fused kernel (fused.h; AVX-512 or AVX2) or, on older CPUs or when
 * IMGSEARCH_FLAT_BLAS is set, OpenBLAS sgemm on product tiles followed by
 * the vectorised select. */
static int task_gemm(void *ctx, size_t task, int worker)
{
    search_ctx *c = ctx;
    isx_flat *f = c->f;
    size_t q0 = task * c->qblock, q1 = q0 + c->qblock < c->nq ? q0 + c->qblock : c->nq;
    size_t m = q1 - q0, d = f->dim;
    const float *Qbase = c->Qs ? c->Qs : (const float *)c->Q;
    const float *Q = Qbase + q0 * d;
    const float *X = (const float *)f->data;
    if (c->fused) {
        float *packed = c->cbuf[worker];
        isx_fused_pack(Q, m, d, c->alpha, c->fused_width, packed);
        if (c->rorder) {
            pruned_scan(c, q0, m, packed, c->gbuf[worker]);
        } else {
            for (size_t t0 = 0; t0 < f->count; t0 += c->chunk_fused) {
                size_t t1 = t0 + c->chunk_fused < f->count ? t0 + c->chunk_fused : f->count;
                c->fused(packed, m, d, X, t0, t1, c->scale, c->bias, c->sel->bits, &c->heaps[q0], 0);
            }
        }
    } else {
        float *C = c->cbuf[worker];
        for (size_t t0 = 0; t0 < f->count; t0 += FLAT_GEMM_TILE_ROWS) {
            size_t tn = t0 + FLAT_GEMM_TILE_ROWS < f->count ? FLAT_GEMM_TILE_ROWS : f->count - t0;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)tn, (int)d, c->alpha, Q,
                        (int)d, X + t0 * d, (int)d, 0.0f, C, (int)tn);
            const float *scale = c->scale ? c->scale + t0 : NULL;
            const float *bias = c->bias ? c->bias + t0 : NULL;
            for (size_t i = 0; i < m; i++) {
                c->kern->select(C + i * tn, scale, bias, tn, t0, c->sel->bits, &c->heaps[q0 + i]);
            }
        }
    }
    /* Exact distances for the kept candidates. */
    for (size_t qi = q0; qi < q1; qi++) {
        isx_topk *h = &c->heaps[qi];
        const uint8_t *q = (const uint8_t *)(Qbase + qi * d);
        float *hd = h->dist;
        int64_t *hs = h->slot;
        size_t kept = h->size;
        if (c->rorder)   /* positions in norm order back to slots */
            for (size_t j = 0; j < kept; j++)
                hs[j] = c->rorder[hs[j]];
        for (size_t j = 0; j < kept; j++)
            c->dist(q, f->data + (size_t)hs[j] * f->row_bytes, 1, f->row_elems, &hd[j]);
        /* the values changed: rebuild the heap order before sorting */
        isx_topk_init(h, hd, hs, c->k);
        for (size_t j = 0; j < kept; j++) {
            float dj = hd[j];
            int64_t sj = hs[j];
            size_t i = h->size++;
            while (i > 0) {
                size_t p = (i - 1) / 2;
                if (!isx_topk_worse(dj, sj, hd[p], hs[p]))
                    break;
                hd[i] = hd[p];
                hs[i] = hs[p];
                i = p;
            }
            hd[i] = dj;
            hs[i] = sj;
        }
        emit(c, c->qorder ? c->qorder[qi] : qi, h);
    }
    return ISX_OK;
}

static int check_queries(const isx_flat *f, const void *Q, size_t nq)
{
    if (f->dtype != ISX_DTYPE_F32)
        return ISX_OK;
    const float *q = Q;
    for (size_t i = 0; i < nq * f->dim; i++)
        if (!isfinite(q[i]))
            return isx_error(ISX_EINVAL, "queries must be finite, found %s in query %zu",
                             isnan(q[i]) ? "NaN" : "Inf", i / f->dim);
    return ISX_OK;
}

static float **alloc_buffers(int n, size_t floats)
{
    float **b = calloc((size_t)n, sizeof(float *));
    if (!b)
        return NULL;
    for (int i = 0; i < n; i++) {
        b[i] = isx_aligned_alloc(floats * sizeof(float));
        if (!b[i]) {
            for (int j = 0; j < i; j++)
                isx_aligned_free(b[j]);
            free(b);
            return NULL;
        }
    }
    return b;
}

static void free_buffers(float **b, int n)
{
    if (!b)
        return;
    for (int i = 0; i < n; i++)
        isx_aligned_free(b[i]);
    free(b);
}

/* Sort rows and queries by norm for pruned_scan; the queries are copied in
 * that order, so that a block of them packs as before. */
static int prepare_pruning(search_ctx *c, int nbuf)
{
    isx_flat *f = c->f;
    size_t n = f->count, nq = c->nq, d = f->dim;
    const float *Q = (const float *)c->Q;
    c->rorder = malloc(n * sizeof(uint32_t));
    c->rnorm = malloc(n * sizeof(float));
    c->rsq = malloc(n * sizeof(float));
    c->qorder = malloc(nq * sizeof(uint32_t));
    c->qnorm = malloc(nq * sizeof(float));
    c->Qs = isx_aligned_alloc(nq * d * sizeof(float));
    c->gbuf = alloc_buffers(nbuf, c->chunk_fused * (d + 1));
    if (!c->rorder || !c->rnorm || !c->rsq || !c->qorder || !c->qnorm || !c->Qs || !c->gbuf)
        return isx_error(ISX_ENOMEM, "cannot allocate norm-ordering buffers for %zu rows", n);
    for (size_t i = 0; i < n; i++)
        c->rsq[i] = sqrtf(f->norms[i]);
    int rc = sort_by_norm(c->rsq, n, c->rorder, c->rnorm);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++)
        c->rsq[i] = f->norms[c->rorder[i]];
    float *qn = c->Qs;   /* scratch until the queries are copied */
    for (size_t i = 0; i < nq; i++) {
        double s = 0;
        for (size_t j = 0; j < d; j++)
            s += (double)Q[i * d + j] * Q[i * d + j];
        qn[i] = (float)sqrt(s);
    }
    float *keys = malloc(nq * sizeof(float));
    if (!keys)
        return isx_error(ISX_ENOMEM, "cannot allocate query norms");
    memcpy(keys, qn, nq * sizeof(float));
    rc = sort_by_norm(keys, nq, c->qorder, c->qnorm);
    free(keys);
    if (rc)
        return rc;
    for (size_t i = 0; i < nq; i++)
        memcpy(c->Qs + i * d, Q + (size_t)c->qorder[i] * d, d * sizeof(float));
    return ISX_OK;
}

int isx_flat_search(isx_flat *f, const void *Q, size_t nq, size_t k, const isx_filter *filter,
                    int nthreads, float *D, int64_t *labels)
{
    if (k < 1 || k > ISX_MAX_K)
        return isx_error(ISX_EINVAL, "expected 1 <= k <= %u, found k=%zu", ISX_MAX_K, k);
    int rc = check_queries(f, Q, nq);
    if (rc || nq == 0)
        return rc;
    nthreads = isx_resolve_threads(nthreads);

    pthread_rwlock_rdlock(&f->lock);
    slotset sel;
    search_ctx c;
    memset(&c, 0, sizeof(c));
    float *hd = NULL;
    int64_t *hs = NULL;
    int nbuf = 0;
    if ((rc = slotset_build(f, filter, &sel)))
        goto unlock;
    c.f = f;
    c.kern = isx_kernels_active();
    c.dist = c.kern->dist[f->metric];
    c.Q = Q;
    c.nq = nq;
    c.k = k;
    c.D = D;
    c.labels = labels;
    c.sel = &sel;

    size_t n = candidate_rows(&c);
    int gemm = f->dtype == ISX_DTYPE_F32 && !sel.list && nq >= FLAT_GEMM_MIN_QUERIES &&
               (f->metric == ISX_METRIC_L2 || f->metric == ISX_METRIC_IP || f->metric == ISX_METRIC_COSINE);
    int scan_db = !gemm && nthreads > 1 && nq < (size_t)nthreads * 8;
    size_t nheaps = scan_db ? (size_t)nthreads * nq : nq;
    size_t hk = k < n ? k : (n ? n : 1);   /* a heap never holds more than n */
    size_t cells;
    if ((rc = isx_mul_size(nheaps, hk, &cells, "search heaps")))
        goto cleanup;
    hd = malloc(cells * sizeof(float));
    hs = malloc(cells * sizeof(int64_t));
    c.heaps = malloc(nheaps * sizeof(isx_topk));
    if (!hd || !hs || !c.heaps) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate heaps for %zu queries x k=%zu", nq, k);
        goto cleanup;
    }
    for (size_t i = 0; i < nheaps; i++)
        isx_topk_init(&c.heaps[i], hd + i * hk, hs + i * hk, hk);

    if (gemm) {
        c.qblock = (nq + (size_t)nthreads - 1) / (size_t)nthreads;
        if (c.qblock > FLAT_GEMM_QUERY_BLOCK)
            c.qblock = FLAT_GEMM_QUERY_BLOCK;
        nbuf = nthreads;
        if (!getenv("IMGSEARCH_FLAT_BLAS")) {
            c.fused = c.kern->fused.fn;
            c.fused_width = c.kern->fused.panel;
            c.fused_rows = c.kern->fused.rows;
        }
        c.cbuf = alloc_buffers(nbuf, c.fused ? isx_fused_packed_size(c.qblock, f->dim, c.fused_width)
                                             : c.qblock * FLAT_GEMM_TILE_ROWS);
        if (!c.cbuf) {
            rc = isx_error(ISX_ENOMEM, "cannot allocate product tiles");
            goto cleanup;
        }
        if (c.fused) {
            c.chunk_fused = FLAT_FUSED_CHUNK_BYTES / f->row_bytes / c.fused_rows * c.fused_rows;
            if (c.chunk_fused < c.fused_rows)
                c.chunk_fused = c.fused_rows;
        }
        if (c.fused && f->metric == ISX_METRIC_L2 && !sel.bits && nq >= FLAT_PRUNE_MIN_QUERIES &&
            f->count <= UINT32_MAX && (rc = prepare_pruning(&c, nbuf)))
            goto cleanup;
        c.alpha = f->metric == ISX_METRIC_L2 ? -2.0f : -1.0f;
        c.scale = f->metric == ISX_METRIC_COSINE ? f->norms : NULL;
        c.bias = f->metric == ISX_METRIC_L2 ? f->norms : NULL;
        rc = isx_parallel_for(nthreads, (nq + c.qblock - 1) / c.qblock, task_gemm, &c);
    } else {
        c.chunk_rows = FLAT_SCAN_CHUNK_BYTES / f->row_bytes;
        if (c.chunk_rows < 16)
            c.chunk_rows = 16;
        nbuf = nthreads;
        c.dbuf = alloc_buffers(nbuf, c.chunk_rows);
        if (!c.dbuf) {
            rc = isx_error(ISX_ENOMEM, "cannot allocate distance buffers");
            goto cleanup;
        }
        if (scan_db) {
            c.nchunks = (n + c.chunk_rows - 1) / c.chunk_rows;
            rc = isx_parallel_for(nthreads, c.nchunks, task_scan_database, &c);
            /* merge each query's per-worker heaps into worker 0's */
            for (size_t qi = 0; rc == ISX_OK && qi < nq; qi++) {
                isx_topk *into = &c.heaps[qi];
                for (int w = 1; w < nthreads; w++) {
                    isx_topk *h = &c.heaps[(size_t)w * nq + qi];
                    for (size_t j = 0; j < h->size; j++)
                        isx_topk_push(into, h->dist[j], h->slot[j]);
                }
                emit(&c, qi, into);
            }
        } else {
            c.qblock = nq / ((size_t)nthreads * 4);
            if (c.qblock < 1)
                c.qblock = 1;
            if (c.qblock > 64)
                c.qblock = 64;
            rc = isx_parallel_for(nthreads, (nq + c.qblock - 1) / c.qblock, task_scan_queries, &c);
        }
    }
cleanup:
    free_buffers(c.cbuf, nbuf);
    free_buffers(c.gbuf, nbuf);
    free(c.rorder);
    free(c.qorder);
    free(c.rnorm);
    free(c.rsq);
    free(c.qnorm);
    free(c.Qs);
    free_buffers(c.dbuf, nbuf);
    free(c.heaps);
    free(hd);
    free(hs);
    slotset_free(&sel);
unlock:
    pthread_rwlock_unlock(&f->lock);
    return rc;
}

/* ======================================================================
 * Range search
 * ====================================================================== */

typedef struct {
    float *d;
    int64_t *s;
    size_t n, cap;
} hitlist;

typedef struct {
    isx_flat *f;
    isx_dist_fn dist;
    const uint8_t *Q;
    size_t nq, qblock, chunk_rows;
    float radius;
    const slotset *sel;
    hitlist *hits;
    float **dbuf;
} range_ctx;

static int hit_push(hitlist *h, float d, int64_t s)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        float *nd = realloc(h->d, cap * sizeof(float));
        if (!nd)
            return isx_error(ISX_ENOMEM, "cannot grow range results");
        h->d = nd;
        int64_t *ns = realloc(h->s, cap * sizeof(int64_t));
        if (!ns)
            return isx_error(ISX_ENOMEM, "cannot grow range results");
        h->s = ns;
        h->cap = cap;
    }
    h->d[h->n] = d;
    h->s[h->n++] = s;
    return ISX_OK;
}

/* sort one query's hits by (distance, slot): insertion sort for short lists,
 * otherwise a heap sort through isx_topk */
static void hits_sort(hitlist *h)
{
    isx_topk t;
    isx_topk_init(&t, h->d, h->s, h->n);
    t.size = 0;
    for (size_t j = 0; j < h->n; j++) {
        float dj = h->d[j];
        int64_t sj = h->s[j];
        size_t i = t.size++;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!isx_topk_worse(dj, sj, h->d[p], h->s[p]))
                break;
            h->d[i] = h->d[p];
            h->s[i] = h->s[p];
            i = p;
        }
        h->d[i] = dj;
        h->s[i] = sj;
    }
    isx_topk_sort(&t);
}

static int task_range(void *ctx, size_t task, int worker)
{
    range_ctx *c = ctx;
    isx_flat *f = c->f;
    size_t q0 = task * c->qblock, q1 = q0 + c->qblock < c->nq ? q0 + c->qblock : c->nq;
    float *d = c->dbuf[worker];
    for (size_t r0 = 0; r0 < f->count; r0 += c->chunk_rows) {
        size_t r1 = r0 + c->chunk_rows < f->count ? r0 + c->chunk_rows : f->count;
        for (size_t qi = q0; qi < q1; qi++) {
            c->dist(c->Q + qi * f->row_bytes, f->data + r0 * f->row_bytes, r1 - r0, f->row_elems, d);
            for (size_t r = r0; r < r1; r++) {
                if (d[r - r0] < c->radius && slot_allowed(c->sel, r)) {
                    int rc = hit_push(&c->hits[qi], d[r - r0], (int64_t)r);
                    if (rc)
                        return rc;
                }
            }
        }
    }
    for (size_t qi = q0; qi < q1; qi++)
        hits_sort(&c->hits[qi]);
    return ISX_OK;
}

int isx_flat_range_search(isx_flat *f, const void *Q, size_t nq, float radius,
                          const isx_filter *filter, int nthreads, int64_t *lims, float **D, int64_t **labels)
{
    *D = NULL;
    *labels = NULL;
    if (isnan(radius))
        return isx_error(ISX_EINVAL, "radius must be a number, found NaN");
    int rc = check_queries(f, Q, nq);
    if (rc)
        return rc;
    nthreads = isx_resolve_threads(nthreads);
    pthread_rwlock_rdlock(&f->lock);
    range_ctx c;
    memset(&c, 0, sizeof(c));
    slotset sel;
    if ((rc = slotset_build(f, filter, &sel)))
        goto unlock;
    free(sel.list); /* the range scan tests the bitmap */
    sel.list = NULL;
    c.f = f;
    c.dist = isx_kernels_active()->dist[f->metric];
    c.Q = Q;
    c.nq = nq;
    c.radius = radius;
    c.sel = &sel;
    c.chunk_rows = FLAT_SCAN_CHUNK_BYTES / f->row_bytes;
    if (c.chunk_rows < 16)
        c.chunk_rows = 16;
    c.qblock = nq / ((size_t)nthreads * 4);
    if (c.qblock < 1)
        c.qblock = 1;
    if (c.qblock > 64)
        c.qblock = 64;
    c.hits = calloc(nq ? nq : 1, sizeof(hitlist));
    c.dbuf = alloc_buffers(nthreads, c.chunk_rows);
    if (!c.hits || !c.dbuf) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate range-search buffers");
        goto cleanup;
    }
    if (nq && (rc = isx_parallel_for(nthreads, (nq + c.qblock - 1) / c.qblock, task_range, &c)))
        goto cleanup;
    size_t total = 0;
    lims[0] = 0;
    for (size_t qi = 0; qi < nq; qi++) {
        total += c.hits[qi].n;
        lims[qi + 1] = (int64_t)total;
    }
    *D = malloc((total ? total : 1) * sizeof(float));
    *labels = malloc((total ? total : 1) * sizeof(int64_t));
    if (!*D || !*labels) {
        free(*D);
        free(*labels);
        *D = NULL;
        *labels = NULL;
        rc = isx_error(ISX_ENOMEM, "cannot allocate %zu range-search results", total);
        goto cleanup;
    }
    for (size_t qi = 0, at = 0; qi < nq; qi++) {
        for (size_t j = 0; j < c.hits[qi].n; j++, at++) {
            (*D)[at] = c.hits[qi].d[j];
            (*labels)[at] = f->ids[c.hits[qi].s[j]];
        }
    }
cleanup:
    if (c.hits) {
        for (size_t qi = 0; qi < nq; qi++) {
            free(c.hits[qi].d);
            free(c.hits[qi].s);
        }
        free(c.hits);
    }
    free_buffers(c.dbuf, nthreads);
    slotset_free(&sel);
unlock:
    pthread_rwlock_unlock(&f->lock);
    return rc;
}

/* ======================================================================
 * Serialisation
 * ====================================================================== */

int isx_flat_describe(isx_flat *f, isx_header *h, isx_section_out *secs, uint32_t *nsecs,
                      uint8_t *parm, size_t parm_cap)
{
    isx_param p[1];
    memset(p, 0, sizeof(p));
    strcpy(p[0].key, "next_id");
    p[0].type = ISX_PARAM_INT;
    p[0].v.i = f->next_id;
    size_t used;
    int rc = isx_params_encode(p, 1, parm, parm_cap, &used);
    if (rc)
        return rc;
    memset(h, 0, sizeof(*h));
    h->kind = ISX_KIND_FLAT;
    h->metric = f->metric;
    h->dtype = f->dtype;
    h->dim = f->dim;
    h->count = f->count;
    secs[0] = (isx_section_out){ISX_SEC_PARAMS, parm, used};
    secs[1] = (isx_section_out){ISX_SEC_VECTORS, f->data, (uint64_t)f->count * f->row_bytes};
    secs[2] = (isx_section_out){ISX_SEC_IDS, f->ids, (uint64_t)f->count * sizeof(int64_t)};
    *nsecs = ISX_FLAT_SECTIONS;
    return ISX_OK;
}

int isx_flat_from_file(isx_file *file, int nthreads, isx_flat **out)
{
    *out = NULL;
    isx_flat *f = NULL;
    const isx_section_in *vecs, *ids, *parm;
    isx_param params[ISX_MAX_PARAMS];
    uint32_t nparams = 0;
    const isx_header *h = &file->header;
    int rc;
    if (h->kind != ISX_KIND_FLAT) {
        rc = isx_error(ISX_EFORMAT, "expected a flat index (kind %d), found kind %u", ISX_KIND_FLAT, h->kind);
        goto fail;
    }
    if (h->metric == ISX_METRIC_HAMMING ? h->dtype != ISX_DTYPE_BITS : h->dtype != ISX_DTYPE_F32) {
        rc = isx_error(ISX_EFORMAT, "flat index: dtype %u does not go with metric %u", h->dtype, h->metric);
        goto fail;
    }
    if ((rc = isx_flat_create((isx_metric)h->metric, (size_t)h->dim, &f))) {
        rc = isx_error(ISX_EFORMAT, "flat index header: %s", isx_last_error());
        goto fail;
    }
    uint64_t vec_bytes = h->count * f->row_bytes; /* count <= 2^40, row_bytes <= 2^22 */
    if ((rc = isx_format_require(file, ISX_SEC_VECTORS, vec_bytes, &vecs)) ||
        (rc = isx_format_require(file, ISX_SEC_IDS, h->count * sizeof(int64_t), &ids)))
        goto fail;
    parm = isx_format_find(file, ISX_SEC_PARAMS);
    if (parm && (rc = isx_params_decode(parm->data, parm->size, params, ISX_MAX_PARAMS, &nparams)))
        goto fail;
    int64_t *idcopy = malloc((h->count ? h->count : 1) * sizeof(int64_t));
    if (!idcopy) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate ids for %llu rows", (unsigned long long)h->count);
        goto fail;
    }
    memcpy(idcopy, ids->data, h->count * sizeof(int64_t));
    rc = isx_check_ids(idcopy, (size_t)h->count);
    if (rc == ISX_OK)
        rc = isx_flat_borrow(f, vecs->data, (size_t)h->count, idcopy, nthreads);
    free(idcopy);
    if (rc) {
        rc = isx_error(ISX_EFORMAT, "flat index: %s", isx_last_error());
        goto fail;
    }
    int64_t next_id;
    if (nparams && isx_params_get_int(params, nparams, "next_id", &next_id) == ISX_OK && next_id > f->next_id)
        f->next_id = next_id;
    isx_clear_error();
    f->file = file;
    *out = f;
    return ISX_OK;
fail:
    isx_flat_destroy(f);
    isx_format_close(file);
    free(file);
    return rc;
}
