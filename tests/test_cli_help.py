"""Every CLI option explains itself: help text, its default where it has one, and its choices.

The walk covers every subcommand, including those other modules add through register_cli.
"""

from __future__ import annotations

import argparse
import re

import pytest

from mmad_boost.cli import main, make_parser


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    seen = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases name the same parser
                    seen.add(id(sub))
                    yield from _walk(sub, path + (name,))
        elif not isinstance(action, argparse._HelpAction):
            yield path, parser, action


def _states_default(text: str, default) -> bool:
    if f"default {default}" in text or f"default: {default}" in text or f"{default} (default" in text:
        return True
    if isinstance(default, (int, float)):  # "default 0" states a default of 0.0 too
        return any(float(m) == float(default) for m in re.findall(r"default:? (-?\d+(?:\.\d+)?)", text))
    return False


def _problems(action: argparse.Action, parser: argparse.ArgumentParser) -> list[str]:
    if action.help == argparse.SUPPRESS:
        return []  # a hidden deprecated alias
    if not action.help or not action.help.strip():
        return ["no help text"]
    text = parser._get_formatter()._expand_help(action)
    out = []
    default = action.default
    # `is`, not `in`: 0 == False, and a default of 0 must be stated too
    unset = default is None or default is False or default is argparse.SUPPRESS or default == []
    has_default = action.option_strings and not unset and not action.required
    if has_default and not _states_default(text, default):
        out.append(f"help does not state the default {default!r}")
    for choice in action.choices or ():
        if str(choice) not in text:
            out.append(f"help does not list the choice {choice!r}")
    return out


def test_every_option_has_help_with_default_and_choices():
    parser = make_parser()
    found = list(_walk(parser))
    commands = {" ".join(path) for path, _, _ in found}
    # the walk reaches the subcommands registered by other modules too
    assert {"eval", "score", "kb build", "kb query", "expert fit", "expert eval", "expert render", "report", "demo", "compare", "build-bench"} <= commands
    bad = []
    for path, sub, action in found:
        name = "/".join(action.option_strings) or action.dest
        bad += [f"mmad-boost {' '.join(path)} {name}: {p}" for p in _problems(action, sub)]
    assert not bad, "\n".join(bad)


def test_the_check_catches_a_missing_help_and_a_missing_default():
    p = argparse.ArgumentParser()
    a = p.add_argument("--workers", type=int, default=4)
    b = p.add_argument("--style", default="bbox", choices=["bbox", "mask"], help="drawing style (default bbox)")
    c = p.add_argument("--mode", default="x", help="the mode")
    d = p.add_argument("--seed", type=int, default=0, help="the seed")
    assert _problems(a, p) == ["no help text"]
    assert _problems(d, p) == ["help does not state the default 0"]
    assert _problems(b, p) == ["help does not list the choice 'mask'"]
    assert _problems(c, p) == ["help does not state the default 'x'"]


def test_one_name_per_thing_and_deprecated_spellings(tmp_path, capsys):
    parser = make_parser()
    opts = {" ".join(path): {s for a in sub._actions for s in a.option_strings if a.help != argparse.SUPPRESS} for path, sub, _ in _walk(parser)}
    # a fitted expert folder is --expert everywhere; a knowledge base is --kb in kb and in eval
    for cmd in ("eval", "expert eval", "expert render"):
        assert "--expert" in opts[cmd] and "--expert-dir" not in opts[cmd]
    for cmd in ("eval", "kb query", "kb eval"):
        assert "--kb" in opts[cmd]
    assert "--knowledge" not in opts["eval"]
    # the old spellings still parse, hidden, with a note
    args = parser.parse_args(["expert", "render", "--expert-dir", "E", "img.png", "--out", "o"])
    assert args.expert == "E"
    args = parser.parse_args(["eval", "--data", "d", "--model", "baseline:random", "--knowledge", "K", "--out", "o"])
    assert args.kb == "K"
    assert "deprecated; use --kb" in capsys.readouterr().err


@pytest.mark.parametrize(
    "given, long",
    [
        ("anomaly", "Anomaly Detection"),
        ("Anomaly Detection", "Anomaly Detection"),
        ("object-cl", "Object Classification"),
        ("defect_loc", "Defect Localization"),
    ],
)
def test_type_accepts_short_names(given, long):
    args = make_parser().parse_args(["eval", "--data", "d", "--model", "m", "--type", given, "--out", "o"])
    assert args.types == [long]


def test_type_refuses_ambiguous_and_unknown(capsys):
    for bad, says in (("defect", "ambiguous"), ("colour", "unknown question type")):
        with pytest.raises(SystemExit) as e:
            make_parser().parse_args(["eval", "--data", "d", "--model", "m", "--type", bad, "--out", "o"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert says in err and "anomaly" in err


@pytest.mark.parametrize("extra, flag", [(["--viz", "contour"], "--viz"), (["--calibrated"], "--calibrated")])
def test_expert_drawing_flags_without_expert_are_refused(shared_fixture_root, tmp_path, capsys, extra, flag):
    out = tmp_path / "run"
    rc = main(["eval", "--data", str(shared_fixture_root), "--model", "baseline:random", "--limit", "2", "--no-progress", "--out", str(out), *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{flag} needs --expert" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before anything was written


def test_retrieval_help_matches_what_run_json_records():
    from mmad_boost.cli import boosted_from_args

    parser = make_parser()
    sub = dict((" ".join(p), s) for p, s, _ in _walk(parser))["eval"]
    action = next(a for a in sub._actions if "--retrieval" in a.option_strings)
    assert "default auto" in action.help and "recorded as 'auto'" in action.help
    args = parser.parse_args(["eval", "--data", "d", "--model", "baseline:random", "--rag", "--out", "o"])
    model = boosted_from_args(lambda images, text: "A", args)  # what Runner stores in run.json
    assert model.config()["rag"]["retrieval"] == "auto"
