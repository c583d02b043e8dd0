"""The gateway's ASGI app: routes, the lifespan that builds the Router once, and errors.

Every bad input answers with OpenAI-shaped error JSON (Ollama-shaped on ``/api/*``) and the
right status: invalid JSON 400, a bad field 400 (naming it), an unknown model 404, a body over
``server.max_body_bytes`` 413, a missing or unknown key 401, a key not allowed 403, a wrong
method 405, an unknown route 404.

Routes: ``/v1/chat/completions``, ``/v1/models``, ``/v1/messages`` (Anthropic-shaped
errors), the Ollama API (``/api/chat``,
``/api/generate``, ``/api/tags``, ``/api/show``, ``/api/version``), ``/health`` (open),
``/metrics`` and ``/admin/*`` (an admin key when keys are configured; ``/admin/cache``:
the answer cache's stats, ``DELETE`` clears it; reload and local models in
:mod:`tierlm.server.admin`), ``/openapi.json``
(open), ``/dashboard`` (the page; its data at ``/admin/dashboard``:
:mod:`tierlm.server.dashboard`), and, when the Router has a ledger, ``POST /v1/feedback``,
``GET /admin/report`` and the OpenAI Batch API for deferred work (``/v1/files``,
``/v1/batches``: :mod:`tierlm.server.batches`, whose scheduler the lifespan starts).
``/health`` and ``/metrics`` include each local model's worker process (state, restarts,
crashes). Every body is read incrementally under ``server.max_body_bytes`` (feedback: 64 KiB)
and nests at most ``MAX_JSON_DEPTH`` deep; a string that is not valid Unicode (a lone
surrogate) is a 400 naming the field. Such a request is refused at the edge, before it becomes
a request of the Router, so the ledger holds no row for it (as for any unparseable body).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message

from tierlm import __version__
from tierlm.errors import TierlmError
from tierlm.server import (
    admin,
    anthropic,
    batches,
    dashboard,
    embeddings,
    ollama,
    openai,
    oplog,
)
from tierlm.server.admin import Live, Loader
from tierlm.server.gateway import (
    Gateway,
    error_response,
    json_response,
    parse_json,
    read_body,
)
from tierlm.server.openapi import openapi_document
from tierlm.supervisor import WorkerSupervisor, prometheus_lines

if TYPE_CHECKING:
    from tierlm.config.settings import Settings
    from tierlm.router import Router

log = logging.getLogger("tierlm.server")
Endpoint = Callable[[Request], Awaitable[Response]]
_HTTP_CODES = {
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
}


def create_app(
    source: Router | Settings,
    *,
    freeze_gc: bool = False,
    owns_router: bool = False,
    announce: bool = False,
    reload: Loader | None = None,
    sighup: bool = False,
) -> Starlette:
    """The gateway app over a ready Router (the caller closes it, unless ``owns_router``) or
    over settings (the app builds the Router at start-up and closes it at shutdown).

    ``announce`` (``serve()`` sets it): check every backend briefly at start-up and log the
    summary and its warnings (:func:`tierlm.server.oplog.startup`).

    ``freeze_gc`` (``serve()`` sets it; it is process-wide): once started, move everything
    loaded so far out of the garbage collector's sight, so collections stay short.
    ``reload``: reads the configuration again for ``POST /admin/reload`` and, with
    ``sighup`` (main thread only), on SIGHUP (:mod:`tierlm.server.admin`).
    """
    live = Live(reload)
    routes = [
        Route("/v1/chat/completions", openai.chat_completions, methods=["POST"]),
        Route("/v1/models", openai.list_models, methods=["GET"]),
        Route(anthropic.ROUTE, anthropic.messages, methods=["POST"]),
        Route("/v1/embeddings", embeddings.openai_embeddings, methods=["POST"]),
        Route("/api/embed", embeddings.ollama_embed, methods=["POST"]),
        Route("/api/chat", ollama.chat, methods=["POST"]),
        Route("/api/generate", ollama.generate, methods=["POST"]),
        Route("/api/tags", ollama.tags, methods=["GET"]),
        Route("/api/show", ollama.show, methods=["POST"]),
        Route("/api/version", ollama.version, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/admin/health", admin_health, methods=["GET"]),
        Route("/v1/feedback", feedback, methods=["POST"]),
        Route("/admin/report", report, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/admin/cache", admin_cache, methods=["GET", "DELETE"]),
        Route("/admin/reload", admin.reload_route, methods=["POST"]),
        Route("/admin/models", admin.models_route, methods=["GET"]),
        Route("/admin/models/load", admin.load_route, methods=["POST"]),
        Route("/admin/models/unload", admin.unload_route, methods=["POST"]),
        Route("/v1/files", batches.create_file, methods=["POST"]),
        Route("/v1/files", batches.list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", batches.get_file, methods=["GET"]),
        Route("/v1/files/{file_id}/content", batches.file_content, methods=["GET"]),
        Route("/v1/batches", batches.create_batch, methods=["POST"]),
        Route("/v1/batches", batches.list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", batches.get_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", batches.cancel_batch, methods=["POST"]),
        Route("/dashboard", dashboard.page, methods=["GET"]),
        Route("/dashboard/{name}", dashboard.static, methods=["GET"]),
        Route("/admin/dashboard", dashboard.data, methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from tierlm.config.settings import Settings
        from tierlm.router import Router

        owns = owns_router or isinstance(source, Settings)
        router = Router(source) if isinstance(source, Settings) else source
        gw = Gateway(router)
        app.state.gateway = gw
        # Load the signal models before the first request, not during it.
        await anyio.to_thread.run_sync(lambda: router.signals)
        if announce:
            await oplog.startup(gw)  # also the first health check
        gw.health.healthy()  # start the first health check (when not announced)
        accounting = getattr(router, "accounting", None)
        if accounting is not None and router.settings.ledger.url != "off":
            # open (and migrate) the ledger now rather than in the first request
            gw.ledger = await anyio.to_thread.run_sync(lambda: accounting.ledger)
        live.on_swap = lambda g: _ledger_endpoints(app, g)
        deferred = app.state.deferred = batches.open_deferred(live, gw)
        live.start(app, gw, owns=owns)
        if deferred is not None:
            deferred.scheduler.start()
        if sighup and reload is not None:
            live.watch_sighup()
        if freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if deferred is not None:
                await deferred.scheduler.aclose()
            await live.aclose()

    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(admin.Pinned, live=live)],
        exception_handlers={
            HTTPException: _http_error,
            TierlmError: _tierlm_error,
            Exception: _internal_error,
        },
    )


def _ledger_endpoints(app: Starlette, gw: Gateway) -> None:
    deferred = getattr(app.state, "deferred", None)
    if deferred is not None:
        deferred.follow(gw)
    app.state.feedback = app.state.report = None
    if gw.ledger is None:
        return
    from tierlm.ledger.http import feedback_endpoint, report_endpoint

    app.state.feedback = feedback_endpoint(gw.ledger, gw.router.redact_text)
    app.state.report = report_endpoint(gw.ledger)


# -- errors ---------------------------------------------------------------------------------
async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    type_, code = _HTTP_CODES.get(exc.status_code, ("invalid_request_error", "http_error"))
    message = (
        f"no route {request.method} {request.url.path}"
        if exc.status_code in (404, 405)
        else str(exc.detail)
    )
    if request.url.path.startswith("/api/"):
        return json_response({"error": message}, exc.status_code, dict(exc.headers or {}))
    if request.url.path == anthropic.ROUTE:
        body = anthropic.error_body(exc.status_code, message)
        return json_response(body, exc.status_code, dict(exc.headers or {}))
    return json_response(
        {"error": {"message": message, "type": type_, "code": code, "param": None}},
        exc.status_code,
        dict(exc.headers or {}),
    )


async def _tierlm_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TierlmError)
    if request.url.path.startswith("/api/"):
        return ollama.ollama_error(exc)
    if request.url.path == anthropic.ROUTE:
        return anthropic.anthropic_error(exc)
    return error_response(exc)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    if request.url.path.startswith("/api/"):
        return json_response({"error": "internal error in the gateway"}, 500)
    if request.url.path == anthropic.ROUTE:
        return json_response(anthropic.error_body(500, "internal error in the gateway"), 500)
    return json_response(
        {
            "error": {
                "message": "internal error in the gateway",
                "type": "api_error",
                "code": "internal_error",
                "param": None,
            }
        },
        500,
    )


# -- operations -----------------------------------------------------------------------------
async def health(request: Request) -> Response:
    """``status`` (ok, degraded, down) and each backend's health, cached briefly."""
    gw: Gateway = request.app.state.gateway
    checks = await gw.health.current()
    oks = [h.ok is not False for h in checks.values()]
    status = "ok" if all(oks) else ("degraded" if any(oks) else "down")
    backends: dict[str, Any] = {
        n: {
            "ok": h.ok,
            "detail": h.detail,
            "loaded": h.loaded,
            "boundary": gw.boundary[n],
            "latency_ms": h.latency_ms,
            # the worker's state, without where it is installed (the endpoint is open)
            **({"worker": _public(h.worker)} if h.worker is not None else {}),
            **({"energy": h.energy} if h.energy is not None else {}),  # measured J/token
        }
        for n, h in checks.items()
    }
    body = {
        "status": status,
        "version": __version__,
        "deployment": gw.settings.deployment,
        "tiers": gw.tiers,
        "backends": backends,
        "in_flight": gw.metrics.in_flight,
    }
    return json_response(body, 503 if status == "down" else 200)


