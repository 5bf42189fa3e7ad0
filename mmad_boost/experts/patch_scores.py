"""PatchCore's scoring: patch scores from the memory bank's nearest neighbours, and the rules
(IMAGE_SCORES) that turn an image's patch-score grid into its image score: the top-k mean, a
blurred grid's maximum, or a scan over blur widths (region-size-aware)."""

from __future__ import annotations

import numpy as np

from ..errors import MmadError


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


def reweighted_score(index, flat: np.ndarray, scores: np.ndarray, nn: np.ndarray) -> float:
    """PatchCore's image score: the largest patch distance, damped when its nearest memory
    entry sits in a dense region (paper eq. 7, k = 9), which steadies normal images' scores."""
    i = int(np.argmax(scores))
    k = min(9, index.ntotal)
    _, support = index.search(np.ascontiguousarray(index.reconstruct(int(nn[i]))[None]), k)
    bank = np.stack([index.reconstruct(int(j)) for j in support[0]])
    d = np.linalg.norm(bank - flat[i], axis=1)
    d = d - d.max()  # stable softmax
    weight = 1.0 - float(np.exp(d[0]) / np.exp(d).sum())
    return float(weight * scores[i])


IMAGE_SCORES = ("topk", "blur-max", "scan")
SCAN_SIGMAS = (0.0, 1.0, 2.0, 4.0)  # blur widths (patches) the scan compares: one patch up to a region ~10 patches wide


def blur_max(patch: np.ndarray, sigma: float) -> float:
    """Largest value of a 2-D patch-score grid after a Gaussian blur of `sigma` patches (edges mirrored)."""
    import cv2

    k = 2 * int(4 * sigma + 0.5) + 1
    return float(cv2.GaussianBlur(np.asarray(patch, np.float32), (k, k), sigma, borderType=cv2.BORDER_REFLECT).max())


def scale_maxima(patch: np.ndarray) -> np.ndarray:
    """The grid's maximum at each SCAN_SIGMAS blur width (0 = unblurred)."""
    return np.array([float(np.max(patch)) if s == 0 else blur_max(patch, s) for s in SCAN_SIGMAS])


def scan_null(normal_grids) -> list[list[float]]:
    """[mean, sd] of normal images' maxima at each scan width (from grids of images the bank did not
    hold). The sd is floored (a thousandth of the mean) so a width where every normal peaks alike
    cannot divide by zero. The same normals then set the threshold: each moves the statistics it
    is judged by by one n-th, a mild in-sample effect."""
    m = np.stack([scale_maxima(g) for g in normal_grids])
    if len(m) < 2:
        raise MmadError("patchcore image_score=scan needs at least 2 normal images' score grids to learn each width's spread")
    mean, sd = m.mean(0), m.std(0, ddof=1)
    sd = np.maximum(sd, 1e-3 * np.abs(mean) + 1e-12)
    return [[float(a), float(b)] for a, b in zip(mean, sd)]


def checked_scan_null(null) -> list[list[float]] | None:
    """image_score_null as given or stored: None (not fitted yet) or one [mean, sd > 0] per scan width."""
    if null is None:
        return None
    try:
        rows = [[float(a), float(b)] for a, b in null]
    except (TypeError, ValueError):
        rows = []
    if len(rows) != len(SCAN_SIGMAS) or not all(np.isfinite(a) and np.isfinite(b) and b > 0 for a, b in rows):
        raise MmadError(f"patchcore image_score_null: expected {len(SCAN_SIGMAS)} [mean, sd > 0] pairs, one per scan width; refit the expert")
    return rows


def scan_score(patch: np.ndarray, null) -> float:
    """Region-size-aware image score: at each blur width the grid's maximum as a z-score against the
    normals' (`scan_null`), the largest z taken, so one sharp patch and a faint region many patches
    wide compete on one scale. Returned as mean0 + sd0 * z (the unblurred width's units, those of
    the largest patch score), so thresholds and the pixel-threshold cap read as for top-k."""
    null = np.asarray(null, dtype=np.float64)
    z = (scale_maxima(patch) - null[:, 0]) / null[:, 1]
    return float(null[0, 0] + null[0, 1] * z.max())


def patch_image_score(patch: np.ndarray, rule: str, topk: float, sigma: float, null=None) -> float:
    """An image score from its 2-D patch-score grid by `rule` (IMAGE_SCORES); `null` for scan."""
    if rule == "scan":
        if null is None:
            raise MmadError("patchcore image_score=scan has no normal statistics yet: fit it on normal images first")
        return scan_score(patch, null)
    return blur_max(patch, sigma) if rule == "blur-max" else top_mean(patch, topk)
