"""The gateway: OpenAI- and Ollama-compatible HTTP over one Router (``tierlm serve``).

``create_app(router_or_settings)`` gives the ASGI app; ``serve(settings)`` runs it with
uvicorn (the asyncio loop, the httptools parser), bound to ``server.host`` (127.0.0.1 by
default), with the connection cap, header read timeout and header size limit of
:mod:`tierlm.server.limits` and rate-limited logs, and on SIGTERM stops accepting
connections and drains the requests in flight for at most ``server.drain_seconds`` before it
exits; on SIGHUP it reloads its configuration without dropping a request. It logs for its
operator (:mod:`tierlm.server.oplog`): a start-up summary with warnings for what will fail, an
access line per request, and tierlm's own records, as text or JSON lines.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from tierlm.server.app import create_app

if TYPE_CHECKING:
    from collections.abc import Callable

    from tierlm.config.settings import Settings
    from tierlm.server.oplog import LogFormat


def serve(
    settings: Settings,
    *,
    log_level: str = "info",
    log_format: LogFormat = "text",
    reload: Callable[[], Settings] | None = None,
) -> None:
    """Run the gateway until SIGINT/SIGTERM (then drain, bounded by ``drain_seconds``);
    with ``reload`` (reads the configuration again), SIGHUP reloads it
    (:mod:`tierlm.server.admin`)."""
    import gc

    import uvicorn

    from tierlm.router import Router
    from tierlm.server.limits import rate_limit_logs
    from tierlm.server.metrics import process_exited
    from tierlm.server.oplog import log_config

    router = Router(settings)  # a bad backend is a config error now, not a failed start
    # A long-running server allocates many short-lived objects per request: collect the
    # youngest generation less often (the start-up heap is frozen once loaded).
    gc.set_threshold(10_000, 50, 50)
    app = create_app(
        router, freeze_gc=True, owns_router=True, announce=True, reload=reload, sighup=True
    )
    config = uvicorn_config(
        settings, app, log_config=log_config(log_level, log_format), log_level=log_level
    )
    rate_limit_logs()  # tierlm.access has a handler of its own: it is never held back
    try:
        uvicorn.Server(config).run()
    finally:
        process_exited()


def uvicorn_config(settings: Settings, app: Any, **overrides: Any) -> Any:
    """The uvicorn configuration ``serve`` runs ``app`` with (tests run it on other ports)."""
    import uvicorn

    from tierlm.server.limits import guarded_protocol

    s = settings.server
    options: dict[str, Any] = {
        "host": s.host,
        "port": s.port,
        "lifespan": "on",
        # Measured (bench/bench_gateway.py): the asyncio loop with the httptools parser keeps
        # p99 near p50 under saturation; uvloop gave the same p50 but a p99 10-20x higher.
        "loop": "asyncio",
        # httptools, with a connection cap, a header read timeout and a header size limit
        "http": guarded_protocol(
            max_connections=s.max_connections,
            header_timeout=s.header_timeout,
            max_header_bytes=s.max_header_bytes,
        ),
        "ws": "none",
        "timeout_keep_alive": 5,
        "access_log": False,
        "server_header": False,
        "backlog": 4096,
        "timeout_graceful_shutdown": s.drain_seconds,
        "log_level": os.environ.get("TIERLM_LOG_LEVEL", "info").lower(),
        **overrides,
    }
    return uvicorn.Config(app, **options)


__all__ = ["create_app", "serve", "uvicorn_config"]
