"""Score tables, `scores.csv` in MMAD's shape, `report.md`, and the heatmap and radar plots.

Each table cell has a 95 % bootstrap interval over images (uncertainty.py): shown as `[low, high]`
in report.md and the printed table, and as extra `<column> low/high` columns after MMAD's columns
in scores.csv (MMAD's columns unchanged) and an `intervals` object in scores.json. Runs made with
--circular or --judge get their second figures (robust.py) beside MMAD's, never mixed into it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..atomic import save_figure, write_text
from ..running.records import run_records
from ..protocol.record import as_records
from ..protocol.scoring import EXTRA_METRICS, SUBTASKS, Scores, score_records, strict_accuracy
from .uncertainty import CELLS as INTERVAL_COLUMNS
from .uncertainty import score_intervals

COLUMNS = SUBTASKS + ("Average",) + EXTRA_METRICS
SHORT = {
    "Anomaly Detection": "Discr.",
    "Defect Classification": "Def.Cls",
    "Defect Localization": "Def.Loc",
    "Defect Description": "Def.Desc",
    "Defect Analysis": "Def.Ana",
    "Object Classification": "Obj.Cls",
    "Object Analysis": "Obj.Ana",
    "Average": "Avg",
}
_COUNTS = ("Questions", "Dropped", "Parse Failures", "Errors")


def fmt(v, col: str = "") -> str:
    if v is None:
        return ""
    return str(int(v)) if col in _COUNTS else f"{v:.2f}"


def scores_csv(scores: Scores) -> str:
    iv = scores.intervals
    extra = [f"{c} {end}" for c in INTERVAL_COLUMNS for end in ("low", "high")] if iv is not None else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([""] + list(COLUMNS) + extra)
    for name, row in scores.rows.items():
        bounds = []
        if iv is not None:
            for c in INTERVAL_COLUMNS:
                b = iv.get(name, c)
                bounds += [fmt(b[0]), fmt(b[1])] if b else ["", ""]
        w.writerow([name] + [fmt(row.get(c), c) for c in COLUMNS] + bounds)
    return buf.getvalue()


def _with_interval(scores: Scores, name: str, col: str, text: str) -> str:
    b = scores.intervals.get(name, col) if (scores.intervals is not None and col in INTERVAL_COLUMNS) else None
    return text if (not text or b is None) else f"{text} [{b[0]:.1f}, {b[1]:.1f}]"


def markdown_table(scores: Scores, columns=SUBTASKS + ("Average",), intervals: bool = True) -> str:
    """MMAD's table; with `intervals` (and scores.intervals computed) each cell is followed by its 95 % interval."""
    head = "| dataset | " + " | ".join(SHORT.get(c, c) for c in columns) + " |"
    sep = "| --- |" + " ---: |" * len(columns)
    lines = [head, sep]
    for name, row in scores.rows.items():
        cells = [fmt(row.get(c), c) for c in columns]
        if intervals:
            cells = [_with_interval(scores, name, c, t) for c, t in zip(columns, cells)]
        if name == "Average":
            name, cells = "**Average**", [f"**{c}**" if c else c for c in cells]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scores_json(scores: Scores, extra: dict | None = None) -> str:
    out = {"parser": scores.parser, "rows": scores.rows}
    if scores.intervals is not None:
        out["intervals"] = {
            "method": scores.intervals.describe(),
            "confidence": scores.intervals.confidence,
            "rows": {n: {c: (list(b) if b else None) for c, b in r.items()} for n, r in scores.intervals.rows.items()},
        }
    out.update(extra or {})
    return json.dumps(out, indent=2)


