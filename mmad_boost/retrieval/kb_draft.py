"""`mmad-boost kb draft`: knowledge drafted by a model from a user's own images, for a person to review.

For each category of a benchmark the model sees a few normal images and is asked what a normal
item looks like; then, for each defect type (the Defect Classification answer where the question
file has one, else the image's folder), a normal image and a few defective ones with their masks
outlined in red, and is asked how that defect looks. The answers become knowledge files in the
shipped format (knowledge_base/README.md) with a `[draft]` table: the model, the images used and
the date. `kb build` accepts drafts; a person reviews the text and deletes the `[draft]` table.
A file without `[draft]` (reviewed, or written by hand) is never overwritten; a draft is redrafted.
"""

from __future__ import annotations

import re
import sys
import tomllib
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import MmadError
from ..protocol.image_files import list_images
from ..protocol.prompt import Prompt

NORMAL_ASK = (
    "You are helping write an inspection guide. The {n} images above show normal, defect-free {what} from a "
    "production line. Describe in 3 to 5 sentences what a normal item looks like (shape, colour, surface, texture, "
    "layout) and which differences between the images are normal variation (position, lighting, count). "
    "Reply with the description only."
)
DEFECT_ASK = (
    'The first image above shows a normal {what}. The {n} images after it show the defect "{name}"{marked}. '
    "Describe in 2 or 3 sentences how this defect looks and where it appears, so that an inspector can recognise it "
    "and tell it from normal variation. Reply with the description only."
)
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


