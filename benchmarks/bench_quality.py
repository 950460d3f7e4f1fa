"""Retrieval quality on flowers17: pooling, multi-scale, PCA-whitening, alpha-QE, alpha-DBA.

Every image queries the other 1,359 (leave-one-out, same class = relevant):
mAP over the full ranking and precision@10, through ``ImageSearch.evaluate``
(a flat index: exact, so the rows compare the features, not the index).

1. Extraction: one TorchExtractor per pooling / scale option over all images
   (MobileNetV2, the TorchScript trunk in ../shared/data/models, mean = std =
   0.5, shorter side 256, centre crop 224; and the same weights through the
   named builder "mobilenet_v2", which ImageSearch(extractor="mobilenet_v2")
   uses).  The options are timed interleaved: the images are cut into
   --rounds slices and every option extracts each slice in turn (rotating who
   goes first), so the load other processes put on the machine falls on all
   alike; each option's time is reported relative to average pooling at one
   scale with the same backbone.  The pooled features are cached under
   build/quality_cache/ (--no-cache re-extracts), so the post-processing rows
   reuse them.
2. Post-processing on cached features, through the engine: PCA-whitening with
   and without dimension reduction, alpha-QE (search(expand=n)), alpha-DBA
   (ImageSearch(dba=n)), and combinations; whitening learned on small subsets
   too (how the default behaves on a small collection).
3. Classic features: "colorhist", and "lbp" / "colorhist+lbp" when registered.

Writes benchmarks/results/quality.json and quality.md.
"""
import argparse
import csv
import json
import math
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import imgsearch  # noqa: E402
from imgsearch import ImageSearch, PCAWhitening  # noqa: E402
from imgsearch.datasets import shared_data  # noqa: E402

DATA = shared_data()
FLOWERS = os.path.join(DATA, "flowers17")
TS_MODEL = os.path.join(DATA, "models", "mobilenet_v2_coral_features.ts.pt")
SD_MODEL = os.path.join(DATA, "models", "mobilenet_v2_coral_imagenet.pt")
CACHE = os.path.join(ROOT, "build", "quality_cache")
MS = (1.0, 1 / math.sqrt(2))

# name -> (backbone, TorchExtractor options); "ts" = the TorchScript trunk, "named" = the named builder
EXTRACTIONS = {
    "avg": ("ts", {"pooling": "avg"}),
    "max": ("ts", {"pooling": "max"}),
    "gem p=2": ("ts", {"pooling": "gem", "gem_p": 2.0}),
    "gem p=3": ("ts", {"pooling": "gem", "gem_p": 3.0}),
    "gem p=4": ("ts", {"pooling": "gem", "gem_p": 4.0}),
    "gem p=6": ("ts", {"pooling": "gem", "gem_p": 6.0}),
    "avg, 2 scales": ("ts", {"pooling": "avg", "scales": MS}),
    "gem p=3, 2 scales": ("ts", {"pooling": "gem", "gem_p": 3.0, "scales": MS}),
    "named: avg": ("named", {"pooling": "avg"}),
    "named: gem p=3": ("named", {"pooling": "gem", "gem_p": 3.0}),
}
BASELINE = {"ts": "avg", "named": "named: avg"}


