"""Agreement between an answer and other answers to the same request.

Answers are compared after normalisation:

- **choice**: the request lists options (``A) ...``, ``(B) ...``, ``C. ...``) or asks for one
  letter; each answer is reduced to the option it picks (a leading letter, "the answer is
  (C)", or the text of exactly one option). Two answers agree when they pick the same option.
- **number**: the request asks for a quantity; each answer is reduced to its last number.
- **text** (otherwise): similarity of the sets of content words and identifiers (Jaccard),
  so that two code answers naming the same functions and variables count as agreeing more.

``agreement()`` returns the mean agreement over the other answers in [0, 1] (``None`` when
there are none, or none can be compared), and how it compared.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_OPTION = re.compile(r"^\s*\(?([A-H])[).:]\s+(.+?)\s*$", re.M)
_ASKS_LETTER = re.compile(
    r"(single choice|one letter|the letter of|answer with (?:the )?(?:letter|option)"
    r"|choose (?:one|the correct)|(?:^|\s)\(?A\)?,? (?:or|/) \(?B\)?)",
    re.I,
)
_LEAD = re.compile(
    r"^\W{0,3}(?:[Aa]nswer\s*[:\-]?\s*|[Oo]ption\s*)?\(?([A-H])(?:[).:,]|\s*$|\s*\n|\s+-|\s+\()"
)
_SAYS = re.compile(r"\b(?:answer|option|choice) (?:is|would be|:)\s*\(?([A-H])\b")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


def options(question: str) -> dict[str, str]:
    """The lettered options the request lists: letter -> option text."""
    found = {m.group(1): m.group(2) for m in _OPTION.finditer(question[-3000:])}
    return found if len(found) >= 2 else {}


def is_multiple_choice(question: str) -> bool:
    return bool(options(question)) or bool(_ASKS_LETTER.search(question[-600:]))


def choice_of(answer: str, question: str) -> str | None:
    """The option letter an answer picks, or None."""
    opts = options(question)
    allowed = set(opts) or set("ABCDEFGH")
    text = answer.strip()
    for pattern in (_LEAD, _SAYS):  # "A boat is ..." is a sentence, not option A
        m = pattern.search(text[:400])
        if m and m.group(1) in allowed:
            return m.group(1)
    named = [
        k for k, v in opts.items() if v and re.search(rf"\b{re.escape(v)}\b", text[:400], re.I)
    ]
    return named[0] if len(named) == 1 else None


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _tokens(text: str) -> set[str]:
    return {t.lower() for t in _TOKEN.findall(text)}


def similarity(a: str, b: str) -> float:
    ta, tb = _tokens(a), _tokens(b)
    if not ta or not tb:
        return 1.0 if ta == tb else 0.0
    return len(ta & tb) / len(ta | tb)


def agreement(answer: str, others: Sequence[str], question: str) -> tuple[float | None, str]:
    """Mean agreement of ``answer`` with ``others`` in [0, 1], and the comparison used."""
    if not others:
        return None, "none"
    if is_multiple_choice(question):
        mine = choice_of(answer, question)
        theirs = [c for c in (choice_of(o, question) for o in others) if c is not None]
        if mine is None or not theirs:
            return (0.0, "choice") if theirs else (None, "choice")
        return sum(c == mine for c in theirs) / len(theirs), "choice"
    mine_n = last_number(answer)
    if mine_n is not None and len(answer) < 40:
        theirs_n = [n for n in (last_number(o) for o in others) if n is not None]
        if theirs_n:
            return sum(abs(n - mine_n) < 1e-6 for n in theirs_n) / len(theirs_n), "number"
    return sum(similarity(answer, o) for o in others) / len(others), "text"
