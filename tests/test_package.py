"""Package-level promises: optional dependencies stay unimported, the command exists."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_pulls_in_no_optional_dependency():
    code = ("import sys, imgsearch; "
            "print(sorted(m for m in ('torch', 'PIL', 'pandas', 'matplotlib', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_show_draws_queries_and_hits(tmp_path, rng):
    pytest.importorskip("PIL")
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    from imgfolder import make_folder
    import imgsearch
    good, labels, bad = make_folder(str(tmp_path / "imgs"), rng, per_class=3, broken=False)
    engine = imgsearch.ImageSearch(extractor="colorhist", index="flat")
    engine.add(good)
    fig = engine.search(good[:2], k=3).show()
    assert len(fig.axes) == 2 * 4
    assert sum(len(ax.images) for ax in fig.axes) == 2 * 4


def test_the_notebook_extra_brings_the_jupyter_progress_bar():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert {"tqdm", "ipywidgets"} <= set(extras["notebook"])  # tqdm.auto draws a widget bar in Jupyter
