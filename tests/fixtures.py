"""A small generated MMAD-format benchmark: synthetic objects, some with drawn defects and masks."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmad_boost.models.base import MLLM

CATS = {"widget": (200, 120, 40), "gadget": (60, 140, 200)}
GRID = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]


def _object(color, seed, size=128):
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size), (30, 30, 30))
    d = ImageDraw.Draw(im)
    j = rng.randint(-3, 3)
    d.ellipse((20 + j, 20 + j, size - 20 + j, size - 20 + j), fill=color)
    return im


def make_fixture(root: Path, n_good: int = 3, n_bad: int = 3, dataset: str = "MVTec-AD", n_train: int = 4) -> Path:
    """Writes images, masks and mmad.json under root; returns the question file."""
    root = Path(root)
    data = {}
    cats = list(CATS)
    for ci, (cat, color) in enumerate(CATS.items()):
        base = root / dataset / cat
        train = [f"{dataset}/{cat}/train/good/{i:03d}.png" for i in range(n_train)]
        for i, key in enumerate(train):
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            _object(color, f"{cat}train{i}").save(root / key)
        for i in range(n_good + n_bad):
            bad = i >= n_good
            label = "scratch" if bad and i % 2 == 0 else ("hole" if bad else "good")
            key = f"{dataset}/{cat}/test/{label}/{i:03d}.png"
            im = _object(color, f"{cat}{i}")
            mask_rel = ""
            if bad:
                x, y = 30 + 10 * (i % 4), 35 + 12 * (i % 3)
                ImageDraw.Draw(im).rectangle((x, y, x + 16, y + 12), fill=(250, 250, 250))
                m = Image.new("L", im.size, 0)
                ImageDraw.Draw(m).rectangle((x, y, x + 16, y + 12), fill=255)
                mask_rel = f"ground_truth/{label}/{i:03d}_mask.png"
                (base / mask_rel).parent.mkdir(parents=True, exist_ok=True)
                m.save(base / mask_rel)
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            im.save(root / key)
            conv = [
                {
                    "Question": "Is there any defect in the object?",
                    "Options": {"A": "Yes", "B": "No"},
                    "Answer": "A" if bad else "B",
                    "type": "Anomaly Detection",
                    "annotation": True,
                },
                {
                    "Question": "What kind of product is in the image?",
                    "Options": {"A": cats[ci], "B": cats[1 - ci], "C": "bottle", "D": "screw"},
                    "Answer": "A",
                    "type": "Object Classification",
                    "annotation": True,
                },
            ]
            if bad:
                conv.append(
                    {
                        "Question": "What type of defect is on the object?",
                        "Options": {"A": "scratch", "B": "hole", "C": "stain", "D": "crack"},
                        "Answer": "A" if label == "scratch" else "B",
                        "type": "Defect Classification",
                        "annotation": True,
                    }
                )
                conv.append(
                    {
                        "Question": "Where is the defect?",
                        "Options": {"A": "top left", "B": "center", "C": "bottom", "D": "right"},
                        "Answer": "B",
                        "type": "Defect Localization",
                        "annotation": True,
                    }
                )
            data[key] = {
                "image_path": key,
                "mask_path": mask_rel,
                "base_folder": cat,
                "conversation": conv,
                "similar_templates": list(reversed(train)),
                "random_templates": train,
            }
    qf = root / "mmad.json"
    qf.write_text(json.dumps(data, indent=1))
    return qf


def write_image(path: Path, seed: int = 0, size=(64, 48)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


class Recorder(MLLM):
    """A base model that keeps every prompt it receives and answers the first option."""

    name = "recorder"

    def __init__(self):
        self.prompts = []
        self.lock = threading.Lock()

    def generate(self, prompt):
        with self.lock:
            self.prompts.append(prompt)
        return "Answer: A"


def grid_patchcore(grids: dict, **kw):
    """A PatchCore whose backbone is replaced by known patch-score grids (looked up per image object):
    with a bank holding only the origin, each patch score is the norm of its feature, its grid value."""
    from mmad_boost.experts import create_expert

    expert = create_expert("patchcore", size=48, sigma=0, **kw)

    def features(images, progress=None):
        out = []
        for im in images:
            g = grids[id(im)]
            out.append(np.stack([g, np.zeros_like(g)], -1).astype(np.float32))
        return np.stack(out)

    expert.features = features
    expert.bank = np.zeros((1, 2), np.float32)
    expert._index, expert.fitted = expert._index_of(expert.bank), True
    return expert
