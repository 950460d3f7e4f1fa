"""Approximate search: imgsearch.HNSWIndex vs hnswlib vs faiss IndexHNSWFlat vs usearch.

Fashion-MNIST (60,000 x 784 base, the 10,000 test images as queries, k=10,
exact ground truth from FlatIndex), the same M=16 and ef_construction=200 for
every library.  Builds use 2 threads; the ef sweep searches the whole query
set with 1 thread per library, interleaved per ef so that a noisy machine
hurts everyone alike (best of --repeat).  Each search is timed twice: wall
clock, and the CPU time of the process (every library searches on the
calling thread here), which other jobs on a shared machine disturb far
less; the ratios use both, and the tables say which is which.  Then filtered search (10% and 0.5%
of ids allowed) and the float16 / int8 storage of imgsearch.  Writes
benchmarks/results/hnsw.json and hnsw.png (recall-QPS curves) and prints
Markdown tables.

    python benchmarks/bench_hnsw.py [--n 60000] [--queries 10000] [--repeat 2]
    python benchmarks/bench_hnsw.py --replot     # redraw PNG + Markdown from the JSON
"""
import argparse
import gc
import json
import os
import pickle
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import imgsearch  # noqa: E402
from imgsearch.datasets import fashion_mnist  # noqa: E402
from _levels import at_level, cpu_line, label, lower  # noqa: E402

M, EF_CONSTRUCTION, K, BUILD_THREADS = 16, 200, 10, 2
EF_SWEEP = [10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64, 96, 128, 192, 256]
TARGETS = [0.95, 0.99]


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def recall(I, gt):
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / K for a, b in zip(I, gt)]))


def loadavg():
    return os.getloadavg()[0]


# ---------------------------------------------------------------- the peers


class Imgsearch:
    name = "imgsearch"

    def __init__(self, dim, dtype="float32", refine=None):
        self.index = imgsearch.HNSWIndex(dim, "l2", M=M, ef_construction=EF_CONSTRUCTION, seed=0, dtype=dtype,
                                         refine=refine)

    def build(self, X):
        self.index.add(X, threads=BUILD_THREADS)

    def search(self, Q, ef):
        return self.index.search(Q, k=K, ef=ef, threads=1)[1]

    def memory(self):
        return self.index.memory_usage


class ImgsearchInt8Refined(Imgsearch):
    """int8 rows for the walk, float32 rows to re-rank the ef candidates."""
    name = "imgsearch int8+refine"

    def __init__(self, dim):
        super().__init__(dim, "int8", "float32")


class ImgsearchAtLevel(Imgsearch):
    """The index built at the best level, loaded again at a lower SIMD level
    (an HNSW index takes its kernels when it is created or loaded), so the
    levels search the same graph."""

    def __init__(self, built, level):
        self.name = label(level)
        with at_level(level):
            self.index = pickle.loads(pickle.dumps(built.index))


class Hnswlib:
    name = "hnswlib"

    def __init__(self, dim):
        import hnswlib

        self.index = hnswlib.Index("l2", dim)

    def build(self, X):
        self.index.init_index(len(X), M=M, ef_construction=EF_CONSTRUCTION, random_seed=0)
        self.index.set_num_threads(BUILD_THREADS)
        self.index.add_items(X, np.arange(len(X)))
        self.index.set_num_threads(1)

    def search(self, Q, ef):
        self.index.set_ef(ef)
        return self.index.knn_query(Q, k=K)[0]


class Faiss:
    name = "faiss"

    def __init__(self, dim):
        import faiss

        self.faiss = faiss
        self.index = faiss.IndexHNSWFlat(dim, M)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION

    def build(self, X):
        self.faiss.omp_set_num_threads(BUILD_THREADS)
        self.index.add(X)
        self.faiss.omp_set_num_threads(1)

    def search(self, Q, ef):
        self.index.hnsw.efSearch = ef
        return self.index.search(Q, K)[1]


class Usearch:
    name = "usearch"

    def __init__(self, dim):
        from usearch.index import Index

        self.index = Index(ndim=dim, metric="l2sq", dtype="f32", connectivity=M, expansion_add=EF_CONSTRUCTION)

    def build(self, X):
        self.index.add(np.arange(len(X)), X, threads=BUILD_THREADS)

    def search(self, Q, ef):
        self.index.expansion_search = ef
        return self.index.search(Q, K, threads=1).keys.astype(np.int64)

    def memory(self):
        return self.index.memory_usage


