"""`mmad-boost demo` on the bundled sample."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

from mmad_boost.cli import main
from mmad_boost import demo
from mmad_boost.demo import DEMO_RUNS, QUICK_QUESTIONS, DemoRun, run_demo
from mmad_boost.errors import MmadError
from mmad_boost.running.records import run_records
from mmad_boost.resources import sample_root

SAMPLE = sample_root()


def test_bundled_sample_is_complete_and_attributed():
    assert SAMPLE == ROOT / "mmad_boost" / "sample" / "visa"  # found through importlib.resources: this checkout's
    notice = (SAMPLE / "NOTICE").read_text()
    assert "CC BY 4.0" in notice and "SPot-the-Difference" in notice and "512 px" in notice
    assert (SAMPLE / "LICENSE-DATASET").read_text().startswith("Attribution 4.0 International")
    from PIL import Image

    images = sorted(SAMPLE.glob("*/Data/Images/*/*.JPG"))
    masks = sorted(SAMPLE.glob("*/Data/Masks/Anomaly/*.png"))
    assert len(images) == 80 and len(masks) == 30
    for p in images[::7] + masks[::5]:
        assert max(Image.open(p).size) == 512
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 8_000_000


@pytest.mark.slow  # builds the sample benchmark and writes plots: ~8 s
def test_demo_with_custom_runs_reports_and_skips(tmp_path):
    def broken(base, out):
        raise MmadError("this boost is not available here")

    seen = []
    runs = [DemoRun("plain", lambda base, out: base, quick=True), DemoRun("broken", broken, quick=True)]
    result = run_demo(tmp_path / "demo", quick=True, runs=runs, base_spec="baseline:random", progress=False, log=seen.append)
    assert list(result["runs"]) == ["plain"] and "broken" in result["skipped"]
    assert any(m.startswith("skipped broken: this boost is not available") for m in seen)
    assert len(run_records(result["runs"]["plain"])) == QUICK_QUESTIONS
    assert (tmp_path / "demo" / "comparison.md").read_text().count("| plain |") == 1
    assert (tmp_path / "demo" / "radar.png").is_file() and (result["runs"]["plain"] / "report.md").is_file()
    assert json.loads((tmp_path / "demo" / "bench" / "mmad.json").read_text())
    # a rerun resumes: nothing asked again, same table
    again = run_demo(tmp_path / "demo", quick=True, runs=runs[:1], base_spec="baseline:random", progress=False, log=seen.append)
    assert any("plain: 0 asked, 48 already recorded" in m for m in seen)
    assert again["table"] == result["table"]


def test_default_runs_cover_plain_and_the_boosts():
    names = [r.name for r in DEMO_RUNS]
    assert names[0] == "plain" and {"rag-image", "patchcore-calibrated", "gt-expert"} <= set(names)


@pytest.mark.slow
def test_demo_quick_cli(tmp_path, capsys):
    assert main(["demo", "--quick", "--no-progress", "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "| plain |" in out and "| rag-image |" in out and "comparison:" in out
    assert len(run_records(tmp_path / "d" / "runs" / "plain")) == QUICK_QUESTIONS


@pytest.mark.slow  # builds the sample benchmark: ~8 s
def test_demo_exits_2_naming_a_row_that_could_not_run(tmp_path, capsys, monkeypatch):
    def broken(base, out):
        raise MmadError("the shipped knowledge base is missing")

    runs = [DemoRun("plain", lambda base, out: base, quick=True), DemoRun("rag-image", broken, quick=True)]
    monkeypatch.setattr(demo, "DEMO_RUNS", runs)
    monkeypatch.setattr(demo, "base_model_spec", lambda: ("baseline:random", None))
    assert main(["demo", "--quick", "--no-progress", "--out", str(tmp_path / "d")]) == 2
    captured = capsys.readouterr()
    assert "| plain |" in captured.out  # the rows that ran are still reported
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("error: demo: 1 of its rows could not run (rag-image: the shipped knowledge base is missing)")
