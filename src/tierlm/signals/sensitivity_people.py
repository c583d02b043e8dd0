"""Personal data by context: what the text says a number or a fact is, and about whom.

A checksum tells a card from an order number; it cannot tell "my SSN is 078-05-1120" (a
famous invalid number, but the user says it is theirs) from a part number. And a name alone
("Schedule a call with Daniel Novak") is not sensitive, while a person plus a personal
attribute is. The rules here, in English, German, French, Spanish, Italian, Dutch, Polish
and Swedish (kinds):

- ``national_id`` / ``record_id``: an identifier the text labels as an SSN, passport,
  national ID, tax ID, driver's licence (``national_id``) or as a patient, medical record,
  insured-person, employee or personnel number (``record_id``): 5-24 characters with at
  least four digits, within 32 characters after the label. No checksum needed.
- ``date_of_birth``: a full date (numeric or with the month in words) within 40
  characters after a birth label ("date of birth", "geboren am", "née le", "nací el",
  "sono nata il", "geboren op", "urodziłem się", "född den", ...).
- ``address``: a street address (street word plus house number in each language's order,
  "ul. Marszałkowska 84/92", "12 rue des Lilas", "Storgatan 7") about a person: near a
  personal anchor (see below), a residence verb ("I live", "wohne", "j'habite", "vivo",
  "woon", "mieszkam", "bor") or a person's name.
- ``hr``: salary, raise, performance review, warning, dismissal and reference-letter
  words about a person (a name or a personal pronoun nearby).
- ``personal``: family and life events (divorce, custody, pregnancy, arrest, criminal
  record, prison) about a person.
- ``record``: structured rows (CSV, semicolon, tab or ``|`` tables, JSON objects) whose
  columns or keys name a person (name, Vorname, nom, nombre, nazwisko, ...) and a personal
  attribute (address, date of birth, ID, e-mail, phone, salary, ...).

A *personal anchor* is a first- or third-person pronoun or possessive, a family or role
noun or a title, in the eight languages; a general question ("What is a typical salary
for a technician?") has none. Public figures (a bundled list) are not people to protect
here: the caller drops attribute findings when the only names are public figures and
nobody speaks in the first person.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

from tierlm.signals.sensitivity_lexicon import (
    ANCHOR,
    STRICT_ANCHOR,
    read_list,
    word_start,
)
from tierlm.signals.sensitivity_normalize import TermIndex

Hit = tuple[str, int, int]
_WINDOW = 80
_DIGIT = re.compile(r"\d")

_NATIONAL_LABELS = (
    r"ssn|social security (?:number|no\.?|#)|sozialversicherungsnummer|"
    r"sécurité sociale|seguridad social|previdenza sociale|passport|reisepass\w*|"
    r"passnummer|passeport|pasaporte|passaporto|paspoort\w*|paszport\w*|personalausweis\w*|"
    r"ausweisnummer|carte d'identité|identiteitskaart|carta d'identità|dowód osobisty|"
    r"dowodu osobistego|id card|identity card|national id|tax id|steuer-?id|"
    r"driver'?s licen[cs]e|führerschein\w*"
)
_RECORD_LABELS = (
    r"patient(?:en)?[ -]?(?:id|number|no\.?|nr\.?|nummer|file|record)|patiëntnummer|"
    r"patient (?:file|record) number|numéro de dossier|dossier (?:patient|médical)|"
    r"n° de dossier|numéro d'assuré|versichertennummer|fallnummer|patientennummer|"
    r"cartella clinica|historia clínica|número de (?:historia|paciente|expediente)|"
    r"numer (?:pacjenta|kartoteki|ewidencyjny|ubezpieczenia)|journalnummer|"
    r"employee (?:id|number|no\.?|#)|personnel (?:number|no\.?|file)|staff (?:id|number)|"
    r"personalnummer|matricule|numéro (?:d'employé|de salarié)|número de empleado|"
    r"matricola|personeelsnummer|numer pracownika|anställningsnummer|"
    r"medical record(?: number)?|mrn|member (?:id|number)|insurance number"
)
# One flat alternation of literals: the regex engine skips to their first letters (no
# leading \b or group; the word boundaries are checked per match).
_ID_LABEL = re.compile(rf"(?:{_NATIONAL_LABELS}|{_RECORD_LABELS})(?![\w])")
_NATIONAL_LABEL = re.compile(rf"(?:{_NATIONAL_LABELS})")
# The first word of every label above (and the compounds users write): a set test on the
# text's words decides whether the label pattern runs at all.
_ID_WORDS = frozenset(
    """ssn social sozialversicherungsnummer sécurité seguridad previdenza passport reisepass
    reisepassnummer passnummer passeport pasaporte passaporto paspoort paspoortnummer paszport
    paszportu personalausweis personalausweisnummer ausweisnummer carte identiteitskaart carta
    dowód dowodu id identity national tax steuer driver drivers führerschein
    führerscheinnummer patient patienten patiëntnummer numéro dossier n versichertennummer
    fallnummer patientennummer cartella historia número numer journalnummer employee
    personnel staff personalnummer matricule matricola personeelsnummer anställningsnummer
    medical mrn member insurance""".split()  # noqa: SIM905
)
_ID_TOKEN = re.compile(r"(?<![\w-])[A-Z0-9](?:[A-Z0-9./-]| (?=\d)){3,22}[A-Z0-9](?![\w-])")

_MONTHS = (
    r"(?:january|february|march|april|may|june|july|august|september|october|november|"
    r"december|januar|jänner|februar|märz|mai|juni|juli|oktober|dezember|janvier|février|"
    r"mars|avril|juin|juillet|août|septembre|octobre|novembre|décembre|enero|febrero|marzo|"
    r"abril|mayo|junio|julio|agosto|septiembre|octubre|noviembre|diciembre|gennaio|"
    r"febbraio|aprile|maggio|giugno|luglio|settembre|ottobre|dicembre|januari|februari|"
    r"maart|mei|augustus|stycznia|lutego|marca|kwietnia|maja|czerwca|lipca|sierpnia|"
    r"września|października|listopada|grudnia|augusti|oktober)"
)
_DATE = re.compile(
    rf"\b(?:\d{{1,2}}[./-]\d{{1,2}}[./-](?:19|20)\d{{2}}|(?:19|20)\d{{2}}-\d{{2}}-\d{{2}}|"
    rf"\d{{1,2}}\.?(?: de)? {_MONTHS}(?: de)? (?:19|20)\d{{2}}|"
    rf"{_MONTHS} \d{{1,2}}(?:st|nd|rd|th)?,? (?:19|20)\d{{2}})\b"
)
_BIRTH = re.compile(
    r"(?:date of birth|birth ?date|birthday|dob|d\.o\.b\.|born|geburtsdatum|geboren|"
    r"geburtstag|date de naissance|née?|fecha de nacimiento|nacid[oa]|nací|"
    r"data di nascita|nat[oa]|geboortedatum|data urodzenia|urodzi\w+|urodzon[aye]|"
    r"födelsedatum|född)\b"
)

_BIRTH_WORDS = frozenset(
    """date fecha data birth birthdate birthday dob born geburtsdatum geboren geburtstag
    naissance né née
    nacimiento nacido nacida nací nascita nato nata geboortedatum urodzenia urodziłem
    urodziłam urodził urodziła urodzona urodzony födelsedatum född""".split()  # noqa: SIM905
)
_STREET_WORDS = frozenset(
    """ul ulica ulicy al aleja alei os pl calle c avenida avda paseo plaza via viale piazza
    corso vicolo rue avenue boulevard bd chemin allée impasse quai place street st ave road rd
    lane drive blvd court terrace close way""".split()  # noqa: SIM905
)
_STREET_ENDS = ("straße", "strasse", "str", "weg", "gasse", "allee", "platz", "ring", "damm",
                "straat", "laan", "gracht", "plein", "kade", "singel", "dijk", "steeg", "gatan",
                "vägen", "gränd", "torget", "stigen", "backen")  # fmt: skip

# Street addresses, one pattern per word order, each starting with a literal (fast); the
# name or house number before the street word is checked on the few matches.
_STREET_AFTER = re.compile(  # Polish, Spanish, Italian: street word, name, number
    r"(?:ul\.|ulica|ulicy|al\.|aleja|alei|os\.|pl\.)\s[A-ZŁŚŻŹĆ][\wąćęłńóśźż]+"
    r"(?:\s[A-ZŁŚŻŹĆ][\wąćęłńóśźż]+)?\s\d{1,4}[a-zA-Z]?(?:/\d{1,4})?|"
    r"(?:calle|c/|avenida|avda\.|paseo|plaza|via|viale|piazza|corso|vicolo)\s"
    r"(?:de\s|del\s|de la\s)?[A-ZÁÉÍÓÚ][\w'-]+(?:\s[A-Z][\w'-]+)?,?\s(?:n[º°o]\.?\s?)?\d{1,4}\b"
)
_STREET_SUFFIX = re.compile(  # German, Dutch, Swedish: Lindenstraße 14, Storgatan 7
    r"(?:straße|strasse|str\.|weg|gasse|allee|platz|ring|damm|straat|laan|gracht|plein|"
    r"kade|singel|dijk|steeg|gatan|vägen|gränd|torget|stigen|backen)\s\d{1,4}[a-z]?\b"
)
_STREET_BEFORE = re.compile(  # French, English: 12 rue des Lilas, 42 Maple Avenue
    r"(?:rue|avenue|boulevard|bd|chemin|allée|impasse|quai|place)\s(?:de\s|du\s|des\s|"
    r"de la\s|d')?[A-ZÉ][\w'-]+|(?:Street|St\.|Avenue|Ave\.?|Road|Rd\.|Lane|Drive|"
    r"Boulevard|Blvd\.?|Court|Terrace|Close|Way)\b"
)
_NUMBER_HEAD = re.compile(r"\b\d{1,5}(?:\s?(?:bis|ter))?,?\s(?:[A-Z][a-z]+\s){0,2}$")
_RESIDENCE = re.compile(
    r"\b(?:i live|lives|living at|moved to|my address|my home|wohne|wohnt|meine adresse|"
    r"wohnhaft|j'habite|habite|mon adresse|domicile|vivo|vive|mi dirección|mi domicilio|"
    r"abito|abita|il mio indirizzo|residente|woon|woont|mijn adres|mieszkam|mieszka|"
    r"mój adres|zamieszkał\w*|bor|min adress|hemadress|send (?:it|the parcel) to|"
    r"wysłać paczkę do)\b"
)


class PersonalRules:
    """Labelled identifiers, birth dates, addresses, HR facts, life events, records."""

    def __init__(self) -> None:
        self._id_words = TermIndex(_ID_WORDS)
        self._birth_words = TermIndex(_BIRTH_WORDS)
        self._street_words = TermIndex(_STREET_WORDS)
        self._hr = TermIndex(read_list("sensitivity_hr_terms.txt"))
        self._life = TermIndex(read_list("sensitivity_life_terms.txt"))
        self._record_name = frozenset(read_list("sensitivity_record_names.txt"))
        self._record_attr = frozenset(read_list("sensitivity_record_attributes.txt"))
        self.public = frozenset(read_list("sensitivity_public_figures.txt"))

    def scan(
        self, text: str, lower: str, words: set[str], names: Sequence[tuple[int, int]]
    ) -> Iterator[Hit]:
        """Hits in ``text``; ``lower`` is it lower-cased (same length), ``words`` its
        words; ``names``: the spans of private person names (and of the pronoun "I")."""
        if _DIGIT.search(text) is not None:
            yield from self._labelled_ids(text, lower, words)
            yield from self._birth_dates(lower, words)
            yield from self._addresses(text, lower, words, names)
        for kind, index in (("hr", self._hr), ("personal", self._life)):
            for s, e in index.find(lower, words):
                if _about_person(lower, s, e, names, strict=kind == "hr"):
                    yield kind, s, e
        if "\n" in text or "{" in text:
            yield from self._records(text, lower)

    def _labelled_ids(self, text: str, lower: str, words: set[str]) -> Iterator[Hit]:
        for m in _matches_at(_ID_LABEL, lower, self._id_words.find(lower, words)):
            kind = "national_id" if _NATIONAL_LABEL.fullmatch(m.group()) else "record_id"
            for t in _ID_TOKEN.finditer(text, m.end(), min(len(text), m.end() + 40)):
                if t.start() - m.end() > 32:
                    break
                gap = text[m.end() : t.start()]
                if any(stop in gap for stop in ("\n", "?", "!", ". ")):
                    break
                if sum(ch.isdigit() for ch in t.group()) >= 4 and len(t.group()) >= 5:
                    yield kind, t.start(), t.end()
                    break

    def _birth_dates(self, lower: str, words: set[str]) -> Iterator[Hit]:
        for m in _matches_at(_BIRTH, lower, self._birth_words.find(lower, words)):
            d = _DATE.search(lower, m.end(), min(len(lower), m.end() + 48))
            if d is None or d.start() - m.end() > 40:  # "am 3. Mai 1979 geboren"
                d = _DATE.search(lower, max(0, m.start() - 32), m.start())
            if d is not None:
                yield "date_of_birth", d.start(), d.end()

    def _addresses(
        self, text: str, lower: str, words: set[str], names: Sequence[tuple[int, int]]
    ) -> Iterator[Hit]:
        starts = list(self._street_words.find(lower, words))
        streets = [m.span() for m in _matches_at(_STREET_AFTER, text, starts)]
        for m in _matches_at(_STREET_BEFORE, text, starts):
            head = _NUMBER_HEAD.search(text, max(0, m.start() - 40), m.start())
            if head is not None:
                streets.append((head.start(), m.end()))
        ends = [w for w in words if w.endswith(_STREET_ENDS)]
        if ends:
            streets.extend(_suffix_streets(text, lower, ends))
        for s, e in streets:
            lo, hi = max(0, s - _WINDOW), min(len(lower), e + _WINDOW)
            if _RESIDENCE.search(lower, lo, hi) or _about_person(lower, s, e, names, strict=True):
                yield "address", s, e

    def _records(self, text: str, lower: str) -> Iterator[Hit]:
        """A header row naming a person column and a personal column, then data rows; or
        a JSON object with such keys."""
        lines = lower.split("\n")
        pos = 0
        starts = []
        for line in lines:
            starts.append(pos)
            pos += len(line) + 1
        for i, line in enumerate(lines[:-1]):
            sep = _separator(line)
            if sep is None or not self._personal_header(line, sep):
                continue
            j = i + 1
            while j < len(lines) and lines[j].count(sep) >= max(1, line.count(sep) - 1):
                j += 1
            if j > i + 1:
                yield "record", starts[i], starts[j - 1] + len(lines[j - 1])
        for m in re.finditer(r"\{[^{}]{10,2000}\}", lower):
            keys = {k.strip() for k in re.findall(r"[\"']([^\"']{1,40})[\"']\s*:", m.group())}
            if keys & self._record_name and keys & self._record_attr:
                yield "record", m.start(), m.end()

    def _personal_header(self, line: str, sep: str) -> bool:
        cells = {c.rsplit(":", 1)[-1].strip(" \t|") for c in line.split(sep)}
        return bool(cells & self._record_name) and bool(cells & self._record_attr)


def _matches_at(
    pattern: re.Pattern[str], text: str, starts: Iterable[tuple[int, int]]
) -> Iterator[re.Match[str]]:
    """``pattern`` matched at each start (the spans of its possible first words)."""
    end = 0
    for s, _ in starts:
        if s >= end and (m := pattern.match(text, s)) is not None:
            end = m.end()
            yield m


def _suffix_streets(text: str, lower: str, words: list[str]) -> Iterator[tuple[int, int]]:
    """Street names ending in a street word ("Lindenstraße 14"), then a house number."""
    for word in words:
        pos = lower.find(word)
        while pos >= 0:
            m = _STREET_SUFFIX.match(text, pos + len(word) - _suffix_len(word))
            if m is not None and text[pos].isupper() and word_start(text, pos):
                yield pos, m.end()
            pos = lower.find(word, pos + len(word))


def _suffix_len(word: str) -> int:
    return next(len(end) for end in _STREET_ENDS if word.endswith(end))


def _separator(line: str) -> str | None:
    for sep in (";", "|", "\t", ","):
        if line.count(sep) >= 1 and len(line) < 400:
            return sep
    return None


def _about_person(
    lower: str, s: int, e: int, names: Sequence[tuple[int, int]], *, strict: bool
) -> bool:
    """A person name or an anchor within the window around ``[s, e)``."""
    lo, hi = max(0, s - _WINDOW), min(len(lower), e + _WINDOW)
    if any(a_end >= lo and a_start <= hi for a_start, a_end in names):
        return True
    return (STRICT_ANCHOR if strict else ANCHOR).search(lower, lo, hi) is not None
