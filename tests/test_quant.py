"""k-means (csrc/index/kmeans.c) and product quantization (csrc/index/pq.c)
through their test hooks, against float64 NumPy oracles.

Assignment and encoding run on the active level's kernels (the fused kernel
on AVX2/AVX-512, sgemm + select on serial), so the tests that compare an
arg-min with the oracle run at every level."""
import numpy as np
import pytest

from imgsearch import _core
from conftest import isa_levels


@pytest.fixture(params=isa_levels())
def isa(request):
    old = _core._set_simd(request.param)
    yield request.param
    _core._set_simd(old)


def oracle_sqdist(X, C):
    X = np.asarray(X, np.float64)
    C = np.asarray(C, np.float64)
    return ((X[:, None, :] - C[None, :, :]) ** 2).sum(-1)


def check_argmin(assign, X, C, dist=None):
    """assign is the nearest centroid of each row; where two centroids are
    closer than float32 rounding can tell apart, either is right."""
    D = oracle_sqdist(X, C)
    scale = (np.asarray(X, np.float64) ** 2).sum(1) + (np.asarray(C, np.float64) ** 2).sum(1).max()
    tol = 2e-6 * scale + 1e-7   # float32 rounding of |x|^2 - 2 x.c + |c|^2
    best = D.min(1)
    rows = np.arange(len(X))
    assert np.all(D[rows, assign] <= best + tol), "a point was not assigned to its nearest centroid"
    second = np.partition(D, 1, axis=1)[:, 1] if D.shape[1] > 1 else np.full(len(X), np.inf)
    clear = second - best > 2 * tol
    np.testing.assert_array_equal(assign[clear], D.argmin(1)[clear])
    assert clear.mean() > 0.5  # the data leave most rows unambiguous: the test has teeth
    if dist is not None:
        np.testing.assert_allclose(dist, best, rtol=0, atol=float(tol.max()))
        assert np.all(dist >= 0)


# ----------------------------------------------------------------------
# k-means
# ----------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 7, 32, 97])
@pytest.mark.parametrize("k", [1, 5, 300])
def test_assign_matches_bruteforce(isa, d, k, rng):
    X = rng.normal(size=(1000, d)).astype(np.float32)   # 1000: not a multiple of the 256-point block
    C = rng.normal(size=(k, d)).astype(np.float32)
    assign, dist = _core._kmeans_assign(X, C)
    assert assign.dtype == np.int32 and assign.shape == (1000,) and dist.dtype == np.float32
    check_argmin(assign, X, C, dist)
    a1, d1 = _core._kmeans_assign(X, C, nthreads=1)
    np.testing.assert_array_equal(a1, assign)
    np.testing.assert_array_equal(d1, dist)


def test_assign_breaks_ties_towards_the_lower_centroid():
    C = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32)   # duplicates of 0 and 1
    X = np.array([[1, 0], [0, 1], [0.5, 0.5], [2, 0]], np.float32)
    assign, dist = _core._kmeans_assign(X, C)
    np.testing.assert_array_equal(assign, [0, 1, 0, 0])
    np.testing.assert_allclose(dist, [0, 0, 0.5, 1], atol=1e-6)


def test_kmeans_objective_is_the_mean_distance_and_decreases(rng):
    X = (rng.normal(size=(16, 24))[rng.integers(0, 16, 3000)] * 3 + rng.normal(size=(3000, 24))).astype(np.float32)
    C0, obj0 = _core._kmeans(X, 40, niter=0, seed=3)
    C, obj = _core._kmeans(X, 40, niter=25, seed=3)
    # seeding only: the centroids are k distinct points of X
    rows = {tuple(r) for r in X.tolist()}
    assert all(tuple(c) in rows for c in C0.tolist()) and len({tuple(c) for c in C0.tolist()}) == 40
    for cent, o in ((C0, obj0), (C, obj)):
        np.testing.assert_allclose(o, oracle_sqdist(X, cent).min(1).mean(), rtol=1e-5)
    assert obj < 0.8 * obj0
    # a fixed point of Lloyd's iteration: every centroid is the mean of its points
    assign = oracle_sqdist(X, C).argmin(1)
    for c in range(40):
        if np.any(assign == c):
            np.testing.assert_allclose(C[c], X[assign == c].astype(np.float64).mean(0), atol=2e-3)


