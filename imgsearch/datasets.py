"""Local datasets for demos, benchmarks and evaluation (never downloaded).

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package, which
puts the original IDX files under /usr/share/datasets/fashion-mnist/.
"""
import csv
import gzip
import os
import struct

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# Where the project's shared real data (flowers17 photos, converted pretrained
# weights) may lie: $IMGSEARCH_DATA, then ../shared/data beside the checkout,
# then the workplace's /work/shared/data.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA_DIRS = [d for d in (os.environ.get("IMGSEARCH_DATA"),
                                os.path.join(_REPO, "..", "shared", "data"),
                                "/work/shared/data") if d]


def shared_data(*parts):
    """The path of ``parts`` under the first shared-data folder that has it
    (else under the first candidate, so that messages name a useful place)."""
    for d in SHARED_DATA_DIRS:
        path = os.path.join(d, *parts)
        if os.path.exists(path):
            return os.path.abspath(path)
    return os.path.abspath(os.path.join(SHARED_DATA_DIRS[0], *parts))


def read_labels_csv(path, root=None):
    """A labels CSV (a header with ``path`` and ``label`` columns; other columns are
    ignored) -> {absolute path: label}.  Relative paths are resolved against
    ``root``, by default the CSV's own folder (flowers17's ``labels.csv`` lists
    ``images/image_0001.jpg``); absolute paths are kept.  Symlinks and ``..`` are
    resolved as the engine does (``os.path.realpath``)."""
    path = os.fspath(path)
    root = os.path.dirname(os.path.abspath(path)) if root is None else os.fspath(root)
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames or "label" not in reader.fieldnames:
            raise ValueError(f"{path}: expected a CSV header with 'path' and 'label' columns, "
                             f"found {reader.fieldnames}")
        for row in reader:
            out[os.path.realpath(os.path.join(root, row["path"]))] = row["label"]
    if not out:
        raise ValueError(f"{path}: a header but no rows; expected one row per image: path,label")
    return out


def read_idx(path):
    """Read an IDX file (optionally gzip-compressed) into a NumPy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic)")
    types = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in types:
        raise ValueError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = struct.unpack_from(">" + "I" * ndim, raw, 4)
    data = np.frombuffer(raw, dtype=types[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values for shape {shape}, found {data.size}")
    return data.reshape(shape)


def fashion_mnist(directory=FASHION_MNIST_DIR):
    """(X_train (60000, 784) float32, y_train, X_test (10000, 784) float32, y_test).

    Pixels stay in 0..255 (as in ann-benchmarks' fashion-mnist-784-euclidean).
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {directory}: install it with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu)"
        )

    def part(name):
        return read_idx(os.path.join(directory, name))

    X_train = part("train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32)
    X_test = part("t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32)
    return X_train, part("train-labels-idx1-ubyte.gz"), X_test, part("t10k-labels-idx1-ubyte.gz")
