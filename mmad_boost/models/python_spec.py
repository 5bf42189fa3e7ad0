"""`python:<module>:<attr>`: a user's model, function or factory imported by name.

`attr` may be a dotted path inside the module. What it names is used as:
- an object with `generate(prompt)` -> that model;
- a class -> instantiated with the SPEC options (`--model-option K=V`), then used as a model;
- a function without required positional arguments -> a factory, called with the options; it
  returns a model or a function;
- any other callable `f(images, text) -> str` (or `f(prompt) -> str`) -> wrapped by FunctionModel.

The model's identity (stored in run.json, so a rerun after editing the code is refused instead of
mixing answers) holds a hash of its source: the module's file (every .py file of the package when
the module is one) and the file defining the named object, plus the options, unless the model
defines its own `config()` (then that says which options change its answers).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

from ..errors import MmadError
from .base import CODE_ATTR, MLLM, FunctionModel


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
    except SystemExit as e:  # a script-style module that exits at import must not end the run silently
        raise MmadError(
            f'model SPEC {spec!r}: importing module {module!r} called sys.exit({e.code!r}); guard its script part with `if __name__ == "__main__":`'
        ) from None
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


def source_files(module, *objects) -> list[Path]:
    """The files whose text decides what a python: model answers (as far as can be seen)."""
    files = set()
    main = getattr(module, "__file__", None)
    if main:
        main = Path(main).resolve()
        if main.name == "__init__.py":  # a package: all of its modules
            files.update(p.resolve() for p in main.parent.rglob("*.py"))
        else:
            files.add(main)
    for obj in objects:
        try:
            f = inspect.getsourcefile(obj if inspect.isclass(obj) or inspect.isroutine(obj) else type(obj))
        except (TypeError, OSError):
            f = None
        if f and Path(f).is_file():
            files.add(Path(f).resolve())
    return sorted(files)


def code_identity(module, *objects) -> dict:
    files = source_files(module, *objects)
    h = hashlib.sha256()
    for f in files:
        try:
            data = f.read_bytes()
        except OSError:
            data = b"<unreadable>"
        h.update(f.name.encode() + b"\0" + hashlib.sha256(data).digest())
    return {"code_sha256": h.hexdigest() if files else None, "code_files": [f.name for f in files]}


class PythonModel(MLLM):
    """Only for a user object that takes no new attribute (e.g. __slots__): carries the code
    identity itself and passes everything else through."""

    def __init__(self, inner, code: dict):
        self.inner, self.name = inner, getattr(inner, "name", type(inner).__name__)
        setattr(self, CODE_ATTR, code)

    def generate(self, prompt):
        return self.inner.generate(prompt)

    def config(self) -> dict:
        own = getattr(self.inner, "config", None)
        return own() if callable(own) else {"name": self.name}

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def __getattr__(self, name):  # only for what PythonModel itself lacks (prepare, check_samples, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def create(rest: str, **options: Any):
    spec = f"python:{rest}"
    module, sep, attr = rest.partition(":")
    if not module or not sep or not attr:
        raise MmadError(f"model SPEC {spec!r}: use python:<module>:<attr>, e.g. python:my_models:answer")
    mod = _import(module, spec)
    target = _resolve(mod, attr, spec)
    made = _build(target, attr, spec, options)
    code = code_identity(mod, target, made.fn if isinstance(made, FunctionModel) else made)
    if not _declares_identity(made):  # a model with its own config() says which options change its answers
        code["options"] = {k: str(v) for k, v in sorted(options.items())}
    try:  # read by models.base.model_config, which Runner and BoostedModel store in run.json
        setattr(made, CODE_ATTR, code)
    except (AttributeError, TypeError):
        made = PythonModel(made, code)
    return made


def _declares_identity(model) -> bool:
    own = getattr(type(model), "config", None)
    return callable(own) and own is not MLLM.config and not isinstance(model, FunctionModel)


def _build(target, attr: str, spec: str, options: dict):
    if _is_model(target):
        if options:
            raise MmadError(f"model SPEC {spec!r} names a model object; it takes no --model-option ({', '.join(options)})")
        return target
    if inspect.isclass(target):
        try:
            made = target(**options)
        except TypeError as e:
            raise MmadError(f"model SPEC {spec!r}: cannot construct {target.__name__} with options {sorted(options)}: {e}") from None
        except SystemExit as e:
            raise MmadError(f"model SPEC {spec!r}: {target.__name__}() called sys.exit({e.code!r}); a model must raise an exception instead") from None
        if _is_model(made):
            return made
        if callable(made):
            return FunctionModel(made, name=attr)
        raise MmadError(f"model SPEC {spec!r}: {target.__name__}() has no generate(prompt) and is not callable")
    if not callable(target):
        raise MmadError(f"model SPEC {spec!r}: {attr} is a {type(target).__name__}, not a model, function or factory")
    n = _required_positional(target)
    if n == 0:  # a factory: f(**options) -> model or function
        try:
            made = target(**options)
        except SystemExit as e:
            raise MmadError(f"model SPEC {spec!r}: factory {attr}() called sys.exit({e.code!r}); a model must raise an exception instead") from None
        if _is_model(made):
            return made
        if callable(made):
            return FunctionModel(made, name=attr)
        raise MmadError(f"model SPEC {spec!r}: factory {attr}() returned {type(made).__name__}, not a model or function")
    if options:
        raise MmadError(f"model SPEC {spec!r} names a function f(images, text); it takes no --model-option ({', '.join(options)})")
    return FunctionModel(target, name=attr)
