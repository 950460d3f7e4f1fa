/*
 * py_image.c -- bindings of the image pipeline (csrc/image/): load, resize,
 * batch preprocessing and classic features, and imgsearch.ImageDecodeError.
 *
 * Items of a batch may be paths (str, os.PathLike), encoded bytes (bytes,
 * bytearray, memoryview: the data of an image file, not a path) or uint8
 * arrays (H, W), (H, W, 1|3|4) -- anything NumPy can view as one, so a PIL
 * image works too.  They are turned into isx_image_source records while the
 * GIL is held (references and buffer exports are kept until the end, so
 * nothing moves), then the batch runs on native threads with the GIL
 * released.  An item that cannot be used at all (an int, a float array)
 * becomes a failed item like a corrupt file: one bad item never stops a
 * batch.  Failures come back as (index, reason, exception): the exception is
 * the one the item raises on its own (image_exception), so imgsearch/image.py
 * raises it as it is and never re-maps a status.
 */
#include "py_common.h"
#include "py_image.h"
#include "../image/image.h"
#include "../image/encode.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

PyObject *isx_ImageDecodeError = NULL;

/* The exception of a failed image item, through the route every binding
 * shares (isx_py_exception): decode problems are ImageDecodeError naming the
 * item, I/O errors the OSError subclass of their errno with the path as
 * .filename, the rest as their status says. */
static PyObject *image_exception(int status, int err, const char *msg, const isx_image_source *src, size_t index)
{
    char what[600], text[1700];
    if (src && src->kind == ISX_SRC_PATH)
        PyOS_snprintf(what, sizeof(what), "'%.500s'", src->path);
    else if (src && src->kind == ISX_SRC_BYTES)
        PyOS_snprintf(what, sizeof(what), "<%zu bytes>", src->len);
    else
        PyOS_snprintf(what, sizeof(what), "item %zu", index);
    if (status == ISX_EIO)
        PyOS_snprintf(text, sizeof(text), "%s", msg); /* the message names the path */
    else
        PyOS_snprintf(text, sizeof(text), status == ISX_EFORMAT ? "cannot decode %s: %s" : "%s: %s", what, msg);
    return isx_py_exception(status, err, text, isx_ImageDecodeError,
                            src && src->kind == ISX_SRC_PATH ? src->path : NULL);
}

/* ======================================================================== */
/* Items -> sources                                                          */
/* ======================================================================== */

typedef struct {
    size_t n;
    isx_image_source *src;
    PyObject **keep;     /* a reference per item (path bytes or array), or NULL */
    Py_buffer *views;    /* buffer exports of bytes-like items */
    char *viewed;        /* 1 where views[i] must be released */
    char **errors;       /* messages of unusable items */
} item_list;

static void items_free(item_list *l)
{
    if (!l->src)
        return;
    for (size_t i = 0; i < l->n; i++) {
        Py_XDECREF(l->keep[i]);
        if (l->viewed[i])
            PyBuffer_Release(&l->views[i]);
        free(l->errors[i]);
    }
    free(l->src);
    free(l->keep);
    free(l->views);
    free(l->viewed);
    free(l->errors);
    l->src = NULL;
}

static void item_invalid(item_list *l, size_t i, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    PyOS_vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    l->errors[i] = strdup(buf);
    l->src[i].kind = ISX_SRC_INVALID;
    l->src[i].error = l->errors[i] ? l->errors[i] : "unusable item";
}

static int is_array_like(PyObject *o)
{
    return PyArray_Check(o) || PyObject_HasAttrString(o, "__array_interface__") ||
           PyObject_HasAttrString(o, "__array_struct__") || PyObject_HasAttrString(o, "__array__");
}

/* The message of the pending exception, for an item failure. */
static void item_from_exception(item_list *l, size_t i, const char *prefix)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *s = value ? PyObject_Str(value) : NULL;
    const char *text = s ? PyUnicode_AsUTF8(s) : NULL;
    if (!text)
        PyErr_Clear();
    item_invalid(l, i, "%s%s", prefix, text ? text : "unusable item");
    Py_XDECREF(s);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

