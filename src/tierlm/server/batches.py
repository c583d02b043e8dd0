"""The OpenAI Batch API: deferred chat requests, in the interface clients already know.

Routes (the unchanged ``openai`` SDK works against them):

- ``POST /v1/files`` (multipart: ``file``, ``purpose=batch``): an input file, JSONL of chat
  requests (:mod:`tierlm.batch.jsonl`), checked on upload: a bad line is a 400 naming it;
  over ``batch.max_file_bytes`` a 413. ``GET /v1/files``, ``GET /v1/files/{id}``,
  ``GET /v1/files/{id}/content`` (input, output and error files).
- ``POST /v1/batches`` (``input_file_id``, ``endpoint`` ``/v1/chat/completions``,
  ``completion_window`` such as ``24h``, optional ``metadata``): every line's body is
  parsed as a live request's would be (a bad one, a model the key may not use: a 400
  naming the line) and planned now (what running it at submission would cost is kept, for
  the report's savings); then the batch is ``in_progress`` and its lines wait for the
  scheduler (:mod:`tierlm.batch.scheduler`). ``GET /v1/batches`` (newest first, ``after``,
  ``limit``), ``GET /v1/batches/{id}`` (with ``tierlm.lines`` by state and ``tierlm.waiting``:
  why its lines wait now), ``POST /v1/batches/{id}/cancel``.

The output file holds one line per answered request, in input order
(``{"id", "custom_id", "response": {"status_code": 200, "request_id", "body"}, "error":
null}``); the error file the others: an error answer (its status and OpenAI-shaped body), or
``"error": {"code": "batch_expired" | "batch_cancelled"}`` for lines never run.

Keys: each file and batch belongs to the key that created it; another key gets a 404 for
it (an admin key sees all). Each line runs with its batch's key as it is configured when the
line runs (privacy floor, tiers, boundary ceiling, budgets); a key removed since fails its
lines (401). Rate limits (``rpm``/``tpm``) are not charged for deferred lines. The jobs live in
the ledger's database: with ``ledger.url: off`` these routes answer 404 ``ledger_off``.
"""

from __future__ import annotations

import asyncio
import json
import re
from email.parser import BytesParser
from email.policy import HTTP
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from tierlm.accounting import billed
from tierlm.backends.base import collect
from tierlm.batch.config import DEFAULT_SLOTS
from tierlm.batch.jsonl import ENDPOINTS, LineError, parse_lines
from tierlm.batch.scheduler import Scheduler
from tierlm.batch.store import ANY_KEY, BatchStore, Line, Result
from tierlm.batch.window import Now
from tierlm.config.backends import LlamaCppConfig, TransformersConfig
from tierlm.errors import AuthError, InvalidRequest, PayloadTooLarge, TierlmError
from tierlm.policy import Conditions
from tierlm.server.gateway import (
    FieldError,
    Gateway,
    json_response,
    read_body,
    read_json,
)
from tierlm.server.openai import completion_body, parse_chat
from tierlm.server.streaming import chain, unfinished
from tierlm.types import Boundary

if TYPE_CHECKING:
    from tierlm.batch.config import BatchConfig
    from tierlm.config.settings import ApiKeyConfig
    from tierlm.ledger.store import Store
    from tierlm.server.admin import Live
    from tierlm.types import ChatRequest, ChatResponse, Plan

_WINDOW = re.compile(r"^(\d+)([mhd])$")
_UNIT = {"m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_S = 7 * 86400
_FORM_OVERHEAD = 64 * 1024  # multipart headers and boundaries around the file
_NO_HEADERS = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}


class Deferred:
    """Deferred work in one gateway process: the jobs' store, the runner, the scheduler."""

    def __init__(self, live: Live, store: Store, config: BatchConfig) -> None:
        self.config = config
        self.store = BatchStore(store)
        self.runner = GatewayRunner(live, config)
        self.scheduler = Scheduler(self.store, config, self.runner)

    def clock(self) -> float:
        return self.scheduler.clock()

    def follow(self, gw: Gateway) -> None:
        """Serve ``gw`` (the gateway in service, after a reload too): its live requests make
        room among deferred lines; its ``batch`` section and ledger are the ones used."""
        gw.on_live = self.scheduler.live_arrived
        self.config = self.runner.config = self.scheduler.config = gw.settings.batch
        if gw.ledger is not None:
            self.store.store = gw.ledger.store


