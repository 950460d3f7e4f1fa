/*
 * kdtree.c -- KD-trees for exact k-NN and radius search, grown on add.
 *
 * The tree.  Each node splits its points at the median of the dimension in
 * which they spread most (so the depth is ceil(log2(n / leaf_size)) whatever
 * the data: duplicates and identical points cost nothing special).  Instead
 * of the split value an inner node stores two numbers: the largest
 * coordinate of its left child and the smallest of its right child along
 * the split dimension.  The gap between them is empty space, so both
 * children get a tighter box than a split plane gives, for free.  Nodes are
 * 16 bytes, in one array laid out depth-first: the left child is the next
 * node, and walking towards a leaf reads memory forwards.
 *
 * The search (Arya & Mount's incremental distance).  A query carries, per
 * dimension, its distance to the current cell's box (off[d]) and their sum
 * rd, a lower bound on the distance to any point of the cell.  Entering a
 * child changes one dimension only: off[d] becomes max(off[d], q[d] -
 * left_hi) or max(off[d], right_lo - q[d]), and rd changes by the difference
 * of the two terms -- O(1) per node instead of O(dim).  The child with the
 * smaller bound is visited first, depth first; a child is skipped when its
 * bound is not below the k-th best distance found so far (a bounded max-heap,
 * topk.h).  Bounds are multiplied by a slack just below 1 (KD_EXACT_SLACK)
 * so that float rounding in rd can never prune a true neighbour; with eps > 0
 * they are multiplied by (1 + eps)^p instead, which returns neighbours
 * within a factor (1 + eps) of the true ones, as scipy's cKDTree does.
 *
 * Storage.  A tree built over memory the index does not own (a caller's
 * array from from_array(copy=False), a loaded file) keeps a permutation:
 * leaf scans read rows through it and the caller's array is never copied
 * nor written.  A tree built from rows the index copied anyway (add,
 * from_array(copy=True), merges) stores them in tree order, so a leaf is
 * one contiguous block and scans need no indirection.  Leaf scans are
 * specialised per dimension for d <= 16 (the loops the compiler can unroll
 * and vectorise), generic above; from d = 8 on, where a row fills a vector
 * register, CPUs with AVX2 scan eight rows at a time instead
 * (simd/kdleaf_avx2.c), with lanes summed in an order that does not depend
 * on a row's slot.
 *
 * Dynamic add (the logarithmic method of Bentley & Saxe).  New rows go to a
 * buffer searched by brute force.  When it holds KD_BUFFER_MAX rows, they
 * become a new tree together with the smallest trees of the forest whose
 * size is at most twice what has been gathered so far; trees therefore
 * shrink geometrically along the list, a forest of n points has O(log n)
 * trees, and each point is rebuilt O(log n) times over its life.  Search
 * visits the buffer first, then the trees largest first, all feeding one
 * heap, so the answer is exact whatever the forest looks like.
 *
 * Batches of queries.  A batch is cut into blocks of KD_QUERY_BLOCK queries
 * that the workers take in turn (parallel over queries; the trees are only
 * read).  Big batches are first put in the order of the cell, KD_ORDER_DEPTH
 * levels down the largest tree, that each query falls in, so that
 * consecutive queries walk the same nodes and rows while they are in cache;
 * the cells are found in parallel and sorted by a radix sort, because any
 * serial pass before the search caps its speed-up on more threads.  Each
 * worker's scratch (the per-dimension offsets, the heap) is allocated once
 * per batch, on cache lines of its own.
 *
 * Remove marks a point dead (a bitmap per tree; buffer rows are swapped
 * out).  A tree more than half dead is rebuilt from its live points.
 *
 * Ids.  Points carry int64 ids in tree order; the heap keys on ids, so ties
 * are broken by the lower id, like FlatIndex's lower slot.  The id -> place
 * map is built lazily (only remove, get, re-adding an id and id filters need
 * it), which keeps it out of the build time.
 *
 * Serialisation writes the live vectors and ids (PARM, VECS, IDS) and the
 * loader rebuilds the trees over the file's vectors in place: the build is
 * fast (faster than reading a tree would be to validate as hostile input),
 * and no tree structure from a file is ever trusted.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "../common/idmap.h"
#include "../common/rows.h"
#include "../simd/simd.h"
#include "kdtree.h"
#include "../common/topk.h"

#define KD_LEAF UINT32_MAX               /* node.dim of a leaf */
#define KD_MAX_TREE_POINTS (UINT32_MAX - 1) /* positions and node indexes are uint32 */
#define KD_MAX_TREES 48                  /* geometric sizes: ~31 trees reach ISX_MAX_COUNT */
#define KD_BUFFER_TREE KD_MAX_TREES      /* tree number of the add buffer in a location */
#define KD_LOC_SHIFT 40                  /* location = tree << 40 | position */
#define KD_BUFFER_MAX 512                /* rows searched by brute force before a merge */
#define KD_MERGE_RATIO 2                 /* absorb trees up to twice the gathered size */
#define KD_EXACT_SLACK 0.99998f          /* bounds shrink by more than float rounding in rd */
#define KD_QUERY_BLOCK 32                /* queries per parallel task */
#define KD_SUBSET_RATIO 16               /* filter allows < count/16: scan only those */
#define KD_SUBSET_CHUNK 256              /* allowed rows per distance scan (stack buffer) */
#define KD_PARALLEL_MIN_POINTS 65536     /* smaller trees are built on one thread */
#define KD_SORT_MIN_QUERIES 256          /* fewer queries run in the caller's order */
#define KD_ORDER_DEPTH 10                /* queries are grouped by cells this deep (<= 1024 cells) */
#define KD_RADIX_BITS 11                 /* query-order sort: 2048 buckets (16 KiB) a pass */
#define KD_RADIX_BUCKETS ((size_t)1 << KD_RADIX_BITS)
#define KD_CACHE_LINE 64                 /* per-worker scratch is padded to this */
#define KD_ORDER_BLOCK 1024              /* queries per parallel task when ordering */

typedef struct {
    union {
        struct { float left_hi, right_lo; } in; /* inner: child extents along dim */
        struct { uint32_t start, end; } leaf;   /* leaf: tree positions [start, end) */
    } u;
    uint32_t dim;   /* split dimension, or KD_LEAF */
    uint32_t right; /* inner: index of the right child (the left one is next) */
} kd_node;

typedef struct {
    size_t n, ndead;
    const float *rows;   /* perm ? rows[perm[pos]] : rows[pos] */
    float *owned;        /* rows, when the tree owns them (then perm == NULL) */
    uint32_t *perm;
    int64_t *ids;        /* per position */
    uint64_t *dead;      /* bitmap over positions; NULL while none is dead */
    kd_node *nodes;
    size_t nnodes;
    float *lo, *hi;      /* bounding box of all points */
} kd_tree;

struct isx_kdtree {
    isx_metric metric;
    size_t dim, leaf_size;
    kd_tree *trees[KD_MAX_TREES];
    size_t ntrees;
    float *buf;          /* add buffer: nbuf rows */
    int64_t *buf_ids;
    size_t nbuf, buf_cap;
    size_t count;        /* live points */
    int64_t next_id;
    isx_idmap map;       /* id -> location, valid while map_ready */
    atomic_int map_ready;
    pthread_mutex_t map_lock; /* readers building the map */
    isx_file *file;      /* the loaded file whose vectors a tree reads */
    isx_kd_fn kern_dists;           /* the leaf kernels of the table (chosen once, at create) */
    isx_kd_ptrs_fn kern_dists_ptrs;
    pthread_rwlock_t lock;
};

static inline const float *tree_row(const kd_tree *t, size_t dim, size_t pos)
{
    return t->rows + (t->perm ? (size_t)t->perm[pos] : pos) * dim;
}

static inline int bit_get(const uint64_t *bits, size_t i)
{
    return (int)((bits[i >> 6] >> (i & 63)) & 1);
}

static inline void bit_set(uint64_t *bits, size_t i)
{
    bits[i >> 6] |= (uint64_t)1 << (i & 63);
}

/* ======================================================================
 * Building one tree
 * ====================================================================== */

/* Nodes of a subtree of m points: 1 for a leaf, else 1 + left + right with
 * floor(m/2) and ceil(m/2) points.  Both sizes at one depth are within one
 * of each other, so (nodes(a), nodes(a+1)) follows from (nodes(a/2),
 * nodes(a/2+1)): O(log m). */
static void node_pair(size_t a, size_t leaf, size_t *na, size_t *na1)
{
    if (a + 1 <= leaf) {
        *na = *na1 = 1;
        return;
    }
    size_t b = a / 2, nb, nb1;
    node_pair(b, leaf, &nb, &nb1);
#define KD_NODES_OF(x) ((x) == b ? nb : nb1)
    *na = a <= leaf ? 1 : 1 + KD_NODES_OF(a / 2) + KD_NODES_OF(a - a / 2);
    *na1 = 1 + KD_NODES_OF((a + 1) / 2) + KD_NODES_OF(a + 1 - (a + 1) / 2);
#undef KD_NODES_OF
}