@pytest.mark.parametrize("max_points", [0, 700])
def test_kmeans_same_seed_same_model_on_any_thread_count(max_points, rng):
    X = rng.normal(size=(3000, 20)).astype(np.float32)
    C1, o1 = _core._kmeans(X, 37, niter=8, seed=11, nthreads=1, max_points=max_points)
    C2, o2 = _core._kmeans(X, 37, niter=8, seed=11, nthreads=2, max_points=max_points)
    C3, o3 = _core._kmeans(X, 37, niter=8, seed=11, nthreads=3, max_points=max_points)
    assert C1.tobytes() == C2.tobytes() == C3.tobytes() and o1 == o2 == o3
    C4, _ = _core._kmeans(X, 37, niter=8, seed=12, nthreads=1, max_points=max_points)
    assert not np.array_equal(C1, C4)


def test_kmeans_subsample_draws_distinct_training_points(rng):
    X = rng.normal(size=(5000, 8)).astype(np.float32)
    # niter=0 seeds from the subsample: k distinct rows of X
    C, _ = _core._kmeans(X, 50, niter=0, seed=5, max_points=60)
    rows = {tuple(r) for r in X.tolist()}
    assert len({tuple(c) for c in C.tolist()}) == 50 and all(tuple(c) in rows for c in C.tolist())
    # default max_points = k * 256 = 6400 > n: no subsample, so the objective covers all of X
    C, obj = _core._kmeans(X, 25, niter=5, seed=5)
    np.testing.assert_allclose(obj, oracle_sqdist(X, C).min(1).mean(), rtol=1e-5)
    # k * 256 = 1024 < n: the objective is the subsample's, which differs from X's
    C, obj = _core._kmeans(X, 4, niter=5, seed=5)
    assert abs(obj - oracle_sqdist(X, C).min(1).mean()) > 1e-4
    C, obj = _core._kmeans(X, 4, niter=5, seed=5, max_points=5000)
    np.testing.assert_allclose(obj, oracle_sqdist(X, C).min(1).mean(), rtol=1e-5)


def test_kmeans_recovers_well_separated_clusters():
    """Lloyd's algorithm finds the true clusters whenever the random seeds fall
    one per cluster (it cannot move a seed out of a cluster it shares with
    another: that is a local minimum, not a bug).  Over many seeds some do."""
    gen = np.random.default_rng(0)
    centres = np.array([[0, 0], [100, 0], [0, 100], [100, 100]], np.float64)
    labels = np.repeat(np.arange(4), [90, 60, 120, 80])
    X = (centres[labels] + gen.normal(size=(len(labels), 2))).astype(np.float32)
    truth = np.stack([X[labels == c].astype(np.float64).mean(0) for c in range(4)])
    covered = 0
    for seed in range(100):
        seeds, _ = _core._kmeans(X, 4, niter=0, seed=seed)
        if len(set(oracle_sqdist(seeds, centres).argmin(1).tolist())) < 4:
            continue
        covered += 1
        C, obj = _core._kmeans(X, 4, niter=10, seed=seed)
        match = oracle_sqdist(truth, C).argmin(1)
        assert sorted(match.tolist()) == [0, 1, 2, 3]
        np.testing.assert_allclose(C[match], truth, atol=1e-3)
        np.testing.assert_array_equal(match[labels], _core._kmeans_assign(X, C)[0])
    assert covered >= 3


def test_empty_cluster_is_split_from_the_largest():
    """Two groups of duplicates, k = 2: when both seeds come from one group the
    other centroid's cluster is empty after the first assignment (ties go to
    the lower index), and only the split recovers the second group."""
    X = np.array([[10, 0]] * 50 + [[0, 10]] * 50, np.float32)
    degenerate = 0
    for seed in range(20):
        _, obj0 = _core._kmeans(X, 2, niter=0, seed=seed)
        degenerate += obj0 > 0
        C, obj = _core._kmeans(X, 2, niter=5, seed=seed)
        assert obj < 1e-6, (seed, C)
        assert sorted(map(tuple, np.round(C, 4).tolist())) == [(0.0, 10.0), (10.0, 0.0)]
    assert degenerate >= 3


