"""Classic image features computed in C: colour histogram, pHash, dHash.

    >>> from imgsearch import features
    >>> ext = features.get_extractor("phash")
    >>> codes, failed = ext.extract_files(paths)        # uint8 (n_ok, 8): 64 packed bits
    >>> index = imgsearch.FlatIndex.from_array(codes, metric=ext.metric)   # hamming, dim 64

Every extractor follows the :class:`Extractor` protocol that the PyTorch
extractors share: ``name``, ``dim``, ``metric``, ``dtype``, ``extract(images)``,
``extract_files(paths)``, ``config()``; :func:`from_config` rebuilds one from
its config, so an engine can save which extractor made its vectors.

``dim`` follows FlatIndex: for the ``hamming`` metric it counts bits, so a
64-bit hash has ``dim == 64`` and rows of ``dim // 8 == 8`` uint8 bytes.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _core
from .image import _as_list, _failures

__all__ = ["ColorHistogram", "DHash", "Extractor", "PHash", "from_config", "get_extractor", "register", "registered"]

_KIND_COLORHIST = 1
_KIND_PHASH = 2
_KIND_DHASH = 3


class Extractor:
    """What every feature extractor provides.

    Attributes: ``name`` (registry name), ``dim`` (vector length; bits for
    ``hamming``), ``metric`` (the FlatIndex metric the features are meant
    for), ``dtype`` (``np.float32``, or ``np.uint8`` for packed bits).

    ``extract(images)`` -> ``(n, dim)`` array (``(n, dim // 8)`` for packed
    bits); images are paths, encoded bytes or uint8 arrays; a bad one raises
    :class:`imgsearch.ImageDecodeError` (``OSError`` for an unreadable path).
    ``extract_files(paths, threads=None)`` -> ``(features, failed)``: bad
    items are reported in ``failed`` as ``(index, path, reason)`` instead.
    ``config()`` -> a JSON-able dict with ``"name"``; ``from_config`` inverts it.
    """

    name: str | None = None
    dim: int | None = None
    metric: str | None = None
    dtype: type = np.float32

    def extract(self, images: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError

    def extract_files(self, paths: Sequence[str], threads: int | None = None
                      ) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self):
        params = ", ".join("%s=%r" % kv for kv in self.config().items() if kv[0] != "name")
        return "%s(%s)" % (type(self).__name__, params)


class _NativeExtractor(Extractor):
    """An extractor computed by the C core: (kind, bins) select the feature."""

    _kind: int | None = None

    def _bins(self):
        return (0, 0, 0)

    def _run(self, images, threads):
        items = _as_list(images)
        out, raw = _core._image_features(self._kind, self._bins(), items, threads)
        return items, out, raw

    def extract(self, images, threads=None):
        items, out, raw = self._run(images, threads)
        if raw:
            raise raw[0][2]  # the exception the C core made for the first bad item
        return out

    def extract_files(self, paths, threads=None):
        items, out, raw = self._run(paths, threads)
        return out, _failures(items, raw)


class ColorHistogram(_NativeExtractor):
    """HSV colour histogram: ``bins`` = (hue, saturation, value) cells,
    L1-normalised (sums to 1), float32, ``dim = prod(bins)``.

    ``sqrt=True`` returns the element-wise square root of the histogram, so
    that ``l2`` between two vectors is the Hellinger distance of the
    histograms (any l2 index serves it).

    Measured on flowers17 (benchmarks/results/image.md, mAP, bins 8x4x4):
    Hellinger (``sqrt=True, metric="l2"``) 0.182 > chi-square 0.171 (which
    no index supports) > l1 0.163 > cosine 0.144 > l2 0.127 on raw
    histograms, so Hellinger is the default.  A saved config without a
    ``sqrt`` key comes from before the option existed and means raw
    histograms (``sqrt=False``).
    """

    name = "colorhist"
    _kind = _KIND_COLORHIST
    dtype = np.float32

    def __init__(self, bins=(8, 4, 4), metric="l2", sqrt=True):
        bins = tuple(int(b) for b in bins)
        if len(bins) != 3 or not all(1 <= b <= 64 for b in bins):
            raise ValueError("bins: expected 3 integers in 1..64 (hue, saturation, value), found %r" % (bins,))
        if metric not in ("l1", "l2", "cosine"):
            raise ValueError("metric: expected 'l1', 'l2' or 'cosine' for a histogram, found %r" % (metric,))
        self.bins = bins
        self.dim = bins[0] * bins[1] * bins[2]
        self.metric = metric
        self.sqrt = bool(sqrt)

    def _bins(self):
        return self.bins

    def _run(self, images, threads):
        items, out, raw = super()._run(images, threads)
        if self.sqrt:
            np.sqrt(out, out=out)
        return items, out, raw

    def config(self):
        return {"name": self.name, "bins": list(self.bins), "metric": self.metric, "sqrt": self.sqrt}


class _Hash(_NativeExtractor):
    dim = 64
    metric = "hamming"
    dtype = np.uint8


class PHash(_Hash):
    """Perceptual hash: 32 x 32 grey, 2-D DCT, the 8 x 8 lowest frequencies
    against their median; 64 bits packed in 8 uint8 (MSB first, row major).
    Resized or recompressed copies differ in a few bits; unrelated images in
    about half of them."""

    name = "phash"
    _kind = _KIND_PHASH


class DHash(_Hash):
    """Difference hash: 9 x 8 grey, one bit per horizontal neighbour pair
    (right brighter than left); 64 bits packed in 8 uint8."""

    name = "dhash"
    _kind = _KIND_DHASH


# The one registry of extractor names: these three, the named torch models
# (registered by imgsearch.extractors, built only when asked for), and whatever
# users register.  ImageSearch(extractor=name) and from_config look here.
_REGISTRY: dict[str, Callable[..., Extractor]] = {"colorhist": ColorHistogram, "phash": PHash, "dhash": DHash}


def register(name: str, cls: Callable[..., Extractor]) -> None:
    """Make ``get_extractor(name, ...)``, ``ImageSearch(extractor=name)`` and
    ``from_config`` build ``cls`` (a class or any callable ``**params -> Extractor``)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty str, found {name!r}")
    if not callable(cls):
        raise TypeError(f"cls: expected an Extractor class or a callable returning one, found {type(cls).__name__}")
    _REGISTRY[name] = cls


def registered() -> list[str]:
    """The registered extractor names, sorted."""
    return sorted(_REGISTRY)


def get_extractor(name: str, **params: Any) -> Extractor:
    """An extractor by registry name: ``"colorhist"``, ``"phash"``, ``"dhash"``,
    the named torch models (``"mobilenet_v2"``, ...) and whatever was registered."""
    try:
        cls = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError("unknown extractor %r: expected one of %s"
                         % (name, ", ".join(map(repr, sorted(_REGISTRY))))) from None
    return cls(**params)


def from_config(config: dict[str, Any]) -> Extractor:
    """Rebuild an extractor from ``Extractor.config()``."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError("expected an extractor config: a dict with a 'name' key, found %r" % (config,))
    params = {k: v for k, v in config.items() if k != "name"}
    if config["name"] == "colorhist":
        params.setdefault("sqrt", False)  # saved before sqrt existed: raw histograms
    return get_extractor(config["name"], **params)
