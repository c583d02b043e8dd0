"""The tiny tier through tierlm versus raw ``llama_cpp.Llama``: tokens/s and time to first token.

Same model, threads, prompt and sampling (greedy, end-of-text suppressed so every run makes
exactly N tokens). Runs alternate between the two paths to share any drift of the machine.
Also times the cold start of ``tierlm --help``.

    .venv/bin/python bench/bench_tiny.py [--runs 5] [--tokens 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODEL = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Explain how a centrifugal pump works and what maintenance it needs."


def _raw(llm: object, kw: dict[str, object]) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first = None
    n = 0
    for chunk in llm.create_chat_completion(stream=True, **kw):  # type: ignore[attr-defined]
        if chunk["choices"][0]["delta"].get("content"):
            n += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return first - t0, (n - 1) / (end - first), n


async def _tierlm(router: object, kw: dict[str, object]) -> tuple[float, float, int]:
    from tierlm.types import ChatRequest

    req = ChatRequest.from_prompt(
        PROMPT,
        stream=True,
        max_tokens=kw["max_tokens"],
        temperature=0.0,
        extra={"logit_bias": kw["logit_bias"]},
    )
    t0 = time.perf_counter()
    first = None
    n = 0
    async for ev in router.astream(req):  # type: ignore[attr-defined]
        if ev.text:
            n += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return first - t0, (n - 1) / (end - first), n


def _cold_start(runs: int) -> float:
    exe = Path(sys.executable).with_name("tierlm")
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([str(exe), "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    from llama_cpp import Llama

    from tierlm import Router
    from tierlm.config import load_settings

    llm = Llama(str(MODEL), n_ctx=2048, n_threads=args.threads, verbose=False)
    eos = llm.token_eos()
    kw: dict[str, object] = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": args.tokens,
        "temperature": 0.0,
        "logit_bias": {eos: -1000.0},
    }
    settings = load_settings(
        overrides={
            "backends": [
                {
                    "name": "smollm2",
                    "kind": "llama_cpp",
                    "model": str(MODEL),
                    "n_ctx": 2048,
                    "threads": args.threads,
                }
            ],
            "ledger": {"url": "off"},
        }
    )
    router = Router(settings)
    raw, ours = [], []
    loop = asyncio.new_event_loop()  # one loop for every tierlm run, as in a server
    _raw(llm, kw)  # warm both paths
    loop.run_until_complete(_tierlm(router, kw))
    for _ in range(args.runs):
        raw.append(_raw(llm, kw))
        ours.append(loop.run_until_complete(_tierlm(router, kw)))
    loop.close()
    assert all(r[2] == args.tokens for r in raw + ours), "every run must make N tokens"
    med = statistics.median
    r_tps, t_tps = med(r[1] for r in raw), med(r[1] for r in ours)
    r_ttft, t_ttft = med(r[0] for r in raw), med(r[0] for r in ours)
    print(
        f"SmolLM2-135M Q4_1, {args.tokens} tokens, {args.threads} threads, "
        f"median of {args.runs} runs\n"
    )
    print("| path | tokens/s | time to first token (ms) |")
    print("|---|---:|---:|")
    print(f"| raw llama_cpp.Llama | {r_tps:.1f} | {r_ttft * 1000:.1f} |")
    print(f"| tierlm (Router.astream) | {t_tps:.1f} | {t_ttft * 1000:.1f} |")
    print(f"| ratio tierlm/raw | {t_tps / r_tps:.3f} | {t_ttft / r_ttft:.3f} |")
    print(f"\n`tierlm --help` cold start: {_cold_start(7) * 1000:.0f} ms (median of 7)")
    router.close()


if __name__ == "__main__":
    main()
