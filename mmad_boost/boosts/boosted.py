"""BoostedModel: domain knowledge (RAG) and an anomaly expert's picture added to any model's prompt.

`prepare(query)` does the per-image work once (retrieval, expert map, rendering); `generate`
builds the prompt in MMAD's order (protocol §4) and calls the base model once. Inside the
benchmark the runner calls `prepare` and passes what the sample knows (`query.info`); called by
hand, the last image is the query and the others are normal templates.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import MmadError
from ..models.base import MLLM, as_model, query_from_hand
from ..protocol.prompt import Prompt, Query, build_prompt

RETRIEVAL_MODES = ("oracle", "image")
STYLES = ("bbox", "contour", "highlight", "mask", "heatmap")
EVIDENCE = ("picture", "text", "both")  # how a calibrated expert's verdict reaches the prompt
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# experts fitted per category, shared by every BoostedModel of the process (fitting takes seconds to minutes)
_FITTED: dict[tuple, Any] = {}
_FITTED_LOCKS: dict[tuple, threading.Lock] = {}
_FITTED_GUARD = threading.Lock()


class BoostedModel(MLLM):
    """Wraps any model; adds knowledge and an expert picture to each prompt.

    rag: False, True (the shipped knowledge base), a retriever object, a knowledge folder/file path,
        or a retrieval mode ("oracle"/"image") meaning True with that mode.
    retrieval: "oracle" (the sample's category, MMAD's behaviour), "image" (the query image finds
        its category), or None: oracle when the category is known, image otherwise (by hand).
    expert: None, a name (`patchcore`, `patchcore-fewshot`, `gt`, `anomalyclip`, `anomalib:<Model>`),
        an expert object, or a fitted expert folder (`mmad-boost expert fit`).
    viz: how the expert's map is drawn, one of STYLES (CLI: --viz; the old keyword `visualization` still works).
    calibrated: draw only what the expert believes (nothing on images it judges normal).
    false_marks: the calibrated expert's target share of normal images marked (default 0.1, or
        the rate a fitted folder was calibrated at); thresholds come from every training normal,
        each scored by a model without it (experts.base). CLI: --false-marks.
    evidence: "picture" (default), "text" (the verdict in words: score vs threshold, marked
        regions as nine-grid positions and area) or "both"; calibrated mode only. CLI: --evidence.
    holdout: None (default: calibrate on all normals) or the fraction held out of fitting for it.
    kb: the knowledge base, a folder from `mmad-boost kb build` or a knowledge folder/.toml file
        (CLI: --kb; the old keyword `knowledge` still works).
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
        viz = _renamed("visualization", visualization, "viz", viz, "bbox")
        kb = _renamed("knowledge", knowledge, "kb", kb, None)
        self.base = as_model(base)
        if isinstance(rag, str) and rag in RETRIEVAL_MODES:
            rag, retrieval = True, retrieval or rag
        if retrieval is not None and retrieval not in RETRIEVAL_MODES:
            raise MmadError(f"retrieval {retrieval!r}: use one of {', '.join(RETRIEVAL_MODES)}")
        if viz not in STYLES:
            raise MmadError(f"viz {viz!r} (the drawing style, formerly visualization): use one of {', '.join(STYLES)}")
        self.retrieval = retrieval
        self.viz = viz
        self.calibrated = bool(calibrated)
        self.expert_options = dict(expert_options or {})
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if holdout is not None and not 0 < float(holdout) < 1:
            raise MmadError(f"holdout {holdout}: use the fraction (between 0 and 1) of each category's normal images kept for calibration, or None (all normals, each scored unseen)")
        self.holdout = None if holdout is None else float(holdout)
        from ..experts.base import check_false_marks

        self.false_marks = None if false_marks is None else check_false_marks(false_marks)
        if evidence not in EVIDENCE:
            raise MmadError(f"evidence {evidence!r}: use one of {', '.join(EVIDENCE)} (how the expert's verdict reaches the prompt)")
        if evidence != "picture" and not calibrated:
            raise MmadError(f"evidence {evidence!r} needs calibrated=True (CLI: --calibrated): faithful mode sends MMAD's picture only")
        self.evidence = evidence
        self.save_pictures = save_pictures
        self.retriever, self._rag_source = _make_retriever(rag, kb, mmad_knowledge)
        if self.retriever is None and retrieval is not None:
            raise MmadError("retrieval mode given without rag: pass rag=True (CLI: --rag)")
        self._expert_fixed, self._expert_name, self._expert_source = _resolve_expert(expert)
        if self._expert_fixed is not None:
            self._apply_false_marks(self._expert_fixed)
        self._expert_dir = _per_category_folder(expert)
        if self.calibrated and not self._expert_source:
            raise MmadError("calibrated=True needs an expert: pass expert=... (CLI: --expert NAME --calibrated)")
        self._per_category: dict[tuple[str, str], Any] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self._probe = None  # an unfitted instance of the named expert, to read its needs
        self.last_trace: dict = {}
        from .routing import Route  # per question type, which boosts apply (routing.py)

        self.route = Route.coerce(route)
        if self.route is not None:
            self.route.check_against(self.retriever is not None, bool(self._expert_source), self.evidence)
        self.name = self._make_name()

    @property
    def visualization(self) -> str:  # the old name of `viz`
        return self.viz

    # -- identity --------------------------------------------------------------
    def _make_name(self) -> str:
        parts = [getattr(self.base, "name", type(self.base).__name__)]
        if self.retriever is not None:
            parts.append(f"rag-{self.retrieval or 'auto'}")
        if self._expert_source:
            parts.append(f"{self._expert_source}-{self.viz}" + ("-calibrated" if self.calibrated else "")
                         + ("" if self.evidence == "picture" else f"-{self.evidence}"))
        if getattr(self, "route", None) is not None:
            parts.append("routed")
        return "+".join(parts)

    def config(self) -> dict:
        from ..models.base import model_config

        base_cfg = model_config(self.base)
        cfg: dict = {"name": "boosted", "base": base_cfg, "rag": None, "expert": None}
        if self.retriever is not None:
            ident = getattr(self.retriever, "config", None)
            cfg["rag"] = {"source": self._rag_source, "retrieval": self.retrieval or "auto"}
            if callable(ident):  # without keys a lazily built image index adds later: a rerun must match
                cfg["rag"]["retriever"] = {k: v for k, v in ident().items() if k not in ("references", "image_encoder")}
        if self._expert_source:
            cfg["expert"] = {
                "source": self._expert_source,
                "style": self.viz,
                "mode": "calibrated" if self.calibrated else "faithful",
                "options": {k: str(v) for k, v in sorted(self.expert_options.items())},
            }
            if self.false_marks is not None:  # only when set: runs from before these options keep their identity
                cfg["expert"]["false_marks"] = self.false_marks
            if self.evidence != "picture":
                cfg["expert"]["evidence"] = self.evidence
            if self._expert_fixed is not None and getattr(self._expert_fixed, "state_id", None):
                cfg["expert"]["state_id"] = str(self._expert_fixed.state_id)
        if self.route is not None:  # only when routed: unrouted runs keep their identity
            cfg["route"] = self.route.to_dict()
        return cfg

    def close(self) -> None:
        close = getattr(self.base, "close", None)
        if callable(close):
            close()

    # -- the model protocol ----------------------------------------------------
    def generate(self, prompt: Prompt) -> str:
        q = prompt.query
        if q is None:  # by hand: last image is the query, the others templates
            text = "".join(p for p in prompt.parts if isinstance(p, str)).strip()
            q = query_from_hand(prompt.images, text)
            q.system = prompt.system
        if not q.prepared:
            q = replace(q, trace=dict(q.trace))
            q = self.prepare(q)
            q.prepared = True
            prompt = build_prompt(q)
        if self.route is not None:  # leave out what this question type does not get; the trace says which
            from .routing import apply_choice

            q = apply_choice(q, self.route.choice(q.question_type))
            prompt = build_prompt(q)
        self.last_trace = q.trace
        return self.base.generate(prompt)

    def check_samples(self, samples) -> None:
        """Before a run writes anything: knowledge for every category (oracle mode), a known expert name."""
        base_check = getattr(self.base, "check_samples", None)
        if callable(base_check):
            base_check(samples)
        find = getattr(self.retriever, "category_knowledge", None)
        if callable(find) and self.retrieval in (None, "oracle"):
            for dataset, category in sorted({(s.dataset, s.category) for s in samples}):
                find(dataset, category)
        if self._expert_name is not None:
            self._probe_expert()

    def prepare(self, query: Query) -> Query:
        """Per-image work, once per image: knowledge text, expert picture, trace."""
        base_prepare = getattr(self.base, "prepare", None)
        if callable(base_prepare):  # a wrapped BoostedModel adds its own boosts first
            query = base_prepare(query)
        timings = query.trace.setdefault("timings", {})
        category_hint = None
        if self.retriever is not None:
            t0 = time.perf_counter()
            category_hint = self._add_knowledge(query)
            timings["retrieval_s"] = round(time.perf_counter() - t0, 4)
        if self._expert_source:
            self._add_expert_picture(query, category_hint, timings)
        return query

    # -- RAG -----------------------------------------------------------------
    def _add_knowledge(self, q: Query) -> str | None:
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
            "score": _num(r.score),
            "runner_up": r.runner_up,
            "knowledge_chars": len(text),
        }
        return (r.dataset, r.category) if r.category else None

    # -- expert ----------------------------------------------------------------
    def _add_expert_picture(self, q: Query, category_hint: tuple | None, timings: dict) -> None:
        from ..experts.rendering import drawing_options, render

        info = q.info
        t0 = time.perf_counter()
        expert = self._expert_for(q, category_hint, timings)
        kwargs = {}
        if getattr(expert, "needs_mask", False):
            if info is None or info.load_mask is None:
                raise MmadError("the ground-truth expert needs the image's mask: use it inside a benchmark (mmad-boost eval --expert gt)")
            kwargs["mask"] = info.load_mask()
        if getattr(expert, "needs_templates", False):
            if not q.templates:
                raise MmadError(f"expert {getattr(expert, 'name', 'few-shot')} fits on the template images: give normal images before the query image, or use a 1-shot or k-shot setting")
            kwargs["templates"] = q.templates
        if self.cache_dir is not None:  # maps stored per (expert state, image): reruns cost no inference
            from ..experts.base import cached_predict

            out = cached_predict(expert, q.image, self.cache_dir / "maps", **kwargs)
        else:
            out = expert.predict(q.image, **kwargs)
        timings["expert_s"] = round(time.perf_counter() - t0 - timings.get("expert_fit_s", 0.0), 4)
        if self.calibrated and out.decision is None:
            raise MmadError(f"expert {getattr(expert, 'name', '?')} is not calibrated: calibrated mode needs held-out normal images (run inside a benchmark, or pass an expert folder fitted with calibration)")
        t0 = time.perf_counter()
        shown = render(
            q.image,
            out.map,
            self.viz,
            mode="calibrated" if self.calibrated else "faithful",
            pixel_threshold=out.pixel_threshold,
            decision=out.decision,
            **drawing_options(expert),  # ground truth or not, map resizing, normalisation, GrabCut foreground
        )
        timings["render_s"] = round(time.perf_counter() - t0, 4)
        q.expert_image, q.expert_sentence = shown.image, shown.sentence
        if self.evidence != "picture":  # calibrated only (checked at construction)
            from .evidence import verdict_text

            q.expert_text = verdict_text(out.score, getattr(expert, "image_threshold", None), out.decision, shown.region)
            if self.evidence == "text":
                q.expert_image, q.expert_sentence = None, None
        q.trace["expert"] = {
            "name": getattr(expert, "name", type(expert).__name__),
            "mode": "calibrated" if self.calibrated else "faithful",
            "style": self.viz,
            "score": _num(out.score),
            "decision": None if out.decision is None else bool(out.decision),
            "marked": bool(shown.marked),
            "evidence": self.evidence,
            "picture": self._save_picture(q, shown.image),
        }

    def _save_picture(self, q: Query, image) -> str | None:
        info = q.info
        if not (self.save_pictures and info and info.run_dir and info.key):
            return None
        rel = Path("pictures") / Path(info.key).with_suffix(".png")
        path = Path(info.run_dir) / rel
        from ..atomic import save_image

        save_image(image, path, format="PNG")  # atomic, unique temporary name per writer
        return rel.as_posix()

    def _expert_for(self, q: Query, category_hint: tuple | None, timings: dict):
        if self._expert_fixed is not None:
            return self._expert_fixed
        if self._expert_dir is not None:
            return self._prefitted(q, category_hint)
        probe = self._probe_expert()
        info = q.info
        root = info.data_root if info else None
        from ..experts.base import learns_from_normals

        needs_fit = learns_from_normals(probe)
        if not needs_fit and (not self.calibrated or getattr(probe, "image_threshold", None) is not None):
            return probe  # gt, or a few-shot expert in faithful mode: one instance serves every category
        if info and info.category and root:
            key = (info.dataset, info.category)
            with self._guard:
                lock = self._locks.setdefault(key, threading.Lock())
            with lock:
                if key not in self._per_category:
                    t0 = time.perf_counter()
                    self._per_category[key] = self._fit_category(Path(root), *key, run_dir=info.run_dir)
                    timings["expert_fit_s"] = round(time.perf_counter() - t0, 4)
            return self._per_category[key]
        if needs_fit and q.templates and self._expert_name == "patchcore":
            # by hand: fit on the templates given, as MMAD's PatchCore did
            return self._probe_fewshot()
        raise MmadError(
            f"expert {self._expert_name!r} must be fitted on normal images of the category"
            + (" and calibrated" if self.calibrated else "")
            + ": run it inside a benchmark (mmad-boost eval --expert), or pass a folder from `mmad-boost expert fit`"
        )

    def expert_for_category(self, data_root: str | os.PathLike, dataset: str, category: str):
        """The expert this model uses for a category of a benchmark (fitting it if needed), e.g. to render by hand."""
        from ..protocol.prompt import SampleInfo

        info = SampleInfo(dataset=dataset, category=category, data_root=str(data_root))
        probe_query = Query(question="", options={}, image=None, info=info)  # type: ignore[arg-type]
        return self._expert_for(probe_query, (dataset, category), {})

    def _prefitted(self, q: Query, category_hint: tuple | None):
        """From a folder of fitted experts laid out DATASET/CATEGORY/expert.json (e.g. `experts/`)."""
        from ..experts import load_expert

        info = q.info
        key = (info.dataset, info.category) if info and info.category else category_hint
        if key is None:
            raise MmadError(f"{self._expert_dir}: holds one expert per category, and this image's category is unknown; use it inside a benchmark or turn on rag with image retrieval")
        with self._guard:
            if key not in self._per_category:
                ds, cat = str(key[0] or "").lower(), key[1].lower()
                names = {cat, f"{ds}-{cat}", f"{ds}_{cat}"}  # DATASET/CATEGORY, or flat `visa-fryum` folders
                found = [d for d in ([self._expert_dir / key[0] / key[1]] if key[0] else []) if (d / "expert.json").is_file()]
                found += sorted(p.parent for p in self._expert_dir.glob(f"*/{key[1]}/expert.json"))
                found += sorted(p.parent for p in self._expert_dir.glob("*/expert.json") if p.parent.name.lower() in names)
                if not found:
                    raise MmadError(f"{self._expert_dir}: no fitted expert for {key[0]}/{key[1]}; fit one with `mmad-boost expert fit --category {key[0]}/{key[1]} --out {self._expert_dir / str(key[0]) / key[1]}`")
                self._per_category[key] = self._apply_false_marks(load_expert(found[0]))
            return self._per_category[key]

    def _apply_false_marks(self, expert):
        """A loaded or cached expert moved to this model's target rate (from its stored normal scores)."""
        if self.false_marks is not None and getattr(expert, "normals", None) is not None and expert.normals.false_marks != self.false_marks:
            expert.set_false_marks(self.false_marks)
        return expert

    def _probe_expert(self):
        with self._guard:
            if self._probe is None:
                from ..experts import create_expert

                self._probe = create_expert(self._expert_name, **self.expert_options)
            return self._probe

    def _probe_fewshot(self):
        with self._guard:
            if getattr(self, "_fewshot", None) is None:
                from ..experts import create_expert

                self._fewshot = create_expert("patchcore-fewshot", **self.expert_options)
            return self._fewshot

    def _fit_category(self, root: Path, dataset: str, category: str, run_dir: str | None):
        """Fit on ROOT/dataset/category/train/good, calibrate on a held-out part of it.

        Both modes get the same fitted and calibrated expert (faithful rendering ignores the
        calibration), so runs share it: in memory within a process, on disk under the cache folder
        (`cache_dir`, else `<run_dir>/experts`).
        """
        from ..protocol.data import load_rgb
        from ..experts import create_expert, load_expert

        key = (self._expert_name, repr(sorted(self.expert_options.items())), self.holdout, self.false_marks, str(root.resolve()), dataset, category)
        with _FITTED_GUARD:
            lock = _FITTED_LOCKS.setdefault(key, threading.Lock())
        with lock:
            cache_root = self.cache_dir or (Path(run_dir) / "experts" if run_dir else None)
            cache = cache_root / _safe(self._expert_source) / dataset / category if cache_root else None
            cached = cache is not None and (cache / "expert.json").is_file()
            expert = _FITTED.get(key) or (load_expert(cache) if cached else None)
            if expert is None or (self.calibrated and getattr(expert, "image_threshold", None) is None):
                expert, cached = self._fit_new(root / dataset / category / "train" / "good", load_rgb, create_expert), False
            self._apply_false_marks(expert)
            if cache is not None and not cached and callable(getattr(expert, "save", None)):
                expert.save(cache)  # a resumed run in a new process loads it instead of refitting
            _FITTED[key] = expert
            return expert

    def _fit_new(self, folder: Path, load_rgb, create_expert):
        from ..experts.base import DEFAULT_FALSE_MARKS, fit_and_calibrate, holdout_split, learns_from_normals

        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES) if folder.is_dir() else []
        expert = create_expert(self._expert_name, **self.expert_options)
        fit_files, cal_files = holdout_split(files, self.holdout) if self.holdout is not None else (files, [])
        if (learns_from_normals(expert) and not fit_files) or (self.calibrated and len(fit_files) + len(cal_files) < 2):
            need = "at least 2, to fit and calibrate" if self.calibrated else "at least 1"
            raise MmadError(f"{folder}: expert {self._expert_name} needs normal training images here ({need}); add them or pass a fitted expert folder")
        from ..running.progress import enabled, stage

        steps = {}
        if enabled():  # the expert's own steps (features, coreset, calibration) with time left
            from ..experts.cli import Progress

            steps["progress"] = Progress()
        what = f"fitting expert {self._expert_name} for {folder.parent.parent.parent.name}/{folder.parent.parent.name} (once per category; kept for reruns)"
        with stage(what, kind=f"fit:{self._expert_name}", units=len(fit_files) + len(cal_files), unit="normal images"):
            return fit_and_calibrate(expert, [load_rgb(f) for f in fit_files], [load_rgb(f) for f in cal_files],
                                     false_marks=self.false_marks or DEFAULT_FALSE_MARKS, **steps)

    # -- CLI -------------------------------------------------------------------
    @classmethod
    def from_cli(cls, base: Any, args) -> "BoostedModel":
        """The eval flags --rag --kb --mmad-knowledge --retrieval --expert --viz --calibrated."""
        from ..cli import check_boost_flags

        check_boost_flags(args)
        kb = getattr(args, "kb", None)
        mmad_knowledge = getattr(args, "mmad_knowledge", None)
        rag = bool(getattr(args, "rag", False) or kb or mmad_knowledge)
        return cls(
            base,
            rag=rag,
            retrieval=getattr(args, "retrieval", None),
            expert=getattr(args, "expert", None),
            viz=getattr(args, "viz", None) or "bbox",
            calibrated=bool(getattr(args, "calibrated", False)),
            false_marks=getattr(args, "false_marks", None),
            evidence=getattr(args, "evidence", None) or "picture",
            kb=kb,
            mmad_knowledge=mmad_knowledge,
            route=getattr(args, "route", None),
        )


