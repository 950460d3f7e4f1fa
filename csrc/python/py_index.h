/* py_index.h -- the index types, for module.c's loader. */
#ifndef ISX_PY_INDEX_H
#define ISX_PY_INDEX_H

#include "py_common.h"
#include "../index/flat.h"
#include "../index/hnsw.h"
#include "../index/kdtree.h"

extern PyTypeObject isx_FlatType;
/* A new FlatIndex object owning f (destroyed on failure). */
PyObject *isx_py_flat_wrap(isx_flat *f);

extern PyTypeObject isx_HNSWType;
/* A new HNSWIndex object owning h (destroyed on failure). */
PyObject *isx_py_hnsw_wrap(isx_hnsw *h);

extern PyTypeObject isx_KDTreeType;
/* A new KDTreeIndex object owning kd (destroyed on failure). */
PyObject *isx_py_kdtree_wrap(isx_kdtree *kd);

#endif
