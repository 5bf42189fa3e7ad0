"""An MMAD-format benchmark over real VisA images: a VisA-layout root (`src`; default the bundled
sample, 512 px; pass an original VisA copy for its full 1500x1000 JPEGs).

Images are linked (not copied) under MMAD's key layout; `copies` repeats each test image under
new names to get a larger run. Questions per image follow MMAD's mix: 4 for normal images
(anomaly detection + 3 object questions), 5 for defective ones, about 4.75 on average (MMAD: 4.7).
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path


def _q(text, options, answer, qtype):
    return {"Question": text, "Options": dict(zip("ABCD", options)), "Answer": answer, "type": qtype, "annotation": True}


def questions(category: str, bad: bool) -> list[dict]:
    qs = [
        _q("Is there any defect in the object?", ["Yes", "No"], "A" if bad else "B", "Anomaly Detection"),
        _q("What kind of product is in the image?", [category, "bottle", "screw", "cable"], "A", "Object Classification"),
        _q("How many objects are in the image?", ["One", "Two", "Several", "None"], "C", "Object Structure"),
        _q("What colour is the product?", ["Brown", "White", "Green", "Blue"], "A", "Object Details"),
    ]
    if bad:
        qs[2:] = [
            _q("What type of defect is in the image?", ["Crack", "Scratch", "Discolouration", "Missing part"], "C", "Defect Classification"),
            _q("Where is the defect?", ["Top left", "Center", "Bottom", "Right"], "B", "Defect Localization"),
            _q("What does the defect look like?", ["A dark spot", "A bent edge", "A missing piece", "A smudge"], "A", "Defect Description"),
        ]
    return qs


def make_visa_bench(root: str | Path, copies: int = 1, seed: int = 0, max_side: int | None = None, src: str | Path | None = None) -> Path:
    """Writes the tree and mmad.json under root (idempotent); returns root.

    max_side: store images downscaled so the longer side is at most this (masks: nearest), not linked.
    src: the VisA-layout root with split_csv/1cls_subset.csv (default: the bundled sample).
    """
    from mmad_boost.sample import root as sample_root

    root = Path(root)
    VISA = Path(src) if src else sample_root()
    rng = random.Random(seed)
    rows = list(csv.DictReader(open(VISA / "split_csv" / "1cls_subset.csv")))
    data = {}
    train: dict[str, list[str]] = {}
    for r in rows:
        if r["split"] == "train":
            key = f"VisA/{r['object']}/train/good/{Path(r['image']).name}"
            _link(VISA / r["image"], root / key, max_side, root, VISA)
            train.setdefault(r["object"], []).append(key)
    for c in range(copies):
        for r in rows:
            if r["split"] != "test":
                continue
            bad = r["label"] != "normal"
            name = f"{c:02d}_{Path(r['image']).name}"
            key = f"VisA/{r['object']}/test/{'bad' if bad else 'good'}/{name}"
            _link(VISA / r["image"], root / key, max_side, root, VISA)
            mask = ""
            if bad and r["mask"]:
                mask = f"ground_truth/bad/{Path(name).stem}.png"
                _link(VISA / r["mask"], root / "VisA" / r["object"] / mask, max_side, root, VISA)
            pool = list(train[r["object"]])
            rng.shuffle(pool)
            data[key] = {
                "image_path": key,
                "mask_path": mask,
                "conversation": questions(r["object"], bad),
                "similar_templates": pool[:8],
                "random_templates": pool[8:16],
            }
    (root / "mmad.json").write_text(json.dumps(data))
    return root


def _link(src: Path, dst: Path, max_side: int | None, root: Path, visa: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.symlink(_scaled(src, max_side, root / "_scaled", visa) if max_side else src, dst)


def _scaled(src: Path, max_side: int, cache: Path, visa: Path) -> Path:
    """A downscaled copy of src, made once and shared by every key that links to it."""
    out = cache / src.relative_to(visa)
    if out.exists():
        return out
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        scale = max_side / max(im.size)
        if scale < 1:
            size = (round(im.width * scale), round(im.height * scale))
            im = im.resize(size, Image.Resampling.NEAREST if src.suffix.lower() == ".png" else Image.Resampling.BICUBIC)
        im.save(out, quality=95) if out.suffix.lower() in (".jpg", ".jpeg") else im.save(out)
    return out
