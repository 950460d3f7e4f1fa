"""Every SIMD kernel, at every ISA level alone, against a float64 NumPy oracle."""
import os
import subprocess
import sys

import numpy as np
import pytest

import imgsearch
from imgsearch import _core, distance
from conftest import METRICS, isa_levels, make_data, oracle_pairwise, oracle_scale, supported_levels

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


@pytest.mark.parametrize("level", isa_levels())
def test_environment_variable_lowers_the_level(level):
    code = (
        "import imgsearch, numpy as np; c = imgsearch.capabilities(); print(c['simd'], c['simd_supported'],"
        " ' '.join(sorted(set(c['kernels'].values()))));"
        "r = np.random.default_rng(0); X = r.normal(size=(500, 33)).astype(np.float32);"
        "D, I = imgsearch.FlatIndex.from_array(X).search(X[:40], k=5); print(int((I[:, 0] == np.arange(40)).all()))"
    )
    env = dict(os.environ, IMGSEARCH_SIMD=level)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.split("\n")
    assert lines[0].split()[0] == level
    order = ["serial", "avx2", "avx512"]
    # every slot, f16c and crc32 included, comes from this level or below
    assert all(o == "none" or order.index(o) <= order.index(level) for o in lines[0].split()[2:])
    assert lines[1] == "1"


# ---------------------------------------------------------------------------
# The other slots of the kernel table, each level alone (imgsearch._core hooks)


def crc32c_reference(data, crc=0):
    """Bytewise table CRC-32C, independent of the C code."""
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("isa", isa_levels())
@pytest.mark.parametrize("metric", ["l2", "l1"])
@pytest.mark.parametrize("length", LENGTHS + [128, 129, 784])
def test_bounded_kernel_matches_oracle_and_stops_only_past_the_bound(isa, metric, length, rng):
    q = rng.normal(size=(1, length)).astype(np.float32)
    X = rng.normal(size=(40, length)).astype(np.float32)
    X[0] = q[0]
    ref = oracle_pairwise(q, X, metric)[0]
    tol = 2e-6 * oracle_scale(q, X, metric)[0] + 1e-6
    full = _core._bounded(metric, isa, q, X, np.inf)
    assert np.all(np.abs(full - ref) <= tol) and full[0] == 0.0
    # the same bits as the level's plain kernel would not hold across widths, but
    # with a finite bound: a kept row (below the bound) is summed in full, a
    # rejected one returns a partial sum that already reached the bound
    bound = float(np.median(ref))
    got = _core._bounded(metric, isa, q, X, bound)
    kept = got < bound
    assert np.array_equal(got[kept], full[kept])
    assert np.all(ref[~kept] >= bound - tol[~kept])
    assert np.all(got[~kept] <= full[~kept] + tol[~kept])


def select_oracle(v, k, allowed_mask):
    """k smallest (value, slot) pairs with ties to the lower slot, as the heaps keep them."""
    slots = np.flatnonzero(allowed_mask)
    order = slots[np.lexsort((slots, v[slots]))][:k]
    return v[order], order


