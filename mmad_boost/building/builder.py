"""`mmad-boost build-bench`: an MMAD-format benchmark (mmad.json + images + masks) from a user's
MVTec- or VisA-style dataset. Question rules: `question_gen`; tree rules: `source_tree`.

Everything is read and checked before anything is written; mmad.json is written last, atomically.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MmadError
from ..protocol.keys import LETTERS, is_normal_key

DEFAULT_TEMPLATES = 8


@dataclass
class BuildSummary:
    out: Path
    questions_file: Path
    images: int  # question images (test split)
    templates: int  # normal training images written
    questions: dict[str, int]  # per type
    categories: list[str]
    skipped: list[str] = field(default_factory=list)
    no_localization: list[str] = field(default_factory=list)  # keys whose defect is too spread to place

    def line(self) -> str:
        n = sum(self.questions.values())
        per = ", ".join(f"{t} {c}" for t, c in self.questions.items())
        return (
            f"wrote {self.questions_file}: {self.images} images, {n} questions ({per}); "
            f"{self.templates} template images; categories {', '.join(self.categories)}" + (f"; skipped {len(self.skipped)}" if self.skipped else "")
        )


@dataclass
class _Checked:
    """A source image after loading: its similarity feature and, if defective, its mask's grid shares."""

    image: object  # source_tree.SourceImage
    feature: object
    shares: object = None


def _load_checked(im, ranker, problems):
    from ..protocol.data import load_mask
    from PIL import Image

    try:
        with Image.open(im.path) as pil:
            pil.load()
            size = pil.size
            feature = ranker.feature(pil.convert("RGB"))
    except Exception as e:  # PIL raises many types for bad files
        problems(f"{im.path}: unreadable image ({type(e).__name__}: {e})")
        return None
    if im.is_normal:
        return _Checked(im, feature)
    try:
        mask = load_mask(im.mask)
    except MmadError as e:
        problems(str(e))
        return None
    if mask.shape != (size[1], size[0]):
        problems(f"{im.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {im.path.name} is {size[0]}x{size[1]}")
        return None
    if not mask.any():
        problems(f"{im.mask}: mask of defective image {im.path.name} is empty (all background)")
        return None
    from .question_gen import grid_shares

    return _Checked(im, feature, grid_shares(mask))


def _check_names(images, dataset: str) -> None:
    # The harness calls an image normal when its key contains "good" (MMAD's rule).
    for im in images:
        if not im.is_normal and is_normal_key(im.key(dataset)):
            raise MmadError(
                f"{im.path}: defective image's MMAD key {im.key(dataset)!r} contains 'good', which marks it normal; rename the file, folder or --dataset-name"
            )
    if "/" in dataset or not dataset.strip():
        raise MmadError(f"--dataset-name {dataset!r}: must be a non-empty folder name without '/'")


