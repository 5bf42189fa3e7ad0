"""Anomaly-detection experts whose maps become the expert picture of a prompt.

`create_expert(name, **kw)` builds one by name (patchcore, patchcore-fewshot, gt, anomalyclip,
anomalib:<Model>, or a fitted expert folder); `load_expert(dir)` reloads a saved one;
`cached_predict` stores maps on disk per (expert state, image).
"""
from .base import Expert, ExpertOutput, cached_predict, calibration_thresholds, create_expert, image_hash, load_expert

__all__ = ["Expert", "ExpertOutput", "cached_predict", "calibration_thresholds", "create_expert", "image_hash", "load_expert"]
