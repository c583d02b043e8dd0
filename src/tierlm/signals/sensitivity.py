"""The sensitivity signal: what in a request must not leave the site unredacted.

:class:`SensitivityDetector` scans every message of a request (system, user, assistant,
tool results, and tool-call arguments) and returns :class:`~tierlm.types.Finding` s: a kind
and a span, never the matched value. Kinds (stable strings):

``email``, ``phone``, ``payment_card``, ``iban``, ``national_id``, ``record_id``,
``ip_address``, ``secret:<sub-kind>`` (``openai_key``, ``anthropic_key``,
``aws_access_key``, ``github_token``, ``slack_token``, ``google_api_key``, ``private_key``,
``jwt``, ``password``, ``api_key``, ``basic_auth``, ``token``, ``connection_string``, ...),
``person_name``, ``health``, ``hr``, ``date_of_birth``, ``address``, ``personal``,
``record``, ``org_term``.

What each kind covers: :mod:`~tierlm.signals.sensitivity_rules` (identifiers, contact
data, prefixed secrets), :mod:`~tierlm.signals.sensitivity_secrets` (secrets without a
prefix), :mod:`~tierlm.signals.sensitivity_people` (identifiers by label, facts about
people, records), :mod:`~tierlm.signals.sensitivity_lexicon` (names, health, configured
terms), :mod:`~tierlm.signals.sensitivity_normalize` (separators, spelled digits, at/dot
words). A person's name alone is not a finding: names are reported only when something
else in the request is (then they are redacted with it).

What a finding does to a request's privacy level, and what is redacted where, is
:mod:`tierlm.privacy`'s to say; :meth:`SensitivityDetector.redact` replaces every finding of
a text with ``[KIND]``.

Spans of :meth:`SensitivityDetector.scan` index into :func:`scan_view` of the message: its
text followed, for each tool call, by a newline and the call's arguments. The scan reads
the end of each message together with the start of the next, so a value split across two
messages ("4111 1111" then "1111 1111") gives one finding in each message, each span in
its own message's coordinates; redacting both removes the whole value.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from tierlm.privacy import redact_spans
from tierlm.signals.sensitivity_lexicon import (
    FIRST_PERSON,
    PRONOUN_I,
    HealthRules,
    NameRules,
    TermRules,
)
from tierlm.signals.sensitivity_normalize import WORD, SpelledNumbers, View, fold, spelled_emails
from tierlm.signals.sensitivity_people import PersonalRules
from tierlm.signals.sensitivity_rules import Hit, PatternRules, reserved_mail
from tierlm.signals.sensitivity_secrets import (
    basic_auth,
    call_arguments,
    encoded_blobs,
    entropy_tokens,
    password_statements,
)
from tierlm.types import ChatRequest, Finding, Message

__all__ = ["SensitivityDetector", "count_kinds", "scan_view"]

# When two findings overlap, the lower number wins (then the longer span).
_PRIORITY = {
    kind: rank
    for rank, kind in enumerate(
        (
            "secret",
            "record",
            "iban",
            "payment_card",
            "national_id",
            "record_id",
            "email",
            "ip_address",
            "phone",
            "org_term",
            "date_of_birth",
            "address",
            "person_name",
            "health",
            "hr",
            "personal",
        )
    )
}
# (a record covers its rows: the whole block is redacted as one)
# Facts about a person: dropped when the only people named are public figures.
_ABOUT_PERSON = frozenset({"health", "hr", "date_of_birth", "address", "personal"})
_JUNCTION = 64  # characters on each side of a message boundary scanned together


def _rank(hit: Hit) -> tuple[int, int]:
    kind, start, end = hit
    return _PRIORITY.get(kind.split(":", 1)[0], 20), start - end


def _resolve(hits: Iterable[Hit]) -> list[Hit]:
    """Sort by start and drop overlaps, keeping the higher-priority (then longer) hit."""
    kept: list[Hit] = []
    for hit in sorted(hits, key=lambda h: (h[1], -h[2])):
        if hit[2] <= hit[1]:
            continue
        if kept and hit[1] < kept[-1][2]:
            if _rank(hit) < _rank(kept[-1]):
                kept[-1] = hit
            continue
        kept.append(hit)
    return kept


def _lower(text: str) -> str:
    """Lower-case without changing the length (a few characters grow when lowered)."""
    lower = text.lower()
    if len(lower) == len(text):
        return lower
    return "".join(low if len(low := ch.lower()) == 1 else ch for ch in text)


def _arguments(call_function: dict[str, object]) -> str:
    args = call_function.get("arguments")
    if args is None:
        return ""
    return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


def scan_view(message: Message) -> str:
    """The text of a message as scanned: its text, then each tool call's arguments."""
    parts = [message.text]
    for call in message.tool_calls or ():
        parts.append(_arguments(call.function))
    return "\n".join(parts)


