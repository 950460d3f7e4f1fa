/*
 * hnsw.c -- HNSW (Malkov & Yashunin) as a dynamic, filterable, persistent
 * index.  See hnsw.h for the storage layout and the thread-safety contract.
 *
 * What follows the paper (and hnswlib, the reference implementation):
 * levels drawn as floor(-ln(U) / ln(M)); greedy descent through the upper
 * levels; a beam search of breadth ef on the lowest levels; the neighbour-
 * selection heuristic (keep a candidate only if it is closer to the new node
 * than to every neighbour already kept); M links per upper level and 2M at
 * level 0; a full neighbour list is re-selected with the same heuristic.
 *
 * Where it departs:
 *   - Removal repairs the graph at once instead of leaving tombstones in it:
 *     every node that linked to a removed node re-selects its links from its
 *     surviving neighbours plus the removed node's neighbours (the local
 *     repair of FreshDiskANN), so the removed slot is unlinked and a later add
 *     reuses it as a fresh node.  Searches never walk through dead nodes and
 *     recall does not decay over delete/re-add cycles.  Updating an id is a
 *     removal followed by an insert.
 *   - Filtered search evaluates a bitmap over slots during the walk (a
 *     disallowed node is walked through but never returned).  When the
 *     allowed set is small, walking finds allowed nodes too slowly to beat a
 *     scan of them: with a allowed nodes out of n the walk needs about
 *     ef * n / a distance computations, the scan a, so the scan is chosen
 *     when a * a < HNSW_EXACT_COST * ef * n and returns the exact answer.
 *   - Levels are drawn in id order before a batch is inserted in parallel,
 *     so with one thread and a seed the graph is fully deterministic.
 *   - Cosine vectors are normalised at insert (the index stores unit
 *     vectors and uses 1 - dot); float16 and int8 storage compress vectors
 *     (int8 with one affine quantiser, value = mid + scale * code, trained
 *     on the first batch), and distances are computed from a float32 query
 *     against the compressed rows: true = dist_mul * kernel + offset(query).
 *
 * For float32 l2 and l1 the walk uses distances that stop early once they
 * cannot beat the current ef-th best (the bounded kernels), and the elements of
 * every vector are stored in order of decreasing variance (measured on the
 * first batch), so the partial sums grow fast and rejected rows are cut
 * short early; queries are permuted alike, results are unchanged.
 *
 * The search inner loop collects a node's unvisited neighbours first, with
 * a prefetch of each one's row, then computes their distances while the
 * head of the next row is prefetched (the hardware streams the rest, and a
 * row cut short is not fetched whole), so DRAM latency overlaps arithmetic.
 * The greedy descent through the upper levels only asks "nearer than the
 * current entry?", so it stops early too, and so does the heuristic's
 * "nearer to a kept neighbour than to the new node?".
 * Visited sets are arrays of 16-bit epochs, one per worker, from a pool.
 */
#define _GNU_SOURCE
#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "hnsw.h"
#include "../common/rows.h"
#include "../common/topk.h"

#define HNSW_EXACT_COST 4          /* see above: scan the allowed set when a^2 < 4 ef n */
#define HNSW_GROWTH_MIN 1024       /* slots of the first allocation */
#define HNSW_DEFAULT_EF 64         /* search breadth when the caller gives none */
#define HNSW_PREFETCH_LINES 8      /* lines of the next row prefetched: its head is always read, the
                                      hardware streams the rest, and rows cut short are not fetched whole */

/* ======================================================================
 * Small pieces: node access, locks, random levels, heaps
 * ====================================================================== */

static inline uint32_t *links0(const isx_hnsw *h, size_t slot)
{
    return (uint32_t *)(h->level0 + slot * h->node_bytes);
}

static inline const uint8_t *code_of(const isx_hnsw *h, size_t slot)
{
    return h->level0 + slot * h->node_bytes + h->links0_bytes;
}

static inline uint32_t *links_at(const isx_hnsw *h, size_t slot, int level)
{
    return level == 0 ? links0(h, slot) : h->upper[slot] + (size_t)(level - 1) * (h->M + 1);
}

static inline size_t max_links(const isx_hnsw *h, int level)
{
    return level == 0 ? h->M0 : h->M;
}

static inline void node_lock(isx_hnsw *h, size_t slot)
{
    while (atomic_exchange_explicit(&h->locks[slot], 1, memory_order_acquire))
        while (atomic_load_explicit(&h->locks[slot], memory_order_relaxed))
            sched_yield(); /* 2 cores shared: spinning would steal the holder's time */
}

static inline void node_unlock(isx_hnsw *h, size_t slot)
{
    atomic_store_explicit(&h->locks[slot], 0, memory_order_release);
}

static inline uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int random_level(isx_hnsw *h)
{
    double u = ((double)(splitmix64(&h->rng) >> 11) + 1.0) * (1.0 / 9007199254740993.0); /* (0, 1] */
    double l = -log(u) * h->level_mult;
    return l >= ISX_HNSW_MAX_LEVEL ? ISX_HNSW_MAX_LEVEL : (int)l;
}

static inline void prefetch_lines(const void *p, size_t bytes)
{
    const char *c = p;
    size_t n = (bytes + 63) / 64;
    if (n > HNSW_PREFETCH_LINES)
        n = HNSW_PREFETCH_LINES;
    for (size_t i = 0; i < n; i++)
        __builtin_prefetch(c + 64 * i);
}

typedef struct {
    float d;
    uint32_t s;
} pair;

/* Binary heaps of pairs: `max` keeps the worst on top (results), `min` the
 * best (candidates).  Ties go by slot so the order is reproducible. */
typedef struct {
    pair *a;
    size_t n, cap;
} heap;

static inline int pair_less(pair x, pair y)
{
    return x.d < y.d || (x.d == y.d && x.s < y.s);
}

static int heap_reserve(heap *hp, size_t cap)
{
    if (cap <= hp->cap)
        return ISX_OK;
    size_t c = hp->cap ? hp->cap : 64;
    while (c < cap)
        c *= 2;
    pair *a = realloc(hp->a, c * sizeof(pair));
    if (!a)
        return isx_error(ISX_ENOMEM, "cannot allocate a search heap of %zu entries", c);
    hp->a = a;
    hp->cap = c;
    return ISX_OK;
}

/* is_max: parent "above" child when child < parent is false */
static inline int heap_above(int is_max, pair p, pair c)
{
    return is_max ? !pair_less(p, c) : !pair_less(c, p);
}

static inline void heap_push(heap *hp, int is_max, pair v)
{
    size_t i = hp->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (heap_above(is_max, hp->a[p], v))
            break;
        hp->a[i] = hp->a[p];
        i = p;
    }
    hp->a[i] = v;
}

static inline void heap_pop(heap *hp, int is_max)
{
    pair v = hp->a[--hp->n];
    size_t i = 0, n = hp->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && !heap_above(is_max, hp->a[c], hp->a[c + 1]))
            c++;
        if (heap_above(is_max, v, hp->a[c]))
            break;
        hp->a[i] = hp->a[c];
        i = c;
    }
    if (n)
        hp->a[i] = v;
}

static int cmp_pair(const void *a, const void *b)
{
    pair x = *(const pair *)a, y = *(const pair *)b;
    return pair_less(x, y) ? -1 : pair_less(y, x) ? 1 : 0;
}

/* ======================================================================
 * Visited lists: 16-bit epochs, pooled
 * ====================================================================== */

struct isx_hnsw_visited {
    uint16_t *tags;
    size_t cap;
    uint16_t epoch;
    isx_hnsw_visited *next;
};

static void visited_free(isx_hnsw_visited *v)
{
    if (v) {
        free(v->tags);
        free(v);
    }
}

/* A cleared visited list covering every slot. */
static int visited_acquire(isx_hnsw *h, isx_hnsw_visited **out)
{
    pthread_mutex_lock(&h->pool_lock);
    isx_hnsw_visited *v = h->pool;
    if (v)
        h->pool = v->next;
    pthread_mutex_unlock(&h->pool_lock);
    if (!v && !(v = calloc(1, sizeof(*v))))
        return isx_error(ISX_ENOMEM, "cannot allocate a visited list");
    if (v->cap < h->capacity) {
        uint16_t *t = calloc(h->capacity, sizeof(uint16_t));
        if (!t) {
            visited_free(v);
            return isx_error(ISX_ENOMEM, "cannot allocate a visited list of %zu slots", h->capacity);
        }
        free(v->tags);
        v->tags = t;
        v->cap = h->capacity;
        v->epoch = 0;
    }
    if (++v->epoch == 0) {
        memset(v->tags, 0, v->cap * sizeof(uint16_t));
        v->epoch = 1;
    }
    *out = v;
    return ISX_OK;
}

static void visited_release(isx_hnsw *h, isx_hnsw_visited *v)
{
    if (!v)
        return;
    pthread_mutex_lock(&h->pool_lock);
    v->next = h->pool;
    h->pool = v;
    pthread_mutex_unlock(&h->pool_lock);
}

static inline void visited_next(isx_hnsw_visited *v)
{
    if (++v->epoch == 0) {
        memset(v->tags, 0, v->cap * sizeof(uint16_t));
        v->epoch = 1;
    }
}

/* ======================================================================
 * Vectors: encoding, decoding, prepared queries, distances
 * ====================================================================== */

/* Store row x (float dim, or bytes for hamming) in slot's code area. */
static void encode(isx_hnsw *h, const void *x, size_t slot, float *tmp)
{
    uint8_t *dst = (uint8_t *)code_of(h, slot);
    if (h->dtype == ISX_DTYPE_BITS) {
        memcpy(dst, x, h->code_bytes);
        return;
    }
    const float *xf = x;
    if (h->perm)
        for (size_t i = 0; i < h->dim; i++)
            tmp[i] = xf[h->perm[i]];
    else
        memcpy(tmp, x, h->dim * sizeof(float));
    if (h->metric == ISX_METRIC_COSINE)
        isx_normalise(tmp, h->dim);
    if (h->refine) /* no element order without `bounded`: tmp is the row as given */
        memcpy(h->refine_rows + slot * h->dim, tmp, h->dim * sizeof(float));
    if (h->dtype == ISX_DTYPE_F32) {
        memcpy(dst, tmp, h->code_bytes);
    } else if (h->dtype == ISX_DTYPE_F16) {
        uint16_t *o = (uint16_t *)dst;
        for (size_t i = 0; i < h->dim; i++)
            o[i] = isx_float_to_half(tmp[i]);
    } else {
        int8_t *o = (int8_t *)dst;
        for (size_t i = 0; i < h->dim; i++) {
            float c = nearbyintf((tmp[i] - h->quant_mid) / h->quant_scale);
            o[i] = (int8_t)(c > 127 ? 127 : c < -127 ? -127 : c);
        }
    }
}

