"""The report page's data: the runs (records, scores, identity) and one row per question, with
every run's answer, aligned by question id. Rows use short keys to keep a 40k-question page small
(report.js reads them): id, key, ds (dataset), cat (category), normal, type, q (question), o
(options), g (correct letter), img, tp (templates), dx (defect examples), a (one answer per run:
a letter, s status c/w/p/e, r response, e error, l latency, t trace, x expert picture), ch (change
against run 1)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import MmadError
from ..protocol.record import ExpertTrace, Record, RetrievalTrace, Trace
from .html_images import Images

MAX_RESPONSE_CHARS = 20000  # a runaway generation must not bloat the page


@dataclass
class Run:
    dir: Path
    name: str
    identity: dict
    data_root: Path | None
    records: list[Record]  # one per question, the latest line of each
    scores: object = None


def load_run(run_dir: Path, data_root: Path | None) -> Run:
    from ..running.records import run_records
    from ..protocol.scoring import latest_records, score_records

    if not run_dir.is_dir():
        raise MmadError(f"run folder {run_dir} not found; pass the --out folder of `mmad-boost eval`")
    meta = {}
    run_file = run_dir / "run.json"
    if run_file.exists():
        from ..running.records import read_run_file

        meta = read_run_file(run_file)  # one line naming the file when it is not the expected object
    root = data_root or (Path(meta["data_root"]) if isinstance(meta.get("data_root"), str) and meta["data_root"] else None)
    records = latest_records(run_records(run_dir))
    if not records:
        raise MmadError(f"{run_dir}: the run holds no records yet, so there is nothing to report; run `mmad-boost eval --out {run_dir}` first")
    from .uncertainty import score_intervals

    scores = score_records(records)
    scores.intervals = score_intervals(records)  # 95 % bootstrap intervals over images, shown under each value
    return Run(run_dir, run_dir.name, meta.get("identity", {}), root, records, scores)


def unique_names(runs: list[Run]) -> None:
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.dir.parent.name}/{r.dir.name}"


# -- where the pictures are -----------------------------------------------------
def _image_path(root: Path | None, key: str) -> str | None:
    return None if root is None else os.path.join(root, key)  # strings: pathlib is slow for 40k rows


def _template_path(root: Path | None, image_key: str, rel: str) -> str | None:
    # same rule as Benchmark.template_path: from the data root, else from the category folder
    if root is None:
        return None
    direct = os.path.join(root, rel)
    parts = image_key.split("/")
    if len(parts) < 2 or os.path.exists(direct):
        return direct
    return os.path.join(root, parts[0], parts[1], rel)


def _picture_path(run_dir: Path, rel: str | None) -> Path | None:
    if not rel:
        return None
    p = Path(rel)
    return p if p.is_absolute() else run_dir / p


# -- questions ----------------------------------------------------------------
def _status(r: Record) -> str:
    """c right, w wrong, p unparsed (dropped by MMAD's rule), e error."""
    if r.error:
        return "e"
    if not r.is_valid:
        return "p"
    return "c" if r.is_right() else "w"


def _change(base: dict | None, other: dict | None) -> str | None:
    """How `other` differs from the reference answer: fixed, broke, changed (other wrong letter) or same."""
    if base is None or other is None:
        return None
    if base["s"] == "c" and other["s"] != "c":
        return "broke"
    if base["s"] != "c" and other["s"] == "c":
        return "fixed"
    return "same" if (base.get("a"), base["s"]) == (other.get("a"), other["s"]) else "changed"


def _short(value, limit: int = 2000):
    text = json.dumps(value, default=str)
    return value if len(text) <= limit else text[:limit] + "…"


def _trace(trace: Trace | None) -> dict | None:
    """The trace as the page shows it: retrieval, the expert without its picture (shown as an image),
    numeric timings, and any other section (the route, a model's own) shortened."""
    if not isinstance(trace, Trace):
        return None
    out: dict = {}
    if isinstance(trace.retrieval, RetrievalTrace):
        out["retrieval"] = trace.retrieval.to_json()
    if isinstance(trace.expert, ExpertTrace):
        out["expert"] = {k: v for k, v in trace.expert.to_json().items() if k != "picture"}
    if isinstance(trace.timings, dict):
        out["timings"] = trace.stage_seconds()
    other = {k: _short(v) for k, v in trace.other_sections().items()}
    if other:
        out["other"] = other
    return out or None


def _question_order(q: dict):
    # by image, then by the question's index (qid = "<image>#<index>"), so a page reads image by image
    tail = q["id"].rpartition("#")[2]
    return (q["key"], int(tail) if tail.isdigit() else 0, q["id"])


def question_rows(runs: list[Run], images: Images) -> list[dict]:
    """One row per question id over all runs, ordered image by image; see the module's key list."""
    by_id: dict[str, dict] = {}
    for ri, run in enumerate(runs):
        for r in run.records:
            key = r.image
            qid = r.qid or f"{key}#{r.question}"
            parsed = r.trace  # parsed on each access: once here
            trace = parsed if parsed is not None else Trace()
            tmpl = [images.add(_template_path(run.data_root, key, k), k) for k in trace.templates or []]
            q = by_id.get(qid)
            if q is None:
                q = by_id[qid] = {
                    "id": qid,
                    "key": key,
                    "ds": r.dataset,
                    "cat": r.category,
                    "normal": r.is_normal,
                    "type": r.question_type,
                    "q": r.question if r.question is not None else "",
                    "o": r.options or {},
                    "g": r.correct_answer,
                    "img": images.add(_image_path(run.data_root, key), key),
                    "tp": tmpl,
                    "dx": [images.add(_image_path(run.data_root, k), k) for k in trace.defect_examples or []],
                    "a": [None] * len(runs),
                }
            elif q["img"] is None and run.data_root is not None:
                q["img"] = images.add(_image_path(run.data_root, key), key)
            ans: dict = {"a": r.model_answer, "s": _status(r)}
            if r.response is not None:
                ans["r"] = r.response if len(r.response) <= MAX_RESPONSE_CHARS else r.response[:MAX_RESPONSE_CHARS] + "…"
            if r.error:
                ans["e"] = r.error
            if r.has_latency():
                ans["l"] = r.latency_seconds
            t = _trace(parsed)
            if t:
                ans["t"] = t
            picture = trace.expert.picture if isinstance(trace.expert, ExpertTrace) else None
            if picture:
                ans["x"] = images.add(_picture_path(run.dir, picture), f"{run.name}: {picture}", sharp=True)
            if tmpl != q["tp"]:
                ans["tp"] = tmpl
            if (r.options or {}) != q["o"] or r.correct_answer != q["g"]:
                ans["o"], ans["g"] = r.options or {}, r.correct_answer
            q["a"][ri] = ans
    questions = sorted(by_id.values(), key=_question_order)
    for q in questions:
        q["ch"] = [None] + [_change(q["a"][0], a) for a in q["a"][1:]]
    return questions
