"""Limits on what a client can make the gateway hold before a request reaches the app.

:func:`guarded_protocol` builds uvicorn's HTTP protocol (the httptools parser) with three
bounds, each refused with a clear OpenAI-shaped JSON answer and ``connection: close``:

- **connection cap** (``server.max_connections``, and never more than half the process's
  file-descriptor limit): a connection beyond it is answered 503 with ``retry-after`` and
  closed at once, so half-open or idle clients cannot exhaust file descriptors;
- **header read timeout** (``server.header_timeout``): a request whose headers are not
  complete that long after the connection opened (or the previous answer was sent) is
  answered 408 and closed, so half-sent requests do not pile up;
- **header size** (``server.max_header_bytes``): request line and headers past it are
  answered 431 and the connection closed (at most one read past the limit is buffered).

:class:`RateLimitedLog` is a logging filter that lets each distinct message through a few
times a window and then only counts it, so a storm of one error (``accept`` failing with
"Too many open files", a client misbehaving in a loop) cannot flood the log;
:func:`rate_limit_logs` puts one on every handler ``tierlm serve`` logs through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_REASONS = {
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
_CODES = {408: "header_timeout", 431: "headers_too_large", 503: "too_many_connections"}


def fd_limit() -> int:
    """The process's soft limit on open files, raised to the hard limit where allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass  # not allowed here: keep the soft limit
    return soft


def refusal(status: int, message: str, extra_headers: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer refusing a request before it reached the app."""
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error" if status != 503 else "service_unavailable",
                "code": _CODES[status],
                "param": None,
            }
        }
    ).encode()
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n".encode()
        + b"content-type: application/json\r\nconnection: close\r\n"
        + extra_headers
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


def guarded_protocol(
    *, max_connections: int, header_timeout: float, max_header_bytes: int
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the connection cap, header timeout and header size
    limit above (pass the class as ``uvicorn.Config(http=...)``)."""
    cap = max(1, min(max_connections, fd_limit() // 2))

    class GuardedHttpTools(HttpToolsProtocol):
        _reading_headers = True
        _header_bytes = 0
        _header_timer: asyncio.TimerHandle | None = None
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > cap:
                self._refuse(
                    503,
                    f"the gateway holds its limit of {cap} connections; retry shortly",
                    b"retry-after: 1\r\n",
                )
                return
            self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._reading_headers:
                self._header_bytes += len(data)
            super().data_received(data)
            if self._reading_headers and self._header_bytes > max_header_bytes:
                self._refuse(431, f"request headers are over the limit of {max_header_bytes} bytes")

        def on_headers_complete(self) -> None:
            self._reading_headers = False
            self._stop_timer()
            if not self._refused:
                super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            idle = self.cycle is None or self.cycle.response_complete  # no pipelined request
            if idle and not self.transport.is_closing():
                self._await_headers()

        def _await_headers(self) -> None:
            self._reading_headers = True
            self._header_bytes = 0
            self._stop_timer()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _headers_late(self) -> None:
            self._header_timer = None
            if self._reading_headers and self._header_bytes and not self.transport.is_closing():
                self._refuse(408, f"request headers did not arrive within {header_timeout:g} s")
            elif self._reading_headers and not self.transport.is_closing():
                self.transport.close()  # nothing sent at all: just close

        def _stop_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _refuse(self, status: int, message: str, extra: bytes = b"") -> None:
            self._refused = True
            self._stop_timer()
            if not self.transport.is_closing():
                self.transport.write(refusal(status, message, extra))
                self.transport.close()

    return GuardedHttpTools


class RateLimitedLog(logging.Filter):
    """Let each distinct message (logger and format string) through ``burst`` times per
    ``window`` seconds; after that, count it, and say how many were held back when its next
    window opens."""

    def __init__(self, burst: int = 5, window: float = 60.0) -> None:
        super().__init__()
        self.burst, self.window = burst, window
        self._seen: dict[tuple[str, Any], list[float | int]] = {}  # key -> [start, n, held]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg if isinstance(record.msg, str) else type(record.msg))
        now = time.monotonic()
        state = self._seen.get(key)
        if state is None or now - state[0] >= self.window:
            held = int(state[2]) if state is not None else 0
            self._seen[key] = [now, 1, 0]
            if len(self._seen) > 10_000:  # forget old keys rather than grow without bound
                self._seen = {key: self._seen[key]}
            if held:
                record.msg = f"{record.msg} [{held} like this held back in the last window]"
            return True
        state[1] = int(state[1]) + 1
        if state[1] <= self.burst:
            return True
        state[2] = int(state[2]) + 1
        return False


def rate_limit_logs() -> None:
    """Install one :class:`RateLimitedLog` (once each) on every handler the process logs
    through: the root logger's, uvicorn's and Python's last-resort handler, so a flood from
    any logger (asyncio's accept loop, uvicorn, tierlm's modules) is held back."""
    loggers = (
        logging.getLogger(),
        logging.getLogger("uvicorn"),
        logging.getLogger("uvicorn.error"),
    )
    handlers = {h for lg in loggers for h in lg.handlers}
    if logging.lastResort is not None:
        handlers.add(logging.lastResort)
    for handler in handlers:
        if not any(isinstance(f, RateLimitedLog) for f in handler.filters):
            handler.addFilter(RateLimitedLog())
