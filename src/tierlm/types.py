"""Core data types: what flows through tierlm.

A client request becomes one :class:`ChatRequest` at the edge (HTTP, CLI or Python API), the
policy turns it into a :class:`Plan` (ordered :class:`Candidate` s plus reasons), the executor
carries the plan out against backends, and the answer comes back as a :class:`ChatResponse`
or a stream of :class:`StreamEvent` s.

Wire-format details (OpenAI, Ollama, Anthropic) live in ``server/`` and ``backends/``; these
types are the one internal shape between them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Boundary(IntEnum):
    """How far the data travels when a backend answers. Ordered: smaller stays closer."""

    PROCESS = 0  # in this process
    HOST = 1  # another process on this machine
    SITE = 2  # the customer's own network
    EXTERNAL = 3  # a third party's cloud

    @classmethod
    def parse(cls, value: str | int | Boundary) -> Boundary:
        if isinstance(value, Boundary):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[value.strip().upper()]
        except KeyError:
            names = ", ".join(b.label for b in cls)
            raise ValueError(f"unknown boundary {value!r} (expected one of: {names})") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class Privacy(StrEnum):
    """Privacy level of a request; see docs/architecture.md."""

    PUBLIC = "public"  # external backends allowed
    ENHANCED = "enhanced"  # external only after redaction
    PRIVATE = "private"  # stays at or below the site boundary

    @property
    def rank(self) -> int:
        return _PRIVACY_RANK[self]

    def raise_to(self, other: Privacy) -> Privacy:
        """The stricter of the two levels: nothing lowers a level."""
        return self if self.rank >= other.rank else other


_PRIVACY_RANK = {Privacy.PUBLIC: 0, Privacy.ENHANCED: 1, Privacy.PRIVATE: 2}

Role = Literal["system", "user", "assistant", "tool", "developer"]


class ToolCall(BaseModel):
    """An OpenAI-shaped tool call (``function`` calls are the only kind in use); other keys
    are dropped."""

    model_config = ConfigDict(extra="ignore")

    id: str
    type: Literal["function"] = "function"
    function: dict[str, Any]  # {"name": str, "arguments": str (JSON)}


# OpenAI content part type -> the keys such a part may have.
PART_KEYS: dict[str, frozenset[str]] = {
    "text": frozenset({"type", "text"}),
    "refusal": frozenset({"type", "refusal"}),
    "image_url": frozenset({"type", "image_url"}),
    "input_audio": frozenset({"type", "input_audio"}),
    "file": frozenset({"type", "file"}),
}


def _check_part(i: int, part: dict[str, Any]) -> None:
    kind = part.get("type", "text")
    keys = PART_KEYS.get(kind) if isinstance(kind, str) else None
    if keys is None:
        known = ", ".join(PART_KEYS)
        raise ValueError(f"content part {i}: unknown type {kind!r} (known: {known})")
    unknown = sorted(str(k) for k in part if k not in keys)
    if unknown:
        raise ValueError(f"content part {i}: unknown field {unknown[0]!r} for type {kind!r}")
    text_key = {"text": "text", "refusal": "refusal"}.get(kind)
    if text_key is not None and not isinstance(part.get(text_key), str):
        raise ValueError(f"content part {i}: {text_key!r} must be a string")


class Message(BaseModel):
    """One chat message. ``content`` is text, or OpenAI content parts of the types in
    :data:`PART_KEYS` (with only their keys). Keys other than the fields below are dropped
    (clients echo answers back with ``refusal``, ``annotations``, ``audio``)."""

    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _known_parts(
        cls, v: str | list[dict[str, Any]] | None
    ) -> str | list[dict[str, Any]] | None:
        if isinstance(v, list):
            for i, part in enumerate(v):
                _check_part(i, part)
        return v

    @property
    def text(self) -> str:
        """The text of the message; non-text parts are skipped."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(
            str(p.get("text", "")) for p in self.content if p.get("type") in ("text", None)
        )


