"""Exact k-NN in low dimensions: imgsearch.KDTreeIndex vs scipy cKDTree vs
scikit-learn KDTree vs imgsearch.FlatIndex.

Two data sets, k=10:
  * fashion-pca16: Fashion-MNIST projected to 16 dimensions by PCA (fitted on
    the 60,000 training images, which are the base; the first 5,000 test
    images are the queries);
  * uniform-3d: 500,000 uniform points in the unit cube, 20,000 queries.

Every tree uses leaves of at most 16 points: imgsearch leaf_size=16, cKDTree
leafsize=16 (its default), scikit-learn leaf_size=8 (its leaves hold between
leaf_size and 2 * leaf_size points).  scipy and scikit-learn get float64
copies of the data made before the clock starts (they would convert float32
themselves); imgsearch and FlatIndex get the float32 arrays.  Builds run on
one thread.  Queries run with 1 and 2 threads: imgsearch threads=, cKDTree
workers=, scikit-learn KDTree.query on the two halves of the queries in two
Python threads (it releases the GIL), FlatIndex threads= (BLAS limited to the
same count).  FlatIndex answers only a subset of the uniform-3d queries
(--flat-queries), brute force over 500,000 points being slow.

Each repeat builds every library once, one after the other, and runs its
queries --query-repeat times with 1 and 2 threads alternately (interleaved, so
a load spike on a shared machine hits all alike); the best times are kept.
--markdown-only rewrites kdtree.md from kdtree.json.  Results are checked: every library's distances must equal
imgsearch's (squared for l2) to float32 rounding.  Writes
benchmarks/results/kdtree.json and kdtree.md (Markdown tables).

    python benchmarks/bench_kdtree.py [--repeat 3] [--query-repeat 3] [--sets fashion-pca16,uniform-3d]
"""
import argparse
import gc
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import imgsearch  # noqa: E402
from imgsearch.datasets import fashion_mnist  # noqa: E402
from _levels import at_level, cpu_line, lower  # noqa: E402

K = 10
LEAF = 16           # most points per leaf, every tree
THREADS = (1, 2)
RESULTS = os.path.join(os.path.dirname(__file__), "results")


# ---------------------------------------------------------------- data sets


def fashion_pca16(nq):
    Xtr, _, Xte, _ = fashion_mnist()
    mean = Xtr.mean(axis=0, dtype=np.float64)
    cov = np.cov((Xtr - mean).T)
    _, vecs = np.linalg.eigh(cov)                 # ascending eigenvalues
    proj = vecs[:, ::-1][:, :16]
    X = ((Xtr - mean) @ proj).astype(np.float32)
    Q = ((Xte[:nq] - mean) @ proj).astype(np.float32)
    return np.ascontiguousarray(X), np.ascontiguousarray(Q)


def uniform_3d(nq):
    rng = np.random.default_rng(0)
    return rng.random((500_000, 3), dtype=np.float32), rng.random((nq, 3), dtype=np.float32)


SETS = {"fashion-pca16": (fashion_pca16, 5_000), "uniform-3d": (uniform_3d, 20_000)}


# ---------------------------------------------------------------- the peers
# search(Q, threads) -> (D, I) with D in the library's own convention;
# squared(D) turns it into imgsearch's (squared Euclidean).


class Imgsearch:
    """level=None: the best SIMD level; else the tree is built at that level
    (a KD-tree takes its leaf kernels when it is created)."""

    def __init__(self, copy, level=None):
        self.copy = copy
        self.level = level
        self.name = "imgsearch KDTreeIndex" + (" (copy=True)" if copy else " (copy=False)") + \
            (f" [{level}]" if level else "")

    def build(self, X, X64):
        import contextlib

        with at_level(self.level) if self.level else contextlib.nullcontext():
            self.index = imgsearch.KDTreeIndex.from_array(X, leaf_size=LEAF, copy=self.copy, threads=1)

    def search(self, Q, Q64, threads):
        return self.index.search(Q, k=K, threads=threads)

    squared = staticmethod(lambda D: D)


