"""ImageSearch end to end on folders the tests write, against NumPy/Flat oracles."""
import os
import time

import numpy as np
import pytest

pytest.importorskip("PIL")

import imgsearch
from imgsearch import ImageSearch
from imgfolder import make_flowers_layout, make_folder


@pytest.fixture
def folder(tmp_path, rng):
    root = tmp_path / "photos"
    good, labels, bad = make_folder(str(root), rng)
    return str(root), good, labels, bad


def test_add_folder_reports_every_unreadable_file(folder):
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    report = engine.add(root)
    assert report.added == len(good) and report.updated == 0
    assert sorted(p for p, _ in report.failed) == sorted(os.path.abspath(p) for p in bad)
    assert all(reason for _, reason in report.failed)
    assert len(engine) == len(good)
    assert sorted(engine.paths) == sorted(os.path.abspath(p) for p in good)


def test_webp_is_indexed_tiff_fails_with_a_reason_and_other_files_are_counted_as_skipped(tmp_path, rng):
    from PIL import Image
    from imgfolder import make_image
    root = tmp_path / "mixed"
    (root / "sub").mkdir(parents=True)
    arr = make_image(rng, (200, 40, 40))
    Image.fromarray(arr).save(root / "a.png")
    Image.fromarray(arr).save(root / "sub" / "b.webp", lossless=True)
    Image.fromarray(arr).save(root / "c.tiff")
    for name in ("notes.txt", "sub/photo.heic", "README"):
        (root / name).write_bytes(b"not read")
    (root / ".DS_Store").write_bytes(b"hidden: not counted")
    engine = ImageSearch(extractor="colorhist", index="flat")
    report = engine.add(str(root))
    assert sorted(report.skipped) == sorted(str(root / n) for n in ("README", "notes.txt", "sub/photo.heic"))
    assert "skipped=3" in repr(report) and ".heic 1" in repr(report) and ".txt 1" in repr(report)
    assert [(os.path.basename(p), r) for p, r in report.failed if p.endswith(".tiff")] == [
        ("c.tiff", "TIFF is not supported (convert to PNG or JPEG)")]
    if imgsearch._core._HAVE_WEBP:
        assert report.added == 2 and report.ok is False
        res = engine.search(str(root / "a.png"), k=1)  # itself excluded: hit 1 is the WebP
        assert res.paths[0] == [str(root / "sub" / "b.webp")]
        assert res.distances[0].max() < 1e-6  # the lossless WebP is the same picture
    # a list of sources adds up what each skipped
    again = ImageSearch(extractor="colorhist", index="flat").add([str(root / "sub"), str(root / "a.png")])
    assert again.skipped == [str(root / "sub" / "photo.heic")]


def test_search_by_path_matches_brute_force_over_the_features(folder):
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(root)
    feats = engine.extractor.extract(good)
    res = engine.search(good[:4], k=5)                        # the query itself left out
    with_self = engine.search(good[:4], k=5, exclude_self=False)
    assert res.ids.shape == with_self.ids.shape == (4, 5)
    for q in range(4):
        assert engine.extractor.metric == "l2"  # sqrt histograms: l2 is the Hellinger distance
        d = ((feats.astype(np.float64) - feats[q]) ** 2).sum(1)
        assert with_self.paths[q][0] == os.path.abspath(good[q])
        assert with_self.distances[q, 0] == pytest.approx(0, abs=1e-6)
        np.testing.assert_allclose(with_self.distances[q], np.sort(d)[:5], rtol=1e-4, atol=1e-5)
        others = np.delete(np.arange(len(good)), q)
        order = others[np.argsort(d[others], kind="stable")[:5]]
        assert os.path.abspath(good[q]) not in res.paths[q]
        assert res.paths[q] == [os.path.abspath(good[i]) for i in order]
        np.testing.assert_allclose(res.distances[q], d[order], rtol=1e-4, atol=1e-5)
    # same colour class comes first
    assert all(labels[good[q]] in p for q in range(4) for p in res.paths[q][:3])


def test_query_images_from_arrays_and_pil(folder):
    from PIL import Image
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(root)
    arr = imgsearch.image.load(good[0])
    r1 = engine.search(arr, k=3)
    r2 = engine.search(Image.open(good[0]), k=3)
    r3 = engine.search(good[0], k=3, exclude_self=False)  # an image array cannot be left out: compare alike
    assert r1.ids.tolist() == r3.ids.tolist() == r2.ids.tolist()


