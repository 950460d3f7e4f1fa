/*
 * py_quant.c -- k-means and product quantization (index/kmeans.c,
 * index/pq.c), for tests and benchmarks.
 *
 * These hooks are private (underscore names): the public face of PQ is the
 * IVF-PQ index.  They still check everything a caller can get wrong --
 * dtypes, shapes, k against n, nbits against the codebooks' shape, finite
 * values -- and say what was expected, what was found and how to fix it,
 * because the benchmarks and notebooks call them with real data.  Arrays of
 * another numeric dtype or layout are converted (copied).  Outputs are
 * allocated before the GIL is released; only the C call runs without it.
 *
 *   _kmeans(X, k, niter=25, seed=0, nthreads=0, max_points=0, spherical=False)
 *                                        -> (centroids (k, d), obj)
 *   _kmeans_assign(X, C, nthreads=0)     -> (assign int32 (n,), dist float32 (n,))
 *   _pq_train(X, m, nbits, niter=25, seed=0, nthreads=0) -> centroids (m, ksub, dsub)
 *   _pq_encode(centroids, X, nbits, nthreads=0)          -> codes uint8 (n, code_bytes)
 *   _pq_decode(centroids, codes, nbits)                  -> X float32 (n, d)
 *   _pq_lut(centroids, q, metric)                        -> lut float32 (m, ksub)
 *   _pq_lut_distance(centroids, lut, codes)              -> float32 (n,)
 *   _opq_train(X, m, nbits, niter=8, niter_pq=25, seed=0, nthreads=0)
 *                                        -> (R (d, d), centroids (m, ksub, dsub) of X R^T)
 *
 * nthreads = 0 means all usable CPUs, as in the C core.
 */
#include "py_common.h"
#include "py_quant.h"
#include "../index/kmeans.h"
#include "../index/pq.h"

#include <math.h>
#include <string.h>

static int parse_nthreads(int nthreads)
{
    if (nthreads < 0) {
        PyErr_Format(PyExc_ValueError, "nthreads: expected 0 (all CPUs) or a positive int, found %d", nthreads);
        return -1;
    }
    return 0;
}

/* m sub-quantizers of nbits bits: what _pq_train and _opq_train take. */
static int check_pq_shape(Py_ssize_t m, Py_ssize_t nbits)
{
    if (m < 1) {
        PyErr_Format(PyExc_ValueError, "m: expected m >= 1 sub-quantizers, found m=%zd", m);
        return -1;
    }
    if (nbits != 4 && nbits != 8) {
        PyErr_Format(PyExc_ValueError, "nbits: expected 4 or 8, found %zd", nbits);
        return -1;
    }
    return 0;
}

/* float32 (n, d) rows from any numeric array-like (a 1-D input is one row). */
static PyArrayObject *float_rows(PyObject *obj, npy_intp ncols, const char *what)
{
    return isx_py_matrix(obj, NPY_FLOAT32, ncols, 1, what);
}

/* An array of `type` with nd dimensions, converted from any numeric array
 * (integer types only for integer `type`). */
static PyArrayObject *numeric_array(PyObject *obj, int type, int nd, const char *what, const char *shape)
{
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!arr)
        return NULL;
    char kind = PyArray_DESCR(arr)->kind;
    int ok = type == NPY_UINT8 ? PyArray_TYPE(arr) == NPY_UINT8 : (kind == 'f' || kind == 'i' || kind == 'u');
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: expected a %s array, found dtype %s%s", what,
                     type == NPY_UINT8 ? "uint8" : "float32", PyArray_DESCR(arr)->typeobj->tp_name,
                     type == NPY_UINT8 ? " (codes are bytes: pass the array that _pq_encode returned)" : "");
        Py_DECREF(arr);
        return NULL;
    }
    if (PyArray_NDIM(arr) != nd) {
        PyErr_Format(PyExc_ValueError, "%s: expected a %d-D array %s, found %d dimensions", what, nd, shape,
                     PyArray_NDIM(arr));
        Py_DECREF(arr);
        return NULL;
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_FromArray(
        arr, PyArray_DescrFromType(type), NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST);
    Py_DECREF(arr);
    return out;
}