static void item_path(item_list *l, size_t i, PyObject *obj)
{
    PyObject *encoded = NULL;
    if (!PyUnicode_FSConverter(obj, &encoded)) {
        item_from_exception(l, i, "unusable path: ");
        return;
    }
    l->keep[i] = encoded;
    l->src[i].kind = ISX_SRC_PATH;
    l->src[i].path = PyBytes_AS_STRING(encoded);
}

static void item_array(item_list *l, size_t i, PyObject *obj)
{
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!arr) {
        item_from_exception(l, i, "not an array: ");
        return;
    }
    int nd = PyArray_NDIM(arr);
    npy_intp c = nd == 3 ? PyArray_DIM(arr, 2) : 1;
    if (PyArray_TYPE(arr) != NPY_UINT8 || (nd != 2 && nd != 3) || (c != 1 && c != 3 && c != 4)) {
        char shape[96] = "";
        size_t used = 0;
        for (int d = 0; d < nd && d < 4 && used < sizeof(shape) - 24; d++)
            used += (size_t)PyOS_snprintf(shape + used, sizeof(shape) - used, d ? ", %zd" : "%zd",
                                          (Py_ssize_t)PyArray_DIM(arr, d));
        item_invalid(l, i,
                     "expected a uint8 array of shape (H, W, 3), (H, W, 4) or (H, W), found %s array of shape "
                     "(%s); convert with numpy.clip(x, 0, 255).astype(numpy.uint8)",
                     PyArray_DESCR(arr)->typeobj->tp_name, shape);
        Py_DECREF(arr);
        return;
    }
    PyArrayObject *contig = PyArray_GETCONTIGUOUS(arr);
    Py_DECREF(arr);
    if (!contig) {
        item_from_exception(l, i, "");
        return;
    }
    l->keep[i] = (PyObject *)contig;
    l->src[i].kind = ISX_SRC_PIXELS;
    l->src[i].data = PyArray_DATA(contig);
    l->src[i].height = (size_t)PyArray_DIM(contig, 0);
    l->src[i].width = (size_t)PyArray_DIM(contig, 1);
    l->src[i].channels = (int)c;
}

/* Fill l from a sequence; -1 with an exception only for a non-sequence or
 * out of memory (bad items are recorded, not raised). */
static int items_from(PyObject *seq_obj, item_list *l)
{
    memset(l, 0, sizeof(*l));
    PyObject *seq = PySequence_Fast(seq_obj, "expected a list of paths, bytes or uint8 arrays");
    if (!seq)
        return -1;
    size_t n = (size_t)PySequence_Fast_GET_SIZE(seq);
    l->n = n;
    size_t alloc = n ? n : 1;
    l->src = calloc(alloc, sizeof(*l->src));
    l->keep = calloc(alloc, sizeof(*l->keep));
    l->views = calloc(alloc, sizeof(*l->views));
    l->viewed = calloc(alloc, 1);
    l->errors = calloc(alloc, sizeof(*l->errors));
    if (!l->src || !l->keep || !l->views || !l->viewed || !l->errors) {
        free(l->src);
        free(l->keep);
        free(l->views);
        free(l->viewed);
        free(l->errors);
        l->src = NULL;
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)i);
        if (PyUnicode_Check(o)) {
            item_path(l, i, o);
        } else if (PyBytes_Check(o) || PyByteArray_Check(o) || PyMemoryView_Check(o)) {
            if (PyObject_GetBuffer(o, &l->views[i], PyBUF_SIMPLE) < 0) {
                item_from_exception(l, i, "unusable buffer: ");
                continue;
            }
            l->viewed[i] = 1;
            l->src[i].kind = ISX_SRC_BYTES;
            l->src[i].data = l->views[i].buf;
            l->src[i].len = (size_t)l->views[i].len;
        } else if (is_array_like(o)) {
            item_array(l, i, o);
        } else if (PyObject_HasAttrString(o, "__fspath__")) {
            item_path(l, i, o);
        } else {
            item_invalid(l, i,
                         "expected a path (str or os.PathLike), the bytes of an image file, or a uint8 array "
                         "(H, W, 3); found %s",
                         Py_TYPE(o)->tp_name);
        }
    }
    Py_DECREF(seq);
    return 0;
}

