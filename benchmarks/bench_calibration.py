"""Faithful vs calibrated expert pictures on the bundled VisA sample, through the CLI a user runs.

For each category and each PatchCore setting: `mmad-boost expert fit` (15 training normals fitted,
5 held out for calibration), then `mmad-boost expert eval --json` in faithful and in calibrated
mode. Prints image/pixel AUROC, the false-mark rate (normal test images on which the picture marks
anything) and the hit rate (defective test images with a mark on the true mask), per category and
pooled over both.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_calibration.py [--sizes 256 448] [--viz bbox] [--json FILE]

With `--folds K` it instead measures calibration by cross-validation over the sample's images: the
25 normals of a category rotate, 5 at a time, into the test set (bench_experts.py's folds; fold 0
= the standard split); each fold fits on the other 20 and calibrates on those same 20 (leave-one-
out, at `--false-marks`), then counts false marks on its 5 test normals and hits on the 15
defects, beside the best single threshold chosen on that fold's test scores with no more false
marks (the ROC's best, which peeks at the test labels). Nothing is tuned on any test fold.

Two references, both chosen on the test labels. "Per-fold best" is that per-fold threshold; with 5
test normals its no-false-mark threshold sits just above their largest (about their 83rd
percentile), which flatters it. "Pooled best" pools all folds' test items (each normal tested
once, each defect once per fold) and takes the best single image threshold with at most our total
false marks, each defect drawn with its own fold's pixel threshold (capped at the image threshold,
as operating.best_fixed): the category's cross-validated ROC at our false-mark count (the fold
models' scores taken as one scale, as a pooled ROC does). A reference picked on the test labels
is optimistic: per fold it is >= ours by construction, pooled almost always (ours can beat it only
by its per-fold thresholds), so a positive gap alone shows no loss. What tells a real loss is the
gap's bootstrap interval at the calibrated target (1000 resamples, seed 0: a category's normals
and its defects resampled, a defect's fold copies together, the reference re-chosen on each
resample with that resample's own false marks): an interval that reaches 0 shows none measurable.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_calibration.py --folds 5 [--false-marks 0.1] [--json FILE]

With `--folds K --choose` it measures the image-score chooser (experts/score_choice.py): the 15
defects of a category rotate too (defect i is tested in fold i mod K), so each fold has labelled
training defects (the other 12) to choose by, and every defect is tested once. Three arms on the
same fitted bank per fold: the fixed default (top 0.1 %), the chooser over top-k fractions only
(the earlier chooser), and the chooser over all candidates (top-k and blurred-map maxima). Each
arm counts false marks on the fold's 5 test normals and hits on its 3 test defects at the target,
beside the best fixed threshold on those test scores with no more false marks.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_calibration.py --folds 5 --choose [--categories capsules]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_experts' fold rotation


def cli(argv: list[str]) -> str:
    """Run `mmad-boost ARGV` in this process, quietly; what it printed to stdout."""
    from mmad_boost.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        rc = main(argv)
    if rc != 0:
        raise SystemExit(f"mmad-boost {' '.join(argv)} exited {rc}")
    return buf.getvalue()


def cli_json(argv: list[str]) -> dict:
    """The JSON object `mmad-boost ARGV` prints last."""
    return json.loads(cli(argv).strip().splitlines()[-1])


def fold_study(categories: list[str], folds: int, false_marks: float, viz: str, options: dict) -> tuple[list[dict], dict]:
    from PIL import Image

    from bench_experts import fold_test_normals
    from mmad_boost.experts import create_expert
    from mmad_boost.experts.base import fit_and_calibrate
    from mmad_boost.experts.operating import TARGETS, best_fixed, item_marks, scored, tally
    from mmad_boost.experts.sample import visa_split

    rows, pooled, rng = [], {}, np.random.default_rng(0)
    for cat in categories:
        pool = []  # per fold: its test items and, at the calibrated target, each item's mark
        split = visa_split(cat)
        normals = split.train + split.test_normal  # the standard test normals last
        load = lambda p: Image.open(p).convert("RGB")  # noqa: E731
        images = [load(p) for p in normals]
        defects = [(load(p), np.asarray(Image.open(m)) > 0, p.name) for p, m in split.test_anomaly]
        for fold in range(folds):
            test = fold_test_normals(len(normals), len(split.test_normal), fold)
            expert = create_expert("patchcore", **options)
            fit_and_calibrate(expert, [im for i, im in enumerate(images) if i not in test], false_marks=false_marks)
            outs = expert.predict_batch([images[i] for i in test] + [d[0] for d in defects])
            items = [scored(normals[i].name, images[i], o.map, o.score, None, expert.resample) for i, o in zip(test, outs)]
            items += [scored(name, im, o.map, o.score, mask, expert.resample) for (im, mask, name), o in zip(defects, outs[len(test) :])]
            curve = {}
            for target in sorted(set(TARGETS) | {false_marks}):
                expert.set_false_marks(target)
                marks = item_marks(items, viz, expert.image_threshold, expert.pixel_threshold)
                if target == false_marks:
                    at_target = marks  # per item, for the bootstrap
                fm, hits, missed = tally(items, marks)
                curve[target] = {
                    "false_marks": fm,
                    "hits": hits,
                    "best_fixed_hits": best_fixed(items, viz, fm, expert.pixel_threshold),
                    "missed_areas": [round(m.area, 6) for m in missed],
                    "image_threshold": expert.image_threshold,
                    "pixel_threshold": expert.pixel_threshold,
                }
            pool.append(
                {"items": items, "curve": curve, "normal_marked": [m[0] for m in at_target[: len(test)]], "hit": [m[1] for m in at_target[len(test) :]]}
            )
            rows.append({"category": cat, "fold": fold, "normal": len(test), "defective": len(defects), "curve": curve})
            c = curve[false_marks]
            print(
                f"  {cat} fold {fold}: false marks {c['false_marks']}/{len(test)}, hits {c['hits']}/{len(defects)}, "
                f"per-fold best {c['best_fixed_hits']}/{len(defects)}",
                file=sys.stderr,
                flush=True,
            )
        pooled[cat] = pooled_reference(pool, false_marks, viz, rng)
        print(f"  {cat} pooled: {pooled[cat]['targets'][false_marks]}", file=sys.stderr, flush=True)
    pooled["both"] = pooled_both(pooled)
    return rows, pooled


RESAMPLES = 1000


def hit_table(pool: list[dict], target: float, candidates, viz: str):
    """Hit (bool) of every pooled defect item (fold-major) at every candidate image threshold t,
    its pixels drawn above min(its fold's pixel threshold at `target`, t), as operating.best_fixed."""
    from mmad_boost.experts.operating import _marks, capped_pixel_threshold

    rows = []
    for fold in pool:
        px = fold["curve"][target]["pixel_threshold"]
        for it in (it for it in fold["items"] if it.mask is not None):
            memo, row = {}, []
            for t in candidates:
                p = capped_pixel_threshold(px, t)
                if not it.score > t:  # judged normal: nothing drawn, no hit (skips the render)
                    row.append(False)
                    continue
                if p not in memo:  # above its pixel threshold every t draws the same picture
                    memo[p] = _marks(it, viz, t, p)[1]
                row.append(memo[p])
            rows.append(row)
    return np.array(rows, bool)


def best_allowed(above, hits, w_normal, w_defect, max_false):
    """Per weighting (rows of w_*): the most weighted hits of any candidate threshold with at most
    `max_false` weighted normals above it (the top candidate always qualifies), and that candidate's index."""
    n_above = np.atleast_2d(w_normal) @ above  # (resamples, candidates)
    n_hits = np.atleast_2d(w_defect) @ hits
    allowed = np.where(n_above <= np.reshape(max_false, (-1, 1)), n_hits, -1)
    best = allowed.argmax(axis=1)
    return np.take_along_axis(allowed, best[:, None], axis=1)[:, 0], best


def pooled_reference(pool: list[dict], false_marks: float, viz: str, rng) -> dict:
    """The category's pooled ROC reference per target, and at the calibrated target the bootstrap
    of (pooled best hits - our hits) over the category's normal and defect images."""
    scores = np.array([it.score for fold in pool for it in fold["items"] if it.mask is None])
    candidates = np.concatenate([[-np.inf], np.nextafter(np.unique(scores), np.inf)])
    above = scores[:, None] > candidates[None, :]  # (normals, candidates)
    n_normal, n_items = len(scores), sum(it.mask is not None for fold in pool for it in fold["items"])
    ones_n, ones_d = np.ones(n_normal), np.ones(n_items)
    out, tables = {"normal": n_normal, "defective": n_items, "targets": {}}, {}
    for target in pool[0]["curve"]:
        fm = sum(fold["curve"][target]["false_marks"] for fold in pool)
        tables[target] = hit_table(pool, target, candidates, viz)
        best, j = (int(v[0]) for v in best_allowed(above, tables[target], ones_n, ones_d, fm))
        lowest = int(np.flatnonzero(above.sum(axis=0) <= fm)[0])  # operating.best_fixed's pick; differs only if hits are not monotone
        out["targets"][target] = {
            "false_marks": fm,
            "hits": sum(fold["curve"][target]["hits"] for fold in pool),
            "pooled_best_hits": best,
            "pooled_threshold": float(candidates[j]) if np.isfinite(candidates[j]) else None,  # None: below every score
            "pooled_lowest_allowed_hits": int(tables[target][:, lowest].sum()),
        }
    # bootstrap at the calibrated target: images resampled, a defect's fold copies together
    marked = np.array([m for fold in pool for m in fold["normal_marked"]], float)
    hit = np.array([h for fold in pool for h in fold["hit"]], float)
    n_defects = n_items // len(pool)
    wn = np.stack([np.bincount(rng.integers(0, n_normal, n_normal), minlength=n_normal) for _ in range(RESAMPLES)]).astype(float)
    wd = np.stack([np.bincount(rng.integers(0, n_defects, n_defects), minlength=n_defects) for _ in range(RESAMPLES)]).astype(float)
    wd = np.tile(wd, (1, len(pool)))  # fold-major items: defect d of fold f is column f * n_defects + d
    ours_fm, ours_hits = wn @ marked, wd @ hit
    gaps = (best_allowed(above, tables[false_marks], wn, wd, ours_fm)[0] - ours_hits).astype(int)
    c = out["targets"][false_marks]
    assert c["hits"] == int(hit.sum()) and c["false_marks"] == int(marked.sum()), "per-item marks disagree with counts"
    out["gap"] = c["pooled_best_hits"] - c["hits"]
    out["gap_resamples"] = gaps.tolist()
    out["gap_interval"] = [float(v) for v in np.percentile(gaps, [2.5, 97.5])]
    return out


def pooled_both(pooled: dict) -> dict:
    """Both categories: sums of the per-category references (each category its own threshold;
    scores of two categories are not on one scale), the gap's resamples summed pairwise."""
    cats = list(pooled.values())
    targets = {t: {k: sum(c["targets"][t][k] for c in cats) for k in ("false_marks", "hits", "pooled_best_hits")} for t in cats[0]["targets"]}
    gaps = np.sum([c["gap_resamples"] for c in cats], axis=0)
    return {
        "normal": sum(c["normal"] for c in cats),
        "defective": sum(c["defective"] for c in cats),
        "targets": targets,
        "gap": sum(c["gap"] for c in cats),
        "gap_resamples": gaps.tolist(),
        "gap_interval": [float(v) for v in np.percentile(gaps, [2.5, 97.5])],
    }


def choice_study(categories: list[str], folds: int, false_marks: float, viz: str, options: dict) -> list[dict]:
    import copy

    from PIL import Image

    from bench_experts import fold_test_normals
    from mmad_boost.experts import create_expert
    from mmad_boost.experts.base import fit_and_calibrate
    from mmad_boost.experts.operating import best_fixed, counts, scored
    from mmad_boost.experts.sample import visa_split
    from mmad_boost.experts.score_choice import CANDIDATES, TOPK_CANDIDATES, choose_image_score

    arms = {"fixed default": None, "chooser, top-k only": TOPK_CANDIDATES, "chooser, all": CANDIDATES}
    rows = []
    for cat in categories:
        split = visa_split(cat)
        normals = split.train + split.test_normal
        load = lambda p: Image.open(p).convert("RGB")  # noqa: E731
        images = [load(p) for p in normals]
        defects = [(load(p), np.asarray(Image.open(m)) > 0, p.name) for p, m in split.test_anomaly]
        for fold in range(folds):
            test = fold_test_normals(len(normals), len(split.test_normal), fold)
            test_defects = [d for i, d in enumerate(defects) if i % folds == fold]
            train_defects = [d[0] for i, d in enumerate(defects) if i % folds != fold]
            expert = create_expert("patchcore", **options)
            fit_and_calibrate(expert, [im for i, im in enumerate(images) if i not in test], false_marks=false_marks)
            start = (expert.image_score, expert.topk, expert.image_score_sigma, copy.deepcopy(expert.normals))
            for arm, candidates in arms.items():
                expert.image_score, expert.topk, expert.image_score_sigma = start[:3]
                expert.calibrate_from(copy.deepcopy(start[3]))
                table = choose_image_score(expert, train_defects, candidates) if candidates else []
                outs = expert.predict_batch([images[i] for i in test] + [d[0] for d in test_defects])
                items = [scored(normals[i].name, images[i], o.map, o.score, None, expert.resample) for i, o in zip(test, outs)]
                items += [scored(name, im, o.map, o.score, mask, expert.resample) for (im, mask, name), o in zip(test_defects, outs[len(test) :])]
                fm, hits, _ = counts(items, viz, expert.image_threshold, expert.pixel_threshold)
                chosen = next((r["label"] for r in table if r["chosen"]), "top 0.1 %")
                rows.append(
                    {
                        "category": cat,
                        "fold": fold,
                        "arm": arm,
                        "normal": len(test),
                        "defective": len(test_defects),
                        "false_marks": fm,
                        "hits": hits,
                        "best_fixed_hits": best_fixed(items, viz, fm, expert.pixel_threshold),
                        "chosen": chosen,
                        "table": table,
                    }
                )
                print(f"  {cat} fold {fold} {arm}: {chosen}; false marks {fm}/{len(test)}, hits {hits}/{len(test_defects)}", file=sys.stderr, flush=True)
    return rows


def print_choice_table(rows: list[dict]) -> None:
    hdr = f"{'category':9} {'arm':20} {'false marks':>12} {'hits':>11} {'best fixed':>11}  chosen per fold"
    print(hdr + "\n" + "-" * len(hdr))
    for cat in list(dict.fromkeys(r["category"] for r in rows)) + ["both"]:
        for arm in dict.fromkeys(r["arm"] for r in rows):
            part = [r for r in rows if r["arm"] == arm and cat in ("both", r["category"])]
            n, d = sum(r["normal"] for r in part), sum(r["defective"] for r in part)
            fm, hits, best = (sum(r[k] for r in part) for k in ("false_marks", "hits", "best_fixed_hits"))
            chosen = ", ".join(r["chosen"] for r in part) if cat != "both" else ""
            print(
                f"{cat:9} {arm:20} {fm:>3}/{n:<3} {100 * fm / n:3.0f}% {hits:>3}/{d:<3} {100 * hits / d:3.0f}% {best:>3}/{d:<3} {100 * best / d:3.0f}%  {chosen}"
            )


def print_fold_table(rows: list[dict], pooled: dict, false_marks: float) -> None:
    targets = sorted(rows[0]["curve"], key=float)
    hdr = f"{'category':9} {'target':>6} {'false marks':>13} {'hits':>12} {'per-fold best':>13} {'pooled best':>12}"
    print(hdr + "\n" + "-" * len(hdr))
    for cat in list(dict.fromkeys(r["category"] for r in rows)) + ["both"]:
        part = [r for r in rows if cat in ("both", r["category"])]
        n, d = sum(r["normal"] for r in part), sum(r["defective"] for r in part)
        for t in targets:
            fm = sum(r["curve"][t]["false_marks"] for r in part)
            hits = sum(r["curve"][t]["hits"] for r in part)
            best = sum(r["curve"][t]["best_fixed_hits"] for r in part)
            pool = pooled[cat]["targets"][t]["pooled_best_hits"]
            star = "  <- calibrated" if float(t) == false_marks else ""
            print(
                f"{cat:9} {float(t):6g} {fm:>4}/{n:<3} {100 * fm / n:3.0f}% {hits:>3}/{d:<3} {100 * hits / d:3.0f}% "
                f"{best:>4}/{d:<3} {100 * best / d:3.0f}% {pool:>3}/{d:<3} {100 * pool / d:3.0f}%{star}"
            )
    print(f"\ngap = pooled best hits - our hits at the calibrated target {false_marks:g}, bootstrap over {RESAMPLES} resamples (seed 0):")
    for cat, p in pooled.items():
        lo, hi = p["gap_interval"]
        print(f"  {cat:9} gap {p['gap']:d} [{lo:g}, {hi:g}] (95 %, images resampled)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", nargs="+", default=["fryum", "capsules"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 448], help="PatchCore input sizes to compare")
    ap.add_argument("--viz", default="bbox", choices=["bbox", "contour", "highlight", "mask"])
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="extra PatchCore option for every fit")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--folds", type=int, default=0, help="cross-validate calibration over K folds of the normals instead (default 0: off)")
    ap.add_argument("--false-marks", type=float, default=0.1, help="target false-mark rate for --folds (default 0.1)")
    ap.add_argument(
        "--choose", action="store_true", help="with --folds: measure the image-score chooser on rotating training defects (default: off, calibration only)"
    )
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.folds:
        import torch

        from mmad_boost.registry import option_pairs

        torch.set_num_threads(1)
        if args.choose:
            rows = choice_study(args.categories, args.folds, args.false_marks, args.viz, option_pairs(args.option))
            print(
                f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; patchcore defaults {args.option or ''}; {args.folds} folds: "
                f"5 test normals and 3 test defects per fold, the other 20 normals fitted and calibrated at {args.false_marks:g}, the other 12 defects to choose by"
            )
            print_choice_table(rows)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
            return 0
        rows, pooled = fold_study(args.categories, args.folds, args.false_marks, args.viz, option_pairs(args.option))
        print(
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; patchcore defaults {args.option or ''}; "
            f"{args.folds} folds x 5 test normals + 15 defects per category; calibrated at {args.false_marks:g} on each fold's 20 training normals"
        )
        print_fold_table(rows, pooled, args.false_marks)
        if args.json:
            Path(args.json).write_text(json.dumps({"folds": rows, "pooled": pooled}, indent=1, default=str))
        return 0
    from mmad_boost.demo import build_sample_bench

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")  # fresh map cache: ms/image is real inference
        with contextlib.redirect_stdout(io.StringIO()):
            build_sample_bench(Path(tmp) / "bench")
        data = str(Path(tmp) / "bench")
        for size in args.sizes:
            for cat in args.categories:
                out = str(Path(tmp) / f"pc-{cat}-{size}")
                opts = [f"--option=size={size}"] + [f"--option={o}" for o in args.option]
                cli(["expert", "fit", "--data", data, "--category", f"VisA/{cat}", *opts, "--out", out])
                base = ["expert", "eval", "--expert", out, "--data", data, "--viz", args.viz, "--json"]
                faithful = cli_json(base)
                calibrated = cli_json(base + ["--calibrated"])
                rows.append({"category": cat, "size": size, "faithful": faithful, "calibrated": calibrated})
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; viz {args.viz}; extra options {args.option or 'none'}")
    hdr = (
        f"{'category':9} {'size':>4} {'img AUROC':>9} {'px AUROC':>8} {'ms/img':>7}   "
        f"{'faithful: false marks':>21} {'hits':>6}   {'calibrated: false marks':>23} {'hits':>6}"
    )
    print(hdr + "\n" + "-" * len(hdr))

    def frac(rows, mode, key, count):
        k = sum(round(r[mode][key] * r[mode][count]) for r in rows)
        n = sum(r[mode][count] for r in rows)
        return f"{k}/{n} {100 * k / n:3.0f}%"

    for size in args.sizes:
        group = [r for r in rows if r["size"] == size]
        for r in group + ([{"category": "both", "size": size, "pooled": group}] if len(group) > 1 else []):
            part = r.get("pooled", [r])
            f = part[0]["faithful"]
            auroc = f"{f['image_auroc']:9.3f} {f['pixel_auroc']:8.3f} {f['ms_per_image']:7.1f}" if "pooled" not in r else " " * 26
            print(
                f"{r['category']:9} {size:4d} {auroc}   {frac(part, 'faithful', 'false_mark_rate', 'normal'):>21} "
                f"{frac(part, 'faithful', 'hit_rate', 'defective'):>6}   {frac(part, 'calibrated', 'false_mark_rate', 'normal'):>23} "
                f"{frac(part, 'calibrated', 'hit_rate', 'defective'):>6}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
