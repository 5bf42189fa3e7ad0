"""`mmad-boost` command line. Subcommands of other modules register through `register_cli(sub)`."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from .errors import MmadError

# Modules that add subcommands; each defines register_cli(subparsers). Keep their top-level imports light.
COMMAND_MODULES = (
    "mmad_boost.builder",
    "mmad_boost.demo",
    "mmad_boost.retrieval.cli",
    "mmad_boost.experts.cli",
    "mmad_boost.compare",
    "mmad_boost.html_report",
)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="ask a model every selected question and record the answers")
    p.add_argument("--data", required=True, help="data root (images under MMAD's key layout)")
    p.add_argument("--questions", help="question file (default DATA/mmad.json)")
    p.add_argument("--model", required=True, help="model SPEC, e.g. baseline:random, openai:gpt-4o, hf:/path, python:mod:attr")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE", help="option for the model factory (repeatable)")
    p.add_argument("--base-url", help="openai: chat-completions endpoint base URL")
    p.add_argument("--api-key-env", help="openai: name of the environment variable holding the key (default OPENAI_API_KEY)")
    p.add_argument("--setting", default="1-shot", help="0-shot | 1-shot | 1-shot+ | k-shot:K | in-context:N")
    p.add_argument("--workers", type=int, default=1, help="threads asking the model at once (for I/O-bound models)")
    p.add_argument("--limit", type=int, help="ask only the first N selected questions")
    p.add_argument("--subset", type=int, help="ask a random subset of N questions (seeded by --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed for option shuffling and subsets (default 0)")
    p.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    p.add_argument("--category", action="append", help="only this category, NAME or DATASET/NAME (repeatable)")
    p.add_argument("--type", action="append", dest="types", help="only this question type (repeatable)")
    p.add_argument("--parser", default="strict", choices=["strict", "mmad"], help="answer extraction: strict (default) or mmad (faithful)")
    p.add_argument("--no-shuffle", action="store_true", help="keep the options in the file's order")
    p.add_argument("--shard", help="I/N: run only shard I of N (by image); `score` merges shards")
    p.add_argument("--backend", default="local", choices=["local", "ray"], help="local threads (default) or a Ray cluster")
    p.add_argument("--address", help="ray: cluster address (default: start a local Ray)")
    p.add_argument("--force-mix", action="store_true", help="add answers to a run folder written by another configuration")
    p.add_argument("--allow-outside-paths", action="store_true", help="let question-file paths leave the data root")
    p.add_argument("--durable", action="store_true", help="fsync each record (survives power loss, slower)")
    p.add_argument("--no-progress", action="store_true")
    # boosts (BoostedModel)
    p.add_argument("--rag", action="store_true", help="put domain knowledge into the prompt")
    p.add_argument("--knowledge", help="knowledge base folder or file (default: the shipped one)")
    p.add_argument("--mmad-knowledge", help="MMAD's domain_knowledge.json to use as the knowledge base")
    p.add_argument("--retrieval", choices=["oracle", "image"], default=None, help="how the category is found (default oracle)")
    p.add_argument("--expert", help="expert agent: patchcore, gt, anomalyclip, anomalib:<Model>, or a fitted expert folder")
    p.add_argument("--viz", default="bbox", choices=["bbox", "contour", "highlight", "mask", "heatmap"], help="how the expert's map is drawn")
    p.add_argument("--calibrated", action="store_true", help="calibrated expert: draw only what it believes, nothing on images judged normal")
    p.add_argument("--out", required=True, help="run folder (resumed when it exists)")
    p.set_defaults(func=cmd_eval)


def _model_options(args) -> dict:
    opts = {}
    for kv in args.model_option:
        k, sep, v = kv.partition("=")
        if not sep:
            raise MmadError(f"--model-option {kv!r}: use KEY=VALUE")
        opts[k] = v
    if args.base_url:
        opts["base_url"] = args.base_url
    if args.api_key_env:
        opts["api_key_env"] = args.api_key_env
    return opts


def build_model(args):
    from .models import create_model

    model = create_model(args.model, **_model_options(args))
    if args.rag or args.expert or args.knowledge or args.mmad_knowledge or args.retrieval or args.calibrated:
        from .boosted import BoostedModel

        model = BoostedModel.from_cli(model, args)
    return model


def cmd_eval(args) -> int:
    from .data import Benchmark
    from .runner import Runner, parse_shard

    bench = Benchmark(args.data, args.questions, allow_outside=args.allow_outside_paths)
    items = bench.select(datasets=args.dataset, categories=args.category, types=args.types, limit=args.limit, subset=args.subset, seed=args.seed)
    if not items:
        raise MmadError("no questions match the selection (--dataset/--category/--type/--limit); widen it")
    model = None if args.backend == "ray" else build_model(args)  # ray: each worker builds its own
    kwargs = dict(
        setting=args.setting, seed=args.seed, parser=args.parser, workers=args.workers, shuffle=not args.no_shuffle,
        shard=parse_shard(args.shard), progress=not args.no_progress, force_mix=args.force_mix, durable=args.durable, model_spec=args.model,
    )
    if args.backend == "ray":
        from functools import partial

        from .distributed import RayRunner

        runner = RayRunner(bench, None, args.out, address=args.address, model_factory=partial(build_model, args), **kwargs)
    else:
        runner = Runner(bench, model, args.out, **kwargs)
    try:
        summary = runner.run(items)
    finally:
        close = getattr(model, "close", None)
        if callable(close):
            close()
    if summary.interrupted:
        return 130
    print(f"{summary.asked} asked, {summary.skipped} already recorded, {summary.errors} errors -> {summary.run_dir}", file=sys.stderr)
    if not args.shard:
        _print_scores([Path(args.out)], "md")
    else:
        print(f"shard {args.shard} done; when all shards are done: mmad-boost score {args.out}", file=sys.stderr)
    return 0


def _print_scores(run_dirs: list[Path], fmt: str) -> None:
    from .reports import markdown_table, scores_csv, scores_json, write_reports

    all_scores, target = write_reports(run_dirs)
    for rd, sc in zip(run_dirs, all_scores):
        if fmt == "csv":
            print(scores_csv(sc), end="")
        elif fmt == "json":
            print(scores_json(sc))
        else:
            print(f"\n{rd}  (parser: {sc.parser})\n")
            print(markdown_table(sc))
    print(f"\nwrote scores.csv, scores.json, report.md, heatmap.png in each run folder; radar.png in {target}", file=sys.stderr)


def cmd_score(args) -> int:
    dirs = [Path(d) for d in args.run_dirs]
    for d in dirs:
        if not d.is_dir():
            raise MmadError(f"run folder {d} not found; pass the --out folder of `mmad-boost eval`")
    _print_scores(dirs, args.format)
    return 0


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score run folders (shards merged) and write scores.csv, report.md, plots")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--format", default="md", choices=["md", "csv", "json"])
    p.set_defaults(func=cmd_score)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmad-boost", description="MLLMs as industrial inspectors: boosts and the MMAD benchmark")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_eval(sub)
    _add_score(sub)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (e.name == name or name.startswith(e.name + ".")):
                continue  # that part is not built (yet)
            raise
        mod.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MmadError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted. Rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
