"""Retrieval-quality options against independent NumPy oracles: GeM and multi-scale
pooling, PCA-whitening, alpha-QE and alpha-DBA, and the engine that combines them."""
import math

import numpy as np
import pytest

import imgsearch
from imgsearch import ImageSearch, PCAWhitening, rerank


def unit_rows(rng, n, d):
    X = rng.standard_normal((n, d)) * np.geomspace(4.0, 0.1, d)  # anisotropic, as CNN features are
    X += 0.5
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def np_normalise(A):
    A = np.asarray(A, np.float64)
    return A / np.linalg.norm(A, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------
# GeM and multi-scale pooling
# ----------------------------------------------------------------------------

def np_gem(fm, p):
    return (np.clip(fm, 1e-6, None).astype(np.float64) ** p).mean(axis=(2, 3)) ** (1.0 / p)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 4.5, 40.0])
def test_gem_equals_numpy_on_a_hand_made_feature_map(p):
    torch = pytest.importorskip("torch")
    from imgsearch.extractors import TorchExtractor
    rng = np.random.default_rng(1)
    fm = rng.random((1, 6, 3, 4)).astype(np.float32) * 5
    fm[0, 0] = 0.0            # a dead channel: clamped to 1e-6, not NaN
    fm[0, 1, 0, 0] = 900.0    # a large activation: 900 ** 40 overflows float32 unless GeM rescales
    fixed = torch.from_numpy(fm)

    class FixedMap(torch.nn.Module):
        def forward(self, x):
            return fixed.expand(x.shape[0], -1, -1, -1)

    ex = TorchExtractor(FixedMap(), size=8, resize=8, pooling="gem", gem_p=p, normalize=False, channels_last=False)
    raw = ex._forward(np.zeros((2, 3, 8, 8), np.float32))
    np.testing.assert_allclose(raw, np.repeat(np_gem(fm, p), 2, axis=0), rtol=2e-5)
    unit = TorchExtractor(FixedMap(), size=8, resize=8, pooling="gem", gem_p=p, channels_last=False)
    np.testing.assert_allclose(unit._forward(np.zeros((1, 3, 8, 8), np.float32)), np_normalise(np_gem(fm, p)),
                               rtol=2e-5, atol=1e-7)
    assert ex.config()["gem_p"] == p and "gem_p" in repr(ex)


def small_cnn(torch, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU())


@pytest.mark.parametrize("pooling", ["avg", "gem"])
def test_multi_scale_equals_a_manual_computation(pooling):
    torch = pytest.importorskip("torch")
    from imgsearch.extractors import TorchExtractor
    model = small_cnn(torch)
    scales = (1.0, 1 / math.sqrt(2), 1.5)
    ex = TorchExtractor(model, size=32, resize=None, pooling=pooling, gem_p=2.5, scales=scales, channels_last=False)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    got = ex._forward(x)
    total = 0
    for s in scales:  # resize the preprocessed batch, run, pool, normalise, sum; normalise
        side = round(32 * s)
        xs = torch.from_numpy(x)
        if s != 1.0:
            xs = torch.nn.functional.interpolate(xs, size=(side, side), mode="bilinear", align_corners=False,
                                                 antialias=s < 1)
        with torch.no_grad():
            fm = model(xs).numpy()
        pooled = fm.mean(axis=(2, 3)) if pooling == "avg" else np_gem(fm, 2.5)
        total = total + np_normalise(pooled)
    np.testing.assert_allclose(got, np_normalise(total), rtol=1e-4, atol=1e-6)
    # one scale is the single pass, and the option is kept in the config
    one = TorchExtractor(model, size=32, resize=None, pooling=pooling, gem_p=2.5, channels_last=False)
    assert one.config()["scales"] == [1.0] and ex.config()["scales"] == list(scales)
    assert not np.allclose(one._forward(x), got)


