"""HNSWIndex against the exact oracle (FlatIndex / NumPy): recall, removal,
filters, persistence, hostile files, determinism, threads, metrics, dtypes."""
import pickle
import struct
import threading

import numpy as np
import pytest

import imgsearch
from imgsearch import FlatIndex, HNSWIndex, IndexFormatError
from conftest import FLOAT_METRICS, METRICS, check_filter_rule, filter_ids, make_data, oracle_pairwise
from test_format import HEADER, ENTRY, crc32c, reseal, sections


def recall(I, truth):
    k = truth.shape[1]
    return np.mean([len(set(a[a >= 0].tolist()) & set(b[b >= 0].tolist())) / k for a, b in zip(I, truth)])


def exact(X, Q, metric, k, ids=None, allowed=None):
    """Ids of the k nearest by the NumPy oracle, -1 padded."""
    ids = np.arange(len(X)) if ids is None else np.asarray(ids)
    d = oracle_pairwise(Q, X, metric)
    if allowed is not None:
        d[:, ~np.isin(ids, allowed)] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    out = ids[order]
    out[np.take_along_axis(d, order, 1) == np.inf] = -1
    return out


def clustered(n, dim, rng, centres=16):
    C = rng.normal(size=(centres, dim)) * 3
    return (C[rng.integers(0, centres, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def dim_for(metric):
    return 128 if metric == "hamming" else 24


def split(X, nq):
    """Base and held-out queries from the same distribution."""
    return np.ascontiguousarray(X[nq:]), np.ascontiguousarray(X[:nq])


def data_for(metric, n, rng):
    if metric == "hamming":  # near-duplicate perceptual hashes around a few prototypes
        protos = rng.integers(0, 256, size=(12, 16), dtype=np.uint8)
        X = protos[rng.integers(0, 12, n)]
        flips = rng.random(size=(n, 128)) < 0.15
        return np.packbits(np.unpackbits(X, axis=1) ^ flips, axis=1)
    return clustered(n, dim_for(metric), rng)


# ---------------------------------------------------------------- recall


@pytest.mark.parametrize("metric", METRICS)
def test_recall_against_flat_on_clustered_data(metric, rng):
    X, Q = split(data_for(metric, 3100, rng), 100)
    index = HNSWIndex(dim_for(metric), metric, M=12, ef_construction=100)
    index.add(X, threads=2)
    assert len(index) == 3000 and index.check()
    flat = FlatIndex(dim_for(metric), metric)
    flat.add(X)
    Df, If = flat.search(Q, k=10)
    D, I = index.search(Q, k=10, ef=80)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == (100, 10)
    if metric == "hamming":  # ties: compare distances, not ids
        assert np.mean(np.isclose(D, Df)) >= 0.95
    else:
        assert recall(I, If) >= 0.95
    # returned distances are the true distances of the returned ids, sorted
    ref = oracle_pairwise(Q, X, metric)
    np.testing.assert_allclose(D, np.take_along_axis(ref, I, 1), rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(D, axis=1) >= -1e-6)


def test_recall_on_fashion_mnist_subset():
    try:
        from imgsearch.datasets import fashion_mnist

        Xtr, _, Xte, _ = fashion_mnist()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    X, Q = np.ascontiguousarray(Xtr[:10000]), np.ascontiguousarray(Xte[:200])
    index = HNSWIndex(784, "l2", M=16, ef_construction=100)
    index.add(X, threads=2)
    _, truth = FlatIndex.from_array(X).search(Q, k=10)
    _, I = index.search(Q, k=10, ef=48)
    assert recall(I, truth) >= 0.95
    assert index.check()
    # filters: 10% allowed walks the graph at ef=16, 0.5% is scanned exactly
    rng = np.random.default_rng(4)
    flat = FlatIndex.from_array(X)
    for fraction, ef in ((0.1, 16), (0.1, 48), (0.005, 48)):
        allowed = np.sort(rng.choice(len(X), int(len(X) * fraction), replace=False))
        _, want = flat.search(Q, k=10, filter=allowed)
        _, I = index.search(Q, k=10, ef=ef, filter=allowed)
        assert recall(I, want) >= 0.95, (fraction, ef)


def test_padding_and_small_indexes(rng):
    index = HNSWIndex(8)
    D, I = index.search(np.ones((2, 8), np.float32), k=3)  # empty: all padding, no error
    assert np.all(I == -1) and np.all(np.isinf(D))
    X = rng.normal(size=(4, 8)).astype(np.float32)
    index.add(X)
    D, I = index.search(X, k=10)
    assert np.all(I[:, 4:] == -1) and np.all(np.isinf(D[:, 4:]))
    assert sorted(I[0, :4].tolist()) == [0, 1, 2, 3] and I[0, 0] == 0
    index.ef = 2  # k > ef: the breadth becomes k
    assert np.all(index.search(X, k=4)[1] >= 0)
    assert index.search(X[0], k=1)[1].shape == (1, 1)  # a 1-D query is one row


# ---------------------------------------------------------------- remove / update


def test_delete_and_readd_cycles_keep_recall(rng):
    X, Q = split(clustered(4100, 24, rng), 100)
    index = HNSWIndex(24, M=12, ef_construction=80, seed=3)
    index.add(X, threads=2)
    mem = index.memory_usage
    for cycle in range(6):
        gone = rng.choice(4000, 600, replace=False)
        assert index.remove(gone) == 600
        assert index.remove(gone) == 0
        assert len(index) == 3400 and index.check()
        alive = np.setdiff1d(np.arange(4000), gone)
        _, I = index.search(Q, k=10, ef=64)
        assert not np.isin(I, gone).any()
        assert recall(I, exact(X, Q, "l2", 10, allowed=alive)) >= 0.95
        index.add(X[gone], ids=gone, threads=2)  # slots are reused: no growth
        assert len(index) == 4000 and index.check()
        assert index.memory_usage <= mem * 1.05
    _, I = index.search(Q, k=10, ef=64)
    assert recall(I, exact(X, Q, "l2", 10)) >= 0.95


def test_remove_everything_then_add(rng):
    X = rng.normal(size=(300, 8)).astype(np.float32)
    index = HNSWIndex(8)
    index.add(X)
    assert index.remove(np.arange(300)) == 300 and len(index) == 0 and index.check()
    assert np.all(index.search(X[:2], k=3)[1] == -1)
    index.add(X[:50])
    assert index.check() and np.array_equal(index.search(X[:50], k=1)[1][:, 0], np.arange(300, 350))


def test_update_replaces_vector_and_get(rng):
    X = rng.normal(size=(500, 16)).astype(np.float32)
    index = HNSWIndex(16, seed=1)
    index.add(X, ids=np.arange(500) * 2)
    np.testing.assert_array_equal(index.get([4, 10]), X[[2, 5]])
    np.testing.assert_array_equal(index.get(4), X[2])
    new = X[7] + 100
    index.add(new[None], ids=[4])
    assert len(index) == 500 and index.check()
    np.testing.assert_array_equal(index.get(4), new)
    assert index.search(new, k=1)[1][0, 0] == 4
    with pytest.raises(KeyError, match="3"):
        index.get([3])
    assert sorted(index.ids.tolist()) == list(range(0, 1000, 2))
    index.add(X[:2])  # default ids continue after the largest
    assert set(index.ids.tolist()) >= {999, 1000}


# ---------------------------------------------------------------- filters


@pytest.mark.parametrize("fraction", [0.005, 0.1, 0.5])
@pytest.mark.parametrize("as_mask", [False, True])
def test_filters_match_filtered_brute_force(fraction, as_mask, rng):
    X, Q = split(clustered(6050, 24, rng), 50)
    index = HNSWIndex(24, M=12, ef_construction=80)
    index.add(X, threads=2)
    allowed = np.sort(rng.choice(6000, int(6000 * fraction), replace=False))
    flt = np.isin(np.arange(6000), allowed) if as_mask else allowed
    D, I = index.search(Q, k=10, ef=64, filter=flt)
    assert np.all(np.isin(I[I >= 0], allowed))
    assert recall(I, exact(X, Q, "l2", 10, allowed=allowed)) >= 0.95


def test_filter_edge_cases(rng):
    X = rng.normal(size=(200, 8)).astype(np.float32)
    index = HNSWIndex(8)
    index.add(X)
    D, I = index.search(X[:3], k=5, filter=np.array([], np.int64))
    assert np.all(I == -1) and np.all(np.isinf(D))
    D, I = index.search(X[:3], k=5, filter=[7, 9, 10_000])  # unknown ids ignored
    assert set(I[0, :2].tolist()) == {7, 9} and np.all(I[:, 2:] == -1)
    with pytest.raises(ValueError, match="expected length >= 200"):  # a short mask is refused
        index.search(X[:3], k=5, filter=np.ones(3, bool))


@pytest.mark.parametrize("metric", ["l2", "cosine", "hamming"])
def test_filter_rule_bool_is_a_mask_integer_is_ids(metric, rng):
    X, Q = split(data_for(metric, 3040, rng), 40)
    ids = filter_ids(3000, rng)
    index = HNSWIndex(X.shape[1] * (8 if metric == "hamming" else 1), metric=metric, M=12, ef_construction=80)
    index.add(X, ids=ids, threads=2)
    index.ef = 96
    check_filter_rule(index, X, ids, Q, metric, exact=False)


@pytest.mark.parametrize("fraction", [0.005, 0.5])  # an exact scan, a filtered walk
def test_filters_after_removals_never_return_removed_ids(fraction, rng):
    X, Q = split(clustered(5050, 24, rng), 50)
    index = HNSWIndex(24, M=12, ef_construction=80, seed=2)
    index.add(X, threads=2)
    gone = rng.choice(5000, 1000, replace=False)
    assert index.remove(gone) == 1000
    allowed = np.sort(rng.choice(5000, int(5000 * fraction), replace=False))  # removed ones among them
    alive = np.setdiff1d(allowed, gone)
    for flt in (allowed, np.isin(np.arange(5000), allowed)):
        D, I = index.search(Q, k=10, ef=64, filter=flt)
        assert np.all(np.isin(I[I >= 0], alive))
        assert recall(I, exact(X, Q, "l2", 10, allowed=alive)) >= 0.95


# ---------------------------------------------------------------- persistence


@pytest.mark.parametrize("use_mmap", [False, True])
@pytest.mark.parametrize("metric,dtype", [("l2", "float32"), ("cosine", "float16"), ("ip", "int8"), ("hamming", None)])
def test_save_load_mmap_pickle_identical(metric, dtype, use_mmap, tmp_path, rng):
    X = data_for(metric, 800, rng)
    index = HNSWIndex(dim_for(metric), metric, M=8, ef_construction=40, seed=5, dtype=dtype)
    index.add(X, ids=np.arange(800) + 5)
    index.remove([5, 6, 7])
    index.ef = 33
    path = tmp_path / "h.isx"
    index.save(path)
    loaded = imgsearch.load(path, mmap=use_mmap)
    unpickled = pickle.loads(pickle.dumps(index))
    Q = X[:40]
    for other in (loaded, unpickled):
        assert isinstance(other, HNSWIndex) and other.check()
        assert (other.dim, other.metric, other.dtype, other.M, other.ef, len(other)) == (
            index.dim, index.metric, index.dtype, index.M, 33, 797)
        for a, b in zip(index.search(Q, k=7), other.search(Q, k=7)):
            np.testing.assert_array_equal(a, b)
    assert loaded.mapped
    before = path.read_bytes()
    loaded.add(X[:3], ids=[1, 2, 3])  # copy-on-write: the file is never written
    loaded.remove([100])
    assert not loaded.mapped and loaded.check() and len(loaded) == 799
    assert path.read_bytes() == before
    # the same adds give the same graph as on the original (rng state saved)
    index.add(X[:3], ids=[1, 2, 3])
    index.remove([100])
    for a, b in zip(index.search(Q, k=7), loaded.search(Q, k=7)):
        np.testing.assert_array_equal(a, b)


def small_saved(tmp_path):
    rng = np.random.default_rng(1)
    index = HNSWIndex(8, M=4, ef_construction=20)
    index.add(rng.normal(size=(150, 8)).astype(np.float32))
    path = tmp_path / "s.isx"
    index.save(path)
    return path.read_bytes()


def patch(raw, tag, edit):
    """Apply edit(bytearray) to a section, fix its CRC and the header CRC, so
    only the loader's graph validation can object."""
    raw = bytearray(raw)
    for i, (t, off, size, _) in enumerate(sections(bytes(raw))):
        if t == tag:
            body = bytearray(raw[off:off + size])
            edit(body)
            raw[off:off + size] = body
            struct.pack_into("<I", raw, HEADER + i * ENTRY + 24, crc32c(bytes(body)))
            return reseal(bytes(raw))
    raise KeyError(tag)


def node_bytes(raw):
    (t, off, size, _), = [s for s in sections(raw) if s[0] == "HNLV"]
    return [s for s in sections(raw) if s[0] == "HNG0"][0][2] // size


def hostile_edits(raw):
    nb = node_bytes(raw)
    def set_link(value):
        return lambda b: struct.pack_into("<I", b, 3 * nb + 4, value)
    return {
        "out-of-range link": ("HNG0", set_link(10_000)),
        "self link": ("HNG0", set_link(3)),
        "too many links": ("HNG0", lambda b: struct.pack_into("<I", b, 0, 9)),
        "duplicate link": ("HNG0", lambda b: b.__setitem__(slice(8, 12), bytes(b[4:8]))),
        "NaN vector": ("HNG0", lambda b: struct.pack_into("<f", b, nb - 4, float("nan"))),
        "level too high": ("HNLV", lambda b: b.__setitem__(0, 200)),
        "level without links": ("HNLV", lambda b: b.__setitem__(1, b[1] + 1)),
        "duplicate ids": ("IDS ", lambda b: b.__setitem__(slice(8, 16), bytes(b[0:8]))),
        "negative id": ("IDS ", lambda b: struct.pack_into("<q", b, 0, -7)),
    }


@pytest.mark.parametrize("case", ["out-of-range link", "self link", "too many links", "duplicate link", "NaN vector",
                                  "level too high", "level without links", "duplicate ids", "negative id"])
def test_hostile_graphs_are_format_errors(case, tmp_path):
    raw = small_saved(tmp_path)
    tag, edit = hostile_edits(raw)[case]
    bad = patch(raw, tag, edit)
    p = tmp_path / "bad.isx"
    p.write_bytes(bad)
    with pytest.raises(IndexFormatError):
        imgsearch.load(p)
    with pytest.raises(IndexFormatError):
        imgsearch._core._from_bytes(bad)


def test_corrupted_and_truncated_files_are_format_errors(tmp_path):
    raw = small_saved(tmp_path)
    p = tmp_path / "c.isx"
    r = np.random.default_rng(0)
    for pos in r.choice(len(raw), 30, replace=False):
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << int(r.integers(8))
        p.write_bytes(bytes(flipped))
        with pytest.raises(IndexFormatError):
            imgsearch.load(p)
    for cut in (10, 64, len(raw) // 2, len(raw) - 1):
        p.write_bytes(raw[:cut])
        with pytest.raises(IndexFormatError):
            imgsearch.load(p)


# ---------------------------------------------------------------- determinism, threads


def test_one_thread_and_seed_is_deterministic(tmp_path, rng):
    X, Q = split(clustered(1564, 16, rng), 64)
    a, b, c = (HNSWIndex(16, M=8, ef_construction=50, seed=s) for s in (7, 7, 8))
    for index in (a, b, c):
        index.add(X, threads=1)
    assert a.to_bytes() == b.to_bytes()
    assert a.to_bytes() != c.to_bytes()
    # search results do not depend on the number of search threads
    for x, y in zip(a.search(Q, k=5, threads=1), a.search(Q, k=5, threads=2)):
        np.testing.assert_array_equal(x, y)


def test_searches_during_adds_from_python_threads(rng):
    X = clustered(6000, 16, rng)
    Q = X[:20] + 0.01
    index = HNSWIndex(16, M=8, ef_construction=40)
    index.add(X[:500])
    errors, stop = [], threading.Event()
    added = [500]     # ids below this may be in the index (raised before each add starts)
    removed = set()   # ids whose removal has returned: no search that starts later may see them
    searches = [0]

    def searcher():
        while not stop.is_set():
            try:
                gone = set(removed)
                D, I = index.search(Q, k=5, threads=1)
                hi = added[0]
                # every search sees a whole index: k hits (never fewer than 400 live ids),
                # ids that were added, none removed before it began, each at its true distance
                assert np.all(I >= 0) and np.all(I < hi), (I.min(), I.max(), hi)
                assert not gone & set(I.ravel().tolist())
                true = ((X[I].astype(np.float64) - Q[:, None, :]) ** 2).sum(-1)
                np.testing.assert_allclose(D, true, rtol=1e-4, atol=1e-4)
                searches[0] += 1
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(500, 6000, 500):
        added[0] = i + 500
        index.add(X[i:i + 500], threads=2)
        if i % 1500 == 0:
            index.remove(np.arange(i - 100, i))
            removed.update(range(i - 100, i))
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert searches[0] > 0 and index.check() and len(index) == 6000 - 300


def test_concurrent_searches_match_a_serial_run(rng):
    X, Q = split(clustered(4100, 16, rng), 100)
    index = HNSWIndex(16, M=8, ef_construction=60)
    index.add(X, threads=2)
    want = index.search(Q, k=5, ef=40, threads=1)
    got, errors = [None] * 4, []

    def run(i):
        try:
            for _ in range(5):
                got[i] = index.search(Q, k=5, ef=40, threads=2)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    for D, I in got:
        np.testing.assert_array_equal(I, want[1])
        np.testing.assert_array_equal(D, want[0])


# ---------------------------------------------------------------- metrics, dtypes, errors


@pytest.mark.parametrize("metric", FLOAT_METRICS)
@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_compressed_storage_recall_and_memory(metric, dtype, rng):
    X, Q = split(clustered(3060, 32, rng), 60)
    full = HNSWIndex(32, metric, M=12, ef_construction=80)
    small = HNSWIndex(32, metric, M=12, ef_construction=80, dtype=dtype)
    full.add(X)
    small.add(X)
    assert small.dtype == dtype and small.check()
    truth = exact(X, Q, metric, 10)
    D, I = small.search(Q, k=10, ef=80)
    assert recall(I, truth) >= (0.9 if dtype == "int8" else 0.95)
    # distances approximate the true ones
    ref = np.take_along_axis(oracle_pairwise(Q, X, metric), I, 1)
    if dtype == "float16":
        assert np.abs(D - ref).max() <= 2e-3 * np.abs(ref).max()
    else:  # worst case of a rounding error <= step / 2 per component
        V = X / np.linalg.norm(X, axis=1, keepdims=True) if metric == "cosine" else X
        step = (V.max() - V.min()) / 254
        E = np.sqrt(32) * step / 2
        qn = np.linalg.norm(Q, axis=1, keepdims=True)
        bound = {"l2": 2 * np.sqrt(np.maximum(ref, 0)) * E + E * E, "ip": qn * E, "cosine": E + 0 * ref,
                 "l1": 32 * step / 2 + 0 * ref}[metric]
        assert np.all(np.abs(D - ref) <= bound * 1.01 + 1e-5)
    assert small.memory_usage < 0.8 * full.memory_usage
    got = small.get(np.arange(5))
    want = X[:5] / np.linalg.norm(X[:5], axis=1, keepdims=True) if metric == "cosine" else X[:5]
    np.testing.assert_allclose(got, want, atol=(0.02 if dtype == "int8" else 2e-3) * np.abs(want).max())


def test_errors_say_what_was_expected(rng):
    with pytest.raises(ValueError, match="dtype"):
        HNSWIndex(8, dtype="float64")
    with pytest.raises(ValueError, match="M"):
        HNSWIndex(8, M=1)
    with pytest.raises(ValueError, match="multiple of 8"):
        HNSWIndex(12, "hamming")
    index = HNSWIndex(8)
    with pytest.raises(ValueError, match="finite"):
        index.add(np.full((2, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="dim|columns|8"):
        index.add(np.ones((2, 7), np.float32))
    with pytest.raises(ValueError, match="unique"):
        index.add(np.ones((2, 8), np.float32), ids=[1, 1])
    with pytest.raises(ValueError, match="k"):
        index.search(np.ones((1, 8), np.float32), k=0)
    with pytest.raises(ValueError, match="ef"):
        index.search(np.ones((1, 8), np.float32), ef=0)
    with pytest.raises(ValueError, match="ef"):
        index.ef = 0
    with pytest.raises(ValueError, match="65504"):
        HNSWIndex(8, dtype="float16").add(np.full((1, 8), 1e6, np.float32))
    assert len(index) == 0
    assert "HNSWIndex(dim=8" in repr(index)


def test_parallel_build_leaves_no_node_unreachable():
    # Regression: a node being inserted overwrote its own link list, dropping
    # back-links that concurrent inserts had already put there; 2 to 18 of these
    # 1360 nodes were then found by no search (k = n, ef = n), on 2 threads.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1360, 1280)).astype(np.float32)
    for seed in range(3):
        h = imgsearch.HNSWIndex(X.shape[1], metric="cosine", M=16, ef_construction=200, seed=seed)
        h.add(X, threads=2)
        D, I = h.search(X[:50], k=len(X), ef=len(X))
        assert (I >= 0).sum(axis=1).min() == len(X)


# ---------------------------------------------------------------- re-ranking with float32 rows


@pytest.mark.parametrize("metric", FLOAT_METRICS)
@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_refine_reranks_with_exact_distances(metric, dtype, rng):
    X, Q = split(clustered(3064, 24, rng), 64)
    truth = exact(X, Q, metric, 10)
    plain = HNSWIndex(24, metric, dtype=dtype, seed=0)
    refined = HNSWIndex(24, metric, dtype=dtype, refine="float32", seed=0)
    full = HNSWIndex(24, metric, seed=0)
    for index in (plain, refined, full):
        index.add(X, threads=1)
    assert refined.refine == "float32" and plain.refine is None
    D, I = refined.search(Q, k=10, ef=48)
    # every distance is the exact float32 distance of the id it names
    ref = oracle_pairwise(Q, X, metric)
    got = np.take_along_axis(ref, I, 1)
    assert np.allclose(D, got, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(D, axis=1) >= 0)
    r_plain, r_ref, r_full = (recall(ix.search(Q, k=10, ef=48)[1], truth) for ix in (plain, refined, full))
    assert r_ref >= r_plain - 1e-9 and r_ref >= r_full - 0.02, (r_plain, r_ref, r_full)
    # get() returns the rows as added (unit length for cosine), not decoded codes
    want = X[:5] / np.linalg.norm(X[:5], axis=1, keepdims=True) if metric == "cosine" else X[:5]
    np.testing.assert_allclose(refined.get(np.arange(5)), want, rtol=1e-6, atol=1e-7)
    # the filtered exact scan (a tiny allowed set) uses the float32 rows too
    allowed = np.array([3, 70, 900])
    Df, If = refined.search(Q, k=2, filter=allowed)
    assert np.all(np.isin(If, allowed))
    assert np.allclose(Df, np.take_along_axis(ref, If, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_mmap", [False, True])
def test_refine_survives_save_load_mmap_pickle_and_later_adds(use_mmap, tmp_path, rng):
    X, Q = split(clustered(1064, 16, rng), 64)
    index = HNSWIndex(16, "l2", dtype="int8", refine="float32", seed=0)
    index.add(X[:800], threads=1)
    index.save(tmp_path / "r.isx")
    loaded = imgsearch.load(tmp_path / "r.isx", mmap=use_mmap)
    again = pickle.loads(pickle.dumps(index))
    assert loaded.refine == again.refine == "float32"
    want = index.search(Q, k=5)
    for other in (loaded, again):
        for a, b in zip(want, other.search(Q, k=5)):
            np.testing.assert_array_equal(a, b)
    # adding to a loaded (maybe mapped) index copies the rows first
    loaded.add(X[800:], ids=np.arange(800, len(X)))
    D, I = loaded.search(Q, k=5)
    assert np.allclose(D, np.take_along_axis(oracle_pairwise(Q, X, "l2"), I, 1), rtol=1e-5, atol=1e-5)
    assert loaded.memory_usage > HNSWIndex(16, dtype="int8").memory_usage + X.nbytes


def test_refine_arguments_and_hostile_refine_sections(tmp_path, rng):
    with pytest.raises(ValueError, match="float16 or int8"):
        HNSWIndex(8, refine="float32")
    with pytest.raises(ValueError, match="refine"):
        HNSWIndex(8, dtype="int8", refine="yes")
    index = HNSWIndex(8, dtype="int8", refine="float32")
    index.add(rng.normal(size=(50, 8)).astype(np.float32))
    raw = index.to_bytes()
    # a NaN in the float32 rows, and a refine flag whose rows are missing
    bad_nan = patch(raw, "HNRF", lambda b: struct.pack_into("<f", b, 12, float("nan")))
    with pytest.raises(IndexFormatError, match="not finite"):
        imgsearch._core._from_bytes(bad_nan)
    plain = HNSWIndex(8, dtype="int8")
    plain.add(rng.normal(size=(50, 8)).astype(np.float32))
    from test_format import set_param
    with pytest.raises(IndexFormatError, match="HNRF"):
        imgsearch._core._from_bytes(set_param(plain.to_bytes(), "refine", 1))
    with pytest.raises(IndexFormatError, match="HNRF"):
        imgsearch._core._from_bytes(set_param(raw, "refine", 0))
