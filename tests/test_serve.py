"""The HTTP service (imgsearch.service) through FastAPI's TestClient, against a real
engine on generated images: every answer is checked against engine.search itself."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from servekit import assert_same_hits, build_engine, check_response, query_images, require_serve

require_serve()

import imgsearch as isx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from imgsearch import image, service  # noqa: E402


@pytest.fixture
def setup(tmp_path, rng):
    engine, path, labels = build_engine(str(tmp_path), rng)
    return engine, path, labels, query_images(str(tmp_path / "queries"), rng, n=3)


def client_for(engine, **options):
    return TestClient(service.create_app(engine, **options))


def upload(client, data, name="q.png", endpoint="/search", **fields):
    return client.post(endpoint, files={"image": (name, data, "application/octet-stream")},
                       data={key: (json.dumps(v) if isinstance(v, (dict, list, bool)) else str(v))
                             for key, v in fields.items()})


def test_search_by_upload_is_the_engines_answer(setup):
    engine, path, labels, queries = setup
    with client_for(engine) as client:
        for qpath, data in queries:
            for k in (1, 4, 50):  # 50: more than the 15 indexed, so every item comes back
                r = upload(client, data, k=k)
                assert r.status_code == 200, r.text
                body = r.json()
                check_response(body, k, len(engine))
                assert body["query"] == "q.png"
                assert_same_hits(body, engine.search(qpath, k=k))
                scores = engine.search(qpath, k=k).scores[0][:len(body["hits"])]
                np.testing.assert_allclose([h["score"] for h in body["hits"]], scores, rtol=1e-6)
        # JPEG uploads decode with the same C decoder as files
        from PIL import Image
        jpg = query_images(os.path.dirname(queries[0][0]) + "_jpg", np.random.default_rng(7), n=1, fmt="JPEG")[0]
        assert_same_hits(upload(client, jpg[1], name="q.jpg", k=5).json(), engine.search(jpg[0], k=5))
        assert Image.open(jpg[0]).format == "JPEG"


def test_search_by_id_and_by_vector(setup):
    engine, *_ = setup
    with client_for(engine) as client:
        for item in (0, 7, 14):
            vec = engine.index.get(np.asarray([item]))
            allk = engine.search_vectors(vec, k=len(engine))
            r = client.post("/search", json={"id": item, "k": 4})
            body = r.json()
            check_response(body, 4, len(engine))
            # an id query leaves the item itself out by default
            ids = [int(i) for i in allk.ids[0] if i != item][:4]
            assert [h["id"] for h in body["hits"]] == ids and body["query"] == f"id {item}"
            r = client.post("/search", json={"id": item, "k": 4, "exclude_self": False})
            assert_same_hits(r.json(), engine.search_vectors(vec, k=4))
            assert r.json()["hits"][0]["id"] == item and r.json()["hits"][0]["distance"] == 0.0
            r = client.post("/search", json={"vector": vec[0].tolist(), "k": 6})
            assert_same_hits(r.json(), engine.search_vectors(vec, k=6))
            r = client.post("/search", json={"vector": vec[0].tolist(), "k": 6, "exclude_self": True})
            assert item not in [h["id"] for h in r.json()["hits"]] and len(r.json()["hits"]) == 6


def test_exclude_self_for_an_upload_of_an_indexed_image(setup):
    engine, path, labels, _ = setup
    first = sorted(labels)[0]
    data = open(first, "rb").read()
    own = engine._by_path[os.path.abspath(first)]
    with client_for(engine) as client:
        hits = upload(client, data, k=3).json()["hits"]
        assert hits[0]["id"] == own and hits[0]["distance"] == 0.0
        hits = upload(client, data, k=3, exclude_self=True).json()["hits"]
        assert own not in [h["id"] for h in hits] and len(hits) == 3


def test_filter_by_metadata_fields(setup):
    engine, path, labels, queries = setup
    qpath, data = queries[0]
    with client_for(engine) as client:
        for flt in ({"label": "red"}, {"label": ["red", "blue"]}, {"label": "green", "n": [0, 1, 2]}):
            def keep(_p, m, flt=flt):
                return all(m[key] in (v if isinstance(v, list) else [v]) for key, v in flt.items())
            want = engine.search(qpath, k=10, filter=keep)
            body = upload(client, data, k=10, filter=flt).json()
            assert_same_hits(body, want)
            assert all(keep(None, h["metadata"]) for h in body["hits"]) and body["hits"]
            body = client.post("/search", json={"id": 0, "k": 10, "filter": flt, "exclude_self": False}).json()
            assert_same_hits(body, engine.search_vectors(engine.index.get(np.asarray([0])), k=10, filter=keep))
        # a field no item has: a valid query with no hits
        r = client.post("/search", json={"id": 0, "filter": {"colour": "red"}})
        assert r.status_code == 200 and r.json()["hits"] == []


def test_batch_search(setup):
    engine, path, labels, queries = setup
    with client_for(engine) as client:
        r = client.post("/search/batch", files=[("images", (f"q{i}.png", d)) for i, (_, d) in enumerate(queries)],
                        data={"k": "5"})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["query"] for x in results] == ["q0.png", "q1.png", "q2.png"]
        for (qpath, _), body in zip(queries, results):
            check_response(body, 5, len(engine))
            assert_same_hits(body, engine.search(qpath, k=5))
        r = client.post("/search/batch", json={"queries": [{"id": 3}, {"vector": engine.index.get(
            np.asarray([5]))[0].tolist()}], "k": 3, "exclude_self": False})
        a, b = r.json()["results"]
        assert_same_hits(a, engine.search_vectors(engine.index.get(np.asarray([3])), k=3))
        assert_same_hits(b, engine.search_vectors(engine.index.get(np.asarray([5])), k=3))
        # one bad image names itself, and nothing is answered for the others
        r = client.post("/search/batch", files=[("images", ("ok.png", queries[0][1])),
                                                ("images", ("bad.png", b"not an image"))])
        assert r.status_code == 422 and r.json()["error"].startswith("bad.png: not a usable image")


def _bad_requests(queries):
    good = queries[0][1]
    return [
        # (what, request kwargs, status, words the message must contain)
        ("text body", dict(url="/search", content=b"hi", headers={"content-type": "text/plain"}), 415,
         "multipart/form-data"),
        ("no content type", dict(url="/search", content=b"hi"), 415, "no content type"),
        ("malformed JSON", dict(url="/search", content=b"{", headers={"content-type": "application/json"}), 422,
         "invalid JSON"),
        ("neither vector nor id", dict(url="/search", json={"k": 3}), 422, "exactly one of"),
        ("vector and id", dict(url="/search", json={"id": 1, "vector": [0.0] * 128}), 422, "both"),
        ("vector of wrong length", dict(url="/search", json={"vector": [1, 2, 3]}), 422, "expected 128 numbers"),
        ("vector with NaN", dict(url="/search", content=b'{"vector": [NaN' + b", 0" * 127 + b"]}",
                                 headers={"content-type": "application/json"}), 422, "finite"),
        ("vector of strings", dict(url="/search", json={"vector": ["a"] * 128}), 422, "vector"),
        ("unknown JSON field", dict(url="/search", json={"id": 1, "colour": 2}), 422, "colour"),
        ("k = 0", dict(url="/search", json={"id": 1, "k": 0}), 422, "k"),
        ("k too large", dict(url="/search", json={"id": 1, "k": 5000}), 422, "k"),
        ("unknown id", dict(url="/search", json={"id": 999}), 404, "id 999 is not in the index"),
        ("negative id", dict(url="/search", json={"id": -1}), 404, "not in the index"),
        ("huge id", dict(url="/search", json={"id": 2 ** 70}), 404, "not in the index"),
        ("no file", dict(url="/search", files={"k": (None, "3")}), 422, "expected an image file"),
        ("k not a number", dict(url="/search", files={"image": ("q.png", good)}, data={"k": "ten"}), 422,
         "k: expected an integer"),
        ("k as a file", dict(url="/search", files={"image": ("q.png", good), "k": ("k.txt", b"3")}), 422,
         "k: expected a text field"),
        ("filter not JSON", dict(url="/search", files={"image": ("q.png", good)}, data={"filter": "{"}), 422,
         "filter: expected a JSON object"),
        ("filter a list", dict(url="/search", files={"image": ("q.png", good)}, data={"filter": "[1]"}), 422,
         "found list"),
        ("exclude_self not a bool", dict(url="/search", files={"image": ("q.png", good)},
                                         data={"exclude_self": "maybe"}), 422, "true or false"),
        ("unknown form field", dict(url="/search", files={"image": ("q.png", good)}, data={"colour": "1"}), 422,
         "unknown form fields"),
        ("two images to /search", dict(url="/search", files=[("image", ("a.png", good)), ("image", ("b.png", good))]),
         422, "use /search/batch"),
        ("not an image", dict(url="/search", files={"image": ("q.png", b"hello, world")}), 422,
         "q.png: not a usable image: not a recognised image format"),
        ("a GIF header that lies", dict(url="/search", files={"image": ("q.gif", b"GIF89a not really")}), 413,
         "its header declares 28192 x 29807 pixels"),
        ("truncated image", dict(url="/search", files={"image": ("q.png", good[: len(good) // 2])}), 422,
         "q.png: not a usable image"),
        ("empty upload", dict(url="/search", files={"image": ("q.png", b"")}), 422, "empty"),
        ("broken multipart", dict(url="/search", content=b"--x\r\nnonsense",
                                  headers={"content-type": "multipart/form-data; boundary=x"}), 422,
         "expected an image file"),
        ("multipart without boundary", dict(url="/search", content=b"abc",
                                            headers={"content-type": "multipart/form-data"}), 400, "multipart"),
        ("empty batch", dict(url="/search/batch", json={"queries": []}), 422, "queries"),
        ("add on a read-only server", dict(url="/images", files={"images": ("a.png", good)}), 403, "--allow-add"),
    ]


def test_bad_requests_get_json_4xx_with_a_clear_message(setup):
    engine, path, labels, queries = setup
    with client_for(engine) as client:
        for what, kwargs, status, words in _bad_requests(queries):
            r = client.post(**kwargs)
            assert r.status_code == status, (what, r.status_code, r.text)
            assert r.headers["content-type"] == "application/json", what
            body = r.json()
            assert body["status"] == status and words in body["error"], (what, body)
            assert "Traceback" not in r.text
        for method, url, status in (("DELETE", "/images/1", 403), ("GET", "/images/abc", 422),
                                    ("GET", "/images/1/thumbnail?size=999", 422), ("GET", "/nowhere", 404),
                                    ("PUT", "/search", 405), ("GET", "/static/../service.py", 404),
                                    ("GET", "/images/12345", 404), ("GET", "/images/12345/thumbnail", 404)):
            r = client.request(method, url)
            assert r.status_code == status and r.json()["status"] == status and r.json()["error"], (url, r.text)


def test_upload_limits(setup):
    engine, path, labels, queries = setup
    data = queries[0][1]
    with client_for(engine, max_upload_bytes=len(data) - 1) as client:
        r = upload(client, data)
        assert r.status_code == 413 and f"{len(data)} bytes, above this server's limit" in r.json()["error"]
        # the whole request is refused from its declared length, before it is read
        r = client.post("/search", content=b"x" * 10, headers={"content-type": "application/json",
                                                                "content-length": str(10 ** 9)})
        assert r.status_code == 413 and "request body" in r.json()["error"]
    with client_for(engine, max_megapixels=0.002) as client:  # 64 x 48 = 3072 pixels > 2000
        r = upload(client, data)
        assert r.status_code == 413 and "64 x 48 pixels" in r.json()["error"]
    with client_for(engine, max_megapixels=0.004) as client:
        assert upload(client, data).status_code == 200


def test_add_and_remove_are_saved(setup, tmp_path, rng):
    engine, path, labels, queries = setup
    n0 = len(engine)
    with client_for(engine, index_path=path, allow_add=True, save_delay=0.1) as client:
        files = [("images", (f"new{i}.png", d)) for i, (_, d) in enumerate(queries[:2])]
        r = client.post("/images", files=files, data={"metadata": json.dumps([{"label": "a"}, {"label": "b"}])})
        assert r.status_code == 201, r.text
        added = r.json()["added"]
        assert r.json()["count"] == n0 + 2 and [a["updated"] for a in added] == [False, False]
        stored = [a["path"] for a in added]
        assert all(os.path.dirname(p) == str(tmp_path / "photos.uploads") for p in stored)
        assert [open(p, "rb").read() for p in stored] == [d for _, d in queries[:2]]
        # searching by the uploaded bytes finds the new item, with its metadata
        body = upload(client, queries[1][1], k=1).json()
        assert body["hits"][0]["id"] == added[1]["id"] and body["hits"][0]["metadata"] == {"label": "b"}
        # the same image again: the same entry (named by content), not a copy
        r = client.post("/images", files=[("images", ("again.png", queries[0][1]))])
        assert r.json()["added"][0] == {**added[0], "updated": True} and r.json()["count"] == n0 + 2
        assert client.post("/images", files=[("images", ("x.png", b"junk"))]).status_code == 422
        assert client.post("/images", files=[("images", ("x.png", queries[2][1]))],
                           data={"metadata": "[1, 2]"}).status_code == 422
        deadline = time.monotonic() + 5
        while isx.ImageSearch.load(path).__len__() != n0 + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        saved = isx.ImageSearch.load(path)
        assert len(saved) == n0 + 2 and set(stored) <= set(saved.paths)
        # remove: gone from the engine, the uploaded file deleted, saved
        r = client.delete(f"/images/{added[0]['id']}")
        assert r.status_code == 200 and r.json() == {"removed": added[0]["id"], "count": n0 + 1}
        assert not os.path.exists(stored[0]) and client.delete(f"/images/{added[0]['id']}").status_code == 404
        # an indexed original is removed from the index, never from the disk
        original = engine.paths[0]
        assert client.delete("/images/0").status_code == 200 and os.path.exists(original)
    # leaving the client ran the app's shutdown: the pending save is written
    saved = isx.ImageSearch.load(path)
    assert len(saved) == n0 and stored[0] not in saved.paths and original not in saved.paths
    assert saved.search(queries[1][0], k=1).ids[0, 0] == added[1]["id"]


def test_originals_only_from_the_indexed_folders(setup, tmp_path):
    engine, path, labels, queries = setup
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(queries[0][1])
    # the engine stores real paths, so a symlink added as such is its target's
    # file; what must not be served is a file swapped for a link after indexing
    link = tmp_path / "photos" / "red" / "link.png"
    link.write_bytes(queries[0][1])
    link_id = engine.add([str(link)], progress=False).ids[0]
    link.unlink()
    os.symlink(secret, link)
    array_id = engine.add(np.zeros((8, 8, 3), np.uint8), progress=False).ids[0]
    with client_for(engine) as client:
        for p in sorted(labels)[:3]:
            i = engine._by_path[p]
            r = client.get(f"/images/{i}")
            assert r.status_code == 200 and r.content == open(p, "rb").read()
            assert r.headers["content-type"] == "image/png" and r.headers["x-content-type-options"] == "nosniff"
        r = client.get(f"/images/{link_id}")
        assert r.status_code == 403 and "outside the indexed folders" in r.json()["error"]
        assert client.get(f"/images/{link_id}/thumbnail").status_code == 403
        assert client.get(f"/images/{array_id}").status_code == 404
        os.unlink(sorted(labels)[0])
        r = client.get(f"/images/{engine._by_path[sorted(labels)[0]]}")
        assert r.status_code == 404 and "no longer there" in r.json()["error"]
    # roots given explicitly: only those
    with client_for(engine, roots=[str(tmp_path / "photos" / "blue")]) as client:
        blue = [p for p in sorted(labels) if labels[p] == "blue"][1]  # [0] was deleted above
        red = [p for p in sorted(labels) if labels[p] == "red"][1]
        assert client.get(f"/images/{engine._by_path[blue]}").status_code == 200
        assert client.get(f"/images/{engine._by_path[red]}").status_code == 403


def test_thumbnails_come_from_the_c_encoder_and_are_cached(setup):
    from PIL import Image
    import io
    engine, path, labels, queries = setup
    p = sorted(labels)[2]
    i = engine._by_path[p]
    with client_for(engine) as client:
        r = client.get(f"/images/{i}/thumbnail?size=64")
        assert r.status_code == 200 and r.headers["content-type"] == image.THUMBNAIL_MIME[image.THUMBNAIL_FORMAT]
        assert r.content == image.thumbnail(p, max_side=64)
        assert Image.open(io.BytesIO(r.content)).size == (64, 48)
        calls = []
        real = image.thumbnail
        try:
            image.thumbnail = lambda *a, **kw: calls.append(a) or real(*a, **kw)
            assert client.get(f"/images/{i}/thumbnail?size=64").content == r.content
            assert calls == []  # served from the cache
            os.utime(p, ns=(time.time_ns(), time.time_ns() + 10 ** 9))  # the file changed: made again
            assert client.get(f"/images/{i}/thumbnail?size=64").status_code == 200 and len(calls) == 1
        finally:
            image.thumbnail = real


def test_token(setup):
    engine, *_ = setup
    with client_for(engine, token="s3cret") as client:
        r = client.get("/info")
        assert r.status_code == 401 and "Bearer" in r.json()["error"]
        assert client.get("/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/info", headers={"Authorization": "Bearer s3cret"}).json()["auth"] is True
        assert client.get("/images/0/thumbnail?token=s3cret").status_code == 200
        assert client.post("/search", json={"id": 0}).status_code == 401
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200
        assert client.get("/static/app.js").status_code == 200
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        with pytest.raises(ValueError, match="a token is required"):
            isx.serve(engine, host=host, port=0)
    service.check_host("127.0.0.1", None)
    service.check_host("::1", None)
    service.check_host("localhost", None)


def test_info_healthz_and_the_openapi_schema(setup):
    engine, *_ = setup
    with client_for(engine) as client:
        info = client.get("/info").json()
        assert info["count"] == len(engine) and info["dim"] == 128 and info["extractor"]["name"] == "colorhist"
        assert info["allow_add"] is False and info["max_k"] == service.MAX_K
        assert client.get("/healthz").json() == {"status": "ok", "count": len(engine)}
        schema = client.get("/openapi.json").json()
        ops = {(p, m) for p, methods in schema["paths"].items() for m in methods}
        assert ops == {("/search", "post"), ("/search/batch", "post"), ("/images", "post"),
                       ("/images/{item_id}", "delete"), ("/images/{item_id}", "get"),
                       ("/images/{item_id}/thumbnail", "get"), ("/info", "get"), ("/healthz", "get")}
        body = schema["paths"]["/search"]["post"]["requestBody"]["content"]
        assert set(body) == {"multipart/form-data", "application/json"}
        hit = schema["components"]["schemas"]["Hit"]["properties"]
        assert set(hit) == {"rank", "id", "path", "distance", "score", "metadata"}
        assert "422" in schema["paths"]["/search"]["post"]["responses"]
        page = client.get("/")
        assert page.headers["content-type"].startswith("text/html") and 'id="query-file"' in page.text
        assert "http" not in client.get("/static/app.js").text.replace("http://", "")  # nothing fetched elsewhere


def test_serve_in_a_background_thread(setup):
    import httpx
    engine, path, labels, queries = setup
    handle = isx.serve(engine, port=0)
    try:
        assert handle.url.startswith("http://127.0.0.1:")
        r = httpx.post(handle.url + "/search", files={"image": ("q.png", queries[0][1])}, data={"k": "3"})
        assert_same_hits(r.json(), engine.search(queries[0][0], k=3))
    finally:
        handle.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(handle.url + "/healthz")
    # a saved engine by path, as the command line serves it
    with isx.serve(path, port=0) as handle:
        assert httpx.get(handle.url + "/healthz").json()["count"] == len(engine)


def test_the_core_does_not_import_the_service():
    code = ("import sys, imgsearch, imgsearch.cli; imgsearch.cli.build_parser()\n"
            "bad = [m for m in ('fastapi', 'uvicorn', 'starlette', 'pydantic', 'imgsearch.service') "
            "if m in sys.modules]\n"
            "assert not bad, bad\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(isx.__file__)))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": root})
    assert p.returncode == 0, p.stderr
