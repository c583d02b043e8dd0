"""What ``tierlm serve`` tells its operator: the start-up summary and its warnings, an access
line per request (never prompt text), tierlm's own log records, text or JSON lines."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fakes import free_port, serve
from fakes.openai_server import make_app
from server_util import settings, upstream_backend
from tierlm.server import create_app, oplog

TIERLM = str(Path(sys.executable).parent / "tierlm")
SECRET = "the walrus sings at midnight"


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve(make_app()) as url:
        yield url


def _backends(upstream: str) -> list[dict[str, Any]]:
    down = f"http://127.0.0.1:{free_port()}/v1"
    return [
        upstream_backend("down", down, "ok", timeouts={"connect": 0.2}),
        upstream_backend("flaky", upstream, "server"),  # healthy, but every answer is a 500
        upstream_backend("site", upstream, "ok"),
        {
            "name": "cloud",
            "kind": "openai",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "api_key_env": "TIERLM_TEST_NO_SUCH_KEY",
        },
    ]


_TIERS = [
    {"name": "near", "backends": ["down", "flaky", "site"], "strength": 1.0},
    {"name": "cloud", "backends": ["cloud"], "strength": 1.0},
]


def test_startup_summary_warns_about_what_will_fail(
    upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    s = settings(_backends(upstream), _TIERS, server={"host": "0.0.0.0", "port": 9999})
    caplog.set_level(logging.INFO, logger="tierlm")
    with serve(create_app(s, announce=True), lifespan="on", start_within=30) as url:
        r = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "near", "messages": [{"role": "user", "content": SECRET}]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
    by_logger: dict[str, list[logging.LogRecord]] = {}
    for rec in caplog.records:
        by_logger.setdefault(rec.name, []).append(rec)
    summary = [r.getMessage() for r in by_logger["tierlm.server"]]
    assert any("serving test on http://0.0.0.0:9999" in m for m in summary), summary
    assert "tier near: down, flaky, site" in summary
    assert any(m.startswith("backend site (site): ok") for m in summary), summary
    warnings = [r.getMessage() for r in by_logger["tierlm.server"] if r.levelno == logging.WARNING]
    assert any(m.startswith("backend down (site) is not usable") for m in warnings), warnings
    assert any("TIERLM_TEST_NO_SUCH_KEY is not set" in m for m in warnings), warnings
    assert any(m.startswith("listening on 0.0.0.0 without API keys") for m in warnings)
    (line,) = by_logger["tierlm.access"]
    fields = {k: getattr(line, k) for k in ("request_id", "route", "tier", "backend", "status")}
    assert fields == {
        "request_id": r.headers["x-tierlm-request-id"],
        "route": "/v1/chat/completions",
        "tier": "near",
        "backend": "site",
        "status": 200,
    }
    assert line.prompt_tokens > 0 and line.latency_ms > 0  # type: ignore[attr-defined]
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_startup_checks_are_bounded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend that never answers delays start-up by STARTUP_CHECK_S at most (here
    shortened, to show the bound is what applies), and is reported as not usable."""
    assert oplog.STARTUP_CHECK_S <= 1.0
    monkeypatch.setattr(oplog, "STARTUP_CHECK_S", 0.05)
    caplog.set_level(logging.INFO, logger="tierlm")
    with socket.socket() as mute:  # accepts connections (the backlog), never answers
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        s = settings(
            [upstream_backend("mute", f"http://127.0.0.1:{mute.getsockname()[1]}", "ok")],
            [{"name": "near", "backends": ["mute"]}],
        )
        with serve(create_app(s, announce=True), lifespan="on", start_within=30):
            pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("backend mute (site) is not usable: health check over 0.05 s" in m for m in warnings)


def test_serve_json_logs_one_object_per_line(upstream: str, tmp_path: Path) -> None:
    port = free_port()
    cfg = {
        "backends": _backends(upstream),
        "tiers": _TIERS,
        "ledger": {"url": "off"},
        "routing": {"complexity_method": "length"},
        "server": {"port": port},
    }
    path = tmp_path / "tierlm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [TIERLM, "serve", "--config", str(path), "--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url)
        resp = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "near", "messages": [{"role": "user", "content": SECRET}]},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    text = err.decode()
    assert SECRET not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    loggers = {r["logger"] for r in records}
    assert {"tierlm.server", "tierlm.access", "tierlm.execute.executor"} <= loggers, loggers
    (access,) = [r for r in records if r["logger"] == "tierlm.access"]
    assert (access["route"], access["status"], access["backend"]) == (
        "/v1/chat/completions",
        200,
        "site",
    )
    assert access["request_id"] == resp.headers["x-tierlm-request-id"]
    executor = [r["message"] for r in records if r["logger"] == "tierlm.execute.executor"]
    assert any(m.startswith("attempt on flaky failed") for m in executor), executor
    assert any(m.startswith("retrying flaky") for m in executor), executor


def _wait_healthy(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code in (200, 503):
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            raise RuntimeError(f"tierlm serve did not start: {err.decode()[-2000:]}")
        time.sleep(0.1)


def test_access_log_carries_the_clients_request_id(
    upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's x-request-id is on its access line next to tierlm's own id (whole answers,
    streams and errors alike); an id that is not a sane token (too long, control characters:
    client input) never reaches the log."""
    s = settings(
        [upstream_backend("site", upstream, "ok")], [{"name": "near", "backends": ["site"]}]
    )
    caplog.set_level(logging.INFO, logger="tierlm.access")
    body = {"model": "near", "messages": [{"role": "user", "content": "hello"}]}
    sent = {
        "whole-1": body,
        "stream:2": {**body, "stream": True},
        "bad.3": {"model": "near", "messages": "not a list"},
    }
    hostile = ["x" * 65, "evil\tid", "a b", 'quote"d']
    with (
        serve(create_app(s), lifespan="on", start_within=30) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        ours = {}
        for cid, payload in sent.items():
            r = client.post("/v1/chat/completions", json=payload, headers={"x-request-id": cid})
            assert r.status_code == (400 if cid == "bad.3" else 200), r.text
            ours[cid] = r.headers.get("x-tierlm-request-id")
        for cid in hostile:
            r = client.post("/v1/chat/completions", json=body, headers={"x-request-id": cid})
            assert r.status_code == 200, r.text
    lines = [r for r in caplog.records if r.name == "tierlm.access"]
    assert len(lines) == len(sent) + len(hostile)
    by_client = {vars(r)["client_request_id"]: r for r in lines[: len(sent)]}
    assert set(by_client) == set(sent)
    for cid, rec in by_client.items():
        assert f"client_id={cid}" in rec.getMessage()
        assert vars(rec)["request_id"] == ours[cid]  # tierlm's own id, beside the client's
    assert ours["whole-1"] and ours["stream:2"]  # the 400 failed before it was given an id
    for rec in lines[len(sent) :]:
        assert vars(rec)["client_request_id"] is None
        assert rec.getMessage().endswith("client_id=-")
    assert not any("evil" in r.getMessage() or "x" * 65 in r.getMessage() for r in lines)
