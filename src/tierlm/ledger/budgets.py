"""Money budgets: reserve the estimated cost before a call, settle the real cost after.

Limits come from ``budgets.limits`` (global, per key, per tier; monthly or daily, UTC). Each
limit in force for a request is one *bucket* row (``"key:alice:month:2026-11"``) holding
integer nano-USD: the limit, what was spent, and what is reserved by calls in flight.

``reserve`` checks and books every bucket in one transaction (SQLite ``BEGIN IMMEDIATE``;
Postgres ``SELECT ... FOR UPDATE`` in bucket order), so concurrent requests can never together
pass a limit. A reservation is refused (:class:`~tierlm.errors.BudgetExceeded`) when

- it would take a bucket past its limit;
- it asks for more than ``per_request_share`` of what remains (default 5%); or
- less than ``local_only_below`` of a bucket remains (default 10%): routing is local-only.

Only calls that cost money come here: an estimate of zero returns a no-op reservation without
touching the database, so local tiers are never blocked by a money budget. The router uses
:meth:`BudgetState.allows` to degrade to local tiers; only a request that pins an external tier
sees the error. Settle with the real cost; when it exceeds the estimate, the excess is still
booked (the call was made), so estimates should be upper bounds (``max_tokens`` based).

When the database cannot be reached (it is down, or no connection frees up in time), the
budgets count as *unavailable* for ``PAUSE_S`` seconds: ``state`` says so (local-only, with
the reason), ``reserve`` refuses every paid call at once (``BudgetExceeded``: the plan goes on
to local tiers), and ``settle`` logs the cost it could not book. Nothing is spent unchecked,
and local tiers keep answering.

A process that dies between reserve and settle (a killed replica) leaves its reservations
held. ``expire`` frees those older than ``STALE_AFTER_S``: when a ledger opens, and from
``reserve`` at most once every ``SWEEP_EVERY_S`` per process, so replicas that keep running
give a dead one's money back without a restart.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tierlm.config.settings import BudgetConfig, BudgetLimit
from tierlm.errors import BudgetExceeded
from tierlm.ledger.store import Store, Tx
from tierlm.pricing import format_usd

log = logging.getLogger("tierlm.ledger")

NANO = 1_000_000_000
PAUSE_S = 5.0  # after the database failed, how long budgets count as unavailable
STALE_AFTER_S = 900.0  # a reservation this old belongs to a process that died
SWEEP_EVERY_S = 60.0


def to_nusd(usd: float) -> int:
    """USD to integer nano-USD, rounded up (never under-reserve)."""
    return max(0, math.ceil(round(usd * NANO, 3)))


def period_start(period: str, now: float) -> str:
    d = datetime.fromtimestamp(now, UTC)
    return d.strftime("%Y-%m") if period == "month" else d.strftime("%Y-%m-%d")


def buckets_for(
    limits: Sequence[BudgetLimit], *, key: str | None, tier: str | None, now: float
) -> dict[str, int]:
    """The buckets in force for a request, each with its limit in nano-USD.

    A ``key`` or ``tier`` limit without a ``name`` applies to every key (tier) separately.
    """
    out: dict[str, int] = {}
    for lim in limits:
        if lim.scope == "global":
            name = "*"
        else:
            who = key if lim.scope == "key" else tier
            if who is None or (lim.name is not None and lim.name != who):
                continue
            name = who
        bucket = f"{lim.scope}:{name}:{lim.period}:{period_start(lim.period, now)}"
        out[bucket] = min(out.get(bucket, to_nusd(lim.usd)), to_nusd(lim.usd))
    return out


def _running(bucket: str, now: float) -> bool:
    """Whether ``bucket`` (``scope:name:period:start``) belongs to the period running now."""
    _head, period, start = bucket.rsplit(":", 2)
    return start == period_start(period, now)


@dataclass(frozen=True, slots=True)
class BucketState:
    bucket: str
    limit_nusd: int
    spent_nusd: int
    reserved_nusd: int

    @property
    def remaining_nusd(self) -> int:
        return max(0, self.limit_nusd - self.spent_nusd - self.reserved_nusd)

    @property
    def share(self) -> float:
        return self.remaining_nusd / self.limit_nusd if self.limit_nusd > 0 else 0.0

    @property
    def label(self) -> str:
        """``global/month``, ``key alice/day``, ``tier cloud/month`` (from the bucket name)."""
        head, period, _start = self.bucket.rsplit(":", 2)
        scope, _, name = head.partition(":")
        return f"{scope}/{period}" if scope == "global" else f"{scope} {name}/{period}"

    @property
    def left(self) -> str:
        """``$0.00005 of $200.00 left``."""
        return (
            f"{format_usd(self.remaining_nusd / NANO)} of {format_usd(self.limit_nusd / NANO)} left"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "label": self.label,
            "limit_usd": self.limit_nusd / NANO,
            "spent_usd": self.spent_nusd / NANO,
            "reserved_usd": self.reserved_nusd / NANO,
            "remaining_usd": self.remaining_nusd / NANO,
            "remaining_share": round(self.share, 6),
        }


@dataclass(frozen=True, slots=True)
class BudgetState:
    """The money budgets in force for one (key, tier), as of one read."""

    buckets: tuple[BucketState, ...] = ()
    local_only_below: float = 0.10
    per_request_share: float = 0.05
    unavailable: str | None = None  # why the budgets could not be read: nothing paid may go

    @property
    def limited(self) -> bool:
        return bool(self.buckets) or self.unavailable is not None

    @property
    def remaining_usd(self) -> float | None:
        """The least remaining over all buckets; ``None`` when nothing limits."""
        return min(b.remaining_nusd for b in self.buckets) / NANO if self.buckets else None

    @property
    def share(self) -> float | None:
        return min(b.share for b in self.buckets) if self.buckets else None

    @property
    def local_only(self) -> bool:
        """Less than ``local_only_below`` of some budget remains (or the budgets cannot be
        read): route to local tiers only."""
        return self.unavailable is not None or any(
            b.share < self.local_only_below or b.limit_nusd == 0 for b in self.buckets
        )

    @property
    def cap_usd(self) -> float | None:
        """The most one request may cost now (``per_request_share`` of what remains)."""
        if not self.buckets:
            return None
        share = self.per_request_share
        return min(math.floor(b.remaining_nusd * share) for b in self.buckets) / NANO

    def why_not(self, usd: float) -> str | None:
        """Why an external call estimated at ``usd`` is not allowed, or ``None`` if it is."""
        n = to_nusd(usd)
        if n <= 0:
            return None
        if self.unavailable is not None:
            return f"budget unavailable ({self.unavailable}): only what costs nothing"
        for b in sorted(self.buckets, key=lambda b: b.share):
            if b.limit_nusd == 0 or b.share < self.local_only_below:
                return (
                    f"budget {b.label} has {b.left}, below local_only_below "
                    f"({self.local_only_below:.0%})"
                )
            if n > b.remaining_nusd:
                return f"budget {b.label} has {b.left}; this call needs ~{format_usd(usd)}"
            if n > math.floor(b.remaining_nusd * self.per_request_share):
                return (
                    f"budget {b.label} has {b.left}; this call (~{format_usd(usd)}) is over "
                    f"per_request_share ({self.per_request_share:.0%} of what remains)"
                )
        return None

    def allows(self, external_cost_estimate: float) -> bool:
        """May a call estimated at this many USD go out now? Zero cost is always allowed."""
        return self.why_not(external_cost_estimate) is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "limited": self.limited,
            "remaining_usd": self.remaining_usd,
            "remaining_share": self.share,
            "local_only": self.local_only,
            "unavailable": self.unavailable,
            "per_request_cap_usd": self.cap_usd,
            "buckets": [b.to_dict() for b in self.buckets],
        }


@dataclass(slots=True)
class Reservation:
    """Money held for one call until it is settled or released."""

    id: str
    request_id: str
    nusd: int = 0
    buckets: tuple[str, ...] = ()
    key: str | None = None
    tier: str | None = None
    backend: str | None = None
    done: bool = field(default=False)

    @property
    def usd(self) -> float:
        return self.nusd / NANO

    @property
    def noop(self) -> bool:
        return self.nusd == 0 or not self.buckets


class BudgetBook:
    """Reserve, settle and release against the bucket rows of one store."""

    def __init__(self, store: Store, config: BudgetConfig) -> None:
        self.store = store
        self.config = config
        self._next_sweep = 0.0  # when reserve next frees stale reservations
        self.clock = time.monotonic  # for the pause after a failure (injectable: tests)
        self._down_until = 0.0  # budgets unavailable until then
        self._down_why = ""

    def _down(self) -> str | None:
        """Why the budgets count as unavailable now, or ``None``."""
        return self._down_why if self.clock() < self._down_until else None

    def _failed(self, e: BaseException) -> str:
        self._down_until = self.clock() + PAUSE_S
        self._down_why = f"ledger database unreachable: {type(e).__name__}"
        log.warning("budgets unavailable for %.0f s, paid calls refused: %s", PAUSE_S, e)
        return self._down_why

    def _empty(self, unavailable: str | None = None) -> BudgetState:
        cfg = self.config
        return BudgetState((), cfg.local_only_below, cfg.per_request_share, unavailable)

    def _read(self, tx: Tx, buckets: dict[str, int], lock: bool) -> BudgetState:
        names = sorted(buckets)
        marks = ", ".join("?" * len(names))
        sql = (
            "SELECT bucket, limit_nusd, spent_nusd, reserved_nusd FROM budget_buckets "
            f"WHERE bucket IN ({marks}) ORDER BY bucket" + (self.store.for_update if lock else "")
        )
        found = {r[0]: r for r in tx.q(sql, names)}
        states = tuple(
            BucketState(n, buckets[n], int(found[n][2]), int(found[n][3]))
            if n in found
            else BucketState(n, buckets[n], 0, 0)
            for n in names
        )
        return BudgetState(states, self.config.local_only_below, self.config.per_request_share)

    def state(self, *, key: str | None, tier: str | None, now: float | None = None) -> BudgetState:
        buckets = buckets_for(self.config.limits, key=key, tier=tier, now=now or time.time())
        if not buckets:
            return self._empty()
        if (down := self._down()) is not None:
            return self._empty(down)
        try:
            with self.store.transaction("read") as tx:
                return self._read(tx, buckets, lock=False)
        except self.store.errors as e:
            return self._empty(self._failed(e))

    def current(self, now: float | None = None) -> BudgetState:
        """Every bucket of the periods running now that has been used (for reports)."""
        now = now or time.time()
        with self.store.transaction("read") as tx:
            rows = tx.q(
                "SELECT bucket, limit_nusd, spent_nusd, reserved_nusd FROM budget_buckets "
                "ORDER BY bucket"
            )
        states = tuple(
            BucketState(str(b), int(lim), int(spent), int(held))
            for b, lim, spent, held in rows
            if _running(str(b), now)
        )
        return BudgetState(states, self.config.local_only_below, self.config.per_request_share)

    def reserve(
        self,
        request_id: str,
        *,
        key: str | None,
        tier: str | None,
        backend: str | None,
        usd: float,
        now: float | None = None,
    ) -> Reservation:
        now = now or time.time()
        rid = uuid.uuid4().hex
        nusd = to_nusd(usd)
        buckets = buckets_for(self.config.limits, key=key, tier=tier, now=now)
        res = Reservation(rid, request_id, nusd, tuple(sorted(buckets)), key, tier, backend)
        if res.noop:
            return res
        down = self._down()
        if down is None:
            try:
                if now >= self._next_sweep:
                    self.expire(now=now)
                self._book(res, buckets, usd, now)
                return res
            except self.store.errors as e:
                down = self._failed(e)
        raise BudgetExceeded(
            f"budget unavailable ({down}): no paid call now",
            request_id=request_id,
            tier=tier,
            backend=backend,
        )

    def _book(self, res: Reservation, buckets: dict[str, int], usd: float, now: float) -> None:
        """Hold ``res`` against ``buckets`` in one transaction, or raise ``BudgetExceeded``."""
        with self.store.transaction("budget") as tx:
            tx.many(
                "INSERT INTO budget_buckets (bucket, limit_nusd) VALUES (?, ?) "
                "ON CONFLICT (bucket) DO UPDATE SET limit_nusd = excluded.limit_nusd",
                sorted(buckets.items()),
            )
            why = self._read(tx, buckets, lock=True).why_not(usd)
            if why is not None:
                raise BudgetExceeded(
                    why, request_id=res.request_id, tier=res.tier, backend=res.backend
                )
            marks = ", ".join("?" * len(buckets))
            tx.q(
                f"UPDATE budget_buckets SET reserved_nusd = reserved_nusd + ? "
                f"WHERE bucket IN ({marks})",
                (res.nusd, *res.buckets),
            )
            tx.q(
                "INSERT INTO reservations (id, request_id, ts, nusd, buckets) "
                "VALUES (?, ?, ?, ?, ?)",
                (res.id, res.request_id, now, res.nusd, json.dumps(res.buckets)),
            )

    def settle(self, res: Reservation, usd: float) -> None:
        """Book the real cost and free the reservation (once; later calls do nothing)."""
        if res.done:
            return
        res.done = True
        spent = to_nusd(usd)
        if not res.buckets or (res.noop and spent == 0):
            return  # no budget in force, or nothing held and nothing spent
        try:
            with self.store.transaction("budget") as tx:
                self._finish(tx, res.id, spent, res.buckets)
        except self.store.errors as e:  # the call was made: its answer is not taken back
            self._failed(e)
            log.error(
                "budget settle failed: $%.6f spent by request %s is not booked in the budget "
                "(its ledger record keeps the cost; the reservation is freed when stale)",
                spent / NANO,
                res.request_id,
            )

    def release(self, res: Reservation) -> None:
        """Free the reservation without spending (the call was not made)."""
        self.settle(res, 0.0)

    def _finish(self, tx: Tx, rid: str, spent: int, buckets: Sequence[str]) -> None:
        held = tx.q("DELETE FROM reservations WHERE id = ? RETURNING nusd", (rid,))
        nusd = int(held[0][0]) if held else 0  # gone: expired, already freed
        if not buckets:
            return
        marks = ", ".join("?" * len(buckets))
        tx.q(  # lock in bucket order, as reserve does, so two transactions never deadlock
            f"SELECT bucket FROM budget_buckets WHERE bucket IN ({marks}) ORDER BY bucket"
            + self.store.for_update,
            tuple(buckets),
        )
        tx.q(
            "UPDATE budget_buckets SET reserved_nusd = reserved_nusd - ?, "
            f"spent_nusd = spent_nusd + ? WHERE bucket IN ({marks})",
            (nusd, spent, *buckets),
        )

    def expire(self, older_than_s: float = STALE_AFTER_S, now: float | None = None) -> int:
        """Free reservations older than this (their process died before settling)."""
        now = now or time.time()
        self._next_sweep = now + SWEEP_EVERY_S
        cutoff = now - older_than_s
        with self.store.transaction("budget") as tx:
            stale = tx.q("SELECT id, buckets FROM reservations WHERE ts < ? ORDER BY id", (cutoff,))
            for rid, buckets in stale:
                self._finish(tx, rid, 0, json.loads(buckets))
        return len(stale)
