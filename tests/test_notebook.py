"""notebooks/quickstart.ipynb runs top to bottom (nbclient) on a freshly trained offline model,
and is committed without outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import small_encoder

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def test_notebook_runs_top_to_bottom(compose, tiny_anchor, small_data_root, data_root, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    from binder.training import train

    cfg = compose(["modality=audio", *small_encoder("audio"), f"data.root={small_data_root}", "data.batch_size=8",
                   "trainer.max_epochs=1", "trainer.enable_progress_bar=false", f"run_dir={tmp_path / 'run'}"])
    model_dir = train(cfg)["model_dir"]
    calibrated = json.loads((Path(model_dir) / "config.json").read_text())["query_spreads"]
    assert set(calibrated) == {"audio", "image", "text"}  # measured at the end of training
    monkeypatch.setenv("BINDER_MODEL", model_dir)
    monkeypatch.setenv("BINDER_DATA", str(data_root))
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the heatmap and the composed query
    text = "".join(o.get("text", "") for o in outputs)
    assert "indexed 180, skipped 0" in text and "left digit is 3: [(3," in text
