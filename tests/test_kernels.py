"""Every SIMD kernel, at every ISA level alone, against a float64 NumPy oracle."""
import os
import subprocess
import sys

import numpy as np
import pytest

import imgsearch
from imgsearch import _core, distance
from conftest import METRICS, isa_levels, make_data, oracle_pairwise, oracle_scale

LENGTHS = [1, 7, 16, 97, 1536]


@pytest.mark.parametrize("isa", isa_levels())
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("length", LENGTHS)
def test_kernel_matches_oracle(isa, metric, length, rng):
    dim = length * 8 if metric == "hamming" else length
    for nrows in (1, 3, 4, 5, 9):
        q = make_data(metric, 1, dim, rng)
        X = make_data(metric, nrows, dim, rng)
        if metric != "hamming":
            X[0] = q[0]  # identical vectors: distance 0 exactly (l2, l1) or 0 up to rounding
        got = _core._kernel(metric, isa, q, X)
        ref = oracle_pairwise(q, X, metric)[0]
        tol = 2e-6 * oracle_scale(q, X, metric)[0] + 1e-6
        assert got.dtype == np.float32 and got.shape == (nrows,)
        assert np.all(np.abs(got - ref) <= tol), (isa, metric, length, got, ref)
        if metric in ("l2", "l1", "hamming"):
            if metric != "hamming":
                assert got[0] == 0.0


@pytest.mark.parametrize("isa", isa_levels())
@pytest.mark.parametrize("storage", ["float16", "int8"])
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine", "l1"])
@pytest.mark.parametrize("length", LENGTHS)
def test_compressed_row_kernels_match_oracle(isa, storage, metric, length, rng):
    """float32 query against float16 / int8 rows: exactly the float32 metric
    of the rows' values (the int8 codes taken as numbers)."""
    for nrows in (1, 3, 5):
        q = make_data(metric, 1, length, rng)
        if storage == "int8":
            X = rng.integers(-127, 128, size=(nrows, length)).astype(np.int8)
        else:
            X = make_data(metric, nrows, length, rng).astype(np.float16)
        got = _core._kernel(metric, isa, q, X, storage)
        Xv = X.astype(np.float64)
        ref = oracle_pairwise(q, Xv, metric)[0]
        tol = 2e-6 * oracle_scale(q, Xv, metric)[0] + 1e-6
        assert got.dtype == np.float32 and got.shape == (nrows,)
        assert np.all(np.abs(got - ref) <= tol), (isa, storage, metric, length, got, ref)


@pytest.mark.parametrize("isa", isa_levels())
def test_float16_kernel_reads_subnormals_and_extremes(isa):
    X = np.array([[6e-8, -6.1e-5, 65504.0, 0.0, -0.0, 1.0, -2.5]], np.float16)
    q = np.zeros((1, 7), np.float32)
    got = _core._kernel("l1", isa, q, X, "float16")[0]
    assert got == np.float32(np.abs(X.astype(np.float64)).sum())


@pytest.mark.parametrize("isa", isa_levels())
def test_cosine_of_zero_vector_is_one(isa):
    q = np.zeros((1, 9), np.float32)
    X = np.ones((2, 9), np.float32)
    assert np.all(_core._kernel("cosine", isa, q, X) == 1.0)
    assert np.all(_core._kernel("cosine", isa, X[:1], q) == 1.0)


@pytest.mark.parametrize("isa", isa_levels())
def test_hamming_extremes(isa):
    q = np.zeros((1, 64), np.uint8)
    X = np.stack([np.zeros(64, np.uint8), np.full(64, 255, np.uint8), np.full(64, 1, np.uint8)])
    assert _core._kernel("hamming", isa, q, X).tolist() == [0.0, 512.0, 64.0]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("threads", [1, 2])
def test_pairwise_matches_oracle(metric, threads, rng):
    dim = 64 if metric == "hamming" else 37
    A = make_data(metric, 45, dim, rng)
    B = make_data(metric, 301, dim, rng)
    got = distance.pairwise(A, B, metric, threads=threads)
    assert got.shape == (45, 301) and got.dtype == np.float32
    ref = oracle_pairwise(A, B, metric)
    assert np.all(np.abs(got - ref) <= 2e-6 * oracle_scale(A, B, metric) + 1e-6)


def test_one_to_many_and_pair(rng):
    X = rng.normal(size=(20, 5)).astype(np.float32)
    d = distance.one_to_many(X[3], X, "l1")
    ref = np.abs(X.astype(np.float64) - X[3]).sum(1)
    np.testing.assert_allclose(d, ref, rtol=1e-6)
    assert distance.pair(X[0], X[1], "l2") == pytest.approx(((X[0] - X[1]).astype(np.float64) ** 2).sum(), rel=1e-6)
    with pytest.raises(ValueError, match="1-D"):
        distance.one_to_many(X, X)


def test_pairwise_input_conversion_and_errors(rng):
    A = rng.normal(size=(4, 6))  # float64: converted
    B = np.asfortranarray(rng.normal(size=(5, 6)).astype(np.float32))  # non-contiguous: copied
    np.testing.assert_allclose(distance.pairwise(A, B), oracle_pairwise(A, B, "l2"), rtol=1e-5)
    A_before = A.copy()
    distance.pairwise(A, B, "cosine")
    assert np.array_equal(A, A_before)
    with pytest.raises(ValueError, match="dim"):
        distance.pairwise(A, np.ones((2, 7), np.float32))
    with pytest.raises(ValueError, match="metric"):
        distance.pairwise(A, B, "euclid")
    with pytest.raises(TypeError, match="float32"):
        distance.pairwise(np.array([["a"]]), B)
    with pytest.raises(TypeError, match="packbits"):
        distance.pairwise(np.ones((2, 8), bool), np.ones((2, 8), bool), "hamming")
    with pytest.raises(ValueError, match="threads"):
        distance.pairwise(A, B, threads=0)
    assert distance.pairwise(np.ones((0, 6), np.float32), B).shape == (0, 5)


def test_capabilities_reports_the_choice():
    caps = imgsearch.capabilities()
    assert caps["simd"] in ("serial", "avx2", "avx512")
    assert caps["cpus"] >= 1
    if caps["simd"] == "avx512":
        assert caps["avx512f"] and caps["avx2"]


@pytest.mark.parametrize("level", ["serial", "avx2"])
def test_environment_variable_lowers_the_level(level):
    if level not in isa_levels():
        pytest.skip(f"{level} not supported here")
    code = (
        "import imgsearch, numpy as np; c = imgsearch.capabilities(); print(c['simd'], c['simd_supported']);"
        "r = np.random.default_rng(0); X = r.normal(size=(500, 33)).astype(np.float32);"
        "D, I = imgsearch.FlatIndex.from_array(X).search(X[:40], k=5); print(int((I[:, 0] == np.arange(40)).all()))"
    )
    env = dict(os.environ, IMGSEARCH_SIMD=level)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.split("\n")
    assert lines[0].split()[0] == level
    assert lines[1] == "1"
