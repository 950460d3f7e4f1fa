"""Query expansion and database-side augmentation, computed through an index.

alpha-QE (Radenovic, Tolias & Chum, "Fine-tuning CNN image retrieval with no
human annotation", TPAMI 2018): a query is replaced by the normalised sum of
itself and its ``n`` nearest database vectors, each weighted by its
similarity to the query raised to ``alpha``, and searched again.  ``alpha=0``
is plain average query expansion (Chum et al. 2007); a large ``alpha`` lets
only near neighbours count.

alpha-DBA (same paper; Arandjelovic & Zisserman 2012 for DBA): every database
vector is replaced the same way by the weighted sum of itself and its ``n``
nearest other database vectors.  It is query expansion done once for the
whole collection, offline, so it costs nothing at query time; the two combine.

Both find the neighbours with the index's batch search (so an HNSW index
keeps them sub-quadratic) and gather at most ``BLOCK`` rows at a time; no
n x n matrix is formed.  They need vectors for which a similarity follows
from the index's distance: unit vectors with ``cosine`` or ``ip``
(similarity = 1 - distance) or ``l2`` (similarity = 1 - distance / 2).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["expand_queries", "augment_database", "similarity"]

BLOCK = 4096  # queries per batch search: bounds the (block, n, dim) gather


def similarity(D: np.ndarray, metric: str) -> np.ndarray:
    """Cosine similarity of unit vectors from an index's distances."""
    if metric in ("cosine", "ip"):
        return 1.0 - D
    if metric == "l2":
        return 1.0 - 0.5 * D
    raise ValueError(f"query expansion and DBA need a cosine, ip or l2 index over unit vectors; "
                     f"found metric {metric!r}")


def _check(n, alpha):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"Expected n > 0 neighbours (an int). Got {n!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 100:
        raise ValueError(f"alpha: expected a number from 0 to 100 (3 is the usual choice), found {alpha!r}")
    return int(n), float(alpha)


def _weighted_sum(X, V, S, alpha):
    """normalise(X + sum_j max(S_j, 0)^alpha V_j) per row; V (m, n, d), S (m, n); padded rows have S = -inf."""
    W = np.maximum(S, 0.0) ** alpha
    W[~np.isfinite(S)] = 0.0  # padding weighs nothing (0 ** 0 would be 1 with alpha = 0)
    out = X.astype(np.float32) + np.einsum("mn,mnd->md", W.astype(np.float32), V)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def _neighbours(index, Q, n, own, search_params):
    """(similarities, ids) of each query's n nearest, its own id (own[q] >= 0) left out."""
    extra = own is not None and bool((own >= 0).any())
    D, I = index.search(Q, k=n + extra, **search_params)
    if extra:
        keep = I != np.where(own >= 0, own, np.iinfo(np.int64).min)[:, None]
        keep[keep.all(axis=1), -1] = False
        D, I = D[keep].reshape(len(I), n), I[keep].reshape(len(I), n)
    S = similarity(D.astype(np.float64), index.metric)
    S[I < 0] = -np.inf
    return S, I


def _gather(index, I):
    """Rows of the index for ids I (m, n); padding (-1) gives zero rows."""
    flat = I.ravel()
    V = np.zeros((len(flat), int(index.dim)), dtype=np.float32)
    ok = flat >= 0
    if ok.any():
        V[ok] = index.get(flat[ok])
    return V.reshape(I.shape + (V.shape[1],))


def expand_queries(index: Any, Q: np.ndarray, n: int, alpha: float = 3.0, *, own: np.ndarray | None = None,
                   **search_params: Any) -> np.ndarray:
    """alpha-QE: each query row -> normalise(q + sum over its n nearest database
    vectors x of max(sim(q, x), 0) ** alpha * x).  ``own``: each query's own id in
    the index to leave out of its neighbours (-1: none).  Search the result again."""
    n, alpha = _check(n, alpha)
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    out = np.empty_like(Q)
    for s in range(0, len(Q), BLOCK):
        part = slice(s, s + BLOCK)
        S, I = _neighbours(index, Q[part], min(n, len(index)), None if own is None else own[part], search_params)
        out[part] = _weighted_sum(Q[part], _gather(index, I), S, alpha)
    return out


def augment_database(index: Any, n: int, alpha: float = 3.0, ids: np.ndarray | None = None,
                     **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
    """alpha-DBA: (ids, vectors) with each vector x of the index (or of ``ids``)
    replaced by normalise(x + sum over its n nearest other vectors y of
    max(sim(x, y), 0) ** alpha * y).  The index itself is not changed."""
    n, alpha = _check(n, alpha)
    ids = np.asarray(index.ids if ids is None else ids, dtype=np.int64)
    out = np.empty((len(ids), int(index.dim)), dtype=np.float32)
    k = min(n, max(len(index) - 1, 1))
    for s in range(0, len(ids), BLOCK):
        part = ids[s:s + BLOCK]
        X = index.get(part)
        S, I = _neighbours(index, X, k, part, search_params)
        out[s:s + len(part)] = _weighted_sum(X, _gather(index, I), S, alpha)
    return ids, out
