"""Shared helpers of the round-two reliability tests (regression tests and property tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mmad_boost.cli import main

GOOD = "MVTec-AD/widget/test/good/000.png"
BAD = "MVTec-AD/widget/test/scratch/004.png"
TEMPLATE = "MVTec-AD/widget/train/good/000.png"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """The CLI in-process (a subprocess would import torch again: seconds per case)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def eval_args(root: Path, out: Path, *extra) -> list[str]:
    return ["eval", "--data", str(root), "--model", "baseline:random", "--out", str(out), "--no-progress", *map(str, extra)]


def error_line(rc: int, err: str, *needles: str) -> str:
    """Exit 2, exactly one `error: ...` line holding every needle, no traceback (notes on other lines are fine)."""
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert rc == 2, f"rc {rc}: {err}"
    assert len(errors) == 1, err
    for n in needles:
        assert n in errors[0], f"{n!r} not in {errors[0]!r}"
    return errors[0]


def partial_files(folder: Path) -> list[Path]:
    """Temporary or empty files an interrupted write would leave behind."""
    if not folder.exists():
        return []
    return [
        p for p in folder.rglob("*") if p.is_file() and (p.name.endswith(".tmp") or ".tmp." in p.name or p.stat().st_size == 0) and not p.name.endswith(".lock")
    ]


def qids_once(records: list[dict]) -> bool:
    qids = [r["qid"] for r in records]
    return len(qids) == len(set(qids))


def load_questions(root: Path) -> dict:
    return json.loads((root / "mmad.json").read_text())


def python_model_module(tmp_path: Path, name: str, source: str) -> str:
    """Writes `name.py` into tmp_path, puts it on sys.path, returns the module name."""
    (tmp_path / f"{name}.py").write_text(source)
    if str(tmp_path) not in sys.path:
        sys.path.insert(0, str(tmp_path))
    sys.modules.pop(name, None)
    return name


PATHOLOGICAL = "Answer" + " " * 20000 + "x" + " word" * 1_000_000  # 5 MB; 16 s per parse before the fix


def pathological(images, text) -> str:
    """A model whose every answer is 5 MB with a 20,000-space run (used by `python:reliability2_support:pathological`)."""
    return PATHOLOGICAL
