"""ImageSearch: a folder of images in, searchable vectors out.

    >>> import imgsearch as isx
    >>> engine = isx.ImageSearch(extractor="colorhist", index="flat")
    >>> report = engine.add("photos/")              # recursive; bad files reported, never fatal
    >>> hits = engine.search("photos/cat.jpg", k=8) # SearchResults: .paths .distances .to_pandas()
    >>> engine.save("photos.isx"); engine = isx.ImageSearch.load("photos.isx")

The engine owns three things: an extractor (images -> vectors), an index
(vectors -> nearest ids) and the table id <-> path/metadata.  All three are
saved in one file, the library's index format, with the table and the
extractor's configuration in the file's META section (JSON), written
atomically like every index.

Ids: each added item gets the next integer id; adding a path that is already
in the engine replaces its vector and keeps its id (an update).  Arrays and
PIL images have no path; they get ids too and show as ``None`` in ``.paths``.

Whitening, DBA and query expansion (``whitening=``, ``dba=``, ``expand=``): the
index then compares derived vectors, while the engine keeps the extractor's own
vectors beside it (``vectors()``), so that the derived ones can be recomputed:

- ``whitening``: a :class:`~imgsearch.whitening.PCAWhitening`, learned on the
  collection's own vectors (no labels).  It is fitted at the end of the
  ``add()`` / ``add_vectors()`` call after which the collection holds at least
  ``whitening.min_samples`` vectors, and refitted each time the collection has
  doubled since (or when ``fit_whitening()`` is called); each fit rebuilds the
  index from the kept vectors.  Below ``min_samples`` vectors it is the identity:
  a small collection is searched with the extractor's vectors as they are.
  Vectors added between fits are whitened with the current fit.  Queries are
  whitened the same way, so search never changes the engine (searches are safe
  to run concurrently, as before).
- ``dba=n``: every database vector is replaced by alpha-DBA over its n nearest
  (imgsearch.rerank), computed over the whole collection (a batch search of
  every vector and an index rebuild) on the same schedule: when the whitening is
  fitted, when the collection has doubled since the last pass, and by
  ``fit_whitening()``.  Vectors added between passes are augmented as they come,
  over their nearest in the index as it is (whose vectors are augmented
  already); removed vectors stay in their former neighbours' sums until the
  next pass.  So the work is amortised: about two passes per doubling.
- ``expand=n``: alpha-QE at search time (``search(..., expand=n)`` overrides it).

Cost: with whitening or DBA the engine holds the extractor's vectors twice
(the kept ones, and the index's); a whitening with ``dim_out`` makes the
index's copy ``dim / dim_out`` times smaller.  All of it is saved in the file.

Paths: one file, one entry.  Every path is stored and looked up by its
:func:`canonical_path` (absolute, symlinks and ``..`` resolved), so a file
named twice in one ``add()`` -- or reached through a folder and by itself,
or through a symlink -- is indexed once.
"""
from __future__ import annotations

import glob as _glob
import inspect
import io
import json
import os
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _core
from . import distance as _distance
from . import extractors as _extractors
from . import rerank as _rerank
from .evaluate import label_retrieval_scores
from .features import Extractor
from .results import DuplicateGroup, SearchResults
from .whitening import PCAWhitening

__all__ = ["ImageSearch", "AddReport", "IMAGE_EXTENSIONS", "canonical_path"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tga", ".psd", ".pnm", ".ppm", ".pgm",
                    ".webp", ".tif", ".tiff")
META_FORMAT = "imgsearch.engine/1"
# An engine with kept vectors (whitening, DBA) stores them after its JSON table:
# META = JSON, one NUL byte (never inside JSON text), an .npz of plain arrays.
META_FORMAT_ARRAYS = "imgsearch.engine/2"
ADD_CHUNK = 512  # most files per extraction call: bounds memory
PROGRESS_IMAGES = 32   # a progress bar moves at least every this many images...
PROGRESS_SECONDS = 1.0  # ...or at least every this many seconds

# Distances under which two items count as near-duplicates, per metric, when the
# caller gives no threshold (measured on resized/recompressed copies: see README).
DEFAULT_DUP_THRESHOLD = {"hamming": 10.0, "cosine": 0.05, "l1": 0.10, "l2": 0.10, "ip": 0.05}


PathLike = str | os.PathLike[str]
# What add() and search() take: a folder, glob or path, an image array, a PIL image, or a list of these.
Images = PathLike | np.ndarray | Iterable[Any] | Any
# Labels for evaluate(): "folders", a labels CSV path, {path or id: label}, or path -> label.
Labels = PathLike | dict | Callable[[str], Any]


class AddReport:
    """What ``ImageSearch.add`` did: ``added`` and ``updated`` counts, ``ids`` of the
    items indexed (in input order), ``failed``: a list of (path, reason), and
    ``skipped``: the files found in folders that were not read because their
    extension is not an image's (hidden files aside)."""

    def __init__(self):
        self.added = 0
        self.updated = 0
        self.ids = []
        self.failed = []
        self.skipped = []
        self.seconds = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def __repr__(self):
        s = (f"AddReport(added={self.added}, updated={self.updated}, failed={len(self.failed)}, "
             f"skipped={len(self.skipped)}, {self.seconds:.1f} s)")
        if self.skipped:
            exts = {}
            for p in self.skipped:
                ext = os.path.splitext(p)[1].lower() or "(no extension)"
                exts[ext] = exts.get(ext, 0) + 1
            s += "\n  skipped (not an image extension): " + ", ".join(f"{e} {n}" for e, n in sorted(exts.items()))
        for path, reason in self.failed[:5]:
            s += f"\n  failed: {path}: {reason}"
        if len(self.failed) > 5:
            s += f"\n  ... {len(self.failed) - 5} more"
        return s


def canonical_path(path: PathLike) -> str:
    """The one name the engine knows a file by: ``os.path.realpath`` (absolute,
    with symlinks, ``.`` and ``..`` resolved)."""
    return os.path.realpath(os.fspath(path))


def _is_glob(s):
    return any(c in s for c in "*?[")


