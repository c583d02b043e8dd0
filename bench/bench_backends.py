"""Every local route for the same prompts: tokens/s, time to first token, adapter overhead.

Routes (same GGUF, threads, prompts and greedy sampling with end-of-text suppressed, so every
run makes exactly N tokens):

1. in-process, raw ``llama_cpp.Llama.create_chat_completion(stream=True)``;
2. in-process, tierlm's ``LlamaCppBackend.stream``;
3. llama.cpp's OpenAI-compatible server over HTTP, raw ``httpx`` + ``json.loads`` per line;
4. the same server through tierlm's ``OpenAIBackend.stream``.

Runs alternate between routes so machine drift is shared; each request gets a fresh tag in
front of its prompt so no route profits from another's cached prompt prefix (llama.cpp
reuses the KV cache of a matching prefix). Model time dominates and varies
on a busy machine, so the adapter's own cost is also measured apart: a zero-latency local
server replays a canned 64-chunk SSE answer, and raw httpx parsing is compared with
``OpenAIBackend.stream`` over many requests (per request and per chunk).

    .venv/bin/python bench/bench_backends.py [--runs 3] [--tokens 48] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODEL = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "Explain how a centrifugal pump works.",
    "Write a short note to a colleague about tomorrow's meeting.",
    "List three ways to save energy in an office.",
]
Sample = tuple[float, float, int]  # (ttft s, total s, tokens)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- the routes


def raw_inprocess(llm: Any, prompt: str, kw: dict[str, Any]) -> Sample:
    t0 = time.perf_counter()
    first, n = None, 0
    msgs = [{"role": "user", "content": prompt}]
    for chunk in llm.create_chat_completion(messages=msgs, stream=True, **kw):
        if chunk["choices"][0]["delta"].get("content"):
            n += 1
            first = first or time.perf_counter()
    assert first is not None
    return first - t0, time.perf_counter() - t0, n


async def tierlm_stream(backend: Any, prompt: str, kw: dict[str, Any]) -> Sample:
    from tierlm.types import ChatRequest

    req = ChatRequest.from_prompt(
        prompt,
        max_tokens=kw["max_tokens"],
        temperature=0.0,
        seed=kw["seed"],
        extra={"logit_bias": kw["logit_bias"]},
    )
    t0 = time.perf_counter()
    first, n = None, 0
    async for ev in backend.stream(req):
        if ev.text:
            n += 1
            first = first or time.perf_counter()
    assert first is not None
    return first - t0, time.perf_counter() - t0, n


async def raw_http(client: httpx.AsyncClient, url: str, prompt: str, kw: dict[str, Any]) -> Sample:
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "stream": True, **kw}
    t0 = time.perf_counter()
    first, n = None, 0
    async with client.stream("POST", url, json=body) as resp:
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"]
            if delta.get("content"):
                n += 1
                first = first or time.perf_counter()
    assert first is not None
    return first - t0, time.perf_counter() - t0, n


# ----------------------------------------------------------------------------- the server


def start_server(threads: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(MODEL),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        # the server's default (true) keeps every prompt position's logits: far slower
        "--logits_all",
        "false",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/models", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"llama_cpp.server did not start; see {log}")


# ----------------------------------------------------------------------------- overhead


def _canned_chunks(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        data = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": f" tok{i}"}, "finish_reason": None}],
        }
        out.append(b"data: " + json.dumps(data).encode() + b"\n\n")
    fin = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": n + 5},
    }
    out += [b"data: " + json.dumps(fin).encode() + b"\n\n", b"data: [DONE]\n\n"]
    return out


_CANNED_SERVER = """
import sys, uvicorn
sys.path.insert(0, {bench!r})
from bench_backends import canned_app
uvicorn.run(canned_app({n}), host="127.0.0.1", port={port}, log_level="warning")
"""


def canned_app(n_chunks: int) -> Any:
    """An OpenAI-compatible app that streams a canned answer at once (no model)."""
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    chunks = _canned_chunks(n_chunks)

    async def body() -> AsyncIterator[bytes]:
        for c in chunks:
            yield c

    async def chat(request: Any) -> StreamingResponse:
        await request.body()
        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def serve_canned(n_chunks: int) -> tuple[str, Callable[[], None]]:
    """Run :func:`canned_app` in a subprocess (so it does not share this process's GIL)."""
    port = _free_port()
    code = _CANNED_SERVER.format(bench=str(Path(__file__).parent), n=n_chunks, port=port)
    proc = subprocess.Popen([sys.executable, "-c", code])
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.post(base + "/chat/completions", content=b"{}", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("canned server did not start") from None
            time.sleep(0.1)

    def stop() -> None:
        proc.terminate()
        proc.wait(5)

    return base, stop


async def adapter_overhead(requests: int, n_chunks: int) -> dict[str, float]:
    """Median seconds per request, raw httpx vs OpenAIBackend, against a zero-latency server."""
    from tierlm.backends.openai_compat import OpenAIBackend
    from tierlm.config.backends import OpenAIConfig

    base, stop = serve_canned(n_chunks)
    kw = {"max_tokens": n_chunks}
    backend = OpenAIBackend(OpenAIConfig(name="canned", url=base, model="m", boundary="host"))
    raw_times: list[Sample] = []
    ours: list[Sample] = []
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(requests + 10):  # the first 10 warm up both paths
                r = await raw_http(client, base + "/chat/completions", "hi", kw)
                o = await tierlm_stream(backend, "hi", {**kw, "seed": 1, "logit_bias": {}})
                assert r[2] == o[2] == n_chunks
                if i >= 10:
                    raw_times.append(r)
                    ours.append(o)
    finally:
        await backend.aclose()
        stop()
    med = statistics.median
    raw_med, our_med = med(s[1] for s in raw_times), med(s[1] for s in ours)
    raw_ttft, our_ttft = med(s[0] for s in raw_times), med(s[0] for s in ours)
    return {
        "raw_ms": raw_med * 1e3,
        "tierlm_ms": our_med * 1e3,
        "overhead_ms": (our_med - raw_med) * 1e3,
        "per_chunk_us": (our_med - raw_med) / n_chunks * 1e6,
        "raw_ttft_ms": raw_ttft * 1e3,
        "tierlm_ttft_ms": our_ttft * 1e3,
        "ttft_overhead_ms": (our_ttft - raw_ttft) * 1e3,
    }


# ----------------------------------------------------------------------------- main


def _row(name: str, samples: list[Sample]) -> str:
    ttft = statistics.median(s[0] for s in samples) * 1e3
    tps = statistics.median(s[2] / s[1] for s in samples)
    decode = statistics.median((s[2] - 1) / (s[1] - s[0]) for s in samples if s[2] > 1)
    return (
        f"| {name} | {len(samples)} | {ttft:.1f} | {tps:.1f} | {decode:.1f} | "
        f"{statistics.median(s[1] for s in samples) * 1e3:.0f} |"
    )


def _tag(prompt: str) -> str:
    return f"(ref {uuid.uuid4().hex[:6]}) {prompt}"


def _runs(args: argparse.Namespace) -> Iterator[tuple[int, str]]:
    for r in range(args.runs):
        for p in PROMPTS:
            yield r, p


async def main_async(args: argparse.Namespace) -> None:
    import llama_cpp

    from tierlm.backends.llama_cpp import LlamaCppBackend
    from tierlm.backends.openai_compat import OpenAIBackend
    from tierlm.config.backends import LlamaCppConfig, OpenAIConfig

    llm = llama_cpp.Llama(
        str(MODEL), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, verbose=False
    )
    kw = {
        "max_tokens": args.tokens,
        "temperature": 0.0,
        "seed": 1,
        "logit_bias": {str(llm.token_eos()): -100.0},
    }
    local = LlamaCppBackend(
        LlamaCppConfig(name="tiny", model=str(MODEL), n_ctx=2048, threads=args.threads)
    )
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_backends_server.log"
    proc, base = start_server(args.threads, log)
    http = OpenAIBackend(OpenAIConfig(name="srv", provider="llama-server", url=base, model="m"))
    results: dict[str, list[Sample]] = {k: [] for k in ("raw", "tierlm", "raw_http", "openai")}
    try:
        async with httpx.AsyncClient(timeout=120) as client:
            # warm-up: load everything once
            raw_inprocess(llm, "hi", {**kw, "max_tokens": 4})
            await tierlm_stream(local, "hi", {**kw, "max_tokens": 4})
            await raw_http(client, base + "/chat/completions", "hi", {**kw, "max_tokens": 4})
            for _, prompt in _runs(args):
                # a fresh tag per request, so no route reuses another's cached prompt prefix
                results["raw"].append(raw_inprocess(llm, _tag(prompt), kw))
                results["tierlm"].append(await tierlm_stream(local, _tag(prompt), kw))
                results["raw_http"].append(
                    await raw_http(client, base + "/chat/completions", _tag(prompt), kw)
                )
                results["openai"].append(await tierlm_stream(http, _tag(prompt), kw))
    finally:
        await http.aclose()
        await local.aclose()
        proc.terminate()
        proc.wait(10)
    for name, samples in results.items():
        assert all(s[2] == args.tokens for s in samples), (name, [s[2] for s in samples])
    overhead = await adapter_overhead(args.overhead_requests, 64)
    _print(args, results, overhead)


def _print(
    args: argparse.Namespace, results: dict[str, list[Sample]], overhead: dict[str, float]
) -> None:
    print(
        f"SmolLM2-135M Q4_1, {args.tokens} tokens per run, {len(PROMPTS)} prompts x "
        f"{args.runs} runs, {args.threads} threads, CPU {os.cpu_count()} cores\n"
    )
    print("| route | runs | TTFT ms (median) | tokens/s end-to-end | decode tokens/s | total ms |")
    print("|---|---|---|---|---|---|")
    names = {
        "raw": "in-process, raw llama_cpp.Llama",
        "tierlm": "in-process, tierlm LlamaCppBackend",
        "raw_http": "llama.cpp server, raw httpx",
        "openai": "llama.cpp server, tierlm OpenAIBackend",
    }
    for key, label in names.items():
        print(_row(label, results[key]))
    med = {k: statistics.median(s[1] for s in v) for k, v in results.items()}
    print(
        f"\nin-process: tierlm - raw = {(med['tierlm'] - med['raw']) * 1e3:+.1f} ms per "
        f"request (median total); HTTP: tierlm - raw = "
        f"{(med['openai'] - med['raw_http']) * 1e3:+.1f} ms (model-time noise included)"
    )
    print(
        f"\nadapter overhead alone (zero-latency server, 64-chunk SSE, "
        f"{args.overhead_requests} requests, median): raw httpx {overhead['raw_ms']:.2f} ms, "
        f"OpenAIBackend {overhead['tierlm_ms']:.2f} ms -> {overhead['overhead_ms']:+.3f} ms "
        f"per request ({overhead['per_chunk_us']:+.1f} µs per chunk); time to first token "
        f"{overhead['raw_ttft_ms']:.2f} ms raw vs {overhead['tierlm_ttft_ms']:.2f} ms "
        f"({overhead['ttft_overhead_ms']:+.3f} ms)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overhead-requests", type=int, default=200)
    ap.add_argument(
        "--overhead-only",
        action="store_true",
        help="only the adapter-overhead measurement (no model)",
    )
    args = ap.parse_args()
    if args.overhead_only:
        o = asyncio.run(adapter_overhead(args.overhead_requests, 64))
        print(json.dumps({k: round(v, 4) for k, v in o.items()}))
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
