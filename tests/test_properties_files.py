"""Property tests: generated malformed question files, records files and fitted expert folders.

Whatever the file holds, the CLI (run in-process: a subprocess would import torch each time)
ends with exit code 0 or 2, never a traceback; a 2 comes with exactly one `error:` line naming the
file or field; nothing half-written is left; and every recorded question is recorded exactly once.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from mmad_boost.protocol.data import Benchmark
from mmad_boost.errors import MmadError
from mmad_boost.experts import load_expert
from mmad_boost.running.records import read_records, run_records
from mmad_boost.running.runner import Runner
from reliability2_support import eval_args, partial_files, qids_once, run_cli


def fast(n: int):
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
        database=None,
    )


json_scalars = st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)
letters = st.sampled_from(["A", "B", "C", "D", "E", "F", "a", "", "AB", "ABCDE", " A", "1"])
weird_keys = st.sampled_from(["../escape.png", "/etc/passwd", "", "MVTec-AD", "MVTec-AD/widget/test/good/none.png", "é/ü/ß/good/x.png", "a\x00b"])
FIELDS = ["Question", "Options", "Answer", "type", "annotation"]
IMAGE_FIELDS = ["conversation", "mask_path", "similar_templates", "random_templates", "image_path"]


@st.composite
def mutation(draw):
    kind = draw(
        st.sampled_from(["question-field", "drop-question-field", "image-field", "drop-image-field", "options", "answer", "rename-key", "templates", "whole"])
    )
    return kind, draw(st.randoms(use_true_random=False)), draw(json_values), draw(letters), draw(weird_keys)


def apply(data: dict, m) -> object:
    kind, rnd, value, letter, key = m
    if kind == "whole":
        return value
    img = rnd.choice(sorted(data))
    entry = data[img]
    conv = entry.get("conversation") if isinstance(entry, dict) else None
    q = rnd.choice(conv) if isinstance(conv, list) and conv else None
    if kind == "question-field" and isinstance(q, dict):
        q[rnd.choice(FIELDS)] = value
    elif kind == "drop-question-field" and isinstance(q, dict):
        q.pop(rnd.choice(FIELDS), None)
    elif kind == "image-field" and isinstance(entry, dict):
        entry[rnd.choice(IMAGE_FIELDS)] = value
    elif kind == "drop-image-field" and isinstance(entry, dict):
        entry.pop(rnd.choice(IMAGE_FIELDS), None)
    elif kind == "options" and isinstance(q, dict) and isinstance(q.get("Options"), dict):
        q["Options"][letter] = value if rnd.random() < 0.3 else "text"
    elif kind == "answer" and isinstance(q, dict):
        q["Answer"] = letter
    elif kind == "rename-key":
        data[key] = data.pop(img)
    elif kind == "templates" and isinstance(entry, dict):
        entry["similar_templates"] = [value, "MVTec-AD/widget/train/good/000.png"][: rnd.randint(1, 2)]
    return data


@pytest.fixture(scope="module")
def base_questions(shared_fixture_root):
    return json.loads((shared_fixture_root / "mmad.json").read_text())


@fast(40)
@given(mutations=st.lists(mutation(), min_size=1, max_size=3), raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_malformed_question_files(shared_fixture_root, base_questions, capsys, mutations, raw):
    work = Path(tempfile.mkdtemp(prefix="qprop-"))
    try:
        qf, out = work / "questions.json", work / "run"
        data: object = copy.deepcopy(base_questions)
        for m in mutations:
            data = apply(data, m) if isinstance(data, dict) and data else data
        if raw is not None:  # sometimes not JSON at all
            qf.write_bytes(raw)
        else:
            qf.write_text(json.dumps(data, allow_nan=True), encoding="utf-8", errors="surrogatepass")
        rc, _, err = run_cli(capsys, *eval_args(shared_fixture_root, out, "--questions", qf, "--shard", "1/1"))
        assert rc in (0, 2) and "Traceback" not in err, err
        event(f"exit {rc}")
        assert partial_files(out) == []
        if rc == 2:
            lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
            assert len(lines) == 1, err
            assert any(n in lines[0] for n in ("questions.json", "image ", "template ", "mask ", "--")), lines[0]
            assert not out.exists(), "a failed start leaves no run folder"
        else:
            recs = read_records(out / "records.shard-1-of-1.jsonl")
            assert qids_once(recs) and len(recs) == len(Benchmark(shared_fixture_root, qf).select())
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- records files -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(shared_fixture_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("records-prop") / "run"
    bench = Benchmark(shared_fixture_root)
    Runner(bench, "baseline:random", out, progress=False).run(bench.select())
    return out


@pytest.fixture(scope="module")
def no_plots():
    """matplotlib takes ~2 s per `score`; these properties are about reading records, so the two
    plots are drawn as empty files here (tests/test_scoring.py and the demo draw the real ones)."""
    from mmad_boost import atomic
    from mmad_boost.reporting import reports

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reports, "heatmap", lambda scores, path, title="": atomic.write_bytes(path, b"png"))
        mp.setattr(reports, "radar", lambda runs, path: atomic.write_bytes(path, b"png"))
        yield


bad_lines = st.one_of(
    st.binary(max_size=30).filter(lambda b: b"\n" not in b),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["qid", "image", "question_type", "error", "options", "gpt_answer", "latency_s", "trace"]), json_values, max_size=5).map(
        lambda d: json.dumps(d).encode()
    ),
    st.just(b'{"qid": "x\xff"}'),
    st.just(b"[" * 3000 + b"]" * 3000),
    st.just(b""),
)


@pytest.mark.slow  # ~7 s: two `score` runs per example
@fast(30)
@given(inserts=st.lists(st.tuples(st.integers(0, 200), bad_lines), min_size=1, max_size=4), duplicate=st.booleans(), torn=st.booleans())
def test_damaged_records_files(finished_run, no_plots, capsys, inserts, duplicate, torn):
    work = Path(tempfile.mkdtemp(prefix="rprop-"))
    try:
        run = work / "run"
        shutil.copytree(finished_run, run)
        rec = run / "records.jsonl"
        lines = rec.read_bytes().splitlines(keepends=True)
        good_qids = {json.loads(ln)["qid"] for ln in lines}
        if duplicate:  # a question answered twice (e.g. --force-mix): counted once
            lines.append(lines[0])
        for pos, line in inserts:
            lines.insert(pos % (len(lines) + 1), line + b"\n")
        data = b"".join(lines) + (b'{"qid": "torn' if torn else b"")
        rec.write_bytes(data)

        rc, _, err = run_cli(capsys, "score", run)
        assert rc in (0, 2) and "Traceback" not in err, err
        event(f"score exit {rc}")
        if rc == 2:
            lines_err = [ln for ln in err.splitlines() if ln.startswith("error: ")]
            assert len(lines_err) == 1 and "records.jsonl: line " in lines_err[0], err
        rc, _, err = run_cli(capsys, "score", run, "--repair")
        assert rc == 0 and "Traceback" not in err, err
        recs = run_records(run)
        assert {r["qid"] for r in recs} >= good_qids
        scores = json.loads((run / "scores.json").read_text())
        assert scores["rows"]["Average"]["Questions"] == len({r["qid"] for r in recs}), "a question is never counted twice"
        assert partial_files(run) == []
        kept = rec.read_bytes()
        assert all(isinstance(json.loads(ln), dict) for ln in kept.splitlines() if ln.strip()), "after --repair every line is a record"
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- fitted expert folders ------------------------------------------------------------------------------------------


def _valid_folder(d: Path) -> Path:
    d.mkdir(parents=True)
    np.save(d / "memory_bank.npy", np.ones((6, 8), np.float32))
    meta = {
        "format": 1,
        "kind": "patchcore",
        "config": {
            "backbone": "efficientnet-lite0",
            "mode": "full",
            "size": 64,
            "coreset_ratio": 0.1,
            "sigma": 4.0,
            "foreground": False,
            "seed": 0,
            "reweight": False,
            "topk": 0.0,
            "knn": 1,
        },
        "fitted": True,
        "arrays": ["memory_bank"],
        "image_threshold": 1.0,
        "pixel_threshold": 0.5,
        "calibration": {"method": "holdout", "false_marks": 0.05, "margin": 1.0, "normal_scores": [0.5, 0.7], "normal_map_max": [0.6, 0.8]},
    }
    (d / "expert.json").write_text(json.dumps(meta))
    return d


TOP = ["format", "kind", "config", "fitted", "arrays", "image_threshold", "pixel_threshold", "state_id", "calibration", "extra"]
CONFIG = ["backbone", "mode", "size", "coreset_ratio", "sigma", "foreground", "seed", "reweight", "topk", "knn", "batch", "other"]


@st.composite
def expert_damage(draw):
    kind = draw(st.sampled_from(["top", "config", "drop", "json-bytes", "npy-header", "npy-bytes", "npy-shape", "arrays", "calibration"]))
    return kind, draw(st.randoms(use_true_random=False)), draw(json_values), draw(st.binary(max_size=64))


def damage(d: Path, dmg) -> None:
    kind, rnd, value, raw = dmg
    meta_file, npy = d / "expert.json", d / "memory_bank.npy"
    meta = json.loads(meta_file.read_text())
    if kind == "top":
        meta[rnd.choice(TOP)] = value
    elif kind == "config":
        meta["config"][rnd.choice(CONFIG)] = value
    elif kind == "drop":
        meta.pop(rnd.choice(TOP), None)
    elif kind == "arrays":
        meta["arrays"] = [rnd.choice(["memory_bank", "../memory_bank", "/tmp/x", "bank", "a.b", ""]), *([value] if rnd.random() < 0.3 else [])]
    elif kind == "calibration":
        meta["calibration"][rnd.choice(["method", "false_marks", "margin", "normal_scores", "normal_map_max", "x"])] = value
    elif kind == "json-bytes":
        meta_file.write_bytes(raw)
        return
    else:
        data = bytearray(npy.read_bytes())
        if kind == "npy-header":  # random bytes over the header
            start = rnd.randint(0, 100)
            data[start : start + len(raw)] = raw
        elif kind == "npy-shape":
            shape = rnd.choice(["(1000000000, 1280)", "(6, 8, 1)", "(-1, 8)", "()", "(6,)", "(48, 1)", "(7, 8)", "(2**62, 2**62)"])
            header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
            header += " " * (118 - len(header)) + "\n"
            data = bytearray(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()) + data[128:]
        else:  # cut short or extended
            data = data[: rnd.randint(0, len(data))] if rnd.random() < 0.7 else data + raw
        npy.write_bytes(bytes(data))
        return
    meta_file.write_text(json.dumps(meta, allow_nan=True), errors="surrogatepass")


@fast(60)
@given(damages=st.lists(expert_damage(), min_size=1, max_size=3))
def test_damaged_expert_folders(damages):
    work = Path(tempfile.mkdtemp(prefix="eprop-"))
    try:
        d = _valid_folder(work / "exp")
        for dmg in damages:
            try:
                damage(d, dmg)
            except (ValueError, TypeError, KeyError, AttributeError):
                break  # an earlier damage removed what this one edits (bytes for JSON, config gone): enough damage
        tracemalloc.start()
        try:
            expert = load_expert(d)
        except MmadError as e:
            event("refused")
            text = str(e)
            assert "\n" not in text and ("expert.json" in text or ".npy" in text), text
            expert = None
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < 64 << 20, f"{peak} bytes allocated for a 6 x 8 bank: a header's claim was believed"
        if expert is not None and expert.fitted and expert.mode == "full":
            assert expert.bank is not None and expert.bank.ndim == 2 and expert.bank.size > 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
