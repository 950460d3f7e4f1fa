/*
 * ivfpq.h -- the compressed index: an inverted file (IVF) of product-
 * quantised residuals (Jegou, Douze, Schmid 2011), dynamic, filterable and
 * persistent, with optional exact re-ranking.
 *
 * A vector x is assigned to its nearest coarse centroid c (k-means, nlist of
 * them) and stored in that centroid's inverted list as the PQ code of its
 * residual x - c (m sub-codes of nbits = 8 or 4 bits).  A query scans the
 * nprobe lists whose centroids are nearest with a lookup table per list and
 * keeps the best candidates; with refine the original vectors (float32 or
 * float16) are kept too, and the best k_factor * k candidates are re-ranked
 * with exact distances.
 *
 * Storage per list (a list's arrays are one allocation each, or point into a
 * loaded file until the list first changes):
 *   codes  nbits = 8: size x m bytes, row-major.
 *          nbits = 4: blocks of 32 vectors, each npairs x 32 bytes (npairs =
 *          ceil(m / 2)): for pair t and h in {0, 1}, byte t*32 + h*16 + i holds
 *          sub-code 2t+h of the block's vector i in its low nibble and of
 *          vector i + 16 in its high nibble -- the layout one AVX2 vpshufb
 *          looks up 32 vectors' sub-codes from (see pqscan.h).
 *   ids    size int64.
 *   rows   with refine: size rows of dim float32 / float16, the vectors as
 *          added (unit length for cosine), so that a candidate's row is found
 *          from its list position without another indirection.
 * An id map sends id -> (list << 32 | position); removal swaps the list's
 * last vector into the hole.
 *
 * Thread safety: search, get and the accessors take the read lock; train,
 * add, remove and the setters take the write lock (as hnsw.h).
 */
#ifndef ISX_IVFPQ_H
#define ISX_IVFPQ_H

#include <pthread.h>

#include "../common/idmap.h"
#include "../simd/simd.h"
#include "filter.h"
#include "format.h"
#include "pq.h"

#define ISX_IVFPQ_MAX_NLIST (1u << 20)   /* coarse centroids: bounds the probe heap and the file */
#define ISX_IVFPQ_MAX_M 256              /* sub-quantizers: 4-bit sums of 256 x 255 fit in uint16 */
#define ISX_IVFPQ_MAX_K_FACTOR 1024      /* re-ranked candidates per result */
#define ISX_IVFPQ_BLOCK 32               /* vectors per 4-bit fast-scan block */

typedef struct {
    uint8_t *codes;
    int64_t *ids;
    uint8_t *rows;      /* refine only */
    size_t size, cap;   /* vectors; cap is a multiple of ISX_IVFPQ_BLOCK for 4-bit */
    int owned;          /* 0: codes / ids / rows point into the loaded file */
} isx_ivf_list;

typedef struct isx_ivfpq {
    isx_metric metric;      /* l2, ip or cosine (stored unit length, scanned as ip) */
    size_t dim, nlist, m, nbits;
    isx_dtype refine;       /* 0: none; ISX_DTYPE_F32 or ISX_DTYPE_F16 rows */
    uint64_t seed;
    size_t nprobe, k_factor;
    int trained;

    float *coarse;          /* nlist x dim */
    int coarse_owned;
    isx_pq pq;
    size_t npairs;          /* 4-bit: ceil(m / 2) */
    size_t block_bytes;     /* 4-bit: npairs * 32 */
    float *precomp;         /* l2: nlist x m x ksub terms |r|^2 + 2 c.r, or NULL (see ivfpq.c) */
    int use_precomp;        /* 0: never build precomp (tests of the other path) */
    float *books_t;         /* the codebooks transposed, m x dsub x ksub (for pq_lut_ip) */
    float *book_norms;      /* m x ksub squared norms of the codewords */
    float *coarse_norms;    /* nlist squared norms of the coarse centroids */

    isx_ivf_list *lists;    /* nlist (allocated at train) */
    size_t count;
    isx_idmap map;          /* id -> list << 32 | position */
    int64_t next_id;

    size_t row_bytes;       /* bytes per refine row */

    isx_file *file;         /* a loaded file the arrays above may point into */
    isx_dist_fn refine_dist;
    const isx_kernels *kern;
    pthread_rwlock_t lock;
} isx_ivfpq;

