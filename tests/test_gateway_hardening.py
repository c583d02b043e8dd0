"""Issue 15, the gateway's hardening: one test per item, against a live gateway (uvicorn on
127.0.0.1) in front of recording upstreams (``fakes.metered_server`` bills like a provider;
``fakes.faulty_upstream`` stalls on demand), with a real SQLite ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes import free_port, serve
from fakes.faulty_upstream import FaultyUpstream, Scenario
from fakes.metered_server import billed_usd
from fakes.metered_server import make_app as metered_app
from server_util import serve_gateway, settings, sha, upstream_backend
from tierlm.config.settings import Settings

USER_KEY = "tlm-test-user-key-0123456789"
HOST_ONLY_KEY = "tlm-test-host-only-0123456789"
PRICE = {"input": 5.0, "output": 15.0}


def _ledger(tmp: Path, budget: float | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {"ledger": {"url": f"sqlite:///{tmp / 'ledger.sqlite3'}"}}
    if budget is not None:
        extra["budgets"] = {"limits": [{"usd": budget}], "per_request_share": 1.0}
    return extra


def _site(url: str, tmp: Path) -> Settings:
    """One site backend on the metered upstream, with a SQLite ledger in ``tmp``."""
    return settings(
        [upstream_backend("site", url, "metered")],
        [{"name": "site", "backends": ["site"]}],
        **_ledger(tmp),
    )


def _rows(tmp: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp / "ledger.sqlite3") as db:
        return list(db.execute(sql, args))


def _wait_rows(tmp: Path, n: int, within: float = 20.0) -> list[tuple[Any, ...]]:
    """The ledger's request rows once ``n`` have been written (the writer batches)."""
    deadline = time.monotonic() + within
    while True:
        rows = _rows(tmp, "SELECT id, outcome, cost_usd, completion_tokens FROM requests")
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def _open_reservations(tmp: Path) -> int:
    held = _rows(tmp, "SELECT COALESCE(SUM(reserved_nusd), 0) FROM budget_buckets")
    return int(held[0][0]) + len(_rows(tmp, "SELECT id FROM reservations"))


@pytest.fixture
def metered() -> Iterator[tuple[str, Any]]:
    app = metered_app()
    with serve(app) as url:
        yield url, app


def _paid(name: str, url: str, model: str = "metered", **kw: Any) -> dict[str, Any]:
    return upstream_backend(
        name, url, model, boundary="external", price=PRICE, api_key="sk-test", **kw
    )


def _chat(text: str = "hi", **kw: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **kw}


# -- item 2 ---------------------------------------------------------------------------------
def test_item2_large_bodies_do_not_stall_the_event_loop(metered: tuple[str, Any]) -> None:
    """Eight 1 MB bodies at once: /health stays fast, and a small request with a tight
    first-token limit on another backend is answered (no spurious timeout)."""
    url, _ = metered
    s = settings(
        [
            upstream_backend("site", url, "metered"),
            upstream_backend("quick", url, "metered", timeouts={"first_token": 1.0}),
        ],
        [{"name": "site", "backends": ["site"]}, {"name": "quick", "backends": ["quick"]}],
        server={"max_body_bytes": 2 * 1024 * 1024},
    )
    para = "The pump at station 4 reported 1234 rpm on 2024-05-01 while the valve stayed shut. "
    big = _chat(para * (1024 * 1024 // len(para)), model="site", max_tokens=1)
    with serve_gateway(s) as gw, httpx.Client(base_url=gw, timeout=120) as c:
        c.get("/health")
        done = threading.Event()
        latencies: list[float] = []
        quick: list[int] = []

        def probe() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                assert c.get("/health").status_code == 200
                latencies.append(time.perf_counter() - t0)
                quick.append(c.post("/v1/chat/completions", json=_chat(model="quick")).status_code)

        prober = threading.Thread(target=probe)
        prober.start()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: c.post("/v1/chat/completions", json=big), range(8)))
        done.set()
        prober.join()
    assert [r.status_code for r in codes] == [200] * 8
    assert quick and set(quick) == {200}
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    # the old code held /health for seconds (18.8 s measured) while it scanned
    assert p99 < 0.25, (p99, statistics.median(latencies), len(latencies))


