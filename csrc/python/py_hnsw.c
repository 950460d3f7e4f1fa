/*
 * py_hnsw.c -- imgsearch.HNSWIndex, the Python face of index/hnsw.c.
 *
 * Same shape as py_flat.c: arguments are converted and checked with the GIL
 * held, outputs are allocated before the GIL is released, and every O(n)
 * call (add, search, remove, save, load) runs without the GIL on the C
 * index's own native threads.  The methods shared with the other indexes
 * are in py_index.c, called through the adapters below.
 */
#include "py_common.h"
#include "py_index.h"
#include "../index/hnsw.h"

typedef struct {
    PyObject_HEAD
    isx_hnsw *index;
} HNSWObject;

static int hnsw_ready(HNSWObject *self)
{
    if (!self->index) {
        PyErr_SetString(PyExc_RuntimeError, "HNSWIndex is not initialised (call HNSWIndex(dim, metric))");
        return 0;
    }
    return 1;
}

static size_t row_elems(const isx_hnsw *h)
{
    return h->dtype == ISX_DTYPE_BITS ? h->dim / 8 : h->dim;
}

static const char *dtype_name(isx_dtype d)
{
    switch (d) {
    case ISX_DTYPE_F16:
        return "float16";
    case ISX_DTYPE_I8:
        return "int8";
    case ISX_DTYPE_BITS:
        return "bits";
    default:
        return "float32";
    }
}

static int parse_dtype(PyObject *obj, isx_dtype *out)
{
    static const struct {
        const char *name;
        isx_dtype d;
    } names[] = {{"float32", ISX_DTYPE_F32}, {"float16", ISX_DTYPE_F16}, {"int8", ISX_DTYPE_I8}};
    PyObject *s = PyObject_Str(obj);
    if (!s)
        return -1;
    const char *txt = PyUnicode_AsUTF8(s);
    if (!txt) {
        Py_DECREF(s);
        return -1;
    }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(txt, names[i].name) == 0) {
            *out = names[i].d;
            Py_DECREF(s);
            return 0;
        }
    PyErr_Format(PyExc_ValueError, "dtype: expected 'float32', 'float16' or 'int8', found '%s'", txt);
    Py_DECREF(s);
    return -1;
}

static int parse_positive(PyObject *obj, const char *what, size_t lo, size_t hi, size_t *out)
{
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected an int, found %s", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    long long v = PyLong_AsLongLong(obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < (long long)lo || (unsigned long long)v > hi) {
        PyErr_Format(PyExc_ValueError, "Expected %zu <= %s <= %zu. Got %s=%lld", lo, what, hi, what, v);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

static PyObject *hnsw_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    return type->tp_alloc(type, 0);
}

static int hnsw_init(HNSWObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dim", "metric", "M", "ef_construction", "seed", "dtype", "refine", NULL};
    Py_ssize_t dim;
    PyObject *metric_obj = NULL, *dtype_obj = NULL, *refine_obj = Py_None;
    Py_ssize_t M = 16, efc = 200;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "n|OnnKOO:HNSWIndex", kwlist, &dim, &metric_obj, &M, &efc, &seed,
                                     &dtype_obj, &refine_obj))
        return -1;
    int refine = 0;
    if (refine_obj != Py_None) {
        if (!PyUnicode_Check(refine_obj) || (PyUnicode_CompareWithASCIIString(refine_obj, "float32") != 0 &&
                                             PyUnicode_CompareWithASCIIString(refine_obj, "f32") != 0)) {
            PyErr_Format(PyExc_ValueError, "refine: expected None or 'float32', found %R", refine_obj);
            return -1;
        }
        refine = 1;
    }
    isx_metric metric = ISX_METRIC_L2;
    isx_dtype dtype = ISX_DTYPE_F32;
    if (metric_obj && isx_py_metric(metric_obj, &metric) < 0)
        return -1;
    if (dtype_obj && dtype_obj != Py_None && parse_dtype(dtype_obj, &dtype) < 0)
        return -1;
    if (dim < 1) {
        PyErr_Format(PyExc_ValueError, "expected dim >= 1, found dim=%zd", dim);
        return -1;
    }
    if (M < 2 || efc < 1) {
        PyErr_Format(PyExc_ValueError, "expected M >= 2 and ef_construction >= 1, found M=%zd, ef_construction=%zd",
                     M, efc);
        return -1;
    }
    isx_hnsw *h;
    int rc = isx_hnsw_create(metric, (size_t)dim, dtype, (size_t)M, (size_t)efc, (uint64_t)seed, &h);
    if (rc == ISX_OK && refine && (rc = isx_hnsw_set_refine(h, 1)))
        isx_hnsw_destroy(h);
    if (rc) {
        isx_py_raise(rc);
        return -1;
    }
    isx_hnsw_destroy(self->index);
    self->index = h;
    return 0;
}

