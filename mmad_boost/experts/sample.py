"""The bundled VisA sample (fryum, capsules) in VisA's own layout, split by its one-class CSV."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..errors import MmadError
from ..resources import sample_root


@dataclass
class VisaSplit:
    category: str
    train: list[Path]  # normal training images
    test_normal: list[Path]
    test_anomaly: list[tuple[Path, Path]]  # (image, mask)


def visa_split(category: str, root: str | Path | None = None) -> VisaSplit:
    root = Path(root) if root else sample_root()
    table = root / "split_csv" / "1cls_subset.csv"
    if not table.is_file():
        raise MmadError(f"{table} not found; pass the root of a VisA copy (with split_csv/1cls_subset.csv)")
    split = VisaSplit(category, [], [], [])
    with table.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["object"] != category:
                continue
            img = root / row["image"]
            if row["split"] == "train":
                split.train.append(img)
            elif row["label"] == "normal":
                split.test_normal.append(img)
            else:
                split.test_anomaly.append((img, root / row["mask"]))
    if not split.train:
        raise MmadError(f"{table}: no training images of category {category!r}; use one of the categories listed there")
    return split
