"""Rate limits per API key (issue 14): ``rpm`` and ``tpm`` on each key, answered with 429,
``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers, before routing (a refused request
never reaches an upstream, and the ledger records it).

The official ``openai`` SDK runs unchanged against the live gateway (real app under uvicorn,
recording fake upstream, a SQLite ledger). No test waits on the wall clock: the limiter's
clock is a fake the test owns, and the SDK's retry sleep advances that clock by exactly what
the SDK chose to wait, so the test sees whether it honoured ``Retry-After``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import openai._base_client
import pytest
from starlette.applications import Starlette

from fakes import serve
from fakes.openai_server import make_app
from server_util import settings as gateway_settings
from server_util import sha, upstream_backend
from tierlm.config.settings import ApiKeyConfig
from tierlm.server import create_app
from tierlm.server.ratelimit import RateLimitExceeded, RateLimits, request_cost
from tierlm.types import ChatRequest

KEYS = {"a": "tlm-key-a-0123456789", "b": "tlm-key-b-0123456789", "t": "tlm-key-t-0123456789"}
LIMITS = {"a": {"rpm": 2}, "b": {"rpm": 2}, "t": {"tpm": 100}}
HELLO: list[Any] = [{"role": "user", "content": "Say hello."}]


@dataclass
class Clock:
    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:  # the SDK's retry sleep: time passes, instantly
        self.slept.append(seconds)
        self.now += seconds


@dataclass
class Rig:
    url: str
    app: Starlette
    upstream: Starlette
    clock: Clock

    @property
    def upstream_calls(self) -> int:
        return len(self.upstream.state.requests)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Starlette, Starlette]]:
    tmp: Path = tmp_path_factory.mktemp("ratelimit")
    upstream = make_app()
    keys = [{"name": n, "hash": sha(k), **LIMITS[n]} for n, k in KEYS.items()]
    with serve(upstream) as up:
        s = gateway_settings(
            [upstream_backend("site", up, "plain")],
            [{"name": "site", "backends": ["site"]}],
            server={"api_keys": keys},
            ledger={"url": f"sqlite:///{tmp / 'ledger.sqlite3'}"},
            data_dir=str(tmp),
        )
        app = create_app(s)
        with serve(app, lifespan="on", start_within=60, grace=2) as url:
            yield url, app, upstream


@pytest.fixture
def rig(served: tuple[str, Starlette, Starlette], monkeypatch: pytest.MonkeyPatch) -> Rig:
    """Fresh buckets on a fake clock, and the SDK's retry sleep on the same clock."""
    url, app, upstream = served
    clock = Clock()
    gw = app.state.gateway
    gw.limits = RateLimits(gw.settings.server.api_keys, clock=clock)
    monkeypatch.setattr(openai._base_client, "time", clock)  # the SDK's time.sleep
    upstream.state.requests.clear()
    return Rig(url, app, upstream, clock)


def _client(rig: Rig, key: str, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=rig.url + "/v1", api_key=KEYS[key], max_retries=retries)


def test_sdk_retry_honours_retry_after(rig: Rig) -> None:
    with _client(rig, "a", retries=2) as client:
        raw = client.chat.completions.with_raw_response.create(model="site", messages=HELLO)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == "1"
        assert raw.headers["x-ratelimit-reset-requests"] == "30s"  # 1 of 2 a minute back
        client.chat.completions.create(model="site", messages=HELLO)
        answer = client.chat.completions.create(model="site", messages=HELLO)
    assert answer.choices[0].message.content == "Hello"
    assert rig.clock.slept == [30.0]  # one refusal; the SDK waited exactly what it was told
    assert rig.upstream_calls == 3  # the refused try never reached the upstream


