"""Expert pictures: an anomaly map drawn over the query image in one of five styles.

`faithful` mode reproduces MMAD's pictures (protocol §7): the image scaled to at most 512 px on
its longer side, the map min-max normalised, regions = pixels above two thirds of the maximum
(the median when more than half the pixels pass), external contours, contours under 0.1 % of the
image area dropped (contour area as OpenCV measures it), red (255, 0, 0) 2 px marks, boxes merged
by nearest centres down to 2 (3 for ground truth), viridis colours (highlight alpha 0.7, 0.4 for
ground truth). Such pictures always mark something, even on normal images.

`calibrated` mode draws only pixels above the expert's calibrated pixel threshold, and nothing at
all on an image the expert judged normal (decision False); its sentence says which happened.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from .errors import MmadError

STYLES = ("bbox", "contour", "highlight", "mask", "heatmap")
MODES = ("faithful", "calibrated")
MAX_SIDE = 512
RED = (255, 0, 0)
LINE = 2
MIN_AREA_FRACTION = 0.001
ALPHA_MODEL, ALPHA_GT = 0.7, 0.4

_WHAT = {
    "bbox": "suspicious areas are marked with red boxes",
    "contour": "suspicious areas are outlined with red contours",
    "highlight": "suspicious areas are highlighted in bright colours",
    "mask": "bright areas show a mask of the suspicious regions",
    "heatmap": "brighter colours mean a higher anomaly score",
}
_FAITHFUL_WARNING = (
    " The expert always marks the most suspicious spots, even when the query image is normal, "
    "so judge by yourself whether they are real defects."
)


def sentence(style: str, mode: str = "faithful", marked: bool = True, is_gt: bool = False) -> str:
    """The prompt sentence that introduces the expert picture (protocol §4)."""
    who = "a reference annotation of the query image" if is_gt else "an anomaly detection expert's analysis of the query image"
    if mode == "faithful":
        return f"The following image is {who}; {_WHAT[style]}." + ("" if is_gt else _FAITHFUL_WARNING)
    if not marked:
        return (
            f"The following image is {who}. The expert, calibrated on normal samples, found nothing anomalous "
            "and marked nothing; it can miss subtle defects, so still inspect the query image yourself."
        )
    return (
        f"The following image is {who}; {_WHAT[style]}. The expert, calibrated on normal samples, "
        "marks only what it judges anomalous; check the marked areas against the query image."
    )


@dataclass
class Rendering:
    image: Image.Image
    sentence: str
    marked: bool
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # (x0, y0, x1, y1) inclusive, drawn size
    region: np.ndarray | None = None  # bool, the pixels the picture treats as suspicious


def scale_image(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    w, h = image.size
    if max(w, h) <= max_side:
        return image.convert("RGB")
    s = max_side / max(w, h)
    return image.convert("RGB").resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)


def resize_map(amap: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
    w, h = size
    a = np.asarray(amap, dtype=np.float32)
    if a.ndim == 3:
        a = a.max(axis=2)
    if a.shape == (h, w):
        return a
    interp = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR}.get(resample)
    if interp is None:
        raise MmadError(f"resample {resample!r}: use nearest or bilinear")
    return cv2.resize(a, (w, h), interpolation=interp)


def normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros_like(a, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def faithful_binary(norm: np.ndarray) -> np.ndarray:
    """MMAD's threshold: two thirds of the maximum, or the median when more than half pass."""
    if norm.max() <= 0:
        return np.zeros(norm.shape, bool)
    binary = norm > norm.max() * 2 / 3
    if binary.mean() > 0.5:
        binary = norm > np.median(norm)
    return binary


def find_contours(binary: np.ndarray, *, area_filter: bool) -> list[np.ndarray]:
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if area_filter:
        min_area = MIN_AREA_FRACTION * binary.shape[0] * binary.shape[1]
        contours = [c for c in contours if cv2.contourArea(c) >= min_area]
    return list(contours)


