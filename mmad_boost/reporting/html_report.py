"""`mmad-boost report RUN_DIR... --html`: one self-contained page to browse every answer.

The page holds the score tables and plots, then one row per question (query image, templates,
expert picture, options as shown, answers, raw responses, trace) with filters, search and paging in
plain JavaScript. Several runs are aligned by question id; the first run is the reference for
"fixed" and "broke". Images become small JPEG thumbnails in `report_files/` (made once per image
and reused), or data URLs with `embed_images`. The data sits in the page as JSON and only one page
of rows is drawn at a time, so a 40k-question run opens in seconds.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..errors import MmadError
from ..resources import html_assets

FILES_DIR = "report_files"
PAGE_SIZE = 50
MAX_RESPONSE_CHARS = 20000  # a runaway generation must not bloat the page
_LETTERS = set("ABCDE")


# -- runs ---------------------------------------------------------------------
@dataclass
class _Run:
    dir: Path
    name: str
    identity: dict
    data_root: Path | None
    records: list[dict]
    scores: object = None


def _load_run(run_dir: Path, data_root: Path | None) -> _Run:
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
    return _Run(run_dir, run_dir.name, meta.get("identity", {}), root, records, scores)


def _unique_names(runs: list[_Run]) -> None:
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.dir.parent.name}/{r.dir.name}"


# -- images -------------------------------------------------------------------
class _Images:
    """Every picture the page shows, deduplicated by file; each becomes one thumbnail."""

    def __init__(self, out: Path, thumb_px: int, embed: bool):
        self.out, self.thumb_px, self.embed = out, thumb_px, embed
        self.files_dir = out / FILES_DIR
        self.index: dict[str, int] = {}
        self.sources: list[tuple[Path, str, int]] = []
        self.missing: list[str] = []

    def add(self, path: str | Path | None, label: str, *, sharp: bool = False) -> int | None:
        """`sharp`: a twice larger thumbnail (shown at the same size), so thin expert marks survive."""
        if path is None:
            self.missing.append(label)
            return None
        file = os.path.abspath(path)  # no symlink resolution: one stat per picture, not per question
        px = self.thumb_px * (2 if sharp else 1)
        key = f"{px}|{file}"
        if key not in self.index:
            if not os.path.isfile(file):
                self.missing.append(label)
                return None
            self.index[key] = len(self.sources)
            self.sources.append((Path(file), label, px))
        return self.index[key]

    @staticmethod
    def _thumb_name(src: Path, px: int) -> str:
        st = src.stat()
        h = hashlib.sha1(f"{src}|{st.st_size}|{st.st_mtime_ns}|{px}".encode()).hexdigest()[:20]
        return f"{h}.jpg"

    @staticmethod
    def _make_thumb(src: Path, dst: Path, px: int) -> bool:
        from PIL import Image

        if dst.exists():
            return True  # made by an earlier report of the same image (name hashes size and mtime)
        try:
            with Image.open(src) as im:
                im.draft("RGB", (px, px))  # JPEG: decode at reduced size, much faster
                im = im.convert("RGB")
                im.thumbnail((px, px))
                from ..atomic import save_image

                save_image(im, dst, format="JPEG", quality=82)
            return True
        except Exception as e:  # an unreadable picture must not stop the report
            print(f"warning: {src}: cannot make a thumbnail ({type(e).__name__}: {e})", file=sys.stderr)
            return False

    def table(self, workers: int, progress: bool) -> list:
        """[thumbnail URL, original URL or None, label] per image (None where unreadable)."""
        from concurrent.futures import ThreadPoolExecutor

        self.files_dir.mkdir(parents=True, exist_ok=True)
        names = [self._thumb_name(src, px) for src, _, px in self.sources]
        todo = [i for i, n in enumerate(names) if not (self.files_dir / n).exists()]
        ok = [True] * len(names)
        from ..running.progress import bar as progress_bar, say

        if progress and todo:
            say(f"report: making {len(todo)} thumbnails ({len(names) - len(todo)} reused from earlier reports)")
        bar = progress_bar(len(todo), "thumbnails", "img", enabled_here=progress and len(todo) > 20)  # rate and time left
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for i, good in zip(todo, pool.map(lambda i: self._make_thumb(self.sources[i][0], self.files_dir / names[i], self.sources[i][2]), todo)):
                ok[i] = good
                bar.update(1)
        bar.close()
        out = []
        for (src, label, _), name, good in zip(self.sources, names, ok):
            if not good:
                out.append(None)
            elif self.embed:
                data = base64.b64encode((self.files_dir / name).read_bytes()).decode("ascii")
                out.append([f"data:image/jpeg;base64,{data}", None, label])
            else:
                out.append([f"{FILES_DIR}/{name}", _rel_url(src, self.out), label])
        return out


def _rel_url(path: Path, base: Path) -> str:
    try:
        rel = os.path.relpath(path, base.resolve())
    except ValueError:  # another drive on Windows
        return path.resolve().as_uri()
    return quote(rel.replace(os.sep, "/"))


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
def _status(r: dict) -> str:
    if r.get("error"):
        return "e"
    gold, given = r.get("correct_answer"), r.get("gpt_answer")
    if given not in _LETTERS or gold not in _LETTERS:
        return "p"
    return "c" if given == gold else "w"


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


def _trace(trace: dict | None) -> dict | None:
    if not trace:
        return None
    out: dict = {}
    if isinstance(trace.get("retrieval"), dict):
        out["retrieval"] = trace["retrieval"]
    if isinstance(trace.get("expert"), dict):
        out["expert"] = {k: v for k, v in trace["expert"].items() if k != "picture"}
    if isinstance(trace.get("timings"), dict):
        out["timings"] = {k: v for k, v in trace["timings"].items() if isinstance(v, (int, float))}
    other = {k: _short(v) for k, v in trace.items() if k not in ("retrieval", "expert", "timings", "templates", "defect_examples")}
    if other:
        out["other"] = other
    return out or None


def _question_order(q: dict):
    # by image, then by the question's index (qid = "<image>#<index>"), so a page reads image by image
    tail = q["id"].rpartition("#")[2]
    return (q["key"], int(tail) if tail.isdigit() else 0, q["id"])


def _questions(runs: list[_Run], images: _Images) -> list[dict]:
    by_id: dict[str, dict] = {}
    for ri, run in enumerate(runs):
        for r in run.records:
            key = r["image"]
            qid = r.get("qid") or f"{key}#{r.get('question')}"
            trace = r.get("trace") or {}
            tkeys = list(trace.get("templates") or [])
            q = by_id.get(qid)
            tmpl = [images.add(_template_path(run.data_root, key, k), k) for k in tkeys]
            if q is None:
                parts = key.split("/")
                q = by_id[qid] = {
                    "id": qid,
                    "key": key,
                    "ds": parts[0],
                    "cat": parts[1] if len(parts) > 1 else "",
                    "normal": "good" in key,
                    "type": r.get("question_type", ""),
                    "q": r.get("question", ""),
                    "o": r.get("options") or {},
                    "g": r.get("correct_answer"),
                    "img": images.add(_image_path(run.data_root, key), key),
                    "tp": tmpl,
                    "dx": [images.add(_image_path(run.data_root, k), k) for k in trace.get("defect_examples") or []],
                    "a": [None] * len(runs),
                }
            elif q["img"] is None and run.data_root is not None:
                q["img"] = images.add(_image_path(run.data_root, key), key)
            resp = r.get("response")
            ans: dict = {"a": r.get("gpt_answer"), "s": _status(r)}
            if resp is not None:
                ans["r"] = resp if len(resp) <= MAX_RESPONSE_CHARS else resp[:MAX_RESPONSE_CHARS] + "…"
            if r.get("error"):
                ans["e"] = r["error"]
            if isinstance(r.get("latency_s"), (int, float)):
                ans["l"] = r["latency_s"]
            t = _trace(trace)
            if t:
                ans["t"] = t
            picture = (trace.get("expert") or {}).get("picture") if isinstance(trace.get("expert"), dict) else None
            if picture:
                ans["x"] = images.add(_picture_path(run.dir, picture), f"{run.name}: {picture}", sharp=True)
            if tmpl != q["tp"]:
                ans["tp"] = tmpl
            if (r.get("options") or {}) != q["o"] or r.get("correct_answer") != q["g"]:
                ans["o"], ans["g"] = r.get("options") or {}, r.get("correct_answer")
            q["a"][ri] = ans
    questions = sorted(by_id.values(), key=_question_order)
    for q in questions:
        q["ch"] = [None] + [_change(q["a"][0], a) for a in q["a"][1:]]
    return questions


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

    what = {"circular": "CircularEval: right only if every rotation of the options is right (not MMAD's figure)",
            "with judge": "with the judge's letters for unparsed answers (not MMAD's rule)"}
    return "".join(f'<p class="meta">{html.escape(what[name])}</p><div class="tablewrap">{_scores_table(sc.rows, cols, labels, sc.intervals)}</div>'
                   for name, sc in robust_scores(run.records).items())


def _scores_table(rows: dict, columns, labels, intervals=None) -> str:
    from .reports import fmt

    head = "".join(f"<th>{html.escape(labels.get(c, c))}</th>" for c in columns)
    body = []
    for name, row in rows.items():
        cls = ' class="avg"' if name == "Average" else ""
        cells = "".join(f"<td>{fmt(row.get(c), c)}{_ci(intervals, name, c)}</td>" for c in columns)
        body.append(f"<tr{cls}><td>{html.escape(name)}</td>{cells}</tr>")
    return f'<table class="scores"><tr><th>dataset</th>{head}</tr>{"".join(body)}</table>'


def _summary_table(runs: list[_Run], questions: list[dict]) -> str:
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


def _header(runs: list[_Run], questions: list[dict], heatmaps: list[str | None], radar: str | None) -> str:
    from .reports import SHORT
    from ..protocol.scoring import SUBTASKS

    parts = ["<section id=\"scores\">"]
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
            + _robust_tables(run, cols[:8], labels) + "</details>"
        )
    parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _plots(runs: list[_Run], out: Path, embed: bool) -> tuple[list[str | None], str | None]:
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
    runs = [_load_run(Path(d), root) for d in run_dirs]
    _unique_names(runs)
    out_dir = Path(out) if out else runs[0].dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FILES_DIR).mkdir(exist_ok=True)
    images = _Images(out_dir, thumb_px, embed_images)
    questions = _questions(runs, images)
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