/* The stored row of slot as float32 (or bytes for hamming) into out. */
static void decode(const isx_hnsw *h, size_t slot, void *out)
{
    const uint8_t *src = code_of(h, slot);
    if (h->perm) {
        const float *s = (const float *)src;
        for (size_t i = 0; i < h->dim; i++)
            ((float *)out)[h->perm[i]] = s[i];
    } else if (h->dtype == ISX_DTYPE_F32 || h->dtype == ISX_DTYPE_BITS) {
        memcpy(out, src, h->code_bytes);
    } else if (h->dtype == ISX_DTYPE_F16) {
        h->f16_to_f32((const uint16_t *)src, out, h->dim);
    } else {
        const int8_t *s = (const int8_t *)src;
        for (size_t i = 0; i < h->dim; i++)
            ((float *)out)[i] = h->quant_mid + h->quant_scale * (float)s[i];
    }
}

/* A query ready for the kernel: `vec` is what the kernel takes, and the
 * true distance is h->dist_mul * kernel + add. */
typedef struct {
    const void *vec;
    float add;
} query;

/* Prepare x (float32 dim, or bytes for hamming) into buf (dim floats).
 * `stored`: x is a decoded stored row (already unit length for cosine). */
static void query_prepare(const isx_hnsw *h, const void *x, float *buf, int stored, query *q)
{
    q->add = 0;
    if (h->perm && !stored) {
        for (size_t i = 0; i < h->dim; i++)
            buf[i] = ((const float *)x)[h->perm[i]];
        q->vec = buf;
        return;
    }
    if (h->dtype == ISX_DTYPE_BITS || (h->dtype == ISX_DTYPE_F32 && (stored || h->metric != ISX_METRIC_COSINE))) {
        q->vec = x;
        return;
    }
    if (x != buf)
        memcpy(buf, x, h->dim * sizeof(float));
    if (h->metric == ISX_METRIC_COSINE && !stored)
        isx_normalise(buf, h->dim);
    q->vec = buf;
    if (h->dtype != ISX_DTYPE_I8)
        return;
    if (h->metric == ISX_METRIC_L2 || h->metric == ISX_METRIC_L1) {
        float inv = 1.0f / h->quant_scale;
        for (size_t i = 0; i < h->dim; i++)
            buf[i] = (buf[i] - h->quant_mid) * inv;
    } else { /* 1 - q.x = 1 - mid * sum(q) - scale * (1 - kernel) */
        double s = 0;
        for (size_t i = 0; i < h->dim; i++)
            s += buf[i];
        q->add = (float)(1.0 - h->quant_mid * s - h->quant_scale);
    }
}

/* The query for a stored slot: no copy for float32 and bits. */
static void query_from_slot(const isx_hnsw *h, size_t slot, float *buf, query *q)
{
    if (h->dtype == ISX_DTYPE_F32 || h->dtype == ISX_DTYPE_BITS) {
        q->vec = code_of(h, slot);
        q->add = 0;
        return;
    }
    decode(h, slot, buf);
    query_prepare(h, buf, buf, 1, q);
}

/* The distance, or (l2 / l1 float32) any value >= bound once it is clear
 * that the distance is not below bound. */
static inline float dist_below(const isx_hnsw *h, const query *q, size_t slot, float bound)
{
    if (h->bounded)
        return h->bounded(q->vec, (const float *)code_of(h, slot), h->dim, bound);
    float d;
    h->dist(q->vec, code_of(h, slot), 1, h->kernel_dim, &d);
    return h->dist_mul * d + q->add;
}

static inline float dist_to(const isx_hnsw *h, const query *q, size_t slot)
{
    if (h->bounded)
        return h->bounded(q->vec, (const float *)code_of(h, slot), h->dim, INFINITY);
    float d;
    h->dist(q->vec, code_of(h, slot), 1, h->kernel_dim, &d);
    return h->dist_mul * d + q->add;
}

/* ======================================================================
 * Life cycle and storage
 * ====================================================================== */

static size_t round16(size_t x)
{
    return (x + 15) & ~(size_t)15;
}

static int choose_kernel(isx_hnsw *h)
{
    const isx_kernels *k = isx_kernels_active();
    /* cosine vectors are stored unit length: 1 - dot is the cosine distance */
    isx_metric m = h->metric == ISX_METRIC_COSINE ? ISX_METRIC_IP : h->metric;
    h->dist_mul = 1.0f;
    switch (h->dtype) {
    case ISX_DTYPE_F32:
    case ISX_DTYPE_BITS:
        h->dist = k->dist[m];
        break;
    case ISX_DTYPE_F16:
        h->dist = k->dist_f16[m];
        break;
    case ISX_DTYPE_I8:
        h->dist = k->dist_i8[m];
        h->dist_mul = m == ISX_METRIC_L2 ? h->quant_scale * h->quant_scale : h->quant_scale;
        break;
    }
    h->bounded = h->dtype == ISX_DTYPE_F32 ? k->bounded[h->metric] : NULL;
    h->f16_to_f32 = k->f16_to_f32;
    h->refine_dist = k->dist[m];
    if (!h->dist)
        return isx_error(ISX_EINVAL, "no kernel for metric %s with this dtype", isx_metric_name(h->metric));
    return ISX_OK;
}

int isx_hnsw_create(isx_metric metric, size_t dim, isx_dtype dtype, size_t M, size_t ef_construction,
                    uint64_t seed, isx_hnsw **out)
{
    *out = NULL;
    if (metric < 1 || metric > ISX_METRIC_MAX)
        return isx_error(ISX_EINVAL, "unknown metric %d", (int)metric);
    if (dim < 1 || dim > ISX_MAX_DIM)
        return isx_error(ISX_EINVAL, "expected 1 <= dim <= %u, found dim=%zu", ISX_MAX_DIM, dim);
    if (M < 2 || M > ISX_HNSW_MAX_M)
        return isx_error(ISX_EINVAL, "expected 2 <= M <= %d, found M=%zu", ISX_HNSW_MAX_M, M);
    if (ef_construction < 1 || ef_construction > ISX_HNSW_MAX_EF)
        return isx_error(ISX_EINVAL, "expected 1 <= ef_construction <= %u, found %zu", ISX_HNSW_MAX_EF,
                         ef_construction);
    if (metric == ISX_METRIC_HAMMING) {
        if (dim % 8 != 0)
            return isx_error(ISX_EINVAL,
                             "hamming dim counts bits and must be a multiple of 8, found dim=%zu "
                             "(pack codes with numpy.packbits)", dim);
        if (dtype != ISX_DTYPE_BITS && dtype != ISX_DTYPE_F32)
            return isx_error(ISX_EINVAL, "hamming stores packed bits: dtype must be left at its default");
        dtype = ISX_DTYPE_BITS;
    } else if (dtype != ISX_DTYPE_F32 && dtype != ISX_DTYPE_F16 && dtype != ISX_DTYPE_I8) {
        return isx_error(ISX_EINVAL, "expected dtype float32, float16 or int8 for metric %s",
                         isx_metric_name(metric));
    }
    isx_hnsw *h = calloc(1, sizeof(*h));
    if (!h)
        return isx_error(ISX_ENOMEM, "cannot allocate an index");
    h->metric = metric;
    h->dtype = dtype;
    h->dim = dim;
    h->kernel_dim = dtype == ISX_DTYPE_BITS ? dim / 8 : dim;
    h->code_bytes = dtype == ISX_DTYPE_BITS ? dim / 8 : dtype == ISX_DTYPE_F16 ? 2 * dim
                    : dtype == ISX_DTYPE_I8 ? dim : 4 * dim;
    h->M = M;
    h->M0 = 2 * M;
    h->ef_construction = ef_construction;
    h->ef_search = HNSW_DEFAULT_EF;
    h->seed = seed;
    h->rng = seed;
    h->level_mult = 1.0 / log((double)M);
    h->links0_bytes = round16((1 + h->M0) * sizeof(uint32_t));
    h->node_bytes = round16(h->links0_bytes + h->code_bytes);
    h->level0_owned = 1;
    h->entry = -1;
    h->max_level = -1;
    h->quant_scale = 1.0f;
    isx_idmap_init(&h->map);
    int rc = choose_kernel(h);
    if (rc) {
        free(h);
        return rc;
    }
    if (pthread_rwlock_init(&h->lock, NULL) != 0) {
        free(h);
        return isx_error(ISX_ENOMEM, "cannot create the index lock");
    }
    pthread_mutex_init(&h->pool_lock, NULL);
    pthread_mutex_init(&h->entry_lock, NULL);
    *out = h;
    return ISX_OK;
}

static void release_level0(isx_hnsw *h)
{
    if (h->level0_owned)
        isx_aligned_free(h->level0);
    h->level0 = NULL;
    if (h->file) {
        isx_format_close(h->file);
        free(h->file);
        h->file = NULL;
    }
}

void isx_hnsw_destroy(isx_hnsw *h)
{
    if (!h)
        return;
    release_level0(h);
    if (h->upper)
        for (size_t i = 0; i < h->nslots; i++)
            free(h->upper[i]);
    free(h->upper);
    free(h->levels);
    free(h->ids);
    free((void *)h->locks);
    free(h->free_slots);
    free(h->perm);
    if (h->refine_owned)
        isx_aligned_free(h->refine_rows);
    isx_idmap_free(&h->map);
    while (h->pool) {
        isx_hnsw_visited *v = h->pool;
        h->pool = v->next;
        visited_free(v);
    }
    pthread_rwlock_destroy(&h->lock);
    pthread_mutex_destroy(&h->pool_lock);
    pthread_mutex_destroy(&h->entry_lock);
    free(h);
}

