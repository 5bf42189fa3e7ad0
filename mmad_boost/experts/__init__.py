"""Anomaly-detection experts whose maps become the expert picture of a prompt.

`create_expert(name, **kw)` builds one by name (patchcore, patchcore-fewshot, gt, anomalyclip,
anomalib:<Model>, or a fitted expert folder; `register_expert` adds one); `load_expert(dir)` reloads a saved one;
`cached_predict` stores maps on disk per (expert state, image).
"""

from .base import Expert, ExpertOutput, cached_predict, calibration_thresholds, image_hash
from .registry import EXPERTS, create_expert, load_expert, register_expert

__all__ = ["EXPERTS", "Expert", "ExpertOutput", "cached_predict", "calibration_thresholds", "create_expert", "image_hash", "load_expert", "register_expert"]
