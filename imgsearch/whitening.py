"""PCA-whitening of feature vectors, learned without labels.

    >>> w = PCAWhitening(dim_out=256).fit(X)     # X: (n, d) vectors of the collection itself
    >>> Y = w.transform(Q)                       # (m, 256) float32, L2-normalised
    >>> w.save("whitening.npz"); w = PCAWhitening.load("whitening.npz")

CNN features are far from isotropic: a few directions carry most of the
variance, and those are the directions every image shares (bursty,
co-occurring activations).  Whitening centres the vectors on the collection's
mean, rotates them onto the principal axes and divides each axis by its
standard deviation, so that distances weigh every direction alike; the
vectors are L2-normalised again afterwards.  Learned on the collection's own
vectors (Jegou & Chum, "Negative evidences and co-occurrences in image
retrieval", ECCV 2012; Babenko & Lempitsky 2015; Radenovic et al. 2018 use it
after GeM pooling), it needs no labels.

The maths: with the training vectors' mean ``mu`` and covariance
``C = V diag(lam) V^T`` (eigenvalues descending),

    transform(x) = normalise( diag((lam_k + eps * lam_1) ** -power) V_k^T (x - mu) )

over the ``dim_out`` leading axes.  ``power=0.5`` is full whitening (the
training vectors' covariance becomes the identity); a smaller power softens
it (0: PCA projection alone); ``shrinkage`` pulls every eigenvalue towards
their mean first (``(1 - s) lam + s mean(lam)``), which tames the noisy
smallest axes of a covariance learned on few vectors.  Keeping fewer axes
(``dim_out``) makes the vectors shorter: an index ``d / dim_out`` times
smaller and faster to search.

Whitening proper is not always a gain when it is learned on the collection
being searched: on flowers17 (17 classes, 1,360 images; benchmarks/README.md)
every power above 0 lowered mAP, since there the dominant axes are the classes
themselves, while centring and projecting (``power=0``) onto 64-128 axes raised
it.  So measure on your own data; ImageSearch's default for MobileNetV2 is
``PCAWhitening(dim_out=128, power=0.0)``.

Axes the training vectors do not span (fewer vectors than dimensions) carry
no information and would only amplify noise: ``fit`` refuses a ``dim_out``
above ``n - 1``, and ``dim_out=None`` keeps ``min(d, n - 1)`` axes.

The state is NumPy arrays and numbers only: ``state()`` / ``from_state()``,
``save()`` / ``load()`` (an ``.npz`` read with ``allow_pickle=False``).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["PCAWhitening"]

STATE_VERSION = 1
DEFAULT_MAX_SAMPLES = 100_000  # fit on a seeded sample of at most this many vectors (covariance cost n d^2)


def _as_vectors(X, name, dim=None):
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n, dim) of vectors, found shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating) and not np.issubdtype(X.dtype, np.integer):
        raise TypeError(f"{name}: expected float vectors, found dtype {X.dtype}")
    if dim is not None and X.shape[1] != dim:
        raise ValueError(f"{name}: expected vectors of dimension {dim} (what the whitening was fitted on), "
                         f"found {X.shape[1]}")
    if X.size and not np.isfinite(X).all():
        raise ValueError(f"{name}: expected finite numbers, found NaN or infinity")
    return X


class PCAWhitening:
    """Centre, rotate onto the principal axes, whiten, re-normalise (see the module docstring).

    dim_out      axes kept (None: every axis the training vectors span, min(d, n - 1)).
    power        eigenvalue exponent: 0.5 whitens fully, smaller softens, 0 only projects.
    shrinkage    0..1: eigenvalues pulled towards their mean before whitening.
    eps          added to every eigenvalue, relative to the largest (guards against division by ~0).
    normalize    L2-normalise the output (for cosine / inner-product search).
    max_samples  fit on a seeded random sample of at most this many vectors.
    min_samples  fewest training vectors ``fit`` accepts (default: 2 * dim_out, at least 64);
                 ImageSearch keeps vectors as they are until the collection has this many.
    seed         the sample's seed.

    Not thread-safe while fitting; ``transform`` of a fitted object is (it only reads).
    """

    def __init__(self, dim_out: int | None = None, *, power: float = 0.5, shrinkage: float = 0.0,
                 eps: float = 1e-6, normalize: bool = True, max_samples: int = DEFAULT_MAX_SAMPLES,
                 min_samples: int | None = None, seed: int = 0) -> None:
        if dim_out is not None and (isinstance(dim_out, bool) or not isinstance(dim_out, (int, np.integer))
                                    or dim_out <= 0):
            raise ValueError(f"dim_out: expected None or a positive int, found {dim_out!r}")
        for name, v, lo, hi in (("power", power, 0.0, 1.0), ("shrinkage", shrinkage, 0.0, 1.0),
                                ("eps", eps, 0.0, 1.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= float(v) <= hi:
                raise ValueError(f"{name}: expected a number from {lo:g} to {hi:g}, found {v!r}")
        if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) or max_samples < 2:
            raise ValueError(f"max_samples: expected an int >= 2, found {max_samples!r}")
        if min_samples is not None and (isinstance(min_samples, bool) or not isinstance(min_samples, (int, np.integer))
                                        or min_samples < 2):
            raise ValueError(f"min_samples: expected None or an int >= 2, found {min_samples!r}")
        self.dim_out = None if dim_out is None else int(dim_out)
        self.power, self.shrinkage, self.eps = float(power), float(shrinkage), float(eps)
        self.normalize = bool(normalize)
        self.max_samples = int(max_samples)
        self.min_samples = int(min_samples) if min_samples is not None else max(64, 2 * (self.dim_out or 0))
        self.seed = int(seed)
        self.mean_: np.ndarray | None = None        # (d,) float64
        self.components_: np.ndarray | None = None  # (k, d) float64, rows = principal axes
        self.eigenvalues_: np.ndarray | None = None  # (k,) float64, descending
        self.n_samples_ = 0

    # -- learning ----------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.components_ is not None

    @property
    def dim_in(self) -> int | None:
        return None if self.mean_ is None else int(self.mean_.shape[0])

    @property
    def dim(self) -> int | None:
        """The output dimension once fitted (dim_out, or what dim_out=None chose)."""
        return None if self.components_ is None else int(self.components_.shape[0])

    def fit(self, X: ArrayLike) -> PCAWhitening:
        """Learn the mean and axes from vectors X (n, d): no labels.  Returns self."""
        X = _as_vectors(X, "X")
        n, d = X.shape
        if n < self.min_samples:
            raise ValueError(f"PCAWhitening.fit: expected at least min_samples={self.min_samples} vectors, "
                             f"found {n}; give more vectors or a smaller min_samples / dim_out")
        if n > self.max_samples:
            rows = np.sort(np.random.default_rng(self.seed).choice(n, self.max_samples, replace=False))
            X = X[rows]
            n = len(X)
        k = min(d, n - 1) if self.dim_out is None else self.dim_out
        if k > min(d, n - 1):
            raise ValueError(f"dim_out={self.dim_out}: expected at most min(dim, n - 1) = {min(d, n - 1)} axes "
                             f"for {n} training vectors of dimension {d}")
        X = X.astype(np.float64)
        mean = X.mean(axis=0)
        Xc = X - mean
        cov = Xc.T @ Xc / n
        lam, V = np.linalg.eigh(cov)            # ascending
        lam, V = lam[::-1].clip(min=0.0), V[:, ::-1]
        if self.shrinkage:
            lam = (1.0 - self.shrinkage) * lam + self.shrinkage * lam[: min(d, n - 1)].mean()
        self.mean_, self.components_, self.eigenvalues_ = mean, np.ascontiguousarray(V[:, :k].T), lam[:k].copy()
        self.n_samples_ = n
        self._cache()
        return self

    def _cache(self):
        """The (d, k) float32 matrix transform() multiplies by, and the mean's image under it."""
        lam = self.eigenvalues_ + self.eps * max(float(self.eigenvalues_[0]), np.finfo(np.float64).tiny)
        P = self.components_.T * lam ** -self.power  # (d, k): column i = axis i / lam_i^power
        self._P = np.ascontiguousarray(P, dtype=np.float32)
        self._offset = (self.mean_ @ P).astype(np.float32)

    def transform(self, X: ArrayLike) -> np.ndarray:
        """Whitened vectors (n, dim) float32 (L2-normalised when ``normalize``)."""
        if not self.fitted:
            raise ValueError("PCAWhitening.transform: not fitted yet; call fit(X) first")
        X = _as_vectors(X, "X", self.dim_in)
        Y = np.asarray(X, dtype=np.float32) @ self._P
        Y -= self._offset
        if self.normalize:
            norms = np.linalg.norm(Y, axis=1, keepdims=True)
            np.divide(Y, norms, out=Y, where=norms > 0)
        return np.ascontiguousarray(Y, dtype=np.float32)

    def fit_transform(self, X: ArrayLike) -> np.ndarray:
        return self.fit(X).transform(X)

    # -- state --------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The constructor's settings (JSON-able)."""
        return {"dim_out": self.dim_out, "power": self.power, "shrinkage": self.shrinkage, "eps": self.eps,
                "normalize": self.normalize, "max_samples": self.max_samples, "min_samples": self.min_samples,
                "seed": self.seed}

    def state(self) -> dict[str, np.ndarray]:
        """Everything as NumPy arrays (settings included), for ``np.savez``; see from_state."""
        out = {"version": np.int64(STATE_VERSION), "params_json": np.array(json.dumps(self.params(), sort_keys=True))}
        if self.fitted:
            out.update(mean=self.mean_, components=self.components_, eigenvalues=self.eigenvalues_,
                       n_samples=np.int64(self.n_samples_))
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PCAWhitening:
        """Rebuild from ``state()`` (arrays checked: this may come from a file)."""
        try:
            version = int(state["version"])
            params = json.loads(str(state["params_json"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a PCAWhitening state: {e}") from None
        if version != STATE_VERSION:
            raise ValueError(f"PCAWhitening state version {version}: expected {STATE_VERSION}")
        if not isinstance(params, dict):
            raise ValueError(f"PCAWhitening state: expected a dict of settings, found {params!r}")
        try:
            self = cls(**params)
        except TypeError as e:
            raise ValueError(f"PCAWhitening state: unknown settings ({e})") from None
        if "components" in state:
            mean = np.asarray(state["mean"], dtype=np.float64)
            comp = np.asarray(state["components"], dtype=np.float64)
            lam = np.asarray(state["eigenvalues"], dtype=np.float64)
            if (mean.ndim != 1 or comp.ndim != 2 or comp.shape[1] != mean.shape[0] or lam.shape != (comp.shape[0],)
                    or not comp.shape[0] or not all(np.isfinite(a).all() for a in (mean, comp, lam))
                    or (lam < 0).any()):
                raise ValueError(f"PCAWhitening state: inconsistent arrays (mean {mean.shape}, components "
                                 f"{comp.shape}, eigenvalues {lam.shape}) or non-finite values")
            self.mean_, self.components_, self.eigenvalues_ = mean, comp, lam
            self.n_samples_ = int(state.get("n_samples", 0))
            self._cache()
        return self

    def save(self, path: str | os.PathLike[str]) -> None:
        """An ``.npz`` of arrays and numbers only (no pickled objects)."""
        with open(os.fspath(path), "wb") as f:
            np.savez(f, **self.state())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PCAWhitening:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            return cls.from_state({k: z[k] for k in z.files})

    def __repr__(self):
        fitted = f", fitted on {self.n_samples_} vectors: {self.dim_in} -> {self.dim}" if self.fitted else ""
        return (f"PCAWhitening(dim_out={self.dim_out}, power={self.power:g}, shrinkage={self.shrinkage:g}"
                f"{fitted})")

