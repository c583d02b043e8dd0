"""Normalisation for the sensitivity detector: what users paste is rarely the clean value.

Two kinds of views, both keeping every finding's span on the *original* text:

- :func:`fold` is length-preserving (one character in, one out): non-breaking and other
  Unicode spaces and tabs become a space, Unicode hyphens and minus signs a ``-``, the
  full-width ``＠`` an ``@``. Every pattern rule runs on the folded text, so spans need no
  mapping. Separators inside numbers (double spaces, dots, dashes, line breaks) are left to
  the number rules, which accept them.
- :class:`SpelledNumbers` rewrites digits spelled in words (English, German, French,
  Spanish, Italian, Dutch, Polish, Swedish: "vier acht zwei", "trente-quatre",
  "sześćset jeden", "plus four four") into a :class:`View`: a rewritten text plus, for each
  of its characters, the original span it came from. Number rules run on the view and their
  hits are mapped back with :meth:`View.span`. A run needs at least seven digits to be
  rewritten (shorter ones are not cards, IBANs, phones or IDs).

:func:`spelled_emails` finds addresses written with at/dot words ("john dot smith at gmail
dot com", "anna punkt weiss ät posteo punkt de", "(at)", "[dot]", "arobase", "arroba",
"chiocciola", "apenstaartje", "małpa", "snabel-a") or with spaces around ``@`` and ``.``.
The bare English "at" only counts with "dot" words or a literal dot, or with another
language's dot word ("punkt", "point", "punto", ...) on both sides of it, so that prose such
as "the pump at station point de" is not an address.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["WORD", "SpelledNumbers", "TermIndex", "View", "fold", "spelled_emails"]

WORD = re.compile(r"[^\W_]+")  # letters and digits: "api_key" is "api" and "key"
_TERM_EDGE = re.compile(r"[\w-]")  # a character a term must not follow (l'epilessia: ok)

_FOLD: dict[str, str] = {
    **dict.fromkeys(
        "\t\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
        "\u200a\u202f\u205f\u3000",
        " ",
    ),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2212\ufe63\uff0d", "-"),
    "\uff20": "@",
}


_FOLDED = re.compile("[" + "".join(_FOLD) + "]")


def fold(text: str) -> str:
    """Unicode spaces/tabs to ``" "``, Unicode hyphens to ``"-"``: same length, same spans."""
    # not str.translate: on non-ASCII text it costs 0.1 ms per KB; the characters are rare
    return _FOLDED.sub(_fold_one, text)


def _fold_one(m: re.Match[str]) -> str:
    return _FOLD[m.group()]


class TermIndex:
    """Find any of many terms (words or phrases) in lower-cased text, fast: a set
    intersection with the text's words first, then ``str.find`` for the few terms present.
    Each term is indexed by its longest word ("arrêt" for "en arrêt maladie"), so that
    everyday words do not send every "en" through the phrase checks; a match must start
    and end on word boundaries."""

    def __init__(self, terms: Iterable[str]) -> None:
        self._by_key: dict[str, list[tuple[int, str]]] = {}
        for term in terms:
            words = WORD.findall(term)
            if not words:
                continue
            key = max(words, key=len)
            offset = next(m.start() for m in WORD.finditer(term) if m.group() == key)
            self._by_key.setdefault(key, []).append((offset, term))
        for group in self._by_key.values():
            group.sort(key=lambda item: len(item[1]), reverse=True)
        self._keys = frozenset(self._by_key)

    def find(self, lower: str, words: set[str]) -> Iterator[tuple[int, int]]:
        """Spans of the terms in ``lower``, in order; ``words``: its words (``WORD``)."""
        spans: list[tuple[int, int]] = []
        for key in self._keys.intersection(words):
            pos = lower.find(key)
            while pos >= 0:
                span = self._term_at(lower, pos, key)
                if span is not None:
                    spans.append(span)
                pos = lower.find(key, pos + len(key))
        return iter(sorted(set(spans)))

    def _term_at(self, lower: str, pos: int, key: str) -> tuple[int, int] | None:
        """The longest term whose key word sits at ``pos``."""
        for offset, term in self._by_key[key]:
            start, end = pos - offset, pos - offset + len(term)
            if (
                start >= 0
                and lower.startswith(term, start)
                and (start == 0 or not _TERM_EDGE.match(lower, start - 1))
                and (end == len(lower) or not lower[end].isalnum())
            ):
                return start, end
        return None


@dataclass(frozen=True, slots=True)
class View:
    """A rewritten text made of segments ``(view_start, view_end, start, end)``: copied
    text (same length in the view and the original) or a rewritten run (digits standing
    for the whole spelled run). ``runs``: the view spans of the rewritten runs."""

    text: str
    segments: tuple[tuple[int, int, int, int], ...]
    runs: tuple[tuple[int, int], ...]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span of ``text[start:end]``."""
        return self._at(start)[0], self._at(end - 1)[1]

    def _at(self, pos: int) -> tuple[int, int]:
        seg = self.segments[bisect_right(self.segments, (pos, len(self.text) + 1)) - 1]
        v0, v1, o0, o1 = seg
        if v1 - v0 == o1 - o0:  # copied text
            return o0 + pos - v0, o0 + pos - v0 + 1
        return o0, o1


