/*
 * py_kdtree.c -- imgsearch.KDTreeIndex, the Python face of index/kdtree.c.
 *
 * Like FlatIndex: arguments are converted and checked with the GIL held,
 * outputs allocated, then the GIL is released for the C call.  While a tree
 * reads a caller's array (from_array(copy=False)) the object keeps that
 * array alive; it lets it go once the C index no longer borrows it.  The
 * methods shared with the other indexes are in py_index.c, called through
 * the adapters below.
 */
#include "py_common.h"
#include "py_index.h"
#include "../index/kdtree.h"

typedef struct {
    PyObject_HEAD
    isx_kdtree *index;
    PyObject *owner; /* keeps borrowed vectors alive */
} KDTreeObject;

static int kd_ready(KDTreeObject *self)
{
    if (!self->index) {
        PyErr_SetString(PyExc_RuntimeError, "KDTreeIndex is not initialised (call KDTreeIndex(dim, metric))");
        return 0;
    }
    return 1;
}

static void kd_drop_owner(KDTreeObject *self)
{
    if (self->owner && !isx_kdtree_borrows(self->index))
        Py_CLEAR(self->owner);
}

static PyObject *kd_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    return type->tp_alloc(type, 0);
}

static int parse_leaf_size(Py_ssize_t leaf)
{
    if (leaf < 1 || leaf > ISX_KDTREE_MAX_LEAF_SIZE) {
        PyErr_Format(PyExc_ValueError, "expected 1 <= leaf_size <= %d, found leaf_size=%zd",
                     ISX_KDTREE_MAX_LEAF_SIZE, leaf);
        return -1;
    }
    return 0;
}

static int kd_init(KDTreeObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dim", "metric", "leaf_size", NULL};
    Py_ssize_t dim, leaf = ISX_KDTREE_LEAF_SIZE_DEFAULT;
    PyObject *metric_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "n|O$n:KDTreeIndex", kwlist, &dim, &metric_obj, &leaf))
        return -1;
    isx_metric metric = ISX_METRIC_L2;
    if ((metric_obj && isx_py_metric(metric_obj, &metric) < 0) || parse_leaf_size(leaf) < 0)
        return -1;
    if (dim < 1) {
        PyErr_Format(PyExc_ValueError, "expected dim >= 1, found dim=%zd", dim);
        return -1;
    }
    isx_kdtree *kd;
    int rc = isx_kdtree_create(metric, (size_t)dim, (size_t)leaf, &kd);
    if (rc) {
        isx_py_raise(rc);
        return -1;
    }
    isx_kdtree_destroy(self->index);
    Py_CLEAR(self->owner);
    self->index = kd;
    return 0;
}