static size_t node_count(size_t m, size_t leaf)
{
    size_t na, na1;
    node_pair(m, leaf, &na, &na1);
    return na;
}

typedef struct {
    float *work;         /* the rows, partitioned in place along with perm */
    size_t dim, leaf;
    uint32_t *perm;
    kd_node *nodes;
    /* parallel build: subtrees left for the workers */
    size_t *task_start, *task_end;
    uint32_t *task_node;
    size_t ntasks;
    float **scratch;     /* per worker: 2 * dim floats */
} build_ctx;

static inline void swap_rows(float *work, uint32_t *perm, size_t dim, ptrdiff_t i, ptrdiff_t j)
{
    float *a = work + (size_t)i * dim, *b = work + (size_t)j * dim;
    for (size_t u = 0; u < dim; u++) {
        float t = a[u];
        a[u] = b[u];
        b[u] = t;
    }
    uint32_t tp = perm[i];
    perm[i] = perm[j];
    perm[j] = tp;
}

/* Put the row with the kth smallest coordinate d at kth, smaller ones
 * before and larger after (Hoare partition around a median of three; equal
 * keys stop both scans, so runs of duplicates split evenly).  Rows move
 * with their permutation entries, so every pass reads memory in order. */
static void select_rows(float *work, uint32_t *perm, size_t dim, size_t d, ptrdiff_t n, ptrdiff_t kth)
{
    ptrdiff_t lo = 0, hi = n - 1;
#define KD_KEY(i) work[(size_t)(i) * dim + d]
    while (hi > lo) {
        float a = KD_KEY(lo), b = KD_KEY(lo + (hi - lo) / 2), c = KD_KEY(hi);
        float pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        ptrdiff_t i = lo, j = hi;
        while (i <= j) {
            while (KD_KEY(i) < pivot)
                i++;
            while (KD_KEY(j) > pivot)
                j--;
            if (i <= j) {
                swap_rows(work, perm, dim, i, j);
                i++;
                j--;
            }
        }
        if (kth <= j)
            hi = j;
        else if (kth >= i)
            lo = i;
        else
            break;
    }
#undef KD_KEY
}

/* Bounding box of rows [s, e) into lo/hi; returns the widest dimension. */
static uint32_t widest_dim(const float *work, size_t dim, size_t s, size_t e, float *lo, float *hi)
{
    const float *first = work + s * dim;
    memcpy(lo, first, dim * sizeof(float));
    memcpy(hi, first, dim * sizeof(float));
    for (size_t i = s + 1; i < e; i++) {
        const float *x = work + i * dim;
        for (size_t j = 0; j < dim; j++) {
            lo[j] = x[j] < lo[j] ? x[j] : lo[j];
            hi[j] = x[j] > hi[j] ? x[j] : hi[j];
        }
    }
    uint32_t best = 0;
    float spread = hi[0] - lo[0];
    for (size_t j = 1; j < dim; j++) {
        if (hi[j] - lo[j] > spread) {
            spread = hi[j] - lo[j];
            best = (uint32_t)j;
        }
    }
    return best;
}

/* Split the inner node over [s, e) at its median; returns the middle. */
static size_t split_node(build_ctx *b, size_t s, size_t e, kd_node *nd, float *scratch)
{
    size_t dim = b->dim;
    uint32_t d = widest_dim(b->work, dim, s, e, scratch, scratch + dim);
    size_t half = (e - s) / 2, mid = s + half;
    select_rows(b->work + s * dim, b->perm + s, dim, d, (ptrdiff_t)(e - s), (ptrdiff_t)half);
    float left_hi = b->work[s * dim + d];
    for (size_t i = s + 1; i < mid; i++) {
        float v = b->work[i * dim + d];
        left_hi = v > left_hi ? v : left_hi;
    }
    nd->dim = d;
    nd->u.in.left_hi = left_hi;
    nd->u.in.right_lo = b->work[mid * dim + d];
    return mid;
}

/* Build the subtree over [s, e) at node ni; returns the next free node. */
static uint32_t build_subtree(build_ctx *b, size_t s, size_t e, uint32_t ni, float *scratch)
{
    kd_node *nd = &b->nodes[ni];
    if (e - s <= b->leaf) {
        nd->dim = KD_LEAF;
        nd->right = 0;
        nd->u.leaf.start = (uint32_t)s;
        nd->u.leaf.end = (uint32_t)e;
        return ni + 1;
    }
    size_t mid = split_node(b, s, e, nd, scratch);
    uint32_t right = build_subtree(b, s, mid, ni + 1, scratch);
    nd->right = right;
    return build_subtree(b, mid, e, right, scratch);
}

/* The top `levels` levels on this thread; below them, subtrees become tasks
 * (their first node is known in advance from node_count). */
static void build_top(build_ctx *b, size_t s, size_t e, uint32_t ni, int levels, float *scratch)
{
    if (levels == 0 || e - s <= b->leaf) {
        b->task_start[b->ntasks] = s;
        b->task_end[b->ntasks] = e;
        b->task_node[b->ntasks++] = ni;
        return;
    }
    kd_node *nd = &b->nodes[ni];
    size_t mid = split_node(b, s, e, nd, scratch);
    nd->right = ni + 1 + (uint32_t)node_count(mid - s, b->leaf);
    build_top(b, s, mid, ni + 1, levels - 1, scratch);
    build_top(b, mid, e, nd->right, levels - 1, scratch);
}

static int build_task(void *ctx, size_t task, int worker)
{
    build_ctx *b = ctx;
    build_subtree(b, b->task_start[task], b->task_end[task], b->task_node[task], b->scratch[worker]);
    return ISX_OK;
}

static void tree_free(kd_tree *t)
{
    if (!t)
        return;
    free(t->owned);
    free(t->perm);
    free(t->ids);
    free(t->dead);
    free(t->nodes);
    free(t->lo);
    free(t);
}

/* A tree over n rows (n >= 1): perm, nodes and the box.  With in_place the
 * rows themselves are reordered into tree order (perm says where each came
 * from); otherwise they are only read, through a temporary working copy
 * that keeps every pass of the build sequential in memory. */
static int tree_build(float *rows, int in_place, size_t n, size_t dim, size_t leaf, int nthreads, kd_tree **out)
{
    *out = NULL;
    if (n > KD_MAX_TREE_POINTS)
        return isx_error(ISX_EINVAL, "a KD-tree holds at most %u points per tree, found %zu",
                         (unsigned)KD_MAX_TREE_POINTS, n);
    int rc = ISX_OK;
    build_ctx b;
    memset(&b, 0, sizeof(b));
    int levels = 0;
    if (nthreads > 1 && n >= KD_PARALLEL_MIN_POINTS)
        while ((1 << levels) < 4 * nthreads && levels < 12)
            levels++;
    int nscratch = nthreads > 1 ? nthreads : 1;
    kd_tree *t = calloc(1, sizeof(*t));
    if (!t)
        return isx_error(ISX_ENOMEM, "cannot allocate a KD-tree");
    t->n = n;
    t->rows = rows;
    t->nnodes = node_count(n, leaf);
    t->perm = malloc(n * sizeof(uint32_t));
    t->nodes = malloc(t->nnodes * sizeof(kd_node));
    t->lo = malloc(2 * dim * sizeof(float));
    b.work = in_place ? rows : malloc(n * dim * sizeof(float));
    b.scratch = calloc((size_t)nscratch, sizeof(float *));
    size_t maxtasks = (size_t)1 << levels;
    b.task_start = malloc(maxtasks * sizeof(size_t));
    b.task_end = malloc(maxtasks * sizeof(size_t));
    b.task_node = malloc(maxtasks * sizeof(uint32_t));
    if (!t->perm || !t->nodes || !t->lo || !b.work || !b.scratch || !b.task_start || !b.task_end || !b.task_node) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate a KD-tree over %zu points", n);
        goto cleanup;
    }
    for (int w = 0; w < nscratch; w++) {
        if (!(b.scratch[w] = malloc(2 * dim * sizeof(float)))) {
            rc = isx_error(ISX_ENOMEM, "cannot allocate build scratch");
            goto cleanup;
        }
    }
    if (!in_place)
        memcpy(b.work, rows, n * dim * sizeof(float));
    t->hi = t->lo + dim;
    for (size_t i = 0; i < n; i++)
        t->perm[i] = (uint32_t)i;
    b.dim = dim;
    b.leaf = leaf;
    b.perm = t->perm;
    b.nodes = t->nodes;
    widest_dim(b.work, dim, 0, n, t->lo, t->hi);
    if (levels == 0) {
        build_subtree(&b, 0, n, 0, b.scratch[0]);
    } else {
        build_top(&b, 0, n, 0, levels, b.scratch[0]);
        rc = isx_parallel_for(nthreads, b.ntasks, build_task, &b);
    }
