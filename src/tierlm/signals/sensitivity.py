"""The sensitivity signal: what in a request must not leave the site unredacted.

:class:`SensitivityDetector` scans every message of a request (system, user, assistant,
tool results, and tool-call arguments) and returns :class:`~tierlm.types.Finding` s: a kind
and a span, never the matched value. Kinds (stable strings):

``email``, ``phone``, ``payment_card``, ``iban``, ``national_id``, ``ip_address``,
``secret:<sub-kind>`` (``openai_key``, ``anthropic_key``, ``aws_access_key``,
``github_token``, ``slack_token``, ``google_api_key``, ``private_key``, ``jwt``,
``password``, ``api_key``, ``token``, ``connection_string``, ...), ``person_name``,
``health``, ``org_term``.

What each kind does and does not cover is documented in
:mod:`tierlm.signals.sensitivity_rules` and :mod:`tierlm.signals.sensitivity_lexicon`.
What a finding does to a request's privacy level, and what is redacted where, is
:mod:`tierlm.privacy`'s to say; :meth:`SensitivityDetector.redact` replaces every finding of
a text with ``[KIND]``.

Spans of :meth:`SensitivityDetector.scan` index into :func:`scan_view` of the message: its
text followed, for each tool call, by a newline and the call's arguments.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence

from tierlm.signals.sensitivity_lexicon import HealthRules, NameRules, TermRules
from tierlm.signals.sensitivity_rules import Hit, PatternRules
from tierlm.types import ChatRequest, Finding, Message

__all__ = ["SensitivityDetector", "count_kinds", "scan_view"]

# When two findings overlap, the lower number wins (then the longer span).
_PRIORITY = {
    "secret": 0,
    "iban": 1,
    "payment_card": 2,
    "national_id": 3,
    "email": 4,
    "ip_address": 5,
    "phone": 6,
    "org_term": 7,
    "person_name": 8,
    "health": 9,
}


def _rank(hit: Hit) -> tuple[int, int]:
    kind, start, end = hit
    return _PRIORITY.get(kind.split(":", 1)[0], 10), start - end


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
    ``routing.sensitive_terms``). ``names`` and ``health`` switch the lexicon detectors.
    Build one per configuration and reuse it: the patterns are compiled here, once.
    """

    __slots__ = ("_health", "_names", "_rules", "_terms")

    def __init__(self, terms: Sequence[str] = (), *, names: bool = True, health: bool = True):
        self._rules = PatternRules()
        self._terms = TermRules(terms)
        self._names = NameRules() if names else None
        self._health = HealthRules() if health else None

    def __repr__(self) -> str:  # never the configured terms themselves
        return (
            f"SensitivityDetector(terms={self._terms.count}, names={self._names is not None}, "
            f"health={self._health is not None})"
        )

    def scan_text(self, text: str, message_index: int = 0) -> list[Finding]:
        """Findings in one text, sorted by position, without overlaps."""
        if not text:
            return []
        lower = _lower(text)
        hits: list[Hit] = self._rules.scan(text, lower)
        hits.extend(self._terms.scan(lower))
        name_spans: list[tuple[int, int]] = []
        if self._names is not None:
            names = list(self._names.scan(text, lower))
            hits.extend(names)
            name_spans = [(s, e) for _, s, e in names]
        if self._health is not None:
            hits.extend(self._health.scan(lower, name_spans))
        return [Finding(kind, s, e, message_index) for kind, s, e in _resolve(hits)]

    def scan(self, request: ChatRequest) -> list[Finding]:
        """Findings in every message (text, tool results, tool-call arguments)."""
        findings: list[Finding] = []
        for index, message in enumerate(request.messages):
            findings.extend(self.scan_text(scan_view(message), index))
        return findings

    def redact(self, text: str) -> str:
        """The text with each finding replaced by ``[KIND]`` (e.g. ``[EMAIL]``)."""
        findings = self.scan_text(text)
        if not findings:
            return text
        out: list[str] = []
        pos = 0
        for f in findings:
            out.append(text[pos : f.start])
            out.append(f"[{f.kind.upper()}]")
            pos = f.end
        out.append(text[pos:])
        return "".join(out)

    def redact_request(self, request: ChatRequest) -> ChatRequest:
        """A redacted deep copy: message text, text parts and tool-call arguments."""
        copy = request.model_copy(deep=True)
        for message in copy.messages:
            if isinstance(message.content, str):
                message.content = self.redact(message.content)
            elif message.content is not None:
                for part in message.content:
                    if isinstance(part.get("text"), str):
                        part["text"] = self.redact(part["text"])
            for call in message.tool_calls or ():
                args = call.function.get("arguments")
                if isinstance(args, str):
                    call.function["arguments"] = self.redact(args)
                elif args is not None:
                    redacted = self.redact(json.dumps(args, ensure_ascii=False))
                    call.function["arguments"] = redacted
        return copy