void isx_hnsw_lock_read(isx_hnsw *h) { pthread_rwlock_rdlock(&h->lock); }
void isx_hnsw_unlock(isx_hnsw *h) { pthread_rwlock_unlock(&h->lock); }

static int grow(void **p, size_t n, size_t elem, const char *what)
{
    size_t bytes = n * elem;
    void *q = realloc(*p, bytes ? bytes : 1);
    if (!q)
        return isx_error(ISX_ENOMEM, "cannot allocate %s for %zu slots", what, n);
    *p = q;
    return ISX_OK;
}

/* Room for `need` slots, in the index's own memory (copy-on-write of a
 * loaded file's level-0 block).  Write lock held. */
static int reserve(isx_hnsw *h, size_t need)
{
    if (need <= h->capacity && h->level0_owned)
        return ISX_OK;
    size_t cap = h->capacity;
    if (need > cap) {
        cap += cap / 2;
        if (cap < need)
            cap = need;
        if (cap < HNSW_GROWTH_MIN)
            cap = HNSW_GROWTH_MIN;
    }
    size_t bytes;
    int rc = isx_mul_size(cap, h->node_bytes, &bytes, "index storage");
    if (rc)
        return rc;
    if ((rc = grow((void **)&h->levels, cap, 1, "levels")) || (rc = grow((void **)&h->upper, cap, sizeof(uint32_t *), "links")) ||
        (rc = grow((void **)&h->ids, cap, sizeof(int64_t), "ids")) ||
        (rc = grow((void **)&h->free_slots, cap, sizeof(uint32_t), "the free list")))
        return rc;
    atomic_uchar *locks = calloc(cap, sizeof(atomic_uchar));
    uint8_t *fresh = isx_aligned_alloc(bytes);
    if (!locks || !fresh) {
        free((void *)locks);
        isx_aligned_free(fresh);
        return isx_error(ISX_ENOMEM, "cannot allocate %zu bytes for %zu nodes", bytes, cap);
    }
    if (h->refine) {
        size_t rbytes;
        float *rows = NULL;
        if ((rc = isx_mul_size(cap, h->dim * sizeof(float), &rbytes, "re-ranking rows")) ||
            !(rows = isx_aligned_alloc(rbytes))) {
            free((void *)locks);
            isx_aligned_free(fresh);
            return rc ? rc : isx_error(ISX_ENOMEM, "cannot allocate %zu bytes of re-ranking rows", rbytes);
        }
        if (h->nslots)
            memcpy(rows, h->refine_rows, h->nslots * h->dim * sizeof(float));
        if (h->refine_owned)
            isx_aligned_free(h->refine_rows);
        h->refine_rows = rows;
        h->refine_owned = 1;
    }
    if (h->nslots)
        memcpy(fresh, h->level0, h->nslots * h->node_bytes);
    memset(fresh + h->nslots * h->node_bytes, 0, (cap - h->nslots) * h->node_bytes);
    release_level0(h);
    h->level0 = fresh;
    h->level0_owned = 1;
    free((void *)h->locks);
    h->locks = locks;
    for (size_t i = h->nslots; i < cap; i++) {
        h->upper[i] = NULL;
        h->levels[i] = 0;
        h->ids[i] = -1;
    }
    h->capacity = cap;
    return ISX_OK;
}

/* ======================================================================
 * Search within one level
 * ====================================================================== */

/* Per-worker scratch, reused across queries and inserts. */
typedef struct {
    heap cand, res;
    isx_hnsw_visited *vis;
    float *qbuf, *pbuf, *fbuf; /* dim floats: the query, a candidate, a linked node */
    pair *sel;            /* selection scratch */
    size_t sel_cap;
    uint32_t *ids;        /* a copied link list, or neighbour candidates */
    size_t ids_cap;
} worker;

static void worker_free(worker *w)
{
    free(w->cand.a);
    free(w->res.a);
    free(w->qbuf);
    free(w->pbuf);
    free(w->fbuf);
    free(w->sel);
    free(w->ids);
    memset(w, 0, sizeof(*w));
}

static int worker_init(isx_hnsw *h, worker *w, size_t ef)
{
    memset(w, 0, sizeof(*w));
    size_t fl = h->dim + 16;
    w->qbuf = malloc(fl * sizeof(float));
    w->pbuf = malloc(fl * sizeof(float));
    w->fbuf = malloc(fl * sizeof(float));
    w->sel_cap = (ef > h->M0 ? ef : h->M0) + 2;
    w->sel = malloc(w->sel_cap * sizeof(pair));
    w->ids_cap = h->M0 + 1;
    w->ids = malloc(w->ids_cap * sizeof(uint32_t));
    if (!w->qbuf || !w->pbuf || !w->fbuf || !w->sel || !w->ids || heap_reserve(&w->res, ef + 2) ||
        heap_reserve(&w->cand, ef + h->M0 + 2)) {
        worker_free(w);
        return isx_error(ISX_ENOMEM, "cannot allocate search buffers");
    }
    return ISX_OK;
}

/* Beam search at `level` from entry `ep` (distance ep_d): w->res receives
 * up to ef nearest (a max-heap).  `allow` (a bitmap over slots, or NULL)
 * limits what enters the results; `locked` copies each link list under its
 * node's lock (during parallel add).  Visited list must be fresh. */
static int search_level(isx_hnsw *h, worker *w, const query *q, uint32_t ep, float ep_d, int level, size_t ef,
                        const uint64_t *allow, int locked)
{
    heap *cand = &w->cand, *res = &w->res;
    uint16_t *tags = w->vis->tags;
    uint16_t epoch = w->vis->epoch;
    cand->n = res->n = 0;
    tags[ep] = epoch;
    heap_push(cand, 0, (pair){ep_d, ep});
    if (!allow || ((allow[ep >> 6] >> (ep & 63)) & 1))
        heap_push(res, 1, (pair){ep_d, ep});
    float bound = res->n >= ef ? res->a[0].d : INFINITY;
    uint32_t todo[2 * ISX_HNSW_MAX_M];
    while (cand->n) {
        pair c = cand->a[0];
        if (c.d > bound)
            break;
        heap_pop(cand, 0);
        const uint32_t *ll;
        uint32_t nl;
        if (locked) {
            node_lock(h, c.s);
            const uint32_t *src = links_at(h, c.s, level);
            nl = src[0];
            memcpy(w->ids, src + 1, nl * sizeof(uint32_t));
            node_unlock(h, c.s);
            ll = w->ids;
        } else {
            ll = links_at(h, c.s, level) + 1;
            nl = ll[-1];
        }
        size_t nt = 0;
        for (uint32_t j = 0; j < nl; j++) {
            uint32_t v = ll[j];
            if (tags[v] == epoch)
                continue;
            tags[v] = epoch;
            todo[nt++] = v;
            __builtin_prefetch(code_of(h, v));
        }
        if (nt && heap_reserve(cand, cand->n + nt + 1))
            return ISX_ENOMEM;
        for (size_t j = 0; j < nt; j++) {
            if (j + 1 < nt)
                prefetch_lines(code_of(h, todo[j + 1]), h->code_bytes);
            uint32_t v = todo[j];
            float d = dist_below(h, q, v, bound);
            if (res->n < ef || d < bound) {
                heap_push(cand, 0, (pair){d, v});
                if (!allow || ((allow[v >> 6] >> (v & 63)) & 1)) {
                    heap_push(res, 1, (pair){d, v});
                    if (res->n > ef)
                        heap_pop(res, 1);
                    if (res->n >= ef)
                        bound = res->a[0].d;
                }
            }
        }
        if (cand->n)
            __builtin_prefetch(links_at(h, cand->a[0].s, level));
    }
    return ISX_OK;
}

/* Greedy descent from the top level down to level `stop` + 1. */
static void descend(isx_hnsw *h, worker *w, const query *q, uint32_t *ep, float *ep_d, int top, int stop,
                    int locked)
{
    for (int l = top; l > stop; l--) {
        int changed = 1;
        while (changed) {
            changed = 0;
            const uint32_t *ll;
            uint32_t nl;
            if (locked) {
                node_lock(h, *ep);
                const uint32_t *src = links_at(h, *ep, l);
                nl = src[0];
                memcpy(w->ids, src + 1, nl * sizeof(uint32_t));
                node_unlock(h, *ep);
                ll = w->ids;
            } else {
                ll = links_at(h, *ep, l) + 1;
                nl = ll[-1];
            }
            for (uint32_t j = 0; j < nl; j++)
                __builtin_prefetch(code_of(h, ll[j]));
            for (uint32_t j = 0; j < nl; j++) {
                if (j + 1 < nl)
                    prefetch_lines(code_of(h, ll[j + 1]), h->code_bytes);
                /* only "nearer than ep?" matters: stop early, but settle a tie exactly */
                float d = dist_below(h, q, ll[j], *ep_d);
                if (d == *ep_d)
                    d = dist_to(h, q, ll[j]);
                if (d < *ep_d || (d == *ep_d && ll[j] < *ep)) {
                    *ep_d = d;
                    *ep = ll[j];
                    changed = 1;
                }
            }
        }
    }
}

/* ======================================================================
 * Insertion
 * ====================================================================== */

/* The heuristic: from cand[0..n) sorted nearest first (distances to the
 * base node), keep a candidate only if it is nearer the base than every
 * one kept so far; at most `m`.  Kept slots go to out; returns how many. */
static size_t select_neighbours(isx_hnsw *h, worker *w, const pair *cand, size_t n, size_t m, uint32_t *out)
{
    size_t kept = 0;
    for (size_t i = 0; i < n && kept < m; i++) {
        query qc;
        query_from_slot(h, cand[i].s, w->pbuf, &qc);
        int good = 1;
        for (size_t j = 0; j < kept; j++) {
            if (dist_below(h, &qc, out[j], cand[i].d) < cand[i].d) {
                good = 0;
                break;
            }
        }
        if (good)
            out[kept++] = cand[i].s;
    }
    return kept;
}

