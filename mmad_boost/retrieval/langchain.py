"""The knowledge base as a langchain-core retriever (no langchain-community needed).

lc = LangchainKnowledgeRetriever(retriever=KnowledgeRetriever.load("kb/"))
docs = lc.invoke("What does a leak look like on the capsules?")  # text query -> chunks
docs = lc.invoke("/path/query.png")                              # image path -> its category's entries
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from .retriever import IMAGE_SUFFIXES, KnowledgeRetriever


class LangchainKnowledgeRetriever(BaseRetriever):
    retriever: Any  # a KnowledgeRetriever
    k: int = 4
    dataset: str | None = None  # restrict text search to one category
    category: str | None = None

    model_config = {"arbitrary_types_allowed": True}

    @classmethod
    def from_path(cls, path, **kw) -> "LangchainKnowledgeRetriever":
        return cls(retriever=KnowledgeRetriever.load(path), **kw)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        p = Path(query) if len(query) < 4096 else None
        if p is not None and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            r = self.retriever.retrieve(mode="image", image=p)
            chunks = r.chunks[: self.k]
        else:
            r = self.retriever.retrieve(mode="text", question=query, dataset=self.dataset, category=self.category, top_k=self.k)
            chunks = r.chunks
        return [
            Document(
                page_content=c["text"],
                metadata={
                    "dataset": c["dataset"],
                    "category": c["category"],
                    "entry": c["entry"],
                    "kind": c["kind"],
                    "score": c["score"] if c["score"] is not None else r.score,
                    "mode": r.mode,
                },
            )
            for c in chunks
        ]
