"""The expert protocol, its output, calibration, saving/loading and the map cache.

An expert fits on normal images of a category (or on nothing, for zero-shot), then turns an image
into an anomaly map at image size and an image score. Once calibrated on held-out normal images it
also decides "anomalous or not" and knows which pixel values count as anomalous.

Calibration rule (documented contract, see experts/README.md):
- image threshold = max of the held-out normal image scores when fewer than 20 are given, else
  their 99th percentile; times `margin` (default 1.0). Score > threshold -> anomalous.
- pixel threshold = the 99.9th percentile of all pixel values of the held-out normal maps, but
  never above the image threshold (so a detected image always has a region to draw).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import MmadError

FORMAT_VERSION = 1


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


def calibration_thresholds(scores: Sequence[float], maps: Sequence[np.ndarray], margin: float = 1.0) -> tuple[float, float]:
    """(image threshold, pixel threshold) from normal images' scores and maps; see module doc."""
    scores = np.asarray(list(scores), dtype=np.float64)
    if scores.size == 0:
        raise MmadError("calibration needs at least one held-out normal image; give more normal images")
    image_t = float(scores.max() if scores.size < 20 else np.quantile(scores, 0.99)) * margin
    pixels = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps])
    pixel_t = min(float(np.quantile(pixels, 0.999)), image_t)
    return image_t, pixel_t


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

    def calibrate(self, normal_images: list[Image.Image], *, margin: float = 1.0, templates: list[Image.Image] | None = None) -> "Expert":
        outs = [self.predict(im, templates=templates) for im in normal_images]
        self.image_threshold, self.pixel_threshold = calibration_thresholds([o.score for o in outs], [o.map for o in outs], margin)
        return self

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
            np.save(d / f"{k}.npy", a, allow_pickle=False)
        meta = {
            "format": FORMAT_VERSION, "kind": self.kind, "config": self.config(), "fitted": self.fitted,
            "arrays": sorted(state), "image_threshold": self.image_threshold, "pixel_threshold": self.pixel_threshold,
            "state_id": self.state_id,
        }
        (d / "expert.json").write_text(json.dumps(meta, indent=1))
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
    return files[: len(files) - n_cal], files[len(files) - n_cal:]


def fit_and_calibrate(expert, fit_images: list[Image.Image], calibration_images: list[Image.Image], *, margin: float = 1.0):
    """Fit on normal images (experts that learn nothing skip it) and calibrate on held-out ones.
    A few-shot expert scores each held-out image against the first fitting image as its template,
    as MMAD's 1-shot queries are scored."""
    if learns_from_normals(expert):
        expert.fit(fit_images)
    if calibration_images:
        few_shot = getattr(expert, "needs_templates", False)
        expert.calibrate(calibration_images, margin=margin, templates=fit_images[:1] if few_shot else None)
    return expert


def _registry() -> dict[str, Any]:
    from .gt import GroundTruthExpert
    from .patchcore import PatchCore

    return {"patchcore": PatchCore, "gt": GroundTruthExpert}


def _looks_like_expert(obj) -> bool:
    return callable(getattr(obj, "predict", None))


def create_expert(name: Any, **kw) -> Expert:
    """An expert by name: patchcore, patchcore-fewshot, gt, anomalyclip, anomalib:<Model>; a fitted
    expert folder; or a user object with `predict` (returned as is)."""
    if _looks_like_expert(name):
        return name
    if not isinstance(name, (str, Path)):
        raise MmadError(f"expert {name!r}: give a name (patchcore, gt, anomalyclip, anomalib:<Model>) or an object with predict()")
    spec = str(name)
    if Path(spec).is_dir() and (Path(spec) / "expert.json").is_file():
        return load_expert(spec)
    if spec in ("patchcore-fewshot", "patchcore-few-shot"):
        spec, kw = "patchcore", {**kw, "mode": "few-shot"}
    if spec.startswith("anomalib:"):
        from .anomalib_adapter import AnomalibExpert

        return AnomalibExpert(spec.split(":", 1)[1], **kw)
    if spec == "anomalyclip":
        from .anomalyclip import AnomalyCLIP

        return AnomalyCLIP(**kw)
    reg = _registry()
    if spec not in reg:
        raise MmadError(
            f"expert {spec!r} is unknown; use patchcore, patchcore-fewshot, gt, anomalyclip, anomalib:<Model> or a fitted expert folder"
        )
    return reg[spec](**kw)


def load_expert(directory: str | Path) -> Expert:
    """A saved expert (expert.json + .npy arrays; no pickle)."""
    d = Path(directory)
    meta_file = d / "expert.json"
    if not meta_file.is_file():
        raise MmadError(f"{meta_file} not found; pass a folder written by `mmad-boost expert fit` or expert.save()")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise MmadError(f"{meta_file}: not valid JSON ({e.msg}); refit the expert") from None
    kind, config = meta.get("kind"), dict(meta.get("config", {}))
    if kind == "anomalib":
        kind = f"anomalib:{config.pop('model', 'Patchcore')}"
    elif kind == "patchcore":
        config.setdefault("topk", 0.0)  # folders written before `topk` existed scored by the largest patch,
        config.setdefault("knn", 1)  # and before `knn` by the nearest bank entry alone
        if config.get("mode") == "few-shot":
            config.pop("mode")
            kind = "patchcore-fewshot"
    expert = create_expert(kind, **config)
    arrays = {}
    for k in meta.get("arrays", []):
        f = d / f"{k}.npy"
        if not f.is_file():
            raise MmadError(f"{f} missing from the expert folder; refit with `mmad-boost expert fit`")
        try:
            arrays[k] = np.load(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # damaged, or an object array that would need pickle
            raise MmadError(f"{f}: not a plain NumPy array file ({e}); refit with `mmad-boost expert fit`") from None
    expert._load_state(arrays)
    expert.fitted = bool(meta.get("fitted", True))
    expert.image_threshold = meta.get("image_threshold")
    expert.pixel_threshold = meta.get("pixel_threshold")
    return expert


def cached_predict(expert, image: Image.Image, cache_dir: str | Path | None, *, mask: np.ndarray | None = None,
                   templates: list[Image.Image] | None = None) -> ExpertOutput:
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
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{key}.tmp.npy"
    np.save(tmp, np.asarray(out.map, dtype=np.float16), allow_pickle=False)
    tmp.replace(map_file)
    meta_file.write_text(json.dumps({"score": out.score}))
    return out
