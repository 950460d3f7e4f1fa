"""Package-level promises: optional dependencies stay unimported, the command exists."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_pulls_in_no_optional_dependency():
    code = ("import sys, imgsearch; "
            "print(sorted(m for m in ('torch', 'PIL', 'pandas', 'matplotlib', 'tqdm', 'dask', 'distributed') "
            "if m in sys.modules))")
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


def test_the_type_hints_cover_the_c_core():
    """imgsearch/_core.pyi names every public function, class and method of the
    extension, and ships (py.typed, package data) with the package."""
    import ast
    import imgsearch._core as core
    stub = ast.parse(open(os.path.join(REPO, "imgsearch", "_core.pyi")).read())
    hinted = {n.name: n for n in stub.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    hinted.update({t.id: None for n in stub.body if isinstance(n, ast.AnnAssign) for t in [n.target]})
    classes = {n: {m.name if isinstance(m, ast.FunctionDef) else m.target.id
                   for m in c.body if isinstance(m, (ast.FunctionDef, ast.AnnAssign))}
               for n, c in hinted.items() if isinstance(c, ast.ClassDef)}
    public = [n for n in dir(core) if not n.startswith("__")]
    assert sorted(set(public) - set(hinted)) == []
    def members(name):  # a stub class's names, with its bases' (stub-only helper classes)
        return classes[name].union(*(members(b.id) for b in hinted[name].bases if b.id in classes))

    for cls in (core.FlatIndex, core.KDTreeIndex, core.HNSWIndex, core.IVFPQIndex):
        assert sorted(n for n in dir(cls) if not n.startswith("_") and n not in members(cls.__name__)) == [], cls.__name__
    assert os.path.exists(os.path.join(REPO, "imgsearch", "py.typed"))
    pyproject = open(os.path.join(REPO, "pyproject.toml")).read()
    assert 'imgsearch = ["py.typed", "*.pyi"]' in pyproject


def test_the_notebook_extra_brings_the_jupyter_progress_bar():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert {"tqdm", "ipywidgets"} <= set(extras["notebook"])  # tqdm.auto draws a widget bar in Jupyter
