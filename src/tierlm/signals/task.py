"""The task signal: what kind of work a request asks for, and how big it is.

``detect_task`` looks at the request's shape (tools, ``response_format``, image parts) and its
text (extraction verbs, code markers) and estimates its size in tokens without loading a
tokenizer. All checks are single regex passes: linear in the prompt length. ``needs`` adds
the domain (legal/medical/finance vocabulary) and the language, on demand, so the policy can
prefer the backend suited to the request (``BackendConfig.good_at``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tierlm.signals.language import LANGUAGES, language
from tierlm.types import ChatRequest

__all__ = ["STRENGTHS", "TaskInfo", "detect_task", "estimate_tokens", "needs"]


def _vocabulary(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Domains a backend may declare it is good at: whole words, word stems (prefixes) and phrases
# of each domain's vocabulary in the lower-cased text (English plus the commonest words of
# de, fr, es, it, nl, pl, sv). Not "treatment", "dose" or "vat": water treatment, chemical
# dosing and tanks are plant words.
_DOMAIN_WORDS: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "legal": (
        _vocabulary(
            "clause lawsuit litigation statute gdpr dsgvo rgpd legal legally lawyer attorney "
            "jurisdiction court plaintiff defendant haftung klausel contrat juridique contrato "
            "cláusula contratto overeenkomst"
        ),
        ("contract", "liabilit", "indemnif", "vertrag", "umow", "avtal"),
    ),
    "medical": (
        _vocabulary(
            "clinical medication disease icd10 krankheit maladie enfermedad malattia ziekte "
            "choroba sjukdom contraindication contraindications"
        ),
        ("diagnos", "symptom", "prescri", "patient", "médica", "leczeni"),
    ),
    "finance": (
        _vocabulary(
            "ebitda revenue depreciation ledger tax taxes taxation audit auditor ifrs gaap "
            "rechnung bilanz facture bilan factura fattura bilancio factuur"
        ),
        ("invoice", "amortis", "amortiz", "faktur"),
    ),
}
_DOMAIN_PHRASES = re.compile(
    r"(?P<medical>side effects?)|(?P<finance>balance sheet|cash ?flow|accounts? "
    r"(?:payable|receivable)|vat (?:rate|return))"
)
_WORDS = re.compile(r"[^\W\d_]+", re.UNICODE)
_DOMAIN_SAMPLE = 4000  # characters of the request read for its domain

_EXTRACTION = re.compile(
    r"\b(?:extract\w*|pull out|parse|fill (?:in|out) (?:the )?(?:fields?|form|template)|"
    r"list (?:all|every|each)\b[^.\n]{0,60}\b(?:from|in) (?:the|this|these|that)|"
    r"return (?:only )?(?:valid |a )?json|(?:as|in|to|into) (?:a )?(?:json|csv|yaml|table)\b|"
    r"json (?:object|schema|format)|structured (?:data|output)|key[- ]value pairs|"
    r"named entities|auslesen|extrahier\w*|extraire|extraer)",
)  # searched in the lower-cased text
_KINDS = ("tools", "code", "extraction", "long_context", "vision")
# Every word ``BackendConfig.good_at`` may use: task kinds, domains and languages.
STRENGTHS = frozenset({*_KINDS, *_DOMAIN_WORDS, *LANGUAGES})

_CODE_WORDS = re.compile(
    r"```|\b(?:def \w+\(|class \w+[:(]|function\s*\w*\s*\(|import \w+|from [\w.]+ import|"
    r"#include|console\.log|public static|select\s+[\w*,. ]+\s+from\b|"
    r"traceback \(most recent call last\)|exception in thread|stack ?trace|segfault|"
    r"compiler? error|syntax error|regex|regular expression|python|javascript|typescript|"
    r"java|c\+\+|c#|golang|rust|bash|shell script|powershell|sql|dockerfile|kubernetes|"
    r"unit tests?|refactor\w*|debug\w*|write (?:a |an )?(?:\w+ )?(?:script|function|program|"
    r"class|method|query)|structured text|ladder logic|iec 61131|plc program\w*)",
)  # searched in the lower-cased text
_CODE_PUNCT = re.compile(r"[{}();=<>\[\]]")

_PUNCT = re.compile(r"[^\w\s]")
_UPPER = re.compile(r"[A-Z]")

# estimate_tokens: a linear model fitted (relative least squares) against the real token
# counts of SmolLM2-135M's tokenizer on 182 texts (the labelled sensitivity prompts and
# chunks of Python source). Held-out mean absolute error 10.4 % (p90 25 %); plain chars/4
# scored 29 %. bench/bench_signals.py re-measures it when llama-cpp-python is installed.
_PER_CHAR = 0.175
_PER_DIGIT = 1.087  # SmolLM2 splits numbers into single digits
_PER_PUNCT = 0.622
_PER_UPPER = 0.625  # mixed-case identifiers and keys split into many pieces
_PER_NON_ASCII_BYTE = 0.599


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What a request asks for. ``tokens`` is an estimate of the prompt size."""

    tools: bool
    extraction: bool
    code: bool
    long_context: bool
    tokens: int
    vision: bool = False  # image parts in the conversation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_tokens(text: str) -> int:
    """A fast token-count estimate (no tokenizer): a linear model of characters, digits,
    punctuation, capitals and non-ASCII bytes; about 10 % mean error against SmolLM2."""
    if not text:
        return 0
    digits = sum(map(text.count, "0123456789"))
    extra_bytes = len(text.encode("utf-8", "surrogatepass")) - len(text)
    value = (
        _PER_CHAR * len(text)
        + _PER_DIGIT * digits
        + _PER_PUNCT * len(_PUNCT.findall(text))
        + _PER_UPPER * len(_UPPER.findall(text))
        + _PER_NON_ASCII_BYTE * extra_bytes
    )
    return max(1, round(value))