# value, and whether the word is a multiplier-free "tens" (20, 30, ...) or a hundred.
_WORDS: dict[str, int] = {}


def _add(value: int, *words: str) -> None:
    for word in words:
        _WORDS[word] = value


_add(0, "zero", "oh", "nought", "null", "zéro", "cero", "nul", "noll")
_add(1, "one", "eins", "un", "une", "uno", "una", "één", "een", "jeden", "jedna", "ett", "en")
_add(2, "two", "zwei", "zwo", "deux", "dos", "due", "twee", "dwa", "dwie", "två", "tva")
_add(3, "three", "drei", "trois", "tres", "tre", "drie", "trzy")
_add(4, "four", "vier", "quatre", "cuatro", "quattro", "cztery", "fyra")
_add(5, "five", "fünf", "fuenf", "cinq", "cinco", "cinque", "vijf", "pięć", "piec", "fem")
_add(6, "six", "sechs", "seis", "sei", "zes", "sześć", "szesc", "sex")
_add(7, "seven", "sieben", "sept", "siete", "sette", "zeven", "siedem", "sju")
_add(8, "eight", "acht", "huit", "ocho", "otto", "osiem", "åtta", "atta")
_add(9, "nine", "neun", "neuf", "nueve", "nove", "negen", "dziewięć", "nio")
_add(10, "ten", "zehn", "dix", "diez", "dieci", "tien", "dziesięć", "tio")
_add(11, "eleven", "elf", "onze", "once", "undici", "jedenaście", "elva")
_add(12, "twelve", "zwölf", "douze", "doce", "dodici", "twaalf", "dwanaście", "tolv")
_add(13, "thirteen", "dreizehn", "treize", "trece", "tredici", "dertien", "trzynaście", "tretton")
_add(14, "fourteen", "vierzehn", "quatorze", "catorce", "quattordici", "veertien", "czternaście",
     "fjorton")  # fmt: skip
_add(15, "fifteen", "fünfzehn", "quinze", "quince", "quindici", "vijftien", "piętnaście", "femton")
_add(16, "sixteen", "sechzehn", "seize", "dieciséis", "sedici", "zestien", "szesnaście", "sexton")
_add(
    17, "seventeen", "siebzehn", "diecisiete", "diciassette", "zeventien", "siedemnaście", "sjutton"
)
_add(18, "eighteen", "achtzehn", "dieciocho", "diciotto", "achttien", "osiemnaście", "arton")
_add(
    19, "nineteen", "neunzehn", "diecinueve", "diciannove", "negentien", "dziewiętnaście", "nitton"
)
_add(20, "twenty", "zwanzig", "vingt", "veinte", "venti", "twintig", "dwadzieścia", "tjugo")
_add(30, "thirty", "dreißig", "dreissig", "trente", "treinta", "trenta", "dertig", "trzydzieści",
     "trettio")  # fmt: skip
