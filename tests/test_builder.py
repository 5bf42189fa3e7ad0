"""build-bench on real VisA images (VisA layout and rearranged into MVTec layout).

Every generated answer is checked against the source labels and masks with code independent of
the builder (its own CSV reading and 3x3 grid arithmetic).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import VISA
from PIL import Image

from mmad_boost.building.builder import build_benchmark
from mmad_boost.protocol.data import Benchmark

SAMPLE = VISA  # the bundled sample, in VisA's own layout
GRID = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]


# -- independent readers of the source truth ----------------------------------------
def visa_truth(root: Path) -> dict[str, dict]:
    """MMAD key -> {labels, mask, category, split} straight from VisA's CSV files."""
    truth = {}
    with open(root / "split_csv" / "1cls_subset.csv", newline="") as f:
        split = list(csv.DictReader(f))
    anno = {}
    for cat in {r["object"] for r in split}:
        with open(root / cat / "image_anno.csv", newline="") as f:
            anno.update({r["image"]: r["label"] for r in csv.DictReader(f)})
    for r in split:
        name = Path(r["image"]).name
        normal = r["label"] == "normal"
        folder = "good" if normal else "bad"
        labels = [] if normal else [x.strip() for x in anno[r["image"]].split(",")]
        truth[f"VisA/{r['object']}/{r['split']}/{folder}/{name}"] = {
            "labels": labels,
            "mask": root / r["mask"] if r["mask"] else None,
            "category": r["object"],
            "split": r["split"],
            "source": root / r["image"],
        }
    return truth


def cells_of(text: str) -> set[str]:
    parts = text.replace(" and ", ", ").split(", ")
    assert all(p in GRID for p in parts), text
    return set(parts)


