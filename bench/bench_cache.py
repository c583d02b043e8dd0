"""Measure the answer cache (layer 0).

1. Near misses and paraphrases (``tests/data/cache_pairs.jsonl``): for each pair, the answer
   to ``a`` is cached, then ``b`` is looked up; a near miss served from the cache is a wrong
   hit (target 0), a paraphrase served is a good hit. Per embedder, with and without the
   guard (to show what the guard does), at the configured threshold.
2. The added latency of a hit and of a miss through the gateway (the real app under uvicorn on
   127.0.0.1, a fake upstream that answers at once): p50/p90 of the round trip with the cache
   off, and of a miss and of an exact and a semantic hit with it on.
3. Memory per 100k entries (tracemalloc: store plus semantic index).

    python bench/bench_cache.py [--n 300] [--entries 100000] [--skip-gateway]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from tierlm.config.settings import Settings  # noqa: E402
from tierlm.layer0.cache import AnswerCache  # noqa: E402
from tierlm.layer0.config import CacheConfig  # noqa: E402
from tierlm.layer0.embed import load_embedder  # noqa: E402
from tierlm.types import ChatRequest, ChatResponse, Message, Privacy  # noqa: E402

PAIRS = ROOT / "tests" / "data" / "cache_pairs.jsonl"


def _cache(embedder: str, threshold: float, guard: bool = True) -> AnswerCache:
    cfg = CacheConfig.model_validate(
        {"semantic": {"enabled": True, "embedder": embedder, "threshold": threshold}}
    )
    emb = load_embedder(embedder)
    cache = AnswerCache(cfg, Path(tempfile.mkdtemp()), lambda: emb)
    if not guard:
        cache.guard = False
    return cache


def _request(text: str) -> ChatRequest:
    return ChatRequest.from_prompt(text, temperature=0.0)


def _answer(text: str) -> ChatResponse:
    return ChatResponse(
        model="m",
        message=Message(role="assistant", content="answer to " + text),
        tier="t",
        backend="b",
    )


def pairs(embedder: str, threshold: float, guard: bool) -> dict[str, Any]:
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    cache = _cache(embedder, threshold, guard)
    by_cat: dict[str, list[int]] = {}
    wrong: list[dict[str, Any]] = []
    for i, r in enumerate(rows):
        a, b = _request(r["a"]), _request(r["b"])
        a.api_key_id = b.api_key_id = f"pair{i}"  # one scope per pair
        scope = cache.scope(a, Privacy.PUBLIC, False)
        asyncio.run(cache.store(a, scope, _answer(r["a"]), "site"))
        hit = asyncio.run(cache.lookup(b, scope, None)).status.startswith("hit")
        by_cat.setdefault(r["category"], []).append(int(hit))
        if hit and r["label"] == "near_miss":
            wrong.append(r)
    para = by_cat.pop("paraphrase")
    near = [x for v in by_cat.values() for x in v]
    return {
        "embedder": embedder,
        "threshold": threshold,
        "guard": guard,
        "paraphrase_hit_rate": round(sum(para) / len(para), 3),
        "paraphrases": len(para),
        "near_miss_hits": sum(near),
        "near_misses": len(near),
        "near_miss_hits_by_category": {k: sum(v) for k, v in by_cat.items() if sum(v)},
        "wrong_hits": [f"{w['a']!r} -> {w['b']!r}" for w in wrong[:8]],
    }


def embed_time(n: int) -> dict[str, Any]:
    """One embedding of a short request, per embedder (the semantic cache's own cost)."""
    out: dict[str, Any] = {}
    for name in ("wordllama", "hashed"):
        emb = load_embedder(name)
        texts = [f"How do I reset controller {i} on line {i % 5}?" for i in range(n)]
        emb.embed("warm up")
        ms = []
        for t in texts:
            t0 = time.perf_counter()
            emb.embed(t)
            ms.append((time.perf_counter() - t0) * 1000)
        out[name] = {"p50_ms": _p(ms, 0.5), "p90_ms": _p(ms, 0.9)}
    return {"embed": out}


def memory(entries: int, embedder: str) -> dict[str, Any]:
    cfg = CacheConfig.model_validate(
        {
            "max_entries": entries,
            "max_bytes": 1 << 34,
            "semantic": {"enabled": True, "embedder": embedder, "max_entries": entries},
        }
    )
    emb = load_embedder(embedder)
    emb.embed("warm up")
    cache = AnswerCache(cfg, Path(tempfile.mkdtemp()), lambda: emb)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]

    async def fill() -> None:
        for i in range(entries):
            req = _request(f"What is the status of machine {i} in hall {i % 7}?")
            await cache.store(req, cache.scope(req, Privacy.PUBLIC, False), _answer(str(i)), "site")

    asyncio.run(fill())
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {
        "entries": entries,
        "embedder": embedder,
        "mib_per_100k": round(used / entries * 100_000 / 2**20, 1),
    }


def _config(upstream: str, tmp: Path, port: int, cache: dict[str, Any]) -> Path:
    import yaml

    cfg = {
        "backends": [
            {
                "name": "up",
                "kind": "openai",
                "url": upstream + "/v1",
                "model": "plain",
                "boundary": "site",
            }
        ],
        "tiers": [{"name": "site", "backends": ["up"]}],
        "routing": {"complexity_method": "length"},
        "ledger": {"url": "off"},
        "server": {"port": port},
        "data_dir": str(tmp),
        "cache": cache,
    }
    path = tmp / f"cfg-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _p(xs: list[float], q: float) -> float:
    return round(sorted(xs)[min(len(xs) - 1, int(q * len(xs)))], 3)


