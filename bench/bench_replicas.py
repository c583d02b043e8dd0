"""Two gateway replicas against one: throughput, latency, and answers lost when one is killed.

Real ``tierlm serve`` processes on the deployment shape of ``deploy/``: a private PostgreSQL
(the ledger, with a monthly budget, so every answer reserves and settles money), a private
Redis (per-key rate limits and the shared answer cache), and a fake OpenAI-wire upstream in
this process that answers at once and bills its tokens (``tests/fakes/metered_server.py``).
``--clients`` closed-loop aiohttp clients spread requests over the replicas round robin, each
with a fresh prompt (so every request misses the cache and reaches the upstream) and its own
``x-request-id``; a client that gets a connection error from a replica stops sending to it,
as a load balancer would.

Part 1, for 1 and 2 replicas, with ``ledger.commit_before_reply`` off and on: requests per
second, latency p50 / p99, errors, for ``--duration`` seconds after a warm-up. With
``--breakdown``, also one replica without the shared cache, then without budgets too, then
without Redis rate limits, then without the ledger: what each shared part costs.

Part 2, ``--kills`` times for each setting: two replicas under the same load; after
``--kill-after`` seconds replica A is SIGKILLed, the load goes on for as long again. Then:
requests answered (by A, by B), requests that failed on A (connection errors), and answered
requests without a ledger record, counted twice: at once (before anything is flushed) and
after B has been stopped cleanly (what is lost for good: only A's can be).

With ``--cache-store`` (only this): one replica whose only shared part is the Redis answer
cache, with the cache, without it, and with Redis hung (behind a proxy that holds every byte
sent to it, ``tests/stall_proxy.py``): requests per second, latency p50 / p99, and the latency
of ``/health`` asked in a loop alongside (a request that needs no cache at all).

    .venv/bin/python bench/bench_replicas.py [--clients 16] [--duration 5] [--kills 3]
        [--kill-after 1.5] [--breakdown] [--skip-throughput] [--cache-store]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fakes import serve
from fakes.metered_server import make_app
from pg_fixture import new_database, start_cluster
from redis_fixture import start_redis
from server_util import sha, start_serve
from stall_proxy import StallProxy

KEY = "tlm-bench-replicas-0123456789"


@dataclass
class Env:
    pg: str
    redis: str
    upstream: str
    tmp: Path


@dataclass
class Result:
    rid: str
    replica: int
    ok: bool  # a whole 200 answer
    failed: bool  # a connection error or another status
    seconds: float
    error: str = ""  # the status or the exception, when it failed


PARTS = ("cache", "budgets", "rate_limits", "ledger")  # what --breakdown takes away, in order


def config(
    upstream: str, db: str, redis_url: str, commit: bool, tmp: Path, drop: tuple[str, ...] = ()
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "deployment": "bench-replicas",
        "backends": [
            {
                "name": "cloud",
                "kind": "openai",
                "url": upstream + "/v1",
                "model": "metered",
                "boundary": "external",
                "api_key": "sk-bench",
                "price": {"input": 0.15, "output": 0.6},
            }
        ],
        "tiers": [{"name": "cloud", "backends": ["cloud"]}],
        "routing": {"complexity_method": "length"},
        "ledger": {"url": db, "commit_before_reply": commit},
        "budgets": {"limits": [{"usd": 1000.0}]},
        "cache": {"store": "redis", "redis_url": redis_url},
        "server": {
            "rate_limit_url": redis_url,
            "api_keys": [{"name": "bench", "hash": sha(KEY), "rpm": 10_000_000}],
        },
        "data_dir": str(tmp),
    }
    for part in drop:
        if part == "rate_limits":
            del cfg["server"]["rate_limit_url"]
        elif part == "ledger":
            cfg["ledger"] = {"url": "off"}
        else:
            del cfg[part]
    return cfg


async def _one(session: aiohttp.ClientSession, url: str, replica: int) -> Result:
    rid = "b-" + uuid.uuid4().hex
    body = {
        "model": "auto",
        "max_tokens": 16,
        "temperature": 0,
        "messages": [{"role": "user", "content": f"Question {rid}: how hot is the boiler?"}],
    }
    headers = {"authorization": f"Bearer {KEY}", "x-request-id": rid}
    t0 = time.perf_counter()
    error = ""
    try:
        async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
            data = await r.json()
            ok = r.status == 200 and bool(data["choices"][0]["message"]["content"])
            error = "" if ok else f"HTTP {r.status} {str(data)[:120]}"
    except (TimeoutError, aiohttp.ClientError) as e:
        ok, error = False, f"{type(e).__name__}: {e}"[:160]
    return Result(rid, replica, ok, not ok, time.perf_counter() - t0, error)


async def load(
    urls: list[str], clients: int, seconds: float, at: Callable[[float], None] | None = None
) -> list[Result]:
    """``clients`` closed loops for ``seconds``; ``at(elapsed)`` is called once halfway."""
    results: list[Result] = []
    stop = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=30)

    async def client(i: int) -> None:
        live = list(range(len(urls)))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            n = i
            while time.monotonic() < stop and live:
                replica = live[n % len(live)]
                n += 1
                res = await _one(session, urls[replica], replica)
                results.append(res)
                if res.failed and replica in live:
                    live.remove(replica)  # as a load balancer would, after a failed connect

    async def trigger() -> None:
        await asyncio.sleep(seconds / 2)
        if at is not None:
            at(seconds / 2)

    await asyncio.gather(trigger(), *(client(i) for i in range(clients)))
    return results


async def probed(url: str, clients: int, seconds: float) -> tuple[list[Result], list[float]]:
    """:func:`load` on one replica, and ``/health`` asked in a loop meanwhile: its seconds."""
    health: list[float] = []

    async def probe() -> None:
        stop = time.monotonic() + seconds
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                async with session.get(url + "/health") as r:
                    await r.read()
                health.append(time.perf_counter() - t0)

    res, _ = await asyncio.gather(load([url], clients, seconds), probe())
    return res, health


def cache_store(env: Env, args: argparse.Namespace) -> None:
    """One replica, the Redis answer cache its only shared part: with it, without it, hung."""
    print(f"\n{args.clients} clients, {args.duration:g} s each, 1 replica, no ledger\n")
    print("| Redis cache | req/s | p50 / p99 | /health p50 / p99 / max | errors |")
    print("|---|---:|---:|---:|---:|")
    proxy = StallProxy(int(env.redis.rsplit(":", 1)[1].split("/")[0]))
    via_proxy = f"redis://127.0.0.1:{proxy.port}/0"
    try:
        for label in ("on", "off", "hung"):  # off: the default, this process's memory
            drop = ("budgets", "rate_limits", "ledger") + (("cache",) if label == "off" else ())
            cfg = config(env.upstream, "off", via_proxy, False, env.tmp, drop)
            proc, url = start_serve(cfg, env.tmp)
            try:
                asyncio.run(load([url], args.clients, 1.0))  # warm-up, Redis answering
                if label == "hung":
                    proxy.stall()
                res, health = asyncio.run(probed(url, args.clients, args.duration))
            finally:
                proxy.flow()
                stop_all([proc])
            ms = np.array([r.seconds for r in res if r.ok]) * 1000
            hs = np.array(health) * 1000
            print(
                f"| {label} | {len(ms) / args.duration:,.0f} | {_p50_p99(ms)} | "
                f"{_p50_p99(hs)} / {hs.max():.0f} ms | {sum(r.failed for r in res)} |",
                flush=True,
            )
            _print_errors(res)
    finally:
        proxy.close()


def _p50_p99(ms: Any) -> str:
    if not len(ms):
        return "-"
    return f"{np.percentile(ms, 50):.1f} / {np.percentile(ms, 99):.1f} ms"


def recorded(db: str, rids: list[str]) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM requests WHERE client_request_id = ANY(%s)", (rids,)
        ).fetchone()
    return int(row[0]) if row else 0


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        p.wait(timeout=60)


def throughput(
    env: Env, replicas: int, commit: bool, args: argparse.Namespace, drop: tuple[str, ...] = ()
) -> None:
    db = new_database(env.pg)
    cfg = config(env.upstream, db, env.redis, commit, env.tmp, drop)
    started = [start_serve(cfg, env.tmp) for _ in range(replicas)]
    urls = [u for _, u in started]
    try:
        asyncio.run(load(urls, args.clients, 1.0))  # warm-up: connections, caches, JIT paths
        res = asyncio.run(load(urls, args.clients, args.duration))
    finally:
        stop_all([p for p, _ in started])
    ms = np.array([r.seconds for r in res if r.ok]) * 1000
    print(
        f"| {replicas} | {'on' if commit else 'off'} | {', '.join(drop) or '-'} | "
        f"{len(ms) / args.duration:,.0f} | "
        f"{np.percentile(ms, 50):.1f} / {np.percentile(ms, 99):.1f} ms | "
        f"{sum(r.failed for r in res)} |",
        flush=True,
    )
    _print_errors(res)


def _print_errors(res: list[Result]) -> None:
    for error, n in Counter(r.error for r in res if r.failed).items():
        print(f"  {n} failed: {error}", flush=True)


def kill_trial(env: Env, commit: bool, args: argparse.Namespace) -> tuple[int, ...]:
    db = new_database(env.pg)
    cfg = config(env.upstream, db, env.redis, commit, env.tmp)
    started = [start_serve(cfg, env.tmp) for _ in range(2)]
    procs, urls = [p for p, _ in started], [u for _, u in started]
    try:
        res = asyncio.run(
            load(
                urls,
                args.clients,
                2 * args.kill_after,
                lambda _t: procs[0].send_signal(signal.SIGKILL),
            )
        )
        answered = [r.rid for r in res if r.ok]
        at_once = len(answered) - recorded(db, answered)
    finally:
        stop_all(procs)  # B stops cleanly: it commits everything it queued
    lost = len(answered) - recorded(db, answered)
    on_a = [r for r in res if r.replica == 0]
    return (
        sum(r.ok for r in on_a),
        sum(r.ok for r in res if r.replica == 1),
        sum(r.failed for r in on_a),
        at_once,
        lost,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--kill-after", type=float, default=1.5)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument(
        "--breakdown", action="store_true", help="also 1 replica without each shared part in turn"
    )
    ap.add_argument(
        "--cache-store", action="store_true", help="only: the Redis answer cache, on, off, hung"
    )
    args = ap.parse_args()
    if args.cache_store:
        redis_url, stop_redis = start_redis()
        try:
            with serve(make_app()) as upstream, tempfile.TemporaryDirectory() as tmp:
                cache_store(Env("", redis_url, upstream, Path(tmp)), args)
        finally:
            stop_redis()
        return
    pg, stop_pg = start_cluster()
    redis_url, stop_redis = start_redis()
    try:
        with serve(make_app()) as upstream, tempfile.TemporaryDirectory() as tmp:
            env = Env(pg, redis_url, upstream, Path(tmp))
            if not args.skip_throughput:
                print(f"\n{args.clients} clients, {args.duration:g} s each\n")
                print("| replicas | commit_before_reply | without | req/s | p50 / p99 | errors |")
                print("|---:|---|---|---:|---:|---:|")
                for replicas in (1, 2):
                    for commit in (False, True):
                        throughput(env, replicas, commit, args)
                for i in range(1, len(PARTS) + 1) if args.breakdown else ():
                    throughput(env, 1, False, args, PARTS[:i])
            print(f"\nSIGKILL of replica A after {args.kill_after:g} s, {args.kills} runs each\n")
            print(
                "| commit_before_reply | answered by A / B | failed on A | "
                "answered, no record when answered | answered, record lost |"
            )
            print("|---|---:|---:|---:|---:|")
            for commit in (False, True):
                sums = [0] * 5
                for _ in range(args.kills):
                    sums = [a + b for a, b in zip(sums, kill_trial(env, commit, args), strict=True)]
                a, b, failed, at_once, lost = sums
                print(
                    f"| {'on' if commit else 'off'} | {a} / {b} | {failed} | {at_once} | {lost} |",
                    flush=True,
                )
    finally:
        stop_redis()
        stop_pg()


if __name__ == "__main__":
    main()
