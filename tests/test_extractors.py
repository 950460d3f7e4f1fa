"""Torch extractors: the loading code on weights the tests make, and real weights when present."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("PIL")

import imgsearch
from imgsearch import extractors
from imgsearch.datasets import shared_data
from imgsearch.extractors import TorchExtractor
from imgfolder import make_folder

MODELS = shared_data("models")


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU())


def pillow_batch(paths, size, resize, mean, std):
    """The Pillow + NumPy preprocessing our peers use: an independent oracle."""
    from PIL import Image
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        s = resize / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        a = np.asarray(im.crop((left, top, left + size, top + size)), np.float32) / 255.0
        out.append(((a - mean) / std).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


@pytest.fixture
def folder(tmp_path, rng):
    return make_folder(str(tmp_path / "imgs"), rng, per_class=3)


@pytest.mark.parametrize("pooling", ["avg", "max", "gem"])
def test_features_match_torch_run_by_hand(folder, pooling):
    good, labels, bad = folder
    model = small_cnn()
    ex = TorchExtractor(model, size=32, resize=40, pooling=pooling, batch_size=4)
    assert ex.dim == 16 and ex.metric == "cosine"
    feats, failed = ex.extract_files(good + bad)
    assert sorted(p for _, p, _ in failed) == sorted(bad)
    assert feats.shape == (len(good), 16) and feats.dtype == np.float32
    mean, std = np.array(imgsearch.image.IMAGENET_MEAN), np.array(imgsearch.image.IMAGENET_STD)
    x = torch.from_numpy(pillow_batch(good, 32, 40, mean, std))
    with torch.no_grad():
        fm = model(x)
    ref = {"avg": fm.mean((2, 3)), "max": fm.amax((2, 3)),
           "gem": fm.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)}[pooling]
    ref = torch.nn.functional.normalize(ref, dim=1).numpy()
    cos = (feats * ref).sum(1)
    assert cos.min() > 0.98, cos  # resampling differs slightly from Pillow's
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1, rtol=1e-5)
    # extract() on the same files gives the same vectors; a bad file raises
    np.testing.assert_allclose(ex.extract(good[:3]), feats[:3], rtol=1e-5, atol=1e-6)
    with pytest.raises(imgsearch.ImageDecodeError):
        ex.extract([bad[0]])


def test_preprocess_dict_sets_the_c_pipeline(folder):
    good, _, _ = folder
    model = small_cnn()
    spec = {"size": 32, "resize": 40, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    by_dict = TorchExtractor(model, preprocess=spec, batch_size=4)
    by_args = TorchExtractor(model, size=32, resize=40, mean=0.5, std=0.25, batch_size=4)
    assert (by_dict.size, by_dict.resize) == (32, 40)
    np.testing.assert_array_equal(by_dict.extract(good[:3]), by_args.extract(good[:3]))
    # keys the dict lacks keep the arguments' values
    partial = TorchExtractor(model, size=32, resize=48, preprocess={"mean": 0.5, "std": 0.25})
    assert (partial.size, partial.resize) == (32, 48)
    with pytest.raises(TypeError, match="instead of a Python transform"):
        TorchExtractor(model, preprocess=lambda im: im)
    with pytest.raises(ValueError, match="unknown keys"):
        TorchExtractor(model, preprocess={"size": 32, "crop": 28})


def test_named_layer_and_errors():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    ex = TorchExtractor(model, size=16, resize=None, layer="1", normalize=False)
    assert ex.dim == 4 and ex.metric == "l2"
    with pytest.raises(ValueError, match="no sub-module named"):
        TorchExtractor(model, size=16, layer="nope")
    with pytest.raises(ValueError, match="pooling"):
        TorchExtractor(model, pooling="median")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        TorchExtractor(lambda x: x)


def test_torchscript_file_round_trip(tmp_path, folder):
    good, labels, bad = folder
    model = small_cnn(1)
    path = str(tmp_path / "m.ts.pt")
    torch.jit.script(model).save(path)
    ex = TorchExtractor.from_torchscript(path, size=32, resize=40, mean=0.5, std=0.5)
    direct = TorchExtractor(model, size=32, resize=40, mean=0.5, std=0.5)
    np.testing.assert_allclose(ex.extract(good[:4]), direct.extract(good[:4]), rtol=1e-4, atol=1e-5)
    again = extractors.from_config(ex.config())
    np.testing.assert_allclose(again.extract(good[:2]), ex.extract(good[:2]), rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError):
        TorchExtractor.from_torchscript(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="TorchScript"):
        TorchExtractor.from_torchscript(str(tmp_path / "junk.pt"))


def test_named_builder_loads_a_state_dict_and_refuses_to_guess(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(extractors.MissingWeightsError, match="nothing is downloaded"):
        extractors.build_extractor("mobilenet_v2", size=64, resize=64)
    torch.manual_seed(0)
    net = extractors._mobilenet_v2()
    path = str(tmp_path / "mnv2.pth")
    torch.save(net.state_dict(), path)
    ex = extractors.build_extractor("mobilenet_v2", weights=path, size=64, resize=64, mean=0.5, std=0.5)
    assert ex.dim == 1280 and (ex.pooling, ex.gem_p) == ("gem", 3.0)  # the model's MODELS defaults
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        fm = net.eval().features(torch.from_numpy(x))
        ref = torch.nn.functional.normalize(fm.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3), dim=1).numpy()
        ref_avg = torch.nn.functional.normalize(fm.mean((2, 3)), dim=1).numpy()
    np.testing.assert_allclose(ex._forward(x), ref, rtol=1e-4, atol=1e-5)
    avg = extractors.build_extractor("mobilenet_v2", weights=path, size=64, resize=64, mean=0.5, std=0.5,
                                     pooling="avg")  # what the caller gives wins
    np.testing.assert_allclose(avg._forward(x), ref_avg, rtol=1e-4, atol=1e-5)
    # the hub cache is searched when no weights are given
    os.makedirs(tmp_path / "hub" / "checkpoints")
    os.rename(path, tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth")
    hub = extractors.build_extractor("mobilenet_v2", size=64, resize=64)  # torchvision's file: ImageNet's values
    assert hub.dim == 1280 and hub.mean == imgsearch.image.IMAGENET_MEAN and hub.std == imgsearch.image.IMAGENET_STD
    bad = str(tmp_path / "bad.pth")
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="do not fit"):
        extractors.build_extractor("mobilenet_v2", weights=bad)
    assert extractors.build_extractor("mobilenet_v2", weights="random", size=64, resize=64).dim == 1280


@pytest.mark.skipif(not os.path.exists(os.path.join(MODELS, "mobilenet_v2_coral_classifier.ts.pt")),
                    reason="real MobileNetV2 weights not present in ../shared/data/models")
def test_real_mobilenet_v2_recognises_the_cat():
    labels = open(os.path.join(MODELS, "imagenet_labels.txt")).read().splitlines()
    clf = TorchExtractor.from_torchscript(os.path.join(MODELS, "mobilenet_v2_coral_classifier.ts.pt"),
                                          size=224, resize=None, mean=0.5, std=0.5, normalize=False)
    logits = clf.extract([os.path.join(MODELS, "cat.bmp"), os.path.join(MODELS, "grace_hopper.bmp")])
    assert labels[int(np.argmax(logits[0])) + 1] == "Egyptian cat"
    assert labels[int(np.argmax(logits[1])) + 1] == "military uniform"
    # the torchvision-named state_dict through the named builder: same architecture family
    sd = os.path.join(MODELS, "mobilenet_v2_coral_imagenet.pt")
    ex = extractors.build_extractor("mobilenet_v2", weights=sd, size=224, resize=None, mean=0.5, std=0.5,
                                    pooling="avg")
    ts = TorchExtractor.from_torchscript(os.path.join(MODELS, "mobilenet_v2_coral_features.ts.pt"),
                                         size=224, resize=None, mean=0.5, std=0.5)
    a = ex.extract([os.path.join(MODELS, "cat.bmp"), os.path.join(MODELS, "grace_hopper.bmp")])
    b = ts.extract([os.path.join(MODELS, "cat.bmp"), os.path.join(MODELS, "grace_hopper.bmp")])
    # the file is known to come from TensorFlow: the builder pads as TF does, like the
    # TorchScript trunk (with symmetric padding the cosine is about 0.90: models/README.md)
    np.testing.assert_allclose((a * b).sum(1), 1.0, atol=2e-4)
    assert isinstance(ex.model, torch.jit.ScriptModule)  # scripted and frozen, as a TorchScript file


def test_tf_same_padding_equals_manual_padding():
    """tf_padding: each stride-2 convolution sees the input padded as TF's SAME does
    (even side: 0 before, 1 after; odd side: 1 and 1) -- checked against F.pad + conv."""
    torch.manual_seed(1)
    tf = extractors._mobilenet_v2(tf_padding=True).eval()
    sym = extractors._mobilenet_v2().eval()
    sym.load_state_dict(tf.state_dict())  # the same parameter names: one state_dict fits both
    first_tf, first_sym = tf.features[0][0], sym.features[0][0]
    F = torch.nn.functional
    for h, w in ((32, 32), (33, 31), (64, 48)):
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            pads = [(1 if w % 2 else 0), 1, (1 if h % 2 else 0), 1]
            ref = F.conv2d(F.pad(x, pads), first_sym.weight, None, stride=2)
            np.testing.assert_allclose(first_tf(x).numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
            assert tf.features(x).shape == sym.features(x).shape == (2, 1280, -(-h // 32), -(-w // 32))
            same = torch.allclose(tf.features[:2](x), sym.features[:2](x))
            assert same == (h % 2 == 1 and w % 2 == 1)  # odd sides: SAME pads 1 and 1, as PyTorch does
    scripted = torch.jit.script(tf.features)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(scripted(x).numpy(), tf.features(x).numpy(), rtol=1e-5, atol=1e-5)


def test_a_weights_file_declares_its_preprocessing_or_is_refused(tmp_path):
    torch.manual_seed(0)
    net = extractors._mobilenet_v2()
    plain = str(tmp_path / "mine.pth")
    torch.save(net.state_dict(), plain)
    with pytest.raises(ValueError, match=r"do not say how.*mean= and std=.*mine.pth.json"):
        imgsearch.ImageSearch(extractor="mobilenet_v2", weights=plain, extractor_params={"size": 64, "resize": 64})
    # a sidecar JSON beside the weights; what the caller gives still wins
    with open(plain + ".json", "w") as f:
        f.write('{"mean": [0.25, 0.5, 0.75], "std": 0.5, "resize": 72}')
    ex = imgsearch.ImageSearch(extractor="mobilenet_v2", weights=plain,
                               extractor_params={"size": 64, "resize": 64}).extractor
    assert (ex.mean, ex.std, ex.size, ex.resize) == ((0.25, 0.5, 0.75), (0.5,) * 3, 64, 64)
    # a "preprocess" entry saved in the checkpoint itself
    packed = str(tmp_path / "packed.pth")
    torch.save({"state_dict": net.state_dict(), "preprocess": {"mean": [0.1] * 3, "std": [0.2] * 3}}, packed)
    ex = extractors.build_extractor("mobilenet_v2", weights=packed, size=64, resize=64)
    assert ex.mean == (0.1,) * 3 and ex.std == (0.2,) * 3
    # given explicitly: no lookup, no error
    assert extractors.build_extractor("mobilenet_v2", weights=plain, preprocess={"mean": 0.3, "std": 0.3},
                                      size=64, resize=64).mean == (0.3,) * 3
    bad = str(tmp_path / "bad.pth")
    torch.save(net.state_dict(), bad)
    with open(bad + ".json", "w") as f:
        f.write('{"norm": 1}')
    with pytest.raises(ValueError, match="bad.pth.json: expected a dict with keys among"):
        extractors.build_extractor("mobilenet_v2", weights=bad)


@pytest.mark.skipif(not os.path.exists(os.path.join(MODELS, "mobilenet_v2_coral_imagenet.pt")),
                    reason="real MobileNetV2 weights not present in ../shared/data/models")
def test_the_shared_weights_bring_their_own_normalisation():
    """The README's quick start with the shared weights: mean = std = 0.5 (models/README.md)."""
    sd = os.path.join(MODELS, "mobilenet_v2_coral_imagenet.pt")
    engine = imgsearch.ImageSearch(extractor="mobilenet_v2", weights=sd, index="flat")
    assert engine.extractor.mean == (0.5,) * 3 and engine.extractor.std == (0.5,) * 3
    cat = os.path.join(MODELS, "cat.bmp")
    by_hand = extractors.build_extractor("mobilenet_v2", weights=sd, mean=0.5, std=0.5)
    np.testing.assert_allclose(engine.extractor.extract([cat]), by_hand.extract([cat]), rtol=1e-5, atol=1e-6)
    ts = TorchExtractor.from_torchscript(os.path.join(MODELS, "mobilenet_v2_coral_features.ts.pt"))
    assert ts.mean == (0.5,) * 3 and ts.std == (0.5,) * 3


