"""Cheap lexical features of a conversation, shared by the runtime scorer and its training.

Every feature reads a bounded window of the text (:func:`window`), so the cost per request
is bounded however long the conversation is; only the total length is counted over all of
it. Pure Python, no dependencies: the training script (``train/train_complexity.py``) and
:mod:`tierlm.signals.complexity` call the same :func:`lexical_features`, so the shipped
weights always see features computed the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

#: Characters read from the start and from the end of the conversation.
HEAD_CHARS = 256
TAIL_CHARS = 1024

_WORD = re.compile(r"[A-Za-z]+|\d+(?:\.\d+)?")
_OPTION = re.compile(r"(?m)^[ \t]*(?:[A-Ha-h]|\d{1,2})[).:][ \t]")
_CODE_MARKS = (
    "```",
    "def ",
    "return",
    "import ",
    ";\n",
    "{",
    "}",
    "=>",
    "==",
    "class ",
    "function",
)
_SENTENCE = re.compile(r"[.!?](?:\s|$)")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


KEYWORDS: dict[str, frozenset[str]] = {
    "reason": _words(
        "why explain analyze analyse compare contrast evaluate justify prove derive "
        "reason implications tradeoffs trade-offs argue critique assess infer deduce"
    ),
    "design": _words(
        "design plan strategy architecture program programme roadmap rollout framework "
        "propose develop optimize optimise schedule budget staffing proposal"
    ),
    "write": _words("write essay story poem article letter blog email speech script"),
    "code": _words(
        "function code python program implement algorithm class method list array string "
        "integer return regex sql javascript java"
    ),
    "math": _words(
        "calculate compute solve equation sum product number numbers probability percent "
        "integral derivative average total"
    ),
    "lookup": _words("what who when where which name define status is are yes no"),
    "command": _words(
        "turn switch set open close start stop enable disable reset restart increase "
        "decrease raise lower shut pause resume hi hello hey thanks thank ok okay"
    ),
    "multi": _words(
        "and each every all steps step detailed comprehensive include including also both "
        "several multiple"
    ),
}

#: Opening courtesy words: :func:`lead_command` looks past them.
COURTESY = _words("hi hello hey there thanks thank you please ok okay good morning")

# word -> indices of the keyword groups it belongs to (one dict lookup per word)
_KW_INDEX: dict[str, tuple[int, ...]] = {}
for _i, _vocab in enumerate(KEYWORDS.values()):
    for _word in _vocab:
        _KW_INDEX[_word] = (*_KW_INDEX.get(_word, ()), _i)

FEATURE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "log_messages",
    "digit_frac",
    "upper_frac",
    "punct_frac",
    "mean_word_len",
    "sd_word_len",
    "type_token",
    "log_questions",
    "log_code",
    "log_options",
    "log_sentences",
    "log_numbers",
    *(f"kw_{k}" for k in KEYWORDS),
    "lead_command",
)


def window(text: str) -> str:
    """The bounded part of ``text`` that features read: its head and its tail."""
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]


def conversation_text(messages: Sequence[tuple[str, str]]) -> tuple[str, int]:
    """The whole conversation as one window of text, and its total length in characters.

    ``messages`` are ``(role, text)`` pairs, oldest first. Only the window is joined, so a
    huge conversation costs no more than a small one beyond summing lengths.
    """
    total = sum(len(t) for _, t in messages)
    budget = HEAD_CHARS + TAIL_CHARS
    if total <= budget:
        return "\n".join(t for _, t in messages if t), total
    # keep the start (system prompt, first turn) and the most recent text
    head: list[str] = []
    need = HEAD_CHARS
    for _, t in messages:
        if need <= 0:
            break
        head.append(t[:need])
        need -= len(t)
    tail: list[str] = []
    need = TAIL_CHARS
    for _, t in reversed(messages):
        if need <= 0:
            break
        tail.append(t[-need:])
        need -= len(t)
    return "\n".join(head) + "\n" + "\n".join(reversed(tail)), total


def lead_word(text: str) -> str:
    """The first word of ``text``, lower-cased ("" if none in its first 200 characters)."""
    m = _WORD.search(text[:200])
    return m.group(0).lower() if m else ""


def lead_command(text: str) -> bool:
    """Whether ``text`` is a command or pure courtesy ("Turn on ...", "Please set ...", "Hi").

    Courtesy words at the start are skipped: the first other word must be a command verb,
    and a message of courtesy words only ("Hello", "Thanks!") counts too. A greeting that
    opens a real question ("Hi, can you explain ...") does not.
    """
    for m in _WORD.finditer(text[:200]):
        word = m.group(0).lower()
        if word not in COURTESY:
            return word in KEYWORDS["command"]
    return True


def lexical_features(
    text: str, total_chars: int | None = None, n_messages: int = 1, last: str | None = None
) -> list[float]:
    """The feature vector (in :data:`FEATURE_NAMES` order) of a window of text.

    ``last`` is the latest message (default: ``text``); ``lead_command`` is 1 when it opens
    with a command verb or is pure courtesy (:func:`lead_command`).
    """
    w = window(text)
    n_chars = max(len(w), 1)
    words = _WORD.findall(w.lower())
    lower = [x for x in words if not x[0].isdigit()]
    letters = sum(map(str.isalpha, w))
    upper = sum(map(str.isupper, w))
    digits = sum(map(str.isdigit, w))
    spaces = sum(map(str.isspace, w))
    punct = n_chars - letters - digits - spaces
    numbers = len(words) - len(lower)
    lens = [len(x) for x in lower]
    n_lower = max(len(lower), 1)
    mean_len = sum(lens) / n_lower
    feats = [
        math.log1p(total_chars if total_chars is not None else len(text)),
        math.log1p(len(words)),
        math.log1p(w.count("\n")),
        math.log1p(max(n_messages - 1, 0)),
        digits / n_chars,
        upper / max(letters, 1),
        punct / n_chars,
        mean_len,
        math.sqrt(max(sum(n * n for n in lens) / n_lower - mean_len * mean_len, 0.0)),
        len(set(lower)) / max(len(lower), 1),
        math.log1p(w.count("?")),
        math.log1p(sum(w.count(mark) for mark in _CODE_MARKS)),
        math.log1p(len(_OPTION.findall(w))),
        math.log1p(len(_SENTENCE.findall(w))),
        math.log1p(numbers),
    ]
    hits = [0] * len(KEYWORDS)
    for x in lower:
        for g in _KW_INDEX.get(x, ()):
            hits[g] += 1
    feats.extend(math.log1p(h) for h in hits)
    feats.append(1.0 if lead_command(text if last is None else last) else 0.0)
    return feats