static void hnsw_dealloc(HNSWObject *self)
{
    isx_hnsw_destroy(self->index);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyObject *isx_py_hnsw_wrap(isx_hnsw *h)
{
    HNSWObject *self = (HNSWObject *)isx_HNSWType.tp_alloc(&isx_HNSWType, 0);
    if (!self) {
        isx_hnsw_destroy(h);
        return NULL;
    }
    self->index = h;
    return (PyObject *)self;
}

/* ---- the C index's calls in the shapes py_index.c takes ---- */

static int hnsw_core_add(void *index, const void *X, size_t n, const int64_t *ids, int nthreads)
{
    return isx_hnsw_add(index, X, n, ids, nthreads);
}

/* params: the search breadth ef (size_t, 0 = the index's default). */
static int hnsw_core_search(void *index, const void *params, const void *Q, size_t nq, size_t k,
                            const isx_filter *filter, int nthreads, float *D, int64_t *labels)
{
    return isx_hnsw_search(index, Q, nq, k, *(const size_t *)params, filter, nthreads, D, labels);
}

static int hnsw_core_remove(void *index, const int64_t *ids, size_t n, int nthreads, size_t *removed)
{
    return isx_hnsw_remove(index, ids, n, nthreads, removed);
}

static int hnsw_core_get(void *index, const int64_t *ids, size_t n, void *out)
{
    return isx_hnsw_get(index, ids, n, out);
}

static size_t hnsw_core_count(void *index)
{
    isx_hnsw *h = index;
    isx_hnsw_lock_read(h);
    size_t n = h->live;
    isx_hnsw_unlock(h);
    return n;
}

static int hnsw_core_ids(void *index, int64_t *out, size_t cap, size_t *n)
{
    return isx_hnsw_ids(index, out, cap, n);
}

static PyObject *hnsw_add(HNSWObject *self, PyObject *args, PyObject *kw)
{
    if (!hnsw_ready(self))
        return NULL;
    isx_hnsw *h = self->index;
    return isx_py_add(h, hnsw_core_add, isx_py_row_dtype(h->dtype), (npy_intp)row_elems(h), args, kw);
}

static PyObject *hnsw_search(HNSWObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"Q", "k", "ef", "filter", "threads", NULL};
    PyObject *q_obj, *k_obj = NULL, *ef_obj = Py_None, *threads_obj = Py_None, *filter_obj = Py_None;
    if (!hnsw_ready(self) ||
        !PyArg_ParseTupleAndKeywords(args, kw, "O|O$OOO:search", kwlist, &q_obj, &k_obj, &ef_obj, &filter_obj,
                                     &threads_obj))
        return NULL;
    size_t k = 10, ef = 0;
    int threads;
    if ((k_obj && parse_positive(k_obj, "k", 1, ISX_MAX_K, &k) < 0) ||
        (ef_obj != Py_None && parse_positive(ef_obj, "ef", 1, ISX_HNSW_MAX_EF, &ef) < 0) ||
        isx_py_threads(threads_obj, &threads) < 0)
        return NULL;
    isx_hnsw *h = self->index;
    return isx_py_search(h, hnsw_core_search, &ef, isx_py_row_dtype(h->dtype), (npy_intp)row_elems(h), q_obj, k,
                         threads, filter_obj);
}