_add(
    40, "forty", "vierzig", "quarante", "cuarenta", "quaranta", "veertig", "czterdzieści", "fyrtio"
)
_add(50, "fifty", "fünfzig", "cinquante", "cincuenta", "cinquanta", "vijftig", "pięćdziesiąt",
     "femtio")  # fmt: skip
_add(60, "sixty", "sechzig", "soixante", "sesenta", "sessanta", "zestig", "sześćdziesiąt", "sextio")
_add(70, "seventy", "siebzig", "setenta", "settanta", "zeventig", "siedemdziesiąt", "sjuttio")
_add(80, "eighty", "achtzig", "ochenta", "ottanta", "tachtig", "osiemdziesiąt", "åttio")
_add(90, "ninety", "neunzig", "noventa", "novanta", "negentig", "dziewięćdziesiąt", "nittio")
_add(100, "hundred", "hundert", "cent", "cien", "ciento", "cento", "honderd", "sto", "hundra")
_add(200, "dwieście")
_add(300, "trzysta")
_add(400, "czterysta")
_add(500, "pięćset")
_add(600, "sześćset")
_add(700, "siedemset")
_add(800, "osiemset")
_add(900, "dziewięćset")
_PLUS = frozenset({"plus"})
_REPEAT = {"double": 2, "triple": 3, "doppel": 2, "doppelt": 2}
# Words that are numbers but also everyday words: they only count inside a run.
_WEAK = frozenset({"one", "oh", "un", "une", "una", "en", "een", "sex", "elf", "tre", "sei",
                   "dos", "due", "sto", "cent", "ten", "tio", "nul", "null", "ett"})  # fmt: skip
_TOKEN = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*|\d|[+]")
_WORD_TAIL = re.compile(r"[\w-]*")  # the rest of a compound ("soixante" -> "-dix-huit")
_GAP = re.compile(r"[ ,;/.\n-]{0,3}")


def _value(word: str) -> list[int] | None:
    """The numbers of one token: ``"trente-quatre"`` -> [30, 4], ``"sette"`` -> [7]."""
    if word in _WORDS:
        return [_WORDS[word]]
    if "-" not in word:
        return None
    parts = [_WORDS.get(p) for p in word.split("-")]
    return None if any(p is None for p in parts) else [p for p in parts if p is not None]


def _digits(values: list[int]) -> str:
    """Digits of a run of values, additive where the words compose a number ("trente"
    "quatre" is 34, "sześćset" "jeden" 601, "soixante" "dix" "huit" 78), else one after
    the other ("vier" "acht" is 48)."""
    out: list[str] = []
    group = -1
    for v in values:
        if group < 0:
            group = v
        elif _composes(group, v):
            group += v
        else:
            out.append(str(group))
            group = v
    if group >= 0:
        out.append(str(group))
    return "".join(out)


def _composes(group: int, v: int) -> bool:
    """Whether ``v`` fills zeros of ``group``: 600 + 1, 30 + 4, 60 + 18 (soixante-dix-huit)."""
    if group >= 20 and group % 100 == 0:
        return v < 100
    if group >= 20 and group % 10 == 0:
        return v < 10 or (group in (60, 80) and v < 20)
    return False


