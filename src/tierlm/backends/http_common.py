"""What every HTTP adapter shares: the client, timeouts, error mapping, SSE and NDJSON.

- :func:`build_client` makes the one ``httpx.AsyncClient`` of a backend, with split timeouts
  (connect from config; the read timeout is a socket-level backstop, the real first-token,
  stall and total limits are enforced per chunk by :class:`Deadlines`).
- :func:`error_from_response` maps an HTTP error answer (status, headers, body) of any of the
  three protocols (OpenAI, Anthropic, Ollama) onto the :mod:`tierlm.errors` backend tree;
  :func:`error_from_transport` maps httpx transport failures.
- :func:`sse_events` / :func:`ndjson_lines` parse a streamed body incrementally.

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
from typing import TYPE_CHECKING, Any

import httpx

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


def build_client(
    config: BackendConfig, *, headers: Mapping[str, str] | None = None, base_url: str = ""
) -> httpx.AsyncClient:
    """One client per backend: split timeouts, pooled connections, no env proxies for LAN."""
    t = config.timeouts
    timeout = httpx.Timeout(
        connect=t.connect,
        read=max(t.first_token, t.stall, 1.0),
        write=max(t.connect, 10.0),
        pool=max(t.connect, 1.0),
    )
    limits = httpx.Limits(
        max_connections=int(config.options.get("max_connections", 100)),
        max_keepalive_connections=20,
    )
    return httpx.AsyncClient(
        base_url=base_url,
        headers=dict(headers or {}),
        timeout=timeout,
        limits=limits,
        trust_env=config.where.label == "external",
    )


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
    it: AsyncIterator[str], deadlines: Deadlines, err_ctx: ErrorContext
) -> AsyncIterator[str]:
    """Re-yield ``it``, raising :class:`BackendTimeout` when a chunk is later than allowed."""
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


def error_from_transport(exc: httpx.HTTPError, ctx: ErrorContext) -> BackendError:
    """Map an httpx failure (connect, reset, timeout, bad framing) onto the tree."""
    kind = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        phase = {
            "ConnectTimeout": "connect",
            "ReadTimeout": "read",
            "WriteTimeout": "write",
            "PoolTimeout": "connection pool",
        }.get(kind, "")
        return BackendTimeout(f"{phase} timeout".strip(), **ctx.kw())
    if isinstance(exc, httpx.ConnectError | httpx.ReadError | httpx.WriteError | httpx.CloseError):
        return BackendUnavailable(f"connection failed ({kind})", **ctx.kw())
    if isinstance(exc, httpx.RemoteProtocolError):
        return BackendUnavailable(f"connection closed unexpectedly ({kind})", **ctx.kw())
    if isinstance(exc, httpx.DecodingError | httpx.ProtocolError):
        return ProtocolError(f"malformed HTTP answer ({kind})", **ctx.kw())
    return BackendUnavailable(f"transport error ({kind})", **ctx.kw())


async def raise_for_status(response: httpx.Response, ctx: ErrorContext) -> None:
    """For a streamed response: read the (small) error body and raise the mapped error."""
    if response.status_code < 400:
        return
    try:
        body = await response.aread()
    except httpx.HTTPError:
        body = b""
    raise error_from_response(response.status_code, response.headers, body[:65536], ctx)


# ---------------------------------------------------------------------------- stream parsing


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events from a line iterator: ``(event, data)``, data lines joined by
    newlines; comments and ``id``/``retry`` fields are skipped. A trailing event without its
    blank line is still delivered."""
    event = ""
    data: list[str] = []
    async for line in lines:
        if line[:6] == "data: ":  # the common case first
            data.append(line[6:])
            continue
        if not line:
            if data:
                yield event or "message", "\n".join(data) if len(data) > 1 else data[0]
            event, data = "", []
            continue
        if line[0] == ":":
            continue
        field, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
    if data:
        yield event or "message", "\n".join(data)


async def drain(it: AsyncIterator[Any], seconds: float = 0.25) -> None:
    """Read what is left of a finished stream (its terminator), briefly, so the connection
    goes back to the pool instead of being closed; give up quietly after ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            async for _ in it:
                pass
    except (TimeoutError, httpx.HTTPError, BackendError):
        pass


def loads_chunk(data: str, ctx: ErrorContext) -> Any:
    """``json.loads`` that raises :class:`ProtocolError` (without the content) on bad JSON."""
    try:
        return json.loads(data)
    except ValueError:
        raise ProtocolError(f"malformed JSON chunk ({len(data)} bytes)", **ctx.kw()) from None


async def ndjson_lines(lines: AsyncIterator[str], ctx: ErrorContext) -> AsyncIterator[Any]:
    """One JSON value per non-empty line."""
    async for line in lines:
        if line.strip():
            yield loads_chunk(line, ctx)


def normalise_base_url(url: str, *, default_path: str = "") -> str:
    """Strip the trailing slash; add ``default_path`` when the URL has no path at all."""
    url = url.rstrip("/")
    if default_path and httpx.URL(url).path in ("", "/"):
        url += default_path
    return url
