"""PatchCore (Roth et al., CVPR 2022), written for this project.

Mid-level backbone features (strides 8 and 16), each averaged over its 3x3 neighbourhood (zero
padding counted, as the reference implementation: it matters for border patches), the
coarser one upsampled and concatenated; a memory bank of normal patch features reduced by greedy
coreset subsampling (on a random projection when the features are wide, as in the paper); FAISS
exact nearest-neighbour search. Patch score = mean distance to the `knn` nearest bank entries
(default 3 in full mode; the paper's is 1): one coreset entry that happens to lie near a defect patch no longer
hides it. Image score = the mean of the top `topk` fraction of patch scores (default 0.1 %: 3 of
the 2304 patches at 384 px), so one noisy patch no longer decides. Both lifted image AUROC on the
sample at 384 px (docs/benchmarks.md). `image_score="blur-max"` instead takes the largest value of
the patch-score grid blurred by a Gaussian of `image_score_sigma` patches: a defect a few patches
wide then outscores one noisy patch of the same height. `image_score="scan"` is region-size-aware:
the grid's maximum at blur widths of 0, 1, 2 and 4 patches, each standardised by the training
normals' (left out of the bank), the largest kept (`expert fit --defects` chooses among the rules,
experts/score_choice.py). knn=1, topk=0 is the paper's largest patch distance,
reweight=True its eq. 7 density damping of it. Map = patch scores upsampled bilinearly and
Gaussian-smoothed (sigma 4 px at the working size), then resized to the image. Input 384 px by
default: MMAD's defects are often under 0.1 % of the image, below one stride-8 patch at 256 px.
`foreground=True` marks the expert for MMAD's GrabCut filter: the renderer zeroes the map outside
the foreground of the drawn query, where MMAD's code did it (rendering.mmad_foreground).

Modes: `full` fits once on all normal images of a category; `few-shot` (MMAD's set-up) fits per
query on the template images given to `predict` (coreset keeping `coreset_ratio`, 99 % by default
as MMAD; `patchcore-fewshot` is MMAD's whole set-up, experts.registry.MMAD_FEWSHOT).
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
from PIL import Image

from ..errors import MmadError
from ..registry import parse_bool
from .backbones import DEFAULT_BACKBONE, load_backbone, parse_spec
from .base import Expert, image_hash
from .patch_scores import IMAGE_SCORES, checked_scan_null, knn_patch_scores, patch_image_score, reweighted_score, scan_null

_BACKBONES: dict[str, tuple] = {}
_LOCK = threading.Lock()


def _embedder(model):
    """backbone -> 3x3-averaged stride-8 map with the stride-16 map upsampled and concatenated."""
    import torch
    import torch.nn.functional as F

    class Embedder(torch.nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def forward(self, x):
            maps = [F.avg_pool2d(f, 3, stride=1, padding=1) for f in self.backbone(x)]
            ref = maps[0].shape[-2:]
            up = [F.interpolate(f, size=ref, mode="bilinear", align_corners=False) for f in maps[1:]]
            return torch.cat([maps[0]] + up, 1)

    return Embedder(_without_unused_stages(model)).eval()


def _without_unused_stages(model):
    """timm's EfficientNet feature models run every stage, also those after the last one asked for
    (on Lite0: the stride-32 stages); drop them. The outputs are bit-identical: the dropped stages
    feed nothing that is returned. The traced single-image path already lost them to dead-code
    elimination; this spares the eager one (batches, untraceable backbones: about 8 % at 384 px)."""
    stages, blocks = getattr(model, "_stage_out_idx", None), getattr(model, "blocks", None)
    if stages and blocks is not None and getattr(model, "feature_hooks", None) is None and max(stages) < len(blocks):
        model.blocks = blocks[: max(stages)]  # stage s is the output of blocks[s - 1] (stage 0 = the stem)
    return model


class FastFeatures:
    """The backbone, with single-image calls run by a frozen TorchScript trace per input size
    (BatchNorm folded, oneDNN fusions: about 2x faster on CPU); batches use the eager model."""

    def __init__(self, model):
        self.model, self._traced, self._lock = model, {}, threading.Lock()

    def __call__(self, x):
        import torch

        if x.shape[0] != 1:
            return self.model(x)
        key = tuple(x.shape)
        with self._lock:
            fn = self._traced.get(key)
            if fn is None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # trace warnings about shape constants: we trace per shape
                        fn = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(self.model, x, strict=False)))
                except Exception:  # an architecture that cannot be traced still works eagerly
                    fn = self.model
                self._traced[key] = fn
        return fn(x)


def shared_backbone(spec: str):
    """One loaded backbone per spec per process (loading takes seconds)."""
    with _LOCK:
        if spec not in _BACKBONES:
            model, mean, std = load_backbone(spec)
            _BACKBONES[spec] = (FastFeatures(_embedder(model)), mean, std)
        return _BACKBONES[spec]


def greedy_coreset(features: np.ndarray, n: int, *, seed: int = 0, proj_dim: int = 128, progress=None) -> np.ndarray:
    """Indices of `n` rows chosen by greedy k-center selection (distances on a random projection).

    Squared distances via |x|^2 - 2 x.c + |c|^2 into preallocated buffers: the loop allocates
    nothing of size N x d, which kept it memory-bound (and, with mmap'd allocations, in the kernel).
    `progress(stage, done, total)` is called every 256 picks.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    if n >= len(x):
        return np.arange(len(x))
    g = torch.Generator().manual_seed(seed)
    if x.shape[1] > 2 * proj_dim:  # wide features (e.g. 1536-d): a Johnson-Lindenstrauss projection, much cheaper
        x = x @ (torch.randn(x.shape[1], proj_dim, generator=g) / proj_dim**0.5)
    sq = (x * x).sum(1)
    start = int(torch.randint(len(x), (1,), generator=g))
    chosen = [start]
    dmin = torch.addmv(sq + sq[start], x, x[start], alpha=-2)
    d = torch.empty_like(dmin)
    for step in range(n - 1):
        if progress is not None and step % 256 == 0:
            progress("coreset", step, n)
        i = int(torch.argmax(dmin))
        chosen.append(i)
        torch.addmv(sq, x, x[i], alpha=-2, out=d)
        d += sq[i]
        torch.minimum(dmin, d, out=dmin)
    if progress is not None:
        progress("coreset", n, n)
    return np.array(chosen)


def foreground_mask(image: Image.Image) -> np.ndarray | None:
    """MMAD's GrabCut foreground of the image as drawn (rendering.mmad_foreground), at the image's
    size; None when the filter is skipped (under 5 % found)."""
    import cv2

    from .rendering import mmad_foreground, scale_image

    fg = mmad_foreground(scale_image(image))
    return None if fg is None else cv2.resize(fg.astype(np.uint8), image.size, interpolation=cv2.INTER_NEAREST).astype(bool)


class PatchCore(Expert):
    name = kind = "patchcore"
    resample = "bilinear"

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        mode: str = "full",
        size: int = 384,
        coreset_ratio: float | None = None,
        sigma: float = 4.0,
        foreground: bool = False,
        seed: int = 0,
        batch: int = 8,
        reweight: bool = False,
        topk: float | None = None,
        knn: int | None = None,
        image_score: str = "topk",
        image_score_sigma: float = 1.0,
        image_score_null: list | None = None,
    ):
        super().__init__()
        if mode not in ("full", "few-shot"):
            raise MmadError(f"patchcore mode {mode!r}: use full or few-shot")
        if coreset_ratio is None:  # few-shot banks are small: MMAD kept 99 %
            coreset_ratio = 0.1 if mode == "full" else 0.99
        if not 0 < float(coreset_ratio) <= 1:
            raise MmadError(f"patchcore coreset_ratio {coreset_ratio}: use a fraction in (0, 1]")
        self.backbone, self.mode, self.size = backbone or DEFAULT_BACKBONE, mode, int(size)
        parse_spec(self.backbone)  # a missing weights file fails here, before any heavy import
        self.coreset_ratio, self.sigma, self.foreground = float(coreset_ratio), float(sigma), parse_bool(foreground, "patchcore foreground")
        self.seed, self.batch, self.reweight = int(seed), int(batch), parse_bool(reweight, "patchcore reweight")
        if topk is None:
            topk = 0.0 if self.reweight else 0.001
        if knn is None:  # few-shot keeps MMAD's set-up (nearest template patch), where knn was not measured
            knn = 3 if mode == "full" and not self.reweight else 1
        if not 0 <= float(topk) < 1:
            raise MmadError(f"patchcore topk {topk}: use a fraction in [0, 1) of the patches (0 = the largest patch score)")
        if not str(knn).isdigit() or int(knn) < 1:
            raise MmadError(f"patchcore knn {knn}: use a whole number >= 1 of nearest bank entries per patch (1 = the paper's)")
        if self.reweight and (float(topk) > 0 or int(knn) != 1):
            raise MmadError("patchcore: reweight (paper eq. 7) damps the single largest nearest-neighbour distance; use it with topk=0 knn=1")
        self.topk, self.knn = float(topk), int(knn)
        if image_score not in IMAGE_SCORES:
            raise MmadError(f"patchcore image_score {image_score!r}: use {' or '.join(IMAGE_SCORES)} (default topk)")
        try:
            image_score_sigma = float(image_score_sigma)
        except (TypeError, ValueError):
            image_score_sigma = -1.0
        if not 0 < image_score_sigma <= 100:
            raise MmadError(f"patchcore image_score_sigma {image_score_sigma}: use a blur width in patches in (0, 100] (default 1)")
        if self.reweight and image_score != "topk":
            raise MmadError("patchcore: reweight (paper eq. 7) fixes the image score; use it with image_score=topk")
        self.image_score, self.image_score_sigma = image_score, image_score_sigma
        if image_score == "scan" and mode != "full":
            raise MmadError("patchcore image_score=scan learns each blur width's spread from the training normals: use it in full mode")
        self.image_score_null = checked_scan_null(image_score_null) if image_score == "scan" else None
        self.needs_templates = mode == "few-shot"
        self.name = "patchcore" if mode == "full" else "patchcore-fewshot"
        self.bank: np.ndarray | None = None
        self._index = None
        self._few = (None, None, None)  # (templates hash, bank, index) of the last few-shot fit
        self._few_lock = threading.Lock()

    def config(self) -> dict:
        return {
            "backbone": self.backbone,
            "mode": self.mode,
            "size": self.size,
            "coreset_ratio": self.coreset_ratio,
            "sigma": self.sigma,
            "foreground": self.foreground,
            "seed": self.seed,
            "reweight": self.reweight,
            "topk": self.topk,
            "knn": self.knn,
            **self._image_score_config(),
        }

    def _image_score_config(self) -> dict:
        """The image-score rule's keys, only when not the default: folders and state ids written
        before the rule existed stay the same."""
        if self.image_score == "topk":
            return {}
        if self.image_score == "scan":
            return {"image_score": "scan", "image_score_null": self.image_score_null}
        return {"image_score": self.image_score, "image_score_sigma": self.image_score_sigma}

    # -- features ------------------------------------------------------------------
    def features(self, images: list[Image.Image], progress=None) -> np.ndarray:
        """Patch features, shape (N, h, w, C); each image decoded and resized once."""
        import torch

        embed, mean, std = shared_backbone(self.backbone)
        mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        out = []
        for i in range(0, len(images), self.batch):
            arr = np.stack([np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)) for im in images[i : i + self.batch]])
            x = (torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255 - mean_t) / std_t
            with torch.inference_mode():
                # one image at a time through the traced model: on CPU that beat batched eager calls
                out += [embed(x[j : j + 1]).permute(0, 2, 3, 1).numpy() for j in range(len(x))]
            if progress is not None:
                progress("features", min(i + self.batch, len(images)), len(images))
        return np.concatenate(out)

    @staticmethod
    def _index_of(bank: np.ndarray):
        import faiss

        index = faiss.IndexFlatL2(bank.shape[1])
        index.add(np.ascontiguousarray(bank, dtype=np.float32))
        return index

    def bank_from_features(self, feats: np.ndarray, progress=None) -> tuple[np.ndarray, np.ndarray]:
        """(bank, the image each entry came from) from patch features (N, h, w, C), as fit builds it."""
        flat = feats.reshape(-1, feats.shape[-1])
        chosen = np.arange(len(flat))
        if self.coreset_ratio < 1:
            chosen = greedy_coreset(flat, max(1, int(len(flat) * self.coreset_ratio)), seed=self.seed, progress=progress)
        # stored as float16; use the rounded values in memory too so a reloaded expert scores identically
        return flat[chosen].astype(np.float16).astype(np.float32), chosen // (feats.shape[1] * feats.shape[2])

    # -- protocol -------------------------------------------------------------------
    def fit(self, images: list[Image.Image], progress=None) -> "PatchCore":
        self._fit(list(images), progress)
        return self

    def _fit(self, images, progress):
        """Fit; (owner of each bank entry, features, and for scan each image's left-out search, reused by calibration)."""
        if self.mode == "few-shot":
            return None, None, None  # fits per query on its templates
        if not images:
            raise MmadError(f"expert {self.name}: fit needs at least one normal image")
        feats = self.features(images, progress)
        self.bank, owner = self.bank_from_features(feats, progress=progress)
        self._index = self._index_of(self.bank)
        self.fitted = True
        left_out = None
        if self.image_score == "scan":  # its per-width statistics come from normals the bank did not hold
            if len(images) < 2:
                raise MmadError(f"expert {self.name}: image_score=scan needs at least 2 normal images to learn from; found {len(images)}")
            left_out = [self._search_left_out(owner, feats, i)[1] for i in range(len(images))]
            self.image_score_null = scan_null([scores.reshape(feats.shape[1:3]) for scores, _ in left_out])
        return owner, feats, left_out

    def _search_left_out(self, owner, feats, i):
        """(bank index without image i's entries, image i's (patch scores, nearest entries) in it)."""
        keep = owner != i
        if not keep.any():
            raise MmadError(f"expert {self.name}: every memory-bank entry came from one image; give more normal images")
        loo = self._index_of(self.bank[keep])
        return loo, knn_patch_scores(loo, np.ascontiguousarray(feats[i].reshape(-1, feats.shape[-1])), self.knn)

    def fit_and_score_normals(self, images: list[Image.Image], progress=None) -> tuple[np.ndarray, np.ndarray]:
        """Fit on all `images`, then score each against the bank without the entries drawn from
        it (leave-one-image-out on the fitted coreset, no refit): (image scores, map maxima).
        Few-shot mode scores each image against the next one as its template (MMAD's 1-shot)."""
        images = list(images)
        if len(images) < 2:
            raise MmadError(f"expert {self.name}: calibration from the training normals needs at least 2 images; found {len(images)}")
        if self.mode == "few-shot":
            outs = [self.predict(im, templates=[images[(i + 1) % len(images)]]) for i, im in enumerate(images)]
            return np.array([o.score for o in outs]), np.array([float(o.map.max()) for o in outs])
        owner, feats, left_out = self._fit(images, progress)
        scores, maxima, self._calibration_patches = [], [], []
        for i, image in enumerate(images):
            # scan excludes reweight, the one rule that needs the left-out index itself
            loo, searched = (None, left_out[i]) if left_out else self._search_left_out(owner, feats, i)
            amap, score = self._score_features(image, feats[i], loo, searched)
            # the 2-D grid, in memory only: lets an image-score rule be chosen without searching again
            self._calibration_patches.append(searched[0].reshape(feats.shape[1:3]))
            scores.append(score)
            maxima.append(float(amap.max()))
            if progress is not None:
                progress("calibration", i + 1, len(images))
        return np.array(scores), np.array(maxima)

    def _few_shot_index(self, templates):
        if not templates:
            raise MmadError("patchcore few-shot: predict needs the query's template images (templates=[...])")
        key = "".join(image_hash(t) for t in templates)
        with self._few_lock:
            if self._few[0] == key:
                return self._few[2]
        bank = self.bank_from_features(self.features(list(templates)))[0]
        index = self._index_of(bank)
        with self._few_lock:
            self._few = (key, bank, index)
        return index

    def _predict_map(self, image, mask, templates):
        return self._score_features(image, self.features([image])[0], self._active_index(templates))

    def _active_index(self, templates):
        index = self._few_shot_index(templates) if self.mode == "few-shot" else self._index
        if index is None:
            raise MmadError(f"expert {self.name}: predict called before fit; call fit(normal_images) or load a fitted expert folder")
        return index

    def predict_batch(self, images: list[Image.Image], *, templates=None) -> list:
        """`predict` for many images: each decoded and resized once, all patches searched in one call."""
        index = self._active_index(templates)
        out = []
        for i in range(0, len(images), 32):  # bounds the search's distance matrix
            part = list(images[i : i + 32])
            feats = self.features(part)
            n, h, w, c = feats.shape
            scores, nn = knn_patch_scores(index, np.ascontiguousarray(feats.reshape(-1, c)), self.knn)
            hw = h * w
            out += [
                self.output(*self._score_features(im, feats[j], index, (scores[j * hw : (j + 1) * hw], nn[j * hw : (j + 1) * hw]))) for j, im in enumerate(part)
            ]
        return out

    def _score_features(self, image, feats, index, searched=None):
        """(map at the image's size, image score) of one image's patch features against a bank
        (`searched`: its (patch scores, nearest entries) when already searched)."""
        import cv2

        h, w, c = feats.shape
        flat = np.ascontiguousarray(feats.reshape(-1, c))
        scores, nn = searched if searched is not None else knn_patch_scores(index, flat, self.knn)
        patch = scores.reshape(h, w)
        score = (
            reweighted_score(index, flat, scores, nn)
            if self.reweight
            else patch_image_score(patch, self.image_score, self.topk, self.image_score_sigma, self.image_score_null)
        )
        amap = cv2.resize(patch, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        if self.sigma > 0:
            k = 2 * int(4 * self.sigma + 0.5) + 1
            amap = cv2.GaussianBlur(amap, (k, k), self.sigma)
        W, H = image.size
        amap = cv2.resize(amap, (W, H), interpolation=cv2.INTER_LINEAR)
        return amap, score  # `foreground` is applied by the renderer, at the drawn size as MMAD

    # -- persistence -----------------------------------------------------------------
    def _state(self) -> dict[str, np.ndarray]:
        return {} if self.bank is None else {"memory_bank": self.bank.astype(np.float16)}

    def _load_state(self, arrays) -> None:
        if "memory_bank" in arrays:
            self.bank = arrays["memory_bank"].astype(np.float32)
            self._index = self._index_of(self.bank)