def bitmap(mask):
    words = np.zeros((len(mask) + 63) // 64, np.uint64)
    for i in np.flatnonzero(mask):
        words[i >> 6] |= np.uint64(1) << np.uint64(i & 63)
    return words


@pytest.mark.parametrize("isa", isa_levels())
@pytest.mark.parametrize("n", [1, 15, 16, 17, 100, 1000])
def test_select_kernel_matches_oracle(isa, n, rng):
    row = rng.normal(size=n).astype(np.float32)
    row[n // 2:] = np.round(row[n // 2:])  # ties
    scale = rng.uniform(0.5, 2, size=n).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32)
    mask = rng.random(n) < 0.6
    for s, b, allowed in ((None, None, None), (scale, bias, None), (None, bias, mask), (scale, None, mask)):
        v = row.copy()
        if s is not None:
            v = (v * s).astype(np.float32)
        if b is not None:
            v = (v + b).astype(np.float32)
        am = np.ones(n, bool) if allowed is None else allowed
        D, I = _core._select(isa, row, s, b, 7, None if allowed is None else bitmap(allowed))
        dv, iv = select_oracle(v, 7, am)
        kk = len(iv)
        assert np.array_equal(I[0, :kk], iv) and np.allclose(D[0, :kk], dv, rtol=1e-6, atol=1e-6)
        assert np.all(I[0, kk:] == -1) and np.all(np.isinf(D[0, kk:]))


@pytest.mark.parametrize("isa", isa_levels(["avx2", "avx512"]))
@pytest.mark.parametrize("m,n,d", [(1, 1, 1), (5, 13, 7), (17, 100, 33), (33, 131, 64), (70, 257, 97)])
def test_fused_kernel_matches_oracle(isa, m, n, d, rng):
    Q = rng.normal(size=(m, d)).astype(np.float32)
    X = rng.normal(size=(n, d)).astype(np.float32)
    scale = rng.uniform(0.5, 2, size=n).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32)
    mask = rng.random(n) < 0.7
    dot = Q.astype(np.float64) @ X.astype(np.float64).T
    k = min(5, n)
    for s, b, allowed in ((None, None, None), (scale, bias, mask)):
        D, I = _core._fused(isa, Q, X, k, s, b, None if allowed is None else bitmap(allowed))
        v = dot * (1 if s is None else s) + (0 if b is None else b)
        am = np.ones(n, bool) if allowed is None else allowed
        scale_tol = 1e-5 * (np.abs(Q).sum(1)[:, None] * np.abs(X).max() * 2 + 1 + (0 if b is None else np.abs(b).max()))
        for qi in range(m):
            kk = min(k, int(am.sum()))
            ref = np.sort(v[qi][am])[:kk]
            assert np.all(np.abs(D[qi, :kk] - ref) <= scale_tol[qi]), (qi, D[qi], ref)
            assert np.all(am[I[qi, :kk]]) and len(set(I[qi, :kk].tolist())) == kk
            assert np.all(np.abs(v[qi, I[qi, :kk]] - D[qi, :kk]) <= scale_tol[qi])


def test_serial_level_has_no_fused_kernel_and_says_so(rng):
    X = rng.normal(size=(4, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="no fused kernel"):
        _core._fused("serial", X, X, 1, None, None, None)


@pytest.mark.parametrize("isa", isa_levels())
@pytest.mark.parametrize("metric", ["l2", "l1"])
@pytest.mark.parametrize("dim", [1, 3, 7, 8, 12, 16, 24, 31, 32, 33, 64])
def test_kdleaf_kernels_match_oracle_wherever_a_row_lies(isa, metric, dim, rng):
    X = rng.normal(size=(45, dim)).astype(np.float32)
    q = rng.normal(size=(1, dim)).astype(np.float32)
    ref = oracle_pairwise(q, X, metric)[0]
    tol = 2e-6 * oracle_scale(q, X, metric)[0] + 1e-6
    direct = _core._kdleaf(isa, metric, q, X, None, False)
    assert np.all(np.abs(direct - ref) <= tol)
    perm = rng.permutation(45).astype(np.uint32)
    # a row's distance is the same bits through a permutation, by pointer, and in any group slot
    assert np.array_equal(_core._kdleaf(isa, metric, q, X, perm, False), direct[perm])
    assert np.array_equal(_core._kdleaf(isa, metric, q, X, perm, True), direct[perm])
    assert np.array_equal(_core._kdleaf(isa, metric, q, X, perm[:5], True), direct[perm[:5]])


@pytest.mark.parametrize("isa", isa_levels())
@pytest.mark.parametrize("n", [0, 1, 7, 8, 15, 16, 17, 97, 1000])
def test_f16_to_f32_matches_numpy(isa, n, rng):
    special = np.array([0.0, -0.0, 6e-8, -6.1e-5, 65504.0, -65504.0, np.inf, -np.inf, 1.0, 0.1], np.float16)
    h = np.concatenate([special, rng.normal(size=n).astype(np.float16)])[:n] if n else np.zeros(0, np.float16)
    got = _core._f16_to_f32(isa, h)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), h.astype(np.float32).view(np.uint32))
    nan = _core._f16_to_f32(isa, np.array([np.nan] * 9, np.float16))
    assert np.all(np.isnan(nan))


@pytest.mark.parametrize("isa", isa_levels())
def test_crc32c_kernel_matches_reference(isa, rng):
    assert _core._crc32c(isa, b"123456789") == 0xE3069283  # the check value of CRC-32C
    for n in (0, 1, 7, 8, 9, 255, 256, 769, 8192 * 3 + 5):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        for start in (0, 3):  # misaligned starts
            chunk = data[start:]
            assert _core._crc32c(isa, chunk) == crc32c_reference(chunk), (n, start)
    # long enough for every tier of the three-way loop: against the serial kernel,
    # itself held against the reference above; and continuing a CRC
    big = rng.integers(0, 256, 3 * 131072 + 3 * 8192 + 3 * 256 + 77, dtype=np.uint8).tobytes()
    assert _core._crc32c(isa, big) == _core._crc32c("serial", big)
    assert _core._crc32c(isa, big[1000:], _core._crc32c(isa, big[:1000])) == _core._crc32c("serial", big)


