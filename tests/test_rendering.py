"""Expert pictures against known answers on synthetic maps (protocol §7), and faithful pictures
against tests/mmad_drawing_reference.py, a separate plain reading of §7: zero differing pixels."""

import cv2
import matplotlib
import numpy as np
import pytest
from PIL import Image

from mmad_boost.errors import MmadError
from mmad_boost.experts.rendering import STYLES, merge_boxes, render

RED = np.array([255, 0, 0], np.uint8)


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
    assert r.boxes == [(40, 20, 59, 29)]  # the region's own extent
    canvas = np.zeros((100, 100, 3), np.uint8)
    cv2.rectangle(canvas, (40, 20), (60, 30), (255, 0, 0), 2)  # MMAD draws to (x + w, y + h)
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
    assert merge_boxes([(0, 0, 2, 2)], 2) == [(0, 0, 2, 2)]


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


def test_highlight_by_hand_blend_then_alpha_composite():
    """Worked by hand for gray 100 under viridis(1) = (253, 231, 36): Image.blend onto transparent
    black keeps trunc(0.7 c) = (177, 161, 25) with alpha trunc(0.7 x 255) = 178; alpha_composite
    then gives round(177 x 178/255 + 100 x 77/255) etc. in Pillow's fixed point = (154, 143, 48),
    not the plain 0.7/0.3 mix (207, 192, 55). Ground truth: addWeighted 0.6/0.4 = (161, 152, 74)."""
    m = blocks((20, 40, 20, 40, 1.0))
    out = np.asarray(render(gray(), m, "highlight").image).astype(int)
    assert out[30, 30].tolist() == [154, 143, 48]
    assert out[80, 80].tolist() == [63, 30, 71]  # viridis(0) = (68, 1, 84) -> (47, 0, 58), alpha 178, over 100
    gt = np.asarray(render(gray(), m > 0, "highlight", is_gt=True).image).astype(int)
    assert gt[30, 30].tolist() == [161, 152, 74] and gt[80, 80].tolist() == [87, 60, 94]


def test_viridis_truncated_and_heatmap_divided_by_max():
    m = np.tile(np.linspace(2, 6, 100, dtype=np.float32), (100, 1))  # floor 2 of max 6: 1/3 stays
    out = np.asarray(render(gray(), m, "heatmap").image).astype(int)
    assert out[50, 99].tolist() == [253, 231, 36]  # viridis(1) x 255 = (253.3, 231.1, 36.7), truncated
    third = (np.array(matplotlib.colormaps["viridis"].colors[85]) * 255).astype(int)  # 1/3 x 256 = 85.3: entry 85
    assert out[50, 0].tolist() == third.tolist() and out[50, 0].tolist() != [68, 1, 84]  # min-max would give viridis(0)
    mask = np.asarray(render(gray(), m, "mask").image)
    # columns 50..99 lie above 2/3 of the maximum: exactly half the pixels, so no median fallback
    assert (mask[:, 50:] == [253, 231, 36]).all() and (mask[:, :50] == [68, 1, 84]).all()


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
    rng = np.random.default_rng(0)  # a normal image's map: low, smooth noise; normalisation still marks it
    noise = cv2.GaussianBlur(rng.random((100, 100)).astype(np.float32), (33, 33), 4) * 0.01
    r = render(gray(), noise, "bbox")
    assert r.marked and 1 <= len(r.boxes) <= 2


def test_unknown_style_is_a_user_error():
    with pytest.raises(MmadError):
        render(gray(), None, "circles")


# -- faithful pictures against an independent reading of §7 (tests/mmad_drawing_reference.py) ----
import mmad_drawing_reference as ref  # noqa: E402

from mmad_boost.experts.rendering import drawing_options  # noqa: E402

MODEL_STYLES = ("bbox", "contour", "highlight", "heatmap", "mask")


def differing(a, b) -> int:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.any(a != b, axis=-1).sum())


def noise_image(w, h, seed=0):
    rng = np.random.default_rng(seed)  # texture, so bicubic and bilinear scaling differ visibly
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def smooth_map(w, h, floor, seed):
    rng = np.random.default_rng(seed)
    m = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), max(w, h) / 25)
    m = (m - m.min()) / (m.max() - m.min())
    return (floor + m**3).astype(np.float32)  # a positive floor, as PatchCore's distances have


