"""Carry a plan out: try its candidates in order until one answers, and never hang.

``complete()`` returns a whole answer; ``stream()`` returns a
:class:`~tierlm.execute.streams.RoutedStream`, an async
iterator of :class:`StreamEvent` whose ``tier``/``backend``/``model`` are known once the first
piece has been handed over (the stream is then *committed* to that backend).

For each candidate of the plan, in order:

1. **Guards.** A candidate whose boundary is above what the plan's privacy allows
   (:func:`tierlm.privacy.ceiling`; ``private``: nothing above ``site``) is refused and
   recorded, whatever the plan says: fallbacks never cross the privacy boundary. An
   ``enhanced`` request reaches an external backend only as the redactor's copy (first tries,
   retries, fallbacks and continuations alike), and not at all without a redactor. After a
   context-length error, candidates whose context window is not larger are skipped; after a
   content-policy refusal, candidates at the same endpoint host are skipped (another provider
   may judge differently; the same one will not).
2. **Circuit breaker** (:mod:`tierlm.execute.breaker`): an open breaker skips the candidate.
3. **Budget hook**: ``hooks.before_attempt`` may raise ``BudgetExceeded`` to skip it.
4. **The attempt**, under the backend's timeouts: ``total`` for ``complete()``; ``first_token``,
   ``stall`` (between events) and ``total`` for streams (:class:`TimedStream`). Transient
   failures are retried on the same backend (:mod:`tierlm.execute.retry`: bounded, backoff with
   full jitter, ``Retry-After`` honoured up to a cap); others move on to the next candidate.
   A ``Retry-After`` beyond the cap moves on at once and holds the backend's breaker open for
   that long, so later requests leave it alone too.

Streams: before commit every failure fails over silently. After commit, the next candidate is
asked for the rest of the answer (by prefill where its backend supports it, else by
instruction) and what it sends is checked before it is forwarded (:mod:`tierlm.execute.rescue`:
a restart has its repeated part dropped, a reply that is no continuation is refused). If no
candidate can continue (or the partial answer holds tool calls), the stream raises
:class:`ProtocolError` after the pieces already sent, and never yields a final event for a
truncated or duplicated answer.

Accounting: every attempt becomes an :class:`AttemptRecord` (in the caller's ``attempts`` list,
or ``RoutedStream.attempts``), with the SHA-256 of the exact body the adapter sent upstream
(``sent_digest``, :func:`~tierlm.backends.base.capture_sent`) and what it is billed
(``cost_usd``: ``hooks.cost`` of the usage it is settled at); failed attempts carry no
tokens and are settled with ``after_attempt(token, None, False)``, except a stream cut or
abandoned after it generated text: the provider bills that, so it is settled at the estimated
usage of what was streamed (``after_attempt(token, usage, False)``), whatever cancelled it
(settling is shielded from cancellation). Usage of a success is what the backend reported (a
continued stream: the sum over its parts, cut ones included), or an estimate (~4 characters a
token) where a backend reports none; ``RoutedStream.usage`` of a cut or abandoned stream is
what was billed. In a traced request each attempt is also a span, settled with its record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol, TypeVar
from urllib.parse import urlsplit

import anyio

from tierlm import telemetry
from tierlm.backends.base import capture_sent
from tierlm.errors import (
    AllAttemptsFailed,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BudgetExceeded,
    ContentPolicyError,
    ContextLengthExceeded,
    NoEligibleBackend,
    ProtocolError,
    TierlmError,
)
from tierlm.execute.breaker import BreakerBoard, BreakerConfig, Clock
from tierlm.execute.rescue import Splice, continuation_request
from tierlm.execute.retry import RetryPolicy, counts_against_backend, retry_after
from tierlm.execute.streams import RoutedStream, TimedStream, add_usage, estimate_usage
from tierlm.ledger.audit import digest
from tierlm.ledger.records import AttemptRecord
from tierlm.privacy import ceiling, needs_redaction
from tierlm.types import (
    Boundary,
    Candidate,
    ChatRequest,
    ChatResponse,
    Plan,
    StreamEvent,
    Usage,
)

if TYPE_CHECKING:
    from tierlm.backends.base import Backend
    from tierlm.telemetry import AttemptSpan

log = logging.getLogger(__name__)
T = TypeVar("T")


class ExecutionHooks(Protocol):
    """Budget hooks around every attempt; any object with these methods will do (subclass
    this for the do-nothing defaults).

    ``before_attempt`` may raise :class:`BudgetExceeded` to skip the candidate; what it returns
    (e.g. a reservation) comes back to ``after_attempt`` exactly once, with the usage of a
    success, or with ``ok=False`` and the usage billed for a failed or abandoned attempt
    (``None`` when nothing was generated). ``cost`` prices that same usage for the attempt's
    record.
    """

    def cost(self, backend: str, usage: Usage | None) -> float:
        return 0.0

    async def before_attempt(self, request: ChatRequest, candidate: Candidate) -> object | None:
        return None

    async def after_attempt(self, token: object | None, usage: Usage | None, ok: bool) -> None:
        return None


class _NoHooks(ExecutionHooks):
    pass


@dataclass(slots=True)
class _Try:
    """One attempt in flight."""

    cand: Candidate
    backend: Backend
    token: object | None
    started: float = field(default_factory=time.perf_counter)
    ts: float = field(default_factory=time.time)
    ttft_ms: float | None = None
    settled: bool = False
    sent: list[bytes] = field(default_factory=list)  # bodies sent upstream, in order
    span: AttemptSpan | None = None  # its trace span, when the request is traced


@dataclass(slots=True)
class _Run:
    """One request across all its attempts."""

    request: ChatRequest
    plan: Plan
    attempts: list[AttemptRecord]
    errors: list[BackendError] = field(default_factory=list)
    refusals: list[TierlmError] = field(default_factory=list)
    too_long: list[tuple[str, int | None]] = field(default_factory=list)  # (model, window)
    refused_hosts: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.perf_counter)


def _cut_off(run: _Run, rs: RoutedStream, chars: int) -> ProtocolError:
    """The in-band error of a committed stream that nobody could finish."""
    last = run.errors[-1] if run.errors else None
    cause = f" ({last.backend}: {last.message})" if last else ""
    return ProtocolError(
        f"the answer was cut off after {chars} characters and no other candidate could "
        f"continue it{cause}",
        backend=rs.backend,
        tier=rs.tier,
        request_id=run.request.request_id,
    )


def _commit(run: _Run, rs: RoutedStream, cand: Candidate, backend: Backend) -> None:
    """The stream now hands over pieces from ``backend`` (first commit, or a continuation)."""
    if rs.committed:
        rs.continued = True
    else:
        rs.ttft_ms = (time.perf_counter() - run.started) * 1000.0
    rs.tier, rs.backend, rs.model = cand.tier, cand.backend, backend.model


def _through(splice: Splice | None, ev: StreamEvent) -> list[StreamEvent]:
    """What of ``ev`` goes on to the caller before any final event: the piece itself, or (a
    continuation after a mid-stream failure) only what the splice accepts of it."""
    if ev.finish_reason is not None:
        rest = splice.finish() if splice is not None and ev.finish_reason != "error" else ""
        return [StreamEvent(text=rest)] if rest else []
    if not (ev.text or ev.tool_calls):
        return []
    if splice is None:
        return [ev]
    if ev.tool_calls:
        raise ProtocolError(
            "the fallback answered a text continuation with a tool call", backend=splice.backend
        )
    text = splice.feed(ev.text)
    return [StreamEvent(text=text, model=ev.model)] if text else []


def _generated(request: ChatRequest, part: list[str]) -> Usage | None:
    """What a provider bills for a stream cut after ``part`` was generated (``None``: nothing
    was generated, nothing is billed)."""
    return estimate_usage(request, "".join(part)) if part else None


def _host_key(backend: Backend) -> str:
    url = getattr(backend, "base_url", None) or ""
    return f"{backend.config.kind}:{urlsplit(url).netloc or backend.name}"


class Executor:
    """Runs plans against ``backends`` with retries, timeouts and one breaker per backend."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        *,
        retry: RetryPolicy | None = None,
        breakers: BreakerBoard | BreakerConfig | None = None,
        hooks: ExecutionHooks | None = None,
        redact: Callable[[ChatRequest], ChatRequest | None] | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.backends = backends
        self.retry = retry or RetryPolicy()
        self.breakers = (
            breakers if isinstance(breakers, BreakerBoard) else BreakerBoard(breakers, clock)
        )
        self.hooks: ExecutionHooks = hooks or _NoHooks()
        self.redact = redact  # for `enhanced` requests bound for an external backend
        self._sleep = sleep

    # ------------------------------------------------------------------ complete

    async def complete(
        self, request: ChatRequest, plan: Plan, attempts: list[AttemptRecord] | None = None
    ) -> ChatResponse:
        """The whole answer of the first candidate that gives one; every attempt is appended
        to ``attempts``. Raises :class:`AllAttemptsFailed` (or the budget / eligibility error
        when nothing could even be tried)."""
        run = _Run(request, plan, attempts if attempts is not None else [])
        for cand in plan.candidates:
            backend = self._eligible(run, cand)
            outbound = self._outbound(run, cand, backend, request) if backend else None
            if backend is None or outbound is None:
                continue
            got = await self._with_retries(
                run, cand, backend, partial(self._complete_once, outbound)
            )
            if got is None:
                continue
            resp, tr = got
            if resp.usage.total_tokens == 0:
                resp.usage = estimate_usage(request, resp.text)
            await self._settle_ok(run, tr, resp.usage, resp.model)
            resp.backend, resp.tier = cand.backend, cand.tier
            resp.latency_ms = (time.perf_counter() - run.started) * 1000.0
            return resp
        raise self._failure(run)

    async def _complete_once(self, request: ChatRequest, tr: _Try) -> ChatResponse:
        total = tr.backend.config.timeouts.total
        try:
            async with asyncio.timeout(total):
                resp = await tr.backend.complete(request)
        except TimeoutError:
            raise BackendTimeout(
                f"total timeout ({total:g} s)",
                backend=tr.cand.backend,
                tier=tr.cand.tier,
                request_id=request.request_id,
            ) from None
        if resp.finish_reason == "error":
            raise ProtocolError(
                "the backend reported an error instead of an answer",
                backend=tr.cand.backend,
                tier=tr.cand.tier,
            )
        return resp

    # ------------------------------------------------------------------ stream

    def stream(
        self, request: ChatRequest, plan: Plan, attempts: list[AttemptRecord] | None = None
    ) -> RoutedStream:
        """The answer piece by piece; nothing runs until the first ``anext``."""
        run = _Run(request, plan, attempts if attempts is not None else [])
        rs = RoutedStream(plan, attempts=run.attempts)
        rs._events = self._stream(run, rs)
        return rs

    async def _stream(self, run: _Run, rs: RoutedStream) -> AsyncIterator[StreamEvent]:
        sent: list[str] = []  # text handed to the caller so far
        tools_sent = False
        usage: Usage | None = None  # what the providers billed so far (finished and cut parts)
        for cand in run.plan.candidates:
            if rs.committed and tools_sent:
                break  # a half-sent tool call cannot be continued by another model
            backend = self._eligible(run, cand)
            if backend is None:
                continue
            splice: Splice | None = None  # after commit: checks the continuation (rescue.py)
            whole = run.request
            if rs.committed:
                so_far, prefill = "".join(sent), backend.supports_prefill
                whole = continuation_request(run.request, so_far, prefill=prefill)
                splice = Splice(so_far, prefill=prefill, backend=cand.backend)
            req = self._outbound(run, cand, backend, whole)
            if req is None:
                continue
            got = await self._with_retries(run, cand, backend, partial(self._open, req))
            if got is None:
                continue
            (timed, ev), tr = got
            part: list[str] = []  # what this backend generated (its usage estimate)
            handed = False  # has anything of this backend's reached the caller?
            try:
                while True:
                    for out in _through(splice, ev):
                        if not handed:  # the first piece this backend hands over: commit
                            _commit(run, rs, cand, backend)
                            handed = True
                        sent.append(out.text)
                        tools_sent = tools_sent or bool(out.tool_calls)
                        yield out
                    if ev.finish_reason is not None:
                        break
                    part.append(ev.text)
                    ev = await timed.next()
                if ev.finish_reason == "error":
                    raise ProtocolError(
                        "the backend ended the stream with an error",
                        backend=cand.backend,
                        tier=cand.tier,
                    )
                part_usage = ev.usage or estimate_usage(req, "".join(part))
                await self._settle_ok(run, tr, part_usage, ev.model or backend.model)
            except BackendError as e:
                cut = _generated(req, part)  # the provider bills what it generated
                usage = rs.usage = add_usage(usage, cut) if cut else usage
                await self._settle_fail(run, tr, e, cut)
                continue
            finally:
                # The caller went away (or we were cancelled): settle even while cancelled,
                # billing what was generated, so no reservation is left to the next start-up.
                with anyio.CancelScope(shield=True):
                    await timed.aclose()
                    if not tr.settled:
                        cut = _generated(req, part)
                        rs.usage = add_usage(usage, cut) if cut else usage
                        await self._abandon(run, tr, cut)
            if not handed:
                _commit(run, rs, cand, backend)
            usage = add_usage(usage, part_usage)
            rs.usage, rs.finish_reason = usage, ev.finish_reason
            yield StreamEvent(
                finish_reason=ev.finish_reason, usage=usage, model=ev.model or backend.model
            )
            return
        if rs.committed:
            raise _cut_off(run, rs, len("".join(sent))) from (
                run.errors[-1] if run.errors else None
            )
        raise self._failure(run)

    async def _open(self, request: ChatRequest, tr: _Try) -> tuple[TimedStream, StreamEvent]:
        """Start a stream and wait for its first event (the commit point)."""
        timed = TimedStream(
            tr.backend.stream(request),
            tr.backend.config.timeouts,
            backend=tr.cand.backend,
            request_id=request.request_id,
        )
        try:
            first = await timed.next()
        except BaseException:
            await timed.aclose()
            raise
        tr.ttft_ms = (time.perf_counter() - tr.started) * 1000.0
        return timed, first

    # ------------------------------------------------------------------ one candidate

    def _eligible(self, run: _Run, cand: Candidate) -> Backend | None:
        """The candidate's backend, or ``None`` (recorded) when a guard refuses it."""
        backend = self.backends.get(cand.backend)
        if backend is None:
            self._skip(run, cand, cand.boundary, "unknown_backend")
            return None
        where = max(cand.boundary, backend.boundary)
        if where > ceiling(run.plan.privacy):
            log.warning(
                "refused candidate %s (%s) for a %s request %s: above the privacy ceiling",
                cand.backend,
                where.label,
                run.plan.privacy.value,
                run.request.request_id,
            )
            self._skip(run, cand, where, "privacy_boundary")
            return None
        window = backend.config.context_window
        for model, failed in run.too_long:
            if (
                (window <= failed)
                if (window is not None and failed is not None)
                else (backend.model == model)
            ):
                self._skip(run, cand, where, "context_window_too_small")
                return None
        if _host_key(backend) in run.refused_hosts:
            self._skip(run, cand, where, "content_policy_same_host")
            return None
        return backend

    def _outbound(
        self, run: _Run, cand: Candidate, backend: Backend, request: ChatRequest
    ) -> ChatRequest | None:
        """What may be sent to this candidate: an ``enhanced`` request leaves the site only
        redacted, and not at all when no redactor is configured or the redactor cannot make
        it clean (recorded as a skip)."""
        where = max(cand.boundary, backend.boundary)
        if not needs_redaction(run.plan.privacy, where):
            return request
        redacted = self.redact(request) if self.redact is not None else None
        if redacted is None:
            why = "redaction_unavailable" if self.redact is None else "redaction_incomplete"
            self._skip(run, cand, where, why)
        return redacted

    async def _with_retries(
        self, run: _Run, cand: Candidate, backend: Backend, once: Callable[[_Try], Awaitable[T]]
    ) -> tuple[T, _Try] | None:
        """Run ``once`` with retries; ``None`` when the candidate is done for (recorded)."""
        breaker = self.breakers[cand.backend]
        budget_end = time.monotonic() + backend.config.timeouts.total
        for retry_no in range(self.retry.max_retries + 1):
            if not breaker.allow():
                self._skip(run, cand, backend.boundary, "circuit_open")
                run.errors.append(
                    BackendUnavailable(
                        f"circuit open (next probe in {breaker.retry_in():.1f} s)",
                        backend=cand.backend,
                        tier=cand.tier,
                        request_id=run.request.request_id,
                    )
                )
                return None
            tr = await self._begin(run, cand, backend)
            if tr is None:
                breaker.release()
                return None
            try:
                with capture_sent(tr.sent), telemetry.sending(tr.span):
                    return await once(tr), tr
            except BackendError as e:
                err = e
            except BaseException:
                await self._abandon(run, tr)
                raise
            await self._settle_fail(run, tr, err)
            wait = self.retry.delay(err, retry_no, budget_end - time.monotonic())
            if wait is None:
                return None
            log.info("retrying %s in %.2f s after %s", cand.backend, wait, type(err).__name__)
            await self._sleep(wait)
        return None

    async def _begin(self, run: _Run, cand: Candidate, backend: Backend) -> _Try | None:
        try:
            token = await self.hooks.before_attempt(run.request, cand)
        except BudgetExceeded as e:
            e.backend, e.tier, e.request_id = cand.backend, cand.tier, run.request.request_id
            run.refusals.append(e)
            self._skip(run, cand, backend.boundary, e.code)
            return None
        trace = telemetry.current()
        url = getattr(backend, "base_url", None)
        span = trace.attempt(cand, backend.config, run.request, url=url) if trace else None
        return _Try(cand, backend, token, span=span)

    # ------------------------------------------------------------------ settling

    async def _settle_ok(self, run: _Run, tr: _Try, usage: Usage, model: str) -> None:
        tr.settled = True
        self.breakers[tr.cand.backend].success()
        run.attempts.append(self._record(tr, "ok", None, usage, model))
        await self.hooks.after_attempt(tr.token, usage, True)

    async def _settle_fail(
        self, run: _Run, tr: _Try, err: BackendError, billed: Usage | None = None
    ) -> None:
        tr.settled = True
        cand, backend = tr.cand, tr.backend
        err.backend, err.tier = cand.backend, cand.tier
        err.request_id = run.request.request_id
        breaker = self.breakers[cand.backend]
        pause = retry_after(err)
        if pause is not None and pause > self.retry.retry_after_cap:
            breaker.hold_for(min(pause, self.retry.hold_cap))
        elif counts_against_backend(err):
            breaker.failure()
        else:
            breaker.success()  # it answered: the backend is up, the request was the problem
        if isinstance(err, ContextLengthExceeded):
            run.too_long.append((backend.model, backend.config.context_window))
        elif isinstance(err, ContentPolicyError):
            run.refused_hosts.add(_host_key(backend))
        run.errors.append(err)
        run.attempts.append(self._record(tr, err.code, type(err).__name__, billed))
        log.info(
            "attempt on %s failed for %s: %s %s",
            cand.backend,
            run.request.request_id,
            type(err).__name__,
            err.message,
        )
        await self.hooks.after_attempt(tr.token, billed, False)

    async def _abandon(self, run: _Run, tr: _Try, billed: Usage | None = None) -> None:
        """Settle an attempt the caller gave up on (shielded: this runs while cancelled)."""
        tr.settled = True
        self.breakers[tr.cand.backend].release()
        run.attempts.append(self._record(tr, "cancelled", "Cancelled", billed))
        with anyio.CancelScope(shield=True):
            await self.hooks.after_attempt(tr.token, billed, False)

    def _record(
        self,
        tr: _Try,
        outcome: str,
        kind: str | None,
        usage: Usage | None,
        model: str | None = None,
    ) -> AttemptRecord:
        """The attempt's record (``usage``: what it billed, priced by ``hooks.cost``); its span
        is settled with it."""
        rec = AttemptRecord(
            backend=tr.cand.backend,
            tier=tr.cand.tier,
            boundary=max(tr.cand.boundary, tr.backend.boundary).label,
            outcome=outcome,
            error_kind=kind,
            latency_ms=(time.perf_counter() - tr.started) * 1000.0,
            ttft_ms=tr.ttft_ms,
            tokens=usage.total_tokens if usage else 0,
            cost_usd=self.hooks.cost(tr.cand.backend, usage),
            ts=tr.ts,
            sent_digest=digest(tr.sent[-1]) if tr.sent else None,
        )
        if tr.span is not None:
            tr.span.settled(rec, usage, tr.backend.config, model)
        return rec

    @staticmethod
    def _skip(run: _Run, cand: Candidate, where: Boundary, outcome: str) -> None:
        run.attempts.append(
            AttemptRecord(
                backend=cand.backend,
                tier=cand.tier,
                boundary=where.label,
                outcome=outcome,
                error_kind="Skipped",
                latency_ms=0.0,
                tokens=0,
                ts=time.time(),
            )
        )

    @staticmethod
    def _failure(run: _Run) -> TierlmError:
        rid = run.request.request_id
        if run.errors:
            return AllAttemptsFailed(run.errors, request_id=rid)
        if run.refusals:
            return run.refusals[-1]
        tried = ", ".join(f"{a.backend}: {a.outcome}" for a in run.attempts)
        return NoEligibleBackend(
            f"no candidate of the plan could be tried ({tried or 'the plan is empty'})",
            request_id=rid,
        )