static int finite_or_raise(const float *x, size_t count, const char *what)
{
    for (size_t i = 0; i < count; i++)
        if (!isfinite(x[i])) {
            PyErr_Format(PyExc_ValueError, "%s must be finite, found %s at flat position %zu", what,
                         isnan(x[i]) ? "NaN" : "Inf", i);
            return -1;
        }
    return 0;
}

/* Codebooks (m, ksub, dsub) as a quantizer that borrows them; nbits < 0:
 * inferred from ksub (16 -> 4, 256 -> 8). */
static PyArrayObject *codebooks(PyObject *obj, int nbits, isx_pq *pq)
{
    PyArrayObject *c = numeric_array(obj, NPY_FLOAT32, 3, "centroids", "(m, ksub, dsub)");
    if (!c)
        return NULL;
    npy_intp m = PyArray_DIM(c, 0), ksub = PyArray_DIM(c, 1), dsub = PyArray_DIM(c, 2);
    if (nbits < 0)
        nbits = ksub == 16 ? 4 : ksub == 256 ? 8 : 0;
    if (nbits != 4 && nbits != 8) {
        PyErr_Format(PyExc_ValueError,
                     nbits ? "nbits: expected 4 or 8, found %d"
                           : "centroids: expected ksub = 16 (nbits=4) or 256 (nbits=8) rows per sub-quantizer, "
                             "found shape[1] = %zd",
                     nbits ? nbits : (int)ksub);
        goto error;
    }
    if (ksub != ((npy_intp)1 << nbits) || m < 1 || dsub < 1) {
        PyErr_Format(PyExc_ValueError,
                     "centroids: expected shape (m, %d, dsub) with m, dsub >= 1 for nbits=%d, found (%zd, %zd, %zd) "
                     "(pass the array that _pq_train returned with the same nbits)",
                     1 << nbits, nbits, (Py_ssize_t)m, (Py_ssize_t)ksub, (Py_ssize_t)dsub);
        goto error;
    }
    if (finite_or_raise(PyArray_DATA(c), (size_t)PyArray_SIZE(c), "centroids") < 0)
        goto error;
    int rc = isx_pq_borrow(pq, (size_t)(m * dsub), (size_t)m, (size_t)nbits, PyArray_DATA(c));
    if (rc) {
        isx_py_raise(rc);
        goto error;
    }
    return c;
error:
    Py_DECREF(c);
    return NULL;
}

/* Codes (n, code_bytes) uint8 for pq. */
static PyArrayObject *code_rows(PyObject *obj, const isx_pq *pq)
{
    PyArrayObject *codes = numeric_array(obj, NPY_UINT8, 2, "codes", "(n, code_bytes)");
    if (codes && (size_t)PyArray_DIM(codes, 1) != pq->code_bytes) {
        PyErr_Format(PyExc_ValueError,
                     "codes: expected %zu bytes per code (m=%zu sub-quantizers of %zu bits), found %zd",
                     pq->code_bytes, pq->m, pq->nbits, (Py_ssize_t)PyArray_DIM(codes, 1));
        Py_CLEAR(codes);
    }
    return codes;
}

