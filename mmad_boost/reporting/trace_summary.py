"""Summaries of the per-answer trace (retrieval, expert, timings) for report.md; empty when no boost ran.

Traces are per image (all questions of an image share one), so figures count images, not questions.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from ..protocol.keys import is_normal_key
from ..protocol.record import ExpertTrace, Record, RetrievalTrace, Trace, as_records


def _per_image(records: list[Record]) -> dict[str, Trace]:
    """Each image's trace (the last non-empty one of its questions), parsed once per image."""
    last = {}
    for r in records:
        if isinstance(r.trace_json, dict) and r.trace_json and r.image:
            last[r.image] = r
    return {image: r.trace for image, r in last.items()}


def _section(value, kind):
    """A trace section the boost wrote (an empty or malformed one counts as not written)."""
    return value if isinstance(value, kind) and (value.source_keys or value.to_json()) else None


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _rate(n: int, d: int) -> float | None:
    return None if d == 0 else n / d


def summarize(records) -> dict:
    """Figures from the traces: {"retrieval": {...}, "expert": {...}, "timings": {...}}; keys absent when unused."""
    records = as_records(records)
    images = _per_image(records)
    out: dict = {}
    ret: list[tuple[str, RetrievalTrace]] = [(k, s) for k, t in images.items() if (s := _section(t.retrieval, RetrievalTrace))]
    if ret:
        truth = [x for _, x in ret if x.true_category is not None]
        right = sum(x.category == x.true_category for x in truth)
        unknown = sum(x.category is None for _, x in ret)
        wrong = Counter((x.true_category, x.category) for x in truth if x.category not in (None, x.true_category))
        out["retrieval"] = {
            "images": len(ret),
            "modes": sorted({str(x.mode) for _, x in ret}),
            "with_truth": len(truth),
            "right": right,
            "accuracy": _rate(right, len(truth)),
            "unknown": unknown,
            "unknown_rate": _rate(unknown, len(ret)),
            "confusions": [f"{a} -> {b} ({n})" for (a, b), n in wrong.most_common(5)],
            "mean_score": _mean([x.score for _, x in ret]),
            "mean_knowledge_chars": _mean([0 if x.knowledge_chars is None else x.knowledge_chars for _, x in ret]),
        }
    exp: list[tuple[str, ExpertTrace]] = [(k, s) for k, t in images.items() if (s := _section(t.expert, ExpertTrace))]
    if exp:
        normal = [x for k, x in exp if is_normal_key(k)]
        bad = [x for k, x in exp if not is_normal_key(k)]
        decided = [(k, x) for k, x in exp if x.decision is not None]
        out["expert"] = {
            "names": sorted({f"{x.name} ({x.mode or 'faithful'}, {x.style})" for _, x in exp}),
            "normal_images": len(normal),
            "defective_images": len(bad),
            "false_marks": sum(bool(x.marked) for x in normal),
            "false_mark_rate": _rate(sum(bool(x.marked) for x in normal), len(normal)),
            "marks_on_defective": sum(bool(x.marked) for x in bad),
            "hit_rate": _rate(sum(bool(x.marked) for x in bad), len(bad)),
            "decision_accuracy": _rate(sum(bool(x.decision) != is_normal_key(k) for k, x in decided), len(decided)),
            "mean_score_normal": _mean([x.score for x in normal]),
            "mean_score_defective": _mean([x.score for x in bad]),
        }
    stages = defaultdict(list)
    for t in images.values():
        for stage, sec in t.stage_seconds().items():
            stages[stage].append(float(sec))
    lat = [r.latency_seconds for r in records if r.has_latency()]
    if stages or lat:
        # a stage counts only the images that ran it (a per-category fit runs once per category)
        timings = {s: {"mean_s": sum(v) / len(v), "images": len(v)} for s, v in sorted(stages.items())}
        if lat:
            timings["model latency per question"] = {"mean_s": sum(lat) / len(lat), "questions": len(lat)}
        out["timings"] = timings
    return out


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def markdown(records) -> list[str]:
    s = summarize(records)
    if not (s.get("retrieval") or s.get("expert")):
        return []
    out = ["## Boosts (from the per-image trace)", ""]
    r = s.get("retrieval")
    if r:
        out.append(
            f"- retrieval ({', '.join(r['modes'])}), {r['images']} images: category right {r['right']}/{r['with_truth']} "
            f"({_pct(r['accuracy'])}), unknown {r['unknown']} ({_pct(r['unknown_rate'])}), "
            f"{r['mean_knowledge_chars']:.0f} knowledge characters per prompt on average"
        )
        if r["confusions"]:
            out.append(f"  - wrong categories (true -> retrieved): {', '.join(r['confusions'])}")
    e = s.get("expert")
    if e:
        out.append(
            f"- expert {', '.join(e['names'])}: marks on {e['false_marks']}/{e['normal_images']} normal images "
            f"(false-mark rate {_pct(e['false_mark_rate'])}), on {e['marks_on_defective']}/{e['defective_images']} defective images "
            f"(hit rate {_pct(e['hit_rate'])})"
        )
        if e["decision_accuracy"] is not None:
            out.append(f"  - calibrated decisions right on {_pct(e['decision_accuracy'])} of images")
    t = s.get("timings")
    if t:
        out.append("- mean seconds: " + ", ".join(f"{k} {v['mean_s']:.3f} ({v.get('images', v.get('questions'))})" for k, v in t.items()))
    out.append("")
    return out