def _renamed(old: str, old_value, new: str, new_value, default):
    """A keyword renamed for one name per concept: the old one works, with a DeprecationWarning."""
    if old_value is None:
        return new_value
    import warnings

    warnings.warn(f"BoostedModel({old}=...) is deprecated; use {new}=... (the name the CLI and docs use)", DeprecationWarning, stacklevel=3)
    if new_value != default and new_value != old_value:
        raise MmadError(f"BoostedModel: {old}= and {new}= disagree ({old_value!r} vs {new_value!r}); pass only {new}=")
    return old_value


def _make_retriever(rag: Any, knowledge, mmad_knowledge) -> tuple[Any, str | None]:
    if mmad_knowledge:
        path = Path(mmad_knowledge)
        if not path.is_file():
            raise MmadError(f"{path}: MMAD knowledge file not found; pass the path of MMAD's domain_knowledge.json")
        from ..retrieval import KnowledgeRetriever

        return KnowledgeRetriever.from_mmad_file(path), f"mmad:{path}"
    if knowledge and rag in (False, None, True):
        rag = knowledge
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
    if callable(getattr(rag, "retrieve", None)):
        return rag, f"object:{type(rag).__name__}"
    raise MmadError(f"rag={rag!r}: use True, a knowledge path, a retriever object, or 'oracle'/'image'")


