"""`mmad-boost tune`: choose, per MMAD subtask, which boosts to apply, from a dev part of the images.

1. The benchmark's images (not its questions: all questions of an image stay together) are split
   by a seed into a dev part and a test part, within every (dataset, category, normal/defective)
   group, so both parts hold every kind of image and no image is on both sides.
2. Every combination of the boosts given (knowledge, expert) is evaluated on the dev part only.
3. The rule chooses from the dev results (RULE_TEXT; docs/routing.md has the reasons).
   "two-level" (default): first one choice for all subtasks together, the combination with the
   best dev Average (every dev question counts, and only 2^boosts candidates compete, so an
   ordinary choice by dev score); then per subtask a deviation from it only with evidence: a
   boost of that choice is dropped for a subtask when adding it has a paired bootstrap interval
   on that subtask below zero, a boost outside it is added when its interval is above zero
   (uncertainty.paired_delta_intervals: the same images resampled for both runs, stratified per
   dataset). Per-subtask choices are many and each rests on a few images, so they must clear the
   interval. "beyond-noise": every boost kept for a subtask must have an interval above zero
   there (no boost is always allowed). "not-harmful": a boost is left out only if adding it has
   an interval below zero. Among the allowed combinations the best dev score wins (ties: the
   fewest deviations from the pooled choice, fewer boosts; all boosts for not-harmful). Subtasks
   not on dev get the pooled choice, no boost, or every boost.
4. The test part, untouched until now, scores the tuned routing beside "all boosts on" and "none",
   with intervals, and says whether the differences are within noise.
Costs: responses are cached by prompt (response_cache.py), so a tuned prompt that equals one
already asked is not asked again; run folders resume; expert fits and maps are shared by every
candidate (one cache folder). The number of model calls is printed before anything is asked.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path

from ..errors import MmadError
from .routing import Choice, Route, route_toml
from ..protocol.scoring import SUBTASKS

NONE, ALL_ON = "none", "all-on"
RULES = ("two-level", "beyond-noise", "not-harmful")
RULE_TEXT = {
    "two-level": "the boosts with the best dev Average over all subtasks together; per subtask a boost of that choice is dropped only "
    "when its paired bootstrap interval on that subtask is below zero, and another added only when its interval is above zero",
    "beyond-noise": "a boost is kept for a subtask only when its paired bootstrap interval on dev is above zero",
    "not-harmful": "a boost is left out of a subtask only when its paired bootstrap interval on dev is below zero",
}
POOLED = "all subtasks (pooled)"  # the evidence table of the two-level rule's first step


def split_images(samples, dev_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(dev keys, test keys): a seeded share of each (dataset, category, normal/defective) group's images."""
    if not 0.0 < dev_fraction < 1.0:
        raise MmadError(f"--dev-fraction {dev_fraction}: give the share of images used for choosing, between 0 and 1 (e.g. 0.3)")
    groups: dict[tuple, list[str]] = {}
    for s in samples:
        groups.setdefault((s.dataset, s.category, s.is_normal), []).append(s.key)
    dev, test = [], []
    for group in sorted(groups):
        keys = sorted(set(groups[group]))
        random.Random(f"{seed}:{'/'.join(map(str, group))}").shuffle(keys)
        n = round(len(keys) * dev_fraction)
        if len(keys) >= 2:  # both parts get some of every group
            n = min(max(n, 1), len(keys) - 1)
        dev += keys[:n]
        test += keys[n:]
    return sorted(dev), sorted(test)


