"""Exact search and pairwise distances: imgsearch vs faiss-cpu vs NumPy vs simsimd.

Fashion-MNIST (60,000 x 784 base, test images as queries, k=10), one run,
same inputs for everyone, best of --repeat timings.  The libraries are
interleaved within each repeat (ours, faiss, NumPy, ours, ...), so a noisy,
shared machine slows all of them alike.  Prints Markdown tables and writes
benchmarks/results/flat.json (and flat.md next to it).

    python benchmarks/bench_flat.py [--repeat 3] [--batch 2000] [--singles 200]
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import imgsearch  # noqa: E402
from imgsearch.datasets import fashion_mnist  # noqa: E402
from _levels import at_level, cpu_line, label, lower  # noqa: E402


def interleaved(fns, repeat):
    """Best time and last output of each named callable, alternating them
    within every repeat.  A callable may be wrapped in a context (thread
    limits) by passing (fn, context_factory)."""
    best = {name: float("inf") for name in fns}
    out = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            fn, ctx = fn if isinstance(fn, tuple) else (fn, None)
            with ctx() if ctx else _null():
                t0 = time.perf_counter()
                out[name] = fn()
                best[name] = min(best[name], time.perf_counter() - t0)
    return best, out


def _null():
    import contextlib
    return contextlib.nullcontext()


def recall(I, gt, k):
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(I, gt)]))


def ground_truth(X, Q, k):
    """Exact neighbours in float64, blocked to bound memory."""
    X64 = X.astype(np.float64)
    xn = (X64 * X64).sum(1)
    out = np.empty((len(Q), k), np.int64)
    for s in range(0, len(Q), 250):
        q = Q[s:s + 250].astype(np.float64)
        d = xn[None, :] - 2 * q @ X64.T
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.take_along_axis(d, part, 1).argsort(1)
        out[s:s + 250] = np.take_along_axis(part, order, 1)
    return out


def blas_limits(n):
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(limits=n)
    except ImportError:  # numpy keeps its own thread count
        import contextlib
        return contextlib.nullcontext()


def numpy_knn(X, xn, Q, k):
    d = xn[None, :] - 2 * (Q @ X.T)
    part = np.argpartition(d, k, axis=1)[:, :k]
    order = np.take_along_axis(d, part, 1).argsort(1)
    return np.take_along_axis(part, order, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--singles", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "flat.json"))
    args = ap.parse_args()

    import faiss
    import simsimd

    X, _, Qall, _ = fashion_mnist()
    k = 10
    Q = np.ascontiguousarray(Qall[: args.batch])
    singles = np.ascontiguousarray(Qall[-args.singles:])
    gt = ground_truth(X, Q, k)
    gt_single = ground_truth(X, singles, k)
    xn = (X * X).sum(1)
    rows = []
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "imgsearch": imgsearch.__version__,
        "simd": imgsearch.capabilities()["simd"],
        "cpu": cpu_line(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "simsimd": getattr(simsimd, "__version__", "?"),
        "base": list(X.shape),
        "k": k,
    }

    index = imgsearch.FlatIndex.from_array(X)
    fidx = faiss.IndexFlatL2(X.shape[1])
    fidx.add(X)

    def add(task, lib, threads, nq, seconds, I, truth, **extra):
        row = {"task": task, "library": lib, "threads": threads, "queries": nq,
               "seconds": seconds, "qps": nq / seconds, "recall@10": recall(I, truth, k)}
        row.update(extra)
        rows.append(row)
        print(f"{task:14s} {lib:10s} threads={threads} {nq / seconds:10.1f} QPS  recall={row['recall@10']:.4f}", flush=True)

    # ---- batch of queries ---------------------------------------------------
    def faiss_with(threads, fn):
        def run():
            faiss.omp_set_num_threads(threads)
            return fn()
        return run

    levels = [label(lv) for lv in lower()]
    libs = ["imgsearch"] + levels + ["faiss", "numpy"]
    for threads in (1, 2):
        fns = {"imgsearch": lambda: index.search(Q, k=k, threads=threads)}
        for lv in lower():
            fns[label(lv)] = (lambda: index.search(Q, k=k, threads=threads), lambda lv=lv: at_level(lv))
        fns["faiss"] = faiss_with(threads, lambda: fidx.search(Q, k))
        fns["numpy"] = (lambda: (None, numpy_knn(X, xn, Q, k)), lambda: blas_limits(threads))
        best, out = interleaved(fns, args.repeat)
        for lib in libs:
            add("batch", lib, threads, len(Q), best[lib], out[lib][1], gt)

    # ---- one query per call ---------------------------------------------------
    bytes_scanned = X.nbytes
    for threads in (1, 2):
        one_by_one = lambda: np.vstack([index.search(q, k=k, threads=threads)[1] for q in singles])  # noqa: E731
        fns = {"imgsearch": one_by_one}
        for lv in lower():
            fns[label(lv)] = (one_by_one, lambda lv=lv: at_level(lv))
        fns["faiss"] = faiss_with(threads, lambda: np.vstack([fidx.search(q[None], k)[1] for q in singles]))
        fns["numpy"] = (lambda: np.vstack([numpy_knn(X, xn, q[None], k) for q in singles]),
                        lambda: blas_limits(threads))
        best, out = interleaved(fns, args.repeat)
        for lib in libs:
            add("single", lib, threads, len(singles), best[lib], out[lib], gt_single,
                gbps=bytes_scanned * len(singles) / best[lib] / 1e9)

    # ---- pairwise -------------------------------------------------------------
    A = np.ascontiguousarray(Qall[:500])
    B = np.ascontiguousarray(X[:10000])
    pw = []
    names = {"l2": "sqeuclidean", "cosine": "cosine", "ip": "inner", "l1": None}
    for metric, sname in names.items():
        for threads in (1, 2):
            fns = {"imgsearch": lambda: imgsearch.distance.pairwise(A, B, metric, threads=threads)}
            entry = {"metric": metric, "threads": threads, "pairs": A.shape[0] * B.shape[0]}
            if sname:
                try:
                    simsimd.cdist(A[:2], B[:2], metric=sname, threads=threads)
                    fns["simsimd"] = lambda: np.asarray(simsimd.cdist(A, B, metric=sname, threads=threads))
                except Exception as e:  # a metric this simsimd lacks
                    entry["simsimd_error"] = str(e)
            best, out = interleaved(fns, args.repeat)
            entry["imgsearch_s"] = best["imgsearch"]
            if "simsimd" in best:
                entry["simsimd_s"] = best["simsimd"]
                ref = out["simsimd"] if metric != "ip" else 1 - out["simsimd"]
                entry["max_rel_diff_vs_simsimd"] = float(np.max(np.abs(out["imgsearch"] - ref) / (np.abs(ref) + 1)))
            if metric == "l1":
                from scipy.spatial.distance import cdist
                best, _ = interleaved({"scipy": lambda: cdist(A, B, "cityblock")}, 1)
                entry["scipy_s"] = best["scipy"]
            t = entry["imgsearch_s"]
            pw.append(entry)
            print(f"pairwise {metric:6s} threads={threads} imgsearch {t * 1e3:8.1f} ms  "
                  + "  ".join(f"{k2} {v * 1e3:8.1f} ms" for k2, v in entry.items() if k2.endswith("_s") and k2 != "imgsearch_s"),
                  flush=True)

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "search": rows, "pairwise": pw}, f, indent=2)

    # ---- Markdown -------------------------------------------------------------
    lines = [f"Fashion-MNIST {X.shape[0]:,} x {X.shape[1]}, k={k}; {meta['cpu']}; "
             f"faiss {meta['faiss']}, best of {args.repeat} interleaved repeats. `imgsearch` runs at the best "
             "SIMD level, `imgsearch[level]` at a lower one (same index, same run).", "",
             "| task | threads | library | QPS | vs faiss | recall@10 |",
             "|---|---|---|---:|---:|---:|"]
    for task in ("batch", "single"):
        for threads in (1, 2):
            r = {x["library"]: x for x in rows if x["task"] == task and x["threads"] == threads}
            for lib in libs:
                extra = f" ({r[lib]['gbps']:.1f} GB/s)" if task == "single" and lib != "numpy" and "gbps" in r[lib] else ""
                lines.append(f"| {task} ({r[lib]['queries']} q) | {threads} | {lib} | {r[lib]['qps']:,.1f}{extra} | "
                             f"{r[lib]['qps'] / r['faiss']['qps']:.2f}x | {r[lib]['recall@10']:.4f} |")
    lines += ["", "| pairwise 500 x 10,000 x 784 | threads | imgsearch ms | other ms | ratio (other / imgsearch) |",
              "|---|---|---|---|---|"]
    for e in pw:
        other = e.get("simsimd_s") or e.get("scipy_s")
        who = "simsimd" if "simsimd_s" in e else "scipy cdist"
        lines.append(f"| {e['metric']} | {e['threads']} | {e['imgsearch_s'] * 1e3:.1f} | "
                     f"{other * 1e3:.1f} ({who}) | {other / e['imgsearch_s']:.2f}x |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
