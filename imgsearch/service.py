"""`imgsearch serve`: an HTTP search service and a browser page over one engine.

    $ imgsearch serve photos.isx --port 8000            # then open http://127.0.0.1:8000/

    >>> import imgsearch as isx
    >>> handle = isx.serve(engine)                       # a background thread: notebooks too
    >>> handle.url                                       # 'http://127.0.0.1:8000'
    >>> handle.stop()                                    # saves pending changes, frees the port

Needs the ``[serve]`` extra (FastAPI, uvicorn, python-multipart); nothing else
in imgsearch imports this module: ``imgsearch.serve()`` and ``imgsearch serve``
import it when called.

Endpoints (JSON unless said; the OpenAPI schema is at ``/openapi.json``,
its browsable form at ``/docs``):

    POST   /search              one query: a multipart upload (field ``image``),
                                or JSON {"vector": [...]} / {"id": 3};
                                ``k``, ``filter`` (metadata fields), ``exclude_self``
    POST   /search/batch        several queries: uploads (field ``images``) or
                                JSON {"queries": [{"vector"|"id": ...}, ...]}
    POST   /images              add uploaded images (``--allow-add``)
    DELETE /images/{id}         remove an item (``--allow-add``)
    GET    /images/{id}         the original file (inside the indexed folders)
    GET    /images/{id}/thumbnail   a JPEG/PNG thumbnail from the C decoder, cached
    GET    /info, /healthz      what is served; liveness
    GET    /                    the page (static files shipped in imgsearch/static)

Design
  One engine, shared by every request.  Searches run concurrently (the index
  releases the GIL); additions and removals take the write side of a
  readers-writer lock, so a search never sees the id table half-updated.  The
  costly part of an addition -- decoding and feature extraction -- runs
  before the lock is taken.

  Changes are saved by a background thread at most ``save_delay`` seconds
  (1 s) after the first unsaved change, with the engine's own atomic save
  (a temporary file renamed over the old one): a kill loses at most the last
  second of changes and never leaves a torn file.  ``stop()`` saves what is
  pending.

  Safety: the default host is 127.0.0.1; any other host needs a token (the
  server refuses to start without one), sent as ``Authorization: Bearer T``
  or ``?token=T`` (for <img> tags).  Request bodies are capped while they
  stream in; each upload is capped in bytes and, from its header before any
  pixel is decoded, in megapixels; images are decoded by imgsearch's own
  hostile-input C decoder.  Originals are served only from the folders that
  hold indexed files (symlinks resolved, so a link cannot lead outside).
  Every error is a JSON body ``{"error": message, "status": code}``; input
  errors are 4xx, and an unexpected failure is a 500 with a one-line
  message, never a traceback.
"""
import contextlib
import hashlib
import hmac
import ipaddress
import json
import math
import mimetypes
import os
import tempfile
import threading
import time
from collections import OrderedDict

import numpy as np

try:
    from fastapi import FastAPI, Path, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field, ValidationError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised by the extra's absence
    raise ImportError("imgsearch serve needs the [serve] extra: pip install 'imgsearch[serve]' "
                      f"(FastAPI, uvicorn, python-multipart); missing: {e.name}") from e

from . import image as _image
from ._core import ImageDecodeError

__all__ = ["create_app", "serve", "ServerHandle", "ServiceError"]

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
MAX_K = 1000                    # hits per query: a results grid, not a dump of the index
MAX_BATCH = 64                  # queries or uploads per request
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_MEGAPIXELS = 40.0   # a 40 MP phone photo; the decoder's own limit is 100
THUMB_SIDES = (64, 128, 256, 512)  # sizes the thumbnail endpoint makes (a small set keeps the cache useful)
THUMB_CACHE_BYTES = 64 * 1024 * 1024
SAVE_DELAY = 1.0                # seconds from the first unsaved change to the save


