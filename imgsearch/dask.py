"""Embedding and sharded search on a Dask cluster (the optional extra ``[dask]``).

    >>> from distributed import Client
    >>> import imgsearch as isx
    >>> client = Client("tcp://scheduler:8786")            # or Client(LocalCluster())
    >>> emb = isx.dask.embed("/shared/photos/", extractor="colorhist")
    >>> emb.vectors                                        # dask array (n, dim), held on the workers
    >>> emb.failed                                         # [(path, reason)] of unreadable files
    >>> index = isx.dask.ShardedIndex.from_embedding(emb, kind="hnsw", M=16)
    >>> D, I = index.search(Q, k=10)                       # exact merge of every shard's top k
    >>> index.save("/shared/photos.shards"); index = isx.dask.ShardedIndex.load("/shared/photos.shards")
    >>> engine = isx.ImageSearch.from_dask(emb, index="hnsw"); engine.save("photos.isx")

imgsearch brings no scheduler of its own: it runs on the Dask cluster the user
already has, and this module is the only one that imports Dask (when it is
imported itself; ``import imgsearch`` does not).

Embedding.  The files are cut into batches; each batch is one Dask task that
decodes and extracts with the C core on the worker, exactly as
``ImageSearch.add`` does in one process, and returns its vectors, the paths
it read and the files it could not read with their reasons.  Because a batch
is a pure task, Dask's own recovery is ours: a task that was running on a
worker that died, or whose result was held there, is run again elsewhere, and
the batch is counted once whatever the number of attempts.  The extractor is
sent as a recipe (a registry name and its parameters, or the object itself)
and built once per worker process, then cached there for later batches and
later calls.  ``embed`` waits for the batches (showing Dask's progress bar)
and keeps the vectors on the workers; only paths and failures come back, so
ids are given in input order over the readable files, as ``ImageSearch.add``
gives them.

Sharded index.  Each shard is an ordinary imgsearch index (FlatIndex or
HNSWIndex) living in one worker's memory; every operation on it is a task
pinned to that worker (``workers=[address]``, ``allow_other_workers=False``),
so the vectors of a shard never move after they arrive.  Rows go to the least
filled shard, preferring the one on the worker that already holds them.
``search`` sends the queries to every shard and merges the per-shard top k
exactly: by distance, then by id, with padding (``inf`` / ``-1``) last.  For
``flat`` the merge equals one FlatIndex over the union (which breaks ties by
insertion order: the same while ids are added in ascending order); for
``hnsw`` each shard answers with the same ``ef`` over fewer vectors, so recall
is at least that of one index.  ``remove`` is sent to every shard (each removes
what it holds), so no id -> shard table is kept on the client.  A shard whose
worker died is lost (Dask cannot recompute state); the index says so and
``load`` restores the last save.  Only ``hnsw`` and ``flat``: imgsearch has no
IVF-PQ index yet.

Files.  ``save(dir)``: one imgsearch index file per shard, named with a fresh
generation tag and written by its worker (atomically, as every index file),
then ``manifest.json`` (temporary file + rename) naming them, then the files
of the previous generation are deleted.  A crash at any point leaves the old
manifest with its complete set of files, or the new one with its own.  The
folder must be on a file system that the client and the workers share (on one
machine, any folder), as must the images ``embed`` reads.
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import _core
from . import extractors as _extractors
from . import features as _features
from .engine import PathLike, _is_glob, _one_entry_per_path, list_images

__all__ = ["Embedding", "ShardedIndex", "embed", "merge_topk"]

DEFAULT_BATCH_SIZE = 64  # images per task: ~0.1-0.3 s of colorhist, so tasks balance over workers
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "imgsearch.sharded/1"
# no "ivfpq": every shard would need the one trained model (train once, ship the
# codebooks to each shard), which ShardedIndex does not do yet
KINDS = {"flat": "FlatIndex", "hnsw": "HNSWIndex"}
WORKER_CHECK_SECONDS = 1.0  # while waiting on shard tasks, check this often that their workers are alive
SCATTER_QUERY_BYTES = 1 << 20  # larger query batches are scattered once instead of sent with each task


def _distributed():
    """The distributed module, or an ImportError that says how to get it."""
    try:
        import dask.array  # noqa: F401
        import distributed
    except ImportError as e:
        raise ImportError(f"imgsearch.dask needs Dask's distributed scheduler ({e}): "
                          "pip install 'imgsearch[dask]' (or pip install 'dask[array,distributed]')") from None
    return distributed


def _get_client(client):
    distributed = _distributed()
    if client is not None:
        return client
    try:
        return distributed.get_client()
    except ValueError:
        raise ValueError("no Dask client: expected one to be running; start one first, e.g. "
                         "distributed.Client('tcp://scheduler:8786') for a cluster or "
                         "distributed.Client(distributed.LocalCluster()) on this machine, or pass client=") from None


def _check_positive(value, name):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"Expected {name} > 0 (an int). Got {value!r}")


def _as_ids(ids, n=None):
    """ids as int64 (one per row when n is given), or a ValueError saying what was wrong."""
    ids = np.atleast_1d(np.asarray(ids))
    expected = "integers" if n is None else f"{n} integers (one per row)"
    if ids.ndim != 1 or (n is not None and len(ids) != n) or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"ids: expected {expected}, found {ids.dtype} array of shape {ids.shape}")
    ids = ids.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError(f"ids: expected ids >= 0, found {int(ids.min())} at position {int(np.argmin(ids))}")
    return ids


def _worker_threads():
    """The threads of the worker running this task (native threads for an index operation)."""
    from distributed import get_worker
    return get_worker().state.nthreads


# ---------------------------------------------------------------------------------------------
# Embedding: worker side
# ---------------------------------------------------------------------------------------------
# Extractors built in this (worker) process, by recipe key, with a lock for those
# not known to be thread-safe (a torch model keeps per-call state; the C features do not).
_EXTRACTORS: dict[str, tuple[Any, threading.Lock | None]] = {}
_EXTRACTORS_LOCK = threading.Lock()


class _ExtractorRecipe:
    """How a worker builds the extractor: a registry name with its parameters (and the
    registered factory, so that a name registered on the client works on the workers),
    a TorchScript path, or an Extractor object sent as it is.  ``key`` names the built
    extractor in the worker's cache."""

    def __init__(self, extractor, params):
        self.obj = self.name = self.factory = None
        self.params = dict(params)
        if isinstance(extractor, _features.Extractor):
            if self.params:
                raise ValueError("extractor_params go with an extractor name, not with an Extractor object")
            self.obj = extractor
            self.key = "object-" + uuid.uuid4().hex
        elif isinstance(extractor, (str, os.PathLike)):
            self.name = os.fspath(extractor)
            self.factory = _features._REGISTRY.get(self.name)
            try:
                self.key = json.dumps([self.name, self.params], sort_keys=True)
            except TypeError:
                raise TypeError(f"extractor_params: expected JSON-serialisable values (they are how each "
                                f"worker rebuilds the extractor), found {self.params!r}") from None
        else:
            raise TypeError(f"extractor: expected a registered name ({', '.join(_features.registered())}), a "
                            f"TorchScript path or an Extractor object; found {type(extractor).__name__}")

    def build(self):
        if self.obj is not None:
            return self.obj
        if self.factory is not None:
            return self.factory(**self.params)
        return _extractors.get_extractor(self.name, **self.params)


