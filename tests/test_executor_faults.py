"""Fault injection: a misbehaving upstream on 127.0.0.1 and a healthy fallback, real HTTP.

Every scenario asserts the same three things: the caller gets the complete answer or a clear
error within a bounded time (a hang guard, not a performance check), a truncated answer is
never presented as a success, and the misbehaving upstream is never hammered (its request
count is bounded). Timeouts are small (first token 1 s, stall 0.5 s, total 3 s) so a "first
token after 20 s" upstream fails over after about a second.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from fakes.faulty_upstream import FaultyUpstream, Scenario, expected_text, openai_error, word
from tierlm.backends.openai_compat import OpenAIBackend
from tierlm.config.backends import OpenAIConfig
from tierlm.config.settings import Timeouts
from tierlm.errors import (
    AllAttemptsFailed,
    BudgetExceeded,
    NoEligibleBackend,
    ProtocolError,
    TierlmError,
)
from tierlm.execute import BreakerConfig, BreakerState, ExecutionHooks, Executor, RetryPolicy
from tierlm.execute.rescue import CONTINUE_INSTRUCTION
from tierlm.ledger.records import AttemptRecord
from tierlm.types import Boundary, Candidate, ChatRequest, Plan, Privacy, StreamEvent, Usage

FAST = Timeouts(connect=0.5, first_token=1.0, stall=0.5, total=3.0)
HANG_GUARD = 10.0  # seconds: any scenario taking longer is a hang
FULL = expected_text(60)
PROMPT = "say the words"

RATE_LIMIT = openai_error("Rate limit reached for requests", "requests", "rate_limit_exceeded")
OVERLOADED = openai_error("The engine is currently overloaded", "server_error", None)
SERVER = openai_error("The server had an error", "server_error", None)
CONTEXT = openai_error(
    "This model's maximum context length is 4096 tokens. However, your "
    "messages resulted in 9000 tokens.",
    "invalid_request_error",
    "context_length_exceeded",
)
POLICY = openai_error(
    "Your request was rejected as a result of our safety system.",
    "invalid_request_error",
    "content_policy_violation",
)


@dataclass
class Outcome:
    """What the caller saw: an answer or an error, and how long it took."""

    text: str = ""
    final: StreamEvent | None = None
    error: TierlmError | None = None
    elapsed: float = 0.0
    backend: str | None = None
    model: str | None = None
    usage: Usage | None = None
    continued: bool = False
    attempts: list[AttemptRecord] = field(default_factory=list)

    @property
    def outcomes(self) -> list[str]:
        return [a.outcome for a in self.attempts]

    def assert_complete(self, text: str = FULL) -> None:
        assert self.error is None, f"expected an answer, got {self.error!r}"
        assert self.text == text
        assert self.elapsed < HANG_GUARD


class Rig:
    """Backends on the faulty upstream(s), a plan over them and an executor."""

    def __init__(self, up: FaultyUpstream) -> None:
        self.up = up
        self.backends: dict[str, OpenAIBackend] = {}
        self.candidates: list[Candidate] = []

    def add(
        self,
        name: str,
        scenario: Scenario,
        *,
        window: int | None = None,
        boundary: str = "site",
        on: FaultyUpstream | None = None,
        claimed: Boundary | None = None,
        provider: str = "sglang",  # an OpenAI-compatible server without prefill
    ) -> Rig:
        url = (on or self.up).add(name, scenario)
        cfg = OpenAIConfig(
            name=name,
            provider=provider,
            url=url,
            model=scenario.model,
            boundary=boundary,
            timeouts=FAST,
            context_window=window,
            api_key="test-key",
        )
        b = self.backends[name] = OpenAIBackend(cfg)
        self.candidates.append(Candidate(name, f"tier-{name}", claimed or b.boundary))
        return self

    def executor(
        self, *, threshold: int = 3, cooldown: float = 1.0, hooks: ExecutionHooks | None = None
    ) -> Executor:
        retry = RetryPolicy(
            base_delay=0.05, max_delay=0.2, retry_after_cap=2.0, rng=random.Random(7)
        )
        return Executor(
            self.backends,
            retry=retry,
            hooks=hooks,
            breakers=BreakerConfig(threshold=threshold, cooldown=cooldown),
        )

    def plan(self, privacy: Privacy = Privacy.PUBLIC) -> Plan:
        return Plan(candidates=list(self.candidates), privacy=privacy)

    async def complete(self, ex: Executor, privacy: Privacy = Privacy.PUBLIC) -> Outcome:
        out = Outcome()
        t0 = time.monotonic()
        try:
            resp = await ex.complete(
                ChatRequest.from_prompt(PROMPT), self.plan(privacy), out.attempts
            )
        except TierlmError as e:
            out.error = e
        else:
            out.text, out.backend, out.model, out.usage = (
                resp.text,
                resp.backend,
                resp.model,
                resp.usage,
            )
        out.elapsed = time.monotonic() - t0
        return out

    async def stream(
        self, ex: Executor, privacy: Privacy = Privacy.PUBLIC, stop_after: int | None = None
    ) -> Outcome:
        out = Outcome()
        t0 = time.monotonic()
        rs = ex.stream(ChatRequest.from_prompt(PROMPT, stream=True), self.plan(privacy))
        pieces: list[str] = []
        try:
            async for ev in rs:
                assert out.final is None, "an event came after the final one"
                if ev.finish_reason is not None:
                    out.final = ev
                pieces.append(ev.text)
                if stop_after is not None and len(pieces) >= stop_after:
                    break
        except TierlmError as e:
            out.error = e
        finally:
            await rs.aclose()
        out.text, out.elapsed = "".join(pieces), time.monotonic() - t0
        out.backend, out.model, out.usage, out.continued = (
            rs.backend,
            rs.model,
            rs.usage,
            rs.continued,
        )
        out.attempts = rs.attempts
        # Never a truncated success: a final event means the whole answer was delivered.
        if out.final is not None:
            assert out.error is None
            assert out.final.usage is not None, "usage must be reported on every success"
        return out

    async def run(self, mode: str, ex: Executor, **kw: Any) -> Outcome:
        return await (self.complete(ex, **kw) if mode == "complete" else self.stream(ex, **kw))

    async def aclose(self) -> None:
        for b in self.backends.values():
            await b.aclose()


@pytest.fixture
def up() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as server:
        yield server


@pytest.fixture
async def rig(up: FaultyUpstream) -> AsyncIterator[Rig]:
    r = Rig(up)
    yield r
    await r.aclose()


def healthy(model: str = "fallback-model") -> Scenario:
    return Scenario("healthy", model=model)


MODES = ["complete", "stream"]


# ---------------------------------------------------------------------------- 429 / 5xx


@pytest.mark.parametrize("mode", MODES)
async def test_429_with_retry_after_is_honoured(rig: Rig, up: FaultyUpstream, mode: str) -> None:
    rig.add(
        "primary",
        Scenario(
            "status",
            status=429,
            body=RATE_LIMIT,
            times=1,
            headers={"retry-after": "1"},
            model="primary-model",
        ),
    )
    rig.add("fallback", healthy())
    out = await rig.run(mode, rig.executor())
    out.assert_complete()
    assert out.backend == "primary"
    assert out.elapsed >= 0.95  # it waited the Retry-After second
    times = up.request_times("primary")
    assert len(times) == 2 and times[1] - times[0] >= 0.95
    assert up.count("fallback") == 0
    assert out.outcomes == ["rate_limited", "ok"]


async def test_429_retry_after_beyond_the_cap_moves_on(rig: Rig, up: FaultyUpstream) -> None:
    rig.add(
        "primary", Scenario("status", status=429, body=RATE_LIMIT, headers={"retry-after": "30"})
    )
    rig.add("fallback", healthy())
    ex = rig.executor()
    out = await rig.complete(ex)
    out.assert_complete()
    assert out.backend == "fallback"
    assert out.elapsed < HANG_GUARD  # did not wait the 30 s it was asked to
    assert up.count("primary") == 1
    # The backend asked for 30 s of quiet: the next requests leave it alone.
    again = await rig.stream(ex)
    again.assert_complete()
    assert again.outcomes == ["circuit_open", "ok"]
    assert up.count("primary") == 1
    assert 29.0 < ex.breakers["primary"].retry_in() <= 30.0


@pytest.mark.parametrize("mode", MODES)
async def test_429_persistent_without_retry_after_is_bounded(
    rig: Rig, up: FaultyUpstream, mode: str
) -> None:
    rig.add("primary", Scenario("status", status=429, body=RATE_LIMIT))
    rig.add("fallback", healthy())
    out = await rig.run(mode, rig.executor(threshold=10))
    out.assert_complete()
    assert out.backend == "fallback"
    assert up.count("primary") == 3  # one try and two retries, then the next candidate
    assert out.outcomes == ["rate_limited"] * 3 + ["ok"]


@pytest.mark.parametrize("mode", MODES)
async def test_500_once_then_healthy(rig: Rig, up: FaultyUpstream, mode: str) -> None:
    rig.add("primary", Scenario("status", status=500, body=SERVER, times=1, model="primary-model"))
    rig.add("fallback", healthy())
    out = await rig.run(mode, rig.executor())
    out.assert_complete()
    assert out.backend == "primary"
    assert out.model == "primary-model"
    assert up.count("primary") == 2
    assert up.count("fallback") == 0


async def test_503_persistent_opens_the_circuit(rig: Rig, up: FaultyUpstream) -> None:
    rig.add("primary", Scenario("status", status=503, body=OVERLOADED))
    rig.add("fallback", healthy())
    ex = rig.executor(threshold=3, cooldown=30.0)
    for _ in range(3):
        out = await rig.complete(ex)
        out.assert_complete()
        assert out.backend == "fallback"
    # Three failures opened the breaker during the first request; later ones skip it.
    assert up.count("primary") == 3
    assert ex.breakers["primary"].state is BreakerState.OPEN
    assert out.outcomes == ["circuit_open", "ok"]


# ---------------------------------------------------------------------------- connection


@pytest.mark.parametrize("mode", MODES)
async def test_connection_reset_before_headers(rig: Rig, up: FaultyUpstream, mode: str) -> None:
    rig.add("primary", Scenario("reset"))
    rig.add("fallback", healthy())
    out = await rig.run(mode, rig.executor())
    out.assert_complete()
    assert out.backend == "fallback"
    assert up.count("primary") <= 3
    assert set(out.outcomes[:-1]) == {"backend_unavailable"}


@pytest.mark.parametrize(("mode", "bound"), [("complete", 3.0), ("stream", 1.0)])
async def test_no_response_at_all(rig: Rig, up: FaultyUpstream, mode: str, bound: float) -> None:
    rig.add("primary", Scenario("silent"))
    rig.add("fallback", healthy())
    out = await rig.run(mode, rig.executor())
    out.assert_complete()
    assert out.backend == "fallback"
    assert bound - 0.1 <= out.elapsed < bound + 2.0  # total / first-token limit, then failover
    assert up.count("primary") == 1  # a timeout is not retried on the same backend
    assert out.outcomes == ["backend_timeout", "ok"]


@pytest.mark.parametrize(("mode", "bound"), [("complete", 3.0), ("stream", 1.0)])
async def test_first_token_after_20_seconds(
    rig: Rig, up: FaultyUpstream, mode: str, bound: float
) -> None:
    rig.add("primary", Scenario("slow_first", seconds=20.0))
    rig.add("fallback", healthy())
    out = await rig.run(mode, rig.executor())
    out.assert_complete()
    assert out.backend == "fallback"
    assert out.elapsed < bound + 2.0
    assert up.count("primary") == 1


# ---------------------------------------------------------------------------- streams


@pytest.mark.parametrize("kind", ["cut", "stall", "bad_json", "no_finish"])
async def test_stream_dies_after_commit_is_continued(
    rig: Rig, up: FaultyUpstream, kind: str
) -> None:
    rig.add("primary", Scenario(kind, after=40, tokens=60, model="primary-model"))
    rig.add("fallback", healthy())
    out = await rig.stream(rig.executor())
    out.assert_complete()  # word for word: no gap, no repeat, no garbage
    assert "GARB" not in out.text
    assert out.continued
    assert out.backend == "fallback" and out.model == "fallback-model"
    assert up.count("primary") == 1 and up.count("fallback") == 1
    # The continuation got the conversation, the partial answer and the instruction.
    messages = up.bodies("fallback")[0]["messages"]
    assert messages[0]["content"] == PROMPT
    assert messages[1] == {"role": "assistant", "content": expected_text(40)}
    assert messages[2] == {"role": "user", "content": CONTINUE_INSTRUCTION}
    # Both parts are billed: the fallback's 20 words, and the cut part at what it generated
    # (the provider bills it; estimated at ~4 characters a token).
    cut = math.ceil(len(expected_text(40)) / 4)
    assert out.usage is not None and out.usage.completion_tokens == 20 + cut
    assert out.outcomes[0] != "ok" and out.outcomes[1] == "ok"
    assert out.attempts[0].tokens > cut
    assert out.attempts[0].tokens + out.attempts[1].tokens == out.usage.total_tokens


@pytest.mark.parametrize(("kind", "after"), [("cut", 40), ("stall", 20), ("bad_json", 10)])
@pytest.mark.parametrize("fallback", ["continue", "restart", "restart_nearly", "prefill"])
async def test_a_rescued_stream_is_the_answer_exactly_once(
    rig: Rig, up: FaultyUpstream, kind: str, after: int, fallback: str
) -> None:
    """Whatever the fallback does with the partial answer (follows the instruction, restarts
    exactly or nearly, continues a prefill), the caller gets the answer once, no gap."""
    rig.add("primary", Scenario(kind, after=after, tokens=60, model="primary-model"))
    prefill = fallback == "prefill"
    rig.add(
        "fallback",
        Scenario("healthy", model="fallback-model", on_continue=fallback),
        provider="llama-server" if prefill else "sglang",
    )
    out = await rig.stream(rig.executor())
    rest = "".join(" " + word(i, fallback) for i in range(after, 60))
    out.assert_complete(expected_text(after) + rest)
    assert out.final is not None and out.final.finish_reason == "stop"
    assert out.continued and out.backend == "fallback"
    messages = up.bodies("fallback")[0]["messages"]
    assert messages[1] == {"role": "assistant", "content": expected_text(after)}
    assert len(messages) == (2 if prefill else 3)  # a prefill has no instruction


@pytest.mark.parametrize(("kind", "after"), [("cut", 40), ("stall", 20), ("bad_json", 10)])
async def test_a_fallback_that_does_not_continue_ends_with_an_in_band_error(
    rig: Rig, up: FaultyUpstream, kind: str, after: int
) -> None:
    rig.add("primary", Scenario(kind, after=after, tokens=60, model="primary-model"))
    rig.add("fallback", Scenario("healthy", model="fallback-model", on_continue="chatty"))
    out = await rig.stream(rig.executor())
    assert out.final is None, "an answer that was not continued must not end as a success"
    assert isinstance(out.error, ProtocolError) and "cut off" in out.error.message
    assert out.text == expected_text(after)  # nothing of the reply reached the caller
    assert out.outcomes[0] != "ok" and out.outcomes[1] == "upstream_protocol_error"
    assert "did not continue" in str(out.error.__cause__)


@pytest.mark.parametrize("kind", ["cut", "stall", "bad_json"])
async def test_complete_with_a_broken_body_fails_over(
    rig: Rig, up: FaultyUpstream, kind: str
) -> None:
    rig.add("primary", Scenario(kind))
    rig.add("fallback", healthy())
    out = await rig.complete(rig.executor())
    out.assert_complete()
    assert out.backend == "fallback"
    assert up.count("primary") <= 3


async def test_stream_without_done_but_finished_is_a_success(rig: Rig, up: FaultyUpstream) -> None:
    rig.add("primary", Scenario("no_done", model="primary-model"))
    rig.add("fallback", healthy())
    out = await rig.stream(rig.executor())
    out.assert_complete()
    assert out.backend == "primary" and not out.continued
    assert out.final is not None and out.final.finish_reason == "stop"
    assert up.count("fallback") == 0


@pytest.mark.parametrize("kind", ["cut", "stall", "bad_json", "no_finish"])
async def test_stream_cut_without_rescue_ends_with_an_error(
    rig: Rig, up: FaultyUpstream, kind: str
) -> None:
    rig.add("primary", Scenario(kind, after=40))
    out = await rig.stream(rig.executor())
    assert out.final is None, "a truncated answer must not end as a success"
    assert isinstance(out.error, ProtocolError)
    assert "cut off" in out.error.message
    assert out.text == expected_text(40)  # what was sent stays sent, nothing after it
    assert out.elapsed < HANG_GUARD
    assert up.count("primary") == 1


async def test_stream_fails_over_silently_before_commit(rig: Rig, up: FaultyUpstream) -> None:
    rig.add("primary", Scenario("cut", after=0))  # dies before its first token
    rig.add("fallback", healthy())
    out = await rig.stream(rig.executor())
    out.assert_complete()
    assert out.backend == "fallback" and not out.continued
    assert up.bodies("fallback")[0]["messages"] == [{"role": "user", "content": PROMPT}]


async def test_client_going_away_settles_the_attempt(rig: Rig, up: FaultyUpstream) -> None:
    rig.add("primary", healthy("primary-model"))
    ex = rig.executor(threshold=1)
    out = await rig.stream(ex, stop_after=5)
    assert out.text == expected_text(5) and out.final is None
    assert out.outcomes == ["cancelled"]
    assert ex.breakers["primary"].state is BreakerState.CLOSED
    again = await rig.stream(ex)
    again.assert_complete()


# ---------------------------------------------------------------------------- caller errors


@pytest.mark.parametrize("mode", MODES)
async def test_context_length_goes_to_a_larger_model(
    rig: Rig, up: FaultyUpstream, mode: str
) -> None:
    rig.add("primary", Scenario("status", status=400, body=CONTEXT), window=4096)
    rig.add("smaller", healthy("small-model"), window=2048)
    rig.add("larger", healthy("large-model"), window=32768)
    out = await rig.run(mode, rig.executor(threshold=1))
    out.assert_complete()
    assert out.backend == "larger" and out.model == "large-model"
    assert up.count("primary") == 1  # never retried
    assert up.count("smaller") == 0
    assert out.outcomes == ["context_length_exceeded", "context_window_too_small", "ok"]


async def test_context_length_without_a_larger_model(rig: Rig, up: FaultyUpstream) -> None:
    rig.add("primary", Scenario("status", status=400, body=CONTEXT), window=4096)
    rig.add("same", healthy(), window=4096)
    ex = rig.executor(threshold=1)
    out = await rig.complete(ex)
    assert isinstance(out.error, AllAttemptsFailed)
    assert out.error.status == 400 and out.error.code == "context_length_exceeded"
    assert up.count("primary") == 1 and up.count("same") == 0
    # A caller error does not count against the backend.
    assert ex.breakers["primary"].state is BreakerState.CLOSED


@pytest.mark.parametrize("mode", MODES)
async def test_content_policy_is_not_retried(rig: Rig, up: FaultyUpstream, mode: str) -> None:
    with FaultyUpstream() as elsewhere:
        rig.add("primary", Scenario("status", status=400, body=POLICY))
        rig.add("sibling", healthy("sibling-model"))  # same host: same provider's judgement
        rig.add("other", healthy("other-model"), on=elsewhere)
        ex = rig.executor(threshold=1)
        out = await rig.run(mode, ex)
        out.assert_complete()
        assert out.backend == "other"
        assert up.count("primary") == 1 and up.count("sibling") == 0
        assert out.outcomes == ["content_policy_violation", "content_policy_same_host", "ok"]
        assert ex.breakers["primary"].state is BreakerState.CLOSED
        await rig.aclose()


async def test_content_policy_with_no_other_provider(rig: Rig, up: FaultyUpstream) -> None:
    rig.add("primary", Scenario("status", status=400, body=POLICY))
    rig.add("sibling", healthy())
    out = await rig.complete(rig.executor())
    assert isinstance(out.error, AllAttemptsFailed)
    assert out.error.code == "content_policy_violation" and out.error.status == 400
    assert up.count("primary") == 1 and up.count("sibling") == 0


# ---------------------------------------------------------------------------- the breaker


async def test_primary_down_then_recovers(rig: Rig, up: FaultyUpstream) -> None:
    """A minute's outage, compressed: 503 for 3 s, breaker cool-down 1 s."""
    rig.add("primary", Scenario("down_for", seconds=3.0, model="primary-model"))
    rig.add("fallback", healthy())
    ex = rig.executor(threshold=3, cooldown=1.0)
    served: list[tuple[str | None, int]] = []  # (who answered, primary's request count)
    t0 = time.monotonic()
    while time.monotonic() - t0 < HANG_GUARD:
        out = await rig.complete(ex)
        out.assert_complete()
        served.append((out.backend, up.count("primary")))
        if out.backend == "primary":
            break
        await asyncio.sleep(0.1)
    who = [b for b, _ in served]
    assert who[0] == "fallback" and who[-1] == "primary"
    # While open, the fallback served without the primary seeing a request.
    skipped = [i for i in range(1, len(served)) if served[i][1] == served[i - 1][1]]
    assert skipped, served
    states = [s for _, s in ex.breakers["primary"].transitions]
    assert states[0] is BreakerState.OPEN
    assert BreakerState.HALF_OPEN in states
    assert states[-1] is BreakerState.CLOSED
    # Never hammered: 3 failures to open it, then one probe per cool-down.
    probes = states.count(BreakerState.HALF_OPEN)
    assert up.count("primary") == 3 + probes
    assert probes <= (time.monotonic() - t0) / 1.0 + 1


