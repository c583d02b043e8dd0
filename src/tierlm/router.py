"""The Router: one core behind the CLI, the HTTP server and the Python API.

``Router.plan()`` reads the signals and asks the policy (no model is called);
``achat()``/``astream()`` also carry the plan out through the executor (wrapped by the
cascade, which judges answers of tiers configured to cascade). The sync ``chat()``
and ``stream()`` run on a private event-loop thread, so they work from any code.

With ``telemetry.enabled``, the Router owns a :class:`~tierlm.telemetry.Tracing`: each request
is a trace (a root span, a span per attempt; :mod:`tierlm.telemetry`), ended with its record.

With an ``energy`` section, the Router owns an :class:`~tierlm.signals.energy.EnergyMonitor`
(a background thread, started with the Router and stopped by ``close()``); every plan gets
its cached snapshot in ``Conditions.energy`` unless the caller supplied one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from tierlm import telemetry
from tierlm.accounting import Accounting
from tierlm.config import Settings, load_settings
from tierlm.errors import ConfigError, TierlmError
from tierlm.execute.cascade import Cascade
from tierlm.execute.executor import Executor
from tierlm.execute.streams import RoutedStream
from tierlm.layer0.core import Early, Layer0
from tierlm.learn import read_calibration
from tierlm.loopthread import LoopThread
from tierlm.paths import data_dir
from tierlm.policy import Conditions, Policy, Signals
from tierlm.signals.rapl import JoulesMeter
from tierlm.types import ChatRequest, ChatResponse, Finding, Message, Plan, Privacy, StreamEvent

if TYPE_CHECKING:
    from tierlm.backends.base import Backend
    from tierlm.config.settings import ApiKeyConfig
    from tierlm.embeddings import Embeddings
    from tierlm.ledger import AttemptRecord, Ledger
    from tierlm.signals.energy import EnergyMonitor
    from tierlm.signals.offload import Scanned, ScanPool
    from tierlm.telemetry import RequestTrace, Tracing

T = TypeVar("T")
# Requests with more text than this are scanned in a worker process (below it, the scan
# costs less than the hop: ~30 ms at this size); SCAN_WORKERS processes.
INLINE_SCAN_CHARS = 32_768
SCAN_WORKERS = 2


class SignalReader:
    """Runs every signal on a request; detectors and models are built once."""

    def __init__(self, settings: Settings, llm_rate: Any = None) -> None:
        from tierlm.signals.complexity import load_scorer
        from tierlm.signals.offload import build_privacy

        r = settings.routing
        self.privacy = build_privacy(r)
        self.scorer = load_scorer(r.complexity_method, llm_rate=llm_rate)
        self.long_context_tokens = r.long_context_tokens

    def read(self, request: ChatRequest, scanned: Scanned | None = None) -> Signals:
        """The signals of ``request``; ``scanned``: its findings and task, when a scan
        worker has read them already."""
        from tierlm.signals.offload import scan_request

        if scanned is None:
            scanned = scan_request(self.privacy, request, self.long_context_tokens)
        findings, task = scanned
        return Signals(
            complexity=float(self.scorer.score(request)),
            findings=findings,
            tokens=task.tokens,
            task=task.to_dict(),
        )


class Router:
    """Route chat requests across the configured tiers."""

    def __init__(
        self,
        settings: Settings,
        *,
        backends: Mapping[str, Backend] | None = None,
        ledger: Ledger | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        from tierlm.backends import create_backend

        self.settings = settings
        # OpenTelemetry traces (None: off); ``tracing`` given: that one (tests, successors)
        self.tracing = tracing or telemetry.open_tracing(settings.telemetry)
        self.backends: dict[str, Backend] = (
            dict(backends)
            if backends
            else {b.name: create_backend(b, settings) for b in settings.backends}
        )
        self.policy = Policy(settings)
        self.accounting = Accounting(settings, ledger, scan_text=self._scan_text)
        self._signals: SignalReader | None = None
        self.executor = Executor(self.backends, hooks=self.accounting, redact=self._redact)
        self.cascade = Cascade(
            self.executor,
            [(t.name, t.cascade) for t in settings.tiers],
            learned=read_calibration(data_dir(settings)),
        )
        self.layer0 = Layer0(settings)
        self._embeddings: Embeddings | None = None
        self._sync = LoopThread()  # the synchronous API's event loop
        self._scan_pool: ScanPool | None = None
        self.energy: EnergyMonitor | None = None
        if settings.energy is not None:
            from tierlm.signals.energy import EnergyMonitor

            self.energy = EnergyMonitor(settings.energy)
            self.energy.start()

    @classmethod
    def from_config(
        cls,
        config: str | Path | Settings | None = None,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Router:
        """Build from a YAML file, a preset, or ready :class:`Settings` (default: edge-only)."""
        if isinstance(config, Settings):
            return cls(config)
        return cls(load_settings(config, preset=preset, overrides=overrides, env=env))

    @property
    def embeddings(self) -> Embeddings:
        """Routed embeddings (:mod:`tierlm.embeddings`), built on first use."""
        if self._embeddings is None:
            from functools import lru_cache

            from tierlm.embeddings import Embeddings
            from tierlm.layer0.embed import load_embedder

            name = self.settings.embeddings.embedder
            self._embeddings = Embeddings(
                self.settings,
                self.accounting,
                self._scan_text,
                lru_cache(maxsize=1)(lambda: load_embedder(name)),
                self.tracing,
            )
        return self._embeddings

    # -- deciding ---------------------------------------------------------------------------
    @property
    def signals(self) -> SignalReader:
        if self._signals is None:
            self._signals = SignalReader(self.settings, llm_rate=self._llm_rate)
        return self._signals

    def plan(self, request: ChatRequest, conditions: Conditions | None = None) -> Plan:
        """The decision for ``request``, without calling any model: a matching rule's (layer
        0), else the policy's."""
        cond = self._with_energy(conditions or Conditions())
        privacy = _PrivacyOf(self, request, cond)
        ruled, _, why_not = self.layer0.rule_plan(request, privacy, cond.api_key)
        if ruled is not None:
            return ruled
        plan = self.policy.plan(request, privacy.signals() or self.signals.read(request), cond)
        Early(rules_why=why_not).annotate(plan)
        return plan

    def _with_energy(self, cond: Conditions) -> Conditions:
        """``cond`` with the cached energy state and the local backends' measured joules per
        token (a copy; no I/O)."""
        if self.energy is None:
            return cond
        measured = cond.measured_joules
        if measured is None:
            measured = {n: j for n, b in self.backends.items() if (j := _measured(b)) is not None}
        energy = cond.energy or self.energy.snapshot()
        return dataclasses.replace(cond, energy=energy, measured_joules=measured)

    async def asignals(self, request: ChatRequest, *, processes: bool = False) -> Signals:
        """The request's signals. A large request (more than :data:`INLINE_SCAN_CHARS` of
        text) is read off the event loop: in a worker thread, or, with ``processes`` (the
        gateway), its text scanned in a worker process (:class:`~tierlm.signals.offload.
        ScanPool`, :data:`SCAN_WORKERS` of them), which also frees the loop from the
        interpreter lock that long scans hold. A small one is read inline, where that is
        cheaper than the hop."""
        if _text_size(request) <= INLINE_SCAN_CHARS:
            return self.signals.read(request)
        if not processes:
            return await anyio.to_thread.run_sync(self.signals.read, request)
        if self._scan_pool is None:
            from tierlm.signals.offload import ScanPool

            self._scan_pool = ScanPool(self.settings.routing, SCAN_WORKERS)
        scanned = await self._scan_pool.scan(request)
        return await anyio.to_thread.run_sync(self.signals.read, request, scanned)

    async def live_conditions(self, api_key: ApiKeyConfig | None = None) -> Conditions:
        """Conditions from every backend's health check (``route --live``, the gateway)."""
        names = list(self.backends)
        checks = await asyncio.gather(*(self.backends[n].health() for n in names))
        healthy = {n: h.ok is not False for n, h in zip(names, checks, strict=True)}
        warm = {n: bool(h.loaded) for n, h in zip(names, checks, strict=True)}
        return Conditions(healthy=healthy, warm=warm, api_key=api_key)

    def _llm_rate(self, messages: list[dict[str, str]]) -> str:
        """For ``complexity_method: llm``: the first in-process model rates the request."""
        from tierlm.backends.llama_cpp import LlamaCppBackend

        local = [b for b in self.backends.values() if isinstance(b, LlamaCppBackend)]
        if not local:
            raise ConfigError(
                "complexity_method 'llm' needs an in-process llama.cpp backend",
                key="routing.complexity_method",
            )
        req = ChatRequest(
            messages=[Message.model_validate(m) for m in messages], max_tokens=4, temperature=0.0
        )
        return local[0].complete_blocking(req)

    def _redact(self, request: ChatRequest) -> ChatRequest | None:
        return self.signals.privacy.redact(request)

    def _scan_text(self, text: str) -> list[Finding]:
        return self.signals.privacy.scan_text(text)

    def redact_text(self, text: str) -> str:
        """``text`` with every finding replaced by ``[KIND]`` (what the ledger may store)."""
        return self.signals.privacy.redact_text(text)

    def _decide(
        self,
        request: ChatRequest,
        cond: Conditions,
        held: list[Plan],
        signals: Signals | None = None,
    ) -> Plan:
        """The plan for ``request`` (on ``signals`` when already read); when the policy
        refuses it, ``held`` gets a plan without candidates that keeps the privacy level and
        findings for the record."""
        if signals is None:
            signals = self.signals.read(request)
        cond = self._with_energy(cond)
        try:
            return self.policy.plan(request, signals, cond)
        except TierlmError:
            held.append(self.policy.refused(request, signals, cond))
            raise

    # -- answering --------------------------------------------------------------------------
    async def achat(
        self, request: ChatRequest, conditions: Conditions | None = None
    ) -> ChatResponse:
        """Plan, execute, record. Every request is recorded, answered or not."""
        resp, _ = await self.achat_planned(request, conditions)
        return resp

    async def achat_planned(
        self,
        request: ChatRequest,
        conditions: Conditions | None = None,
        *,
        signals: Signals | None = None,
        carrier: Mapping[str, str] | None = None,
    ) -> tuple[ChatResponse, Plan]:
        """:meth:`achat`, also returning the plan it followed (the gateway reports it);
        ``signals`` when the caller has read them (:meth:`asignals`); ``carrier``: the
        HTTP request's headers, when it came through the gateway (its trace context)."""
        trace = self._trace(request, carrier)
        with telemetry.active(trace):
            return await self._achat(request, conditions or Conditions(), signals, trace)

    async def _achat(
        self,
        request: ChatRequest,
        cond: Conditions,
        signals: Signals | None,
        trace: RequestTrace | None,
    ) -> tuple[ChatResponse, Plan]:
        attempts: list[AttemptRecord] = []
        plan: Plan | None = None
        held: list[Plan] = []
        t0 = time.perf_counter()
        privacy = _PrivacyOf(self, request, cond, signals)
        try:
            early = await self.layer0.early(request, privacy, cond.api_key)
            if early.plan is not None:
                plan = early.plan
                resp = await self.layer0.answer(early, request)
            else:
                await self.accounting.apply_budget(request, cond)
                signals = privacy.signals() or await self.asignals(request)
                plan = self._decide(request, cond, held, signals)
                early.annotate(plan)
                resp = await self.cascade.complete(request, plan, attempts)
                await self.layer0.remember(early, request, plan, resp)
        except TierlmError as e:
            plan = plan or (held[0] if held else None)
            ms = _ms(t0)
            self.accounting.record(request, plan, attempts, error=e, latency_ms=ms, trace=trace)
            raise
        self.accounting.record(
            request, plan, attempts, response=resp, latency_ms=_ms(t0), trace=trace
        )
        await self.accounting.committed()
        return resp, plan

    def _trace(
        self, request: ChatRequest, carrier: Mapping[str, str] | None
    ) -> RequestTrace | None:
        return self.tracing.request(request, carrier) if self.tracing is not None else None

    def astream(
        self,
        request: ChatRequest,
        conditions: Conditions | None = None,
        *,
        signals: Signals | None = None,
        carrier: Mapping[str, str] | None = None,
    ) -> RoutedStream:
        """Plan now (on ``signals`` when the caller has read them: :meth:`asignals`); stream
        on iteration. The record is written (and the trace ended) when the stream ends. The
        answer cache is read in this process's memory only (a shared store cannot be waited on
        here): :meth:`aopen_stream` reads all of it."""
        cond, t0 = conditions or Conditions(), time.perf_counter()
        trace = self._trace(request, carrier)
        privacy = _PrivacyOf(self, request, cond, signals)
        return self._stream(request, cond, privacy, t0, trace, None)

    async def aopen_stream(
        self,
        request: ChatRequest,
        conditions: Conditions | None = None,
        *,
        signals: Signals | None = None,
        carrier: Mapping[str, str] | None = None,
    ) -> RoutedStream:
        """As :meth:`astream`, with the whole answer cache read first (a shared store
        awaited)."""
        cond, t0 = conditions or Conditions(), time.perf_counter()
        trace = self._trace(request, carrier)
        privacy = _PrivacyOf(self, request, cond, signals)
        try:
            early = await self.layer0.early(request, privacy, cond.api_key)
        except TierlmError as e:
            self.accounting.record(request, None, [], error=e, latency_ms=_ms(t0), trace=trace)
            raise
        return self._stream(request, cond, privacy, t0, trace, early)

    def _stream(
        self,
        request: ChatRequest,
        cond: Conditions,
        privacy: _PrivacyOf,
        t0: float,
        trace: RequestTrace | None,
        early: Early | None,
    ) -> RoutedStream:
        held: list[Plan] = []
        try:
            if early is None:
                early = self.layer0.early_local(request, privacy, cond.api_key)
            if early.plan is None:
                self.accounting.local_only(request, cond)
                plan = self._decide(request, cond, held, privacy.signals())
                early.annotate(plan)
        except TierlmError as e:
            refused = held[0] if held else None
            self.accounting.record(request, refused, [], error=e, latency_ms=_ms(t0), trace=trace)
            raise
        if early.plan is not None:
            rs = self.layer0.stream(early, request)
        else:
            rs = self.cascade.stream(request, plan)
            rs._events = self.layer0.keeping(early, request, rs, aiter(rs))
        rs._events = self._recorded(request, rs, aiter(rs), t0, trace)
        return rs

    async def _recorded(
        self,
        request: ChatRequest,
        rs: RoutedStream,
        events: AsyncIterator[StreamEvent],
        t0: float,
        trace: RequestTrace | None,
    ) -> AsyncIterator[StreamEvent]:
        error: TierlmError | None = None
        keep = self.accounting.store_prompts
        parts: list[str] = []
        try:
            while True:
                with telemetry.active(trace):  # each piece's work is part of the request
                    ev = await anext(events, None)
                if ev is None:
                    break
                if keep and ev.text:
                    parts.append(ev.text)
                yield ev
        except TierlmError as e:
            error = e
            raise
        finally:
            done = rs.finish_reason is not None
            self.accounting.record(
                request,
                rs.plan,
                rs.attempts,
                streamed=(rs.tier, rs.backend, rs.model, rs.usage),
                error=error,
                outcome=None if done or error else "cancelled",
                completion="".join(parts) if keep else None,
                latency_ms=_ms(t0),
                ttft_ms=rs.ttft_ms,
                trace=trace,
            )
        await self.accounting.committed()  # the stream's end goes out after its record

    def chat(
        self,
        prompt: str | ChatRequest | list[dict[str, Any]],
        **kwargs: Any,
    ) -> ChatResponse:
        """Sync: answer a prompt, a message list or a :class:`ChatRequest`."""
        return self._run(self.achat(_as_request(prompt, **kwargs)))

    def stream(
        self,
        prompt: str | ChatRequest | list[dict[str, Any]],
        **kwargs: Any,
    ) -> Iterator[StreamEvent]:
        """Sync: yield the answer's pieces as they come."""
        rs = self.astream(_as_request(prompt, stream=True, **kwargs))
        it = aiter(rs)
        try:
            while True:
                try:
                    yield self._run(anext(it))
                except StopAsyncIteration:
                    return
        finally:
            self._run(rs.aclose())

    # -- reloading -------------------------------------------------------------------------
    def successor(self, settings: Settings) -> Router:
        """A Router for ``settings`` (a reloaded configuration) that shares what did not
        change: each backend whose configuration is equal (a loaded model stays loaded), the
        ledger when ``ledger.url`` is the same, the tracing when ``telemetry`` is, and the
        signal readers and scan workers when ``routing`` is the same (unless a local model
        rates complexity). Close this one with
        ``aclose(keep=[successor])`` once its requests have finished."""
        from tierlm.backends import create_backend

        before = {b.name: b for b in self.settings.backends}
        backends = {
            b.name: self.backends[b.name]
            if before.get(b.name) == b
            else create_backend(b, settings)
            for b in settings.backends
        }
        ledger = (
            self.accounting._ledger if settings.ledger.url == self.settings.ledger.url else None
        )
        same = settings.telemetry == self.settings.telemetry
        new = Router(
            settings, backends=backends, ledger=ledger, tracing=self.tracing if same else None
        )
        if (
            settings.routing == self.settings.routing
            and settings.routing.complexity_method != "llm"
        ):
            new._signals, new._scan_pool = self._signals, self._scan_pool
        return new

    async def aclose(self, *, keep: Iterable[Router] = ()) -> None:
        """Release backends, scan workers, the ledger and tracing, except what a Router in ``keep``
        (successors still serving: :meth:`successor`) shares."""
        others = list(keep)
        shared = {id(b) for r in others for b in r.backends.values()}
        for b in self.backends.values():
            if id(b) not in shared:
                await b.aclose()
        pool = self._scan_pool
        if pool is not None and all(r._scan_pool is not pool for r in others):
            await anyio.to_thread.run_sync(pool.close)
        await self.layer0.aclose()  # each Router has its own (rules and answer cache)
        if self.energy is not None:  # and its own energy monitor
            await anyio.to_thread.run_sync(self.energy.close)
        if self._embeddings is not None:
            await self._embeddings.aclose()
        ledger = self.accounting._ledger
        if ledger is None or all(r.accounting._ledger is not ledger for r in others):
            self.accounting.close()
        tracing = self.tracing
        if tracing is not None and all(r.tracing is not tracing for r in others):
            await anyio.to_thread.run_sync(tracing.shutdown)  # flushes queued spans

    def close(self) -> None:
        self._run(self.aclose())
        self._sync.stop()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, aw: Awaitable[T]) -> T:
        return self._sync.run(aw)


