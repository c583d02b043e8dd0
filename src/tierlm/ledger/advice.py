"""Plain recommendations drawn from a report: each names a number and what to try.

Rules, each firing only with enough evidence:

- cloud requests no harder than what a local tier was scored well on: raise that tier's share;
- a tier scored poorly: raise the quality bar;
- a backend whose attempts often fail: check its health and timeouts;
- a budget below ``local_only_below`` (paid tiers are off until its period ends), requests
  it kept local in the last day (their estimate did not fit), or less than ``SPENT_SHARE``
  left;
- many escalations (answers from a stronger tier than the cheapest eligible) or errors;
  and no feedback at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tierlm.ledger.reports import GOOD
from tierlm.pricing import format_usd

if TYPE_CHECKING:
    from tierlm.ledger.budgets import BudgetState
    from tierlm.ledger.reports import Report

MIN_RATINGS = 20
MIN_ATTEMPTS = 50
MIN_BIN = 5  # ratings a complexity bin needs to count
BIN = 0.1  # must match the roll-ups' complexity tenths
SPENT_SHARE = 0.25  # a budget with less than this share left is worth a word


def scored_well_up_to(points: list[tuple[float, float]]) -> tuple[float, int, float] | None:
    """The complexity up to which a tier was scored well, from (complexity, quality) ratings.

    Ratings are binned by complexity (width ``BIN``); from the lowest rated bin up, each bin
    with at least ``MIN_BIN`` ratings and a mean of at least ``GOOD`` extends the range. Returns
    (upper complexity, ratings in range, their mean quality), or ``None``.
    """
    import numpy as np

    if not points:
        return None
    c = np.array([p[0] for p in points])
    q = np.array([p[1] for p in points])
    bins = np.minimum((c / BIN).astype(int), int(1 / BIN) - 1)
    bar, n, total = None, 0, 0.0
    for b in range(int(bins.min()), int(1 / BIN)):
        sel = q[bins == b]
        if sel.size < MIN_BIN or sel.mean() < GOOD:
            break
        bar, n, total = (b + 1) * BIN, n + sel.size, total + float(sel.sum())
    if bar is None or n < MIN_RATINGS:
        return None
    return round(bar, 4), n, total / n


def _cloud_to_local(rep: Report, rated: list[tuple[str, float | None, float]]) -> list[str]:
    cloud_n = sum(g.requests for g in rep.by_tier if g.external)
    local = [g.name for g in rep.by_tier if not g.external]
    if not cloud_n:
        return []
    out = []
    for tier in sorted(local):
        found = scored_well_up_to([(c, q) for t, c, q in rated if t == tier and c is not None])
        if found is None:
            continue
        bar, n, mean = found
        share = sum(rep.cloud_complexity[: round(bar / BIN)]) / cloud_n
        if share >= 0.05:
            out.append(
                f"{share:.0%} of requests sent to the cloud were no harder than those the "
                f"{tier} tier was scored well on (complexity under {bar:.2f}, where its {n} "
                f"rated answers averaged {mean:.2f}): consider raising its share."
            )
    return out


def _budgets(budget: BudgetState | None, kept_local: int) -> list[str]:
    """A budget under ``local_only_below`` (paid tiers are off), requests it kept local
    lately (their estimate did not fit), or one nearly spent."""
    if budget is None or not budget.buckets:
        return []
    low = budget.local_only_below
    out = [
        f"Budget {b.label} has {b.left} ({b.share:.0%}, below local_only_below {low:.0%}): "
        "requests that cost money go to local tiers until the period ends; raise its limit in "
        "budgets.limits if they should not."
        for b in budget.buckets
        if b.limit_nusd == 0 or b.share < low
    ]
    tightest = min(budget.buckets, key=lambda b: b.share)
    if not out and kept_local:
        out.append(
            f"{kept_local} request(s) in the last day left out a paid tier because the budget "
            f"could not cover their estimated cost (budget {tightest.label} has "
            f"{tightest.left}; one call may take {budget.per_request_share:.0%} of it): raise "
            "budgets.limits or per_request_share, or send a lower max_tokens."
        )
    elif not out and tightest.share < SPENT_SHARE:
        out.append(
            f"Budget {tightest.label} has {tightest.left} ({tightest.share:.0%}): below "
            f"{low:.0%} every paid call goes local; raise its limit in budgets.limits if it "
            "should not."
        )
    return out


def recommend(
    rep: Report,
    rated: list[tuple[str, float | None, float]],
    budget: BudgetState | None = None,
) -> list[str]:
    """The recommendations for ``rep``; ``rated`` holds (tier, complexity, quality) ratings;
    ``budget`` the budget buckets running now."""
    out = _budgets(budget, rep.budget_kept_local)
    if rep.requests == 0:
        return [*out, "No requests recorded in this period."]
    out += _cloud_to_local(rep, rated)
    for q in rep.quality:
        if q.ratings >= MIN_RATINGS and q.mean < 0.5:
            out.append(
                f"Answers from the {q.tier} tier were scored poorly (mean {q.mean:.2f} over "
                f"{q.ratings} ratings): consider raising routing.quality so harder requests go "
                f"to a stronger tier."
            )
    for a in rep.attempt_failures:
        if a["attempts"] >= MIN_ATTEMPTS and a["failure_rate"] >= 0.05:
            out.append(
                f"{a['failure_rate']:.0%} of attempts on backend {a['backend']} failed "
                f"({a['failed']} of {a['attempts']}): check its health and timeouts."
            )
    if rep.escalation_rate >= 0.15:
        out.append(
            f"{rep.escalation_rate:.0%} of requests were escalated (answered by a stronger tier "
            "than the cheapest eligible one): if the cheaper tier's answers are scored well, "
            "lower routing.quality to keep more of them there."
        )
    if rep.error_rate >= 0.02:
        out.append(f"{rep.error_rate:.1%} of requests ended in an error.")
    if rep.savings is not None and rep.savings.saved_share > 0:
        out.append(
            f"Routing saved {format_usd(rep.savings.saved_usd)} ({rep.savings.saved_share:.0%}) "
            f"against sending everything to the {rep.savings.strongest_tier} tier."
        )
    if not rep.quality:
        out.append("No feedback recorded: POST /v1/feedback to measure quality per tier.")
    return out