static PyObject *hnsw_remove(HNSWObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"ids", "threads", NULL};
    PyObject *ids_obj, *threads_obj = Py_None;
    if (!hnsw_ready(self) || !PyArg_ParseTupleAndKeywords(args, kw, "O|$O:remove", kwlist, &ids_obj, &threads_obj))
        return NULL;
    int threads;
    if (isx_py_threads(threads_obj, &threads) < 0)
        return NULL;
    return isx_py_remove(self->index, hnsw_core_remove, ids_obj, threads);
}

static PyObject *hnsw_get(HNSWObject *self, PyObject *ids_obj)
{
    if (!hnsw_ready(self))
        return NULL;
    isx_hnsw *h = self->index;
    return isx_py_get(h, hnsw_core_get, isx_py_row_dtype(h->dtype), (npy_intp)row_elems(h), ids_obj);
}

static PyObject *hnsw_check(HNSWObject *self, PyObject *noargs)
{
    (void)noargs;
    if (!hnsw_ready(self))
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_hnsw_check(self->index);
    Py_END_ALLOW_THREADS
    if (rc)
        return PyErr_Format(PyExc_AssertionError, "HNSW graph invariant violated: %s", isx_last_error());
    Py_RETURN_TRUE;
}

/* Under the read lock, which keeps the described sections valid. */
static int hnsw_core_describe(void *index, isx_py_writer *w)
{
    isx_hnsw *h = index;
    isx_header hd;
    isx_section_out secs[ISX_HNSW_SECTIONS + 1];
    uint32_t nsecs;
    uint8_t parm[1024];
    uint32_t *upper = NULL;
    isx_hnsw_lock_read(h);
    int rc = isx_hnsw_describe(h, &hd, secs, &nsecs, parm, sizeof(parm), &upper);
    if (rc == ISX_OK)
        rc = isx_py_write(w, &hd, secs, nsecs);
    isx_hnsw_unlock(h);
    free(upper);
    return rc;
}

static PyObject *hnsw_save(HNSWObject *self, PyObject *args, PyObject *kw)
{
    return hnsw_ready(self) ? isx_py_save(self->index, hnsw_core_describe, args, kw) : NULL;
}

static PyObject *hnsw_to_bytes(HNSWObject *self, PyObject *noargs)
{
    (void)noargs;
    return hnsw_ready(self) ? isx_py_to_bytes(self->index, hnsw_core_describe) : NULL;
}

static PyObject *hnsw_get_ids(HNSWObject *self, void *closure)
{
    (void)closure;
    return hnsw_ready(self) ? isx_py_index_ids(self->index, hnsw_core_count, hnsw_core_ids) : NULL;
}

static PyObject *hnsw_get_dim(HNSWObject *self, void *c)
{
    (void)c;
    return hnsw_ready(self) ? PyLong_FromSize_t(self->index->dim) : NULL;
}

static PyObject *hnsw_get_metric(HNSWObject *self, void *c)
{
    (void)c;
    return hnsw_ready(self) ? PyUnicode_FromString(isx_metric_name(self->index->metric)) : NULL;
}

static PyObject *hnsw_get_dtype(HNSWObject *self, void *c)
{
    (void)c;
    return hnsw_ready(self) ? PyUnicode_FromString(dtype_name(self->index->dtype)) : NULL;
}

static PyObject *hnsw_get_refine(HNSWObject *self, void *c)
{
    (void)c;
    if (!hnsw_ready(self))
        return NULL;
    if (self->index->refine)
        return PyUnicode_FromString("float32");
    Py_RETURN_NONE;
}

static PyObject *hnsw_get_M(HNSWObject *self, void *c)
{
    (void)c;
    return hnsw_ready(self) ? PyLong_FromSize_t(self->index->M) : NULL;
}