/* ======================================================================== */
/* Running a batch                                                           */
/* ======================================================================== */

/* Run `b` over the items; returns the list of (index, status, reason) and
 * sets *n_ok, or NULL with an exception. */
static PyObject *run_batch(isx_image_batch *b, item_list *l, int threads, size_t *n_ok)
{
    size_t alloc = l->n ? l->n : 1;
    b->sources = l->src;
    b->n = l->n;
    b->status = calloc(alloc, sizeof(int));
    b->errnos = calloc(alloc, sizeof(int));
    b->messages = calloc(alloc, sizeof(char *));
    PyObject *failed = NULL;
    if (!b->status || !b->errnos || !b->messages) {
        PyErr_NoMemory();
        goto cleanup;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_image_batch_run(b, threads);
    if (rc == ISX_OK)
        *n_ok = isx_image_batch_compact(b);
    Py_END_ALLOW_THREADS
    if (rc) {
        isx_py_raise(rc);
        goto cleanup;
    }
    failed = PyList_New(0);
    if (!failed)
        goto cleanup;
    for (size_t i = 0; i < l->n; i++) {
        if (b->status[i] == ISX_OK)
            continue;
        const char *msg = b->messages[i] ? b->messages[i] : "out of memory recording the error";
        PyObject *e = image_exception(b->status[i], b->errnos[i], msg, &l->src[i], i);
        PyObject *t = e ? Py_BuildValue("(nsN)", (Py_ssize_t)i, msg, e) : NULL;
        if (!t || PyList_Append(failed, t) < 0) {
            Py_XDECREF(t);
            Py_CLEAR(failed);
            goto cleanup;
        }
        Py_DECREF(t);
    }
cleanup:
    if (b->messages)
        for (size_t i = 0; i < l->n; i++)
            free(b->messages[i]);
    free(b->messages);
    free(b->status);
    free(b->errnos);
    b->messages = NULL;
    b->status = NULL;
    b->errnos = NULL;
    return failed;
}

/* Shrink a freshly made (n, ...) array to its first n_ok rows, in place. */
static int shrink_rows(PyArrayObject **arr, size_t n_ok)
{
    if ((npy_intp)n_ok == PyArray_DIM(*arr, 0))
        return 0;
    int nd = PyArray_NDIM(*arr);
    npy_intp dims[4];
    for (int d = 0; d < nd; d++)
        dims[d] = PyArray_DIM(*arr, d);
    dims[0] = (npy_intp)n_ok;
    PyArray_Dims shape = {dims, nd};
    PyObject *r = PyArray_Resize(*arr, &shape, 0, NPY_CORDER);
    if (!r)
        return -1;
    Py_DECREF(r); /* None */
    return 0;
}

static int preprocess_item(void *ctx, const isx_image *img, void *out)
{
    return isx_image_preprocess(img, ctx, out);
}

static int parse_triple(PyObject *obj, float out[3], const char *what)
{
    PyObject *seq = PySequence_Fast(obj, "");
    if (!seq || PySequence_Fast_GET_SIZE(seq) != 3) {
        Py_XDECREF(seq);
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: expected 3 numbers (one per RGB channel)", what);
        return -1;
    }
    for (int i = 0; i < 3; i++) {
        double v = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        out[i] = (float)v;
    }
    Py_DECREF(seq);
    return 0;
}

/* _image_batch(items, size, resize, mean, std, threads) -> (batch, failed) */
static PyObject *py_image_batch(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *items_obj, *mean_obj, *std_obj, *threads_obj;
    Py_ssize_t size, resize;
    if (!PyArg_ParseTuple(args, "OnnOOO:_image_batch", &items_obj, &size, &resize, &mean_obj, &std_obj, &threads_obj))
        return NULL;
    isx_preprocess p;
    int threads;
    if (size < 1 || (size_t)size > ISX_IMAGE_MAX_OUT_SIDE)
        return PyErr_Format(PyExc_ValueError, "size: expected 1..%u, found %zd", ISX_IMAGE_MAX_OUT_SIDE, size);
    if (resize < size || (size_t)resize > ISX_IMAGE_MAX_OUT_SIDE)
        return PyErr_Format(PyExc_ValueError,
                            "resize: expected size <= resize <= %u (the shorter side is resized to it, then the "
                            "centre size x size is cropped), found resize=%zd size=%zd",
                            ISX_IMAGE_MAX_OUT_SIDE, resize, size);
    if (parse_triple(mean_obj, p.mean, "mean") < 0 || parse_triple(std_obj, p.std, "std") < 0 ||
        isx_py_threads(threads_obj, &threads) < 0)
        return NULL;
    for (int c = 0; c < 3; c++)
        if (!(p.std[c] > 0) || p.mean[c] != p.mean[c])
            return PyErr_Format(PyExc_ValueError, "std: expected positive numbers and a finite mean, found std[%d]=%g",
                                c, (double)p.std[c]);
    p.size = (size_t)size;
    p.resize = (size_t)resize;
    item_list l;
    if (items_from(items_obj, &l) < 0)
        return NULL;
    npy_intp dims[4] = {(npy_intp)l.n, 3, size, size};
    PyArrayObject *batch = (PyArrayObject *)PyArray_SimpleNew(4, dims, NPY_FLOAT32);
    PyObject *failed = NULL;
    if (!batch)
        goto error;
    isx_image_batch b = {0};
    b.decode.min_side = (size_t)resize;
    b.fn = preprocess_item;
    b.ctx = &p;
    b.out = PyArray_DATA(batch);
    b.row_bytes = 3 * (size_t)size * (size_t)size * sizeof(float);
    size_t n_ok = 0;
    failed = run_batch(&b, &l, threads, &n_ok);
    if (!failed || shrink_rows(&batch, n_ok) < 0)
        goto error;
    items_free(&l);
    PyObject *r = Py_BuildValue("(NN)", batch, failed);
    return r;
error:
    items_free(&l);
    Py_XDECREF(batch);
    Py_XDECREF(failed);
    return NULL;
}

/* Several features of one decoded image, side by side in one row: a
 * combined descriptor (colour + texture) decodes each file once. */
#define FEATURES_MAX 4

typedef struct {
    int n;
    isx_feature f[FEATURES_MAX];
    size_t offset[FEATURES_MAX]; /* bytes into the row */
} feature_set;

static int feature_item(void *ctx, const isx_image *img, void *out)
{
    const feature_set *set = ctx;
    for (int i = 0; i < set->n; i++) {
        int rc = isx_feature_compute(&set->f[i], img, (uint8_t *)out + set->offset[i]);
        if (rc)
            return rc;
    }
    return ISX_OK;
}

/* PyArg_ParseTuple, after checking that `o` is a tuple (it says nothing useful otherwise). */
static int parse_tuple(PyObject *o, const char *what, const char *format, ...)
{
    if (!PyTuple_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a tuple, found %s", what, Py_TYPE(o)->tp_name);
        return 0;
    }
    va_list ap;
    va_start(ap, format);
    int ok = PyArg_VaParse(o, format, ap);
    va_end(ap);
    return ok;
}

/* LBP parameters: (side, ((P, R), ...), (cells per side, ...)). */
static int parse_lbp(PyObject *params, isx_lbp_params *q)
{
    PyObject *scales, *cells;
    int side;
    if (!parse_tuple(params, "lbp parameters", "iOO:lbp parameters (side, ((P, R), ...), (cells, ...))", &side,
                     &scales, &cells))
        return -1;
    q->side = side;
    PyObject *sf = PySequence_Fast(scales, "lbp scales: expected a sequence of (P, R) pairs");
    if (!sf)
        return -1;
    Py_ssize_t ns = PySequence_Fast_GET_SIZE(sf);
    if (ns < 1 || ns > ISX_LBP_MAX_SCALES) {
        Py_DECREF(sf);
        PyErr_Format(PyExc_ValueError, "lbp scales: expected 1..%d (P, R) pairs, found %zd", ISX_LBP_MAX_SCALES, ns);
        return -1;
    }
    q->n_scales = (int)ns;
    for (Py_ssize_t i = 0; i < ns; i++) {
        if (!parse_tuple(PySequence_Fast_GET_ITEM(sf, i), "lbp scale (P, R)", "if:lbp scale (P, R)", &q->points[i], &q->radius[i])) {
            Py_DECREF(sf);
            return -1;
        }
    }
    Py_DECREF(sf);
    PyObject *cf = PySequence_Fast(cells, "lbp grid: expected a sequence of cells per side, e.g. (1, 2)");
    if (!cf)
        return -1;
    Py_ssize_t nl = PySequence_Fast_GET_SIZE(cf);
    if (nl < 1 || nl > ISX_LBP_MAX_LEVELS) {
        Py_DECREF(cf);
        PyErr_Format(PyExc_ValueError, "lbp grid: expected 1..%d levels, found %zd", ISX_LBP_MAX_LEVELS, nl);
        return -1;
    }
    q->n_levels = (int)nl;
    for (Py_ssize_t l = 0; l < nl; l++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(cf, l));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(cf);
            return -1;
        }
        q->cells[l] = v < INT_MIN ? INT_MIN : v > INT_MAX ? INT_MAX : (int)v;
    }
    Py_DECREF(cf);
    return 0;
}

