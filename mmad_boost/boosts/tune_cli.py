"""The `mmad-boost tune` subcommand (the work is in tune.py)."""

from __future__ import annotations

import shlex
import sys
from datetime import date
from pathlib import Path

from ..errors import MmadError


def register_cli(sub) -> None:
    from ..cli import add_model_arguments
    from ..protocol.settings import SETTING_HELP
    from .tune import RULES

    p = sub.add_parser("tune", help="choose per subtask which boosts to apply, on a dev part of the images; report on the rest")
    p.add_argument("--data", required=True, help="data root (images under MMAD's key layout)")
    p.add_argument("--questions", help="question file (default DATA/mmad.json)")
    add_model_arguments(p, "model SPEC, e.g. baseline:features, openai:gpt-4o, hf:/path, python:mod:attr")
    p.add_argument(
        "--dev-fraction",
        type=float,
        default=0.3,
        help="share of each (category, normal/defective) group's images used for choosing, between 0 and 1; the rest is the untouched test part (default 0.3)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the dev/test split of the images (default 0)")
    p.add_argument(
        "--shuffle-seed",
        type=int,
        default=0,
        help="seed of option shuffling, as eval's --seed; kept apart from the split's seed so that another split reuses every cached response (default 0)",
    )
    p.add_argument(
        "--rule",
        default=RULES[0],
        choices=RULES,
        help="how dev evidence becomes a routing (docs/routing.md): two-level (default): the boosts with the best dev Average "
        "over all subtasks, then per subtask a boost dropped only when its paired interval on that subtask is below zero "
        "and another added only when above zero; beyond-noise: a boost is kept for a subtask only when its interval is "
        "above zero; not-harmful: a boost is left out only when its interval is below zero",
    )
    p.add_argument("--setting", default="1-shot", help=f"images shown before the query: {SETTING_HELP} (default 1-shot)")
    p.add_argument("--no-rag", action="store_true", help="do not consider the knowledge boost (default: considered)")
    p.add_argument(
        "--kb",
        help="knowledge base for the knowledge boost: a folder from `mmad-boost kb build`, or a knowledge folder or .toml file (default: the shipped one)",
    )
    p.add_argument(
        "--retrieval",
        choices=["oracle", "image"],
        default=None,
        help="how the image's category is found: oracle (from the question file) or image (the query image searches the KB) (default auto: oracle when the category is known)",
    )
    p.add_argument(
        "--expert",
        default="patchcore",
        help="expert boost: patchcore, patchcore-fewshot, gt, anomalyclip, anomalib:<Model>, a fitted expert FOLDER, "
        "or none to consider knowledge only (default patchcore)",
    )
    p.add_argument(
        "--viz",
        default="bbox",
        choices=["bbox", "contour", "highlight", "mask", "heatmap"],
        help="how the expert's map is drawn: bbox, contour, highlight, mask or heatmap (default bbox)",
    )
    p.add_argument("--calibrated", action="store_true", help="calibrated expert: draws nothing on images it judges normal (default: faithful, as MMAD)")
    p.add_argument(
        "--evidence",
        choices=["picture", "text", "both"],
        default="picture",
        help="how the calibrated expert's verdict reaches the prompt: picture, text or both (default picture; text and both need --calibrated)",
    )
    p.add_argument("--workers", type=int, default=1, help="threads asking the model at once, for I/O-bound models (default 1)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the paired bootstrap intervals, between 0 and 1 (default 0.95)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates per interval (default 1000)")
    p.add_argument(
        "--work",
        help="folder for the candidates' run folders, the response cache and report.md / tune.json (default: OUT's name without .toml, plus _runs, next to OUT); rerunning resumes",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars or stage messages, also none from libraries (default: shown)")
    p.add_argument("--out", required=True, help="route file to write (TOML), for `mmad-boost eval --route OUT` with the same boost flags")
    p.set_defaults(func=cmd_tune)


def boost_options(args) -> tuple[dict, tuple[str, ...]]:
    expert = None if (args.expert or "").lower() in ("", "none") else args.expert
    if args.evidence != "picture" and not args.calibrated:
        raise MmadError(f"--evidence {args.evidence} needs --calibrated (faithful mode is MMAD's picture, with no threshold)")
    options: dict = {}
    boosts: list[str] = []
    if not args.no_rag:
        options.update(rag=True, kb=args.kb, retrieval=args.retrieval)
        boosts.append("knowledge")
    elif args.kb or args.retrieval:
        raise MmadError("--kb / --retrieval configure the knowledge boost; leave out --no-rag to use them")
    if expert:
        options.update(expert=expert, viz=args.viz, calibrated=args.calibrated, evidence=args.evidence)
        boosts.append("expert")
    return options, tuple(boosts)


def eval_flags(args) -> str:
    """The eval flags that give the boosts the route was tuned with."""
    flags = []
    if not args.no_rag:
        flags.append("--rag")
        if args.kb:
            flags += ["--kb", args.kb]
        if args.retrieval:
            flags += ["--retrieval", args.retrieval]
    if (args.expert or "").lower() not in ("", "none"):
        flags += ["--expert", args.expert, "--viz", args.viz] + (["--calibrated"] if args.calibrated else [])
        if args.evidence != "picture":
            flags += ["--evidence", args.evidence]
    return " ".join(shlex.quote(f) for f in flags)


def cmd_tune(args) -> int:
    from ..cli import _model_options
    from ..protocol.data import Benchmark
    from ..models import create_model
    from .tune import report_markdown, tune, write_route

    if not 0 < args.confidence < 1:
        raise MmadError(f"--confidence {args.confidence}: give a value between 0 and 1, e.g. 0.95")
    if args.workers < 1:
        raise MmadError(f"--workers {args.workers}: give at least 1")
    if args.n_boot < 100:
        raise MmadError(f"--n-boot {args.n_boot}: give at least 100 replicates")
    out = Path(args.out)
    if out.is_dir():
        raise MmadError(f"--out {out} is a folder; give the route file to write, e.g. {out / 'route.toml'}")
    work = Path(args.work) if args.work else out.with_name(out.stem + "_runs")
    options, boosts = boost_options(args)
    bench = Benchmark(args.data, args.questions)
    opts = _model_options(args)
    if args.model == "baseline:features":
        opts.setdefault("cache_size", "512")  # every candidate asks about the same images: keep their features
    base = create_model(args.model, **opts)
    try:
        result = tune(
            bench,
            base,
            work,
            boost_options=options,
            boosts=boosts,
            dev_fraction=args.dev_fraction,
            seed=args.seed,
            shuffle_seed=args.shuffle_seed,
            rule=args.rule,
            workers=args.workers,
            setting=args.setting,
            n_boot=args.n_boot,
            confidence=args.confidence,
            progress=not args.no_progress,
            model_spec=args.model,
            log=lambda m: print(m, file=sys.stderr),
        )
    finally:
        close = getattr(base, "close", None)
        if callable(close):
            close()
    flags = eval_flags(args)
    header = [
        f"Routing tuned by `mmad-boost tune` on {date.today().isoformat()}: model {args.model}, data {args.data}, "
        f"dev fraction {args.dev_fraction}, split seed {args.seed}, rule {args.rule}, setting {args.setting}.",
        f"Use it with the same boosts: mmad-boost eval --data DATA --model {args.model} {flags} --route {out} --seed {args.shuffle_seed} --out RUN",
        "Evidence (dev part only) is in [tuning]; the test part's report is in " + str(work / "report.md"),
    ]
    write_route(out, result, header)
    md = report_markdown(result)
    from ..atomic import write_json, write_text

    write_text(work / "report.md", md)
    rep = result["report"]
    write_json(
        work / "tune.json",
        {
            "rule": args.rule,
            "seed": args.seed,
            "dev_fraction": args.dev_fraction,
            "route": result["route"].to_dict(),
            "evidence": result["evidence"],
            "dev_images": result["dev_images"],
            "test_images": result["test_images"],
            "test": {n: {c: {"score": v[0], "interval": v[1]} for c, v in row.items()} for n, row in rep["rows"].items()},
            "deltas": rep["deltas"],
            "better": rep["better"],
            "tuned_at_least_better": rep["tuned_at_least_better"],
            "model_calls": result["model_calls"],
            "cache_hits": result["cache_hits"],
            "runs": result["runs"],
        },
        indent=1,
    )
    print(md)
    print(f"wrote {out} (use with: mmad-boost eval ... {flags} --route {out}); runs, report.md and tune.json in {work}", file=sys.stderr)
    return 0