cleanup:
    if (b.scratch)
        for (int w = 0; w < nscratch; w++)
            free(b.scratch[w]);
    free(b.scratch);
    if (!in_place)
        free(b.work);
    free(b.task_start);
    free(b.task_end);
    free(b.task_node);
    if (rc) {
        tree_free(t);
        return rc;
    }
    *out = t;
    return ISX_OK;
}

/* A tree that owns `rows` and `ids` (n >= 1, taken over on success), stored
 * in tree order.  On failure nothing has changed (the build cannot fail
 * once its memory is allocated). */
static int tree_build_owned(float *rows, int64_t *ids, size_t n, size_t dim, size_t leaf, int nthreads,
                            kd_tree **out)
{
    kd_tree *t;
    int64_t *oids = malloc(n * sizeof(int64_t));
    if (!oids)
        return isx_error(ISX_ENOMEM, "cannot allocate ids for %zu points", n);
    int rc = tree_build(rows, 1, n, dim, leaf, nthreads, &t);
    if (rc) {
        free(oids);
        return rc;
    }
    for (size_t i = 0; i < n; i++)
        oids[i] = ids[t->perm[i]];
    free(ids);
    free(t->perm);
    t->perm = NULL;
    t->owned = rows;
    t->ids = oids;
    *out = t;
    return ISX_OK;
}

/* ======================================================================
 * Life cycle, validation, the id map
 * ====================================================================== */

int isx_kdtree_create(isx_metric metric, size_t dim, size_t leaf_size, isx_kdtree **out)
{
    *out = NULL;
    if (metric != ISX_METRIC_L2 && metric != ISX_METRIC_L1)
        return isx_error(ISX_EINVAL, "KDTreeIndex supports metric \"l2\" or \"l1\", found \"%s\"",
                         isx_metric_name(metric));
    if (dim < 1 || dim > ISX_MAX_DIM)
        return isx_error(ISX_EINVAL, "expected 1 <= dim <= %u, found dim=%zu", ISX_MAX_DIM, dim);
    if (leaf_size < 1 || leaf_size > ISX_KDTREE_MAX_LEAF_SIZE)
        return isx_error(ISX_EINVAL, "expected 1 <= leaf_size <= %d, found leaf_size=%zu",
                         ISX_KDTREE_MAX_LEAF_SIZE, leaf_size);
    isx_kdtree *kd = calloc(1, sizeof(*kd));
    if (!kd)
        return isx_error(ISX_ENOMEM, "cannot allocate an index");
    kd->metric = metric;
    kd->dim = dim;
    kd->leaf_size = leaf_size;
#if defined(__x86_64__)
    kd->kern_dists = isx_kernels_active()->kd_dists;
    kd->kern_dists_ptrs = isx_kernels_active()->kd_dists_ptrs;
#endif
    isx_idmap_init(&kd->map);
    atomic_init(&kd->map_ready, 1); /* an empty index has a complete (empty) map */
    if (pthread_rwlock_init(&kd->lock, NULL) != 0) {
        free(kd);
        return isx_error(ISX_ENOMEM, "cannot create the index lock");
    }
    if (pthread_mutex_init(&kd->map_lock, NULL) != 0) {
        pthread_rwlock_destroy(&kd->lock);
        free(kd);
        return isx_error(ISX_ENOMEM, "cannot create the index lock");
    }
    *out = kd;
    return ISX_OK;
}

void isx_kdtree_destroy(isx_kdtree *kd)
{
    if (!kd)
        return;
    for (size_t i = 0; i < kd->ntrees; i++)
        tree_free(kd->trees[i]);
    free(kd->buf);
    free(kd->buf_ids);
    isx_idmap_free(&kd->map);
    if (kd->file) {
        isx_format_close(kd->file);
        free(kd->file);
    }
    pthread_mutex_destroy(&kd->map_lock);
    pthread_rwlock_destroy(&kd->lock);
    free(kd);
}

size_t isx_kdtree_dim(const isx_kdtree *kd) { return kd->dim; }
size_t isx_kdtree_leaf_size(const isx_kdtree *kd) { return kd->leaf_size; }
isx_metric isx_kdtree_metric(const isx_kdtree *kd) { return kd->metric; }

size_t isx_kdtree_count(isx_kdtree *kd)
{
    pthread_rwlock_rdlock(&kd->lock);
    size_t n = kd->count;
    pthread_rwlock_unlock(&kd->lock);
    return n;
}

size_t isx_kdtree_memory(isx_kdtree *kd)
{
    pthread_rwlock_rdlock(&kd->lock);
    size_t bytes = sizeof(*kd) + kd->buf_cap * (kd->dim * sizeof(float) + sizeof(int64_t));
    for (size_t i = 0; i < kd->ntrees; i++) {
        const kd_tree *t = kd->trees[i];
        bytes += sizeof(*t) + t->nnodes * sizeof(kd_node) + t->n * sizeof(int64_t) + 2 * kd->dim * sizeof(float);
        bytes += t->owned ? t->n * kd->dim * sizeof(float) : 0;
        bytes += t->perm ? t->n * sizeof(uint32_t) : 0;
        bytes += t->dead ? (t->n / 64 + 1) * sizeof(uint64_t) : 0;
    }
    bytes += kd->map.keys ? (kd->map.mask + 1) * 2 * sizeof(int64_t) : 0;
    pthread_rwlock_unlock(&kd->lock);
    return bytes;
}

static int borrows_nolock(const isx_kdtree *kd)
{
    for (size_t i = 0; i < kd->ntrees; i++)
        if (!kd->trees[i]->owned)
            return 1;
    return 0;
}

int isx_kdtree_borrows(isx_kdtree *kd)
{
    pthread_rwlock_rdlock(&kd->lock);
    int b = borrows_nolock(kd);
    pthread_rwlock_unlock(&kd->lock);
    return b;
}

static inline int64_t loc_make(size_t tree, size_t pos)
{
    return (int64_t)(((uint64_t)tree << KD_LOC_SHIFT) | (uint64_t)pos);
}

/* Record the places of tree `ti`'s live points (or of the buffer's rows). */
static void map_tree(isx_kdtree *kd, size_t ti)
{
    const kd_tree *t = kd->trees[ti];
    for (size_t p = 0; p < t->n; p++)
        if (!t->dead || !bit_get(t->dead, p))
            isx_idmap_put(&kd->map, t->ids[p], loc_make(ti, p)); /* cannot fail: reserved */
}

/* Make the id map valid.  Under the write lock, or the read lock (readers
 * serialise on map_lock; writers never run beside them). */
static int ensure_map(isx_kdtree *kd)
{
    if (atomic_load_explicit(&kd->map_ready, memory_order_acquire))
        return ISX_OK;
    int rc = ISX_OK;
    pthread_mutex_lock(&kd->map_lock);
    if (!atomic_load_explicit(&kd->map_ready, memory_order_relaxed)) {
        isx_idmap_clear(&kd->map);
        if ((rc = isx_idmap_reserve(&kd->map, kd->count)) == ISX_OK) {
            for (size_t ti = 0; ti < kd->ntrees; ti++)
                map_tree(kd, ti);
            for (size_t p = 0; p < kd->nbuf; p++)
                isx_idmap_put(&kd->map, kd->buf_ids[p], loc_make(KD_BUFFER_TREE, p));
            atomic_store_explicit(&kd->map_ready, 1, memory_order_release);
        }
    }
    pthread_mutex_unlock(&kd->map_lock);
    return rc;
}

/* ======================================================================
 * Add, borrow, merge, remove, get
 * ====================================================================== */

static size_t tree_live(const kd_tree *t) { return t->n - t->ndead; }

/* Copy tree t's live points to rows/ids; returns how many. */
static size_t tree_gather_live(const kd_tree *t, size_t dim, float *rows, int64_t *ids)
{
    size_t w = 0;
    for (size_t p = 0; p < t->n; p++) {
        if (t->dead && bit_get(t->dead, p))
            continue;
        memcpy(rows + w * dim, tree_row(t, dim, p), dim * sizeof(float));
        ids[w++] = t->ids[p];
    }
    return w;
}

/* Drop tree ti from the list, moving later trees down (their map entries
 * follow). */
static void forest_drop(isx_kdtree *kd, size_t ti)
{
    tree_free(kd->trees[ti]);
    for (size_t j = ti + 1; j < kd->ntrees; j++)
        kd->trees[j - 1] = kd->trees[j];
    kd->ntrees--;
    if (atomic_load_explicit(&kd->map_ready, memory_order_relaxed))
        for (size_t j = ti; j < kd->ntrees; j++)
            map_tree(kd, j);
}

