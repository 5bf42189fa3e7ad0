import pytest

from mmad_boost.errors import MmadError
from mmad_boost.protocol.parsing import parse_answer, parse_mmad, parse_strict

YN = {"A": "Yes", "B": "No"}
DEF = {"A": "scratch", "B": "crack", "C": "hole", "D": "stain"}


@pytest.mark.parametrize(
    "response, options, strict, mmad",
    [
        ("A scratch is visible on the left side. Answer: C", DEF, "C", "C"),
        ("**B**", YN, "B", "B"),
        ("The answer is (d)", DEF, "D", None),  # MMAD falls back to difflib: see next test
        ("B", YN, "B", "B"),
        ("B. No", YN, "B", "B"),
        ("(C) hole", DEF, "C", "C"),
        ("Answer: A", YN, "A", "A"),
        ("crack", DEF, "B", "B"),  # option text only
        ("Yes, there is a defect on the cap.", YN, "A", None),
        ("A crack runs across the body.", DEF, "B", "A"),  # the article "A" fools MMAD's rule
        ("", YN, None, None),
        ("I cannot tell.", DEF, None, None),
    ],
)
def test_real_looking_responses(response, options, strict, mmad):
    assert parse_strict(response, options) == strict
    if mmad is not None:
        assert parse_mmad(response, options) == mmad


def test_mmad_rule_takes_last_capital_letter():
    assert parse_mmad("A or B? I pick D", DEF) == "D"


def test_mmad_fallback_is_closest_option_text_without_cutoff():
    # no standalone capital: difflib picks the closest option text, whatever its ratio
    assert parse_mmad("there is a hol", DEF) == "C"
    assert parse_mmad("", YN) in YN  # MMAD's rule always guesses when options exist


def test_strict_ignores_letters_not_among_options():
    assert parse_strict("Answer: E", YN) is None


def test_unknown_parser_is_a_clear_error():
    with pytest.raises(MmadError, match="unknown answer parser"):
        parse_answer("A", YN, "fuzzy")
