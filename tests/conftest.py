import os
import subprocess
import sys

import numpy as np
import pytest

import imgsearch

METRICS = ["l2", "ip", "cosine", "l1", "hamming"]
FLOAT_METRICS = ["l2", "ip", "cosine", "l1"]


def oracle_pairwise(A, B, metric):
    """float64 NumPy reference for every metric (hamming on packed uint8 rows)."""
    if metric == "hamming":
        bits_a = np.unpackbits(np.asarray(A, np.uint8), axis=1).astype(np.int64)
        bits_b = np.unpackbits(np.asarray(B, np.uint8), axis=1).astype(np.int64)
        return (bits_a[:, None, :] != bits_b[None, :, :]).sum(-1).astype(np.float64)
    A = np.asarray(A, np.float64)
    B = np.asarray(B, np.float64)
    if metric == "l2":
        return ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)
    if metric == "l1":
        return np.abs(A[:, None, :] - B[None, :, :]).sum(-1)
    dot = A @ B.T
    if metric == "ip":
        return 1.0 - dot
    na = np.sqrt((A * A).sum(1))[:, None]
    nb = np.sqrt((B * B).sum(1))[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where((na > 0) & (nb > 0), dot / (na * nb), 0.0)
    return 1.0 - cos


def oracle_scale(A, B, metric):
    """Magnitude of the terms summed, for a relative tolerance that means
    'as accurate as float32 accumulation allows' whatever the data."""
    if metric == "hamming":
        return np.ones((len(A), len(B)))
    A = np.abs(np.asarray(A, np.float64))
    B = np.abs(np.asarray(B, np.float64))
    if metric == "l2":
        return (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] + 1e-30
    if metric == "l1":
        return A.sum(1)[:, None] + B.sum(1)[None, :] + 1e-30
    if metric == "ip":
        return 1.0 + A @ B.T
    return np.ones((len(A), len(B)))


def make_data(metric, n, dim, rng, clustered=False):
    if metric == "hamming":
        return rng.integers(0, 256, size=(n, dim // 8), dtype=np.uint8)
    if clustered:
        centres = rng.normal(size=(8, dim)) * 4
        X = centres[rng.integers(0, 8, n)] + rng.normal(size=(n, dim))
    else:
        X = rng.normal(size=(n, dim))
    return X.astype(np.float32)


def check_knn(D, I, X, ids, Q, k, metric, allowed=None, rtol=1e-4):
    """(D, I) is a correct k-NN answer: distances match the oracle's k smallest,
    every id is a real neighbour at its reported distance, and padding is right."""
    ref = oracle_pairwise(Q, X, metric)
    scale = oracle_scale(Q, X, metric)
    ids = np.asarray(ids)
    for qi in range(len(Q)):
        cand = np.arange(len(X)) if allowed is None else np.flatnonzero(np.isin(ids, allowed))
        order = cand[np.argsort(ref[qi, cand], kind="stable")]
        kk = min(k, len(order))
        tol = rtol * scale[qi, order[:kk]] + 1e-6
        np.testing.assert_allclose(D[qi, :kk], ref[qi, order[:kk]], rtol=0, atol=float(tol.max()) if kk else 0)
        assert np.all(np.diff(D[qi, :kk]) >= -1e-6 * (1 + abs(D[qi, :kk]).max(initial=0))), "not sorted"
        got = I[qi, :kk]
        assert len(set(got.tolist())) == kk, "duplicate ids in a result row"
        pos = {v: j for j, v in enumerate(ids.tolist())}
        for j, gid in enumerate(got):
            assert gid in pos, f"unknown id {gid}"
            assert allowed is None or gid in set(np.asarray(allowed).tolist())
            assert abs(ref[qi, pos[gid]] - D[qi, j]) <= rtol * scale[qi, pos[gid]] + 1e-6
        assert np.all(I[qi, kk:] == -1) and np.all(np.isinf(D[qi, kk:]))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


ISA_ORDER = ["serial", "avx2", "avx512"]
ISA_NEEDS = {"avx2": "AVX2 + FMA + F16C", "avx512": "AVX-512 F/BW/DQ/VL"}


def supported_levels():
    """The SIMD levels this CPU and OS can run, lowest first."""
    supported = imgsearch.capabilities()["simd_supported"]
    return ISA_ORDER[: ISA_ORDER.index(supported) + 1]


def isa_levels(levels=ISA_ORDER):
    """Every level as a pytest parameter: one this CPU lacks is a visible skip
    with the reason, never silently left out."""
    have = supported_levels()
    return [pytest.param(lv, id=lv, marks=pytest.mark.skipif(
        lv not in have, reason=f"this CPU has no {ISA_NEEDS.get(lv)}: the {lv} kernels cannot run here"))
        for lv in levels]


def run_tests_in_child(test_file, selection, env):
    """Run the tests of test_file matching `selection` (pytest -k) in a child
    process with extra environment variables (a lower SIMD level, a forced
    plan), and assert they ran and passed."""
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", os.path.join(here, test_file),
         "-k", selection],
        cwd=os.path.dirname(here), env=dict(os.environ, **env), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{env}: " + proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def filter_ids(n, rng):
    """n unique ids spread over [0, 3n), 0 and 1 among them (where a 0/1 mask cast
    to int, read as ids, would land)."""
    return np.concatenate([[0, 1], rng.permutation(np.arange(2, 3 * n))[: n - 2]]).astype(np.int64)


def check_filter_rule(index, X, ids, Q, metric, k=8, exact=True):
    """The filter rule every index applies: a bool array is a mask over ids that
    must cover every id (len > the largest live id); an integer array is a list of
    allowed ids, and one of only 0s and 1s with repeats is refused as a mask in
    disguise.  Results are checked against the NumPy oracle (exactly, or by recall
    for an approximate index) and masks against the same filter given as ids."""
    rng = np.random.default_rng(3)
    ids = np.asarray(ids)
    live = np.ones(len(ids), bool)

    def answer(flt, allowed):
        D, I = index.search(Q, k=k, filter=flt)
        if exact:
            check_knn(D, I, X[live], ids[live], Q, k, metric, allowed=allowed)
        else:  # recall against the oracle's allowed neighbours
            d = oracle_pairwise(Q, X[live], metric)
            d[:, ~np.isin(ids[live], allowed)] = np.inf
            kk = min(k, int(np.isin(ids[live], allowed).sum()))
            truth = ids[live][np.argsort(d, axis=1, kind="stable")[:, :kk]]
            assert np.isin(I[I >= 0], allowed).all()
            hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(I, truth)]
            assert np.mean(hits) / kk >= 0.9
        return D, I

    for fraction in (0.02, 0.5):
        allowed = rng.choice(ids, size=max(2, int(fraction * len(ids))), replace=False)
        mask = np.zeros(ids.max() + 1, bool)
        mask[allowed] = True
        D, I = answer(allowed, allowed)
        for as_mask in (mask, np.concatenate([mask, np.ones(50, bool)]), mask.tolist()):
            np.testing.assert_array_equal(index.search(Q, k=k, filter=as_mask)[1], I)
        # a mask cast to integers -- numpy's .astype(np.uint8), pandas' .astype(int) -- is not ids
        for dtype in (np.uint8, np.int64, np.int32):
            with pytest.raises(ValueError, match=r"only 0s and 1s.*mask\.astype\(bool\)"):
                index.search(Q, k=k, filter=mask.astype(dtype))
        # a mask that stops short of the largest id would drop every id past its end
        with pytest.raises(ValueError, match=rf"expected length >= {ids.max() + 1} .*found length {ids.max()}"):
            index.search(Q, k=k, filter=mask[:-1])
    # integer arrays are ids, also when they are 0 and 1 without repeats
    for flt in (np.array([0, 1], np.uint8), [1, 0], np.array([1])):
        answer(flt, np.asarray(flt))
    # the mask has to cover the live ids only: after removing the largest, one shorter will do
    top = int(ids.max())
    index.remove([top])
    live = ids != top
    short = np.zeros(int(ids[live].max()) + 1, bool)
    short[ids[live][::3]] = True
    answer(short, ids[live][::3])