def _cached_extractor(recipe):
    """(extractor, lock or None, built now?) for this worker process."""
    with _EXTRACTORS_LOCK:
        if recipe.key in _EXTRACTORS:
            return (*_EXTRACTORS[recipe.key], False)
        ex = recipe.build()
        lock = None if isinstance(ex, _features._NativeExtractor) else threading.Lock()
        _EXTRACTORS[recipe.key] = (ex, lock)
        return ex, lock, True


def _extract_batch(recipe, paths, threads, canonical):
    """One batch on a worker -> (vectors of the readable files, their paths,
    [(path, reason)] of the others, whether the extractor was built for it,
    (its config, its metric))."""
    ex, lock, built = _cached_extractor(recipe)
    paths = list(paths)
    if not canonical:  # a bag's partition: name each file as the engine does, once
        paths = _one_entry_per_path(paths, [None] * len(paths))[1]
    if lock is None:
        feats, failed = ex.extract_files(paths, threads=threads)
    else:
        with lock:
            feats, failed = ex.extract_files(paths, threads=threads)
    bad = {int(f[0]) for f in failed}
    ok_paths = [p for i, p in enumerate(paths) if i not in bad]
    reasons = [(paths[int(f[0])], str(f[2])) for f in failed]
    return np.ascontiguousarray(feats), ok_paths, reasons, built, (ex.config(), ex.metric)