class ServiceError(Exception):
    """An error with an HTTP status and a message for the client."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------------------
# Schemas (what /openapi.json describes)
# ---------------------------------------------------------------------------
_FILTER_DOC = ('metadata fields the hits must have: {"field": value} matches equal values, '
               '{"field": [v1, v2]} any of them; items without that field never match')


class Hit(BaseModel):
    rank: int = Field(description="1 for the nearest")
    id: int
    path: str | None
    distance: float = Field(description="smaller is closer (the engine's metric)")
    score: float = Field(description="similarity: 1 - distance for cosine/ip, else 1 / (1 + distance)")
    metadata: object | None = None


class SearchResponse(BaseModel):
    query: str
    k: int
    hits: list[Hit]
    took_ms: float


class BatchResponse(BaseModel):
    results: list[SearchResponse]
    took_ms: float


class VectorOrId(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vector: list[float] | None = Field(None, description="a feature vector of the engine's dimension")
    id: int | None = Field(None, description="an id already indexed: search by its stored vector")


class SearchJSON(VectorOrId):
    k: int = Field(10, ge=1, le=MAX_K)
    filter: dict[str, object] | None = Field(None, description=_FILTER_DOC)
    exclude_self: bool | None = Field(None, description="drop the query itself from the hits (default: true "
                                                        "for an id, false for an image or a vector)")


class BatchJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[VectorOrId] = Field(min_length=1, max_length=MAX_BATCH)
    k: int = Field(10, ge=1, le=MAX_K)
    filter: dict[str, object] | None = Field(None, description=_FILTER_DOC)
    exclude_self: bool | None = None


class AddedItem(BaseModel):
    id: int
    path: str
    updated: bool = Field(description="the same image was already indexed: its entry was kept")


class AddResponse(BaseModel):
    added: list[AddedItem]
    count: int = Field(description="items in the engine now")


class RemoveResponse(BaseModel):
    removed: int
    count: int


class ErrorBody(BaseModel):
    error: str
    status: int


class Health(BaseModel):
    status: str
    count: int


def _multipart_schema(file_field, many):
    file_schema = {"type": "string", "format": "binary"}
    return {"type": "object", "required": [file_field], "properties": {
        file_field: {"type": "array", "items": file_schema, "maxItems": MAX_BATCH} if many else file_schema,
        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
        "filter": {"type": "string", "description": "a JSON object: " + _FILTER_DOC},
        "exclude_self": {"type": "boolean"},
    }}


def _body(multipart_schema, json_model):
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": multipart_schema},
        "application/json": {"schema": json_model.model_json_schema(ref_template="#/components/schemas/{model}")},
    }}}


_ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in (
    (400, "malformed request"), (401, "missing or wrong token"), (403, "not allowed by this server"),
    (404, "no such item"), (413, "upload too large"), (415, "unsupported content type"),
    (422, "invalid input: the message says what was expected and found"))}


# ---------------------------------------------------------------------------
# The state behind the app
# ---------------------------------------------------------------------------
class _RWLock:
    """Many readers or one writer; a waiting writer holds off new readers."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    def read(self):
        return _Held(self, False)

    def write(self):
        return _Held(self, True)

    def acquire(self, write):
        with self._cond:
            if write:
                self._waiting += 1
                self._cond.wait_for(lambda: not self._writer and self._readers == 0)
                self._waiting -= 1
                self._writer = True
            else:
                self._cond.wait_for(lambda: not self._writer and self._waiting == 0)
                self._readers += 1

    def release(self, write):
        with self._cond:
            if write:
                self._writer = False
            else:
                self._readers -= 1
            self._cond.notify_all()


class _Held:
    def __init__(self, lock, write):
        self.lock, self.write = lock, write

    def __enter__(self):
        self.lock.acquire(self.write)

    def __exit__(self, *exc):
        self.lock.release(self.write)


class _Saver:
    """Saves the engine at most `delay` seconds after the first unsaved change."""

    def __init__(self, engine, path, lock, delay):
        self.engine, self.path, self.lock, self.delay = engine, path, lock, delay
        self._cond = threading.Condition()
        self._dirty_since = None
        self._closed = False
        self.saves = 0
        self.last_error = None
        self._thread = threading.Thread(target=self._run, name="imgsearch-saver", daemon=True)
        self._thread.start()

    def changed(self):
        with self._cond:
            if self._dirty_since is None:
                self._dirty_since = time.monotonic()
                self._cond.notify_all()

    def _run(self):
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._dirty_since is not None or self._closed)
                if self._dirty_since is None:
                    return
                wait = self._dirty_since + self.delay - time.monotonic()
                if wait > 0 and not self._closed:
                    self._cond.wait(wait)
                    continue
                self._dirty_since = None
            self._save()

    def _save(self):
        try:
            with self.lock.read():  # searches go on; changes wait for the file to be written
                self.engine.save(self.path)
            self.saves += 1
            self.last_error = None
        except OSError as e:  # a full disk: keep serving, say so in /info, retry on the next change
            self.last_error = f"saving {self.path} failed: {e}"

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()


