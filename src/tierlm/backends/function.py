"""The in-memory ``function`` backend: a Python callable answers (like pydantic-ai's
``FunctionModel``). For tests of routing, policies and apps where no wire format is under test.

The callable is ``function(request, info)``: ``request`` is the :class:`ChatRequest` the
backend got, ``info`` a :class:`FunctionInfo` (backend name, model, streaming or not). It may be
sync or async and return, or yield:

- returned: ``str`` (the answer's text), a ``Message``, a list of ``ToolCall`` (see
  :func:`tool_call`), or a whole ``ChatResponse`` (its usage is kept when it has any);
- yielded (a generator, sync or async): ``str`` chunks or ``ToolCall`` s, to which a final
  event is added (finish reason and usage); or ``StreamEvent`` s, which make the stream as
  they are (nothing is added: a test may end a stream without its final event, or fail one
  with ``finish_reason="error"``, as a broken upstream would). ``complete()`` folds the
  chunks into one answer; ``stream()`` of a plain return sends it as one chunk and a final
  event.

Usage is estimated from the text (:func:`~tierlm.execute.streams.estimate_usage`) unless the
answer carries its own. A tierlm error raised by the callable (``BackendUnavailable``,
``RateLimited``, ``ContextLengthExceeded``...) is the backend's failure, as from a real
upstream (it is given this backend's name when it names none); any other exception propagates
unchanged, as a bug in the callable.

Configured in YAML with ``kind: function`` and ``function: "module:callable"`` (imported when
the backend is built); from Python, ``FunctionBackend(answer)`` or
``FunctionConfig(name=..., function=answer)`` in :class:`~tierlm.config.settings.Settings`.
Its boundary is ``process`` unless configured: a test may pose it as a site or an external
backend to test privacy and fallback rules, and an app may wrap some provider's SDK in it.
Posed beyond ``process``, what the callable is handed is what left: :func:`handed` encodes it
as the attempt's "sent bytes" (its ``sent_digest``, and an external attempt's audit row), the
canonical JSON (:func:`~tierlm.ledger.audit.canonical`: sorted keys, no spaces, UTF-8 kept) of
``{"info": {"backend", "model", "stream"}, "request": request.model_dump(mode="json")}``, so an
operator holding the request can recompute the digest.
"""

from __future__ import annotations

import importlib
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from tierlm.backends.base import (
    Backend,
    collect,
    expect_config,
    note_sent,
    tool_calls_to_deltas,
)
from tierlm.config.backends import FunctionConfig
from tierlm.errors import BackendError, ConfigError
from tierlm.execute.streams import estimate_usage
from tierlm.types import Boundary, ChatRequest, ChatResponse, Message, StreamEvent, ToolCall

if TYPE_CHECKING:
    from tierlm.config.settings import BackendConfig, Settings