def test_adding_a_path_again_updates_it_and_remove_forgets_it(folder):
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(root)
    n = len(engine)
    first_id = engine.search(good[0], k=1, exclude_self=False).ids[0, 0]
    rep = engine.add(good[:2])
    assert rep.updated == 2 and rep.added == 0 and len(engine) == n
    assert engine.search(good[0], k=1, exclude_self=False).ids[0, 0] == first_id
    assert engine.remove(good[0]) == 1 and len(engine) == n - 1
    res = engine.search(good[1], k=len(good))
    assert os.path.abspath(good[0]) not in res.paths[0]
    assert engine.remove(good[0]) == 0


def test_arrays_get_ids_and_metadata_and_filters(folder):
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(good, metadata=lambda p: {"label": labels[p]})
    arr = imgsearch.image.load(good[0])
    rep = engine.add(np.stack([arr, arr[::-1]]))
    assert rep.added == 2 and len(engine) == len(good) + 2
    res = engine.search(good[0], k=len(engine), filter=lambda path, meta: meta is not None and meta["label"] == "blue")
    hits = [p for p in res.paths[0] if p is not None]
    assert hits and all("blue" in p for p in hits)
    assert all(m["label"] == "blue" for m in res.metadata[0] if m is not None)
    res = engine.search(good[0], k=4, filter=[good[5], good[6]])
    assert sorted(p for p in res.paths[0] if p) == sorted(os.path.abspath(p) for p in (good[5], good[6]))
    assert res.ids[0, 2:].tolist() == [-1, -1] and np.isinf(res.distances[0, 2:]).all()


def test_filter_forms_agree_with_brute_force_and_masks_in_disguise_are_refused(folder):
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(good)
    ids = np.arange(len(good))
    feats = engine.index.get(ids).astype(np.float64)
    blue = np.array([labels[p] == "blue" for p in good])
    d = ((feats - feats[0]) ** 2).sum(1)
    d[~blue] = np.inf
    expected = np.argsort(d, kind="stable")[: blue.sum()]
    forms = {"bool array": blue, "list of bools": blue.tolist(), "ids": ids[blue],
             "list of ids": ids[blue].tolist(), "paths": [p for p in good if labels[p] == "blue"],
             "predicate": lambda path, meta: "blue" in os.path.basename(path)}
    pd = pytest.importorskip("pandas")
    forms["pandas bool Series"] = pd.Series(blue)
    for name, flt in forms.items():
        res = engine.search(good[0], k=len(good), filter=flt, exclude_self=False)
        assert res.ids[0, : blue.sum()].tolist() == expected.tolist(), name
        assert (res.ids[0, blue.sum():] == -1).all(), name
    for disguised in (blue.astype(np.uint8), pd.Series(blue).astype(int), blue.astype(int).tolist()):
        with pytest.raises(ValueError, match=r"mask\.astype\(bool\)"):
            engine.search(good[0], k=3, filter=disguised)
    with pytest.raises(ValueError, match=f"expected length >= {len(good)}"):
        engine.search(good[0], k=3, filter=blue[:-1])


@pytest.mark.parametrize("index", ["flat", "hnsw", "kdtree"])
def test_save_and_load_give_the_same_results(folder, tmp_path, index):
    if not hasattr(imgsearch, {"flat": "FlatIndex", "hnsw": "HNSWIndex", "kdtree": "KDTreeIndex"}[index]):
        pytest.skip(f"{index} index not in this build")
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index=index)
    engine.add(root, metadata={good[0]: {"note": "first"}})
    path = str(tmp_path / "e.isx")
    engine.save(path)
    again = ImageSearch.load(path)
    assert len(again) == len(engine) and again.paths == engine.paths
    a, b = engine.search(good[:5], k=4), again.search(good[:5], k=4)
    assert a.ids.tolist() == b.ids.tolist()
    np.testing.assert_array_equal(a.distances, b.distances)
    assert again._meta[again._id_of(good[0])] == {"note": "first"}
    # further adds continue the ids
    rep = again.add(np.zeros((8, 8, 3), np.uint8))
    assert rep.ids[0] == max(engine._paths) + 1
    # a different extractor configuration is refused, saying why
    with pytest.raises(ValueError, match="different extractor"):
        ImageSearch.load(path, extractor=imgsearch.features.ColorHistogram(bins=(4, 4, 4)))
    info = again.info()
    assert info["count"] == len(again) and info["extractor"]["name"] == "colorhist"