@pytest.mark.parametrize("k", [30, 29, 20])
def test_many_empty_clusters_with_duplicate_points(k, rng):
    """k close to n with every point three times: many clusters go empty at
    once; each is re-seeded, nothing is NaN, and the objective stays at what
    the seeds gave or below."""
    base = rng.normal(size=(10, 6)).astype(np.float32) * 5
    X = np.repeat(base, 3, axis=0)
    C0, obj0 = _core._kmeans(X, k, niter=0, seed=1)
    C, obj = _core._kmeans(X, k, niter=10, seed=1)
    assert np.all(np.isfinite(C)) and np.isfinite(obj)
    # (the last iteration's splits perturb centroids that own points, as faiss
    # does, so that the next assignment splits them: that may cost a hair)
    split_cost = (2 / 1024) ** 2 * (X.astype(np.float64) ** 2).sum(1).mean()
    assert obj <= obj0 + split_cost
    np.testing.assert_allclose(obj, oracle_sqdist(X, C).min(1).mean(), rtol=1e-5, atol=1e-9)
    # 10 distinct points and k >= 10 clusters: the splits put a centroid on every
    # point, up to the last split's perturbation (a relative 1/1024 per coordinate)
    near = oracle_sqdist(base, C).min(1)
    assert np.all(near <= (2 / 1024) ** 2 * (base.astype(np.float64) ** 2).sum(1)), near


def test_kmeans_k_equal_n_puts_a_centroid_on_every_point(rng):
    X = rng.normal(size=(50, 3)).astype(np.float32)
    C, obj = _core._kmeans(X, 50, niter=3, seed=0)
    assert obj == 0.0
    np.testing.assert_array_equal(np.sort(C, axis=0), np.sort(X, axis=0))


def test_spherical_kmeans_gives_unit_centroids(rng):
    X = (rng.normal(size=(20, 16))[rng.integers(0, 20, 2000)] + 0.3 * rng.normal(size=(2000, 16))).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    C0, obj0 = _core._kmeans(X, 20, niter=0, seed=2, spherical=True)
    C, obj = _core._kmeans(X, 20, niter=40, seed=2, spherical=True)
    np.testing.assert_allclose(np.linalg.norm(C, axis=1), 1.0, atol=1e-6)
    assert obj < obj0
    # on the sphere the update is the normalised mean of each cluster
    assign = oracle_sqdist(X, C).argmin(1)
    c = np.bincount(assign).argmax()
    mean = X[assign == c].astype(np.float64).mean(0)
    np.testing.assert_allclose(C[c], mean / np.linalg.norm(mean), atol=2e-3)


def test_kmeans_refuses_non_finite_points_naming_the_row(rng):
    X = rng.normal(size=(100, 5)).astype(np.float32)
    X[37, 2] = np.nan
    with pytest.raises(ValueError, match=r"finite, found NaN at row 37, column 2"):
        _core._kmeans(X, 4)
    X[37, 2] = np.inf
    with pytest.raises(ValueError, match=r"found Inf at row 37"):
        _core._kmeans_assign(X, X[:3] * 0)


