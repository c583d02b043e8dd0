"""Issue 13: the deferred-work scheduler's windows, driven by a test clock (no sleeping), over
a real ledger database (SQLite, and PostgreSQL for the store's claims), with a runner double
in place of the gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from batch_support import Clock
from ledger_support import db_url
from tierlm.batch.config import BatchConfig
from tierlm.batch.scheduler import Scheduler
from tierlm.batch.store import BatchStore, Line, Result
from tierlm.batch.window import Now
from tierlm.ledger import Ledger, open_store
from tierlm.signals.energy import EnergyState

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
HOUR = 3600.0


class Runner:
    """The gateway's part, by hand: conditions the test sets, answers it controls."""

    def __init__(self, slots: dict[str, int] | None = None, host: tuple[str, ...] = ()) -> None:
        self.slots_of = slots or {}
        self.host = host
        self.energy: EnergyState | None = None
        self.share: float | None = None
        self.live = 0
        self.answers: list[int] = []  # statuses to answer with, in order (then 200)
        self.ran: list[str] = []
        self.hold: asyncio.Event | None = None

    async def run(self, line: Line) -> Result:
        self.ran.append(line.custom_id)
        if self.hold is not None:
            await self.hold.wait()
        status = self.answers.pop(0) if self.answers else 200
        body: dict[str, Any] = {"answer": line.body["messages"][0]["content"]}
        if status != 200:
            body = {"error": {"message": "busy", "code": status}}
        return Result(
            status, f"req-{line.n}", body, cost_usd=0.001, baseline_usd=0.003, retry=status == 503
        )

    async def now(self, ts: float, key: str | None) -> Now:
        return Now(ts=ts, energy=self.energy, budget_share=self.share, live=self.live)

    def slots(self, backend: str | None) -> int | None:
        return self.slots_of.get(backend or "")

    def same_host(self, backend: str) -> bool:
        return backend in self.host


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BatchStore]:
    ledger = Ledger(open_store(f"sqlite:///{tmp_path / 'l.db'}", tmp_path))
    yield BatchStore(ledger.store)
    ledger.close()


def _submit(
    store: BatchStore, n: int, now: float, *, window: float = 24 * HOUR, backend: str = "b"
) -> str:
    lines = [
        (f"req-{i}", json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}), backend)
        for i in range(n)
    ]
    return store.create_batch(
        None, "file-x", "/v1/chat/completions", "24h", now + window, None, lines, now
    )


def _scheduler(store: BatchStore, runner: Runner, clock: Clock, **cfg: Any) -> Scheduler:
    return Scheduler(store, BatchConfig.model_validate(cfg), runner, clock=clock)


async def _drain(s: Scheduler) -> None:
    """Run rounds until no line runs and none starts (the last round closes batches)."""
    while True:
        await s.settle()
        if await s.step() == 0 and not s.running:
            return


def _status(store: BatchStore, batch_id: str) -> str:
    b = store.get_batch(batch_id, None)
    assert b is not None
    return b.status


async def test_off_peak_hours_hold_lines_until_the_window_opens(store: BatchStore) -> None:
    clock, runner = Clock(T0 + 12 * HOUR), Runner()
    s = _scheduler(store, runner, clock, window={"off_peak_hours": [2, 3]})
    batch = _submit(store, 3, clock.t)
    assert await s.step() == 0
    assert s.waiting_why[batch] == ["hour 12 UTC is not off-peak"]
    clock.t = T0 + 26 * HOUR  # 02:00 the next day, inside the window (it ends at 36:00)
    assert await s.step() == 3
    await _drain(s)
    assert _status(store, batch) == "completed" and runner.ran == ["req-0", "req-1", "req-2"]