def report_markdown(run_dir: Path, records, scores: Scores) -> str:
    records = as_records(records)
    meta = _run_meta(run_dir)
    out = [f"# MMAD run report: `{run_dir.name}`", ""]
    if meta:
        out += [
            f"- model: `{meta.get('model')}`",
            f"- setting: {meta.get('setting')}",
            f"- seed: {meta.get('seed')}",
            f"- answer parser: {meta.get('parser')}",
            "",
        ]
    out += ["## Accuracy (%, MMAD's rule: unparsed answers dropped)", "", markdown_table(scores), ""]
    if scores.intervals is not None:
        out += [f"[low, high]: {scores.intervals.describe()}.", ""]
    out += robust_sections(records, scores)
    out += ["## Anomaly discrimination and bookkeeping", "", markdown_table(scores, ("Overkill", "Miss", "Precision", "Recall", "F1") + _COUNTS), ""]
    strict = strict_accuracy(records)
    out += [
        "## Strict accuracy (parse failures and errors counted wrong; not MMAD's rule)",
        "",
        "| " + " | ".join(SHORT[s] for s in SUBTASKS) + " |",
        "|" + " ---: |" * len(SUBTASKS),
        "| " + " | ".join(fmt(strict[s]) for s in SUBTASKS) + " |",
        "",
    ]
    errs = [r for r in records if r.error]
    if errs:
        out += [f"## Errors ({len(errs)} questions; rerun the same command to retry them)", ""]
        out += [f"- `{r.qid}`: {r.error[:200]}" for r in errs[:20]]
        out.append("")
    from . import trace_summary

    out += trace_summary.markdown(records)
    out += ["## Files", "", "- `scores.csv`, `scores.json`, `heatmap.png`, `radar.png`", ""]
    return "\n".join(out)


def _run_meta(run_dir: Path) -> dict:
    p = run_dir / "run.json"
    try:
        meta = json.loads(p.read_text()) if p.exists() else {}
        ident = meta.get("identity", {}) if isinstance(meta, dict) else {}
        return ident if isinstance(ident, dict) else {}
    except json.JSONDecodeError:
        return {}


def run_label(run_dir: Path) -> str:
    meta = _run_meta(run_dir)
    return run_dir.name if not meta else f"{run_dir.name}"


def write_reports(run_dirs: list[Path], out_dir: Path | None = None) -> tuple[list[Scores], Path]:
    """Score each run, write its files into the run folder; the radar holds all runs."""
    all_scores = []
    for rd in run_dirs:
        records = as_records(run_records(rd))
        scores = score_records(records)
        scores.intervals = score_intervals(records)
        all_scores.append(scores)
        write_text(rd / "scores.csv", scores_csv(scores))  # atomic: a full disk leaves the old file, never half a file
        write_text(rd / "scores.json", scores_json(scores, robust_json(records)))
        heatmap(scores, rd / "heatmap.png", title=rd.name)
        write_text(rd / "report.md", report_markdown(rd, records, scores))
    target = out_dir or run_dirs[0]
    radar([(run_label(rd), s) for rd, s in zip(run_dirs, all_scores)], target / "radar.png")
    return all_scores, target


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(scores: Scores, path: Path, title: str = "") -> None:
    plt = _plt()
    fig = heatmap_figure(scores, title)
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def heatmap_figure(scores: Scores, title: str = ""):
    """Accuracy per dataset and subtask; a cell without questions says n/a."""
    import numpy as np

    plt = _plt()
    names = list(scores.rows)
    cols = list(SUBTASKS) + ["Average"]
    data = np.array([[scores.rows[n].get(c) if scores.rows[n].get(c) is not None else np.nan for c in cols] for n in names], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2, 0.6 * len(names) + 1.8))
    im = ax.imshow(data, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(cols)), [SHORT[c] for c in cols], rotation=30, ha="right", fontsize=12)
    ax.set_yticks(range(len(names)), names, fontsize=12)
    for i in range(len(names)):  # large text: the HTML report shows this image at about half size
        for j in range(len(cols)):
            if np.isnan(data[i, j]):
                ax.text(j, i, "n/a", ha="center", va="center", color="0.45", fontsize=11)
            else:
                ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", color="w" if data[i, j] < 60 else "k", fontsize=11)
    fig.colorbar(im, ax=ax, label="accuracy %")
    ax.set_title(title or "accuracy by dataset and subtask")
    fig.tight_layout()
    return fig


