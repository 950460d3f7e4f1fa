"""notebooks/quickstart.ipynb runs top to bottom as a user runs it: from its own
folder, on the package installed in the environment (no PYTHONPATH), on flowers17
when the shared data is there, else on a folder the test makes."""
import os
import re
import subprocess
import sys

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")
pytest.importorskip("PIL")

from imgsearch.datasets import shared_data
from imgfolder import make_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
FLOWERS = shared_data("flowers17")


def image_folder(tmp_path, rng, monkeypatch):
    """flowers17 (the notebooks' own default) when the shared data is there, else a
    generated folder passed in IMGSEARCH_IMAGES; the package as installed (no PYTHONPATH)."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    if os.path.isdir(FLOWERS):
        monkeypatch.delenv("IMGSEARCH_IMAGES", raising=False)
        return FLOWERS
    folder = str(tmp_path / "imgs")
    make_folder(folder, rng, per_class=5)
    monkeypatch.setenv("IMGSEARCH_IMAGES", folder)
    return folder


def run_notebook(name, extra_cells=()):
    """Execute notebooks/<name> from its own folder -> (outputs, stream text, text/plain, text/html list);
    no cell may raise."""
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nb.cells.extend(nbformat.v4.new_code_cell(c) for c in extra_cells)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOKS}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    plain = "".join(o["data"].get("text/plain", "") for o in outputs if "data" in o)
    html = [o["data"]["text/html"] for o in outputs if "data" in o and "text/html" in o["data"]]
    return outputs, text, plain, html


def test_quickstart_notebook_runs_from_its_folder_on_the_installed_package(tmp_path, rng, monkeypatch):
    monkeypatch.setenv("IMGSEARCH_NOTEBOOK_FAST", "1")  # the optional CNN section: tests/test_extractors.py
    folder = image_folder(tmp_path, rng, monkeypatch)
    outputs, text, plain, html = run_notebook("quickstart.ipynb", ["print('imported from', isx.__file__)"])
    assert any("<img" in h for h in html)  # the results grid rendered with thumbnails
    assert "images reloaded" in text and folder in text
    assert f"imported from {os.path.join(REPO, 'imgsearch', '__init__.py')}" in text
    m = re.search(r"'mAP': ([0-9.e-]+)", plain)
    assert m and 0 < float(m.group(1)) < 0.95  # real labels, not one folder for all (mAP 1.0)
    assert not os.path.exists(os.path.join(NOTEBOOKS, "quickstart.isx"))


def test_distributed_notebook_runs_on_a_local_cluster(tmp_path, rng, monkeypatch):
    pytest.importorskip("distributed", reason="the [dask] extra is not installed: pip install 'imgsearch[dask]'")
    monkeypatch.delenv("IMGSEARCH_SCHEDULER", raising=False)  # the notebook starts its own LocalCluster
    folder = image_folder(tmp_path, rng, monkeypatch)
    outputs, text, plain, html = run_notebook("distributed.ipynb")
    assert f"{folder} on 2 workers" in text
    assert "sharded flat == one FlatIndex: True" in text
    recall = float(re.search(r"sharded HNSW recall@10 at ef=32: ([0-9.]+)", text).group(1))
    assert recall > 0.8
    assert "manifest.json" in text and "-> HNSWIndex" in text
    assert any("<img" in h for h in html)  # the engine's results grid
    assert "application/vnd.jupyter.widget-view+json" in str(outputs)  # Dask's progress widget
    m = re.search(r"'mAP': ([0-9.e-]+)", text + plain)
    assert m and 0 < float(m.group(1)) < 0.95
    assert not os.path.exists(os.path.join(NOTEBOOKS, "distributed.shards"))


def test_the_command_is_installed_beside_the_interpreter(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "imgsearch")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([exe, "info", "--help"], cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "index_file" in proc.stdout
