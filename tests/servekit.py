"""What the service tests share: an engine over a generated folder, query images
that are not in it, and the checks every search response must pass."""
import io
import os

import numpy as np
import pytest

from imgfolder import CLASSES, make_folder, make_image


def require_serve():
    """Skip, saying why, when the [serve] extra is not installed (make test installs it)."""
    for name in ("fastapi", "uvicorn", "multipart", "httpx"):
        pytest.importorskip(name, reason=f"the [serve] extra is not installed ({name} missing): "
                                         "pip install 'imgsearch[serve]' httpx, or run make test")


def build_engine(root, rng, per_class=5, index="flat"):
    """(engine, saved path, {path: label}) over root/photos, saved to root/photos.isx;
    each item's metadata is {"label": class, "n": its number in the class}."""
    import imgsearch as isx
    good, labels, _ = make_folder(os.path.join(root, "photos"), rng, per_class=per_class, broken=False)
    engine = isx.ImageSearch(extractor="colorhist", index=index)
    meta = {p: {"label": labels[p], "n": int(os.path.splitext(p)[0].rsplit("_", 1)[1])} for p in good}
    engine.add(good, metadata=meta, progress=False)
    path = os.path.join(root, "photos.isx")
    engine.save(path)
    return engine, path, labels


def query_images(folder, rng, n=3, fmt="PNG"):
    """n new images (one per class, cycling) written to folder: paths, and their bytes."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    names = list(CLASSES)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(make_image(rng, CLASSES[names[i % len(names)]])).save(buf, format=fmt)
        path = os.path.join(folder, f"query_{i}.{fmt.lower()}")
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        out.append((path, buf.getvalue()))
    return out


def check_response(body, k, count):
    """A well-formed search response: min(k, count) hits (count: the items indexed, or
    (fewest, most) while images are being added), ranks 1.., distances non-decreasing."""
    assert set(body) >= {"query", "k", "hits", "took_ms"}, body
    hits = body["hits"]
    lo, hi = count if isinstance(count, tuple) else (count, count)
    assert min(k, lo) <= len(hits) <= min(k, hi), (len(hits), k, count)
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    d = [h["distance"] for h in hits]
    assert all(np.isfinite(d)) and d == sorted(d), d
    for h in hits:
        assert set(h) == {"rank", "id", "path", "distance", "score", "metadata"}
        assert isinstance(h["id"], int) and h["id"] >= 0 and isinstance(h["score"], float)
    assert len({h["id"] for h in hits}) == len(hits), "an id twice in one answer"


def expected(results, q=0):
    """(ids, distances, paths, metadata) of one query of engine.search's SearchResults."""
    ids = [int(i) for i in results.ids[q] if i >= 0]
    n = len(ids)
    return ids, [float(d) for d in results.distances[q][:n]], list(results.paths[q][:n]), list(results.metadata[q][:n])


def assert_same_hits(body, results, q=0):
    """The service's hits are the engine's own answer (ids in order, distances, paths, metadata)."""
    ids, dist, paths, meta = expected(results, q)
    assert [h["id"] for h in body["hits"]] == ids
    np.testing.assert_allclose([h["distance"] for h in body["hits"]], dist, rtol=1e-6, atol=1e-7)
    assert [h["path"] for h in body["hits"]] == paths
    assert [h["metadata"] for h in body["hits"]] == meta
