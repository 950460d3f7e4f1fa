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
"""
import glob as _glob
import json
import os
import sys
import time

import numpy as np

from . import _core
from . import extractors as _extractors
from . import image as _image
from .evaluate import label_retrieval_scores
from .results import SearchResults

__all__ = ["ImageSearch", "AddReport", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tga", ".psd", ".pnm", ".ppm", ".pgm",
                    ".webp", ".tif", ".tiff")
META_FORMAT = "imgsearch.engine/1"
ADD_CHUNK = 512  # files per extraction call: bounds memory and paces the progress bar

# Distances under which two items count as near-duplicates, per metric, when the
# caller gives no threshold (measured on resized/recompressed copies: see README).
DEFAULT_DUP_THRESHOLD = {"hamming": 10.0, "cosine": 0.05, "l1": 0.10, "l2": 0.10, "ip": 0.05}


class AddReport:
    """What ``ImageSearch.add`` did: ``added`` and ``updated`` counts, ``ids`` of the
    items indexed (in input order), and ``failed``: a list of (path, reason)."""

    def __init__(self):
        self.added = 0
        self.updated = 0
        self.ids = []
        self.failed = []
        self.seconds = 0.0

    @property
    def ok(self):
        return not self.failed

    def __repr__(self):
        s = f"AddReport(added={self.added}, updated={self.updated}, failed={len(self.failed)}, {self.seconds:.1f} s)"
        for path, reason in self.failed[:5]:
            s += f"\n  failed: {path}: {reason}"
        if len(self.failed) > 5:
            s += f"\n  ... {len(self.failed) - 5} more"
        return s


def _is_glob(s):
    return any(c in s for c in "*?[")


def list_images(source, recursive=True):
    """The image files a folder, glob or file path names, sorted (the order ids are given in)."""
    source = os.fspath(source)
    if os.path.isdir(source):
        out = []
        for root, dirs, files in os.walk(source):
            dirs.sort()
            if not recursive:
                dirs[:] = []
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    out.append(os.path.join(root, f))
        return out
    if os.path.isfile(source):
        return [source]
    if _is_glob(source):
        return sorted(p for p in _glob.glob(source, recursive=True) if os.path.isfile(p))
    raise FileNotFoundError(f"{source!r} is not a folder, a file or a glob pattern that exists")


class ImageSearch:
    """Index images by content and search them by example.

    extractor   "colorhist", "phash", "dhash", a model name ("mobilenet_v2", "resnet50", ...),
                a TorchScript file path, or any Extractor object.
    index       "hnsw" (default), "flat" (exact) or "kdtree", or an index object.
    weights     weights file for a named model (nothing is downloaded).
    extractor_params  passed to the extractor (e.g. mean/std/size for a TorchScript file).
    index_params      passed to the index (e.g. M=16, ef_construction=200).
    """

    def __init__(self, extractor="colorhist", index="hnsw", *, weights=None, extractor_params=None, threads=None,
                 **index_params):
        params = dict(extractor_params or {})
        if weights is not None:
            params["weights"] = weights
        self.extractor = _extractors.get_extractor(extractor, **params)
        self.threads = threads
        self._paths = {}        # id -> path (None for arrays)
        self._meta = {}         # id -> metadata (JSON-able)
        self._by_path = {}      # path -> id
        self._next_id = 0
        if isinstance(index, str):
            self.index_kind = index
            self.index_params = dict(index_params)
            self.index = self._make_index(index, index_params)
        else:
            if index_params:
                raise ValueError("index parameters go with an index name, not with an index object")
            self.index = index
            self.index_kind = type(index).__name__.replace("Index", "").lower()
            self.index_params = {}
            if index.dim != self.extractor.dim:
                raise ValueError(f"the index has dim {index.dim} but the extractor gives {self.extractor.dim}")

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

    def _make_index(self, kind, params):
        import imgsearch
        classes = {"flat": "FlatIndex", "hnsw": "HNSWIndex", "kdtree": "KDTreeIndex"}
        if kind not in classes:
            raise ValueError(f"index: expected one of {sorted(classes)} or an index object, found {kind!r}")
        cls = getattr(imgsearch, classes[kind], None)
        if cls is None:
            raise ValueError(f"index={kind!r} is not available in this build of imgsearch")
        return cls(self.extractor.dim, metric=self._index_metric(kind), **params)

    # -- adding ----------------------------------------------------------------------
    def _expand(self, source):
        """-> list of items (paths, arrays), list of kinds ('path'/'array')."""
        if isinstance(source, (str, os.PathLike)):
            return list_images(source)
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
                out.extend(list_images(p) if os.path.isdir(p) or _is_glob(p) else [p])
            else:
                out.append(it)
        return out

    def add(self, source, metadata=None, *, progress=True):
        """Index images: a folder (recursive), a glob, a path, a list of these, image
        arrays or PIL images.  Unreadable files are skipped and listed in the report.

        metadata: a dict {path: value}, a list aligned with the items, or a callable
        path -> value; values must be JSON-serialisable (they are saved with the engine).
        Returns an AddReport.
        """
        t0 = time.perf_counter()
        items = self._expand(source)
        report = AddReport()
        if not items:
            return report
        meta_of = self._metadata_lookup(metadata, items)
        bar = self._progress(len(items)) if progress else None
        try:
            for c0 in range(0, len(items), ADD_CHUNK):
                chunk = items[c0:c0 + ADD_CHUNK]
                paths = [os.path.abspath(os.fspath(it)) if isinstance(it, (str, os.PathLike)) else None
                         for it in chunk]
                feats, ok = self._extract(chunk, paths, report)
                if len(ok):
                    self._insert(feats, [paths[i] for i in ok], [meta_of(c0 + i, chunk[i]) for i in ok], report)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        report.seconds = time.perf_counter() - t0
        return report

    def add_vectors(self, X, paths=None, metadata=None):
        """Add feature vectors computed elsewhere (by this engine's extractor, or one
        configured the same), optionally with the paths they came from."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != (self.index.dim if self.index.metric != "hamming" else self.index.dim // 8):
            raise ValueError(f"X: expected shape (n, {self.extractor.dim}) features, found {X.shape}")
        n = len(X)
        paths = [None] * n if paths is None else [os.path.abspath(os.fspath(p)) for p in paths]
        metas = [None] * n if metadata is None else list(metadata)
        if len(paths) != n or len(metas) != n:
            raise ValueError(f"{n} vectors but {len(paths)} paths and {len(metas)} metadata entries")
        report = AddReport()
        self._insert(X, paths, metas, report)
        return report

    def _extract(self, chunk, paths, report):
        """Features of the readable items of a chunk, and their positions in it."""
        ex = self.extractor
        if all(p is not None for p in paths):
            feats, failed = ex.extract_files(paths, threads=self.threads)
            bad = set()
            for idx, path, reason in failed:
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
        return (np.concatenate(feats) if feats else None), ok

    def _insert(self, feats, paths, metas, report):
        ids = np.empty(len(paths), dtype=np.int64)
        for j, p in enumerate(paths):
            if p is not None and p in self._by_path:
                ids[j] = self._by_path[p]
                report.updated += 1
            else:
                ids[j] = self._next_id
                self._next_id += 1
                report.added += 1
        # a path repeated within one call: the last copy wins
        _, last = np.unique(ids[::-1], return_index=True)
        keep = np.sort(len(ids) - 1 - last)
        self.index.add(np.ascontiguousarray(feats[keep]), ids=ids[keep])
        for j in keep:
            i = int(ids[j])
            self._paths[i] = paths[j]
            self._meta[i] = metas[j]
            if paths[j] is not None:
                self._by_path[paths[j]] = i
        report.ids.extend(int(i) for i in ids)

    @staticmethod
    def _metadata_lookup(metadata, items):
        if metadata is None:
            return lambda i, it: None
        if callable(metadata):
            return lambda i, it: metadata(os.fspath(it) if isinstance(it, (str, os.PathLike)) else it)
        if isinstance(metadata, dict):
            absmeta = {os.path.abspath(k): v for k, v in metadata.items()}
            return lambda i, it: absmeta.get(os.path.abspath(os.fspath(it))) if isinstance(
                it, (str, os.PathLike)) else None
        metadata = list(metadata)
        if len(metadata) != len(items):
            raise ValueError(f"metadata: {len(metadata)} entries for {len(items)} items; give one per item, "
                             "a dict keyed by path, or a callable")
        return lambda i, it: metadata[i]

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
            return self._by_path.get(os.path.abspath(os.fspath(item)))
        return None

    def _ids_of(self, items):
        """Ids of the ids/paths given that are in the engine (others are skipped)."""
        if isinstance(items, (str, os.PathLike, int, np.integer)):
            items = [items]
        ids = (self._id_of(it) for it in items)
        return [i for i in ids if i is not None]

    # -- removing --------------------------------------------------------------------
    def remove(self, items):
        """Remove by path(s) or id(s); returns how many were removed."""
        ids = self._ids_of(items)
        if ids:
            self.index.remove(np.asarray(ids, dtype=np.int64))
        for i in ids:
            p = self._paths.pop(i)
            self._meta.pop(i, None)
            if p is not None:
                self._by_path.pop(p, None)
        return len(ids)

    # -- searching -------------------------------------------------------------------
    def _query_vectors(self, query):
        """-> (vectors, labels for display)."""
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
        if known and all(k is not None for k in known):
            return self.index.get(np.asarray(known, dtype=np.int64)), labels
        return self.extractor.extract(items), labels

    def _filter(self, filter):
        if filter is None or isinstance(filter, np.ndarray):
            return filter
        if callable(filter):  # a predicate on (path, metadata)
            return np.fromiter((i for i, p in self._paths.items() if filter(p, self._meta.get(i))), dtype=np.int64)
        return np.asarray(self._ids_of(filter), dtype=np.int64)

    def search(self, query, k=10, *, filter=None, **search_params):
        """Nearest images to one query or a batch: paths, arrays (H, W, 3), PIL images.

        A query path already in the engine uses its stored vector.  ``filter``:
        allowed ids or paths, a boolean mask over ids, or a callable
        ``(path, metadata) -> bool``.  Extra keywords (e.g. ``ef``) go to the index.
        """
        Q, labels = self._query_vectors(query)
        return self.search_vectors(Q, k, filter=filter, queries=labels, **search_params)

    def search_vectors(self, Q, k=10, *, filter=None, queries=None, **search_params):
        """Search with feature vectors (n, dim) computed elsewhere."""
        Q = np.asarray(Q)
        if Q.ndim == 1:
            Q = Q[None, :]
        D, I = self.index.search(Q, k=k, filter=self._filter(filter), **search_params)
        paths = [[self._paths.get(int(i)) if i >= 0 else None for i in row] for row in I]
        metas = [[self._meta.get(int(i)) if i >= 0 else None for i in row] for row in I]
        if queries is None:
            queries = [f"<vector {i}>" for i in range(len(Q))]
        return SearchResults(I, D, paths, metas, queries, metric=self.index.metric)

    # -- duplicates ------------------------------------------------------------------
    def duplicates(self, threshold=None, k=10):
        """Groups of near-duplicate images, found through the index (k neighbours per
        item, no n x n matrix).  ``threshold``: largest distance that counts (default
        per metric, see DEFAULT_DUP_THRESHOLD).  Returns a list of lists of paths (or
        ids for array items), biggest groups first."""
        if threshold is None:
            threshold = DEFAULT_DUP_THRESHOLD.get(self.index.metric, 0.1)
        ids = np.fromiter(self._paths.keys(), dtype=np.int64, count=len(self._paths))
        if len(ids) < 2:
            return []
        parent = {int(i): int(i) for i in ids}

        def find(a):
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for s in range(0, len(ids), 4096):
            part = ids[s:s + 4096]
            D, I = self.index.search(self.index.get(part), k=min(k + 1, len(ids)))
            for q, (drow, irow) in enumerate(zip(D, I)):
                a = int(part[q])
                for d, b in zip(drow, irow):
                    if b >= 0 and b != a and d <= threshold:
                        ra, rb = find(a), find(int(b))
                        if ra != rb:
                            parent[max(ra, rb)] = min(ra, rb)
        groups = {}
        for i in parent:
            groups.setdefault(find(i), []).append(i)
        out = [sorted(g) for g in groups.values() if len(g) > 1]
        out.sort(key=lambda g: (-len(g), g[0]))
        return [[self._paths[i] if self._paths[i] is not None else i for i in g] for g in out]

    # -- evaluation -------------------------------------------------------------------
    def labels_from_folders(self):
        """{id: name of the item's parent folder} -- the usual layout of labelled image sets."""
        return {i: os.path.basename(os.path.dirname(p)) for i, p in self._paths.items() if p is not None}

    def evaluate(self, labels="folders", k=None, ks=(1, 5, 10), **search_params):
        """Leave-one-out retrieval quality: every labelled item queries the others;
        relevant = same label.  Returns {"mAP", "precision@k", "recall@k", "queries", "k"}.

        labels  "folders" (parent folder name), a dict {path or id: label}, or a callable path -> label.
        k       ranks used for mAP (default: the whole collection up to 2000 items, else 1000;
                mAP over fewer ranks than items is reported as "mAP@k").
        """
        if isinstance(labels, str) and labels == "folders":
            lab = self.labels_from_folders()
        elif callable(labels):
            lab = {i: labels(p) for i, p in self._paths.items()}
        elif isinstance(labels, dict):
            lab = {}
            for key, v in labels.items():
                i = int(key) if isinstance(key, (int, np.integer)) else self._by_path.get(os.path.abspath(key))
                if i is not None and i in self._paths:
                    lab[i] = v
        else:
            raise TypeError("labels: expected 'folders', a dict or a callable")
        lab = {i: v for i, v in lab.items() if v is not None}
        if len(lab) < 2:
            raise ValueError(f"need at least 2 labelled items to evaluate, found {len(lab)}")
        ids = np.fromiter(lab.keys(), dtype=np.int64, count=len(lab))
        n = len(self._paths)
        kk = k if k is not None else (n if n <= 2000 else 1000)
        kk = min(int(kk), n)
        # one more than kk: each query finds itself, and the ranking is over the others
        k_search = min(kk + 1, n)
        if "ef" not in search_params and self.index_kind == "hnsw":
            search_params["ef"] = max(k_search, 64)
        I = []
        for s in range(0, len(ids), 1024):
            part = ids[s:s + 1024]
            I.append(self.index.search(self.index.get(part), k=k_search, **search_params)[1])
        I = np.concatenate(I)
        # the ranking is over labelled items only
        I = np.where(np.isin(I, ids), I, -1)
        I = np.array([np.concatenate([r[r >= 0], r[r < 0]]) for r in I]) if len(I) else I
        res = label_retrieval_scores(I, ids, [lab[int(i)] for i in ids], ks=ks)
        res["k"] = kk
        if k_search < n:
            res[f"mAP@{kk}"] = res.pop("mAP")
        return res

    # -- persistence -----------------------------------------------------------------
    def _meta_json(self):
        items = [[i, self._paths[i], self._meta.get(i)] for i in sorted(self._paths)]
        return json.dumps({
            "format": META_FORMAT,
            "extractor": self.extractor.config(),
            "index_kind": self.index_kind,
            "index_params": self.index_params,
            "next_id": self._next_id,
            "items": items,
        }, separators=(",", ":")).encode("utf-8")

    def save(self, path):
        """Index, id <-> path/metadata table and extractor config, in one file (atomic)."""
        self.index.save(os.fspath(path), meta=self._meta_json())
        return path

    @classmethod
    def load(cls, path, *, extractor=None, mmap=False):
        """Open a saved engine.  ``extractor``: pass the extractor object when it was
        built from a Python model; a different configuration is an error."""
        path = os.fspath(path)
        meta = _read_engine_meta(path)
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

    # -- introspection -----------------------------------------------------------------
    def __len__(self):
        return len(self._paths)

    @property
    def paths(self):
        return [p for _, p in sorted(self._paths.items())]

    def info(self):
        return _info(len(self), self.index, self.index_kind, self.index_params, self.extractor.config())

    def __repr__(self):
        return (f"ImageSearch({len(self)} images, extractor={self.extractor.name!r} ({self.extractor.dim}-d), "
                f"index={self.index_kind!r}, metric={self.index.metric!r})")


def _read_engine_meta(path):
    """The engine table of a saved engine file (a dict), checked."""
    raw = _core.read_meta(path)
    if raw is None:
        raise ValueError(f"{path} holds a bare index, not an ImageSearch engine: open it with imgsearch.load")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: the engine table is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise ValueError(f"{path}: unknown engine format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta


def _info(count, index, kind, params, extractor_config):
    return {"count": count, "dim": int(index.dim), "metric": index.metric, "index": kind, "index_params": params,
            "extractor": extractor_config}


def read_info(path):
    """What ``ImageSearch.load(path).info()`` says, read from the file alone: the
    extractor is not rebuilt, so a file indexed with a torch model is described
    without PyTorch (``imgsearch info``)."""
    path = os.fspath(path)
    meta = _read_engine_meta(path)
    index = _core.load(path, mmap=True)
    return _info(len(meta["items"]), index, meta.get("index_kind", "flat"), meta.get("index_params", {}),
                 meta["extractor"])


_CONFIG_KEYS_IGNORED = ("source", "name")


def _config_diff(a, b):
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