# ---------------------------------------------------------------------------- accounting


@pytest.mark.parametrize("mode", MODES)
async def test_fallback_accounting(rig: Rig, up: FaultyUpstream, mode: str) -> None:
    rig.add("primary", Scenario("status", status=503, body=OVERLOADED, model="primary-model"))
    rig.add("fallback", healthy("fallback-model"))
    out = await rig.run(mode, rig.executor(threshold=10))
    out.assert_complete()
    assert out.backend == "fallback" and out.model == "fallback-model"
    assert out.usage == Usage(prompt_tokens=3, completion_tokens=60)
    failed = [a for a in out.attempts if a.outcome != "ok"]
    assert [a.backend for a in failed] == ["primary"] * 3
    assert all(a.tokens == 0 for a in failed)  # failed attempts are not billed
    ok = out.attempts[-1]
    assert (ok.backend, ok.tier, ok.boundary, ok.tokens) == (
        "fallback",
        "tier-fallback",
        "site",
        63,
    )
    assert ok.latency_ms is not None
    if mode == "stream":
        assert out.final is not None and out.final.model == "fallback-model"
        assert ok.ttft_ms is not None


# ---------------------------------------------------------------------------- guards


@pytest.mark.parametrize("claimed", [Boundary.EXTERNAL, Boundary.SITE], ids=["external", "site"])
async def test_private_plan_never_crosses_the_site_boundary(
    rig: Rig, up: FaultyUpstream, claimed: Boundary
) -> None:
    # `claimed=SITE`: the plan says site, but the backend is external: refused all the same.
    rig.add("cloud", healthy("cloud-model"), boundary="external", claimed=claimed)
    rig.add("site", healthy("site-model"))
    out = await rig.complete(rig.executor(), privacy=Privacy.PRIVATE)
    out.assert_complete()
    assert out.backend == "site"
    assert up.count("cloud") == 0
    assert out.attempts[0].outcome == "privacy_boundary"
    assert out.attempts[0].boundary == "external"