def flowers():
    with open(os.path.join(FLOWERS, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    paths = [os.path.abspath(os.path.join(FLOWERS, r["path"])) for r in rows]
    return paths, {p: r["label"] for p, r in zip(paths, rows)}


def make_extractor(backbone, options, batch_size=32):
    from imgsearch.extractors import TorchExtractor, build_extractor
    if backbone == "ts":
        return TorchExtractor.from_torchscript(TS_MODEL, mean=0.5, std=0.5, batch_size=batch_size, **options)
    return build_extractor("mobilenet_v2", weights=SD_MODEL, batch_size=batch_size, **options)


def cache_path(name):
    return os.path.join(CACHE, name.replace(" ", "_").replace(",", "").replace("=", "") + ".npy")


def extract_all(paths, names, rounds, use_cache):
    """{name: features}, {name: seconds}: options not cached are extracted, interleaved."""
    feats, seconds = {}, {}
    timing_file = os.path.join(CACHE, "seconds.json")
    saved_seconds = json.load(open(timing_file)) if use_cache and os.path.exists(timing_file) else {}
    todo = []
    for name in names:
        if use_cache and os.path.exists(cache_path(name)) and name in saved_seconds:
            feats[name], seconds[name] = np.load(cache_path(name)), saved_seconds[name]
        else:
            todo.append(name)
    if todo:
        # a timed group must hold its baseline, so that its ratios come from one run
        for backbone in {EXTRACTIONS[n][0] for n in todo}:
            base = BASELINE[backbone]
            if base not in todo:
                todo.append(base)
        exs = {n: make_extractor(*EXTRACTIONS[n]) for n in todo}
        step = -(-len(paths) // rounds)
        for ex in exs.values():  # warm up on a slice: first calls allocate, the JIT profiles each batch shape
            ex.extract_files(paths[-step:])
        parts = {n: [] for n in todo}
        clock = dict.fromkeys(todo, 0.0)
        cpu = dict.fromkeys(todo, 0.0)
        for r, s0 in enumerate(range(0, len(paths), step)):
            chunk = paths[s0:s0 + step]
            order = todo[r % len(todo):] + todo[:r % len(todo)]
            for n in order:
                t0, c0 = time.perf_counter(), time.process_time()
                X, failed = exs[n].extract_files(chunk)
                clock[n] += time.perf_counter() - t0
                cpu[n] += time.process_time() - c0
                assert not failed, failed
                parts[n].append(X)
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {clock[n]:.1f}s" for n in todo), flush=True)
        os.makedirs(CACHE, exist_ok=True)
        for n in todo:
            feats[n], seconds[n] = np.concatenate(parts[n]), {"wall": clock[n], "cpu": cpu[n]}
            np.save(cache_path(n), feats[n])
            saved_seconds[n] = seconds[n]
        with open(timing_file, "w") as f:
            json.dump(saved_seconds, f, indent=1)
    return feats, seconds


def evaluate(extractor, X, paths, labels, *, whitening=None, dba=0, expand=0, alpha=3.0, subset=None):
    """mAP / P@10 of leave-one-out search over X through an engine (flat index)."""
    if subset is not None:
        X, paths = X[subset], [paths[i] for i in subset]
    t0 = time.perf_counter()
    eng = ImageSearch(extractor=extractor, index="flat", whitening=whitening, dba=dba, expand=expand, alpha=alpha)
    eng.add_vectors(X, paths=paths)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = eng.evaluate({p: labels[p] for p in paths}, ks=(10,))
    return {"mAP": s["mAP"], "precision@10": s["precision@10"], "dim": eng.index.dim, "queries": s["queries"],
            "build_seconds": build, "eval_seconds": time.perf_counter() - t0}


def post_rows():
    """(label, options) of the post-processing grid over one pooled feature set."""
    W = PCAWhitening
    rows = [("", {})]
    for d, power, shrink in ((None, 0.5, 0.0), (512, 0.5, 0.0), (256, 0.5, 0.0), (128, 0.5, 0.0),
                             (512, 0.5, 0.5), (512, 0.25, 0.0), (128, 0.25, 0.0), (128, 0.1, 0.0),
                             (None, 0.0, 0.0), (256, 0.0, 0.0), (128, 0.0, 0.0), (64, 0.0, 0.0)):
        label = f"+ whitening {d or 'full'}" + (f", power {power:g}" if power != 0.5 else "") + \
            (f", shrinkage {shrink:g}" if shrink else "")
        rows.append((label, {"whitening": lambda d=d, p=power, s=shrink: W(dim_out=d, power=p, shrinkage=s)}))
    for n in (1, 2, 3, 5, 10):
        rows.append((f"+ QE {n}", {"expand": n}))
    for n in (1, 2, 3, 5, 8):
        rows.append((f"+ DBA {n}", {"dba": n}))
    return rows


def combo_rows(whitening):
    """(label, options) of whitening (a factory) combined with QE and DBA."""
    rows = [("", {"whitening": whitening})]
    for n in (2, 5):
        rows.append((f"+ QE {n}", {"whitening": whitening, "expand": n}))
    for n in (3, 5, 8):
        rows.append((f"+ DBA {n}", {"whitening": whitening, "dba": n}))
    for d, q in ((3, 2), (3, 5), (5, 5), (8, 5)):
        rows.append((f"+ DBA {d} + QE {q}", {"whitening": whitening, "dba": d, "expand": q}))
    return rows


def run_rows(name, feats, extractor, paths, labels, rows, prefix=""):
    out = []
    for label, opt in rows:
        opt = dict(opt)
        if callable(opt.get("whitening")):
            opt["whitening"] = opt["whitening"]()
        r = evaluate(extractor, feats, paths, labels, **opt)
        r.update(features=name, postprocessing=(prefix + " " + label).strip())
        out.append(r)
        print(f"{name:18s} {r['postprocessing']:45s} dim {r['dim']:4d}  mAP {r['mAP']:.4f}  "
              f"P@10 {r['precision@10']:.4f}", flush=True)
    return out


def classic_rows(paths, labels, notes):
    """colorhist, and the texture extractors when this build registers them (else a note)."""
    out = []
    registered = imgsearch.features.registered()
    for name in ("colorhist", "lbp", "colorhist+lbp"):
        if name not in registered:
            notes.append(f"extractor {name!r} is not registered in this build (imgsearch.features): no row")
            print("note:", notes[-1], flush=True)
            continue
        eng = ImageSearch(extractor=name, index="flat")
        t0 = time.perf_counter()
        eng.add(paths, progress=False)
        seconds = time.perf_counter() - t0
        s = eng.evaluate({p: labels[p] for p in paths}, ks=(10,))
        out.append({"features": name, "postprocessing": "", "mAP": s["mAP"], "precision@10": s["precision@10"],
                    "dim": eng.index.dim, "extract_seconds": seconds, "timing": "own run, not interleaved"})
        print(f"{name:18s} mAP {s['mAP']:.4f}  P@10 {s['precision@10']:.4f}  {seconds:.1f} s", flush=True)
    return out


def default_rows(feats, seconds, paths, labels):
    """The default ImageSearch(extractor="mobilenet_v2"): its extractor settings must be
    one of the timed options (checked), its engine options are the recommended ones."""
    eng = ImageSearch(extractor="mobilenet_v2", weights=SD_MODEL, index="flat")
    cfg = eng.extractor.config()
    timed = next((n for n, (b, o) in EXTRACTIONS.items() if b == "named" and all(
        _same(cfg.get(k), v) for k, v in {"pooling": "avg", "gem_p": 3.0, "scales": (1.0,), **o}.items())), None)
    if timed is None:
        raise SystemExit(f"the default extractor settings {cfg} are not among the timed options: add them")
    # the cached features are what the default extractor gives (a few images re-extracted)
    sample = paths[::97]
    got = eng.extractor.extract(sample)
    cos = float((got * feats[timed][::97]).sum(1).min())
    t0 = time.perf_counter()
    eng.add_vectors(feats[timed], paths=paths)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = eng.evaluate({p: labels[p] for p in paths}, ks=(10,))
    row = {"features": f"default: ImageSearch(extractor=\"mobilenet_v2\") ({timed[len('named: '):]})",
           "postprocessing": _describe(eng), "mAP": s["mAP"], "precision@10": s["precision@10"],
           "dim": eng.index.dim, "timed_as": timed, "min_cosine_to_cached": cos, "default": True,
           "build_seconds": build, "eval_seconds": time.perf_counter() - t0, "queries": s["queries"]}
    print(row, flush=True)
    return row, eng


def _same(a, b):
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return [round(float(x), 6) for x in a] == [round(float(x), 6) for x in b]
    return a == b


def _describe(eng):
    parts = []
    w = eng.whitening
    if w is not None:
        parts.append(f"+ whitening {w.dim_out or 'full'}" + (f", power {w.power:g}" if w.power != 0.5 else "")
                     + (f", shrinkage {w.shrinkage:g}" if w.shrinkage else ""))
    if eng.dba:
        parts.append(f"+ DBA {eng.dba}")
    if eng.expand:
        parts.append(f"+ QE {eng.expand}")
    return " ".join(parts)


def small_collection_rows(feats, paths, labels, per_class_list, extractor):
    """Whitening learned on small collections: the default's options vs none, on
    the first images of each class (every image still queries the rest)."""
    defaults = dict(getattr(make_extractor("named", {}), "engine_defaults", None) or {})
    out = []
    classes = sorted(set(labels.values()))
    by_class = {c: [i for i, p in enumerate(paths) if labels[p] == c] for c in classes}
    for per in per_class_list:
        subset = sorted(i for c in classes for i in by_class[c][:per])
        for label, opt in (("", {}), ("default options", {
                "whitening": PCAWhitening(**defaults["whitening"]) if defaults.get("whitening") else None,
                "dba": defaults.get("dba", 0), "expand": defaults.get("expand", 0)})):
            r = evaluate(extractor, feats, paths, labels, subset=subset, **opt)
            r.update(features=f"{len(subset)} images ({per} per class)", postprocessing=label)
            out.append(r)
            print(f"{r['features']:26s} {label:18s} dim {r['dim']:4d}  mAP {r['mAP']:.4f}  "
                  f"P@10 {r['precision@10']:.4f}", flush=True)
    return out


def markdown(out):
    t = out["torch"]
    base = out["seconds"]
    lines = [f"## Retrieval quality: flowers17, {out['images']} images, leave-one-out (same class = relevant)", "",
             "MobileNetV2 (ImageNet weights of `../shared/data/models`, mean = std = 0.5, shorter side 256, centre "
             "crop 224). `ts` rows: the TorchScript trunk (TensorFlow padding, frozen, oneDNN Graph); `named` rows: "
             "the same weights in the named builder (`ImageSearch(extractor=\"mobilenet_v2\")`, which pads as "
             "TensorFlow for these TensorFlow-trained weights and is scripted and frozen like the trunk). mAP over the full ranking and precision@10 through `ImageSearch.evaluate` on a "
             "flat (exact) index. Extraction time: each option extracted all images, interleaved in "
             f"{out['rounds']} rounds (torch {t['version']}, {t['threads']} threads, {out['machine']['cpus']} shared "
             "cores: the ratios are what to read), relative to average pooling at one scale with the same backbone; "
             "post-processing does not change it (its cost is in the last two columns: fitting whitening / "
             "computing DBA when the vectors are added, and search time per query with QE).", "",
             "| features | post-processing | dim | mAP | P@10 | extraction time vs avg (wall / CPU) | add s | search ms/query |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in out["rows"]:
        name = r["features"]
        timed = r.get("timed_as", name if name in base else None)
        ratio = ""
        if timed in base:
            b = base[BASELINE[EXTRACTIONS[timed][0]]]
            ratio = f"{base[timed]['wall'] / b['wall']:.2f}x / {base[timed]['cpu'] / b['cpu']:.2f}x"
        elif "extract_seconds" in r:
            ratio = f"{r['extract_seconds'] / base['avg']['wall']:.2f}x (own run)"
        label = f"**{name}**" if r.get("default") else name
        add = f"{r['build_seconds']:.2f}" if "build_seconds" in r else ""
        ms = f"{1e3 * r['eval_seconds'] / r.get('queries', out['images']):.2f}" if "eval_seconds" in r else ""
        lines.append(f"| {label} | {r['postprocessing']} | {r['dim']} | {r['mAP']:.4f} | {r['precision@10']:.4f} | "
                     f"{ratio} | {add} | {ms} |")
    lines += ["", "Extraction seconds for all images, interleaved (wall / CPU time of the process, whose "
              "ratios suffer less from the other processes on the machine): " +
              ", ".join(f"{n} {s['wall']:.1f} / {s['cpu']:.1f}" for n, s in base.items()) + ".", ""]
    if out.get("notes"):
        lines += [f"- {n}" for n in out["notes"]] + [""]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=24, help="interleaved extraction rounds")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--no-cache", action="store_true", help="extract (and time) every option again")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "quality.json"))
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the --out JSON")
    args = ap.parse_args()
    if args.markdown_only:
        with open(args.out) as f:
            write_markdown(json.load(f), args.out)
        return
    import torch
    torch.set_num_threads(args.threads)
    paths, labels = flowers()
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "simd": imgsearch.capabilities()["simd"]},
           "torch": {"version": torch.__version__, "threads": torch.get_num_threads()},
           "images": len(paths), "rounds": args.rounds, "notes": []}
    feats, seconds = extract_all(paths, list(EXTRACTIONS), args.rounds, not args.no_cache)
    out["seconds"] = {n: seconds[n] for n in EXTRACTIONS}
    ex = make_extractor("ts", {})
    rows = []
    for name in EXTRACTIONS:
        rows += run_rows(name, feats[name], ex, paths, labels, [("", {})])
    for name in ("avg", "gem p=3"):
        rows += run_rows(name, feats[name], ex, paths, labels, post_rows()[1:])
    best_w = best_whitening(rows, "gem p=3")
    for name in ("avg", "gem p=3", "gem p=3, 2 scales", "named: avg", "named: gem p=3"):
        rows += run_rows(name, feats[name], ex, paths, labels, combo_rows(best_w[0]), prefix=best_w[1])
    row, _ = default_rows(feats, seconds, paths, labels)
    rows.append(row)
    rows += small_collection_rows(feats["named: gem p=3"], paths, labels, (2, 5, 10, 20, 40), ex)
    rows += classic_rows(paths, labels, out["notes"])
    out["rows"] = rows
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    write_markdown(out, args.out)


def best_whitening(rows, name):
    """The best whitening of the grid over ``name``'s features: (factory, label)."""
    grid = [r for r in rows if r["features"] == name and r["postprocessing"].startswith("+ whitening")]
    best = max(grid, key=lambda r: r["mAP"])
    label = best["postprocessing"]
    spec = dict(post_rows())[label]["whitening"]
    return spec, label


def write_markdown(out, json_path):
    md = markdown(out)
    with open(os.path.splitext(json_path)[0] + ".md", "w") as f:
        f.write("# imgsearch retrieval quality benchmark (`benchmarks/bench_quality.py`)\n\n" + md)
    print("\n" + md)


if __name__ == "__main__":
    main()
