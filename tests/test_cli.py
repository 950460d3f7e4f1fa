"""The imgsearch command, run in-process and as a console script."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("PIL")

from imgsearch.cli import main
from imgfolder import make_flowers_layout, make_folder


@pytest.fixture
def folder(tmp_path, rng):
    root = str(tmp_path / "photos")
    good, labels, bad = make_folder(root, rng, per_class=4)
    return root, good, labels, bad


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_index_search_info(folder, tmp_path, capsys):
    root, good, labels, bad = folder
    out_file = str(tmp_path / "p.isx")
    code, out, err = run(capsys, "index", root, "-o", out_file, "--index", "flat")
    assert code == 0 and os.path.exists(out_file)
    assert f"indexed {len(good)} images" in err and "skipped" in err and out == ""
    code, out, err = run(capsys, "search", out_file, good[0], "-k", "3", "--json", "--include-self")
    assert code == 0
    res = json.loads(out)
    assert res[0]["results"][0]["path"] == os.path.abspath(good[0]) and len(res[0]["results"]) == 3
    html = str(tmp_path / "r.html")
    code, out, err = run(capsys, "search", out_file, good[0], good[5], "--html", html)
    assert code == 0 and out.count("# ") == 2 and "<img" in open(html).read()
    code, out, err = run(capsys, "info", out_file, "--json")
    info = json.loads(out)
    assert info["count"] == len(good) and info["index"] == "flat" and info["extractor"]["name"] == "colorhist"
    code, out, err = run(capsys, "index", root, "-o", out_file, "--index", "flat", "--strict")
    assert code == 1


def test_eval_with_labels_csv(folder, tmp_path, capsys):
    root, good, labels, bad = folder
    csv_path = str(tmp_path / "labels.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for p in good:
            w.writerow([os.path.relpath(p, root), labels[p]])
    code, out, err = run(capsys, "eval", root, "--labels", csv_path, "--index", "flat", "--json")
    assert code == 0
    res = json.loads(out)
    assert 0.8 < res["mAP"] <= 1 and "precision@10" in res and res["queries"] == len(good)
    code, out, err = run(capsys, "eval", root, "--labels", csv_path, "--index", "flat", "--json", "-k", "10")
    res10 = json.loads(out)
    assert code == 0 and res10["k"] == 10 and res10["mAP"] == res10["mAP@10"] <= res["mAP"]
    assert res10["precision@10"] == pytest.approx(res["precision@10"])


def test_dups_and_errors(folder, tmp_path, capsys):
    root, good, labels, bad = folder
    code, out, err = run(capsys, "dups", root, "--json", "--index", "flat", "--threshold", "64")
    groups = json.loads(out)["groups"]
    assert code == 0 and groups and all(len(g["items"]) <= 11 for g in groups)  # k=10 neighbours: no chains
    for g in groups:
        d = np.array(g["distances"])
        assert d.shape == (len(g["items"]),) * 2 and np.all(d <= 64) and np.allclose(d, d.T)
    code, out, err = run(capsys, "search", str(tmp_path / "missing.isx"), good[0])
    assert code == 2 and "error" in err
    with pytest.raises(SystemExit) as e:
        main(["search"])
    assert e.value.code == 2
    code, out, err = run(capsys, "index", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.isx"))
    assert code == 2 and "not a folder" in err


def test_python_dash_m(folder, tmp_path):
    root, good, labels, bad = folder
    proc = subprocess.run([sys.executable, "-m", "imgsearch", "info", "--help"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0 and "index_file" in proc.stdout


def test_torchscript_extractor_on_the_command_line(folder, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    root, good, labels, bad = folder
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU())
    ts = str(tmp_path / "tiny.ts.pt")
    torch.jit.script(model).save(ts)
    out_file = str(tmp_path / "t.isx")
    code, out, err = run(capsys, "index", root, "-o", out_file, "--index", "flat", "--extractor", ts,
                         "--mean", "0.5,0.5,0.5", "--std", "0.5", "--size", "32")
    assert code == 0, err
    code, out, err = run(capsys, "info", out_file, "--json")
    ex = json.loads(out)["extractor"]
    assert ex["kind"] == "torch" and ex["dim"] == 8 and ex["mean"] == [0.5] * 3 and ex["std"] == [0.5] * 3
    assert ex["size"] == 32 and ex["source"] == {"torchscript": os.path.abspath(ts)}
    # search re-extracts a query that is not in the index with the same TorchScript file
    code, out, err = run(capsys, "search", out_file, bad[0], good[0], "--json")
    assert code == 2 and "error" in err  # an unreadable query is an error, not a silent miss
    code, out, err = run(capsys, "search", out_file, good[0], "-k", "2", "--json", "--include-self")
    assert code == 0 and json.loads(out)[0]["results"][0]["path"] == os.path.abspath(good[0])
    code, out, err = run(capsys, "index", root, "-o", out_file, "--extractor", str(tmp_path / "none.ts.pt"))
    assert code == 2 and "does not exist" in err


def test_named_model_without_weights_fails_fast_and_says_where(folder, tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    root, good, labels, bad = folder
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    code, out, err = run(capsys, "index", root, "-o", str(tmp_path / "m.isx"), "--extractor", "mobilenet_v2")
    assert code == 2 and "nothing is downloaded" in err and "weights" in err
    assert not os.path.exists(tmp_path / "m.isx")


def test_eval_uses_dir_labels_csv_and_refuses_one_label(tmp_path, rng, capsys):
    root = str(tmp_path / "flowers")
    rows = make_flowers_layout(root, rng)
    code, out, err = run(capsys, "eval", root, "--index", "flat", "--json")
    assert code == 0, err
    res = json.loads(out)
    from imgsearch import ImageSearch
    engine = ImageSearch(extractor="colorhist", index="flat")
    engine.add(root)
    assert res["mAP"] == pytest.approx(engine.evaluate(os.path.join(root, "labels.csv"))["mAP"])
    assert res["queries"] == len(rows) and "labels.csv" in err
    # no labels.csv and one folder: refused before indexing, saying why
    os.remove(os.path.join(root, "labels.csv"))
    code, out, err = run(capsys, "eval", root, "--index", "flat")
    assert code == 2 and "1 distinct label" in err and "mAP 1.0" in err and "indexed" not in err and out == ""


def test_eval_labels_that_do_not_resolve_say_how_paths_resolve(tmp_path, rng, capsys):
    root = str(tmp_path / "flowers")
    rows = make_flowers_layout(root, rng)
    elsewhere = str(tmp_path / "labels.csv")
    with open(elsewhere, "w") as f:  # paths relative to the wrong folder
        f.write("path,label\n" + "".join(f"{os.path.basename(p)},{lab}\n" for p, lab in rows))
    code, out, err = run(capsys, "eval", root, "--labels", elsewhere, "--index", "flat")
    assert code == 2 and "resolved against DIR" in err and os.path.abspath(root) in err and "indexed" not in err
    with open(elsewhere, "w") as f:  # half of them right: evaluated on those, with a warning
        f.write("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows[::2]))
    code, out, err = run(capsys, "eval", root, "--labels", elsewhere, "--index", "flat", "--json")
    assert code == 0 and json.loads(out)["queries"] == len(rows[::2]) and "have no label" in err


def test_inputs_are_checked_before_indexing(folder, tmp_path, capsys):
    root, good, labels, bad = folder
    code, out, err = run(capsys, "index", root, "-o", str(tmp_path / "missing" / "p.isx"))
    assert code == 2 and "does not exist" in err and "indexed" not in err
    code, out, err = run(capsys, "index", root, "-o", str(tmp_path))
    assert code == 2 and "is a folder" in err and "indexed" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    for argv in (["index", str(empty), "-o", str(tmp_path / "e.isx")], ["eval", str(empty)], ["dups", str(empty)]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and "no image files" in err, argv
    assert not os.path.exists(tmp_path / "e.isx")


def test_ranks_start_at_one_in_text_and_json(folder, tmp_path, capsys):
    root, good, labels, bad = folder
    out_file = str(tmp_path / "p.isx")
    assert run(capsys, "index", root, "-o", out_file, "--index", "flat")[0] == 0
    code, out, err = run(capsys, "search", out_file, good[0], "-k", "3")
    lines = [line.split("\t") for line in out.splitlines() if not line.startswith("#")]
    assert code == 0 and [r for r, _, _ in lines] == ["1", "2", "3"]
    assert os.path.abspath(good[0]) not in [p for _, _, p in lines]  # the query is not its own hit
    code, out, err = run(capsys, "search", out_file, good[0], "-k", "3", "--json")
    hits = json.loads(out)[0]["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and [h["path"] for h in hits] == [p for _, _, p in lines]


def test_a_closed_pipe_ends_quietly(folder, tmp_path, capsys):
    root, good, labels, bad = folder
    out_file = str(tmp_path / "p.isx")
    assert run(capsys, "index", root, "-o", out_file, "--index", "flat")[0] == 0
    queries = good * 200  # far more output than a pipe holds
    proc = subprocess.Popen([sys.executable, "-m", "imgsearch", "search", out_file, *queries, "-k", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "Broken" not in err, err
