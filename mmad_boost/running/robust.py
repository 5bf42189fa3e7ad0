"""Robust-answer scoring beside MMAD's: CircularEval over option orders, and a judge for unparseable answers.

CircularEval (as VLMEvalKit does it): a question is asked once per cyclic rotation of its option
texts over the same letters; it counts as right only if every rotation is answered right (a parse
failure or a wrong letter in any rotation makes it wrong). Rotation 0 is the run's own option order,
so MMAD's single-shuffle record is unchanged and scored as before; the other rotations are kept in
the record under `circular`, and their accuracy is reported beside MMAD's, never mixed into it.

The judge: when the run's parser finds no letter in a response, another model (any spec) is shown
the question, the options and the response and asked which option the response chose. Its letter
and raw output are kept in the record (`judge_answer`, `judge_response`); MMAD's `gpt_answer` is
left as the parser gave it, so MMAD's rule stays the default and "with judge" is a second figure.
"""
from __future__ import annotations

from dataclasses import replace

from ..protocol.parsing import parse_answer, parse_strict
from ..protocol.prompt import Prompt, build_prompt

_VALID = set("ABCDE")
JUDGE_INSTRUCTION = (
    "You read a multiple-choice question, its options and a free-text response to it. "
    "Reply with only the letter of the option the response chooses. "
    "If the response chooses no option, or several, reply with Z."
)


def rotations(options: dict[str, str], answer: str) -> list[tuple[dict[str, str], str]]:
    """Every cyclic rotation of the option texts over the same letters, with the right letter in each;
    rotation 0 is the order given."""
    letters = list(options)
    texts = [options[k] for k in letters]
    n = len(letters)
    right = letters.index(answer) if answer in options else None
    out = []
    for k in range(n):
        opts = {letters[j]: texts[(j + k) % n] for j in range(n)}
        out.append((opts, letters[(right - k) % n] if right is not None else answer))
    return out


def judge_prompt(question: str, options: dict[str, str], response: str) -> Prompt:
    lines = [JUDGE_INSTRUCTION, "", f"Question: {question}", "Options:"]
    lines += [f"{k}. {v}" for k, v in options.items()]
    lines += ["", "Response:", response or "(empty)", "", "Letter:"]
    return Prompt(parts=["\n".join(lines)])


def ask_judge(judge, question: str, options: dict[str, str], response: str) -> dict:
    """{judge_answer, judge_response[, judge_error]}: the judge's letter (None for Z or no letter) and its raw output."""
    try:
        raw = judge.generate(judge_prompt(question, options, response))
    except Exception as e:  # the judge failing must not lose the question's own answer
        return {"judge_answer": None, "judge_response": None, "judge_error": f"{type(e).__name__}: {e}"[:500]}
    letter = parse_strict(raw, options) if isinstance(raw, str) else None
    return {"judge_answer": letter if letter in options else None, "judge_response": _clean(raw if isinstance(raw, str) else repr(raw))}


def _clean(text: str) -> str:
    """Text as the records file can hold it (lone surrogates replaced), as the runner does for responses."""
    try:
        from .records import clean_text
    except ImportError:  # older records module
        return text
    return clean_text(text)


def ask_rotations(model, query, record: dict, parser: str, judge=None) -> None:
    """Ask rotations 1..n-1 of `record`'s options (rotation 0 is the record itself) and store them in the
    record; raises what the model raises, so the runner records an error and the question is asked again."""
    rots = rotations(record["options"], record["correct_answer"])
    extra = []
    for opts, right in rots[1:]:
        response = model.generate(build_prompt(replace(query, options=opts)))
        if not isinstance(response, str):
            raise TypeError(f"model returned {type(response).__name__}, expected str")
        response = _clean(response)
        item = {"options": opts, "correct_answer": right, "response": response, "gpt_answer": parse_answer(response, opts, parser)}
        if item["gpt_answer"] is None and judge is not None:
            item.update(ask_judge(judge, query.question, opts, response))
        extra.append(item)
    record["circular"] = extra
    record["circular_correct"] = all(_right(x) for x in [record] + extra)


def _right(r: dict) -> bool:
    return r.get("gpt_answer") is not None and r.get("gpt_answer") == r.get("correct_answer")


# -- records for the second figures (score them with scoring.score_records) -----------------
def judged_records(records) -> list[dict]:
    """Records with the judge's letter standing in where the parser found none (for "accuracy with judge")."""
    out = []
    for r in records:
        if r.get("gpt_answer") not in _VALID and r.get("judge_answer") in _VALID and not r.get("error"):
            r = dict(r, gpt_answer=r["judge_answer"], answered_by="judge")
        out.append(r)
    return out


def circular_records(records) -> list[dict]:
    """One record per question asked in every rotation, whose answer is right only if all rotations were right
    (parse failures count wrong here, as in CircularEval); questions without rotations are left out."""
    out = []
    for r in records:
        if "circular_correct" not in r or r.get("error"):
            continue
        gold = r.get("correct_answer")
        wrong = next((k for k in (r.get("options") or {}) if k != gold), "Z")
        out.append(dict(r, gpt_answer=gold if r["circular_correct"] else (wrong if wrong in _VALID else "E" if gold != "E" else "D")))
    return out


def has_circular(records) -> bool:
    return any("circular_correct" in r for r in records)


def has_judge(records) -> bool:
    return any("judge_answer" in r for r in records)


def identity_extra(circular: bool, judge) -> dict:
    """What --circular and --judge add to a run's identity (nothing when off, so older runs keep theirs)."""
    extra: dict = {}
    if circular:
        extra["circular"] = True
    if judge is not None:
        extra["judge"] = judge.config() if hasattr(judge, "config") else {"name": getattr(judge, "name", type(judge).__name__)}
    return extra


def judge_from_options(spec: str | None, options: list[str]):
    """The --judge model from its SPEC and --judge-option KEY=VALUE items (None without a SPEC)."""
    if not spec:
        if options:
            from ..errors import MmadError

            raise MmadError("--judge-option needs --judge SPEC")
        return None
    from ..errors import MmadError
    from ..models import create_model

    opts = {}
    for kv in options:
        k, sep, v = kv.partition("=")
        if not sep:
            raise MmadError(f"--judge-option {kv!r}: use KEY=VALUE")
        opts[k] = v
    return create_model(spec, **opts)
