"""Distances computed by the SIMD kernels (GIL released, run on native threads).

Metrics: ``l2`` (squared Euclidean), ``ip`` (1 - dot), ``cosine`` (1 - cos; 1 when
either vector is zero), ``l1`` (Manhattan), ``hamming`` (differing bits of rows
packed as uint8, e.g. by ``numpy.packbits``).  Results are float32.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from . import _core

if TYPE_CHECKING:
    from ._core import Metric

METRICS = ("l2", "ip", "cosine", "l1", "hamming")


def pairwise(A: ArrayLike, B: ArrayLike, metric: Metric = "l2", *, threads: int | None = None) -> np.ndarray:
    """All distances between the rows of A (nA, d) and of B (nB, d): float32 (nA, nB)."""
    return _core.pairwise(A, B, metric, threads=threads)


def one_to_many(q: ArrayLike, X: ArrayLike, metric: Metric = "l2", *, threads: int | None = None) -> np.ndarray:
    """Distances from one vector q (d,) to every row of X (n, d): float32 (n,)."""
    q = np.asarray(q)
    if q.ndim != 1:
        raise ValueError(f"q: expected one vector (1-D), found shape {q.shape}; use pairwise() for many")
    return _core.pairwise(q, X, metric, threads=threads)[0]


def pair(a: ArrayLike, b: ArrayLike, metric: Metric = "l2") -> float:
    """The distance between two vectors, as a Python float."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"expected two 1-D vectors, found shapes {a.shape} and {b.shape}")
    return float(_core.pairwise(a, b, metric, threads=1)[0, 0])