/* Link `from` -> `to` at level, re-selecting from's list if it is full. */
static void add_link(isx_hnsw *h, worker *w, uint32_t from, uint32_t to, int level)
{
    size_t mmax = max_links(h, level);
    node_lock(h, from);
    uint32_t *ll = links_at(h, from, level);
    uint32_t n = ll[0];
    for (uint32_t j = 0; j < n; j++)
        if (ll[1 + j] == to)
            goto done;
    if (n < mmax) {
        ll[1 + n] = to;
        ll[0] = n + 1;
        goto done;
    }
    /* distances from `from` to its links and to `to`, then re-select */
    query qf;
    pair *c = w->sel;
    query_from_slot(h, from, w->fbuf, &qf);
    for (uint32_t j = 0; j < n; j++)
        c[j] = (pair){dist_to(h, &qf, ll[1 + j]), ll[1 + j]};
    c[n] = (pair){dist_to(h, &qf, to), to};
    qsort(c, n + 1, sizeof(pair), cmp_pair);
    uint32_t keep[2 * ISX_HNSW_MAX_M];
    size_t kept = select_neighbours(h, w, c, n + 1, mmax, keep);
    memcpy(ll + 1, keep, kept * sizeof(uint32_t));
    ll[0] = (uint32_t)kept;
done:
    node_unlock(h, from);
}

/* Insert the node in `slot` (vector stored, level set, links empty). */
static int insert_node(isx_hnsw *h, worker *w, uint32_t slot)
{
    int level = h->levels[slot];
    pthread_mutex_lock(&h->entry_lock);
    int top = h->max_level;
    int64_t entry = h->entry;
    if (entry < 0) {
        h->entry = slot;
        h->max_level = level;
        pthread_mutex_unlock(&h->entry_lock);
        return ISX_OK;
    }
    int holds_entry_lock = level > top;
    if (!holds_entry_lock)
        pthread_mutex_unlock(&h->entry_lock);

    query q;
    query_from_slot(h, slot, w->qbuf, &q);
    uint32_t ep = (uint32_t)entry;
    float ep_d = dist_to(h, &q, ep);
    descend(h, w, &q, &ep, &ep_d, top, level, 1);
    int rc = ISX_OK;
    uint32_t chosen[2 * ISX_HNSW_MAX_M];
    for (int l = level < top ? level : top; l >= 0; l--) {
        visited_next(w->vis);
        if ((rc = search_level(h, w, &q, ep, ep_d, l, h->ef_construction, NULL, 1)))
            break;
        /* results nearest first */
        heap *res = &w->res;
        size_t n = res->n;
        if (w->sel_cap < n) {
            pair *s = realloc(w->sel, n * sizeof(pair));
            if (!s) {
                rc = isx_error(ISX_ENOMEM, "cannot allocate selection buffers");
                break;
            }
            w->sel = s;
            w->sel_cap = n;
        }
        memcpy(w->sel, res->a, n * sizeof(pair));
        qsort(w->sel, n, sizeof(pair), cmp_pair);
        size_t nsel = 0;
        /* the candidate list minus the node itself (an update may find it) */
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (w->sel[i].s != slot)
                w->sel[m++] = w->sel[i];
        if (m == 0)
            continue;
        ep = w->sel[0].s;
        ep_d = w->sel[0].d;
        nsel = select_neighbours(h, w, w->sel, m, h->M, chosen);
        /* Linked through add_link, never copied over: in a parallel add another
         * node may already have found this one (through its upper levels) and
         * linked itself here; overwriting the list would drop that back-link and
         * can leave nodes that no search reaches.  Alone, the list is empty here
         * and add_link appends: the same graph as a plain copy. */
        for (size_t i = 0; i < nsel; i++)
            add_link(h, w, slot, chosen[i], l);
        for (size_t i = 0; i < nsel; i++)
            add_link(h, w, chosen[i], slot, l);
    }
    if (holds_entry_lock) {
        if (rc == ISX_OK) {
            h->entry = slot;
            h->max_level = level;
        }
        pthread_mutex_unlock(&h->entry_lock);
    }
    return rc;
}

/* ======================================================================
 * Workers for a parallel call
 * ====================================================================== */

typedef struct {
    worker *w;
    int n;
} crew;

static void crew_free(isx_hnsw *h, crew *c)
{
    for (int i = 0; i < c->n; i++) {
        visited_release(h, c->w[i].vis);
        worker_free(&c->w[i]);
    }
    free(c->w);
    c->w = NULL;
    c->n = 0;
}

/* n workers with buffers for breadth ef and a visited list each. */
static int crew_init(isx_hnsw *h, crew *c, int n, size_t ef)
{
    c->n = 0;
    c->w = calloc((size_t)n, sizeof(worker));
    if (!c->w)
        return isx_error(ISX_ENOMEM, "cannot allocate %d workers", n);
    for (int i = 0; i < n; i++) {
        int rc = worker_init(h, &c->w[i], ef);
        if (rc == ISX_OK && (rc = visited_acquire(h, &c->w[i].vis)))
            worker_free(&c->w[i]);
        if (rc) {
            crew_free(h, c);
            return rc;
        }
        c->n = i + 1;
    }
    return ISX_OK;
}

/* ======================================================================
 * Validation of what callers hand in
 * ====================================================================== */

static int check_rows(const isx_hnsw *h, const void *X, size_t n, const char *what)
{
    if (h->dtype == ISX_DTYPE_BITS)
        return ISX_OK;
    const float *x = X;
    int rc = isx_check_finite(x, n, h->dim, what);
    if (rc)
        return rc;
    if (h->dtype == ISX_DTYPE_F16)
        for (size_t i = 0; i < n * h->dim; i++)
            if (fabsf(x[i]) > 65504.0f)
                return isx_error(ISX_EINVAL,
                                 "float16 storage holds |values| <= 65504, found %g at row %zu, column %zu "
                                 "(scale the data or use dtype='float32')",
                                 (double)x[i], i / h->dim, i % h->dim);
    return ISX_OK;
}

/* ======================================================================
 * Removal with graph repair
 * ====================================================================== */

typedef struct {
    isx_hnsw *h;
    crew *crew;
    const uint8_t *gone;
} repair_ctx;

/* Re-select the links of `slot` at every level where one points at a
 * removed node, from its surviving links plus the removed nodes' links. */
static int task_repair(void *ctx, size_t slot, int wk)
{
    repair_ctx *c = ctx;
    isx_hnsw *h = c->h;
    worker *w = &c->crew->w[wk];
    if (h->ids[slot] < 0 || c->gone[slot])
        return ISX_OK;
    query q;
    int prepared = 0;
    for (int l = 0; l <= h->levels[slot]; l++) {
        uint32_t *ll = links_at(h, slot, l);
        uint32_t n = ll[0];
        int touched = 0;
        for (uint32_t j = 0; j < n && !touched; j++)
            touched = c->gone[ll[1 + j]];
        if (!touched)
            continue;
        size_t need = (size_t)n * (h->M0 + 1) + 1;
        if (w->ids_cap < need) {
            uint32_t *b = realloc(w->ids, need * sizeof(uint32_t));
            if (!b)
                return isx_error(ISX_ENOMEM, "cannot allocate repair buffers");
            w->ids = b;
            w->ids_cap = need;
        }
        visited_next(w->vis);
        uint16_t *tags = w->vis->tags, epoch = w->vis->epoch;
        tags[slot] = epoch;
        size_t m = 0;
        for (uint32_t j = 0; j < n; j++) {
            uint32_t v = ll[1 + j];
            if (!c->gone[v]) {
                if (tags[v] != epoch) {
                    tags[v] = epoch;
                    w->ids[m++] = v;
                }
                continue;
            }
            const uint32_t *vl = links_at(h, v, l);
            for (uint32_t i = 0; i < vl[0]; i++) {
                uint32_t u = vl[1 + i];
                if (!c->gone[u] && tags[u] != epoch) {
                    tags[u] = epoch;
                    w->ids[m++] = u;
                }
            }
        }
        if (w->sel_cap < m) {
            pair *sb = realloc(w->sel, m * sizeof(pair));
            if (!sb)
                return isx_error(ISX_ENOMEM, "cannot allocate repair buffers");
            w->sel = sb;
            w->sel_cap = m;
        }
        if (!prepared) {
            query_from_slot(h, slot, w->qbuf, &q);
            prepared = 1;
        }
        for (size_t i = 0; i < m; i++)
            w->sel[i] = (pair){dist_to(h, &q, w->ids[i]), w->ids[i]};
        qsort(w->sel, m, sizeof(pair), cmp_pair);
        uint32_t keep[2 * ISX_HNSW_MAX_M];
        size_t kept = select_neighbours(h, w, w->sel, m, max_links(h, l), keep);
        memcpy(ll + 1, keep, kept * sizeof(uint32_t));
        ll[0] = (uint32_t)kept;
    }
    return ISX_OK;
}

