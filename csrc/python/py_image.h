/*
 * py_image.h -- the image bindings' entry point for module.c.
 */
#ifndef ISX_PY_IMAGE_H
#define ISX_PY_IMAGE_H

#include "py_common.h"

extern PyObject *isx_ImageDecodeError;

/* Add the image functions, imgsearch.ImageDecodeError, _HAVE_LIBJPEG and _HAVE_WEBP to
 * the module; -1 with an exception on failure. */
int isx_py_image_init(PyObject *m);

#endif
