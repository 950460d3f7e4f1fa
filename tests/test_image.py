"""The image pipeline (imgsearch.image) and the classic features
(imgsearch.features) against independent oracles: Pillow for decoding and
EXIF orientation, NumPy for resampling, preprocessing, histograms and hashes.

Every image is made here, with NumPy and Pillow (no downloads).
"""
import errno
import io
import os
import pickle
import struct
import zlib

import numpy as np
import pytest

import imgsearch
from imgsearch import features, image
from imgsearch.image import ImageDecodeError

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageOps  # noqa: E402


# ---------------------------------------------------------------------------
# Test images
# ---------------------------------------------------------------------------

def photo_like(h, w, seed=0):
    """A smooth random colour field plus a little noise: compresses like a
    photograph (JPEG errors stay small) and has structure at every scale."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(max(2, h // 16 + 2), max(2, w // 16 + 2), 3))
    ys = np.linspace(0, coarse.shape[0] - 1, h)
    xs = np.linspace(0, coarse.shape[1] - 1, w)
    y0 = np.floor(ys).astype(int).clip(0, coarse.shape[0] - 2)
    x0 = np.floor(xs).astype(int).clip(0, coarse.shape[1] - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    c = coarse
    img = (c[y0][:, x0] * (1 - fy) * (1 - fx) + c[y0 + 1][:, x0] * fy * (1 - fx)
           + c[y0][:, x0 + 1] * (1 - fy) * fx + c[y0 + 1][:, x0 + 1] * fy * fx)
    img += rng.normal(0, 4, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(arr_or_img, fmt, **kw):
    im = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def pil_rgb(data):
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def png_chunk(tag, payload):
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)


def png_bytes(arr, bit_depth, color_type):
    """A PNG written by hand (Pillow cannot write 16-bit RGB): arr is
    (H, W, C) of uint8 or uint16, rows filtered with filter type 0."""
    h, w = arr.shape[:2]
    raw = arr.astype(">u2").tobytes() if bit_depth == 16 else arr.astype(np.uint8).tobytes()
    row = len(raw) // h
    data = b"".join(b"\x00" + raw[y * row:(y + 1) * row] for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(data)) + png_chunk(b"IEND", b"")


def psd_bytes(arr):
    """A minimal uncompressed 8-bit RGB PSD (Pillow cannot write PSD)."""
    h, w, _ = arr.shape
    header = b"8BPS" + struct.pack(">H6sHIIHH", 1, b"\0" * 6, 3, h, w, 8, 3)
    planar = np.ascontiguousarray(arr.transpose(2, 0, 1)).tobytes()
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + planar


def composite_white(rgba):
    """Exact reference: round((c * a + 255 * (255 - a)) / 255)."""
    c = rgba[..., :3].astype(np.int64)
    a = rgba[..., 3:4].astype(np.int64)
    v = c * a + 255 * (255 - a)
    return ((2 * v + 255) // 510).astype(np.uint8)


# ---------------------------------------------------------------------------
# Decoding: pixels equal Pillow's
# ---------------------------------------------------------------------------

RGB = photo_like(37, 53, seed=1)


def test_png_rgb8_equals_pillow():
    data = encode(RGB, "PNG")
    out = image.load(data)
    assert out.dtype == np.uint8 and out.shape == (37, 53, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, pil_rgb(data))
    np.testing.assert_array_equal(out, RGB)


def test_png_rgb16_keeps_high_byte_like_pillow():
    rng = np.random.default_rng(2)
    arr16 = rng.integers(0, 65536, size=(19, 23, 3), dtype=np.uint16)
    data = png_bytes(arr16, 16, 2)
    out = image.load(data)
    np.testing.assert_array_equal(out, (arr16 >> 8).astype(np.uint8))
    np.testing.assert_array_equal(out, pil_rgb(data))


def test_png_grey16_keeps_high_byte():
    rng = np.random.default_rng(3)
    g16 = rng.integers(0, 65536, size=(11, 17, 1), dtype=np.uint16)
    out = image.load(png_bytes(g16, 16, 0))
    np.testing.assert_array_equal(out, np.repeat((g16 >> 8).astype(np.uint8), 3, axis=2))


def test_png_grey8_equals_pillow():
    grey = RGB[..., 1].copy()
    data = encode(grey, "PNG")
    out = image.load(data)
    np.testing.assert_array_equal(out, pil_rgb(data))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


def test_png_rgba_composited_on_white():
    rng = np.random.default_rng(4)
    rgba = np.concatenate([RGB, rng.integers(0, 256, size=RGB.shape[:2] + (1,), dtype=np.uint8)], axis=2)
    rgba[0, :, 3] = 0      # fully transparent row: white
    rgba[1, :, 3] = 255    # opaque row: the colour itself
    data = encode(rgba, "PNG")
    out = image.load(data)
    expected = composite_white(rgba)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[0], 255)
    np.testing.assert_array_equal(out[1], RGB[1])
    white = Image.new("RGBA", (rgba.shape[1], rgba.shape[0]), (255, 255, 255, 255))
    pillow = np.asarray(Image.alpha_composite(white, Image.fromarray(rgba)).convert("RGB"))
    assert np.abs(out.astype(int) - pillow).max() <= 1


def test_grey_alpha_png_composited_on_white():
    rng = np.random.default_rng(5)
    la = rng.integers(0, 256, size=(9, 14, 2), dtype=np.uint8)
    out = image.load(png_bytes(la, 8, 4))
    rgba = np.concatenate([np.repeat(la[..., :1], 3, axis=2), la[..., 1:]], axis=2)
    np.testing.assert_array_equal(out, composite_white(rgba))


def test_palette_png_equals_pillow():
    pal = Image.fromarray(RGB).quantize(colors=37)
    data = encode(pal, "PNG")
    np.testing.assert_array_equal(image.load(data), pil_rgb(data))


@pytest.mark.parametrize("fmt", ["BMP", "PPM"])
def test_bmp_and_ppm_equal_pillow(fmt):
    data = encode(RGB, fmt)
    np.testing.assert_array_equal(image.load(data), RGB)
    np.testing.assert_array_equal(image.load(data), pil_rgb(data))


def test_pgm_equals_pillow():
    data = encode(RGB[..., 0].copy(), "PPM")  # mode L is written as P5
    assert data[:2] == b"P5"
    np.testing.assert_array_equal(image.load(data), pil_rgb(data))


def test_gif_first_frame_equals_pillow():
    frames = [Image.fromarray(photo_like(21, 30, seed=s)).quantize(colors=64) for s in (6, 7)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        assert getattr(im, "n_frames", 1) == 2
        first = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(image.load(data), first)


# ---------------------------------------------------------------------------
# WebP (libwebp) and the formats we recognise but do not decode
# ---------------------------------------------------------------------------

needs_webp = pytest.mark.skipif(not imgsearch._core._HAVE_WEBP, reason="this build has no libwebp (libwebp-dev)")


def webp_exif(arr, orientation, **kw):
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "imgsearch test"
    return encode(arr, "WEBP", exif=exif.tobytes(), **kw)


def pil_rgba(data):
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGBA"))


@needs_webp
def test_webp_lossless_equals_the_pixels_and_pillow():
    data = encode(RGB, "WEBP", lossless=True)
    out = image.load(data)
    assert out.shape == (37, 53, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, RGB)
    np.testing.assert_array_equal(out, pil_rgb(data))


@needs_webp
@pytest.mark.parametrize("quality", [30, 90])
def test_webp_lossy_matches_pillow(quality):
    arr = photo_like(61, 90, seed=40)
    data = encode(arr, "WEBP", quality=quality)
    out = image.load(data)
    theirs = pil_rgb(data).astype(int)
    assert out.shape == theirs.shape
    assert np.abs(out.astype(int) - theirs).max() <= 2  # libwebp builds may round the upsampling apart
    assert np.abs(out.astype(int) - arr.astype(int)).mean() < 12  # and it is the picture, not noise


@needs_webp
@pytest.mark.parametrize("lossless", [True, False])
def test_webp_alpha_composited_on_white_like_pillow(lossless):
    rng = np.random.default_rng(41)
    rgba = np.dstack([RGB, rng.integers(0, 256, size=RGB.shape[:2], dtype=np.uint8)])
    rgba[0, :, 3] = 0
    rgba[1, :, 3] = 255
    data = encode(rgba, "WEBP", lossless=lossless, quality=90)
    out = image.load(data)
    np.testing.assert_array_equal(out, composite_white(pil_rgba(data)))  # Pillow's RGBA, our compositing
    np.testing.assert_array_equal(out[0], 255)  # transparent: white, whatever the colour
    if lossless:
        np.testing.assert_array_equal(out, composite_white(rgba))


@needs_webp
@pytest.mark.parametrize("orientation", range(1, 9))
def test_webp_exif_orientation_matches_pillow(orientation):
    arr = photo_like(24, 40, seed=42)
    data = webp_exif(arr, orientation, lossless=True)
    assert imgsearch._core._exif_orientation(data) == orientation
    with Image.open(io.BytesIO(data)) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(image.load(data), expected)


@needs_webp
def test_webp_through_batches_and_features(tmp_path):
    p = tmp_path / "a.webp"
    p.write_bytes(encode(RGB, "WEBP", lossless=True))
    batch, failed = image.load_batch([str(p), str(p)], size=16, resize=20, threads=2)
    assert failed == [] and batch.shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(features.DHash().extract([str(p)]), features.DHash().extract([RGB]))


def vp8l_with_size(data, w, h):
    """A lossless WebP whose VP8L header claims w x h (the header is not checksummed)."""
    b = bytearray(data)
    i = bytes(b).index(b"VP8L") + 8
    assert b[i] == 0x2F
    bits = struct.unpack_from("<I", b, i + 1)[0]
    bits = (bits & ~0xFFFFFFF) | ((w - 1) & 0x3FFF) | (((h - 1) & 0x3FFF) << 14)
    struct.pack_into("<I", b, i + 1, bits)
    return bytes(b)


@needs_webp
def test_hostile_webp_fails_cleanly():
    data = encode(RGB, "WEBP", lossless=True)
    with pytest.raises(ImageDecodeError, match="megapixels"):
        image.load(vp8l_with_size(data, 16383, 16383))  # 268 MP claimed by a 2 kB file: refused from the header
    lossy = encode(photo_like(40, 60, seed=43), "WEBP", quality=80)
    for d in (data, lossy):
        for cut in (11, 12, 20, 30, len(d) // 2, len(d) - 1):
            with pytest.raises(ImageDecodeError, match="WebP|not a recognised|empty"):
                image.load(d[:cut])
        broken = bytearray(d)
        broken[4:8] = struct.pack("<I", 0xFFFFFFF0)  # RIFF size beyond the file
        with pytest.raises(ImageDecodeError):
            image.load(bytes(broken))
    with pytest.raises(ImageDecodeError, match="truncated WebP"):
        image.load(lossy[: len(lossy) * 2 // 3])


@needs_webp
def test_animated_webp_is_refused_with_a_reason():
    frames = [Image.fromarray(photo_like(20, 30, seed=s)) for s in (44, 45)]
    buf = io.BytesIO()
    try:
        frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    except (OSError, ValueError) as e:
        pytest.skip(f"this Pillow cannot write animated WebP: {e}")
    with pytest.raises(ImageDecodeError, match="animated WebP is not supported"):
        image.load(buf.getvalue())


def test_webp_without_libwebp_says_how_to_get_it():
    if imgsearch._core._HAVE_WEBP:
        pytest.skip("this build has libwebp: the message for a build without it is checked by building one")
    with pytest.raises(ImageDecodeError, match="built without libwebp.*libwebp-dev"):
        image.load(encode(RGB, "WEBP"))


def test_tiff_and_heif_are_named_not_quoted_as_bytes():
    for kw in ({}, {"compression": "tiff_lzw"}):
        with pytest.raises(ImageDecodeError, match=r"TIFF is not supported \(convert to PNG or JPEG\)"):
            image.load(encode(RGB, "TIFF", **kw))
    big_endian = b"MM\x00\x2a" + bytes(60)
    with pytest.raises(ImageDecodeError, match="TIFF is not supported"):
        image.load(big_endian)
    heic = struct.pack(">I", 24) + b"ftypheic" + bytes(40)
    with pytest.raises(ImageDecodeError, match="HEIF/AVIF is not supported"):
        image.load(heic)


def test_tga_by_name_and_footer(tmp_path):
    data = encode(RGB, "TGA")
    path = tmp_path / "a.tga"
    path.write_bytes(data)
    expected = pil_rgb(data)
    np.testing.assert_array_equal(image.load(str(path)), expected)
    np.testing.assert_array_equal(image.load(path), RGB)  # os.PathLike
    if data[-18:-1] == b"TRUEVISION-XFILE.":
        np.testing.assert_array_equal(image.load(data), expected)
    # without footer and without a .tga name, a TGA is not guessed
    plain = data[:-26] if data[-18:-1] == b"TRUEVISION-XFILE." else data
    other = tmp_path / "a.bin"
    other.write_bytes(plain)
    with pytest.raises(ImageDecodeError, match="not a recognised image format"):
        image.load(str(other))


def test_psd_composite():
    np.testing.assert_array_equal(image.load(psd_bytes(RGB)), RGB)


def test_jpeg_within_tolerance_of_pillow():
    big = photo_like(300, 410, seed=8)
    for subsampling in (0, 2):  # 4:4:4 and 4:2:0
        data = encode(big, "JPEG", quality=92, subsampling=subsampling)
        out = image.load(data)
        ref = pil_rgb(data).astype(int)
        assert out.shape == ref.shape
        diff = np.abs(out.astype(int) - ref)
        assert diff.mean() < 0.5 and diff.max() <= 8, (subsampling, diff.mean(), diff.max())
        # and close to what was encoded
        assert np.abs(out.astype(int) - big).mean() < 4


def test_grey_jpeg_to_rgb():
    grey = photo_like(40, 60, seed=9)[..., 0].copy()
    data = encode(grey, "JPEG", quality=95)
    out = image.load(data)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert np.abs(out.astype(int) - pil_rgb(data)).max() <= 2


def test_cmyk_jpeg_converted_like_pillow():
    cmyk = Image.fromarray(photo_like(48, 64, seed=10)).convert("CMYK")
    data = encode(cmyk, "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK"
    out = image.load(data)
    ref = pil_rgb(data).astype(int)
    diff = np.abs(out.astype(int) - ref)
    assert diff.mean() < 1.0 and diff.max() <= 4


def test_path_and_bytes_give_the_same(tmp_path):
    data = encode(RGB, "JPEG", quality=90)
    p = tmp_path / "x.jpg"
    p.write_bytes(data)
    a = image.load(str(p))
    np.testing.assert_array_equal(a, image.load(data))
    np.testing.assert_array_equal(a, image.load(bytearray(data)))
    np.testing.assert_array_equal(a, image.load(memoryview(data)))


# ---------------------------------------------------------------------------
# EXIF orientation
# ---------------------------------------------------------------------------

def exif_jpeg(arr, orientation, big_endian=False):
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "imgsearch test"  # another tag before/after, as real files have
    raw = exif.tobytes()
    if big_endian:
        return None if raw[:2] != b"II" else encode(arr, "JPEG", quality=95, exif=_tiff_mm(orientation))
    return encode(arr, "JPEG", quality=95, exif=raw)


def _tiff_mm(orientation):
    """A big-endian ("MM") EXIF block with the orientation as the 2nd of 2 entries."""
    entries = struct.pack(">HHII", 0x010F, 2, 4, struct.unpack(">I", b"abc\0")[0])
    entries += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 2) + entries + struct.pack(">I", 0)
    return b"Exif\x00\x00" + tiff


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation):
    arr = photo_like(24, 40, seed=11)  # not square: a wrong transpose changes the shape
    data = exif_jpeg(arr, orientation)
    assert imgsearch._core._exif_orientation(data) == orientation
    with Image.open(io.BytesIO(data)) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(int)
    out = image.load(data)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).max() <= 2


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_big_endian(orientation):
    arr = photo_like(16, 24, seed=12)
    data = encode(arr, "JPEG", quality=95, exif=_tiff_mm(orientation))
    assert imgsearch._core._exif_orientation(data) == orientation
    with Image.open(io.BytesIO(data)) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(int)
    assert np.abs(image.load(data).astype(int) - expected).max() <= 2


def test_broken_exif_is_ignored():
    arr = photo_like(16, 24, seed=13)
    good = exif_jpeg(arr, 6)
    plain = image.load(encode(arr, "JPEG", quality=95))
    i = good.index(b"Exif\x00\x00")
    # IFD offset pointing far outside the segment
    broken = bytearray(good)
    broken[i + 10:i + 14] = b"II\x2a\x00"
    broken[i + 14:i + 18] = struct.pack("<I", 0xFFFFFFF0)
    assert imgsearch._core._exif_orientation(bytes(broken)) == 1
    assert image.load(bytes(broken)).shape == plain.shape
    # a bad byte-order mark
    broken = bytearray(good)
    broken[i + 6:i + 8] = b"XX"
    assert imgsearch._core._exif_orientation(bytes(broken)) == 1
    # orientation values outside 1..8
    assert imgsearch._core._exif_orientation(encode(arr, "JPEG", exif=_tiff_mm(9))) == 1
    assert imgsearch._core._exif_orientation(encode(arr, "JPEG", exif=_tiff_mm(0))) == 1
    # short buffers never read out of bounds
    for n in range(0, 40):
        assert imgsearch._core._exif_orientation(good[:n]) in range(1, 9)


# ---------------------------------------------------------------------------
# Resampling: an independent NumPy reference
# ---------------------------------------------------------------------------

def resample_matrix(n_in, n_out, rows=None):
    """(len(rows), n_in) weights of output samples `rows` (default: all): box integration when shrinking, bilinear with
    aligned pixel centres (clamped) when growing -- built from the
    definition, not from the C code's tables."""
    rows = range(n_out) if rows is None else rows
    W = np.zeros((len(rows), n_in))
    s = n_in / n_out
    for r, o in enumerate(rows):
        if n_out <= n_in:
            a, b = o * s, (o + 1) * s
            for i in range(int(np.floor(a)), min(n_in, int(np.ceil(b)))):
                W[r, i] = max(0.0, min(b, i + 1) - max(a, i))
            W[r] /= W[r].sum()
        else:
            c = min(max((o + 0.5) * s - 0.5, 0.0), n_in - 1)
            i = int(np.floor(c))
            f = c - i
            W[r, i] += 1 - f
            if f > 0:
                W[r, i + 1] += f
    return W


