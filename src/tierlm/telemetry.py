"""OpenTelemetry traces of routed requests (the optional extra ``tierlm[otel]``).

With ``telemetry.enabled`` (:class:`~tierlm.config.settings.TelemetryConfig`), the Router
owns a :class:`Tracing`: its own ``TracerProvider`` (never the global one), a
``BatchSpanProcessor`` and the configured exporter. Nothing is sent at import or start-up;
spans go out in batches, only to the configured exporter, and :meth:`Tracing.shutdown`
(the Router's ``aclose``) flushes them. With tracing off this module is imported but
``opentelemetry`` never is, and the request path only reads one context variable.

**Spans** (GenAI semantic conventions, ``gen_ai.*``, plus ``tierlm.*``):

- one root span per request, ``chat {model}`` (``model``: what the client asked for,
  ``auto``, a tier or a backend), kind ``SERVER`` through the gateway (a child of the
  caller's W3C ``traceparent`` when one came with the request) and ``INTERNAL`` from the
  library (a child of the caller's current span). When the request ends it gets the route:
  ``tierlm.tier``/``backend``/``boundary`` (who answered), ``tierlm.route.*`` (the plan's
  first choice, candidates and reasons), ``tierlm.privacy``, ``tierlm.sensitive``,
  ``tierlm.findings`` (kinds only), ``tierlm.cache``, ``tierlm.outcome``, token usage and
  ``tierlm.cost_usd`` (every attempt's), and events for the candidates skipped unsent;
- one child span per attempt on a backend (``CLIENT``, ``chat {backend model}``): the
  request's parameters, ``gen_ai.provider.name`` (and the older ``gen_ai.system``),
  ``server.address``/``port``, usage, ``gen_ai.response.model``, ``error.type`` on failure,
  and ``tierlm.attempt`` (1 = the first) and ``tierlm.attempt.outcome``: ``ok``,
  ``retried`` (it failed and the same backend was asked again), ``fallback`` (it failed and
  another backend was asked), ``rescued`` (a stream cut after it
  generated text, continued by another attempt), ``escalated`` (the cascade's judge or
  consensus sent the request on), ``failed`` (nothing followed) or ``cancelled``. Retries,
  fallbacks, escalations, consensus members and stream continuations are attempts each.
  An attempt span ends when its attempt does (a stream's: when the stream ends); its
  outcome is written when the request ends, since a later step can change it.

**Privacy**: no prompt, completion, request body, API key or error message (which may echo
content) is ever put on a span: errors appear as their type and code. The GenAI
conventions' opt-in content capture is not implemented.

**Propagation**: each attempt on a backend of boundary ``process``, ``host`` or ``site``
gets the attempt span's ``traceparent`` header (``propagate: true``), so a model server
with its own tracing joins the trace. An external backend never gets one: it would hand a
third party a correlation id for this deployment's requests, and its traces are not ours.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tierlm.errors import ConfigError, MissingDependency
from tierlm.types import Boundary

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

    from tierlm.config.backends import BackendConfig
    from tierlm.config.settings import TelemetryConfig
    from tierlm.errors import TierlmError
    from tierlm.ledger.records import AttemptRecord
    from tierlm.types import Candidate, ChatRequest, Plan, Usage

    # Who answered: tier, backend, model, usage (what the ledger records).
    Answer = tuple[str | None, str | None, str | None, Usage | None]

# The request being answered (set by the Router while its work runs) and the headers for
# the attempt in flight (set by the executor around the call; read by the HTTP adapters).
_REQUEST: ContextVar[RequestTrace | None] = ContextVar("tierlm_trace", default=None)
_OUTGOING: ContextVar[dict[str, str] | None] = ContextVar("tierlm_trace_headers", default=None)
_NOTHING: AbstractContextManager[None] = nullcontext()
MAX_REASONS = 10  # of the plan's reasons on a span, each cut to REASON_CHARS
REASON_CHARS = 200
# gen_ai.provider.name of the providers whose well-known name differs from tierlm's.
_PROVIDER_NAMES = {"gemini": "gcp.gemini", "mistral": "mistral_ai"}
_KIND_PROVIDERS = {"llama_cpp": "llama.cpp"}


def open_tracing(cfg: TelemetryConfig) -> Tracing | None:
    """The deployment's tracing, or ``None`` when it is off (then nothing is imported)."""
    if not cfg.enabled:
        return None
    return Tracing(cfg)