# -- item 3 ---------------------------------------------------------------------------------
def test_item3_total_timeout_mid_stream_ends_in_band_and_settles(tmp_path: Path) -> None:
    with FaultyUpstream() as up:
        base = up.add("slow", Scenario("stall", after=3, tokens=20))
        backend = {
            "name": "cloud",
            "kind": "openai",
            "url": base,
            "model": "upstream-model",
            "boundary": "external",
            "price": PRICE,
            "api_key": "sk-test",
            "timeouts": {"connect": 1.0, "first_token": 5.0, "stall": 30.0, "total": 1.0},
        }
        s = settings(
            [backend], [{"name": "cloud", "backends": ["cloud"]}], **_ledger(tmp_path, 10.0)
        )
        with serve_gateway(s) as gw, httpx.Client(base_url=gw, timeout=30) as c:
            body = _chat(stream=True, model="cloud")
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                events = [line for line in r.iter_lines() if line.startswith("data: ")]
            rows = _wait_rows(tmp_path, 1)
            held = _open_reservations(tmp_path)
    last = json.loads(events[-1].removeprefix("data: "))
    assert "error" in last and "timeout" in last["error"]["message"], events[-3:]
    assert "data: [DONE]" not in events
    assert len(rows) == 1 and rows[0][1] not in ("ok", "cancelled"), rows
    assert rows[0][2] > 0 and rows[0][3] > 0  # the chunks generated are billed
    assert held == 0


# -- item 4 ---------------------------------------------------------------------------------
def test_item4_estimates_bound_everything_billed(tmp_path: Path, metered: tuple[str, Any]) -> None:
    """Ten concurrent pinned cloud requests with 40 KB tool descriptions and max_tokens 1
    cannot spend past a $0.01 budget (the old estimate counted message text only)."""
    url, app = metered
    s = settings(
        [_paid("cloud", url)], [{"name": "cloud", "backends": ["cloud"]}], **_ledger(tmp_path, 0.01)
    )
    tool = {"type": "function", "function": {"name": "lookup", "description": "d" * 40_000}}
    body = _chat(model="cloud", max_tokens=1, tools=[tool])
    with serve_gateway(s) as gw, httpx.Client(base_url=gw, timeout=60) as c:
        with ThreadPoolExecutor(10) as pool:
            codes = [
                r.status_code
                for r in pool.map(lambda _: c.post("/v1/chat/completions", json=body), range(10))
            ]
        _wait_rows(tmp_path, 10)
        spent = _rows(tmp_path, "SELECT COALESCE(SUM(spent_nusd), 0) FROM budget_buckets")[0][0]
    assert set(codes) <= {200, 402}
    assert billed_usd(app.state.billed, PRICE["input"], PRICE["output"]) <= 0.01
    assert spent / 1e9 <= 0.01


