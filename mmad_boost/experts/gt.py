"""The ground-truth expert: the defect mask itself is the map (MMAD's upper bound, protocol §7)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import MmadError
from .rendering import gt_binary
from .base import Expert


class GroundTruthExpert(Expert):
    name = kind = "gt"
    needs_mask = True
    resample = "nearest"

    def __init__(self) -> None:
        super().__init__()
        self.fitted = True
        # a mask is the truth: anything on it is anomalous
        self.image_threshold = 0.5
        self.pixel_threshold = 0.5

    def calibrate(self, normal_images, **kw) -> "GroundTruthExpert":
        return self  # nothing to learn

    def _predict_map(self, image: Image.Image, mask, templates):
        w, h = image.size
        if mask is None:  # a normal image has no mask: empty map
            return np.zeros((h, w), np.float32), 0.0
        m = np.asarray(mask)
        if m.ndim == 3:
            m = m.max(axis=2)
        m = gt_binary(m).astype(np.float32)  # MMAD's reading: max 1 as is, max 255 // 255, else > 0
        if m.shape != (h, w):
            if m.shape[0] * w != m.shape[1] * h and abs(m.shape[0] / m.shape[1] - h / w) > 0.02:
                raise MmadError(f"gt expert: mask size {m.shape[1]}x{m.shape[0]} does not match the image {w}x{h}; pass the image's own mask")
            m = np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize((w, h), Image.NEAREST)) > 127
            m = m.astype(np.float32)
        return m, float(m.max())
