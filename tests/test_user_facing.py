"""What a new user meets first: python: model identity, run folders left clean, --limit's sample,
n/a in the plots, progress that says what it does and stays quiet under --no-progress."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from mmad_boost.cli import main
from mmad_boost.protocol.data import Benchmark, describe_selection, stratified


def _eval(root, out, *extra):
    return ["eval", "--data", str(root), "--no-progress", "--out", str(out), *extra]


# -- python: models ----------------------------------------------------------------
MODULE = """
def answer(images, text):
    return "Answer: {letter}"


class Fixed:
    def __init__(self, letter="A"):
        self.letter = letter

    def generate(self, prompt):
        return "Answer: " + self.letter
"""


def _write_module(tmp_path, name, letter):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE.replace("{letter}", letter)))


@pytest.mark.slow
def test_editing_a_python_model_is_another_configuration(shared_fixture_root, tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    name = "user_model_identity"
    _write_module(tmp_path, name, "A")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # python: finds modules in the working directory
    argv = [sys.executable, "-m", "mmad_boost.cli"] + _eval(shared_fixture_root, out, "--model", f"python:{name}:answer", "--limit", "2")
    # each eval is a new process, as a user's reruns are (a module is imported once per process)
    first = subprocess.run(argv, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    ident = json.loads((out / "run.json").read_text())["identity"]["model_config"]["code"]
    assert ident["code_sha256"] and ident["code_files"] == [f"{name}.py"]
    # unchanged code: the rerun resumes with a larger limit
    argv[argv.index("2")] = "3"
    again = subprocess.run(argv, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert len((out / "records.jsonl").read_text().splitlines()) == 3
    # edited code: refused, nothing appended
    _write_module(tmp_path, name, "B")
    argv[argv.index("3")] = "4"
    edited = subprocess.run(argv, capture_output=True, text=True)
    assert edited.returncode == 2
    assert "another configuration" in edited.stderr and "model_config" in edited.stderr
    assert len((out / "records.jsonl").read_text().splitlines()) == 3


def test_python_model_identity_follows_its_source(tmp_path, monkeypatch):
    import importlib

    from mmad_boost.models import create_model
    from mmad_boost.models.base import model_config
    from mmad_boost.models.python_spec import code_identity

    pkg = tmp_path / "user_pkg_identity"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .impl import answer\n")
    (pkg / "impl.py").write_text('def answer(images, text):\n    return "Answer: A"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("python:user_pkg_identity:answer")
    code = model_config(model)["code"]
    assert code["code_files"] == ["__init__.py", "impl.py"] and code["options"] == {}
    before = code["code_sha256"]
    (pkg / "impl.py").write_text('def answer(images, text):\n    return "Answer: B"\n')  # an edit in a helper module
    after = code_identity(importlib.import_module("user_pkg_identity"))["code_sha256"]
    assert after != before
    # the identity the runner stores holds it
    from mmad_boost.protocol.data import Benchmark
    from mmad_boost.running.runner import Runner

    root = tmp_path / "data"
    _two_dataset_bench(root)
    ident = Runner(Benchmark(root), model, tmp_path / "run", progress=False).identity()
    assert ident["model_config"]["code"]["code_sha256"] == before


def test_a_model_without_room_for_attributes_is_wrapped(tmp_path, monkeypatch):
    from mmad_boost.models import create_model
    from mmad_boost.models.base import model_config

    (tmp_path / "user_slots_model.py").write_text(
        textwrap.dedent("""
        class Tight:
            __slots__ = ("letter",)

            def __init__(self, letter="C"):
                self.letter = letter

            def generate(self, prompt):
                return "Answer: " + self.letter

            def prepare(self, query):
                query.trace["tight"] = True
                return query
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("python:user_slots_model:Tight", letter="D")
    assert model.generate(None) == "Answer: D"
    assert model_config(model)["code"]["options"] == {"letter": "D"}
    assert callable(model.prepare) and not hasattr(model, "check_samples")  # hooks pass through, absent ones stay absent


def test_python_model_options_are_part_of_the_identity(shared_fixture_root, tmp_path, monkeypatch, capsys):
    name = "user_model_options"
    _write_module(tmp_path, name, "A")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    base = _eval(shared_fixture_root, out, "--model", f"python:{name}:Fixed", "--limit", "2")
    assert main(base + ["--model-option", "letter=A"]) == 0
    capsys.readouterr()
    assert main(base + ["--model-option", "letter=B"]) == 2
    assert "another configuration" in capsys.readouterr().err


