"""imgsearch: content-based image retrieval with a C core.

    >>> import numpy as np, imgsearch as isx
    >>> X = np.random.rand(1000, 64).astype(np.float32)
    >>> index = isx.FlatIndex.from_array(X)          # no copy
    >>> D, I = index.search(X[:5], k=3)              # (distances, ids), nearest first
    >>> engine = isx.ImageSearch(extractor="colorhist")
    >>> engine.add("photos/"); engine.search("photos/cat.jpg", k=8)

The core imports with NumPy alone; torch, Pillow, pandas and matplotlib are
optional and imported only by the features that need them.
"""
from . import _core, distance  # noqa: F401  (_core: imgsearch._core for users)
from ._core import (FlatIndex, HNSWIndex, ImageDecodeError, IndexFormatError, IVFPQIndex, KDTreeIndex,
                    capabilities, load)
from . import features, image  # noqa: E402  (after _core: they import from it)
from . import evaluate, rerank  # noqa: E402
from .whitening import PCAWhitening  # noqa: E402  (NumPy only)
from .engine import ImageSearch  # noqa: E402  (torch, PIL, pandas stay unimported until used)
from .results import SearchResults  # noqa: E402

__version__ = "0.1.0"
__all__ = ["FlatIndex", "HNSWIndex", "IVFPQIndex", "KDTreeIndex", "ImageSearch", "PCAWhitening", "SearchResults",
           "ImageDecodeError", "IndexFormatError", "capabilities", "distance", "evaluate", "features", "image", "load",
           "rerank", "serve", "__version__"]


def __getattr__(name):
    """``imgsearch.dask`` is imported on first use (it imports Dask, an optional extra)."""
    if name == "dask":
        import importlib
        return importlib.import_module(".dask", __name__)
    raise AttributeError(f"module 'imgsearch' has no attribute {name!r}")


def serve(engine, host="127.0.0.1", port=8000, **options):
    """Serve an engine (or the path of a saved one) over HTTP with a search page at ``/``;
    by default in a background thread, returning a handle with ``.url`` and ``.stop()``.
    Needs the ``[serve]`` extra; see :func:`imgsearch.service.serve` for the options."""
    from .service import serve as _serve  # FastAPI and uvicorn are imported only now
    return _serve(engine, host, port, **options)
