"""`mmad-boost demo`: the whole pipeline offline on the bundled VisA sample, in a few minutes.

Builds the MMAD-format benchmark from mmad_boost/sample/visa at run time, runs the offline
baseline plain and with each available boost, and prints the comparison table. The runs are a
list of `DemoRun`s; add one with `DEMO_RUNS.append(DemoRun(name, factory))`, where
`factory(base_model, out_dir)` returns the model to evaluate (out_dir: the demo's output folder,
for caches shared between runs).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import MmadError

QUICK_QUESTIONS = 48  # --quick: a seeded subset of the questions, plain and first boost only


@dataclass
class DemoRun:
    name: str  # also the run folder name under OUT/runs/
    factory: Callable[[Any, Path], Any]  # (base model, demo out folder) -> model to evaluate
    quick: bool = False  # part of `demo --quick`


def _boosted(**kw) -> Callable[[Any, Path], Any]:
    def make(base, out: Path):
        from .boosts.boosted import BoostedModel

        options = dict(kw)
        if options.get("calibrated"):  # both calibrated PatchCore runs share one fit per category
            options.setdefault("cache_dir", out / "expert_cache" / "calibrated")
        return BoostedModel(base, **options)

    return make


DEMO_RUNS: list[DemoRun] = [
    DemoRun("plain", lambda base, out: base, quick=True),
    DemoRun("rag-image", _boosted(rag=True, retrieval="image"), quick=True),
    DemoRun("patchcore-calibrated", _boosted(expert="patchcore", calibrated=True)),
    DemoRun("rag-image+patchcore-calibrated", _boosted(rag=True, retrieval="image", expert="patchcore", calibrated=True)),
    DemoRun("gt-expert", _boosted(expert="gt")),
]


def base_model_spec() -> tuple[str, str | None]:
    """The offline baseline to use, and a note when falling back."""
    try:
        import mmad_boost.models.feature_baseline  # noqa: F401
    except ModuleNotFoundError as e:
        return "baseline:random", f"baseline:features is not available ({e}); using baseline:random instead"
    return "baseline:features", None


def build_sample_bench(out: Path, *, seed: int = 0):
    from .building.builder import build_benchmark
    from .resources import sample_root

    return build_benchmark(sample_root(), out, layout="visa", seed=seed)


def run_demo(
    out: str | Path = "demo_out", *, quick: bool = False, runs: list[DemoRun] | None = None, base_spec: str | None = None, progress: bool = True, log=print
) -> dict:
    """base_spec: the base model SPEC (default: baseline:features when available). Returns {"bench": Path, "runs": {name: run_dir}, "skipped": {name: reason}, "table": markdown}."""
    from .protocol.data import Benchmark
    from .models import create_model
    from .running.runner import Runner

    out = Path(out)
    t0 = time.perf_counter()
    summary = build_sample_bench(out / "bench")
    log(summary.line())
    bench = Benchmark(out / "bench")
    items = bench.select(subset=QUICK_QUESTIONS if quick else None, seed=0)
    spec, note = (base_spec, None) if base_spec else base_model_spec()
    if note:
        log(f"note: {note}")
    selected = [r for r in (runs if runs is not None else DEMO_RUNS) if r.quick or not quick]
    # One base model for all runs: its weights load once and its per-image feature cache is
    # shared (the runs ask about the same images); it is closed at the end, not by each run.
    base = create_model(spec, **({"cache_size": 512} if spec == "baseline:features" else {}))
    done, skipped = {}, {}
    try:
        for run in selected:
            t1 = time.perf_counter()
            try:
                model = run.factory(base, out)
            except (MmadError, ImportError) as e:  # a boost not built or not usable here: say so, go on
                skipped[run.name] = str(e)
                log(f"skipped {run.name}: {e}")
                continue
            s = Runner(bench, model, out / "runs" / run.name, seed=0, progress=progress, model_spec=f"{spec} ({run.name})").run(items)
            if s.interrupted:
                raise KeyboardInterrupt
            done[run.name] = out / "runs" / run.name
            log(f"{run.name}: {s.asked} asked, {s.skipped} already recorded, {s.errors} errors ({time.perf_counter() - t1:.0f} s)")
    finally:
        close = getattr(base, "close", None)
        if callable(close):
            close()
    if not done:
        raise MmadError("demo: no run could be made; see the messages above")
    table = _report(out, done, log)
    log(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return {"bench": out / "bench", "runs": done, "skipped": skipped, "table": table}


def _report(out: Path, done: dict[str, Path], log) -> str:
    from .reporting.reports import write_reports

    dirs = list(done.values())
    write_reports(dirs, out_dir=out)
    try:
        from .reporting.compare import compare_runs
    except ModuleNotFoundError:
        from .reporting.reports import markdown_table
        from .running.records import run_records
        from .protocol.scoring import score_records

        table = "\n\n".join(f"{n}\n\n{markdown_table(score_records(run_records(d)))}" for n, d in done.items())
        plot = None
    else:
        comparison = compare_runs(dirs, labels=list(done))
        table = "Average row, accuracy %; deltas against plain\n\n" + comparison.markdown()
        plot = out / "comparison.png"
        comparison.plot(plot)
    from .atomic import write_text

    write_text(out / "comparison.md", table + "\n")
    log("\n" + table + "\n")
    log(f"benchmark: {out / 'bench' / 'mmad.json'}")
    log(f"per-run report and heatmap: {out / 'runs'}/<run>/report.md, heatmap.png")
    log(f"comparison: {out / 'comparison.md'}" + (f", {plot}" if plot else "") + f"; radar: {out / 'radar.png'}")
    from .reporting.html_report import write_html_report
    from .running.progress import enabled

    log(f"browsable report of every answer: {write_html_report(dirs, out, progress=enabled())} (open it in a browser)")
    return table


def register_cli(sub) -> None:
    p = sub.add_parser("demo", help="offline demo on the bundled VisA sample: build, evaluate plain and boosted, compare")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out, in the working directory; rerunning resumes)")
    p.add_argument("--quick", action="store_true", help=f"only {QUICK_QUESTIONS} questions, plain and with RAG")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or stage messages, also none from libraries (default: shown)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    result = run_demo(
        args.out, quick=args.quick, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr if m.startswith(("note", "skipped")) else sys.stdout)
    )
    if result["skipped"]:  # a promised row is missing from the table: not a success
        missing = "; ".join(f"{name}: {reason}" for name, reason in result["skipped"].items())
        print(f"error: demo: {len(result['skipped'])} of its rows could not run ({missing}); the other rows are in {args.out}", file=sys.stderr)
        return 2
    return 0
