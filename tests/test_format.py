"""Save / load / mmap / pickle, and the loader against hostile files."""
import os
import pickle
import struct

import numpy as np
import pytest

import imgsearch
from imgsearch import FlatIndex, IndexFormatError
from conftest import METRICS, make_data

HEADER = 64
ENTRY = 32


def crc32c(data, crc=0):
    """Bitwise CRC-32C (Castagnoli), the independent oracle for the C one."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def sections(raw):
    n = struct.unpack_from("<I", raw, 28)[0]
    out = []
    for i in range(n):
        tag, flags, off, size, crc, _ = struct.unpack_from("<IIQQII", raw, HEADER + i * ENTRY)
        out.append((tag.to_bytes(4, "little").decode(), off, size, crc))
    return out


def reseal(raw):
    """Recompute the header CRC so that only the semantic checks can object."""
    raw = bytearray(raw)
    n = struct.unpack_from("<I", raw, 28)[0]
    head = bytes(raw[:60]) + b"\0\0\0\0" + bytes(raw[HEADER:HEADER + n * ENTRY])
    struct.pack_into("<I", raw, 60, crc32c(head))
    return bytes(raw)


def small_index(metric="l2", n=40, rng=None):
    rng = rng or np.random.default_rng(0)
    dim = 64 if metric == "hamming" else 12
    index = FlatIndex(dim, metric)
    index.add(make_data(metric, n, dim, rng), ids=np.arange(n) * 3 + 1)
    return index


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("use_mmap", [False, True])
def test_round_trip_gives_identical_results(metric, use_mmap, tmp_path, rng):
    index = small_index(metric, 300, rng)
    path = tmp_path / "a.isx"
    index.save(path)
    loaded = imgsearch.load(path, mmap=use_mmap)
    assert isinstance(loaded, FlatIndex)
    assert (loaded.dim, loaded.metric, len(loaded)) == (index.dim, index.metric, len(index))
    assert loaded.borrowed  # data lives in the file's bytes, not copied again
    np.testing.assert_array_equal(loaded.ids, index.ids)
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    Q = index.vectors[:25]
    for a, b in zip(index.search(Q, k=6), loaded.search(Q, k=6)):
        np.testing.assert_array_equal(a, b)
    # the loaded index stays fully usable; a mapped file is never written
    size, mtime = path.stat().st_size, path.read_bytes()
    loaded.add(index.vectors[:3], ids=[10_000, 10_001, 10_002])
    loaded.remove([1])
    assert len(loaded) == len(index) + 2
    assert path.read_bytes() == mtime and path.stat().st_size == size
    index.add(index.vectors[:1])  # next_id survives the round trip
    loaded2 = imgsearch.load(path)
    loaded2.add(index.vectors[:1])
    assert loaded2.ids.max() == index.ids.max()


def test_crc_is_crc32c_and_covers_each_section(tmp_path):
    raw = small_index().to_bytes()
    assert raw[:8] == b"\x89ISX\r\n\x1a\n"
    secs = sections(raw)
    assert {s[0] for s in secs} >= {"PARM", "VECS", "IDS "}
    for tag, off, size, crc in secs:
        assert off % 64 == 0
        assert crc32c(raw[off:off + size]) == crc, tag
    assert struct.unpack_from("<Q", raw, 48)[0] == len(raw)
    assert reseal(raw) == raw


def test_pickle_round_trip(rng):
    index = small_index("cosine", 100, rng)
    clone = pickle.loads(pickle.dumps(index))
    np.testing.assert_array_equal(clone.vectors, index.vectors)
    np.testing.assert_array_equal(clone.ids, index.ids)
    Q = index.vectors[:5]
    np.testing.assert_array_equal(clone.search(Q, k=3)[1], index.search(Q, k=3)[1])


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "x.isx"
    small_index(n=10).save(path)
    small_index(n=20).save(str(path))  # replaces
    assert len(imgsearch.load(path)) == 20
    assert os.listdir(tmp_path) == ["x.isx"]
    with pytest.raises(FileNotFoundError):
        small_index().save(tmp_path / "missing-dir" / "x.isx")
    with pytest.raises(FileNotFoundError):
        imgsearch.load(tmp_path / "nope.isx")
    assert len(imgsearch.load(path)) == 20


def test_meta_section_round_trips(tmp_path):
    path = tmp_path / "m.isx"
    small_index().save(path, meta=b'{"paths": ["a.jpg"]}')
    assert imgsearch._core.read_meta(path) == b'{"paths": ["a.jpg"]}'
    assert len(imgsearch.load(path)) == 40


def load_bytes(raw, tmp_path, use_mmap=False):
    p = tmp_path / "bad.isx"
    p.write_bytes(raw)
    return imgsearch.load(p, mmap=use_mmap)


def test_truncation_at_every_boundary_is_a_format_error(tmp_path):
    raw = small_index().to_bytes()
    cuts = {0, 1, 7, 8, 63, 64, 65, HEADER + ENTRY, len(raw) - 1}
    for tag, off, size, crc in sections(raw):
        cuts |= {off - 1, off, off + 1, off + size - 1, off + size}
    for cut in sorted(c for c in cuts if 0 <= c < len(raw)):
        with pytest.raises(IndexFormatError):
            load_bytes(raw[:cut], tmp_path)
        with pytest.raises(IndexFormatError):
            imgsearch._core._from_bytes(raw[:cut])


def test_random_byte_flips_are_format_errors(tmp_path):
    raw = small_index().to_bytes()
    rng = np.random.default_rng(7)
    for pos in rng.integers(0, len(raw), 400):
        bad = bytearray(raw)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(IndexFormatError):
            imgsearch._core._from_bytes(bytes(bad))
    with pytest.raises(IndexFormatError):
        load_bytes(bytes(bad), tmp_path, use_mmap=True)


@pytest.mark.parametrize(
    "raw",
    [b"", b"hello world\n" * 10, b"\x89PNG\r\n\x1a\n" + bytes(100), bytes(64), os.urandom(4096),
     b'{"not": "an index"}'],
)
def test_foreign_files_are_format_errors(raw, tmp_path):
    with pytest.raises(IndexFormatError):
        load_bytes(raw, tmp_path)


def test_lying_headers_are_refused_before_allocating(tmp_path):
    raw = small_index().to_bytes()
    cases = {
        "count": lambda b: struct.pack_into("<Q", b, 40, 1 << 39),
        "dim": lambda b: struct.pack_into("<Q", b, 32, 1 << 40),
        "nsections": lambda b: struct.pack_into("<I", b, 28, 1 << 30),
        "kind": lambda b: struct.pack_into("<I", b, 16, 99),
        "metric": lambda b: struct.pack_into("<I", b, 20, 0),
        "section size": lambda b: struct.pack_into("<Q", b, HEADER + 16, 1 << 62),
        "section offset": lambda b: struct.pack_into("<Q", b, HEADER + 8, (1 << 64) - 64),
        "file size": lambda b: struct.pack_into("<Q", b, 48, 1 << 50),
        "version": lambda b: struct.pack_into("<H", b, 8, 2),
        "byte order": lambda b: struct.pack_into(">I", b, 12, 0x01020304),
    }
    for name, mutate in cases.items():
        bad = bytearray(raw)
        mutate(bad)
        with pytest.raises(IndexFormatError) as err:
            imgsearch._core._from_bytes(reseal(bytes(bad)))
        assert str(err.value), name


def test_semantically_bad_ids_are_refused():
    raw = bytearray(small_index().to_bytes())
    (off_ids,) = [off for tag, off, size, crc in sections(raw) if tag == "IDS "]
    struct.pack_into("<q", raw, off_ids + 8, struct.unpack_from("<q", raw, off_ids)[0])  # duplicate id
    idx = [i for i, s in enumerate(sections(raw)) if s[0] == "IDS "][0]
    new_crc = crc32c(raw[off_ids:off_ids + sections(raw)[idx][2]])
    struct.pack_into("<I", raw, HEADER + idx * ENTRY + 24, new_crc)
    with pytest.raises(IndexFormatError, match="unique"):
        imgsearch._core._from_bytes(reseal(bytes(raw)))
