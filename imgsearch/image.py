"""Decode, orient, resize and normalise images in C, on native threads.

    >>> from imgsearch import image
    >>> rgb = image.load("photo.jpg")                  # uint8 (H, W, 3), EXIF orientation applied
    >>> batch, failed = image.load_batch(paths)        # float32 (n_ok, 3, 224, 224), ImageNet-normalised
    >>> for start, batch, failed in image.iter_batches(paths, batch_size=64):
    ...     features = model(torch.from_numpy(batch))  # the next batch decodes meanwhile

Formats: JPEG (libjpeg-turbo when the build found it, else stb_image), PNG (8
and 16-bit), WebP (lossy, lossless, alpha; still images; when the build found
libwebp), BMP, GIF (first frame), TGA (recognised by a .tga name or the TGA
2.0 footer), PSD (composite), PNM (P5/P6).  TIFF and HEIF/AVIF are recognised
and refused by name.  Output is always RGB: grey is replicated, alpha is
composited on white, 16-bit samples keep their high byte, CMYK/YCCK JPEGs are
converted.  The EXIF orientation of JPEGs and WebPs is applied (values 2..8
mirror and rotate as Pillow's ``ImageOps.exif_transpose``).

Limits: images above 100 megapixels or 65535 pixels per side are refused
from their header, before any memory is allocated, and so are PNG, GIF, BMP,
PSD, TGA and PNM headers that claim more pixels than the file could hold
(JPEG and WebP headers are only held to the pixel limit).  Truncated files
are errors in every format, never images with a blank tail.  Files that are
not images are reported as such, not guessed.

Items (``paths`` below) may be paths (``str``/``os.PathLike``), the encoded
bytes of an image file (``bytes``, ``bytearray``, ``memoryview``), or uint8
arrays ``(H, W, 3)``, ``(H, W, 4)``, ``(H, W)`` -- anything NumPy can view as
one, so a ``PIL.Image`` works too; arrays are not decoded, only resized.

Preprocessing: the shorter side is resized to ``resize`` (area averaging when
shrinking, bilinear when enlarging; the longer side keeps the aspect ratio,
truncated to an integer like torchvision's ``Resize(int)``), the centre
``size x size`` is cropped (torchvision's ``CenterCrop`` offsets), and each
channel becomes ``(x / 255 - mean) / std``.  Only the crop is ever computed.
For JPEG files, the decoder itself shrinks by M/8 in the DCT domain while the
shorter side stays >= ``resize`` -- so the pixels differ slightly (< 1% of the
range on average) from resizing a full-size decode, and it is why this
pipeline runs faster than a plain full-size decode.

All functions release the GIL and are safe to call from several threads.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _core
from ._core import ImageDecodeError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Failure", "ImageDecodeError", "dimensions", "iter_batches", "load",
           "load_batch", "resize", "thumbnail"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load(path_or_bytes):
    """Decode one image to a uint8 ``(H, W, 3)`` RGB array.

    ``path_or_bytes`` is a path (``str``/``os.PathLike``) or the bytes of an
    image file.  The EXIF orientation is applied and alpha is composited on
    white.  Raises :class:`imgsearch.ImageDecodeError` (a ``ValueError``)
    naming the file and the reason when the data is not a decodable image,
    and ``FileNotFoundError``/``PermissionError``/``OSError`` when the file
    cannot be read.
    """
    return _core._image_load(path_or_bytes)


def resize(img, width, height):
    """Resize a uint8 image ``(H, W, 3)`` (or ``(H, W)``/``(H, W, 4)``) to
    ``(height, width, 3)``: area averaging on an axis that shrinks, bilinear
    (pixel centres aligned) on one that grows; rounded to nearest."""
    return _core._image_resize(img, int(width), int(height))


THUMBNAIL_FORMAT = "jpeg" if _core._HAVE_LIBJPEG else "png"  # what thumbnail() writes by default
THUMBNAIL_MIME = {"jpeg": "image/jpeg", "png": "image/png"}


def thumbnail(image, max_side=128, format=None, quality=85):
    """A small picture of an image, encoded: JPEG or PNG ``bytes``, made in C
    (no Pillow needed).

    ``image`` is a path, the bytes of an image file or a uint8 array, as for
    :func:`load_batch`.  The longer side becomes ``max_side`` (1..1024) and the
    aspect ratio is kept; a smaller image keeps its size (never enlarged).
    ``format``: ``"jpeg"`` (needs a build with libjpeg-turbo), ``"png"``
    (always available; stored, not compressed: about 3 bytes a pixel), or
    None for :data:`THUMBNAIL_FORMAT`.  ``quality`` (1..100) is JPEG's.
    Raises :class:`ImageDecodeError` for data that is not a decodable image.
    Releases the GIL.
    """
    return _core._image_thumbnail(image, int(max_side), format or THUMBNAIL_FORMAT, int(quality))


def dimensions(data):
    """``(width, height)`` read from the header of an encoded image (bytes),
    without decoding its pixels: for capping uploads before they are decoded.
    Raises :class:`ImageDecodeError` when no image header is recognised."""
    return _core._image_dimensions(data)


def _item_path(item):
    if isinstance(item, str):
        return item
    if isinstance(item, (bytes, bytearray, memoryview, np.ndarray)):
        return None
    if hasattr(item, "__fspath__"):
        try:
            return os.fsdecode(os.fspath(item))
        except (TypeError, ValueError):
            return None
    return None


class Failure(tuple):
    """An item a batch could not use: the tuple ``(index, path, reason)``, and
    ``.error``, the exception the item raises on its own -- ImageDecodeError,
    or FileNotFoundError / PermissionError / IsADirectoryError with ``errno`` and
    ``filename`` set, exactly as :func:`load` would raise it."""

    def __new__(cls, index, path, reason, error):
        self = super().__new__(cls, (index, path, reason))
        self.error = error
        return self

    def __reduce__(self):
        return (Failure, (*self, self.error))


def _failures(items, raw, start=0):
    """Failures from the C core's (index, reason, exception) records for items (at start)."""
    return [Failure(start + i, _item_path(items[i]), reason, error) for i, reason, error in raw]


