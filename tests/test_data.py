import json

import numpy as np
import pytest
from PIL import Image

from mmad_boost.protocol.data import Benchmark, load_mask
from mmad_boost.errors import MmadError
from mmad_boost.protocol.prompt import MMAD_INSTRUCTION, Query, build_prompt, shuffle_options
from mmad_boost.protocol.settings import parse_setting

KEYS = [
    "MVTec-AD/bottle/test/broken_large/000.png",
    "DS-MVTec/bottle/image/broken_large/000.png",
    "VisA/candle/test/bad/002.JPG",
    "MVTec-LOCO/juice_bottle/test/logical_anomalies/000.png",
    "GoodsAD/drink_can/test/good/001.jpg",
]


def q(answer="A", qtype="Anomaly Detection"):
    return {"Question": "Is there any defect in the object?", "Options": {"A": "Yes", "B": "No"}, "Answer": answer, "type": qtype, "annotation": True}


def write(root, data):
    root.mkdir(parents=True, exist_ok=True)
    (root / "mmad.json").write_text(json.dumps(data))
    return root


def test_all_key_forms_parse(tmp_path):
    data = {k: {"conversation": [q()], "mask_path": "", "similar_templates": [], "random_templates": []} for k in KEYS}
    b = Benchmark(write(tmp_path, data))
    got = {(s.dataset, s.category, s.label, s.is_normal) for s in b.samples}
    assert ("DS-MVTec", "bottle", "broken_large", False) in got
    assert ("VisA", "candle", "bad", False) in got
    assert ("GoodsAD", "drink_can", "good", True) in got


def test_masks_binary_label_valued_and_folder(tmp_path):
    a = np.zeros((10, 12), np.uint8)
    a[2:4, 3:5] = 1
    b = np.zeros((10, 12), np.uint8)
    b[6:8, 1:2] = 3  # VisA-style region label
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b * 80).save(tmp_path / "b255.png")
    assert load_mask(tmp_path / "a.png").sum() == 4
    folder = tmp_path / "multi"
    folder.mkdir()
    Image.fromarray(a).save(folder / "0.png")
    Image.fromarray(b).save(folder / "1.png")
    m = load_mask(folder)
    assert m.dtype == bool and m.sum() == 6
    (tmp_path / "empty").mkdir()
    with pytest.raises(MmadError, match="holds no mask images"):
        load_mask(tmp_path / "empty")


def test_select_filters_and_seeded_subset(shared_fixture_root):
    b = Benchmark(shared_fixture_root)
    all_items = b.select()
    assert len(all_items) == sum(len(s.questions) for s in b.samples)
    only = b.select(categories=["widget"], types=["Defect Classification"])
    assert only and all(s.category == "widget" and qq.type == "Defect Classification" for s, qq in only)
    assert len(b.select(limit=5)) == 5
    s1 = [s.qid(qq) for s, qq in b.select(subset=7, seed=3)]
    s2 = [s.qid(qq) for s, qq in b.select(subset=7, seed=3)]
    s3 = [s.qid(qq) for s, qq in b.select(subset=7, seed=4)]
    assert s1 == s2 and s1 != s3 and len(s1) == 7


def test_settings_pick_templates_and_defect_examples(shared_fixture_root):
    b = Benchmark(shared_fixture_root)
    bad = next(s for s in b.samples if not s.is_normal and s.label == "hole")
    assert parse_setting("0-shot").templates(bad) == []
    assert parse_setting("1-shot").templates(bad) == bad.random_templates[:1]
    assert parse_setting("1-shot+").templates(bad) == bad.similar_templates[:1]
    assert parse_setting("k-shot:2").templates(bad) == bad.random_templates[:2]
    assert parse_setting("4-shot").name == "4-shot"
    ic = parse_setting("in-context:1")
    ex = ic.defect_examples(bad, b, seed=0)
    assert len(ex) == 1 and ex[0] != bad.key and "/hole/" in ex[0]
    assert ex == ic.defect_examples(bad, b, seed=0)  # fixed seed
    with pytest.raises(MmadError, match="needs 8"):
        parse_setting("k-shot:8").templates(bad)
    with pytest.raises(MmadError, match="unknown setting"):
        parse_setting("2-shots")


def test_prompt_order_and_option_lines():
    im = Image.new("RGB", (8, 8))
    t = Image.new("RGB", (8, 8), "white")
    ex = Image.new("RGB", (8, 8), "red")
    qq = Query(
        question="Is there any defect?",
        options={"A": "Yes", "B": "No"},
        image=im,
        templates=[t],
        defect_examples=[ex],
        knowledge="K-TEXT",
        expert_image=ex,
        expert_sentence="EXPERT:",
    )
    p = build_prompt(qq)
    text = p.text("<img>")
    assert text.startswith(MMAD_INSTRUCTION)
    order = [text.index(s) for s in ("K-TEXT", "1 normal sample", "defective samples", "Here is the query image", "EXPERT:", "Is there any defect?")]
    assert order == sorted(order)
    assert text.endswith("Is there any defect?\nA. Yes\nB. No")
    assert p.images == [t, ex, im, ex]


def test_shuffle_remaps_answer_and_is_seeded():
    opts = {"A": "scratch", "B": "crack", "C": "hole", "D": "stain"}
    seen = set()
    for i in range(30):
        shown, ans = shuffle_options(opts, "C", 0, f"img#{i}")
        assert shown[ans] == "hole" and sorted(shown.values()) == sorted(opts.values())
        assert shuffle_options(opts, "C", 0, f"img#{i}") == (shown, ans)
        seen.add(ans)
    assert len(seen) > 1


def test_folder_in_place_of_an_image_is_named_the_same_way_everywhere(tmp_path):
    from mmad_boost.protocol.data import check_image_file, load_rgb
    from mmad_boost.errors import MmadError

    folder = tmp_path / "000.png"
    folder.mkdir()
    for check in (load_rgb, check_image_file):
        with pytest.raises(MmadError, match=r"000\.png is a folder, not an image file"):
            check(folder)