/* Turn the buffer, with the small trees at the end of the list, into one
 * tree.  On failure nothing has changed. */
static int forest_merge(isx_kdtree *kd, int nthreads)
{
    size_t gathered = kd->nbuf, first = kd->ntrees;
    while (first > 0 && (tree_live(kd->trees[first - 1]) <= KD_MERGE_RATIO * gathered || first >= KD_MAX_TREES)) {
        gathered += tree_live(kd->trees[first - 1]);
        first--;
    }
    if (gathered == 0)
        return ISX_OK;
    float *rows;
    int64_t *ids;
    int took_buffer = first == kd->ntrees;
    if (took_buffer) {
        /* only the buffer: the tree takes its arrays over */
        rows = kd->buf;
        ids = kd->buf_ids;
    } else {
        size_t bytes;
        int rc = isx_mul_size(gathered, kd->dim * sizeof(float), &bytes, "merged KD-tree");
        if (rc)
            return rc;
        rows = malloc(bytes ? bytes : 1);
        ids = malloc(gathered * sizeof(int64_t));
        if (!rows || !ids) {
            free(rows);
            free(ids);
            return isx_error(ISX_ENOMEM, "cannot allocate %zu bytes to merge KD-trees", bytes);
        }
        size_t w = 0;
        for (size_t ti = first; ti < kd->ntrees; ti++)
            w += tree_gather_live(kd->trees[ti], kd->dim, rows + w * kd->dim, ids + w);
        memcpy(rows + w * kd->dim, kd->buf, kd->nbuf * kd->dim * sizeof(float));
        memcpy(ids + w, kd->buf_ids, kd->nbuf * sizeof(int64_t));
    }
    kd_tree *t;
    int rc = tree_build_owned(rows, ids, gathered, kd->dim, kd->leaf_size, nthreads, &t);
    if (rc) {
        if (!took_buffer) {
            free(rows);
            free(ids);
        }
        return rc;
    }
    if (took_buffer) {
        kd->buf = NULL;   /* freed by tree_build_owned */
        kd->buf_ids = NULL;
        kd->buf_cap = 0;
    }
    kd->nbuf = 0;
    for (size_t ti = first; ti < kd->ntrees; ti++)
        tree_free(kd->trees[ti]);
    kd->trees[first] = t;
    kd->ntrees = first + 1;
    if (atomic_load_explicit(&kd->map_ready, memory_order_relaxed))
        map_tree(kd, first);
    return ISX_OK;
}

/* Rebuild tree ti from its live points (after many removals). */
static int forest_compact(isx_kdtree *kd, size_t ti, int nthreads)
{
    kd_tree *old = kd->trees[ti];
    size_t live = tree_live(old);
    if (live == 0) {
        forest_drop(kd, ti);
        return ISX_OK;
    }
    float *rows = malloc(live * kd->dim * sizeof(float));
    int64_t *ids = malloc(live * sizeof(int64_t));
    if (!rows || !ids) {
        free(rows);
        free(ids);
        return isx_error(ISX_ENOMEM, "cannot allocate %zu points to compact a KD-tree", live);
    }
    tree_gather_live(old, kd->dim, rows, ids);
    kd_tree *t;
    int rc = tree_build_owned(rows, ids, live, kd->dim, kd->leaf_size, nthreads, &t);
    if (rc) {
        free(rows);
        free(ids);
        return rc;
    }
    tree_free(old);
    kd->trees[ti] = t;
    if (atomic_load_explicit(&kd->map_ready, memory_order_relaxed))
        map_tree(kd, ti);
    return ISX_OK;
}

static int buffer_reserve(isx_kdtree *kd, size_t need)
{
    if (need <= kd->buf_cap)
        return ISX_OK;
    size_t cap = kd->buf_cap + kd->buf_cap / 2;
    if (cap < need)
        cap = need;
    if (cap < KD_BUFFER_MAX)
        cap = KD_BUFFER_MAX;
    size_t bytes;
    int rc = isx_mul_size(cap, kd->dim * sizeof(float), &bytes, "KD-tree add buffer");
    if (rc)
        return rc;
    float *b = realloc(kd->buf, bytes);
    if (!b)
        return isx_error(ISX_ENOMEM, "cannot allocate %zu bytes for added vectors", bytes);
    kd->buf = b;
    int64_t *ids = realloc(kd->buf_ids, cap * sizeof(int64_t));
    if (!ids)
        return isx_error(ISX_ENOMEM, "cannot allocate ids for %zu added vectors", cap);
    kd->buf_ids = ids;
    kd->buf_cap = cap;
    return ISX_OK;
}

/* Forget the point at location loc (the map entry is the caller's). */
static void forget_nolock(isx_kdtree *kd, int64_t loc)
{
    size_t ti = (size_t)((uint64_t)loc >> KD_LOC_SHIFT);
    size_t pos = (size_t)((uint64_t)loc & (((uint64_t)1 << KD_LOC_SHIFT) - 1));
    if (ti == KD_BUFFER_TREE) {
        size_t last = kd->nbuf - 1;
        if (pos != last) {
            memcpy(kd->buf + pos * kd->dim, kd->buf + last * kd->dim, kd->dim * sizeof(float));
            kd->buf_ids[pos] = kd->buf_ids[last];
            isx_idmap_put(&kd->map, kd->buf_ids[pos], loc_make(KD_BUFFER_TREE, pos));
        }
        kd->nbuf--;
    } else {
        kd_tree *t = kd->trees[ti];
        bit_set(t->dead, pos);
        t->ndead++;
    }
    kd->count--;
}

/* Dead bitmaps for every tree (allocated before anything is marked). */
static int reserve_dead(isx_kdtree *kd)
{
    for (size_t ti = 0; ti < kd->ntrees; ti++) {
        kd_tree *t = kd->trees[ti];
        if (!t->dead && !(t->dead = calloc(t->n / 64 + 1, sizeof(uint64_t))))
            return isx_error(ISX_ENOMEM, "cannot allocate a removal bitmap");
    }
    return ISX_OK;
}

/* Rebuild every tree that is more than half dead. */
static int compact_all(isx_kdtree *kd, int nthreads)
{
    for (size_t ti = kd->ntrees; ti-- > 0;) {
        kd_tree *t = kd->trees[ti];
        if (t->ndead * 2 > t->n) {
            int rc = forest_compact(kd, ti, nthreads);
            if (rc)
                return rc;
        }
    }
    return ISX_OK;
}

int isx_kdtree_add(isx_kdtree *kd, const float *X, size_t n, const int64_t *ids, int nthreads)
{
    int rc = isx_check_finite(X, n, kd->dim, "added vectors");
    if (rc || (ids && (rc = isx_check_ids(ids, n))))
        return rc;
    nthreads = isx_resolve_threads(nthreads);
    pthread_rwlock_wrlock(&kd->lock);
    if ((uint64_t)kd->count + n > ISX_MAX_COUNT) {
        rc = isx_error(ISX_EINVAL, "an index holds at most %llu vectors", (unsigned long long)ISX_MAX_COUNT);
        goto cleanup;
    }
    if (!ids && kd->next_id > INT64_MAX - (int64_t)n) {
        rc = isx_error(ISX_EINVAL, "default ids would overflow int64: pass ids explicitly");
        goto cleanup;
    }
    if (kd->count == 0) {
        /* a first add builds the map lazily, like borrow: not while building */
        isx_idmap_clear(&kd->map);
        atomic_store_explicit(&kd->map_ready, 0, memory_order_relaxed);
    }
    int track = atomic_load_explicit(&kd->map_ready, memory_order_relaxed);
    if (ids && !track && kd->count > 0) { /* replacing needs to find the ids */
        if ((rc = ensure_map(kd)))
            goto cleanup;
        track = 1;
    }
    if ((rc = buffer_reserve(kd, kd->nbuf + n)) || (ids && (rc = reserve_dead(kd))) ||
        (track && (rc = isx_idmap_reserve(&kd->map, kd->count + n))))
        goto cleanup;
    /* nothing can fail from here until the merge */
    if (ids && track) {
        for (size_t i = 0; i < n; i++) {
            int64_t loc = isx_idmap_get(&kd->map, ids[i]);
            if (loc >= 0) {
                isx_idmap_del(&kd->map, ids[i]);
                forget_nolock(kd, loc);
            }
        }
    }
    memcpy(kd->buf + kd->nbuf * kd->dim, X, n * kd->dim * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        int64_t id = ids ? ids[i] : kd->next_id + (int64_t)i;
        kd->buf_ids[kd->nbuf + i] = id;
        if (track)
            isx_idmap_put(&kd->map, id, loc_make(KD_BUFFER_TREE, kd->nbuf + i));
        if (ids && id >= kd->next_id)
            kd->next_id = id == INT64_MAX ? INT64_MAX : id + 1;
    }
    if (!ids)
        kd->next_id += (int64_t)n;
    kd->nbuf += n;
    kd->count += n;
    /* The rows are in: a failed rebuild below leaves a correct (if slower)
     * index, and reports the failure. */
    if (kd->nbuf >= KD_BUFFER_MAX)
        rc = forest_merge(kd, nthreads);
    if (rc == ISX_OK && ids)
        rc = compact_all(kd, nthreads);
cleanup:
    pthread_rwlock_unlock(&kd->lock);
    return rc;
}