/* refine: 0, ISX_DTYPE_F32 or ISX_DTYPE_F16.  Checks d % m == 0 and the ranges. */
int isx_ivfpq_create(isx_metric metric, size_t dim, size_t nlist, size_t m, size_t nbits, isx_dtype refine,
                     uint64_t seed, isx_ivfpq **out);
void isx_ivfpq_destroy(isx_ivfpq *ix);

/* Train the coarse quantizer on X (n >= nlist) and the PQ codebooks on the
 * residuals (n >= 2^nbits).  Only on an empty index; retraining one that
 * holds no vectors replaces the model. */
int isx_ivfpq_train(isx_ivfpq *ix, const float *X, size_t n, int nthreads);
/* Add n rows; ids NULL: next_id, next_id + 1, ...; an id already present has
 * its vector replaced (as HNSW); ids repeated within one call are refused. */
int isx_ivfpq_add(isx_ivfpq *ix, const float *X, size_t n, const int64_t *ids, int nthreads);
int isx_ivfpq_remove(isx_ivfpq *ix, const int64_t *ids, size_t n, size_t *removed);
/* The refine rows of ids as float32, or (without refine) the PQ
 * reconstructions c + decode(code); unit length data for cosine. */
int isx_ivfpq_get(isx_ivfpq *ix, const int64_t *ids, size_t n, float *out);
int isx_ivfpq_ids(isx_ivfpq *ix, int64_t *out, size_t cap, size_t *n);

/* k nearest per query; nprobe 0: the index's default; D / I padded with +inf / -1. */
int isx_ivfpq_search(isx_ivfpq *ix, const float *Q, size_t nq, size_t k, size_t nprobe, const isx_filter *filter,
                     int nthreads, float *D, int64_t *labels);
int isx_ivfpq_set_nprobe(isx_ivfpq *ix, size_t nprobe);
int isx_ivfpq_set_k_factor(isx_ivfpq *ix, size_t k_factor);
/* 0: never use the precomputed l2 tables (tests of the other path); 1: when they fit. */
int isx_ivfpq_set_precompute(isx_ivfpq *ix, int on);

/* Bytes held in memory (mapped file sections counted); *lists: codes + ids of the lists alone. */
size_t isx_ivfpq_memory(isx_ivfpq *ix, size_t *lists);
/* The codes of ids as stored for 8-bit (m bytes each) or packed two sub-codes
 * per byte for 4-bit (pq.h's layout), and their lists; for tests of the ADC. */
int isx_ivfpq_codes(isx_ivfpq *ix, const int64_t *ids, size_t n, uint8_t *codes, int64_t *lists);

/* Serialisation (docs/FORMAT.md, kind ISX_KIND_IVFPQ): the lists' arrays are
 * written in place as the parts of their sections; *bufs holds the sizes and
 * the part tables (free with isx_ivfpq_save_buf_free after writing). */
#define ISX_IVFPQ_SECTIONS 7
#define ISX_SEC_IVF_COARSE ISX_TAG('I', 'V', 'C', 'Q')
#define ISX_SEC_IVF_PQ ISX_TAG('I', 'V', 'P', 'Q')
#define ISX_SEC_IVF_SIZES ISX_TAG('I', 'V', 'L', 'S')
#define ISX_SEC_IVF_CODES ISX_TAG('I', 'V', 'C', 'D')
#define ISX_SEC_IVF_REFINE ISX_TAG('I', 'V', 'R', 'F')
typedef struct {
    uint64_t *sizes;
    isx_span *spans;
} isx_ivfpq_save_buf;
int isx_ivfpq_describe(isx_ivfpq *ix, isx_header *hd, isx_section_out *secs, uint32_t *nsecs, uint8_t *parm,
                       size_t parm_cap, isx_ivfpq_save_buf **bufs);
void isx_ivfpq_save_buf_free(isx_ivfpq_save_buf *b);
void isx_ivfpq_lock_read(isx_ivfpq *ix);
void isx_ivfpq_unlock(isx_ivfpq *ix);
int isx_ivfpq_from_file(isx_file *file, isx_ivfpq **out);

#endif
