"""`mmad-boost report RUN_DIR... --html`: one self-contained page to browse every answer.

The page holds the score tables and plots, then one row per question (query image, templates,
expert picture, options as shown, answers, raw responses, trace) with filters, search and paging in
plain JavaScript. Several runs are aligned by question id; the first run is the reference for
"fixed" and "broke". Images become small JPEG thumbnails in `report_files/` (made once per image
and reused), or data URLs with `embed_images`. The data sits in the page as JSON and only one page
of rows is drawn at a time, so a 40k-question run opens in seconds.

The page's data (runs, question rows) is gathered in html_rows.py, its pictures made in
html_images.py; this module writes the page around them.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import sys
from pathlib import Path

from ..errors import MmadError
from ..resources import html_assets
from .html_images import FILES_DIR, Images
from .html_rows import Run, load_run, question_rows, unique_names

__all__ = ["FILES_DIR", "write_html_report", "cmd_report", "register_cli"]
PAGE_SIZE = 50


# -- the static top of the page -----------------------------------------------
def _ci(intervals, row: str, col: str, delta: bool = False) -> str:
    """The 95 % interval under a value (or a delta's paired interval, `*` when it excludes zero)."""
    b = intervals.get(row, col) if intervals is not None else None
    if b is None:
        return ""
    if delta:
        star = "*" if (b[0] > 0 or b[1] < 0) else ""
        tip = "paired 95 % interval of the delta" + (": excludes zero" if star else ": spans zero (within noise)")
        return f'<br><span class="ci" title="{tip}">[{b[0]:+.1f}, {b[1]:+.1f}]{star}</span>'
    return f'<br><span class="ci" title="95 % bootstrap interval over images">[{b[0]:.1f}, {b[1]:.1f}]</span>'


def _robust_tables(run, cols, labels) -> str:
    """The --circular / --judge figures of a run, beside MMAD's table (never mixed into it)."""
    from .reports import robust_scores

    what = {
        "circular": "CircularEval: right only if every rotation of the options is right (not MMAD's figure)",
        "with judge": "with the judge's letters for unparsed answers (not MMAD's rule)",
    }
    return "".join(
        f'<p class="meta">{html.escape(what[name])}</p><div class="tablewrap">{_scores_table(sc.rows, cols, labels, sc.intervals)}</div>'
        for name, sc in robust_scores(run.records).items()
    )


def _scores_table(rows: dict, columns, labels, intervals=None) -> str:
    from .reports import fmt

    head = "".join(f"<th>{html.escape(labels.get(c, c))}</th>" for c in columns)
    body = []
    for name, row in rows.items():
        cls = ' class="avg"' if name == "Average" else ""
        cells = "".join(f"<td>{fmt(row.get(c), c)}{_ci(intervals, name, c)}</td>" for c in columns)
        body.append(f"<tr{cls}><td>{html.escape(name)}</td>{cells}</tr>")
    return f'<table class="scores"><tr><th>dataset</th>{head}</tr>{"".join(body)}</table>'


def _summary_table(runs: list[Run], questions: list[dict]) -> str:
    from .reports import SHORT, fmt
    from ..protocol.scoring import SUBTASKS

    cols = ("Average",) + SUBTASKS  # Avg first: the one number per run is never off screen
    head = "".join(f"<th>{SHORT[c]}</th>" for c in cols)
    extra = "<th>parse failures</th><th>errors</th><th>questions</th>"
    if len(runs) > 1:
        extra += "<th>fixed vs run 1</th><th>broke vs run 1</th>"
    from .uncertainty import paired_delta_intervals

    base = runs[0].scores.rows.get("Average", {})
    body = []
    for i, run in enumerate(runs):
        avg = run.scores.rows.get("Average", {})
        paired = paired_delta_intervals(runs[0].records, run.records) if i else None
        cells = []
        for c in cols:
            v, b = avg.get(c), base.get(c)
            delta = ""
            if i > 0 and v is not None and b is not None and abs(v - b) >= 0.005:
                delta = f' <span class="{"up" if v > b else "down"}">({v - b:+.2f})</span>'
            ci = _ci(paired, "Average", c, delta=True) if i else _ci(run.scores.intervals, "Average", c)
            shown = fmt(v) if v is not None else '<span class="na" title="no questions of this subtask">n/a</span>'
            cells.append(f"<td>{shown}{delta}{ci}</td>")
        cells += [f"<td>{fmt(avg.get(c), c)}</td>" for c in ("Parse Failures", "Errors", "Questions")]
        if len(runs) > 1:
            fixed = sum(q["ch"][i] == "fixed" for q in questions) if i else 0
            broke = sum(q["ch"][i] == "broke" for q in questions) if i else 0
            cells += [f'<td class="up">{fixed if i else ""}</td>', f'<td class="down">{broke if i else ""}</td>']
        model, setting = run.identity.get("model"), run.identity.get("setting")
        label = html.escape(f"{i + 1}: {run.name}")
        if model:
            label += f' <span class="meta">({html.escape(f"{model}, {setting}")})</span>'
        body.append(f"<tr><td>{label}</td>{''.join(cells)}</tr>")
    return f'<div class="tablewrap"><table class="scores summary"><tr><th>run</th>{head}{extra}</tr>{"".join(body)}</table></div>'


def _img(src: str | None, alt: str) -> str:
    return "" if not src else f'<img src="{src}" alt="{html.escape(alt)}" title="{html.escape(alt)}">'


def _link_img(src: str | None, alt: str, cls: str, caption: str | None = None) -> str:
    if not src:
        return ""
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure class="{cls}"><a href="{src}" target="_blank" rel="noopener">{_img(src, alt)}</a>{cap}</figure>'


def _header(runs: list[Run], questions: list[dict], heatmaps: list[str | None], radar: str | None) -> str:
    from .reports import SHORT
    from ..protocol.scoring import SUBTASKS

    parts = ['<section id="scores">']
    parsers = sorted({str(r.scores.parser) for r in runs if r.scores.parser})
    parts.append(
        '<p class="meta">Accuracy in %, MMAD\'s rule: unparsed answers are dropped from the accuracy and counted as parse failures'
        + (f"; answer parser: {html.escape(', '.join(parsers))}" if parsers else "")
        + ". Averages over datasets. Under each value: its 95 % bootstrap interval over images (stratified by dataset); "
        "under a later run's value: the paired interval of its delta against run 1, * where it excludes zero.</p>"
    )
    parts.append(_summary_table(runs, questions))
    # the plots open at the top (radar of all runs, each run's heatmap; click for full size), the per-dataset tables below
    parts.append('<div class="plots top-plots">' + _link_img(radar, "radar: all runs", "radar"))
    parts.append('<div class="heats">')
    parts += [_link_img(h, f"heatmap of run {i + 1}: {run.name}", "heat", f"{i + 1}: {run.name}") for i, (h, run) in enumerate(zip(heatmaps, runs))]
    parts.append('</div></div><div class="runs">')
    cols = SUBTASKS + ("Average", "Overkill", "Miss", "F1", "Parse Failures", "Errors", "Questions")
    labels = dict(SHORT, **{"Parse Failures": "parse failures", "Errors": "errors", "Questions": "questions"})
    for i, run in enumerate(runs):
        meta = ", ".join(f"{k}: {html.escape(str(run.identity[k]))}" for k in ("model", "setting", "seed", "parser") if k in run.identity)
        parts.append(
            f"<details{' open' if len(runs) == 1 else ''}><summary>Run {i + 1}: {html.escape(run.name)}, per dataset "
            f'<span class="meta">{meta}</span></summary><div class="tablewrap">{_scores_table(run.scores.rows, cols, labels, run.scores.intervals)}</div>'
            + _robust_tables(run, cols[:8], labels)
            + "</details>"
        )
    parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _plots(runs: list[Run], out: Path, embed: bool) -> tuple[list[str | None], str | None]:
    """URLs of each run's heatmap (made with reports.write_reports when missing or stale) and of a radar of these runs."""
    from .reports import radar, write_reports

    for run in runs:
        heat = run.dir / "heatmap.png"
        newest = max((f.stat().st_mtime for f in run.dir.glob("records*.jsonl")), default=0)
        if not heat.exists() or heat.stat().st_mtime < newest:
            write_reports([run.dir])
    files = out / FILES_DIR
    radar([(r.name, r.scores) for r in runs], files / "radar.png")  # drawn here: it must hold exactly these runs

    def url(src: Path, name: str) -> str | None:
        if not src.exists():
            return None
        if embed:
            return f"data:image/png;base64,{base64.b64encode(src.read_bytes()).decode('ascii')}"
        if src != files / name:
            shutil.copyfile(src, files / name)
        return f"{FILES_DIR}/{name}"

    return [url(r.dir / "heatmap.png", f"heatmap-{i + 1}.png") for i, r in enumerate(runs)], url(files / "radar.png", "radar.png")


def _fill(template: str, values: dict[str, str]) -> str:
    # one pass, so text inside the values is never taken for a placeholder
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)