def shares(mask_file: Path) -> dict[str, float]:
    m = np.asarray(Image.open(mask_file)) > 0
    h, w = m.shape[:2]
    out = {}
    for r in range(3):
        for c in range(3):
            out[GRID[3 * r + c]] = m[r * h // 3 : (r + 1) * h // 3, c * w // 3 : (c + 1) * w // 3].sum() / m.sum()
    return out


def check_answers(qfile: Path, truth: dict[str, dict], humanize=lambda s: s) -> dict[str, int]:
    data = json.loads(qfile.read_text())
    test_keys = {k for k, t in truth.items() if t["split"] == "test"}
    assert set(data) == test_keys
    categories = {t["category"] for t in truth.values()}
    seen = {}
    for key, entry in data.items():
        t = truth[key]
        for q in entry["conversation"]:
            seen[q["type"]] = seen.get(q["type"], 0) + 1
            answer = q["Options"][q["Answer"]]
            others = [v for k, v in q["Options"].items() if k != q["Answer"]]
            assert len(set(q["Options"].values())) == len(q["Options"])
            if q["type"] == "Anomaly Detection":
                assert answer == ("No" if not t["labels"] else "Yes") and others == ["Yes" if not t["labels"] else "No"]
            elif q["type"] == "Object Classification":
                assert answer == t["category"]
                assert t["category"] not in others and (categories - {t["category"]}) <= set(others)
            elif q["type"] == "Defect Classification":
                labels = [humanize(x) for x in t["labels"]]
                assert answer == labels[0], (key, answer, labels)
                assert not set(others) & set(labels), (key, others, labels)
            elif q["type"] == "Defect Localization":
                sh = shares(t["mask"])
                correct = cells_of(answer)
                assert all(sh[c] >= 0.15 for c in correct), (key, answer, sh)
                assert {c for c, s in sh.items() if s >= 0.15} == correct
                for o in others:
                    assert all(sh[c] == 0 for c in cells_of(o)), (key, o, sh)
            else:
                raise AssertionError(q["type"])
        if t["labels"]:
            assert entry["mask_path"]
            copied = qfile.parent / key.split("/")[0] / t["category"] / entry["mask_path"]
            assert copied.read_bytes() == t["mask"].read_bytes()
            assert {"Defect Classification"} <= {q["type"] for q in entry["conversation"]}
        else:
            assert entry["mask_path"] == ""
            assert [q["type"] for q in entry["conversation"]] == ["Anomaly Detection", "Object Classification"]
        trains = {k for k, tt in truth.items() if tt["split"] == "train" and tt["category"] == t["category"]}
        for field in ("similar_templates", "random_templates"):
            assert len(entry[field]) == min(8, len(trains)) and set(entry[field]) <= trains
            assert len(set(entry[field])) == len(entry[field])
            for tk in entry[field]:
                assert (qfile.parent / tk).read_bytes() == truth[tk]["source"].read_bytes()
        assert (qfile.parent / key).read_bytes() == t["source"].read_bytes()
    return seen


# -- VisA's layout (the bundled sample) -------------------------------------------------
@pytest.fixture(scope="module")
def visa_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("visa") / "bench"
    summary = build_benchmark(VISA, out, layout="visa", seed=3)
    return summary


@pytest.mark.slow
def test_visa_originals_every_answer_matches_labels_and_masks(visa_build):
    truth = visa_truth(VISA)
    seen = check_answers(visa_build.questions_file, truth)
    n_test = sum(t["split"] == "test" for t in truth.values())
    n_bad = sum(bool(t["labels"]) for t in truth.values())
    assert seen["Anomaly Detection"] == seen["Object Classification"] == n_test == 40
    assert seen["Defect Classification"] == n_bad == 30
    # localisation is skipped only where the defect spreads over more than three cells or too few
    # untouched cells are left to make distractors of the same size
    assert seen["Defect Localization"] + len(visa_build.no_localization) == n_bad
    for key in visa_build.no_localization:
        sh = shares(truth[key]["mask"]).values()
        covered, untouched = sum(s >= 0.15 for s in sh), sum(s == 0 for s in sh)
        assert covered > 3 or untouched < covered, (key, list(sh))
    assert visa_build.categories == ["capsules", "fryum"]


@pytest.mark.slow
def test_visa_build_loads_and_scores_with_the_harness(visa_build, tmp_path):
    from mmad_boost.models import create_model
    from mmad_boost.running.records import run_records
    from mmad_boost.running.runner import Runner
    from mmad_boost.protocol.scoring import score_records

    bench = Benchmark(visa_build.out)
    items = bench.select()
    assert len(items) == sum(visa_build.questions.values())
    s = Runner(bench, create_model("baseline:random"), tmp_path / "run", progress=False).run(items)
    assert s.asked == len(items) and s.errors == 0
    row = score_records(run_records(tmp_path / "run")).rows["VisA"]
    for col in ("Anomaly Detection", "Defect Classification", "Defect Localization", "Object Classification"):
        assert 0 <= row[col] <= 100
    mask = bench.load_mask(bench.by_key["VisA/fryum/test/bad/000.JPG"])
    with Image.open(VISA / "fryum" / "Data" / "Images" / "Anomaly" / "000.JPG") as im:
        assert mask.shape == im.size[::-1] and mask.any()  # the mask at its image's size


# -- MVTec layout made from the bundled sample ---------------------------------------------
def make_mvtec_tree(dst: Path, src: Path = SAMPLE, n_train: int = 20, n_test: int | None = None) -> dict[str, dict]:
    """n_train normal training images and n_test normal + n_test defective test images per category.

    Rearranges VisA files into <cat>/train/good, <cat>/test/<defect>, <cat>/ground_truth/<defect>.

    Multi-label images go to a folder named after all labels (`bubble+discolor`). Returns the truth
    keyed by the MMAD key the builder should produce (dataset MVTec-AD).
    """
    truth = {}
    for key, t in visa_truth(src).items():
        cat, split = t["category"], t["split"]
        name = t["source"].name
        if split == "train":
            if sum(1 for k in truth if k.startswith(f"MVTec-AD/{cat}/train/")) >= n_train:
                continue
            folder = "good"
        else:
            folder = "+".join(x.replace(" ", "_") for x in t["labels"]) if t["labels"] else "good"
            kind = lambda k: k.startswith(f"MVTec-AD/{cat}/test/") and (k.split("/")[3] == "good") == (folder == "good")  # noqa: E731
            if n_test is not None and sum(1 for k in truth if kind(k)) >= n_test:
                continue
        target = dst / cat / split / folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(t["source"], target)
        entry = dict(t, source=target, labels=[folder] if t["labels"] else [])
        if t["mask"]:
            mask = dst / cat / "ground_truth" / folder / f"{Path(name).stem}_mask.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(t["mask"], mask)
            entry["mask"] = mask
        truth[f"MVTec-AD/{cat}/{split}/{folder}/{name}"] = entry
    return truth


def test_mvtec_layout_every_answer_matches(tmp_path):
    truth = make_mvtec_tree(tmp_path / "src")
    summary = build_benchmark(tmp_path / "src", tmp_path / "out", layout="mvtec")
    seen = check_answers(summary.questions_file, truth, humanize=lambda s: s.replace("_", " "))
    assert seen["Anomaly Detection"] == 40 and seen["Defect Classification"] == 30
    data = json.loads(summary.questions_file.read_text())
    dc = next(q for q in data["MVTec-AD/capsules/test/bubble+discolor/030.JPG"]["conversation"] if q["type"] == "Defect Classification")
    assert dc["Options"][dc["Answer"]] == "bubble+discolor"


def test_similar_templates_find_a_duplicate_first(tmp_path):
    truth = make_mvtec_tree(tmp_path / "src", n_train=6, n_test=2)
    dup = tmp_path / "src" / "fryum" / "test" / "good" / "dup.JPG"
    shutil.copyfile(tmp_path / "src" / "fryum" / "train" / "good" / "003.JPG", dup)
    summary = build_benchmark(tmp_path / "src", tmp_path / "out", layout="mvtec", n_templates=4)
    entry = json.loads(summary.questions_file.read_text())["MVTec-AD/fryum/test/good/dup.JPG"]
    assert entry["similar_templates"][0] == "MVTec-AD/fryum/train/good/003.JPG"
    assert len(entry["similar_templates"]) == 4
    assert truth  # the tree is real


@pytest.mark.slow
def test_similar_by_embedding_finds_a_duplicate_first(tmp_path):
    make_mvtec_tree(tmp_path / "src", n_train=5, n_test=1)
    shutil.copyfile(tmp_path / "src" / "capsules" / "train" / "good" / "004.JPG", tmp_path / "src" / "capsules" / "test" / "good" / "dup.JPG")
    summary = build_benchmark(tmp_path / "src", tmp_path / "out", layout="mvtec", similar_by="embedding")
    entry = json.loads(summary.questions_file.read_text())["MVTec-AD/capsules/test/good/dup.JPG"]
    assert entry["similar_templates"][0] == "MVTec-AD/capsules/train/good/004.JPG"


def test_seed_changes_option_order_but_not_answers(tmp_path):
    make_mvtec_tree(tmp_path / "src", n_train=3, n_test=6)
    a = json.loads(build_benchmark(tmp_path / "src", tmp_path / "a", layout="mvtec", seed=0).questions_file.read_text())
    b = json.loads(build_benchmark(tmp_path / "src", tmp_path / "b", layout="mvtec", seed=1).questions_file.read_text())
    a2 = json.loads(build_benchmark(tmp_path / "src", tmp_path / "a2", layout="mvtec", seed=0).questions_file.read_text())
    assert a == a2
    letters = lambda d: [q["Answer"] for e in d.values() for q in e["conversation"]]  # noqa: E731
    texts = lambda d: [q["Options"][q["Answer"]] for e in d.values() for q in e["conversation"]]  # noqa: E731
    assert letters(a) != letters(b) and texts(a) == texts(b)


def test_link_mode_symlinks_sources(tmp_path):
    make_mvtec_tree(tmp_path / "src", n_train=2, n_test=3)
    summary = build_benchmark(tmp_path / "src", tmp_path / "out", layout="mvtec", link=True, dataset_name="MyLine")
    key = next(iter(json.loads(summary.questions_file.read_text())))
    assert key.startswith("MyLine/") and (tmp_path / "out" / key).is_symlink()
    Benchmark(tmp_path / "out").load_image(tmp_path / "out" / key)
