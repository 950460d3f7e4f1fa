"""Compressed search: imgsearch.IVFPQIndex vs faiss IndexIVFPQ / IndexIVFPQFastScan
(each also behind IndexRefineFlat), at the same bytes per vector, 1 thread.

Two data sets:
  fmnist   Fashion-MNIST, 60,000 x 784 base, the first --queries test images as
           queries (ann-benchmarks' fashion-mnist-784-euclidean).
  blobs    --n (default 1,000,000) x 128 clustered Gaussian, seeded: 4,096 centres
           drawn N(0, 1), points = centre + N(0, 0.8^2) per coordinate; queries drawn the
           same way from the same centres.

Every library gets the same training set (all of the base for fmnist, a seeded
--train sample for blobs), the same nlist, the same code size and the same
refine factor (candidates re-ranked exactly = k_factor x k).  The code size
is B bytes per vector: 8-bit PQ with m = B sub-quantizers, or 4-bit "fast
scan" PQ with m = 2B.  Exact ground truth comes from FlatIndex.

Searches run with 1 thread, interleaved per nprobe so that a noisy machine
hurts everyone alike (best of --repeat).  Reported: recall@10 vs QPS curves,
the QPS each variant reaches at recall@10 = 0.9 (interpolated), train and add
times, and memory (codes + ids + lists) against n x (B + 8) bytes.

    python benchmarks/bench_ivfpq.py [--sets fmnist,blobs] [--n 1000000] [--queries 2000]
    python benchmarks/bench_ivfpq.py --replot
"""
import argparse
import gc
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import imgsearch  # noqa: E402
from imgsearch.datasets import fashion_mnist  # noqa: E402
from _levels import cpu_line  # noqa: E402

K = 10
NPROBES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]
# with re-ranking, recall depends on how many PQ candidates are re-ranked
# (k_factor x k) as much as on nprobe: those variants sweep both
K_FACTORS = [4, 8, 16, 24, 32]
NPROBES_REFINE = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
TARGET = 0.9
# data set -> (nlist, code bytes per vector)
SETTINGS = {"fmnist": (256, 56), "blobs": (1024, 16)}


def blobs(n, nq, d=128, centres=4096, seed=0):
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((centres, d), dtype=np.float32)
    def draw(count):
        out = np.empty((count, d), np.float32)
        step = 200_000
        for s in range(0, count, step):
            e = min(count, s + step)
            out[s:e] = C[rng.integers(0, centres, e - s)]
            out[s:e] += 0.8 * rng.standard_normal((e - s, d), dtype=np.float32)
        return out
    return draw(n), draw(nq)


def recall(I, gt):
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(I, gt))
    return hits / (K * len(gt))


# ------------------------------------------------------------------ variants

class Ours:
    lib = "imgsearch"

    def __init__(self, d, nlist, nbytes, nbits, refine):
        self.m = nbytes if nbits == 8 else 2 * nbytes
        self.nbits, self.refine = nbits, refine
        self.name = f"imgsearch PQ{self.m}x{nbits}" + ("+refine" if refine else "")
        kw = {}
        if refine:
            kw["refine"] = "f32"
        self.index = imgsearch.IVFPQIndex(d, "l2", nlist=nlist, m=self.m, nbits=nbits, seed=0, **kw)

    def train(self, T):
        self.index.train(T, threads=1)

    def add(self, X):
        self.index.add(X, threads=1)

    def search(self, Q, nprobe, k_factor):
        if self.refine:
            self.index.k_factor = k_factor
        return self.index.search(Q, k=K, nprobe=nprobe, threads=1)[1]

    def memory(self):
        """Codes + ids + list headers."""
        return self.index.list_bytes

    def total_memory(self):
        """Everything the index holds, refine rows and codebooks included."""
        return self.index.memory_usage