def separable(Wy, a, Wx):
    """out[y, x, c] = sum_ij Wy[y, i] a[i, j, c] Wx[x, j]"""
    t = np.tensordot(Wy, a, axes=(1, 0))            # (oh, w, c)
    return np.tensordot(t, Wx, axes=(1, 1)).transpose(0, 2, 1)


def ref_resize_float(arr, out_w, out_h):
    a = arr.astype(np.float64)
    Wy = resample_matrix(arr.shape[0], out_h)
    Wx = resample_matrix(arr.shape[1], out_w)
    return separable(Wy, a, Wx)


def ref_resize(arr, out_w, out_h):
    return np.clip(np.floor(ref_resize_float(arr, out_w, out_h) + 0.5), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("factor", [2, 3, 4, 7])
def test_area_downscale_integer_factor_is_block_mean(factor):
    rng = np.random.default_rng(factor)
    h, w = 5 * factor, 3 * factor
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    out = image.resize(arr, w // factor, h // factor)
    block = arr.reshape(h // factor, factor, w // factor, factor, 3).astype(np.float64).mean(axis=(1, 3))
    diff = np.abs(out.astype(int) - np.floor(block + 0.5))
    # exact but for float rounding of values that land on .5
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02


@pytest.mark.parametrize("src,dst", [((10, 10), (25, 25)), ((7, 13), (20, 40)), ((50, 30), (17, 11)),
                                     ((40, 40), (39, 41)), ((3, 100), (50, 7)), ((1, 1), (4, 3))])
def test_resize_matches_numpy_reference(src, dst):
    rng = np.random.default_rng(sum(src) + sum(dst))
    arr = rng.integers(0, 256, size=src + (3,), dtype=np.uint8)
    out = image.resize(arr, dst[1], dst[0])
    assert out.shape == dst + (3,)
    diff = np.abs(out.astype(int) - ref_resize(arr, dst[1], dst[0]).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02


def test_bilinear_upscale_of_a_ramp_is_a_ramp():
    ramp = np.repeat(np.repeat(np.arange(0, 250, 50, dtype=np.uint8)[None, :, None], 2, 0), 3, 2)  # 2 x 5
    out = image.resize(ramp, 10, 2)
    # centres aligned: x_in = (o + 0.5) / 2 - 0.5, clamped
    xin = np.clip((np.arange(10) + 0.5) / 2 - 0.5, 0, 4)
    np.testing.assert_array_equal(out[0, :, 0], np.floor(xin * 50 + 0.5).astype(np.uint8))


def test_resize_grey_and_rgba_arrays():
    grey = RGB[..., 0].copy()
    np.testing.assert_array_equal(image.resize(grey, 53, 37), np.repeat(grey[..., None], 3, axis=2))
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(image.resize(rgba, 53, 37), RGB)


def test_resize_does_not_modify_input_and_takes_strided_views():
    arr = photo_like(30, 40, seed=14)
    before = arr.copy()
    view = arr[::2, ::-1]
    out = image.resize(view, 10, 5)
    np.testing.assert_array_equal(arr, before)
    assert np.abs(out.astype(int) - ref_resize(np.ascontiguousarray(view), 10, 5)).max() <= 1


def test_resize_rejects_bad_arguments():
    with pytest.raises(ValueError):
        image.resize(RGB, 0, 10)
    with pytest.raises(ValueError):
        image.resize(RGB, 10, 10 ** 6)
    with pytest.raises(TypeError):
        image.resize(RGB.astype(np.float32), 10, 10)
    with pytest.raises(TypeError):
        image.resize(RGB[..., :2], 10, 10)


# ---------------------------------------------------------------------------
# load_batch: preprocessing, failures, order
# ---------------------------------------------------------------------------

MEAN = np.array(image.IMAGENET_MEAN)
STD = np.array(image.IMAGENET_STD)


def ref_preprocess(arr, size=224, resize=256, mean=MEAN, std=STD):
    """torchvision's Resize(resize) + CenterCrop(size) + ToTensor + Normalize,
    with the resize filter of the reference above."""
    h, w = arr.shape[:2]
    if w <= h:
        rw, rh = resize, int(resize * h / w)
    else:
        rw, rh = int(resize * w / h), resize
    rw, rh = max(rw, size), max(rh, size)
    x0, y0 = int(round((rw - size) / 2)), int(round((rh - size) / 2))
    Wy = resample_matrix(h, rh, range(y0, y0 + size))
    Wx = resample_matrix(w, rw, range(x0, x0 + size))
    crop = separable(Wy, arr.astype(np.float64), Wx)
    return ((crop / 255.0 - mean) / std).transpose(2, 0, 1)


def pillow_preprocess(data, size=224, resize=256, mean=MEAN, std=STD):
    """The pipeline our peers use: Pillow bilinear resize of the shorter side."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        w, h = im.size
        if w <= h:
            nw, nh = resize, int(resize * h / w)
        else:
            nw, nh = int(resize * w / h), resize
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
        a = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return ((a - mean) / std).transpose(2, 0, 1)


@pytest.mark.parametrize("shape", [(300, 400), (400, 300), (256, 256), (100, 150), (511, 257)])
def test_load_batch_matches_numpy_reference(shape):
    arr = photo_like(*shape, seed=shape[0])
    data = encode(arr, "PNG")  # lossless: no DCT scaling, the reference sees the same pixels
    batch, failed = image.load_batch([data], threads=1)
    assert failed == []
    assert batch.dtype == np.float32 and batch.shape == (1, 3, 224, 224) and batch.flags.c_contiguous
    ref = ref_preprocess(arr)
    # within float32 rounding of the 0..255 scale, divided by std
    np.testing.assert_allclose(batch[0], ref, atol=2e-3 / STD.min())
    # and close to the Pillow pipeline (which uses a different downscale filter)
    assert np.abs(batch[0] - pillow_preprocess(data)).mean() < 0.05


def test_load_batch_sizes_and_normalisation_parameters():
    arr = photo_like(90, 120, seed=15)
    data = encode(arr, "PNG")
    batch, failed = image.load_batch([data], size=32, resize=48, mean=(0, 0, 0), std=(1, 1, 1))
    assert batch.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(batch[0], ref_preprocess(arr, 32, 48, 0.0, 1.0), atol=2e-3)
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    with pytest.raises(ValueError):
        image.load_batch([data], size=64, resize=32)
    with pytest.raises(ValueError):
        image.load_batch([data], std=(1, 0, 1))
    with pytest.raises(ValueError):
        image.load_batch([data], mean=(0, 0))
    with pytest.raises(TypeError):
        image.load_batch(data)


def test_load_batch_jpeg_close_to_pillow_pipeline(tmp_path):
    # a JPEG large enough for DCT-domain scaling (shorter side 600 -> 300 >= 256)
    arr = photo_like(600, 800, seed=16)
    data = encode(arr, "JPEG", quality=92)
    p = tmp_path / "big.jpg"
    p.write_bytes(data)
    batch, failed = image.load_batch([str(p)])
    assert failed == []
    ours, theirs = batch[0], pillow_preprocess(data)
    assert np.abs(ours - theirs).mean() < 0.05  # ~1% of the normalised range
    assert np.abs(ours - ref_preprocess(pil_rgb(data))).mean() < 0.05


def unreadable_cases(tmp_path):
    """name -> (item, the exception class, errno or None) for the ways a file can fail."""
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(encode(RGB, "PNG")[:70])
    return {"missing": (str(tmp_path / "missing.png"), FileNotFoundError, errno.ENOENT),
            "directory": (str(tmp_path), IsADirectoryError, errno.EISDIR),
            "corrupt": (str(corrupt), ImageDecodeError, None)}


def assert_error(err, path, cls, code):
    assert type(err) is cls, (type(err), err)
    if code is None:
        assert path in str(err) and "cannot decode" in str(err)
    else:
        assert err.errno == code and err.filename == path and path in err.strerror


def test_one_route_from_c_status_to_exception_keeps_errno_and_path(tmp_path):
    """load(), a batch's failures and a feature extractor raise the same exception
    for the same file: errno and filename kept, the C message as its text."""
    cases = unreadable_cases(tmp_path)
    items = [item for item, _, _ in cases.values()]
    batch, failed = image.load_batch(items)
    assert len(batch) == 0 and [f[0] for f in failed] == [0, 1, 2]
    for (name, (path, cls, code)), failure in zip(cases.items(), failed):
        with pytest.raises(cls) as e:
            image.load(path)
        assert_error(e.value, path, cls, code)
        assert failure[1] == path and failure[2] in str(e.value)
        assert_error(failure.error, path, cls, code)
        assert str(failure.error) == str(e.value), name
        with pytest.raises(cls) as e:
            features.ColorHistogram().extract([path])
        assert_error(e.value, path, cls, code)
    again = pickle.loads(pickle.dumps(failed[0]))
    assert again == failed[0] and type(again.error) is FileNotFoundError


def test_permission_denied_is_a_permission_error(tmp_path):
    p = tmp_path / "locked.png"
    p.write_bytes(encode(RGB, "PNG"))
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop root from reading, so no permission "
                        "error can be produced here")
        with pytest.raises(PermissionError) as e:
            image.load(str(p))
        assert_error(e.value, str(p), PermissionError, errno.EACCES)
        _, failed = image.load_batch([str(p)])
        assert_error(failed[0].error, str(p), PermissionError, errno.EACCES)
    finally:
        p.chmod(0o644)


def test_load_batch_reports_failures_in_order(tmp_path):
    good = [photo_like(64 + 8 * i, 80, seed=20 + i) for i in range(3)]
    jpg = tmp_path / "good0.jpg"
    jpg.write_bytes(encode(good[0], "JPEG", quality=95))
    png = tmp_path / "good1.png"
    png.write_bytes(encode(good[1], "PNG"))
    truncated = tmp_path / "truncated.jpg"
    full = encode(good[2], "JPEG", quality=95)
    truncated.write_bytes(full[:len(full) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n" * 20)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.jpg"
    items = [str(jpg), str(missing), png, str(truncated), encode(good[2], "PNG"), str(text), str(empty),
             str(tmp_path), 42, good[0]]
    batch, failed = image.load_batch(items, threads=2)
    bad = {i: (path, reason) for i, path, reason in failed}
    assert sorted(bad) == [1, 3, 5, 6, 7, 8]
    assert bad[1][0] == str(missing) and "No such file" in bad[1][1]
    assert bad[3][0] == str(truncated) and "truncated" in bad[3][1].lower()
    assert bad[5][0] == str(text) and "not a recognised image format" in bad[5][1]
    assert "empty" in bad[6][1]
    assert bad[7][0] == str(tmp_path)
    assert bad[8][0] is None and "int" in bad[8][1]
    ok = image.ok_indices(len(items), failed)
    assert ok == [0, 2, 4, 9]
    assert batch.shape == (4, 3, 224, 224)
    for row, i in enumerate(ok):
        alone, f = image.load_batch([items[i]], threads=1)
        assert f == []
        np.testing.assert_array_equal(batch[row], alone[0])
    # item 9 (the array) is the decoded pixels of item 0's source, not of its JPEG
    np.testing.assert_allclose(batch[3], ref_preprocess(good[0]), atol=2e-3 / STD.min())


def test_load_batch_threads_give_identical_results():
    items = [encode(photo_like(70 + i, 90, seed=30 + i), "JPEG", quality=90) for i in range(12)]
    one, f1 = image.load_batch(items, threads=1)
    two, f2 = image.load_batch(items, threads=2)
    assert f1 == f2 == []
    np.testing.assert_array_equal(one, two)


def test_load_batch_empty_and_all_bad():
    batch, failed = image.load_batch([])
    assert batch.shape == (0, 3, 224, 224) and failed == []
    batch, failed = image.load_batch([b"nope", b""])
    assert batch.shape == (0, 3, 224, 224) and [f[0] for f in failed] == [0, 1]


def test_iter_batches_prefetch_covers_everything():
    items = [encode(photo_like(40, 50 + i, seed=40 + i), "PNG") for i in range(7)]
    items[3] = b"garbage"
    full, ffull = image.load_batch(items, size=16, resize=20)
    seen, rows = [], []
    for start, batch, failed in image.iter_batches(items, batch_size=3, size=16, resize=20):
        assert start % 3 == 0
        seen.extend(failed)
        rows.append(batch)
    assert [f[0] for f in seen] == [f[0] for f in ffull] == [3]
    np.testing.assert_array_equal(np.concatenate(rows), full)
    with pytest.raises(ValueError):
        list(image.iter_batches(items, batch_size=0))
    assert list(image.iter_batches([], batch_size=2)) == []


def test_torch_shares_the_batch():
    torch = pytest.importorskip("torch")
    batch, _ = image.load_batch([encode(RGB, "PNG")], size=16, resize=16)
    t = torch.from_numpy(batch)
    t[0, 0, 0, 0] = 123.0
    assert batch[0, 0, 0, 0] == 123.0


# ---------------------------------------------------------------------------
# Errors, limits, odd sizes
# ---------------------------------------------------------------------------

def _truncation_seeds():
    arr = photo_like(60, 80, seed=17)
    return {"png": encode(arr, "PNG"), "jpeg": encode(arr, "JPEG", quality=90),
            "gif": encode(Image.fromarray(arr).quantize(32), "GIF"), "bmp": encode(arr, "BMP"),
            "ppm": encode(arr, "PPM"), "psd": psd_bytes(arr), "tga": encode(arr, "TGA"),
            "tga-rle": encode(arr, "TGA", compression="tga_rle")}


@pytest.mark.parametrize("fmt", sorted(_truncation_seeds()))
def test_truncated_files_are_errors_not_black_tails(fmt, tmp_path):
    # stb_image pads a short input with zeros; a cut file must not decode
    data = _truncation_seeds()[fmt]
    p = tmp_path / ("cut." + fmt.split("-")[0])  # .tga: read as TGA without its footer
    for frac in (0.3, 0.6, 0.9, 0.99):
        p.write_bytes(data[:int(len(data) * frac)])
        with pytest.raises(ImageDecodeError, match="truncated|corrupt|not a recognised"):
            image.load(str(p))
    p.write_bytes(data)
    assert image.load(str(p)).shape == (60, 80, 3)


def test_errors_name_the_file_and_reason(tmp_path):
    p = tmp_path / "text.png"
    p.write_text("hello")
    with pytest.raises(ImageDecodeError) as e:
        image.load(str(p))
    assert str(p) in str(e.value) and "not a recognised image format" in str(e.value)
    assert isinstance(e.value, ValueError)
    assert imgsearch.ImageDecodeError is ImageDecodeError
    with pytest.raises(FileNotFoundError):
        image.load(str(tmp_path / "nope.jpg"))
    with pytest.raises(OSError):
        image.load(str(tmp_path))
    data = encode(RGB, "PNG")
    with pytest.raises(ImageDecodeError, match="bytes"):
        image.load(data[:60])
    with pytest.raises(TypeError):
        image.load(RGB)
    with pytest.raises(TypeError):
        image.load(12)


def png_header_only(w, h, color_type=2, extra=b""):
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra


def jpeg_header_only(w, h):
    """A baseline JPEG up to its SOF0 marker claiming w x h, then EOI."""
    soi = b"\xff\xd8"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 8 + 3 * 3, 8, h, w, 3) + b"\x01\x22\x00\x02\x11\x00\x03\x11\x00"
    return soi + sof + b"\xff\xd9"


def _max_rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("data", [png_header_only(60000, 60000), jpeg_header_only(60000, 60000),
                                  png_header_only(70000, 10), jpeg_header_only(65535, 65535),
                                  encode(Image.new("RGB", (1, 1)), "GIF")[:6] + struct.pack("<HH", 60000, 60000)
                                  + encode(Image.new("RGB", (1, 1)), "GIF")[10:]],
                         ids=["png", "jpeg", "png-side", "jpeg-max", "gif"])
def test_decompression_bomb_refused_before_allocating(data):
    before = _max_rss_mb()
    with pytest.raises(ImageDecodeError) as e:
        image.load(data)
    msg = str(e.value)
    assert "limit" in msg or "corrupt" in msg, msg
    assert _max_rss_mb() - before < 200
    batch, failed = image.load_batch([data])
    assert batch.shape[0] == 0 and len(failed) == 1


def test_png_header_that_lies_about_its_size():
    # 9000 x 9000 is under the pixel limit, but 243 MB of pixels cannot come
    # from a few hundred bytes of deflate data
    tiny_idat = png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + png_chunk(b"IEND", b"")
    data = png_header_only(9000, 9000, extra=tiny_idat)
    before = _max_rss_mb()
    with pytest.raises(ImageDecodeError, match="header that lies"):
        image.load(data)
    assert _max_rss_mb() - before < 200


def _bmp_header(w, h):
    return b"BM" + struct.pack("<IHHI", 54 + 3 * w * h, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0,
                                                                                 2835, 2835, 0, 0)


def _gif_header(w, h):
    one = encode(Image.new("P", (1, 1)), "GIF")
    i = one.index(b"\x2c")  # image descriptor
    return one[:6] + struct.pack("<HH", w, h) + one[10:i + 5] + struct.pack("<HH", w, h) + one[i + 9:]


@pytest.mark.parametrize("data", [_bmp_header(9000, 9000) + b"\0" * 100, _gif_header(9000, 9000),
                                  b"P6\n9000 9000\n255\n" + b"\0" * 100],
                         ids=["bmp", "gif", "ppm"])
def test_stb_headers_that_lie_are_refused_before_allocating(data):
    before = _max_rss_mb()
    with pytest.raises(ImageDecodeError, match="header that lies"):
        image.load(data)
    assert _max_rss_mb() - before < 100


def test_big_but_legal_png_is_fine():
    arr = np.zeros((3000, 2000, 3), np.uint8)  # compresses to almost nothing
    arr[::100] = 255
    out = image.load(encode(arr, "PNG"))
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5000), (5000, 1), (2, 3), (3, 2)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])
def test_odd_sizes(shape, fmt):
    arr = photo_like(*shape, seed=shape[0] * 7 + shape[1])
    data = encode(arr, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    out = image.load(data)
    assert out.shape == shape + (3,)
    if fmt != "JPEG":
        np.testing.assert_array_equal(out, arr)
    else:
        assert np.abs(out.astype(int) - pil_rgb(data)).max() <= 2
    batch, failed = image.load_batch([data, out], size=32, resize=40)
    assert failed == [] and batch.shape == (2, 3, 32, 32) and np.isfinite(batch).all()
    if fmt != "JPEG":
        np.testing.assert_allclose(batch[0], ref_preprocess(arr, 32, 40), atol=2e-3 / STD.min())
    small = image.resize(out, 3, 2)
    assert small.shape == (2, 3, 3)
    for ext in (features.ColorHistogram(), features.PHash(), features.DHash()):
        v = ext.extract([data])
        assert v.shape[0] == 1


# ---------------------------------------------------------------------------
# Fuzz: truncated and corrupted files give clean errors, never a crash
# ---------------------------------------------------------------------------

def fuzz_seeds():
    arr = photo_like(48, 64, seed=50)
    rgba = np.dstack([arr, photo_like(48, 64, seed=51)[..., 0]])
    seeds = {
        "jpeg": encode(arr, "JPEG", quality=85),
        "jpeg-progressive": encode(arr, "JPEG", quality=85, progressive=True),
        "jpeg-exif": exif_jpeg(arr, 6),
        "png": encode(arr, "PNG"),
        "png-rgba": encode(rgba, "PNG"),
        "png16": png_bytes(arr.astype(np.uint16) * 257, 16, 2),
        "png-palette": encode(Image.fromarray(arr).quantize(16), "PNG"),
        "gif": encode(Image.fromarray(arr).quantize(32), "GIF"),
        "bmp": encode(arr, "BMP"),
        "tga": encode(arr, "TGA"),
        "ppm": encode(arr, "PPM"),
        "psd": psd_bytes(arr),
    }
    if imgsearch._core._HAVE_WEBP:
        seeds.update({"webp": encode(arr, "WEBP", quality=80), "webp-lossless": encode(arr, "WEBP", lossless=True),
                      "webp-alpha": encode(rgba, "WEBP", quality=80), "webp-exif": webp_exif(arr, 6)})
    return seeds


def mutations(data, rng, n):
    """Truncations, bit flips, byte overwrites (header fields included) and
    chunk duplications of one file."""
    out = []
    L = len(data)
    for k in range(n):
        kind = k % 4
        if kind == 0:
            out.append(data[:int(rng.integers(0, L))])
        elif kind == 1:
            b = bytearray(data)
            for _ in range(int(rng.integers(1, 9))):
                p = int(rng.integers(0, L))
                b[p] ^= 1 << int(rng.integers(0, 8))
            out.append(bytes(b))
        elif kind == 2:
            b = bytearray(data)
            p = int(rng.integers(0, min(L, 64)))  # the header
            for j in range(int(rng.integers(1, 5))):
                if p + j < L:
                    b[p + j] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, int(rng.integers(0, 256))]))
            out.append(bytes(b))
        else:
            p, q = sorted(int(x) for x in rng.integers(0, L, size=2))
            out.append(data[:q] + data[p:q] + data[q:])
    return out


def test_fuzz_corrupted_images_fail_cleanly():
    rng = np.random.default_rng(1234)
    n_cases = n_ok = 0
    for name, data in fuzz_seeds().items():
        image.load(data)  # every seed decodes
        cases = mutations(data, rng, 28)
        for case in cases:
            n_cases += 1
            try:
                out = image.load(case)
            except ValueError as e:  # ImageDecodeError is a ValueError
                assert str(e), name
                continue
            n_ok += 1
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        # the batch path and the feature path see the same inputs
        batch, failed = image.load_batch(cases, size=16, resize=16, threads=2)
        assert batch.shape[0] + len(failed) == len(cases)
        h, failed = features.PHash().extract_files(cases)
        assert h.shape[0] + len(failed) == len(cases)
    assert n_cases >= 300


# ---------------------------------------------------------------------------
# Classic features
# ---------------------------------------------------------------------------

def ref_grey_resize(arr, w, h):
    rgb = ref_resize_float(arr, w, h)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def dct_matrix(n, k):
    u = np.arange(k)[:, None]
    x = np.arange(n)[None, :]
    return np.cos(np.pi * u * (2 * x + 1) / (2 * n))


def ref_phash(arr):
    g = ref_grey_resize(arr, 32, 32)
    C = dct_matrix(32, 8)
    coef = (C @ g @ C.T).ravel()
    return np.packbits(coef > np.median(coef))


def ref_dhash(arr):
    g = ref_grey_resize(arr, 9, 8)
    return np.packbits((g[:, 1:] > g[:, :-1]).ravel())


def hamming(a, b):
    return int(np.unpackbits(np.bitwise_xor(np.asarray(a, np.uint8), np.asarray(b, np.uint8))).sum())


def test_phash_matches_reference():
    for seed in range(5):
        arr = photo_like(90 + seed * 13, 120, seed=60 + seed)
        h = features.PHash().extract([arr])
        assert h.shape == (1, 8) and h.dtype == np.uint8
        assert hamming(h[0], ref_phash(arr)) <= 1  # a coefficient at the median may flip


def test_phash_robust_to_resize_and_recompression_and_far_from_others():
    base = [photo_like(240, 320, seed=70 + i) for i in range(6)]
    ext = features.PHash()
    hb = ext.extract(base)
    for i, arr in enumerate(base):
        variants = [
            np.asarray(Image.fromarray(arr).resize((160, 120), Image.BILINEAR)),
            np.asarray(Image.fromarray(arr).resize((480, 360), Image.BICUBIC)),
            encode(arr, "JPEG", quality=30),
            encode(np.asarray(Image.fromarray(arr).resize((200, 150))), "JPEG", quality=60),
        ]
        for v in ext.extract(variants):
            assert hamming(v, hb[i]) <= 10
    far = [hamming(hb[i], hb[j]) for i in range(6) for j in range(i + 1, 6)]
    assert min(far) > 14 and np.mean(far) > 22


def test_dhash_matches_reference_and_sanity():
    ext = features.DHash()
    for seed in range(4):
        arr = photo_like(50, 77, seed=80 + seed)
        assert hamming(ext.extract([arr])[0], ref_dhash(arr)) <= 1
    ramp = np.tile(np.linspace(0, 255, 90).astype(np.uint8)[None, :, None], (40, 1, 3))
    np.testing.assert_array_equal(ext.extract([ramp])[0], np.full(8, 0xFF, np.uint8))
    np.testing.assert_array_equal(ext.extract([ramp[:, ::-1]])[0], np.zeros(8, np.uint8))
    # rows are packed most significant bit first, row major
    half = ramp.copy()
    half[20:] = ramp[20:, ::-1]
    np.testing.assert_array_equal(ext.extract([half])[0], np.array([255] * 4 + [0] * 4, np.uint8))
    arr = photo_like(120, 160, seed=90)
    small = np.asarray(Image.fromarray(arr).resize((80, 60), Image.BILINEAR))
    assert hamming(ext.extract([arr])[0], ext.extract([small])[0]) <= 10


def ref_colorhist(arr, bins):
    """The definition in features.c, in NumPy float32: hexcone HSV, hue in
    sixths, saturation d/max, value max*vb/256 (integer), hue slowest."""
    hb, sb, vb = bins
    a = arr.reshape(-1, 3).astype(np.int64)
    r, g, b = a[:, 0], a[:, 1], a[:, 2]
    mx = a.max(1)
    mn = a.min(1)
    d = mx - mn
    f32 = np.float32
    dd = np.where(d > 0, d, 1).astype(f32)
    h = np.where(mx == r, (g - b).astype(f32) / dd + np.where(g < b, f32(6), f32(0)),
                 np.where(mx == g, (b - r).astype(f32) / dd + f32(2), (r - g).astype(f32) / dd + f32(4))).astype(f32)
    hi = np.minimum((h * f32(f32(hb) / f32(6))).astype(np.int64), hb - 1)
    si = np.minimum((d.astype(f32) * f32(sb) / np.where(mx > 0, mx, 1).astype(f32)).astype(np.int64), sb - 1)
    hi = np.where(d > 0, hi, 0)
    si = np.where(d > 0, si, 0)
    vi = mx * vb // 256
    idx = (hi * sb + si) * vb + vi
    return np.bincount(idx, minlength=hb * sb * vb).astype(np.float64) / len(a)


@pytest.mark.parametrize("bins", [(8, 4, 4), (16, 3, 5), (1, 1, 1), (6, 2, 2)])
def test_colorhist_matches_reference(bins):
    rng = np.random.default_rng(sum(bins))
    arr = rng.integers(0, 256, size=(33, 47, 3), dtype=np.uint8)
    arr[0, :6] = [[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0], [0, 255, 0], [0, 0, 255]]
    arr[1, :4] = [[255, 0, 1], [1, 0, 255], [255, 255, 0], [0, 255, 255]]  # hue wrap-around, sextant edges
    ext = features.ColorHistogram(bins=bins, metric="l1", sqrt=False)
    v = ext.extract([arr])
    assert v.shape == (1, int(np.prod(bins))) and v.dtype == np.float32
    np.testing.assert_allclose(v[0], ref_colorhist(arr, bins), atol=1e-6)
    assert abs(v.sum() - 1) < 1e-5


def test_colorhist_sqrt_is_hellinger():
    rng = np.random.default_rng(7)
    a, b = (rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8) for _ in range(2))
    raw = features.ColorHistogram(metric="l1", sqrt=False).extract([a, b]).astype(np.float64)
    root = features.ColorHistogram(sqrt=True, metric="l2").extract([a, b])
    np.testing.assert_allclose(root, np.sqrt(raw), rtol=1e-6)
    hellinger_sq = ((np.sqrt(raw[0]) - np.sqrt(raw[1])) ** 2).sum()
    D, I = imgsearch.FlatIndex.from_array(root[1:], metric="l2").search(root[:1], k=1)
    assert abs(D[0, 0] - hellinger_sq) < 1e-5


def test_colorhist_of_pure_colours():
    ext = features.ColorHistogram(bins=(6, 2, 2), sqrt=False)
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    v = ext.extract([red])[0].reshape(6, 2, 2)
    assert v[0, 1, 1] == 1.0
    blue = red[..., ::-1].copy()
    assert ext.extract([blue])[0].reshape(6, 2, 2)[4, 1, 1] == 1.0
    grey = np.full((3, 3, 3), 100, np.uint8)
    assert ext.extract([grey])[0].reshape(6, 2, 2)[0, 0, 0] == 1.0


def test_extractor_protocol_and_config_round_trip(tmp_path):
    import json
    arr = photo_like(40, 60, seed=95)
    p = tmp_path / "a.png"
    p.write_bytes(encode(arr, "PNG"))
    cases = [(features.ColorHistogram(bins=(4, 3, 2), metric="l2"), 24, "l2", np.float32),
             (features.ColorHistogram(bins=(4, 3, 2), metric="l2", sqrt=True), 24, "l2", np.float32),
             (features.ColorHistogram(), 128, "l2", np.float32),   # default: Hellinger
             (features.ColorHistogram(metric="l1", sqrt=False), 128, "l1", np.float32),
             (features.PHash(), 64, "hamming", np.uint8),
             (features.DHash(), 64, "hamming", np.uint8)]
    for ext, dim, metric, dtype in cases:
        assert isinstance(ext, features.Extractor)
        assert ext.dim == dim and ext.metric == metric and ext.dtype == dtype
        cfg = json.loads(json.dumps(ext.config()))
        again = features.from_config(cfg)
        assert type(again) is type(ext) and again.config() == ext.config() and again.dim == ext.dim
        assert features.get_extractor(cfg["name"], **{k: v for k, v in cfg.items() if k != "name"}).config() == cfg
        v = ext.extract([str(p), arr, p])
        width = dim if dtype == np.float32 else dim // 8
        assert v.shape == (3, width) and v.dtype == dtype
        np.testing.assert_array_equal(v[0], v[1])  # PNG decode is exact: same pixels, same features
        np.testing.assert_array_equal(again.extract([arr]), v[1:2])
        with pytest.raises(ImageDecodeError, match="not a recognised"):
            ext.extract([arr, b"not an image"])
        with pytest.raises(FileNotFoundError):
            ext.extract([str(tmp_path / "missing.png")])
        out, failed = ext.extract_files([str(p), b"xx", str(tmp_path / "missing.png"), arr])
        assert out.shape == (2, width) and [f[0] for f in failed] == [1, 2]
        index = imgsearch.FlatIndex(dim=ext.dim, metric=ext.metric)
        index.add(v)
        D, I = index.search(v[:1], k=1)
        assert D[0, 0] == 0
    with pytest.raises(ValueError):
        features.ColorHistogram(bins=(0, 4, 4))
    with pytest.raises(ValueError):
        features.ColorHistogram(metric="chi2-typo")
    with pytest.raises(ValueError):
        features.get_extractor("nope")
    with pytest.raises(ValueError):
        features.from_config({"bins": [1, 2, 3]})


def test_colorhist_config_saved_before_sqrt_means_raw_histograms():
    arr = photo_like(24, 32, seed=96)
    old = features.from_config({"name": "colorhist", "bins": [8, 4, 4], "metric": "l1"})
    assert old.sqrt is False and old.metric == "l1"
    np.testing.assert_allclose(old.extract([arr])[0], ref_colorhist(arr, (8, 4, 4)), atol=1e-6)
    new = features.ColorHistogram()
    assert new.config()["sqrt"] is True and new.metric == "l2"
    np.testing.assert_allclose(new.extract([arr])[0], np.sqrt(ref_colorhist(arr, (8, 4, 4))), atol=1e-6)
