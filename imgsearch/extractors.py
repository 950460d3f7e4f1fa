"""Feature extractors: pretrained PyTorch backbones, and the classic C features.

torch is imported only when a torch extractor is built.  Every extractor
follows the ``imgsearch.features.Extractor`` protocol: ``extract(images)``,
``extract_files(paths)``, ``dim``, ``metric``, ``name``, ``config()``.

    >>> ex = TorchExtractor.from_torchscript("mobilenet_v2_features.ts.pt", mean=0.5, std=0.5)
    >>> feats, failed = ex.extract_files(paths)        # (n_ok, 1280) float32, L2-normalised

How a batch flows: the C loader decodes, resizes, crops and normalises a
batch on native threads (no GIL); when torch leaves CPUs free (or runs on a
GPU), ``imgsearch.image.iter_batches`` decodes the next batch on them while
torch runs the current one, so the model is the only cost left.  When torch's
threads already fill every CPU, decoding runs between model calls instead
(overlapping would only make the two preempt each other).  The tensor handed
to torch is the loader's buffer (``torch.from_numpy``, no copy).  The model
itself runs under ``torch.inference_mode()``, channels-last for convolutional
networks on the CPU, and TorchScript models are frozen (``torch.jit.freeze``)
and run through oneDNN Graph's fuser.

Weights are never downloaded: they come from a local file (``weights=``) or
from the torch hub cache (``torch.hub.get_dir()/checkpoints``) when a file
with the torchvision name is already there.  Without weights the builders
raise, saying where to put the file; random weights only with
``weights="random"``.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import time

from typing import Any

import numpy as np

from . import image as _image
from . import features as _features
from .features import Extractor

__all__ = ["TorchExtractor", "build_extractor", "get_extractor", "from_config", "declared_preprocess", "MODELS",
           "KNOWN_WEIGHTS", "MissingWeightsError"]


class MissingWeightsError(FileNotFoundError):
    """No weights for a pretrained model were found locally (nothing is downloaded)."""


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this extractor needs PyTorch: pip install 'imgsearch[torch]' (or pip install torch)"
        ) from e
    return torch


def as_loadable(item):
    """What the C loader takes: a path, bytes or a uint8 (H, W, 3) array; PIL images
    are converted to RGB arrays (Pillow itself is never imported here)."""
    if hasattr(item, "convert") and hasattr(item, "size") and hasattr(item, "mode"):
        return np.ascontiguousarray(np.asarray(item.convert("RGB")))
    if isinstance(item, os.PathLike):
        return os.fspath(item)
    return item


def _triple(v, name):
    if isinstance(v, (int, float)):
        return (float(v),) * 3
    t = tuple(float(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"{name}: expected one number or three (R, G, B), found {len(t)}: {v!r}")
    return t


# ----------------------------------------------------------------------------
# Pooling of the last feature map
# ----------------------------------------------------------------------------

POOLINGS = ("avg", "max", "gem")
GEM_P_RANGE = (1.0, 64.0)  # GeM's p: 1 is average pooling; large p tends to max pooling


def _pool(t, pooling, gem_p=3.0):
    """(N, C, H, W) -> (N, C); (N, C) passes through; (N, T, C) tokens -> first (class) token."""
    if t.ndim == 2:
        return t
    if t.ndim == 3:
        return t[:, 0]
    if t.ndim != 4:
        raise ValueError(f"the model returned a tensor of shape {tuple(t.shape)}: expected (N, C, H, W) or (N, C)")
    if pooling == "avg":
        return t.mean(dim=(2, 3))
    if pooling == "max":
        return t.amax(dim=(2, 3))
    # generalised mean (Radenovic et al.): (mean x^p)^(1/p) over positive activations,
    # computed as m * (mean (x/m)^p)^(1/p) with m the map's maximum, so that x^p
    # cannot overflow float32 for large p or large activations
    t = t.clamp(min=1e-6)
    m = t.amax(dim=(2, 3), keepdim=True)
    return (t / m).pow(gem_p).mean(dim=(2, 3)).pow(1.0 / gem_p) * m[:, :, 0, 0]


def _check_gem_p(gem_p):
    lo, hi = GEM_P_RANGE
    if isinstance(gem_p, bool) or not isinstance(gem_p, (int, float)) or not lo <= float(gem_p) <= hi:
        raise ValueError(f"gem_p: expected a number from {lo:g} to {hi:g} (3 is the usual choice), found {gem_p!r}")
    return float(gem_p)


def _check_scales(scales):
    """A tuple of positive floats; each scale resizes the model's input by that factor."""
    if isinstance(scales, (int, float)) and not isinstance(scales, bool):
        scales = (scales,)
    try:
        out = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"scales: expected a sequence of positive numbers such as (1.0, 0.7071), "
                         f"found {scales!r}") from None
    if not out or any(not (0.0 < s <= 4.0) for s in out):
        raise ValueError(f"scales: expected one or more numbers in (0, 4] such as (1.0, 0.7071), found {scales!r}")
    return out


