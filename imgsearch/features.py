"""Classic image features computed in C: colour histogram, LBP texture, pHash, dHash.

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

__all__ = ["LBP", "ColorHistogram", "ColorLBP", "DHash", "Extractor", "PHash", "from_config", "get_extractor",
           "register", "registered"]

_KIND_COLORHIST = 1
_KIND_PHASH = 2
_KIND_DHASH = 3
_KIND_LBP = 4


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
    """An extractor computed by the C core: each (kind, params) of ``_specs()``
    is one feature, and their rows come back side by side from one decode."""

    _kind: int | None = None

    def _specs(self):
        return [(self._kind, ())]

    def _run(self, images, threads):
        items = _as_list(images)
        out, raw = _core._image_features(self._specs(), items, threads)
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

    def _specs(self):
        return [(self._kind, self.bins)]

    def _run(self, images, threads):
        items, out, raw = super()._run(images, threads)
        if self.sqrt:
            np.sqrt(out, out=out)
        return items, out, raw

    def config(self):
        return {"name": self.name, "bins": list(self.bins), "metric": self.metric, "sqrt": self.sqrt}


def _unit_rows(X):
    """Each row divided by its L2 norm (rows of zeros stay zeros)."""
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    np.divide(X, norm, out=X, where=norm > 0)
    return X


class LBP(_NativeExtractor):
    """Texture: histograms of rotation-invariant uniform local binary patterns
    (Ojala et al. 2002, LBP^riu2_{P,R}), float32.

    The image is made grey and shrunk so that its longest side is ``side``
    (never enlarged); every pixel gets the code of its ``P`` circle samples at
    radius ``R`` (bilinear, brighter-or-equal than the centre = 1): the number
    of ones when the circular pattern has at most two 0/1 transitions, else
    ``P + 1`` -- ``P + 2`` bins per scale, unchanged when the image turns.
    ``scales`` lists the (P, R) pairs; ``grid`` the cells per side of each
    spatial level, e.g. ``(1, 2)`` = the whole image and its 2 x 2 quarters,
    every (cell, scale) histogram concatenated: ``dim = sum(c * c for c in
    grid) * sum(P + 2 for P, R in scales)``.

    ``norm``: each (cell, scale) histogram sums to 1 in C, then
    ``"hellinger"`` takes square roots and scales the row to unit length
    (``l2`` between rows is then the Hellinger distance; ``metric="l2"``),
    ``"l1"`` scales the row to sum 1 (``metric="l1"``), ``"l2"`` scales the
    raw histograms to unit length (``metric="l2"``).

    The defaults are the best of a sweep on flowers17 (benchmarks/README.md,
    "Classic descriptors"; mAP 0.116 alone, chance 0.06): three scales beat
    P=8, R=1 alone (0.078 at side 256), a small working side beats a large
    one (64: 0.116, 256: 0.085 -- at R <= 3 pixels the large side sees grain,
    the small one petals and leaves), the 1 + 2x2 + 4x4 grid beats 1 + 2x2.
    Hellinger, l1 and l2 are within 0.003 of each other; Hellinger is the
    default because any l2 index serves it and its rows have unit length, so
    it concatenates with the colour histogram (:class:`ColorLBP`).
    """

    name = "lbp"
    _kind = _KIND_LBP
    dtype = np.float32
    _NORMS = {"hellinger": "l2", "l1": "l1", "l2": "l2"}

    def __init__(self, scales=((8, 1), (16, 2), (24, 3)), grid=(1, 2, 4), side=64, norm="hellinger"):
        self.scales = _lbp_scales(scales)
        self.grid = _lbp_grid(grid)
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or not 8 <= side <= 4096:
            raise ValueError(f"side: expected an int in 8..4096 (the working image's longest side), found {side!r}")
        if norm not in self._NORMS:
            raise ValueError(f"norm: expected 'hellinger', 'l1' or 'l2', found {norm!r}")
        self.side = int(side)
        self.norm = norm
        self.metric = self._NORMS[norm]
        self.dim = sum(c * c for c in self.grid) * sum(p + 2 for p, _ in self.scales)

    def _specs(self):
        return [(_KIND_LBP, self._params())]

    def _params(self):
        return (self.side, tuple((p, float(r)) for p, r in self.scales), self.grid)

    def _normalise(self, X):
        """Rows of per-block L1 histograms -> the descriptor ``norm`` names."""
        if self.norm == "hellinger":
            return _unit_rows(np.sqrt(X, out=X))
        if self.norm == "l2":
            return _unit_rows(X)
        total = X.sum(axis=1, keepdims=True)
        np.divide(X, total, out=X, where=total > 0)
        return X

    def _run(self, images, threads):
        items, out, raw = super()._run(images, threads)
        return items, self._normalise(out), raw

    def config(self):
        return {"name": self.name, "scales": [list(s) for s in self.scales], "grid": list(self.grid),
                "side": self.side, "norm": self.norm}


def _lbp_scales(scales):
    try:
        pairs = tuple((int(p), float(r)) for p, r in scales)
        ok = 1 <= len(pairs) <= 4 and all(p == q and 4 <= p <= 32 and 0 < r <= 16
                                         for (p, r), (q, _) in zip(pairs, scales))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError("scales: expected 1..4 (P, R) pairs with P an int in 4..32 and 0 < R <= 16, "
                         f"e.g. ((8, 1), (16, 2)); found {scales!r}")
    return tuple((p, int(r) if r == int(r) else r) for p, r in pairs)


def _lbp_grid(grid):
    try:
        cells = tuple(int(c) for c in grid)
        ok = 1 <= len(cells) <= 4 and all(c == g and 1 <= c <= 8 for c, g in zip(cells, grid))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"grid: expected 1..4 ints in 1..8 (cells per side of each level), e.g. (1, 2); "
                         f"found {grid!r}")
    return cells


def _finite(value, name, what, low=0.0, high=float("inf")):
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (low <= v <= high) or v == float("inf"):
        raise ValueError(f"{name}: expected {what}, found {value!r}")
    return v


class ColorLBP(_NativeExtractor):
    """Colour and texture in one vector (``metric="l2"``), for the classic
    (non-neural) path:

    - colour: the Hellinger HSV histogram of the whole image
      (:class:`ColorHistogram`, ``bins``) and, when ``centre > 0``, that of
      its central window (``centre`` of each side), times ``centre_weight``:
      ``c = unit(concat(sqrt(h_whole), centre_weight * sqrt(h_centre)))``.
      The window is the weak spatial constraint of Stricker & Dimai (1996):
      the subject of a photograph is mostly in its middle, so the window's
      colours are the subject's and not the background's;
    - texture: the Hellinger LBP histograms ``t`` (:class:`LBP`: ``scales``,
      ``grid``, ``side``), of unit length;
    - the row: ``unit(concat(c, weight * t))``.

    Everything is computed from one decode of each image, at the resolution
    the larger of the two needs (the colour histogram's 128 for the default
    LBP side of 64).  The defaults are the best of a sweep on flowers17
    (benchmarks/README.md, "Classic descriptors"): mAP 0.269, against 0.182
    for ``colorhist``; without the centre window (``centre=0``) colour +
    texture reach 0.198.
    """

    name = "colorhist+lbp"
    metric = "l2"
    dtype = np.float32

    def __init__(self, weight=2.0, bins=(8, 4, 4), centre=0.4, centre_weight=2.0,
                 scales=((8, 1), (16, 2), (24, 3)), grid=(1, 2, 4), side=64):
        self.weight = _finite(weight, "weight", "a finite number >= 0 (texture against colour)")
        self.centre = _finite(centre, "centre", "a fraction in 0..1 (0: no centre window)", high=1.0)
        self.centre_weight = _finite(centre_weight, "centre_weight", "a finite number >= 0")
        self.color = ColorHistogram(bins=bins, metric="l2", sqrt=True)
        self.texture = LBP(scales=scales, grid=grid, side=side, norm="hellinger")
        self._n_color = 2 if 0 < self.centre < 1 else 1
        self.dim = self._n_color * self.color.dim + self.texture.dim

    def _specs(self):
        whole = (_KIND_COLORHIST, self.color.bins)
        centre = [(_KIND_COLORHIST, self.color.bins + (self.centre,))] if self._n_color == 2 else []
        return [whole] + centre + self.texture._specs()

    def _run(self, images, threads):
        items, out, raw = super()._run(images, threads)
        k = self.color.dim
        c, t = out[:, :self._n_color * k], out[:, self._n_color * k:]
        np.sqrt(c, out=c)  # each histogram sums to 1: its square roots have unit length
        if self._n_color == 2:
            c[:, k:] *= self.centre_weight
            _unit_rows(c)
        self.texture._normalise(t)
        t *= self.weight
        return items, _unit_rows(out), raw

    def config(self):
        return {"name": self.name, "weight": self.weight, "bins": list(self.color.bins), "centre": self.centre,
                "centre_weight": self.centre_weight,
                **{k: v for k, v in self.texture.config().items() if k not in ("name", "norm")}}


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


# The one registry of extractor names: these five, the named torch models
# (registered by imgsearch.extractors, built only when asked for), and whatever
# users register.  ImageSearch(extractor=name) and from_config look here.
_REGISTRY: dict[str, Callable[..., Extractor]] = {"colorhist": ColorHistogram, "lbp": LBP, "colorhist+lbp": ColorLBP,
                                                  "phash": PHash, "dhash": DHash}


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
    """An extractor by registry name: ``"colorhist"``, ``"lbp"``, ``"colorhist+lbp"``, ``"phash"``, ``"dhash"``,
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