PyObject *isx_py_kmeans(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    static char *kwlist[] = {"X", "k", "niter", "seed", "nthreads", "max_points", "spherical", NULL};
    PyObject *x_obj;
    Py_ssize_t k, max_points = 0;
    int niter = 25, nthreads = 0, spherical = 0;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "On|iKinp:_kmeans", kwlist, &x_obj, &k, &niter, &seed, &nthreads,
                                     &max_points, &spherical))
        return NULL;
    if (parse_nthreads(nthreads) < 0)
        return NULL;
    if (k < 1)
        return PyErr_Format(PyExc_ValueError, "k: expected k >= 1 clusters, found k=%zd", k);
    if (niter < 0)
        return PyErr_Format(PyExc_ValueError, "niter: expected niter >= 0 (0: seeding only), found %d", niter);
    if (max_points < 0)
        return PyErr_Format(PyExc_ValueError, "max_points: expected 0 (k * 256) or a positive int, found %zd",
                            max_points);
    PyArrayObject *X = float_rows(x_obj, 0, "X");
    if (!X)
        return NULL;
    size_t n = (size_t)PyArray_DIM(X, 0), d = (size_t)PyArray_DIM(X, 1);
    if ((size_t)k > n) {
        Py_DECREF(X);
        return PyErr_Format(PyExc_ValueError,
                            "k: expected k <= n (one point per cluster at least), found k=%zd for n=%zu points "
                            "(lower k or pass more points)", k, n);
    }
    npy_intp shape[2] = {(npy_intp)k, (npy_intp)d};
    PyArrayObject *C = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_FLOAT32);
    if (!C) {
        Py_DECREF(X);
        return NULL;
    }
    isx_kmeans_params p = {(size_t)k, niter, (uint64_t)seed, nthreads, (size_t)max_points, spherical};
    double obj = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_kmeans_train(PyArray_DATA(X), n, d, &p, PyArray_DATA(C), &obj);
    Py_END_ALLOW_THREADS
    Py_DECREF(X);
    if (rc) {
        Py_DECREF(C);
        return isx_py_raise(rc);
    }
    return Py_BuildValue("(Nd)", C, obj);
}

PyObject *isx_py_kmeans_assign(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    static char *kwlist[] = {"X", "C", "nthreads", NULL};
    PyObject *x_obj, *c_obj;
    int nthreads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|i:_kmeans_assign", kwlist, &x_obj, &c_obj, &nthreads))
        return NULL;
    if (parse_nthreads(nthreads) < 0)
        return NULL;
    PyArrayObject *C = float_rows(c_obj, 0, "C"), *X = NULL, *assign = NULL, *dist = NULL;
    PyObject *res = NULL;
    if (!C || !(X = float_rows(x_obj, PyArray_DIM(C, 1), "X")))
        goto cleanup;
    npy_intp n = PyArray_DIM(X, 0);
    if (!(assign = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_INT32)) ||
        !(dist = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32)))
        goto cleanup;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_kmeans_assign(PyArray_DATA(X), (size_t)n, (size_t)PyArray_DIM(X, 1), PyArray_DATA(C),
                           (size_t)PyArray_DIM(C, 0), nthreads, PyArray_DATA(assign), PyArray_DATA(dist));
    Py_END_ALLOW_THREADS
    if (rc) {
        isx_py_raise(rc);
        goto cleanup;
    }
    res = Py_BuildValue("(OO)", assign, dist);
cleanup:
    Py_XDECREF(C);
    Py_XDECREF(X);
    Py_XDECREF(assign);
    Py_XDECREF(dist);
    return res;
}

PyObject *isx_py_pq_train(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    static char *kwlist[] = {"X", "m", "nbits", "niter", "seed", "nthreads", NULL};
    PyObject *x_obj;
    Py_ssize_t m, nbits;
    int niter = 25, nthreads = 0;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Onn|iKi:_pq_train", kwlist, &x_obj, &m, &nbits, &niter, &seed,
                                     &nthreads))
        return NULL;
    if (parse_nthreads(nthreads) < 0)
        return NULL;
    if (check_pq_shape(m, nbits) < 0)
        return NULL;
    PyArrayObject *X = float_rows(x_obj, 0, "X");
    if (!X)
        return NULL;
    size_t n = (size_t)PyArray_DIM(X, 0), d = (size_t)PyArray_DIM(X, 1);
    isx_pq pq;
    int rc = isx_pq_init(&pq, d, (size_t)m, (size_t)nbits);
    if (rc) {
        Py_DECREF(X);
        return isx_py_raise(rc);
    }
    npy_intp shape[3] = {(npy_intp)pq.m, (npy_intp)pq.ksub, (npy_intp)pq.dsub};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(3, shape, NPY_FLOAT32);
    if (out) {
        Py_BEGIN_ALLOW_THREADS
        rc = isx_pq_train(&pq, PyArray_DATA(X), n, niter, (uint64_t)seed, nthreads);
        if (!rc)
            memcpy(PyArray_DATA(out), pq.centroids, pq.m * pq.ksub * pq.dsub * sizeof(float));
        Py_END_ALLOW_THREADS
        if (rc) {
            Py_CLEAR(out);
            isx_py_raise(rc);
        }
    }
    isx_pq_free(&pq);
    Py_DECREF(X);
    return (PyObject *)out;
}

