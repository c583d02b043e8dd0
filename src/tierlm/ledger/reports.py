"""Reports over the ledger: spend, latency, fallbacks, savings, quality, recommendations.

Totals come from the hourly roll-ups (:mod:`tierlm.ledger.rollups`) plus the raw rows of the
partial hours at both ends, so a report costs about the same over a thousand requests or ten
million. Latency percentiles come from log-spaced histograms (within 0.5%); quality from the
(small) feedback table joined to its requests. The period is ``[until - since, until)``.
``Report.to_dict`` is the JSON of ``tierlm report --json`` and ``/admin/report``;
:mod:`tierlm.ledger.plots` draws the PNG charts.

Spend by tier and backend is what each billed: an attempt's cost goes to its own tier and
backend (a failed, cut or outvoted attempt too), requests are counted where they were answered.

Savings are measured against sending every request to the strongest tier: at that tier's
configured price when known, else at the cost per token that tier was observed to charge.

Rates, the same words as plans and records use: ``fallback_rate`` is the share of requests
answered after an attempt failed (another backend answered); ``escalation_rate`` the share
answered by a stronger tier than the cheapest one eligible for them. ``budgets`` lists the
budget buckets of the periods running now, with what is left; ``budget_kept_local`` counts
the requests of the last day (raw rows: one day at most is scanned) whose plan left a paid
tier out because the budget could not cover it; ``privacy_kept_local`` the requests of the
last day whose plan left a backend out for its boundary (the request's privacy level or its
key's ceiling kept it nearer). ``hourly`` is requests and spend per hour (hours since the
epoch, UTC) and tier, the series ``daily`` is per day.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tierlm.ledger import rollups
from tierlm.ledger.rollups import LOG_RES, Totals
from tierlm.ledger.store import Store, Tx

if TYPE_CHECKING:
    from tierlm.ledger.budgets import BudgetState

GOOD = 0.7  # a feedback quality at or above this is "scored well"
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_Q = "CASE WHEN f.score IS NOT NULL THEN f.score WHEN f.thumbs = 'up' THEN 1.0 ELSE 0.0 END"


def parse_since(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s``; ``all`` (or any span past 100 years) for
    everything."""
    everything = timedelta(days=365 * 100)
    if text.strip().lower() == "all":
        return everything
    m = _SPAN.match(text.lower())
    if not m:
        raise ValueError(f"expected a span like 30d, 12h, 90m, 2w or 'all', got {text!r}")
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    # a span longer than everything is everything (and never overflows a timedelta)
    return min(timedelta(seconds=seconds), everything) if seconds < 1e12 else everything


@dataclass(slots=True)
class Group:
    name: str
    requests: int
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    share: float  # of all requests
    external: bool = False  # most of its requests left the site
    fallback_rate: float = 0.0
    escalation_rate: float = 0.0
    error_rate: float = 0.0


@dataclass(slots=True)
class Latency:
    name: str
    n: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    ttft_p50_ms: float | None


@dataclass(slots=True)
class Quality:
    tier: str
    ratings: int
    mean: float
    well_scored: float  # share of ratings >= GOOD


@dataclass(slots=True)
class Savings:
    method: str  # "price" (configured) or "observed"
    strongest_tier: str
    baseline_usd: float
    actual_usd: float
    saved_usd: float
    saved_share: float


@dataclass(slots=True)
class CascadeStats:
    """The judged answers of one tier (execute/cascade.py) and what escalating them cost."""

    tier: str
    judged: int
    accepted: int
    escalated: int
    kept: int  # below the bar, but nothing stronger could answer
    late_fail: int  # below the bar after streaming through
    acceptance_rate: float
    escalation_cost_usd: float  # total cost of the requests that escalated
    escalated_wait_ms: float | None  # mean time spent on the cheap answers that escalated


@dataclass(slots=True)
class Report:
    since: float
    until: float
    requests: int = 0
    cost_usd: float = 0.0
    fallback_rate: float = 0.0
    escalation_rate: float = 0.0
    error_rate: float = 0.0
    by_tier: list[Group] = field(default_factory=list)
    by_backend: list[Group] = field(default_factory=list)
    by_key: list[Group] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)
    quality: list[Quality] = field(default_factory=list)
    savings: Savings | None = None
    daily: list[dict[str, Any]] = field(default_factory=list)  # day, tier, requests, cost_usd
    hourly: list[dict[str, Any]] = field(default_factory=list)  # hour, tier, requests, cost_usd
    attempt_failures: list[dict[str, Any]] = field(default_factory=list)
    cloud_complexity: list[int] = field(default_factory=list)  # external requests per tenth
    cascade: list[CascadeStats] = field(default_factory=list)
    budgets: list[dict[str, Any]] = field(default_factory=list)  # buckets running now
    budget_kept_local: int = 0  # requests of the last day whose plan left a paid tier out
    privacy_kept_local: int = 0  # requests of the last day kept nearer by their boundary
    recommendations: list[str] = field(default_factory=list)
    # the most frequent shapes of the newest 100,000 stored prompts, and what a rule would save
    hot_paths: list[dict[str, Any]] = field(default_factory=list)
    # the deferred queue (Batch API): lines by state, batches by status, saved_usd
    deferred: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # how long building the report took

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fold(totals: Totals, key: Callable[[tuple[str, str, str, int]], str]) -> list[Group]:
    """Add up the group sums of ``totals`` by ``key``."""
    acc: dict[str, list[float]] = {}
    for k, v in totals.groups.items():
        sums = acc.setdefault(key(k), [0.0] * len(v))
        for i, x in enumerate(v):
            sums[i] += x
    total = sum(v[0] for v in acc.values())
    out = []
    for name, (n, cost, pt, ct, ext, fb, esc, err) in acc.items():
        out.append(
            Group(
                name,
                round(n),
                round(cost, 9),
                round(pt),
                round(ct),
                n / total if total else 0.0,
                external=ext * 2 > n,
                # a group may have cost but no requests: attempts it billed, others answered
                fallback_rate=fb / n if n else 0.0,
                escalation_rate=esc / n if n else 0.0,
                error_rate=err / n if n else 0.0,
            )
        )
    return sorted(out, key=lambda g: (-g.cost_usd, -g.requests, g.name))


