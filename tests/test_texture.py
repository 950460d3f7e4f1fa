"""LBP texture (imgsearch.features.LBP) and the colour + texture extractor
(ColorLBP, "colorhist+lbp") against an independent NumPy implementation of
Ojala et al.'s LBP^riu2_{P,R}, hand-computed patterns, and the rotation
invariance the definition promises.

Every image is made here, with NumPy (and Pillow for encoded files).
"""
import io
import json
import os

import numpy as np
import pytest

import imgsearch
from imgsearch import _core, features
from imgsearch.image import ImageDecodeError
from imgfolder import make_folder

# ---------------------------------------------------------------------------
# The oracle: the paper's definition, written the plain way
# ---------------------------------------------------------------------------

NEAR_TIE = 1e-3  # float32 (C) and float64 (here) may order a sample and its centre differently below this


def ref_lbp_codes(grey, P, R):
    """LBP^riu2_{P,R} of every pixel of a 2-D float image, and a mask of the
    pixels whose code depends on rounding (a sample that is interpolated
    from unequal pixels lies within NEAR_TIE of the centre).

    g_p is sampled at (y - R sin(2 pi p / P), x + R cos(2 pi p / P)) by
    bilinear interpolation of the four surrounding pixels, coordinates
    clamped to the image (the border repeats); s_p = g_p >= g_c; the code is
    sum(s_p) when the circular sequence has at most two changes, else P + 1.
    """
    g = np.asarray(grey, np.float64)
    h, w = g.shape
    yy, xx = np.mgrid[0:h, 0:w]
    bits, ambiguous = [], np.zeros((h, w), bool)
    for p in range(P):
        a = 2 * np.pi * p / P
        dy, dx = -R * np.sin(a), R * np.cos(a)
        dy, dx = [np.round(d) if abs(d - np.round(d)) < 1e-6 else d for d in (dy, dx)]
        y0, x0 = np.floor(dy), np.floor(dx)
        fy, fx = dy - y0, dx - x0
        iy0 = np.clip(yy + int(y0), 0, h - 1)
        iy1 = np.clip(yy + int(y0) + 1, 0, h - 1)
        ix0 = np.clip(xx + int(x0), 0, w - 1)
        ix1 = np.clip(xx + int(x0) + 1, 0, w - 1)
        corners = [g[iy0, ix0], g[iy0, ix1], g[iy1, ix0], g[iy1, ix1]]
        weights = [(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx]
        used = [c for c, wt in zip(corners, weights) if wt > 0]
        exact = np.all([c == used[0] for c in used], axis=0)  # one pixel, or equal ones: no rounding
        v = np.where(exact, used[0], sum(wt * c for wt, c in zip(weights, corners)))
        ambiguous |= ~exact & (np.abs(v - g) < NEAR_TIE)
        bits.append(v >= g)
    s = np.array(bits, np.int64)
    ones = s.sum(0)
    changes = np.abs(s - np.roll(s, 1, axis=0)).sum(0)
    return np.where(changes <= 2, ones, P + 1), ambiguous


def ref_grey(rgb):
    """601 luma in float32, in the order the C core adds it."""
    x = rgb.astype(np.float32)
    return np.float32(0.299) * x[..., 0] + np.float32(0.587) * x[..., 1] + np.float32(0.114) * x[..., 2]


def ref_lbp_histograms(rgb, scales, grid):
    """Per-(cell, scale) L1 histograms of an image used at its own size, in
    the C core's layout: levels, cells row-major, scales, bins.  Returns them
    and the number of near-tie pixels (each may sit in a neighbouring bin)."""
    g = ref_grey(rgb)
    h, w = g.shape
    codes = [ref_lbp_codes(g, P, R) for P, R in scales]
    blocks, n_amb = [], sum(int(a.sum()) for _, a in codes)
    for c in grid:
        cy = np.arange(h)[:, None] * c // h
        cx = np.arange(w)[None, :] * c // w
        for i in range(c):
            for j in range(c):
                cell = (cy == i) & (cx == j)
                for (P, _), (code, _) in zip(scales, codes):
                    hist = np.bincount(code[cell], minlength=P + 2).astype(np.float64)
                    blocks.append(hist / max(hist.sum(), 1))
    return np.concatenate(blocks), n_amb


def raw_lbp(items, scales, grid, side, threads=1):
    """The C core's per-block L1 histograms, before any Python normalisation."""
    return _core._image_features([(4, (side, tuple((P, float(R)) for P, R in scales), tuple(grid)))], items,
                                 threads)


SCALES = [(4, 1), (8, 1), (8, 2), (12, 1.5), (16, 2), (24, 3), (8, 2.5), (32, 5)]


# ---------------------------------------------------------------------------
# Codes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("P,R", SCALES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 3), (13, 17), (40, 31)])
def test_codes_match_numpy(P, R, shape):
    rng = np.random.default_rng(P * 100 + shape[0] * 7 + shape[1])
    for grey, most_ambiguous in ((rng.random(shape, dtype=np.float32) * 255, 0.02),  # continuous: no ties
                                 (rng.integers(0, 6, shape).astype(np.float32), 0.3)):  # few levels: many ties
        codes = _core._lbp_codes(grey, P, R)
        ref, amb = ref_lbp_codes(grey, P, R)
        assert codes.shape == shape and codes.dtype == np.uint8
        assert codes.max() <= P + 1
        np.testing.assert_array_equal(codes[~amb], ref[~amb])
        assert amb.mean() <= most_ambiguous


def test_flat_image_is_all_in_the_all_equal_bin():
    for P, R in SCALES:
        codes = _core._lbp_codes(np.full((7, 5), 42.5, np.float32), P, R)
        assert (codes == P).all()  # every sample >= the centre: P ones, no change
    flat = np.full((30, 20, 3), 90, np.uint8)
    h, failed = raw_lbp([flat], [(8, 1), (16, 2)], (1, 2), 256)
    assert failed == []
    block = np.zeros(10)
    block[8] = 1
    block16 = np.zeros(18)
    block16[16] = 1
    np.testing.assert_array_equal(h[0], np.tile(np.concatenate([block, block16]), 5))


def test_hand_computed_patterns():
    # P = 4, R = 1 samples right, up, left, down: the grid itself
    def centre_code(img, P=4, R=1):
        return int(_core._lbp_codes(np.asarray(img, np.float32), P, R)[1, 1])

    assert centre_code([[0, 1, 0], [9, 5, 9], [0, 1, 0]]) == 5      # bits 1,0,1,0: four changes -> P + 1
    assert centre_code([[0, 9, 0], [1, 5, 9], [0, 1, 0]]) == 2      # bits 1,1,0,0: one run of ones -> 2
    assert centre_code([[0, 1, 0], [1, 5, 1], [0, 1, 0]]) == 0      # a bright spot: no ones
    assert centre_code([[0, 9, 0], [9, 5, 9], [0, 9, 0]]) == 4      # a dark spot: all ones
    assert centre_code([[0, 5, 0], [5, 5, 5], [0, 5, 0]]) == 4      # equal counts as brighter
    # P = 8, R = 1 across a vertical edge (left column dark): right 1, up-right 1 (all four
    # pixels 10), up 1, up-left 0 (2.93 < 10), left 0, down-left 0, down 1, down-right 1
    edge = [[0, 10, 10], [0, 10, 10], [0, 10, 10]]
    assert centre_code(edge, 8, 1) == 5
    # a line through the centre: two runs of ones -> non-uniform
    assert centre_code([[0, 0, 0], [9, 5, 9], [0, 0, 0]], 8, 1) == 9


# ---------------------------------------------------------------------------
# Rotation invariance and histograms
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_rotation_by_90_degrees_keeps_the_histogram(seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (24, 33, 3), dtype=np.uint8)
    # side = the longest side: no resampling, the rotated grid is the same grid
    for P in (4, 8):
        ext = features.LBP(scales=[(P, 1)], grid=(1,), side=33, norm="l1")
        ref = ext.extract([img])[0]
        for k in (1, 2, 3):
            np.testing.assert_array_equal(ext.extract([np.ascontiguousarray(np.rot90(img, k))])[0], ref)
    # P = 4: every sample is a pixel, so the codes themselves rotate
    g = ref_grey(img)
    np.testing.assert_array_equal(_core._lbp_codes(np.ascontiguousarray(np.rot90(g)), 4, 1),
                                  np.rot90(_core._lbp_codes(g, 4, 1)))


@pytest.mark.parametrize("grid", [(1,), (1, 2), (1, 2, 3), (3,)])
def test_histograms_match_numpy(grid):
    rng = np.random.default_rng(len(grid) * 10 + grid[-1])
    img = rng.integers(0, 256, (27, 38, 3), dtype=np.uint8)
    scales = [(8, 1), (16, 2), (24, 3)]
    h, failed = raw_lbp([img], scales, grid, side=38)
    ref, n_amb = ref_lbp_histograms(img, scales, grid)
    cells = sum(c * c for c in grid)
    assert failed == [] and h.shape == (1, cells * (10 + 18 + 26))
    smallest_cell = (27 // grid[-1]) * (38 // grid[-1])
    np.testing.assert_allclose(h[0], ref, atol=n_amb / smallest_cell + 1e-6)
    sums = h[0].reshape(cells, -1)
    np.testing.assert_allclose(sums[:, :10].sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(sums[:, 10:28].sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(sums[:, 28:].sum(1), 1, rtol=1e-6)


def test_working_size_shrinks_and_never_enlarges():
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (20, 32, 3), dtype=np.uint8)
    twice = np.repeat(np.repeat(img, 2, 0), 2, 1)  # area averaging back to 32 wide gives img exactly
    scales, grid = [(8, 1), (16, 2)], (1, 2)
    small, _ = raw_lbp([img], scales, grid, side=32)
    big, _ = raw_lbp([twice], scales, grid, side=32)
    np.testing.assert_array_equal(big, small)
    never_enlarged, _ = raw_lbp([img], scales, grid, side=256)
    np.testing.assert_array_equal(never_enlarged, small)


def test_normalisations():
    rng = np.random.default_rng(8)
    imgs = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(3)]
    scales, grid = [(8, 1), (16, 2)], (1, 2)
    raw = raw_lbp(imgs, scales, grid, side=256)[0].astype(np.float64)
    hell = features.LBP(scales=scales, grid=grid, norm="hellinger")
    l1 = features.LBP(scales=scales, grid=grid, norm="l1")
    l2 = features.LBP(scales=scales, grid=grid, norm="l2")
    assert (hell.metric, l1.metric, l2.metric) == ("l2", "l1", "l2")
    np.testing.assert_allclose(hell.extract(imgs), np.sqrt(raw) / np.sqrt(10), rtol=1e-5)  # 10 blocks
    np.testing.assert_allclose(l1.extract(imgs), raw / raw.sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(l2.extract(imgs), raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(hell.extract(imgs), axis=1), 1, rtol=1e-5)


def test_an_image_narrower_than_its_grid_leaves_empty_cells_at_zero():
    strip = np.random.default_rng(9).integers(0, 256, (40, 1, 3), dtype=np.uint8)
    h, failed = raw_lbp([strip], [(8, 1)], (1, 2), side=64)
    cells = h[0].reshape(5, 10)
    assert failed == []
    np.testing.assert_allclose(cells[[0, 1, 3]].sum(1), 1, rtol=1e-6)  # whole image, left column of 2 x 2
    assert (cells[[2, 4]] == 0).all()                                  # the right column has no pixel
    v = features.LBP(scales=[(8, 1)], grid=(1, 2)).extract([strip])
    np.testing.assert_allclose(np.linalg.norm(v), 1, rtol=1e-5)


def test_threads_give_identical_rows():
    rng = np.random.default_rng(10)
    imgs = [rng.integers(0, 256, (int(rng.integers(5, 90)), int(rng.integers(5, 90)), 3), dtype=np.uint8)
            for _ in range(12)]
    ext = features.ColorLBP()
    np.testing.assert_array_equal(ext.extract(imgs, threads=1), ext.extract(imgs, threads=2))


# ---------------------------------------------------------------------------
# The combined extractor, configs, the registry, the engine
# ---------------------------------------------------------------------------

def centre_window(img, f):
    h, w = img.shape[:2]
    ww, wh = max(1, int(np.floor(w * f + 0.5))), max(1, int(np.floor(h * f + 0.5)))
    x0, y0 = (w - ww) // 2, (h - wh) // 2
    return np.ascontiguousarray(img[y0:y0 + wh, x0:x0 + ww])


def unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.mark.parametrize("weight,centre,centre_weight", [(0.0, 0.0, 1.0), (0.5, 0.0, 1.0), (2.5, 0.0, 1.0),
                                                         (2.0, 0.4, 2.0), (1.0, 0.5, 0.0), (0.0, 0.3, 3.0),
                                                         (1.0, 1.0, 5.0)])
def test_combined_is_the_weighted_concatenation(weight, centre, centre_weight):
    rng = np.random.default_rng(11)
    imgs = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), rng.integers(0, 256, (64, 47, 3), dtype=np.uint8)]
    kw = dict(scales=[(8, 1), (16, 2)], grid=(1, 2), side=64)
    both = features.ColorLBP(weight=weight, bins=(6, 3, 3), centre=centre, centre_weight=centre_weight, **kw)
    colour = features.ColorHistogram(bins=(6, 3, 3), sqrt=True)
    c = colour.extract(imgs).astype(np.float64)
    if 0 < centre < 1:  # the window, cut out here, through the plain colour histogram
        c = unit(np.hstack([c, centre_weight * colour.extract([centre_window(im, centre) for im in imgs])]))
    t = features.LBP(norm="hellinger", **kw).extract(imgs).astype(np.float64)
    ref = unit(np.hstack([c, weight * t]))
    v = both.extract(imgs)
    n_colour = 2 if 0 < centre < 1 else 1
    assert v.shape == (2, both.dim) and both.dim == n_colour * 54 + 5 * 28 and both.metric == "l2"
    np.testing.assert_allclose(v, ref, rtol=1e-5, atol=1e-7)


def test_configs_round_trip_and_the_registry():
    arr = np.random.default_rng(12).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert {"lbp", "colorhist+lbp"} <= set(features.registered())
    for ext in (features.LBP(), features.LBP(scales=[(8, 1.5)], grid=(2,), side=128, norm="l1"),
                features.ColorLBP(),
                features.ColorLBP(weight=0.25, bins=(4, 2, 2), centre=0, scales=[(8, 1)], grid=(1,))):
        cfg = json.loads(json.dumps(ext.config()))
        again = features.from_config(cfg)
        assert type(again) is type(ext) and again.config() == cfg and again.dim == ext.dim
        assert imgsearch.extractors.from_config(cfg).config() == cfg
        np.testing.assert_array_equal(again.extract([arr]), ext.extract([arr]))
        assert features.get_extractor(cfg["name"], **{k: v for k, v in cfg.items() if k != "name"}).dim == ext.dim
    assert features.get_extractor("lbp").name == "lbp"
    assert features.get_extractor("colorhist+lbp").name == "colorhist+lbp"


def test_engine_end_to_end(tmp_path):
    good, labels, bad = make_folder(str(tmp_path / "imgs"), np.random.default_rng(13), per_class=4)
    engine = imgsearch.ImageSearch(extractor="colorhist+lbp", index="flat")
    engine.add(str(tmp_path / "imgs"))
    assert len(engine) == len(good)
    hits = engine.search(good[:1], k=3, exclude_self=False)
    assert hits.paths[0][0] == os.path.abspath(good[0]) and hits.distances[0, 0] == pytest.approx(0, abs=1e-6)
    feats = engine.extractor.extract(good).astype(np.float64)
    d = ((feats - feats[0]) ** 2).sum(1)
    np.testing.assert_allclose(hits.distances[0], np.sort(d)[:3], rtol=1e-4, atol=1e-5)
    scores = engine.evaluate(labels=labels)
    assert scores["mAP"] > 0.5  # three clearly different colours
    path = engine.save(str(tmp_path / "e.isx"))
    again = imgsearch.ImageSearch.load(path)
    assert again.extractor.config() == engine.extractor.config()
    q = engine.extractor.extract([good[1]])
    np.testing.assert_array_equal(again.index.search(q, k=4)[1], engine.index.search(q, k=4)[1])
    texture = imgsearch.ImageSearch(extractor="lbp", index="hnsw")
    texture.add(good)
    assert texture.search(good[2:3], k=1, exclude_self=False).paths[0][0] == os.path.abspath(good[2])


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

def test_bad_parameters_are_clear_errors():
    bad = [dict(scales=[(3, 1)]), dict(scales=[(33, 1)]), dict(scales=[(8, 0)]), dict(scales=[(8, 17)]),
           dict(scales=[(8, float("nan"))]), dict(scales=[]), dict(scales=[(8, 1)] * 5), dict(scales="8,1"),
           dict(scales=[(8.5, 1)]), dict(grid=()), dict(grid=(0,)), dict(grid=(9,)), dict(grid=(1, 2, 3, 4, 5)),
           dict(grid=(1.5,)), dict(side=4), dict(side=5000), dict(side=256.0), dict(norm="chi2")]
    for kw in bad:
        with pytest.raises(ValueError, match=next(iter(kw))):
            features.LBP(**kw)
    for w in (-1, float("nan"), float("inf"), "heavy", None):
        with pytest.raises(ValueError, match="weight"):
            features.ColorLBP(weight=w)
        with pytest.raises(ValueError, match="centre_weight"):
            features.ColorLBP(centre_weight=w)
    for f in (-0.1, 1.5, float("nan"), "middle"):
        with pytest.raises(ValueError, match="centre"):
            features.ColorLBP(centre=f)
    with pytest.raises(ValueError, match="centre fraction"):
        _core._image_features([(1, (8, 4, 4, 1.5))], [np.zeros((8, 8, 3), np.uint8)], 1)
    # the C core checks on its own, whatever the caller
    img = np.zeros((8, 8, 3), np.uint8)
    for params, match in [((256, ((40, 1.0),), (1,)), "P=40"), ((256, ((8, float("nan")),), (1,)), "R=nan"),
                          ((256, ((8, 1.0),), (0,)), "cells per side"), ((2, ((8, 1.0),), (1,)), "working side"),
                          ((256, (), (1,)), "1..4"), ((256, ((8, 1.0),), ()), "1..4 levels")]:
        with pytest.raises(ValueError, match=match):
            _core._image_features([(4, params)], [img], 1)
    with pytest.raises(TypeError):
        _core._image_features([(4, (256, "x", (1,)))], [img], 1)
    with pytest.raises(TypeError):
        _core._image_features([(4, (256, [[8, 1.0]], (1,)))], [img], 1)  # a scale must be a tuple
    with pytest.raises(TypeError):
        _core._image_features([(1, [8, 4, 4])], [img], 1)
    with pytest.raises(ValueError, match="unknown feature kind"):
        _core._image_features([(99, ())], [img], 1)
    with pytest.raises(ValueError, match="cannot be combined"):
        _core._image_features([(2, ()), (4, (256, ((8, 1.0),), (1,)))], [img], 1)
    with pytest.raises(ValueError, match="1..4 feature specs"):
        _core._image_features([], [img], 1)
    for P, R in [(3, 1), (8, 0), (8, 20)]:
        with pytest.raises(ValueError, match="expected 4 <= P"):
            _core._lbp_codes(np.zeros((4, 4), np.float32), P, R)
    with pytest.raises(ValueError, match="at least 1 x 1"):
        _core._lbp_codes(np.zeros((0, 4), np.float32), 8, 1)
    with pytest.raises(ValueError):
        _core._lbp_codes(np.zeros((2, 3, 4), np.float32), 8, 1)


def test_bad_images_are_reported_not_crashing(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(14)
    good = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(good).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    items = [good, jpeg[: len(jpeg) // 3], b"\x89PNG\r\n\x1a\n" + bytes(40), str(tmp_path / "missing.png"),
             np.zeros((0, 5, 3), np.uint8), np.zeros((5, 0, 3), np.uint8), np.zeros((4, 4), np.float64), 17, jpeg]
    for ext in (features.LBP(), features.ColorLBP()):
        out, failed = ext.extract_files(items)
        assert out.shape == (2, ext.dim) and np.isfinite(out).all()
        assert [f[0] for f in failed] == [1, 2, 3, 4, 5, 6, 7]
        assert all(reason for _, _, reason in failed)
        with pytest.raises(ImageDecodeError):
            ext.extract([good, jpeg[:100]])
        with pytest.raises(FileNotFoundError):
            ext.extract([str(tmp_path / "missing.png")])
        with pytest.raises(ValueError):
            ext.extract([np.zeros((0, 5, 3), np.uint8)])


def test_corrupted_files_fail_cleanly():
    from PIL import Image
    rng = np.random.default_rng(15)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cases = []
    for fmt in ("JPEG", "PNG", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, fmt)
        data = buf.getvalue()
        for k in range(30):
            b = bytearray(data)
            if k % 3 == 0:
                b = b[: int(rng.integers(0, len(b)))]
            else:
                for _ in range(int(rng.integers(1, 9))):
                    p = int(rng.integers(0, min(len(b), 64 if k % 3 == 1 else len(b))))
                    b[p] = int(rng.integers(0, 256))
            cases.append(bytes(b))
    out, failed = features.ColorLBP().extract_files(cases, threads=2)
    assert out.shape[0] + len(failed) == len(cases) and np.isfinite(out).all()