def test_bare_index_file_is_not_an_engine(tmp_path):
    idx = imgsearch.FlatIndex(4)
    idx.add(np.eye(4, dtype=np.float32))
    idx.save(str(tmp_path / "i.isx"))
    with pytest.raises(ValueError, match="bare index"):
        ImageSearch.load(str(tmp_path / "i.isx"))


def hand_ap(rel):
    """Average precision of one full ranking (every relevant item in it), by hand."""
    rel = np.asarray(rel, bool)
    ranks = np.flatnonzero(rel) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks)) if len(ranks) else 0.0


@pytest.fixture
def mixed_folder(tmp_path, rng):
    """Three labels whose colours overlap (each image mixes its class colour with a
    random one), so retrieval is imperfect and the metric decides the ranking."""
    from PIL import Image
    from imgfolder import CLASSES, make_image
    root = tmp_path / "mixed"
    paths, labels = [], {}
    for name, color in CLASSES.items():
        (root / name).mkdir(parents=True)
        for i in range(8):
            mix = rng.uniform(0.2, 0.8)
            c = tuple(int(v) for v in mix * np.array(color) + (1 - mix) * rng.integers(0, 255, 3))
            p = str(root / name / f"{i}.png")
            Image.fromarray(make_image(rng, c)).save(p)
            paths.append(p)
            labels[p] = name
    return str(root), paths, labels


def oracle_map(feats, labs, dist):
    aps, p1 = [], []
    for q in range(len(feats)):
        d = dist(feats.astype(np.float64), feats[q].astype(np.float64))
        order = np.delete(np.argsort(d, kind="stable"), np.argsort(d, kind="stable") == q)
        rel = labs[order] == labs[q]
        aps.append(hand_ap(rel))
        p1.append(rel[0])
    return float(np.mean(aps)), float(np.mean(p1))


def test_evaluate_matches_an_independent_computation(mixed_folder):
    root, paths, labels = mixed_folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(root)
    assert engine.extractor.metric == "l2"  # sqrt histograms: l2 is the Hellinger distance
    res = engine.evaluate("folders")
    feats = engine.extractor.extract(paths)
    labs = np.array([labels[p] for p in paths])
    want, want_p1 = oracle_map(feats, labs, lambda X, x: ((X - x) ** 2).sum(1))
    l1, _ = oracle_map(feats, labs, lambda X, x: np.abs(X - x).sum(1))
    assert 0.3 < want < 0.95 and abs(want - l1) > 1e-3  # the fixture tells rankings (and metrics) apart
    assert res["mAP"] == pytest.approx(want, abs=1e-6)
    assert res["precision@1"] == pytest.approx(want_p1, abs=1e-9)
    assert res["queries"] == len(paths)


def test_evaluate_refuses_a_single_label_and_reads_a_labels_csv(tmp_path, rng):
    root = str(tmp_path / "flowers")
    rows = make_flowers_layout(root, rng)
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(root)
    with pytest.raises(ValueError, match="1 distinct label .'images'.*mAP 1.0.*labels.csv"):
        engine.evaluate("folders")
    with pytest.raises(ValueError, match="1 distinct label"):
        engine.evaluate(lambda p: "all")
    by_csv = engine.evaluate(os.path.join(root, "labels.csv"))
    by_dict = engine.evaluate({os.path.join(root, p): lab for p, lab in rows})
    assert by_csv == by_dict and by_csv["queries"] == len(rows) and by_csv["mAP"] < 1.0 + 1e-12
    with pytest.raises(FileNotFoundError, match="labels CSV"):
        engine.evaluate(os.path.join(root, "missing.csv"))