def test_builders_never_fall_back_to_random_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    try:
        import torchvision  # noqa: F401
        expected = extractors.MissingWeightsError  # weights are looked for, none are found
    except Exception:
        expected = ImportError  # torchvision does not import beside this torch: say so, suggest TorchScript
    for name in ("resnet18", "resnet50", "efficientnet_b0", "vit_b_16"):
        with pytest.raises(expected) as e:
            extractors.build_extractor(name)
        assert ("TorchScript" in str(e.value)) or ("nothing is downloaded" in str(e.value))
    with pytest.raises(ValueError, match="unknown model .*colorhist.*mobilenet_v2.*features.register"):
        extractors.build_extractor("no_such_net")
    with pytest.raises(ValueError, match="TorchScript"):
        TorchExtractor(small_cnn(), size=16, freeze=True)


def test_frozen_torchscript_gives_the_unfrozen_outputs(tmp_path, folder):
    good, labels, bad = folder
    path = str(tmp_path / "m.ts.pt")
    torch.jit.script(small_cnn(2)).save(path)
    frozen = TorchExtractor.from_torchscript(path, size=32, resize=40)
    plain = TorchExtractor.from_torchscript(path, size=32, resize=40, freeze=False, channels_last=False)
    assert isinstance(frozen.model, torch.jit.ScriptModule) and frozen.channels_last
    np.testing.assert_allclose(frozen.extract(good[:4]), plain.extract(good[:4]), rtol=1e-4, atol=1e-5)


