"""`mmad-boost expert fit|eval|render` on an MMAD-layout data root."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..errors import MmadError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def register_cli(sub) -> None:
    p = sub.add_parser("expert", help="fit, evaluate and render anomaly-detection experts")
    esub = p.add_subparsers(dest="expert_command", required=True)

    f = esub.add_parser("fit", help="fit an expert on ROOT/DATASET/CATEGORY/train/good (holding some out for calibration)")
    f.add_argument("--data", required=True, help="MMAD-layout data root")
    f.add_argument("--category", required=True, help="DATASET/CATEGORY, e.g. VisA/fryum")
    f.add_argument("--expert", default="patchcore", help="patchcore (default), patchcore-fewshot, gt, anomalib:<Model>, anomalyclip")
    f.add_argument("--backbone", help="efficientnet-lite0 (default), NAME:FILE or a local weights FILE")
    f.add_argument("--holdout", type=float, default=0.25, help="fraction of the normal images kept for calibration (default 0.25)")
    f.add_argument("--margin", type=float, default=1.0, help="image threshold = max held-out normal score x margin (default 1.0)")
    f.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="expert option, e.g. size=320 (repeatable)")
    f.add_argument("--out", required=True, help="expert folder to write")
    f.set_defaults(func=cmd_fit)

    e = esub.add_parser("eval", help="score the category's test images: AUROC, false-mark and hit rates, ms/image")
    e.add_argument("--expert-dir", required=True)
    e.add_argument("--data", required=True, help="MMAD-layout data root")
    e.add_argument("--questions", help="question file (default DATA/mmad.json)")
    e.add_argument("--viz", default="bbox", choices=["bbox", "contour", "highlight", "mask", "heatmap"])
    e.add_argument("--calibrated", action="store_true", help="render in calibrated mode (default: faithful, as MMAD)")
    e.add_argument("--cache", help="map cache folder (default $XDG_CACHE_HOME/mmad-boost/maps, keyed by expert state and image)")
    e.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    e.set_defaults(func=cmd_eval)

    r = esub.add_parser("render", help="write the five pictures of one image")
    r.add_argument("--expert-dir", required=True)
    r.add_argument("image")
    r.add_argument("--mask", help="ground-truth mask of the image (gt expert)")
    r.add_argument("--template", action="append", default=[], help="normal template image (few-shot experts; repeatable)")
    r.add_argument("--calibrated", action="store_true")
    r.add_argument("--out", required=True)
    r.set_defaults(func=cmd_render)


def _options(pairs: list[str]) -> dict:
    opts = {}
    for kv in pairs:
        k, sep, v = kv.partition("=")
        if not sep:
            raise MmadError(f"--option {kv!r}: use KEY=VALUE")
        try:
            opts[k] = json.loads(v)
        except json.JSONDecodeError:
            opts[k] = v
    return opts


def default_cache() -> Path:
    """Maps are keyed by (expert state, image), so one shared cache folder is safe."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmad-boost" / "maps"


def _images_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def cmd_fit(args) -> int:
    from ..data import load_rgb
    from . import create_expert
    from .base import fit_and_calibrate, holdout_split

    dataset, sep, category = args.category.partition("/")
    if not sep or not category:
        raise MmadError(f"--category {args.category!r}: use DATASET/CATEGORY, e.g. VisA/fryum")
    folder = Path(args.data) / dataset / category / "train" / "good"
    files = _images_in(folder)
    opts = _options(args.option)
    if args.backbone:
        opts["backbone"] = args.backbone
    expert = create_expert(args.expert, **opts)
    if len(files) < 2 and not getattr(expert, "needs_mask", False):  # the ground truth needs no normals
        raise MmadError(f"{folder}: needs at least 2 normal images (to fit and to calibrate); found {len(files)}")
    try:
        fit_files, cal_files = holdout_split(files, args.holdout)
    except MmadError as e:
        raise MmadError(f"--{e}") from None
    t0 = time.perf_counter()
    fit_and_calibrate(expert, [load_rgb(f) for f in fit_files], [load_rgb(f) for f in cal_files], margin=args.margin)
    fit_s = time.perf_counter() - t0
    out = expert.save(args.out)
    meta_file = out / "expert.json"
    meta = json.loads(meta_file.read_text())
    meta.update(category=f"{dataset}/{category}", fit_images=[f.name for f in fit_files], calibration_images=[f.name for f in cal_files])
    meta_file.write_text(json.dumps(meta, indent=1))
    print(f"fitted {getattr(expert, 'name', args.expert)} on {len(fit_files)} images and calibrated on {len(cal_files)} in {fit_s:.1f} s: "
          f"image threshold {expert.image_threshold}, pixel threshold {expert.pixel_threshold} -> {out}", file=sys.stderr)
    return 0


