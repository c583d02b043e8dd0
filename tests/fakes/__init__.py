"""Real local HTTP servers that speak documented wire formats, for tests.

``serve(app)`` runs an ASGI app under uvicorn in a thread on a free 127.0.0.1 port and yields
its base URL; the server stops when the context exits.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(
    app: Any, *, lifespan: str = "off", start_within: float = 10.0, grace: int = 1
) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 in a thread; yield ``http://127.0.0.1:PORT``."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        log_level="warning",
        lifespan=lifespan,
        ws="none",
        timeout_graceful_shutdown=grace,
    )
    with run_server(config, start_within=start_within) as url:
        yield url


@contextmanager
def run_server(config: uvicorn.Config, *, start_within: float = 10.0) -> Iterator[str]:
    """Run a uvicorn ``config`` (on 127.0.0.1) in a thread until the context exits."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"server-{config.port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_within
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=(config.timeout_graceful_shutdown or 0) + 8)


@contextmanager
def closing_server() -> Iterator[str]:
    """A TCP server that accepts each connection and closes it at once (a reset)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.1)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()
