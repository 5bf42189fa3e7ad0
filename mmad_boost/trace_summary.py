"""Summaries of the per-answer trace (retrieval, expert) for report.md; empty when no boost ran."""
from __future__ import annotations


def markdown(records: list[dict]) -> list[str]:
    by_image = {}
    for r in records:
        t = r.get("trace") or {}
        if t.get("retrieval") or t.get("expert"):
            by_image[r["image"]] = (r, t)
    if not by_image:
        return []
    out = ["## Boosts (per image)", ""]
    ret = [(r, t["retrieval"]) for r, t in by_image.values() if t.get("retrieval")]
    if ret:
        known = [x for _, x in ret if x.get("true_category") is not None]
        right = sum(x.get("category") == x.get("true_category") for x in known)
        unknown = sum(x.get("category") is None for _, x in ret)
        chars = sum(x.get("knowledge_chars", 0) for _, x in ret) / len(ret)
        out.append(f"- retrieval: {len(ret)} images, mode {ret[0][1].get('mode')}; category right {right}/{len(known)}, unknown {unknown}, {chars:.0f} knowledge characters on average")
    exp = [(r, t["expert"]) for r, t in by_image.values() if t.get("expert")]
    if exp:
        normal = [x for r, x in exp if "good" in r["image"]]
        bad = [x for r, x in exp if "good" not in r["image"]]
        fm = sum(bool(x.get("marked")) for x in normal)
        hit = sum(bool(x.get("marked")) for x in bad)
        out.append(f"- expert `{exp[0][1].get('name')}` ({exp[0][1].get('mode', 'faithful')}, {exp[0][1].get('style')}): marks on {fm}/{len(normal)} normal images (false marks), on {hit}/{len(bad)} defective images")
    out.append("")
    return out
