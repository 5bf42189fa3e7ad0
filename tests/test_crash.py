"""Crash safety: SIGKILL at random points and Ctrl-C lose nothing and duplicate nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmad_boost.cli import main
from mmad_boost.protocol.data import Benchmark
from mmad_boost.errors import MmadError
from mmad_boost.running.records import RecordWriter, read_records
from mmad_boost.protocol.scoring import score_records

TESTS = Path(__file__).parent
ROOT = TESTS.parent
SPEC = "python:reliability_support:SlowModel"


def eval_argv(data: Path, out: Path, delay_ms: int, *extra: str) -> list[str]:
    return ["eval", "--data", str(data), "--model", SPEC, "--model-option", f"delay_ms={delay_ms}", "--out", str(out), "--no-progress", *extra]


def start(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]), HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    return subprocess.Popen([sys.executable, "-m", "mmad_boost.cli", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def n_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for_lines(proc: subprocess.Popen, path: Path, n: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while n_lines(path) < n and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.005)


def answers(records: list[dict]) -> dict[str, str | None]:
    return {r["qid"]: r["gpt_answer"] for r in records}


def reference(data: Path, tmp_path: Path, capsys) -> tuple[list[dict], int]:
    out = tmp_path / "reference"
    assert main(eval_argv(data, out, 0)) == 0
    capsys.readouterr()
    records = read_records(out / "records.jsonl")
    return records, len(Benchmark(data).select())


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(shared_fixture_root, tmp_path, capsys):
    ref, total = reference(shared_fixture_root, tmp_path, capsys)
    out = tmp_path / "killed"
    rec = out / "records.jsonl"
    rng = random.Random(8)
    kills = 0
    for attempt in range(6):
        proc = start(eval_argv(shared_fixture_root, out, 150, "--workers", "2"))
        if attempt % 2 == 0:  # right after some record was written
            wait_for_lines(proc, rec, n_lines(rec) + rng.randint(1, 6))
        else:  # at any moment: start-up, run.json, mid-question, reports
            time.sleep(rng.uniform(0.2, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=30)
        done = read_records(rec)
        assert len(done) == len({r["qid"] for r in done}), "a resumed run asked a recorded question again"
    assert kills >= 4
    assert n_lines(rec) < total, "the kills should have landed before the end"
    proc = start(eval_argv(shared_fixture_root, out, 0))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    final = read_records(rec)
    assert sorted(r["qid"] for r in final) == sorted(r["qid"] for r in ref)
    assert len(final) == total
    assert answers(final) == answers(ref)
    assert score_records(final).rows == score_records(ref).rows
    assert json.loads((out / "scores.json").read_text()) == json.loads((tmp_path / "reference" / "scores.json").read_text())


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(shared_fixture_root, tmp_path):
    out = tmp_path / "run"
    rec = out / "records.jsonl"
    # two quick answers, then every call hangs (an API call with a long timeout): Ctrl-C must not wait for it
    proc = start(eval_argv(shared_fixture_root, out, 10, "--model-option", "stall_after=2", "--workers", "2"))
    wait_for_lines(proc, rec, 2)
    time.sleep(0.2)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert time.monotonic() - t0 < 5, "Ctrl-C must not wait for the whole run"
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "Run the same command again to resume" in err
    kept = read_records(rec)
    assert len(kept) == 2 == n_lines(rec)  # no torn line after a clean stop
    proc = start(eval_argv(shared_fixture_root, out, 0))  # stall_after is not part of the identity
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"{36 - len(kept)} asked, {len(kept)} already recorded" in err
    assert len(read_records(rec)) == 36


def test_torn_last_line_is_cut_and_its_question_asked_again(shared_fixture_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(eval_argv(shared_fixture_root, out, 0, "--limit", "5")) == 0
    rec = out / "records.jsonl"
    whole = rec.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[1]
    rec.write_bytes(whole[: len(whole) - len(last) - 1] + last[: len(last) // 2])  # killed mid-write
    assert len(read_records(rec)) == 4
    capsys.readouterr()
    assert main(eval_argv(shared_fixture_root, out, 0, "--limit", "5")) == 0
    assert "1 asked, 4 already recorded" in capsys.readouterr().err
    again = read_records(rec)
    assert [(r["qid"], r["response"]) for r in again] == [(r["qid"], r["response"]) for r in map(json.loads, whole.splitlines())]


def test_records_survive_numpy_values_and_full_disk(tmp_path):
    import numpy as np

    w = RecordWriter(tmp_path / "r.jsonl")
    w.write({"qid": "a", "trace": {"score": np.float32(0.25), "decision": np.bool_(True), "box": np.arange(2)}})
    w.close()
    assert read_records(tmp_path / "r.jsonl") == [{"qid": "a", "trace": {"score": 0.25, "decision": True, "box": [0, 1]}}]
    full = RecordWriter(Path("/dev/full"))
    with pytest.raises(MmadError, match="cannot write a record .*free disk space"):
        full.write({"qid": "b"})
    full.close()


def test_errored_records_are_retried_and_only_those(shared_fixture_root, tmp_path, capsys):
    """A rerun asks again only questions recorded with an error; answered ones are kept as they are."""
    out = tmp_path / "run"
    argv = eval_argv(shared_fixture_root, out, 0, "--limit", "6")
    assert main(argv) == 0
    rec = out / "records.jsonl"
    records = read_records(rec)
    for r in records[1:3]:
        r.update(error="HTTPError: 503 busy", gpt_answer=None, response=None)
    rec.write_text("".join(json.dumps(r) + "\n" for r in records))
    capsys.readouterr()
    assert main(argv) == 0
    assert "2 asked, 4 already recorded, 0 errors" in capsys.readouterr().err
    again = read_records(rec)
    assert len(again) == 6 and not any(r["error"] for r in again)
    kept = [r for r in records if not r["error"]]
    assert again[: len(kept)] == kept  # answered records untouched, in place; retried ones appended


@pytest.mark.slow
def test_second_run_on_the_same_folder_is_refused_while_the_first_lives(shared_fixture_root, tmp_path, capsys):
    out = tmp_path / "run"
    rec = out / "records.jsonl"
    proc = start(eval_argv(shared_fixture_root, out, 100))
    try:
        wait_for_lines(proc, rec, 1)
        capsys.readouterr()
        assert main(eval_argv(shared_fixture_root, out, 0)) == 2
        err = capsys.readouterr().err
        assert "is being written by another running `mmad-boost eval`" in err and len(err.strip().splitlines()) == 1
    finally:
        proc.send_signal(signal.SIGKILL)  # the OS drops the lock of a killed run
        proc.communicate(timeout=30)
    assert main(eval_argv(shared_fixture_root, out, 0)) == 0
    final = read_records(rec)
    assert len(final) == 36 == len({r["qid"] for r in final})
