"""The MMAD question file: samples (one per image), their questions, masks and templates.

Format: protocol doc §1. Keys are image paths relative to the data root,
`<Dataset>/<category>/<split>/<defect-or-good>/<file>` (their rules: keys.py). Reading the image
and mask files themselves: image_files.py.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from ..errors import MmadError
from .keys import VALID_LETTERS, is_normal_key
from .keys import QUESTION_TYPES  # noqa: F401  (importable from here as before)
from .image_files import check_image_file, load_mask, load_rgb, to_rgb  # noqa: F401  (importable from here as before)

# short names for --type (and Benchmark.select(types=...)); any unambiguous prefix works too
QUESTION_TYPE_ALIASES = {
    "anomaly": "Anomaly Detection",
    "defect-class": "Defect Classification",
    "defect-loc": "Defect Localization",
    "defect-desc": "Defect Description",
    "defect-analysis": "Defect Analysis",
    "object-class": "Object Classification",
    "object-structure": "Object Structure",
    "object-details": "Object Details",
}


def question_type(text: str) -> str:
    """The long question-type name for a long name, a short alias or an unambiguous prefix of
    either (case-insensitive; spaces, '-' and '_' alike)."""

    def norm(t: str) -> str:
        return "-".join(t.lower().replace("_", " ").replace("-", " ").split())

    want = norm(text)
    names = {norm(t): t for t in QUESTION_TYPES} | {norm(a): t for a, t in QUESTION_TYPE_ALIASES.items()}
    if want in names:
        return names[want]
    hits = sorted({t for n, t in names.items() if want and n.startswith(want)})
    if len(hits) == 1:
        return hits[0]
    choices = ", ".join(QUESTION_TYPE_ALIASES)
    if hits:
        raise MmadError(f"question type {text!r} is ambiguous ({', '.join(hits)}); use one of {choices}")
    raise MmadError(f"unknown question type {text!r}; use one of {choices} (or the long names, e.g. 'Anomaly Detection')")


@dataclass(frozen=True)
class Question:
    text: str
    options: dict[str, str]
    answer: str
    type: str
    index: int  # position in the image's conversation; with the image key it names the question
    annotation: bool = False


@dataclass
class Sample:
    """One image of the question file with everything the file says about it."""

    key: str
    questions: list[Question]
    mask_path: str = ""
    similar_templates: list[str] = field(default_factory=list)
    random_templates: list[str] = field(default_factory=list)

    @property
    def parts(self) -> list[str]:
        return self.key.split("/")

    @property
    def dataset(self) -> str:
        return self.parts[0]

    @property
    def category(self) -> str:
        return self.parts[1] if len(self.parts) > 1 else ""

    @property
    def label(self) -> str:
        """The defect folder (`good` for normal images)."""
        return self.parts[-2] if len(self.parts) > 2 else ""

    @property
    def is_normal(self) -> bool:
        return is_normal_key(self.key)

    def qid(self, question: Question) -> str:
        return f"{self.key}#{question.index}"


def _no_duplicate_keys(path: Path):
    def hook(pairs):
        seen = {}
        for k, v in pairs:
            if k in seen:
                raise MmadError(f"{path}: duplicate key {k!r}; each image may appear once — merge its entries")
            seen[k] = v
        return seen

    return hook


def _field(path: Path, key: str, value: dict, name: str, kind, default=None):
    if name not in value:
        if default is not None:
            return default
        raise MmadError(f"{path}: image {key!r} has no {name!r} field; add it (see docs/mmad-protocol.md §1)")
    v = value[name]
    if not isinstance(v, kind):
        raise MmadError(f"{path}: image {key!r} field {name!r} must be {kind.__name__}, got {type(v).__name__}")
    return v


def _paths(path: Path, key: str, value: dict, name: str) -> list[str]:
    """A list of image paths (templates): every entry a non-empty string."""
    items = _field(path, key, value, name, list, [])
    for j, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise MmadError(f"{path}: image {key!r} field {name!r} entry {j} must be a path string, got {type(item).__name__}")
    return list(items)


def parse_question(path: Path, key: str, i: int, q) -> Question:
    where = f"{path}: image {key!r} question {i}"
    if not isinstance(q, dict):
        raise MmadError(f"{where} must be an object with Question/Options/Answer/type")
    for name in ("Question", "Options", "Answer"):
        if name not in q:
            raise MmadError(f"{where} has no {name!r} field; add it")
    opts = q["Options"]
    if not isinstance(opts, dict) or not opts:
        raise MmadError(f'{where}: \'Options\' must be a non-empty object like {{"A": "Yes", "B": "No"}}')
    for letter, text in opts.items():
        if letter not in VALID_LETTERS or not isinstance(text, str):  # a set, not a substring test: "AB" and "" are refused
            raise MmadError(f"{where}: option {letter!r} must be one letter A-E with a text value")
    if not isinstance(q["Question"], str):
        raise MmadError(f"{where}: 'Question' must be a string")
    ans = q["Answer"]
    if not isinstance(ans, str):
        raise MmadError(f"{where}: 'Answer' must be a letter string like \"A\", got {type(ans).__name__}")
    if ans not in opts:
        raise MmadError(f"{where}: answer {ans!r} is not among the options {sorted(opts)}; fix 'Answer'")
    qtype = q.get("type", "")
    if not isinstance(qtype, str) or not qtype:
        raise MmadError(f"{where}: 'type' must be one of {', '.join(QUESTION_TYPES)}")
    if qtype not in QUESTION_TYPES:  # an unknown type would be left out of every score table silently
        raise MmadError(f"{where}: type {qtype!r} is not one of {', '.join(QUESTION_TYPES)}; fix 'type'")
    return Question(q["Question"], dict(opts), ans, qtype, i, bool(q.get("annotation", False)))


def parse_samples(raw, path: Path) -> list[Sample]:
    if not isinstance(raw, dict):
        raise MmadError(f"{path}: the question file must be a JSON object keyed by image path")
    if not raw:
        raise MmadError(f"{path}: the question file holds no images; pass the full mmad.json (or a non-empty subset)")
    samples = []
    for key, value in raw.items():
        if not isinstance(value, dict):
            raise MmadError(f"{path}: the value of image {key!r} must be an object with a 'conversation'")
        conv = _field(path, key, value, "conversation", list)
        mask = value.get("mask_path") or ""
        if not isinstance(mask, str):
            raise MmadError(f"{path}: image {key!r} field 'mask_path' must be a string")
        samples.append(
            Sample(
                key=key,
                questions=[parse_question(path, key, i, q) for i, q in enumerate(conv)],
                mask_path=mask,
                similar_templates=_paths(path, key, value, "similar_templates"),
                random_templates=_paths(path, key, value, "random_templates"),
            )
        )
    return samples


class Benchmark:
    """A data root and the question file that names images under it."""

    def __init__(self, root: str | Path, questions: str | Path | None = None, *, allow_outside: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MmadError(f"data root {self.root} is not a folder; pass --data with the folder holding the images")
        self.questions_file = Path(questions) if questions else self.root / "mmad.json"
        self.allow_outside = allow_outside
        self.samples = load_question_file(self.questions_file)
        self.by_key = {s.key: s for s in self.samples}

    # -- paths -----------------------------------------------------------
    def resolve(self, rel: str, *, field_name: str = "image") -> Path:
        """A path from the question file, kept inside the data root unless the user allows otherwise."""
        p = Path(rel)
        if not self.allow_outside and (p.is_absolute() or ".." in p.parts):
            raise MmadError(
                f"{self.questions_file}: {field_name} path {rel!r} leaves the data root; "
                "use paths relative to --data (or pass --allow-outside-paths if you trust the file)"
            )
        return p if p.is_absolute() else self.root / p

    def template_path(self, sample: Sample, rel: str) -> Path:
        # MMAD stores templates from the data root; some files store them per category folder.
        direct = self.resolve(rel, field_name="template")
        if direct.exists():
            return direct
        return self.resolve(f"{sample.dataset}/{sample.category}/{rel}", field_name="template")

    def mask_file(self, sample: Sample) -> Path | None:
        if not sample.mask_path:
            return None
        return self.resolve(f"{sample.dataset}/{sample.category}/{sample.mask_path}", field_name="mask")

    # -- loading ---------------------------------------------------------
    def load_image(self, path: Path) -> Image.Image:
        return load_rgb(path)

    def load_mask(self, sample: Sample) -> np.ndarray | None:
        path = self.mask_file(sample)
        if path is None:
            return None
        mask = load_mask(path)
        with Image.open(self.resolve(sample.key)) as im:  # header only
            w, h = im.size
        if mask.shape != (h, w):
            raise MmadError(
                f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but image {sample.key!r} is {w}x{h}; "
                "resize the mask to the image size (nearest neighbour) or fix 'mask_path'"
            )
        return mask

    # -- selection -------------------------------------------------------
    def select(
        self,
        *,
        datasets: Iterable[str] | None = None,
        categories: Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        limit: int | None = None,
        subset: int | None = None,
        seed: int = 0,
    ) -> list[tuple[Sample, Question]]:
        """Questions to ask, in file order (a seeded random subset when `subset` is given).

        `limit` takes the first N questions of the images in a stratified order (see
        `stratified`), so a small limit still holds normal and defective images of every dataset.
        """
        ds, cats = (set(x) if x else None for x in (datasets, categories))
        tps = {question_type(t) for t in types} if types else None
        items = []
        for s in self.samples:
            if ds and s.dataset not in ds:
                continue
            if cats and s.category not in cats and f"{s.dataset}/{s.category}" not in cats:
                continue
            for q in s.questions:
                if tps and q.type not in tps:
                    continue
                items.append((s, q))
        if subset is not None and subset < len(items):
            picked = sorted(random.Random(seed).sample(range(len(items)), subset))
            items = [items[i] for i in picked]
        if limit is not None:
            if limit < 1:
                raise MmadError(f"--limit {limit}: give a positive number of questions")
            items = stratified(items)[:limit]
        return items


def stratified(items: list[tuple["Sample", "Question"]]) -> list[tuple["Sample", "Question"]]:
    """The same questions, image by image (each image's questions together, in file order), the
    images in turn: each dataset in turn, within it each (category, normal/defective) group in turn.
    A prefix of this order is what `--limit` takes; a longer limit extends a shorter one's prefix."""
    by_image: dict[str, list] = {}
    for s, q in items:
        by_image.setdefault(s.key, []).append((s, q))
    groups: dict[str, dict[tuple, list]] = {}
    for key, qs in by_image.items():
        s = qs[0][0]
        groups.setdefault(s.dataset, {}).setdefault((s.category, not s.is_normal), []).append(qs)
    per_dataset = [_round_robin([g[k] for k in sorted(g)]) for g in groups.values()]
    return [item for image in _round_robin(per_dataset) for item in image]


def _round_robin(sequences: list[list]) -> list:
    out, i = [], 0
    while any(i < len(seq) for seq in sequences):
        out.extend(seq[i] for seq in sequences if i < len(seq))
        i += 1
    return out


def describe_selection(items: list[tuple["Sample", "Question"]]) -> str:
    """What a selection holds, e.g. '10 questions of 3 images (2 normal, 1 defective; VisA 3)'."""
    images: dict[str, Sample] = {}
    for s, _ in items:
        images.setdefault(s.key, s)
    normal = sum(s.is_normal for s in images.values())
    per_ds: dict[str, int] = {}
    for s in images.values():
        per_ds[s.dataset] = per_ds.get(s.dataset, 0) + 1
    return (
        f"{len(items)} questions of {len(images)} images ({normal} normal, {len(images) - normal} defective; "
        + ", ".join(f"{d} {n}" for d, n in per_ds.items())
        + ")"
    )


def load_question_file(path: Path) -> list[Sample]:
    if not path.is_file():
        raise MmadError(f"question file {path} not found; pass --questions FILE or put mmad.json in the data root")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as e:
        raise MmadError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix or regenerate the file") from None
    except UnicodeDecodeError:
        raise MmadError(f"{path}: not UTF-8 text; save the question file as UTF-8 JSON") from None
    except RecursionError:
        raise MmadError(f"{path}: nested too deeply to be a question file; fix or regenerate the file") from None
    except OSError as e:
        raise MmadError(f"question file {path} cannot be read ({e.strerror}); check its permissions") from None
    return parse_samples(raw, path)
