"""The fitted expert folder (`expert.json` + `<array>.npy`), checked in ONE place: it is untrusted input.

Every key of `expert.json` is declared here with its type; `config` keys per expert kind; every
array file must lie inside the folder and its `.npy` header (dtype, shape) must match the file's
size before a byte is allocated (a header claiming 1e9 x 1280 floats is refused, not allocated).

To add a key (e.g. stored normal-image scores), add a line to `TOP_FIELDS` (or `CONFIG_FIELDS[kind]`,
or `ARRAYS[kind]`); nothing else reads expert.json without going through `read_folder`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import MmadError

FORMAT_VERSION = 1
MAX_JSON_BYTES = 64 << 20
MAX_ARRAY_BYTES = 16 << 30  # far above any fitted memory bank; a larger claim is a damaged file
_ARRAY_NAME = re.compile(r"[A-Za-z0-9_]{1,200}")

# A check is a callable(value) -> None or an error text ("must be ...").
Check = Callable[[Any], "str | None"]


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def number(lo: float = -math.inf, hi: float = math.inf, *, optional: bool = False) -> Check:
    def check(v):
        if v is None and optional:
            return None
        if not _is_num(v) or not lo <= v <= hi:
            return f"must be a finite number in [{lo:g}, {hi:g}]" + (" or null" if optional else "")
        return None

    return check


def integer(lo: int = -(2**63), hi: int = 2**63, *, optional: bool = False) -> Check:
    def check(v):
        if v is None and optional:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            return f"must be an integer in [{lo}, {hi}]" + (" or null" if optional else "")
        return None

    return check


def text(*, choices: tuple[str, ...] | None = None, optional: bool = False, max_len: int = 4096) -> Check:
    def check(v):
        if v is None and optional:
            return None
        if not isinstance(v, str) or len(v) > max_len or (choices and v not in choices):
            return "must be " + (f"one of {', '.join(choices)}" if choices else "a string") + (" or null" if optional else "")
        return None

    return check


def boolean(*, or_text: bool = False) -> Check:
    def check(v):
        if isinstance(v, bool) or (or_text and isinstance(v, str) and len(v) < 64):
            return None
        return "must be true or false"

    return check


def list_of(item: Check, *, max_items: int = 1_000_000, optional: bool = False) -> Check:
    def check(v):
        if v is None and optional:
            return None
        if not isinstance(v, list) or len(v) > max_items:
            return "must be a list"
        for i, x in enumerate(v):
            problem = item(x)
            if problem:
                return f"entry {i} {problem}"
        return None

    return check


def scalar(v) -> str | None:
    ok = v is None or isinstance(v, (bool, str)) or _is_num(v)
    return None if ok else "must be a string, number, true/false or null"


def object_of(fields: dict[str, tuple[Check, bool]]) -> Check:
    """A nested object with declared keys (unknown keys refused, required ones present)."""

    def check(v):
        if not isinstance(v, dict):
            return "must be an object"
        for key, value in v.items():
            if key not in fields:
                return f"has an unknown key {key!r} (known: {', '.join(fields)})"
            problem = fields[key][0](value)
            if problem:
                return f"key {key!r} {problem}"
        missing = [k for k, (_, required) in fields.items() if required and k not in v]
        return f"lacks the key {missing[0]!r}" if missing else None

    return check


# what calibration learned from the normal images (experts.base.NormalScores.to_json)
CALIBRATION_FIELDS: dict[str, tuple[Check, bool]] = {
    "method": (text(max_len=200), False),
    "false_marks": (number(0, 1), False),
    "margin": (number(0, 1e6), False),
    "normal_scores": (list_of(number()), True),
    "normal_map_max": (list_of(number()), True),
}

TOP_FIELDS: dict[str, tuple[Check, bool]] = {  # name: (check, required)
    "format": (integer(1, FORMAT_VERSION), True),
    "kind": (text(max_len=200), True),
    "config": (lambda v: None if isinstance(v, dict) else "must be an object", False),
    "fitted": (boolean(), False),
    "arrays": (
        list_of(lambda a: None if isinstance(a, str) and _ARRAY_NAME.fullmatch(a) else "must be a plain name (letters, digits, _)", max_items=10_000),
        False,
    ),
    "image_threshold": (number(optional=True), False),
    "pixel_threshold": (number(optional=True), False),
    "state_id": (text(max_len=200), False),
    "category": (text(max_len=400), False),
    "fit_images": (list_of(text()), False),
    "calibration_images": (list_of(text()), False),
    "calibration": (object_of(CALIBRATION_FIELDS), False),
    # how `expert fit --defects` chose patchcore's image score (experts.score_choice): for the record only
    "image_score_choice": (
        list_of(
            object_of(
                {
                    **{k: (scalar, True) for k in ("topk", "threshold", "caught", "defects", "mean_ratio", "configured", "chosen")},
                    **{k: (scalar, False) for k in ("image_score", "image_score_sigma", "label")},
                }
            ),
            max_items=100,
        ),
        False,
    ),
}

CONFIG_FIELDS: dict[str, dict[str, Check]] = {
    "patchcore": {
        "backbone": text(),
        "mode": text(choices=("full", "few-shot")),
        "size": integer(1, 16384),
        "coreset_ratio": number(1e-9, 1),
        "sigma": number(0, 1000),
        "foreground": boolean(or_text=True),
        "seed": integer(),
        "reweight": boolean(),
        "topk": number(0, 1e9, optional=True),
        "knn": integer(1, 100_000, optional=True),
        "batch": integer(1, 100_000),
        "image_score": text(choices=("topk", "blur-max", "scan")),
        "image_score_sigma": number(1e-9, 100),
        "image_score_null": list_of(list_of(number(-1e12, 1e12), max_items=2), max_items=16, optional=True),  # scan: [mean, sd] per width
    },
    "gt": {},
    "anomalyclip": {
        "arch": text(),
        "weights": text(),
        "image_size": integer(16, 8192, optional=True),
        "layers": list_of(integer(0, 1000), max_items=1000, optional=True),
        "prompts": text(optional=True),
        "object_name": text(),
        "sigma": number(0, 1000),
        "temperature": number(1e-9, 1e6),
    },
    "anomalib": {
        "model": text(max_len=200),
        "backbone": text(),
        "size": integer(1, 16384),
        "epochs": integer(0, 1_000_000),
        "batch": integer(1, 100_000),
        "lr": number(0, 1e6, optional=True),
    },
}
OPEN_CONFIG = {"anomalib"}  # other scalar keys are passed to the anomalib model as its options

# Arrays a kind may hold: name -> (number of dimensions or None for any).
ARRAYS: dict[str, dict[str, int | None] | None] = {
    "patchcore": {"memory_bank": 2},
    "gt": {},
    "anomalyclip": {},
    "anomalib": None,  # the anomalib model's own tensors, any names
}


REQUIRED_WHEN_FITTED: dict[str, tuple[str, ...]] = {"patchcore": ("memory_bank",)}  # full mode; few-shot fits per query


def _err(where: str, what: str) -> MmadError:
    return MmadError(f"{where}: {what}; refit with `mmad-boost expert fit` or restore the folder")


def validate_meta(meta: Any, meta_file: Path) -> dict:
    """A checked copy of expert.json's content; one line naming the file and the field otherwise."""
    if not isinstance(meta, dict):
        raise _err(str(meta_file), f"must be a JSON object, not {type(meta).__name__}")
    for name, value in meta.items():
        if name not in TOP_FIELDS:
            raise _err(str(meta_file), f"unknown field {name!r} (known: {', '.join(TOP_FIELDS)})")
        problem = TOP_FIELDS[name][0](value)
        if problem:
            raise _err(str(meta_file), f"field {name!r} {problem}")
    for name, (_, required) in TOP_FIELDS.items():
        if required and name not in meta:
            raise _err(str(meta_file), f"field {name!r} is missing")
    kind = meta["kind"]
    if kind not in CONFIG_FIELDS:
        raise _err(str(meta_file), f"kind {kind!r} is unknown (known: {', '.join(CONFIG_FIELDS)})")
    fields = CONFIG_FIELDS[kind]
    for key, value in (meta.get("config") or {}).items():
        check = fields.get(key)
        if check is None and kind not in OPEN_CONFIG:
            raise _err(str(meta_file), f"config key {key!r} is unknown for kind {kind} (known: {', '.join(fields) or 'none'})")
        problem = (check or scalar)(value)
        if problem:
            raise _err(str(meta_file), f"config {key!r} {problem}")
    config = meta.get("config") or {}
    for name in REQUIRED_WHEN_FITTED.get(kind, ()):  # a fitted expert without its state would fail at the first image
        if meta.get("fitted", True) and config.get("mode", "full") == "full" and name not in (meta.get("arrays") or []):
            raise _err(str(meta_file), f"'arrays' lacks {name!r}, which a fitted {kind} needs")
    allowed = ARRAYS.get(kind)
    for name in meta.get("arrays") or []:
        if allowed is not None and name not in allowed:
            raise _err(str(meta_file), f"array {name!r} does not belong to kind {kind} (expected: {', '.join(allowed) or 'none'})")
    return meta