def _timed(client: Any, url: str, texts: list[str], expect: str) -> dict[str, float]:
    ms = []
    for t in texts:
        body = {"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": t}]}
        t0 = time.perf_counter()
        r = client.post(url + "/v1/chat/completions", json=body)
        ms.append((time.perf_counter() - t0) * 1000)
        if r.headers.get("x-tierlm-cache") != expect:
            raise RuntimeError(f"{t!r}: expected {expect}, got {r.headers.get('x-tierlm-cache')}")
    return {"p50_ms": _p(ms, 0.5), "p90_ms": _p(ms, 0.9)}


def gateway_latency(n: int) -> dict[str, Any]:
    """Round trips (one connection, one request at a time) through ``tierlm serve`` processes
    in front of the fake upstream: cache off, then misses and hits with it on."""
    import subprocess

    import httpx
    from bench_gateway import free_port, wait_http

    from fakes import serve
    from fakes.openai_server import make_app

    out: dict[str, Any] = {"n": n}
    with serve(make_app()) as upstream, tempfile.TemporaryDirectory() as tmp:
        semantic = {"semantic": {"enabled": True, "embedder": "wordllama"}}
        for name, cache in (("off", {"enabled": False}), ("on", semantic)):
            port = free_port()
            cfg = _config(upstream, Path(tmp), port, cache)
            run = "from tierlm.cli.main import main; main()"
            cmd = [sys.executable, "-c", run, "serve", "--config", str(cfg)]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{port}"
            try:
                wait_http(url + "/health", proc)
                with httpx.Client(timeout=10) as c:
                    _timed(
                        c,
                        url,
                        [f"warm up {i}" for i in range(20)],
                        "bypass" if name == "off" else "miss",
                    )
                    if name == "off":
                        out["cache_off"] = _timed(
                            c, url, [f"Status of machine {i}?" for i in range(n)], "bypass"
                        )
                        continue
                    texts = [f"Status of machine {i}?" for i in range(n)]
                    out["miss"] = _timed(c, url, texts, "miss")
                    out["hit_exact"] = _timed(c, url, texts, "hit-exact")
                    out["hit_semantic"] = _timed(
                        c, url, [f"status of machine {i} please" for i in range(n)], "hit-semantic"
                    )
            finally:
                proc.terminate()
                proc.wait(timeout=20)
    return {"gateway_round_trip": out}


def router_time(n: int) -> dict[str, Any]:
    """Gateway time without HTTP: ``Router.achat_planned`` for a hit (exact and semantic),
    and what the cache adds to a miss (lookup plus store), in process."""
    import yaml

    from fakes import serve
    from fakes.openai_server import make_app
    from tierlm import Router

    with serve(make_app()) as upstream, tempfile.TemporaryDirectory() as tmp:
        cfg = _config(upstream, Path(tmp), 0, {"semantic": {"enabled": True}})
        router = Router(Settings.model_validate(yaml.safe_load(cfg.read_text())))

        async def run() -> dict[str, Any]:
            texts = [f"Status of machine {i}?" for i in range(n)]
            for t in texts:
                await router.achat(_request(t))
            res: dict[str, Any] = {}
            for name, batch in (
                ("hit_exact", texts),
                ("hit_semantic", [f"status of machine {i} please" for i in range(n)]),
            ):
                ms = []
                for t in batch:
                    t0 = time.perf_counter()
                    _, plan = await router.achat_planned(_request(t))
                    ms.append((time.perf_counter() - t0) * 1000)
                    assert plan.layer0["cache"]["status"] == name.replace("_", "-")
                res[name] = {"p50_ms": _p(ms, 0.5), "p90_ms": _p(ms, 0.9)}
            cache = router.layer0.cache
            assert cache is not None
            miss = []
            for i in range(n):
                req = _request(f"A question never asked, number {i}")
                scope = cache.scope(req, Privacy.PUBLIC, False)
                t0 = time.perf_counter()
                await cache.lookup(req, scope, None)
                await cache.store(req, scope, _answer("x"), "site")
                miss.append((time.perf_counter() - t0) * 1000)
            res["miss_lookup_and_store"] = {"p50_ms": _p(miss, 0.5), "p90_ms": _p(miss, 0.9)}
            res["entries"] = (await cache.stats())["semantic_index"]
            return res

        try:
            return {"router_in_process": asyncio.run(run())}
        finally:
            router.close()


def main() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300, help="requests per gateway measurement")
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--skip-gateway", action="store_true")
    args = ap.parse_args()
    for emb, thr in (("wordllama", 0.85), ("hashed", 0.8)):
        for guard in (True, False):
            print(json.dumps(pairs(emb, thr, guard)))
    print(json.dumps(embed_time(args.n)))
    if not args.skip_gateway:
        print(json.dumps(gateway_latency(args.n)))
        print(json.dumps(router_time(args.n)))
    print(json.dumps(memory(args.entries, "wordllama")))


if __name__ == "__main__":
    main()
