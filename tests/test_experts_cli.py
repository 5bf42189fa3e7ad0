"""`mmad-boost expert fit|eval|render` on an MMAD-layout benchmark of the bundled VisA sample."""

import json

import pytest
from PIL import Image

from mmad_boost.cli import main
from mmad_boost.experts.sample import visa_split

SIDE = 192  # downscaled copies keep the CLI runs short


def make_bench(root, category="capsules", n_train=10, side=SIDE):
    """A minimal MMAD-layout root (VisA/<cat>/train|test, ground_truth) with mmad.json."""
    split = visa_split(category)
    base = root / "VisA" / category
    data = {}

    def put(src, rel, *, mask=False):
        dst = base / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        im = Image.open(src)
        im = im.resize((side, side * im.height // im.width), Image.NEAREST if mask else Image.BILINEAR)
        im.save(dst)

    for p in split.train[:n_train]:
        put(p, f"train/good/{p.name}")
    q = [{"Question": "Is there any defect in the object?", "Options": {"A": "Yes", "B": "No"}, "Answer": "B", "type": "Anomaly Detection"}]
    for p in split.test_normal:
        put(p, f"test/good/{p.name}")
        data[f"VisA/{category}/test/good/{p.name}"] = {
            "conversation": q,
            "mask_path": "",
            "random_templates": [f"VisA/{category}/train/good/{split.train[0].name}"],
        }
    for p, m in split.test_anomaly:
        put(p, f"test/bad/{p.name}")
        put(m, f"ground_truth/bad/{m.name}", mask=True)
        qa = [dict(q[0], Answer="A")]
        data[f"VisA/{category}/test/bad/{p.name}"] = {
            "conversation": qa,
            "mask_path": f"ground_truth/bad/{m.name}",
            "random_templates": [f"VisA/{category}/train/good/{split.train[0].name}"],
        }
    (root / "mmad.json").write_text(json.dumps(data))
    return root


def last_json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


@pytest.mark.slow
def test_fit_eval_calibrated_marks_fewer_normals_and_render(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = make_bench(tmp_path / "data", "fryum", side=256)
    exp = tmp_path / "pc"
    assert main(["expert", "fit", "--data", str(root), "--category", "VisA/fryum", "--option", "size=224", "--holdout", "0.3", "--out", str(exp)]) == 0
    meta = json.loads((exp / "expert.json").read_text())
    assert meta["category"] == "VisA/fryum" and len(meta["calibration_images"]) == 3 and meta["image_threshold"] > 0

    assert main(["expert", "eval", "--expert", str(exp), "--data", str(root), "--json"]) == 0
    faithful = last_json(capsys)
    assert faithful["normal"] == 5 and faithful["defective"] == 15
    assert faithful["false_mark_rate"] == 1.0  # MMAD's pictures mark every normal image
    assert faithful["image_auroc"] > 0.5 and faithful["pixel_auroc"] > 0.7
    assert faithful["ms_per_image"] > 0
    assert any((tmp_path / "cache" / "mmad-boost" / "maps").glob("*.npy"))

    assert main(["expert", "eval", "--expert", str(exp), "--data", str(root), "--calibrated", "--json"]) == 0
    calibrated = last_json(capsys)
    assert calibrated["ms_per_image"] is None  # every map came from the cache
    assert calibrated["image_auroc"] == pytest.approx(faithful["image_auroc"])
    assert calibrated["false_mark_rate"] < faithful["false_mark_rate"]
    assert calibrated["hit_rate"] >= 0.5
    # the operating curve from the stored normal scores, its own target among the rows, and the misses
    rows = calibrated["curve"]["rows"]
    own = [r for r in rows if r["calibrated_at"]]
    assert len(own) == 1 and own[0]["target"] == calibrated["false_mark_target"] == 0.1
    assert own[0]["false_marks"] == round(calibrated["false_mark_rate"] * 5) and own[0]["hits"] == round(calibrated["hit_rate"] * 15)
    assert [r["image_threshold"] for r in rows] == sorted((r["image_threshold"] for r in rows), reverse=True)  # looser target, lower threshold
    assert len(calibrated["missed"]) == 15 - own[0]["hits"] and all(0 < m["defect_area"] < 1 for m in calibrated["missed"])
    plot = tmp_path / "curve.png"
    assert main(["expert", "eval", "--expert", str(exp), "--data", str(root), "--calibrated", "--false-marks", "0.3", "--plot", str(plot)]) == 0
    assert "<- calibrated" in capsys.readouterr().out and Image.open(plot).size[0] > 100

    bad = next((root / "VisA/fryum/test/bad").iterdir())
    out = tmp_path / "pics"
    assert main(["expert", "render", "--expert", str(exp), str(bad), "--out", str(out)]) == 0
    pics = sorted(p.name for p in out.glob("*.png"))
    assert pics == sorted(f"{bad.stem}_{s}.png" for s in ("bbox", "contour", "highlight", "mask", "heatmap"))
    sentences = json.loads((out / "sentences.json").read_text())
    assert sentences["mode"] == "faithful" and "even when" in sentences["pictures"]["bbox"]["sentence"]
    assert Image.open(out / f"{bad.stem}_bbox.png").size == Image.open(bad).size


def test_gt_expert_cli_hits_every_defect_and_marks_no_normal(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = make_bench(tmp_path / "data", n_train=2)
    exp = tmp_path / "gt"
    assert main(["expert", "fit", "--data", str(root), "--category", "VisA/capsules", "--expert", "gt", "--out", str(exp)]) == 0
    assert main(["expert", "eval", "--expert", str(exp), "--data", str(root), "--viz", "contour", "--json"]) == 0
    res = last_json(capsys)
    assert res["expert"] == "gt" and res["hit_rate"] == 1.0 and res["false_mark_rate"] == 0.0
    assert res["image_auroc"] == 1.0 and res["pixel_auroc"] > 0.99


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    root = make_bench(tmp_path / "data", n_train=1)
    assert main(["expert", "fit", "--data", str(root), "--category", "capsules", "--out", str(tmp_path / "x")]) == 2
    assert "DATASET/CATEGORY" in capsys.readouterr().err
    assert main(["expert", "fit", "--data", str(root), "--category", "VisA/capsules", "--out", str(tmp_path / "x")]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["expert", "eval", "--expert", str(tmp_path / "none"), "--data", str(root)]) == 2
    err = capsys.readouterr().err
    assert "expert.json" in err and len(err.strip().splitlines()) == 1
