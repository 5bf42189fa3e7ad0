"""Evaluation settings (protocol §3): which images come before the query image."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .data import Benchmark, Sample
from ..errors import MmadError

SETTING_HELP = "0-shot | 1-shot | 1-shot+ | k-shot:K (or K-shot) | in-context:N"


@dataclass(frozen=True)
class Setting:
    name: str  # canonical spelling, stored in records
    shots: int = 1
    similar: bool = False
    defect_shots: int = 0

    def templates(self, sample: Sample, bench: Benchmark | None = None) -> list[str]:
        """Template keys. 1-shot+ without `similar_templates` in the file: with the benchmark given, the
        most similar normal images of the sample's category (train/good), ranked by retrieval/templates.py."""
        pool = sample.similar_templates if self.similar else sample.random_templates
        if self.similar and len(pool) < self.shots and bench is not None:
            from ..retrieval.templates import similar_normals

            pool = similar_normals(bench, sample, self.shots)
        if len(pool) < self.shots:
            which = "similar_templates" if self.similar else "random_templates"
            raise MmadError(
                f"image {sample.key!r} has {len(pool)} {which} but setting {self.name} needs {self.shots}; "
                "choose a smaller setting or add templates to the question file"
            )
        return pool[: self.shots]

    def defect_examples(self, sample: Sample, bench: Benchmark, seed: int) -> list[str]:
        """n defective images of the same dataset/category/defect, drawn with a fixed seed."""
        if not self.defect_shots:
            return []
        pool = [
            s.key
            for s in bench.samples
            if s.key != sample.key and not s.is_normal and (s.dataset, s.category, s.label) == (sample.dataset, sample.category, sample.label)
        ]
        rng = random.Random(f"{seed}:{sample.key}:defects")
        return rng.sample(sorted(pool), min(self.defect_shots, len(pool)))


def parse_setting(text: str) -> Setting:
    t = text.strip().lower()
    if t in ("0-shot", "zero-shot"):
        return Setting("0-shot", shots=0)
    if t == "1-shot":
        return Setting("1-shot", shots=1)
    if t == "1-shot+":
        return Setting("1-shot+", shots=1, similar=True)
    m = re.fullmatch(r"k-shot:(\d+)|(\d+)-shot", t)
    if m:
        k = int(m.group(1) or m.group(2))
        return Setting(f"{k}-shot" if k != 1 else "1-shot", shots=k)
    m = re.fullmatch(r"in-context(?::(\d+))?", t)
    if m:
        n = int(m.group(1) or 1)
        if n < 1:
            raise MmadError("setting in-context:N needs N >= 1 defect images")
        return Setting(f"in-context:{n}", shots=1, defect_shots=n)
    raise MmadError(f"unknown setting {text!r}; use {SETTING_HELP}")
