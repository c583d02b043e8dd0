"""The gateway: OpenAI- and Ollama-compatible HTTP over one Router (``tierlm serve``).

``create_app(router_or_settings)`` gives the ASGI app; ``serve(settings)`` runs it with
uvicorn (the asyncio loop; the httptools parser when installed), bound to ``server.host``
(127.0.0.1 by default), and on SIGTERM stops accepting connections and drains the requests
in flight for at most ``server.drain_seconds`` before it exits.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tierlm.server.app import create_app

if TYPE_CHECKING:
    from tierlm.config.settings import Settings


def serve(settings: Settings) -> None:
    """Run the gateway until SIGINT/SIGTERM (then drain, bounded by ``drain_seconds``)."""
    import gc

    import uvicorn

    from tierlm.router import Router
    from tierlm.server.auth import KeyRing

    s = settings.server
    KeyRing(s.api_keys)  # a bad key hash is a config error now, not a failed start-up
    router = Router(settings)  # so is a bad backend (the app closes the router at shutdown)
    # A long-running server allocates many short-lived objects per request: collect the
    # youngest generation less often (the start-up heap is frozen once loaded).
    gc.set_threshold(10_000, 50, 50)
    config = uvicorn.Config(
        create_app(router, freeze_gc=True, owns_router=True),
        host=s.host,
        port=s.port,
        lifespan="on",
        # Measured (bench/bench_gateway.py): the asyncio loop with the httptools parser keeps
        # p99 near p50 under saturation; uvloop gave the same p50 but a p99 10-20x higher.
        loop="asyncio",
        http="auto",  # httptools when installed, else h11
        access_log=False,
        server_header=False,
        backlog=4096,
        timeout_graceful_shutdown=s.drain_seconds,  # type: ignore[arg-type]  # a float works
        log_level=os.environ.get("TIERLM_LOG_LEVEL", "info").lower(),
    )
    uvicorn.Server(config).run()


__all__ = ["create_app", "serve"]
