"""FlatIndex against NumPy brute force: every metric, every search plan."""
import threading

import numpy as np
import pytest

from imgsearch import FlatIndex
from conftest import METRICS, check_filter_rule, check_knn, filter_ids, make_data, oracle_pairwise


def dim_for(metric):
    return 64 if metric == "hamming" else 24


# nq=1 and 3 take the database-parallel scan, 40 the query-parallel scan or sgemm
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("nq", [1, 3, 40])
@pytest.mark.parametrize("threads", [1, 2])
def test_search_matches_brute_force(metric, nq, threads, rng):
    dim = dim_for(metric)
    X = make_data(metric, 1501, dim, rng, clustered=True)
    Q = make_data(metric, nq, dim, rng, clustered=True)
    index = FlatIndex(dim, metric)
    index.add(X)
    assert len(index) == 1501 and index.dim == dim and index.metric == metric
    D, I = index.search(Q, k=7, threads=threads)
    assert D.shape == (nq, 7) and D.dtype == np.float32 and I.dtype == np.int64
    check_knn(D, I, X, np.arange(1501), Q, 7, metric)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_gemm_plan_distances_are_exact_for_near_duplicates(metric, rng):
    # |q|^2 + |x|^2 - 2 q.x cancels badly here; returned distances must not
    X = (rng.normal(size=(300, 64)) * 100 + 1000).astype(np.float32)
    Q = X[:32] + np.float32(1e-3)
    D, I = FlatIndex.from_array(X, metric=metric).search(Q, k=3)
    ref = oracle_pairwise(Q, X, metric)
    np.testing.assert_allclose(D, np.take_along_axis(ref, I, 1), rtol=1e-5, atol=1e-4)
    if metric == "l2":
        assert np.array_equal(I[:, 0], np.arange(32))


@pytest.mark.parametrize("threads", [1, 2])
def test_norm_pruned_plan_matches_brute_force(threads, rng):
    # >= 128 l2 queries without a filter take the norm-pruned fused plan: rows
    # and queries are visited in order of norm.  Norms here span two decades,
    # rows repeat (ties keep the lower id), ids are not slots, and k is larger
    # than some norm shells.
    X = (rng.normal(size=(3000, 40)) * rng.uniform(0.05, 5.0, size=(3000, 1))).astype(np.float32)
    X[1500:1600] = X[:100]
    Q = np.concatenate([X[:60] + np.float32(1e-3),
                        (rng.normal(size=(140, 40)) * rng.uniform(0.05, 5.0, size=(140, 1))).astype(np.float32)])
    ids = rng.permutation(10 ** 6)[:3000].astype(np.int64)
    index = FlatIndex(40)
    index.add(X, ids=ids)
    for k in (1, 10, 50):
        D, I = index.search(Q, k=k, threads=threads)
        check_knn(D, I, X, ids, Q, k, "l2")
    index.remove(ids[:700])
    D, I = index.search(Q, k=10, threads=threads)
    check_knn(D, I, X[700:], ids[700:], Q, 10, "l2")


def test_padding_when_fewer_than_k(rng):
    index = FlatIndex(4)
    D, I = index.search(np.zeros(4, np.float32), k=3)
    assert I.tolist() == [[-1, -1, -1]] and np.all(np.isinf(D))
    index.add(np.eye(4, dtype=np.float32)[:2])
    for nq in (1, 20):
        D, I = index.search(np.zeros((nq, 4), np.float32), k=5)
        assert np.all(I[:, :2] >= 0) and np.all(I[:, 2:] == -1) and np.all(np.isinf(D[:, 2:]))
        np.testing.assert_array_equal(D[:, :2], 1.0)


def test_one_dimensional_query_is_one_row(rng):
    X = rng.normal(size=(50, 8)).astype(np.float32)
    index = FlatIndex.from_array(X)
    D1, I1 = index.search(X[7], k=2)
    assert I1.shape == (1, 2) and I1[0, 0] == 7


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("fraction", [0.003, 0.1, 0.7])
@pytest.mark.parametrize("nq", [1, 40])
def test_filters_match_filtered_brute_force(metric, fraction, nq, rng):
    dim = dim_for(metric)
    X = make_data(metric, 2000, dim, rng, clustered=True)
    ids = rng.permutation(10_000)[:2000].astype(np.int64)
    index = FlatIndex(dim, metric)
    index.add(X, ids=ids)
    allowed = rng.choice(ids, size=max(1, int(fraction * len(ids))), replace=False)
    Q = make_data(metric, nq, dim, rng, clustered=True)
    D, I = index.search(Q, k=10, filter=allowed)
    check_knn(D, I, X, ids, Q, 10, metric, allowed=allowed)
    mask = np.zeros(ids.max() + 1, bool)
    mask[allowed] = True
    D2, I2 = index.search(Q, k=10, filter=mask)
    np.testing.assert_array_equal(I, I2)
    np.testing.assert_array_equal(D, D2)