def test_one_path_is_one_entry(folder, tmp_path):
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    twice = [good[0], good[0], os.path.join(os.path.dirname(good[0]), "..", os.path.relpath(good[0], root))]
    rep = engine.add(twice)
    assert (rep.added, rep.updated, len(engine), len(engine.index)) == (1, 0, 1, 1)
    # a folder and a file inside it, and a symlink to a file: still one entry per file
    link = str(tmp_path / "link.png")
    os.symlink(good[1], link)
    rep = engine.add([root, good[2], link])
    assert len(engine) == len(engine.index) == len(good)
    assert rep.added == len(good) - 1 and rep.updated == 1
    assert sorted(engine.paths) == sorted(os.path.realpath(p) for p in good)
    assert all(good[0] not in g for g in engine.duplicates(threshold=1e-6))  # never its own duplicate
    assert engine.remove(link) == 1 and engine.remove(good[1]) == 0  # the link named the same entry
    assert engine.remove(good) == len(good) - 1 and len(engine) == len(engine.index) == 0
    # add_vectors: the same path twice is one entry too (the last vector wins)
    X = np.stack([engine.extractor.extract([good[3]])[0]] * 2)
    X[1] += 0.01
    engine.add_vectors(X, paths=[good[3], good[3]])
    assert len(engine) == len(engine.index) == 1
    np.testing.assert_allclose(engine.index.get([engine._id_of(good[3])])[0], X[1], rtol=1e-6)


def test_search_unpacks_as_distances_then_ids_and_leaves_the_query_out(folder):
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(root)
    hits = engine.search([good[0], good[1]], k=3)
    D, I = hits
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (2, 3)
    assert D is hits.distances and I is hits.ids and np.all(np.diff(D, axis=1) >= 0)
    own = [engine._id_of(good[0]), engine._id_of(good[1])]
    assert own[0] not in I[0] and own[1] not in I[1]
    # the exact index over everything but the query gives the same hits
    X = engine.index.get(np.array(sorted(engine._paths)))
    ids = np.array(sorted(engine._paths))
    for q in range(2):
        d = ((X.astype(np.float64) - X[ids == own[q]][0]) ** 2).sum(1)
        d[ids == own[q]] = np.inf
        np.testing.assert_allclose(D[q], np.sort(d)[:3], rtol=1e-4, atol=1e-5)
    assert [h["rank"] for h in hits[0]] == [1, 2, 3]
    # an image array is not in the index: nothing to leave out
    arr = engine.search(imgsearch.image.load(good[0]), k=3)
    assert arr.ids[0, 0] == own[0] and arr.distances[0, 0] == pytest.approx(0, abs=1e-6)
    # a filter that allows only the query and one other: the other, then padding
    res = engine.search(good[0], k=3, filter=[good[0], good[5]])
    assert res.paths[0][:1] == [os.path.abspath(good[5])] and res.ids[0, 1:].tolist() == [-1, -1]
    with pytest.raises(ValueError, match="Expected k > 0"):
        engine.search(good[0], k=0)


def test_unsaveable_metadata_is_refused_at_add_naming_the_item(folder, tmp_path):
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    with pytest.raises(TypeError, match=f"metadata for {good[2]}.*JSON-serialisable.*int64.*item"):
        engine.add(good[:4], metadata=lambda p: {"n": np.int64(3)} if p == good[2] else {"n": 1})
    assert len(engine) == 0 and len(engine.index) == 0  # refused before anything was indexed
    with pytest.raises(TypeError, match="item 1: expected a JSON"):
        engine.add(np.zeros((2, 8, 8, 3), np.uint8), metadata=[{"a": 1}, {"a": {1, 2}}])
    with pytest.raises(TypeError, match="vector 0"):
        engine.add_vectors(np.zeros((1, engine.extractor.dim), np.float32), metadata=[object()])
    engine.add(good[:4], metadata={good[1]: {"tags": ["a", "b"], "score": 0.5}})
    engine.save(str(tmp_path / "m.isx"))
    again = ImageSearch.load(str(tmp_path / "m.isx"))
    assert again._meta[again._id_of(good[1])] == {"tags": ["a", "b"], "score": 0.5}


