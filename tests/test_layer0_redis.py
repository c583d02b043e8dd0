"""The answer cache shared through Redis by two gateway processes (``tierlm serve`` twice, one
config, a real ``redis-server``): an answer one replica stored is served by the other; a
private answer stays in the process that produced it; clearing one clears the shared store."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fakes import free_port, serve
from fakes.openai_server import make_app
from server_util import upstream_backend

RUN = "from tierlm.cli.main import main; main()"


def _start(cfg: dict[str, Any], tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    path = tmp / f"gw-{port}.yaml"
    path.write_text(yaml.safe_dump({**cfg, "server": {"port": port}}))
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN, "serve", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # wait for the replica to answer its health check
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def replicas(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    tmp = tmp_path_factory.mktemp("redis")
    with serve(make_app()) as upstream:
        cfg = {
            "backends": [upstream_backend("site", upstream, "plain")],
            "tiers": [{"name": "site", "backends": ["site"]}],
            "routing": {"complexity_method": "length"},
            "ledger": {"url": "off"},
            "data_dir": str(tmp),
            "cache": {"store": "redis", "redis_url": redis_url},
        }
        procs = [_start(cfg, tmp) for _ in range(2)]
        try:
            yield [url for _, url in procs]
        finally:
            for p, _ in procs:
                p.terminate()
                p.wait(timeout=20)


def _ask(url: str, text: str, **headers: str) -> str:
    r = httpx.post(
        url + "/v1/chat/completions",
        json={"temperature": 0, "messages": [{"role": "user", "content": text}]},
        headers=headers,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.headers["x-tierlm-cache"]


def test_one_replica_serves_what_the_other_stored(replicas: list[str]) -> None:
    a, b = replicas
    assert _ask(a, "What is the melting point of iron?") == "miss"
    assert _ask(b, "What is the melting point of iron?") == "hit-exact"
    assert _ask(a, "What is the melting point of iron?") == "hit-exact"


def test_private_answers_stay_in_their_replica(replicas: list[str]) -> None:
    a, b = replicas
    hint = {"x-tierlm-privacy": "private"}
    assert _ask(a, "What is the melting point of lead?", **hint) == "miss"
    assert _ask(a, "What is the melting point of lead?", **hint) == "hit-exact"
    assert _ask(b, "What is the melting point of lead?", **hint) == "miss"


def test_clearing_one_replica_clears_the_shared_store(replicas: list[str]) -> None:
    a, b = replicas
    _ask(a, "What is the melting point of tin?")
    stats = httpx.get(b + "/admin/cache", timeout=5).json()
    assert stats["stores"][1]["store"] == "redis" and stats["stores"][1]["entries"] >= 1
    assert httpx.delete(b + "/admin/cache", timeout=5).json()["cleared"] >= 1
    assert _ask(a, "What is the melting point of tin?") == "miss"