/* One (kind, params) spec into f. */
static int parse_feature(PyObject *spec, isx_feature *f)
{
    int kind;
    PyObject *params;
    if (!parse_tuple(spec, "feature spec (kind, params)", "iO:feature spec (kind, params)", &kind, &params))
        return -1;
    memset(f, 0, sizeof(*f));
    f->kind = (isx_feature_kind)kind;
    if (kind == ISX_FEATURE_COLORHIST)
        return parse_tuple(params, "colour histogram parameters", "iii|f:colour histogram (bins, bins, bins, centre)",
                           &f->bins[0], &f->bins[1], &f->bins[2], &f->centre)
                   ? 0
                   : -1;
    if (kind == ISX_FEATURE_LBP)
        return parse_lbp(params, &f->lbp);
    return 0; /* the hashes have no parameters; an unknown kind fails its check */
}

/* _image_features(specs, items, threads) -> (features, failed): specs is a
 * list of (kind, params); their rows are concatenated (float features only,
 * or a single hash: uint8). */
static PyObject *py_image_features(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *specs_obj, *items_obj, *threads_obj;
    if (!PyArg_ParseTuple(args, "OOO:_image_features", &specs_obj, &items_obj, &threads_obj))
        return NULL;
    PyObject *specs = PySequence_Fast(specs_obj, "expected a list of (kind, params) feature specs");
    if (!specs)
        return NULL;
    feature_set set = {0};
    Py_ssize_t nspec = PySequence_Fast_GET_SIZE(specs);
    if (nspec < 1 || nspec > FEATURES_MAX) {
        Py_DECREF(specs);
        return PyErr_Format(PyExc_ValueError, "expected 1..%d feature specs, found %zd", FEATURES_MAX, nspec);
    }
    size_t row_bytes = 0, min_side = 0;
    int any_hash = 0;
    for (Py_ssize_t i = 0; i < nspec; i++) {
        size_t bytes, side;
        if (parse_feature(PySequence_Fast_GET_ITEM(specs, i), &set.f[i]) < 0) {
            Py_DECREF(specs);
            return NULL;
        }
        int rc = isx_feature_check(&set.f[i], &bytes, &side);
        if (rc) {
            Py_DECREF(specs);
            return isx_py_raise(rc);
        }
        any_hash |= set.f[i].kind == ISX_FEATURE_PHASH || set.f[i].kind == ISX_FEATURE_DHASH;
        set.offset[i] = row_bytes;
        row_bytes += bytes;
        min_side = side > min_side ? side : min_side;
    }
    set.n = (int)nspec;
    Py_DECREF(specs);
    if (any_hash && nspec > 1)
        return PyErr_Format(PyExc_ValueError, "a hash (packed bits) cannot be combined with other features");
    int threads;
    if (isx_py_threads(threads_obj, &threads) < 0)
        return NULL;
    item_list l;
    if (items_from(items_obj, &l) < 0)
        return NULL;
    npy_intp dims[2] = {(npy_intp)l.n, (npy_intp)(any_hash ? row_bytes : row_bytes / sizeof(float))};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, any_hash ? NPY_UINT8 : NPY_FLOAT32);
    PyObject *failed = NULL;
    if (!out)
        goto error;
    isx_image_batch b = {0};
    b.decode.min_side = min_side;
    b.fn = feature_item;
    b.ctx = &set;
    b.out = PyArray_DATA(out);
    b.row_bytes = row_bytes;
    size_t n_ok = 0;
    failed = run_batch(&b, &l, threads, &n_ok);
    if (!failed || shrink_rows(&out, n_ok) < 0)
        goto error;
    items_free(&l);
    return Py_BuildValue("(NN)", out, failed);
