"""The dashboard: page weight and time to first render, in Debian's headless Chromium.

A gateway (API keys on) over a ledger filled with ``--requests`` synthetic requests spread
over the last 24 hours (three tiers, the cache and rules among them, a budget), served by
uvicorn in a thread. Page weight: the bytes of the HTML, script and style sheet as served,
raw and gzip'd, and of one poll's JSON. Time to first render: in a fresh browser context
each run (no cache), from navigation start to the mark the page's script sets once the first
data is drawn (the key already in ``sessionStorage``, as after signing in), with the first
contentful paint beside it, and the round trip of one poll of ``/admin/dashboard`` (the
ledger's report over 24 hours is most of it); median, min and max of ``--runs``.

    .venv/bin/python bench/bench_dashboard.py [--runs 7] [--requests 20000]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import random
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tierlm.config.settings import Settings
from tierlm.ledger import AttemptRecord, Ledger, RequestRecord, open_store
from tierlm.server import create_app

KEY = "tlm-bench-admin-" + "0123456789abcdef" * 2
TIERS = (("tiny", "smollm", "process"), ("site", "vllm", "site"), ("cloud", "gpt", "external"))


def settings(data_dir: Path) -> Settings:
    dead = "http://127.0.0.1:9/v1"  # never asked: the bench only reads
    return Settings.model_validate(
        {
            "deployment": "bench",
            "data_dir": str(data_dir),
            "backends": [
                {"name": b, "kind": "openai", "model": b, "url": dead, "boundary": w}
                for _t, b, w in TIERS
            ],
            "tiers": [{"name": t, "backends": [b]} for t, b, _w in TIERS],
            "budgets": {"limits": [{"usd": 200.0}, {"scope": "tier", "name": "cloud", "usd": 50}]},
            "server": {
                "api_keys": [
                    {"name": "ops", "hash": hashlib.sha256(KEY.encode()).hexdigest(), "admin": True}
                ]
            },
        }
    )


def fill(s: Settings, n: int) -> None:
    rng = random.Random(1)
    now = time.time()
    path = Path(s.data_dir or ".")
    with Ledger(open_store(f"sqlite:///{path / 'ledger.sqlite3'}", path)) as ledger:
        for i in range(n):
            tier, backend, where = rng.choice((*TIERS, ("cache", "cache", "process")))
            lat = rng.lognormvariate(4 if where != "external" else 6.5, 0.6)
            ledger.record(
                RequestRecord(
                    id=f"b-{i}",
                    ts=now - rng.random() * 86400,
                    api_key=rng.choice(("alice", "bob", "ci")),
                    tier=tier,
                    backend=backend,
                    boundary=where,
                    attempts=[AttemptRecord(backend, tier, where, latency_ms=lat)],
                    prompt_tokens=200,
                    completion_tokens=50,
                    cost_usd=250e-6 if where == "external" else 0.0,
                    latency_ms=lat,
                    fallback=rng.random() < 0.03,
                )
            )
            if i % 5000 == 4999:  # keep the writer's queue short
                ledger.flush(120)
        ledger.flush(120)


def serve(s: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(s), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("the gateway did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def weight(url: str) -> list[tuple[str, int, int]]:
    rows = []
    headers = {"authorization": f"Bearer {KEY}"}
    for path in ("/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css"):
        body = httpx.get(url + path, timeout=30).content
        rows.append((path, len(body), len(gzip.compress(body))))
    rows.append(("total (page)", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    poll = httpx.get(url + "/admin/dashboard?since=24h", headers=headers, timeout=60).content
    rows.append(("/admin/dashboard (one poll)", len(poll), len(gzip.compress(poll))))
    return rows


def first_render(url: str, runs: int) -> tuple[list[float], list[float]]:
    from playwright.sync_api import sync_playwright

    marks, paints = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        for _ in range(runs):
            ctx = browser.new_context()
            ctx.add_init_script(f"sessionStorage.setItem('tierlm-admin-key', '{KEY}')")
            page = ctx.new_page()
            page.goto(url + "/dashboard?poll=60000")
            page.wait_for_function("() => document.body.dataset.renders >= 1", timeout=60_000)
            t: Any = page.evaluate(
                "[performance.getEntriesByName('tierlm-first-render')[0].startTime,"
                " (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime]"
            )
            marks.append(float(t[0]))
            if t[1] is not None:
                paints.append(float(t[1]))
            ctx.close()
        browser.close()
    return marks, paints


def poll_times(url: str, runs: int) -> list[float]:
    """Round trips of the JSON the page polls (the ledger's report is most of it)."""
    out = []
    with httpx.Client(headers={"authorization": f"Bearer {KEY}"}, timeout=60) as c:
        for _ in range(runs):
            t0 = time.perf_counter()
            c.get(url + "/admin/dashboard?since=24h").raise_for_status()
            out.append((time.perf_counter() - t0) * 1000.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--requests", type=int, default=20_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        s = settings(Path(tmp))
        t0 = time.perf_counter()
        fill(s, args.requests)
        print(f"ledger: {args.requests} requests over 24 h ({time.perf_counter() - t0:.1f} s)")
        server, thread, url = serve(s)
        try:
            print("\n| what | bytes | gzip'd |\n|---|---:|---:|")
            for name, raw, gz in weight(url):
                print(f"| {name} | {raw:,} | {gz:,} |")
            marks, paints = first_render(url, args.runs)
            polls = poll_times(url, args.runs)
        finally:
            server.should_exit = True
            thread.join(10)
    print(f"\n| {args.runs} runs, fresh context each | median | min | max |\n|---|---:|---:|---:|")
    rows = (
        ("first contentful paint", paints),
        ("first data render", marks),
        ("of which: one poll of /admin/dashboard (round trip)", polls),
    )
    for name, xs in rows:
        if xs:
            print(
                f"| {name} | {statistics.median(xs):.0f} ms | {min(xs):.0f} ms | {max(xs):.0f} ms |"
            )


if __name__ == "__main__":
    main()
