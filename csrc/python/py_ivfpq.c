/*
 * py_ivfpq.c -- imgsearch.IVFPQIndex, the Python face of index/ivfpq.c.
 *
 * Same shape as py_hnsw.c: arguments are converted and checked with the GIL
 * held, outputs allocated before it is released, and every O(n) call
 * (train, add, search, remove, save, load) runs without the GIL on the C
 * index's own native threads.  The methods shared with the other indexes
 * are in py_index.c, called through the adapters below.
 */
#include "py_common.h"
#include "py_index.h"
#include "../index/ivfpq.h"

typedef struct {
    PyObject_HEAD
    isx_ivfpq *index;
} IVFPQObject;

static int ivfpq_ready(IVFPQObject *self)
{
    if (!self->index) {
        PyErr_SetString(PyExc_RuntimeError, "IVFPQIndex is not initialised (call IVFPQIndex(dim, metric, ...))");
        return 0;
    }
    return 1;
}

static int parse_size(PyObject *obj, const char *what, size_t lo, size_t hi, size_t *out)
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

static const char *refine_name(isx_dtype r)
{
    return r == ISX_DTYPE_F32 ? "f32" : r == ISX_DTYPE_F16 ? "f16" : NULL;
}

static PyObject *ivfpq_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    return type->tp_alloc(type, 0);
}

static int ivfpq_init(IVFPQObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dim", "metric", "nlist", "m", "nbits", "refine", "seed", NULL};
    Py_ssize_t dim, nlist = 256, m = 0, nbits = 8;
    PyObject *metric_obj = NULL, *refine_obj = Py_None;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "n|O$nnnOK:IVFPQIndex", kwlist, &dim, &metric_obj, &nlist, &m, &nbits,
                                     &refine_obj, &seed))
        return -1;
    isx_metric metric = ISX_METRIC_L2;
    if (metric_obj && isx_py_metric(metric_obj, &metric) < 0)
        return -1;
    isx_dtype refine = 0;
    if (refine_obj != Py_None) {
        if (PyUnicode_Check(refine_obj) && (PyUnicode_CompareWithASCIIString(refine_obj, "f32") == 0 ||
                                            PyUnicode_CompareWithASCIIString(refine_obj, "float32") == 0))
            refine = ISX_DTYPE_F32;
        else if (PyUnicode_Check(refine_obj) && (PyUnicode_CompareWithASCIIString(refine_obj, "f16") == 0 ||
                                                 PyUnicode_CompareWithASCIIString(refine_obj, "float16") == 0))
            refine = ISX_DTYPE_F16;
        else {
            PyErr_Format(PyExc_ValueError, "refine: expected None, 'f32' or 'f16', found %R", refine_obj);
            return -1;
        }
    }
    if (dim < 1) {
        PyErr_Format(PyExc_ValueError, "expected dim >= 1, found dim=%zd", dim);
        return -1;
    }
    if (nlist < 1 || nbits < 1 || m < 0) {
        PyErr_Format(PyExc_ValueError, "expected nlist >= 1, m >= 1 and nbits in (4, 8), found nlist=%zd, m=%zd, "
                                       "nbits=%zd", nlist, m, nbits);
        return -1;
    }
    if (m == 0) { /* the default: sub-vectors of (about) 8 elements, m the largest divisor of dim <= dim / 8 */
        m = dim / 8 > 0 ? dim / 8 : 1;
        while (dim % m)
            m--;
    }
    isx_ivfpq *ix;
    int rc = isx_ivfpq_create(metric, (size_t)dim, (size_t)nlist, (size_t)m, (size_t)nbits, refine, (uint64_t)seed,
                              &ix);
    if (rc) {
        isx_py_raise(rc);
        return -1;
    }
    isx_ivfpq_destroy(self->index);
    self->index = ix;
    return 0;
}

