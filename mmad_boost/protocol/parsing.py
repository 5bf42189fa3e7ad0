"""Answer extraction (protocol §5).

`mmad`: MMAD's rule, reproduced exactly — the last standalone capital A-E, else the option whose
text is closest to the whole response (difflib, no cutoff).
`strict` (default): explicit answer forms first ("Answer: C", "**B**", "(d)", a lone letter),
then an option's text quoted in the response, then standalone letters that are not the article
"A"; anything else is a parse failure rather than a guess.
"""

from __future__ import annotations

import difflib
import re

from ..errors import MmadError
from .keys import VALID_LETTERS

PARSERS = ("strict", "mmad")
# Parsing is linear and bounded: a response longer than this is read as its first and last halves
# of it (answers open or close a response), and runs of whitespace count as one character, so no
# pattern can backtrack over a long run. A 5 MB answer parses in milliseconds; Ctrl-C stays prompt.
MAX_PARSE_CHARS = 20_000
_SPACE_RUN = re.compile(r"\s+")

_LAST_CAPITAL = re.compile(r"\b([A-E])\b")
_MARKUP = re.compile(r"[*_`#>]+")
_EXPLICIT = [
    # "Answer: C", "answer is (d)", "correct option is B", "final answer - C"
    re.compile(r"(?:answer|option|choice)\s*(?:is|:|-|=)?\s*(?:option\s*)?[\(\[]?([A-Ea-e])[\)\]]?(?![A-Za-z])", re.I),
    re.compile(r"^\s*[\(\[]([A-Ea-e])[\)\]]", re.M),  # "(B) ..." at a line start
    re.compile(r"^\s*([A-E])(?:[.):]|\s*$)", re.M),  # "B." / "B)" / "B" at a line start
]


def parse_answer(response: str | None, options: dict[str, str], parser: str = "strict") -> str | None:
    if parser == "mmad":
        return parse_mmad(response, options)
    if parser == "strict":
        return parse_strict(response, options)
    raise MmadError(f"unknown answer parser {parser!r}; use one of {', '.join(PARSERS)}")


def bounded(text: str, limit: int = MAX_PARSE_CHARS) -> str:
    """The first and last limit/2 characters of a long text, joined by a line break."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + "\n" + text[-half:]


def _collapse_space(text: str) -> str:
    return _SPACE_RUN.sub(lambda m: "\n" if "\n" in m.group() else " ", text)


def parse_mmad(response: str | None, options: dict[str, str]) -> str | None:
    text = response if isinstance(response, str) else ""
    found = _LAST_CAPITAL.findall(text)  # linear: MMAD's rule on the whole response
    if found:
        return found[-1]
    if not options:
        return None
    values = list(options.values())
    # difflib is quadratic in the text: compared on the bounded text (identical up to 20,000 characters)
    best = difflib.get_close_matches(bounded(text), values, n=1, cutoff=0.0)
    if best:
        for k, v in options.items():
            if v == best[0]:
                return k
    return None


def parse_strict(response: str | None, options: dict[str, str]) -> str | None:
    text = (response if isinstance(response, str) else "").strip()
    if not text:
        return None
    valid = set(options) or VALID_LETTERS
    plain = _collapse_space(_MARKUP.sub("", bounded(text))).strip()
    if len(plain) <= 3:
        m = re.fullmatch(r"[\(\[]?([A-Ea-e])[\)\].:]?", plain)
        if m and m.group(1).upper() in valid:
            return m.group(1).upper()
    for pattern in _EXPLICIT:
        hits = [h.upper() for h in pattern.findall(plain) if h.upper() in valid]
        if hits:
            return hits[-1]
    by_text = _match_option_text(plain, options)
    if by_text:
        return by_text
    letters = {m.group(1) for m in re.finditer(r"\b([A-E])\b(?!\s+[a-z])", plain) if m.group(1) in valid}
    # "A" followed by a lowercase word is the article; several different letters mean no clear answer.
    return letters.pop() if len(letters) == 1 else None


def _match_option_text(text: str, options: dict[str, str]) -> str | None:
    low = text.lower().strip(" .!\n")
    exact = [k for k, v in options.items() if v.lower().strip(" .") == low]
    if len(exact) == 1:
        return exact[0]
    contained = [k for k, v in options.items() if len(v) > 2 and re.search(r"\b" + re.escape(v.lower().strip(" .")) + r"\b", low)]
    if len(contained) == 1:
        return contained[0]
    return None
