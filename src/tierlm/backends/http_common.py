"""What every HTTP adapter shares: the client, timeouts, error mapping, SSE and NDJSON.

- :class:`SessionHolder` keeps the one ``aiohttp.ClientSession`` of a backend: made lazily on
  the running loop (and made again when the loop changes: the sync Router API runs its own
  loop thread), with split timeouts (connect from config; the socket read timeout is only a
  backstop, the real first-token, stall and total limits are enforced per chunk by
  :class:`Deadlines`) and pooled keep-alive connections. aiohttp, not httpx: measured on
  this hot path (``bench/bench_gateway.py``), a gateway request costs about a third of the
  time with it.
- :func:`fetch` (one whole request), :func:`open_stream` and :func:`raise_for_status` (a
  streamed one) send (with the attempt's ``traceparent`` when the request is traced and the
  backend is not external: :mod:`tierlm.telemetry`); :func:`resolve_api_key` and
  :func:`normalise_base_url` read settings.
- Error mapping lives in :mod:`tierlm.backends.http_errors`, streamed-body parsing and the
  per-chunk time limits in :mod:`tierlm.backends.http_stream`; both are re-exported here, and
  :class:`tierlm.backends.http_backend.HttpBackend` is the skeleton the adapters share.

Nothing here retries (the executor does) and nothing puts a key or request content into an
exception message: upstream messages are cut to a short length and only their ``message``
fields are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from tierlm.backends.http_errors import (
    TRANSPORT_ERRORS,
    ErrorContext,
    UpstreamError,
    error_for,
    error_from_response,
    error_from_transport,
    loads_chunk,
    parse_error_body,
    parse_retry_after,
)
from tierlm.backends.http_stream import (
    Deadlines,
    LineSplitter,
    SSEParser,
    drain,
    ndjson_stream,
    read_with_deadlines,
    sse_events,
    sse_stream,
)
from tierlm.errors import BackendTimeout
from tierlm.telemetry import trace_headers

LARGE_BODY = 1 << 20  # bytes; aiohttp sends larger bodies as a stream
_CLOSE_WAIT_S = 5.0  # how long aclose waits for a session closing on another thread's loop

if TYPE_CHECKING:
    from tierlm.config.backends import BackendConfig, HttpConfig

__all__ = [
    "TRANSPORT_ERRORS",
    "Deadlines",
    "ErrorContext",
    "LineSplitter",
    "SSEParser",
    "SessionHolder",
    "UpstreamError",
    "build_session",
    "client_timeout",
    "drain",
    "error_for",
    "error_from_response",
    "error_from_transport",
    "fetch",
    "loads_chunk",
    "ndjson_stream",
    "normalise_base_url",
    "open_stream",
    "parse_error_body",
    "parse_retry_after",
    "raise_for_status",
    "read_with_deadlines",
    "resolve_api_key",
    "sse_events",
    "sse_stream",
]


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
    config: HttpConfig, *, headers: Mapping[str, str] | None = None
) -> aiohttp.ClientSession:
    """One session per backend (call on the loop that will use it): split timeouts, pooled
    keep-alive connections, no cookies; environment proxies (``HTTPS_PROXY``, ``NO_PROXY``,
    .netrc) only for external backends, never for the LAN or this host."""
    connector = aiohttp.TCPConnector(
        limit=config.max_connections,
        limit_per_host=0,
        ttl_dns_cache=300,
        # seconds an idle pooled connection may be reused; 0: a new connection per request
        # (the local llama-server worker, which may close a connection just as it is reused)
        keepalive_timeout=config.keepalive_timeout,
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

    def __init__(self, config: HttpConfig) -> None:
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
            # another thread's loop (the sync Router API): close it there, and wait for that
            # (bounded): a close still pending when that loop stops is destroyed half-done
            done = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(s.close(), loop))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, _CLOSE_WAIT_S)
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


def resolve_api_key(config: HttpConfig, provider_key_env: str | None) -> str | None:
    """The key: ``api_key`` from config, else ``api_key_env``, else the provider's variable."""
    if config.api_key is not None:
        return config.api_key.get_secret_value() or None
    var = config.api_key_env or provider_key_env
    return (os.environ.get(var) or None) if var else None


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
    async with session.request(
        method, url, data=payload(data), timeout=limits, headers=trace_headers()
    ) as resp:
        return resp.status, resp.headers, await resp.read()


def payload(body: bytes | None) -> bytes | io.BytesIO | None:
    """A request body as aiohttp sends it without copying: bodies over a megabyte as a
    stream (aiohttp warns that it would otherwise write them in one go)."""
    return io.BytesIO(body) if body is not None and len(body) > LARGE_BODY else body


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
            return await session.post(url, data=payload(body), headers=trace_headers())
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


def normalise_base_url(url: str, *, default_path: str = "") -> str:
    """Strip the trailing slash; add ``default_path`` when the URL has no path at all."""
    url = url.rstrip("/")
    if default_path and urlsplit(url).path in ("", "/"):
        url += default_path
    return url
