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
