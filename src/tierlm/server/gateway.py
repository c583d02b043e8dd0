"""What every endpoint of the gateway shares: the router, keys, metrics and health, plus the
plumbing of the HTTP edge (reading a bounded JSON body, errors as JSON, routing headers) and
the one flow of a chat request (:meth:`WireFormat.handle`) that each wire format fills in
(:class:`WireFormat`: parse the body, render the whole answer, a stream and an error). What a
stream needs once committed (its end, in-band errors) is :mod:`tierlm.server.streaming`.

No routing logic lives here: the Router plans, executes and records each request; this
module checks what a key may pin, hands the Router the last known health, and says
afterwards who answered and why.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from tierlm.errors import (
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    PermissionDenied,
    ProtocolError,
    TierlmError,
)
from tierlm.policy import Conditions
from tierlm.privacy import key_reaches
from tierlm.server import oplog
from tierlm.server.auth import KeyRing
from tierlm.server.health import HealthCache
from tierlm.server.metrics import Metrics
from tierlm.server.ratelimit import open_limits
from tierlm.server.streaming import GuardedStream, StreamEnd
from tierlm.types import ChatRequest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    from tierlm.config.settings import ApiKeyConfig
    from tierlm.execute.streams import RoutedStream
    from tierlm.router import Router
    from tierlm.types import ChatResponse, Plan, StreamEvent, Usage

# x-tierlm-<name> request headers that become routing hints (header name -> hint field).
HINT_HEADERS = {
    "x-tierlm-privacy": "privacy",
    "x-tierlm-quality": "quality",
    "x-tierlm-urgency": "urgency",
    "x-tierlm-optimize": "optimize",
    "x-tierlm-tier-floor": "tier_floor",
    "x-tierlm-tier-ceiling": "tier_ceiling",
    "x-tierlm-cost-sensitivity": "cost_sensitivity",
    "x-tierlm-cache": "cache",  # "bypass": skip the answer cache
}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# pydantic's names of union members and validators in an error's location (not fields).
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list|dict|literal\[.*|function-.*|.*\[.*\])$")
# ChatRequest field -> the name the client used for it (for error messages).
_PARAM_NAMES = {"hints": "tierlm", "include_usage": "stream_options.include_usage"}


class FieldError(InvalidRequest):
    """A bad request field; ``param`` names it in the OpenAI error body."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_response(
    obj: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(dumps(obj), status_code=status, headers=headers, media_type="application/json")


def error_headers(e: TierlmError, headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus the error's own (rate-limit headers) and ``retry-after`` (whole
    seconds, rounded up) when it says when to retry."""
    hdrs = {**(headers or {}), **getattr(e, "headers", {})}
    retry_after = getattr(e, "retry_after", None)
    if isinstance(retry_after, int | float):
        hdrs["retry-after"] = str(max(int(retry_after + 0.999), 0))
    return hdrs


def error_response(e: TierlmError, headers: dict[str, str] | None = None) -> Response:
    """An OpenAI-shaped error body with the error's status."""
    body = e.to_openai()
    param = getattr(e, "param", None)
    if param:
        body["error"]["param"] = param
    return json_response(body, e.status, error_headers(e, headers))


def validation_error(e: ValidationError) -> FieldError:
    """The first problem of a pydantic error, naming the field as the client named it."""
    err = e.errors(include_url=False)[0]
    loc = [p for p in err.get("loc") or () if not (isinstance(p, str) and _TYPE_TAG.match(p))]
    if loc and isinstance(loc[0], str):
        loc[0] = _PARAM_NAMES.get(loc[0], loc[0])
    param = ""
    for part in loc:
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    msg = str(err.get("msg", "invalid value"))
    return FieldError(f"{param}: {msg}" if param else msg, param or None)


