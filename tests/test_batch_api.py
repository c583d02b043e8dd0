"""Issue 13: deferred work through the OpenAI Batch API, driven by the official ``openai``
SDK against a real gateway (uvicorn on 127.0.0.1, a SQLite ledger file) and a fake upstream.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from batch_support import Clock, gateway_app, jsonl, upstream, wait_for
from server_util import ADMIN_KEY, USER_KEY, sha, upstream_backend
from server_util import settings as gateway_settings
from tierlm.config import load_settings

OTHER_KEY = "tlm-test-other-key-0123456789"


def _settings(url: str, ledger: Path, *, keys: bool = False, **batch: Any) -> Any:
    server: dict[str, Any] = {}
    if keys:
        server["api_keys"] = [
            {"name": "user", "hash": sha(USER_KEY)},
            {"name": "other", "hash": sha(OTHER_KEY)},
            {"name": "admin", "hash": sha(ADMIN_KEY), "admin": True},
        ]
    return gateway_settings(
        [upstream_backend("site", url, "served-model")],
        [{"name": "site", "backends": ["site"]}],
        ledger={"url": f"sqlite:///{ledger}"},
        server=server,
        batch={"poll_seconds": 0.05, "slots": {"site": 4}, **batch},
    )


def _client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def _submit(client: openai.OpenAI, data: bytes, window: str = "24h") -> Any:
    f = client.files.create(file=("in.jsonl", data), purpose="batch")
    return client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window=window,  # type: ignore[arg-type]
    )


def _finished(client: openai.OpenAI, batch_id: str) -> Any:
    def check() -> Any:
        b = client.batches.retrieve(batch_id)
        return b if b.status in ("completed", "expired", "cancelled", "failed") else None

    return wait_for(check, 60, f"batch {batch_id} to finish")


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_sdk_batch_runs_to_completion_in_order(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    with upstream() as (up, url), gateway_app(_settings(url, ledger)) as (_, gw):
        client = _client(gw)
        batch = _submit(client, jsonl(12))
        assert batch.status == "in_progress" and batch.request_counts is not None
        assert batch.request_counts.total == 12
        done = _finished(client, batch.id)
        assert done.status == "completed" and done.error_file_id is None
        assert done.request_counts is not None and done.request_counts.completed == 12
        out = _lines(client, done.output_file_id)
        assert [x["custom_id"] for x in out] == [f"req-{i}" for i in range(12)]
        for i, x in enumerate(out):
            assert x["error"] is None and x["response"]["status_code"] == 200
            body = x["response"]["body"]
            assert body["choices"][0]["message"]["content"] == f"answer to line {i}"
            assert body["tierlm"]["backend"] == "site"
        assert all(up.seen[f"line {i}"] == 1 for i in range(12))
        listed = client.batches.list(limit=5)
        assert [b.id for b in listed.data] == [batch.id]
        meta = client.files.retrieve(done.output_file_id or "")
        assert meta.purpose == "batch_output"
    with sqlite3.connect(ledger) as db:  # each line is a ledger request marked with its batch
        rows = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT client_request_id) FROM requests WHERE batch_id = ?",
            (batch.id,),
        ).fetchone()
    assert rows == (12, 12)


def test_bad_files_are_refused_with_the_line(tmp_path: Path) -> None:
    with upstream() as (_, url), gateway_app(_settings(url, tmp_path / "l.db")) as (_, gw):
        client = _client(gw)
        good = jsonl(2).splitlines()
        cases = {
            b"not json\n": "line 1: not valid JSON",
            good[0] + b"\n" + good[0] + b"\n": "line 2: custom_id 'req-0' repeats line 1",
            good[0] + b'\n{"custom_id": "x", "url": "/v1/embeddings", "body": {}}\n': "line 2",
            b"\n\n": "no request lines",
        }
        for data, message in cases.items():
            with pytest.raises(openai.BadRequestError) as e:
                client.files.create(file=("bad.jsonl", data), purpose="batch")
            assert message in str(e.value)
        # a body the chat route would refuse is refused at batch creation, naming the line
        bad_model = jsonl(1) + jsonl(1, model="nope").replace(b"req-0", b"req-1")
        f = client.files.create(file=("m.jsonl", bad_model), purpose="batch")
        with pytest.raises(openai.BadRequestError) as e:
            client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert "line 2" in str(e.value) and "'nope' does not exist" in str(e.value)
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch-nope")
        with pytest.raises(openai.NotFoundError):
            client.files.content("file-nope")
        r = httpx.post(
            gw + "/v1/batches",
            json={
                "input_file_id": f.id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "forever",
            },
            timeout=10,
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "completion_window"


def test_too_large_file_is_413(tmp_path: Path) -> None:
    settings = _settings("http://127.0.0.1:9", tmp_path / "l.db", max_file_bytes=1000)
    with gateway_app(settings) as (_, gw):
        with pytest.raises(openai.APIStatusError) as e:
            _client(gw).files.create(file=("big.jsonl", jsonl(40)), purpose="batch")
        assert e.value.status_code == 413


def test_a_key_sees_only_its_own_files_and_batches(tmp_path: Path) -> None:
    settings = _settings(
        "http://127.0.0.1:9",
        tmp_path / "l.db",
        keys=True,
        window={"off_peak_hours": [3]},
        run_anyway_seconds=0,
    )
    with gateway_app(settings) as (_, gw):
        mine, theirs, admin = _client(gw, USER_KEY), _client(gw, OTHER_KEY), _client(gw, ADMIN_KEY)
        batch = _submit(mine, jsonl(1))
        with pytest.raises(openai.NotFoundError):
            theirs.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            theirs.files.content(batch.input_file_id)
        with pytest.raises(openai.NotFoundError):
            theirs.batches.cancel(batch.id)
        assert theirs.batches.list().data == []
        assert admin.batches.retrieve(batch.id).id == batch.id
        with pytest.raises(openai.AuthenticationError):
            _client(gw, "wrong").batches.list()


def test_cancel_and_expiry_write_the_error_file(tmp_path: Path) -> None:
    # no hour is off-peak but 3 UTC, and the test clock stands at noon: every line waits
    noon = 1_767_225_600.0 + 12 * 3600  # 2026-01-01 12:00 UTC
    settings = _settings(
        "http://127.0.0.1:9",
        tmp_path / "l.db",
        window={"off_peak_hours": [3]},
        run_anyway_seconds=0,
    )
    with gateway_app(settings) as (app, gw):
        clock = Clock(noon)
        app.state.deferred.scheduler.clock = clock
        client = _client(gw)
        cancelled = _submit(client, jsonl(3))
        wait_for(lambda: client.batches.retrieve(cancelled.id).model_dump()["tierlm"]["waiting"])
        waiting = client.batches.retrieve(cancelled.id).model_dump()
        assert waiting["tierlm"]["waiting"] == ["hour 12 UTC is not off-peak"]
        assert client.batches.cancel(cancelled.id).status in ("cancelling", "cancelled")
        done = _finished(client, cancelled.id)
        assert done.status == "cancelled" and done.output_file_id is None
        errors = _lines(client, done.error_file_id)
        assert [e["error"]["code"] for e in errors] == ["batch_cancelled"] * 3
        expiring = _submit(client, jsonl(2), window="1h")
        clock.t = noon + 2 * 3600  # past its window before any hour 3 came
        done = _finished(client, expiring.id)
        assert done.status == "expired" and done.expired_at is not None
        errors = _lines(client, done.error_file_id)
        assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
            ("req-0", "batch_expired"),
            ("req-1", "batch_expired"),
        ]


def test_a_batch_on_a_postgres_ledger(postgres_db: str, tmp_path: Path) -> None:
    settings = _settings("", tmp_path / "unused.db")
    settings.ledger.url = postgres_db
    with upstream() as (up, url):
        settings.backends[0].url = url + "/v1"
        with gateway_app(settings) as (_, gw):
            client = _client(gw)
            done = _finished(client, _submit(client, jsonl(5)).id)
            out = _lines(client, done.output_file_id)
    assert done.status == "completed"
    assert [x["custom_id"] for x in out] == [f"req-{i}" for i in range(5)]
    assert all(up.seen[f"line {i}"] == 1 for i in range(5))


def test_a_reload_applies_to_waiting_lines(tmp_path: Path) -> None:
    """Lines run under the configuration in force when they run: a reload that opens the
    window starts them, and one that removed their key fails them (401), not another key's."""
    noon = 1_767_225_600.0 + 12 * 3600
    path = tmp_path / "tierlm.yaml"
    first = _settings(
        "http://127.0.0.1:9",
        tmp_path / "l.db",
        keys=True,
        window={"off_peak_hours": [3]},
        run_anyway_seconds=0,
    )
    path.write_text(yaml.safe_dump(first.model_dump(mode="json", exclude_none=True)))
    with gateway_app(first, reload=lambda: load_settings(path)) as (app, gw):
        app.state.deferred.scheduler.clock = Clock(noon)
        batch = _submit(_client(gw, USER_KEY), jsonl(2))
        wait_for(lambda: app.state.deferred.scheduler.waiting_why.get(batch.id))
        second = first.model_dump(mode="json", exclude_none=True)
        second["server"]["api_keys"] = [
            k for k in second["server"]["api_keys"] if k["name"] != "user"
        ]
        second["batch"]["window"]["off_peak_hours"] = [12]
        path.write_text(yaml.safe_dump(second))
        r = httpx.post(
            gw + "/admin/reload", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        )
        assert r.status_code == 200, r.text
        done = _finished(_client(gw, ADMIN_KEY), batch.id)
        errors = _lines(_client(gw, ADMIN_KEY), done.error_file_id)
    assert done.status == "completed" and done.output_file_id is None
    assert [e["response"]["status_code"] for e in errors] == [401, 401]
    assert "no longer configured" in errors[0]["response"]["body"]["error"]["message"]


