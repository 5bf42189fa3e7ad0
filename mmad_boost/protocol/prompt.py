"""The prompt (protocol §4) as an interleaved list of text and images, and option shuffling (§5).

A `Query` is the structured question about one image; `build_prompt` turns it into the
`Prompt` a model receives. Wrappers such as BoostedModel add knowledge or an expert picture
to the Query, so the order of parts is decided here only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from PIL import Image

from .keys import LETTERS

MMAD_INSTRUCTION = (
    "You are an industrial inspector who checks products by images. You should judge whether there is "
    "a defect in the query image and answer the questions about it.\n"
    "Answer with the option's letter from the given choices directly."
)
IMAGE_PLACEHOLDER = "<image>"

Part = Union[str, Image.Image]


@dataclass
class SampleInfo:
    """What the benchmark knows about the query image; wrappers may use it, models need not."""

    key: str = ""
    dataset: str = ""
    category: str = ""
    label: str = ""
    is_normal: bool | None = None
    template_keys: list[str] = field(default_factory=list)
    load_mask: Callable[[], Any] | None = None  # -> bool ndarray or None; lazy: only the gt expert reads it
    run_dir: str | None = None  # where wrappers may save pictures they send
    data_root: str | None = None  # benchmark root: wrappers fit per-category experts on ROOT/dataset/category/train/good


@dataclass
class Query:
    question: str
    options: dict[str, str]
    image: Image.Image
    templates: list[Image.Image] = field(default_factory=list)
    defect_examples: list[Image.Image] = field(default_factory=list)
    knowledge: str | None = None
    expert_image: Image.Image | None = None
    expert_sentence: str | None = None
    expert_text: str | None = None  # a calibrated expert's verdict in words (after its picture, or alone)
    instruction: str = MMAD_INSTRUCTION
    system: str | None = None
    info: SampleInfo | None = None
    trace: dict = field(default_factory=dict)
    prepared: bool = False  # per-image work (knowledge, expert picture) already done
    question_type: str = ""  # MMAD's type of this question (set by the runner); routing chooses boosts by it


@dataclass
class Prompt:
    parts: list[Part]
    system: str | None = None
    query: Query | None = None  # the structured source, when mmad_boost built the prompt

    @property
    def images(self) -> list[Image.Image]:
        return [p for p in self.parts if isinstance(p, Image.Image)]

    def text(self, placeholder: str = IMAGE_PLACEHOLDER) -> str:
        return "".join(p if isinstance(p, str) else placeholder for p in self.parts)

    @property
    def trace(self) -> dict:
        return self.query.trace if self.query is not None else {}


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


def format_question(question: str, options: dict[str, str]) -> str:
    lines = [question] + [f"{k}. {v}" for k, v in options.items()]
    return "\n".join(lines)


def build_prompt(q: Query) -> Prompt:
    parts: list[Part] = [q.instruction + "\n"]
    if q.knowledge:
        parts.append(
            "The following domain knowledge describes the normal characteristics of this kind of object "
            "and the types of defect it may have:\n" + q.knowledge + "\n"
        )
    if q.templates:
        n = len(q.templates)
        parts.append(
            f"Here {_plural(n, 'is 1 normal sample image', f'are {n} normal sample images')} of the same product, "
            f"to use as {_plural(n, 'a template', 'templates')} for comparison:\n"
        )
        for im in q.templates:
            parts += [im, "\n"]
    if q.defect_examples:
        n = len(q.defect_examples)
        parts.append(f"Here {_plural(n, 'is 1 image', f'are {n} images')} of defective samples of the same product, showing the same kind of defect:\n")
        for im in q.defect_examples:
            parts += [im, "\n"]
    parts += ["Here is the query image:\n", q.image, "\n"]
    if q.expert_image is not None:
        parts += [(q.expert_sentence or "Here is an image from an anomaly detection expert:") + "\n", q.expert_image, "\n"]
    if q.expert_text:
        parts.append(q.expert_text + "\n")
    parts.append("Question: " + format_question(q.question, q.options) if q.options else q.question)
    return Prompt(parts=_merge_text(parts), system=q.system, query=q)


def _merge_text(parts: list[Part]) -> list[Part]:
    out: list[Part] = []
    for p in parts:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] += p
        else:
            out.append(p)
    return out


def shuffle_options(options: dict[str, str], answer: str, seed: int, qid: str) -> tuple[dict[str, str], str]:
    """Randomise option order with a seed per question; return the relettered options and the answer.

    Seeded by (seed, question id), so the order does not depend on run order, workers or shards.
    """
    texts = list(options.values())
    order = list(range(len(texts)))
    random.Random(f"{seed}:{qid}").shuffle(order)
    shown = {LETTERS[i]: texts[j] for i, j in enumerate(order)}
    return shown, LETTERS[order.index(list(options).index(answer))]