def build_benchmark(
    root: str | Path,
    out: str | Path,
    *,
    layout: str,
    dataset_name: str | None = None,
    split_csv: str | Path | None = None,
    link: bool = False,
    extra_questions: str | Path | None = None,
    seed: int = 0,
    n_templates: int = DEFAULT_TEMPLATES,
    similar_by: str = "ssim-hist",
    skip_bad: bool = False,
) -> BuildSummary:
    from . import question_gen as qg
    from .similarity import SimilarityRanker
    from .source_tree import DEFAULT_DATASET, Problems, scan

    root, out = Path(root), Path(out)
    if n_templates < 1:
        raise MmadError(f"--n-templates {n_templates}: must be at least 1")
    ranker = SimilarityRanker(similar_by)
    if out.resolve() == root.resolve():
        raise MmadError(f"--out {out}: must not be the source tree itself; choose another folder")
    problems = Problems(skip_bad)
    tree = scan(root, layout, problems, Path(split_csv) if split_csv else None)
    dataset = dataset_name or DEFAULT_DATASET[layout]
    _check_names(tree.images, dataset)

    checked = [c for c in (_load_checked(im, ranker, problems) for im in tree.images) if c is not None]
    categories = sorted({c.image.category for c in checked})
    data: dict[str, dict] = {}
    counts = {t: 0 for t in ("Anomaly Detection", "Defect Classification", "Defect Localization", "Object Classification")}
    no_loc, written_templates = [], []
    for cat in categories:
        train = [c for c in checked if c.image.category == cat and c.image.split == "train"]
        test = [c for c in checked if c.image.category == cat and c.image.split == "test"]
        if not train or not test:
            problems(f"{root / cat}: empty category after skipping bad files (train {len(train)}, test {len(test)})")
            continue
        train_keys = [c.image.key(dataset) for c in train]
        written_templates += [c.image for c in train]
        for c in test:
            im, key = c.image, c.image.key(dataset)
            conv = [qg.anomaly_detection(im.is_normal, qg.rng_for(seed, key, "Anomaly Detection"))]
            if not im.is_normal:
                conv.append(qg.defect_classification(im.labels, tree.defect_types.get(cat, list(im.labels)), qg.rng_for(seed, key, "Defect Classification")))
                loc = qg.defect_localization(c.shares, qg.rng_for(seed, key, "Defect Localization"))
                if loc is None:
                    no_loc.append(key)
                else:
                    conv.append(loc)
            conv.append(qg.object_classification(cat, categories, qg.rng_for(seed, key, "Object Classification")))
            for q in conv:
                counts[q["type"]] += 1
            order = ranker.rank(c.feature, [t.feature for t in train])
            data[key] = {
                "image_path": key,
                "mask_path": im.mask_rel(),
                "base_folder": cat,
                "source": im.rel,
                "labels": list(im.labels),
                "conversation": conv,
                "similar_templates": [train_keys[i] for i in order[:n_templates]],
                "random_templates": random.Random(f"{seed}|{key}|templates").sample(train_keys, min(n_templates, len(train_keys))),
            }
    if not data:
        raise MmadError(f"--root {root}: no usable test images found")
    if extra_questions:
        for t, n in merge_extra_questions(data, Path(extra_questions), {c.image.rel: c.image.key(dataset) for c in checked}).items():
            counts[t] = counts.get(t, 0) + n
    _write_files(out, dataset, [c.image for c in checked if c.image.key(dataset) in data] + written_templates, link)
    qfile = out / "mmad.json"
    from ..atomic import write_text

    write_text(qfile, json.dumps(data, indent=1, ensure_ascii=False))
    return BuildSummary(out, qfile, len(data), len(written_templates), counts, sorted({k.split("/")[1] for k in data}), problems.skipped, no_loc)


