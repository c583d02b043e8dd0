"""The circuit breaker and the retry policy on their own (fake clock), and the executor's own
guards over in-memory backends that have no deadlines of their own."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from tierlm.backends.base import Backend
from tierlm.backends.function import Answer, FunctionBackend, FunctionInfo
from tierlm.config.settings import Timeouts
from tierlm.errors import (
    AllAttemptsFailed,
    BackendBadRequest,
    BackendError,
    BackendTimeout,
    ContextLengthExceeded,
    Overloaded,
    ProtocolError,
    RateLimited,
    ServerError,
)
from tierlm.execute import (
    BreakerBoard,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    Executor,
    RetryPolicy,
    RoutedStream,
)
from tierlm.ledger.records import AttemptRecord
from tierlm.types import Candidate, ChatRequest, Plan, StreamEvent


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------- breaker


def test_opens_after_threshold_consecutive_failures() -> None:
    clock = FakeClock()
    b = CircuitBreaker("x", BreakerConfig(threshold=3, cooldown=10), clock)
    b.failure()
    b.failure()
    b.success()  # a success resets the count: failures must be consecutive
    b.failure()
    b.failure()
    assert b.state is BreakerState.CLOSED and b.allow()
    b.failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    assert b.retry_in() == pytest.approx(10.0)


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    b = CircuitBreaker("x", BreakerConfig(threshold=1, cooldown=5), clock)
    b.failure()
    clock.now += 4.9
    assert not b.allow()
    clock.now += 0.2
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()  # the probe
    assert not b.allow() and not b.allow()  # everyone else still waits
    b.success()
    assert b.state is BreakerState.CLOSED
    assert b.allow() and b.allow()
    assert [s for _, s in b.transitions] == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_failed_probe_reopens_for_a_new_cooldown() -> None:
    clock = FakeClock()
    b = CircuitBreaker("x", BreakerConfig(threshold=2, cooldown=5), clock)
    b.failure()
    b.failure()
    clock.now += 5
    assert b.allow()
    b.failure()
    assert b.state is BreakerState.OPEN
    clock.now += 4
    assert not b.allow()
    clock.now += 1
    assert b.allow()


def test_released_probe_slot_can_be_taken_again() -> None:
    clock = FakeClock()
    b = CircuitBreaker("x", BreakerConfig(threshold=1, cooldown=1), clock)
    b.failure()
    clock.now += 1
    assert b.allow()
    b.release()  # the caller went away: no verdict
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()


def test_hold_for_keeps_the_breaker_open_as_asked() -> None:
    clock = FakeClock()
    b = CircuitBreaker("x", BreakerConfig(threshold=5, cooldown=1), clock)
    b.hold_for(30)  # Retry-After: 30, on the first failure
    assert b.state is BreakerState.OPEN and b.retry_in() == pytest.approx(30)
    b.hold_for(5)  # a shorter request does not shorten the pause
    clock.now += 29
    assert not b.allow()
    clock.now += 1
    assert b.allow()  # then one probe, as usual
    b.success()
    assert b.state is BreakerState.CLOSED


def test_board_keeps_one_breaker_per_backend() -> None:
    board = BreakerBoard(BreakerConfig(threshold=1), FakeClock())
    board["a"].failure()
    assert board["a"] is board["a"]
    assert board.states() == {"a": "open"}
    assert board["b"].state is BreakerState.CLOSED


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="threshold"):
        BreakerConfig(threshold=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(max_retries=-1)


# ---------------------------------------------------------------------------- retry policy


def test_backoff_is_bounded_full_jitter() -> None:
    policy = RetryPolicy(max_retries=3, base_delay=0.5, max_delay=1.5, rng=random.Random(1))
    err = ServerError("boom")
    for n, cap in ((0, 0.5), (1, 1.0), (2, 1.5)):
        waits = [policy.delay(err, n, remaining=100.0) for _ in range(200)]
        assert all(w is not None and 0.0 <= w <= cap for w in waits)
        assert max(w for w in waits if w is not None) > cap * 0.8  # jitter spans the range
    assert policy.delay(err, 3, remaining=100.0) is None  # retries are bounded


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    policy = RetryPolicy(retry_after_cap=5.0)
    assert policy.delay(RateLimited("slow down", retry_after=2.0), 0, remaining=60) == 2.0
    assert policy.delay(RateLimited("slow down", retry_after=7.0), 0, remaining=60) is None
    assert policy.delay(RateLimited("slow down", retry_after=2.0), 0, remaining=1.5) is None


@pytest.mark.parametrize(
    "err",
    [BackendTimeout("t"), ProtocolError("p"), ContextLengthExceeded("c"), BackendBadRequest("b")],
)
def test_no_retry_on_the_same_backend_for(err: BackendError) -> None:
    assert RetryPolicy().delay(err, 0, remaining=60) is None


# ---------------------------------------------------------------------------- executor guards


def scripted(name: str, script: list[str], timeouts: Timeouts) -> FunctionBackend:
    """An in-memory backend that plays a script: one entry per call (the last repeats)."""
    steps = list(script)

    async def answer(request: ChatRequest, info: FunctionInfo) -> Answer:
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if step == "hang":
            await asyncio.sleep(3600)
        if step == "503":
            raise Overloaded("busy", upstream_status=503)
        if step == "ctx":
            raise ContextLengthExceeded("too long", upstream_status=400)
        return _events(step) if info.stream else "ok"

    return FunctionBackend(
        answer, name=name, model=f"{name}-model", boundary="site", timeouts=timeouts
    )


async def _events(step: str) -> AsyncIterator[StreamEvent]:
    if step == "error_first":
        yield StreamEvent(finish_reason="error")  # failed before any token
        return
    yield StreamEvent(text="a")
    if step == "stall":
        await asyncio.sleep(3600)
    if step == "end":
        return  # ends without a final event
    if step == "error":
        yield StreamEvent(finish_reason="error")  # a backend saying it failed mid-answer
        return
    yield StreamEvent(text="b")
    yield StreamEvent(finish_reason="stop")  # no usage: the executor estimates


FAST = Timeouts(connect=0.1, first_token=0.3, stall=0.2, total=5.0)
# Per-chunk deadlines only: a test that reached `total` would hit its hang guard first.
NO_TOTAL = Timeouts(connect=0.1, first_token=0.3, stall=0.2, total=3600.0)
HANG_GUARD = 30.0  # seconds; far above every deadline under test, so never a margin


def _executor(*backends: Backend, threshold: int = 3) -> tuple[Executor, Plan]:
    ex = Executor(
        {b.name: b for b in backends},
        retry=RetryPolicy(base_delay=0.01, max_delay=0.02),
        breakers=BreakerConfig(threshold=threshold, cooldown=60),
    )
    plan = Plan(candidates=[Candidate(b.name, "t", b.boundary) for b in backends])
    return ex, plan


async def _stream_text(rs: RoutedStream) -> tuple[str, StreamEvent | None, Exception | None]:
    text, final, error = "", None, None
    try:
        async for ev in rs:
            text += ev.text
            final = ev if ev.finish_reason else final
    except (AllAttemptsFailed, ProtocolError) as e:
        error = e
    return text, final, error


@pytest.mark.parametrize("step", ["hang", "error_first", "stall", "end", "error"])
async def test_executor_deadlines_guard_any_backend(step: str) -> None:
    """No adapter deadlines here: the executor alone must stop a hang, a stall or a stream
    that just ends, and rescue the answer on the next candidate."""
    bad, good = scripted("bad", [step], NO_TOTAL), scripted("good", ["ok"], FAST)
    ex, plan = _executor(bad, good)
    rs = ex.stream(ChatRequest.from_prompt("hi"), plan)
    async with asyncio.timeout(HANG_GUARD):  # the first-token / stall limits fire, or we hang
        text, final, error = await _stream_text(rs)
    assert error is None and final is not None
    # A hang or an error before the first token fails over silently (nothing was committed);
    # after "a" was sent the answer is continued by "good", which starts again ("ab"): the
    # repeated "a" is dropped, so the caller gets the answer once.
    before_commit = step in ("hang", "error_first")
    assert text == "ab"
    assert rs.continued is not before_commit
    assert rs.backend == "good"
    assert rs.ttft_ms is not None
    assert final.usage is not None and final.usage.completion_tokens > 0  # estimated
    assert bad.calls == 1


async def test_complete_total_timeout_of_any_backend() -> None:
    bad = scripted("bad", ["hang"], Timeouts(first_token=0.3, stall=0.2, total=1.0))
    ex, plan = _executor(bad, scripted("good", ["ok"], FAST))
    attempts: list[AttemptRecord] = []
    async with asyncio.timeout(HANG_GUARD):
        resp = await ex.complete(ChatRequest.from_prompt("hi"), plan, attempts)
    assert resp.backend == "good"
    assert [a.outcome for a in attempts] == ["backend_timeout", "ok"]
    assert attempts[0].latency_ms >= 990.0  # `total` (1 s) ended it, not an earlier limit


async def test_concurrent_requests_send_one_probe() -> None:
    clock = FakeClock()
    bad = scripted("bad", ["503", "hang"], Timeouts(first_token=0.3, stall=0.2, total=0.5))
    good = scripted("good", ["ok"], FAST)
    ex = Executor(
        {"bad": bad, "good": good},
        retry=RetryPolicy(max_retries=0),
        breakers=BreakerConfig(threshold=1, cooldown=10),
        clock=clock,
    )
    plan = Plan(
        candidates=[Candidate("bad", "t", bad.boundary), Candidate("good", "t", good.boundary)]
    )
    await ex.complete(ChatRequest.from_prompt("hi"), plan)
    assert bad.calls == 1 and ex.breakers["bad"].state is BreakerState.OPEN
    clock.now += 10
    answers = await asyncio.gather(
        *(ex.complete(ChatRequest.from_prompt("hi"), plan) for _ in range(5))
    )
    assert bad.calls == 2  # one probe (which hung and timed out), four skipped
    assert all(a.backend == "good" for a in answers)
    assert ex.breakers["bad"].state is BreakerState.OPEN


async def test_caller_errors_do_not_open_the_breaker() -> None:
    bad = scripted("bad", ["ctx"], FAST)
    ex, plan = _executor(bad, threshold=1)
    for _ in range(3):
        with pytest.raises(AllAttemptsFailed) as info:
            await ex.complete(ChatRequest.from_prompt("hi"), plan)
        assert info.value.code == "context_length_exceeded"
    assert bad.calls == 3
    assert ex.breakers["bad"].state is BreakerState.CLOSED
