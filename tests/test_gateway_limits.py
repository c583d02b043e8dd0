"""Issue 15, item 5 and the soak: the gateway as ``tierlm serve`` runs it (uvicorn with the
connection cap, header read timeout and header size limit of ``tierlm.server.limits``) holds
against half-sent requests, huge headers, connection floods and abandoned streams, keeps
``/health`` fast meanwhile, and books exactly what the upstream billed.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes import serve
from fakes.metered_server import billed_usd
from fakes.metered_server import make_app as metered_app
from server_util import serve_hardened, settings, upstream_backend
from tierlm.server.limits import RateLimitedLog, rate_limit_logs

PRICE = {"input": 5.0, "output": 15.0}
CAP = 24


def _addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _answer(sock: socket.socket) -> bytes:
    """What the server says before it closes (or 5 s pass)."""
    sock.settimeout(5)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return got


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    app = metered_app()
    with serve(app) as up:
        s = settings(
            [upstream_backend("site", up, "metered-slow", price=PRICE)],
            [{"name": "site", "backends": ["site"]}],
            server={"max_connections": CAP, "header_timeout": 0.5, "max_header_bytes": 8192},
            ledger={"url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"},
            budgets={"limits": [{"usd": 100.0}], "per_request_share": 1.0},
        )
        with serve_hardened(s) as url:
            yield url, app


def test_item5_half_sent_requests_time_out_and_extra_connections_are_refused(
    gateway: tuple[str, Any],
) -> None:
    url, _ = gateway
    half = [socket.create_connection(_addr(url)) for _ in range(CAP)]
    try:
        for s in half:
            s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")  # never finished
        extra = socket.create_connection(_addr(url))
        with extra:
            refused = _answer(extra)
        assert refused.startswith(b"HTTP/1.1 503"), refused[:120]
        assert b"too_many_connections" in refused and b"retry-after" in refused.lower()
        late = [_answer(s) for s in half]  # each is closed once its header time is up
        assert all(a.startswith(b"HTTP/1.1 408") for a in late), late[0][:120]
    finally:
        for s in half:
            s.close()
    assert httpx.get(url + "/health", timeout=5).status_code == 200


def test_item5_oversized_headers_are_refused_without_buffering_them(
    gateway: tuple[str, Any],
) -> None:
    url, _ = gateway
    with socket.create_connection(_addr(url)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: ")
        try:
            for _ in range(64):  # up to 4 MB of one header, if nobody stops it
                s.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _answer(s)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:120]
    assert httpx.get(url + "/health", timeout=5).status_code == 200


def test_item5_repeated_log_errors_are_rate_limited() -> None:
    """As ``tierlm serve`` installs it: a flood of one error through any logger (asyncio's
    accept loop, a tierlm module) reaches the log a few times, and other messages still do."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    root = logging.getLogger()
    handler = Keep()
    root.addHandler(handler)
    try:
        rate_limit_logs()
        for i in range(10_000):
            logging.getLogger("asyncio").error("socket.accept() out of system resource (%d)", i)
            logging.getLogger("tierlm.server.test").error("client %s misbehaves", i)
        logging.getLogger("tierlm.server.test").error("another problem")
    finally:
        root.removeHandler(handler)
        for h in (logging.lastResort, *root.handlers):  # leave the process as it was
            if h is not None:
                for f in [f for f in h.filters if isinstance(f, RateLimitedLog)]:
                    h.removeFilter(f)
    assert len(seen) == 2 * 5 + 1
    assert seen[-1].getMessage() == "another problem"


def test_soak_abandoned_connections_and_streams(gateway: tuple[str, Any], tmp_path: Path) -> None:
    """A few seconds of clients that half-send requests, open streams and hang up, and
    finish streams, while /health is probed: it stays fast, every reservation is settled, and
    the ledger's spend is what the upstream billed (cut streams: up to the chunks in flight)."""
    url, app = gateway
    stop = threading.Event()
    health: list[float] = []
    outcomes: dict[str, int] = {"done": 0, "abandoned": 0}
    lock = threading.Lock()
    body = {
        "model": "site",
        "stream": True,
        "max_tokens": 30,
        "messages": [{"role": "user", "content": "tell me about pumps"}],
    }

    def half_open() -> None:
        while not stop.is_set():
            with socket.create_connection(_addr(url)) as s:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
            stop.wait(0.01)

    def streams(abandon: bool) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        continue
                    lines = r.iter_lines()
                    if abandon:
                        [next(lines) for _ in range(4)]
                    else:
                        assert "data: [DONE]" in list(lines)
                with lock:
                    outcomes["abandoned" if abandon else "done"] += 1

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                assert c.get("/health").status_code == 200
                health.append(time.perf_counter() - t0)

    workers = [
        threading.Thread(target=f, args=a)
        for f, a in (
            (half_open, ()),
            (streams, (True,)),
            (streams, (True,)),
            (streams, (False,)),
            (probe, ()),
        )
    ]
    for w in workers:
        w.start()
    stop.wait(4.0)
    stop.set()
    for w in workers:
        w.join(timeout=30)
    n = outcomes["done"] + outcomes["abandoned"]
    assert outcomes["done"] > 0 and outcomes["abandoned"] > 0
    db = tmp_path / "ledger.sqlite3"
    deadline = time.monotonic() + 20
    while True:
        with sqlite3.connect(db) as con:
            rows = list(con.execute("SELECT outcome, cost_usd FROM requests"))
            held = con.execute(
                "SELECT COALESCE(SUM(reserved_nusd), 0), COALESCE(SUM(spent_nusd), 0) "
                "FROM budget_buckets"
            ).fetchone()
            open_res = con.execute("SELECT COUNT(*) FROM reservations").fetchone()[0]
        if (len(rows) >= n and held[0] == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(rows) >= n and held[0] == 0 and open_res == 0
    health.sort()
    assert health[int(len(health) * 0.99) - 1] < 0.25, health[-5:]
    booked = sum(cost for _, cost in rows)
    billed = billed_usd(app.state.billed, PRICE["input"], PRICE["output"])
    assert held[1] / 1e9 == pytest.approx(booked, rel=1e-6, abs=1e-9)
    in_flight = outcomes["abandoned"] * 8 * PRICE["output"] / 1e6  # chunks generated, unread
    assert billed - in_flight <= booked <= billed + 1e-9
