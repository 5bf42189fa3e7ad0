"""A calibrated expert's verdict in words, for the prompt beside (or instead of) its picture.

The text says what the picture shows, in a form a language model reads without parsing pixels:
the score relative to the calibrated threshold, and each marked region's nine-grid position
(protocol §9, the names the localisation questions use) and its share of the image. Faithful
mode has no verdict to state (MMAD's pictures mark every image), so it never carries this text.
"""

from __future__ import annotations

import numpy as np

MAX_REGIONS = 3  # the largest regions named; the rest are counted


def grid_cell(x: float, y: float, width: int, height: int) -> str:
    """Nine-grid name of a point, cells split at thirds as question_gen.grid_shares does."""
    from ..building.question_gen import GRID

    col = min(2, int(3 * x / max(1, width)))
    row = min(2, int(3 * y / max(1, height)))
    return GRID[3 * row + col]


def regions(region: np.ndarray | None) -> list[tuple[str, float]]:
    """(nine-grid position of the centroid, share of the image) per connected marked region, largest first."""
    import cv2

    if region is None or not np.asarray(region).any():
        return []
    mask = np.asarray(region, np.uint8)
    n, _, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    h, w = mask.shape
    found = [(grid_cell(centroids[i][0], centroids[i][1], w, h), float(stats[i, cv2.CC_STAT_AREA]) / (h * w)) for i in range(1, n)]
    return sorted(found, key=lambda r: -r[1])


def _share(v: float) -> str:
    pct = 100 * v
    return f"{pct:.1f} %" if pct >= 0.1 else "under 0.1 %"


def verdict_text(score: float, threshold: float | None, decision: bool | None, region: np.ndarray | None) -> str:
    """The expert's verdict as one or two sentences (calibrated mode)."""
    if threshold is not None and threshold > 0 and np.isfinite(score):
        level = f"scores the query image at {score / threshold:.2f} times its anomaly threshold"
    elif decision is not None:
        level = f"scores the query image {'above' if decision else 'at or below'} its anomaly threshold"
    else:
        level = "has no calibrated threshold"
    head = f"The anomaly detection expert, calibrated on normal samples, {level}"
    found = regions(region) if decision else []
    if not found:
        return head + ": it judges the image normal and marks nothing. It can miss subtle defects, so still inspect the query image yourself."
    named = "; ".join(f"{pos} (about {_share(a)} of the image)" for pos, a in found[:MAX_REGIONS])
    more = f", and {len(found) - MAX_REGIONS} smaller one{'s' if len(found) - MAX_REGIONS > 1 else ''}" if len(found) > MAX_REGIONS else ""
    n = len(found)
    return head + f": it judges the image anomalous and marks {n} region{'s' if n > 1 else ''}: {named}{more}. Check these areas against the query image."
