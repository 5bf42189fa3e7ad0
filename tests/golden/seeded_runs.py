"""Seeded runs on the bundled sample whose records must not change when the code is reshaped.

`python tests/golden/seeded_runs.py --write` stores the normalised records in
tests/golden/records.json (do that only for a change meant to alter answers, and say so in the
commit); tests/test_golden_records.py runs the same configurations and compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STORED = HERE / "records.json"
MODEL = "python:digest_model:DigestModel"
LIMIT = "24"  # questions per run: a stratified slice, both categories, normal and defective images

ROUTE = """\
[types."Anomaly Detection"]
knowledge = false
[types."Defect Classification"]
expert = "text"
templates = false
"""

# name -> eval arguments after --data/--model/--out; every boost and option family once.
CONFIGS: dict[str, list[str]] = {
    "plain": [],
    "zero-shot-mmad-parser": ["--setting", "0-shot", "--parser", "mmad", "--no-shuffle"],
    "k-shot-circular": ["--setting", "k-shot:2", "--circular", "--limit", "8"],
    "rag-oracle": ["--rag"],
    "rag-image": ["--rag", "--retrieval", "image"],
    "gt-bbox": ["--expert", "gt"],
    "gt-mask": ["--expert", "gt", "--viz", "mask"],
    "fitted-contour-faithful": ["--expert", "{experts}", "--viz", "contour"],
    "fitted-calibrated-both": ["--expert", "{experts}", "--viz", "highlight", "--calibrated", "--evidence", "both"],
    "rag-fitted-routed": ["--rag", "--expert", "{experts}", "--calibrated", "--evidence", "both", "--route", "{route}", "--workers", "3"],
}


def _normalise(record: dict, out: Path) -> dict:
    record = json.loads(json.dumps(record).replace(str(out), "<out>"))
    record.pop("latency_s", None)
    trace = record.get("trace") or {}
    trace.pop("timings", None)
    return record


def run_all(work: Path) -> dict[str, list[dict]]:
    from mmad_boost.cli import main
    from mmad_boost.sample import benchmark_root, expert_dir

    sys.path.insert(0, str(HERE))
    data = str(benchmark_root())
    experts = str(expert_dir())
    route = work / "route.toml"
    route.write_text(ROUTE)
    results = {}
    for name, args in CONFIGS.items():
        out = work / name
        args = [a.format(experts=experts, route=route) for a in args]
        if "--limit" not in args:
            args += ["--limit", LIMIT]
        code = main(["eval", "--data", data, "--model", MODEL, "--out", str(out), "--no-progress", *args])
        if code not in (0, None):
            raise SystemExit(f"{name}: eval exited {code}")
        lines = (out / "records.jsonl").read_text().splitlines()
        results[name] = sorted((_normalise(json.loads(x), out) for x in lines), key=lambda r: r["qid"])
    return results


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        got = run_all(Path(tmp))
    if "--write" in sys.argv:
        STORED.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print(f"wrote {STORED} ({sum(map(len, got.values()))} records)")
    else:
        print(json.dumps({k: len(v) for k, v in got.items()}))