@pytest.mark.parametrize("isa", isa_levels())
def test_every_slot_of_every_level_is_filled_from_that_level_or_below(isa):
    table = _core._kernel_table(isa)
    order = ["serial", "avx2", "avx512"]
    assert len(table) >= 20
    for slot, origin in table.items():
        if slot == "fused_dot_topk_f32" and isa == "serial":
            assert origin == "none"  # the serial level runs OpenBLAS sgemm + select instead
            continue
        assert origin in order and order.index(origin) <= order.index(isa), (slot, origin)


def test_capabilities_report_each_slot_and_set_simd_moves_every_slot():
    levels = supported_levels()
    assert imgsearch.capabilities()["kernels"] == _core._kernel_table(levels[-1])
    old = _core._set_simd("serial")
    try:
        caps = imgsearch.capabilities()
        assert caps["simd"] == "serial"
        assert set(caps["kernels"].values()) <= {"serial", "none"}
        assert caps["kernels"]["crc32c_u8"] == "serial" and caps["kernels"]["f16_to_f32"] == "serial"
    finally:
        _core._set_simd(old)
    assert imgsearch.capabilities()["simd"] == old
    with pytest.raises(ValueError, match="unknown ISA"):
        _core._set_simd("sse9")


@pytest.mark.parametrize("isa", isa_levels())
@pytest.mark.parametrize("length", LENGTHS)
def test_sqnorm_and_dot_kernels_match_oracle(isa, length, rng):
    q = rng.normal(size=(1, length)).astype(np.float32)
    X = rng.normal(size=(9, length)).astype(np.float32)
    X64, q64 = X.astype(np.float64), q.astype(np.float64)[0]
    scale = (np.abs(X64) * (np.abs(X64) + np.abs(q64))).sum(1)
    assert np.all(np.abs(_core._kernel("sqnorm", isa, q, X) - (X64 * X64).sum(1)) <= 2e-6 * scale + 1e-6)
    assert np.all(np.abs(_core._kernel("dot", isa, q, X) - X64 @ q64) <= 2e-6 * scale + 1e-6)


# ---------------------------------------------------------------------------
# PQ scan kernels (csrc/simd/pqscan.h): each level alone against NumPy


@pytest.mark.parametrize("isa", isa_levels())
@pytest.mark.parametrize("m", [1, 7, 8, 16, 97])
def test_pq8_scan_matches_oracle(isa, m, rng):
    for n in (1, 7, 8, 16, 97):
        lut = rng.normal(size=(m, 256)).astype(np.float32)
        codes = rng.integers(0, 256, size=(n, m), dtype=np.uint8)
        got = _core._pq8_scan(isa, lut, codes)
        ref = lut.astype(np.float64)[np.arange(m)[None, :], codes].sum(1)
        assert got.dtype == np.float32 and got.shape == (n,)
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(lut).max() * m + 1e-6)


@pytest.mark.parametrize("isa", isa_levels())
@pytest.mark.parametrize("m,dsub,ksub", [(1, 1, 16), (3, 7, 16), (16, 8, 256), (7, 97, 256)])
def test_pq_lut_ip_matches_oracle(isa, m, dsub, ksub, rng):
    books = rng.normal(size=(m, ksub, dsub)).astype(np.float32)
    q = rng.normal(size=m * dsub).astype(np.float32)
    books_t = np.ascontiguousarray(books.transpose(0, 2, 1).reshape(m * dsub, ksub))
    got = _core._pq_lut_ip(isa, q, books_t, m)
    ref = -np.einsum("jcd,jd->jc", books.astype(np.float64), q.reshape(m, dsub).astype(np.float64))
    scale = np.einsum("jcd,jd->jc", np.abs(books.astype(np.float64)), np.abs(q.reshape(m, dsub)))
    assert got.shape == (m, ksub) and np.all(np.abs(got - ref) <= 2e-6 * scale + 1e-6)


