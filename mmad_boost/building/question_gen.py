"""MMAD-format questions generated from what an image's labels and mask prove.

Rules (documented in docs/builder.md):
- Anomaly Detection, every test image: "Is there any defect in the object?" Yes / No.
- Object Classification, every test image: the category; distractors are the other categories of
  the build, then generic product names unrelated to the category.
- Defect Classification, defective images: the defect type. With several labels on one image
  (VisA `bubble,discolor`) the correct option is the first label and none of the image's other
  labels may appear among the distractors, so exactly one option names a defect that is present.
  Distractors are the category's other defect types, padded with generic defect names unrelated
  to any of the category's types when there are fewer than three.
- Defect Localization, defective images: the image is split 3x3 (protocol §9). The defect's cells
  are those holding at least MIN_CELL_SHARE of the mask's pixels (ordered by share); distractors
  are cells the mask does not touch at all, in sets of the same size. When the defect covers more
  than MAX_CELLS cells, or fewer cells are untouched than the defect covers, the position is not
  a fair question and no localisation question is asked.
Options are shuffled with a generator seeded by (seed, image key, question type).
"""

from __future__ import annotations

import itertools
import random
import re

import numpy as np

from ..protocol.keys import LETTERS

GRID = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
MIN_CELL_SHARE = 0.15
MAX_CELLS = 3
N_OPTIONS = 4

AD_QUESTION = "Is there any defect in the object?"
OC_QUESTION = "What kind of product is shown in the image?"
DC_QUESTION = "What type of defect is present on the object?"
DL_QUESTION = "Where in the image is the defect located?"

GENERIC_DEFECTS = ("scratch", "crack", "hole", "stain", "contamination", "deformation", "missing part", "dent", "fold", "burn mark")
GENERIC_OBJECTS = ("bottle", "screw", "cable", "zipper", "toothbrush", "carpet", "leather", "metal nut", "tile", "hazelnut", "wood plank", "candle")


def human(name: str) -> str:
    """Folder or label name as option text: `broken_large` -> `broken large`."""
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip()


def join_names(names: list[str]) -> str:
    names = [human(n) for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def related(a: str, b: str) -> bool:
    """Crude guard against near-synonym distractors: a word of one starts a word of the other."""
    for wa in re.findall(r"[a-z]+", a.lower()):
        for wb in re.findall(r"[a-z]+", b.lower()):
            short, long_ = sorted((wa, wb), key=len)
            if len(short) >= 3 and short[:5] in long_:
                return True
    return False


def rng_for(seed: int, key: str, qtype: str) -> random.Random:
    return random.Random(f"{seed}|{key}|{qtype}")


def make_question(text: str, correct: str, distractors: list[str], qtype: str, rng: random.Random) -> dict:
    options = [correct] + distractors
    if len(set(options)) != len(options) or len(options) > len(LETTERS):
        raise ValueError(f"bad options for {qtype}: {options}")
    rng.shuffle(options)
    lettered = {LETTERS[i]: o for i, o in enumerate(options)}
    answer = LETTERS[options.index(correct)]
    return {"Question": text, "Options": lettered, "Answer": answer, "type": qtype, "annotation": True}


def anomaly_detection(is_normal: bool, rng: random.Random) -> dict:
    return make_question(AD_QUESTION, "No" if is_normal else "Yes", ["Yes" if is_normal else "No"], "Anomaly Detection", rng)


def object_classification(category: str, other_categories: list[str], rng: random.Random) -> dict:
    correct = human(category)
    others = [human(c) for c in other_categories if c != category and not related(c, category)]
    rng.shuffle(others)
    pool = [g for g in GENERIC_OBJECTS if not related(g, category) and g not in others]
    rng.shuffle(pool)
    distractors = list(dict.fromkeys(others + pool))[: N_OPTIONS - 1]
    return make_question(OC_QUESTION, correct, distractors, "Object Classification", rng)


def defect_classification(labels: tuple[str, ...], category_types: list[str], rng: random.Random) -> dict:
    correct = human(labels[0])
    own = {human(t) for t in labels}
    others = [human(t) for t in category_types if human(t) not in own]
    pool = [g for g in GENERIC_DEFECTS if not any(related(g, t) for t in list(category_types) + list(labels))]
    rng.shuffle(others)
    rng.shuffle(pool)
    distractors = list(dict.fromkeys(others + pool))[: N_OPTIONS - 1]
    return make_question(DC_QUESTION, correct, distractors, "Defect Classification", rng)


def grid_shares(mask: np.ndarray) -> np.ndarray:
    """Share of the mask's pixels in each of the nine cells (row-major, GRID order)."""
    mask = np.asarray(mask) > 0
    h, w = mask.shape
    ys, xs = [0, h // 3, 2 * h // 3, h], [0, w // 3, 2 * w // 3, w]
    counts = np.array([mask[ys[r] : ys[r + 1], xs[c] : xs[c + 1]].sum() for r in range(3) for c in range(3)], dtype=np.float64)
    total = counts.sum()
    return counts / total if total else counts


def defect_cells(shares: np.ndarray) -> list[int]:
    cells = [i for i in np.argsort(-shares, kind="stable") if shares[i] >= MIN_CELL_SHARE]
    return [int(i) for i in cells]


def defect_localization(shares: np.ndarray, rng: random.Random) -> dict | None:
    cells = defect_cells(shares)
    untouched = [i for i in range(9) if shares[i] == 0]
    if not cells or len(cells) > MAX_CELLS or not untouched:
        return None
    k = len(cells)
    combos = [sorted(c) for c in itertools.combinations(untouched, k)]
    rng.shuffle(combos)
    distractors = [join_names([GRID[i] for i in c]) for c in combos[: N_OPTIONS - 1]]
    if not distractors:
        return None
    correct = join_names([GRID[i] for i in sorted(cells)])
    return make_question(DL_QUESTION, correct, distractors, "Defect Localization", rng)
