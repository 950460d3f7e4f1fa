/*
 * py_index.c -- the methods the three index bindings share (see py_index.h).
 *
 * Each follows the bindings' one pattern: convert and check the arguments
 * with the GIL held, allocate every output, release the GIL for the C call,
 * then map its status to an exception.  A function takes a reference to
 * each object it makes and drops them all at its one error label.
 */
#include "py_index.h"

/* ======================================================================
 * Add
 * ====================================================================== */

int isx_py_fill(void *index, isx_py_add_fn fill, PyArrayObject *X, PyObject *ids_obj, int threads)
{
    PyArrayObject *ids = NULL;
    if (ids_obj != Py_None && !(ids = isx_py_ids(ids_obj, PyArray_DIM(X, 0), "ids")))
        return -1;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fill(index, PyArray_DATA(X), (size_t)PyArray_DIM(X, 0), ids ? (const int64_t *)PyArray_DATA(ids) : NULL,
              threads);
    Py_END_ALLOW_THREADS
    Py_XDECREF(ids);
    if (rc) {
        isx_py_raise(rc);
        return -1;
    }
    return 0;
}

PyObject *isx_py_add(void *index, isx_py_add_fn add, int dtype, npy_intp ncols, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"X", "ids", "threads", NULL};
    PyObject *x_obj, *ids_obj = Py_None, *threads_obj = Py_None;
    int threads;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O$O:add", kwlist, &x_obj, &ids_obj, &threads_obj) ||
        isx_py_threads(threads_obj, &threads) < 0)
        return NULL;
    PyArrayObject *X = isx_py_matrix(x_obj, dtype, ncols, 1, "X");
    if (!X)
        return NULL;
    int rc = isx_py_fill(index, add, X, ids_obj, threads);
    Py_DECREF(X);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ======================================================================
 * Search
 * ====================================================================== */

PyObject *isx_py_search(void *index, isx_py_knn_fn knn, const void *params, int dtype, npy_intp ncols,
                        PyObject *q_obj, size_t k, int threads, PyObject *filter_obj)
{
    isx_filter flt;
    PyArrayObject *keep = NULL, *D = NULL, *L = NULL;
    PyArrayObject *Q = isx_py_matrix(q_obj, dtype, ncols, 1, "queries");
    if (!Q || isx_py_filter(filter_obj, &flt, &keep) < 0)
        goto error;
    npy_intp shape[2] = {PyArray_DIM(Q, 0), (npy_intp)k};
    D = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_FLOAT32);
    L = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_INT64);
    if (!D || !L)
        goto error;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = knn(index, params, PyArray_DATA(Q), (size_t)shape[0], k, &flt, threads, PyArray_DATA(D), PyArray_DATA(L));
    Py_END_ALLOW_THREADS
    if (rc) {
        isx_py_raise(rc);
        goto error;
    }
    Py_DECREF(Q);
    Py_XDECREF(keep);
    return Py_BuildValue("(NN)", D, L);
error:
    Py_XDECREF(Q);
    Py_XDECREF(keep);
    Py_XDECREF(D);
    Py_XDECREF(L);
    return NULL;
}

PyObject *isx_py_range_search(void *index, isx_py_range_fn range, int dtype, npy_intp ncols, PyObject *args,
                              PyObject *kw)
{
    static char *kwlist[] = {"Q", "radius", "threads", "filter", NULL};
    PyObject *q_obj, *threads_obj = Py_None, *filter_obj = Py_None;
    double radius;
    int threads;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Od|$OO:range_search", kwlist, &q_obj, &radius, &threads_obj,
                                     &filter_obj) ||
        isx_py_threads(threads_obj, &threads) < 0)
        return NULL;
    isx_filter flt;
    PyArrayObject *keep = NULL, *lims = NULL;
    PyObject *Dout = NULL, *Iout = NULL;
    float *D = NULL;
    int64_t *Ilist = NULL;
    PyArrayObject *Q = isx_py_matrix(q_obj, dtype, ncols, 1, "queries");
    if (!Q || isx_py_filter(filter_obj, &flt, &keep) < 0)
        goto error;
    npy_intp nl = PyArray_DIM(Q, 0) + 1;
    lims = (PyArrayObject *)PyArray_SimpleNew(1, &nl, NPY_INT64);
    if (!lims)
        goto error;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = range(index, PyArray_DATA(Q), (size_t)PyArray_DIM(Q, 0), (float)radius, &flt, threads, PyArray_DATA(lims),
               &D, &Ilist);
    Py_END_ALLOW_THREADS
    if (rc) {
        isx_py_raise(rc);
        goto error;
    }
    npy_intp total = ((int64_t *)PyArray_DATA(lims))[nl - 1];
    Dout = isx_py_copy_array(D, total, NPY_FLOAT32);
    Iout = isx_py_copy_array(Ilist, total, NPY_INT64);
    if (!Dout || !Iout)
        goto error;
    free(D);
    free(Ilist);
    Py_DECREF(Q);
    Py_XDECREF(keep);
    return Py_BuildValue("(NNN)", lims, Dout, Iout);
error:
    free(D);
    free(Ilist);
    Py_XDECREF(Q);
    Py_XDECREF(keep);
    Py_XDECREF(lims);
    Py_XDECREF(Dout);
    Py_XDECREF(Iout);
    return NULL;
}

