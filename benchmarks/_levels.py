"""The SIMD levels this CPU has, for the benchmarks' per-level rows.

Each benchmark runs imgsearch at its best level under the plain name
("imgsearch") and at every lower level the CPU supports as
"imgsearch[<level>]", interleaved with the peers in the same run.
"""
import contextlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import imgsearch  # noqa: E402
from imgsearch import _core  # noqa: E402

ORDER = ["serial", "avx2", "avx512"]


def supported():
    """Levels this CPU and OS can run, lowest first."""
    return ORDER[: ORDER.index(imgsearch.capabilities()["simd_supported"]) + 1]


def lower():
    """The levels below the best, highest first (the extra rows)."""
    return supported()[:-1][::-1]


def label(level):
    return "imgsearch" if level == supported()[-1] else f"imgsearch[{level}]"


@contextlib.contextmanager
def at_level(level):
    """Run the body with the kernel table of `level` (flat search and indexes
    created or loaded inside it follow; the old level comes back after)."""
    old = _core._set_simd(level)
    try:
        yield
    finally:
        _core._set_simd(old)


def cpu_line():
    """'AMD EPYC ... (avx512: F, BW, ...)' for the tables."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    caps = imgsearch.capabilities()
    flags = [k for k in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vpopcntdq", "avx512vnni", "avx512fp16")
             if caps.get(k)]
    return f"{model}, {caps['cpus']} CPUs, flags {'/'.join(flags) or 'none'}, best SIMD level {caps['simd_supported']}"