def test_duplicates_groups_resized_copies(tmp_path, rng):
    from PIL import Image
    from imgfolder import make_image
    root = tmp_path / "d"
    root.mkdir()
    groups = []
    for g in range(3):
        base = Image.fromarray(make_image(rng, tuple(int(c) for c in rng.integers(0, 255, 3)), size=(96, 96)))
        a, b = str(root / f"g{g}_a.png"), str(root / f"g{g}_b.jpg")
        base.save(a)
        base.resize((80, 80)).save(b, quality=85)
        groups.append(sorted([os.path.abspath(a), os.path.abspath(b)]))
    for i in range(4):  # unrelated noise images
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(str(root / f"noise{i}.png"))
    engine = ImageSearch(extractor="phash", index="flat")
    engine.add(str(root))
    found = engine.duplicates()
    assert sorted(sorted(g) for g in found) == sorted(groups)
    for g in found:  # each group carries its pairwise Hamming distances
        bits = np.unpackbits(engine.extractor.extract(list(g)), axis=1)
        ref = (bits[:, None, :] != bits[None, :, :]).sum(-1)
        np.testing.assert_array_equal(g.distances, ref)


def test_duplicates_never_chain_past_the_threshold(folder):
    """Points on a line one apart (squared L2 1 between neighbours, 4 two apart):
    single linkage at threshold 1 chains all of them into one group."""
    engine = ImageSearch(extractor="colorhist", index="flat")
    X = np.zeros((10, engine.extractor.dim), np.float32)
    X[:, 0] = np.arange(10)
    engine.add_vectors(X)
    groups = engine.duplicates(threshold=1.0, k=4)
    members = [i for g in groups for i in g]
    assert len(members) == len(set(members)) and max(len(g) for g in groups) == 2
    for g in groups:
        ref = ((X[g.ids][:, None, :].astype(np.float64) - X[g.ids][None, :, :]) ** 2).sum(-1)
        np.testing.assert_allclose(g.distances, ref, atol=1e-5)
        assert (g.distances <= 1.0).all() and list(g) == g.ids.tolist()  # array items: listed by id
    # a huge threshold: every pair is within it, yet a group holds at most k + 1 items
    huge = engine.duplicates(threshold=1e9, k=3)
    members = [i for g in huge for i in g]
    assert len(huge) > 1 and len(huge[0]) == 4 and max(len(g) for g in huge) <= 4
    assert len(members) == len(set(members))


def test_bad_arguments_say_what_was_expected(folder):
    root, good, labels, bad = folder
    with pytest.raises(ValueError, match="expected one of"):
        ImageSearch(extractor="colorhist", index="nope")
    with pytest.raises(FileNotFoundError):
        ImageSearch(extractor="colorhist", index="flat").add(os.path.join(root, "missing_dir"))
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(root)
    with pytest.raises(imgsearch.ImageDecodeError):
        engine.search(bad[0])
    with pytest.raises(ValueError, match="metadata"):
        engine.add(good[:3], metadata=[1, 2])


