"""The vision-language families the `hf:` adapter is verified on, and what each one needs.

What is common stays in the adapter, for every family: the processor's own chat template, one
user turn interleaving image and text items, special tokens added once (by the template, never
again by the tokenizer), left padding, greedy decoding, each answer cut at its own end token, and
images handed to the processor as one list per prompt, as the processor's own
`apply_chat_template` does. (A flat list is not equivalent: Gemma 3 and SmolVLM refuse it for
more than one prompt, and LLaVA-OneVision reads it as that many single-image prompts, tiling each
image at high resolution, instead of one multi-image prompt.)

Each entry was checked on a tiny random model of that family built from its transformers config
(tests/test_adapters_hf.py): images in prompt order, the model's own template (the same ids and
pixels as the processor's own apply_chat_template), only new text decoded, greedy answers
identical batched and one by one. A family missing here still loads and
answers through the same path, but one question at a time (batching unverified for it).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..errors import MmadError


@dataclass(frozen=True)
class Family:
    name: str
    example: str  # a hub id of a checkpoint users run (for docs and messages)
    needs: tuple[str, ...] = ()  # Python packages its processor imports that transformers does not require


FAMILIES: dict[str, Family] = {  # keyed by the config's model_type
    "qwen2_vl": Family("Qwen2-VL", "Qwen/Qwen2-VL-7B-Instruct"),
    "qwen2_5_vl": Family("Qwen2.5-VL", "Qwen/Qwen2.5-VL-7B-Instruct"),
    "llava_onevision": Family("LLaVA-OneVision", "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
    "llava_next": Family("LLaVA-NeXT", "llava-hf/llava-v1.6-mistral-7b-hf"),
    "idefics3": Family("Idefics3 / SmolVLM", "HuggingFaceTB/SmolVLM-Instruct"),
    "smolvlm": Family("SmolVLM2", "HuggingFaceTB/SmolVLM2-2.2B-Instruct", needs=("num2words",)),
    "gemma3": Family("Gemma 3", "google/gemma-3-4b-it"),
    "internvl": Family("InternVL (transformers format)", "OpenGVLab/InternVL3-8B-hf"),
}


def family_of(config) -> Family | None:
    """The entry for a transformers config, None when the family is not verified here."""
    return FAMILIES.get(getattr(config, "model_type", None) or "")


def family_of_folder(config_json: dict) -> Family | None:
    return FAMILIES.get(str(config_json.get("model_type", "")))


def check_needs(family: Family | None, where: str) -> None:
    """Before loading: a package the family's processor imports is installed, else say which."""
    for pkg in family.needs if family else ():
        if importlib.util.find_spec(pkg) is None:
            raise MmadError(f"hf: {where} is a {family.name} model, whose processor needs the Python package {pkg}: pip install {pkg}")


def processor_images(per_prompt: list[list]) -> list | None:
    """The processor's `images=` for one batch: one list per prompt, None when no prompt has images."""
    return per_prompt if any(per_prompt) else None