class GatewayRunner:
    """Runs a line through the current gateway exactly as a live request is answered."""

    def __init__(self, live: Live, config: BatchConfig) -> None:
        self.live, self.config = live, config

    @property
    def gw(self) -> Gateway:
        assert self.live.current is not None
        return self.live.current

    def slots(self, backend: str | None) -> int | None:
        """An in-process model's ``max_concurrency``; for a server on this site, whose
        capacity tierlm cannot see, ``batch.slots`` (default 2)."""
        cfg = self.gw.backend_configs.get(backend or "")
        if cfg is None or cfg.where is Boundary.EXTERNAL:
            return None
        if isinstance(cfg, LlamaCppConfig | TransformersConfig):
            return cfg.max_concurrency
        return self.config.slots.get(cfg.name, DEFAULT_SLOTS)

    def same_host(self, backend: str) -> bool:
        cfg = self.gw.backend_configs.get(backend)
        return cfg is not None and cfg.where <= Boundary.HOST

    async def now(self, ts: float, key: str | None) -> Now:
        gw = self.gw
        energy = gw.router.energy.snapshot() if gw.router.energy is not None else None
        share = None
        if self.config.window.min_budget_share is not None and gw.settings.budgets.limits:
            state = await gw.ledger.abudget_state(key=key, tier=None)
            share = state.share
        return Now(ts=ts, energy=energy, budget_share=share, live=gw.metrics.in_flight)

    async def run(self, line: Line) -> Result:
        gw = self.live.enter()
        assert gw is not None
        rid: str | None = None
        try:
            key = _key_named(gw, line.api_key)
            req = build_request(gw, line.body, key, line.batch_id, line.custom_id)
            rid = req.request_id
            planned = line.planned_backend
            if self.config.window.preempt and planned and self.same_host(planned):
                resp, plan = await _streamed(gw, req, key)
            else:
                resp, plan = await gw.complete(req, key, {})  # no trace context to continue
        except TierlmError as e:
            body = e.to_openai()
            if getattr(e, "param", None):
                body["error"]["param"] = e.param  # type: ignore[attr-defined]
            return Result(e.status, rid, body, retry=bool(getattr(e, "retryable", False)))
        finally:
            self.live.leave(gw)
        accounting = gw.router.accounting
        baseline = (
            accounting.cost(line.planned_backend, resp.usage) if line.planned_backend else None
        )
        return Result(
            200,
            req.request_id,
            completion_body(gw, req, plan, resp),
            tier=resp.tier,
            backend=resp.backend,
            prompt_tokens=resp.usage.prompt_tokens,
            completion_tokens=resp.usage.completion_tokens,
            cost_usd=resp.cost_usd or 0.0,  # every attempt's, as the ledger records it
            baseline_usd=baseline,
        )


async def _streamed(
    gw: Gateway, req: ChatRequest, key: ApiKeyConfig | None
) -> tuple[ChatResponse, Plan]:
    """Answer ``req`` as a stream folded into one answer: a line that a live request may
    preempt runs this way, because cancelling a stream stops a llama.cpp worker's generation
    at once, while a cancelled whole request goes on to its end (measured)."""
    req.stream = True
    rs, first = await gw.open_stream(req, key, {})
    try:
        resp = await collect(chain(first, rs), model=rs.model or "")
    finally:
        await rs.aclose()
    if rs.finish_reason is None:
        raise unfinished(req, rs)
    resp.tier, resp.backend = rs.tier or "", rs.backend or ""
    resp.cost_usd = billed(rs.attempts)  # recorded when the stream ended, as it is here
    return resp, rs.plan


def _key_named(gw: Gateway, name: str | None) -> ApiKeyConfig | None:
    """The batch owner's key as configured now (keys off: ``None``)."""
    if not gw.keys.enabled:
        return None
    for k in gw.settings.server.api_keys:
        if k.name == name:
            return k
    raise AuthError(f"API key '{name}' is no longer configured")


