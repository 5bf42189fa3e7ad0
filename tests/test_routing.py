"""Routing (per question type, which boosts apply), the tuner's dev/test split and its choice rule."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from mmad_boost import BoostedModel, MmadError
from mmad_boost.cli import main
from mmad_boost.protocol.data import Benchmark
from mmad_boost.models.base import MLLM
from mmad_boost.running.records import run_records
from fixtures import Recorder
from mmad_boost.boosts.routing import Choice, Route, route_toml
from mmad_boost.running.runner import Runner
from mmad_boost.boosts.tune import POOLED, choose_route, split_images

KNOWLEDGE = """dataset = "MVTec"
category = "{cat}"
normal = "A round {cat} on a dark background."

[[defect]]
name = "scratch"
description = "A bright rectangle on the {cat}."
"""


@pytest.fixture
def kb(tmp_path):
    folder = tmp_path / "kb"
    folder.mkdir()
    for cat in ("widget", "gadget"):
        (folder / f"{cat}.toml").write_text(KNOWLEDGE.format(cat=cat), encoding="utf-8")
    return folder


def test_route_file_round_trip_and_lookup(tmp_path):
    route = Route(
        {"anomaly": Choice(knowledge=False, expert=True), "Object Analysis": Choice(expert=False, templates=False)},
        default=Choice(knowledge=True, expert=False),
    )
    path = tmp_path / "route.toml"
    path.write_text(route_toml(route, header=["a comment"], tuning={"rule": "x", "Anomaly Detection": {"chosen": "expert", "dev none": 50.0}}))
    back = Route.load(path)
    assert back.to_dict() == route.to_dict()
    assert back.choice("Anomaly Detection") == Choice(knowledge=False, expert=True)
    assert back.choice("Object Structure") == back.choice("Object Details") == Choice(expert=False, templates=False)  # by subtask
    assert back.choice("Defect Classification") == back.choice(None) == Choice(knowledge=True, expert=False)  # default


@pytest.mark.parametrize(
    "text, needle",
    [
        ('[types."Anomaly Detection"]\nknowledge = 1\n', "knowledge: give true or false"),
        ('[types."Anomaly Detection"]\nexpert = "pictures"\n', "expert: give true, false"),
        ('[types."Anomaly Detection"]\ncolour = true\n', "unknown field(s) colour"),
        ('[types."Not A Type"]\nexpert = true\n', "unknown question type"),
        ('[types.anomaly]\nexpert = true\n[types."Anomaly Detection"]\nexpert = false\n', "listed twice"),
        ("[route]\n", "unknown field(s) route"),
        ("knowledge = [", "not valid TOML"),
    ],
)
def test_bad_route_files_name_the_file_and_field(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(MmadError) as e:
        Route.load(path)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_route_must_choose_among_the_models_boosts(kb):
    with pytest.raises(MmadError, match="turns on knowledge, but the model has no knowledge base"):
        BoostedModel(Recorder(), expert="gt", route={"anomaly": {"knowledge": True}})
    with pytest.raises(MmadError, match="prepares its 'picture' only"):
        BoostedModel(Recorder(), expert="gt", route={"anomaly": {"expert": "text"}})
    BoostedModel(Recorder(), rag=kb, route={"anomaly": {"knowledge": False}})  # types not listed: every boost given


def test_routed_prompts_trace_and_once_per_image(fixture_root, kb, tmp_path):
    bench = Benchmark(fixture_root)
    base = Recorder()
    route = {"anomaly": {"knowledge": False, "expert": True}, "object-class": {"knowledge": True, "expert": False, "templates": False}}
    model = BoostedModel(base, rag=kb, expert="gt", route=route)
    prepared = []
    real = model.prepare
    model.prepare = lambda q: (prepared.append(q.info.key), real(q))[1]
    out = tmp_path / "run"
    items = bench.select()
    Runner(bench, model, out, progress=False).run(items)
    assert sorted(prepared) == sorted({s.key for s, _ in items})  # per-image work once per image, whatever the route
    by_type = {}
    for p in base.prompts:
        by_type.setdefault(p.query.question_type, []).append(p)
    for p in by_type["Anomaly Detection"]:
        assert "domain knowledge" not in p.text() and len(p.images) == 3  # template, query, expert picture
    for p in by_type["Object Classification"]:
        assert "domain knowledge" in p.text() and len(p.images) == 1  # no template, no expert picture
    recs = run_records(out)
    for r in recs:
        tr = r["trace"]["route"]
        if r["question_type"] == "Anomaly Detection":
            assert tr["applied"] == ["expert picture", "templates"] and tr["left_out"] == ["knowledge"]
        elif r["question_type"] == "Object Classification":
            assert tr["applied"] == ["knowledge"] and tr["left_out"] == ["expert picture", "templates"]
        else:
            assert tr["left_out"] == []
    ident = json.loads((out / "run.json").read_text())["identity"]["model_config"]
    assert ident["route"]["types"]["Anomaly Detection"] == {"knowledge": False, "expert": True, "templates": True}
    assert model.name.endswith("+routed")


def test_eval_route_flag(fixture_root, kb, tmp_path, capsys):
    route = tmp_path / "route.toml"
    route.write_text('[types."Anomaly Detection"]\nexpert = false\n')
    out = tmp_path / "run"
    assert (
        main(["eval", "--data", str(fixture_root), "--model", "baseline:random", "--expert", "gt", "--route", str(route), "--no-progress", "--out", str(out)])
        == 0
    )
    for r in run_records(out):
        assert ("expert picture" in r["trace"]["route"]["applied"]) == (r["question_type"] != "Anomaly Detection")
    assert main(["eval", "--data", str(fixture_root), "--model", "baseline:random", "--route", str(route), "--no-progress", "--out", str(tmp_path / "x")]) == 2
    assert "--route needs the boosts" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[types."Anomaly Detection"]\nexpert = "maybe"\n')
    assert (
        main(
            [
                "eval",
                "--data",
                str(fixture_root),
                "--model",
                "baseline:random",
                "--expert",
                "gt",
                "--route",
                str(bad),
                "--no-progress",
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert str(bad) in capsys.readouterr().err


class _S:
    def __init__(self, key):
        self.key, parts = key, key.split("/")
        self.dataset, self.category, self.is_normal = parts[0], parts[1], "good" in key


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["A", "B"]), st.sampled_from(["x", "y"]), st.booleans(), st.integers(0, 50)), min_size=1, max_size=60),
    st.floats(0.05, 0.95),
    st.integers(0, 10**6),
)
def test_split_has_no_image_on_both_sides(specs, fraction, seed):
    samples = [_S(f"{d}/{c}/test/{'good' if n else 'bad'}/{i:03d}.png") for d, c, n, i in specs]
    dev, test = split_images(samples, fraction, seed)
    keys = {s.key for s in samples}
    assert not set(dev) & set(test) and set(dev) | set(test) == keys and len(dev) + len(test) == len(keys)
    assert (dev, test) == split_images(list(reversed(samples)), fraction, seed)  # depends on the seed only
    groups = {}
    for s in {s.key: s for s in samples}.values():
        groups.setdefault((s.dataset, s.category, s.is_normal), []).append(s.key)
    for g in groups.values():  # every group with two images or more is on both sides
        if len(g) >= 2:
            assert set(g) & set(dev) and set(g) & set(test)


def test_split_refuses_bad_fraction():
    with pytest.raises(MmadError, match="--dev-fraction 1.0"):
        split_images([_S("A/x/test/good/0.png")], 1.0, 0)


def _records(correct: dict[str, list[bool]], n_images=30):
    """Records for `n_images` images, one question of each subtask whose correctness is given per image."""
    recs = []
    for t, hits in correct.items():
        for i, hit in enumerate(hits[:n_images]):
            img = f"VisA/x/test/{'good' if i % 2 else 'bad'}/{i:03d}.png"
            recs.append({"qid": f"{img}#{t}", "image": img, "question_type": t, "correct_answer": "A", "gpt_answer": "A" if hit else "B"})
    return recs


def test_choice_keeps_a_boost_only_beyond_noise():
    n = 40
    none = _records({"Defect Localization": [False] * n, "Object Classification": [i % 2 == 0 for i in range(n)]}, n)
    # knowledge: localisation unchanged; object classification clearly better
    know = _records({"Defect Localization": [False] * n, "Object Classification": [True] * n}, n)
    # expert: localisation clearly better; object classification a little better (one image): noise
    exp = _records({"Defect Localization": [True] * n, "Object Classification": [i % 2 == 0 or i == 1 for i in range(n)]}, n)
    both = _records({"Defect Localization": [True] * n, "Object Classification": [True] * n}, n)
    dev = {(): none, ("knowledge",): know, ("expert",): exp, ("knowledge", "expert"): both}
    route, evidence = choose_route(dev, ("knowledge", "expert"), n_boot=300, confidence=0.95, seed=0, rule="beyond-noise")
    assert route.choice("Defect Localization") == Choice(knowledge=False, expert=True)
    assert route.choice("Object Classification") == Choice(knowledge=True, expert=False)
    assert route.choice("Anomaly Detection") == Choice(knowledge=False, expert=False)  # not on dev: no boost
    assert evidence["Object Classification"]["chosen"] == "knowledge"
    assert "within noise" in evidence["Object Classification"]["expert added to knowledge"]


def _flips(n: int, right: range, lose=(), gain=()) -> list[bool]:
    """Per image correct or not: `right` answered correctly, then `lose` wrong and `gain` right."""
    ok = (set(right) - set(lose)) | set(gain)
    return [i in ok for i in range(n)]


def _two_level_dev(n: int = 40) -> dict:
    """Dev results whose right two-level routing is known: knowledge helps on the whole (a large gain in object
    classification), hurts localisation beyond noise and defect classification within noise; the expert hurts
    on the whole (two losses within noise) but helps localisation beyond noise."""
    half, even = range(n // 2), range(0, n, 2)
    per_type = {  # (none, knowledge, expert, knowledge+expert); the boosts' effects add up
        "Object Classification": (_flips(n, even), _flips(n, range(n)), _flips(n, even), _flips(n, range(n))),
        "Defect Localization": (
            _flips(n, half),
            _flips(n, half, lose=range(10)),
            _flips(n, half, gain=range(20, 30)),
            _flips(n, half, lose=range(10), gain=range(20, 30)),
        ),
        "Defect Classification": (
            _flips(n, half),
            _flips(n, half, lose=range(4), gain=(20, 21)),
            _flips(n, half),
            _flips(n, half, lose=range(4), gain=(20, 21)),
        ),
        "Defect Description": (
            _flips(n, half),
            _flips(n, half),
            _flips(n, half, lose=range(10), gain=range(20, 24)),
            _flips(n, half, lose=range(10), gain=range(20, 24)),
        ),
        "Defect Analysis": (
            _flips(n, half),
            _flips(n, half),
            _flips(n, half, lose=range(9), gain=range(20, 24)),
            _flips(n, half, lose=range(9), gain=range(20, 24)),
        ),
    }
    names = [(), ("knowledge",), ("expert",), ("knowledge", "expert")]
    return {c: _records({t: v[i] for t, v in per_type.items()}, n) for i, c in enumerate(names)}


def test_two_level_rule_deviates_from_the_pooled_choice_only_with_evidence():
    dev = _two_level_dev()
    route, evidence = choose_route(dev, ("knowledge", "expert"), n_boot=300, confidence=0.95, seed=0)  # the default rule
    pooled = evidence[POOLED]
    assert pooled["chosen"] == "knowledge"  # best dev Average: 54.0 against 53.5 (both), 50.0 (none), 49.5 (expert)
    assert (pooled["dev knowledge"], pooled["dev knowledge+expert"]) == (54.0, 53.5)
    assert route.choice("Object Classification") == Choice(knowledge=True, expert=False)  # the pooled choice
    # knowledge's loss in defect classification is within noise: kept, although none scores higher on dev
    assert route.choice("Defect Classification") == Choice(knowledge=True, expert=False)
    assert "within noise" in evidence["Defect Classification"]["knowledge added to none"]
    assert evidence["Defect Classification"]["dev none"] > evidence["Defect Classification"]["dev knowledge"]
    # localisation: knowledge dropped (interval below zero), the expert added (interval above zero)
    assert route.choice("Defect Localization") == Choice(knowledge=False, expert=True)
    assert "beyond noise" in evidence["Defect Localization"]["knowledge added to expert"]
    assert evidence["Defect Localization"]["expert added to none"].startswith("+25.00")
    for t in ("Defect Description", "Defect Analysis"):  # the expert's losses are within noise: nothing to deviate for
        assert route.choice(t) == Choice(knowledge=True, expert=False) and "within noise" in evidence[t]["expert added to knowledge"]
    assert route.choice("Anomaly Detection") == route.default == Choice(knowledge=True, expert=False)  # not on dev: pooled
    assert all(evidence[t]["pooled choice"] == "knowledge" for t in evidence if t != POOLED)
    # the other rules on the same evidence: beyond-noise drops everything without a gain beyond noise
    strict, _ = choose_route(dev, ("knowledge", "expert"), n_boot=300, confidence=0.95, seed=0, rule="beyond-noise")
    assert strict.choice("Defect Classification") == strict.choice("Defect Description") == Choice(knowledge=False, expert=False)
    lenient, _ = choose_route(dev, ("knowledge", "expert"), n_boot=300, confidence=0.95, seed=0, rule="not-harmful")
    assert lenient.choice("Defect Description") == Choice() and lenient.choice("Defect Localization") == Choice(knowledge=False, expert=True)
    with pytest.raises(MmadError, match="rule 'best': use one of two-level"):
        choose_route(dev, ("knowledge", "expert"), n_boot=300, confidence=0.95, seed=0, rule="best")


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_two_level_every_deviation_has_an_interval_excluding_zero(data):
    from mmad_boost.reporting.uncertainty import paired_delta_intervals

    n, types = 12, ("Defect Classification", "Defect Localization", "Object Classification")
    boosts = ("knowledge", "expert")
    names = [(), ("knowledge",), ("expert",), ("knowledge", "expert")]
    vec = st.lists(st.booleans(), min_size=n, max_size=n)
    dev = {c: _records({t: data.draw(vec) for t in types}, n) for c in names}
    route, evidence = choose_route(dev, boosts, n_boot=100, confidence=0.9, seed=1)
    ref = tuple(b for b in boosts if b in evidence[POOLED]["chosen"].split("+"))
    for t in types:
        ch = route.choice(t)
        chosen = tuple(b for b in boosts if (b == "knowledge" and ch.knowledge) or (b == "expert" and ch.expert))
        assert evidence[t]["chosen"] == ("+".join(chosen) or "none")
        for b in set(chosen) ^ set(ref):  # each deviation: the same paired interval the rule saw excludes zero
            with_b = tuple(x for x in boosts if x in chosen or x == b)
            without = tuple(x for x in with_b if x != b)
            iv = paired_delta_intervals(dev[without], dev[with_b], n_boot=100, confidence=0.9, seed=1).get("Average", t)
            assert (iv[0] > 0) if b in chosen else (iv[1] < 0)
        if chosen != ref:  # and it scores higher on dev than the pooled choice
            assert evidence[t][f"dev {evidence[t]['chosen']}"] > evidence[t][f"dev {evidence[POOLED]['chosen']}"]


def test_tune_cli_splits_chooses_on_dev_reports_on_test_and_reuses_answers(fixture_root, kb, tmp_path, capsys):
    route = tmp_path / "route.toml"
    args = [
        "tune",
        "--data",
        str(fixture_root),
        "--model",
        "baseline:random",
        "--kb",
        str(kb),
        "--expert",
        "gt",
        "--dev-fraction",
        "0.5",
        "--seed",
        "3",
        "--n-boot",
        "200",
        "--no-progress",
        "--out",
        str(route),
    ]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "at most" in cap.err and "model calls" in cap.err  # said before anything is asked
    assert cap.err.index("at most") < cap.err.index("made ")
    assert "tuned - all-on" in cap.out and ("within noise" in cap.out or "beyond noise" in cap.out)
    work = tmp_path / "route_runs"
    result = json.loads((work / "tune.json").read_text())
    dev, test = set(result["dev_images"]), set(result["test_images"])
    assert dev and test and not dev & test  # no image on both sides
    bench = Benchmark(fixture_root)
    assert dev | test == {s.key for s in bench.samples}
    for name, folder in result["runs"]["dev"].items():  # candidates saw dev images only; the reports test images only
        assert {r["image"] for r in run_records(folder)} <= dev
    for name, folder in result["runs"]["test"].items():
        assert {r["image"] for r in run_records(folder)} == test
    loaded = Route.load(route)  # the route file reads back, with its evidence kept for people
    assert set(loaded.types) == {"Anomaly Detection", "Object Classification", "Defect Classification", "Defect Localization"}
    assert "rule" in (route.read_text())
    # the tuned test run is a real routed run: its trace says what was applied per type
    tuned = run_records(result["runs"]["test"]["tuned"])
    for r in tuned:
        ch = loaded.choice(r["question_type"])
        assert ("knowledge" in r["trace"]["route"]["applied"]) == ch.knowledge
        assert ("expert picture" in r["trace"]["route"]["applied"]) == bool(ch.expert)
    # a rerun asks the model nothing: run folders resume, identical prompts come from the cache
    assert main(args) == 0
    assert "made 0 model calls" in capsys.readouterr().err
    # the route works with eval and the boosts it was tuned with
    assert (
        main(
            [
                "eval",
                "--data",
                str(fixture_root),
                "--model",
                "baseline:random",
                "--rag",
                "--kb",
                str(kb),
                "--expert",
                "gt",
                "--route",
                str(route),
                "--no-progress",
                "--out",
                str(tmp_path / "routed"),
            ]
        )
        == 0
    )


def test_tune_refuses_bad_input(fixture_root, tmp_path, capsys):
    base = ["tune", "--data", str(fixture_root), "--model", "baseline:random", "--expert", "gt", "--no-progress"]
    assert main(base + ["--dev-fraction", "1.5", "--out", str(tmp_path / "r.toml")]) == 2
    assert "--dev-fraction 1.5" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(base + ["--no-rag", "--expert", "none", "--out", str(tmp_path / "r.toml")]) == 2
    assert "nothing to choose" in capsys.readouterr().err


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["picture", "text", "both", "anomaly", "Anomaly Detection", "Object Analysis"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["knowledge", "expert", "templates", "types", "default", "tuning", "anomaly", "x"]) | st.text(max_size=8), inner, max_size=4
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["types", "default", "tuning", "other"]), _values, max_size=3))
def test_any_route_content_loads_or_fails_with_a_one_line_error(d):
    try:
        route = Route.from_dict(d, where="r.toml")
    except MmadError as e:
        assert str(e).startswith("r.toml") and "\n" not in str(e)
        return
    for name, ch in route.choices():  # what loaded is well-formed
        assert isinstance(ch.knowledge, bool) and isinstance(ch.templates, bool) and ch.expert in (True, False, "picture", "text", "both")


def test_response_cache_keys_on_everything_the_model_sees(tmp_path):
    from PIL import Image

    from mmad_boost.protocol.prompt import Prompt
    from mmad_boost.running.response_cache import CachedModel

    class Counting(MLLM):
        name = "counting"

        def __init__(self):
            self.n = 0

        def generate(self, prompt):
            self.n += 1
            return f"Answer: {'AB'[self.n % 2]}"

    base = Counting()
    path = tmp_path / "responses.jsonl"
    model = CachedModel(base, path)
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    first = model.generate(Prompt([red, "Q?"]))
    assert model.generate(Prompt([red.copy(), "Q?"])) == first and base.n == 1  # same pixels, same text: asked once
    model.generate(Prompt([blue, "Q?"]))
    model.generate(Prompt([red, "Q!"]))
    model.generate(Prompt([red, "Q?"], system="other"))
    assert base.n == 4 and (model.calls, model.hits) == (4, 1)
    with open(path, "a", encoding="utf-8") as f:  # a torn or damaged line is skipped, never fatal
        f.write('{"key": 1}\nnot json\n{"key": "abc", "resp')
    again = CachedModel(Counting(), path)
    assert again.generate(Prompt([red, "Q?"])) == first and again.base.n == 0 and len(again) == 4