def assert_faithful(image, amap, styles=MODEL_STYLES, **kw):
    for style in styles:
        got = render(image, amap, style, **kw).image
        want = ref.model_picture(image, amap, style, nearest=kw.get("resample") == "nearest", foreground=kw.get("foreground", False))
        assert differing(got, want) == 0, style


def test_positive_floor_is_divided_by_max_not_min_max():
    # floor 5, peaks 8 and 6.5: 6.5/8 = 0.81 is above 2/3 (min-max would make it 0.5 and drop it)
    m = blocks((0, 100, 0, 100, 5.0))
    m[10:20, 10:20], m[60:75, 60:80] = 8.0, 6.5
    r = render(gray(), m, "bbox")
    assert sorted(r.boxes) == [(10, 10, 19, 19), (60, 60, 79, 74)]
    assert_faithful(gray(), m)
    heat = np.asarray(render(gray(), m, "heatmap").image)
    assert heat[50, 5].tolist() == ref.colour(np.float32(5 / 8)).tolist() != [68, 1, 84]  # the floor keeps its colour


def test_threshold_is_strictly_above_two_thirds_in_float32():
    m = blocks((10, 20, 10, 20, 3.0), (50, 60, 50, 60, 2.0))  # 2/3 of the maximum exactly: not above
    assert render(gray(), m, "bbox").boxes == [(10, 10, 19, 19)]
    m[50:60, 50:60] = np.nextafter(np.float32(2.0), np.float32(3.0))  # one float32 step above: marked
    assert sorted(render(gray(), m, "bbox").boxes) == [(10, 10, 19, 19), (50, 50, 59, 59)]


def test_box_one_pixel_beyond_on_a_tiny_picture():
    m = np.zeros((14, 18), np.float32)
    m[3:9, 4:12] = 1.0  # rows 3..8, columns 4..11: boundingRect (4, 3, 8, 6), drawn to (12, 9)
    want = [  # OpenCV's 2 px line covers its coordinate +-1, corners cut
        "..................",
        "..................",
        "....#########.....",
        "...###########....",
        "...###########....",
        "...###.....###....",
        "...###.....###....",
        "...###.....###....",
        "...###########....",
        "...###########....",
        "....#########.....",
        "..................",
        "..................",
        "..................",
    ]
    got = red(render(gray(18, 14), m, "bbox").image)
    assert ["".join("#" if v else "." for v in row) for row in got] == want


def test_ties_in_box_merging_first_pair_in_index_order():
    # three equal boxes in a row, centres 30 apart: OpenCV lists them right to left, so pair
    # (0, 1) = (right, middle) is the first of the two tied nearest pairs and is merged
    m = blocks((40, 50, 10, 20, 1.0), (40, 50, 40, 50, 1.0), (40, 50, 70, 80, 1.0))
    assert render(gray(), m, "bbox").boxes == [(10, 40, 19, 49), (40, 40, 79, 49)]
    assert merge_boxes([(70, 40, 10, 10), (40, 40, 10, 10), (10, 40, 10, 10)], 2) == [(10, 40, 10, 10), (40, 40, 40, 10)]
    # the merged box goes last and takes part in the next round
    assert merge_boxes([(0, 0, 2, 2), (4, 0, 2, 2), (50, 50, 2, 2), (8, 0, 2, 2)], 2) == [(50, 50, 2, 2), (0, 0, 10, 2)]
    assert ref.merge([(0, 0, 2, 2), (4, 0, 2, 2), (50, 50, 2, 2), (8, 0, 2, 2)], 2) == [(50, 50, 2, 2), (0, 0, 10, 2)]
    assert_faithful(gray(), m, styles=("bbox",))


def test_contour_area_exactly_a_thousandth_is_dropped():
    # 100 x 100: limit 0.001 x 100 x 100 = 10; a block of a x b pixels has contour area (a-1)(b-1)
    m = blocks((10, 13, 10, 16, 1.0), (50, 54, 50, 55, 1.0), (80, 82, 10, 21, 1.0))  # areas 10, 12, 10
    r = render(gray(), m, "bbox")
    assert r.boxes == [(50, 50, 54, 53)]
    assert render(gray(), m > 0, "bbox", is_gt=True).boxes.__len__() == 3  # ground truth: no area filter
    assert_faithful(gray(), m, styles=("bbox", "contour", "mask"))


