"""Models and helpers for the reliability tests (loaded by `python:reliability_support:...` specs)."""

from __future__ import annotations

import hashlib
import threading
import time

from mmad_boost.models.base import MLLM

SEEN_IMAGES: list[tuple[str, tuple[int, int]]] = []  # (mode, size) of every image a model received


class SlowModel(MLLM):
    """Deterministic answers (hash of the prompt text), after a delay: lets tests kill runs mid-way."""

    def __init__(self, delay_ms: str | float = 20, stall_after: str | int | None = None):
        self.delay = float(delay_ms) / 1000.0
        self.stall_after = None if stall_after is None else int(stall_after)  # then each call takes 60 s
        self.calls = 0
        self.lock = threading.Lock()
        self.name = "slow"

    def generate(self, prompt) -> str:
        with self.lock:
            self.calls += 1
            stall = self.stall_after is not None and self.calls > self.stall_after
        time.sleep(60 if stall else self.delay)
        letters = list(prompt.query.options) if prompt.query is not None and prompt.query.options else ["A", "B"]
        h = int(hashlib.sha256(prompt.text("").encode("utf-8")).hexdigest(), 16)
        return f"Answer: {letters[h % len(letters)]}"

    def config(self) -> dict:
        return {"name": self.name}  # the delay does not change answers


def image_probe(images, text) -> str:
    """Records what the model receives; always answers A."""
    for im in images:
        SEEN_IMAGES.append((im.mode, im.size))
    return "A"


def always_fails(images, text) -> str:
    raise ConnectionError("backend down")