def _as_list(paths):
    if isinstance(paths, (str, bytes, bytearray, memoryview, np.ndarray)) or hasattr(paths, "__fspath__"):
        raise TypeError("expected a list of images (paths, bytes or arrays), found a single %s; "
                        "wrap it in a list" % type(paths).__name__)
    return paths if isinstance(paths, (list, tuple)) else list(paths)


def load_batch(paths, size=224, resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD, threads=None):
    """Decode and preprocess many images on native threads (GIL released).

    Returns ``(batch, failed)``: ``batch`` is float32 ``(n_ok, 3, size, size)``,
    C-contiguous (``torch.from_numpy(batch)`` shares it without a copy), with
    the images that succeeded in input order; ``failed`` lists
    ``(index, path, reason)`` for each item that did not (``path`` is None for
    bytes and arrays), as :class:`Failure` tuples whose ``.error`` is the
    exception the item would raise on its own.  The row of ``batch`` for input ``i`` is its position
    among the indices not in ``failed`` -- see :func:`ok_indices`.
    One bad item never stops the batch.  ``threads=None`` uses every CPU.
    """
    items = _as_list(paths)
    batch, raw = _core._image_batch(items, int(size), int(resize), tuple(mean), tuple(std), threads)
    return batch, _failures(items, raw)


def ok_indices(n, failed):
    """The input indices of the rows of a batch of ``n`` items, given ``failed``."""
    bad = {f[0] for f in failed}
    return [i for i in range(n) if i not in bad]


def iter_batches(paths, batch_size=64, size=224, resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD, threads=None):
    """Yield ``(start_index, batch, failed)`` for consecutive slices of ``paths``.

    ``batch`` and ``failed`` are as from :func:`load_batch` for
    ``paths[start_index:start_index + batch_size]`` (indices in ``failed`` are
    global, i.e. into ``paths``).  While the caller works on one batch, the
    next one is decoded in the background on native threads -- the model and
    the decoder overlap.
    """
    if batch_size < 1:
        raise ValueError("batch_size: expected a positive integer, found %r" % (batch_size,))
    items = _as_list(paths)
    n = len(items)
    if n == 0:
        return

    def work(start):
        chunk = items[start:start + batch_size]
        batch, raw = _core._image_batch(chunk, int(size), int(resize), tuple(mean), tuple(std), threads)
        return start, batch, _failures(chunk, raw, start)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgsearch-prefetch") as pool:
        pending = pool.submit(work, 0)
        start = 0
        while pending is not None:
            result = pending.result()
            start += batch_size
            pending = pool.submit(work, start) if start < n else None
            yield result

