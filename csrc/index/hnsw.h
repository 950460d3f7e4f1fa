/*
 * hnsw.h -- the approximate index: a hierarchical navigable small-world
 * graph (Malkov & Yashunin, 2016), dynamic, filterable and persistent.
 *
 * Storage per slot (a slot is a position; ids map to slots through `map`):
 *   level 0   one block per slot, [count | links[M0] | vector], so that
 *             reading a node's neighbours and computing its distance touch
 *             the same memory; the whole array is one allocation (or a
 *             read-only mapping of a saved file) of capacity x node_bytes.
 *   upper     levels 1..level of a slot: level x [count | links[M]] uint32,
 *             one small allocation per slot that has any.
 * Free slots (removed vectors) hold no links and are reused by later adds.
 *
 * Thread safety: search, get and the accessors take the index's read lock,
 * so any number of them run at once; add, remove and set_ef take the write
 * lock, so a search that comes during an add waits for it (it never sees a
 * half-built graph).  add itself is parallel inside (per-node spin locks).
 */
#ifndef ISX_HNSW_H
#define ISX_HNSW_H

#include <pthread.h>
#include <stdatomic.h>

#include "../common/idmap.h"
#include "../simd/simd.h"
#include "filter.h"
#include "format.h"

#define ISX_HNSW_MAX_M 256       /* links per node per upper level: bounds the node block */
#define ISX_HNSW_MAX_LEVEL 32    /* P(level > 32) < M^-32: never drawn in practice; bounds the file */
#define ISX_HNSW_MAX_EF (1u << 20) /* search breadth: bounds the heaps like ISX_MAX_K */

typedef struct isx_hnsw_visited isx_hnsw_visited;

typedef struct isx_hnsw {
    isx_metric metric;
    isx_dtype dtype;        /* F32, F16, I8; BITS for hamming */
    size_t dim;             /* elements (bits for hamming) */
    size_t kernel_dim;      /* what the kernel is told: dim, or bytes for hamming */
    size_t code_bytes;      /* stored bytes per vector */
    size_t M, M0, ef_construction, ef_search;
    uint64_t seed, rng;     /* level generator: seed at creation, state now */
    double level_mult;      /* 1 / ln(M) */
    size_t links0_bytes;    /* (1 + M0) uint32, rounded up to 16 bytes */
    size_t node_bytes;      /* links0_bytes + code_bytes, rounded up to 16 bytes */

    uint8_t *level0;        /* capacity x node_bytes */
    int level0_owned;       /* 0: points into `file` (a loaded, maybe mapped, file) */
    isx_file *file;
    uint8_t *levels;        /* per slot */
    uint32_t **upper;       /* per slot: NULL for level 0 */
    int64_t *ids;           /* per slot: -1 for a free slot */
    atomic_uchar *locks;    /* per slot: spin locks held while a link list changes */
    size_t nslots, capacity, live;
    uint32_t *free_slots;   /* a stack of free slots, reused by add */
    size_t nfree;

    int64_t entry;          /* the entry point's slot, -1 when empty */
    int max_level;          /* its level, -1 when empty */
    pthread_mutex_t entry_lock; /* held while a new top-level node is inserted */

    float quant_mid, quant_scale; /* int8: value = mid + scale * code */
    int quant_ready;

    isx_idmap map;          /* id -> slot */
    int64_t next_id;
    isx_dist_fn dist;       /* the kernel for (metric, dtype) */
    isx_bounded_fn bounded; /* float32 l2 / l1: the kernel that can stop early */
    isx_f16_fn f16_to_f32;  /* widens stored halves (the heuristic decodes rows) */
    uint32_t *perm;         /* with `bounded`: stored element i is input element perm[i] */
    float dist_mul;         /* true distance = dist_mul * kernel + per-query offset */

    pthread_rwlock_t lock;
    pthread_mutex_t pool_lock;
    isx_hnsw_visited *pool; /* free visited lists */
} isx_hnsw;

int isx_hnsw_create(isx_metric metric, size_t dim, isx_dtype dtype, size_t M, size_t ef_construction,
                    uint64_t seed, isx_hnsw **out);
void isx_hnsw_destroy(isx_hnsw *h);

/* Add n rows (float32, or packed uint8 for hamming).  ids == NULL gives
 * next_id, next_id + 1, ...; an id already present has its vector replaced.
 * Everything is validated before anything changes. */
int isx_hnsw_add(isx_hnsw *h, const void *X, size_t n, const int64_t *ids, int nthreads);
/* Remove ids (absent ones are ignored) and repair the graph around them. */
int isx_hnsw_remove(isx_hnsw *h, const int64_t *ids, size_t n, int nthreads, size_t *removed);
/* Stored vectors of ids, as float32 (decoded for float16/int8) or packed
 * uint8 for hamming, into out (n x dim or n x dim/8); ISX_EKEY if absent. */
int isx_hnsw_get(isx_hnsw *h, const int64_t *ids, size_t n, void *out);
/* Copy the ids of all stored vectors (in slot order) into out. */
int isx_hnsw_ids(isx_hnsw *h, int64_t *out, size_t cap, size_t *n);

/* k nearest per query (approximate): D and I are nq x k, padded with
 * +inf / -1.  ef == 0 uses h->ef_search; the breadth is max(ef, k). */
int isx_hnsw_search(isx_hnsw *h, const void *Q, size_t nq, size_t k, size_t ef, const isx_filter *filter,
                    int nthreads, float *D, int64_t *labels);
int isx_hnsw_set_ef(isx_hnsw *h, size_t ef);

/* Verify every invariant of the graph and the id map: ISX_EFORMAT with a
 * message naming the first violation.  Takes the read lock. */
int isx_hnsw_check(isx_hnsw *h);
/* Bytes the index holds in memory (the mapped file counted too). */
size_t isx_hnsw_memory(isx_hnsw *h);

/* Serialisation, as flat.h: sections PARM, IDS, HNG0 (level-0 blocks),
 * HNLV (levels), HNUP (upper links), HNPM (element order); valid while the read lock is held. */
#define ISX_HNSW_SECTIONS 6
#define ISX_SEC_HNSW_LEVEL0 ISX_TAG('H', 'N', 'G', '0')
#define ISX_SEC_HNSW_LEVELS ISX_TAG('H', 'N', 'L', 'V')
#define ISX_SEC_HNSW_UPPER ISX_TAG('H', 'N', 'U', 'P')
#define ISX_SEC_HNSW_PERM ISX_TAG('H', 'N', 'P', 'M')
/* *upper_buf is malloc'd (the concatenated upper links): free it after writing. */
int isx_hnsw_describe(isx_hnsw *h, isx_header *hd, isx_section_out *secs, uint32_t *nsecs, uint8_t *parm,
                      size_t parm_cap, uint32_t **upper_buf);
void isx_hnsw_lock_read(isx_hnsw *h);
void isx_hnsw_unlock(isx_hnsw *h);
/* Build from a validated file (takes ownership of *file, even on failure);
 * the graph is checked as hostile input. */
int isx_hnsw_from_file(isx_file *file, isx_hnsw **out);

#endif
