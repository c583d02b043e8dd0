"""Rate limits shared in Redis (``server.rate_limit_url``): two gateway replicas (real apps
under uvicorn, each its own event loop and Redis client) on one real ``redis-server``
(Debian's, started by the ``redis_url`` fixture) hold one key's limit together under
concurrent load. The replicas' clocks are one fake clock the test owns, so the count is
exact; an unreachable Redis admits requests (fail open).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from fakes import free_port, serve
from fakes.openai_server import make_app
from server_util import settings as gateway_settings
from server_util import sha, upstream_backend
from test_gateway_ratelimit import HELLO, Clock
from tierlm.config.settings import ApiKeyConfig
from tierlm.server import create_app
from tierlm.server.ratelimit import RedisRateLimits
from tierlm.types import ChatRequest

KEY = "tlm-key-shared-0123456789"
OTHER = "tlm-key-other-0123456789"


@pytest.fixture
def replicas(redis_url: str) -> Iterator[tuple[list[str], Starlette, Clock]]:
    upstream = make_app()
    clock = Clock()
    keys = [
        {"name": "shared", "hash": sha(KEY), "rpm": 10},
        {"name": "other", "hash": sha(OTHER), "rpm": 10},
    ]
    with ExitStack() as stack:
        up = stack.enter_context(serve(upstream))
        s = gateway_settings(
            [upstream_backend("site", up, "plain")],
            [{"name": "site", "backends": ["site"]}],
            server={"api_keys": keys, "rate_limit_url": redis_url},
        )
        urls = []
        prefix = f"test-{uuid.uuid4().hex}:"  # this test's buckets only
        for _ in range(2):
            app = create_app(s)
            urls.append(stack.enter_context(serve(app, lifespan="on", start_within=60, grace=2)))
            limits = app.state.gateway.limits
            assert isinstance(limits, RedisRateLimits)
            limits.clock, limits.prefix = clock, prefix
        yield urls, upstream, clock


def _post(url: str, key: str) -> httpx.Response:
    body = {"model": "site", "messages": HELLO}
    return httpx.post(
        url + "/v1/chat/completions", json=body, timeout=30, headers={"x-api-key": key}
    )


def test_two_replicas_share_one_limit(replicas: tuple[list[str], Starlette, Clock]) -> None:
    urls, upstream, clock = replicas
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _post(urls[i % 2], KEY), range(30)))
    statuses = [r.status_code for r in answers]
    assert statuses.count(200) == 10 and statuses.count(429) == 20
    assert {r.headers["retry-after"] for r in answers if r.status_code == 429} == {"6"}
    assert len(upstream.state.requests) == 10  # refused requests never reached it
    ok = {r.headers["x-ratelimit-remaining-requests"] for r in answers if r.status_code == 200}
    assert ok == {str(n) for n in range(10)}  # each admitted request saw its own level
    assert _post(urls[0], OTHER).status_code == 200  # another key: its own bucket
    clock.now += 6.0  # one request back, on either replica
    assert _post(urls[1], KEY).status_code == 200
    assert _post(urls[0], KEY).status_code == 429


def test_unreachable_redis_admits_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    key = ApiKeyConfig(name="k", hash="0" * 64, rpm=1)
    limits = RedisRateLimits([key], f"redis://127.0.0.1:{free_port()}/0")
    req = ChatRequest.model_validate({"messages": HELLO})

    async def twice() -> list[Any]:
        try:
            return [await limits.admit(key, req) for _ in range(2)]
        finally:
            await limits.aclose()

    assert asyncio.run(twice()) == [{}, {}]
    assert "Redis unreachable" in caplog.text
