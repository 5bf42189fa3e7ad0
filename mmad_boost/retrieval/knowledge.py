"""Domain knowledge per (dataset, category): the shipped TOML format, its validator, MMAD's importer.

One TOML file per category (documented in knowledge_base/README.md):

    dataset = "VisA"
    category = "fryum"
    normal = "..."            # normal characteristics (required)
    summary = "..."           # optional
    references = ["x.JPG"]    # optional normal images, relative to the file
    [[defect]]
    name = "middle_breakage"
    description = "..."

MMAD's `domain_knowledge.json` is imported verbatim (entries kept in file order) so that oracle
mode reproduces MMAD's prompt text exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import read_toml
from ..errors import MmadError

# MMAD's question files name MVTec AD two ways; its knowledge file uses `MVTec` (protocol §2).
DATASET_ALIASES = {"MVTec-AD": "MVTec", "DS-MVTec": "MVTec"}
DEFAULT_BUDGET = 6000  # characters of knowledge put into a prompt (MMAD's longest category is ~5.5k)


def knowledge_dataset(name: str | None) -> str | None:
    return DATASET_ALIASES.get(name, name) if name else name


@dataclass(frozen=True)
class Entry:
    name: str  # "good", a defect type, or "combined"/"summary"
    kind: str  # "normal" | "defect" | "summary"
    text: str


@dataclass
class CategoryKnowledge:
    dataset: str
    category: str
    entries: list[Entry]
    references: list[Path] = field(default_factory=list)
    verbatim: bool = False  # MMAD's text: oracle joins entries as MMAD did
    source: str = ""
    title: str = ""

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.category}"

    @property
    def normal(self) -> str:
        return "\n".join(e.text for e in self.entries if e.kind == "normal")

    @property
    def defects(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "defect"]

    def entry_text(self, e: Entry) -> str:
        """One entry as a prompt chunk (MMAD's entries already carry their own `<title>`)."""
        if self.verbatim:
            return e.text
        if e.kind == "normal":
            return f"<Normal characteristics>\n{e.text.strip()}"
        if e.kind == "summary":
            return f"<Summary of defects>\n{e.text.strip()}"
        return f"<Defect: {e.name.replace('_', ' ')}>\n{e.text.strip()}"

    def prompt_text(self, entries: list[Entry] | None = None, budget: int | None = DEFAULT_BUDGET) -> str:
        """Knowledge for the prompt. All entries: MMAD's newline join (verbatim sources) or normal + defects.

        `entries` (e.g. the top-k relevant ones) restricts the defects; the normal characteristics always
        lead. Entries that would exceed `budget` characters are left out whole, never cut mid-sentence.
        """
        if entries is None:
            if self.verbatim:
                text = "\n".join(e.text for e in self.entries)
                if budget is None or len(text) <= budget:
                    return text
            chosen = list(self.entries)
        else:
            chosen = [e for e in self.entries if e.kind == "normal"] + [e for e in entries if e.kind != "normal"]
        out: list[str] = [f"Product: {self.title}"] if self.title and not self.verbatim else []
        used = len(out[0]) + 1 if out else 0
        for e in chosen:
            chunk = self.entry_text(e)
            if budget is not None and used + len(chunk) + 1 > budget and out:
                continue
            out.append(chunk)
            used += len(chunk) + 1
        return "\n".join(out)

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "category": self.category,
            "verbatim": self.verbatim,
            "source": self.source,
            "entries": [{"name": e.name, "kind": e.kind, "text": e.text} for e in self.entries],
            "references": [str(p) for p in self.references],
            "title": self.title,
        }

    @classmethod
    def from_json(cls, d: dict) -> "CategoryKnowledge":
        return cls(
            d["dataset"],
            d["category"],
            [Entry(**e) for e in d["entries"]],
            [Path(p) for p in d.get("references", [])],
            bool(d.get("verbatim")),
            d.get("source", ""),
            d.get("title", ""),
        )


class KnowledgeSet:
    """All categories known to a retriever, addressable by (dataset, category) or category alone."""

    def __init__(self, categories: list[CategoryKnowledge]):
        self.categories: dict[str, CategoryKnowledge] = {}
        for c in categories:
            if c.key in self.categories:
                raise MmadError(f"{c.source or c.key}: category {c.key} is defined twice; keep one file per category")
            self.categories[c.key] = c

    def __len__(self) -> int:
        return len(self.categories)

    def __iter__(self):
        return iter(self.categories.values())

    def keys(self) -> list[str]:
        return list(self.categories)

    def find(self, category: str, dataset: str | None = None) -> CategoryKnowledge | None:
        """Look up `category` (or `DATASET/category`); the dataset disambiguates names used twice."""
        if "/" in category and dataset is None:
            dataset, category = category.split("/", 1)
        ds = knowledge_dataset(dataset)
        if ds and f"{ds}/{category}" in self.categories:
            return self.categories[f"{ds}/{category}"]
        hits = [c for c in self.categories.values() if c.category == category and (not ds or c.dataset == ds)]
        if not hits and ds:  # a dataset not in the knowledge (e.g. a custom name): match the category alone
            hits = [c for c in self.categories.values() if c.category == category]
        return hits[0] if len(hits) == 1 else None

    def merged(self, other: "KnowledgeSet") -> "KnowledgeSet":
        """`other` wins where both define a category."""
        cats = dict(self.categories)
        cats.update(other.categories)
        return KnowledgeSet(list(cats.values()))


