"""Budgets: never overspend under concurrency (SQLite and Postgres), degrade instead of fail."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from ledger_support import db_url, one_budget, open_url, run_reserve_processes
from tierlm.config.settings import BudgetConfig, BudgetLimit
from tierlm.errors import BudgetExceeded
from tierlm.ledger import Ledger
from tierlm.ledger.budgets import NANO, PAUSE_S, STALE_AFTER_S, to_nusd
from tierlm.ledger.sqlite import SqliteStore

DBS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _hammer(ledger: Ledger, n: int, usd: float) -> tuple[int, int]:
    """``n`` threads each reserve ``usd`` at the same moment, then settle it."""
    barrier = threading.Barrier(n)
    ok, refused, lock = [0], [0], threading.Lock()

    def one(i: int) -> None:
        barrier.wait()
        try:
            r = ledger.reserve(f"r{i}", key="k", tier="cloud", backend="gpt", usd=usd)
        except BudgetExceeded:
            with lock:
                refused[0] += 1
            return
        with lock:
            ok[0] += 1
        ledger.settle(r, usd)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return ok[0], refused[0]


def _spent(ledger: Ledger) -> tuple[int, int, int]:
    with ledger.store.transaction("read") as tx:
        (row,) = tx.q(
            "SELECT SUM(spent_nusd), SUM(reserved_nusd), SUM(limit_nusd) FROM budget_buckets"
        )
        (held,) = tx.q("SELECT COUNT(*) FROM reservations")
    return int(row[0]), int(row[1]), int(held[0])


@pytest.mark.parametrize("db", DBS)
def test_200_concurrent_requests_never_overspend_a_budget_for_50(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cfg = one_budget(1.0, local_only_below=0.0, per_request_share=1.0)
    with open_url(db_url(db, tmp_path, request), tmp_path, cfg) as ledger:
        ok, refused = _hammer(ledger, 200, 0.02)
        spent, reserved, held = _spent(ledger)
    assert (ok, refused) == (50, 150)
    assert spent == to_nusd(1.0) and reserved == 0 and held == 0


@pytest.mark.parametrize("db", DBS)
def test_with_default_shares_concurrency_stays_under_the_local_only_line(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with open_url(db_url(db, tmp_path, request), tmp_path, one_budget(1.0)) as ledger:
        ok, _ = _hammer(ledger, 200, 0.02)
        state = ledger.budget_state(key="k", tier="cloud")
        spent, _, _ = _spent(ledger)
    # Each admitted call was at most 5% of what remained, and none once under 10% remained.
    # 31 calls fit: from $1.00 down to $0.40 left (0.02 is 5% of 0.40); then $0.38 is left.
    assert ok == 31
    assert spent == ok * to_nusd(0.02)
    assert state.remaining_usd == pytest.approx(0.38)
    assert not state.allows(0.02)


@pytest.mark.parametrize("db", DBS)
def test_several_processes_share_one_budget(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = db_url(db, tmp_path, request)
    open_url(url, tmp_path).close()  # create the schema first
    admitted = run_reserve_processes(url, procs=4, each=40, usd=0.05, limit=1.0, cwd=tmp_path)
    assert admitted == 20
    with open_url(url, tmp_path, one_budget(1.0)) as ledger:
        assert _spent(ledger) == (to_nusd(1.0), 0, 0)


def test_shares_cap_a_request_and_switch_to_local_only(tmp_path: Path) -> None:
    with open_url(f"sqlite:///{tmp_path / 'l.db'}", tmp_path, one_budget(10.0)) as ledger:
        state = ledger.budget_state(key="k", tier="cloud")
        assert state.cap_usd == pytest.approx(0.5) and not state.local_only
        with pytest.raises(BudgetExceeded, match="over per_request_share") as e:
            ledger.reserve("big", key="k", tier="cloud", backend="gpt", usd=0.51)
        assert (e.value.status, e.value.request_id, e.value.backend) == (402, "big", "gpt")
        assert e.value.to_openai()["error"]["type"] == "insufficient_quota"
        r = ledger.reserve("ok", key="k", tier="cloud", backend="gpt", usd=0.5)
        ledger.settle(r, 9.1)  # the call cost more than estimated: still booked
        state = ledger.budget_state(key="k", tier="cloud")
        assert state.remaining_usd == pytest.approx(0.9)
        assert state.local_only and not state.allows(0.0001)
        assert state.allows(0.0)  # local tiers are never blocked by money
        with pytest.raises(BudgetExceeded, match="below local_only_below"):
            ledger.reserve("late", key="k", tier="cloud", backend="gpt", usd=0.001)
        free = ledger.reserve("local", key="k", tier="tiny", backend="smollm", usd=0.0)
        assert free.noop
        ledger.settle(free, 0.0)


def test_zero_cost_never_touches_the_database(tmp_path: Path) -> None:
    ledger = open_url(f"sqlite:///{tmp_path / 'l.db'}", tmp_path, one_budget(0.0))
    ledger.store.close()  # any database access now fails
    r = ledger.reserve("x", key="k", tier="tiny", backend="smollm", usd=0.0)
    assert r.noop and r.nusd == 0  # held nothing, so nothing to write
    ledger.settle(r, 0.0)  # would raise on the closed store if it touched it
    ledger.release(r)
    ledger._writer.close()


def test_key_and_tier_limits_and_daily_periods(tmp_path: Path) -> None:
    cfg = BudgetConfig(
        limits=[
            BudgetLimit(scope="key", usd=1.0),  # every key separately
            BudgetLimit(scope="key", name="ci", period="day", usd=0.1),
            BudgetLimit(scope="tier", name="cloud", usd=1.5),
        ],
        local_only_below=0.0,
        per_request_share=1.0,
    )
    with open_url(f"sqlite:///{tmp_path / 'l.db'}", tmp_path, cfg) as ledger:
        for key in ("alice", "bob"):
            ledger.settle(ledger.reserve("a", key=key, tier="site", backend="s", usd=0.9), 0.9)
        with pytest.raises(BudgetExceeded, match="budget key alice/month has"):
            ledger.reserve("b", key="alice", tier="site", backend="s", usd=0.2)
        with pytest.raises(BudgetExceeded, match="budget key ci/day has"):
            ledger.reserve("c", key="ci", tier="site", backend="s", usd=0.2)
        ledger.settle(ledger.reserve("d", key="carol", tier="cloud", backend="g", usd=0.9), 0.9)
        with pytest.raises(BudgetExceeded, match="budget tier cloud/month has"):
            ledger.reserve("e", key="dave", tier="cloud", backend="g", usd=0.7)
        ledger.reserve("f", key="dave", tier="site", backend="s", usd=0.7)  # other tier: fine
        state = ledger.budget_state(key="ci", tier="cloud")
        assert [b.bucket.split(":")[:3] for b in state.buckets] == [
            ["key", "ci", "day"],
            ["key", "ci", "month"],
            ["tier", "cloud", "month"],
        ]


def test_release_and_expiry_give_money_back(tmp_path: Path) -> None:
    cfg = one_budget(1.0, local_only_below=0.0, per_request_share=1.0)
    with open_url(f"sqlite:///{tmp_path / 'l.db'}", tmp_path, cfg) as ledger:
        r = ledger.reserve("a", key=None, tier="cloud", backend="g", usd=0.6)
        with pytest.raises(BudgetExceeded):
            ledger.reserve("b", key=None, tier="cloud", backend="g", usd=0.6)
        ledger.release(r)
        ledger.release(r)  # twice: no effect
        stale = ledger.reserve("c", key=None, tier="cloud", backend="g", usd=0.7)
        assert ledger.budgets.expire(older_than_s=60, now=time.time() + 61) == 1
        assert ledger.budget_state(key=None, tier=None).remaining_usd == pytest.approx(1.0)
        ledger.settle(stale, 0.25)  # settled after expiry: the cost is still booked
        assert _spent(ledger) == (to_nusd(0.25), 0, 0)
        ledger.reserve("d", key=None, tier="cloud", backend="g", usd=0.5)  # then the process dies
        with ledger.store.transaction("budget") as tx:
            tx.q("UPDATE reservations SET ts = ts - 1000")
    with open_url(f"sqlite:///{tmp_path / 'l.db'}", tmp_path, cfg) as reopened:
        assert _spent(reopened) == (to_nusd(0.25), 0, 0)  # freed when the ledger opened


@pytest.mark.parametrize("db", DBS)
def test_a_dead_replicas_reservations_are_freed_by_the_living_ones(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cfg = one_budget(1.0, local_only_below=0.0, per_request_share=1.0)
    url = db_url(db, tmp_path, request)
    t0 = time.time()
    with open_url(url, tmp_path, cfg) as living, open_url(url, tmp_path, cfg) as dying:
        dying.budgets.reserve("held", key=None, tier="cloud", backend="g", usd=0.6, now=t0)
        # the dying replica is killed here: its reservation is never settled
        with pytest.raises(BudgetExceeded):  # still held, and not yet stale
            living.budgets.reserve("a", key=None, tier="cloud", backend="g", usd=0.6, now=t0 + 120)
        later = t0 + STALE_AFTER_S + 1  # the living replica sweeps again, without a restart
        r = living.budgets.reserve("b", key=None, tier="cloud", backend="g", usd=0.6, now=later)
        living.settle(r, 0.5)
        assert _spent(living) == (to_nusd(0.5), 0, 0)


class _BreakableStore(SqliteStore):
    """A real SQLite store whose budget and read transactions fail while ``broken``."""

    broken = False

    @contextmanager
    def transaction(self, role):  # type: ignore[no-untyped-def]
        if self.broken and role != "writer":
            raise sqlite3.OperationalError("unable to open database (simulated)")
        with super().transaction(role) as tx:
            yield tx


def test_an_unreachable_database_makes_budgets_unavailable_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _BreakableStore(tmp_path / "b.db")
    cfg = one_budget(1.0, local_only_below=0.0, per_request_share=1.0)
    with Ledger(store, budgets=cfg, spill_path=tmp_path / "spill.jsonl") as ledger:
        now = [0.0]
        ledger.budgets.clock = lambda: now[0]
        held = ledger.reserve("a", key=None, tier="cloud", backend="g", usd=0.25)
        store.broken = True
        state = ledger.budget_state(key=None, tier=None)
        assert state.local_only and state.limited and state.buckets == ()
        assert "budget unavailable (ledger database unreachable" in (state.why_not(0.01) or "")
        assert state.why_not(0.0) is None  # what costs nothing may still go
        with pytest.raises(BudgetExceeded, match="budget unavailable"):
            ledger.reserve("b", key=None, tier="cloud", backend="g", usd=0.01)
        ledger.settle(held, 0.2)  # the call was made: logged, never raised
        assert "is not booked in the budget" in caplog.text
        store.broken = False  # back, but the pause holds: no paid call yet
        with pytest.raises(BudgetExceeded, match="budget unavailable"):
            ledger.reserve("c", key=None, tier="cloud", backend="g", usd=0.01)
        assert ledger.budget_state(key=None, tier=None).local_only
        now[0] += PAUSE_S  # after the pause: budgets as before
        assert ledger.budget_state(key=None, tier=None).remaining_usd == pytest.approx(0.75)
        ledger.settle(ledger.reserve("d", key=None, tier="cloud", backend="g", usd=0.5), 0.5)
        assert _spent(ledger) == (to_nusd(0.5), to_nusd(0.25), 1)  # "a" held until stale


async def test_async_wrappers(tmp_path: Path) -> None:
    cfg = one_budget(1.0, local_only_below=0.0, per_request_share=1.0)
    ledger = open_url(f"sqlite:///{tmp_path / 'l.db'}", tmp_path, cfg)
    results = await asyncio.gather(
        *(ledger.areserve(f"r{i}", key="k", tier="cloud", backend="g", usd=0.1) for i in range(15)),
        return_exceptions=True,
    )
    held = [r for r in results if not isinstance(r, BaseException)]
    assert len(held) == 10
    assert all(isinstance(r, BudgetExceeded) for r in results if r not in held)
    await asyncio.gather(*(ledger.asettle(r, 0.05) for r in held))
    state = await ledger.abudget_state(key="k", tier="cloud")
    assert state.remaining_usd == pytest.approx(0.5)
    assert int(state.buckets[0].spent_nusd) == 10 * to_nusd(0.05) == NANO // 2
    await ledger.aclose()


def test_buckets_and_refusals_read_as_words() -> None:
    from tierlm.ledger.budgets import BucketState, BudgetState

    nusd = to_nusd(1.0)
    glob = BucketState("global:*:month:2026-12", 200 * nusd, 199 * nusd, nusd // 2)
    assert (glob.label, glob.left) == ("global/month", "$0.50 of $200.00 left")
    key = BucketState("key:team:a:day:2026-12-01", nusd, 0, 0)
    assert key.label == "key team:a/day"
    assert BucketState("tier:cloud:month:2026-12", 0, 0, 0).label == "tier cloud/month"
    state = BudgetState((glob,), local_only_below=0.10, per_request_share=0.05)
    assert state.why_not(0.001) == (
        "budget global/month has $0.50 of $200.00 left, below local_only_below (10%)"
    )
    roomy = BudgetState((key,), local_only_below=0.10, per_request_share=0.05)
    assert roomy.why_not(0.05) is None
    assert roomy.why_not(0.06) == (
        "budget key team:a/day has $1.00 of $1.00 left; this call (~$0.06) is over "
        "per_request_share (5% of what remains)"
    )
    assert (
        roomy.why_not(2.0)
        == "budget key team:a/day has $1.00 of $1.00 left; this call needs ~$2.00"
    )


def test_periods_and_buckets_are_utc_months_and_days() -> None:
    from tierlm.ledger.budgets import buckets_for, period_start

    late = 1796081400.0  # 2026-11-30 23:30 UTC
    assert (period_start("month", late), period_start("day", late)) == ("2026-11", "2026-11-30")
    limits = [
        BudgetLimit(usd=10.0),
        BudgetLimit(usd=4.0),  # the same bucket twice: the smaller limit holds
        BudgetLimit(scope="key", period="day", usd=1.0),
        BudgetLimit(scope="tier", name="cloud", usd=2.0),
    ]
    assert buckets_for(limits, key="alice", tier="site", now=late) == {
        "global:*:month:2026-11": to_nusd(4.0),
        "key:alice:day:2026-11-30": to_nusd(1.0),
    }


def test_the_local_only_threshold_is_strict_and_a_zero_budget_allows_nothing() -> None:
    from tierlm.ledger.budgets import BucketState, BudgetState

    nusd = to_nusd(1.0)
    at = BudgetState((BucketState("global:*:month:2026-11", 100 * nusd, 90 * nusd, 0),))
    assert not at.local_only and at.why_not(0.1) is None  # exactly 10% left: still allowed
    zero = BudgetState((BucketState("global:*:month:2026-11", 0, 0, 0),))
    assert zero.local_only and zero.why_not(1e-9) is not None
    assert zero.why_not(0.0) is None  # what costs nothing is never refused


def test_settling_twice_books_once(tmp_path: Path) -> None:
    with open_url(f"sqlite:///{tmp_path / 'l.db'}", tmp_path, one_budget(10.0)) as ledger:
        r = ledger.reserve("r", key="k", tier="cloud", backend="gpt", usd=0.2)
        assert (r.request_id, r.key, r.tier, r.backend) == ("r", "k", "cloud", "gpt")
        ledger.settle(r, 0.1)
        ledger.settle(r, 0.1)  # a second verdict on the same call changes nothing
        ledger.release(r)
        (b,) = ledger.budget_state(key="k", tier="cloud").buckets
        assert (b.spent_nusd, b.reserved_nusd) == (to_nusd(0.1), 0)
        with pytest.raises(BudgetExceeded) as e:
            ledger.reserve("big", key="k", tier="cloud", backend="gpt", usd=5.0)
        assert (e.value.tier, e.value.backend, e.value.request_id) == ("cloud", "gpt", "big")


def test_the_report_sees_the_buckets_of_the_running_periods(tmp_path: Path) -> None:
    cfg = BudgetConfig(limits=[BudgetLimit(usd=1.0), BudgetLimit(scope="key", usd=0.5)])
    with open_url(f"sqlite:///{tmp_path / 'l.db'}", tmp_path, cfg) as ledger:
        ledger.settle(ledger.reserve("a", key="k", tier="t", backend="b", usd=0.01), 0.01)
        with ledger.store.transaction("budget") as tx:  # last year's bucket is not running
            tx.q(
                "INSERT INTO budget_buckets (bucket, limit_nusd, spent_nusd) VALUES (?, ?, ?)",
                ("global:*:month:2001-01", to_nusd(1.0), to_nusd(1.0)),
            )
        state = ledger.budgets.current()
    assert [(b.label, b.spent_nusd) for b in state.buckets] == [
        ("global/month", to_nusd(0.01)),
        ("key k/month", to_nusd(0.01)),
    ]
    assert state.buckets[0].to_dict()["label"] == "global/month"
    assert state.local_only_below == cfg.local_only_below


def test_the_report_recommends_about_a_low_budget() -> None:
    from tierlm.ledger.advice import recommend
    from tierlm.ledger.budgets import BucketState, BudgetState
    from tierlm.ledger.reports import Report

    def advice(spent: int, kept_local: int = 0) -> list[str]:
        n = to_nusd(1.0)
        state = BudgetState((BucketState("global:*:month:2026-12", 100 * n, spent * n, 0),))
        return recommend(Report(since=0, until=1, budget_kept_local=kept_local), [], state)

    none = "No requests recorded in this period."
    assert advice(95)[0].startswith(
        "Budget global/month has $5.00 of $100.00 left (5%, below local_only_below 10%)"
    )
    assert advice(80)[0].startswith("Budget global/month has $20.00 of $100.00 left (20%)")
    assert advice(10, kept_local=3)[0].startswith("3 request(s) in the last day left out")
    assert advice(10) == [none]
