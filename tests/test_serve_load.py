"""The service under concurrent load on loopback: a real uvicorn server, several
clients searching while another adds images.  Every response must be well formed,
and nothing added may be lost -- from the live engine or from the saved file.

`make soak` runs the same for minutes (IMGSEARCH_SOAK_SECONDS)."""
import os
import threading
import time

import pytest

from servekit import build_engine, check_response, query_images, require_serve

require_serve()

import httpx  # noqa: E402

import imgsearch as isx  # noqa: E402

SEARCHERS = 6


def run_load(tmp_path, rng, seconds=None, searches_each=25, additions=16):
    """Searchers and one adder against a live server; returns what was seen."""
    engine, path, _ = build_engine(str(tmp_path), rng, per_class=5)
    n0 = len(engine)
    queries = [data for _, data in query_images(str(tmp_path / "queries"), rng, n=6)]
    new_images = query_images(str(tmp_path / "new"), rng, n=additions)
    errors, counts, added = [], {"search": 0, "batch": 0, "id": 0}, []
    stop_at = time.monotonic() + seconds if seconds else None

    def searcher(worker):
        with httpx.Client(base_url=handle.url, timeout=30) as client:
            i = 0
            while (i < searches_each) if stop_at is None else (time.monotonic() < stop_at):
                k = 1 + (i * 7 + worker) % 12
                try:
                    kind = ("search", "batch", "id")[i % 3]
                    if kind == "search":
                        r = client.post("/search", files={"image": ("q.png", queries[i % len(queries)])},
                                        data={"k": str(k)})
                    elif kind == "batch":
                        r = client.post("/search/batch", files=[("images", ("a.png", queries[i % 6])),
                                                                ("images", ("b.png", queries[(i + 1) % 6]))],
                                        data={"k": str(k)})
                    else:
                        r = client.post("/search", json={"id": i % n0, "k": k})
                    if r.status_code != 200:
                        raise AssertionError(f"{kind}: {r.status_code} {r.text[:200]}")
                    body = r.json()
                    for res in (body["results"] if kind == "batch" else [body]):
                        # the count only grows during the run
                        check_response(res, k, (n0 - (kind == "id"), n0 + additions))
                    counts[kind] += 1
                except Exception as e:  # noqa: BLE001 - every failure is collected and reported
                    errors.append(f"worker {worker}: {type(e).__name__}: {e}")
                i += 1

    def adder():
        with httpx.Client(base_url=handle.url, timeout=30) as client:
            for j, (_, data) in enumerate(new_images):
                r = client.post("/images", files=[("images", (f"new{j}.png", data))],
                                data={"metadata": f'{{"added": {j}}}'})
                if r.status_code != 201:
                    errors.append(f"adder: {r.status_code} {r.text[:200]}")
                    continue
                added.append(r.json()["added"][0])
                if stop_at is not None and time.monotonic() > stop_at:
                    break

    handle = isx.serve(engine, port=0, index_path=path, allow_add=True, save_delay=0.2)
    try:
        threads = [threading.Thread(target=searcher, args=(w,)) for w in range(SEARCHERS)]
        threads.append(threading.Thread(target=adder))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with httpx.Client(base_url=handle.url, timeout=30) as client:
            # every added image is found by its own bytes, at distance 0, with its metadata
            for a, (_, data) in zip(added, new_images):
                hit = client.post("/search", files={"image": ("q.png", data)}, data={"k": "1"}).json()["hits"][0]
                if (hit["id"], hit["distance"]) != (a["id"], 0.0):
                    errors.append(f"added item {a} not found by its bytes: {hit}")
            count = client.get("/healthz").json()["count"]
    finally:
        handle.stop()
    return engine, path, n0, added, count, counts, errors


def check_nothing_lost(engine, path, n0, added, count, errors):
    assert not errors, f"{len(errors)} failures, first: {errors[:3]}"
    ids = [a["id"] for a in added]
    assert len(set(ids)) == len(ids) and count == n0 + len(ids) == len(engine)
    saved = isx.ImageSearch.load(path)  # the file written on stop holds every addition
    assert len(saved) == n0 + len(ids) and {a["path"] for a in added} <= set(saved.paths)
    for a in added:
        assert saved._meta[a["id"]]["added"] >= 0 and os.path.exists(a["path"])


def test_concurrent_searches_while_adding(tmp_path, rng):
    engine, path, n0, added, count, counts, errors = run_load(tmp_path, rng)
    assert len(added) == 16
    assert sum(counts.values()) == SEARCHERS * 25 and min(counts.values()) > 0
    check_nothing_lost(engine, path, n0, added, count, errors)


SOAK = float(os.environ.get("IMGSEARCH_SOAK_SECONDS", "0"))


@pytest.mark.skipif(not SOAK, reason="a minutes-long soak: make soak (sets IMGSEARCH_SOAK_SECONDS)")
def test_soak(tmp_path, rng):
    engine, path, n0, added, count, counts, errors = run_load(tmp_path, rng, seconds=SOAK, additions=400)
    print(f"soak: {sum(counts.values())} requests in {SOAK:.0f} s, {len(added)} images added")
    check_nothing_lost(engine, path, n0, added, count, errors)


def test_a_killed_server_loses_at_most_the_last_second(tmp_path, rng):
    """`imgsearch serve --allow-add` killed with SIGKILL while images are being added:
    the file on disk always loads, and holds every addition made over a second before."""
    import signal
    import socket
    import subprocess
    import sys
    engine, path, _ = build_engine(str(tmp_path), rng, per_class=3)
    n0 = len(engine)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(isx.__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "imgsearch", "serve", path, "--port", str(port), "--allow-add"],
                            env={**os.environ, "PYTHONPATH": root}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
                time.sleep(0.1)
        images = query_images(str(tmp_path / "new"), rng, n=12)
        settled = []
        with httpx.Client(base_url=url, timeout=30) as client:
            for _, data in images[:6]:
                settled.append(client.post("/images", files=[("images", ("a.png", data))]).json()["added"][0])
            time.sleep(1.6)  # past the 1 s save delay: these six are on disk
            for _, data in images[6:]:  # and these are being added when the kill comes
                client.post("/images", files=[("images", ("b.png", data))])
                saved = isx.ImageSearch.load(path)  # every intermediate file is whole
                assert n0 <= len(saved) <= n0 + 12
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    saved = isx.ImageSearch.load(path)
    assert n0 + 6 <= len(saved) <= n0 + 12
    assert {a["path"] for a in settled} <= set(saved.paths)
