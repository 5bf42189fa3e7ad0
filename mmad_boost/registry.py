"""One registry pattern for everything built by name: models, experts, encoders, index kinds.

A `Registry` maps names to targets (a class or factory, or a lazy `"module:attr"` string imported
on first use, so registering costs no import and breaks no import cycle). `create(spec, **opts)`
builds one; an entry registered with `rest=True` also takes `name:<rest>` specs and gets the rest
as its first argument (`hf:/models/x`, `anomalib:Padim`). Option strings (from `KEY=VALUE` on
the command line) are converted in ONE place, `convert_options`, to the types the target's
signature declares; bad input is a one-line MmadError naming the option and the form it takes.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import MmadError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
NONE_WORDS = ("none", "null")


# -- option strings -> values ------------------------------------------------------------------------


def parse_bool(value: Any, what: str = "option") -> bool:
    """true/false, 1/0, yes/no, on/off (any case), or a bool; anything else is an MmadError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise MmadError(f"{what}={value!r}: use true or false (also 1/0, yes/no, on/off)")


def parse_int(value: Any, what: str = "option") -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise MmadError(f"{what}={value!r}: use a whole number, e.g. 3") from None


def parse_float(value: Any, what: str = "option") -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    try:
        number = float(str(value).strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise MmadError(f"{what}={value!r}: use a finite number, e.g. 0.5")
    return number


def format_option(value: Any) -> str:
    """The option string `convert_option` turns back into `value` (None -> "none", bools -> "true"/"false")."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_PARSERS: dict[Any, Callable[[Any, str], Any]] = {bool: parse_bool, int: parse_int, float: parse_float}
_FORMS = {bool: "true or false", int: "a whole number", float: "a number", str: "text", Path: "a path"}


def _members(annotation) -> tuple[list, bool]:
    """(non-None types, whether None is allowed) of an annotation such as `int | None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return [a for a in args if a is not type(None)], type(None) in args
    return [annotation], annotation is type(None)


def convert_option(value: Any, annotation: Any, what: str = "option") -> Any:
    """An option string as `annotation` says: bool, int, float, str, Path, `X | None` ("none" or
    "null" give None), a Literal or a list/tuple/dict (as JSON). With no type to go by (Any) a JSON
    literal becomes its value and other text stays text. Values that are not strings (Python callers
    give typed values) pass unchanged; the target checks ranges."""
    if not isinstance(value, str):
        return value
    kinds, nullable = _members(annotation)
    if nullable and value.strip().lower() in NONE_WORDS:
        return None
    if typing.get_origin(annotation) is typing.Literal:
        allowed = typing.get_args(annotation)
        if value in allowed:
            return value
        raise MmadError(f"{what}={value!r}: use one of {', '.join(map(str, allowed))}")
    containers = [k for k in kinds if typing.get_origin(k) in _CONTAINERS or k in _CONTAINERS]
    if containers:
        return _parse_container(value, containers[0], nullable, what)
    known = [k for k in kinds if k in _PARSERS or k in (str, Path)]
    if not known:  # no type to go by (Any, **kwargs handed on): a JSON literal when it is one, else text
        return literal(value)
    failed = []
    for kind in known:  # in declaration order: `int | str` tries the number first
        if kind is str:
            return value
        if kind is Path:
            return Path(value)
        try:
            return _PARSERS[kind](value, what)
        except MmadError as e:
            failed.append((kind, e))
    if len(failed) == 1 and not nullable:
        raise failed[0][1]
    forms = [_FORMS[k] for k, _ in failed] + (["none"] if nullable else [])
    raise MmadError(f"{what}={value!r}: use {' or '.join(forms)}")


_CONTAINERS = (list, tuple, dict, set, frozenset, collections.abc.Sequence, collections.abc.Mapping)


def literal(value: str) -> Any:
    """A JSON literal (0.5, true, null, [1, 2], {"a": 1}) as its value; other text as it is."""
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


def _parse_container(value: str, annotation: Any, nullable: bool, what: str) -> Any:
    origin = typing.get_origin(annotation) or annotation
    mapping = origin in (dict, collections.abc.Mapping)
    parsed = literal(value)
    if mapping and isinstance(parsed, dict):
        return parsed
    if not mapping and isinstance(parsed, list):
        items = typing.get_args(annotation)[:1]
        if items and items[0] in _PARSERS:  # list[int] etc.: each element must be of that type
            kind = items[0]
            ok = all(isinstance(v, kind) and not (kind is not bool and isinstance(v, bool)) or (kind is float and type(v) is int) for v in parsed)
            if not ok or (kind is float and not all(math.isfinite(v) for v in parsed)):
                raise MmadError(f"{what}={value!r}: use a JSON list of {_FORMS[kind]}s, e.g. [1, 2]")
            parsed = [kind(v) for v in parsed]
        return parsed if origin in (list, collections.abc.Sequence) else origin(parsed)
    example = '{"key": 1}' if mapping else "[1, 2]"
    raise MmadError(f"{what}={value!r}: use a JSON {'object' if mapping else 'list'}, e.g. {example}" + (" (or none)" if nullable else ""))


def _hints(target) -> dict[str, Any]:
    func = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(func)
    except Exception:  # an annotation that does not resolve: fall back to the defaults' types
        return {}


def convert_options(target: Callable, options: dict[str, Any], what: str = "option", *, skip: int = 0) -> dict[str, Any]:
    """`options` converted to the types of `target`'s keyword parameters (annotation, else the type
    of the default); an unknown name is refused unless the target takes `**kwargs`. `skip` leaves
    that many leading positional parameters out (the ones the caller fills itself)."""
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return dict(options)
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name: p for p in params[skip:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    hints = _hints(target)
    out = {}
    for key, value in options.items():
        p = named.get(key)
        if p is None:
            if not open_ended:
                raise MmadError(f"{what} option {key!r} is unknown; known: {', '.join(named) or 'none'}")
            out[key] = convert_option(value, Any, f"{what} option {key}")  # handed on untyped
            continue
        annotation = hints.get(key, p.annotation)
        if annotation is inspect.Parameter.empty or isinstance(annotation, str):
            default = p.default
            annotation = Any if default is inspect.Parameter.empty or default is None else type(default)
        out[key] = convert_option(value, annotation, f"{what} option {key}")
    return out


def option_pairs(pairs: Iterable[str], flag: str = "--option") -> dict[str, str]:
    """`["k=v", ...]` from a repeatable command-line flag as a dict of strings (converted later, by
    the target's signature)."""
    opts = {}
    for kv in pairs:
        key, sep, value = kv.partition("=")
        if not sep or not key.strip():
            raise MmadError(f"{flag} {kv!r}: use KEY=VALUE")
        opts[key.strip()] = value
    return opts


# -- the registry ------------------------------------------------------------------------------------


@dataclass
class Entry:
    name: str
    target: str | Callable[..., Any]
    rest: bool = False  # takes `name:<rest>` specs, the rest as the first argument
    preset: dict[str, Any] = field(default_factory=dict)  # default options of an alias (the caller's win)
    fixed: dict[str, Any] = field(default_factory=dict)  # options an alias sets whatever the caller gives
    alias_of: str | None = None


class Registry:
    """Named, lazily imported targets of one kind ("model kind", "expert", "encoder", ...)."""

    def __init__(self, kind_name: str, *, hint: str = "", convert: bool = True):
        self.kind_name = kind_name
        self.hint = hint  # how to write a spec, for the unknown-name error
        self.convert = convert  # False: the targets are factories that convert by the class they pick
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: str | Callable[..., Any], *, rest: bool = False, **preset: Any) -> None:
        """Add (or replace) `name`; `target` is a callable or `"module:attr"`."""
        if isinstance(target, str) and ":" not in target:
            raise ValueError(f"lazy target {target!r}: write 'module:attr'")
        self._entries[name] = Entry(name, target, rest, dict(preset))

    def alias(self, name: str, of: str, *, fixed: dict[str, Any] | None = None, **preset: Any) -> None:
        """Another name for `of`, optionally with its own default options (`preset`, e.g. MMAD's
        few-shot set-up) and options the caller cannot change (`fixed`)."""
        base = self._entries[of]
        self._entries[name] = Entry(name, base.target, base.rest, {**base.preset, **preset}, {**base.fixed, **(fixed or {})}, alias_of=of)

    def names(self, *, aliases: bool = True) -> list[str]:
        """The names in the order they were registered."""
        return [n for n, e in self._entries.items() if aliases or e.alias_of is None]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, spec: str) -> tuple[Entry, str | None]:
        """The entry of `spec` and its rest (None for a plain name)."""
        if spec in self._entries and not self._entries[spec].rest:
            return self._entries[spec], None
        name, sep, rest = spec.partition(":")
        found = self._entries.get(name)
        if found is not None and found.rest and sep:
            return found, rest
        hint = self.hint or ", ".join(n + (":<...>" if self._entries[n].rest else "") for n in self.names())
        raise MmadError(f"{self.kind_name} {spec!r} is unknown; use {hint}")

    def load(self, entry: Entry) -> Callable[..., Any]:
        if not isinstance(entry.target, str):
            return entry.target
        module, _, attr = entry.target.partition(":")
        try:
            target = getattr(importlib.import_module(module), attr)
        except (ModuleNotFoundError, AttributeError) as e:
            raise MmadError(f"{self.kind_name} {entry.name!r} is not available ({e}); reinstall mmad-boost or its extra") from None
        entry.target = target  # resolved once
        return target

    def create(self, spec: str, **opts: Any) -> Any:
        """Build `spec` with `opts` (option strings converted by the target's signature)."""
        entry, rest = self.entry(spec)
        target = self.load(entry)
        options = {**entry.preset, **opts, **entry.fixed}
        if self.convert:
            options = convert_options(target, options, f"{self.kind_name} {entry.name}", skip=0 if rest is None else 1)
        return target(**options) if rest is None else target(rest, **options)