def _scaled_size(size, scale):
    return max(1, int(round(size * scale)))


# ----------------------------------------------------------------------------
# TorchExtractor
# ----------------------------------------------------------------------------

def _frozen(torch, script_module):
    """The module frozen for inference, or as it was when the JIT cannot freeze it
    (e.g. it calls methods other than forward)."""
    try:
        return torch.jit.freeze(script_module)
    except Exception:  # freezing is an optimisation; the model works without it
        return script_module


PREPROCESS_KEYS = ("size", "resize", "mean", "std")


def _preprocess_settings(preprocess, size, resize, mean, std):
    """(size, resize, mean, std) from a ``preprocess`` dict over the defaults given."""
    if not isinstance(preprocess, dict):
        raise TypeError(
            f"preprocess: expected a dict with keys among {PREPROCESS_KEYS}, found {type(preprocess).__name__}; "
            "imgsearch decodes, resizes and normalises in C, so give the transform's settings "
            "(e.g. preprocess={'size': 224, 'resize': 256, 'mean': (0.485, 0.456, 0.406), "
            "'std': (0.229, 0.224, 0.225)}) instead of a Python transform")
    unknown = sorted(set(preprocess) - set(PREPROCESS_KEYS))
    if unknown:
        raise ValueError(f"preprocess: unknown keys {unknown}; expected keys among {PREPROCESS_KEYS}")
    settings = {"size": size, "resize": resize, "mean": mean, "std": std, **preprocess}
    return tuple(settings[k] for k in PREPROCESS_KEYS)


@contextlib.contextmanager
def _onednn_graph(torch):
    """Run TorchScript through oneDNN Graph (what ``torch.jit.fuser("fuser3")``
    sets), without touching the nvFuser switch: torch 2.x removed nvFuser and
    warns on stderr each time that switch is read or set, i.e. every batch."""
    C = torch._C
    saved = (C._jit_set_profiling_executor(True), C._get_graph_executor_optimize(True),
             C._jit_can_fuse_on_cpu(), C._jit_texpr_fuser_enabled(), C._jit_llga_enabled())
    C._jit_override_can_fuse_on_cpu(True)
    C._jit_set_texpr_fuser_enabled(True)
    C._jit_set_llga_enabled(True)
    try:
        yield
    finally:
        C._jit_set_profiling_executor(saved[0])
        C._get_graph_executor_optimize(saved[1])
        C._jit_override_can_fuse_on_cpu(saved[2])
        C._jit_set_texpr_fuser_enabled(saved[3])
        C._jit_set_llga_enabled(saved[4])


def _load_squashed(items, size, mean, std):
    """The whole image resized to size x size (aspect ratio not kept), normalised,
    NCHW -- the preprocessing of models trained that way (resize=None).  Decoding
    and resizing are the C pipeline's; this path is per image, not threaded."""
    out, failed = [], []
    m = np.asarray(mean, np.float32) * 255.0
    inv = 1.0 / (np.asarray(std, np.float32) * 255.0)
    for i, it in enumerate(items):
        try:
            img = it if isinstance(it, np.ndarray) else _image.load(it)
            img = _image.resize(img, size, size)
        except (ValueError, OSError, TypeError) as e:
            failed.append(_image.Failure(i, it if isinstance(it, str) else None, str(e), e))
            continue
        out.append(((img.astype(np.float32) - m) * inv).transpose(2, 0, 1))
    batch = np.ascontiguousarray(np.stack(out)) if out else np.zeros((0, 3, size, size), np.float32)
    return batch, failed