def radar(runs: list[tuple[str, Scores]], path: Path) -> None:
    plt = _plt()
    fig = radar_figure(runs)
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def radar_figure(runs: list[tuple[str, Scores]]):
    """Average accuracy per subtask, one shape per run. A subtask a run has no questions of is a
    gap in its shape (not 0, which would collapse it) and its axis label says n/a. Large fonts and
    the legend below: the page shows this image at about half size."""
    import numpy as np

    plt = _plt()
    angles = np.linspace(0, 2 * np.pi, len(SUBTASKS), endpoint=False).tolist()
    fig = plt.figure(figsize=(7, 7.6 + 0.3 * max(0, len(runs) - 2)))
    ax = fig.add_subplot(111, polar=True)
    missing = {s: 0 for s in SUBTASKS}
    for label, sc in runs:
        avg = sc.rows.get("Average", {})
        vals = [float(avg[s]) if avg.get(s) is not None else np.nan for s in SUBTASKS]
        for s, v in zip(SUBTASKS, vals):
            missing[s] += bool(np.isnan(v))
        (line,) = ax.plot(angles + angles[:1], vals + vals[:1], label=label, marker="o", markersize=4, linewidth=1.8)
        if not np.isnan(vals).any():
            ax.fill(angles + angles[:1], vals + vals[:1], alpha=0.1, color=line.get_color())
    labels = []
    for s in SUBTASKS:
        n = missing[s]
        tag = "" if not n else ("\n(n/a)" if n == len(runs) else f"\n(n/a in {n} of {len(runs)})")
        labels.append(SHORT[s] + tag)
    ax.set_xticks(angles, labels, fontsize=14)
    ax.tick_params(axis="x", pad=12)
    ax.set_ylim(0, 100)
    ax.tick_params(axis="y", labelsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), fontsize=12, ncol=1 if len(runs) > 3 else len(runs), frameon=False)
    fig.tight_layout()
    return fig


def robust_scores(records) -> dict[str, Scores]:
    """The second figures a run has: "circular" (--circular) and "with judge" (--judge), each with intervals."""
    from ..running import robust

    out = {}
    if robust.has_circular(records):
        recs = robust.circular_records(records)
        out["circular"] = score_records(recs)
        out["circular"].intervals = score_intervals(recs)
    if robust.has_judge(records):
        recs = robust.judged_records(records)
        out["with judge"] = score_records(recs)
        out["with judge"].intervals = score_intervals(recs)
    return out


def robust_json(records) -> dict:
    extra = {}
    for name, sc in robust_scores(records).items():
        extra[name.replace(" ", "_")] = json.loads(scores_json(sc))
    return extra


def robust_sections(records, scores: Scores) -> list[str]:
    """report.md sections for --circular and --judge runs (nothing for other runs)."""
    records = as_records(records)
    out = []
    extra = robust_scores(records)
    if "circular" in extra:
        n = sum(1 for r in records if r.circular_correct is not None)
        out += [
            "## CircularEval accuracy (right only if every rotation of the options is right; not MMAD's figure)",
            "",
            f"{n} questions asked in every rotation; parse failures count wrong here. MMAD's single-shuffle accuracy is the table above.",
            "",
            markdown_table(extra["circular"]),
            "",
        ]
    if "with judge" in extra:
        judged = sum(1 for r in records if r.judge is not None and r.judge.answer and r.model_answer is None)
        asked = sum(1 for r in records if r.judge is not None)
        out += [
            "## Accuracy with the judge (judge letters stand in for unparsed answers; not MMAD's rule)",
            "",
            f"The judge was asked about {asked} unparsed responses and gave a letter for {judged}. Without the judge (MMAD's rule) is the table above.",
            "",
            markdown_table(extra["with judge"]),
            "",
        ]
    return out