static void kd_dealloc(KDTreeObject *self)
{
    isx_kdtree_destroy(self->index);
    Py_CLEAR(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyObject *isx_py_kdtree_wrap(isx_kdtree *kd)
{
    KDTreeObject *self = (KDTreeObject *)isx_KDTreeType.tp_alloc(&isx_KDTreeType, 0);
    if (!self) {
        isx_kdtree_destroy(kd);
        return NULL;
    }
    self->index = kd;
    return (PyObject *)self;
}

/* ---- the C index's calls in the shapes py_index.c takes ---- */

static int kd_core_add(void *index, const void *X, size_t n, const int64_t *ids, int nthreads)
{
    return isx_kdtree_add(index, X, n, ids, nthreads);
}

static int kd_core_borrow(void *index, const void *X, size_t n, const int64_t *ids, int nthreads)
{
    return isx_kdtree_borrow(index, X, n, ids, nthreads);
}

static int kd_core_search(void *index, const void *params, const void *Q, size_t nq, size_t k,
                          const isx_filter *filter, int nthreads, float *D, int64_t *labels)
{
    return isx_kdtree_search(index, Q, nq, k, params, filter, nthreads, D, labels);
}

static int kd_core_range_search(void *index, const void *Q, size_t nq, float radius, const isx_filter *filter,
                                int nthreads, int64_t *lims, float **D, int64_t **labels)
{
    return isx_kdtree_range_search(index, Q, nq, radius, filter, nthreads, lims, D, labels);
}

static int kd_core_remove(void *index, const int64_t *ids, size_t n, int nthreads, size_t *removed)
{
    (void)nthreads;
    return isx_kdtree_remove(index, ids, n, removed);
}

static int kd_core_get(void *index, const int64_t *ids, size_t n, void *out)
{
    return isx_kdtree_get(index, ids, n, out);
}

static size_t kd_core_count(void *index)
{
    return isx_kdtree_count(index);
}

static int kd_core_ids(void *index, int64_t *out, size_t cap, size_t *n)
{
    return isx_kdtree_ids(index, out, cap, n);
}

static PyObject *kd_add(KDTreeObject *self, PyObject *args, PyObject *kw)
{
    if (!kd_ready(self))
        return NULL;
    isx_kdtree *kd = self->index;
    PyObject *r = isx_py_add(kd, kd_core_add, NPY_FLOAT32, (npy_intp)isx_kdtree_dim(kd), args, kw);
    if (r)
        kd_drop_owner(self);
    return r;
}

static PyObject *kd_from_array(PyObject *cls, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"X", "metric", "copy", "ids", "leaf_size", "threads", NULL};
    PyObject *x_obj, *metric_obj = NULL, *ids_obj = Py_None, *threads_obj = Py_None;
    int copy = 0;
    Py_ssize_t leaf = ISX_KDTREE_LEAF_SIZE_DEFAULT;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O$pOnO:from_array", kwlist, &x_obj, &metric_obj, &copy, &ids_obj,
                                     &leaf, &threads_obj))
        return NULL;
    isx_metric metric = ISX_METRIC_L2;
    int threads;
    if ((metric_obj && isx_py_metric(metric_obj, &metric) < 0) || parse_leaf_size(leaf) < 0 ||
        isx_py_threads(threads_obj, &threads) < 0)
        return NULL;
    PyArrayObject *X = isx_py_matrix(x_obj, NPY_FLOAT32, 0, copy, "X");
    if (!X)
        return NULL;
    KDTreeObject *self = NULL;
    isx_kdtree *kd = NULL;
    int rc = isx_kdtree_create(metric, (size_t)PyArray_DIM(X, 1), (size_t)leaf, &kd);
    if (rc) {
        isx_py_raise(rc);
        goto error;
    }
    if (isx_py_fill(kd, copy ? kd_core_add : kd_core_borrow, X, ids_obj, threads) < 0)
        goto error;
    self = (KDTreeObject *)((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 0);
    if (!self)
        goto error;
    self->index = kd;
    if (!copy && isx_kdtree_borrows(kd)) {
        self->owner = (PyObject *)X;
        X = NULL;
    }
    Py_XDECREF(X);
    return (PyObject *)self;
error:
    isx_kdtree_destroy(kd);
    Py_XDECREF(X);
    return NULL;
}

static PyObject *kd_search(KDTreeObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"Q", "k", "eps", "max_leaves", "filter", "threads", NULL};
    PyObject *q_obj, *k_obj = NULL, *leaves_obj = Py_None, *threads_obj = Py_None, *filter_obj = Py_None;
    double eps = 0.0;
    if (!kd_ready(self) || !PyArg_ParseTupleAndKeywords(args, kw, "O|O$dOOO:search", kwlist, &q_obj, &k_obj, &eps,
                                                        &leaves_obj, &filter_obj, &threads_obj))
        return NULL;
    Py_ssize_t k = 10;
    int threads;
    if ((k_obj && isx_py_parse_k(k_obj, &k) < 0) || isx_py_threads(threads_obj, &threads) < 0)
        return NULL;
    if (!(eps >= 0.0) || isinf(eps))
    {
        char text[64];
        PyOS_snprintf(text, sizeof(text), "%g", eps);
        return PyErr_Format(PyExc_ValueError, "eps: expected a finite number >= 0, found %s", text);
    }
    isx_kdtree_params params = {(float)eps, 0};
    if (leaves_obj != Py_None) {
        Py_ssize_t ml = PyLong_Check(leaves_obj) && !PyBool_Check(leaves_obj) ? PyLong_AsSsize_t(leaves_obj) : -2;
        if (ml == -1 && PyErr_Occurred())
            return NULL;
        if (ml < 1)
            return PyErr_Format(PyExc_ValueError, "max_leaves: expected None or an int >= 1, found %R", leaves_obj);
        params.max_leaves = (size_t)ml;
    }
    isx_kdtree *kd = self->index;
    return isx_py_search(kd, kd_core_search, &params, NPY_FLOAT32, (npy_intp)isx_kdtree_dim(kd), q_obj, (size_t)k,
                         threads, filter_obj);
}

static PyObject *kd_range_search(KDTreeObject *self, PyObject *args, PyObject *kw)
{
    if (!kd_ready(self))
        return NULL;
    isx_kdtree *kd = self->index;
    return isx_py_range_search(kd, kd_core_range_search, NPY_FLOAT32, (npy_intp)isx_kdtree_dim(kd), args, kw);
}