# -- run folders -------------------------------------------------------------------
def test_no_lock_file_is_left_in_the_run_folder(shared_fixture_root, tmp_path):
    out = tmp_path / "run"
    assert main(_eval(shared_fixture_root, out, "--model", "baseline:random", "--limit", "3")) == 0
    assert main(_eval(shared_fixture_root, out, "--model", "baseline:random", "--limit", "5")) == 0
    assert not list(out.glob("*.lock")), sorted(p.name for p in out.iterdir())
    assert len((out / "records.jsonl").read_text().splitlines()) == 5


def test_the_lock_still_keeps_a_second_writer_out(tmp_path):
    from mmad_boost.errors import MmadError
    from mmad_boost.running.records import lock_records, unlock_records

    path = tmp_path / "records.jsonl"
    fd = lock_records(path)
    with pytest.raises(MmadError, match="being written by another"):
        lock_records(path)
    unlock_records(fd)
    assert not (tmp_path / "records.jsonl.lock").exists()
    fd2 = lock_records(path)  # free again after the holder let go
    unlock_records(fd2)


# -- --limit -------------------------------------------------------------------------
def _kinds(items):
    seen = []
    for s, _ in items:
        if not seen or seen[-1][0] != s.key:
            seen.append((s.key, s.dataset, s.category, s.is_normal))
    return seen


def _two_dataset_bench(root):
    """A question file like MMAD's: per category the normal images first, then the defective ones."""
    data = {}
    for ds, cats in (("MVTec-AD", ("bottle", "screw")), ("VisA", ("fryum",))):
        for cat in cats:
            for label, n in (("good", 6), ("crack", 3)):
                for i in range(n):
                    conv = [
                        {
                            "Question": "Is there any defect in the object?",
                            "Options": {"A": "Yes", "B": "No"},
                            "Answer": "B" if label == "good" else "A",
                            "type": "Anomaly Detection",
                        },
                        {"Question": "What is it?", "Options": {"A": cat, "B": "pcb"}, "Answer": "A", "type": "Object Classification"},
                    ]
                    if label != "good":
                        conv.append({"Question": "Which defect?", "Options": {"A": "crack", "B": "stain"}, "Answer": "A", "type": "Defect Classification"})
                    data[f"{ds}/{cat}/test/{label}/{i:03d}.png"] = {"conversation": conv}
    root.mkdir(parents=True, exist_ok=True)
    (root / "mmad.json").write_text(json.dumps(data))
    return Benchmark(root)


def test_limit_takes_normal_and_defective_images_of_each_dataset(tmp_path):
    bench = _two_dataset_bench(tmp_path / "data")
    everything = bench.select()
    # the file lists normal images first: the old first-N rule gave normal images of one dataset only
    first_n = _kinds(everything[:10])
    assert all(n for *_, n in first_n) and {d for _, d, _, _ in first_n} == {"MVTec-AD"}
    limited = bench.select(limit=10)
    assert len(limited) == 10
    picked = _kinds(limited)
    assert {n for *_, n in picked} == {True, False}
    assert {d for _, d, _, _ in picked} == {"MVTec-AD", "VisA"}
    # whole images, in turn: every image but the last keeps all its questions, in file order
    for key, *_ in picked[:-1]:
        assert [q for s, q in limited if s.key == key] == bench.by_key[key].questions
    # a larger limit extends a smaller one (a rerun with --limit resumes the same questions)
    assert bench.select(limit=25)[:10] == limited
    assert sorted((s.key, q.index) for s, q in stratified(everything)) == sorted((s.key, q.index) for s, q in everything)
    # filters apply first; short type names work in Python too
    only = bench.select(types=["anomaly"], limit=6)
    assert {q.type for _, q in only} == {"Anomaly Detection"} and {n for *_, n in _kinds(only)} == {True, False}


def test_limit_says_what_it_took(shared_fixture_root, tmp_path, capsys):
    assert main(_eval(shared_fixture_root, tmp_path / "run", "--model", "baseline:random", "--limit", "10")) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("--limit 10:"))
    items = Benchmark(shared_fixture_root).select(limit=10)
    assert line == f"--limit 10: {describe_selection(items)}"
    assert "normal" in line and "defective" in line


# -- plots ---------------------------------------------------------------------------
def _scores_without(subtask_missing: str):
    from mmad_boost.protocol.scoring import score_records

    recs = []
    for i, qtype in enumerate(["Anomaly Detection", "Defect Classification", "Object Classification"]):
        if qtype == subtask_missing:
            continue
        for j in range(4):
            recs.append(
                {
                    "qid": f"VisA/fryum/test/bad/{j}.png#{i}",
                    "image": f"VisA/fryum/test/bad/{j}.png",
                    "question_type": qtype,
                    "correct_answer": "A",
                    "gpt_answer": "A" if j % 2 else "B",
                    "error": None,
                    "options": {"A": "Yes", "B": "No"},
                }
            )
    return score_records(recs)


