"""imgsearch.dask on LocalClusters of 1 and 2 worker processes vs the single-process engine.

1. Embedding: the flowers17 JPEGs through ``imgsearch.dask.embed`` (colorhist)
   on a cluster of 1 worker and one of 2 workers (one thread each), against
   ``ImageSearch.add`` in one process with 1 decoder thread (the same CPU
   budget as 1 worker) and with every CPU (the budget of 2 workers).  Both
   clusters stay up and the four pipelines run in interleaved rounds, so load
   from other processes falls on all of them alike; each has run once before
   the clock starts (extractor built, files in the page cache).  The cluster's
   start-up is not timed: a user's cluster is already running.  Also timed:
   embed followed by ``ImageSearch.from_dask`` (vectors gathered, engine built),
   the end product ``add`` gives.
2. Sharded search: a synthetic set of 100,000 clustered 128-d vectors through
   ``ShardedIndex`` (flat and hnsw, one shard per worker) against one FlatIndex
   / HNSWIndex in one process on the same threads: build seconds, batch search
   QPS, recall@10 against the exact answer, and whether sharded flat equals
   one FlatIndex (ids and distances).

Writes benchmarks/results/dask.json and dask.md.

    python benchmarks/bench_dask.py [--rounds 5] [--vectors 100000] [--limit N]
"""
import argparse
import glob
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import imgsearch as isx  # noqa: E402
from imgsearch.datasets import shared_data  # noqa: E402

TARGET_OVERHEAD = 0.15  # embed on 1 worker at most 15% slower than ImageSearch.add in one process
TARGET_SCALING = 1.7    # 2 workers at least 1.7x 1 worker


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t0, result


def bench_embedding(paths, clients, rounds, batch_size):
    """Seconds per round of each pipeline, interleaved; the first round is a warm-up."""
    def add(threads):
        engine = isx.ImageSearch(extractor="colorhist", index="flat", threads=threads)
        engine.add(paths, progress=False)
        return engine

    pipelines = {"add_1_thread": lambda: add(1), "add_all_cpus": lambda: add(None)}
    for n, client in clients.items():
        pipelines[f"embed_{n}_workers"] = (
            lambda c=client: isx.dask.embed(paths, batch_size=batch_size, progress=False, client=c))
        pipelines[f"embed_{n}_workers_from_dask"] = (
            lambda c=client: isx.ImageSearch.from_dask(isx.dask.embed(paths, batch_size=batch_size, progress=False,
                                                                      client=c), index="flat"))
    names = list(pipelines)
    seconds = {name: [] for name in names}
    reference = add(1)
    for r in range(rounds + 1):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t, out = timed(pipelines[name])
            if r:
                seconds[name].append(t)
            elif name.endswith("from_dask"):  # the same engine as add's
                assert out.paths == reference.paths
                assert np.array_equal(out.index.get(np.arange(len(out))), reference.index.get(np.arange(len(out))))
    n = len(reference)
    return {name: {"seconds": statistics.median(s), "all_seconds": s, "images_per_s": n / statistics.median(s)}
            for name, s in seconds.items()}, n


def recall(I, truth):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(I.tolist(), truth.tolist())]))


def search_figures(index, Q, truth, params):
    """Batch search QPS (after a warm-up call) and recall@10 against the exact ids."""
    index.search(Q[:50], k=10, **params)
    t, (_, I) = timed(index.search, Q, k=10, **params)
    return {"qps": len(Q) / t, "recall@10": recall(I, truth)}


def bench_sharded(clients, n, dim, nq, hnsw_params, ef):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(100, dim)) * 2
    X = (centres[rng.integers(0, 100, n)] + rng.normal(size=(n, dim))).astype(np.float32)
    Q = (centres[rng.integers(0, 100, nq)] + rng.normal(size=(nq, dim))).astype(np.float32)
    out = {"vectors": n, "dim": dim, "queries": nq, "hnsw_params": hnsw_params, "ef": ef, "rows": []}
    exact = isx.FlatIndex.from_array(X)
    truth = exact.search(Q, k=10)[1]
    for threads in (1, None):
        label = "one process, 1 thread" if threads == 1 else f"one process, {os.cpu_count()} threads"
        for kind in ("flat", "hnsw"):
            index = isx.FlatIndex(dim) if kind == "flat" else isx.HNSWIndex(dim, **hnsw_params)
            t_build, _ = timed(index.add, X, threads=threads)
            params = {"ef": ef, "threads": threads} if kind == "hnsw" else {"threads": threads}
            out["rows"].append({"setup": label, "kind": kind, "build_s": t_build,
                                **search_figures(index, Q, truth, params)})
    D_flat, I_flat = exact.search(Q, k=10)
    for workers, client in clients.items():
        for kind in ("flat", "hnsw"):
            build = hnsw_params if kind == "hnsw" else {}
            t_build, sharded = timed(isx.dask.ShardedIndex.from_array, X, kind=kind, client=client, **build)
            row = {"setup": f"ShardedIndex, {workers} worker(s) x 1 thread, {sharded.shards} shard(s)", "kind": kind,
                   "build_s": t_build, **search_figures(sharded, Q, truth, {"ef": ef} if kind == "hnsw" else {})}
            if kind == "flat":
                D, I = sharded.search(Q, k=10)
                row["equals_one_flat_index"] = bool(np.array_equal(I, I_flat) and np.array_equal(D, D_flat))
            out["rows"].append(row)
            sharded.close()
    return out