class TorchExtractor(Extractor):
    """Pooled, L2-normalised features from any ``torch.nn.Module`` (TorchScript too).

    model       the network; its output (or the output of ``layer``) is a feature
                map (N, C, H, W), pooled with ``pooling``, or already a vector (N, C).
    size        crop size fed to the model; resize: shorter side before the
                centre crop (``resize=None``: the whole image resized to size x size).
    mean, std   per-channel normalisation of [0, 1] RGB (ImageNet's by default;
                e.g. 0.5 / 0.5 for TF-trained models).
    preprocess  the same four settings as one dict, e.g. a model card's
                ``{"size": 224, "resize": 256, "mean": ..., "std": ...}``; keys it
                lacks keep the arguments' values.  Preprocessing runs in the C
                batch loader (decode, resize, crop, normalise on native threads),
                so it is described, not given as a Python transform.
    pooling     "avg", "max" or "gem" (generalised mean of the activations,
                (mean x^p)^(1/p); Radenovic et al.).
    gem_p       GeM's exponent p, from 1 (average pooling) to 32 (about max pooling); 3 by default.
    scales      multi-scale extraction: the preprocessed batch is resized by each
                factor (bilinear, antialiased when shrinking), the model runs once per
                scale, each pooled vector is L2-normalised (when ``normalize``) and the
                vectors are summed, then L2-normalised.  (1.0,) by default: one pass;
                (1.0, 1 / sqrt(2)) costs about 1.5 passes.
    normalize   L2-normalise each vector (then metric "cosine" and "l2" rank alike).
    layer       name of a sub-module whose output to take (a forward hook),
                e.g. "features" or "layer4"; None: the model's output.
    channels_last  run with NHWC memory layout (faster for many CNNs on CPU);
                None: on for 4-D convolutional models on the CPU.
    freeze      ``torch.jit.freeze`` a TorchScript model (weights inlined as
                constants, so the JIT folds them) and run it on the CPU through
                oneDNN Graph, which fuses convolutions with their activations;
                same outputs to ~1e-4, MobileNetV2 on 2 cores about 1.4x faster
                than as loaded with channels-last alone.  None: on for TorchScript.
    threads     torch intra-op threads (None: leave torch's setting).
    loader_threads  decoder threads (None: the CPUs torch leaves free, which decode
                the next batch while torch runs the current one; every CPU when
                torch's threads fill them all, between model calls).
    """

    kind = "torch"
    # what ImageSearch(whitening="auto", dba="auto", expand="auto") -- its defaults -- uses
    # with this extractor: set by build_extractor from the model's MODELS entry
    engine_defaults: dict[str, Any] | None = None

    def __init__(self, model, *, size=224, resize=256, mean=_image.IMAGENET_MEAN, std=_image.IMAGENET_STD,
                 preprocess=None, pooling="avg", gem_p=3.0, scales=(1.0,), normalize=True, layer=None,
                 device="cpu", batch_size=32,
                 channels_last=None, freeze=None, threads=None, name=None, source=None, loader_threads=None):
        torch = _torch()
        if preprocess is not None:
            size, resize, mean, std = _preprocess_settings(preprocess, size, resize, mean, std)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module (or TorchScript module), found {type(model).__name__}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS}, found {pooling!r}")
        gem_p, scales = _check_gem_p(gem_p), _check_scales(scales)
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"size: expected a positive int, found {size!r}")
        if resize is not None and (not isinstance(resize, int) or resize < size):
            raise ValueError(f"resize: expected None or an int >= size ({size}), found {resize!r}")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive int, found {batch_size!r}")
        self.model = model.eval().to(device)
        is_script = isinstance(self.model, torch.jit.ScriptModule)
        if (is_script if freeze is None else freeze) and layer is None:
            if not is_script:
                raise ValueError("freeze=True needs a TorchScript model (torch.jit.script or from_torchscript)")
            self.model = _frozen(torch, self.model)
        # A frozen graph on the CPU runs through oneDNN Graph, which fuses
        # convolutions with their activations (MobileNetV2 on 2 cores: ~30% faster).
        self._fuser = is_script and self.model is not model and torch.device(device).type == "cpu"
        self.size, self.resize = size, resize
        self.mean, self.std = _triple(mean, "mean"), _triple(std, "std")
        self.pooling, self.normalize, self.layer = pooling, bool(normalize), layer
        self.gem_p, self.scales = gem_p, scales
        self.device, self.batch_size = torch.device(device), batch_size
        self.threads, self.loader_threads = threads, loader_threads
        self.name = name or type(model).__name__
        self.source = source  # how to rebuild it: {"torchscript": path} or {"builder": name, "weights": path}
        self.metric = "cosine" if self.normalize else "l2"
        self.dtype = np.float32
        self._hooked = None
        if layer is not None:
            modules = dict(self.model.named_modules())
            if layer not in modules:
                some = ", ".join(list(modules)[1:12])
                raise ValueError(f"layer: no sub-module named {layer!r}; some names: {some}")
            if isinstance(self.model, torch.jit.ScriptModule):
                raise ValueError("layer= needs an nn.Module: TorchScript modules take no forward hooks; "
                                 "script the trunk you want instead")
            modules[layer].register_forward_hook(self._hook)
        self.channels_last = channels_last
        self.stats = {"model_seconds": 0.0, "images": 0}
        self.dim = self._probe_dim()

    def _hook(self, module, inputs, output):
        self._hooked = output

    # -- running the model ------------------------------------------------
    def _run_model(self, x):
        """The model's output (or the hooked layer's) for one NCHW tensor on the device."""
        torch = _torch()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._fuser:
            with _onednn_graph(torch):
                out = self.model(x)
        else:
            out = self.model(x)
        if self.layer is not None:
            out = self._hooked
        if isinstance(out, (tuple, list)):
            out = out[0]
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return out

    def _forward(self, batch):
        """float32 NCHW numpy batch -> (n, dim) float32 numpy features."""
        torch = _torch()
        F = torch.nn.functional
        t0 = time.perf_counter()
        if self.threads:
            torch.set_num_threads(int(self.threads))
        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self.device.type != "cpu":
                x = x.to(self.device, non_blocking=True)
            v = None
            for s in self.scales:
                xs = x
                if s != 1.0:
                    hw = (_scaled_size(x.shape[2], s), _scaled_size(x.shape[3], s))
                    xs = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=s < 1.0)
                vs = _pool(self._run_model(xs), self.pooling, self.gem_p).float()
                if self.normalize and len(self.scales) > 1:
                    vs = F.normalize(vs, dim=1)  # each scale weighs the same (as cirtorch's multi-scale)
                v = vs if v is None else v + vs
            if self.normalize:
                v = F.normalize(v, dim=1)
            res = v.cpu().numpy()
        self.stats["model_seconds"] += time.perf_counter() - t0
        self.stats["images"] += len(batch)
        return np.ascontiguousarray(res, dtype=np.float32)

    def _probe_dim(self):
        torch = _torch()
        x = np.zeros((1, 3, self.size, self.size), dtype=np.float32)
        if self.channels_last is None:
            has_conv = any(isinstance(m, torch.nn.Conv2d) for m in self.model.modules()) or isinstance(
                self.model, torch.jit.ScriptModule)
            self.channels_last = self.device.type == "cpu" and has_conv
        try:
            try:
                v = self._forward(x)
            except Exception:
                if not self._fuser:
                    raise
                self._fuser = False  # this torch build cannot fuse the graph: run it as it is
                v = self._forward(x)
        except Exception as e:
            raise ValueError(f"the model failed on a (1, 3, {self.size}, {self.size}) input: {e}") from e
        self.stats = {"model_seconds": 0.0, "images": 0}
        if v.ndim != 2 or v.shape[0] != 1:
            raise ValueError(f"the pooled features have shape {v.shape}: expected (1, dim)")
        return int(v.shape[1])

    def _loader_kwargs(self):
        return dict(size=self.size, resize=self.resize, mean=self.mean, std=self.std)

    def _load_batch(self, items, threads=None):
        if self.resize is not None:
            return _image.load_batch(items, threads=threads, **self._loader_kwargs())
        return _load_squashed(items, self.size, self.mean, self.std)

    def _free_cpus(self):
        """CPUs that torch's own threads leave to the decoder (all of them on a GPU)."""
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if self.device.type != "cpu":
            return cpus
        return cpus - (int(self.threads) if self.threads else _torch().get_num_threads())

    def _iter_batches(self, items, threads=None):
        """(start, batch, failed) per batch.  When torch leaves CPUs free (or runs
        on a GPU) the next batch is decoded on them while the model runs the
        current one.  When torch's threads already fill every CPU, overlapping
        only makes the decoder and torch preempt each other (about 10% slower
        with MobileNetV2 on 2 cores, where decoding is 3% of the work): then
        each batch is decoded on every CPU first, and the model runs after."""
        free = self._free_cpus()
        if self.resize is not None and free > 0:
            yield from _image.iter_batches(items, batch_size=self.batch_size, threads=threads or free,
                                           **self._loader_kwargs())
            return
        for start in range(0, len(items), self.batch_size):
            batch, failed = self._load_batch(items[start:start + self.batch_size], threads=threads)
            yield start, batch, [_image.Failure(start + f[0], f[1], f[2], f.error) for f in failed]

    # -- the Extractor protocol ------------------------------------------
    def extract(self, images):
        """Features of paths, bytes, uint8 (H, W, 3) arrays or PIL images; a bad one raises."""
        items = [as_loadable(im) for im in images]
        out = []
        for i in range(0, len(items), self.batch_size):
            chunk = items[i:i + self.batch_size]
            batch, failed = self._load_batch(chunk, threads=self.loader_threads)
            if failed:
                raise failed[0].error
            out.append(self._forward(batch))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def extract_files(self, paths, threads=None, progress=None):
        """(features (n_ok, dim), failed [(index, path, reason)]).  Batches are decoded
        on native threads, overlapped with the model when torch leaves CPUs free."""
        paths = list(paths)
        feats, failed = [], []
        for start, batch, bad in self._iter_batches(paths, threads=threads or self.loader_threads):
            failed.extend(bad)
            if len(batch):
                feats.append(self._forward(batch))
            if progress is not None:
                progress(min(start + self.batch_size, len(paths)) - start)
        X = np.concatenate(feats) if feats else np.zeros((0, self.dim), np.float32)
        return X, failed

    def config(self):
        return {
            "kind": "torch", "name": self.name, "dim": self.dim, "metric": self.metric,
            "size": self.size, "resize": self.resize, "mean": list(self.mean), "std": list(self.std),
            "pooling": self.pooling, "gem_p": self.gem_p, "scales": list(self.scales),
            "normalize": self.normalize, "layer": self.layer, "source": self.source,
        }

    def __repr__(self):
        gem_p = f", gem_p={self.gem_p:g}" if self.pooling == "gem" else ""
        scales = f", scales={self.scales}" if self.scales != (1.0,) else ""
        return (f"TorchExtractor({self.name!r}, dim={self.dim}, pooling={self.pooling!r}{gem_p}{scales}, size={self.size}, "
                f"resize={self.resize}, mean={self.mean}, std={self.std})")

    # -- constructors ------------------------------------------------------
    @classmethod
    def from_torchscript(cls, path, **kwargs):
        """A TorchScript file as a complete backbone (needs torch only, not torchvision).
        Preprocessing settings not given come from what the file declares (see
        declared_preprocess), else the defaults: size 224, resize 256, ImageNet's mean/std."""
        torch = _torch()
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TorchScript model {path!r} does not exist")
        try:
            model = torch.jit.load(path, map_location="cpu")
        except Exception as e:
            raise ValueError(f"{path}: not a TorchScript file torch.jit.load can read ({e})") from e
        kwargs = _with_declared_preprocess(kwargs, path, required=False)
        kwargs.setdefault("name", os.path.basename(path))
        return cls(model, source={"torchscript": os.path.abspath(path)}, **kwargs)


