"""A look-alike retrieval benchmark made only from the bundled VisA sample (fryum, capsules).

Like the board layouts of one PCB dataset (the same kinds of parts, placed differently), each
"layout" is a 2 x 2 board of four parts cut from the sample's photos, in a fixed arrangement:

    F  fryum, whole view          f  fryum, close-up of the middle (40 % of the side)
    C  capsules, whole view       c  capsules, close-up of the middle (40 %)
    G  fryum, a corner of the background mat (30 %)

Layout `FCcf` has F top left, C top right, c bottom left, f bottom right. Layouts made of the
same four parts differ only in where the parts sit, which a pooled global embedding largely
averages away. Every tile is cut from a randomly drawn photo with a random shift (+-6 % of the
photo) and scale (+-5 %), and every board is cropped again (88-100 % of its side, random offset):
no two boards are alike, and position is only roughly fixed. Reference boards come from the
sample's train images, query boards from its test images (normal and anomalous), so no photo is
in both. A data root in MMAD layout is written: Boards/<layout>/train/good, Boards/<layout>/test/good,
mmad.json (one question per query board) and knowledge/<layout>.toml.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
from PIL import Image

PARTS = {
    "F": ("fryum", 1.0, (0.5, 0.5)),
    "f": ("fryum", 0.4, (0.5, 0.5)),
    "C": ("capsules", 1.0, (0.5, 0.5)),
    "c": ("capsules", 0.4, (0.5, 0.5)),
    "G": ("fryum", 0.3, (0.16, 0.2)),
}
MAIN_LAYOUTS = ("FCcf", "CFfc", "fcCF", "cfFC", "FfCc", "fFcC", "CcFf", "cCfF")  # 8 arrangements of F, f, C, c
TILE = 96


def many_layouts(n: int, seed: int = 0) -> list[str]:
    """n layouts: arrangements of 4 distinct parts out of 5 (120 in all), the 8 main ones first."""
    rest = ["".join(p) for p in itertools.permutations("FfCcG", 4) if "".join(p) not in MAIN_LAYOUTS]
    np.random.default_rng(seed).shuffle(rest)
    return (list(MAIN_LAYOUTS) + rest)[:n]


def _photos(sample: Path) -> dict[tuple[str, str], list[Image.Image]]:
    rows = list(csv.DictReader(open(sample / "split_csv" / "1cls_subset.csv", newline="")))
    out: dict = {}
    for r in rows:
        with Image.open(sample / r["image"]) as im:
            out.setdefault((r["object"], r["split"]), []).append(im.convert("RGB"))
    return out


def _cut(im: Image.Image, frac: float, centre: tuple[float, float], rng) -> Image.Image:
    w, h = im.size
    s = min(1.0, frac * rng.uniform(0.95, 1.05))
    cx = float(np.clip(centre[0] + rng.uniform(-0.06, 0.06), s / 2, 1 - s / 2))
    cy = float(np.clip(centre[1] + rng.uniform(-0.06, 0.06), s / 2, 1 - s / 2))
    return im.crop((round((cx - s / 2) * w), round((cy - s / 2) * h), round((cx + s / 2) * w), round((cy + s / 2) * h)))


def board(layout: str, photos, split: str, rng) -> Image.Image:
    b = Image.new("RGB", (2 * TILE, 2 * TILE))
    for i, part in enumerate(layout):
        product, frac, centre = PARTS[part]
        pool = photos[(product, split)]
        tile = _cut(pool[int(rng.integers(len(pool)))], frac, centre, rng).resize((TILE, TILE), Image.BILINEAR)
        b.paste(tile, ((i % 2) * TILE, (i // 2) * TILE))
    s = rng.uniform(0.88, 1.0) * 2 * TILE
    x0, y0 = rng.uniform(0, 2 * TILE - s, 2)
    return b.crop((round(x0), round(y0), round(x0 + s), round(y0 + s))).resize((2 * TILE, 2 * TILE), Image.BILINEAR)


def write_boards(root: Path, sample: Path, layouts, n_train: int = 20, n_test: int = 20, seed: int = 0) -> Path:
    """Writes the data root described above; returns it. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    photos = _photos(sample)
    questions = {}
    (root / "knowledge").mkdir(parents=True, exist_ok=True)
    for layout in layouts:
        cat = f"board-{layout}"
        for split, n, folder in (("train", n_train, "train/good"), ("test", n_test, "test/good")):
            d = root / "Boards" / cat / folder
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                board(layout, photos, split, rng).save(d / f"{i:03d}.png")
                if split == "test":
                    key = f"Boards/{cat}/{folder}/{i:03d}.png"
                    questions[key] = {
                        "image_path": key,
                        "mask_path": "",
                        "base_folder": cat,
                        "similar_templates": [],
                        "random_templates": [],
                        "conversation": [
                            {
                                "Question": "Is there any defect in the object?",
                                "Options": {"A": "Yes", "B": "No"},
                                "Answer": "B",
                                "type": "Anomaly Detection",
                                "annotation": True,
                            }
                        ],
                    }
        names = {"F": "a whole fryum", "f": "a fryum close-up", "C": "a tray of capsules", "c": "a capsule close-up", "G": "a patch of mat"}
        parts = ", ".join(f"{where}: {names[p]}" for where, p in zip(("top left", "top right", "bottom left", "bottom right"), layout))
        (root / "knowledge" / f"{cat}.toml").write_text(
            f'dataset = "Boards"\ncategory = "{cat}"\nnormal = "A board of four tiles ({parts})."\n', encoding="utf-8"
        )
    (root / "mmad.json").write_text(json.dumps(questions), encoding="utf-8")
    return root