def _resolve_expert(expert: Any) -> tuple[Any, str | None, str | None]:
    """(fixed expert object or None, factory name or None, identity string)."""
    if expert is None or expert is False or expert == "":
        return None, None, None
    if _per_category_folder(expert) is not None:
        return None, None, f"folder:{expert}"
    if isinstance(expert, (str, os.PathLike)):
        path = Path(expert)
        if path.is_dir():
            from ..experts import load_expert

            return load_expert(path), None, f"folder:{path}"
        name = str(expert)
        if any(sep in name for sep in ("/", "\\")):
            raise MmadError(f"expert folder {name} not found; fit one with `mmad-boost expert fit` or give an expert name")
        return None, name, name
    if callable(getattr(expert, "predict", None)):
        return expert, None, getattr(expert, "name", None) or type(expert).__name__
    raise MmadError(f"expert={expert!r}: use a name (patchcore, gt, anomalyclip, anomalib:<Model>), an expert object or a fitted expert folder")


def _per_category_folder(expert: Any) -> Path | None:
    """A folder of fitted experts, one per DATASET/CATEGORY (or DATASET-CATEGORY) subfolder, like `experts/`."""
    if not isinstance(expert, (str, os.PathLike)):
        return None
    path = Path(expert)
    if path.is_dir() and not (path / "expert.json").is_file() and (any(path.glob("*/*/expert.json")) or any(path.glob("*/expert.json"))):
        return path
    return None


def _num(v) -> float | None:
    return None if v is None else round(float(v), 6)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
