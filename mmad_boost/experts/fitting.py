"""Fitting an expert on a category's normal images, written once for `mmad-boost expert fit` and
for BoostedModel's fit on demand, so both apply the same rules:

- the normal images are the image files of ROOT/DATASET/CATEGORY/train/good, sorted by name;
- every expert but the ground truth needs at least 2 of them (to fit and to calibrate);
- `holdout` None calibrates on all of them, each scored by a model that did not see it; a fraction
  keeps that last share out of fitting for calibration (experts.base.holdout_split);
- calibration sits at the target false-mark rate (experts.base.fit_and_calibrate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MmadError
from ..protocol.image_files import list_images
from .base import DEFAULT_FALSE_MARKS, check_false_marks, fit_and_calibrate, holdout_split


def normal_folder(root: str | Path, dataset: str, category: str) -> Path:
    return Path(root) / dataset / category / "train" / "good"


def check_holdout(holdout: float | None) -> float | None:
    if holdout is not None and not 0 < float(holdout) < 1:
        raise MmadError(
            f"holdout {holdout}: use the fraction (between 0 and 1) of each category's normal images kept for calibration, "
            "or leave it unset (all normals, each scored unseen)"
        )
    return None if holdout is None else float(holdout)


@dataclass
class Fitted:
    expert: object
    fit_files: list[Path] = field(default_factory=list)
    calibration_files: list[Path] = field(default_factory=list)  # empty: calibrated on the fitting images, each unseen


def fit_on_folder(
    expert, folder: Path, *, holdout: float | None = None, false_marks: float = DEFAULT_FALSE_MARKS, margin: float = 1.0, progress=None
) -> Fitted:
    """Fit `expert` (an unfitted instance) on the normal images in `folder` and calibrate it."""
    from ..protocol.data import load_rgb

    holdout, false_marks = check_holdout(holdout), check_false_marks(false_marks)
    files = list_images(folder)
    if len(files) < 2 and not getattr(expert, "needs_mask", False):  # the ground truth needs no normals
        raise MmadError(
            f"{folder}: expert {getattr(expert, 'name', '?')} needs at least 2 normal images here (to fit and to calibrate), "
            f"found {len(files)}; add them or pass a fitted expert folder"
        )
    fit_files, cal_files = holdout_split(files, holdout) if holdout is not None else (files, [])
    fit_and_calibrate(expert, [load_rgb(f) for f in fit_files], [load_rgb(f) for f in cal_files], margin=margin, false_marks=false_marks, progress=progress)
    return Fitted(expert, fit_files, cal_files)
