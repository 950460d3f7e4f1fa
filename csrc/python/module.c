/*
 * module.c -- imgsearch._core: module set-up, distance functions, loading.
 *
 * At import the CPU is probed once and the kernel table filled, and
 * OpenBLAS is fixed to one thread: our own workers call sgemm in parallel,
 * one per core, so a second layer of BLAS threads would only oversubscribe
 * the cores (see index/flat.c).
 */
#define ISX_MODULE_MAIN
#include "py_common.h"
#include "py_index.h"
#include "py_image.h"
#include "py_kernels.h"
#include "py_quant.h"
#include "../index/format.h"
#include "../simd/simd.h"

#include <stdlib.h>
#include <string.h>

extern void openblas_set_num_threads(int num_threads);
extern char *openblas_get_config(void);

static PyObject *py_capabilities(PyObject *mod, PyObject *noargs)
{
    (void)mod;
    (void)noargs;
    const isx_cpu_features *c = isx_cpu();
    PyObject *kernels = isx_py_kernel_origins(isx_simd_level());
    if (!kernels)
        return NULL;
    return Py_BuildValue(
        "{s:s,s:s,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:i,s:s,s:N}",
        "simd", isx_isa_name(isx_simd_level()),
        "simd_supported", isx_isa_name(isx_simd_supported()),
        "sse4_2", c->sse42 ? Py_True : Py_False,
        "popcnt", c->popcnt ? Py_True : Py_False,
        "avx2", c->avx2 && c->os_avx ? Py_True : Py_False,
        "fma", c->fma && c->os_avx ? Py_True : Py_False,
        "f16c", c->f16c && c->os_avx ? Py_True : Py_False,
        "avx512f", c->avx512f && c->os_avx512 ? Py_True : Py_False,
        "avx512bw", c->avx512bw && c->os_avx512 ? Py_True : Py_False,
        "avx512vpopcntdq", c->avx512vpopcntdq && c->os_avx512 ? Py_True : Py_False,
        "avx512fp16", c->avx512fp16 && c->os_avx512 ? Py_True : Py_False,
        "avx512vnni", c->avx512vnni && c->os_avx512 ? Py_True : Py_False,
        "cpus", isx_cpu_count(),
        "blas", openblas_get_config(),
        "kernels", kernels);
}

static int metric_dtype(isx_metric m)
{
    return m == ISX_METRIC_HAMMING ? NPY_UINT8 : NPY_FLOAT32;
}

static PyObject *py_pairwise(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    static char *kwlist[] = {"A", "B", "metric", "threads", NULL};
    PyObject *a_obj, *b_obj, *metric_obj = NULL, *threads_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O$O:pairwise", kwlist, &a_obj, &b_obj, &metric_obj, &threads_obj))
        return NULL;
    isx_metric metric = ISX_METRIC_L2;
    int threads;
    if ((metric_obj && isx_py_metric(metric_obj, &metric) < 0) || isx_py_threads(threads_obj, &threads) < 0)
        return NULL;
    PyArrayObject *A = isx_py_matrix(a_obj, metric_dtype(metric), 0, 1, "A");
    if (!A)
        return NULL;
    PyArrayObject *B = isx_py_matrix(b_obj, metric_dtype(metric), PyArray_DIM(A, 1), 1, "B");
    if (!B) {
        Py_DECREF(A);
        return NULL;
    }
    npy_intp shape[2] = {PyArray_DIM(A, 0), PyArray_DIM(B, 0)};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_FLOAT32);
    int rc = 0;
    if (out) {
        Py_BEGIN_ALLOW_THREADS
        rc = isx_pairwise(metric, PyArray_DATA(A), (size_t)shape[0], PyArray_DATA(B), (size_t)shape[1],
                          (size_t)PyArray_DIM(A, 1), threads, PyArray_DATA(out));
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(A);
    Py_DECREF(B);
    if (rc) {
        Py_XDECREF(out);
        return isx_py_raise(rc);
    }
    return (PyObject *)out;
}

