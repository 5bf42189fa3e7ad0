"""Calibration at a target false-mark rate: the conformal rule, leave-one-out normal scores, stored
scores that move the thresholds without refitting, the operating curve, and evidence in words."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mmad_boost.errors import MmadError
from mmad_boost.experts import create_expert, load_expert
from mmad_boost.experts.base import NormalScores, conformal_threshold, fit_and_calibrate
from mmad_boost.experts.sample import visa_split

from fixtures import grid_patchcore

scores_st = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60)
rates_st = st.floats(0.001, 0.999)


@given(scores_st, rates_st)
def test_conformal_threshold_is_the_finite_sample_rank(scores, rate):
    t = conformal_threshold(scores, rate)
    n = len(scores)
    k = math.ceil((n + 1) * (1 - rate))
    assert t in scores
    above = sum(s > t for s in scores)
    if k <= n:  # at most (n+1) a - 1 of the normals lie above it: the bound a new normal obeys
        assert above <= (n + 1) * rate - 1 + 1e-9
        assert sum(s <= t for s in scores) >= k
    else:  # too few normals for the rate: the largest score
        assert t == max(scores)


def test_conformal_threshold_holds_its_rate_on_new_normals():
    """Exchangeable scores: a new normal lands above the threshold of n others at most a of the time."""
    rng = np.random.default_rng(0)
    for n, rate in ((19, 0.1), (40, 0.05), (9, 0.2)):
        draws = rng.gamma(3.0, size=(20000, n + 1))
        over = np.mean([d[-1] > conformal_threshold(d[:-1], rate) for d in draws])
        assert over <= rate + 0.01  # 20000 trials: binomial sd about 0.002


@given(st.one_of(st.none(), st.text(max_size=5), st.floats(allow_nan=True), st.integers(-3, 3)))
@settings(max_examples=60)
def test_bad_false_mark_rates_are_user_errors(rate):
    from mmad_boost.experts.base import check_false_marks

    try:
        ok = 0 < float(rate) < 1
    except (TypeError, ValueError):
        ok = False
    if ok:
        assert check_false_marks(rate) == float(rate)
    else:
        with pytest.raises(MmadError, match="false-mark rate"):
            check_false_marks(rate)


def small(path, side=128):
    im = Image.open(path).convert("RGB")
    im.thumbnail((side, side))
    return im


@pytest.fixture(scope="module")
def normals():
    return [small(p) for p in visa_split("capsules").train[:5]]


@pytest.mark.slow  # loads the backbone and fits: seconds
def test_leave_one_out_scores_each_normal_without_its_own_entries(normals, tmp_path):
    expert = create_expert("patchcore", size=96, coreset_ratio=0.3)
    fit_and_calibrate(expert, normals, false_marks=0.2)
    cal = expert.normals
    assert cal.method == "leave-one-out" and len(cal.scores) == 5 and cal.false_marks == 0.2
    # scored against the full bank, a training image finds its own entries: lower than unseen
    seen = [o.score for o in expert.predict_batch(normals)]
    assert all(s < u for s, u in zip(seen, cal.scores))
    assert expert.image_threshold == pytest.approx(conformal_threshold(cal.scores, 0.2))
    assert expert.pixel_threshold <= expert.image_threshold
    # stored in the folder: the rate moves without refitting; the batch path scores as predict does
    expert.save(tmp_path / "pc")
    meta = json.loads((tmp_path / "pc" / "expert.json").read_text())
    assert meta["calibration"]["normal_scores"] == pytest.approx(cal.scores, rel=1e-5)
    loose = load_expert(tmp_path / "pc", false_marks=0.5)
    assert loose.image_threshold < expert.image_threshold
    assert load_expert(tmp_path / "pc").image_threshold == pytest.approx(expert.image_threshold)
    assert expert.predict(normals[0]).score == pytest.approx(seen[0], rel=1e-5)


def test_folder_without_stored_scores_loads_and_says_how_to_recalibrate(tmp_path):
    expert = create_expert("gt")
    expert.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "expert.json").read_text())
    assert "calibration" not in meta
    old = load_expert(tmp_path / "old")
    assert old.image_threshold == 0.5
    with pytest.raises(MmadError, match="refit"):
        old.set_false_marks(0.2)
    meta["calibration"] = {"normal_scores": "x"}
    (tmp_path / "old" / "expert.json").write_text(json.dumps(meta))
    with pytest.raises(MmadError, match="calibration"):
        load_expert(tmp_path / "old")


def test_zero_shot_and_kfold_experts_score_every_normal_unseen():
    from mmad_boost.experts.base import Expert

    class Mean(Expert):  # learns the mean normal brightness; scores distance to it
        kind = name = "mean"

        def fit(self, images):
            self.mu = float(np.mean([np.asarray(im, np.float32).mean() for im in images]))
            self.fitted = True
            return self

        def _predict_map(self, image, mask, templates):
            d = abs(np.asarray(image, np.float32).mean(2) - self.mu)
            return d, float(d.mean())

    images = [Image.new("RGB", (8, 8), (v, v, v)) for v in (10, 20, 30, 40, 200)]
    expert = fit_and_calibrate(Mean(), images, false_marks=0.3, folds=5)
    assert expert.normals.method == "5-fold"
    assert expert.normals.scores[-1] == pytest.approx(200 - 25)  # the mean of the other four
    assert expert.mu == pytest.approx(60)  # finally fitted on all

    class Still(Expert):  # zero-shot: nothing to learn
        kind = name = "still"

        def _predict_map(self, image, mask, templates):
            return np.zeros((8, 8), np.float32), 1.0

    assert fit_and_calibrate(Still(), images).normals.method == "zero-shot"


def _item(score, mask=None, value=None):
    from mmad_boost.experts.operating import Scored

    amap = np.zeros((60, 60), np.float32)
    if value is not None:
        amap[20:30, 20:30] = value
    return Scored("k", Image.new("RGB", (60, 60)), amap, score, mask, 0.0 if mask is None else float(mask.mean()))


def test_operating_curve_counts_and_best_fixed_threshold():
    from mmad_boost.experts.operating import counts, missed_defects, operating_curve

    hit = np.zeros((60, 60), bool)
    hit[22:28, 22:28] = True
    away = np.zeros((60, 60), bool)
    away[50:55, 50:55] = True
    items = [
        _item(1.0, value=1.0),
        _item(3.0, value=3.0),  # normals: one scores high
        _item(4.0, hit, 4.0),
        _item(2.0, hit, 2.0),
        _item(5.0, away, 5.0),
    ]  # defects: hit, low score, marked elsewhere
    fm, hits, missed = counts(items, "bbox", image_t=2.5, pixel_t=0.5)
    assert (fm, hits, len(missed)) == (1, 1, 2)

    class Fake:
        name = "fake"
        image_threshold = pixel_threshold = None
        normals = NormalScores([1.0, 1.5, 2.0, 2.2, 2.5, 3.5], [1.0] * 6, "leave-one-out", 0.3)

        def set_false_marks(self, rate):
            from mmad_boost.experts.base import calibration_thresholds

            self.normals.false_marks = rate
            self.image_threshold, self.pixel_threshold = calibration_thresholds(self.normals.scores, self.normals.map_max, 1.0, rate)

    fake = Fake()
    fake.set_false_marks(0.3)
    curve = operating_curve(fake, items, "bbox", targets=(0.1, 0.3))
    rows = {r["target"]: r for r in curve["rows"]}
    assert rows[0.3]["calibrated_at"] and rows[0.3]["image_threshold"] == 2.5  # ceil(7 x 0.7) = 5th of 6
    assert rows[0.1]["image_threshold"] == 3.5 and rows[0.1]["false_marks"] == 0
    assert rows[0.3]["false_marks"] == 1 and rows[0.3]["hits"] == 1
    # the best threshold with one false mark sits just above the lower normal: both hittable defects
    assert rows[0.3]["best_fixed_hits"] == 2 and rows[0.1]["best_fixed_hits"] == 1
    assert fake.normals.false_marks == 0.3  # restored
    miss = missed_defects(fake, items, "bbox")
    assert [m["why"] for m in miss] == ["marked elsewhere", "scored below the image threshold"]  # smallest defect first


def test_verdict_text_names_grid_cells_and_area():
    from mmad_boost.boosts.evidence import grid_cell, verdict_text

    assert grid_cell(0, 0, 90, 90) == "top left" and grid_cell(89, 89, 90, 90) == "bottom right" and grid_cell(45, 45, 90, 90) == "center"
    region = np.zeros((90, 90), bool)
    region[0:9, 0:9] = True  # 1 % at top left
    region[40:50, 40:50] = True  # 1.2 % in the center
    text = verdict_text(12.0, 10.0, True, region)
    assert "1.20 times" in text and "anomalous" in text and "2 regions" in text
    assert text.index("center (about 1.2 %") < text.index("top left (about 1.0 %")  # largest first
    quiet = verdict_text(8.0, 10.0, False, region)  # judged normal: no regions, whatever the map
    assert "0.80 times" in quiet and "marks nothing" in quiet


@pytest.mark.slow  # fits a small patchcore
def test_image_score_chosen_from_training_defects_only(normals, tmp_path):
    from mmad_boost.experts.score_choice import choose_image_score

    expert = create_expert("patchcore", size=96, coreset_ratio=0.3)
    fit_and_calibrate(expert, normals, false_marks=0.2)
    assert choose_image_score(expert, []) == [] and expert.topk == 0.001  # no defects: nothing to choose by, nothing changes
    defects = []
    for im in normals[:3]:  # a small dark blot: what a few-patch image score should catch
        d = im.copy()
        d.paste((0, 0, 0), (40, 40, 52, 52))
        defects.append(d)
    rows = choose_image_score(expert, defects)
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and expert.image_score == chosen[0]["image_score"]
    assert expert.topk == chosen[0]["topk"] if expert.image_score == "topk" else expert.image_score_sigma == chosen[0]["image_score_sigma"]
    assert chosen[0]["caught"] == max(r["caught"] for r in rows)
    assert expert.image_threshold == pytest.approx(chosen[0]["threshold"])
    assert {r["topk"] for r in rows} >= {0.0, 0.001, 0.005, 0.01} and {r["image_score_sigma"] for r in rows} >= {1.0, 2.0}
    assert load_expert(expert.save(tmp_path / "chosen")).config() == expert.config()  # the chosen rule survives the folder


def test_boosted_evidence_text_mode_sends_words_not_picture():
    from mmad_boost.boosts.boosted import BoostedModel
    from mmad_boost.experts.base import Expert
    from mmad_boost.protocol.prompt import Query, build_prompt

    class Spot(Expert):  # a calibrated expert with a hot square at the top left
        kind = name = "spot"

        def __init__(self):
            super().__init__()
            self.fitted, self.image_threshold, self.pixel_threshold = True, 1.0, 0.5

        def _predict_map(self, image, mask, templates):
            m = np.zeros((image.size[1], image.size[0]), np.float32)
            m[2:12, 2:12] = 2.0
            return m, 2.0

    class Echo:
        name = "echo"

        def generate(self, prompt):
            self.prompt = prompt
            return "A"

    for evidence, n_images in (("text", 1), ("both", 2), ("picture", 2)):
        base = Echo()
        model = BoostedModel(base, expert=Spot(), calibrated=True, evidence=evidence)
        model.generate(build_prompt(Query("Is there a defect?", {"A": "Yes", "B": "No"}, Image.new("RGB", (90, 90)))))
        text = base.prompt.text()
        assert len(base.prompt.images) == n_images
        assert ("2.00 times its anomaly threshold" in text and "top left" in text) == (evidence != "picture")
        assert ("red boxes" in text) == (evidence != "text")  # the picture keeps its own sentence
    with pytest.raises(MmadError, match="calibrated"):
        BoostedModel(Echo(), expert=Spot(), evidence="text")  # faithful mode stays MMAD's picture
    with pytest.raises(MmadError, match="evidence"):
        BoostedModel(Echo(), expert=Spot(), calibrated=True, evidence="words")


def _gauss_centre(sigma: float) -> float:
    """The centre weight of a normalised 1-D Gaussian kernel of radius int(4 sigma + 0.5), by its formula."""
    r = int(4 * sigma + 0.5)
    return 1.0 / sum(math.exp(-i * i / (2 * sigma * sigma)) for i in range(-r, r + 1))


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_blur_max_has_the_known_gaussian_answer(sigma):
    from mmad_boost.experts.patch_scores import blur_max, top_mean

    assert blur_max(np.full((30, 30), 7.0), sigma) == pytest.approx(7.0, rel=1e-5)  # a blur keeps a flat map
    spike = np.zeros((41, 41))
    spike[20, 20] = 1.0
    assert blur_max(spike, sigma) == pytest.approx(_gauss_centre(sigma) ** 2, rel=1e-4)  # separable kernel: centre weight squared
    block = np.zeros((41, 41))
    block[19:22, 19:22] = 1.0  # a defect three patches wide, as high as the lone spike
    assert top_mean(block, 0) == top_mean(spike, 0)  # the largest patch cannot tell them apart
    assert blur_max(block, sigma) > 2 * blur_max(spike, sigma)  # the blurred map's maximum follows the region


def _normals_and_defects(rng):
    """Normals: background 1 with eight lone patches of 6 (noise); defects: a 4 x 4 region of 3 and no noise.
    The largest patch and the top-k means rank the noise above the defect; the blurred maximum does not."""
    lattice = [(6 + 12 * a, 6 + 12 * b) for a in range(4) for b in range(4)]
    normals, defects = [], []
    for _ in range(20):
        g = np.ones((48, 48))
        for i in rng.choice(len(lattice), 8, replace=False):
            g[lattice[i]] = 6.0
        normals.append(g)
    for _ in range(6):
        g = np.ones((48, 48))
        y, x = rng.integers(4, 40, 2)
        g[y : y + 4, x : x + 4] = 3.0
        defects.append(g)
    return normals, defects


def test_chooser_picks_the_image_score_that_separates_the_defects(tmp_path):
    from mmad_boost.experts.patch_scores import blur_max
    from mmad_boost.experts.score_choice import choose_image_score, choose_topk

    normals, defects = _normals_and_defects(np.random.default_rng(0))
    for only_topk in (True, False):
        images = [Image.new("RGB", (48, 48)) for _ in defects]
        expert = grid_patchcore({id(im): g for im, g in zip(images, defects)})
        expert._calibration_patches = [g.astype(np.float32) for g in normals]
        expert.calibrate_from(NormalScores([0.0] * 20, [6.0] * 20, "leave-one-out", 0.1))
        rows = (choose_topk if only_topk else choose_image_score)(expert, images)
        caught = {r["label"]: r["caught"] for r in rows}
        chosen = [r for r in rows if r["chosen"]]
        assert len(chosen) == 1 and chosen[0]["caught"] == max(caught.values())
        assert all(r["caught"] == 0 for r in rows if r["image_score"] == "topk") and len(rows) >= 4  # the noise outscores the defect at every k
        if only_topk:  # nothing catches more: the configured rule stays
            assert expert.image_score == "topk" and expert.topk == 0.001 and chosen[0]["configured"]
            continue
        assert caught["blur-max sigma 1"] == caught["blur-max sigma 2"] == 6
        assert expert.image_score == "blur-max" and expert.image_score_sigma == chosen[0]["image_score_sigma"]
        assert expert.image_threshold == pytest.approx(max(blur_max(g, expert.image_score_sigma) for g in normals), rel=1e-6)
        assert all(expert.predict(im).decision for im in images)  # predict scores by the chosen rule
        config = expert.config()
        assert config["image_score"] == "blur-max" and config["image_score_sigma"] == expert.image_score_sigma
        out = expert.save(tmp_path / "chosen")
        again = load_expert(out)
        assert (again.image_score, again.image_score_sigma, again.state_id) == (expert.image_score, expert.image_score_sigma, expert.state_id)
        assert again.image_threshold == pytest.approx(expert.image_threshold)


def test_image_score_rule_in_config_round_trip_and_default_identity(tmp_path):
    default, blurred = grid_patchcore({}), grid_patchcore({}, image_score="blur-max", image_score_sigma="2")  # as `--option` strings
    assert "image_score" not in default.config() and "image_score_sigma" not in default.config()  # old folders' identity unchanged
    assert grid_patchcore({}, image_score="topk", image_score_sigma=3).state_id == default.state_id
    assert blurred.state_id != default.state_id and blurred.image_score_sigma == 2.0
    again = load_expert(blurred.save(tmp_path / "b"))
    assert again.config() == blurred.config() and again.state_id == blurred.state_id
    for bad in ({"image_score": "mean"}, {"image_score_sigma": 0}, {"image_score_sigma": "wide"}, {"image_score": "blur-max", "reweight": True}):
        with pytest.raises(MmadError, match="image_score|reweight"):
            create_expert("patchcore", **bad)
    meta_file = tmp_path / "b" / "expert.json"
    meta = json.loads(meta_file.read_text())
    meta["config"]["image_score"] = "median"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(MmadError, match="image_score"):
        load_expert(tmp_path / "b")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.floats(0.05, 5), st.integers(0, 2**31))
def test_blur_max_lies_between_the_grid_min_and_its_max(h, w, sigma, seed):
    from mmad_boost.experts.patch_scores import blur_max

    g = np.random.default_rng(seed).gamma(2.0, size=(h, w)).astype(np.float32)
    b = blur_max(g, sigma)  # a blur averages with non-negative weights (edges mirrored): within the grid's range
    assert g.min() * (1 - 1e-5) - 1e-6 <= b <= g.max() * (1 + 1e-5)
    assert b >= blur_max(np.full_like(g, g.min()), sigma) - 1e-5


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.text(max_size=12), st.sampled_from(["topk", "blur-max"])), st.one_of(st.floats(allow_nan=True), st.text(max_size=6)))
def test_image_score_options_are_accepted_or_refused_in_one_line(rule, sigma):
    try:
        expert = create_expert("patchcore", image_score=rule, image_score_sigma=sigma)
    except MmadError as e:
        assert "image_score" in str(e) and "\n" not in str(e)
    else:
        assert expert.image_score in ("topk", "blur-max") and 0 < expert.image_score_sigma <= 100