def test_filter_edge_cases(rng):
    X = rng.normal(size=(100, 4)).astype(np.float32)
    index = FlatIndex.from_array(X)
    D, I = index.search(X[:2], k=3, filter=np.array([], np.int64))
    assert np.all(I == -1)
    D, I = index.search(X[:2], k=3, filter=[5, 5, 12345])  # repeats and unknown ids
    assert I[:, 0].tolist() == [5, 5] and np.all(I[:, 1:] == -1)
    with pytest.raises(ValueError, match="expected length >= 100"):  # a short mask is refused
        index.search(X[:2], k=3, filter=np.ones(3, bool))
    with pytest.raises(TypeError, match="integer ids"):
        index.search(X[:2], k=3, filter=np.array([0.5]))
    with pytest.raises(ValueError, match="1-D"):
        index.search(X[:2], k=3, filter=np.ones((2, 2), bool))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("nq", [1, 40])
def test_filter_rule_bool_is_a_mask_integer_is_ids(metric, nq, rng):
    dim = dim_for(metric)
    X = make_data(metric, 1500, dim, rng, clustered=True)
    ids = filter_ids(1500, rng)
    index = FlatIndex(dim, metric)
    index.add(X, ids=ids)
    check_filter_rule(index, X, ids, make_data(metric, nq, dim, rng, clustered=True), metric)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("nq", [1, 30])
def test_range_search_matches_brute_force(metric, nq, rng):
    dim = dim_for(metric)
    X = make_data(metric, 800, dim, rng, clustered=True)
    Q = make_data(metric, nq, dim, rng, clustered=True)
    ref = oracle_pairwise(Q, X, metric)
    radius = float(np.quantile(ref, 0.02))
    index = FlatIndex.from_array(X, metric=metric)
    lims, D, I = index.range_search(Q, radius)
    assert lims.shape == (nq + 1,) and lims[0] == 0 and lims[-1] == len(D) == len(I)
    for qi in range(nq):
        d, ids = D[lims[qi]:lims[qi + 1]], I[lims[qi]:lims[qi + 1]]
        expected = set(np.flatnonzero(ref[qi] < radius).tolist())
        near_boundary = set(np.flatnonzero(np.abs(ref[qi] - radius) <= 1e-4 * (1 + abs(radius))).tolist())
        assert set(ids.tolist()) ^ expected <= near_boundary
        assert np.all(np.diff(d) >= 0)
        np.testing.assert_allclose(d, ref[qi, ids], rtol=1e-4, atol=1e-4)
    lims, D, I = index.range_search(Q, radius, filter=np.arange(0, 800, 2))
    assert np.all(I % 2 == 0)


def test_remove_get_and_replace(rng):
    X = rng.normal(size=(300, 16)).astype(np.float32)
    index = FlatIndex(16)
    index.add(X[:200])
    index.add(X[200:])  # ids continue at 200
    np.testing.assert_array_equal(index.ids, np.arange(300))
    assert index.remove([3, 3, 250, 99999]) == 2
    assert len(index) == 298
    keep = np.setdiff1d(np.arange(300), [3, 250])
    D, I = index.search(X, k=5)
    check_knn(D, I, X[keep], keep, X, 5, "l2")
    np.testing.assert_array_equal(index.get([0, 299]), X[[0, 299]])
    np.testing.assert_array_equal(index.get(7), X[7])
    with pytest.raises(KeyError, match="3"):
        index.get([3])
    new = np.full(16, 7.0, np.float32)
    index.add(new[None], ids=[10])  # an existing id: replaced, not duplicated
    assert len(index) == 298
    np.testing.assert_array_equal(index.get(10), new)
    D, I = index.search(new, k=1)
    assert I[0, 0] == 10 and D[0, 0] == 0
    index.add(X[:1])  # default id continues after the largest
    assert index.ids.max() == 300


def test_from_array_copies_nothing_and_never_writes(rng):
    X = rng.normal(size=(1000, 32)).astype(np.float32)
    before = X.copy()
    index = FlatIndex.from_array(X, metric="cosine")
    assert index.borrowed
    assert np.shares_memory(index.vectors, X)
    assert index.vectors.base is index
    assert not index.vectors.flags.writeable
    with pytest.raises(ValueError):
        index.vectors[0, 0] = 1
    index.search(X[:50], k=3)
    index.add(X[:5], ids=np.arange(5000, 5005))  # copy-on-write
    assert not index.borrowed
    index.remove([0, 1])
    assert np.array_equal(X, before)
    copied = FlatIndex.from_array(X, copy=True)
    assert not copied.borrowed and not np.shares_memory(copied.vectors, X)