/* Build the index a validated file describes; takes ownership of f. */
static PyObject *index_from_file(isx_file *f)
{
    int rc;
    switch (f->header.kind) {
    case ISX_KIND_FLAT: {
        isx_flat *flat;
        Py_BEGIN_ALLOW_THREADS
        rc = isx_flat_from_file(f, 0, &flat);
        Py_END_ALLOW_THREADS
        if (rc)
            return isx_py_raise(rc);
        return isx_py_flat_wrap(flat);
    }
    case ISX_KIND_HNSW: {
        isx_hnsw *hnsw;
        Py_BEGIN_ALLOW_THREADS
        rc = isx_hnsw_from_file(f, &hnsw);
        Py_END_ALLOW_THREADS
        if (rc)
            return isx_py_raise(rc);
        return isx_py_hnsw_wrap(hnsw);
    }
    case ISX_KIND_IVFPQ: {
        isx_ivfpq *ix;
        Py_BEGIN_ALLOW_THREADS
        rc = isx_ivfpq_from_file(f, &ix);
        Py_END_ALLOW_THREADS
        if (rc)
            return isx_py_raise(rc);
        return isx_py_ivfpq_wrap(ix);
    }
    case ISX_KIND_KDTREE: {
        isx_kdtree *kd;
        Py_BEGIN_ALLOW_THREADS
        rc = isx_kdtree_from_file(f, 0, &kd);
        Py_END_ALLOW_THREADS
        if (rc)
            return isx_py_raise(rc);
        return isx_py_kdtree_wrap(kd);
    }
    default: {
        unsigned kind = f->header.kind;
        isx_format_close(f);
        free(f);
        return PyErr_Format(isx_IndexFormatError,
                            "index kind %u (%s) is not supported by this version of imgsearch", kind,
                            kind == ISX_KIND_KDTREE ? "KD-tree" : kind == ISX_KIND_HNSW ? "HNSW" : "unknown");
    }
    }
}

