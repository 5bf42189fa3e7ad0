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
    "mmad_boost.building.builder",
    "mmad_boost.demo",
    "mmad_boost.retrieval.cli",
    "mmad_boost.experts.cli",
    "mmad_boost.reporting.compare",
    "mmad_boost.reporting.html_report",
    "mmad_boost.boosts.tune_cli",
)


class DeprecatedAlias(argparse.Action):
    """An old option spelling kept working: hidden from --help, says which name to use now."""

    def __init__(self, option_strings, dest, new_name: str = "", **kw):
        self.new_name = new_name
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is deprecated; use {self.new_name}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser, old: str, new: str, dest: str) -> None:
    parser.add_argument(old, dest=dest, action=DeprecatedAlias, new_name=new)


def question_type_arg(text: str) -> str:
    """--type: a long name, its short alias or an unambiguous prefix (case-insensitive)."""
    from .protocol.data import question_type

    try:
        return question_type(text)
    except MmadError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _type_help() -> str:
    from .protocol.data import QUESTION_TYPE_ALIASES

    names = ", ".join(f"{alias} ({long})" for alias, long in QUESTION_TYPE_ALIASES.items())
    return f"only this question type (repeatable; default: all): {names}; any unambiguous prefix works"


VIZ_CHOICES = ["bbox", "contour", "highlight", "mask", "heatmap"]  # --viz: how the expert's map is drawn (experts.rendering.STYLES)


def add_model_arguments(p, model_help: str) -> None:
    """--model and the options every command that builds a model takes (read by _model_options)."""
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE", help="option for the model factory (repeatable; default: none)")
    p.add_argument("--base-url", help="openai: chat-completions endpoint base URL (default https://api.openai.com/v1)")
    p.add_argument("--api-key-env", help="openai: name of the environment variable holding the key (default OPENAI_API_KEY)")


def _add_eval(sub) -> None:
    from .protocol.settings import SETTING_HELP

    p = sub.add_parser("eval", help="ask a model every selected question and record the answers")
    p.add_argument("--data", required=True, help="data root (images under MMAD's key layout)")
    p.add_argument("--questions", help="question file (default DATA/mmad.json)")
    add_model_arguments(p, "model SPEC, e.g. baseline:random, openai:gpt-4o, hf:/path, python:mod:attr")
    p.add_argument("--setting", default="1-shot", help=f"images shown before the query: {SETTING_HELP} (default 1-shot)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="threads asking the model at once, for I/O-bound models and batched hf: models (give at least its batch_size) (default 1)",
    )
    p.add_argument(
        "--limit",
        type=int,
        help="ask only the first N selected questions in a stratified image order (each image's questions "
        "together; normal and defective images of each dataset and category in turn); prints what it took (default: all)",
    )
    p.add_argument("--subset", type=int, help="ask a random subset of N questions, seeded by --seed (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed for option shuffling and subsets (default 0)")
    p.add_argument("--dataset", action="append", help="only this dataset (repeatable; default: all)")
    p.add_argument("--category", action="append", help="only this category, NAME or DATASET/NAME (repeatable; default: all)")
    p.add_argument("--type", action="append", dest="types", type=question_type_arg, metavar="TYPE", help=_type_help())
    p.add_argument("--parser", default="strict", choices=["strict", "mmad"], help="answer extraction: strict (default) or mmad (faithful)")
    p.add_argument("--no-shuffle", action="store_true", help="keep the options in the file's order (default: shuffled, seeded)")
    p.add_argument("--shard", help="I/N: run only shard I of N (by image); `score` merges shards (default: everything)")
    p.add_argument("--backend", default="local", choices=["local", "ray"], help="local: threads in this process (default local); ray: a Ray cluster")
    p.add_argument("--address", help="ray: cluster address (default: start a local Ray)")
    p.add_argument("--force-mix", action="store_true", help="add answers to a run folder written by another configuration (default: refuse)")
    p.add_argument("--allow-outside-paths", action="store_true", help="let question-file paths leave the data root (default: refuse)")
    p.add_argument("--durable", action="store_true", help="fsync each record (survives power loss, slower; default off)")
    p.add_argument(
        "--repair",
        action="store_true",
        help="move damaged lines of the run's records file into records*.jsonl.rejected and go on (default off: a damaged line stops with an error naming it)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars or stage messages, also none from libraries (default: shown)")
    # boosts (BoostedModel)
    p.add_argument("--rag", action="store_true", help="put domain knowledge into the prompt (default off)")
    p.add_argument(
        "--kb", help="knowledge base: a folder from `mmad-boost kb build`, or a knowledge folder or .toml file; implies --rag (default: the shipped one)"
    )
    add_deprecated_alias(p, "--knowledge", "--kb", "kb")
    p.add_argument("--mmad-knowledge", help="MMAD's domain_knowledge.json to use as the knowledge base; implies --rag (default: none)")
    p.add_argument(
        "--retrieval",
        choices=["oracle", "image"],
        default=None,
        help="how the image's category is found: oracle (from the question file) or image (the query image searches the KB); "
        "default auto, recorded as 'auto' in run.json: oracle whenever the category is known, as in every benchmark run",
    )
    p.add_argument("--expert", help="expert agent: patchcore, patchcore-fewshot, gt, anomalyclip, anomalib:<Model>, or a fitted expert FOLDER (default: none)")
    p.add_argument(
        "--viz",
        default=None,
        choices=VIZ_CHOICES,
        help="how the expert's map is drawn: bbox, contour, highlight, mask or heatmap (default bbox; needs --expert)",
    )
    p.add_argument(
        "--calibrated",
        action="store_true",
        help="calibrated expert: draw only what it believes, nothing on images judged normal (default: faithful, as MMAD; needs --expert)",
    )
    p.add_argument(
        "--false-marks",
        type=float,
        default=None,
        metavar="RATE",
        help="target share of normal images the calibrated expert marks, a fraction in (0, 1) (default 0.1, or the rate a FOLDER was fitted at; needs --calibrated)",
    )
    p.add_argument(
        "--evidence",
        choices=["picture", "text", "both"],
        default=None,
        help="how the calibrated expert's verdict reaches the prompt: picture, text (score vs threshold, marked regions as "
        "nine-grid positions and area) or both (default picture; needs --calibrated)",
    )
    p.add_argument(
        "--route",
        metavar="FILE",
        help="route file (TOML, e.g. from `mmad-boost tune`): per question type, which of the boosts "
        "given (--rag, --expert) apply; types it does not list get every boost (default: no route, every boost on every question)",
    )
    p.add_argument(
        "--circular",
        action="store_true",
        help="CircularEval: also ask each question once per rotation of its options; right "
        "only if every rotation is right; reported beside MMAD's accuracy, never mixed in (default off; n options cost n calls)",
    )
    p.add_argument(
        "--judge",
        metavar="SPEC",
        help="model SPEC (e.g. openai:gpt-4o-mini) that maps a response the parser cannot read to an option "
        "letter; kept in the record, reported as accuracy with judge beside MMAD's rule (default: none)",
    )
    p.add_argument(
        "--judge-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option for the judge's model factory, e.g. base_url=http://127.0.0.1:8000/v1 (repeatable; default: none)",
    )
    p.add_argument("--out", required=True, help="run folder (resumed when it exists)")
    p.set_defaults(func=cmd_eval)


