"""Does calibration score a training normal as a new normal would be scored? Per image, on the sample.

PatchCore calibrates on leave-one-out scores: each training normal against the fitted coreset minus
the entries drawn from it (experts/patchcore.py `fit_and_score_normals`). A new normal is scored
against the whole coreset. If the two differed on average, the calibrated false-mark rate would
miss its target whatever the sample size. Over the 5 folds of bench_experts.py (the 25 normals of a
category, 5 at a time in the test set, the other 20 fitted), every normal is a test image once and
a training image four times, so each has its test score and four leave-one-out scores. The
difference (mean leave-one-out score - test score) is averaged over the 25 images, with a bootstrap
interval over images (2000 resamples, seed 0). For comparison, the same with 5-fold refits (a new
coreset on 16 of the 20, each held-out image scored against it: fewer images in the bank).
Also printed: the category's largest normal scores, which decide a 10 % threshold from 20 normals.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_loo_vs_test.py [--categories capsules fryum] [--no-kfold]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_experts' fold rotation


def image_score(expert, index, feats: np.ndarray) -> float:
    from mmad_boost.experts.patch_scores import knn_patch_scores, patch_image_score

    h, w, c = feats.shape
    scores, _ = knn_patch_scores(index, np.ascontiguousarray(feats.reshape(-1, c)), expert.knn)
    return patch_image_score(scores.reshape(h, w), expert.image_score, expert.topk, expert.image_score_sigma)


def coreset_bank(expert, feats: np.ndarray, members: list[int]):
    """(bank, owner image of each entry) fitted on `members` (PatchCore's own bank building)."""
    bank, owner = expert.bank_from_features(feats[members])
    return bank, np.asarray(members)[owner]


def category_study(cat: str, folds: int, kfold: bool) -> dict:
    from PIL import Image

    from bench_experts import fold_test_normals
    from mmad_boost.experts import create_expert
    from mmad_boost.experts.sample import visa_split

    split = visa_split(cat)
    paths = split.train + split.test_normal
    expert = create_expert("patchcore")
    feats = expert.features([Image.open(p).convert("RGB") for p in paths])
    n = len(paths)
    test_score, loo, refit = {}, {i: [] for i in range(n)}, {i: [] for i in range(n)}
    for fold in range(folds):
        t0 = time.time()
        test = fold_test_normals(n, len(split.test_normal), fold)
        train = [i for i in range(n) if i not in test]
        bank, owner = coreset_bank(expert, feats, train)
        whole = expert._index_of(bank)
        for i in test:
            test_score[i] = image_score(expert, whole, feats[i])
        for i in train:
            loo[i].append(image_score(expert, expert._index_of(bank[owner != i]), feats[i]))
        if kfold:
            for k in range(5):
                held = train[k::5]
                part, _ = coreset_bank(expert, feats, [i for i in train if i not in held])
                index = expert._index_of(part)
                for i in held:
                    refit[i].append(image_score(expert, index, feats[i]))
        print(f"  {cat} fold {fold}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    rng = np.random.default_rng(0)
    out = {"category": cat, "images": n, "largest": sorted((round(s, 2), paths[i].name) for i, s in test_score.items())[-3:]}
    for name, scores in (("leave-one-out", loo), ("5-fold refit", refit)):
        if not kfold and name != "leave-one-out":
            continue
        diff = np.array([np.mean(scores[i]) - test_score[i] for i in range(n)])
        boot = [diff[rng.integers(0, n, n)].mean() for _ in range(2000)]
        out[name] = {"mean_difference": float(diff.mean()), "interval": [float(v) for v in np.percentile(boot, [2.5, 97.5])]}
    out["test_score_sd"] = float(np.std(list(test_score.values()), ddof=1))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", nargs="+", default=["capsules", "fryum"])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--no-kfold", action="store_true", help="skip the 5-fold refit comparison (the slow part: a coreset per refit)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    rows = [category_study(cat, args.folds, not args.no_kfold) for cat in args.categories]
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; patchcore defaults; {args.folds} folds; mean (calibration score - test score) per normal image"
    )
    for r in rows:
        for name in ("leave-one-out", "5-fold refit"):
            if name in r:
                lo, hi = r[name]["interval"]
                print(f"{r['category']:9} {name:14} {r[name]['mean_difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]  (sd of the test scores {r['test_score_sd']:.3f})")
        print(f"{r['category']:9} largest test scores of its {r['images']} normals: " + ", ".join(f"{s} ({name})" for s, name in r["largest"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
