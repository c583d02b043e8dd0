"""The skeleton every HTTP adapter shares: :class:`HttpBackend`.

It owns what does not depend on the wire format: the session (one per backend, made lazily
with the adapter's headers), the split timeouts, the in-flight count, the whole-answer and
streamed request around sending and error mapping, and the health probe's plumbing. An
adapter (OpenAI-compatible, Anthropic, Ollama) supplies only its translation:

- ``_headers()``: auth and protocol headers (may raise :class:`BackendAuthError`);
- ``body(request, stream=...)``: the JSON body, built from an allowlist of the fields the
  wire format has (never the request passed through); its exact bytes are handed to
  :func:`~tierlm.backends.base.note_sent` for the audit digest;
- ``parse_answer(data, ctx)``: a whole JSON answer -> :class:`ChatResponse`;
- ``_read_events(response, deadlines, ctx)``: a streamed body -> :class:`StreamEvent` s;
- ``_health_urls()`` and ``_health_from(client, answers, latency)``: what health reads.
"""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from tierlm.backends.base import Backend, BackendHealth, dumps, note_sent
from tierlm.backends.http_common import (
    SessionHolder,
    client_timeout,
    fetch,
    open_stream,
    raise_for_status,
)
from tierlm.backends.http_errors import (
    TRANSPORT_ERRORS,
    ErrorContext,
    error_from_response,
    error_from_transport,
    loads_chunk,
)
from tierlm.backends.http_stream import Deadlines, read_with_deadlines
from tierlm.errors import BackendAuthError, BackendTimeout

if TYPE_CHECKING:
    from tierlm.config.backends import HttpConfig
    from tierlm.types import ChatRequest, ChatResponse, StreamEvent

# One GET of a health probe: (status, headers, body).
Answer = tuple[int, Mapping[str, str], bytes]


class HttpBackend(Backend):
    """A backend spoken to over HTTP; subclasses set ``base_url`` and ``_chat_url``."""

    base_url: str
    _chat_url: str
    config: HttpConfig

    def __init__(self, config: HttpConfig) -> None:
        super().__init__(config)
        self._session = SessionHolder(config)
        t = config.timeouts
        self._complete_limits = client_timeout(config, total=t.total)
        self._health_limits = client_timeout(config, read=max(t.connect, 5.0))
        self._in_flight = 0

    # ------------------------------------------------------------------ wire format

    @abstractmethod
    def _headers(self) -> dict[str, str]:
        """The session's headers (auth, protocol version, extra ``headers`` option)."""

    @abstractmethod
    def body(self, req: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The JSON body for one request (public for tests and the bench)."""

    @abstractmethod
    def parse_answer(self, data: Any, ctx: ErrorContext) -> ChatResponse:
        """One whole (decoded JSON) answer as a :class:`ChatResponse`."""

    @abstractmethod
    def _read_events(
        self, resp: aiohttp.ClientResponse, deadlines: Deadlines, ctx: ErrorContext
    ) -> AsyncIterator[StreamEvent]:
        """The events of a streamed answer whose status was fine."""

    @abstractmethod
    def _health_urls(self) -> Sequence[str]:
        """What ``health`` GETs (concurrently)."""

    @abstractmethod
    async def _health_from(
        self, client: aiohttp.ClientSession, answers: list[Answer], latency: float
    ) -> BackendHealth:
        """The health verdict from the answers to :meth:`_health_urls` (the first one is not
        an error answer)."""

    # ------------------------------------------------------------------ shared plumbing

    async def _http(self) -> aiohttp.ClientSession:
        return self._session.current() or await self._session.open(self._headers())

    def _chunks(
        self, resp: aiohttp.ClientResponse, deadlines: Deadlines, ctx: ErrorContext
    ) -> AsyncIterator[bytes]:
        """The body chunks of a streamed answer, within the first-token/stall/total limits."""
        return read_with_deadlines(resp.content.iter_any(), deadlines, ctx)

    async def complete(self, request: ChatRequest) -> ChatResponse:
        ctx = ErrorContext(self.name, request.request_id)
        client = await self._http()
        body = dumps(self.body(request, stream=False)).encode()
        note_sent(body)
        start = time.perf_counter()
        self._in_flight += 1
        try:
            status, headers, raw = await fetch(
                client, "POST", self._chat_url, data=body, limits=self._complete_limits
            )
        except TRANSPORT_ERRORS as e:
            if type(e) is TimeoutError:  # aiohttp's total (its other timeouts are subclasses)
                raise BackendTimeout("total timeout", **ctx.kw()) from None
            raise error_from_transport(e, ctx) from e
        finally:
            self._in_flight -= 1
        if status >= 400:
            raise error_from_response(status, headers, raw[:65536], ctx)
        out = self.parse_answer(loads_chunk(raw, ctx), ctx)
        out.latency_ms = (time.perf_counter() - start) * 1000.0
        return out

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        ctx = ErrorContext(self.name, request.request_id)
        client = await self._http()
        deadlines = Deadlines(self.config)
        body = dumps(self.body(request, stream=True)).encode()
        note_sent(body)
        self._in_flight += 1
        try:
            resp = await open_stream(client, self._chat_url, body, deadlines, ctx)
            try:
                await raise_for_status(resp, ctx)
                async for ev in self._read_events(resp, deadlines, ctx):
                    yield ev
            except TRANSPORT_ERRORS as e:
                raise error_from_transport(e, ctx) from e
            finally:
                resp.release()
        finally:
            self._in_flight -= 1

    async def health(self) -> BackendHealth:
        try:
            client = await self._http()
        except BackendAuthError as e:
            return BackendHealth(ok=False, detail=e.message)
        start = time.perf_counter()
        try:
            answers: list[Answer] = list(
                await asyncio.gather(
                    *(
                        fetch(client, "GET", url, limits=self._health_limits)
                        for url in self._health_urls()
                    )
                )
            )
        except TRANSPORT_ERRORS as e:
            err = error_from_transport(e, ErrorContext(self.name))
            return BackendHealth(ok=False, detail=f"unreachable: {err.message}")
        latency = (time.perf_counter() - start) * 1000.0
        if answers[0][0] >= 400:
            return self._health_failed(answers[0], latency)
        return await self._health_from(client, answers, latency)

    def _health_failed(self, answer: Answer, latency: float) -> BackendHealth:
        """The verdict when the first health GET got an error answer (the others may fail:
        ``_health_from`` decides what they mean)."""
        status, headers, raw = answer
        err = error_from_response(status, headers, raw[:4096], ErrorContext(self.name))
        return BackendHealth(ok=False, detail=err.message, latency_ms=latency)

    async def aclose(self) -> None:
        await self._session.aclose()
