"""python:<module>:<attr> SPECs: functions, model objects, classes and factories imported by name."""

from __future__ import annotations

import textwrap

import pytest
from PIL import Image

from mmad_boost.errors import MmadError
from mmad_boost.models import FunctionModel, create_model
from mmad_boost.protocol.prompt import Query, build_prompt
from mmad_boost.running.records import read_records

MODULE = """
from mmad_boost.models import MLLM

SEEN = []

def answer(images, text):
    SEEN.append(([im.size for im in images], text))
    return "Answer: B"

def whole_prompt(prompt):
    return "Answer: " + ("A" if prompt.query is not None else "C")

class Picky(MLLM):
    def __init__(self, letter="A"):
        self.letter = letter
        self.name = "picky"
    def generate(self, prompt):
        return "Answer: " + self.letter
    def config(self):
        return {"name": self.name, "letter": self.letter}

def make(letter="D"):
    return Picky(letter)

INSTANCE = Picky("C")
NOT_A_MODEL = 42

class Nested:
    answer = staticmethod(answer)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"user_models_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "broken_module.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _prompt():
    q = Query(question="Is there any defect?", options={"A": "Yes", "B": "No"}, image=Image.new("RGB", (40, 30)), templates=[Image.new("RGB", (20, 10))])
    return build_prompt(q)


def test_plain_function_gets_images_in_order_and_placeholders(user_module):
    import importlib

    model = create_model(f"python:{user_module}:answer")
    assert isinstance(model, FunctionModel)
    assert model.generate(_prompt()) == "Answer: B"
    sizes, text = importlib.import_module(user_module).SEEN[-1]
    assert sizes == [(20, 10), (40, 30)]
    assert text.count("<image>") == 2
    assert text.index("<image>") < text.index("Here is the query image:\n<image>") < text.index("Question:")


def test_one_argument_function_gets_the_prompt(user_module):
    assert create_model(f"python:{user_module}:whole_prompt").generate(_prompt()) == "Answer: A"


def test_class_factory_instance_and_dotted(user_module):
    assert create_model(f"python:{user_module}:Picky", letter="E").generate(_prompt()) == "Answer: E"
    assert create_model(f"python:{user_module}:make").generate(_prompt()) == "Answer: D"
    assert create_model(f"python:{user_module}:make", letter="B").config() == {"name": "picky", "letter": "B"}
    assert create_model(f"python:{user_module}:INSTANCE").generate(_prompt()) == "Answer: C"
    assert create_model(f"python:{user_module}:Nested.answer").generate(_prompt()) == "Answer: B"


@pytest.mark.parametrize(
    "rest, message",
    [
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("broken_module:f", "importing module 'broken_module' failed: RuntimeError: boom at import"),
        ("{mod}:missing", "has no attribute 'missing'"),
        ("{mod}:NOT_A_MODEL", "is a int, not a model"),
        ("{mod}", "use python:<module>:<attr>"),
        ("{mod}:Picky", "cannot construct Picky"),
    ],
)
def test_errors_are_one_line(user_module, rest, message):
    options = {"colour": "red"} if rest.endswith("Picky") else {}
    with pytest.raises(MmadError) as err:
        create_model("python:" + rest.format(mod=user_module), **options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_options_for_a_plain_function_are_refused(user_module):
    with pytest.raises(MmadError, match="takes no --model-option"):
        create_model(f"python:{user_module}:answer", letter="A")


def test_cli_eval_with_python_spec(user_module, fixture_root, tmp_path):
    from mmad_boost.cli import main

    out = tmp_path / "run"
    argv = [
        "eval",
        "--data",
        str(fixture_root),
        "--model",
        f"python:{user_module}:Picky",
        "--model-option",
        "letter=B",
        "--limit",
        "4",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    records = read_records(out / "records.jsonl")
    assert [r["gpt_answer"] for r in records] == ["B"] * 4 and records[0]["model"] == f"python:{user_module}:Picky"
