"""Choosing how PatchCore turns patch scores into an image score, from training data only.

Candidates: the mean of the top `topk` fraction of patch scores, for a few fractions (0 = the
single largest, the paper's). Each is judged at the expert's target false-mark rate: its image
threshold comes from the training normals' leave-one-out patch scores (kept from calibration),
and it is credited with the labelled training defects scoring above that threshold. The best
candidate wins; ties keep the configured rule, then prefer the larger mean score-to-threshold
ratio on the defects. With no defects there is nothing to choose by, and nothing changes: the
test split is never consulted.
"""
from __future__ import annotations

import numpy as np

from ..errors import MmadError
from .base import NormalScores, conformal_threshold
from .patchcore import knn_patch_scores, top_mean

CANDIDATES = (0.0, 0.001, 0.005, 0.01)


def choose_topk(expert, defects: list, candidates=CANDIDATES) -> list[dict]:
    """Set `expert.topk` to the candidate that catches most `defects` (PIL images) at the target rate,
    recalibrate from the stored normal patch scores, and return the comparison (one row per candidate)."""
    normal = getattr(expert, "_calibration_patches", None)
    if not normal or expert.normals is None:
        raise MmadError("choosing the image score needs a patchcore just fitted and calibrated on all normals (fit_and_calibrate without hold-out)")
    if getattr(expert, "reweight", False):
        raise MmadError("patchcore reweight=True fixes the image score (paper eq. 7); choose the image score without it")
    if not defects:
        return []
    feats = expert.features(list(defects))
    c = feats.shape[-1]
    defect_patches = [knn_patch_scores(expert._index, np.ascontiguousarray(f.reshape(-1, c)), expert.knn)[0] for f in feats]
    rate, rows = expert.normals.false_marks, []
    for k in sorted(set(candidates) | {expert.topk}):
        t = conformal_threshold([top_mean(p, k) for p in normal], rate)
        d = np.array([top_mean(p, k) for p in defect_patches])
        rows.append({"topk": k, "threshold": t, "caught": int((d > t).sum()), "defects": len(d),
                     "mean_ratio": float(np.mean(d / t)) if t > 0 else float("nan"), "configured": k == expert.topk})
    best = max(rows, key=lambda r: (r["caught"], r["configured"], r["mean_ratio"]))
    for r in rows:
        r["chosen"] = r is best
    expert.topk = best["topk"]
    old = expert.normals
    expert.calibrate_from(NormalScores([top_mean(p, expert.topk) for p in normal], old.map_max, old.method, old.false_marks, old.margin))
    return rows
