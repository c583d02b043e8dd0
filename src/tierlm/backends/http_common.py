"""What every HTTP adapter shares: the client, timeouts, error mapping, SSE and NDJSON.

- :class:`SessionHolder` keeps the one ``aiohttp.ClientSession`` of a backend: made lazily on
  the running loop (and made again when the loop changes: the sync Router API runs its own
  loop thread), with split timeouts (connect from config; the socket read timeout is only a
  backstop, the real first-token, stall and total limits are enforced per chunk by
  :class:`Deadlines`) and pooled keep-alive connections. aiohttp, not httpx: measured on
  this hot path (``bench/bench_gateway.py``), a gateway request costs about a third of the
  time with it.
- :func:`error_from_response` maps an HTTP error answer (status, headers, body) of any of the
  three protocols (OpenAI, Anthropic, Ollama) onto the :mod:`tierlm.errors` backend tree;
  :func:`error_from_transport` maps aiohttp/socket transport failures.
- :func:`sse_stream` / :func:`ndjson_stream` parse a streamed body incrementally, chunk by
  chunk as it arrives (:class:`LineSplitter`, :class:`SSEParser`).

Nothing here retries (the executor does) and nothing puts a key or request content into an
exception message: upstream messages are cut to a short length and only their ``message``
fields are used.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from tierlm.errors import (
    BackendAuthError,
    BackendBadRequest,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ContentPolicyError,
    ContextLengthExceeded,
    Overloaded,
    ProtocolError,
    RateLimited,
    ServerError,
)

if TYPE_CHECKING:
    from tierlm.config.settings import BackendConfig

T = TypeVar("T")
_MAX_UPSTREAM_MESSAGE = 300

# Substrings (lower case) by which servers say "the prompt is too long for this model".
_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "context window",
    "exceeds the available context size",
    "exceed context window",
    "prompt is too long",
    "too many tokens",
    "input is too long",
    "requested tokens",
    "string_above_max_length",
)
_POLICY_MARKERS = (
    "content_policy_violation",
    "content_filter",
    "content policy",
    "content management policy",
    "safety system",
    "responsibleaipolicyviolation",
)


def client_timeout(
    config: BackendConfig, *, read: float | None = None, total: float | None = None
) -> aiohttp.ClientTimeout:
    """Split timeouts: ``connect`` (new connections and waiting for a pooled one) from config;
    ``read`` between socket reads (default: the first-token or stall limit, a backstop for
    streams, whose real limits :class:`Deadlines` enforces per chunk); ``total`` only for
    whole (non-streamed) answers, where it is the one timer of the request (aiohttp raises a
    plain ``TimeoutError`` when it fires)."""
    t = config.timeouts
    if total is not None:
        sock_read = read
    else:
        sock_read = read if read is not None else max(t.first_token, t.stall, 1.0)
    return aiohttp.ClientTimeout(
        total=total,
        connect=max(t.connect, 1.0),
        sock_connect=t.connect,
        sock_read=sock_read,
    )


def build_session(
    config: BackendConfig, *, headers: Mapping[str, str] | None = None
) -> aiohttp.ClientSession:
    """One session per backend (call on the loop that will use it): split timeouts, pooled
    keep-alive connections, no cookies; environment proxies (``HTTPS_PROXY``, ``NO_PROXY``,
    .netrc) only for external backends, never for the LAN or this host."""
    connector = aiohttp.TCPConnector(
        limit=int(config.options.get("max_connections", 100)),
        limit_per_host=0,
        ttl_dns_cache=300,
    )
    return aiohttp.ClientSession(
        connector=connector,
        headers=dict(headers or {}),
        timeout=client_timeout(config),
        trust_env=config.where.label == "external",
        cookie_jar=aiohttp.DummyCookieJar(),
    )


class SessionHolder:
    """The one :class:`aiohttp.ClientSession` of a backend, bound to the loop it was made on.

    ``current()`` is the hot path (one loop identity check); ``open()`` makes the session, on
    first use or when the running loop is not the one the old session belongs to (that one is
    closed on its own loop if it still runs, else released without touching the dead loop).
    """

    __slots__ = ("_config", "_loop", "_session")

    def __init__(self, config: BackendConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def current(self) -> aiohttp.ClientSession | None:
        s = self._session
        if s is not None and self._loop is asyncio.get_running_loop() and not s.closed:
            return s
        return None

    async def open(self, headers: Mapping[str, str]) -> aiohttp.ClientSession:
        await self.aclose()
        self._session = build_session(self._config, headers=headers)
        self._loop = asyncio.get_running_loop()
        return self._session

    async def aclose(self) -> None:
        s, loop = self._session, self._loop
        self._session = self._loop = None
        if s is None or s.closed or loop is None:
            return
        if loop is asyncio.get_running_loop():
            await s.close()
        elif loop.is_closed():
            _close_sockets(s)
            await s.close()  # on a closed loop this only marks it closed
        elif loop.is_running():
            # another thread's loop (the sync Router API): close it there
            asyncio.run_coroutine_threadsafe(s.close(), loop)
        else:
            _detach(s)


def _close_sockets(session: aiohttp.ClientSession) -> None:
    """The pooled connections of a session whose loop is closed (``asyncio.run`` returned):
    nothing can run on that loop any more, so close their sockets directly, else they leak
    (and warn) when collected. Best effort: only asyncio's selector transports expose one."""
    for conns in list(getattr(session.connector, "_conns", {}).values()):
        for proto, _ in conns:
            transport = proto.transport
            sock = getattr(transport, "_sock", None)
            if sock is not None:
                sock.close()
                transport._sock = None


