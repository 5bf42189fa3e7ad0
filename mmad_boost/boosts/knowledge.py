"""The knowledge boost (RAG): find the image's category and put its domain knowledge into the query.

"oracle" retrieval uses the sample's category (MMAD's behaviour); "image" lets the query image
find its category in the knowledge base's image index. Without a mode: oracle when the category
is known (inside a benchmark), image otherwise (by hand).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import MmadError
from ..protocol.prompt import Query

RETRIEVAL_MODES = ("oracle", "image")


@runtime_checkable
class Retriever(Protocol):
    """What the knowledge boost needs of a retriever (retrieval.KnowledgeRetriever is one)."""

    def retrieve(self, *, mode: str, image=None, dataset: str | None = None, category: str | None = None, question=None) -> Any: ...


@runtime_checkable
class KnowsCategories(Protocol):  # optional: lets a run check every category has knowledge before it starts
    def category_knowledge(self, dataset: str | None, category: str) -> Any: ...


@runtime_checkable
class HasConfig(Protocol):  # optional: what identifies the retriever's answers in run.json
    def config(self) -> dict: ...


class KnowledgeBoost:
    def __init__(self, retriever: Retriever, source: str, retrieval: str | None = None):
        if retrieval is not None and retrieval not in RETRIEVAL_MODES:
            raise MmadError(f"retrieval {retrieval!r}: use one of {', '.join(RETRIEVAL_MODES)}")
        self.retriever, self.source, self.retrieval = retriever, source, retrieval

    @classmethod
    def make(cls, rag: Any, retrieval: str | None, kb=None, mmad_knowledge=None) -> "KnowledgeBoost | None":
        """From BoostedModel's keywords; None when there is no knowledge to add."""
        if isinstance(rag, str) and rag in RETRIEVAL_MODES:
            rag, retrieval = True, retrieval or rag
        if retrieval is not None and retrieval not in RETRIEVAL_MODES:
            raise MmadError(f"retrieval {retrieval!r}: use one of {', '.join(RETRIEVAL_MODES)}")
        retriever, source = _make_retriever(rag, kb, mmad_knowledge)
        if retriever is None:
            if retrieval is not None:
                raise MmadError("retrieval mode given without rag: pass rag=True (CLI: --rag)")
            return None
        return cls(retriever, source, retrieval)

    def name_part(self) -> str:
        return f"rag-{self.retrieval or 'auto'}"

    def config(self) -> dict:
        cfg: dict = {"source": self.source, "retrieval": self.retrieval or "auto"}
        if isinstance(self.retriever, HasConfig):  # without keys a lazily built image index adds later: a rerun must match
            cfg["retriever"] = {k: v for k, v in self.retriever.config().items() if k not in ("references", "image_encoder")}
        return cfg

    def check_samples(self, samples) -> None:
        """Knowledge for every category (oracle mode), before a run writes anything."""
        if isinstance(self.retriever, KnowsCategories) and self.retrieval in (None, "oracle"):
            for dataset, category in sorted({(s.dataset, s.category) for s in samples}):
                self.retriever.category_knowledge(dataset, category)

    def add(self, q: Query) -> tuple | None:
        """Appends the knowledge to `q` and its trace; returns the (dataset, category) found, if any."""
        t0 = time.perf_counter()
        info = q.info
        known = bool(info and info.category)
        mode = self.retrieval or ("oracle" if known else "image")
        if mode == "oracle" and not known:
            raise MmadError("retrieval 'oracle' needs the image's category: run inside a benchmark, or use retrieval='image'")
        r = self.retriever.retrieve(
            mode=mode,
            image=q.image if mode == "image" else None,
            dataset=info.dataset if (info and mode == "oracle") else None,
            category=info.category if mode == "oracle" else None,
            question=None,
        )
        text = r.text or ""
        if text:
            q.knowledge = (q.knowledge + "\n" + text) if q.knowledge else text
        q.trace["retrieval"] = {
            "mode": mode,
            "category": r.category,
            "true_category": info.category if known else None,
            "score": None if r.score is None else round(float(r.score), 6),
            "runner_up": r.runner_up,
            "knowledge_chars": len(text),
        }
        q.trace.setdefault("timings", {})["retrieval_s"] = round(time.perf_counter() - t0, 4)
        return (r.dataset, r.category) if r.category else None


def _make_retriever(rag: Any, kb, mmad_knowledge) -> tuple[Any, str | None]:
    if mmad_knowledge:
        path = Path(mmad_knowledge)
        if not path.is_file():
            raise MmadError(f"{path}: MMAD knowledge file not found; pass the path of MMAD's domain_knowledge.json")
        from ..retrieval import KnowledgeRetriever

        return KnowledgeRetriever.from_mmad_file(path), f"mmad:{path}"
    if kb and rag in (False, None, True):
        rag = kb
    if rag is False or rag is None:
        return None, None
    if rag is True:
        from ..retrieval import KnowledgeRetriever

        return KnowledgeRetriever.default(), "default"
    if isinstance(rag, (str, os.PathLike)):
        path = Path(rag)
        if not path.exists():
            raise MmadError(f"{path}: knowledge base not found; pass a folder built by `mmad-boost kb build`, a knowledge folder/file, or rag=True")
        from ..retrieval import KnowledgeRetriever

        return KnowledgeRetriever.load(path), str(path)
    if isinstance(rag, Retriever):
        return rag, f"object:{type(rag).__name__}"
    raise MmadError(f"rag={rag!r}: use True, a knowledge path, a retriever object, or 'oracle'/'image'")