static void ivfpq_dealloc(IVFPQObject *self)
{
    isx_ivfpq_destroy(self->index);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyObject *isx_py_ivfpq_wrap(isx_ivfpq *ix)
{
    IVFPQObject *self = (IVFPQObject *)isx_IVFPQType.tp_alloc(&isx_IVFPQType, 0);
    if (!self) {
        isx_ivfpq_destroy(ix);
        return NULL;
    }
    self->index = ix;
    return (PyObject *)self;
}

/* ---- the C index's calls in the shapes py_index.c takes ---- */

static int ivfpq_core_add(void *index, const void *X, size_t n, const int64_t *ids, int nthreads)
{
    return isx_ivfpq_add(index, X, n, ids, nthreads);
}

/* params: nprobe (size_t, 0 = the index's default). */
static int ivfpq_core_search(void *index, const void *params, const void *Q, size_t nq, size_t k,
                             const isx_filter *filter, int nthreads, float *D, int64_t *labels)
{
    return isx_ivfpq_search(index, Q, nq, k, *(const size_t *)params, filter, nthreads, D, labels);
}

static int ivfpq_core_remove(void *index, const int64_t *ids, size_t n, int nthreads, size_t *removed)
{
    (void)nthreads;
    return isx_ivfpq_remove(index, ids, n, removed);
}

static int ivfpq_core_get(void *index, const int64_t *ids, size_t n, void *out)
{
    return isx_ivfpq_get(index, ids, n, out);
}

static size_t ivfpq_core_count(void *index)
{
    isx_ivfpq *ix = index;
    isx_ivfpq_lock_read(ix);
    size_t n = ix->count;
    isx_ivfpq_unlock(ix);
    return n;
}

static int ivfpq_core_ids(void *index, int64_t *out, size_t cap, size_t *n)
{
    return isx_ivfpq_ids(index, out, cap, n);
}

static PyObject *ivfpq_train(IVFPQObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"X", "threads", NULL};
    PyObject *x_obj, *threads_obj = Py_None;
    int threads;
    if (!ivfpq_ready(self) ||
        !PyArg_ParseTupleAndKeywords(args, kw, "O|$O:train", kwlist, &x_obj, &threads_obj) ||
        isx_py_threads(threads_obj, &threads) < 0)
        return NULL;
    PyArrayObject *X = isx_py_matrix(x_obj, NPY_FLOAT32, (npy_intp)self->index->dim, 1, "X");
    if (!X)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_ivfpq_train(self->index, PyArray_DATA(X), (size_t)PyArray_DIM(X, 0), threads);
    Py_END_ALLOW_THREADS
    Py_DECREF(X);
    if (rc)
        return isx_py_raise(rc);
    Py_RETURN_NONE;
}

static PyObject *ivfpq_add(IVFPQObject *self, PyObject *args, PyObject *kw)
{
    if (!ivfpq_ready(self))
        return NULL;
    return isx_py_add(self->index, ivfpq_core_add, NPY_FLOAT32, (npy_intp)self->index->dim, args, kw);
}

static PyObject *ivfpq_search(IVFPQObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"Q", "k", "nprobe", "filter", "threads", NULL};
    PyObject *q_obj, *k_obj = NULL, *nprobe_obj = Py_None, *threads_obj = Py_None, *filter_obj = Py_None;
    if (!ivfpq_ready(self) ||
        !PyArg_ParseTupleAndKeywords(args, kw, "O|O$OOO:search", kwlist, &q_obj, &k_obj, &nprobe_obj, &filter_obj,
                                     &threads_obj))
        return NULL;
    isx_ivfpq *ix = self->index;
    size_t k = 10, nprobe = 0;
    int threads;
    if ((k_obj && parse_size(k_obj, "k", 1, ISX_MAX_K, &k) < 0) ||
        (nprobe_obj != Py_None && parse_size(nprobe_obj, "nprobe", 1, ix->nlist, &nprobe) < 0) ||
        isx_py_threads(threads_obj, &threads) < 0)
        return NULL;
    return isx_py_search(ix, ivfpq_core_search, &nprobe, NPY_FLOAT32, (npy_intp)ix->dim, q_obj, k, threads,
                         filter_obj);
}

static PyObject *ivfpq_remove(IVFPQObject *self, PyObject *ids_obj)
{
    if (!ivfpq_ready(self))
        return NULL;
    return isx_py_remove(self->index, ivfpq_core_remove, ids_obj, 1);
}

static PyObject *ivfpq_get(IVFPQObject *self, PyObject *ids_obj)
{
    if (!ivfpq_ready(self))
        return NULL;
    return isx_py_get(self->index, ivfpq_core_get, NPY_FLOAT32, (npy_intp)self->index->dim, ids_obj);
}