def build_request(
    gw: Gateway, body: dict[str, Any], key: ApiKeyConfig | None, batch_id: str, custom_id: str
) -> ChatRequest:
    """A line's body as the :class:`ChatRequest` a live request with it would be."""
    req = parse_chat(dict(body), Request(_NO_HEADERS), gw)
    req.batch_id = batch_id
    req.client_request_id = custom_id[:64]
    if key is not None:
        req.api_key_id = key.name
        gw.check_allowed(req.model, key)
    return req


# -- helpers of the routes ------------------------------------------------------------------
def _context(request: Request) -> tuple[Deferred, Gateway, ApiKeyConfig | None, object]:
    """The deferred-work state, the gateway, the caller's key and what it may see."""
    gw: Gateway = request.app.state.gateway
    key = gw.keys.identify(request.headers)
    deferred: Deferred | None = getattr(request.app.state, "deferred", None)
    if deferred is None:
        raise LedgerOff("deferred work needs the ledger: ledger.url is off (or batch.enabled)")
    scope: object = ANY_KEY if key is not None and key.admin else (key.name if key else None)
    return deferred, gw, key, scope


class NotFound(InvalidRequest):
    status = 404
    code = "not_found"


class LedgerOff(NotFound):
    code = "ledger_off"


def parse_window(value: Any) -> float:
    """``completion_window`` (``24h``, ``90m``, ``2d``) in seconds, at most 7 days."""
    m = _WINDOW.match(value) if isinstance(value, str) else None
    seconds = int(m.group(1)) * _UNIT[m.group(2)] if m else 0
    if not 60 <= seconds <= MAX_WINDOW_S:
        raise FieldError(
            "completion_window: a duration such as '24h' (1m to 7d)", "completion_window"
        )
    return float(seconds)


def _form(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body's fields: name -> (file name, bytes)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequest("send the file as multipart/form-data (fields: file, purpose)")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    msg = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


# -- files ----------------------------------------------------------------------------------
async def create_file(request: Request) -> Response:
    d, _, key, _ = _context(request)
    limit = d.config.max_file_bytes
    body = await read_body(request, limit + _FORM_OVERHEAD)
    fields = await asyncio.to_thread(_form, body, request.headers.get("content-type", ""))
    purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
    if purpose != "batch":
        raise FieldError("purpose: only 'batch' files are accepted here", "purpose")
    if "file" not in fields:
        raise FieldError("file: field required", "file")
    filename, data = fields["file"]
    if len(data) > limit:
        raise PayloadTooLarge(f"file of {len(data)} bytes is over batch.max_file_bytes ({limit})")
    await asyncio.to_thread(parse_lines, data, d.config.max_lines)
    row = await asyncio.to_thread(
        d.store.add_file,
        key.name if key else None,
        filename or "batch.jsonl",
        purpose,
        data.decode("utf-8"),
        d.clock(),
    )
    return json_response(row.to_openai())


async def list_files(request: Request) -> Response:
    d, _, _, scope = _context(request)
    limit = _limit(request)
    purpose = request.query_params.get("purpose")
    rows = await asyncio.to_thread(d.store.list_files, scope, purpose, limit)
    data = [r.to_openai() for r in rows]
    return json_response(_page(data, has_more=False))


async def get_file(request: Request) -> Response:
    d, _, _, scope = _context(request)
    file_id = request.path_params["file_id"]
    row = await asyncio.to_thread(d.store.get_file, file_id, scope)
    if row is None:
        raise NotFound(f"no file {file_id!r}")
    return json_response(row.to_openai())


async def file_content(request: Request) -> Response:
    d, _, _, scope = _context(request)
    file_id = request.path_params["file_id"]
    text = await asyncio.to_thread(d.store.file_content, file_id, scope)
    if text is None:
        raise NotFound(f"no file {file_id!r}")
    return Response(text.encode("utf-8"), media_type="application/jsonl")


# -- batches --------------------------------------------------------------------------------
async def create_batch(request: Request) -> Response:
    d, gw, key, scope = _context(request)
    body = await read_json(request, 64 * 1024)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    unknown = sorted(set(body) - {"input_file_id", "endpoint", "completion_window", "metadata"})
    if unknown:
        raise FieldError(f"{unknown[0]}: unknown field", unknown[0])
    if body.get("endpoint") not in ENDPOINTS:
        raise FieldError(f"endpoint: must be one of {', '.join(ENDPOINTS)}", "endpoint")
    window = parse_window(body.get("completion_window"))
    metadata = _metadata(body.get("metadata"))
    file_id = body.get("input_file_id")
    row = await asyncio.to_thread(d.store.get_file, str(file_id), scope)
    if row is None:
        raise NotFound(f"no file {file_id!r}")
    if row.purpose != "batch":
        raise FieldError("input_file_id: not a file of purpose 'batch'", "input_file_id")
    text = await asyncio.to_thread(d.store.file_content, row.id, scope)
    assert text is not None
    lines = await asyncio.to_thread(_prepare, gw, key, text, d.config.max_lines)
    now = d.clock()
    batch_id = await asyncio.to_thread(
        d.store.create_batch,
        key.name if key else None,
        row.id,
        body["endpoint"],
        body["completion_window"],
        now + window,
        metadata,
        lines,
        now,
    )
    d.scheduler.wake()
    return await _batch_response(d, batch_id, ANY_KEY)


def _prepare(
    gw: Gateway, key: ApiKeyConfig | None, text: str, max_lines: int
) -> list[tuple[str, str, str | None]]:
    """Each line checked as a live request (a 400 naming the first bad one) and planned now:
    (custom_id, body JSON, the backend it would go to now)."""
    out: list[tuple[str, str, str | None]] = []
    for i, (cid, body) in enumerate(parse_lines(text.encode("utf-8"), max_lines), start=1):
        try:
            req = build_request(gw, body, key, "", cid)
        except TierlmError as e:
            raise LineError(i, e.message) from None
        try:  # every backend taken as healthy (as `tierlm route` does): no I/O in this thread
            plan = gw.router.plan(req, Conditions(api_key=key))
            planned = plan.candidates[0].backend if plan.candidates else None
        except TierlmError:
            planned = None  # refused now: it is run (and answered) in its window all the same
        out.append((cid, json.dumps(body, ensure_ascii=False), planned))
    return out


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    ok = isinstance(value, dict) and len(value) <= 16
    ok = ok and all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
        for k, v in value.items()
    )
    if not ok:
        raise FieldError("metadata: at most 16 string pairs (keys 64, values 512)", "metadata")
    return dict(value)