class _ThumbCache:
    """Encoded thumbnails by (path, mtime, size, side), least recently used out, bounded in bytes."""

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self._items = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                return data
        data = make()  # outside the lock: thumbnails of different images are made in parallel
        with self._lock:
            if key not in self._items:
                self._items[key] = data
                self._bytes += len(data)
                while self._bytes > self.max_bytes and self._items:
                    self._bytes -= len(self._items.popitem(last=False)[1])
        return data


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _inside(path, roots):
    return any(os.path.commonpath([path, r]) == r for r in roots)


class _Service:
    def __init__(self, engine, index_path, token, allow_add, upload_dir, roots, max_upload_bytes, max_megapixels,
                 save_delay):
        self.engine = engine
        self.index_path = os.path.abspath(index_path) if index_path else None
        self.token = token
        self.allow_add = allow_add
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_megapixels * 1_000_000)
        self.lock = _RWLock()
        self.thumbs = _ThumbCache(THUMB_CACHE_BYTES)
        if allow_add and upload_dir is None:
            if self.index_path is None:
                raise ValueError("allow_add=True needs a folder for the uploaded images: pass upload_dir= "
                                 "(or index_path=, whose <name>.uploads folder is then used)")
            upload_dir = os.path.splitext(self.index_path)[0] + ".uploads"
        self.upload_dir = os.path.realpath(upload_dir) if upload_dir else None
        if self.upload_dir:
            os.makedirs(self.upload_dir, exist_ok=True)
        if roots is None:  # the folders that hold indexed files, as they were indexed
            roots = {os.path.dirname(p) for p in engine.paths if p is not None}
        self.roots = {os.path.realpath(r) for r in roots} | ({self.upload_dir} if self.upload_dir else set())
        self.saver = _Saver(engine, self.index_path, self.lock, save_delay) if self.index_path else None

    # -- queries ---------------------------------------------------------------
    def check_k(self, k):
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ServiceError(422, f"k: expected an integer from 1 to {MAX_K}, found {k!r}")
        return k

    def query_vector(self, q):
        """(vector, label, own id) of one JSON query {"vector"} or {"id"}."""
        if (q.vector is None) == (q.id is None):
            raise ServiceError(422, 'a query needs exactly one of "vector" (a list of numbers) or "id" (an '
                                    f'indexed id); found {"both" if q.vector is not None else "neither"}')
        ex = self.engine.extractor  # vectors are the extractor's (the engine whitens them, if it does)
        if q.id is not None:
            with self.lock.read():
                if q.id not in self.engine._paths:
                    raise ServiceError(404, f"id {q.id} is not in the index")
                v = self.engine.vectors([q.id])[0]
            return v, f"id {q.id}", q.id
        dim = ex.dim // 8 if ex.metric == "hamming" else ex.dim
        v = np.asarray(q.vector, dtype=np.float64)
        if v.shape != (dim,):
            raise ServiceError(422, f"vector: expected {dim} numbers (the engine's dimension), found {len(v)}")
        if not np.all(np.isfinite(v)):
            raise ServiceError(422, "vector: expected finite numbers, found NaN or infinity")
        if ex.metric == "hamming":
            if np.any((v < 0) | (v > 255) | (v != np.round(v))):
                raise ServiceError(422, "vector: a hamming engine takes packed bits, integers 0..255")
            return v.astype(np.uint8), "<vector>", None
        return v.astype(np.float32), "<vector>", None

    def check_upload(self, name, data):
        """Refuse an upload that is too large, in bytes or (from its header) in pixels."""
        if len(data) > self.max_upload_bytes:
            raise ServiceError(413, f"{name}: {len(data)} bytes, above this server's limit of "
                                    f"{self.max_upload_bytes} bytes per image")
        if not data:
            raise ServiceError(422, f"{name}: the upload is empty; expected the bytes of an image file")
        try:
            w, h = _image.dimensions(data)
        except ImageDecodeError:
            return  # the decoder gives the precise reason (it reads more formats' headers than this probe)
        if w * h > self.max_pixels:
            raise ServiceError(413, f"{name}: its header declares {w} x {h} pixels ({w * h / 1e6:.1f} MP), above "
                                    f"this server's limit of {self.max_pixels / 1e6:g} MP; downscale it first")

    def extract(self, uploads):
        """Feature vectors of uploaded images [(name, bytes)], one row each; bad ones raise (422 naming it)."""
        for name, data in uploads:
            self.check_upload(name, data)
        feats, failed = self.engine.extractor.extract_files([data for _, data in uploads])
        if failed:
            i, _path, reason = failed[0]
            raise ServiceError(422, f"{uploads[i][0]}: not a usable image: {reason}")
        return feats

    def search(self, Q, labels, own_ids, k, filter, exclude_self):
        """One response per query row.  exclude_self: drop the query's own id, or for an
        image or a vector, hits whose stored vector is the query itself."""
        predicate = _metadata_predicate(filter)
        results = []
        with self.lock.read():
            n = len(self.engine)
            for q, (label, own) in enumerate(zip(labels, own_ids)):
                drop_self = exclude_self if exclude_self is not None else own is not None
                want = k + 1 if drop_self else k
                t0 = time.perf_counter()
                while True:
                    found = _hits(self.engine.search_vectors(Q[q:q + 1], k=min(want, max(n, 1)), filter=predicate))
                    hits = self._without_self(found, Q[q], own) if drop_self else found
                    if len(hits) >= k or len(found) < want or want >= n:
                        break
                    want *= 4  # several exact copies of the query were left out: look further
                results.append({"query": label, "k": k, "took_ms": (time.perf_counter() - t0) * 1e3,
                                "hits": [{"rank": r, **h} for r, h in enumerate(hits[:k], start=1)]})
        return results

    def _without_self(self, hits, qvec, own):
        if own is not None:
            return [h for h in hits if h["id"] != own]
        if not hits:
            return hits
        stored = self.engine.vectors([h["id"] for h in hits])
        return [h for h, v in zip(hits, stored) if not np.array_equal(v, qvec)]

    # -- changes ---------------------------------------------------------------
    def add(self, uploads, metadata):
        """Store uploads under upload_dir (named by content: the same image twice is one
        file and one entry) and index them."""
        feats = self.extract(uploads)
        paths = []
        for name, data in uploads:
            ext = os.path.splitext(name)[1].lower()
            ext = ext if ext in _UPLOAD_EXTENSIONS else ".img"
            path = os.path.join(self.upload_dir, hashlib.sha256(data).hexdigest()[:32] + ext)
            if not os.path.exists(path):
                fd, tmp = tempfile.mkstemp(dir=self.upload_dir, prefix=".upload-")
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            paths.append(path)
        first = {}  # the same image twice in one request: indexed once
        for j, p in enumerate(paths):
            first.setdefault(p, j)
        rows = sorted(first.values())
        with self.lock.write():
            existed = {p for p in first if p in self.engine._by_path}
            report = self.engine.add_vectors(feats[rows], paths=[paths[j] for j in rows],
                                             metadata=None if metadata is None else [metadata[j] for j in rows])
            count = len(self.engine)
        self.changed()
        id_of = dict(zip((paths[j] for j in rows), report.ids))
        added = [{"id": int(id_of[p]), "path": p, "updated": p in existed or j != first[p]}
                 for j, p in enumerate(paths)]
        return added, count

    def remove(self, item_id):
        with self.lock.write():
            path = self.engine._paths.get(item_id)
            if item_id not in self.engine._paths:
                raise ServiceError(404, f"id {item_id} is not in the index")
            self.engine.remove([item_id])
            count = len(self.engine)
        if path and self.upload_dir and os.path.dirname(os.path.realpath(path)) == self.upload_dir:
            try:
                os.unlink(path)  # ours: uploaded through this service
            except FileNotFoundError:
                pass
        self.changed()
        return count

    def changed(self):
        if self.saver is not None:
            self.saver.changed()

    # -- files -----------------------------------------------------------------
    def original(self, item_id):
        """The real path of an item's file, if it lies inside the served folders."""
        with self.lock.read():
            if item_id not in self.engine._paths:
                raise ServiceError(404, f"id {item_id} is not in the index")
            path = self.engine._paths[item_id]
        if path is None:
            raise ServiceError(404, f"id {item_id} was added as an array: it has no file")
        real = os.path.realpath(path)
        if not _inside(real, self.roots):
            raise ServiceError(403, f"id {item_id}: its file resolves outside the indexed folders; not served")
        if not os.path.isfile(real):
            raise ServiceError(404, f"id {item_id}: its file {os.path.basename(path)!r} is no longer there")
        return real

    def thumbnail(self, item_id, side):
        real = self.original(item_id)
        try:
            st = os.stat(real)
        except OSError as e:  # removed since original() looked
            raise ServiceError(404, f"id {item_id}: its file cannot be read ({e.strerror})") from None

        def make():
            try:
                return _image.thumbnail(real, max_side=side)
            except (ImageDecodeError, OSError) as e:
                raise ServiceError(422, f"id {item_id}: cannot make a thumbnail: {e}") from None

        return self.thumbs.get((real, st.st_mtime_ns, st.st_size, side), make)

    def info(self):
        with self.lock.read():
            info = self.engine.info()
        info.update({
            "allow_add": self.allow_add, "auth": self.token is not None, "max_k": MAX_K, "max_batch": MAX_BATCH,
            "max_upload_bytes": self.max_upload_bytes, "max_megapixels": self.max_pixels / 1e6,
            "thumbnail_sides": list(THUMB_SIDES), "thumbnail_format": _image.THUMBNAIL_FORMAT,
            "index_path": self.index_path, "saves": self.saver.saves if self.saver else 0,
            "save_error": self.saver.last_error if self.saver else None,
        })
        return info

    def close(self):
        if self.saver is not None:
            self.saver.close()


