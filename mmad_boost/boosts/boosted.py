"""BoostedModel: domain knowledge (RAG) and an anomaly expert's picture added to any model's prompt.

A thin composition: a knowledge boost (boosts/knowledge.py), an expert boost (boosts/expert_boost.py)
fed by a fitted-expert provider (boosts/expert_provider.py), and an optional route (boosts/routing.py).
`prepare(query)` does the per-image work once; `answer(prompt)` builds the prompt in MMAD's order
(protocol §4), calls the base model once and returns the text with its trace. Inside the benchmark
the runner calls `prepare` and passes what the sample knows (`query.info`); called by hand, the last
image is the query and the others are normal templates.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from typing import Any

from ..errors import MmadError
from ..models.base import MLLM, ChecksSamples, Closes, Prepares, as_model, model_config, query_from_hand, to_prompt
from ..protocol.prompt import Prompt, Query, SampleInfo, build_prompt
from .expert_boost import EVIDENCE, ExpertBoost, check_evidence, check_viz  # noqa: F401  (EVIDENCE: the public choices)
from .knowledge import RETRIEVAL_MODES, KnowledgeBoost  # noqa: F401  (RETRIEVAL_MODES: the public choices)


@dataclass
class Answer:
    text: str  # the base model's reply
    trace: dict  # what the boosts did for this question: retrieval, expert, route, timings


class BoostedModel(MLLM):
    """Wraps any model; adds knowledge and an expert picture to each prompt.

    rag: False, True (the shipped knowledge base), a retriever object, a knowledge folder/file path,
        or a retrieval mode ("oracle"/"image") meaning True with that mode.
    retrieval: "oracle" (the sample's category, MMAD's behaviour), "image" (the query image finds
        its category), or None: oracle when the category is known, image otherwise (by hand).
    expert: None, a name (`patchcore`, `patchcore-fewshot`, `gt`, `anomalyclip`, `anomalib:<Model>`),
        an expert object, a fitted expert folder (`mmad-boost expert fit`) or a folder of them per category.
    viz: how the expert's map is drawn: bbox, contour, highlight, mask or heatmap (CLI: --viz;
        `visualization=` is its deprecated old name).
    calibrated: draw only what the expert believes (nothing on images it judges normal).
    false_marks: the calibrated expert's target share of normal images marked (default 0.1, or
        the rate a fitted folder was calibrated at). CLI: --false-marks.
    evidence: "picture" (default), "text" (the verdict in words) or "both"; calibrated only. CLI: --evidence.
    holdout: None (default: calibrate on all normals, each scored unseen) or the fraction held out of fitting.
    kb: the knowledge base, a folder from `mmad-boost kb build` or a knowledge folder/.toml file
        (CLI: --kb; `knowledge=` is its deprecated old name).
    route: per question type, which boosts apply (a route file, dict or Route; boosts/routing.py).

    `answer(prompt)` returns the text with its trace; `last_trace` is the trace of the last answer
    given in the calling thread only (a convenience for by-hand use; threads never see each other's).
    """

    def __init__(
        self,
        base: Any,
        rag: Any = False,
        retrieval: str | None = None,
        expert: Any = None,
        viz: str = "bbox",
        calibrated: bool = False,
        *,
        kb: str | os.PathLike | None = None,
        mmad_knowledge: str | os.PathLike | None = None,
        expert_options: dict | None = None,
        cache_dir: str | os.PathLike | None = None,
        holdout: float | None = None,
        false_marks: float | None = None,
        evidence: str = "picture",
        save_pictures: bool = True,
        visualization: str | None = None,
        knowledge: str | os.PathLike | None = None,
        route: Any = None,
    ):
        from .routing import Route

        viz = check_viz(_renamed("visualization", visualization, "viz", viz, "bbox"))
        kb = _renamed("knowledge", knowledge, "kb", kb, None)
        self.base = as_model(base)
        drawing = {"viz": viz, "evidence": check_evidence(evidence, calibrated), "save_pictures": save_pictures}
        self.knowledge_boost = KnowledgeBoost.make(rag, retrieval, kb, mmad_knowledge)
        self.expert_boost = ExpertBoost.make(expert, expert_options, calibrated, holdout, false_marks, cache_dir, **drawing)
        self.viz, self.calibrated, self.evidence = viz, bool(calibrated), evidence
        self.retrieval = self.knowledge_boost.retrieval if self.knowledge_boost else None
        self.route = Route.coerce(route)
        if self.route is not None:
            self.route.check_against(self.knowledge_boost is not None, self.expert_boost is not None, evidence)
        self._local = threading.local()
        boosts = [b.name_part() for b in (self.knowledge_boost, self.expert_boost) if b is not None] + (["routed"] if self.route else [])
        self.name = "+".join([getattr(self.base, "name", type(self.base).__name__), *boosts])

    def __getstate__(self):  # Ray ships models with cloudpickle: the per-thread traces stay behind
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state):
        self.__dict__.update(state, _local=threading.local())

    @property
    def visualization(self) -> str:  # deprecated: the old name of `viz`
        return self.viz

    @property
    def retriever(self):
        return self.knowledge_boost.retriever if self.knowledge_boost else None

    @property
    def last_trace(self) -> dict:
        """The trace of this thread's last answer ({} before any): per thread, so workers never swap traces."""
        return getattr(self._local, "trace", {})

    def config(self) -> dict:
        cfg: dict = {"name": "boosted", "base": model_config(self.base), "rag": None, "expert": None}
        if self.knowledge_boost is not None:
            cfg["rag"] = self.knowledge_boost.config()
        if self.expert_boost is not None:
            cfg["expert"] = self.expert_boost.config()
        if self.route is not None:  # only when routed: unrouted runs keep their identity
            cfg["route"] = self.route.to_dict()
        return cfg

    def close(self) -> None:
        if isinstance(self.base, Closes):
            self.base.close()

    # -- the model protocol ----------------------------------------------------
    def answer(self, prompt: Prompt | Any, text: str | None = None, *, system: str | None = None) -> Answer:
        """The base model's answer with the trace of this question (prompt as for `__call__`)."""
        prompt = to_prompt(prompt, text, system=system)
        q = prompt.query
        if q is None:  # by hand: last image is the query, the others templates
            q = query_from_hand(prompt.images, "".join(p for p in prompt.parts if isinstance(p, str)).strip())
            q.system = prompt.system
        if not q.prepared:
            q = self.prepare(replace(q, trace=dict(q.trace)))
            q.prepared = True
            prompt = build_prompt(q)
        if self.route is not None:  # leave out what this question type does not get; the trace says which
            from .routing import apply_choice

            q = apply_choice(q, self.route.choice(q.question_type))
            prompt = build_prompt(q)
        self._local.trace = q.trace
        return Answer(self.base.generate(prompt), q.trace)

    def generate(self, prompt: Prompt) -> str:
        return self.answer(prompt).text

    def check_samples(self, samples) -> None:
        """Before a run writes anything: knowledge for every category (oracle mode), a known expert name."""
        if isinstance(self.base, ChecksSamples):
            self.base.check_samples(samples)
        for boost in (self.knowledge_boost, self.expert_boost):
            if boost is not None:
                boost.check_samples(samples)

    def prepare(self, query: Query) -> Query:
        """Per-image work, once per image: knowledge text, expert picture, trace."""
        if isinstance(self.base, Prepares):  # a wrapped BoostedModel adds its own boosts first
            query = self.base.prepare(query)
        query.trace.setdefault("timings", {})
        category = self.knowledge_boost.add(query) if self.knowledge_boost is not None else None
        if self.expert_boost is not None:
            self.expert_boost.add(query, category)
        return query

    def expert_for_category(self, data_root: str | os.PathLike, dataset: str, category: str):
        """The expert this model uses for a category of a benchmark (fitting it if needed), e.g. to render by hand."""
        if self.expert_boost is None:
            raise MmadError("this BoostedModel has no expert: pass expert=... (CLI: --expert)")
        info = SampleInfo(dataset=dataset, category=category, data_root=str(data_root))
        return self.expert_boost.provider.for_query(Query(question="", options={}, image=None, info=info), (dataset, category), {})  # type: ignore[arg-type]


def _renamed(old: str, old_value, new: str, new_value, default):
    """A keyword renamed for one name per concept: the old one works, with a DeprecationWarning."""
    if old_value is None:
        return new_value
    import warnings

    warnings.warn(f"BoostedModel({old}=...) is deprecated; use {new}=... (the name the CLI and docs use)", DeprecationWarning, stacklevel=3)
    if new_value != default and new_value != old_value:
        raise MmadError(f"BoostedModel: {old}= and {new}= disagree ({old_value!r} vs {new_value!r}); pass only {new}=")
    return old_value
