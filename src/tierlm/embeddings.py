"""Routed embeddings: ``/v1/embeddings`` and Ollama's ``/api/embed`` behind one core.

**Who answers.** The in-process embedder (``embeddings.embedder``: the layer-0 cache's
WordLlama model, or the deterministic hashed one; :mod:`tierlm.layer0.embed`) by default,
named :data:`LOCAL`. Backends with ``embeddings: true`` (OpenAI-compatible upstreams that
serve ``/v1/embeddings``) answer when the request pins one (``model``: its name), pins a
tier that holds one, or, for ``model: auto``, when ``embeddings.prefer`` names one; the
in-process embedder stays the fallback of ``auto`` and of a tier.

**Privacy** (every rule from :mod:`tierlm.privacy`): every input is scanned; the level is
:func:`~tierlm.privacy.effective_level` of the inputs' findings, the key and the
``x-tierlm-privacy`` hint; a backend beyond :func:`~tierlm.privacy.ceiling` (the level's and
the key's boundary) or in a tier the key may not use is skipped. ``enhanced`` inputs do not
leave the site at all: redacting an input changes its vector, so a redacted embedding would
be silently wrong for retrieval; they are embedded on the site (in process) instead. A pin
that privacy, the key or the budget rules out is refused (403 / policy error), never
rerouted to somewhere the client did not ask for.

**Budget and ledger** (through :class:`~tierlm.accounting.Accounting`, like chat): a paid
attempt is reserved and settled on the upstream's reported tokens; each request is
recorded with its tokens and cost; an attempt sent upstream carries the digest of the
exact bytes sent. The record's prompt text (when ``store_prompts`` is on) is the inputs
joined by newlines, redacted like any prompt.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from tierlm import telemetry
from tierlm.backends.http_common import SessionHolder, fetch, normalise_base_url, resolve_api_key
from tierlm.backends.http_errors import (
    TRANSPORT_ERRORS,
    ErrorContext,
    error_from_response,
    error_from_transport,
)
from tierlm.config.backends import OpenAIConfig
from tierlm.errors import (
    BackendError,
    InvalidRequest,
    NoEligibleBackend,
    PermissionDenied,
    ProtocolError,
    TierlmError,
)
from tierlm.privacy import ceiling, effective_level, key_allows_tier
from tierlm.types import (
    Boundary,
    Candidate,
    ChatRequest,
    ChatResponse,
    Finding,
    Message,
    Plan,
    Privacy,
    Usage,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from tierlm.accounting import Accounting
    from tierlm.config.settings import ApiKeyConfig, Settings
    from tierlm.layer0.embed import Embedder
    from tierlm.ledger import AttemptRecord
    from tierlm.telemetry import AttemptSpan, RequestTrace, Tracing

LOCAL = "embedder"  # the in-process embedder's backend name (and a model a request may pin)
TIER = "embeddings"  # the tier recorded for the in-process embedder
INLINE_CHARS = 4096  # inputs with more text than this are embedded in a worker thread
INLINE_SCAN_CHARS = 32_768  # ... and scanned in a worker thread


@dataclass
class EmbedRequest:
    inputs: list[str]
    model: str = "auto"
    dimensions: int | None = None
    privacy: Privacy | None = None  # the client's hint
    api_key: ApiKeyConfig | None = None
    client_request_id: str | None = None
    chat: ChatRequest = field(init=False)  # what accounting and the ledger see

    def __post_init__(self) -> None:
        self.chat = ChatRequest(
            messages=[Message(role="user", content="\n".join(self.inputs))],
            max_tokens=1,  # an embedding generates nothing: the budget bound is its input
            api_key_id=self.api_key.name if self.api_key else None,
            client_request_id=self.client_request_id,
        )

    @property
    def request_id(self) -> str:
        return self.chat.request_id


@dataclass
class EmbedResult:
    vectors: list[list[float]]
    model: str
    backend: str
    tier: str
    boundary: Boundary
    prompt_tokens: int
    plan: Plan


class Embeddings:
    """Plans and answers embedding requests; one per Router."""

    def __init__(
        self,
        settings: Settings,
        accounting: Accounting,
        scan_text: Callable[[str], list[Finding]],
        embedder: Callable[[], Embedder],
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing
        self.cfg = settings.embeddings
        self.accounting = accounting
        self._scan_text = scan_text
        self._embedder = embedder
        self.backends = {
            b.name: b for b in settings.backends if isinstance(b, OpenAIConfig) and b.embeddings
        }
        self._tiers = {
            name: [t.name for t in settings.tiers if name in t.backends] for name in self.backends
        }
        self._sessions = {name: SessionHolder(b) for name, b in self.backends.items()}

    @property
    def local_model(self) -> str:
        return self.cfg.embedder

    def models(self) -> list[str]:
        """What ``model`` may name besides ``auto`` and the tiers."""
        return [LOCAL, self.cfg.embedder, *self.backends]

    # -- deciding ---------------------------------------------------------------------------
    def plan(self, req: EmbedRequest, *, local_only: bool = False) -> Plan:
        """The candidates for ``req``, most preferred first; refused (403 or a policy error)
        when nothing it asked for may answer it."""
        findings = [f for text in req.inputs for f in self._scan_text(text)]
        reasons: list[str] = []
        level = effective_level(
            self.settings.routing.default_privacy, req.api_key, req.privacy, findings, reasons
        )
        names, pinned = self._asked(req.model)
        chosen: list[Candidate] = []
        for name in names:
            why = self._why_not(name, level, req.api_key, local_only)
            if why is None:
                chosen.append(self._candidate(name))
            else:
                reasons.append(f"{name}: {why}")
        if not pinned or req.model in (LOCAL, self.cfg.embedder):
            chosen.append(Candidate(LOCAL, TIER, Boundary.PROCESS))
        plan = Plan(chosen, reasons, level, findings=findings, request_id=req.request_id)
        if not chosen:
            if req.api_key is not None and any("API key" in r for r in reasons):
                raise PermissionDenied(f"API key '{req.api_key.name}' may not use {req.model!r}")
            raise NoEligibleBackend("; ".join(reasons), request_id=req.request_id)
        return plan

    def _asked(self, model: str) -> tuple[list[str], bool]:
        """The embedding backends ``model`` asks for, and whether it pins (no fallback)."""
        if model in ("", "auto"):
            return ([self.cfg.prefer] if self.cfg.prefer else []), False
        if model in (LOCAL, self.cfg.embedder):
            return [], True
        if model in self.backends:
            return [model], True
        tiers = {t.name: t.backends for t in self.settings.tiers}
        if model in tiers:
            return [b for b in tiers[model] if b in self.backends], False
        raise InvalidRequest(
            f"model {model!r} cannot embed: use 'auto', '{LOCAL}', a tier or an embedding "
            f"backend ({', '.join(self.backends) or 'none configured'})"
        )

    def _why_not(
        self, name: str, level: Privacy, key: ApiKeyConfig | None, local_only: bool
    ) -> str | None:
        """Why backend ``name`` may not answer, or ``None`` when it may."""
        where = self.backends[name].where
        if level is Privacy.ENHANCED and where >= Boundary.EXTERNAL:
            return "privacy enhanced: a redacted input embeds differently, so it stays on the site"
        if key is not None and where > ceiling(Privacy.PUBLIC, key):
            return f"API key '{key.name}' may not reach the {where.label} boundary"
        tiers = self._tiers[name]
        if key is not None and tiers and not any(key_allows_tier(key, t) for t in tiers):
            return f"API key '{key.name}' may not use its tiers"
        if where > ceiling(level):
            return f"privacy {level.value}: may not reach the {where.label} boundary"
        if local_only and where >= Boundary.EXTERNAL:
            return "budget low: local only"
        return None

    def _candidate(self, name: str) -> Candidate:
        tiers = self._tiers[name]
        return Candidate(name, tiers[0] if tiers else TIER, self.backends[name].where)

    # -- answering --------------------------------------------------------------------------
    async def embed(
        self, req: EmbedRequest, carrier: Mapping[str, str] | None = None
    ) -> EmbedResult:
        """Plan, answer (falling back in order when an upstream fails), record and trace
        (``carrier``: the HTTP request's headers, through the gateway)."""
        trace = None
        if self.tracing is not None:
            op = "embeddings"
            trace = self.tracing.request(req.chat, carrier, operation=op, model=req.model)
        with telemetry.active(trace):
            return await self._embed(req, trace)

    async def _embed(self, req: EmbedRequest, trace: RequestTrace | None) -> EmbedResult:
        t0 = time.perf_counter()
        attempts: list[AttemptRecord] = []
        plan: Plan | None = None
        try:
            cond_local = await self._budget_low(req)
            if sum(map(len, req.inputs)) <= INLINE_SCAN_CHARS:
                plan = self.plan(req, local_only=cond_local)
            else:  # a long scan would stall the event loop
                plan = await anyio.to_thread.run_sync(lambda: self.plan(req, local_only=cond_local))
            result = await self._first_answer(req, plan, attempts)
        except TierlmError as e:
            ms = _ms(t0)
            self.accounting.record(req.chat, plan, attempts, error=e, latency_ms=ms, trace=trace)
            raise
        usage = Usage(prompt_tokens=result.prompt_tokens)
        resp = ChatResponse(
            model=result.model,
            message=Message(role="assistant", content=""),
            usage=usage,
            backend=result.backend,
            tier=result.tier,
        )
        ms = _ms(t0)
        self.accounting.record(req.chat, plan, attempts, response=resp, latency_ms=ms, trace=trace)
        await self.accounting.committed()
        return result

    async def _budget_low(self, req: EmbedRequest) -> bool:
        from tierlm.policy import Conditions

        cond = Conditions(api_key=req.api_key)
        await self.accounting.apply_budget(req.chat, cond)
        return cond.local_only

    async def _first_answer(
        self, req: EmbedRequest, plan: Plan, attempts: list[AttemptRecord]
    ) -> EmbedResult:
        last: BackendError | None = None
        for c in plan.candidates:
            started, ts = time.perf_counter(), time.time()
            if c.backend == LOCAL:
                vectors, tokens = await self._local(req)
                model: str = self.cfg.embedder
                sent, span = None, None
            else:
                span = self._span(c, req)
                try:
                    with telemetry.sending(span):
                        vectors, tokens, model, sent = await self._remote(req, c)
                except BackendError as e:
                    attempts.append(_attempt(c, e.code, type(e).__name__, started, ts))
                    if span is not None:
                        span.settled(attempts[-1], None, self.backends[c.backend])
                    last = e
                    continue
            rec = _attempt(c, "ok", None, started, ts)
            rec.tokens, rec.sent_digest = tokens, sent
            rec.cost_usd = self.accounting.cost(c.backend, Usage(prompt_tokens=tokens))
            attempts.append(rec)
            if span is not None:
                span.settled(rec, Usage(prompt_tokens=tokens), self.backends[c.backend], model)
            return EmbedResult(vectors, model, c.backend, c.tier, c.boundary, tokens, plan)
        assert last is not None  # the in-process embedder, when planned, always answers
        raise last

    def _span(self, c: Candidate, req: EmbedRequest) -> AttemptSpan | None:
        """The span of an attempt on an upstream, when the request is traced."""
        trace = telemetry.current()
        if trace is None:
            return None
        return trace.attempt(c, self.backends[c.backend], req.chat, operation="embeddings")

    async def _local(self, req: EmbedRequest) -> tuple[list[list[float]], int]:
        embedder = self._embedder()
        if req.dimensions is not None and req.dimensions != embedder.dim:
            raise InvalidRequest(
                f"dimensions: the in-process embedder has {embedder.dim} dimensions, "
                f"not {req.dimensions}"
            )

        def run() -> list[list[float]]:
            return [embedder.embed(t).tolist() for t in req.inputs]

        size = sum(map(len, req.inputs))
        vectors = run() if size <= INLINE_CHARS else await anyio.to_thread.run_sync(run)
        from tierlm.signals.task import estimate_tokens

        return vectors, sum(estimate_tokens(t) for t in req.inputs)

    async def _remote(
        self, req: EmbedRequest, c: Candidate
    ) -> tuple[list[list[float]], int, str, str]:
        """One upstream attempt: (vectors, tokens, model, digest of the bytes sent)."""
        from tierlm.ledger.audit import digest

        cfg = self.backends[c.backend]
        body: dict[str, Any] = {"model": cfg.model, "input": req.inputs, "encoding_format": "float"}
        if req.dimensions is not None:
            body["dimensions"] = req.dimensions
        raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
        ctx = ErrorContext(cfg.name, req.request_id)
        token = await self.accounting.before_attempt(req.chat, c)
        usage: Usage | None = None
        try:
            session = self._sessions[cfg.name].current()
            if session is None:
                session = await self._sessions[cfg.name].open(_headers(cfg))
            url = normalise_base_url(cfg.url or "", default_path="/v1") + "/embeddings"
            try:
                status, headers, answer = await fetch(session, "POST", url, data=raw)
            except TRANSPORT_ERRORS as e:
                raise error_from_transport(e, ctx) from e
            if status >= 400:
                raise error_from_response(status, headers, answer[:65536], ctx)
            vectors, tokens, model = _parse_answer(answer, len(req.inputs), ctx)
            usage = Usage(prompt_tokens=tokens)
        finally:
            await self.accounting.after_attempt(token, usage, usage is not None)
        return vectors, tokens, model or cfg.model, digest(raw)

    async def aclose(self) -> None:
        for s in self._sessions.values():
            await s.aclose()


def _headers(cfg: OpenAIConfig) -> dict[str, str]:
    from tierlm.config.providers import PROVIDERS

    provider = PROVIDERS.get(cfg.provider) if cfg.provider else None
    key = resolve_api_key(cfg, provider.key_env if provider else None)
    headers = {"content-type": "application/json", "accept": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return headers


def _parse_answer(
    raw: bytes, count: int, ctx: ErrorContext
) -> tuple[list[list[float]], int, str | None]:
    """An upstream's ``/v1/embeddings`` answer: its vectors in input order, tokens, model."""
    try:
        body = json.loads(raw)
        items = sorted(body["data"], key=lambda d: int(d.get("index", 0)))
        vectors = [[float(x) for x in d["embedding"]] for d in items]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ProtocolError(f"malformed embeddings answer: {e}", **ctx.kw()) from None
    if len(vectors) != count or not all(np.isfinite(v).all() for v in vectors):
        raise ProtocolError(
            f"embeddings answer has {len(vectors)} vectors for {count} inputs", **ctx.kw()
        )
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    tokens = usage.get("prompt_tokens", usage.get("total_tokens", 0))
    model = body.get("model")
    return (
        vectors,
        int(tokens) if isinstance(tokens, int) else 0,
        (model if isinstance(model, str) else None),
    )


def _attempt(
    c: Candidate, outcome: str, kind: str | None, started: float, ts: float
) -> AttemptRecord:
    from tierlm.ledger import AttemptRecord

    return AttemptRecord(
        backend=c.backend,
        tier=c.tier,
        boundary=c.boundary.label,
        outcome=outcome,
        error_kind=kind,
        latency_ms=_ms(started),
        ts=ts,
    )


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
