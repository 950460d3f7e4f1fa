# imgsearch -- the two commands a newcomer needs:
#   make demo IMAGES=<folder>   set everything up and run the main job
#   make test                   set everything up and run the tests
# Each target installs only what is missing: Debian packages, a .venv, the package.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# chromium + chromium-driver: the service's real-browser test (tests/test_serve_browser.py)
APT_PACKAGES := libopenblas-dev pkg-config libstb-dev libjpeg-dev libwebp-dev dataset-fashion-mnist chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
C_SOURCES := $(shell find csrc -name '*.[ch]')
IMAGES ?=

.PHONY: demo test test-asan bench bench-kernels bench-flat bench-hnsw bench-quant bench-ivfpq bench-kdtree bench-image bench-texture bench-engine bench-quality bench-serve bench-dask soak fuzz build deps venv clean check-install lint

demo: build $(VENV)/.torch
	$(PY) -m imgsearch._demo $(if $(IMAGES),--images "$(IMAGES)")

test: build $(VENV)/.torch $(VENV)/.serve $(VENV)/.dask
	$(PY) -m pytest -q tests

# The service under a longer load (minutes; not part of make test).
SOAK_SECONDS ?= 120
soak: build $(VENV)/.serve
	IMGSEARCH_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -q tests/test_serve_load.py -k soak

# Sanitizer builds: AddressSanitizer + UBSan, in their own build folders so that
# restoring the normal build afterwards really rebuilds it.  pytest runs with -s
# so that a sanitizer report reaches the terminal.
ASAN_BUILD := rm -rf build/asan && IMGSEARCH_SANITIZE=1 $(PY) setup.py -q build_ext --inplace \
  --build-temp build/asan/temp --build-lib build/asan/lib --force
ASAN_RUN := ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)"
RESTORE_BUILD := rm -f imgsearch/_core*.so imgsearch/.built; $(MAKE) build

# The suite under the sanitizers (about 2 minutes here).  Not the browser test:
# Chromium's driver, a child process, aborts with the sanitizer runtimes preloaded.
test-asan: deps venv
	$(ASAN_BUILD)
	$(ASAN_RUN) $(PY) -m pytest -q -s -x tests -p no:cacheprovider --ignore tests/test_extractors.py \
	  --ignore tests/test_notebook.py --ignore tests/test_plans.py --ignore tests/test_serve_browser.py; \
	status=$$?; $(RESTORE_BUILD) && exit $$status

# The decoders under the sanitizers on thousands of corrupted files
# (truncations, bit flips, header-field mutations; see tests/fuzz_image.py),
# then tests/test_image.py under the same build.
FUZZ_CASES ?= 20000
fuzz: deps venv
	$(ASAN_BUILD)
	$(ASAN_RUN) $(PY) tests/fuzz_image.py --cases $(FUZZ_CASES) --out build/fuzz && \
	$(ASAN_RUN) $(PY) -m pytest -q -s -x tests/test_image.py -p no:cacheprovider; \
	status=$$?; $(RESTORE_BUILD) && exit $$status

bench: bench-kernels bench-flat bench-hnsw bench-quant bench-ivfpq bench-kdtree bench-image bench-texture bench-engine bench-quality bench-serve bench-dask
	$(PY) benchmarks/collect.py

bench-kernels: build $(VENV)/.bench
	$(PY) benchmarks/bench_kernels.py

bench-flat: build $(VENV)/.bench
	$(PY) benchmarks/bench_flat.py

bench-hnsw: build $(VENV)/.bench
	$(PY) benchmarks/bench_hnsw.py

bench-quant: build $(VENV)/.bench
	$(PY) benchmarks/bench_quant.py

bench-ivfpq: build $(VENV)/.bench
	$(PY) benchmarks/bench_ivfpq.py

bench-kdtree: build $(VENV)/.bench
	$(PY) benchmarks/bench_kdtree.py