def _json_for_script(data) -> str:
    # inside <script> only "</script" and "<!--" matter; escaping every "<" rules both out
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def write_html_report(
    run_dirs,
    out: str | Path | None = None,
    *,
    embed_images: bool = False,
    data_root: str | Path | None = None,
    thumb_px: int = 160,
    workers: int = 2,
    progress: bool = False,
    title: str | None = None,
) -> Path:
    """Write `report.html` (+ `report_files/`) for one or more run folders; returns the page's path.

    `data_root` overrides the data root recorded in each run.json (needed when the data moved or
    the run was written before run.json recorded it). The first run is the reference for comparisons.
    """
    if not run_dirs:
        raise MmadError("report: give at least one run folder")
    root = Path(data_root) if data_root else None
    if root is not None and not root.is_dir():
        raise MmadError(f"--data {root}: not a folder; pass the data root the runs were evaluated on")
    runs = [load_run(Path(d), root) for d in run_dirs]
    unique_names(runs)
    out_dir = Path(out) if out else runs[0].dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FILES_DIR).mkdir(exist_ok=True)
    images = Images(out_dir, thumb_px, embed_images)
    questions = question_rows(runs, images)
    heatmaps, radar = _plots(runs, out_dir, embed_images)
    table = images.table(workers, progress)
    if images.missing:
        roots = sorted({str(r.data_root) for r in runs if r.data_root}) or ["(unknown: run.json has no data_root)"]
        print(
            f"warning: {len(images.missing)} picture references not found (first: {images.missing[0]}) under data root {', '.join(roots)}; "
            "pass --data ROOT to show them",
            file=sys.stderr,
        )
    names = ", ".join(r.name for r in runs)
    data = {"runs": [{"name": r.name, "model": r.identity.get("model")} for r in runs], "images": table, "questions": questions, "page_size": PAGE_SIZE}
    page = _fill(
        (html_assets() / "report.html").read_text(encoding="utf-8"),
        {
            "TITLE": html.escape(title or f"MMAD run report: {names}"),
            "CSS": (html_assets() / "report.css").read_text(encoding="utf-8"),
            "HEADER": _header(runs, questions, heatmaps, radar),
            "DATA": _json_for_script(data),
            "JS": (html_assets() / "report.js").read_text(encoding="utf-8"),
        },
    )
    target = out_dir / "report.html"
    from ..atomic import write_text

    write_text(target, page)
    return target


