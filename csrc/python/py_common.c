/*
 * py_common.c -- argument conversion and error mapping for the bindings.
 */
#include "py_common.h"

#include <errno.h>

PyObject *isx_IndexFormatError = NULL;

/* The one route from a C status to a Python exception; see py_common.h. */
PyObject *isx_py_exception(int status, int err, const char *msg, PyObject *format_error, const char *filename)
{
    PyObject *type, *args;
    switch (status) {
    case ISX_ENOMEM:
        type = PyExc_MemoryError;
        args = Py_BuildValue("(s)", msg[0] ? msg : "out of memory");
        break;
    case ISX_ETYPE:
        type = PyExc_TypeError;
        args = Py_BuildValue("(s)", msg);
        break;
    case ISX_EFORMAT:
        type = format_error ? format_error : isx_IndexFormatError;
        args = Py_BuildValue("(s)", msg);
        break;
    case ISX_EKEY:
        type = PyExc_KeyError;
        args = Py_BuildValue("(s)", msg);
        break;
    case ISX_EIO:
        /* OSError(errno, text, filename) is FileNotFoundError, PermissionError,
         * IsADirectoryError, ... as errno says, with .errno and .filename set */
        type = PyExc_OSError;
        if (err && filename)
            args = Py_BuildValue("(isN)", err, msg, PyUnicode_DecodeFSDefault(filename));
        else if (err)
            args = Py_BuildValue("(is)", err, msg);
        else
            args = Py_BuildValue("(s)", msg);
        break;
    default:
        type = PyExc_ValueError;
        args = Py_BuildValue("(s)", msg[0] ? msg : "invalid argument");
        break;
    }
    if (!args)
        return NULL;
    PyObject *e = PyObject_Call(type, args, NULL);
    Py_DECREF(args);
    return e;
}

PyObject *isx_py_raise_object(PyObject *e)
{
    if (e) {
        PyErr_SetObject((PyObject *)Py_TYPE(e), e);
        Py_DECREF(e);
    }
    return NULL;
}

PyObject *isx_py_raise_as(int status, PyObject *format_error, const char *filename)
{
    return isx_py_raise_object(isx_py_exception(status, isx_last_errno(), isx_last_error(), format_error, filename));
}

PyObject *isx_py_raise(int status)
{
    return isx_py_raise_as(status, isx_IndexFormatError, NULL);
}

static const char *kind_name(PyArray_Descr *d)
{
    switch (d->kind) {
    case 'f': return "floating";
    case 'i': return "signed integer";
    case 'u': return "unsigned integer";
    case 'b': return "boolean";
    case 'c': return "complex";
    case 'O': return "object";
    case 'U': case 'S': return "string";
    default: return "non-numeric";
    }
}