PyObject *isx_py_pq_encode(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    static char *kwlist[] = {"centroids", "X", "nbits", "nthreads", NULL};
    PyObject *c_obj, *x_obj;
    int nbits, nthreads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOi|i:_pq_encode", kwlist, &c_obj, &x_obj, &nbits, &nthreads))
        return NULL;
    if (parse_nthreads(nthreads) < 0)
        return NULL;
    isx_pq pq;
    PyArrayObject *C = codebooks(c_obj, nbits, &pq), *X = NULL, *codes = NULL;
    if (!C || !(X = float_rows(x_obj, (npy_intp)pq.d, "X")))
        goto cleanup;
    npy_intp shape[2] = {PyArray_DIM(X, 0), (npy_intp)pq.code_bytes};
    if (!(codes = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_UINT8)))
        goto cleanup;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_pq_encode(&pq, PyArray_DATA(X), (size_t)shape[0], PyArray_DATA(codes), nthreads);
    Py_END_ALLOW_THREADS
    if (rc) {
        Py_CLEAR(codes);
        isx_py_raise(rc);
    }
cleanup:
    Py_XDECREF(C);
    Py_XDECREF(X);
    return (PyObject *)codes;
}

PyObject *isx_py_pq_decode(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    static char *kwlist[] = {"centroids", "codes", "nbits", NULL};
    PyObject *c_obj, *codes_obj;
    int nbits;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOi:_pq_decode", kwlist, &c_obj, &codes_obj, &nbits))
        return NULL;
    isx_pq pq;
    PyArrayObject *C = codebooks(c_obj, nbits, &pq), *codes = NULL, *X = NULL;
    if (!C || !(codes = code_rows(codes_obj, &pq)))
        goto cleanup;
    npy_intp shape[2] = {PyArray_DIM(codes, 0), (npy_intp)pq.d};
    if (!(X = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_FLOAT32)))
        goto cleanup;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_pq_decode(&pq, PyArray_DATA(codes), (size_t)shape[0], PyArray_DATA(X));
    Py_END_ALLOW_THREADS
    if (rc) {
        Py_CLEAR(X);
        isx_py_raise(rc);
    }
cleanup:
    Py_XDECREF(C);
    Py_XDECREF(codes);
    return (PyObject *)X;
}

PyObject *isx_py_pq_lut(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    static char *kwlist[] = {"centroids", "q", "metric", NULL};
    PyObject *c_obj, *q_obj, *metric_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO:_pq_lut", kwlist, &c_obj, &q_obj, &metric_obj))
        return NULL;
    isx_metric metric;
    if (isx_py_metric(metric_obj, &metric) < 0)
        return NULL;
    if (metric != ISX_METRIC_L2 && metric != ISX_METRIC_IP)
        return PyErr_Format(PyExc_ValueError,
                            "metric: PQ lookup tables are for \"l2\" or \"ip\", found \"%s\" "
                            "(for cosine, normalise the vectors and use \"ip\")", isx_metric_name(metric));
    isx_pq pq;
    PyArrayObject *C = codebooks(c_obj, -1, &pq), *q = NULL, *lut = NULL;
    if (!C || !(q = float_rows(q_obj, (npy_intp)pq.d, "q")))
        goto cleanup;
    if (PyArray_DIM(q, 0) != 1) {
        PyErr_Format(PyExc_ValueError, "q: expected one query vector of dim %zu, found %zd rows", pq.d,
                     (Py_ssize_t)PyArray_DIM(q, 0));
        goto cleanup;
    }
    if (finite_or_raise(PyArray_DATA(q), pq.d, "q") < 0)
        goto cleanup;
    npy_intp shape[2] = {(npy_intp)pq.m, (npy_intp)pq.ksub};
    if (!(lut = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_FLOAT32)))
        goto cleanup;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_pq_lut(&pq, PyArray_DATA(q), (int)metric, PyArray_DATA(lut));
    Py_END_ALLOW_THREADS
    if (rc) {
        Py_CLEAR(lut);
        isx_py_raise(rc);
    }
