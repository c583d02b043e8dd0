"""The near-miss guard of the semantic cache: what must agree before a similar request may be
served another request's answer.

Embeddings place "turn on pump 3" next to "turn on pump 4" and "turn off pump 3"; a cache that
trusts similarity alone serves the wrong answer. :func:`anchors` reads the parts of a text that
change the answer while barely moving an embedding, and a hit needs them all to be equal:

- **numbers**, in order, normalised (``3``, ``3.0`` and ``three`` agree; ``1,000`` is 1000;
  ordinals are numbers too), each with the unit written right after it (``5 km``, ``$5``,
  ``3 sentences``), and **units** written anywhere (``miles to km``), in order;
- **polarity**: negations (``not``, ``n't``, ``never``, ``without`` ...) and opposed words
  (``on``/``off``, ``open``/``close``, ``largest``/``smallest`` ...), in order;
- **entities**: capitalised words that are not common words, words mixing letters and digits
  (``P3``, ``A4``), quoted text, and known first names and places even in lower case, in order
  (so swapped roles differ);
- **dates**: months, weekdays, ``today``/``tomorrow``/``yesterday``/``tonight``, ``ago``;
- the requested **language**, **format** (JSON, table, Python ...) and **length** (short,
  detailed ...);
- **word order**: the content words both texts share must come in the same order ("dog bites
  man", "from Paris to London").

The guard is deliberately strict: a paraphrase that drops a number or a negation is a miss,
never a wrong hit. Measured on ``tests/data/cache_pairs.jsonl`` by ``bench/bench_cache.py``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import lru_cache

from tierlm.layer0 import guard_words as W
from tierlm.signals.sensitivity_lexicon import read_list

_TOKEN = re.compile(
    r"\"[^\"]{1,80}\"|[$€£]\s?\d[\d,]*(?:\.\d+)?|\d[\d,]*(?:\.\d+)?(?:st|nd|rd|th)?|"
    r"[A-Za-zÀ-ÿ][\w'’-]*|%|°[CF]?"
)
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_NUMBER_PAIRS = W.words(W.NUMBER_WORDS)
_WORD_NUMBERS = dict(zip(_NUMBER_PAIRS[::2], _NUMBER_PAIRS[1::2], strict=True))
_ORDINALS = {w: str(i) for i, w in enumerate(W.words(W.ORDINALS))}
# canonical unit <- spellings; the ambiguous short ones count only right after a number
_UNIT_OF = {s: canon for canon, spellings in W.UNITS.items() for s in W.words(spellings)}
_AMBIGUOUS_UNITS = frozenset(W.words(W.AMBIGUOUS_UNITS))
_NEGATIONS = frozenset(W.words(W.NEGATIONS))
_NEGATION_SUFFIX = ("n't", "n’t")
_POLAR = frozenset(W.words(W.POLAR))
_MONTHS = frozenset(W.words(W.MONTHS))
_DATE_WORDS = _MONTHS | frozenset(W.words(W.DATE_WORDS))
_LANGUAGES = frozenset(W.words(W.LANGUAGES))
_FORMATS = frozenset(W.words(W.FORMATS))
_LENGTH = {w: "short" for w in W.words(W.SHORT)} | {w: "long" for w in W.words(W.LONG)}
# Words that begin a sentence in capitals without naming anything, and words too common to be
# content (the word-order check compares only the others).
_COMMON = frozenset(W.words(W.COMMON))
_SENTENCE = re.compile(r"(?<=[.!?:;\n])\s+")


@dataclass(frozen=True, slots=True)
class Anchors:
    """What must agree between two texts for one's answer to serve the other."""

    numbers: tuple[str, ...]
    units: tuple[str, ...]
    polarity: tuple[str, ...]
    entities: tuple[str, ...]
    dates: tuple[str, ...]
    language: frozenset[str]
    format: frozenset[str]
    length: frozenset[str]
    content: tuple[str, ...]  # content words in order

    def agrees(self, other: Anchors) -> str | None:
        """``None`` when a hit is safe; else the first thing that differs."""
        for name in _FIELDS:
            if getattr(self, name) != getattr(other, name):
                return name
        if _order(self.content, other.content) != _order(other.content, self.content):
            return "word order"
        return None

    def compact(self) -> Compact:
        """What :meth:`Compact.agrees` needs, in little memory (kept per cached entry)."""
        return Compact(hash(tuple(getattr(self, n) for n in _FIELDS)), self.content)


