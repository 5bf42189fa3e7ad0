"""1-shot+ templates for question files without `similar_templates` (MMAD's "1-shot+": the normal
image most similar to the query as the template).

The candidates are the normal training images of the sample's category (`<Dataset>/<category>/
train/good` under the data root); they are ranked with the retrieval machinery: the global
embedding shortlists the `SHORTLIST` most similar, the patch re-ranker (rerank.py, position-aware
within its radius) orders those. The builder's SSIM ranking (`build-bench --similar-by ssim-hist`)
stays the way to write `similar_templates` into a question file; this is for files without them.
Features of candidates are computed once per process; rankings are kept per (root, image, n).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import MmadError
from ..protocol.image_files import list_images
from .encoders import DEFAULT_IMAGE_ENCODER
from .images import shrunk, thumb

SHORTLIST = 8  # candidates handed from the global embedding to the patch re-ranker


class TemplateRanker:
    def __init__(self, encoder: str = DEFAULT_IMAGE_ENCODER, reranker=None):
        self.encoder_spec, self._reranker = encoder, reranker
        self._global: dict[str, np.ndarray] = {}
        self._patches: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def reranker(self):
        if self._reranker is None:
            from .rerank import PatchReranker

            self._reranker = PatchReranker()
        return self._reranker

    def _features(self, paths: list[Path]) -> tuple[np.ndarray, list[str]]:
        from .encoders import create_encoder

        keys = [str(p) for p in paths]
        todo = [p for p, k in zip(paths, keys) if k not in self._global]
        if todo:
            thumbs = [thumb(p) for p in todo]
            vecs = create_encoder(self.encoder_spec).encode_images(thumbs)
            with self._lock:
                self._global.update({str(p): v for p, v in zip(todo, vecs)})
        return np.stack([self._global[k] for k in keys]), keys

    def _patch(self, path: Path) -> np.ndarray:
        k = str(path)
        if k not in self._patches:
            f = self.reranker.features([thumb(path)])[0]
            with self._lock:
                self._patches[k] = f
        return self._patches[k]

    def rank(self, query, candidates: list[Path], n: int) -> list[int]:
        """Indices of the n candidates most like `query` (a PIL image), best first."""
        from .encoders import create_encoder

        if not candidates:
            return []
        vecs, _ = self._features(candidates)
        q = create_encoder(self.encoder_spec).encode_images([query])[0]
        short = list(np.argsort(-(vecs @ q))[: max(SHORTLIST, n)])
        qp = self.reranker.features([shrunk(query)])[0]
        d = self.reranker.distances(qp, np.stack([self._patch(candidates[i]) for i in short]))
        return [int(short[i]) for i in np.argsort(d, kind="stable")[:n]]


_RANKER = TemplateRanker()
_CHOSEN: dict[tuple, list[str]] = {}


def normal_pool(bench, sample) -> list[str]:
    """Keys (relative to the data root) of the sample's category's train/good images, sorted."""
    good = Path(bench.root) / sample.dataset / sample.category / "train" / "good"
    return [f"{sample.dataset}/{sample.category}/train/good/{p.name}" for p in list_images(good)]


def similar_normals(bench, sample, n: int) -> list[str]:
    """The n normal training images of the sample's category most similar to its image (keys)."""
    key = (str(bench.root), sample.key, n)
    if key not in _CHOSEN:
        pool = [k for k in normal_pool(bench, sample) if k != sample.key]
        if len(pool) < n:
            raise MmadError(
                f"image {sample.key!r} has no similar_templates and {bench.root}/{sample.dataset}/{sample.category}/train/good "
                f"holds {len(pool)} normal images, {n} needed; add similar_templates (build-bench) or train/good images"
            )
        query = bench.load_image(bench.resolve(sample.key))
        order = _RANKER.rank(query, [bench.resolve(k) for k in pool], n)
        _CHOSEN[key] = [pool[i] for i in order]
    return list(_CHOSEN[key])
