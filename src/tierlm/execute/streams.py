"""Stream helpers of the executor: the routed stream it hands out, per-chunk deadlines and
usage sums.

:class:`RoutedStream` is what ``Executor.stream()`` returns: the caller's view of one streamed
answer, which learns which backend answers once the first piece is handed over.

:class:`TimedStream` enforces the attempt's limits on any backend's event stream, whatever the
adapter does itself: the first event must come within ``first_token`` seconds of the start,
each later one within ``stall`` seconds of asking for it, and everything within ``total``. A
stream that ends without its final event (``finish_reason``) is a :class:`ProtocolError`, so a
missing ``[DONE]`` or a cut connection can never pass for a finished answer.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from tierlm.errors import BackendTimeout, ProtocolError
from tierlm.types import ChatRequest, FinishReason, Plan, StreamEvent, Usage

if TYPE_CHECKING:
    from tierlm.config.settings import Timeouts
    from tierlm.ledger.records import AttemptRecord


class RoutedStream:
    """A streamed answer that knows where it came from once it has started.

    ``tier``/``backend``/``model`` name the backend that is answering (after a mid-stream
    rescue: the one that finished the answer, and ``continued`` is true). ``usage`` and
    ``finish_reason`` are set when the stream has finished; ``attempts`` fills as it goes.
    """

    def __init__(
        self,
        plan: Plan,
        events: AsyncIterator[StreamEvent] | None = None,
        *,
        attempts: list[AttemptRecord] | None = None,
    ) -> None:
        self.plan = plan
        self.tier: str | None = None
        self.backend: str | None = None
        self.model: str | None = None
        self.attempts: list[AttemptRecord] = attempts if attempts is not None else []
        self.usage: Usage | None = None
        self.finish_reason: FinishReason | None = None
        self.ttft_ms: float | None = None
        self.continued = False
        self._events: AsyncIterator[StreamEvent] | None = events

    @property
    def committed(self) -> bool:
        return self.backend is not None

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        assert self._events is not None, "RoutedStream has no events"
        return self._events

    async def aclose(self) -> None:
        close = getattr(self._events, "aclose", None)
        if close is not None:
            await close()


class TimedStream:
    """One attempt's event stream, read under its deadlines."""

    def __init__(
        self,
        events: AsyncIterator[StreamEvent],
        timeouts: Timeouts,
        *,
        backend: str,
        request_id: str | None,
    ) -> None:
        self._events = events
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()
        self._first = timeouts.first_token
        self._stall = timeouts.stall
        self._total_at = self._start + timeouts.total
        self._started = False
        self._finished = False
        self._backend = backend
        self._request_id = request_id

    @property
    def elapsed(self) -> float:
        return self._loop.time() - self._start

    async def next(self) -> StreamEvent:
        """The next event; raises ``BackendTimeout`` or ``ProtocolError``, never hangs.
        After the final event (``finish_reason`` set) it raises ``StopAsyncIteration``."""
        if self._finished:
            raise StopAsyncIteration
        if self._started:
            deadline, phase = self._loop.time() + self._stall, "stall"
        else:
            deadline, phase = self._start + self._first, "first token"
        if self._total_at <= deadline:
            deadline, phase = self._total_at, "total"
        try:
            async with asyncio.timeout_at(deadline):
                ev = await anext(self._events)
        except TimeoutError:
            raise BackendTimeout(
                f"{phase} timeout ({self._limit_text(phase)})",
                backend=self._backend,
                request_id=self._request_id,
            ) from None
        except StopAsyncIteration:
            raise ProtocolError(
                "stream ended before the answer finished",
                backend=self._backend,
                request_id=self._request_id,
            ) from None
        self._started = True
        if ev.finish_reason is not None:
            self._finished = True
        return ev

    def _limit_text(self, phase: str) -> str:
        seconds = {"first token": self._first, "stall": self._stall}.get(
            phase, self._total_at - self._start
        )
        return f"{seconds:g} s"

    async def aclose(self) -> None:
        close = getattr(self._events, "aclose", None)
        if close is not None:
            await close()


def estimate_tokens(text: str) -> int:
    """A rough token count (about four characters a token) for backends that report none."""
    return math.ceil(len(text) / 4) if text else 0


def estimate_usage(request: ChatRequest, completion: str) -> Usage:
    return Usage(
        prompt_tokens=estimate_tokens(request.prompt_text),
        completion_tokens=estimate_tokens(completion),
    )


def add_usage(a: Usage | None, b: Usage) -> Usage:
    if a is None:
        return b
    return Usage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
    )