def test_radar_draws_missing_subtasks_as_gaps_not_zero(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from mmad_boost.reporting import reports
    from mmad_boost.protocol.scoring import SUBTASKS

    scores = _scores_without("Defect Classification")
    fig = reports.radar_figure([("run", scores)])
    ax = fig.axes[0]
    line = ax.get_lines()[0]
    r = np.asarray(line.get_ydata(), dtype=float)
    k = SUBTASKS.index("Defect Classification")
    assert np.isnan(r[k])  # a gap in the shape, not a point at 0
    assert not np.isnan(r[SUBTASKS.index("Anomaly Detection")])
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert any("n/a" in t for t in labels)  # the axis says why there is a gap
    reports.radar([("run", scores)], tmp_path / "radar.png")
    assert (tmp_path / "radar.png").stat().st_size > 5000


def test_heatmap_says_na_for_missing_subtasks(tmp_path):
    from mmad_boost.reporting import reports

    scores = _scores_without("Defect Classification")
    fig = reports.heatmap_figure(scores)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "n/a" in texts


# -- progress ------------------------------------------------------------------------
def test_stage_says_what_and_estimates_from_the_last_run(tmp_path, monkeypatch, capsys):
    from mmad_boost.running import progress

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    import time

    with progress.stage("fitting x", kind="test:x", units=10):
        time.sleep(0.05)
    err = capsys.readouterr().err
    assert "fitting x: 10 images, no estimate yet" in err and "done in" in err
    with progress.stage("fitting x", kind="test:x", units=20):
        pass
    assert "fitting x: 20 images, about" in capsys.readouterr().err
    with progress.quiet():
        with progress.stage("fitting x", kind="test:x", units=10):
            pass
        progress.say("hidden")
    assert capsys.readouterr().err == ""


def test_no_progress_silences_transformers_bars(capsys):
    from transformers.utils import logging as tlog

    from mmad_boost.running import progress

    assert tlog.is_progress_bar_enabled()
    with progress.quiet():
        assert not tlog.is_progress_bar_enabled()
        bar = tlog.tqdm(range(3), desc="Loading weights")
        list(bar)
    assert tlog.is_progress_bar_enabled()
    assert "Loading weights" not in capsys.readouterr().err


# -- one name per thing in Python too ------------------------------------------------
def test_boosted_model_old_keywords_warn_and_still_work(tmp_path):
    from mmad_boost.boosts.boosted import BoostedModel
    from mmad_boost.errors import MmadError

    base = lambda images, text: "Answer: A"  # noqa: E731
    with pytest.warns(DeprecationWarning, match="use viz="):
        m = BoostedModel(base, expert="gt", visualization="contour")
    assert m.viz == "contour" == m.visualization and m.config()["expert"]["style"] == "contour"
    assert BoostedModel(base, expert="gt", viz="mask").config()["expert"]["style"] == "mask"
    with pytest.warns(DeprecationWarning), pytest.raises(MmadError, match="disagree"):
        BoostedModel(base, expert="gt", viz="mask", visualization="contour")
    kb = tmp_path / "missing-kb"
    with pytest.warns(DeprecationWarning, match="use kb="), pytest.raises(MmadError, match="missing-kb"):
        BoostedModel(base, rag=True, knowledge=kb)
    with pytest.raises(MmadError, match="missing-kb"):
        BoostedModel(base, rag=True, kb=kb)


def test_comparison_bars_say_na_for_missing_subtasks(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from mmad_boost.reporting.compare import compare_runs

    def run_dir(name, qtypes):
        d = tmp_path / name
        d.mkdir()
        lines = []
        for i, qtype in enumerate(qtypes):
            for j in range(4):
                key = f"VisA/fryum/test/{'good' if j < 2 else 'bad'}/{j}.png"
                lines.append(
                    json.dumps(
                        {
                            "qid": f"{key}#{i}",
                            "image": key,
                            "question_type": qtype,
                            "correct_answer": "A",
                            "gpt_answer": "A" if j % 2 else "B",
                            "error": None,
                            "options": {"A": "Yes", "B": "No"},
                        }
                    )
                )
        (d / "records.jsonl").write_text("\n".join(lines) + "\n")
        return d

    a = run_dir("a", ["Anomaly Detection", "Object Classification"])
    b = run_dir("b", ["Anomaly Detection"])
    fig = compare_runs([a, b], n_boot=0).plot()
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("n/a") >= 5  # b lacks Obj.Cls; both lack the defect subtasks
