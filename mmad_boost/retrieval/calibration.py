"""Leave-one-out over a retriever's references: each reference in turn is a query against all the
others. How often the right category comes first (global stage alone and re-ranked), and the
margin threshold under which the retriever answers "unknown" rather than guess (`calibrate`).

A category with a single reference cannot be left out (nothing of it would remain) and is skipped.
References were chosen to cover their category (k-center), so each is farther from the rest than
a typical query is from its nearest reference: the estimate errs on the cautious side.
"""

from __future__ import annotations

import numpy as np

from .rerank import MIN_MARGIN, calibrate_margin


def leave_one_out(r) -> list[dict]:
    """One row per left-out reference: truth, guess (re-ranked if the retriever re-ranks), the global
    stage's guess, the margin, and whether it passed the similarity threshold."""
    store = r.image_store
    vectors = store.vectors()
    rows = r._category_rows()
    patches = r._ensure_ref_patches() if r.reranker is not None else None
    out = []
    for i, m in enumerate(store.meta):
        truth = (m["dataset"], m["category"])
        if len(rows[truth]) < 2:
            continue
        sims = vectors @ vectors[i]
        ids = np.argsort(-sims)
        d = r.decide(ids, sims[ids], None if patches is None else patches[i], exclude=i)
        if not d["order"]:
            continue
        out.append(
            {"truth": truth, "guess": d["order"][0], "global_guess": d["ranked"][0][0], "margin": d["margin"], "in_domain": d["ranked"][0][1] >= r.threshold}
        )
    return out


def calibrate(r, max_risk: float = 0.0) -> dict:
    """Set `r.margin_threshold` from leave-one-out: the smallest margin at which the accepted
    leave-one-out answers are wrong at most `max_risk` of the time; figures go to `r.calibration`."""
    r.margin_threshold = None  # decide without the rule being calibrated
    rows = [x for x in leave_one_out(r) if x["in_domain"]]
    if not rows:
        r.margin_threshold = MIN_MARGIN
        r.calibration = {"left_out": 0, "note": "no category has two references: margin threshold not calibrated"}
        return r.calibration
    ok = [x["guess"] == x["truth"] for x in rows]
    margins = [x["margin"] for x in rows]
    t = calibrate_margin(margins, ok, max_risk)
    r.margin_threshold = t
    accepted = [m >= t for m in margins]
    kept = [o for o, a in zip(ok, accepted) if a]
    r.calibration = {
        "left_out": len(rows),
        "max_risk": max_risk,
        "margin_threshold": t,
        "top1": float(np.mean(ok)),
        "top1_global": float(np.mean([x["global_guess"] == x["truth"] for x in rows])),
        "unknown_rate": 1.0 - float(np.mean(accepted)),
        "accuracy_accepted": float(np.mean(kept)) if kept else None,
    }
    return r.calibration
