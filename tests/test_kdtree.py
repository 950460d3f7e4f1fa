"""KDTreeIndex against NumPy brute force and FlatIndex: every metric, static
and dynamic trees, filters, radius search, eps, persistence, hostile files."""
import pickle
import struct
import threading

import numpy as np
import pytest

import imgsearch
from imgsearch import FlatIndex, IndexFormatError, KDTreeIndex
from conftest import check_knn, isa_levels, oracle_pairwise, run_tests_in_child, supported_levels
from test_format import ENTRY, HEADER, crc32c, reseal, sections

KD_METRICS = ["l2", "l1"]


def kd_data(kind, n, dim, rng):
    if kind == "uniform":
        return rng.random((n, dim), dtype=np.float32)
    if kind == "clustered":
        centres = rng.normal(size=(6, dim)) * 5
        return (centres[rng.integers(0, 6, n)] + rng.normal(size=(n, dim)) * 0.3).astype(np.float32)
    # duplicate-heavy: few distinct rows, integer coordinates (many equal distances)
    base = rng.integers(0, 4, size=(max(n // 20, 1), dim)).astype(np.float32)
    return base[rng.integers(0, len(base), n)]


def assert_same_as_flat(kd, flat, Q, k, X, ids, metric, allowed=None, **kw):
    D, I = kd.search(Q, k=k, **kw)
    Df, If = flat.search(Q, k=k, filter=allowed)
    np.testing.assert_allclose(D, Df, rtol=2e-5, atol=1e-5)
    rows = slice(None, None, max(1, len(Q) // 40))  # the NumPy oracle on a sample of rows
    check_knn(D[rows], I[rows], X, ids, Q[rows], k, metric, allowed=allowed)
    return D, I


@pytest.mark.parametrize("metric", KD_METRICS)
@pytest.mark.parametrize("kind", ["uniform", "clustered", "duplicates"])
@pytest.mark.parametrize("dim", [1, 3, 16, 21])
def test_exact_search_equals_flat(metric, kind, dim, rng):
    X = kd_data(kind, 1500, dim, rng)
    Q = np.concatenate([kd_data(kind, 280, dim, rng), X[:20]])  # >= 256: queries reordered by leaf
    flat = FlatIndex.from_array(X, metric=metric)
    for copy in (False, True):
        kd = KDTreeIndex.from_array(X, metric=metric, copy=copy, leaf_size=5)
        assert kd.borrowed == (not copy) and len(kd) == 1500 and kd.metric == metric and kd.dim == dim
        D, I = assert_same_as_flat(kd, flat, Q, 9, X, np.arange(1500), metric)
        D2, I2 = kd.search(Q, k=9, threads=2)
        np.testing.assert_array_equal(D, D2)
        np.testing.assert_array_equal(I, I2)


@pytest.mark.parametrize("leaf_size", [1, 2, 12, 64])
def test_leaf_sizes_and_few_queries(leaf_size, rng):
    X = kd_data("clustered", 700, 4, rng)
    Q = kd_data("clustered", 7, 4, rng)
    kd = KDTreeIndex.from_array(X, leaf_size=leaf_size)
    assert kd.leaf_size == leaf_size
    D, I = kd.search(Q, k=5)
    check_knn(D, I, X, np.arange(700), Q, 5, "l2")


def test_tiny_and_degenerate_indexes():
    kd = KDTreeIndex(3)
    D, I = kd.search(np.zeros(3, np.float32), k=4)
    assert I.tolist() == [[-1] * 4] and np.isinf(D).all()
    one = KDTreeIndex.from_array(np.array([[1.0, 2.0, 3.0]], np.float32))
    D, I = one.search(np.zeros((2, 3), np.float32), k=3)
    assert I.tolist() == [[0, -1, -1]] * 2
    np.testing.assert_allclose(D[:, 0], 14.0)
    assert np.isinf(D[:, 1:]).all()
    empty = KDTreeIndex.from_array(np.zeros((0, 5), np.float32))
    assert len(empty) == 0 and empty.search(np.ones((1, 5), np.float32), k=1)[1].tolist() == [[-1]]
    # all points identical: every distance equal, ids distinct, no blow-up
    same = np.full((3000, 2), 7.0, np.float32)
    kd = KDTreeIndex.from_array(same, leaf_size=4)
    D, I = kd.search(np.array([[7.0, 8.0]], np.float32), k=10)
    np.testing.assert_array_equal(D, 1.0)
    assert len(set(I[0].tolist())) == 10
    D, I = kd.search(np.array([[7.0, 8.0]], np.float32), k=5000)
    assert (I[0, :3000] >= 0).all() and (I[0, 3000:] == -1).all() and len(set(I[0, :3000].tolist())) == 3000


@pytest.mark.parametrize("metric", KD_METRICS)
@pytest.mark.parametrize("fraction", [0.01, 0.5])
def test_filters(metric, fraction, rng):
    X = kd_data("clustered", 2000, 5, rng)
    ids = rng.permutation(20_000)[:2000].astype(np.int64)
    kd = KDTreeIndex.from_array(X, metric=metric, ids=ids)
    flat = FlatIndex.from_array(X, metric=metric, ids=ids)
    allowed = rng.choice(ids, size=int(fraction * len(ids)), replace=False)
    Q = kd_data("clustered", 30, 5, rng)
    D, I = assert_same_as_flat(kd, flat, Q, 8, X, ids, metric, allowed=allowed, filter=allowed)
    mask = np.zeros(ids.max() + 1, bool)
    mask[allowed] = True
    D2, I2 = kd.search(Q, k=8, filter=mask)
    np.testing.assert_array_equal(D, D2)
    np.testing.assert_array_equal(I, I2)
    D3, I3 = kd.search(Q, k=8, filter=np.array([], np.int64))
    assert (I3 == -1).all()


@pytest.mark.parametrize("metric", KD_METRICS)
def test_range_search_matches_brute_force(metric, rng):
    X = kd_data("clustered", 1200, 3, rng)
    kd = KDTreeIndex.from_array(X, metric=metric, leaf_size=6)
    kd.add(kd_data("clustered", 100, 3, rng))  # some rows still in the add buffer
    allx = np.concatenate([X, kd.get(np.arange(1200, 1300))])
    Q = kd_data("clustered", 300, 3, rng)
    ref = oracle_pairwise(Q, allx, metric)
    radius = float(np.quantile(ref, 0.02))
    lims, D, I = kd.range_search(Q, radius)
    assert lims.shape == (301,) and lims[0] == 0 and lims[-1] == len(D) == len(I)
    for qi in range(len(Q)):
        d, i = D[lims[qi]:lims[qi + 1]], I[lims[qi]:lims[qi + 1]]
        expect = np.flatnonzero(ref[qi] < radius)
        near = np.abs(ref[qi] - radius) <= 1e-5 * (1 + radius)  # rounding at the boundary
        assert set(i.tolist()) - set(np.flatnonzero(near)) == set(expect.tolist()) - set(np.flatnonzero(near))
        assert np.all(np.diff(d) >= 0)
        np.testing.assert_allclose(d, ref[qi, i], rtol=1e-5, atol=1e-5)
    flat = FlatIndex.from_array(allx, metric=metric)
    fl = flat.range_search(Q, radius)
    assert abs(len(fl[1]) - len(D)) <= 2
    allowed = np.arange(0, 1300, 3)
    lims2, D2, I2 = kd.range_search(Q, radius, filter=allowed)
    assert set(I2.tolist()) <= set(allowed.tolist()) and len(I2) == np.isin(I, allowed).sum()


@pytest.mark.parametrize("metric", KD_METRICS)
@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_eps_bound_is_respected(metric, eps, rng):
    X = kd_data("clustered", 3000, 6, rng)
    Q = kd_data("clustered", 300, 6, rng)
    kd = KDTreeIndex.from_array(X, metric=metric)
    De, _ = kd.search(Q, k=10)
    Da, Ia = kd.search(Q, k=10, eps=eps)
    factor = (1 + eps) ** 2 if metric == "l2" else 1 + eps
    assert np.all(Da <= De * factor * (1 + 1e-5) + 1e-6)
    ref = oracle_pairwise(Q, X, metric)
    np.testing.assert_allclose(Da, np.take_along_axis(ref, Ia, 1), rtol=1e-5, atol=1e-5)
    assert (Ia >= 0).all()


def test_max_leaves_bounds_work_and_stays_valid(rng):
    X = kd_data("uniform", 5000, 3, rng)
    Q = kd_data("uniform", 200, 3, rng)
    kd = KDTreeIndex.from_array(X, leaf_size=8)
    De, Ie = kd.search(Q, k=5)
    Da, Ia = kd.search(Q, k=5, max_leaves=1)
    ref = oracle_pairwise(Q, X, "l2")
    ok = Ia >= 0
    np.testing.assert_allclose(Da[ok], np.take_along_axis(ref, np.where(ok, Ia, 0), 1)[ok], rtol=1e-5, atol=1e-6)
    assert np.all(Da[:, 0] >= De[:, 0]) and np.mean(Ia[:, 0] == Ie[:, 0]) > 0.3
    Db, Ib = kd.search(Q, k=5, max_leaves=10**9)
    np.testing.assert_array_equal(Ib, Ie)


@pytest.mark.parametrize("metric", KD_METRICS)
def test_dynamic_adds_stay_exact(metric, rng):
    X = kd_data("clustered", 4000, 3, rng)
    Q = kd_data("clustered", 60, 3, rng)
    kd = KDTreeIndex(3, metric, leaf_size=8)
    flat = FlatIndex(3, metric)
    at = 0
    for size in [1, 7, 600, 50, 1, 900, 13, 513, 1000, 300, 615]:  # crosses the buffer and several merges
        kd.add(X[at:at + size])
        flat.add(X[at:at + size])
        at += size
        assert len(kd) == at
        assert_same_as_flat(kd, flat, Q, 7, X[:at], np.arange(at), metric)
    assert at == 4000
    # replacing vectors by id, then removing
    kd.add(X[:50] + 100, ids=np.arange(50))
    flat.add(X[:50] + 100, ids=np.arange(50))
    gone = rng.choice(4000, 1500, replace=False)
    assert kd.remove(gone) == flat.remove(gone) == 1500
    assert kd.remove(gone) == 0
    keep = np.setdiff1d(np.arange(4000), gone)
    Xnow = X.copy()
    Xnow[:50] += 100
    np.testing.assert_array_equal(kd.get(keep), Xnow[keep])
    with pytest.raises(KeyError):
        kd.get(gone[:1])
    assert sorted(kd.ids.tolist()) == keep.tolist()
    assert_same_as_flat(kd, flat, Q, 7, Xnow[keep], keep, metric)
    # next default ids continue after the largest id ever used
    kd.add(X[:2])
    assert sorted(kd.ids.tolist())[-2:] == [4000, 4001]


def test_borrowed_tree_then_changes(rng):
    X = kd_data("uniform", 3000, 4, rng)
    before = X.copy()
    kd = KDTreeIndex.from_array(X)
    assert kd.borrowed
    kd.add(kd_data("uniform", 10, 4, rng))
    kd.remove(np.arange(0, 3000, 2))        # half dead: the borrowed tree is rebuilt, owned
    kd.remove(np.arange(1, 3000, 4))
    assert not kd.borrowed
    np.testing.assert_array_equal(X, before)
    keep = np.arange(3, 3000, 4)
    np.testing.assert_array_equal(kd.get(keep), X[keep])
    D, I = kd.search(X[keep[:20]], k=1)
    np.testing.assert_array_equal(I[:, 0], keep[:20])
    n = len(kd)
    assert kd.remove(kd.ids) == n
    assert len(kd) == 0 and kd.search(X[:1], k=2)[1].tolist() == [[-1, -1]]
    kd.add(X[:5], ids=[5, 6, 7, 8, 9])
    assert sorted(kd.ids.tolist()) == [5, 6, 7, 8, 9]


def test_inputs_are_not_modified_and_nan_rejected(rng):
    X = kd_data("clustered", 800, 3, rng)
    Q = kd_data("clustered", 300, 3, rng)
    ids = np.arange(800, dtype=np.int64)[::-1].copy()
    saved = (X.copy(), Q.copy(), ids.copy())
    kd = KDTreeIndex.from_array(X, ids=ids)
    kd.search(Q, k=3)
    kd.range_search(Q, 0.5)
    kd2 = KDTreeIndex.from_array(X, copy=True, ids=ids)
    kd2.add(X[:600], ids=ids[:600] + 1000)
    kd2.search(Q, k=3, filter=ids[:100])
    for a, b in zip((X, Q, ids), saved):
        np.testing.assert_array_equal(a, b)
    bad = X.copy()
    bad[5, 1] = np.nan
    for fn in (lambda: KDTreeIndex.from_array(bad), lambda: kd.add(bad),
               lambda: kd.search(bad[:6], k=1), lambda: kd.range_search(bad[:6], 1.0)):
        with pytest.raises(ValueError, match="NaN"):
            fn()
    bad[5, 1] = np.inf
    with pytest.raises(ValueError, match="Inf"):
        kd.add(bad)
    assert len(kd) == 800
    with pytest.raises(ValueError, match="metric"):
        KDTreeIndex(3, "cosine")
    with pytest.raises(ValueError):
        kd.search(Q, k=0)
    with pytest.raises(ValueError, match="eps"):
        kd.search(Q, k=1, eps=-1)
    with pytest.raises(ValueError, match="max_leaves"):
        kd.search(Q, k=1, max_leaves=0)
    with pytest.raises(ValueError, match="dim"):
        kd.search(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="leaf_size"):
        KDTreeIndex(3, leaf_size=0)
    with pytest.raises(ValueError, match="unique"):
        kd.add(X[:2], ids=[1, 1])
    with pytest.raises(TypeError, match="copy=False"):
        KDTreeIndex.from_array(X.astype(np.float64))


@pytest.mark.parametrize("use_mmap", [False, True])
def test_save_load_pickle(use_mmap, tmp_path, rng):
    X = kd_data("clustered", 2500, 5, rng)
    kd = KDTreeIndex.from_array(X, metric="l1", leaf_size=7, ids=np.arange(2500) * 2)
    kd.add(kd_data("clustered", 100, 5, rng))   # in the buffer
    kd.remove([0, 2, 4])
    Q = kd_data("clustered", 50, 5, rng)
    path = tmp_path / "kd.isx"
    kd.save(path)
    loaded = imgsearch.load(path, mmap=use_mmap)
    assert isinstance(loaded, KDTreeIndex)
    assert (loaded.dim, loaded.metric, loaded.leaf_size, len(loaded)) == (5, "l1", 7, len(kd))
    assert loaded.borrowed
    for a, b in zip(kd.search(Q, k=6), loaded.search(Q, k=6)):
        np.testing.assert_array_equal(a, b)
    clone = pickle.loads(pickle.dumps(kd))
    for a, b in zip(kd.search(Q, k=6), clone.search(Q, k=6)):
        np.testing.assert_array_equal(a, b)
    raw = path.read_bytes()
    loaded.add(Q[:3])
    loaded.remove([6])
    assert path.read_bytes() == raw
    assert sorted(loaded.ids.tolist())[-3:] == [5099, 5100, 5101]  # next_id survived


def set_section(raw, tag, data):
    raw = bytearray(raw)
    for i, (t, off, size, crc) in enumerate(sections(raw)):
        if t == tag:
            assert len(data) == size
            raw[off:off + size] = data
            struct.pack_into("<I", raw, HEADER + i * ENTRY + 24, crc32c(bytes(data)))
    return reseal(bytes(raw))


def test_hostile_files_are_format_errors(rng):
    X = kd_data("uniform", 300, 3, rng)
    raw = KDTreeIndex.from_array(X).to_bytes()
    secs = {t: (off, size) for t, off, size, crc in sections(raw)}
    off, size = secs["VECS"]
    vecs = bytearray(raw[off:off + size])
    struct.pack_into("<f", vecs, 20, float("nan"))
    with pytest.raises(IndexFormatError, match="NaN"):
        imgsearch._core._from_bytes(set_section(raw, "VECS", vecs))
    off, size = secs["IDS "]
    ids = bytearray(raw[off:off + size])
    struct.pack_into("<q", ids, 8, 0)
    with pytest.raises(IndexFormatError, match="unique"):
        imgsearch._core._from_bytes(set_section(raw, "IDS ", ids))
    struct.pack_into("<q", ids, 8, -5)
    with pytest.raises(IndexFormatError):
        imgsearch._core._from_bytes(set_section(raw, "IDS ", ids))
    off, size = secs["PARM"]
    parm = bytearray(raw[off:off + size])
    at = bytes(parm).index(b"leaf_size") + len(b"leaf_size") + 4
    struct.pack_into("<q", parm, at, 0)
    with pytest.raises(IndexFormatError, match="leaf_size"):
        imgsearch._core._from_bytes(set_section(raw, "PARM", parm))
    bad = bytearray(raw)
    struct.pack_into("<I", bad, 20, 3)  # cosine: not a KD-tree metric
    with pytest.raises(IndexFormatError):
        imgsearch._core._from_bytes(reseal(bytes(bad)))
    flips = np.random.default_rng(3).integers(0, len(raw), 100)
    for pos in flips:
        b = bytearray(raw)
        b[pos] ^= 0x10
        with pytest.raises(IndexFormatError):
            imgsearch._core._from_bytes(bytes(b))


def test_concurrent_searches_during_adds(rng):
    X = kd_data("uniform", 6000, 3, rng)
    kd = KDTreeIndex.from_array(X[:2000], copy=True)
    Q = X[:64]
    errors = []

    def searcher():
        try:
            for _ in range(20):
                D, I = kd.search(Q, k=1)
                assert np.all(D[:, 0] == 0)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    for s in range(2000, 6000, 400):
        kd.add(X[s:s + 400])
    for t in threads:
        t.join()
    assert not errors and len(kd) == 6000


def test_from_array_keeps_a_permutation_not_a_copy(rng):
    X = kd_data("uniform", 20_000, 16, rng)
    kd = KDTreeIndex.from_array(X)
    owned = KDTreeIndex.from_array(X, copy=True)
    assert kd.borrowed and not owned.borrowed
    # a borrowed tree holds nodes, a uint32 permutation and int64 ids: a fraction of the rows
    assert kd.memory_usage < X.nbytes / 3
    assert owned.memory_usage > X.nbytes
    Q = kd_data("uniform", 300, 16, rng)
    D, I = kd.search(Q, k=4)
    # the index keeps the caller's array alive: dropping the caller's name changes nothing
    del X
    import gc

    gc.collect()
    for a, b in zip((D, I), kd.search(Q, k=4)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip((D, I), owned.search(Q, k=4)):
        np.testing.assert_array_equal(a, b)


def test_query_layouts_and_dtypes(rng):
    X = kd_data("clustered", 2000, 6, rng)
    kd = KDTreeIndex.from_array(X)
    Q = kd_data("clustered", 600, 6, rng)
    D, I = kd.search(Q, k=5)
    for q in (Q.astype(np.float64), np.asfortranarray(Q), np.repeat(Q, 2, axis=0)[::2]):
        for a, b in zip((D, I), kd.search(q, k=5)):
            np.testing.assert_array_equal(a, b)
    D1, I1 = kd.search(Q[0], k=5)  # one query as a 1-d vector
    np.testing.assert_array_equal(I1, I[:1])
    lims, Dr, Ir = kd.range_search(Q, float(np.median(D[:, 2])))
    lims2, Dr2, Ir2 = kd.range_search(np.asfortranarray(Q), float(np.median(D[:, 2])), threads=2)
    for a, b in zip((lims, Dr, Ir), (lims2, Dr2, Ir2)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("metric", KD_METRICS)
def test_range_search_edge_cases(metric, rng):
    X = kd_data("duplicates", 900, 1, rng)          # d = 1, many equal points
    kd = KDTreeIndex.from_array(X, metric=metric, leaf_size=3)
    Q = np.concatenate([X[:5], kd_data("duplicates", 300, 1, rng)])
    ref = oracle_pairwise(Q, X, metric)
    for radius in (0.0, 0.5, 1.5, 1e9):
        lims, D, I = kd.range_search(Q, radius)
        assert lims[-1] == len(I) == (ref < radius).sum()  # integer coordinates: no rounding at the edge
        for qi in (0, 4, 17, len(Q) - 1):
            assert sorted(I[lims[qi]:lims[qi + 1]].tolist()) == np.flatnonzero(ref[qi] < radius).tolist()
    lims, D, I = kd.range_search(Q, -1.0)
    assert len(I) == 0 and (lims == 0).all()
    empty = KDTreeIndex(2, metric)
    lims, D, I = empty.range_search(np.zeros((3, 2), np.float32), 1.0)
    assert lims.tolist() == [0, 0, 0, 0] and len(D) == len(I) == 0


@pytest.mark.parametrize("metric", KD_METRICS)
def test_approximate_modes_on_a_dynamic_forest(metric, rng):
    # several trees plus the add buffer: eps and max_leaves hold across all of them
    X = kd_data("clustered", 5000, 4, rng)
    kd = KDTreeIndex(4, metric, leaf_size=6)
    for s, e in ((0, 4000), (4000, 4700), (4700, 5000)):   # trees of 4000 and 700, 300 in the buffer
        kd.add(X[s:e])
    kd.remove(np.arange(0, 5000, 7))
    keep = np.setdiff1d(np.arange(5000), np.arange(0, 5000, 7))
    Q = kd_data("clustered", 400, 4, rng)
    ref = oracle_pairwise(Q, X[keep], metric)
    De, Ie = kd.search(Q, k=8)
    check_knn(De[::10], Ie[::10], X[keep], keep, Q[::10], 8, metric)
    for eps in (0.5, 3.0):
        Da, Ia = kd.search(Q, k=8, eps=eps)
        factor = (1 + eps) ** 2 if metric == "l2" else 1 + eps
        assert np.all(Da <= De * factor * (1 + 1e-5) + 1e-6)
        assert np.isin(Ia, keep).all()
    for leaves in (1, 3):
        Da, Ia = kd.search(Q, k=8, max_leaves=leaves)
        ok = Ia >= 0
        assert np.isin(Ia[ok], keep).all() and np.all(Da[:, 0] >= De[:, 0] * (1 - 1e-6))
        pos = np.searchsorted(keep, np.where(ok, Ia, keep[0]))
        np.testing.assert_allclose(Da[ok], np.take_along_axis(ref, pos, 1)[ok], rtol=1e-5, atol=1e-6)
    # eps = 0 with max_leaves large enough is the exact search
    for a, b in zip((De, Ie), kd.search(Q, k=8, max_leaves=10**6)):
        np.testing.assert_array_equal(a, b)


def test_filters_on_a_dynamic_index_with_removals(rng):
    X = kd_data("uniform", 3000, 3, rng)
    kd = KDTreeIndex.from_array(X[:2000], ids=np.arange(2000) * 3)
    kd.add(X[2000:], ids=np.arange(2000, 3000) * 3)    # a second tree and the buffer
    kd.remove(np.arange(0, 9000, 9))
    ids = np.setdiff1d(np.arange(3000) * 3, np.arange(0, 9000, 9))
    rows = ids // 3
    allowed = np.concatenate([ids[::4], np.arange(0, 9000, 9)[:50], [10**9]])  # some removed, one unknown
    live_allowed = np.intersect1d(allowed, ids)
    flat = FlatIndex.from_array(X[rows], ids=ids)
    Q = kd_data("uniform", 280, 3, rng)
    assert_same_as_flat(kd, flat, Q, 6, X[rows], ids, "l2", allowed=live_allowed, filter=allowed)
    D, I = kd.search(Q, k=len(live_allowed) + 5, filter=allowed[:30])
    n_ok = np.isin(ids, allowed[:30]).sum()
    assert (I[:, :n_ok] >= 0).all() and (I[:, n_ok:] == -1).all() and np.isinf(D[:, n_ok:]).all()
    assert np.isin(I[:, :n_ok], ids).all()


def test_threads_give_identical_results_and_bad_threads_rejected(rng):
    X = kd_data("clustered", 4000, 3, rng)
    kd = KDTreeIndex.from_array(X, threads=2)
    same = KDTreeIndex.from_array(X, threads=1)
    Q = kd_data("clustered", 1000, 3, rng)
    D, I = same.search(Q, k=7, threads=1)
    for t in (2, 3, 16):
        for a, b in zip((D, I), kd.search(Q, k=7, threads=t)):
            np.testing.assert_array_equal(a, b)
    for bad in (-2, 1.5, "two"):
        with pytest.raises((ValueError, TypeError)):
            kd.search(Q, k=1, threads=bad)


@pytest.mark.parametrize("n", [0, 1, 513])
def test_round_trip_of_small_indexes(n, tmp_path, rng):
    X = kd_data("uniform", n, 2, rng)
    kd = KDTreeIndex(2, "l1", leaf_size=3)
    if n:
        kd.add(X, ids=np.arange(n) + 10)
    Q = kd_data("uniform", 4, 2, rng)
    for other in (pickle.loads(pickle.dumps(kd)), imgsearch._core._from_bytes(kd.to_bytes())):
        assert (other.dim, other.metric, other.leaf_size, len(other)) == (2, "l1", 3, n)
        for a, b in zip(kd.search(Q, k=3), other.search(Q, k=3)):
            np.testing.assert_array_equal(a, b)
        other.add(Q[:1])
        assert sorted(other.ids.tolist())[-1] == (n + 10 if n else 0)


@pytest.mark.parametrize("dim", [8, 16, 21])
def test_a_points_distance_does_not_depend_on_where_it_lives(dim, rng):
    # the leaf scans (AVX2 from d = 8 on) must give the same bits in any slot:
    # borrowed tree, owned tree, add buffer, a merged forest, a reloaded file
    X = kd_data("clustered", 3000, dim, rng)
    Q = np.concatenate([kd_data("clustered", 300, dim, rng), X[:30]])
    ref = KDTreeIndex.from_array(X, leaf_size=7).search(Q, k=9)
    dynamic = KDTreeIndex(dim, leaf_size=5)
    for s, e in ((0, 1000), (1000, 2600), (2600, 2900), (2900, 3000)):   # trees and the buffer
        dynamic.add(X[s:e])
    others = [KDTreeIndex.from_array(X, copy=True, leaf_size=16), dynamic,
              imgsearch._core._from_bytes(dynamic.to_bytes())]
    for other in others:
        for a, b in zip(ref, other.search(Q, k=9)):
            np.testing.assert_array_equal(a, b)
    # a selective filter scans only the allowed rows (a list, not the trees): same bits again
    allowed = np.unique(ref[1][:40, 0])
    for other in others[1:2] + [KDTreeIndex.from_array(X)]:
        D1, I1 = other.search(Q[:40], k=1, filter=allowed)
        np.testing.assert_array_equal(I1[:, 0], ref[1][:40, 0])
        np.testing.assert_array_equal(D1[:, 0], ref[0][:40, 0])
    lims, D, I = others[1].range_search(Q, float(np.median(ref[0][:, 4])))
    for qi in (0, 7, 301):
        d = dict(zip(ref[1][qi].tolist(), ref[0][qi].tolist()))
        for i, dist in zip(I[lims[qi]:lims[qi + 1]].tolist(), D[lims[qi]:lims[qi + 1]].tolist()):
            assert i not in d or d[i] == dist


@pytest.mark.parametrize("level", isa_levels())
def test_oracle_tests_pass_at_every_simd_level(level):
    # the main run uses this CPU's best leaf scan; each level runs in a child
    if level == supported_levels()[-1]:
        pytest.skip(f"{level} is this CPU's best level: the main run of these tests is its run")
    run_tests_in_child("test_kdtree.py",
                       "exact_search or filters or dynamic_adds or where_it_lives or range_search_matches or eps",
                       {"IMGSEARCH_SIMD": level})
