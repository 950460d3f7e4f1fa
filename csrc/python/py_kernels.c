/*
 * py_kernels.c -- the kernel table, slot by slot, for tests and benchmarks.
 *
 * Each hook runs one slot of one level's table alone, bypassing the level in
 * use, so the tests can hold every level's kernel against a NumPy oracle and
 * bench_kernels.py can time the levels side by side in one process.  They
 * are private (underscore names) and check only what keeps them memory-safe:
 * dtypes, shapes and bounds; the public API validates properly.
 *
 *   _kernel(metric, isa, q, X, storage=None)   dist / dist_f16 / dist_i8; metric
 *                                              "sqnorm" / "dot": those slots
 *   _bounded(metric, isa, q, X, bound)         bounded, one value per row
 *   _select(isa, row, scale, bias, k, allowed) select -> (values, slots)
 *   _fused(isa, Q, X, k, scale, bias, allowed) fused -> (values, rows)
 *   _kdleaf(isa, metric, q, X, perm, ptrs)     kd_dists / kd_dists_ptrs
 *   _f16_to_f32(isa, halves)                   f16_to_f32
 *   _crc32c(isa, data, crc=0)                  crc32c
 *   _pq_lut_ip(isa, q, books_t, m)             pq_lut_ip: books_t (m*dsub, ksub) f32 -> (m, ksub)
 *   _pq4_quantize(isa, lut)                    pq4_quantize: lut (m, 16) f32 -> (qtab, sum_min, scale)
 *   _pq8_scan(isa, lut, codes)                 pq8_scan: lut (m, 256) f32, codes (n, m) u8
 *   _pq4_scan(isa, codes, lut, thresh)         pq4_scan: codes (nblocks, npairs*32) u8,
 *                                              lut (npairs*32,) u8 -> (sums u16, masks u32)
 *   _nearest_small(isa, X, d, Ct, k, second)   nearest_small: X (n, ldx) f32 read as n rows of
 *                                              their first d floats, Ct (d, pad8(k)) f32 ->
 *                                              (assign i32, dist f32, dist2 f32 or None)
 *   _kernel_table(isa)                         {slot: level it comes from}
 *   _set_simd(isa)                             the level in use (returns the old)
 */
#include "py_common.h"
#include "py_kernels.h"
#include "../simd/nearest.h"
#include "../simd/simd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The table of a level named by the caller, or NULL with an exception. */
static const isx_kernels *table_named(const char *isa_name, isx_isa *level)
{
    for (int i = 0; i < ISX_ISA_COUNT; i++)
        if (strcmp(isa_name, isx_isa_name((isx_isa)i)) == 0) {
            const isx_kernels *k = isx_kernels_for((isx_isa)i);
            if (!k)
                PyErr_Format(PyExc_RuntimeError, "this CPU does not support the %s level", isa_name);
            if (level)
                *level = (isx_isa)i;
            return k;
        }
    PyErr_Format(PyExc_ValueError, "unknown ISA level '%s' (expected serial, avx2 or avx512)", isa_name);
    return NULL;
}

/* An aligned C-contiguous array of exactly `type` with `nd` dimensions. */
static PyArrayObject *exact(PyObject *obj, int type, int nd, const char *what)
{
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, type, nd, nd, NPY_ARRAY_IN_ARRAY);
    if (!a)
        PyErr_Format(PyExc_TypeError, "%s: expected a %d-D array of %s", what, nd,
                     type == NPY_FLOAT32 ? "float32" : "the kernel's type");
    return a;
}

static int metric_row_type(isx_metric m)
{
    return m == ISX_METRIC_HAMMING ? NPY_UINT8 : NPY_FLOAT32;
}