_UPLOAD_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tga", ".psd", ".pnm", ".ppm", ".pgm", ".webp")


def _hits(results):
    """The hits of a one-query SearchResults, from its arrays: id, path, distance, score, metadata."""
    ids, dist, scores = results.ids[0], results.distances[0], results.scores[0]
    return [{"id": int(i), "path": results.paths[0][j], "distance": float(dist[j]),
             "score": float(scores[j]) if math.isfinite(scores[j]) else 0.0, "metadata": results.metadata[0][j]}
            for j, i in enumerate(ids) if i >= 0]


def _metadata_predicate(filter):
    if not filter:
        return None
    wanted = {key: (tuple(v) if isinstance(v, list) else (v,)) for key, v in filter.items()}

    def keep(_path, meta):
        return isinstance(meta, dict) and all(key in meta and meta[key] in vals for key, vals in wanted.items())

    return keep


# ---------------------------------------------------------------------------
# Parsing requests
# ---------------------------------------------------------------------------
def _content_kind(request):
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return "multipart"
    if ctype == "application/json":
        return "json"
    raise ServiceError(415, f"expected a multipart/form-data upload or an application/json body, found "
                            f"{ctype or 'no content type'!r}")


async def _json_body(request, model):
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise ServiceError(422, "invalid JSON body: " + _validation_message(e.errors())) from None


