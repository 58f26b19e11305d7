"""Every notebook runs top to bottom (on the tiny model / small sizes) and is stored without outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
SMOKE_ENV = {
    "ACTALIGN_NB_MODEL": "tiny",
    "ACTALIGN_NB_SETS_PER_FAMILY": "2",
    "ACTALIGN_NB_STEPS": "3",
    "ACTALIGN_NB_LR": "1e-3",
    "ACTALIGN_NB_N_BOOT": "50",
    "ACTALIGN_NB_SCALE": "small",
}


def test_the_three_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == ["01_explore_coherence.ipynb", "02_align_small_model.ipynb", "03_metrics_sanity.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "strip outputs before committing"
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be the tagged parameters cell"
    assert "os.environ" in code[0].source


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    for key, value in {**SMOKE_ENV, "ACTALIGN_NB_OUT": str(tmp_path), "MPLBACKEND": "module://matplotlib_inline.backend_inline"}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no inline figure was produced"