int isx_kdtree_borrow(isx_kdtree *kd, const float *data, size_t n, const int64_t *ids, int nthreads)
{
    int rc = isx_check_finite(data, n, kd->dim, "vectors");
    if (rc || (ids && (rc = isx_check_ids(ids, n))))
        return rc;
    nthreads = isx_resolve_threads(nthreads);
    pthread_rwlock_wrlock(&kd->lock);
    if (kd->count != 0 || kd->ntrees != 0 || kd->nbuf != 0) {
        rc = isx_error(ISX_EINVAL, "building over an array needs an empty index, this one holds %zu vectors",
                       kd->count);
        goto cleanup;
    }
    if (n == 0)
        goto cleanup;
    kd_tree *t;
    if ((rc = tree_build((float *)data, 0, n, kd->dim, kd->leaf_size, nthreads, &t)))
        goto cleanup;
    if (!(t->ids = malloc(n * sizeof(int64_t)))) {
        tree_free(t);
        rc = isx_error(ISX_ENOMEM, "cannot allocate ids for %zu points", n);
        goto cleanup;
    }
    int64_t next = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t id = ids ? ids[t->perm[i]] : (int64_t)t->perm[i];
        t->ids[i] = id;
        next = id >= next ? (id == INT64_MAX ? INT64_MAX : id + 1) : next;
    }
    kd->trees[0] = t;
    kd->ntrees = 1;
    kd->count = n;
    kd->next_id = next;
    isx_idmap_clear(&kd->map);
    atomic_store_explicit(&kd->map_ready, 0, memory_order_relaxed);
cleanup:
    pthread_rwlock_unlock(&kd->lock);
    return rc;
}

int isx_kdtree_remove(isx_kdtree *kd, const int64_t *ids, size_t n, size_t *removed)
{
    *removed = 0;
    pthread_rwlock_wrlock(&kd->lock);
    int rc;
    if ((rc = ensure_map(kd)) || (rc = reserve_dead(kd)))
        goto cleanup;
    for (size_t i = 0; i < n; i++) {
        int64_t loc = isx_idmap_get(&kd->map, ids[i]);
        if (loc >= 0) {
            isx_idmap_del(&kd->map, ids[i]);
            forget_nolock(kd, loc);
            (*removed)++;
        }
    }
    rc = compact_all(kd, isx_resolve_threads(0));
cleanup:
    pthread_rwlock_unlock(&kd->lock);
    return rc;
}

static const float *row_at(const isx_kdtree *kd, int64_t loc)
{
    size_t ti = (size_t)((uint64_t)loc >> KD_LOC_SHIFT);
    size_t pos = (size_t)((uint64_t)loc & (((uint64_t)1 << KD_LOC_SHIFT) - 1));
    if (ti == KD_BUFFER_TREE)
        return kd->buf + pos * kd->dim;
    return tree_row(kd->trees[ti], kd->dim, pos);
}

int isx_kdtree_get(isx_kdtree *kd, const int64_t *ids, size_t n, float *out)
{
    pthread_rwlock_rdlock(&kd->lock);
    int rc = ensure_map(kd);
    for (size_t i = 0; rc == ISX_OK && i < n; i++) {
        int64_t loc = isx_idmap_get(&kd->map, ids[i]);
        if (loc < 0)
            rc = isx_error(ISX_EKEY, "id %lld is not in the index", (long long)ids[i]);
        else
            memcpy(out + i * kd->dim, row_at(kd, loc), kd->dim * sizeof(float));
    }
    pthread_rwlock_unlock(&kd->lock);
    return rc;
}

/* Every live point, in forest order, through fn. */
static size_t live_ids_nolock(const isx_kdtree *kd, int64_t *out, size_t cap)
{
    size_t w = 0;
    for (size_t ti = 0; ti < kd->ntrees; ti++) {
        const kd_tree *t = kd->trees[ti];
        for (size_t p = 0; p < t->n && w < cap; p++)
            if (!t->dead || !bit_get(t->dead, p))
                out[w++] = t->ids[p];
    }
    for (size_t p = 0; p < kd->nbuf && w < cap; p++)
        out[w++] = kd->buf_ids[p];
    return w;
}

int isx_kdtree_ids(isx_kdtree *kd, int64_t *out, size_t cap, size_t *n)
{
    pthread_rwlock_rdlock(&kd->lock);
    *n = live_ids_nolock(kd, out, cap);
    pthread_rwlock_unlock(&kd->lock);
    return ISX_OK;
}

/* ======================================================================
 * Filters -> per-tree skip bitmaps
 * ====================================================================== */

/* What a search may not return: per tree a bitmap over positions (dead or
 * filtered out; NULL = nothing skipped), and one over the buffer.  With a
 * selective filter, `subset` lists the allowed points instead. */
typedef struct {
    const uint64_t **skip;   /* ntrees entries */
    uint64_t **owned;        /* bitmaps built for this call */
    uint64_t *buf_skip;
    const float **subset_rows;
    int64_t *subset_ids;
    size_t nsubset;
    int use_subset;
} skipset;

static void skipset_free(skipset *s, size_t ntrees)
{
    if (s->owned)
        for (size_t i = 0; i < ntrees; i++)
            free(s->owned[i]);
    free(s->owned);
    free((void *)s->skip);
    free(s->buf_skip);
    free((void *)s->subset_rows);
    free(s->subset_ids);
    memset(s, 0, sizeof(*s));
}

static int skipset_build(isx_kdtree *kd, const isx_filter *flt, skipset *s)
{
    memset(s, 0, sizeof(*s));
    size_t nt = kd->ntrees;
    s->skip = calloc(nt + 1, sizeof(uint64_t *));
    if (!s->skip)
        return isx_error(ISX_ENOMEM, "cannot allocate a filter");
    int filtered = flt && (flt->mask || flt->ids);
    if (!filtered) {
        for (size_t i = 0; i < nt; i++)
            s->skip[i] = kd->trees[i]->ndead ? kd->trees[i]->dead : NULL;
        return ISX_OK;
    }
    int rc;
    if (flt->ids && (rc = ensure_map(kd)))
        return rc;
    s->owned = calloc(nt + 1, sizeof(uint64_t *));
    s->buf_skip = malloc((kd->nbuf / 64 + 1) * sizeof(uint64_t));
    if (!s->owned || !s->buf_skip)
        return isx_error(ISX_ENOMEM, "cannot allocate a filter");
    for (size_t i = 0; i < nt; i++) {
        const kd_tree *t = kd->trees[i];
        size_t words = t->n / 64 + 1;
        if (!(s->owned[i] = malloc(words * sizeof(uint64_t))))
            return isx_error(ISX_ENOMEM, "cannot allocate a filter bitmap");
        memset(s->owned[i], 0xff, words * sizeof(uint64_t));
        s->skip[i] = s->owned[i];
    }
    memset(s->buf_skip, 0xff, (kd->nbuf / 64 + 1) * sizeof(uint64_t));
    size_t allowed = 0;
#define KD_ALLOW(bits, p) ((bits)[(p) >> 6] &= ~((uint64_t)1 << ((p) & 63)), allowed++)
    if (flt->mask) {
        int64_t max_id = -1;
        for (size_t i = 0; i < nt; i++) {
            const kd_tree *t = kd->trees[i];
            for (size_t p = 0; p < t->n; p++) {
                int64_t id = t->ids[p];
                if (t->dead && bit_get(t->dead, p))
                    continue;
                max_id = id > max_id ? id : max_id;
                if ((uint64_t)id < flt->mask_len && flt->mask[id])
                    KD_ALLOW(s->owned[i], p);
            }
        }
        for (size_t p = 0; p < kd->nbuf; p++) {
            int64_t id = kd->buf_ids[p];
            max_id = id > max_id ? id : max_id;
            if ((uint64_t)id < flt->mask_len && flt->mask[id])
                KD_ALLOW(s->buf_skip, p);
        }
        if ((rc = isx_filter_check_mask(flt, max_id)))
            return rc;
    } else {
        for (size_t i = 0; i < flt->n_ids; i++) {
            int64_t loc = isx_idmap_get(&kd->map, flt->ids[i]);
            if (loc < 0)
                continue;
            size_t ti = (size_t)((uint64_t)loc >> KD_LOC_SHIFT);
            size_t pos = (size_t)((uint64_t)loc & (((uint64_t)1 << KD_LOC_SHIFT) - 1));
            uint64_t *bits = ti == KD_BUFFER_TREE ? s->buf_skip : s->owned[ti];
            if (bit_get(bits, pos))
                KD_ALLOW(bits, pos);
        }
    }
#undef KD_ALLOW
    if (allowed * KD_SUBSET_RATIO >= kd->count)
        return ISX_OK;
    /* few allowed points: list them, and search only those */
    s->use_subset = 1;
    s->subset_rows = malloc((allowed ? allowed : 1) * sizeof(float *));
    s->subset_ids = malloc((allowed ? allowed : 1) * sizeof(int64_t));
    if (!s->subset_rows || !s->subset_ids)
        return isx_error(ISX_ENOMEM, "cannot allocate a filter list");
    for (size_t i = 0; i < nt; i++) {
        const kd_tree *t = kd->trees[i];
        for (size_t p = 0; p < t->n; p++) {
            if (!bit_get(s->owned[i], p)) {
                s->subset_rows[s->nsubset] = tree_row(t, kd->dim, p);
                s->subset_ids[s->nsubset++] = t->ids[p];
            }
        }
    }
    for (size_t p = 0; p < kd->nbuf; p++) {
        if (!bit_get(s->buf_skip, p)) {
            s->subset_rows[s->nsubset] = kd->buf + p * kd->dim;
            s->subset_ids[s->nsubset++] = kd->buf_ids[p];
        }
    }
    return ISX_OK;
}

