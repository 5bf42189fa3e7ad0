"""baseline:features: prompt reading and rules (fast), then the real packaged weights (slow)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmad_boost.protocol.data import Benchmark
from mmad_boost.models import create_model
from mmad_boost.models.feature_baseline import (
    FeatureBaseline,
    _parse_parts,
    grid_shares,
    knowledge_entries,
    option_cells,
    question_kind,
    read_prompt,
    red_region,
)
from mmad_boost.protocol.prompt import Prompt, Query, build_prompt
from mmad_boost.running.records import read_records
from mmad_boost.running.runner import Runner

KNOWLEDGE = (
    " <Normal Characteristics>\n Description: green glossy capsules, elongated softgel supplements.\n"
    " <Capsule Anomalies>\n Description: discoloration with reddish hues, bubbles inside the capsule, irregular shapes."
)


def _blob(colour=(200, 120, 40), defect=None, size=128):
    im = Image.new("RGB", (size, size), (30, 30, 30))
    d = ImageDraw.Draw(im)
    d.ellipse((16, 16, size - 16, size - 16), fill=colour)
    if defect:
        d.rectangle(defect, fill=(250, 250, 250))
    return im


def test_question_kinds():
    yn = {"A": "Yes", "B": "No"}
    assert question_kind("Is there any defect in the object?", yn) == "anomaly"
    assert question_kind("Where in the image is the defect located?", {"A": "top left", "B": "center"}) == "localisation"
    assert question_kind("What kind of product is shown in the image?", {"A": "fryum", "B": "bottle"}) == "object"
    assert question_kind("What type of defect is present on the object?", {"A": "scratch", "B": "hole"}) == "defect"
    assert question_kind("What colour are the capsules?", {"A": "green", "B": "red"}) == "structure"


def test_option_cells_and_grid_shares():
    assert option_cells("top left and center") == [0, 4]
    assert option_cells("bottom right") == [8] and option_cells("top, left and right") == [1, 3, 5]
    region = np.zeros((90, 90), bool)
    region[0:20, 0:20] = True
    region[40:50, 40:50] = True
    shares = grid_shares(region)
    assert shares.argmax() == 0 and shares[4] > 0 and shares[[1, 2, 3, 5, 6, 7, 8]].sum() == 0


def test_red_marks_are_filled_by_their_boxes():
    im = Image.new("RGB", (99, 99), (40, 40, 40))
    ImageDraw.Draw(im).rectangle((70, 70, 90, 90), outline=(255, 0, 0), width=2)
    region = red_region(im)
    assert region[80, 80] and not region[10, 10]
    assert grid_shares(region).argmax() == GRID_BOTTOM_RIGHT


GRID_BOTTOM_RIGHT = 8


def test_knowledge_entries():
    entries = knowledge_entries(KNOWLEDGE)
    assert [t for t, _ in entries] == ["Normal Characteristics", "Capsule Anomalies"]
    assert "bubbles" in entries[1][1] and "bubbles" not in entries[0][1]
    assert knowledge_entries("plain text") == [("", "plain text")] and knowledge_entries("") == []


def test_prompt_parts_read_like_the_query():
    expert = Image.new("RGB", (20, 20))
    q = Query(
        question="Where is the defect?",
        options={"A": "top", "B": "center"},
        image=Image.new("RGB", (30, 30)),
        templates=[Image.new("RGB", (10, 10))],
        knowledge=KNOWLEDGE,
        expert_image=expert,
        expert_sentence="The following image is an expert's analysis.",
    )
    built = build_prompt(q)
    from_parts = _parse_parts(Prompt(parts=built.parts).parts)
    direct = read_prompt(built)
    assert from_parts.options == direct.options == {"A": "top", "B": "center"}
    assert from_parts.question == "Where is the defect?"
    assert from_parts.image is q.image and from_parts.templates == q.templates and from_parts.expert_image is expert
    assert "Capsule Anomalies" in from_parts.knowledge and from_parts.expert_sentence.startswith("The following image")


@pytest.fixture(scope="module")
def baseline():
    return FeatureBaseline()


@pytest.mark.slow
def test_packaged_efficientnet_weights_are_real(baseline):
    from skimage import data

    _, probs = baseline.features(Image.fromarray(data.chelsea()))
    top = [baseline._classes[i] for i in np.argsort(-probs)[:3]]
    assert any(c in ("tabby", "tiger cat", "Egyptian cat") for c in top), top


@pytest.mark.slow
def test_anomaly_detection_and_localisation_from_templates(baseline):
    templates = [_blob()]
    normal, defective = _blob(), _blob(defect=(84, 84, 104, 100))
    assert not baseline.is_anomalous(normal, templates)[0]
    assert baseline.is_anomalous(defective, templates)[0]

    def ask(image, question, options):
        return baseline.generate(build_prompt(Query(question=question, options=options, image=image, templates=templates)))

    assert ask(defective, "Is there any defect in the object?", {"A": "No", "B": "Yes"}) == "Answer: B"
    assert ask(normal, "Is there any defect in the object?", {"A": "No", "B": "Yes"}) == "Answer: A"
    where = {"A": "top left", "B": "bottom right", "C": "top", "D": "left"}
    assert ask(defective, "Where in the image is the defect located?", where) == "Answer: B"


@pytest.mark.slow
def test_expert_pictures_inform_the_answer(baseline):
    image = _blob()
    marked = image.copy()
    ImageDraw.Draw(marked).rectangle((5, 5, 35, 35), outline=(255, 0, 0), width=2)
    base = dict(image=image, templates=[_blob()])
    where = {"A": "center", "B": "top left", "C": "bottom", "D": "right"}
    gt = "The following image is a reference annotation of the query image; suspicious areas are marked with red boxes."
    q = Query(question="Where in the image is the defect located?", options=where, expert_image=marked, expert_sentence=gt, **base)
    assert baseline.generate(build_prompt(q)) == "Answer: B"
    yes_no = {"A": "Yes", "B": "No"}
    q = Query(question="Is there any defect in the object?", options=yes_no, expert_image=marked, expert_sentence=gt, **base)
    assert baseline.generate(build_prompt(q)) == "Answer: A"  # the templates alone say normal; the annotation says defect
    calibrated_nothing = "The following image is an expert's analysis. The expert, calibrated on normal samples, found nothing anomalous and marked nothing."
    defective = _blob(defect=(84, 84, 104, 100))
    q = Query(
        question="Is there any defect in the object?",
        options=yes_no,
        image=defective,
        templates=[_blob()],
        expert_image=defective,
        expert_sentence=calibrated_nothing,
    )
    assert baseline.generate(build_prompt(q)) == "Answer: B"


@pytest.mark.slow
def test_knowledge_changes_defect_and_object_answers(baseline):
    image = _blob((40, 180, 60))
    dc = {"A": "crack", "B": "bubble", "C": "hole", "D": "stain"}
    oc = {"A": "bottle", "B": "screw", "C": "capsules", "D": "zipper"}

    def ask(question, options, knowledge):
        return baseline.generate(build_prompt(Query(question=question, options=options, image=image, knowledge=knowledge)))

    assert ask("What type of defect is present on the object?", dc, KNOWLEDGE) == "Answer: B"
    assert ask("What kind of product is shown in the image?", oc, KNOWLEDGE) == "Answer: C"
    first = ask("What type of defect is present on the object?", dc, None)
    assert ask("What type of defect is present on the object?", dc, None) == first  # deterministic


@pytest.mark.slow
def test_beats_random_on_the_fixture(shared_fixture_root, tmp_path):
    bench = Benchmark(shared_fixture_root)
    items = bench.select()
    accuracy = {}
    for spec in ("baseline:random", "baseline:features"):
        out = tmp_path / spec.replace(":", "_")
        Runner(bench, create_model(spec), out, progress=False, model_spec=spec).run(items)
        records = read_records(out / "records.jsonl")
        assert all(r["response"].startswith("Answer: ") for r in records)
        accuracy[spec] = np.mean([r["gpt_answer"] == r["correct_answer"] for r in records])
        if spec == "baseline:features":
            by_type = {}
            for r in records:
                by_type.setdefault(r["question_type"], []).append(r["gpt_answer"] == r["correct_answer"])
    # The fixture has no knowledge for its made-up products, so only the image-based types can be good.
    assert np.mean(by_type["Anomaly Detection"]) >= 0.8 and np.mean(by_type["Defect Localization"]) >= 0.8, by_type
    assert accuracy["baseline:features"] >= accuracy["baseline:random"] + 0.1, accuracy