def _load(expert_dir: str):
    from . import load_expert

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

    from ..rendering import render
    from .base import cached_predict

    if calibrated and getattr(expert, "pixel_threshold", None) is None:
        raise MmadError("--calibrated: this expert folder has no calibration; refit with `mmad-boost expert fit` (it holds out normals)")
    labels, scores, pix_true, pix_score = [], [], [], []
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
        pic = render(image, out.map, viz, mode="calibrated" if calibrated else "faithful", is_gt=bool(getattr(expert, "needs_mask", False)),
                     pixel_threshold=out.pixel_threshold, decision=out.decision, resample=getattr(expert, "resample", None))
        if s.is_normal:
            n_normal += 1
            marked_normal += pic.marked
        else:
            n_bad += 1
            if pic.marked and mask is not None:
                hits += _overlaps(pic, mask)
    y, p = np.concatenate(pix_true), np.concatenate(pix_score)
    return {
        "expert": getattr(expert, "name", type(expert).__name__), "viz": viz, "mode": "calibrated" if calibrated else "faithful",
        "images": len(samples), "normal": n_normal, "defective": n_bad,
        "image_auroc": float(roc_auc_score(labels, scores)) if 0 < sum(labels) < len(labels) else None,
        "pixel_auroc": float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else None,
        "false_mark_rate": marked_normal / n_normal if n_normal else None,
        "hit_rate": hits / n_bad if n_bad else None,
        "ms_per_image": round(1000 * float(np.median(infer_times)), 1) if infer_times else None,
    }


def _overlaps(pic, mask) -> bool:
    """Does the picture's mark (box area for bbox, region otherwise) touch the true mask?"""
    import numpy as np
    from PIL import Image

    w, h = pic.image.size
    truth = np.asarray(Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
    if pic.boxes:
        marks = np.zeros((h, w), bool)
        for x0, y0, x1, y1 in pic.boxes:
            marks[y0:y1 + 1, x0:x1 + 1] = True
    else:
        marks = pic.region if pic.region is not None else np.zeros((h, w), bool)
    return bool((marks & truth).any())


def cmd_eval(args) -> int:
    from ..data import Benchmark

    expert, meta = _load(args.expert_dir)
    category = meta.get("category")
    if not category:
        raise MmadError(f"{args.expert_dir}/expert.json names no category; write the folder with `mmad-boost expert fit`")
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
    if args.json:
        print(json.dumps(res))
    return 0


def cmd_render(args) -> int:
    from ..data import load_mask, load_rgb
    from ..rendering import STYLES, render
    from .base import cached_predict

    expert, meta = _load(args.expert_dir)
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
        pic = render(image, out.map, style, mode=mode, is_gt=bool(getattr(expert, "needs_mask", False)),
                     pixel_threshold=out.pixel_threshold, decision=out.decision, resample=getattr(expert, "resample", None))
        path = dest / f"{Path(args.image).stem}_{style}.png"
        pic.image.save(path)
        sentences[style] = {"file": path.name, "sentence": pic.sentence, "marked": pic.marked}
    (dest / "sentences.json").write_text(json.dumps({"mode": mode, "score": out.score, "decision": out.decision, "pictures": sentences}, indent=1))
    print(f"score {out.score:.4g}, decision {out.decision}; wrote {len(STYLES)} pictures ({mode}) to {dest}", file=sys.stderr)
    return 0
