"""Carry a plan out: try its candidates in order until one answers.

``complete()`` returns a whole answer; ``stream()`` returns a :class:`RoutedStream`, an async
iterator of :class:`StreamEvent` whose ``tier``/``backend``/``model`` are known once the first
piece has arrived (the stream is then *committed* to that backend).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from tierlm.errors import AllAttemptsFailed, BackendError
from tierlm.types import ChatRequest, ChatResponse, Plan, StreamEvent

if TYPE_CHECKING:
    from tierlm.backends.base import Backend


class RoutedStream:
    """A streamed answer that knows where it came from once it has started."""

    def __init__(self, plan: Plan, events: AsyncIterator[StreamEvent]) -> None:
        self.plan = plan
        self.tier: str | None = None
        self.backend: str | None = None
        self.model: str | None = None
        self._events = events

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events

    async def aclose(self) -> None:
        close = getattr(self._events, "aclose", None)
        if close is not None:
            await close()


class Executor:
    def __init__(self, backends: Mapping[str, Backend]) -> None:
        self.backends = backends

    async def complete(self, request: ChatRequest, plan: Plan) -> ChatResponse:
        errors: list[BackendError] = []
        for cand in plan.candidates:
            backend = self.backends[cand.backend]
            t0 = time.perf_counter()
            try:
                resp = await backend.complete(request)
            except BackendError as e:
                e.backend, e.tier, e.request_id = cand.backend, cand.tier, request.request_id
                errors.append(e)
                continue
            resp.backend, resp.tier = cand.backend, cand.tier
            resp.latency_ms = (time.perf_counter() - t0) * 1000
            return resp
        raise AllAttemptsFailed(errors, request_id=request.request_id)

    def stream(self, request: ChatRequest, plan: Plan) -> RoutedStream:
        rs = RoutedStream(plan, self._stream(request, plan, None))
        rs._events = self._stream(request, plan, rs)
        return rs

    async def _stream(
        self, request: ChatRequest, plan: Plan, rs: RoutedStream | None
    ) -> AsyncIterator[StreamEvent]:
        errors: list[BackendError] = []
        for cand in plan.candidates:
            backend = self.backends[cand.backend]
            committed = False
            try:
                async for ev in backend.stream(request):
                    if not committed and rs is not None:
                        rs.tier, rs.backend, rs.model = cand.tier, cand.backend, backend.model
                        committed = True
                    yield ev
                return
            except BackendError as e:
                if committed:
                    raise
                e.backend, e.tier, e.request_id = cand.backend, cand.tier, request.request_id
                errors.append(e)
        raise AllAttemptsFailed(errors, request_id=request.request_id)