async def test_the_end_of_the_window_runs_lines_regardless(store: BatchStore) -> None:
    clock, runner = Clock(T0 + 12 * HOUR), Runner()
    s = _scheduler(store, runner, clock, window={"off_peak_hours": [2]}, run_anyway_seconds=HOUR)
    batch = _submit(store, 2, clock.t)
    clock.t += 22.9 * HOUR
    assert await s.step() == 0
    clock.t += 0.2 * HOUR  # within the last hour of the 24
    assert await s.step() == 2
    await _drain(s)
    assert _status(store, batch) == "completed"


async def test_lines_not_run_in_their_window_expire(store: BatchStore) -> None:
    clock, runner = Clock(T0 + 12 * HOUR), Runner()
    s = _scheduler(store, runner, clock, window={"off_peak_hours": [2]}, run_anyway_seconds=0)
    batch = _submit(store, 2, clock.t, window=HOUR)
    clock.t += HOUR
    assert await s.step() == 0
    b = store.get_batch(batch, None)
    assert b is not None and b.status == "expired" and b.counts == {"expired": 2}
    assert b.error_file_id is not None and b.output_file_id is None
    errors = (store.file_content(b.error_file_id, None) or "").splitlines()
    assert [json.loads(e)["error"]["code"] for e in errors] == ["batch_expired"] * 2


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"carbon_g_per_kwh": 450.0}, "carbon 450 g/kWh, above 300"),
        ({"battery": 0.3, "charging": False}, "battery 30% and not charging, below 50%"),
        ({"solar_surplus_w": 50.0}, "solar surplus 50 W, below 200"),
    ],
)
async def test_energy_conditions(store: BatchStore, fields: dict[str, Any], why: str) -> None:
    clock, runner = Clock(T0), Runner()
    window = {"max_carbon_g_per_kwh": 300, "min_battery": 0.5, "min_solar_surplus_w": 200}
    s = _scheduler(store, runner, clock, window=window, run_anyway_seconds=0)
    batch = _submit(store, 1, clock.t)
    assert await s.step() == 0
    assert s.waiting_why[batch] == ["no energy section: the energy conditions cannot be checked"]
    good = {"carbon_g_per_kwh": 120.0, "battery": 0.9, "charging": False, "solar_surplus_w": 900.0}
    runner.energy = EnergyState(source="file:x", status="ok", **{**good, **fields})
    assert await s.step() == 0
    assert s.waiting_why[batch] == [why]
    runner.energy = EnergyState(source="file:x", status="ok", **good)
    assert await s.step() == 1


async def test_budget_headroom(store: BatchStore) -> None:
    clock, runner = Clock(T0), Runner()
    s = _scheduler(store, runner, clock, window={"min_budget_share": 0.5}, run_anyway_seconds=0)
    batch = _submit(store, 1, clock.t)
    runner.share = 0.2
    assert await s.step() == 0
    assert s.waiting_why[batch] == ["budget: 20% left, below 50%"]
    runner.share = 0.8
    assert await s.step() == 1


async def test_local_lines_wait_for_live_traffic_and_leave_a_slot(store: BatchStore) -> None:
    clock, runner = Clock(T0), Runner(slots={"local": 3})
    runner.hold = asyncio.Event()
    s = _scheduler(store, runner, clock, concurrency=8)
    batch = _submit(store, 4, clock.t, backend="local")
    runner.live = 1
    assert await s.step() == 0
    assert s.waiting_why[batch] == ["1 live request(s) in flight: local capacity is not idle"]
    runner.live = 0
    assert await s.step() == 2  # 3 slots: two for deferred lines, one kept free
    assert await s.step() == 0
    assert s.waiting_why[batch] == ["local: deferred lines hold 2 of its 3 slot(s)"]
    runner.hold.set()
    await _drain(s)
    assert _status(store, batch) == "completed" and len(runner.ran) == 4


