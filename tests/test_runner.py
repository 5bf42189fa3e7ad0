import json
import threading
import time

import pytest

from mmad_boost.cli import main
from mmad_boost.protocol.data import Benchmark
from mmad_boost.errors import MmadError
from mmad_boost.models import FunctionModel
from mmad_boost.running.records import read_records
from mmad_boost.running.runner import Runner
from mmad_boost.protocol.scoring import score_records


class CountingModel:
    name = "counting"

    def __init__(self):
        self.prepares = 0
        self.calls = 0
        self.lock = threading.Lock()

    def prepare(self, query):
        with self.lock:
            self.prepares += 1
        query.trace["prepared_by"] = "counting"
        return query

    def generate(self, prompt):
        with self.lock:
            self.calls += 1
        time.sleep(0.001)
        q = prompt.query
        return f"Answer: {sorted(q.options)[0]}"


def test_one_record_per_question_and_prepare_once_per_image(fixture_root, tmp_path):
    b = Benchmark(fixture_root)
    items = b.select()
    m = CountingModel()
    out = tmp_path / "run"
    Runner(b, m, out, workers=4, progress=False).run(items)
    recs = read_records(out / "records.jsonl")
    assert len(recs) == len(items) == m.calls
    assert len({r["qid"] for r in recs}) == len(items)
    assert m.prepares == len(b.samples)  # per image, not per question
    assert all(r["trace"]["prepared_by"] == "counting" for r in recs)
    for k in ("image", "question", "question_type", "correct_answer", "gpt_answer", "response", "options", "setting", "model", "latency_s", "error"):
        assert k in recs[0]


def test_rerun_skips_recorded_and_repairs_torn_line(fixture_root, tmp_path):
    b = Benchmark(fixture_root)
    items = b.select()
    out = tmp_path / "run"
    Runner(b, CountingModel(), out, progress=False).run(items[:10])
    path = out / "records.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"qid": "torn", "ima')  # a killed writer's half line
    m = CountingModel()
    s = Runner(b, m, out, progress=False).run(items)
    assert s.skipped == 10 and m.calls == len(items) - 10
    recs = read_records(path)
    assert len(recs) == len(items) and len({r["qid"] for r in recs}) == len(items)


def test_errors_are_recorded_then_retried_alone(fixture_root, tmp_path):
    b = Benchmark(fixture_root)
    items = b.select()
    out = tmp_path / "run"
    flaky = {"fail": True}

    def fn(images, text):
        if flaky["fail"] and "defect in the object" in text:
            raise ConnectionError("server went away")
        return "Answer: A"

    s = Runner(b, FunctionModel(fn, name="flaky"), out, progress=False, model_spec="flaky").run(items)
    assert s.errors > 0
    flaky["fail"] = False
    calls = []
    s2 = Runner(b, FunctionModel(lambda im, t: calls.append(1) or "Answer: A", name="flaky"), out, progress=False, model_spec="flaky").run(items)
    assert len(calls) == s.errors and s2.errors == 0
    recs = read_records(out / "records.jsonl")
    assert len(recs) == len(items) and not any(r["error"] for r in recs)


def test_run_folder_of_another_configuration_is_refused(fixture_root, tmp_path):
    b = Benchmark(fixture_root)
    out = tmp_path / "run"
    Runner(b, CountingModel(), out, progress=False, setting="1-shot").run(b.select(limit=3))
    with pytest.raises(MmadError, match="another configuration"):
        Runner(b, CountingModel(), out, progress=False, setting="0-shot").run(b.select(limit=3))
    Runner(b, CountingModel(), out, progress=False, setting="0-shot", force_mix=True).run(b.select(limit=3))


def test_random_baseline_is_near_chance(tmp_path):
    """Many synthetic questions: random answers score near 1/n_options per subtask."""
    qs = {}
    for i in range(300):
        key = f"MVTec-AD/c/test/{'good' if i % 2 else 'bad'}/{i}.png"
        conv = [
            {
                "Question": "Is there any defect in the object?",
                "Options": {"A": "Yes", "B": "No"},
                "Answer": "B" if i % 2 else "A",
                "type": "Anomaly Detection",
            },
            {"Question": f"Which object {i}?", "Options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "Answer": "A", "type": "Object Classification"},
        ]
        qs[key] = {"conversation": conv, "random_templates": []}
    root = tmp_path / "d"
    (root / "MVTec-AD/c/test/good").mkdir(parents=True)
    (root / "MVTec-AD/c/test/bad").mkdir(parents=True)
    from PIL import Image

    for k in qs:
        Image.new("RGB", (4, 4)).save(root / k)
    (root / "mmad.json").write_text(json.dumps(qs))
    assert main(["eval", "--data", str(root), "--model", "baseline:random", "--setting", "0-shot", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    row = score_records(read_records(tmp_path / "r" / "records.jsonl")).rows["Average"]
    assert abs(row["Anomaly Detection"] - 50) < 8
    assert abs(row["Object Classification"] - 25) < 8


def test_cli_eval_and_score_write_outputs(shared_fixture_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--data", str(shared_fixture_root), "--model", "baseline:random", "--no-progress", "--out", str(out), "--workers", "2"]) == 0
    capsys.readouterr()
    assert main(["score", str(out), "--format", "csv"]) == 0
    csv = capsys.readouterr().out
    assert csv.splitlines()[0].startswith(
        ",Anomaly Detection,Defect Classification,Defect Localization,Defect Description,Defect Analysis,Object Classification,Object Analysis,Average"
    )
    assert csv.splitlines()[-1].startswith("Average,")
    # absent subtasks are empty, not zero
    assert ",," in csv.splitlines()[1]
    for f in ("scores.csv", "scores.json", "report.md", "heatmap.png", "radar.png"):
        assert (out / f).exists(), f


def test_shards_merge_to_the_single_run(shared_fixture_root, tmp_path):
    b = Benchmark(shared_fixture_root)
    items = b.select()
    Runner(b, CountingModel(), tmp_path / "one", progress=False).run(items)
    for i in (1, 2, 3):
        Runner(b, CountingModel(), tmp_path / "sh", progress=False, shard=(i, 3)).run(items)
    from mmad_boost.running.records import run_records

    strip = lambda rs: sorted((r["qid"], r["gpt_answer"], r["correct_answer"], json.dumps(r["options"])) for r in rs)  # noqa: E731
    assert strip(run_records(tmp_path / "one")) == strip(run_records(tmp_path / "sh"))
