"""imgsearch: content-based image retrieval with a C core.

    >>> import numpy as np, imgsearch as isx
    >>> X = np.random.rand(1000, 64).astype(np.float32)
    >>> index = isx.FlatIndex.from_array(X)          # no copy
    >>> D, I = index.search(X[:5], k=3)              # (distances, ids), nearest first

The core imports with NumPy alone; torch, Pillow, pandas and matplotlib are
optional and imported only by the features that need them.
"""
from . import _core, distance
from ._core import FlatIndex, IndexFormatError, KDTreeIndex, capabilities, load

__version__ = "0.1.0"
__all__ = ["FlatIndex", "IndexFormatError", "KDTreeIndex", "capabilities", "distance", "load", "__version__"]