async def test_live_arrival_preempts_a_local_line_without_counting_it(
    store: BatchStore,
) -> None:
    clock, runner = Clock(T0), Runner(slots={"local": 1})
    runner.hold = asyncio.Event()
    s = _scheduler(store, runner, clock)
    batch = _submit(store, 1, clock.t, backend="local")
    assert await s.step() == 1
    await asyncio.sleep(0)  # the line is in the runner now
    assert s.live_arrived(1) == 1
    await s.settle()
    with store.store.transaction("read") as tx:
        assert tx.q("SELECT state, claims FROM batch_lines") == [("waiting", 0)]
    runner.hold.set()
    clock.t += 0.5
    assert await s.step() == 0  # a burst of live traffic may go on: wait a second
    assert s.waiting_why[batch] == ["a live request started 0.5 s ago (local idle: 1 s)"]
    clock.t += 0.5
    assert await s.step() == 1
    await _drain(s)
    b = store.get_batch(batch, None)
    assert b is not None and b.status == "completed" and runner.ran == ["req-0", "req-0"]


async def test_a_line_preempted_before_its_task_starts_comes_back(store: BatchStore) -> None:
    clock, runner = Clock(T0), Runner(slots={"m": 2}, host=("m",))
    s = _scheduler(store, runner, clock)
    batch = _submit(store, 1, clock.t, backend="m")
    assert await s.step() == 1
    assert s.live_arrived(1) == 1  # its task has not run yet
    await s.settle()
    assert s.running == 0 and runner.ran == []
    clock.t += 1
    await _drain(s)  # the next round finds the line held by no task, and puts it back
    assert _status(store, batch) == "completed" and runner.ran == ["req-0"]


@pytest.mark.parametrize(
    ("host", "live", "preempted"),
    [
        (True, 1, 2),  # this host's model: every deferred line makes way (CPU/GPU shared)
        (False, 1, 0),  # a site model with a slot free for it: nothing is preempted
        (False, 2, 1),  # two live requests, one free slot: the newest deferred line goes
    ],
)
async def test_which_lines_a_live_request_preempts(
    store: BatchStore, host: bool, live: int, preempted: int
) -> None:
    clock, runner = Clock(T0), Runner(slots={"m": 3}, host=("m",) if host else ())
    runner.hold = asyncio.Event()
    s = _scheduler(store, runner, clock)
    _submit(store, 2, clock.t, backend="m")
    assert await s.step() == 2
    await asyncio.sleep(0)
    assert s.live_arrived(live) == preempted
    runner.hold.set()
    await s.settle()


async def test_a_line_whose_window_ends_is_not_preempted(store: BatchStore) -> None:
    clock, runner = Clock(T0), Runner(slots={"m": 3}, host=("m",))
    runner.hold = asyncio.Event()
    s = _scheduler(store, runner, clock, run_anyway_seconds=HOUR)
    _submit(store, 1, clock.t, window=HOUR / 2, backend="m")
    _submit(store, 1, clock.t, backend="m")  # not forced: 24 hours left
    assert await s.step() == 2
    await asyncio.sleep(0)
    assert s.live_arrived(1) == 1
    runner.hold.set()
    await s.settle()


