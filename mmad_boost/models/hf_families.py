"""What each vision-language family's transformers processor needs from the `hf:` adapter.

Everything else is the same for all families (the processor's own chat template, one user turn
interleaving image and text items, left padding, greedy decoding), so the adapter has no
per-family branches: it looks the family up here by the config's `model_type`.

`images` is how a batch's images are handed to the processor:
- "flat": one list of all images in prompt order across the batch; LLaVA-OneVision pairs a
  nested list with the wrong prompts without an error, so it must be flat;
- "nested": one list per prompt; Gemma 3 refuses a flat list for more than one prompt.
Each entry was checked on a tiny random model of that family (tests/test_adapters_hf.py):
images in prompt order, the model's own chat template, only new text decoded, and greedy
answers identical batched and one by one. A family not listed here still loads and answers, but
one question at a time (batching unverified).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    images: str  # "flat" | "nested"
    needs: tuple[str, ...] = ()  # extra Python packages its processor imports


FAMILIES: dict[str, Family] = {
    "qwen2_vl": Family("Qwen2-VL", "nested"),
    "qwen2_5_vl": Family("Qwen2.5-VL", "nested"),
    "llava_onevision": Family("LLaVA-OneVision", "nested"),
    "idefics3": Family("Idefics3 / SmolVLM (v1)", "nested"),
    "gemma3": Family("Gemma 3", "nested"),
    "internvl": Family("InternVL (transformers format, e.g. InternVL3-*-hf)", "nested"),
}


def family_of(config) -> Family | None:
    """The table entry for a transformers config (None when the family is not verified here)."""
    return FAMILIES.get(getattr(config, "model_type", None) or "")


def processor_images(family: Family | None, per_prompt: list[list]) -> list | None:
    """The `images=` argument for one batch, from each prompt's images in order."""
    if not any(per_prompt):
        return None
    if family is not None and family.images == "nested":
        return per_prompt
    return [im for ims in per_prompt for im in ims]
