"""bench_calibration.py's pooled ROC reference and its bootstrap: the threshold choice against the
plain ROC count, resample weights against explicit resamples, and a pool where per-fold thresholds
beat the single pooled one."""

import sys
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_calibration import best_allowed, pooled_reference  # noqa: E402

scores = st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=1, max_size=12)


def _table(normal, defect):
    """Candidates as pooled_reference builds them; a defect hit exactly when it scores above t."""
    cands = np.concatenate([[-np.inf], np.nextafter(np.unique(normal), np.inf)])
    return normal[:, None] > cands[None], defect[:, None] > cands[None], cands


@settings(max_examples=200, deadline=None)
@given(scores, scores, st.integers(0, 13))
def test_best_allowed_is_the_roc_count_at_that_many_false_marks(normal, defect, max_false):
    normal, defect = np.array(normal, float), np.array(defect, float)
    above, hits, _ = _table(normal, defect)
    best, _ = best_allowed(above, hits, np.ones(len(normal)), np.ones(len(defect)), max_false)
    ranked = np.sort(normal)[::-1]
    t = np.nextafter(ranked[max_false], np.inf) if max_false < len(normal) else -np.inf
    assert best[0] == int((defect > t).sum())


@settings(max_examples=100, deadline=None)
@given(scores, scores, st.integers(0, 2**32 - 1))
def test_resample_weights_equal_the_explicit_resample(normal, defect, seed):
    normal, defect = np.array(normal, float), np.array(defect, float)
    rng = np.random.default_rng(seed)
    dn, dd = rng.integers(0, len(normal), len(normal)), rng.integers(0, len(defect), len(defect))
    marked = normal > np.median(normal)  # any fixed per-item marks
    above, hits, _ = _table(normal, defect)
    wn, wd = np.bincount(dn, minlength=len(normal)), np.bincount(dd, minlength=len(defect))
    fm = int(wn @ marked)
    weighted, _ = best_allowed(above, hits, wn, wd, fm)
    # the same reference on the resampled images themselves, candidates from the full pool
    above_r, hits_r = above[dn], hits[dd]
    allowed = above_r.sum(axis=0) <= fm
    assert weighted[0] == hits_r.sum(axis=0)[allowed].max()


def _item(score, mask=None):
    from mmad_boost.experts.operating import Scored

    amap = np.zeros((60, 60), np.float32)
    amap[20:30, 20:30] = score
    return Scored("k", Image.new("RGB", (60, 60)), amap, score, mask, 0.0 if mask is None else float(mask.mean()))


def test_per_fold_thresholds_can_beat_the_single_pooled_one():
    from mmad_boost.experts.operating import _marks, counts

    truth = np.zeros((60, 60), bool)
    truth[22:28, 22:28] = True
    pool = []
    # fold 0 scores low, fold 1 high (two fitted models): each fold's own threshold sits above its normals
    for normals, defects, image_t in (([1.0, 3.0], [4.0, 2.0], 3.5), ([10.0, 12.0], [13.0, 11.0], 12.5)):
        items = [_item(s) for s in normals] + [_item(s, truth) for s in defects]
        fm, hits, _ = counts(items, "bbox", image_t, 0.5)
        marks = [_marks(it, "bbox", image_t, 0.5) for it in items]
        curve = {0.1: {"false_marks": fm, "hits": hits, "pixel_threshold": 0.5}}
        pool.append({"items": items, "curve": curve, "normal_marked": [m[0] for m in marks[:2]], "hit": [m[1] for m in marks[2:]]})
    out = pooled_reference(pool, 0.1, "bbox", np.random.default_rng(0))
    row = out["targets"][0.1]
    assert (row["false_marks"], row["hits"]) == (0, 2)  # 4.0 and 13.0, no normal marked
    assert row["pooled_best_hits"] == 1 and row["pooled_threshold"] == np.nextafter(12.0, np.inf)  # one threshold: above 12
    assert out["gap"] == -1 and len(out["gap_resamples"]) == 1000
    lo, hi = out["gap_interval"]
    assert -4 <= lo <= -1 <= hi <= 4  # 4 defect items weighted in all: the gap cannot leave [-4, 4]
