"""Second retrieval stage: patch-level matching of the query with the shortlisted references.

The global embedding (one pooled vector per image) cannot tell two layouts of one board, or two
brands of one can, apart: pooling throws away where and which details are. The re-ranker looks at
the patch features PatchCore uses (the backbone's stride-8 and stride-16 maps, 3x3-averaged and
concatenated; `experts.patchcore.shared_backbone`) and compares two images by their symmetric mean
nearest-patch distance (Chamfer distance between the two sets of patch features):

    d(Q, R) = 1/2 (mean over q in Q of min over r in R |q - r| + mean over r in R of min over q in Q |r - q|)

With `radius` = r, a patch is matched only within r patches of its own grid position (both maps
resized to the same square grid): the layout counts (two boards made of the same parts in other
places differ), yet a shift or crop of up to r patches costs nothing. `radius=None` matches
anywhere (pure Chamfer, fully translation-invariant). Both directions count, so a query showing
only part of a reference (or a reference with details the query lacks) is not a perfect match. A
category's distance is that of its nearest reference.

Only the references of the `shortlist` best categories of the global stage are compared, so the
cost per query is bounded by shortlist x references per category, whatever the number of categories.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import MmadError
from ..experts.backbones import DEFAULT_BACKBONE, parse_spec

# Chosen by leave-one-out over training boards of the look-alike benchmark (never its query boards):
# shortlist 8 beat 3 at every size (the global stage's top 3 misses the true layout for 5 % of them);
# sizes 128 and 160 tied at 100 % for radius 1, 3 and 5, 224 was worse; 128 is the cheaper one, and
# radius 3 (of 1, 3, 5: a tie) the middle. benchmarks/bench_retrieval.py --choose prints the grid.
DEFAULT_SIZE = 128  # working size: 16 x 16 patches of 152 dims (EfficientNet-Lite0)
DEFAULT_SHORTLIST = 8  # categories handed on by the global stage
DEFAULT_RADIUS = 3  # patches (of 16 per side): shifts up to ~19 % of the image are free
MIN_MARGIN = 0.02  # relative margin under which two categories are a tie, whatever the calibration says


class PatchReranker:
    """Patch features of images and Chamfer distances between them (one shared backbone per process)."""

    def __init__(self, backbone: str = DEFAULT_BACKBONE, size: int = DEFAULT_SIZE, shortlist: int = DEFAULT_SHORTLIST, radius: int | None = DEFAULT_RADIUS):
        if int(size) < 32 or int(shortlist) < 1 or (radius is not None and int(radius) < 0):
            raise MmadError(f"re-ranker size {size}, shortlist {shortlist}, radius {radius}: use size >= 32, shortlist >= 1, radius >= 0 or None")
        parse_spec(backbone)  # a missing weights file fails here, not at the first query
        self.backbone, self.size, self.shortlist = backbone, int(size), int(shortlist)
        self.radius = None if radius is None else int(radius)
        self._extractor = None
        self._windows: dict[int, np.ndarray] = {}

    def __getstate__(self):  # Ray ships retrievers with cloudpickle: the extractor (locks, traces) is rebuilt there
        return {**self.__dict__, "_extractor": None}

    def config(self) -> dict:
        return {"backbone": self.backbone, "size": self.size, "shortlist": self.shortlist, "radius": self.radius}

    @classmethod
    def from_config(cls, cfg: dict) -> "PatchReranker":
        return cls(
            cfg.get("backbone", DEFAULT_BACKBONE), cfg.get("size", DEFAULT_SIZE), cfg.get("shortlist", DEFAULT_SHORTLIST), cfg.get("radius", DEFAULT_RADIUS)
        )

    def features(self, images: list[Image.Image]) -> np.ndarray:
        """(N, patches, C) float32, each patch L2-normalised (brightness changes scale features)."""
        if not images:
            return np.zeros((0, 0, 0), np.float32)
        if self._extractor is None:
            from ..experts.patchcore import PatchCore

            self._extractor = PatchCore(backbone=self.backbone, size=self.size, batch=8)  # its `features`: the same machinery
        f = self._extractor.features(list(images))
        f = f.reshape(len(f), -1, f.shape[-1]).astype(np.float32)
        return f / np.maximum(np.linalg.norm(f, axis=2, keepdims=True), 1e-6)

    def _window(self, patches: int) -> np.ndarray | None:
        """(P, 1, P) 0 where two grid cells are within `radius` of each other, else -4 (None: anywhere)."""
        if self.radius is None:
            return None
        if patches not in self._windows:
            g = int(round(patches**0.5))
            y, x = np.divmod(np.arange(patches), g)
            near = (np.abs(y[:, None] - y[None]) <= self.radius) & (np.abs(x[:, None] - x[None]) <= self.radius)
            self._windows[patches] = np.where(near, 0.0, -4.0).astype(np.float32)[:, None, :]  # added: out of reach = never nearest
        return self._windows[patches]

    def distances(self, query: np.ndarray, refs: np.ndarray) -> np.ndarray:
        """Symmetric mean nearest-patch distance of one query (P, C) to each of M references (M, P, C)."""
        if len(refs) == 0:
            return np.zeros(0, np.float32)
        m, p, c = refs.shape
        if query.shape != (p, c):
            raise MmadError(f"re-ranker: query patches {query.shape} do not match the references' {(p, c)}; rebuild the KB")
        q = np.ascontiguousarray(query, dtype=np.float32)
        r = refs.reshape(m * p, c)  # float32 references convert for free; keep them so (TwoStageDecision does)
        # unit vectors: |q - r|^2 = 2 - 2 q.r
        sim = (q @ r.T.astype(np.float32, copy=False)).reshape(p, m, p)
        window = self._window(p)
        if window is not None:
            sim += window
        d_q = np.sqrt(np.maximum(2 - 2 * sim.max(axis=2), 0)).mean(axis=0)  # each query patch to its nearest in R
        d_r = np.sqrt(np.maximum(2 - 2 * sim.max(axis=0), 0)).mean(axis=1)  # each reference patch to its nearest in Q
        return (0.5 * (d_q + d_r)).astype(np.float32)


def relative_margin(best: float, runner_up: float | None) -> float:
    """(runner-up distance - best distance) / runner-up distance: 0 = a tie, 1 = nothing else is close."""
    if runner_up is None or not np.isfinite(runner_up):
        return 1.0
    return float((runner_up - best) / max(runner_up, 1e-9))


def calibrate_margin(margins, correct, max_risk: float = 0.0) -> float:
    """The smallest margin threshold (>= MIN_MARGIN) at which the leave-one-out decisions it still
    accepts are wrong at most `max_risk` of the time; 0 = every leave-one-out mistake becomes unknown."""
    m = np.asarray(margins, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    # the risk only changes just above a mistake's margin: those are the only candidates
    for t in sorted({MIN_MARGIN} | {float(x) + 1e-6 for x in m[~ok] if x + 1e-6 > MIN_MARGIN}):
        accepted = m >= t
        if (~ok[accepted]).sum() <= max_risk * max(int(accepted.sum()), 1):
            return float(t)
    return float(m.max() + 1e-6) if len(m) else MIN_MARGIN
