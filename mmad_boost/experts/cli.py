"""`mmad-boost expert fit|eval|render` on an MMAD-layout data root."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..atomic import save_image, write_text
from ..errors import MmadError
from ..registry import option_pairs
from .base import DEFAULT_FALSE_MARKS, check_false_marks


def register_cli(sub) -> None:
    from ..cli import VIZ_CHOICES, add_deprecated_alias

    p = sub.add_parser("expert", help="fit, evaluate and render anomaly-detection experts")
    esub = p.add_subparsers(dest="expert_command", required=True)

    f = esub.add_parser("fit", help="fit an expert on ROOT/DATASET/CATEGORY/train/good and calibrate it on the same normals, each scored unseen")
    f.add_argument("--data", required=True, help="MMAD-layout data root")
    f.add_argument("--category", required=True, help="DATASET/CATEGORY, e.g. VisA/fryum")
    f.add_argument("--expert", default="patchcore", help="which expert to fit: patchcore (default), patchcore-fewshot, gt, anomalib:<Model>, anomalyclip")
    f.add_argument("--backbone", help="efficientnet-lite0 (default), NAME:FILE or a local weights FILE")
    f.add_argument(
        "--false-marks",
        type=float,
        default=DEFAULT_FALSE_MARKS,
        metavar="RATE",
        help=f"target share of normal images the calibrated expert marks, a fraction in (0, 1) (default {DEFAULT_FALSE_MARKS}); "
        "changeable later without refitting (expert eval --false-marks)",
    )
    f.add_argument(
        "--holdout",
        type=float,
        default=None,
        help="fraction of the normal images kept out of fitting for calibration "
        "(default: none, every normal fits and is scored by a model without it: leave-one-out for patchcore, 5-fold refits otherwise)",
    )
    f.add_argument(
        "--defects",
        metavar="DIR",
        help="folder of labelled defective TRAINING images (never test ones): patchcore then "
        "chooses its image score (choices: top-k mean for k = 0, 0.1, 0.5, 1 %% of the patches; blurred map's maximum at 1 or 2 patches) "
        "by how many of them it catches at the target rate (default: none, keep the configured rule)",
    )
    f.add_argument("--margin", type=float, default=1.0, help="image threshold = conformal quantile of the normal scores x margin (default 1.0)")
    f.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="expert option, e.g. size=320 (repeatable; default: none)")
    f.add_argument("--out", required=True, help="expert folder to write")
    f.add_argument("--no-progress", action="store_true", help="no progress lines while fitting, also none from libraries (default: shown)")
    f.set_defaults(func=cmd_fit)

    e = esub.add_parser("eval", help="score the category's test images: AUROC, false-mark and hit rates, ms/image")
    e.add_argument("--expert", metavar="FOLDER", help="fitted expert folder from `mmad-boost expert fit` (required)")
    add_deprecated_alias(e, "--expert-dir", "--expert", "expert")
    e.add_argument("--data", required=True, help="MMAD-layout data root")
    e.add_argument("--questions", help="question file (default DATA/mmad.json)")
    e.add_argument("--viz", default="bbox", choices=VIZ_CHOICES, help="how the map is drawn: bbox, contour, highlight, mask or heatmap (default bbox)")
    e.add_argument("--calibrated", action="store_true", help="render in calibrated mode (default: faithful, as MMAD)")
    e.add_argument(
        "--cache", help="map cache folder (default: maps/ in the cache folder, $MMAD_BOOST_CACHE_DIR or ~/.cache/mmad-boost; keyed by expert state and image)"
    )
    e.add_argument(
        "--plot", metavar="PNG", help="with --calibrated: also draw the operating curve (hits against false marks per target) into this PNG (default: none)"
    )
    e.add_argument(
        "--false-marks",
        type=float,
        metavar="RATE",
        help="move the thresholds to this target false-mark rate, a fraction in (0, 1), "
        "from the normal scores stored at fit time (default: the rate the folder was fitted at)",
    )
    e.add_argument(
        "--json",
        action="store_true",
        help="print the figures as one JSON object on the last line (with the operating curve and missed defects when --calibrated)",
    )
    e.set_defaults(func=cmd_eval)

    r = esub.add_parser("render", help="write the five pictures of one image")
    r.add_argument("--expert", metavar="FOLDER", help="fitted expert folder from `mmad-boost expert fit` (required)")
    add_deprecated_alias(r, "--expert-dir", "--expert", "expert")
    r.add_argument("image", help="the image to draw the expert's map on")
    r.add_argument("--mask", help="ground-truth mask of the image (gt expert)")
    r.add_argument("--template", action="append", default=[], help="normal template image (few-shot experts; repeatable)")
    r.add_argument("--calibrated", action="store_true", help="render in calibrated mode (default: faithful, as MMAD)")
    r.add_argument("--out", required=True, help="folder for the five pictures (one per viz: bbox, contour, highlight, mask, heatmap) and sentences.json")
    r.set_defaults(func=cmd_render)


def default_cache() -> Path | None:
    """Maps are keyed by (expert state, image), so one shared cache folder is safe; None: caches are off."""
    from ..resources import cache_dir

    return cache_dir("maps")


class Progress:
    """`progress(stage, done, total)` callback: a line on stderr per stage step, at most every 2 s,
    with the stage's estimated time left (from its rate so far)."""

    def __init__(self, stream=None, every_s: float = 2.0):
        self.stream, self.every_s = stream or sys.stderr, every_s
        self.stage, self.t0, self.last = None, 0.0, 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        from ..running.progress import enabled

        if not enabled():  # --no-progress
            return
        now = time.perf_counter()
        if stage != self.stage:
            self.stage, self.t0, self.last = stage, now, 0.0
        if done < total and now - self.last < self.every_s:
            return
        self.last = now
        left = (now - self.t0) / done * (total - done) if done else float("nan")
        eta = "done" if done >= total else (f"about {left:.0f} s left" if left == left else "")
        print(f"  {stage} {done}/{total} ({now - self.t0:.0f} s; {eta})", file=self.stream, flush=True)


