"""notebooks/quickstart.ipynb runs top to bottom on a folder the test makes."""
import os

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")
pytest.importorskip("PIL")

from imgfolder import make_folder

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "quickstart.ipynb")


def test_quickstart_notebook_executes(tmp_path, rng, monkeypatch):
    folder = str(tmp_path / "imgs")
    make_folder(folder, rng, per_class=5)
    monkeypatch.setenv("IMGSEARCH_IMAGES", folder)
    monkeypatch.setenv("IMGSEARCH_NOTEBOOK_FAST", "1")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("PYTHONPATH", repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = [o["data"]["text/html"] for o in outputs if "data" in o and "text/html" in o["data"]]
    assert any("<img" in h for h in html)  # the results grid rendered with thumbnails
    text = "".join(o.get("text", "") for o in outputs)
    assert "images reloaded" in text
