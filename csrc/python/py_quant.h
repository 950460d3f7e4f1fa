/*
 * py_quant.h -- test and benchmark hooks over k-means and product
 * quantization (py_quant.c), registered by module.c.
 */
#ifndef ISX_PY_QUANT_H
#define ISX_PY_QUANT_H

#include "py_common.h"

PyObject *isx_py_kmeans(PyObject *mod, PyObject *args, PyObject *kw);
PyObject *isx_py_kmeans_assign(PyObject *mod, PyObject *args, PyObject *kw);
PyObject *isx_py_pq_train(PyObject *mod, PyObject *args, PyObject *kw);
PyObject *isx_py_pq_encode(PyObject *mod, PyObject *args, PyObject *kw);
PyObject *isx_py_pq_decode(PyObject *mod, PyObject *args, PyObject *kw);
PyObject *isx_py_pq_lut(PyObject *mod, PyObject *args, PyObject *kw);
PyObject *isx_py_pq_lut_distance(PyObject *mod, PyObject *args, PyObject *kw);

#endif
