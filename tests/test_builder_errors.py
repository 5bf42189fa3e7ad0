"""build-bench on malformed trees, the extra-questions hook, the CLI, and the question rules."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_builder import SAMPLE, make_mvtec_tree

from mmad_boost.building import question_gen as qg
from mmad_boost.building.builder import build_benchmark
from mmad_boost.cli import main
from mmad_boost.errors import MmadError
from mmad_boost.building.source_tree import SkippedWarning


def make_visa_tree(dst: Path, per_group: int = 2) -> Path:
    """A small VisA-layout copy of the bundled sample: per category, per_group rows of each split/label."""
    with open(SAMPLE / "split_csv" / "1cls_subset.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    kept, counts = [], {}
    for r in rows:
        group = (r["object"], r["split"], r["label"])
        if counts.get(group, 0) < per_group:
            counts[group] = counts.get(group, 0) + 1
            kept.append(r)
    for r in kept:
        for col in ("image", "mask"):
            if r[col]:
                (dst / r[col]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(SAMPLE / r[col], dst / r[col])
    for cat in {r["object"] for r in kept}:
        shutil.copyfile(SAMPLE / cat / "image_anno.csv", dst / cat / "image_anno.csv")
    (dst / "split_csv").mkdir(parents=True)
    with open(dst / "split_csv" / "1cls.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)
    return dst


@pytest.fixture
def mvtec(tmp_path):
    make_mvtec_tree(tmp_path / "src", n_train=2, n_test=2)
    return tmp_path / "src"


@pytest.fixture
def visa(tmp_path):
    return make_visa_tree(tmp_path / "visa")


def first_bad(root: Path, cat: str = "fryum") -> Path:
    return next(p for p in sorted((root / cat / "test").rglob("*.JPG")) if p.parent.name != "good")


# -- malformed trees -----------------------------------------------------------------
def test_small_visa_tree_builds(visa, tmp_path):
    s = build_benchmark(visa, tmp_path / "out", layout="visa")
    assert s.images == 8 and s.questions["Anomaly Detection"] == 8 and s.questions["Defect Classification"] == 4


def test_missing_mask_names_the_image_and_skip_bad_skips_it(mvtec, tmp_path):
    image = first_bad(mvtec)
    (mvtec / "fryum" / "ground_truth" / image.parent.name / f"{image.stem}_mask.png").unlink()
    with pytest.raises(MmadError, match=str(image)):
        build_benchmark(mvtec, tmp_path / "out", layout="mvtec")
    assert not (tmp_path / "out" / "mmad.json").exists()  # nothing half-written
    with pytest.warns(SkippedWarning, match="no mask"):
        s = build_benchmark(mvtec, tmp_path / "out", layout="mvtec", skip_bad=True)
    keys = json.loads(s.questions_file.read_text())
    assert f"MVTec-AD/fryum/test/{image.parent.name}/{image.name}" not in keys and len(keys) == 7
    assert len(s.skipped) == 1


def test_visa_missing_mask_and_missing_label(visa, tmp_path):
    mask = next((visa / "fryum" / "Data" / "Masks" / "Anomaly").iterdir())
    mask.unlink()
    with pytest.raises(MmadError, match=f"{mask.stem}.JPG.*no mask"):
        build_benchmark(visa, tmp_path / "out", layout="visa")
    anno = visa / "capsules" / "image_anno.csv"
    anno.write_text("image,label,mask\n")
    with pytest.warns(SkippedWarning):
        s = build_benchmark(visa, tmp_path / "out", layout="visa", skip_bad=True)
    assert s.images == 5  # fryum: 2 normal + 1 defective left; capsules: its 2 normal test images
    assert any("no defect label" in m for m in s.skipped)


def test_mask_size_mismatch_names_the_mask(mvtec, tmp_path):
    image = first_bad(mvtec, "capsules")
    mask = mvtec / "capsules" / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
    Image.open(mask).resize((100, 80)).save(mask)
    with pytest.raises(MmadError, match=f"{mask}: mask is 100x80 but its image {image.name} is 512x341"):
        build_benchmark(mvtec, tmp_path / "out", layout="mvtec")


def test_empty_mask_is_rejected(mvtec, tmp_path):
    image = first_bad(mvtec, "capsules")
    mask = mvtec / "capsules" / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
    Image.new("L", (512, 341), 0).save(mask)
    with pytest.raises(MmadError, match="empty"):
        build_benchmark(mvtec, tmp_path / "out", layout="mvtec")


def test_unreadable_image_names_the_file(mvtec, tmp_path):
    bad = mvtec / "fryum" / "train" / "good" / "broken.JPG"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(MmadError, match=f"{bad}: unreadable image"):
        build_benchmark(mvtec, tmp_path / "out", layout="mvtec")
    with pytest.warns(SkippedWarning):
        s = build_benchmark(mvtec, tmp_path / "out", layout="mvtec", skip_bad=True)
    assert "broken.JPG" not in s.questions_file.read_text()


def test_empty_category_names_the_folder(mvtec, tmp_path):
    (mvtec / "widget" / "train" / "good").mkdir(parents=True)
    (mvtec / "widget" / "test" / "good").mkdir(parents=True)
    with pytest.raises(MmadError, match=f"{mvtec / 'widget'}: empty category"):
        build_benchmark(mvtec, tmp_path / "out", layout="mvtec")
    with pytest.warns(SkippedWarning):
        s = build_benchmark(mvtec, tmp_path / "out", layout="mvtec", skip_bad=True)
    assert s.categories == ["capsules", "fryum"]


def test_unknown_and_wrong_layout(mvtec, visa, tmp_path):
    with pytest.raises(MmadError, match="--layout 'mvtecad': unknown layout"):
        build_benchmark(mvtec, tmp_path / "out", layout="mvtecad")
    with pytest.raises(MmadError, match="MVTec-style tree"):
        build_benchmark(visa, tmp_path / "out", layout="mvtec")
    with pytest.raises(MmadError, match="split file not found"):
        build_benchmark(mvtec, tmp_path / "out", layout="visa")
    with pytest.raises(MmadError, match="not a folder"):
        build_benchmark(tmp_path / "nowhere", tmp_path / "out", layout="visa")


def test_defective_key_containing_good_is_refused(mvtec, tmp_path):
    image = first_bad(mvtec)
    image.rename(image.with_name("goodlooking.JPG"))
    mask = mvtec / "fryum" / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
    mask.rename(mask.with_name("goodlooking_mask.png"))
    with pytest.raises(MmadError, match="contains 'good'"):
        build_benchmark(mvtec, tmp_path / "out", layout="mvtec")


# -- extra questions -----------------------------------------------------------------
def test_extra_questions_json_and_csv(mvtec, tmp_path):
    image = first_bad(mvtec)
    key = f"MVTec-AD/fryum/test/{image.parent.name}/{image.name}"
    src_rel = image.relative_to(mvtec).as_posix()
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({key: [{"Question": "Is the fryum round?", "Options": {"A": "Yes", "B": "No"}, "Answer": "A", "type": "Object Structure"}]}))
    s = build_benchmark(mvtec, tmp_path / "a", layout="mvtec", extra_questions=extra)
    conv = json.loads(s.questions_file.read_text())[key]["conversation"]
    assert conv[-1]["Question"] == "Is the fryum round?" and conv[-1]["type"] == "Object Structure"
    assert s.questions["Object Structure"] == 1
    table = tmp_path / "extra.csv"
    table.write_text(
        "image,type,question,A,B,C,answer\n"
        f"{src_rel},Defect Description,What does the defect look like?,a dark spot,a clean edge,a hole,a dark spot\n"
        f"{key},Defect Analysis,What may it cause?,nothing,a weak product,,B\n"
    )
    s = build_benchmark(mvtec, tmp_path / "b", layout="mvtec", extra_questions=table)
    conv = json.loads(s.questions_file.read_text())[key]["conversation"]
    assert [q["type"] for q in conv[-2:]] == ["Defect Description", "Defect Analysis"]
    assert conv[-2]["Answer"] == "A" and conv[-1]["Options"] == {"A": "nothing", "B": "a weak product"}
    from mmad_boost.protocol.data import Benchmark

    assert len(Benchmark(tmp_path / "b").select(types=["Defect Analysis"])) == 1


def test_extra_questions_errors(mvtec, tmp_path):
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"fryum/test/nope.JPG": [{"Question": "q", "Options": {"A": "x", "B": "y"}, "Answer": "A", "type": "Object Details"}]}))
    with pytest.raises(MmadError, match="'fryum/test/nope.JPG' is not a test image"):
        build_benchmark(mvtec, tmp_path / "out", layout="mvtec", extra_questions=extra)
    key = "MVTec-AD/fryum/test/good/" + sorted((mvtec / "fryum" / "test" / "good").iterdir())[0].name
    extra.write_text(json.dumps([{"image": key, "Question": "q", "Options": {"A": "x", "B": "y"}, "Answer": "C", "type": "Object Details"}]))
    with pytest.raises(MmadError, match="answer 'C' is not among the options"):
        build_benchmark(mvtec, tmp_path / "out", layout="mvtec", extra_questions=extra)
    extra.write_text(json.dumps([{"image": key, "Question": "q", "Options": {"A": "x", "B": "y"}, "Answer": "A", "type": "Trivia"}]))
    with pytest.raises(MmadError, match="type 'Trivia'"):
        build_benchmark(mvtec, tmp_path / "out", layout="mvtec", extra_questions=extra)


# -- CLI -------------------------------------------------------------------------------
def test_cli_build_then_eval(visa, tmp_path, capsys):
    assert main(["build-bench", "--root", str(visa), "--layout", "visa", "--seed", "2", "--n-templates", "1", "--out", str(tmp_path / "b")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["eval", "--data", str(tmp_path / "b"), "--model", "baseline:random", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    with pytest.raises(SystemExit) as e:  # the parser lists the layouts (--help shows them too)
        main(["build-bench", "--root", str(visa), "--layout", "nope", "--out", str(tmp_path / "c")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--layout: invalid choice: 'nope'" in err and "mvtec" in err and "Traceback" not in err


# -- question rules -------------------------------------------------------------------
def test_grid_shares_and_localization_rule():
    m = np.zeros((90, 90), bool)
    m[5:20, 70:85] = True  # top right only
    sh = qg.grid_shares(m)
    assert sh[2] == 1 and qg.defect_cells(sh) == [2]
    q = qg.defect_localization(sh, random.Random(0))
    assert q["Options"][q["Answer"]] == "top right"
    assert "top right" not in [v for k, v in q["Options"].items() if k != q["Answer"]]
    m[:] = False
    m[40:50, 10:80] = True  # a band across left, center, right
    q = qg.defect_localization(qg.grid_shares(m), random.Random(0))
    assert q["Options"][q["Answer"]] == "left, center and right"
    m[:] = True  # everywhere: no fair question
    assert qg.defect_localization(qg.grid_shares(m), random.Random(0)) is None


def test_defect_classification_multi_label_rule():
    q = qg.defect_classification(("bubble", "discolor"), ["bubble", "discolor", "scratch", "leak", "misshape"], random.Random(1))
    answer, others = q["Options"][q["Answer"]], {v for k, v in q["Options"].items() if k != q["Answer"]}
    assert answer == "bubble" and others == {"scratch", "leak", "misshape"}
    q = qg.defect_classification(("broken_large",), ["broken_large", "color"], random.Random(1))
    opts = set(q["Options"].values())
    assert "broken large" in opts and "color" in opts and len(opts) == 4
    assert not any(qg.related(o, "color") for o in opts - {"color", "broken large"})  # no near-synonym padding


def test_batched_ssim_equals_skimage_and_bhattacharyya_bounds():
    from skimage.metrics import structural_similarity

    from mmad_boost.building.similarity import bhattacharyya, ssim_hist_feature, ssim_many

    images = sorted((SAMPLE / "capsules" / "Data" / "Images" / "Normal").glob("*.JPG"))[:4]
    feats = [ssim_hist_feature(Image.open(p)) for p in images]
    ours = ssim_many(feats[0], feats)
    ref = [structural_similarity(feats[0].grey, f.grey, data_range=1.0) for f in feats]
    assert np.allclose(ours, ref, atol=1e-9) and ours[0] == pytest.approx(1.0)
    assert bhattacharyya(feats[0].hist, feats[0].hist) == pytest.approx(0.0, abs=1e-6)
    a, b = np.eye(2)[0], np.eye(2)[1]
    assert bhattacharyya(a, b) == pytest.approx(1.0)