error:
    items_free(&l);
    Py_XDECREF(out);
    Py_XDECREF(failed);
    return NULL;
}

/* _lbp_codes(grey, P, R) -> uint8 codes of a float32 (H, W) grey image: for
 * tests, which check the codes themselves against NumPy. */
static PyObject *py_lbp_codes(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *grey_obj;
    int points;
    float radius;
    if (!PyArg_ParseTuple(args, "Oif:_lbp_codes", &grey_obj, &points, &radius))
        return NULL;
    PyArrayObject *grey = (PyArrayObject *)PyArray_FROMANY(grey_obj, NPY_FLOAT32, 2, 2, NPY_ARRAY_IN_ARRAY);
    if (!grey)
        return NULL;
    npy_intp dims[2] = {PyArray_DIM(grey, 0), PyArray_DIM(grey, 1)};
    PyArrayObject *codes = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_UINT8);
    if (!codes) {
        Py_DECREF(grey);
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_lbp_codes(PyArray_DATA(grey), (size_t)dims[1], (size_t)dims[0], points, radius, PyArray_DATA(codes));
    Py_END_ALLOW_THREADS
    Py_DECREF(grey);
    if (rc) {
        Py_DECREF(codes);
        return isx_py_raise(rc);
    }
    return (PyObject *)codes;
}