# ----------------------------------------------------------------------------
# MobileNetV2, defined here so the named builder needs torch only
# ----------------------------------------------------------------------------
# torchvision's MobileNetV2 does not import beside every torch build (its
# compiled ops must match torch's), so the architecture is written out here
# with torchvision's parameter names: its state_dicts load unchanged.

def _mobilenet_v2(num_classes=1000, width=1.0, tf_padding=False):
    """MobileNetV2 with torchvision's parameter names.  tf_padding: pad the stride-2
    3x3 convolutions as TensorFlow's "SAME" does (the extra row and column at the
    bottom and right when the input is even) instead of symmetrically -- what
    weights trained in TensorFlow expect (models/README.md: features at cosine 0.90
    to the original with symmetric padding, 0.9985 with TF's)."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    class SameConv2d(nn.Conv2d):
        """A Conv2d (same parameters, same names) padded as TensorFlow's SAME."""

        def forward(self, x):
            kh, kw = self.kernel_size
            sh, sw = self.stride
            h, w = x.shape[-2], x.shape[-1]
            ph = max(kh - (sh if h % sh == 0 else h % sh), 0)
            pw = max(kw - (sw if w % sw == 0 else w % sw), 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            return self._conv_forward(x, self.weight, self.bias)

    def make_divisible(v, divisor=8):
        new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
        return new_v + divisor if new_v < 0.9 * v else new_v

    def conv_bn(inp, out, kernel, stride, groups=1, act=True):
        if tf_padding and stride > 1:
            conv = SameConv2d(inp, out, kernel, stride, 0, groups=groups, bias=False)
        else:
            conv = nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
        layers = [conv, nn.BatchNorm2d(out)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        return nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, inp, out, stride, expand):
            super().__init__()
            hidden = int(round(inp * expand))
            self.use_res = stride == 1 and inp == out
            layers = []
            if expand != 1:
                layers.append(conv_bn(inp, hidden, 1, 1))
            layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                       nn.Conv2d(hidden, out, 1, 1, 0, bias=False), nn.BatchNorm2d(out)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
            inp = make_divisible(32 * width)
            self.last_channel = make_divisible(1280 * max(1.0, width))
            feats = [conv_bn(3, inp, 3, 2)]
            for t, c, n, s in settings:
                out = make_divisible(c * width)
                for i in range(n):
                    feats.append(InvertedResidual(inp, out, s if i == 0 else 1, t))
                    inp = out
            feats.append(conv_bn(inp, self.last_channel, 1, 1))
            self.features = nn.Sequential(*feats)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))

        def forward(self, x):
            return self.classifier(self.features(x).mean(dim=(2, 3)))

    return MobileNetV2()


