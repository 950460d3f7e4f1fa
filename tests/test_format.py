"""Save / load / mmap / pickle, and the loader against hostile files."""
import errno
import json
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

import imgsearch
from imgsearch import FlatIndex, HNSWIndex, IndexFormatError, IVFPQIndex, KDTreeIndex
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


def test_io_errors_keep_errno_and_the_path(tmp_path):
    missing = str(tmp_path / "nope.isx")
    for call in (lambda: imgsearch.load(missing), lambda: imgsearch.load(missing, mmap=True),
                 lambda: imgsearch._core.read_meta(missing)):
        with pytest.raises(FileNotFoundError) as e:
            call()
        assert e.value.errno == errno.ENOENT and e.value.filename == missing
    with pytest.raises(IsADirectoryError) as e:
        imgsearch.load(tmp_path)
    assert e.value.filename == str(tmp_path)
    target = str(tmp_path / "missing-dir" / "x.isx")
    with pytest.raises(FileNotFoundError) as e:
        small_index().save(target)
    assert e.value.errno == errno.ENOENT and e.value.filename == target
    (tmp_path / "junk.isx").write_bytes(b"junk" * 40)
    with pytest.raises(IndexFormatError, match="bad magic"):
        imgsearch.load(tmp_path / "junk.isx")


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


# ---------------------------------------------------------------- lying headers and parameters, per kind

def set_param(raw, key, value):
    """The file with PARM's int64 `key` set to `value`, every CRC fixed up."""
    raw = bytearray(raw)
    for i, (tag, off, size, _) in enumerate(sections(raw)):
        if tag != "PARM":
            continue
        pos = off
        while pos < off + size:
            (klen,) = struct.unpack_from("<I", raw, pos)
            name = bytes(raw[pos + 4:pos + 4 + klen]).decode()
            if name == key:
                struct.pack_into("<q", raw, pos + 4 + klen + 4, value)
                struct.pack_into("<I", raw, HEADER + i * ENTRY + 24, crc32c(raw[off:off + size]))
                return reseal(bytes(raw))
            pos += 4 + klen + 4 + 8
    raise KeyError(key)


def get_param(raw, key):
    for tag, off, size, _ in sections(raw):
        pos = off
        while tag == "PARM" and pos < off + size:
            (klen,) = struct.unpack_from("<I", raw, pos)
            if raw[pos + 4:pos + 4 + klen] == key.encode():
                return struct.unpack_from("<q", raw, pos + 4 + klen + 4)[0]
            pos += 4 + klen + 4 + 8
    raise KeyError(key)


def set_header(raw, offset, value):
    bad = bytearray(raw)
    struct.pack_into("<Q", bad, offset, value)
    return reseal(bytes(bad))


def one_of_each_kind():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(60, 12)).astype(np.float32)
    hnsw = HNSWIndex(12, M=8, ef_construction=40)
    hnsw.add(X)
    hnsw.remove([3, 4])  # free slots: the slot count and the live count differ
    ivfpq = IVFPQIndex(12, nlist=4, m=3, nbits=4, refine="f32")
    ivfpq.train(X)
    ivfpq.add(X)
    ivfpq.remove([3, 4])  # swap-removed: lists of uneven sizes
    return {"flat": small_index(n=60), "kdtree": KDTreeIndex.from_array(X, leaf_size=8), "hnsw": hnsw,
            "ivfpq": ivfpq}


def lying_files():
    """name -> file bytes: one header field or parameter changed, every CRC right."""
    out = {}
    for kind, index in one_of_each_kind().items():
        raw = index.to_bytes()
        dim, count = struct.unpack_from("<QQ", raw, 32)
        for value in (0, count - 1, count + 1, 2 * count, 1 << 32, 1 << 40):
            out[f"{kind} count={value}"] = set_header(raw, 40, value)
        for value in (dim - 1, dim + 1, 2 * dim, 1 << 20):
            out[f"{kind} dim={value}"] = set_header(raw, 32, value)
        if kind == "kdtree":
            out["kdtree leaf_size=2^40"] = set_param(raw, "leaf_size", 1 << 40)
        if kind == "hnsw":
            slots, M = get_param(raw, "slots"), get_param(raw, "M")
            for value in (slots - 1, slots + 1, 1 << 31, (1 << 32) - 1, 1 << 40, -1):
                out[f"hnsw slots={value}"] = set_param(raw, "slots", value)
            for key, value in (("M", 2 * M), ("M", 1 << 20), ("node_bytes", 1 << 40),
                               ("ef_construction", (1 << 20) + 1), ("ef_search", 1 << 40), ("entry", slots),
                               ("max_level", 32), ("quant_ready", 7)):
                out[f"hnsw {key}={value}"] = set_param(raw, key, value)
        if kind == "ivfpq":
            for key, value in (("nlist", 1 << 20), ("nlist", 5), ("m", 1 << 20), ("m", 6), ("nbits", 8),
                               ("refine", 0), ("refine", 2), ("trained", 0), ("nprobe", 1 << 40)):
                out[f"ivfpq {key}={value}"] = set_param(raw, key, value)
    return out


# Loads each file with the address space capped at what the process uses plus
# 256 MiB, so a loader that sized anything by a lying field fails to allocate
# (or, under AddressSanitizer, aborts) instead of passing by luck.
CAPPED_LOADER = """
import json, resource, sys
import imgsearch
vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:")][0]
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
out = {}
for name, path in json.loads(sys.argv[1]).items():
    try:
        imgsearch.load(path)
        out[name] = ["loaded", ""]
    except Exception as e:
        out[name] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""


def test_lying_counts_dims_and_parameters_are_refused_before_allocating(tmp_path):
    files = {}
    for i, (name, raw) in enumerate(lying_files().items()):
        path = tmp_path / f"{i}.isx"
        path.write_bytes(raw)
        files[name] = str(path)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", CAPPED_LOADER, json.dumps(files)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout)
    wrong = {name: r for name, r in results.items() if r[0] != "IndexFormatError"}
    assert not wrong, wrong
    for name, (_, message) in results.items():
        assert message.strip(), name
    # in the same process, uncapped, the same verdicts (and in-memory loads agree)
    for name in ("hnsw count=1099511627776", "hnsw count=4294967296", "flat count=61", "kdtree dim=13"):
        with pytest.raises(IndexFormatError):
            imgsearch._core._from_bytes(open(files[name], "rb").read())