def _looks_like_code(text: str) -> bool:
    if _CODE_WORDS.search(text) is not None:
        return True
    if len(text) < 40:
        return False
    sample = text[:20000]
    return len(_CODE_PUNCT.findall(sample)) > 0.04 * len(sample)


def _domains(text: str) -> tuple[str, ...]:
    """The domains whose vocabulary ``text`` (lower-cased) uses, in a fixed order."""
    words = set(_WORDS.findall(text, 0, _DOMAIN_SAMPLE))
    found = {m.lastgroup for m in _DOMAIN_PHRASES.finditer(text, 0, _DOMAIN_SAMPLE)}
    for name, (exact, stems) in _DOMAIN_WORDS.items():
        if name not in found and (
            not words.isdisjoint(exact) or any(w.startswith(stems) for w in words)
        ):
            found.add(name)
    return tuple(name for name in _DOMAIN_WORDS if name in found)


def detect_task(request: ChatRequest, *, long_context_tokens: int = 8000) -> TaskInfo:
    """Tools, extraction, code and long context for one request."""
    tools = bool(request.tools) or any(m.tool_calls or m.role == "tool" for m in request.messages)
    if request.tool_choice not in (None, "none"):
        tools = True
    tokens = 0
    for message in request.messages:
        tokens += 4 + estimate_tokens(message.text)
        for call in message.tool_calls or ():
            tokens += estimate_tokens(json.dumps(call.function, ensure_ascii=False))
    if request.tools:
        tokens += estimate_tokens(json.dumps(request.tools, ensure_ascii=False))
    asked = "\n".join(m.text for m in request.messages if m.role in ("user", "system")).lower()
    response_format = request.extra.get("response_format")
    extraction = _EXTRACTION.search(asked) is not None or (
        isinstance(response_format, dict)
        and response_format.get("type") in ("json_object", "json_schema")
    )
    return TaskInfo(
        tools=tools,
        extraction=extraction,
        code=_looks_like_code(asked),
        long_context=tokens >= long_context_tokens,
        tokens=tokens,
        vision=any(
            isinstance(m.content, list) and any(p.get("type") == "image_url" for p in m.content)
            for m in request.messages
        ),
    )


def needs(
    request: ChatRequest, task: Mapping[str, Any], among: frozenset[str] = STRENGTHS
) -> list[str]:
    """What a backend would have to be good at for ``request`` (``good_at`` words): its task
    kinds (from ``task``, :meth:`TaskInfo.to_dict`), the domains whose vocabulary it uses and
    its language when not English. Read on demand: only a tier with a choice of backends
    needs it, and domains and language only when some backend in ``among`` declares one."""
    named = [k for k in _KINDS if task.get(k)]
    read_domains = not among.isdisjoint(_DOMAIN_WORDS)
    read_language = not among.isdisjoint(LANGUAGES)
    if not (read_domains or read_language):
        return named
    asked = "\n".join(m.text for m in request.messages if m.role in ("user", "system"))
    asked = asked[:_DOMAIN_SAMPLE].lower()
    if read_domains:
        named += _domains(asked)
    lang = language(asked) if read_language else None
    if lang is not None and lang != "en":
        named.append(lang)
    return named
