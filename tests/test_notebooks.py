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
    (spec / "kernel.json").write_text(
        json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "mmad-boost venv", "language": "python"})
    )
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
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
    assert "Traceback" not in text
    assert "| plain |" in text or "| 1-shot |" in text  # the delta table
    assert "points" in text and "paper" in text  # the plain verdicts
    assert any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", []))  # plots
    assert "FALLBACK" not in text  # the offline baseline, not chance
    assert "TqdmWarning" not in text and "IProgress" not in text
    assert "95 % interval" in text  # the verdicts carry their intervals
    (workdir / f"{name}.out.txt").write_text(text)  # what it printed, for a look after a failure


def _outputs_text(nb) -> str:
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            parts.append(o.get("text", "") + "".join(o.get("data", {}).get("text/markdown", "")) + "".join(o.get("data", {}).get("text/plain", "")))
            if o.get("output_type") == "error":
                parts.append("Traceback " + o.get("ename", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_committed_with_outputs(name):
    """A reader on a code host sees the tables, verdicts and plots without running anything."""
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    text = _outputs_text(nb)
    assert "| plain |" in text or "| 1-shot |" in text, f"{name}: no outputs; run notebooks/make_notebooks.py --execute"
    assert any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", []))
    assert "within noise" in text or "beyond noise" in text  # verdicts with their intervals
    for bad in ("Traceback", "TqdmWarning", "IProgress", "FALLBACK"):
        assert bad not in text, f"{name}: {bad} in the committed outputs"


def _config_with(nb, **values) -> None:
    import re

    cell = next(c for c in nb.cells if c.cell_type == "code" and "the only cell to edit" in c.source)
    for key, value in values.items():
        cell.source, n = re.subn(rf"^{key} = .*$", f"{key} = {value!r}", cell.source, flags=re.M)
        assert n == 1, key


@pytest.mark.slow
def test_an_unavailable_model_stops_the_notebook_with_its_error(workdir, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    kernel = _kernel_in(tmp_path, monkeypatch)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    nb = nbformat.read(NOTEBOOKS / "01_rag.ipynb", as_version=4)
    for c in nb.cells:  # forget the committed outputs: only what this execution runs counts
        if c.cell_type == "code":
            c.execution_count, c.outputs = None, []
    _config_with(nb, MODEL="openai:gpt-4o")
    with pytest.raises(CellExecutionError) as err:
        NotebookClient(nb, timeout=600, kernel_name=kernel, resources={"metadata": {"path": str(workdir)}}).execute()
    assert "cannot be used" in str(err.value) and "OPENAI_API_KEY" in str(err.value)
    assert "ALLOW_FALLBACK" in str(err.value)  # says how to ask for the fallback
    ran = [c for c in nb.cells if c.cell_type == "code" and c.get("execution_count")]
    assert len(ran) == 2  # the configuration and the set-up cell: nothing after the error


@pytest.mark.slow
def test_a_requested_fallback_is_said_in_every_result(workdir, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell

    kernel = _kernel_in(tmp_path, monkeypatch)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    nb = nbformat.read(NOTEBOOKS / "03_settings.ipynb", as_version=4)
    _config_with(nb, MODEL="openai:gpt-4o", ALLOW_FALLBACK=True)
    setup = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "def say(" in c.source)
    nb.cells = nb.cells[: setup + 1] + [new_code_cell('say("average: +1.00 points")')]
    NotebookClient(nb, timeout=600, kernel_name=kernel, resources={"metadata": {"path": str(workdir)}}).execute()
    text = _outputs_text(nb)
    assert "FALLBACK: openai:gpt-4o was unavailable" in text
    assert "[FALLBACK - chance answers, not openai:gpt-4o] average: +1.00 points" in text
