"""Model SPEC strings (`kind:rest`) resolved in one place, like open_clip's factory."""
from __future__ import annotations

import importlib
from typing import Any, Callable

from ..errors import MmadError

# kind -> "module:function"; the function takes (rest, **options) and returns a model.
_KINDS: dict[str, str | Callable[..., Any]] = {
    "baseline": "mmad_boost.models.baselines:create",
    "openai": "mmad_boost.models.openai_api:create",
    "hf": "mmad_boost.models.hf:create",
    "python": "mmad_boost.models.python_spec:create",
}
EXAMPLES = "baseline:random, baseline:features, openai:<model>, hf:<path>, python:<module>:<attr>"


def register_model_kind(kind: str, factory: str | Callable[..., Any]) -> None:
    """Add a SPEC kind: `factory(rest, **options)` builds the model."""
    _KINDS[kind] = factory


def model_kinds() -> list[str]:
    return sorted(_KINDS)


def create_model(spec: str, **options: Any):
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in _KINDS:
        raise MmadError(f"unknown model SPEC {spec!r}; use one of: {EXAMPLES}")
    factory = _KINDS[kind]
    if isinstance(factory, str):
        mod, _, attr = factory.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except ModuleNotFoundError as e:
            raise MmadError(f"model kind {kind!r} is not available ({e}); reinstall mmad-boost") from None
    return factory(rest, **options)