def test_decoding_overlaps_the_model_only_when_torch_leaves_cpus_free(folder, monkeypatch):
    good, labels, bad = folder
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep the process's setting
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    ex = TorchExtractor(small_cnn(), size=32, resize=40, batch_size=4)
    calls = []
    real = imgsearch.image.iter_batches
    monkeypatch.setattr(imgsearch.image, "iter_batches", lambda *a, **k: calls.append(k["threads"]) or real(*a, **k))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    seq, f1 = ex.extract_files(good + bad)
    assert calls == []  # torch's 2 threads fill the 2 CPUs: decode between model calls
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    over, f2 = ex.extract_files(good + bad)
    assert calls == [6]  # the 6 CPUs torch leaves free decode the next batch
    np.testing.assert_array_equal(seq, over)
    assert f1 == f2 and sorted(p for _, p, _ in f1) == sorted(bad)


def test_engine_progress_moves_per_model_batch(folder, tmp_path, monkeypatch):
    from imgsearch import ImageSearch
    good = make_folder(str(tmp_path / "many"), np.random.default_rng(1), per_class=14, broken=False)[0]
    ts = str(tmp_path / "tiny.ts.pt")
    torch.jit.script(small_cnn()).save(ts)
    updates = []

    class Bar:
        update = staticmethod(updates.append)
        close = staticmethod(lambda: None)

    monkeypatch.setattr(ImageSearch, "_progress", staticmethod(lambda total: Bar()))
    engine = ImageSearch(extractor=ts, index="flat", extractor_params={"size": 32, "resize": 32, "batch_size": 8})
    engine.add(good)
    assert sum(updates) == len(good) > 32 and max(updates) <= 8