def test_batch_lines_keep_privacy_rules(tmp_path: Path) -> None:
    """A sensitive line stays on the site like a live request: routed there under ``auto``,
    refused (403, in the error file) when it pins the external backend; the external
    upstream never sees it."""
    card = "Charge card 4111 1111 1111 1111 for the seal kit"
    rows = [
        {"custom_id": "auto", "body": {"messages": [{"role": "user", "content": card}]}},
        {
            "custom_id": "pinned",
            "body": {"model": "cloud", "messages": [{"role": "user", "content": card}]},
        },
        {
            "custom_id": "public",
            "body": {"model": "cloud", "messages": [{"role": "user", "content": "hello"}]},
        },
    ]
    data = "".join(
        json.dumps({**r, "method": "POST", "url": "/v1/chat/completions"}) + "\n" for r in rows
    ).encode()
    with upstream() as (site, site_url), upstream() as (cloud, cloud_url):
        settings = gateway_settings(
            [
                upstream_backend("site", site_url, "m"),
                upstream_backend("cloud", cloud_url, "m", boundary="external", api_key="sk-t"),
            ],
            [{"name": "site", "backends": ["site"]}, {"name": "cloud", "backends": ["cloud"]}],
            ledger={"url": f"sqlite:///{tmp_path / 'l.db'}"},
            batch={"poll_seconds": 0.05},
        )
        with gateway_app(settings) as (_, gw):
            client = _client(gw)
            done = _finished(client, _submit(client, data).id)
            out = {x["custom_id"]: x for x in _lines(client, done.output_file_id)}
            err = {x["custom_id"]: x for x in _lines(client, done.error_file_id)}
    assert out["auto"]["response"]["body"]["tierlm"]["backend"] == "site"
    assert out["public"]["response"]["body"]["tierlm"]["backend"] == "cloud"
    assert err["pinned"]["response"]["status_code"] == 403
    assert site.seen[card] == 1 and card not in cloud.seen and cloud.seen["hello"] == 1


def test_without_a_ledger_the_batch_api_says_so(tmp_path: Path) -> None:
    settings = _settings("http://127.0.0.1:9", tmp_path / "l.db")
    settings.ledger.url = "off"
    with gateway_app(settings) as (_, gw):
        r = httpx.get(gw + "/v1/batches", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "ledger_off"