async def _form(request, file_field, many, service):
    """-> uploads [(name, bytes)], k, filter, exclude_self from a multipart body."""
    try:
        form = await request.form(max_files=MAX_BATCH, max_fields=16)
    except Exception as e:  # python-multipart's and Starlette's parse errors have no common base
        raise ServiceError(400, f"malformed multipart body: {e}") from None
    unknown = sorted(set(form.keys()) - {file_field, "k", "filter", "exclude_self", "metadata"})
    if unknown:
        raise ServiceError(422, f"unknown form fields {unknown}; expected {file_field!r}, 'k', 'filter', "
                                "'exclude_self'")
    files = form.getlist(file_field)
    if not files:
        raise ServiceError(422, f"expected an image file in the form field {file_field!r}, found none")
    if not many and len(files) > 1:
        raise ServiceError(422, f"expected one image in {file_field!r}, found {len(files)}: use /search/batch")
    uploads = []
    for i, f in enumerate(files):
        if isinstance(f, str):
            raise ServiceError(422, f"{file_field}: expected a file upload, found a text field")
        data = await f.read(service.max_upload_bytes + 1)
        uploads.append((f.filename or f"upload {i}", data))
    fields = {key: form.get(key) for key in ("k", "filter", "exclude_self", "metadata") if form.get(key) is not None}
    for key, v in fields.items():
        if not isinstance(v, str):
            raise ServiceError(422, f"{key}: expected a text field, found a file")
    k = fields.get("k", "10")
    try:
        k = int(k)
    except ValueError:
        raise ServiceError(422, f"k: expected an integer from 1 to {MAX_K}, found {k!r}") from None
    filter = _json_field(fields, "filter", dict, "a JSON object of metadata fields")
    exclude = fields.get("exclude_self")
    if exclude is not None:
        if exclude.lower() not in ("true", "false", "1", "0"):
            raise ServiceError(422, f"exclude_self: expected true or false, found {exclude!r}")
        exclude = exclude.lower() in ("true", "1")
    return uploads, service.check_k(k), filter, exclude, fields