/* ======================================================================== */
/* One image                                                                 */
/* ======================================================================== */

/* One item (path, bytes or array) as a list of one; -1 with an exception as items_from. */
static int item_from_one(PyObject *obj, item_list *l)
{
    PyObject *one = PyTuple_Pack(1, obj);
    if (!one)
        return -1;
    int r = items_from(one, l);
    Py_DECREF(one);
    return r;
}

static void free_capsule(PyObject *cap)
{
    free(PyCapsule_GetPointer(cap, "imgsearch.pixels"));
}

/* A (H, W, 3) uint8 array that takes ownership of img's pixels. */
static PyObject *wrap_image(isx_image *img)
{
    npy_intp dims[3] = {(npy_intp)img->height, (npy_intp)img->width, 3};
    if (!img->owned) { /* borrowed pixels: copy */
        PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(3, dims, NPY_UINT8);
        if (a)
            memcpy(PyArray_DATA(a), img->pixels, img->width * img->height * 3);
        return (PyObject *)a;
    }
    PyObject *cap = PyCapsule_New(img->owned, "imgsearch.pixels", free_capsule);
    if (!cap) {
        isx_image_free(img);
        return NULL;
    }
    img->owned = NULL;
    PyObject *arr = PyArray_SimpleNewFromData(3, dims, NPY_UINT8, (void *)img->pixels);
    if (!arr || PyArray_SetBaseObject((PyArrayObject *)arr, cap) < 0) {
        Py_XDECREF(arr);
        Py_DECREF(cap);
        return NULL;
    }
    return arr;
}

