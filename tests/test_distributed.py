"""Sharded and Ray runs give the same records as one process; per-image work runs once per image."""

import json
import sys
import threading
from pathlib import Path

import pytest

from mmad_boost.cli import main as cli_main
from mmad_boost.protocol.data import Benchmark
from mmad_boost.errors import MmadError
from mmad_boost.models.baselines import RandomBaseline
from mmad_boost.running.records import read_records, run_records
from mmad_boost.running.runner import Runner, shard_of


class CountingModel(RandomBaseline):
    """Random answers; counts per-image `prepare` calls and leaves a mark in the trace."""

    def __init__(self):
        super().__init__(seed=1)
        self.prepares = 0
        self.lock = threading.Lock()

    def prepare(self, query):
        with self.lock:
            self.prepares += 1
        query.trace["prepared_for"] = query.info.key
        return query

    def __reduce__(self):  # a fresh model per Ray worker (locks do not travel)
        return (CountingModel, ())


def normalised(records):
    """Records sorted by qid, without what depends on timing."""
    out = []
    for r in sorted(records, key=lambda r: r["qid"]):
        r = dict(r)
        r.pop("latency_s", None)
        if "trace" in r:
            r["trace"] = {k: v for k, v in r["trace"].items() if k != "timings"}
        out.append(r)
    return out


def single_run(bench, out, **kw):
    Runner(bench, CountingModel(), out, progress=False, **kw).run(bench.select())
    return normalised(read_records(out / "records.jsonl"))


def test_shards_of_three_equal_single_process_run(shared_fixture_root, tmp_path):
    bench = Benchmark(shared_fixture_root)
    items = bench.select()
    single = single_run(bench, tmp_path / "one")
    assert len(single) == len(items) and all(r["gpt_answer"] for r in single)

    seen_images = {}
    for i in (1, 2, 3):
        Runner(bench, CountingModel(), tmp_path / "sharded", shard=(i, 3), progress=False).run(items)
        for r in read_records(tmp_path / "sharded" / f"records.shard-{i}-of-3.jsonl"):
            assert seen_images.setdefault(r["image"], i) == i  # an image never spans shards
    assert set(seen_images.values()) == {1, 2, 3}, "the fixture should spread over all 3 shards"
    assert normalised(run_records(tmp_path / "sharded")) == single


@pytest.mark.slow  # four CLI runs and the report plots
def test_score_merges_shards_like_single_run(shared_fixture_root, tmp_path, capsys):
    common = ["--data", str(shared_fixture_root), "--model", "baseline:random", "--no-progress"]
    assert cli_main(["eval", *common, "--out", str(tmp_path / "one")]) == 0
    for i in (1, 2, 3):
        assert cli_main(["eval", *common, "--shard", f"{i}/3", "--out", str(tmp_path / "sh")]) == 0
    capsys.readouterr()
    scores = []
    for d in ("one", "sh"):
        assert cli_main(["score", str(tmp_path / d), "--format", "json"]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[0] == scores[1]


def test_shard_assignment_is_stable_and_balanced():
    keys = [f"VisA/capsules/test/bad/{i:03d}.JPG" for i in range(3000)]
    counts = [sum(shard_of(k, 3) == s for k in keys) for s in (1, 2, 3)]
    assert shard_of(keys[0], 3) == shard_of(keys[0], 3)
    assert min(counts) > 900, counts


def test_prepare_runs_once_per_image_not_per_question(shared_fixture_root, tmp_path):
    bench = Benchmark(shared_fixture_root)
    items = bench.select()
    model = CountingModel()
    runner = Runner(bench, model, tmp_path / "run", workers=4, progress=False)
    runner.run(items)
    images = {s.key for s, _ in items}
    assert len(items) > len(images)
    assert model.prepares == runner.images_prepared == len(images)


# -- Ray (local instance) ----------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_run_equals_single_process_and_resumes(local_ray, shared_fixture_root, tmp_path):
    from mmad_boost.running.distributed import RayRunner

    bench = Benchmark(shared_fixture_root)
    items = bench.select()
    single = single_run(bench, tmp_path / "one")

    out = tmp_path / "ray"
    runner = RayRunner(bench, CountingModel(), out, workers=2, progress=False)
    summary = runner.run(items)
    assert summary.asked == len(items) and summary.errors == 0
    assert runner.images_prepared == len({s.key for s, _ in items})
    assert normalised(read_records(out / "records.jsonl")) == single

    # resume: keep the first 5 records, lose the rest; only those are asked again
    path = out / "records.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:5]))
    again = RayRunner(bench, CountingModel(), out, actors=1, progress=False).run(items)
    assert (again.skipped, again.asked) == (5, len(items) - 5)
    assert normalised(read_records(path)) == single

    with pytest.raises(MmadError, match="seed"):  # same run.json identity check as Runner
        RayRunner(bench, CountingModel(), out, seed=7, progress=False).run(items)


@pytest.mark.slow
def test_ray_cli_builds_model_on_workers(local_ray, shared_fixture_root, tmp_path):
    common = ["--data", str(shared_fixture_root), "--model", "baseline:random", "--no-progress"]
    assert cli_main(["eval", *common, "--out", str(tmp_path / "one")]) == 0
    assert cli_main(["eval", *common, "--backend", "ray", "--workers", "2", "--out", str(tmp_path / "ray")]) == 0
    assert normalised(run_records(tmp_path / "ray")) == normalised(run_records(tmp_path / "one"))
    ident = [json.loads((tmp_path / d / "run.json").read_text()) for d in ("one", "ray")]
    assert ident[0] == ident[1]


def _missing_weights():
    raise MmadError("/models/x/model.safetensors: not found; pass --model hf:/path/to/weights")


@pytest.mark.slow
def test_ray_worker_user_error_reaches_driver_as_one_line(local_ray, shared_fixture_root, tmp_path):
    from mmad_boost.running.distributed import RayRunner

    bench = Benchmark(shared_fixture_root)
    with pytest.raises(MmadError, match="model.safetensors: not found"):
        RayRunner(bench, None, tmp_path / "r", model_factory=_missing_weights, actors=1, progress=False).run(bench.select())


def test_ray_resources_from_environment_are_checked(shared_fixture_root, tmp_path, monkeypatch):
    from mmad_boost.running.distributed import RayRunner

    bench = Benchmark(shared_fixture_root)
    monkeypatch.setenv("MMAD_RAY_GPUS", "1")
    assert RayRunner(bench, "baseline:random", tmp_path).num_gpus == 1
    monkeypatch.setenv("MMAD_RAY_ACTORS", "many")
    with pytest.raises(MmadError, match="MMAD_RAY_ACTORS"):
        RayRunner(bench, "baseline:random", tmp_path)


def test_harness_benchmark_throughput_path_runs(shared_fixture_root, tmp_path):
    """benchmarks/bench_harness.py end to end on the fixture: real HTTP server, openai adapter, threads."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_harness import overhead, throughput

    rows = throughput(shared_fixture_root, tmp_path, worker_counts=(1, 8), delay=0.05, seconds=0.5)
    assert [r["workers"] for r in rows] == [1, 8] and rows[1]["questions"] > rows[0]["questions"]
    assert rows[1]["q_per_s"] > rows[0]["q_per_s"]  # threads overlap the server's sleep
    o = overhead(shared_fixture_root, tmp_path / "o")
    assert o["prepares"] == o["images"] < o["questions"]
