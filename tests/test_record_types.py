"""The typed record (protocol/record.py) and MMAD's key rules (protocol/keys.py).

Records are read through `Record` by scoring and every report, and the runner writes through it, so
the JSON must survive the trip unchanged: any JSON object read and written back gives the same
line, key order included (old run folders, and keys of other versions, stay as they are)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from mmad_boost.protocol.keys import IMAGE_SUFFIXES, LETTERS, VALID_LETTERS, dataset_of, is_image_file, is_normal_key
from mmad_boost.protocol.record import ExpertTrace, Judgement, Record, RetrievalTrace, Rotation, Trace, json_field_kinds
from mmad_boost.protocol.scoring import score_records
from mmad_boost.running.records import RECORD_FIELDS, encode_record, record_problem

FAST = settings(max_examples=150, deadline=None, database=None)

scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=6)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8)
# the keys the record and its sections know, mixed with others, so every path of from_json is taken
KNOWN = [
    "qid",
    "image",
    "question",
    "question_type",
    "correct_answer",
    "gpt_answer",
    "response",
    "options",
    "setting",
    "model",
    "parser",
    "latency_s",
    "error",
    "judge_answer",
    "judge_response",
    "judge_error",
    "circular",
    "circular_correct",
    "trace",
    "templates",
    "defect_examples",
    "timings",
    "retrieval",
    "expert",
    "route",
    "category",
    "score",
    "picture",
    "type",
    "applied",
    "answered_by",
]
keys = st.sampled_from(KNOWN) | st.text(max_size=5)
objects = st.recursive(
    st.dictionaries(keys, values, max_size=6), lambda c: st.dictionaries(keys, c | values | st.lists(c, max_size=2), max_size=6), max_leaves=12
)


def _line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)  # key order matters here, unlike ==


@pytest.mark.slow
@FAST
@given(objects)
def test_any_json_object_reads_and_writes_back_unchanged(obj):
    assert _line(Record.from_json(obj).to_json()) == _line(obj)


letter = st.sampled_from(list(LETTERS)) | st.none() | st.sampled_from(["Z", "", "AB"])
text = st.text(max_size=12)
options = st.dictionaries(st.sampled_from(list(LETTERS)), text, min_size=2, max_size=5)
judgement = st.builds(Judgement, answer=letter, response=st.none() | text) | st.builds(Judgement, error=text)
rotation = st.builds(Rotation, options=options, correct_answer=letter, response=text, model_answer=letter, judge=st.none() | judgement)
trace_dicts = st.fixed_dictionaries(
    {"templates": st.lists(text, max_size=2)},
    optional={
        "defect_examples": st.lists(text, max_size=2),
        "timings": st.dictionaries(st.sampled_from(["load_s", "retrieval_s", "expert_s"]), st.floats(0, 9)),
        "retrieval": st.fixed_dictionaries({"mode": st.sampled_from(["oracle", "image"]), "category": st.none() | text, "score": st.floats(0, 1)}),
        "expert": st.fixed_dictionaries(
            {"name": text, "style": text, "decision": st.none() | st.booleans(), "marked": st.booleans(), "picture": st.none() | text}
        ),
        "baseline": st.dictionaries(text, scalars, max_size=2),
    },
)


@st.composite
def built_records(draw):
    """Records as the runner builds them: the fixed fields, then what the judge, CircularEval and the boosts add."""
    r = Record(
        qid=draw(text.filter(bool)),
        image=draw(text),
        question=draw(text),
        question_type=draw(text),
        correct_answer=draw(letter),
        options=draw(options),
        setting=draw(text),
        model=draw(text),
        parser=draw(text),
    )
    r.response, r.model_answer = draw(st.none() | text), draw(letter)
    r.judge = draw(st.none() | judgement)
    if draw(st.booleans()):
        r.rotations = draw(st.lists(rotation, max_size=3))
        r.circular_correct = r.is_right() and all(x.is_right() for x in r.rotations)
    r.error, r.latency_seconds = draw(st.none() | text), draw(st.none() | st.floats(0, 60))
    if draw(st.booleans()):
        r.trace = Trace.from_json(draw(trace_dicts))
    return r


@FAST
@given(built_records())
def test_a_built_record_writes_the_runners_key_order_and_is_read_back_equal(r):
    obj = r.to_json()
    fixed = [
        "qid",
        "image",
        "question",
        "question_type",
        "correct_answer",
        "gpt_answer",
        "response",
        "options",
        "setting",
        "model",
        "parser",
        "latency_s",
        "error",
    ]  # always written, None or not
    added = ["judge_answer", "judge_response", "judge_error", "circular", "circular_correct", "trace"]
    assert list(obj) == fixed + [k for k in added if k in obj]
    line = encode_record(r)
    assert line == encode_record(obj)
    back = Record.from_json(json.loads(line))
    assert record_problem(json.loads(line), ("qid", "image", "question_type")) is None
    assert back == r and _line(back.to_json()) == _line(obj)


def test_the_trace_sections_are_typed():
    t = Trace.from_json(
        {
            "templates": ["a"],
            "retrieval": {"category": "fryum", "true_category": "fryum", "score": 0.9},
            "expert": {"name": "patchcore", "marked": True, "picture": "pictures/x.png"},
            "route": {"type": "Anomaly Detection"},
            "baseline": {"kind": "x"},
        }
    )
    assert isinstance(t.retrieval, RetrievalTrace) and t.retrieval.category == t.retrieval.true_category == "fryum"
    assert isinstance(t.expert, ExpertTrace) and t.expert.marked and t.expert.picture == "pictures/x.png"
    assert t.route.question_type == "Anomaly Detection" and t.extra == {"baseline": {"kind": "x"}}
    assert list(t.other_sections()) == ["route", "baseline"]


def test_the_stored_field_types_come_from_the_dataclass():
    assert RECORD_FIELDS == json_field_kinds(Record)
    # the checks of earlier versions are all still made
    old = {
        "qid": (str,),
        "image": (str,),
        "question_type": (str,),
        "question": (str, type(None)),
        "correct_answer": (str, type(None)),
        "gpt_answer": (str, type(None)),
        "response": (str, type(None)),
        "error": (str, type(None)),
        "options": (dict, type(None)),
        "trace": (dict, type(None)),
        "latency_s": (int, float, type(None)),
    }
    for k, kinds in old.items():
        assert set(RECORD_FIELDS[k]) == set(kinds), k
    assert record_problem({"qid": "a", "circular_correct": "yes"}) == "field 'circular_correct' must be bool or null"
    assert record_problem({"qid": "a", "judge_answer": 3}) == "field 'judge_answer' must be str or null"


@FAST
@given(st.text(max_size=30))
def test_the_normal_rule_is_mmads_substring_rule(key):
    assert is_normal_key(key) == ("good" in key)
    assert Record(image=key).is_normal == ("good" in key)
    assert dataset_of(key) == key.split("/")[0]


def test_scoring_follows_the_key_rule_even_for_a_misleading_folder_name():
    # "goodness" holds "good": MMAD counts the image normal, so a "Yes" (defect) answer is scored wrong
    recs = [
        {
            "qid": "1",
            "image": "D/c/test/goodness/1.png",
            "question_type": "Anomaly Detection",
            "correct_answer": "A",
            "gpt_answer": "A",
            "options": {"A": "No", "B": "Yes"},
        }
    ]
    row = score_records(recs).rows["D"]
    assert row["Anomaly Detection"] == 100.0 and row["Overkill"] == 0.0 and row["Miss"] is None


def test_letters_and_suffixes():
    assert LETTERS == "ABCDE" and VALID_LETTERS == frozenset("ABCDE")
    assert is_image_file("x/Y.PNG") and is_image_file("a.webp") and not is_image_file("a.txt")
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"} <= IMAGE_SUFFIXES