/* q (1 x dim or dim) and X (n x dim) of the same width; both new references. */
static int query_and_rows(PyObject *q_obj, int qtype, PyObject *x_obj, int xtype, PyArrayObject **q,
                          PyArrayObject **X)
{
    *q = (PyArrayObject *)PyArray_FROMANY(q_obj, qtype, 1, 2, NPY_ARRAY_IN_ARRAY);
    *X = *q ? exact(x_obj, xtype, 2, "X") : NULL;
    if (!*X) {
        Py_XDECREF(*q);
        return -1;
    }
    if (PyArray_DIM(*q, PyArray_NDIM(*q) - 1) != PyArray_DIM(*X, 1) || PyArray_SIZE(*q) != PyArray_DIM(*X, 1)) {
        PyErr_Format(PyExc_ValueError, "q: expected one row of %zd values", (Py_ssize_t)PyArray_DIM(*X, 1));
        Py_DECREF(*q);
        Py_DECREF(*X);
        return -1;
    }
    return 0;
}

PyObject *isx_py_kernel(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *metric_obj, *q_obj, *x_obj;
    const char *isa_name, *storage = NULL;
    if (!PyArg_ParseTuple(args, "OsOO|z:_kernel", &metric_obj, &isa_name, &q_obj, &x_obj, &storage))
        return NULL;
    const isx_kernels *k = table_named(isa_name, NULL);
    if (!k)
        return NULL;
    isx_dist_fn fn = NULL;
    isx_metric metric = ISX_METRIC_L2; /* sqnorm and dot read float32 rows, as l2 does */
    if (PyUnicode_Check(metric_obj) && PyUnicode_CompareWithASCIIString(metric_obj, "sqnorm") == 0)
        fn = k->sqnorm;
    else if (PyUnicode_Check(metric_obj) && PyUnicode_CompareWithASCIIString(metric_obj, "dot") == 0)
        fn = k->dot;
    else if (isx_py_metric(metric_obj, &metric) < 0)
        return NULL;
    if (fn && storage)
        return PyErr_Format(PyExc_ValueError, "sqnorm and dot read float32 rows only");
    if (!fn)
        fn = k->dist[metric];
    int row_type = metric_row_type(metric);
    if (storage && strcmp(storage, "float16") == 0) {
        fn = k->dist_f16[metric];
        row_type = NPY_FLOAT16;
    } else if (storage && strcmp(storage, "int8") == 0) {
        fn = k->dist_i8[metric];
        row_type = NPY_INT8;
    } else if (storage) {
        return PyErr_Format(PyExc_ValueError, "storage: expected 'float16' or 'int8', found '%s'", storage);
    }
    if (!fn)
        return PyErr_Format(PyExc_ValueError, "no %s kernel for metric %s", storage, isx_metric_name(metric));
    PyArrayObject *q, *X;
    if (query_and_rows(q_obj, metric_row_type(metric), x_obj, row_type, &q, &X) < 0)
        return NULL;
    npy_intp n = PyArray_DIM(X, 0);
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32);
    if (out) {
        Py_BEGIN_ALLOW_THREADS
        fn(PyArray_DATA(q), PyArray_DATA(X), (size_t)n, (size_t)PyArray_DIM(X, 1), PyArray_DATA(out));
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(q);
    Py_DECREF(X);
    return (PyObject *)out;
}

PyObject *isx_py_bounded(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *metric_obj, *q_obj, *x_obj;
    const char *isa_name;
    float bound;
    if (!PyArg_ParseTuple(args, "OsOOf:_bounded", &metric_obj, &isa_name, &q_obj, &x_obj, &bound))
        return NULL;
    isx_metric metric;
    if (isx_py_metric(metric_obj, &metric) < 0)
        return NULL;
    const isx_kernels *k = table_named(isa_name, NULL);
    if (!k)
        return NULL;
    isx_bounded_fn fn = k->bounded[metric];
    if (!fn)
        return PyErr_Format(PyExc_ValueError, "no bounded kernel for metric %s", isx_metric_name(metric));
    PyArrayObject *q, *X;
    if (query_and_rows(q_obj, NPY_FLOAT32, x_obj, NPY_FLOAT32, &q, &X) < 0)
        return NULL;
    npy_intp n = PyArray_DIM(X, 0);
    size_t dim = (size_t)PyArray_DIM(X, 1);
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32);
    if (out) {
        const float *qd = PyArray_DATA(q), *xd = PyArray_DATA(X);
        float *o = PyArray_DATA(out);
        Py_BEGIN_ALLOW_THREADS
        for (npy_intp r = 0; r < n; r++)
            o[r] = fn(qd, xd + (size_t)r * dim, dim, bound);
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(q);
    Py_DECREF(X);
    return (PyObject *)out;
}