def versions():
    out = {"imgsearch": imgsearch.__version__, "numpy": np.__version__}
    from importlib import metadata

    for mod, dist in (("hnswlib", "hnswlib"), ("faiss", "faiss-cpu"), ("usearch", "usearch")):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", None) or metadata.version(dist)
        except (ImportError, metadata.PackageNotFoundError):
            out[mod] = None
    return out


def qps_at(curve, target, key="qps"):
    """QPS (`key`: wall clock or CPU time) at a recall target, interpolated
    (log QPS, linear recall) between the sweep points around it; None if the
    curve never reaches it."""
    pts = sorted((c["recall@10"], c[key]) for c in curve)
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= target <= r1:
            if r1 == r0:
                return max(q0, q1)
            t = (target - r0) / (r1 - r0)
            return float(np.exp(np.log(q0) + t * (np.log(q1) - np.log(q0))))
    if pts and pts[0][0] >= target:
        return pts[0][1]  # already above target at the smallest ef
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60000, help="base vectors (a prefix of the training set)")
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip-dtypes", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "hnsw.json"))
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG and Markdown from --out")
    args = ap.parse_args()
    if args.replot:
        with open(args.out) as f:
            r = json.load(f)
        return report(args.out, r["meta"], r["curves"], r["summary"], r["filtered"], r["dtypes"])

    Xall, _, Qall, _ = fashion_mnist()
    X = np.ascontiguousarray(Xall[: args.n])
    Q = np.ascontiguousarray(Qall[: args.queries])
    _, gt = imgsearch.FlatIndex.from_array(X).search(Q, k=K)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "simd": imgsearch.capabilities()["simd"], "cpu": cpu_line(), "versions": versions(), "base": list(X.shape),
            "queries": len(Q), "k": K, "M": M, "ef_construction": EF_CONSTRUCTION,
            "build_threads": BUILD_THREADS, "repeat": args.repeat, "load_at_start": os.getloadavg()}
    print(f"# HNSW benchmark: {X.shape[0]} x {X.shape[1]}, {len(Q)} queries, load {loadavg():.2f}", flush=True)

    libs, builds = [], []
    for cls in (Imgsearch, ImgsearchInt8Refined, Hnswlib, Faiss, Usearch):
        try:
            lib = cls(X.shape[1])
        except ImportError as e:
            print(f"skipping {cls.name}: {e}")
            continue
        gc.collect()
        before = rss_bytes()
        t0, c0 = time.perf_counter(), time.process_time()
        lib.build(X)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        rss = rss_bytes() - before
        own = lib.memory() if hasattr(lib, "memory") else None
        builds.append({"library": lib.name, "seconds": seconds, "cpu_seconds": cpu, "rss_delta_bytes": rss,
                       "reported_bytes": own,
                       "load": loadavg()})
        print(f"build {lib.name:10s} {seconds:7.2f} s (cpu {cpu:6.1f} s)  rss +{rss / 2**20:7.1f} MiB"
              + (f"  reported {own / 2**20:7.1f} MiB" if own else ""), flush=True)
        libs.append(lib)

    isx_built = next((lib for lib in libs if lib.name == "imgsearch"), None)
    if isx_built is not None:
        # Every level searches a copy loaded the same way (the best level too):
        # the built index's memory, grown in steps, searched ~10% slower than
        # a loaded copy of the same graph in one run, with the same kernels.
        isx_built.index = pickle.loads(pickle.dumps(isx_built.index))
        for pos, level in enumerate(lower(), start=1):
            libs.insert(pos, ImgsearchAtLevel(isx_built, level))

    curves = {lib.name: [] for lib in libs}
    for ef in EF_SWEEP:
        best = {lib.name: (float("inf"), float("inf"), None) for lib in libs}
        for _ in range(args.repeat):
            for lib in libs:  # interleaved: load spikes hit every library
                t0, c0 = time.perf_counter(), time.process_time()
                I = lib.search(Q, ef)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                wall, cpu, _ = best[lib.name]
                best[lib.name] = (min(wall, dt), min(cpu, dc), I)
        line = f"ef={ef:4d}"
        for lib in libs:
            dt, dc, I = best[lib.name]
            point = {"ef": ef, "qps": len(Q) / dt, "qps_cpu": len(Q) / dc, "recall@10": recall(I, gt),
                     "load": loadavg()}
            curves[lib.name].append(point)
            line += f"  {lib.name} {point['recall@10']:.4f}/{point['qps']:6.0f}/{point['qps_cpu']:6.0f}"
        print(line, flush=True)

    summary = []
    hb = next((b for b in builds if b["library"] == "hnswlib"), None)
    for lib in libs:
        row = {"library": lib.name}
        for key in ("qps", "qps_cpu"):
            for t in TARGETS:
                q = qps_at(curves[lib.name], t, key)
                base = qps_at(curves.get("hnswlib", []), t, key)
                row[f"{key}@{t}"] = q
                row[f"{key}_vs_hnswlib@{t}"] = q / base if q and base else None
        b = next((b for b in builds if b["library"] == lib.name), None)
        if b is None:  # a lower SIMD level of imgsearch: the same index, loaded again
            summary.append(row)
            continue
        row["build_s"] = b["seconds"]
        row["build_vs_hnswlib"] = b["seconds"] / hb["seconds"] if hb else None
        row["build_cpu_s"] = b["cpu_seconds"]
        row["build_cpu_vs_hnswlib"] = b["cpu_seconds"] / hb["cpu_seconds"] if hb else None
        row["rss_mib"] = b["rss_delta_bytes"] / 2**20
        row["reported_mib"] = b["reported_bytes"] / 2**20 if b["reported_bytes"] else None
        summary.append(row)

    # ---- filtered search (imgsearch): recall against filtered brute force ----
    filtered = []
    isx = next((lib for lib in libs if lib.name == "imgsearch"), None)
    if isx is not None:
        rng = np.random.default_rng(0)
        flat = imgsearch.FlatIndex.from_array(X)
        Qf = Q[:2000]
        for frac in (0.1, 0.005):
            allowed = np.sort(rng.choice(len(X), int(len(X) * frac), replace=False))
            _, gtf = flat.search(Qf, k=K, filter=allowed)
            for ef in (32, 64):
                t0 = time.perf_counter()
                _, I = isx.index.search(Qf, k=K, ef=ef, filter=allowed, threads=1)
                dt = time.perf_counter() - t0
                filtered.append({"allowed": frac, "ef": ef, "qps": len(Qf) / dt, "recall@10": recall(I, gtf)})
                print(f"filter {frac:6.1%} ef={ef:3d}  recall {filtered[-1]['recall@10']:.4f}  "
                      f"{filtered[-1]['qps']:7.0f} QPS", flush=True)

    # ---- compressed storage (imgsearch) --------------------------------------
    dtypes = []
    if isx is not None and not args.skip_dtypes:
        dtypes.append({"dtype": "float32", "build_s": builds[0]["seconds"], "memory_mib": isx.memory() / 2**20,
                       "curve": [c for c in curves["imgsearch"] if c["ef"] in (16, 32, 64, 128)]})
        del libs  # free the peers' memory first
        gc.collect()
        for dtype in ("float16", "int8"):
            lib = Imgsearch(X.shape[1], dtype)
            t0 = time.perf_counter()
            lib.build(X)
            seconds = time.perf_counter() - t0
            curve = []
            for ef in (16, 32, 64, 128):
                t1 = time.perf_counter()
                I = lib.search(Q, ef)
                curve.append({"ef": ef, "qps": len(Q) / (time.perf_counter() - t1), "recall@10": recall(I, gt)})
            dtypes.append({"dtype": dtype, "build_s": seconds, "memory_mib": lib.memory() / 2**20, "curve": curve})
            print(f"dtype {dtype}: build {seconds:.1f} s, {lib.memory() / 2**20:.1f} MiB, "
                  + ", ".join(f"ef={c['ef']} {c['recall@10']:.4f}/{c['qps']:.0f}" for c in curve), flush=True)
            del lib
            gc.collect()

    meta["load_at_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "builds": builds, "curves": curves, "summary": summary, "filtered": filtered,
                   "dtypes": dtypes}, f, indent=1)
    report(args.out, meta, curves, summary, filtered, dtypes)


