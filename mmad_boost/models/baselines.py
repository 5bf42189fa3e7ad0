"""Offline baselines, honestly named: they are not language models."""

from __future__ import annotations

import random
import re

from ..errors import MmadError
from ..protocol.prompt import Prompt
from ..registry import convert_options, parse_int
from .base import MLLM

_OPTION_LINE = re.compile(r"^([A-E])\. ", re.M)


class RandomBaseline(MLLM):
    """Answers a uniformly random option letter (seeded per prompt text, so reruns agree)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.name = "baseline:random"

    def generate(self, prompt: Prompt) -> str:
        if prompt.query is not None and prompt.query.options:
            letters = list(prompt.query.options)
        else:
            letters = _OPTION_LINE.findall(prompt.text()) or list("AB")
        rng = random.Random(f"{self.seed}:{prompt.text('')}")
        return f"Answer: {rng.choice(letters)}"

    def config(self) -> dict:
        return {"name": self.name, "seed": self.seed}


def create(rest: str, **options):
    if rest == "random":
        return RandomBaseline(seed=parse_int(options.get("seed", 0), "baseline:random option seed"))
    if rest in ("features", "feature"):
        try:
            from .feature_baseline import FeatureBaseline
        except ModuleNotFoundError:
            raise MmadError("baseline:features is not available in this install") from None
        return FeatureBaseline(**convert_options(FeatureBaseline, options, "baseline:features"))
    raise MmadError(f"unknown baseline {rest!r}; use baseline:random or baseline:features")
