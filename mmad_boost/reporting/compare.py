"""`mmad-boost compare RUN_DIR...`: the paper-style table of each run's Average row, deltas against the first.

Every value carries a 95 % bootstrap interval over images, and every delta a *paired* one (the same
resampled images in both runs; see uncertainty.py); a delta whose interval excludes zero is marked `*`.
`--paper` adds the published MMAD rows (paper.py) beside the runs.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MmadError
from ..protocol.scoring import SUBTASKS

COLUMNS = (*SUBTASKS, "Average")


@dataclass
class Comparison:
    """Average-row accuracies (%) per run; deltas are against the first run (None where either is absent)."""

    labels: list[str]
    values: list[dict[str, float | None]]
    counts: list[dict[str, int]] = field(default_factory=list)  # questions, dropped, errors per run
    notes: list[str] = field(default_factory=list)
    columns: tuple[str, ...] = COLUMNS
    intervals: list = field(default_factory=list)  # per run: uncertainty.Intervals (empty when not computed)
    delta_intervals: list = field(default_factory=list)  # per run: uncertainty.DeltaIntervals against the first (None for the first)
    published: list = field(default_factory=list)  # paper.Published rows shown beside the runs

    @property
    def deltas(self) -> list[dict[str, float | None]]:
        first = self.values[0]
        return [{c: (None if v.get(c) is None or first.get(c) is None else v[c] - first[c]) for c in self.columns} for v in self.values]

    def delta(self, label: str, column: str) -> float | None:
        return self.deltas[self.labels.index(label)][column]

    def interval(self, label: str, column: str) -> tuple[float, float] | None:
        """95 % interval of `label`'s Average-row value (None when not computed)."""
        i = self.labels.index(label)
        return self.intervals[i].get("Average", column) if self.intervals else None

    def delta_interval(self, label: str, column: str) -> tuple[float, float] | None:
        """Paired 95 % interval of `label`'s delta against the first run (None for the first run or when not computed)."""
        i = self.labels.index(label)
        d = self.delta_intervals[i] if self.delta_intervals else None
        return d.get("Average", column) if d is not None else None

    def rows(self) -> list[dict]:
        """One flat dict per run: label, each column's value and `<column> delta`, and the counts."""
        out = []
        for label, vals, dels, cnt in zip(self.labels, self.values, self.deltas, self.counts or [{}] * len(self.labels)):
            row: dict = {"run": label}
            for c in self.columns:
                row[c] = _r(vals.get(c))
                row[f"{c} delta"] = _r(dels[c])
            if self.intervals:  # extra columns after the values: intervals of the value and of the delta
                for c in self.columns:
                    iv, dv = self.interval(label, c), self.delta_interval(label, c)
                    row[f"{c} low"], row[f"{c} high"] = (_r(iv[0]), _r(iv[1])) if iv else (None, None)
                    row[f"{c} delta low"], row[f"{c} delta high"] = (_r(dv[0]), _r(dv[1])) if dv else (None, None)
                    row[f"{c} delta beyond noise"] = None if dv is None else bool(dv[0] > 0 or dv[1] < 0)
            row.update(cnt)
            out.append(row)
        return out

    def markdown(self) -> str:
        from .reports import SHORT

        head = "| run | " + " | ".join(SHORT.get(c, c) for c in self.columns) + " | questions | dropped |"
        lines = [head, "| --- |" + " ---: |" * (len(self.columns) + 2)]
        for i, (label, vals, dels) in enumerate(zip(self.labels, self.values, self.deltas)):
            cells = [_cell(vals.get(c), dels[c] if i else None, self.interval(label, c), self.delta_interval(label, c) if i else None) for c in self.columns]
            cnt = self.counts[i] if self.counts else {}
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {cnt.get('questions', '')} | {cnt.get('dropped', '')} |")
        for p in self.published:
            avg = p.rows.get("Average", {})
            lines.append(f"| {p.label} | " + " | ".join("" if avg.get(c) is None else f"{avg[c]:.2f}" for c in self.columns) + " | published | |")
        notes = list(self.notes)
        if self.intervals:
            notes.insert(0, self.interval_note())
        if self.published:
            notes.append("published rows: MMAD's full question set (39,672 questions); sources: " + "; ".join(sorted({p.source for p in self.published})))
        return "\n".join(lines + [f"\n{n}" for n in notes])

    def interval_note(self) -> str:
        first = self.intervals[0]
        paired = next((d for d in self.delta_intervals if d is not None), None)
        text = (
            f"[low, high]: {round(100 * first.confidence)} % bootstrap interval over images, stratified by dataset "
            f"({first.n_boot} replicates, seed {first.seed})"
        )
        if paired is not None:
            text += "; deltas: paired intervals (the same resampled images in both runs), * = the interval excludes zero"
            text += "".join(f"; {n}" for n in paired.notes[:1])
        few = first.few_images()
        return text + (f"; {few}" if few else "")

    def csv(self) -> str:
        rows = self.rows()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(k, v) for k, v in r.items()})
        for p in self.published:  # published rows: values only (no deltas or intervals: another question set)
            avg = p.rows.get("Average", {})
            w.writerow({"run": p.label, **{c: _csv_value(c, avg.get(c)) for c in self.columns}})
        return buf.getvalue()

    def json(self) -> str:
        out = {"baseline": self.labels[0], "runs": self.rows(), "notes": self.notes}
        if self.intervals:
            out["intervals"] = self.interval_note()
        if self.published:
            out["published"] = [
                {
                    "model": p.model,
                    "table": p.table,
                    "setting": p.setting,
                    "source": p.source,
                    "Average": {c: p.rows.get("Average", {}).get(c) for c in self.columns},
                }
                for p in self.published
            ]
        return json.dumps(out, indent=2)

    def verdict(self, label: str, column: str, paper: float, what: str = "", paper_text: str | None = None) -> str:
        """One plain sentence: did `label` move `column` the way the paper reports (`paper`: its delta, or just its sign)?

        With intervals, a delta whose paired interval spans zero is "within noise": no claim either way."""
        d = self.delta(label, column)
        name = what or f"{label} on {column}"
        ref = paper_text or f"paper {paper:+.2f}"
        if d is None:
            return f"{name}: no figure (the subtask has no questions in both runs)."
        iv = self.delta_interval(label, column)
        ci = "" if iv is None else f", 95 % interval [{iv[0]:+.2f}, {iv[1]:+.2f}]"
        if abs(d) < 0.005 and (iv is None or iv == (0.0, 0.0)):
            return f"{name}: no change ({d:+.2f} points{ci}; {ref}) - did NOT move this subtask."
        same = (d > 0) == (paper > 0)
        if iv is not None and iv[0] <= 0 <= iv[1]:
            lean = "the paper's direction" if same else "against the paper's direction"
            return f"{name}: {d:+.2f} points{ci} ({ref}) - within noise (the interval spans zero; it leans {lean}, but that is no claim)."
        tail = "in the paper's direction." if same else "NOT in the paper's direction."
        return f"{name}: {d:+.2f} points{ci} ({ref}) - " + ("beyond noise, " if iv is not None else "") + tail

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
            err = None
            if self.intervals:  # 95 % interval as an error bar (asymmetric)
                ivs = [self.interval(label, c) for c in self.columns]
                err = np.array([[max(0.0, y - iv[0]) if iv else 0.0 for y, iv in zip(ys, ivs)], [max(0.0, iv[1] - y) if iv else 0.0 for y, iv in zip(ys, ivs)]])
                err = np.nan_to_num(err)
            xs = x + (i - (len(self.labels) - 1) / 2) * width
            ax.bar(xs, ys, width, label=label, yerr=err, capsize=2, error_kw={"elinewidth": 0.8})
            for xi, y in zip(xs, ys):  # a subtask this run has no questions of: say so, not an empty slot
                if np.isnan(y):
                    ax.text(xi, 2, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
        ax.set_xticks(x, [SHORT.get(c, c) for c in self.columns], rotation=20)
        ax.set_ylabel("accuracy %")
        ax.set_ylim(0, 100)
        ax.set_title(title + (" - bars: 95 % intervals" if self.intervals else ""), fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        if path is not None:
            from ..atomic import save_figure

            try:
                save_figure(fig, path, dpi=110)  # atomic: no 0-byte picture on a full disk
            finally:
                plt.close(fig)
        return fig


def _r(v):
    return None if v is None else round(float(v), 4)


def _cell(v, d, iv=None, dv=None) -> str:
    """`62.50 [55.1, 70.0]` for a value, `70.00 (+7.50 [+1.2, +13.8]*)` for a delta; * = interval excludes zero."""
    if v is None:
        return ""
    if d is None:
        return f"{v:.2f}" + ("" if iv is None else f" [{iv[0]:.1f}, {iv[1]:.1f}]")
    if dv is None:
        return f"{v:.2f} ({d:+.2f})"
    star = "*" if (dv[0] > 0 or dv[1] < 0) else ""
    return f"{v:.2f} ({d:+.2f} [{dv[0]:+.1f}, {dv[1]:+.1f}]{star})"


def _csv_value(key: str, v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if key.endswith((" delta", " delta low", " delta high")):
        return f"{v:+.2f}"
    return f"{v:.2f}" if isinstance(v, float) else v


def compare_runs(
    run_dirs, labels: list[str] | None = None, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0, paper: str | None = None
) -> Comparison:
    """Score each run folder (shards merged) and line up their Average rows, with bootstrap intervals
    (`n_boot` replicates; 0: none) and paired intervals for the deltas; `paper`: add published rows
    (`table2`, `all_result` or `all`)."""
    from ..protocol.record import as_records
    from ..running.records import run_records
    from ..protocol.scoring import score_records
    from .uncertainty import paired_delta_intervals, score_intervals

    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise MmadError("compare: give at least one run folder")
    if labels is not None and len(labels) != len(dirs):
        raise MmadError(f"compare: {len(labels)} labels for {len(dirs)} run folders; give one label per folder")
    values, counts, questions_files, all_records = [], [], set(), []
    for d in dirs:
        if not d.is_dir():
            raise MmadError(f"run folder {d} not found; pass the --out folder of `mmad-boost eval`")
        records = as_records(run_records(d))
        all_records.append(records)
        avg = score_records(records).rows.get("Average", {})
        values.append({c: avg.get(c) for c in COLUMNS})
        counts.append(
            {
                "questions": len({r.qid or i for i, r in enumerate(records)}),
                "dropped": int(avg.get("Dropped") or 0),
                "errors": sum(1 for r in records if r.error),
            }
        )
        ident = _identity(d)
        if ident.get("questions_sha256"):
            questions_files.add(ident["questions_sha256"])
    notes = []
    if len(questions_files) > 1:
        notes.append("note: these runs used different question files; deltas compare different questions")
    if len({c["questions"] for c in counts}) > 1:
        notes.append("note: the runs answered different numbers of questions (" + ", ".join(str(c["questions"]) for c in counts) + ")")
    intervals, delta_intervals = [], []
    if n_boot:
        opts = dict(n_boot=n_boot, confidence=confidence, seed=seed)
        intervals = [score_intervals(r, **opts) for r in all_records]
        delta_intervals = [None] + [paired_delta_intervals(all_records[0], r, **opts) for r in all_records[1:]]
    published = []
    if paper:
        from ..protocol.paper import published_results

        published = published_results(paper)
    return Comparison(
        labels=labels or _labels(dirs), values=values, counts=counts, notes=notes, intervals=intervals, delta_intervals=delta_intervals, published=published
    )


def changed_answers(run_a, run_b, question_type: str | None = None) -> tuple[int, int]:
    """(questions answered differently, questions in both runs), optionally of one subtask."""
    from ..running.records import run_records
    from ..protocol.scoring import latest_records, subtask_of

    def answers(d):
        return {
            r.qid: r.model_answer
            for r in latest_records(run_records(Path(d)))
            if r.qid and (question_type is None or subtask_of(r.question_type) == question_type)
        }

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
    if not 0 < args.confidence < 1:
        raise MmadError(f"--confidence {args.confidence}: give a level between 0 and 1, e.g. 0.95")
    if args.bootstrap < 0:
        raise MmadError(f"--bootstrap {args.bootstrap}: give a number of replicates >= 0 (0: no intervals)")
    table = compare_runs(
        args.run_dirs, labels=args.label or None, n_boot=args.bootstrap, confidence=args.confidence, seed=args.bootstrap_seed, paper=args.paper
    )
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
    p.add_argument("--format", default="md", choices=["md", "csv", "json"], help="output format: md (default), csv or json")
    p.add_argument("--label", action="append", help="display name per run folder, in order (repeatable)")
    p.add_argument("--plot", help="also save a bar chart per subtask to this PNG file")
    p.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N", help="bootstrap replicates over images for the intervals (default 1000; 0: no intervals)"
    )
    p.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument(
        "--paper",
        nargs="?",
        const="table2",
        default=None,
        choices=["table2", "all_result", "all"],
        help="add published MMAD rows: table2 (the paper's Table 2, the default when given without a value), "
        "all_result (MMAD's released per-dataset CSVs) or all; default: none",
    )
    p.set_defaults(func=cmd_compare)
