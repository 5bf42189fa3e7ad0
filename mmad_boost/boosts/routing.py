"""Routing: which boosts a BoostedModel applies to each question type.

The paper applies every boost to every question, and a boost that helps one subtask can hurt
another (its experts lower discrimination, RAG lowers it for some models). A `Route` says, per
question type (or MMAD subtask), whether the knowledge, the expert's evidence and the normal
templates go into the prompt. The per-image work (retrieval, expert map, rendering) is still done
once per image; routing only leaves parts out of each question's prompt, so it costs nothing.

File format (TOML, see docs/routing.md):

    [default]                      # types not listed: every boost the model has (this table is optional)
    knowledge = true
    expert = true
    [types."Anomaly Detection"]    # a subtask, a question type, or a --type alias
    knowledge = false              # true / false
    expert = true                  # true (the model's evidence), false, or "picture" / "text" / "both"
    templates = true               # false: no normal templates for this type (0-shot)

A `[tuning]` table (written by `mmad-boost tune`: its evidence) is kept for people and ignored here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..atomic import read_toml
from ..errors import MmadError
from ..protocol.scoring import SUBTASKS, subtask_of

EXPERT_VALUES = (True, False, "picture", "text", "both")
_FIELDS = ("knowledge", "expert", "templates")


@dataclass(frozen=True)
class Choice:
    """The boosts one question type gets."""

    knowledge: bool = True
    expert: bool | str = True  # True: as the model is set (its evidence); "picture"/"text"/"both": that part only
    templates: bool = True

    def to_dict(self) -> dict:
        return {"knowledge": self.knowledge, "expert": self.expert, "templates": self.templates}


ALL_ON = Choice()


def type_key(name: str) -> str:
    """A route key: an MMAD subtask name, or a question type (long name, alias or prefix)."""
    if name in SUBTASKS:
        return name
    from ..protocol.data import question_type

    return question_type(name)


def _choice(where: str, table: Any, base: Choice) -> Choice:
    if not isinstance(table, dict):
        raise MmadError(f"{where}: must be a table with knowledge / expert / templates")
    extra = sorted(set(table) - set(_FIELDS))
    if extra:
        raise MmadError(f"{where}: unknown field(s) {', '.join(extra)}; allowed: {', '.join(_FIELDS)}")
    for key in ("knowledge", "templates"):
        if key in table and not isinstance(table[key], bool):
            raise MmadError(f"{where}.{key}: give true or false (got {table[key]!r})")
    if "expert" in table and not (isinstance(table["expert"], bool) or table["expert"] in ("picture", "text", "both")):
        raise MmadError(f'{where}.expert: give true, false, "picture", "text" or "both" (got {table["expert"]!r})')
    return replace(base, **table)


class Route:
    """Per question type, the boosts to apply; types not listed get `default`."""

    def __init__(self, types: dict[str, Choice] | None = None, default: Choice = ALL_ON, source: str = "", given: dict[str, set] | None = None):
        self.types = {type_key(k): v for k, v in (types or {}).items()}
        self.default = default
        self.source = source
        # fields written out per table (others inherit [default]); only these are checked against the model
        self.given = given if given is not None else {name: set(_FIELDS) for name in self.types} | {"default": set()}

    # -- reading -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, where: str = "route") -> "Route":
        if not isinstance(d, dict):
            raise MmadError(f'{where}: a route is a table of [types."<question type>"] tables')
        extra = sorted(set(d) - {"default", "types", "tuning"})
        if extra:
            raise MmadError(f"{where}: unknown field(s) {', '.join(extra)}; allowed: default, types, tuning (see docs/routing.md)")
        default = _choice(f"{where}: [default]", d.get("default", {}), ALL_ON)
        given = {"default": set(d.get("default", {}))}
        types_table = d.get("types", {})
        if not isinstance(types_table, dict):
            raise MmadError(f"{where}: 'types' must hold one table per question type, e.g. [types.\"Anomaly Detection\"]")
        types = {}
        for name, table in types_table.items():
            try:
                key = type_key(name)
            except MmadError as e:
                raise MmadError(f"{where}: [types.{name!r}]: {e}") from None
            if key in types:
                raise MmadError(f"{where}: question type {key!r} is listed twice; keep one table")
            types[key] = _choice(f"{where}: [types.{name!r}]", table, default)
            given[key] = set(table) | given["default"]
        return cls(types, default, source=where, given=given)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Route":
        path = Path(path)
        if not path.is_file():
            raise MmadError(f"{path}: route file not found; write one (docs/routing.md) or make one with `mmad-boost tune`")
        return cls.from_dict(read_toml(path, "docs/routing.md"), where=str(path))

    @classmethod
    def coerce(cls, route: Any) -> "Route | None":
        if route is None or isinstance(route, Route):
            return route
        if isinstance(route, (str, os.PathLike)):
            return cls.load(route)
        if isinstance(route, dict):  # {"Anomaly Detection": {"knowledge": False}, ...} or the file's layout
            if set(route) & {"types", "default"}:
                return cls.from_dict(route)
            return cls.from_dict({"types": route})
        raise MmadError(f"route={route!r}: give a route file (TOML), a dict of question type -> boosts, or a Route")

    # -- using ---------------------------------------------------------------
    def choice(self, question_type: str | None) -> Choice:
        if question_type:
            if question_type in self.types:
                return self.types[question_type]
            st = subtask_of(question_type)
            if st in self.types:
                return self.types[st]
        return self.default

    def choices(self) -> list[tuple[str, Choice]]:
        return [("default", self.default)] + list(self.types.items())

    def to_dict(self) -> dict:
        """What identifies the route in run.json (so a rerun under another route is another configuration)."""
        return {"default": self.default.to_dict(), "types": {k: v.to_dict() for k, v in sorted(self.types.items())}}

    def check_against(self, has_knowledge: bool, has_expert: bool, evidence: str) -> None:
        """A route may only choose among the boosts the model has: anything else is refused, not ignored."""
        where = self.source or "route"
        for name, ch in self.choices():
            given = self.given.get(name, set())
            if ch.knowledge and not has_knowledge and "knowledge" in given:
                raise MmadError(f"{where}: {name} turns on knowledge, but the model has no knowledge base; add --rag (rag=True) or set knowledge = false")
            if ch.expert and not has_expert and "expert" in given:
                raise MmadError(f"{where}: {name} turns on the expert, but the model has none; add --expert NAME or set expert = false")
            if isinstance(ch.expert, str) and has_expert and ch.expert != evidence and evidence != "both":
                raise MmadError(
                    f"{where}: {name} asks for the expert's {ch.expert!r}, but the model prepares its {evidence!r} only; "
                    "set the model's evidence to both (--calibrated --evidence both) or use expert = true"
                )


def apply_choice(query, ch: Choice):
    """The query with the parts its question type does not get left out; the trace says what was applied."""
    changes: dict = {}
    applied, left_out = [], []
    if query.knowledge:
        (applied if ch.knowledge else left_out).append("knowledge")
        if not ch.knowledge:
            changes["knowledge"] = None
    picture = query.expert_image is not None
    text = bool(query.expert_text)
    keep_picture = bool(ch.expert) and ch.expert in (True, "picture", "both")
    keep_text = bool(ch.expert) and ch.expert in (True, "text", "both")
    if picture:
        (applied if keep_picture else left_out).append("expert picture")
        if not keep_picture:
            changes.update(expert_image=None, expert_sentence=None)
    if text:
        (applied if keep_text else left_out).append("expert text")
        if not keep_text:
            changes["expert_text"] = None
    if query.templates:
        (applied if ch.templates else left_out).append("templates")
        if not ch.templates:
            changes["templates"] = []
    query.trace["route"] = {"type": query.question_type or None, "applied": applied, "left_out": left_out}
    return replace(query, **changes) if changes else query


# -- writing (the tuner) -------------------------------------------------------
def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def route_toml(route: Route, header: list[str] | None = None, tuning: dict | None = None) -> str:
    """The route as a file `Route.load` reads back; `tuning`: {key: value} and {subtask: {key: value}} for [tuning]."""
    lines = [f"# {h}" for h in (header or [])]
    lines += ["", "[default]"] + [f"{k} = {_toml_value(v)}" for k, v in route.default.to_dict().items()]
    for name, ch in route.types.items():
        lines += ["", f"[types.{_toml_str(name)}]"] + [f"{k} = {_toml_value(v)}" for k, v in ch.to_dict().items()]
    if tuning:
        flat = {k: v for k, v in tuning.items() if not isinstance(v, dict)}
        lines += ["", "[tuning]"] + [f"{_toml_str(k)} = {_toml_value(v)}" for k, v in flat.items()]
        for k, v in tuning.items():
            if isinstance(v, dict):
                lines += ["", f"[tuning.{_toml_str(k)}]"] + [f"{_toml_str(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"
