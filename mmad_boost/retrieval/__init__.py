"""Retrieval-augmented knowledge: the knowledge format, encoders, FAISS stores and the retriever.

    from mmad_boost.retrieval import KnowledgeRetriever, Retrieval
    r = KnowledgeRetriever.default().retrieve(mode="image", image=pil_image)

Names load on first use, so `mmad-boost` starts without numpy, torch, FAISS or langchain.
"""

from importlib import import_module

_EXPORTS = {
    "KnowledgeRetriever": "retriever",
    "Retrieval": "retriever",
    "MODES": "retriever",
    "DEFAULT_THRESHOLD": "retriever",
    "KnowledgeSet": "knowledge",
    "CategoryKnowledge": "knowledge",
    "Entry": "knowledge",
    "load_knowledge": "knowledge",
    "import_mmad_knowledge": "knowledge",
    "create_encoder": "encoders",
    "Encoder": "encoders",
    "VectorStore": "store",
    "LangchainKnowledgeRetriever": "langchain",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