def count_kinds(findings: Iterable[Finding]) -> dict[str, int]:
    """How many findings of each kind (for reasons, metrics and reports)."""
    return dict(Counter(f.kind for f in findings))


class SensitivityDetector:
    """Finds sensitive content in text and requests; redacts it.

    ``terms`` are organisation-specific words to treat as sensitive (config
    ``routing.sensitive_terms``). ``names`` and ``health`` switch the lexicon detectors
    (person names, health data and the other facts about people).
    Build one per configuration and reuse it: the patterns are compiled here, once.
    """

    __slots__ = ("_health", "_names", "_numbers", "_people", "_rules", "_terms")

    def __init__(self, terms: Sequence[str] = (), *, names: bool = True, health: bool = True):
        self._rules = PatternRules()
        self._terms = TermRules(terms)
        self._numbers = SpelledNumbers()
        self._names = NameRules() if names else None
        self._health = HealthRules() if health else None
        self._people = PersonalRules() if health else None

    def __repr__(self) -> str:  # never the configured terms themselves
        return (
            f"SensitivityDetector(terms={self._terms.count}, names={self._names is not None}, "
            f"health={self._health is not None})"
        )

    def scan_text(self, text: str, message_index: int = 0) -> list[Finding]:
        """Findings in one text, sorted by position, without overlaps. A person's name
        alone is not a finding: names count only next to something sensitive."""
        hits = _resolve(self._hits(text))
        if all(kind == "person_name" for kind, _, _ in hits):
            return []
        return [Finding(kind, s, e, message_index) for kind, s, e in hits]

    def scan(self, request: ChatRequest) -> list[Finding]:
        """Findings in every message (text, tool results, tool-call arguments), including
        values split across two consecutive messages: such a value gives one finding in
        each message, each with its own span (the end of the first, the start of the
        second)."""
        views = [scan_view(m) for m in request.messages]
        per_message = [self._hits(v) for v in views]
        for i in range(len(views) - 1):
            for index, hit in self._junction(views[i], views[i + 1]):
                per_message[i + index].append(hit)
        resolved = [_resolve(hits) for hits in per_message]
        if all(kind == "person_name" for hits in resolved for kind, _, _ in hits):
            return []
        return [
            Finding(kind, s, e, index) for index, hits in enumerate(resolved) for kind, s, e in hits
        ]

    def _junction(self, first: str, second: str) -> Iterator[tuple[int, Hit]]:
        """Hits in the end of ``first`` and the start of ``second`` read together, as
        (0 or 1 for the message, hit in that message's coordinates). Read twice: joined
        by a line break, and glued (a number ending ``first`` continued by the first
        number of ``second``, skipping a short label such as "second part:")."""
        if not first or not second:
            return
        tail = first[-_JUNCTION:]
        a0 = len(first) - len(tail)
        yield from _split(self._hits(f"{tail}\n{second[:_JUNCTION]}"), a0, len(tail), 1, 0, False)
        glue = _GLUE.match(second)
        stripped = tail.rstrip()
        if glue is None or not stripped or not (stripped[-1].isdigit() or stripped[-1] in "-."):
            return
        k = glue.end()
        sep = " " if stripped[-1].isdigit() and second[k].isdigit() else ""
        joined = f"{stripped}{sep}{second[k : k + _JUNCTION]}"
        yield from _split(self._hits(joined), a0, len(stripped), len(sep), k, True)

    def _hits(self, text: str) -> list[Hit]:
        """Raw hits of every rule, person names included (the caller resolves overlaps)."""
        if not text:
            return []
        folded = fold(text)
        lower = _lower(folded)
        words = set(WORD.findall(lower))
        hits: list[Hit] = self._rules.scan(folded, lower)
        hits.extend(self._secrets(folded, lower, words))
        hits.extend(
            ("email", s, e)
            for s, e, domain in spelled_emails(lower, words)
            if not reserved_mail(domain)
        )
        if self._numbers.triggered(words) and (view := self._numbers.view(folded, lower, words)):
            hits.extend(self._spelled_numbers(view))
        hits.extend(self._terms.scan(lower))
        hits.extend(self._people_hits(folded, lower, words))
        return hits

    def _spelled_numbers(self, view: View) -> Iterator[Hit]:
        """Number hits on the spelled runs of ``view`` (with 48 characters of context
        before each run), mapped back to the original text."""
        for run_start, run_end in view.runs:
            lo = max(0, run_start - 48)
            window = view.text[lo : run_end + 8]
            for kind, s, e in self._rules.numbers(window, _lower(window)):
                if s + lo < run_end and e + lo > run_start:  # touches the run
                    yield (kind, *view.span(s + lo, e + lo))

    def _secrets(self, text: str, lower: str, words: set[str]) -> Iterator[Hit]:
        yield from password_statements(text, lower, words)
        yield from call_arguments(text)
        if "asic" in text:
            yield from basic_auth(text)
        yield from entropy_tokens(text, lower, words)
        yield from encoded_blobs(text, self._decoded_kinds)

    def _decoded_kinds(self, decoded: str) -> list[str]:
        return [kind for kind, _, _ in _resolve(self._hits(decoded)) if kind != "person_name"]

    def _people_hits(self, text: str, lower: str, words: set[str]) -> list[Hit]:
        """Names, health and the other facts about people; public figures dropped."""
        hits: list[Hit] = []
        names: list[Hit] = list(self._names.scan(text, lower)) if self._names else []
        private = [(s, e) for kind, s, e in names if kind == "person_name"]
        hits.extend(h for h in names if h[0] == "person_name")
        speaker = [m.span() for m in PRONOUN_I.finditer(text)]  # "I" anchors like a name
        if self._health is not None:
            hits.extend(self._health.scan(lower, words, private + speaker))
        if self._people is not None:
            hits.extend(self._people.scan(text, lower, words, private + speaker))
        public_only = len(private) < len(names) and not private and not speaker
        if public_only and FIRST_PERSON.search(lower) is None:  # and nobody speaking
            hits = [h for h in hits if h[0] not in _ABOUT_PERSON]
        return hits

    def redact(self, text: str) -> str:
        """The text with each finding replaced by ``[KIND]`` (e.g. ``[EMAIL]``)."""
        return _replace(text, 0, self.scan_text(text))

    def redact_request(self, request: ChatRequest) -> ChatRequest:
        """A redacted deep copy: message text, text parts and tool-call arguments, with
        the findings of :meth:`scan` (so values split across messages are redacted too)."""
        copy = request.model_copy(deep=True)
        findings = self.scan(request)
        for index, message in enumerate(copy.messages):
            mine = [f for f in findings if f.message_index == index]
            if mine:
                _redact_message(message, mine)
        return copy