def current() -> RequestTrace | None:
    """The trace of the request whose work is running here, if it is traced."""
    return _REQUEST.get()


def active(trace: RequestTrace | None) -> AbstractContextManager[None]:
    """Run a block as part of ``trace``'s request (attempts started in it are its children)."""
    return _NOTHING if trace is None else _set(_REQUEST, trace)


def sending(span: AttemptSpan | None) -> AbstractContextManager[None]:
    """Around one attempt's call: its ``traceparent`` for the adapter to send, if any."""
    return _NOTHING if span is None or not span.headers else _set(_OUTGOING, span.headers)


def trace_headers() -> dict[str, str] | None:
    """The headers an HTTP adapter adds to the request it is sending (``None``: none)."""
    return _OUTGOING.get()


@contextmanager
def _set(var: ContextVar[Any], value: Any) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


class Tracing:
    """A tracer provider of its own, its batch processor and exporter."""

    def __init__(self, cfg: TelemetryConfig, exporter: SpanExporter | None = None) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as e:
            raise MissingDependency("telemetry (OpenTelemetry traces)", "otel") from e
        from tierlm import __version__

        self.cfg = cfg
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self.provider: TracerProvider = TracerProvider(
            resource=_resource(cfg, __version__), **_sampler(cfg)
        )
        out = exporter if exporter is not None else _exporter(cfg)
        if out is not None:
            self.provider.add_span_processor(BatchSpanProcessor(out))
        self.tracer = self.provider.get_tracer("tierlm", __version__)

    def request(
        self,
        request: ChatRequest,
        carrier: Mapping[str, str] | None = None,
        *,
        operation: str = "chat",
        model: str | None = None,
    ) -> RequestTrace:
        """Start the root span of ``request`` (``operation``: ``chat`` or ``embeddings``;
        ``model``: what was asked for, default ``request.model``): a SERVER span under
        ``carrier``'s ``traceparent`` (the gateway's request headers), else an INTERNAL one
        under the caller's current span."""
        kind = self._trace.SpanKind
        parent = self._propagator.extract(carrier) if carrier is not None else None
        model = model or request.model
        span = self.tracer.start_span(
            f"{operation} {model}",
            context=parent,
            kind=kind.SERVER if carrier is not None else kind.INTERNAL,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": model,
                "tierlm.request_id": request.request_id,
                "tierlm.stream": request.stream,
                **({"tierlm.api_key": request.api_key_id} if request.api_key_id else {}),
            },
        )
        return RequestTrace(self, span)

    def flush(self) -> None:
        """Export what is queued now (tests and benches; shutdown does it too)."""
        self.provider.force_flush()

    def shutdown(self) -> None:
        """Flush what is queued and stop the exporter (blocks up to its timeout)."""
        self.provider.shutdown()


def _resource(cfg: TelemetryConfig, version: str) -> Any:
    from opentelemetry.sdk.resources import Resource

    base = Resource.create({"service.version": version})  # OTEL_RESOURCE_ATTRIBUTES too
    named = str(base.attributes.get("service.name", ""))
    if cfg.service_name:
        return base.merge(Resource({"service.name": cfg.service_name}))
    if not named or named.startswith("unknown_service"):  # OTEL_SERVICE_NAME not set
        return base.merge(Resource({"service.name": "tierlm"}))
    return base


def _sampler(cfg: TelemetryConfig) -> dict[str, Any]:
    """``sampler=`` for the provider; none given: the SDK reads ``OTEL_TRACES_SAMPLER``."""
    if cfg.sample_ratio is None:
        return {}
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    return {"sampler": ParentBased(TraceIdRatioBased(cfg.sample_ratio))}