async def test_transient_failures_are_retried_later_then_recorded(store: BatchStore) -> None:
    clock, runner = Clock(T0), Runner()
    s = _scheduler(store, runner, clock, max_attempts=2, retry_seconds=30)
    batch = _submit(store, 1, clock.t)
    runner.answers = [503, 503]
    assert await s.step() == 1
    await _drain(s)
    assert await s.step() == 0  # not before 30 s
    clock.t += 30
    assert await s.step() == 1
    await _drain(s)
    b = store.get_batch(batch, None)
    assert b is not None and b.status == "completed" and b.counts == {"failed": 1}
    (line,) = (store.file_content(b.error_file_id or "", None) or "").splitlines()
    assert json.loads(line)["response"]["status_code"] == 503


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_claims_are_exclusive_and_a_silent_scheduler_s_lines_come_back(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ledger = Ledger(open_store(db_url(db, tmp_path, request), tmp_path))
    try:
        store = BatchStore(ledger.store)
        batch = _submit(store, 2, T0)
        store.heartbeat("a", T0, 30)
        store.heartbeat("b", T0, 30)
        line = store.claim(batch, 0, "a", 2, T0)
        assert line is not None and store.claim(batch, 0, "b", 2, T0) is None
        ok = Result(200, "req-1", {"x": 1})
        assert not store.finish(line, "b", ok, T0)  # only the holder records an answer
        assert store.heartbeat("b", T0 + 10, 30) == 0  # "a" is not silent yet
        assert store.heartbeat("b", T0 + 31, 30) == 1  # now it is: its line is back
        assert not store.finish(line, "a", ok, T0 + 32)  # and its late answer is dropped
        again = store.claim(batch, 0, "b", 2, T0 + 32)
        assert again is not None and again.claims == 2
        assert store.finish(again, "b", ok, T0 + 33)
        store.heartbeat("b", T0 + 40, 30)
        lost = store.claim(batch, 1, "c", 2, T0 + 40)  # "c" never beats: it dies at once
        assert lost is not None
        store.heartbeat("b", T0 + 80, 30)
        assert store.claim(batch, 1, "b", 2, T0 + 80) is not None
        store.heartbeat("b", T0 + 120, 30)
        store.heartbeat("b", T0 + 130, 30)  # "b" itself now holds it: it stays running
        with ledger.store.transaction("read") as tx:
            assert tx.q("SELECT state FROM batch_lines WHERE n = 1") == [("running",)]
        store.heartbeat("d", T0 + 200, 30)  # "b" went silent too: third claim is too many
        assert store.claim(batch, 1, "d", 2, T0 + 200) is None
        assert store.finalize(T0 + 200) == [batch]
        b = store.get_batch(batch, None)
        assert b is not None and b.counts == {"done": 1, "failed": 1}
        err = json.loads((store.file_content(b.error_file_id or "", None) or "").strip())
        assert err["response"]["body"]["error"]["code"] == "interrupted"
    finally:
        ledger.close()


async def test_the_report_shows_the_queue_and_what_waiting_saved(tmp_path: Path) -> None:
    ledger = Ledger(open_store(f"sqlite:///{tmp_path / 'r.db'}", tmp_path))
    try:
        store = BatchStore(ledger.store)
        clock, runner = Clock(T0 + 2 * HOUR), Runner()
        s = _scheduler(store, runner, clock, window={"off_peak_hours": [2]})
        ran = _submit(store, 2, clock.t)
        await _drain(s)
        clock.t = T0 + 12 * HOUR
        _submit(store, 3, clock.t)
        await _drain(s)
        assert _status(store, ran) == "completed"
        deferred = ledger.report(timedelta(days=3650)).to_dict()["deferred"]
    finally:
        ledger.close()
    assert deferred["done"] == 2 and deferred["waiting"] == 3 and deferred["failed"] == 0
    assert deferred["batches"] == {"completed": 1, "in_progress": 1}
    # each finished line cost 0.001 and would have cost 0.003 on the backend planned at first
    assert deferred["cost_usd"] == pytest.approx(0.002)
    assert deferred["saved_usd"] == pytest.approx(0.004)


async def test_a_fault_answering_a_line_becomes_its_error(
    store: BatchStore, caplog: pytest.LogCaptureFixture
) -> None:
    clock, runner = Clock(T0), Runner()

    async def broken(line: Line) -> Result:
        raise RuntimeError("a bug")

    runner.run = broken  # type: ignore[method-assign]
    s = _scheduler(store, runner, clock)
    batch = _submit(store, 1, clock.t)
    await _drain(s)
    b = store.get_batch(batch, None)
    assert b is not None and b.status == "completed" and b.counts == {"failed": 1}
    (line,) = (store.file_content(b.error_file_id or "", None) or "").splitlines()
    assert json.loads(line)["response"]["body"]["error"]["code"] == "internal_error"
    assert "deferred line" in caplog.text and "a bug" in caplog.text