static PyObject *kd_remove(KDTreeObject *self, PyObject *ids_obj)
{
    if (!kd_ready(self))
        return NULL;
    PyObject *removed = isx_py_remove(self->index, kd_core_remove, ids_obj, 0);
    if (removed)
        kd_drop_owner(self);
    return removed;
}

static PyObject *kd_get(KDTreeObject *self, PyObject *ids_obj)
{
    if (!kd_ready(self))
        return NULL;
    return isx_py_get(self->index, kd_core_get, NPY_FLOAT32, (npy_intp)isx_kdtree_dim(self->index), ids_obj);
}

/* From a snapshot of the live points, which the tree need not be locked for. */
static int kd_core_describe(void *index, isx_py_writer *w)
{
    isx_header h;
    isx_section_out secs[ISX_KDTREE_SECTIONS + 1];
    uint32_t nsecs;
    isx_kdtree_snapshot snap;
    int rc = isx_kdtree_describe(index, &h, secs, &nsecs, &snap);
    if (rc == ISX_OK) {
        rc = isx_py_write(w, &h, secs, nsecs);
        isx_kdtree_release_snapshot(&snap);
    }
    return rc;
}

static PyObject *kd_save(KDTreeObject *self, PyObject *args, PyObject *kw)
{
    return kd_ready(self) ? isx_py_save(self->index, kd_core_describe, args, kw) : NULL;
}

static PyObject *kd_to_bytes(KDTreeObject *self, PyObject *noargs)
{
    (void)noargs;
    return kd_ready(self) ? isx_py_to_bytes(self->index, kd_core_describe) : NULL;
}

static PyObject *kd_get_ids(KDTreeObject *self, void *closure)
{
    (void)closure;
    return kd_ready(self) ? isx_py_index_ids(self->index, kd_core_count, kd_core_ids) : NULL;
}

static PyObject *kd_get_dim(KDTreeObject *self, void *c)
{
    (void)c;
    return kd_ready(self) ? PyLong_FromSize_t(isx_kdtree_dim(self->index)) : NULL;
}

static PyObject *kd_get_leaf_size(KDTreeObject *self, void *c)
{
    (void)c;
    return kd_ready(self) ? PyLong_FromSize_t(isx_kdtree_leaf_size(self->index)) : NULL;
}

static PyObject *kd_get_metric(KDTreeObject *self, void *c)
{
    (void)c;
    return kd_ready(self) ? PyUnicode_FromString(isx_metric_name(isx_kdtree_metric(self->index))) : NULL;
}

static PyObject *kd_get_borrowed(KDTreeObject *self, void *c)
{
    (void)c;
    return kd_ready(self) ? PyBool_FromLong(isx_kdtree_borrows(self->index)) : NULL;
}

static PyObject *kd_get_memory(KDTreeObject *self, void *c)
{
    (void)c;
    return kd_ready(self) ? PyLong_FromSize_t(isx_kdtree_memory(self->index)) : NULL;
}

static Py_ssize_t kd_len(KDTreeObject *self)
{
    return kd_ready(self) ? (Py_ssize_t)isx_kdtree_count(self->index) : -1;
}

static PyObject *kd_repr(KDTreeObject *self)
{
    if (!self->index)
        return PyUnicode_FromString("KDTreeIndex(<uninitialised>)");
    return PyUnicode_FromFormat("KDTreeIndex(dim=%zu, metric=\"%s\", leaf_size=%zu, count=%zu)",
                                isx_kdtree_dim(self->index), isx_metric_name(isx_kdtree_metric(self->index)),
                                isx_kdtree_leaf_size(self->index), isx_kdtree_count(self->index));
}