/* _image_load(path_or_bytes) -> uint8 (H, W, 3) */
static PyObject *py_image_load(PyObject *mod, PyObject *arg)
{
    (void)mod;
    item_list l;
    if (item_from_one(arg, &l) < 0)
        return NULL;
    isx_image_source *src = &l.src[0];
    if (src->kind == ISX_SRC_PIXELS || src->kind == ISX_SRC_INVALID) {
        PyErr_Format(PyExc_TypeError,
                     "load: expected a path (str or os.PathLike) or the bytes of an image file, found %s",
                     Py_TYPE(arg)->tp_name);
        items_free(&l);
        return NULL;
    }
    isx_image img;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_image_from_source(src, NULL, &img);
    Py_END_ALLOW_THREADS
    if (rc) {
        isx_py_raise_object(image_exception(rc, isx_last_errno(), isx_last_error(), src, 0));
        items_free(&l);
        return NULL;
    }
    items_free(&l);
    return wrap_image(&img);
}

/* _image_resize(array, width, height) -> uint8 (height, width, 3) */
static PyObject *py_image_resize(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *arr_obj;
    Py_ssize_t w, h;
    if (!PyArg_ParseTuple(args, "Onn:_image_resize", &arr_obj, &w, &h))
        return NULL;
    if (w < 1 || h < 1 || (size_t)w > ISX_IMAGE_MAX_OUT_SIDE || (size_t)h > ISX_IMAGE_MAX_OUT_SIDE)
        return PyErr_Format(PyExc_ValueError, "resize: expected a size between 1 and %u per side, found %zd x %zd",
                            ISX_IMAGE_MAX_OUT_SIDE, w, h);
    item_list l;
    if (item_from_one(arr_obj, &l) < 0)
        return NULL;
    if (l.src[0].kind != ISX_SRC_PIXELS) {
        PyErr_Format(PyExc_TypeError, "resize: %s",
                     l.src[0].kind == ISX_SRC_INVALID ? l.src[0].error
                                                      : "expected a uint8 array (H, W, 3), (H, W, 4) or (H, W)");
        items_free(&l);
        return NULL;
    }
    npy_intp dims[3] = {h, w, 3};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(3, dims, NPY_UINT8);
    if (!out) {
        items_free(&l);
        return NULL;
    }
    isx_image img;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_image_from_source(&l.src[0], NULL, &img);
    if (rc == ISX_OK) {
        rc = isx_image_resize(&img, (size_t)w, (size_t)h, PyArray_DATA(out));
        isx_image_free(&img);
    }
    Py_END_ALLOW_THREADS
    items_free(&l);
    if (rc) {
        Py_DECREF(out);
        return isx_py_raise_as(rc, isx_ImageDecodeError, NULL);
    }
    return (PyObject *)out;
}

/* _image_thumbnail(item, max_side, format, quality) -> bytes: format is
 * "jpeg" or "png"; item a path, encoded bytes or a uint8 array. */