def _batch_summary(result):
    vectors, ok_paths, failed, built, about = result
    return vectors.shape, vectors.dtype.str, ok_paths, failed, built, about


def _batch_rows(result, keep=None):
    return result[0] if keep is None else result[0][keep]


# ---------------------------------------------------------------------------------------------
# Embedding: client side
# ---------------------------------------------------------------------------------------------
class Embedding:
    """What :func:`embed` returns.

    ``vectors``  dask array (n, width) of the readable files' features, one chunk per batch,
                 held on the workers (``width`` = ``dim``, or ``dim // 8`` bytes for hamming)
    ``paths``    their canonical paths, in row order; ``ids``: int64 0..n-1, the ids
                 ``ImageSearch.add`` gives the same files
    ``failed``   ``[(path, reason)]`` of the files that could not be read
    ``extractor`` the extractor's config (``imgsearch.extractors.from_config`` rebuilds it),
                 ``metric`` the metric its vectors are meant for
    ``builds``   how many times a worker built the extractor (once per worker process)
    ``client``   the Dask client it was computed with
    """

    def __init__(self, vectors, paths, failed, extractor, metric, builds, seconds, client):
        self.vectors = vectors
        self.client = client
        self.paths = paths
        self.ids = np.arange(len(paths), dtype=np.int64)
        self.failed = failed
        self.extractor = extractor
        self.metric = metric
        self.builds = builds
        self.seconds = seconds

    @property
    def dim(self) -> int:
        """The index dimension: the row width, in bits for hamming."""
        width = int(self.vectors.shape[1])
        return width * 8 if self.vectors.dtype == np.uint8 else width

    def __len__(self) -> int:
        return len(self.paths)

    def compute(self) -> np.ndarray:
        """The vectors as one NumPy array in this process."""
        return np.asarray(self.client.compute(self.vectors).result())

    def __repr__(self):
        return (f"Embedding({len(self)} vectors of {self.vectors.shape[1]} {self.vectors.dtype}, "
                f"{len(self.failed)} failed, extractor={self.extractor.get('name')!r}, {self.seconds:.1f} s)")


def _expand_paths(source):
    """The files that a folder, glob, path or list of these names (in the engine's order)."""
    if isinstance(source, (str, os.PathLike)):
        return list_images(source)
    if isinstance(source, np.ndarray) or not isinstance(source, Iterable):
        raise TypeError(f"embed: expected a folder, glob, path, list of paths or a dask Bag of paths; found "
                        f"{type(source).__name__}. Image arrays are extracted in this process: "
                        "extractor.extract(images) or ImageSearch.add")
    out = []
    for it in source:
        if not isinstance(it, (str, os.PathLike)):
            raise TypeError(f"embed: expected file paths (the workers read the files), found a "
                            f"{type(it).__name__} item; extract arrays in this process with ImageSearch.add")
        p = os.fspath(it)
        out.extend(list_images(p) if os.path.isdir(p) or _is_glob(p) else [p])
    return out


def _show_progress(futures):
    """Dask's own progress bar: a widget in Jupyter (returns at once), text in a terminal."""
    import distributed
    from distributed.utils import is_kernel
    if is_kernel():
        from IPython.display import display
        display(distributed.progress(futures, notebook=True, multi=False))
    else:
        distributed.progress(futures, notebook=False, multi=False)