# name -> (constructor(torch), trunk getter, torchvision hub file prefix)
def _tv(name):
    def build():
        try:
            import torchvision
        except Exception as e:
            raise ImportError(
                f"the {name!r} builder needs torchvision, which does not import here ({e}). "
                "Install a torchvision that matches your torch, or export the model to TorchScript "
                "and use TorchExtractor.from_torchscript / --extractor path.ts.pt") from e
        return getattr(torchvision.models, name)(weights=None)
    return build


def _strip_head(name, model):
    """The part of a classifier whose output is the last feature map (or embedding)."""
    torch = _torch()
    if hasattr(model, "features") and name.startswith(("mobilenet", "efficientnet", "vgg", "densenet", "convnext")):
        return model.features
    if name.startswith(("resnet", "resnext", "wide_resnet", "regnet")):
        return torch.nn.Sequential(*[m for n, m in model.named_children() if n not in ("avgpool", "fc")])
    if name.startswith("vit"):
        model.heads = torch.nn.Identity()
        return model
    return model


# "defaults": extractor settings that replace TorchExtractor's own for this model;
# "engine": what ImageSearch does with its vectors by default (whitening: the
# PCAWhitening settings; dba, expand: neighbours).  MobileNetV2's are the best
# combination measured on flowers17 within 1.5x the extraction time of average
# pooling (benchmarks/README.md, "Retrieval quality").
MODELS = {
    "mobilenet_v2": {"build": lambda tf_padding=False: _mobilenet_v2(tf_padding=tf_padding), "hub": "mobilenet_v2-",
                     "defaults": {"pooling": "gem", "gem_p": 3.0},
                     "engine": {"whitening": {"dim_out": 128, "power": 0.0}, "dba": 5, "expand": 5}},
    "resnet18": {"build": _tv("resnet18"), "hub": "resnet18-"},
    "resnet50": {"build": _tv("resnet50"), "hub": "resnet50-"},
    "efficientnet_b0": {"build": _tv("efficientnet_b0"), "hub": "efficientnet_b0_"},
    "vit_b_16": {"build": _tv("vit_b_16"), "hub": "vit_b_16-"},
}


