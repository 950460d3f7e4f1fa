"""`make demo`: build indexes over real vectors, search them, print recall and speed.

Until the image pipeline lands, the demo runs on Fashion-MNIST (60,000 x 784
train images as the base, test images as queries); an IMAGES folder, if given,
is noted but not yet indexed.
"""
import argparse
import sys
import time

import numpy as np

import imgsearch
from imgsearch.datasets import fashion_mnist


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m imgsearch._demo")
    ap.add_argument("--images", help="a folder of images (indexed once the image pipeline exists)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args(argv)
    if args.images:
        print(f"note: image folders are not indexed yet; {args.images!r} ignored, using Fashion-MNIST")

    caps = imgsearch.capabilities()
    print(f"imgsearch {imgsearch.__version__}: SIMD level {caps['simd']}, {caps['cpus']} CPUs")
    X, y, Q, yq = fashion_mnist()
    Q = Q[: args.queries]
    yq = yq[: args.queries]
    print(f"Fashion-MNIST: base {X.shape}, queries {Q.shape}, k={args.k}")

    t0 = time.perf_counter()
    index = imgsearch.FlatIndex.from_array(X)
    print(f"FlatIndex.from_array: {1e3 * (time.perf_counter() - t0):.1f} ms (no copy)")

    t0 = time.perf_counter()
    D, I = index.search(Q, k=args.k)
    dt = time.perf_counter() - t0
    print(f"exact batch search: {len(Q) / dt:,.0f} queries/s ({1e3 * dt:.0f} ms for {len(Q)})")

    t0 = time.perf_counter()
    for q in Q[:50]:
        index.search(q, k=args.k)
    dt = time.perf_counter() - t0
    print(f"one query per call: {50 / dt:,.1f} queries/s")

    # exact search: recall against itself is 1 by construction; what a user wants
    # to see is how often the neighbours share the query's class.
    agree = (y[I] == yq[:, None]).mean()
    print(f"label agreement of the {args.k} nearest neighbours: {agree:.3f}")
    # exactness against NumPy brute force on a few queries
    hits = 0
    for q, row in zip(Q[:10], I[:10]):
        diff = X - q
        ref = np.argsort(np.einsum("ij,ij->i", diff, diff), kind="stable")[: args.k]
        hits += len(set(ref.tolist()) & set(row.tolist()))
    print(f"recall@{args.k} against NumPy brute force (10 queries): {hits / (10 * args.k):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
