"""The local tier in its llama-server worker against raw ``llama_cpp.Llama`` and the old
in-process backend; batching; a competing CPU hog; crash recovery.

Same model, prompt and sampling everywhere (greedy; the answer is longer than N tokens, so
every run makes N; no logit bias, which llama-cpp-python applies in Python per token).
Sections (``--only`` picks some):

- ``hop``: tokens/s and time to first token: raw ``llama_cpp.Llama`` vs ``LlamaCppBackend``
  in process (``worker: false``) vs the worker (``LlamaWorkerBackend``), runs alternating.
- ``concurrency``: aggregate tokens/s of 1, 2, 4, 8 concurrent streams (worker with 8 slots;
  in-process with ``max_concurrency`` 1, the old default, for comparison at 4).
- ``hog``: worker tokens/s with and without one busy-looping process, per thread setting
  (threads, llama.cpp's ``--poll``). ``OMP_WAIT_POLICY=active`` is left out: on the shared
  build machine it made the first token take 16-20 s (0.5-2 tokens/s), and one run lost its
  connection.
- ``crash``: time from SIGKILL of the worker to the next successful answer.

    .venv/bin/python bench/bench_worker.py [--runs 3] [--tokens 64] [--only hop,concurrency]
        [--server2 PATH/TO/OTHER/llama-server]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bench_tiny  # the raw llama_cpp.Llama timing

from tierlm.backends.llama_cpp import LlamaCppBackend
from tierlm.backends.llama_worker import LlamaWorkerBackend
from tierlm.config.backends import LlamaCppConfig
from tierlm.errors import TierlmError
from tierlm.llama_runtime import find_server
from tierlm.types import ChatRequest

MODEL, PROMPT = bench_tiny.MODEL, bench_tiny.PROMPT
Run = tuple[float, float, int]  # time to first token (s), tokens/s after it, tokens


def _cfg(worker: bool, threads: int | None, slots: int = 1, **settings: Any) -> LlamaCppConfig:
    return LlamaCppConfig(
        name="tiny",
        model=str(MODEL),
        n_ctx=1024,
        threads=threads,
        max_concurrency=slots,
        worker=worker,
        keep_alive=0,
        **settings,
    )


def _backend(cfg: LlamaCppConfig, binary: Path | None = None) -> LlamaCppBackend:
    if not cfg.worker:
        return LlamaCppBackend(cfg, MODEL.parent)
    binary = binary or find_server()
    assert binary is not None, "llama-server is not installed: ./scripts/setup"
    return LlamaWorkerBackend(cfg, MODEL.parent, binary)


def _request(tokens: int) -> ChatRequest:
    return ChatRequest.from_prompt(PROMPT, max_tokens=tokens, temperature=0.0)


RETRIED: list[str] = []  # failed attempts retried (the executor would retry them too)


async def _stream(backend: LlamaCppBackend, tokens: int) -> Run:
    try:
        return await _stream_once(backend, tokens)
    except TierlmError as e:
        RETRIED.append(e.message)
        return await _stream_once(backend, tokens)


async def _stream_once(backend: LlamaCppBackend, tokens: int) -> Run:
    t0 = time.perf_counter()
    first = None
    n = 0
    async for ev in backend.stream(_request(tokens)):
        if ev.text:
            n += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return first - t0, (n - 1) / max(end - first, 1e-9), n


def _raw(llm: Any, tokens: int) -> Run:
    return bench_tiny._raw(
        llm,
        {
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": tokens,
            "temperature": 0.0,
        },
    )


def _med(runs: list[Run]) -> tuple[float, float]:
    assert len({r[2] for r in runs}) == 1, f"runs made different numbers of tokens: {runs}"
    return statistics.median(r[1] for r in runs), statistics.median(r[0] for r in runs) * 1000


def hop(loop: asyncio.AbstractEventLoop, args: argparse.Namespace) -> None:
    from llama_cpp import Llama

    llm = Llama(str(MODEL), n_ctx=1024, n_threads=args.threads, verbose=False)
    inproc = _backend(_cfg(False, args.threads))
    paths = {"in-process": inproc, "worker": _backend(_cfg(True, args.threads))}
    if args.server2:  # another llama-server build (e.g. a native one) beside the default
        paths[f"worker, {args.server2}"] = _backend(_cfg(True, args.threads), args.server2)
    raw: list[Run] = []
    ours: dict[str, list[Run]] = {name: [] for name in paths}
    _raw(llm, 8)  # warm every path
    for b in paths.values():
        loop.run_until_complete(_stream(b, 8))
    for _ in range(args.runs):
        raw.append(_raw(llm, args.tokens))
        for name, b in paths.items():
            ours[name].append(loop.run_until_complete(_stream(b, args.tokens)))
    r_tps, r_ttft = _med(raw)
    print(f"\n{args.tokens} tokens, {args.threads} threads, median of {args.runs} runs\n")
    print("| path | tokens/s | time to first token | ÷ raw tokens/s | TTFT − raw |")
    print("|---|---:|---:|---:|---:|")
    print(f"| raw llama_cpp.Llama | {r_tps:.1f} | {r_ttft:.1f} ms | 1.00 | 0 |")
    for name, runs in ours.items():
        tps, ttft = _med(runs)
        print(
            f"| {name} | {tps:.1f} | {ttft:.1f} ms | {tps / r_tps:.2f} | {ttft - r_ttft:+.1f} ms |"
        )
    for b in paths.values():
        loop.run_until_complete(b.aclose())
    llm.close()


async def _aggregate(backend: LlamaCppBackend, streams: int, tokens: int) -> float:
    t0 = time.perf_counter()
    runs = await asyncio.gather(*(_stream(backend, tokens) for _ in range(streams)))
    return sum(r[2] for r in runs) / (time.perf_counter() - t0)


def concurrency(loop: asyncio.AbstractEventLoop, args: argparse.Namespace) -> None:
    worker = _backend(_cfg(True, args.threads, slots=8))
    inproc = _backend(_cfg(False, args.threads, slots=1))
    assert isinstance(worker, LlamaWorkerBackend)
    loop.run_until_complete(_stream(worker, 8))
    loop.run_until_complete(_stream(inproc, 8))
    pid = worker.supervisor.pid
    assert pid is not None
    print(f"\naggregate tokens/s, {args.tokens} tokens per stream, wall clock incl. prefill\n")
    print("| streams | worker (8 slots) | worker CPU ms/token | in-process (max_concurrency 1) |")
    print("|---:|---:|---:|---:|")
    for n in (1, 2, 4, 8):
        c0 = _cpu_seconds(pid)
        w = statistics.median(
            loop.run_until_complete(_aggregate(worker, n, args.tokens)) for _ in range(args.runs)
        )
        cpu = (_cpu_seconds(pid) - c0) * 1000 / (args.runs * n * args.tokens)
        i = loop.run_until_complete(_aggregate(inproc, n, args.tokens)) if n in (1, 4) else None
        print(f"| {n} | {w:.1f} | {cpu:.1f} | {f'{i:.1f}' if i is not None else '—'} |")
    for b in (worker, inproc):
        loop.run_until_complete(b.aclose())


def _spin() -> None:
    while True:
        pass


@contextmanager
def _hog() -> Iterator[None]:
    p = multiprocessing.Process(target=_spin, daemon=True)
    p.start()
    try:
        yield
    finally:
        p.kill()
        p.join()


def hog(loop: asyncio.AbstractEventLoop, args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    settings: list[tuple[str, int, dict[str, str], dict[str, Any]]] = [
        (f"threads {cores}, poll 0, OMP passive (default)", cores, {}, {}),
        (f"threads {cores}, poll 50 (llama.cpp's default)", cores, {}, {"poll": 50}),
        (f"threads {max(cores - 1, 1)}, poll 0", max(cores - 1, 1), {}, {}),
    ]
    print(f"\nworker tokens/s, {args.tokens} tokens, median of {args.runs}; hog = 1 busy loop\n")
    print("| setting | quiet | with hog | hog ÷ quiet | worker CPU ms/token quiet / hog |")
    print("|---|---:|---:|---:|---:|")
    for label, threads, env, options in settings:
        backend = _backend(_cfg(True, threads, **options, env=env))
        assert isinstance(backend, LlamaWorkerBackend)
        loop.run_until_complete(_stream(backend, 8))
        pid = backend.supervisor.pid
        assert pid is not None
        quiet: list[Run] = []
        busy: list[Run] = []
        cpu = {"quiet": 0.0, "hog": 0.0}
        for _ in range(args.runs):  # alternate, so both share the machine's drift
            c0 = _cpu_seconds(pid)
            quiet.append(loop.run_until_complete(_stream(backend, args.tokens)))
            c1 = _cpu_seconds(pid)
            with _hog():
                busy.append(loop.run_until_complete(_stream(backend, args.tokens)))
            cpu["quiet"] += c1 - c0
            cpu["hog"] += _cpu_seconds(pid) - c1
        q, b = _med(quiet)[0], _med(busy)[0]
        per = {k: v * 1000 / (args.runs * args.tokens) for k, v in cpu.items()}
        print(
            f"| {label} | {q:.1f} | {b:.1f} | {b / q:.2f} | {per['quiet']:.1f} / {per['hog']:.1f} |"
        )
        loop.run_until_complete(backend.aclose())


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def crash(loop: asyncio.AbstractEventLoop, args: argparse.Namespace) -> None:
    """A fresh worker per crash: the first crash restarts after the shortest backoff (later
    consecutive crashes wait longer by design)."""
    times = []
    for _ in range(args.runs):
        worker = _backend(_cfg(True, args.threads))
        assert isinstance(worker, LlamaWorkerBackend)
        loop.run_until_complete(_stream(worker, 4))
        t0 = time.perf_counter()
        worker.supervisor.kill(signal.SIGKILL)
        while True:
            try:
                loop.run_until_complete(
                    worker.complete(ChatRequest.from_prompt("Hi", max_tokens=2))
                )
                break
            except TierlmError:  # every failure until the first success is part of the time
                continue
        times.append(time.perf_counter() - t0)
        loop.run_until_complete(worker.aclose())
    print(
        f"\nworker SIGKILL -> next successful answer: median {statistics.median(times) * 1000:.0f}"
        f" ms, max {max(times) * 1000:.0f} ms ({args.runs} crashes)"
    )


SECTIONS: dict[str, Callable[[asyncio.AbstractEventLoop, argparse.Namespace], None]] = {
    "hop": hop,
    "concurrency": concurrency,
    "hog": hog,
    "crash": crash,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", default=",".join(SECTIONS))
    ap.add_argument("--server2", type=Path, help="hop: also time this llama-server binary")
    args = ap.parse_args()
    print(f"SmolLM2-135M Q4_1; llama-server {find_server()}")
    loop = asyncio.new_event_loop()  # one loop for every run, as in a server
    for name in args.only.split(","):
        SECTIONS[name](loop, args)
    loop.close()
    if RETRIED:
        print(f"\nattempts retried once: {len(RETRIED)} ({'; '.join(sorted(set(RETRIED)))})")


if __name__ == "__main__":
    main()
