"""The run loop is written once (running/loop.py) and parameterised by an executor."""

import ast
from pathlib import Path

import pytest

from mmad_boost.errors import MmadError
from mmad_boost.protocol.data import Benchmark
from mmad_boost.running.loop import run_questions
from mmad_boost.running.records import read_records
from mmad_boost.running.runner import Runner
from test_distributed import CountingModel  # the one per-image counting model

RUNNING = Path(__file__).resolve().parents[1] / "mmad_boost" / "running"


class ImageExecutor:
    """Units of one image's questions, answered in this thread by `Runner.ask_image` (what a Ray actor does)."""

    capacity = 3

    def __init__(self, runner: Runner, fail_at: int | None = None):
        self.runner, self.fail_at = runner, fail_at
        self.images_prepared = 0
        self.submitted = self.closed = 0

    def units(self, todo):
        groups = {}
        for s, q in todo:
            groups.setdefault(s.key, (s, []))[1].append(q)
        return list(groups.values())

    def start(self, units):
        pass

    def submit(self, unit):
        self.submitted += 1
        if self.submitted == self.fail_at:
            raise KeyboardInterrupt  # as Ctrl-C arrives in the driver
        return self.submitted  # a handle; the loop gives the unit back with it

    def wait(self, handles):
        return handles[:1]

    def result(self, handle, unit):
        records, built = self.runner.ask_image(*unit)
        self.images_prepared += built
        return records

    def cancel(self, handles):
        pass

    def close(self):
        self.closed += 1


def _plain(records):
    return sorted(({k: v for k, v in r.items() if k not in ("latency_s", "trace")} for r in records), key=lambda r: r["qid"])


def test_image_units_give_the_thread_runs_records(shared_fixture_root, tmp_path):
    bench = Benchmark(shared_fixture_root)
    items = bench.select()
    Runner(bench, CountingModel(), tmp_path / "threads", workers=3, progress=False).run(items)
    model = CountingModel()
    runner = Runner(bench, model, tmp_path / "images", progress=False)
    executor = ImageExecutor(runner)
    summary = run_questions(runner, items, executor)
    assert (summary.asked, summary.skipped, summary.errors) == (len(items), 0, 0)
    assert model.prepares == executor.images_prepared == len({s.key for s, _ in items})
    assert executor.closed == 1
    assert _plain(read_records(tmp_path / "images" / "records.jsonl")) == _plain(read_records(tmp_path / "threads" / "records.jsonl"))


def test_interrupt_keeps_what_was_recorded_and_resume_asks_the_rest(shared_fixture_root, tmp_path, capsys):
    bench = Benchmark(shared_fixture_root)
    items = bench.select()
    out = tmp_path / "run"
    runner = Runner(bench, CountingModel(), out, progress=False)
    first = run_questions(runner, items, ImageExecutor(runner, fail_at=5))  # 3 in flight, 1 more, then Ctrl-C
    assert first.interrupted and 0 < first.asked < len(items)
    assert "Run the same command again to resume" in capsys.readouterr().err
    assert len(read_records(out / "records.jsonl")) == first.asked
    again = run_questions(runner, items, ImageExecutor(runner))
    assert (again.skipped, again.asked) == (first.asked, len(items) - first.asked)
    assert sorted(r["qid"] for r in read_records(out / "records.jsonl")) == sorted(s.qid(q) for s, q in items)


def test_user_error_before_any_answer_leaves_no_run_folder(shared_fixture_root, tmp_path):
    bench = Benchmark(shared_fixture_root)
    runner = Runner(bench, CountingModel(), tmp_path / "run", progress=False)

    class Refusing(ImageExecutor):
        def start(self, units):
            raise MmadError("actors cannot start")

    with pytest.raises(MmadError, match="actors cannot start"):
        run_questions(runner, bench.select(), Refusing(runner))
    assert not (tmp_path / "run").exists()


def test_running_modules_import_no_private_names_from_each_other():
    for path in RUNNING.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and (node.module or "").split(".")[0] in {p.stem for p in RUNNING.glob("*.py")}:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private} from .{node.module}"