def check_npy(path: Path, folder: Path, ndim: int | None = None) -> None:
    """The file lies in `folder` and its header describes exactly the bytes that follow it."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise _err(str(path), "missing from the expert folder") from None
    if real.parent != folder.resolve() or not real.is_file():
        raise _err(str(path), "is not a plain file inside the expert folder (links out of it are refused)")
    size = real.stat().st_size
    try:
        with open(real, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"npy format version {version} is not supported")
            offset = f.tell()
    except Exception as e:  # numpy's header parser raises many types (ValueError, SyntaxError, TokenError, ...)
        raise _err(str(path), f"not a plain NumPy array file ({' '.join(str(e).split())[:160]})") from None
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise _err(str(path), f"holds {dtype} values, not plain numbers")
    if ndim is not None and len(shape) != ndim:
        raise _err(str(path), f"has shape {shape}, expected {ndim} dimensions")
    if 0 in shape:
        raise _err(str(path), f"has shape {shape}: no values")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > MAX_ARRAY_BYTES or claimed != size - offset:
        raise _err(str(path), f"header claims shape {shape} of {dtype} ({claimed} bytes) but the file holds {size - offset}")


def read_folder(directory: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(checked expert.json content, arrays) of a fitted expert folder; nothing is unpickled."""
    d = Path(directory)
    meta_file = d / "expert.json"
    if not meta_file.is_file():
        raise MmadError(f"{meta_file} not found; pass a folder written by `mmad-boost expert fit` or expert.save()")
    try:
        if meta_file.stat().st_size > MAX_JSON_BYTES:
            raise _err(str(meta_file), f"larger than {MAX_JSON_BYTES >> 20} MB")
        meta = json.loads(meta_file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise _err(str(meta_file), "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise MmadError(f"{meta_file}: not valid JSON ({e.msg}); refit the expert") from None
    except RecursionError:
        raise _err(str(meta_file), "nested too deeply") from None
    except OSError as e:
        raise _err(str(meta_file), f"cannot be read ({e.strerror})") from None
    meta = validate_meta(meta, meta_file)
    dims = ARRAYS.get(meta["kind"]) or {}
    arrays = {}
    for name in meta.get("arrays") or []:
        f = d / f"{name}.npy"
        check_npy(f, d, dims.get(name))
        try:
            arrays[name] = np.load(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise _err(str(f), f"not a plain NumPy array file ({e})") from None
    return meta, arrays
