"""ImageSearch(index="ivfpq"): exact while small, trained at train_at, persisted in
both states; the parameters chosen from the collection size (imgsearch/ivf.py).
Oracle: NumPy brute force."""
import numpy as np
import pytest

import imgsearch as isx
from imgsearch.ivf import AutoIVFPQ, choose_params

DIM = 128  # the colour histogram's dimension: the engine's extractor


def blobs(n, seed=0, centres=20):
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((centres, DIM)).astype(np.float32) * 3
    return (C[rng.integers(0, centres, n)] + rng.standard_normal((n, DIM)).astype(np.float32)).astype(np.float32)


def brute(X, ids, Q, k):
    d = ((Q[:, None, :].astype(np.float64) - X[None, :, :]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(d, order, 1)


def engine(**params):
    return isx.ImageSearch("colorhist", index="ivfpq", **params)


def test_exact_until_trained_then_compressed():
    X = blobs(600)
    # k_factor x k = every vector re-ranked: exactness does not hang on the PQ ranking
    e = engine(train_at=500, nlist=8, refine="f32", k_factor=120)
    e.add_vectors(X[:300])
    assert not e.index.is_trained and isinstance(e.index.index, isx.FlatIndex)
    Q = blobs(20, seed=5)
    D, I = e.search_vectors(Q, k=5)
    gt_i, gt_d = brute(X[:300], np.arange(300), Q, 5)
    np.testing.assert_array_equal(I, gt_i)
    np.testing.assert_allclose(D, gt_d, rtol=1e-4, atol=1e-3)
    e.add_vectors(X[300:])  # reaches train_at: trains at the end of this add
    assert e.index.is_trained and isinstance(e.index.index, isx.IVFPQIndex)
    assert len(e) == 600 and len(e.index.index) == 600
    # every list probed + float32 re-ranking of all candidates: exact again
    D, I = e.search_vectors(Q, k=5, nprobe=8)
    gt_i, gt_d = brute(X, np.arange(600), Q, 5)
    np.testing.assert_array_equal(I, gt_i)
    np.testing.assert_allclose(D, gt_d, rtol=1e-4, atol=1e-3)


def test_chosen_parameters_and_recall():
    X = blobs(3000, seed=1)
    e = engine(train_at=3000)
    e.add_vectors(X)
    ix = e.index.index
    assert isinstance(ix, isx.IVFPQIndex)
    # 4 sqrt(3000) = 219 -> 256 lists, but 3000 / 39 = 76 points bound it: 64
    assert ix.nlist == 64 and ix.nbits == 4 and ix.m == 32 and ix.refine == "f16"
    assert DIM % ix.m == 0 and ix.nprobe == 8
    Q = blobs(50, seed=9)
    _, I = e.search_vectors(Q, k=10)
    gt_i, _ = brute(X, np.arange(3000), Q, 10)
    rec = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I.tolist(), gt_i.tolist())])
    assert rec >= 0.8, rec


@pytest.mark.parametrize("n,dim,nlist,m", [(1_000_000, 1280, 4096, 320), (10_000, 1280, 256, 320),
                                           (100_000, 784, 1024, 196), (20, 8, 1, 2), (500, 30, 8, 6)])
def test_choose_params(n, dim, nlist, m):
    p = choose_params(n, dim, {})
    assert (p["nlist"], p["m"]) == (nlist, m)
    assert dim % p["m"] == 0 and p["nbits"] == 4 and p["refine"] == "f16"
    assert choose_params(n, dim, {"nlist": 7, "m": 4, "nbits": 8, "refine": None})["nlist"] == 7


@pytest.mark.parametrize("trained", [False, True])
def test_save_load_both_states(tmp_path, trained):
    X = blobs(400, seed=2)
    e = engine(train_at=400 if trained else 10_000, nlist=8)
    e.add_vectors(X, paths=[f"/x/{i}.jpg" for i in range(400)])
    assert e.index.is_trained == trained
    Q = blobs(10, seed=3)
    before = e.search_vectors(Q, k=7)
    path = tmp_path / "e.isx"
    e.save(path)
    for mmap in (False, True):
        f = isx.ImageSearch.load(path, mmap=mmap)
        assert isinstance(f.index, AutoIVFPQ) and f.index.is_trained == trained and f.index_kind == "ivfpq"
        after = f.search_vectors(Q, k=7)
        np.testing.assert_array_equal(before.ids, after.ids)
        np.testing.assert_allclose(before.distances, after.distances, rtol=1e-5, atol=1e-5)
    # an untrained engine, loaded, still trains when it reaches train_at
    f = isx.ImageSearch.load(path)
    f.index.train_at = 600
    f.add_vectors(blobs(200, seed=4))
    assert f.index.is_trained and len(f) == 600


def test_remove_and_filter():
    X = blobs(500, seed=6)
    e = engine(train_at=500, nlist=8, refine="f32")
    e.add_vectors(X)
    assert e.remove(list(range(0, 500, 2))) == 250
    D, I = e.search_vectors(X[:40], k=10, nprobe=8)
    assert (I % 2 == 1).all()
    mask = np.zeros(500, bool)
    mask[[1, 3, 5]] = True
    _, I = e.search_vectors(X[:5], k=4, filter=mask, nprobe=8)
    assert set(I[I >= 0].tolist()) <= {1, 3, 5} and (I[:, 3] == -1).all()  # padded past the 3 allowed


def test_explicit_train_and_errors():
    e = engine(nlist=64)
    e.add_vectors(blobs(30))
    with pytest.raises(ValueError, match="needs at least 64 vectors, found 30"):
        e.index.train()
    e.index.params["nlist"] = 4
    e.index.train()
    assert e.index.is_trained and len(e) == 30
    with pytest.raises(TypeError, match="unknown parameter"):
        engine(nlsit=4)
    with pytest.raises(ValueError, match="train_at"):
        engine(train_at=0)
    with pytest.raises(ValueError, match="refine"):
        engine(refine="f64")
    with pytest.raises(ValueError, match="supports the l2, ip and cosine"):
        isx.ImageSearch("phash", index="ivfpq")


def test_auto_postprocessing_keeps_no_float_rows_beside_the_compressed_index():
    class Recommending(isx.features.ColorHistogram):
        engine_defaults = {"whitening": {"dim_out": 16, "power": 0.0}, "dba": 5, "expand": 3}

    flat = isx.ImageSearch(Recommending(), index="flat")
    assert flat.whitening is not None and flat.dba == 5 and flat.expand == 3
    small = isx.ImageSearch(Recommending(), index="ivfpq")
    assert small.whitening is None and small.dba == 0 and small.expand == 3
    # asked for by name, they are honoured
    asked = isx.ImageSearch(Recommending(), index="ivfpq", dba=2, whitening=16)
    assert asked.dba == 2 and asked.whitening is not None and asked.whitening.dim_out == 16
    X = blobs(300, seed=8)
    asked.add_vectors(X)
    assert len(asked) == 300 and asked.search_vectors(X[:2], k=3).ids.shape == (2, 3)
