"""The image-mode decision of KnowledgeRetriever: global votes, the re-ranked shortlist, the margin.

Kept apart from retriever.py so that the query path and leave-one-out calibration (calibration.py)
run the very same code: `decide` takes the global search's rows and can leave one row out.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .images import thumb
from .rerank import relative_margin


class TwoStageDecision:
    """Mixin for KnowledgeRetriever (uses its image_store, k, threshold, reranker, margin_threshold)."""

    def decide(self, ids, scores, query_patches=None, exclude: int | None = None) -> dict:
        """The category decision from the global search's (row ids, similarities), leaving out row
        `exclude` (leave-one-out calibration): global ranking, the re-ranked order of the shortlist
        (`query_patches`: the query's patch features or a function computing them, only called for an
        in-domain query), the margin and whether it is accepted."""
        store = self.image_store
        per_cat: dict[tuple[str, str], list[float]] = {}
        for s, i in zip(scores, ids):
            if i >= 0 and i != exclude:
                m = store.meta[i]
                per_cat.setdefault((m["dataset"], m["category"]), []).append(float(s))
        ranked = rank_votes(per_cat, self.k)
        out = {"ranked": ranked, "order": [c for c, _ in ranked], "dist": {}, "margin": None, "accepted": False, "rerank_ms": 0.0, "patch_ms": 0.0}
        if not ranked:
            return out
        out["margin"] = ranked[0][1] - (ranked[1][1] if len(ranked) > 1 else 0.0)
        if ranked[0][1] < self.threshold:  # out of domain: no category is close enough
            return out
        if self.reranker is not None and query_patches is not None and len(ranked) > 1:
            t0 = time.perf_counter()
            qp = query_patches() if callable(query_patches) else query_patches
            out["patch_ms"] = (time.perf_counter() - t0) * 1000
            rows = self._category_rows()
            short = [c for c, _ in ranked[: self.reranker.shortlist]]
            keep = [[j for j in rows[c] if j != exclude] for c in short]
            flat = [j for ks in keep for j in ks]
            dist_all = self.reranker.distances(qp, self._ref_patches32()[flat])  # one matrix product for the shortlist
            dist, at = {}, 0
            for c, ks in zip(short, keep):
                if ks:
                    dist[c] = float(dist_all[at : at + len(ks)].min())
                    at += len(ks)
            order = sorted(dist, key=dist.get)
            out["order"] = order + [c for c, _ in ranked if c not in dist]
            out["dist"] = dist
            out["margin"] = relative_margin(dist[order[0]], dist[order[1]] if len(order) > 1 else None)
            out["rerank_ms"] = (time.perf_counter() - t0) * 1000
        elif self.reranker is not None and len(ranked) == 1:
            out["margin"] = 1.0  # one category: nothing to confuse it with
        out["accepted"] = self.margin_threshold is None or out["margin"] >= self.margin_threshold
        return out

    def _category_rows(self) -> dict:
        store = self.image_store
        if self._rows is None or sum(len(v) for v in self._rows.values()) != len(store):
            rows: dict = {}
            for i, m in enumerate(store.meta):
                rows.setdefault((m["dataset"], m["category"]), []).append(i)
            self._rows = rows
        return self._rows

    def _ref_patches32(self) -> np.ndarray:
        """The patch features as float32, kept: converting float16 per query cost more than the matching."""
        src = self._ensure_ref_patches()
        cached = getattr(self, "_patches32", None)
        if cached is None or cached[0] is not src:
            cached = (src, src.astype(np.float32))
            self._patches32 = cached
        return cached[1]

    def _ensure_ref_patches(self) -> np.ndarray:
        """Patch features of every store row (float16), computed from the reference images on first use."""
        store = self.image_store
        if self.ref_patches is None or len(self.ref_patches) != len(store):
            with self._lock:
                if self.ref_patches is None or len(self.ref_patches) != len(store):
                    imgs = [thumb(Path(m["image"])) for m in store.meta]
                    self.ref_patches = self.reranker.features(imgs).astype(np.float16)
        return self.ref_patches


def rank_votes(per_cat: dict, k: int) -> list[tuple[tuple[str, str], float]]:
    """Categories ranked by the votes of the k nearest references (each votes with its similarity).

    A category's score is the mean similarity of its best min(k, its refs) references, so it can be
    compared with the threshold; categories without a vote among the k nearest rank after the voters.
    """
    flat = sorted(((s, cat) for cat, ss in per_cat.items() for s in ss), reverse=True)[:k]
    votes: dict = {}
    for s, cat in flat:
        votes[cat] = votes.get(cat, 0.0) + s

    def score(cat):
        ss = sorted(per_cat[cat], reverse=True)[: max(1, min(k, sum(1 for _, c in flat if c == cat)))]
        return float(np.mean(ss))

    order = sorted(per_cat, key=lambda c: (-votes.get(c, float("-inf")), -max(per_cat[c])))
    return [(c, score(c)) for c in order]