async def openapi_json(request: Request) -> Response:
    """The gateway's OpenAPI document (:mod:`tierlm.server.openapi`); open, like ``/health``."""
    gw: Gateway = request.app.state.gateway
    return json_response(openapi_document(keys=gw.keys.enabled))


def _public(worker: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in worker.items() if k != "binary"}


async def admin_health(request: Request) -> Response:
    """Every detail of every backend's health (admin)."""
    gw: Gateway = request.app.state.gateway
    gw.keys.require_admin(request.headers)
    await gw.health.current()
    return json_response({"backends": gw.health.to_dict()})


async def admin_cache(request: Request) -> Response:
    """The answer cache's stats (GET), or clear it (DELETE) (admin)."""
    gw: Gateway = request.app.state.gateway
    gw.keys.require_admin(request.headers)
    cache = gw.router.layer0.cache
    if cache is not None and request.method == "DELETE":
        return json_response({"cleared": await cache.clear()})
    return json_response(await gw.cache_stats())


async def metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    gw.keys.require_admin(request.headers)
    text = gw.metrics.render()
    workers = {
        n: w
        for n, b in gw.router.backends.items()
        if isinstance(w := getattr(b, "supervisor", None), WorkerSupervisor)
    }
    if workers:
        text += "\n".join(prometheus_lines(workers)) + "\n"
    return Response(text, media_type="text/plain; version=0.0.4")


async def feedback(request: Request) -> Response:
    """Read (bounded, incrementally) and check the body here, so the ledger's endpoint only
    ever sees a small, well-formed one."""
    from tierlm.ledger.http import MAX_BODY

    gw: Gateway = request.app.state.gateway
    request.state.api_key = gw.keys.identify(request.headers)  # scope state: kept below
    body = await read_body(request, min(gw.max_body, MAX_BODY))
    parse_json(body)
    return await _ledger_route(_replayed(request, body), "feedback")


def _replayed(request: Request, body: bytes) -> Request:
    """``request`` again, with ``body`` (already read from it) as its body."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await request.receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


async def report(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    gw.keys.require_admin(request.headers)
    return await _ledger_route(request, "report")


async def _ledger_route(request: Request, name: str) -> Response:
    endpoint: Endpoint | None = getattr(request.app.state, name, None)
    if endpoint is None:
        return json_response(
            {
                "error": {
                    "message": "the ledger is off in this deployment",
                    "type": "not_found_error",
                    "code": "ledger_off",
                    "param": None,
                }
            },
            404,
        )
    return await endpoint(request)