static PyObject *py_load(PyObject *mod, PyObject *args, PyObject *kw)
{
    (void)mod;
    static char *kwlist[] = {"path", "mmap", NULL};
    PyObject *path = NULL;
    int use_mmap = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|p:load", kwlist, PyUnicode_FSConverter, &path, &use_mmap))
        return NULL;
    isx_file *f = calloc(1, sizeof(*f));
    if (!f) {
        Py_DECREF(path);
        return PyErr_NoMemory();
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_format_open_file(PyBytes_AS_STRING(path), use_mmap, f);
    Py_END_ALLOW_THREADS
    if (rc) {
        free(f);
        isx_py_raise_as(rc, isx_IndexFormatError, PyBytes_AS_STRING(path));
        Py_DECREF(path);
        return NULL;
    }
    Py_DECREF(path);
    return index_from_file(f);
}

/* Unpickling: the bytes are copied into an aligned buffer the file owns. */
static PyObject *py_from_bytes(PyObject *mod, PyObject *arg)
{
    (void)mod;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    isx_file *f = calloc(1, sizeof(*f));
    uint8_t *buf = isx_aligned_alloc((size_t)view.len);
    if (!f || !buf) {
        free(f);
        isx_aligned_free(buf);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    memcpy(buf, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    int rc = isx_format_open_memory(buf, (size_t)view.len, f);
    if (rc) {
        isx_aligned_free(buf);
        free(f);
        return isx_py_raise(rc);
    }
    f->owned = 1; /* now isx_format_close frees buf */
    return index_from_file(f);
}

static PyObject *py_read_meta(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *path = NULL;
    if (!PyArg_ParseTuple(args, "O&:read_meta", PyUnicode_FSConverter, &path))
        return NULL;
    isx_file f;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_format_open_file(PyBytes_AS_STRING(path), 1, &f);
    Py_END_ALLOW_THREADS
    if (rc) {
        isx_py_raise_as(rc, isx_IndexFormatError, PyBytes_AS_STRING(path));
        Py_DECREF(path);
        return NULL;
    }
    Py_DECREF(path);
    const isx_section_in *s = isx_format_find(&f, ISX_SEC_META);
    PyObject *r = s ? PyBytes_FromStringAndSize((const char *)s->data, (Py_ssize_t)s->size) : (Py_INCREF(Py_None), Py_None);
    isx_format_close(&f);
    return r;
}

static PyMethodDef module_methods[] = {
    {"capabilities", py_capabilities, METH_NOARGS,
     "capabilities()\n--\n\nThe CPU features found and the SIMD level in use."},
    {"pairwise", (PyCFunction)(void (*)(void))py_pairwise, METH_VARARGS | METH_KEYWORDS,
     "pairwise(A, B, metric=\"l2\", *, threads=None)\n--\n\nAll distances, float32 (len(A), len(B))."},
    {"_kernel", isx_py_kernel, METH_VARARGS, NULL},
    {"_bounded", isx_py_bounded, METH_VARARGS, NULL},
    {"_select", isx_py_select, METH_VARARGS, NULL},
    {"_fused", isx_py_fused, METH_VARARGS, NULL},
    {"_kdleaf", isx_py_kdleaf, METH_VARARGS, NULL},
    {"_f16_to_f32", isx_py_f16_to_f32, METH_VARARGS, NULL},
    {"_crc32c", isx_py_crc32c, METH_VARARGS, NULL},
    {"_kernel_table", isx_py_kernel_table, METH_VARARGS, NULL},
    {"_pq_lut_ip", isx_py_pq_lut_ip, METH_VARARGS, NULL},
    {"_pq4_quantize", isx_py_pq4_quantize, METH_VARARGS, NULL},
    {"_pq8_scan", isx_py_pq8_scan, METH_VARARGS, NULL},
    {"_pq4_scan", isx_py_pq4_scan, METH_VARARGS, NULL},
    {"_nearest_small", isx_py_nearest_small, METH_VARARGS, NULL},
    {"_set_simd", isx_py_set_simd, METH_VARARGS, NULL},
    {"_kmeans", (PyCFunction)(void (*)(void))isx_py_kmeans, METH_VARARGS | METH_KEYWORDS, NULL},
    {"_kmeans_assign", (PyCFunction)(void (*)(void))isx_py_kmeans_assign, METH_VARARGS | METH_KEYWORDS, NULL},
    {"_pq_train", (PyCFunction)(void (*)(void))isx_py_pq_train, METH_VARARGS | METH_KEYWORDS, NULL},
    {"_pq_encode", (PyCFunction)(void (*)(void))isx_py_pq_encode, METH_VARARGS | METH_KEYWORDS, NULL},
    {"_pq_decode", (PyCFunction)(void (*)(void))isx_py_pq_decode, METH_VARARGS | METH_KEYWORDS, NULL},
    {"_pq_lut", (PyCFunction)(void (*)(void))isx_py_pq_lut, METH_VARARGS | METH_KEYWORDS, NULL},
    {"_pq_lut_distance", (PyCFunction)(void (*)(void))isx_py_pq_lut_distance, METH_VARARGS | METH_KEYWORDS, NULL},
    {"_opq_train", (PyCFunction)(void (*)(void))isx_py_opq_train, METH_VARARGS | METH_KEYWORDS, NULL},
    {"load", (PyCFunction)(void (*)(void))py_load, METH_VARARGS | METH_KEYWORDS,
     "load(path, mmap=False)\n--\n\nLoad any saved index.  mmap=True maps the vectors read-only\n"
     "instead of reading them (the index copies them on its first change)."},
    {"_from_bytes", py_from_bytes, METH_O, NULL},
    {"read_meta", py_read_meta, METH_VARARGS,
     "read_meta(path)\n--\n\nThe META section's bytes of a saved index, or None."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "imgsearch._core",
                                        "imgsearch's C core.", -1, module_methods};

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    isx_simd_init();
    openblas_set_num_threads(1);
    PyObject *m = PyModule_Create(&module_def);
    if (!m)
        return NULL;
    if (PyType_Ready(&isx_FlatType) < 0)
        goto error;
    Py_INCREF(&isx_FlatType);
    if (PyModule_AddObject(m, "FlatIndex", (PyObject *)&isx_FlatType) < 0) {
        Py_DECREF(&isx_FlatType);
        goto error;
    }
    if (PyType_Ready(&isx_HNSWType) < 0)
        goto error;
    Py_INCREF(&isx_HNSWType);
    if (PyModule_AddObject(m, "HNSWIndex", (PyObject *)&isx_HNSWType) < 0) {
        Py_DECREF(&isx_HNSWType);
        goto error;
    }
    if (PyType_Ready(&isx_IVFPQType) < 0)
        goto error;
    Py_INCREF(&isx_IVFPQType);
    if (PyModule_AddObject(m, "IVFPQIndex", (PyObject *)&isx_IVFPQType) < 0) {
        Py_DECREF(&isx_IVFPQType);
        goto error;
    }
    if (PyType_Ready(&isx_KDTreeType) < 0)
        goto error;
    Py_INCREF(&isx_KDTreeType);
    if (PyModule_AddObject(m, "KDTreeIndex", (PyObject *)&isx_KDTreeType) < 0) {
        Py_DECREF(&isx_KDTreeType);
        goto error;
    }
    isx_IndexFormatError = PyErr_NewExceptionWithDoc(
        "imgsearch.IndexFormatError",
        "A saved index is corrupt, truncated, of a newer format, or not an imgsearch file.",
        PyExc_ValueError, NULL);
    if (!isx_IndexFormatError)
        goto error;
    Py_INCREF(isx_IndexFormatError);
    if (PyModule_AddObject(m, "IndexFormatError", isx_IndexFormatError) < 0)
        goto error;
    if (isx_py_image_init(m) < 0)
        goto error;
    return m;
error:
    Py_DECREF(m);
    return NULL;
}
