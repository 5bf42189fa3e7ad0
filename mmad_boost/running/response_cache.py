"""Identical prompts asked once: a model wrapper that answers a repeated prompt from a file.

The tuner evaluates several boost combinations on the same images; where two of them build the
same prompt for a question (a routed model that leaves out every boost asks exactly what the plain
model asked), the second gets the first one's response instead of a new model call. The key is a
SHA-256 over the base model's identity, the system text, every text part and every image's pixels,
so any difference in what the model would see is a different key. The file is JSON lines, read
as untrusted (a damaged line is skipped, never executed). For a sampling model this reuses one
draw per prompt, which is what a cached response means.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from PIL import Image

from ..models.base import MLLM, model_config
from ..protocol.prompt import Prompt


def prompt_key(prompt: Prompt, identity: dict) -> str:
    h = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    h.update(b"\0system\0" + (prompt.system or "").encode("utf-8", "surrogatepass"))
    for part in prompt.parts:
        if isinstance(part, Image.Image):
            h.update(f"\0image\0{part.mode}{part.size}".encode())
            h.update(part.tobytes())
        else:
            h.update(b"\0text\0" + str(part).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


class CachedModel(MLLM):
    """Wraps a model; `calls` counts real model calls, `hits` the prompts answered from the file."""

    def __init__(self, base, path: str | Path):
        self.base = base
        self.path = Path(path)
        self.name = getattr(base, "name", type(base).__name__)
        self._identity = model_config(base)
        self._lock = threading.Lock()
        self.calls = self.hits = 0
        self._known: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    d = json.loads(line)
                except ValueError:
                    continue  # a torn or damaged line: that prompt is asked again
                if isinstance(d, dict) and isinstance(d.get("key"), str) and isinstance(d.get("response"), str):
                    self._known[d["key"]] = d["response"]
        if hasattr(base, "prepare"):
            self.prepare = base.prepare

    def __len__(self) -> int:  # responses known (from the file and from this process)
        return len(self._known)

    def config(self) -> dict:  # the run folder's identity is the wrapped model's: caching changes no answer
        return self._identity

    def check_samples(self, samples) -> None:
        check = getattr(self.base, "check_samples", None)
        if callable(check):
            check(samples)

    def generate(self, prompt: Prompt) -> str:
        key = prompt_key(prompt, self._identity)
        with self._lock:
            if key in self._known:
                self.hits += 1
                return self._known[key]
        response = self.base.generate(prompt)  # errors are not cached: the question is asked again on a rerun
        with self._lock:
            self.calls += 1
            if isinstance(response, str) and key not in self._known:
                self._known[key] = response
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "response": response}) + "\n")
        return response

    def close(self) -> None:
        close = getattr(self.base, "close", None)
        if callable(close):
            close()
