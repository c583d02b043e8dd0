"""What the ledger stores: one :class:`RequestRecord` per request, with its attempts.

A record holds the decision (tier, backend, complexity, privacy, reasons, the kinds of
sensitive findings), every attempt (backend, outcome, latency, time to first token, error
kind, tokens, what it cost, the digest of what it sent), tokens, cost and the final outcome.
A request's ``cost_usd`` is the sum of its attempts' ``cost_usd``: what every provider it
reached bills, a failed or cut attempt's generated tokens and a cascade's rejected answer
included. It never holds an API key's secret, only its name.
Prompt and completion text are kept only when ``ledger.store_prompts`` is on, and then with
sensitive spans replaced by ``[KIND]``.

Every attempt that sent a body upstream keeps ``sent_digest``, the SHA-256 of the exact bytes
sent (see :func:`tierlm.ledger.audit.digest`), never the content; one sent to a backend whose
boundary is ``external`` also becomes one row of the audit trail (:class:`AuditRecord`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tierlm.privacy import redact_spans

Thumbs = Literal["up", "down"]


@dataclass(slots=True)
class AttemptRecord:
    """One try against one backend."""

    backend: str
    tier: str
    boundary: str  # process | host | site | external
    outcome: str = "ok"  # "ok", or the error code (``TierlmError.code``)
    error_kind: str | None = None  # e.g. "BackendTimeout"; "Skipped": never sent (not audited)
    latency_ms: float | None = None
    ttft_ms: float | None = None
    tokens: int = 0
    cost_usd: float = 0.0  # what this attempt is billed (a failed one: what it generated)
    sent_digest: str | None = None  # sha256 of the exact body sent upstream, if one was sent
    ts: float | None = None  # when the attempt started; None: the request's time
    judge_score: float | None = None  # the cascade judged this answer (execute/cascade.py)
    judge_decision: str | None = None  # accept | escalate | keep | late_fail


@dataclass(slots=True)
class RequestRecord:
    """One request, as decided and as carried out."""

    id: str = field(default_factory=lambda: "req-" + uuid.uuid4().hex[:20])
    ts: float = field(default_factory=time.time)
    api_key: str | None = None  # the key's configured name, never the secret
    tier: str | None = None  # the tier that answered (or was planned, on failure)
    backend: str | None = None
    model: str | None = None
    boundary: str | None = None
    complexity: float | None = None
    privacy: str | None = None
    reasons: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # kinds only, never values
    attempts: list[AttemptRecord] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    outcome: str = "ok"  # "ok", or the error code the client got
    latency_ms: float | None = None
    ttft_ms: float | None = None
    escalated: bool = False  # answered by a stronger tier than the cheapest eligible one
    fallback: bool = False  # an attempt failed and another backend answered
    stream: bool = False
    client_request_id: str | None = None  # the caller's x-request-id (correlation only)
    batch_id: str | None = None  # deferred work: the batch this request was a line of
    # Only stored when ledger.store_prompts is on; spans are (start, end, kind) in the text.
    prompt: str | None = None
    completion: str | None = None
    prompt_spans: list[tuple[int, int, str]] = field(default_factory=list)
    completion_spans: list[tuple[int, int, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        data = dict(data)
        data["attempts"] = [AttemptRecord(**a) for a in data.get("attempts", [])]
        for k in ("prompt_spans", "completion_spans"):
            data[k] = [tuple(s) for s in data.get(k, [])]
        return cls(**data)


@dataclass(slots=True, frozen=True)
class AuditRecord:
    """One call that crossed the site boundary, chained to the previous row by hash."""

    seq: int
    ts: float
    request_id: str
    api_key: str | None
    backend: str
    tier: str
    boundary: str
    privacy: str | None
    digest: str | None
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True, frozen=True)
class SentAttempt:
    """One attempt that sent a body to a site or external backend: where it went (backend,
    boundary) and the SHA-256 of the exact bytes (``digest``); ``n``: its place in the request."""

    request_id: str
    n: int
    ts: float
    backend: str
    tier: str | None
    boundary: str
    outcome: str
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True, frozen=True)
class AuditResult:
    """The outcome of ``audit verify``: ``ok``, or why not (``first_bad``: the first row that
    does not verify, when one does not); ``head_seq``/``head``: the last row that verified."""

    ok: bool
    rows: int
    first_bad: int | None = None
    reason: str = ""
    head_seq: int | None = None
    head: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stored_text(text: str | None, spans: list[tuple[int, int, str]], sensitive: bool) -> str | None:
    """The text to store: redacted by its spans; withheld if sensitive but no spans given."""
    if text is None:
        return None
    if spans:
        return redact_spans(text, spans)
    return "[withheld: sensitive content]" if sensitive else text