def import_mmad_knowledge(path: str | Path) -> KnowledgeSet:
    """MMAD's domain_knowledge.json: {dataset: {category: {entry: text}}}, kept verbatim and in order."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MmadError(f"{path}: file not found; pass MMAD's domain_knowledge.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MmadError(f"{path}: not valid JSON ({e}); pass MMAD's domain_knowledge.json") from None
    if not isinstance(data, dict):
        raise MmadError(f"{path}: expected {{dataset: {{category: {{entry: text}}}}}} (MMAD's domain_knowledge.json)")
    cats = []
    for ds, by_cat in data.items():
        if not isinstance(by_cat, dict):
            raise MmadError(f"{path}: dataset {ds!r} must map category names to entries")
        for cat, entries in by_cat.items():
            if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
                raise MmadError(f"{path}: {ds}/{cat} must map entry names to texts")
            kinds = {"good": "normal", "combined": "summary"}
            items = [Entry(k, kinds.get(k, "defect"), v) for k, v in entries.items()]
            cats.append(CategoryKnowledge(knowledge_dataset(ds), cat, items, verbatim=True, source=str(path)))
    return KnowledgeSet(cats)


def _need_str(path: Path, d: dict, key: str, required: bool = True) -> str | None:
    v = d.get(key)
    if v is None:
        if required:
            raise MmadError(f"{path}: field {key!r} is missing; add it (format: knowledge_base/README.md)")
        return None
    if not isinstance(v, str) or not v.strip():
        raise MmadError(f"{path}: field {key!r} must be a non-empty string")
    return v


def load_category_file(path: str | Path) -> CategoryKnowledge:
    path = Path(path)
    d = read_toml(path, "knowledge_base/README.md")
    known = {"dataset", "category", "normal", "summary", "references", "defect", "title", "draft"}
    extra = sorted(set(d) - known)
    if extra:
        raise MmadError(f"{path}: unknown field(s) {', '.join(extra)}; allowed: {', '.join(sorted(known))}")
    if "draft" in d and not isinstance(d["draft"], dict):  # provenance of `kb draft` (kb_draft.py); deleted on review
        raise MmadError(
            f"{path}: 'draft' must be the [draft] table written by `mmad-boost kb draft` (model, date, images); delete it once the text is reviewed"
        )
    dataset, category = _need_str(path, d, "dataset"), _need_str(path, d, "category")
    entries = [Entry("good", "normal", _need_str(path, d, "normal"))]
    defects = d.get("defect", [])
    if not isinstance(defects, list):
        raise MmadError(f"{path}: 'defect' must be a list of [[defect]] tables with name and description")
    names = set()
    for i, t in enumerate(defects):
        where = path.with_name(f"{path.name} [[defect]] #{i + 1}")
        if not isinstance(t, dict) or set(t) - {"name", "description"}:
            raise MmadError(
                f"{where}: each [[defect]] holds exactly 'name' and 'description' (top-level fields such as summary must come before the first [[defect]])"
            )
        name, desc = _need_str(where, t, "name"), _need_str(where, t, "description")
        if name in names:
            raise MmadError(f"{where}: defect {name!r} is listed twice; merge the two")
        names.add(name)
        entries.append(Entry(name, "defect", desc))
    summary = _need_str(path, d, "summary", required=False)
    if summary:
        entries.append(Entry("summary", "summary", summary))
    refs = d.get("references", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise MmadError(f"{path}: 'references' must be a list of image paths relative to the file")
    ref_paths = [(path.parent / r).resolve() for r in refs]
    for r in ref_paths:
        if not r.is_file():
            raise MmadError(f"{path}: reference image {r} not found; fix the path (relative to the file) or remove it")
    title = _need_str(path, d, "title", required=False) or ""
    return CategoryKnowledge(dataset, category, entries, ref_paths, verbatim=False, source=str(path), title=title.strip())


def load_knowledge(path: str | Path) -> KnowledgeSet:
    """A category TOML file, a folder of them (searched recursively), or MMAD's JSON file."""
    path = Path(path)
    if not path.exists():
        raise MmadError(f"{path}: knowledge path not found; pass a knowledge folder, a .toml file or MMAD's domain_knowledge.json")
    if path.is_file():
        if path.suffix == ".json":
            return import_mmad_knowledge(path)
        return KnowledgeSet([load_category_file(path)])
    files = sorted(path.rglob("*.toml"))
    if not files:
        raise MmadError(f"{path}: no category .toml files in this folder; see knowledge_base/README.md for the format")
    return KnowledgeSet([load_category_file(f) for f in files])