# -- item 6 ---------------------------------------------------------------------------------
def _raw_chunked(url: str, path: str, chunks: int, size: int = 64 * 1024) -> tuple[bytes, int]:
    """POST a chunked body to ``path`` piece by piece; stop when the server answers.
    Returns (the answer, how many chunks were sent)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            "transfer-encoding: chunked\r\n\r\n".encode()
        )
        piece = f"{size:x}\r\n".encode() + b"[" * size + b"\r\n"
        sock.setblocking(False)
        answer = b""
        try:
            for _ in range(chunks):
                try:
                    answer += sock.recv(65536)
                except BlockingIOError:
                    pass
                if answer:
                    break
                sock.setblocking(True)
                sock.sendall(piece)
                sock.setblocking(False)
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.setblocking(True)
        try:
            while b"\r\n\r\n" not in answer:
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
        except ConnectionResetError:
            pass
    return answer, sent


def test_item6_feedback_reads_bounded_and_limits_depth(
    tmp_path: Path, metered: tuple[str, Any]
) -> None:
    url, _ = metered
    s = _site(url, tmp_path)
    with serve_gateway(s) as gw, httpx.Client(base_url=gw, timeout=30) as c:
        answer, sent = _raw_chunked(gw, "/v1/feedback", chunks=200)  # up to 12.5 MB
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        # refused while reading (the connection closed under the sender, whose kernel
        # buffers took a few MB), not after reading all 12.5 MB
        assert sent < 200
        deep = b'{"request_id": "x", "score": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
        r = c.post("/v1/feedback", content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nest" in r.json()["error"]["message"]
        chat_deep = {
            "messages": [{"role": "user", "content": "hi", "x": json.loads("[" * 80 + "]" * 80)}]
        }
        r = c.post("/v1/chat/completions", json=chat_deep)
        assert r.status_code == 400 and "nests deeper" in r.json()["error"]["message"]


# -- item 7 ---------------------------------------------------------------------------------
def test_item7_bad_input_is_a_clear_400_never_a_500(
    tmp_path: Path, metered: tuple[str, Any]
) -> None:
    url, _ = metered
    s = _site(url, tmp_path)
    lone = b'"caf\\ud800 au lait"'
    bodies = {
        "/v1/chat/completions": b'{"messages": [{"role": "user", "content": ' + lone + b"}]}",
        "/api/chat": b'{"model": "site", "stream": false, "messages": [{"role": "user", "content": '
        + lone
        + b"}]}",
        "/api/generate": b'{"model": "site", "stream": false, "prompt": ' + lone + b"}",
    }
    with serve_gateway(s) as gw, httpx.Client(base_url=gw, timeout=30) as c:
        for path, raw in bodies.items():
            r = c.post(path, content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 400, (path, r.text)
            err = r.json()["error"]
            message = err if path.startswith("/api/") else err["message"]
            assert "surrogate" in message, (path, r.text)
        paired = (
            b'{"messages": [{"role": "user", "content": "smile \\ud83d\\ude00"}], "model": "site"}'
        )
        r = c.post(
            "/v1/chat/completions", content=paired, headers={"content-type": "application/json"}
        )
        assert r.status_code == 200, r.text
        for calls in ([1], [{"function": "x"}], [{"function": {"name": "f", "arguments": 3}}], "x"):
            body = {
                "model": "site",
                "stream": False,
                "messages": [{"role": "assistant", "content": "", "tool_calls": calls}],
            }
            r = c.post("/api/chat", json=body)
            assert r.status_code == 400, (calls, r.text)
            assert isinstance(r.json()["error"], str) and "tool_calls" in r.json()["error"]
        r = c.get("/admin/report", params={"since": "99999999999999d"})
        assert r.status_code == 200, r.text
    # refused at the edge, before the Router: no ledger row, consistently for all of them
    assert len(_wait_rows(tmp_path, 1)) == 1  # the one good request


def test_item7_errors_on_ollama_routes_are_ollama_shaped() -> None:
    """The app's last-resort handlers answer in each API's shape (a 500 is logged)."""
    from starlette.requests import Request

    from tierlm.errors import InvalidRequest
    from tierlm.server.app import _internal_error, _tierlm_error

    def request(path: str) -> Request:
        return Request(
            {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
        )

    async def answers() -> list[Any]:
        boom, bad = RuntimeError("boom"), InvalidRequest("bad")
        return [
            await _internal_error(request("/api/chat"), boom),
            await _internal_error(request("/v1/chat/completions"), boom),
            await _tierlm_error(request("/api/generate"), bad),
            await _tierlm_error(request("/v1/feedback"), bad),
        ]

    ollama, openai, ollama_bad, openai_bad = asyncio.run(answers())
    assert ollama.status_code == openai.status_code == 500
    assert json.loads(bytes(ollama.body)) == {"error": "internal error in the gateway"}
    assert json.loads(bytes(openai.body))["error"]["code"] == "internal_error"
    assert ollama_bad.status_code == openai_bad.status_code == 400
    assert json.loads(bytes(ollama_bad.body)) == {"error": "bad"}
    assert json.loads(bytes(openai_bad.body))["error"]["message"] == "bad"


# -- item 8 ---------------------------------------------------------------------------------
def test_item8_request_ids_are_the_gateways_own(tmp_path: Path, metered: tuple[str, Any]) -> None:
    url, _ = metered
    s = settings(
        [_paid("cloud", url)], [{"name": "cloud", "backends": ["cloud"]}], **_ledger(tmp_path)
    )
    with serve_gateway(s) as gw, httpx.Client(base_url=gw, timeout=30) as c:
        ids = []
        for _ in range(3):
            r = c.post(
                "/v1/chat/completions",
                json=_chat(max_tokens=2),
                headers={"x-request-id": "same-id"},
            )
            assert r.status_code == 200
            ids.append(r.headers["x-tierlm-request-id"])
        _wait_rows(tmp_path, 3)
        rows = _rows(tmp_path, "SELECT id, client_request_id, cost_usd FROM requests")
        audit = _rows(tmp_path, "SELECT request_id FROM audit")
        report = c.get("/admin/report", params={"since": "1d"}).json()
    assert len(set(ids)) == 3 and "same-id" not in ids
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert {r[1] for r in rows} == {"same-id"}
    assert sorted(a[0] for a in audit) == sorted(ids)
    assert report["requests"] == 3 and report["cost_usd"] == pytest.approx(sum(r[2] for r in rows))


# -- medium ---------------------------------------------------------------------------------
def test_medium_abandoned_paid_stream_is_billed_what_was_generated(
    tmp_path: Path, metered: tuple[str, Any]
) -> None:
    url, app = metered
    s = settings(
        [_paid("cloud", url, "metered-slow")],
        [{"name": "cloud", "backends": ["cloud"]}],
        **_ledger(tmp_path, 10.0),
    )
    with serve_gateway(s) as gw, httpx.Client(base_url=gw, timeout=30) as c:
        with c.stream("POST", "/v1/chat/completions", json=_chat(stream=True, max_tokens=400)) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]  # a few chunks, then hang up
        assert any("t0" in line for line in got)
        rows = _wait_rows(tmp_path, 1)
        held = _open_reservations(tmp_path)
        spent = _rows(tmp_path, "SELECT spent_nusd FROM budget_buckets")[0][0]
    ((_, outcome, cost, completion),) = rows
    assert outcome == "cancelled"
    assert completion > 0 and cost > 0
    assert held == 0 and spent / 1e9 == pytest.approx(cost, rel=1e-6)
    bill = app.state.billed[0]
    assert 0 < completion <= bill.completion_tokens < 400


def test_medium_policy_refusals_are_not_retryable(metered: tuple[str, Any]) -> None:
    url, _ = metered
    s = settings(
        [upstream_backend("site", url, "metered"), _paid("cloud", url)],
        [{"name": "site", "backends": ["site"]}, {"name": "cloud", "backends": ["cloud"]}],
        server={"api_keys": [{"name": "private", "hash": sha(USER_KEY), "privacy": "private"}]},
    )
    with (
        serve_gateway(s) as gw,
        httpx.Client(base_url=gw, timeout=30, headers={"authorization": f"Bearer {USER_KEY}"}) as c,
    ):
        card = _chat("my card is 4111 1111 1111 1111", model="cloud")
        for body in (
            card,
            _chat(model="cloud"),
            _chat(tierlm={"tier_floor": "cloud"}, model="site"),
        ):
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code in (400, 403), r.text


# -- low ------------------------------------------------------------------------------------
def test_low_listings_hide_and_odd_fields_are_refused(metered: tuple[str, Any]) -> None:
    url, _ = metered
    s = settings(
        [upstream_backend("host", url, "metered", boundary="host"), _paid("cloud", url)],
        [{"name": "tiny", "backends": ["host"]}, {"name": "cloud", "backends": ["cloud"]}],
        server={"api_keys": [{"name": "tiny", "hash": sha(HOST_ONLY_KEY), "tiers": ["tiny"]}]},
    )
    auth = {"authorization": f"Bearer {HOST_ONLY_KEY}"}
    with serve_gateway(s) as gw, httpx.Client(base_url=gw, timeout=30, headers=auth) as c:
        names = {m["name"] for m in c.get("/api/tags").json()["models"]}
        assert "cloud" not in names and "tiny" in names
        assert c.post("/api/show", json={"model": "cloud"}).status_code == 404
        assert c.post("/api/show", json={"model": "tiny"}).status_code == 200
        r = c.post("/api/show", json=[1])
        assert r.status_code == 400 and isinstance(r.json()["error"], str)
        bad_openai = [
            ({"n": True}, "n"),
            ({"model": ":latest"}, None),
            ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ]
        for extra, param in bad_openai:
            r = c.post("/v1/chat/completions", json={**_chat(model="tiny"), **extra})
            assert r.status_code in (400, 404), (extra, r.text)
            if param:
                assert r.json()["error"]["param"] == param, r.text
        bad_ollama = [
            ("/api/generate", {"prompt": "hi", "system": 3}),
            ("/api/generate", {"prompt": "hi", "suffix": "end"}),
            ("/api/generate", {"prompt": "hi", "images": ["aGk="]}),
            ("/api/generate", {"prompt": "hi", "format": "xml"}),
            ("/api/chat", {"messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}),
            ("/api/chat", {"messages": [{"role": "user", "content": "hi"}], "format": "xml"}),
        ]
        for path, body in bad_ollama:
            r = c.post(path, json={"model": "tiny", "stream": False, **body})
            assert r.status_code == 400, (path, body, r.text)
            assert isinstance(r.json()["error"], str)


def test_medium_stream_cut_by_the_drain_is_billed_what_was_generated(
    tmp_path: Path, metered: tuple[str, Any]
) -> None:
    """SIGTERM with a paid stream in flight: when ``drain_seconds`` runs out, the stream is
    cut, and the ledger (flushed at exit) bills what it generated and holds no reservation."""
    url, app = metered
    port = free_port()
    cfg = {
        "backends": [_paid("cloud", url, "metered-slow")],
        "tiers": [{"name": "cloud", "backends": ["cloud"]}],
        "routing": {"complexity_method": "length"},
        "server": {"port": port, "drain_seconds": 0.3},
        **_ledger(tmp_path, 10.0),
    }
    path = tmp_path / "tierlm.yaml"
    path.write_text(json.dumps(cfg))
    tierlm = str(Path(sys.executable).parent / "tierlm")
    proc = subprocess.Popen([tierlm, "serve", "--config", str(path)], stderr=subprocess.PIPE)
    try:
        gw = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not _up(gw):
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)  # (it should not exit: then the assert says so)
        with httpx.Client(base_url=gw, timeout=30) as c:
            body = _chat(stream=True, max_tokens=2000)
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                lines = r.iter_lines()
                assert any("t0" in next(lines) for _ in range(6))
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(httpx.HTTPError):
                    for _ in lines:
                        pass
        assert proc.wait(timeout=30) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    rows = _rows(tmp_path, "SELECT outcome, cost_usd, completion_tokens FROM requests")
    assert len(rows) == 1 and rows[0][1] > 0 and 0 < rows[0][2] < 2000, rows
    assert _open_reservations(tmp_path) == 0
    assert app.state.billed[0].completion_tokens < 2000


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
