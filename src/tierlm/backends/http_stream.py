"""Streamed answers of the HTTP adapters: time limits per chunk, SSE and NDJSON parsing.

- :class:`Deadlines` holds the first-token, stall and total limits of one streamed attempt;
  :func:`read_with_deadlines` enforces them on the body chunks as they arrive (one watchdog
  timer per stall window, not one per chunk).
- :func:`sse_stream` / :func:`ndjson_stream` parse a streamed body incrementally, chunk by
  chunk as it arrives (:class:`LineSplitter`, :class:`SSEParser`); :func:`drain` reads what is
  left so the connection goes back to the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeVar

from tierlm.backends.http_errors import TRANSPORT_ERRORS, ErrorContext, loads_chunk
from tierlm.errors import BackendError, BackendTimeout

if TYPE_CHECKING:
    from tierlm.config.settings import BackendConfig

T = TypeVar("T")


class Deadlines:
    """First-token, stall and total limits of one streamed attempt.

    ``due()`` is the loop time by which the current wait must end: ``first_token`` after the
    start until the first real token (``got_content()``), then ``stall`` after the current
    read began; never later than ``total`` after the start.
    """

    __slots__ = ("_first", "_loop", "_start", "_total", "phase", "read_start", "stall")

    def __init__(self, config: BackendConfig) -> None:
        t = config.timeouts
        self._loop = asyncio.get_running_loop()
        self._start = self.read_start = self._loop.time()
        self._first = t.first_token
        self.stall = t.stall
        self._total = self._start + t.total
        self.phase = "first_token"

    def due(self) -> float:
        if self.phase == "first_token":
            return min(self._start + self._first, self._total)
        return min(self.read_start + self.stall, self._total)

    next_deadline = due

    def got_content(self) -> None:
        self.phase = "stall"

    def expired(self) -> str:
        """Which limit fired (for the error message)."""
        return "total" if self._loop.time() >= self._total - 1e-3 else self.phase


class _Watchdog:
    """One timer per stall window (not one per chunk): when it fires while the stream is
    waiting for data past its due time, it cancels the waiting task (the task of that read:
    a stream opened in one task may be read on in another, as a web server's response task
    does); the reader turns that cancellation into :class:`BackendTimeout`. Between reads
    (the consumer holds control) it only re-arms, so a slow consumer is never cancelled."""

    __slots__ = ("deadlines", "fired", "handle", "loop", "reading", "task")

    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.reading = False
        self.fired = False
        self.handle = self.loop.call_at(deadlines.due(), self._check)

    def _check(self) -> None:
        due = self.deadlines.due()
        now = self.loop.time()
        if self.reading and now >= due - 1e-4 and self.task is not None:
            self.fired = True
            self.task.cancel()
            return
        # not waiting for data (or not yet due): check again when the wait could expire
        self.handle = self.loop.call_at(
            due if due > now else now + self.deadlines.stall, self._check
        )

    def close(self) -> None:
        self.handle.cancel()


async def read_with_deadlines(
    it: AsyncIterator[T], deadlines: Deadlines, err_ctx: ErrorContext
) -> AsyncIterator[T]:
    """Re-yield ``it`` (body chunks), raising :class:`BackendTimeout` when one is later than
    allowed."""
    watch = _Watchdog(deadlines)
    loop_time = watch.loop.time
    try:
        while True:
            deadlines.read_start = loop_time()
            watch.task = asyncio.current_task()
            watch.reading = True
            try:
                item = await anext(it)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not watch.fired or watch.task is None:
                    raise
                watch.task.uncancel()
                which = deadlines.expired()
                raise BackendTimeout(f"{which} timeout while streaming", **err_ctx.kw()) from None
            finally:
                watch.reading = False
            yield item
    finally:
        watch.close()


# ---------------------------------------------------------------------------- stream parsing


class LineSplitter:
    """Bytes as they arrive -> complete text lines (``\n`` or ``\r\n`` ends one), decoded as
    UTF-8 once per chunk (splitting at ``\n`` never cuts a UTF-8 character)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[str]:
        if self._buf:
            chunk = self._buf + chunk
        nl = chunk.rfind(b"\n")
        if nl < 0:
            self._buf = chunk
            return []
        self._buf = chunk[nl + 1 :]
        text = chunk[:nl].decode("utf-8", "replace")
        lines = text.split("\n")
        if "\r" in text:
            lines = [x[:-1] if x[-1:] == "\r" else x for x in lines]
        return lines

    def tail(self) -> list[str]:
        """The last line, when the body did not end with a newline."""
        buf, self._buf = self._buf, b""
        return [buf.decode("utf-8", "replace").removesuffix("\r")] if buf else []


class SSEParser:
    """The server-sent-events line state machine: ``feed`` a line, get ``(event, data)`` when
    an event is complete (data lines joined by newlines); comments and ``id``/``retry`` are
    skipped; ``end()`` delivers a trailing event that lacks its blank line."""

    __slots__ = ("data", "event")

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        if line[:6] == "data: ":  # the common case first
            self.data.append(line[6:])
            return None
        if not line:
            data, event = self.data, self.event
            self.event, self.data = "", []
            if data:
                return event or "message", "\n".join(data) if len(data) > 1 else data[0]
            return None
        if line[0] == ":":
            return None
        field, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            self.data.append(value)
        elif field == "event":
            self.event = value
        return None

    def end(self) -> tuple[str, str] | None:
        return (self.event or "message", "\n".join(self.data)) if self.data else None


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events from a line iterator (see :class:`SSEParser`)."""
    parser = SSEParser()
    async for line in lines:
        if (ev := parser.feed(line)) is not None:
            yield ev
    if (ev := parser.end()) is not None:
        yield ev


async def sse_stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events straight from body chunks (one generator, not one per layer)."""
    parser, split = SSEParser(), LineSplitter()
    feed = parser.feed
    async for chunk in chunks:
        for line in split.feed(chunk):
            if (ev := feed(line)) is not None:
                yield ev
    for line in split.tail():
        if (ev := feed(line)) is not None:
            yield ev
    if (ev := parser.end()) is not None:
        yield ev


async def ndjson_stream(chunks: AsyncIterator[bytes], ctx: ErrorContext) -> AsyncIterator[Any]:
    """One JSON value per non-empty line, straight from body chunks."""
    split = LineSplitter()
    async for chunk in chunks:
        for line in split.feed(chunk):
            if line.strip():
                yield loads_chunk(line, ctx)
    for line in split.tail():
        if line.strip():
            yield loads_chunk(line, ctx)


async def drain(it: AsyncIterator[Any], seconds: float = 0.25) -> None:
    """Read what is left of a finished stream (its terminator), briefly, so the connection
    goes back to the pool instead of being closed; give up quietly after ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            async for _ in it:
                pass
    except (*TRANSPORT_ERRORS, BackendError):
        pass
