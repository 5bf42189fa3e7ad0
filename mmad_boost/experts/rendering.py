"""Expert pictures: an anomaly map drawn over the query image in one of five styles.

`faithful` mode reproduces MMAD's drawing code (protocol §7, `evaluation/examples/SoftPatch/call.py`)
pixel for pixel, given the same map: the query scaled to at most 512 px on its longer side
(int() sizes, bicubic); the map resized to it (bilinear, nearest for masks and AnomalyCLIP),
optionally zeroed outside a GrabCut foreground, then divided by its maximum (min-max for
AnomalyCLIP); regions = pixels strictly above two thirds of the maximum (above the element at
int(n/2) of the sorted values when more than half pass), external contours with area strictly
above 0.1 % of the image; red 2 px marks, boxes merged by nearest centres down to 2 (3 for
ground truth) and drawn to (x + w, y + h); viridis truncated to uint8; highlight =
Image.blend(transparent, colour, 0.7) alpha-composited over the query (ground truth:
cv2.addWeighted 0.6 / 0.4). Such pictures always mark something, even on normal images.

`calibrated` mode draws only pixels above the expert's calibrated pixel threshold, and nothing at
all on an image the expert judged normal (decision False); its sentence says which happened.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from ..errors import MmadError

STYLES = ("bbox", "contour", "highlight", "mask", "heatmap")
MODES = ("faithful", "calibrated")
MAX_SIDE = 512
RED = (255, 0, 0)
LINE = 2
MIN_AREA_FRACTION = 0.001
ALPHA_MODEL = 0.7  # calibrated highlight: a plain 0.7 / 0.3 mix inside the marked regions
NORMALISATIONS = ("max", "min-max")

_WHAT = {
    "bbox": "suspicious areas are marked with red boxes",
    "contour": "suspicious areas are outlined with red contours",
    "highlight": "suspicious areas are highlighted in bright colours",
    "mask": "bright areas show a mask of the suspicious regions",
    "heatmap": "brighter colours mean a higher anomaly score",
}
_FAITHFUL_WARNING = (
    " The expert always marks the most suspicious spots, even when the query image is normal, so judge by yourself whether they are real defects."
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
    """The query as MMAD draws on it: longer side at most `max_side`, new size (int(w*s), int(h*s)),
    PIL's bicubic filter (the default of MMAD's `query_image.resize(new_size)` for RGB)."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    if max(w, h) <= max_side:
        return rgb
    s = max_side / max(w, h)
    return rgb.resize((max(1, int(w * s)), max(1, int(h * s))), Image.Resampling.BICUBIC)


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


def normalise(a: np.ndarray, how: str = "max") -> np.ndarray:
    """A model map scaled for drawing. `max`: divided by its maximum (MMAD's PatchCore code: a
    positive floor stays); `min-max`: (a - min) / (max - min) (MMAD's AnomalyCLIP code). A map
    with no positive range draws as zeros (MMAD would divide by zero)."""
    if how not in NORMALISATIONS:
        raise MmadError(f"normalisation {how!r}: use one of {', '.join(NORMALISATIONS)}")
    a = np.asarray(a, dtype=np.float32)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if how == "max":
        return a / a.max() if np.isfinite(hi) and hi > 0 else np.zeros_like(a)
    return (a - lo) / (hi - lo) if np.isfinite(hi - lo) and hi > lo else np.zeros_like(a)


def faithful_binary(norm: np.ndarray) -> np.ndarray:
    """MMAD's regions: pixels strictly above two thirds of the maximum (cv2.threshold, which
    compares in float32); when more than half pass, above the element at int(n/2) of the sorted
    values instead."""
    if not norm.size or not norm.max() > 0:
        return np.zeros(norm.shape, bool)
    norm = np.ascontiguousarray(norm, dtype=np.float32)
    _, binary = cv2.threshold(norm, float(norm.max()) * (1 - 1 / 3), 1, cv2.THRESH_BINARY)
    if np.count_nonzero(binary) / binary.size > 0.5:
        median = np.sort(norm, axis=None)[int(0.5 * norm.size)]
        _, binary = cv2.threshold(norm, float(median), 1, cv2.THRESH_BINARY)
    return binary > 0


