"""`python:<module>:<attr>`: a user's model, function or factory imported by name.

`attr` may be a dotted path inside the module. What it names is used as:
- an object with `generate(prompt)` -> that model;
- a class -> instantiated with the SPEC options (`--model-option K=V`), then used as a model;
- a function without required positional arguments -> a factory, called with the options; it
  returns a model or a function;
- any other callable `f(images, text) -> str` (or `f(prompt) -> str`) -> wrapped by FunctionModel.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

from ..errors import MmadError
from .base import FunctionModel


def _import(module: str, spec: str):
    # Let `python:my_model:f` find my_model.py in the working directory, like `python -m` does.
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise MmadError(f"model SPEC {spec!r}: cannot import module {module!r} ({e}); put it on PYTHONPATH or in the working directory") from None
    except MmadError:
        raise
    except Exception as e:
        raise MmadError(f"model SPEC {spec!r}: importing module {module!r} failed: {type(e).__name__}: {e}") from None


def _resolve(obj: Any, attr: str, spec: str):
    for name in attr.split("."):
        if not hasattr(obj, name):
            raise MmadError(f"model SPEC {spec!r}: {getattr(obj, '__name__', obj)!r} has no attribute {name!r}")
        obj = getattr(obj, name)
    return obj


def _is_model(obj: Any) -> bool:
    return hasattr(obj, "generate") and callable(obj.generate) and not inspect.isclass(obj)


def _required_positional(fn) -> int | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    return sum(1 for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def create(rest: str, **options: Any):
    spec = f"python:{rest}"
    module, sep, attr = rest.partition(":")
    if not module or not sep or not attr:
        raise MmadError(f"model SPEC {spec!r}: use python:<module>:<attr>, e.g. python:my_models:answer")
    target = _resolve(_import(module, spec), attr, spec)
    if _is_model(target):
        if options:
            raise MmadError(f"model SPEC {spec!r} names a model object; it takes no --model-option ({', '.join(options)})")
        return target
    if inspect.isclass(target):
        try:
            made = target(**options)
        except TypeError as e:
            raise MmadError(f"model SPEC {spec!r}: cannot construct {target.__name__} with options {sorted(options)}: {e}") from None
        if _is_model(made):
            return made
        if callable(made):
            return FunctionModel(made, name=attr)
        raise MmadError(f"model SPEC {spec!r}: {target.__name__}() has no generate(prompt) and is not callable")
    if not callable(target):
        raise MmadError(f"model SPEC {spec!r}: {attr} is a {type(target).__name__}, not a model, function or factory")
    n = _required_positional(target)
    if n == 0:  # a factory: f(**options) -> model or function
        made = target(**options)
        if _is_model(made):
            return made
        if callable(made):
            return FunctionModel(made, name=attr)
        raise MmadError(f"model SPEC {spec!r}: factory {attr}() returned {type(made).__name__}, not a model or function")
    if options:
        raise MmadError(f"model SPEC {spec!r} names a function f(images, text); it takes no --model-option ({', '.join(options)})")
    return FunctionModel(target, name=attr)