/* Write lock held. */
static int remove_nolock(isx_hnsw *h, const int64_t *ids, size_t n, int nthreads, size_t *removed)
{
    *removed = 0;
    size_t hits = 0;
    for (size_t i = 0; i < n; i++)
        if (isx_idmap_get(&h->map, ids[i]) >= 0)
            hits++;
    if (hits == 0)
        return ISX_OK;
    int rc = reserve(h, h->nslots); /* copy-on-write of a loaded file */
    if (rc)
        return rc;
    uint8_t *gone = calloc(h->nslots, 1);
    if (!gone)
        return isx_error(ISX_ENOMEM, "cannot allocate %zu bytes", h->nslots);
    crew cr = {0};
    if ((rc = crew_init(h, &cr, isx_resolve_threads(nthreads), 1)))
        goto cleanup;
    for (size_t i = 0; i < n; i++) {
        int64_t slot = isx_idmap_get(&h->map, ids[i]);
        if (slot >= 0) {
            gone[slot] = 1;
            isx_idmap_del(&h->map, ids[i]);
        }
    }
    repair_ctx ctx = {h, &cr, gone};
    rc = isx_parallel_for(cr.n, h->nslots, task_repair, &ctx);
    /* Unlink the removed slots whatever happened: the map no longer knows
     * them, and a failed repair only leaves a link list less well chosen
     * (dropped below, so no link points at a free slot). */
    for (size_t s = 0; s < h->nslots; s++) {
        if (!gone[s] && h->ids[s] >= 0 && rc) {
            for (int l = 0; l <= h->levels[s]; l++) {
                uint32_t *ll = links_at(h, s, l), m = 0;
                for (uint32_t j = 0; j < ll[0]; j++)
                    if (!gone[ll[1 + j]])
                        ll[1 + m++] = ll[1 + j];
                ll[0] = m;
            }
        }
    }
    for (size_t s = h->nslots; s-- > 0;) {
        if (!gone[s])
            continue;
        memset(links0(h, s), 0, h->node_bytes);
        free(h->upper[s]);
        h->upper[s] = NULL;
        h->levels[s] = 0;
        h->ids[s] = -1;
        h->free_slots[h->nfree++] = (uint32_t)s;
        h->live--;
        (*removed)++;
    }
    if (h->entry >= 0 && gone[h->entry]) {
        int64_t best = -1;
        for (size_t s = 0; s < h->nslots; s++)
            if (h->ids[s] >= 0 && (best < 0 || h->levels[s] > h->levels[best]))
                best = (int64_t)s;
        h->entry = best;
        h->max_level = best >= 0 ? h->levels[best] : -1;
    }
cleanup:
    crew_free(h, &cr);
    free(gone);
    return rc;
}

int isx_hnsw_remove(isx_hnsw *h, const int64_t *ids, size_t n, int nthreads, size_t *removed)
{
    pthread_rwlock_wrlock(&h->lock);
    int rc = remove_nolock(h, ids, n, nthreads, removed);
    pthread_rwlock_unlock(&h->lock);
    return rc;
}

/* ======================================================================
 * Add
 * ====================================================================== */

/* The int8 quantiser from the first batch: its value range, +-1/254 of it
 * kept as margin so later values just outside still round in range. */
static void train_quantiser(isx_hnsw *h, const float *X, size_t n, float *tmp)
{
    float lo = INFINITY, hi = -INFINITY;
    for (size_t r = 0; r < n; r++) {
        memcpy(tmp, X + r * h->dim, h->dim * sizeof(float));
        if (h->metric == ISX_METRIC_COSINE)
            isx_normalise(tmp, h->dim);
        for (size_t i = 0; i < h->dim; i++) {
            lo = tmp[i] < lo ? tmp[i] : lo;
            hi = tmp[i] > hi ? tmp[i] : hi;
        }
    }
    h->quant_mid = 0.5f * (lo + hi);
    h->quant_scale = (hi - lo) / 254.0f;
    if (!(h->quant_scale > 0) || !isfinite(h->quant_scale))
        h->quant_scale = fabsf(h->quant_mid) > 0 ? fabsf(h->quant_mid) / 127.0f : 1.0f;
    h->quant_ready = 1;
}

typedef struct {
    double var;
    uint32_t i;
} ranked;

static int cmp_ranked(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    return x->var > y->var ? -1 : x->var < y->var ? 1 : (x->i > y->i) - (x->i < y->i);
}

/* Element order for early-stopping distances: decreasing variance over
 * the first batch. */
static int choose_order(isx_hnsw *h, const float *X, size_t n)
{
    uint32_t *perm = malloc(h->dim * sizeof(uint32_t));
    double *mean = calloc(h->dim, sizeof(double));
    ranked *r = calloc(h->dim, sizeof(ranked));
    int rc = ISX_OK;
    if (!perm || !mean || !r) {
        free(perm);
        rc = isx_error(ISX_ENOMEM, "cannot allocate the element order");
        goto cleanup;
    }
    for (size_t row = 0; row < n; row++)
        for (size_t i = 0; i < h->dim; i++)
            mean[i] += X[row * h->dim + i];
    for (size_t i = 0; i < h->dim; i++) {
        mean[i] /= (double)n;
        r[i].i = (uint32_t)i;
    }
    for (size_t row = 0; row < n; row++)
        for (size_t i = 0; i < h->dim; i++) {
            double d = X[row * h->dim + i] - mean[i];
            r[i].var += d * d;
        }
    qsort(r, h->dim, sizeof(ranked), cmp_ranked);
    for (size_t i = 0; i < h->dim; i++)
        perm[i] = r[i].i;
    h->perm = perm;
cleanup:
    free(mean);
    free(r);
    return rc;
}

typedef struct {
    isx_hnsw *h;
    crew *crew;
    const uint32_t *slots;
} insert_ctx;

static int task_insert(void *ctx, size_t task, int wk)
{
    insert_ctx *c = ctx;
    return insert_node(c->h, &c->crew->w[wk], c->slots[task]);
}

int isx_hnsw_add(isx_hnsw *h, const void *X, size_t n, const int64_t *ids, int nthreads)
{
    int rc = check_rows(h, X, n, "added vectors");
    if (rc || (ids && (rc = isx_check_ids(ids, n))))
        return rc;
    if (n == 0)
        return ISX_OK;
    uint32_t *slots = NULL;
    int64_t *existing = NULL;
    float *tmp = NULL;
    crew cr = {0};
    pthread_rwlock_wrlock(&h->lock);
    if ((uint64_t)h->live + n > ISX_MAX_COUNT || (uint64_t)h->nslots + n > UINT32_MAX) {
        rc = isx_error(ISX_EINVAL, "an HNSW index holds at most %u vectors", UINT32_MAX);
        goto cleanup;
    }
    if (!ids && h->next_id > INT64_MAX - (int64_t)n) {
        rc = isx_error(ISX_EINVAL, "default ids would overflow int64: pass ids explicitly");
        goto cleanup;
    }
    slots = malloc(n * sizeof(uint32_t));
    existing = malloc(n * sizeof(int64_t));
    tmp = malloc((h->dim + 16) * sizeof(float));
    if (!slots || !existing || !tmp) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate %zu slots", n);
        goto cleanup;
    }
    /* An id that exists is an update: remove it (repairing the graph), then
     * insert the new vector as a fresh node. */
    size_t nexisting = 0;
    if (ids)
        for (size_t i = 0; i < n; i++)
            if (isx_idmap_get(&h->map, ids[i]) >= 0)
                existing[nexisting++] = ids[i];
    size_t removed;
    if (nexisting && (rc = remove_nolock(h, existing, nexisting, nthreads, &removed)))
        goto cleanup;
    if (h->bounded && !h->perm && h->live == 0 && h->nslots == 0 && (rc = choose_order(h, X, n)))
        goto cleanup;
    if (h->dtype == ISX_DTYPE_I8 && !h->quant_ready) {
        train_quantiser(h, X, n, tmp);
        if ((rc = choose_kernel(h)))
            goto cleanup;
    }
    size_t reuse = h->nfree < n ? h->nfree : n;
    if ((rc = reserve(h, h->nslots + (n - reuse))) || (rc = isx_idmap_reserve(&h->map, h->live + n)))
        goto cleanup;
    const uint8_t *src = X;
    size_t in_bytes = h->dtype == ISX_DTYPE_BITS ? h->code_bytes : h->dim * sizeof(float);
    for (size_t i = 0; i < n; i++) {
        uint32_t slot = h->nfree ? h->free_slots[--h->nfree] : (uint32_t)h->nslots++;
        int level = random_level(h);
        memset(links0(h, slot), 0, h->links0_bytes);
        if (level > 0 && !(h->upper[slot] = calloc((size_t)level * (h->M + 1), sizeof(uint32_t)))) {
            h->free_slots[h->nfree++] = slot;
            rc = isx_error(ISX_ENOMEM, "cannot allocate links for level %d", level);
            n = i; /* insert what is stored */
            break;
        }
        h->levels[slot] = (uint8_t)level;
        encode(h, src + i * in_bytes, slot, tmp);
        int64_t id = ids ? ids[i] : h->next_id + (int64_t)i;
        h->ids[slot] = id;
        isx_idmap_put(&h->map, id, slot); /* cannot fail: reserved */
        h->live++;
        slots[i] = slot;
    }
    if (!ids) {
        h->next_id += (int64_t)n;
    } else {
        for (size_t i = 0; i < n; i++)
            if (ids[i] >= h->next_id)
                h->next_id = ids[i] == INT64_MAX ? INT64_MAX : ids[i] + 1;
    }
    int nt = isx_resolve_threads(nthreads);
    if ((size_t)nt > n)
        nt = n ? (int)n : 1;
    int rc2 = crew_init(h, &cr, nt, h->ef_construction);
    if (rc2 == ISX_OK) {
        insert_ctx ctx = {h, &cr, slots};
        rc2 = isx_parallel_for(cr.n, n, task_insert, &ctx);
    }
    if (rc == ISX_OK)
        rc = rc2;
cleanup:
    crew_free(h, &cr);
    free(slots);
    free(existing);
    free(tmp);
    pthread_rwlock_unlock(&h->lock);
    return rc;
}

/* ======================================================================
 * Get, ids, ef
 * ====================================================================== */

int isx_hnsw_get(isx_hnsw *h, const int64_t *ids, size_t n, void *out)
{
    int rc = ISX_OK;
    size_t out_bytes = h->dtype == ISX_DTYPE_BITS ? h->code_bytes : h->dim * sizeof(float);
    pthread_rwlock_rdlock(&h->lock);
    for (size_t i = 0; i < n; i++) {
        int64_t slot = isx_idmap_get(&h->map, ids[i]);
        if (slot < 0) {
            rc = isx_error(ISX_EKEY, "id %lld is not in the index", (long long)ids[i]);
            break;
        }
        if (h->refine) /* the float32 row as added */
            memcpy((uint8_t *)out + i * out_bytes, h->refine_rows + (size_t)slot * h->dim, out_bytes);
        else
            decode(h, (size_t)slot, (uint8_t *)out + i * out_bytes);
    }
    pthread_rwlock_unlock(&h->lock);
    return rc;
}