def _find_weights(name, prefix):
    torch = _torch()
    ckpt = os.path.join(torch.hub.get_dir(), "checkpoints")
    if os.path.isdir(ckpt):
        for f in sorted(os.listdir(ckpt)):
            if f.startswith(prefix) and f.endswith((".pth", ".pt")):
                return os.path.join(ckpt, f)
    raise MissingWeightsError(
        f"no weights for {name!r}: nothing is downloaded. Pass weights='path/to/{name}.pth' "
        f"(a state_dict for torchvision's {name}), or put torchvision's file ({prefix}*.pth) in {ckpt}, "
        f"or use a TorchScript file (TorchExtractor.from_torchscript). weights='random' gives an "
        f"untrained network (for tests only).")


def _load_state_dict(model, path):
    """Load the weights into ``model``; -> the checkpoint's "preprocess" dict, if it has one."""
    torch = _torch()
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read a state_dict ({e})") from e
    preprocess = None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        preprocess = sd.get("preprocess")
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors), found {type(sd).__name__}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path}: the weights do not fit this model "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return preprocess


# ----------------------------------------------------------------------------
# The preprocessing a weights file declares
# ----------------------------------------------------------------------------
# Normalising with other values than the network was trained with lowers every
# score without any error (the shared MobileNetV2 with ImageNet's mean/std
# instead of its own 0.5/0.5: see README), so a weights file's preprocessing is
# looked up, in this order: a JSON file beside it (``<weights>.json``, keys among
# PREPROCESS_KEYS), a "preprocess" dict saved in the checkpoint next to its
# "state_dict", the file's content (KNOWN_WEIGHTS), torchvision's own file names
# (ImageNet's values).  A named model whose weights declare nothing is refused
# with what to pass, rather than guessed.

