"""Live operations on a running gateway: reloading the configuration and the local models.

**Reload** (``POST /admin/reload``, or SIGHUP under ``tierlm serve``): the configuration is
read again and a new :class:`~tierlm.server.gateway.Gateway` over a successor Router
(:meth:`~tierlm.router.Router.successor`: unchanged backends, the ledger and the signal
readers are shared, so a loaded model stays loaded) is swapped in at once for new requests.
Each request is pinned, for its whole life (a stream until its last byte), to the gateway
it started on (:class:`Pinned`, the outermost middleware, counts it); a replaced gateway is
closed (what its successors do not share: removed or changed backends, a ledger whose URL
changed) when its last request has finished. Metrics carry over, and so do rate-limit counts
when the keys and ``server.rate_limit_url`` did not change. A configuration that does not load
or build is refused: the route answers 400 ``config_error`` naming the key (``param``),
SIGHUP logs it, and the old gateway keeps serving. One reload runs at a time.

**Local models** (``GET /admin/models``, ``POST /admin/models/load`` and ``/unload`` with
``{"backend": NAME}``): the in-process (or worker) llama.cpp backends, whether each model is
loaded, the memory it needs, how long it has been idle and its ``keep_alive``. Loading
answers a one-token request, so the model is warm afterwards; unloading frees it now.

Every route here needs an admin key when keys are configured.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tierlm.errors import ConfigError, InvalidRequest, ModelError, ModelNotFound, TierlmError
from tierlm.server.gateway import Gateway, json_response, read_json
from tierlm.types import ChatRequest, Message

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from tierlm.backends.llama_cpp import LlamaCppBackend
    from tierlm.config.settings import Settings

log = logging.getLogger("tierlm.server")
Loader = Callable[[], "Settings"]
_GB = 1024**3


class Live:
    """The gateway in service, the ones being retired, and how to reload."""

    def __init__(self, loader: Loader | None) -> None:
        self.loader = loader
        self.app: Starlette | None = None
        self.current: Gateway | None = None
        self.on_swap: Callable[[Gateway], None] = lambda gw: None
        self._owns: dict[Gateway, bool] = {}
        self._users: dict[Gateway, int] = {}
        self._drained: dict[Gateway, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._sighup = False

    def start(self, app: Starlette, gw: Gateway, *, owns: bool) -> None:
        self.app = app
        app.state.live = self
        self._install(gw, owns=owns)

    def _install(self, gw: Gateway, *, owns: bool) -> None:
        assert self.app is not None
        self.current = gw
        self.app.state.gateway = gw
        self._owns[gw] = owns
        self._users.setdefault(gw, 0)
        self.on_swap(gw)

    # -- pinning requests -------------------------------------------------------------------
    def enter(self) -> Gateway | None:
        gw = self.current
        if gw is not None:
            self._users[gw] += 1
        return gw

    def leave(self, gw: Gateway | None) -> None:
        if gw is None:
            return
        self._users[gw] -= 1
        if self._users[gw] == 0 and gw in self._drained:
            self._drained[gw].set()

    # -- reloading --------------------------------------------------------------------------
    async def reload(self) -> dict[str, Any]:
        """Load the configuration again and swap it in; :class:`ConfigError` (naming the key)
        when it does not load or build, and then nothing changes."""
        if self.loader is None:
            raise ConfigError("this gateway was not started from a configuration it can re-read")
        async with self._lock:
            t0 = time.perf_counter()
            old = self.current
            assert old is not None
            settings = await asyncio.to_thread(self.loader)
            router = old.router.successor(settings)
            try:
                gw = Gateway(router)
                # load the signal models before the first request, not during it
                await asyncio.to_thread(lambda: router.signals)
                if settings.ledger.url != "off":
                    gw.ledger = await asyncio.to_thread(lambda: router.accounting.ledger)
            except BaseException:
                await router.aclose(keep=[old.router])
                raise
            gw.metrics, gw.started = old.metrics, old.started
            if _same_limits(old.settings, settings):  # rate-limit windows go on
                await gw.limits.aclose()
                gw.limits = old.limits
            gw.health.healthy()  # start its first health check
            self._install(gw, owns=True)
            self._retire(old)
            ms = (time.perf_counter() - t0) * 1000.0
        summary = _changes(old.settings, settings)
        log.info("configuration reloaded in %.0f ms: %s", ms, summary)
        return {"status": "reloaded", "ms": round(ms, 1), "tiers": gw.tiers, **summary}

    def _retire(self, gw: Gateway) -> None:
        self._drained[gw] = drained = asyncio.Event()
        if self._users[gw] == 0:
            drained.set()
        self._spawn(self._close_when_drained(gw, drained))

    async def _close_when_drained(self, gw: Gateway, drained: asyncio.Event) -> None:
        await drained.wait()
        del self._drained[gw], self._users[gw]
        owns = self._owns.pop(gw)
        # Gateway.aclose without its shutdown wait (that counts every gateway's requests) and
        # without closing rate limits a successor still uses
        await gw.health.aclose()
        if all(g.limits is not gw.limits for g in self._owns):
            await gw.limits.aclose()
        if owns:
            await gw.router.aclose(keep=[g.router for g in self._owns])

    async def reload_logged(self) -> None:
        """SIGHUP: reload; a bad configuration is a log line and the old one keeps serving."""
        try:
            await self.reload()
        except TierlmError as e:  # a ConfigError naming the key, or a ledger that won't open
            log.error("reload refused, the previous configuration keeps serving: %s", e)

    def watch_sighup(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload_logged()))
        self._sighup = True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """At shutdown: stop watching SIGHUP, close the gateways still retiring, then the
        current one (its Router only when the app owns it)."""
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        for ev in self._drained.values():
            ev.set()  # the server has drained its connections already
        for failed in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(failed, BaseException):
                log.error("closing a replaced configuration failed", exc_info=failed)
        gw = self.current
        if gw is not None:
            await gw.aclose()
            if self._owns.get(gw):
                await gw.router.aclose()


def _same_limits(before: Settings, after: Settings) -> bool:
    """Whether the rate limits are configured the same (the keys and where counts live)."""
    a, b = before.server, after.server
    return (a.api_keys, a.rate_limit_url) == (b.api_keys, b.rate_limit_url)


def _changes(before: Settings, after: Settings) -> dict[str, list[str]]:
    old = {b.name: b for b in before.backends}
    new = {b.name: b for b in after.backends}
    return {
        "added": sorted(new.keys() - old.keys()),
        "removed": sorted(old.keys() - new.keys()),
        "changed": sorted(n for n in new.keys() & old.keys() if new[n] != old[n]),
    }


class Pinned:
    """ASGI middleware: each HTTP request counts as a user of the gateway in service when it
    arrived (handlers read ``app.state.gateway`` in the same step, before any await)."""

    def __init__(self, app: ASGIApp, live: Live) -> None:
        self.app = app
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gw = self.live.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.live.leave(gw)


# -- routes ---------------------------------------------------------------------------------
async def reload_route(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    gw.keys.require_admin(request.headers)
    live: Live = request.app.state.live
    try:
        return json_response(await live.reload())
    except ConfigError as e:
        body = {"message": str(e), "type": "invalid_request_error", "code": "config_error"}
        return json_response({"error": {**body, "param": e.key}}, 400)


async def models_route(request: Request) -> Response:
    """``GET /admin/models``: the local models and their state."""
    gw: Gateway = request.app.state.gateway
    gw.keys.require_admin(request.headers)
    return json_response({"models": [model_state(b) for b in local_models(gw).values()]})


async def load_route(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    gw.keys.require_admin(request.headers)
    backend = await _named_model(request, gw)
    t0 = time.perf_counter()
    probe = ChatRequest(messages=[Message(role="user", content="hi")], max_tokens=1)
    await backend.complete(probe)
    ms = round((time.perf_counter() - t0) * 1000.0, 1)
    return json_response({**model_state(backend), "load_ms": ms})


async def unload_route(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    gw.keys.require_admin(request.headers)
    backend = await _named_model(request, gw)
    freed = await asyncio.to_thread(backend.unload)
    return json_response({**model_state(backend), "unloaded": freed})


def local_models(gw: Gateway) -> dict[str, LlamaCppBackend]:
    from tierlm.backends.llama_cpp import LlamaCppBackend

    return {n: b for n, b in gw.router.backends.items() if isinstance(b, LlamaCppBackend)}


async def _named_model(request: Request, gw: Gateway) -> LlamaCppBackend:
    data = await read_json(request, 4096)
    name = data.get("backend") if isinstance(data, dict) else None
    if not isinstance(name, str):
        raise InvalidRequest('send {"backend": NAME}, NAME a local model backend')
    models = local_models(gw)
    if name not in models:
        known = ", ".join(models) or "none configured"
        if name in gw.router.backends:
            raise InvalidRequest(f"backend {name!r} is not a local model (local: {known})")
        raise ModelNotFound(f"backend {name!r} does not exist (local models: {known})")
    return models[name]


def model_state(b: LlamaCppBackend) -> dict[str, Any]:
    """One local model: loaded or not, memory it needs, idle seconds, keep_alive."""
    try:
        need: float | None = round(b.memory_needed_bytes() / _GB, 3)
    except ModelError:  # the file is not there (yet): the route still lists the backend
        need = None
    return {
        "backend": b.name,
        "model": b.model,
        "loaded": b.loaded,
        "memory_gb": need,
        "idle_s": round(b.idle_seconds, 1) if b.loaded else None,
        "keep_alive_s": b.config.keep_alive,
    }
