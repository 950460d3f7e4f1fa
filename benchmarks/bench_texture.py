"""Classic descriptors on flowers17: colour, LBP texture, and the two together.

Every image queries the other 1,359 (exact FlatIndex search with the
extractor's metric over all of them), same class = relevant; mAP and
precision@10 from imgsearch.evaluate.label_retrieval_scores.  Extraction is
timed on one native thread over all 1,360 JPEGs (decode included, page cache
warm), as wall time and as CPU time: the machine is shared, and the CPU
column is what one image costs whatever the neighbours do.

Rows: the registered defaults ("colorhist", "lbp", "colorhist+lbp"), and the
variants the defaults were chosen from (LBP normalisations, scales, grid and
working side; colour + texture weights with and without the centre window).

Writes benchmarks/results/texture.json and benchmarks/results/texture.md.
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import imgsearch  # noqa: E402
from imgsearch import evaluate, features  # noqa: E402
from imgsearch.datasets import shared_data  # noqa: E402

FLOWERS = shared_data("flowers17")
MS = ((8, 1), (16, 2), (24, 3))


def flowers():
    with open(os.path.join(FLOWERS, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return [os.path.abspath(os.path.join(FLOWERS, r["path"])) for r in rows], [r["label"] for r in rows]


def configs():
    """(label, extractor); the first three are the registered defaults."""
    C = features.ColorLBP
    return [
        ("colorhist (default)", features.get_extractor("colorhist")),
        ("lbp (default)", features.get_extractor("lbp")),
        ("colorhist+lbp (default)", features.get_extractor("colorhist+lbp")),
        ("lbp P,R=8,1 side 256, 1x1", features.LBP(scales=[(8, 1)], grid=(1,), side=256)),
        ("lbp 8,1+16,2+24,3 side 256, 1x1", features.LBP(scales=MS, grid=(1,), side=256)),
        ("lbp 8,1+16,2+24,3 side 256, 1+2x2", features.LBP(scales=MS, grid=(1, 2), side=256)),
        ("lbp 8,1+16,2+24,3 side 96, 1+2x2+4x4", features.LBP(scales=MS, grid=(1, 2, 4), side=96)),
        ("lbp 8,1+8,2+8,3 side 64, 1+2x2", features.LBP(scales=[(8, 1), (8, 2), (8, 3)], grid=(1, 2), side=64)),
        ("lbp (default), norm l1", features.LBP(norm="l1")),
        ("lbp (default), norm l2", features.LBP(norm="l2")),
        ("colour whole + lbp, weight 1", C(weight=1, centre=0)),
        ("colour whole + lbp, weight 2", C(weight=2, centre=0)),
        ("colour whole + lbp, weight 2.5", C(weight=2.5, centre=0)),
        ("colour whole + lbp 8,1 side 256, weight 1", C(weight=1, centre=0, scales=[(8, 1)], grid=(1,), side=256)),
        ("colour whole + centre, no lbp (weight 0)", C(weight=0)),
        ("colour whole + centre + lbp, weight 1", C(weight=1)),
        ("colour whole + centre + lbp, weight 3", C(weight=3)),
        ("colour whole + centre 0.5 + lbp, weight 2", C(centre=0.5)),
    ]


def run(paths, labels, ext):
    t0, c0 = time.perf_counter(), time.process_time()
    X, failed = ext.extract_files(paths, threads=1)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert not failed, failed
    index = imgsearch.FlatIndex(dim=ext.dim, metric=ext.metric)
    index.add(X)
    _, I = index.search(X, k=len(paths))
    s = evaluate.label_retrieval_scores(I, np.arange(len(paths)), labels, ks=(10,))
    return {"mAP": round(s["mAP"], 4), "precision@10": round(s["precision@10"], 4), "dim": ext.dim,
            "metric": ext.metric, "config": ext.config(), "images_per_s_1t": round(len(paths) / wall, 1),
            "images_per_cpu_s": round(len(paths) / cpu, 1)}


def markdown(res):
    lines = ["### Classic descriptors on flowers17 (every image queries the other 1,359; same class = relevant)", "",
             "| descriptor | dim | metric | mAP | P@10 | images/s (1 thread) | images per CPU-s |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for label, v in res["rows"].items():
        lines.append("| %s | %d | %s | %.4f | %.4f | %.0f | %.0f |" % (
            label, v["dim"], v["metric"], v["mAP"], v["precision@10"], v["images_per_s_1t"], v["images_per_cpu_s"]))
    lines += ["", "Chance level: mAP about 0.06 (17 balanced classes).  Throughput includes the JPEG decode "
              "(at the resolution the descriptor needs); load average before/after %.2f / %.2f on %d shared CPUs, "
              "so read the CPU-second column." % (tuple(res["load_average_before_after"]) + (os.cpu_count(),)),
              "",
              "- `lbp` is LBP^riu2 (Ojala et al. 2002) at P,R = 8,1 + 16,2 + 24,3 on the grey image shrunk to a "
              "longest side of 64, in a 1 + 2x2 + 4x4 grid (21 cells x 54 bins = 1134-d), each (cell, scale) "
              "histogram L1-normalised, then square roots (Hellinger) and unit length.  Texture alone is weak on "
              "flowers17 (a colour and shape data set): twice chance.  The small working side helps (at R <= 3 pixels "
              "a 256 side sees grain, a 64 side petals and leaves), so does the grid; the normalisations tie "
              "(Hellinger, the default, is the one an l2 index serves and that concatenates at unit length).",
              "- `colorhist+lbp` is the whole-image HSV histogram (8x4x4, Hellinger), the histogram of the central "
              "40% x 40% window times 2 (Stricker & Dimai's weak spatial constraint: the subject is mostly in the "
              "middle), and `lbp` times 2, the row at unit length.  The colour histogram plus LBP without the window "
              "(`centre=0`) reaches 0.20: texture adds about 0.02 whatever the weight, not enough for the 0.22 target; "
              "the window takes colour alone to 0.257 and texture adds 0.015 on top.  The window is an "
              "assumption about the photographs (object-centred, as flowers17's are); `centre=0` drops it.",
              "- The `colorhist` row is the registered default (`sqrt=True`, l2 = Hellinger).  The `hellinger` rows "
              "of the image table above apply a second square root to it (histogram ** 0.25): 0.201 there."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only-defaults", action="store_true")
    ap.add_argument("--markdown-only", action="store_true", help="rebuild texture.md from texture.json")
    args = ap.parse_args()
    out = os.path.join(HERE, "results")
    if args.markdown_only:
        with open(os.path.join(out, "texture.json")) as f:
            res = json.load(f)
        with open(os.path.join(out, "texture.md"), "w") as f:
            f.write(markdown(res))
        return
    paths, labels = flowers()
    features.ColorHistogram().extract_files(paths, threads=1)  # warm the page cache
    load0 = os.getloadavg()[0]
    rows = {}
    for label, ext in configs()[:3] if args.only_defaults else configs():
        rows[label] = run(paths, labels, ext)
        v = rows[label]
        print("  %-45s mAP %.4f  P@10 %.4f  %6.0f img/s  %6.0f img/CPU-s" % (
            label, v["mAP"], v["precision@10"], v["images_per_s_1t"], v["images_per_cpu_s"]), flush=True)
    res = {"rows": rows, "load_average_before_after": [load0, os.getloadavg()[0]], "images": len(paths)}
    with open(os.path.join(out, "texture.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(out, "texture.md"), "w") as f:
        f.write(markdown(res))


if __name__ == "__main__":
    main()