def percentiles(hist: dict[int, int], qs: Sequence[float]) -> list[float | None]:
    """Nearest-rank percentiles (0-100) from a log-bucket histogram ``{bucket: count}``."""
    n = sum(hist.values())
    if n == 0:
        return [None for _ in qs]
    buckets = sorted(hist)
    out: list[float | None] = []
    for q in qs:
        rank, seen = max(1, math.ceil(q / 100 * n)), 0
        for b in buckets:
            seen += hist[b]
            if seen >= rank:
                out.append(round(math.exp((b + 0.5) / LOG_RES), 2))
                break
    return out


def _merged(hists: list[dict[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in hists:
        for b, n in h.items():
            out[b] = out.get(b, 0) + n
    return out


def _latency(totals: Totals) -> list[Latency]:
    tiers = sorted(t for kind, t in totals.hist if kind == "lat")
    out = []
    for tier in ["all", *tiers]:
        names = tiers if tier == "all" else [tier]
        lat = _merged([totals.hist[("lat", t)] for t in names])
        ttft = _merged([totals.hist.get(("ttft", t), {}) for t in names])
        p50, p90, p99 = percentiles(lat, (50, 90, 99))
        (t50,) = percentiles(ttft, (50,))
        out.append(Latency(tier, sum(lat.values()), p50, p90, p99, t50))
    return out if tiers else []


def _quality(rated: list[tuple[str, float | None, float]]) -> list[Quality]:
    by_tier: dict[str, list[float]] = {}
    for tier, _c, q in rated:
        by_tier.setdefault(tier, []).append(q)
    return [
        Quality(t, len(qs), round(sum(qs) / len(qs), 4), sum(q >= GOOD for q in qs) / len(qs))
        for t, qs in sorted(by_tier.items())
    ]


def _savings(
    report: Report, strongest: str | None, price: tuple[float, float] | None
) -> Savings | None:
    if strongest is None or report.requests == 0:
        return None
    pt = sum(g.prompt_tokens for g in report.by_tier)
    ct = sum(g.completion_tokens for g in report.by_tier)
    if price is not None and (price[0] > 0 or price[1] > 0):
        method, baseline = "price", (pt * price[0] + ct * price[1]) / 1e6
    else:
        top = next((g for g in report.by_tier if g.name == strongest), None)
        tokens = (top.prompt_tokens + top.completion_tokens) if top else 0
        if top is None or tokens == 0 or top.cost_usd <= 0:
            return None
        method, baseline = "observed", (pt + ct) * top.cost_usd / tokens
    saved = baseline - report.cost_usd
    return Savings(
        method,
        strongest,
        round(baseline, 6),
        round(report.cost_usd, 6),
        round(saved, 6),
        saved / baseline if baseline > 0 else 0.0,
    )


def _cascade(rows: list[tuple[Any, ...]]) -> list[CascadeStats]:
    """Rows of (tier, decision, n, cost of those requests, mean attempt latency)."""
    by_tier: dict[str, dict[str, tuple[int, float, float | None]]] = {}
    for tier, decision, n, cost, wait in rows:
        by_tier.setdefault(str(tier), {})[str(decision)] = (int(n), float(cost or 0.0), wait)
    out = []
    for tier, d in sorted(by_tier.items()):
        count = {k: v[0] for k, v in d.items()}
        judged = sum(count.values())
        esc = d.get("escalate", (0, 0.0, None))
        out.append(
            CascadeStats(
                tier,
                judged,
                count.get("accept", 0),
                esc[0],
                count.get("keep", 0),
                count.get("late_fail", 0),
                count.get("accept", 0) / judged,
                round(esc[1], 9),
                None if esc[2] is None else round(float(esc[2]), 1),
            )
        )
    return out


def _daily(totals: Totals) -> list[dict[str, Any]]:
    """Requests and spend per UTC day (days since the epoch) and tier."""
    out: dict[tuple[int, str], list[float]] = {}
    for (tier, _b, _k, day), sums in totals.groups.items():
        acc = out.setdefault((day, tier), [0.0, 0.0])
        acc[0] += sums[0]
        acc[1] += sums[1]
    return [
        {"day": day, "tier": tier, "requests": round(n), "cost_usd": round(cost, 9)}
        for (day, tier), (n, cost) in sorted(out.items())
    ]


def _hourly(tx: Tx, start: float, end: float) -> list[dict[str, Any]]:
    return [
        {"hour": hour, "tier": tier, "requests": round(n), "cost_usd": round(cost, 9)}
        for (hour, tier), (n, cost) in sorted(rollups.hourly(tx, start, end).items())
    ]


def _kept_local(tx: Tx, start: float, end: float, why: str) -> int:
    """Requests in ``[start, end)`` whose plan left a backend out for ``why`` (the policy's
    reason reads ``excluded NAME: budget ...`` or ``excluded NAME: boundary X is beyond Y``)."""
    ((n,),) = tx.q(
        "SELECT COUNT(*) FROM requests WHERE ts >= ? AND ts < ? AND reasons LIKE ?",
        (start, end, f"%excluded %: {why} %"),
    )
    return int(n)


def _hot_paths(tx: Tx, start: float, end: float) -> list[dict[str, Any]]:
    """What answering the top shapes by rules or pinned answers would save."""
    from tierlm.layer0.hotpaths import top_shapes

    return [
        {
            "shape": c.shape,
            "requests": c.requests,
            "cost_usd": round(c.cost_usd, 9),
            "model_calls": c.model_calls,
        }
        for c in top_shapes(tx, start, end)
    ]


def build_report(
    store: Store,
    *,
    since: timedelta,
    until: float | None = None,
    strongest_tier: str | None = None,
    baseline_price: tuple[float, float] | None = None,
    budget: BudgetState | None = None,
) -> Report:
    """Aggregate the requests recorded in ``[until - since, until)``; ``budget``: the budget
    buckets running now, for the report and its recommendations."""
    from tierlm.batch.report import deferred_summary
    from tierlm.ledger.advice import recommend

    t0 = time.perf_counter()
    end = until if until is not None else time.time()
    start = end - since.total_seconds()
    rep = Report(since=start, until=end)
    args = (start, end)
    with store.transaction("read") as tx:
        totals = rollups.collect(tx, store.day_expr, start, end)
        rep.by_tier = _fold(totals, lambda k: k[0])
        rep.by_backend = _fold(totals, lambda k: k[1])
        rep.by_key = _fold(totals, lambda k: k[2])
        rep.requests = n = sum(g.requests for g in rep.by_tier)
        rep.daily = _daily(totals)
        rep.hourly = _hourly(tx, start, end)
        if n:
            rep.cost_usd = round(sum(g.cost_usd for g in rep.by_tier), 6)
            rep.fallback_rate = sum(g.fallback_rate * g.requests for g in rep.by_tier) / n
            rep.escalation_rate = sum(g.escalation_rate * g.requests for g in rep.by_tier) / n
            rep.error_rate = sum(g.error_rate * g.requests for g in rep.by_tier) / n
        rep.latency = _latency(totals)
        cx = totals.hist.get(("cx_ext", "*"), {})
        rep.cloud_complexity = [cx.get(i, 0) for i in range(rollups.CX_BINS)]
        rated = [  # feedback is small: "+r.ts" drives the join from it
            (str(t), None if c is None else float(c), float(q))
            for t, c, q in tx.q(
                f"SELECT COALESCE(r.tier, '-'), r.complexity, {_Q} FROM feedback f "
                "JOIN requests r ON r.id = f.request_id WHERE +r.ts >= ? AND +r.ts < ?",
                args,
            )
        ]
        rep.quality = _quality(rated)
        rep.attempt_failures = [
            {"backend": b, "attempts": n, "failed": f, "failure_rate": f / n}
            for b, (n, f) in sorted(totals.attempts.items())
            if n
        ]
        rep.cascade = _cascade(
            tx.q(
                "SELECT a.tier, a.judge_decision, COUNT(*), SUM(r.cost_usd), AVG(a.latency_ms) "
                "FROM attempts a JOIN requests r ON r.id = a.request_id "
                "WHERE a.judge_decision IS NOT NULL AND r.ts >= ? AND r.ts < ? GROUP BY 1, 2",
                args,
            )
        )
        rep.savings = _savings(rep, strongest_tier, baseline_price)
        rep.budgets = [b.to_dict() for b in budget.buckets] if budget else []
        if budget is not None and budget.buckets:
            rep.budget_kept_local = _kept_local(tx, max(start, end - 86400.0), end, "budget")
        rep.privacy_kept_local = _kept_local(tx, max(start, end - 86400.0), end, "boundary")
        rep.recommendations = recommend(rep, rated, budget)
        rep.hot_paths = _hot_paths(tx, start, end)
        rep.deferred = deferred_summary(tx, start, end)
    rep.seconds = round(time.perf_counter() - t0, 4)
    return rep
