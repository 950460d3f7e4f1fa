/*
 * py_flat.c -- imgsearch.FlatIndex, the Python face of index/flat.c.
 *
 * The object holds the C index and, while the index reads memory it does
 * not own, the Python object that owns that memory (the caller's array for
 * from_array(copy=False), or nothing for a loaded file, whose bytes the C
 * index keeps itself).  Every method converts and checks its arguments with
 * the GIL held, then releases the GIL for the C call: results are allocated
 * before, so nothing in the released region touches Python objects.
 * What the three index types share (add, search, range_search, remove,
 * get, ids, save) is in py_index.c; this file keeps what is FlatIndex's own
 * and the adapters through which those shared methods call index/flat.c.
 */
#include "py_common.h"
#include "py_index.h"
#include "../index/flat.h"

typedef struct {
    PyObject_HEAD
    isx_flat *index;
    PyObject *owner; /* keeps borrowed vectors alive */
} FlatObject;

static int flat_ready(FlatObject *self)
{
    if (!self->index) {
        PyErr_SetString(PyExc_RuntimeError, "FlatIndex is not initialised (call FlatIndex(dim, metric))");
        return 0;
    }
    return 1;
}

/* After a change the C index may have copied borrowed rows into its own
 * memory: the owner is no longer needed unless a view of it escaped. */
static void flat_drop_owner(FlatObject *self)
{
    if (self->owner && self->index->data_owned && !self->index->pinned)
        Py_CLEAR(self->owner);
}

static PyObject *flat_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    FlatObject *self = (FlatObject *)type->tp_alloc(type, 0);
    return (PyObject *)self;
}

static int flat_init(FlatObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dim", "metric", NULL};
    Py_ssize_t dim;
    PyObject *metric_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "n|O:FlatIndex", kwlist, &dim, &metric_obj))
        return -1;
    isx_metric metric = ISX_METRIC_L2;
    if (metric_obj && isx_py_metric(metric_obj, &metric) < 0)
        return -1;
    if (dim < 1) {
        PyErr_Format(PyExc_ValueError, "expected dim >= 1, found dim=%zd", dim);
        return -1;
    }
    isx_flat *f;
    int rc = isx_flat_create(metric, (size_t)dim, &f);
    if (rc) {
        isx_py_raise(rc);
        return -1;
    }
    isx_flat_destroy(self->index);
    Py_CLEAR(self->owner);
    self->index = f;
    return 0;
}