# SHA-256 -> settings, for files that carry no sidecar: google-coral's TF-slim
# MobileNetV2 (trained on inputs in [-1, 1]) as converted in the project's
# shared data (models/README.md: "mean = std = (0.5, 0.5, 0.5)").
KNOWN_WEIGHTS = {
    "18d9d28170fa9142e8f641b3d787413d297bd87d09c53b27f8a4d61025beedb7": {"mean": 0.5, "std": 0.5},  # state_dict
    "4cdb968a36d9c523a6e14a28879d5ac5fc86d63a9df4a0b45132d60de174834f": {"mean": 0.5, "std": 0.5},  # features.ts
    "7c6a6d220d573fba5e0ae2f9e574f22d3c2319fd4ef2c9adc0b8abe1133ad5a0": {"mean": 0.5, "std": 0.5},  # classifier.ts
}
# SHA-256 -> architecture settings the weights need: google-coral's MobileNetV2 was
# trained in TensorFlow, with SAME padding (models/README.md, "Padding").
KNOWN_ARCHITECTURE = {
    "18d9d28170fa9142e8f641b3d787413d297bd87d09c53b27f8a4d61025beedb7": {"tf_padding": True},
}
TORCHVISION_FILE = re.compile(r"^[a-z0-9_]+-[0-9a-f]{8}\.pth$")  # e.g. mobilenet_v2-b0353104.pth


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def declared_preprocess(path: str, checkpoint_preprocess: dict | None = None) -> dict[str, Any] | None:
    """The preprocessing settings (a dict with keys among PREPROCESS_KEYS) that the
    weights file ``path`` declares, or None when it declares none."""
    sidecar = path + ".json"
    if os.path.isfile(sidecar):
        try:
            with open(sidecar, encoding="utf-8") as f:
                found = json.load(f)
        except ValueError as e:
            raise ValueError(f"{sidecar}: not valid JSON ({e})") from e
        where = sidecar
    elif checkpoint_preprocess is not None:
        found, where = checkpoint_preprocess, f"{path} (its 'preprocess' entry)"
    elif TORCHVISION_FILE.match(os.path.basename(path)):
        return {"mean": _image.IMAGENET_MEAN, "std": _image.IMAGENET_STD}
    else:
        known = KNOWN_WEIGHTS.get(_sha256(path)) if os.path.isfile(path) else None
        return dict(known) if known else None
    if not isinstance(found, dict) or not found or set(found) - set(PREPROCESS_KEYS):
        raise ValueError(f"{where}: expected a dict with keys among {PREPROCESS_KEYS}, e.g. "
                         f'{{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}; found {found!r}')
    return found


def _with_declared_preprocess(kwargs, path, checkpoint_preprocess=None, required=True):
    """kwargs with the settings the weights declare filled in where the caller gave none
    (settings the caller gave always win); refused when mean/std stay unknown and ``required``."""
    if not isinstance(kwargs.get("preprocess") or {}, dict):
        return kwargs  # TorchExtractor says what to give instead of a Python transform
    given = dict(kwargs.get("preprocess") or {}, **{k: kwargs[k] for k in PREPROCESS_KEYS if k in kwargs})
    if "mean" in given and "std" in given:
        return kwargs
    declared = declared_preprocess(path, checkpoint_preprocess) or {}
    if required and not ({"mean", "std"} <= set(given) | set(declared)):
        raise ValueError(
            f"{path}: these weights do not say how their inputs are normalised, and the wrong values lower "
            "retrieval quality without any error. Pass mean= and std= (extractor_params={'mean': ..., "
            "'std': ...}, or --mean/--std): torchvision's weights use mean=(0.485, 0.456, 0.406), "
            "std=(0.229, 0.224, 0.225); weights converted from TensorFlow usually 0.5 and 0.5. "
            f"Or write them beside the weights, in {path}.json: "
            '{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}')
    out = dict(kwargs)
    out.pop("preprocess", None)
    out.update({k: v for k, v in declared.items() if k not in given})
    out.update(given)
    return out


