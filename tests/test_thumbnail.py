"""imgsearch.image.thumbnail: JPEG/PNG thumbnails made in C, checked against Pillow;
the notebook grid and `search --html` without Pillow; `imgsearch info` without torch."""
import base64
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import imgsearch as isx
from imgsearch import image

PIL = pytest.importorskip("PIL", reason="Pillow is the oracle these tests decode and resize with")
from PIL import Image  # noqa: E402

HAVE_JPEG = bool(isx._core._HAVE_LIBJPEG)
needs_jpeg = pytest.mark.skipif(not HAVE_JPEG, reason="this build has no libjpeg: JPEG thumbnails are refused")


def smooth_image(rng, w, h, noise=2.0):
    """A photo-like picture: smooth gradients plus mild noise (what a thumbnail is for)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([127 + 100 * np.sin(x / 23.0), 127 + 100 * np.cos(y / 17.0), (x + y) * 255.0 / (w + h)], -1)
    return np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)


def decode(data):
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def pillow_thumbnail(arr, side):
    """Pillow's own answer: Image.thumbnail's size, area-averaged (BOX) from the full image."""
    im = Image.fromarray(arr)
    probe = im.copy()
    probe.thumbnail((side, side))
    return np.asarray(im.resize(probe.size, Image.BOX), dtype=np.float64)


@pytest.mark.parametrize("w, h, side", [(500, 300, 128), (300, 500, 128), (97, 61, 64), (640, 640, 100)])
def test_png_thumbnail_matches_pillow_and_is_lossless(rng, w, h, side):
    arr = smooth_image(rng, w, h)
    data = image.thumbnail(arr, max_side=side, format="png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    im = decode(data)
    want = pillow_thumbnail(arr, side)
    assert im.mode == "RGB" and im.size == (want.shape[1], want.shape[0])
    got = np.asarray(im, dtype=np.float64)
    # area averaging both ways: rounding, and Pillow's support at fractional box edges, differ
    diff = np.abs(got - want)
    assert diff.mean() < 1.0 and diff.max() <= 6, (diff.mean(), diff.max())
    # the PNG holds exactly the pixels of the C resize (the writer loses nothing)
    np.testing.assert_array_equal(np.asarray(im), image.resize(arr, im.size[0], im.size[1]))


def test_png_spanning_many_stored_blocks(rng):
    arr = smooth_image(rng, 1000, 700)  # 1000 x 700 x 3 + rows: 32 deflate blocks of 65535 bytes
    data = image.thumbnail(arr, max_side=1000, format="png")
    np.testing.assert_array_equal(np.asarray(decode(data)), arr)


@needs_jpeg
def test_jpeg_thumbnail_of_a_jpeg_file_matches_pillow(rng, tmp_path):
    arr = smooth_image(rng, 1200, 800)
    path = str(tmp_path / "big.jpg")
    Image.fromarray(arr).save(path, quality=95)
    data = image.thumbnail(path, max_side=128)
    assert data[:3] == b"\xff\xd8\xff" and image.THUMBNAIL_FORMAT == "jpeg"
    im = decode(data)
    want = pillow_thumbnail(np.asarray(Image.open(path).convert("RGB")), 128)
    assert im.format == "JPEG" and im.size == (want.shape[1], want.shape[0]) == (128, 85)
    err = np.abs(np.asarray(im, dtype=np.float64) - want).mean()
    # calibrated on Pillow's own JPEG at the same quality: the DCT-domain shrink adds little
    buf = io.BytesIO()
    Image.fromarray(want.astype(np.uint8)).save(buf, format="JPEG", quality=85)
    pillow_err = np.abs(np.asarray(decode(buf.getvalue()), dtype=np.float64) - want).mean()
    assert err < 1.25 * pillow_err + 0.5, (err, pillow_err)
    # the same image from its bytes, and the quality knob does something
    assert image.thumbnail(open(path, "rb").read(), max_side=128) == data
    assert len(image.thumbnail(path, max_side=128, quality=30)) < len(data)


def test_small_images_are_not_enlarged_and_grey_alpha_become_rgb(rng):
    arr = smooth_image(rng, 40, 30)
    assert decode(image.thumbnail(arr, max_side=128, format="png")).size == (40, 30)
    grey = arr[:, :, 0].copy()
    np.testing.assert_array_equal(np.asarray(decode(image.thumbnail(grey, 64, format="png"))),
                                  np.repeat(grey[:, :, None], 3, axis=2))
    rgba = np.dstack([arr, np.zeros((30, 40), np.uint8)])  # fully transparent: white
    assert np.all(np.asarray(decode(image.thumbnail(rgba, 64, format="png"))) == 255)


def test_hostile_and_wrong_input(rng, tmp_path):
    arr = smooth_image(rng, 50, 40)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    png = buf.getvalue()
    with pytest.raises(isx.ImageDecodeError, match="not a recognised image format"):
        image.thumbnail(b"this is not an image")
    with pytest.raises(isx.ImageDecodeError):
        image.thumbnail(png[: len(png) // 2])
    with pytest.raises(isx.ImageDecodeError):
        image.thumbnail(b"")
    with pytest.raises(FileNotFoundError):
        image.thumbnail(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match=r"max_side: expected 1\.\.1024 pixels, found 0"):
        image.thumbnail(arr, max_side=0)
    with pytest.raises(ValueError, match="found 5000"):
        image.thumbnail(arr, max_side=5000)
    with pytest.raises(ValueError, match='expected "jpeg" or "png", found \'gif\''):
        image.thumbnail(arr, format="gif")
    if HAVE_JPEG:
        with pytest.raises(ValueError, match="quality: expected 1..100, found 0"):
            image.thumbnail(arr, format="jpeg", quality=0)
    with pytest.raises(TypeError, match="uint8"):
        image.thumbnail(arr.astype(np.float32))
    # a header claiming 100,000 x 100,000 pixels is refused before any allocation
    bomb = bytearray(png)
    bomb[16:24] = (100_000).to_bytes(4, "big") * 2
    with pytest.raises(isx.ImageDecodeError):
        image.thumbnail(bytes(bomb))


def test_dimensions_from_the_header_only(rng):
    arr = smooth_image(rng, 123, 45)
    for fmt in ("PNG", "JPEG", "BMP", "GIF"):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt)
        assert image.dimensions(buf.getvalue()) == (123, 45), fmt
    with pytest.raises(isx.ImageDecodeError, match="not a recognised image header"):
        image.dimensions(b"GIF89a")
    with pytest.raises(isx.ImageDecodeError):
        image.dimensions(b"")


def _block_pillow(monkeypatch):
    for name in [m for m in sys.modules if m == "PIL" or m.startswith("PIL.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` now raises ImportError
    with pytest.raises(ImportError):
        import PIL.Image  # noqa: F401


def _grid_images(html):
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/(?:jpeg|png);base64,([^"]+)"', html)]


@pytest.fixture
def small_engine(tmp_path, rng):
    from imgfolder import make_folder
    good, _, _ = make_folder(str(tmp_path / "photos"), rng, per_class=3, broken=False)
    engine = isx.ImageSearch(extractor="colorhist", index="flat")
    engine.add(good, progress=False)
    return engine, good


def test_notebook_grid_has_pictures_without_pillow(small_engine, monkeypatch):
    engine, good = small_engine
    res = engine.search(good[:2], k=3)
    _block_pillow(monkeypatch)
    html = res._repr_html_()
    assert html is not None and html.count("<img") == 2 + 6
    pictures = _grid_images(html)
    assert len(pictures) == 8
    monkeypatch.undo()  # Pillow back, to check what was embedded
    for data in pictures:
        assert decode(data).size == (64, 48)  # generated 64 x 48 images: smaller than 128, kept


def test_cli_html_has_pictures_without_pillow(small_engine, tmp_path, monkeypatch, capsys):
    from imgsearch.cli import main
    engine, good = small_engine
    engine.save(str(tmp_path / "p.isx"))
    _block_pillow(monkeypatch)
    out_html = str(tmp_path / "r.html")
    assert main(["search", str(tmp_path / "p.isx"), good[0], "-k", "4", "--html", out_html]) == 0
    assert len(_grid_images(open(out_html, encoding="utf-8").read())) == 1 + 4


def test_info_without_torch(small_engine, tmp_path):
    torch = pytest.importorskip("torch", reason="making a torch-indexed file needs torch (reading it must not)")
    engine, good = small_engine
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU())
    ts = str(tmp_path / "tiny.ts.pt")
    torch.jit.script(model).save(ts)
    teng = isx.ImageSearch(extractor=ts, index="flat", extractor_params={"size": 32})
    teng.add(good, progress=False)
    path = str(tmp_path / "torch.isx")
    teng.save(path)
    code = ("import sys; sys.modules['torch'] = None\n"
            "from imgsearch.cli import main\n"
            f"rc = main(['info', {path!r}, '--json'])\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None], 'torch was imported'\n"
            "sys.exit(rc)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(__file__), env={**os.environ, "PYTHONPATH": os.path.dirname(
                           os.path.dirname(os.path.abspath(isx.__file__)))})
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["count"] == len(good) and info["dim"] == 8 and info["extractor"]["kind"] == "torch"
    assert info == json.loads(json.dumps(teng.info()))  # the same as the loaded engine says
