"""Bootstrap intervals (mmad_boost.reporting.uncertainty) on seeded synthetic records with known accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from mmad_boost.protocol.scoring import SUBTASKS, score_records
from mmad_boost.reporting.uncertainty import CELLS, format_interval, noise_word, paired_delta_intervals, score_intervals

TYPES = SUBTASKS[1:5]  # defect questions, asked on defective images only
OBJECT = ("Object Classification", "Object Structure")


def synthetic(rng, n_images=120, datasets=("D1", "D2"), p_normal=0.7, p_abnormal=0.55, p_other=0.6, spread=8.0, flip=None):
    """Records whose per-image accuracy is drawn from a Beta with a known mean: questions of one image
    share its difficulty (the clustering the bootstrap must respect). Returns (records, true table)."""
    records = []
    for ds in datasets:
        for i in range(n_images):
            normal = i % 3 == 0
            key = f"{ds}/cat/test/{'good' if normal else 'bad'}/{i:04d}.png"
            mean_ad = p_normal if normal else p_abnormal
            a_ad = rng.beta(mean_ad * spread, (1 - mean_ad) * spread)
            a_other = rng.beta(p_other * spread, (1 - p_other) * spread)
            qs = [("Anomaly Detection", a_ad)] + [(t, a_other) for t in OBJECT]
            if not normal:
                qs += [(t, a_other) for t in TYPES]
            for j, (t, a) in enumerate(qs):
                right = rng.random() < a
                records.append(
                    {
                        "qid": f"{key}#{j}",
                        "image": key,
                        "question_type": t,
                        "correct_answer": "A",
                        "gpt_answer": "A" if right else "B",
                        "options": {"A": "Yes", "B": "No"},
                    }
                )
    truth = {"Anomaly Detection": 100 * (p_normal + p_abnormal) / 2, "Overkill": 100 * (1 - p_normal), "Miss": 100 * (1 - p_abnormal)}
    for subtask in SUBTASKS[1:]:
        truth[subtask] = 100 * p_other
    truth["Average"] = sum(truth[s] for s in SUBTASKS) / len(SUBTASKS)
    return records, truth


def test_point_estimates_are_mmad_scores():
    rng = np.random.default_rng(1)
    records, _ = synthetic(rng, n_images=30)
    records[3]["gpt_answer"] = None  # a parse failure: dropped by both
    scores = score_records(records).rows
    iv = score_intervals(records, n_boot=50)
    for row in scores:
        for col in CELLS:
            assert iv.point[row][col] == pytest.approx(scores[row][col]), (row, col)
            lo, hi = iv.get(row, col)
            assert lo <= scores[row][col] + 1e-9 and scores[row][col] <= hi + 1e-9 or col in ("Overkill", "Miss")


def test_seeded_and_reproducible():
    records, _ = synthetic(np.random.default_rng(2), n_images=40)
    a = score_intervals(records, n_boot=200, seed=7)
    b = score_intervals(records, n_boot=200, seed=7)
    c = score_intervals(records, n_boot=200, seed=8)
    assert a.rows == b.rows
    assert a.rows != c.rows


@pytest.mark.slow
def test_95_percent_intervals_cover_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    reps = 200
    hits = {c: 0 for c in CELLS}
    for k in range(reps):
        records, truth = synthetic(rng, n_images=150)
        iv = score_intervals(records, n_boot=400, seed=k)
        for col in CELLS:
            lo, hi = iv.get("Average", col)
            hits[col] += lo <= truth[col] <= hi
    rates = {c: hits[c] / reps for c in CELLS}
    # binomial sd of a 95 % rate over 200 repetitions is 1.5 points: allow ~3 sd either way
    for col, rate in rates.items():
        assert 0.90 <= rate <= 0.99, (col, rate, rates)


@pytest.mark.slow
def test_paired_delta_intervals_cover_the_true_difference():
    """Run B shares each image's difficulty with run A and also gets a wrong answer right with probability q:
    the true delta of a subtask with accuracy p is 100 q (1 - p)."""
    rng = np.random.default_rng(11)
    q, reps, hits = 0.15, 200, {"Defect Classification": 0, "Object Analysis": 0}
    for k in range(reps):
        a, _ = synthetic(rng, n_images=150)
        b = [dict(r, gpt_answer="A" if (r["gpt_answer"] == "A" or rng.random() < q) else "B") for r in a]
        d = paired_delta_intervals(a, b, n_boot=400, seed=k)
        for col in hits:
            lo, hi = d.get("Average", col)
            hits[col] += lo <= 100 * q * (1 - 0.6) <= hi
    for col, h in hits.items():
        assert 0.90 <= h / reps <= 0.99, (col, h / reps)


def test_question_level_resampling_would_be_too_narrow():
    """Questions of one image share its difficulty: resampling images gives a wider (honest) interval for
    the Average than treating every question as its own image would."""
    records, _ = synthetic(np.random.default_rng(3), n_images=200, spread=2.0)
    as_images = score_intervals(records, n_boot=500).get("Average", "Average")
    split = [dict(r, image=r["image"].replace(".png", f"-{i}.png")) for i, r in enumerate(records)]
    as_questions = score_intervals(split, n_boot=500).get("Average", "Average")
    assert (as_images[1] - as_images[0]) > 1.3 * (as_questions[1] - as_questions[0])


def test_paired_delta_is_narrower_than_unpaired_when_runs_are_correlated():
    rng = np.random.default_rng(4)
    a, _ = synthetic(rng, n_images=150)
    b = [dict(r) for r in a]
    for r in b:  # run B: the same answers except a few changed, some to right
        if rng.random() < 0.1:
            r["gpt_answer"] = "A" if rng.random() < 0.7 else "B"
    paired = paired_delta_intervals(a, b, n_boot=500, seed=1)
    unpaired = paired_delta_intervals(a, b, n_boot=500, seed=1, paired=False)
    for col in ("Average", "Anomaly Detection", "Defect Classification"):
        pw = np.diff(paired.get("Average", col))[0]
        uw = np.diff(unpaired.get("Average", col))[0]
        assert pw < 0.6 * uw, (col, pw, uw)
    sa, sb = score_records(a).rows["Average"], score_records(b).rows["Average"]
    assert paired.point["Average"]["Average"] == pytest.approx(sb["Average"] - sa["Average"])


def test_identical_runs_have_a_zero_delta_within_noise():
    a, _ = synthetic(np.random.default_rng(5), n_images=20)
    d = paired_delta_intervals(a, a, n_boot=100)
    assert d.get("Average", "Average") == (0.0, 0.0)
    assert not d.significant("Average", "Average")


def test_a_large_real_difference_is_beyond_noise():
    rng = np.random.default_rng(6)
    a, _ = synthetic(rng, n_images=100, p_other=0.4)
    b, _ = synthetic(rng, n_images=100, p_other=0.9)
    b = [dict(r, image=ra["image"], qid=ra["qid"], question_type=ra["question_type"]) for r, ra in zip(b, a)]
    d = paired_delta_intervals(a, b, n_boot=300)
    assert d.significant("Average", "Defect Classification")
    assert noise_word(d.get("Average", "Defect Classification")) == "beyond noise"
    assert format_interval(d.get("Average", "Average"), signed=True).startswith("[+")


def test_runs_on_different_images_are_paired_on_the_common_ones():
    rng = np.random.default_rng(7)
    a, _ = synthetic(rng, n_images=30)
    b = [r for r in a if not r["image"].endswith("0001.png")]
    d = paired_delta_intervals(a, b, n_boot=50)
    assert sum(d.images.values()) == len({r["image"] for r in b})
    assert d.notes and "both runs answered" in d.notes[0]


def test_missing_cells_have_no_interval():
    records = [{"image": "D/c/test/good/1.png", "question_type": "Anomaly Detection", "correct_answer": "B", "gpt_answer": "B"}]
    iv = score_intervals(records, n_boot=20)
    assert iv.get("D", "Defect Classification") is None
    assert iv.get("D", "Anomaly Detection") == (100.0, 100.0)
    assert score_intervals([], n_boot=10).rows == {}
    assert "few images (D: 1" in iv.describe()


# -- properties over arbitrary record sets (hypothesis) -------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_TYPES = SUBTASKS + ("Object Structure", "Object Details", "Something Else")
_record = st.fixed_dictionaries(
    {
        "image": st.builds(
            lambda d, kind, i: f"{d}/c/test/{kind}/{i}.png", st.sampled_from(["D1", "D2", "D3"]), st.sampled_from(["good", "bad"]), st.integers(0, 6)
        ),
        "question_type": st.sampled_from(_TYPES),
        "correct_answer": st.sampled_from(["A", "B", "C", None, "x"]),
        "gpt_answer": st.sampled_from(["A", "B", "C", None, "", "Z"]),
    }
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_record, max_size=40))
def test_point_estimates_equal_mmad_scores_for_any_records(records):
    scores = score_records(records).rows
    iv = score_intervals(records, n_boot=30)
    for row, vals in scores.items():
        for col in CELLS:
            want = vals.get(col)
            got = iv.point.get(row, {}).get(col)
            assert (want is None) == (got is None), (row, col, want, got)
            if want is not None:
                assert got == pytest.approx(want)
                lo, hi = iv.get(row, col)
                assert lo <= hi


@settings(max_examples=40, deadline=None)
@given(st.lists(_record, max_size=40))
def test_a_run_against_itself_has_a_zero_delta(records):
    d = paired_delta_intervals(records, records, n_boot=20)
    for row in d.rows.values():
        for b in row.values():
            assert b is None or b == (0.0, 0.0)
