"""The expert protocol, its output, calibration, saving and the map cache (names and loading: experts/registry.py).

An expert fits on normal images of a category (or on nothing, for zero-shot), then turns an image
into an anomaly map at image size and an image score. Once calibrated on held-out normal images it
also decides "anomalous or not" and knows which pixel values count as anomalous.

Calibration rule (documented contract, see experts/README.md): every training normal gets a
score from a model that did not see it (PatchCore: the bank without that image's entries; other
experts: k-fold refits), and the thresholds sit at a target false-mark rate `a` (default 0.1):
- image threshold = the ceil((n+1)(1-a))-th smallest of the n normal image scores (a conformal
  quantile: a new normal image scores above it with probability at most `a`), times `margin`;
  with fewer than 1/a - 1 normals no such bound exists and the largest score is used;
- pixel threshold = the same quantile of the normal maps' maxima (a new normal map has any pixel
  above it with probability at most `a`), never above the image threshold, so a detected image
  has a region to draw.
The normal scores are stored with the expert, so the rate can be changed without refitting.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from ..atomic import save_npy, write_text
from ..errors import MmadError

FORMAT_VERSION = 1
DEFAULT_FALSE_MARKS = 0.1  # target share of normal images marked; see docs/benchmarks.md for the choice
CALIBRATION_FOLDS = 5  # k-fold refits for experts that cannot score a normal without refitting


@dataclass
class ExpertOutput:
    map: np.ndarray  # float32, H x W at the image's size
    score: float
    decision: bool | None = None  # True = anomalous, None = uncalibrated
    pixel_threshold: float | None = None
    cached: bool = False  # came from the map cache (no inference)


def image_hash(image: Image.Image) -> str:
    """Content hash of a PIL image (pixels, size, mode)."""
    h = hashlib.sha1()
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:20]


def array_hash(*arrays: np.ndarray, extra: str = "") -> str:
    h = hashlib.sha1(extra.encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def check_false_marks(rate) -> float:
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        rate = -1.0
    if not 0 < rate < 1:
        raise MmadError(f"false-mark rate {rate!r}: use a fraction between 0 and 1 of normal images the expert may mark, e.g. 0.1")
    return rate


def conformal_threshold(scores: Sequence[float], false_marks: float) -> float:
    """The ceil((n+1)(1-a))-th smallest score (the largest when that exceeds n): for exchangeable
    normal scores, P(new normal score > it) <= a (or 1/(n+1) when capped)."""
    s = np.sort(np.asarray(list(scores), dtype=np.float64))
    if s.size == 0:
        raise MmadError("calibration needs at least one normal image score; give more normal images")
    k = int(np.ceil((s.size + 1) * (1 - check_false_marks(false_marks))))
    return float(s[min(k, s.size) - 1])


def calibration_thresholds(
    scores: Sequence[float], maps_or_maxima: Sequence, margin: float = 1.0, false_marks: float = DEFAULT_FALSE_MARKS
) -> tuple[float, float]:
    """(image threshold, pixel threshold) from normal images' scores and maps (or map maxima); see module doc."""
    scores = list(scores)
    if not scores:
        raise MmadError("calibration needs at least one held-out normal image; give more normal images")
    maxima = [float(np.max(m)) for m in maps_or_maxima]
    image_t = conformal_threshold(scores, false_marks) * margin
    return image_t, min(conformal_threshold(maxima, false_marks), image_t)


@dataclass
class NormalScores:
    """What calibration learned from the normal images: kept in the expert folder."""

    scores: list[float]  # image scores of normal images, each from a model that had not seen it
    map_max: list[float]  # their maps' maxima
    method: str  # leave-one-out, k-fold or holdout
    false_marks: float = DEFAULT_FALSE_MARKS
    margin: float = 1.0

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "false_marks": self.false_marks,
            "margin": self.margin,
            "normal_scores": [round(float(v), 6) for v in self.scores],
            "normal_map_max": [round(float(v), 6) for v in self.map_max],
        }


@runtime_checkable
class AnomalyExpert(Protocol):
    """What a boost needs of an expert object: `predict`. Optional traits, read with their
    defaults when absent: `name`, `needs_mask` (the ground truth), `needs_templates` (fits on the
    prompt's normal images), `image_threshold` (set once calibrated), `save(folder)`."""

    def predict(self, image: Image.Image, *, mask: np.ndarray | None = None, templates: list[Image.Image] | None = None) -> ExpertOutput: ...