/* _codes(ids) -> (codes uint8 (n, code_bytes) in pq.h's packed layout, lists int64 (n,)): for the tests' ADC oracle. */
static PyObject *ivfpq_codes(IVFPQObject *self, PyObject *ids_obj)
{
    if (!ivfpq_ready(self))
        return NULL;
    isx_ivfpq *ix = self->index;
    PyArrayObject *ids = isx_py_ids(ids_obj, -1, "ids"), *codes = NULL, *lists = NULL;
    if (!ids)
        return NULL;
    npy_intp shape[2] = {PyArray_SIZE(ids), (npy_intp)ix->pq.code_bytes};
    codes = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_UINT8);
    lists = (PyArrayObject *)PyArray_SimpleNew(1, shape, NPY_INT64);
    if (!codes || !lists)
        goto error;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_ivfpq_codes(ix, PyArray_DATA(ids), (size_t)shape[0], PyArray_DATA(codes), PyArray_DATA(lists));
    Py_END_ALLOW_THREADS
    if (rc) {
        isx_py_raise(rc);
        goto error;
    }
    Py_DECREF(ids);
    return Py_BuildValue("(NN)", codes, lists);
error:
    Py_XDECREF(ids);
    Py_XDECREF(codes);
    Py_XDECREF(lists);
    return NULL;
}

/* _centroids() -> (coarse (nlist, dim), pq (m, 2^nbits, dim / m)) float32 copies, for the tests' oracles. */
static PyObject *ivfpq_centroids(IVFPQObject *self, PyObject *noargs)
{
    (void)noargs;
    if (!ivfpq_ready(self))
        return NULL;
    isx_ivfpq *ix = self->index;
    npy_intp cs[2] = {(npy_intp)ix->nlist, (npy_intp)ix->dim};
    npy_intp ps[3] = {(npy_intp)ix->m, (npy_intp)1 << ix->nbits, (npy_intp)(ix->dim / ix->m)};
    PyArrayObject *c = (PyArrayObject *)PyArray_SimpleNew(2, cs, NPY_FLOAT32);
    PyArrayObject *p = (PyArrayObject *)PyArray_SimpleNew(3, ps, NPY_FLOAT32);
    if (!c || !p) {
        Py_XDECREF(c);
        Py_XDECREF(p);
        return NULL;
    }
    isx_ivfpq_lock_read(ix);
    int trained = ix->trained;
    if (trained) {
        memcpy(PyArray_DATA(c), ix->coarse, (size_t)PyArray_NBYTES(c));
        memcpy(PyArray_DATA(p), ix->pq.centroids, (size_t)PyArray_NBYTES(p));
    }
    isx_ivfpq_unlock(ix);
    if (!trained) {
        Py_DECREF(c);
        Py_DECREF(p);
        return isx_py_raise(isx_error(ISX_EINVAL, "IVFPQIndex is not trained: call train(X) first"));
    }
    return Py_BuildValue("(NN)", c, p);
}

/* Under the read lock, which keeps the described sections valid. */
static int ivfpq_core_describe(void *index, isx_py_writer *w)
{
    isx_ivfpq *ix = index;
    isx_header hd;
    isx_section_out secs[ISX_IVFPQ_SECTIONS + 1];
    uint32_t nsecs;
    uint8_t parm[1024];
    isx_ivfpq_save_buf *bufs = NULL;
    isx_ivfpq_lock_read(ix);
    int rc = isx_ivfpq_describe(ix, &hd, secs, &nsecs, parm, sizeof(parm), &bufs);
    if (rc == ISX_OK)
        rc = isx_py_write(w, &hd, secs, nsecs);
    isx_ivfpq_unlock(ix);
    isx_ivfpq_save_buf_free(bufs);
    return rc;
}

static PyObject *ivfpq_save(IVFPQObject *self, PyObject *args, PyObject *kw)
{
    return ivfpq_ready(self) ? isx_py_save(self->index, ivfpq_core_describe, args, kw) : NULL;
}

static PyObject *ivfpq_to_bytes(IVFPQObject *self, PyObject *noargs)
{
    (void)noargs;
    return ivfpq_ready(self) ? isx_py_to_bytes(self->index, ivfpq_core_describe) : NULL;
}