async def _batch_response(d: Deferred, batch_id: str, scope: object) -> Response:
    batch = await asyncio.to_thread(d.store.get_batch, batch_id, scope)
    if batch is None:
        raise NotFound(f"no batch {batch_id!r}")
    out = batch.to_openai()
    out["tierlm"]["waiting"] = d.scheduler.waiting_why.get(batch_id, [])
    return json_response(out)


async def get_batch(request: Request) -> Response:
    d, _, _, scope = _context(request)
    return await _batch_response(d, request.path_params["batch_id"], scope)


async def cancel_batch(request: Request) -> Response:
    d, _, _, scope = _context(request)
    batch_id = request.path_params["batch_id"]
    if not await asyncio.to_thread(d.store.cancel, batch_id, scope, d.clock()):
        raise NotFound(f"no batch {batch_id!r}")
    d.scheduler.wake()
    return await _batch_response(d, batch_id, scope)


async def list_batches(request: Request) -> Response:
    d, _, _, scope = _context(request)
    limit = _limit(request)
    after = request.query_params.get("after")
    rows = await asyncio.to_thread(d.store.list_batches, scope, after, limit + 1)
    data = [b.to_openai() for b in rows[:limit]]
    return json_response(_page(data, has_more=len(rows) > limit))


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise FieldError("limit: an integer from 1 to 100", "limit")
    return int(raw)


def _page(data: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def open_deferred(live: Live, gw: Gateway) -> Deferred | None:
    """The deferred-work state for a gateway with a ledger (``None`` without one, or with
    ``batch.enabled: false``); start its scheduler once ``live`` serves a gateway."""
    cfg = gw.settings.batch
    if gw.ledger is None or not cfg.enabled:
        return None
    return Deferred(live, gw.ledger.store, cfg)


__all__ = ["Deferred", "GatewayRunner", "open_deferred"]
