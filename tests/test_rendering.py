"""Expert pictures against known answers on synthetic maps (protocol §7)."""
import numpy as np
import pytest
from PIL import Image

from mmad_boost.errors import MmadError
from mmad_boost.rendering import STYLES, merge_boxes, render

RED = np.array([255, 0, 0], np.uint8)
VIRIDIS_0, VIRIDIS_1 = np.array([68, 1, 84]), np.array([253, 231, 37])


def gray(w=100, h=100, v=100):
    return Image.new("RGB", (w, h), (v, v, v))


def red(img):
    return np.all(np.asarray(img) == RED, axis=2)


def blocks(*specs, shape=(100, 100)):
    m = np.zeros(shape, np.float32)
    for y0, y1, x0, x1, v in specs:
        m[y0:y1, x0:x1] = v
    return m


def test_bbox_two_thirds_threshold_exact_box():
    m = blocks((20, 30, 40, 60, 1.0), (70, 80, 10, 20, 0.5))  # the 0.5 block is under 2/3 of max
    r = render(gray(), m, "bbox")
    assert r.boxes == [(40, 20, 59, 29)]
    expected = np.zeros((100, 100), bool)
    import cv2

    canvas = np.zeros((100, 100, 3), np.uint8)
    cv2.rectangle(canvas, (40, 20), (59, 29), (255, 0, 0), 2)
    expected = np.all(canvas == RED, axis=2)
    assert np.array_equal(red(r.image), expected)  # pixel for pixel: only that 2 px rectangle is red
    assert red(r.image)[20, 45] and red(r.image)[21, 45] and not red(r.image)[25, 50]
    assert not red(r.image)[70:80, 10:20].any()
    assert r.marked and "even when the query image is normal" in r.sentence


def test_median_fallback_when_more_than_half_pass():
    m = blocks((0, 100, 30, 100, 0.8), (40, 60, 80, 95, 1.0))  # 70 % of pixels above 2/3 of max
    r = render(gray(), m, "bbox")
    assert r.boxes == [(80, 40, 94, 59)]  # median (0.8) threshold keeps only the top block


def test_area_filter_drops_contours_under_a_thousandth():
    m = blocks((10, 13, 10, 13, 1.0), (50, 55, 50, 55, 1.0))  # contour areas 4 and 16 vs limit 10
    r = render(gray(), m, "contour")
    assert not red(r.image)[8:16, 8:16].any()
    assert red(r.image)[50, 50:55].all() and red(r.image)[54, 50:55].all()
    assert not red(r.image)[52, 52]  # contour, not filled (5x5 block with 2 px lines leaves the centre)


def test_boxes_merge_by_nearest_centres_to_two_or_three_for_gt():
    specs = [(10, 15, 10, 15, 1.0), (10, 15, 20, 25, 1.0), (80, 85, 80, 85, 1.0), (60, 65, 80, 85, 1.0)]
    m = blocks(*specs)
    assert sorted(render(gray(), m, "bbox").boxes) == [(10, 10, 24, 14), (80, 60, 84, 84)]
    gt = sorted(render(gray(), m > 0, "bbox", is_gt=True).boxes)
    assert gt == [(10, 10, 24, 14), (80, 60, 84, 64), (80, 80, 84, 84)]
    assert merge_boxes([(0, 0, 1, 1)], 2) == [(0, 0, 1, 1)]


def test_gt_has_no_area_filter_and_normal_is_plain():
    m = blocks((50, 52, 50, 52, 1.0)) > 0  # 4 px: would be filtered for a model map
    assert render(gray(), m, "bbox", is_gt=True).boxes == [(50, 50, 51, 51)]
    assert render(gray(), m.astype(np.float32), "bbox").boxes == []
    for style in STYLES:
        r = render(gray(), None, style, is_gt=True)
        assert not r.marked and np.array_equal(np.asarray(r.image), np.asarray(gray()))


def test_scaled_to_512_and_map_resized():
    img = gray(1024, 512)
    m = blocks((8, 16, 32, 48, 1.0), shape=(32, 64))  # map at 1/16 scale
    r = render(img, m, "bbox", resample="nearest")
    assert r.image.size == (512, 256)
    assert r.boxes == [(256, 64, 383, 127)]
    assert render(gray(300, 200), np.zeros((20, 30)), "bbox").image.size == (300, 200)  # never upscaled


def test_highlight_blends_viridis_alpha():
    m = blocks((20, 40, 20, 40, 1.0))
    out = np.asarray(render(gray(), m, "highlight").image).astype(int)
    assert np.array_equal(out[30, 30], np.round(0.7 * VIRIDIS_1 + 0.3 * 100).astype(int))
    assert np.array_equal(out[80, 80], np.round(0.7 * VIRIDIS_0 + 0.3 * 100).astype(int))
    gt = np.asarray(render(gray(), m > 0, "highlight", is_gt=True).image).astype(int)
    assert np.array_equal(gt[30, 30], np.round(0.4 * VIRIDIS_1 + 0.6 * 100).astype(int))


def test_mask_and_heatmap_are_the_viridis_map_alone():
    m = np.tile(np.linspace(2, 6, 100, dtype=np.float32), (100, 1))  # normalised to 0..1 left to right
    for style in ("mask", "heatmap"):
        out = np.asarray(render(gray(), m, style).image).astype(int)
        assert np.array_equal(out[50, 0], VIRIDIS_0) and np.array_equal(out[50, 99], VIRIDIS_1)


def test_calibrated_draws_only_above_threshold_and_nothing_when_normal():
    m = blocks((20, 30, 20, 30, 5.0), (60, 80, 60, 80, 2.0))
    r = render(gray(), m, "bbox", mode="calibrated", pixel_threshold=3.0, decision=True)
    assert r.boxes == [(20, 20, 29, 29)] and r.marked and "calibrated" in r.sentence
    r = render(gray(), m, "bbox", mode="calibrated", pixel_threshold=10.0, decision=True)
    assert not r.marked and not red(r.image).any()
    for style in STYLES:
        r = render(gray(), m, style, mode="calibrated", pixel_threshold=1.0, decision=False)
        assert not r.marked and "marked nothing" in r.sentence
        if style in ("bbox", "contour", "highlight"):
            assert np.array_equal(np.asarray(r.image), np.asarray(gray()))
    hl = np.asarray(render(gray(), m, "highlight", mode="calibrated", pixel_threshold=3.0, decision=True).image)
    assert (hl[90, 90] == 100).all() and not (hl[25, 25] == 100).all()
    with pytest.raises(MmadError):
        render(gray(), m, "bbox", mode="calibrated")


def test_faithful_marks_even_a_smooth_noise_map():
    import cv2

    rng = np.random.default_rng(0)  # a normal image's map: low, smooth noise; normalisation still marks it
    noise = cv2.GaussianBlur(rng.random((100, 100)).astype(np.float32), (33, 33), 4) * 0.01
    r = render(gray(), noise, "bbox")
    assert r.marked and 1 <= len(r.boxes) <= 2


def test_unknown_style_is_a_user_error():
    with pytest.raises(MmadError):
        render(gray(), None, "circles")