def _json_field(fields, key, kind, what):
    if key not in fields:
        return None
    try:
        v = json.loads(fields[key])
    except ValueError:
        raise ServiceError(422, f"{key}: expected {what}, found text that is not JSON") from None
    if not isinstance(v, kind):
        raise ServiceError(422, f"{key}: expected {what}, found {type(v).__name__}")
    return v


def _validation_message(errors):
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where or 'body'}: {e.get('msg')}")
    return "; ".join(parts) + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else "")


# ---------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------
class _BodyLimit:
    """ASGI middleware: refuse a request body past `limit` bytes while it streams in."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, 413, f"request body of {int(declared)} bytes, above this server's "
                                                f"limit of {self.limit} bytes")
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_error(send, 413, f"request body above this server's limit of {self.limit} bytes")


class _TooLarge(Exception):
    pass


class _TokenCheck:
    """ASGI middleware: every path but the page, its static files and /healthz needs the
    token, as ``Authorization: Bearer T`` or ``?token=T`` (for <img> tags)."""

    def __init__(self, app, token):
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or path in _PUBLIC_PATHS or path.startswith("/static/"):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if given[:7].lower() == b"bearer ":
            given = given[7:]
        else:
            from urllib.parse import parse_qs
            given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0].encode()
        if not hmac.compare_digest(given, self.token):
            return await _send_error(send, 401, "this server needs a token: send 'Authorization: Bearer <token>' "
                                                "(or ?token=<token>)")
        return await self.app(scope, receive, send)


async def _send_error(send, status, message):
    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _error(status, message):
    return JSONResponse({"error": message, "status": status}, status_code=status)


_PUBLIC_PATHS = ("/", "/healthz", "/favicon.ico")
_ITEM_ID = Path(description="an id from a search hit", examples=[0])
_THUMB_SIZE = Query(256, description=f"longest side in pixels: one of {', '.join(map(str, THUMB_SIDES))}",
                    json_schema_extra={"enum": list(THUMB_SIDES)})


def create_app(engine, *, index_path=None, token=None, allow_add=False, upload_dir=None, roots=None,
               max_upload_bytes=DEFAULT_MAX_UPLOAD_BYTES, max_megapixels=DEFAULT_MAX_MEGAPIXELS,
               save_delay=SAVE_DELAY):
    """The ASGI app (FastAPI) over one ImageSearch engine.

    index_path   where changes are saved (atomically, ``save_delay`` s after the first)
    token        required on every request but /healthz and the page's static files
    allow_add    enable POST /images and DELETE /images/{id}; uploads are stored in
                 ``upload_dir`` (default: ``<index_path without .isx>.uploads``)
    roots        folders whose files GET /images/{id} may serve (default: the folders of
                 the indexed files)
    The app's ``state.service.close()`` (called on shutdown) saves pending changes.
    """
    service = _Service(engine, index_path, token, allow_add, upload_dir, roots, max_upload_bytes, max_megapixels,
                       save_delay)
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()  # the pending save

    app = FastAPI(title="imgsearch", version=_version(), description=(
        "Content-based image search over one imgsearch engine. Errors are JSON `{error, status}`."),
        responses=_ERRORS, lifespan=lifespan)
    app.state.service = service
    app.add_middleware(_BodyLimit, limit=MAX_BATCH * service.max_upload_bytes + 65536)
    if token is not None:
        app.add_middleware(_TokenCheck, token=token)  # outermost: nothing runs for a stranger

    # -- errors: JSON everywhere ------------------------------------------------
    @app.exception_handler(ServiceError)
    async def _service_error(request, exc):
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return _error(422, _validation_message(exc.errors()))

    @app.exception_handler(ImageDecodeError)
    async def _decode_error(request, exc):
        return _error(422, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    # -- search -------------------------------------------------------------------
    @app.post("/search", response_model=SearchResponse, tags=["search"],
              openapi_extra=_body(_multipart_schema("image", many=False), SearchJSON),
              summary="Nearest images to one uploaded image, vector or indexed id")
    async def search(request: Request):
        if _content_kind(request) == "multipart":
            uploads, k, filter, exclude, _ = await _form(request, "image", False, service)
            return (await run_in_threadpool(_search_uploads, service, uploads, k, filter, exclude))[0]
        body = await _json_body(request, SearchJSON)
        return (await run_in_threadpool(_search_json, service, [body], body.k, body.filter, body.exclude_self))[0]

    @app.post("/search/batch", response_model=BatchResponse, tags=["search"],
              openapi_extra=_body(_multipart_schema("images", many=True), BatchJSON),
              summary="Several queries in one request")
    async def search_batch(request: Request):
        t0 = time.perf_counter()
        if _content_kind(request) == "multipart":
            uploads, k, filter, exclude, _ = await _form(request, "images", True, service)
            results = await run_in_threadpool(_search_uploads, service, uploads, k, filter, exclude)
        else:
            body = await _json_body(request, BatchJSON)
            results = await run_in_threadpool(_search_json, service, body.queries, body.k, body.filter,
                                              body.exclude_self)
        return {"results": results, "took_ms": (time.perf_counter() - t0) * 1e3}

    # -- changes ---------------------------------------------------------------------
    @app.post("/images", response_model=AddResponse, status_code=201, tags=["images"],
              summary="Add uploaded images (when the server allows it)",
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["images"], "properties": {
                      "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                                 "maxItems": MAX_BATCH},
                      "metadata": {"type": "string", "description": "a JSON object given to every image, or "
                                                                    "a list with one per image"}}}}}}})
    async def add_images(request: Request):
        _check_changes_allowed(service)
        if _content_kind(request) != "multipart":
            raise ServiceError(415, "expected a multipart/form-data upload with the images in the field 'images'")
        uploads, _k, _f, _e, fields = await _form(request, "images", True, service)
        metadata = _upload_metadata(fields, len(uploads))
        added, count = await run_in_threadpool(service.add, uploads, metadata)
        return {"added": added, "count": count}

    @app.delete("/images/{item_id}", response_model=RemoveResponse, tags=["images"],
                summary="Remove an item (when the server allows changes)")
    async def remove_image(item_id: int = _ITEM_ID):
        _check_changes_allowed(service)
        count = await run_in_threadpool(service.remove, item_id)
        return {"removed": item_id, "count": count}

    # -- files -----------------------------------------------------------------------
    @app.get("/images/{item_id}", tags=["images"], summary="The original image file",
             response_class=FileResponse, responses={200: {"content": {"image/*": {}}}})
    async def original(item_id: int = _ITEM_ID):
        real = await run_in_threadpool(service.original, item_id)
        mime = mimetypes.guess_type(real)[0] or "application/octet-stream"
        return FileResponse(real, media_type=mime, headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/images/{item_id}/thumbnail", tags=["images"], summary="A thumbnail made by the C decoder",
             response_class=Response,
             responses={200: {"content": {_image.THUMBNAIL_MIME[_image.THUMBNAIL_FORMAT]: {}}}})
    async def thumbnail(item_id: int = _ITEM_ID, size: int = _THUMB_SIZE):
        if size not in THUMB_SIDES:
            raise ServiceError(422, f"size: expected one of {list(THUMB_SIDES)}, found {size}")
        data = await run_in_threadpool(service.thumbnail, item_id, size)
        return Response(data, media_type=_image.THUMBNAIL_MIME[_image.THUMBNAIL_FORMAT],
                        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})

    @app.get("/info", tags=["service"], summary="The engine and this server's limits")
    async def info() -> dict:
        return service.info()

    @app.get("/healthz", response_model=Health, tags=["service"], summary="Liveness")
    async def healthz():
        return {"status": "ok", "count": len(service.engine)}

    # -- the page ----------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app




def _check_changes_allowed(service):
    if not service.allow_add:
        raise ServiceError(403, "this server does not accept changes: start it with --allow-add "
                                "(serve(..., allow_add=True))")


def _upload_metadata(fields, n):
    if "metadata" not in fields:
        return None
    try:
        meta = json.loads(fields["metadata"])
    except ValueError:
        raise ServiceError(422, "metadata: expected a JSON object or a list of them, found text that is not "
                                "JSON") from None
    if isinstance(meta, list):
        if len(meta) != n:
            raise ServiceError(422, f"metadata: a list needs one entry per image ({n}), found {len(meta)}")
        return meta
    if isinstance(meta, dict):
        return [meta] * n
    raise ServiceError(422, f"metadata: expected a JSON object or a list, found {type(meta).__name__}")


def _search_uploads(service, uploads, k, filter, exclude):
    Q = service.extract(uploads)
    return service.search(Q, [name for name, _ in uploads], [None] * len(uploads), k, filter, exclude)


def _search_json(service, queries, k, filter, exclude):
    rows = [service.query_vector(q) for q in queries]
    Q = np.stack([r[0] for r in rows])
    return service.search(Q, [r[1] for r in rows], [r[2] for r in rows], k, filter, exclude)


def _version():
    from . import __version__
    return __version__


# ---------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------
class ServerHandle:
    """A server running in a background thread: ``.url``, ``.app``, ``.stop()``.
    Also a context manager (stops on exit)."""

    def __init__(self, server, thread, app, url):
        self._server, self._thread, self.app, self.url = server, thread, app, url

    def stop(self, timeout=10):
        """Stop serving, save pending changes, free the port."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"ServerHandle({self.url!r}, running={self._thread.is_alive()})"


