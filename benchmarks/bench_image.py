"""The image pipeline and the classic extractors on flowers17 (1,360 JPEGs).

1. Preprocessing throughput, images/s, for the full network input
   (decode -> RGB -> shorter side 256 -> centre crop 224 -> (x/255 - mean)/std
   -> float32 NCHW, ImageNet mean/std), batches of 64:
     - imgsearch_1t / imgsearch_2t: image.load_batch on 1 and 2 native threads
     - pillow_pipeline: what our peers do per image -- Image.open ->
       convert('RGB') -> resize shorter side 256 (BILINEAR) -> crop ->
       np.asarray / 255 -> normalise -> transpose, stacked into a batch
     - pillow_decode: Pillow's bare decode (open + convert('RGB') + load), no
       resize and no output array: the floor the issue compares against
   The methods are interleaved, each run `--repeats` times over the whole set
   (after one untimed pass that warms the page cache), and the best pass of
   each is kept: the machine is shared, and the best pass is the one least
   disturbed by others.
2. Retrieval quality of each classic extractor: every image queries the
   other 1,359 (exact search over all of them), same class = relevant; mAP
   and precision@10 from imgsearch.evaluate.label_retrieval_scores.
   colorhist is measured with l1, l2, cosine (FlatIndex), chi-square (NumPy:
   no index has it) and Hellinger (l2 between element-wise square roots,
   which any l2 index can serve), which is how its default metric was chosen.

Writes benchmarks/results/image.json and benchmarks/results/image.md.
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
from imgsearch import evaluate, features, image  # noqa: E402
from imgsearch.datasets import shared_data  # noqa: E402

FLOWERS = shared_data("flowers17")
BATCH = 64
MEAN = np.array(image.IMAGENET_MEAN, np.float32)
STD = np.array(image.IMAGENET_STD, np.float32)


def flowers():
    with open(os.path.join(FLOWERS, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return [os.path.abspath(os.path.join(FLOWERS, r["path"])) for r in rows], [r["label"] for r in rows]


# ---------- throughput --------------------------------------------------------

def pillow_one(path, size=224, resize=256):
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if w <= h:
            nw, nh = resize, int(resize * h / w)
        else:
            nw, nh = int(resize * w / h), resize
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
        a = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return ((a - MEAN) / STD).transpose(2, 0, 1)


def run_pillow_pipeline(paths):
    for s in range(0, len(paths), BATCH):
        np.stack([pillow_one(p) for p in paths[s:s + BATCH]])


def run_pillow_decode(paths):
    from PIL import Image
    for p in paths:
        with Image.open(p) as im:
            im.convert("RGB").load()


def run_imgsearch(paths, threads):
    for s in range(0, len(paths), BATCH):
        batch, failed = image.load_batch(paths[s:s + BATCH], threads=threads)
        assert not failed, failed


def bench_throughput(paths, repeats):
    methods = {
        "imgsearch_1t": lambda: run_imgsearch(paths, 1),
        "imgsearch_2t": lambda: run_imgsearch(paths, 2),
        "pillow_pipeline": lambda: run_pillow_pipeline(paths),
        "pillow_decode": lambda: run_pillow_decode(paths),
    }
    run_pillow_decode(paths)  # page cache
    times = {name: [] for name in methods}
    cpu = {name: [] for name in methods}
    load = [os.getloadavg()[0]]
    for r in range(repeats):
        for name, fn in methods.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            print("  pass %d %-16s %7.1f images/s" % (r + 1, name, len(paths) / times[name][-1]), flush=True)
    load.append(os.getloadavg()[0])
    rates = {name: len(paths) / min(t) for name, t in times.items()}
    # CPU seconds of this process per image: what a pass costs when it has
    # the cores to itself (for the 2-thread run it is the sum over threads)
    cpu_rates = {name: len(paths) / min(t) for name, t in cpu.items()}
    # cores this process actually got during its best pass (CPU s / wall s):
    # on a shared machine, the ceiling of any thread scaling measured here
    best = {name: int(np.argmin(t)) for name, t in times.items()}
    cores = {name: round(cpu[name][best[name]] / times[name][best[name]], 2) for name in methods}
    return {"images": len(paths), "batch_size": BATCH, "repeats": repeats,
            "load_average_before_after": [round(x, 2) for x in load],
            "images_per_s": {k: round(v, 1) for k, v in rates.items()},
            "images_per_cpu_s": {k: round(v, 1) for k, v in cpu_rates.items()},
            "cores_obtained_best_pass": cores,
            "all_passes_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "ratios": {
                "1t_vs_pillow_pipeline": round(rates["imgsearch_1t"] / rates["pillow_pipeline"], 2),
                "1t_vs_pillow_decode": round(rates["imgsearch_1t"] / rates["pillow_decode"], 2),
                "2t_vs_1t": round(rates["imgsearch_2t"] / rates["imgsearch_1t"], 2),
                "pillow_pipeline_vs_pillow_decode": round(rates["pillow_pipeline"] / rates["pillow_decode"], 2),
            }}


def fidelity(paths, n=64):
    """How far our preprocessed batch is from the Pillow pipeline's (the
    DCT-domain downscale and the area filter make them differ a little)."""
    batch, _ = image.load_batch(paths[:n])
    ref = np.stack([pillow_one(p) for p in paths[:n]])
    d = np.abs(batch - ref)
    return {"images": n, "mean_abs_diff_normalised": round(float(d.mean()), 4),
            "mean_abs_diff_0_255": round(float((d * STD[None, :, None, None]).mean() * 255), 3)}


# ---------- retrieval quality -------------------------------------------------

def chi_square_ranking(X, block=64):
    n = len(X)
    I = np.empty((n, n), np.int64)
    for s in range(0, n, block):
        a = X[s:s + block, None, :].astype(np.float64)
        b = X[None, :, :].astype(np.float64)
        den = a + b
        num = (a - b) ** 2
        D = np.where(den > 0, num / np.where(den > 0, den, 1), 0).sum(-1)
        I[s:s + block] = np.argsort(D, axis=1, kind="stable")
    return I


def bench_quality(paths, labels):
    # raw histograms (sqrt=False): each metric below is applied to the same
    # L1-normalised histogram; "hellinger" takes the square root itself
    ids = np.arange(len(paths))
    out = {}
    configs = [("colorhist", features.ColorHistogram(sqrt=False), ["l1", "chi-square", "hellinger", "l2", "cosine"]),
               ("colorhist_16x4x4", features.ColorHistogram(bins=(16, 4, 4), sqrt=False), ["l1", "chi-square", "hellinger"]),
               ("phash", features.PHash(), ["hamming"]),
               ("dhash", features.DHash(), ["hamming"])]
    for name, ext, metrics in configs:
        t0 = time.perf_counter()
        X, failed = ext.extract_files(paths, threads=2)
        t_extract = time.perf_counter() - t0
        assert not failed, failed
        for metric in metrics:
            if metric == "chi-square":
                I = chi_square_ranking(X)
            elif metric == "hellinger":  # l2 between square roots: indexable, close to chi-square
                R = np.sqrt(X)
                index = imgsearch.FlatIndex(dim=ext.dim, metric="l2")
                index.add(R)
                _, I = index.search(R, k=len(paths))
            else:
                index = imgsearch.FlatIndex(dim=ext.dim, metric=metric)
                index.add(X)
                _, I = index.search(X, k=len(paths))
            s = evaluate.label_retrieval_scores(I, ids, labels, ks=(10,))
            key = "%s/%s" % (name, metric)
            out[key] = {"mAP": round(s["mAP"], 4), "precision@10": round(s["precision@10"], 4),
                        "dim": ext.dim, "config": ext.config(), "extract_images_per_s_2t": round(len(paths) / t_extract, 1)}
            print("  %-28s mAP %.4f  P@10 %.4f" % (key, s["mAP"], s["precision@10"]), flush=True)
    return out


# ---------- report ------------------------------------------------------------

def markdown(res):
    t = res["throughput"]
    r, q = t["images_per_s"], t["ratios"]
    lines = ["### Image preprocessing on flowers17 (%d JPEGs, best of %d interleaved passes, batches of %d)"
             % (t["images"], t["repeats"], t["batch_size"]), "",
             "decode -> RGB -> shorter side 256 -> centre crop 224 -> normalised float32 NCHW", "",
             "| pipeline | images/s (wall) | vs Pillow pipeline | images per CPU-second | cores obtained |",
             "|---|---:|---:|---:|---:|"]
    for name, label in [("imgsearch_1t", "imgsearch `load_batch`, 1 thread"),
                        ("imgsearch_2t", "imgsearch `load_batch`, 2 threads"),
                        ("pillow_pipeline", "Pillow + NumPy pipeline (peers)"),
                        ("pillow_decode", "Pillow bare decode only (open + convert RGB)")]:
        lines.append("| %s | %.0f | %.2fx | %.0f | %.2f |" % (label, r[name], r[name] / r["pillow_pipeline"],
                                                           t["images_per_cpu_s"][name],
                                                           t["cores_obtained_best_pass"][name]))
    tg = res["targets"]
    lines += ["", "| target | measured | met |", "|---|---:|:---:|",
              "| 1 thread >= 2x Pillow pipeline | %.2fx | %s |" % (q["1t_vs_pillow_pipeline"], "yes" if tg["1t_vs_pillow_pipeline"] else "no"),
              "| 1 thread >= 0.8x Pillow bare decode | %.2fx | %s |" % (q["1t_vs_pillow_decode"], "yes" if tg["1t_vs_pillow_decode"] else "no"),
              "| 2 threads >= 1.7x 1 thread | %.2fx | %s |" % (q["2t_vs_1t"], "yes" if tg["2t_vs_1t"] else "no"),
              "", "Load average of the machine (2 CPUs, shared) before/after: %.2f / %.2f.  The CPU-second "
              "column is immune to that contention (for 2 threads it sums both threads); \"cores obtained\" (CPU s / wall s "
              "of the best pass) shows how much of the machine the run got: 2 threads cannot scale past it." % tuple(
                  t["load_average_before_after"]),
              "", "The 2-thread target needs two free cores.  With the kernel's autogroup scheduling "
              "(sched_autogroup_enabled=%s here) CPU time is shared per session, not per thread, so on a busy "
              "machine a second thread adds no cores: compare the images per CPU-second, which show the cost "
              "per image with 2 threads." % res["machine"].get("sched_autogroup", "?"),
              "", "Pixels: mean |ours - Pillow pipeline| = %.3f on the 0..255 scale (%d images; JPEG DCT-domain "
              "downscaling and the area filter)." % (res["fidelity"]["mean_abs_diff_0_255"], res["fidelity"]["images"]),
              "", "### Classic extractors on flowers17 (every image queries the other 1,359; same class = relevant)", "",
              "| extractor | metric | dim | mAP | precision@10 |", "|---|---|---:|---:|---:|"]
    for key, v in res["quality"].items():
        name, metric = key.split("/")
        dim = "%d bits" % v["dim"] if metric == "hamming" else str(v["dim"])
        lines.append("| %s | %s | %s | %.4f | %.4f |" % (name, metric, dim, v["mAP"], v["precision@10"]))
    lines += ["", "Chance level: mAP about 0.06 (17 balanced classes).",
              "Machine: %s, %d CPUs (shared with other jobs while measuring); libjpeg-turbo: %s." % (
                  res["machine"]["processor"], res["machine"]["cpus"], "yes" if res["machine"]["libjpeg"] else "no")]
    return "\n".join(lines) + "\n"


def autogroup():
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return f.read().strip()
    except OSError:
        return "n/a"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (quick check)")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    paths, labels = flowers()
    if args.limit:
        paths, labels = paths[:args.limit], labels[:args.limit]
    from PIL import __version__ as pil_version
    res = {"machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                       "python": platform.python_version(), "pillow": pil_version, "numpy": np.__version__,
                       "libjpeg": bool(imgsearch._core._HAVE_LIBJPEG), "sched_autogroup": autogroup()}}
    print("throughput:", flush=True)
    res["throughput"] = bench_throughput(paths, args.repeats)
    q = res["throughput"]["ratios"]
    res["targets"] = {"1t_vs_pillow_pipeline": q["1t_vs_pillow_pipeline"] >= 2.0,
                      "1t_vs_pillow_decode": q["1t_vs_pillow_decode"] >= 0.8,
                      "2t_vs_1t": q["2t_vs_1t"] >= 1.7}
    res["fidelity"] = fidelity(paths)
    if not args.skip_quality:
        print("quality:", flush=True)
        res["quality"] = bench_quality(paths, labels)
    else:
        res["quality"] = {}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "image.json"), "w") as f:
        json.dump(res, f, indent=2)
    md = markdown(res)
    with open(os.path.join(HERE, "results", "image.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