class Expert:
    """Base class. Subclasses implement `_predict_map(image, mask, templates) -> (map, score)`
    and, when they learn anything, `fit`, `_state()` and `_load_state()`."""

    name = "expert"
    kind = "expert"  # factory name written to expert.json
    needs_mask = False
    needs_templates = False
    resample = "bilinear"  # how the renderer should resize this expert's maps (protocol §7)

    def __init__(self) -> None:
        self.fitted = False
        self.image_threshold: float | None = None
        self.pixel_threshold: float | None = None
        self.normals: NormalScores | None = None  # set by calibration; None for folders written before it was kept

    # -- protocol -------------------------------------------------------------
    def fit(self, images: list[Image.Image]) -> "Expert":
        self.fitted = True
        return self

    def predict(self, image: Image.Image, *, mask: np.ndarray | None = None, templates: list[Image.Image] | None = None) -> ExpertOutput:
        if not self.fitted and not self.needs_templates:
            raise MmadError(f"expert {self.name}: predict called before fit; call fit(normal_images) or load a fitted expert folder")
        amap, score = self._predict_map(image, mask, templates)
        return self.output(amap, score)

    def _predict_map(self, image, mask, templates) -> tuple[np.ndarray, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def output(self, amap: np.ndarray, score: float) -> ExpertOutput:
        return ExpertOutput(np.asarray(amap, dtype=np.float32), float(score), self.decide(score), self.pixel_threshold)

    def decide(self, score: float) -> bool | None:
        return None if self.image_threshold is None else bool(score > self.image_threshold)

    @property
    def calibrated(self) -> bool:
        return self.image_threshold is not None

    def calibrate(
        self, normal_images: list[Image.Image], *, margin: float = 1.0, templates: list[Image.Image] | None = None, false_marks: float = DEFAULT_FALSE_MARKS
    ) -> "Expert":
        """Calibrate on held-out normal images (not seen by fit)."""
        outs = [self.predict(im, templates=templates) for im in normal_images]
        return self.calibrate_from(NormalScores([o.score for o in outs], [float(o.map.max()) for o in outs], "holdout", false_marks, margin))

    def calibrate_from(self, normals: NormalScores) -> "Expert":
        self.normals = normals
        return self.set_false_marks(normals.false_marks)

    def set_false_marks(self, rate: float) -> "Expert":
        """Move the thresholds to another target false-mark rate (no refit: uses the stored normal scores)."""
        if self.normals is None:
            raise MmadError(
                f"expert {self.name}: no stored normal scores to recalibrate from (folder written by an older version); refit with `mmad-boost expert fit`"
            )
        self.normals.false_marks = check_false_marks(rate)
        self.image_threshold, self.pixel_threshold = calibration_thresholds(self.normals.scores, self.normals.map_max, self.normals.margin, rate)
        return self

    def predict_batch(self, images: list[Image.Image], *, templates: list[Image.Image] | None = None) -> list[ExpertOutput]:
        return [self.predict(im, templates=templates) for im in images]

    # -- identity and persistence ----------------------------------------------
    def config(self) -> dict:
        return {}

    def _state(self) -> dict[str, np.ndarray]:
        return {}

    def _load_state(self, arrays: dict[str, np.ndarray]) -> None:
        pass

    @property
    def state_id(self) -> str:
        """Hash of configuration and fitted state (not calibration): names cached maps."""
        state = self._state()
        return array_hash(*(state[k] for k in sorted(state)), extra=self.kind + json.dumps(self.config(), sort_keys=True))

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = self._state()
        for k, a in state.items():
            save_npy(d / f"{k}.npy", a)  # atomic: a full disk leaves no half array
        meta = {
            "format": FORMAT_VERSION,
            "kind": self.kind,
            "config": self.config(),
            "fitted": self.fitted,
            "arrays": sorted(state),
            "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold,
            "state_id": self.state_id,
        }
        if self.normals is not None:
            meta["calibration"] = self.normals.to_json()
        write_text(d / "expert.json", json.dumps(meta, indent=1))
        return d


def learns_from_normals(expert) -> bool:
    """Fitted on a category's normal images: not the ground truth (reads masks) and not few-shot
    (fits per query on its templates)."""
    return not (getattr(expert, "needs_mask", False) or getattr(expert, "needs_templates", False))


def holdout_split(files: Sequence, holdout: float) -> tuple[list, list]:
    """(fit part, calibration part) of a category's sorted normal images: the last `holdout`
    fraction (at least 1) is held out for calibration, and at least 1 image is left to fit."""
    if not 0 < holdout < 1:
        raise MmadError(f"holdout {holdout}: use a fraction between 0 and 1")
    files = list(files)
    n_cal = min(len(files) - 1, max(1, round(len(files) * holdout))) if len(files) >= 2 else 0
    return files[: len(files) - n_cal], files[len(files) - n_cal :]


def fit_and_calibrate(
    expert,
    fit_images: list[Image.Image],
    calibration_images: list[Image.Image] | None = None,
    *,
    margin: float = 1.0,
    false_marks: float = DEFAULT_FALSE_MARKS,
    folds: int = CALIBRATION_FOLDS,
    progress=None,
):
    """Fit on normal images (experts that learn nothing skip it) and calibrate at a target false-mark rate.

    Without `calibration_images` every fitting image is also a calibration image, scored by a model
    that did not see it: the expert's own `fit_and_score_normals` (PatchCore: leave one image out
    of the fitted bank), else `folds`-fold refits on copies. With them (the older hold-out way) the
    expert fits on `fit_images` only; a few-shot expert scores each held-out image against the first
    fitting image as its template, as MMAD's 1-shot queries are scored.
    """
    check_false_marks(false_marks)
    if getattr(expert, "needs_mask", False):
        return expert.fit(fit_images) if fit_images else expert  # the ground truth: nothing to calibrate
    if calibration_images:
        if learns_from_normals(expert):
            expert.fit(fit_images)
        few_shot = getattr(expert, "needs_templates", False)
        return expert.calibrate(calibration_images, margin=margin, templates=fit_images[:1] if few_shot else None, false_marks=false_marks)
    if len(fit_images) < 2:
        raise MmadError(f"calibration from the training normals needs at least 2 images; found {len(fit_images)}")
    own = getattr(expert, "fit_and_score_normals", None)
    if type(expert).fit is Expert.fit and isinstance(expert, Expert):  # zero-shot: nothing learnt, every normal is unseen
        expert.fit(fit_images)
        outs = [expert.predict(im) for im in fit_images]
        scores, maxima, method = [o.score for o in outs], [float(np.max(o.map)) for o in outs], "zero-shot"
    elif callable(own):
        scores, maxima = own(fit_images, progress=progress)
        method = "leave-one-out" if learns_from_normals(expert) else "next-image template"
    else:
        scores, maxima, method = _kfold_scores(expert, fit_images, folds, progress), None, f"{min(folds, len(fit_images))}-fold"
        maxima = [m for _, m in scores]
        scores = [s for s, _ in scores]
        if learns_from_normals(expert):
            expert.fit(fit_images)
    return expert.calibrate_from(NormalScores(list(map(float, scores)), list(map(float, maxima)), method, false_marks, margin))


def _kfold_scores(expert, images, folds, progress) -> list[tuple[float, float]]:
    """(score, map max) of each image from a copy of the unfitted expert fitted on the other folds."""
    import copy

    k = max(2, min(int(folds), len(images)))
    out: list = [None] * len(images)
    for f in range(k):
        held = list(range(f, len(images), k))
        rest = [im for i, im in enumerate(images) if i % k != f]
        part = copy.deepcopy(expert)
        part.fit(rest)
        for i in held:
            o = part.predict(images[i])
            out[i] = (float(o.score), float(np.max(o.map)))
        if progress is not None:
            progress("calibration folds", f + 1, k)
    return out


def cached_predict(
    expert, image: Image.Image, cache_dir: str | Path | None, *, mask: np.ndarray | None = None, templates: list[Image.Image] | None = None
) -> ExpertOutput:
    """`expert.predict` with maps stored per (expert state, image, templates/mask) as float16 .npy.

    The decision is recomputed from the score with the expert's current calibration, so
    recalibrating does not invalidate the cache.
    """
    kwargs = {}
    if getattr(expert, "needs_mask", False):
        kwargs["mask"] = mask
    if getattr(expert, "needs_templates", False) or templates is not None:
        kwargs["templates"] = templates
    if cache_dir is None:
        return expert.predict(image, **kwargs)
    parts = [getattr(expert, "state_id", None) or type(expert).__name__, image_hash(image)]
    if kwargs.get("templates") is not None and getattr(expert, "needs_templates", False):
        parts.append(hashlib.sha1("".join(image_hash(t) for t in templates).encode()).hexdigest()[:12])
    if kwargs.get("mask") is not None:
        parts.append(array_hash(np.asarray(mask)))
    key = "-".join(parts)
    d = Path(cache_dir)
    map_file, meta_file = d / f"{key}.npy", d / f"{key}.json"
    if map_file.is_file() and meta_file.is_file():
        try:
            amap = np.load(map_file, allow_pickle=False).astype(np.float32)
            score = float(json.loads(meta_file.read_text())["score"])
            decide = getattr(expert, "decide", None)
            return ExpertOutput(amap, score, decide(score) if decide else None, getattr(expert, "pixel_threshold", None), cached=True)
        except (OSError, ValueError, KeyError):
            pass  # a torn cache entry: recompute
    out = expert.predict(image, **kwargs)
    save_npy(map_file, np.asarray(out.map, dtype=np.float16))  # unique temporary names: threads sharing a cache never collide
    write_text(meta_file, json.dumps({"score": out.score}))
    return out
