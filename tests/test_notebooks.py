"""The ablation notebooks run top to bottom offline (as shipped) and match their generator."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import ROOT

NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_rag.ipynb", "02_experts.ipynb", "03_settings.ipynb"]


def _kernel_in(tmp: Path, monkeypatch) -> str:
    """A kernel spec for this very interpreter (the venv), found through JUPYTER_PATH: works from a fresh clone."""
    spec = tmp / "jupyter" / "kernels" / "mmad-venv"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mmad-boost venv", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp / "jupyter"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows the plots
    return "mmad-venv"


def test_notebooks_match_their_generator():
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import make_notebooks
    finally:
        sys.path.remove(str(NOTEBOOKS))
    import nbformat

    for name, make in make_notebooks.NOTEBOOKS.items():
        shipped = nbformat.read(NOTEBOOKS / name, as_version=4)
        assert [c.source for c in shipped.cells] == [c.source for c in make().cells], f"{name}: rerun notebooks/make_notebooks.py"
        config = [c for c in shipped.cells if c.cell_type == "code" and "the only cell to edit" in c.source]
        assert len(config) == 1, f"{name}: exactly one configuration cell"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder for the three notebooks, as a user has: the plain run and the sample are made once."""
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_offline(name, workdir, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    kernel = _kernel_in(tmp_path, monkeypatch)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name=kernel, resources={"metadata": {"path": str(workdir)}}).execute()
    text = "\n".join(
        o.get("text", "") + "".join(o.get("data", {}).get("text/markdown", "")) + "".join(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "Traceback" not in text
    assert "| plain |" in text or "| 1-shot |" in text  # the delta table
    assert "points" in text and "paper" in text  # the plain verdicts
    assert any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", []))  # plots
    assert "falling back to baseline:random" not in text  # the offline baseline, not chance
    (workdir / f"{name}.out.txt").write_text(text)  # what it printed, for a look after a failure