def find_contours(binary: np.ndarray, *, area_filter: bool) -> list[np.ndarray]:
    """External contours; with `area_filter`, only those whose cv2.contourArea is strictly above
    0.001 x W x H (computed in MMAD's order, so a contour exactly at the limit is dropped)."""
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if area_filter:
        h, w = binary.shape
        contours = [c for c in contours if cv2.contourArea(c) > MIN_AREA_FRACTION * w * h]
    return list(contours)


def merge_boxes(rects: list[tuple[int, int, int, int]], keep: int) -> list[tuple[int, int, int, int]]:
    """MMAD's merging of cv2.boundingRect boxes (x, y, w, h): while more than `keep` remain, the
    pair with the nearest centres (x + w/2, y + h/2) becomes their union, appended last; on equal
    distances the first pair in (i, j) order wins."""
    rects = [tuple(int(v) for v in r) for r in rects]
    while len(rects) > keep:
        r = np.array(rects, dtype=np.int64)
        cx, cy = 2 * r[:, 0] + r[:, 2], 2 * r[:, 1] + r[:, 3]  # doubled centres: exact integer distances
        d = (cx[:, None] - cx[None]) ** 2 + (cy[:, None] - cy[None]) ** 2
        d[np.tril_indices(len(rects))] = np.iinfo(np.int64).max
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)  # row-major: the first minimal (i, j)
        (x1, y1, w1, h1), (x2, y2, w2, h2) = rects[i], rects[j]
        x, y = min(x1, x2), min(y1, y2)
        merged = (x, y, max(x1 + w1, x2 + w2) - x, max(y1 + h1, y2 + h2) - y)
        rects = [b for k, b in enumerate(rects) if k not in (i, j)] + [merged]
    return rects


def viridis(values: np.ndarray) -> np.ndarray:
    """matplotlib's viridis of values in [0, 1], `[..., :3] * 255` cast to uint8 (truncated, as MMAD)."""
    import matplotlib

    return (matplotlib.colormaps["viridis"](values)[..., :3] * 255).astype(np.uint8)


def mmad_foreground(query: Image.Image) -> np.ndarray | None:
    """MMAD's foreground on the drawn query: GrabCut (RGB array, 5 iterations) from the rectangle
    (int(0.01 W), int(0.01 H), int(0.98 W), int(0.98 H)); foreground = every pixel not labelled
    probable background (so the 1 % border strip, labelled definite background, counts as
    foreground, as in MMAD's code). None when it covers under 5 % of the image (filter skipped).
    GrabCut takes seconds at 512 px: the last few results are kept (five styles, one GrabCut)."""
    arr = np.array(query.convert("RGB"))
    key = hashlib.sha1(arr.tobytes() + repr(arr.shape).encode()).hexdigest()
    with _FG_LOCK:
        if key in _FG_CACHE:
            return _FG_CACHE[key]
    fg = _grabcut_foreground(arr)
    with _FG_LOCK:
        _FG_CACHE[key] = fg
        while len(_FG_CACHE) > 8:
            _FG_CACHE.pop(next(iter(_FG_CACHE)))
    return fg


_FG_CACHE: dict[str, np.ndarray | None] = {}
_FG_LOCK = threading.Lock()