/* IVFPQIndex.load(path, mmap=True): imgsearch.load, refusing other kinds. */
static PyObject *ivfpq_load(PyObject *cls, PyObject *args, PyObject *kw)
{
    (void)cls;
    PyObject *mod = PyImport_ImportModule("imgsearch._core");
    PyObject *fn = mod ? PyObject_GetAttrString(mod, "load") : NULL;
    Py_XDECREF(mod);
    if (!fn)
        return NULL;
    static char *kwlist[] = {"path", "mmap", NULL};
    PyObject *path;
    int use_mmap = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p:load", kwlist, &path, &use_mmap)) {
        Py_DECREF(fn);
        return NULL;
    }
    PyObject *r = PyObject_CallFunction(fn, "OO", path, use_mmap ? Py_True : Py_False);
    Py_DECREF(fn);
    if (r && !PyObject_TypeCheck(r, &isx_IVFPQType)) {
        PyErr_Format(isx_IndexFormatError, "expected an IVF-PQ index file, found a %s", Py_TYPE(r)->tp_name);
        Py_CLEAR(r);
    }
    return r;
}

static PyObject *ivfpq_get_ids(IVFPQObject *self, void *closure)
{
    (void)closure;
    return ivfpq_ready(self) ? isx_py_index_ids(self->index, ivfpq_core_count, ivfpq_core_ids) : NULL;
}

#define SIZE_GETTER(name, expr)                                        \
    static PyObject *ivfpq_get_##name(IVFPQObject *self, void *c)      \
    {                                                                  \
        (void)c;                                                       \
        return ivfpq_ready(self) ? PyLong_FromSize_t(expr) : NULL;     \
    }
SIZE_GETTER(dim, self->index->dim)
SIZE_GETTER(nlist, self->index->nlist)
SIZE_GETTER(m, self->index->m)
SIZE_GETTER(nbits, self->index->nbits)
SIZE_GETTER(nprobe, self->index->nprobe)
SIZE_GETTER(k_factor, self->index->k_factor)
SIZE_GETTER(ntotal, ivfpq_core_count(self->index))
SIZE_GETTER(code_size, self->index->pq.code_bytes)
SIZE_GETTER(memory_usage, isx_ivfpq_memory(self->index, NULL))
#undef SIZE_GETTER

static PyObject *ivfpq_get_list_bytes(IVFPQObject *self, void *c)
{
    (void)c;
    size_t lists = 0;
    if (!ivfpq_ready(self))
        return NULL;
    isx_ivfpq_memory(self->index, &lists);
    return PyLong_FromSize_t(lists);
}

static PyObject *ivfpq_get_metric(IVFPQObject *self, void *c)
{
    (void)c;
    return ivfpq_ready(self) ? PyUnicode_FromString(isx_metric_name(self->index->metric)) : NULL;
}

static PyObject *ivfpq_get_refine(IVFPQObject *self, void *c)
{
    (void)c;
    if (!ivfpq_ready(self))
        return NULL;
    const char *r = refine_name(self->index->refine);
    if (r)
        return PyUnicode_FromString(r);
    Py_RETURN_NONE;
}

static PyObject *ivfpq_get_trained(IVFPQObject *self, void *c)
{
    (void)c;
    return ivfpq_ready(self) ? PyBool_FromLong(self->index->trained) : NULL;
}

static PyObject *ivfpq_get_mapped(IVFPQObject *self, void *c)
{
    (void)c;
    return ivfpq_ready(self) ? PyBool_FromLong(self->index->file && self->index->file->mapped) : NULL;
}

static int set_size(IVFPQObject *self, PyObject *value, const char *what, size_t hi,
                    int (*set)(isx_ivfpq *, size_t))
{
    size_t v;
    if (!ivfpq_ready(self))
        return -1;
    if (!value) {
        PyErr_Format(PyExc_AttributeError, "%s cannot be deleted", what);
        return -1;
    }
    if (parse_size(value, what, 1, hi, &v) < 0)
        return -1;
    int rc = set(self->index, v);
    if (rc) {
        isx_py_raise(rc);
        return -1;
    }
    return 0;
}

static int ivfpq_set_nprobe(IVFPQObject *self, PyObject *value, void *c)
{
    (void)c;
    return set_size(self, value, "nprobe", self->index ? self->index->nlist : 1, isx_ivfpq_set_nprobe);
}