def test_pooling_options_survive_config_and_old_configs_mean_the_defaults(tmp_path):
    torch = pytest.importorskip("torch")
    from imgsearch import extractors
    from imgsearch.extractors import TorchExtractor
    path = str(tmp_path / "m.ts.pt")
    torch.jit.script(small_cnn(torch, 3)).save(path)
    ex = TorchExtractor.from_torchscript(path, size=32, resize=32, mean=0.5, std=0.5, pooling="gem", gem_p=4.0,
                                         scales=(1.0, 0.75))
    again = extractors.from_config(ex.config())
    assert (again.pooling, again.gem_p, again.scales) == ("gem", 4.0, (1.0, 0.75))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(again._forward(x), ex._forward(x), rtol=1e-5, atol=1e-6)
    old = {k: v for k, v in ex.config().items() if k not in ("gem_p", "scales")}  # saved before they existed
    old_ex = extractors.from_config(old)
    assert (old_ex.gem_p, old_ex.scales) == (3.0, (1.0,))
    for bad in ({"gem_p": 0.5}, {"gem_p": "3"}, {"gem_p": True}, {"scales": ()}, {"scales": (1.0, -0.5)},
                {"scales": "big"}):
        with pytest.raises(ValueError, match="gem_p|scales"):
            TorchExtractor(small_cnn(torch), size=16, pooling="gem", **bad)


# ----------------------------------------------------------------------------
# PCAWhitening
# ----------------------------------------------------------------------------

