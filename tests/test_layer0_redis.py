"""The answer cache shared through Redis by two gateway processes (``tierlm serve`` twice, one
config, a real ``redis-server``): an answer one replica stored is served by the other; a
private answer stays in the process that produced it; clearing one clears the shared store.
A Redis that is down or hung never takes a gateway down: its lookups miss."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from fakes import free_port, serve
from fakes.openai_server import make_app
from server_util import serve_gateway, settings, start_serve, upstream_backend
from tierlm.layer0.store import RETRY_AFTER, RedisStore


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
        procs = [start_serve(cfg, tmp) for _ in range(2)]
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


def test_a_stream_is_served_what_the_other_replica_stored(replicas: list[str]) -> None:
    a, b = replicas
    assert _ask(a, "What is the melting point of zinc?") == "miss"
    ask = [{"role": "user", "content": "What is the melting point of zinc?"}]
    body = {"temperature": 0, "stream": True, "messages": ask}
    with httpx.stream("POST", b + "/v1/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200 and r.headers["x-tierlm-cache"] == "hit-exact"
        assert "[DONE]" in r.read().decode()


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


@pytest.fixture
def silent_redis() -> Iterator[tuple[str, list[socket.socket]]]:
    """A TCP server that accepts connections and never answers (a hung Redis): its URL and
    the connections it accepted."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            while True:
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0", accepted
    finally:
        server.close()
        for conn in accepted:
            conn.close()
        thread.join(timeout=5)


def test_a_hung_redis_is_a_miss_then_left_alone_for_a_while(
    silent_redis: tuple[str, list[socket.socket]], caplog: pytest.LogCaptureFixture
) -> None:
    url, accepted = silent_redis
    now = [100.0]
    store = RedisStore(url, ttl=60, clock=lambda: now[0])

    async def run() -> None:
        try:
            assert await store.get("k") is None  # after the 0.5 s timeout
            assert store.failures == 1 and len(accepted) == 1
            assert "answer cache: redis store unreachable" in caplog.text
            await store.put("k", b"v")
            assert await store.get("k") is None  # paused: neither call went to Redis
            assert store.failures == 1 and len(accepted) == 1
            now[0] += RETRY_AFTER
            assert await store.get("k") is None  # tried again after the pause
            assert store.failures == 2
        finally:
            await store.aclose()

    asyncio.run(run())


def test_a_gateway_answers_when_its_redis_cache_is_down() -> None:
    with serve(make_app()) as upstream:
        s = settings(
            [upstream_backend("site", upstream, "plain")],
            [{"name": "site", "backends": ["site"]}],
            cache={"store": "redis", "redis_url": f"redis://127.0.0.1:{free_port()}/0"},
        )
        with serve_gateway(s) as url:
            assert _ask(url, "What is the melting point of zinc?") == "miss"
            assert _ask(url, "What is the melting point of zinc?") == "miss"
