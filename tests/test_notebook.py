"""The analysis notebook executes end to end on a small results folder."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest
from test_bench import _synthetic

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "analysis.ipynb"


@pytest.mark.slow
def test_notebook_runs(tmp_path, monkeypatch):
    results = _synthetic(tmp_path)
    monkeypatch.setenv("PACSIM_RESULTS", str(results))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "24 finished cells" in text
    assert "pac" in text and "target RMSE" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
    assert images >= 3
