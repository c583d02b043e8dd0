"""The backend contract: complete a request, or stream it. Async first.

A backend is one model at one endpoint. It translates a :class:`ChatRequest` into its wire
protocol, sends it, and translates the answer back, raising the :mod:`tierlm.errors` backend
errors (``RateLimited``, ``ContextLengthExceeded``, ...). It does no routing, no retries and
no fallbacks: the executor does those, over any backend.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from tierlm.errors import ConfigError
from tierlm.types import Boundary, ChatRequest, ChatResponse, Message, StreamEvent, ToolCall, Usage

if TYPE_CHECKING:
    from tierlm.config.settings import BackendConfig, Settings


C = TypeVar("C", bound="BackendConfig")

_SENT: ContextVar[list[bytes] | None] = ContextVar("tierlm_sent_bodies", default=None)


def note_sent(body: bytes) -> None:
    """An adapter hands over the exact bytes of each body it sends upstream; the attempt in
    progress (:func:`capture_sent`) keeps them for the audit digest."""
    sink = _SENT.get()
    if sink is not None:
        sink.append(body)


@contextmanager
def capture_sent(sink: list[bytes]) -> Iterator[None]:
    """Collect in ``sink`` the bodies sent upstream within this block (this task and the
    tasks it starts)."""
    token = _SENT.set(sink)
    try:
        yield
    finally:
        _SENT.reset(token)


_FUNCTION_KEYS = ("name", "description", "parameters", "strict")


def tool_spec(tool: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool with only the keys the wire format has (adapters forward no others)."""
    fn = tool.get("function")
    if not isinstance(fn, dict):
        return {"type": tool.get("type", "function")}
    return {
        "type": tool.get("type", "function"),
        "function": {k: fn[k] for k in _FUNCTION_KEYS if k in fn},
    }


@dataclass(slots=True)
class BackendHealth:
    """What a backend can say about itself right now. ``None`` means unknown."""

    ok: bool | None = None
    detail: str = ""
    loaded: bool | None = None  # the model is warm (in memory) now
    models: list[str] = field(default_factory=list)  # models the endpoint offers
    loaded_models: list[str] = field(default_factory=list)
    in_flight: int | None = None
    queued: int | None = None
    memory_needed_gb: float | None = None
    memory_free_gb: float | None = None
    latency_ms: float | None = None
    worker: dict[str, Any] | None = None  # a supervised worker process's state
    energy: dict[str, Any] | None = None  # measured J/token (signals/rapl.py), local models

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


class Backend(ABC):
    """One model at one endpoint.

    ``supports_prefill``: a request whose last message is an assistant turn is answered by
    continuing that turn (the mid-stream rescue of :mod:`tierlm.execute.rescue` relies on it),
    not by starting a new one.
    """

    supports_prefill: bool = False

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.name = config.name
        self.model = config.model
        self.boundary: Boundary = config.where

    @classmethod
    def from_settings(cls, config: BackendConfig, settings: Settings | None) -> Backend:
        """Build from configuration; adapters that need deployment paths override this."""
        return cls(config)

    @abstractmethod
    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Answer the whole request at once."""

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Answer piece by piece; the last event carries ``finish_reason`` (and usage)."""

    async def health(self) -> BackendHealth:
        return BackendHealth()

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections, models and threads."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} model={self.model} {self.boundary.label}>"


def expect_config(config: BackendConfig, cls: type[C]) -> C:
    """``config`` as its kind's class ``cls``, or :class:`ConfigError` (an adapter given
    another kind's configuration)."""
    if not isinstance(config, cls):
        raise ConfigError(
            f"needs a {cls.__name__}, not a {type(config).__name__}",
            key=f"backends.{config.name}.kind",
        )
    return config


async def collect(events: AsyncIterator[StreamEvent], *, model: str) -> ChatResponse:
    """Fold a stream into one :class:`ChatResponse` (used by backends that only stream)."""
    parts: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish: Any = "stop"
    usage = Usage()
    answered_by = model
    async for ev in events:
        parts.append(ev.text)
        for d in ev.tool_calls or []:
            merge_tool_call_delta(calls, d)
        if ev.model:
            answered_by = ev.model
        if ev.usage is not None:
            usage = ev.usage
        if ev.finish_reason is not None:
            finish = ev.finish_reason
    tool_calls = [ToolCall.model_validate(calls[i]) for i in sorted(calls)] or None
    text = "".join(parts)
    msg = Message(
        role="assistant", content=text if text or not tool_calls else None, tool_calls=tool_calls
    )
    return ChatResponse(model=answered_by, message=msg, finish_reason=finish, usage=usage)


def merge_tool_call_delta(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    """Merge one OpenAI streaming tool-call delta into ``calls`` (by ``index``)."""
    i = int(delta.get("index", 0))
    cur = calls.setdefault(
        i, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if delta.get("id"):
        cur["id"] = delta["id"]
    fn = delta.get("function") or {}
    if fn.get("name"):
        cur["function"]["name"] += fn["name"]
    if fn.get("arguments"):
        cur["function"]["arguments"] += fn["arguments"]


def tool_calls_to_deltas(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [
        {
            "index": i,
            "id": c.id,
            "type": "function",
            "function": {
                "name": c.function.get("name", ""),
                "arguments": c.function.get("arguments", ""),
            },
        }
        for i, c in enumerate(calls)
    ]


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