def check_host(host, token):
    """Refuse a non-loopback host without a token."""
    if not _is_loopback(host) and not token:
        raise ValueError(f"host {host!r} is reachable from other machines: a token is required "
                         "(--token T, or serve(..., token=T)); or bind 127.0.0.1")


def serve(engine, host="127.0.0.1", port=8000, *, token=None, allow_add=False, index_path=None, background=True,
          log_level="warning", **app_options):
    """Serve an engine (an ImageSearch, or the path of a saved one) over HTTP.

    background=True (the default, for notebooks and scripts) starts uvicorn in a
    daemon thread and returns a ServerHandle once it accepts connections
    (``port=0`` picks a free port: see ``handle.url``); background=False serves
    in this thread until interrupted.  Other keywords go to :func:`create_app`.
    """
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError("imgsearch serve needs uvicorn: pip install 'imgsearch[serve]'") from e
    check_host(host, token)
    if isinstance(engine, (str, os.PathLike)):
        from .engine import ImageSearch
        index_path = index_path or os.fspath(engine)
        engine = ImageSearch.load(engine)
    app = create_app(engine, index_path=index_path, token=token, allow_add=allow_add, **app_options)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if not background:
        server.run()
        return None
    thread = threading.Thread(target=server.run, name="imgsearch-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise OSError(f"the server did not start on {host}:{port} (is the port in use?)")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return ServerHandle(server, thread, app, f"http://{shown}:{bound}")