/* ======================================================================
 * Remove and get
 * ====================================================================== */

PyObject *isx_py_remove(void *index, isx_py_remove_fn remove, PyObject *ids_obj, int threads)
{
    PyArrayObject *ids = isx_py_ids(ids_obj, -1, "ids");
    if (!ids)
        return NULL;
    size_t removed;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = remove(index, PyArray_DATA(ids), (size_t)PyArray_SIZE(ids), threads, &removed);
    Py_END_ALLOW_THREADS
    Py_DECREF(ids);
    if (rc)
        return isx_py_raise(rc);
    return PyLong_FromSize_t(removed);
}

PyObject *isx_py_get(void *index, isx_py_get_fn get, int dtype, npy_intp ncols, PyObject *ids_obj)
{
    int scalar = PyLong_Check(ids_obj) || PyArray_IsScalar(ids_obj, Integer);
    PyArrayObject *out = NULL;
    PyArrayObject *ids = isx_py_ids(ids_obj, -1, "ids");
    if (!ids)
        goto error;
    npy_intp shape[2] = {PyArray_SIZE(ids), ncols};
    out = scalar ? (PyArrayObject *)PyArray_SimpleNew(1, shape + 1, dtype)
                 : (PyArrayObject *)PyArray_SimpleNew(2, shape, dtype);
    if (!out)
        goto error;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = get(index, PyArray_DATA(ids), (size_t)shape[0], PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    if (rc) {
        isx_py_raise(rc);
        goto error;
    }
    Py_DECREF(ids);
    return (PyObject *)out;
error:
    Py_XDECREF(ids);
    Py_XDECREF(out);
    return NULL;
}

/* ======================================================================
 * The ids property
 * ====================================================================== */

PyObject *isx_py_index_ids(void *index, isx_py_count_fn count, isx_py_ids_fn ids)
{
    for (;;) {
        /* One slot more than counted: ids fills it only if an add came in
         * between, and then we try again.  Fewer (a remove) is still all
         * the ids of one moment, since ids copies them under the lock. */
        npy_intp cap = (npy_intp)count(index) + 1;
        PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(1, &cap, NPY_INT64);
        if (!out)
            return NULL;
        size_t got;
        Py_BEGIN_ALLOW_THREADS
        ids(index, PyArray_DATA(out), (size_t)cap, &got);
        Py_END_ALLOW_THREADS
        if ((npy_intp)got < cap) {
            npy_intp len = (npy_intp)got;
            PyArray_Dims shape = {&len, 1};
            PyObject *none = PyArray_Resize(out, &shape, 0, NPY_CORDER);
            if (!none) {
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(none);
            return (PyObject *)out;
        }
        Py_DECREF(out);
    }
}

/* ======================================================================
 * Serialisation
 * ====================================================================== */

struct isx_py_writer {
    const char *path; /* NULL: into buf */
    Py_buffer meta;   /* meta.buf == NULL: no META section */
    uint8_t *buf;
    size_t size;
};

int isx_py_write(isx_py_writer *w, const isx_header *h, isx_section_out *secs, uint32_t nsecs)
{
    if (w->meta.buf)
        secs[nsecs++] = (isx_section_out){ISX_SEC_META, w->meta.buf, (uint64_t)w->meta.len};
    return w->path ? isx_format_write_file(w->path, h, secs, nsecs)
                   : isx_format_write_memory(h, secs, nsecs, &w->buf, &w->size);
}

/* To the file at path (None back) or, with path == NULL, to bytes. */
static PyObject *serialise(void *index, isx_py_describe_fn describe, const char *path, PyObject *meta)
{
    isx_py_writer w = {path, {0}, NULL, 0};
    if (meta && meta != Py_None && PyObject_GetBuffer(meta, &w.meta, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = describe(index, &w);
    Py_END_ALLOW_THREADS
    if (w.meta.buf)
        PyBuffer_Release(&w.meta);
    if (rc)
        return isx_py_raise_as(rc, isx_IndexFormatError, path);
    if (path)
        Py_RETURN_NONE;
    PyObject *b = PyBytes_FromStringAndSize((const char *)w.buf, (Py_ssize_t)w.size);
    free(w.buf);
    return b;
}

PyObject *isx_py_save(void *index, isx_py_describe_fn describe, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"path", "meta", NULL};
    PyObject *path_bytes = NULL, *meta = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|$O:save", kwlist, PyUnicode_FSConverter, &path_bytes, &meta))
        return NULL;
    PyObject *r = serialise(index, describe, PyBytes_AS_STRING(path_bytes), meta);
    Py_DECREF(path_bytes);
    return r;
}

PyObject *isx_py_to_bytes(void *index, isx_py_describe_fn describe)
{
    return serialise(index, describe, NULL, NULL);
}

PyObject *isx_py_reduce(PyObject *self, PyObject *noargs)
{
    (void)noargs;
    PyObject *state = PyObject_CallMethod(self, "to_bytes", NULL);
    if (!state)
        return NULL;
    PyObject *mod = PyImport_ImportModule("imgsearch._core");
    PyObject *fn = mod ? PyObject_GetAttrString(mod, "_from_bytes") : NULL;
    Py_XDECREF(mod);
    if (!fn) {
        Py_DECREF(state);
        return NULL;
    }
    return Py_BuildValue("(N(N))", fn, state);
}
