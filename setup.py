"""Build imgsearch._core, the C extension.

Everything about the package lives in pyproject.toml; this file only knows
how to compile the C core: which sources, which flags, and where OpenBLAS
is (pkg-config first, then the usual places).  No -march flag is used: the
SIMD kernels carry per-function target attributes and are chosen at run
time, so one build runs on any x86-64 CPU.

Environment:
  IMGSEARCH_SANITIZE=1   build with AddressSanitizer + UBSan (make test-asan)
  IMGSEARCH_DEBUG=1      -O0 -g
  IMGSEARCH_NO_LIBJPEG=1 / IMGSEARCH_NO_WEBP=1   build without libjpeg / libwebp
  OPENBLAS_CFLAGS / OPENBLAS_LIBS   override pkg-config
"""
import os
import shlex
import subprocess
import sys
from glob import glob

import numpy
from setuptools import Extension, setup


def pkg_config(package, fallback_cflags, fallback_libs):
    cflags = os.environ.get("OPENBLAS_CFLAGS")
    libs = os.environ.get("OPENBLAS_LIBS")
    if cflags is not None and libs is not None:
        return shlex.split(cflags), shlex.split(libs)
    for name in (package, "openblas64", "blas-openblas"):
        try:
            cflags = subprocess.check_output(["pkg-config", "--cflags", name], text=True, stderr=subprocess.DEVNULL)
            libs = subprocess.check_output(["pkg-config", "--libs", name], text=True, stderr=subprocess.DEVNULL)
            return shlex.split(cflags), shlex.split(libs)
        except (OSError, subprocess.CalledProcessError):
            continue
    for inc in ("/usr/include/x86_64-linux-gnu/openblas-pthread", "/usr/include/openblas", "/opt/homebrew/opt/openblas/include", "/usr/local/opt/openblas/include"):
        if os.path.exists(os.path.join(inc, "cblas.h")):
            lib = inc.replace("include", "lib")
            return ["-I" + inc], ["-L" + lib, "-lopenblas"]
    sys.stderr.write(
        "imgsearch: OpenBLAS not found by pkg-config.  Install it first:\n"
        "  Debian/Ubuntu: apt-get install libopenblas-dev pkg-config\n"
        "  Fedora: dnf install openblas-devel   macOS: brew install openblas\n"
        "or set OPENBLAS_CFLAGS and OPENBLAS_LIBS.\n"
    )
    return fallback_cflags, fallback_libs


blas_cflags, blas_libs = pkg_config("openblas", [], ["-lopenblas"])


def find_header(name, dirs):
    for d in dirs:
        if os.path.exists(os.path.join(d, name)):
            return d
    return None


# stb_image (Debian libstb-dev: /usr/include/stb/stb_image.h) decodes PNG, BMP,
# GIF, TGA, PSD, PNM; libjpeg-turbo (Debian libjpeg-dev) decodes JPEG when it
# is found, with DCT-domain downscaling -- without it stb decodes JPEG too.
include_search = ["/usr/include", "/usr/local/include", "/opt/homebrew/include"] + [
    d for d in os.environ.get("CPATH", "").split(os.pathsep) if d]
stb_dir = find_header(os.path.join("stb", "stb_image.h"), include_search)
if stb_dir is None:
    sys.stderr.write(
        "imgsearch: stb_image.h not found (expected <include>/stb/stb_image.h).  Install it first:\n"
        "  Debian/Ubuntu: apt-get install libstb-dev\n"
        "or put stb_image.h under <dir>/stb/ and set CPATH=<dir>.\n")
    sys.exit(1)
image_cflags, image_libs = [], []
if os.environ.get("IMGSEARCH_NO_LIBJPEG") is None and find_header("jpeglib.h", include_search):
    image_cflags, image_libs = ["-DISX_HAVE_LIBJPEG"], ["jpeg"]


def optional_package(package, define, header, lib, disable):
    """(cflags, libs) of an optional library found by pkg-config, else by its header,
    with `define` set; ([], []) when it is absent or the environment sets `disable`."""
    if os.environ.get(disable) is not None:
        return [], []
    try:
        cflags = subprocess.check_output(["pkg-config", "--cflags", package], text=True, stderr=subprocess.DEVNULL)
        libs = subprocess.check_output(["pkg-config", "--libs", package], text=True, stderr=subprocess.DEVNULL)
        return ["-D" + define] + shlex.split(cflags), shlex.split(libs)
    except (OSError, subprocess.CalledProcessError):
        pass
    if find_header(header, include_search):
        return ["-D" + define], ["-l" + lib]
    return [], []


# libwebp (Debian libwebp-dev) decodes WebP; without it a WebP file is refused
# with a message that says so (IMGSEARCH_NO_WEBP=1 builds without it).
webp_cflags, webp_libs = optional_package("libwebp", "ISX_HAVE_WEBP", os.path.join("webp", "decode.h"), "webp",
                                          "IMGSEARCH_NO_WEBP")
if not webp_cflags:
    sys.stderr.write("imgsearch: %s: WebP images will be refused.  To decode them, install\n"
                     "  Debian/Ubuntu: apt-get install libwebp-dev   Fedora: dnf install libwebp-devel\n"
                     "  macOS: brew install webp\n" % (
                         "IMGSEARCH_NO_WEBP is set" if os.environ.get("IMGSEARCH_NO_WEBP") else "libwebp not found"))
image_cflags += webp_cflags
sources = sorted(
    glob("csrc/**/*.c", recursive=True)
)
compile_args = ["-std=c11", "-O3", "-fno-math-errno", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-missing-field-initializers", "-fvisibility=hidden", "-pthread"]
link_args = ["-pthread"]
if os.environ.get("IMGSEARCH_DEBUG"):
    compile_args = [a for a in compile_args if a != "-O3"] + ["-O0", "-g"]
if os.environ.get("IMGSEARCH_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined", "-g"]
    compile_args = [a for a in compile_args if a != "-O3"] + ["-O1"] + san
    link_args += san

# rpath so that a library found outside the default search path still loads
rpath = [a[2:] for a in blas_libs if a.startswith("-L")]

setup(
    ext_modules=[
        Extension(
            "imgsearch._core",
            sources=sources,
            include_dirs=[numpy.get_include(), "csrc"],
            extra_compile_args=compile_args + blas_cflags + image_cflags + ["-I" + stb_dir],
            extra_link_args=link_args + [a for a in blas_libs + webp_libs if not a.startswith("-l")],
            libraries=[a[2:] for a in blas_libs + webp_libs if a.startswith("-l")] + image_libs + ["m"],
            runtime_library_dirs=rpath,
        )
    ],
)