def _exporter(cfg: TelemetryConfig) -> SpanExporter | None:
    if cfg.exporter == "none":
        return None
    if cfg.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    env = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    if cfg.endpoint is None and not any(os.environ.get(v) for v in env):
        raise ConfigError(
            "the otlp exporter needs an endpoint: set telemetry.endpoint (e.g. "
            "http://collector:4318/v1/traces) or OTEL_EXPORTER_OTLP_ENDPOINT",
            key="telemetry.endpoint",
        )
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as e:
        raise MissingDependency("the otlp trace exporter", "otel") from e
    return OTLPSpanExporter(endpoint=cfg.endpoint)


class AttemptSpan:
    """One attempt's span: started by the executor, settled when the attempt ends, ended
    (with its outcome) when the request ends."""

    def __init__(self, span: Span, backend: str, headers: dict[str, str] | None) -> None:
        self.span, self.backend, self.headers = span, backend, headers
        self.start_ns = time.time_ns()
        self.end_ns: int | None = None
        self.record: AttemptRecord | None = None
        self.cost = 0.0

    def settled(
        self,
        record: AttemptRecord,
        usage: Usage | None,
        config: BackendConfig,
        model: str | None = None,
    ) -> None:
        """The attempt ended as ``record`` says, billed ``usage`` (at ``config``'s price),
        answered by ``model``."""
        self.end_ns, self.record = time.time_ns(), record
        s = self.span
        if not s.is_recording():  # sampled out, or the request already ended
            return
        out: dict[str, Any] = {}
        if usage is not None:
            from tierlm.pricing import cost_usd

            self.cost = cost_usd(config, usage)
            out["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            out["gen_ai.usage.output_tokens"] = usage.completion_tokens
            out["tierlm.cost_usd"] = self.cost
        if model:
            out["gen_ai.response.model"] = model
        if record.ttft_ms is not None:
            out["tierlm.ttft_ms"] = round(record.ttft_ms, 3)
        if record.outcome != "ok" and record.error_kind is not None:
            out["error.type"], out["tierlm.error.code"] = record.error_kind, record.outcome
            _failed(s, record.outcome)
        s.set_attributes(out)


class RequestTrace:
    """One request's root span and its attempts."""

    def __init__(self, tracing: Tracing, span: Span) -> None:
        self.tracing, self.span = tracing, span
        self.attempts: list[AttemptSpan] = []
        self.ended = False

    def attempt(
        self,
        cand: Candidate,
        config: BackendConfig,
        request: ChatRequest,
        *,
        operation: str = "chat",
        url: str | None = None,
    ) -> AttemptSpan:
        """Start the span of an attempt of ``request`` on the backend of ``config`` (at
        ``url`` when it is not the configured one: a local model's worker)."""
        t = self.tracing
        where = max(cand.boundary, config.where)
        provider = _provider(config)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,
            "gen_ai.request.model": config.model,
            "tierlm.backend": cand.backend,
            "tierlm.tier": cand.tier,
            "tierlm.boundary": where.label,
            "tierlm.attempt": len(self.attempts) + 1,
            "tierlm.stream": request.stream,
        }
        for name, value in (
            ("max_tokens", request.max_tokens),
            ("temperature", request.temperature),
            ("top_p", request.top_p),
            ("top_k", request.top_k),
            ("seed", request.seed),
        ):
            if value is not None:
                attrs[f"gen_ai.request.{name}"] = value
        from tierlm.config.backends import HttpConfig

        configured = config.url if isinstance(config, HttpConfig) else None
        where_to = urlsplit(url or configured or "")
        if where_to.hostname:
            attrs["server.address"] = where_to.hostname
            attrs["server.port"] = where_to.port or (443 if where_to.scheme == "https" else 80)
        span = t.tracer.start_span(
            f"{operation} {config.model}",
            context=t._trace.set_span_in_context(self.span),
            kind=t._trace.SpanKind.CLIENT,
            attributes=attrs,
        )
        headers: dict[str, str] | None = None
        if t.cfg.propagate and where <= Boundary.SITE:
            headers = {}
            t._propagator.inject(headers, context=t._trace.set_span_in_context(span))
        a = AttemptSpan(span, cand.backend, headers or None)
        self.attempts.append(a)
        return a

    def finish(
        self,
        plan: Plan | None,
        attempts: list[AttemptRecord],
        answer: Answer | None,
        outcome: str,
        error: TierlmError | None = None,
    ) -> None:
        """End the attempts' spans with their outcomes, then the root span with the route:
        ``answer`` (tier, backend, model, usage) when one was given, ``outcome`` (``ok``,
        ``cancelled`` or the error's code), as the ledger records them."""
        if self.ended:
            return
        self.ended = True
        outcomes = [self._end_attempt(i) for i in range(len(self.attempts))]
        s = self.span
        if s.is_recording():
            s.set_attributes(
                {
                    **_route(plan, answer),
                    "tierlm.outcome": outcome,
                    "tierlm.attempts": len(self.attempts),
                    "tierlm.fallback": any(o in ("fallback", "rescued") for o in outcomes),
                    "tierlm.escalated": "escalated" in outcomes,
                    "tierlm.cost_usd": sum(a.cost for a in self.attempts),
                }
            )
            for a in attempts:
                if a.error_kind == "Skipped":
                    s.add_event(
                        "tierlm.skipped", {"tierlm.backend": a.backend, "tierlm.reason": a.outcome}
                    )
            if error is not None:
                s.set_attribute("error.type", type(error).__name__)
                _failed(s, error.code)
        s.end()

    def _end_attempt(self, i: int) -> str:
        a = self.attempts[i]
        rec, end = a.record, a.end_ns
        later = [b for b in self.attempts[i + 1 :] if end is not None and b.start_ns >= end]
        if rec is not None and rec.judge_decision == "escalate":
            outcome = "escalated"
        elif rec is None or rec.outcome == "cancelled":
            outcome = "cancelled"
        elif rec.outcome == "ok":
            outcome = "ok"
        elif later:
            again = later[0].backend == a.backend
            outcome = "rescued" if rec.tokens > 0 else ("retried" if again else "fallback")
        else:
            outcome = "failed"
        if a.span.is_recording():
            a.span.set_attribute("tierlm.attempt.outcome", outcome)
            if rec is not None and rec.judge_decision is not None:
                a.span.set_attribute("tierlm.judge.decision", rec.judge_decision)
                a.span.set_attribute("tierlm.judge.score", rec.judge_score or 0.0)
        a.span.end(end_time=end)
        return outcome