static PyObject *hnsw_get_efc(HNSWObject *self, void *c)
{
    (void)c;
    return hnsw_ready(self) ? PyLong_FromSize_t(self->index->ef_construction) : NULL;
}

static PyObject *hnsw_get_ef(HNSWObject *self, void *c)
{
    (void)c;
    return hnsw_ready(self) ? PyLong_FromSize_t(self->index->ef_search) : NULL;
}

static int hnsw_set_ef(HNSWObject *self, PyObject *value, void *c)
{
    (void)c;
    size_t ef;
    if (!hnsw_ready(self))
        return -1;
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "ef cannot be deleted");
        return -1;
    }
    if (parse_positive(value, "ef", 1, ISX_HNSW_MAX_EF, &ef) < 0)
        return -1;
    int rc = isx_hnsw_set_ef(self->index, ef);
    if (rc) {
        isx_py_raise(rc);
        return -1;
    }
    return 0;
}

static PyObject *hnsw_get_memory(HNSWObject *self, void *c)
{
    (void)c;
    return hnsw_ready(self) ? PyLong_FromSize_t(isx_hnsw_memory(self->index)) : NULL;
}

static PyObject *hnsw_get_mapped(HNSWObject *self, void *c)
{
    (void)c;
    return hnsw_ready(self) ? PyBool_FromLong(!self->index->level0_owned) : NULL;
}

static Py_ssize_t hnsw_len(HNSWObject *self)
{
    return hnsw_ready(self) ? (Py_ssize_t)self->index->live : -1;
}

static PyObject *hnsw_repr(HNSWObject *self)
{
    if (!self->index)
        return PyUnicode_FromString("HNSWIndex(<uninitialised>)");
    isx_hnsw *h = self->index;
    return PyUnicode_FromFormat("HNSWIndex(dim=%zu, metric=\"%s\", M=%zu, ef_construction=%zu, dtype=\"%s\"%s, "
                                "count=%zu)", h->dim, isx_metric_name(h->metric), h->M, h->ef_construction,
                                dtype_name(h->dtype), h->refine ? ", refine=\"float32\"" : "", h->live);
}

