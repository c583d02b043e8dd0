"""Issue 13: deferred work never delays live traffic on the same local model. A real gateway,
an upstream that holds the batch's requests until the test opens its gate: on a site model
a live request is answered while a deferred line is still in flight (so it was not queued
behind it) and deferred lines leave a slot free; on a model of this host a live request
preempts the deferred line, which runs again later and is recorded once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai

from batch_support import gateway_app, jsonl, upstream, wait_for
from server_util import settings as gateway_settings
from server_util import upstream_backend


def _settings(url: str, ledger: Path, slots: int, boundary: str) -> Any:
    local = upstream_backend("local", url, "m", boundary=boundary)
    return gateway_settings(
        [local],
        [{"name": "tiny", "backends": ["local"]}],
        ledger={"url": f"sqlite:///{ledger}"},
        batch={"poll_seconds": 0.05, "concurrency": 4, "slots": {"local": slots}},
    )


def _batch(client: openai.OpenAI, n: int) -> str:
    f = client.files.create(file=("in.jsonl", jsonl(n, text="HOLD b")), purpose="batch")
    return client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def _output(client: openai.OpenAI, batch_id: str) -> list[dict[str, Any]]:
    done = wait_for(
        lambda: (b := client.batches.retrieve(batch_id)).status == "completed" and b, 60
    )
    return [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]


def test_a_live_request_is_not_queued_behind_deferred_lines(tmp_path: Path) -> None:
    settings = _settings("", tmp_path / "l.db", 2, "site")
    with upstream() as (up, url):
        settings.backends[0].url = url + "/v1"
        with gateway_app(settings) as (app, gw):
            client = openai.OpenAI(base_url=gw + "/v1", api_key="x", max_retries=0, timeout=30)
            batch_id = _batch(client, 3)
            wait_for(lambda: up.held() == ["HOLD b 0"], 30, "the first deferred line upstream")
            live = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "live now"}]
            )
            assert live.choices[0].message.content == "answer to live now"
            # answered while the deferred line still ran, and no second one took the free slot
            assert up.held() == ["HOLD b 0"]
            assert up.seen["HOLD b 1"] == 0 and up.seen["HOLD b 2"] == 0
            up.gate.set()
            out = _output(client, batch_id)
            assert app.state.deferred.scheduler.preempted == 0
    assert [x["custom_id"] for x in out] == ["req-0", "req-1", "req-2"]
    assert all(up.seen[f"HOLD b {i}"] == 1 for i in range(3))


def test_on_this_host_s_model_a_live_request_preempts_the_deferred_line(tmp_path: Path) -> None:
    settings = _settings("", tmp_path / "l.db", 2, "host")
    with upstream() as (up, url):
        settings.backends[0].url = url + "/v1"
        with gateway_app(settings) as (app, gw):
            client = openai.OpenAI(base_url=gw + "/v1", api_key="x", max_retries=0, timeout=30)
            batch_id = _batch(client, 1)
            wait_for(lambda: up.held() == ["HOLD b 0"], 30, "the deferred line upstream")
            live = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "live now"}]
            )
            assert live.choices[0].message.content == "answer to live now"
            assert app.state.deferred.scheduler.preempted == 1
            wait_for(lambda: up.seen["HOLD b 0"] == 2, 30, "the line to start again")
            up.gate.set()
            out = _output(client, batch_id)
    assert [x["custom_id"] for x in out] == ["req-0"]
    assert out[0]["response"]["body"]["choices"][0]["message"]["content"] == "answer to HOLD b 0"