def test_results_table_and_html(folder):
    pd = pytest.importorskip("pandas")
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(root)
    res = engine.search(good[:2], k=3)
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == 6
    assert df["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    assert df["id"].tolist() == res.ids.ravel().tolist()
    assert df["name"].tolist() == [os.path.basename(p) for row in res.paths for p in row]
    html = res._repr_html_()
    assert html.count("<img") == 2 + 6 and "data:image/jpeg;base64," in html
    assert "<script>" not in html


def test_add_globs_pil_images_and_mixed_lists_with_a_report(folder):
    from PIL import Image
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    rep = engine.add(os.path.join(root, "blue", "*.png"))
    blue = [p for p in good if labels[p] == "blue"]
    assert rep.added == len(blue) and not rep.failed
    assert sorted(engine.paths) == sorted(os.path.abspath(p) for p in blue)
    # PIL images, arrays and paths in one list: every item gets an id, the bad path is reported
    others = [p for p in good if labels[p] != "blue"]
    pil = Image.open(others[0])
    rep = engine.add([pil, imgsearch.image.load(others[1]), others[2], bad[0], blue[0]])
    assert (rep.added, rep.updated) == (3, 1) and len(rep.failed) == 1
    assert rep.failed[0][0] == os.path.abspath(bad[0]) and rep.failed[0][1]
    assert len(engine) == len(blue) + 3
    # the PIL image indexed what its file holds
    np.testing.assert_allclose(engine.index.get([rep.ids[0]])[0], engine.extractor.extract([others[0]])[0],
                               rtol=1e-5, atol=1e-6)


def test_batch_search_mixes_paths_arrays_and_pil(folder):
    from PIL import Image
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(root)
    res = engine.search([good[0], imgsearch.image.load(good[1]), Image.open(good[2])], k=2, exclude_self=False)
    assert res.ids.shape == (3, 2) and len(res) == 3
    assert [res.paths[q][0] for q in range(3)] == [os.path.abspath(p) for p in good[:3]]
    assert res.queries[0] == good[0] and res.queries[1].startswith("<")


def test_evaluate_at_k_does_not_count_the_query_itself(folder):
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(root)
    full = engine.evaluate("folders", ks=(1, 5))
    at5 = engine.evaluate("folders", k=5, ks=(1, 5))
    assert at5["precision@5"] == pytest.approx(full["precision@5"])
    assert at5["precision@1"] == pytest.approx(full["precision@1"])
    assert "mAP@5" in at5 and "mAP" in full


def test_html_view_escapes_names_and_stays_bounded(tmp_path, rng):
    from PIL import Image
    from imgfolder import make_image
    root = tmp_path / "x"
    root.mkdir()
    evil = root / '<img src=x onerror="alert(1)">.png'
    Image.fromarray(make_image(rng, (200, 40, 40))).save(str(evil))
    for i in range(14):
        Image.fromarray(make_image(rng, (40, 40, 200))).save(str(root / f"b{i}.png"))
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(str(root))
    res = engine.search(engine.paths, k=len(engine))
    html = res._repr_html_()
    assert "onerror=\"alert" not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    # at most 10 queries x (1 + 10 hits) thumbnails, and a note about the rest
    assert html.count("<img") <= 10 * 11 and "5 more queries not shown" in html
    # a display hook never raises
    res.to_html = lambda *a, **k: 1 / 0
    assert res._repr_html_() is None


class MeanColour(imgsearch.features.Extractor):
    """A user's own extractor: the mean RGB of the image (a Python class, no torch)."""

    name = "mean"
    dim = 3
    metric = "l2"

    def __init__(self, delay=0.0):
        self.delay = delay

    def extract(self, images):
        return np.stack([imgsearch.image.load(im).reshape(-1, 3).mean(0) for im in images]).astype(np.float32)

    def extract_files(self, paths, threads=None):
        time.sleep(self.delay * len(paths))
        return self.extract(paths), []

    def config(self):
        return {"name": self.name, "delay": self.delay}


def test_a_registered_extractor_is_an_engine_extractor(folder, tmp_path, monkeypatch):
    from PIL import Image
    root, good, labels, bad = folder
    monkeypatch.setitem(imgsearch.features._REGISTRY, "mean", None)  # removed again after the test
    imgsearch.features.register("mean", MeanColour)
    engine = ImageSearch(extractor="mean", index="flat")
    engine.add(good)
    want = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float64).reshape(-1, 3).mean(0) for p in good])
    np.testing.assert_allclose(engine.index.get(np.arange(len(good))), want, rtol=1e-5)
    engine.save(str(tmp_path / "mean.isx"))
    again = ImageSearch.load(str(tmp_path / "mean.isx"))  # rebuilt from the registry by name
    assert isinstance(again.extractor, MeanColour) and again.search(good[0], k=2).ids.tolist() == \
        engine.search(good[0], k=2).ids.tolist()
    with pytest.raises(TypeError, match="callable"):
        imgsearch.features.register("nothing", 3)


def test_progress_moves_every_32_images_or_every_second(tmp_path, monkeypatch):
    from PIL import Image
    monkeypatch.setitem(imgsearch.features._REGISTRY, "slow", None)
    imgsearch.features.register("slow", MeanColour)
    p = str(tmp_path / "one.png")
    Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(p)
    for i in range(300):  # 300 files, each read at 4 ms: 1.2 s in all
        os.link(p, str(tmp_path / f"{i}.png"))
    events = []

    class Bar:
        def update(self, n):
            events.append((time.perf_counter(), n))

        def close(self):
            pass

    monkeypatch.setattr(ImageSearch, "_progress", staticmethod(lambda total: Bar()))
    engine = ImageSearch(extractor="slow", index="flat", extractor_params={"delay": 0.004})
    t0 = time.perf_counter()
    engine.add([str(tmp_path / f"{i}.png") for i in range(300)])
    assert sum(n for _, n in events) == 300 and len(engine) == 300
    times = [t0] + [t for t, _ in events]
    for (t, n), before in zip(events, times):
        assert n <= 32 or t - before <= 1.0, f"{n} images in {t - before:.2f} s without an update"
