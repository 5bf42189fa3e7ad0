"""PatchCore's scoring: patch scores from the memory bank's nearest neighbours, and the rules
(IMAGE_SCORES) that turn an image's patch-score grid into its image score."""

from __future__ import annotations

import numpy as np


def knn_patch_scores(index, flat: np.ndarray, knn: int) -> tuple[np.ndarray, np.ndarray]:
    """(patch scores = mean L2 distance to the `knn` nearest bank entries, index of the nearest)."""
    dist, nn = index.search(flat, min(knn, index.ntotal))
    return np.sqrt(np.maximum(dist, 0)).mean(1).astype(np.float32), nn[:, 0]


def top_mean(scores: np.ndarray, topk: float) -> float:
    """Mean of the top `topk` fraction of scores (at least one); the largest when topk = 0."""
    if topk <= 0:
        return float(scores.max())
    n = max(1, int(np.ceil(topk * scores.size)))
    return float(np.partition(scores.ravel(), scores.size - n)[-n:].mean())


IMAGE_SCORES = ("topk", "blur-max")


def blur_max(patch: np.ndarray, sigma: float) -> float:
    """Largest value of a 2-D patch-score grid after a Gaussian blur of `sigma` patches (edges mirrored)."""
    import cv2

    k = 2 * int(4 * sigma + 0.5) + 1
    return float(cv2.GaussianBlur(np.asarray(patch, np.float32), (k, k), sigma, borderType=cv2.BORDER_REFLECT).max())


def patch_image_score(patch: np.ndarray, rule: str, topk: float, sigma: float) -> float:
    """An image score from its 2-D patch-score grid by `rule` (IMAGE_SCORES)."""
    return blur_max(patch, sigma) if rule == "blur-max" else top_mean(patch, topk)
