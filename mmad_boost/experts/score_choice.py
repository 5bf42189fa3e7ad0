"""Choosing how PatchCore turns patch scores into an image score, from training data only.

Candidates (`Candidate`): the mean of the top `topk` fraction of patch scores for a few fractions
(0 = the single largest, the paper's), and the maximum of the patch-score grid after a Gaussian
blur of 1 or 2 patches (a defect a few patches wide outscores one noisy patch), and the scan over
blur widths 0-4 standardised by the normals (patch_scores.scan_score: region-size-aware). Each is judged at
the expert's target false-mark rate: its image threshold comes from the training normals'
leave-one-out patch-score grids (kept from calibration), and it is credited with the labelled
training defects scoring above that threshold. The best candidate wins; ties keep the configured
rule, then prefer the larger mean score-to-threshold ratio on the defects. With no defects there
is nothing to choose by, and nothing changes: the test split is never consulted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MmadError
from .base import NormalScores, conformal_threshold
from .patch_scores import SCAN_SIGMAS, knn_patch_scores, patch_image_score, scan_null


@dataclass(frozen=True)
class Candidate:
    rule: str = "topk"  # patchcore.IMAGE_SCORES
    topk: float = 0.001  # used by topk
    sigma: float = 1.0  # used by blur-max, in patches

    def score(self, patch: np.ndarray, null=None) -> float:
        return patch_image_score(patch, self.rule, self.topk, self.sigma, null)

    def label(self) -> str:
        if self.rule == "topk":
            return f"top {100 * self.topk:g} %" if self.topk > 0 else "largest patch"
        if self.rule == "scan":
            return "scan over blur widths " + ", ".join(f"{s:g}" for s in SCAN_SIGMAS)
        return f"blur-max sigma {self.sigma:g}"


TOPK_CANDIDATES = tuple(Candidate("topk", k) for k in (0.0, 0.001, 0.005, 0.01))
CANDIDATES = TOPK_CANDIDATES + (Candidate("blur-max", sigma=1.0), Candidate("blur-max", sigma=2.0), Candidate("scan"))


def configured(expert) -> Candidate:
    if expert.image_score == "topk":
        return Candidate("topk", expert.topk)
    if expert.image_score == "scan":
        return Candidate("scan")
    return Candidate(expert.image_score, expert.topk, expert.image_score_sigma)


def _same(a: Candidate, b: Candidate) -> bool:
    if a.rule != b.rule:
        return False
    return a.topk == b.topk if a.rule == "topk" else a.rule == "scan" or a.sigma == b.sigma


def choose_image_score(expert, defects: list, candidates=CANDIDATES) -> list[dict]:
    """Set `expert`'s image-score rule to the candidate that catches most `defects` (PIL images) at
    the target rate, recalibrate from the stored normal patch scores, and return the comparison
    (one row per candidate, the configured rule always among them)."""
    normal = getattr(expert, "_calibration_patches", None)
    if not normal or expert.normals is None:
        raise MmadError("choosing the image score needs a patchcore just fitted and calibrated on all normals (fit_and_calibrate without hold-out)")
    if getattr(expert, "reweight", False):
        raise MmadError("patchcore reweight=True fixes the image score (paper eq. 7); choose the image score without it")
    if not defects:
        return []
    feats = expert.features(list(defects))
    n, h, w, c = feats.shape
    defect_patches = [knn_patch_scores(expert._index, np.ascontiguousarray(f.reshape(-1, c)), expert.knn)[0].reshape(h, w) for f in feats]
    now = configured(expert)
    pool = list(candidates) + ([] if any(_same(now, k) for k in candidates) else [now])
    rate, rows = expert.normals.false_marks, []
    # the scan's per-width statistics, from the same left-out normal grids (only when the scan competes)
    null = scan_null(normal) if any(c.rule == "scan" for c in pool) else None
    for cand in pool:
        t = conformal_threshold([cand.score(p, null) for p in normal], rate)
        d = np.array([cand.score(p, null) for p in defect_patches])
        rows.append(
            {
                "image_score": cand.rule,
                "topk": cand.topk if cand.rule == "topk" else None,
                "image_score_sigma": cand.sigma if cand.rule == "blur-max" else None,
                "threshold": t,
                "caught": int((d > t).sum()),
                "defects": len(d),
                "mean_ratio": float(np.mean(d / t)) if t > 0 else None,
                "configured": _same(cand, now),
                "label": cand.label(),
                "_candidate": cand,
            }
        )
    best = max(rows, key=lambda r: (r["caught"], r["configured"], r["mean_ratio"] or 0.0))
    for r in rows:
        r["chosen"] = r is best
    won = best["_candidate"]
    expert.image_score, expert.image_score_sigma = won.rule, won.sigma if won.rule == "blur-max" else expert.image_score_sigma
    if won.rule == "topk":
        expert.topk = won.topk
    expert.image_score_null = null if won.rule == "scan" else None
    old = expert.normals
    expert.calibrate_from(NormalScores([won.score(p, null) for p in normal], old.map_max, old.method, old.false_marks, old.margin))
    for r in rows:
        del r["_candidate"]
    return rows


def choose_topk(expert, defects: list) -> list[dict]:
    """The top-k fraction only (the chooser before blur-max existed): `choose_image_score` on TOPK_CANDIDATES."""
    return choose_image_score(expert, defects, TOPK_CANDIDATES)