def _detach(session: aiohttp.ClientSession) -> None:
    """A session whose loop is open but not running (and not ours): close its connections
    without waiting on that loop (``_close`` is the synchronous part of ``close``)."""
    connector = session.connector
    close_now = getattr(connector, "_close", None)
    if close_now is not None:
        close_now()
    session.detach()


def resolve_api_key(config: BackendConfig, provider_key_env: str | None) -> str | None:
    """The key: ``api_key`` from config, else ``api_key_env``, else the provider's variable."""
    if config.api_key is not None:
        return config.api_key.get_secret_value() or None
    var = config.api_key_env or provider_key_env
    return (os.environ.get(var) or None) if var else None


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
    waiting for data past its due time, it cancels the waiting task; the reader turns that
    cancellation into :class:`BackendTimeout`. Between reads (the consumer holds control)
    it only re-arms, so a slow consumer is never cancelled."""

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


@dataclass(slots=True)
class ErrorContext:
    """Who failed, for error messages: backend name and request id (never content)."""

    backend: str
    request_id: str | None = None

    def kw(self, status: int | None = None) -> dict[str, Any]:
        return {"backend": self.backend, "request_id": self.request_id, "upstream_status": status}


# ---------------------------------------------------------------------------- retry-after


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms``, or ``Retry-After`` (seconds or HTTP-date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


# ---------------------------------------------------------------------------- error mapping


@dataclass(slots=True)
class UpstreamError:
    """The useful parts of an error body, whatever the protocol."""

    message: str = ""
    type: str = ""
    code: str = ""

    @property
    def haystack(self) -> str:
        return f"{self.type} {self.code} {self.message}".lower()


def parse_error_body(body: bytes | str | Any) -> UpstreamError:
    """Read OpenAI ``{"error": {...}}``, Anthropic ``{"type": "error", "error": {...}}``,
    Ollama/vLLM ``{"error": "text"}`` and FastAPI ``{"detail": ...}`` bodies."""
    data: Any = body
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            return UpstreamError(message=_short(text.strip()))
    if not isinstance(data, dict):
        return UpstreamError(message=_short(str(data)) if isinstance(data, str) else "")
    err = data.get("error", data)
    if isinstance(err, str):
        return UpstreamError(message=_short(err), type=str(data.get("type", "")))
    if isinstance(err, dict):
        msg = err.get("message", "")
        if not msg and "detail" in err:
            msg = _detail_text(err["detail"])
        return UpstreamError(
            message=_short(str(msg)),
            type=str(err.get("type") or ""),
            code=str(err.get("code") or ""),
        )
    return UpstreamError()


def _detail_text(detail: Any) -> str:
    """FastAPI validation details carry the input: keep only the ``msg`` parts."""
    if isinstance(detail, list):
        return "; ".join(str(d.get("msg", "")) for d in detail if isinstance(d, dict))
    return str(detail) if isinstance(detail, str) else ""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_UPSTREAM_MESSAGE else text[:_MAX_UPSTREAM_MESSAGE] + "…"


def error_from_response(
    status: int, headers: Mapping[str, str], body: bytes | str | Any, ctx: ErrorContext
) -> BackendError:
    """Map one HTTP error answer onto the backend error tree."""
    up = parse_error_body(body)
    msg = f"upstream {status}" + (f" {up.type or up.code}" if up.type or up.code else "")
    if up.message:
        msg += f": {up.message}"
    return error_for(status, up, msg, ctx, headers)


def error_for(
    status: int,
    up: UpstreamError,
    msg: str,
    ctx: ErrorContext,
    headers: Mapping[str, str] | None = None,
) -> BackendError:
    """The error class for ``status`` (and, for 400/429, what the body says)."""
    kw = ctx.kw(status)
    hay = up.haystack
    if status == 429:
        if "insufficient_quota" in hay or "billing" in hay:
            return BackendAuthError(f"{msg} (quota exhausted)", **kw)
        return RateLimited(msg, retry_after=parse_retry_after(headers or {}), **kw)
    if status in (401, 403):
        return BackendAuthError(msg, **kw)
    if status in (400, 413, 422) or (400 <= status < 500 and status not in (404, 408)):
        if any(m in hay for m in _CONTEXT_MARKERS):
            return ContextLengthExceeded(msg, **kw)
        if any(m in hay for m in _POLICY_MARKERS):
            return ContentPolicyError(msg, **kw)
        return BackendBadRequest(msg, **kw)
    if status == 404:
        return BackendBadRequest(
            msg if up.message else f"{msg} (model or endpoint not found)", **kw
        )
    if status in (408, 504):
        return BackendTimeout(msg, **kw)
    if status in (503, 529) or "overloaded" in hay:
        return Overloaded(msg, **kw)
    return ServerError(msg, **kw)


# Failures of the connection or the HTTP framing, as the adapters catch them (``TimeoutError``
# is an ``OSError``: aiohttp's own timeouts are both, ``asyncio.timeout`` ones only the latter).
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError)


def error_from_transport(exc: BaseException, ctx: ErrorContext) -> BackendError:
    """Map an aiohttp or socket failure (connect, reset, timeout, bad framing) onto the tree."""
    kind = type(exc).__name__
    if isinstance(exc, TimeoutError):
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            phase = "connect"
        elif isinstance(exc, aiohttp.SocketTimeoutError):
            phase = "read"
        else:
            phase = ""
        return BackendTimeout(f"{phase} timeout".strip(), **ctx.kw())
    if isinstance(exc, aiohttp.ClientConnectorError):
        return BackendUnavailable(f"connection failed ({kind})", **ctx.kw())
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return BackendUnavailable(f"connection closed unexpectedly ({kind})", **ctx.kw())
    if isinstance(exc, aiohttp.ClientPayloadError):
        if "decode" in str(exc).lower():  # bad gzip/deflate/brotli
            return ProtocolError(f"malformed HTTP answer ({kind})", **ctx.kw())
        return BackendUnavailable(f"connection closed unexpectedly ({kind})", **ctx.kw())
    if isinstance(exc, aiohttp.ClientResponseError):
        return ProtocolError(f"malformed HTTP answer ({kind})", **ctx.kw())
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        return BackendUnavailable(f"connection failed ({kind})", **ctx.kw())
    return BackendUnavailable(f"transport error ({kind})", **ctx.kw())


async def fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    limits: aiohttp.ClientTimeout | None = None,
) -> tuple[int, Mapping[str, str], bytes]:
    """One whole request: (status, headers, body). Transport failures propagate as aiohttp
    or socket errors (map them with :func:`error_from_transport`)."""
    async with session.request(method, url, data=data, timeout=limits) as resp:
        return resp.status, resp.headers, await resp.read()


async def open_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    deadlines: Deadlines,
    ctx: ErrorContext,
) -> aiohttp.ClientResponse:
    """POST ``body`` and return the response once its headers arrived (the body unread),
    within the first-token limit; the caller releases it."""
    try:
        async with asyncio.timeout_at(deadlines.due()):
            return await session.post(url, data=body)
    except TRANSPORT_ERRORS as e:
        if type(e) is TimeoutError:  # ours (asyncio.timeout), not aiohttp's
            raise BackendTimeout(
                f"{deadlines.expired()} timeout before the answer began", **ctx.kw()
            ) from None
        raise error_from_transport(e, ctx) from e


async def raise_for_status(response: aiohttp.ClientResponse, ctx: ErrorContext) -> None:
    """For a streamed response: read the (small) error body and raise the mapped error."""
    if response.status < 400:
        return
    try:
        body = await response.read()
    except TRANSPORT_ERRORS:
        body = b""
    raise error_from_response(response.status, response.headers, body[:65536], ctx)


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


def loads_chunk(data: str | bytes, ctx: ErrorContext) -> Any:
    """``json.loads`` that raises :class:`ProtocolError` (without the content) on bad JSON."""
    try:
        return json.loads(data)
    except ValueError:
        raise ProtocolError(f"malformed JSON chunk ({len(data)} bytes)", **ctx.kw()) from None


def normalise_base_url(url: str, *, default_path: str = "") -> str:
    """Strip the trailing slash; add ``default_path`` when the URL has no path at all."""
    url = url.rstrip("/")
    if default_path and urlsplit(url).path in ("", "/"):
        url += default_path
    return url
