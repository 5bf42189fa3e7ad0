"""The expert boost: the expert's anomaly map drawn on the query image (experts/rendering.py) and,
when calibrated, its verdict in words (boosts/evidence.py), put into the query; the picture is
saved in the run folder so reports can show it.

faithful mode draws as MMAD did (every image gets a mark); calibrated mode draws only what the
expert believes (nothing on images it judges normal).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import MmadError
from ..protocol.prompt import Query

EVIDENCE = ("picture", "text", "both")  # how a calibrated expert's verdict reaches the prompt


def check_viz(viz: str) -> str:
    from ..experts.rendering import STYLES  # the drawing styles (rendering.py draws them)

    if viz not in STYLES:
        raise MmadError(f"viz {viz!r} (how the expert's map is drawn): use one of {', '.join(STYLES)}")
    return viz


def check_evidence(evidence: str, calibrated: bool) -> str:
    if evidence not in EVIDENCE:
        raise MmadError(f"evidence {evidence!r}: use one of {', '.join(EVIDENCE)} (how the expert's verdict reaches the prompt)")
    if evidence != "picture" and not calibrated:
        raise MmadError(f"evidence {evidence!r} needs calibrated=True (CLI: --calibrated): faithful mode sends MMAD's picture only")
    return evidence


class ExpertBoost:
    def __init__(
        self,
        provider,
        *,
        viz: str = "bbox",
        calibrated: bool = False,
        evidence: str = "picture",
        options: dict | None = None,
        false_marks: float | None = None,
        cache_dir: Path | None = None,
        save_pictures: bool = True,
    ):
        self.provider, self.viz, self.calibrated = provider, check_viz(viz), bool(calibrated)
        self.evidence = check_evidence(evidence, calibrated)
        self.options, self.false_marks = dict(options or {}), false_marks
        self.cache_dir, self.save_pictures = cache_dir, save_pictures

    @classmethod
    def make(
        cls, expert, options: dict | None, calibrated: bool, holdout: float | None, false_marks: float | None, cache_dir, **drawing
    ) -> "ExpertBoost | None":
        """The boost for BoostedModel's `expert=` (None when there is none), its arguments checked.
        drawing: viz, evidence, save_pictures."""
        from ..experts.base import check_false_marks
        from ..experts.fitting import check_holdout
        from .expert_provider import make_provider

        holdout = check_holdout(holdout)
        false_marks = None if false_marks is None else check_false_marks(false_marks)
        cache_dir, options = (Path(cache_dir) if cache_dir else None), dict(options or {})
        provider = make_provider(expert, options, calibrated=bool(calibrated), holdout=holdout, false_marks=false_marks, cache_dir=cache_dir)
        if provider is None:
            if calibrated:
                raise MmadError("calibrated=True needs an expert: pass expert=... (CLI: --expert NAME --calibrated)")
            return None
        return cls(provider, calibrated=calibrated, options=options, false_marks=false_marks, cache_dir=cache_dir, **drawing)

    @property
    def mode(self) -> str:
        return "calibrated" if self.calibrated else "faithful"

    def name_part(self) -> str:
        return f"{self.provider.source}-{self.viz}" + ("-calibrated" if self.calibrated else "") + ("" if self.evidence == "picture" else f"-{self.evidence}")

    def config(self) -> dict:
        cfg = {
            "source": self.provider.source,
            "style": self.viz,
            "mode": self.mode,  # "style": the key runs were stored under
            "options": {k: str(v) for k, v in sorted(self.options.items())},
        }
        if self.false_marks is not None:  # only when set: runs from before these options keep their identity
            cfg["false_marks"] = self.false_marks
        if self.evidence != "picture":
            cfg["evidence"] = self.evidence
        state_id = self.provider.state_id()  # a fixed expert's fitted state: another fit is another configuration
        if state_id:
            cfg["state_id"] = state_id
        return cfg

    def check_samples(self, samples) -> None:
        self.provider.check()

    def add(self, q: Query, category_hint: tuple | None) -> None:
        """The expert's picture (and words) into `q`, what it did into `q.trace["expert"]`."""
        from ..experts.rendering import drawing_options, render

        info, timings = q.info, q.trace.setdefault("timings", {})
        t0 = time.perf_counter()
        expert = self.provider.for_query(q, category_hint, timings)
        kwargs = {}
        if getattr(expert, "needs_mask", False):
            if info is None or info.load_mask is None:
                raise MmadError("the ground-truth expert needs the image's mask: use it inside a benchmark (mmad-boost eval --expert gt)")
            kwargs["mask"] = info.load_mask()
        if getattr(expert, "needs_templates", False):
            if not q.templates:
                raise MmadError(
                    f"expert {getattr(expert, 'name', 'few-shot')} fits on the template images: give normal images before the query image, or use a 1-shot or k-shot setting"
                )
            kwargs["templates"] = q.templates
        if self.cache_dir is not None:  # maps stored per (expert state, image): reruns cost no inference
            from ..experts.base import cached_predict

            out = cached_predict(expert, q.image, self.cache_dir / "maps", **kwargs)
        else:
            out = expert.predict(q.image, **kwargs)
        timings["expert_s"] = round(time.perf_counter() - t0 - timings.get("expert_fit_s", 0.0), 4)
        if self.calibrated and out.decision is None:
            raise MmadError(
                f"expert {getattr(expert, 'name', '?')} is not calibrated: calibrated mode needs held-out normal images (run inside a benchmark, or pass an expert folder fitted with calibration)"
            )
        t0 = time.perf_counter()
        shown = render(
            q.image, out.map, self.viz, mode=self.mode, pixel_threshold=out.pixel_threshold, decision=out.decision, **drawing_options(expert)
        )  # ground truth or not, map resizing, normalisation, GrabCut foreground
        timings["render_s"] = round(time.perf_counter() - t0, 4)
        q.expert_image, q.expert_sentence = shown.image, shown.sentence
        if self.evidence != "picture":  # calibrated only (checked at construction)
            from .evidence import verdict_text

            q.expert_text = verdict_text(out.score, getattr(expert, "image_threshold", None), out.decision, shown.region)
            if self.evidence == "text":
                q.expert_image, q.expert_sentence = None, None
        q.trace["expert"] = {
            "name": getattr(expert, "name", type(expert).__name__),
            "mode": self.mode,
            "style": self.viz,  # the record field keeps its name: stored runs and reports read it
            "score": None if out.score is None else round(float(out.score), 6),
            "decision": None if out.decision is None else bool(out.decision),
            "marked": bool(shown.marked),
            "evidence": self.evidence,
            "picture": self._save_picture(q, shown.image),
        }

    def _save_picture(self, q: Query, image) -> str | None:
        info = q.info
        if not (self.save_pictures and info and info.run_dir and info.key):
            return None
        from ..atomic import save_image

        rel = Path("pictures") / Path(info.key).with_suffix(".png")
        save_image(image, Path(info.run_dir) / rel, format="PNG")  # atomic, unique temporary name per writer
        return rel.as_posix()