@pytest.mark.parametrize("isa", isa_levels())
@pytest.mark.parametrize("m", [1, 3, 16, 32, 256])
def test_pq4_quantize_matches_oracle(isa, m, rng):
    lut = (rng.normal(size=(m, 16)) * rng.uniform(0.1, 10, size=(m, 1)) + rng.normal(size=(m, 1))).astype(np.float32)
    lut[0, 5] = lut[0].max() + 3  # the widest table sets the scale
    qtab, sum_min, scale = _core._pq4_quantize(isa, lut)
    lo = lut.astype(np.float64).min(1, keepdims=True)
    ref_scale = 255 / (lut.astype(np.float64).max(1, keepdims=True) - lo).max()
    assert scale == pytest.approx(ref_scale, rel=1e-6) and sum_min == pytest.approx(lo.sum(), rel=1e-5, abs=1e-5)
    ref = np.floor((lut - lo) * ref_scale + 0.5)
    got = np.zeros(((m + 1) // 2 * 2, 16), np.uint8)
    got[:] = qtab.reshape(-1, 2, 16).reshape(-1, 16)
    assert np.abs(got[:m].astype(int) - ref).max() <= 1 and (got[:m] == ref).mean() > 0.99
    assert got[:m].max() == 255 and got[:m].min(1).max() == 0
    if m % 2:
        assert np.all(got[m] == 0)  # the padding half is left as it was
    flat = np.full((2, 16), 7.0, np.float32)  # flat tables: scale 1, all entries 0
    qtab, sum_min, scale = _core._pq4_quantize(isa, flat)
    assert scale == 1 and sum_min == 14 and not qtab.any()


def pq4_pack(sub_codes):
    """(nblocks * 32, 2 * npairs) 4-bit sub-codes -> the block layout of pqscan.h, written independently."""
    nv, mm = sub_codes.shape
    npairs = mm // 2
    out = np.zeros((nv // 32, npairs * 32), np.uint8)
    for b in range(nv // 32):
        for j in range(mm):
            for i in range(16):
                lo, hi = sub_codes[32 * b + i, j], sub_codes[32 * b + 16 + i, j]
                out[b, (j // 2) * 32 + (j % 2) * 16 + i] = lo | (hi << 4)
    return out


@pytest.mark.parametrize("isa", isa_levels())
@pytest.mark.parametrize("npairs", [1, 3, 8, 16, 128])
def test_pq4_scan_matches_oracle(isa, npairs, rng):
    for nblocks in (1, 2, 3, 4):  # the AVX2 kernel takes blocks in pairs: both paths
        sub = rng.integers(0, 16, size=(nblocks * 32, 2 * npairs), dtype=np.uint8)
        tables = rng.integers(0, 256, size=(2 * npairs, 16), dtype=np.uint8)
        tables[0] = 255  # the largest entries everywhere: the uint16 sums must not wrap
        lut = tables.reshape(npairs, 2, 16).reshape(-1).copy()
        ref = tables.astype(np.int64)[np.arange(2 * npairs)[None, :], sub].sum(1)
        for thresh in (0, int(np.median(ref)), 65535):
            sums, masks = _core._pq4_scan(isa, pq4_pack(sub), lut, thresh)
            assert sums.dtype == np.uint16
            np.testing.assert_array_equal(sums.astype(np.int64), ref)
            bits = (masks[:, None] >> np.arange(32, dtype=np.uint32)) & 1
            np.testing.assert_array_equal(bits.reshape(-1).astype(bool), ref <= thresh)
    # all entries 255 with the most pairs: the largest sum there is
    sub = np.full((32, 256), 15, np.uint8)
    sums, masks = _core._pq4_scan(isa, pq4_pack(sub), np.full(128 * 32, 255, np.uint8), 65535)
    assert np.all(sums == 256 * 255) and masks[0] == 0xFFFFFFFF


def pad8_transposed(C, fill):
    """Ct (d, pad8(k)) of nearest.h, the pad columns set to `fill` (a point's
    own coordinates: a kernel that let a pad lane win would report 0)."""
    k, d = C.shape
    kp = (k + 7) // 8 * 8
    Ct = np.empty((d, kp), np.float32)
    Ct[:, :k] = C.T
    Ct[:, k:] = np.asarray(fill, np.float32)[:, None]
    return Ct


def nearest_oracle(X, C):
    D = ((X[:, None, :].astype(np.float64) - C[None, :, :].astype(np.float64)) ** 2).sum(-1)
    return D


@pytest.mark.parametrize("isa", isa_levels())
@pytest.mark.parametrize("d", range(1, 33))
def test_nearest_small_matches_oracle(isa, d, rng):
    for k in (1, 2, 5, 8, 13, 16, 24, 256, 257):
        C = rng.normal(size=(k, d)).astype(np.float32)
        for n in (0, 1, 3, 4, 7, 33):
            wide = rng.normal(size=(n, d + 3)).astype(np.float32)   # row stride ldx = d + 3
            X = wide[:, :d]
            Ct = pad8_transposed(C, X[0] if n else np.zeros(d))
            a, dist, dist2 = _core._nearest_small(isa, wide, d, Ct, k, True)
            a1, dist1, none = _core._nearest_small(isa, wide, d, Ct, k, False)
            assert none is None and a.dtype == np.int32 and dist.dtype == np.float32 and a.shape == (n,)
            np.testing.assert_array_equal(a1, a)
            np.testing.assert_array_equal(dist1, dist)
            if n == 0:
                continue
            D = nearest_oracle(X, C)
            S = np.sort(D, 1)
            # direct sums: float32 rounding relative to each distance itself
            np.testing.assert_allclose(dist, S[:, 0], rtol=1e-5, atol=1e-30)
            if k > 1:
                np.testing.assert_allclose(dist2, S[:, 1], rtol=1e-5, atol=1e-30)
                clear = S[:, 1] - S[:, 0] > 1e-5 * S[:, 1]
            else:
                assert np.all(np.isinf(dist2))
                clear = np.ones(n, bool)
            np.testing.assert_array_equal(a[clear], D.argmin(1)[clear])
            assert np.all(D[np.arange(n), a] <= S[:, 0] * (1 + 1e-5))


@pytest.mark.parametrize("isa", isa_levels())
def test_nearest_small_ties_go_to_the_lower_index(isa, rng):
    d = 8
    for k in (3, 13, 40):
        C = rng.normal(size=(k, d)).astype(np.float32)
        # copies of one centroid in the same lane (c, c + 8), in other lanes
        # and in the last, partly padded vector: the lowest index must win
        for lo, hi in ((0, 1), (1, k - 1), (2, min(10, k - 1)), (k - 2, k - 1)):
            if lo >= hi:
                continue
            Cd = C.copy()
            Cd[hi] = Cd[lo]
            X = np.vstack([Cd[lo], Cd[lo] + 0.01, rng.normal(size=(5, d))]).astype(np.float32)
            a, dist, dist2 = _core._nearest_small(isa, X, d, pad8_transposed(Cd, np.full(d, 1e3)), k, True)
            D = nearest_oracle(X, Cd)
            np.testing.assert_array_equal(a, D.argmin(1))    # numpy's argmin takes the first too
            assert a[0] == lo and dist[0] == 0 and dist2[0] == 0   # the copy is the runner-up, at 0
            assert a[1] == lo and dist2[1] == dist[1]


@pytest.mark.parametrize("isa", isa_levels())
def test_nearest_small_keeps_the_digits_of_near_points(isa, rng):
    """Far from the origin, the |x|^2 - 2 x.c + |c|^2 identity cancels away a
    near point's distance; the direct sum keeps it to float32 rounding."""
    d, k = 16, 64
    C = (1000 + rng.normal(size=(k, d))).astype(np.float32)
    X = (C[rng.integers(0, k, 50)] + rng.normal(size=(50, d)) * 1e-3).astype(np.float32)
    a, dist, dist2 = _core._nearest_small(isa, X, d, pad8_transposed(C, np.zeros(d)), k, True)
    D = nearest_oracle(X, C)
    np.testing.assert_array_equal(a, D.argmin(1))
    np.testing.assert_allclose(dist, D.min(1), rtol=1e-5)
    assert dist.min() > 0


@pytest.mark.parametrize("isa", isa_levels())
def test_nearest_small_answers_do_not_depend_on_the_batch(isa, rng):
    """Points go through the kernel in groups (4 at a time on AVX2): a point's
    answer must be bit for bit the same alone, which is what keeps k-means and
    PQ the same on any thread count."""
    for d in (4, 8, 11, 16, 32):
        C = rng.normal(size=(100, d)).astype(np.float32)
        X = rng.normal(size=(23, d)).astype(np.float32)
        Ct = pad8_transposed(C, np.zeros(d))
        a, dist, dist2 = _core._nearest_small(isa, X, d, Ct, 100, True)
        for i in (0, 5, 22):
            ai, di, d2i = _core._nearest_small(isa, X[i:i + 1], d, Ct, 100, True)
            assert ai[0] == a[i] and di[0] == dist[i] and d2i[0] == dist2[i]


def test_nearest_small_hook_checks_shapes():
    with pytest.raises(ValueError, match="pad8"):
        _core._nearest_small("serial", np.zeros((2, 4), np.float32), 4, np.zeros((4, 5), np.float32), 5, False)
    with pytest.raises(ValueError, match="pad8"):
        _core._nearest_small("serial", np.zeros((2, 40), np.float32), 33, np.zeros((33, 8), np.float32), 5, False)