def _grabcut_foreground(arr: np.ndarray) -> np.ndarray | None:
    h, w = arr.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's k-means initialisation draws from OpenCV's RNG: same picture every run
    try:
        cv2.grabCut(arr, mask, (int(w * 0.01), int(h * 0.01), int(w * 0.98), int(h * 0.98)), bgd, fgd, 5, cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # an image too small or too flat for GrabCut's models: no filter, as when too little is found
        return None
    fg = mask != cv2.GC_PR_BGD
    fg.flags.writeable = False  # shared through the cache
    return None if np.sum(fg) < 0.05 * fg.size else fg


def drawing_options(expert) -> dict:
    """The render() keywords an expert implies: ground truth or not, how its maps are resized and
    normalised, and whether MMAD's GrabCut foreground filter applies (protocol §7)."""
    return {
        "is_gt": bool(getattr(expert, "needs_mask", False)),
        "resample": getattr(expert, "resample", None),
        "normalisation": getattr(expert, "normalisation", "max"),
        "foreground": bool(getattr(expert, "foreground", False)),
    }


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
    normalisation: str = "max",
    foreground: bool = False,
) -> Rendering:
    """Draw `amap` on `image` in `style` (bbox, contour, highlight, mask, heatmap).

    `resample`: how the map is resized to the 512 px picture; default nearest for ground truth,
    bilinear otherwise (MMAD: nearest for masks and AnomalyCLIP, bilinear for PatchCore).
    `normalisation` (faithful model maps): max (PatchCore, default) or min-max (AnomalyCLIP).
    `foreground`: zero the model map outside MMAD's GrabCut foreground of the drawn query first.
    `drawing_options(expert)` gives all four for an expert.
    """
    if style not in STYLES:
        raise MmadError(f"viz {style!r} (how the expert's map is drawn) is unknown; use one of {', '.join(STYLES)}")
    if mode not in MODES:
        raise MmadError(f"render mode {mode!r} is unknown; use faithful or calibrated")
    if normalisation not in NORMALISATIONS:
        raise MmadError(f"normalisation {normalisation!r}: use one of {', '.join(NORMALISATIONS)}")
    base = scale_image(image)
    w, h = base.size
    resample = resample or ("nearest" if is_gt else "bilinear")
    m = np.zeros((h, w), np.float32) if amap is None else resize_map(amap, (w, h), resample)
    m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    if is_gt:
        return _render_gt(base, m, style, mode)
    if foreground and amap is not None:
        fg = mmad_foreground(base)
        if fg is not None:
            m = np.where(fg, m, np.float32(0))
    if mode == "faithful":
        return _render_faithful(base, m, style, normalisation)
    return _render_calibrated(base, m, style, pixel_threshold, decision)


def _inclusive(rects) -> list[tuple[int, int, int, int]]:
    return [(x, y, x + bw - 1, y + bh - 1) for x, y, bw, bh in rects]


def _draw_mmad_marks(arr: np.ndarray, contours, style: str, keep: int) -> list[tuple[int, int, int, int]]:
    """MMAD's red marks, 2 px: each contour, or the merged boxes drawn to (x + w, y + h), one
    pixel beyond each box's last row and column."""
    rects: list = []
    if style == "contour":
        for c in contours:
            cv2.drawContours(arr, [c], -1, RED, LINE)
    else:
        rects = merge_boxes([cv2.boundingRect(c) for c in contours], keep)
        for x, y, bw, bh in rects:
            cv2.rectangle(arr, (x, y), (x + bw, y + bh), RED, LINE)
    return _inclusive(rects)


def _render_faithful(base: Image.Image, m: np.ndarray, style: str, normalisation: str) -> Rendering:
    norm = normalise(m, normalisation)
    contours = find_contours(faithful_binary(norm), area_filter=True)
    region = _filled(contours, m.shape)
    text, boxes = sentence(style, "faithful", bool(contours)), []
    if style in ("bbox", "contour"):
        arr = np.asarray(base, dtype=np.uint8).copy()
        boxes = _draw_mmad_marks(arr, contours, style, 2)
        pic = Image.fromarray(arr)
    elif style == "highlight":  # Image.blend onto transparent black, alpha-composited: ~0.49 colour + 0.3 image
        overlay = Image.blend(Image.new("RGBA", base.size), Image.fromarray(viridis(norm)).convert("RGBA"), 0.7)
        pic = Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB")
    elif style == "heatmap":
        pic = Image.fromarray(viridis(norm))
    else:  # mask: MMAD's PatchCore code has none; as for ground truth, viridis of the marked regions
        pic = Image.fromarray(viridis(region.astype(np.float32)))
    return Rendering(pic, text, bool(contours), boxes, region)