static PyObject *py_image_thumbnail(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *item;
    Py_ssize_t max_side;
    const char *format_name;
    int quality;
    if (!PyArg_ParseTuple(args, "Onsi:_image_thumbnail", &item, &max_side, &format_name, &quality))
        return NULL;
    isx_thumb_format format;
    if (strcmp(format_name, "jpeg") == 0)
        format = ISX_THUMB_JPEG;
    else if (strcmp(format_name, "png") == 0)
        format = ISX_THUMB_PNG;
    else
        return PyErr_Format(PyExc_ValueError, "format: expected \"jpeg\" or \"png\", found %R",
                            PyTuple_GET_ITEM(args, 2));
    if (max_side < 1 || (size_t)max_side > ISX_THUMB_MAX_SIDE)
        return PyErr_Format(PyExc_ValueError, "max_side: expected 1..%u pixels, found %zd", ISX_THUMB_MAX_SIDE,
                            max_side);
    item_list l;
    if (item_from_one(item, &l) < 0)
        return NULL;
    const isx_image_source *src = &l.src[0];
    if (src->kind == ISX_SRC_INVALID) {
        PyErr_Format(PyExc_TypeError, "thumbnail: %s", src->error);
        items_free(&l);
        return NULL;
    }
    uint8_t *data = NULL;
    size_t len = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_image_thumbnail(src, (size_t)max_side, format, quality, &data, &len);
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (rc) {
        isx_py_raise_object(image_exception(rc, isx_last_errno(), isx_last_error(), src, 0));
    } else {
        result = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
    }
    free(data);
    items_free(&l);
    return result;
}

/* _image_dimensions(bytes) -> (width, height) from the header alone */
static PyObject *py_image_dimensions(PyObject *mod, PyObject *arg)
{
    (void)mod;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    size_t w = 0, h = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = isx_image_dimensions(view.buf, (size_t)view.len, &w, &h);
    Py_END_ALLOW_THREADS
    isx_image_source what = {.kind = ISX_SRC_BYTES, .len = (size_t)view.len};
    PyBuffer_Release(&view);
    if (rc)
        return isx_py_raise_object(image_exception(rc, isx_last_errno(), isx_last_error(), &what, 0));
    return Py_BuildValue("(nn)", (Py_ssize_t)w, (Py_ssize_t)h);
}

/* _exif_orientation(bytes) -> int: for tests and for callers that decode elsewhere */
static PyObject *py_exif_orientation(PyObject *mod, PyObject *arg)
{
    (void)mod;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int o = isx_exif_orientation(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromLong(o);
}

static PyMethodDef image_methods[] = {
    {"_image_load", py_image_load, METH_O, NULL},
    {"_image_resize", py_image_resize, METH_VARARGS, NULL},
    {"_image_batch", py_image_batch, METH_VARARGS, NULL},
    {"_image_features", py_image_features, METH_VARARGS, NULL},
    {"_lbp_codes", py_lbp_codes, METH_VARARGS, NULL},
    {"_exif_orientation", py_exif_orientation, METH_O, NULL},
    {"_image_thumbnail", py_image_thumbnail, METH_VARARGS, NULL},
    {"_image_dimensions", py_image_dimensions, METH_O, NULL},
    {NULL, NULL, 0, NULL}};

int isx_py_image_init(PyObject *m)
{
    if (PyModule_AddFunctions(m, image_methods) < 0)
        return -1;
    isx_ImageDecodeError = PyErr_NewExceptionWithDoc(
        "imgsearch.ImageDecodeError",
        "An image file is not an image, or is corrupt, truncated, or larger than the decoder's limits.\n"
        "The message names the file and the reason.",
        PyExc_ValueError, NULL);
    if (!isx_ImageDecodeError)
        return -1;
    Py_INCREF(isx_ImageDecodeError);
    if (PyModule_AddObject(m, "ImageDecodeError", isx_ImageDecodeError) < 0) {
        Py_DECREF(isx_ImageDecodeError);
        return -1;
    }
    PyModule_AddIntConstant(m, "_HAVE_LIBJPEG",
#ifdef ISX_HAVE_LIBJPEG
                            1
#else
                            0
#endif
    );
    PyModule_AddIntConstant(m, "_HAVE_WEBP",
#ifdef ISX_HAVE_WEBP
                            1
#else
                            0
#endif
    );
    return 0;
}
