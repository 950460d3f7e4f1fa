"""Longer fuzz of the image decoders (``make fuzz``; the default suite runs a
few hundred cases of the same kind in tests/test_image.py).

Seeds: real photographs from ../shared/data/flowers17 (when present),
re-encoded as JPEG (baseline, progressive, with EXIF), PNG (RGB, RGBA,
palette, 16-bit), GIF, BMP, TGA, PNM, PSD, WebP (lossy, lossless, with alpha,
with EXIF; when the build has libwebp), plus generated images.  Each seed is
mutated by truncation, bit flips, random byte overwrites and *structured*
header-field mutations (PNG IHDR fields with the CRC fixed up, JPEG SOF
dimensions and component counts, GIF screen/frame sizes, BMP size/bpp/offset
fields, WebP RIFF/chunk sizes, VP8X canvas, VP8L and VP8 frame dimensions).  Every case goes through ``image.load`` in-process; every 8th batch
also through ``load_batch`` on 2 threads and the pHash extractor.  The only
acceptable outcomes are a uint8 (H, W, 3) array or a ValueError
(ImageDecodeError) with a message.  Anything else is counted and its input
saved; a crash kills the process, so the case being decoded is always
written to ``build/fuzz/current`` first.

    python tests/fuzz_image.py [--cases N] [--seed S] [--out build/fuzz]
"""
import argparse
import os
import struct
import sys
import time
import zlib

import numpy as np
from PIL import Image

sys.path[:0] = [os.path.dirname(__file__), os.path.join(os.path.dirname(__file__), "..")]
from test_image import encode, exif_jpeg, photo_like, png_bytes, psd_bytes, webp_exif  # noqa: E402

from imgsearch import _core, features, image  # noqa: E402
from imgsearch.datasets import shared_data  # noqa: E402

FLOWERS = shared_data("flowers17")


