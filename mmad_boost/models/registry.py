"""Model SPEC strings (`kind:rest`) resolved in one place, like open_clip's factory."""

from __future__ import annotations

from typing import Any, Callable

from ..errors import MmadError
from ..registry import Registry

EXAMPLES = "baseline:random, baseline:features, openai:<model>, hf:<path>, python:<module>:<attr>"
# kind -> "module:function"; the function takes (rest, **options) and returns a model. Each factory
# converts the option strings itself, by the signature of the class its rest picks.
MODELS = Registry("model kind", hint=EXAMPLES, convert=False)
MODELS.register("baseline", "mmad_boost.models.baselines:create", rest=True)
MODELS.register("openai", "mmad_boost.models.openai_api:create", rest=True)
MODELS.register("hf", "mmad_boost.models.hf:create", rest=True)
MODELS.register("python", "mmad_boost.models.python_spec:create", rest=True)


def register_model_kind(kind: str, factory: str | Callable[..., Any]) -> None:
    """Add a SPEC kind: `factory(rest, **options)` builds the model (or give `"module:function"`)."""
    MODELS.register(kind, factory, rest=True)


def model_kinds() -> list[str]:
    return sorted(MODELS.names())


def create_model(spec: str, **options: Any):
    """A model from its SPEC; option strings are converted by the factory's (or its class's) signature."""
    kind, sep, _ = spec.partition(":")
    if not sep or kind not in MODELS:
        raise MmadError(f"unknown model SPEC {spec!r}; use one of: {EXAMPLES}")
    return MODELS.create(spec, **options)
