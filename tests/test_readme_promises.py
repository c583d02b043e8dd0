"""README promises, pinned: each test fails when the promise it names breaks.

- Resilience: "5 consecutive upstream failures open [a backend's breaker] for 30 s; one probe
  is then let through" and "`Retry-After` is honoured up to 5 s, and a longer one moves on at
  once and pauses that backend for as long as it asked". The executor is built with its
  defaults (as the Router builds it) and driven with a test clock and a recording sleep:
  nothing here waits for real.
- Hints: "Routing hints ride in a `tierlm` body object or `x-tierlm-*` headers", on the
  Ollama API too: a valid hint header changes the route.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import httpx
import pytest

from fakes import serve
from fakes.openai_server import make_app
from server_util import serve_gateway, settings, upstream_backend
from tierlm import Router
from tierlm.backends.function import FunctionBackend, FunctionInfo
from tierlm.config import load_settings
from tierlm.errors import BackendError, BackendTimeout, Overloaded, RateLimited
from tierlm.execute import BreakerConfig, BreakerState, CircuitBreaker, Executor, RetryPolicy
from tierlm.types import Boundary, Candidate, ChatRequest, Plan


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def upstream(name: str, errors: list[BackendError] | None = None) -> FunctionBackend:
    """An in-memory backend that fails with ``errors`` (one a call, in order), then answers."""
    left = list(errors or [])

    def answer(request: ChatRequest, info: FunctionInfo) -> str:
        if left:
            raise left.pop(0)
        return "ok"

    return FunctionBackend(answer, name=name, model=name, boundary="site")


def _plan(*names: str) -> Plan:
    return Plan(candidates=[Candidate(n, "t", Boundary.SITE) for n in names])


def test_the_router_runs_its_executor_with_the_documented_defaults() -> None:
    assert BreakerConfig() == BreakerConfig(threshold=5, cooldown=30.0)
    assert RetryPolicy().retry_after_cap == 5.0
    with Router(load_settings(env={})) as router:
        assert router.executor.breakers.config == BreakerConfig()
        assert router.executor.retry.retry_after_cap == RetryPolicy().retry_after_cap


async def test_five_failures_open_the_breaker_for_thirty_seconds() -> None:
    clock = Clock()
    flaky = upstream("flaky", [BackendTimeout("slow", backend="flaky") for _ in range(20)])
    spare = upstream("spare")
    ex = Executor({"flaky": flaky, "spare": spare}, clock=clock)
    plan = _plan("flaky", "spare")

    async def ask() -> str:
        return (await ex.complete(ChatRequest.from_prompt("hi"), plan)).model

    for _ in range(5):
        assert await ask() == "spare"
    assert flaky.calls == 5 and ex.breakers["flaky"].state is BreakerState.OPEN
    assert await ask() == "spare" and flaky.calls == 5  # open: skipped
    clock.now += 29.9
    assert await ask() == "spare" and flaky.calls == 5  # still open at 29.9 s
    clock.now += 0.2
    assert await ask() == "spare" and flaky.calls == 6  # 30 s: one probe goes
    assert ex.breakers["flaky"].state is BreakerState.OPEN  # it failed: open again


async def test_four_failures_do_not_open_it() -> None:
    flaky = upstream("flaky", [BackendTimeout("slow", backend="flaky") for _ in range(4)])
    ex = Executor({"flaky": flaky, "spare": upstream("spare")}, clock=Clock())
    for _ in range(4):
        await ex.complete(ChatRequest.from_prompt("hi"), _plan("flaky", "spare"))
    assert ex.breakers["flaky"].state is BreakerState.CLOSED
    resp = await ex.complete(ChatRequest.from_prompt("hi"), _plan("flaky", "spare"))
    assert resp.model == "flaky" and flaky.calls == 5


@pytest.mark.parametrize(("asked", "waited"), [(5.0, True), (5.01, False)])
async def test_retry_after_is_waited_up_to_five_seconds(asked: float, waited: bool) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    clock = Clock()
    limited = upstream("limited", [RateLimited("slow down", backend="limited", retry_after=asked)])
    ex = Executor({"limited": limited, "spare": upstream("spare")}, clock=clock, sleep=sleep)
    resp = await ex.complete(ChatRequest.from_prompt("hi"), _plan("limited", "spare"))
    if waited:
        assert (waits, resp.model, limited.calls) == ([asked], "limited", 2)
    else:  # moved on at once, and the backend is paused for as long as it asked
        assert (waits, resp.model, limited.calls) == ([], "spare", 1)
        breaker = ex.breakers["limited"]
        assert breaker.state is BreakerState.OPEN
        assert breaker.retry_in() == pytest.approx(asked)


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    with serve(make_app()) as url:
        s = settings(
            [upstream_backend("small", url, "ok"), upstream_backend("big", url, "ok")],
            [
                {"name": "near", "backends": ["small"], "strength": 1.0},
                {"name": "far", "backends": ["big"], "strength": 1.0},
            ],
        )
        with serve_gateway(s) as base:
            yield base


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/api/generate", {"prompt": "hi"}),
    ],
)
@pytest.mark.parametrize("hint", [{"x-tierlm-tier-floor": "far"}, {"x-tierlm-optimize": "quality"}])
def test_ollama_api_routes_by_hint_headers(
    gateway: str, path: str, body: dict[str, object], hint: dict[str, str]
) -> None:
    req = {"model": "auto", "stream": False, **body}
    plain = httpx.post(gateway + path, json=req, timeout=30)
    hinted = httpx.post(gateway + path, json=req, headers=hint, timeout=30)
    assert plain.status_code == hinted.status_code == 200, hinted.text
    assert plain.headers["x-tierlm-tier"] == "near"
    assert hinted.headers["x-tierlm-tier"] == "far"


def test_a_breaker_that_recovered_lets_the_next_probe_through() -> None:
    """Open → probe succeeds → closed; when it opens again, the next cool-down ends with a
    probe again."""

    clock = Clock()
    b = CircuitBreaker("x", clock=clock)
    assert b.retry_in() == 0.0
    for _ in range(5):
        b.failure()
    clock.now += 30.0
    assert b.allow()  # the probe
    b.success()
    assert b.state is BreakerState.CLOSED
    for _ in range(5):
        b.failure()
    assert b.state is BreakerState.OPEN and b.retry_in() == pytest.approx(30.0)
    clock.now += 30.0
    assert b.allow(), "the second cool-down must end with a probe too"


def test_backoff_never_outlasts_the_time_left() -> None:
    policy = RetryPolicy(base_delay=10.0, max_delay=10.0, rng=random.Random(1))
    err = BackendTimeout("t")
    assert policy.delay(RateLimited("r", retry_after=0), 0, remaining=60) == 0.0
    assert policy.delay(RateLimited("r", retry_after=3.0), 0, remaining=3.0) is None
    assert policy.delay(err, 0, remaining=60) is None  # a timeout moves on: not transient
    assert policy.delay(Overloaded("busy"), 0, remaining=0.001) is None
