"""SearchResults: what ImageSearch.search returns -- arrays first, pictures on demand.

    >>> hits = engine.search(["a.jpg", "b.jpg"], k=5)
    >>> D, I = hits                         # (2, 5) float32 / int64, inf / -1 padded, as index.search
    >>> hits[0]                             # the first query's hits: dicts with rank (from 1), path, ...
    >>> hits.paths[0]                       # the first query's result paths
    >>> hits.to_pandas()                    # long form: query, rank, id, name, path, distance, score
    >>> hits                                # in a notebook: a grid of thumbnails

pandas and matplotlib are imported only by the methods that need them; thumbnails
are made in C (imgsearch.image.thumbnail), so the grid needs no Pillow.
The HTML view escapes every string, embeds at most ``max_rows`` x ``max_cols``
thumbnails (bounded in pixels and bytes), and returns None instead of raising
when something goes wrong, as notebook display hooks should.
"""
from __future__ import annotations

import base64
import html
import os

from typing import Any

import numpy as np

__all__ = ["SearchResults", "DuplicateGroup"]

THUMB_PX = 128          # longest side of an embedded thumbnail
MAX_THUMB_BYTES = 200_000  # skip files whose thumbnail would be larger (128 px: ~5 KB JPEG, 49 KB PNG)


class SearchResults:
    """Results of a batch of queries (a single query is a batch of one).

    distances  float32 (nq, k), smaller = closer, inf for padding
    ids        int64 (nq, k), -1 where fewer than k results exist
    paths      list (nq) of lists of path strings (None for array-added items)
    scores     similarity: cos / dot for cosine / ip (1 - distance), else 1 / (1 + distance); NaN for padding
    metadata   list (nq) of lists of the metadata stored with each hit (or None)
    queries    what was asked (paths, or "<array 0>" ...)

    ``D, I = results`` unpacks the two arrays, (distances, ids) in that order,
    like ``index.search``; ``results[q]`` is query q's hits as dicts (rank
    from 1); ``len(results)`` is the number of queries.
    """

    def __init__(self, distances: Any, ids: Any, paths: list[list[str | None]], metadata: list[list[Any]],
                 queries: list[Any], metric: str = "l2") -> None:
        self.distances = np.asarray(distances)
        self.ids = np.asarray(ids)
        self.paths = paths
        self.metadata = metadata
        self.queries = list(queries)
        self.metric = metric

    # -- container behaviour -----------------------------------------------------
    def __len__(self):
        return len(self.ids)

    def __iter__(self):
        """``D, I = results``: (distances, ids), as ``index.search`` returns them."""
        yield self.distances
        yield self.ids

    def __getitem__(self, q: int) -> list[dict[str, Any]]:
        """One query's results as a list of dicts (rank from 1, id, path, distance, score, metadata)."""
        if not isinstance(q, (int, np.integer)):
            raise TypeError(f"index results by query number (int), found {type(q).__name__}")
        if not -len(self) <= q < len(self):
            raise IndexError(f"query {q} out of range: there are {len(self)} queries")
        q = int(q) % len(self)
        scores = self.scores[q]
        out = []
        for r, i in enumerate(self.ids[q]):
            if i < 0:
                break
            out.append({"rank": r + 1, "id": int(i), "path": self.paths[q][r], "distance": float(self.distances[q, r]),
                        "score": float(scores[r]), "metadata": self.metadata[q][r]})
        return out

    @property
    def scores(self) -> np.ndarray:
        d = self.distances.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            if self.metric in ("cosine", "ip"):
                s = 1.0 - d  # the cosine similarity / the dot product
            else:
                s = 1.0 / (1.0 + np.maximum(d, 0))
        s[self.ids < 0] = np.nan
        return s

    def __repr__(self):
        k = self.ids.shape[1] if self.ids.ndim == 2 else 0
        lines = [f"SearchResults({len(self)} queries, k={k}, metric={self.metric!r})"]
        for q in range(min(len(self), 3)):
            hits = self[q][:3]
            desc = ", ".join(f"{os.path.basename(h['path']) if h['path'] else h['id']} ({h['distance']:.4g})"
                             for h in hits)
            lines.append(f"  {self.queries[q]!s}: {desc}{', ...' if len(self[q]) > 3 else ''}")
        if len(self) > 3:
            lines.append(f"  ... {len(self) - 3} more queries")
        return "\n".join(lines)

    # -- tables --------------------------------------------------------------------
    def to_records(self) -> list[dict[str, Any]]:
        rows = []
        for q in range(len(self)):
            for h in self[q]:
                name = os.path.basename(h["path"]) if h["path"] is not None else None
                rows.append({"query": q, "query_item": str(self.queries[q]), "name": name, **h})
        return rows

    def to_pandas(self) -> Any:
        """Long form: one row per (query, rank): query, query_item, rank (from 1), id,
        name (the file name), path, distance, score, metadata."""
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from e
        cols = ["query", "query_item", "rank", "id", "name", "path", "distance", "score", "metadata"]
        return pd.DataFrame(self.to_records(), columns=cols)

    def to_json(self) -> list[dict[str, Any]]:
        return [{"query": str(self.queries[q]), "results": self[q]} for q in range(len(self))]

    # -- pictures ---------------------------------------------------------------------
    @staticmethod
    def _thumbnail_uri(path):
        """A small JPEG (PNG without libjpeg) of the image as a data: URI, or None if
        it cannot be made.  Made by the C decoder and encoder: Pillow is not needed."""
        if not path:
            return None
        from . import image as _image
        try:
            data = _image.thumbnail(path, max_side=THUMB_PX, quality=80)
        except (ValueError, TypeError, OSError, MemoryError):
            return None
        if len(data) > MAX_THUMB_BYTES:
            return None
        return f"data:{_image.THUMBNAIL_MIME[_image.THUMBNAIL_FORMAT]};base64," + base64.b64encode(data).decode("ascii")

    def to_html(self, max_rows=10, max_cols=10):
        """A table: one row per query (its image first), thumbnails of the hits."""
        esc = html.escape
        parts = ['<table style="border-collapse:collapse">']
        nq = min(len(self), max_rows)
        for q in range(nq):
            qitem = self.queries[q]
            cells = []
            quri = self._thumbnail_uri(qitem) if isinstance(qitem, str) else None
            qlabel = esc(os.path.basename(str(qitem)))
            cells.append('<td style="padding:4px;border-right:2px solid #888;text-align:center">'
                         + (f'<img src="{quri}" style="max-width:{THUMB_PX}px"><br>' if quri else "")
                         + f"<b>query</b><br><small>{qlabel}</small></td>")
            for h in self[q][:max_cols]:
                uri = self._thumbnail_uri(h["path"])
                label = esc(os.path.basename(h["path"])) if h["path"] else f"id {h['id']}"
                img = f'<img src="{uri}" style="max-width:{THUMB_PX}px"><br>' if uri else ""
                cells.append(f'<td style="padding:4px;text-align:center" title="{esc(str(h["path"]))}">{img}'
                             f"<small>{label}<br>{h['distance']:.4g}</small></td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
        if len(self) > nq:
            parts.append(f"<p>{len(self) - nq} more queries not shown</p>")
        return "\n".join(parts)

    def _repr_html_(self):
        try:
            return self.to_html()
        except Exception:
            return None

    def save_html(self, path, title="imgsearch results"):
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
                f"<body><h1>{html.escape(title)}</h1>{self.to_html(max_rows=len(self), max_cols=self.ids.shape[1])}"
                "</body></html>")
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
        return path

    def show(self, max_rows=5, max_cols=8, figsize_per=2.0):
        """Plot queries and hits with matplotlib; returns the figure."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError("show() needs matplotlib: pip install matplotlib") from e
        from . import image as _image
        nq = min(len(self), max_rows)
        ncol = 1 + min(self.ids.shape[1], max_cols)
        fig, axes = plt.subplots(nq, ncol, figsize=(figsize_per * ncol, figsize_per * nq), squeeze=False)
        for q in range(nq):
            items = [(self.queries[q], "query")] + [(h["path"], f"{h['distance']:.3g}") for h in self[q][:max_cols]]
            for c in range(ncol):
                ax = axes[q][c]
                ax.axis("off")
                if c < len(items):
                    item, label = items[c]
                    try:
                        ax.imshow(_image.load(item) if isinstance(item, str) else np.asarray(item))
                    except Exception:
                        pass
                    ax.set_title(label, fontsize=8)
        fig.tight_layout()
        return fig


class DuplicateGroup(list):
    """One group of near-duplicates from ``ImageSearch.duplicates()``: a list of
    paths (ids for items added as arrays), with

    ids        int64 (m,) the engine's ids, in the list's order
    distances  float32 (m, m) every pairwise distance (all within the threshold)
    """

    def __init__(self, items: list[Any], ids: Any, distances: Any) -> None:
        super().__init__(items)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.distances = np.asarray(distances, dtype=np.float32)

    @property
    def max_distance(self) -> float:
        """The largest distance between two members."""
        return float(self.distances.max()) if len(self) else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"items": list(self), "ids": self.ids.tolist(), "distances": self.distances.tolist()}

    def __repr__(self):
        names = ", ".join(os.path.basename(p) if isinstance(p, str) else str(p) for p in self[:4])
        more = f", ... {len(self) - 4} more" if len(self) > 4 else ""
        return f"DuplicateGroup({len(self)} items, max distance {self.max_distance:.4g}: {names}{more})"
