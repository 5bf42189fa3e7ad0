"""`mmad-boost compare RUN_DIR...`: the paper-style table of each run's Average row, deltas against the first."""
from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MmadError

COLUMNS = (
    "Anomaly Detection", "Defect Classification", "Defect Localization", "Defect Description",
    "Defect Analysis", "Object Classification", "Object Analysis", "Average",
)


@dataclass
class Comparison:
    """Average-row accuracies (%) per run; deltas are against the first run (None where either is absent)."""

    labels: list[str]
    values: list[dict[str, float | None]]
    counts: list[dict[str, int]] = field(default_factory=list)  # questions, dropped, errors per run
    notes: list[str] = field(default_factory=list)
    columns: tuple[str, ...] = COLUMNS

    @property
    def deltas(self) -> list[dict[str, float | None]]:
        first = self.values[0]
        return [{c: (None if v.get(c) is None or first.get(c) is None else v[c] - first[c]) for c in self.columns} for v in self.values]

    def delta(self, label: str, column: str) -> float | None:
        return self.deltas[self.labels.index(label)][column]

    def rows(self) -> list[dict]:
        """One flat dict per run: label, each column's value and `<column> delta`, and the counts."""
        out = []
        for label, vals, dels, cnt in zip(self.labels, self.values, self.deltas, self.counts or [{}] * len(self.labels)):
            row: dict = {"run": label}
            for c in self.columns:
                row[c] = _r(vals.get(c))
                row[f"{c} delta"] = _r(dels[c])
            row.update(cnt)
            out.append(row)
        return out

    def markdown(self) -> str:
        from .reports import SHORT

        head = "| run | " + " | ".join(SHORT.get(c, c) for c in self.columns) + " | questions | dropped |"
        lines = [head, "| --- |" + " ---: |" * (len(self.columns) + 2)]
        for i, (label, vals, dels) in enumerate(zip(self.labels, self.values, self.deltas)):
            cells = [_cell(vals.get(c), dels[c] if i else None) for c in self.columns]
            cnt = self.counts[i] if self.counts else {}
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {cnt.get('questions', '')} | {cnt.get('dropped', '')} |")
        return "\n".join(lines + [f"\n{n}" for n in self.notes])

    def csv(self) -> str:
        rows = self.rows()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else (f"{v:+.2f}" if k.endswith(" delta") else (f"{v:.2f}" if isinstance(v, float) else v))) for k, v in r.items()})
        return buf.getvalue()

    def json(self) -> str:
        return json.dumps({"baseline": self.labels[0], "runs": self.rows(), "notes": self.notes}, indent=2)

    def verdict(self, label: str, column: str, paper: float, what: str = "", paper_text: str | None = None) -> str:
        """One plain sentence: did `label` move `column` the way the paper reports (`paper`: its delta, or just its sign)?"""
        d = self.delta(label, column)
        name = what or f"{label} on {column}"
        ref = paper_text or f"paper {paper:+.2f}"
        if d is None:
            return f"{name}: no figure (the subtask has no questions in both runs)."
        if abs(d) < 0.005:
            return f"{name}: no change ({d:+.2f} points; {ref}) - did NOT move this subtask."
        same = (d > 0) == (paper > 0)
        return f"{name}: {d:+.2f} points ({ref}) - " + ("in the paper's direction." if same else "NOT in the paper's direction.")

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows()).set_index("run")

    def plot(self, path: str | Path | None = None, title: str = "accuracy by subtask (Average row)"):
        """Grouped bars per subtask, one bar per run; saved when `path` is given. Returns the figure."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        from .reports import SHORT

        x = np.arange(len(self.columns))
        width = 0.8 / max(1, len(self.labels))
        fig, ax = plt.subplots(figsize=(1.3 * len(self.columns) + 2, 4))
        for i, (label, vals) in enumerate(zip(self.labels, self.values)):
            ys = [vals.get(c) if vals.get(c) is not None else np.nan for c in self.columns]
            ax.bar(x + (i - (len(self.labels) - 1) / 2) * width, ys, width, label=label)
        ax.set_xticks(x, [SHORT.get(c, c) for c in self.columns], rotation=20)
        ax.set_ylabel("accuracy %")
        ax.set_ylim(0, 100)
        ax.set_title(title)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig


def _r(v):
    return None if v is None else round(float(v), 4)


def _cell(v, d) -> str:
    if v is None:
        return ""
    return f"{v:.2f}" if d is None else f"{v:.2f} ({d:+.2f})"


def compare_runs(run_dirs, labels: list[str] | None = None) -> Comparison:
    """Score each run folder (shards merged) and line up their Average rows."""
    from .records import run_records
    from .scoring import score_records

    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise MmadError("compare: give at least one run folder")
    if labels is not None and len(labels) != len(dirs):
        raise MmadError(f"compare: {len(labels)} labels for {len(dirs)} run folders; give one label per folder")
    values, counts, questions_files = [], [], set()
    for d in dirs:
        if not d.is_dir():
            raise MmadError(f"run folder {d} not found; pass the --out folder of `mmad-boost eval`")
        records = run_records(d)
        avg = score_records(records).rows.get("Average", {})
        values.append({c: avg.get(c) for c in COLUMNS})
        counts.append({
            "questions": len({r.get("qid", i) for i, r in enumerate(records)}),
            "dropped": int(avg.get("Dropped") or 0),
            "errors": sum(1 for r in records if r.get("error")),
        })
        ident = _identity(d)
        if ident.get("questions_sha256"):
            questions_files.add(ident["questions_sha256"])
    notes = []
    if len(questions_files) > 1:
        notes.append("note: these runs used different question files; deltas compare different questions")
    if len({c["questions"] for c in counts}) > 1:
        notes.append("note: the runs answered different numbers of questions (" + ", ".join(str(c["questions"]) for c in counts) + ")")
    return Comparison(labels=labels or _labels(dirs), values=values, counts=counts, notes=notes)


def changed_answers(run_a, run_b, question_type: str | None = None) -> tuple[int, int]:
    """(questions answered differently, questions in both runs), optionally of one subtask."""
    from .records import run_records
    from .scoring import latest_records, subtask_of

    def answers(d):
        return {r["qid"]: r.get("gpt_answer") for r in latest_records(run_records(Path(d)))
                if "qid" in r and (question_type is None or subtask_of(r.get("question_type", "")) == question_type)}

    a, b = answers(run_a), answers(run_b)
    both = set(a) & set(b)
    return sum(a[q] != b[q] for q in both), len(both)


def _identity(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("identity", {})
    except (OSError, json.JSONDecodeError):
        return {}


def _labels(dirs: list[Path]) -> list[str]:
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [str(d) for d in dirs]


def cmd_compare(args) -> int:
    table = compare_runs(args.run_dirs, labels=args.label or None)
    if args.format == "csv":
        print(table.csv(), end="")
    elif args.format == "json":
        print(table.json())
    else:
        print(f"Average row, accuracy %; deltas against {table.labels[0]}\n")
        print(table.markdown())
    if args.plot:
        table.plot(args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("compare", help="compare run folders: each run's Average row with deltas against the first")
    p.add_argument("run_dirs", nargs="+", help="run folders; the first is the baseline")
    p.add_argument("--format", default="md", choices=["md", "csv", "json"])
    p.add_argument("--label", action="append", help="display name per run folder, in order (repeatable)")
    p.add_argument("--plot", help="also save a bar chart per subtask to this PNG file")
    p.set_defaults(func=cmd_compare)
