"""PatchCore's region-size-aware image score (`image_score="scan"`): each blur width's grid maximum
standardised by the training normals, the largest kept; learnt at fit, chosen by `expert fit
--defects`, stored and reloaded, and refused in one line when damaged."""

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmad_boost.errors import MmadError
from mmad_boost.experts import create_expert, load_expert
from mmad_boost.experts.base import NormalScores, fit_and_calibrate
from mmad_boost.experts.patch_scores import SCAN_SIGMAS, blur_max, knn_patch_scores, scan_null, scan_score

from fixtures import grid_patchcore


def _sharp_and_wide(rng):
    """Normals: level 1 with patch noise (sd 0.1). Sharp defects: one patch at 1.65 (above every
    normal's largest patch; blurred, it drowns in the noise). Wide defects: a 16 x 16 region raised
    by 0.07 (no patch above a normal's largest; blurred, far above the normals' blurred maxima)."""
    normals = [1 + 0.1 * rng.standard_normal((48, 48)) for _ in range(20)]
    sharp, wide = [], []
    for _ in range(6):
        g = 1 + 0.1 * rng.standard_normal((48, 48))
        g[rng.integers(8, 40), rng.integers(8, 40)] = 1.65
        sharp.append(g)
        g = 1 + 0.1 * rng.standard_normal((48, 48))
        y, x = rng.integers(4, 28, 2)
        g[y : y + 16, x : x + 16] += 0.07
        wide.append(g)
    return normals, sharp, wide


def test_scan_catches_sharp_and_wide_defects_where_every_single_width_misses_one_kind(tmp_path):
    from mmad_boost.experts.score_choice import choose_image_score

    normals, sharp, wide = _sharp_and_wide(np.random.default_rng(0))
    images = [Image.new("RGB", (48, 48)) for _ in sharp + wide]
    expert = grid_patchcore({id(im): g for im, g in zip(images, sharp + wide)})
    expert._calibration_patches = [g.astype(np.float32) for g in normals]
    expert.calibrate_from(NormalScores([float(g.max()) for g in normals], [float(g.max()) for g in normals], "leave-one-out", 0.1))
    rows = choose_image_score(expert, images)
    caught = {r["label"]: r["caught"] for r in rows}
    scan = caught.pop(f"scan over blur widths {', '.join(f'{s:g}' for s in SCAN_SIGMAS)}")
    assert scan == 12 and max(caught.values()) <= 9, (scan, caught)  # every single width sees one kind, and a few of the other
    assert expert.image_score == "scan" and expert.image_score_null == scan_null(expert._calibration_patches)
    assert all(expert.predict(im).decision for im in images)
    again = load_expert(expert.save(tmp_path / "scan"))
    assert again.config() == expert.config() and again.state_id == expert.state_id
    again.features = expert.features  # the same known grids in place of the backbone
    assert [again.predict(im).score for im in images] == pytest.approx([expert.predict(im).score for im in images])


def test_scan_fit_learns_each_width_from_normals_left_out_of_the_bank():
    rng = np.random.default_rng(1)
    grids = [1 + 0.1 * rng.standard_normal((48, 48)) for _ in range(8)]
    images = [Image.new("RGB", (48, 48)) for _ in grids]
    expert = grid_patchcore({id(im): g for im, g in zip(images, grids)}, image_score="scan", coreset_ratio=0.5)
    expert.fitted, expert.bank = False, None
    with pytest.raises(MmadError, match="scan.*fit"):
        expert._score_features(images[0], expert.features(images[:1])[0], expert._index_of(np.zeros((1, 2), np.float32)))
    fit_and_calibrate(expert, images, false_marks=0.2)
    np.testing.assert_allclose(expert.image_score_null, scan_null(expert._calibration_patches), rtol=1e-6)
    assert expert.normals.scores == pytest.approx([scan_score(g, expert.image_score_null) for g in expert._calibration_patches], rel=1e-6)
    assert not hasattr(expert, "_left_out")  # the left-out searches are not kept after calibration
    feats = expert.features(images)
    for f, left_out in zip(feats, expert._calibration_patches):
        whole = knn_patch_scores(expert._index, np.ascontiguousarray(f.reshape(-1, 2)), expert.knn)[0].reshape(left_out.shape)
        assert (left_out >= whole - 1e-5).all() and (left_out > whole + 1e-5).any()  # the bank without the image is farther


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.floats(-50, 50), st.floats(0.1, 20))
def test_scan_score_is_shift_and_scale_equivariant_and_never_below_the_largest_patch(seed, shift, scale):
    rng = np.random.default_rng(seed)
    normals = [rng.gamma(2.0, size=(12, 16)) for _ in range(6)]
    query = rng.gamma(2.0, size=(12, 16))
    null, moved_null = scan_null(normals), scan_null([scale * g + shift for g in normals])
    assume(all(b > 1.01e-3 * abs(a) + 1e-9 for a, b in null + moved_null))  # the sd floor (a thousandth of the mean) is not equivariant
    s = scan_score(query, null)
    assert s >= query.max() - 1e-6 * (1 + abs(query.max()))  # the unblurred width alone gives the largest patch back
    moved = scan_score(scale * query + shift, moved_null)
    assert moved == pytest.approx(scale * s + shift, rel=1e-4, abs=1e-4 * (1 + abs(shift)))  # blurs run in float32
    assert all(blur_max(query, w) <= query.max() + 1e-6 for w in SCAN_SIGMAS if w)


bad_null = st.one_of(
    st.just("wide"),
    st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=3), max_size=6),
    st.lists(st.text(max_size=3), max_size=4),
    st.integers(),
)


@settings(max_examples=80, deadline=None)
@given(bad_null)
def test_a_damaged_scan_null_is_refused_in_one_line_naming_the_key(null):
    try:
        expert = create_expert("patchcore", image_score="scan", image_score_null=null)
    except MmadError as e:
        assert "image_score_null" in str(e) and "\n" not in str(e)
    else:  # accepted only as one finite [mean, sd > 0] pair per width
        assert len(expert.image_score_null) == len(SCAN_SIGMAS) and all(np.isfinite(a) and b > 0 for a, b in expert.image_score_null)


def test_scan_in_a_folder_is_checked_on_load(tmp_path):
    expert = grid_patchcore({}, image_score="scan", image_score_null=[[1.0, 0.1]] * len(SCAN_SIGMAS))
    folder = expert.save(tmp_path / "e")
    assert load_expert(folder).image_score_null == expert.image_score_null
    meta = json.loads((folder / "expert.json").read_text())
    for damaged in ([[1.0, 0.0]] * len(SCAN_SIGMAS), [[1.0, 0.1]], "wide", [["a", "b"]] * len(SCAN_SIGMAS)):
        meta["config"]["image_score_null"] = damaged
        (folder / "expert.json").write_text(json.dumps(meta))
        with pytest.raises(MmadError, match="image_score_null") as e:
            load_expert(folder)
        assert "\n" not in str(e.value)
    with pytest.raises(MmadError, match="full mode"):
        create_expert("patchcore", image_score="scan", mode="few-shot")
    with pytest.raises(MmadError, match="reweight"):
        create_expert("patchcore", image_score="scan", reweight=True, topk=0, knn=1)
