/*
 * py_common.h -- what every binding shares: turning Python arguments into
 * arrays the C core can take (with messages that say what was expected,
 * what was found and how to fix it), and C status codes into exceptions.
 */
#ifndef ISX_PY_COMMON_H
#define ISX_PY_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_25_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL ISX_ARRAY_API
#ifndef ISX_MODULE_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "../common/isx.h"
#include "../index/filter.h"

extern PyObject *isx_IndexFormatError;

/* The one route from a C status to a Python exception, for every binding: a
 * new exception object for `status` with `msg` as its text --
 *   ISX_ENOMEM MemoryError, ISX_ETYPE TypeError, ISX_EKEY KeyError,
 *   ISX_EFORMAT format_error (imgsearch.IndexFormatError for index files,
 *     imgsearch.ImageDecodeError for images; NULL: IndexFormatError),
 *   ISX_EIO the OSError subclass errno `err` selects (FileNotFoundError,
 *     PermissionError, IsADirectoryError, ...), .filename = filename,
 *   anything else ValueError --
 * or NULL with an exception set. */
PyObject *isx_py_exception(int status, int err, const char *msg, PyObject *format_error, const char *filename);

/* Raise the exception object e (a reference it takes; NULL: already raised); returns NULL. */
PyObject *isx_py_raise_object(PyObject *e);

/* Raise isx_py_exception for the calling thread's last error (its message
 * and errno); filename may be NULL.  Returns NULL. */
PyObject *isx_py_raise_as(int status, PyObject *format_error, const char *filename);

/* isx_py_raise_as for an index operation: no file name, IndexFormatError. */
PyObject *isx_py_raise(int status);

/* A C-contiguous, aligned 2-D array of `dtype` (NPY_FLOAT32 or NPY_UINT8)
 * with `ncols` columns (0: any), from any array-like.  A 1-D input is one
 * row.  Lossless numeric conversions copy (float64 -> float32 included)
 * unless copy == 0, when anything but the exact dtype and layout is a
 * TypeError/ValueError.  `what` names the argument in messages. */
PyArrayObject *isx_py_matrix(PyObject *obj, int dtype, npy_intp ncols, int copy, const char *what);

/* An int64 1-D array of ids from an array-like (or a Python int); NULL and an
 * exception on bad input.  `n` >= 0 requires that length. */
PyArrayObject *isx_py_ids(PyObject *obj, npy_intp n, const char *what);

/* A filter argument: None, a boolean mask over ids, or allowed ids.  Fills
 * `flt`; *keep receives the array that backs it (Py_XDECREF when done). */
int isx_py_filter(PyObject *obj, isx_filter *flt, PyArrayObject **keep);

/* threads=None|int -> int (0 = all CPUs); -1 with an exception on bad input. */
int isx_py_threads(PyObject *obj, int *out);

/* A metric name -> isx_metric, or -1 with ValueError. */
int isx_py_metric(PyObject *obj, isx_metric *out);

/* The NumPy dtype of stored rows: NPY_UINT8 for packed bits, else NPY_FLOAT32
 * (float16 and int8 storage is read and written as float32). */
int isx_py_row_dtype(isx_dtype d);

/* k: a Python int in 1..ISX_MAX_K (not a bool); -1 with an exception otherwise. */
int isx_py_parse_k(PyObject *obj, Py_ssize_t *k);

/* A new 1-D array of n items of NumPy `type`, copied from src. */
PyObject *isx_py_copy_array(const void *src, npy_intp n, int type);

#endif