def combos(boosts: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [c for r in range(len(boosts) + 1) for c in itertools.combinations(boosts, r)]


def combo_name(c: tuple[str, ...]) -> str:
    return "+".join(c) if c else NONE


def _interval_above_zero(d, subtask: str) -> bool:
    iv = d.get("Average", subtask)
    return iv is not None and iv[0] > 0


def _interval_below_zero(d, subtask: str) -> bool:
    iv = d.get("Average", subtask)
    return iv is not None and iv[1] < 0


def _with(c: tuple[str, ...], b: str, boosts: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(x for x in boosts if x in c or x == b)


def _allowed(cands: list[tuple], boosts: tuple[str, ...], deltas: dict, st: str, ref: tuple[str, ...]) -> list[tuple]:
    """The combinations whose every difference from `ref` has evidence on subtask `st`: a boost added to
    `ref` must help (interval above zero, given the combination's other boosts), a boost of `ref` left
    out must hurt (adding it back has an interval below zero). `ref` itself is always allowed."""
    return [
        c
        for c in cands
        if all(_interval_above_zero(deltas[(c, b)], st) for b in c if b not in ref)
        and all(_interval_below_zero(deltas[(_with(c, b, boosts), b)], st) for b in ref if b not in c)
    ]


def _reference(rule: str, boosts: tuple[str, ...], score: dict) -> tuple[str, ...]:
    """What a subtask gets without evidence: no boost (beyond-noise), every boost (not-harmful), or
    (two-level) the combination with the best dev Average over all subtasks, fewer boosts on a tie."""
    if rule == "beyond-noise":
        return ()
    if rule == "not-harmful":
        return boosts
    return max(score, key=lambda c: (_score(score[c], "Average"), -len(c)))


def _score(row: dict, col: str) -> float:
    return float("-inf") if row.get(col) is None else row[col]


def choose_route(dev: dict[tuple, list], boosts: tuple[str, ...], *, n_boot: int, confidence: float, seed: int, rule: str = "two-level") -> tuple[Route, dict]:
    """The routing and its evidence, from dev records per combination (keys: tuples of boost names, in `boosts` order)."""
    from ..protocol.scoring import score_records
    from ..reporting.uncertainty import format_interval, noise_word, paired_delta_intervals

    if rule not in RULES:
        raise MmadError(f"rule {rule!r}: use one of {', '.join(RULES)}")
    score = {c: score_records(recs).rows.get("Average", {}) for c, recs in dev.items()}
    deltas = {}
    for c in dev:
        for b in c:
            rest = tuple(x for x in c if x != b)
            deltas[(c, b)] = paired_delta_intervals(dev[rest], dev[c], n_boot=n_boot, confidence=confidence, seed=seed)

    def evidence_for(col: str, chosen: tuple[str, ...]) -> dict:
        ev = {"chosen": combo_name(chosen)}
        ev.update({f"dev {combo_name(c)}": round(score[c][col], 2) for c in dev if score[c].get(col) is not None})
        for (c, b), d in deltas.items():
            iv = d.get("Average", col)
            point = d.point.get("Average", {}).get(col)
            if point is not None:
                ev[f"{b} added to {combo_name(tuple(x for x in c if x != b))}"] = f"{point:+.2f} {format_interval(iv, signed=True)} {noise_word(iv)}"
        return ev

    ref = _reference(rule, boosts, score)
    types, evidence = {}, {}
    if rule == "two-level":
        evidence[POOLED] = evidence_for("Average", ref)
    for st in SUBTASKS:
        if score[()].get(st) is None:
            continue
        allowed = _allowed(list(dev), boosts, deltas, st, ref)
        # ties go to the reference (fewest deviations from it), then to fewer boosts
        best = max(allowed, key=lambda c: (_score(score[c], st), -len(set(c) ^ set(ref)), -len(c)))
        types[st] = Choice(knowledge="knowledge" in best, expert="expert" in best)
        evidence[st] = evidence_for(st, best)
        if rule == "two-level":
            evidence[st]["pooled choice"] = combo_name(ref)
    unseen = {"beyond-noise": Choice(knowledge=False, expert=False), "not-harmful": Choice()}.get(
        rule, Choice(knowledge="knowledge" in ref, expert="expert" in ref)
    )
    return Route(types, default=unseen, source="tuned"), evidence


def _images(d) -> int:
    return sum(d.images.values()) if isinstance(d.images, dict) else int(d.images)


def _recorded(run_dir: Path) -> set:
    from ..running.records import read_records

    path = run_dir / "records.jsonl"
    return {r.get("qid") for r in read_records(path) if not r.get("error")} if path.is_file() else set()


def _route_id(route: Route) -> str:
    return hashlib.sha256(json.dumps(route.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def tune(
    bench,
    base,
    work: str | Path,
    *,
    boost_options: dict,
    boosts: tuple[str, ...],
    dev_fraction: float = 0.3,
    seed: int = 0,
    shuffle_seed: int = 0,
    rule: str = "two-level",
    setting: str = "1-shot",
    n_boot: int = 1000,
    confidence: float = 0.95,
    workers: int = 1,
    progress: bool = True,
    model_spec: str = "model",
    log=print,
) -> dict:
    """Tune on dev, report on test. `base`: the model (wrapped here in a response cache); `boost_options`:
    BoostedModel keywords for the boosts (rag/kb/retrieval, expert/viz/calibrated/evidence); `seed` splits the
    images, `shuffle_seed` orders the options (kept apart, so another split reuses every cached response).
    Returns the result dict."""
    from .boosted import BoostedModel
    from ..running.records import run_records
    from ..running.response_cache import CachedModel
    from ..running.runner import Runner

    if rule not in RULES:
        raise MmadError(f"rule {rule!r}: use one of {', '.join(RULES)}")
    if not boosts:
        raise MmadError("tune: nothing to choose: give at least one boost (knowledge is on unless --no-rag; --expert NAME)")
    work = Path(work)
    items = bench.select()
    if not items:
        raise MmadError(f"{bench.questions_file}: no questions to tune on")
    dev_keys, test_keys = split_images({s.key: s for s, _ in items}.values(), dev_fraction, seed)
    dev_set, test_set = set(dev_keys), set(test_keys)
    dev_items = [(s, q) for s, q in items if s.key in dev_set]
    test_items = [(s, q) for s, q in items if s.key in test_set]
    if not dev_items or not test_items:
        raise MmadError(f"tune: {len(dev_keys)} dev and {len(test_keys)} test images; the benchmark needs at least 2 images per kind to split")
    cached = CachedModel(base, work / "responses.jsonl")  # shared by every split and rule
    options = dict(boost_options, cache_dir=work / "expert_cache")
    split_dir = work / f"split-seed{seed}-dev{dev_fraction:g}"

    def model_for(c: tuple[str, ...] | None, route: Route | None = None):
        if c == ():
            return cached
        if c is None or set(c) == set(boosts):  # all-on: the unrouted boosted model
            return BoostedModel(cached, **options, route=route)
        return BoostedModel(cached, **options, route=Route(default=Choice(knowledge="knowledge" in c, expert="expert" in c)))

    cands = combos(boosts)
    runs = [("dev", combo_name(c), c, dev_items) for c in cands] + [("test", NONE, (), test_items), ("test", ALL_ON, None, test_items)]
    todo = {(part, name): sum(1 for s, q in its if s.qid(q) not in _recorded(split_dir / part / name)) for part, name, _, its in runs}
    planned = sum(todo.values())
    log(
        f"tune: {len(dev_keys)} dev images ({len(dev_items)} questions), {len(test_keys)} test images ({len(test_items)} questions), "
        f"split by seed {seed}; candidates on dev: {', '.join(combo_name(c) for c in cands)}; rule {rule}"
    )
    log(
        f"tune: at most {planned + len(test_items)} model calls: {planned} for the candidates on dev and none/all-on on test "
        f"(questions already recorded under {split_dir} are not asked again), then at most {len(test_items)} for the tuned routing "
        f"on test; prompts identical to ones already asked are answered from the cache ({len(cached)} responses in {cached.path}), "
        "so a rerun or another split costs less"
    )

    def run(part: str, name: str, model, its) -> list[dict]:
        folder = split_dir / part / name
        s = Runner(bench, model, folder, setting=setting, seed=shuffle_seed, workers=workers, progress=progress, model_spec=f"{model_spec} ({name})").run(its)
        if s.interrupted:
            raise KeyboardInterrupt
        if s.errors:
            log(f"note: {part}/{name}: {s.errors} questions failed (rerun the same command to retry them)")
        wanted = {s.qid(q) for s, q in its}
        return [r for r in run_records(folder) if r.get("qid") in wanted]

    dev = {c: run("dev", combo_name(c), model_for(c), dev_items) for c in cands}
    route, evidence = choose_route(dev, boosts, n_boot=n_boot, confidence=confidence, seed=seed, rule=rule)
    test = {NONE: run("test", NONE, model_for(()), test_items), ALL_ON: run("test", ALL_ON, model_for(None), test_items)}
    tuned_name = f"tuned-{_route_id(route)}"
    test["tuned"] = run("test", tuned_name, model_for(None, route), test_items)
    report = test_report(test, n_boot=n_boot, confidence=confidence, seed=seed)
    result = {
        "route": route,
        "evidence": evidence,
        "report": report,
        "dev_images": dev_keys,
        "test_images": test_keys,
        "model_calls": cached.calls,
        "cache_hits": cached.hits,
        "planned_calls": planned + len(test_items),
        "rule": rule,
        "seed": seed,
        "runs": {
            "dev": {combo_name(c): str(split_dir / "dev" / combo_name(c)) for c in cands},
            "test": {NONE: str(split_dir / "test" / NONE), ALL_ON: str(split_dir / "test" / ALL_ON), "tuned": str(split_dir / "test" / tuned_name)},
        },
    }
    log(f"tune: made {cached.calls} model calls ({cached.hits} prompts answered from the cache)")
    return result


def test_report(test: dict[str, list], *, n_boot: int, confidence: float, seed: int) -> dict:
    """Scores with intervals on the test part for none / all-on / tuned, and the tuned routing's paired deltas."""
    from ..protocol.scoring import score_records
    from ..reporting.uncertainty import noise_word, paired_delta_intervals, score_intervals

    rows = {}
    for name, recs in test.items():
        iv = score_intervals(recs, n_boot=n_boot, confidence=confidence, seed=seed)
        sc = score_records(recs).rows.get("Average", {})
        rows[name] = {col: (sc.get(col), iv.get("Average", col)) for col in SUBTASKS + ("Average",) if sc.get(col) is not None}
    better = max((NONE, ALL_ON), key=lambda n: rows[n]["Average"][0])
    deltas = {}
    for other in (NONE, ALL_ON):
        d = paired_delta_intervals(test[other], test["tuned"], n_boot=n_boot, confidence=confidence, seed=seed)
        iv = d.get("Average", "Average")
        deltas[other] = {"delta": d.point["Average"]["Average"], "interval": iv, "noise": noise_word(iv), "images": _images(d)}
    return {
        "rows": rows,
        "better": better,
        "deltas": deltas,
        "confidence": confidence,
        "n_boot": n_boot,
        "tuned_at_least_better": rows["tuned"]["Average"][0] >= rows[better]["Average"][0] - 1e-9,
    }


def report_markdown(result: dict) -> str:
    from ..reporting.uncertainty import format_interval

    rep = result["report"]
    cols = [c for c in SUBTASKS + ("Average",) if all(c in r for r in rep["rows"].values())]
    pct = round(100 * rep["confidence"])
    lines = [
        f"Test part ({len(result['test_images'])} images, never used for choosing); accuracy % with {pct} % bootstrap intervals over images",
        "",
        "| run | " + " | ".join(cols) + " |",
        "| --- |" + " ---: |" * len(cols),
    ]
    for name, row in rep["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c][0]:.2f} {format_interval(row[c][1])}" for c in cols) + " |")
    lines.append("")
    for other, d in rep["deltas"].items():
        lines.append(
            f"tuned - {other}: {d['delta']:+.2f} {format_interval(d['interval'], signed=True)} points on the Average, "
            f"{d['noise']} (paired over {d['images']} images)"
        )
    verdict = "at least as well as" if rep["tuned_at_least_better"] else "below"
    lines.append(
        f"The tuned routing scores {verdict} the better of all-on and none ({rep['better']}); the difference is {rep['deltas'][rep['better']]['noise']}."
    )
    lines += ["", "Routing chosen on the dev part:", ""]
    for st, ev in result["evidence"].items():
        lines.append(f"- {st}: {ev['chosen']}; " + "; ".join(f"{k}: {v}" for k, v in ev.items() if k != "chosen"))
    return "\n".join(lines) + "\n"


def write_route(path: Path, result: dict, header: list[str]) -> None:
    from ..atomic import write_text

    tuning = {
        "dev_images": len(result["dev_images"]),
        "test_images": len(result["test_images"]),
        "split_seed": result["seed"],
        "rule": f"{result['rule']}: {RULE_TEXT[result['rule']]}",
    }
    tuning.update(result["evidence"])
    write_text(path, route_toml(result["route"], header=header, tuning=tuning))