int isx_hnsw_ids(isx_hnsw *h, int64_t *out, size_t cap, size_t *n)
{
    pthread_rwlock_rdlock(&h->lock);
    size_t c = 0;
    for (size_t s = 0; s < h->nslots && c < cap; s++)
        if (h->ids[s] >= 0)
            out[c++] = h->ids[s];
    *n = c;
    pthread_rwlock_unlock(&h->lock);
    return ISX_OK;
}

int isx_hnsw_set_ef(isx_hnsw *h, size_t ef)
{
    if (ef < 1 || ef > ISX_HNSW_MAX_EF)
        return isx_error(ISX_EINVAL, "expected 1 <= ef <= %u, found ef=%zu", ISX_HNSW_MAX_EF, ef);
    pthread_rwlock_wrlock(&h->lock);
    h->ef_search = ef;
    pthread_rwlock_unlock(&h->lock);
    return ISX_OK;
}

int isx_hnsw_set_refine(isx_hnsw *h, int on)
{
    if (on && h->dtype != ISX_DTYPE_F16 && h->dtype != ISX_DTYPE_I8)
        return isx_error(ISX_EINVAL, "refine keeps float32 rows beside compressed ones: it needs dtype float16 or "
                                     "int8 (float32 rows are exact already)");
    pthread_rwlock_wrlock(&h->lock);
    int rc = ISX_OK;
    if (h->nslots && !!on != h->refine)
        rc = isx_error(ISX_EINVAL, "refine can only be chosen on an empty index (this one holds %zu vectors)",
                       h->live);
    else
        h->refine = !!on;
    pthread_rwlock_unlock(&h->lock);
    return rc;
}

/* ======================================================================
 * Search
 * ====================================================================== */

/* The exact distance of a refine row to the float32 query r (unit length
 * for cosine, whose rows are stored unit length too: 1 - dot). */
static inline float refine_dist(const isx_hnsw *h, const float *r, size_t slot)
{
    float d;
    h->refine_dist(r, h->refine_rows + slot * h->dim, 1, h->dim, &d);
    return d;
}

/* Re-rank the n candidates in sel by their exact distances to r, best first
 * (ties to the lower slot). */
static void refine_candidates(const isx_hnsw *h, const float *r, pair *sel, size_t n)
{
    for (size_t j = 0; j + 1 < n; j++)
        __builtin_prefetch(h->refine_rows + sel[j + 1].s * h->dim);
    for (size_t j = 0; j < n; j++)
        sel[j].d = refine_dist(h, r, sel[j].s);
    qsort(sel, n, sizeof(pair), cmp_pair);
}

typedef struct {
    isx_hnsw *h;
    crew *crew;
    const uint8_t *Q;
    size_t q_bytes, k, ef;
    const uint64_t *allow;    /* NULL: no filter */
    const uint32_t *exact;    /* allowed slots, ascending, when scanned exactly */
    size_t nexact;
    int use_exact;
    float *D;
    int64_t *I;
} search_ctx;

static int task_search(void *ctx, size_t qi, int wk)
{
    search_ctx *c = ctx;
    isx_hnsw *h = c->h;
    worker *w = &c->crew->w[wk];
    size_t k = c->k;
    float *D = c->D + qi * k;
    int64_t *I = c->I + qi * k;
    size_t got = 0;
    query q;
    const float *r = NULL; /* with refine: the float32 query for the exact distances */
    if (h->refine) {
        memcpy(w->pbuf, c->Q + qi * c->q_bytes, h->dim * sizeof(float));
        if (h->metric == ISX_METRIC_COSINE)
            isx_normalise(w->pbuf, h->dim);
        r = w->pbuf;
    }
    query_prepare(h, c->Q + qi * c->q_bytes, w->qbuf, 0, &q);
    if (c->use_exact) {
        isx_topk t;
        isx_topk_init(&t, D, I, k);
        for (size_t i = 0; i < c->nexact; i++) {
            uint32_t s = c->exact[i];
            float d = r ? refine_dist(h, r, s) : dist_to(h, &q, s);
            if (d < isx_topk_bound(&t) || t.size < k)
                isx_topk_push(&t, d, (int64_t)s);
        }
        isx_topk_sort(&t);
        got = t.size;
        for (size_t j = 0; j < got; j++)
            I[j] = h->ids[I[j]];
    } else if (h->entry >= 0) {
        uint32_t ep = (uint32_t)h->entry;
        float ep_d = dist_to(h, &q, ep);
        descend(h, w, &q, &ep, &ep_d, h->max_level, 0, 0);
        visited_next(w->vis);
        int rc = search_level(h, w, &q, ep, ep_d, 0, c->ef, c->allow, 0);
        if (rc)
            return isx_error(rc, "cannot grow the search heap");
        heap *res = &w->res;
        size_t n = res->n;
        for (size_t i = n; i-- > 0;) {
            w->sel[i] = res->a[0];
            heap_pop(res, 1);
        }
        if (r)
            refine_candidates(h, r, w->sel, n);
        got = n < k ? n : k;
        for (size_t j = 0; j < got; j++) {
            D[j] = w->sel[j].d;
            I[j] = h->ids[w->sel[j].s];
        }
    }
    for (size_t j = got; j < k; j++) {
        D[j] = INFINITY;
        I[j] = -1;
    }
    return ISX_OK;
}

/* The filter as a bitmap over slots; *nallowed counts live allowed slots. */
static int filter_bitmap(const isx_hnsw *h, const isx_filter *flt, uint64_t **out, size_t *nallowed)
{
    *out = NULL;
    *nallowed = 0;
    uint64_t *bits = calloc(h->nslots / 64 + 1, sizeof(uint64_t));
    if (!bits)
        return isx_error(ISX_ENOMEM, "cannot allocate a filter bitmap");
    size_t cnt = 0;
    if (flt->mask) {
        int64_t max_id = -1;
        for (size_t s = 0; s < h->nslots; s++) {
            int64_t id = h->ids[s];
            max_id = id > max_id ? id : max_id;
            if (id >= 0 && (uint64_t)id < flt->mask_len && flt->mask[id]) {
                bits[s >> 6] |= 1ull << (s & 63);
                cnt++;
            }
        }
        int rc = isx_filter_check_mask(flt, max_id);
        if (rc) {
            free(bits);
            return rc;
        }
    } else {
        for (size_t i = 0; i < flt->n_ids; i++) {
            int64_t s = isx_idmap_get(&h->map, flt->ids[i]);
            if (s >= 0 && !((bits[s >> 6] >> (s & 63)) & 1)) {
                bits[s >> 6] |= 1ull << (s & 63);
                cnt++;
            }
        }
    }
    *out = bits;
    *nallowed = cnt;
    return ISX_OK;
}

int isx_hnsw_search(isx_hnsw *h, const void *Q, size_t nq, size_t k, size_t ef, const isx_filter *filter,
                    int nthreads, float *D, int64_t *labels)
{
    if (k < 1 || k > ISX_MAX_K)
        return isx_error(ISX_EINVAL, "expected 1 <= k <= %u, found k=%zu", ISX_MAX_K, k);
    if (ef > ISX_HNSW_MAX_EF)
        return isx_error(ISX_EINVAL, "expected ef <= %u, found ef=%zu", ISX_HNSW_MAX_EF, ef);
    int rc = check_rows(h, Q, nq, "queries");
    if (rc || nq == 0)
        return rc;
    uint64_t *bits = NULL;
    uint32_t *exact = NULL;
    crew cr = {0};
    pthread_rwlock_rdlock(&h->lock);
    if (ef == 0)
        ef = h->ef_search;
    if (ef < k)
        ef = k;
    search_ctx ctx = {.h = h, .crew = &cr, .Q = Q, .k = k, .ef = ef, .D = D, .I = labels};
    ctx.q_bytes = h->dtype == ISX_DTYPE_BITS ? h->code_bytes : h->dim * sizeof(float);
    if (filter && (filter->mask || filter->ids)) {
        size_t nallowed;
        if ((rc = filter_bitmap(h, filter, &bits, &nallowed)))
            goto cleanup;
        ctx.allow = bits;
        if ((double)nallowed * (double)nallowed < HNSW_EXACT_COST * (double)ef * (double)h->live) {
            exact = malloc((nallowed ? nallowed : 1) * sizeof(uint32_t));
            if (!exact) {
                rc = isx_error(ISX_ENOMEM, "cannot allocate the allowed-slot list");
                goto cleanup;
            }
            for (size_t s = 0; s < h->nslots; s++)
                if ((bits[s >> 6] >> (s & 63)) & 1)
                    exact[ctx.nexact++] = (uint32_t)s;
            ctx.exact = exact;
            ctx.use_exact = 1;
        }
    }
    int nt = isx_resolve_threads(nthreads);
    if ((size_t)nt > nq)
        nt = (int)nq;
    if ((rc = crew_init(h, &cr, nt, ef)))
        goto cleanup;
    rc = isx_parallel_for(cr.n, nq, task_search, &ctx);
cleanup:
    crew_free(h, &cr);
    pthread_rwlock_unlock(&h->lock);
    free(bits);
    free(exact);
    return rc;
}

/* ======================================================================
 * Invariants (tests, users, and the loader)
 * ====================================================================== */

