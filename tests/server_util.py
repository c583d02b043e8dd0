"""Helpers for the gateway tests: run ``create_app`` under uvicorn in a thread (lifespan on),
or ``tierlm serve`` as a process of its own (``start_serve``), and build settings whose tiers
point at the fake OpenAI-wire upstream and the tiny model."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from fakes import free_port, serve
from fakes.openai_server import make_app
from tierlm.config.settings import Settings
from tierlm.server import create_app

SERVE = "from tierlm.cli.main import main; main()"
USER_KEY = "tlm-test-user-key-0123456789"
ADMIN_KEY = "tlm-test-admin-key-0123456789"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@contextmanager
def serve_gateway(settings: Settings) -> Iterator[str]:
    """``tierlm serve`` in a thread: the real app and lifespan on 127.0.0.1; yield its URL."""
    with serve(create_app(settings), lifespan="on", start_within=60, grace=2) as url:
        yield url


@contextmanager
def fake_openai_upstream() -> Iterator[Any]:
    """The fake OpenAI-wire upstream on 127.0.0.1; its URL in ``app.state.url``."""
    app = make_app()
    with serve(app) as url:
        app.state.url = url
        yield app


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


@contextmanager
def serve_hardened(settings: Settings) -> Iterator[str]:
    """The gateway as ``tierlm serve`` configures uvicorn (connection cap, header timeout
    and size limit), on a free port in a thread; yield its URL."""
    from fakes import free_port, run_server
    from tierlm.server import uvicorn_config

    config = uvicorn_config(
        settings,
        create_app(settings),
        host="127.0.0.1",
        port=free_port(),
        log_level="warning",
        timeout_graceful_shutdown=2,
    )
    with run_server(config, start_within=60) as url:
        yield url


def start_serve(
    cfg: dict[str, Any], tmp: Path, *, start_within: float = 60.0
) -> tuple[subprocess.Popen[bytes], str]:
    """``tierlm serve --config`` in a process of its own on a free port (``cfg`` plus that
    port; its output in ``tmp/gw-PORT.log``), once it answers ``/health``: the process and
    its URL. The caller stops it."""
    port = free_port()
    path = tmp / f"gw-{port}.yaml"
    path.write_text(yaml.safe_dump({**cfg, "server": {**cfg.get("server", {}), "port": port}}))
    with (tmp / f"gw-{port}.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, "serve", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + start_within
    while True:  # wait for the replica to answer its health check
        if proc.poll() is not None:
            log = (tmp / f"gw-{port}.log").read_text(errors="replace")
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
