"""ImageSearch end to end on folders the tests write, against NumPy/Flat oracles."""
import os

import numpy as np
import pytest

pytest.importorskip("PIL")

import imgsearch
from imgsearch import ImageSearch
from imgsearch.evaluate import average_precision
from imgfolder import make_folder


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
        res = engine.search(str(root / "a.png"), k=2)
        assert res.distances[0].max() < 1e-6  # the lossless WebP is the same picture
    # a list of sources adds up what each skipped
    again = ImageSearch(extractor="colorhist", index="flat").add([str(root / "sub"), str(root / "a.png")])
    assert again.skipped == [str(root / "sub" / "photo.heic")]


def test_search_by_path_matches_brute_force_over_the_features(folder):
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(root)
    feats = engine.extractor.extract(good)
    res = engine.search(good[:4], k=5)
    assert res.ids.shape == (4, 5)
    for q in range(4):
        assert engine.extractor.metric == "l2"  # sqrt histograms: l2 is the Hellinger distance
        d = ((feats.astype(np.float64) - feats[q]) ** 2).sum(1)
        assert res.paths[q][0] == os.path.abspath(good[q]) and res.distances[q, 0] == pytest.approx(0, abs=1e-6)
        ref = np.sort(d)[:5]
        np.testing.assert_allclose(res.distances[q], ref, rtol=1e-4, atol=1e-5)
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
    r3 = engine.search(good[0], k=3)
    assert r1.ids.tolist() == r3.ids.tolist() == r2.ids.tolist()


def test_adding_a_path_again_updates_it_and_remove_forgets_it(folder):
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(root)
    n = len(engine)
    first_id = engine.search(good[0], k=1).ids[0, 0]
    rep = engine.add(good[:2])
    assert rep.updated == 2 and rep.added == 0 and len(engine) == n
    assert engine.search(good[0], k=1).ids[0, 0] == first_id
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
        res = engine.search(good[0], k=len(good), filter=flt)
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
    assert again._meta[a.ids[0, 0]] == {"note": "first"}
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


def test_evaluate_matches_an_independent_computation(folder):
    root, good, labels, bad = folder
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(root)
    res = engine.evaluate("folders")
    feats = engine.extractor.extract(good)
    labs = np.array([labels[p] for p in good])
    aps, p1 = [], []
    for q in range(len(good)):
        d = np.abs(feats - feats[q]).sum(1)
        d[q] = np.inf
        order = np.argsort(d, kind="stable")[:-1]
        rel = labs[order] == labs[q]
        aps.append(average_precision(rel, (labs == labs[q]).sum() - 1))
        p1.append(rel[0])
    assert res["mAP"] == pytest.approx(np.mean(aps), abs=0.02)  # ties may order differently
    assert res["precision@1"] == pytest.approx(np.mean(p1), abs=0.1)
    assert res["mAP"] > 0.8  # colour classes are easy for a colour histogram


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
    assert df["rank"].tolist() == [0, 1, 2, 0, 1, 2]
    assert df["id"].tolist() == res.ids.ravel().tolist()
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
    res = engine.search([good[0], imgsearch.image.load(good[1]), Image.open(good[2])], k=2)
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