def _model_options(args) -> dict:
    """--model-option pairs (strings; the model's factory converts them by its signature) and the URL flags."""
    from .registry import option_pairs

    opts = option_pairs(args.model_option, "--model-option")
    if args.base_url:
        opts["base_url"] = args.base_url
    if args.api_key_env:
        opts["api_key_env"] = args.api_key_env
    return opts


def check_boost_flags(args) -> None:
    """Flags that only mean something with another one are refused, not ignored."""
    if getattr(args, "retrieval", None) and not (getattr(args, "rag", False) or getattr(args, "kb", None) or getattr(args, "mmad_knowledge", None)):
        raise MmadError("--retrieval needs --rag (or --kb / --mmad-knowledge)")
    expert = getattr(args, "expert", None)
    for flag, given in (("--calibrated", getattr(args, "calibrated", False)), ("--viz", getattr(args, "viz", None))):
        if given and not expert:
            raise MmadError(f"{flag} needs --expert NAME or --expert FOLDER (it changes how the expert's picture is drawn)")
    for flag, given in (("--false-marks", getattr(args, "false_marks", None) is not None), ("--evidence", getattr(args, "evidence", None))):
        if given and not getattr(args, "calibrated", False):
            raise MmadError(f"{flag} needs --calibrated (faithful mode is MMAD's picture, with no threshold)")


def build_model(args):
    from .models import create_model

    model = create_model(args.model, **_model_options(args))
    if getattr(args, "route", None) and not (args.rag or args.expert or args.kb or args.mmad_knowledge):
        raise MmadError("--route needs the boosts it chooses among: add --rag and/or --expert NAME (the flags the route was tuned with)")
    if args.rag or args.expert or args.kb or args.mmad_knowledge or args.retrieval or args.calibrated or args.viz:
        model = boosted_from_args(model, args)
    return model