class SpelledNumbers:
    """Rewrites runs of spelled digits into digits; see the module docstring."""

    def __init__(self) -> None:
        self.keys = frozenset(_WORDS) | frozenset(_REPEAT)
        self._index = TermIndex(self.keys | _PLUS)

    def triggered(self, words: set[str]) -> bool:
        """Whether the text's lower-cased words hold enough number words to look at (two
        different ones, one of them not an everyday word such as "one" or "ten")."""
        present = words & self.keys
        return len(present) >= 2 and not present <= _WEAK

    def view(self, text: str, lower: str, words: set[str]) -> View | None:
        """The text with each spelled run of >= 7 digits rewritten; None when there is none.
        ``words``: the lower-cased text's words."""
        runs = [run for lo, hi in self._clusters(lower, words) for run in self._runs(lower, lo, hi)]
        if not runs:
            return None
        parts: list[str] = []
        segments: list[tuple[int, int, int, int]] = []
        spans: list[tuple[int, int]] = []
        pos = size = 0
        for start, end, pieces in runs:
            if start > pos:
                parts.append(text[pos:start])
                segments.append((size, size + start - pos, pos, start))
                size += start - pos
            run_start = size
            for digits, s, e in pieces:
                parts.append(digits)
                segments.append((size, size + len(digits), s, e))
                size += len(digits)
            spans.append((run_start, size))
            pos = end
        if pos < len(text):
            parts.append(text[pos:])
            segments.append((size, size + len(text) - pos, pos, len(text)))
        return View("".join(parts), tuple(segments), tuple(spans))

    def _clusters(self, lower: str, words: set[str]) -> Iterator[tuple[int, int]]:
        """Regions of three or more number words in a row: only these are tokenised."""
        start = end = count = 0
        for s, e in self._index.find(lower, words):
            if count and s - end <= 12:  # "trente-quatre": the index finds "trente"
                end, count = e, count + 1
                continue
            if count >= 3:
                yield max(0, start - 4), _WORD_TAIL.match(lower, end).end()  # type: ignore[union-attr]
            start, end, count = s, e, 1
        if count >= 3:
            yield max(0, start - 4), _WORD_TAIL.match(lower, end).end()  # type: ignore[union-attr]

    def _runs(
        self, lower: str, lo: int, hi: int
    ) -> Iterator[tuple[int, int, list[tuple[str, int, int]]]]:
        tokens = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(lower, lo, hi)]
        keys = self.keys
        i = 0
        while i < len(tokens):
            word = tokens[i][0]
            if not (word in keys or word in _PLUS or ("-" in word and _value(word))) and not (
                len(word) == 1
                and word.isalpha()
                and i + 2 < len(tokens)
                and tokens[i + 2][0] in keys
            ):
                i += 1
                continue
            run = self._run(lower, tokens, i)
            if run is None:
                i += 1
                continue
            j, pieces = run
            if sum(len(d) for d, _, _ in pieces) >= 7:
                yield tokens[i][1], tokens[j - 1][2], pieces
            i = j

    def _run(
        self, lower: str, tokens: list[tuple[str, int, int]], i: int
    ) -> tuple[int, list[tuple[str, int, int]]] | None:
        """Tokens i..j-1 as one run of (digits, start, end) pieces, or None."""
        pieces: list[tuple[str, int, int]] = []
        values: list[int] = []
        spans: list[tuple[int, int]] = []
        repeat = 1
        j = i
        letters = _letters(lower, tokens, i)  # "D E acht neun ...": an IBAN's country
        if letters:
            pieces.append(letters)
            j += 2
        while j < len(tokens):
            word, s, e = tokens[j]
            if j > i and not _GAP.fullmatch(lower, tokens[j - 1][2], s):
                break
            if word == "+" or (word in _PLUS and j == i):
                pieces.append(("+", s, e))
            elif word.isdigit():
                values.append(int(word))
                spans.append((s, e))
            elif word in _REPEAT:
                repeat = _REPEAT[word]
            elif (vals := _value(word)) is not None:
                for v in vals * repeat if len(vals) == 1 else vals:
                    values.append(v)
                    spans.append((s, e))
                repeat = 1
            else:
                break
            j += 1
        words = [t for t, _, _ in tokens[i + 2 * bool(letters) : j]]
        if len(values) < 3 or all(w in _WEAK or w.isdigit() for w in words):
            return None
        # The digits map to the whole spelled run: a finding inside covers all of it.
        pieces.append((_digits(values), spans[0][0], spans[-1][1]))
        return j, pieces