def test_more_than_half_above_uses_the_element_at_half_not_the_median_mean():
    # 5000 px at 0.8, 4900 at 0.85, 100 at 1.0: all above 2/3, so the threshold becomes sorted[5000]
    # = 0.85 (np.median would give 0.825 and also mark the 0.85 rows)
    m = np.full((100, 100), 0.8, np.float32)
    m[50:, :] = 0.85
    m[80:90, 40:50] = 1.0
    r = render(gray(), m, "bbox")
    assert r.boxes == [(40, 80, 49, 89)]
    assert_faithful(gray(), m, styles=("bbox", "contour"))


def test_exactly_half_above_keeps_the_two_thirds_threshold():
    m = np.zeros((10, 10), np.float32)
    m[:5, :] = 1.0  # 50 of 100 pixels: not more than half
    assert render(gray(10, 10), m, "bbox").boxes == [(0, 0, 9, 4)]


@pytest.mark.parametrize(
    "size,map_size", [((1000, 701), (250, 175)), ((333, 1001), (224, 224)), ((2048, 97), (512, 24)), ((640, 480), (640, 480)), ((300, 200), (75, 50))]
)
def test_over_512_and_odd_aspect_ratios_equal_the_reference(size, map_size):
    image = noise_image(*size)
    w, h = size
    s = 512 / max(w, h)
    want_size = (int(w * s), int(h * s)) if max(w, h) > 512 else size
    for seed in (0, 1):
        amap = smooth_map(*map_size, floor=0.4 + seed, seed=seed)
        assert render(image, amap, "bbox").image.size == want_size
        assert_faithful(image, amap)
    assert render(noise_image(1000, 701), None, "bbox").image.size == (512, 358)  # int(358.9), not round()


def test_query_scaled_bicubic():
    image = noise_image(1000, 701)
    got = np.asarray(render(image, np.zeros((7, 10), np.float32), "contour").image)
    assert np.array_equal(got, np.asarray(image.resize((512, 358), Image.BICUBIC)))
    assert not np.array_equal(got, np.asarray(image.resize((512, 358), Image.BILINEAR)))


def test_nearest_resampled_maps_equal_the_reference():
    amap = smooth_map(37, 37, floor=0.2, seed=3)  # AnomalyCLIP-like: resized nearest
    assert_faithful(noise_image(800, 600), amap, resample="nearest")


@pytest.mark.parametrize("values", [(0, 255), (0, 1), (0, 1, 2, 3), (0, 128, 255)])
def test_ground_truth_pictures_equal_the_reference(values):
    rng = np.random.default_rng(len(values))
    mask = np.zeros((700, 900), np.uint8)
    for k, (y, x) in enumerate(rng.integers(20, 640, (6, 2))):  # six blobs: bbox merges down to 3
        mask[y : y + 25 + 5 * k, x : x + 30] = values[1 + k % (len(values) - 1)]
    mask[300:302, 450:452] = values[-1]  # 4 px: kept, no area filter for ground truth
    image = noise_image(900, 700, seed=2)
    from mmad_boost.experts import create_expert

    gt = create_expert("gt")
    via_expert = gt.predict(image, mask=mask).map  # the path a benchmark run takes
    for style in STYLES:
        want = ref.gt_picture(image, mask, style)
        assert differing(render(image, mask, style, is_gt=True).image, want) == 0, style
        assert differing(render(image, via_expert, style, **drawing_options(gt)).image, want) == 0, style
    if values == (0, 128, 255):  # MMAD: a maximum of 255 means // 255, so the 128 blobs are not marked
        region = render(image, mask, "mask", is_gt=True).region
        assert region.sum() == cv2.resize((mask == 255).astype(np.uint8), region.shape[::-1], interpolation=cv2.INTER_NEAREST).sum()
    assert len(render(image, mask, "bbox", is_gt=True).boxes) == 3


def test_ground_truth_mask_colours_truncated():
    mask = blocks((20, 40, 20, 40, 1.0)) > 0
    out = np.asarray(render(gray(), mask, "mask", is_gt=True).image)
    assert out[30, 30].tolist() == [253, 231, 36] and out[5, 5].tolist() == [68, 1, 84]


def object_image():
    im = Image.new("RGB", (200, 160), (235, 235, 235))
    from PIL import ImageDraw

    ImageDraw.Draw(im).ellipse((50, 30, 150, 130), fill=(150, 40, 30))
    return im


