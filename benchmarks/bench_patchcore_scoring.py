"""PatchCore scoring rules on identical features: which patch and image score separates best.

Features of the bundled VisA sample are computed once (our patchcore's backbone and size); each
fold x seed then gets a coreset from our `greedy_coreset` and, with `--coresets ours anomalib`,
from anomalib's own `KCenterGreedy` (seeded through torch and numpy, as bench_experts.py does),
and every scoring rule is applied to the same banks:
- patch score: mean distance to the `knn` nearest bank entries (1 = the paper's);
- image score: the largest patch score (the paper's; eq. 7 adds nothing here, its weight is 1),
  or the mean of the top fraction of patch scores.
Reports image AUROC (standard split and the 5-fold rotation of bench_experts.py) and the share of
defects scoring above every test normal of their fold (what a threshold at the normals' maximum,
the calibration rule, would catch). Coresets are cached in --cache: anomalib's take minutes each.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_patchcore_scoring.py [--categories fryum capsules]
        [--size 384] [--seeds 3] [--coresets ours anomalib] [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench_experts import fold_test_normals, seed_anomalib  # noqa: E402  (same folds and seeding)

RULES = [(1, 0.0), (1, 0.01), (1, 0.001), (3, 0.0), (3, 0.01), (3, 0.001)]  # (knn, topk)


def coreset(side: str, flat: np.ndarray, seed: int) -> np.ndarray:
    import torch

    n = int(len(flat) * 0.1)
    if side == "ours":
        from mmad_boost.experts.patchcore import greedy_coreset

        return greedy_coreset(flat, n, seed=seed)
    from anomalib.models.components.sampling.k_center_greedy import KCenterGreedy

    from mmad_boost.experts.anomalib_adapter import _quiet

    _quiet()  # its progress bar
    seed_anomalib(seed)
    return np.array(KCenterGreedy(torch.from_numpy(np.ascontiguousarray(flat)), 0.1).select_coreset_idxs()[:n])


def run(category: str, size: int, seeds: int, sides: list[str], cache: Path) -> dict:
    import faiss
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from mmad_boost.experts import create_expert
    from mmad_boost.experts.patch_scores import knn_patch_scores, top_mean
    from mmad_boost.experts.sample import visa_split

    split = visa_split(category)
    normals = split.train + split.test_normal  # the standard test normals last, as in bench_experts.py
    n_normal, n_test = len(normals), len(split.test_normal)
    paths = normals + [p for p, _ in split.test_anomaly]
    feats = create_expert("patchcore", size=size).features([Image.open(p).convert("RGB") for p in paths])
    n_img, h, w, c = feats.shape
    results = {}
    for fold in range(5):
        test_normals = fold_test_normals(n_normal, n_test, fold)
        train = [i for i in range(n_normal) if i not in test_normals]
        tests = test_normals + list(range(n_normal, n_img))
        flat = feats[train].reshape(-1, c)
        for side in sides:
            for seed in range(seeds):
                file = cache / f"{category}-{size}-{side}-fold{fold}-seed{seed}.npy"
                if not file.is_file():
                    t0 = time.perf_counter()
                    np.save(file, coreset(side, flat, seed))
                    print(f"  {category} {side} fold {fold} seed {seed}: coreset {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
                bank = flat[np.load(file)].astype(np.float16).astype(np.float32)  # as a saved expert holds it
                index = faiss.IndexFlatL2(c)
                index.add(np.ascontiguousarray(bank))
                patch = {knn: [knn_patch_scores(index, np.ascontiguousarray(feats[t].reshape(-1, c)), knn)[0] for t in tests] for knn in (1, 3)}
                for knn, topk in RULES:
                    s = np.array([top_mean(p, topk) for p in patch[knn]])
                    r = results.setdefault((side, knn, topk), {"std": [], "folds": [], "caught": []})
                    auroc = roc_auc_score([0] * n_test + [1] * (len(tests) - n_test), s)
                    r["folds"].append(auroc)
                    r["caught"].append(float((s[n_test:] > s[:n_test].max()).mean()))
                    if fold == 0:
                        r["std"].append(auroc)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", nargs="+", default=["fryum", "capsules"])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--coresets", nargs="+", default=["ours"], choices=["ours", "anomalib"])
    ap.add_argument("--cache", help="folder for coreset indices (default: a temporary folder)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = None if args.cache else tempfile.TemporaryDirectory()
    cache = Path(args.cache or tmp.name)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"{args.size} px, {args.seeds} coreset seeds x 5 folds; caught = defects above every test normal of the fold")
    hdr = f"{'category':9} {'coreset':9} {'knn':>3} {'image score':14} {'AUROC std':>9} {'5-fold':>7} {'caught':>7}"
    print(hdr + "\n" + "-" * len(hdr))
    for cat in args.categories:
        for (side, knn, topk), r in run(cat, args.size, args.seeds, args.coresets, cache).items():
            rule = "max" if topk == 0 else f"top {100 * topk:g} %"
            print(f"{cat:9} {side:9} {knn:>3} {rule:14} {np.mean(r['std']):9.3f} {np.mean(r['folds']):7.3f} {np.mean(r['caught']):7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