def _place(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        if dst.resolve() == src.resolve():
            return
        dst.unlink()
    if link:
        dst.symlink_to(src.resolve())
    else:
        shutil.copyfile(src, dst)


def _write_files(out: Path, dataset: str, images, link: bool) -> None:
    for im in images:
        _place(im.path, out / im.key(dataset), link)
        if im.mask is not None:
            _place(im.mask, out / dataset / im.category / im.mask_rel(), link)


# -- extra questions -------------------------------------------------------------
def _read_extra(path: Path) -> list[tuple[str, dict]]:
    """(image, question) pairs from JSON ({image: [q, ...]} or [{image, ...q}]) or CSV."""
    if not path.is_file():
        raise MmadError(f"--extra-questions {path}: file not found")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        pairs = []
        for n, r in enumerate(rows, start=2):
            missing = [c for c in ("image", "type", "question", "answer", "A", "B") if not (r.get(c) or "").strip()]
            if missing:
                raise MmadError(f"{path}: line {n} lacks {', '.join(missing)}; columns are image,type,question,A,B[,C,D,E],answer")
            opts = {k: r[k].strip() for k in LETTERS if (r.get(k) or "").strip()}
            ans = r["answer"].strip()
            if ans not in opts:  # the answer may be given as the option's text
                ans = next((k for k, v in opts.items() if v == ans), ans)
            pairs.append((r["image"].strip(), {"Question": r["question"].strip(), "Options": opts, "Answer": ans, "type": r["type"].strip()}))
        return pairs
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MmadError(f"{path}: not valid UTF-8 JSON ({e})") from None
    if isinstance(raw, dict):
        pairs = []
        for img, qs in raw.items():
            qs = qs.get("conversation", qs) if isinstance(qs, dict) else qs
            if not isinstance(qs, list):
                raise MmadError(f"{path}: value for {img!r} must be a list of questions")
            pairs += [(img, q) for q in qs]
        return pairs
    if isinstance(raw, list) and all(isinstance(q, dict) and "image" in q for q in raw):
        return [(q["image"], {k: v for k, v in q.items() if k != "image"}) for q in raw]
    raise MmadError(f"{path}: expected {{image: [questions]}} or a list of questions with an 'image' field")


def merge_extra_questions(data: dict, path: Path, source_to_key: dict[str, str]) -> dict[str, int]:
    """Appends the user's questions to the images they name (MMAD key or source-relative path)."""
    from ..protocol.data import QUESTION_TYPES, parse_question

    counts: dict[str, int] = {}
    for img, q in _read_extra(path):
        key = img if img in data else source_to_key.get(img.replace("\\", "/"))
        if key is None or key not in data:
            raise MmadError(f"{path}: image {img!r} is not a test image of this build; use its MMAD key (e.g. {next(iter(data))}) or its path under --root")
        conv = data[key]["conversation"]
        parsed = parse_question(path, key, len(conv), q)
        if parsed.type not in QUESTION_TYPES:
            raise MmadError(f"{path}: image {img!r}: type {parsed.type!r} must be one of {', '.join(QUESTION_TYPES)}")
        conv.append(
            {"Question": parsed.text, "Options": parsed.options, "Answer": parsed.answer, "type": parsed.type, "annotation": bool(q.get("annotation", True))}
        )
        counts[parsed.type] = counts.get(parsed.type, 0) + 1
    return counts


# -- CLI -------------------------------------------------------------------------
def register_cli(sub) -> None:
    p = sub.add_parser("build-bench", help="build an MMAD-format benchmark from an MVTec- or VisA-style dataset")
    p.add_argument("--root", required=True, help="source dataset folder")
    p.add_argument("--layout", required=True, choices=["mvtec", "visa"], help="source layout: mvtec (MVTec-AD folders) or visa (VisA with split_csv)")
    p.add_argument("--dataset-name", help="dataset folder name in the keys (default MVTec-AD / VisA)")
    p.add_argument("--split-csv", help="visa: split file (default ROOT/split_csv/1cls.csv or 1cls_subset.csv)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--link", action="store_true", help="symlink images and masks instead of copying")
    g.add_argument("--copy", action="store_true", help="copy images and masks (default)")
    p.add_argument("--extra-questions", help="JSON or CSV of extra questions keyed by image")
    p.add_argument("--seed", type=int, default=0, help="seed for option order and random templates (default 0)")
    p.add_argument("--n-templates", type=int, default=DEFAULT_TEMPLATES, help=f"templates listed per image (default {DEFAULT_TEMPLATES})")
    p.add_argument(
        "--similar-by",
        default="ssim-hist",
        choices=["ssim-hist", "embedding"],
        help="how similar templates are chosen: ssim-hist (MMAD's, default ssim-hist) or embedding (EfficientNet-Lite0)",
    )
    p.add_argument("--skip-bad", action="store_true", help="skip malformed files with a warning instead of stopping")
    p.add_argument("--out", required=True, help="output folder (data root for `mmad-boost eval --data`)")
    p.set_defaults(func=cmd_build)


def cmd_build(args) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = build_benchmark(
            args.root,
            args.out,
            layout=args.layout,
            dataset_name=args.dataset_name,
            split_csv=args.split_csv,
            link=args.link,
            extra_questions=args.extra_questions,
            seed=args.seed,
            n_templates=args.n_templates,
            similar_by=args.similar_by,
            skip_bad=args.skip_bad,
        )
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(summary.line())
    print(f"next: mmad-boost eval --data {summary.out} --model baseline:random --out RUN_DIR", file=sys.stderr)
    return 0
