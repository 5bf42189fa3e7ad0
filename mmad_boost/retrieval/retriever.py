"""KnowledgeRetriever: finds a query's category (given, by image, or by text) and its knowledge text.

Modes (`retrieve(mode=...)`):
- `oracle`: the category is given (MMAD's behaviour); all its entries go into the prompt.
- `image`: the k nearest reference images vote for a category; below `threshold` -> unknown (None).
  With a re-ranker (`rerank=True`, what `kb build` makes), the shortlisted categories are then
  ordered by patch-level matching (rerank.py), and a margin to the runner-up under the calibrated
  `margin_threshold` (leave-one-out over the references, calibration.py) -> unknown too.
- `text`: the knowledge chunks most similar to the question (and options) text.
- `image+text`: the category by image, then that category's chunks ranked by the question.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import MmadError
from ..protocol.keys import IMAGE_SUFFIXES
from .encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, Encoder, create_encoder
from .images import open_image, shrunk, thumb
from .kb_folder import KB_FORMAT, encoder_spec, load_kb, save_kb  # noqa: F401  (KB_FORMAT: importable from here as before)
from .knowledge import DEFAULT_BUDGET, CategoryKnowledge, KnowledgeSet, import_mmad_knowledge, knowledge_dataset, load_knowledge
from .references import DEFAULT_REFS, bundled_references, disk_cache_load, disk_cache_save, mmad_layout_references, select_references
from .decision import TwoStageDecision, rank_votes  # noqa: F401  (rank_votes: importable from here as before)
from .rerank import PatchReranker
from .store import VectorStore

__all__ = ["KnowledgeRetriever", "Retrieval", "MODES", "DEFAULT_THRESHOLD", "IMAGE_SUFFIXES", "mmad_layout_references"]

MODES = ("oracle", "image", "text", "image+text")
# Cosine similarity below which an image is "unknown category". EfficientNet-Lite0 on VisA fryum /
# capsules: own category >= 0.89, the other category <= 0.38, natural photos <= 0.24 (docs/knowledge.md).
DEFAULT_THRESHOLD = 0.5
DEFAULT_K = 5


@dataclass
class Retrieval:
    mode: str
    category: str | None  # None = unknown
    dataset: str | None = None
    score: float | None = None
    runner_up: str | None = None
    runner_up_score: float | None = None
    text: str = ""  # knowledge for the prompt; "" when the category is unknown
    chunks: list[dict] = field(default_factory=list)  # {dataset, category, entry, kind, text, score}
    encode_ms: float = 0.0
    search_ms: float = 0.0
    # the decision: `guess` = the top-ranked "dataset/category" even when the answer is unknown;
    # `margin` = its lead over the runner-up (re-ranked: relative distance gap; global: similarity gap)
    guess: str | None = None
    margin: float | None = None
    distance: float | None = None  # re-ranked: patch distance of the chosen category (lower = closer)
    runner_up_distance: float | None = None
    rerank_ms: float = 0.0  # patch features of the query + matching against the shortlist
    patch_ms: float = 0.0  # of which the query's patch features


def _chunk(c: CategoryKnowledge, e, score: float | None = None) -> dict:
    return {"dataset": c.dataset, "category": c.category, "entry": e.name, "kind": e.kind, "text": c.entry_text(e), "score": score}


class KnowledgeRetriever(TwoStageDecision):
    def __init__(
        self,
        knowledge: KnowledgeSet,
        *,
        image_encoder: str | Encoder | None = DEFAULT_IMAGE_ENCODER,
        text_encoder: str | Encoder | None = None,  # None: the image encoder if CLIP-style, else MiniLM
        image_store: VectorStore | None = None,
        text_store: VectorStore | None = None,
        k: int = DEFAULT_K,
        threshold: float = DEFAULT_THRESHOLD,
        budget: int | None = None,
        top_k_chunks: int | None = None,
        store_kind: str = "flat",
        source: str = "",
        rerank: PatchReranker | dict | bool | None = None,
        margin_threshold: float | None = None,
        ref_patches: np.ndarray | None = None,
        calibration: dict | None = None,
    ):
        self.knowledge = knowledge
        self._image_encoder_spec = image_encoder
        self._text_encoder_spec = text_encoder
        self.image_store = image_store
        self.text_store = text_store
        self.k = k
        self.threshold = threshold
        self.budget = budget  # None: MMAD's text whole (as MMAD), our format within DEFAULT_BUDGET
        self.top_k_chunks = top_k_chunks
        self.store_kind = store_kind
        self.source = source
        if rerank is True:
            rerank = PatchReranker()
        elif isinstance(rerank, dict):
            rerank = PatchReranker.from_config(rerank)
        self.reranker: PatchReranker | None = rerank or None
        self.margin_threshold = margin_threshold  # None: no margin rule (unknown only under `threshold`)
        self.ref_patches = ref_patches  # (store rows, patches, C) float16, built on first use
        self.calibration = calibration or {}
        self._rows: dict | None = None
        self._lock = threading.RLock()  # runner threads may ask for the lazily built stores at once

    def __getstate__(self):  # Ray ships models with cloudpickle: locks cannot travel
        state = dict(self.__dict__)
        state.pop("_lock", None)
        state.pop("_patches32", None)  # a float32 copy of ref_patches, rebuilt on use
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, **kw) -> "KnowledgeRetriever":
        """A KB folder written by `kb build`/`save`, or a knowledge folder, .toml file or MMAD .json file."""
        p = Path(path)
        if p.is_dir() and (p / "kb.json").is_file():
            return load_kb(cls, p, **kw)
        return cls(load_knowledge(p), source=str(p), **kw)

    @classmethod
    def from_mmad_file(cls, path: str | Path, **kw) -> "KnowledgeRetriever":
        return cls(import_mmad_knowledge(path), source=f"mmad:{path}", **kw)

    @classmethod
    def default(cls) -> "KnowledgeRetriever":
        """The shipped knowledge_base/ with the bundled sample's normal images as image references."""
        with _DEFAULT_LOCK:
            return cls._default_locked()

    @classmethod
    def _default_locked(cls) -> "KnowledgeRetriever":
        global _DEFAULT
        if _DEFAULT is None:
            from ..resources import knowledge_base, sample_root

            knowledge = load_knowledge(knowledge_base())
            refs = bundled_references(sample_root())
            for c in knowledge:
                if not c.references and c.dataset == "VisA" and c.category in refs:
                    c.references = refs[c.category]
            _DEFAULT = cls(knowledge, source="default")
        return _DEFAULT

    @classmethod
    def build(
        cls,
        knowledge: KnowledgeSet,
        data_root: str | Path | None = None,
        *,
        refs_per_category: int = DEFAULT_REFS,
        image_encoder: str = DEFAULT_IMAGE_ENCODER,
        text: bool = False,
        selection: str = "k-center",
        max_risk: float = 0.0,
        **kw,
    ) -> "KnowledgeRetriever":
        """Encode reference images now: from each category's `train/good` under an MMAD-layout root, or the
        references its knowledge file lists. `selection`: `k-center` picks references that cover the
        category's variation (from a pool of up to 8 x refs_per_category images), `first` the first N.
        With a re-ranker, the margin threshold is calibrated by leave-one-out (`max_risk`: the share of
        leave-one-out mistakes it may still accept). `text=True` also encodes the knowledge chunks."""
        if selection not in ("k-center", "first"):
            raise MmadError(f"reference selection {selection!r}: use k-center or first")
        if data_root is not None:
            found = mmad_layout_references(data_root, refs_per_category, pool=selection == "k-center")
            for c in knowledge:
                for (_, kds), cats in found.items():
                    if kds == c.dataset and c.category in cats:
                        c.references = cats[c.category]
                        break
        r = cls(knowledge, image_encoder=image_encoder, **kw)
        r._ensure_image_store(refs_per_category, selection)
        if r.reranker is not None:
            from .calibration import calibrate

            calibrate(r, max_risk)
        if text:
            r._ensure_text_store()
        return r

    # -- encoders and stores --------------------------------------------------------------------------------
    @property
    def image_encoder(self) -> Encoder:
        if not isinstance(self._image_encoder_spec, Encoder):
            if self._image_encoder_spec is None:
                raise MmadError("image retrieval needs an image encoder; pass image_encoder='efficientnet-lite0'")
            self._image_encoder_spec = create_encoder(self._image_encoder_spec)
        return self._image_encoder_spec

    @property
    def text_encoder(self) -> Encoder:
        if not isinstance(self._text_encoder_spec, Encoder):
            spec = self._text_encoder_spec
            img = self._image_encoder_spec
            if spec is None:  # a CLIP-style image encoder embeds text in the same space
                clip = (isinstance(img, str) and img.startswith("open_clip:")) or "text" in getattr(img, "modalities", ())
                spec = self.image_encoder if clip else DEFAULT_TEXT_ENCODER
            self._text_encoder_spec = spec if isinstance(spec, Encoder) else create_encoder(spec)
        return self._text_encoder_spec

    def _ensure_image_store(self, refs_per_category: int | None = None, selection: str = "first") -> VectorStore:
        if self.image_store is not None:
            return self.image_store
        with self._lock:
            if self.image_store is None:
                self._build_image_store(refs_per_category, selection)
        return self.image_store

    def _build_image_store(self, refs_per_category: int | None, selection: str = "first") -> None:
        cats = [c for c in self.knowledge if c.references]
        if not cats:
            raise MmadError(
                f"{self.source or 'knowledge'}: no reference images, so image retrieval cannot work; "
                "build a KB with `mmad-boost kb build --data ROOT` or list `references` in the category files"
            )
        cached = disk_cache_load(self, cats)
        if cached is not None:
            self.image_store = cached
            return
        enc = self.image_encoder
        store = VectorStore(enc.identity, self.store_kind)
        for c in cats:
            pool = c.references if selection == "k-center" else c.references[: refs_per_category or None]
            vecs = enc.encode_images([thumb(p) for p in pool])
            keep = select_references(vecs, refs_per_category) if selection == "k-center" else list(range(len(pool)))
            c.references = [pool[i] for i in keep]
            store.add(vecs[keep], [{"dataset": c.dataset, "category": c.category, "image": str(p)} for p in c.references])
        self.image_store = store
        disk_cache_save(self, cats, store)

    def _ensure_text_store(self) -> VectorStore:
        with self._lock:
            if self.text_store is None:
                self._build_text_store()
        return self.text_store

    def _build_text_store(self) -> None:
        if self.text_store is None:
            enc = self.text_encoder
            chunks = [_chunk(c, e) for c in self.knowledge for e in c.entries]
            store = VectorStore(enc.identity, self.store_kind)
            store.add(enc.encode_texts([ch["text"] for ch in chunks]), [{k: ch[k] for k in ("dataset", "category", "entry", "kind")} for ch in chunks])
            self.text_store = store

    # -- retrieval ----------------------------------------------------------------------------------------------
    def retrieve(
        self,
        *,
        mode: str = "oracle",
        image=None,
        dataset: str | None = None,
        category: str | None = None,
        question: str | None = None,
        top_k: int | None = None,
    ) -> Retrieval:
        """`top_k`: chunks kept by text ranking (default: the retriever's top_k_chunks, else 5)."""
        if mode not in MODES:
            raise MmadError(f"retrieval mode {mode!r}: use one of {', '.join(MODES)}")
        if mode == "oracle":
            return self._oracle(dataset, category, question, top_k)
        if mode == "text":
            if not question:
                raise MmadError("text retrieval needs question text; pass question=...")
            return self._text(question, dataset, category, top_k)
        if image is None:
            raise MmadError(f"{mode} retrieval needs the query image; pass image=PIL image or path")
        r = self._image(open_image(image))
        if mode == "image+text" and r.category is not None:
            c = self.knowledge.find(r.category, r.dataset)
            if question:
                t = self._text(question, c.dataset, c.category, top_k)
                r.chunks, r.text, r.encode_ms, r.search_ms = t.chunks, t.text, r.encode_ms + t.encode_ms, r.search_ms + t.search_ms
            r.mode = mode
        return r

    def _budget(self, c: CategoryKnowledge) -> int | None:
        if self.budget is not None:
            return self.budget
        return None if c.verbatim else DEFAULT_BUDGET

    def category_knowledge(self, dataset: str | None, category: str) -> CategoryKnowledge:
        c = self.knowledge.find(category, dataset)
        if c is None:
            name = f"{knowledge_dataset(dataset)}/{category}" if dataset else category
            have = ", ".join(self.knowledge.keys()[:8]) + (" ..." if len(self.knowledge) > 8 else "")
            raise MmadError(f"category {name}: not in the knowledge base ({have}); add a category file or pass --mmad-knowledge FILE")
        return c

    def _oracle(self, dataset, category, question, top_k=None) -> Retrieval:
        if not category:
            raise MmadError("oracle retrieval needs the category; pass category=... (or use mode='image')")
        c = self.category_knowledge(dataset, category)
        if question and (top_k or self.top_k_chunks):
            t = self._text(question, c.dataset, c.category, top_k)
            return Retrieval("oracle", c.category, c.dataset, text=t.text, chunks=t.chunks, encode_ms=t.encode_ms, search_ms=t.search_ms)
        return Retrieval("oracle", c.category, c.dataset, text=c.prompt_text(budget=self._budget(c)), chunks=[_chunk(c, e) for e in c.entries])

    def _image(self, image: Image.Image) -> Retrieval:
        store = self._ensure_image_store()
        t0 = time.perf_counter()
        q = self.image_encoder.encode_images([image])
        t1 = time.perf_counter()
        # Look at all rows when the store is small, so a runner-up is always found.
        n = len(store) if len(store) <= 4096 else max(self.k * 8, 64)
        scores, ids = store.search(q, n)
        t2 = time.perf_counter()
        r = Retrieval("image", None, None, encode_ms=(t1 - t0) * 1000, search_ms=(t2 - t1) * 1000)
        d = self.decide(ids[0], scores[0], lambda: self.reranker.features([shrunk(image)])[0])
        if not d["order"]:
            return r
        glob, order = dict(d["ranked"]), d["order"]
        best, runner = order[0], (order[1] if len(order) > 1 else None)
        r.guess, r.margin, r.rerank_ms, r.patch_ms = f"{best[0]}/{best[1]}", d["margin"], d["rerank_ms"], d["patch_ms"]
        r.score = glob[best]
        r.runner_up, r.runner_up_score = (runner[1], glob[runner]) if runner else (None, None)
        r.distance, r.runner_up_distance = d["dist"].get(best), d["dist"].get(runner)
        if d["accepted"]:
            c = self.knowledge.find(best[1], best[0])
            r.dataset, r.category = best
            r.text = c.prompt_text(budget=self._budget(c))
            r.chunks = [_chunk(c, e) for e in c.entries]
        return r

    def _text(self, question: str, dataset: str | None, category: str | None, top_k: int | None = None) -> Retrieval:
        store = self._ensure_text_store()
        t0 = time.perf_counter()
        q = self.text_encoder.encode_texts([question])
        t1 = time.perf_counter()
        scores, ids = store.search(q, len(store))
        t2 = time.perf_counter()
        target = self.knowledge.find(category, dataset) if category else None
        if category and target is None:
            self.category_knowledge(dataset, category)  # raises the naming error
        hits = []
        for s, i in zip(scores[0], ids[0]):
            if i < 0:
                continue
            m = store.meta[i]
            if target is not None and (m["dataset"], m["category"]) != (target.dataset, target.category):
                continue
            hits.append((float(s), m))
        r = Retrieval("text", None, None, encode_ms=(t1 - t0) * 1000, search_ms=(t2 - t1) * 1000)
        if not hits:
            return r
        top = hits[: top_k or self.top_k_chunks or DEFAULT_K]
        best = top[0][1]
        c = self.knowledge.find(best["category"], best["dataset"])
        r.category, r.dataset, r.score = c.category, c.dataset, top[0][0]
        other = next(((s, m) for s, m in hits if (m["dataset"], m["category"]) != (c.dataset, c.category)), None)
        if other:
            r.runner_up, r.runner_up_score = other[1]["category"], other[0]
        # The prompt text stays within one category: its normal characteristics plus the chosen entries.
        same = [(s, m) for s, m in top if (m["dataset"], m["category"]) == (c.dataset, c.category)]
        by_name = {e.name: e for e in c.entries}
        entries = [by_name[m["entry"]] for _, m in same]
        r.text = c.prompt_text(entries, budget=self._budget(c))
        r.chunks = [_chunk(c, by_name[m["entry"]], s) for s, m in same]
        return r

    # -- identity and persistence -----------------------------------------------------------------------------
    def config(self) -> dict:
        """Identity for run.json; stable across resumes (never depends on what was lazily built yet)."""
        cfg = {
            "source": self.source,
            "categories": len(self.knowledge),
            "k": self.k,
            "threshold": self.threshold,
            "budget": self.budget,
            "image_encoder": encoder_spec(self._image_encoder_spec),
        }
        if self.reranker is not None:  # only then: identities of runs without a re-ranker stay as they were
            cfg["rerank"] = self.reranker.config()
            cfg["margin_threshold"] = self.margin_threshold
        return cfg

    def save(self, directory: str | Path, refs_per_category: int | None = None) -> Path:
        """Write a KB folder that `load` reads back (kb_folder.py)."""
        return save_kb(self, directory, refs_per_category)


_DEFAULT: KnowledgeRetriever | None = None
_DEFAULT_LOCK = threading.Lock()