static int ivfpq_set_k_factor(IVFPQObject *self, PyObject *value, void *c)
{
    (void)c;
    return set_size(self, value, "k_factor", ISX_IVFPQ_MAX_K_FACTOR, isx_ivfpq_set_k_factor);
}

static PyObject *ivfpq_get_precompute(IVFPQObject *self, void *c)
{
    (void)c;
    return ivfpq_ready(self) ? PyBool_FromLong(self->index->precomp != NULL) : NULL;
}

static int ivfpq_set_precompute(IVFPQObject *self, PyObject *value, void *c)
{
    (void)c;
    if (!ivfpq_ready(self))
        return -1;
    int on = value ? PyObject_IsTrue(value) : 0;
    if (on < 0)
        return -1;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_ivfpq_set_precompute(self->index, on);
    Py_END_ALLOW_THREADS
    if (rc) {
        isx_py_raise(rc);
        return -1;
    }
    return 0;
}

static Py_ssize_t ivfpq_len(IVFPQObject *self)
{
    return ivfpq_ready(self) ? (Py_ssize_t)ivfpq_core_count(self->index) : -1;
}

static PyObject *ivfpq_repr(IVFPQObject *self)
{
    if (!self->index)
        return PyUnicode_FromString("IVFPQIndex(<uninitialised>)");
    isx_ivfpq *ix = self->index;
    const char *r = refine_name(ix->refine);
    return PyUnicode_FromFormat("IVFPQIndex(dim=%zu, metric=\"%s\", nlist=%zu, m=%zu, nbits=%zu%s%s%s, count=%zu%s)",
                                ix->dim, isx_metric_name(ix->metric), ix->nlist, ix->m, ix->nbits,
                                r ? ", refine=\"" : "", r ? r : "", r ? "\"" : "", ivfpq_core_count(ix),
                                ix->trained ? "" : ", untrained");
}