/* Optional float32 vector of length n (None -> NULL data). */
static int optional_vector(PyObject *obj, npy_intp n, int type, const char *what, PyArrayObject **out)
{
    *out = NULL;
    if (obj == Py_None)
        return 0;
    *out = exact(obj, type, 1, what);
    if (!*out)
        return -1;
    if (PyArray_DIM(*out, 0) < n) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least %zd values, found %zd", what, (Py_ssize_t)n,
                     (Py_ssize_t)PyArray_DIM(*out, 0));
        Py_CLEAR(*out);
        return -1;
    }
    return 0;
}

/* The heaps as sorted (values, slots) arrays of shape (nh, k), -1 / inf padded. */
static PyObject *heaps_to_arrays(isx_topk *heaps, size_t nh, size_t k)
{
    npy_intp shape[2] = {(npy_intp)nh, (npy_intp)k};
    PyArrayObject *dist_arr = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_FLOAT32);
    PyArrayObject *slot_arr = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_INT64);
    if (!dist_arr || !slot_arr) {
        Py_XDECREF(dist_arr);
        Py_XDECREF(slot_arr);
        return NULL;
    }
    float *d = PyArray_DATA(dist_arr);
    int64_t *s = PyArray_DATA(slot_arr);
    for (size_t h = 0; h < nh; h++) {
        isx_topk_sort(&heaps[h]);
        for (size_t j = 0; j < k; j++) {
            int kept = j < heaps[h].size;
            d[h * k + j] = kept ? heaps[h].dist[j] : INFINITY;
            s[h * k + j] = kept ? heaps[h].slot[j] : -1;
        }
    }
    return Py_BuildValue("(NN)", dist_arr, slot_arr);
}

PyObject *isx_py_select(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *row_obj, *scale_obj, *bias_obj, *allowed_obj;
    const char *isa_name;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "sOOOnO:_select", &isa_name, &row_obj, &scale_obj, &bias_obj, &k, &allowed_obj))
        return NULL;
    const isx_kernels *kern = table_named(isa_name, NULL);
    if (!kern)
        return NULL;
    if (k < 1 || k > ISX_MAX_K)
        return PyErr_Format(PyExc_ValueError, "k: expected 1..%d, found %zd", ISX_MAX_K, k);
    PyArrayObject *row = exact(row_obj, NPY_FLOAT32, 1, "row"), *scale = NULL, *bias = NULL, *allowed = NULL;
    PyObject *res = NULL;
    float *hd = NULL;
    int64_t *hs = NULL;
    if (!row)
        return NULL;
    npy_intp n = PyArray_DIM(row, 0);
    if (optional_vector(scale_obj, n, NPY_FLOAT32, "scale", &scale) < 0 ||
        optional_vector(bias_obj, n, NPY_FLOAT32, "bias", &bias) < 0 ||
        optional_vector(allowed_obj, (n + 63) / 64, NPY_UINT64, "allowed", &allowed) < 0)
        goto cleanup;
    hd = malloc((size_t)k * sizeof(float));
    hs = malloc((size_t)k * sizeof(int64_t));
    if (!hd || !hs) {
        PyErr_NoMemory();
        goto cleanup;
    }
    isx_topk h;
    isx_topk_init(&h, hd, hs, (size_t)k);
    kern->select(PyArray_DATA(row), scale ? PyArray_DATA(scale) : NULL, bias ? PyArray_DATA(bias) : NULL,
                 (size_t)n, 0, allowed ? PyArray_DATA(allowed) : NULL, &h);
    res = heaps_to_arrays(&h, 1, (size_t)k);
cleanup:
    free(hd);
    free(hs);
    Py_DECREF(row);
    Py_XDECREF(scale);
    Py_XDECREF(bias);
    Py_XDECREF(allowed);
    return res;
}