Reply: TypeAlias = str | Message | ChatResponse | list[ToolCall]
Chunk: TypeAlias = str | ToolCall | StreamEvent
Answer: TypeAlias = Reply | Iterator[Chunk] | AsyncIterator[Chunk]
AnswerFunction: TypeAlias = Callable[..., Answer | Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """What the callable is told besides the request."""

    backend: str
    model: str
    stream: bool


def tool_call(name: str, arguments: dict[str, Any] | str, *, id: str | None = None) -> ToolCall:
    """A tool call to return or yield: ``tool_call("get_weather", {"city": "Oslo"})``."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    call_id = id or "call_" + uuid.uuid4().hex[:24]
    return ToolCall(id=call_id, function={"name": name, "arguments": args})


def handed(request: ChatRequest, info: FunctionInfo) -> bytes:
    """What the callable is handed, as bytes: the encoding the module doc describes."""
    from tierlm.ledger.audit import canonical

    return canonical({"info": asdict(info), "request": request.model_dump(mode="json")}).encode()


def echo(request: ChatRequest, info: FunctionInfo) -> str:
    """A ready callable (``function: "tierlm.backends.function:echo"``): the last user
    message's text, back."""
    return next((m.text for m in reversed(request.messages) if m.role == "user"), "")


class FunctionBackend(Backend):
    """``kind: function``: ``FunctionBackend(answer, name="cloud", boundary="external")``."""

    config: FunctionConfig

    def __init__(self, function: FunctionConfig | AnswerFunction, /, **config: Any) -> None:
        if not isinstance(function, FunctionConfig):
            function = FunctionConfig.model_validate(
                {"name": "function", **config, "function": function}
            )
        elif config:
            raise TypeError("give a FunctionConfig or keyword settings, not both")
        super().__init__(function)
        self.function = _resolve(function)
        self.calls = 0  # how many times the callable was called

    @classmethod
    def from_settings(cls, config: BackendConfig, settings: Settings | None) -> Backend:
        return cls(expect_config(config, FunctionConfig))

    async def _call(self, request: ChatRequest, *, stream: bool) -> Answer:
        self.calls += 1
        info = FunctionInfo(backend=self.name, model=self.model, stream=stream)
        if self.boundary is not Boundary.PROCESS:
            note_sent(handed(request, info))
        try:
            out = self.function(request, info)
            return await out if inspect.isawaitable(out) else out
        except BackendError as e:
            e.backend = e.backend or self.name
            raise

    async def complete(self, request: ChatRequest) -> ChatResponse:
        out = await self._call(request, stream=False)
        if isinstance(out, Iterator | AsyncIterator):
            resp = await collect(self._events(request, out), model=self.model)
        else:
            resp = self._response(request, out)
        resp.backend = self.name
        return resp

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        out = await self._call(request, stream=True)
        if isinstance(out, Iterator | AsyncIterator):
            async for ev in self._events(request, out):
                yield ev
            return
        resp = self._response(request, out)
        calls = resp.message.tool_calls
        if resp.text or calls:
            yield StreamEvent(
                text=resp.text, tool_calls=tool_calls_to_deltas(calls) if calls else None
            )
        yield StreamEvent(finish_reason=resp.finish_reason, usage=resp.usage, model=resp.model)

    def _response(self, request: ChatRequest, out: Reply) -> ChatResponse:
        if isinstance(out, ChatResponse):
            if out.usage.total_tokens == 0:
                out.usage = estimate_usage(request, out.text)
            return out
        if isinstance(out, str):
            msg = Message(role="assistant", content=out)
        elif isinstance(out, Message):
            msg = out
        elif isinstance(out, list) and all(isinstance(c, ToolCall) for c in out):
            msg = Message(role="assistant", tool_calls=out)
        else:
            raise TypeError(f"{self.name}: the function returned a {type(out).__name__}")
        return ChatResponse(
            model=self.model,
            message=msg,
            finish_reason="tool_calls" if msg.tool_calls else "stop",
            usage=estimate_usage(request, msg.text),
        )

    async def _events(
        self, request: ChatRequest, chunks: Iterator[Chunk] | AsyncIterator[Chunk]
    ) -> AsyncIterator[StreamEvent]:
        """Each chunk as an event, then a final one, unless the callable yielded events of
        its own: then it writes the stream whole (a test may end one without its final
        event, as a broken upstream would)."""
        text: list[str] = []
        calls, own = 0, False
        try:
            async for chunk in _each(chunks):
                own = own or isinstance(chunk, StreamEvent)
                ev = _event(chunk, calls)
                calls += len(ev.tool_calls or ())
                text.append(ev.text)
                yield ev
        except BackendError as e:
            e.backend = e.backend or self.name
            raise
        if not own:
            usage = estimate_usage(request, "".join(text))
            yield StreamEvent(finish_reason="tool_calls" if calls else "stop", usage=usage)


async def _each(chunks: Iterator[Chunk] | AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    if isinstance(chunks, AsyncIterator):
        async for c in chunks:
            yield c
    else:
        for c in chunks:
            yield c


def _event(chunk: Chunk, index: int) -> StreamEvent:
    if isinstance(chunk, StreamEvent):
        return chunk
    if isinstance(chunk, ToolCall):
        (delta,) = tool_calls_to_deltas([chunk])
        return StreamEvent(tool_calls=[{**delta, "index": index}])
    if isinstance(chunk, str):
        return StreamEvent(text=chunk)
    raise TypeError(f"the function yielded a {type(chunk).__name__}")


def _resolve(config: FunctionConfig) -> AnswerFunction:
    """The callable itself, or the one ``function: "module:attribute"`` names."""
    if not isinstance(config.function, str):
        return config.function
    key = f"backends.{config.name}.function"
    module_name, _, attr = config.function.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {config.function}: {e}", key=key) from None
    if not callable(fn):
        raise ConfigError(f"{config.function} is a {type(fn).__name__}, not callable", key=key)
    return fn  # type: ignore[no-any-return]
