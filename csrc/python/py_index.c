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
