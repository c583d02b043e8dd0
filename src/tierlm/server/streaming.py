"""What every committed chat stream shares, whichever wire format renders it.

A stream commits when :meth:`~tierlm.server.gateway.Gateway.open_stream` has read its first
event; from then on the status and headers are sent and the answer belongs to the wire
format's body generator. This module owns the rest of that stream's life:

- :func:`chain` gives the body the events, the already-read first one included;
- :func:`unfinished` is the error for a stream that ended without a finish reason, and
  :func:`internal_error` the one for an unexpected failure (logged with its cause); both are
  told to the client in-band, since the status line is already gone;
- :class:`StreamEnd` closes the routed stream (shielded from cancellation), leaves the
  in-flight count and accounts for the request exactly once, however it ended;
- :class:`GuardedStream` is the response that runs its :class:`StreamEnd` even when the body
  never started (the client went away before the first byte).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
from starlette.responses import StreamingResponse

from tierlm.errors import ProtocolError, TierlmError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.types import Receive, Scope, Send

    from tierlm.execute.streams import RoutedStream
    from tierlm.server.gateway import Gateway
    from tierlm.types import ChatRequest, StreamEvent

log = logging.getLogger("tierlm.server")


class StreamEnd:
    """Closes a routed stream and counts it, exactly once, however the response ended."""

    def __init__(
        self,
        gw: Gateway,
        route: str,
        rs: RoutedStream,
        started: float,
        client_id: str | None = None,
    ) -> None:
        self.gw, self.route, self.rs, self.started = gw, route, rs, started
        self.client_id = client_id  # the client's x-request-id, for the access log
        self.status = 200
        self.done = False

    def fail(self, e: Exception, req: ChatRequest) -> TierlmError:
        """The error a stream that failed after commit reports in-band (counted as such)."""
        err = e if isinstance(e, TierlmError) else internal_error(e, req)
        self.status = err.status
        self.gw.metrics.stream_errors += 1
        return err

    async def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        with anyio.CancelScope(shield=True):
            await self.rs.aclose()
        self.gw.metrics.in_flight -= 1
        rs = self.rs
        self.gw.account(
            self.route,
            rs.plan,
            rs.tier or "",
            rs.backend or "",
            self.status,
            self.started,
            request_id=rs.plan.request_id,
            usage=rs.usage,
            client_id=self.client_id,
        )


class GuardedStream(StreamingResponse):
    """A streaming response whose :class:`StreamEnd` runs even if the body never started
    (the client went away before the first byte)."""

    def __init__(self, content: AsyncIterator[bytes], end: StreamEnd, **kw: Any) -> None:
        super().__init__(content, **kw)
        self._end = end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._end()


def internal_error(e: Exception, req: ChatRequest) -> TierlmError:
    """An unexpected failure in the middle of a stream, logged with its cause, as an error
    the client can be told about in-band."""
    log.error("request %s failed mid-stream", req.request_id, exc_info=e)
    return TierlmError("internal error in the gateway", request_id=req.request_id)


def unfinished(req: ChatRequest, rs: RoutedStream) -> ProtocolError:
    """The error for a stream that ended without a finish reason."""
    return ProtocolError(
        "the stream ended before the answer finished",
        backend=rs.backend,
        tier=rs.tier,
        request_id=req.request_id,
    )


async def chain(first: StreamEvent, rs: RoutedStream) -> AsyncIterator[StreamEvent]:
    """The committed stream's events, its first one (already read) included."""
    yield first
    async for ev in rs:
        yield ev