def _route(plan: Plan | None, answer: Answer | None) -> dict[str, Any]:
    """The root span's attributes for the decision and who answered."""
    out: dict[str, Any] = {}
    tier, backend, model, usage = answer or (None, None, None, None)
    for key, value in (("tierlm.tier", tier), ("tierlm.backend", backend)):
        if value:
            out[key] = value
    if model:
        out["gen_ai.response.model"] = model
    if usage is not None:
        out["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        out["gen_ai.usage.output_tokens"] = usage.completion_tokens
    if plan is None:
        return out
    cands = plan.candidates
    boundary = next((c.boundary.label for c in cands if c.backend == backend), None)
    out.update(
        {
            "tierlm.privacy": plan.privacy.value,
            "tierlm.sensitive": plan.sensitive,
            "tierlm.findings": sorted({f.kind for f in plan.findings}),
            "tierlm.complexity": round(plan.complexity, 4),
            "tierlm.cache": plan.cache_status,
            "tierlm.route.candidates": [c.backend for c in cands],
            "tierlm.route.reasons": [r[:REASON_CHARS] for r in plan.reasons[:MAX_REASONS]],
        }
    )
    if cands:
        out["tierlm.route.tier"], out["tierlm.route.backend"] = cands[0].tier, cands[0].backend
    if boundary:
        out["tierlm.boundary"] = boundary
    if plan.layer0.get("rule"):
        out["tierlm.rule"] = str(plan.layer0["rule"])
    return out


def _provider(cfg: BackendConfig) -> str:
    """``gen_ai.provider.name``: the provider preset's (well-known where one exists), else
    the backend kind's."""
    name = cfg.provider_name()
    if name:
        return _PROVIDER_NAMES.get(name, name)
    return _KIND_PROVIDERS.get(cfg.kind, cfg.kind)


def _failed(span: Span, code: str) -> None:
    """Mark ``span`` failed, described by the error's code only (never its message)."""
    from opentelemetry.trace import StatusCode

    span.set_status(StatusCode.ERROR, code)