class CascadeHint(BaseModel):
    """Answer-checked escalation for one request (hint ``tierlm.cascade``); unset fields
    come from the answering tier's ``cascade`` settings (see :mod:`tierlm.execute.cascade`)."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    mode: Literal["buffer", "stream"] | None = None


class Hints(BaseModel):
    """Routing hints a request may carry (body field ``tierlm`` or ``x-tierlm-*`` headers)."""

    model_config = ConfigDict(extra="forbid")

    privacy: Privacy | None = None
    quality: float | None = Field(default=None, ge=0.0, le=1.0)
    urgency: Literal["low", "normal", "high"] | None = None
    cost_sensitivity: Literal["low", "normal", "high"] | None = None
    tier_floor: str | None = None
    tier_ceiling: str | None = None
    optimize: Literal["privacy", "cost", "quality", "latency"] | None = None
    cascade: bool | CascadeHint | None = None  # true/false, or {"threshold", "mode"}
    consensus: int | None = Field(default=None, ge=2, le=7)  # ask k candidates, compare
    cache: Literal["bypass"] | None = None  # skip the answer cache (layer 0) both ways


# Chat fields tierlm passes on without interpreting them (``ChatRequest.extra``); each
# adapter forwards those its wire format has. Anything else is refused at the door.
PASS_ON_FIELDS = frozenset(
    {
        # OpenAI
        "response_format",
        "user",
        "metadata",
        "prediction",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "presence_penalty",
        "frequency_penalty",
        "parallel_tool_calls",
        "store",
        "reasoning_effort",
        "service_tier",
        "modalities",
        "audio",
        "web_search_options",
        "verbosity",
        "safety_identifier",
        "prompt_cache_key",
        # self-hosted servers (vLLM, SGLang, llama.cpp)
        "min_p",
        "repetition_penalty",
        "repeat_penalty",
        "typical_p",
        "mirostat_mode",
        "guided_json",
        "guided_choice",
        "guided_regex",
        "guided_grammar",
        "chat_template_kwargs",
        # Anthropic
        "thinking",
    }
)


class ChatRequest(BaseModel):
    """One chat request, whatever door it came in by.

    ``model`` is ``"auto"`` (route), or a tier or backend name (pin). Fields tierlm does not
    interpret (``response_format``, ``logit_bias``, ...: :data:`PASS_ON_FIELDS`) are kept in
    ``extra`` and passed on; any other key in ``extra`` is refused.
    """

    model_config = ConfigDict(extra="forbid")

    messages: list[Message]
    model: str = "auto"
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stop: list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    include_usage: bool = False
    hints: Hints = Field(default_factory=Hints)
    api_key_id: str | None = None
    request_id: str = Field(default_factory=lambda: "req-" + uuid.uuid4().hex[:20])
    client_request_id: str | None = None  # the caller's own id (a correlation field only)
    batch_id: str | None = None  # deferred: a line of this batch (:mod:`tierlm.batch`)
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("messages")
    @classmethod
    def _non_empty(cls, v: list[Message]) -> list[Message]:
        if not v:
            raise ValueError("messages must contain at least one message")
        return v

    @field_validator("extra")
    @classmethod
    def _known_extra(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(k for k in v if k not in PASS_ON_FIELDS)
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}")
        return v

    @classmethod
    def from_prompt(cls, prompt: str, **kwargs: Any) -> ChatRequest:
        return cls(messages=[Message(role="user", content=prompt)], **kwargs)

    @property
    def prompt_text(self) -> str:
        """All message text joined, oldest first (signals read the whole conversation)."""
        return "\n".join(m.text for m in self.messages if m.text)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]


class ChatResponse(BaseModel):
    """A complete answer, with where it came from."""

    id: str = Field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex[:24])
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str  # the model that really answered
    message: Message
    finish_reason: FinishReason = "stop"
    usage: Usage = Field(default_factory=Usage)
    backend: str = ""
    tier: str = ""
    latency_ms: float | None = None
    ttft_ms: float | None = None
    cascade: list[dict[str, Any]] | None = None  # judged answers: tier, score, decision
    # what every attempt of the request billed (set when the request is recorded)
    cost_usd: float | None = None

    @property
    def text(self) -> str:
        return self.message.text


class StreamEvent(BaseModel):
    """One piece of a streamed answer.

    A stream is any number of events with ``text`` and/or ``tool_calls`` deltas, and ends with
    one event that has ``finish_reason`` set (and ``usage`` where the backend reports it).
    """

    text: str = ""
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI delta shape, with "index"
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """One entry of a plan: a backend of a tier."""

    backend: str
    tier: str
    boundary: Boundary

    def to_dict(self) -> dict[str, str]:
        return {"backend": self.backend, "tier": self.tier, "boundary": self.boundary.label}


@dataclass(frozen=True, slots=True)
class Finding:
    """Something sensitive found in a request: its kind and where, never its value."""

    kind: str
    start: int
    end: int
    message_index: int = 0

    def to_dict(self) -> dict[str, int | str]:
        return {
            "kind": self.kind,
            "message": self.message_index,
            "start": self.start,
            "end": self.end,
        }


@dataclass(slots=True)
class Plan:
    """The policy's decision for one request: ordered candidates and the reasons why."""

    candidates: list[Candidate]
    reasons: list[str] = field(default_factory=list)
    privacy: Privacy = Privacy.PUBLIC
    complexity: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    task: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    layer0: dict[str, Any] = field(default_factory=dict)  # the rule or cache verdict, if any
    energy: dict[str, Any] | None = None  # state and effects, with an energy config

    @property
    def sensitive(self) -> bool:
        return bool(self.findings)

    @property
    def cache_status(self) -> str:
        """``hit-exact``, ``hit-semantic``, ``miss`` or ``bypass`` (the cache was not asked)."""
        status: str = self.layer0.get("cache", {}).get("status", "bypass")
        return status

    def to_dict(self) -> dict[str, Any]:
        first = self.candidates[0] if self.candidates else None
        return {
            "request_id": self.request_id,
            "tier": first.tier if first else None,
            "backend": first.backend if first else None,
            "boundary": first.boundary.label if first else None,
            "complexity": round(self.complexity, 4),
            "privacy": self.privacy.value,
            "sensitive": self.sensitive,
            "findings": [f.to_dict() for f in self.findings],
            "task": self.task,
            "candidates": [c.to_dict() for c in self.candidates],
            "reasons": list(self.reasons),
            **({"layer0": self.layer0} if self.layer0 else {}),
            **({"energy": self.energy} if self.energy is not None else {}),
        }
