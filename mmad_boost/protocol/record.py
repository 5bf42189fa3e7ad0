"""The answer record (one line of `records*.jsonl`) and its trace, as typed objects.

The runner builds a `Record` per question; scoring and the reports read records through it. The
JSON keys stay those of earlier runs (and MMAD's: the model's letter is `gpt_answer`), so old run
folders read unchanged; where a key is short or historical the field has the full name and the key
is kept in the field's metadata. `Record.from_json(d).to_json()` gives back `d` key for key and in
the same order; keys this version does not know are kept in `extra` and written back at their place.
A record the runner builds writes its keys in one fixed order (the order of the fields below).
The trace is kept as stored and parsed into `Trace` when `record.trace` is read: scoring, which
reads every record of a 40k-question run several times, never pays for it.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Mapping

from .keys import VALID_LETTERS, category_of, dataset_of, is_normal_key


def _key(name: str, *, always: bool = False, section=None, flat: bool = False):
    """Field metadata: its JSON key, whether a fresh object writes it even when None, and the class
    of a nested section (`flat`: its keys sit in the parent object, e.g. the judge's)."""
    return {"json": name, "always": always, "section": section, "flat": flat}


class _Field(typing.NamedTuple):
    name: str
    key: str  # the JSON key
    section: Any  # a nested _JsonObject class, or None
    flat: bool
    always: bool
    default: Any


_FIELDS: dict[type, tuple[tuple[_Field, ...], dict[str, _Field]]] = {}


def _fields_of(cls) -> tuple[tuple[_Field, ...], dict[str, _Field]]:
    """The class's fields and the field of each JSON key (a flat section's keys lead to it); computed
    once per class: a 40k-question run is read field by field."""
    known = _FIELDS.get(cls)
    if known is None:
        specs = tuple(
            _Field(f.name, f.metadata.get("json", f.name), f.metadata.get("section"), bool(f.metadata.get("flat")), bool(f.metadata.get("always")), f.default)
            for f in fields(cls)
            if f.name not in ("extra", "source_keys")
        )
        by_key = {}
        for s in specs:
            for k in s.section._FLAT_KEYS if s.flat else (s.key,):
                by_key[k] = s
        known = _FIELDS[cls] = (specs, by_key)
    return known


class _JsonObject:
    """Typed fields to and from one JSON object; unknown keys kept in `extra`, the source's key order kept."""

    _FLAT_KEYS: ClassVar[tuple[str, ...]] = ()  # for a flat section: the keys it owns in its parent

    def to_json(self) -> dict:
        values: dict[str, Any] = {}  # JSON key -> value, one entry per field that is written
        source = self.source_keys
        for s in _fields_of(type(self))[0]:
            value = getattr(self, s.name)
            if s.flat:
                if value is not None:
                    values.update(value.to_json())
            elif (s.always or value is not None) if source is None else (s.key in source or value != s.default):
                # built here: the fixed keys and those set; read: the keys it had and those set since
                values[s.key] = _dump(value)
        for k, v in self.extra.items():
            values.setdefault(k, v)
        if source is None:
            return values
        out = {k: values[k] for k in source if k in values}  # the order the object was read in
        if len(out) < len(values):
            out.update((k, v) for k, v in values.items() if k not in out)
        return out

    @classmethod
    def from_json(cls, obj: Mapping):
        by_key = _fields_of(cls)[1]
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        flat: dict[_Field, dict] = {}
        for k, v in obj.items():
            s = by_key.get(k)
            if s is None:
                extra[k] = v
            elif s.flat:
                flat.setdefault(s, {})[k] = v
            else:
                kwargs[s.name] = v if s.section is None else _load(s.section, v)
        for s, part in flat.items():
            kwargs[s.name] = s.section.from_json(part)
        return cls(**kwargs, extra=extra, source_keys=tuple(obj))


def _dump(value):
    if isinstance(value, _JsonObject):
        return value.to_json()
    if isinstance(value, list):
        return [v.to_json() if isinstance(v, _JsonObject) else v for v in value]
    return value


def _load(section, value):
    """A nested object (or a list of them) as its section class; any other JSON value kept as it is."""
    if isinstance(value, dict):  # JSON objects (and the runner's traces) are dicts; typing.Mapping checks are slow
        return section.from_json(value)
    if isinstance(value, list):
        return [section.from_json(v) if isinstance(v, dict) else v for v in value]
    return value


def _extra():
    return field(default_factory=dict, repr=False)


def _source():
    # the keys in the order they were read (None for an object built here): written back in that order
    return field(default=None, repr=False, compare=False)


# -- the trace: what the boosts did for the image -------------------------------------------
@dataclass
class RetrievalTrace(_JsonObject):
    """The knowledge retrieval for the image (`--rag`)."""

    mode: str | None = field(default=None, metadata=_key("mode"))  # "oracle" or "image"
    category: str | None = field(default=None, metadata=_key("category"))  # retrieved; None: nothing close enough
    true_category: str | None = field(default=None, metadata=_key("true_category"))
    score: float | None = field(default=None, metadata=_key("score"))
    runner_up: str | None = field(default=None, metadata=_key("runner_up"))
    knowledge_chars: int | None = field(default=None, metadata=_key("knowledge_chars"))
    extra: dict = _extra()
    source_keys: tuple | None = _source()


@dataclass
class ExpertTrace(_JsonObject):
    """The expert's look at the image (`--expert`)."""

    name: str | None = field(default=None, metadata=_key("name"))
    mode: str | None = field(default=None, metadata=_key("mode"))  # "faithful" or "calibrated"
    style: str | None = field(default=None, metadata=_key("style"))  # how the map is drawn (--viz)
    score: float | None = field(default=None, metadata=_key("score"))
    decision: bool | None = field(default=None, metadata=_key("decision"))  # calibrated: called defective
    marked: bool | None = field(default=None, metadata=_key("marked"))  # the picture shows a mark
    evidence: str | None = field(default=None, metadata=_key("evidence"))
    picture: str | None = field(default=None, metadata=_key("picture"))  # saved picture, relative to the run folder
    extra: dict = _extra()
    source_keys: tuple | None = _source()


@dataclass
class RouteTrace(_JsonObject):
    """Which boosts the route applied to this question's type (`--route`)."""

    question_type: str | None = field(default=None, metadata=_key("type"))
    applied: list | None = field(default=None, metadata=_key("applied"))
    left_out: list | None = field(default=None, metadata=_key("left_out"))
    extra: dict = _extra()
    source_keys: tuple | None = _source()


@dataclass
class Trace(_JsonObject):
    """Per image (its questions share one): template and example keys, seconds per stage, and the
    sections the boosts wrote; sections a model adds (e.g. `baseline`) are kept in `extra`."""

    templates: list | None = field(default=None, metadata=_key("templates"))  # image keys of the templates shown
    defect_examples: list | None = field(default=None, metadata=_key("defect_examples"))
    timings: dict | None = field(default=None, metadata=_key("timings"))  # stage -> seconds
    retrieval: RetrievalTrace | None = field(default=None, metadata=_key("retrieval", section=RetrievalTrace))
    expert: ExpertTrace | None = field(default=None, metadata=_key("expert", section=ExpertTrace))
    route: RouteTrace | None = field(default=None, metadata=_key("route", section=RouteTrace))
    extra: dict = _extra()
    source_keys: tuple | None = _source()

    def stage_seconds(self) -> dict[str, float]:
        """The numeric entries of `timings` (a stage an image did not run is absent)."""
        t = self.timings if isinstance(self.timings, dict) else {}
        return {k: v for k, v in t.items() if isinstance(v, (int, float))}

    def other_sections(self) -> dict:
        """The sections beyond templates, timings, retrieval and expert (the route, any a model
        wrote), as JSON, in the trace's order."""
        own = ("templates", "defect_examples", "timings", "retrieval", "expert")
        return {k: v for k, v in self.to_json().items() if k not in own}


# -- the record -----------------------------------------------------------------------------
@dataclass
class Judgement(_JsonObject):
    """`--judge`: the judge model's reading of a response the parser found no letter in."""

    _FLAT_KEYS: ClassVar[tuple[str, ...]] = ("judge_answer", "judge_response", "judge_error")
    answer: str | None = field(default=None, metadata=_key("judge_answer", always=True))  # None: no or several options
    response: str | None = field(default=None, metadata=_key("judge_response", always=True))
    error: str | None = field(default=None, metadata=_key("judge_error"))  # written only when the judge failed
    extra: dict = _extra()
    source_keys: tuple | None = _source()


@dataclass
class Rotation(_JsonObject):
    """`--circular`: the question asked once more with its option texts rotated over the same letters."""

    options: dict | None = field(default=None, metadata=_key("options", always=True))
    correct_answer: str | None = field(default=None, metadata=_key("correct_answer", always=True))
    response: str | None = field(default=None, metadata=_key("response", always=True))
    model_answer: str | None = field(default=None, metadata=_key("gpt_answer", always=True))
    judge: Judgement | None = field(default=None, metadata=_key("judge", section=Judgement, flat=True))
    extra: dict = _extra()
    source_keys: tuple | None = _source()

    def is_right(self) -> bool:
        return self.model_answer is not None and self.model_answer == self.correct_answer


@dataclass
class Record(_JsonObject):
    """One question asked once: what was shown, what came back, and how it was read."""

    qid: str = field(default="", metadata=_key("qid", always=True))  # "<image key>#<question index>"
    image: str = field(default="", metadata=_key("image", always=True))  # the image key
    question: str | None = field(default=None, metadata=_key("question", always=True))
    question_type: str = field(default="", metadata=_key("question_type", always=True))
    correct_answer: str | None = field(default=None, metadata=_key("correct_answer", always=True))
    model_answer: str | None = field(default=None, metadata=_key("gpt_answer", always=True))  # the parser's letter, None: unparsed
    response: str | None = field(default=None, metadata=_key("response", always=True))  # the model's raw text
    options: dict | None = field(default=None, metadata=_key("options", always=True))  # letter -> text, as shown
    setting: str | None = field(default=None, metadata=_key("setting", always=True))
    model: str | None = field(default=None, metadata=_key("model", always=True))
    parser: str | None = field(default=None, metadata=_key("parser", always=True))
    latency_seconds: float | None = field(default=None, metadata=_key("latency_s", always=True))
    error: str | None = field(default=None, metadata=_key("error", always=True))  # why the question failed
    judge: Judgement | None = field(default=None, metadata=_key("judge", section=Judgement, flat=True))
    rotations: list[Rotation] | None = field(default=None, metadata=_key("circular", section=Rotation))
    circular_correct: bool | None = field(default=None, metadata=_key("circular_correct"))  # right in every rotation
    trace_json: dict | None = field(default=None, metadata=_key("trace"))  # as stored; read it typed as `trace`
    extra: dict = _extra()  # keys of other versions, and `answered_by` on the judged copies robust.py makes
    source_keys: tuple | None = _source()

    @property
    def trace(self) -> Trace | None:
        """The typed trace, parsed when asked for (scoring never needs it, and a 40k-question run is
        read often); a change is kept by assigning it back (`record.trace = t`)."""
        raw = self.trace_json
        return Trace.from_json(raw) if isinstance(raw, dict) else None

    @trace.setter
    def trace(self, value: Trace | None) -> None:
        self.trace_json = None if value is None else value.to_json()

    # -- MMAD's reading of the record (protocol §6) ----------------------------------------
    @property
    def dataset(self) -> str:
        return dataset_of(self.image)

    @property
    def category(self) -> str:
        return category_of(self.image)

    @property
    def is_normal(self) -> bool:
        return is_normal_key(self.image)

    @property
    def is_valid(self) -> bool:
        """Both letters are option letters: the answer counts in MMAD's accuracy (else it is dropped)."""
        return self.correct_answer in VALID_LETTERS and self.model_answer in VALID_LETTERS

    def is_right(self) -> bool:
        return self.model_answer is not None and self.model_answer == self.correct_answer

    def option_text(self, letter: str | None) -> str:
        return str((self.options or {}).get(letter, ""))

    def has_latency(self) -> bool:
        return isinstance(self.latency_seconds, (int, float))


def as_record(r: Record | Mapping) -> Record:
    return r if isinstance(r, Record) else Record.from_json(r)


def as_records(records) -> list[Record]:
    return [as_record(r) for r in records]


# -- what a stored record's top-level values may be (running/records.py checks each line) ------
_JSON_KINDS = {str: (str,), int: (int,), float: (int, float), bool: (bool,), dict: (dict,), list: (list,)}


def _kinds(hint) -> tuple[type, ...]:
    """The JSON types a field's annotation allows: `str | None` -> (str, NoneType); a section -> dict, a list of them -> list."""
    args = typing.get_args(hint) or (hint,)
    out: list[type] = []
    for a in args:
        a = typing.get_origin(a) or a
        if a is type(None):
            out.append(type(None))
        elif isinstance(a, type) and issubclass(a, _JsonObject):
            out.append(dict)
        else:
            out.extend(_JSON_KINDS.get(a, (object,)))
    return tuple(dict.fromkeys(out))


def json_field_kinds(cls=Record) -> dict[str, tuple[type, ...]]:
    """JSON key -> allowed types of every key `cls` knows, flat sections' keys included."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[type, ...]] = {}
    for f in fields(cls):
        if f.name in ("extra", "source_keys"):
            continue
        if f.metadata.get("flat"):
            out.update(json_field_kinds(f.metadata["section"]))
        else:
            out[f.metadata.get("json", f.name)] = _kinds(hints[f.name])
    return out