class Scipy:
    name = "scipy cKDTree"

    def build(self, X, X64):
        from scipy.spatial import cKDTree

        self.index = cKDTree(X64, leafsize=LEAF)

    def search(self, Q, Q64, threads):
        return self.index.query(Q64, k=K, workers=threads)

    squared = staticmethod(lambda D: D * D)


class Sklearn:
    name = "scikit-learn KDTree"

    def build(self, X, X64):
        from sklearn.neighbors import KDTree

        self.index = KDTree(X64, leaf_size=LEAF // 2)

    def search(self, Q, Q64, threads):
        if threads == 1:
            return self.index.query(Q64, k=K)
        parts = np.array_split(Q64, threads)
        with ThreadPoolExecutor(threads) as ex:
            outs = list(ex.map(lambda q: self.index.query(q, k=K), parts))
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    squared = staticmethod(lambda D: D * D)


class Flat:
    name = "imgsearch FlatIndex"

    def __init__(self, nq):
        self.nq = nq   # queries answered (a prefix), None = all

    def build(self, X, X64):
        self.index = imgsearch.FlatIndex.from_array(X, copy=False)

    def search(self, Q, Q64, threads):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads):
            return self.index.search(Q[: self.nq], k=K, threads=threads)

    squared = staticmethod(lambda D: D)


