"""IVFPQIndex against NumPy oracles: exact brute force (with refine and every list
probed), the ADC distances computed from the model's own centroids and codes,
recall on clustered data, and the dynamic, persistent and hostile-file paths."""
import pickle

import numpy as np
import pytest

import imgsearch
from imgsearch import FlatIndex, IndexFormatError, IVFPQIndex
from conftest import check_filter_rule, check_knn, filter_ids, oracle_pairwise

METRICS = ["l2", "ip", "cosine"]


def clustered(n, dim, rng, centres=64, spread=0.25):
    """Gaussian clusters around random centres: structure that a coarse
    quantizer can find, as real embeddings have."""
    c = rng.normal(size=(centres, dim))
    return (c[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, dim))).astype(np.float32)


def trained(metric="l2", nbits=8, refine=None, n=2000, dim=32, nlist=16, m=8, rng=None, ids=None):
    rng = rng if rng is not None else np.random.default_rng(0)
    X = clustered(n, dim, rng)
    index = IVFPQIndex(dim, metric, nlist=nlist, m=m, nbits=nbits, refine=refine, seed=1)
    index.train(X)
    index.add(X, ids=ids)
    return index, X


def reconstruct(index, ids):
    """c_list + decode(code), from the model's centroids and codes alone."""
    coarse, books = index._centroids()
    codes, lists = index._codes(ids)
    m, ksub, dsub = books.shape
    if index.nbits == 4:
        sub = np.stack([(codes[:, j // 2] >> (4 * (j % 2))) & 15 for j in range(m)], 1)
    else:
        sub = codes
    resid = np.concatenate([books[j][sub[:, j]] for j in range(m)], 1)
    return coarse[lists].astype(np.float64) + resid


def adc(index, Q, R):
    """The ADC distances of queries Q to reconstructions R, as the metric reports them."""
    Q = np.asarray(Q, np.float64)
    if index.metric == "cosine":
        Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    if index.metric == "l2":
        return ((Q[:, None, :] - R[None, :, :]) ** 2).sum(-1)
    return 1.0 - Q @ R.T


def recall(I, truth):
    k = truth.shape[1]
    return np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(I, truth)])


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("nbits", [8, 4])
def test_full_probe_with_refine_is_exact_brute_force(metric, nbits, rng):
    index, X = trained(metric, nbits, "f32", rng=rng)
    index.k_factor = 200  # k_factor * k >= n: every vector is re-ranked exactly
    Q = clustered(30, 32, rng)
    D, I = index.search(Q, k=10, nprobe=index.nlist)
    check_knn(D, I, X, np.arange(len(X)), Q, 10, metric)
    truth = np.argsort(oracle_pairwise(Q, X, metric), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(I, truth)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("nbits", [8, 4])
@pytest.mark.parametrize("precompute", [True, False])
def test_distances_without_refine_are_the_adc_oracle(metric, nbits, precompute, rng):
    index, X = trained(metric, nbits, rng=rng)
    if not precompute:
        index._precompute = False
    assert index._precompute == (precompute and metric == "l2")
    ids = np.arange(len(X))
    R = reconstruct(index, ids)
    np.testing.assert_allclose(index.get(ids), R, rtol=0, atol=1e-5)  # get is the reconstruction
    Q = clustered(25, 32, rng)
    ref = adc(index, Q, R)
    scale = (np.abs(Q.astype(np.float64)) ** 2).sum(1)[:, None] + (R ** 2).sum(1)[None, :]
    D, I = index.search(Q, k=10, nprobe=index.nlist)
    got_ref = np.take_along_axis(ref, I, 1)
    atol = 2e-5 * np.take_along_axis(scale, I, 1) + 1e-5
    assert np.all(np.abs(D - got_ref) <= atol), np.abs(D - got_ref).max()
    truth = np.argsort(ref, axis=1, kind="stable")[:, :10]
    if nbits == 8:  # the float tables rank every code by its ADC distance: the ADC top-k itself
        np.testing.assert_allclose(D, np.take_along_axis(ref, truth, 1), rtol=0, atol=float(atol.max()))
        assert recall(I, truth) >= 0.99  # equal up to near-ties in float32
    else:  # candidates by quantised tables, then ranked by the float ones
        assert recall(I, truth) >= 0.95
    assert np.all(np.diff(D, axis=1) >= -1e-6)


def test_odd_m_with_four_bits_pads_the_last_pair(rng):
    index, X = trained("l2", 4, n=1500, dim=24, m=3, rng=rng)
    ids = np.arange(len(X))
    Q = clustered(10, 24, rng)
    ref = adc(index, Q, reconstruct(index, ids))
    D, I = index.search(Q, k=5, nprobe=index.nlist)
    np.testing.assert_allclose(D, np.take_along_axis(ref, I, 1), rtol=1e-4, atol=1e-4)


def test_refine_f16_rows_are_the_rounded_vectors(rng):
    index, X = trained("cosine", 8, "f16", rng=rng)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_array_equal(index.get(np.arange(10)), unit[:10].astype(np.float16).astype(np.float32))
    index.k_factor = 200
    Q = clustered(10, 32, rng)
    D, I = index.search(Q, k=5, nprobe=index.nlist)
    half = unit.astype(np.float16).astype(np.float32)
    check_knn(D, I, half, np.arange(len(X)), Q, 5, "cosine")


# ---------------------------------------------------------------- recall


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("nbits,m", [(8, 8), (4, 16)])
def test_recall_at_partial_probe_on_clustered_data(metric, nbits, m, rng):
    n, dim = 6000, 32
    data = clustered(n + 100, dim, rng, centres=128, spread=0.8)  # queries from the same clusters
    X, Q = data[:n], data[n:]
    truth = np.argsort(oracle_pairwise(Q, X, metric), axis=1, kind="stable")[:, :10]
    plain = IVFPQIndex(dim, metric, nlist=64, m=m, nbits=nbits, seed=3)
    refined = IVFPQIndex(dim, metric, nlist=64, m=m, nbits=nbits, refine="f32", seed=3)
    for index in (plain, refined):
        index.train(X)
        index.add(X)
    r_plain = recall(plain.search(Q, 10, nprobe=8)[1], truth)
    r_refined = recall(refined.search(Q, 10, nprobe=8)[1], truth)
    r_one = recall(refined.search(Q, 10, nprobe=1)[1], truth)
    assert r_refined >= 0.9, r_refined
    assert r_plain >= 0.6, r_plain  # 0.65-0.75 here: ADC ranks alone
    assert r_one < r_refined  # more lists, more recall
    assert r_refined >= r_plain


# ---------------------------------------------------------------- dynamic


@pytest.mark.parametrize("nbits", [8, 4])
def test_remove_then_search_never_returns_removed_ids_and_add_reuses(nbits, rng):
    index, X = trained("l2", nbits, "f32", rng=rng)
    index.k_factor = 300
    gone = rng.choice(len(X), 700, replace=False)
    assert index.remove(np.concatenate([gone, [10 ** 9]])) == 700
    assert len(index) == index.ntotal == len(X) - 700
    assert index.remove(gone) == 0
    Q = X[gone[:20]] + 0.01
    D, I = index.search(Q, k=10, nprobe=index.nlist)
    assert not np.isin(I, gone).any()
    live = np.setdiff1d(np.arange(len(X)), gone)
    check_knn(D, I, X[live], live, Q, 10, "l2")
    with pytest.raises(KeyError):
        index.get(gone[:1])
    # added back under new ids
    new_ids = gone + 10_000
    index.add(X[gone], ids=new_ids)
    assert len(index) == len(X)
    D, I = index.search(Q, k=10, nprobe=index.nlist)
    all_ids = np.concatenate([live, new_ids])
    check_knn(D, I, np.concatenate([X[live], X[gone]]), all_ids, Q, 10, "l2")
    assert set(index.ids.tolist()) == set(all_ids.tolist())


def test_adding_an_existing_id_replaces_its_vector(rng):
    index, X = trained("l2", 8, "f32", rng=rng)
    v = X[5] + 3.0
    index.add(v[None], ids=[7])
    assert len(index) == len(X)
    np.testing.assert_array_equal(index.get(7), v)
    index.add(X[:2], ids=[5000, 5001])
    assert index.add(X[:1]) is None and index.ids.max() == 5002  # default ids continue after the largest


def test_padding_when_fewer_than_k(rng):
    X = clustered(600, 16, rng)
    index = IVFPQIndex(16, nlist=4, m=4, nbits=4)
    index.train(X)
    D, I = index.search(X[:2], k=3)  # trained, empty
    assert np.all(I == -1) and np.all(np.isinf(D))
    index.add(X[:5], ids=[3, 1, 4, 15, 9])
    D, I = index.search(X[:3], k=8, nprobe=4)
    assert D.shape == (3, 8) and D.dtype == np.float32 and I.dtype == np.int64
    assert np.all(I[:, 5:] == -1) and np.all(np.isinf(D[:, 5:]))
    assert all(set(row[:5].tolist()) == {1, 3, 4, 9, 15} for row in I)


@pytest.mark.parametrize("metric", METRICS)
def test_filter_rule(metric, rng):
    X = clustered(1500, 16, rng)
    ids = filter_ids(len(X), rng)
    index = IVFPQIndex(16, metric, nlist=8, m=4, refine="f32")
    index.train(X)
    index.add(X, ids=ids)
    index.nprobe = index.nlist
    index.k_factor = 1024  # every allowed vector re-ranked: the exact filtered answer
    check_filter_rule(index, X, ids, clustered(12, 16, rng), metric)


def test_filter_without_refine_only_returns_allowed_ids(rng):
    index, X = trained("ip", 4, rng=rng)
    allowed = rng.choice(len(X), 50, replace=False)
    D, I = index.search(X[:20], k=10, nprobe=index.nlist, filter=allowed)
    assert np.isin(I, allowed).all()
    R = reconstruct(index, allowed)
    ref = adc(index, X[:20], R)
    truth = allowed[np.argsort(ref, axis=1, kind="stable")[:, :10]]
    assert recall(I, truth) >= 0.95


def test_threads_give_identical_results(rng):
    for nbits in (8, 4):
        index, X = trained("l2", nbits, "f16", rng=rng)
        Q = clustered(200, 32, rng)
        a = index.search(Q, k=10, nprobe=5, threads=1)
        b = index.search(Q, k=10, nprobe=5, threads=2)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_training_is_deterministic_for_a_seed(rng):
    X = clustered(2000, 32, rng)
    a, b = (IVFPQIndex(32, nlist=16, m=8, seed=4) for _ in range(2))
    a.train(X, threads=1)
    b.train(X, threads=2)
    for u, v in zip(a._centroids(), b._centroids()):
        np.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------- memory


@pytest.mark.parametrize("nbits,m", [(8, 16), (4, 32)])
def test_lists_take_codes_plus_ids(nbits, m, tmp_path, rng):
    n = 20000
    index, X = trained("l2", nbits, n=n, dim=64, nlist=16, m=m, rng=rng)
    ideal = n * (m * nbits // 8 + 8)
    assert ideal <= index.list_bytes <= 1.1 * ideal
    assert index.code_size == m * nbits // 8
    index.add(X[:3000], ids=np.arange(3000) + n)  # geometric growth, then compacted by save
    index.save(tmp_path / "m.isx")
    loaded = IVFPQIndex.load(tmp_path / "m.isx", mmap=False)
    assert loaded.list_bytes <= 1.1 * (n + 3000) * (m * nbits // 8 + 8)
    assert loaded.memory_usage > loaded.list_bytes


# ---------------------------------------------------------------- persistence


@pytest.mark.parametrize("nbits,refine", [(8, None), (8, "f32"), (4, "f16"), (4, None)])
@pytest.mark.parametrize("use_mmap", [False, True])
def test_save_load_round_trip(nbits, refine, use_mmap, tmp_path, rng):
    index, X = trained("cosine", nbits, refine, rng=rng)
    index.remove(np.arange(0, 300, 3))
    index.nprobe, index.k_factor = 5, 3
    path = tmp_path / "i.isx"
    index.save(path)
    loaded = IVFPQIndex.load(path, mmap=use_mmap)
    assert isinstance(loaded, IVFPQIndex) and loaded.mapped == use_mmap
    assert isinstance(imgsearch.load(path), IVFPQIndex)
    assert (loaded.dim, loaded.metric, loaded.nlist, loaded.m, loaded.nbits, loaded.refine, loaded.nprobe,
            loaded.k_factor, len(loaded)) == (32, "cosine", 16, 8, nbits, refine, 5, 3, len(index))
    np.testing.assert_array_equal(np.sort(loaded.ids), np.sort(index.ids))
    Q = clustered(40, 32, rng)
    for a, b in zip(index.search(Q, k=7), loaded.search(Q, k=7)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.get(index.ids[:20]), index.get(index.ids[:20]))
    # still dynamic, and the (mapped) file is never written
    before = path.read_bytes()
    for ix in (index, loaded):
        ix.add(X[:50], ids=np.arange(50) + 10_000)
        ix.remove(np.arange(1, 300, 3))
    assert path.read_bytes() == before
    for a, b in zip(index.search(Q, k=7), loaded.search(Q, k=7)):
        np.testing.assert_array_equal(a, b)
    clone = pickle.loads(pickle.dumps(loaded))
    for a, b in zip(clone.search(Q, k=7), loaded.search(Q, k=7)):
        np.testing.assert_array_equal(a, b)
    loaded.add(X[:1])  # next_id survives
    assert loaded.ids.max() == 10_050


def test_untrained_index_round_trips_and_trains_after(tmp_path, rng):
    index = IVFPQIndex(16, "ip", nlist=4, m=2, nbits=4)
    clone = pickle.loads(pickle.dumps(index))
    assert not clone.is_trained and len(clone) == 0
    X = clustered(300, 16, rng)
    clone.train(X)
    clone.add(X)
    assert clone.is_trained and len(clone) == 300


def test_load_refuses_other_kinds(tmp_path):
    path = tmp_path / "f.isx"
    FlatIndex(4).save(path)
    with pytest.raises(IndexFormatError, match="IVF-PQ"):
        IVFPQIndex.load(path)


# ---------------------------------------------------------------- hostile files
# (the header and section table fuzz for every kind is in test_format.py)

from test_format import crc32c, reseal, sections, set_param  # noqa: E402


def refine_file(rng=None):
    index, _ = trained("l2", 4, "f32", n=600, dim=16, nlist=4, m=4, rng=rng)
    index.remove([1, 2, 3])
    return index.to_bytes()


def test_truncations_and_bit_flips_are_format_errors(rng):
    raw = refine_file(rng)
    cuts = {0, 63, 64, len(raw) - 1}
    for tag, off, size, crc in sections(raw):
        cuts |= {off - 1, off, off + size - 1, off + size}
    for cut in sorted(c for c in cuts if 0 <= c < len(raw)):
        with pytest.raises(IndexFormatError):
            imgsearch._core._from_bytes(raw[:cut])
    for pos in rng.integers(0, len(raw), 300):
        bad = bytearray(raw)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(IndexFormatError):
            imgsearch._core._from_bytes(bytes(bad))


def rewrite_section(raw, tag, edit):
    """The file with section `tag`'s bytes changed by edit(bytearray) (same size), CRCs fixed."""
    raw = bytearray(raw)
    for i, (t, off, size, _) in enumerate(sections(raw)):
        if t == tag:
            body = bytearray(raw[off:off + size])
            edit(body)
            raw[off:off + size] = body
            import struct
            struct.pack_into("<I", raw, 64 + i * 32 + 24, crc32c(bytes(body)))
            return reseal(bytes(raw))
    raise KeyError(tag)


def test_semantically_bad_contents_are_refused(rng):
    import struct
    raw = refine_file(rng)
    bad = {
        "duplicate id": rewrite_section(raw, "IDS ", lambda b: b.__setitem__(slice(8, 16), b[0:8])),
        "negative id": rewrite_section(raw, "IDS ", lambda b: struct.pack_into("<q", b, 0, -5)),
        "list sizes over count": rewrite_section(raw, "IVLS", lambda b: struct.pack_into("<Q", b, 0, 1 << 40)),
        "NaN centroid": rewrite_section(raw, "IVCQ", lambda b: struct.pack_into("<f", b, 4, float("nan"))),
        "NaN codebook": rewrite_section(raw, "IVPQ", lambda b: struct.pack_into("<f", b, 8, float("inf"))),
        "NaN refine row": rewrite_section(raw, "IVRF", lambda b: struct.pack_into("<f", b, 0, float("nan"))),
        "half a refine row": rewrite_section(raw, "IVRF", lambda b: struct.pack_into("<f", b, len(b) - 4, float("inf"))),
    }
    for name, data in bad.items():
        with pytest.raises(IndexFormatError):
            imgsearch._core._from_bytes(data)
    for key, value in (("nlist", 1 << 21), ("nlist", 3), ("m", 3), ("m", 512), ("nbits", 5), ("nbits", 3),
                       ("refine", 0), ("refine", 2), ("trained", 0),
                       ("nprobe", 5), ("k_factor", 0)):
        with pytest.raises(IndexFormatError):
            imgsearch._core._from_bytes(set_param(raw, key, value))


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(rng):
    X = clustered(500, 16, rng)
    with pytest.raises(ValueError, match="multiple of m"):
        IVFPQIndex(16, m=5)
    with pytest.raises(ValueError, match="nbits 4 or 8"):
        IVFPQIndex(16, m=4, nbits=5)
    with pytest.raises(ValueError, match="l2, ip and cosine"):
        IVFPQIndex(16, "l1", m=4)
    with pytest.raises(ValueError, match="refine"):
        IVFPQIndex(16, m=4, refine="f64")
    index = IVFPQIndex(16, nlist=8, m=4)
    assert IVFPQIndex(16).m == 2 and IVFPQIndex(784).m == 98  # the default: sub-vectors of 8
    with pytest.raises(ValueError, match="call train"):
        index.add(X)
    with pytest.raises(ValueError, match="call train"):
        index.search(X[:2], k=3)
    with pytest.raises(ValueError, match="expected at least 256 training vectors.*found 100"):
        index.train(X[:100])
    with pytest.raises(ValueError, match="expected at least 600 training vectors.*found 500"):
        IVFPQIndex(16, nlist=600, m=4, nbits=4).train(X)
    with pytest.raises(ValueError, match="16"):
        index.train(X[:, :8])
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN at row 3"):
        index.train(bad)
    index.train(X)
    with pytest.raises(ValueError, match="16"):
        index.add(X[:, :8])
    with pytest.raises(ValueError, match="16"):
        index.search(X[:, :8])
    with pytest.raises(ValueError, match="NaN at row 3"):
        index.add(bad)
    with pytest.raises(ValueError, match="unique within one call"):
        index.add(X[:2], ids=[4, 4])
    with pytest.raises(ValueError, match=">= 0"):
        index.add(X[:1], ids=[-1])
    assert len(index) == 0  # nothing half-added
    index.add(X)
    with pytest.raises(ValueError, match="empty index"):
        index.train(X)
    with pytest.raises(ValueError, match="k"):
        index.search(X[:1], k=0)
    with pytest.raises(ValueError, match="nprobe"):
        index.search(X[:1], k=1, nprobe=9)
    with pytest.raises(ValueError, match="nprobe"):
        index.nprobe = 0
    with pytest.raises(ValueError, match="k_factor"):
        index.k_factor = 0
    with pytest.raises(TypeError):
        index.search(X[:1], k=1.5)
    assert "IVFPQIndex(dim=16" in repr(index)
