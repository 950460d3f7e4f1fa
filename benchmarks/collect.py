"""Assemble benchmarks/README.md from the Markdown each benchmark writes to
benchmarks/results/<name>.md (run by `make bench` after the benchmarks).

    python benchmarks/collect.py
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SECTIONS = [
    ("kernels", "The kernel table: every slot at every SIMD level of this CPU",
     "bench_kernels.py", "make bench-kernels"),
    ("flat", "Exact search: FlatIndex vs faiss IndexFlatL2 vs NumPy; pairwise vs simsimd",
     "bench_flat.py", "make bench-flat"),
    ("hnsw", "Approximate search: HNSWIndex vs hnswlib vs faiss IndexHNSWFlat vs usearch",
     "bench_hnsw.py", "make bench-hnsw"),
    ("quant", "Training: k-means and product quantization vs faiss Kmeans / ProductQuantizer",
     "bench_quant.py", "make bench-quant"),
    ("ivfpq", "Compressed search: IVFPQIndex vs faiss IndexIVFPQ / IndexIVFPQFastScan (+ IndexRefineFlat)",
     "bench_ivfpq.py", "make bench-ivfpq"),
    ("kdtree", "KD-tree: KDTreeIndex vs scipy cKDTree vs scikit-learn KDTree vs FlatIndex",
     "bench_kdtree.py", "make bench-kdtree"),
    ("image", "Image pipeline and classic features: imgsearch vs Pillow + NumPy",
     "bench_image.py", "make bench-image"),
    ("texture", "Classic descriptors: colour histogram, LBP texture, and the two together on flowers17",
     "bench_texture.py", "make bench-texture"),
    ("engine", "End to end: ImageSearch with MobileNetV2 vs a Pillow + torch loop; retrieval quality",
     "bench_engine.py", "make bench-engine"),
    ("quality", "Retrieval quality: pooling, multi-scale, PCA-whitening, alpha-QE, alpha-DBA on flowers17",
     "bench_quality.py", "make bench-quality"),
    ("serve", "The HTTP service: search by uploaded JPEG, latency and throughput vs engine.search",
     "bench_serve.py", "make bench-serve"),
    ("dask", "On Dask: embed and ShardedIndex on LocalClusters of 1 and 2 workers vs the single-process engine",
     "bench_dask.py", "make bench-dask"),
]

INTRO = """# Benchmarks

Every figure here compares imgsearch with the peers installed from PyPI (faiss-cpu,
hnswlib, usearch, scipy, scikit-learn, simsimd, Pillow, torch) on the same data, on
the same machine, in the same run, with the same parameters; each table says how it
was measured, on which CPU and with which flags. The machine is a shared 2-core x86-64
(CPU_LINE), so absolute rates move from run to run: read the ratios, which come from
interleaved runs. `imgsearch` rows run at the CPU's best SIMD level; `imgsearch[avx2]` and
`imgsearch[serial]` rows run the same index at a lower level in the same run. Where a
level's table holds the level below's kernel (see the kernel table's last column), the
two rows run the same code, and their difference -- up to ~8% in these runs -- is the
noise floor of the machine. Data: Fashion-MNIST from the Debian package `dataset-fashion-mnist`, and the
1,360 flowers17 photos. Each benchmark writes `results/<name>.json` (all raw figures)
and `results/<name>.md` (the tables below); `make bench` runs them all and rebuilds
this page (`python benchmarks/collect.py`).
"""


def demote(text, top=3):
    """Shift a section's own headings so that its highest becomes level `top`."""
    lines = text.splitlines()
    levels = [len(line) - len(line.lstrip("#")) for line in lines if line.startswith("#")]
    shift = top - min(levels) if levels else 0
    return "\n".join("#" * shift + line if line.startswith("#") else line for line in lines)


def cpu_line():
    """The CPU the kernel benchmark ran on (results/kernels.json), for the intro."""
    import json

    try:
        with open(os.path.join(HERE, "results", "kernels.json")) as f:
            r = json.load(f)
    except (OSError, ValueError):
        return "CPU not recorded: run make bench-kernels"
    caps = r["capabilities"]
    flags = [k for k in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vpopcntdq", "avx512vnni",
                         "avx512fp16") if caps.get(k)]
    return f"{r['cpu']}, flags {'/'.join(flags)}"


def main():
    parts = [INTRO.replace("CPU_LINE", cpu_line())]
    for name, title, script, target in SECTIONS:
        path = os.path.join(HERE, "results", name + ".md")
        parts.append(f"\n## {title}\n\n`{script}` (`{target}`)\n")
        if os.path.exists(path):
            with open(path) as f:
                body = f.read().strip()
            body = demote(body)
            parts.append("\n" + body + "\n")
        else:
            parts.append(f"\nNot run yet: `{target}`.\n")
    with open(os.path.join(HERE, "README.md"), "w") as f:
        f.write("".join(parts))


if __name__ == "__main__":
    main()
