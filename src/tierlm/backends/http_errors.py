"""Error mapping of the HTTP adapters: one HTTP error answer or transport failure of any of the
three protocols (OpenAI, Anthropic, Ollama) onto the :mod:`tierlm.errors` backend tree.

- :func:`error_from_response` maps an error answer (status, headers, body);
  :func:`error_for` picks the class for a status and what the body says;
- :func:`error_from_transport` maps aiohttp/socket transport failures;
- :func:`parse_retry_after` reads ``retry-after-ms`` / ``Retry-After``;
- :func:`loads_chunk` decodes JSON and raises :class:`ProtocolError` without the content.

Nothing here puts a key or request content into an exception message: upstream messages are
cut to a short length and only their ``message`` fields are used.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

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


def loads_chunk(data: str | bytes, ctx: ErrorContext) -> Any:
    """``json.loads`` that raises :class:`ProtocolError` (without the content) on bad JSON."""
    try:
        return json.loads(data)
    except ValueError:
        raise ProtocolError(f"malformed JSON chunk ({len(data)} bytes)", **ctx.kw()) from None