static void flat_dealloc(FlatObject *self)
{
    isx_flat_destroy(self->index);
    Py_CLEAR(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyObject *isx_py_flat_wrap(isx_flat *f)
{
    FlatObject *self = (FlatObject *)isx_FlatType.tp_alloc(&isx_FlatType, 0);
    if (!self) {
        isx_flat_destroy(f);
        return NULL;
    }
    self->index = f;
    return (PyObject *)self;
}

/* ---- the C index's calls in the shapes py_index.c takes ---- */

static int flat_core_add(void *index, const void *X, size_t n, const int64_t *ids, int nthreads)
{
    return isx_flat_add(index, X, n, ids, nthreads);
}

static int flat_core_borrow(void *index, const void *X, size_t n, const int64_t *ids, int nthreads)
{
    return isx_flat_borrow(index, X, n, ids, nthreads);
}

static int flat_core_search(void *index, const void *params, const void *Q, size_t nq, size_t k,
                            const isx_filter *filter, int nthreads, float *D, int64_t *labels)
{
    (void)params;
    return isx_flat_search(index, Q, nq, k, filter, nthreads, D, labels);
}

static int flat_core_range_search(void *index, const void *Q, size_t nq, float radius, const isx_filter *filter,
                                  int nthreads, int64_t *lims, float **D, int64_t **labels)
{
    return isx_flat_range_search(index, Q, nq, radius, filter, nthreads, lims, D, labels);
}

static int flat_core_remove(void *index, const int64_t *ids, size_t n, int nthreads, size_t *removed)
{
    (void)nthreads;
    return isx_flat_remove(index, ids, n, removed);
}

static int flat_core_get(void *index, const int64_t *ids, size_t n, void *out)
{
    return isx_flat_get(index, ids, n, out);
}

static size_t flat_core_count(void *index)
{
    isx_flat *f = index;
    isx_flat_lock_read(f);
    size_t n = f->count;
    isx_flat_unlock(f);
    return n;
}

static int flat_core_ids(void *index, int64_t *out, size_t cap, size_t *n)
{
    return isx_flat_ids(index, out, cap, n);
}

static PyObject *flat_add(FlatObject *self, PyObject *args, PyObject *kw)
{
    if (!flat_ready(self))
        return NULL;
    isx_flat *f = self->index;
    PyObject *r = isx_py_add(f, flat_core_add, isx_py_row_dtype(f->dtype), (npy_intp)f->row_elems, args, kw);
    if (r)
        flat_drop_owner(self);
    return r;
}

static PyObject *flat_from_array(PyObject *cls, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"X", "metric", "copy", "ids", NULL};
    PyObject *x_obj, *metric_obj = NULL, *ids_obj = Py_None;
    int copy = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O$pO:from_array", kwlist, &x_obj, &metric_obj, &copy, &ids_obj))
        return NULL;
    isx_metric metric = ISX_METRIC_L2;
    if (metric_obj && isx_py_metric(metric_obj, &metric) < 0)
        return NULL;
    int dtype = metric == ISX_METRIC_HAMMING ? NPY_UINT8 : NPY_FLOAT32;
    PyArrayObject *X = isx_py_matrix(x_obj, dtype, 0, copy, "X");
    if (!X)
        return NULL;
    FlatObject *self = NULL;
    isx_flat *f = NULL;
    size_t cols = (size_t)PyArray_DIM(X, 1);
    int rc = isx_flat_create(metric, metric == ISX_METRIC_HAMMING ? cols * 8 : cols, &f);
    if (rc) {
        isx_py_raise(rc);
        goto error;
    }
    if (isx_py_fill(f, copy ? flat_core_add : flat_core_borrow, X, ids_obj, 0) < 0)
        goto error;
    self = (FlatObject *)((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 0);
    if (!self)
        goto error;
    self->index = f;
    if (!copy) {
        self->owner = (PyObject *)X;
        X = NULL;
    }
    Py_XDECREF(X);
    return (PyObject *)self;
error:
    isx_flat_destroy(f);
    Py_XDECREF(X);
    return NULL;
}

static PyObject *flat_search(FlatObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"Q", "k", "threads", "filter", NULL};
    PyObject *q_obj, *k_obj = NULL, *threads_obj = Py_None, *filter_obj = Py_None;
    if (!flat_ready(self) ||
        !PyArg_ParseTupleAndKeywords(args, kw, "O|O$OO:search", kwlist, &q_obj, &k_obj, &threads_obj, &filter_obj))
        return NULL;
    Py_ssize_t k = 10;
    int threads;
    if ((k_obj && isx_py_parse_k(k_obj, &k) < 0) || isx_py_threads(threads_obj, &threads) < 0)
        return NULL;
    isx_flat *f = self->index;
    return isx_py_search(f, flat_core_search, NULL, isx_py_row_dtype(f->dtype), (npy_intp)f->row_elems, q_obj,
                         (size_t)k, threads, filter_obj);
}

static PyObject *flat_range_search(FlatObject *self, PyObject *args, PyObject *kw)
{
    if (!flat_ready(self))
        return NULL;
    isx_flat *f = self->index;
    return isx_py_range_search(f, flat_core_range_search, isx_py_row_dtype(f->dtype), (npy_intp)f->row_elems, args,
                               kw);
}

static PyObject *flat_remove(FlatObject *self, PyObject *ids_obj)
{
    if (!flat_ready(self))
        return NULL;
    PyObject *removed = isx_py_remove(self->index, flat_core_remove, ids_obj, 0);
    if (removed)
        flat_drop_owner(self);
    return removed;
}

static PyObject *flat_get(FlatObject *self, PyObject *ids_obj)
{
    if (!flat_ready(self))
        return NULL;
    isx_flat *f = self->index;
    return isx_py_get(f, flat_core_get, isx_py_row_dtype(f->dtype), (npy_intp)f->row_elems, ids_obj);
}

/* Under the read lock, which keeps the described sections valid. */
static int flat_core_describe(void *index, isx_py_writer *w)
{
    isx_flat *f = index;
    isx_header h;
    isx_section_out secs[ISX_FLAT_SECTIONS + 1];
    uint32_t nsecs;
    uint8_t parm[256];
    isx_flat_lock_read(f);
    int rc = isx_flat_describe(f, &h, secs, &nsecs, parm, sizeof(parm));
    if (rc == ISX_OK)
        rc = isx_py_write(w, &h, secs, nsecs);
    isx_flat_unlock(f);
    return rc;
}

static PyObject *flat_save(FlatObject *self, PyObject *args, PyObject *kw)
{
    return flat_ready(self) ? isx_py_save(self->index, flat_core_describe, args, kw) : NULL;
}

static PyObject *flat_to_bytes(FlatObject *self, PyObject *noargs)
{
    (void)noargs;
    return flat_ready(self) ? isx_py_to_bytes(self->index, flat_core_describe) : NULL;
}

static PyObject *flat_get_vectors(FlatObject *self, void *closure)
{
    (void)closure;
    if (!flat_ready(self))
        return NULL;
    isx_flat *f = self->index;
    isx_flat_pin(f); /* from now on no buffer of this index is ever freed early */
    isx_flat_lock_read(f);
    npy_intp shape[2] = {(npy_intp)f->count, (npy_intp)f->row_elems};
    void *data = f->data;
    isx_flat_unlock(f);
    PyArray_Descr *descr = PyArray_DescrFromType(isx_py_row_dtype(f->dtype));
    PyObject *arr = PyArray_NewFromDescr(&PyArray_Type, descr, 2, shape, NULL, data, 0, NULL);
    if (!arr)
        return NULL;
    Py_INCREF(self);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, (PyObject *)self) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static PyObject *flat_get_ids(FlatObject *self, void *closure)
{
    (void)closure;
    return flat_ready(self) ? isx_py_index_ids(self->index, flat_core_count, flat_core_ids) : NULL;
}

static PyObject *flat_get_dim(FlatObject *self, void *c)
{
    (void)c;
    return flat_ready(self) ? PyLong_FromSize_t(self->index->dim) : NULL;
}

static PyObject *flat_get_metric(FlatObject *self, void *c)
{
    (void)c;
    return flat_ready(self) ? PyUnicode_FromString(isx_metric_name(self->index->metric)) : NULL;
}

static PyObject *flat_get_borrowed(FlatObject *self, void *c)
{
    (void)c;
    return flat_ready(self) ? PyBool_FromLong(!self->index->data_owned) : NULL;
}

static Py_ssize_t flat_len(FlatObject *self)
{
    return flat_ready(self) ? (Py_ssize_t)self->index->count : -1;
}

static PyObject *flat_repr(FlatObject *self)
{
    if (!self->index)
        return PyUnicode_FromString("FlatIndex(<uninitialised>)");
    return PyUnicode_FromFormat("FlatIndex(dim=%zu, metric=\"%s\", count=%zu)", self->index->dim,
                                isx_metric_name(self->index->metric), self->index->count);
}

static PyMethodDef flat_methods[] = {
    {"add", (PyCFunction)(void (*)(void))flat_add, METH_VARARGS | METH_KEYWORDS,
     "add(X, ids=None, *, threads=None)\n--\n\n"
     "Add vectors X (n, dim) float32 (or packed uint8 for hamming).  ids default to\n"
     "the next unused ids (0, 1, ... for a new index); an id already present has\n"
     "its vector replaced.  Other numeric dtypes are converted (a copy).\n"
     "Raises ValueError for NaN/Inf, negative ids or an id repeated in X."},
    {"search", (PyCFunction)(void (*)(void))flat_search, METH_VARARGS | METH_KEYWORDS,
     "search(Q, k=10, *, threads=None, filter=None)\n--\n\n"
     "Exact k nearest neighbours of each query row.  Returns (D, I): float32 and\n"
     "int64 arrays of shape (nq, k), nearest first; rows are padded with inf / -1\n"
     "when fewer than k vectors (or allowed ids) exist.  filter: a bool mask over\n"
     "ids (mask[id]; len(mask) > the largest id) or an integer array of allowed ids\n"
     "(a 0/1 integer array is refused: pass mask.astype(bool)).  Thread-safe: many searches may run at once, also during add/remove."},
    {"range_search", (PyCFunction)(void (*)(void))flat_range_search, METH_VARARGS | METH_KEYWORDS,
     "range_search(Q, radius, *, threads=None, filter=None)\n--\n\n"
     "All vectors with distance < radius.  Returns (lims, D, I) as faiss does: the\n"
     "hits of query i are D[lims[i]:lims[i+1]], I[lims[i]:lims[i+1]], sorted by distance."},
    {"remove", (PyCFunction)flat_remove, METH_O,
     "remove(ids)\n--\n\nRemove these ids (absent ids are ignored); returns how many were removed."},
    {"get", (PyCFunction)flat_get, METH_O,
     "get(ids)\n--\n\nCopies of the stored vectors of ids (one row for a scalar id); KeyError if absent."},
    {"save", (PyCFunction)(void (*)(void))flat_save, METH_VARARGS | METH_KEYWORDS,
     "save(path)\n--\n\nWrite the index atomically (temporary file, fsync, rename); see docs/FORMAT.md."},
    {"to_bytes", (PyCFunction)flat_to_bytes, METH_NOARGS, "to_bytes()\n--\n\nThe saved file's bytes."},
    {"__reduce__", (PyCFunction)isx_py_reduce, METH_NOARGS, NULL},
    {"from_array", (PyCFunction)(void (*)(void))flat_from_array, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "from_array(X, metric=\"l2\", *, copy=False, ids=None)\n--\n\n"
     "An index over X.  With copy=False (the default) nothing is copied: the index\n"
     "keeps a reference to X and searches it in place, so X must be C-contiguous\n"
     "float32 (uint8 for hamming); the first add/remove copies the rows into the\n"
     "index's own memory, and X itself is never written."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef flat_getset[] = {
    {"dim", (getter)flat_get_dim, NULL, "dimension (bits for hamming)", NULL},
    {"metric", (getter)flat_get_metric, NULL, "metric name", NULL},
    {"vectors", (getter)flat_get_vectors, NULL,
     "read-only view (no copy) of the stored vectors, in storage order; its base is the index", NULL},
    {"ids", (getter)flat_get_ids, NULL, "ids in storage order (a copy)", NULL},
    {"borrowed", (getter)flat_get_borrowed, NULL,
     "True while the vectors live in memory the index does not own (from_array, mmap)", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PySequenceMethods flat_as_sequence = {.sq_length = (lenfunc)flat_len};

PyTypeObject isx_FlatType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "imgsearch.FlatIndex",
    .tp_basicsize = sizeof(FlatObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "FlatIndex(dim, metric=\"l2\")\n--\n\n"
              "Exact nearest-neighbour index.  metric: l2 (squared Euclidean), ip (1 - dot),\n"
              "cosine (1 - cos), l1, hamming (dim in bits, rows packed as uint8).",
    .tp_new = flat_new,
    .tp_init = (initproc)flat_init,
    .tp_dealloc = (destructor)flat_dealloc,
    .tp_methods = flat_methods,
    .tp_getset = flat_getset,
    .tp_as_sequence = &flat_as_sequence,
    .tp_repr = (reprfunc)flat_repr,
};
