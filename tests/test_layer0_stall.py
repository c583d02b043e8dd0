"""A hung or locked shared cache store never stalls the gateway's event loop.

A real gateway (uvicorn in a thread) with its answer cache in a real ``redis-server`` behind a
:class:`~stall_proxy.StallProxy`, or in a SQLite file that another connection holds locked. While
one chat request waits on the stalled store, ``/health`` is asked again and again until the chat
request is answered: the slowest ``/health`` answer shows whether the event loop was blocked
(before the fix: the Redis client's 1 s socket timeout, SQLite's 5 s busy timeout). The chat
request itself is answered by the model (a cache miss), not with an error.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from server_util import fake_openai_upstream, serve_gateway, settings, upstream_backend
from stall_proxy import StallProxy
from tierlm.errors import BackendUnavailable
from tierlm.layer0.store import RETRY_AFTER, RedisStore

BLOCKED = 0.5  # a /health slower than this waited on the store (it answers in milliseconds)


@pytest.fixture
def proxy(redis_url: str) -> Iterator[StallProxy]:
    p = StallProxy(urlsplit(redis_url).port or 6379)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def upstream() -> Iterator[Any]:
    with fake_openai_upstream() as app:
        yield app


def _gateway(upstream: Any, cache: dict[str, Any], tmp_path: Path) -> Any:
    backend = upstream_backend("site", upstream.state.url, "plain")
    s = settings([backend], [{"name": "site", "backends": ["site"]}], cache=cache)
    s.data_dir = str(tmp_path)
    return serve_gateway(s)


def _ask(url: str, text: str) -> httpx.Response:
    body = {"temperature": 0, "messages": [{"role": "user", "content": text}]}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def _slowest_health_while(url: str, chat: Future[httpx.Response]) -> float:
    """Ask ``/health`` until ``chat`` is answered; the slowest answer's seconds."""
    worst = 0.0
    with httpx.Client(timeout=30) as client:
        while True:
            t0 = time.perf_counter()
            assert client.get(url + "/health").status_code == 200
            worst = max(worst, time.perf_counter() - t0)
            if chat.done():
                return worst


def _stalled_request(url: str, text: str) -> tuple[float, httpx.Response]:
    with ThreadPoolExecutor(1) as pool:
        chat = pool.submit(_ask, url, text)
        worst = _slowest_health_while(url, chat)
        return worst, chat.result()


def test_a_hung_redis_neither_stalls_the_loop_nor_fails_the_request(
    proxy: StallProxy, upstream: Any, tmp_path: Path
) -> None:
    cache = {"store": "redis", "redis_url": f"redis://127.0.0.1:{proxy.port}/0"}
    with _gateway(upstream, cache, tmp_path) as url:
        first = _ask(url, "What is the boiling point of mercury?")
        assert first.headers["x-tierlm-cache"] == "miss"
        again = _ask(url, "What is the boiling point of mercury?")
        assert again.headers["x-tierlm-cache"] == "hit-exact"  # from Redis, through the proxy
        proxy.stall()
        worst, resp = _stalled_request(url, "What is the boiling point of gallium?")
        assert worst < BLOCKED, f"/health waited {worst:.2f} s on the hung Redis"
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-tierlm-cache"] == "miss"
        worst, resp = _stalled_request(url, "What is the boiling point of mercury?")
        assert worst < BLOCKED and resp.status_code == 200
        assert resp.headers["x-tierlm-cache"] == "miss"  # Redis is down: a miss, answered
        proxy.flow()


def test_a_locked_sqlite_cache_neither_stalls_the_loop_nor_fails_the_request(
    upstream: Any, tmp_path: Path
) -> None:
    path = tmp_path / "cache.sqlite3"
    with _gateway(upstream, {"store": "sqlite", "path": str(path)}, tmp_path) as url:
        assert _ask(url, "What is the boiling point of lead?").headers["x-tierlm-cache"] == "miss"
        lock = sqlite3.connect(path, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")  # another process writing: every write waits
            worst, resp = _stalled_request(url, "What is the boiling point of tin?")
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert worst < BLOCKED, f"/health waited {worst:.2f} s on the locked SQLite file"
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-tierlm-cache"] == "miss"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_store_is_left_alone_for_a_while_then_tried_again(
    proxy: StallProxy, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    store = RedisStore(url, 60.0, prefix=f"stall-{time.time_ns()}:", timeout=0.2, clock=clock)

    async def run() -> None:
        await store.put("k", b"v")
        assert await store.get("k") == b"v"
        proxy.stall()
        with caplog.at_level(logging.WARNING, logger="tierlm.layer0.store"):
            assert await asyncio.gather(*(store.get("k") for _ in range(3))) == [None] * 3
        assert store.failures == 3 and not store.available
        assert [r.levelname for r in caplog.records] == ["WARNING"]  # one line for the pause
        assert "redis store unreachable on read" in caplog.records[0].getMessage()
        t0 = time.perf_counter()
        assert await store.get("k") is None  # not even tried
        await store.put("k2", b"w")
        assert time.perf_counter() - t0 < store.timeout and store.failures == 3
        assert "error" in await store.stats()  # the admin calls say so
        with pytest.raises(BackendUnavailable, match="redis cache store"):
            await store.clear()
        proxy.flow()
        clock.now += RETRY_AFTER
        assert store.available and await store.get("k") == b"v"
        assert await store.get("k2") is None  # skipped while it was left alone
        assert (await store.stats())["entries"] == 1
        await store.aclose()

    asyncio.run(run())