PyObject *isx_py_fused(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *q_obj, *x_obj, *scale_obj, *bias_obj, *allowed_obj;
    const char *isa_name;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "sOOnOOO:_fused", &isa_name, &q_obj, &x_obj, &k, &scale_obj, &bias_obj,
                          &allowed_obj))
        return NULL;
    const isx_kernels *kern = table_named(isa_name, NULL);
    if (!kern)
        return NULL;
    if (!kern->fused.fn)
        return PyErr_Format(PyExc_ValueError, "the %s level has no fused kernel", isa_name);
    if (k < 1 || k > ISX_MAX_K)
        return PyErr_Format(PyExc_ValueError, "k: expected 1..%d, found %zd", ISX_MAX_K, k);
    PyArrayObject *Q = exact(q_obj, NPY_FLOAT32, 2, "Q"), *X = NULL, *scale = NULL, *bias = NULL, *allowed = NULL;
    PyObject *res = NULL;
    float *packed = NULL, *hd = NULL;
    int64_t *hs = NULL;
    isx_topk *heaps = NULL;
    if (!Q || !(X = exact(x_obj, NPY_FLOAT32, 2, "X")))
        goto cleanup;
    size_t m = (size_t)PyArray_DIM(Q, 0), d = (size_t)PyArray_DIM(Q, 1), n = (size_t)PyArray_DIM(X, 0);
    if ((size_t)PyArray_DIM(X, 1) != d || m == 0 || d == 0) {
        PyErr_SetString(PyExc_ValueError, "Q and X: expected non-empty matrices with the same number of columns");
        goto cleanup;
    }
    if (optional_vector(scale_obj, (npy_intp)n, NPY_FLOAT32, "scale", &scale) < 0 ||
        optional_vector(bias_obj, (npy_intp)n, NPY_FLOAT32, "bias", &bias) < 0 ||
        optional_vector(allowed_obj, (npy_intp)(n + 63) / 64, NPY_UINT64, "allowed", &allowed) < 0)
        goto cleanup;
    packed = isx_aligned_alloc(isx_fused_packed_size(m, d, kern->fused.panel) * sizeof(float));
    hd = malloc(m * (size_t)k * sizeof(float));
    hs = malloc(m * (size_t)k * sizeof(int64_t));
    heaps = malloc(m * sizeof(isx_topk));
    if (!packed || !hd || !hs || !heaps) {
        PyErr_NoMemory();
        goto cleanup;
    }
    for (size_t i = 0; i < m; i++)
        isx_topk_init(&heaps[i], hd + i * (size_t)k, hs + i * (size_t)k, (size_t)k);
    isx_fused_pack(PyArray_DATA(Q), m, d, 1.0f, kern->fused.panel, packed);
    Py_BEGIN_ALLOW_THREADS
    kern->fused.fn(packed, m, d, PyArray_DATA(X), 0, n, scale ? PyArray_DATA(scale) : NULL,
                   bias ? PyArray_DATA(bias) : NULL, allowed ? PyArray_DATA(allowed) : NULL, heaps, 0);
    Py_END_ALLOW_THREADS
    res = heaps_to_arrays(heaps, m, (size_t)k);
cleanup:
    isx_aligned_free(packed);
    free(hd);
    free(hs);
    free(heaps);
    Py_XDECREF(Q);
    Py_XDECREF(X);
    Py_XDECREF(scale);
    Py_XDECREF(bias);
    Py_XDECREF(allowed);
    return res;
}