_GLUE = re.compile(r"[^\d\n]{0,24}?(?=[-.+]?\d)")


def _split(
    hits: Iterable[Hit], a0: int, cut: int, sep: int, b0: int, crossing_only: bool
) -> Iterator[tuple[int, Hit]]:
    """Map hits in ``A + sep + B`` (A = first[a0:], B = second[b0:], ``cut`` = len(A)) back
    to the two messages; a hit across the boundary gives a hit in each."""
    for kind, s, e in hits:
        crossing = s < cut and e > cut + sep
        if crossing_only and not crossing:
            continue
        if s < cut:
            yield 0, (kind, a0 + s, a0 + min(e, cut))
        if e > cut + sep:
            yield 1, (kind, b0 + max(0, s - cut - sep), b0 + e - cut - sep)


def _replace(text: str, offset: int, findings: Sequence[Finding]) -> str:
    """``text`` (at ``offset`` in its scan view) with the findings inside it replaced (by
    :func:`tierlm.privacy.redact_spans`, the one owner of span replacement)."""
    spans = [
        (max(0, f.start - offset), min(len(text), f.end - offset), f.kind)
        for f in findings
        if f.end > offset and f.start < offset + len(text)
    ]
    return redact_spans(text, spans) if spans else text


def _redact_message(message: Message, findings: Sequence[Finding]) -> None:
    """Replace the findings (spans in :func:`scan_view` of ``message``) in place."""
    offset, text_end = 0, len(message.text) + 1
    if isinstance(message.content, str):
        message.content = _replace(message.content, 0, findings)
    elif message.content is not None:
        for part in message.content:
            if part.get("type") not in ("text", None):
                continue
            text = part.get("text", "")
            if isinstance(text, str):
                part["text"] = _replace(text, offset, findings)
            offset += len(str(text)) + 1
    offset = text_end
    for call in message.tool_calls or ():
        args = _arguments(call.function)
        if call.function.get("arguments") is not None:
            call.function["arguments"] = _replace(args, offset, findings)
        offset += len(args) + 1