def merge_boxes(boxes: list[tuple[int, int, int, int]], keep: int) -> list[tuple[int, int, int, int]]:
    """Repeatedly merge the two boxes with the nearest centres until at most `keep` remain."""
    boxes = list(boxes)
    while len(boxes) > keep:
        c = np.array([((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes])
        d = np.linalg.norm(c[:, None] - c[None], axis=2)
        d[np.tril_indices(len(boxes))] = np.inf
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        a, b = boxes[i], boxes[j]
        merged = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
        boxes = [x for k, x in enumerate(boxes) if k not in (i, j)] + [merged]
    return boxes


def _viridis_lut() -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


_LUT: np.ndarray | None = None


def viridis(norm: np.ndarray) -> np.ndarray:
    global _LUT
    if _LUT is None:
        _LUT = _viridis_lut()
    return _LUT[np.clip(np.round(norm * 255), 0, 255).astype(np.int64)]


def render(
    image: Image.Image,
    amap: np.ndarray | None,
    style: str,
    *,
    mode: str = "faithful",
    is_gt: bool = False,
    pixel_threshold: float | None = None,
    decision: bool | None = None,
    resample: str | None = None,
) -> Rendering:
    """Draw `amap` on `image` in `style` (bbox, contour, highlight, mask, heatmap).

    `resample`: how the map is resized to the 512 px picture; default nearest for ground truth,
    bilinear otherwise (MMAD: nearest for masks and AnomalyCLIP, bilinear for PatchCore).
    """
    if style not in STYLES:
        raise MmadError(f"visualisation {style!r} is unknown; use one of {', '.join(STYLES)}")
    if mode not in MODES:
        raise MmadError(f"render mode {mode!r} is unknown; use faithful or calibrated")
    base = scale_image(image)
    w, h = base.size
    resample = resample or ("nearest" if is_gt else "bilinear")
    m = np.zeros((h, w), np.float32) if amap is None else resize_map(amap, (w, h), resample)
    m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)

    # region map and the values that colour it
    if is_gt:
        region = m > 0  # the mask is the region: no threshold, no area filter
        contours = find_contours(region, area_filter=False)
        colour = region.astype(np.float32)
    elif mode == "faithful":
        colour = normalise(m)
        contours = find_contours(faithful_binary(colour), area_filter=True)
        region = _filled(contours, (h, w))
    else:
        if pixel_threshold is None:
            raise MmadError("calibrated rendering needs the expert's pixel threshold; calibrate the expert (expert fit does) or use faithful mode")
        if decision is False:
            contours = []
        else:
            contours = find_contours(m > pixel_threshold, area_filter=True)
        region = _filled(contours, (h, w))
        hi = max(float(m.max()), pixel_threshold)
        colour = np.where(region, np.clip((m - pixel_threshold) / (hi - pixel_threshold + 1e-12), 0, 1), 0).astype(np.float32)

    marked = bool(contours)
    text = sentence(style, mode, marked, is_gt)
    boxes: list[tuple[int, int, int, int]] = []
    if is_gt and not marked:
        return Rendering(base, text, False, [], region)  # normal image: the plain picture (§7)

    arr = np.asarray(base, dtype=np.uint8).copy()
    if style == "bbox":
        rects = [cv2.boundingRect(c) for c in contours]
        boxes = merge_boxes([(x, y, x + bw - 1, y + bh - 1) for x, y, bw, bh in rects], 3 if is_gt else 2)
        for x0, y0, x1, y1 in boxes:
            cv2.rectangle(arr, (x0, y0), (x1, y1), RED, LINE)
    elif style == "contour":
        if contours:
            cv2.drawContours(arr, contours, -1, RED, LINE)
    elif style == "highlight":
        alpha = ALPHA_GT if is_gt else ALPHA_MODEL
        blended = alpha * viridis(colour).astype(np.float32) + (1 - alpha) * arr.astype(np.float32)
        if mode == "calibrated" and not is_gt:
            blended = np.where(region[..., None], blended, arr)  # nothing outside what it believes
        arr = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    elif style == "mask":
        arr = viridis(region.astype(np.float32) if (mode == "calibrated" or is_gt) else colour)
    else:  # heatmap
        arr = viridis(colour)
    return Rendering(Image.fromarray(arr), text, marked, boxes, region)


def _filled(contours: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    if contours:
        cv2.drawContours(canvas, contours, -1, 1, thickness=cv2.FILLED)
    return canvas.astype(bool)