def seeds(n_photos):
    arrays = [photo_like(60, 80, seed=1), photo_like(1, 37, seed=2), photo_like(33, 1, seed=3)]
    folder = os.path.join(FLOWERS, "images")
    if os.path.isdir(folder):
        names = sorted(os.listdir(folder))[:: max(1, len(os.listdir(folder)) // n_photos)][:n_photos]
        for name in names:
            with Image.open(os.path.join(folder, name)) as im:
                im = im.convert("RGB")
                im.thumbnail((160, 160))  # small: ASan runs stay short
                arrays.append(np.asarray(im))
    out = []
    for k, arr in enumerate(arrays):
        im = Image.fromarray(arr)
        rgba = np.dstack([arr, arr[..., 0]])
        out += [("jpeg", encode(arr, "JPEG", quality=80)),
                ("jpeg", encode(arr, "JPEG", quality=80, progressive=True)),
                ("jpeg", exif_jpeg(arr, 1 + k % 8)),
                ("jpeg", encode(im.convert("L"), "JPEG", quality=70)),
                ("jpeg", encode(im.convert("CMYK"), "JPEG", quality=70)),
                ("png", encode(arr, "PNG")),
                ("png", encode(rgba, "PNG")),
                ("png", encode(im.quantize(32), "PNG")),
                ("png", png_bytes(arr.astype(np.uint16) * 257, 16, 2)),
                ("gif", encode(im.quantize(64), "GIF")),
                ("bmp", encode(arr, "BMP")),
                ("tga", encode(arr, "TGA")),
                ("pnm", encode(arr, "PPM")),
                ("psd", psd_bytes(arr))]
        if _core._HAVE_WEBP:
            out += [("webp", encode(arr, "WEBP", quality=75)),
                    ("webp", encode(arr, "WEBP", lossless=True)),
                    ("webp", encode(rgba, "WEBP", quality=75)),             # VP8X + ALPH + VP8
                    ("webp", encode(rgba, "WEBP", lossless=True)),
                    ("webp", webp_exif(arr, 1 + k % 8, quality=75))]       # VP8X + VP8 + EXIF
    return out


# ---------- structured mutations ---------------------------------------------

INTERESTING16 = [0, 1, 2, 7, 8, 255, 256, 0x7FFF, 0x8000, 0xFFFF]
INTERESTING32 = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 60000, 65535, 65536, 100000]


def fix_png_crc(b, start):
    length = struct.unpack(">I", b[start:start + 4])[0]
    body = bytes(b[start + 4:start + 8 + length])
    b[start + 8 + length:start + 12 + length] = struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def mutate_png(b, rng):
    field = rng.integers(0, 6)
    if field < 2:  # width / height
        b[16 + 4 * field:20 + 4 * field] = struct.pack(">I", int(rng.choice(INTERESTING32)))
    else:          # bit depth, colour type, compression/filter/interlace
        b[24 + field - 2] = int(rng.choice([0, 1, 2, 3, 4, 6, 8, 16, 255]))
    fix_png_crc(b, 8)


def find_marker(b, codes):
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            return None
        m = b[i + 1]
        if m in codes:
            return i
        if m == 0xDA:
            return None
        i += 2 + (b[i + 2] << 8 | b[i + 3])
    return None


def mutate_jpeg(b, rng):
    sof = find_marker(b, {0xC0, 0xC1, 0xC2})
    if sof is None or rng.random() < 0.3:
        seg = find_marker(b, {0xDB, 0xC4, 0xDD})  # DQT / DHT / DRI contents
        if seg is not None:
            p = seg + 4 + int(rng.integers(0, 16))
            if p < len(b):
                b[p] = int(rng.integers(0, 256))
        return
    field = rng.integers(0, 5)
    if field == 0:
        b[sof + 5:sof + 7] = struct.pack(">H", int(rng.choice(INTERESTING16)))  # height
    elif field == 1:
        b[sof + 7:sof + 9] = struct.pack(">H", int(rng.choice(INTERESTING16)))  # width
    elif field == 2:
        b[sof + 9] = int(rng.choice([0, 1, 2, 3, 4, 5, 255]))                  # components
    elif field == 3:
        b[sof + 4] = int(rng.choice([0, 1, 8, 12, 16]))                         # precision
    else:
        b[sof + 11] = int(rng.integers(0, 256))                                 # sampling factors


def mutate_gif(b, rng):
    if rng.random() < 0.5:
        b[6 + 2 * int(rng.integers(0, 2)):8 + 2 * int(rng.integers(0, 2))] = struct.pack("<H", int(rng.choice(INTERESTING16)))
    else:
        i = bytes(b).find(b"\x2c")
        if i > 0 and i + 10 <= len(b):
            off = i + 1 + 2 * int(rng.integers(0, 4))
            b[off:off + 2] = struct.pack("<H", int(rng.choice(INTERESTING16)))


def mutate_bmp(b, rng):
    field = int(rng.integers(0, 5))
    if field == 0:
        b[10:14] = struct.pack("<I", int(rng.choice(INTERESTING32)))          # pixel data offset
    elif field in (1, 2):
        b[14 + 4 * field:18 + 4 * field] = struct.pack("<I", int(rng.choice(INTERESTING32)))  # width/height
    elif field == 3:
        b[28:30] = struct.pack("<H", int(rng.choice([0, 1, 4, 8, 15, 16, 24, 32, 33, 0xFFFF])))  # bpp
    else:
        b[30:34] = struct.pack("<I", int(rng.choice([0, 1, 2, 3, 4, 5, 0xFFFFFFFF])))  # compression


def webp_chunks(b):
    """(fourcc, offset of the chunk header) of each RIFF chunk of a WebP."""
    out, pos = [], 12
    while pos + 8 <= len(b):
        size = struct.unpack_from("<I", b, pos + 4)[0]
        out.append((bytes(b[pos:pos + 4]), pos))
        pos += 8 + size + (size & 1)
    return out


def mutate_webp(b, rng):
    chunks = webp_chunks(b)
    tag, at = chunks[int(rng.integers(0, len(chunks)))]
    field = int(rng.integers(0, 3))
    if field == 0:                       # the RIFF size or a chunk's size
        off = 4 if rng.random() < 0.3 else at + 4
        b[off:off + 4] = struct.pack("<I", int(rng.choice(INTERESTING32)))
    elif tag == b"VP8X":                 # canvas width / height - 1 (24 bits each), flags
        off = at + 8 + int(rng.choice([0, 4, 7]))
        b[off:off + 3] = int(rng.choice([0, 1, 0x3FFF, 0xFFFF, 0xFFFFFF])).to_bytes(3, "little")
    elif tag == b"VP8L":                 # 14-bit width / height - 1, alpha, version
        bits = struct.unpack_from("<I", b, at + 9)[0]
        shift = int(rng.choice([0, 14, 28, 29]))
        width = 3 if shift >= 28 else 14
        bits = (bits & ~(((1 << width) - 1) << shift)) | (int(rng.integers(0, 1 << width)) << shift)
        struct.pack_into("<I", b, at + 9, bits & 0xFFFFFFFF)
    elif tag == b"VP8 ":                 # frame tag, start code, 14-bit width / height with scale bits
        off = at + 8 + int(rng.choice([0, 3, 6, 8]))
        b[off:off + 2] = struct.pack("<H", int(rng.choice(INTERESTING16)))
    else:                                # ALPH / EXIF / ICCP contents
        p = at + 8 + int(rng.integers(0, 16))
        if p < len(b):
            b[p] = int(rng.integers(0, 256))


STRUCTURED = {"png": mutate_png, "jpeg": mutate_jpeg, "gif": mutate_gif, "bmp": mutate_bmp, "webp": mutate_webp}


def mutate(kind, data, rng):
    L = len(data)
    op = int(rng.integers(0, 5))
    if op == 0:
        return data[:int(rng.integers(0, L))], "truncate"
    b = bytearray(data)
    if op == 1:
        for _ in range(int(rng.integers(1, 17))):
            b[int(rng.integers(0, L))] ^= 1 << int(rng.integers(0, 8))
        return bytes(b), "bitflip"
    if op == 2:
        for _ in range(int(rng.integers(1, 5))):
            b[int(rng.integers(0, min(L, 128)))] = int(rng.integers(0, 256))
        return bytes(b), "header-bytes"
    if op == 3 and kind in STRUCTURED:
        try:
            STRUCTURED[kind](b, rng)
        except (IndexError, struct.error, ValueError):
            pass
        return bytes(b), "header-field"
    p, q = sorted(int(x) for x in rng.integers(0, L, size=2))
    return data[:q] + data[p:q] + data[q:], "duplicate"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--out", default="build/fuzz")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    pool = seeds(args.photos)
    for kind, data in pool:
        image.load(data)
    current = os.path.join(args.out, "current")
    counts = {"cases": 0, "decoded": 0, "clean_errors": 0, "bad_outcomes": 0}
    by_kind = {}
    t0 = time.time()
    batch = []
    while counts["cases"] < args.cases:
        kind, data = pool[int(rng.integers(0, len(pool)))]
        case, how = mutate(kind, data, rng)
        with open(current, "wb") as f:
            f.write(case)
        counts["cases"] += 1
        by_kind[kind] = by_kind.get(kind, 0) + 1
        try:
            out = image.load(case)
            ok = out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
            counts["decoded" if ok else "bad_outcomes"] += 1
        except ValueError as e:
            ok = bool(str(e))
            counts["clean_errors" if ok else "bad_outcomes"] += 1
        except Exception as e:  # noqa: BLE001 -- anything else is a finding
            ok = False
            counts["bad_outcomes"] += 1
            print("unexpected %s on %s/%s: %s" % (type(e).__name__, kind, how, e))
        if not ok:
            with open(os.path.join(args.out, "bad-%d-%s-%s" % (counts["cases"], kind, how)), "wb") as f:
                f.write(case)
        batch.append(case)
        if len(batch) == 32:
            if counts["cases"] % 256 == 0:
                b, failed = image.load_batch(batch, size=32, resize=40, threads=2)
                assert b.shape[0] + len(failed) == len(batch)
                h, failed = features.PHash().extract_files(batch, threads=2)
                assert h.shape[0] + len(failed) == len(batch)
            batch = []
    os.remove(current)
    counts["seconds"] = round(time.time() - t0, 1)
    counts["seeds"] = len(pool)
    print("fuzz: %(cases)d corrupted files from %(seeds)d seeds in %(seconds)ss: %(decoded)d decoded, "
          "%(clean_errors)d clean errors, %(bad_outcomes)d bad outcomes, 0 crashes" % counts)
    print("by format:", by_kind)
    return 1 if counts["bad_outcomes"] else 0


if __name__ == "__main__":
    sys.exit(main())
