"""04_routing.ipynb: matches its generator (tests/test_notebooks.py), is committed executed, and runs offline."""

from __future__ import annotations

import pytest

from conftest import ROOT
from test_notebooks import _kernel_in, _outputs_text

NB = ROOT / "notebooks" / "04_routing.ipynb"


def test_routing_notebook_is_committed_with_outputs():
    import nbformat

    nb = nbformat.read(NB, as_version=4)
    text = _outputs_text(nb)
    assert "| none |" in text and "| all-on |" in text and "| tuned |" in text, "no outputs; run notebooks/make_notebooks.py --execute"
    assert "within noise" in text or "beyond noise" in text
    assert "split seed" in text and "at least as well as the better of all-on and none on" in text
    assert any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", []))
    for bad in ("Traceback", "TqdmWarning", "IProgress", "FALLBACK"):
        assert bad not in text, f"{bad} in the committed outputs"


@pytest.mark.slow
def test_routing_notebook_runs_offline(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    kernel = _kernel_in(tmp_path, monkeypatch)
    nb = nbformat.read(NB, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "the only cell to edit" in c.source)
    cell.source = cell.source.replace("SEEDS = [0, 1, 2, 3, 4]", "SEEDS = [0, 1]")  # fewer splits: the same code path
    NotebookClient(nb, timeout=1800, kernel_name=kernel, resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = _outputs_text(nb)
    assert "Traceback" not in text and "FALLBACK" not in text
    assert "| tuned |" in text and "95 % bootstrap intervals" in text
    assert "of 2 splits" in text  # the summary over splits