def test_refusal_is_a_429_with_headers_and_a_ledger_record(rig: Rig) -> None:
    with _client(rig, "a") as client:
        for _ in range(2):
            client.chat.completions.create(model="site", messages=HELLO)
        rig.clock.now += 15.0  # half a request back: still short
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="site", messages=HELLO)
    h = refused.value.response.headers
    assert (h["retry-after"], h["retry-after-ms"]) == ("15", "15000")
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert refused.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert rig.upstream_calls == 2
    ledger = rig.app.state.gateway.ledger
    assert ledger.flush(10)
    row = ledger.get_request(h["x-tierlm-request-id"])
    assert row is not None and row["outcome"] == "rate_limit_exceeded"
    assert row["api_key"] == "a"


def test_keys_are_limited_independently(rig: Rig) -> None:
    with _client(rig, "a") as a, _client(rig, "b") as b:
        for _ in range(2):
            a.chat.completions.create(model="site", messages=HELLO)
        with pytest.raises(openai.RateLimitError):
            a.chat.completions.create(model="site", messages=HELLO)
        raw = b.chat.completions.with_raw_response.create(model="site", messages=HELLO)
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert "x-ratelimit-limit-tokens" not in raw.headers  # key b has no token limit


def test_tokens_per_minute_count_the_estimate(rig: Rig) -> None:
    long: list[Any] = [{"role": "user", "content": "Summarise the plant's shift log. " * 4}]
    cost = request_cost(ChatRequest.model_validate({"messages": long}))
    assert 8 < cost < 100  # the estimate, larger than max_tokens below
    with _client(rig, "t") as client:
        raw = client.chat.completions.with_raw_response.create(
            model="site", messages=long, max_tokens=8
        )
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(100 - cost)
        assert "x-ratelimit-limit-requests" not in raw.headers
        with pytest.raises(openai.RateLimitError) as refused:  # max_tokens counts when larger
            client.chat.completions.create(model="site", messages=HELLO, max_tokens=100)
        wait = refused.value.response.headers["retry-after-ms"]
        assert abs(int(wait) - cost * 600) <= 1  # cost tokens back at 100 a minute
        with pytest.raises(openai.BadRequestError) as too_big:  # can never pass
            client.chat.completions.create(model="site", messages=HELLO, max_tokens=101)
    assert "more than API key 't' may use in a minute (100)" in too_big.value.message
    assert rig.upstream_calls == 1


def test_every_wire_format_is_limited(rig: Rig) -> None:
    headers = {"x-api-key": KEYS["a"]}
    body = {"model": "site", "max_tokens": 8, "messages": HELLO, "stream": True}
    ollama = {"model": "site", "messages": HELLO}
    r = httpx.post(rig.url + "/v1/messages", json=body, headers=headers)
    assert r.status_code == 200 and r.headers["x-ratelimit-remaining-requests"] == "1"
    r = httpx.post(rig.url + "/api/chat", json=ollama, headers=headers)
    assert r.status_code == 200 and r.headers["x-ratelimit-remaining-requests"] == "0"
    r = httpx.post(rig.url + "/v1/messages", json=body, headers=headers)
    assert r.status_code == 429 and r.headers["retry-after"] == "30"
    assert r.json()["error"]["type"] == "rate_limit_error"
    r = httpx.post(rig.url + "/api/chat", json=ollama, headers=headers)
    assert r.status_code == 429 and "rate limit" in r.json()["error"]


def test_bucket_refills_continuously() -> None:
    clock = Clock()
    key = ApiKeyConfig(name="k", hash="0" * 64, rpm=60)
    limits = RateLimits([key], clock=clock)
    req = ChatRequest.model_validate({"messages": HELLO})

    async def scenario() -> dict[str, str]:
        for _ in range(60):
            await limits.admit(key, req)
        clock.now += 0.5
        with pytest.raises(RateLimitExceeded, match=r"retry in 0\.500s"):
            await limits.admit(key, req)  # refused: nothing taken
        clock.now += 0.5
        assert (await limits.admit(key, req))["x-ratelimit-remaining-requests"] == "0"
        clock.now += 3600
        return await limits.admit(key, req)  # full again, never more than the limit

    headers = asyncio.run(scenario())
    assert headers["x-ratelimit-remaining-requests"] == "59"
    assert headers["x-ratelimit-reset-requests"] == "1s"