def boosted_from_args(base, args):
    """A BoostedModel from the eval flags --rag --kb --mmad-knowledge --retrieval --expert --viz --calibrated
    --false-marks --evidence --route (flags that need another one are refused first)."""
    from .boosts.boosted import BoostedModel

    check_boost_flags(args)
    kb, mmad_knowledge = getattr(args, "kb", None), getattr(args, "mmad_knowledge", None)
    return BoostedModel(
        base,
        rag=bool(getattr(args, "rag", False) or kb or mmad_knowledge),
        retrieval=getattr(args, "retrieval", None),
        expert=getattr(args, "expert", None),
        viz=getattr(args, "viz", None) or "bbox",
        calibrated=bool(getattr(args, "calibrated", False)),
        false_marks=getattr(args, "false_marks", None),
        evidence=getattr(args, "evidence", None) or "picture",
        kb=kb,
        mmad_knowledge=mmad_knowledge,
        route=getattr(args, "route", None),
    )


def cmd_eval(args) -> int:
    from .protocol.data import Benchmark
    from .running.robust import judge_from_options
    from .running.runner import Runner, parse_shard

    check_boost_flags(args)
    for flag, value in (("--limit", args.limit), ("--subset", args.subset)):
        if value is not None and value < 1:
            raise MmadError(f"{flag} {value}: give a number of questions of at least 1 (leave it out for all)")
    bench = Benchmark(args.data, args.questions, allow_outside=args.allow_outside_paths)
    items = bench.select(datasets=args.dataset, categories=args.category, types=args.types, limit=args.limit, subset=args.subset, seed=args.seed)
    if not items:
        raise MmadError("no questions match the selection (--dataset/--category/--type/--limit); widen it")
    model = None if args.backend == "ray" else build_model(args)  # ray: each worker builds its own
    if args.backend == "ray" and args.judge:
        raise MmadError("--judge works with --backend local only (the judge model is not sent to Ray workers); run the judged eval locally")
    kwargs = dict(
        setting=args.setting,
        seed=args.seed,
        parser=args.parser,
        workers=args.workers,
        shuffle=not args.no_shuffle,
        shard=parse_shard(args.shard),
        progress=not args.no_progress,
        force_mix=args.force_mix,
        durable=args.durable,
        model_spec=args.model,
        repair=args.repair,
        circular=args.circular,
        judge=judge_from_options(args.judge, args.judge_option),
    )
    if args.backend == "ray":
        from functools import partial

        from .running.distributed import RayRunner

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
    if args.limit is not None:  # what a limit took, so a table from a small sample is read as one
        from .protocol.data import describe_selection

        print(f"--limit {args.limit}: {describe_selection(items)}", file=sys.stderr)
    if not args.shard:
        _print_scores([Path(args.out)], "md")
    else:
        print(f"shard {args.shard} done; when all shards are done: mmad-boost score {args.out}", file=sys.stderr)
    return 0


def _print_scores(run_dirs: list[Path], fmt: str) -> None:
    from .reporting.reports import markdown_table, scores_csv, scores_json, write_reports

    from .running.records import run_records

    for rd in run_dirs:
        if not run_records(rd):
            raise MmadError(f"{rd}: the run holds no records yet, so there is nothing to score; run `mmad-boost eval --out {rd}` first")
    all_scores, target = write_reports(run_dirs)
    for rd, sc in zip(run_dirs, all_scores):
        if fmt == "csv":
            print(scores_csv(sc), end="")
        elif fmt == "mmad-csv":  # MMAD's all_result shape, for submitting
            from .protocol.paper import mmad_csv

            print(mmad_csv(sc), end="")
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
    if args.repair:
        from .running.records import run_records

        for d in dirs:
            run_records(d, repair=True)  # damaged lines moved into records*.jsonl.rejected
    _print_scores(dirs, args.format)
    return 0


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score run folders (shards merged) and write scores.csv, report.md, plots")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (the --out of `mmad-boost eval`); shards in one folder are merged")
    p.add_argument(
        "--format",
        default="md",
        choices=["md", "csv", "json", "mmad-csv"],
        help="what is printed: md (default, a table per run), csv, json, or mmad-csv (MMAD's all_result CSV shape, for submitting)",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="move damaged lines of records*.jsonl into records*.jsonl.rejected before scoring (default off: a damaged line stops with an error naming it)",
    )
    p.set_defaults(func=cmd_score)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmad-boost", description="MLLMs as industrial inspectors: boosts and the MMAD benchmark")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors (default off)")
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
    from .running.progress import quiet

    try:
        with quiet(bool(getattr(args, "no_progress", False))):
            return int(args.func(args) or 0)
    except MmadError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted. Rerun the same command to resume.", file=sys.stderr)
        return 130
    except OSError as e:  # the environment (disk full, read-only folder, permissions), not a bug: one line
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}; free disk space or fix permissions, then rerun", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
