"""Experts: factory, PatchCore (real EfficientNet-Lite0 weights, real VisA images), gt, calibration, cache."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmad_boost.protocol.data import load_mask
from mmad_boost.errors import MmadError
from mmad_boost.experts import ExpertOutput, cached_predict, calibration_thresholds, create_expert, load_expert
from mmad_boost.experts.sample import visa_split
from mmad_boost.experts.rendering import render

SIZE = 160  # small images keep the tests fast


def small(path, side=SIZE):
    im = Image.open(path).convert("RGB")
    im.thumbnail((side, side))
    return im


@pytest.fixture(scope="module")
def capsules():
    return visa_split("capsules")


@pytest.fixture(scope="module")
def fitted(capsules):
    expert = create_expert("patchcore", size=128, coreset_ratio=0.25)
    expert.fit([small(p) for p in capsules.train[:6]])
    return expert


def test_unknown_expert_and_predict_before_fit_are_user_errors():
    with pytest.raises(MmadError, match="unknown"):
        create_expert("magic")
    with pytest.raises(MmadError, match="before fit"):
        create_expert("patchcore").predict(Image.new("RGB", (32, 32)))
    with pytest.raises(MmadError, match="template"):
        create_expert("patchcore-fewshot", size=64).predict(Image.new("RGB", (32, 32)))


def test_user_object_is_accepted_as_is():
    class Mine:
        def predict(self, image, **kw):
            return ExpertOutput(np.zeros(image.size[::-1], np.float32), 0.0)

    obj = Mine()
    assert create_expert(obj) is obj


def test_missing_backbone_file_fails_fast_naming_it(tmp_path):
    missing = tmp_path / "wide_resnet50_2-nothere.pth"
    with pytest.raises(MmadError, match="nothere.pth"):
        create_expert("patchcore", backbone=f"wide_resnet50_2:{missing}")


@pytest.mark.slow  # loads the backbone and fits: seconds
def test_patchcore_scores_defect_above_normal_and_map_is_image_sized(fitted, capsules):
    normal = small(capsules.test_normal[0])
    out = fitted.predict(normal)
    assert out.map.shape == (normal.size[1], normal.size[0]) and out.map.dtype == np.float32
    assert out.decision is None and out.pixel_threshold is None
    # a magenta blotch on the same normal image: the map rises there, and only there
    bad = normal.copy()
    ImageDraw.Draw(bad).ellipse((60, 40, 80, 60), fill=(230, 20, 200))
    out_bad = fitted.predict(bad)
    assert out_bad.map[50, 70] > 1.25 * out.map[50, 70]
    assert out_bad.map[50, 70] > np.percentile(out.map, 95)
    assert out_bad.score >= out.score
    far = np.s_[:, 110:]
    assert np.allclose(out_bad.map[far], out.map[far], rtol=0.05)


@pytest.mark.slow  # loads the backbone and fits: seconds
def test_patchcore_save_load_gives_same_scores(fitted, capsules, tmp_path):
    fitted_copy = create_expert("patchcore", size=128, coreset_ratio=0.25)
    fitted_copy.bank, fitted_copy._index, fitted_copy.fitted = fitted.bank, fitted._index, True
    fitted_copy.calibrate([small(p) for p in capsules.train[6:8]])
    fitted_copy.save(tmp_path / "pc")
    meta = json.loads((tmp_path / "pc" / "expert.json").read_text())
    assert meta["kind"] == "patchcore" and meta["arrays"] == ["memory_bank"]
    assert np.load(tmp_path / "pc" / "memory_bank.npy").dtype == np.float16
    again = load_expert(tmp_path / "pc")
    assert again is not fitted_copy and again.state_id == fitted_copy.state_id
    assert again.image_threshold == fitted_copy.image_threshold and again.pixel_threshold == fitted_copy.pixel_threshold
    for p in [capsules.test_normal[1], capsules.test_anomaly[0][0]]:
        a, b = fitted_copy.predict(small(p)), again.predict(small(p))
        assert a.score == pytest.approx(b.score, rel=1e-6) and np.allclose(a.map, b.map, atol=1e-5)
        assert a.decision == b.decision is not None


@pytest.mark.slow  # loads the backbone and fits: seconds
def test_few_shot_mode_fits_on_templates(capsules):
    expert = create_expert("patchcore-fewshot", size=96, coreset_ratio=1.0)  # every template patch in the bank
    assert expert.needs_templates and expert.name == "patchcore-fewshot"
    tpl = [small(capsules.train[0], 128)]
    same = expert.predict(tpl[0], templates=tpl)
    other = expert.predict(small(capsules.test_anomaly[1][0], 128), templates=tpl)
    assert same.score < 0.02 * other.score  # its own template is in the bank (float16 bank: not exactly 0)


def test_calibration_rule_known_answer():
    maps = [np.full((10, 10), 1.0), np.full((10, 10), 2.0)]
    image_t, pixel_t = calibration_thresholds([3.0, 5.0, 4.0], maps, margin=1.1)
    assert image_t == pytest.approx(5.5)
    assert pixel_t == pytest.approx(2.0)  # 3 normals cannot bound 10 %: the largest score and map maximum
    many = np.linspace(0, 1, 101)  # 101 normals at 10 %: the ceil(102 x 0.9) = 92nd smallest
    assert calibration_thresholds(many, [np.full((2, 2), v) for v in many])[0] == pytest.approx(0.91)
    assert calibration_thresholds(many, maps, false_marks=0.01)[0] == pytest.approx(1.0)  # the 101st
    with pytest.raises(MmadError):
        calibration_thresholds([], [])


def test_gt_expert_mask_binarised_and_normal_empty(capsules):
    gt = create_expert("gt")
    img_path, mask_path = capsules.test_anomaly[0]
    image = Image.open(img_path).convert("RGB")
    raw = np.asarray(Image.open(mask_path))
    assert raw.max() >= 1
    out = gt.predict(image, mask=raw)  # label values 1..k -> 1
    assert set(np.unique(out.map)) <= {0.0, 1.0} and out.map.sum() == (raw > 0).sum()
    assert out.decision is True
    empty = gt.predict(image, mask=None)
    assert empty.map.max() == 0 and empty.decision is False


def test_gt_folder_masks_are_merged(tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    a, b = np.zeros((20, 30), np.uint8), np.zeros((20, 30), np.uint8)
    a[2:5, 2:5], b[10:15, 20:25] = 255, 3
    Image.fromarray(a).save(folder / "a.png")
    Image.fromarray(b).save(folder / "b.png")
    out = create_expert("gt").predict(Image.new("RGB", (30, 20)), mask=load_mask(folder))
    assert out.map.sum() == 9 + 25


def test_gt_bbox_on_bundled_defect_encloses_its_mask(capsules):
    for img_path, mask_path in capsules.test_anomaly[:5]:
        image = Image.open(img_path).convert("RGB")
        mask = load_mask(mask_path)
        out = create_expert("gt").predict(image, mask=mask)
        pic = render(image, out.map, "bbox", is_gt=True)
        assert pic.marked and 1 <= len(pic.boxes) <= 3
        w, h = pic.image.size
        m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
        covered = np.zeros_like(m)
        for x0, y0, x1, y1 in pic.boxes:
            covered[y0 : y1 + 1, x0 : x1 + 1] = True
        assert not (m & ~covered).any()  # every mask pixel lies inside a box
        red = np.all(np.asarray(pic.image) == (255, 0, 0), axis=2)
        ys, xs = np.nonzero(m)
        assert red[ys.min(), :].any() or red[:, xs.min()].any()


@pytest.mark.slow  # loads the backbone and fits: seconds
def test_cached_predict_reuses_maps(fitted, capsules, tmp_path):
    calls = []

    class Counting:
        name, needs_mask, needs_templates = "counting", False, False
        state_id = fitted.state_id
        pixel_threshold, image_threshold = 1.0, 2.0

        def predict(self, image, **kw):
            calls.append(1)
            return fitted.predict(image)

        def decide(self, score):
            return score > self.image_threshold

    expert = Counting()
    im = small(capsules.test_normal[2])
    first = cached_predict(expert, im, tmp_path)
    second = cached_predict(expert, im, tmp_path)
    assert len(calls) == 1
    assert np.allclose(first.map, second.map, rtol=1e-3, atol=1e-2) and second.score == pytest.approx(first.score)
    assert second.decision is True and second.pixel_threshold == 1.0
    cached_predict(expert, small(capsules.test_normal[3]), tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.npy"))) == 2


def test_foreground_filter_zeroes_background():
    from mmad_boost.experts.patchcore import foreground_mask

    im = Image.new("RGB", (120, 100), (240, 240, 240))
    ImageDraw.Draw(im).ellipse((35, 25, 85, 75), fill=(150, 40, 30))
    fg = foreground_mask(im)
    assert fg is not None and fg[50, 60] and not fg[3, 3] and not fg[95, 115]
    # nothing found inside (only MMAD's 1 % border strip, < 5 %): filter skipped
    assert foreground_mask(Image.new("RGB", (120, 90), (128, 128, 128))) is None


def _patchcore_on_known_distances(patch_norms, **kw):
    """A PatchCore whose backbone is replaced by fixed 2-d patch features: with a bank holding only
    the origin, each patch score is the norm of its feature, known in advance."""
    expert = create_expert("patchcore", size=8, sigma=0, **kw)
    h, w = patch_norms.shape
    feats = np.zeros((1, h, w, 2), np.float32)
    feats[0, :, :, 0] = patch_norms
    expert.features = lambda images: feats
    expert.bank = np.zeros((1, 2), np.float32)
    expert._index, expert.fitted = expert._index_of(expert.bank), True
    return expert


def test_patchcore_image_score_is_mean_of_top_patches():
    norms = np.arange(16, dtype=np.float32).reshape(4, 4)  # patch scores 0..15
    image = Image.new("RGB", (8, 8))
    assert _patchcore_on_known_distances(norms, topk=0).predict(image).score == pytest.approx(15.0)  # the paper's max
    assert _patchcore_on_known_distances(norms, topk=0.25).predict(image).score == pytest.approx((12 + 13 + 14 + 15) / 4)
    assert _patchcore_on_known_distances(norms, topk=0.01).predict(image).score == pytest.approx(15.0)  # at least one patch
    assert create_expert("patchcore").topk == 0.001
    with pytest.raises(MmadError, match="topk"):
        create_expert("patchcore", topk=1.5)
    with pytest.raises(MmadError, match="reweight"):
        create_expert("patchcore", reweight=True, topk=0.01)  # eq. 7 damps the single largest patch: needs topk=0
    assert create_expert("patchcore", reweight=True).topk == 0.0
    with pytest.raises(MmadError, match="reweight"):
        create_expert("patchcore", reweight=True, topk=0, knn=3)


def test_patchcore_patch_score_is_mean_distance_to_knn_bank_entries():
    norms = np.full((2, 2), 10.0, np.float32)
    image = Image.new("RGB", (8, 8))
    scores = {}
    for knn in (1, 3, 5):
        expert = _patchcore_on_known_distances(norms, topk=0, knn=knn)
        expert.bank = np.array([[0, 0], [1, 0], [2, 0]], np.float32)  # patches at (10, 0): distances 10, 9, 8
        expert._index = expert._index_of(expert.bank)
        scores[knn] = expert.predict(image).score
    assert scores == pytest.approx({1: 8.0, 3: 9.0, 5: 9.0})  # knn beyond the bank's size uses all of it
    assert create_expert("patchcore").knn == 3 and create_expert("patchcore-fewshot").knn == 1  # few-shot: MMAD's set-up
    assert create_expert("patchcore", knn="2").knn == 2  # as given by `--option knn=2`
    for bad in (0, -1, 1.5, "two"):
        with pytest.raises(MmadError, match="knn"):
            create_expert("patchcore", knn=bad)


def test_folder_written_before_topk_keeps_max_scoring(tmp_path):
    expert = _patchcore_on_known_distances(np.ones((2, 2), np.float32), topk=0)
    expert.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "expert.json").read_text())
    del meta["config"]["topk"], meta["config"]["knn"]
    (tmp_path / "old" / "expert.json").write_text(json.dumps(meta))
    old = load_expert(tmp_path / "old")
    assert (old.topk, old.knn) == (0.0, 1)


def test_greedy_coreset_matches_plain_k_center():
    import torch

    from mmad_boost.experts.patchcore import greedy_coreset

    x = np.random.default_rng(3).normal(size=(400, 24)).astype(np.float32)
    got = greedy_coreset(x, 40, seed=5)
    # the textbook loop with exact distances, from the same random start
    start = int(torch.randint(len(x), (1,), generator=torch.Generator().manual_seed(5)))
    chosen, dmin = [start], np.linalg.norm(x - x[start], axis=1)
    for _ in range(39):
        i = int(np.argmax(dmin))
        chosen.append(i)
        dmin = np.minimum(dmin, np.linalg.norm(x - x[i], axis=1))
    assert got.tolist() == chosen
    assert greedy_coreset(x, 500).tolist() == list(range(400))  # asking for more keeps everything


def test_holdout_split_and_few_shot_calibration(capsules):
    from mmad_boost.experts.base import fit_and_calibrate, holdout_split

    assert holdout_split(list("abcdefgh"), 0.25) == (list("abcdef"), list("gh"))
    assert holdout_split(list("ab"), 0.9) == (["a"], ["b"])  # at least one image left to fit
    assert holdout_split(["a"], 0.25) == (["a"], [])
    with pytest.raises(MmadError, match="holdout"):
        holdout_split(list("abc"), 1.0)
    # a few-shot expert is calibrated against a template from the fitting part, then decides
    expert = create_expert("patchcore-fewshot", size=96)
    fit_and_calibrate(expert, [small(p, 128) for p in capsules.train[:2]], [small(p, 128) for p in capsules.train[2:4]])
    assert expert.calibrated and expert.pixel_threshold <= expert.image_threshold
    tpl = [small(capsules.train[0], 128)]
    assert expert.predict(tpl[0], templates=tpl).decision is False


@pytest.mark.slow  # loads the backbone twice: seconds
def test_patchcore_backbone_skips_unused_stages_with_identical_features():
    import torch

    from mmad_boost.experts.backbones import load_backbone
    from mmad_boost.experts.patchcore import _embedder

    full, _, _ = load_backbone()
    n_blocks = len(full.blocks)
    embed = _embedder(load_backbone()[0])
    kept = embed.backbone.blocks
    assert len(kept) == max(full._stage_out_idx) < n_blocks  # the stride-32 stages are gone
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        maps = full(x)  # all stages run, the stride-8 and stride-16 maps returned
        got = embed.backbone(x)
    assert len(got) == len(maps) == 2 and all(torch.equal(a, b) for a, b in zip(got, maps))  # bit for bit