/* ======================================================================
 * Search
 * ====================================================================== */

typedef struct {
    float *d;
    int64_t *s;
    size_t n, cap;
} hitlist;

/* One query's walk: the state the traversal carries. */
typedef struct {
    const isx_kdtree *kd;
    const kd_tree *t;
    const kd_node *nodes;
    const uint64_t *skip;
    const float *q;
    float *off;           /* dim: distance to the cell's box per dimension */
    float prune;          /* bound multiplier (slack, or (1 + eps)^p) */
    int l1;               /* metric l1 (else l2): read at every node, so kept here */
    size_t leaves_left;
    isx_topk heap;        /* k-NN mode */
    hitlist *hits;        /* range mode (non-NULL) */
    float radius;
    int status;
} kd_walk;

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

static inline float walk_bound(const kd_walk *w)
{
    return w->hits ? w->radius : isx_topk_bound(&w->heap);
}

/* Offer n candidates with distances d[] and ids[] (skipping masked ones). */
static inline void offer(kd_walk *w, const float *d, const int64_t *ids, size_t n, const uint64_t *skip,
                         size_t skip0)
{
    if (w->hits) {
        for (size_t i = 0; i < n; i++)
            if (d[i] < w->radius && !(skip && bit_get(skip, skip0 + i)) && w->status == ISX_OK)
                w->status = hit_push(w->hits, d[i], ids[i]);
        return;
    }
    float bound = isx_topk_bound(&w->heap);
    for (size_t i = 0; i < n; i++) {
        if (d[i] <= bound && !(skip && bit_get(skip, skip0 + i))) {
            isx_topk_push(&w->heap, d[i], ids[i]);
            bound = isx_topk_bound(&w->heap);
        }
    }
}

/* Distances of q to rows [s, e) (through perm when not NULL), and to n rows
 * given by pointers: the table's leaf kernels (simd/kdleaf.h), taken once at
 * create.  Every distance the index returns comes from these, so a point's
 * distance does not depend on where it lives (buffer, borrowed tree, owned
 * tree). */
static inline void dists(const isx_kdtree *kd, const float *rows, const uint32_t *perm, size_t s, size_t e,
                         const float *q, float *out)
{
    kd->kern_dists(rows, perm, s, e, q, kd->dim, kd->metric == ISX_METRIC_L1, out);
}

static inline void dists_ptrs(const isx_kdtree *kd, const float *const *rows, size_t n, const float *q,
                              float *out)
{
    kd->kern_dists_ptrs(rows, n, q, kd->dim, kd->metric == ISX_METRIC_L1, out);
}

static inline float term(float o, int l1) { return l1 ? o : o * o; }

/* Out of line, so that the recursion's frames stay small. */
static __attribute__((noinline)) void walk_leaf(kd_walk *w, const kd_node *nd)
{
    if (w->leaves_left == 0)
        return;
    w->leaves_left--;
    float d[ISX_KDTREE_MAX_LEAF_SIZE];
    size_t s = nd->u.leaf.start, e = nd->u.leaf.end;
    dists(w->kd, w->t->rows, w->t->perm, s, e, w->q, d);
    offer(w, d, w->t->ids + s, e - s, w->skip, s);
}

/* Visit node ni whose box is at least rd away (rd already checked). */
static void walk(kd_walk *w, uint32_t ni, float rd)
{
    const kd_node *nd = &w->nodes[ni];
    if (nd->dim == KD_LEAF) {
        walk_leaf(w, nd);
        return;
    }
    int l1 = w->l1;
    uint32_t dd = nd->dim;
    float qd = w->q[dd], old = w->off[dd];
    float ol = qd - nd->u.in.left_hi, orr = nd->u.in.right_lo - qd;
    ol = ol > old ? ol : old;
    orr = orr > old ? orr : old;
    float told = term(old, l1);
    float rdl = rd + (term(ol, l1) - told), rdr = rd + (term(orr, l1) - told);
    uint32_t first = ni + 1, second = nd->right;
    float rdf = rdl, rds = rdr, of = ol, os = orr;
    if (rdr < rdl) {
        first = nd->right;
        second = ni + 1;
        rdf = rdr;
        rds = rdl;
        of = orr;
        os = ol;
    }
    if (rdf * w->prune < walk_bound(w)) {
        w->off[dd] = of;
        walk(w, first, rdf);
    }
    if (rds * w->prune < walk_bound(w) && w->leaves_left) {
        w->off[dd] = os;
        walk(w, second, rds);
    }
    w->off[dd] = old;
}

/* Walk every tree for one query (the walk's heap or hits already fed by the
 * buffer). */
static void walk_forest(kd_walk *w, const skipset *sk)
{
    const isx_kdtree *kd = w->kd;
    int l1 = kd->metric == ISX_METRIC_L1;
    for (size_t ti = 0; ti < kd->ntrees && w->leaves_left; ti++) {
        const kd_tree *t = kd->trees[ti];
        float rd = 0.0f;
        for (size_t j = 0; j < kd->dim; j++) {
            float q = w->q[j], o = t->lo[j] - q;
            float o2 = q - t->hi[j];
            o = o > o2 ? o : o2;
            o = o > 0.0f ? o : 0.0f;
            w->off[j] = o;
            rd += term(o, l1);
        }
        if (rd * w->prune < walk_bound(w)) {
            w->t = t;
            w->nodes = t->nodes;
            w->skip = sk->skip[ti];
            walk(w, 0, rd);
        }
    }
}

typedef struct {
    isx_kdtree *kd;
    const float *Q;
    size_t nq, k, heap_k;
    float prune;
    size_t max_leaves;
    const skipset *sk;
    float *D;
    int64_t *labels;
    uint32_t *order;     /* queries in the order of their leaves, or NULL */
    /* per worker */
    float **off, **bufd, **heapd;
    int64_t **heaps;
    /* range mode */
    float radius;
    hitlist *hits;
} search_ctx;

/* The candidates that are not in trees: the buffer, or a filter's subset. */
static void scan_flat(search_ctx *c, kd_walk *w, const float *q, float *dbuf)
{
    const isx_kdtree *kd = c->kd;
    if (c->sk->use_subset) {
        float d[KD_SUBSET_CHUNK];
        for (size_t i = 0; i < c->sk->nsubset; i += KD_SUBSET_CHUNK) {
            size_t n = c->sk->nsubset - i < KD_SUBSET_CHUNK ? c->sk->nsubset - i : KD_SUBSET_CHUNK;
            dists_ptrs(kd, c->sk->subset_rows + i, n, q, d);
            offer(w, d, c->sk->subset_ids + i, n, NULL, 0);
        }
        return;
    }
    if (kd->nbuf) {
        dists(kd, kd->buf, NULL, 0, kd->nbuf, q, dbuf);
        offer(w, dbuf, kd->buf_ids, kd->nbuf, c->sk->buf_skip, 0);
    }
}