# -- safety ------------------------------------------------------------------
def is_draft(path: Path) -> bool:
    """True when the file is a draft `kb draft` may replace; a reviewed, hand-written or unreadable file is not."""
    try:
        return isinstance(tomllib.loads(path.read_text(encoding="utf-8")).get("draft"), dict)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def toml_text(text: str) -> str:
    """A TOML multi-line basic string holding `text` (control characters dropped, quotes and backslashes escaped)."""
    clean = _BAD_CHARS.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    return '"""\n' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"""'


def _quoted(s: str) -> str:
    return '"' + _BAD_CHARS.sub("", s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("\t", " ") + '"'


def category_toml(dataset: str, category: str, normal: str, defects: list[tuple[str, str]], provenance: dict) -> str:
    lines = [
        "# DRAFT written by `mmad-boost kb draft`: a model's description of these images, not yet reviewed.",
        "# Check every sentence against the product, correct it, then delete the [draft] table to mark the file reviewed",
        "# (`kb draft` never overwrites a file without [draft]).",
        f"dataset = {_quoted(dataset)}",
        f"category = {_quoted(category)}",
        f"normal = {toml_text(normal)}",
        "",
        "[draft]",
        f"model = {_quoted(provenance['model'])}",
        f"date = {_quoted(provenance['date'])}",
        "normal_images = [" + ", ".join(_quoted(k) for k in provenance["normal_images"]) + "]",
        "defect_images = [" + ", ".join(_quoted(k) for k in provenance["defect_images"]) + "]",
    ]
    for name, desc in defects:
        lines += ["", "[[defect]]", f"name = {_quoted(name)}", f"description = {toml_text(desc)}"]
    return "\n".join(lines) + "\n"


# -- what the model is shown ------------------------------------------------------
def outline_mask(image: Image.Image, mask: np.ndarray | None) -> Image.Image:
    """The image with the mask's outline drawn in red (the image itself where there is no mask)."""
    if mask is None or not mask.any():
        return image
    import cv2

    arr = np.array(image.convert("RGB"))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(arr, contours, -1, (255, 0, 0), max(2, min(arr.shape[:2]) // 150))
    return Image.fromarray(arr)


def _defect_label(sample) -> str:
    for q in sample.questions:
        if q.type == "Defect Classification" and q.answer in q.options:
            return q.options[q.answer].strip()
    return sample.label.replace("_", " ")


def category_plan(bench, dataset: str, category: str, normals: int, per_defect: int) -> tuple[list[Path], dict[str, list]]:
    """(normal image files, {defect name: [samples]}) for one category."""
    train = bench.root / dataset / category / "train" / "good"
    files = list_images(train)[:normals]
    samples = [s for s in bench.samples if s.dataset == dataset and s.category == category]
    if not files:  # no training folder: the question file's normal images
        files = [bench.resolve(s.key) for s in samples if s.is_normal][:normals]
    if not files:
        raise MmadError(f"{train}: no normal images for {dataset}/{category}; add some to train/good (kb draft describes the normal look from them)")
    defects: dict[str, list] = {}
    for s in samples:
        if not s.is_normal:
            defects.setdefault(_defect_label(s), []).append(s)
    return files, {name: group[:per_defect] for name, group in sorted(defects.items())}


def _ask(model, images: list[Image.Image], text: str, where: str) -> str:
    response = model.generate(Prompt(parts=[p for im in images for p in (im, "\n")] + [text]))
    if not isinstance(response, str) or not response.strip():
        raise MmadError(f"{where}: the model gave an empty description; rerun, or try another --model")
    return response.strip()


def draft_category(bench, model, dataset: str, category: str, *, model_spec: str, normals: int = 3, per_defect: int = 2) -> str:
    from .knowledge import knowledge_dataset

    files, defects = category_plan(bench, dataset, category, normals, per_defect)
    what = f"{category.replace('_', ' ')} products"
    normal_images = [bench.load_image(f) for f in files]
    normal = _ask(model, normal_images, NORMAL_ASK.format(n=len(files), what=what), f"{dataset}/{category} normal look")
    written, used = [], []
    for name, group in defects.items():
        shown = []
        for s in group:
            mask = bench.load_mask(s) if s.mask_path else None
            shown.append(outline_mask(bench.load_image(bench.resolve(s.key)), mask))
            used.append(s.key)
        marked = ", outlined in red where it is" if any(s.mask_path for s in group) else ""
        text = DEFECT_ASK.format(n=len(group), what=category.replace("_", " "), name=name, marked=marked)
        written.append((name, _ask(model, [normal_images[0]] + shown, text, f"{dataset}/{category} defect {name!r}")))
    rel = [f.relative_to(bench.root).as_posix() if f.is_relative_to(bench.root) else f.name for f in files]
    provenance = {"model": model_spec, "date": date.today().isoformat(), "normal_images": rel, "defect_images": used}
    return category_toml(knowledge_dataset(dataset), category, normal, written, provenance)


def draft_knowledge(bench, model, out: Path, *, model_spec: str, normals: int = 3, per_defect: int = 2, log=print) -> dict:
    """One draft file per category under OUT/<dataset>/<category>.toml; reviewed files are kept. Returns {"written": [...], "kept": [...]}."""
    from ..atomic import write_text
    from .knowledge import load_category_file

    out = Path(out)
    cats = sorted({(s.dataset, s.category) for s in bench.samples})
    written, kept = [], []
    for dataset, category in cats:
        path = out / dataset / f"{category}.toml"
        if path.exists() and not is_draft(path):
            kept.append(path)
            log(f"kept {path}: reviewed (it has no [draft] table), so kb draft does not overwrite it")
            continue
        text = draft_category(bench, model, dataset, category, model_spec=model_spec, normals=normals, per_defect=per_defect)
        write_text(path, text)
        load_category_file(path)  # what kb build will read: a draft that does not load is a bug here, not the user's
        written.append(path)
        log(f"drafted {path}")
    return {"written": written, "kept": kept}


def add_draft_parser(kbs) -> None:
    from ..cli import add_model_arguments

    d = kbs.add_parser("draft", help="draft knowledge files from your images with a model (normal look, each defect type), for review")
    d.add_argument("--data", required=True, help="MMAD-layout data root with its question file (normals from <Dataset>/<category>/train/good)")
    d.add_argument("--questions", help="question file (default DATA/mmad.json); defect types from its Defect Classification answers, else image folders")
    add_model_arguments(d, "model SPEC that sees images, e.g. openai:gpt-4o (with --base-url for a local server)")
    d.add_argument("--normals", type=int, default=3, help="normal images shown per category (default 3)")
    d.add_argument("--per-defect", type=int, default=2, help="defective images shown per defect type, masks outlined in red where they exist (default 2)")
    d.add_argument("--out", required=True, help="knowledge folder to write (<Dataset>/<category>.toml); files without [draft] are never overwritten")
    d.set_defaults(func=cmd_draft)


def cmd_draft(args) -> int:
    from ..cli import _model_options
    from ..protocol.data import Benchmark
    from ..models import create_model

    for flag, v in (("--normals", args.normals), ("--per-defect", args.per_defect)):
        if v < 1:
            raise MmadError(f"{flag} {v}: give at least 1 image")
    bench = Benchmark(args.data, args.questions)
    model = create_model(args.model, **_model_options(args))
    try:
        res = draft_knowledge(
            bench, model, Path(args.out), model_spec=args.model, normals=args.normals, per_defect=args.per_defect, log=lambda m: print(m, file=sys.stderr)
        )
    finally:
        close = getattr(model, "close", None)
        if callable(close):
            close()
    print(
        f"{len(res['written'])} drafts written, {len(res['kept'])} reviewed files kept in {args.out}; review them, then "
        f"mmad-boost kb build --data {args.data} --knowledge {args.out} --out KB"
    )
    return 0