def test_grabcut_foreground_zeroes_the_background_as_mmad():
    im = object_image()
    m = np.full((160, 200), 1.0, np.float32)
    m[60:80, 90:110] = 5.0  # on the object
    m[70:90, 160:185] = 9.0  # background inside the rectangle: zeroed, so not marked
    m[:, :2] = 20.0  # the 1 % border strip (2 px) is GrabCut's definite background, kept by `mask != 2`
    r = render(im, m, "bbox", foreground=True)
    assert not any(x0 >= 150 and x1 < 190 and y0 >= 60 for x0, y0, x1, y1 in r.boxes)
    heat = np.asarray(render(im, m, "heatmap", foreground=True).image)
    assert heat[80, 0].tolist() == [253, 231, 36] and heat[80, 170].tolist() == [68, 1, 84]
    assert_faithful(im, m, foreground=True)
    assert_faithful(im, smooth_map(50, 40, floor=0.3, seed=5), foreground=True)


def test_grabcut_filter_skipped_when_under_five_percent():
    im = gray(120, 90)  # uniform: GrabCut keeps only the border strip (< 5 %), so nothing is zeroed
    m = smooth_map(120, 90, floor=0.5, seed=7)
    assert ref.grabcut_foreground(im) is None
    for style in MODEL_STYLES:
        assert differing(render(im, m, style, foreground=True).image, render(im, m, style).image) == 0


def test_drawing_options_follow_the_expert():
    from mmad_boost.experts import create_expert

    fewshot = create_expert("patchcore-fewshot")
    opts = drawing_options(fewshot)
    assert opts == {"is_gt": False, "resample": "bilinear", "normalisation": "max", "foreground": True}
    assert drawing_options(create_expert("gt"))["is_gt"] is True
    from mmad_boost.experts.anomalyclip import AnomalyCLIP  # class attributes: no CLIP weights needed

    assert drawing_options(AnomalyCLIP)["normalisation"] == "min-max" and drawing_options(AnomalyCLIP)["resample"] == "nearest"
    cfg = fewshot.config()  # MMAD's expert runs (protocol §7), on this machine's weights
    assert (cfg["mode"], cfg["size"], cfg["coreset_ratio"], cfg["knn"], cfg["topk"]) == ("few-shot", 224, 0.99, 1, 0.0)
    assert create_expert("patchcore-fewshot", foreground=False).config()["foreground"] is False
    assert create_expert("patchcore").config()["foreground"] is False  # full mode keeps its own defaults


def test_min_max_normalisation_for_anomalyclip_maps():
    m = blocks((0, 100, 0, 100, 5.0))
    m[60:75, 60:80] = 6.5
    m[10:20, 10:20] = 8.0
    assert render(gray(), m, "bbox", normalisation="min-max").boxes == [(10, 10, 19, 19)]  # 0.5 < 2/3
    with pytest.raises(MmadError):
        render(gray(), m, "bbox", normalisation="sum")


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    w=st.integers(8, 1400),
    h=st.integers(8, 1400),
    mw=st.integers(4, 300),
    mh=st.integers(4, 300),
    floor=st.floats(0.0, 50.0),
    seed=st.integers(0, 2**16),
    nearest=st.booleans(),
)
def test_any_size_any_floor_equals_the_reference(w, h, mw, mh, floor, seed, nearest):
    image = noise_image(w, h, seed=seed)
    amap = smooth_map(mw, mh, floor=floor, seed=seed)
    assert_faithful(image, amap, resample="nearest" if nearest else "bilinear")


def test_benchmark_masks_read_as_mmad(tmp_path):
    from mmad_boost.protocol.data import load_mask

    raw = np.zeros((40, 50), np.uint8)
    raw[5:15, 5:15], raw[20:30, 20:30] = 255, 128  # maximum 255: only 255 counts (// 255)
    Image.fromarray(raw).save(tmp_path / "m.png")
    assert np.array_equal(load_mask(tmp_path / "m.png"), raw == 255)
    labels = np.zeros((40, 50), np.uint8)
    labels[5:15, 5:15], labels[20:30, 20:30] = 1, 2  # labels: > 0
    Image.fromarray(labels).save(tmp_path / "l.png")
    assert np.array_equal(load_mask(tmp_path / "l.png"), labels > 0)
