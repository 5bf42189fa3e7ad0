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

from ..protocol.keys import VALID_LETTERS
from ..protocol.parsing import parse_answer, parse_strict
from ..protocol.prompt import Prompt, build_prompt
from ..protocol.record import Judgement, Record, Rotation, as_records

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


def ask_judge(judge, question: str, options: dict[str, str], response: str) -> Judgement:
    """The judge's letter (None for Z or no letter) and its raw output, or why it failed."""
    try:
        raw = judge.generate(judge_prompt(question, options, response))
    except Exception as e:  # the judge failing must not lose the question's own answer
        return Judgement(error=f"{type(e).__name__}: {e}"[:500])
    letter = parse_strict(raw, options) if isinstance(raw, str) else None
    return Judgement(answer=letter if letter in options else None, response=_clean(raw if isinstance(raw, str) else repr(raw)))


def _clean(text: str) -> str:
    """Text as the records file can hold it (lone surrogates replaced), as the runner does for responses."""
    try:
        from .records import clean_text
    except ImportError:  # older records module
        return text
    return clean_text(text)


def ask_rotations(model, query, record: Record, parser: str, judge=None) -> None:
    """Ask rotations 1..n-1 of `record`'s options (rotation 0 is the record itself) and store them in the
    record; raises what the model raises, so the runner records an error and the question is asked again."""
    rots = rotations(record.options, record.correct_answer)
    extra = []
    for opts, right in rots[1:]:
        response = model.generate(build_prompt(replace(query, options=opts)))
        if not isinstance(response, str):
            raise TypeError(f"model returned {type(response).__name__}, expected str")
        response = _clean(response)
        item = Rotation(options=opts, correct_answer=right, response=response, model_answer=parse_answer(response, opts, parser))
        if item.model_answer is None and judge is not None:
            item.judge = ask_judge(judge, query.question, opts, response)
        extra.append(item)
    record.rotations = extra
    record.circular_correct = record.is_right() and all(x.is_right() for x in extra)


# -- records for the second figures (score them with scoring.score_records) -----------------
def judged_records(records) -> list[Record]:
    """Records with the judge's letter standing in where the parser found none (for "accuracy with judge")."""
    out = []
    for r in as_records(records):
        letter = r.judge.answer if r.judge is not None else None
        if r.model_answer not in VALID_LETTERS and letter in VALID_LETTERS and not r.error:
            r = replace(r, model_answer=letter, extra=dict(r.extra, answered_by="judge"))
        out.append(r)
    return out


def circular_records(records) -> list[Record]:
    """One record per question asked in every rotation, whose answer is right only if all rotations were right
    (parse failures count wrong here, as in CircularEval); questions without rotations are left out."""
    out = []
    for r in as_records(records):
        if r.circular_correct is None or r.error:
            continue
        gold = r.correct_answer
        wrong = next((k for k in (r.options or {}) if k != gold), "Z")
        out.append(replace(r, model_answer=gold if r.circular_correct else (wrong if wrong in VALID_LETTERS else "E" if gold != "E" else "D")))
    return out


def has_circular(records) -> bool:
    return any(r.circular_correct is not None for r in as_records(records))


def has_judge(records) -> bool:
    return any(r.judge is not None for r in as_records(records))


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
    from ..models import create_model
    from ..registry import option_pairs

    return create_model(spec, **option_pairs(options, "--judge-option"))