def embed(paths_or_bag: PathLike | Sequence[PathLike] | Any, extractor: str | Any = "colorhist", *,
          batch_size: int = DEFAULT_BATCH_SIZE, extractor_params: dict[str, Any] | None = None,
          weights: PathLike | None = None, threads: int = 1, progress: bool = True,
          client: Any = None) -> Embedding:
    """Extract features of many image files on the workers of a Dask cluster.

    paths_or_bag  a folder (recursive), glob, path or list of these, expanded here as
                  ``ImageSearch.add`` expands them (the workers must see the same paths:
                  a shared file system); or a ``dask.bag.Bag`` of file paths, whose
                  partitions are the batches and are never listed here.
    extractor     a registered name ("colorhist", "phash", "mobilenet_v2", your own),
                  a TorchScript path, or an Extractor object (sent to each worker once).
                  Each worker process builds it once and keeps it for later batches.
    batch_size    files per task.  ``threads``: decoder threads per task (a worker runs
                  as many tasks at once as it has threads).
    progress      show Dask's progress bar while waiting.

    Blocks until every batch is done; returns an :class:`Embedding` whose ``vectors``
    stay on the workers.  A file is never lost or counted twice: each is either a row
    (in input order, one per canonical path) or an entry of ``failed``, also when
    Dask reran a batch after losing a worker.
    """
    _distributed()
    import dask
    import dask.array as da
    import dask.bag as db
    client = _get_client(client)
    _check_positive(batch_size, "batch_size")
    _check_positive(threads, "threads")
    t0 = time.perf_counter()
    params = dict(extractor_params or {})
    if weights is not None:
        params["weights"] = os.fspath(weights)
    recipe = _ExtractorRecipe(extractor, params)
    try:
        recipe = client.scatter(recipe, broadcast=True, hash=False)
    except Exception as e:  # what each serializer raises differs: say what to do instead
        raise TypeError(f"extractor: this {type(extractor).__name__} object cannot be sent to the workers ({e}); "
                        "pass its registered name or TorchScript path instead, which each worker builds "
                        "itself") from e
    if isinstance(paths_or_bag, db.Bag):
        parts = paths_or_bag.to_delayed()
        batches = client.compute([dask.delayed(_extract_batch, pure=True)(recipe, part, threads, False)
                                  for part in parts])
    else:
        items = _expand_paths(paths_or_bag)
        files = _one_entry_per_path(items, [None] * len(items))[1]
        batches = [client.submit(_extract_batch, recipe, files[i:i + batch_size], threads, True, pure=False,
                                 key=f"imgsearch-embed-{uuid.uuid4().hex}")
                   for i in range(0, len(files), batch_size)]
    if progress and batches:
        _show_progress(batches)
    summaries = client.gather([client.submit(_batch_summary, b, pure=False) for b in batches])
    paths: list[str] = []
    failed: list[tuple[str, str]] = []
    seen: set[str] = set()
    chunks, builds, about = [], 0, None
    for batch, (shape, dtype, ok_paths, bad, built, batch_about) in zip(batches, summaries):
        builds += bool(built)
        about = about or batch_about
        failed.extend(bad)
        keep = [j for j, p in enumerate(ok_paths) if p not in seen]  # a bag may name a file twice
        seen.update(ok_paths)
        paths.extend(ok_paths[j] for j in keep)
        rows = dask.delayed(_batch_rows, pure=True)(batch, None if len(keep) == shape[0] else keep)
        chunks.append(da.from_delayed(rows, shape=(len(keep), shape[1]), dtype=np.dtype(dtype)))
    if not chunks:
        raise ValueError(f"embed: no image files in {paths_or_bag!r}")
    vectors = da.concatenate(chunks, axis=0) if len(chunks) > 1 else chunks[0]
    config, metric = about if about is not None else (None, None)
    return Embedding(vectors, paths, failed, config, metric, builds, time.perf_counter() - t0, client)


# ---------------------------------------------------------------------------------------------
# Sharded index: worker side.  Each function runs as a task pinned to the shard's worker.
# ---------------------------------------------------------------------------------------------
_SHARDS: dict[str, Any] = {}  # this worker process's shards, by key


def _shard(key):
    try:
        return _SHARDS[key]
    except KeyError:
        raise LookupError(f"shard {key} is not in this worker process: the worker that held it restarted, "
                          "so its vectors are lost; load the index from its last save (ShardedIndex.load)") from None


def _shard_create(key, kind, dim, metric, params):
    _SHARDS[key] = getattr(_core, KINDS[kind])(dim, metric=metric, **params)
    return 0


def _shard_load(key, path, mmap):
    index = _core.load(path, mmap=mmap)
    _SHARDS[key] = index
    return type(index).__name__, index.metric, int(index.dim), len(index)


def _shard_add(key, ids, *chunks):
    index = _shard(key)
    X = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    index.add(X, ids=ids, threads=_worker_threads())
    return len(index)


