/*
 * py_kernels.h -- test and benchmark hooks over the kernel table
 * (py_kernels.c), registered by module.c.
 */
#ifndef ISX_PY_KERNELS_H
#define ISX_PY_KERNELS_H

#include "py_common.h"
#include "../simd/simd.h"

PyObject *isx_py_kernel(PyObject *mod, PyObject *args);
PyObject *isx_py_bounded(PyObject *mod, PyObject *args);
PyObject *isx_py_select(PyObject *mod, PyObject *args);
PyObject *isx_py_fused(PyObject *mod, PyObject *args);
PyObject *isx_py_kdleaf(PyObject *mod, PyObject *args);
PyObject *isx_py_f16_to_f32(PyObject *mod, PyObject *args);
PyObject *isx_py_crc32c(PyObject *mod, PyObject *args);
PyObject *isx_py_kernel_table(PyObject *mod, PyObject *args);
PyObject *isx_py_pq_lut_ip(PyObject *mod, PyObject *args);
PyObject *isx_py_pq4_quantize(PyObject *mod, PyObject *args);
PyObject *isx_py_pq8_scan(PyObject *mod, PyObject *args);
PyObject *isx_py_pq4_scan(PyObject *mod, PyObject *args);
PyObject *isx_py_nearest_small(PyObject *mod, PyObject *args);
PyObject *isx_py_set_simd(PyObject *mod, PyObject *args);
/* {slot name: level its kernel comes from} for the table of `level`. */
PyObject *isx_py_kernel_origins(isx_isa level);

#endif
