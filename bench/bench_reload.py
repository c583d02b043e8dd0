"""Reloading a live gateway under load: how long a reload takes and how many requests it drops.

A real ``tierlm serve`` process in front of a fake OpenAI-wire upstream (aiohttp, in this
process, answering after ``--upstream-ms``), ``--clients`` closed-loop clients sending
requests (half streamed) through it, and ``--reloads`` reloads, one every ``--every`` seconds,
alternating between two configurations that differ in every backend (other timeouts) and in
one backend present or not, so each reload builds new backends and retires the old ones
while requests are in flight on them. Reloads go by ``POST /admin/reload`` or, with
``--sighup``, by SIGHUP (then only the client side is timed, by polling ``/v1/models``).

Reported: requests sent, answered 200, failed (any other status, a transport error or a
stream without its ``[DONE]``); reload time (the server's ``ms``: load, build, swap; and the
admin call's round trip) p50 and max; request latency p50/p99 with and without reloads.

    .venv/bin/python bench/bench_reload.py [--clients 16] [--reloads 20] [--every 0.25]
        [--upstream-ms 20] [--sighup]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

ADMIN_KEY = "tlm-bench-admin-" + "0123456789abcdef" * 2  # also the clients' key
HEADERS = {"authorization": f"Bearer {ADMIN_KEY}"}
BODY = {"model": "site", "messages": [{"role": "user", "content": "Say hello."}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def upstream(delay: float) -> tuple[web.AppRunner, str]:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        await asyncio.sleep(delay)
        model = body.get("model", "m")
        if not body.get("stream"):
            msg = {"role": "assistant", "content": "Hello there."}
            return web.json_response(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                }
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for delta, finish in (({"content": "Hello"}, None), ({"content": " there."}, "stop")):
            chunk = {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def config(up: str, port: int, version: int) -> dict[str, Any]:
    names = ["a", "b", "c"] if version % 2 else ["a", "b"]
    timeout = 10.0 + version % 2
    return {
        "backends": [
            {
                "name": n,
                "kind": "openai",
                "url": up + "/v1",
                "model": f"m-{n}",
                "boundary": "site",
                "timeouts": {"connect": 2.0, "first_token": timeout},
            }
            for n in names
        ],
        "tiers": [{"name": "site", "backends": names}],
        "ledger": {"url": "off"},
        "routing": {"complexity_method": "length"},
        "server": {
            "port": port,
            "api_keys": [
                {
                    "name": "admin",
                    "hash": hashlib.sha256(ADMIN_KEY.encode()).hexdigest(),
                    "admin": True,
                }
            ],
        },
    }


class Load:
    def __init__(self) -> None:
        self.ok = 0
        self.failed: list[str] = []
        self.latencies: list[tuple[float, float]] = []  # (start time, seconds)
        self.stop = asyncio.Event()

    async def client(self, session: aiohttp.ClientSession, url: str, stream: bool) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                async with session.post(
                    url + "/v1/chat/completions", json={**BODY, "stream": stream}, headers=HEADERS
                ) as r:
                    text = await r.text()
                    if r.status != 200 or (stream and "[DONE]" not in text):
                        self.failed.append(f"{r.status} {text[:120]}")
                    else:
                        self.ok += 1
            except aiohttp.ClientError as e:
                self.failed.append(f"transport: {e!r}")
            self.latencies.append((t0, time.perf_counter() - t0))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    runner, up = await upstream(args.upstream_ms / 1000)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="tierlm-bench-reload-"))
    path = tmp / "tierlm.yaml"
    path.write_text(yaml.safe_dump(config(up, port, 0)))
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp / "data"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "TIERLM_LOG_LEVEL": "warning",
    }
    exe = str(Path(sys.executable).parent / "tierlm")
    proc = await asyncio.create_subprocess_exec(exe, "serve", "--config", str(path), env=env)
    load = Load()
    server_ms: list[float] = []
    call_ms: list[float] = []
    windows: list[tuple[float, float]] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            await wait_ready(session, url, proc)
            clients = [
                asyncio.create_task(load.client(session, url, i % 2 == 1))
                for i in range(args.clients)
            ]
            await asyncio.sleep(args.every * 4)  # a baseline before the first reload
            for version in range(1, args.reloads + 1):
                path.write_text(yaml.safe_dump(config(up, port, version)))
                t0 = time.perf_counter()
                if args.sighup:
                    proc.send_signal(signal.SIGHUP)
                    await wait_models(session, url, "c" if version % 2 else None)
                else:
                    async with session.post(url + "/admin/reload", headers=HEADERS) as r:
                        body = await r.json()
                        assert r.status == 200, body
                        server_ms.append(body["ms"])
                t1 = time.perf_counter()
                call_ms.append((t1 - t0) * 1000)
                windows.append((t0, t1))
                await asyncio.sleep(args.every)
            await asyncio.sleep(args.every * 4)
            load.stop.set()
            await asyncio.gather(*clients)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        await runner.cleanup()

    def near_reload(t: float) -> bool:
        return any(a - 0.05 <= t <= b + 0.05 for a, b in windows)

    during = [s for t, s in load.latencies if near_reload(t)]
    outside = [s for t, s in load.latencies if not near_reload(t)]
    return {
        "clients": args.clients,
        "reloads": args.reloads,
        "via": "SIGHUP" if args.sighup else "POST /admin/reload",
        "requests": load.ok + len(load.failed),
        "answered_200": load.ok,
        "dropped": len(load.failed),
        "dropped_examples": load.failed[:3],
        "reload_server_ms_p50": round(statistics.median(server_ms), 1) if server_ms else None,
        "reload_server_ms_max": round(max(server_ms), 1) if server_ms else None,
        "reload_call_ms_p50": round(statistics.median(call_ms), 1),
        "reload_call_ms_max": round(max(call_ms), 1),
        "latency_ms_p50_near_reloads": round(pct(during, 0.5) * 1000, 1),
        "latency_ms_p99_near_reloads": round(pct(during, 0.99) * 1000, 1),
        "latency_ms_p50_otherwise": round(pct(outside, 0.5) * 1000, 1),
        "latency_ms_p99_otherwise": round(pct(outside, 0.99) * 1000, 1),
    }


async def wait_ready(
    session: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise SystemExit("tierlm serve exited")
        try:
            async with session.get(url + "/v1/models", headers=HEADERS) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("tierlm serve did not start")


async def wait_models(session: aiohttp.ClientSession, url: str, expect: str | None) -> None:
    """Until ``/v1/models`` lists backend ``expect`` (or, with None, does not list ``c``)."""
    while True:
        async with session.get(url + "/v1/models", headers=HEADERS) as r:
            ids = {m["id"] for m in (await r.json())["data"]}
        if (expect in ids) if expect else ("c" not in ids):
            return
        await asyncio.sleep(0.005)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--reloads", type=int, default=20)
    p.add_argument("--every", type=float, default=0.25, help="seconds between reloads")
    p.add_argument("--upstream-ms", type=float, default=20.0)
    p.add_argument("--sighup", action="store_true", help="reload by SIGHUP")
    print(json.dumps(asyncio.run(run(p.parse_args())), indent=2))


if __name__ == "__main__":
    main()
