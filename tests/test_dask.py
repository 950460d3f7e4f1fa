"""imgsearch.dask on a LocalCluster of two worker processes that the tests start
themselves.  Oracles: the single-process engine (ImageSearch.add), one FlatIndex
or HNSWIndex over the union, NumPy brute force."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="the [dask] extra is not installed: pip install 'imgsearch[dask]'")
da = pytest.importorskip("dask.array", reason="the [dask] extra is not installed: pip install 'imgsearch[dask]'")
db = pytest.importorskip("dask.bag", reason="the [dask] extra is not installed: pip install 'imgsearch[dask]'")
pytest.importorskip("PIL", reason="the generated image folders are written with Pillow")

import imgsearch as isx
from imgsearch import features
from imgfolder import make_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with distributed.Client(cluster) as c:
        c.wait_for_workers(2)
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dask_imgs"))
    good, labels, bad = make_folder(root, np.random.default_rng(7), per_class=10)
    return root, good, bad


def single_process(source, index="flat", **kw):
    engine = isx.ImageSearch(extractor="colorhist", index=index, **kw)
    report = engine.add(source, progress=False)
    return engine, report


def test_dask_is_imported_only_when_imgsearch_dask_runs_something():
    code = ("import sys, imgsearch; seen = lambda: [m for m in ('dask', 'distributed') if m in sys.modules]; "
            "a = seen(); imgsearch.dask.ShardedIndex; b = seen(); imgsearch.dask._distributed(); print(a, b, seen())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] [] ['dask', 'distributed']"


# -- embed ----------------------------------------------------------------------------------
def test_embed_equals_the_single_process_engine_and_reports_every_bad_file(client, folder):
    root, good, bad = folder
    engine, report = single_process(root)
    emb = isx.dask.embed(root, batch_size=4, progress=False)
    assert emb.vectors.numblocks[0] == -(-(len(good) + len(bad)) // 4)  # one chunk per batch of files
    assert emb.paths == engine.paths and len(emb) == len(good)
    np.testing.assert_array_equal(emb.ids, np.arange(len(good)))
    np.testing.assert_array_equal(emb.compute(), engine.index.get(np.arange(len(engine))))
    assert sorted(emb.failed) == sorted(report.failed) and len(emb.failed) == len(bad) == 2
    assert {p for p, _ in emb.failed} == {isx.engine.canonical_path(p) for p in bad}
    assert emb.extractor == engine.extractor.config() and emb.metric == "l2" and emb.dim == 128


def test_each_worker_builds_the_extractor_once(client, folder):
    root, good, bad = folder
    params = {"bins": [6, 3, 3]}  # a recipe no other test uses: no worker has it cached yet
    emb = isx.dask.embed(good, extractor_params=params, batch_size=3, progress=False)
    assert emb.vectors.numblocks[0] == 10
    assert 1 <= emb.builds <= 2  # once per worker process, not once per batch
    again = isx.dask.embed(good, extractor_params=params, batch_size=3, progress=False)
    assert again.builds == 0  # kept by the workers for later calls
    np.testing.assert_array_equal(again.compute(), features.get_extractor("colorhist", bins=(6, 3, 3)).extract(good))


def test_a_torchscript_model_is_built_by_each_worker_from_its_file(client, folder, tmp_path):
    torch = pytest.importorskip("torch", reason="the [torch] extra is not installed")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2))
    path = str(tmp_path / "tiny.ts.pt")
    torch.jit.script(net).save(path)
    params = {"size": 48, "resize": 56, "mean": 0.5, "std": 0.5, "batch_size": 8}
    root, good, bad = folder
    engine = isx.ImageSearch(extractor=path, index="flat", extractor_params=params)
    report = engine.add(root, progress=False)
    emb = isx.dask.embed(root, extractor=path, extractor_params=params, batch_size=8, progress=False)
    assert emb.paths == engine.paths and sorted(emb.failed) == sorted(report.failed)
    np.testing.assert_allclose(emb.compute(), engine.index.get(np.arange(len(engine))), atol=1e-5)
    assert emb.metric == "cosine" and emb.dim == 16 and emb.extractor["source"] == {"torchscript": path}
    assert 1 <= emb.builds <= 2


def test_an_extractor_object_that_cannot_be_pickled_is_refused_with_what_to_pass(client, folder):
    class Unpicklable(features.ColorHistogram):
        def __reduce__(self):
            raise TypeError("no pickling here")

    with pytest.raises(TypeError, match="cannot be sent to the workers.*registered name or TorchScript path"):
        isx.dask.embed(folder[1], extractor=Unpicklable())


def test_embed_takes_a_bag_whose_partitions_are_the_batches(client, folder):
    root, good, bad = folder
    engine, report = single_process(good + bad)
    bag = db.from_sequence(good + bad + good[:3], npartitions=5)  # a file named twice is one entry
    emb = isx.dask.embed(bag, progress=False)
    assert emb.vectors.numblocks[0] == 5
    assert emb.paths == engine.paths
    np.testing.assert_array_equal(emb.compute(), engine.index.get(np.arange(len(engine))))
    assert sorted(emb.failed) == sorted(report.failed)


def test_embed_shows_dasks_progress_bar(client, folder, capsys):
    isx.dask.embed(folder[1], progress=True)
    assert "100% Completed" in capsys.readouterr().out


def test_embed_refuses_what_it_cannot_distribute(client, folder, tmp_path):
    with pytest.raises(ValueError, match=r"Expected batch_size > 0 \(an int\). Got 0"):
        isx.dask.embed(folder[1], batch_size=0)
    with pytest.raises(TypeError, match="expected file paths.*found a ndarray item"):
        isx.dask.embed([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(TypeError, match="extractor: expected a registered name"):
        isx.dask.embed(folder[1], extractor=42)
    with pytest.raises(ValueError, match="no image files"):
        isx.dask.embed(str(tmp_path))


# -- ShardedIndex ---------------------------------------------------------------------------
def vectors_with_ties(rng, metric, n=3000, dim=24):
    """Rows for the metric (packed bits for hamming, dim 8 * 24), with exact copies:
    equal distances, which the merge ranks by id."""
    if metric == "hamming":
        X = rng.integers(0, 256, size=(n, dim), dtype=np.uint8)
        Q = rng.integers(0, 256, size=(20, dim), dtype=np.uint8)
    else:
        X = rng.normal(size=(n, dim)).astype(np.float32)
        Q = rng.normal(size=(20, dim)).astype(np.float32)
    X[1::7] = X[::7][: len(X[1::7])]
    return X, np.concatenate([X[:20], Q])


@pytest.mark.parametrize("metric", ["l2", "cosine", "hamming"])
def test_sharded_flat_search_equals_one_flat_index_over_the_union(client, metric):
    rng = np.random.default_rng(1)
    X, Q = vectors_with_ties(rng, metric)
    dim = X.shape[1] * 8 if metric == "hamming" else X.shape[1]
    ref = isx.FlatIndex(dim, metric=metric)
    ref.add(X)
    allowed = rng.choice(len(X), size=700, replace=False)
    for source in (X, da.from_array(X, chunks=400)):  # NumPy rows, and a dask array's chunks
        sharded = isx.dask.ShardedIndex(kind="flat", shards=3, dim=dim, metric=metric).add(source)
        assert len(sharded) == len(X) and sum(s["count"] for s in sharded.shard_info()) == len(X)
        assert min(s["count"] for s in sharded.shard_info()) > 0
        for params in ({}, {"filter": allowed}):
            D, I = sharded.search(Q, k=10, **params)
            D0, I0 = ref.search(Q, k=10, **params)
            np.testing.assert_array_equal(I, I0)
            np.testing.assert_array_equal(D, D0)
        first = [i - 1 if i % 7 == 1 else i for i in range(20)]  # itself, or its lower-id copy (a tie)
        assert sharded.search(Q, k=10)[1][:20, 0].tolist() == first
        sharded.close()


def test_merge_topk_ranks_by_distance_then_id_with_padding_last():
    rng = np.random.default_rng(8)
    parts = []
    for s in range(3):
        D = np.sort(rng.integers(0, 4, size=(6, 5)).astype(np.float32), axis=1)  # many ties
        I = rng.permutation(np.arange(100 * s, 100 * s + 30))[:30].reshape(6, 5).astype(np.int64)
        D[:, 4 - s:] = np.inf  # shard s pads its last s + 1 columns
        I[:, 4 - s:] = -1
        parts.append((D, I))
    D, I = isx.dask.merge_topk(parts, k=12)
    for q in range(6):
        pairs = [(d, i < 0, i) for Dp, Ip in parts for d, i in zip(Dp[q].tolist(), Ip[q].tolist())]
        best = sorted(pairs)[:12]
        assert D[q].tolist() == [p[0] for p in best] and I[q].tolist() == [p[2] for p in best]


def test_fewer_vectors_than_k_pad_as_one_index_does(client):
    X = np.random.default_rng(2).normal(size=(5, 8)).astype(np.float32)
    sharded = isx.dask.ShardedIndex.from_array(X, kind="flat", shards=3)
    ref = isx.FlatIndex.from_array(X)
    D, I = sharded.search(X[:2], k=8)
    D0, I0 = ref.search(X[:2], k=8)
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_array_equal(D, D0)
    assert (I[:, 5:] == -1).all() and np.isinf(D[:, 5:]).all()


def recall(I, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(I.tolist(), truth.tolist())])


def test_sharded_hnsw_recall_is_at_least_one_hnsw_index_at_the_same_ef(client):
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(20, 32)) * 3
    X = (centres[rng.integers(0, 20, 6000)] + rng.normal(size=(6000, 32))).astype(np.float32)
    Q = (centres[rng.integers(0, 20, 200)] + rng.normal(size=(200, 32))).astype(np.float32)
    d = ((Q[:, None, :].astype(np.float64) - X[None, :, :]) ** 2).sum(-1)
    truth = np.argsort(d, axis=1, kind="stable")[:, :10]
    params = dict(M=8, ef_construction=40, seed=0)
    one = isx.HNSWIndex(32, metric="l2", **params)
    one.add(X, threads=1)
    sharded = isx.dask.ShardedIndex.from_array(da.from_array(X, chunks=1500), kind="hnsw", shards=2, **params)
    for ef in (10, 40):
        r_one = recall(one.search(Q, k=10, ef=ef)[1], truth)
        r_sharded = recall(sharded.search(Q, k=10, ef=ef)[1], truth)
        assert r_sharded >= r_one - 0.005, (ef, r_sharded, r_one)
    assert r_one > 0.9  # a real index at ef=40, not a degenerate one
    sharded.close()


def test_add_remove_and_replace_match_one_flat_index(client):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(900, 16)).astype(np.float32)
    ref = isx.FlatIndex(16)
    sharded = isx.dask.ShardedIndex(kind="flat", shards=2, dim=16)
    ref.add(X[:600])
    sharded.add(X[:600])
    ids = np.arange(600, 900) * 2  # given ids, with gaps
    ref.add(X[600:], ids=ids)
    sharded.add(da.from_array(X[600:], chunks=100), ids=ids)
    assert ref.remove([3, 5, 1200, 99999]) == sharded.remove([3, 5, 1200, 99999]) == 3
    new = rng.normal(size=(4, 16)).astype(np.float32)
    ref.add(new, ids=[7, 8, 1202, 5000])  # 7, 8, 1202 exist: replaced, wherever they were
    sharded.add(new, ids=[7, 8, 1202, 5000])
    np.testing.assert_array_equal(sharded.ids, np.sort(ref.ids))
    assert len(sharded) == len(ref) == 900 - 3 + 1
    np.testing.assert_array_equal(sharded.get([8, 5000, 0]), ref.get([8, 5000, 0]))
    sharded.add(rng.normal(size=(3, 16)).astype(np.float32))  # default ids: after the largest
    assert sharded.ids[-3:].tolist() == [5001, 5002, 5003]
    Q = rng.normal(size=(30, 16)).astype(np.float32)
    ref.add(sharded.get([5001, 5002, 5003]), ids=[5001, 5002, 5003])
    for a, b in zip(sharded.search(Q, k=7), ref.search(Q, k=7)):
        np.testing.assert_array_equal(a, b)


def test_save_and_load_write_a_manifest_and_one_valid_index_file_per_shard(client, tmp_path):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1000, 16)).astype(np.float32)
    sharded = isx.dask.ShardedIndex.from_array(X, kind="hnsw", shards=3, M=8, ef_construction=40, seed=0)
    Q = X[:25]
    D0, I0 = sharded.search(Q, k=5, ef=32)
    out = tmp_path / "shards"
    sharded.save(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "imgsearch.sharded/1" and manifest["kind"] == "hnsw" and manifest["count"] == 1000
    files = [e["file"] for e in manifest["shards"]]
    assert sorted(os.listdir(out)) == sorted(files + ["manifest.json"])  # no temporary file left
    held = [isx.load(str(out / f)) for f in files]  # each a valid index file of its own
    assert all(isinstance(h, isx.HNSWIndex) and h.dim == 16 for h in held)
    np.testing.assert_array_equal(np.sort(np.concatenate([h.ids for h in held])), np.arange(1000))
    assert [len(h) for h in held] == [e["count"] for e in manifest["shards"]]
    back = isx.dask.ShardedIndex.load(out)
    assert len(back) == 1000 and back.kind == "hnsw" and back.shards == 3
    for a, b in zip(back.search(Q, k=5, ef=32), (D0, I0)):
        np.testing.assert_array_equal(a, b)
    back.add(X[:10])  # ids go on after the saved ones
    assert back.ids[-1] == 1009
    back.save(out)  # a second save replaces the first generation
    assert sorted(os.listdir(out)) == sorted([e["file"] for e in json.loads((out / "manifest.json").read_text())["shards"]]
                                             + ["manifest.json"])
    assert not set(files) & set(os.listdir(out))
    sharded.close()
    back.close()


def test_load_refuses_a_broken_folder(client, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        isx.dask.ShardedIndex.load(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(isx.IndexFormatError, match="expected a manifest of format 'imgsearch.sharded/1'"):
        isx.dask.ShardedIndex.load(tmp_path)
    sharded = isx.dask.ShardedIndex.from_array(np.eye(4, dtype=np.float32), kind="flat", shards=2)
    sharded.save(tmp_path / "ok")
    m = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    def load_with(**change):
        (tmp_path / "ok" / "manifest.json").write_text(json.dumps(dict(m, **change)))
        return isx.dask.ShardedIndex.load(tmp_path / "ok")

    with pytest.raises(isx.IndexFormatError, match="expected kind one of \\['flat', 'hnsw'\\], found 'ivfpq'"):
        load_with(kind="ivfpq")
    outside = [dict(m["shards"][0], file="../elsewhere.isx")] + m["shards"][1:]
    with pytest.raises(isx.IndexFormatError, match="'../elsewhere.isx' is not a plain file name in the folder"):
        load_with(shards=outside)
    wrong_count = [dict(m["shards"][0], count=m["shards"][0]["count"] + 1)] + m["shards"][1:]
    with pytest.raises(isx.IndexFormatError, match="expected a FlatIndex of 3 vectors.*found a FlatIndex of 2"):
        load_with(shards=wrong_count)
    assert len(load_with()) == 4  # the manifest as saved loads


def test_sharded_index_refuses_bad_input_saying_what_was_expected(client):
    with pytest.raises(ValueError, match="kind: expected one of \\['flat', 'hnsw'\\], found 'ivfpq'.*no IVF-PQ shards"):
        isx.dask.ShardedIndex(kind="ivfpq", dim=8)
    with pytest.raises(ValueError, match="Expected dim > 0"):
        isx.dask.ShardedIndex(kind="flat")
    with pytest.raises(ValueError, match="Expected shards > 0"):
        isx.dask.ShardedIndex(kind="flat", dim=8, shards=0)
    sharded = isx.dask.ShardedIndex(kind="flat", dim=8, shards=2)
    with pytest.raises(ValueError, match=r"X: expected shape \(n, 8\), found \(3, 5\)"):
        sharded.add(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="id 4 is given more than once"):
        sharded.add(np.zeros((3, 8), np.float32), ids=[4, 1, 4])
    with pytest.raises(ValueError, match="expected ids >= 0, found -2 at position 1"):
        sharded.add(np.zeros((2, 8), np.float32), ids=[4, -2])
    with pytest.raises(ValueError, match=r"ids: expected integers, found float64 array of shape \(1,\)"):
        sharded.remove([1.5])
    for _ in range(3):  # equal halves bound for the two shards: the shard's own check, raised here each time
        with pytest.raises(ValueError, match="NaN"):
            sharded.add(np.full((2, 8), np.nan, np.float32))
    sharded.add(np.ones((4, 8), np.float32))  # equal halves are two pieces of data, one per shard
    assert [s["count"] for s in sharded.shard_info()] == [2, 2] and sharded.ids.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"Q: expected queries of shape \(nq, 8\), found \(2, 3\)"):
        sharded.search(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="Expected k > 0"):
        sharded.search(np.zeros(8, np.float32), k=0)
    sharded.close()


# -- ImageSearch.from_dask ------------------------------------------------------------------
def test_from_dask_builds_the_engine_add_builds_and_saves_it_as_one_file(client, folder, tmp_path):
    root, good, bad = folder
    engine, _ = single_process(root)
    emb = isx.dask.embed(root, batch_size=8, progress=False)
    built = isx.ImageSearch.from_dask(emb, index="flat")
    assert built.paths == engine.paths and len(built) == len(engine)
    queries = good[::5]
    for a, b in zip(built.search(queries, k=6), engine.search(queries, k=6)):
        np.testing.assert_array_equal(a, b)
    built.save(tmp_path / "one.isx")
    back = isx.ImageSearch.load(tmp_path / "one.isx")
    assert back.paths == engine.paths and back.extractor.config() == engine.extractor.config()
    np.testing.assert_array_equal(back.search(queries, k=6).ids, engine.search(queries, k=6).ids)
    bare = isx.ImageSearch.from_dask(emb.vectors, paths=emb.paths, extractor=emb.extractor, index="hnsw", seed=0)
    assert bare.paths == engine.paths and bare.index_kind == "hnsw"
    with pytest.raises(ValueError, match="extractor=: expected the extractor"):
        isx.ImageSearch.from_dask(emb.vectors)


# -- killed workers ---------------------------------------------------------------------------
def test_a_shard_whose_worker_died_is_reported_lost_and_its_save_restores_it(client, tmp_path):
    X = np.random.default_rng(6).normal(size=(400, 8)).astype(np.float32)
    sharded = isx.dask.ShardedIndex.from_array(X, kind="flat", shards=2)
    before = sharded.search(X[:10], k=5)
    sharded.save(tmp_path / "s")
    victim = sharded.shard_info()[1]["worker"]
    os.kill(client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=f"shard 1 was held by worker {victim}, which has left the cluster.*"
                                           r"ShardedIndex.load"):
        sharded.search(X[:10], k=5)  # raised, not a task waiting forever for a worker that is gone
    assert time.monotonic() - t0 < 15
    client.wait_for_workers(2, timeout=60)  # the nanny brought a new worker up
    back = isx.dask.ShardedIndex.load(tmp_path / "s")
    for a, b in zip(back.search(X[:10], k=5), before):
        np.testing.assert_array_equal(a, b)
    back.close()


# -- a worker killed during extraction -------------------------------------------------------
class SlowColorHistogram(features.ColorHistogram):
    """colorhist that logs which process started each batch, and takes its time."""

    def __init__(self, log_dir, seconds):
        super().__init__()
        self.log_dir, self.seconds = log_dir, seconds

    def extract_files(self, paths, threads=None):
        with open(os.path.join(self.log_dir, f"{os.getpid()}-{time.monotonic_ns()}"), "w") as f:
            f.write("\n".join(paths))
        time.sleep(self.seconds)
        return super().extract_files(paths, threads=threads)


def started(log_dir):
    """{pid: [paths of each batch it started]}"""
    out = {}
    for name in os.listdir(log_dir):
        out.setdefault(int(name.split("-")[0]), []).append(open(os.path.join(log_dir, name)).read().split("\n"))
    return out


def test_a_worker_killed_during_extraction_loses_and_duplicates_no_image(client, folder, tmp_path):
    root, good, bad = folder
    engine, report = single_process(root)
    log_dir = str(tmp_path)
    victim = next(iter(client.run(os.getpid).values()))
    result = {}
    run = threading.Thread(target=lambda: result.update(emb=isx.dask.embed(
        root, extractor=SlowColorHistogram(log_dir, 0.15), batch_size=2, progress=False)))
    run.start()
    deadline = time.monotonic() + 30
    while len(started(log_dir).get(victim, [])) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(started(log_dir).get(victim, [])) >= 3, "the victim worker never ran the batches"
    os.kill(victim, signal.SIGKILL)  # mid-batch, with two finished batches in its memory
    run.join(60)
    assert not run.is_alive()
    emb = result["emb"]
    assert emb.paths == engine.paths  # every image once, in order
    np.testing.assert_array_equal(emb.compute(), engine.index.get(np.arange(len(engine))))
    assert sorted(emb.failed) == sorted(report.failed)
    log = started(log_dir)
    by_victim = {p for batch in log[victim] for p in batch}
    by_others = {p for pid, batches in log.items() if pid != victim for batch in batches for p in batch}
    assert by_victim & by_others, "no batch of the killed worker was run again"
    client.wait_for_workers(2, timeout=60)  # the nanny brought a new worker up