static int task_search(void *ctx, size_t task, int worker)
{
    search_ctx *c = ctx;
    const isx_kdtree *kd = c->kd;
    size_t q0 = task * KD_QUERY_BLOCK, q1 = q0 + KD_QUERY_BLOCK < c->nq ? q0 + KD_QUERY_BLOCK : c->nq;
    kd_walk w;
    memset(&w, 0, sizeof(w));
    w.kd = kd;
    w.off = c->off[worker];
    w.prune = c->prune;
    w.l1 = kd->metric == ISX_METRIC_L1;
    for (size_t at = q0; at < q1; at++) {
        size_t qi = c->order ? c->order[at] : at;
        const float *q = c->Q + qi * kd->dim;
        w.q = q;
        w.leaves_left = c->max_leaves;
        if (c->hits) {
            w.hits = &c->hits[qi];
            w.radius = c->radius;
        } else {
            isx_topk_init(&w.heap, c->heapd[worker], c->heaps[worker], c->heap_k);
        }
        scan_flat(c, &w, q, c->bufd[worker]);
        if (!c->sk->use_subset)
            walk_forest(&w, c->sk);
        if (w.status)
            return w.status;
        if (c->hits) {
            /* sort by (distance, id) through a heap sort */
            hitlist *h = w.hits;
            isx_topk t;
            isx_topk_init(&t, h->d, h->s, h->n);
            for (size_t j = 0; j < h->n; j++)
                isx_topk_push(&t, h->d[j], h->s[j]);
            isx_topk_sort(&t);
            continue;
        }
        isx_topk_sort(&w.heap);
        float *D = c->D + qi * c->k;
        int64_t *L = c->labels + qi * c->k;
        for (size_t j = 0; j < c->k; j++) {
            D[j] = j < w.heap.size ? w.heap.dist[j] : INFINITY;
            L[j] = j < w.heap.size ? w.heap.slot[j] : -1;
        }
    }
    return ISX_OK;
}

static void free_rows(void **b, int n)
{
    if (!b)
        return;
    for (int i = 0; i < n; i++)
        free(b[i]);
    free(b);
}

/* Per-worker scratch, each row on cache lines of its own: the walk writes
 * off[] at every node and the heap at every push, and two workers sharing
 * a line would stall each other on every write (false sharing). */
static void **alloc_rows(int n, size_t bytes)
{
    void **b = calloc((size_t)n, sizeof(void *));
    if (!b)
        return NULL;
    size_t padded = (bytes + KD_CACHE_LINE - 1) / KD_CACHE_LINE * KD_CACHE_LINE;
    for (int i = 0; i < n; i++) {
        if (!(b[i] = aligned_alloc(KD_CACHE_LINE, padded ? padded : KD_CACHE_LINE))) {
            free_rows(b, n);
            return NULL;
        }
    }
    return b;
}

/* The node at depth <= KD_ORDER_DEPTH of tree t whose cell is nearer to q
 * at every node on the way.  The top levels are few and stay in cache, and
 * cells of that size already give consecutive queries shared paths. */
static uint32_t descend(const kd_tree *t, const float *q)
{
    uint32_t ni = 0;
    for (int depth = 0; depth < KD_ORDER_DEPTH && t->nodes[ni].dim != KD_LEAF; depth++) {
        const kd_node *nd = &t->nodes[ni];
        float qd = q[nd->dim];
        ni = qd - nd->u.in.left_hi <= nd->u.in.right_lo - qd ? ni + 1 : nd->right;
    }
    return ni;
}

typedef struct {
    const kd_tree *t;
    const float *Q;
    size_t nq, dim;
    uint32_t *cell;
} order_ctx;

static int order_task(void *ctx, size_t task, int worker)
{
    order_ctx *o = ctx;
    size_t q0 = task * KD_ORDER_BLOCK, q1 = q0 + KD_ORDER_BLOCK < o->nq ? q0 + KD_ORDER_BLOCK : o->nq;
    for (size_t i = q0; i < q1; i++)
        o->cell[i] = descend(o->t, o->Q + i * o->dim);
    return ISX_OK;
}

/* Queries sorted by the cell of the largest tree they fall in: consecutive
 * queries then walk mostly the same nodes and rows, which stay in cache.
 * The cells are found in parallel (a serial pass here would bound the
 * speed-up of the search), then a stable LSD radix sort on the cell's node
 * number, KD_RADIX_BITS bits a pass, orders the queries.  NULL (run in the
 * caller's order) when that cannot pay or memory is short. */
static uint32_t *query_order(const isx_kdtree *kd, const float *Q, size_t nq, int nthreads)
{
    if (kd->ntrees == 0 || nq < KD_SORT_MIN_QUERIES || nq > UINT32_MAX)
        return NULL;
    uint32_t *cell = malloc(nq * sizeof(uint32_t));
    uint32_t *order = malloc(nq * sizeof(uint32_t));
    uint32_t *tmp = malloc(nq * sizeof(uint32_t));
    size_t *count = malloc(KD_RADIX_BUCKETS * sizeof(size_t));
    order_ctx o = {kd->trees[0], Q, nq, kd->dim, cell};
    if (!cell || !order || !tmp || !count ||
        isx_parallel_for(nthreads, (nq + KD_ORDER_BLOCK - 1) / KD_ORDER_BLOCK, order_task, &o) != ISX_OK) {
        free(order);
        order = NULL;
        goto cleanup;
    }
    for (size_t i = 0; i < nq; i++)
        order[i] = (uint32_t)i;
    size_t nnodes = kd->trees[0]->nnodes;
    for (unsigned shift = 0; shift < 32 && (nnodes - 1) >> shift; shift += KD_RADIX_BITS) {
        memset(count, 0, KD_RADIX_BUCKETS * sizeof(size_t));
        for (size_t i = 0; i < nq; i++)
            count[(cell[order[i]] >> shift) & (KD_RADIX_BUCKETS - 1)]++;
        size_t sum = 0;
        for (size_t b = 0; b < KD_RADIX_BUCKETS; b++) {
            size_t c = count[b];
            count[b] = sum;
            sum += c;
        }
        for (size_t i = 0; i < nq; i++)
            tmp[count[(cell[order[i]] >> shift) & (KD_RADIX_BUCKETS - 1)]++] = order[i];
        uint32_t *swap = order;
        order = tmp;
        tmp = swap;
    }
cleanup:
    free(cell);
    free(tmp);
    free(count);
    return order;
}

/* Shared by k-NN and range search: c->hits selects the mode. */
static int run_search(isx_kdtree *kd, search_ctx *c, const isx_filter *filter, int nthreads)
{
    int rc = isx_check_finite(c->Q, c->nq, kd->dim, "queries");
    if (rc || c->nq == 0)
        return rc;
    nthreads = isx_resolve_threads(nthreads);
    if ((size_t)nthreads > (c->nq + KD_QUERY_BLOCK - 1) / KD_QUERY_BLOCK)
        nthreads = (int)((c->nq + KD_QUERY_BLOCK - 1) / KD_QUERY_BLOCK);
    pthread_rwlock_rdlock(&kd->lock);
    skipset sk;
    size_t ntrees = kd->ntrees;
    if ((rc = skipset_build(kd, filter, &sk)))
        goto cleanup;
    c->kd = kd;
    c->sk = &sk;
    c->heap_k = c->k < kd->count ? c->k : (kd->count ? kd->count : 1);
    c->off = (float **)alloc_rows(nthreads, kd->dim * sizeof(float));
    c->bufd = (float **)alloc_rows(nthreads, kd->nbuf * sizeof(float));
    c->heapd = (float **)alloc_rows(nthreads, c->heap_k * sizeof(float));
    c->heaps = (int64_t **)alloc_rows(nthreads, c->heap_k * sizeof(int64_t));
    if (!c->off || !c->bufd || !c->heapd || !c->heaps) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate search buffers");
        goto cleanup;
    }
    c->order = query_order(kd, c->Q, c->nq, nthreads);
    rc = isx_parallel_for(nthreads, (c->nq + KD_QUERY_BLOCK - 1) / KD_QUERY_BLOCK, task_search, c);
cleanup:
    free(c->order);
    free_rows((void **)c->off, nthreads);
    free_rows((void **)c->bufd, nthreads);
    free_rows((void **)c->heapd, nthreads);
    free_rows((void **)c->heaps, nthreads);
    skipset_free(&sk, ntrees);
    pthread_rwlock_unlock(&kd->lock);
    return rc;
}

