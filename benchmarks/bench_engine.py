"""End-to-end image indexing and retrieval quality on flowers17.

1. Indexing throughput (images/s) with MobileNetV2 (the TorchScript trunk in
   ../shared/data/models, mean = std = 0.5, shorter side 256, centre crop 224,
   global average pooling, L2-normalised) on all CPU cores:
     - imgsearch: ImageSearch.add (C decoder on native threads, overlapped with torch)
     - pillow_loop: what img2vec / DeepImageSearch do -- per image: PIL open,
       convert, resize, crop, to tensor, model, pool (same model, same weights)
     - pillow_batched: the same Pillow preprocessing, batched like ours
   and the fraction of imgsearch's wall time spent outside torch.
2. Retrieval quality (every image queries the other 1,359; same class =
   relevant): mAP and precision@10 for colorhist, phash and MobileNetV2, each
   with the flat and the HNSW index.

Writes benchmarks/results/engine.json and prints markdown tables.
"""
import argparse
import csv
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import imgsearch  # noqa: E402
from imgsearch import ImageSearch  # noqa: E402

DATA = os.path.join(HERE, "..", "..", "shared", "data")
FLOWERS = os.path.join(DATA, "flowers17")
MODEL = os.path.join(DATA, "models", "mobilenet_v2_coral_features.ts.pt")


def flowers():
    with open(os.path.join(FLOWERS, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    paths = [os.path.abspath(os.path.join(FLOWERS, r["path"])) for r in rows]
    return paths, {p: r["label"] for p, r in zip(paths, rows)}


def pillow_preprocess(path, mean=0.5, std=0.5):
    from PIL import Image
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    a = np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    return ((a - mean) / std).transpose(2, 0, 1)


def bench_indexing(paths, batch_size, repeat_model):
    import torch
    results = {}
    model = torch.jit.load(MODEL).eval()

    def embed(x):
        with torch.inference_mode():
            v = model(torch.from_numpy(x)).mean((2, 3))
            return torch.nn.functional.normalize(v, dim=1).numpy()

    # warm up torch (first calls allocate and pick kernels)
    embed(np.zeros((2, 3, 224, 224), np.float32))

    # peers' loop: one image at a time
    t0 = time.perf_counter()
    feats_loop = np.concatenate([embed(pillow_preprocess(p)[None]) for p in paths])
    results["pillow_loop"] = {"seconds": time.perf_counter() - t0}

    # same preprocessing, batched
    t0 = time.perf_counter()
    out = []
    for i in range(0, len(paths), batch_size):
        out.append(embed(np.stack([pillow_preprocess(p) for p in paths[i:i + batch_size]])))
    results["pillow_batched"] = {"seconds": time.perf_counter() - t0}

    # imgsearch
    engine = ImageSearch(extractor=MODEL, index="flat", extractor_params={"mean": 0.5, "std": 0.5,
                                                                          "batch_size": batch_size})
    engine.extractor.stats = {"model_seconds": 0.0, "images": 0}
    t0 = time.perf_counter()
    report = engine.add(paths, progress=False)
    wall = time.perf_counter() - t0
    model_s = engine.extractor.stats["model_seconds"]
    results["imgsearch"] = {"seconds": wall, "model_seconds": model_s, "outside_torch": 1 - model_s / wall,
                            "failed": len(report.failed)}
    for r in results.values():
        r["images_per_s"] = len(paths) / r["seconds"]
    # the features agree with the peers' pipeline (same model, different resampling)
    ours = engine.index.get(np.arange(len(paths)))
    results["cosine_vs_pillow_loop"] = {"mean": float((ours * feats_loop).sum(1).mean()),
                                        "min": float((ours * feats_loop).sum(1).min())}
    return results, engine


def bench_quality(paths, labels, cnn_engine):
    rows = []
    lab = {p: labels[p] for p in paths}
    for name in ("colorhist", "phash", "mobilenet_v2"):
        for kind in ("flat", "hnsw"):
            if name == "mobilenet_v2":
                if cnn_engine is None:
                    continue
                # the CNN vectors were computed once, in the indexing benchmark
                eng = ImageSearch(extractor=cnn_engine.extractor, index=kind)
                eng.add_vectors(cnn_engine.index.get(np.arange(len(paths))), paths=cnn_engine.paths)
            else:
                eng = ImageSearch(extractor=name, index=kind)
                eng.add(paths, progress=False)
            t0 = time.perf_counter()
            s = eng.evaluate(lab, ks=(1, 10))
            rows.append({"extractor": name, "index": kind, "metric": eng.index.metric, "dim": eng.extractor.dim,
                         "mAP": s["mAP"], "precision@10": s["precision@10"], "precision@1": s["precision@1"],
                         "eval_seconds": time.perf_counter() - t0})
            print(f"{name:13s} {kind:5s} mAP {s['mAP']:.4f}  P@10 {s['precision@10']:.4f}", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (quick runs)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    paths, labels = flowers()
    if args.limit:
        paths = paths[:: max(1, len(paths) // args.limit)][: args.limit]
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "simd": imgsearch.capabilities()["simd"]},
           "images": len(paths)}
    engine = None
    if not args.no_torch:
        import torch
        out["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads()}
        out["indexing"], engine = bench_indexing(paths, args.batch_size, 1)
        for k, v in out["indexing"].items():
            print(k, v, flush=True)
    out["quality"] = bench_quality(paths, labels, engine)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "engine.json"), "w") as f:
        json.dump(out, f, indent=1)

    if "indexing" in out:
        ix = out["indexing"]
        base = ix["pillow_loop"]["images_per_s"]
        print(f"\n| pipeline ({len(paths)} flowers17 JPEGs, MobileNetV2, {os.cpu_count()} cores) | images/s | vs Pillow+torch loop |")
        print("|---|---|---|")
        for k, label in (("imgsearch", "imgsearch `ImageSearch.add`"), ("pillow_loop", "Pillow + torch, per image"),
                         ("pillow_batched", f"Pillow + torch, batches of {args.batch_size}")):
            print(f"| {label} | {ix[k]['images_per_s']:.1f} | {ix[k]['images_per_s'] / base:.2f}x |")
        print(f"\nimgsearch wall time outside torch: {100 * ix['imgsearch']['outside_torch']:.1f}%; "
              f"feature cosine vs the Pillow pipeline: mean {ix['cosine_vs_pillow_loop']['mean']:.4f}")
    print("\n| extractor | index | metric | dim | mAP | precision@10 | precision@1 |")
    print("|---|---|---|---|---|---|---|")
    for r in out["quality"]:
        print(f"| {r['extractor']} | {r['index']} | {r['metric']} | {r['dim']} | {r['mAP']:.4f} | "
              f"{r['precision@10']:.4f} | {r['precision@1']:.4f} |")


if __name__ == "__main__":
    main()
