"""The model protocol: an interleaved prompt in, text out.

Any object with `generate(prompt: Prompt) -> str` is a model. `MLLM` adds the convenient call
forms; `as_model` wraps a plain function `f(images, text) -> str`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from PIL import Image

from ..errors import MmadError
from ..protocol.prompt import IMAGE_PLACEHOLDER, Part, Prompt, Query, build_prompt


class MLLM:
    """Base class for models. Subclasses implement `generate`.

    Optional hooks the runner uses when present:
    - `prepare(query) -> query`: per-image work (knowledge, expert picture), called once per image;
    - `config() -> dict`: what identifies this model's answers (stored in the run folder);
    - `check_samples(samples)`: raise MmadError before a run writes anything (e.g. a category without knowledge);
    - `close()`: release resources.
    """

    name: str = "model"

    def generate(self, prompt: Prompt) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, prompt: Prompt | Sequence[Part] | Sequence[Image.Image], text: str | None = None, *, system: str | None = None) -> str:
        return self.generate(to_prompt(prompt, text, system=system))

    def config(self) -> dict:
        return {"name": self.name}

    def close(self) -> None:
        pass


@runtime_checkable
class Prepares(Protocol):
    """The optional `prepare` hook (see MLLM): models that do per-image work, e.g. BoostedModel."""

    def prepare(self, query: Query) -> Query: ...


@runtime_checkable
class ChecksSamples(Protocol):
    """The optional `check_samples` hook (see MLLM)."""

    def check_samples(self, samples) -> None: ...


@runtime_checkable
class Closes(Protocol):
    """The optional `close` hook (see MLLM); a model object need not derive from MLLM."""

    def close(self) -> None: ...


def to_prompt(prompt: Any, text: str | None = None, *, system: str | None = None) -> Prompt:
    """Accept a Prompt, a list of parts, or (images, text) with the text last."""
    if isinstance(prompt, Prompt):
        return prompt
    if isinstance(prompt, Query):
        return build_prompt(prompt)
    if isinstance(prompt, (str, Image.Image)):
        prompt = [prompt]
    parts = list(prompt or [])
    for p in parts:
        if not isinstance(p, (str, Image.Image)):
            raise MmadError(f"a prompt part must be text or a PIL image, got {type(p).__name__}")
    if text is not None:
        parts.append(text)
    return Prompt(parts=parts, system=system)


def query_from_hand(images: Sequence[Image.Image], text: str) -> Query:
    """A by-hand call: the last image is the query image, the others are normal templates."""
    images = list(images)
    if not images:
        raise MmadError("give at least one image: the query image is the last one, templates before it")
    return Query(question=text, options={}, image=images[-1], templates=images[:-1])


class FunctionModel(MLLM):
    """Wraps `f(images, text) -> str`, or `f(prompt) -> str` when f takes one argument.

    The text has an image placeholder where each image stood, so single-string backends keep order.
    """

    def __init__(self, fn: Callable, name: str | None = None, placeholder: str = IMAGE_PLACEHOLDER):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.placeholder = placeholder
        try:
            params = [p for p in inspect.signature(fn).parameters.values() if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            self._one_arg = len(params) == 1
        except (TypeError, ValueError):
            self._one_arg = False

    def generate(self, prompt: Prompt) -> str:
        out = self.fn(prompt) if self._one_arg else self.fn(prompt.images, prompt.text(self.placeholder))
        if not isinstance(out, str):
            raise TypeError(f"model function {self.name} returned {type(out).__name__}, expected str")
        return out


CODE_ATTR = "mmad_code"  # set on python: models: a hash of their source and their options


def model_config(model: Any) -> dict:
    """What identifies a model's answers in run.json: its config(), and for a python: model the
    hash of its code, so editing the code makes a rerun another configuration."""
    own = getattr(model, "config", None)
    cfg = own() if callable(own) else {"name": getattr(model, "name", type(model).__name__)}
    code = getattr(model, CODE_ATTR, None)
    return {**cfg, "code": code} if isinstance(code, dict) else cfg


def as_model(obj: Any) -> MLLM:
    """A model from a model object, a SPEC string, or a plain callable."""
    if isinstance(obj, str):
        from .registry import create_model

        return create_model(obj)
    if hasattr(obj, "generate") and callable(obj.generate):
        return obj
    if callable(obj):
        return FunctionModel(obj)
    raise MmadError(f"cannot use {type(obj).__name__} as a model: give a SPEC string, a callable f(images, text) -> str, or an object with generate(prompt)")
