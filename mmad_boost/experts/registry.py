"""Experts by name, and fitted expert folders loaded back.

The registry names its experts as lazy `module:attr` entries, so this module imports no concrete
expert and the concrete experts import only `base` (no import cycle). Each expert's defaults are
its constructor's; `patchcore-fewshot` adds MMAD's set-up on top. `register_expert` adds a user's
own expert class or factory under a name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import MmadError
from ..registry import Registry
from .base import DEFAULT_FALSE_MARKS, Expert, NormalScores, check_false_marks

# MMAD's expert runs (protocol §7): PatchCore fitted per query on its templates at 224 px, coreset
# keeping 99 %, the nearest template patch's distance, GrabCut foreground. The backbone stays this
# machine's (EfficientNet-Lite0 strides 8+16 for WideResNet-50 layer2+3: docs/faithful.md).
MMAD_FEWSHOT = {"size": 224, "coreset_ratio": 0.99, "knn": 1, "topk": 0.0, "foreground": True}

EXPERTS = Registry("expert", hint="patchcore, patchcore-fewshot, gt, anomalyclip, anomalib:<Model> or a fitted expert folder")
EXPERTS.register("patchcore", "mmad_boost.experts.patchcore:PatchCore")
EXPERTS.alias("patchcore-fewshot", "patchcore", fixed={"mode": "few-shot"}, **MMAD_FEWSHOT)
EXPERTS.alias("patchcore-few-shot", "patchcore-fewshot")
EXPERTS.register("gt", "mmad_boost.experts.gt:GroundTruthExpert")
EXPERTS.register("anomalyclip", "mmad_boost.experts.anomalyclip:AnomalyCLIP")
EXPERTS.register("anomalib", "mmad_boost.experts.anomalib_adapter:AnomalibExpert", rest=True)  # anomalib:<Model>


def register_expert(name: str, target: str | Callable[..., Any]) -> None:
    """Add an expert name: `target(**options)` (a class, a factory or `"module:attr"`) builds it."""
    EXPERTS.register(name, target)


def _looks_like_expert(obj) -> bool:
    return callable(getattr(obj, "predict", None))


def create_expert(name: Any, **kw) -> Expert:
    """An expert by name: patchcore, patchcore-fewshot, gt, anomalyclip, anomalib:<Model>; a fitted
    expert folder; or a user object with `predict` (returned as is). Option strings (`--option
    knn=2`) are converted by the expert's constructor signature."""
    if _looks_like_expert(name):
        return name
    if not isinstance(name, (str, Path)):
        raise MmadError(f"expert {name!r}: give a name (patchcore, gt, anomalyclip, anomalib:<Model>) or an object with predict()")
    spec = str(name)
    if Path(spec).is_dir() and (Path(spec) / "expert.json").is_file():
        return load_expert(spec)
    return EXPERTS.create(spec, **kw)


def load_expert(directory: str | Path, *, false_marks: float | None = None) -> Expert:
    """A saved expert (expert.json + .npy arrays; no pickle); `false_marks` moves its thresholds
    to that target rate using the normal scores stored at fit time."""
    from .folder_schema import read_folder

    meta, arrays = read_folder(directory)  # expert.json checked against the schema, .npy headers before allocation
    meta_file = Path(directory) / "expert.json"
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
    expert._load_state(arrays)
    expert.fitted = bool(meta.get("fitted", True))
    expert.image_threshold = meta.get("image_threshold")
    expert.pixel_threshold = meta.get("pixel_threshold")
    cal = meta.get("calibration")
    if isinstance(cal, dict):  # folders from before stored scores have thresholds only
        try:
            expert.normals = NormalScores(
                [float(v) for v in cal["normal_scores"]],
                [float(v) for v in cal["normal_map_max"]],
                str(cal.get("method", "?")),
                check_false_marks(cal.get("false_marks", DEFAULT_FALSE_MARKS)),
                float(cal.get("margin", 1.0)),
            )
            if not expert.normals.scores or len(expert.normals.scores) != len(expert.normals.map_max):
                raise ValueError("normal_scores and normal_map_max must be non-empty lists of one length")
        except (KeyError, TypeError, ValueError, MmadError) as e:
            raise MmadError(f"{meta_file}: field 'calibration' is damaged ({e}); refit with `mmad-boost expert fit`") from None
    if false_marks is not None:
        expert.set_false_marks(false_marks)
    return expert
