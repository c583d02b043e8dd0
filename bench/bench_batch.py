"""Deferred work: live latency on the tiny tier with and without a batch running, and batch
throughput.

A real gateway (uvicorn in a thread, a SQLite ledger) over the real tiny tier (SmolLM2-135M
in its llama-server worker) and a fast fake OpenAI-wire upstream (tier ``site``). One live
client asks the tiny tier (16 tokens, greedy) with a pause between requests (``--gap``),
three ways:

- alone (after a batch of ``--lines`` on the fake upstream with no live traffic: the
  machinery's own throughput);
- while a batch of ``--lines`` lines (default 1,000) runs on the fake upstream: what the
  scheduler and the ledger writes cost the live path; batch throughput of the machinery;
- while a batch of ``--tiny-lines`` lines runs on the tiny model itself: the deferred lines
  start only while no live request is in flight and leave a slot free, so what remains is
  the CPU they share with a live request that arrives during one.

    .venv/bin/python bench/bench_batch.py [--live 30] [--lines 1000] [--tiny-lines 40]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODEL = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Name one use of a centrifugal pump."


async def _chat(request: Request) -> Response:
    body = json.loads(await request.body())
    return JSONResponse(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }
    )


async def _models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model"}]})


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    def __init__(self, app: Any, lifespan: str = "off") -> None:
        self.port = _port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan=lifespan
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _settings(upstream: str, ledger: Path) -> Any:
    from tierlm.config.settings import Settings

    return Settings.model_validate(
        {
            "deployment": "bench",
            "backends": [
                {
                    "name": "smollm2",
                    "kind": "llama_cpp",
                    "model": str(MODEL),
                    "max_concurrency": 4,
                    "n_ctx": 1024,
                },
                {
                    "name": "fake",
                    "kind": "openai",
                    "url": upstream + "/v1",
                    "model": "fake",
                    "boundary": "site",
                },
            ],
            "tiers": [
                {"name": "tiny", "backends": ["smollm2"]},
                {"name": "site", "backends": ["fake"]},
            ],
            "routing": {"complexity_method": "length"},
            "cache": {"enabled": False},  # every live request is generated
            "ledger": {"url": f"sqlite:///{ledger}"},
            "batch": {"poll_seconds": 0.05, "concurrency": 8, "slots": {"fake": 16}},
        }
    )


def _live(client: httpx.Client, n: int, gap: float) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "max_tokens": 16,
                "temperature": 0,
                "messages": [{"role": "user", "content": PROMPT}],
            },
        )
        r.raise_for_status()
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(gap)
    return out


def _submit(client: httpx.Client, n: int, model: str) -> str:
    rows = [
        {
            "custom_id": f"b-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "max_tokens": 16,
                "temperature": 0,
                "messages": [{"role": "user", "content": f"Item {i}: {PROMPT}"}],
            },
        }
        for i in range(n)
    ]
    data = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
    f = client.post("/v1/files", files={"file": ("b.jsonl", data)}, data={"purpose": "batch"})
    f.raise_for_status()
    b = client.post(
        "/v1/batches",
        json={
            "input_file_id": f.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    b.raise_for_status()
    return str(b.json()["id"])


def _wait(client: httpx.Client, batch_id: str, started: float) -> float:
    while True:
        b = client.get(f"/v1/batches/{batch_id}").json()
        if b["status"] in ("completed", "expired", "cancelled", "failed"):
            assert b["request_counts"]["completed"] == b["request_counts"]["total"], b
            return time.perf_counter() - started
        time.sleep(0.1)


def _p(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--live", type=int, default=30, help="live requests per scenario")
    ap.add_argument("--lines", type=int, default=1000, help="batch lines on the fake upstream")
    ap.add_argument("--tiny-lines", type=int, default=40, help="batch lines on the tiny model")
    ap.add_argument("--gap", type=float, default=0.2, help="seconds between live requests")
    args = ap.parse_args()

    from tierlm.server import create_app

    fake = Starlette(
        routes=[
            Route("/v1/chat/completions", _chat, methods=["POST"]),
            Route("/v1/models", _models),
        ]
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp, _Server(fake) as upstream:
        app = create_app(_settings(upstream, Path(tmp) / "ledger.sqlite3"))
        with _Server(app, lifespan="on") as gw, httpx.Client(base_url=gw, timeout=600) as c:
            _live(c, 3, 0)  # load the model
            t0 = time.perf_counter()
            alone = _wait(c, _submit(c, args.lines, "site"), t0)
            rows.append(
                (f"{args.lines:,}-line batch on a fake upstream, alone", [], (args.lines, alone))
            )
            rows.append(("live alone", _live(c, args.live, args.gap), None))
            for label, n, model in (
                (f"+ {args.lines:,}-line batch on a fake upstream", args.lines, "site"),
                (f"+ {args.tiny_lines}-line batch on the tiny model", args.tiny_lines, "tiny"),
            ):
                t0 = time.perf_counter()
                batch_id = _submit(c, n, model)
                live = _live(c, args.live, args.gap)
                rows.append((label, live, (n, _wait(c, batch_id, t0))))
            preempted = app.state.deferred.scheduler.preempted
    print(
        f"| live requests to the tiny tier ({args.live} each, {args.gap:g} s apart) | "
        "p50 ms | p99 ms | batch lines | batch s | lines/s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, live, batch in rows:
        tail = (
            "| — | — | — |"
            if batch is None
            else (f"| {batch[0]:,} | {batch[1]:.1f} | {batch[0] / batch[1]:.1f} |")
        )
        lat = f"{statistics.median(live):.0f} | {_p(live, 0.99):.0f}" if live else "— | —"
        print(f"| {label} | {lat} {tail}")
    print(f"deferred lines preempted by live requests: {preempted}")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