PyArrayObject *isx_py_matrix(PyObject *obj, int dtype, npy_intp ncols, int copy, const char *what)
{
    const char *want = dtype == NPY_FLOAT32 ? "float32" : "uint8";
    PyArrayObject *arr = NULL, *out = NULL;
    if (obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: expected a %s array, found None", what, want);
        return NULL;
    }
    arr = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!arr)
        return NULL;
    PyArray_Descr *d = PyArray_DESCR(arr);
    int ok_kind = dtype == NPY_FLOAT32 ? (d->kind == 'f' || d->kind == 'i' || d->kind == 'u')
                                       : (d->type_num == NPY_UINT8 || d->type_num == NPY_BOOL);
    if (!ok_kind || (dtype == NPY_UINT8 && d->type_num == NPY_BOOL)) {
        if (dtype == NPY_UINT8 && d->type_num == NPY_BOOL)
            PyErr_Format(PyExc_TypeError,
                         "%s: expected packed bits as uint8, found a boolean array "
                         "(pack it with numpy.packbits(x, axis=-1))", what);
        else
            PyErr_Format(PyExc_TypeError, "%s: expected a %s array, found dtype %s (%s)", what, want,
                         d->typeobj->tp_name, kind_name(d));
        goto error;
    }
    int nd = PyArray_NDIM(arr);
    if (nd != 1 && nd != 2) {
        PyErr_Format(PyExc_ValueError, "%s: expected a 2-D array (n, dim) or one 1-D vector, found %d dimensions",
                     what, nd);
        goto error;
    }
    npy_intp cols = PyArray_DIM(arr, nd - 1);
    if (ncols > 0 && cols != ncols) {
        if (dtype == NPY_UINT8)
            PyErr_Format(PyExc_ValueError,
                         "%s: expected %zd bytes per row (dim=%zd bits packed), found %zd",
                         what, (Py_ssize_t)ncols, (Py_ssize_t)ncols * 8, (Py_ssize_t)cols);
        else
            PyErr_Format(PyExc_ValueError, "%s: expected vectors of dim %zd, found dim %zd", what,
                         (Py_ssize_t)ncols, (Py_ssize_t)cols);
        goto error;
    }
    int exact = d->type_num == dtype && PyArray_IS_C_CONTIGUOUS(arr) && PyArray_ISALIGNED(arr) &&
                PyArray_ISNOTSWAPPED(arr);
    if (!exact && !copy) {
        if (d->type_num != dtype)
            PyErr_Format(PyExc_TypeError,
                         "%s: copy=False needs a %s array, found %s; convert it with "
                         "x.astype(numpy.%s) or pass copy=True",
                         what, want, d->typeobj->tp_name, want);
        else
            PyErr_Format(PyExc_ValueError,
                         "%s: copy=False needs a C-contiguous, aligned array; make one with "
                         "numpy.ascontiguousarray(x) or pass copy=True", what);
        goto error;
    }
    npy_intp shape[2] = {nd == 2 ? PyArray_DIM(arr, 0) : 1, cols};
    PyArray_Dims newshape = {shape, 2};
    if (exact) {
        if (nd == 2) {
            out = arr;
            arr = NULL;
        } else {
            out = (PyArrayObject *)PyArray_Newshape(arr, &newshape, NPY_CORDER);
        }
    } else {
        PyArrayObject *conv = (PyArrayObject *)PyArray_FromArray(
            arr, PyArray_DescrFromType(dtype), NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST);
        if (!conv)
            goto error;
        if (nd == 2) {
            out = conv;
        } else {
            out = (PyArrayObject *)PyArray_Newshape(conv, &newshape, NPY_CORDER);
            Py_DECREF(conv);
        }
    }
error:
    Py_XDECREF(arr);
    return out;
}

PyArrayObject *isx_py_ids(PyObject *obj, npy_intp n, const char *what)
{
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!arr)
        return NULL;
    PyArray_Descr *d = PyArray_DESCR(arr);
    if (PyArray_SIZE(arr) > 0 && d->kind != 'i' && d->kind != 'u') {
        PyErr_Format(PyExc_TypeError, "%s: expected integer ids, found dtype %s (%s)", what,
                     d->typeobj->tp_name, kind_name(d));
        Py_DECREF(arr);
        return NULL;
    }
    if (PyArray_NDIM(arr) > 1) {
        PyErr_Format(PyExc_ValueError, "%s: expected a 1-D array of ids, found %d dimensions", what,
                     PyArray_NDIM(arr));
        Py_DECREF(arr);
        return NULL;
    }
    if (d->kind == 'u' && PyDataType_ELSIZE(d) == 8 && PyArray_SIZE(arr) > 0) {
        /* uint64 ids above INT64_MAX would wrap to negatives: check first */
        PyObject *mx = PyArray_Max(arr, NPY_RAVEL_AXIS, NULL);
        PyObject *limit = PyLong_FromLongLong(INT64_MAX);
        int too_big = mx && limit ? PyObject_RichCompareBool(mx, limit, Py_GT) : -1;
        Py_XDECREF(mx);
        Py_XDECREF(limit);
        if (too_big < 0) {
            Py_DECREF(arr);
            return NULL;
        }
        if (too_big) {
            PyErr_Format(PyExc_ValueError, "%s: ids must fit in int64", what);
            Py_DECREF(arr);
            return NULL;
        }
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_FromArray(
        arr, PyArray_DescrFromType(NPY_INT64), NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST);
    Py_DECREF(arr);
    if (!out)
        return NULL;
    if (PyArray_NDIM(out) == 0) {
        npy_intp one = 1;
        PyArray_Dims shape = {&one, 1};
        PyArrayObject *r = (PyArrayObject *)PyArray_Newshape(out, &shape, NPY_CORDER);
        Py_DECREF(out);
        out = r;
        if (!out)
            return NULL;
    }
    if (n >= 0 && PyArray_SIZE(out) != n) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd ids (one per vector), found %zd", what,
                     (Py_ssize_t)n, (Py_ssize_t)PyArray_SIZE(out));
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* Integer filters are ids (bool ones are masks), but a 0/1 mask cast to int
 * -- (x > 0).astype(numpy.uint8), pandas' .astype(int) -- would then allow
 * ids 0 and 1 alone and return silently wrong results.  A list of ids that
 * holds only 0s and 1s and repeats one of them has no other sensible
 * reading, so it is refused; [0, 1] or [1] stay valid lists of ids. */