class _PrivacyOf:
    """A request's effective privacy and whether it is sensitive, for layer 0: from the
    signals when the caller has read them, else scanned once on first use (and the signals
    then reuse that scan)."""

    def __init__(
        self, router: Router, request: ChatRequest, cond: Conditions, given: Signals | None = None
    ) -> None:
        self.router, self.request, self.cond, self.given = router, request, cond, given
        self.findings: list[Finding] | None = given.findings if given is not None else None

    def __call__(self) -> tuple[Privacy, bool]:
        if self.findings is None:
            self.findings = self.router.signals.privacy.scan(self.request)
        scanned = Signals(0.0, self.findings)
        level = self.router.policy.privacy(self.request, scanned, self.cond, [])
        return level, bool(self.findings)

    def signals(self) -> Signals | None:
        """The signals given, or read on the scan already made; ``None`` if neither."""
        if self.given is not None or self.findings is None:
            return self.given
        from tierlm.signals.task import detect_task

        reader = self.router.signals
        task = detect_task(self.request, long_context_tokens=reader.long_context_tokens)
        return reader.read(self.request, (self.findings, task))


def _as_request(prompt: str | ChatRequest | list[dict[str, Any]], **kwargs: Any) -> ChatRequest:
    if isinstance(prompt, ChatRequest):
        return prompt.model_copy(update=kwargs) if kwargs else prompt
    if isinstance(prompt, str):
        return ChatRequest.from_prompt(prompt, **kwargs)
    return ChatRequest(messages=[Message.model_validate(m) for m in prompt], **kwargs)


def _text_size(request: ChatRequest) -> int:
    """About how much text the signals read: messages, tool-call arguments and tools."""
    size = 0
    for m in request.messages:
        size += len(m.content) if isinstance(m.content, str) else len(m.text)
        for call in m.tool_calls or ():
            size += len(str(call.function.get("arguments") or ""))
    return size + (len(str(request.tools)) if request.tools else 0)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _measured(backend: Backend) -> float | None:
    """A local backend's measured joules per token (:mod:`tierlm.signals.rapl`)."""
    meter = getattr(backend, "meter", None)
    return meter.joules_per_token if isinstance(meter, JoulesMeter) else None
