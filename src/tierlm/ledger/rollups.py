"""Hourly roll-ups, kept by the writer, so reports read hours instead of requests.

Every batch the writer commits also adds, in the same transaction, its sums per
``(hour, tier, backend, key)`` (requests, cost, tokens, external, fallbacks, escalations,
errors), its attempts per ``(hour, backend)``, and its histograms per ``(day, kind, tier,
bucket)`` (latency and time to first token in log-spaced buckets, :data:`LOG_RES` per e-fold,
so percentiles are within 0.5%; complexity of external requests in tenths). Upserts go in key order,
so replicas writing the same rows never deadlock.

Cost is attributed to whoever billed it: each attempt's ``cost_usd`` goes to its own tier and
backend (a cut stream's first backend, a cascade's rejected cheap tier, every consensus
member), and only the rest of the request's cost (none, for records written with attempt
costs; all of it, for older ones) to the tier and backend that answered. Requests are counted
where they were answered, so a group may show cost but no requests.

A report over ``[start, end)`` reads the whole hours (days, for histograms) inside from the
roll-ups and the partial ones at both ends from the raw tables (through the ``ts`` index): the
same numbers as a full scan, at a cost that grows with hours, not requests. Migration
``005_rollups`` fills the roll-ups from requests recorded before it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tierlm.ledger.records import RequestRecord
    from tierlm.ledger.store import Tx

HOUR = 3600
DAY = 86400
LOG_RES = 100  # histogram buckets per e-fold (about 1% wide)
CX_BINS = 10  # complexity histogram of external requests: tenths
_SUM_COLS = "n, cost_usd, prompt_tokens, completion_tokens, external, fallback, escalated, errors"
_NSUMS = 8
# The same sums over raw requests, and the same buckets in SQL (LN and FLOOR: both dialects).
RAW_SUMS = (
    "COUNT(*), COALESCE(SUM(cost_usd), 0), COALESCE(SUM(prompt_tokens), 0), "
    "COALESCE(SUM(completion_tokens), 0), SUM(CASE WHEN boundary = 'external' THEN 1 ELSE 0 END), "
    "SUM(fallback), SUM(escalated), SUM(CASE WHEN outcome <> 'ok' THEN 1 ELSE 0 END)"
)


def log_bucket(ms: float) -> int:
    return math.floor(math.log(max(ms, 0.001)) * LOG_RES)


def log_bucket_sql(column: str) -> str:
    clamped = f"CASE WHEN {column} > 0.001 THEN {column} ELSE 0.001 END"
    return f"CAST(FLOOR(LN({clamped}) * {LOG_RES}) AS BIGINT)"


def cx_bin(c: float) -> int:
    return min(max(math.floor(c * CX_BINS), 0), CX_BINS - 1)


CX_BIN_SQL = (
    f"CASE WHEN complexity >= 1 THEN {CX_BINS - 1} WHEN complexity <= 0 THEN 0 "
    f"ELSE CAST(FLOOR(complexity * {CX_BINS}) AS BIGINT) END"
)
HOUR_SQL = f"CAST(FLOOR(ts / {HOUR}) AS BIGINT)"
DAY_SQL = f"CAST(FLOOR(ts / {DAY}) AS BIGINT)"


@dataclass(slots=True)
class Totals:
    """Additive aggregates of some requests, from roll-ups and raw rows alike."""

    groups: dict[tuple[str, str, str, int], list[float]] = field(default_factory=dict)
    hist: dict[tuple[str, str], dict[int, int]] = field(default_factory=dict)  # (kind, tier)
    attempts: dict[str, list[int]] = field(default_factory=dict)  # backend -> [n, failed]

    def add_group(self, key: tuple[str, str, str, int], sums: Sequence[Any]) -> None:
        acc = self.groups.setdefault(key, [0.0] * _NSUMS)
        for i, v in enumerate(sums):
            acc[i] += float(v or 0)

    def add_hist(self, kind: str, tier: str, bucket: int, n: int) -> None:
        h = self.hist.setdefault((kind, tier), {})
        h[bucket] = h.get(bucket, 0) + n

    def add_attempts(self, backend: str, n: int, failed: int) -> None:
        acc = self.attempts.setdefault(backend, [0, 0])
        acc[0] += n
        acc[1] += failed


def _batch_totals(records: Sequence[RequestRecord]) -> dict[str, dict[tuple[Any, ...], Any]]:
    groups: dict[tuple[Any, ...], list[float]] = {}
    hist: dict[tuple[Any, ...], int] = {}
    att: dict[tuple[Any, ...], list[int]] = {}
    for r in records:
        hour = math.floor(r.ts / HOUR)
        tier = r.tier or "-"
        ext = r.boundary == "external"
        key = r.api_key or "-"
        sums = groups.setdefault((hour, tier, r.backend or "-", key), [0.0] * 8)
        sums[0] += 1
        itemized = 0.0
        for a in r.attempts:
            if a.cost_usd:
                groups.setdefault((hour, a.tier or "-", a.backend, key), [0.0] * 8)[1] += a.cost_usd
                itemized += a.cost_usd
        sums[1] += r.cost_usd - itemized
        sums[2] += r.prompt_tokens
        sums[3] += r.completion_tokens
        sums[4] += ext
        sums[5] += r.fallback
        sums[6] += r.escalated
        sums[7] += r.outcome != "ok"
        day = math.floor(r.ts / DAY)
        for kind, value in (("lat", r.latency_ms), ("ttft", r.ttft_ms)):
            if value is not None:
                k = (day, kind, tier, log_bucket(value))
                hist[k] = hist.get(k, 0) + 1
        if ext and r.complexity is not None:
            k = (day, "cx_ext", "*", cx_bin(r.complexity))
            hist[k] = hist.get(k, 0) + 1
        for a in r.attempts:
            acc = att.setdefault((hour, a.backend), [0, 0])
            acc[0] += 1
            acc[1] += a.outcome != "ok"
    return {"groups": groups, "hist": hist, "att": att}


def add(tx: Tx, records: Sequence[RequestRecord]) -> None:
    """Add a batch of records to the roll-ups (inside the writer's transaction)."""
    t = _batch_totals(records)
    sums = ", ".join(f"{c} = rollup_requests.{c} + excluded.{c}" for c in _SUM_COLS.split(", "))
    tx.many(
        f"INSERT INTO rollup_requests (hour, tier, backend, api_key, {_SUM_COLS}) "
        f"VALUES ({', '.join('?' * 12)}) ON CONFLICT (hour, tier, backend, api_key) "
        f"DO UPDATE SET {sums}",
        [(*k, int(v[0]), v[1], *(int(x) for x in v[2:])) for k, v in sorted(t["groups"].items())],
    )
    tx.many(
        "INSERT INTO rollup_hist (day, kind, tier, bucket, n) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (day, kind, tier, bucket) DO UPDATE SET n = rollup_hist.n + excluded.n",
        [(*k, v) for k, v in sorted(t["hist"].items())],
    )
    tx.many(
        "INSERT INTO rollup_attempts (hour, backend, n, failed) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (hour, backend) DO UPDATE SET n = rollup_attempts.n + excluded.n, "
        "failed = rollup_attempts.failed + excluded.failed",
        [(*k, *v) for k, v in sorted(t["att"].items())],
    )


def from_rollups(tx: Tx, h_lo: int, h_hi: int, out: Totals) -> None:
    """Add the sums and attempts of the whole hours ``[h_lo, h_hi)``."""
    args = (h_lo, h_hi)
    sums_sql = ", ".join(f"SUM({c})" for c in _SUM_COLS.split(", "))
    for tier, backend, key, day, *sums in tx.q(
        f"SELECT tier, backend, api_key, hour / 24, {sums_sql} "
        "FROM rollup_requests WHERE hour >= ? AND hour < ? GROUP BY 1, 2, 3, 4",
        args,
    ):
        out.add_group((tier, backend, key, int(day)), sums)
    for backend, n, failed in tx.q(
        "SELECT backend, SUM(n), SUM(failed) FROM rollup_attempts WHERE hour >= ? AND hour < ? "
        "GROUP BY 1",
        args,
    ):
        out.add_attempts(backend, int(n), int(failed))


def hist_from_rollups(tx: Tx, d_lo: int, d_hi: int, out: Totals) -> None:
    """Add the histograms of the whole days ``[d_lo, d_hi)``."""
    for kind, tier, bucket, n in tx.q(
        "SELECT kind, tier, bucket, SUM(n) FROM rollup_hist WHERE day >= ? AND day < ? "
        "GROUP BY 1, 2, 3",
        (d_lo, d_hi),
    ):
        out.add_hist(kind, tier, int(bucket), int(n))


def from_raw(tx: Tx, day_expr: str, lo: float, hi: float, out: Totals) -> None:
    """Add the sums and attempts of the requests with ``lo <= ts < hi`` (raw tables)."""
    if hi <= lo:
        return
    args = (lo, hi)
    for tier, backend, key, day, *sums in tx.q(
        f"SELECT COALESCE(tier, '-'), COALESCE(backend, '-'), COALESCE(api_key, '-'), "
        f"{day_expr}, {RAW_SUMS} FROM requests WHERE ts >= ? AND ts < ? GROUP BY 1, 2, 3, 4",
        args,
    ):
        out.add_group((tier, backend, key, int(day)), sums)
    for backend, n, failed in tx.q(
        "SELECT a.backend, COUNT(*), SUM(CASE WHEN a.outcome <> 'ok' THEN 1 ELSE 0 END) "
        "FROM requests r JOIN attempts a ON a.request_id = r.id "
        "WHERE r.ts >= ? AND r.ts < ? GROUP BY 1",
        args,
    ):
        out.add_attempts(backend, int(n), int(failed))
    # each attempt's cost moves from the answering tier and backend to its own
    for tier, backend, key, day, a_tier, a_backend, cost in tx.q(
        "SELECT COALESCE(r.tier, '-'), COALESCE(r.backend, '-'), COALESCE(r.api_key, '-'), "
        f"CAST(FLOOR(r.ts / {DAY}) AS BIGINT), COALESCE(a.tier, '-'), a.backend, SUM(a.cost_usd) "
        "FROM requests r JOIN attempts a ON a.request_id = r.id "
        "WHERE r.ts >= ? AND r.ts < ? AND a.cost_usd <> 0 GROUP BY 1, 2, 3, 4, 5, 6",
        args,
    ):
        moved = [0.0] * _NSUMS
        moved[1] = float(cost)
        out.add_group((a_tier, a_backend, key, int(day)), moved)
        moved[1] = -float(cost)
        out.add_group((tier, backend, key, int(day)), moved)


def hist_from_raw(tx: Tx, lo: float, hi: float, out: Totals) -> None:
    """Add the histograms of the requests with ``lo <= ts < hi`` (raw tables)."""
    if hi <= lo:
        return
    args = (lo, hi)
    where = "ts >= ? AND ts < ?"
    for kind, col in (("lat", "latency_ms"), ("ttft", "ttft_ms")):
        for tier, bucket, n in tx.q(
            f"SELECT COALESCE(tier, '-'), {log_bucket_sql(col)}, COUNT(*) FROM requests "
            f"WHERE {where} AND {col} IS NOT NULL GROUP BY 1, 2",
            args,
        ):
            out.add_hist(kind, tier, int(bucket), int(n))
    for bucket, n in tx.q(
        f"SELECT {CX_BIN_SQL}, COUNT(*) FROM requests WHERE {where} "
        "AND boundary = 'external' AND complexity IS NOT NULL GROUP BY 1",
        args,
    ):
        out.add_hist("cx_ext", "*", int(bucket), int(n))


def _split(start: float, end: float, unit: int) -> tuple[int, int]:
    """The whole ``unit``-long periods inside ``[start, end)``, as ``[lo, hi)`` numbers."""
    lo, hi = math.ceil(start / unit), math.floor(end / unit)
    return (lo, hi) if lo < hi else (0, 0)


def collect(tx: Tx, day_expr: str, start: float, end: float) -> Totals:
    """Totals over ``[start, end)``: roll-ups for whole hours (days, for histograms), raw rows
    for the partial ones at both ends."""
    out = Totals()
    lo, hi = _split(start, end, HOUR)
    if lo < hi:
        from_raw(tx, day_expr, start, lo * HOUR, out)
        from_rollups(tx, lo, hi, out)
        from_raw(tx, day_expr, hi * HOUR, end, out)
    else:
        from_raw(tx, day_expr, start, end, out)
    lo, hi = _split(start, end, DAY)
    if lo < hi:
        hist_from_raw(tx, start, lo * DAY, out)
        hist_from_rollups(tx, lo, hi, out)
        hist_from_raw(tx, hi * DAY, end, out)
    else:
        hist_from_raw(tx, start, end, out)
    return out


def hourly(tx: Tx, start: float, end: float) -> dict[tuple[int, str], list[float]]:
    """Requests and cost per ``(hour, tier)`` over ``[start, end)``: the roll-ups for whole
    hours, the raw rows for the partial ones (each edge lies inside one hour)."""
    out: dict[tuple[int, str], list[float]] = {}

    def add(hour: int, tier: str, n: Any, cost: Any) -> None:
        acc = out.setdefault((hour, str(tier)), [0.0, 0.0])
        acc[0] += float(n or 0)
        acc[1] += float(cost or 0)

    lo, hi = _split(start, end, HOUR)
    if lo < hi:
        for hour, tier, n, cost in tx.q(
            "SELECT hour, tier, SUM(n), SUM(cost_usd) FROM rollup_requests "
            "WHERE hour >= ? AND hour < ? GROUP BY 1, 2",
            (lo, hi),
        ):
            add(int(hour), tier, n, cost)
        edges = [(start, lo * HOUR), (hi * HOUR, end)]
    else:  # no whole hour inside: at most two partial ones
        mid = min(max(math.floor(end / HOUR) * HOUR, start), end)
        edges = [(start, mid), (mid, end)]
    for a, b in edges:
        if b <= a:
            continue
        for tier, n, cost in tx.q(
            "SELECT COALESCE(tier, '-'), COUNT(*), COALESCE(SUM(cost_usd), 0) FROM requests "
            "WHERE ts >= ? AND ts < ? GROUP BY 1",
            (a, b),
        ):
            add(math.floor(a / HOUR), tier, n, cost)
        for tier, a_tier, cost in tx.q(  # each attempt's cost on its own tier, as rolled up
            "SELECT COALESCE(r.tier, '-'), COALESCE(a.tier, '-'), SUM(a.cost_usd) "
            "FROM requests r JOIN attempts a ON a.request_id = r.id "
            "WHERE r.ts >= ? AND r.ts < ? AND a.cost_usd <> 0 GROUP BY 1, 2",
            (a, b),
        ):
            add(math.floor(a / HOUR), a_tier, 0, cost)
            add(math.floor(a / HOUR), tier, 0, -float(cost))
    return out


BACKFILL = (
    f"""INSERT INTO rollup_requests (hour, tier, backend, api_key, {_SUM_COLS})
    SELECT {HOUR_SQL}, COALESCE(tier, '-'), COALESCE(backend, '-'), COALESCE(api_key, '-'),
    {RAW_SUMS} FROM requests GROUP BY 1, 2, 3, 4""",
    f"""INSERT INTO rollup_hist (day, kind, tier, bucket, n)
    SELECT {DAY_SQL}, 'lat', COALESCE(tier, '-'), {log_bucket_sql("latency_ms")}, COUNT(*)
    FROM requests WHERE latency_ms IS NOT NULL GROUP BY 1, 3, 4""",
    f"""INSERT INTO rollup_hist (day, kind, tier, bucket, n)
    SELECT {DAY_SQL}, 'ttft', COALESCE(tier, '-'), {log_bucket_sql("ttft_ms")}, COUNT(*)
    FROM requests WHERE ttft_ms IS NOT NULL GROUP BY 1, 3, 4""",
    f"""INSERT INTO rollup_hist (day, kind, tier, bucket, n)
    SELECT {DAY_SQL}, 'cx_ext', '*', {CX_BIN_SQL}, COUNT(*) FROM requests
    WHERE boundary = 'external' AND complexity IS NOT NULL GROUP BY 1, 4""",
    f"""INSERT INTO rollup_attempts (hour, backend, n, failed)
    SELECT CAST(FLOOR(r.ts / {HOUR}) AS BIGINT), a.backend, COUNT(*),
    SUM(CASE WHEN a.outcome <> 'ok' THEN 1 ELSE 0 END)
    FROM attempts a JOIN requests r ON r.id = a.request_id GROUP BY 1, 2""",
)
