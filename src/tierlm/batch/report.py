"""The deferred queue as reports show it (``tierlm report``, ``/admin/report``: key
``deferred``)."""

from __future__ import annotations

from typing import Any

from tierlm.batch.store import STATES
from tierlm.ledger.store import Tx


def deferred_summary(tx: Tx, start: float, end: float) -> dict[str, Any]:
    """The deferred queue for reports: the lines waiting and running now (whenever their
    batch came), the lines of batches submitted in ``[start, end)`` by final state, those
    batches by status, and what the finished lines cost against running each when it was
    submitted (its tokens on the backend planned then): ``saved_usd``."""
    lines = {s: 0 for s in STATES}
    for state, n in tx.q(
        "SELECT state, COUNT(*) FROM batch_lines WHERE state IN ('waiting', 'running') "
        "GROUP BY state"
    ):
        lines[str(state)] = int(n)
    for state, n in tx.q(
        "SELECT l.state, COUNT(*) FROM batch_lines l JOIN batches b ON b.id = l.batch_id "
        "WHERE b.ts >= ? AND b.ts < ? AND l.state NOT IN ('waiting', 'running') "
        "GROUP BY l.state",
        (start, end),
    ):
        lines[str(state)] = int(n)
    batches = {
        str(s): int(n)
        for s, n in tx.q(
            "SELECT status, COUNT(*) FROM batches WHERE ts >= ? AND ts < ? GROUP BY status",
            (start, end),
        )
    }
    ((cost, baseline),) = tx.q(
        "SELECT COALESCE(SUM(l.cost_usd), 0), COALESCE(SUM(COALESCE(l.baseline_usd, "
        "l.cost_usd)), 0) FROM batch_lines l JOIN batches b ON b.id = l.batch_id "
        "WHERE b.ts >= ? AND b.ts < ? AND l.state IN ('done', 'failed')",
        (start, end),
    )
    return {
        **lines,
        "batches": batches,
        "cost_usd": round(float(cost), 9),
        "at_submission_usd": round(float(baseline), 9),
        "saved_usd": round(float(baseline) - float(cost), 9),
    }