cleanup:
    Py_XDECREF(C);
    Py_XDECREF(q);
    return (PyObject *)lut;
}

PyObject *isx_py_pq_lut_distance(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    static char *kwlist[] = {"centroids", "lut", "codes", NULL};
    PyObject *c_obj, *lut_obj, *codes_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO:_pq_lut_distance", kwlist, &c_obj, &lut_obj, &codes_obj))
        return NULL;
    isx_pq pq;
    PyArrayObject *C = codebooks(c_obj, -1, &pq), *lut = NULL, *codes = NULL, *out = NULL;
    if (!C || !(lut = numeric_array(lut_obj, NPY_FLOAT32, 2, "lut", "(m, ksub)")) ||
        !(codes = code_rows(codes_obj, &pq)))
        goto cleanup;
    if ((size_t)PyArray_DIM(lut, 0) != pq.m || (size_t)PyArray_DIM(lut, 1) != pq.ksub) {
        PyErr_Format(PyExc_ValueError, "lut: expected shape (%zu, %zu) for these centroids, found (%zd, %zd)",
                     pq.m, pq.ksub, (Py_ssize_t)PyArray_DIM(lut, 0), (Py_ssize_t)PyArray_DIM(lut, 1));
        goto cleanup;
    }
    npy_intp n = PyArray_DIM(codes, 0);
    if (!(out = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32)))
        goto cleanup;
    const float *t = PyArray_DATA(lut);
    const uint8_t *cd = PyArray_DATA(codes);
    float *o = PyArray_DATA(out);
    Py_BEGIN_ALLOW_THREADS
    for (npy_intp i = 0; i < n; i++)
        o[i] = isx_pq_lut_distance(&pq, t, cd + (size_t)i * pq.code_bytes);
    Py_END_ALLOW_THREADS
cleanup:
    Py_XDECREF(C);
    Py_XDECREF(lut);
    Py_XDECREF(codes);
    return (PyObject *)out;
}

PyObject *isx_py_opq_train(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    static char *kwlist[] = {"X", "m", "nbits", "niter", "niter_pq", "seed", "nthreads", NULL};
    PyObject *x_obj;
    Py_ssize_t m, nbits;
    int niter = 8, niter_pq = 25, nthreads = 0;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Onn|iiKi:_opq_train", kwlist, &x_obj, &m, &nbits, &niter, &niter_pq,
                                     &seed, &nthreads))
        return NULL;
    if (parse_nthreads(nthreads) < 0)
        return NULL;
    if (check_pq_shape(m, nbits) < 0)
        return NULL;
    PyArrayObject *X = float_rows(x_obj, 0, "X");
    if (!X)
        return NULL;
    size_t n = (size_t)PyArray_DIM(X, 0), d = (size_t)PyArray_DIM(X, 1);
    isx_pq pq;
    int rc = isx_pq_init(&pq, d, (size_t)m, (size_t)nbits);
    if (rc) {
        Py_DECREF(X);
        return isx_py_raise(rc);
    }
    npy_intp rshape[2] = {(npy_intp)d, (npy_intp)d};
    npy_intp cshape[3] = {(npy_intp)pq.m, (npy_intp)pq.ksub, (npy_intp)pq.dsub};
    PyArrayObject *R = (PyArrayObject *)PyArray_SimpleNew(2, rshape, NPY_FLOAT32);
    PyArrayObject *C = R ? (PyArrayObject *)PyArray_SimpleNew(3, cshape, NPY_FLOAT32) : NULL;
    PyObject *res = NULL;
    if (C) {
        Py_BEGIN_ALLOW_THREADS
        rc = isx_opq_train(&pq, PyArray_DATA(X), n, niter, niter_pq, (uint64_t)seed, nthreads, PyArray_DATA(R));
        if (!rc)
            memcpy(PyArray_DATA(C), pq.centroids, pq.m * pq.ksub * pq.dsub * sizeof(float));
        Py_END_ALLOW_THREADS
        if (rc)
            isx_py_raise(rc);
        else
            res = Py_BuildValue("(OO)", R, C);
    }
    Py_XDECREF(R);
    Py_XDECREF(C);
    isx_pq_free(&pq);
    Py_DECREF(X);
    return res;
}
