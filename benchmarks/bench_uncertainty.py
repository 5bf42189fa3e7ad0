"""How fast the bootstrap intervals are on an MMAD-size run, against the obvious loop.

A synthetic record set the size of MMAD (4 datasets, about 8,400 images, about 47k questions;
per-image difficulty shared by its questions). Measured side by side in one process:
- vectorised: `uncertainty.score_intervals` and `paired_delta_intervals`, 1,000 replicates;
- anchor: the loop a user would write: per replicate, draw images per dataset, rebuild the record
  list and call `scoring.score_records` (timed on a few replicates, scaled to 1,000).
Also checks that the anchor's interval and ours agree (same estimator, different random draws).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_uncertainty.py [--images-per-dataset 2092] [--anchor-replicates 10]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmad_boost.protocol.scoring import score_records  # noqa: E402
from mmad_boost.reporting.uncertainty import paired_delta_intervals, score_intervals  # noqa: E402

DATASETS = ("MVTec-AD", "MVTec-LOCO", "VisA", "GoodsAD")
TYPES = ("Defect Classification", "Defect Localization", "Defect Description", "Defect Analysis")


def records(n_per_dataset: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for ds in DATASETS:
        for i in range(n_per_dataset):
            normal = i % 3 == 0
            key = f"{ds}/c/test/{'good' if normal else 'bad'}/{i:05d}.png"
            a = rng.beta(4, 3)
            qs = ["Anomaly Detection", "Object Classification", "Object Structure"] + ([] if normal else list(TYPES))
            for j, t in enumerate(qs):
                out.append({"qid": f"{key}#{j}", "image": key, "question_type": t, "correct_answer": "A", "gpt_answer": "A" if rng.random() < a else "B"})
    return out


def anchor(recs: list[dict], n_boot: int, seed: int = 0) -> list[float]:
    """The loop: resample images per dataset, rebuild the records, score with MMAD's scorer."""
    rng = random.Random(seed)
    by_image = defaultdict(list)
    for r in recs:
        by_image[r["image"]].append(r)
    strata = defaultdict(list)
    for img in by_image:
        strata[img.split("/")[0]].append(img)
    values = []
    for b in range(n_boot):
        sample = []
        for ds, imgs in strata.items():
            for k, img in enumerate(rng.choices(imgs, k=len(imgs))):
                sample += [dict(r, qid=f"{r['qid']}@{b}.{k}") for r in by_image[img]]
        values.append(score_records(sample).rows["Average"]["Average"])
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images-per-dataset", type=int, default=2092, help="images per dataset (default 2092: about MMAD's 8,366 in all)")
    ap.add_argument("--anchor-replicates", type=int, default=10, help="replicates the anchor loop is timed on (default 10)")
    args = ap.parse_args()
    recs = records(args.images_per_dataset)
    other = [dict(r, gpt_answer="A" if (r["gpt_answer"] == "A") != (hash(r["qid"]) % 10 == 0) else "B") for r in recs]
    print(f"{len(recs)} questions on {len({r['image'] for r in recs})} images, 4 datasets")

    t0 = time.perf_counter()
    iv = score_intervals(recs, n_boot=1000)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    paired_delta_intervals(recs, other, n_boot=1000)
    t_paired = time.perf_counter() - t0
    t0 = time.perf_counter()
    vals = anchor(recs, args.anchor_replicates)
    t_anchor = (time.perf_counter() - t0) / args.anchor_replicates * 1000
    print(f"score_intervals, 1000 replicates:        {t_ours:7.2f} s")
    print(f"paired_delta_intervals, 1000 replicates: {t_paired:7.2f} s")
    print(f"anchor loop (score_records per replicate), scaled to 1000 from {args.anchor_replicates}: {t_anchor:7.1f} s")
    print(f"speed-up: {t_anchor / t_ours:.0f}x")
    lo, hi = iv.get("Average", "Average")
    print(
        f"Average {iv.point['Average']['Average']:.2f}, ours [{lo:.2f}, {hi:.2f}]; anchor replicates range "
        f"[{min(vals):.2f}, {max(vals):.2f}] (sd ours {(hi - lo) / 3.92:.3f}, anchor {np.std(vals, ddof=1):.3f})"
    )


if __name__ == "__main__":
    main()