def _shard_remove(key, ids):
    index = _shard(key)
    removed = index.remove(ids[np.isin(ids, index.ids)])
    return removed, len(index)


def _shard_search(key, Q, k, params):
    return _shard(key).search(Q, k=k, threads=_worker_threads(), **params)


def _shard_ids(key):
    return _shard(key).ids


def _shard_get(key, ids):
    """(positions in ids, rows) of the ids this shard holds."""
    index = _shard(key)
    where = np.flatnonzero(np.isin(ids, index.ids))
    return where, index.get(ids[where])


def _shard_save(key, path):
    _shard(key).save(path)  # atomic: a temporary file renamed
    return os.path.getsize(path)


def _shard_drop(key):
    _SHARDS.pop(key, None)


# ---------------------------------------------------------------------------------------------
# Sharded index: client side
# ---------------------------------------------------------------------------------------------
def merge_topk(results: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard ``(D, I)`` answers into the k best per query: by distance, then by id,
    with padding (id -1) after every real hit."""
    D = np.concatenate([r[0] for r in results], axis=1)
    I = np.concatenate([r[1] for r in results], axis=1)
    order = np.lexsort((I, I < 0, D), axis=1)[:, :k]
    return np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)


def _check_kind(kind):
    if kind not in KINDS:
        extra = (" (no IVF-PQ shards yet: they would need one trained model shared by every shard; "
                 "'hnsw' is the approximate one, or use IVFPQIndex in one process)"
                 if kind == "ivfpq" else "")
        raise ValueError(f"kind: expected one of {sorted(KINDS)}, found {kind!r}{extra}")


def _drop_shards(client, keys, workers):
    """Free the shards on their workers (when the ShardedIndex is closed or collected)."""
    try:
        import distributed
        alive = client.scheduler_info()["workers"]
        for key, w in zip(keys, workers):
            if w in alive:
                distributed.fire_and_forget(client.submit(_shard_drop, key, workers=[w], pure=False))
    except Exception:  # the client or cluster is already gone: so are the shards
        pass


class ShardedIndex:
    """An index cut into shards, each an imgsearch index on one Dask worker.

    kind        "hnsw" or "flat" (imgsearch has no IVF-PQ index yet)
    shards      number of shards (default: one per worker), placed round-robin on the workers
    dim, metric as for the index classes; ``**index_params`` go to each shard's index
                (e.g. ``M=16, ef_construction=200, seed=0``)

    ``add(X, ids=None)`` takes NumPy arrays, dask arrays (each chunk goes to one shard,
    preferably on the worker that holds it) or an :class:`Embedding`;
    ``search(Q, k, **params)`` -> ``(D, I)`` merged exactly over the shards (see
    :func:`merge_topk`); ``remove(ids)``; ``save(dir)`` / ``ShardedIndex.load(dir)``.
    Calls from one thread at a time; each shard runs its operations as its index does.
    """

    def __init__(self, kind: str = "hnsw", shards: int | None = None, dim: int | None = None,
                 metric: str = "l2", *, client: Any = None, **index_params: Any) -> None:
        _check_kind(kind)
        _check_positive(dim, "dim")
        getattr(_core, KINDS[kind])(int(dim), metric=metric, **index_params)  # bad parameters fail here, now
        self._setup(_get_client(client), kind, int(dim), metric, dict(index_params), shards)
        self._run_each(_shard_create, lambda s: (kind, self.dim, metric, self.index_params))

    def _setup(self, client, kind, dim, metric, params, shards):
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            raise RuntimeError("the Dask cluster has no workers: wait for them (client.wait_for_workers(n)) "
                               "before building a ShardedIndex")
        n = len(workers) if shards is None else shards
        _check_positive(n, "shards")
        self.client, self.kind, self.dim, self.metric, self.index_params = client, kind, dim, metric, params
        tag = uuid.uuid4().hex
        self._keys = [f"imgsearch-shard-{tag}-{s}" for s in range(int(n))]
        self._workers = [workers[s % len(workers)] for s in range(int(n))]
        self._counts = [0] * int(n)
        self._next_id = 0
        self._finalizer = weakref.finalize(self, _drop_shards, client, list(self._keys), list(self._workers))

    # -- tasks on the shards -------------------------------------------------------------
    def _check_alive(self, shards, futures=()):
        """Raise if a shard's worker has left the cluster (a task pinned to it would wait forever)."""
        alive = self.client.scheduler_info()["workers"]
        lost = [s for s in shards if self._workers[s] not in alive]
        if lost:
            self.client.cancel(list(futures))
            s = lost[0]
            raise RuntimeError(f"shard {s} was held by worker {self._workers[s]}, which has left the cluster, "
                               "and its vectors with it; load the index again from its last save "
                               "(ShardedIndex.load(dir))")

    def _run_each(self, fn, args_of, shards=None):
        """Run fn on the given shards (default: all), each on its worker, and return
        their results in order; raise if a shard's worker goes away meanwhile."""
        import distributed
        shards = list(range(len(self._keys)) if shards is None else shards)
        self._check_alive(shards)
        futures = [self.client.submit(fn, self._keys[s], *args_of(s), workers=[self._workers[s]],
                                      allow_other_workers=False, pure=False) for s in shards]
        for future in futures:  # waits without fetching: gather below fetches each result once
            while True:
                try:
                    future.exception(timeout=WORKER_CHECK_SECONDS)
                    break
                except (TimeoutError, distributed.TimeoutError):
                    self._check_alive(shards, futures)
        return self.client.gather(futures)

    # -- properties ----------------------------------------------------------------------
    @property
    def shards(self) -> int:
        return len(self._keys)

    @property
    def row_width(self) -> int:
        return self.dim // 8 if self.metric == "hamming" else self.dim

    def __len__(self) -> int:
        return int(sum(self._counts))

    @property
    def ids(self) -> np.ndarray:
        """Every id held, sorted (gathered from the shards)."""
        return np.sort(np.concatenate(self._run_each(_shard_ids, lambda s: ())))

    def shard_info(self) -> list[dict[str, Any]]:
        return [{"shard": s, "worker": w, "count": c} for s, (w, c) in enumerate(zip(self._workers, self._counts))]

    def __repr__(self):
        return (f"ShardedIndex(kind={self.kind!r}, {len(self)} vectors of dim {self.dim}, metric={self.metric!r}, "
                f"{self.shards} shards on {len(set(self._workers))} workers)")

    # -- adding and removing ---------------------------------------------------------------
    def _check_ids(self, ids, n):
        if ids is None:
            return np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        ids = _as_ids(ids, n)
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"ids: id {int(uniq[counts > 1][0])} is given more than once; each id names one vector")
        return ids

    def _chunks(self, X):
        """[(data or a future on a worker, rows, holding worker or None)] of the rows to add."""
        import dask.array as da
        if isinstance(X, da.Array):
            if X.ndim != 2 or X.shape[1] != self.row_width:
                raise ValueError(f"X: expected a 2-D array of {self.row_width} columns, found shape {X.shape}")
            if any(np.isnan(c) for c in X.chunks[0]):
                raise ValueError("X: a dask array with unknown chunk sizes; call X.compute_chunk_sizes() first")
            X = X.rechunk({1: -1})
            futures = self.client.compute(list(X.to_delayed().ravel()))
            for f in futures:
                f.exception()  # computed (where they are is known), not fetched
            holders = self.client.who_has(futures)
            return [(f, int(r), (holders.get(f.key) or [None])[0]) for f, r in zip(futures, X.chunks[0])]
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.row_width:
            raise ValueError(f"X: expected shape (n, {self.row_width}), found {X.shape}")
        step = max(1, -(-len(X) // self.shards))
        return [(X[i:i + step], len(X[i:i + step]), None) for i in range(0, len(X), step)]

    def _place(self, chunks):
        """Shard of each chunk: the least filled, or one about as empty on the chunk's worker."""
        loads, out = list(self._counts), []
        for _, rows, holder in chunks:
            least = min(loads)
            near = [s for s in range(self.shards) if loads[s] <= least + rows and self._workers[s] == holder]
            s = near[0] if near else loads.index(least)
            loads[s] += rows
            out.append(s)
        return out

    def add(self, X: Any, ids: Any = None) -> ShardedIndex:
        """Add rows (NumPy array, dask array or Embedding); ids default to the next unused
        ones (an Embedding's own ids, 0..n-1, on an empty index).  An id already held is
        replaced, wherever it was."""
        if isinstance(X, Embedding):
            X, ids = X.vectors, (X.ids + self._next_id if ids is None else ids)
        chunks = self._chunks(X)
        n = sum(rows for _, rows, _ in chunks)
        ids = self._check_ids(ids, n)
        if n == 0:
            return self
        if ids.min() < self._next_id and len(self):
            self.remove(ids)  # replacements: out of whichever shard holds them
        places, starts = self._place(chunks), np.cumsum([0] + [rows for _, rows, _ in chunks])
        targets = sorted(set(places))

        def args_of(s):
            mine = [c for c, p in enumerate(places) if p == s]
            data = [chunks[c][0] for c in mine]
            # hash=False: equal rows bound for two shards must be two keys, each on its own worker
            data = [d if hasattr(d, "key") else self.client.scatter(d, workers=[self._workers[s]], hash=False)
                    for d in data]
            return (np.concatenate([ids[starts[c]:starts[c + 1]] for c in mine]), *data)

        for s, count in zip(targets, self._run_each(_shard_add, args_of, targets)):
            self._counts[s] = count
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        return self

    @classmethod
    def from_embedding(cls, embedding: Embedding, kind: str = "hnsw", shards: int | None = None, *,
                       metric: str | None = None, client: Any = None, **index_params: Any) -> ShardedIndex:
        """A sharded index over :func:`embed`'s vectors (ids as the Embedding gives them),
        with the extractor's metric unless ``metric`` is given."""
        index = cls(kind, shards, dim=embedding.dim, metric=metric or embedding.metric, client=client,
                    **index_params)
        return index.add(embedding)

    @classmethod
    def from_array(cls, X: Any, kind: str = "hnsw", shards: int | None = None, *, ids: Any = None,
                   metric: str = "l2", client: Any = None, **index_params: Any) -> ShardedIndex:
        """A sharded index over a NumPy or dask array (n, dim) of float rows."""
        index = cls(kind, shards, dim=int(X.shape[1]), metric=metric, client=client, **index_params)
        return index.add(X, ids=ids)

    def remove(self, ids: Any) -> int:
        """Remove ids (those not held are ignored); returns how many were removed."""
        ids = _as_ids(ids)
        done = self._run_each(_shard_remove, lambda s: (ids,))
        self._counts = [count for _, count in done]
        return int(sum(removed for removed, _ in done))

    def get(self, ids: Any) -> np.ndarray:
        """The rows of the given ids, in their order (every id must be held)."""
        ids = _as_ids(ids)
        out, found = np.empty((len(ids), self.row_width), dtype=np.uint8 if self.metric == "hamming" else np.float32), 0
        for where, rows in self._run_each(_shard_get, lambda s: (ids,)):
            out[where] = rows
            found += len(where)
        if found != len(ids):
            missing = np.setdiff1d(ids, self.ids)
            raise KeyError(f"id {int(missing[0])} is not in the index")
        return out

    # -- searching -------------------------------------------------------------------------
    def search(self, Q: Any, k: int = 10, **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(D, I)``: the k nearest over every shard, float32 and int64 (nq, k), padded with
        ``inf`` / ``-1``.  Extra keywords (``ef``, ``filter``) go to each shard's search."""
        _check_positive(k, "k")
        Q = np.asarray(Q)
        if Q.ndim == 1:
            Q = Q[None, :]
        if Q.ndim != 2 or Q.shape[1] != self.row_width:
            raise ValueError(f"Q: expected queries of shape (nq, {self.row_width}), found {Q.shape}")
        if Q.nbytes > SCATTER_QUERY_BYTES:
            Q = self.client.scatter(Q, broadcast=True, hash=False)
        return merge_topk(self._run_each(_shard_search, lambda s: (Q, int(k), search_params)), int(k))

    # -- files -----------------------------------------------------------------------------
    def save(self, directory: PathLike) -> PathLike:
        """One index file per shard and ``manifest.json`` in ``directory`` (made if missing),
        replacing an earlier save there as one step: see the module's notes."""
        folder = os.path.abspath(os.fspath(directory))
        os.makedirs(folder, exist_ok=True)
        manifest_path = os.path.join(folder, MANIFEST_NAME)
        old = _read_manifest(folder) if os.path.exists(manifest_path) else None
        generation = uuid.uuid4().hex[:12]
        files = [f"shard-{s:05d}-{generation}.isx" for s in range(self.shards)]
        sizes = self._run_each(_shard_save, lambda s: (os.path.join(folder, files[s]),))
        manifest = {"format": MANIFEST_FORMAT, "kind": self.kind, "metric": self.metric, "dim": self.dim,
                    "index_params": self.index_params, "next_id": self._next_id, "count": len(self),
                    "shards": [{"file": f, "count": c, "bytes": b} for f, c, b in zip(files, self._counts, sizes)]}
        tmp = f"{manifest_path}.{generation}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, manifest_path)
        for entry in (old or {}).get("shards", []):
            if entry["file"] not in files:
                try:
                    os.remove(os.path.join(folder, entry["file"]))
                except FileNotFoundError:
                    pass
        return directory

    @classmethod
    def load(cls, directory: PathLike, *, client: Any = None, mmap: bool = False) -> ShardedIndex:
        """Open a saved sharded index: each shard is loaded by a worker (round-robin)."""
        folder = os.path.abspath(os.fspath(directory))
        m = _read_manifest(folder)
        self = cls.__new__(cls)
        self._setup(_get_client(client), m["kind"], m["dim"], m["metric"], m["index_params"], len(m["shards"]))
        loaded = self._run_each(_shard_load, lambda s: (os.path.join(folder, m["shards"][s]["file"]), mmap))
        for s, (cls_name, metric, dim, count) in enumerate(loaded):
            entry = m["shards"][s]
            if (cls_name, metric, dim, count) != (KINDS[self.kind], self.metric, self.dim, entry["count"]):
                raise _core.IndexFormatError(
                    f"{os.path.join(folder, entry['file'])}: expected a {KINDS[self.kind]} of {entry['count']} "
                    f"vectors, dim {self.dim}, metric {self.metric!r} (as the manifest says), found a {cls_name} "
                    f"of {count}, dim {dim}, metric {metric!r}")
            self._counts[s] = count
        self._next_id = int(m["next_id"])
        return self

    def close(self) -> None:
        """Free the shards on the workers (also done when the object is collected)."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _read_manifest(folder):
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: expected a saved ShardedIndex folder with {MANIFEST_NAME}, found none")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except ValueError as e:
        raise _core.IndexFormatError(f"{path}: not valid JSON ({e})") from None
    need = {"format", "kind", "metric", "dim", "index_params", "next_id", "shards"}
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or not need <= set(m):
        found = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise _core.IndexFormatError(f"{path}: expected a manifest of format {MANIFEST_FORMAT!r} with keys "
                                     f"{sorted(need)}, found format {found!r}")
    if m["kind"] not in KINDS:
        raise _core.IndexFormatError(f"{path}: expected kind one of {sorted(KINDS)}, found {m['kind']!r}")
    if not m["shards"] or not all(isinstance(e, dict) and {"file", "count"} <= set(e) for e in m["shards"]):
        raise _core.IndexFormatError(f"{path}: expected a list of shards with 'file' and 'count', "
                                     f"found {m['shards']!r}")
    for e in m["shards"]:
        if os.path.basename(e["file"]) != e["file"]:
            raise _core.IndexFormatError(f"{path}: shard file {e['file']!r} is not a plain file name in the folder")
    return m


def engine_pieces(embedding: Any, paths: Sequence[PathLike] | None, extractor: Any):
    """(vectors as NumPy, paths, extractor) for ``ImageSearch.from_dask``."""
    if isinstance(embedding, Embedding):
        if paths is not None:
            raise ValueError("paths= goes with a bare array; an Embedding carries its own paths")
        ex = extractor if extractor is not None else _extractors.from_config(embedding.extractor)
        return embedding.compute(), embedding.paths, ex
    if extractor is None:
        raise ValueError("extractor=: expected the extractor that made these vectors (a name, config or object) "
                         "when building from a bare array; an Embedding from imgsearch.dask.embed carries it")
    X = np.asarray(embedding.compute() if hasattr(embedding, "compute") else embedding)
    if paths is not None and len(paths) != len(X):
        raise ValueError(f"{len(X)} vectors but {len(paths)} paths; give one path per row")
    ex = _extractors.from_config(extractor) if isinstance(extractor, dict) else extractor
    return X, paths, ex