def build_extractor(name: str, weights: str | os.PathLike[str] | None = None,
                    **kwargs: Any) -> TorchExtractor:
    """A named pretrained backbone as a TorchExtractor.

    name     one of MODELS, or a timm model name when timm is importable.
    weights  a state_dict file, None (look in the torch hub cache), or "random".
    Settings not given take the model's MODELS "defaults" (MobileNetV2: GeM pooling),
    then TorchExtractor's.
    """
    torch = _torch()
    spec = MODELS.get(name, {})
    for key, value in spec.get("defaults", {}).items():
        kwargs.setdefault(key, value)
    if name in MODELS:
        model = spec["build"]()
        if weights is None:
            weights = _find_weights(name, spec["hub"])
        if weights != "random" and os.path.isfile(os.fspath(weights)):
            arch = KNOWN_ARCHITECTURE.get(_sha256(os.fspath(weights)))
            if arch:  # weights that need another variant of the architecture (TF padding)
                model = spec["build"](**arch)
        if weights != "random":
            declared = _load_state_dict(model, os.fspath(weights))
            kwargs = _with_declared_preprocess(kwargs, os.fspath(weights), declared)
        trunk = _strip_head(name, model)
    else:
        try:
            import timm
        except ImportError:
            raise ValueError(f"unknown model {name!r}: expected a registered extractor "
                             f"({', '.join(_features.registered())}; imgsearch.features.register adds one), "
                             "a TorchScript file, or a timm model name with timm installed") from None
        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
        if weights is None:
            raise MissingWeightsError(f"timm model {name!r}: pass weights='file.pth' (nothing is downloaded), "
                                      "or weights='random'")
        if weights != "random":
            declared = _load_state_dict(model, os.fspath(weights))
            kwargs = _with_declared_preprocess(kwargs, os.fspath(weights), declared)
        trunk = model
    src = {"builder": name, "weights": os.path.abspath(os.fspath(weights)) if weights != "random" else "random"}
    kwargs.setdefault("name", name)
    if kwargs.get("layer") is None and kwargs.get("freeze") is not False:
        # scripted, TorchExtractor freezes it: BatchNorm folded into the convolutions
        # and oneDNN Graph's fusions, as for a TorchScript file (about 2x faster for
        # MobileNetV2 on 2 cores than the eager module).  A model the JIT cannot
        # script runs eagerly.
        try:
            trunk = torch.jit.script(trunk.eval())
        except Exception:
            pass
    with torch.no_grad():
        ex = TorchExtractor(trunk, source=src, **kwargs)
    ex.engine_defaults = spec.get("engine")
    return ex


def get_extractor(spec: str | os.PathLike[str] | Extractor, **kwargs: Any) -> Extractor:
    """An extractor from a name ("colorhist", "phash", "dhash", "mobilenet_v2", ...),
    a TorchScript path (``*.pt`` / ``*.ts``), or an Extractor (returned as is)."""
    if isinstance(spec, Extractor):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"extractor: expected a name, a TorchScript path or an Extractor, found {type(spec).__name__}")
    spec = os.fspath(spec)
    if spec in _features.registered():
        return _features.get_extractor(spec, **kwargs)
    if spec.endswith((".pt", ".pth", ".ts", ".torchscript")) or os.sep in spec:
        kwargs.pop("weights", None)
        return TorchExtractor.from_torchscript(spec, **kwargs)
    return build_extractor(spec, **kwargs)


for _name in MODELS:  # the named backbones, in the one registry; torch is imported when one is built
    _features.register(_name, functools.partial(build_extractor, _name))


def from_config(config: dict[str, Any], **overrides: Any) -> Extractor:
    """Rebuild an extractor from its ``config()`` (as saved with an index)."""
    config = dict(config)
    if config.get("kind") != "torch":
        return _features.from_config(config)
    src = config.get("source") or {}
    # a config saved before gem_p / scales existed lacks them: the defaults then (3, one scale)
    saved = ("size", "resize", "mean", "std", "pooling", "gem_p", "scales", "normalize")
    kw: dict[str, Any] = {k: config[k] for k in saved if k in config}
    kw.update(overrides)
    if "torchscript" in src:
        ex = TorchExtractor.from_torchscript(src["torchscript"], name=config.get("name"), **kw)
    elif "builder" in src:
        ex = build_extractor(src["builder"], weights=src.get("weights"), **kw)
    else:
        raise ValueError("this torch extractor was built from a Python nn.Module; pass the same extractor "
                         "object again (ImageSearch.load(path, extractor=...))")
    if ex.dim != config.get("dim", ex.dim):
        raise ValueError(f"the rebuilt extractor gives {ex.dim}-d features, the saved one gave {config['dim']}")
    return ex
