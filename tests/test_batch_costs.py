"""A Batch API line costs what every upstream it reached billed, as a live request does (a
cascade's rejected answer, a cut stream's generated part), in the ledger's request row, the
line's own record and the report's ``deferred`` cost. Real gateway (uvicorn on 127.0.0.1),
metered fake upstreams that bill from their own counts, a SQLite ledger file."""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import openai
import pytest

from batch_support import gateway_app, jsonl, wait_for
from fakes import serve
from fakes.metered_server import CUT_AFTER, billed_usd
from fakes.metered_server import make_app as metered_app
from server_util import settings, upstream_backend
from tierlm.ledger import open_ledger

PRICES = {"first": (2.0, 6.0), "second": (30.0, 90.0)}  # USD per million, input and output


def _backend(name: str, url: str, model: str, boundary: str) -> dict[str, Any]:
    price = {"input": PRICES[name][0], "output": PRICES[name][1]}
    return upstream_backend(name, url, model, boundary=boundary, price=price, api_key="sk-test")


def _one_line(
    tmp_path: Path, first: tuple[str, str], cascade: dict[str, Any] | None
) -> tuple[Any, Any, Any, float, float]:
    """One line through the Batch API, "first" (model, boundary) in a cheap tier and "second"
    (external) in a strong one. Returns the gateway's settings, both upstreams' apps, the
    line's recorded cost and its cost at submission."""
    a, b = metered_app(), metered_app()
    ledger = tmp_path / "ledger.sqlite3"
    cheap = {"name": "cheap", "backends": ["first"], "strength": 0.3}
    with serve(a) as a_url, serve(b) as b_url:
        s = settings(
            [_backend("first", a_url, *first), _backend("second", b_url, "metered", "external")],
            [
                {**cheap, **cascade} if cascade else cheap,
                {"name": "strong", "backends": ["second"], "strength": 1.0},
            ],
            ledger={"url": f"sqlite:///{ledger}"},
            batch={"poll_seconds": 0.05},
        )
        with gateway_app(s) as (_, gw):
            client = openai.OpenAI(base_url=gw + "/v1", api_key="unused", max_retries=0)
            f = client.files.create(file=("in.jsonl", jsonl(1, max_tokens=20)), purpose="batch")
            batch = client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            done = wait_for(
                lambda: (x := client.batches.retrieve(batch.id)).status == "completed" and x,
                60,
                "the batch to complete",
            )
            assert done.output_file_id, client.files.content(done.error_file_id or "").text
            out = client.files.content(done.output_file_id).json()
            assert out["response"]["body"]["tierlm"]["backend"] == "second"
    with sqlite3.connect(ledger) as db:
        ((request_cost,),) = db.execute("SELECT cost_usd FROM requests").fetchall()
        ((attempts_cost,),) = db.execute("SELECT SUM(cost_usd) FROM attempts").fetchall()
        ((line_cost, at_submission),) = db.execute(
            "SELECT cost_usd, baseline_usd FROM batch_lines"
        ).fetchall()
    assert line_cost == request_cost == pytest.approx(attempts_cost, rel=1e-12)
    with open_ledger(s) as led:
        deferred = led.report(timedelta(days=1), until=time.time() + 1).deferred
    assert deferred["cost_usd"] == pytest.approx(line_cost, abs=1e-9)
    assert deferred["saved_usd"] == pytest.approx(at_submission - line_cost, abs=1e-9)
    return s, a, b, line_cost, at_submission


def test_a_batch_line_that_escalates_costs_both_answers(tmp_path: Path) -> None:
    _, a, b, cost, _ = _one_line(tmp_path, ("metered", "external"), {"cascade": {"threshold": 1.0}})
    first = billed_usd(a.state.billed, *PRICES["first"])
    assert first > 0  # the rejected answer was billed
    assert cost == pytest.approx(first + billed_usd(b.state.billed, *PRICES["second"]), rel=1e-9)


def test_a_batch_line_whose_stream_was_cut_costs_both_parts(tmp_path: Path) -> None:
    """A line planned on this host runs as a stream (a live request may preempt it); the
    first upstream dies after billing CUT_AFTER chunks and the second finishes the answer.
    The cut part carries tierlm's estimate (a cut stream's usage never arrives): near the
    upstream's own count."""
    _, a, b, cost, _ = _one_line(tmp_path, ("metered-cut", "host"), None)
    ((bill_a,),) = [a.state.billed]
    assert bill_a.completion_tokens == CUT_AFTER and not bill_a.finished
    second = billed_usd(b.state.billed, *PRICES["second"])
    assert cost > second  # the cut part counts
    assert cost - second == pytest.approx(billed_usd([bill_a], *PRICES["first"]), rel=0.3)
