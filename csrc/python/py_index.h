/*
 * py_index.h -- the index types, for module.c's loader, and the methods
 * FlatIndex, KDTreeIndex and HNSWIndex share (py_index.c).
 *
 * A shared method takes the C index as void * and an adapter from its
 * binding with the signature below, which calls the index's own function:
 * adapters, not casts between function pointer types, keep the calls
 * well-defined.  Each binding still checks that it is initialised and parses
 * what is its own; every shared method runs the C call without the GIL.
 */
#ifndef ISX_PY_INDEX_H
#define ISX_PY_INDEX_H

#include "py_common.h"
#include "../index/flat.h"
#include "../index/hnsw.h"
#include "../index/ivfpq.h"
#include "../index/kdtree.h"

extern PyTypeObject isx_FlatType;
/* A new FlatIndex object owning f (destroyed on failure). */
PyObject *isx_py_flat_wrap(isx_flat *f);

extern PyTypeObject isx_HNSWType;
/* A new HNSWIndex object owning h (destroyed on failure). */
PyObject *isx_py_hnsw_wrap(isx_hnsw *h);

extern PyTypeObject isx_IVFPQType;
/* A new IVFPQIndex object owning ix (destroyed on failure). */
PyObject *isx_py_ivfpq_wrap(isx_ivfpq *ix);

extern PyTypeObject isx_KDTreeType;
/* A new KDTreeIndex object owning kd (destroyed on failure). */
PyObject *isx_py_kdtree_wrap(isx_kdtree *kd);

/* ---- add(X, ids=None, *, threads=None) ---- */

/* Add n rows of X with ids (NULL: the next unused ones). */
typedef int (*isx_py_add_fn)(void *index, const void *X, size_t n, const int64_t *ids, int nthreads);
/* X converted to rows of `dtype` with ncols elements; None back. */
PyObject *isx_py_add(void *index, isx_py_add_fn add, int dtype, npy_intp ncols, PyObject *args, PyObject *kw);

/* Put the rows of X into an empty index with `fill` (an add, or a borrow
 * that uses X in place); ids_obj None: the next unused ids.  0, or -1 with
 * an exception (the index may then hold part of X: destroy it). */
int isx_py_fill(void *index, isx_py_add_fn fill, PyArrayObject *X, PyObject *ids_obj, int threads);

/* ---- search: k nearest, and everything within a radius ---- */

/* k nearest per query into D and labels (nq x k); `params` is the binding's
 * own (search breadth, eps, ...), passed through. */
typedef int (*isx_py_knn_fn)(void *index, const void *params, const void *Q, size_t nq, size_t k,
                             const isx_filter *filter, int nthreads, float *D, int64_t *labels);
/* (D, I) for queries q_obj: rows of `dtype` (NPY_FLOAT32 or NPY_UINT8) with
 * ncols elements, converted as X is for add. */
PyObject *isx_py_search(void *index, isx_py_knn_fn knn, const void *params, int dtype, npy_intp ncols,
                        PyObject *q_obj, size_t k, int threads, PyObject *filter_obj);

/* All hits with distance < radius: lims (nq + 1), *D and *labels malloc'd. */
typedef int (*isx_py_range_fn)(void *index, const void *Q, size_t nq, float radius, const isx_filter *filter,
                               int nthreads, int64_t *lims, float **D, int64_t **labels);
/* range_search(Q, radius, *, threads=None, filter=None) -> (lims, D, I). */
PyObject *isx_py_range_search(void *index, isx_py_range_fn range, int dtype, npy_intp ncols, PyObject *args,
                              PyObject *kw);

/* ---- remove(ids), get(ids) ---- */

/* Remove ids (absent ones ignored); *removed counts the hits.  Indexes that
 * remove on one thread ignore nthreads. */
typedef int (*isx_py_remove_fn)(void *index, const int64_t *ids, size_t n, int nthreads, size_t *removed);
/* How many of ids_obj were removed, as an int. */
PyObject *isx_py_remove(void *index, isx_py_remove_fn remove, PyObject *ids_obj, int threads);

/* The stored rows of ids into out (n x ncols); ISX_EKEY if one is absent. */
typedef int (*isx_py_get_fn)(void *index, const int64_t *ids, size_t n, void *out);
/* Copies of the rows of ids_obj as `dtype`: (n, ncols), or (ncols,) for a scalar id. */
PyObject *isx_py_get(void *index, isx_py_get_fn get, int dtype, npy_intp ncols, PyObject *ids_obj);

/* ---- the ids property ---- */

/* How many ids the index holds now. */
typedef size_t (*isx_py_count_fn)(void *index);
/* Up to cap ids into out, under the index's read lock; *n: how many. */
typedef int (*isx_py_ids_fn)(void *index, int64_t *out, size_t cap, size_t *n);
/* All ids of one moment as an int64 array, copied without the GIL. */
PyObject *isx_py_index_ids(void *index, isx_py_count_fn count, isx_py_ids_fn ids);

/* ---- serialisation: save(path, *, meta=None), to_bytes(), __reduce__ ---- */

/* Where describe sends the index's sections: a file or a bytes buffer, with
 * the caller's META section appended. */
typedef struct isx_py_writer isx_py_writer;
/* Write h and secs[0..nsecs) to w; secs has room for one more (META). */
int isx_py_write(isx_py_writer *w, const isx_header *h, isx_section_out *secs, uint32_t nsecs);
/* Describe the index and pass its sections to isx_py_write while they are
 * valid (under the index's read lock, or from a snapshot).  Runs without the GIL. */
typedef int (*isx_py_describe_fn)(void *index, isx_py_writer *w);

PyObject *isx_py_save(void *index, isx_py_describe_fn describe, PyObject *args, PyObject *kw);
PyObject *isx_py_to_bytes(void *index, isx_py_describe_fn describe);
/* __reduce__ for every index type: (imgsearch._core._from_bytes, (self.to_bytes(),)). */
PyObject *isx_py_reduce(PyObject *self, PyObject *noargs);

#endif
