"""Lexicon rules of the sensitivity detector: person names, health data, organisation terms.

Offline and fast by design: small bundled word lists (``data/sensitivity_*.txt``, sources
in their headers) and a set intersection as prefilter, so a prompt without a single known
first name or health word costs one ``findall`` and one set operation.

- ``person_name``: a known first name (also in a Polish case form: "Anny", "Piotra")
  followed by a capitalised surname ("Anna Schmidt", "Jan van der Berg"), a title plus a
  capitalised name ("Dr. Weber", "Frau Müller", "Pani Kowalska"), or a capitalised name
  after "my name is" / "name:" / "patient". A first name alone ("Ask Anna") is not reported;
  names on the public-figure list ("Marie Curie") are reported as ``public_figure`` for the
  caller to drop; and the caller drops names when nothing else in the request is sensitive.
- ``health``: a health term (condition, medication, treatment, injury; eight languages)
  with a personal anchor within 80 characters (a pronoun or possessive, a family, role or
  title word, a person's name, the pronoun "I"), or a term that is personal on its own
  ("diagnosed", "sick note", "krankgeschrieben", "sjukskriven"). General medical questions
  are not health data.
- ``org_term``: the configured organisation terms, case-insensitive, on word boundaries; a
  space or dash in a term also matches a non-breaking space, two spaces, a dash or an
  underscore ("Project Falcon" = "project-falcon").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from importlib import resources

from tierlm.signals.sensitivity_normalize import TermIndex, fold

Hit = tuple[str, int, int]

_UP = "A-ZÀ-ÖØ-ÞĀĂĄĆĈĊČĎĐĒĖĘĚĞĢĪĮİĶĹĻĽŁŃŅŇŌŐŒŔŘŚŜŞŠŢŤŪŮŰŲŹŻŽ"
_LO = "a-zß-öø-ÿāăąćĉċčďđēėęěğģīįıķĺļľłńņňōőœŕřśŝşšţťūůűųźżž"
_NAME = rf"[{_UP}][{_LO}'’]{{1,30}}(?:-[{_UP}][{_LO}]{{1,30}})?"
_PARTICLE = r"(?:van|von|de|der|den|da|di|del|della|du|la|le|ten|ter|zu|dos|das|y)"
_NOT_SURNAME = frozenset(
    """january february march april may june july august september october november december
    monday tuesday wednesday thursday friday saturday sunday street st road rd avenue ave lane
    drive boulevard way place square platz strasse straße weg gasse inc ltd llc gmbh ag corp
    co company group holding university college school institute hospital clinic hall park
    bridge center centre valley county city station airport award prize act law report plan
    team support service services the and or of for with from to in on at by valve valves pump
    pumps motor motors series controller controls systems system energy electric electronics
    engineering industries industrial technologies technology solutions labs software bank
    capital partners associates consulting international global plant line unit model""".split()  # noqa: SIM905
)
_TITLE = re.compile(
    rf"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Herrn|Herr|Frau|Hrn|Hr|Mme|Mlle|Monsieur|Madame|Sr|Sra|"
    rf"Señor|Señora|Sig|Sig\.ra|Signora|Signor|Dott|Ing|Pani|Pan|Panu|Pana|Panią|Mevrouw|"
    rf"Meneer|Dhr|Mevr|Fru)\.?(?:[ \t]{{1,3}}(?:Dr|Prof|Ing|med|rer\. nat|h\. ?c|phil|dent)"
    rf"\.?){{0,3}}[ \t]{{1,3}}"
    rf"(?:{_PARTICLE}[ \t]{{1,3}}){{0,2}}{_NAME}(?:[ \t]{{1,3}}{_NAME})?"
)
_HYPHEN_HEAD = re.compile(rf"(?<!\w)[{_UP}][{_LO}]{{1,19}}-$")
_STRONG_CONTEXT = ("my name", "mein name", "ich hei", "je m'appelle", "me llamo", "mi chiamo")
_CONTEXT = re.compile(  # searched in the lower-cased text; one flat alternation (fast)
    r"(?:my name is|my name's|mein name ist|ich heiße|ich heisse|je m'appelle|me llamo"
    r"|mi chiamo|name:|patient:|employee:|mitarbeiter:|mitarbeiterin:)[ \t]{1,3}"
)
_CONTEXT_NAME = re.compile(rf"{_NAME}(?:[ \t]{{1,3}}({_NAME}))?")
_STRICT_ANCHOR = (  # personal pronouns and possessives in the eight languages (English "I":
    # see PRONOUN_I, the lower-cased "i" is also an Italian article)
    r"i'm|i've|i'd|me|my|myself|mine|he|she|his|her|him|he's|she's|ich|mein|meine|meinem|"
    r"meinen|meiner|mir|mich|er|sein|seine|seinem|seinen|seiner|ihr|ihre|ihrem|ihren|ihrer|"
    r"moi|mon|mes|elle|lui|sa|ses|j'ai|je suis|yo|mi|mis|él|ella|io|mio|mia|miei|mie|lei|"
    r"suo|sua|ik|mij|mijn|hij|zij|haar|ja|mój|moja|moje|mojego|mojej|mnie|jego|jej|ona|"
    r"jag|mitt|mina|mig|hans|hon|hennes|min"
)
_ROLE_ANCHOR = (  # people by role, family tie or title
    r"patient|patients|patientin|patiente|paciente|paziente|patiënt|pacjent|pacjentka|"
    r"employee|colleague|coworker|co-worker|worker|operator|technician|contractor|"
    r"apprentice|client|customer|friend|manager|partner|kollege|kollegin|mitarbeiter|"
    r"mitarbeiterin|collègue|salarié|salariée|compañero|compañera|empleado|empleada|"
    r"collega|dipendente|medewerker|kolega|koleżanka|pracownik|pracownica|kollega|anställd|"
    r"son|daughter|wife|husband|mother|father|mom|mum|dad|sister|brother|child|baby|"
    r"sohn|tochter|mutter|vater|schwester|bruder|fils|fille|femme|mari|mère|père|sœur|"
    r"frère|enfant|hijo|hija|esposa|marido|madre|padre|hermana|hermano|figlio|figlia|"
    r"moglie|marito|sorella|fratello|zoon|dochter|vrouw|moeder|vader|zus|broer|syn|córka|"
    r"żona|mąż|matka|ojciec|siostra|brat|dotter|mamma|pappa|syster|bror|chef|boss|jefe|"
    r"capo|baas|szef|mr|mrs|ms|dr|herr|herrn|frau|mme|sr|sra|signora|signor|pani|pan|"
    r"mevrouw|meneer|fru"
)
ANCHOR = re.compile(rf"\b(?:{_STRICT_ANCHOR}|{_ROLE_ANCHOR})\b")
STRICT_ANCHOR = re.compile(rf"\b(?:{_STRICT_ANCHOR})\b")
PRONOUN_I = re.compile(r"\bI\b")  # searched in the original text
FIRST_PERSON = re.compile(
    r"\b(?:i'm|me|my|ich|mein|meine|mir|mich|moi|mon|mes|j'ai|je|yo|mi|mis|io|mio|mia|"
    r"ik|mij|mijn|ja|mój|moja|moje|mnie|jag|mitt|mina|mig)\b"
)
_POLISH_ENDINGS = (("owi", ""), ("em", ""), ("ie", ""), ("ą", "a"), ("y", "a"), ("ę", "a"),
                   ("i", "a"), ("a", ""), ("u", ""))  # fmt: skip
_POLISH_TEXT = re.compile(r"[ąćęłńśźżĄĆĘŁŃŚŹŻ]")
_POLISH_LAST = tuple({end[-1] for end, _ in _POLISH_ENDINGS})
_WINDOW = 80


def word_start(text: str, pos: int) -> bool:
    """Whether ``pos`` starts a word (what a leading ``\\b`` would check)."""
    return pos == 0 or not text[pos - 1].isalnum()


@lru_cache(maxsize=16)
def read_list(name: str) -> tuple[str, ...]:
    text = resources.files("tierlm.data").joinpath(name).read_text(encoding="utf-8")
    return tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


class NameRules:
    """Person-name rules: first-name lexicon (Polish case endings too), titles, context
    phrases. Names on the public-figure list are reported as ``public_figure`` (the caller
    drops them: a public figure in a public context is not personal data)."""

    def __init__(self) -> None:
        self.first_names = frozenset(read_list("sensitivity_first_names.txt"))
        self.public = frozenset(read_list("sensitivity_public_figures.txt"))
        self._cap = re.compile(rf"[{_UP}][{_LO}]{{1,19}}")
        self._pair = re.compile(
            rf"([{_UP}](?<!\w[{_UP}])[{_LO}]{{1,19}})"
            rf"(?=[ \t]{{1,3}}((?:{_PARTICLE}[ \t]{{1,3}}){{0,2}}({_NAME}))"
            rf"(?:[ \t]{{1,3}}({_NAME}))?(?![\w]))"
        )

    def known(self, word: str) -> bool:
        """A first name, also in a Polish case form ("Anny", "Piotra", "Janowi")."""
        if word in self.first_names:
            return True
        if not word.endswith(_POLISH_LAST):
            return False
        return any(
            word.endswith(end) and word[: len(word) - len(end)] + add in self.first_names
            for end, add in _POLISH_ENDINGS
            if len(word) - len(end) >= 3
        )

    def scan(self, text: str, lower: str) -> Iterator[Hit]:
        """Name hits; ``lower`` is ``text`` lower-cased with the same length."""
        for m in _TITLE.finditer(text):
            if m.start() == 0 or not text[m.start() - 1].isalnum():
                yield self._kind(lower, m.start(), m.end()), m.start(), m.end()
        for m in _CONTEXT.finditer(lower):
            name = _CONTEXT_NAME.match(text, m.end())
            if name is None:
                continue
            # "my name is X" is enough; after "name:"/"patient" (also code: "name: Any")
            # the name needs two words or a known first name.
            strong = m.group().startswith(_STRONG_CONTEXT) or name.group(1) is not None
            if strong or name.group().lower() in self.first_names:
                yield "person_name", name.start(), name.end()
        caps = {w.lower() for w in self._cap.findall(text)}
        if self.first_names.isdisjoint(caps) and not (
            _POLISH_TEXT.search(text) is not None and any(map(self.known, caps))
        ):
            return  # no first name (Polish case forms only looked up in Polish text)
        for m in self._pair.finditer(text):
            first, surname = m.group(1).lower(), m.group(3).lower()
            if surname in _NOT_SURNAME or not self.known(first):
                continue
            start, end = m.start(1), m.end(2)
            second = m.group(4)  # a second surname: José Álvarez García
            if second is not None and second.lower() not in _NOT_SURNAME:
                end = m.end(4)
            head = _HYPHEN_HEAD.search(text, max(0, start - 21), start)  # Hans-Peter
            start = head.start() if head else start
            yield self._kind(lower, start, end), start, end

    def _kind(self, lower: str, start: int, end: int) -> str:
        name = lower[start:end].removesuffix("'s").removesuffix("’s")
        return "public_figure" if name in self.public else "person_name"


class HealthRules:
    """Health terms near a personal anchor (or personal on their own: ``!`` in the list)."""

    def __init__(self) -> None:
        raw = read_list("sensitivity_health_terms.txt")
        self.strong = frozenset(t.lstrip("!") for t in raw if t.startswith("!"))
        self._index = TermIndex(t.lstrip("!") for t in raw)

    def scan(
        self, lower: str, words: set[str], anchors: Sequence[tuple[int, int]] = ()
    ) -> Iterator[Hit]:
        """``lower`` is the lower-cased text (same length); ``anchors``: person-name spans."""
        for s, e in self._index.find(lower, words):
            if lower[s:e] in self.strong or self._anchored(lower, s, e, anchors):
                yield "health", s, e

    @staticmethod
    def _anchored(lower: str, s: int, e: int, anchors: Sequence[tuple[int, int]]) -> bool:
        lo, hi = max(0, s - _WINDOW), e + _WINDOW
        if ANCHOR.search(lower, lo, hi) is not None:
            return True
        return any(a_end >= lo and a_start <= hi for a_start, a_end in anchors)


class TermRules:
    """Organisation-specific terms from config (project names, customer names, ...)."""

    def __init__(self, terms: Iterable[str]) -> None:
        cleaned = {" ".join(fold(t).lower().split()) for t in terms if t and t.strip()}
        # Matched in the lower-cased text: much faster than an IGNORECASE alternation.
        usable = sorted(cleaned, key=len)
        self.count = len(usable)
        # a space or dash in a term matches any run of spaces, dashes and underscores
        alternation = "|".join(
            re.escape(t).replace(r"\ ", r"[\s_-]{1,3}").replace(r"\-", r"[\s_-]{0,3}")
            for t in reversed(usable)
        )
        self._pattern = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)") if usable else None

    def scan(self, lower: str) -> Iterator[Hit]:
        """Term hits; ``lower`` is the text lower-cased with the same length."""
        if self._pattern is None:
            return
        for m in self._pattern.finditer(lower):
            yield "org_term", m.start(), m.end()
