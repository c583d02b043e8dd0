"""A Batch API line costs what every upstream it reached billed, as a live request does: a
cascade's rejected answer too, in the ledger's request row, the line's own record and the
report's ``deferred`` cost. Real gateway (uvicorn on 127.0.0.1), metered fake upstreams that
bill from their own counts, a SQLite ledger file."""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import openai

from batch_support import gateway_app, jsonl, wait_for
from fakes import serve
from fakes.metered_server import billed_usd
from fakes.metered_server import make_app as metered_app
from server_util import settings, upstream_backend
from tierlm.ledger import open_ledger

PRICES = {"first": (2.0, 6.0), "second": (30.0, 90.0)}  # USD per million, input and output


def _backend(name: str, url: str) -> dict[str, Any]:
    price = {"input": PRICES[name][0], "output": PRICES[name][1]}
    return upstream_backend(
        name, url, "metered", boundary="external", price=price, api_key="sk-test"
    )


def test_a_batch_line_that_escalates_costs_both_answers(tmp_path: Path) -> None:
    a, b = metered_app(), metered_app()
    ledger = tmp_path / "ledger.sqlite3"
    with serve(a) as a_url, serve(b) as b_url:
        s = settings(
            [_backend("first", a_url), _backend("second", b_url)],
            [
                {
                    "name": "cheap",
                    "backends": ["first"],
                    "strength": 0.3,
                    "cascade": {"threshold": 1.0},
                },
                {"name": "strong", "backends": ["second"], "strength": 1.0},
            ],
            ledger={"url": f"sqlite:///{ledger}"},
            batch={"poll_seconds": 0.05},
        )
        with gateway_app(s) as (_, gw):
            client = openai.OpenAI(base_url=gw + "/v1", api_key="unused", max_retries=0)
            f = client.files.create(file=("in.jsonl", jsonl(1, max_tokens=12)), purpose="batch")
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
            assert out["response"]["body"]["tierlm"]["backend"] == "second"  # escalated
    billed = billed_usd(a.state.billed, *PRICES["first"]) + billed_usd(
        b.state.billed, *PRICES["second"]
    )
    assert billed_usd(a.state.billed, *PRICES["first"]) > 0  # the rejected answer was billed
    with sqlite3.connect(ledger) as db:
        ((request_cost,),) = db.execute("SELECT cost_usd FROM requests").fetchall()
        ((line_cost, at_submission),) = db.execute(
            "SELECT cost_usd, baseline_usd FROM batch_lines"
        ).fetchall()
    assert request_cost == line_cost
    assert line_cost > 0 and abs(line_cost - billed) <= 1e-12
    with open_ledger(s) as led:
        deferred = led.report(timedelta(days=1), until=time.time() + 1).deferred
    assert abs(deferred["cost_usd"] - billed) <= 1e-9
    assert abs(deferred["saved_usd"] - (at_submission - billed)) <= 1e-9
