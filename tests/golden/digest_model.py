"""A deterministic model for the seeded-run comparison: its answer and response depend on every
byte of the prompt (text, system text and image pixels), so any change in what a boost puts into
the prompt changes the records."""

from __future__ import annotations

import hashlib

from mmad_boost.models.base import MLLM


class DigestModel(MLLM):
    name = "digest"

    def config(self):
        return {"kind": "digest"}

    def generate(self, prompt):
        h = hashlib.sha256()
        h.update((prompt.system or "").encode())
        h.update(prompt.text().encode())
        for im in prompt.images:
            h.update(f"{im.mode}{im.size}".encode())
            h.update(im.tobytes())
        digest = h.hexdigest()
        letters = sorted(prompt.query.options) if prompt.query.options else ["A"]
        return f"Answer: {letters[int(digest[:8], 16) % len(letters)]} ({digest[:16]})"
