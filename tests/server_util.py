"""Helpers for the gateway tests: run ``create_app`` under uvicorn in a thread (lifespan on),
and build settings whose tiers point at the fake OpenAI-wire upstream and the tiny model."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from fakes import free_port
from tierlm.config.settings import Settings
from tierlm.server import create_app

USER_KEY = "tlm-test-user-key-0123456789"
ADMIN_KEY = "tlm-test-admin-key-0123456789"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@contextmanager
def serve_gateway(settings: Settings) -> Iterator[str]:
    """``tierlm serve`` in a thread: the real app and lifespan on 127.0.0.1; yield its URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"gateway-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def upstream_backend(name: str, upstream: str, scenario: str, **kw: Any) -> dict[str, Any]:
    """A backend on the fake upstream; ``scenario`` (its model) picks the fake's behaviour."""
    return {
        "name": name,
        "kind": "openai",
        "url": upstream + "/v1",
        "model": scenario,
        "boundary": "site",
        "tools": True,
        "timeouts": {"connect": 1.0, "first_token": 10.0},
        **kw,
    }


def settings(backends: list[dict[str, Any]], tiers: list[dict[str, Any]], **extra: Any) -> Settings:
    return Settings.model_validate(
        {
            "deployment": "test",
            "backends": backends,
            "tiers": tiers,
            "ledger": {"url": "off"},
            "routing": {"complexity_method": "length"},
            **extra,
        }
    )