# -- CLI ------------------------------------------------------------------------
def cmd_report(args) -> int:
    dirs = [Path(d) for d in args.run_dirs]
    if not args.html:
        from ..cli import _print_scores

        for d in dirs:
            if not d.is_dir():
                raise MmadError(f"run folder {d} not found; pass the --out folder of `mmad-boost eval`")
        _print_scores(dirs, "md")
        print("add --html for the browsable page (report.html)", file=sys.stderr)
        return 0
    if args.thumb_px < 32:
        raise MmadError(f"--thumb-px {args.thumb_px}: use at least 32")
    path = write_html_report(dirs, args.out, embed_images=args.embed_images, data_root=args.data, thumb_px=args.thumb_px, progress=not args.no_progress)
    print(f"wrote {path} (open it in a browser; no server needed)", file=sys.stderr)
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("report", help="score run folders; with --html write a browsable report.html of every answer")
    p.add_argument("run_dirs", nargs="+", help="run folders; the first is the reference for fixed/broke")
    p.add_argument("--html", action="store_true", help="write report.html (default into the first run folder)")
    p.add_argument("--out", help="folder for report.html and report_files/ (default: the first run folder)")
    p.add_argument("--embed-images", action="store_true", help="put the thumbnails into the page as data URLs (one file to share)")
    p.add_argument("--data", help="data root holding the images (default: the one recorded in each run.json)")
    p.add_argument("--thumb-px", type=int, default=160, help="longer side of the thumbnails in pixels (default 160)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or messages while making thumbnails (default: shown)")
    p.set_defaults(func=cmd_report)