_FIELDS = ("numbers", "units", "polarity", "entities", "dates", "language", "format", "length")


@dataclass(frozen=True, slots=True)
class Compact:
    """An entry's anchors: a fingerprint of the fields that must be equal, and the content
    words for the order check (interned). Only comparable within one process."""

    fingerprint: int
    content: tuple[str, ...]

    def agrees(self, other: Anchors) -> bool:
        return self.fingerprint == other.compact().fingerprint and _order(
            self.content, other.content
        ) == _order(other.content, self.content)


def _order(words: tuple[str, ...], other: tuple[str, ...]) -> list[str]:
    """The words both texts have, in the order of their first occurrence in ``words``."""
    return [w for w in dict.fromkeys(words) if w in other]


@lru_cache(maxsize=1)
def _places() -> frozenset[str]:
    names = read_list("sensitivity_first_names.txt")
    return frozenset(read_list("layer0_places.txt")) | frozenset(names)


def _number(tok: str) -> str | None:
    """The normalised number a token spells, or ``None``."""
    m = _NUMBER.match(tok)
    if m:
        raw = m.group().replace(",", "")
        try:
            value = float(raw)
        except ValueError:
            return raw
        return str(int(value)) if value.is_integer() else repr(value)
    low = tok.lower()
    return _WORD_NUMBERS.get(low) or _ORDINALS.get(low)


_NONE: frozenset[str] = frozenset()


@lru_cache(maxsize=1024)
def anchors(text: str) -> Anchors:
    """The anchors of ``text`` (cached: the same text is read once)."""
    toks = [
        (t, i == 0) for part in _SENTENCE.split(text) for i, t in enumerate(_TOKEN.findall(part))
    ]
    places = _places()
    numbers: list[str] = []
    units: list[str] = []
    polarity: list[str] = []
    entities: list[str] = []
    dates: list[str] = []
    language: set[str] = set()
    fmt: set[str] = set()
    length: set[str] = set()
    content: list[str] = []
    after_number = False
    for tok, sentence_start in toks:
        low = tok.lower()
        if tok.startswith('"'):
            entities.append(low.strip('"'))
            after_number = False
            continue
        if tok[0] in "$€£":
            numbers.append((_number(tok) or tok) + _UNIT_OF[tok[0]])
            after_number = False
            continue
        num = _number(tok)
        unit = _UNIT_OF.get(low)
        if num is not None:
            numbers.append(num)
            after_number = True
            continue
        if unit is not None and (after_number or low not in _AMBIGUOUS_UNITS):
            if after_number:
                numbers[-1] += unit
            else:
                units.append(unit)
            after_number = False
            continue
        after_number = False
        if low in _NEGATIONS or low.endswith(_NEGATION_SUFFIX):
            polarity.append("not")
        if low in _POLAR:
            polarity.append(low)
        if low in _DATE_WORDS and (low != "may" or tok[0].isupper()):
            dates.append(low[:3] if low in _MONTHS else low)
        if low in _LANGUAGES:
            language.add(low)
        if low in _FORMATS:
            fmt.add(low)
        if low in _LENGTH:
            length.add(_LENGTH[low])
        is_entity = (
            (tok[0].isupper() and not sentence_start and (low not in _COMMON or tok == "A"))
            or (any(c.isdigit() for c in tok) and any(c.isalpha() for c in tok))
            or low in places
        )
        if is_entity and low not in _LANGUAGES and low not in _DATE_WORDS:
            entities.append(low)
        if low not in _COMMON:
            content.append(low)
    return Anchors(
        numbers=tuple(numbers),
        units=tuple(units),
        polarity=tuple(polarity),
        entities=tuple(entities),
        dates=tuple(dates),
        language=frozenset(language) if language else _NONE,
        format=frozenset(fmt) if fmt else _NONE,
        length=frozenset(length) if length else _NONE,
        content=tuple(sys.intern(w) for w in content),
    )