bench-image: build $(VENV)/.bench
	$(PY) benchmarks/bench_image.py

bench-texture: build
	$(PY) benchmarks/bench_texture.py

bench-engine: build $(VENV)/.bench $(VENV)/.torch
	$(PY) benchmarks/bench_engine.py

# Pooling, multi-scale, PCA-whitening, QE and DBA on flowers17 (about 15 minutes on
# 2 shared cores; pooled features are cached in build/quality_cache, NO_CACHE=1 redoes them).
bench-quality: build $(VENV)/.torch
	$(PY) benchmarks/bench_quality.py $(if $(NO_CACHE),--no-cache)

bench-serve: build $(VENV)/.bench $(VENV)/.torch $(VENV)/.serve
	$(PY) benchmarks/bench_serve.py

bench-dask: build $(VENV)/.bench $(VENV)/.dask
	$(PY) benchmarks/bench_dask.py

# `pip install .` from a clean copy, with build isolation, into a scratch venv.
check-install: deps
	rm -rf /tmp/isx-install && $(PYTHON) -m venv /tmp/isx-install
	/tmp/isx-install/bin/pip install -q . && cd /tmp && /tmp/isx-install/bin/python -c \
	  "import imgsearch, numpy as np; i = imgsearch.FlatIndex.from_array(np.eye(4, dtype=np.float32)); print(i.search(np.eye(4, dtype=np.float32), k=1)[1].ravel(), imgsearch.capabilities()['simd'])"

build: imgsearch/.built

# The package, installed into .venv in editable mode: imports come from this
# checkout, so `import imgsearch` works from any folder (a notebook opened in
# notebooks/) and .venv/bin/imgsearch exists.  pip's build compiles _core in
# place (no build isolation: the venv already has numpy and setuptools); it
# runs again when a C source or the build configuration changes.
imgsearch/.built: $(VENV)/.stamp $(C_SOURCES) setup.py pyproject.toml
	@mkdir -p build
	@echo "$(PIP) install --no-build-isolation --no-deps -e .  (log: build/install.log)"
	@$(PIP) install --no-build-isolation --no-deps -e . > build/install.log 2>&1 || { cat build/install.log; exit 1; }
	touch $@

venv: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "numpy>=2.0" "setuptools>=77" wheel pytest pillow pandas matplotlib tqdm ipywidgets nbclient nbformat ipykernel scikit-learn
	touch $@

# PyTorch for the CNN extractors: pinned, so pip takes the CPU build (an
# unpinned torch would pull gigabytes of CUDA packages).
$(VENV)/.torch: $(VENV)/.stamp
	$(PIP) install -q torch==2.13.0
	touch $@

# Static checks (ruff, mypy; settings in pyproject.toml), outside `make test`
# and CI: a few seconds once the two tools are installed.
lint: $(VENV)/.lint build
	$(VENV)/bin/ruff check imgsearch tests
	$(VENV)/bin/mypy

$(VENV)/.lint: $(VENV)/.stamp
	$(PIP) install -q ruff==0.17.6 mypy==2.4.1
	touch $@

# The [serve] extra and what its tests drive it with (the browser itself comes from Debian).
$(VENV)/.serve: $(VENV)/.stamp
	$(PIP) install -q "fastapi>=0.110" "uvicorn[standard]>=0.29" "python-multipart>=0.0.9" httpx httpx2 selenium schemathesis
	touch $@

# The [dask] extra: the distributed scheduler its tests start a LocalCluster of.
$(VENV)/.dask: $(VENV)/.stamp
	$(PIP) install -q "dask[array,distributed]>=2024.1"
	touch $@

$(VENV)/.bench: $(VENV)/.stamp
	$(PIP) install -q faiss-cpu hnswlib usearch scikit-learn simsimd scipy threadpoolctl matplotlib pillow
	touch $@

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

clean:
	rm -rf build $(VENV) imgsearch/_core*.so imgsearch/.built *.egg-info