static int check_nolock(const isx_hnsw *h)
{
    size_t live = 0;
    int64_t top = -1;
    if (h->nslots > h->capacity)
        return isx_error(ISX_EFORMAT, "%zu slots exceed the capacity %zu", h->nslots, h->capacity);
    for (size_t s = 0; s < h->nslots; s++) {
        int level = h->levels[s];
        if (h->ids[s] < 0) {
            if (h->ids[s] != -1 || level != 0 || links0(h, s)[0] != 0 || h->upper[s])
                return isx_error(ISX_EFORMAT, "free slot %zu has an id, a level or links", s);
            continue;
        }
        live++;
        if (isx_idmap_get(&h->map, h->ids[s]) != (int64_t)s)
            return isx_error(ISX_EFORMAT, "id %lld of slot %zu is not mapped to it", (long long)h->ids[s], s);
        if (level > ISX_HNSW_MAX_LEVEL || level > h->max_level)
            return isx_error(ISX_EFORMAT, "slot %zu has level %d, above the top level %d", s, level, h->max_level);
        if (level > 0 && !h->upper[s])
            return isx_error(ISX_EFORMAT, "slot %zu of level %d has no upper links", s, level);
        if (level > top)
            top = level;
        for (int l = 0; l <= level; l++) {
            const uint32_t *ll = links_at(h, s, l);
            if (ll[0] > max_links(h, l))
                return isx_error(ISX_EFORMAT, "slot %zu has %u links at level %d, more than %zu", s, ll[0], l,
                                 max_links(h, l));
            for (uint32_t j = 0; j < ll[0]; j++) {
                uint32_t v = ll[1 + j];
                if (v >= h->nslots || h->ids[v] < 0)
                    return isx_error(ISX_EFORMAT, "slot %zu links to %s slot %u at level %d", s,
                                     v >= h->nslots ? "out-of-range" : "free", v, l);
                if (v == s)
                    return isx_error(ISX_EFORMAT, "slot %zu links to itself at level %d", s, l);
                if (h->levels[v] < l)
                    return isx_error(ISX_EFORMAT, "slot %zu links at level %d to slot %u of level %d", s, l, v,
                                     h->levels[v]);
                for (uint32_t i = 0; i < j; i++)
                    if (ll[1 + i] == v)
                        return isx_error(ISX_EFORMAT, "slot %zu links twice to slot %u at level %d", s, v, l);
            }
        }
    }
    if (live != h->live || h->map.count != live || live + h->nfree != h->nslots)
        return isx_error(ISX_EFORMAT, "%zu live slots, but the index counts %zu (%zu ids mapped, %zu free of %zu)",
                         live, h->live, h->map.count, h->nfree, h->nslots);
    for (size_t i = 0; i < h->nfree; i++)
        if (h->free_slots[i] >= h->nslots || h->ids[h->free_slots[i]] >= 0)
            return isx_error(ISX_EFORMAT, "free list entry %zu is not a free slot", i);
    if (live == 0 ? (h->entry != -1 || h->max_level != -1)
                  : (h->entry < 0 || (size_t)h->entry >= h->nslots || h->ids[h->entry] < 0 ||
                     h->levels[h->entry] != h->max_level || h->max_level != top))
        return isx_error(ISX_EFORMAT, "entry point %lld (level %d) is not a live node of the top level %lld",
                         (long long)h->entry, h->max_level, (long long)top);
    return ISX_OK;
}

int isx_hnsw_check(isx_hnsw *h)
{
    pthread_rwlock_rdlock(&h->lock);
    int rc = check_nolock(h);
    pthread_rwlock_unlock(&h->lock);
    return rc;
}