def report(out, meta, curves, summary, filtered, dtypes):
    """The plot next to the JSON, and the Markdown tables (printed too)."""
    plot(curves, os.path.splitext(out)[0] + ".png", meta)
    text = "\n".join(tables(meta, curves, summary, filtered, dtypes)) + "\n"
    md = os.path.splitext(out)[0] + ".md"
    with open(md, "w") as f:
        f.write(text)
    print("\n" + text + f"wrote {out}, {md}")


def plot(curves, path, meta):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key, what in zip(axes, ("qps", "qps_cpu"), ("wall clock", "CPU time")):
        for name, curve in curves.items():
            ax.plot([c["recall@10"] for c in curve], [c[key] for c in curve], marker="o", ms=3, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("recall@10")
        ax.set_ylabel(f"queries per second (1 thread, {what})")
        ax.set_xlim(left=0.9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"Fashion-MNIST {meta['base'][0]} x {meta['base'][1]}, M={M}, ef_construction={EF_CONSTRUCTION}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def tables(meta, curves, summary, filtered, dtypes):
    """The results as Markdown lines (benchmarks/results/hnsw.md)."""
    names = list(curves)
    out = [f"Fashion-MNIST {meta['base'][0]} x {meta['base'][1]}, {meta['queries']} queries, k={K}, M={M}, "
           f"ef_construction={EF_CONSTRUCTION}, builds on {BUILD_THREADS} threads, searches on 1 thread; "
           f"{meta.get('cpu', str(meta['cpus']) + ' CPUs (' + meta['simd'] + ')')}; `imgsearch` searches at the best "
           "SIMD level, `imgsearch[level]` is the same index loaded at a lower level; load average {meta['load_at_start'][0]:.2f} at start, "
           f"{meta['load_at_end'][0]:.2f} at end; versions {meta['versions']}.",
           "",
           "QPS is measured twice: wall clock, and CPU time of the process (all libraries search on the "
           "calling thread), which other jobs on a shared machine disturb much less. Best of "
           f"{meta['repeat']} interleaved runs per ef.", ""]
    out += ["### Recall@10 and QPS (wall / CPU) at each ef", "",
            "| ef | " + " | ".join(names) + " |", "|---:|" + "---|" * len(names)]
    for i, ef in enumerate(c["ef"] for c in curves[names[0]]):
        cells = [f"{curves[n][i]['recall@10']:.4f} @ {curves[n][i]['qps']:.0f} / {curves[n][i]['qps_cpu']:.0f}"
                 for n in names]
        out.append(f"| {ef} | " + " | ".join(cells) + " |")
    out += ["", "### QPS at a recall target (interpolated), build, memory", "",
            "| library | QPS @ 0.95 wall (vs hnswlib) | CPU (vs hnswlib) | QPS @ 0.99 wall (vs hnswlib) "
            "| CPU (vs hnswlib) | build, 2 threads (vs hnswlib) | build CPU (vs hnswlib) | RSS growth | reported |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary:
        cells = []
        for t in TARGETS:
            for key in ("qps", "qps_cpu"):
                cells.append(f"{fmt(r[f'{key}@{t}'], '.0f')} ({fmt(r[f'{key}_vs_hnswlib@{t}'], '.2f')}x)")
        if "build_s" in r:
            cells.append(f"{r['build_s']:.1f} s ({fmt(r['build_vs_hnswlib'], '.2f')}x)")
            cells.append(f"{r['build_cpu_s']:.1f} s ({fmt(r['build_cpu_vs_hnswlib'], '.2f')}x)")
            cells.append(f"{r['rss_mib']:.0f} MiB")
            cells.append(fmt(r["reported_mib"], ".0f") + (" MiB" if r["reported_mib"] else ""))
        else:
            cells += ["same index"] * 4
        out.append(f"| {r['library']} | " + " | ".join(cells) + " |")
    if "hnswlib" in curves and "imgsearch" in curves:
        diff = [a["recall@10"] - b["recall@10"] for a, b in zip(curves["imgsearch"], curves["hnswlib"])]
        out += ["", f"Recall curve, imgsearch minus hnswlib over the sweep: min {min(diff):+.4f}, "
                f"mean {np.mean(diff):+.4f}, max {max(diff):+.4f}."]
    if filtered:
        out += ["", "### Filtered search (imgsearch), recall against filtered brute force", "",
                "| allowed | ef | recall@10 | QPS (1 thread, wall) |", "|---:|---:|---:|---:|"]
        for f in filtered:
            out.append(f"| {f['allowed']:.1%} | {f['ef']} | {f['recall@10']:.4f} | {f['qps']:.0f} |")
    if dtypes:
        out += ["", "### Storage dtypes (imgsearch)", "",
                "| dtype | memory | build | recall@10 @ QPS (wall) at ef=16, 32, 64, 128 |", "|---|---:|---:|---|"]
        for d in dtypes:
            out.append(f"| {d['dtype']} | {d['memory_mib']:.0f} MiB | {d['build_s']:.1f} s | "
                       + ", ".join(f"{c['recall@10']:.4f} @ {c['qps']:.0f}" for c in d["curve"]) + " |")
    return out


if __name__ == "__main__":
    main()