def list_images(source: PathLike, recursive: bool = True, skipped: list[str] | None = None) -> list[str]:
    """The image files a folder, glob or file path names, sorted (the order ids are given in).
    The other files of a folder, hidden ones aside, are appended to ``skipped``."""
    source = os.fspath(source)
    skipped = [] if skipped is None else skipped

    def is_image(path):
        name = os.path.basename(path)
        if name.startswith("."):
            return False
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            skipped.append(path)
            return False
        return True

    if os.path.isdir(source):
        out = []
        for root, dirs, files in os.walk(source):
            dirs.sort()
            if not recursive:
                dirs[:] = []
            out.extend(p for p in (os.path.join(root, f) for f in sorted(files)) if is_image(p))
        return out
    if os.path.isfile(source):
        return [source]
    if _is_glob(source):
        return sorted(p for p in _glob.glob(source, recursive=True) if os.path.isfile(p))
    raise FileNotFoundError(f"{source!r} is not a folder, a file or a glob pattern that exists")


def _one_entry_per_path(items, metas):
    """(items, canonical paths, metas) with each file once, at its first position."""
    out_items, out_paths, out_metas, seen = [], [], [], set()
    for it, m in zip(items, metas):
        p = canonical_path(it) if isinstance(it, (str, os.PathLike)) else None
        if p is not None:
            if p in seen:
                continue
            seen.add(p)
        out_items.append(it)
        out_paths.append(p)
        out_metas.append(m)
    return out_items, out_paths, out_metas