def _letters(lower: str, tokens: list[tuple[str, int, int]], i: int) -> tuple[str, int, int] | None:
    """Two single letters before a number word ("d e acht"), as one upper-case piece."""
    if i + 2 >= len(tokens):
        return None
    (a, s, _), (b, _, e) = tokens[i], tokens[i + 1]
    if len(a) != 1 or len(b) != 1 or not (a + b).isalpha() or lower[s + 1 : e - 1] != " ":
        return None
    if s and lower[s - 1].isalnum():
        return None  # the end of a word, not a spelled letter
    if _value(tokens[i + 2][0]) is None or tokens[i + 2][1] - e > 2:
        return None
    return (a + b).upper(), s, e


_AT = (
    r"(?:\s{0,2}@\s{0,2}|\s{0,2}[(\[{<]\s?(?:at|@|ät)\s?[)\]}>]\s{0,2}|"
    r"\s{1,2}(?:at|ät|arobase|arroba|chiocciola|apenstaartje|małpa|malpa|snabel-?a|"
    r"klammeraffe)\s{1,2})"
)
_DOT = (
    r"(?:\s{0,2}\.\s{0,2}|\s{0,2}[(\[{<]\s?(?:dot|punkt|point|punto|punt|kropka|prick)\s?[)\]}>]"
    r"\s{0,2}|\s{1,2}(?:dot|punkt|point|punto|punt|kropka|prick)\s{1,2})"
)
_LABEL = r"[a-z0-9][a-z0-9_-]{0,40}+(?<![_-])"
_SPELLED_EMAIL = re.compile(
    rf"(?<![\w.@-])({_LABEL}(?:{_DOT}{_LABEL}){{0,3}})({_AT})"
    rf"({_LABEL}(?:{_DOT}{_LABEL}){{0,3}}?)({_DOT})([a-z]{{2,6}})(?![\w@])"
)
_TLDS = frozenset(
    """com org net edu gov info biz io co eu de at ch fr be lu es pt it nl pl se no dk fi
    uk ie us ca au nz cz sk hu ro gr tr ru ua in jp cn br mx ar me app dev email online""".split()  # noqa: SIM905
)
_ENGLISH_DOT = re.compile(r"^\s{0,2}(?:\.|[(\[{<]\s?dot\s?[)\]}>]|dot)\s{0,2}$")
_STRONG_AT = re.compile(
    r"@|[(\[{<]|ät|arobase|arroba|chiocciola|apenstaartje|ma[łl]pa|snabel|klammer"
)


_DOT_WORDS = frozenset({"dot", "punkt", "point", "punto", "punt", "kropka", "prick"})
_BRACKETS = re.compile(r"[(\[{<] ?(?:at|@|ät|dot) ?[)\]}>]| @|@ ")


def spelled_emails(lower: str, words: set[str]) -> Iterator[tuple[int, int, str]]:
    """(start, end, domain) of addresses written with words or spaces; ``lower`` is the
    lower-cased text, ``words`` its words. Plain ``a@b.c`` addresses are left to the
    e-mail rule."""
    if _DOT_WORDS.isdisjoint(words) and (
        not any(ch in lower for ch in "([{<@") or _BRACKETS.search(lower) is None
    ):
        return
    for m in _SPELLED_EMAIL.finditer(lower):
        raw = m.group()
        if " " not in raw and "(" not in raw and "[" not in raw and "{" not in raw:
            continue  # a plain address: the e-mail rule's
        if m.group(5) not in _TLDS:
            continue
        at, dots = m.group(2), [*_DOT_SPLIT.findall(m.group(1) + m.group(3)), m.group(4)]
        if not _STRONG_AT.search(at) and not (
            all(_ENGLISH_DOT.match(d) for d in dots) or len(dots) >= 2
        ):
            continue  # bare "at": English dots, or a dot word in both halves
        domain = _DOT_SPLIT.sub(".", m.group(3)) + "." + m.group(5)
        yield m.start(), m.end(), domain


_DOT_SPLIT = re.compile(_DOT)