size_t isx_hnsw_memory(isx_hnsw *h)
{
    pthread_rwlock_rdlock(&h->lock);
    size_t b = sizeof(*h) + h->capacity * (h->node_bytes + 1 + sizeof(uint32_t *) + sizeof(int64_t) + 1 + 4);
    for (size_t s = 0; s < h->nslots; s++)
        b += h->upper[s] ? (size_t)h->levels[s] * (h->M + 1) * sizeof(uint32_t) : 0;
    b += h->map.keys ? (h->map.mask + 1) * 2 * sizeof(int64_t) : 0;
    if (h->refine)
        b += (h->refine_owned ? h->capacity : h->nslots) * h->dim * sizeof(float);
    pthread_mutex_lock(&h->pool_lock);
    for (isx_hnsw_visited *v = h->pool; v; v = v->next)
        b += v->cap * sizeof(uint16_t);
    pthread_mutex_unlock(&h->pool_lock);
    pthread_rwlock_unlock(&h->lock);
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

static void param_float(isx_param *p, const char *key, double v)
{
    memset(p, 0, sizeof(*p));
    strcpy(p->key, key);
    p->type = ISX_PARAM_FLOAT;
    p->v.f = v;
}

int isx_hnsw_describe(isx_hnsw *h, isx_header *hd, isx_section_out *secs, uint32_t *nsecs, uint8_t *parm,
                      size_t parm_cap, uint32_t **upper_buf)
{
    *upper_buf = NULL;
    isx_param p[16];
    uint32_t np = 0;
    param_int(&p[np++], "M", (int64_t)h->M);
    param_int(&p[np++], "ef_construction", (int64_t)h->ef_construction);
    param_int(&p[np++], "ef_search", (int64_t)h->ef_search);
    param_int(&p[np++], "seed", (int64_t)h->seed);
    param_int(&p[np++], "rng", (int64_t)h->rng);
    param_int(&p[np++], "entry", h->entry);
    param_int(&p[np++], "max_level", h->max_level);
    param_int(&p[np++], "next_id", h->next_id);
    param_int(&p[np++], "slots", (int64_t)h->nslots);
    param_int(&p[np++], "node_bytes", (int64_t)h->node_bytes);
    param_int(&p[np++], "quant_ready", h->quant_ready);
    param_float(&p[np++], "quant_mid", h->quant_mid);
    param_float(&p[np++], "quant_scale", h->quant_scale);
    param_int(&p[np++], "refine", h->refine);
    size_t used;
    int rc = isx_params_encode(p, np, parm, parm_cap, &used);
    if (rc)
        return rc;
    size_t nup = 0;
    for (size_t s = 0; s < h->nslots; s++)
        nup += (size_t)h->levels[s] * (h->M + 1);
    uint32_t *up = malloc((nup ? nup : 1) * sizeof(uint32_t));
    if (!up)
        return isx_error(ISX_ENOMEM, "cannot allocate %zu upper links for saving", nup);
    size_t o = 0;
    for (size_t s = 0; s < h->nslots; s++) {
        size_t m = (size_t)h->levels[s] * (h->M + 1);
        if (m)
            memcpy(up + o, h->upper[s], m * sizeof(uint32_t));
        o += m;
    }
    memset(hd, 0, sizeof(*hd));
    hd->kind = ISX_KIND_HNSW;
    hd->metric = h->metric;
    hd->dtype = h->dtype;
    hd->dim = h->dim;
    hd->count = h->live;
    secs[0] = (isx_section_out){ISX_SEC_PARAMS, parm, used};
    secs[1] = (isx_section_out){ISX_SEC_IDS, h->ids, (uint64_t)h->nslots * sizeof(int64_t)};
    secs[2] = (isx_section_out){ISX_SEC_HNSW_LEVEL0, h->level0, (uint64_t)h->nslots * h->node_bytes};
    secs[3] = (isx_section_out){ISX_SEC_HNSW_LEVELS, h->levels, (uint64_t)h->nslots};
    secs[4] = (isx_section_out){ISX_SEC_HNSW_UPPER, up, (uint64_t)nup * sizeof(uint32_t)};
    secs[5] = (isx_section_out){ISX_SEC_HNSW_PERM, h->perm, h->perm ? h->dim * sizeof(uint32_t) : 0};
    secs[6] = (isx_section_out){ISX_SEC_HNSW_REFINE, h->refine_rows,
                                h->refine ? (uint64_t)h->nslots * h->dim * sizeof(float) : 0};
    *nsecs = ISX_HNSW_SECTIONS;
    *upper_buf = up;
    return ISX_OK;
}

static int get_param(const isx_param *p, uint32_t n, const char *key, int64_t lo, int64_t hi, int64_t *out)
{
    int rc = isx_params_get_int(p, n, key, out);
    if (rc)
        return rc;
    if (*out < lo || *out > hi)
        return isx_error(ISX_EFORMAT, "HNSW parameter %s = %lld is outside [%lld, %lld]", key, (long long)*out,
                         (long long)lo, (long long)hi);
    return ISX_OK;
}

int isx_hnsw_from_file(isx_file *file, isx_hnsw **out)
{
    *out = NULL;
    isx_hnsw *h = NULL;
    const isx_header *hd = &file->header;
    const isx_section_in *parm, *ids, *l0, *lv, *up;
    isx_param p[ISX_MAX_PARAMS];
    uint32_t np = 0;
    int64_t M, efc, efs, seed, rng, entry, max_level, next_id, nslots, node_bytes, quant_ready, refine = 0;
    double qmid = 0, qscale = 1;
    int rc;
    if (hd->kind != ISX_KIND_HNSW) {
        rc = isx_error(ISX_EFORMAT, "expected an HNSW index (kind %d), found kind %u", ISX_KIND_HNSW, hd->kind);
        goto fail;
    }
    if (hd->metric == ISX_METRIC_HAMMING ? hd->dtype != ISX_DTYPE_BITS
                                         : (hd->dtype < ISX_DTYPE_F32 || hd->dtype > ISX_DTYPE_I8)) {
        rc = isx_error(ISX_EFORMAT, "HNSW index: dtype %u does not go with metric %u", hd->dtype, hd->metric);
        goto fail;
    }
    if (!(parm = isx_format_find(file, ISX_SEC_PARAMS))) {
        rc = isx_error(ISX_EFORMAT, "HNSW index: the PARM section is missing");
        goto fail;
    }
    if ((rc = isx_params_decode(parm->data, parm->size, p, ISX_MAX_PARAMS, &np)) ||
        (rc = get_param(p, np, "M", 2, ISX_HNSW_MAX_M, &M)) ||
        (rc = get_param(p, np, "ef_construction", 1, ISX_HNSW_MAX_EF, &efc)) ||
        (rc = get_param(p, np, "ef_search", 1, ISX_HNSW_MAX_EF, &efs)) ||
        (rc = isx_params_get_int(p, np, "seed", &seed)) || (rc = isx_params_get_int(p, np, "rng", &rng)) ||
        (rc = get_param(p, np, "slots", 0, UINT32_MAX, &nslots)) ||
        (rc = get_param(p, np, "entry", -1, nslots - 1, &entry)) ||
        (rc = get_param(p, np, "max_level", -1, ISX_HNSW_MAX_LEVEL, &max_level)) ||
        (rc = get_param(p, np, "next_id", 0, INT64_MAX, &next_id)) ||
        (rc = get_param(p, np, "node_bytes", 1, INT64_MAX, &node_bytes)) ||
        (rc = get_param(p, np, "quant_ready", 0, 1, &quant_ready)) ||
        (rc = isx_params_get_float(p, np, "quant_mid", &qmid)) ||
        (rc = isx_params_get_float(p, np, "quant_scale", &qscale)))
        goto fail;
    for (uint32_t i = 0; i < np; i++) /* absent from files written before re-ranking existed */
        if (strcmp(p[i].key, "refine") == 0 && (rc = get_param(p, np, "refine", 0, 1, &refine)))
            goto fail;
    /* the header counts live slots: checked before anything is sized by it */
    if (hd->count > (uint64_t)nslots) {
        rc = isx_error(ISX_EFORMAT, "HNSW index: the header counts %llu vectors but the index has %lld slots",
                       (unsigned long long)hd->count, (long long)nslots);
        goto fail;
    }
    if (!isfinite(qmid) || !isfinite(qscale) || !(qscale > 0)) {
        rc = isx_error(ISX_EFORMAT, "HNSW index: bad int8 quantiser (mid %g, scale %g)", qmid, qscale);
        goto fail;
    }
    if ((rc = isx_hnsw_create((isx_metric)hd->metric, (size_t)hd->dim, (isx_dtype)hd->dtype, (size_t)M,
                              (size_t)efc, (uint64_t)seed, &h))) {
        rc = isx_error(ISX_EFORMAT, "HNSW index header: %s", isx_last_error());
        goto fail;
    }
    if ((size_t)node_bytes != h->node_bytes) {
        rc = isx_error(ISX_EFORMAT, "HNSW index: node size %lld, expected %zu for M=%lld and dim %llu",
                       (long long)node_bytes, h->node_bytes, (long long)M, (unsigned long long)hd->dim);
        goto fail;
    }
    size_t n = (size_t)nslots;
    if ((rc = isx_format_require(file, ISX_SEC_IDS, (uint64_t)n * 8, &ids)) ||
        (rc = isx_format_require(file, ISX_SEC_HNSW_LEVEL0, (uint64_t)n * h->node_bytes, &l0)) ||
        (rc = isx_format_require(file, ISX_SEC_HNSW_LEVELS, (uint64_t)n, &lv))) {
        rc = isx_error(ISX_EFORMAT, "HNSW index of %zu slots: %s", n, isx_last_error());
        goto fail;
    }
    if (!(up = isx_format_find(file, ISX_SEC_HNSW_UPPER))) {
        rc = isx_error(ISX_EFORMAT, "HNSW index: the HNUP section is missing");
        goto fail;
    }
    const isx_section_in *pm = isx_format_find(file, ISX_SEC_HNSW_PERM);
    if (pm && pm->size) {
        if (pm->size != h->dim * sizeof(uint32_t) || !h->bounded) {
            rc = isx_error(ISX_EFORMAT, "HNSW index: HNPM holds %llu bytes, expected 0%s",
                           (unsigned long long)pm->size, h->bounded ? " or 4 x dim" : "");
            goto fail;
        }
        uint8_t *seen = calloc(h->dim, 1);
        if (!seen || !(h->perm = malloc(h->dim * sizeof(uint32_t)))) {
            free(seen);
            rc = isx_error(ISX_ENOMEM, "cannot allocate the element order");
            goto fail;
        }
        memcpy(h->perm, pm->data, h->dim * sizeof(uint32_t));
        for (size_t i = 0; i < h->dim && rc == ISX_OK; i++) {
            if (h->perm[i] >= h->dim || seen[h->perm[i]])
                rc = isx_error(ISX_EFORMAT, "HNSW index: HNPM is not a permutation of 0..%zu", h->dim - 1);
            else
                seen[h->perm[i]] = 1;
        }
        free(seen);
        if (rc)
            goto fail;
    }
    const isx_section_in *rf = isx_format_find(file, ISX_SEC_HNSW_REFINE);
    uint64_t rf_bytes = refine ? (uint64_t)n * h->dim * sizeof(float) : 0;
    if (refine && h->dtype != ISX_DTYPE_F16 && h->dtype != ISX_DTYPE_I8) {
        rc = isx_error(ISX_EFORMAT, "HNSW index: refine rows beside %s storage", h->dtype == ISX_DTYPE_F32 ? "float32"
                                                                                                          : "bits");
        goto fail;
    }
    if ((rf ? rf->size : 0) != rf_bytes) {
        rc = isx_error(ISX_EFORMAT, "HNSW index: HNRF holds %llu bytes, expected %llu (%zu slots x dim %zu%s)",
                       (unsigned long long)(rf ? rf->size : 0), (unsigned long long)rf_bytes, n, h->dim,
                       refine ? " x 4" : ", no refine");
        goto fail;
    }
    h->ef_search = (size_t)efs;
    h->rng = (uint64_t)rng;
    h->quant_ready = (int)quant_ready;
    h->quant_mid = (float)qmid;
    h->quant_scale = (float)qscale;
    if ((rc = choose_kernel(h)))
        goto fail;
    /* Small per-slot arrays are copied; the level-0 block stays in the file. */
    h->capacity = n;
    h->levels = malloc(n ? n : 1);
    h->upper = calloc(n ? n : 1, sizeof(uint32_t *));
    h->ids = malloc((n ? n : 1) * sizeof(int64_t));
    h->free_slots = malloc((n ? n : 1) * sizeof(uint32_t));
    h->locks = calloc(n ? n : 1, sizeof(atomic_uchar));
    if (!h->levels || !h->upper || !h->ids || !h->free_slots || !h->locks ||
        (rc = isx_idmap_reserve(&h->map, (size_t)hd->count))) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate an index of %zu slots", n);
        goto fail;
    }
    h->nslots = n;
    memcpy(h->levels, lv->data, n);
    memcpy(h->ids, ids->data, n * sizeof(int64_t));
    size_t nup = 0;
    for (size_t s = 0; s < n; s++) {
        if (h->levels[s] > ISX_HNSW_MAX_LEVEL) {
            rc = isx_error(ISX_EFORMAT, "HNSW index: slot %zu has level %d, above the limit %d", s, h->levels[s],
                           ISX_HNSW_MAX_LEVEL);
            goto fail;
        }
        nup += (size_t)h->levels[s] * (h->M + 1);
    }
    if (up->size != (uint64_t)nup * sizeof(uint32_t)) {
        rc = isx_error(ISX_EFORMAT, "HNSW index: HNUP holds %llu bytes, the levels need %zu",
                       (unsigned long long)up->size, nup * sizeof(uint32_t));
        goto fail;
    }
    size_t o = 0;
    for (size_t s = 0; s < n; s++) {
        size_t m = (size_t)h->levels[s] * (h->M + 1);
        if (!m)
            continue;
        if (!(h->upper[s] = malloc(m * sizeof(uint32_t)))) {
            rc = isx_error(ISX_ENOMEM, "cannot allocate upper links");
            goto fail;
        }
        memcpy(h->upper[s], up->data + o * sizeof(uint32_t), m * sizeof(uint32_t));
        o += m;
    }
    for (size_t s = n; s-- > 0;) {
        int64_t id = h->ids[s];
        if (id < 0) {
            h->free_slots[h->nfree++] = (uint32_t)s;
        } else if (isx_idmap_get(&h->map, id) >= 0) {
            rc = isx_error(ISX_EFORMAT, "HNSW index: id %lld appears twice", (long long)id);
            goto fail;
        } else if (h->live >= hd->count) {
            rc = isx_error(ISX_EFORMAT, "HNSW index: more live slots than the %llu vectors the header counts",
                           (unsigned long long)hd->count);
            goto fail;
        } else {
            isx_idmap_put(&h->map, id, (int64_t)s);
            h->live++;
        }
        if (id >= 0 && id >= next_id)
            next_id = id == INT64_MAX ? id : id + 1;
    }
    if (h->live != hd->count) {
        rc = isx_error(ISX_EFORMAT, "HNSW index: %zu live slots, but the header counts %llu vectors", h->live,
                       (unsigned long long)hd->count);
        goto fail;
    }
    h->next_id = next_id;
    h->entry = entry;
    h->max_level = (int)max_level;
    h->level0 = (uint8_t *)l0->data;
    h->level0_owned = 0;
    h->refine = (int)refine;
    h->refine_rows = refine ? (float *)rf->data : NULL; /* sections are aligned: see format.h */
    h->refine_owned = 0;
    if ((rc = check_nolock(h))) {
        rc = isx_error(ISX_EFORMAT, "HNSW index: %s", isx_last_error());
        goto fail;
    }
    if (h->dtype == ISX_DTYPE_F32 || h->dtype == ISX_DTYPE_F16) {
        float *row = malloc(h->dim * sizeof(float));
        if (!row) {
            rc = isx_error(ISX_ENOMEM, "cannot allocate a row");
            goto fail;
        }
        for (size_t s = 0; s < n && rc == ISX_OK; s++) {
            if (h->ids[s] < 0)
                continue;
            decode(h, s, row);
            for (size_t i = 0; i < h->dim; i++)
                if (!isfinite(row[i])) {
                    rc = isx_error(ISX_EFORMAT, "HNSW index: the vector of slot %zu is not finite", s);
                    break;
                }
        }
        free(row);
        if (rc)
            goto fail;
    }
    for (size_t s = 0; h->refine && s < n; s++) {
        if (h->ids[s] < 0)
            continue;
        const float *row = h->refine_rows + s * h->dim;
        for (size_t i = 0; i < h->dim; i++)
            if (!isfinite(row[i])) {
                rc = isx_error(ISX_EFORMAT, "HNSW index: the re-ranking row of slot %zu is not finite", s);
                goto fail;
            }
    }
    h->file = file;
    isx_clear_error();
    *out = h;
    return ISX_OK;
fail:
    if (h) {
        h->level0 = NULL; /* the file's, closed below */
        h->level0_owned = 0;
        h->refine_rows = NULL;
        h->refine_owned = 0;
    }
    isx_hnsw_destroy(h);
    isx_format_close(file);
    free(file);
    return rc;
}