def _check_saveable(value, item):
    """Metadata is saved as JSON with the engine: refuse what cannot be, now."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"metadata for {item}: expected a JSON-serialisable value (str, int, float, bool, None, and "
            f"lists or dicts of these), since it is saved with the engine; found {type(value).__name__} ({e}). "
            "Convert it first, e.g. NumPy scalars with .item() and arrays with .tolist()") from None


def _accepts_progress(extractor):
    """Whether ``extractor.extract_files`` reports progress itself (``progress=`` callable)."""
    try:
        return "progress" in inspect.signature(extractor.extract_files).parameters
    except (TypeError, ValueError):
        return False


def _chunks(n, paced):
    """(start, stop) slices of the n items to extract.  ``paced`` (a progress bar
    is shown and the extractor does not report progress itself): chunks are sized
    from the measured speed so that each takes about half of PROGRESS_SECONDS,
    never fewer than PROGRESS_IMAGES images; else full chunks of ADD_CHUNK."""
    c0, size = 0, PROGRESS_IMAGES if paced else ADD_CHUNK
    while c0 < n:
        c1 = min(c0 + size, n)
        t0 = time.perf_counter()
        yield c0, c1
        if paced:
            per_image = (time.perf_counter() - t0) / (c1 - c0)
            size = int(min(ADD_CHUNK, max(PROGRESS_IMAGES, 0.5 * PROGRESS_SECONDS / max(per_image, 1e-9))))
        c0 = c1


def label_paths(labels: Labels, paths: Sequence[str]) -> dict[str, Any]:
    """{path: label} for those of ``paths`` (canonical) that ``labels`` labels:
    "folders" (the parent folder's name), a labels CSV path, a dict keyed by
    path (ids are the engine's business), or a callable path -> label."""
    out: dict[str, Any]
    if isinstance(labels, (str, os.PathLike)) and os.fspath(labels) == "folders":
        out = {p: os.path.basename(os.path.dirname(p)) for p in paths}
    elif isinstance(labels, (str, os.PathLike)):
        if not os.path.isfile(labels):
            raise FileNotFoundError(f"labels: expected 'folders' or the path of a labels CSV, found {labels!r}, "
                                    "which is not a file")
        from .datasets import read_labels_csv
        table = read_labels_csv(labels)
        out = {p: table.get(p) for p in paths}
    elif callable(labels):
        out = {p: labels(p) for p in paths}
    elif isinstance(labels, dict):
        table = {canonical_path(key): v for key, v in labels.items() if isinstance(key, (str, os.PathLike))}
        out = {p: table.get(p) for p in paths}
    else:
        raise TypeError(f"labels: expected 'folders', a labels CSV path, a dict or a callable; "
                        f"found {type(labels).__name__}")
    return {p: v for p, v in out.items() if v is not None}


def check_labels(lab: dict, source: Any, example_path: str | None = None) -> None:
    """Refuse labels that cannot measure anything: fewer than two labelled items, or
    fewer than two distinct labels (every hit would be relevant, mAP 1.0).
    ``source``: what the labels were given as; ``example_path``: one labelled file."""
    distinct = set(lab.values())
    if len(lab) >= 2 and len(distinct) >= 2:
        return
    what = f"labels={source!r}" if isinstance(source, (str, os.PathLike)) else f"the {type(source).__name__} labels"
    if len(lab) < 2:
        raise ValueError(f"{what}: need at least 2 labelled items to evaluate, found {len(lab)}")
    hint = ""
    if isinstance(source, str) and source == "folders" and example_path is not None:
        folder = os.path.dirname(example_path)
        hint = (f": every image is in the one folder {folder!r}. Give the labels another way: a labels CSV "
                "(path,label), a dict {path: label} or a callable path -> label")
        for csv_path in (os.path.join(folder, "labels.csv"), os.path.join(os.path.dirname(folder), "labels.csv")):
            if os.path.isfile(csv_path):
                hint += f"; {csv_path!r} exists: evaluate({csv_path!r})"
                break
    raise ValueError(f"{what}: found 1 distinct label ({next(iter(distinct))!r}) for {len(lab)} items, so every "
                     f"hit would count as relevant (mAP 1.0); expected at least 2 labels{hint}")


class ImageSearch:
    """Index images by content and search them by example.

    extractor   "colorhist", "lbp", "colorhist+lbp", "phash", "dhash", a model name ("mobilenet_v2",
                "resnet50", ...), a TorchScript file path, or any Extractor object.
    index       "hnsw" (default), "flat" (exact), "kdtree", or "ivfpq" (compressed: PQ codes in
                an inverted file, exact until the collection reaches train_at=10,000 vectors,
                then trained on it; see imgsearch/ivf.py), or an index object.
    weights     weights file for a named model (nothing is downloaded).
    extractor_params  passed to the extractor (e.g. mean/std/size for a TorchScript file).
    whitening   a PCAWhitening learned on the collection (see the module docstring), an
                int (PCAWhitening(dim_out=that)), None, or "auto": what the extractor
                recommends (the named MobileNetV2: see its MODELS entry), else none.
    dba         alpha-DBA over this many neighbours (0: none), or "auto" (as whitening).
    expand      alpha-QE over this many neighbours at search time (0: none), or "auto".
    alpha       the similarity exponent of DBA and QE (Radenovic et al.: 3).
    index_params      passed to the index (e.g. M=16, ef_construction=200).
    """

    def __init__(self, extractor: str | os.PathLike[str] | Extractor = "colorhist", index: str | Any = "hnsw", *,
                 weights: PathLike | None = None, extractor_params: dict[str, Any] | None = None,
                 threads: int | None = None, whitening: PCAWhitening | int | str | None = "auto",
                 dba: int | str = "auto", expand: int | str = "auto", alpha: float = 3.0,
                 **index_params: Any) -> None:
        params = dict(extractor_params or {})
        if weights is not None:
            params["weights"] = weights
        self.extractor = _extractors.get_extractor(extractor, **params)
        self.threads = threads
        self._paths: dict[int, str | None] = {}  # id -> path (None for arrays)
        self._meta: dict[int, Any] = {}          # id -> metadata (JSON-able)
        self._by_path: dict[str, int] = {}       # canonical path -> id
        self._next_id = 0
        self._set_postprocessing(whitening, dba, expand, alpha, named_index=isinstance(index, str),
                                 compressed=index == "ivfpq")
        if isinstance(index, str):
            self.index_kind = index
            self.index_params = dict(index_params)
            w = self.whitening
            self.index = self._make_index(index, index_params, dim=w.dim if w is not None and w.fitted else None)
        else:
            if index_params:
                raise ValueError("index parameters go with an index name, not with an index object")
            self.index = index
            self.index_kind = "ivfpq" if type(index).__name__ == "AutoIVFPQ" else \
                type(index).__name__.replace("Index", "").lower()
            self.index_params = {}
            if index.dim != self.extractor.dim:
                raise ValueError(f"the index has dim {index.dim} but the extractor gives {self.extractor.dim}")

    # -- whitening, DBA, query expansion ---------------------------------------------
    def _set_postprocessing(self, whitening, dba, expand, alpha, named_index=True, compressed=False):
        """Check and set whitening / dba / expand / alpha ("auto": the extractor's recommendation).
        ``compressed`` (index="ivfpq"): "auto" leaves out whitening and DBA, which keep every
        float32 vector beside the index -- the memory the compressed index is there to save;
        query expansion needs nothing kept and stays.  Asked for by name, they are honoured."""
        recommended = dict(getattr(self.extractor, "engine_defaults", None) or {})
        if compressed:
            recommended.pop("whitening", None)
            recommended.pop("dba", None)
        if isinstance(whitening, str):
            if whitening != "auto":
                raise ValueError(f"whitening: expected a PCAWhitening, an int (dim_out), None or 'auto', "
                                 f"found {whitening!r}")
            whitening = recommended.get("whitening")
            whitening = PCAWhitening(**whitening) if whitening is not None else None
        elif isinstance(whitening, (int, np.integer)) and not isinstance(whitening, bool):
            whitening = PCAWhitening(dim_out=int(whitening))
        elif whitening is not None and not isinstance(whitening, PCAWhitening):
            raise TypeError(f"whitening: expected a PCAWhitening, an int (dim_out), None or 'auto', "
                            f"found {type(whitening).__name__}")
        dba = recommended.get("dba", 0) if isinstance(dba, str) and dba == "auto" else dba
        expand = recommended.get("expand", 0) if isinstance(expand, str) and expand == "auto" else expand
        for name, v in (("dba", dba), ("expand", expand)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name}: expected a number of neighbours >= 0 (0: off) or 'auto', found {v!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 100:
            raise ValueError(f"alpha: expected a number from 0 to 100 (3 is the usual choice), found {alpha!r}")
        if whitening is not None or dba or expand:
            ex = self.extractor
            if ex.metric not in ("cosine", "ip", "l2") or np.dtype(getattr(ex, "dtype", np.float32)) != np.float32:
                raise ValueError(f"whitening, dba and expand work on float vectors compared by cosine, ip or l2; "
                                 f"the {ex.name} extractor gives {np.dtype(ex.dtype).name} vectors for "
                                 f"{ex.metric!r}")
        if (whitening is not None or dba) and not named_index:
            raise ValueError("whitening= and dba= rebuild the index from the kept vectors: give the index by name "
                             "(index='hnsw', 'flat' or 'kdtree') with its parameters, not an index object")
        if whitening is not None and whitening.fitted and whitening.dim_in != self.extractor.dim:
            raise ValueError(f"whitening: fitted on {whitening.dim_in}-d vectors, but the extractor gives "
                             f"{self.extractor.dim}-d ones")
        self.whitening, self.dba, self.expand, self.alpha = whitening, int(dba), int(expand), float(alpha)
        # the extractor's vectors, kept when the index holds derived ones
        self._raw = _core.FlatIndex(self.extractor.dim, metric=self.extractor.metric) \
            if whitening is not None or self.dba else None
        self._fitted_at = 0  # collection size at the last whitening fit (0: none, or given fitted)
        self._dba_at = 0     # collection size at the last full DBA pass
        self._pending: list[int] = []  # ids added since the last refresh (augmented at the next one)

    def _to_index_space(self, X):
        """Extractor vectors -> the vectors the index compares: whitened once fitted."""
        w = self.whitening
        return w.transform(X) if w is not None and w.fitted else np.ascontiguousarray(X)

    def vectors(self, items: PathLike | int | Iterable[PathLike | int]) -> np.ndarray:
        """The extractor's vectors of items in the engine (ids or paths), one row each:
        what ``search_vectors`` takes.  Items not in the engine raise KeyError."""
        if isinstance(items, (str, os.PathLike, int, np.integer)):
            items = [items]
        items = list(items)
        ids = [self._id_of(it) for it in items]
        missing = [it for it, i in zip(items, ids) if i is None]
        if missing:
            raise KeyError(f"not in the engine: {missing[:5]}")
        store = self._raw if self._raw is not None else self.index
        return store.get(np.asarray(ids, dtype=np.int64))

    def fit_whitening(self) -> None:
        """Learn the whitening on the engine's vectors now and recompute DBA over the
        whole collection (whichever of the two the engine has), rebuilding the index.
        (Both also happen by themselves: see the module docstring.)"""
        if self.whitening is None and not self.dba:
            raise ValueError("this engine has no whitening and no DBA: "
                             "ImageSearch(..., whitening=PCAWhitening(...)) or dba=n")
        self._refresh(refit=True)

    def _refresh(self, refit=False):
        """After a change: fit the whitening and make a full DBA pass when due (and
        rebuild the index), else augment the vectors added since the last call."""
        if self._raw is None:
            return
        n, w = len(self._raw), self.whitening
        pending, self._pending = self._pending, []
        fit = w is not None and n > 0 and (refit or (n >= w.min_samples and (
            not w.fitted or (self._fitted_at and n >= 2 * self._fitted_at))))
        dba_pass = self.dba and n > 1 and (refit or fit or n >= 2 * max(self._dba_at, 1))
        params = {"ef": max(64, 2 * (self.dba + 1))} if self.index_kind == "hnsw" else {}
        if not fit and not dba_pass:
            pending = np.asarray([i for i in pending if i in self._paths], dtype=np.int64)
            if self.dba and len(pending) and n > 1:  # between passes: over the index as it is
                V = _rerank.expand_queries(self.index, self.index.get(pending), self.dba, self.alpha,
                                           own=pending, **params)
                self.index.add(V, ids=pending)
            return
        ids = np.asarray(self._raw.ids, dtype=np.int64)
        X = self._raw.get(ids)
        if fit:
            w.fit(X)
            self._fitted_at = n
        V = self._to_index_space(X)
        if dba_pass:
            base = self._make_index(self.index_kind, self.index_params, dim=V.shape[1])
            base.add(V, ids=ids)
            ids, V = _rerank.augment_database(base, self.dba, self.alpha, ids, **params)
            self._dba_at = n
        index = self._make_index(self.index_kind, self.index_params, dim=V.shape[1])
        index.add(V, ids=ids)
        self.index = index

    # -- the index -----------------------------------------------------------------
    def _index_metric(self, kind):
        metric = self.extractor.metric
        if kind == "kdtree":
            if metric == "cosine" and getattr(self.extractor, "normalize", False):
                return "l2"  # unit vectors: l2 ranks exactly as cosine
            if metric not in ("l2", "l1"):
                raise ValueError(f"index='kdtree' supports l2 and l1; the {self.extractor.name} extractor's "
                                 f"metric is {metric!r}: use index='flat' or 'hnsw'")
        return metric

    def _make_index(self, kind, params, dim=None):
        import imgsearch
        if kind == "ivfpq":  # trains itself once the collection is large enough (imgsearch/ivf.py)
            from .ivf import AutoIVFPQ
            return AutoIVFPQ(self.extractor.dim if dim is None else dim, metric=self._index_metric(kind), **params)
        classes = {"flat": "FlatIndex", "hnsw": "HNSWIndex", "kdtree": "KDTreeIndex", "ivfpq": None}
        if kind not in classes:
            raise ValueError(f"index: expected one of {sorted(classes)} or an index object, found {kind!r}")
        cls = getattr(imgsearch, classes[kind], None)
        if cls is None:
            raise ValueError(f"index={kind!r} is not available in this build of imgsearch")
        return cls(self.extractor.dim if dim is None else dim, metric=self._index_metric(kind), **params)

    # -- adding ----------------------------------------------------------------------
    def _expand(self, source, skipped):
        """-> list of items (paths, arrays); non-image files of folders go to `skipped`."""
        if isinstance(source, (str, os.PathLike)):
            return list_images(source, skipped=skipped)
        if isinstance(source, np.ndarray):
            if source.ndim == 3:
                return [source]
            if source.ndim == 4:
                return list(source)
            raise ValueError(f"an image array must be (H, W, 3) or a batch (N, H, W, 3); found shape {source.shape}")
        if hasattr(source, "convert") and hasattr(source, "mode"):  # a PIL image
            return [source]
        try:
            items = list(source)
        except TypeError:
            raise TypeError(f"source: expected a folder, glob, path, list of paths, image array or PIL image; "
                            f"found {type(source).__name__}") from None
        out = []
        for it in items:
            if isinstance(it, (str, os.PathLike)):
                p = os.fspath(it)
                out.extend(list_images(p, skipped=skipped) if os.path.isdir(p) or _is_glob(p) else [p])
            else:
                out.append(it)
        return out

    def add(self, source: Images, metadata: dict | Sequence[Any] | Callable[[Any], Any] | None = None, *,
            progress: bool = True) -> AddReport:
        """Index images: a folder (recursive), a glob, a path, a list of these, image
        arrays or PIL images.  Unreadable files are skipped and listed in the report.
        A file given more than once (twice in a list, or by a folder and by itself)
        is indexed once.

        metadata: a dict {path: value}, a list aligned with the items, or a callable
        path -> value; values must be JSON-serialisable (they are saved with the
        engine): anything else is refused here, naming the item, before any image
        is read.  Returns an AddReport.
        """
        t0 = time.perf_counter()
        report = AddReport()
        items = self._expand(source, report.skipped)
        if not items:
            return report
        metas = self._metadata_of(metadata, items)
        items, paths, metas = _one_entry_per_path(items, metas)
        bar = self._progress(len(items)) if progress else None
        try:
            # the bar moves at least every PROGRESS_IMAGES images or PROGRESS_SECONDS:
            # per model batch when the extractor reports progress, else per chunk
            paced = bar is not None and not _accepts_progress(self.extractor)
            for c0, c1 in _chunks(len(items), paced):
                feats, ok = self._extract(items[c0:c1], paths[c0:c1], report, bar.update if bar else None)
                if len(ok):
                    self._insert(feats, [paths[c0 + i] for i in ok], [metas[c0 + i] for i in ok], report)
        finally:
            if bar is not None:
                bar.close()
        if report.added or report.updated:
            self._refresh()
        report.seconds = time.perf_counter() - t0
        return report

    def add_vectors(self, X: ArrayLike, paths: Sequence[PathLike] | None = None,
                    metadata: Sequence[Any] | None = None) -> AddReport:
        """Add feature vectors computed elsewhere (by this engine's extractor, or one
        configured the same), optionally with the paths they came from."""
        X = np.asarray(X)
        ex = self.extractor
        if X.ndim != 2 or X.shape[1] != (ex.dim if ex.metric != "hamming" else ex.dim // 8):
            raise ValueError(f"X: expected shape (n, {self.extractor.dim}) features, found {X.shape}")
        n = len(X)
        canon: list[str | None] = [None] * n if paths is None else [canonical_path(p) for p in paths]
        metas = [None] * n if metadata is None else list(metadata)
        if len(canon) != n or len(metas) != n:
            raise ValueError(f"{n} vectors but {len(canon)} paths and {len(metas)} metadata entries")
        for i, m in enumerate(metas):
            _check_saveable(m, canon[i] or f"vector {i}")
        report = AddReport()
        self._insert(X, canon, metas, report)
        self._refresh()
        return report

    def _extract(self, chunk, paths, report, progress=None):
        """Features of the readable items of a chunk, and their positions in it.
        ``progress``: called with counts of images done (by the extractor as it
        goes, when it reports progress itself, else once for the chunk)."""
        ex = self.extractor
        if all(p is not None for p in paths):
            if progress is not None and _accepts_progress(ex):
                feats, failed = ex.extract_files(paths, threads=self.threads, progress=progress)
            else:
                feats, failed = ex.extract_files(paths, threads=self.threads)
                if progress is not None:
                    progress(len(chunk))
            bad = set()
            for idx, _path, reason in failed:
                bad.add(int(idx))
                report.failed.append((paths[int(idx)], str(reason)))
            ok = [i for i in range(len(chunk)) if i not in bad]
            return feats, ok
        feats, ok = [], []
        for i, it in enumerate(chunk):  # arrays and mixed lists: one at a time, a bad one reported
            try:
                feats.append(ex.extract([paths[i] if paths[i] is not None else _extractors.as_loadable(it)]))
                ok.append(i)
            except (ValueError, OSError) as e:
                report.failed.append((paths[i] or f"<item {i}>", str(e)))
        if progress is not None:
            progress(len(chunk))
        return (np.concatenate(feats) if feats else None), ok

    def _insert(self, feats, paths, metas, report):
        ids = np.empty(len(paths), dtype=np.int64)
        new = {}  # path -> id given in this call
        for j, p in enumerate(paths):
            known = None if p is None else self._by_path.get(p, new.get(p))
            if known is not None:
                ids[j] = known
                if p not in new:  # already in the engine before this call: an update
                    report.updated += 1
                    new[p] = known
            else:
                ids[j] = self._next_id
                self._next_id += 1
                report.added += 1
                if p is not None:
                    new[p] = ids[j]
        # a path repeated within one call (add_vectors): the last copy wins
        _, last = np.unique(ids[::-1], return_index=True)
        keep = np.sort(len(ids) - 1 - last)
        X = np.ascontiguousarray(feats[keep])
        if self._raw is not None:
            self._raw.add(X, ids=ids[keep])
            X = self._to_index_space(X)  # DBA, if any, follows in _refresh
            self._pending.extend(int(i) for i in ids[keep])
        self.index.add(X, ids=ids[keep])
        for j in keep:
            i = int(ids[j])
            self._paths[i] = paths[j]
            self._meta[i] = metas[j]
            if paths[j] is not None:
                self._by_path[paths[j]] = i
        report.ids.extend(int(i) for i in ids)

    @staticmethod
    def _metadata_of(metadata, items):
        """One metadata value per item, each checked to be saveable."""
        if metadata is None:
            return [None] * len(items)
        if callable(metadata):
            metas = [metadata(os.fspath(it) if isinstance(it, (str, os.PathLike)) else it) for it in items]
        elif isinstance(metadata, dict):
            by_path = {canonical_path(k): v for k, v in metadata.items()}
            metas = [by_path.get(canonical_path(it)) if isinstance(it, (str, os.PathLike)) else None
                     for it in items]
        else:
            metas = list(metadata)
            if len(metas) != len(items):
                raise ValueError(f"metadata: {len(metas)} entries for {len(items)} items; give one per item, "
                                 "a dict keyed by path, or a callable")
        for i, (it, m) in enumerate(zip(items, metas)):
            _check_saveable(m, os.fspath(it) if isinstance(it, (str, os.PathLike)) else f"item {i}")
        return metas

    @staticmethod
    def _progress(total):
        if total < 64 or not sys.stderr.isatty() and "ipykernel" not in sys.modules:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=total, unit="img", desc="indexing")

    def _id_of(self, item):
        """The id of an int id or a path in the engine, else None."""
        if isinstance(item, (int, np.integer)):
            return int(item) if int(item) in self._paths else None
        if isinstance(item, (str, os.PathLike)):
            return self._by_path.get(canonical_path(item))
        return None

    def _ids_of(self, items):
        """Ids of the ids/paths given that are in the engine (others are skipped)."""
        if isinstance(items, (str, os.PathLike, int, np.integer)):
            items = [items]
        ids = (self._id_of(it) for it in items)
        return [i for i in ids if i is not None]

    # -- removing --------------------------------------------------------------------
    def remove(self, items: PathLike | int | Iterable[PathLike | int]) -> int:
        """Remove by path(s) or id(s); returns how many were removed."""
        ids = self._ids_of(items)
        if ids:
            self.index.remove(np.asarray(ids, dtype=np.int64))
            if self._raw is not None:
                self._raw.remove(np.asarray(ids, dtype=np.int64))
        for i in ids:
            p = self._paths.pop(i)
            self._meta.pop(i, None)
            if p is not None:
                self._by_path.pop(p, None)
        return len(ids)

    # -- searching -------------------------------------------------------------------
    def _query_vectors(self, query):
        """-> (vectors, labels for display, ids of the queries that are in the engine (-1 if not))."""
        if isinstance(query, (str, os.PathLike)):
            query = [query]
        elif isinstance(query, np.ndarray) and query.ndim == 3:
            query = [query]
        elif isinstance(query, np.ndarray) and query.ndim == 4:
            query = list(query)
        elif hasattr(query, "convert") and hasattr(query, "mode"):
            query = [query]
        items = list(query)
        labels = [os.fspath(q) if isinstance(q, (str, os.PathLike)) else f"<image {i}>" for i, q in enumerate(items)]
        known = [self._id_of(q) if isinstance(q, (str, os.PathLike)) else None for q in items]
        own = np.array([-1 if i is None else i for i in known], dtype=np.int64)
        if known and (own >= 0).all():
            return self._stored_queries(own), labels, own
        return self._to_index_space(self.extractor.extract(items)), labels, own

    def _stored_queries(self, ids):
        """Query vectors of items in the engine: the index's own rows, or with whitening
        or DBA the kept vectors whitened -- what extracting the image again would give."""
        if self._raw is None:
            return self.index.get(ids)
        return self._to_index_space(self._raw.get(ids))

    def _filter(self, filter):
        """The index's filter for an engine one: bool arrays stay masks over ids and
        integer arrays stay ids (the index applies the rule to both); a predicate,
        paths or a list mixing paths and ids become the ids they name."""
        if filter is None:
            return None
        if callable(filter):  # a predicate on (path, metadata)
            return np.fromiter((i for i, p in self._paths.items() if filter(p, self._meta.get(i))), dtype=np.int64)
        if isinstance(filter, (str, os.PathLike)):
            filter = [filter]
        if not hasattr(filter, "dtype"):  # a list: of bools, of ids, or of paths
            filter = list(filter)
            if filter and all(isinstance(f, (bool, np.bool_)) for f in filter):
                return np.asarray(filter, dtype=bool)
            if any(not isinstance(f, (int, np.integer)) for f in filter):
                return np.unique(np.asarray(self._ids_of(filter), dtype=np.int64))
        return np.asarray(filter)  # NumPy / pandas arrays, lists of ints: as given

    def search(self, query: Images, k: int = 10, *, filter: Any = None, exclude_self: bool = True,
               expand: int | None = None, **search_params: Any) -> SearchResults:
        """Nearest images to one query or a batch: paths, arrays (H, W, 3), PIL images.

        A query path already in the engine uses its stored vector, and with
        ``exclude_self=True`` (the default, as scikit-learn's ``kneighbors()``)
        it is not among its own hits: hit 1 is its nearest other image
        (``exclude_self=False`` keeps it, at distance 0).  ``filter``: allowed
        ids or paths, a bool mask over ids (covering every id; an integer
        array of 0s and 1s is refused -- pass ``mask.astype(bool)``), or a callable
        ``(path, metadata) -> bool``.  ``expand``: alpha-QE over this many
        neighbours (None: the engine's ``expand``; 0: none): the query is replaced
        by the similarity-weighted sum of itself and its nearest (the filter does not
        apply to them; the query's own entry is not one of them when excluded) and
        searched again.  Extra keywords (e.g. ``ef``) go to the index.
        Returns SearchResults, which unpacks as ``D, I = engine.search(...)``.
        """
        Q, labels, own = self._query_vectors(query)
        return self._search(Q, k, filter, labels, own if exclude_self else None, search_params, expand)

    def search_vectors(self, Q: ArrayLike, k: int = 10, *, filter: Any = None, queries: Sequence[str] | None = None,
                       expand: int | None = None, **search_params: Any) -> SearchResults:
        """Search with feature vectors (n, dim) computed elsewhere by this engine's
        extractor (they are whitened like every query); ``expand`` as in search."""
        Q = np.asarray(Q)
        if Q.ndim == 1:
            Q = Q[None, :]
        if queries is None:
            queries = [f"<vector {i}>" for i in range(len(Q))]
        return self._search(self._to_index_space(Q), k, filter, queries, None, search_params, expand)

    def _expanded(self, Q, expand, own, search_params):
        """alpha-QE of query vectors (index space) when ``expand`` (None: the engine's) asks for it."""
        n = self.expand if expand is None else expand
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"expand: expected a number of neighbours >= 0 (0: off), found {n!r}")
        if not n or not len(self.index):
            return Q
        if self.extractor.metric not in ("cosine", "ip", "l2") or self.index.metric == "hamming":
            raise ValueError(f"expand: query expansion needs float vectors compared by cosine, ip or l2; "
                             f"this engine's index compares {self.index.metric!r}")
        return _rerank.expand_queries(self.index, Q, int(n), self.alpha, own=own, **search_params)

    def _search(self, Q, k, filter, queries, own, search_params, expand=None):
        """The index's k nearest; ``own``: each query's id to leave out (-1: none), or None."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"Expected k > 0 (an int). Got {k!r}")
        Q = self._expanded(Q, expand, own, search_params)
        exclude = own is not None and bool((own >= 0).any())
        D, I = self.index.search(Q, k=int(k) + exclude, filter=self._filter(filter), **search_params)
        if exclude:
            # drop each query's own id where it was found, else the last column
            keep = I != np.where(own >= 0, own, np.iinfo(np.int64).min)[:, None]  # -1 is padding, not a query
            keep[keep.all(axis=1), -1] = False
            D, I = D[keep].reshape(len(I), k), I[keep].reshape(len(I), k)
        paths = [[self._paths.get(int(i)) if i >= 0 else None for i in row] for row in I]
        metas = [[self._meta.get(int(i)) if i >= 0 else None for i in row] for row in I]
        return SearchResults(D, I, paths, metas, queries, metric=self.index.metric)

    # -- duplicates ------------------------------------------------------------------
    def duplicates(self, threshold: float | None = None, k: int = 10) -> list[DuplicateGroup]:
        """Groups of near-duplicate images, found through the index (k neighbours per
        item, no n x n matrix).  ``threshold``: largest distance that counts (default
        per metric, see DEFAULT_DUP_THRESHOLD).

        Every pair in a group is within the threshold (complete linkage, no
        chains of near neighbours): the item with the most neighbours within the
        threshold starts a group, its neighbours join nearest first when they
        are within the threshold of every member so far, and the next densest
        item not yet grouped starts the next.  A group has at most k + 1 items.

        Returns a list of DuplicateGroup, biggest first: each a list of paths
        (ids for array items), sorted by id, with ``.ids`` and ``.distances``,
        the (m, m) float32 matrix of their pairwise distances."""
        # in the extractor's space (the thresholds are for its vectors): the kept vectors
        # (exact) when the index holds whitened / DBA ones
        space = self._raw if self._raw is not None else self.index
        if threshold is None:
            threshold = DEFAULT_DUP_THRESHOLD.get(space.metric, 0.1)
        ids = np.fromiter(self._paths.keys(), dtype=np.int64, count=len(self._paths))
        if len(ids) < 2:
            return []
        kk = min(k + 1, len(ids))
        params = {"ef": max(kk, 64)} if space is self.index and self.index_kind == "hnsw" else {}
        near = {}  # id -> its neighbours within the threshold, nearest first
        for s in range(0, len(ids), 4096):
            part = ids[s:s + 4096]
            D, I = space.search(space.get(part), k=kk, **params)
            for a, drow, irow in zip(part.tolist(), D, I):
                nb = [int(b) for d, b in zip(drow, irow) if b >= 0 and b != a and d <= threshold]
                if nb:
                    near[a] = nb
        grouped, groups = set(), []
        for a in sorted(near, key=lambda a: (-len(near[a]), a)):
            if a in grouped:
                continue
            members = [a] + [b for b in near[a] if b not in grouped]
            P = _distance.pairwise(space.get(members), space.get(members), space.metric)
            keep = [0]
            for j in range(1, len(members)):
                if (P[j, keep] <= threshold).all():
                    keep.append(j)
            if len(keep) < 2:
                continue
            order = sorted(keep, key=lambda j: members[j])
            gids = [members[j] for j in order]
            grouped.update(gids)
            groups.append(DuplicateGroup([self._paths[i] if self._paths[i] is not None else i for i in gids],
                                         ids=gids, distances=P[np.ix_(order, order)]))
        groups.sort(key=lambda g: (-len(g), int(g.ids[0])))
        return groups

    # -- evaluation -------------------------------------------------------------------
    def labels_from_folders(self) -> dict[int, str]:
        """{id: name of the item's parent folder} -- the usual layout of labelled image sets."""
        return self._labels_by_id("folders")

    def _labels_by_id(self, labels):
        """{id: label} of the items ``labels`` labels (see evaluate); a dict may key ids too."""
        by_path = label_paths(labels, [p for p in self._paths.values() if p is not None])
        lab = {self._by_path[p]: v for p, v in by_path.items()}
        if isinstance(labels, dict):
            lab.update({int(key): v for key, v in labels.items()
                        if isinstance(key, (int, np.integer)) and int(key) in self._paths and v is not None})
        return lab

    def evaluate(self, labels: Labels = "folders", k: int | None = None, ks: Sequence[int] = (1, 5, 10),
                 expand: int | None = None, **search_params: Any) -> dict[str, Any]:
        """Leave-one-out retrieval quality: every labelled item queries the others;
        relevant = same label.  Returns {"mAP", "precision@k", "recall@k", "queries", "k"}.

        labels  "folders" (parent folder name), the path of a labels CSV (``path,label``
                columns, paths relative to the CSV's folder: see datasets.read_labels_csv),
                a dict {path or id: label}, or a callable path -> label.  Fewer than two
                distinct labels is an error (every hit would count as relevant: mAP 1.0).
        k       ranks used for mAP (default: the whole collection up to 2000 items, else 1000;
                mAP over fewer ranks than items is reported as "mAP@k").
        expand  query expansion as in search (None: the engine's setting).
        """
        lab = self._labels_by_id(labels)
        check_labels(lab, labels, example_path=next((self._paths[i] for i in lab if self._paths[i]), None))
        ids = np.fromiter(lab.keys(), dtype=np.int64, count=len(lab))
        n = len(self._paths)
        kk = k if k is not None else (n if n <= 2000 else 1000)
        kk = min(int(kk), n)
        # one more than kk: each query finds itself, and the ranking is over the others
        k_search = min(kk + 1, n)
        if "ef" not in search_params and self.index_kind == "hnsw":
            search_params["ef"] = max(k_search, 64)
        rows = []
        for s in range(0, len(ids), 1024):
            part = ids[s:s + 1024]
            Q = self._expanded(self._stored_queries(part), expand, part, search_params)
            rows.append(self.index.search(Q, k=k_search, **search_params)[1])
        I = np.concatenate(rows)
        # the ranking is over labelled items only
        I = np.where(np.isin(I, ids), I, -1)
        I = np.array([np.concatenate([r[r >= 0], r[r < 0]]) for r in I]) if len(I) else I
        res = label_retrieval_scores(I, ids, [lab[int(i)] for i in ids], ks=ks)
        res["k"] = kk
        if k_search < n:
            res[f"mAP@{kk}"] = res.pop("mAP")
        return res

    # -- persistence -----------------------------------------------------------------
    def _postprocessing(self):
        """The whitening / DBA / QE settings, as saved and shown by info()."""
        w = self.whitening
        return {"whitening": None if w is None else {**w.params(), "fitted_dim": w.dim, "fitted_at": self._fitted_at},
                "dba": self.dba, "dba_at": self._dba_at, "expand": self.expand, "alpha": self.alpha}

    def _meta_bytes(self):
        """The META section: the JSON table, and with kept vectors a NUL byte and an .npz of them."""
        items = [[i, self._paths[i], self._meta.get(i)] for i in sorted(self._paths)]
        table = {
            "format": META_FORMAT if self._raw is None else META_FORMAT_ARRAYS,
            "extractor": self.extractor.config(),
            "index_kind": self.index_kind,
            "index_params": self.index_params,
            "next_id": self._next_id,
            "items": items,
        }
        if self._raw is None and not self.expand:
            return json.dumps(table, separators=(",", ":")).encode("utf-8")  # as before these options existed
        table["postprocessing"] = self._postprocessing()
        head = json.dumps(table, separators=(",", ":")).encode("utf-8")
        if self._raw is None:
            return head
        arrays = {"raw_ids": np.asarray(self._raw.ids, dtype=np.int64)}
        arrays["raw"] = self._raw.get(arrays["raw_ids"])
        if self.whitening is not None:
            arrays.update({f"whitening.{k}": v for k, v in self.whitening.state().items()})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return head + b"\0" + buf.getvalue()

    def save(self, path: PathLike) -> PathLike:
        """Index, id <-> path/metadata table, extractor config and (with whitening or
        DBA) the kept vectors and the fitted whitening, in one file (atomic)."""
        self.index.save(os.fspath(path), meta=self._meta_bytes())
        return path

    @classmethod
    def load(cls, path: PathLike, *, extractor: Extractor | None = None, mmap: bool = False) -> ImageSearch:
        """Open a saved engine.  ``extractor``: pass the extractor object when it was
        built from a Python model; a different configuration is an error."""
        path = os.fspath(path)
        meta, arrays = _read_engine_meta(path, with_arrays=True)
        saved = meta["extractor"]
        if extractor is None:
            ex = _extractors.from_config(saved)
        else:
            ex = _extractors.get_extractor(extractor)
            diff = _config_diff(ex.config(), saved)
            if diff:
                raise ValueError(f"{path} was indexed with a different extractor configuration ({diff}); "
                                 "its vectors would not be comparable. Load it without extractor= or re-index.")
        index = _core.load(path, mmap=mmap)
        self = cls.__new__(cls)
        self.extractor = ex
        self.threads = None
        self.index = index
        self.index_kind = meta.get("index_kind", "flat")
        self.index_params = meta.get("index_params", {})
        if self.index_kind == "ivfpq":  # a FlatIndex saved before training, or the trained IVFPQIndex
            from .ivf import AutoIVFPQ
            self.index = index = AutoIVFPQ.from_index(index, self.index_params)
        self._load_postprocessing(path, meta.get("postprocessing"), arrays)
        self._next_id = int(meta["next_id"])
        self._paths, self._meta, self._by_path = {}, {}, {}
        for i, p, m in meta["items"]:
            self._paths[int(i)] = p
            self._meta[int(i)] = m
            if p is not None:
                self._by_path[p] = int(i)
        if len(self._paths) != len(index):
            raise ValueError(f"{path}: the table lists {len(self._paths)} items but the index holds {len(index)}")
        return self

    def _load_postprocessing(self, path, saved, arrays):
        """Whitening / DBA / QE settings and the kept vectors of a saved engine, checked."""
        saved = saved or {}
        if not isinstance(saved, dict):
            raise ValueError(f"{path}: the engine's 'postprocessing' entry is not a dict: {saved!r}")
        w = saved.get("whitening")
        if (w is not None or saved.get("dba")) and (arrays is None or "raw" not in arrays or "raw_ids" not in arrays):
            raise ValueError(f"{path}: the engine uses whitening or DBA but the file holds no kept vectors")
        try:
            whitening = None
            if w is not None:
                state = {k[len("whitening."):]: v for k, v in (arrays or {}).items() if k.startswith("whitening.")}
                whitening = PCAWhitening.from_state(state)
            self._set_postprocessing(whitening, saved.get("dba", 0), saved.get("expand", 0), saved.get("alpha", 3.0))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: the saved whitening / DBA / expansion settings are invalid: {e}") from None
        if w is not None:
            self._fitted_at = int(w.get("fitted_at", 0))
        self._dba_at = int(saved.get("dba_at", 0))
        if self._raw is not None:
            raw, raw_ids = arrays["raw"], arrays["raw_ids"]
            if (raw.ndim != 2 or raw.shape[1] != self.extractor.dim or raw_ids.shape != (len(raw),)
                    or raw.dtype != np.float32 or raw_ids.dtype != np.int64):
                raise ValueError(f"{path}: kept vectors of shape {raw.shape} ({raw.dtype}) for {raw_ids.shape} ids: "
                                 f"expected float32 (n, {self.extractor.dim}) and n int64 ids")
            if len(raw) != len(self.index) or not np.array_equal(np.sort(raw_ids), np.sort(self.index.ids)):
                raise ValueError(f"{path}: the kept vectors' ids differ from the index's")
            self._raw.add(raw, ids=raw_ids)
        expected = self.whitening.dim if self.whitening is not None and self.whitening.fitted else self.extractor.dim
        if int(self.index.dim) != expected:
            raise ValueError(f"{path}: the index holds {self.index.dim}-d vectors, expected {expected}-d")

    @classmethod
    def from_dask(cls, embedding: Any, index: str | Any = "hnsw", *, paths: Sequence[PathLike] | None = None,
                  extractor: str | Extractor | dict | None = None, **index_params: Any) -> ImageSearch:
        """An engine over vectors computed on a Dask cluster: an ``imgsearch.dask.Embedding``
        (``imgsearch.dask.embed``'s result, which carries its paths and extractor), or a
        dask or NumPy array with ``paths=`` and ``extractor=`` (a name, config or object).
        The vectors are gathered into this process, so they must fit in its memory; the
        engine then has the ids ``add`` would have given the same files, and ``save``
        writes one ``.isx``.  Needs the ``[dask]`` extra for an Embedding."""
        from . import dask as _dask  # Dask is imported only now
        X, paths, ex = _dask.engine_pieces(embedding, paths, extractor)
        engine = cls(extractor=ex, index=index, **index_params)
        engine.add_vectors(X, paths)
        return engine

    # -- introspection -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._paths)

    @property
    def paths(self) -> list[str | None]:
        return [p for _, p in sorted(self._paths.items())]

    def info(self) -> dict[str, Any]:
        # as saved: only an engine that uses one of the options describes them
        return _info(len(self), self.index, self.index_kind, self.index_params, self.extractor.config(),
                     self._postprocessing() if self._raw is not None or self.expand else None)

    def __repr__(self):
        extra = ""
        w = self.whitening
        if w is not None:
            extra += (f", whitening={w.dim}-d" if w.fitted else
                      f", whitening (identity until {w.min_samples} vectors)")
        if self.dba:
            extra += f", dba={self.dba}"
        if self.expand:
            extra += f", expand={self.expand}"
        return (f"ImageSearch({len(self)} images, extractor={self.extractor.name!r} ({self.extractor.dim}-d), "
                f"index={self.index_kind!r}, metric={self.index.metric!r}{extra})")


def _read_engine_meta(path, with_arrays=False):
    """The engine table of a saved engine file (a dict), checked; with_arrays: and
    the kept arrays ({name: array}, or None when the file has none)."""
    raw = _core.read_meta(path)
    if raw is None:
        raise ValueError(f"{path} holds a bare index, not an ImageSearch engine: open it with imgsearch.load")
    head, _, blob = raw.partition(b"\0")
    try:
        meta = json.loads(head.decode("utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: the engine table is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") not in (META_FORMAT, META_FORMAT_ARRAYS):
        raise ValueError(f"{path}: unknown engine format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    if not with_arrays:
        return meta
    arrays = None
    if blob:
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: the engine's kept arrays are unreadable ({e})") from e
    return meta, arrays


def _info(count, index, kind, params, extractor_config, postprocessing=None):
    out = {"count": count, "dim": int(index.dim), "metric": index.metric, "index": kind, "index_params": params,
           "extractor": extractor_config}
    if postprocessing:
        out["postprocessing"] = postprocessing
    return out


def read_info(path):
    """What ``ImageSearch.load(path).info()`` says, read from the file alone: the
    extractor is not rebuilt, so a file indexed with a torch model is described
    without PyTorch (``imgsearch info``)."""
    path = os.fspath(path)
    meta = _read_engine_meta(path)
    index = _core.load(path, mmap=True)
    return _info(len(meta["items"]), index, meta.get("index_kind", "flat"), meta.get("index_params", {}),
                 meta["extractor"], meta.get("postprocessing"))


_CONFIG_KEYS_IGNORED = ("source", "name")
# torch extractor settings that configs saved before they existed lack: what those meant
_TORCH_CONFIG_DEFAULTS = {"gem_p": 3.0, "scales": [1.0]}


def _config_diff(a, b):
    if a.get("kind") == "torch" and b.get("kind") == "torch":
        a, b = {**_TORCH_CONFIG_DEFAULTS, **a}, {**_TORCH_CONFIG_DEFAULTS, **b}
    keys = sorted(set(a) | set(b))
    diffs = [f"{k}: {b.get(k)!r} saved, {a.get(k)!r} given" for k in keys
             if k not in _CONFIG_KEYS_IGNORED and _norm(a.get(k)) != _norm(b.get(k))]
    return "; ".join(diffs)


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, float):
        return round(v, 6)
    return v