def markdown(out):
    e = out["embedding"]
    n = out["images"]
    cpus = out["machine"]["cpus"]
    lines = [f"## Embedding: {n} flowers17 JPEGs, colorhist, LocalCluster vs one process, {cpus} cores",
             "",
             f"`imgsearch.dask.embed(paths, batch_size={out['batch_size']})` on a `LocalCluster` of worker processes "
             "with one thread each (start-up not timed: a user's cluster is already running), against "
             "`ImageSearch.add` in one process. Median of "
             f"{out['rounds']} interleaved rounds after a warm-up round (extractor built, files in the page cache).",
             "",
             "| pipeline | seconds | images/s | vs add, 1 thread |",
             "|---|---|---|---|"]
    base = e["add_1_thread"]["images_per_s"]
    labels = {"add_1_thread": "`ImageSearch.add`, one process, 1 decoder thread",
              "add_all_cpus": f"`ImageSearch.add`, one process, {out['machine']['cpus']} decoder threads"}
    for w in out["workers"]:
        labels[f"embed_{w}_workers"] = f"`embed`, {w} worker(s) x 1 thread"
        labels[f"embed_{w}_workers_from_dask"] = f"`embed` + `ImageSearch.from_dask`, {w} worker(s)"
    for k, label in labels.items():
        lines.append(f"| {label} | {e[k]['seconds']:.3f} | {e[k]['images_per_s']:.1f} | "
                     f"{e[k]['images_per_s'] / base:.2f}x |")
    overhead = e["add_1_thread"]["images_per_s"] / e["embed_1_workers"]["images_per_s"] - 1
    scaling = e["embed_2_workers"]["images_per_s"] / e["embed_1_workers"]["images_per_s"]
    vs_all = e["add_all_cpus"]["images_per_s"] / e["embed_2_workers"]["images_per_s"] - 1
    lines += ["",
              f"- Overhead of `embed` on 1 worker vs `ImageSearch.add` on 1 thread: {100 * overhead:+.1f}% "
              f"(target <= {100 * TARGET_OVERHEAD:.0f}%: {'met' if overhead <= TARGET_OVERHEAD else 'missed'}).",
              f"- Scaling, 2 workers vs 1: {scaling:.2f}x (target >= {TARGET_SCALING}x: "
              f"{'met' if scaling >= TARGET_SCALING else 'missed'}).",
              f"- 2 workers vs `ImageSearch.add` on every CPU of one process: {100 * vs_all:+.1f}% overhead.",
              ""]
    s = out["sharded"]
    lines += [f"## Sharded search: {s['vectors']:,} synthetic clustered {s['dim']}-d vectors, {s['queries']} queries, "
              "k=10",
              "",
              f"`ShardedIndex.from_array(X)` from a NumPy array in the client (one shard per worker; the rows are "
              f"sent to the workers as part of the build), HNSW {s['hnsw_params']}, search at ef={s['ef']} in one "
              "batch; recall@10 against the exact answer. One process: the same index over all the rows.",
              "",
              "| setup | index | build s | QPS | recall@10 |",
              "|---|---|---|---|---|"]
    for r in s["rows"]:
        eq = " (equals one FlatIndex: %s)" % r["equals_one_flat_index"] if "equals_one_flat_index" in r else ""
        lines.append(f"| {r['setup']} | {r['kind']} | {r['build_s']:.2f} | {r['qps']:.0f} | {r['recall@10']:.4f}{eq} |")
    lines += ["", "Notes: one run on a shared 2-core machine; absolute figures move from run to run. On one "
              "machine the workers share its cores and memory bandwidth: the point of sharding is more machines "
              "(and indexes larger than one machine's memory), which a LocalCluster cannot show.", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=0, help="use only N images (quick runs)")
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--ef", type=int, default=64)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "dask.json"))
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the --out JSON, run nothing")
    args = ap.parse_args()
    if args.markdown_only:
        with open(args.out) as f:
            write_markdown(json.load(f), args.out)
        return
    from distributed import Client, LocalCluster
    paths = sorted(glob.glob(os.path.join(shared_data("flowers17", "images"), "*.jpg")))
    if not paths:
        sys.exit(f"flowers17 not found under {shared_data('flowers17')}")
    if args.limit:
        paths = paths[:args.limit]
    clusters, clients = {}, {}
    for w in (1, 2):
        clusters[w] = LocalCluster(n_workers=w, threads_per_worker=1, processes=True, dashboard_address=":0")
        clients[w] = Client(clusters[w], set_as_default=False)
        clients[w].wait_for_workers(w)
    try:
        out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "simd": isx.capabilities()["simd"]},
               "rounds": args.rounds, "batch_size": args.batch_size, "workers": [1, 2]}
        out["embedding"], out["images"] = bench_embedding(paths, clients, args.rounds, args.batch_size)
        for k, v in out["embedding"].items():
            print(k, f"{v['images_per_s']:.1f} images/s", flush=True)
        out["sharded"] = bench_sharded(clients, args.vectors, 128, args.queries,
                                       {"M": 16, "ef_construction": 100, "seed": 0}, args.ef)
        for r in out["sharded"]["rows"]:
            print(r, flush=True)
    finally:
        for w in clients:
            clients[w].close()
            clusters[w].close()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    write_markdown(out, args.out)


def write_markdown(out, json_path):
    md = markdown(out)
    with open(os.path.splitext(json_path)[0] + ".md", "w") as f:
        f.write("# imgsearch on Dask (`benchmarks/bench_dask.py`)\n\n" + md)
    print("\n" + md)


if __name__ == "__main__":
    main()