static PyMethodDef hnsw_methods[] = {
    {"add", (PyCFunction)(void (*)(void))hnsw_add, METH_VARARGS | METH_KEYWORDS,
     "add(X, ids=None, *, threads=None)\n--\n\n"
     "Insert vectors X (n, dim) float32 (packed uint8 for hamming), on `threads`\n"
     "native threads (default: all CPUs) without the GIL.  ids default to the next\n"
     "unused ids; an id already present has its vector replaced.  Capacity grows by\n"
     "itself.  Searches from other threads wait until the add is done."},
    {"search", (PyCFunction)(void (*)(void))hnsw_search, METH_VARARGS | METH_KEYWORDS,
     "search(Q, k=10, *, ef=None, filter=None, threads=None)\n--\n\n"
     "Approximate k nearest neighbours.  Returns (D, I), float32 and int64 (nq, k),\n"
     "nearest first, padded with inf / -1 when fewer are found (never an error).\n"
     "ef (default: the `ef` property) is the search breadth, at least k; larger is\n"
     "slower and more exact.  filter: a bool mask over ids (mask[id]; len(mask) >\n"
     "the largest id) or an integer array of allowed ids (a 0/1 integer array is\n"
     "refused: pass mask.astype(bool)), applied during the walk; a selective filter switches to an exact scan of\n"
     "the allowed vectors.  Queries run in parallel (threads=None: all CPUs).\n"
     "Thread-safe: many searches may run at once."},
    {"remove", (PyCFunction)(void (*)(void))hnsw_remove, METH_VARARGS | METH_KEYWORDS,
     "remove(ids, *, threads=None)\n--\n\n"
     "Remove ids (absent ids are ignored) and repair the graph around them; their\n"
     "slots are reused by later adds.  Returns how many were removed.  Searches\n"
     "from other threads wait until the removal is done."},
    {"get", (PyCFunction)hnsw_get, METH_O,
     "get(ids)\n--\n\nThe stored vectors of ids as float32 (unit length for cosine; decoded\n"
     "for float16/int8), one row for a scalar id; KeyError if absent."},
    {"check", (PyCFunction)hnsw_check, METH_NOARGS,
     "check()\n--\n\nVerify the graph's invariants (links in range and to live nodes, degree\n"
     "bounds, levels, entry point, id map); True, or AssertionError naming the fault."},
    {"save", (PyCFunction)(void (*)(void))hnsw_save, METH_VARARGS | METH_KEYWORDS,
     "save(path)\n--\n\nWrite the index atomically; imgsearch.load(path, mmap=True) maps it back."},
    {"to_bytes", (PyCFunction)hnsw_to_bytes, METH_NOARGS, "to_bytes()\n--\n\nThe saved file's bytes."},
    {"__reduce__", (PyCFunction)isx_py_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef hnsw_getset[] = {
    {"dim", (getter)hnsw_get_dim, NULL, "dimension (bits for hamming)", NULL},
    {"metric", (getter)hnsw_get_metric, NULL, "metric name", NULL},
    {"dtype", (getter)hnsw_get_dtype, NULL, "storage type: float32, float16, int8 or bits", NULL},
    {"refine", (getter)hnsw_get_refine, NULL, "'float32' when float32 rows re-rank the candidates, else None", NULL},
    {"M", (getter)hnsw_get_M, NULL, "links per node on the upper levels (2M at level 0)", NULL},
    {"ef_construction", (getter)hnsw_get_efc, NULL, "search breadth used while inserting", NULL},
    {"ef", (getter)hnsw_get_ef, (setter)hnsw_set_ef, "default search breadth (saved with the index)", NULL},
    {"ids", (getter)hnsw_get_ids, NULL, "ids of the stored vectors (a copy)", NULL},
    {"memory_usage", (getter)hnsw_get_memory, NULL, "bytes held by the index", NULL},
    {"mapped", (getter)hnsw_get_mapped, NULL, "True while the graph is read from a loaded file (mmap)", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PySequenceMethods hnsw_as_sequence = {.sq_length = (lenfunc)hnsw_len};

PyTypeObject isx_HNSWType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "imgsearch.HNSWIndex",
    .tp_basicsize = sizeof(HNSWObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "HNSWIndex(dim, metric=\"l2\", M=16, ef_construction=200, seed=0, dtype=\"float32\", refine=None)\n--\n\n"
              "Approximate nearest-neighbour index (HNSW graph).  metric: l2, ip, cosine\n"
              "(vectors normalised at insert), l1, hamming (dim in bits, packed uint8 rows).\n"
              "dtype: float32, float16 (half the memory) or int8 (scalar-quantised, a quarter).\n"
              "refine=\"float32\" (float16 / int8 only): also keep the float32 rows; the graph\n"
              "is walked on the compressed rows and each query's ef candidates are re-ranked\n"
              "with exact distances -- the recall of float32 at up to twice its speed, for\n"
              "the memory of both.\n"
              "With threads=1 and a seed the graph is deterministic.\n\n"
              "Thread safety: search, get, check, len, ids and the properties may run from\n"
              "any number of threads at once.  add, remove and setting ef are exclusive: a\n"
              "search that arrives during them waits and then sees the whole change (never\n"
              "a half-built graph), so searches concurrent with adds are safe and return\n"
              "valid ids.  All of them release the GIL for their native work.",
    .tp_new = hnsw_new,
    .tp_init = (initproc)hnsw_init,
    .tp_dealloc = (destructor)hnsw_dealloc,
    .tp_methods = hnsw_methods,
    .tp_getset = hnsw_getset,
    .tp_as_sequence = &hnsw_as_sequence,
    .tp_repr = (reprfunc)hnsw_repr,
};
