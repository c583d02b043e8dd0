"""Issue 13: a batch survives its gateway being killed (SIGKILL, a real ``tierlm serve``
subprocess) in the middle: a second gateway on the same SQLite ledger finishes it; every
``custom_id`` is in the output exactly once, in input order; the upstream saw every line
exactly once, except the lines that were in flight when the first gateway died (claimed,
no answer committed), which it saw twice."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import openai

from batch_support import Upstream, upstream, wait_for
from server_util import start_serve

N = 20
QUICK = 6  # lines 0..5 are answered at once; the others wait for the upstream's gate


def _config(tmp_path: Path, up: str) -> dict[str, Any]:
    return {
        "backends": [
            {
                "name": "site",
                "kind": "openai",
                "url": up + "/v1",
                "model": "m",
                "boundary": "site",
            }
        ],
        "tiers": [{"name": "site", "backends": ["site"]}],
        "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"},
        "routing": {"complexity_method": "length"},
        "batch": {
            "poll_seconds": 0.05,
            "lease_seconds": 1,
            "concurrency": 2,
            "slots": {"site": 3},
        },
    }


def _input() -> bytes:
    rows = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": _text(i)}]},
        }
        for i in range(N)
    ]
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def _text(i: int) -> str:
    return f"line {i}" if i < QUICK else f"HOLD line {i}"


def _kill_mid_batch(up: Upstream, tmp_path: Path, upstream_url: str) -> tuple[str, list[str]]:
    """Gateway A runs the quick lines, then dies with two lines in flight upstream."""
    proc, url = start_serve(_config(tmp_path, upstream_url), tmp_path)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        f = client.files.create(file=("in.jsonl", _input()), purpose="batch")
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

        def progress() -> bool:
            counts = client.batches.retrieve(batch.id).request_counts
            return counts is not None and counts.completed == QUICK and len(up.held()) == 2

        wait_for(progress, 60, "the quick lines done and two held upstream")
        in_flight = up.held()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    return batch.id, in_flight


def test_a_killed_gateway_s_batch_finishes_on_the_next(tmp_path: Path) -> None:
    with upstream() as (up, upstream_url):
        batch_id, in_flight = _kill_mid_batch(up, tmp_path, upstream_url)
        assert in_flight == ["HOLD line 6", "HOLD line 7"]
        up.gate.set()  # from now on every request is answered at once
        proc, url = start_serve(_config(tmp_path, upstream_url), tmp_path)
        try:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)

            def finished() -> object:
                b = client.batches.retrieve(batch_id)
                return b if b.status == "completed" else None

            done = wait_for(finished, 60, "the batch to complete on gateway B")
            out = [
                json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()
            ]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert [x["custom_id"] for x in out] == [f"req-{i}" for i in range(N)]
    assert done.error_file_id is None
    answers = [x["response"]["body"]["choices"][0]["message"]["content"] for x in out]
    assert answers == [f"answer to {_text(i)}" for i in range(N)]
    twice = sorted(t for t, n in up.seen.items() if n == 2)
    assert twice == sorted(in_flight)  # only the lines in flight at the kill ran again
    assert all(up.seen[_text(i)] == 1 for i in range(N) if _text(i) not in in_flight)