def autogroup():
    """Linux's per-session CPU sharing: with it on, a busy machine gives this
    process one session's share however many threads it runs."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return f.read().strip() == "1"
    except OSError:
        return None


def versions():
    import scipy
    import sklearn

    return {"imgsearch": imgsearch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__}


# ---------------------------------------------------------------- the run


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def check(lib, D, I, ref_D, ref_I):
    """Largest relative distance difference to imgsearch's, and the share of
    ids that agree (ties may order differently)."""
    D = lib.squared(np.asarray(D, np.float64))
    n = len(D)
    ref = ref_D[:n].astype(np.float64)
    rel = float(np.max(np.abs(D - ref) / np.maximum(ref, 1e-12)))
    same = float(np.mean(np.asarray(I, np.int64) == ref_I[:n]))
    return rel, same


def run_set(name, repeat, query_repeat, flat_queries):
    make, nq = SETS[name]
    X, Q = make(nq)
    X64, Q64 = X.astype(np.float64), Q.astype(np.float64)
    nflat = None if name == "fashion-pca16" else flat_queries
    libs = [Imgsearch(copy=True), Imgsearch(copy=False)] + [Imgsearch(copy=True, level=lv) for lv in lower()] + \
        [Scipy(), Sklearn(), Flat(nflat)]
    best = {lib.name: {"build_s": np.inf, **{f"query_s_{t}": np.inf for t in THREADS}} for lib in libs}
    results = {}
    print(f"# {name}: base {X.shape}, {len(Q)} queries, k={K}, load {os.getloadavg()[0]:.2f}", flush=True)
    for rep in range(repeat):
        for lib in libs:
            gc.collect()
            wall, _, _ = timed(lambda: lib.build(X, X64))
            b = best[lib.name]
            b["build_s"] = min(b["build_s"], wall)
            for _ in range(query_repeat):   # 1 and 2 threads alternate, so both meet the same load
                for t in THREADS:
                    wall, cpu, out = timed(lambda: lib.search(Q, Q64, t))
                    if wall < b[f"query_s_{t}"]:
                        b[f"query_s_{t}"], b[f"cpu_s_{t}"] = wall, cpu
                    results[lib.name, t] = out
            del lib.index
        print(f"  repeat {rep + 1}/{repeat} done, load {os.getloadavg()[0]:.2f}", flush=True)

    ref_D, ref_I = results[libs[0].name, 1]
    rows = []
    for lib in libs:
        b = best[lib.name]
        nanswered = len(Q) if getattr(lib, "nq", None) is None else min(lib.nq, len(Q))
        row = {"library": lib.name, "queries": nanswered, "build_s": b["build_s"]}
        for t in THREADS:
            row[f"qps_{t}"] = nanswered / b[f"query_s_{t}"]
            row[f"cpu_per_wall_{t}"] = b[f"cpu_s_{t}"] / b[f"query_s_{t}"]
            rel, same = check(lib, *results[lib.name, t], ref_D, ref_I)
            row[f"max_rel_dist_diff_{t}"] = rel
            row[f"same_ids_{t}"] = same
        row["scaling_2_vs_1"] = row["qps_2"] / row["qps_1"]
        row["cpu_s_1"], row["cpu_s_2"] = b["cpu_s_1"], b["cpu_s_2"]
        row["work_2_vs_1"] = b["cpu_s_2"] / b["cpu_s_1"]   # CPU seconds: 1.0 = no parallel overhead
        rows.append(row)
        print(f"  {lib.name:32s} build {row['build_s'] * 1e3:7.1f} ms  QPS 1t {row['qps_1']:9.0f}  "
              f"2t {row['qps_2']:9.0f} (x{row['scaling_2_vs_1']:.2f})  dist diff {row['max_rel_dist_diff_1']:.1e}  "
              f"ids {row['same_ids_1']:.4f}", flush=True)
    by = {r["library"]: r for r in rows}
    for r in rows:
        for peer, key in (("scipy cKDTree", "ckdtree"), ("scikit-learn KDTree", "sklearn")):
            p = by[peer]
            r[f"qps_1_vs_{key}"] = r["qps_1"] / p["qps_1"]
            r[f"qps_2_vs_{key}"] = r["qps_2"] / p["qps_2"]
            r[f"build_vs_{key}"] = r["build_s"] / p["build_s"]
    return {"set": name, "base": list(X.shape), "queries": len(Q), "rows": rows}


def targets(sets):
    out = []
    for s in sets:
        by = {r["library"]: r for r in s["rows"]}
        for name in ("imgsearch KDTreeIndex (copy=True)", "imgsearch KDTreeIndex (copy=False)"):
            r = by[name]
            exact = all(r[f"max_rel_dist_diff_{t}"] < 1e-4 for t in THREADS)
            out += [
                {"set": s["set"], "library": name, "target": "QPS 1 thread >= 1.2x cKDTree",
                 "value": r["qps_1_vs_ckdtree"], "met": r["qps_1_vs_ckdtree"] >= 1.2},
                {"set": s["set"], "library": name, "target": "build time <= cKDTree's",
                 "value": r["build_vs_ckdtree"], "met": r["build_vs_ckdtree"] <= 1.0},
                {"set": s["set"], "library": name, "target": "QPS 2 threads >= 1.8x 1 thread",
                 "value": r["scaling_2_vs_1"], "met": r["scaling_2_vs_1"] >= 1.8},
                {"set": s["set"], "library": name, "target": "distances equal (rel. diff < 1e-4)",
                 "value": max(r[f"max_rel_dist_diff_{t}"] for t in THREADS), "met": exact},
            ]
    return out


def markdown(meta, sets, goals):
    lines = [f"KD-tree benchmark: k={K}, leaves of at most {LEAF} points (imgsearch leaf_size={LEAF}, "
             f"cKDTree leafsize={LEAF}, scikit-learn leaf_size={LEAF // 2}), builds on 1 thread; best of "
             f"{meta['repeat']} interleaved repeats (builds) and {meta['repeat'] * meta['query_repeat']} query runs "
             f"per thread count; {meta.get('cpu', str(meta['cpus']) + ' CPUs')}; `[level]`: the tree built at a "
             "lower SIMD level, same run; load average "
             f"{meta['load_at_start'][0]:.2f} at start, {meta['load_at_end'][0]:.2f} at end. "
             f"Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".", ""]
    for s in sets:
        lines += [f"**{s['set']}** ({s['base'][0]:,} x {s['base'][1]} base, {s['queries']:,} queries)", "",
                  "| library | build | vs cKDTree | QPS 1 thread | vs cKDTree | vs sklearn | QPS 2 threads "
                  "| vs cKDTree | 2 threads / 1 | CPU busy 1 / 2 threads | CPU s 2 threads / 1 | max dist. diff "
                  "| same ids |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in s["rows"]:
            note = f" ({r['queries']:,} queries)" if r["queries"] != s["queries"] else ""
            lines.append(
                f"| {r['library']}{note} | {r['build_s'] * 1e3:.0f} ms | {r['build_vs_ckdtree']:.2f}x "
                f"| {r['qps_1']:,.0f} | {r['qps_1_vs_ckdtree']:.2f}x | {r['qps_1_vs_sklearn']:.2f}x "
                f"| {r['qps_2']:,.0f} | {r['qps_2_vs_ckdtree']:.2f}x | {r['scaling_2_vs_1']:.2f}x "
                f"| {r['cpu_per_wall_1']:.2f} / {r['cpu_per_wall_2']:.2f} | {r['work_2_vs_1']:.2f} "
                f"| {max(r['max_rel_dist_diff_1'], r['max_rel_dist_diff_2']):.0e} "
                f"| {min(r['same_ids_1'], r['same_ids_2']):.3%} |")
        lines.append("")
    starved = any(r["cpu_per_wall_2"] < 1.8 for s in sets for r in s["rows"]
                  if r["library"].startswith("imgsearch KD"))
    if starved and meta.get("sched_autogroup"):
        lines += ["Some 2-thread runs got less than 1.8 CPUs (CPU busy below): the machine was shared and "
                  "Linux's sched_autogroup was on, which shares CPU time between sessions, not threads, so a "
                  "second thread in this process gets no more CPU time than the first had alone, whatever the "
                  "library.  Thread scaling needs a quiet machine to measure.", ""]
    lines += ["CPU busy: process CPU seconds / wall seconds of the best query run (ideal 1.00 with 1 thread, "
              "2.00 with 2; lower means the threads waited for a core, as on a shared machine, and then the "
              "2-thread speed-up says more about the machine than the code).  CPU s 2 threads / 1: CPU seconds "
              "of the 2-thread run over the 1-thread run (1.00 = the parallel search does no extra work).", "",
              "| set | imgsearch | target | value | met |", "|---|---|---|---:|:---:|"]
    for g in goals:
        lines.append(f"| {g['set']} | {g['library'].replace('imgsearch KDTreeIndex ', '')} | {g['target']} "
                     f"| {g['value']:.3g} | {'yes' if g['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3, help="builds per library (each followed by its queries)")
    ap.add_argument("--query-repeat", type=int, default=3, help="query runs per build and thread count")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--flat-queries", type=int, default=1000, help="uniform-3d queries FlatIndex answers")
    ap.add_argument("--out", default=os.path.join(RESULTS, "kdtree.json"))
    ap.add_argument("--markdown-only", action="store_true",
                    help="rewrite the .md next to --out from its .json, without running anything")
    args = ap.parse_args()
    if args.markdown_only:
        with open(args.out) as f:
            saved = json.load(f)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
            f.write(markdown(saved["meta"], saved["sets"], saved["targets"]))
        return
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "simd": imgsearch.capabilities()["simd"], "cpu": cpu_line(), "versions": versions(), "k": K, "leaf": LEAF,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "sched_autogroup": autogroup(),
            "repeat": args.repeat, "query_repeat": args.query_repeat, "load_at_start": os.getloadavg()}
    sets = [run_set(name, args.repeat, args.query_repeat, args.flat_queries) for name in args.sets.split(",")]
    meta["load_at_end"] = os.getloadavg()
    goals = targets(sets)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "sets": sets, "targets": goals}, f, indent=1)
    md = markdown(meta, sets, goals)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(md)
    print("\n" + md)


if __name__ == "__main__":
    main()
