"""An independent reading of protocol §7 (MMAD's drawing code), written plainly for the tests.

Deliberately unlike mmad_boost.experts.rendering: plain loops and NumPy comparisons instead of
cv2.threshold, float distances for box merging, a viridis table indexed by hand, and the highlight
worked out in Pillow's integer arithmetic instead of calling Image.blend / alpha_composite. Only
what §7 names as OpenCV's own (findContours, contourArea, boundingRect, drawContours, rectangle,
grabCut, resize) is called as OpenCV.
"""

from __future__ import annotations

import math

import cv2
import matplotlib
import numpy as np
from PIL import Image

VIRIDIS = np.array(matplotlib.colormaps["viridis"].colors)  # 256 x 3 floats in [0, 1]


def colour(values) -> np.ndarray:
    """matplotlib's lookup (entry floor(v x 256) computed in float32, v = 1 -> the last entry), then
    x 255 truncated to uint8."""
    v = np.asarray(values, dtype=np.float32) * np.float32(256)
    entry = np.clip(np.floor(v), 0, 255).astype(int)
    return (VIRIDIS[entry] * 255).astype(np.uint8)


def query(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    w, h = image.size
    if max(w, h) > 512:
        s = 512 / max(w, h)
        image = image.resize((int(w * s), int(h * s)), Image.BICUBIC)
    return image


def merge(boxes: list, limit: int) -> list:
    boxes = list(boxes)
    while len(boxes) > limit:
        best = None
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                (x1, y1, w1, h1), (x2, y2, w2, h2) = boxes[i], boxes[j]
                d = math.hypot((x1 + w1 / 2) - (x2 + w2 / 2), (y1 + h1 / 2) - (y2 + h2 / 2))
                if best is None or d < best[0]:
                    best = (d, i, j)
        _, i, j = best
        a, b = boxes[i], boxes[j]
        x, y = min(a[0], b[0]), min(a[1], b[1])
        joined = (x, y, max(a[0] + a[2], b[0] + b[2]) - x, max(a[1] + a[3], b[1] + b[3]) - y)
        boxes = [box for k, box in enumerate(boxes) if k != i and k != j]
        boxes.append(joined)
    return boxes


def highlight(colours: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Image.blend(transparent black, colour, 0.7) keeps trunc(0.7 c) (float32) with alpha
    trunc(0.7 x 255) = 178; alpha_composite over the opaque image in Pillow's fixed point
    (7 fraction bits, division by 255 as two shifts)."""
    src = (np.float32(0.7) * colours.astype(np.float32)).astype(np.int64)
    a = int(np.float32(0.7) * np.float32(255))
    coef1 = a * 255 * 255 * 128 // (a * 255 + 255 * (255 - a))
    coef2 = 255 * 128 - coef1
    t = src * coef1 + image.astype(np.int64) * coef2 + (128 << 7)
    return ((((t >> 8) + t) >> 8) >> 7).astype(np.uint8)


def marks(picture: np.ndarray, contours, style: str, limit: int) -> None:
    if style == "contour":
        for c in contours:
            cv2.drawContours(picture, [c], -1, (255, 0, 0), 2)
    else:
        for x, y, w, h in merge([cv2.boundingRect(c) for c in contours], limit):
            cv2.rectangle(picture, (x, y), (x + w, y + h), (255, 0, 0), 2)


def grabcut_foreground(q: Image.Image):
    a = np.array(q)
    H, W = a.shape[:2]
    labels = np.zeros((H, W), np.uint8)
    cv2.setRNGSeed(0)
    cv2.grabCut(a, labels, (int(W * 0.01), int(H * 0.01), int(W * 0.98), int(H * 0.98)), np.zeros((1, 65)), np.zeros((1, 65)), 5, cv2.GC_INIT_WITH_RECT)
    keep = labels != 2  # MMAD: `mask != 2`
    return None if keep.sum() < 0.05 * keep.size else keep


def model_picture(image: Image.Image, amap: np.ndarray, style: str, *, nearest: bool = False, foreground: bool = False) -> np.ndarray:
    q = query(image)
    W, H = q.size
    m = np.asarray(amap, dtype=np.float32)
    if m.shape != (H, W):
        m = cv2.resize(m, (W, H), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
    if foreground:
        keep = grabcut_foreground(q)
        if keep is not None:
            m = np.where(keep, m, np.float32(0))
    norm = m / m.max()
    binary = norm > np.float32(norm.max() * (1 - 1 / 3))
    if binary.sum() / binary.size > 0.5:
        binary = norm > sorted(norm.ravel().tolist())[int(0.5 * norm.size)]
    contours, _ = cv2.findContours(binary.astype(np.uint8) * 255, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = [c for c in contours if cv2.contourArea(c) > 0.001 * W * H]
    picture = np.array(q)
    if style in ("bbox", "contour"):
        marks(picture, contours, style, 2)
        return picture
    if style == "heatmap":
        return colour(norm)
    if style == "highlight":
        return highlight(colour(norm), picture)
    filled = np.zeros((H, W), np.uint8)  # mask (not in MMAD's PatchCore code): the marked regions
    cv2.drawContours(filled, contours, -1, 1, -1)
    return colour(filled)


def gt_picture(image: Image.Image, mask: np.ndarray | None, style: str) -> np.ndarray:
    q = query(image)
    W, H = q.size
    picture = np.array(q)
    if mask is None:
        return picture
    gt = mask if mask.shape == (H, W) else cv2.resize(mask, (W, H), interpolation=cv2.INTER_NEAREST)
    if gt.max() == 1:
        binary = gt.astype(np.uint8)
    elif gt.max() == 255:
        binary = (gt // 255).astype(np.uint8)
    else:
        binary = (gt > 0).astype(np.uint8)
    colours = colour(binary / binary.max())
    if style in ("mask", "heatmap"):
        return colours
    if style == "highlight":
        return np.rint(np.float32(0.6) * picture.astype(np.float32) + np.float32(0.4) * colours.astype(np.float32)).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    marks(picture, contours, style, 3)
    return picture
