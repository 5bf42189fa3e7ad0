"""Where the expert boost gets the expert for an image: one provider per BoostedModel.

- `FixedExpert`: one expert object (or one fitted folder) for every image;
- `ExpertCatalog`: a folder of fitted experts, one per DATASET/CATEGORY (like the repo's `experts/`);
- `FitOnDemand`: an expert by name, fitted on the category's normal images the first time the
  category is seen (experts/fitting.py), through the one process-wide cache `FITTED`.

Fitting takes seconds to minutes, so a fitted expert is shared by every BoostedModel of the process
(same name, options, holdout, rate and data) and saved under the cache folder for reruns.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import MmadError
from ..protocol.prompt import Query


class OncePerKey:
    """A dict whose values are built once per key, even when threads ask together (a lock per key)."""

    def __init__(self) -> None:
        self._values: dict = {}
        self._locks: dict = {}
        self._guard = threading.Lock()

    def __getstate__(self):  # locks do not pickle (Ray ships models with cloudpickle): new ones where it lands
        with self._guard:
            return {"values": dict(self._values)}

    def __setstate__(self, state):
        self.__init__()
        self._values.update(state["values"])

    def lock(self, key) -> threading.Lock:
        """The key's lock: hold it to read and replace the key's value in one step (`peek`, `put`)."""
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def get(self, key, build: Callable[[], Any]):
        with self.lock(key):
            if key not in self._values:
                self._values[key] = build()
            return self._values[key]

    def peek(self, key):
        return self._values.get(key)

    def put(self, key, value) -> None:
        self._values[key] = value

    def keys(self) -> list:
        with self._guard:
            return list(self._values)


FITTED = OncePerKey()  # (expert name, options, holdout, rate, data root, dataset, category) -> fitted expert


def with_false_marks(expert, false_marks: float | None):
    """A loaded or cached expert moved to the target rate (from its stored normal scores)."""
    if false_marks is not None and getattr(expert, "normals", None) is not None and expert.normals.false_marks != false_marks:
        expert.set_false_marks(false_marks)
    return expert


class FixedExpert:
    def __init__(self, expert, source: str, false_marks: float | None = None):
        self.expert, self.source, self.name = with_false_marks(expert, false_marks), source, None

    def check(self) -> None:
        pass

    def state_id(self) -> str | None:
        sid = getattr(self.expert, "state_id", None)
        return str(sid) if sid else None

    def for_query(self, q: Query, category_hint: tuple | None, timings: dict):
        return self.expert


class ExpertCatalog:
    """From a folder of fitted experts laid out DATASET/CATEGORY/expert.json (or flat DATASET-CATEGORY/)."""

    def __init__(self, folder: Path, false_marks: float | None = None):
        self.folder, self.false_marks = folder, false_marks
        self.source, self.name = f"folder:{folder}", None
        self._loaded = OncePerKey()

    def check(self) -> None:
        pass

    def state_id(self) -> None:
        return None

    def categories(self) -> list:
        return self._loaded.keys()

    def for_query(self, q: Query, category_hint: tuple | None, timings: dict):
        info = q.info
        key = (info.dataset, info.category) if info and info.category else category_hint
        if key is None:
            raise MmadError(
                f"{self.folder}: holds one expert per category, and this image's category is unknown; use it inside a benchmark or turn on rag with image retrieval"
            )
        return self._loaded.get(key, lambda: self._load(key))

    def _load(self, key: tuple):
        from ..experts import load_expert

        ds, cat = str(key[0] or "").lower(), key[1].lower()
        names = {cat, f"{ds}-{cat}", f"{ds}_{cat}"}
        found = [d for d in ([self.folder / key[0] / key[1]] if key[0] else []) if (d / "expert.json").is_file()]
        found += sorted(p.parent for p in self.folder.glob(f"*/{key[1]}/expert.json"))
        found += sorted(p.parent for p in self.folder.glob("*/expert.json") if p.parent.name.lower() in names)
        if not found:
            raise MmadError(
                f"{self.folder}: no fitted expert for {key[0]}/{key[1]}; fit one with `mmad-boost expert fit --category {key[0]}/{key[1]} --out {self.folder / str(key[0]) / key[1]}`"
            )
        return with_false_marks(load_expert(found[0]), self.false_marks)


class FitOnDemand:
    """An expert by name; per category fitted on ROOT/DATASET/CATEGORY/train/good and calibrated.

    Both modes get the same fitted and calibrated expert (faithful rendering ignores the
    calibration), so runs share it: in memory within a process (`FITTED`), on disk under the cache
    folder (`cache_dir`, else `<run_dir>/experts`).
    """

    def __init__(self, name: str, options: dict, *, calibrated: bool, holdout: float | None, false_marks: float | None, cache_dir: Path | None):
        self.name, self.source, self.options = name, name, options
        self.calibrated, self.holdout, self.false_marks, self.cache_dir = calibrated, holdout, false_marks, cache_dir
        self._mine = OncePerKey()  # (dataset, category) -> this model's expert for it
        self._instances = OncePerKey()  # name -> an unfitted instance

    def state_id(self) -> None:
        return None

    def check(self) -> None:
        """A known expert name, before a run writes anything."""
        self._unfitted(self.name)

    def categories(self) -> list:
        return self._mine.keys()

    def _unfitted(self, name: str):  # one instance, to read its needs (or serve every image when it learns nothing)
        from ..experts import create_expert

        return self._instances.get(name, lambda: create_expert(name, **self.options))

    def for_query(self, q: Query, category_hint: tuple | None, timings: dict):
        from ..experts.base import learns_from_normals

        probe = self._unfitted(self.name)
        info = q.info
        root = info.data_root if info else None
        needs_fit = learns_from_normals(probe)
        if not needs_fit and (not self.calibrated or getattr(probe, "image_threshold", None) is not None):
            return probe  # gt, or a few-shot expert in faithful mode: one instance serves every category
        if info and info.category and root:

            def fit():
                t0 = time.perf_counter()
                expert = self._fit_category(Path(root), info.dataset, info.category, info.run_dir)
                timings["expert_fit_s"] = round(time.perf_counter() - t0, 4)
                return expert

            return self._mine.get((info.dataset, info.category), fit)
        if needs_fit and q.templates and self.name == "patchcore":
            return self._unfitted("patchcore-fewshot")  # by hand: fit on the templates given, as MMAD's PatchCore did
        raise MmadError(
            f"expert {self.name!r} must be fitted on normal images of the category"
            + (" and calibrated" if self.calibrated else "")
            + ": run it inside a benchmark (mmad-boost eval --expert), or pass a folder from `mmad-boost expert fit`"
        )

    def _fit_category(self, root: Path, dataset: str, category: str, run_dir: str | None):
        from ..experts import load_expert

        key = (self.name, repr(sorted(self.options.items())), self.holdout, self.false_marks, str(root.resolve()), dataset, category)
        with FITTED.lock(key):
            cache_root = self.cache_dir or (Path(run_dir) / "experts" if run_dir else None)
            cache = cache_root / _safe(self.source) / dataset / category if cache_root else None
            cached = cache is not None and (cache / "expert.json").is_file()
            expert = FITTED.peek(key) or (load_expert(cache) if cached else None)
            if expert is None or (self.calibrated and getattr(expert, "image_threshold", None) is None):
                expert, cached = self._fit_new(root, dataset, category), False
            with_false_marks(expert, self.false_marks)
            if cache is not None and not cached and callable(getattr(expert, "save", None)):
                expert.save(cache)  # a resumed run in a new process loads it instead of refitting
            FITTED.put(key, expert)
            return expert

    def _fit_new(self, root: Path, dataset: str, category: str):
        from ..experts import create_expert
        from ..experts.base import DEFAULT_FALSE_MARKS
        from ..experts.cli import Progress
        from ..experts.fitting import fit_on_folder, normal_folder
        from ..protocol.image_files import list_images
        from ..running.progress import stage

        folder = normal_folder(root, dataset, category)
        what = f"fitting expert {self.name} for {dataset}/{category} (once per category; kept for reruns)"
        with stage(what, kind=f"fit:{self.name}", units=len(list_images(folder)), unit="normal images"):
            return fit_on_folder(
                create_expert(self.name, **self.options), folder, holdout=self.holdout, false_marks=self.false_marks or DEFAULT_FALSE_MARKS, progress=Progress()
            ).expert


def make_provider(expert: Any, options: dict, *, calibrated: bool, holdout: float | None, false_marks: float | None, cache_dir: Path | None):
    """The provider for BoostedModel's `expert=`: None, a name, an expert object, a fitted folder or a folder of them."""
    if expert is None or expert is False or expert == "":
        return None
    if isinstance(expert, (str, os.PathLike)):
        path = Path(expert)
        if path.is_dir() and not (path / "expert.json").is_file() and (any(path.glob("*/*/expert.json")) or any(path.glob("*/expert.json"))):
            return ExpertCatalog(path, false_marks)
        if path.is_dir():
            from ..experts import load_expert

            return FixedExpert(load_expert(path), f"folder:{path}", false_marks)
        name = str(expert)
        if any(sep in name for sep in ("/", "\\")):
            raise MmadError(f"expert folder {name} not found; fit one with `mmad-boost expert fit` or give an expert name")
        return FitOnDemand(name, options, calibrated=calibrated, holdout=holdout, false_marks=false_marks, cache_dir=cache_dir)
    from ..experts.base import AnomalyExpert

    if isinstance(expert, AnomalyExpert):
        return FixedExpert(expert, getattr(expert, "name", None) or type(expert).__name__, false_marks)
    raise MmadError(f"expert={expert!r}: use a name (patchcore, gt, anomalyclip, anomalib:<Model>), an expert object or a fitted expert folder")


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