class Faiss:
    lib = "faiss"

    def __init__(self, d, nlist, nbytes, nbits, refine):
        import faiss

        self.faiss = faiss
        faiss.omp_set_num_threads(1)
        self.quantizer = faiss.IndexFlatL2(d)
        if nbits == 8:
            self.m = nbytes
            base = faiss.IndexIVFPQ(self.quantizer, d, nlist, self.m, 8)
            kind = "IVFPQ"
        else:
            self.m = 2 * nbytes
            base = faiss.IndexIVFPQFastScan(self.quantizer, d, nlist, self.m, 4)
            kind = "IVFPQFastScan"
        base.cp.seed = 0
        self.base = base
        self.name = f"faiss {kind}{self.m}x{nbits}" + ("+RefineFlat" if refine else "")
        self.refine = refine
        if refine:
            self.index = faiss.IndexRefineFlat(base)
        else:
            self.index = base

    def train(self, T):
        self.index.train(T)

    def add(self, X):
        self.index.add(X)

    def search(self, Q, nprobe, k_factor):
        self.base.nprobe = nprobe
        if self.index is not self.base:
            params = self.faiss.IndexRefineSearchParameters(k_factor=k_factor)
            params.base_index_params = self.faiss.SearchParametersIVF(nprobe=nprobe)
            return self.index.search(Q, K, params=params)[1]
        return self.index.search(Q, K)[1]

    def memory(self):
        # codes + ids of the inverted lists (faiss's own accounting)
        # codes + ids of the inverted lists; fast-scan lists hold codes in
        # blocks of bbs (32) vectors, the last one padded
        invl = self.base.invlists
        bbs = getattr(self.base, "bbs", 1)
        total = 0
        for i in range(self.base.nlist):
            size = invl.list_size(i)
            total += -(-size // bbs) * bbs * self.base.code_size + size * 8
        return total

    def total_memory(self):
        """Lists + the refine index's float32 rows (codebooks not counted)."""
        rows = self.index.ntotal * self.index.d * 4 if self.refine else 0
        return self.memory() + rows


def variants(d, nlist, nbytes, libs):
    out = []
    for refine in (False, True):
        for nbits in (8, 4):
            for cls in (Ours, Faiss):
                if cls.lib in libs:
                    out.append(cls(d, nlist, nbytes, nbits, refine))
    return out


def qps_at(curve, target):
    """The best QPS among the measured settings that reach `target` recall (no
    interpolation: with two parameters the points are a cloud, not a curve)."""
    ok = [c for c in curve if c["recall"] >= target]
    return max(ok, key=lambda c: c["qps"]) if ok else None


def frontier(curve):
    """The Pareto front of (recall, QPS), for the plot."""
    out, best = [], -1.0
    for c in sorted(curve, key=lambda c: (-c["recall"], -c["qps"])):
        if c["qps"] > best:
            out.append(c)
            best = c["qps"]
    return sorted(out, key=lambda c: c["recall"])


def run_set(name, X, Q, T, repeat, libs):
    nlist, nbytes = SETTINGS[name]
    d = X.shape[1]
    _, gt = imgsearch.FlatIndex.from_array(X).search(Q, k=K)
    rows, curves = [], {}
    for v in variants(d, nlist, nbytes, libs):
        gc.collect()
        t0 = time.perf_counter()
        v.train(T)
        t1 = time.perf_counter()
        v.add(X)
        t2 = time.perf_counter()
        mem = v.memory()
        total = v.total_memory()
        rows.append({"name": v.name, "lib": v.lib, "nbits": v.nbits if hasattr(v, "nbits") else None,
                     "train_s": t1 - t0, "add_s": t2 - t1, "memory": mem, "total_memory": total,
                     "memory_target": len(X) * (nbytes + 8)})
        curves[v.name] = []
        print(f"  {name}: built {v.name}: train {t1 - t0:.2f} s, add {t2 - t1:.2f} s", flush=True)
        rows[-1]["obj"] = v
    # settings: nprobe alone without re-ranking; nprobe x k_factor with it.
    # Each setting is run for every variant before the next (interleaved).
    settings = [(p, None) for p in NPROBES if p <= nlist] + \
               [(p, kf) for kf in K_FACTORS for p in NPROBES_REFINE if p <= nlist]
    for nprobe, kf in settings:
        for row in rows:
            v = row["obj"]
            if (kf is not None) != v.refine:
                continue
            best = None
            for _ in range(repeat):
                t0 = time.perf_counter()
                I = v.search(Q, nprobe, kf)
                dt = time.perf_counter() - t0
                best = dt if best is None else min(best, dt)
            curves[v.name].append({"nprobe": nprobe, "k_factor": kf, "recall": recall(I, gt), "qps": len(Q) / best})
        shown = [r for r in rows if curves[r["name"]] and curves[r["name"]][-1]["nprobe"] == nprobe
                 and curves[r["name"]][-1]["k_factor"] == kf]
        print(f"  {name}: nprobe {nprobe}" + (f", k_factor {kf}" if kf else "") + ": " + ", ".join(
            f"{r['name']} {curves[r['name']][-1]['recall']:.3f}@{curves[r['name']][-1]['qps']:.0f}" for r in shown),
            flush=True)
    for row in rows:
        del row["obj"]
        at = qps_at(curves[row["name"]], TARGET)
        row["qps_at_target"] = at and at["qps"]
        row["setting_at_target"] = at and {"nprobe": at["nprobe"], "k_factor": at["k_factor"],
                                           "recall": at["recall"]}
        row["best_recall"] = max(c["recall"] for c in curves[row["name"]])
    return {"nlist": nlist, "bytes_per_vector": nbytes, "base": list(X.shape), "queries": len(Q),
            "train": list(T.shape), "rows": rows, "curves": curves}


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def report(path, meta, sets):
    lines = [f"Machine: {meta['cpu']}; faiss {meta['versions'].get('faiss')}, 1 thread, k={K}. "
             f"Variants with re-ranking sweep nprobe x k_factor (k_factor x k candidates re-ranked, "
             f"k_factor in {K_FACTORS}); the QPS at recall {TARGET} is the best measured setting that "
             "reaches it (no interpolation), and the setting is given. Memory: the inverted lists (codes + "
             "ids), the quantity the target bounds, and in all (with the refine rows).", ""]
    for name, s in sets.items():
        lines.append(f"**{name}** ({s['base'][0]:,} x {s['base'][1]}, {s['queries']:,} queries, trained on "
                     f"{s['train'][0]:,}), nlist={s['nlist']}, {s['bytes_per_vector']} B codes per vector")
        lines.append("")
        lines.append(f"| variant | QPS @ recall {TARGET} | at (nprobe, k_factor: recall) | best recall | train s | "
                     "add s | lists MB | lists / n(B+8) | all MB |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in s["rows"]:
            ratio = r["memory"] / r["memory_target"] if r["memory"] else None
            at = r.get("setting_at_target")
            where = f"{at['nprobe']}, {at['k_factor'] or '-'}: {at['recall']:.3f}" if at else "-"
            lines.append(f"| {r['name']} | {fmt(r['qps_at_target'], '.0f')} | {where} | {r['best_recall']:.3f} | "
                         f"{r['train_s']:.2f} | {r['add_s']:.2f} | {fmt(r['memory'] and r['memory'] / 1e6, '.1f')} | "
                         f"{fmt(ratio, '.3f')} | {fmt(r.get('total_memory') and r['total_memory'] / 1e6, '.1f')} |")
        ours = [r for r in s["rows"] if r["lib"] == "imgsearch" and r["qps_at_target"]]
        theirs = [r for r in s["rows"] if r["lib"] == "faiss" and r["qps_at_target"]]
        if ours and theirs:
            bo = max(ours, key=lambda r: r["qps_at_target"])
            bt = max(theirs, key=lambda r: r["qps_at_target"])
            lines.append("")
            lines.append(f"Best at recall {TARGET}: {bo['name']} {bo['qps_at_target']:.0f} QPS vs {bt['name']} "
                         f"{bt['qps_at_target']:.0f} QPS: **{bo['qps_at_target'] / bt['qps_at_target']:.2f}x**. "
                         f"Train + add: {bo['train_s'] + bo['add_s']:.2f} s vs {bt['train_s'] + bt['add_s']:.2f} s "
                         f"({(bo['train_s'] + bo['add_s']) / (bt['train_s'] + bt['add_s']):.2f}x faiss's time).")
            for nbits in (8, 4):
                for refine in (False, True):
                    suffix = "+refine" if refine else ""
                    a = [r for r in s["rows"] if r["lib"] == "imgsearch" and r["name"].endswith(f"x{nbits}{suffix}")]
                    b = [r for r in s["rows"] if r["lib"] == "faiss" and
                         r["name"].endswith(f"x{nbits}" + ("+RefineFlat" if refine else ""))]
                    if a and b:
                        a, b = a[0], b[0]
                        tr = (a["train_s"] + a["add_s"]) / (b["train_s"] + b["add_s"])
                        q = (a["qps_at_target"] / b["qps_at_target"]) if a["qps_at_target"] and b[
                            "qps_at_target"] else None
                        lines.append(f"- {a['name']} vs {b['name']}: QPS {fmt(q, '.2f')}x, train+add {tr:.2f}x "
                                     "faiss's time")
        lines.append("")
    md = "\n".join(lines)
    print(md)
    with open(path.replace(".json", ".md"), "w") as f:
        f.write(md + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(sets), figsize=(7 * len(sets), 5), squeeze=False)
        for ax, (name, s) in zip(axes[0], sets.items()):
            for vname, curve in s["curves"].items():
                curve = frontier(curve)
                ax.plot([c["recall"] for c in curve], [c["qps"] for c in curve], marker=".", label=vname,
                        linestyle="-" if vname.startswith("imgsearch") else "--")
            ax.set_yscale("log")
            ax.set_xlabel("recall@10")
            ax.set_ylabel("queries per second (1 thread)")
            ax.set_title(f"{name}: {s['bytes_per_vector']} B/vector, nlist {s['nlist']}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path.replace(".json", ".png"), dpi=110)
    except ImportError:
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="fmnist,blobs")
    ap.add_argument("--n", type=int, default=1_000_000, help="blobs base size")
    ap.add_argument("--train", type=int, default=100_000, help="blobs training sample")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--libs", default="imgsearch,faiss")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "ivfpq.json"))
    ap.add_argument("--replot", action="store_true")
    args = ap.parse_args()
    if args.replot:
        with open(args.out) as f:
            r = json.load(f)
        return report(args.out, r["meta"], r["sets"])
    from importlib import metadata

    versions = {"imgsearch": imgsearch.__version__, "numpy": np.__version__}
    try:
        versions["faiss"] = metadata.version("faiss-cpu")
    except metadata.PackageNotFoundError:
        versions["faiss"] = None
    meta = {"machine": platform.machine(), "cpu": cpu_line(), "versions": versions,
            "loadavg_start": os.getloadavg()[0]}
    libs = set(args.libs.split(","))
    sets = {}
    for name in args.sets.split(","):
        if name == "fmnist":
            X, _, Qall, _ = fashion_mnist()
            X = np.ascontiguousarray(X)
            Q = np.ascontiguousarray(Qall[: args.queries])
            T = X
        elif name == "blobs":
            X, Q = blobs(args.n, args.queries)
            rng = np.random.default_rng(1)
            T = np.ascontiguousarray(X[np.sort(rng.choice(len(X), min(args.train, len(X)), replace=False))])
        else:
            raise SystemExit(f"--sets: unknown set {name!r} (expected fmnist, blobs)")
        print(f"{name}: {X.shape[0]:,} x {X.shape[1]}", flush=True)
        sets[name] = run_set(name, X, Q, T, args.repeat, libs)
        del X, Q, T
        gc.collect()
    meta["loadavg_end"] = os.getloadavg()[0]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "sets": sets}, f, indent=1)
    report(args.out, meta, sets)


if __name__ == "__main__":
    main()