def gt_binary(mask: np.ndarray) -> np.ndarray:
    """MMAD's reading of a mask: maximum 1 -> as is; maximum 255 -> // 255; otherwise > 0."""
    top = mask.max() if mask.size else 0
    if top == 1:
        return (mask == 1).astype(np.uint8)
    if top == 255:
        return (mask // 255).astype(np.uint8)
    return (mask > 0).astype(np.uint8)


def _render_gt(base: Image.Image, m: np.ndarray, style: str, mode: str) -> Rendering:
    """MMAD's ground-truth pictures (the same in both modes: a mask is the truth)."""
    binary = gt_binary(m)
    contours = find_contours(binary, area_filter=False)
    text, region = sentence(style, mode, bool(contours), True), binary.astype(bool)
    if not contours:
        return Rendering(base, text, False, [], region)  # normal image: the plain picture (§7)
    arr, boxes = np.asarray(base, dtype=np.uint8).copy(), []
    colour = viridis(binary / binary.max())
    if style in ("bbox", "contour"):
        boxes = _draw_mmad_marks(arr, contours, style, 3)
    elif style == "highlight":
        arr = cv2.addWeighted(arr, 0.6, colour, 0.4, 0)
    else:  # mask; heatmap (MMAD has no ground-truth heatmap): the same viridis of the mask
        arr = colour
    return Rendering(Image.fromarray(arr), text, True, boxes, region)


def _render_calibrated(base: Image.Image, m: np.ndarray, style: str, pixel_threshold, decision) -> Rendering:
    """This project's rule: only pixels above the calibrated pixel threshold, nothing on an image
    judged normal; boxes drawn on their own last row and column."""
    if pixel_threshold is None:
        raise MmadError("calibrated rendering needs the expert's pixel threshold; calibrate the expert (expert fit does) or use faithful mode")
    contours = [] if decision is False else find_contours(m > pixel_threshold, area_filter=True)
    if not contours and decision:  # judged anomalous, but all above the threshold is under MMAD's area floor:
        contours = find_contours(m > pixel_threshold, area_filter=False)  # small defects are what it must not hide
    region = _filled(contours, m.shape)
    hi = max(float(m.max()), pixel_threshold)
    colour = np.where(region, np.clip((m - pixel_threshold) / (hi - pixel_threshold + 1e-12), 0, 1), 0).astype(np.float32)
    marked = bool(contours)
    text, boxes = sentence(style, "calibrated", marked), []
    arr = np.asarray(base, dtype=np.uint8).copy()
    if style == "bbox":
        boxes = _inclusive(merge_boxes([cv2.boundingRect(c) for c in contours], 2))
        for x0, y0, x1, y1 in boxes:
            cv2.rectangle(arr, (x0, y0), (x1, y1), RED, LINE)
    elif style == "contour":
        if contours:
            cv2.drawContours(arr, contours, -1, RED, LINE)
    elif style == "highlight":  # nothing outside what it believes
        blended = ALPHA_MODEL * viridis(colour).astype(np.float32) + (1 - ALPHA_MODEL) * arr.astype(np.float32)
        arr = np.where(region[..., None], np.clip(np.round(blended), 0, 255), arr).astype(np.uint8)
    elif style == "mask":
        arr = viridis(region.astype(np.float32))
    else:  # heatmap
        arr = viridis(colour)
    return Rendering(Image.fromarray(arr), text, marked, boxes, region)


def _filled(contours: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    if contours:
        cv2.drawContours(canvas, contours, -1, 1, thickness=cv2.FILLED)
    return canvas.astype(bool)
