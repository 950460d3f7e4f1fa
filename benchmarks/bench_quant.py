"""k-means and product quantization: imgsearch's C core against faiss-cpu, one thread.

Both sides run on one thread (faiss.omp_set_num_threads(1), OMP_NUM_THREADS=1,
nthreads=1 here; OpenBLAS is on one thread in both), with the same data and
the same parameters: 25 Lloyd iterations, faiss's default subsample of
256 points per centroid, seeding by a random sample of points.  The two
sides run interleaved within each repeat (imgsearch, faiss, imgsearch, ...)
so that a load spike on the shared machine hits both; the best of --repeat
is kept.  The ratio column is faiss time / imgsearch time (> 1: imgsearch is
faster).  Objectives are printed so that a faster run that converged worse
would show: imgsearch reports the mean squared distance to its final
centroids, faiss the one of its last assignment.

Cases:
  kmeans   100,000 x 128 clustered Gaussian, k = 1024
  kmeans   Fashion-MNIST train images, 60,000 x 784 (scaled to [0, 1]), k = 256
  pq train + encode, 100,000 x 128, m = 16 nbits = 8 and m = 32 nbits = 4
  pq encode 1,000,000 x 128 with the m = 16 nbits = 8 codebooks

Writes benchmarks/results/quant.json and quant.md.

    OMP_NUM_THREADS=1 python benchmarks/bench_quant.py [--repeat 2] [--quick]
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from imgsearch import _core  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def clustered(n, d, centres, rng):
    C = rng.normal(size=(centres, d)).astype(np.float32) * 3
    return (C[rng.integers(0, centres, n)] + rng.normal(size=(n, d)).astype(np.float32)).astype(np.float32)


def fashion_mnist_train():
    try:
        from imgsearch.datasets import fashion_mnist
        X = fashion_mnist()[0]
        return np.ascontiguousarray(X, dtype=np.float32)
    except Exception as e:  # the Debian package may be missing: clustered data of the same shape
        print(f"Fashion-MNIST not available ({e}); using clustered random data 60000 x 784")
        return clustered(60000, 784, 300, np.random.default_rng(1))


def best_of(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smaller data, for a smoke run")
    args = ap.parse_args()
    import faiss
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    scale = 10 if args.quick else 1
    X128 = clustered(100_000 // scale, 128, 2000, rng)
    Xf = fashion_mnist_train()[: 60000 // scale]
    Xbig = clustered(1_000_000 // scale, 128, 2000, rng)
    rows = []

    def compare(name, ours, theirs, work=None):
        t_ours, t_theirs = [], []
        out_ours = out_theirs = None
        for _ in range(args.repeat):   # interleaved
            t, out_ours = best_of(ours, 1)
            t_ours.append(t)
            t, out_theirs = best_of(theirs, 1)
            t_theirs.append(t)
        row = {"case": name, "imgsearch_s": min(t_ours), "faiss_s": min(t_theirs),
               "ratio": min(t_theirs) / min(t_ours)}
        if work:
            row.update(work(out_ours, out_theirs))
        rows.append(row)
        print(f"{name:52s} imgsearch {row['imgsearch_s']:8.3f} s   faiss {row['faiss_s']:8.3f} s   "
              f"faiss/imgsearch {row['ratio']:5.2f}" + "".join(f"   {k} {v:.4g}" for k, v in row.items()
                                                         if k not in ("case", "imgsearch_s", "faiss_s", "ratio")),
              flush=True)
        return out_ours, out_theirs

    for X, k, label in ((X128, 1024, "clustered"), (Xf, 256, "Fashion-MNIST")):
        n, d = X.shape

        def ours():
            return _core._kmeans(X, k, niter=25, seed=1, nthreads=1)

        def theirs():
            km = faiss.Kmeans(d, k, niter=25, seed=1, verbose=False)
            km.train(X)
            return km

        compare(f"kmeans {label} {n}x{d} k={k}", ours, theirs,
                lambda o, t: {"obj_imgsearch": o[1], "obj_faiss": float(t.obj[-1]) / len(X)})

    for m, nbits in ((16, 8), (32, 4)):
        d = X128.shape[1]

        def ours_train():
            return _core._pq_train(X128, m, nbits, niter=25, seed=1, nthreads=1)

        def theirs_train():
            pq = faiss.ProductQuantizer(d, m, nbits)
            pq.train(X128)
            return pq

        cb, pq = compare(f"pq train {X128.shape[0]}x{d} m={m} nbits={nbits}", ours_train, theirs_train)

        def mse_pair(codes_ours, codes_theirs):
            rec_o = _core._pq_decode(cb, codes_ours, nbits)
            rec_t = pq.decode(codes_theirs)
            return {"mse_imgsearch": float(((rec_o - X128) ** 2).sum(1).mean()),
                    "mse_faiss": float(((rec_t - X128) ** 2).sum(1).mean())}

        compare(f"pq encode {X128.shape[0]}x{d} m={m} nbits={nbits}",
                lambda: _core._pq_encode(cb, X128, nbits, nthreads=1), lambda: pq.compute_codes(X128), mse_pair)
        if nbits == 8:
            codes_o, codes_t = compare(f"pq encode {Xbig.shape[0]}x{d} m={m} nbits={nbits}",
                                       lambda: _core._pq_encode(cb, Xbig, nbits, nthreads=1),
                                       lambda: pq.compute_codes(Xbig))

    os.makedirs(RESULTS, exist_ok=True)
    meta = {"faiss": faiss.__version__, "simd": _core.capabilities()["simd"], "threads": 1,
            "repeat": args.repeat, "quick": args.quick}
    if not args.quick:
        with open(os.path.join(RESULTS, "quant.json"), "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        lines = [f"One thread each, best of {args.repeat} interleaved runs; faiss {meta['faiss']}, "
                 f"imgsearch SIMD level {meta['simd']}. Ratio = faiss time / imgsearch time (> 1: imgsearch faster).",
                 "", "| case | imgsearch (s) | faiss (s) | ratio | notes |", "|---|---:|---:|---:|---|"]
        for r in rows:
            notes = ", ".join(f"{k} {v:.4g}" for k, v in r.items()
                              if k not in ("case", "imgsearch_s", "faiss_s", "ratio"))
            lines.append(f"| {r['case']} | {r['imgsearch_s']:.3f} | {r['faiss_s']:.3f} | {r['ratio']:.2f} | {notes} |")
        with open(os.path.join(RESULTS, "quant.md"), "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
