"""Score tables, `scores.csv` in MMAD's shape, `report.md`, and the heatmap and radar plots."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .records import run_records
from .scoring import EXTRA_METRICS, SUBTASKS, Scores, score_records, strict_accuracy

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
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([""] + list(COLUMNS))
    for name, row in scores.rows.items():
        w.writerow([name] + [fmt(row.get(c), c) for c in COLUMNS])
    return buf.getvalue()


def markdown_table(scores: Scores, columns=SUBTASKS + ("Average",)) -> str:
    head = "| dataset | " + " | ".join(SHORT.get(c, c) for c in columns) + " |"
    sep = "| --- |" + " ---: |" * len(columns)
    lines = [head, sep]
    for name, row in scores.rows.items():
        cells = [fmt(row.get(c), c) for c in columns]
        if name == "Average":
            name, cells = "**Average**", [f"**{c}**" if c else c for c in cells]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scores_json(scores: Scores) -> str:
    return json.dumps({"parser": scores.parser, "rows": scores.rows}, indent=2)


def report_markdown(run_dir: Path, records: list[dict], scores: Scores) -> str:
    meta = _run_meta(run_dir)
    out = [f"# MMAD run report: `{run_dir.name}`", ""]
    if meta:
        out += [f"- model: `{meta.get('model')}`", f"- setting: {meta.get('setting')}", f"- seed: {meta.get('seed')}", f"- answer parser: {meta.get('parser')}", ""]
    out += ["## Accuracy (%, MMAD's rule: unparsed answers dropped)", "", markdown_table(scores), ""]
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
    errs = [r for r in records if r.get("error")]
    if errs:
        out += [f"## Errors ({len(errs)} questions; rerun the same command to retry them)", ""]
        out += [f"- `{r['qid']}`: {r['error'][:200]}" for r in errs[:20]]
        out.append("")
    from . import trace_summary

    out += trace_summary.markdown(records)
    out += ["## Files", "", "- `scores.csv`, `scores.json`, `heatmap.png`, `radar.png`", ""]
    return "\n".join(out)


def _run_meta(run_dir: Path) -> dict:
    p = run_dir / "run.json"
    try:
        return json.loads(p.read_text()).get("identity", {}) if p.exists() else {}
    except json.JSONDecodeError:
        return {}


def run_label(run_dir: Path) -> str:
    meta = _run_meta(run_dir)
    return run_dir.name if not meta else f"{run_dir.name}"


def write_reports(run_dirs: list[Path], out_dir: Path | None = None) -> tuple[list[Scores], Path]:
    """Score each run, write its files into the run folder; the radar holds all runs."""
    all_scores = []
    for rd in run_dirs:
        records = run_records(rd)
        scores = score_records(records)
        all_scores.append(scores)
        (rd / "scores.csv").write_text(scores_csv(scores))
        (rd / "scores.json").write_text(scores_json(scores))
        heatmap(scores, rd / "heatmap.png", title=rd.name)
        (rd / "report.md").write_text(report_markdown(rd, records, scores))
    target = out_dir or run_dirs[0]
    radar([(run_label(rd), s) for rd, s in zip(run_dirs, all_scores)], target / "radar.png")
    return all_scores, target


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(scores: Scores, path: Path, title: str = "") -> None:
    import numpy as np

    plt = _plt()
    names = list(scores.rows)
    cols = list(SUBTASKS) + ["Average"]
    data = np.array([[scores.rows[n].get(c) if scores.rows[n].get(c) is not None else np.nan for c in cols] for n in names], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2, 0.6 * len(names) + 1.8))
    im = ax.imshow(data, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(cols)), [SHORT[c] for c in cols], rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(cols)):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", color="w" if data[i, j] < 60 else "k", fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy %")
    ax.set_title(title or "accuracy by dataset and subtask")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def radar(runs: list[tuple[str, Scores]], path: Path) -> None:
    import numpy as np

    plt = _plt()
    angles = np.linspace(0, 2 * np.pi, len(SUBTASKS), endpoint=False).tolist()
    fig = plt.figure(figsize=(6.5, 6.5))
    ax = fig.add_subplot(111, polar=True)
    for label, sc in runs:
        avg = sc.rows.get("Average", {})
        vals = [avg.get(s) if avg.get(s) is not None else 0.0 for s in SUBTASKS]
        ax.plot(angles + angles[:1], vals + vals[:1], label=label)
        ax.fill(angles + angles[:1], vals + vals[:1], alpha=0.1)
    ax.set_xticks(angles, [SHORT[s] for s in SUBTASKS])
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
