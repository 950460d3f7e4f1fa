/*
 * flat.h -- the exact (brute-force) index.
 *
 * Vectors live in one row-major block, either the index's own memory or
 * memory it does not own: a caller's array (from_array with copy=False) or
 * a loaded file's bytes (read into memory or memory-mapped).  The first
 * change to such an index copies the rows into its own memory first
 * (copy-on-write), so the caller's array and the file are never written.
 *
 * Thread safety: every public function takes the index's reader/writer lock,
 * so any number of searches may run concurrently with each other and with
 * add/remove from other threads.
 */
#ifndef ISX_FLAT_H
#define ISX_FLAT_H

#include <pthread.h>

#include "../common/idmap.h"
#include "filter.h"
#include "format.h"

typedef struct isx_flat {
    isx_metric metric;
    isx_dtype dtype;     /* F32, or BITS for hamming */
    size_t dim;          /* floats, or bits for hamming */
    size_t row_elems;    /* floats, or bytes, per row */
    size_t row_bytes;
    size_t count, capacity;
    uint8_t *data;       /* count rows */
    int data_owned;      /* 0: borrowed from the caller or from `file` */
    isx_file *file;      /* the loaded file behind `data`, if any */
    int pinned;          /* a view of `data` was handed out: never free it */
    void **retired;      /* buffers replaced while pinned, freed at destroy */
    size_t nretired;
    int64_t *ids;        /* capacity entries; slot -> id */
    float *norms;        /* l2: |x|^2; cosine: 1/|x| (0 for a zero row); else NULL */
    isx_idmap map;       /* id -> slot */
    int64_t next_id;     /* default id of the next added row */
    pthread_rwlock_t lock;
} isx_flat;

int isx_flat_create(isx_metric metric, size_t dim, isx_flat **out);
void isx_flat_destroy(isx_flat *f);

/* Add n rows.  ids == NULL gives next_id, next_id + 1, ...  An id already in
 * the index has its vector replaced.  Validates everything (finite values,
 * ids >= 0, no id twice in one call) before changing anything. */
int isx_flat_add(isx_flat *f, const void *X, size_t n, const int64_t *ids, int nthreads);
/* Make an empty index use `data` (n rows) without copying; the caller keeps
 * it alive while f->data_owned == 0.  ids == NULL means 0..n-1. */
int isx_flat_borrow(isx_flat *f, const void *data, size_t n, const int64_t *ids, int nthreads);
/* Remove the given ids (absent ids are ignored); *removed counts the hits. */
int isx_flat_remove(isx_flat *f, const int64_t *ids, size_t n, size_t *removed);
/* Copy the rows of `ids` into out (n x row_elems); ISX_EKEY if one is absent. */
int isx_flat_get(isx_flat *f, const int64_t *ids, size_t n, void *out);
/* Copy all ids (count entries) into out. */
int isx_flat_ids(isx_flat *f, int64_t *out, size_t cap, size_t *n);

/* k nearest per query: D and I are nq x k, padded with +inf / -1. */
int isx_flat_search(isx_flat *f, const void *Q, size_t nq, size_t k,
                    const isx_filter *filter, int nthreads, float *D, int64_t *labels);
/* All rows with distance < radius, per query sorted by distance: lims has
 * nq + 1 entries; *D and *I are malloc'd (free with free()), lims[nq] long. */
int isx_flat_range_search(isx_flat *f, const void *Q, size_t nq, float radius,
                          const isx_filter *filter, int nthreads,
                          int64_t *lims, float **D, int64_t **labels);

/* Serialisation: fill a header and the index's sections (PARM, VECS, IDS);
 * pointers stay valid while the read lock is held (take it with
 * isx_flat_lock_read).  secs must have room for ISX_FLAT_SECTIONS. */
#define ISX_FLAT_SECTIONS 3
int isx_flat_describe(isx_flat *f, isx_header *h, isx_section_out *secs, uint32_t *nsecs,
                      uint8_t *parm, size_t parm_cap);
void isx_flat_lock_read(isx_flat *f);
void isx_flat_unlock(isx_flat *f);
/* Build an index from a validated file; takes ownership of *file (it is
 * closed when the index no longer needs its bytes) even on failure. */
int isx_flat_from_file(isx_file *file, int nthreads, isx_flat **out);

/* Exact distances of n x nb pairs, out row-major (na x nb); used by
 * imgsearch.distance.pairwise.  X rows are row_elems long. */
int isx_pairwise(isx_metric metric, const void *A, size_t na, const void *B, size_t nb,
                 size_t row_elems, int nthreads, float *out);

/* Tell the index that a view of its data was handed out. */
void isx_flat_pin(isx_flat *f);

#endif
