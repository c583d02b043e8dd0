"""The answer cache through the real gateway (uvicorn on 127.0.0.1, a fake OpenAI-wire
upstream that counts its requests): exact and semantic hits, bypass, streaming replay, scoping
by key, tenant and privacy, what reaches the SQLite store, TTL and LRU on a test clock, the
admin route and ``tierlm cache``, and the near-miss set."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from server_util import (
    ADMIN_KEY,
    USER_KEY,
    fake_openai_upstream,
    serve_gateway,
    settings,
    sha,
    upstream_backend,
)
from tierlm.cli.main import app as cli_app
from tierlm.layer0.cache import AnswerCache, Lookup
from tierlm.layer0.config import CacheConfig
from tierlm.layer0.embed import HashedEmbedder
from tierlm.layer0.store import MemoryStore, SQLiteStore
from tierlm.types import ChatRequest, ChatResponse, Message, Privacy

OTHER_KEY = "tlm-test-other-key-0123456789"
THIRD_KEY = "tlm-test-third-key-0123456789"
PAIRS = Path(__file__).parent / "data" / "cache_pairs.jsonl"


@pytest.fixture(scope="module")
def upstream() -> Iterator[Any]:
    with fake_openai_upstream() as app:
        yield app


def _settings(upstream: Any, tmp: Path, **cache: Any) -> Any:
    keys = [
        {"name": "user", "hash": sha(USER_KEY)},
        {"name": "other", "hash": sha(OTHER_KEY)},
        {"name": "third", "hash": sha(THIRD_KEY), "tiers": ["tiny"]},
        {"name": "admin", "hash": sha(ADMIN_KEY), "admin": True},
    ]
    url = upstream.state.url
    return settings(
        [upstream_backend("site", url, "plain"), upstream_backend("tiny", url, "plain")],
        [{"name": "tiny", "backends": ["tiny"]}, {"name": "site", "backends": ["site"]}],
        server={"api_keys": keys},
        data_dir=str(tmp),
        cache={"semantic": {"enabled": True, "embedder": "hashed", "threshold": 0.8}, **cache},
    )


@pytest.fixture(scope="module")
def gateway(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("cache")
    s = _settings(upstream, tmp, store="sqlite", tenants={"user": "plant", "other": "plant"})
    with serve_gateway(s) as url:
        yield url


def _chat(
    url: str, text: str, key: str = USER_KEY, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    payload = {"model": "site", "temperature": 0, "messages": [{"role": "user", "content": text}]}
    return httpx.post(
        url + "/v1/chat/completions",
        json={**payload, **body},
        headers={"authorization": f"Bearer {key}", **(headers or {})},
        timeout=10,
    )


def _calls(upstream: Any) -> int:
    return len(upstream.state.requests)


def test_a_repeated_question_is_answered_from_the_cache(gateway: str, upstream: Any) -> None:
    first = _chat(gateway, "What is the boiling point of water at sea level?")
    n = _calls(upstream)
    again = _chat(gateway, "What is the  boiling point of water at sea level? ")
    assert first.headers["x-tierlm-cache"] == "miss"
    assert again.headers["x-tierlm-cache"] == "hit-exact"
    assert _calls(upstream) == n
    body = again.json()
    assert (
        body["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    )
    assert body["tierlm"]["cache"]["status"] == "hit-exact"
    assert body["tierlm"]["cache"]["origin"]["tier"] == "site"
    assert (again.headers["x-tierlm-tier"], again.headers["x-tierlm-boundary"]) == (
        "cache",
        "process",
    )


def test_semantic_hit_and_near_misses(gateway: str, upstream: Any) -> None:
    assert _chat(gateway, "Turn on pump 3").headers["x-tierlm-cache"] == "miss"
    hit = _chat(gateway, "turn on pump 3 please")
    assert hit.headers["x-tierlm-cache"] == "hit-semantic"
    assert hit.json()["tierlm"]["cache"]["similarity"] >= 0.8
    for near in ("Turn on pump 4", "Turn off pump 3", "Turn on pump 3 in French"):
        n = _calls(upstream)
        assert _chat(gateway, near).headers["x-tierlm-cache"] == "miss", near
        assert _calls(upstream) == n + 1


def test_bypass_and_ineligible_requests(gateway: str, upstream: Any) -> None:
    _chat(gateway, "How many legs does a spider have?")
    for headers in ({"cache-control": "no-cache"}, {"x-tierlm-cache": "bypass"}):
        n = _calls(upstream)
        r = _chat(gateway, "How many legs does a spider have?", headers=headers)
        assert r.headers["x-tierlm-cache"] == "bypass"
        assert _calls(upstream) == n + 1
    warm = _chat(gateway, "How many legs does a spider have?", temperature=0.7)
    assert warm.headers["x-tierlm-cache"] == "bypass"
    assert "temperature" in warm.json()["tierlm"]["cache"]["why"]


def test_streaming_is_stored_and_replayed_as_sse(gateway: str, upstream: Any) -> None:
    def stream() -> tuple[dict[str, str], str]:
        with httpx.stream(
            "POST",
            gateway + "/v1/chat/completions",
            json={
                "model": "site",
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "Stream me a greeting"}],
            },
            headers={"authorization": f"Bearer {USER_KEY}"},
            timeout=10,
        ) as r:
            return dict(r.headers), "".join(r.iter_text())

    h1, first = stream()
    n = _calls(upstream)
    h2, again = stream()
    assert (h1["x-tierlm-cache"], h2["x-tierlm-cache"]) == ("miss", "hit-exact")
    assert first.rstrip().endswith("data: [DONE]")
    assert h2["content-type"].startswith("text/event-stream")
    assert _calls(upstream) == n
    chunks = [json.loads(x[6:]) for x in again.split("\n\n") if x.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello"
    assert chunks[-1]["usage"]["completion_tokens"] == 2
    assert again.rstrip().endswith("data: [DONE]")


def test_scoped_by_key_and_tenant_and_privacy(gateway: str, upstream: Any) -> None:
    q = "Which gas do plants absorb?"
    _chat(gateway, q)
    assert _chat(gateway, q, key=OTHER_KEY).headers["x-tierlm-cache"] == "hit-exact"  # tenant
    # a key outside the tenant, and a private request, have their own entries
    assert _chat(gateway, q, key=ADMIN_KEY).headers["x-tierlm-cache"] == "miss"
    private = {"x-tierlm-privacy": "private"}
    assert _chat(gateway, q, headers=private).headers["x-tierlm-cache"] == "miss"
    secret = "Summarise the file of Jane Doe, phone +49 170 7654321"
    _chat(gateway, secret)
    assert _chat(gateway, secret).headers["x-tierlm-cache"] == "hit-exact"
    assert _chat(gateway, secret, key=OTHER_KEY).headers["x-tierlm-cache"] == "miss"


def test_a_key_never_gets_answers_from_tiers_it_may_not_use(tmp_path: Path, upstream: Any) -> None:
    s = _settings(upstream, tmp_path, tenants={"user": "plant", "third": "plant"})
    with serve_gateway(s) as url:
        _chat(url, "What is the speed of sound?")
        r = _chat(url, "What is the speed of sound?", key=THIRD_KEY, model="auto")
        assert r.headers["x-tierlm-cache"] == "miss"
        assert r.headers["x-tierlm-tier"] == "tiny"


def test_private_answers_never_reach_the_sqlite_store(gateway: str, upstream: Any) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    httpx.delete(gateway + "/admin/cache", headers=admin, timeout=5)
    _chat(gateway, "Public question about pumps")
    _chat(gateway, "Call Jane Doe at +49 170 1234567 about pumps")
    _chat(gateway, "Private question about pumps", headers={"x-tierlm-privacy": "private"})
    stats = httpx.get(gateway + "/admin/cache", headers=admin, timeout=5).json()
    memory, sqlite = stats["stores"]
    assert (memory["store"], sqlite["store"]) == ("memory", "sqlite")
    assert (memory["entries"], sqlite["entries"]) == (2, 1)
    with sqlite3.connect(sqlite["path"]) as db:
        values = [v for (v,) in db.execute("SELECT value FROM cache")]
    assert values and not any(b"Jane" in v or b"Private question" in v for v in values)
    assert httpx.get(gateway + "/admin/cache", timeout=5).status_code == 401
    cleared = httpx.delete(gateway + "/admin/cache", headers=admin, timeout=5).json()
    assert cleared == {"cleared": 3}


def _answer(text: str) -> ChatResponse:
    msg = Message(role="assistant", content=text)
    return ChatResponse(model="m", message=msg, tier="site", backend="site")


def test_sqlite_store_survives_a_restart_and_the_cli_reads_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    cfg = CacheConfig(store="sqlite")
    req = ChatRequest.from_prompt("What is 2 + 2?", temperature=0)

    async def store_then_restart() -> Lookup:
        cache = AnswerCache(cfg, tmp_path, HashedEmbedder)
        await cache.store(req, cache.scope(req, Privacy.PUBLIC, False), _answer("4"), "site")
        await cache.aclose()
        again = AnswerCache(cfg, tmp_path, HashedEmbedder)
        hit = await again.lookup(req, again.scope(req, Privacy.PUBLIC, False), None)
        await again.aclose()
        return hit

    hit = asyncio.run(store_then_restart())
    assert hit.status == "hit-exact" and hit.response is not None and hit.response.text == "4"
    conf = tmp_path / "c.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path),
                "backends": [upstream_backend("s", "http://127.0.0.1:9", "plain")],
                "tiers": [{"name": "s", "backends": ["s"]}],
                "cache": {"store": "sqlite"},
            }
        )
    )
    runner = CliRunner()
    stats = runner.invoke(cli_app, ["cache", "stats", "--config", str(conf)])
    assert json.loads(stats.output)["entries"] == 1
    cleared = runner.invoke(cli_app, ["cache", "clear", "--config", str(conf)])
    assert json.loads(cleared.output) == {"cleared": 1}
    conf.write_text(conf.read_text().replace("sqlite", "memory"))
    mem = runner.invoke(cli_app, ["cache", "stats", "--config", str(conf)])
    assert mem.exit_code == 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_ttl_and_lru(kind: str, tmp_path: Path) -> None:
    clock = Clock()
    store: MemoryStore | SQLiteStore = (
        MemoryStore(10.0, 3, 10_000, clock)
        if kind == "memory"
        else SQLiteStore(tmp_path / "c.db", 10.0, 3, 10_000, clock)
    )
    for k in "abc":
        store.put(k, k.encode() * 10)
    assert store.get("a") == b"a" * 10  # now the most recently used
    clock.now += 1
    store.put("d", b"d")  # over 3 entries: the least recently used (b) goes
    assert [store.get(k) is not None for k in "abcd"] == [True, False, True, True]
    clock.now += 9.5  # a, c expire (stored at 1000, ttl 10); d was stored at 1001
    assert [store.get(k) is not None for k in "acd"] == [False, False, True]
    store.put("big", b"x" * 20_000)  # over max_bytes alone: not kept
    assert store.get("big") is None
    store.put("e", b"e" * 10_000)  # exactly max_bytes: pushes the rest out
    assert store.get("d") is None and store.get("e") is not None
    store.close()


def test_near_miss_set_is_never_served() -> None:
    """The labelled set: no near miss is a hit; most paraphrases are."""
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    assert len(rows) >= 300
    cfg = CacheConfig.model_validate({"semantic": {"enabled": True, "embedder": "hashed"}})
    cache = AnswerCache(cfg, Path("."), HashedEmbedder)
    hits = {"near_miss": 0, "paraphrase": 0}

    async def run() -> None:
        for i, r in enumerate(rows):
            a = ChatRequest.from_prompt(r["a"], temperature=0, api_key_id=f"k{i}")
            b = ChatRequest.from_prompt(r["b"], temperature=0, api_key_id=f"k{i}")
            scope = cache.scope(a, Privacy.PUBLIC, False)
            await cache.store(a, scope, _answer("x"), "site")
            hits[r["label"]] += (await cache.lookup(b, scope, None)).status == "hit-semantic"

    asyncio.run(run())
    paraphrases = sum(r["label"] == "paraphrase" for r in rows)
    assert hits["near_miss"] == 0
    assert hits["paraphrase"] >= paraphrases // 3
