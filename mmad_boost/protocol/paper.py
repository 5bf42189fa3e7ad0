"""The published MMAD results shipped as data, and MMAD's `all_result` CSV shape for submitting.

`paper_data/mmad_published.json` holds each published entry with its source: the paper's Table 2
Average rows this project had (two decimals) and MMAD's released per-dataset CSVs (`all_result/`).
Numbers are typed in from those sources, never derived here.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

from ..errors import MmadError
from .scoring import SUBTASKS

TABLES = ("table2", "all_result", "all")  # choices of `compare --paper`
_TABLE_NAMES = {"table2": "paper Table 2", "all_result": "all_result"}
# MMAD's all_result/*.csv header, in its order (its scorer writes Recall, Precision, F1 before Overkill, Miss)
MMAD_CSV_COLUMNS = (*SUBTASKS, "Average", "Recall", "Precision", "F1", "Overkill", "Miss")


@dataclass(frozen=True)
class Published:
    model: str
    setting: str
    table: str  # "paper Table 2" or "all_result"
    source: str
    rows: dict  # dataset or "Average" -> {column: accuracy %}

    @property
    def label(self) -> str:
        return f"{self.model} ({self.table})"


def published_results(table: str = "all") -> list[Published]:
    """Shipped published entries: `table2`, `all_result`, or `all`."""
    if table not in TABLES:
        raise MmadError(f"--paper {table!r}: use one of {', '.join(TABLES)}")
    from ..resources import shipped

    path = shipped("paper_data") / "mmad_published.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    out = [Published(e["model"], e["setting"], e["table"], e["source"], e["rows"]) for e in data["entries"]]
    if table != "all":
        out = [p for p in out if p.table == _TABLE_NAMES[table]]
    return out


def mmad_csv(scores) -> str:
    """A run's score table in MMAD's `all_result` CSV shape: unnamed first column, full precision, percent.

    Only MMAD's columns; a subtask absent from a dataset is left empty (MMAD's script wrote 0 there)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([""] + list(MMAD_CSV_COLUMNS))
    for name, row in scores.rows.items():
        w.writerow([name] + ["" if row.get(c) is None else repr(float(row[c])) for c in MMAD_CSV_COLUMNS])
    return buf.getvalue()