PyObject *isx_py_kdleaf(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *metric_obj, *q_obj, *x_obj, *perm_obj;
    const char *isa_name;
    int ptrs;
    if (!PyArg_ParseTuple(args, "sOOOOp:_kdleaf", &isa_name, &metric_obj, &q_obj, &x_obj, &perm_obj, &ptrs))
        return NULL;
    isx_metric metric;
    if (isx_py_metric(metric_obj, &metric) < 0)
        return NULL;
    if (metric != ISX_METRIC_L2 && metric != ISX_METRIC_L1)
        return PyErr_Format(PyExc_ValueError, "the leaf kernels compute l2 and l1, not %s", isx_metric_name(metric));
    const isx_kernels *k = table_named(isa_name, NULL);
    if (!k)
        return NULL;
    PyArrayObject *q, *X, *perm = NULL, *out = NULL;
    const float **rows = NULL;
    if (query_and_rows(q_obj, NPY_FLOAT32, x_obj, NPY_FLOAT32, &q, &X) < 0)
        return NULL;
    size_t n = (size_t)PyArray_DIM(X, 0), dim = (size_t)PyArray_DIM(X, 1), count = n;
    if (perm_obj != Py_None) {
        if (!(perm = exact(perm_obj, NPY_UINT32, 1, "perm")))
            goto cleanup;
        count = (size_t)PyArray_DIM(perm, 0);
        const uint32_t *p = PyArray_DATA(perm);
        for (size_t i = 0; i < count; i++)
            if (p[i] >= n) {
                PyErr_Format(PyExc_ValueError, "perm[%zu] = %u is not a row of X", i, p[i]);
                goto cleanup;
            }
    }
    npy_intp len = (npy_intp)count;
    if (!(out = (PyArrayObject *)PyArray_SimpleNew(1, &len, NPY_FLOAT32)))
        goto cleanup;
    const float *xd = PyArray_DATA(X);
    const uint32_t *pd = perm ? PyArray_DATA(perm) : NULL;
    int l1 = metric == ISX_METRIC_L1;
    if (ptrs) {
        if (!(rows = malloc((count ? count : 1) * sizeof(*rows)))) {
            PyErr_NoMemory();
            Py_CLEAR(out);
            goto cleanup;
        }
        for (size_t i = 0; i < count; i++)
            rows[i] = xd + (pd ? (size_t)pd[i] : i) * dim;
        k->kd_dists_ptrs(rows, count, PyArray_DATA(q), dim, l1, PyArray_DATA(out));
    } else {
        k->kd_dists(xd, pd, 0, count, PyArray_DATA(q), dim, l1, PyArray_DATA(out));
    }
cleanup:
    free(rows);
    Py_DECREF(q);
    Py_DECREF(X);
    Py_XDECREF(perm);
    return (PyObject *)out;
}

PyObject *isx_py_f16_to_f32(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *h_obj;
    const char *isa_name;
    if (!PyArg_ParseTuple(args, "sO:_f16_to_f32", &isa_name, &h_obj))
        return NULL;
    const isx_kernels *k = table_named(isa_name, NULL);
    if (!k)
        return NULL;
    PyArrayObject *h = exact(h_obj, NPY_FLOAT16, 1, "halves");
    if (!h)
        return NULL;
    npy_intp n = PyArray_DIM(h, 0);
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32);
    if (out)
        k->f16_to_f32(PyArray_DATA(h), PyArray_DATA(out), (size_t)n);
    Py_DECREF(h);
    return (PyObject *)out;
}