MAX_JSON_DEPTH = 64  # nesting levels of a request body (objects and arrays)
INLINE_BYTES = 64 * 1024  # bodies up to this size are parsed on the event loop, larger in a thread
# A JSON string escape that may encode a lone UTF-16 surrogate (checked properly when seen).
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw request body, read incrementally; 413 as soon as it passes ``limit`` bytes
    (a declared ``content-length`` over the limit is refused before reading anything)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
    if not body:
        raise InvalidRequest("request body is empty: send a JSON object")
    return bytes(body)


def parse_json(body: bytes) -> Any:
    """``body`` as JSON: 400 when it is not JSON, nests deeper than :data:`MAX_JSON_DEPTH`,
    or holds a string that is not valid Unicode (a lone surrogate such as ``\\ud800``)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        reason = "it nests too deeply" if isinstance(e, RecursionError) else str(e)
        raise InvalidRequest(f"request body is not valid JSON: {reason}") from None
    _check_json(data, surrogates=_SURROGATE_ESCAPE.search(body) is not None)
    return data


def _check_json(data: Any, *, surrogates: bool) -> None:
    """Depth (iteratively, so no recursion limit is reached) and, when the raw body had an
    escape that may encode one, lone surrogates in keys and strings."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise FieldError(
                    f"request body nests deeper than {MAX_JSON_DEPTH} levels", path or None
                )
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                sub = f"{path}[{k}]" if isinstance(k, int) else (f"{path}.{k}" if path else k)
                if surrogates and isinstance(k, str):
                    _check_text(k, sub)
                if isinstance(v, dict | list) or (surrogates and isinstance(v, str)):
                    stack.append((v, depth + 1, sub))
        elif isinstance(node, str):
            _check_text(node, path)


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FieldError(
            f"{path or 'request body'}: not valid Unicode (a lone surrogate escape such as "
            "\\ud800); send UTF-8 text",
            path or None,
        ) from None


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON (:func:`read_body`, then :func:`parse_json`); a large body
    is parsed in a worker thread, so the event loop never stalls on it."""
    body = await read_body(request, limit)
    if len(body) <= INLINE_BYTES:
        return parse_json(body)
    return await anyio.to_thread.run_sync(parse_json, body)


def client_request_id(request: Request) -> str | None:
    """The client's ``x-request-id`` when it is sane (1 to 64 of ``A-Za-z0-9._:-``: client
    input, so nothing else reaches a log line, a header or the ledger), else ``None``: a
    correlation field only; the gateway always assigns its own request id."""
    rid = request.headers.get("x-request-id")
    return rid if rid and _REQUEST_ID.match(rid) else None


def chat_request(data: dict[str, Any], request: Request) -> ChatRequest:
    """``data`` (plus the client's request id) as a :class:`ChatRequest`; 400 naming the
    field when it is bad."""
    cid = client_request_id(request)
    if cid is not None:
        data["client_request_id"] = cid
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None


def header_hints(request: Request) -> dict[str, Any]:
    """Routing hints from ``x-tierlm-*`` request headers."""
    headers = request.headers
    hints = {field: headers[h] for h, field in HINT_HEADERS.items() if h in headers}
    if "no-cache" in headers.get("cache-control", "").lower():
        hints["cache"] = "bypass"
    return hints


class Gateway:
    """The state one gateway process shares across requests."""

    def __init__(self, router: Router) -> None:
        s = router.settings
        self.router = router
        self.settings = s
        self.keys = KeyRing(s.server.api_keys)
        self.limits = open_limits(s.server)
        self.metrics = Metrics()
        self.health = HealthCache(router.backends)
        self.max_body = s.server.max_body_bytes
        self.tiers = [t.name for t in s.tiers]
        self.backend_configs = {b.name: b for b in s.backends}
        self.boundary = {b.name: b.where.label for b in s.backends}
        self._by_model: dict[str, str] = {}
        for b in s.backends:
            self._by_model.setdefault(b.model, b.name)
        self.started = int(time.time())
        self.ledger: Any = None  # the Router's ledger, when recording (set at start-up)
        # told of each live request as it starts (with the count in flight): deferred work
        # makes room for it (:meth:`tierlm.batch.scheduler.Scheduler.live_arrived`)
        self.on_live: Callable[[int], object] | None = None

    async def cache_stats(self) -> dict[str, Any]:
        """The answer cache's stats (``/admin/cache``, the dashboard); ``enabled`` false when
        there is none."""
        cache = self.router.layer0.cache
        return {"enabled": False} if cache is None else {"enabled": True, **await cache.stats()}

    # -- models -----------------------------------------------------------------------------
    def resolve_model(self, name: Any) -> str:
        """``auto``, a tier or a backend name (a backend's model id pins that backend)."""
        if name is None or name in ("", "auto"):
            return "auto"
        if not isinstance(name, str):
            raise FieldError("model must be a string", "model")
        if name in self.tiers or name in self.backend_configs:
            return name
        if name in self._by_model:
            return self._by_model[name]
        if name.endswith(":latest") and name != ":latest":
            return self.resolve_model(name.removesuffix(":latest"))
        raise ModelNotFound(
            f"model {name!r} does not exist: use 'auto', a tier ({', '.join(self.tiers)}) or a "
            f"backend ({', '.join(self.backend_configs)})"
        )

    def check_allowed(self, model: str, key: ApiKeyConfig | None) -> None:
        """403 when ``key`` may not use the tier or backend that ``model`` pins."""
        if not self.allowed(model, key):
            raise PermissionDenied(f"API key '{key.name if key else ''}' may not use {model!r}")

    def allowed(self, model: str, key: ApiKeyConfig | None) -> bool:
        """Whether ``key`` may use the tier or backend ``model`` (by tiers and boundary)."""
        return key is None or model == "auto" or bool(self.usable(model, key))

    def usable(self, model: str, key: ApiKeyConfig | None) -> list[str]:
        """The backends a request for ``model`` may reach with ``key`` (before the policy)."""
        if model == "auto":
            pairs = [(t.name, b) for t in self.settings.tiers for b in t.backends]
        elif model in self.tiers:
            pairs = [(model, b) for t in self.settings.tiers if t.name == model for b in t.backends]
        else:
            pairs = [(t.name, model) for t in self.settings.tiers if model in t.backends]
        return [b for tier, b in pairs if key_reaches(key, tier, self.backend_configs[b].where)]

    async def admit(self, req: ChatRequest, key: ApiKeyConfig) -> dict[str, str]:
        """Charge ``req`` to ``key``'s rate limits (:mod:`tierlm.server.ratelimit`), before
        routing; the ``x-ratelimit-*`` headers. A refusal is recorded in the ledger like any
        refused request, then raised."""
        try:
            return await self.limits.admit(key, req)
        except TierlmError as e:
            accounting = getattr(self.router, "accounting", None)
            if accounting is not None:
                accounting.record(req, None, [], error=e, latency_ms=0.0)
            raise

    # -- answering --------------------------------------------------------------------------
    def conditions(self, req: ChatRequest, key: ApiKeyConfig | None) -> Conditions:
        """Conditions under the last known health.

        Health only reorders and skips: when it would leave nothing this request may reach
        (a stale or slow check, the only backend busy), it is left out, and the executor's
        own failure handling decides.
        """
        healthy = self.health.healthy()
        if healthy is not None and not any(
            healthy.get(b, True) for b in self.usable(req.model, key)
        ):
            healthy = None
        return Conditions(healthy=healthy, warm=self.health.warm(), api_key=key)

    async def complete(
        self, req: ChatRequest, key: ApiKeyConfig | None, headers: Mapping[str, str]
    ) -> tuple[ChatResponse, Plan]:
        """Answer the whole request (planned, executed and recorded by the Router; the
        signals of a large one read in a worker process); ``headers``: the HTTP request's
        (its trace context)."""
        cond = self.conditions(req, key)
        signals = await self.router.asignals(req, processes=True)
        return await self.router.achat_planned(req, cond, signals=signals, carrier=headers)

    async def open_stream(
        self, req: ChatRequest, key: ApiKeyConfig | None, headers: Mapping[str, str]
    ) -> tuple[RoutedStream, StreamEvent]:
        """Start a stream and wait until it has committed (its first event arrived).

        Errors before that raise here, so the client gets a normal error response.
        """
        signals = await self.router.asignals(req, processes=True)
        cond = self.conditions(req, key)
        rs = await self.router.aopen_stream(req, cond, signals=signals, carrier=headers)
        try:
            first = await anext(aiter(rs))
        except StopAsyncIteration:
            await rs.aclose()
            raise ProtocolError(
                "the stream ended before its first piece", request_id=req.request_id
            ) from None
        except BaseException:
            await rs.aclose()
            raise
        return rs, first

    # -- what the answer says about itself ---------------------------------------------------
    def routing_headers(
        self, req: ChatRequest, plan: Plan, tier: str, backend: str, model: str
    ) -> dict[str, str]:
        headers = {
            "x-tierlm-request-id": req.request_id,
            "x-tierlm-tier": tier,
            "x-tierlm-backend": backend,
            "x-tierlm-model": _header_safe(model),
            "x-tierlm-boundary": self.boundary_of(plan, backend),
            "x-tierlm-privacy": plan.privacy.value,
            "x-tierlm-complexity": f"{plan.complexity:.4f}",
            "x-tierlm-cache": plan.cache_status,
        }
        if req.client_request_id:
            headers["x-request-id"] = req.client_request_id  # the caller's, echoed
        return headers

    def boundary_of(self, plan: Plan, backend: str) -> str:
        """A configured backend's boundary, or the one the plan gave a layer-0 answer."""
        if backend in self.boundary:
            return self.boundary[backend]
        return next((c.boundary.label for c in plan.candidates if c.backend == backend), "")

    def tierlm_object(
        self,
        req: ChatRequest,
        plan: Plan,
        tier: str,
        backend: str,
        cascade: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": req.request_id,
            "client_request_id": req.client_request_id,
            "tier": tier,
            "backend": backend,
            "boundary": self.boundary_of(plan, backend),
            "privacy": plan.privacy.value,
            "complexity": round(plan.complexity, 4),
            "sensitive": plan.sensitive,
            "reasons": list(plan.reasons),
            "attempts": attempts(plan, backend),
            "cache": plan.layer0.get("cache") or {"status": plan.cache_status},
            **({"rule": plan.layer0["rule"]} if "rule" in plan.layer0 else {}),
        }
        if cascade:  # answers the cascade judged: tier, backend, score, decision, reasons
            out["cascade"] = cascade
        return out

    def account(
        self,
        route: str,
        plan: Plan | None,
        tier: str,
        backend: str,
        status: int,
        started: float,
        *,
        request_id: str | None = None,
        usage: Usage | None = None,
        client_id: str | None = None,
    ) -> None:
        """Count one finished request (and a fallback when the first choice did not answer),
        and write its access log line (``client_id``: the client's ``x-request-id``)."""
        seconds = time.perf_counter() - started
        self.metrics.observe(route, tier, backend, status, seconds)
        oplog.access(route, request_id, tier, backend, status, seconds, usage, client_id)
        if (
            plan is not None
            and backend
            and plan.candidates
            and plan.candidates[0].backend != backend
        ):
            self.metrics.fallback(tier, backend)

    async def aclose(self, settle_s: float = 5.0) -> None:
        """Close the gateway. Requests the server cancelled at the end of its drain are still
        unwinding (closing their streams, queueing their ledger records): wait for them, at
        most ``settle_s``, so the ledger is not closed under them."""
        deadline = time.monotonic() + settle_s
        # polled: shutdown only, bounded, and the count is the metrics gauge every path updates
        while self.metrics.in_flight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await self.health.aclose()
        await self.limits.aclose()


def attempts(plan: Plan, backend: str) -> int:
    """How many candidates were tried before ``backend`` answered (1 = the first choice)."""
    for i, c in enumerate(plan.candidates):
        if c.backend == backend:
            return i + 1
    return len(plan.candidates)


def _header_safe(value: str) -> str:
    return value.encode("latin-1", "replace").decode("latin-1").replace("\n", " ")


class WireFormat:
    """One chat route's flow (:meth:`handle`); a wire format fills in the translation.

    One instance per route, built at import.
    """

    route: str
    media_type: str  # of a streamed answer
    stream_headers: Mapping[str, str] = {}  # sent with a stream, before the routing headers

    def parse(self, body: Any, request: Request, gw: Gateway) -> ChatRequest:
        raise NotImplementedError

    def error(self, e: TierlmError, headers: dict[str, str] | None) -> Response:
        raise NotImplementedError

    def whole(
        self, gw: Gateway, req: ChatRequest, plan: Plan, resp: ChatResponse, started: float
    ) -> dict[str, Any]:
        """The body of a whole (non-streamed) answer."""
        raise NotImplementedError

    def stream(
        self, req: ChatRequest, rs: RoutedStream, first: StreamEvent, end: StreamEnd
    ) -> AsyncIterator[bytes]:
        """The body of a committed stream; it must ``await end()`` however it ends."""
        raise NotImplementedError

    def _parse_raw(self, body: bytes, request: Request, gw: Gateway) -> ChatRequest:
        return self.parse(parse_json(body), request, gw)

    async def handle(self, request: Request) -> Response:
        """The endpoint: identify the key, parse, check what the request pins, then answer
        whole or open the stream; counts it in flight and accounts for it however it ends.

        The wire module routes the bound method itself (no wrapper coroutine per request).
        """
        gw: Gateway = request.app.state.gateway
        started = time.perf_counter()
        gw.metrics.in_flight += 1
        if gw.on_live is not None:
            gw.on_live(gw.metrics.in_flight)
        req: ChatRequest | None = None
        limited: dict[str, str] = {}
        try:
            key = gw.keys.identify(request.headers)
            body = await read_body(request, gw.max_body)
            if len(body) > INLINE_BYTES:  # parsed and checked off the event loop
                req = await anyio.to_thread.run_sync(self._parse_raw, body, request, gw)
            else:
                req = self._parse_raw(body, request, gw)
            if key is not None:
                req.api_key_id = key.name
                gw.check_allowed(req.model, key)
                limited = await gw.admit(req, key)
            if req.stream:
                rs, first = await gw.open_stream(req, key, request.headers)
            else:
                resp, plan = await gw.complete(req, key, request.headers)
        except TierlmError as e:
            gw.metrics.in_flight -= 1
            rid = req.request_id if req is not None else None
            gw.account(
                self.route,
                None,
                e.tier or "",
                e.backend or "",
                e.status,
                started,
                request_id=rid,
                client_id=client_request_id(request),
            )
            return self.error(
                e, {"x-tierlm-request-id": req.request_id} if req is not None else None
            )
        except BaseException:
            gw.metrics.in_flight -= 1
            raise
        if not req.stream:
            gw.metrics.in_flight -= 1
            gw.account(
                self.route,
                plan,
                resp.tier,
                resp.backend,
                200,
                started,
                request_id=req.request_id,
                usage=resp.usage,
                client_id=req.client_request_id,
            )
            headers = gw.routing_headers(req, plan, resp.tier, resp.backend, resp.model)
            headers.update(limited)
            return json_response(self.whole(gw, req, plan, resp, started), 200, headers)
        model = first.model or rs.model or ""
        headers = gw.routing_headers(req, rs.plan, rs.tier or "", rs.backend or "", model)
        headers.update(limited)
        if self.stream_headers:
            headers = {**self.stream_headers, **headers}
        end = StreamEnd(gw, self.route, rs, started, req.client_request_id)
        return GuardedStream(
            self.stream(req, rs, first, end), end, headers=headers, media_type=self.media_type
        )