def cmd_fit(args) -> int:
    from ..protocol.data import load_rgb
    from . import create_expert
    from ..protocol.image_files import list_images
    from .fitting import check_holdout, fit_on_folder, normal_folder

    dataset, sep, category = args.category.partition("/")
    if not sep or not category:
        raise MmadError(f"--category {args.category!r}: use DATASET/CATEGORY, e.g. VisA/fryum")
    try:
        check_holdout(args.holdout)
        check_false_marks(args.false_marks)
    except MmadError as e:
        raise MmadError(f"--{e}") from None
    opts = option_pairs(args.option, "--option")  # strings: create_expert converts them by the expert's signature
    if args.backbone:
        opts["backbone"] = args.backbone
    expert = create_expert(args.expert, **opts)
    t0 = time.perf_counter()  # the same fitting and calibration rules as BoostedModel's fit on demand (experts/fitting.py)
    fitted = fit_on_folder(
        expert, normal_folder(args.data, dataset, category), holdout=args.holdout, false_marks=args.false_marks, margin=args.margin, progress=Progress()
    )
    fit_files, cal_files = fitted.fit_files, fitted.calibration_files
    choice = []
    if args.defects:
        from .score_choice import choose_image_score

        defect_files = list_images(Path(args.defects))
        if not defect_files:
            raise MmadError(f"--defects {args.defects}: no images found; give a folder of defective training images")
        if cal_files or getattr(expert, "kind", "") != "patchcore" or getattr(expert, "mode", "") != "full":
            raise MmadError("--defects: the image score is chosen for patchcore (full mode) calibrated on all normals; drop --holdout")
        choice = choose_image_score(expert, [load_rgb(f) for f in defect_files])
        for r in choice:
            print(
                f"  image score {r['label']}: catches {r['caught']}/{r['defects']} training defects at the target rate"
                + ("  <- chosen" if r["chosen"] else ""),
                file=sys.stderr,
            )
    fit_s = time.perf_counter() - t0
    out = expert.save(args.out)
    meta_file = out / "expert.json"
    meta = json.loads(meta_file.read_text())
    meta.update(category=f"{dataset}/{category}", fit_images=[f.name for f in fit_files], calibration_images=[f.name for f in cal_files or fit_files])
    if choice:
        meta["image_score_choice"] = choice
    write_text(meta_file, json.dumps(meta, indent=1))
    how = (
        f"on {len(cal_files)} held out" if cal_files else (f"on all {len(fit_files)} ({expert.normals.method})" if expert.normals else "(nothing to calibrate)")
    )
    print(
        f"fitted {getattr(expert, 'name', args.expert)} on {len(fit_files)} images and calibrated {how} in {fit_s:.1f} s, "
        f"target false-mark rate {args.false_marks:g}: image threshold {expert.image_threshold}, pixel threshold {expert.pixel_threshold} -> {out}",
        file=sys.stderr,
    )
    return 0


