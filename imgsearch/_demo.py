"""`make demo IMAGES=<folder>`: index a folder, search it, write an HTML page of results.

    python -m imgsearch._demo --images photos/ [--extractor NAME|PATH] [--out demo_results.html]

The extractor defaults to the pretrained MobileNetV2 trunk when torch is
installed and its TorchScript file is on disk (this project's data, or
--extractor PATH), else the colour histogram.  Without --images the demo
indexes Fashion-MNIST vectors (Debian package dataset-fashion-mnist) with the
exact and the HNSW index and prints speed and recall.
"""
import argparse
import os
import sys
import time

import numpy as np

import imgsearch
from imgsearch.datasets import shared_data

DEFAULT_MODEL = shared_data("models", "mobilenet_v2_coral_features.ts.pt")


def pick_extractor(requested):
    """The extractor to use; a model file brings its own preprocessing (see
    imgsearch.extractors.declared_preprocess), so no mean/std is given here."""
    if requested:
        return requested
    try:
        import torch  # noqa: F401
        if os.path.exists(DEFAULT_MODEL):
            return os.path.abspath(DEFAULT_MODEL)
    except ImportError:
        pass
    return "colorhist"


def folder_labels(folder):
    """A labels.csv in the folder, else its sub-folders' names when there are two or more."""
    path = os.path.join(folder, "labels.csv")
    if os.path.exists(path):
        return path
    subdirs = [d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))]
    return "folders" if len(subdirs) > 1 else None


def demo_images(args):
    folder = args.images
    if not os.path.isdir(folder):
        print(f"error: {folder!r} is not a folder", file=sys.stderr)
        return 2
    name = pick_extractor(args.extractor)
    print(f"imgsearch {imgsearch.__version__} ({imgsearch.capabilities()['simd']} SIMD): indexing {folder} "
          f"with {os.path.basename(name)}")
    engine = imgsearch.ImageSearch(extractor=name, index="hnsw")
    report = engine.add(folder)
    n = report.added + report.updated
    print(f"indexed {n} images in {report.seconds:.1f} s ({n / max(report.seconds, 1e-9):.1f} images/s); "
          f"{len(report.failed)} unreadable")
    for path, reason in report.failed[:10]:
        print(f"  skipped {path}: {reason}")
    if not len(engine):
        print("nothing to search")
        return 1
    paths = engine.paths
    queries = [paths[i] for i in np.linspace(0, len(paths) - 1, min(5, len(paths))).astype(int)]
    t0 = time.perf_counter()
    hits = engine.search(queries, k=8)
    print(f"searched {len(queries)} queries in {1e3 * (time.perf_counter() - t0):.1f} ms")
    for q, query in enumerate(queries):
        print(f"  {os.path.relpath(query, folder)} -> " +
              ", ".join(os.path.relpath(h['path'], folder) for h in hits[q][:3]))
    hits.save_html(args.out, title=f"imgsearch: {folder}")
    print(f"wrote {args.out}")
    labels = folder_labels(folder)
    if labels is not None:
        scores = engine.evaluate(labels)
        print("retrieval quality (each image queries the rest): " +
              ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float)))
    return 0


def demo_vectors(args):
    from imgsearch.datasets import fashion_mnist
    caps = imgsearch.capabilities()
    print(f"imgsearch {imgsearch.__version__}: SIMD level {caps['simd']}, {caps['cpus']} CPUs")
    X, y, Q, yq = fashion_mnist()
    Q = Q[:1000]
    print(f"Fashion-MNIST: base {X.shape}, queries {Q.shape}, k=10")
    flat = imgsearch.FlatIndex.from_array(X)
    t0 = time.perf_counter()
    D, truth = flat.search(Q, k=10)
    print(f"exact FlatIndex: {len(Q) / (time.perf_counter() - t0):,.0f} queries/s")
    if hasattr(imgsearch, "HNSWIndex"):
        t0 = time.perf_counter()
        h = imgsearch.HNSWIndex(X.shape[1])
        h.add(X)
        print(f"HNSWIndex built in {time.perf_counter() - t0:.1f} s")
        for ef in (16, 64):
            t0 = time.perf_counter()
            _, I = h.search(Q, k=10, ef=ef, threads=1)
            dt = time.perf_counter() - t0
            rec = imgsearch.evaluate.recall_at_k(I, truth)
            print(f"  ef={ef}: {len(Q) / dt:,.0f} queries/s on one thread, recall@10 {rec:.3f}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m imgsearch._demo")
    ap.add_argument("--images", help="a folder of images to index and search")
    ap.add_argument("--extractor", help="colorhist, phash, a model name or a TorchScript file")
    ap.add_argument("--out", default="demo_results.html", help="the HTML page of results")
    args = ap.parse_args(argv)
    return demo_images(args) if args.images else demo_vectors(args)


if __name__ == "__main__":
    sys.exit(main())