PyObject *isx_py_crc32c(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *isa_name;
    Py_buffer buf;
    unsigned int crc = 0;
    if (!PyArg_ParseTuple(args, "sy*|I:_crc32c", &isa_name, &buf, &crc))
        return NULL;
    const isx_kernels *k = table_named(isa_name, NULL);
    if (!k) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    uint32_t out;
    Py_BEGIN_ALLOW_THREADS
    out = k->crc32c((uint32_t)crc, buf.buf, (size_t)buf.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    return PyLong_FromUnsignedLong(out);
}

PyObject *isx_py_kernel_table(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *isa_name;
    isx_isa level;
    if (!PyArg_ParseTuple(args, "s:_kernel_table", &isa_name) || !table_named(isa_name, &level))
        return NULL;
    return isx_py_kernel_origins(level);
}

PyObject *isx_py_kernel_origins(isx_isa level)
{
    PyObject *d = PyDict_New();
    for (size_t i = 0; d && i < isx_kernel_slot_count(); i++) {
        int from = isx_kernel_origin(level, i);
        PyObject *v = PyUnicode_FromString(from < 0 ? "none" : isx_isa_name((isx_isa)from));
        if (!v || PyDict_SetItemString(d, isx_kernel_slot_name(i), v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

PyObject *isx_py_set_simd(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *isa_name;
    isx_isa level;
    if (!PyArg_ParseTuple(args, "s:_set_simd", &isa_name) || !table_named(isa_name, &level))
        return NULL;
    isx_isa old = isx_simd_level();
    if (isx_simd_set_level(level))
        return isx_py_raise(ISX_EINVAL);
    return PyUnicode_FromString(isx_isa_name(old));
}

PyObject *isx_py_pq8_scan(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *isa_name;
    PyObject *lut_obj, *codes_obj;
    if (!PyArg_ParseTuple(args, "sOO:_pq8_scan", &isa_name, &lut_obj, &codes_obj))
        return NULL;
    const isx_kernels *k = table_named(isa_name, NULL);
    if (!k)
        return NULL;
    PyArrayObject *lut = exact(lut_obj, NPY_FLOAT32, 2, "lut"), *codes = NULL, *out = NULL;
    if (!lut || !(codes = exact(codes_obj, NPY_UINT8, 2, "codes")))
        goto done;
    npy_intp m = PyArray_DIM(codes, 1), n = PyArray_DIM(codes, 0);
    if (PyArray_DIM(lut, 0) != m || PyArray_DIM(lut, 1) != 256) {
        PyErr_SetString(PyExc_ValueError, "lut must be (m, 256) for codes of m bytes");
        goto done;
    }
    if ((out = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32)))
        k->pq8_scan(PyArray_DATA(lut), PyArray_DATA(codes), (size_t)n, (size_t)m, PyArray_DATA(out));
done:
    Py_XDECREF(lut);
    Py_XDECREF(codes);
    return (PyObject *)out;
}

PyObject *isx_py_pq4_scan(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *isa_name;
    PyObject *lut_obj, *codes_obj;
    unsigned int thresh;
    if (!PyArg_ParseTuple(args, "sOOI:_pq4_scan", &isa_name, &codes_obj, &lut_obj, &thresh))
        return NULL;
    const isx_kernels *k = table_named(isa_name, NULL);
    if (!k)
        return NULL;
    PyArrayObject *lut = exact(lut_obj, NPY_UINT8, 1, "lut"), *codes = NULL, *sums = NULL, *masks = NULL;
    PyObject *r = NULL;
    if (!lut || !(codes = exact(codes_obj, NPY_UINT8, 2, "codes")))
        goto done;
    npy_intp nb = PyArray_DIM(codes, 0), bytes = PyArray_DIM(codes, 1), nsum = nb * 32;
    if (bytes % 32 || bytes == 0 || bytes / 32 > 128 || PyArray_DIM(lut, 0) != bytes || thresh > 65535) {
        PyErr_SetString(PyExc_ValueError, "codes (nblocks, npairs*32), lut (npairs*32,), npairs <= 128, thresh <= 65535");
        goto done;
    }
    sums = (PyArrayObject *)PyArray_SimpleNew(1, &nsum, NPY_UINT16);
    masks = (PyArrayObject *)PyArray_SimpleNew(1, &nb, NPY_UINT32);
    if (!sums || !masks)
        goto done;
    k->pq4_scan(PyArray_DATA(codes), (size_t)nb, (size_t)(bytes / 32), PyArray_DATA(lut), (uint16_t)thresh,
                PyArray_DATA(sums), PyArray_DATA(masks));
    r = Py_BuildValue("(OO)", sums, masks);
done:
    Py_XDECREF(lut);
    Py_XDECREF(codes);
    Py_XDECREF(sums);
    Py_XDECREF(masks);
    return r;
}

PyObject *isx_py_pq_lut_ip(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *isa_name;
    PyObject *q_obj, *b_obj;
    Py_ssize_t m;
    if (!PyArg_ParseTuple(args, "sOOn:_pq_lut_ip", &isa_name, &q_obj, &b_obj, &m))
        return NULL;
    const isx_kernels *k = table_named(isa_name, NULL);
    if (!k)
        return NULL;
    PyArrayObject *q = exact(q_obj, NPY_FLOAT32, 1, "q"), *b = NULL, *out = NULL;
    if (!q || !(b = exact(b_obj, NPY_FLOAT32, 2, "books_t")))
        goto done;
    npy_intp d = PyArray_DIM(q, 0), ksub = PyArray_DIM(b, 1);
    if (m < 1 || d % m || PyArray_DIM(b, 0) != d || ksub % 16 || ksub == 0) {
        PyErr_SetString(PyExc_ValueError, "q (d,), books_t (d, ksub) with m | d and 16 | ksub");
        goto done;
    }
    npy_intp shape[2] = {(npy_intp)m, ksub};
    if ((out = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_FLOAT32)))
        k->pq_lut_ip(PyArray_DATA(q), PyArray_DATA(b), (size_t)m, (size_t)(d / m), (size_t)ksub, PyArray_DATA(out));
done:
    Py_XDECREF(q);
    Py_XDECREF(b);
    return (PyObject *)out;
}

PyObject *isx_py_pq4_quantize(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *isa_name;
    PyObject *lut_obj;
    if (!PyArg_ParseTuple(args, "sO:_pq4_quantize", &isa_name, &lut_obj))
        return NULL;
    const isx_kernels *k = table_named(isa_name, NULL);
    if (!k)
        return NULL;
    PyArrayObject *lut = exact(lut_obj, NPY_FLOAT32, 2, "lut"), *qtab = NULL;
    PyObject *r = NULL;
    if (!lut)
        return NULL;
    npy_intp m = PyArray_DIM(lut, 0), nbytes = (m + 1) / 2 * 32;
    if (PyArray_DIM(lut, 1) != 16 || m < 1 || m > 256) {
        PyErr_SetString(PyExc_ValueError, "lut must be (m, 16) with 1 <= m <= 256");
        goto done;
    }
    if (!(qtab = (PyArrayObject *)PyArray_ZEROS(1, &nbytes, NPY_UINT8, 0)))
        goto done;
    float scale;
    float sum_min = k->pq4_quantize(PyArray_DATA(lut), (size_t)m, PyArray_DATA(qtab), &scale);
    r = Py_BuildValue("(Odd)", qtab, (double)sum_min, (double)scale);
done:
    Py_XDECREF(lut);
    Py_XDECREF(qtab);
    return r;
}

PyObject *isx_py_nearest_small(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *isa_name;
    PyObject *x_obj, *ct_obj;
    Py_ssize_t d, k;
    int second;
    if (!PyArg_ParseTuple(args, "sOnOnp:_nearest_small", &isa_name, &x_obj, &d, &ct_obj, &k, &second))
        return NULL;
    const isx_kernels *kern = table_named(isa_name, NULL);
    if (!kern)
        return NULL;
    PyArrayObject *X = exact(x_obj, NPY_FLOAT32, 2, "X"), *Ct = X ? exact(ct_obj, NPY_FLOAT32, 2, "Ct") : NULL;
    PyArrayObject *a = NULL, *dist = NULL, *dist2 = NULL;
    PyObject *r = NULL;
    if (!Ct)
        goto done;
    npy_intp n = PyArray_DIM(X, 0), ldx = PyArray_DIM(X, 1);
    if (d < 1 || d > ISX_NEAREST_MAX_D || d > ldx || (n > 0 && ldx < 1) || k < 1 ||
        (size_t)k > ISX_NEAREST_MAX_K || PyArray_DIM(Ct, 0) != d ||
        (size_t)PyArray_DIM(Ct, 1) != ISX_NEAREST_PAD((size_t)k)) {
        PyErr_Format(PyExc_ValueError, "expected 1 <= d <= min(%d, X.shape[1]), 1 <= k and Ct of shape (d, pad8(k))",
                     ISX_NEAREST_MAX_D);
        goto done;
    }
    a = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_INT32);
    dist = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32);
    dist2 = second ? (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT32) : NULL;
    if (!a || !dist || (second && !dist2))
        goto done;
    kern->nearest_small(PyArray_DATA(X), (size_t)n, (size_t)ldx, (size_t)d, PyArray_DATA(Ct), (size_t)k,
                        PyArray_DATA(a), PyArray_DATA(dist), dist2 ? PyArray_DATA(dist2) : NULL);
    r = Py_BuildValue("(OOO)", a, dist, dist2 ? (PyObject *)dist2 : Py_None);
done:
    Py_XDECREF(X);
    Py_XDECREF(Ct);
    Py_XDECREF(a);
    Py_XDECREF(dist);
    Py_XDECREF(dist2);
    return r;
}