def _load(expert_dir: str | None):
    from . import load_expert

    if not expert_dir:
        raise MmadError("give --expert FOLDER: a fitted expert folder from `mmad-boost expert fit`")

    meta_file = Path(expert_dir) / "expert.json"
    expert = load_expert(expert_dir)
    meta = json.loads(meta_file.read_text())
    return expert, meta


def evaluate(expert, bench, samples, *, viz: str = "bbox", calibrated: bool = False, cache_dir=None) -> dict:
    """Image/pixel AUROC, false-mark and hit rates of the rendering, and the median inference time
    per image over the maps not found in the cache (the median: the first call may build a
    traced model for the input shape, once per process)."""
    import numpy as np
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from .rendering import drawing_options, render
    from .base import cached_predict

    if calibrated and getattr(expert, "pixel_threshold", None) is None:
        raise MmadError("--calibrated: this expert folder has no calibration; refit with `mmad-boost expert fit` (it holds out normals)")
    from .operating import curve_lines, missed_defects, operating_curve, scored  # noqa: F401  (curve_lines: cmd_eval)

    labels, scores, pix_true, pix_score, items = [], [], [], [], []
    marked_normal, hits, n_normal, n_bad, infer_times = 0, 0, 0, 0, []
    for s in samples:
        image = bench.load_image(bench.resolve(s.key))
        mask = bench.load_mask(s)
        templates = [bench.load_image(bench.template_path(s, t)) for t in s.random_templates[:1]] if getattr(expert, "needs_templates", False) else None
        t0 = time.perf_counter()
        out = cached_predict(expert, image, cache_dir, mask=mask, templates=templates)
        dt = time.perf_counter() - t0
        if not out.cached:  # cache hits are not inference
            infer_times.append(dt)
        labels.append(0 if s.is_normal else 1)
        scores.append(out.score)
        # pixel AUROC on a 128 px grid (enough to rank pixels, cheap)
        w, h = image.size
        k = 128 / max(w, h)
        size = (max(1, round(w * k)), max(1, round(h * k)))
        small = np.asarray(Image.fromarray(np.asarray(out.map, np.float32)).resize(size, Image.BILINEAR))
        truth = np.zeros(small.shape, bool) if mask is None else np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
        pix_true.append(truth.ravel())
        pix_score.append(small.ravel())
        if calibrated and (s.is_normal or mask is not None):  # a defect without a mask cannot be hit: not on the curve
            items.append(scored(s.key, image, out.map, out.score, mask if not s.is_normal else None, getattr(expert, "resample", None)))
        pic = render(
            image,
            out.map,
            viz,
            mode="calibrated" if calibrated else "faithful",
            pixel_threshold=out.pixel_threshold,
            decision=out.decision,
            **drawing_options(expert),
        )
        if s.is_normal:
            n_normal += 1
            marked_normal += pic.marked
        else:
            n_bad += 1
            if pic.marked and mask is not None:
                hits += _overlaps(pic, mask)
    y, p = np.concatenate(pix_true), np.concatenate(pix_score)
    extra = {}
    if calibrated and not getattr(expert, "needs_mask", False):
        extra = {
            "false_mark_target": getattr(getattr(expert, "normals", None), "false_marks", None),
            "curve": operating_curve(expert, items, viz),
            "missed": missed_defects(expert, items, viz),
        }
    return (
        extra
        | {
            "expert": getattr(expert, "name", type(expert).__name__),
            "viz": viz,
            "mode": "calibrated" if calibrated else "faithful",
            "images": len(samples),
            "normal": n_normal,
            "defective": n_bad,
            "image_auroc": float(roc_auc_score(labels, scores)) if 0 < sum(labels) < len(labels) else None,
            "pixel_auroc": float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else None,
            "false_mark_rate": marked_normal / n_normal if n_normal else None,
            "hit_rate": hits / n_bad if n_bad else None,
            "ms_per_image": round(1000 * float(np.median(infer_times)), 1) if infer_times else None,
        }
        | extra
    )