static PyMethodDef ivfpq_methods[] = {
    {"train", (PyCFunction)(void (*)(void))ivfpq_train, METH_VARARGS | METH_KEYWORDS,
     "train(X, *, threads=None)\n--\n\n"
     "Learn the coarse quantizer (k-means, nlist centroids) and the PQ codebooks\n"
     "(on the residuals x - centroid) from X (n, dim) float32: n >= nlist and\n"
     "n >= 2^nbits.  Only on an empty index.  Deterministic for a seed."},
    {"add", (PyCFunction)(void (*)(void))ivfpq_add, METH_VARARGS | METH_KEYWORDS,
     "add(X, ids=None, *, threads=None)\n--\n\n"
     "Encode and insert X (n, dim) float32 (call train first).  ids default to the\n"
     "next unused ids; an id already present has its vector replaced; an id twice\n"
     "in one call is refused.  Searches from other threads wait until it is done."},
    {"search", (PyCFunction)(void (*)(void))ivfpq_search, METH_VARARGS | METH_KEYWORDS,
     "search(Q, k=10, *, nprobe=None, filter=None, threads=None)\n--\n\n"
     "Approximate k nearest neighbours.  Returns (D, I), float32 and int64 (nq, k),\n"
     "nearest first, padded with inf / -1.  nprobe (default: the `nprobe` property)\n"
     "lists are scanned.  D is the ADC distance from the codes, or the exact one\n"
     "with refine (l2 squared, ip 1 - dot, cosine 1 - cos).  filter: a bool mask\n"
     "over ids or an integer array of allowed ids, tested during the scan.  Queries\n"
     "run in parallel without the GIL; many searches may run at once."},
    {"remove", (PyCFunction)ivfpq_remove, METH_O,
     "remove(ids)\n--\n\nRemove ids (absent ids are ignored); returns how many were removed."},
    {"get", (PyCFunction)ivfpq_get, METH_O,
     "get(ids)\n--\n\nThe vectors of ids as float32: the stored rows with refine (unit length\n"
     "for cosine; rounded to float16 with refine='f16'), otherwise the PQ\n"
     "reconstruction centroid + decoded residual -- an approximation.  KeyError if absent."},
    {"_codes", (PyCFunction)ivfpq_codes, METH_O, NULL},
    {"_centroids", (PyCFunction)ivfpq_centroids, METH_NOARGS, NULL},
    {"save", (PyCFunction)(void (*)(void))ivfpq_save, METH_VARARGS | METH_KEYWORDS,
     "save(path, *, meta=None)\n--\n\nWrite the index atomically (lists compacted to their sizes)."},
    {"load", (PyCFunction)(void (*)(void))ivfpq_load, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "load(path, mmap=True)\n--\n\nLoad a saved IVFPQIndex; with mmap the codes, ids and refine rows\n"
     "are used in place from a read-only mapping (a list is copied when it first changes)."},
    {"to_bytes", (PyCFunction)ivfpq_to_bytes, METH_NOARGS, "to_bytes()\n--\n\nThe saved file's bytes."},
    {"__reduce__", (PyCFunction)isx_py_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef ivfpq_getset[] = {
    {"dim", (getter)ivfpq_get_dim, NULL, "dimension", NULL},
    {"metric", (getter)ivfpq_get_metric, NULL, "metric name", NULL},
    {"nlist", (getter)ivfpq_get_nlist, NULL, "number of inverted lists (coarse centroids)", NULL},
    {"m", (getter)ivfpq_get_m, NULL, "sub-quantizers per code", NULL},
    {"nbits", (getter)ivfpq_get_nbits, NULL, "bits per sub-code (4: fast-scan, 8)", NULL},
    {"code_size", (getter)ivfpq_get_code_size, NULL, "bytes per code", NULL},
    {"refine", (getter)ivfpq_get_refine, NULL, "'f32' / 'f16' when stored rows re-rank the candidates, else None",
     NULL},
    {"is_trained", (getter)ivfpq_get_trained, NULL, "True once train() has run", NULL},
    {"ntotal", (getter)ivfpq_get_ntotal, NULL, "number of vectors (as len())", NULL},
    {"nprobe", (getter)ivfpq_get_nprobe, (setter)ivfpq_set_nprobe, "default lists scanned per query (saved)", NULL},
    {"k_factor", (getter)ivfpq_get_k_factor, (setter)ivfpq_set_k_factor,
     "candidates re-ranked per result (refine, and 4-bit codes): k_factor * k (saved)", NULL},
    {"ids", (getter)ivfpq_get_ids, NULL, "ids of the stored vectors (a copy), list by list", NULL},
    {"memory_usage", (getter)ivfpq_get_memory_usage, NULL, "bytes held by the index (mapped sections included)", NULL},
    {"list_bytes", (getter)ivfpq_get_list_bytes, NULL, "bytes of the inverted lists (codes, ids, slots)", NULL},
    {"mapped", (getter)ivfpq_get_mapped, NULL, "True when loaded with mmap=True", NULL},
    {"_precompute", (getter)ivfpq_get_precompute, (setter)ivfpq_set_precompute, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PySequenceMethods ivfpq_as_sequence = {.sq_length = (lenfunc)ivfpq_len};

PyTypeObject isx_IVFPQType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "imgsearch.IVFPQIndex",
    .tp_basicsize = sizeof(IVFPQObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "IVFPQIndex(dim, metric=\"l2\", *, nlist=256, m=None, nbits=8, refine=None, seed=0)\n--\n\n"
              "Compressed approximate index: an inverted file of nlist lists holding the PQ\n"
              "codes (m sub-quantizers of nbits = 8 or 4 bits: m * nbits / 8 bytes per vector,\n"
              "plus an 8-byte id) of each vector's residual from its list's centroid.\n"
              "metric: l2, ip or cosine (vectors normalised).  m defaults to the largest\n"
              "divisor of dim up to dim / 8.  nbits=4 scans with AVX2 fast-scan (uint8\n"
              "tables, 32 codes per instruction).  refine='f32' / 'f16' also keeps the\n"
              "vectors and re-ranks k_factor * k candidates exactly.  train(X) before add.\n"
              "range_search is not offered: ADC distances are approximations, so 'all within\n"
              "r' would silently miss vectors.\n\n"
              "Thread safety: search, get, len, ids and the properties may run from any\n"
              "number of threads at once; train, add, remove and the setters are exclusive\n"
              "(a search that arrives meanwhile waits).  All release the GIL.",
    .tp_new = ivfpq_new,
    .tp_init = (initproc)ivfpq_init,
    .tp_dealloc = (destructor)ivfpq_dealloc,
    .tp_methods = ivfpq_methods,
    .tp_getset = ivfpq_getset,
    .tp_as_sequence = &ivfpq_as_sequence,
    .tp_repr = (reprfunc)ivfpq_repr,
};
