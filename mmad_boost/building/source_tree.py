"""Reading a user's anomaly-detection dataset in MVTec AD or VisA layout (for `build-bench`).

MVTec:  <cat>/train/good/*, <cat>/test/<defect or good>/*, <cat>/ground_truth/<defect>/<stem>_mask.png
VisA:   <cat>/Data/Images/{Normal,Anomaly}/*, <cat>/Data/Masks/Anomaly/<stem>.png, <cat>/image_anno.csv,
        split_csv/1cls.csv (or 1cls_subset.csv, or --split-csv) with columns object,split,label,image,mask.

Output naming follows MMAD: VisA defective test images go to `test/bad/`, their masks to
`ground_truth/bad/`; MVTec keeps its defect folders. Problems found while scanning are reported
through `Problems`: an MmadError, or a warning and a skip when the user allows skipping.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MmadError
from ..protocol.keys import IMAGE_SUFFIXES

LAYOUTS = ("mvtec", "visa")
DEFAULT_DATASET = {"mvtec": "MVTec-AD", "visa": "VisA"}


class SkippedWarning(UserWarning):
    """A file or category of the source tree was skipped (--skip-bad)."""


@dataclass
class SourceImage:
    category: str
    split: str  # "train" | "test"
    folder: str  # output defect folder: "good", the MVTec defect folder, or "bad" (VisA)
    labels: tuple[str, ...]  # defect types proven by the labels; () for normal images
    path: Path
    rel: str  # path relative to the source root, as the user names it
    mask: Path | None = None

    @property
    def is_normal(self) -> bool:
        return not self.labels

    def key(self, dataset: str) -> str:
        return f"{dataset}/{self.category}/{self.split}/{self.folder}/{self.path.name}"

    def mask_rel(self) -> str:
        return f"ground_truth/{self.folder}/{self.mask.name}" if self.mask else ""


@dataclass
class SourceTree:
    layout: str
    root: Path
    images: list[SourceImage]
    defect_types: dict[str, list[str]]  # category -> every defect type its labels name
    categories: list[str] = field(default_factory=list)


class Problems:
    """Raise on the first problem, or warn and remember it when skipping is allowed."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.skipped: list[str] = []

    def __call__(self, message: str) -> None:
        if not self.skip:
            raise MmadError(message + " (or pass --skip-bad to skip it)")
        self.skipped.append(message)
        warnings.warn(f"skipped: {message}", SkippedWarning, stacklevel=2)


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan(root: Path, layout: str, problems: Problems, split_csv: Path | None = None) -> SourceTree:
    root = Path(root)
    if layout not in LAYOUTS:
        raise MmadError(f"--layout {layout!r}: unknown layout; use one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise MmadError(f"--root {root}: not a folder; pass the folder holding the category folders")
    tree = scan_mvtec(root, problems) if layout == "mvtec" else scan_visa(root, problems, split_csv)
    tree.categories = sorted({im.category for im in tree.images})
    return tree


# -- MVTec ---------------------------------------------------------------------
def _mvtec_mask(cat_dir: Path, defect: str, image: Path) -> Path | None:
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png"):
        p = cat_dir / "ground_truth" / defect / name
        if p.is_file():
            return p
    return None


def scan_mvtec(root: Path, problems: Problems) -> SourceTree:
    cat_dirs = sorted(d for d in root.iterdir() if d.is_dir() and ((d / "train").is_dir() or (d / "test").is_dir()))
    if not cat_dirs:
        raise MmadError(
            f"--root {root}: no category folder with train/ or test/ inside; is this an MVTec-style tree "
            "(<cat>/train/good, <cat>/test/<defect>)? For VisA's layout pass --layout visa"
        )
    images, defect_types = [], {}
    for cat_dir in cat_dirs:
        cat = cat_dir.name
        train = _images_in(cat_dir / "train" / "good")
        test_dirs = sorted(d for d in (cat_dir / "test").iterdir() if d.is_dir()) if (cat_dir / "test").is_dir() else []
        tests = [(d.name, p) for d in test_dirs for p in _images_in(d)]
        if not train or not tests:
            missing = "train/good" if not train else "test/*"
            problems(f"{cat_dir}: empty category, no images in {missing}")
            continue
        cat_images = [SourceImage(cat, "train", "good", (), p, p.relative_to(root).as_posix()) for p in train]
        for defect, p in tests:
            rel = p.relative_to(root).as_posix()
            if defect == "good":
                cat_images.append(SourceImage(cat, "test", "good", (), p, rel))
                continue
            mask = _mvtec_mask(cat_dir, defect, p)
            if mask is None:
                problems(f"{p}: defective image has no mask {cat_dir / 'ground_truth' / defect / (p.stem + '_mask.png')}")
                continue
            cat_images.append(SourceImage(cat, "test", defect, (defect,), p, rel, mask))
        images += cat_images
        defect_types[cat] = [d.name for d in test_dirs if d.name != "good"]
    return SourceTree("mvtec", root, images, defect_types)


# -- VisA ----------------------------------------------------------------------
def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MmadError(f"{path}: cannot be read as CSV ({type(e).__name__}: {e})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise MmadError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(required)}")
    return rows


def split_labels(label: str) -> tuple[str, ...]:
    """VisA labels: 'normal' -> (); 'bubble,discolor' -> ('bubble', 'discolor')."""
    parts = tuple(dict.fromkeys(p.strip() for p in label.split(",") if p.strip()))
    return () if parts in ((), ("normal",)) else parts


def find_split_csv(root: Path, given: Path | None) -> Path:
    if given is not None:
        if not Path(given).is_file():
            raise MmadError(f"--split-csv {given}: file not found")
        return Path(given)
    for name in ("1cls.csv", "1cls_subset.csv"):
        if (root / "split_csv" / name).is_file():
            return root / "split_csv" / name
    raise MmadError(f"{root / 'split_csv' / '1cls.csv'}: VisA split file not found; pass --split-csv FILE (columns object,split,label,image,mask)")


def scan_visa(root: Path, problems: Problems, split_csv: Path | None) -> SourceTree:
    split_path = find_split_csv(root, split_csv)
    rows = _read_csv(split_path, ("object", "split", "label", "image", "mask"))
    by_cat: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_cat.setdefault(r["object"], []).append(r)
    present = [c for c in by_cat if (root / c).is_dir()]
    if not present:
        raise MmadError(f"--root {root}: none of the categories in {split_path} ({', '.join(sorted(by_cat))}) has a folder there")
    for c in by_cat:
        if c not in present:
            warnings.warn(f"{split_path}: category {c!r} has no folder under {root}; ignored", SkippedWarning, stacklevel=2)
    images, defect_types = [], {}
    for cat in sorted(present):
        anno_path = root / cat / "image_anno.csv"
        if not anno_path.is_file():
            problems(f"{anno_path}: VisA label file missing; it gives each anomaly's defect type")
            continue
        anno = {r["image"]: split_labels(r["label"]) for r in _read_csv(anno_path, ("image", "label"))}
        defect_types[cat] = list(dict.fromkeys(t for labels in anno.values() for t in labels))
        cat_images = []
        for r in by_cat[cat]:
            path = root / r["image"]
            split = r["split"].strip()
            if split not in ("train", "test"):
                problems(f"{split_path}: {r['image']} has split {split!r}; use train or test")
                continue
            if not path.is_file():
                problems(f"{path}: listed in {split_path.name} but missing")
                continue
            if r["label"].strip() == "normal":
                cat_images.append(SourceImage(cat, split, "good", (), path, r["image"]))
                continue
            if split == "train":  # one-class training uses normal images only
                continue
            labels = anno.get(r["image"])
            if not labels:
                problems(f"{anno_path}: no defect label for anomalous image {r['image']}")
                continue
            mask = root / r["mask"] if r["mask"].strip() else None
            if mask is None or not mask.is_file():
                problems(f"{path}: defective image has no mask {mask or '(empty mask column in ' + split_path.name + ')'}")
                continue
            cat_images.append(SourceImage(cat, "test", "bad", labels, path, r["image"], mask))
        if not any(i.split == "train" for i in cat_images) or not any(i.split == "test" for i in cat_images):
            problems(f"{root / cat}: empty category, needs train normal and test images in {split_path.name}")
            continue
        images += cat_images
    return SourceTree("visa", root, images, defect_types)