def test_vectors_view_survives_growth(rng):
    index = FlatIndex(8)
    index.add(rng.normal(size=(10, 8)).astype(np.float32))
    view = index.vectors
    snapshot = view.copy()
    for _ in range(5):  # forces reallocations while the view is alive
        index.add(rng.normal(size=(5000, 8)).astype(np.float32))
    assert np.array_equal(view, snapshot)
    del index
    assert np.array_equal(view, snapshot)  # the view keeps the index alive


def test_inputs_are_never_modified(rng):
    X = rng.normal(size=(200, 10)).astype(np.float32)
    Q = rng.normal(size=(30, 10)).astype(np.float32)
    ids = np.arange(200, dtype=np.int64)[::-1].copy()
    X0, Q0, ids0 = X.copy(), Q.copy(), ids.copy()
    index = FlatIndex(10, "cosine")
    index.add(X, ids=ids)
    index.search(Q, k=4, filter=ids[:50])
    index.range_search(Q, 0.5)
    assert np.array_equal(X, X0) and np.array_equal(Q, Q0) and np.array_equal(ids, ids0)


def test_errors_say_what_was_expected(rng):
    index = FlatIndex(8)
    X = rng.normal(size=(10, 8)).astype(np.float32)
    index.add(X.astype(np.float64))  # converted with a copy
    index.add(np.asfortranarray(X), ids=np.arange(100, 110))
    assert len(index) == 20
    with pytest.raises(ValueError, match="dim 8, found dim 9"):
        index.add(np.ones((2, 9), np.float32))
    with pytest.raises(ValueError, match=r"k <= .*k=0"):
        index.search(X, k=0)
    with pytest.raises(TypeError, match="k"):
        index.search(X, k=2.5)
    with pytest.raises(ValueError, match="NaN at row 1, column 2"):
        bad = X.copy()
        bad[1, 2] = np.nan
        index.add(bad)
    with pytest.raises(ValueError, match="Inf"):
        index.add(np.full((1, 8), np.inf, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full(8, np.nan, np.float32))
    with pytest.raises(ValueError, match="unique"):
        index.add(X[:2], ids=[5, 5])
    with pytest.raises(ValueError, match=">= 0"):
        index.add(X[:2], ids=[1, -1])
    with pytest.raises(ValueError, match="expected 2 ids"):
        index.add(X[:2], ids=[1, 2, 3])
    with pytest.raises(TypeError, match="integer ids"):
        index.add(X[:2], ids=[1.5, 2.5])
    with pytest.raises(TypeError, match="copy=False needs a float32"):
        FlatIndex.from_array(X.astype(np.float64), copy=False)
    with pytest.raises(ValueError, match="C-contiguous"):
        FlatIndex.from_array(np.asfortranarray(X), copy=False)
    with pytest.raises(ValueError, match="metric"):
        FlatIndex(8, "nope")
    with pytest.raises(ValueError, match="dim"):
        FlatIndex(0)
    with pytest.raises(ValueError, match="multiple of 8"):
        FlatIndex(12, "hamming")
    with pytest.raises(ValueError, match="3 dimensions"):
        index.search(np.ones((2, 2, 8), np.float32))
    assert len(index) == 20  # nothing half-added


def test_concurrent_searches_agree_with_serial(rng):
    X = rng.normal(size=(3000, 32)).astype(np.float32)
    index = FlatIndex.from_array(X)
    queries = [rng.normal(size=(n, 32)).astype(np.float32) for n in (1, 3, 50, 1, 20, 64)]
    expected = [index.search(q, k=5, threads=1) for q in queries]
    results = [None] * len(queries)

    def worker(i):
        for _ in range(5):
            results[i] = index.search(queries[i], k=5, threads=2)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (De, Ie), (D, I) in zip(expected, results):
        np.testing.assert_array_equal(Ie, I)
        np.testing.assert_array_equal(De, D)


def test_searches_during_adds_and_removes_return_valid_ids(rng):
    index = FlatIndex(16)
    index.add(rng.normal(size=(500, 16)).astype(np.float32))
    stop = threading.Event()
    errors = []

    def searcher():
        q = np.random.default_rng(1).normal(size=(8, 16)).astype(np.float32)
        while not stop.is_set():
            D, I = index.search(q, k=5)
            if not (np.all(I >= 0) and np.all(np.isfinite(D))):
                errors.append((D, I))

    ts = [threading.Thread(target=searcher) for _ in range(3)]
    for t in ts:
        t.start()
    for i in range(30):
        index.add(rng.normal(size=(200, 16)).astype(np.float32))
        index.remove(np.arange(i * 10, i * 10 + 10))
    stop.set()
    for t in ts:
        t.join()
    assert not errors