static int looks_like_a_mask(const int64_t *ids, size_t n)
{
    size_t zeros = 0, ones = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == 0)
            zeros++;
        else if (ids[i] == 1)
            ones++;
        else
            return 0;
    }
    return zeros > 1 || ones > 1;
}

int isx_py_filter(PyObject *obj, isx_filter *flt, PyArrayObject **keep)
{
    memset(flt, 0, sizeof(*flt));
    *keep = NULL;
    if (obj == NULL || obj == Py_None)
        return 0;
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!arr)
        return -1;
    if (PyArray_NDIM(arr) != 1) {
        PyErr_Format(PyExc_ValueError,
                     "filter: expected a 1-D boolean mask over ids or a 1-D array of allowed ids, "
                     "found %d dimensions", PyArray_NDIM(arr));
        Py_DECREF(arr);
        return -1;
    }
    if (PyArray_TYPE(arr) == NPY_BOOL) {
        PyArrayObject *c = (PyArrayObject *)PyArray_FromArray(arr, PyArray_DescrFromType(NPY_BOOL),
                                                              NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
        Py_DECREF(arr);
        if (!c)
            return -1;
        flt->mask = (const uint8_t *)PyArray_DATA(c);
        flt->mask_len = (size_t)PyArray_SIZE(c);
        *keep = c;
        return 0;
    }
    PyArray_Descr *given = PyArray_DESCR(arr);
    Py_INCREF(given);
    Py_DECREF(arr);
    PyArrayObject *ids = isx_py_ids(obj, -1, "filter");
    if (!ids) {
        Py_DECREF(given);
        return -1;
    }
    flt->ids = (const int64_t *)PyArray_DATA(ids);
    flt->n_ids = (size_t)PyArray_SIZE(ids);
    if (looks_like_a_mask(flt->ids, flt->n_ids)) {
        PyErr_Format(PyExc_ValueError,
                     "filter: an integer array is a list of allowed ids, but this one holds only 0s and 1s "
                     "(%zu entries of dtype %s), so it would allow ids 0 and 1 alone: it looks like a mask. "
                     "For a mask over ids pass mask.astype(bool); for ids pass numpy.flatnonzero(mask) "
                     "(or numpy.unique(ids))",
                     flt->n_ids, given->typeobj->tp_name);
        Py_DECREF(given);
        Py_DECREF(ids);
        memset(flt, 0, sizeof(*flt));
        return -1;
    }
    Py_DECREF(given);
    static const int64_t no_ids[1] = {0};
    if (flt->n_ids == 0)
        flt->ids = no_ids; /* an empty allow-list still filters everything out */
    *keep = ids;
    return 0;
}

int isx_py_threads(PyObject *obj, int *out)
{
    *out = 0;
    if (obj == NULL || obj == Py_None)
        return 0;
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "threads: expected None or a positive int, found %s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (v < 1) {
        PyErr_Format(PyExc_ValueError, "threads: expected None (all CPUs) or an int >= 1, found %ld", v);
        return -1;
    }
    *out = v > ISX_MAX_THREADS ? ISX_MAX_THREADS : (int)v;
    return 0;
}

int isx_py_metric(PyObject *obj, isx_metric *out)
{
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "metric: expected a str such as \"l2\", found %s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    const char *s = PyUnicode_AsUTF8(obj);
    if (!s)
        return -1;
    if (isx_metric_from_name(s, out) != ISX_OK) {
        isx_py_raise(ISX_EINVAL);
        return -1;
    }
    return 0;
}

int isx_py_row_dtype(isx_dtype d)
{
    return d == ISX_DTYPE_BITS ? NPY_UINT8 : NPY_FLOAT32;
}

int isx_py_parse_k(PyObject *obj, Py_ssize_t *k)
{
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "k: expected an int >= 1, found %s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    *k = PyLong_AsSsize_t(obj);
    if (*k == -1 && PyErr_Occurred())
        return -1;
    if (*k < 1 || (size_t)*k > ISX_MAX_K) {
        PyErr_Format(PyExc_ValueError, "Expected 1 <= k <= %u. Got k=%zd", ISX_MAX_K, *k);
        return -1;
    }
    return 0;
}

PyObject *isx_py_copy_array(const void *src, npy_intp n, int type)
{
    PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(1, &n, type);
    if (a && n)
        memcpy(PyArray_DATA(a), src, (size_t)n * (size_t)PyArray_ITEMSIZE(a));
    return (PyObject *)a;
}
