"""MMAD's rules about image keys and answer letters (protocol §1, §6), and the image file suffixes:
written once here, imported everywhere else.

An image key is the image's path under the data root, `<dataset>/<category>/<split>/<defect>/<file>`
(e.g. `VisA/fryum/test/good/0001.png`).
"""

from __future__ import annotations

from pathlib import PurePath

LETTERS = "ABCDE"  # the option letters MMAD uses, in order
VALID_LETTERS = frozenset(LETTERS)  # an answer outside these is a parse failure (dropped from accuracy)

# MMAD's eight question types; scores merge the last two into the subtask "Object Analysis" (§6)
QUESTION_TYPES = (
    "Anomaly Detection",
    "Defect Classification",
    "Defect Localization",
    "Defect Description",
    "Defect Analysis",
    "Object Classification",
    "Object Structure",
    "Object Details",
)
OBJECT_ANALYSIS_TYPES = ("Object Structure", "Object Details")

# files taken as images wherever a folder is listed (normal images, references, expert fits)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def is_normal_key(key: str) -> bool:
    """MMAD's rule, kept literally: an image is normal when its key contains `good` anywhere, so a
    defective image whose path contains `good` is scored as normal (builders refuse such keys)."""
    return "good" in key


def dataset_of(key: str) -> str:
    """The key's first part (`VisA`): scores are grouped by it."""
    return key.split("/")[0]


def category_of(key: str) -> str:
    """The key's second part (`fryum`), or "" for a key without one."""
    parts = key.split("/")
    return parts[1] if len(parts) > 1 else ""


def is_image_file(path: str | PurePath) -> bool:
    return PurePath(path).suffix.lower() in IMAGE_SUFFIXES
