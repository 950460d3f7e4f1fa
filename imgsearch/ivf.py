"""The IVF-PQ index as an ImageSearch engine uses it: ``ImageSearch(index="ivfpq")``.

An IVF-PQ index must be trained before it can hold a vector, and training needs
a collection: k-means over ``nlist`` lists wants tens of vectors per list.  An
engine starts empty and grows one ``add`` at a time, so :class:`AutoIVFPQ`
holds the first vectors in an exact :class:`FlatIndex` (search is exact while
the collection is small, which is also the fastest choice there) and, at the
end of the add that brings the collection to ``train_at`` vectors, trains an
:class:`IVFPQIndex` on a seeded sample of them, moves every vector into it
and drops the flat buffer.  The parameters not given are chosen from the
collection's size at that moment:

  nlist    a power of two near 4 sqrt(n), at most n / 39 (k-means wants about
           39 training points per list): 256 lists at 10,000 vectors, 4,096 at 1M
  nbits    4 (fast-scan: the faster scan at equal bytes, measured in
           benchmarks/bench_ivfpq.py)
  m        the largest even divisor of dim that is at most dim / 4 (dim / 8
           bytes per vector with nbits=4: 1/32 of float32)
  refine   "f16": the best k_factor x k candidates are re-ranked against float16
           copies of the vectors (2 bytes per dimension; they stay on disk with
           ``ImageSearch.load(..., mmap=True)`` and only candidates are read).
           ``refine=None`` keeps only the codes, at a recall cost.
  nprobe   nlist / 16, at least 8 (lists scanned per query; a search may pass
           ``nprobe=`` to trade speed for recall)
  sample   training sample: min(n, max(50,000, 64 nlist)) vectors

Later adds go into the trained index without retraining; ``retrain()`` learns a
new model from the current collection (when it has grown far beyond the
sample the model was trained on, or its content has drifted).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _core

DEFAULT_TRAIN_AT = 10_000


def _pow2_near(x: float) -> int:
    return 1 << max(0, int(round(math.log2(max(1.0, x)))))


def choose_params(n: int, dim: int, given: dict[str, Any]) -> dict[str, Any]:
    """The IVFPQIndex parameters for n vectors of dim dimensions, `given` taking precedence."""
    nlist = given.get("nlist")
    if nlist is None:
        nlist = min(_pow2_near(4 * math.sqrt(n)), 65536)
        while nlist > 1 and nlist * 39 > n:
            nlist //= 2
        nlist = max(1, min(nlist, n))
    nbits = given.get("nbits", 4)
    m = given.get("m")
    if m is None:
        m = next((c for c in range(max(2, dim // 4), 1, -1) if dim % c == 0 and c % 2 == 0), None)
        if m is None:  # odd dims: any divisor
            m = next(c for c in range(max(1, dim // 4), 0, -1) if dim % c == 0)
    return {"nlist": int(nlist), "m": int(m), "nbits": int(nbits), "refine": given.get("refine", "f16"),
            "seed": int(given.get("seed", 0))}


class AutoIVFPQ:
    """An IVF-PQ index that starts as an exact buffer and trains itself when the
    collection reaches ``train_at`` vectors (see the module's docstring).

    dim, metric   as for IVFPQIndex ("l2", "ip", "cosine")
    train_at      collection size at which the model is trained (default 10,000)
    nlist, m, nbits, refine, seed, nprobe, k_factor, sample
                  IVFPQIndex parameters; each one not given is chosen from the
                  collection's size when training happens
    """

    _KEYS = ("nlist", "m", "nbits", "refine", "seed", "nprobe", "k_factor", "sample", "train_at")

    def __init__(self, dim: int, metric: str = "l2", **params: Any) -> None:
        unknown = sorted(set(params) - set(self._KEYS))
        if unknown:
            raise TypeError(f"index='ivfpq': unknown parameter(s) {unknown}; expected some of {list(self._KEYS)}")
        if metric not in ("l2", "ip", "cosine"):
            raise ValueError(f"index='ivfpq' supports the l2, ip and cosine metrics, found {metric!r}: "
                             "use index='flat' or 'hnsw' for this extractor")
        train_at = params.get("train_at", DEFAULT_TRAIN_AT)
        if not isinstance(train_at, (int, np.integer)) or train_at < 1:
            raise ValueError(f"train_at: expected a positive number of vectors, found {train_at!r}")
        if params.get("refine", "f16") not in (None, "f16", "f32"):
            raise ValueError(f"refine: expected None, 'f16' or 'f32', found {params['refine']!r}")
        self.dim, self.metric = int(dim), metric
        self.params = dict(params)
        self.train_at = int(train_at)
        self._flat: Any = _core.FlatIndex(self.dim, metric=metric)
        self._ivf: Any = None

    # -- state -------------------------------------------------------------------
    @property
    def index(self) -> Any:
        """The index that holds the vectors now: a FlatIndex before training, then the IVFPQIndex."""
        return self._ivf if self._ivf is not None else self._flat

    @property
    def is_trained(self) -> bool:
        return self._ivf is not None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def ids(self) -> np.ndarray:
        return self.index.ids

    @property
    def memory_usage(self) -> int:
        return int(self.index.memory_usage)

    def __repr__(self) -> str:
        state = repr(self._ivf) if self._ivf is not None else f"untrained, {len(self._flat)} vectors held exactly " \
                                                              f"until {self.train_at}"
        return f"AutoIVFPQ({state})"

    # -- training ------------------------------------------------------------------
    def train(self, threads: int | None = None) -> None:
        """Train now on the vectors held (at least max(nlist, 2^nbits) of them)."""
        n = len(self.index)
        chosen = choose_params(n, self.dim, self.params)
        need = max(chosen["nlist"], 1 << chosen["nbits"])
        if n < need:
            raise ValueError(f"training an IVF-PQ index of nlist={chosen['nlist']}, nbits={chosen['nbits']} needs at "
                             f"least {need} vectors, found {n}: add more images first (or pass a smaller nlist)")
        ids = np.sort(self.index.ids)
        X = np.ascontiguousarray(self.index.get(ids), dtype=np.float32)
        sample = int(self.params.get("sample") or min(n, max(50_000, 64 * chosen["nlist"])))
        rng = np.random.default_rng(chosen["seed"])
        T = X if sample >= n else np.ascontiguousarray(X[np.sort(rng.choice(n, sample, replace=False))])
        ivf = _core.IVFPQIndex(self.dim, self.metric, **chosen)
        ivf.train(T, threads=threads)
        ivf.nprobe = int(self.params.get("nprobe") or min(chosen["nlist"], max(8, chosen["nlist"] // 16)))
        if self.params.get("k_factor"):
            ivf.k_factor = int(self.params["k_factor"])
        ivf.add(X, ids=ids, threads=threads)
        self._ivf, self._flat = ivf, None

    retrain = train

    # -- the index interface the engine uses ----------------------------------------------
    def add(self, X: Any, ids: Any = None, threads: int | None = None) -> None:
        self.index.add(X, ids=ids, threads=threads)
        if self._ivf is None and len(self._flat) >= self.train_at:
            self.train(threads=threads)

    def remove(self, ids: Any) -> Any:
        return self.index.remove(ids)

    def get(self, ids: Any) -> np.ndarray:
        return self.index.get(ids)

    def search(self, Q: Any, k: int = 10, *, filter: Any = None, threads: int | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self._ivf is None:  # exact until trained: nprobe has nothing to do
            return self._flat.search(Q, k=k, filter=filter, threads=threads)
        return self._ivf.search(Q, k=k, filter=filter, threads=threads, nprobe=nprobe)

    def save(self, path: str, meta: bytes | None = None) -> None:
        self.index.save(path, meta=meta)

    @classmethod
    def from_index(cls, index: Any, params: dict[str, Any]) -> AutoIVFPQ:
        """Wrap a loaded index (a FlatIndex saved before training, or an IVFPQIndex)."""
        self = cls(index.dim, index.metric, **params)
        if isinstance(index, _core.IVFPQIndex):
            self._ivf, self._flat = index, None
        else:
            self._flat = index
        return self
