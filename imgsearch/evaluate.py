"""Retrieval quality: recall@k, precision@k, average precision and mAP.

Definitions (the standard ones, as in TREC and scikit-learn):

- ``recall_at_k(I, truth, k)``: the fraction of each query's true nearest
  neighbours (the first k of ``truth``, e.g. from an exact ``FlatIndex``)
  found in its first k results, averaged over queries -- how ANN indexes are
  measured against exact search.
- ``precision_at_k(relevant, k)``: the fraction of the first k results that
  are relevant, averaged over queries.
- ``average_precision(relevant, n_relevant)``: for one ranked list,
  ``sum over relevant ranks r of precision@r`` divided by the number of
  relevant items that exist (``n_relevant``), so relevant items that were
  never retrieved count as misses.  mAP is its mean over queries.

``relevant`` is a boolean matrix (queries x ranks): ``relevant[q, r]`` says
whether the r-th result of query q is relevant.  ``relevance_from_labels``
builds it from class labels, the usual protocol for image retrieval (every
image queries the others; same class = relevant).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "recall_at_k",
    "precision_at_k",
    "average_precision",
    "mean_average_precision",
    "relevance_from_labels",
    "label_retrieval_scores",
]


def _as_2d(a, name, dtype=None):
    a = np.asarray(a, dtype=dtype)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (queries x ranks), found {a.ndim} dimensions")
    return a


def _check_k(k, width, name):
    if not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"Expected k > 0 (an int). Got {k!r}")
    if k > width:
        raise ValueError(f"k={k} but {name} has only {width} columns: search with k >= {k} first")
    return int(k)


def recall_at_k(I: ArrayLike, truth: ArrayLike, k: int | None = None) -> float:
    """Mean fraction of the true k nearest neighbours found in the first k results.

    ``I`` (nq, >= k) ids returned by the index; ``truth`` (nq, >= k) exact ids.
    Padding ids (-1) never count as found.
    """
    I = _as_2d(I, "I")
    truth = _as_2d(truth, "truth")
    if I.shape[0] != truth.shape[0]:
        raise ValueError(f"I has {I.shape[0]} queries but truth has {truth.shape[0]}")
    k = _check_k(truth.shape[1] if k is None else k, min(I.shape[1], truth.shape[1]), "I or truth")
    hits = 0
    total = 0
    for row, ref in zip(I[:, :k], truth[:, :k]):
        ref = ref[ref >= 0]
        total += len(ref)
        hits += len(np.intersect1d(row[row >= 0], ref))
    return hits / total if total else 0.0


def precision_at_k(relevant: ArrayLike, k: int) -> float:
    """Mean over queries of (relevant results among the first k) / k."""
    rel = _as_2d(relevant, "relevant", dtype=bool)
    k = _check_k(k, rel.shape[1], "relevant")
    return float(rel[:, :k].sum(axis=1).mean() / k) if len(rel) else 0.0


def average_precision(relevant: ArrayLike, n_relevant: int | None = None) -> float:
    """AP of one ranked list (1-D boolean).  ``n_relevant`` is how many relevant
    items exist in the collection (default: those in the list).  0 when none exist."""
    rel = np.asarray(relevant, dtype=bool).ravel()
    n = int(rel.sum()) if n_relevant is None else int(n_relevant)
    if n < rel.sum():
        raise ValueError(f"n_relevant={n} is smaller than the {int(rel.sum())} relevant results in the list")
    if n == 0:
        return 0.0
    ranks = np.flatnonzero(rel) + 1  # 1-based ranks of the hits
    precisions = np.arange(1, len(ranks) + 1) / ranks
    return float(precisions.sum() / n)


def mean_average_precision(relevant: ArrayLike, n_relevant: ArrayLike | None = None) -> float:
    """mAP over queries: ``relevant`` (nq, ranks) boolean, ``n_relevant`` (nq,) or None."""
    rel = _as_2d(relevant, "relevant", dtype=bool)
    if n_relevant is None:
        n_relevant = rel.sum(axis=1)
    n_relevant = np.broadcast_to(np.asarray(n_relevant), (rel.shape[0],))
    if not len(rel):
        return 0.0
    return float(np.mean([average_precision(r, n) for r, n in zip(rel, n_relevant)]))


def relevance_from_labels(I: ArrayLike, query_labels: ArrayLike, labels_by_id: Any,
                          query_ids: ArrayLike | None = None) -> np.ndarray:
    """Boolean relevance of each result: same label as its query.

    ``labels_by_id`` maps an id to its label (a dict, or an array indexed by id);
    padding ids (-1) and the query itself (when ``query_ids`` is given) are not relevant.
    """
    I = _as_2d(I, "I")
    query_labels = np.asarray(query_labels)
    if len(query_labels) != len(I):
        raise ValueError(f"{len(query_labels)} query labels for {len(I)} queries")
    if isinstance(labels_by_id, dict):
        lookup = labels_by_id.get
    else:
        arr = np.asarray(labels_by_id, dtype=object)
        lookup = lambda i: arr[i] if 0 <= i < len(arr) else None  # noqa: E731
    own = None if query_ids is None else np.asarray(query_ids)
    rel = np.zeros(I.shape, dtype=bool)
    for q, row in enumerate(I):
        for r, i in enumerate(row):
            i = int(i)
            if i < 0 or (own is not None and i == int(own[q])):
                continue
            lab = lookup(i)
            rel[q, r] = lab is not None and lab == query_labels[q]
    return rel


def label_retrieval_scores(I: ArrayLike, ids: ArrayLike, labels: Sequence[Any],
                           ks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
    """Leave-one-out retrieval quality of a labelled collection.

    Every item ``ids[q]`` queried the index and got the ranked ids ``I[q]``
    (its own id among them or not; it is skipped either way).  Returns a dict
    with ``mAP`` (over the whole ranked list given, relevant = same label,
    normalised by the number of other items with that label), and
    ``precision@k`` / ``recall@k`` for each k in ``ks`` (recall@k: the fraction
    of the query's same-label items found in the first k).
    """
    I = _as_2d(I, "I")
    ids = np.asarray(ids)
    labels = np.asarray(labels, dtype=object)
    if len(ids) != len(labels) or len(ids) != len(I):
        raise ValueError(f"ids ({len(ids)}), labels ({len(labels)}) and result rows ({len(I)}) must be equally long")
    label_of = dict(zip(ids.tolist(), labels.tolist()))
    counts: dict[Any, int] = {}
    for lab in labels.tolist():
        counts[lab] = counts.get(lab, 0) + 1
    # drop each query's own id, keep the order of the rest
    ranked = np.full(I.shape, -1, dtype=np.int64)
    for q, row in enumerate(I):
        rest = row[row != ids[q]]
        ranked[q, : len(rest)] = rest
    rel = relevance_from_labels(ranked, labels, label_of)
    n_rel = np.array([counts[lab] - 1 for lab in labels.tolist()])
    out = {"queries": int(len(I)), "mAP": mean_average_precision(rel, n_rel)}
    for k in ks:
        if k <= rel.shape[1]:
            out[f"precision@{k}"] = precision_at_k(rel, k)
            with np.errstate(invalid="ignore", divide="ignore"):
                r = rel[:, :k].sum(axis=1) / np.maximum(n_rel, 1)
            out[f"recall@{k}"] = float(r[n_rel > 0].mean()) if (n_rel > 0).any() else 0.0
    return out
