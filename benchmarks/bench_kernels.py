"""Every slot of the kernel table at every SIMD level this CPU has, side by side.

Each level's table is run alone through the test hooks (imgsearch._core._kernel,
_bounded, _select, _fused, _kdleaf, _f16_to_f32, _crc32c), on the same arrays,
interleaved within every repeat (serial, avx2, avx512, serial, ...) so that a
load spike on a shared machine hits all levels alike; the best of --repeat is
kept.  The last column says which level's kernel the AVX-512 table holds for
the slot: where it is "avx2", both columns time the same code (the AVX-512
kernel written for it lost or tied on Zen 4 and was removed; see the comments
in csrc/simd/kernels_avx512.c), and their difference is the noise of the run.

This is what decided which kernels csrc/simd/kernels_avx512.c keeps: a level's
kernel stays in its table only where it beat the level below on this CPU.
Writes benchmarks/results/kernels.json and kernels.md.

    python benchmarks/bench_kernels.py [--repeat 7]
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
from imgsearch import _core  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
LEVELS = ["serial", "avx2", "avx512"]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cases(rng):
    """(slot, workload, bytes streamed or None, {level: callable})."""
    n, dim = 60000, 784
    X = rng.random((n, dim), dtype=np.float32)
    q = rng.random((1, dim), dtype=np.float32)
    Xc = np.ascontiguousarray(X[:160])           # 490 KB: L2-resident
    Xh = X.astype(np.float16)
    Xi = (X * 200 - 100).astype(np.int8)
    H8 = rng.integers(0, 256, (1_000_000, 8), dtype=np.uint8)
    H64 = rng.integers(0, 256, (200_000, 64), dtype=np.uint8)
    Xb = np.ascontiguousarray(X[:20000])
    dists_b = ((Xb - q) ** 2).sum(1)
    bound = float(np.quantile(dists_b, 0.02))  # most rows rejected, as in an HNSW walk
    row = rng.random(1 << 20, dtype=np.float32)
    bias = rng.random(1 << 20, dtype=np.float32)
    Q = rng.random((256, dim), dtype=np.float32)
    Xf = np.ascontiguousarray(X[:4096])
    kd = {d: rng.random((200_000, d), dtype=np.float32) for d in (8, 16, 32)}
    perm = rng.permutation(200_000).astype(np.uint32)
    halves = rng.random(1 << 22).astype(np.float16)
    blob = rng.integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()

    out = []
    for metric in ["l2", "ip", "cosine", "l1"]:
        out.append((f"{'l2sq' if metric == 'l2' else metric}_f32", "1 query x 60,000 x 784 (188 MB)", X.nbytes,
                    {lv: (lambda lv=lv, m=metric: _core._kernel(m, lv, q, X)) for lv in LEVELS}))
        out.append((f"{'l2sq' if metric == 'l2' else metric}_f32", "1 query x 160 x 784, x50 (L2)", Xc.nbytes * 50,
                    {lv: (lambda lv=lv, m=metric: [_core._kernel(m, lv, q, Xc) for _ in range(50)]) for lv in LEVELS}))
    for slot in ("sqnorm", "dot"):
        out.append((f"{slot}_f32", "60,000 x 784 (188 MB)", X.nbytes,
                    {lv: (lambda lv=lv, s=slot: _core._kernel(s, lv, q, X)) for lv in LEVELS}))
        out.append((f"{slot}_f32", "160 x 784, x50 (L2)", Xc.nbytes * 50,
                    {lv: (lambda lv=lv, s=slot: [_core._kernel(s, lv, q, Xc) for _ in range(50)]) for lv in LEVELS}))
    for storage, Xs in (("f16", Xh), ("i8", Xi)):
        for metric in ["l2", "ip", "cosine", "l1"]:
            st = "float16" if storage == "f16" else "int8"
            out.append((f"{'l2sq' if metric == 'l2' else metric}_{storage}", "1 query x 60,000 x 784", Xs.nbytes,
                        {lv: (lambda lv=lv, m=metric, Xs=Xs, st=st: _core._kernel(m, lv, q, Xs, st)) for lv in LEVELS}))
    out.append(("hamming_u8", "64-bit codes x 1,000,000", H8.nbytes,
                {lv: (lambda lv=lv: _core._kernel("hamming", lv, H8[:1], H8)) for lv in LEVELS}))
    out.append(("hamming_u8", "512-bit codes x 200,000", H64.nbytes,
                {lv: (lambda lv=lv: _core._kernel("hamming", lv, H64[:1], H64)) for lv in LEVELS}))
    for metric in ["l2", "l1"]:
        name = f"{'l2sq' if metric == 'l2' else metric}_bounded_f32"
        out.append((name, "20,000 rows x 784, bound = inf", Xb.nbytes,
                    {lv: (lambda lv=lv, m=metric: _core._bounded(m, lv, q, Xb, np.inf)) for lv in LEVELS}))
        b = bound if metric == "l2" else float(np.quantile(np.abs(Xb - q).sum(1), 0.02))
        out.append((name, "20,000 rows x 784, bound = 2% quantile", None,
                    {lv: (lambda lv=lv, m=metric, b=b: _core._bounded(m, lv, q, Xb, b)) for lv in LEVELS}))
    Xl2 = np.ascontiguousarray(X[:300])          # 940 KB: L2-resident, as the rows an HNSW walk revisits
    for metric in ["l2", "l1"]:
        name = f"{'l2sq' if metric == 'l2' else metric}_bounded_f32"
        ref = ((Xl2 - q) ** 2).sum(1) if metric == "l2" else np.abs(Xl2 - q).sum(1)
        b = float(np.quantile(ref, 0.02))
        out.append((name, "300 rows x 784 (L2), x40, bound = inf", Xl2.nbytes * 40,
                    {lv: (lambda lv=lv, m=metric: [_core._bounded(m, lv, q, Xl2, np.inf) for _ in range(40)])
                     for lv in LEVELS}))
        out.append((name, "300 rows x 784 (L2), x40, bound = 2% quantile", None,
                    {lv: (lambda lv=lv, m=metric, b=b: [_core._bounded(m, lv, q, Xl2, b) for _ in range(40)])
                     for lv in LEVELS}))
    out.append(("select_topk_f32", "1M values + bias, k=10", row.nbytes * 2,
                {lv: (lambda lv=lv: _core._select(lv, row, None, bias, 10, None)) for lv in LEVELS}))
    out.append(("fused_dot_topk_f32", "256 queries x 4,096 x 784, k=10", None,
                {lv: (lambda lv=lv: _core._fused(lv, Q, Xf, 10, None, None, None)) for lv in LEVELS if lv != "serial"}))
    for d, Xk in kd.items():
        out.append(("kdleaf_f32", f"200,000 rows x {d}, in order", Xk.nbytes,
                    {lv: (lambda lv=lv, Xk=Xk: _core._kdleaf(lv, "l2", Xk[:1], Xk, None, False)) for lv in LEVELS}))
        out.append(("kdleaf_f32", f"200,000 rows x {d}, permuted", Xk.nbytes,
                    {lv: (lambda lv=lv, Xk=Xk: _core._kdleaf(lv, "l2", Xk[:1], Xk, perm, False)) for lv in LEVELS}))
    out.append(("f16_to_f32", "4M halves", halves.nbytes,
                {lv: (lambda lv=lv: _core._f16_to_f32(lv, halves)) for lv in LEVELS}))
    out.append(("crc32c_u8", "64 MB", len(blob),
                {lv: (lambda lv=lv: _core._crc32c(lv, blob)) for lv in LEVELS}))
    return out


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--only", default="", help="comma-separated slot names")
    args = ap.parse_args()
    caps = imgsearch.capabilities()
    have = LEVELS[: LEVELS.index(caps["simd_supported"]) + 1]
    tables = {lv: _core._kernel_table(lv) for lv in have}
    rng = np.random.default_rng(0)
    rows = []
    for slot, work, nbytes, fns in cases(rng):
        if args.only and slot not in args.only.split(","):
            continue
        fns = {lv: f for lv, f in fns.items() if lv in have}
        for f in fns.values():
            f()  # warm: page faults, caches
        best = {lv: float("inf") for lv in fns}
        for _ in range(args.repeat):
            for lv, f in fns.items():
                best[lv] = min(best[lv], timed(f))
        rows.append({"slot": slot, "workload": work, "bytes": nbytes, "seconds": best,
                     "table": {lv: tables[lv][slot] for lv in have}})
        cells = "  ".join(f"{lv} {best[lv] * 1e3:8.2f} ms" for lv in fns)
        print(f"{slot:20s} {work:40s} {cells}", flush=True)
    result = {"cpu": cpu_model(), "capabilities": {k: v for k, v in caps.items() if k != "kernels"},
              "repeat": args.repeat, "loadavg": os.getloadavg()[0], "rows": rows}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "kernels.json"), "w") as f:
        json.dump(result, f, indent=1)
    write_markdown(result, have)


def write_markdown(result, have):
    flags = [k for k in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vpopcntdq", "avx512vnni",
                         "avx512fp16") if result["capabilities"].get(k)]
    lines = [
        f"CPU: **{result['cpu']}**, {result['capabilities']['cpus']} cores; flags used: {', '.join(flags)}.",
        f"Best of {result['repeat']} interleaved repeats, 1 thread, each level's table "
        f"(load average {result['loadavg']:.1f} at the end).",
        "",
        "| slot | workload | " + " | ".join(f"{lv} ms" for lv in have) +
        (" | avx512 / avx2 | table at avx512 |" if "avx512" in have else " |"),
        "|---|---|" + "---:|" * len(have) + ("---:|---|" if "avx512" in have else ""),
    ]
    for r in result["rows"]:
        s = r["seconds"]
        cells = []
        for lv in have:
            t = s.get(lv)
            if t is None:
                cells.append("—")
            else:
                gbs = f" ({r['bytes'] / t / 1e9:.1f} GB/s)" if r["bytes"] else ""
                cells.append(f"{t * 1e3:.2f}{gbs}")
        line = f"| {r['slot']} | {r['workload']} | " + " | ".join(cells) + " |"
        if "avx512" in have:
            ratio = s["avx2"] / s["avx512"] if "avx512" in s and "avx2" in s else None
            line += (f" {ratio:.2f}x |" if ratio else " — |") + f" {r['table']['avx512']} |"
        lines.append(line)
    lines += ["", "avx512 / avx2 > 1 means the AVX-512 table is faster. The last column is the level whose kernel "
              "the AVX-512 table holds: its own where it won, the AVX2 one where it did not (then both columns "
              "run the same code and differ only by the run's noise)."]
    with open(os.path.join(RESULTS, "kernels.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
