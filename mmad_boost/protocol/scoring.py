"""Scoring exactly as MMAD (protocol §6), from answer records.

A record (record.Record, or its JSON object) needs `image`, `question_type`, `correct_answer`,
`gpt_answer`; `options` (as shown) lets anomaly-detection answers be read as yes/no for precision
and recall. An image is normal by MMAD's key rule (keys.is_normal_key).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from .keys import OBJECT_ANALYSIS_TYPES, QUESTION_TYPES
from .record import Record, as_record

SUBTASKS = tuple(t for t in QUESTION_TYPES if t not in OBJECT_ANALYSIS_TYPES) + ("Object Analysis",)
EXTRA_METRICS = ("Overkill", "Miss", "Precision", "Recall", "F1", "Questions", "Dropped", "Parse Failures", "Errors")


def subtask_of(question_type: str) -> str:
    return "Object Analysis" if question_type in OBJECT_ANALYSIS_TYPES else question_type


def _mean(values):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


@dataclass
class Scores:
    """Per-dataset rows and the final Average row; accuracies in percent, None where a type is absent."""

    rows: dict[str, dict[str, float | None]] = field(default_factory=dict)
    columns: tuple[str, ...] = SUBTASKS + ("Average",) + EXTRA_METRICS
    parser: str | None = None
    intervals: object = None  # uncertainty.Intervals when computed (reports.write_reports); not part of MMAD's table

    def table(self) -> list[tuple[str, dict]]:
        return list(self.rows.items())


def latest_records(records) -> list[Record]:
    """One record per question: later lines replace earlier ones with the same `qid` (a record
    without one stands alone)."""
    by_id: dict = {}
    for i, r in enumerate(records):
        r = as_record(r)
        by_id[r.qid or i] = r
    return list(by_id.values())


def score_records(records) -> Scores:
    records = latest_records(records)
    errors = defaultdict(int)
    parse_fail = defaultdict(int)
    dropped = defaultdict(int)
    total = defaultdict(int)
    correct = defaultdict(lambda: defaultdict(int))
    count = defaultdict(lambda: defaultdict(int))
    ad = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "yn": 0})
    parsers = set()
    for r in records:
        ds = r.dataset
        total[ds] += 1
        if r.parser:
            parsers.add(r.parser)
        if r.error:
            errors[ds] += 1
        gold, given = r.correct_answer, r.model_answer
        if not r.is_valid:
            dropped[ds] += 1
            if not r.error:
                parse_fail[ds] += 1
            continue
        st = subtask_of(r.question_type)
        if st == "Anomaly Detection":
            key = "normal" if r.is_normal else "abnormal"
            count[ds][key] += 1
            correct[ds][key] += gold == given
            said = r.option_text(given).strip().lower()
            if said in ("yes", "no"):
                ad[ds]["yn"] += 1
                pred_abn = said == "yes"
                true_abn = key == "abnormal"
                ad[ds][("tp" if true_abn else "fp") if pred_abn else ("fn" if true_abn else "tn")] += 1
        else:
            count[ds][st] += 1
            correct[ds][st] += gold == given
    rows: dict[str, dict] = {}
    for ds in sorted(total):
        row: dict[str, float | None] = {}
        acc = lambda k: 100.0 * correct[ds][k] / count[ds][k] if count[ds][k] else None  # noqa: E731
        n_acc, a_acc = acc("normal"), acc("abnormal")
        row["Anomaly Detection"] = _mean([n_acc, a_acc]) if (n_acc is not None and a_acc is not None) else (n_acc if a_acc is None else a_acc)
        for st in SUBTASKS[1:]:
            row[st] = acc(st)
        row["Average"] = _mean(row[st] for st in SUBTASKS)
        row["Overkill"] = None if n_acc is None else 100.0 - n_acc
        row["Miss"] = None if a_acc is None else 100.0 - a_acc
        c = ad[ds]
        p = 100.0 * c["tp"] / (c["tp"] + c["fp"]) if (c["tp"] + c["fp"]) else None
        rc = 100.0 * c["tp"] / (c["tp"] + c["fn"]) if (c["tp"] + c["fn"]) else None
        row["Precision"], row["Recall"] = p, rc
        row["F1"] = (2 * p * rc / (p + rc) if (p + rc) else 0.0) if (p is not None and rc is not None) else None
        row["Questions"] = float(total[ds])
        row["Dropped"] = float(dropped[ds])
        row["Parse Failures"] = float(parse_fail[ds])
        row["Errors"] = float(errors[ds])
        rows[ds] = row
    if rows:
        avg = {col: _mean(r[col] for r in rows.values()) for col in SUBTASKS + ("Average", "Overkill", "Miss", "Precision", "Recall", "F1")}
        for col in ("Questions", "Dropped", "Parse Failures", "Errors"):
            avg[col] = float(sum(r[col] for r in rows.values()))
        rows["Average"] = avg
    return Scores(rows=rows, parser=",".join(sorted(parsers)) or None)


def strict_accuracy(records) -> dict[str, float | None]:
    """Accuracy per subtask counting parse failures and errors as wrong (not MMAD's rule; shown beside it)."""
    c, n = defaultdict(int), defaultdict(int)
    for r in latest_records(records):
        st = subtask_of(r.question_type)
        n[st] += 1
        c[st] += r.is_right()
    return {st: (100.0 * c[st] / n[st] if n[st] else None) for st in SUBTASKS}