def _overlaps(pic, mask) -> bool:
    """Does the picture's mark (box area for bbox, region otherwise) touch the true mask?"""
    import numpy as np
    from PIL import Image

    from .operating import marked_area

    w, h = pic.image.size
    truth = np.asarray(Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
    return bool((marked_area(pic, (h, w)) & truth).any())


def cmd_eval(args) -> int:
    from ..protocol.data import Benchmark

    if args.plot and not args.calibrated:
        raise MmadError("--plot draws the calibrated operating curve: add --calibrated")
    expert, meta = _load(args.expert)
    if args.false_marks is not None:
        try:
            expert.set_false_marks(args.false_marks)
        except MmadError as e:
            raise MmadError(f"--false-marks: {e}") from None
    category = meta.get("category")
    if not category:
        raise MmadError(f"{args.expert}/expert.json names no category; write the folder with `mmad-boost expert fit`")
    bench = Benchmark(args.data, args.questions)
    samples = [s for s in bench.samples if f"{s.dataset}/{s.category}" == category and "/train/" not in s.key]
    if not samples:
        raise MmadError(f"{bench.questions_file}: no test images of {category}; pass the question file of that category's benchmark")
    cache = Path(args.cache) if args.cache else default_cache()
    res = evaluate(expert, bench, samples, viz=args.viz, calibrated=args.calibrated, cache_dir=cache)
    res["category"] = category

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f} %"

    print(f"{category}  expert {res['expert']}  ({res['mode']} {res['viz']}, {res['images']} images: {res['normal']} normal, {res['defective']} defective)")
    print(f"  image AUROC      {pct(res['image_auroc'])}")
    print(f"  pixel AUROC      {pct(res['pixel_auroc'])}")
    print(f"  false-mark rate  {pct(res['false_mark_rate'])}  (normal images with any mark)")
    print(f"  hit rate         {pct(res['hit_rate'])}  (defective images with a mark on the true mask)")
    print(f"  ms per image     {res['ms_per_image'] if res['ms_per_image'] is not None else 'cached'}  (median, uncached maps)")
    if "curve" in res:
        from .operating import curve_lines

        print("\n".join(curve_lines(res["curve"])))
        print(f"  missed defects   {len(res['missed'])} (smallest first; area = share of the image):")
        for m in res["missed"]:
            print(f"    {m['image']}  area {100 * m['defect_area']:.3f} %  score {m['score_vs_threshold']}x threshold  ({m['why']})")
        if args.plot and res["curve"].get("rows"):
            from .operating import plot_curve

            plot_curve(res["curve"], args.plot, f"{category}: {res['expert']} {res['viz']}")
            print(f"  curve plot       {args.plot}")
    if args.json:
        print(json.dumps(res))
    return 0


def cmd_render(args) -> int:
    from ..protocol.data import load_mask, load_rgb
    from .rendering import STYLES, drawing_options, render
    from .base import cached_predict

    expert, meta = _load(args.expert)
    image = load_rgb(Path(args.image))
    mask = load_mask(Path(args.mask)) if args.mask else None
    if getattr(expert, "needs_mask", False) and args.mask is None:
        print("note: no --mask given: the ground-truth expert treats the image as normal", file=sys.stderr)
    templates = [load_rgb(Path(t)) for t in args.template] or None
    out = cached_predict(expert, image, default_cache(), mask=mask, templates=templates)
    mode = "calibrated" if args.calibrated else "faithful"
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    sentences = {}
    for style in STYLES:
        pic = render(image, out.map, style, mode=mode, pixel_threshold=out.pixel_threshold, decision=out.decision, **drawing_options(expert))
        path = dest / f"{Path(args.image).stem}_{style}.png"
        save_image(pic.image, path)
        sentences[style] = {"file": path.name, "sentence": pic.sentence, "marked": pic.marked}
        if mode == "calibrated":  # what `eval --evidence text|both` would add to the prompt
            from ..boosts.evidence import verdict_text

            sentences[style]["evidence_text"] = verdict_text(out.score, getattr(expert, "image_threshold", None), out.decision, pic.region)
    write_text(dest / "sentences.json", json.dumps({"mode": mode, "score": out.score, "decision": out.decision, "pictures": sentences}, indent=1))
    print(f"score {out.score:.4g}, decision {out.decision}; wrote {len(STYLES)} pictures ({mode}) to {dest}", file=sys.stderr)
    return 0