static PyMethodDef kd_methods[] = {
    {"add", (PyCFunction)(void (*)(void))kd_add, METH_VARARGS | METH_KEYWORDS,
     "add(X, ids=None, *, threads=None)\n--\n\n"
     "Add vectors X (n, dim) (copied; other numeric dtypes are converted).  ids\n"
     "default to the next unused ids; an id already present has its vector\n"
     "replaced.  Rows go to a small buffer searched by brute force and are merged\n"
     "into trees on a logarithmic schedule, so adds never rebuild the whole index\n"
     "each time and searches stay exact.  ValueError for NaN/Inf, negative or\n"
     "repeated ids."},
    {"search", (PyCFunction)(void (*)(void))kd_search, METH_VARARGS | METH_KEYWORDS,
     "search(Q, k=10, *, eps=0.0, max_leaves=None, filter=None, threads=None)\n--\n\n"
     "k nearest neighbours of each query row.  Returns (D, I): float32 and int64\n"
     "arrays of shape (nq, k), nearest first, padded with inf / -1 when fewer than\n"
     "k vectors (or allowed ids) exist.  Exact by default; with eps > 0 the i-th\n"
     "returned distance is within a factor (1 + eps) of the true i-th distance\n"
     "(as scipy's cKDTree; for l2 the factor applies to the Euclidean distance);\n"
     "max_leaves bounds the leaves visited per query (approximate).  filter: a bool\n"
     "mask over ids (mask[id]; len(mask) > the largest id) or an integer array of\n"
     "allowed ids (a 0/1 integer array is refused: pass mask.astype(bool)).  Queries run in parallel\n"
     "without the GIL; thread-safe, also during add/remove."},
    {"range_search", (PyCFunction)(void (*)(void))kd_range_search, METH_VARARGS | METH_KEYWORDS,
     "range_search(Q, radius, *, filter=None, threads=None)\n--\n\n"
     "All vectors with distance < radius (squared for l2).  Returns (lims, D, I) as\n"
     "FlatIndex does: the hits of query i are D[lims[i]:lims[i+1]], I[...], sorted."},
    {"remove", (PyCFunction)kd_remove, METH_O,
     "remove(ids)\n--\n\nRemove these ids (absent ids are ignored); returns how many were removed."},
    {"get", (PyCFunction)kd_get, METH_O,
     "get(ids)\n--\n\nCopies of the stored vectors of ids (one row for a scalar id); KeyError if absent."},
    {"save", (PyCFunction)(void (*)(void))kd_save, METH_VARARGS | METH_KEYWORDS,
     "save(path)\n--\n\nWrite the index atomically; the tree is rebuilt on load (see docs/FORMAT.md)."},
    {"to_bytes", (PyCFunction)kd_to_bytes, METH_NOARGS, "to_bytes()\n--\n\nThe saved file's bytes."},
    {"__reduce__", (PyCFunction)isx_py_reduce, METH_NOARGS, NULL},
    {"from_array", (PyCFunction)(void (*)(void))kd_from_array, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "from_array(X, metric=\"l2\", *, copy=False, ids=None, leaf_size=12, threads=None)\n--\n\n"
     "Build a tree over X.  With copy=False (the default) X is neither copied nor\n"
     "written: the tree keeps a permutation of its rows and a reference to X, which\n"
     "must be C-contiguous float32.  copy=True copies the rows, stored in tree order:\n"
     "leaf scans then read memory in sequence, which searches faster (up to about\n"
     "1.5x in 3 to 16 dimensions, see benchmarks/bench_kdtree.py) at the cost of a\n"
     "copy.  memory_usage tells what the index itself holds."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef kd_getset[] = {
    {"dim", (getter)kd_get_dim, NULL, "dimension", NULL},
    {"metric", (getter)kd_get_metric, NULL, "metric name", NULL},
    {"leaf_size", (getter)kd_get_leaf_size, NULL, "points per leaf at most", NULL},
    {"ids", (getter)kd_get_ids, NULL, "ids of the stored vectors (a copy, in no particular order)", NULL},
    {"borrowed", (getter)kd_get_borrowed, NULL, "True while a tree reads memory the index does not own", NULL},
    {"memory_usage", (getter)kd_get_memory, NULL,
     "bytes the index allocated (trees, ids, add buffer, id map); borrowed rows are not counted", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PySequenceMethods kd_as_sequence = {.sq_length = (lenfunc)kd_len};

PyTypeObject isx_KDTreeType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "imgsearch.KDTreeIndex",
    .tp_basicsize = sizeof(KDTreeObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "KDTreeIndex(dim, metric=\"l2\", *, leaf_size=12)\n--\n\n"
              "KD-tree for exact (or (1+eps)-approximate) k-NN and radius search in low and\n"
              "medium dimensions.  metric: l2 (squared Euclidean) or l1.  Dynamic: add and\n"
              "remove without rebuilding the whole tree.",
    .tp_new = kd_new,
    .tp_init = (initproc)kd_init,
    .tp_dealloc = (destructor)kd_dealloc,
    .tp_methods = kd_methods,
    .tp_getset = kd_getset,
    .tp_as_sequence = &kd_as_sequence,
    .tp_repr = (reprfunc)kd_repr,
};