async def test_private_plan_with_only_external_candidates(rig: Rig, up: FaultyUpstream) -> None:
    rig.add("cloud", healthy(), boundary="external")
    out = await rig.stream(rig.executor(), privacy=Privacy.PRIVATE)
    assert isinstance(out.error, NoEligibleBackend)
    assert up.count("cloud") == 0


async def test_continuation_respects_the_privacy_boundary(rig: Rig, up: FaultyUpstream) -> None:
    rig.add("site", Scenario("cut", after=10))
    rig.add("cloud", healthy(), boundary="external")
    out = await rig.stream(rig.executor(), privacy=Privacy.PRIVATE)
    assert isinstance(out.error, ProtocolError) and out.final is None
    assert up.count("cloud") == 0


class Budget(ExecutionHooks):
    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.open: dict[int, str] = {}
        self.settled: list[tuple[str, Usage | None, bool]] = []

    async def before_attempt(self, request: ChatRequest, candidate: Candidate) -> object:
        if candidate.backend in self.refuse:
            raise BudgetExceeded("monthly budget spent")
        token = len(self.open) + len(self.settled)
        self.open[token] = candidate.backend
        return token

    async def after_attempt(self, token: object, usage: Usage | None, ok: bool) -> None:
        assert isinstance(token, int)
        self.settled.append((self.open.pop(token), usage, ok))


@pytest.mark.parametrize("mode", MODES)
async def test_budget_hooks(rig: Rig, up: FaultyUpstream, mode: str) -> None:
    rig.add("cloud", healthy(), boundary="external")
    rig.add("flaky", Scenario("status", status=500, body=SERVER, times=1))
    budget = Budget(refuse={"cloud"})
    out = await rig.run(mode, rig.executor(hooks=budget))
    out.assert_complete()
    assert up.count("cloud") == 0
    assert out.outcomes == ["budget_exceeded", "upstream_server_error", "ok"]
    assert not budget.open  # every reservation settled exactly once
    assert [(b, ok) for b, _, ok in budget.settled] == [("flaky", False), ("flaky", True)]
    assert budget.settled[0][1] is None and budget.settled[1][1] == out.usage


async def test_budget_refuses_everything(rig: Rig, up: FaultyUpstream) -> None:
    rig.add("cloud", healthy(), boundary="external")
    out = await rig.complete(rig.executor(hooks=Budget(refuse={"cloud"})))
    assert isinstance(out.error, BudgetExceeded)
    assert out.error.backend == "cloud"