def test_whitening_matches_numpy_svd():
    rng = np.random.default_rng(0)
    X = unit_rows(rng, 400, 24).astype(np.float64)
    w = PCAWhitening(eps=0.0, normalize=False).fit(X)
    mu = X.mean(0)
    U, S, Vt = np.linalg.svd(X - mu, full_matrices=False)
    lam = S ** 2 / len(X)
    np.testing.assert_allclose(w.mean_, mu, atol=1e-12)
    np.testing.assert_allclose(w.eigenvalues_, lam, rtol=1e-8, atol=1e-14)
    # the same axes up to sign, orthonormal
    np.testing.assert_allclose(np.abs((w.components_ * Vt).sum(1)), 1.0, atol=1e-6)
    np.testing.assert_allclose(w.components_ @ w.components_.T, np.eye(24), atol=1e-10)
    # whitened training vectors: zero mean, identity covariance
    Y = w.transform(X).astype(np.float64)
    np.testing.assert_allclose(Y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(Y.T @ Y / len(Y), np.eye(24), atol=2e-3)
    # oracle transform: (x - mu) V diag(lam^-1/2)
    np.testing.assert_allclose(np.abs(Y), np.abs((X - mu) @ Vt.T / np.sqrt(lam)), rtol=1e-3, atol=1e-3)


def test_whitening_dim_out_power_shrinkage_and_normalisation():
    rng = np.random.default_rng(1)
    X = unit_rows(rng, 300, 16)
    full = PCAWhitening(eps=0.0, normalize=False).fit(X)
    cut = PCAWhitening(dim_out=5, eps=0.0, normalize=False).fit(X)
    assert cut.dim == 5 and cut.transform(X).shape == (300, 5)
    np.testing.assert_allclose(cut.transform(X), full.transform(X)[:, :5], rtol=1e-4, atol=1e-5)
    # power 0: a rotation (distances to the mean kept); normalised output: unit rows
    rot = PCAWhitening(power=0.0, eps=0.0, normalize=False).fit(X)
    np.testing.assert_allclose(np.linalg.norm(rot.transform(X), axis=1),
                               np.linalg.norm(X - X.mean(0), axis=1), rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(PCAWhitening(dim_out=5).fit(X).transform(X), axis=1), 1, rtol=1e-5)
    # shrinkage: eigenvalues pulled towards their mean, then whitened with the power given
    sh = PCAWhitening(shrinkage=0.25, power=0.25, eps=0.0, normalize=False).fit(X)
    lam = full.eigenvalues_
    np.testing.assert_allclose(sh.eigenvalues_, 0.75 * lam + 0.25 * lam.mean(), rtol=1e-9)
    var = (sh.transform(X).astype(np.float64) ** 2).mean(0)
    np.testing.assert_allclose(var, lam / np.sqrt(sh.eigenvalues_), rtol=2e-3)


def test_whitening_keeps_only_the_axes_the_data_span_and_refuses_bad_input():
    rng = np.random.default_rng(2)
    few = unit_rows(rng, 70, 100)           # 70 vectors span at most 69 axes after centring
    w = PCAWhitening().fit(few)
    assert w.dim == 69
    with pytest.raises(ValueError, match=r"dim_out=80: expected at most .* = 69"):
        PCAWhitening(dim_out=80, min_samples=2).fit(few)
    with pytest.raises(ValueError, match="at least min_samples=128"):
        PCAWhitening(dim_out=64).fit(few)
    with pytest.raises(ValueError, match="not fitted"):
        PCAWhitening().transform(few)
    with pytest.raises(ValueError, match="dimension 100"):
        w.transform(few[:, :50])
    bad = few.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        PCAWhitening().fit(bad)
    for kwargs in ({"dim_out": 0}, {"dim_out": 2.5}, {"power": 2}, {"shrinkage": -1}, {"eps": "x"},
                   {"max_samples": 1}, {"min_samples": True}):
        with pytest.raises(ValueError):
            PCAWhitening(**kwargs)


def test_whitening_save_load_round_trip_and_sampling(tmp_path):
    rng = np.random.default_rng(3)
    X = unit_rows(rng, 500, 12)
    w = PCAWhitening(dim_out=6, power=0.4, shrinkage=0.1, max_samples=300, seed=7).fit(X)
    assert w.n_samples_ == 300  # a seeded sample
    again = PCAWhitening(dim_out=6, power=0.4, shrinkage=0.1, max_samples=300, seed=7).fit(X)
    np.testing.assert_array_equal(w.transform(X), again.transform(X))
    path = tmp_path / "w.npz"
    w.save(path)
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        assert all(z[k].dtype != object for k in z.files)
    back = PCAWhitening.load(path)
    assert back.params() == w.params()
    np.testing.assert_array_equal(back.transform(X), w.transform(X))
    assert not PCAWhitening.from_state(PCAWhitening(dim_out=3).state()).fitted
    state = w.state()
    state["components"] = state["components"][:, :5]
    with pytest.raises(ValueError, match="inconsistent"):
        PCAWhitening.from_state(state)
    with pytest.raises(ValueError, match="not a PCAWhitening state"):
        PCAWhitening.from_state({"mean": X[0]})


# ----------------------------------------------------------------------------
# alpha-QE and alpha-DBA against brute force
# ----------------------------------------------------------------------------

def brute_neighbours(X, Q, n, own=None):
    S = np.asarray(Q, np.float64) @ np.asarray(X, np.float64).T
    if own is not None:
        S[np.arange(len(Q)), own] = -np.inf
    order = np.argsort(-S, axis=1, kind="stable")[:, :n]
    return order, np.take_along_axis(S, order, 1)


def brute_weighted(X, base, order, sims, alpha):
    return np_normalise(np.asarray(base, np.float64) +
                        (np.maximum(sims, 0)[..., None] ** alpha * np.asarray(X, np.float64)[order]).sum(1))


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("alpha", [0.0, 3.0])
def test_query_expansion_and_dba_equal_brute_force(metric, alpha):
    rng = np.random.default_rng(4)
    X = unit_rows(rng, 300, 16)
    Q = unit_rows(rng, 7, 16)
    index = imgsearch.FlatIndex(16, metric=metric)
    index.add(X)
    order, sims = brute_neighbours(X, Q, 5)
    np.testing.assert_allclose(rerank.expand_queries(index, Q, 5, alpha), brute_weighted(X, Q, order, sims, alpha),
                               rtol=1e-4, atol=1e-5)
    # the query's own entry left out of its neighbours
    own = np.array([3, -1, 10, 11, 12, 13, 14])
    Qo = X[np.where(own >= 0, own, 0)].copy()
    Qo[1] = Q[1]
    order, sims = brute_neighbours(X, Qo, 4, own=np.where(own >= 0, own, 0))
    order[1], sims[1] = (a[0] for a in brute_neighbours(X, Qo[1:2], 4))
    np.testing.assert_allclose(rerank.expand_queries(index, Qo, 4, alpha, own=own),
                               brute_weighted(X, Qo, order, sims, alpha), rtol=1e-4, atol=1e-5)
    ids, V = rerank.augment_database(index, 6, alpha)
    order, sims = brute_neighbours(X, X[ids], 6, own=ids)
    np.testing.assert_allclose(V, brute_weighted(X, X[ids], order, sims, alpha), rtol=1e-4, atol=1e-5)


def test_rerank_refuses_what_it_cannot_weigh():
    rng = np.random.default_rng(5)
    X = unit_rows(rng, 20, 8)
    l1 = imgsearch.FlatIndex(8, metric="l1")
    l1.add(X)
    with pytest.raises(ValueError, match="cosine, ip or l2"):
        rerank.expand_queries(l1, X[:2], 3)
    cos = imgsearch.FlatIndex(8, metric="cosine")
    cos.add(X)
    with pytest.raises(ValueError, match="Expected n > 0"):
        rerank.expand_queries(cos, X[:2], 0)
    with pytest.raises(ValueError, match="alpha"):
        rerank.augment_database(cos, 2, alpha=-1)
    # fewer vectors than neighbours asked for: padding weighs nothing
    small = imgsearch.FlatIndex(8, metric="cosine")
    small.add(X[:3])
    ids, V = rerank.augment_database(small, 10, alpha=0.0)
    np.testing.assert_allclose(V, np.repeat(np_normalise(X[:3].sum(0))[None], 3, 0), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# The engine: whitening, DBA and QE through ImageSearch
# ----------------------------------------------------------------------------
# colorhist vectors are square-rooted L1 histograms: unit vectors compared by l2,
# so the engine's options apply to them; add_vectors gives them directly.

def engine_with(X, **options):
    eng = ImageSearch(extractor="colorhist", index="flat", **options)
    eng.add_vectors(X, paths=[f"/virtual/{i}.png" for i in range(len(X))])
    return eng


def brute_search(V, Q, k, own=None):
    order, sims = brute_neighbours(V, Q, k, own)
    return order


def test_whitening_is_the_identity_below_min_samples_then_fitted_on_the_collection():
    rng = np.random.default_rng(6)
    X = unit_rows(rng, 400, 128)
    eng = ImageSearch(extractor="colorhist", index="flat", whitening=PCAWhitening(dim_out=32, min_samples=100))
    plain = ImageSearch(extractor="colorhist", index="flat")
    for e in (eng, plain):
        e.add_vectors(X[:60], paths=[f"/v/{i}.png" for i in range(60)])
    assert not eng.whitening.fitted and eng.index.dim == 128
    np.testing.assert_array_equal(eng.search_vectors(X[:5], k=4).ids, plain.search_vectors(X[:5], k=4).ids)
    assert "identity until 100" in repr(eng)
    eng.add_vectors(X[60:150], paths=[f"/v/{i}.png" for i in range(60, 150)])  # 150 >= 100: fitted now
    assert eng.whitening.fitted and eng.index.dim == 32 and eng._fitted_at == 150
    oracle = PCAWhitening(dim_out=32, min_samples=100).fit(X[:150])
    W = oracle.transform(X[:150])
    res = eng.search_vectors(X[150:160], k=5)
    np.testing.assert_array_equal(res.ids, brute_search(W, oracle.transform(X[150:160]), 5))
    # a path in the engine queries with its vector whitened, itself left out
    res = eng.search([f"/v/{i}.png" for i in range(4)], k=3)
    np.testing.assert_array_equal(res.ids, brute_search(W, W[:4], 3, own=np.arange(4)))
    np.testing.assert_array_equal(eng.vectors(["/v/2.png", 7]), X[[2, 7]])
    # vectors added later are whitened with the current fit; the fit is redone when the collection doubles
    eng.add_vectors(X[150:290], paths=[f"/v/{i}.png" for i in range(150, 290)])
    assert eng._fitted_at == 150
    np.testing.assert_allclose(eng.index.get(np.array([200])), oracle.transform(X[200:201]), rtol=1e-5, atol=1e-6)
    eng.add_vectors(X[290:300], paths=[f"/v/{i}.png" for i in range(290, 300)])
    assert eng._fitted_at == 300
    eng.remove(list(range(290, 300)))
    eng.fit_whitening()
    refit = PCAWhitening(dim_out=32, min_samples=100).fit(X[:290])
    np.testing.assert_allclose(eng.index.get(np.arange(290)), refit.transform(X[:290]), rtol=1e-4, atol=1e-5)


def test_engine_dba_and_qe_equal_brute_force_over_the_whitened_vectors():
    rng = np.random.default_rng(7)
    X = unit_rows(rng, 250, 128)
    eng = engine_with(X, whitening=PCAWhitening(dim_out=24), dba=4, expand=3, alpha=2.0)
    W = PCAWhitening(dim_out=24).fit(X).transform(X)
    order, sims = brute_neighbours(W, W, 4, own=np.arange(250))
    D = brute_weighted(W, W, order, sims, 2.0)
    np.testing.assert_allclose(eng.index.get(np.arange(250)), D, rtol=1e-4, atol=1e-5)
    # search: the query (whitened, not augmented), expanded over the augmented database, itself left out
    own = np.arange(6)
    order, sims = brute_neighbours(D, W[own], 3, own=own)
    Qx = brute_weighted(D, W[own], order, sims, 2.0)
    res = eng.search([f"/virtual/{i}.png" for i in own], k=5)
    np.testing.assert_array_equal(res.ids, brute_search(D, Qx, 5, own=own))
    plain = eng.search([f"/virtual/{i}.png" for i in own], k=5, expand=0)
    np.testing.assert_array_equal(plain.ids, brute_search(D, W[own], 5, own=own))
    # evaluate goes through the same queries
    labels = {f"/virtual/{i}.png": i % 5 for i in range(250)}
    assert eng.evaluate(labels)["mAP"] != eng.evaluate(labels, expand=0)["mAP"]
    # vectors added between full passes: augmented over the index as it is (old vectors augmented already)
    extra = unit_rows(rng, 20, 128)
    eng.add_vectors(extra, paths=[f"/virtual/x{i}.png" for i in range(20)])
    assert eng._dba_at == 250 and eng._fitted_at == 250
    We = eng.whitening.transform(extra)
    M = np.concatenate([D, We])
    order, sims = brute_neighbours(M, We, 4, own=np.arange(250, 270))
    np.testing.assert_allclose(eng.index.get(np.arange(250, 270)), brute_weighted(M, We, order, sims, 2.0),
                               rtol=1e-4, atol=1e-5)
    # removed vectors leave the sums at the next full pass (fit_whitening makes one now)
    eng.remove([f"/virtual/{i}.png" for i in range(200, 250)] + [f"/virtual/x{i}.png" for i in range(20)])
    eng.fit_whitening()
    W = PCAWhitening(dim_out=24).fit(X[:200]).transform(X[:200])
    order, sims = brute_neighbours(W, W, 4, own=np.arange(200))
    np.testing.assert_allclose(eng.index.get(np.arange(200)), brute_weighted(W, W, order, sims, 2.0),
                               rtol=1e-4, atol=1e-5)


def test_dba_without_whitening_makes_a_full_pass_each_time_the_collection_doubles():
    rng = np.random.default_rng(10)
    X = unit_rows(rng, 64, 128)
    eng = ImageSearch(extractor="colorhist", index="flat", whitening=None, dba=2)
    for s in range(0, 64, 8):
        eng.add_vectors(X[s:s + 8], paths=[f"/v/{i}.png" for i in range(s, s + 8)])
    assert eng._dba_at == 64  # passes at 8, 16, 32, 64
    order, sims = brute_neighbours(X, X, 2, own=np.arange(64))
    np.testing.assert_allclose(eng.index.get(np.arange(64)), brute_weighted(X, X, order, sims, 3.0),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_engine_with_whitening_dba_and_qe_saves_and_reloads_identical_results(tmp_path, kind):
    rng = np.random.default_rng(8)
    X = unit_rows(rng, 300, 128)
    eng = ImageSearch(extractor="colorhist", index=kind, whitening=PCAWhitening(dim_out=20, shrinkage=0.2), dba=3,
                      expand=2)
    eng.add_vectors(X, paths=[f"/virtual/{i}.png" for i in range(300)], metadata=list(range(300)))
    before = eng.search_vectors(X[:8], k=6)
    path = eng.save(str(tmp_path / "e.isx"))
    back = ImageSearch.load(path)
    assert (back.dba, back.expand, back.alpha, back.whitening.params()) == (3, 2, 3.0, eng.whitening.params())
    after = back.search_vectors(X[:8], k=6)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.distances, before.distances)
    np.testing.assert_array_equal(back.vectors(np.arange(300)), X)
    assert back.info()["postprocessing"]["whitening"]["fitted_dim"] == 20
    assert imgsearch.engine.read_info(path)["postprocessing"]["dba"] == 3
    # the engine goes on from where it was: adds whitened with the saved fit
    back.add_vectors(X[:5] * 0 + X[5], paths=[f"/virtual/new{i}.png" for i in range(5)])
    assert len(back) == 305
    # an engine without the options writes the table as before they existed
    plain = ImageSearch(extractor="colorhist", index="flat", whitening=None)
    plain.add_vectors(X[:10])
    plain.save(str(tmp_path / "plain.isx"))
    assert b"\0" not in imgsearch._core.read_meta(str(tmp_path / "plain.isx"))
    assert ImageSearch.load(str(tmp_path / "plain.isx")).whitening is None


def test_a_damaged_kept_array_section_is_refused(tmp_path):
    rng = np.random.default_rng(9)
    eng = engine_with(unit_rows(rng, 80, 128), whitening=PCAWhitening(dim_out=8))
    meta = eng._meta_bytes()
    head, _, blob = meta.partition(b"\0")
    eng.index.save(str(tmp_path / "cut.isx"), meta=head + b"\0" + blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="kept arrays are unreadable"):
        ImageSearch.load(str(tmp_path / "cut.isx"))
    eng.index.save(str(tmp_path / "none.isx"), meta=head)
    with pytest.raises(ValueError, match="holds no kept vectors"):
        ImageSearch.load(str(tmp_path / "none.isx"))


def test_engine_options_refuse_bad_input():
    with pytest.raises(ValueError, match="whitening: expected"):
        ImageSearch(extractor="colorhist", whitening="yes")
    with pytest.raises(TypeError, match="whitening: expected"):
        ImageSearch(extractor="colorhist", whitening=[64])
    with pytest.raises(ValueError, match="dba: expected"):
        ImageSearch(extractor="colorhist", dba=-1)
    with pytest.raises(ValueError, match="expand: expected"):
        ImageSearch(extractor="colorhist", expand=1.5)
    with pytest.raises(ValueError, match="alpha"):
        ImageSearch(extractor="colorhist", expand=2, alpha=-3)
    with pytest.raises(ValueError, match="float vectors compared by cosine, ip or l2"):
        ImageSearch(extractor="phash", expand=3)
    with pytest.raises(ValueError, match="give the index by name"):
        ImageSearch(extractor="colorhist", index=imgsearch.FlatIndex(128, metric="l2"), whitening=16)
    eng = engine_with(unit_rows(np.random.default_rng(0), 20, 128))
    with pytest.raises(ValueError, match="expand: expected"):
        eng.search_vectors(eng.vectors([0]), k=2, expand=-1)
    with pytest.raises(ValueError, match="has no whitening and no DBA"):
        eng.fit_whitening()
    with pytest.raises(KeyError, match="not in the engine"):
        eng.vectors(["/nowhere.png"])
    w = PCAWhitening(dim_out=4).fit(unit_rows(np.random.default_rng(1), 100, 16))
    with pytest.raises(ValueError, match="fitted on 16-d"):
        ImageSearch(extractor="colorhist", whitening=w)


def test_the_default_mobilenet_v2_engine_uses_the_recommended_options(tmp_path):
    pytest.importorskip("torch")
    from imgsearch import extractors
    params = {"size": 64, "resize": 64}
    eng = ImageSearch(extractor="mobilenet_v2", weights="random", index="flat", extractor_params=params)
    spec = extractors.MODELS["mobilenet_v2"]
    assert (eng.extractor.pooling, eng.extractor.gem_p) == (spec["defaults"]["pooling"], spec["defaults"]["gem_p"])
    rec = spec["engine"]
    assert eng.whitening.params() == PCAWhitening(**rec["whitening"]).params()
    assert (eng.dba, eng.expand) == (rec["dba"], rec["expand"])
    # a small collection is searched with the extractor's vectors until min_samples of them
    rng = np.random.default_rng(11)
    X = unit_rows(rng, 40, 1280)
    eng.add_vectors(X, paths=[f"/v/{i}.png" for i in range(40)])
    assert not eng.whitening.fitted and eng.index.dim == 1280 and eng.whitening.min_samples > 40
    assert eng.search_vectors(X[:3], k=5).ids.shape == (3, 5)
    path = eng.save(str(tmp_path / "d.isx"))
    back = ImageSearch.load(path)
    np.testing.assert_array_equal(back.search_vectors(X[:3], k=5).ids, eng.search_vectors(X[:3], k=5).ids)
    # each option can be turned off; other extractors get none of them
    plain = ImageSearch(extractor="mobilenet_v2", weights="random", index="flat", extractor_params=params,
                        whitening=None, dba=0, expand=0)
    assert plain.whitening is None and plain._raw is None and not plain.expand
    hist = ImageSearch(extractor="colorhist")
    assert hist.whitening is None and (hist.dba, hist.expand) == (0, 0)