int isx_kdtree_search(isx_kdtree *kd, const float *Q, size_t nq, size_t k, const isx_kdtree_params *params,
                      const isx_filter *filter, int nthreads, float *D, int64_t *labels)
{
    if (k < 1 || k > ISX_MAX_K)
        return isx_error(ISX_EINVAL, "expected 1 <= k <= %u, found k=%zu", ISX_MAX_K, k);
    float eps = params ? params->eps : 0.0f;
    if (!(eps >= 0.0f) || isinf(eps))
        return isx_error(ISX_EINVAL, "expected a finite eps >= 0, found eps=%g", (double)eps);
    search_ctx c;
    memset(&c, 0, sizeof(c));
    c.Q = Q;
    c.nq = nq;
    c.k = k;
    c.D = D;
    c.labels = labels;
    c.max_leaves = params && params->max_leaves ? params->max_leaves : SIZE_MAX;
    float f = 1.0f + eps;
    c.prune = eps > 0.0f ? (kd->metric == ISX_METRIC_L2 ? f * f : f) : KD_EXACT_SLACK;
    return run_search(kd, &c, filter, nthreads);
}

int isx_kdtree_range_search(isx_kdtree *kd, const float *Q, size_t nq, float radius, const isx_filter *filter,
                            int nthreads, int64_t *lims, float **D, int64_t **labels)
{
    *D = NULL;
    *labels = NULL;
    if (isnan(radius))
        return isx_error(ISX_EINVAL, "radius must be a number, found NaN");
    search_ctx c;
    memset(&c, 0, sizeof(c));
    c.Q = Q;
    c.nq = nq;
    c.k = 1;
    c.radius = radius;
    c.max_leaves = SIZE_MAX;
    c.prune = KD_EXACT_SLACK;
    c.hits = calloc(nq ? nq : 1, sizeof(hitlist));
    if (!c.hits)
        return isx_error(ISX_ENOMEM, "cannot allocate range results for %zu queries", nq);
    int rc = run_search(kd, &c, filter, nthreads);
    size_t total = 0;
    lims[0] = 0;
    for (size_t qi = 0; qi < nq; qi++) {
        total += c.hits[qi].n;
        lims[qi + 1] = (int64_t)total;
    }
    if (rc == ISX_OK) {
        *D = malloc((total ? total : 1) * sizeof(float));
        *labels = malloc((total ? total : 1) * sizeof(int64_t));
        if (!*D || !*labels) {
            free(*D);
            free(*labels);
            *D = NULL;
            *labels = NULL;
            rc = isx_error(ISX_ENOMEM, "cannot allocate %zu range-search results", total);
        }
    }
    for (size_t qi = 0, at = 0; qi < nq; qi++) {
        if (rc == ISX_OK && c.hits[qi].n) {   /* an empty list may have no buffer */
            memcpy(*D + at, c.hits[qi].d, c.hits[qi].n * sizeof(float));
            memcpy(*labels + at, c.hits[qi].s, c.hits[qi].n * sizeof(int64_t));
            at += c.hits[qi].n;
        }
        free(c.hits[qi].d);
        free(c.hits[qi].s);
    }
    free(c.hits);
    return rc;
}

/* ======================================================================
 * Serialisation
 * ====================================================================== */

void isx_kdtree_release_snapshot(isx_kdtree_snapshot *snap)
{
    free(snap->vectors);
    free(snap->ids);
    snap->vectors = NULL;
    snap->ids = NULL;
}

int isx_kdtree_describe(isx_kdtree *kd, isx_header *h, isx_section_out *secs, uint32_t *nsecs,
                        isx_kdtree_snapshot *snap)
{
    memset(snap, 0, sizeof(*snap));
    pthread_rwlock_rdlock(&kd->lock);
    int rc = ISX_OK;
    size_t n = kd->count;
    snap->vectors = malloc((n ? n : 1) * kd->dim * sizeof(float));
    snap->ids = malloc((n ? n : 1) * sizeof(int64_t));
    if (!snap->vectors || !snap->ids) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate %zu vectors to save", n);
        goto cleanup;
    }
    size_t w = 0;
    for (size_t ti = 0; ti < kd->ntrees; ti++)
        w += tree_gather_live(kd->trees[ti], kd->dim, snap->vectors + w * kd->dim, snap->ids + w);
    if (kd->nbuf) {   /* an empty buffer may be unallocated */
        memcpy(snap->vectors + w * kd->dim, kd->buf, kd->nbuf * kd->dim * sizeof(float));
        memcpy(snap->ids + w, kd->buf_ids, kd->nbuf * sizeof(int64_t));
    }
    isx_param p[2];
    memset(p, 0, sizeof(p));
    strcpy(p[0].key, "next_id");
    p[0].type = ISX_PARAM_INT;
    p[0].v.i = kd->next_id;
    strcpy(p[1].key, "leaf_size");
    p[1].type = ISX_PARAM_INT;
    p[1].v.i = (int64_t)kd->leaf_size;
    size_t used;
    if ((rc = isx_params_encode(p, 2, snap->parm, sizeof(snap->parm), &used)))
        goto cleanup;
    memset(h, 0, sizeof(*h));
    h->kind = ISX_KIND_KDTREE;
    h->metric = kd->metric;
    h->dtype = ISX_DTYPE_F32;
    h->dim = kd->dim;
    h->count = n;
    secs[0] = (isx_section_out){ISX_SEC_PARAMS, snap->parm, used};
    secs[1] = (isx_section_out){ISX_SEC_VECTORS, snap->vectors, (uint64_t)n * kd->dim * sizeof(float)};
    secs[2] = (isx_section_out){ISX_SEC_IDS, snap->ids, (uint64_t)n * sizeof(int64_t)};
    *nsecs = ISX_KDTREE_SECTIONS;
cleanup:
    pthread_rwlock_unlock(&kd->lock);
    if (rc)
        isx_kdtree_release_snapshot(snap);
    return rc;
}

int isx_kdtree_from_file(isx_file *file, int nthreads, isx_kdtree **out)
{
    *out = NULL;
    isx_kdtree *kd = NULL;
    const isx_section_in *vecs, *ids, *parm;
    isx_param params[ISX_MAX_PARAMS];
    uint32_t nparams = 0;
    const isx_header *h = &file->header;
    int64_t leaf = ISX_KDTREE_LEAF_SIZE_DEFAULT, next_id = 0;
    int64_t *idcopy = NULL;
    int rc;
    if (h->kind != ISX_KIND_KDTREE) {
        rc = isx_error(ISX_EFORMAT, "expected a KD-tree index (kind %d), found kind %u", ISX_KIND_KDTREE, h->kind);
        goto fail;
    }
    if (h->dtype != ISX_DTYPE_F32) {
        rc = isx_error(ISX_EFORMAT, "KD-tree index: expected dtype %d (float32), found %u", ISX_DTYPE_F32, h->dtype);
        goto fail;
    }
    parm = isx_format_find(file, ISX_SEC_PARAMS);
    if (parm && (rc = isx_params_decode(parm->data, parm->size, params, ISX_MAX_PARAMS, &nparams)))
        goto fail;
    if (nparams && isx_params_get_int(params, nparams, "leaf_size", &leaf) != ISX_OK)
        leaf = ISX_KDTREE_LEAF_SIZE_DEFAULT;
    if (leaf < 1 || leaf > ISX_KDTREE_MAX_LEAF_SIZE) {
        rc = isx_error(ISX_EFORMAT, "KD-tree index: leaf_size %lld out of range 1..%d", (long long)leaf,
                       ISX_KDTREE_MAX_LEAF_SIZE);
        goto fail;
    }
    if ((rc = isx_kdtree_create((isx_metric)h->metric, (size_t)h->dim, (size_t)leaf, &kd))) {
        rc = isx_error(ISX_EFORMAT, "KD-tree index header: %s", isx_last_error());
        goto fail;
    }
    /* count <= 2^40 and dim <= 2^20 (checked by the reader): no overflow */
    if ((rc = isx_format_require(file, ISX_SEC_VECTORS, h->count * h->dim * sizeof(float), &vecs)) ||
        (rc = isx_format_require(file, ISX_SEC_IDS, h->count * sizeof(int64_t), &ids)))
        goto fail;
    idcopy = malloc((h->count ? h->count : 1) * sizeof(int64_t));
    if (!idcopy) {
        rc = isx_error(ISX_ENOMEM, "cannot allocate ids for %llu rows", (unsigned long long)h->count);
        goto fail;
    }
    memcpy(idcopy, ids->data, h->count * sizeof(int64_t));
    rc = isx_kdtree_borrow(kd, (const float *)vecs->data, (size_t)h->count, idcopy, nthreads);
    free(idcopy);
    if (rc) {
        rc = isx_error(rc == ISX_ENOMEM ? ISX_ENOMEM : ISX_EFORMAT, "KD-tree index: %s", isx_last_error());
        goto fail;
    }
    if (nparams && isx_params_get_int(params, nparams, "next_id", &next_id) == ISX_OK && next_id > kd->next_id)
        kd->next_id = next_id;
    isx_clear_error();
    kd->file = file;
    *out = kd;
    return ISX_OK;
fail:
    isx_kdtree_destroy(kd);
    isx_format_close(file);
    free(file);
    return rc;
}