def test_kmeans_bad_arguments_say_what_was_expected(rng):
    X = rng.normal(size=(10, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"k <= n.*found k=11 for n=10"):
        _core._kmeans(X, 11)
    with pytest.raises(ValueError, match=r"k >= 1.*found k=0"):
        _core._kmeans(X, 0)
    with pytest.raises(ValueError, match=r"niter >= 0"):
        _core._kmeans(X, 2, niter=-1)
    with pytest.raises(ValueError, match=r"max_points >= k.*found max_points=3"):
        _core._kmeans(X, 5, max_points=3)
    with pytest.raises(ValueError, match=r"nthreads"):
        _core._kmeans(X, 2, nthreads=-2)
    with pytest.raises(TypeError, match=r"expected a float32 array, found dtype"):
        _core._kmeans(np.array([["a", "b"]] * 4), 2)
    with pytest.raises(ValueError, match=r"2-D array"):
        _core._kmeans(np.zeros((4, 2, 2), np.float32), 2)
    with pytest.raises(ValueError, match=r"expected vectors of dim 4, found dim 3"):
        _core._kmeans_assign(X[:, :3], X[:2])
    with pytest.raises(ValueError, match=r"k <= n"):
        _core._kmeans(np.zeros((0, 4), np.float32), 1)


def test_kmeans_converts_dtype_and_layout(rng):
    X = rng.normal(size=(500, 12))
    ref = _core._kmeans(X.astype(np.float32), 6, niter=4, seed=9)[0]
    for variant in (X, np.asfortranarray(X.astype(np.float32)), X.astype(np.float32)[:, ::1].copy(order="F")):
        np.testing.assert_array_equal(_core._kmeans(variant, 6, niter=4, seed=9)[0], ref)
    wide = np.zeros((500, 24), np.float32)
    wide[:, ::2] = X
    np.testing.assert_array_equal(_core._kmeans(wide[:, ::2], 6, niter=4, seed=9)[0], ref)
    before = X.copy()
    _core._kmeans(X, 6, niter=2)
    np.testing.assert_array_equal(X, before)   # the input is never modified


# ----------------------------------------------------------------------
# product quantization
# ----------------------------------------------------------------------

def random_codebooks(m, nbits, dsub, rng):
    return rng.normal(size=(m, 1 << nbits, dsub)).astype(np.float32)


def oracle_encode(cb, X):
    m, ksub, dsub = cb.shape
    return np.stack([oracle_sqdist(X[:, j * dsub:(j + 1) * dsub], cb[j]).argmin(1) for j in range(m)], axis=1)


def unpack(codes, m, nbits):
    if nbits == 8:
        return codes.astype(np.int64)
    nib = np.stack([codes & 15, codes >> 4], axis=2).reshape(len(codes), -1)
    return nib[:, :m].astype(np.int64)


@pytest.mark.parametrize("nbits", [4, 8])
@pytest.mark.parametrize("d,m", [(32, 8), (32, 4), (12, 3), (7, 1), (16, 16)])
def test_pq_encode_is_the_argmin_per_subspace(isa, nbits, d, m, rng):
    dsub = d // m
    cb = random_codebooks(m, nbits, dsub, rng)
    X = rng.normal(size=(1000, d)).astype(np.float32)
    codes = _core._pq_encode(cb, X, nbits)
    assert codes.dtype == np.uint8 and codes.shape == (1000, (m * nbits + 7) // 8)
    sub = unpack(codes, m, nbits)
    for j in range(m):
        check_argmin(sub[:, j], X[:, j * dsub:(j + 1) * dsub], cb[j])
    if nbits == 4 and m % 2:
        assert np.all(codes[:, -1] >> 4 == 0)   # the unused high nibble stays 0
    np.testing.assert_array_equal(_core._pq_encode(cb, X, nbits, nthreads=1), codes)


@pytest.mark.parametrize("nbits", [4, 8])
def test_pq_decode_round_trip(nbits, rng):
    m, dsub = 6, 3
    cb = random_codebooks(m, nbits, dsub, rng)
    sub = rng.integers(0, 1 << nbits, size=(200, m))
    X = np.concatenate([cb[j][sub[:, j]] for j in range(m)], axis=1)   # exactly representable vectors
    codes = _core._pq_encode(cb, X, nbits)
    np.testing.assert_array_equal(unpack(codes, m, nbits), sub)
    np.testing.assert_array_equal(_core._pq_decode(cb, codes, nbits), X)


def test_pq_nbits4_packing_by_hand():
    # m = 3 sub-spaces of one dimension; centroid c of sub-space j is 10 c + j
    cb = (np.arange(16)[None, :, None] * 10.0 + np.arange(3)[:, None, None]).astype(np.float32)
    X = np.array([[50 + 0, 120 + 1, 30 + 2], [150, 1, 152]], np.float32)
    codes = _core._pq_encode(cb, X, 4)
    assert codes.tolist() == [[0xC5, 0x03], [0x0F, 0x0F]]
    np.testing.assert_array_equal(_core._pq_decode(cb, codes, 4), X)
    with pytest.raises(ValueError, match=r"expected shape \(m, 256, dsub\) .* found \(3, 16, 1\)"):
        _core._pq_encode(cb, X, 8)


@pytest.mark.parametrize("nbits", [4, 8])
def test_pq_lut_and_lut_distance_match_numpy(nbits, rng):
    m, dsub = 8, 4
    cb = random_codebooks(m, nbits, dsub, rng)
    q = rng.normal(size=m * dsub).astype(np.float32)
    X = rng.normal(size=(300, m * dsub)).astype(np.float32)
    codes = _core._pq_encode(cb, X, nbits)
    Xr = _core._pq_decode(cb, codes, nbits).astype(np.float64)
    q64 = q.astype(np.float64)
    lut = _core._pq_lut(cb, q, "l2")
    assert lut.shape == (m, 1 << nbits) and lut.dtype == np.float32
    ref = np.stack([((cb[j].astype(np.float64) - q64[j * dsub:(j + 1) * dsub]) ** 2).sum(1) for j in range(m)])
    np.testing.assert_allclose(lut, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_core._pq_lut_distance(cb, lut, codes), ((Xr - q64) ** 2).sum(1), rtol=1e-5,
                               atol=1e-4)
    lut = _core._pq_lut(cb, q, "ip")
    ref = -np.stack([cb[j].astype(np.float64) @ q64[j * dsub:(j + 1) * dsub] for j in range(m)])
    np.testing.assert_allclose(lut, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_core._pq_lut_distance(cb, lut, codes), -(Xr @ q64), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("nbits", [4, 8])
def test_pq_train_is_deterministic_and_lowers_the_error(nbits, rng):
    X = (rng.normal(size=(3000, 16)) @ rng.normal(size=(16, 16))).astype(np.float32)
    cb1 = _core._pq_train(X, 4, nbits, niter=10, seed=4, nthreads=1)
    cb2 = _core._pq_train(X, 4, nbits, niter=10, seed=4, nthreads=2)
    assert cb1.shape == (4, 1 << nbits, 4) and cb1.tobytes() == cb2.tobytes()
    assert not np.array_equal(cb1[0], cb1[1])   # each sub-space has its own seed and its own data

    def mse(cb):
        return ((_core._pq_decode(cb, _core._pq_encode(cb, X, nbits), nbits) - X) ** 2).sum(1).mean()

    seeded = _core._pq_train(X, 4, nbits, niter=0, seed=4)
    assert mse(cb1) < 0.9 * mse(seeded)
    # each codebook is a k-means of its own sub-space: as good as _kmeans there
    codes = unpack(_core._pq_encode(cb1, X, nbits), 4, nbits)
    for j in range(4):
        sub = X[:, j * 4:(j + 1) * 4]
        err = ((sub - cb1[j][codes[:, j]]) ** 2).sum(1).mean()
        _, ref = _core._kmeans(sub, 1 << nbits, niter=10, seed=100 + j)
        assert err < 1.1 * ref, (j, err, ref)


def test_pq_bad_arguments_say_what_was_expected(rng):
    X = rng.normal(size=(300, 12)).astype(np.float32)
    with pytest.raises(ValueError, match=r"must divide the dimension: found d=12, m=5"):
        _core._pq_train(X, 5, 8)
    with pytest.raises(ValueError, match=r"nbits: expected 4 or 8, found 6"):
        _core._pq_train(X, 4, 6)
    with pytest.raises(ValueError, match=r"at least ksub = 2\^nbits = 256 points, found n=100"):
        _core._pq_train(X[:100], 4, 8)
    with pytest.raises(ValueError, match=r"m >= 1"):
        _core._pq_train(X, 0, 8)
    Xn = X.copy()
    Xn[42, 7] = np.inf
    with pytest.raises(ValueError, match=r"found Inf at row 42, column 7"):
        _core._pq_train(Xn, 4, 4)
    cb = random_codebooks(4, 4, 3, rng)
    with pytest.raises(ValueError, match=r"found Inf at row 42, column 7"):
        _core._pq_encode(cb, Xn, 4)
    with pytest.raises(ValueError, match=r"expected vectors of dim 12, found dim 8"):
        _core._pq_encode(cb, X[:, :8], 4)
    with pytest.raises(ValueError, match=r"3-D array \(m, ksub, dsub\), found 2 dimensions"):
        _core._pq_encode(cb[0], X, 4)
    with pytest.raises(ValueError, match=r"nbits: expected 4 or 8, found 5"):
        _core._pq_encode(cb, X, 5)
    codes = _core._pq_encode(cb, X, 4)
    with pytest.raises(ValueError, match=r"expected 2 bytes per code .* found 3"):
        _core._pq_decode(cb, np.zeros((5, 3), np.uint8), 4)
    with pytest.raises(TypeError, match=r"codes: expected a uint8 array, found dtype"):
        _core._pq_decode(cb, codes.astype(np.int64), 4)
    with pytest.raises(ValueError, match=r"\"l2\" or \"ip\", found \"cosine\""):
        _core._pq_lut(cb, X[0], "cosine")
    with pytest.raises(ValueError, match=r"one query vector of dim 12, found 2 rows"):
        _core._pq_lut(cb, X[:2], "l2")
    with pytest.raises(ValueError, match=r"ksub = 16 \(nbits=4\) or 256 \(nbits=8\).*found shape\[1\] = 5"):
        _core._pq_lut(rng.normal(size=(4, 5, 3)), X[0], "l2")
    bad = cb.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"centroids must be finite"):
        _core._pq_encode(bad, X, 4)
    with pytest.raises(ValueError, match=r"lut: expected shape \(4, 16\)"):
        _core._pq_lut_distance(cb, np.zeros((4, 15), np.float32), codes)
